/*
 * admin.c: the admin endpoints (see admin.h). Requests come through server.c like the proxy's
 * (the same guard and limits, no body), are routed by exact path through the table below (then
 * the routes other modules added), checked for the admin key, and answered here at once.
 *
 * /status reads the limiter's keys (limiter_foreach_key) and the proxy's counters; the token
 * entries come from the OAuth code's callback and pass through an allowlist of members, so a
 * token can never leak through it. Its size is bounded: at most STATUS_MAX_KEYS keys, the
 * busiest first (most waiting, then most used in the window, then in the day).
 */
#include "admin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "build_config.h"
#include "config.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "server.h"
#include "status_page.h"
#include "upstream.h"
#include "util.h"

#define STATUS_MAX_KEYS  500
#define KEY_FILE_MAX     4096
#define TOKEN_STRING_MAX 256
#define AUTH_HEADER_MAX  8192

struct ready_check {
	const char *name;
	admin_ready_fn fn;
	void *arg;
};

struct admin;
typedef void (*builtin_fn)(struct admin *a, struct evhttp_request *req);

struct route {
	const char *path;
	unsigned flags; /* ADMIN_ROUTE_* */
	builtin_fn builtin;
	admin_route_fn fn;
	void *arg;
};

struct admin {
	struct server *srv;
	struct proxy *px;
	struct server *proxy_srv;
	const struct config *cfg;
	struct ready_check checks[ADMIN_MAX_CHECKS];
	int n_checks;
	struct route routes[ADMIN_MAX_ROUTES];
	int n_routes;
	admin_token_status_fn token_fn;
	void *token_arg;
	char *key; /* admin.key_file's content, or NULL: no key required */
	size_t key_len;
	int64_t started_wall_ms;
};

/* ---- answers ---- */

static void reply(struct evhttp_request *req, int status, const char *ctype, struct evbuffer *b)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);

	evhttp_add_header(out, "Content-Type", ctype);
	evhttp_add_header(out, "Cache-Control", "no-store");
	evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
	evhttp_send_reply(req, status, server_reason(status), b);
}

static void reply_text(struct evhttp_request *req, int status, const char *ctype, const char *s,
                       size_t len)
{
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		server_send_error(req, 503, "out of memory", true);
		return;
	}
	evbuffer_add(b, s, len);
	reply(req, status, ctype, b);
	evbuffer_free(b);
}

/* Answer a JSON document (consumed). */
static void reply_json(struct evhttp_request *req, int status, json_t *root)
{
	char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;

	json_decref(root);
	if (!s) {
		server_send_error(req, 503, "out of memory", true);
		return;
	}
	reply_text(req, status, "application/json", s, strlen(s));
	free(s);
}

/* ---- the admin key ---- */

static int read_key(const struct config *cfg, char **key, size_t *len)
{
	*key = NULL;
	*len = 0;
	if (!cfg->admin.key_file || !*cfg->admin.key_file)
		return 0;
	int rc = util_read_small_file(cfg->admin.key_file, KEY_FILE_MAX, key, len);
	if (rc < 0)
		return rc;
	if (*len == 0) {
		free(*key);
		*key = NULL;
		return -ENODATA;
	}
	return 0;
}

/* The password part of "Basic base64(user:password)", decoded into buf. */
static bool basic_password(const char *b64, char *buf, size_t buf_len, const char **pw,
                           size_t *pw_len)
{
	size_t n = strlen(b64), pad = 0;

	while (n > 0 && b64[n - 1] == ' ')
		n--;
	if (n == 0 || n % 4 != 0 || n / 4 * 3 + 1 > buf_len)
		return false;
	int out = EVP_DecodeBlock((unsigned char *)buf, (const unsigned char *)b64, (int)n);
	if (out < 0)
		return false;
	pad = (b64[n - 1] == '=') + (n > 1 && b64[n - 2] == '=');
	size_t dlen = (size_t)out - pad;
	const char *colon = memchr(buf, ':', dlen);
	if (!colon)
		return false;
	*pw = colon + 1;
	*pw_len = dlen - (size_t)(colon + 1 - buf);
	return true;
}

