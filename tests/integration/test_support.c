/*
 * test_support.c: the test infrastructure tested together: harness (children, readiness,
 * cleanup), httpc (framing, pipelining, big and chunked bodies), certs (a CA and a server
 * certificate OpenSSL verifies), and the mock upstream (echo, log, behaviours, rate limiter
 * checked against a window oracle, jitter bounds, TLS).
 *
 * Needs GHLPROXY_MOCK_BIN (or GHLPROXY_BUILDDIR). Every child is registered with the harness and
 * killed by the suite's .fini, also when an assertion fails.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include "certs.h"
#include "harness.h"
#include "httpc.h"

#define T_MS 10000 /* generous per-operation timeout: valgrind and CI are slow */

TestSuite(support, .fini = harness_cleanup_all, .timeout = 180);

/* ---- helpers ---- */

struct mock {
	struct harness_proc *proc;
	char *addr; /* "127.0.0.1:port" */
};

/* Start the mock with extra args (NULL-terminated list) and wait for it. */
static struct mock mock_start(const char *dir, const char *const *extra)
{
	const char *bin = harness_mock_bin();
	char *argv[32];
	size_t n = 0;
	struct mock m = { 0 };

	cr_assert_not_null(bin, "set GHLPROXY_MOCK_BIN or GHLPROXY_BUILDDIR");
	argv[n++] = (char *)bin;
	argv[n++] = "--listen";
	argv[n++] = "127.0.0.1:0";
	for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 30; i++) {
		argv[n++] = (char *)extra[i];
	}
	argv[n] = NULL;
	m.proc = harness_spawn(dir, "mock", argv, NULL);
	cr_assert_not_null(m.proc);
	cr_assert_eq(harness_wait_ready(m.proc, T_MS), 0, "mock not ready");
	m.addr = harness_notify_var(m.proc, "X_MOCK_LISTEN");
	cr_assert_not_null(m.addr);
	return m;
}

static void mock_stop(struct mock *m)
{
	cr_assert_eq(harness_kill(m->proc, SIGTERM), 0);
	cr_assert_eq(harness_wait_exit(m->proc, T_MS), 0, "mock must exit 0 on SIGTERM");
	harness_proc_free(m->proc);
	free(m->addr);
	m->proc = NULL;
	m->addr = NULL;
}

/* GET/POST on a fresh connection and parse the JSON answer (caller decrefs). */
static json_t *call_json(const char *addr, const char *method, const char *target,
                         const char *headers, int expect_status)
{
	struct httpc_response r;
	json_error_t err;
	json_t *j;

	cr_assert_eq(httpc_request(addr, method, target, headers, NULL, 0, &r, T_MS), 0, "%s %s",
	             method, target);
	cr_assert_eq(r.status, expect_status, "%s %s: %d", method, target, r.status);
	j = json_loadb((const char *)r.body, r.body_len, 0, &err);
	cr_assert_not_null(j, "%s %s: not JSON: %s", method, target, err.text);
	httpc_response_free(&r);
	return j;
}

static json_t *mock_log(const char *addr, long since)
{
	char target[64];

	snprintf(target, sizeof(target), "/__mock/log?since=%ld", since);
	return call_json(addr, "GET", target, NULL, 200);
}

/* The log once it holds at least n entries (calls from clients that left may still be in
 * flight inside the mock); polled with a deadline. */
static json_t *mock_log_wait(const char *addr, size_t n)
{
	int64_t deadline = harness_now_ms() + T_MS;

	for (;;) {
		json_t *log = mock_log(addr, 0);

		if (json_array_size(log) >= n || harness_now_ms() > deadline) {
			return log;
		}
		json_decref(log);
		poll(NULL, 0, 5);
	}
}

static void mock_reset(const char *addr)
{
	json_decref(call_json(addr, "POST", "/__mock/reset", NULL, 200));
}

/* Send one request on an open connection and read its answer. */
static void exchange(int fd, const char *raw, bool head, struct httpc_response *r)
{
	cr_assert_eq(httpc_send_all(fd, raw, strlen(raw)), 0);
	cr_assert_eq(httpc_read_response(fd, r, head, T_MS), 0, "no answer to: %.60s", raw);
}

static uint8_t pattern_byte(size_t i)
{
	return (uint8_t)((i * 31 + 7) & 0xff);
}

static void sha256_hex(const void *p, size_t n, char out[65])
{
	unsigned char md[32];
	unsigned int len = 0;

	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++) {
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	}
}

/* Wait until the monotonic clock reaches at_ms: pacing a traffic schedule, not a readiness
 * guess. */
static void wait_until_ms(double at_ms)
{
	struct timespec ts = { .tv_sec = (time_t)(at_ms / 1000.0) };

	ts.tv_nsec = (long)((at_ms - (double)ts.tv_sec * 1000.0) * 1e6);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
	}
}

static double now_ms_d(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static const char *entry_str(json_t *e, const char *k)
{
	return json_string_value(json_object_get(e, k));
}

static long entry_int(json_t *e, const char *k)
{
	return (long)json_integer_value(json_object_get(e, k));
}

/* ---- harness ---- */

Test(support, harness_files_and_addresses)
{
	char *dir = harness_tmpdir();
	char *path;
	char *text;
	size_t len = 0;
	struct stat st;
	static const struct {
		const char *in;
		int rc;
		const char *host;
		int port;
	} addrs[] = {
		{ "127.0.0.1:8080", 0, "127.0.0.1", 8080 },
		{ "[::1]:443", 0, "::1", 443 },
		{ "localhost:0", 0, "localhost", 0 },
		{ "::1:80", -1, NULL, 0 },
		{ "127.0.0.1", -1, NULL, 0 },
		{ "127.0.0.1:65536", -1, NULL, 0 },
		{ "127.0.0.1:", -1, NULL, 0 },
		{ ":80", -1, NULL, 0 },
		{ "[::1]80", -1, NULL, 0 },
		{ "h:8x", -1, NULL, 0 },
	};

	cr_assert_not_null(dir);
	cr_assert_lt(strlen(dir), 60, "scratch dirs must leave room for socket names");
	cr_assert_eq(harness_write_file(dir, "a.txt", "hello\nworld"), 0);
	cr_assert_eq(asprintf(&path, "%s/a.txt", dir) > 0, true);
	text = harness_read_file(path, &len);
	cr_assert_str_eq(text, "hello\nworld");
	cr_assert_eq(len, 11);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	free(text);
	cr_assert_null(harness_read_file("/nonexistent/x", NULL));
	cr_assert_lt(harness_write_file("/nonexistent", "x", "y"), 0);

	for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
		char host[64] = "";
		int port = -1;

		cr_assert_eq(harness_split_addr(addrs[i].in, host, sizeof(host), &port),
		             addrs[i].rc, "%s", addrs[i].in);
		if (addrs[i].rc == 0) {
			cr_assert_str_eq(host, addrs[i].host, "%s", addrs[i].in);
			cr_assert_eq(port, addrs[i].port, "%s", addrs[i].in);
		}
	}

	harness_tmpdir_free(dir);
	cr_assert_eq(stat(path, &st), -1, "tmpdir_free removes the tree");
	free(path);
}

