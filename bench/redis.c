/*
 * bench/redis.c: what a shared admission decision costs. The same open-loop load (a fixed rate of
 * requests over many keys, none of them near its limit) goes through two proxies in front of one
 * mock upstream: one deciding alone (limits.backend = local) and one deciding through Redis
 * (limits.backend = redis). Reported: each backend's latency, the latency Redis adds, and from
 * Redis' own counters (INFO stats and commandstats, CONFIG RESETSTAT before every Redis run) the
 * commands it ran per admitted request. That an admission costs at most one decision round trip
 * (EVALSHA, or EVAL after NOSCRIPT) is checked, not only reported.
 *
 * Everything runs here, on loopback and unix sockets: a redis-server (fixture_redis_start), the
 * mock upstream without limits, the two proxies, and the load generator (one epoll loop).
 *
 * The load generator is open-loop: request i is due at t0 + i / rate whatever the answers, goes
 * out on the first idle keep-alive connection (or as soon as one frees: a late send is the
 * system's fault, so its latency counts from when it was due, not from when it left), and is for
 * key i mod keys: locationId BenchLocNNNN with one made-up PIT, so classify.c makes one burst key
 * "pit.<fp>:BenchLocNNNN" (and one daily key "pit:BenchLocNNNN") per location. Each key then sees
 * rate / keys requests a second (2 by default), far below the configured 100 per 10 s, so every
 * decision admits at once and the latency difference is the decision itself.
 *
 * Runs alternate local, redis, local, redis... after one warm-up pass per proxy (every key
 * created, the script loaded), so drift of the machine hits both alike; the added latency is the
 * median over repetitions of (redis - local) of each pair. Admitted requests are the redis proxy's
 * ghlproxy_requests_total{outcome="forwarded"} delta over the run, checked against the answers
 * and against what the mock received. The proxy's heartbeat is an EVALSHA of another script; its
 * calls are counted by that script's ZADD (no other script of ours calls ZADD) and taken out of
 * the decision count. Round trips are the commands clients sent (EVALSHA, EVAL, SCRIPT, SELECT,
 * PING...); the rest of commandstats ran inside the scripts.
 *
 * Usage: bench_redis [--rate R] [--keys K] [--seconds S] [--reps N] [--connections C]
 *        (defaults 2000 requests/s, 1000 keys, 20 s per run, 3 repetitions, 64 connections)
 * Output: one "key: value" line per figure (bench/run collects them), ending with "verdict:".
 * Exit 1 when a request failed (not 200, no answer within DRAIN_MS), the counts disagree, the
 * redis proxy fell back to local decisions, no decision went to Redis, or admission-decision
 * commands per admitted request exceed 1.0 in any run; 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "fixture.h"
#include "harness.h"
#include "httpc.h"

/* A made-up token of PIT shape ("pit-" + 36): never a real secret, still never printed. */
#define BENCH_PIT      "pit-00000000-0000-4000-8000-00000000be4c"
#define DRAIN_MS       30000     /* answers still awaited this long after the last send */
#define START_DELAY_NS 20000000  /* t0 this far after the connections are open */
#define CONN_IN_MAX    (1 << 20) /* one answer larger than this is a failure */
#define REQ_MAX        512
#define TIMER_TAG      UINT32_MAX
#define READY_MS       20000
#define METRIC_WAIT_MS 5000
#define MAX_REPS       50
#define MAX_INNER      48 /* distinct commands run inside scripts (ours: ~15) */
#define FORWARDED      "ghlproxy_requests_total{outcome=\"forwarded\"}"
#define NS_PER_MS      1000000.0
#define DRAIN_EVERY_NS 1000000000 /* read the children's notify datagrams this often */

struct opts {
	int rate_rps;
	int keys;
	int seconds;
	int reps;
	int conns;
};

/* One keep-alive client connection: at most one request in flight (no pipelining). */
struct conn {
	int fd;
	bool is_busy;
	uint32_t idx; /* the request in flight */
	char out[REQ_MAX];
	size_t out_len, out_off;
	char *in;
	size_t in_len, in_cap;
};

/* One open-loop run against one proxy. */
struct load {
	const char *addr;
	int rate_rps;
	int keys;
	int ep, tfd;
	struct conn *c;
	int n_conns;
	int *idle; /* stack of idle connection indexes */
	int n_idle;
	int64_t t0_ns;
	uint32_t total, next, done;
	uint32_t ok, failed;
	int64_t *lat_ns; /* of the ok answers, from when each request was due */
	int64_t *lag_ns; /* of every send: how late it left */
	uint32_t n_lag;
	int64_t last_done_ns;
	int first_bad_status; /* for the message, 0: none */
};

struct run_stats {
	double achieved_rps, p50_ms, p90_ms, p99_ms, lag_p99_ms;
	uint32_t ok, failed;
	double forwarded, mock_requests;
	double proxy_cpu_us, redis_cpu_us; /* per answered request; -1: not measured */
};

