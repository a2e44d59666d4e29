/*
 * admin.c: the admin endpoints. Requests come through server.c like the proxy's (the same guard
 * and limits), and are answered here at once.
 */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "config.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "server.h"
#include "upstream.h"
#include "util.h"

#define MAX_CHECKS 8

struct ready_check {
	const char *name;
	admin_ready_fn fn;
	void *arg;
};

struct admin {
	struct server *srv;
	struct proxy *px;
	struct server *proxy_srv;
	const struct config *cfg;
	struct ready_check checks[MAX_CHECKS];
	int n_checks;
};

static void reply(struct evhttp_request *req, int status, const char *ctype, struct evbuffer *b)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);

	evhttp_add_header(out, "Content-Type", ctype);
	evhttp_add_header(out, "Cache-Control", "no-store");
	evhttp_send_reply(req, status, server_reason(status), b);
}

static void update_gauges(struct admin *a)
{
	struct limiter_stats ls;
	struct upstream_stats s1, s2;

	limiter_get_stats(a->px->limiter, &ls);
	metrics_set(M_QUEUE_DEPTH, ls.n_waiting);
	metrics_set(M_KEYS, ls.n_keys);
	metrics_set(M_CONNECTIONS, a->proxy_srv ? server_n_connections(a->proxy_srv) : 0);
	metrics_set(M_IN_FLIGHT, a->px->n_active);
	upstream_get_stats(a->px->up_v2, &s1);
	upstream_get_stats(a->px->up_v1, &s2);
	metrics_set(M_UP_CONNS, s1.n_conns + s2.n_conns);
}

static void key_to_json(const struct limiter_key_info *ki, void *arg)
{
	json_t *keys = arg;
	const char *colon = strrchr(ki->name, ':');
	json_t *k = json_object();

	json_object_set_new(k, "key", json_string(ki->name));
	/* "<app>:<resource>": the app part, and the resource id (or per-credential bucket). */
	json_object_set_new(k, "app",
	                    json_stringn(ki->name, colon ? (size_t)(colon - ki->name) : 0));
	json_object_set_new(k, "resource", json_string(colon ? colon + 1 : ki->name));
	json_object_set_new(
	        k, "burst",
	        json_pack(
	                "{s:I,s:I,s:I,s:I,s:s}", "limit", (json_int_t)ki->burst_max, "window_ms",
	                (json_int_t)ki->window_ms, "used", (json_int_t)ki->burst_used, "remaining",
	                (json_int_t)(ki->burst_used >= ki->burst_max
	                                     ? 0
	                                     : ki->burst_max - ki->burst_used),
	                "source", ki->burst_source == LIMIT_FROM_UPSTREAM ? "upstream" : "config"));
	json_t *daily = json_pack(
	        "{s:I,s:I,s:I,s:s}", "limit", (json_int_t)ki->daily_max, "used",
	        (json_int_t)ki->daily_used, "remaining",
	        (json_int_t)(ki->daily_used >= ki->daily_max ? 0 : ki->daily_max - ki->daily_used),
	        "source", ki->daily_source == LIMIT_FROM_UPSTREAM ? "upstream" : "config");
	if (ki->hl_daily_remaining >= 0)
		json_object_set_new(daily, "upstream_remaining",
		                    json_integer(ki->hl_daily_remaining));
	json_object_set_new(k, "daily", daily);
	json_object_set_new(k, "queue", json_integer(ki->n_waiting));
	json_object_set_new(k, "blocked_ms", json_integer(ki->blocked_for_ms));
	json_array_append_new(keys, k);
}

