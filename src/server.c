/*
 * server.c: listeners, the evhttp server, the framing guard on every connection, and the
 * per-connection timers and hang-up watch. See server.h for the flow.
 *
 * Ownership: a struct server_conn is created with the connection's bufferevents (evhttp's bevcb)
 * and freed with them (the filter's free_context), whoever tears the connection down: evhttp
 * after a reply with "Connection: close", an I/O error or our EOF trigger, or server_conn_drop().
 */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "config.h"
#include "http_guard.h"
#include "log.h"
#include "util.h"

#define NONCE_HEX 32

struct server_conn {
	TAILQ_ENTRY(server_conn) link;
	struct server *srv;
	struct bufferevent *sock;        /* the socket; owned by filter */
	struct bufferevent *filter;      /* what evhttp reads and writes; owned by evhttp */
	struct evhttp_connection *evcon; /* known from the first request on */
	struct http_guard guard;
	struct event *timer;     /* header / body / idle timeout, or the refusal kick */
	struct event *closed_ev; /* EV_CLOSED watch while a request waits */
	struct event *flush_ev;  /* writes evhttp's output; see "Output" below */
	struct event *write_ev;  /* the socket is writable again, or the write timed out */
	struct event *fail_ev;   /* tells evhttp of a write error, from the loop */
	bool write_failed;
	void (*gone_cb)(void *arg);
	void *gone_arg;
	int guard_status; /* synthetic request pending: its status */
	const char *guard_reason;
	bool guard_dead;
	bool refuse; /* over max_connections: answer 503 and close */
	bool counted;
	int fd;              /* -1 until known (evhttp sets it after creating the bufferevents) */
	uint32_t n_passed;   /* messages handed to evhttp */
	uint32_t n_answered; /* requests answered */
	int64_t msg_start_ms;
	int64_t last_byte_ms;
	char peer[64];
};

struct listener {
	struct evhttp_bound_socket *bound;
	char *unix_path; /* to unlink on shutdown */
};

struct server {
	struct event_base *base;
	struct evhttp *http;
	char name[16];
	struct server_limits lim;
	server_request_cb cb;
	void *cb_arg;
	struct listener *listeners;
	size_t n_listeners;
	char *addresses;
	char nonce_path[NONCE_HEX + 3]; /* "/<nonce>/" */
	TAILQ_HEAD(, server_conn) conns;
	uint32_t n_conns;
	struct server_conn **by_fd; /* connection of each socket fd, for evhttp's requests */
	size_t by_fd_cap;
	bool accepting;
};

static const struct {
	int status;
	const char *reason;
} reasons[] = {
	{ 100, "Continue" },
	{ 400, "Bad Request" },
	{ 401, "Unauthorized" },
	{ 403, "Forbidden" },
	{ 404, "Not Found" },
	{ 405, "Method Not Allowed" },
	{ 408, "Request Timeout" },
	{ 413, "Content Too Large" },
	{ 414, "URI Too Long" },
	{ 417, "Expectation Failed" },
	{ 429, "Too Many Requests" },
	{ 431, "Request Header Fields Too Large" },
	{ 500, "Internal Server Error" },
	{ 501, "Not Implemented" },
	{ 502, "Bad Gateway" },
	{ 503, "Service Unavailable" },
	{ 504, "Gateway Timeout" },
	{ 505, "HTTP Version Not Supported" },
};

const char *server_reason(int status)
{
	for (size_t i = 0; i < ARRAY_SIZE(reasons); i++)
		if (reasons[i].status == status)
			return reasons[i].reason;
	return "Error";
}

void server_limits_from_config(struct server_limits *lim, const struct config *cfg)
{
	lim->max_body = cfg->server.max_body;
	lim->max_header_size = cfg->server.max_header_size;
	lim->max_request_line = cfg->server.max_request_line;
	lim->max_headers = cfg->server.max_headers;
	lim->header_timeout_ms = cfg->server.header_timeout_ms;
	lim->body_timeout_ms = cfg->server.body_timeout_ms;
	lim->idle_timeout_ms = cfg->server.idle_timeout_ms;
	lim->max_connections = cfg->server.max_connections;
}

/* ---- JSON errors ---- */

