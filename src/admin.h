/*
 * admin.h: the admin listener (server.admin_listen, loopback by default): /healthz, /readyz,
 * /metrics (Prometheus text), /status (JSON) and /status.html. It never shows a secret.
 */
#ifndef GHLPROXY_ADMIN_H
#define GHLPROXY_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct proxy;
struct server;
struct config;
struct admin;

/* A readiness check: fills `why` and returns false when not ready. */
typedef bool (*admin_ready_fn)(void *arg, char *why, size_t why_len);

/* NULL with err set on failure; NULL without error when admin_listen is empty. */
struct admin *admin_new(struct event_base *base, const struct config *cfg, struct proxy *px,
                        struct server *proxy_srv, char *err, size_t err_len);
void admin_free(struct admin *a);

/* Add a readiness check (upstream resolvable, Redis reachable, token store writable...). */
void admin_add_ready_check(struct admin *a, const char *name, admin_ready_fn fn, void *arg);

const char *admin_addresses(const struct admin *a);
void admin_set_config(struct admin *a, const struct config *cfg);

#endif
