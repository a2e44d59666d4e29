/*
 * redis.c: the asynchronous Redis client (see redis.h for the contract): hiredis 0.14 on our
 * libevent loop, with our own timers, reconnection and exactly one callback per command.
 *
 * Data path: redis_command_argv / redis_evalsha make an op. While the connection is up the op is
 * sent (hiredis formats and buffers it, its privdata is the op) and joins r->inflight, oldest
 * first; its reply comes back through on_reply, in order, and completes it. While down the op
 * joins r->failing and fail_ev completes it on the next loop turn ("not connected").
 *
 * Ownership, the heart of this file. hiredis 0.14 calls every pending reply callback with a NULL
 * reply when its context is freed, and may free a context by itself in the middle of a read
 * (EOF, protocol error). So an op has two owners: the caller (until its callback ran: is_done)
 * and hiredis (while it holds the op as privdata: is_held); it is freed when both let go. The
 * caller's side is completed by us, always, in complete(); what hiredis says about an op the
 * caller already has an answer for is ignored. A connection (struct redis_conn) lives exactly as
 * long as its hiredis context: it is freed in the context's cleanup hook, which hiredis calls in
 * every free path, after the last reply callback.
 *
 * Re-entrancy: callbacks (ours from hiredis, the caller's from us) may call anything here,
 * redis_free() included, and hiredis must never see its context freed under its own frames
 * (redisAsyncFree inside the connect callback is a use-after-free in 0.14). Rule: every entry
 * from the loop or the caller counts itself in r->depth; we only detach a connection (it leaves
 * r->conn) and leave its context to settle(), which frees detached contexts and, after
 * redis_free(), r itself, when the outermost entry returns (depth 0: no hiredis frame below).
 * Our own libevent adapter (not hiredis's adapters/libevent.h) gives us those entries and the
 * cleanup hook.
 *
 * Timeouts: commands on one connection are answered in order and all get the same timeout, so
 * only the oldest in flight can be late: one timer, armed for the head of r->inflight. A late
 * head gets "timeout" and the whole connection goes (hiredis cannot drop one command), the rest
 * "disconnected". connect_timer covers a whole attempt: name lookup, connect and handshake.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <openssl/evp.h>

#include "log.h"
#include "util.h"

#define DEFAULT_TIMEOUT_MS 1000u
#define BACKOFF_MIN_MS     100u
#define BACKOFF_MAX_MS     5000u
/* Repeated failures of the same kind are logged at debug, with a reminder every this many. */
#define FAILURE_LOG_EVERY 12u
#define HOST_MAX_LEN      REDIS_HOST_MAX_LEN
#define MAX_ADDRS         4

static const struct timeval zero_tv = { 0, 0 }; /* a timer for the next loop turn */

enum op_kind {
	OP_COMMAND,   /* the caller's command */
	OP_EVALSHA,   /* the caller's EVALSHA, sent again as EVAL after NOSCRIPT */
	OP_HANDSHAKE, /* AUTH, SELECT or PING of a new connection: no caller */
};

struct redis_op {
	TAILQ_ENTRY(redis_op) link; /* on r->inflight or r->failing, or on neither */
	struct redis *r;
	redis_reply_cb cb;
	void *arg;
	int64_t deadline_ms; /* in flight: monotonic ms when it is late */
	enum op_kind kind;
	bool is_held;      /* hiredis holds it as a command's privdata */
	bool is_done;      /* the caller's callback ran (always true for a handshake op) */
	bool is_last_step; /* handshake: its OK makes the connection up */
	bool is_eval;      /* OP_EVALSHA: already sent again as EVAL */
	const char *error; /* on r->failing, or chosen before a teardown: what the caller gets */
	const char *step_name; /* handshake: "AUTH", "SELECT", "PING" for the log */
	/* OP_EVALSHA only: the EVALSHA vector, in the same allocation; argv[0..1] become EVAL and
	 * the source after NOSCRIPT. */
	const char *source;
	int argc;
	const char **argv;
	size_t *argvlen;
};

TAILQ_HEAD(op_list, redis_op);

/* One hiredis context and our adapter's events for its socket. Freed in conn_cleanup only. */
struct redis_conn {
	LIST_ENTRY(redis_conn) link; /* on r->conns */
	struct redis *r;
	redisAsyncContext *ac;
	struct event *rev, *wev;
	bool is_connected; /* the socket connected: what is left is the handshake */
};

/*
 * A host name lookup in a helper thread: getaddrinfo blocks, and the loop must not. Shared by
 * the thread and the loop (refs); whoever lets go last closes and frees. The thread publishes its
 * result with is_done (release) and then wakes the loop through the eventfd.
 */
struct resolve_job {
	atomic_int refs;
	atomic_bool is_done;
	int efd;
	int gai_err;
	int n_addrs;
	char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
	char host[HOST_MAX_LEN + 1];
	char port[8];
};

struct redis {
	struct event_base *base;
	struct redis_target target;
	char *password; /* NULL: no AUTH; wiped when freed */
	size_t password_len;
	uint32_t connect_timeout_ms;
	uint32_t command_timeout_ms;

