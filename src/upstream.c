/*
 * upstream.c: the connection pool and exchanges of one upstream. See upstream.h.
 *
 * Life of an exchange:
 *   upstream_send ─► pool_get (idle connection, newest first | new connection | wait in FIFO)
 *     ─► dispatch: evhttp_request with our head/body/error callbacks, evhttp_make_request
 *     ─► on_evhttp_head ─► cbs->on_head;  on_evhttp_body ─► cbs->on_body
 *     ─► on_evhttp_done | on_evhttp_error | timer ─► finish ─► cbs->on_done
 *     ─► connection back to the pool (keep-alive, no error) or dropped.
 *
 * Timers are ours: connect (TCP + TLS) until the first request byte leaves for the socket, then
 * the response head. The evhttp connection's own timeout covers silence while the body flows.
 *
 * Frees are deferred to a sweep event, never done inside a libevent or evhttp callback: evhttp
 * touches a connection after calling back into us (evhttp_connection_done, for one).
 */
#include "upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/ssl.h>

#include "log.h"
#include "tls.h"
#include "util.h"

enum x_phase {
	X_QUEUED = 0, /* waiting for a connection */
	X_CONNECTING, /* on a new connection, nothing written yet */
	X_WAIT_HEAD,  /* request (being) written, no response head yet */
	X_BODY,       /* head delivered, body flowing */
	X_FINISHED,   /* on_done called or cancelled; waiting to be swept */
};

struct upstream_conn {
	TAILQ_ENTRY(upstream_conn) link;      /* up->conns */
	TAILQ_ENTRY(upstream_conn) idle_link; /* up->idle, when is_idle */
	TAILQ_ENTRY(upstream_conn) dead_link; /* up->graveyard, when is_dead */
	struct upstream *up;
	struct evhttp_connection *evcon;
	struct bufferevent *bev; /* owned by evcon */
	SSL *ssl;                /* owned by bev; NULL for http:// */
	struct upstream_exchange *x;
	struct event *idle_timer;
	uint64_t n_exchanges;
	bool is_idle;
	bool is_dead;      /* never reused */
	bool in_graveyard; /* out of up->conns, freed at the next sweep */
	bool is_freeing;   /* inside evhttp_connection_free: ignore its close callback */
	bool session_saved;
	bool close_notify; /* the server's TLS close_notify arrived (tls_watch_close_notify) */
};

struct upstream_exchange {
	TAILQ_ENTRY(upstream_exchange) link; /* up->waiters, or up->x_graveyard */
	struct upstream *up;
	struct upstream_conn *conn;
	struct evhttp_request *req; /* evhttp's; NULL once evhttp freed it */
	struct upstream_request rq; /* the caller's pointers, valid until on_done / cancel */
	const struct upstream_cbs *cbs;
	void *arg;
	struct event *timer;
	enum x_phase phase;
	enum upstream_result err; /* set by the error callback, reported by the done callback */
	bool has_err;
	bool started;   /* a request byte reached the socket */
	bool cancelled; /* by the caller: no more callbacks */
	bool aborted;   /* on_head said stop */
	bool paused;
	bool in_send; /* inside upstream_send: evhttp may call back synchronously */
	bool in_cb;   /* inside a head/body callback: evhttp must not be re-entered */
	bool deferred_done;
	bool ends_at_close; /* TLS, and the answer has no length and no chunks: the close ends it */
	char detail[400];
};

TAILQ_HEAD(conn_list, upstream_conn);
TAILQ_HEAD(x_list, upstream_exchange);

struct upstream {
	struct event_base *base;
	struct evdns_base *dns;
	SSL_CTX *tls_ctx;
	struct route_url url;
	struct upstream_settings set;
	struct conn_list conns; /* every live connection */
	struct conn_list idle;  /* idle ones, most recently used first */
	struct conn_list graveyard;
	struct x_list waiters; /* exchanges waiting for a connection, FIFO */
	struct x_list x_graveyard;
	struct event *sweep;
	SSL_SESSION *session; /* for resumption on new connections */
	uint32_t n_conns, n_idle, n_waiting;
	uint64_t n_created, n_reused;
};

