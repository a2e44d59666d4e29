/*
 * bench/perf/loadgen.c: the benchmark's own HTTP/1.1 load generator, for what wrk cannot
 * express: a fixed request rate (open loop: latency counts from when a request was due, so a
 * stalled proxy cannot hide its stall by slowing the sender down), a fixed number of requests
 * over as many distinct keys (case e), and per-request send times for admission precision
 * (case f). Closed-loop throughput is wrk's job (bench/perf/perf.py runs both).
 *
 * One thread, one epoll loop, C keep-alive connections to one plain-HTTP address, at most one
 * request in flight per connection. Request i is for location BenchLoc<base + i mod keys>, with
 * one made-up PIT (never a real secret), so the proxy makes one key per location.
 *
 * Usage: loadgen --target HOST:PORT [--connections C] [--keys K] [--key-base B]
 *                [--rate R] [--seconds S | --requests N] [--seq] [--sends FILE]
 *   --rate 0 (default): closed loop, each connection sends as soon as its answer is in.
 *   --seq: "X-Seq: i" on request i (the fast mock records its arrival); --sends FILE writes
 *   "i send_ns" lines (CLOCK_MONOTONIC), for the driver to match against the arrivals.
 * Output: "key: value" lines (requests, ok, non_200, errors, achieved_rps, latency percentiles
 * in ms, send lag). Exit 0 when every request got an answer (any status), 1 otherwise.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#define BENCH_PIT    "pit-00000000-0000-4000-8000-00000000be4c"
#define REQ_MAX      512
#define IN_CAP       65536         /* one answer must fit: the benchmark's are < 1 KiB */
#define DRAIN_NS     30000000000LL /* answers still awaited this long after the last send */
#define TIMER_TAG    UINT32_MAX
#define NS_PER_MS    1000000.0
#define MAX_REQUESTS 50000000u

struct opts {
	const char *target;
	int conns;
	uint32_t keys, key_base;
	double rate; /* requests per second; 0: closed loop */
	double seconds;
	uint32_t requests; /* 0: as many as fit in `seconds` */
	bool seq;
	const char *sends_path;
};

struct conn {
	int fd;
	bool is_busy;
	uint32_t idx;
	int64_t sent_ns;
	char out[REQ_MAX];
	size_t out_len, out_off;
	char in[IN_CAP];
	size_t in_len;
};

struct gen {
	struct opts o;
	struct sockaddr_in sa;
	int ep, tfd;
	struct conn *c;
	int *idle, n_idle;
	int64_t t0_ns, end_ns;
	uint32_t total; /* requests to send; UINT32_MAX: until end_ns (closed loop by time) */
	uint32_t next, done, ok, non200, errors;
	int64_t *lat_ns;
	uint32_t n_lat, cap_lat;
	int64_t *lag_ns; /* open loop: how late each send left */
	int64_t *send_ns;
	uint32_t cap_send;
	int64_t last_done_ns;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t due_ns(const struct gen *g, uint32_t i)
{
	return g->t0_ns + (int64_t)((double)i * 1e9 / g->o.rate);
}

static int grow_i64(int64_t **v, uint32_t *cap, uint32_t need)
{
	if (need <= *cap)
		return 0;
	uint32_t c = *cap ? *cap : 65536;
	while (c < need && c < MAX_REQUESTS)
		c *= 2;
	if (c < need)
		return -1;
	int64_t *n = realloc(*v, (size_t)c * sizeof(**v));
	if (!n)
		return -1;
	*v = n;
	*cap = c;
	return 0;
}

static void conn_close(struct gen *g, int i)
{
	struct conn *c = &g->c[i];

	if (c->fd >= 0) {
		epoll_ctl(g->ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	c->fd = -1;
}

/* Connect (blocking, on loopback: at once), then non-blocking under epoll. */
static int conn_open(struct gen *g, int i)
{
	struct conn *c = &g->c[i];
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, (struct sockaddr *)&g->sa, sizeof(g->sa)) < 0 ||
	    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
	c->is_busy = false;
	c->in_len = c->out_len = c->out_off = 0;
	return epoll_ctl(g->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_watch(struct gen *g, int i, bool want_out)
{
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0),
		                  .data.u32 = (uint32_t)i };
	epoll_ctl(g->ep, EPOLL_CTL_MOD, g->c[i].fd, &ev);
}

/* The connection broke: its request (if any) failed; it comes back as a new idle one. */
static void conn_fail(struct gen *g, int i)
{
	struct conn *c = &g->c[i];

	if (c->is_busy) {
		g->errors++;
		g->done++;
		c->is_busy = false;
	} else {
		for (int k = 0; k < g->n_idle; k++) {
			if (g->idle[k] == i) {
				g->idle[k] = g->idle[--g->n_idle];
				break;
			}
		}
	}
	conn_close(g, i);
	if (conn_open(g, i) == 0)
		g->idle[g->n_idle++] = i;
	else
		fprintf(stderr, "loadgen: connection %d lost: %s\n", i, strerror(errno));
}

static void conn_flush(struct gen *g, int i)
{
	struct conn *c = &g->c[i];

	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			conn_watch(g, i, true);
			return;
		}
		if (n <= 0) {
			conn_fail(g, i);
			return;
		}
		c->out_off += (size_t)n;
	}
}