/* Redis' counters since CONFIG RESETSTAT, the bench's own commands (CONFIG, INFO) taken out. */
struct redis_stats {
	long long all;        /* every command, also those run inside scripts */
	long long evalsha;    /* EVALSHA (and EVALSHA_RO) */
	long long eval;       /* EVAL (and EVAL_RO): after NOSCRIPT */
	long long script;     /* SCRIPT LOAD / EXISTS / ... */
	long long heartbeat;  /* heartbeat script calls (its ZADD) */
	long long top_level;  /* commands a client sent: round trips */
	long long processed;  /* total_commands_processed */
	long long evalsha_us; /* time Redis spent in EVALSHA, microseconds */
	struct {
		char name[32];
		long long calls;
	} inner[MAX_INNER]; /* the commands run inside scripts, by name */
	int n_inner;
};

/*
 * The children, whose notify datagrams must be read while the bench runs: the proxy sends a
 * STATUS= line every few seconds while its counts change, and a datagram socket nobody reads
 * fills up (net.unix.max_dgram_qlen, 10 by default) until the proxy's sendto blocks, its loop
 * with it. systemd always reads; the harness reads only when asked, so the bench asks.
 */
static struct harness_proc *g_children[4];

static void drain_children(void)
{
	for (size_t i = 0; i < sizeof(g_children) / sizeof(g_children[0]); i++)
		if (g_children[i])
			free(harness_notify_var(g_children[i], "READY")); /* reads what waits */
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t due_ns(const struct load *L, uint32_t i)
{
	return L->t0_ns + (int64_t)i * 1000000000 / L->rate_rps;
}

/* ---- HTTP answers ---- */

static const char *find_crlf(const char *p, const char *end)
{
	for (; p + 1 < end; p++)
		if (p[0] == '\r' && p[1] == '\n')
			return p;
	return NULL;
}

/* Does header line [p, end) have this name (case-insensitive)? Then *value is its value. */
static bool header_is(const char *p, const char *end, const char *name, const char **value)
{
	size_t n = strlen(name);

	if ((size_t)(end - p) <= n || strncasecmp(p, name, n) != 0 || p[n] != ':')
		return false;
	p += n + 1;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	*value = p;
	return true;
}

static bool value_has(const char *v, const char *end, const char *token)
{
	size_t n = strlen(token);

	for (; v + n <= end; v++)
		if (strncasecmp(v, token, n) == 0)
			return true;
	return false;
}

/*
 * One complete HTTP/1.1 answer at the start of buf[0..len)? Returns its length, 0 when more bytes
 * are needed, -1 when it is malformed or has no length (a keep-alive answer must have one).
 */
static long parse_answer(const char *buf, size_t len, int *status, bool *is_closing)
{
	const char *end = buf + len, *head_end = memmem(buf, len, "\r\n\r\n", 4);
	long long clen = -1;
	bool is_chunked = false;
	int minor;

	if (!head_end)
		return len > CONN_IN_MAX ? -1 : 0;
	if (sscanf(buf, "HTTP/1.%d %3d", &minor, status) != 2)
		return -1;
	*is_closing = minor == 0;
	for (const char *l = find_crlf(buf, head_end + 2) + 2; l < head_end + 2;) {
		const char *le = find_crlf(l, head_end + 2), *v;
		if (!le)
			break;
		if (header_is(l, le, "content-length", &v))
			clen = strtoll(v, NULL, 10);
		else if (header_is(l, le, "transfer-encoding", &v))
			is_chunked = value_has(v, le, "chunked");
		else if (header_is(l, le, "connection", &v))
			*is_closing = value_has(v, le, "close");
		l = le + 2;
	}
	const char *p = head_end + 4;
	if (*status == 204 || *status == 304 || (*status >= 100 && *status < 200))
		return p - buf;
	if (is_chunked) {
		for (;;) {
			const char *le = find_crlf(p, end);
			if (!le)
				return 0;
			char *e;
			long long size = strtoll(p, &e, 16);
			if (e == p || size < 0 || size > CONN_IN_MAX)
				return -1;
			p = le + 2;
			if (size == 0)
				break;
			if (end - p < size + 2)
				return 0;
			p += size + 2;
		}
		for (;;) { /* trailers, up to the empty line */
			const char *le = find_crlf(p, end);
			if (!le)
				return 0;
			bool is_empty = le == p;
			p = le + 2;
			if (is_empty)
				break;
		}
		return p - buf;
	}
	if (clen < 0 || clen > CONN_IN_MAX)
		return -1;
	if (end - p < clen)
		return 0;
	return (p - buf) + clen;
}

/* ---- the load generator ---- */

static void conn_watch(struct load *L, int i, bool want_out)
{
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0),
		                  .data.u32 = (uint32_t)i };

	epoll_ctl(L->ep, EPOLL_CTL_MOD, L->c[i].fd, &ev);
}

static void conn_close(struct load *L, int i)
{
	struct conn *c = &L->c[i];

	if (c->fd >= 0) {
		epoll_ctl(L->ep, EPOLL_CTL_DEL, c->fd, NULL);
		httpc_close(c->fd);
	}
	c->fd = -1;
}