static void dispatch(struct upstream_conn *c, struct upstream_exchange *x);
static void conn_kill(struct upstream_conn *c);
static struct upstream_conn *conn_new(struct upstream *up);

static void timeval_ms(struct timeval *tv, uint32_t ms)
{
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
}

/* upstream.timeout for this exchange: the setting, or the caller's shorter one. */
static uint32_t x_timeout_ms(const struct upstream_exchange *x)
{
	uint32_t set = x->up->set.timeout_ms;

	return x->rq.timeout_ms && x->rq.timeout_ms < set ? x->rq.timeout_ms : set;
}

const char *upstream_result_str(enum upstream_result r)
{
	switch (r) {
	case UPSTREAM_OK:
		return "ok";
	case UPSTREAM_ERR_CONNECT:
		return "connect";
	case UPSTREAM_ERR_TLS:
		return "tls";
	case UPSTREAM_ERR_TIMEOUT:
		return "timeout";
	case UPSTREAM_ERR_PROTOCOL:
		return "protocol";
	case UPSTREAM_ERR_CLOSED:
		return "closed";
	case UPSTREAM_ERR_INTERNAL:
		return "internal";
	case UPSTREAM_ERR_ABORTED:
		return "aborted";
	}
	return "unknown";
}

/* ---- deferred frees ---- */

static void schedule_sweep(struct upstream *up)
{
	event_active(up->sweep, EV_TIMEOUT, 0);
}

static void x_free_now(struct upstream_exchange *x)
{
	if (x->timer)
		event_free(x->timer);
	free(x);
}

static void conn_free_now(struct upstream_conn *c)
{
	if (c->idle_timer)
		event_free(c->idle_timer);
	if (c->ssl)
		SSL_set_msg_callback(c->ssl, NULL); /* its argument is c: the SSL may outlive it */
	if (c->evcon) {
		c->is_freeing = true;
		evhttp_connection_free(c->evcon);
	}
	free(c);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct upstream *up = arg;
	struct upstream_conn *c;
	struct upstream_exchange *x;

	while ((x = TAILQ_FIRST(&up->x_graveyard))) {
		TAILQ_REMOVE(&up->x_graveyard, x, link);
		x_free_now(x);
	}
	while ((c = TAILQ_FIRST(&up->graveyard))) {
		TAILQ_REMOVE(&up->graveyard, c, dead_link);
		conn_free_now(c);
	}
}

/* ---- exchanges ---- */

static void x_retire(struct upstream_exchange *x)
{
	x->phase = X_FINISHED;
	if (x->timer)
		event_del(x->timer);
	TAILQ_INSERT_TAIL(&x->up->x_graveyard, x, link);
	schedule_sweep(x->up);
}

/* Detach the exchange from its connection; the connection goes back to the pool if healthy. */
static void x_release_conn(struct upstream_exchange *x, bool healthy)
{
	struct upstream_conn *c = x->conn;
	struct upstream *up = x->up;

	if (!c)
		return;
	x->conn = NULL;
	c->x = NULL;
	if (!healthy || c->is_dead) {
		conn_kill(c);
		return;
	}
	/* Healthy: hand it to the first waiter, else park it (newest first). */
	struct upstream_exchange *next = TAILQ_FIRST(&up->waiters);
	if (next) {
		TAILQ_REMOVE(&up->waiters, next, link);
		up->n_waiting--;
		up->n_reused++;
		dispatch(c, next);
		return;
	}
	struct timeval tv;
	timeval_ms(&tv, up->set.idle_timeout_ms);
	c->is_idle = true;
	TAILQ_INSERT_HEAD(&up->idle, c, idle_link);
	up->n_idle++;
	event_add(c->idle_timer, &tv);
}

static void on_deferred_done(evutil_socket_t fd, short what, void *arg);

