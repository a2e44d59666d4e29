/*
 * harness.c: child processes and scratch directories for integration tests.
 *
 * Owns a registry of every child spawned and every scratch directory made in this test worker,
 * so that harness_cleanup_all (a Criterion .fini) can kill and reap everything even when an
 * assertion aborted the test body. Children also get PR_SET_PDEATHSIG(SIGKILL), which covers a
 * worker killed outright (Criterion timeout).
 *
 * Readiness is the systemd notify protocol: the harness binds a unix datagram socket per child,
 * passes its path in NOTIFY_SOCKET, and collects the datagrams ('\n'-separated KEY=VALUE lines).
 * Waits poll that socket together with a pidfd of the child (or short poll slices where pidfd_open
 * is missing), so a child that dies is noticed at once and no wait is a fixed sleep.
 *
 * Also owns the run's transcript for the secret scan (see harness.h): the directory, the copy of
 * each child's stderr when it is freed, the list of mock upstream addresses announced over
 * NOTIFY_SOCKET (httpc files their responses apart), and the secrets file. Transcript writes
 * happen under one lock, since tests call httpc from several threads.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Where pidfd_open is unavailable, waits re-check the child this often (ms). */
#define FALLBACK_SLICE_MS 10

#define TRANSCRIPT_ENV "GHLPROXY_TEST_TRANSCRIPT_DIR"

/* The public struct first, so that a struct harness_proc * converts back to its wrapper. */
struct proc_priv {
	struct harness_proc pub;
	char **dgrams; /* each datagram received, NUL-terminated */
	size_t n_dgrams;
	size_t n_consumed; /* datagrams harness_wait_notify has consumed */
	int pidfd;         /* -1 when pidfd_open is unavailable */
	off_t log_start;   /* size of stderr_path when spawned: its earlier bytes are not ours */
	bool is_upstream;  /* a mock upstream (its binary, or it sent X_MOCK_LISTEN) */
	struct proc_priv *next;
};

struct tmpdir_entry {
	char *path;
	struct tmpdir_entry *next;
};

static struct proc_priv *g_procs;
static struct tmpdir_entry *g_tmpdirs;
static unsigned g_spawn_seq; /* makes every notify socket path unique within a worker */

/* The transcript (see harness.h), all behind g_tx_lock. The directory is resolved once per
 * process; the addresses are those mocks announced to this worker. */
static pthread_mutex_t g_tx_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_tx_resolved;
static char *g_tx_dir;
static char **g_upstream_addrs;
static size_t g_n_upstream_addrs;

static struct proc_priv *priv_of(struct harness_proc *p)
{
	return (struct proc_priv *)p;
}

int64_t harness_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);

	if (d == NULL) {
		abort();
	}
	return d;
}

static char *path_join(const char *dir, const char *name)
{
	char *out;

	if (asprintf(&out, "%s/%s", dir, name) < 0) {
		abort();
	}
	return out;
}

/* ---- scratch directories ---- */

char *harness_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	struct tmpdir_entry *e;
	char *tmpl;

	/* Socket paths inside must stay under 108 bytes: a long TMPDIR is not usable. */
	if (base == NULL || base[0] == '\0' || strlen(base) > 48) {
		base = "/tmp";
	}
	if (asprintf(&tmpl, "%s/ghlp.XXXXXX", base) < 0) {
		return NULL;
	}
	if (mkdtemp(tmpl) == NULL) {
		fprintf(stderr, "harness: mkdtemp %s: %s\n", tmpl, strerror(errno));
		free(tmpl);
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if (e == NULL) {
		abort();
	}
	e->path = tmpl; /* the registry owns the caller's string: nothing leaks on abort */
	e->next = g_tmpdirs;
	g_tmpdirs = e;
	return tmpl;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	if (remove(path) != 0 && errno != ENOENT) {
		fprintf(stderr, "harness: remove %s: %s\n", path, strerror(errno));
	}
	return 0;
}