static int conn_open(struct load *L, int i)
{
	struct conn *c = &L->c[i];
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };

	c->fd = httpc_connect(L->addr);
	if (c->fd < 0) {
		fprintf(stderr, "bench_redis: connect: %s\n", strerror(errno));
		return -1;
	}
	c->is_busy = false;
	c->in_len = 0;
	c->out_len = c->out_off = 0;
	if (epoll_ctl(L->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return -1;
	return 0;
}

/* Open connection i afresh and make it idle (an idle one is on the stack exactly once). */
static void conn_reopen(struct load *L, int i)
{
	conn_close(L, i);
	if (conn_open(L, i) < 0) {
		fprintf(stderr, "bench_redis: connection %d lost\n", i);
		return;
	}
	L->idle[L->n_idle++] = i;
}

/*
 * Connection i broke: the request in flight on it (if any) failed. An idle connection is already
 * on the idle stack: it gets a new socket in place.
 */
static void conn_fail(struct load *L, int i, const char *why)
{
	struct conn *c = &L->c[i];

	if (!c->is_busy) {
		conn_close(L, i);
		if (conn_open(L, i) < 0) {
			fprintf(stderr, "bench_redis: connection %d lost\n", i);
			for (int k = 0; k < L->n_idle; k++) {
				if (L->idle[k] == i) {
					L->idle[k] = L->idle[--L->n_idle];
					break;
				}
			}
		}
		return;
	}
	L->failed++;
	L->done++;
	if (L->failed <= 3)
		fprintf(stderr, "bench_redis: request %u failed: %s\n", c->idx, why);
	c->is_busy = false;
	conn_reopen(L, i);
}

static void conn_flush(struct load *L, int i)
{
	struct conn *c = &L->c[i];

	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			conn_watch(L, i, true);
			return;
		}
		if (n <= 0) {
			conn_fail(L, i, "send");
			return;
		}
		c->out_off += (size_t)n;
	}
	conn_watch(L, i, false);
}

/* Send every request that is due while a connection is idle. */
static void pump(struct load *L, int64_t now)
{
	while (L->next < L->total && L->n_idle > 0 && due_ns(L, L->next) <= now) {
		int i = L->idle[--L->n_idle];
		struct conn *c = &L->c[i];
		uint32_t key = L->next % (uint32_t)L->keys;
		int n = snprintf(c->out, sizeof(c->out),
		                 "GET /contacts/?locationId=BenchLoc%04u HTTP/1.1\r\n"
		                 "Host: bench\r\nVersion: 2021-07-28\r\n"
		                 "Authorization: Bearer " BENCH_PIT "\r\n\r\n",
		                 key);
		c->out_len = (size_t)n;
		c->out_off = 0;
		c->idx = L->next++;
		c->is_busy = true;
		L->lag_ns[L->n_lag++] = now - due_ns(L, c->idx);
		conn_flush(L, i);
	}
}

static void conn_read(struct load *L, int i)
{
	struct conn *c = &L->c[i];

	for (;;) {
		if (c->in_cap - c->in_len < 4096 + 1) {
			size_t cap = c->in_cap * 2;
			if (cap > 2 * (size_t)CONN_IN_MAX) {
				conn_fail(L, i, "answer too large");
				return;
			}
			char *in = realloc(c->in, cap);
			if (!in) {
				conn_fail(L, i, "out of memory");
				return;
			}
			c->in = in;
			c->in_cap = cap;
		}
		ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			conn_fail(L, i, n == 0 ? "connection closed" : "recv");
			return;
		}
		c->in_len += (size_t)n;
		c->in[c->in_len] = '\0';
	}
	int status = 0;
	bool is_closing = false;
	long used = parse_answer(c->in, c->in_len, &status, &is_closing);
	if (used == 0)
		return;
	if (used < 0 || !c->is_busy) {
		conn_fail(L, i, used < 0 ? "malformed answer" : "answer to no request");
		return;
	}
	int64_t t = now_ns();
	if (status == 200) {
		L->lat_ns[L->ok++] = t - due_ns(L, c->idx);
	} else {
		L->failed++;
		if (!L->first_bad_status)
			L->first_bad_status = status;
	}
	L->done++;
	L->last_done_ns = t;
	c->is_busy = false;
	memmove(c->in, c->in + used, c->in_len - (size_t)used);
	c->in_len -= (size_t)used;
	c->in[c->in_len] = '\0';
	if (is_closing || c->in_len > 0) {
		conn_reopen(L, i); /* closing, or bytes after the answer: start clean */
		return;
	}
	L->idle[L->n_idle++] = i;
}