static void json_escape_into(struct evbuffer *b, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(b, "\\%c", ch);
		else if (ch < 0x20 || ch == 0x7f)
			evbuffer_add_printf(b, "\\u%04x", ch);
		else
			evbuffer_add(b, s, 1);
	}
}

void server_send_error(struct evhttp_request *req, int status, const char *message, bool close)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();

	if (!body) {
		evhttp_send_reply(req, status, server_reason(status), NULL);
		return;
	}
	evbuffer_add_printf(body, "{\"statusCode\":%d,\"message\":\"", status);
	json_escape_into(body, message);
	evbuffer_add_printf(body, "\",\"error\":\"%s\"}", server_reason(status));
	evhttp_remove_header(out, "Content-Type");
	evhttp_add_header(out, "Content-Type", "application/json");
	/* A request refused as malformed ends its connection, whoever refused it: the client's
	 * idea of the connection's state is not to be trusted after it (RFC 9112 9.6 allows). */
	if (status == 400)
		close = true;
	if (close) {
		evhttp_remove_header(out, "Connection");
		evhttp_add_header(out, "Connection", "close");
	}
	evhttp_send_reply(req, status, server_reason(status), body);
	evbuffer_free(body);
}

static void conn_gone(struct server_conn *c);
static void on_writable(evutil_socket_t fd, short what, void *arg);

/* ---- connection lookup by fd ---- */

/* evhttp hands us requests, not connections: find ours through the socket's fd. evhttp sets the
 * fd after our bevcb returns, so it is registered when the connection first shows activity. */
static void conn_register_fd(struct server_conn *c)
{
	struct server *srv = c->srv;
	evutil_socket_t fd;

	if (c->fd >= 0)
		return;
	fd = bufferevent_getfd(c->sock);
	if (fd < 0)
		return;
	if ((size_t)fd >= srv->by_fd_cap) {
		size_t cap = srv->by_fd_cap ? srv->by_fd_cap : 256;
		while (cap <= (size_t)fd)
			cap *= 2;
		struct server_conn **n = realloc(srv->by_fd, cap * sizeof(*n));
		if (!n)
			return;
		memset(n + srv->by_fd_cap, 0, (cap - srv->by_fd_cap) * sizeof(*n));
		srv->by_fd = n;
		srv->by_fd_cap = cap;
	}
	srv->by_fd[fd] = c;
	c->fd = fd;
	/* Replies go out in few writes; never let Nagle hold the last one for a delayed ACK. */
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails harmlessly on unix */
	c->write_ev = event_new(srv->base, fd, EV_WRITE, on_writable, c);
}

static struct server_conn *conn_by_bev(struct server *srv, struct bufferevent *bev)
{
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;

	if (fd < 0 || (size_t)fd >= srv->by_fd_cap)
		return NULL;
	struct server_conn *c = srv->by_fd[fd];
	return c && c->filter == bev ? c : NULL;
}

/* ---- per-connection timers ---- */

static int64_t conn_deadline_ms(const struct server_conn *c)
{
	const struct server_limits *lim = &c->srv->lim;

	if (c->guard_dead || c->n_passed > c->n_answered)
		return -1; /* answering, or an error is on its way: no read timeout */
	if (c->guard.in_body)
		return c->last_byte_ms + lim->body_timeout_ms;
	if (c->guard.in_message)
		return c->msg_start_ms + lim->header_timeout_ms;
	/* A connection that never sent a byte is a client still to send its first header
	 * block: it gets header_timeout from the accept, not the longer keep-alive idle_timeout,
	 * so silent connections cannot hold slots for a minute each. */
	if (c->n_passed == 0)
		return c->last_byte_ms + lim->header_timeout_ms;
	return c->last_byte_ms + lim->idle_timeout_ms;
}

static void conn_arm_timer(struct server_conn *c)
{
	int64_t deadline = conn_deadline_ms(c);
	struct timeval tv;

	if (deadline < 0) {
		event_del(c->timer);
		return;
	}
	int64_t in_ms = deadline - util_now_ms();
	if (in_ms < 0)
		in_ms = 0;
	tv.tv_sec = in_ms / 1000;
	tv.tv_usec = (in_ms % 1000) * 1000;
	event_add(c->timer, &tv);
}