Test(support, harness_child_exit_env_and_log)
{
	char *dir = harness_tmpdir();
	char *argv[] = { "/bin/sh", "-c",
		         "echo \"FOO=$FOO NS=${NOTIFY_SOCKET:+set} PWD=$(pwd)\" >&2; exit 7",
		         NULL };
	char *env[] = { "FOO=bar baz", NULL };
	struct harness_proc *p;
	int64_t t0;
	char *log;
	char *want;

	p = harness_spawn(dir, "sh", argv, env);
	cr_assert_not_null(p);
	t0 = harness_now_ms();
	cr_assert_eq(harness_wait_ready(p, 20000), -1, "a child that exits is never ready");
	cr_assert_lt(harness_now_ms() - t0, 15000, "the exit is noticed, not waited out");
	cr_assert_eq(harness_wait_exit(p, T_MS), 7);
	cr_assert(p->reaped);
	log = harness_log(p);
	cr_assert_eq(asprintf(&want, "FOO=bar baz NS=set PWD=%s", dir) > 0, true);
	cr_assert_not_null(strstr(log, want), "log: %s", log);
	cr_assert_eq(harness_kill(p, SIGTERM), -ESRCH);
	free(want);
	free(log);
	harness_proc_free(p);

	/* a binary that is not there: no child at all */
	char *bad[] = { "/nonexistent/binary", NULL };

	cr_assert_null(harness_spawn(dir, "bad", bad, NULL));
	harness_tmpdir_free(dir);
}

Test(support, harness_timeouts_and_signals)
{
	char *dir = harness_tmpdir();
	char *argv[] = { "/bin/sleep", "60", NULL };
	struct harness_proc *p = harness_spawn(dir, "sleeper", argv, NULL);
	int64_t t0 = harness_now_ms();

	cr_assert_not_null(p);
	cr_assert_eq(harness_wait_ready(p, 150), -1);
	cr_assert_geq(harness_now_ms() - t0, 150);
	cr_assert_eq(harness_wait_notify(p, "READY=1", 50), -1);
	cr_assert_eq(harness_wait_exit(p, 50), -1, "still running");
	cr_assert_eq(harness_kill(p, SIGTERM), 0);
	cr_assert_eq(harness_wait_exit(p, T_MS), 128 + SIGTERM);
	harness_proc_free(p);
	harness_tmpdir_free(dir);
}

Test(support, harness_cleanup_all_kills_everything)
{
	char *dir = harness_tmpdir();
	char *dir_copy = strdup(dir);
	char *argv[] = { "/bin/sleep", "60", NULL };
	pid_t pids[3];

	for (int i = 0; i < 3; i++) {
		struct harness_proc *p = harness_spawn(dir, "s", argv, NULL);

		cr_assert_not_null(p);
		pids[i] = p->pid;
	}
	cr_assert_eq(access(dir, F_OK), 0);
	harness_cleanup_all(); /* what the .fini does after a failed assertion */
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(kill(pids[i], 0), -1, "child %d survived", i);
		cr_assert_eq(errno, ESRCH);
	}
	/* `dir` was freed with the registry: check the path through a copy taken before. */
	cr_assert_eq(access(dir_copy, F_OK), -1, "unfreed scratch dir removed");
	free(dir_copy);
	harness_cleanup_all(); /* nothing left: a no-op */
}

/* A child whose parent dies without cleanup is killed by PR_SET_PDEATHSIG. */
Test(support, harness_children_die_with_parent)
{
	char *dir = harness_tmpdir();
	int pipefd[2];
	pid_t mid;
	pid_t grandchild = 0;
	char state = '?';

	cr_assert_eq(pipe(pipefd), 0);
	mid = fork();
	cr_assert_geq(mid, 0);
	if (mid == 0) {
		char *argv[] = { "/bin/sleep", "60", NULL };
		struct harness_proc *p = harness_spawn(dir, "orphan", argv, NULL);
		pid_t pid = p == NULL ? 0 : p->pid;

		(void)!write(pipefd[1], &pid, sizeof(pid));
		_exit(0); /* no cleanup: the kernel must kill the sleeper */
	}
	close(pipefd[1]);
	cr_assert_eq(read(pipefd[0], &grandchild, sizeof(grandchild)), (ssize_t)sizeof(grandchild));
	close(pipefd[0]);
	cr_assert_gt(grandchild, 0);
	cr_assert_eq(waitpid(mid, NULL, 0), mid);

	/* Gone, or a zombie waiting for its new parent to reap it. */
	for (int64_t deadline = harness_now_ms() + T_MS; harness_now_ms() < deadline;) {
		char path[64];
		char buf[256] = "";
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/stat", (int)grandchild);
		f = fopen(path, "r");
		if (f == NULL) {
			state = 'X';
			break;
		}
		if (fgets(buf, sizeof(buf), f) != NULL) {
			char *rp = strrchr(buf, ')');

			state = rp != NULL && rp[1] == ' ' ? rp[2] : '?';
		}
		fclose(f);
		if (state == 'Z' || state == 'X') {
			break;
		}
		poll(NULL, 0, 5);
	}
	cr_assert(state == 'Z' || state == 'X', "orphan still running (state %c)", state);
	harness_tmpdir_free(dir);
}

/* ---- httpc parser, against crafted bytes ---- */

struct parse_case {
	const char *name;
	const char *wire;  /* what the "server" sends, one byte at a time */
	bool eof_after;    /* it closes after sending */
	bool head_request; /* first response answers a HEAD */
	int n_responses;   /* read this many; the last is checked */
	int rc;
	int status;
	const char *body;
	bool chunked;
	bool closed;
	const char *hdr_name; /* a header to check, or NULL */
	const char *hdr_value;
};