	struct redis_conn *conn;       /* the connection being set up or up; NULL: none */
	LIST_HEAD(, redis_conn) conns; /* every live hiredis context, r->conn's included */
	struct resolve_job *job;       /* name lookup of the current attempt, or NULL */
	struct event *job_ev;          /* its eventfd */
	struct op_list inflight;       /* sent on r->conn, oldest first (deadlines ascend) */
	struct op_list failing;        /* refused while down, completed by fail_ev */
	struct event *cmd_timer;       /* armed for the head of inflight while it is not empty */
	struct event *connect_timer;   /* armed while an attempt is under way */
	struct event *retry_timer;     /* armed while waiting for the next attempt */
	struct event *fail_ev;         /* a zero timer: failing ops next loop turn */
	uint32_t backoff_ms;           /* base of the next retry delay */
	uint32_t n_failures;           /* attempts failed since the last up (for the log) */
	unsigned n_attempts;           /* attempts started: picks an address in turn */
	int depth;                     /* our frames on the stack: settle() at 0 */
	bool is_up;
	bool is_freeing;

	void (*state_cb)(struct redis *r, bool up, void *arg);
	void *state_arg;
	struct redis_stats stats;
};

static void start_attempt(struct redis *r);
static void conn_lost(struct redis *r, const struct redis_conn *c, const char *why);

/* ---- URL ---- */

static bool parse_decimal(const char *s, size_t n, int64_t max, int64_t *out)
{
	int64_t v = 0;

	if (n == 0 || n > 10)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	if (v > max)
		return false;
	*out = v;
	return true;
}

static bool host_char_ok(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '.' || ch == '-' || ch == '_';
}

int redis_parse_url(const char *url, struct redis_target *t, const char **why)
{
	int64_t v;

	memset(t, 0, sizeof(*t));
	t->port = 6379;
	if (!url || !*url) {
		*why = "redis.url is empty";
		return -EINVAL;
	}
	if (strncmp(url, "unix://", 7) == 0) {
		const char *path = url + 7;
		size_t plen = strcspn(path, "?");

		t->is_unix = true;
		if (path[0] != '/') {
			*why = "redis.url needs an absolute socket path (unix:///path)";
			return -EINVAL;
		}
		if (plen >= sizeof(t->path)) {
			*why = "redis.url has a socket path that is too long";
			return -EINVAL;
		}
		memcpy(t->path, path, plen);
		t->path[plen] = '\0';
		if (path[plen] != '\0') {
			const char *q = path + plen;
			if (strncmp(q, "?db=", 4) != 0 ||
			    !parse_decimal(q + 4, strlen(q + 4), INT32_MAX, &v)) {
				*why = "redis.url has a bad database (unix:///path?db=N)";
				return -EINVAL;
			}
			t->db = (int)v;
		}
		snprintf(t->where, sizeof(t->where), "unix:%s", t->path);
		return 0;
	}
	if (strncmp(url, "redis://", 8) == 0) {
		const char *auth = url + 8;
		size_t alen = strcspn(auth, "/");
		const char *host = auth, *port = NULL;
		size_t hlen;

		if (memchr(auth, '@', alen)) {
			*why = "redis.url must not hold credentials: use redis.password_file";
			return -EINVAL;
		}
		if (alen == 0) {
			*why = "redis.url has no host";
			return -EINVAL;
		}
		if (auth[0] == '[') {
			const char *close = memchr(auth, ']', alen);
			struct in6_addr a6;

			if (!close) {
				*why = "redis.url has no ']' after its IPv6 address";
				return -EINVAL;
			}
			host = auth + 1;
			hlen = (size_t)(close - host);
			if (close + 1 < auth + alen) {
				if (close[1] != ':') {
					*why = "redis.url has junk after its IPv6 address";
					return -EINVAL;
				}
				port = close + 2;
			}
			if (hlen == 0 || hlen > HOST_MAX_LEN) {
				*why = "redis.url has an invalid host";
				return -EINVAL;
			}
			memcpy(t->host, host, hlen);
			t->host[hlen] = '\0';
			if (inet_pton(AF_INET6, t->host, &a6) != 1) {
				*why = "redis.url has an invalid IPv6 address";
				return -EINVAL;
			}
			t->is_literal = true;
		} else {
			const char *colon = memchr(auth, ':', alen);
			struct in_addr a4;

			hlen = colon ? (size_t)(colon - auth) : alen;
			port = colon ? colon + 1 : NULL;
			if (hlen == 0 || hlen > HOST_MAX_LEN) {
				*why = "redis.url has an invalid host";
				return -EINVAL;
			}
			for (size_t i = 0; i < hlen; i++) {
				if (!host_char_ok(host[i])) {
					*why = "redis.url has an invalid host";
					return -EINVAL;
				}
			}
			memcpy(t->host, host, hlen);
			t->host[hlen] = '\0';
			t->is_literal = inet_pton(AF_INET, t->host, &a4) == 1;
		}
		if (port) {
			if (!parse_decimal(port, (size_t)(auth + alen - port), 65535, &v) ||
			    v == 0) {
				*why = "redis.url has a bad port (1..65535)";
				return -EINVAL;
			}
			t->port = (int)v;
		}
		if (auth[alen] == '/') {
			const char *db = auth + alen + 1;
			if (!parse_decimal(db, strlen(db), INT32_MAX, &v)) {
				*why = "redis.url has a bad database number "
				       "(redis://host[:port]/N)";
				return -EINVAL;
			}
			t->db = (int)v;
		}
		snprintf(t->where, sizeof(t->where), "%s%s%s:%d", auth[0] == '[' ? "[" : "",
		         t->host, auth[0] == '[' ? "]" : "", t->port);
		return 0;
	}
	*why = "redis.url is not redis://host[:port][/db] or unix:///path[?db=N]";
	return -EINVAL;
}