static void handle_status(struct admin *a, struct evhttp_request *req)
{
	json_t *root = json_object(), *keys = json_array();
	struct limiter_stats ls;

	limiter_get_stats(a->px->limiter, &ls);
	limiter_foreach_key(a->px->limiter, key_to_json, keys);
	json_object_set_new(root, "keys", keys);
	json_object_set_new(root, "queue_depth", json_integer(ls.n_waiting));
	json_object_set_new(root, "in_flight", json_integer(a->px->n_active));
	json_object_set_new(root, "upstream_429", json_integer((json_int_t)metrics_get(M_UP_429)));
	json_object_set_new(
	        root, "mode",
	        json_string(a->cfg->server.mode == CONFIG_MODE_INJECT ? "inject" : "passthrough"));
	char *s = json_dumps(root, JSON_COMPACT);
	struct evbuffer *b = evbuffer_new();
	if (s && b)
		evbuffer_add(b, s, strlen(s));
	reply(req, 200, "application/json", b);
	if (b)
		evbuffer_free(b);
	free(s);
	json_decref(root);
}

static void handle_ready(struct admin *a, struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();
	bool ok = true;
	json_t *root = json_object(), *reasons = json_array();

	for (int i = 0; i < a->n_checks; i++) {
		char why[256] = "";
		if (!a->checks[i].fn(a->checks[i].arg, why, sizeof(why))) {
			ok = false;
			json_array_append_new(reasons, json_pack("{s:s,s:s}", "check",
			                                         a->checks[i].name, "reason", why));
		}
	}
	json_object_set_new(root, "ready", json_boolean(ok));
	json_object_set_new(root, "failing", reasons);
	char *s = json_dumps(root, JSON_COMPACT);
	if (s && b)
		evbuffer_add(b, s, strlen(s));
	reply(req, ok ? 200 : 503, "application/json", b);
	if (b)
		evbuffer_free(b);
	free(s);
	json_decref(root);
}

static void on_admin_request(struct server_conn *conn, struct evhttp_request *req, void *arg)
{
	struct admin *a = arg;
	const char *uri = evhttp_request_get_uri(req);
	size_t plen = uri ? strcspn(uri, "?") : 0;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);

	if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
		server_send_error(req, 405, "the admin endpoints answer GET only", false);
		return;
	}
	if (plen == 8 && strncmp(uri, "/healthz", 8) == 0) {
		struct evbuffer *b = evbuffer_new();
		if (b)
			evbuffer_add(b, "ok\n", 3);
		reply(req, 200, "text/plain", b);
		if (b)
			evbuffer_free(b);
	} else if (plen == 7 && strncmp(uri, "/readyz", 7) == 0) {
		handle_ready(a, req);
	} else if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
		struct evbuffer *b = evbuffer_new();
		update_gauges(a);
		if (b)
			metrics_render(b);
		reply(req, 200, "text/plain; version=0.0.4", b);
		if (b)
			evbuffer_free(b);
	} else if (plen == 7 && strncmp(uri, "/status", 7) == 0) {
		handle_status(a, req);
	} else {
		server_send_error(req, 404, "no such admin endpoint", false);
	}
}

struct admin *admin_new(struct event_base *base, const struct config *cfg, struct proxy *px,
                        struct server *proxy_srv, char *err, size_t err_len)
{
	struct admin *a;
	struct server_limits lim;

	err[0] = '\0';
	if (!cfg->server.admin_listen || !*cfg->server.admin_listen)
		return NULL;
	a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	a->px = px;
	a->proxy_srv = proxy_srv;
	a->cfg = cfg;
	server_limits_from_config(&lim, cfg);
	lim.max_body = 0;
	a->srv = server_new(base, "admin", cfg->server.admin_listen, &lim, cfg,
	                    cfg->server.allow_remote || *cfg->admin.key_file, on_admin_request, a,
	                    err, err_len);
	if (!a->srv) {
		free(a);
		return NULL;
	}
	return a;
}

void admin_free(struct admin *a)
{
	if (!a)
		return;
	server_free(a->srv);
	free(a);
}

void admin_add_ready_check(struct admin *a, const char *name, admin_ready_fn fn, void *arg)
{
	if (a && a->n_checks < MAX_CHECKS)
		a->checks[a->n_checks++] = (struct ready_check){ name, fn, arg };
}

const char *admin_addresses(const struct admin *a)
{
	return a ? server_addresses(a->srv) : "";
}

void admin_set_config(struct admin *a, const struct config *cfg)
{
	if (a)
		a->cfg = cfg;
}
