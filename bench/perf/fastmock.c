/*
 * bench/perf/fastmock.c: the fast mock upstream of the performance benchmark (bench/perf/perf.py).
 *
 * One thread, one epoll loop, non-blocking sockets: a plain-HTTP listener and, optionally, a TLS
 * one (OpenSSL, the certificate and key the driver made for 127.0.0.1). Every request gets the
 * same small JSON answer on a keep-alive HTTP/1.1 connection, so what is measured is the proxy in
 * front of it, not the mock. It is deliberately not tests/support/mock_upstream (evhttp, strict
 * limits, logs every request): that one is a referee, this one is a fast wall.
 *
 * Data in: HTTP/1.1 requests (pipelined or not; bodies by Content-Length; no chunked bodies: the
 * benchmark sends none, and one is answered 400 and the connection closed).
 * Data out: "HTTP/1.1 200 OK" with Content-Length and, with --hl-headers MAX,INTERVAL_MS,DAILY,
 * HighLevel's five X-RateLimit-* headers (remaining: MAX - 1 and DAILY - 1, always), so the proxy
 * reads and learns from them as it does from HighLevel's answers.
 *
 * Admission precision (case f): a request carrying "X-Seq: N" has (N, arrival time) recorded,
 * CLOCK_MONOTONIC nanoseconds, the clock the load generator stamps its sends with. Control
 * paths, answered by the mock itself: GET /__perf/arrivals ("seq ns" lines, then forgotten),
 * GET /__perf/count (requests answered since start).
 *
 * Usage: fastmock --listen HOST:PORT [--tls-listen HOST:PORT --cert FILE --key FILE]
 *                 [--hl-headers MAX,INTERVAL_MS,DAILY]
 * Port 0 picks a free port; once listening it prints "plain HOST:PORT" (and "tls HOST:PORT"),
 * then "ready", one per line on standard output. SIGTERM or SIGINT: exit 0.
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
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define IN_MAX       (1 << 20) /* a request head plus body larger than this: 413, close */
#define IN_START     4096
#define OUT_START    4096
#define MAX_EVENTS   128
#define ARRIVALS_MAX (10u * 1000 * 1000) /* recorded X-Seq arrivals, at most */
#define TAG_PLAIN    ((uint64_t)1)
#define TAG_TLS      ((uint64_t)2)
#define TAG_SIGNAL   ((uint64_t)3) /* connection pointers are never this small */

static const char BODY[] = "{\"contacts\":[{\"id\":\"bench0000000000000001\",\"locationId\":"
                           "\"BenchLoc\",\"firstName\":\"Bench\",\"tags\":[]}],"
                           "\"meta\":{\"total\":1,\"currentPage\":1}}";

struct buf {
	char *p;
	size_t len, off, cap; /* bytes [off, len) are pending */
};

struct conn {
	int fd;
	SSL *ssl;           /* NULL: plain */
	bool is_handshaken; /* TLS only */
	bool want_write;    /* EPOLLOUT is armed */
	bool is_closing;    /* close once out is flushed */
	struct buf in, out;
};

struct arrival {
	uint64_t seq;
	int64_t ns;
};

static int g_ep = -1;
static SSL_CTX *g_ctx;
static char *g_answer; /* the whole 200 answer, head and body */
static size_t g_answer_len;
static uint64_t g_answered;
static struct arrival *g_arr;
static size_t g_n_arr, g_cap_arr;

/*
 * Why a TLS connection was dropped, on stderr (the driver keeps it), for the first few: a mock that
 * drops connections must say so, or the proxies' 502s would be blamed on them.
 */
static void tls_trouble(const char *what, int ssl_err)
{
	static int n_told;

	if (n_told++ >= 20)
		return;
	fprintf(stderr, "fastmock: TLS %s failed: SSL error %d, errno %d (%s)\n", what, ssl_err,
	        errno, strerror(errno));
	ERR_print_errors_fp(stderr);
}