static void rm_rf(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Take `dir` (the very string harness_tmpdir returned) out of the registry. */
static void tmpdir_unregister(const char *dir)
{
	struct tmpdir_entry **pp;

	for (pp = &g_tmpdirs; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->path == dir) {
			struct tmpdir_entry *e = *pp;

			*pp = e->next;
			free(e);
			return;
		}
	}
}

void harness_tmpdir_free(char *dir)
{
	if (dir == NULL) {
		return;
	}
	tmpdir_unregister(dir);
	rm_rf(dir);
	free(dir);
}

int harness_write_file(const char *dir, const char *name, const char *content)
{
	char *path = path_join(dir, name);
	size_t len = strlen(content);
	size_t off = 0;
	int fd;
	int rc = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	free(path);
	if (fd < 0) {
		return -errno;
	}
	while (off < len) {
		ssize_t n = write(fd, content + off, len - off);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			rc = -errno;
			break;
		}
		off += (size_t)n;
	}
	if (close(fd) != 0 && rc == 0) {
		rc = -errno;
	}
	return rc;
}

char *harness_read_file(const char *path, size_t *len)
{
	size_t cap = 4096;
	size_t used = 0;
	char *buf;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		return NULL;
	}
	buf = malloc(cap);
	if (buf == NULL) {
		close(fd);
		return NULL;
	}
	for (;;) {
		ssize_t n;

		if (cap - used < 2) {
			char *nb = realloc(buf, cap * 2);

			if (nb == NULL) {
				free(buf);
				close(fd);
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + used, cap - used - 1);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			free(buf);
			close(fd);
			return NULL;
		}
		if (n == 0) {
			break;
		}
		used += (size_t)n;
	}
	close(fd);
	buf[used] = '\0';
	if (len != NULL) {
		*len = used;
	}
	return buf;
}

/* ---- transcript ---- */

static int write_all(int fd, const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t off = 0;

	while (off < len) {
		ssize_t n = write(fd, p + off, len - off);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -1;
		}
		off += (size_t)n;
	}
	return 0;
}

/* mkdir -p; 0 or -1 (errno set). */
static int mkdir_p(const char *path)
{
	char *copy = xstrdup(path);
	int rc = 0;

	for (char *s = copy + 1; rc == 0; s++) {
		bool end = *s == '\0';

		if (*s != '/' && !end) {
			continue;
		}
		*s = '\0';
		if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
			rc = -1;
		}
		if (end) {
			break;
		}
		*s = '/';
	}
	free(copy);
	return rc;
}

static const char *transcript_dir_locked(void)
{
	if (!g_tx_resolved) {
		const char *v = getenv(TRANSCRIPT_ENV);

		g_tx_resolved = true;
		if (v != NULL && v[0] != '\0') {
			if (mkdir_p(v) == 0) {
				g_tx_dir = xstrdup(v);
			} else {
				fprintf(stderr, "harness: %s=%s: %s\n", TRANSCRIPT_ENV, v,
				        strerror(errno));
			}
		}
	}
	return g_tx_dir;
}

const char *harness_transcript_dir(void)
{
	const char *dir;

	pthread_mutex_lock(&g_tx_lock);
	dir = transcript_dir_locked();
	pthread_mutex_unlock(&g_tx_lock);
	return dir;
}

/* Append to dir/leaf (O_APPEND, one file per writer process); g_tx_lock held. */
static void transcript_write_locked(const char *leaf, const void *data, size_t len)
{
	const char *dir = transcript_dir_locked();
	char *path;
	int fd;

	if (dir == NULL) {
		return;
	}
	path = path_join(dir, leaf);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, data, len) != 0) {
		fprintf(stderr, "harness: transcript %s: %s\n", path, strerror(errno));
	}
	if (fd >= 0) {
		close(fd);
	}
	free(path);
}