/* Hand evhttp one synthetic request that makes the server answer `status` and close. */
static void conn_inject(struct server_conn *c, struct evbuffer *dst, int status, const char *reason)
{
	c->guard_status = status;
	c->guard_reason = reason;
	c->guard_dead = true;
	c->n_passed++;
	evbuffer_add_printf(dst,
	                    "GET %sguard HTTP/1.1\r\nHost: ghlproxy\r\nConnection: close\r\n\r\n",
	                    c->srv->nonce_path);
	event_del(c->timer);
}

/* Close an idle connection without an answer (a 408 on a connection the client has not used
 * yet would be read as the answer to the request it may be about to send); evhttp frees it on
 * this EOF. */
static void conn_close_idle(struct server_conn *c)
{
	c->guard_dead = true;
	bufferevent_trigger_event(c->filter, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
}

/* Inject from outside the filter (timers): evhttp must then be told there is input. */
static void conn_inject_now(struct server_conn *c, int status, const char *reason)
{
	conn_inject(c, bufferevent_get_input(c->filter), status, reason);
	bufferevent_trigger(c->filter, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
	struct server_conn *c = arg;

	conn_register_fd(c);
	if (c->refuse) {
		if (!c->guard_dead)
			conn_inject_now(c, 503, "too many connections");
		return;
	}
	int64_t deadline = conn_deadline_ms(c);
	if (deadline < 0)
		return;
	if (util_now_ms() < deadline) {
		conn_arm_timer(c);
		return;
	}
	if (c->guard.in_body) {
		conn_inject_now(c, 408, "request body timeout");
	} else if (c->guard.in_message) {
		conn_inject_now(c, 408, "request header timeout");
	} else {
		/* Idle keep-alive connection, or one that never sent a byte. */
		conn_close_idle(c);
	}
}

/* ---- the guard as a bufferevent filter ---- */

/*
 * Output. evhttp writes replies into the filter bufferevent and takes "the filter's buffer is
 * empty" to mean "written": after a reply with Connection: close it then shuts the socket down
 * and closes it. libevent's own filter would only move the bytes into the socket
 * bufferevent's buffer, to be lost at that close. So the output side of our filter writes
 * straight to the socket (evbuffer_write), keeps what the kernel did not take, and waits for
 * the socket to become writable again; the filter's buffer empties only once the kernel holds
 * every byte. A client that takes nothing for server.idle_timeout is dropped.
 *
 * libevent 2.1's filter also moves output only while its EV_WRITE is on, and turning EV_WRITE on
 * later does not move what is queued; evhttp queues a reply's head first and then turns writing
 * on. So whenever evhttp adds output, a flush runs from the loop right after, and only that flush
 * writes. Writing at once, from inside the add (the filter's "normal" mode, while EV_WRITE is on,
 * as it stays during a streamed reply), would empty the buffer and call evhttp's "written"
 * before evhttp has said what to do then: evhttp_send_reply_end adds the last chunk and only
 * then asks to be told when it is written; told already, it would wait forever, and the
 * connection with it.
 */
static void conn_write_failed(struct server_conn *c)
{
	if (c->write_failed)
		return;
	c->write_failed = true;
	evbuffer_drain(bufferevent_get_output(c->filter),
	               evbuffer_get_length(bufferevent_get_output(c->filter)));
	if (c->write_ev)
		event_del(c->write_ev);
	/* Not from inside evhttp's own write: it would free the connection under itself. */
	event_active(c->fail_ev, EV_TIMEOUT, 0);
}

static void on_fail(evutil_socket_t fd, short what, void *arg)
{
	struct server_conn *c = arg;

	bufferevent_trigger_event(c->filter, BEV_EVENT_ERROR | BEV_EVENT_WRITING, 0);
}

static enum bufferevent_filter_result guard_out(struct evbuffer *src, struct evbuffer *dst,
                                                ev_ssize_t dst_limit,
                                                enum bufferevent_flush_mode mode, void *ctx)
{
	struct server_conn *c = ctx;
	size_t before = evbuffer_get_length(src);

	conn_register_fd(c);
	if (c->write_failed || c->fd < 0 || !c->write_ev) {
		evbuffer_drain(src, before);
		return BEV_NEED_MORE;
	}
	if (mode == BEV_NORMAL)
		return BEV_NEED_MORE; /* written by the flush that on_out_added schedules (see
		                         above) */
	while (evbuffer_get_length(src) > 0) {
		int n = evbuffer_write(src, c->fd);
		if (n > 0)
			continue;
		if (n < 0 && (errno == EINTR))
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			conn_write_failed(c);
			return BEV_NEED_MORE;
		}
		break; /* the kernel's buffer is full */
	}
	if (evbuffer_get_length(src) > 0) {
		struct timeval tv = { .tv_sec = c->srv->lim.idle_timeout_ms / 1000,
			              .tv_usec = (c->srv->lim.idle_timeout_ms % 1000) * 1000 };
		event_add(c->write_ev, &tv);
	} else if (c->write_ev) {
		event_del(c->write_ev);
	}
	return evbuffer_get_length(src) < before ? BEV_OK : BEV_NEED_MORE;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct server_conn *c = arg;

	bufferevent_flush(c->filter, EV_WRITE, BEV_FLUSH);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
	struct server_conn *c = arg;

	if (what & EV_TIMEOUT) {
		log_fields(LOG_INFO, "client too slow to read: dropped",
		           (struct log_field[]){ LOG_STR("peer", c->peer) }, 1);
		conn_write_failed(c);
		return;
	}
	bufferevent_flush(c->filter, EV_WRITE, BEV_FLUSH);
}

static void on_out_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct server_conn *c = arg;

	if (info->n_added && !(c->write_ev && event_pending(c->write_ev, EV_WRITE, NULL)))
		event_active(c->flush_ev, EV_TIMEOUT, 0);
}