/* The peer hung up (close_notify, EOF without it, a reset): a normal end, not trouble. */
static bool is_peer_gone(int ssl_err)
{
	unsigned long e = ERR_peek_last_error();

	if (ssl_err == SSL_ERROR_ZERO_RETURN)
		return true;
	if (ssl_err == SSL_ERROR_SYSCALL)
		return errno == 0 || errno == ECONNRESET || errno == EPIPE;
	if (ssl_err == SSL_ERROR_SSL && ERR_GET_LIB(e) == ERR_LIB_SSL &&
	    ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		ERR_clear_error();
		return true;
	}
	return false;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int buf_reserve(struct buf *b, size_t more, size_t start)
{
	if (b->off > 0 && b->off == b->len)
		b->off = b->len = 0;
	if (b->cap - b->len >= more)
		return 0;
	if (b->off > 0) { /* slide pending bytes to the front first */
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->cap - b->len >= more)
			return 0;
	}
	size_t cap = b->cap ? b->cap : start;
	while (cap - b->len < more) {
		if (cap > SIZE_MAX / 2)
			return -ENOMEM;
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int buf_add(struct buf *b, const void *data, size_t n)
{
	if (buf_reserve(b, n, OUT_START) < 0)
		return -ENOMEM;
	memcpy(b->p + b->len, data, n);
	b->len += n;
	return 0;
}

static int listen_on(const char *spec, char *bound, size_t bound_len)
{
	char host[64];
	const char *colon = strrchr(spec, ':');
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	int one = 1;

	if (!colon || (size_t)(colon - spec) >= sizeof(host))
		return -1;
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return -1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
		close(fd);
		return -1;
	}
	snprintf(bound, bound_len, "%s:%u", host, ntohs(sa.sin_port));
	return fd;
}

static void conn_free(struct conn *c)
{
	ERR_clear_error(); /* what an ended TLS connection left must not be read as the next's */
	epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
	if (c->ssl)
		SSL_free(c->ssl);
	close(c->fd);
	free(c->in.p);
	free(c->out.p);
	free(c);
}

static void conn_want_write(struct conn *c, bool want)
{
	if (c->want_write == want)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };
	epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->want_write = want;
}

/* Write what is pending. 0: all written or waiting for EPOLLOUT; -1: the connection is dead. */
static int conn_flush(struct conn *c)
{
	while (c->out.off < c->out.len) {
		size_t n = c->out.len - c->out.off;
		ssize_t w;
		if (c->ssl) {
			int r = SSL_write(c->ssl, c->out.p + c->out.off,
			                  (int)(n > INT32_MAX ? INT32_MAX : n));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
					conn_want_write(c, true);
					return 0;
				}
				tls_trouble("write", e);
				return -1;
			}
			w = r;
		} else {
			w = send(c->fd, c->out.p + c->out.off, n, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				conn_want_write(c, true);
				return 0;
			}
			if (w <= 0)
				return -1;
		}
		c->out.off += (size_t)w;
	}
	c->out.off = c->out.len = 0;
	conn_want_write(c, false);
	return c->is_closing ? -1 : 0;
}

static const char *find_head_end(const char *p, size_t len)
{
	const char *e = memmem(p, len, "\r\n\r\n", 4);
	return e ? e + 4 : NULL;
}

/* Value of header `name` in the head [p, end), or NULL; *vlen set. */
static const char *header_value(const char *p, const char *end, const char *name, size_t *vlen)
{
	size_t n = strlen(name);
	const char *l = memchr(p, '\n', (size_t)(end - p));

	for (l = l ? l + 1 : end; l < end;) {
		const char *le = memchr(l, '\n', (size_t)(end - l));
		if (!le)
			break;
		if ((size_t)(le - l) > n && strncasecmp(l, name, n) == 0 && l[n] == ':') {
			const char *v = l + n + 1;
			while (v < le && (*v == ' ' || *v == '\t'))
				v++;
			const char *ve = le;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
				ve--;
			*vlen = (size_t)(ve - v);
			return v;
		}
		l = le + 1;
	}
	return NULL;
}

static void record_arrival(uint64_t seq, int64_t ns)
{
	if (g_n_arr == g_cap_arr) {
		size_t cap = g_cap_arr ? g_cap_arr * 2 : 65536;
		if (cap > ARRIVALS_MAX)
			return;
		struct arrival *a = realloc(g_arr, cap * sizeof(*a));
		if (!a)
			return;
		g_arr = a;
		g_cap_arr = cap;
	}
	g_arr[g_n_arr].seq = seq;
	g_arr[g_n_arr].ns = ns;
	g_n_arr++;
}

static int answer_text(struct conn *c, int status, const char *reason, const char *text, size_t len)
{
	char head[256];
	int n = snprintf(
	        head, sizeof(head),
	        "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n",
	        status, reason, len, c->is_closing ? "Connection: close\r\n" : "");
	if (buf_add(&c->out, head, (size_t)n) < 0 || buf_add(&c->out, text, len) < 0)
		return -1;
	return 0;
}