/* Report the end of an exchange, exactly once. */
static void finish(struct upstream_exchange *x, enum upstream_result r, const char *detail)
{
	if (x->phase == X_FINISHED)
		return;
	if (x->in_send) {
		/* evhttp called back from inside upstream_send: report from the loop instead. */
		x->err = r;
		x->has_err = true;
		if (detail && detail != x->detail)
			util_strlcpy(x->detail, detail, sizeof(x->detail));
		x->deferred_done = true;
		event_del(x->timer);
		event_assign(x->timer, x->up->base, -1, 0, on_deferred_done, x);
		event_active(x->timer, EV_TIMEOUT, 0);
		return;
	}
	x_release_conn(x, r == UPSTREAM_OK);
	x->req = NULL;
	x_retire(x); /* before on_done: a cancel from inside it is then a no-op */
	if (!x->cancelled)
		x->cbs->on_done(x, r, detail, x->arg);
}

static void on_deferred_done(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_exchange *x = arg;

	x->in_send = false;
	finish(x, x->err, x->detail[0] ? x->detail : NULL);
}

/* Why did a connection fail before any response byte? Ask TLS, then DNS. */
static enum upstream_result diagnose(struct upstream_exchange *x, enum upstream_result fallback)
{
	struct upstream_conn *c = x->conn;
	const struct route_url *u = &x->up->url;
	char why[120];

	if (!c)
		return fallback;
	if (c->ssl && tls_describe_error(c->ssl, c->bev, why, sizeof(why))) {
		snprintf(x->detail, sizeof(x->detail), "%s:%d: %s", u->host, u->port, why);
		return UPSTREAM_ERR_TLS;
	}
	int dns_err = bufferevent_socket_get_dns_error(c->bev);
	if (dns_err) {
		snprintf(x->detail, sizeof(x->detail), "%s: cannot resolve: %s", u->host,
		         evutil_gai_strerror(dns_err));
		return UPSTREAM_ERR_CONNECT;
	}
	if (!x->started && fallback != UPSTREAM_ERR_TIMEOUT) {
		snprintf(x->detail, sizeof(x->detail), "%s:%d: cannot connect", u->host, u->port);
		return UPSTREAM_ERR_CONNECT;
	}
	return fallback;
}

static void on_evhttp_error(enum evhttp_request_error e, void *arg)
{
	struct upstream_exchange *x = arg;
	const struct route_url *u = &x->up->url;

	if (x->conn)
		x->conn->is_dead = true;
	if (e == EVREQ_HTTP_REQUEST_CANCEL || x->has_err)
		return;
	x->has_err = true;
	switch (e) {
	case EVREQ_HTTP_TIMEOUT:
		x->err = UPSTREAM_ERR_TIMEOUT;
		snprintf(x->detail, sizeof(x->detail), "%s:%d: no data for %u ms", u->host, u->port,
		         x->up->set.timeout_ms);
		break;
	case EVREQ_HTTP_EOF:
		if (x->aborted) {
			x->err = UPSTREAM_ERR_ABORTED;
			break;
		}
		x->err = UPSTREAM_ERR_CLOSED;
		snprintf(x->detail, sizeof(x->detail), "%s:%d: connection closed %s", u->host,
		         u->port, x->phase == X_BODY ? "mid-body" : "before the response");
		break;
	case EVREQ_HTTP_INVALID_HEADER:
	case EVREQ_HTTP_DATA_TOO_LONG:
		x->err = UPSTREAM_ERR_PROTOCOL;
		snprintf(x->detail, sizeof(x->detail), "%s:%d: invalid or oversized response %s",
		         u->host, u->port, x->phase == X_BODY ? "body" : "head");
		break;
	default:
		x->err = UPSTREAM_ERR_CLOSED;
		snprintf(x->detail, sizeof(x->detail), "%s:%d: connection failed", u->host,
		         u->port);
	}
	if (x->phase != X_BODY && x->err != UPSTREAM_ERR_ABORTED)
		x->err = diagnose(x, x->err);
}

/* Does only the connection's close end this answer (a body allowed, no length, no chunks)? */
static bool answer_ends_at_close(const struct upstream_exchange *x, struct evhttp_request *req)
{
	int status = evhttp_request_get_response_code(req);
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *te = evhttp_find_header(h, "Transfer-Encoding");

	if (x->rq.method == EVHTTP_REQ_HEAD || status < 200 || status == 204 || status == 304)
		return false;
	if (te && util_strcaseeq(te, "chunked"))
		return false;
	return evhttp_find_header(h, "Content-Length") == NULL;
}

