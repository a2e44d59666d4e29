/*
 * request.h: a proxied request's life, from the guard-checked evhttp request to the last byte
 * of its answer. See request.c's head comment for the flow.
 */
#ifndef GHLPROXY_REQUEST_H
#define GHLPROXY_REQUEST_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

struct event_base;
struct evhttp_request;
struct server_conn;
struct config;
struct upstream;
struct limiter;
struct clients;

struct proxy_req;

/* Everything a request needs from the process; owned by daemon.c. */
struct proxy {
	struct event_base *base;
	const struct config *cfg; /* swapped on reload; requests read it when they start */
	struct upstream *up_v2;   /* upstream.url */
	struct upstream *up_v1;   /* upstream.v1_url */
	struct limiter *limiter;
	struct credentials *creds; /* [pit], [v1_keys]: swapped on reload */
	struct oauth *oauth;       /* inject mode with oauth.client_id; else NULL */
	struct clients *clients;   /* [clients] keys (none: no key asked for): swapped on reload */
	TAILQ_HEAD(, proxy_req) active; /* every request not yet freed */
	TAILQ_HEAD(, proxy_req) graveyard;
	struct event *sweep;
	uint64_t next_id;
	uint32_t n_active;
	bool draining;
};

int request_proxy_init(struct proxy *px, struct event_base *base);
/* Cancel every request still alive (shutdown) and free what init made. */
void request_proxy_deinit(struct proxy *px);

/* The server's handler for proxied requests (arg: struct proxy *). */
void request_handle(struct server_conn *conn, struct evhttp_request *req, void *arg);

#endif