static int answer_control(struct conn *c, const char *path, size_t plen)
{
	if (plen >= 15 && strncmp(path, "/__perf/arrivals", 16) == 0) {
		size_t cap = g_n_arr * 42 + 1, n = 0;
		char *text = malloc(cap);
		if (!text)
			return -1;
		for (size_t i = 0; i < g_n_arr; i++)
			n += (size_t)snprintf(text + n, cap - n, "%llu %lld\n",
			                      (unsigned long long)g_arr[i].seq,
			                      (long long)g_arr[i].ns);
		g_n_arr = 0;
		int rc = answer_text(c, 200, "OK", text, n);
		free(text);
		return rc;
	}
	if (plen >= 13 && strncmp(path, "/__perf/count", 13) == 0) {
		char text[32];
		int n = snprintf(text, sizeof(text), "%llu\n", (unsigned long long)g_answered);
		return answer_text(c, 200, "OK", text, (size_t)n);
	}
	return answer_text(c, 404, "Not Found", "no such control path\n", 21);
}

/* Answer every complete request in c->in. -1: close the connection. */
static int conn_serve(struct conn *c)
{
	while (c->in.off < c->in.len && !c->is_closing) {
		const char *p = c->in.p + c->in.off;
		size_t avail = c->in.len - c->in.off;
		const char *end = find_head_end(p, avail);
		if (!end)
			return avail > IN_MAX ? -1 : 0;
		size_t vlen = 0, head_len = (size_t)(end - p), body_len = 0;
		const char *v = header_value(p, end, "transfer-encoding", &vlen);
		if (v) {
			c->is_closing = true;
			return answer_text(c, 400, "Bad Request", "chunked bodies not supported\n",
			                   29);
		}
		if ((v = header_value(p, end, "content-length", &vlen)) != NULL) {
			char *e;
			unsigned long long cl = strtoull(v, &e, 10);
			if (e == v || cl > IN_MAX) {
				c->is_closing = true;
				return answer_text(c, 413, "Too Large", "body too large\n", 15);
			}
			body_len = (size_t)cl;
		}
		if (avail < head_len + body_len)
			return 0;
		if ((v = header_value(p, end, "connection", &vlen)) != NULL && vlen == 5 &&
		    strncasecmp(v, "close", 5) == 0)
			c->is_closing = true;
		else if (memmem(p, (size_t)(end - p) < 64 ? (size_t)(end - p) : 64, "HTTP/1.0", 8))
			c->is_closing = true;
		const char *path = memchr(p, ' ', head_len);
		int rc;
		if (path && (size_t)(end - path) > 9 && strncmp(path + 1, "/__perf/", 8) == 0) {
			rc = answer_control(c, path + 1, (size_t)(end - path - 1));
		} else {
			if ((v = header_value(p, end, "x-seq", &vlen)) != NULL)
				record_arrival(strtoull(v, NULL, 10), now_ns());
			g_answered++;
			rc = c->is_closing ? answer_text(c, 200, "OK", BODY, sizeof(BODY) - 1)
			                   : buf_add(&c->out, g_answer, g_answer_len);
		}
		if (rc < 0)
			return -1;
		c->in.off += head_len + body_len;
	}
	if (c->in.off == c->in.len)
		c->in.off = c->in.len = 0;
	return 0;
}

/* Read what is there, answer it, write. -1: drop the connection. */
static int conn_read(struct conn *c)
{
	if (c->ssl && !c->is_handshaken) {
		int r = SSL_accept(c->ssl);
		if (r <= 0) {
			int e = SSL_get_error(c->ssl, r);
			if (e == SSL_ERROR_WANT_READ)
				return 0;
			if (e == SSL_ERROR_WANT_WRITE) {
				conn_want_write(c, true);
				return 0;
			}
			if (!is_peer_gone(e))
				tls_trouble("handshake", e);
			return -1;
		}
		c->is_handshaken = true;
		conn_want_write(c, false);
	}
	for (;;) {
		if (buf_reserve(&c->in, 16384, IN_START) < 0)
			return -1;
		ssize_t n;
		if (c->ssl) {
			int r = SSL_read(c->ssl, c->in.p + c->in.len, (int)(c->in.cap - c->in.len));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ)
					break;
				if (e == SSL_ERROR_WANT_WRITE) {
					conn_want_write(c, true);
					break;
				}
				if (!is_peer_gone(e))
					tls_trouble("read", e);
				return -1;
			}
			n = r;
		} else {
			n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			if (n <= 0)
				return -1;
		}
		c->in.len += (size_t)n;
		if ((size_t)n < 16384 && !c->ssl)
			break; /* a short read drained the socket */
	}
	if (conn_serve(c) < 0 && c->out.len == c->out.off)
		return -1;
	return conn_flush(c);
}

static void accept_all(int lfd, bool is_tls)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN, or out of descriptors: try at the next event */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		if (is_tls) {
			c->ssl = SSL_new(g_ctx);
			if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
				conn_free(c);
				continue;
			}
		}
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			conn_free(c);
	}
}