static int on_evhttp_head(struct evhttp_request *req, void *arg)
{
	struct upstream_exchange *x = arg;
	int status = evhttp_request_get_response_code(req);

	if (x->cancelled)
		return -1;
	event_del(x->timer);
	x->phase = X_BODY;
	/* Judged now (on_head may move the framing headers out of evhttp's list), and only where
	 * the close can be told from a cut: on TLS. */
	x->ends_at_close = x->conn && x->conn->ssl && answer_ends_at_close(x, req);
	if (x->conn && x->conn->ssl && !x->conn->session_saved) {
		/* Keep a resumable session so the next new connection skips a full handshake. */
		SSL_SESSION *s = SSL_get1_session(x->conn->ssl);
		x->conn->session_saved = true;
		if (s && SSL_SESSION_is_resumable(s)) {
			if (x->up->session)
				SSL_SESSION_free(x->up->session);
			x->up->session = s;
		} else if (s) {
			SSL_SESSION_free(s);
		}
	}
	x->in_cb = true;
	int rc = x->cbs->on_head(x, status, evhttp_request_get_response_code_line(req),
	                         evhttp_request_get_input_headers(req), x->arg);
	x->in_cb = false;
	if (rc < 0 || x->cancelled) {
		/* evhttp fails the connection on our -1, then calls the error and done callbacks.
		 */
		x->aborted = true;
		if (x->conn)
			x->conn->is_dead = true;
		return -1;
	}
	return 0;
}

static void on_evhttp_body(struct evhttp_request *req, void *arg)
{
	struct upstream_exchange *x = arg;

	if (x->cancelled)
		return;
	x->in_cb = true;
	x->cbs->on_body(x, evhttp_request_get_input_buffer(req), x->arg);
	x->in_cb = false;
	if (x->cancelled) {
		/* Cancelled from inside the callback: evhttp allows a cancel here (it defers the
		 * request's free) and then calls nothing more for it. */
		x->req = NULL;
		evhttp_cancel_request(req);
		finish(x, UPSTREAM_ERR_ABORTED, NULL);
	}
}

static void on_evhttp_done(struct evhttp_request *req, void *arg)
{
	struct upstream_exchange *x = arg;

	if (x->phase == X_FINISHED)
		return;
	if (x->has_err || !req || evhttp_request_get_response_code(req) == 0) {
		if (x->conn)
			x->conn->is_dead = true;
		enum upstream_result r = x->has_err ? x->err : diagnose(x, UPSTREAM_ERR_CLOSED);
		if (!x->has_err && r == UPSTREAM_ERR_CLOSED)
			snprintf(x->detail, sizeof(x->detail), "%s:%d: connection failed",
			         x->up->url.host, x->up->url.port);
		finish(x, r, x->detail[0] ? x->detail : NULL);
		return;
	}
	if (x->ends_at_close && x->conn && !x->conn->close_notify) {
		/* A bare TCP close ended an answer that only the close delimits: the server did not
		 * say it was done (no close_notify), so the body may be cut short, by the server or
		 * by anyone in between. Passed on, it would look whole. */
		x->conn->is_dead = true;
		snprintf(x->detail, sizeof(x->detail),
		         "%s:%d: connection closed without TLS close_notify: an answer with no "
		         "length may be cut short",
		         x->up->url.host, x->up->url.port);
		finish(x, UPSTREAM_ERR_CLOSED, x->detail);
		return;
	}
	if (x->conn && evbuffer_get_length(bufferevent_get_input(x->conn->bev)) > 0) {
		/* Bytes past the end of the response (beyond its Content-Length, after its last
		 * chunk, a body on a HEAD answer): evhttp would read them as the answer to the next
		 * request sent on this connection, handing one client another's answer. The
		 * response itself was complete by its framing; the connection is not reused. */
		log_fields(LOG_WARNING, "upstream sent bytes past the end of a response",
		           (struct log_field[]){
		                   LOG_STR("upstream", x->up->url.host),
		                   LOG_NUM("bytes", (long long)evbuffer_get_length(
		                                            bufferevent_get_input(x->conn->bev))) },
		           2);
		x->conn->is_dead = true;
	}
	finish(x, UPSTREAM_OK, NULL);
}