static const struct parse_case parse_cases[] = {
	{ "interim 100 skipped",
	  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
	  "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
	  false, false, 1, 0, 200, "abc", false, false, "Link", NULL },
	{ "chunked, extensions, trailers",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1;q=\"a\"\r\nabc\r\n"
	  "0A \r\n0123456789\r\n0;last\r\nX-Trailer: t\r\nX-T2: u\r\n\r\n",
	  false, false, 1, 0, 200, "abc0123456789", true, false, "X-Trailer", NULL },
	{ "chunked as last coding",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", false,
	  false, 1, 0, 200, "hi", true, false, NULL, NULL },
	{ "other coding: until close", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz",
	  true, false, 1, 0, 200, "zzz", false, true, NULL, NULL },
	{ "until close (1.0)", "HTTP/1.0 200 OK\r\nServer: s\r\n\r\nhello", true, false, 1, 0, 200,
	  "hello", false, true, "Server", "s" },
	{ "obs-fold joined",
	  "HTTP/1.1 200 OK\r\nX-A: one\r\n   two \r\n\tthree\r\nContent-Length: 0\r\n\r\n", false,
	  false, 1, 0, 200, "", false, false, "x-a", "one two three" },
	{ "bare LF", "HTTP/1.1 200 OK\nContent-Length: 2\nX-B:  v \n\nhi", false, false, 1, 0, 200,
	  "hi", false, false, "X-B", "v" },
	{ "empty reason", "HTTP/1.1 204\r\n\r\n", false, false, 1, 0, 204, "", false, false, NULL,
	  NULL },
	{ "equal lengths",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nxyz", false, false,
	  1, 0, 200, "xyz", false, false, NULL, NULL },
	{ "conflicting lengths",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nxyz", false, false, 1,
	  -1, 200, NULL, false, false, NULL, NULL },
	{ "bad length", "HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nxyz", false, false, 1, -1,
	  200, NULL, false, false, NULL, NULL },
	{ "HEAD then pipelined 304 then body",
	  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not "
	  "Modified\r\nContent-Length: 9\r\n\r\n"
	  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	  false, true, 3, 0, 200, "ok", false, false, NULL, NULL },
	{ "stray CRLF between responses",
	  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\r\n\r\nHTTP/1.1 201 "
	  "Created\r\nContent-Length: 1\r\n\r\nb",
	  false, false, 2, 0, 201, "b", false, false, NULL, NULL },
	{ "101 returned", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", false, false, 1,
	  0, 101, "", false, false, "Upgrade", "x" },
	{ "Connection: close",
	  "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nz", false,
	  false, 1, 0, 200, "z", false, true, NULL, NULL },
	{ "1.0 keep-alive",
	  "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nz", false, false,
	  1, 0, 200, "z", false, false, NULL, NULL },
	{ "EOF mid-body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd", true, false, 1, -1,
	  200, NULL, false, true, NULL, NULL },
	{ "EOF mid-chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", true,
	  false, 1, -1, 200, NULL, false, true, NULL, NULL },
	{ "bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false,
	  false, 1, -1, 200, NULL, false, false, NULL, NULL },
	{ "EOF in head", "HTTP/1.1 200 OK\r\nContent-Le", true, false, 1, -1, 0, NULL, false, true,
	  NULL, NULL },
	{ "not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", false, false, 1, -1, 0, NULL, false, false, NULL,
	  NULL },
	{ "space before colon", "HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", false, false, 1, -1, 200,
	  NULL, false, false, NULL, NULL },
	{ "nothing: timeout", "", false, false, 1, -1, 0, NULL, false, false, NULL, NULL },
};

struct writer_arg {
	const struct parse_case *pc;
	int fd;
};

/* The "server": the wire bytes one at a time, so every parser state is resumed from a partial
 * buffer; then a half-close (eof_after) or wait for the reader to hang up. */
static void *write_wire(void *arg)
{
	const struct writer_arg *wa = arg;
	struct timespec gap = { .tv_nsec = 20000 };
	char c;

	for (size_t i = 0; wa->pc->wire[i] != '\0'; i++) {
		if (send(wa->fd, wa->pc->wire + i, 1, MSG_NOSIGNAL) != 1) {
			return NULL;
		}
		nanosleep(&gap, NULL);
	}
	if (wa->pc->eof_after) {
		shutdown(wa->fd, SHUT_WR);
	} else {
		(void)!read(wa->fd, &c, 1);
	}
	return NULL;
}

/* Parameters are indices: Criterion copies them into a re-executed worker, where pointers
 * into this process's data would not be valid. */
static size_t parse_case_ids[sizeof(parse_cases) / sizeof(parse_cases[0])];

ParameterizedTestParameters(support, httpc_parser)
{
	for (size_t i = 0; i < sizeof(parse_case_ids) / sizeof(parse_case_ids[0]); i++) {
		parse_case_ids[i] = i;
	}
	return cr_make_param_array(size_t, parse_case_ids,
	                           sizeof(parse_case_ids) / sizeof(parse_case_ids[0]));
}

ParameterizedTest(size_t *id, support, httpc_parser)
{
	const struct parse_case *pc = &parse_cases[*id];
	struct writer_arg wa = { .pc = pc };
	pthread_t writer;
	struct httpc_response r;
	int sv[2];
	int rc = 0;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	wa.fd = sv[1];
	cr_assert_eq(pthread_create(&writer, NULL, write_wire, &wa), 0);
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
	for (int i = 0; i < pc->n_responses; i++) {
		rc = httpc_read_response(sv[0], &r, i == 0 && pc->head_request,
		                         pc->wire[0] == '\0' ? 100 : T_MS);
		if (i + 1 < pc->n_responses) {
			cr_assert_eq(rc, 0, "%s: response %d", pc->name, i);
			httpc_response_free(&r);
		}
	}
	cr_assert_eq(rc, pc->rc, "%s", pc->name);
	cr_assert_eq(r.status, pc->status, "%s", pc->name);
	cr_assert_eq(r.closed, pc->closed, "%s", pc->name);
	if (rc == 0) {
		cr_assert_str_eq((const char *)r.body, pc->body, "%s", pc->name);
		cr_assert_eq(r.body_len, strlen(pc->body), "%s", pc->name);
		cr_assert_eq(r.chunked, pc->chunked, "%s", pc->name);
		if (pc->hdr_name != NULL && pc->hdr_value != NULL) {
			cr_assert_str_eq(httpc_header(&r, pc->hdr_name), pc->hdr_value, "%s",
			                 pc->name);
		} else if (pc->hdr_name != NULL) {
			cr_assert_null(httpc_header(&r, pc->hdr_name), "%s: %s is not kept",
			               pc->name, pc->hdr_name);
		}
	} else {
		cr_assert_null(r.headers, "%s", pc->name);
		cr_assert_null(r.body, "%s", pc->name);
	}
	httpc_response_free(&r);
	httpc_close(sv[0]); /* releases a writer that holds the line */
	cr_assert_eq(pthread_join(writer, NULL), 0);
	close(sv[1]);
}

/* ---- certs ---- */

static X509 *load_cert(const char *dir, const char *name)
{
	char *path;
	FILE *f;
	X509 *x;
	struct stat st;

	cr_assert_eq(asprintf(&path, "%s/%s", dir, name) > 0, true);
	cr_assert_eq(stat(path, &st), 0, "%s", path);
	cr_assert_eq(st.st_mode & 0777, 0600, "%s", path);
	f = fopen(path, "r");
	cr_assert_not_null(f);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	free(path);
	cr_assert_not_null(x);
	return x;
}

static int verify_with(X509 *ca, X509 *leaf)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	int ok;

	X509_STORE_add_cert(store, ca);
	X509_STORE_CTX_init(ctx, store, leaf, NULL);
	X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
	X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(ctx), X509_V_FLAG_X509_STRICT);
	ok = X509_verify_cert(ctx);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return ok;
}