static bool authorized(const struct admin *a, struct evhttp_request *req)
{
	const char *auth =
	        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	char buf[AUTH_HEADER_MAX];
	const char *given = NULL;
	size_t given_len = 0;
	bool ok = false;

	if (!a->key)
		return true;
	if (!auth)
		return false;
	if (util_strncaseeq(auth, "Bearer ", 7)) {
		given = auth + 7;
		while (*given == ' ')
			given++;
		given_len = strlen(given);
		while (given_len > 0 && given[given_len - 1] == ' ')
			given_len--;
	} else if (util_strncaseeq(auth, "Basic ", 6)) {
		const char *b64 = auth + 6;
		while (*b64 == ' ')
			b64++;
		if (!basic_password(b64, buf, sizeof(buf), &given, &given_len))
			given = NULL;
	}
	if (given)
		ok = util_ct_equal(given, given_len, a->key, a->key_len);
	OPENSSL_cleanse(buf, sizeof(buf));
	return ok;
}

static void refuse_unauthorized(struct evhttp_request *req)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);

	/* Basic: a browser opening /status.html asks for the key by itself. */
	evhttp_add_header(out, "WWW-Authenticate",
	                  "Basic realm=\"ghlproxy admin\", charset=\"UTF-8\"");
	server_send_error(req, 401, "the admin key is required (admin.key_file)", false);
}

/* ---- /healthz, /readyz, /metrics ---- */