/* ---- ops ---- */

static void op_free(struct redis_op *op)
{
	free(op);
}

/*
 * The caller's one callback. op must be off every list. The op is freed here unless hiredis
 * still holds it (then on_reply frees it when hiredis lets go). r stays valid after the callback
 * even if it called redis_free(): only settle() frees r.
 */
static void complete(struct redis_op *op, const redisReply *reply, const char *error)
{
	struct redis *r = op->r;

	op->is_done = true;
	if (error)
		r->stats.errors++;
	op->cb(r, reply, error, op->arg);
	if (!op->is_held)
		op_free(op);
}

static void notify_state(struct redis *r, bool up)
{
	if (r->state_cb && !r->is_freeing)
		r->state_cb(r, up, r->state_arg);
}

static void arm_cmd_timer(struct redis *r)
{
	struct redis_op *head = TAILQ_FIRST(&r->inflight);
	int64_t wait_ms;

	if (!head || evtimer_pending(r->cmd_timer, NULL))
		return;
	wait_ms = head->deadline_ms - util_now_ms();
	if (wait_ms < 1)
		wait_ms = 1;
	struct timeval tv = { .tv_sec = wait_ms / 1000, .tv_usec = (wait_ms % 1000) * 1000 };
	evtimer_add(r->cmd_timer, &tv);
}

static void add_timer_ms(struct event *ev, uint32_t ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	evtimer_add(ev, &tv);
}

/* ---- entries and settling ---- */

static void destroy(struct redis *r)
{
	struct redis_conn *c;

	/* r->conn is NULL (redis_free detached it): every context left is freed here. */
	while ((c = LIST_FIRST(&r->conns)) != NULL)
		redisAsyncFree(c->ac); /* conn_cleanup unlinks and frees c */
	event_free(r->cmd_timer);
	event_free(r->connect_timer);
	event_free(r->retry_timer);
	event_free(r->fail_ev);
	if (r->password)
		util_wipe_free(r->password, r->password_len);
	free(r);
}

/* At depth 0 nothing of ours or hiredis's is on the stack: free detached contexts, then r. */
static void settle(struct redis *r)
{
	struct redis_conn *c;

	r->depth++;
	for (;;) {
		LIST_FOREACH(c, &r->conns, link)
		{
			if (c != r->conn)
				break;
		}
		if (!c)
			break;
		redisAsyncFree(c->ac);
	}
	r->depth--;
	if (r->depth == 0 && r->is_freeing)
		destroy(r);
}

static void enter(struct redis *r)
{
	r->depth++;
}

static void leave(struct redis *r)
{
	if (--r->depth == 0)
		settle(r);
}

/* ---- connection state ---- */

/* Log an attempt's failure: the first after being up (or at start) loudly, then a reminder
 * every FAILURE_LOG_EVERY, the rest at debug. */