static bool more_to_send(const struct gen *g, int64_t now)
{
	if (g->total != UINT32_MAX)
		return g->next < g->total;
	return now < g->end_ns;
}

/* Send what is due on idle connections. */
static void pump(struct gen *g, int64_t now)
{
	while (g->n_idle > 0 && more_to_send(g, now) &&
	       (g->o.rate <= 0 || due_ns(g, g->next) <= now)) {
		int i = g->idle[--g->n_idle];
		struct conn *c = &g->c[i];
		uint32_t idx = g->next++;
		char seq[48] = "";
		if (g->o.seq)
			snprintf(seq, sizeof(seq), "X-Seq: %u\r\n", idx);
		int n = snprintf(c->out, sizeof(c->out),
		                 "GET /contacts/?locationId=BenchLoc%07u HTTP/1.1\r\n"
		                 "Host: bench\r\nVersion: 2021-07-28\r\n"
		                 "Authorization: Bearer " BENCH_PIT "\r\n%s\r\n",
		                 g->o.key_base + idx % g->o.keys, seq);
		c->out_len = (size_t)n;
		c->out_off = 0;
		c->idx = idx;
		c->is_busy = true;
		c->sent_ns = now;
		if (g->o.rate > 0 && g->lag_ns)
			g->lag_ns[idx] = now - due_ns(g, idx);
		if (g->o.sends_path) {
			if (grow_i64(&g->send_ns, &g->cap_send, idx + 1) == 0)
				g->send_ns[idx] = now;
		}
		conn_flush(g, i);
	}
}

/* Length of one complete answer at the start of buf, 0: incomplete, -1: malformed. */
static long answer_len(const char *buf, size_t len, int *status, bool *is_closing)
{
	const char *head_end = memmem(buf, len, "\r\n\r\n", 4);
	long long clen = -1;
	bool is_chunked = false;
	int minor = 1;

	if (!head_end)
		return len >= IN_CAP - 1 ? -1 : 0;
	if (sscanf(buf, "HTTP/1.%d %3d", &minor, status) != 2)
		return -1;
	*is_closing = minor == 0;
	for (const char *l = memchr(buf, '\n', (size_t)(head_end - buf)); l && l < head_end;) {
		l++;
		const char *le = memchr(l, '\n', (size_t)(head_end + 2 - l));
		if (!le)
			break;
		if (!strncasecmp(l, "content-length:", 15))
			clen = strtoll(l + 15, NULL, 10);
		else if (!strncasecmp(l, "transfer-encoding:", 18))
			is_chunked = memmem(l, (size_t)(le - l), "chunked", 7) != NULL;
		else if (!strncasecmp(l, "connection:", 11))
			*is_closing = memmem(l, (size_t)(le - l), "close", 5) != NULL;
		l = le;
	}
	const char *p = head_end + 4, *end = buf + len;
	if (*status == 204 || *status == 304)
		return p - buf;
	if (is_chunked) {
		for (;;) {
			const char *le = memmem(p, (size_t)(end - p), "\r\n", 2);
			if (!le)
				return 0;
			long long size = strtoll(p, NULL, 16);
			if (size < 0 || size > IN_CAP)
				return -1;
			p = le + 2;
			if (size == 0)
				break;
			if (end - p < size + 2)
				return 0;
			p += size + 2;
		}
		const char *le = memmem(p, (size_t)(end - p), "\r\n", 2); /* no trailers expected */
		return le ? le + 2 - buf : 0;
	}
	if (clen < 0 || clen > IN_CAP)
		return -1;
	return end - p < clen ? 0 : (p - buf) + clen;
}

