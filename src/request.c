/*
 * request.c: the life of one proxied request.
 *
 *   server.c on_request ─► request_handle
 *     check_target / headers_check_request     400 / 405 on what must not be forwarded
 *     route: /v1/... ─► px->up_v1, else px->up_v2
 *     check_client ─► clients_authenticate: 401 without a valid client key  [clients.c]
 *     prepare: filtered end-to-end headers, Version and User-Agent defaults, body moved here
 *     classify_request ─► the key (app, resource)                 [classify.c]
 *     clients_authorize: 403 for a resource or method the client may not use
 *     limiter_acquire ─► admit now | wait (on_admitted) | reject   [limiter.c]
 *     send_upstream ─► upstream_send                               [upstream.c]
 *       on_up_head: status + filtered headers kept; feedback to the limiter
 *       on_up_body: buffered up to BUFFER_MAX, then streamed with backpressure
 *       on_up_done: whole answer sent (buffered) | reply ended (streamed) | 502/504
 *     finish: one log line, the request freed at the next sweep
 *
 * While the request waits (limiter queue, upstream), its client may hang up: server.c's
 * EV_CLOSED watch calls on_client_gone, which cancels whatever is pending and drops the
 * connection. A struct proxy_req is freed in exactly one place (on_sweep), after it left every
 * queue, so no callback can find it freed.
 *
 * Answers from HighLevel are buffered whole when they are small (most API answers): the client
 * then gets a clean 502 if the upstream fails mid-answer. Larger answers are streamed; a failure
 * after the head went out can only cut the client's connection.
 */
#include "request.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "classify.h"
#include "clients.h"
#include "config.h"
#include "credentials.h"
#include "headers.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "oauth.h"
#include "ratelimit_headers.h"
#include "route.h"
#include "server.h"
#include "upstream.h"
#include "util.h"

/* Answers up to this size are buffered whole before the client sees them. */
#define BUFFER_MAX (256 * 1024)
/* Stop reading the upstream while this much is queued for a slow client. */
#define CLIENT_BACKLOG_MAX (1024 * 1024)

enum req_state {
	RS_ADMITTING = 0, /* waiting for the limiter */
	RS_TOKEN,         /* admitted, waiting for its OAuth token (refresh in flight) */
	RS_UPSTREAM,      /* exchange in flight, no head yet */
	RS_BUFFERING,     /* head received, body being buffered */
	RS_STREAMING,     /* reply started to the client */
	RS_DONE,          /* answered (or client gone); waiting for the sweep */
};

struct proxy_req {
	TAILQ_ENTRY(proxy_req) link; /* px->active, then px->graveyard */
	struct proxy *px;
	struct evhttp_request *req; /* NULL once answered or the client went away */
	struct server_conn *conn;
	uint64_t id;
	char peer[64]; /* for the log line, which may come after the connection is gone */
	char client[CLIENTS_NAME_MAX + 1]; /* [clients] name of its key, "" when none */
	enum req_state state;
	enum evhttp_cmd_type method;
	const char *method_str;
	char *target; /* path and query, as sent upstream */
	size_t path_len;
	struct upstream *up;
	struct evkeyvalq fwd; /* headers for the upstream */
	struct evbuffer *body;
	struct classify_result key;
	struct limiter_waiter waiter;
	struct upstream_exchange *x;
	int status;
	char reason[64];
	struct evkeyvalq resp; /* answer headers for the client */
	struct evbuffer *resp_body;
	int64_t t_start_ns;
	int64_t t_admitted_ns;
	int64_t t_sent_ns;
	int64_t t_head_ns;
	int64_t wait_ms;
	int64_t deadline_ms; /* admission deadline: limits.max_wait or the client's X-GHL-Max-Wait
	                      */
	int n_sends;         /* upstream exchanges so far (a 429'd one may be sent again) */
	bool resend_on_429;  /* this answer is a 429 to absorb if the deadline allows */
	bool resend_on_401;  /* this answer is a 401 on a stale OAuth token: send again, once */
	bool retried_401;
	bool was_queued;   /* the limiter did not decide at once: it waited in a queue */
	bool use_oauth;    /* inject mode: the resource's OAuth token goes in at send time */
	char *oauth_token; /* the token sent (wiped when freed), to report a 401 on it */
	struct oauth_waiter owait;
	uint64_t bytes_out;
	bool in_active;
	bool attached; /* to its server_conn: told if the connection dies */
	bool watching; /* EV_CLOSED watch on while it waits */
	bool paused;
	const char *outcome; /* for the log line */
};

static void send_upstream(struct proxy_req *p);
static void resend_after_429(struct proxy_req *p);

/* ---- lifetime ---- */

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;
	struct proxy_req *p;

	while ((p = TAILQ_FIRST(&px->graveyard))) {
		TAILQ_REMOVE(&px->graveyard, p, link);
		evhttp_clear_headers(&p->fwd);
		evhttp_clear_headers(&p->resp);
		if (p->body)
			evbuffer_free(p->body);
		if (p->resp_body)
			evbuffer_free(p->resp_body);
		if (p->oauth_token)
			util_wipe_free(p->oauth_token, strlen(p->oauth_token));
		free(p->target);
		free(p);
	}
}