static enum bufferevent_filter_result guard_filter(struct evbuffer *src, struct evbuffer *dst,
                                                   ev_ssize_t dst_limit,
                                                   enum bufferevent_flush_mode mode, void *ctx)
{
	struct server_conn *c = ctx;
	bool produced = false;
	int64_t now = util_now_ms();

	conn_register_fd(c);
	if (c->guard_dead) {
		evbuffer_drain(src, evbuffer_get_length(src));
		return BEV_NEED_MORE;
	}
	if (c->refuse) {
		/* Over max_connections and the client spoke before the refusal timer ran: what it
		 * sent is never parsed, let alone forwarded. */
		evbuffer_drain(src, evbuffer_get_length(src));
		conn_inject(c, dst, 503, "too many connections");
		return BEV_OK;
	}
	if (evbuffer_get_length(src) > 0)
		c->last_byte_ms = now;
	for (;;) {
		bool was_in_message = c->guard.in_message;
		enum http_guard_event ev = http_guard_feed(&c->guard, src);

		if (!was_in_message && (c->guard.in_message || ev == GUARD_MESSAGE))
			c->msg_start_ms = now;
		if (ev == GUARD_MESSAGE) {
			evbuffer_add_buffer(dst, c->guard.out);
			c->n_passed++;
			produced = true;
			continue;
		}
		if (ev == GUARD_CONTINUE) {
			/* Only when nothing of ours is on its way to the client. */
			if (c->n_passed == c->n_answered)
				bufferevent_write(c->sock, "HTTP/1.1 100 Continue\r\n\r\n", 25);
			continue;
		}
		if (ev == GUARD_ERROR) {
			evbuffer_drain(src, evbuffer_get_length(src));
			conn_inject(c, dst, c->guard.status, c->guard.reason);
			return BEV_OK;
		}
		break; /* GUARD_MORE */
	}
	conn_arm_timer(c);
	return produced ? BEV_OK : BEV_NEED_MORE;
}

static void conn_free_ctx(void *ctx)
{
	struct server_conn *c = ctx;
	struct server *srv = c->srv;

	conn_gone(c);
	if (c->closed_ev)
		event_free(c->closed_ev);
	if (c->timer)
		event_free(c->timer);
	if (c->flush_ev)
		event_free(c->flush_ev);
	if (c->write_ev)
		event_free(c->write_ev);
	if (c->fail_ev)
		event_free(c->fail_ev);
	http_guard_deinit(&c->guard);
	if (c->counted) {
		TAILQ_REMOVE(&srv->conns, c, link);
		srv->n_conns--;
	}
	if (srv && c->fd >= 0 && (size_t)c->fd < srv->by_fd_cap && srv->by_fd[c->fd] == c)
		srv->by_fd[c->fd] = NULL;
	free(c);
}