static void conn_read(struct gen *g, int i)
{
	struct conn *c = &g->c[i];

	for (;;) {
		if (c->in_len >= IN_CAP - 1) {
			conn_fail(g, i);
			return;
		}
		ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - 1 - c->in_len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			conn_fail(g, i);
			return;
		}
		c->in_len += (size_t)n;
	}
	int status = 0;
	bool is_closing = false;
	long used = answer_len(c->in, c->in_len, &status, &is_closing);
	if (used == 0)
		return;
	if (used < 0 || !c->is_busy || (size_t)used != c->in_len) {
		conn_fail(g, i); /* malformed, unasked, or more than one answer */
		return;
	}
	int64_t t = now_ns();
	int64_t from = g->o.rate > 0 ? due_ns(g, c->idx) : c->sent_ns;
	if (status == 200)
		g->ok++;
	else
		g->non200++;
	if (grow_i64(&g->lat_ns, &g->cap_lat, g->n_lat + 1) == 0)
		g->lat_ns[g->n_lat++] = t - from;
	g->done++;
	g->last_done_ns = t;
	c->is_busy = false;
	c->in_len = 0;
	if (is_closing) {
		conn_close(g, i);
		if (conn_open(g, i) < 0)
			return;
	} else {
		conn_watch(g, i, false);
	}
	g->idle[g->n_idle++] = i;
}