/* Leave every queue and schedule the free; safe to call once the request has no work left. */
static void retire(struct proxy_req *p)
{
	struct proxy *px = p->px;

	if (!p->in_active)
		return;
	p->state = RS_DONE;
	if (p->attached && p->conn)
		server_conn_detach(p->conn);
	p->attached = false;
	p->watching = false;
	limiter_cancel(&p->waiter); /* leaves the queue and lets go of the keys */
	oauth_cancel(&p->owait);
	if (p->x) {
		upstream_cancel(p->x);
		p->x = NULL;
	}
	p->in_active = false;
	TAILQ_REMOVE(&px->active, p, link);
	px->n_active--;
	TAILQ_INSERT_TAIL(&px->graveyard, p, link);
	event_active(px->sweep, EV_TIMEOUT, 0);
}

/* The one log line of a request: method, path without query, status, timings, bytes, key. */
static void log_line(struct proxy_req *p)
{
	char path[512];
	int64_t now = util_now_ns();
	int64_t up_ms =
	        p->t_sent_ns ? ((p->t_head_ns ? p->t_head_ns : now) - p->t_sent_ns) / 1000000 : -1;
	size_t n = p->target ? MIN(p->path_len, sizeof(path) - 1) : 0;

	if (p->target)
		memcpy(path, p->target, n);
	path[n] = '\0';
	struct log_field f[] = {
		LOG_NUM("id", p->id),
		LOG_STR("peer", p->peer),
		LOG_STR("method", p->method_str),
		LOG_STR("path", path),
		LOG_NUM("status", p->status),
		LOG_NUM("upstream_ms", up_ms),
		LOG_NUM("wait_ms", p->wait_ms),
		LOG_NUM("total_ms", (now - p->t_start_ns) / 1000000),
		LOG_NUM("bytes", p->bytes_out),
		LOG_STR("key", p->key.burst_key),
		LOG_STR("outcome", p->outcome ? p->outcome : "forwarded"),
		LOG_STR("client", p->client), /* last: left out when there is none */
	};
	log_fields(LOG_INFO, "request", f, (int)ARRAY_SIZE(f) - !p->client[0]);
}

static void count_outcome(const struct proxy_req *p)
{
	static const struct {
		const char *outcome;
		enum metric_id id;
	} map[] = {
		{ "rejected_burst", M_REQ_REJECTED_BURST },
		{ "rejected_daily", M_REQ_REJECTED_DAILY },
		{ "queue_full", M_REQ_QUEUE_FULL },
		{ "upstream_error", M_REQ_UPSTREAM_ERROR },
		{ "client_gone", M_REQ_CLIENT_GONE },
		{ "bad_request", M_REQ_BAD_REQUEST },
		{ "unavailable", M_REQ_UNAVAILABLE },
		{ "unauthorized", M_REQ_UNAUTHORIZED },
		{ "forbidden", M_REQ_FORBIDDEN },
		{ "shutdown", M_REQ_SHUTDOWN },
		{ "internal_error", M_REQ_INTERNAL_ERROR },
	};
	enum metric_id id = M_REQ_FORWARDED;

	for (size_t i = 0; p->outcome && i < ARRAY_SIZE(map); i++)
		if (strcmp(p->outcome, map[i].outcome) == 0)
			id = map[i].id;
	metrics_inc(id);
	if (p->was_queued)
		metrics_inc(M_REQ_QUEUED);
}

/* The request is answered (or abandoned): log it once and retire it. */
static void finish(struct proxy_req *p)
{
	if (p->state == RS_DONE)
		return;
	count_outcome(p);
	log_line(p);
	p->req = NULL;
	retire(p);
}

/* ---- answering ---- */

static void stop_watching(struct proxy_req *p)
{
	if (p->watching && p->conn)
		server_conn_watch_close(p->conn, false);
	p->watching = false;
}

/* Before the final reply call: evhttp owns the request from then on. */
static void detach(struct proxy_req *p)
{
	stop_watching(p);
	if (p->attached && p->conn)
		server_conn_detach(p->conn);
	p->attached = false;
}

static void answer_error(struct proxy_req *p, int status, const char *message, const char *outcome)
{
	detach(p);
	p->status = status;
	p->outcome = outcome;
	if (p->req) {
		server_send_error(p->req, status, message, false);
		p->bytes_out = 0;
	}
	finish(p);
}

/* Add the proxy's own headers to an answer. */
static void add_proxy_headers(struct proxy_req *p, struct evkeyvalq *out)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%lld", (long long)p->wait_ms);
	evhttp_add_header(out, "X-GHL-Proxy-Wait-Ms", buf);
	/* Draining (SIGTERM): the client sends its next request elsewhere, not into a socket that
	 * is about to close (evhttp closes the connection after this answer). */
	if (p->px->draining)
		evhttp_add_header(out, "Connection", "close");
}

/* Move the upstream's head into the client's reply headers (both lists are evhttp's, allocated
 * and freed alike: the entries change lists, nothing is copied). An answer without a Date gets
 * the proxy's, formatted once a second (evhttp would format one for every reply). */
static void start_reply_headers(struct proxy_req *p)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(p->req);

	TAILQ_CONCAT(out, &p->resp, next);
	add_proxy_headers(p, out);
	if (!evhttp_find_header(out, "Date"))
		evhttp_add_header(out, "Date", util_http_date());
}