static struct bufferevent *on_new_bev(struct event_base *base, void *arg)
{
	struct server *srv = arg;
	struct server_conn *c = calloc(1, sizeof(*c));
	struct http_guard_limits gl;

	if (!c)
		return NULL;
	c->srv = srv;
	c->fd = -1;
	gl.max_request_line = srv->lim.max_request_line;
	gl.max_header_bytes = srv->lim.max_header_size;
	gl.max_headers = srv->lim.max_headers;
	gl.max_body = srv->lim.max_body;
	if (http_guard_init(&c->guard, &gl) < 0)
		goto fail;
	c->timer = evtimer_new(base, on_conn_timer, c);
	c->flush_ev = event_new(base, -1, 0, on_flush, c);
	c->fail_ev = event_new(base, -1, 0, on_fail, c);
	c->sock = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!c->timer || !c->flush_ev || !c->fail_ev || !c->sock)
		goto fail;
	c->filter = bufferevent_filter_new(c->sock, guard_filter, guard_out, BEV_OPT_CLOSE_ON_FREE,
	                                   conn_free_ctx, c);
	if (!c->filter)
		goto fail;
	evbuffer_add_cb(bufferevent_get_output(c->filter), on_out_added, c);
	/* Keep replies in the filter's buffer until the socket takes them, so evhttp's "written"
	 * callback means written and a slow reader pushes back (server_conn_output_pending). */
	bufferevent_setwatermark(c->sock, EV_WRITE, 0, 64 * 1024);
	struct timeval wtv = { .tv_sec = srv->lim.idle_timeout_ms / 1000,
		               .tv_usec = (srv->lim.idle_timeout_ms % 1000) * 1000 };
	bufferevent_set_timeouts(c->sock, NULL, &wtv);
	c->last_byte_ms = util_now_ms();
	c->counted = true;
	TAILQ_INSERT_TAIL(&srv->conns, c, link);
	srv->n_conns++;
	if (srv->n_conns > srv->lim.max_connections) {
		/* Refuse cleanly: once evhttp has set the connection up, answer 503 and close. */
		c->refuse = true;
		struct timeval zero = { 0, 0 };
		event_add(c->timer, &zero);
	} else {
		conn_arm_timer(c);
	}
	return c->filter;
fail:
	if (c->sock)
		bufferevent_free(c->sock);
	if (c->timer)
		event_free(c->timer);
	if (c->flush_ev)
		event_free(c->flush_ev);
	if (c->fail_ev)
		event_free(c->fail_ev);
	http_guard_deinit(&c->guard);
	free(c);
	return NULL;
}

/* ---- requests ---- */

static void on_request_complete(struct evhttp_request *req, void *arg)
{
	struct server_conn *c = arg;

	c->n_answered++;
	c->last_byte_ms = util_now_ms();
	conn_arm_timer(c);
}

static void on_evcon_close(struct evhttp_connection *evcon, void *arg)
{
	struct server_conn *c = arg;

	conn_gone(c);
	if (c->closed_ev)
		event_del(c->closed_ev);
	event_del(c->timer);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct server *srv = arg;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct server_conn *c =
	        conn_by_bev(srv, evcon ? evhttp_connection_get_bufferevent(evcon) : NULL);

	if (!c) {
		server_send_error(req, 500, "connection state lost", true);
		return;
	}
	if (!c->evcon) {
		c->evcon = evcon;
		evhttp_connection_set_closecb(evcon, on_evcon_close, c);
		const char *host = NULL;
		ev_uint16_t port = 0;
		evhttp_connection_get_peer(evcon, (char **)&host, &port);
		util_strlcpy(c->peer, host && *host ? host : "unix", sizeof(c->peer));
	}
	evhttp_request_set_on_complete_cb(req, on_request_complete, c);
	event_del(c->timer);

	const char *uri = evhttp_request_get_uri(req);
	if (c->guard_dead && c->guard_status && uri &&
	    strncmp(uri, srv->nonce_path, strlen(srv->nonce_path)) == 0) {
		log_fields(LOG_INFO, "request refused",
		           (struct log_field[]){ LOG_STR("peer", c->peer),
		                                 LOG_NUM("status", c->guard_status),
		                                 LOG_STR("reason", c->guard_reason) },
		           3);
		if (c->refuse)
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
			                  "1");
		server_send_error(req, c->guard_status, c->guard_reason, true);
		return;
	}
	srv->cb(c, req, srv->cb_arg);
}