static void handle_healthz(struct admin *a, struct evhttp_request *req)
{
	UNUSED(a);
	reply_text(req, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void handle_readyz(struct admin *a, struct evhttp_request *req)
{
	json_t *root = json_object(), *failing = json_array();
	bool ok = true;

	if (a->px->draining) {
		ok = false;
		json_array_append_new(failing, json_pack("{s:s,s:s}", "check", "draining", "reason",
		                                         "the proxy is shutting down"));
	}
	for (int i = 0; i < a->n_checks; i++) {
		char why[256] = "";
		if (a->checks[i].fn(a->checks[i].arg, why, sizeof(why)))
			continue;
		ok = false;
		json_array_append_new(failing, json_pack("{s:s,s:s}", "check", a->checks[i].name,
		                                         "reason", why[0] ? why : "not ready"));
	}
	json_object_set_new(root, "ready", json_boolean(ok));
	json_object_set_new(root, "failing", failing);
	reply_json(req, ok ? 200 : 503, root);
}

/* Gauges that describe a state are read when someone looks. */
static void update_gauges(struct admin *a)
{
	struct limiter_stats ls;
	struct upstream_stats s1 = { 0 }, s2 = { 0 };

	limiter_get_stats(a->px->limiter, &ls);
	metrics_set(M_QUEUE_DEPTH, ls.n_waiting);
	metrics_set(M_KEYS, ls.n_keys);
	metrics_set(M_CONNECTIONS, a->proxy_srv ? server_n_connections(a->proxy_srv) : 0);
	metrics_set(M_IN_FLIGHT, a->px->n_active);
	metrics_set(M_DRAINING, a->px->draining ? 1 : 0);
	if (a->px->up_v2)
		upstream_get_stats(a->px->up_v2, &s1);
	if (a->px->up_v1)
		upstream_get_stats(a->px->up_v1, &s2);
	metrics_set(M_UP_CONNS, s1.n_conns + s2.n_conns);
}

static void handle_metrics(struct admin *a, struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		server_send_error(req, 503, "out of memory", true);
		return;
	}
	update_gauges(a);
	metrics_render(b);
	reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
	evbuffer_free(b);
}

/* ---- /status ---- */

struct key_list {
	struct limiter_key_info *v;
	size_t n, cap;
	bool oom;
};

static void collect_key(const struct limiter_key_info *ki, void *arg)
{
	struct key_list *kl = arg;

	if (kl->oom)
		return;
	if (kl->n == kl->cap) {
		size_t cap = kl->cap ? kl->cap * 2 : 64;
		struct limiter_key_info *v = realloc(kl->v, cap * sizeof(*v));
		if (!v) {
			kl->oom = true;
			return;
		}
		kl->v = v;
		kl->cap = cap;
	}
	/* ki->name stays valid until the limiter's next sweep, after this handler returns. */
	kl->v[kl->n++] = *ki;
}

/* Busiest first: most waiting, most used in the window, in the day; then by name. */
static int cmp_keys(const void *pa, const void *pb)
{
	const struct limiter_key_info *a = pa, *b = pb;

	if (a->n_waiting != b->n_waiting)
		return a->n_waiting > b->n_waiting ? -1 : 1;
	if (a->burst_used != b->burst_used)
		return a->burst_used > b->burst_used ? -1 : 1;
	if (a->daily_used != b->daily_used)
		return a->daily_used > b->daily_used ? -1 : 1;
	return strcmp(a->name, b->name);
}

static const char *source_name(enum limiter_source s)
{
	return s == LIMIT_FROM_UPSTREAM ? "headers" : "config";
}

/*
 * A key's name is "<app>:<resource>" (classify.h): "pit.<fingerprint>:<res>" counts one PIT's
 * window, "pit:<res>" the day its resource's PITs share; every other key counts both.
 */
static json_t *key_to_json(const struct limiter_key_info *ki, int64_t now_wall_ms)
{
	const char *colon = strchr(ki->name, ':');
	size_t app_len = colon ? (size_t)(colon - ki->name) : 0;
	const char *scope = "both";
	json_t *k = json_object();

	json_object_set_new(k, "key", json_string(ki->name));
	if (app_len > 4 && strncmp(ki->name, "pit.", 4) == 0) {
		json_object_set_new(k, "app", json_string("pit"));
		json_object_set_new(k, "credential", json_stringn(ki->name + 4, app_len - 4));
		scope = "burst";
	} else {
		json_object_set_new(k, "app", json_stringn(ki->name, app_len));
		if (app_len == 3 && strncmp(ki->name, "pit", 3) == 0)
			scope = "daily";
	}
	json_object_set_new(k, "resource", json_string(colon ? colon + 1 : ki->name));
	json_object_set_new(k, "scope", json_string(scope));
	json_object_set_new(k, "shared", json_boolean(ki->shared));
	json_object_set_new(k, "burst",
	                    json_pack("{s:I,s:I,s:I,s:I,s:s}", "limit", (json_int_t)ki->burst_max,
	                              "window_ms", (json_int_t)ki->window_ms, "used",
	                              (json_int_t)ki->burst_used, "remaining",
	                              (json_int_t)(ki->burst_used >= ki->burst_max
	                                                   ? 0
	                                                   : ki->burst_max - ki->burst_used),
	                              "source", source_name(ki->burst_source)));
	json_t *daily = json_pack(
	        "{s:I,s:I,s:I,s:s}", "limit", (json_int_t)ki->daily_max, "used",
	        (json_int_t)ki->daily_used, "remaining",
	        (json_int_t)(ki->daily_used >= ki->daily_max ? 0 : ki->daily_max - ki->daily_used),
	        "source", source_name(ki->daily_source));
	if (daily && ki->hl_daily_remaining >= 0)
		json_object_set_new(daily, "upstream_remaining",
		                    json_integer(ki->hl_daily_remaining));
	json_object_set_new(k, "daily", daily);
	json_object_set_new(k, "queue", json_integer(ki->n_waiting));
	json_object_set_new(k, "blocked_ms", json_integer(ki->blocked_for_ms));
	json_object_set_new(k, "blocked_until_ms",
	                    ki->blocked_for_ms > 0 ? json_integer(now_wall_ms + ki->blocked_for_ms)
	                                           : json_null());
	return k;
}

/* Members a token entry may show (admin.h); everything else is dropped. */
static const char *const token_members[] = {
	"resource",          "user_type",      "app",        "state",
	"access_expires_ms", "refresh_due_ms", "updated_ms", "generation",
	"last_error",        "location_id",    "company_id", "scope",
};

static bool token_member_allowed(const char *name, json_t *v)
{
	bool listed = false;

	for (size_t i = 0; i < ARRAY_SIZE(token_members); i++)
		if (strcmp(name, token_members[i]) == 0)
			listed = true;
	if (!listed)
		return false;
	if (json_is_string(v))
		return json_string_length(v) <= TOKEN_STRING_MAX;
	return json_is_integer(v) || json_is_real(v) || json_is_boolean(v) || json_is_null(v);
}

static json_t *tokens_to_json(struct admin *a)
{
	json_t *raw = json_array(), *out = json_array();
	size_t i;
	json_t *t;

	if (a->token_fn && raw)
		a->token_fn(a->token_arg, raw);
	json_array_foreach(raw, i, t)
	{
		if (!json_is_object(t))
			continue;
		json_t *clean = json_object();
		const char *name;
		json_t *v;
		json_object_foreach(t, name, v)
		{
			if (token_member_allowed(name, v))
				json_object_set(clean, name, v);
		}
		json_array_append_new(out, clean);
	}
	json_decref(raw);
	return out;
}

static void handle_status(struct admin *a, struct evhttp_request *req)
{
	struct key_list kl = { 0 };
	struct limiter_stats ls;
	int64_t now_wall = util_wall_ms();
	json_t *root = json_object(), *keys = json_array();

	limiter_get_stats(a->px->limiter, &ls);
	limiter_foreach_key(a->px->limiter, collect_key, &kl);
	if (kl.n > 1)
		qsort(kl.v, kl.n, sizeof(*kl.v), cmp_keys);
	size_t shown = MIN(kl.n, (size_t)STATUS_MAX_KEYS);
	/* cppcheck does not see collect_key fill kl through limiter_foreach_key */
	/* cppcheck-suppress knownConditionTrueFalse */
	for (size_t i = 0; i < shown; i++)
		json_array_append_new(keys, key_to_json(&kl.v[i], now_wall));
	free(kl.v);

	json_object_set_new(root, "version", json_string(GHLPROXY_VERSION));
	json_object_set_new(
	        root, "mode",
	        json_string(a->cfg->server.mode == CONFIG_MODE_INJECT ? "inject" : "passthrough"));
	json_object_set_new(root, "backend",
	                    json_string(limiter_uses_redis(a->px->limiter) ? "redis" : "local"));
	if (limiter_uses_redis(a->px->limiter))
		json_object_set_new(root, "redis_up",
		                    json_boolean(limiter_shared_up(a->px->limiter)));
	json_object_set_new(root, "draining", json_boolean(a->px->draining));
	json_object_set_new(root, "now_ms", json_integer(now_wall));
	json_object_set_new(root, "started_ms", json_integer(a->started_wall_ms));
	json_object_set_new(root, "queue_depth", json_integer(ls.n_waiting));
	json_object_set_new(root, "in_flight", json_integer(a->px->n_active));
	json_object_set_new(root, "upstream_429", json_integer((json_int_t)metrics_get(M_UP_429)));
	json_object_set_new(root, "keys_total", json_integer(ls.n_keys));
	json_object_set_new(root, "keys_shown", json_integer((json_int_t)shown));
	json_object_set_new(root, "keys", keys);
	json_object_set_new(root, "tokens", tokens_to_json(a));
	reply_json(req, 200, root);
}

static void handle_status_page(struct admin *a, struct evhttp_request *req)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);

	UNUSED(a);
	/* The page needs nothing but itself and /status: say so to the browser. */
	evhttp_add_header(out, "Content-Security-Policy",
	                  "default-src 'none'; script-src 'unsafe-inline'; "
	                  "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
	                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
	evhttp_add_header(out, "Referrer-Policy", "no-referrer");
	reply_text(req, 200, "text/html; charset=utf-8", status_page_html,
	           sizeof(status_page_html) - 1);
}