void harness_transcript_append(const char *prefix, const void *data, size_t len)
{
	char leaf[128];

	snprintf(leaf, sizeof(leaf), "%s-%ld.txt", prefix, (long)getpid());
	pthread_mutex_lock(&g_tx_lock);
	transcript_write_locked(leaf, data, len);
	pthread_mutex_unlock(&g_tx_lock);
}

void harness_secret(const char *secret)
{
	static const char hex[] = "0123456789abcdef";
	size_t n;
	char *line;

	if (secret == NULL) {
		return;
	}
	/* Hex, one per line: any byte survives, and the file is no plain copy of them. */
	n = strlen(secret);
	line = malloc(2 * n + 2);
	if (line == NULL) {
		abort();
	}
	for (size_t i = 0; i < n; i++) {
		line[2 * i] = hex[(unsigned char)secret[i] >> 4];
		line[2 * i + 1] = hex[(unsigned char)secret[i] & 15];
	}
	line[2 * n] = '\n';
	pthread_mutex_lock(&g_tx_lock);
	transcript_write_locked("secrets.txt", line, 2 * n + 1);
	pthread_mutex_unlock(&g_tx_lock);
	free(line);
}

static void upstream_addr_add(const char *addr, size_t len)
{
	char **n;

	pthread_mutex_lock(&g_tx_lock);
	n = realloc(g_upstream_addrs, (g_n_upstream_addrs + 1) * sizeof(*n));
	if (n == NULL) {
		abort();
	}
	g_upstream_addrs = n;
	g_upstream_addrs[g_n_upstream_addrs] = strndup(addr, len);
	if (g_upstream_addrs[g_n_upstream_addrs] == NULL) {
		abort();
	}
	g_n_upstream_addrs++;
	pthread_mutex_unlock(&g_tx_lock);
}

bool harness_is_upstream_addr(const char *addr)
{
	bool found = false;

	pthread_mutex_lock(&g_tx_lock);
	for (size_t i = 0; i < g_n_upstream_addrs && !found; i++) {
		found = strcmp(g_upstream_addrs[i], addr) == 0;
	}
	pthread_mutex_unlock(&g_tx_lock);
	return found;
}

/* A datagram's X_MOCK_LISTEN / X_MOCK_CONTROL lines: the sender is a mock upstream. */
static void note_upstream(struct proc_priv *pp, const char *d)
{
	static const char *const vars[] = { "X_MOCK_LISTEN=", "X_MOCK_CONTROL=" };

	for (const char *s = d; *s != '\0';) {
		const char *e = strchr(s, '\n');
		size_t len = e == NULL ? strlen(s) : (size_t)(e - s);

		for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
			size_t vl = strlen(vars[i]);

			if (len > vl && memcmp(s, vars[i], vl) == 0) {
				pp->is_upstream = true;
				upstream_addr_add(s + vl, len - vl);
			}
		}
		if (e == NULL) {
			break;
		}
		s = e + 1;
	}
}

/* Copy what the child wrote to its stderr file since it was spawned into the transcript. */
static void transcript_proc_log(struct proc_priv *pp)
{
	struct harness_proc *p = &pp->pub;
	char leaf[128];
	char name[48];
	size_t len = 0;
	char *log;

	if (p->pid <= 0 || harness_transcript_dir() == NULL) {
		return;
	}
	log = harness_read_file(p->stderr_path, &len);
	if (log == NULL) {
		return; /* its directory is gone already: nothing to copy */
	}
	snprintf(name, sizeof(name), "%s", p->name);
	for (char *c = name; *c != '\0'; c++) {
		if (!isalnum((unsigned char)*c) && *c != '_' && *c != '.' && *c != '-') {
			*c = '_';
		}
	}
	snprintf(leaf, sizeof(leaf), "%slog-%s-%ld.txt", pp->is_upstream ? "upstream-" : "", name,
	         (long)p->pid);
	if ((off_t)len > pp->log_start) {
		pthread_mutex_lock(&g_tx_lock);
		transcript_write_locked(leaf, log + pp->log_start, len - (size_t)pp->log_start);
		pthread_mutex_unlock(&g_tx_lock);
	}
	free(log);
}