/* Send a fully buffered answer. */
static void reply_whole(struct proxy_req *p)
{
	detach(p);
	if (p->req) {
		start_reply_headers(p);
		p->bytes_out = evbuffer_get_length(p->resp_body);
		evhttp_send_reply(p->req, p->status, p->reason, p->resp_body);
	}
	finish(p);
}

static void on_client_flushed(struct evhttp_connection *evcon, void *arg)
{
	struct proxy_req *p = arg;

	if (p->paused && p->x && p->state == RS_STREAMING) {
		p->paused = false;
		upstream_resume(p->x);
	}
}

/* Move what is buffered to the client (streaming), pausing the upstream for a slow client. */
static void stream_out(struct proxy_req *p)
{
	size_t n = evbuffer_get_length(p->resp_body);

	if (n == 0 || !p->req)
		return;
	p->bytes_out += n;
	evhttp_send_reply_chunk_with_cb(p->req, p->resp_body, on_client_flushed, p);
	if (p->x && !p->paused && server_conn_output_pending(p->conn) > CLIENT_BACKLOG_MAX) {
		p->paused = true;
		upstream_pause(p->x);
	}
}

static void start_streaming(struct proxy_req *p)
{
	stop_watching(p);
	p->state = RS_STREAMING;
	if (!p->req)
		return;
	struct evkeyvalq *in = evhttp_request_get_input_headers(p->req);
	if (evhttp_request_get_command(p->req) != EVHTTP_REQ_HEAD &&
	    !evhttp_find_header(&p->resp, "Content-Length")) {
		/* An HTTP/1.0 client cannot take chunks: it reads until we close. evhttp would
		 * otherwise send "Content-Length: 0" on a keep-alive 1.0 connection. */
		if (p->req->major == 1 && p->req->minor == 0)
			evhttp_remove_header(in, "Connection");
	}
	start_reply_headers(p);
	evhttp_send_reply_start(p->req, p->status, p->reason);
	stream_out(p);
}

/* ---- client hang-up ---- */

static void on_client_gone(void *arg)
{
	struct proxy_req *p = arg;

	p->watching = false;
	p->attached = false;
	p->status = 499; /* nginx's "client closed request", for the log only */
	p->outcome = "client_gone";
	if (p->req) {
		/* evhttp detaches (and leaves to us) a request it was still waiting on us for; one
		 * still attached to its connection is freed with it. */
		struct evhttp_request *req = p->req;
		p->req = NULL;
		if (!evhttp_request_get_connection(req))
			evhttp_request_free(req);
		else
			server_conn_drop(p->conn);
	}
	p->conn = NULL;
	finish(p);
}

/* ---- upstream ---- */

static int on_up_head(struct upstream_exchange *x, int status, const char *reason,
                      struct evkeyvalq *headers, void *arg)
{
	struct proxy_req *p = arg;
	struct ratelimit_info ri;
	struct evkeyval *kv, *next;
	bool chunked = evhttp_find_header(headers, "Transfer-Encoding") != NULL;

	p->t_head_ns = util_now_ns();
	p->status = status;
	metrics_upstream_status(status);
	metrics_observe(H_UPSTREAM_LATENCY, (double)(p->t_head_ns - p->t_sent_ns) / 1e6);
	util_strlcpy(p->reason, reason && *reason ? reason : server_reason(status),
	             sizeof(p->reason));
	ratelimit_headers_parse(headers, util_wall_ms(), &ri);
	if (p->key.is_counted) {
		limiter_feedback(p->px->limiter, &p->waiter, status, &ri);
		/* A 429 was not executed: send it again when admitted, if the deadline allows.
		 * Its answer is kept meanwhile, to pass on if it cannot be. */
		p->resend_on_429 = status == 429 && util_now_ms() < p->deadline_ms;
	}

	/* End-to-end headers only. Content-Length stays when it frames the body we pass on
	 * untouched; with Transfer-Encoding present it is a lie and goes. The entries move from
	 * the upstream's list to ours (evhttp allocates and frees both alike), except
	 * Content-Length, which evhttp reads after this callback to frame the body: it is copied.
	 */
	bool has_connection = headers_has_connection(headers);
	for (kv = TAILQ_FIRST(headers); kv; kv = next) {
		next = TAILQ_NEXT(kv, next);
		if (!headers_end_to_end(headers, has_connection, kv->key))
			continue;
		if (util_strcaseeq(kv->key, "Content-Length")) {
			if (!chunked && evhttp_add_header(&p->resp, kv->key, kv->value) < 0)
				return -1;
			continue;
		}
		TAILQ_REMOVE(headers, kv, next);
		TAILQ_INSERT_TAIL(&p->resp, kv, next);
	}
	p->state = RS_BUFFERING;
	return 0;
}

static void on_up_body(struct upstream_exchange *x, struct evbuffer *piece, void *arg)
{
	struct proxy_req *p = arg;

	evbuffer_add_buffer(p->resp_body, piece);
	if (p->state == RS_BUFFERING && evbuffer_get_length(p->resp_body) > BUFFER_MAX)
		start_streaming(p);
	else if (p->state == RS_STREAMING)
		stream_out(p);
}

