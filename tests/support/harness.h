/*
 * harness.h: what integration tests use to run the real binary and its peers.
 *
 * A test makes a scratch directory, writes a config, starts the mock HighLevel upstream and
 * the proxy as child processes, and talks to them over loopback or unix sockets. Readiness is
 * the systemd protocol: each child gets NOTIFY_SOCKET pointing at a datagram socket the harness
 * owns and sends "READY=1" plus its listening addresses (X_GHLPROXY_LISTEN=...,
 * X_GHLPROXY_ADMIN=..., X_MOCK_LISTEN=...). Never a fixed sleep. Children's stderr goes to a file
 * in the scratch dir so tests can scan logs (for secrets, for expected lines).
 */
#ifndef GHLPROXY_TEST_HARNESS_H
#define GHLPROXY_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * A scratch directory under $TMPDIR (or /tmp when that is unset or too long for unix socket
 * paths), registered for harness_cleanup_all, which owns the returned string until
 * harness_tmpdir_free. A test frees it at the end of its body with harness_tmpdir_free, which
 * removes it recursively. A test that a failed assertion aborted never gets there:
 * harness_cleanup_all (its .fini) then keeps the directory and prints its path when
 * GHLPROXY_TEST_KEEP is set, else removes it, and frees the string either way. (Criterion does
 * not tell a worker its verdict.)
 */
char *harness_tmpdir(void);
void harness_tmpdir_free(char *dir);

/* Write a whole file (mode 0600). Returns 0 or -errno. */
int harness_write_file(const char *dir, const char *name, const char *content);
/* Read a whole file; NUL-terminated; *len may be NULL. NULL on error. */
char *harness_read_file(const char *path, size_t *len);

struct harness_proc {
	pid_t pid;
	char *name;        /* "proxy", "mock", "redis" ... for messages */
	char *stderr_path; /* where its stderr goes */
	char *notify_path; /* its NOTIFY_SOCKET */
	int notify_fd;     /* datagram socket bound at notify_path */
	char *ready_vars;  /* every NOTIFY datagram received so far, '\n'-joined */
	int exit_status;   /* once reaped: waitpid status */
	bool reaped;
};

/*
 * Start argv[0] (a path) with the current environment plus extra entries ("NAME=value",
 * NULL-terminated, may be NULL; they replace inherited ones of the same name), working directory
 * `dir`, stdin and stdout /dev/null, stderr appended to dir/<name>.log, NOTIFY_SOCKET to a fresh
 * socket in dir. The child gets PR_SET_PDEATHSIG(SIGKILL), default signal dispositions and no
 * inherited descriptors beyond 0-2. Registered for harness_cleanup_all. Does not wait.
 * NULL on error (message on stderr), including an argv[0] that is not executable; a later exec
 * failure shows as exit status 127 with the reason in the log.
 */
struct harness_proc *harness_spawn(const char *dir, const char *name, char *const argv[],
                                   char *const extra_env[]);

/* Wait up to timeout_ms for a datagram containing "READY=1". 0 when ready, -1 on timeout or
 * when the child exited first (its log is printed to the test's stderr then). */
int harness_wait_ready(struct harness_proc *p, int timeout_ms);

/*
 * Wait up to timeout_ms for a datagram containing `needle` (e.g. "RELOADING=1") that no earlier
 * harness_wait_notify matched or passed over: each call consumes the datagrams up to and including
 * the one that matches, so "RELOADING=1" then "READY=1" waits for the READY after the reload.
 * 0, or -1 on timeout or when the child exited first.
 */
int harness_wait_notify(struct harness_proc *p, const char *needle, int timeout_ms);

/* Value of VAR=... from the notify datagrams received (last wins), or NULL. Caller frees. */
char *harness_notify_var(struct harness_proc *p, const char *var);

/* Send a signal (no-op error once reaped). 0 or -errno. */
int harness_kill(struct harness_proc *p, int sig);

/* Wait up to timeout_ms for exit; returns the exit code (0..255), 128+signal, or -1 on timeout. */
int harness_wait_exit(struct harness_proc *p, int timeout_ms);

/* SIGKILL if still running, reap, close, free. NULL is fine. */
void harness_proc_free(struct harness_proc *p);

/*
 * Kill (SIGKILL) and reap every child still registered, free them, and deal with the scratch
 * directories still registered (see harness_tmpdir). Meant as a Criterion .fini, which also runs
 * after a failed assertion: TestSuite(x, .fini = harness_cleanup_all). Pointers to what it freed
 * must not be used afterwards. Safe to call when nothing is registered.
 */
void harness_cleanup_all(void);

/* Whole stderr log so far (caller frees). */
char *harness_log(struct harness_proc *p);

/* Path of the built binaries, from GHLPROXY_BIN / GHLPROXY_MOCK_BIN, else under
 * GHLPROXY_BUILDDIR (ghlproxy, tests/support/mock_upstream), else NULL. */
const char *harness_proxy_bin(void);
const char *harness_mock_bin(void);

/* Split "host:port" / "[v6]:port" into host (no brackets) and port. 0 or -1. */
int harness_split_addr(const char *addr, char *host, size_t host_len, int *port);

/* Monotonic milliseconds. */
int64_t harness_now_ms(void);

/*
 * The run's transcript, for the secret scan (tests/integration/secret_scan.py, the last test of
 * a `meson test` run). When GHLPROXY_TEST_TRANSCRIPT_DIR names a directory (made on first use;
 * tests/integration/meson.build sets it), three things go there, else nothing happens:
 *  - harness_proc_free copies the stderr the process wrote (log-<name>-<pid>.txt; a process
 *    that announced itself as a mock upstream with X_MOCK_LISTEN, or is $GHLPROXY_MOCK_BIN,
 *    goes to upstream-log-...: the upstream's view, which the scan skips);
 *  - httpc appends every response it reads, head and body (the first 1 MiB), to
 *    http-<pid>.txt, or to upstream-http-<pid>.txt when the peer is a mock's address;
 *  - harness_secret appends each secret a test configures to secrets.txt (hex-encoded).
 */

/*
 * Register a secret the test gives the proxy or its clients (a PIT, a bearer token, a client
 * key, an admin key, an OAuth client secret or refresh token, a Redis password, a store key):
 * the scan fails if it, or its first 16 characters, appears in any log line or response of the
 * run. Values under 8 characters are recorded but not searched for (they would turn up by
 * chance): use distinctive ones. NULL is ignored. Safe from any thread.
 */
void harness_secret(const char *secret);

/* The transcript directory, or NULL when there is none (no variable, or it cannot be made). */
const char *harness_transcript_dir(void);

/* Append bytes to <transcript dir>/<prefix>-<pid>.txt in one locked write; no-op without a
 * transcript. For httpc. */
void harness_transcript_append(const char *prefix, const void *data, size_t len);

/* Is "host:port" (as getpeername gives it) an address a mock upstream announced (X_MOCK_LISTEN,
 * X_MOCK_CONTROL) to this worker? For httpc's choice of transcript file. */
bool harness_is_upstream_addr(const char *addr);

#endif
