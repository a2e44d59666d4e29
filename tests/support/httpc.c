/*
 * httpc.c: a blocking-style HTTP/1.1 client for tests, over raw sockets.
 *
 * Owns one reader per fd (a byte buffer kept between calls, so that pipelined responses and
 * bytes that arrive early are never lost), created by httpc_connect or on first read, freed by
 * httpc_close. Sockets are non-blocking; every wait is a poll() bounded by the caller's deadline.
 * Responses are parsed per RFC 9112: status line, header fields (obs-fold joined), interim 1xx
 * skipped, body by HEAD/1xx/204/304 (none), Transfer-Encoding chunked, Content-Length or close.
 * Buffers grow geometrically, so 30 MB+ bodies cost amortised O(n).
 * Every response read (a partial one too) goes to the run's transcript when there is one
 * (harness.h): head, and the first TRANSCRIPT_BODY_MAX bytes of the body.
 */
#define _GNU_SOURCE
#include "httpc.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK         (64 * 1024)
#define MAX_HEAD_BYTES     (64u * 1024 * 1024) /* a header block larger than this is an error */
#define MAX_LINE_BYTES     (1024 * 1024)       /* chunk-size and trailer lines */
#define CONNECT_TIMEOUT_MS 10000
#define SEND_TIMEOUT_MS    30000
/* Body bytes kept in the transcript per response: error bodies, /status and /metrics are far
 * smaller; the large bodies are the upstream's, relayed. */
#define TRANSCRIPT_BODY_MAX (1024 * 1024)

struct reader {
	unsigned char *buf;
	size_t start; /* first unconsumed byte */
	size_t end;   /* one past the last byte received */
	size_t cap;
	bool eof;       /* the peer closed (or reset): nothing more will come */
	char peer[128]; /* "host:port" or "unix:path" as connected, for the transcript; "" unknown
	                 */
};

/* Indexed by fd. Freed when the last reader goes. Tests use httpc from many threads at once
 * (one connection per thread), so the table itself is behind a lock; a reader is only ever used
 * by the thread that owns its fd. */
static struct reader **g_readers;
static size_t g_n_slots;
static size_t g_n_live;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static struct reader *reader_get_locked(int fd);

static struct reader *reader_get(int fd)
{
	pthread_mutex_lock(&g_lock);
	struct reader *r = reader_get_locked(fd);
	pthread_mutex_unlock(&g_lock);
	return r;
}

static struct reader *reader_get_locked(int fd)
{
	if (fd < 0) {
		return NULL;
	}
	if ((size_t)fd >= g_n_slots) {
		size_t n = g_n_slots == 0 ? 64 : g_n_slots;
		struct reader **nr;

		while (n <= (size_t)fd) {
			n *= 2;
		}
		nr = realloc(g_readers, n * sizeof(*nr));
		if (nr == NULL) {
			return NULL;
		}
		memset(nr + g_n_slots, 0, (n - g_n_slots) * sizeof(*nr));
		g_readers = nr;
		g_n_slots = n;
	}
	if (g_readers[fd] == NULL) {
		g_readers[fd] = calloc(1, sizeof(struct reader));
		if (g_readers[fd] == NULL) {
			return NULL;
		}
		g_n_live++;
	}
	return g_readers[fd];
}

static void reader_drop(int fd)
{
	pthread_mutex_lock(&g_lock);
	if (fd < 0 || (size_t)fd >= g_n_slots || g_readers[fd] == NULL) {
		pthread_mutex_unlock(&g_lock);
		return;
	}
	free(g_readers[fd]->buf);
	free(g_readers[fd]);
	g_readers[fd] = NULL;
	if (--g_n_live == 0) {
		free(g_readers);
		g_readers = NULL;
		g_n_slots = 0;
	}
	pthread_mutex_unlock(&g_lock);
}

static size_t avail(const struct reader *r)
{
	return r->end - r->start;
}