/* ---- children ---- */

static int env_name_len(const char *entry)
{
	const char *eq = strchr(entry, '=');

	return eq == NULL ? (int)strlen(entry) : (int)(eq - entry);
}

/* True if `entry` ("NAME=...") names a variable that extra_env or NOTIFY_SOCKET overrides. */
static bool env_overridden(const char *entry, char *const extra_env[])
{
	int n = env_name_len(entry);

	if (n == (int)strlen("NOTIFY_SOCKET") && strncmp(entry, "NOTIFY_SOCKET", (size_t)n) == 0) {
		return true;
	}
	for (size_t i = 0; extra_env != NULL && extra_env[i] != NULL; i++) {
		if (env_name_len(extra_env[i]) == n &&
		    strncmp(entry, extra_env[i], (size_t)n) == 0) {
			return true;
		}
	}
	return false;
}

/* Built before fork: the child must not allocate. Pointers borrow from environ and extra_env,
 * except the last entry (NOTIFY_SOCKET=...), which the caller frees. */
static char **build_env(char *const extra_env[], const char *notify_path)
{
	size_t n_env = 0;
	size_t n_extra = 0;
	size_t k = 0;
	char **envp;
	char *notify;

	while (environ[n_env] != NULL) {
		n_env++;
	}
	while (extra_env != NULL && extra_env[n_extra] != NULL) {
		n_extra++;
	}
	envp = calloc(n_env + n_extra + 2, sizeof(*envp));
	if (envp == NULL) {
		abort();
	}
	for (size_t i = 0; i < n_env; i++) {
		if (!env_overridden(environ[i], extra_env)) {
			envp[k++] = environ[i];
		}
	}
	for (size_t i = 0; i < n_extra; i++) {
		envp[k++] = extra_env[i];
	}
	if (asprintf(&notify, "NOTIFY_SOCKET=%s", notify_path) < 0) {
		abort();
	}
	envp[k++] = notify;
	envp[k] = NULL;
	return envp;
}

static void free_env(char **envp)
{
	size_t k = 0;

	while (envp[k] != NULL) {
		k++;
	}
	free(envp[k - 1]); /* NOTIFY_SOCKET=..., the only entry we own */
	free(envp);
}

static int bind_notify_socket(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		return -1;
	}
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static void close_inherited_fds(void)
{
#ifdef SYS_close_range
	if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) {
		return;
	}
#endif
	long max = sysconf(_SC_OPEN_MAX);

	if (max < 0 || max > 65536) {
		max = 65536;
	}
	for (int fd = 3; fd < (int)max; fd++) {
		close(fd);
	}
}

/* write(2) a message and errno's number: async-signal-safe, unlike stdio. */
static void child_fail(const char *what, const char *arg, int code)
{
	char num[16];
	int e = errno;
	int i = (int)sizeof(num);

	num[--i] = '\n';
	do {
		num[--i] = (char)('0' + e % 10);
		e /= 10;
	} while (e > 0 && i > 0);
	(void)!write(2, "harness: ", 9);
	(void)!write(2, what, strlen(what));
	(void)!write(2, arg, strlen(arg));
	(void)!write(2, ": errno ", 8);
	(void)!write(2, num + i, sizeof(num) - (size_t)i);
	_exit(code);
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void child_exec(const char *dir, int log_fd, int null_fd, pid_t parent, char *const argv[],
                       char **envp)
{
	sigset_t all;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
		_exit(126); /* the parent is already gone: do not outlive it */
	}
	for (int sig = 1; sig < NSIG; sig++) {
		signal(sig, SIG_DFL);
	}
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	if (dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 || dup2(log_fd, 2) < 0) {
		_exit(126);
	}
	close_inherited_fds();
	if (chdir(dir) != 0) {
		child_fail("chdir ", dir, 126);
	}
	execve(argv[0], argv, envp);
	child_fail("exec ", argv[0], 127);
}

