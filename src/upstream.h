/*
 * upstream.h: HTTP/1.1 exchanges with one upstream (HighLevel's API 2.0 or 1.0 host) over a
 * pool of keep-alive connections, TLS-verified unless the URL is plain http://.
 *
 * An exchange is one request and its response. The caller gives the request (method, target,
 * end-to-end headers, body) and three callbacks: the response head, each piece of the body, and
 * the end. on_done is called exactly once per exchange unless the caller cancels it first; after
 * upstream_cancel() no callback runs. Nothing here frees what the caller owns.
 *
 * Connections: created on demand up to upstream.max_connections, reused newest-first (a warm
 * connection beats a handshake), dropped on any error, on "Connection: close", when the peer
 * closes an idle one, when it sent bytes past the end of a response (they would be read as the
 * next request's answer), or after upstream.idle_timeout idle. A connection is never reused after a
 * failure: libevent's evhttp would reconnect it with the same TLS state, which cannot work.
 */
#ifndef GHLPROXY_UPSTREAM_H
#define GHLPROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/http.h>

#include "route.h"

struct event_base;
struct evdns_base;
struct evbuffer;
struct evkeyvalq;
struct upstream;
struct upstream_exchange;
typedef struct ssl_ctx_st SSL_CTX;

struct upstream_settings {
	uint32_t connect_timeout_ms; /* TCP connect + TLS handshake */
	uint32_t timeout_ms;         /* request written -> response head; body silence */
	uint32_t max_connections;
	uint32_t idle_timeout_ms;
	uint64_t max_header_size;
};

enum upstream_result {
	UPSTREAM_OK = 0,       /* the whole response was delivered */
	UPSTREAM_ERR_CONNECT,  /* DNS, refused, unreachable */
	UPSTREAM_ERR_TLS,      /* certificate or handshake */
	UPSTREAM_ERR_TIMEOUT,  /* connect, head or body timeout */
	UPSTREAM_ERR_PROTOCOL, /* unparsable or oversized response */
	UPSTREAM_ERR_CLOSED,   /* connection lost before the response was complete */
	UPSTREAM_ERR_INTERNAL, /* out of memory and the like */
	UPSTREAM_ERR_ABORTED,  /* on_head returned < 0 */
};

struct upstream_cbs {
	/* The response head. Return 0 to take the body, < 0 to stop (on_done: ERR_ABORTED). */
	int (*on_head)(struct upstream_exchange *x, int status, const char *reason,
	               struct evkeyvalq *headers, void *arg);
	/* Optional: the request's first byte reached the socket (connected, TLS done). */
	void (*on_sent)(struct upstream_exchange *x, void *arg);
	/* A piece of the body; drain what you take (what is left is dropped). */
	void (*on_body)(struct upstream_exchange *x, struct evbuffer *piece, void *arg);
	/* Once. `detail` explains an error for the log (never a secret), or NULL. */
	void (*on_done)(struct upstream_exchange *x, enum upstream_result result,
	                const char *detail, void *arg);
};

struct upstream_request {
	enum evhttp_cmd_type method;
	const char *target; /* path and query, sent byte-exact after the base path */
	const struct evkeyvalq
	        *headers;      /* end-to-end headers; Host and Content-Length are set here */
	struct evbuffer *body; /* may be NULL; referenced, not drained (kept for resends) */
	uint32_t timeout_ms;   /* a shorter upstream.timeout for this exchange; 0: the setting */
};

struct upstream *upstream_new(struct event_base *base, struct evdns_base *dns, SSL_CTX *tls_ctx,
                              const struct route_url *url, const struct upstream_settings *s);
void upstream_free(struct upstream *up);

/* New limits on reload (the URL itself cannot change). */
void upstream_set_settings(struct upstream *up, const struct upstream_settings *s);

const struct route_url *upstream_url(const struct upstream *up);

/* Start an exchange. NULL only when out of memory. */
struct upstream_exchange *upstream_send(struct upstream *up, const struct upstream_request *rq,
                                        const struct upstream_cbs *cbs, void *arg);

/* Stop an exchange; no callback runs after this. Its connection is dropped if in use. */
void upstream_cancel(struct upstream_exchange *x);

/* Backpressure: stop / restart reading the response body. */
void upstream_pause(struct upstream_exchange *x);
void upstream_resume(struct upstream_exchange *x);

/* True once any byte of the request reached the connection's socket (a resend may repeat it). */
bool upstream_request_started(const struct upstream_exchange *x);

/* Pool figures for /metrics and tests. */
struct upstream_stats {
	uint32_t n_conns, n_idle, n_waiting;
	uint64_t n_created, n_reused;
};
void upstream_get_stats(const struct upstream *up, struct upstream_stats *st);

const char *upstream_result_str(enum upstream_result r);

#endif