/* ---- public connection API ---- */

const char *server_conn_peer(const struct server_conn *c)
{
	return c->peer;
}

static void conn_gone(struct server_conn *c)
{
	if (c->gone_cb) {
		void (*cb)(void *) = c->gone_cb;
		c->gone_cb = NULL;
		cb(c->gone_arg);
	}
}

static void on_closed_ev(evutil_socket_t fd, short what, void *arg)
{
	conn_gone(arg);
}

void server_conn_attach(struct server_conn *c, void (*gone)(void *arg), void *arg)
{
	c->gone_cb = gone;
	c->gone_arg = arg;
}

void server_conn_detach(struct server_conn *c)
{
	c->gone_cb = NULL;
	c->gone_arg = NULL;
	if (c->closed_ev)
		event_del(c->closed_ev);
}

void server_conn_watch_close(struct server_conn *c, bool on)
{
	evutil_socket_t fd = bufferevent_getfd(c->sock);

	if (!on) {
		if (c->closed_ev)
			event_del(c->closed_ev);
		return;
	}
	if (fd < 0)
		return;
	if (!c->closed_ev)
		c->closed_ev = event_new(c->srv->base, fd, EV_CLOSED, on_closed_ev, c);
	if (c->closed_ev)
		event_add(c->closed_ev, NULL);
}

void server_conn_drop(struct server_conn *c)
{
	c->gone_cb = NULL;
	if (c->evcon)
		evhttp_connection_free(c->evcon); /* frees c through the filter's free_context */
}

size_t server_conn_output_pending(const struct server_conn *c)
{
	return evbuffer_get_length(bufferevent_get_output(c->filter));
}

/* ---- listeners ---- */

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
			return in6->sin6_addr.s6_addr[12] == 127;
		return false;
	}
	return sa->sa_family == AF_UNIX;
}

static void append_address(struct server *srv, const char *addr)
{
	size_t old = srv->addresses ? strlen(srv->addresses) : 0;
	char *n = realloc(srv->addresses, old + strlen(addr) + 2);

	if (!n)
		return;
	if (old)
		n[old++] = ',';
	strcpy(n + old, addr); /* NOLINT(clang-analyzer-security.insecureAPI.strcpy): sized above */
	srv->addresses = n;
}