static int open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
	long fd = syscall(SYS_pidfd_open, pid, 0);

	if (fd >= 0) {
		fcntl((int)fd, F_SETFD, FD_CLOEXEC);
		return (int)fd;
	}
#endif
	return -1;
}

struct harness_proc *harness_spawn(const char *dir, const char *name, char *const argv[],
                                   char *const extra_env[])
{
	const char *mock = harness_mock_bin();
	struct proc_priv *pp;
	struct harness_proc *p;
	struct stat st;
	char *leaf;
	char **envp;
	int log_fd;
	int null_fd;
	pid_t parent = getpid();
	pid_t pid;

	if (dir == NULL || name == NULL || argv == NULL || argv[0] == NULL) {
		return NULL;
	}
	/* The common failure, reported here rather than as a child that exits 127. */
	if (access(argv[0], X_OK) != 0) {
		fprintf(stderr, "harness: cannot run %s: %s\n", argv[0], strerror(errno));
		return NULL;
	}
	pp = calloc(1, sizeof(*pp));
	if (pp == NULL) {
		abort();
	}
	p = &pp->pub;
	pp->pidfd = -1;
	p->pid = -1;
	p->notify_fd = -1;
	p->name = xstrdup(name);
	if (asprintf(&leaf, "%s.log", name) < 0) {
		abort();
	}
	p->stderr_path = path_join(dir, leaf);
	free(leaf);
	if (asprintf(&leaf, "%s.%u.ntf", name, g_spawn_seq++) < 0) {
		abort();
	}
	p->notify_path = path_join(dir, leaf);
	free(leaf);
	p->ready_vars = xstrdup("");
	/* The log file is appended to: a process of the same name may have written there before. */
	pp->log_start = stat(p->stderr_path, &st) == 0 ? st.st_size : 0;
	pp->is_upstream = mock != NULL && strcmp(argv[0], mock) == 0;

	p->notify_fd = bind_notify_socket(p->notify_path);
	if (p->notify_fd < 0) {
		fprintf(stderr, "harness: notify socket %s: %s\n", p->notify_path, strerror(errno));
		p->reaped = true;
		harness_proc_free(p);
		return NULL;
	}
	log_fd = open(p->stderr_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (log_fd < 0 || null_fd < 0) {
		fprintf(stderr, "harness: open %s: %s\n", p->stderr_path, strerror(errno));
		if (log_fd >= 0) {
			close(log_fd);
		}
		if (null_fd >= 0) {
			close(null_fd);
		}
		p->reaped = true;
		harness_proc_free(p);
		return NULL;
	}
	envp = build_env(extra_env, p->notify_path);
	fflush(NULL); /* stdio buffers must not be written twice */
	pid = fork();
	if (pid == 0) {
		child_exec(dir, log_fd, null_fd, parent, argv, envp);
	}
	close(log_fd);
	close(null_fd);
	free_env(envp);
	if (pid < 0) {
		fprintf(stderr, "harness: fork: %s\n", strerror(errno));
		p->reaped = true;
		harness_proc_free(p);
		return NULL;
	}
	p->pid = pid;
	pp->pidfd = open_pidfd(pid);
	pp->next = g_procs;
	g_procs = pp;
	return p;
}

static void append_dgram(struct proc_priv *pp, const char *data, size_t len)
{
	struct harness_proc *p = &pp->pub;
	size_t old = strlen(p->ready_vars);
	bool sep = old > 0 && p->ready_vars[old - 1] != '\n';
	char **nd;
	char *nv;
	char *d;

	d = malloc(len + 1);
	if (d == NULL) {
		abort();
	}
	memcpy(d, data, len);
	d[len] = '\0';
	nd = realloc(pp->dgrams, (pp->n_dgrams + 1) * sizeof(*nd));
	if (nd == NULL) {
		abort();
	}
	pp->dgrams = nd;
	pp->dgrams[pp->n_dgrams++] = d;
	note_upstream(pp, d);

	nv = realloc(p->ready_vars, old + (sep ? 1 : 0) + strlen(d) + 1);
	if (nv == NULL) {
		abort();
	}
	if (sep) {
		nv[old++] = '\n';
	}
	memcpy(nv + old, d, strlen(d) + 1);
	p->ready_vars = nv;
}

/* Read every datagram waiting on the socket. */
static void drain_notify(struct proc_priv *pp)
{
	char buf[8192];

	if (pp->pub.notify_fd < 0) {
		return;
	}
	for (;;) {
		ssize_t n = recv(pp->pub.notify_fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return;
		}
		append_dgram(pp, buf, (size_t)n);
	}
}

static int decode_status(int status)
{
	if (WIFEXITED(status)) {
		return WEXITSTATUS(status);
	}
	if (WIFSIGNALED(status)) {
		return 128 + WTERMSIG(status);
	}
	return -1;
}

/* Reap without blocking; true if the child is (now) reaped. */
static bool try_reap(struct proc_priv *pp)
{
	struct harness_proc *p = &pp->pub;
	int status;
	pid_t r;

	if (p->reaped) {
		return true;
	}
	do {
		r = waitpid(p->pid, &status, WNOHANG);
	} while (r < 0 && errno == EINTR);
	if (r == p->pid) {
		p->exit_status = status;
		p->reaped = true;
	} else if (r < 0 && errno == ECHILD) {
		/* Someone else reaped it (should not happen): treat as gone. */
		p->exit_status = 0;
		p->reaped = true;
	}
	return p->reaped;
}

/*
 * Block until a datagram arrives, the child exits, or deadline_ms (monotonic) passes.
 * Returns 1 on datagram activity, 0 on exit, -1 on timeout.
 */
static int wait_event(struct proc_priv *pp, int64_t deadline_ms)
{
	for (;;) {
		struct pollfd fds[2];
		nfds_t nfds = 0;
		int64_t left = deadline_ms - harness_now_ms();
		int slice;
		int r;

		if (try_reap(pp)) {
			return 0;
		}
		if (left <= 0) {
			return -1;
		}
		slice = left > 60000 ? 60000 : (int)left;
		if (pp->pidfd < 0 && slice > FALLBACK_SLICE_MS) {
			slice = FALLBACK_SLICE_MS;
		}
		fds[nfds++] = (struct pollfd){ .fd = pp->pub.notify_fd, .events = POLLIN };
		if (pp->pidfd >= 0) {
			fds[nfds++] = (struct pollfd){ .fd = pp->pidfd, .events = POLLIN };
		}
		r = poll(fds, nfds, slice);
		if (r < 0 && errno != EINTR) {
			return -1;
		}
		if (r > 0 && (fds[0].revents & POLLIN)) {
			return 1;
		}
	}
}

static bool dgram_has_line(const char *d, const char *line)
{
	size_t n = strlen(line);
	const char *s = d;

	while (*s != '\0') {
		const char *e = strchr(s, '\n');
		size_t len = e == NULL ? strlen(s) : (size_t)(e - s);

		if (len == n && memcmp(s, line, n) == 0) {
			return true;
		}
		if (e == NULL) {
			break;
		}
		s = e + 1;
	}
	return false;
}

static void print_log(struct harness_proc *p, const char *why)
{
	char *log = harness_log(p);

	fprintf(stderr, "harness: %s %s; its stderr (%s):\n%s\n", p->name, why, p->stderr_path,
	        log == NULL ? "(unreadable)" : log);
	free(log);
}

int harness_wait_ready(struct harness_proc *p, int timeout_ms)
{
	struct proc_priv *pp;
	int64_t deadline;

	if (p == NULL) {
		return -1;
	}
	pp = priv_of(p);
	deadline = harness_now_ms() + timeout_ms;
	for (;;) {
		int r;

		drain_notify(pp);
		for (size_t i = 0; i < pp->n_dgrams; i++) {
			if (dgram_has_line(pp->dgrams[i], "READY=1")) {
				return 0;
			}
		}
		r = wait_event(pp, deadline);
		if (r == 0) {
			drain_notify(pp); /* READY may have come just before the exit */
			for (size_t i = 0; i < pp->n_dgrams; i++) {
				if (dgram_has_line(pp->dgrams[i], "READY=1")) {
					return 0;
				}
			}
			char why[64];

			snprintf(why, sizeof(why), "exited (status %d) before READY=1",
			         decode_status(p->exit_status));
			print_log(p, why);
			return -1;
		}
		if (r < 0) {
			char why[64];

			snprintf(why, sizeof(why), "not ready within %d ms", timeout_ms);
			print_log(p, why);
			return -1;
		}
	}
}

int harness_wait_notify(struct harness_proc *p, const char *needle, int timeout_ms)
{
	struct proc_priv *pp;
	int64_t deadline;

	if (p == NULL || needle == NULL) {
		return -1;
	}
	pp = priv_of(p);
	deadline = harness_now_ms() + timeout_ms;
	for (;;) {
		int r;

		drain_notify(pp);
		while (pp->n_consumed < pp->n_dgrams) {
			if (strstr(pp->dgrams[pp->n_consumed++], needle) != NULL) {
				return 0;
			}
		}
		if (p->reaped) {
			return -1;
		}
		r = wait_event(pp, deadline);
		if (r < 0) {
			return -1;
		}
		/* r == 0 (exited): loop once more to drain what it sent before exiting. */
	}
}

char *harness_notify_var(struct harness_proc *p, const char *var)
{
	struct proc_priv *pp;
	size_t vlen;
	char *found = NULL;

	if (p == NULL || var == NULL) {
		return NULL;
	}
	pp = priv_of(p);
	drain_notify(pp);
	vlen = strlen(var);
	for (size_t i = 0; i < pp->n_dgrams; i++) {
		const char *s = pp->dgrams[i];

		while (*s != '\0') {
			const char *e = strchr(s, '\n');
			size_t len = e == NULL ? strlen(s) : (size_t)(e - s);

			if (len > vlen && memcmp(s, var, vlen) == 0 && s[vlen] == '=') {
				free(found);
				found = strndup(s + vlen + 1, len - vlen - 1);
			}
			if (e == NULL) {
				break;
			}
			s = e + 1;
		}
	}
	return found;
}

int harness_kill(struct harness_proc *p, int sig)
{
	if (p == NULL || p->pid <= 0) {
		return -EINVAL;
	}
	if (try_reap(priv_of(p))) {
		return -ESRCH;
	}
	if (kill(p->pid, sig) != 0) {
		return -errno;
	}
	return 0;
}

int harness_wait_exit(struct harness_proc *p, int timeout_ms)
{
	struct proc_priv *pp;
	int64_t deadline;

	if (p == NULL || p->pid <= 0) {
		return -1;
	}
	pp = priv_of(p);
	deadline = harness_now_ms() + timeout_ms;
	while (!try_reap(pp)) {
		struct pollfd pfd = { .fd = pp->pidfd, .events = POLLIN };
		int64_t left = deadline - harness_now_ms();
		int slice;

		if (left <= 0) {
			return -1;
		}
		slice = left > 60000 ? 60000 : (int)left;
		if (pp->pidfd < 0) {
			/* No pidfd: poll nothing for a short slice, then look again. */
			poll(NULL, 0, slice < FALLBACK_SLICE_MS ? slice : FALLBACK_SLICE_MS);
		} else {
			poll(&pfd, 1, slice);
		}
	}
	return decode_status(p->exit_status);
}

static void proc_unregister(struct proc_priv *target)
{
	for (struct proc_priv **pp = &g_procs; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == target) {
			*pp = target->next;
			return;
		}
	}
}