/* ---- routing ---- */

static const struct route builtin_routes[] = {
	{ "/healthz", ADMIN_ROUTE_PUBLIC, handle_healthz, NULL, NULL },
	{ "/readyz", ADMIN_ROUTE_PUBLIC, handle_readyz, NULL, NULL },
	{ "/metrics", 0, handle_metrics, NULL, NULL },
	{ "/status", 0, handle_status, NULL, NULL },
	{ "/status.html", 0, handle_status_page, NULL, NULL },
};

static const struct route *find_route(const struct admin *a, const char *path, size_t len)
{
	for (size_t i = 0; i < ARRAY_SIZE(builtin_routes); i++)
		if (strlen(builtin_routes[i].path) == len &&
		    memcmp(builtin_routes[i].path, path, len) == 0)
			return &builtin_routes[i];
	for (int i = 0; i < a->n_routes; i++)
		if (strlen(a->routes[i].path) == len && memcmp(a->routes[i].path, path, len) == 0)
			return &a->routes[i];
	return NULL;
}

static void on_admin_request(struct server_conn *conn, struct evhttp_request *req, void *arg)
{
	struct admin *a = arg;
	const char *uri = evhttp_request_get_uri(req);
	size_t plen = uri ? strcspn(uri, "?") : 0;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	const struct route *r = uri ? find_route(a, uri, plen) : NULL;

	UNUSED(conn);
	if (!r) {
		server_send_error(req, 404, "no such admin endpoint", false);
		return;
	}
	if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD &&
	    !(m == EVHTTP_REQ_POST && (r->flags & ADMIN_ROUTE_POST))) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
		                  r->flags & ADMIN_ROUTE_POST ? "GET, HEAD, POST" : "GET, HEAD");
		server_send_error(req, 405, "method not allowed on this admin endpoint", false);
		return;
	}
	if (!(r->flags & ADMIN_ROUTE_PUBLIC) && !authorized(a, req)) {
		refuse_unauthorized(req);
		return;
	}
	if (r->builtin)
		r->builtin(a, req);
	else
		r->fn(req, r->arg);
}