Test(support, certs_verify)
{
	char *dir = harness_tmpdir();
	X509 *ca;
	X509 *leaf;
	X509 *other_ca;
	char *key_path;
	struct stat st;

	cr_assert_eq(certs_make(dir, "", "localhost, upstream.test,127.0.0.1,::1"), 0);
	cr_assert_eq(certs_make(dir, "other-", "localhost"), 0);
	cr_assert_eq(certs_make(dir, "x", ""), -1, "no names");
	ca = load_cert(dir, "ca.pem");
	leaf = load_cert(dir, "cert.pem");
	other_ca = load_cert(dir, "other-ca.pem");
	cr_assert_eq(asprintf(&key_path, "%s/key.pem", dir) > 0, true);
	cr_assert_eq(stat(key_path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	free(key_path);

	cr_assert_eq(verify_with(ca, leaf), 1, "leaf verifies against its CA (strict)");
	cr_assert_neq(verify_with(other_ca, leaf), 1, "and not against another CA");
	cr_assert_eq(X509_check_ca(ca), 1);
	cr_assert_eq(X509_check_ca(leaf), 0);
	cr_assert_eq(X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0), 1);
	cr_assert_eq(X509_check_host(leaf, "localhost", 0, 0, NULL), 1);
	cr_assert_eq(X509_check_host(leaf, "upstream.test", 0, 0, NULL), 1);
	cr_assert_eq(X509_check_host(leaf, "evil.test", 0, 0, NULL), 0);
	cr_assert_eq(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
	cr_assert_eq(X509_check_ip_asc(leaf, "::1", 0), 1);
	cr_assert_eq(X509_check_ip_asc(leaf, "127.0.0.2", 0), 0);
	cr_assert_lt(X509_cmp_current_time(X509_get0_notBefore(leaf)), 0);
	cr_assert_gt(X509_cmp_current_time(X509_get0_notAfter(leaf)), 0);
	cr_assert_neq(ASN1_INTEGER_cmp(X509_get0_serialNumber(ca), X509_get0_serialNumber(leaf)),
	              0);
	X509_free(ca);
	X509_free(leaf);
	X509_free(other_ca);
	harness_tmpdir_free(dir);
}

/* ---- mock: echo, log, behaviours ---- */

Test(support, mock_echo_and_log)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, NULL);
	static const char body[] = "{\"a\":1}";
	const char *raw_uri = "/v1/contacts/%2e%2e/x;p?q=a%20b&q=c&locationId=L1";
	struct httpc_response r;
	char sha[65];
	json_t *echo;
	json_t *log;
	json_t *e;
	json_t *h;

	cr_assert_eq(harness_wait_notify(m.proc, "READY=1", 0), 0);
	cr_assert_eq(harness_wait_notify(m.proc, "READY=1", 50), -1, "consumed");
	cr_assert_not_null(strstr(m.proc->ready_vars, "X_MOCK_LISTEN=127.0.0.1:"));
	{
		char *ctl = harness_notify_var(m.proc, "X_MOCK_CONTROL");

		cr_assert_str_eq(ctl, m.addr, "without TLS, control is the same port");
		free(ctl);
	}

	cr_assert_eq(
	        httpc_request(m.addr, "POST", raw_uri,
	                      "X-B: 2\r\nX-A: 1\r\nx-a: 3\r\nContent-Type: application/json\r\n",
	                      body, strlen(body), &r, T_MS),
	        0);
	cr_assert_eq(r.status, 200);
	cr_assert_str_eq(httpc_header(&r, "content-type"), "application/json");
	cr_assert_null(httpc_header(&r, "x-ratelimit-max"), "no limiter, no headers");
	echo = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	cr_assert_not_null(echo);
	cr_assert_str_eq(entry_str(echo, "method"), "POST");
	cr_assert_str_eq(entry_str(echo, "uri"), raw_uri, "byte-exact URI");
	cr_assert_eq(entry_int(echo, "body_len"), (long)strlen(body));
	sha256_hex(body, strlen(body), sha);
	cr_assert_str_eq(entry_str(echo, "body_sha256"), sha);
	h = json_object_get(echo, "headers");
	/* received order: Host, Content-Length (added by httpc), then ours */
	cr_assert_str_eq(json_string_value(json_array_get(json_array_get(h, 2), 0)), "X-B");
	cr_assert_str_eq(json_string_value(json_array_get(json_array_get(h, 3), 0)), "X-A");
	cr_assert_str_eq(json_string_value(json_array_get(json_array_get(h, 4), 0)), "x-a");
	cr_assert_str_eq(json_string_value(json_array_get(json_array_get(h, 4), 1)), "3");
	json_decref(echo);
	httpc_response_free(&r);

	/* HEAD: no body but the length it would have */
	cr_assert_eq(httpc_request(m.addr, "HEAD", "/head", NULL, NULL, 0, &r, T_MS), 0);
	cr_assert_eq(r.status, 200);
	cr_assert_eq(r.body_len, 0);
	cr_assert_gt(atol(httpc_header(&r, "Content-Length")), 0);
	httpc_response_free(&r);

	/* control paths are not recorded */
	json_decref(call_json(m.addr, "GET", "/__mock/stats", NULL, 200));
	json_decref(call_json(m.addr, "GET", "/__mock/nope", NULL, 404));
	json_decref(call_json(m.addr, "POST", "/__mock/log", NULL, 405));

	log = mock_log(m.addr, 0);
	cr_assert_eq(json_array_size(log), 2);
	e = json_array_get(log, 0);
	cr_assert_eq(entry_int(e, "index"), 0);
	cr_assert_str_eq(entry_str(e, "uri"), raw_uri);
	cr_assert_str_eq(entry_str(e, "method"), "POST");
	cr_assert_str_eq(entry_str(e, "body_sha256"), sha);
	cr_assert_eq(entry_int(e, "status"), 200);
	cr_assert_str_eq(entry_str(e, "key"), "anon");
	cr_assert(json_is_real(json_object_get(e, "t_ms")));
	cr_assert_str_eq(entry_str(json_array_get(log, 1), "method"), "HEAD");
	cr_assert_geq(json_real_value(json_object_get(json_array_get(log, 1), "t_ms")),
	              json_real_value(json_object_get(e, "t_ms")));
	json_decref(log);

	log = mock_log(m.addr, 1);
	cr_assert_eq(json_array_size(log), 1);
	cr_assert_eq(entry_int(json_array_get(log, 0), "index"), 1);
	json_decref(log);

	mock_reset(m.addr);
	log = mock_log(m.addr, 0);
	cr_assert_eq(json_array_size(log), 0);
	json_decref(log);

	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(support, mock_pipelining_and_split_writes)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, NULL);
	const char *pipeline = "GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\n"
	                       "HEAD /p/2 HTTP/1.1\r\nHost: x\r\n\r\n"
	                       "POST /p/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	                       "GET /mock/status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
	                       "GET /p/5 HTTP/1.1\r\nHost: x\r\n\r\n";
	const char *expect[] = { "/p/1", NULL, "/p/3", NULL, "/p/5" };
	int fd = httpc_connect(m.addr);

	cr_assert_geq(fd, 0);
	cr_assert_eq(httpc_send_all(fd, pipeline, strlen(pipeline)), 0);
	for (int i = 0; i < 5; i++) {
		struct httpc_response r;

		cr_assert_eq(httpc_read_response(fd, &r, i == 1, T_MS), 0, "response %d", i);
		cr_assert_eq(r.status, i == 3 ? 204 : 200);
		cr_assert(!r.closed);
		if (expect[i] != NULL) {
			json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);

			cr_assert_str_eq(entry_str(j, "uri"), expect[i], "in order");
			json_decref(j);
		} else {
			cr_assert_eq(r.body_len, 0);
		}
		httpc_response_free(&r);
	}

	/* A request cut at awkward offsets arrives whole. */
	{
		const char *req = "GET /split/abcdefghijklmnopqrstuvwxyz?k=v HTTP/1.1\r\n"
		                  "Host: x\r\nX-Long: 0123456789\r\n\r\n";
		size_t cuts[] = { 1, 5, 20, 21, 50, strlen(req) - 2, strlen(req) - 1 };
		struct httpc_response r;
		json_t *j;

		cr_assert_eq(httpc_send_split(fd, req, strlen(req), cuts, 7, 2000), 0);
		cr_assert_eq(httpc_read_response(fd, &r, false, T_MS), 0);
		j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
		cr_assert_str_eq(entry_str(j, "uri"), "/split/abcdefghijklmnopqrstuvwxyz?k=v");
		json_decref(j);
		httpc_response_free(&r);
	}
	httpc_close(fd);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(support, mock_big_and_chunked_bodies)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, NULL);
	static const struct {
		size_t bytes;
		bool chunked;
	} cases[] = {
		{ 0, false },     { 1, true },          { 100000, true },
		{ 16384, false }, { 32u << 20, false }, { (30u << 20) + 12345, true },
	};
	int fd = httpc_connect(m.addr);

	cr_assert_geq(fd, 0);
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		char raw[128];
		char sha[65];
		struct httpc_response r;
		size_t bad = 0;

		snprintf(raw, sizeof(raw), "GET /mock/big?bytes=%zu%s HTTP/1.1\r\nHost: x\r\n\r\n",
		         cases[c].bytes, cases[c].chunked ? "&chunked=1" : "");
		exchange(fd, raw, false, &r);
		cr_assert_eq(r.status, 200);
		cr_assert_eq(r.chunked, cases[c].chunked, "case %zu", c);
		cr_assert_eq(r.body_len, cases[c].bytes, "case %zu", c);
		cr_assert_eq(r.body[r.body_len], '\0');
		for (size_t i = 0; i < r.body_len; i++) {
			bad += r.body[i] != pattern_byte(i);
		}
		cr_assert_eq(bad, 0, "case %zu: pattern", c);
		sha256_hex(r.body, r.body_len, sha);
		cr_assert_str_eq(httpc_header(&r, "X-Mock-Sha256"), sha);
		httpc_response_free(&r);
	}

	/* HEAD: headers only, the length announced; the connection stays in step */
	{
		struct httpc_response r;

		exchange(fd, "HEAD /mock/big?bytes=5000 HTTP/1.1\r\nHost: x\r\n\r\n", true, &r);
		cr_assert_str_eq(httpc_header(&r, "Content-Length"), "5000");
		cr_assert_eq(r.body_len, 0);
		httpc_response_free(&r);
		exchange(fd, "GET /mock/big?bytes=3 HTTP/1.1\r\nHost: x\r\n\r\n", false, &r);
		cr_assert_eq(r.body_len, 3);
		httpc_response_free(&r);
	}
	httpc_close(fd);

	/* A 31 MB upload is hashed by the mock. */
	{
		size_t n = (31u << 20) + 7;
		unsigned char *up = malloc(n);
		char sha[65];
		struct httpc_response r;
		json_t *j;

		for (size_t i = 0; i < n; i++) {
			up[i] = (unsigned char)(i * 7 + (i >> 13));
		}
		sha256_hex(up, n, sha);
		cr_assert_eq(httpc_request(m.addr, "PUT", "/upload", NULL, up, n, &r, 60000), 0);
		free(up);
		j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
		cr_assert_eq(entry_int(j, "body_len"), (long)n);
		cr_assert_str_eq(entry_str(j, "body_sha256"), sha);
		json_decref(j);
		httpc_response_free(&r);
	}
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(support, mock_behaviours)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, NULL);
	struct httpc_response r;
	json_t *log;
	int64_t t0;
	int fd;

	/* status: 503 with JSON, 304 without a body and the connection still usable */
	fd = httpc_connect(m.addr);
	exchange(fd, "GET /mock/status/503 HTTP/1.1\r\nHost: x\r\n\r\n", false, &r);
	cr_assert_eq(r.status, 503);
	cr_assert_not_null(strstr((const char *)r.body, "\"statusCode\":503"));
	httpc_response_free(&r);
	exchange(fd, "GET /mock/status/304 HTTP/1.1\r\nHost: x\r\n\r\n", false, &r);
	cr_assert_eq(r.status, 304);
	cr_assert_eq(r.body_len, 0);
	httpc_response_free(&r);
	exchange(fd, "GET /mock/status/1xx HTTP/1.1\r\nHost: x\r\n\r\n", false, &r);
	cr_assert_eq(r.status, 400);
	httpc_response_free(&r);

	/* slow: at least the delay */
	t0 = harness_now_ms();
	exchange(fd, "GET /mock/slow?ms=150 HTTP/1.1\r\nHost: x\r\n\r\n", false, &r);
	cr_assert_eq(r.status, 200);
	cr_assert_geq(harness_now_ms() - t0, 150);
	httpc_response_free(&r);

	/* bigheaders */
	exchange(fd, "GET /mock/bigheaders?bytes=200000 HTTP/1.1\r\nHost: x\r\n\r\n", false, &r);
	{
		size_t total = 0;

		for (size_t i = 0; i < r.n_headers; i++) {
			if (strncmp(r.headers[i].name, "X-Pad-", 6) == 0) {
				total += strlen(r.headers[i].name) + strlen(r.headers[i].value) + 4;
			}
		}
		cr_assert_geq(total, 200000);
		cr_assert_lt(total, 201000);
	}
	httpc_response_free(&r);

	/* close: no answer, the connection goes */
	exchange(fd,
	         "GET /mock/headers?X-RateLimit-Max=10&x-custom=a%20b&Content-Length=5 HTTP/1.1\r\n"
	         "Host: x\r\n\r\n",
	         false, &r);
	cr_assert_str_eq(httpc_header(&r, "X-RateLimit-Max"), "10");
	cr_assert_str_eq(httpc_header(&r, "x-custom"), "a b");
	cr_assert_eq(httpc_header_count(&r, "Content-Length"), 1);
	cr_assert_neq(atol(httpc_header(&r, "Content-Length")), 5);
	httpc_response_free(&r);
	cr_assert_eq(httpc_send_all(fd, "GET /mock/close HTTP/1.1\r\nHost: x\r\n\r\n", 37), 0);
	cr_assert_eq(httpc_read_response(fd, &r, false, T_MS), -1);
	cr_assert_eq(r.status, 0);
	cr_assert(r.closed);
	cr_assert(httpc_wait_closed(fd, T_MS));
	httpc_close(fd);

	/* truncate: the head, 1000 of 100000 bytes, then close */
	fd = httpc_connect(m.addr);
	cr_assert_eq(httpc_send_all(fd, "GET /mock/truncate HTTP/1.1\r\nHost: x\r\n\r\n", 40), 0);
	cr_assert_eq(httpc_read_response(fd, &r, false, T_MS), -1);
	cr_assert_eq(r.status, 200);
	cr_assert_eq(r.body_len, 1000);
	cr_assert(r.closed);
	cr_assert_null(r.headers, "nothing to free after a failure");
	httpc_close(fd);

	/* headers: chunked on request, Connection: close honoured */
	fd = httpc_connect(m.addr);
	exchange(fd,
	         "GET /mock/headers?Transfer-Encoding=chunked&Connection=close HTTP/1.1\r\n"
	         "Host: x\r\n\r\n",
	         false, &r);
	cr_assert(r.chunked);
	cr_assert(r.closed);
	cr_assert_null(httpc_header(&r, "Content-Length"));
	cr_assert_not_null(strstr((const char *)r.body, "/mock/headers"));
	httpc_response_free(&r);
	cr_assert(httpc_wait_closed(fd, T_MS));
	httpc_close(fd);

	/* a client error does not hurt the mock */
	fd = httpc_connect(m.addr);
	cr_assert_eq(httpc_send_all(fd, "GARBAGE\r\n\r\n", 11), 0);
	cr_assert(httpc_wait_closed(fd, T_MS));
	httpc_close(fd);

	/* a client that leaves during slow or big streaming does not hurt it either */
	fd = httpc_connect(m.addr);
	cr_assert_eq(httpc_send_all(fd, "GET /mock/slow?ms=100 HTTP/1.1\r\nHost: x\r\n\r\n", 43),
	             0);
	httpc_close(fd);
	fd = httpc_connect(m.addr);
	cr_assert_eq(
	        httpc_send_all(fd, "GET /mock/big?bytes=50000000 HTTP/1.1\r\nHost: x\r\n\r\n", 51),
	        0);
	/* leave once it is streaming: 50 MB cannot all sit in socket buffers we never read */
	json_decref(mock_log_wait(m.addr, 11));
	httpc_close(fd);

	log = mock_log_wait(m.addr, 11);
	{
		static const int want[] = { 503, 304, 400, 200, 200, 200, 0, 200, 200, 200, 200 };

		cr_assert_eq(json_array_size(log), sizeof(want) / sizeof(want[0]));
		for (size_t i = 0; i < json_array_size(log); i++) {
			cr_assert_eq(entry_int(json_array_get(log, i), "status"), want[i],
			             "entry %zu", i);
		}
	}
	json_decref(log);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- mock: rate limiter ---- */