static void on_up_done(struct upstream_exchange *x, enum upstream_result r, const char *detail,
                       void *arg)
{
	struct proxy_req *p = arg;

	p->x = NULL;
	/* HighLevel refused our OAuth token (expired early, revoked): a 401 was not executed, so
	 * refresh and send again, once. Its body says whether it was the token. */
	if (r == UPSTREAM_OK && p->status == 401 && p->use_oauth && !p->retried_401 &&
	    p->px->oauth && p->state == RS_BUFFERING) {
		p->resend_on_401 = oauth_unauthorized(p->px->oauth, p->key.resource, p->oauth_token,
		                                      p->resp_body) &&
		                   util_now_ms() < p->deadline_ms;
	}
	if (r == UPSTREAM_OK && (p->resend_on_429 || p->resend_on_401) &&
	    p->state == RS_BUFFERING) {
		if (p->resend_on_401)
			p->retried_401 = true;
		resend_after_429(p);
		return;
	}
	if (r == UPSTREAM_OK) {
		if (p->state == RS_STREAMING) {
			stream_out(p);
			detach(p);
			if (p->req)
				evhttp_send_reply_end(p->req);
			finish(p);
		} else {
			reply_whole(p);
		}
		return;
	}

	metrics_inc(M_UP_ERRORS);
	log_fields(LOG_WARNING, "upstream error",
	           (struct log_field[]){ LOG_NUM("id", p->id),
	                                 LOG_STR("error", upstream_result_str(r)),
	                                 LOG_STR("detail", detail ? detail : "") },
	           3);
	if (p->state == RS_STREAMING) {
		/* The head is out: all we can do is cut the connection so the client sees a
		 * truncated answer rather than a wrong one. */
		p->outcome = "upstream_error";
		detach(p);
		if (p->req) {
			p->req = NULL;
			server_conn_drop(p->conn);
		}
		finish(p);
		return;
	}
	int status = r == UPSTREAM_ERR_TIMEOUT ? 504 : 502;
	char msg[480];
	switch (r) {
	case UPSTREAM_ERR_TLS:
		snprintf(msg, sizeof(msg), "upstream TLS verification failed (%s)",
		         detail ? detail : "");
		break;
	case UPSTREAM_ERR_TIMEOUT:
		snprintf(msg, sizeof(msg), "upstream timed out (%s)", detail ? detail : "");
		break;
	case UPSTREAM_ERR_CONNECT:
		snprintf(msg, sizeof(msg), "upstream unreachable (%s)", detail ? detail : "");
		break;
	default:
		snprintf(msg, sizeof(msg), "upstream failed (%s)", detail ? detail : "no detail");
	}
	answer_error(p, status, msg, "upstream_error");
}

static void on_up_sent(struct upstream_exchange *x, void *arg)
{
	struct proxy_req *p = arg;

	if (p->key.is_counted)
		limiter_sent(p->px->limiter, &p->waiter);
}

static const struct upstream_cbs up_cbs = {
	.on_sent = on_up_sent,
	.on_head = on_up_head,
	.on_body = on_up_body,
	.on_done = on_up_done,
};

static void send_now(struct proxy_req *p);

/* Authorization: Bearer <secret> replaces whatever the request carried (any length: API 1.0
 * keys may be long); the temporary copy is wiped. */
static void put_bearer(struct evkeyvalq *h, const char *secret)
{
	size_t n = strlen(secret) + 8;
	char *v = malloc(n);

	evhttp_remove_header(h, "Authorization");
	if (v) {
		snprintf(v, n, "Bearer %s", secret);
		evhttp_add_header(h, "Authorization", v);
		util_wipe_free(v, strlen(v));
	}
}

/* The OAuth token goes in, and is kept to tell oauth.c which token a 401 was about. */
static void set_bearer(struct proxy_req *p, const char *token)
{
	if (p->oauth_token)
		util_wipe_free(p->oauth_token, strlen(p->oauth_token));
	p->oauth_token = strdup(token);
	put_bearer(&p->fwd, token);
}

static void answer_no_token(struct proxy_req *p, enum oauth_status st, const char *why)
{
	char msg[320];

	if (st == OAUTH_REINSTALL || st == OAUTH_NO_TOKEN) {
		snprintf(msg, sizeof(msg), "%s %s: %s",
		         p->key.res_kind == RES_COMPANY ? "company" : "location", p->key.resource,
		         why ? why : "no credential");
		answer_error(p, 401, msg, "unauthorized");
		return;
	}
	snprintf(msg, sizeof(msg), "no OAuth token for %s yet: %s", p->key.resource,
	         why ? why : "try again");
	answer_error(p, 503, msg, "unavailable");
}

static void on_token(struct oauth_waiter *w, enum oauth_status st, const char *token,
                     const char *why, void *arg)
{
	struct proxy_req *p = arg;

	if (st != OAUTH_READY) {
		answer_no_token(p, st, why);
		return;
	}
	set_bearer(p, token);
	send_now(p);
}

static void send_upstream(struct proxy_req *p)
{
	if (p->use_oauth) {
		const char *token = NULL, *why = NULL;
		enum oauth_status st =
		        oauth_token(p->px->oauth, p->key.resource, NULL, p->deadline_ms + 5000,
		                    &p->owait, on_token, p, &token, &why);
		if (st == OAUTH_WAIT) {
			p->state = RS_TOKEN;
			return;
		}
		if (st != OAUTH_READY) {
			answer_no_token(p, st, why);
			return;
		}
		set_bearer(p, token);
	}
	send_now(p);
}