/* ---- public ---- */

struct admin *admin_new(struct event_base *base, const struct config *cfg, struct proxy *px,
                        struct server *proxy_srv, char *err, size_t err_len)
{
	struct admin *a;
	struct server_limits lim;
	int rc;

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
	a->started_wall_ms = util_wall_ms();
	rc = read_key(cfg, &a->key, &a->key_len);
	if (rc < 0) {
		snprintf(err, err_len, "admin.key_file %s: %s", cfg->admin.key_file,
		         rc == -ENODATA ? "empty" : strerror(-rc));
		free(a);
		return NULL;
	}
	server_limits_from_config(&lim, cfg);
	lim.max_body = 0;
	a->srv = server_new(base, "admin", cfg->server.admin_listen, &lim, cfg,
	                    cfg->server.allow_remote || *cfg->admin.key_file, on_admin_request, a,
	                    err, err_len);
	if (!a->srv) {
		admin_free(a);
		return NULL;
	}
	return a;
}

void admin_free(struct admin *a)
{
	if (!a)
		return;
	server_free(a->srv);
	if (a->key)
		util_wipe_free(a->key, a->key_len);
	free(a);
}

int admin_set_config(struct admin *a, const struct config *cfg)
{
	char *key;
	size_t len;

	if (!a)
		return 0;
	/* The listener may be off loopback because of the key: it cannot go away under it. */
	if (a->key && (!cfg->admin.key_file || !*cfg->admin.key_file))
		return -EPERM;
	int rc = read_key(cfg, &key, &len);
	if (rc < 0)
		return rc == -ENODATA ? -EINVAL : rc;
	a->cfg = cfg;
	if (a->key)
		util_wipe_free(a->key, a->key_len);
	a->key = key;
	a->key_len = len;
	return 0;
}

const char *admin_addresses(const struct admin *a)
{
	return a ? server_addresses(a->srv) : "";
}

void admin_add_ready_check(struct admin *a, const char *name, admin_ready_fn fn, void *arg)
{
	if (!a)
		return;
	if (a->n_checks == ADMIN_MAX_CHECKS) {
		log_error("admin: too many readiness checks, '%s' ignored", name);
		return;
	}
	a->checks[a->n_checks++] = (struct ready_check){ name, fn, arg };
}

int admin_add_route(struct admin *a, const char *path, unsigned flags, admin_route_fn fn, void *arg)
{
	if (!a)
		return 0;
	if (find_route(a, path, strlen(path)))
		return -EEXIST;
	if (a->n_routes == ADMIN_MAX_ROUTES)
		return -ENOSPC;
	a->routes[a->n_routes++] = (struct route){ path, flags, NULL, fn, arg };
	return 0;
}

void admin_set_token_status_fn(struct admin *a, admin_token_status_fn fn, void *arg)
{
	if (!a)
		return;
	a->token_fn = fn;
	a->token_arg = arg;
}