/*
 * Replay the log through the rule the mock claims (the window oracle) and compare every
 * decision; also count, with two pointers, admissions in every window.
 */
static void check_oracle(json_t *log, long n_max, double w_ms, bool fixed, double t0_ms,
                         size_t *n_admit, size_t *n_refuse)
{
	size_t n = json_array_size(log);
	double *admitted = calloc(n + 1, sizeof(double));
	size_t na = 0;

	*n_admit = *n_refuse = 0;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(log, i);
		double t = json_real_value(json_object_get(e, "t_ms"));
		size_t count = 0;
		long want;

		for (size_t j = 0; j < na; j++) {
			if (fixed) {
				double ws = t0_ms + floor((t - t0_ms) / w_ms) * w_ms;

				count += admitted[j] >= ws;
			} else {
				count += admitted[j] > t - w_ms;
			}
		}
		want = count < (size_t)n_max ? 200 : 429;
		cr_assert_eq(entry_int(e, "status"), want, "entry %zu at %.3f: count %zu", i, t,
		             count);
		if (want == 200) {
			admitted[na++] = t;
			(*n_admit)++;
		} else {
			(*n_refuse)++;
		}
	}
	if (!fixed) {
		/* at most N admissions in any half-open window of length W */
		for (size_t lo = 0, hi = 0; hi < na; hi++) {
			while (admitted[hi] - admitted[lo] >= w_ms) {
				lo++;
			}
			cr_assert_leq(hi - lo + 1, (size_t)n_max, "window at %.3f", admitted[lo]);
		}
	}
	free(admitted);
}