static int bind_unix(struct server *srv, const char *path, const struct config *cfg, char *err,
                     size_t err_len)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, err_len, "unix:%s: path too long", path);
		return -1;
	}
	/* NOLINTNEXTLINE(clang-analyzer-security.insecureAPI.strcpy): length checked above */
	strcpy(sun.sun_path, path);
	/* A stale socket from a previous run is replaced; anything else is left alone. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, err_len, "unix:%s: exists and is not a socket", path);
			return -1;
		}
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		snprintf(err, err_len, "unix:%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	mode_t mode = cfg ? (mode_t)cfg->server.socket_mode : 0660;
	if (chmod(path, mode) < 0) {
		snprintf(err, err_len, "unix:%s: chmod: %s", path, strerror(errno));
		goto fail;
	}
	if (cfg && (*cfg->server.socket_owner || *cfg->server.socket_group)) {
		uid_t uid = (uid_t)-1;
		gid_t gid = (gid_t)-1;
		if (*cfg->server.socket_owner) {
			struct passwd *pw = getpwnam(cfg->server.socket_owner);
			if (!pw) {
				snprintf(err, err_len, "unix:%s: unknown user %s", path,
				         cfg->server.socket_owner);
				goto fail;
			}
			uid = pw->pw_uid;
		}
		if (*cfg->server.socket_group) {
			struct group *gr = getgrnam(cfg->server.socket_group);
			if (!gr) {
				snprintf(err, err_len, "unix:%s: unknown group %s", path,
				         cfg->server.socket_group);
				goto fail;
			}
			gid = gr->gr_gid;
		}
		if (chown(path, uid, gid) < 0) {
			snprintf(err, err_len, "unix:%s: chown: %s", path, strerror(errno));
			goto fail;
		}
	}
	if (listen(fd, 1024) < 0) {
		snprintf(err, err_len, "unix:%s: listen: %s", path, strerror(errno));
		goto fail;
	}
	struct evhttp_bound_socket *b = evhttp_accept_socket_with_handle(srv->http, fd);
	if (!b) {
		snprintf(err, err_len, "unix:%s: cannot accept", path);
		goto fail;
	}
	struct listener *l = &srv->listeners[srv->n_listeners++];
	l->bound = b;
	l->unix_path = util_xstrdup(path);
	char addr[sizeof(sun.sun_path) + 8];
	snprintf(addr, sizeof(addr), "unix:%s", path);
	append_address(srv, addr);
	return 0;
fail:
	close(fd);
	unlink(path);
	return -1;
}

static int bind_tcp(struct server *srv, const char *item, bool allow_remote, char *err,
                    size_t err_len)
{
	char host[256];
	const char *colon;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (item[0] == '[') {
		const char *end = strchr(item, ']');
		if (!end || end[1] != ':' || (size_t)(end - item - 1) >= sizeof(host)) {
			snprintf(err, err_len, "%s: invalid address", item);
			return -1;
		}
		memcpy(host, item + 1, (size_t)(end - item - 1));
		host[end - item - 1] = '\0';
		colon = end + 1;
	} else {
		colon = strrchr(item, ':');
		if (!colon || (size_t)(colon - item) >= sizeof(host)) {
			snprintf(err, err_len, "%s: invalid address", item);
			return -1;
		}
		memcpy(host, item, (size_t)(colon - item));
		host[colon - item] = '\0';
	}
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535) {
		snprintf(err, err_len, "%s: invalid port", item);
		return -1;
	}
	struct evhttp_bound_socket *b =
	        evhttp_bind_socket_with_handle(srv->http, host, (ev_uint16_t)port);
	if (!b) {
		snprintf(err, err_len, "%s: cannot listen: %s", item, strerror(errno));
		return -1;
	}
	evutil_socket_t fd = evhttp_bound_socket_get_fd(b);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		snprintf(err, err_len, "%s: getsockname: %s", item, strerror(errno));
		evhttp_del_accept_socket(srv->http, b);
		return -1;
	}
	if (!allow_remote && !is_loopback((struct sockaddr *)&ss)) {
		snprintf(err, err_len,
		         "%s is not a loopback address: configure client keys or set "
		         "server.allow_remote = yes",
		         item);
		evhttp_del_accept_socket(srv->http, b);
		return -1;
	}
	struct listener *l = &srv->listeners[srv->n_listeners++];
	l->bound = b;
	char addr[300], ip[INET6_ADDRSTRLEN];
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		snprintf(addr, sizeof(addr), "[%s]:%u", ip, ntohs(in6->sin6_port));
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		snprintf(addr, sizeof(addr), "%s:%u", ip, ntohs(in->sin_port));
	}
	append_address(srv, addr);
	return 0;
}

struct server *server_new(struct event_base *base, const char *name, const char *listen,
                          const struct server_limits *lim, const struct config *cfg,
                          bool allow_remote, server_request_cb cb, void *cb_arg, char *err,
                          size_t err_len)
{
	struct server *srv = calloc(1, sizeof(*srv));
	unsigned char nonce[NONCE_HEX / 2];
	char *list = NULL, *save = NULL, *item;
	size_t n_items = 1;

	if (!srv)
		return NULL;
	srv->base = base;
	util_strlcpy(srv->name, name, sizeof(srv->name));
	srv->lim = *lim;
	srv->cb = cb;
	srv->cb_arg = cb_arg;
	TAILQ_INIT(&srv->conns);
	/* getrandom(2), not RAND_bytes: OpenSSL's generator and its providers would be set up at
	 * start for these 16 bytes, and stay resident (about 0.5 MiB of the idle RSS). */
	if (getrandom(nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce)) {
		snprintf(err, err_len, "no randomness");
		goto fail;
	}
	srv->nonce_path[0] = '/';
	for (size_t i = 0; i < sizeof(nonce); i++)
		snprintf(srv->nonce_path + 1 + 2 * i, 3, "%02x", nonce[i]);
	strcat(srv->nonce_path, "/"); /* NOLINT(clang-analyzer-security.insecureAPI.strcpy): fits */

	srv->http = evhttp_new(base);
	if (!srv->http) {
		snprintf(err, err_len, "cannot create the HTTP server");
		goto fail;
	}
	evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_default_content_type(srv->http, NULL);
	server_set_limits(srv, lim);
	evhttp_set_bevcb(srv->http, on_new_bev, srv);
	evhttp_set_gencb(srv->http, on_request, srv);

	for (const char *p = listen; *p; p++)
		n_items += *p == ',';
	srv->listeners = calloc(n_items, sizeof(*srv->listeners));
	list = strdup(listen);
	if (!srv->listeners || !list)
		goto fail;
	for (item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		while (*item == ' ')
			item++;
		if (!*item)
			continue;
		int rc = util_startswith(item, "unix:")
		                 ? bind_unix(srv, item + 5, cfg, err, err_len)
		                 : bind_tcp(srv, item, allow_remote, err, err_len);
		if (rc < 0)
			goto fail;
	}
	if (srv->n_listeners == 0) {
		snprintf(err, err_len, "no address to listen on");
		goto fail;
	}
	free(list);
	srv->accepting = true;
	return srv;
