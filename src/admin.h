/*
 * admin.h: the admin listener (server.admin_listen, loopback by default):
 *   GET /healthz      the event loop is alive ("ok")
 *   GET /readyz       every readiness check passes (200), or 503 with each failing check's reason
 *   GET /metrics      Prometheus text (metrics.h)
 *   GET /status       JSON: every live rate-limit key and every managed token
 *   GET /status.html  a page that shows /status as bars, refreshing itself every second
 * Other modules add their own routes (admin_add_route) and checks (admin_add_ready_check), and
 * contribute the "tokens" entries of /status (admin_set_token_status_fn).
 *
 * With admin.key_file set, every route but /healthz and /readyz (and those added as
 * ADMIN_ROUTE_PUBLIC) requires that key, as "Authorization: Bearer <key>" or as the password of
 * HTTP Basic authentication (any user name), which a browser asks for by itself.
 * Nothing the admin endpoints answer carries a secret.
 */
#ifndef GHLPROXY_ADMIN_H
#define GHLPROXY_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

struct event_base;
struct evhttp_request;
struct proxy;
struct server;
struct config;
struct admin;

/* NULL with err set on failure; NULL without error when admin_listen is empty. Every function
 * below accepts a NULL admin and does nothing then. */
struct admin *admin_new(struct event_base *base, const struct config *cfg, struct proxy *px,
                        struct server *proxy_srv, char *err, size_t err_len);
void admin_free(struct admin *a);

/* A new configuration (reload), re-reading admin.key_file. 0, or nothing changes and: -errno
 * when the key file cannot be read, -EINVAL when it is empty, -EPERM when the new config has no
 * key but the running one has (removing it takes a restart). The caller refuses the reload. */
int admin_set_config(struct admin *a, const struct config *cfg);

/* The bound addresses, comma-separated ("" without an admin listener). */
const char *admin_addresses(const struct admin *a);

/*
 * A readiness check: true when ready; else false with a one-line reason in `why` (no secret).
 * Checks run in the order added, on every GET /readyz, from the event loop: they must answer
 * from state they keep, at once. At most ADMIN_MAX_CHECKS; `name` must outlive the admin.
 */
#define ADMIN_MAX_CHECKS 8
typedef bool (*admin_ready_fn)(void *arg, char *why, size_t why_len);
void admin_add_ready_check(struct admin *a, const char *name, admin_ready_fn fn, void *arg);

/*
 * A route of another module (OAuth install, ...): `path` matched exactly, without the query.
 * The handler answers the request exactly once (it may do so later, from the loop).
 * Built-in routes come first; at most ADMIN_MAX_ROUTES added; `path` must outlive the admin.
 * Returns 0, -EEXIST for a path already routed, -ENOSPC when full.
 */
#define ADMIN_MAX_ROUTES   16
#define ADMIN_ROUTE_PUBLIC 0x1u /* no admin key required (e.g. an OAuth redirect target) */
#define ADMIN_ROUTE_POST   0x2u /* POST accepted as well as GET and HEAD */
typedef void (*admin_route_fn)(struct evhttp_request *req, void *arg);
int admin_add_route(struct admin *a, const char *path, unsigned flags, admin_route_fn fn,
                    void *arg);

/*
 * The "tokens" array of /status: fn appends one JSON object per token it manages to `tokens`.
 * Only these members are kept (anything else, a token or a secret, is dropped by admin.c):
 *   resource, user_type, app, state, access_expires_ms, refresh_due_ms, updated_ms,
 *   generation, last_error, location_id, company_id, scope
 * String values longer than 256 bytes are dropped too. Times are wall-clock ms since the epoch.
 */
typedef void (*admin_token_status_fn)(void *arg, json_t *tokens);
void admin_set_token_status_fn(struct admin *a, admin_token_status_fn fn, void *arg);

#endif