static void run_limiter(bool fixed)
{
	char *dir = harness_tmpdir();
	const char *args[] = {
		"--limit", "5", "--window-ms", "500", "--limit-mode", fixed ? "fixed" : "sliding",
		NULL
	};
	struct mock m = mock_start(dir, args);
	const char *raw = "GET /contacts/x HTTP/1.1\r\nHost: x\r\n"
	                  "Authorization: Bearer fake-key-A\r\n\r\n";
	json_t *stats;
	json_t *log;
	double t0;
	double start;
	size_t n_admit;
	size_t n_refuse;
	int fd = httpc_connect(m.addr);
	int n_sent = 0;

	cr_assert_geq(fd, 0);
	stats = call_json(m.addr, "GET", "/__mock/stats", NULL, 200);
	t0 = json_real_value(json_object_get(stats, "t0_ms"));
	json_decref(stats);

	/* 1.3 s of traffic, one call every 20 ms: 25 per window against a limit of 5 */
	start = now_ms_d();
	for (double at = start; at < start + 1300; at += 20) {
		struct httpc_response r;
		const char *rem;

		wait_until_ms(at);
		exchange(fd, raw, false, &r);
		n_sent++;
		cr_assert(r.status == 200 || r.status == 429, "status %d", r.status);
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-max"), "5");
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-interval-milliseconds"), "500");
		rem = httpc_header(&r, "x-ratelimit-remaining");
		cr_assert_not_null(rem);
		if (r.status == 429) {
			cr_assert_str_eq(rem, "0");
			cr_assert_str_eq((const char *)r.body,
			                 "{\"statusCode\":429,\"message\":\"Too Many Requests\"}");
		}
		httpc_response_free(&r);
	}
	/* another key has its own budget */
	{
		struct httpc_response r;

		exchange(fd,
		         "GET /other HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
		         "fake-key-B\r\n\r\n",
		         false, &r);
		cr_assert_eq(r.status, 200);
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-remaining"), "4");
		httpc_response_free(&r);
	}
	httpc_close(fd);

	log = mock_log(m.addr, 0);
	cr_assert_eq(json_array_size(log), (size_t)n_sent + 1);
	cr_assert_eq(json_array_size(log) > 0 &&
	                     strcmp(entry_str(json_array_get(log, 0), "key"),
	                            entry_str(json_array_get(log, n_sent), "key")) != 0,
	             true, "two keys");
	json_array_remove(log, (size_t)n_sent); /* key B: not part of A's oracle */
	check_oracle(log, 5, 500, fixed, t0, &n_admit, &n_refuse);
	/* the traffic spans at least two windows: admissions beyond one window, and refusals */
	cr_assert_geq(n_admit, 10, "admitted %zu", n_admit);
	cr_assert_geq(n_refuse, 1);
	{
		char *first = json_dumps(json_array_get(log, 0), 0);

		cr_assert_not_null(
		        strstr(first, "fake-key-A"),
		        "the Authorization header itself is recorded (tests check injection)");
		free(first);
	}
	for (size_t i = 0; i < json_array_size(log); i++) {
		cr_assert_null(strstr(entry_str(json_array_get(log, i), "key"), "fake-key"),
		               "keys never hold a token");
	}
	stats = call_json(m.addr, "GET", "/__mock/stats", NULL, 200);
	cr_assert_eq(json_integer_value(json_object_get(stats, "status_429")),
	             (json_int_t)n_refuse);
	json_decref(stats);
	json_decref(log);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(support, mock_limiter_sliding)
{
	run_limiter(false);
}

Test(support, mock_limiter_fixed)
{
	run_limiter(true);
}

static char *b64url(const char *s)
{
	static const char tbl[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = strlen(s);
	char *out = calloc(n * 4 / 3 + 4, 1);
	size_t k = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)(unsigned char)s[i] << 16;

		if (i + 1 < n) {
			v |= (uint32_t)(unsigned char)s[i + 1] << 8;
		}
		if (i + 2 < n) {
			v |= (uint32_t)(unsigned char)s[i + 2];
		}
		out[k++] = tbl[(v >> 18) & 63];
		out[k++] = tbl[(v >> 12) & 63];
		if (i + 1 < n) {
			out[k++] = tbl[(v >> 6) & 63];
		}
		if (i + 2 < n) {
			out[k++] = tbl[v & 63];
		}
	}
	return out;
}