static void arm_timer(struct gen *g)
{
	struct itimerspec its = { 0 };

	if (g->o.rate > 0 && g->n_idle > 0 && more_to_send(g, now_ns())) {
		int64_t t = due_ns(g, g->next);
		its.it_value.tv_sec = t / 1000000000;
		its.it_value.tv_nsec = t % 1000000000;
	}
	timerfd_settime(g->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static double pct_ms(const int64_t *v, uint32_t n, double pct)
{
	if (n == 0)
		return -1;
	uint64_t rank = (uint64_t)(pct / 100.0 * n + 0.999999);
	rank = rank < 1 ? 1 : rank > n ? n : rank;
	return (double)v[rank - 1] / NS_PER_MS;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--seq")) {
			o->seq = true;
			continue;
		}
		if (i + 1 >= argc)
			return -1;
		const char *v = argv[++i];
		if (!strcmp(a, "--target"))
			o->target = v;
		else if (!strcmp(a, "--connections"))
			o->conns = atoi(v);
		else if (!strcmp(a, "--keys"))
			o->keys = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--key-base"))
			o->key_base = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--rate"))
			o->rate = atof(v);
		else if (!strcmp(a, "--seconds"))
			o->seconds = atof(v);
		else if (!strcmp(a, "--requests"))
			o->requests = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--sends"))
			o->sends_path = v;
		else
			return -1;
	}
	if (!o->target || o->conns < 1 || o->conns > 65536 || o->keys < 1 || o->keys > 10000000 ||
	    o->key_base > 1000000000 || o->rate < 0 || o->rate > 1e7 || o->seconds < 0 ||
	    o->seconds > 86400 || o->requests > MAX_REQUESTS ||
	    (o->seconds == 0 && o->requests == 0))
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct gen g = { .o = { .conns = 32, .keys = 1000 } };
	char host[64];

	if (parse_args(argc, argv, &g.o) < 0) {
		fprintf(stderr, "usage: loadgen --target HOST:PORT [--connections C] [--keys K] "
		                "[--key-base B] [--rate R] [--seconds S | --requests N] [--seq] "
		                "[--sends FILE]\n");
		return 2;
	}
	const char *colon = strrchr(g.o.target, ':');
	if (!colon || (size_t)(colon - g.o.target) >= sizeof(host))
		return 2;
	memcpy(host, g.o.target, (size_t)(colon - g.o.target));
	host[colon - g.o.target] = '\0';
	g.sa.sin_family = AF_INET;
	g.sa.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &g.sa.sin_addr) != 1)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl = { (rlim_t)g.o.conns + 64, (rlim_t)g.o.conns + 64 };
	setrlimit(RLIMIT_NOFILE, &rl); /* best effort */

	if (g.o.requests)
		g.total = g.o.requests;
	else if (g.o.rate > 0)
		g.total = (uint32_t)(g.o.rate * g.o.seconds);
	else
		g.total = UINT32_MAX;
	g.ep = epoll_create1(EPOLL_CLOEXEC);
	g.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	g.c = calloc((size_t)g.o.conns, sizeof(*g.c));
	g.idle = calloc((size_t)g.o.conns, sizeof(int));
	if (g.o.rate > 0)
		g.lag_ns = calloc(g.total, sizeof(int64_t));
	if (g.ep < 0 || g.tfd < 0 || !g.c || !g.idle || (g.o.rate > 0 && !g.lag_ns))
		return 1;
	struct epoll_event tev = { .events = EPOLLIN, .data.u32 = TIMER_TAG };
	epoll_ctl(g.ep, EPOLL_CTL_ADD, g.tfd, &tev);
	for (int i = 0; i < g.o.conns; i++) {
		if (conn_open(&g, i) < 0) {
			fprintf(stderr, "loadgen: connect %s: %s\n", g.o.target, strerror(errno));
			return 1;
		}
		g.idle[g.n_idle++] = i;
	}
	g.t0_ns = now_ns() + 10000000; /* 10 ms after the connections are open */
	g.end_ns = g.t0_ns + (int64_t)(g.o.seconds * 1e9);
	while (now_ns() < g.t0_ns)
		;
	int64_t give_up = INT64_MAX;
	for (;;) {
		int64_t now = now_ns();
		pump(&g, now);
		if (!more_to_send(&g, now) && g.done == g.next)
			break;
		if (!more_to_send(&g, now) && give_up == INT64_MAX)
			give_up = now + DRAIN_NS;
		if (now > give_up)
			break;
		arm_timer(&g);
		struct epoll_event evs[64];
		int n = epoll_wait(g.ep, evs, 64, 100);
		for (int k = 0; k < n; k++) {
			uint32_t tag = evs[k].data.u32;
			if (tag == TIMER_TAG) {
				uint64_t x;
				if (read(g.tfd, &x, sizeof(x)) < 0 && errno != EAGAIN)
					return 1;
				continue;
			}
			int i = (int)tag;
			if (g.c[i].fd < 0)
				continue;
			if ((evs[k].events & EPOLLOUT) && g.c[i].out_off < g.c[i].out_len)
				conn_flush(&g, i);
			if (g.c[i].fd >= 0 && (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
				conn_read(&g, i);
		}
	}
	uint32_t unanswered = g.next - g.done;
	qsort(g.lat_ns, g.n_lat, sizeof(int64_t), cmp_i64);
	double secs = (double)(g.last_done_ns - g.t0_ns) / 1e9;
	printf("requests: %u\n", g.next);
	printf("ok: %u\n", g.ok);
	printf("non_200: %u\n", g.non200);
	printf("errors: %u\n", g.errors + unanswered);
	printf("seconds: %.3f\n", secs);
	printf("achieved_rps: %.1f\n", secs > 0 ? (double)g.done / secs : 0);
	printf("p50_ms: %.3f\n", pct_ms(g.lat_ns, g.n_lat, 50));
	printf("p90_ms: %.3f\n", pct_ms(g.lat_ns, g.n_lat, 90));
	printf("p99_ms: %.3f\n", pct_ms(g.lat_ns, g.n_lat, 99));
	printf("p999_ms: %.3f\n", pct_ms(g.lat_ns, g.n_lat, 99.9));
	printf("max_ms: %.3f\n", pct_ms(g.lat_ns, g.n_lat, 100));
	if (g.lag_ns) {
		qsort(g.lag_ns, g.next, sizeof(int64_t), cmp_i64);
		printf("send_lag_p99_ms: %.3f\n", pct_ms(g.lag_ns, g.next, 99));
	}
	if (g.o.sends_path && g.send_ns) {
		FILE *f = fopen(g.o.sends_path, "w");
		if (!f)
			return 1;
		for (uint32_t i = 0; i < g.next && i < g.cap_send; i++)
			fprintf(f, "%u %lld\n", i, (long long)g.send_ns[i]);
		fclose(f);
	}
	for (int i = 0; i < g.o.conns; i++)
		conn_close(&g, i);
	free(g.c);
	free(g.idle);
	free(g.lat_ns);
	free(g.lag_ns);
	free(g.send_ns);
	return unanswered == 0 && g.errors == 0 ? 0 : 1;
}