/* The one 200 answer, built once: head (with HighLevel's headers when hl is not NULL), body. */
static int build_answer(const char *hl)
{
	char head[1024], hl_lines[512] = "";
	unsigned long max = 0, interval_ms = 0, daily = 0;

	if (hl) {
		if (sscanf(hl, "%lu,%lu,%lu", &max, &interval_ms, &daily) != 3 || max < 1 ||
		    daily < 1)
			return -1;
		snprintf(hl_lines, sizeof(hl_lines),
		         "X-RateLimit-Limit-Daily: %lu\r\nX-RateLimit-Daily-Remaining: %lu\r\n"
		         "X-RateLimit-Interval-Milliseconds: %lu\r\nX-RateLimit-Max: %lu\r\n"
		         "X-RateLimit-Remaining: %lu\r\n",
		         daily, daily - 1, interval_ms, max, max - 1);
	}
	int n = snprintf(head, sizeof(head),
	                 "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
	                 "Content-Length: %zu\r\n%s\r\n",
	                 sizeof(BODY) - 1, hl_lines);
	g_answer_len = (size_t)n + sizeof(BODY) - 1;
	g_answer = malloc(g_answer_len);
	if (!g_answer)
		return -1;
	memcpy(g_answer, head, (size_t)n);
	memcpy(g_answer + n, BODY, sizeof(BODY) - 1);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: fastmock --listen HOST:PORT [--tls-listen HOST:PORT --cert FILE "
	                "--key FILE] [--hl-headers MAX,INTERVAL_MS,DAILY]\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *listen_spec = NULL, *tls_spec = NULL, *cert = NULL, *key = NULL, *hl = NULL;
	char bound[96];

	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			return usage();
		else if (!strcmp(argv[i], "--listen"))
			listen_spec = argv[++i];
		else if (!strcmp(argv[i], "--tls-listen"))
			tls_spec = argv[++i];
		else if (!strcmp(argv[i], "--cert"))
			cert = argv[++i];
		else if (!strcmp(argv[i], "--key"))
			key = argv[++i];
		else if (!strcmp(argv[i], "--hl-headers"))
			hl = argv[++i];
		else
			return usage();
	}
	if (!listen_spec || (tls_spec && (!cert || !key)) || build_answer(hl) < 0)
		return usage();
	signal(SIGPIPE, SIG_IGN);
	g_ep = epoll_create1(EPOLL_CLOEXEC);
	int lfd = listen_on(listen_spec, bound, sizeof(bound)), tfd = -1;
	if (g_ep < 0 || lfd < 0) {
		fprintf(stderr, "fastmock: cannot listen on %s: %s\n", listen_spec,
		        strerror(errno));
		return 1;
	}
	printf("plain %s\n", bound);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_PLAIN };
	epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &ev);
	if (tls_spec) {
		g_ctx = SSL_CTX_new(TLS_server_method());
		if (!g_ctx || SSL_CTX_use_certificate_chain_file(g_ctx, cert) != 1 ||
		    SSL_CTX_use_PrivateKey_file(g_ctx, key, SSL_FILETYPE_PEM) != 1) {
			ERR_print_errors_fp(stderr);
			return 1;
		}
		SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
		                                SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
		tfd = listen_on(tls_spec, bound, sizeof(bound));
		if (tfd < 0) {
			fprintf(stderr, "fastmock: cannot listen on %s\n", tls_spec);
			return 1;
		}
		printf("tls %s\n", bound);
		ev.data.u64 = TAG_TLS;
		epoll_ctl(g_ep, EPOLL_CTL_ADD, tfd, &ev);
	}
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	ev.data.u64 = TAG_SIGNAL;
	epoll_ctl(g_ep, EPOLL_CTL_ADD, sfd, &ev);
	printf("ready\n");
	fflush(stdout);

	for (;;) {
		struct epoll_event evs[MAX_EVENTS];
		int n = epoll_wait(g_ep, evs, MAX_EVENTS, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return 1;
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == TAG_SIGNAL)
				return 0;
			if (tag == TAG_PLAIN || tag == TAG_TLS) {
				accept_all(tag == TAG_PLAIN ? lfd : tfd, tag == TAG_TLS);
				continue;
			}
			struct conn *c = evs[i].data.ptr;
			int rc = 0;
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				rc = conn_read(c);
			else if (evs[i].events & EPOLLOUT)
				rc = c->ssl && !c->is_handshaken ? conn_read(c) : conn_flush(c);
			if (rc < 0)
				conn_free(c);
		}
	}
}