static int get_status(const char *addr, const char *target, const char *headers,
                      struct httpc_response *r)
{
	cr_assert_eq(httpc_request(addr, "GET", target, headers, NULL, 0, r, T_MS), 0);
	return r->status;
}

Test(support, mock_limiter_keys_daily_and_spend)
{
	char *dir = harness_tmpdir();
	const char *args[] = { "--limit", "100", "--window-ms", "10000", "--daily", "3", NULL };
	struct mock m = mock_start(dir, args);
	char *payload = b64url("{\"authClass\":\"Location\",\"authClassId\":\"locA\","
	                       "\"oauthMeta\":{\"client\":\"app1\",\"clientKey\":\"app1-x\"},"
	                       "\"iat\":1751436979.849}");
	char *jwt_hdr;
	struct httpc_response r;
	json_t *log;
	json_t *j;

	cr_assert_eq(asprintf(&jwt_hdr, "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.%s.c2ln\r\n",
	                      payload) > 0,
	             true);
	free(payload);
	for (int i = 0; i < 3; i++) {
		char want[8];

		cr_assert_eq(get_status(m.addr, "/a", jwt_hdr, &r), 200);
		snprintf(want, sizeof(want), "%d", 2 - i);
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-daily-remaining"), want);
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-limit-daily"), "3");
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-remaining"), i == 0   ? "99"
		                                                            : i == 1 ? "98"
		                                                                     : "97");
		httpc_response_free(&r);
	}
	cr_assert_eq(get_status(m.addr, "/a", jwt_hdr, &r), 429);
	cr_assert_str_eq(httpc_header(&r, "x-ratelimit-daily-remaining"), "0");
	cr_assert_str_eq(httpc_header(&r, "x-ratelimit-remaining"), "97", "burst had room");
	{
		long reset = atol(httpc_header(&r, "x-ratelimit-daily-reset"));

		cr_assert(reset > 86400000 - 60000 && reset <= 86400000, "reset %ld", reset);
	}
	httpc_response_free(&r);
	free(jwt_hdr);

	/* PITs: burst per token and location, daily per location (shared by all PITs) */
	cr_assert_eq(get_status(m.addr, "/b",
	                        "Authorization: Bearer pit-1111\r\nx-location-id: loc9\r\n", &r),
	             200);
	httpc_response_free(&r);
	cr_assert_eq(
	        get_status(m.addr, "/b?locationId=loc9", "Authorization: Bearer pit-2222\r\n", &r),
	        200);
	httpc_response_free(&r);
	j = call_json(m.addr, "POST", "/__mock/spend?key=loc9&n=1", NULL, 200);
	cr_assert_eq(json_integer_value(json_object_get(j, "counted")), 3);
	json_decref(j);
	cr_assert_eq(get_status(m.addr, "/b",
	                        "Authorization: Bearer pit-3333\r\nlocationId: loc9\r\n", &r),
	             429, "daily of loc9 spent by two PITs and an outside client");
	httpc_response_free(&r);
	cr_assert_eq(get_status(m.addr, "/b",
	                        "Authorization: Bearer pit-1111\r\nx-location-id: loc8\r\n", &r),
	             200, "another location has its own day");
	httpc_response_free(&r);
	cr_assert_eq(get_status(m.addr, "/b", "Authorization: Bearer pit-1111\r\n", &r), 200);
	httpc_response_free(&r);
	json_decref(call_json(m.addr, "POST", "/__mock/spend?key=x", NULL, 400));

	log = mock_log(m.addr, 0);
	cr_assert_eq(json_array_size(log), 9);
	cr_assert_str_eq(entry_str(json_array_get(log, 0), "key"), "app1:locA");
	cr_assert_str_eq(entry_str(json_array_get(log, 0), "daily_key"), "app1:locA");
	cr_assert_eq(entry_int(json_array_get(log, 3), "status"), 429);
	{
		const char *k4 = entry_str(json_array_get(log, 4), "key");
		const char *k5 = entry_str(json_array_get(log, 5), "key");

		cr_assert_eq(strncmp(k4, "pit:", 4), 0);
		cr_assert_str_eq(k4 + strlen(k4) - 5, ":loc9");
		cr_assert_null(strstr(k4, "1111"), "no token in keys");
		cr_assert_str_neq(k4, k5, "burst per PIT");
		cr_assert_str_eq(entry_str(json_array_get(log, 4), "daily_key"), "loc9");
		cr_assert_str_eq(entry_str(json_array_get(log, 5), "daily_key"), "loc9");
		cr_assert_str_eq(entry_str(json_array_get(log, 8), "daily_key"),
		                 entry_str(json_array_get(log, 8), "key"));
	}
	json_decref(log);
	j = call_json(m.addr, "GET", "/__mock/stats", NULL, 200);
	cr_assert_eq(json_integer_value(json_object_get(j, "requests")), 9);
	cr_assert_eq(json_integer_value(json_object_get(j, "status_429")), 2);
	cr_assert_eq(
	        json_integer_value(json_object_get(
	                json_object_get(json_object_get(j, "by_key"), "app1:locA"), "requests")),
	        4);
	json_decref(j);

	/* reset clears the limiter too */
	mock_reset(m.addr);
	cr_assert_eq(get_status(m.addr, "/b",
	                        "Authorization: Bearer pit-3333\r\nlocationId: loc9\r\n", &r),
	             200);
	httpc_response_free(&r);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(support, mock_limiter_count_rejected)
{
	char *dir = harness_tmpdir();
	const char *args[] = { "--limit", "2", "--window-ms", "60000", "--count-rejected", NULL };
	struct mock m = mock_start(dir, args);
	static const int want[] = { 200, 200, 429, 429 };
	struct httpc_response r;
	const char *key;
	char target[128];
	json_t *log;
	json_t *j;

	for (int i = 0; i < 4; i++) {
		cr_assert_eq(get_status(m.addr, "/c", "Authorization: Bearer k\r\n", &r), want[i]);
		httpc_response_free(&r);
	}
	log = mock_log(m.addr, 0);
	key = entry_str(json_array_get(log, 0), "key");
	snprintf(target, sizeof(target), "/__mock/spend?key=%s&n=0", key);
	j = call_json(m.addr, "POST", target, NULL, 200);
	cr_assert_eq(json_integer_value(json_object_get(j, "counted")), 4, "refused calls counted");
	json_decref(j);
	json_decref(log);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- mock: jitter ---- */

Test(support, mock_jitter_bounds)
{
	char *dir = harness_tmpdir();
	const char *args[] = { "--jitter-ms", "60", "--seed", "42", NULL };
	struct mock m = mock_start(dir, args);
	enum { N = 24 };
	double sent[N];
	double done[N];
	double max_delay = 0;
	double min_delay = 1e9;
	json_t *log;
	int fd = httpc_connect(m.addr);

	for (int i = 0; i < N; i++) {
		char raw[96];
		struct httpc_response r;

		snprintf(raw, sizeof(raw), "GET /j/%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
		sent[i] = now_ms_d();
		exchange(fd, raw, false, &r);
		done[i] = now_ms_d();
		httpc_response_free(&r);
	}
	httpc_close(fd);
	log = mock_log(m.addr, 0);
	cr_assert_eq(json_array_size(log), N);
	for (int i = 0; i < N; i++) {
		json_t *e = json_array_get(log, (size_t)i);
		double t = json_real_value(json_object_get(e, "t_ms"));
		char want[16];

		snprintf(want, sizeof(want), "/j/%d", i);
		cr_assert_str_eq(entry_str(e, "uri"), want);
		/* counted after it was sent, before it was answered */
		cr_assert_geq(t, sent[i]);
		cr_assert_leq(t, done[i]);
		if (t - sent[i] > max_delay) {
			max_delay = t - sent[i];
		}
		if (t - sent[i] < min_delay) {
			min_delay = t - sent[i];
		}
	}
	/* uniform on [0, 60]: 24 draws all under 30 ms or all over 30 ms has odds 2^-23 */
	cr_assert_geq(max_delay, 30.0, "max %.3f", max_delay);
	cr_assert_lt(min_delay, 30.0 + 5.0, "min %.3f", min_delay);
	json_decref(log);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- mock over TLS ---- */

static int tls_get(const char *addr, const char *ca_path, const char *host, char **out)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl;
	int fd = httpc_connect(addr);
	int rc = -1;
	char buf[4096];
	size_t used = 0;
	const char *req = "GET /tls-check HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

	*out = NULL;
	cr_assert_geq(fd, 0);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* plain blocking SSL below */
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	cr_assert_eq(SSL_CTX_load_verify_locations(ctx, ca_path, NULL), 1);
	ssl = SSL_new(ctx);
	SSL_set_tlsext_host_name(ssl, host);
	SSL_set1_host(ssl, host);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) == 1 && SSL_write(ssl, req, (int)strlen(req)) > 0) {
		for (;;) {
			int n = SSL_read(ssl, buf + used, (int)(sizeof(buf) - 1 - used));

			if (n <= 0) {
				break;
			}
			used += (size_t)n;
		}
		buf[used] = '\0';
		*out = strdup(buf);
		rc = 0;
	}
	ERR_clear_error();
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	httpc_close(fd);
	return rc;
}