static void send_now(struct proxy_req *p)
{
	struct upstream_request rq = {
		.method = p->method,
		.target = p->target,
		.headers = &p->fwd,
		.body = p->body,
	};

	if (p->n_sends++ > 0) {
		/* A resend: forget the absorbed 429 or 401. */
		metrics_inc(M_UP_RESENT);
		evhttp_clear_headers(&p->resp);
		evbuffer_drain(p->resp_body, evbuffer_get_length(p->resp_body));
		p->resend_on_429 = false;
		p->resend_on_401 = false;
		p->t_head_ns = 0;
	}
	p->state = RS_UPSTREAM;
	p->t_sent_ns = util_now_ns();
	p->x = upstream_send(p->up, &rq, &up_cbs, p);
	if (!p->x)
		answer_error(p, 500, "out of memory", "internal_error");
}

/* ---- admission ---- */

static void on_admitted(struct limiter_waiter *w, const struct limiter_verdict *v, void *arg);

static void set_header_num(struct evkeyvalq *h, const char *name, int64_t v)
{
	char buf[24];

	if (v < 0)
		return;
	snprintf(buf, sizeof(buf), "%lld", (long long)v);
	evhttp_remove_header(h, name);
	evhttp_add_header(h, name, buf);
}

/*
 * The proxy's own 429 (and 503 when full): Retry-After in whole seconds, rounded up; the
 * X-RateLimit-* headers of the scope, as HighLevel would send them, so clients (the official
 * SDK) tell burst from daily the same way; and a JSON body saying which and for how long.
 */
static void answer_limited(struct proxy_req *p, int status, const struct limiter_verdict *v,
                           const char *message, const char *outcome)
{
	bool daily = v->scope == WINDOW_DAILY || v->scope == WINDOW_BLOCKED_DAY;
	int64_t retry_ms = v->retry_after_ms > 0 ? v->retry_after_ms : 1000;
	char buf[512];

	detach(p);
	p->status = status;
	p->outcome = outcome;
	if (!p->req) {
		finish(p);
		return;
	}
	struct evkeyvalq *out = evhttp_request_get_output_headers(p->req);
	struct evbuffer *body = evbuffer_new();
	set_header_num(out, "Retry-After", (retry_ms + 999) / 1000);
	set_header_num(out, "X-RateLimit-Max", v->limit);
	set_header_num(out, "X-RateLimit-Remaining", v->remaining);
	set_header_num(out, "X-RateLimit-Interval-Milliseconds", v->interval_ms);
	set_header_num(out, "X-RateLimit-Limit-Daily", v->daily_limit);
	set_header_num(out, "X-RateLimit-Daily-Remaining", v->daily_remaining);
	set_header_num(out, "X-RateLimit-Daily-Reset", v->daily_reset_ms);
	add_proxy_headers(p, out);
	evhttp_add_header(out, "Content-Type", "application/json");
	snprintf(buf, sizeof(buf),
	         "{\"statusCode\":%d,\"message\":\"%s\",\"scope\":\"%s\",\"retryAfterMs\":%lld}",
	         status, message, daily ? "daily" : "burst", (long long)retry_ms);
	if (body)
		evbuffer_add(body, buf, strlen(buf));
	evhttp_send_reply(p->req, status, server_reason(status), body);
	p->bytes_out = strlen(buf);
	if (body)
		evbuffer_free(body);
	finish(p);
}

static void admitted(struct proxy_req *p, const struct limiter_verdict *v)
{
	p->t_admitted_ns = util_now_ns();
	if (p->n_sends == 0) {
		p->wait_ms = (p->t_admitted_ns - p->t_start_ns) / 1000000;
		metrics_observe(H_QUEUE_WAIT, (double)(p->t_admitted_ns - p->t_start_ns) / 1e6);
	}
	switch (v->outcome) {
	case LIMITER_ADMIT:
		send_upstream(p);
		return;
	case LIMITER_REJECT: {
		bool daily = v->scope == WINDOW_DAILY || v->scope == WINDOW_BLOCKED_DAY;
		if ((p->status == 429 && p->resend_on_429) ||
		    (p->status == 401 && p->resend_on_401)) {
			/* HighLevel's own 429 stands: pass it on as it came. */
			reply_whole(p);
			return;
		}
		answer_limited(p, 429, v,
		               daily ? "daily rate limit: no budget before this request's deadline"
		                     : "burst rate limit: no slot before this request's deadline",
		               daily ? "rejected_daily" : "rejected_burst");
		return;
	}
	case LIMITER_QUEUE_FULL:
		answer_limited(p, 503, v, "the proxy's queue for this key is full", "queue_full");
		return;
	case LIMITER_SHUTDOWN:
		answer_limited(p, 503, v, "the proxy is shutting down", "shutdown");
		return;
	case LIMITER_UNAVAILABLE:
		answer_limited(p, 503, v, "the shared rate limiter is unavailable", "unavailable");
		return;
	}
}

static void on_admitted(struct limiter_waiter *w, const struct limiter_verdict *v, void *arg)
{
	admitted(arg, v);
}