static void note_failure(struct redis *r, enum log_level loud, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void note_failure(struct redis *r, enum log_level loud, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	enum log_level level;

	r->n_failures++;
	level = (r->n_failures == 1 || r->n_failures % FAILURE_LOG_EVERY == 0) ? loud : LOG_DEBUG;
	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_msg(level, "redis %s: %s; retrying (%u failure%s in a row)", r->target.where, msg,
	        r->n_failures, r->n_failures == 1 ? "" : "s");
}

static void schedule_retry(struct redis *r)
{
	uint32_t half = r->backoff_ms / 2, delay_ms;

	if (r->is_freeing)
		return;
	/* Jitter: many proxies losing one Redis at once must not come back in lockstep. */
	delay_ms = half + arc4random_uniform(r->backoff_ms - half + 1);
	r->backoff_ms = MIN(r->backoff_ms * 2, BACKOFF_MAX_MS);
	evtimer_del(r->connect_timer);
	add_timer_ms(r->retry_timer, delay_ms);
}

/*
 * c is no longer usable: detach it (settle() frees its context unless hiredis is doing so
 * already), report down, fail what was in flight on it, and plan the next attempt. Each in-flight
 * op gets its preset error (the late one: "timeout") or why. Idempotent; c may be NULL (an
 * attempt still resolving the host name).
 */
static void conn_lost(struct redis *r, const struct redis_conn *c, const char *why)
{
	struct redis_op *op;
	bool was_up = r->is_up;

	if (!c || c != r->conn)
		return;
	r->conn = NULL;
	r->is_up = false;
	evtimer_del(r->connect_timer);
	evtimer_del(r->cmd_timer);
	schedule_retry(r);
	if (was_up)
		notify_state(r, false);
	/* One at a time from r->inflight: a callback may call redis_free(), which then completes
	 * the rest with "shutting down"; new commands cannot join (r->conn is NULL). */
	while ((op = TAILQ_FIRST(&r->inflight)) != NULL) {
		TAILQ_REMOVE(&r->inflight, op, link);
		complete(op, NULL, op->error ? op->error : why);
	}
}

static void go_up(struct redis *r)
{
	evtimer_del(r->connect_timer);
	r->is_up = true;
	r->backoff_ms = BACKOFF_MIN_MS;
	log_info("redis %s: connected (db %d)", r->target.where, r->target.db);
	r->n_failures = 0;
	notify_state(r, true);
}

/* ---- hiredis callbacks ---- */

/* Why hiredis gave up on a context, for the log (the context's own text: the async copy of it
 * is only made while tearing down). */
static const char *conn_error(const redisAsyncContext *ac)
{
	return ac->c.err && ac->c.errstr[0] ? ac->c.errstr : "closed by the server";
}

static bool is_noscript(const redisReply *reply)
{
	return reply->type == REDIS_REPLY_ERROR && reply->str &&
	       strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

static void on_reply(redisAsyncContext *ac, void *reply_v, void *privdata);

/* "<kind><n>\r\n" at p; returns its length (at most 1 + UTIL_I64_LEN + 2 - 1). */
static size_t resp_head(char *p, char kind, size_t n)
{
	size_t len = 1;

	p[0] = kind;
	len += util_fmt_i64(p + 1, (int64_t)n);
	p[len++] = '\r';
	p[len++] = '\n';
	return len;
}

#define RESP_HEAD_MAX (1 + UTIL_I64_LEN + 2)

size_t redis_format_bound(int argc, const char **argv, const size_t *argvlen)
{
	size_t bound = RESP_HEAD_MAX + 1; /* + the NUL */

	for (int i = 0; i < argc; i++) {
		size_t len = argvlen ? argvlen[i] : strlen(argv[i]);

		if (len > SIZE_MAX - bound - RESP_HEAD_MAX - 2)
			return SIZE_MAX;
		bound += RESP_HEAD_MAX + len + 2;
	}
	return bound;
}

size_t redis_format_argv(char *out, int argc, const char **argv, const size_t *argvlen)
{
	size_t off = resp_head(out, '*', (size_t)argc);

	for (int i = 0; i < argc; i++) {
		size_t len = argvlen ? argvlen[i] : strlen(argv[i]);

		off += resp_head(out + off, '$', len);
		if (len)
			memcpy(out + off, argv[i], len);
		off += len;
		out[off++] = '\r';
		out[off++] = '\n';
	}
	out[off] = '\0'; /* hiredis reads one byte past the command, as its own have a NUL there */
	return off;
}

/* The command formatted here (hiredis' own formatting was a tenth of a Redis decision's cost in
 * the proxy, bench/results/perf.txt case c), on the stack when it fits, which it does but for an
 * EVAL with the script's source. */
static int send_op(struct redis *r, struct redis_op *op, int argc, const char **argv,
                   const size_t *argvlen)
{
	char stack[2048], *cmd;
	size_t bound = redis_format_bound(argc, argv, argvlen), len;
	int rc;

	if (bound == SIZE_MAX)
		return -ENOMEM;
	cmd = bound <= sizeof(stack) ? stack : malloc(bound);
	if (!cmd)
		return -ENOMEM;
	len = redis_format_argv(cmd, argc, argv, argvlen);
	rc = redisAsyncFormattedCommand(r->conn->ac, on_reply, op, cmd, len);
	if (cmd != stack)
		free(cmd);
	if (rc != REDIS_OK)
		return -ENOMEM; /* hiredis took nothing: its context is closing, or out of memory */
	op->is_held = true;
	return 0;
}

static void handshake_reply(struct redis *r, struct redis_conn *c, struct redis_op *op,
                            const redisReply *reply)
{
	if (c != r->conn)
		return; /* an old connection's late answer */
	if (!reply) {
		note_failure(r, LOG_WARNING, "connection lost during %s: %s", op->step_name,
		             conn_error(c->ac));
		conn_lost(r, c, "disconnected");
		return;
	}
	if (reply->type == REDIS_REPLY_ERROR) {
		const char *hint = "";

		if (strncmp(reply->str, "NOAUTH", 6) == 0)
			hint = " (the server wants a password: set redis.password_file)";
		else if (strcmp(op->step_name, "AUTH") == 0)
			hint = " (check redis.password_file)";
		/* The server's text, never our password: Redis does not echo it. */
		note_failure(r, LOG_ERROR, "%s refused: %s%s", op->step_name, reply->str, hint);
		conn_lost(r, c, "disconnected");
		return;
	}
	if (op->is_last_step)
		go_up(r);
}

static void on_reply(redisAsyncContext *ac, void *reply_v, void *privdata)
{
	struct redis_op *op = privdata;
	const redisReply *reply = reply_v;
	struct redis_conn *c = ac->data; /* valid: cleanup (which clears it) comes after replies */
	struct redis *r = op->r;

	op->is_held = false;
	if (op->kind == OP_HANDSHAKE) {
		handshake_reply(r, c, op, reply);
		op_free(op);
		return;
	}
	if (op->is_done) {
		op_free(op); /* already answered (timeout, disconnected, shutting down) */
		return;
	}
	/* Not answered yet, so it is in flight on the live connection (conn_lost empties
	 * r->inflight when a connection leaves). */
	if (!reply) {
		note_failure(r, LOG_WARNING, "connection lost: %s", conn_error(ac));
		conn_lost(r, c, "disconnected");
		return;
	}
	TAILQ_REMOVE(&r->inflight, op, link);
	if (op->kind == OP_EVALSHA && !op->is_eval && is_noscript(reply) && r->conn == c) {
		/* The server lost the script (restart, SCRIPT FLUSH): EVAL loads it. */
		log_debug("redis %s: script %.12s not cached (NOSCRIPT): sending it with EVAL",
		          r->target.where, op->argv[1]);
		op->is_eval = true;
		op->argv[0] = "EVAL";
		op->argvlen[0] = 4;
		op->argv[1] = op->source;
		op->argvlen[1] = strlen(op->source);
		if (send_op(r, op, op->argc, op->argv, op->argvlen) == 0) {
			op->deadline_ms = util_now_ms() + r->command_timeout_ms;
			TAILQ_INSERT_TAIL(&r->inflight, op, link);
			arm_cmd_timer(r);
			return;
		}
		complete(op, NULL, "disconnected");
		return;
	}
	complete(op, reply,
	         reply->type == REDIS_REPLY_ERROR ? (reply->str ? reply->str : "ERR") : NULL);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
	redisAsyncContext *ac = (redisAsyncContext *)cac;
	struct redis_conn *c = ac->data;
	struct redis *r;
	const char *argv[2];
	size_t argvlen[2];
	char db[16];
	struct redis_op *ops[2];
	int n = 0;

	if (!c || c != c->r->conn)
		return;
	r = c->r;
	if (status != REDIS_OK) {
		/* hiredis frees the context right after this returns. */
		note_failure(r, LOG_WARNING, "cannot connect: %s", conn_error(ac));
		conn_lost(r, c, "disconnected");
		return;
	}
	c->is_connected = true;
	/* Handshake, pipelined: AUTH, then SELECT or (neither needed) a PING, so that "up" always
	 * means a Redis answered. */
	for (int i = 0; i < 2; i++) {
		const char *step = NULL;

		if (i == 0 && r->password) {
			step = "AUTH";
			argv[0] = "AUTH";
			argvlen[0] = 4;
			argv[1] = r->password;
			argvlen[1] = r->password_len;
		} else if (i == 1 && r->target.db != 0) {
			step = "SELECT";
			snprintf(db, sizeof(db), "%d", r->target.db);
			argv[0] = "SELECT";
			argvlen[0] = 6;
			argv[1] = db;
			argvlen[1] = strlen(db);
		} else if (i == 1 && !r->password) {
			step = "PING";
			argv[0] = "PING";
			argvlen[0] = 4;
		}
		if (!step)
			continue;
		struct redis_op *op = calloc(1, sizeof(*op));
		if (!op) {
			note_failure(r, LOG_WARNING, "out of memory");
			conn_lost(r, c, "disconnected");
			return;
		}
		op->r = r;
		op->kind = OP_HANDSHAKE;
		op->is_done = true;
		op->step_name = step;
		if (send_op(r, op, strcmp(step, "PING") == 0 ? 1 : 2, argv, argvlen) != 0) {
			op_free(op);
			note_failure(r, LOG_WARNING, "cannot send %s", step);
			conn_lost(r, c, "disconnected");
			return;
		}
		ops[n++] = op;
	}
	ops[n - 1]->is_last_step = true;
}

/* ---- our libevent adapter for hiredis ---- */

static void conn_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct redis_conn *c = arg;
	struct redis *r = c->r;

	UNUSED(fd);
	enter(r);
	if (what & EV_READ)
		redisAsyncHandleRead(c->ac);
	else
		redisAsyncHandleWrite(c->ac);
	leave(r); /* c may be gone: hiredis may have freed the context */
}

static void conn_add_read(void *p)
{
	struct redis_conn *c = p;
	event_add(c->rev, NULL);
}

static void conn_del_read(void *p)
{
	struct redis_conn *c = p;
	event_del(c->rev);
}

static void conn_add_write(void *p)
{
	struct redis_conn *c = p;
	event_add(c->wev, NULL);
}

static void conn_del_write(void *p)
{
	struct redis_conn *c = p;
	event_del(c->wev);
}

/* hiredis frees the context (after its last reply callback, before its own free). */
static void conn_cleanup(void *p)
{
	struct redis_conn *c = p;
	struct redis *r = c->r;

	if (c == r->conn) {
		/* hiredis dropped a connection with nothing in flight (idle EOF, a refusal). */
		note_failure(r, LOG_WARNING, "connection lost: %s", conn_error(c->ac));
		conn_lost(r, c, "disconnected");
	}
	event_free(c->rev);
	event_free(c->wev);
	c->ac->data = NULL;
	c->ac->ev.data = NULL;
	LIST_REMOVE(c, link);
	free(c);
}

/* Take over a new context: r->conn. On failure the context is freed and a retry planned. */
static void conn_start(struct redis *r, redisAsyncContext *ac)
{
	struct redis_conn *c;

	if (!ac) {
		note_failure(r, LOG_WARNING, "out of memory");
		schedule_retry(r);
		return;
	}
	if (ac->err) {
		note_failure(r, LOG_WARNING, "cannot connect: %s", ac->errstr);
		redisAsyncFree(ac); /* no events attached, no callbacks: safe here */
		schedule_retry(r);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c) {
		c->r = r;
		c->ac = ac;
		c->rev = event_new(r->base, ac->c.fd, EV_READ, conn_on_event, c);
		c->wev = event_new(r->base, ac->c.fd, EV_WRITE, conn_on_event, c);
	}
	if (!c || !c->rev || !c->wev) {
		if (c) {
			if (c->rev)
				event_free(c->rev);
			if (c->wev)
				event_free(c->wev);
			free(c);
		}
		redisAsyncFree(ac);
		note_failure(r, LOG_WARNING, "out of memory");
		schedule_retry(r);
		return;
	}
	ac->data = c;
	ac->ev.data = c;
	ac->ev.addRead = conn_add_read;
	ac->ev.delRead = conn_del_read;
	ac->ev.addWrite = conn_add_write;
	ac->ev.delWrite = conn_del_write;
	ac->ev.cleanup = conn_cleanup;
	if (!r->target.is_unix)
		redisEnableKeepAlive(&ac->c); /* notice a vanished host while idle */
	LIST_INSERT_HEAD(&r->conns, c, link);
	r->conn = c;
	event_add(c->rev, NULL);
	redisAsyncSetConnectCallback(ac, on_connect); /* waits for writable: connected */
}

/* ---- name lookup in a helper thread ---- */

static void job_release(struct resolve_job *j)
{
	if (atomic_fetch_sub_explicit(&j->refs, 1, memory_order_acq_rel) == 1) {
		close(j->efd);
		free(j);
	}
}

static void *resolve_thread(void *p)
{
	struct resolve_job *j = p;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *res = NULL;
	uint64_t one = 1;

	j->gai_err = getaddrinfo(j->host, j->port, &hints, &res);
	for (struct addrinfo *a = j->gai_err ? NULL : res; a && j->n_addrs < MAX_ADDRS;
	     a = a->ai_next) {
		const void *src = NULL;

		if (a->ai_family == AF_INET)
			src = &((struct sockaddr_in *)(void *)a->ai_addr)->sin_addr;
		else if (a->ai_family == AF_INET6)
			src = &((struct sockaddr_in6 *)(void *)a->ai_addr)->sin6_addr;
		if (src && inet_ntop(a->ai_family, src, j->addrs[j->n_addrs], INET6_ADDRSTRLEN))
			j->n_addrs++;
	}
	if (res)
		freeaddrinfo(res);
	atomic_store_explicit(&j->is_done, true, memory_order_release);
	if (write(j->efd, &one, sizeof(one)) < 0) {
		/* cannot happen with an eventfd far from its limit; the loop side times out */
	}
	job_release(j);
	return NULL;
}

static void cancel_job(struct redis *r)
{
	if (!r->job)
		return;
	event_free(r->job_ev);
	r->job_ev = NULL;
	job_release(r->job); /* the thread lets go of its share when getaddrinfo returns */
	r->job = NULL;
}

static void on_resolved(evutil_socket_t fd, short what, void *arg)
{
	struct redis *r = arg;
	struct resolve_job *j = r->job;
	uint64_t n;

	UNUSED(fd);
	UNUSED(what);
	if (!j || !atomic_load_explicit(&j->is_done, memory_order_acquire))
		return;
	enter(r);
	if (read(j->efd, &n, sizeof(n)) < 0) {
		/* nothing to drain: the job is done either way */
	}
	event_free(r->job_ev);
	r->job_ev = NULL;
	r->job = NULL;
	if (!evtimer_pending(r->connect_timer, NULL)) {
		/* Its attempt timed out: the next one looks the name up afresh. */
	} else if (j->gai_err || j->n_addrs == 0) {
		note_failure(r, LOG_WARNING, "cannot resolve %s: %s", r->target.host,
		             j->gai_err ? gai_strerror(j->gai_err) : "no address");
		evtimer_del(r->connect_timer);
		schedule_retry(r);
	} else {
		/* A numeric address: hiredis's own getaddrinfo does not block on it. Several
		 * addresses are tried in turn, one per attempt. */
		const char *addr = j->addrs[(r->n_attempts - 1) % (unsigned)j->n_addrs];
		conn_start(r, redisAsyncConnect(addr, r->target.port));
	}
	job_release(j);
	leave(r);
}

static int start_job(struct redis *r)
{
	struct resolve_job *j = calloc(1, sizeof(*j));
	pthread_attr_t attr;
	pthread_t tid;
	sigset_t all, old;
	int rc;

	if (!j)
		return -ENOMEM;
	j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (j->efd < 0) {
		rc = -errno;
		free(j);
		return rc;
	}
	util_strlcpy(j->host, r->target.host, sizeof(j->host));
	snprintf(j->port, sizeof(j->port), "%d", r->target.port);
	atomic_init(&j->refs, 2);
	atomic_init(&j->is_done, false);
	r->job_ev = event_new(r->base, j->efd, EV_READ | EV_PERSIST, on_resolved, r);
	if (!r->job_ev) {
		close(j->efd);
		free(j);
		return -ENOMEM;
	}
	event_add(r->job_ev, NULL);
	/* The thread takes no signals: they stay with the loop's thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&tid, &attr, resolve_thread, j);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		event_free(r->job_ev);
		r->job_ev = NULL;
		close(j->efd);
		free(j);
		return -rc;
	}
	r->job = j;
	return 0;
}

/* ---- attempts ---- */

static void start_attempt(struct redis *r)
{
	int rc;

	r->n_attempts++;
	add_timer_ms(r->connect_timer, r->connect_timeout_ms);
	if (r->target.is_unix) {
		conn_start(r, redisAsyncConnectUnix(r->target.path));
	} else if (r->target.is_literal) {
		conn_start(r, redisAsyncConnect(r->target.host, r->target.port));
	} else if (r->job) {
		/* The last attempt's lookup is still running (slow DNS): wait for it rather than
		 * pile up threads. */
	} else if ((rc = start_job(r)) != 0) {
		note_failure(r, LOG_WARNING, "cannot start resolving %s: %s", r->target.host,
		             strerror(-rc));
		schedule_retry(r);
	}
}

static void on_retry_timer(evutil_socket_t fd, short what, void *arg)
{
	struct redis *r = arg;

	UNUSED(fd);
	UNUSED(what);
	enter(r);
	r->stats.reconnects++;
	start_attempt(r);
	leave(r);
}

static void on_connect_timer(evutil_socket_t fd, short what, void *arg)
{
	struct redis *r = arg;
	const char *stage = "connecting";

	UNUSED(fd);
	UNUSED(what);
	if (r->job)
		stage = "resolving the host name";
	else if (r->conn && r->conn->is_connected)
		stage = "the AUTH/SELECT/PING handshake (connected, no answer)";
	enter(r);
	note_failure(r, LOG_WARNING, "%s timed out after %u ms", stage, r->connect_timeout_ms);
	if (r->conn)
		conn_lost(r, r->conn, "disconnected");
	else
		schedule_retry(r); /* a lookup keeps running: the next attempt waits for it */
	leave(r);
}

static void on_cmd_timer(evutil_socket_t fd, short what, void *arg)
{
	struct redis *r = arg;
	struct redis_op *head = TAILQ_FIRST(&r->inflight);

	UNUSED(fd);
	UNUSED(what);
	if (!head)
		return;
	enter(r);
	if (head->deadline_ms > util_now_ms()) {
		arm_cmd_timer(r); /* the op it was armed for was answered: the next one's turn */
	} else {
		r->stats.timeouts++;
		log_warning("redis %s: a command got no answer in %u ms: dropping the connection "
		            "(%s)",
		            r->target.where, r->command_timeout_ms,
		            "hiredis cannot cancel one command");
		head->error = "timeout";
		conn_lost(r, r->conn, "disconnected");
	}
	leave(r);
}

static void on_fail_ev(evutil_socket_t fd, short what, void *arg)
{
	struct redis *r = arg;
	struct redis_op *op, *last = TAILQ_LAST(&r->failing, op_list);

	UNUSED(fd);
	UNUSED(what);
	enter(r);
	/* Only those queued before this turn: a caller that sends again from the callback waits
	 * for the next turn, so the loop keeps polling. */
	while (last && (op = TAILQ_FIRST(&r->failing)) != NULL) {
		TAILQ_REMOVE(&r->failing, op, link);
		complete(op, NULL, op->error);
		if (op == last)
			break;
	}
	if (!TAILQ_EMPTY(&r->failing) && !r->is_freeing)
		evtimer_add(r->fail_ev, &zero_tv);
	leave(r);
}

/* ---- API ---- */

static void set_err(char *err, size_t err_len, const char *msg)
{
	if (err && err_len)
		util_strlcpy(err, msg, err_len);
}

struct redis *redis_new(struct event_base *base, const struct redis_settings *s, char *err,
                        size_t err_len)
{
	struct redis *r;
	const char *why = NULL;

	if (!base || !s) {
		set_err(err, err_len, "redis: no event loop or settings");
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		set_err(err, err_len, "redis: out of memory");
		return NULL;
	}
	if (redis_parse_url(s->url, &r->target, &why) != 0) {
		set_err(err, err_len, why);
		free(r);
		return NULL;
	}
	r->base = base;
	r->connect_timeout_ms = s->connect_timeout_ms ? s->connect_timeout_ms : DEFAULT_TIMEOUT_MS;
	r->command_timeout_ms = s->command_timeout_ms ? s->command_timeout_ms : DEFAULT_TIMEOUT_MS;
	r->backoff_ms = BACKOFF_MIN_MS;
	LIST_INIT(&r->conns);
	TAILQ_INIT(&r->inflight);
	TAILQ_INIT(&r->failing);
	if (s->password && *s->password) {
		r->password_len = strlen(s->password);
		r->password = strdup(s->password);
	}
	r->cmd_timer = evtimer_new(base, on_cmd_timer, r);
	r->connect_timer = evtimer_new(base, on_connect_timer, r);
	r->retry_timer = evtimer_new(base, on_retry_timer, r);
	r->fail_ev = evtimer_new(base, on_fail_ev, r);
	if ((s->password && *s->password && !r->password) || !r->cmd_timer || !r->connect_timer ||
	    !r->retry_timer || !r->fail_ev) {
		set_err(err, err_len, "redis: out of memory");
		if (r->cmd_timer)
			event_free(r->cmd_timer);
		if (r->connect_timer)
			event_free(r->connect_timer);
		if (r->retry_timer)
			event_free(r->retry_timer);
		if (r->fail_ev)
			event_free(r->fail_ev);
		if (r->password)
			util_wipe_free(r->password, r->password_len);
		free(r);
		return NULL;
	}
	enter(r);
	start_attempt(r);
	leave(r);
	return r;
}

void redis_free(struct redis *r)
{
	struct redis_op *op;

	if (!r || r->is_freeing)
		return;
	enter(r);
	r->is_freeing = true;
	r->state_cb = NULL;
	cancel_job(r);
	evtimer_del(r->retry_timer);
	evtimer_del(r->connect_timer);
	evtimer_del(r->cmd_timer);
	evtimer_del(r->fail_ev);
	r->conn = NULL; /* detached: settle() frees every context */
	r->is_up = false;
	/* One at a time: the callbacks may re-enter (commands are refused now). */
	while ((op = TAILQ_FIRST(&r->inflight)) != NULL) {
		TAILQ_REMOVE(&r->inflight, op, link);
		complete(op, NULL, "shutting down");
	}
	while ((op = TAILQ_FIRST(&r->failing)) != NULL) {
		TAILQ_REMOVE(&r->failing, op, link);
		complete(op, NULL, "shutting down");
	}
	leave(r); /* frees r now, or when the outermost callback of r returns */
}

bool redis_is_up(const struct redis *r)
{
	return r && r->is_up;
}

void redis_on_state(struct redis *r, void (*cb)(struct redis *r, bool up, void *arg), void *arg)
{
	r->state_cb = cb;
	r->state_arg = arg;
}

void redis_get_stats(const struct redis *r, struct redis_stats *st)
{
	*st = r->stats;
}

/* Commands whose replies do not pair one to one with the command: hiredis 0.14 would change
 * mode and our accounting would break. */
static bool is_unsupported(const char *name, size_t len)
{
	static const char *const names[] = { "subscribe",    "psubscribe", "unsubscribe",
		                             "punsubscribe", "ssubscribe", "sunsubscribe",
		                             "monitor" };

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		if (strlen(names[i]) == len && util_strncaseeq(name, names[i], len))
			return true;
	}
	return false;
}

/* Queue op for the "not connected" answer on the next loop turn. */
static void fail_later(struct redis *r, struct redis_op *op)
{
	op->error = "not connected";
	TAILQ_INSERT_TAIL(&r->failing, op, link);
	if (!evtimer_pending(r->fail_ev, NULL))
		evtimer_add(r->fail_ev, &zero_tv);
}

/* Send op now (up) or fail it next turn (down). Returns 0, or -errno with op freed. */
static int submit(struct redis *r, struct redis_op *op, int argc, const char **argv,
                  const size_t *argvlen)
{
	int rc;

	r->stats.commands++;
	if (!r->is_up) {
		fail_later(r, op);
		return 0;
	}
	rc = send_op(r, op, argc, argv, argvlen);
	if (rc != 0) {
		r->stats.commands--;
		op_free(op);
		return rc;
	}
	op->deadline_ms = util_now_ms() + r->command_timeout_ms;
	TAILQ_INSERT_TAIL(&r->inflight, op, link);
	arm_cmd_timer(r);
	return 0;
}

int redis_command_argv(struct redis *r, int argc, const char **argv, const size_t *argvlen,
                       redis_reply_cb cb, void *arg)
{
	struct redis_op *op;
	int rc;

	if (!r || argc < 1 || !argv || !argv[0] || !cb)
		return -EINVAL;
	if (r->is_freeing)
		return -ESHUTDOWN;
	if (is_unsupported(argv[0], argvlen ? argvlen[0] : strlen(argv[0])))
		return -EINVAL;
	op = calloc(1, sizeof(*op));
	if (!op)
		return -ENOMEM;
	op->r = r;
	op->kind = OP_COMMAND;
	op->cb = cb;
	op->arg = arg;
	enter(r);
	rc = submit(r, op, argc, argv, argvlen);
	leave(r);
	return rc;
}

void redis_script_init(struct redis_script *sc, const char *source)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	static const char hex[] = "0123456789abcdef";

	sc->source = source;
	memset(sc->sha1, 0, sizeof(sc->sha1));
	if (!EVP_Digest(source, strlen(source), md, &md_len, EVP_sha1(), NULL) || md_len != 20)
		return; /* an empty sha1: EVALSHA gets NOSCRIPT, then EVAL works */
	for (unsigned int i = 0; i < md_len; i++) {
		sc->sha1[2 * i] = hex[md[i] >> 4];
		sc->sha1[2 * i + 1] = hex[md[i] & 15];
	}
}