/* Room for at least `want` more bytes after r->end: compact first, then grow geometrically. */
static int reader_reserve(struct reader *r, size_t want)
{
	if (r->start > 0 && r->start == r->end) {
		r->start = r->end = 0;
	}
	if (r->cap - r->end >= want) {
		return 0;
	}
	if (r->start > 0) {
		memmove(r->buf, r->buf + r->start, avail(r));
		r->end -= r->start;
		r->start = 0;
		if (r->cap - r->end >= want) {
			return 0;
		}
	}
	size_t ncap = r->cap == 0 ? READ_CHUNK : r->cap;
	unsigned char *nb;

	while (ncap - r->end < want) {
		if (ncap > SIZE_MAX / 2) {
			return -1;
		}
		ncap *= 2;
	}
	nb = realloc(r->buf, ncap);
	if (nb == NULL) {
		return -1;
	}
	r->buf = nb;
	r->cap = ncap;
	return 0;
}

static int poll_until(int fd, short events, int64_t deadline_ms)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = events };
		int64_t left = deadline_ms - harness_now_ms();
		int r;

		if (left < 0) {
			left = 0;
		}
		r = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
		if (r > 0) {
			return 0;
		}
		if (r < 0 && errno != EINTR) {
			return -1;
		}
		if (r == 0 && harness_now_ms() >= deadline_ms) {
			errno = ETIMEDOUT;
			return -1;
		}
	}
}

/*
 * Receive into `dst` (up to `len`) once something is readable. Returns bytes (> 0), 0 on EOF
 * (also on a reset: for a test, both mean the peer is gone), -1 on timeout or error.
 */
static ssize_t recv_some(int fd, void *dst, size_t len, int64_t deadline_ms)
{
	for (;;) {
		ssize_t n = recv(fd, dst, len, 0);

		if (n >= 0) {
			return n;
		}
		if (errno == ECONNRESET) {
			return 0;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			return -1;
		}
		if (poll_until(fd, POLLIN, deadline_ms) != 0) {
			return -1;
		}
	}
}

/* Read more into the reader: 1 got data, 0 EOF, -1 timeout or error. */
static int reader_fill(int fd, struct reader *r, int64_t deadline_ms)
{
	ssize_t n;

	if (r->eof) {
		return 0;
	}
	if (reader_reserve(r, READ_CHUNK) != 0) {
		return -1;
	}
	n = recv_some(fd, r->buf + r->end, r->cap - r->end, deadline_ms);
	if (n < 0) {
		return -1;
	}
	if (n == 0) {
		r->eof = true;
		return 0;
	}
	r->end += (size_t)n;
	return 1;
}

/* ---- connect and send ---- */