/* An upstream 429 blocked the key; this request goes back to the head of its queue. */
static void resend_after_429(struct proxy_req *p)
{
	struct limiter_verdict v;

	p->state = RS_ADMITTING;
	if (p->req) {
		p->watching = true;
		server_conn_watch_close(p->conn, true);
	}
	if (limiter_acquire(p->px->limiter, &p->key, p->deadline_ms, true, &p->waiter, on_admitted,
	                    p, &v))
		admitted(p, &v);
	else
		p->was_queued = true;
}

/* The client's X-GHL-Max-Wait (ms), when it is a plain number. */
static int64_t client_max_wait_ms(const struct evkeyvalq *in)
{
	const char *s = evhttp_find_header(in, "X-GHL-Max-Wait");
	int64_t v = 0;

	if (!s || !*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > 86400000)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

/* ---- intake ---- */

/* Absolute-form targets are accepted only when they name one of our two upstreams. */
static const char *check_target(struct proxy *px, const char *uri, const char **path_out)
{
	const char *authority, *path;
	size_t alen;

	switch (route_split_target(uri, &authority, &alen, &path)) {
	case ROUTE_ORIGIN:
		*path_out = path;
		return NULL;
	case ROUTE_ABSOLUTE:
		if (!route_authority_is(upstream_url(px->up_v2), authority, alen) &&
		    !route_authority_is(upstream_url(px->up_v1), authority, alen))
			return "absolute-form target names a host other than the configured "
			       "upstreams";
		*path_out = *path ? path : "/";
		return NULL;
	case ROUTE_BAD:
	default:
		return "unsupported request target";
	}
}

static const char *method_name(enum evhttp_cmd_type m)
{
	switch (m) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	}
	return "?";
}

/* Bearer credential of the request, or NULL. */
static const char *bearer_of(const struct evkeyvalq *in, size_t *len)
{
	const char *auth = evhttp_find_header(in, "Authorization");

	if (!auth || !util_strncaseeq(auth, "Bearer", 6) || (auth[6] != ' ' && auth[6] != '\0'))
		return NULL;
	auth += 6;
	while (*auth == ' ')
		auth++;
	size_t n = strlen(auth);
	while (n > 0 && auth[n - 1] == ' ')
		n--;
	*len = n;
	return auth;
}

/*
 * Refuse a request the client-key check turned down: 401 (with the scheme to use) or 403, JSON,
 * counted by reason. Nothing was forwarded or counted against a rate-limit key.
 */
static void refuse_client(struct proxy_req *p, enum clients_verdict v)
{
	static const enum metric_id refusal[] = {
		[CLIENTS_MISSING] = M_DENY_MISSING,
		[CLIENTS_INVALID] = M_DENY_INVALID,
		[CLIENTS_RESOURCE] = M_DENY_RESOURCE,
		[CLIENTS_READ_ONLY] = M_DENY_READONLY,
	};
	bool inject = p->px->cfg->server.mode == CONFIG_MODE_INJECT;
	char msg[256];

	if (v == CLIENTS_OK || (size_t)v >= ARRAY_SIZE(refusal))
		v = CLIENTS_INVALID;
	metrics_inc(refusal[v]);
	switch (v) {
	case CLIENTS_READ_ONLY:
		snprintf(msg, sizeof(msg),
		         "client %s is read-only: only GET, HEAD and OPTIONS are allowed",
		         p->client);
		answer_error(p, 403, msg, "forbidden");
		return;
	case CLIENTS_RESOURCE:
		if (*p->key.resource)
			snprintf(msg, sizeof(msg), "client %s may not use %s", p->client,
			         p->key.resource);
		else
			snprintf(msg, sizeof(msg),
			         "client %s is limited to its resources and this request names no "
			         "location or company",
			         p->client);
		answer_error(p, 403, msg, "forbidden");
		return;
	case CLIENTS_MISSING:
	case CLIENTS_INVALID:
	case CLIENTS_OK:
	default:
		break;
	}
	if (p->req)
		evhttp_add_header(evhttp_request_get_output_headers(p->req), "WWW-Authenticate",
		                  inject ? "Bearer realm=\"ghlproxy\""
		                         : "X-GHL-Proxy-Key realm=\"ghlproxy\"");
	if (v == CLIENTS_MISSING)
		answer_error(
		        p, 401,
		        inject ? "this proxy needs a client key: send Authorization: Bearer <key>"
		               : "this proxy needs a client key: send X-GHL-Proxy-Key: <key>",
		        "unauthorized");
	else
		answer_error(p, 401, "the client key is not valid", "unauthorized");
}

/*
 * With [clients] configured, the request must carry one client's key: Authorization: Bearer in
 * inject mode (where the client's Authorization is never forwarded), X-GHL-Proxy-Key in
 * passthrough (where Authorization is HighLevel's; X-GHL-* headers are never forwarded). Two of
 * the header are refused rather than guessed between. Answers and returns -1 when refused.
 */
