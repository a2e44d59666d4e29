/*
 * server.h: the client-facing HTTP server: listeners (TCP, IPv4/IPv6, unix sockets), one evhttp
 * per listener set, and a strict framing guard (http_guard.c) in front of evhttp on every
 * connection.
 *
 * Bytes from a client go: socket bufferevent ─► filter bufferevent (guard: validates, frames,
 * holds each message until complete) ─► evhttp (parses) ─► the handler given to server_new.
 * When the guard refuses input, or a header/body timeout strikes, or the connection cap is hit,
 * it hands evhttp one synthetic request carrying a per-process nonce; the server answers it with
 * the error as JSON and closes the connection, in order after any pipelined request before it.
 *
 * While a request waits inside the proxy (queue, Redis, token refresh, upstream), evhttp does not
 * read its connection, so it would not notice the client hanging up. server_conn_watch_close()
 * watches the socket for EV_CLOSED and tells the waiting request, which then cancels its work and
 * calls server_conn_drop().
 */
#ifndef GHLPROXY_SERVER_H
#define GHLPROXY_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evhttp_request;
struct config;
struct server;
struct server_conn;

/* Called for every request that passed the guard. The handler must answer it exactly once
 * (or drop its connection). */
typedef void (*server_request_cb)(struct server_conn *conn, struct evhttp_request *req, void *arg);

struct server_limits {
	uint64_t max_body;
	uint64_t max_header_size;
	uint64_t max_request_line;
	uint32_t max_headers;
	uint32_t header_timeout_ms;
	uint32_t body_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t max_connections;
};

void server_limits_from_config(struct server_limits *lim, const struct config *cfg);

/*
 * Listen on every address of `listen` (comma-separated: host:port, [v6]:port, unix:/path).
 * `name` names the server in logs ("proxy", "admin"). allow_remote: accept addresses that are
 * not loopback. Returns NULL with a message in err.
 */
struct server *server_new(struct event_base *base, const char *name, const char *listen,
                          const struct server_limits *lim, const struct config *cfg,
                          bool allow_remote, server_request_cb cb, void *cb_arg, char *err,
                          size_t err_len);
void server_free(struct server *srv);

/* New limits on reload (listen addresses cannot change). */
void server_set_limits(struct server *srv, const struct server_limits *lim);

/* The bound addresses, comma-separated ("127.0.0.1:41234,unix:/run/x.sock"). */
const char *server_addresses(const struct server *srv);

/* Stop accepting new connections (drain). Existing ones go on. */
void server_stop_accepting(struct server *srv);

/* Close the connections with no request under way (drain): a client's next request then opens
 * a new connection, elsewhere, instead of meeting one that closes under it at exit. */
void server_close_idle(struct server *srv);

/* Connections currently open. */
uint32_t server_n_connections(const struct server *srv);

/* Bytes of answers queued for clients and not yet taken by the kernel, over every connection:
 * a drain waits for them before the process exits and closes the sockets. */
size_t server_output_pending(const struct server *srv);

/* Peer, for logs ("127.0.0.1", "unix"). */
const char *server_conn_peer(const struct server_conn *c);

/*
 * A request attaches to its connection for as long as it may touch its evhttp request: `gone`
 * then runs (at most once) if the connection dies first, from the event loop. Detach before the
 * final reply call (evhttp_send_reply / evhttp_send_reply_end): evhttp owns the request after.
 */
void server_conn_attach(struct server_conn *c, void (*gone)(void *arg), void *arg);
void server_conn_detach(struct server_conn *c);

/*
 * While its request waits, evhttp does not read the connection, so it would not see a hang-up.
 * Watching the socket for EV_CLOSED makes `gone` run then. Stop watching before replying.
 */
void server_conn_watch_close(struct server_conn *c, bool on);

/* Close a connection at once without an answer (its request's objects are freed by evhttp). */
void server_conn_drop(struct server_conn *c);

/* Bytes queued for the client and not yet written (for backpressure). */
size_t server_conn_output_pending(const struct server_conn *c);

/*
 * Answer with a JSON error: {"statusCode":N,"message":"..."} plus Content-Type. close: add
 * "Connection: close" (always done for 400: a malformed request ends its connection). The
 * message must not carry a secret.
 */
void server_send_error(struct evhttp_request *req, int status, const char *message, bool close);

/* Short reason phrase for a status ("Bad Request"). */
const char *server_reason(int status);

#endif