Test(support, mock_tls)
{
	char *dir = harness_tmpdir();
	char *cert;
	char *key;
	char *ca;
	char *other_ca;
	char *resp;
	struct mock m;

	cr_assert_eq(certs_make(dir, "", "localhost,127.0.0.1"), 0);
	cr_assert_eq(certs_make(dir, "o-", "localhost"), 0);
	cr_assert_eq(asprintf(&cert, "%s/cert.pem", dir) > 0, true);
	cr_assert_eq(asprintf(&key, "%s/key.pem", dir) > 0, true);
	cr_assert_eq(asprintf(&ca, "%s/ca.pem", dir) > 0, true);
	cr_assert_eq(asprintf(&other_ca, "%s/o-ca.pem", dir) > 0, true);
	{
		const char *args[] = { "--tls-cert", cert, "--tls-key", key, NULL };

		m = mock_start(dir, args);
	}
	cr_assert_eq(tls_get(m.addr, ca, "localhost", &resp), 0, "handshake with the test CA");
	cr_assert_eq(strncmp(resp, "HTTP/1.1 200 ", 13), 0, "%s", resp);
	cr_assert_not_null(strstr(resp, "\"uri\":\"/tls-check\""));
	free(resp);
	cr_assert_eq(tls_get(m.addr, other_ca, "localhost", &resp), -1, "another CA is refused");
	cr_assert_eq(tls_get(m.addr, ca, "wrong.example", &resp), -1, "a wrong name is refused");

	/* plain HTTP to a TLS port: refused without hurting the mock */
	{
		struct httpc_response r;

		cr_assert_eq(httpc_request(m.addr, "GET", "/plain", NULL, NULL, 0, &r, T_MS), -1);
	}
	cr_assert_eq(tls_get(m.addr, ca, "localhost", &resp), 0, "still serving");
	free(resp);

	/* control over plain HTTP on its own port: the log holds the two TLS calls only */
	{
		char *ctl = harness_notify_var(m.proc, "X_MOCK_CONTROL");
		json_t *log;

		cr_assert_not_null(ctl);
		cr_assert_str_neq(ctl, m.addr);
		json_decref(call_json(ctl, "GET", "/tls-check", NULL, 404));
		log = mock_log(ctl, 0);
		cr_assert_eq(json_array_size(log), 2,
		             "failed handshakes and the control port record nothing");
		cr_assert_str_eq(entry_str(json_array_get(log, 0), "uri"), "/tls-check");
		json_decref(log);
		free(ctl);
	}
	mock_stop(&m);
	free(cert);
	free(key);
	free(ca);
	free(other_ca);
	harness_tmpdir_free(dir);
}