static void on_x_timer(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_exchange *x = arg;
	const struct route_url *u = &x->up->url;
	struct evhttp_request *req = x->req;

	if (x->phase == X_CONNECTING)
		snprintf(x->detail, sizeof(x->detail), "%s:%d: connect timeout after %u ms",
		         u->host, u->port, x->up->set.connect_timeout_ms);
	else
		snprintf(x->detail, sizeof(x->detail), "%s:%d: no response within %u ms", u->host,
		         u->port, x_timeout_ms(x));
	x->has_err = true;
	x->err = UPSTREAM_ERR_TIMEOUT;
	if (x->conn)
		x->conn->is_dead = true;
	/* evhttp_cancel_request frees the request and resets the connection, without calling the
	 * completion callback: report it ourselves. */
	x->req = NULL;
	bool saved = x->cancelled;
	x->cancelled = true; /* silence the error callback's cancel notice */
	if (req)
		evhttp_cancel_request(req);
	x->cancelled = saved;
	finish(x, UPSTREAM_ERR_TIMEOUT, x->detail);
}

/*
 * Output buffer watcher: the first drained byte means connected (and TLS done). Every later one
 * is a request body still going out: the wait for the answer's head (timeout_ms) starts again,
 * so that it counts from the last byte handed to the kernel, as upstream.timeout says, and a
 * large upload that keeps moving is not cut however long it takes (one that stops is, after
 * timeout_ms).
 */
static void on_output_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct upstream_conn *c = arg;
	struct upstream_exchange *x = c->x;

	if (info->n_deleted == 0 || !x)
		return;
	if (x->started) {
		if (x->phase == X_WAIT_HEAD && !x->cancelled) {
			struct timeval tv;
			timeval_ms(&tv, x_timeout_ms(x));
			event_add(x->timer, &tv);
			/* evhttp's own read timeout (the setting) runs while the request goes out,
			 * with nothing to read yet: it starts again too. */
			timeval_ms(&tv, x->up->set.timeout_ms);
			bufferevent_set_timeouts(c->bev, &tv, &tv);
		}
		return;
	}
	x->started = true;
	if (x->cbs->on_sent && !x->cancelled)
		x->cbs->on_sent(x, x->arg);
	if (c->n_exchanges == 1) {
		/* Connected: TLS records and HTTP pieces go out at once, not behind delayed ACKs.
		 */
		int one = 1;
		evutil_socket_t fd = bufferevent_getfd(c->bev);
		if (fd >= 0)
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (x->phase == X_CONNECTING) {
		struct timeval tv;
		x->phase = X_WAIT_HEAD;
		timeval_ms(&tv, x_timeout_ms(x));
		event_add(x->timer, &tv);
	}
}

/* ---- connections ---- */

static void conn_unlink_idle(struct upstream_conn *c)
{
	if (c->is_idle) {
		TAILQ_REMOVE(&c->up->idle, c, idle_link);
		c->is_idle = false;
		c->up->n_idle--;
		event_del(c->idle_timer);
	}
}

/* Take a connection out of service; it is freed at the next sweep. */
static void conn_kill(struct upstream_conn *c)
{
	struct upstream *up = c->up;

	if (c->in_graveyard)
		return;
	conn_unlink_idle(c);
	c->is_dead = true;
	c->in_graveyard = true;
	TAILQ_REMOVE(&up->conns, c, link);
	up->n_conns--;
	TAILQ_INSERT_TAIL(&up->graveyard, c, dead_link);
	schedule_sweep(up);

	/* A slot is free: start a connection for the first waiter. */
	struct upstream_exchange *next = TAILQ_FIRST(&up->waiters);
	if (next && up->n_conns < up->set.max_connections) {
		struct upstream_conn *nc = conn_new(up);
		if (nc) {
			TAILQ_REMOVE(&up->waiters, next, link);
			up->n_waiting--;
			dispatch(nc, next);
		}
	}
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	struct upstream_conn *c = arg;

	if (c->is_freeing)
		return;
	c->is_dead = true;
	if (!c->x)
		conn_kill(c);
	/* With an exchange in flight, its error or done callback follows and kills it. */
}