void harness_proc_free(struct harness_proc *p)
{
	struct proc_priv *pp;

	if (p == NULL) {
		return;
	}
	pp = priv_of(p);
	proc_unregister(pp);
	if (!p->reaped && p->pid > 0) {
		int status;
		pid_t r;

		kill(p->pid, SIGKILL);
		do {
			r = waitpid(p->pid, &status, 0);
		} while (r < 0 && errno == EINTR);
		if (r == p->pid) {
			p->exit_status = status;
		}
		p->reaped = true;
	}
	if (pp->pidfd >= 0) {
		close(pp->pidfd);
	}
	transcript_proc_log(pp);
	if (p->notify_fd >= 0) {
		close(p->notify_fd);
		unlink(p->notify_path);
	}
	for (size_t i = 0; i < pp->n_dgrams; i++) {
		free(pp->dgrams[i]);
	}
	free(pp->dgrams);
	free(p->name);
	free(p->stderr_path);
	free(p->notify_path);
	free(p->ready_vars);
	free(pp);
}

void harness_cleanup_all(void)
{
	bool keep = getenv("GHLPROXY_TEST_KEEP") != NULL;

	/* Signal all first, then reap: children die in parallel. */
	for (struct proc_priv *pp = g_procs; pp != NULL; pp = pp->next) {
		if (!pp->pub.reaped && pp->pub.pid > 0) {
			kill(pp->pub.pid, SIGKILL);
		}
	}
	while (g_procs != NULL) {
		harness_proc_free(&g_procs->pub);
	}
	while (g_tmpdirs != NULL) {
		struct tmpdir_entry *e = g_tmpdirs;

		g_tmpdirs = e->next;
		if (keep) {
			fprintf(stderr, "harness: kept scratch directory %s\n", e->path);
		} else {
			rm_rf(e->path);
		}
		free(e->path);
		free(e);
	}
}