static void arm_timer(struct load *L)
{
	struct itimerspec its = { 0 };

	if (L->next < L->total && L->n_idle > 0) {
		int64_t t = due_ns(L, L->next);
		its.it_value.tv_sec = t / 1000000000;
		its.it_value.tv_nsec = t % 1000000000;
		if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
			its.it_value.tv_nsec = 1;
	}
	timerfd_settime(L->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array, in ms. */
static double pct_ms(const int64_t *v, uint32_t n, double pct)
{
	if (n == 0)
		return -1;
	uint32_t rank = (uint32_t)(pct / 100.0 * n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return (double)v[rank - 1] / NS_PER_MS;
}

/*
 * Send `total` requests at rate_rps over `conns` keep-alive connections to addr and wait for
 * every answer (at most DRAIN_MS past the last one due). 0, or -1 when it could not start.
 */
static int load_run(const char *addr, const struct opts *o, uint32_t total, struct run_stats *st)
{
	struct load L = { .addr = addr, .rate_rps = o->rate_rps, .keys = o->keys, .total = total };
	int rc = -1;

	memset(st, 0, sizeof(*st));
	L.ep = epoll_create1(EPOLL_CLOEXEC);
	L.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	L.n_conns = o->conns;
	L.c = calloc((size_t)o->conns, sizeof(*L.c));
	L.idle = calloc((size_t)o->conns, sizeof(int));
	L.lat_ns = calloc(total, sizeof(int64_t));
	L.lag_ns = calloc(total, sizeof(int64_t));
	for (int i = 0; L.c && i < o->conns; i++)
		L.c[i].fd = -1;
	if (L.ep < 0 || L.tfd < 0 || !L.c || !L.idle || !L.lat_ns || !L.lag_ns)
		goto out;
	struct epoll_event tev = { .events = EPOLLIN, .data.u32 = TIMER_TAG };
	epoll_ctl(L.ep, EPOLL_CTL_ADD, L.tfd, &tev);
	for (int i = 0; i < o->conns; i++) {
		L.c[i].in_cap = 8192;
		L.c[i].in = malloc(L.c[i].in_cap);
		if (!L.c[i].in || conn_open(&L, i) < 0)
			goto out;
		L.idle[L.n_idle++] = i;
	}
	L.t0_ns = now_ns() + START_DELAY_NS;
	int64_t give_up = due_ns(&L, total - 1) + (int64_t)DRAIN_MS * 1000000;
	int64_t drained_ns = now_ns();
	while (L.done < L.total) {
		struct epoll_event evs[64];
		int64_t now = now_ns();

		pump(&L, now);
		if (now - drained_ns > DRAIN_EVERY_NS) {
			drain_children();
			drained_ns = now;
		}
		if (now > give_up)
			break;
		arm_timer(&L);
		int n = epoll_wait(L.ep, evs, 64, 100);
		for (int k = 0; k < n; k++) {
			uint32_t tag = evs[k].data.u32;
			if (tag == TIMER_TAG) {
				uint64_t expirations;
				if (read(L.tfd, &expirations, sizeof(expirations)) < 0 &&
				    errno != EAGAIN)
					goto out;
				continue;
			}
			int i = (int)tag;
			if (L.c[i].fd < 0)
				continue;
			if ((evs[k].events & EPOLLOUT) && L.c[i].out_off < L.c[i].out_len)
				conn_flush(&L, i);
			if (L.c[i].fd >= 0 && (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
				conn_read(&L, i);
		}
	}
	if (L.done < L.total) {
		fprintf(stderr, "bench_redis: %u requests unanswered after %d ms\n",
		        L.total - L.done, DRAIN_MS);
		L.failed += L.total - L.done;
	}
	if (L.first_bad_status)
		fprintf(stderr, "bench_redis: an answer had status %d\n", L.first_bad_status);
	qsort(L.lat_ns, L.ok, sizeof(int64_t), cmp_i64);
	qsort(L.lag_ns, L.n_lag, sizeof(int64_t), cmp_i64);
	st->ok = L.ok;
	st->failed = L.failed;
	st->p50_ms = pct_ms(L.lat_ns, L.ok, 50);
	st->p90_ms = pct_ms(L.lat_ns, L.ok, 90);
	st->p99_ms = pct_ms(L.lat_ns, L.ok, 99);
	st->lag_p99_ms = pct_ms(L.lag_ns, L.n_lag, 99);
	if (L.last_done_ns > L.t0_ns)
		st->achieved_rps = (double)L.ok / ((double)(L.last_done_ns - L.t0_ns) / 1e9);
	rc = 0;
out:
	for (int i = 0; L.c && i < o->conns; i++) {
		conn_close(&L, i);
		free(L.c[i].in);
	}
	free(L.c);
	free(L.idle);
	free(L.lat_ns);
	free(L.lag_ns);
	if (L.tfd >= 0)
		close(L.tfd);
	if (L.ep >= 0)
		close(L.ep);
	return rc;
}

/* ---- Redis' counters ---- */

static redisContext *redis_open(const char *sock)
{
	struct timeval tv = { 10, 0 };
	redisContext *rc = redisConnectUnixWithTimeout(sock, tv);

	if (!rc || rc->err) {
		fprintf(stderr, "bench_redis: redis %s: %s\n", sock, rc ? rc->errstr : "no memory");
		redisFree(rc);
		return NULL;
	}
	redisSetTimeout(rc, tv);
	return rc;
}

static int redis_resetstat(redisContext *rc)
{
	redisReply *r = redisCommand(rc, "CONFIG RESETSTAT");
	int ok = r && r->type == REDIS_REPLY_STATUS;

	freeReplyObject(r);
	return ok ? 0 : -1;
}

/* Commands a client sends (round trips); everything else ran inside a script. */
static bool is_top_level(const char *name)
{
	static const char *const names[] = { "evalsha", "evalsha_ro", "eval",  "eval_ro",
		                             "select",  "auth",       "ping",  "hello",
		                             "quit",    "info",       "multi", "exec" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return strncmp(name, "script|", 7) == 0 || strncmp(name, "client|", 7) == 0 ||
	       strncmp(name, "config|", 7) == 0;
}

static void add_inner(struct redis_stats *s, const char *name, long long calls)
{
	int i = 0;

	while (i < s->n_inner && strcmp(s->inner[i].name, name) != 0)
		i++;
	if (i == s->n_inner) {
		if (s->n_inner == MAX_INNER)
			return;
		snprintf(s->inner[i].name, sizeof(s->inner[i].name), "%s", name);
		s->inner[i].calls = 0;
		s->n_inner++;
	}
	s->inner[i].calls += calls;
}

static int cmp_inner(const void *a, const void *b)
{
	return strcmp(a, b); /* name is the first member */
}

/* Read INFO stats + commandstats; the bench's own CONFIG and INFO calls are taken out. */
static int redis_read_stats(redisContext *rc, struct redis_stats *s)
{
	redisReply *r = redisCommand(rc, "INFO stats commandstats");
	long long own = 0;

	memset(s, 0, sizeof(*s));
	if (!r || r->type != REDIS_REPLY_STRING) {
		freeReplyObject(r);
		return -1;
	}
	for (char *l = r->str; l && *l;) {
		char *nl = strchr(l, '\n');
		if (nl)
			*nl = '\0';
		if (strncmp(l, "total_commands_processed:", 25) == 0) {
			s->processed = strtoll(l + 25, NULL, 10);
		} else if (strncmp(l, "cmdstat_", 8) == 0 && strchr(l, ':')) {
			char *name = l + 8, *colon = strchr(l, ':');
			char *calls_at = strstr(colon, "calls="),
			     *usec_at = strstr(colon, ",usec=");
			*colon = '\0';
			long long calls = calls_at ? strtoll(calls_at + 6, NULL, 10) : 0;
			long long usec = usec_at ? strtoll(usec_at + 6, NULL, 10) : 0;
			if (strcmp(name, "info") == 0 || strncmp(name, "config|", 7) == 0) {
				own += calls; /* the bench's: RESETSTAT and earlier INFOs */
			} else {
				s->all += calls;
				if (is_top_level(name))
					s->top_level += calls;
				else
					add_inner(s, name, calls);
				if (strncmp(name, "evalsha", 7) == 0) {
					s->evalsha += calls;
					s->evalsha_us += usec;
				} else if (strncmp(name, "eval", 4) == 0) {
					s->eval += calls;
				} else if (strncmp(name, "script|", 7) == 0) {
					s->script += calls;
				} else if (strcmp(name, "zadd") == 0) {
					s->heartbeat += calls;
				}
			}
		}
		l = nl ? nl + 1 : NULL;
	}
	s->processed -= own;
	freeReplyObject(r);
	return 0;
}

/* ---- the proxies and the mock ---- */

static struct harness_proc *start_proxy(const char *dir, const char *name, const char *mock,
                                        const char *redis_sock, char *addr, char *admin)
{
	char conf[2048], file[64], path[512], redis_part[600] = "";

	if (redis_sock)
		snprintf(redis_part, sizeof(redis_part), "[redis]\nurl = unix://%s\n", redis_sock);
	snprintf(conf, sizeof(conf),
	         "[server]\nlisten = 127.0.0.1:0\nadmin_listen = 127.0.0.1:0\n"
	         "[upstream]\nurl = http://%s\nv1_url = http://%s\n"
	         "[limits]\nbackend = %s\nburst = 100\nwindow = 10s\n%s"
	         "[log]\nlevel = warning\n",
	         mock, mock, redis_sock ? "redis" : "local", redis_part);
	snprintf(file, sizeof(file), "%s.conf", name);
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	if (harness_write_file(dir, file, conf) < 0)
		return NULL;
	char *argv[] = { (char *)harness_proxy_bin(), "-c", path, NULL };
	struct harness_proc *p = harness_spawn(dir, name, argv, NULL);
	if (!p || harness_wait_ready(p, READY_MS) < 0) {
		harness_proc_free(p);
		return NULL;
	}
	char *l = harness_notify_var(p, "X_GHLPROXY_LISTEN");
	char *a = harness_notify_var(p, "X_GHLPROXY_ADMIN");
	if (l && strchr(l, ','))
		*strchr(l, ',') = '\0';
	snprintf(addr, 128, "%s", l ? l : "");
	snprintf(admin, 128, "%s", a ? a : "");
	free(l);
	free(a);
	return p;
}

static double mock_requests(const char *mock)
{
	struct httpc_response r = { 0 };
	double n = -1;

	if (httpc_request(mock, "GET", "/__mock/stats", NULL, NULL, 0, &r, 30000) == 0 &&
	    r.status == 200) {
		json_t *j = json_loads((const char *)r.body, 0, NULL);
		if (json_is_integer(json_object_get(j, "requests")))
			n = (double)json_integer_value(json_object_get(j, "requests"));
		json_decref(j);
	}
	httpc_response_free(&r);
	return n;
}

static int mock_reset(const char *mock)
{
	struct httpc_response r = { 0 };
	int rc = httpc_request(mock, "POST", "/__mock/reset", NULL, NULL, 0, &r, 30000);

	rc = rc == 0 && r.status == 200 ? 0 : -1;
	httpc_response_free(&r);
	return rc;
}

/* Poll a metric until it reaches `at_least` (the proxy counts an answer as it finishes it). */
static double metric_at_least(const char *admin, const char *series, double at_least)
{
	int64_t until = harness_now_ms() + METRIC_WAIT_MS;
	double v;

	while ((v = fixture_metric_at(admin, series)) < at_least && harness_now_ms() < until) {
		drain_children();
		usleep(10000);
	}
	return v;
}

/* One measured run through one proxy; forwarded and mock counts filled in. */
/* utime + stime of a process, in clock ticks; -1 when unreadable. */
static long long proc_cpu_ticks(pid_t pid)
{
	char path[64], buf[2048];
	long long ut = -1, st = -1;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	if (!p ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &ut, &st) != 2)
		return -1;
	return ut + st;
}

/* CPU microseconds per answered request between two readings, -1 when unknown. */
static double cpu_us_per(long long t0, long long t1, uint32_t n)
{
	if (t0 < 0 || t1 < t0 || n == 0)
		return -1;
	return (double)(t1 - t0) * 1e6 / (double)sysconf(_SC_CLK_TCK) / (double)n;
}

/*
 * One measured run through one proxy: forwarded and mock counts filled in, and the CPU the proxy
 * (and redis-server, when redis_pid > 0) spent per answered request.
 */
static int measured_run(const char *addr, const char *admin, const char *mock, pid_t proxy_pid,
                        pid_t redis_pid, const struct opts *o, struct run_stats *st)
{
	double fwd0 = fixture_metric_at(admin, FORWARDED);

	if (fwd0 < 0 || mock_reset(mock) < 0) {
		fprintf(stderr, "bench_redis: cannot read the proxy's metrics or reset the mock\n");
		return -1;
	}
	long long p0 = proc_cpu_ticks(proxy_pid), r0 = redis_pid ? proc_cpu_ticks(redis_pid) : -1;
	if (load_run(addr, o, (uint32_t)o->rate_rps * (uint32_t)o->seconds, st) < 0)
		return -1;
	long long p1 = proc_cpu_ticks(proxy_pid), r1 = redis_pid ? proc_cpu_ticks(redis_pid) : -1;
	st->proxy_cpu_us = cpu_us_per(p0, p1, st->ok);
	st->redis_cpu_us = cpu_us_per(r0, r1, st->ok);
	st->forwarded = metric_at_least(admin, FORWARDED, fwd0 + st->ok) - fwd0;
	st->mock_requests = mock_requests(mock);
	return 0;
}

static double median(double *v, int n)
{
	for (int i = 1; i < n; i++) /* insertion sort: n is the number of repetitions */
		for (int k = i; k > 0 && v[k - 1] > v[k]; k--) {
			double t = v[k];
			v[k] = v[k - 1];
			v[k - 1] = t;
		}
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void print_run(const char *backend, int rep, const struct run_stats *st)
{
	printf("%s_%d_achieved_rps: %.1f\n", backend, rep, st->achieved_rps);
	printf("%s_%d_p50_ms: %.3f\n", backend, rep, st->p50_ms);
	printf("%s_%d_p90_ms: %.3f\n", backend, rep, st->p90_ms);
	printf("%s_%d_p99_ms: %.3f\n", backend, rep, st->p99_ms);
	printf("%s_%d_send_lag_p99_ms: %.3f\n", backend, rep, st->lag_p99_ms);
	printf("%s_%d_forwarded: %.0f\n", backend, rep, st->forwarded);
	printf("%s_%d_proxy_cpu_us_per_request: %.1f\n", backend, rep, st->proxy_cpu_us);
	if (st->redis_cpu_us >= 0)
		printf("%s_%d_redis_server_cpu_us_per_request: %.1f\n", backend, rep,
		       st->redis_cpu_us);
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i += 2) {
		int *dst = NULL;
		if (!strcmp(argv[i], "--rate"))
			dst = &o->rate_rps;
		else if (!strcmp(argv[i], "--keys"))
			dst = &o->keys;
		else if (!strcmp(argv[i], "--seconds"))
			dst = &o->seconds;
		else if (!strcmp(argv[i], "--reps"))
			dst = &o->reps;
		else if (!strcmp(argv[i], "--connections"))
			dst = &o->conns;
		if (!dst || i + 1 >= argc)
			return -1;
		*dst = atoi(argv[i + 1]);
	}
	if (o->rate_rps < 1 || o->rate_rps > 1000000 || o->keys < 1 || o->keys > 10000 ||
	    o->seconds < 1 || o->seconds > 3600 || o->reps < 1 || o->reps > MAX_REPS ||
	    o->conns < 1 || o->conns > 4096 || (long)o->rate_rps * o->seconds > 100000000)
		return -1;
	return 0;
}

/* After a failure: did this child die, and the end of its log (no secret is ever logged). */
static void report_proc(struct harness_proc *p)
{
	if (!p)
		return;
	int status = harness_wait_exit(p, 0);
	if (status >= 0)
		fprintf(stderr, "bench_redis: %s exited with status %d\n", p->name, status);
	char *log = harness_log(p);
	if (log && *log) {
		size_t n = strlen(log);
		fprintf(stderr, "bench_redis: end of %s's log:\n%s\n", p->name,
		        log + (n > 4000 ? n - 4000 : 0));
	}
	free(log);
}

static double per(long long n, double admitted)
{
	return admitted > 0 ? (double)n / admitted : -1;
}

int main(int argc, char **argv)
{
	struct opts o = { .rate_rps = 2000, .keys = 1000, .seconds = 20, .reps = 3, .conns = 64 };
	struct harness_proc *redis = NULL, *mock = NULL, *local_p = NULL, *redis_p = NULL;
	struct run_stats loc[MAX_REPS], red[MAX_REPS], warm;
	struct redis_stats rs[MAX_REPS], sum = { 0 };
	char sock[512], local_addr[128], local_admin[128], redis_addr[128], redis_admin[128];
	char *mock_addr = NULL;
	redisContext *rc = NULL;
	const char *bad = NULL;
	uint32_t failed = 0;
	int ret = 1;

	if (parse_args(argc, argv, &o) < 0) {
		fprintf(stderr, "usage: bench_redis [--rate R] [--keys K] [--seconds S] [--reps N] "
		                "[--connections C]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl = { 4096 + (rlim_t)o.conns, 4096 + (rlim_t)o.conns };
	setrlimit(RLIMIT_NOFILE, &rl); /* best effort: the default suffices for 64 connections */

	char *dir = harness_tmpdir();
	redis = fixture_redis_start(dir, "redis", NULL, sock, sizeof(sock));
	char *mock_argv[] = { (char *)harness_mock_bin(), "--listen", "127.0.0.1:0", NULL };
	mock = redis ? harness_spawn(dir, "mock", mock_argv, NULL) : NULL;
	if (!mock || harness_wait_ready(mock, READY_MS) < 0 ||
	    !(mock_addr = harness_notify_var(mock, "X_MOCK_LISTEN"))) {
		fprintf(stderr, "bench_redis: redis-server or the mock did not start\n");
		goto out;
	}
	local_p = start_proxy(dir, "local", mock_addr, NULL, local_addr, local_admin);
	redis_p = start_proxy(dir, "shared", mock_addr, sock, redis_addr, redis_admin);
	g_children[0] = redis;
	g_children[1] = mock;
	g_children[2] = local_p;
	g_children[3] = redis_p;
	rc = redis_open(sock);
	if (!local_p || !redis_p || !rc) {
		fprintf(stderr, "bench_redis: a proxy did not start\n");
		goto out;
	}
	/* Shared decisions start once the first heartbeat found Redis; until then it is local. */
	if (metric_at_least(redis_admin, "ghlproxy_redis_up", 1) != 1) {
		fprintf(stderr, "bench_redis: the redis proxy never reached Redis\n");
		goto out;
	}
	/* Warm-up: every key exists in both proxies (and in Redis), pools and script are loaded. */
	if (load_run(local_addr, &o, (uint32_t)o.keys, &warm) < 0)
		goto out;
	failed += warm.failed;
	if (load_run(redis_addr, &o, (uint32_t)o.keys, &warm) < 0)
		goto out;
	failed += warm.failed;
	double fallbacks0 = fixture_metric_at(redis_admin, "ghlproxy_redis_fallbacks_total");

	printf("rate_rps: %d\n", o.rate_rps);
	printf("keys: %d\n", o.keys);
	printf("connections: %d\n", o.conns);
	printf("seconds_per_run: %d\n", o.seconds);
	printf("repetitions: %d\n", o.reps);
	for (int i = 0; i < o.reps; i++) {
		if (measured_run(local_addr, local_admin, mock_addr, local_p->pid, 0, &o, &loc[i]) <
		    0)
			goto out;
		print_run("local", i + 1, &loc[i]);
		if (redis_resetstat(rc) < 0 ||
		    measured_run(redis_addr, redis_admin, mock_addr, redis_p->pid, redis->pid, &o,
		                 &red[i]) < 0 ||
		    redis_read_stats(rc, &rs[i]) < 0) {
			fprintf(stderr, "bench_redis: a redis run failed to run or to be read\n");
			goto out;
		}
		print_run("redis", i + 1, &red[i]);
		long long decisions = rs[i].evalsha + rs[i].eval - rs[i].heartbeat;
		printf("redis_%d_decision_commands_per_admitted: %.4f\n", i + 1,
		       per(decisions, red[i].forwarded));
		printf("redis_%d_evalsha_usec_per_call: %.1f\n", i + 1,
		       rs[i].evalsha > 0 ? (double)rs[i].evalsha_us / (double)rs[i].evalsha : -1);
		fflush(stdout);
		failed += loc[i].failed + red[i].failed;
		if (loc[i].forwarded != loc[i].ok || red[i].forwarded != red[i].ok ||
		    loc[i].mock_requests != loc[i].forwarded ||
		    red[i].mock_requests != red[i].forwarded)
			bad = "forwarded counts disagree (answers, proxy metrics, mock)";
		if (decisions <= 0)
			bad = "no admission decision went to Redis";
		else if (per(decisions, red[i].forwarded) > 1.0)
			bad = "more than one admission-decision command per admitted request";
		sum.all += rs[i].all;
		sum.evalsha += rs[i].evalsha;
		sum.eval += rs[i].eval;
		sum.script += rs[i].script;
		sum.heartbeat += rs[i].heartbeat;
		sum.top_level += rs[i].top_level;
		sum.processed += rs[i].processed;
		sum.evalsha_us += rs[i].evalsha_us;
		for (int k = 0; k < rs[i].n_inner; k++)
			add_inner(&sum, rs[i].inner[k].name, rs[i].inner[k].calls);
	}
	if (fixture_metric_at(redis_admin, "ghlproxy_redis_up") != 1 ||
	    fixture_metric_at(redis_admin, "ghlproxy_redis_fallbacks_total") != fallbacks0)
		bad = "the redis proxy fell back to local decisions during the runs";

	double v[11][MAX_REPS], admitted = 0, max_decisions = 0;
	for (int i = 0; i < o.reps; i++) {
		v[0][i] = loc[i].achieved_rps;
		v[1][i] = loc[i].p50_ms;
		v[2][i] = loc[i].p90_ms;
		v[3][i] = loc[i].p99_ms;
		v[4][i] = red[i].achieved_rps;
		v[5][i] = red[i].p50_ms;
		v[6][i] = red[i].p90_ms;
		v[7][i] = red[i].p99_ms;
		v[8][i] = loc[i].proxy_cpu_us;
		v[9][i] = red[i].proxy_cpu_us;
		v[10][i] = red[i].redis_cpu_us;
		admitted += red[i].forwarded;
		double d = per(rs[i].evalsha + rs[i].eval - rs[i].heartbeat, red[i].forwarded);
		if (d > max_decisions)
			max_decisions = d;
	}
	double add50[MAX_REPS], add99[MAX_REPS];
	for (int i = 0; i < o.reps; i++) {
		add50[i] = red[i].p50_ms - loc[i].p50_ms;
		add99[i] = red[i].p99_ms - loc[i].p99_ms;
	}
	printf("local_achieved_rps: %.1f\n", median(v[0], o.reps));
	printf("local_p50_ms: %.3f\n", median(v[1], o.reps));
	printf("local_p90_ms: %.3f\n", median(v[2], o.reps));
	printf("local_p99_ms: %.3f\n", median(v[3], o.reps));
	printf("redis_achieved_rps: %.1f\n", median(v[4], o.reps));
	printf("redis_p50_ms: %.3f\n", median(v[5], o.reps));
	printf("redis_p90_ms: %.3f\n", median(v[6], o.reps));
	printf("redis_p99_ms: %.3f\n", median(v[7], o.reps));
	printf("added_latency_p50_ms: %.3f\n", median(add50, o.reps));
	printf("added_latency_p99_ms: %.3f\n", median(add99, o.reps));
	printf("local_proxy_cpu_us_per_request: %.1f\n", median(v[8], o.reps));
	printf("redis_proxy_cpu_us_per_request: %.1f\n", median(v[9], o.reps));
	printf("redis_server_cpu_us_per_request: %.1f\n", median(v[10], o.reps));
	printf("redis_admitted: %.0f\n", admitted);
	printf("redis_commands_per_admitted: %.4f\n", per(sum.all, admitted));
	printf("redis_evalsha_per_admitted: %.4f\n", per(sum.evalsha, admitted));
	printf("redis_eval_per_admitted: %.4f\n", per(sum.eval, admitted));
	printf("redis_script_per_admitted: %.4f\n", per(sum.script, admitted));
	printf("redis_heartbeat_per_admitted: %.4f\n", per(sum.heartbeat, admitted));
	printf("redis_heartbeat_calls: %lld\n", sum.heartbeat);
	printf("redis_commands_inside_scripts_per_admitted: %.4f\n",
	       per(sum.all - sum.top_level, admitted));
	qsort(sum.inner, (size_t)sum.n_inner, sizeof(sum.inner[0]), cmp_inner);
	for (int k = 0; k < sum.n_inner; k++)
		printf("redis_inside_%s_per_admitted: %.4f\n", sum.inner[k].name,
		       per(sum.inner[k].calls, admitted));
	printf("redis_round_trips_per_admitted: %.4f\n", per(sum.top_level, admitted));
	printf("redis_decision_commands_per_admitted: %.4f\n",
	       per(sum.evalsha + sum.eval - sum.heartbeat, admitted));
	printf("redis_decision_commands_per_admitted_max: %.4f\n", max_decisions);
	printf("redis_total_commands_processed_per_admitted: %.4f\n", per(sum.processed, admitted));
	printf("redis_evalsha_usec_per_call: %.1f\n",
	       sum.evalsha > 0 ? (double)sum.evalsha_us / (double)sum.evalsha : -1);
	printf("failed_requests: %u\n", failed);
	if (failed)
		bad = "requests failed";
	printf("verdict: %s\n", bad ? "FAILED" : "ok");
	if (bad)
		fprintf(stderr, "bench_redis: %s\n", bad);
	ret = bad ? 1 : 0;
out:
	fflush(stdout);
	redisFree(rc);
	struct harness_proc *procs[] = { local_p, redis_p, mock, redis };
	for (size_t i = 0; ret != 0 && i < sizeof(procs) / sizeof(procs[0]); i++)
		report_proc(procs[i]);
	for (size_t i = 0; i < sizeof(procs) / sizeof(procs[0]); i++) {
		if (procs[i]) {
			harness_kill(procs[i], SIGTERM);
			harness_wait_exit(procs[i], 30000);
		}
		harness_proc_free(procs[i]);
	}
	harness_tmpdir_free(dir);
	free(mock_addr);
	return ret;
}