static void on_idle_timer(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_conn *c = arg;

	conn_kill(c);
}

static struct upstream_conn *conn_new(struct upstream *up)
{
	struct upstream_conn *c = calloc(1, sizeof(*c));
	struct bufferevent *bev;

	if (!c)
		return NULL;
	c->up = up;
	c->idle_timer = evtimer_new(up->base, on_idle_timer, c);
	if (!c->idle_timer)
		goto fail;
	if (up->url.tls) {
		c->ssl = tls_client_new(up->tls_ctx, up->url.host, up->url.host_is_ip);
		if (!c->ssl)
			goto fail;
		if (up->session)
			SSL_set_session(c->ssl, up->session);
		tls_watch_close_notify(c->ssl, &c->close_notify);
		bev = bufferevent_openssl_socket_new(
		        up->base, -1, c->ssl, BUFFEREVENT_SSL_CONNECTING,
		        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (!bev) {
			SSL_free(c->ssl);
			c->ssl = NULL;
			goto fail;
		}
		/* A peer that closes without close_notify ends the stream; HTTP framing judges. */
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	} else {
		bev = bufferevent_socket_new(up->base, -1,
		                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (!bev)
			goto fail;
	}
	c->bev = bev;
	c->evcon = evhttp_connection_base_bufferevent_new(up->base, up->dns, bev, up->url.host,
	                                                  (uint16_t)up->url.port);
	if (!c->evcon) {
		bufferevent_free(bev);
		goto fail;
	}
	struct timeval tv;
	timeval_ms(&tv, up->set.timeout_ms);
	evhttp_connection_set_timeout_tv(c->evcon, &tv);
	evhttp_connection_set_retries(c->evcon, 0);
	evhttp_connection_set_max_headers_size(c->evcon, (ev_ssize_t)up->set.max_header_size);
	evhttp_connection_set_closecb(c->evcon, on_conn_close, c);
	evbuffer_add_cb(bufferevent_get_output(bev), on_output_drained, c);

	TAILQ_INSERT_TAIL(&up->conns, c, link);
	up->n_conns++;
	up->n_created++;
	return c;
fail:
	if (c->idle_timer)
		event_free(c->idle_timer);
	free(c);
	return NULL;
}

static int build_request(struct upstream_exchange *x, struct evhttp_request *req)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	const struct evkeyval *kv;
	size_t body_len = x->rq.body ? evbuffer_get_length(x->rq.body) : 0;
	char len_buf[24];

	if (x->rq.headers) {
		TAILQ_FOREACH(kv, x->rq.headers, next)
		if (evhttp_add_header(out, kv->key, kv->value) < 0)
			return -ENOMEM;
	}
	if (evhttp_add_header(out, "Host", x->up->url.host_header) < 0)
		return -ENOMEM;
	if (body_len > 0 || x->rq.method == EVHTTP_REQ_POST || x->rq.method == EVHTTP_REQ_PUT ||
	    x->rq.method == EVHTTP_REQ_PATCH) {
		snprintf(len_buf, sizeof(len_buf), "%zu", body_len);
		if (evhttp_add_header(out, "Content-Length", len_buf) < 0)
			return -ENOMEM;
	}
	if (body_len > 0 &&
	    evbuffer_add_buffer_reference(evhttp_request_get_output_buffer(req), x->rq.body) < 0)
		return -ENOMEM;
	return 0;
}

/*
 * A request on a connection already open goes to the kernel now, not on the next loop pass
 * after an EPOLLOUT: that pass costs two epoll_ctl (write interest on, then off) and a wake-up
 * per request (bench/results/perf.txt, case p). Once all of it is written, evhttp is told as its
 * bufferevent would tell it (its write callback), and it turns to reading the answer. What does
 * not fit, or fails, stays in the buffer for the bufferevent to write or report as usual. Plain
 * TCP only: a TLS bufferevent owns its socket's writes.
 */
static void write_at_once(struct upstream_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	evutil_socket_t fd = bufferevent_getfd(c->bev);

	if (c->ssl || fd < 0 || evbuffer_get_length(out) == 0)
		return;
	/* The socket bufferevent keeps its output's front frozen outside its own write callback;
	 * it thaws it the same way to write. */
	evbuffer_unfreeze(out, 1);
	while (evbuffer_get_length(out) > 0 && evbuffer_write(out, fd) > 0)
		;
	evbuffer_freeze(out, 1);
	if (evbuffer_get_length(out) > 0)
		return;
	bufferevent_data_cb written = NULL;
	void *arg = NULL;
	bufferevent_getcb(c->bev, NULL, &written, NULL, &arg);
	if (written)
		written(c->bev, arg);
}

static void dispatch(struct upstream_conn *c, struct upstream_exchange *x)
{
	struct upstream *up = x->up;
	struct evhttp_request *req;
	struct timeval tv;
	char *uri = NULL;
	bool fresh = c->n_exchanges == 0;

	conn_unlink_idle(c);
	c->x = x;
	c->n_exchanges++;
	x->conn = c;
	x->started = false;
	x->phase = fresh ? X_CONNECTING : X_WAIT_HEAD;
	timeval_ms(&tv, fresh ? up->set.connect_timeout_ms : x_timeout_ms(x));
	event_add(x->timer, &tv);

	req = evhttp_request_new(on_evhttp_done, x);
	if (!req)
		goto fail;
	evhttp_request_set_header_cb(req, on_evhttp_head);
	evhttp_request_set_chunked_cb(req, on_evhttp_body);
	evhttp_request_set_error_cb(req, on_evhttp_error);
	if (build_request(x, req) < 0) {
		evhttp_request_free(req);
		goto fail;
	}
	size_t ulen = strlen(up->url.base_path) + strlen(x->rq.target) + 1;
	uri = malloc(ulen);
	if (!uri) {
		evhttp_request_free(req);
		goto fail;
	}
	snprintf(uri, ulen, "%s%s", up->url.base_path, x->rq.target);
	x->req = req;
	/* evhttp may fail the request synchronously (an immediate connect error): finish() defers
	 * the report while in_send is set. */
	bool was_in_send = x->in_send;
	x->in_send = true;
	if (evhttp_make_request(c->evcon, req, x->rq.method, uri) != 0) {
		/* Not queued on the connection: still ours to free. */
		evhttp_request_free(req);
		x->req = NULL;
		free(uri);
		x->in_send = was_in_send;
		c->is_dead = true;
		snprintf(x->detail, sizeof(x->detail), "%s:%d: cannot start a connection",
		         up->url.host, up->url.port);
		finish(x, UPSTREAM_ERR_CONNECT, x->detail);
		return;
	}
	if (!fresh)
		write_at_once(c);
	x->in_send = was_in_send;
	free(uri);
	return;
fail:
	c->is_dead = true;
	finish(x, UPSTREAM_ERR_INTERNAL, "out of memory");
}

struct upstream_exchange *upstream_send(struct upstream *up, const struct upstream_request *rq,
                                        const struct upstream_cbs *cbs, void *arg)
{
	struct upstream_exchange *x = calloc(1, sizeof(*x));
	struct upstream_conn *c;

	if (!x)
		return NULL;
	x->up = up;
	x->rq = *rq;
	x->cbs = cbs;
	x->arg = arg;
	x->timer = evtimer_new(up->base, on_x_timer, x);
	if (!x->timer) {
		free(x);
		return NULL;
	}
	x->in_send = true;
	c = TAILQ_FIRST(&up->idle);
	if (c) {
		up->n_reused++;
		dispatch(c, x);
	} else if (up->n_conns < up->set.max_connections && (c = conn_new(up))) {
		dispatch(c, x);
	} else {
		x->phase = X_QUEUED;
		TAILQ_INSERT_TAIL(&up->waiters, x, link);
		up->n_waiting++;
	}
	if (!x->deferred_done)
		x->in_send = false;
	return x;
}

void upstream_cancel(struct upstream_exchange *x)
{
	if (!x || x->cancelled)
		return;
	x->cancelled = true;
	switch (x->phase) {
	case X_QUEUED:
		TAILQ_REMOVE(&x->up->waiters, x, link);
		x->up->n_waiting--;
		x_retire(x);
		return;
	case X_FINISHED:
		return;
	default:
		break;
	}
	if (x->deferred_done) {
		/* The report is already scheduled; it will find x cancelled and stay silent. */
		return;
	}
	if (x->conn)
		x->conn->is_dead = true;
	if (x->in_cb)
		return; /* the head/body callback wrapper finishes it when the callback returns */
	struct evhttp_request *req = x->req;
	x->req = NULL;
	if (req)
		evhttp_cancel_request(req); /* resets the connection; no completion callback */
	finish(x, UPSTREAM_ERR_ABORTED, NULL);
}

void upstream_pause(struct upstream_exchange *x)
{
	if (x->paused || !x->conn)
		return;
	x->paused = true;
	bufferevent_disable(x->conn->bev, EV_READ);
}

void upstream_resume(struct upstream_exchange *x)
{
	if (!x->paused)
		return;
	x->paused = false;
	if (x->conn && x->phase == X_BODY)
		bufferevent_enable(x->conn->bev, EV_READ);
}

bool upstream_request_started(const struct upstream_exchange *x)
{
	return x->started;
}

/* ---- the upstream ---- */

struct upstream *upstream_new(struct event_base *base, struct evdns_base *dns, SSL_CTX *tls_ctx,
                              const struct route_url *url, const struct upstream_settings *s)
{
	struct upstream *up = calloc(1, sizeof(*up));

	if (!up)
		return NULL;
	up->base = base;
	up->dns = dns;
	up->tls_ctx = tls_ctx;
	up->url = *url;
	up->set = *s;
	if (up->set.max_connections == 0)
		up->set.max_connections = 1;
	TAILQ_INIT(&up->conns);
	TAILQ_INIT(&up->idle);
	TAILQ_INIT(&up->graveyard);
	TAILQ_INIT(&up->waiters);
	TAILQ_INIT(&up->x_graveyard);
	up->sweep = event_new(base, -1, 0, on_sweep, up);
	if (!up->sweep) {
		free(up);
		return NULL;
	}
	return up;
}

void upstream_set_settings(struct upstream *up, const struct upstream_settings *s)
{
	up->set = *s;
	if (up->set.max_connections == 0)
		up->set.max_connections = 1;
}

const struct route_url *upstream_url(const struct upstream *up)
{
	return &up->url;
}

void upstream_get_stats(const struct upstream *up, struct upstream_stats *st)
{
	st->n_conns = up->n_conns;
	st->n_idle = up->n_idle;
	st->n_waiting = up->n_waiting;
	st->n_created = up->n_created;
	st->n_reused = up->n_reused;
}

void upstream_free(struct upstream *up)
{
	struct upstream_conn *c;
	struct upstream_exchange *x;

	if (!up)
		return;
	/* Callers cancel their exchanges first; whatever is left is dropped silently. */
	while ((x = TAILQ_FIRST(&up->waiters))) {
		TAILQ_REMOVE(&up->waiters, x, link);
		x_free_now(x);
	}
	while ((c = TAILQ_FIRST(&up->conns))) {
		TAILQ_REMOVE(&up->conns, c, link);
		if (c->x) {
			c->x->cancelled = true;
			c->x->phase = X_FINISHED;
			TAILQ_INSERT_TAIL(&up->x_graveyard, c->x, link);
		}
		conn_free_now(c);
	}
	on_sweep(-1, 0, up);
	event_free(up->sweep);
	if (up->session)
		SSL_SESSION_free(up->session);
	free(up);
}