int redis_evalsha(struct redis *r, struct redis_script *sc, int nkeys, int nargs, const char **argv,
                  const size_t *argvlen, redis_reply_cb cb, void *arg)
{
	struct redis_op *op;
	size_t n, bytes, off;
	char *data;
	int rc;

	if (!r || !sc || !sc->source || nkeys < 0 || nargs < 0 || nkeys > INT_MAX - 3 - nargs ||
	    (nkeys + nargs > 0 && !argv) || !cb)
		return -EINVAL;
	if (r->is_freeing)
		return -ESHUTDOWN;
	n = 3 + (size_t)nkeys + (size_t)nargs;
	/* One allocation: the op, the vector, the lengths, then the bytes (sha1, nkeys, args). */
	bytes = sizeof(*op) + n * (sizeof(char *) + sizeof(size_t)) + 41 + 12;
	for (size_t i = 0; i < n - 3; i++) {
		size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
		if (len > SIZE_MAX - bytes - 1)
			return -EINVAL;
		bytes += len + 1;
	}
	op = calloc(1, bytes);
	if (!op)
		return -ENOMEM;
	op->r = r;
	op->kind = OP_EVALSHA;
	op->cb = cb;
	op->arg = arg;
	op->source = sc->source;
	op->argc = (int)n;
	op->argv = (const char **)(void *)(op + 1);
	op->argvlen = (size_t *)(void *)(op->argv + n);
	data = (char *)(op->argvlen + n);
	op->argv[0] = "EVALSHA";
	op->argvlen[0] = 7;
	memcpy(data, sc->sha1, 41);
	op->argv[1] = data;
	op->argvlen[1] = strlen(sc->sha1);
	off = 41;
	op->argvlen[2] = util_fmt_i64(data + off, nkeys); /* nkeys < INT_MAX: 10 digits */
	op->argv[2] = data + off;
	off += 12;
	for (size_t i = 0; i < n - 3; i++) {
		size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
		if (len)
			memcpy(data + off, argv[i], len);
		data[off + len] = '\0';
		op->argv[3 + i] = data + off;
		op->argvlen[3 + i] = len;
		off += len + 1;
	}
	enter(r);
	rc = submit(r, op, op->argc, op->argv, op->argvlen);
	leave(r);
	return rc;
}