static int connect_wait(int fd, const struct sockaddr *sa, socklen_t salen)
{
	int err = 0;
	socklen_t elen = sizeof(err);

	if (connect(fd, sa, salen) == 0) {
		return 0;
	}
	if (errno != EINPROGRESS && errno != EAGAIN) {
		return -1;
	}
	if (poll_until(fd, POLLOUT, harness_now_ms() + CONNECT_TIMEOUT_MS) != 0) {
		return -1;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

static int connect_unix(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -1;
	}
	if (connect_wait(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int connect_tcp(const char *addr)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char host[256];
	char port_s[16];
	int port;
	int fd = -1;

	if (harness_split_addr(addr, host, sizeof(host), &port) != 0) {
		return -1;
	}
	snprintf(port_s, sizeof(port_s), "%d", port);
	if (getaddrinfo(host, port_s, &hints, &res) != 0) {
		return -1;
	}
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int one = 1;

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		            ai->ai_protocol);
		if (fd < 0) {
			continue;
		}
		if (connect_wait(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			break;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

/* The peer of a connected socket as "host:port", "[v6]:port" or "unix:path"; "" if unknown. */
static void peer_name(int fd, char *out, size_t out_len)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN];
	char port[16];

	out[0] = '\0';
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) {
		return;
	}
	if (ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;

		snprintf(out, out_len, "unix:%.*s",
		         (int)(len > offsetof(struct sockaddr_un, sun_path)
		                       ? strnlen(sun->sun_path, sizeof(sun->sun_path))
		                       : 0),
		         sun->sun_path);
		return;
	}
	if (getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port, sizeof(port),
	                NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		return;
	}
	snprintf(out, out_len, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

int httpc_connect(const char *addr)
{
	int fd;

	if (addr == NULL) {
		return -1;
	}
	if (strncmp(addr, "unix:", 5) == 0) {
		fd = connect_unix(addr + 5);
	} else {
		fd = connect_tcp(addr);
	}
	if (fd >= 0) {
		struct reader *r;

		reader_drop(fd); /* a stale reader of an fd number closed without httpc_close */
		r = reader_get(fd);
		if (r == NULL) {
			close(fd);
			return -1;
		}
		peer_name(fd, r->peer, sizeof(r->peer));
	}
	return fd;
}

static int send_until(int fd, const unsigned char *p, size_t len, int64_t deadline_ms)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = send(fd, p + off, len - off, MSG_NOSIGNAL);

		if (n >= 0) {
			off += (size_t)n;
			continue;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			return -1;
		}
		if (poll_until(fd, POLLOUT, deadline_ms) != 0) {
			return -1;
		}
	}
	return 0;
}

int httpc_send_all(int fd, const void *buf, size_t len)
{
	return send_until(fd, buf, len, harness_now_ms() + SEND_TIMEOUT_MS);
}

int httpc_send_split(int fd, const void *buf, size_t len, const size_t *cuts, size_t n_cuts,
                     unsigned pause_us)
{
	const unsigned char *p = buf;
	size_t from = 0;

	for (size_t i = 0; i <= n_cuts; i++) {
		size_t to = i < n_cuts ? cuts[i] : len;

		if (to < from || to > len) {
			return -1; /* cuts must ascend and stay inside the buffer */
		}
		if (to > from && httpc_send_all(fd, p + from, to - from) != 0) {
			return -1;
		}
		from = to;
		if (i < n_cuts && pause_us > 0) {
			/* A deliberate gap so the pieces leave as separate segments: the point of
			 * the call, not a wait for readiness. */
			struct timespec ts = { .tv_sec = pause_us / 1000000,
				               .tv_nsec = (long)(pause_us % 1000000) * 1000 };

			while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
			}
		}
	}
	return 0;
}

/* ---- response parsing ---- */

struct growbuf {
	unsigned char *p;
	size_t len;
	size_t cap;
};

static int growbuf_reserve(struct growbuf *g, size_t more)
{
	size_t need;
	size_t ncap;
	unsigned char *np;

	if (more > SIZE_MAX - g->len - 1) {
		return -1;
	}
	need = g->len + more + 1; /* + NUL */
	if (need <= g->cap) {
		return 0;
	}
	ncap = g->cap == 0 ? 4096 : g->cap;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 2) {
			return -1;
		}
		ncap *= 2;
	}
	np = realloc(g->p, ncap);
	if (np == NULL) {
		return -1;
	}
	g->p = np;
	g->cap = ncap;
	return 0;
}

static int growbuf_append(struct growbuf *g, const void *src, size_t n)
{
	if (growbuf_reserve(g, n) != 0) {
		return -1;
	}
	memcpy(g->p + g->len, src, n);
	g->len += n;
	return 0;
}