char *harness_log(struct harness_proc *p)
{
	if (p == NULL) {
		return NULL;
	}
	return harness_read_file(p->stderr_path, NULL);
}

static const char *bin_path(const char *env_var, const char *rel, char **cache)
{
	const char *v = getenv(env_var);
	const char *build;

	if (v != NULL && v[0] != '\0') {
		return v;
	}
	if (*cache != NULL) {
		return *cache;
	}
	build = getenv("GHLPROXY_BUILDDIR");
	if (build == NULL || build[0] == '\0') {
		return NULL;
	}
	*cache = path_join(build, rel);
	return *cache;
}

/* Cached for the worker's life: a path fits there, and callers keep the pointer. */
static char *g_proxy_bin;
static char *g_mock_bin;

const char *harness_proxy_bin(void)
{
	return bin_path("GHLPROXY_BIN", "ghlproxy", &g_proxy_bin);
}

const char *harness_mock_bin(void)
{
	return bin_path("GHLPROXY_MOCK_BIN", "tests/support/mock_upstream", &g_mock_bin);
}

int harness_split_addr(const char *addr, char *host, size_t host_len, int *port)
{
	const char *colon;
	const char *hs;
	size_t hl;
	char *end;
	long pv;

	if (addr == NULL || host == NULL || port == NULL) {
		return -1;
	}
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');

		if (rb == NULL || rb[1] != ':') {
			return -1;
		}
		hs = addr + 1;
		hl = (size_t)(rb - hs);
		colon = rb + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL || memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
			return -1; /* none, or a bare IPv6 literal without brackets */
		}
		hs = addr;
		hl = (size_t)(colon - addr);
	}
	if (hl == 0 || hl >= host_len) {
		return -1;
	}
	errno = 0;
	pv = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || pv < 0 || pv > 65535) {
		return -1;
	}
	memcpy(host, hs, hl);
	host[hl] = '\0';
	*port = (int)pv;
	return 0;
}