fail:
	free(list);
	server_free(srv);
	return NULL;
}

void server_set_limits(struct server *srv, const struct server_limits *lim)
{
	struct timeval forever = { .tv_sec = 7 * 24 * 3600 };

	srv->lim = *lim;
	/* evhttp's parser is the second line: the guard enforces the real limits first. */
	evhttp_set_max_headers_size(srv->http, (ev_ssize_t)(lim->max_header_size + 4096));
	evhttp_set_max_body_size(srv->http, (ev_ssize_t)lim->max_body);
	/* Timeouts are the guard's (header, body, idle) and the socket's (write): evhttp's single
	 * inactivity timer would cut slow legitimate uploads that the guard is holding back. */
	evhttp_set_timeout_tv(srv->http, &forever);
}

const char *server_addresses(const struct server *srv)
{
	return srv->addresses ? srv->addresses : "";
}

void server_stop_accepting(struct server *srv)
{
	if (!srv->accepting)
		return;
	srv->accepting = false;
	for (size_t i = 0; i < srv->n_listeners; i++) {
		if (srv->listeners[i].bound) {
			evhttp_del_accept_socket(srv->http, srv->listeners[i].bound);
			srv->listeners[i].bound = NULL;
		}
	}
}

void server_close_idle(struct server *srv)
{
	struct server_conn *c, *next;

	for (c = TAILQ_FIRST(&srv->conns); c; c = next) {
		next = TAILQ_NEXT(c, link); /* closing c frees it, and only it */
		if (c->guard_dead || c->refuse || c->guard.in_message ||
		    c->n_passed > c->n_answered)
			continue;
		conn_register_fd(c);
		conn_close_idle(c);
	}
}

uint32_t server_n_connections(const struct server *srv)
{
	return srv->n_conns;
}

size_t server_output_pending(const struct server *srv)
{
	const struct server_conn *c;
	size_t n = 0;

	TAILQ_FOREACH(c, &srv->conns, link)
	n += server_conn_output_pending(c);
	return n;
}

void server_free(struct server *srv)
{
	if (!srv)
		return;
	if (srv->http)
		evhttp_free(srv->http); /* closes listeners and frees every connection */
	/* libevent may finalize a connection's bufferevents later, from event_base_free: those
	 * still to come must not find the server then. */
	struct server_conn *c;
	while ((c = TAILQ_FIRST(&srv->conns))) {
		TAILQ_REMOVE(&srv->conns, c, link);
		c->counted = false;
		c->srv = NULL;
	}
	for (size_t i = 0; i < srv->n_listeners; i++) {
		if (srv->listeners[i].unix_path) {
			unlink(srv->listeners[i].unix_path);
			free(srv->listeners[i].unix_path);
		}
	}
	free(srv->listeners);
	free(srv->addresses);
	free(srv->by_fd);
	free(srv);
}