static char *dup_range(const unsigned char *s, size_t n)
{
	char *d = malloc(n + 1);

	if (d == NULL) {
		abort();
	}
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

static bool is_ows(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* Trim OWS (and a CR) on both ends of [*s, *s + *n). */
static void trim(const unsigned char **s, size_t *n)
{
	while (*n > 0 && is_ows((*s)[0])) {
		(*s)++;
		(*n)--;
	}
	while (*n > 0 && (is_ows((*s)[*n - 1]) || (*s)[*n - 1] == '\r')) {
		(*n)--;
	}
}

static int add_header(struct httpc_response *resp, const unsigned char *name, size_t name_len,
                      const unsigned char *value, size_t value_len)
{
	struct httpc_header *nh = realloc(resp->headers, (resp->n_headers + 1) * sizeof(*nh));

	if (nh == NULL) {
		return -1;
	}
	resp->headers = nh;
	nh[resp->n_headers].name = dup_range(name, name_len);
	nh[resp->n_headers].value = dup_range(value, value_len);
	resp->n_headers++;
	return 0;
}

/* Append an obs-fold continuation to the last header's value, joined by one space. */
static int fold_header(struct httpc_response *resp, const unsigned char *s, size_t n)
{
	struct httpc_header *h;
	size_t old;
	char *nv;

	if (resp->n_headers == 0) {
		return -1;
	}
	h = &resp->headers[resp->n_headers - 1];
	old = strlen(h->value);
	nv = realloc(h->value, old + 1 + n + 1);
	if (nv == NULL) {
		return -1;
	}
	nv[old] = ' ';
	memcpy(nv + old + 1, s, n);
	nv[old + 1 + n] = '\0';
	h->value = nv;
	return 0;
}

/* Next line in [s, s + n): its length without the LF (and CR), and where the next starts. */
static size_t next_line(const unsigned char *s, size_t n, size_t *line_len)
{
	const unsigned char *lf = memchr(s, '\n', n);
	size_t l;

	if (lf == NULL) {
		*line_len = n;
		return n;
	}
	l = (size_t)(lf - s);
	*line_len = (l > 0 && s[l - 1] == '\r') ? l - 1 : l;
	return l + 1;
}

/* Parse a complete head (status line + fields, without the blank line). 0 or -1. */
static int parse_head(struct httpc_response *resp, const unsigned char *s, size_t n)
{
	size_t len;
	size_t adv = next_line(s, n, &len);
	const unsigned char *reason;
	size_t reason_len;

	/* "HTTP/1.x SP 3DIGIT [SP reason]" */
	if (len < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9' || s[8] != ' ') {
		return -1;
	}
	for (int i = 9; i < 12; i++) {
		if (s[i] < '0' || s[i] > '9') {
			return -1;
		}
	}
	if (len > 12 && s[12] != ' ') {
		return -1;
	}
	resp->minor_version = s[7] - '0';
	resp->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
	reason = len > 13 ? s + 13 : s + len;
	reason_len = len > 13 ? len - 13 : 0;
	resp->reason = dup_range(reason, reason_len);
	s += adv;
	n -= adv;

	while (n > 0) {
		const unsigned char *colon;
		const unsigned char *name;
		const unsigned char *value;
		size_t name_len;
		size_t value_len;

		adv = next_line(s, n, &len);
		if (len == 0) {
			break;
		}
		if (is_ows(s[0])) {
			value = s;
			value_len = len;
			trim(&value, &value_len);
			if (fold_header(resp, value, value_len) != 0) {
				return -1;
			}
		} else {
			colon = memchr(s, ':', len);
			if (colon == NULL || colon == s) {
				return -1;
			}
			name = s;
			name_len = (size_t)(colon - s);
			if (is_ows(name[name_len - 1])) {
				return -1; /* RFC 9112 5.1: no whitespace before the colon */
			}
			value = colon + 1;
			value_len = len - name_len - 1;
			trim(&value, &value_len);
			if (add_header(resp, name, name_len, value, value_len) != 0) {
				return -1;
			}
		}
		s += adv;
		n -= adv;
	}
	return 0;
}

/* Offset just past the blank line ending a head in buf[0..n), scanning from *scan; 0 if none
 * yet. *scan remembers how far was looked, so a large head is scanned once. */
static size_t find_head_end(const unsigned char *buf, size_t n, size_t *scan)
{
	size_t i = *scan;

	for (; i < n; i++) {
		if (buf[i] != '\n') {
			continue;
		}
		if (i + 1 < n && buf[i + 1] == '\n') {
			return i + 2;
		}
		if (i + 2 < n && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
			return i + 3;
		}
		if (i + 2 >= n) {
			break; /* undecided: look again from this LF when more arrives */
		}
	}
	*scan = i;
	return 0;
}

static bool token_list_has(const char *list, const char *token)
{
	size_t tl = strlen(token);
	const char *s = list;

	while (*s != '\0') {
		const char *e = strchr(s, ',');
		size_t n = e == NULL ? strlen(s) : (size_t)(e - s);
		const unsigned char *t = (const unsigned char *)s;

		trim(&t, &n);
		if (n == tl && strncasecmp((const char *)t, token, tl) == 0) {
			return true;
		}
		if (e == NULL) {
			break;
		}
		s = e + 1;
	}
	return false;
}

/* The last transfer-coding named in any Transfer-Encoding field is chunked. */
static bool te_is_chunked(const struct httpc_response *resp, bool *has_te)
{
	const char *last = NULL;
	size_t last_len = 0;

	*has_te = false;
	for (size_t i = 0; i < resp->n_headers; i++) {
		const char *v = resp->headers[i].value;
		const char *comma;

		if (strcasecmp(resp->headers[i].name, "Transfer-Encoding") != 0) {
			continue;
		}
		*has_te = true;
		comma = strrchr(v, ',');
		last = comma == NULL ? v : comma + 1;
		last_len = strlen(last);
	}
	if (last != NULL) {
		const unsigned char *t = (const unsigned char *)last;

		trim(&t, &last_len);
		return last_len == 7 && strncasecmp((const char *)t, "chunked", 7) == 0;
	}
	return false;
}

/* Content-Length: every field and list member must agree. 1 found, 0 none, -1 invalid. */
static int content_length(const struct httpc_response *resp, uint64_t *out)
{
	bool found = false;

	for (size_t i = 0; i < resp->n_headers; i++) {
		const char *s = resp->headers[i].value;

		if (strcasecmp(resp->headers[i].name, "Content-Length") != 0) {
			continue;
		}
		for (;;) {
			uint64_t v = 0;
			bool digits = false;

			while (is_ows((unsigned char)*s)) {
				s++;
			}
			while (*s >= '0' && *s <= '9') {
				if (v > (UINT64_MAX - 9) / 10) {
					return -1;
				}
				v = v * 10 + (uint64_t)(*s - '0');
				digits = true;
				s++;
			}
			while (is_ows((unsigned char)*s)) {
				s++;
			}
			if (!digits || (*s != ',' && *s != '\0')) {
				return -1;
			}
			if (found && v != *out) {
				return -1;
			}
			*out = v;
			found = true;
			if (*s == '\0') {
				break;
			}
			s++;
		}
	}
	return found ? 1 : 0;
}

/* Take up to `want` body bytes: from the reader first, else straight from the socket. */
static int read_body_bytes(int fd, struct reader *r, struct growbuf *body, uint64_t want,
                           int64_t deadline_ms)
{
	while (want > 0) {
		size_t take;

		if (avail(r) > 0) {
			take = avail(r) < want ? avail(r) : (size_t)want;
			if (growbuf_append(body, r->buf + r->start, take) != 0) {
				return -1;
			}
			r->start += take;
			want -= take;
			continue;
		}
		if (r->eof) {
			return -1;
		}
		take = want > (uint64_t)(4 * READ_CHUNK) ? 4 * READ_CHUNK : (size_t)want;
		if (growbuf_reserve(body, take) != 0) {
			return -1;
		}
		ssize_t n = recv_some(fd, body->p + body->len, take, deadline_ms);

		if (n < 0) {
			return -1;
		}
		if (n == 0) {
			r->eof = true;
			return -1;
		}
		body->len += (size_t)n;
		want -= (uint64_t)n;
	}
	return 0;
}

/* Consume one line from the reader into *line (without CRLF); 0 or -1. Pointer valid until the
 * next reader operation. */
static int read_line(int fd, struct reader *r, const unsigned char **line, size_t *len,
                     int64_t deadline_ms)
{
	size_t scanned = 0;

	for (;;) {
		const unsigned char *lf =
		        memchr(r->buf + r->start + scanned, '\n', avail(r) - scanned);

		if (lf != NULL) {
			size_t l = (size_t)(lf - (r->buf + r->start));

			*line = r->buf + r->start;
			*len = (l > 0 && (*line)[l - 1] == '\r') ? l - 1 : l;
			r->start += l + 1;
			return 0;
		}
		scanned = avail(r);
		if (scanned > MAX_LINE_BYTES || reader_fill(fd, r, deadline_ms) <= 0) {
			return -1;
		}
	}
}

static int read_chunked(int fd, struct reader *r, struct growbuf *body, int64_t deadline_ms)
{
	for (;;) {
		const unsigned char *line;
		size_t len;
		uint64_t size = 0;
		size_t i = 0;

		if (read_line(fd, r, &line, &len, deadline_ms) != 0) {
			return -1;
		}
		for (; i < len; i++) {
			unsigned char c = line[i];
			unsigned d;

			if (c >= '0' && c <= '9') {
				d = c - '0';
			} else if (c >= 'a' && c <= 'f') {
				d = c - 'a' + 10;
			} else if (c >= 'A' && c <= 'F') {
				d = c - 'A' + 10;
			} else {
				break;
			}
			if (size >> 58) {
				return -1; /* absurd size: stop before it overflows */
			}
			size = size * 16 + d;
		}
		if (i == 0) {
			return -1;
		}
		while (i < len && is_ows(line[i])) {
			i++;
		}
		if (i < len && line[i] != ';') {
			return -1; /* only chunk extensions may follow the size */
		}
		if (size == 0) {
			break;
		}
		if (read_body_bytes(fd, r, body, size, deadline_ms) != 0) {
			return -1;
		}
		if (read_line(fd, r, &line, &len, deadline_ms) != 0 || len != 0) {
			return -1;
		}
	}
	/* Trailer fields until the blank line; dropped. */
	for (;;) {
		const unsigned char *line;
		size_t len;

		if (read_line(fd, r, &line, &len, deadline_ms) != 0) {
			return -1;
		}
		if (len == 0) {
			return 0;
		}
	}
}

static int read_until_close(int fd, struct reader *r, struct growbuf *body, int64_t deadline_ms)
{
	for (;;) {
		ssize_t n;

		if (avail(r) > 0) {
			if (growbuf_append(body, r->buf + r->start, avail(r)) != 0) {
				return -1;
			}
			r->start = r->end;
		}
		if (r->eof) {
			return 0;
		}
		if (growbuf_reserve(body, 4 * READ_CHUNK) != 0) {
			return -1;
		}
		n = recv_some(fd, body->p + body->len, 4 * READ_CHUNK, deadline_ms);
		if (n < 0) {
			return -1;
		}
		if (n == 0) {
			r->eof = true;
			return 0;
		}
		body->len += (size_t)n;
	}
}

/* Read the next head into resp (skipping 1xx but 101). 0 or -1. */
static int read_head(int fd, struct reader *r, struct httpc_response *resp, int64_t deadline_ms)
{
	for (;;) {
		size_t scan = 0;
		size_t head_len;

		/* Stray CRLFs between messages are tolerated (RFC 9112 2.2). */
		for (;;) {
			while (avail(r) > 0 &&
			       (r->buf[r->start] == '\r' || r->buf[r->start] == '\n')) {
				r->start++;
			}
			if (avail(r) > 0) {
				break;
			}
			if (reader_fill(fd, r, deadline_ms) <= 0) {
				return -1;
			}
		}
		for (;;) {
			head_len = find_head_end(r->buf + r->start, avail(r), &scan);
			if (head_len > 0) {
				break;
			}
			if (avail(r) > MAX_HEAD_BYTES || reader_fill(fd, r, deadline_ms) <= 0) {
				return -1;
			}
		}
		if (parse_head(resp, r->buf + r->start, head_len) != 0) {
			return -1;
		}
		r->start += head_len;
		if (resp->status >= 100 && resp->status < 200 && resp->status != 101) {
			httpc_response_free(resp);
			continue;
		}
		return 0;
	}
}

static bool wants_close(const struct httpc_response *resp)
{
	for (size_t i = 0; i < resp->n_headers; i++) {
		if (strcasecmp(resp->headers[i].name, "Connection") != 0) {
			continue;
		}
		if (token_list_has(resp->headers[i].value, "close")) {
			return true;
		}
		if (resp->minor_version == 0 &&
		    token_list_has(resp->headers[i].value, "keep-alive")) {
			return false;
		}
	}
	return resp->minor_version == 0;
}

/* Is the peer's EOF already waiting (without blocking)? Data found is kept in the reader. */
static bool eof_pending(int fd, struct reader *r)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	if (r->eof) {
		return true;
	}
	if (avail(r) > 0 || poll(&pfd, 1, 0) <= 0) {
		return false;
	}
	reader_fill(fd, r, harness_now_ms());
	return r->eof;
}

static int read_response(int fd, struct reader *r, struct httpc_response *resp, bool head_request,
                         int64_t deadline_ms, struct growbuf *body)
{
	uint64_t cl = 0;
	bool has_te;
	int has_cl;

	if (read_head(fd, r, resp, deadline_ms) != 0) {
		return -1;
	}
	if (head_request || resp->status < 200 || resp->status == 204 || resp->status == 304) {
		return 0;
	}
	if (te_is_chunked(resp, &has_te)) {
		resp->chunked = true;
		return read_chunked(fd, r, body, deadline_ms);
	}
	if (has_te) {
		return read_until_close(fd, r, body, deadline_ms);
	}
	has_cl = content_length(resp, &cl);
	if (has_cl < 0) {
		return -1;
	}
	if (has_cl > 0) {
		/* Start near the announced size, but let a lying length grow geometrically. */
		if (growbuf_reserve(body, cl < (1u << 20) ? (size_t)cl : (1u << 20)) != 0) {
			return -1;
		}
		return read_body_bytes(fd, r, body, cl, deadline_ms);
	}
	return read_until_close(fd, r, body, deadline_ms);
}

/*
 * One transcript record: a marker line naming the peer, the status, the lengths and whether
 * the read completed, then the head as received (re-serialised) and the first bytes of the body.
 * The scan reads records by these lengths, so a body may hold anything.
 */
static void transcript_response(int fd, struct reader *r, const struct httpc_response *resp,
                                const unsigned char *body, size_t body_len, bool complete)
{
	struct growbuf head = { 0 };
	struct growbuf rec = { 0 };
	size_t stored = body_len < TRANSCRIPT_BODY_MAX ? body_len : TRANSCRIPT_BODY_MAX;
	const char *reason = resp->reason ? resp->reason : "";
	char line[256];
	int n;

	if (harness_transcript_dir() == NULL) {
		return;
	}
	if (r->peer[0] == '\0') {
		peer_name(fd, r->peer, sizeof(r->peer));
	}
	if (resp->status != 0) {
		/* Status and minor version are numbers, so the line fits. */
		n = snprintf(line, sizeof(line), "HTTP/1.%d %03d ", resp->minor_version,
		             resp->status);
		if (n < 0 || growbuf_append(&head, line, (size_t)n) != 0 ||
		    growbuf_append(&head, reason, strlen(reason)) != 0 ||
		    growbuf_append(&head, "\r\n", 2) != 0) {
			goto out;
		}
		for (size_t i = 0; i < resp->n_headers; i++) {
			const struct httpc_header *h = &resp->headers[i];

			if (growbuf_append(&head, h->name, strlen(h->name)) != 0 ||
			    growbuf_append(&head, ": ", 2) != 0 ||
			    growbuf_append(&head, h->value, strlen(h->value)) != 0 ||
			    growbuf_append(&head, "\r\n", 2) != 0) {
				goto out;
			}
		}
		if (growbuf_append(&head, "\r\n", 2) != 0) {
			goto out;
		}
	}
	/* r->peer is at most 127 bytes: the marker fits. */
	n = snprintf(line, sizeof(line),
	             "\n=== response peer=%s status=%d complete=%d head=%zu body=%zu stored=%zu\n",
	             r->peer[0] ? r->peer : "unknown", resp->status, complete ? 1 : 0, head.len,
	             body_len, stored);
	if (n < 0 || (size_t)n >= sizeof(line) || growbuf_append(&rec, line, (size_t)n) != 0 ||
	    (head.len > 0 && growbuf_append(&rec, head.p, head.len) != 0) ||
	    (stored > 0 && growbuf_append(&rec, body, stored) != 0)) {
		goto out;
	}
	harness_transcript_append(harness_is_upstream_addr(r->peer) ? "upstream-http" : "http",
	                          rec.p, rec.len);
out:
	free(head.p);
	free(rec.p);
}

int httpc_read_response(int fd, struct httpc_response *resp, bool head_request, int timeout_ms)
{
	struct reader *r = reader_get(fd);
	struct growbuf body = { 0 };
	int rc;

	if (resp == NULL) {
		return -1;
	}
	memset(resp, 0, sizeof(*resp));
	if (r == NULL) {
		return -1;
	}
	rc = read_response(fd, r, resp, head_request, harness_now_ms() + timeout_ms, &body);
	if (rc != 0) {
		int status = resp->status;
		int minor = resp->minor_version;

		transcript_response(fd, r, resp, body.p, body.len, false);
		httpc_response_free(resp);
		resp->status = status;
		resp->minor_version = minor;
		resp->body_len = body.len;
		resp->closed = r->eof;
		free(body.p);
		return -1;
	}
	if (body.p == NULL && growbuf_reserve(&body, 0) != 0) {
		httpc_response_free(resp);
		return -1;
	}
	body.p[body.len] = '\0';
	resp->body = body.p;
	resp->body_len = body.len;
	resp->closed = r->eof || wants_close(resp) || eof_pending(fd, r);
	transcript_response(fd, r, resp, resp->body, resp->body_len, true);
	return 0;
}

void httpc_response_free(struct httpc_response *resp)
{
	if (resp == NULL) {
		return;
	}
	for (size_t i = 0; i < resp->n_headers; i++) {
		free(resp->headers[i].name);
		free(resp->headers[i].value);
	}
	free(resp->headers);
	free(resp->reason);
	free(resp->body);
	memset(resp, 0, sizeof(*resp));
}

const char *httpc_header(const struct httpc_response *resp, const char *name)
{
	if (resp == NULL || name == NULL) {
		return NULL;
	}
	for (size_t i = 0; i < resp->n_headers; i++) {
		if (strcasecmp(resp->headers[i].name, name) == 0) {
			return resp->headers[i].value;
		}
	}
	return NULL;
}

size_t httpc_header_count(const struct httpc_response *resp, const char *name)
{
	size_t n = 0;

	if (resp == NULL || name == NULL) {
		return 0;
	}
	for (size_t i = 0; i < resp->n_headers; i++) {
		if (strcasecmp(resp->headers[i].name, name) == 0) {
			n++;
		}
	}
	return n;
}

void httpc_close(int fd)
{
	if (fd < 0) {
		return;
	}
	reader_drop(fd);
	close(fd);
}

/* Does the header block contain a field `name` (at a line start, case-insensitive)? */
static bool headers_have(const char *headers, const char *name)
{
	size_t n = strlen(name);
	const char *s = headers;

	while (s != NULL && *s != '\0') {
		if (strncasecmp(s, name, n) == 0 && s[n] == ':') {
			return true;
		}
		s = strchr(s, '\n');
		if (s != NULL) {
			s++;
		}
	}
	return false;
}

int httpc_request(const char *addr, const char *method, const char *target, const char *headers,
                  const void *body, size_t body_len, struct httpc_response *resp, int timeout_ms)
{
	const char *h = headers == NULL ? "" : headers;
	bool wants_length = body != NULL || strcmp(method, "POST") == 0 ||
	                    strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
	struct growbuf req = { 0 };
	char line[512];
	int64_t deadline = harness_now_ms() + timeout_ms;
	int64_t left;
	int fd;
	int rc = -1;

	if (resp != NULL) {
		memset(resp, 0, sizeof(*resp));
	}
	if (addr == NULL || method == NULL || target == NULL || resp == NULL) {
		return -1;
	}
	if (growbuf_append(&req, method, strlen(method)) != 0 ||
	    growbuf_append(&req, " ", 1) != 0 ||
	    growbuf_append(&req, target, strlen(target)) != 0 ||
	    growbuf_append(&req, " HTTP/1.1\r\n", 11) != 0) {
		goto out;
	}
	if (!headers_have(h, "Host")) {
		snprintf(line, sizeof(line), "Host: %s\r\n",
		         strncmp(addr, "unix:", 5) == 0 ? "localhost" : addr);
		if (growbuf_append(&req, line, strlen(line)) != 0) {
			goto out;
		}
	}
	if (wants_length && !headers_have(h, "Content-Length") &&
	    !headers_have(h, "Transfer-Encoding")) {
		snprintf(line, sizeof(line), "Content-Length: %zu\r\n",
		         body == NULL ? 0 : body_len);
		if (growbuf_append(&req, line, strlen(line)) != 0) {
			goto out;
		}
	}
	if (growbuf_append(&req, h, strlen(h)) != 0 || growbuf_append(&req, "\r\n", 2) != 0) {
		goto out;
	}
	fd = httpc_connect(addr);
	if (fd < 0) {
		goto out;
	}
	if (send_until(fd, req.p, req.len, deadline) == 0 &&
	    (body == NULL || body_len == 0 || send_until(fd, body, body_len, deadline) == 0)) {
		left = deadline - harness_now_ms();
		rc = httpc_read_response(fd, resp, strcmp(method, "HEAD") == 0,
		                         left > 0 ? (int)left : 0);
	}
	httpc_close(fd);
out:
	free(req.p);
	return rc;
}

bool httpc_wait_closed(int fd, int timeout_ms)
{
	struct reader *r = reader_get(fd);
	int64_t deadline = harness_now_ms() + timeout_ms;

	if (r == NULL) {
		return false;
	}
	for (;;) {
		int f;

		r->start = r->end = 0; /* discard whatever came */
		if (r->eof) {
			return true;
		}
		f = reader_fill(fd, r, deadline);
		if (f == 0) {
			return true;
		}
		if (f < 0) {
			return false;
		}
	}
}