static int check_client(struct proxy_req *p, const struct evkeyvalq *in, const struct client **out)
{
	bool inject = p->px->cfg->server.mode == CONFIG_MODE_INJECT;
	const char *name = inject ? "Authorization" : "X-GHL-Proxy-Key";
	const char *key = NULL;
	size_t len = 0;
	enum clients_verdict v;

	*out = NULL;
	if (clients_count(p->px->clients) == 0)
		return 0;
	if (headers_count(in, name) > 1) {
		v = CLIENTS_INVALID;
	} else {
		const char *raw = evhttp_find_header(in, name);

		if (raw && inject) {
			key = bearer_of(in, &len);
			if (!key) { /* another scheme: compared anyway, and refused */
				key = raw;
				len = strlen(raw);
			}
		} else if (raw) {
			key = raw;
			while (*key == ' ' || *key == '\t')
				key++;
			len = strlen(key);
			while (len > 0 && (key[len - 1] == ' ' || key[len - 1] == '\t'))
				len--;
		}
		v = clients_authenticate(p->px->clients, key, len, out);
	}
	if (v != CLIENTS_OK) {
		refuse_client(p, v);
		return -1;
	}
	util_strlcpy(p->client, clients_name(*out), sizeof(p->client));
	metrics_labelled_add(ML_CLIENT_REQUESTS, p->client, 1);
	return 0;
}

static int classify(struct proxy_req *p, struct evkeyvalq *in)
{
	struct classify_header *hs;
	size_t n_hs = 0;
	const struct evkeyval *kv;
	struct classify_input ci = { 0 };
	const char *q = strchr(p->target, '?');
	size_t body_len = evbuffer_get_length(p->body);

	/* Every header the guard let through (at most server.max_headers). */
	TAILQ_FOREACH(kv, in, next)
	n_hs++;
	hs = calloc(n_hs ? n_hs : 1, sizeof(*hs));
	if (!hs)
		return -ENOMEM;
	n_hs = 0;
	TAILQ_FOREACH(kv, in, next)
	{
		hs[n_hs].name = kv->key;
		hs[n_hs].value = kv->value;
		n_hs++;
	}
	ci.method = p->method_str;
	ci.path = p->target;
	ci.path_len = p->path_len;
	ci.query = q ? q + 1 : NULL;
	ci.query_len = q ? strlen(q + 1) : 0;
	ci.headers = hs;
	ci.n_headers = n_hs;
	ci.bearer = bearer_of(in, &ci.bearer_len);
	if (body_len > 0) {
		/* Only a prefix is looked at: a 100 MB upload is not pulled up whole. */
		size_t sniff = MIN(body_len, (size_t)CLASSIFY_BODY_SNIFF);
		ci.body = evbuffer_pullup(p->body, (ev_ssize_t)sniff);
		ci.body_len = ci.body ? sniff : 0;
	}
	ci.is_v1 = p->up == p->px->up_v1;
	ci.inject = p->px->cfg->server.mode == CONFIG_MODE_INJECT;
	ci.lookup = credentials_lookup;
	ci.lookup_ctx = p->px->creds;
	classify_request(&ci, &p->key);
	free(hs);
	return 0;
}

/*
 * Inject mode: the credential for the request's resource, set now (PIT, API 1.0 key) or at send
 * time (OAuth: the token may be refreshed meanwhile), and the key rebuilt for it. Answers 401
 * and returns -1 when there is none.
 */
static int choose_credential(struct proxy_req *p)
{
	struct proxy *px = p->px;
	const char *res = p->key.resource;
	const struct credential *c = NULL;
	char msg[400];

	if (!p->key.is_counted)
		return 0; /* /oauth/ calls carry their own credentials in their body */
	if (p->up == px->up_v1) {
		c = credentials_v1_for(px->creds, res);
		if (!c) {
			snprintf(
			        msg, sizeof(msg),
			        "no API 1.0 key for %s: configure [v1_keys] %s = FILE (or agency = "
			        "FILE)",
			        *res ? res : "this request (it names no location)",
			        *res ? res : "ID");
			answer_error(p, 401, msg, "unauthorized");
			return -1;
		}
		put_bearer(&p->fwd, c->secret);
		classify_set_credential(&p->key, CRED_V1_KEY, NULL, c->fingerprint);
		return 0;
	}
	if (!*res) {
		answer_error(p, 401,
		             "the request names no location or company: send its id (x-location-id "
		             "or x-company-id header, or locationId / companyId in the query)",
		             "unauthorized");
		return -1;
	}
	enum oauth_status st = px->oauth ? oauth_check(px->oauth, res, NULL) : OAUTH_NO_TOKEN;
	if (st == OAUTH_READY || st == OAUTH_WAIT) {
		p->use_oauth = true;
		classify_set_credential(&p->key, CRED_OAUTH, oauth_app(px->oauth), NULL);
		return 0;
	}
	c = credentials_pit_for(px->creds, res);
	if (c) {
		put_bearer(&p->fwd, c->secret);
		classify_set_credential(&p->key, CRED_PIT, NULL, c->fingerprint);
		return 0;
	}
	if (st == OAUTH_REINSTALL)
		snprintf(msg, sizeof(msg),
		         "%s: HighLevel refused its refresh token; the app must be installed again "
		         "for it (admin /oauth/start)",
		         res);
	else
		snprintf(msg, sizeof(msg),
		         "no credential for %s: install the app for it (admin /oauth/start, or "
		         "`ghlproxy token import`) or configure [pit] %s = FILE",
		         res, res);
	answer_error(p, 401, msg, "unauthorized");
	return -1;
}

void request_handle(struct server_conn *conn, struct evhttp_request *req, void *arg)
{
	struct proxy *px = arg;
	const struct config *cfg = px->cfg;
	struct proxy_req *p;
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *uri = evhttp_request_get_uri(req);
	const char *path = NULL, *why;
	const struct client *client = NULL; /* in px->clients: valid during this call only */
	unsigned flags = HEADERS_DROP_HOST | HEADERS_DROP_LENGTH | HEADERS_DROP_PROXY_CONTROL |
	                 HEADERS_DROP_EXPECT;

	p = calloc(1, sizeof(*p));
	if (!p) {
		server_send_error(req, 503, "out of memory", true);
		return;
	}
	p->px = px;
	p->req = req;
	p->conn = conn;
	p->id = ++px->next_id;
	util_strlcpy(p->peer, server_conn_peer(conn), sizeof(p->peer));
	p->t_start_ns = util_now_ns();
	p->method = evhttp_request_get_command(req);
	p->method_str = method_name(p->method);
	TAILQ_INIT(&p->fwd);
	TAILQ_INIT(&p->resp);
	p->in_active = true;
	TAILQ_INSERT_TAIL(&px->active, p, link);
	px->n_active++;

	if (p->method == EVHTTP_REQ_CONNECT || p->method == EVHTTP_REQ_TRACE) {
		answer_error(p, 405, "method not allowed through this proxy", "bad_request");
		return;
	}
	if (!uri || (why = check_target(px, uri, &path)) != NULL) {
		answer_error(p, 400, uri ? why : "missing request target", "bad_request");
		return;
	}
	if ((why = headers_check_request(in)) != NULL) {
		answer_error(p, 400, why, "bad_request");
		return;
	}
	p->target = strdup(path);
	p->body = evbuffer_new();
	p->resp_body = evbuffer_new();
	if (!p->target || !p->body || !p->resp_body) {
		answer_error(p, 503, "out of memory", "internal_error");
		return;
	}
	p->path_len = route_path_len(p->target);
	p->up = route_is_v1(p->target) ? px->up_v1 : px->up_v2;
	if (check_client(p, in, &client) < 0)
		return;

	/* The body is ours from here on (moved, not copied): evhttp may free its request when the
	 * client goes away, and a resend after a 429 needs it whole. */
	evbuffer_add_buffer(p->body, evhttp_request_get_input_buffer(req));

	if (cfg->server.mode == CONFIG_MODE_INJECT)
		flags |= HEADERS_DROP_AUTHORIZATION;
	if (headers_copy(in, &p->fwd, flags) < 0) {
		answer_error(p, 503, "out of memory", "internal_error");
		return;
	}
	if (p->up == px->up_v2 && !evhttp_find_header(&p->fwd, "Version") &&
	    *cfg->upstream.default_version)
		evhttp_add_header(&p->fwd, "Version", cfg->upstream.default_version);
	if (!evhttp_find_header(&p->fwd, "User-Agent") && *cfg->upstream.user_agent)
		evhttp_add_header(&p->fwd, "User-Agent", cfg->upstream.user_agent);

	if (classify(p, in) < 0) {
		answer_error(p, 503, "out of memory", "internal_error");
		return;
	}
	if (client) {
		/* Before a credential is chosen: a 401 naming a resource the client may not use
		 * would tell it which resources the proxy holds credentials for. */
		enum clients_verdict cv = clients_authorize(client, p->method_str, p->key.resource);
		if (cv != CLIENTS_OK) {
			refuse_client(p, cv);
			return;
		}
	}
	if (cfg->server.mode == CONFIG_MODE_INJECT) {
		if (choose_credential(p) < 0)
			return;
	} else if (p->key.cred == CRED_EMPTY) {
		/* "Bearer undefined", "Bearer null", "Bearer ": an integration bug that would
		 * spend budget for a certain 401 upstream. */
		answer_error(p, 401,
		             "the request's bearer token is empty, \"undefined\" or \"null\": "
		             "the client did not set its credential",
		             "unauthorized");
		return;
	}

	/* Told of a hang-up from here until the answer starts, and of a dead connection until the
	 * final reply call. */
	p->attached = true;
	server_conn_attach(conn, on_client_gone, p);
	p->watching = true;
	server_conn_watch_close(conn, true);

	struct limiter_verdict v;
	int64_t max_wait = cfg->limits.max_wait_ms, client_wait = client_max_wait_ms(in);
	if (client_wait >= 0 && client_wait < max_wait)
		max_wait = client_wait;
	p->deadline_ms = util_now_ms() + max_wait;
	if (!p->key.is_counted) {
		v = (struct limiter_verdict){ .outcome = LIMITER_ADMIT };
		admitted(p, &v);
		return;
	}
	if (limiter_acquire(px->limiter, &p->key, p->deadline_ms, false, &p->waiter, on_admitted, p,
	                    &v))
		admitted(p, &v);
	else
		p->was_queued = true;
}

int request_proxy_init(struct proxy *px, struct event_base *base)
{
	px->base = base;
	TAILQ_INIT(&px->active);
	TAILQ_INIT(&px->graveyard);
	px->sweep = event_new(base, -1, 0, on_sweep, px);
	return px->sweep ? 0 : -ENOMEM;
}

void request_proxy_deinit(struct proxy *px)
{
	struct proxy_req *p;

	while ((p = TAILQ_FIRST(&px->active))) {
		p->req = NULL; /* evhttp frees its requests with the server */
		p->outcome = "shutdown";
		finish(p);
	}
	on_sweep(-1, 0, px);
	if (px->sweep)
		event_free(px->sweep);
	px->sweep = NULL;
}
