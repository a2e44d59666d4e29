/*
 * test_oauth.c: inject mode against the mock's strict OAuth (single-use rotating refresh tokens,
 * short-lived access tokens, 401 "Invalid JWT" once expired): requests always carry a live token,
 * no refresh token is ever spent twice, across restarts, SIGKILL and proxies sharing Redis; the
 * install callback; PITs and API keys injected and rotated on reload; clear 401s; no secret in
 * logs, /status, /metrics or next to the store.
 */
#define _GNU_SOURCE /* asprintf */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "fixture.h"
#include "httpc.h"

#define CLIENT_ID     "0123456789abcdef01234567-k3xq9"
#define CLIENT_SECRET "mock-client-secret-7c1e55"
#define MOCK_OAUTH(ttl)                                                        \
	"--oauth-client-id " CLIENT_ID " --oauth-client-secret " CLIENT_SECRET \
	" --oauth-access-ttl-ms " ttl

static struct fixture fx;
static struct harness_proc *redis;
static char redis_sock[300];

static void stop(void)
{
	if (fx.proxy) {
		int rc = fixture_stop_proxy(&fx);
		if (rc != 0) {
			char *log = harness_log(fx.proxy);
			size_t n = strlen(log);
			fprintf(stderr, "proxy exit %d, log tail:\n%s\n", rc,
			        log + (n > 4000 ? n - 4000 : 0));
			free(log);
		}
		cr_expect_eq(rc, 0, "the proxy did not exit cleanly");
	}
	harness_proc_free(redis);
	redis = NULL;
	fixture_stop(&fx);
}

TestSuite(oauth, .fini = stop, .timeout = 300);

/* ---- helpers ---- */

static json_t *ctl(const char *method, const char *path, json_t *body)
{
	struct httpc_response r = { 0 };
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	const char *hdr = text ? "Content-Type: application/json\r\n" : NULL;

	json_decref(body);
	int rc = httpc_request(fx.mock_ctl, method, path, hdr, text, text ? strlen(text) : 0, &r,
	                       10000);
	free(text);
	cr_assert_eq(rc, 0, "mock control %s failed", path);
	cr_assert(r.status >= 200 && r.status < 300, "mock control %s: %d %s", path, r.status,
	          r.body ? (const char *)r.body : "");
	json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	httpc_response_free(&r);
	return j;
}

static json_int_t stat_of(const char *name)
{
	json_t *s = ctl("GET", "/__mock/oauth/stats", NULL);
	json_int_t v = json_integer_value(json_object_get(s, name));
	json_decref(s);
	return v;
}

/* A live refresh token for a resource, from the mock (as an install would give). */
static char *seed(const char *user_type, const char *resource, const char *company)
{
	json_t *b = json_pack("{s:s, s:s}", "user_type", user_type, "resource", resource);
	if (company)
		json_object_set_new(b, "company_id", json_string(company));
	json_t *j = ctl("POST", "/__mock/oauth/seed", b);
	char *rt = strdup(json_string_value(json_object_get(j, "refresh_token")));
	harness_secret(rt);
	json_decref(j);
	return rt;
}

static json_t *entry(const char *resource, const char *user_type, const char *rt)
{
	return json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i}", "resource",
	                 resource, "user_type", user_type, "access_token", "", "access_expires_ms",
	                 0, "refresh_token", rt, "company_id", "", "location_id", "", "user_id", "",
	                 "scope", "", "state", "ok", "generation", 1, "updated_ms", 0);
}

struct install_set {
	const char *resource, *user_type;
};

/* Seed each resource at the mock and write the proxy's token store file. Returns the refresh
 * tokens (to look for in places they must not be). */
static void write_store(const char *path, const struct install_set *s, size_t n, char **rts)
{
	json_t *tokens = json_array();

	for (size_t i = 0; i < n; i++) {
		rts[i] = seed(s[i].user_type, s[i].resource, NULL);
		json_array_append_new(tokens, entry(s[i].resource, s[i].user_type, rts[i]));
	}
	json_t *file = json_pack("{s:i, s:o}", "version", 1, "tokens", tokens);
	cr_assert_eq(json_dump_file(file, path, JSON_COMPACT), 0);
	chmod(path, 0600);
	json_decref(file);
}

static void write_secret(void)
{
	harness_secret(CLIENT_SECRET);
	cr_assert_eq(harness_write_file(fx.dir, "client_secret", CLIENT_SECRET "\n"), 0);
}

static char *inject_conf(const char *extra)
{
	static char conf[2048];

	snprintf(conf, sizeof(conf),
	         "[server]\nmode = inject\n"
	         "[oauth]\nclient_id = " CLIENT_ID "\nclient_secret_file = %s/client_secret\n"
	         "redirect_uri = https://proxy.example/oauth/callback\nrefresh_ahead = 1s\n"
	         "[store]\npath = %s/tokens.json\n%s",
	         fx.dir, fx.dir, extra ? extra : "");
	return conf;
}

/* Start the mock (OAuth on, `ttl` ms tokens) and write the client secret; no proxy yet. */
static void start_mock(const char *mock_args)
{
	struct fixture_opts o = { .mock_args = mock_args, .no_proxy = true };

	fixture_start(&fx, &o);
	write_secret();
}

static int get(const char *addr, const char *target, const char *headers, struct httpc_response *r)
{
	memset(r, 0, sizeof(*r));
	return httpc_request(addr, "GET", target, headers, NULL, 0, r, 30000);
}

static struct harness_proc *spawn(const char *name, const char *extra, char *const *env, char *addr,
                                  size_t alen, char *admin, size_t adlen)
{
	struct harness_proc *p =
	        fixture_spawn_proxy(&fx, name, inject_conf(extra), env, addr, alen, admin, adlen);
	cr_assert(p, "proxy %s did not start", name);
	return p;
}

/* ---- load: 8 clients on 3 locations (one through a company token), short-lived tokens ---- */

struct load {
	const char *addrs[4];
	int n_addrs;
	int64_t end_ms;
	int ok, not_ok, unauthorized, errors;
	int last_bad_status;
	char last_bad[300];
	pthread_mutex_t lock;
};

struct client {
	pthread_t th;
	int id;
	struct load *l;
};

static const char *const locations[3] = { "LocAlpha0001", "LocBravo0002", "LocCharlie03" };

static void *client_main(void *a)
{
	struct client *c = a;
	struct load *l = c->l;
	const char *addr = l->addrs[c->id % l->n_addrs];
	char target[128];

	snprintf(target, sizeof(target), "/contacts/?locationId=%s", locations[c->id % 3]);
	while (harness_now_ms() < l->end_ms) {
		struct httpc_response r;
		int rc = get(addr, target, NULL, &r);
		pthread_mutex_lock(&l->lock);
		if (rc < 0) {
			l->errors++;
		} else if (r.status == 200) {
			l->ok++;
		} else {
			l->not_ok++;
			l->unauthorized += r.status == 401;
			l->last_bad_status = r.status;
			snprintf(l->last_bad, sizeof(l->last_bad), "%.*s", (int)r.body_len,
			         r.body ? (const char *)r.body : "");
		}
		pthread_mutex_unlock(&l->lock);
		httpc_response_free(&r);
		usleep(20000);
	}
	return NULL;
}

static void run_load(struct load *l, int64_t ms)
{
	struct client c[8];

	l->end_ms = harness_now_ms() + ms;
	pthread_mutex_init(&l->lock, NULL);
	for (int i = 0; i < 8; i++) {
		c[i] = (struct client){ .id = i, .l = l };
		pthread_create(&c[i].th, NULL, client_main, &c[i]);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(c[i].th, NULL);
	cr_log_info("load: %d ok, %d not ok (%d 401), %d errors", l->ok, l->not_ok, l->unauthorized,
	            l->errors);
	cr_expect_eq(l->errors, 0, "requests without an answer");
	cr_expect_eq(l->not_ok, 0, "requests not answered 200 (last %d: %s)", l->last_bad_status,
	             l->last_bad);
	cr_expect_eq(l->unauthorized, 0, "401s reached clients");
	cr_expect_gt(l->ok, 100);
}

static const struct install_set three[] = {
	{ "LocAlpha0001", "Location" },
	{ "LocBravo0002", "Location" },
	{ "CompanyXyz99", "Company" }, /* LocCharlie03 goes through it */
};

Test(oauth, sixty_seconds_of_two_second_tokens)
{
	char path[400], *rts[3];

	start_mock(MOCK_OAUTH("2000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, three, 3, rts);
	char addr[128], admin[128];
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	struct load l = { .addrs = { addr }, .n_addrs = 1 };
	run_load(&l, 60000);
	cr_expect_eq(stat_of("reuses"), 0, "a refresh token was spent twice");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	cr_expect_eq(stat_of("unauthorized"), 0, "HighLevel saw an expired token");
	cr_expect_geq(stat_of("refreshes"), 30, "tokens were not kept fresh");
	cr_expect_geq(stat_of("location_tokens"), 10, "no location token through the company");
	cr_expect_geq(fixture_metric_at(admin, "ghlproxy_token_refreshes_total"), 30);

	/* No secret anywhere it must not be. */
	struct httpc_response r;
	cr_assert_eq(get(admin, "/status", NULL, &r), 0);
	cr_expect(strstr((const char *)r.body, "LocAlpha0001") != NULL, "no token row in /status");
	char *metrics_log[3] = { NULL, NULL, NULL };
	metrics_log[0] = strdup((const char *)r.body);
	httpc_response_free(&r);
	cr_assert_eq(get(admin, "/metrics", NULL, &r), 0);
	metrics_log[1] = strdup((const char *)r.body);
	httpc_response_free(&r);
	metrics_log[2] = harness_log(fx.proxy);
	for (int k = 0; k < 3; k++) {
		cr_expect_null(strstr(metrics_log[k], CLIENT_SECRET), "the client secret leaked");
		cr_expect_null(strstr(metrics_log[k], "eyJ"), "a JWT leaked");
		for (int i = 0; i < 3; i++)
			cr_expect_null(strstr(metrics_log[k], rts[i]), "a refresh token leaked");
		free(metrics_log[k]);
	}
	/* The store's directory holds the store and its lock files, no temp file. */
	DIR *d = opendir(fx.dir);
	struct dirent *de;
	while ((de = readdir(d)))
		cr_expect(strncmp(de->d_name, ".tokens.json.", 13) != 0, "temp file left: %s",
		          de->d_name);
	closedir(d);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_expect_eq(st.st_mode & 0777, 0600, "store mode %o", st.st_mode & 0777);
	for (int i = 0; i < 3; i++)
		free(rts[i]);
}

/* One refresh per resource at a time: 30 requests arrive together on an expired token while the
 * token endpoint is slow. */
Test(oauth, single_flight)
{
	char path[400], *rts[1];
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };

	start_mock(MOCK_OAUTH("60000") " --oauth-delay-ms 500");
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, one, 1, rts);
	char addr[128], admin[128];
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	struct load l = { .addrs = { addr }, .n_addrs = 1 };
	/* All 8 clients on one location for 3 s. */
	(void)l;
	int fds[30];
	for (int i = 0; i < 30; i++) {
		fds[i] = httpc_connect(addr);
		cr_assert_geq(fds[i], 0);
		const char *rq =
		        "GET /contacts/?locationId=LocAlpha0001 HTTP/1.1\r\nHost: x\r\n\r\n";
		cr_assert_eq(httpc_send_all(fds[i], rq, strlen(rq)), 0);
	}
	for (int i = 0; i < 30; i++) {
		struct httpc_response r = { 0 };
		cr_expect_eq(httpc_read_response(fds[i], &r, false, 20000), 0);
		cr_expect_eq(r.status, 200, "request %d: %d %s", i, r.status,
		             r.body ? (const char *)r.body : "");
		httpc_response_free(&r);
		httpc_close(fds[i]);
	}
	cr_expect_eq(stat_of("refreshes"), 1, "more than one refresh");
	cr_expect_eq(stat_of("concurrent_max"), 1);
	cr_expect_eq(stat_of("reuses"), 0);
	free(rts[0]);
}

/* The generation of the first entry in a plain store file (0: none). */
static json_int_t store_generation(const char *path)
{
	json_t *j = json_load_file(path, 0, NULL);
	json_int_t g = json_integer_value(
	        json_object_get(json_array_get(json_object_get(j, "tokens"), 0), "generation"));
	json_decref(j);
	return g;
}

/* SIGKILL right after a refresh: the new pair was stored before it was used, so a new proxy on
 * the same store goes on without spending a dead refresh token. */
Test(oauth, killed_after_refresh_keeps_a_live_refresh_token)
{
	char path[400], *rts[1];
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };
	struct httpc_response r;

	start_mock(MOCK_OAUTH("3000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, one, 1, rts);
	for (int round = 0; round < 3; round++) {
		char addr[128], admin[128];
		struct harness_proc *p =
		        spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
		/* "Right after a refresh": the moment its new pair is in the store (the proxy
		 * stores before it uses, so this is as early as a refresh can be called done). */
		json_int_t before = store_generation(path);
		int64_t until = harness_now_ms() + 10000;
		while (store_generation(path) == before && harness_now_ms() < until) {
			cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
			cr_expect_eq(r.status, 200, "round %d: %d", round, r.status);
			httpc_response_free(&r);
		}
		cr_assert_gt(store_generation(path), before, "no refresh within 10 s");
		harness_kill(p, SIGKILL);
		cr_expect_eq(harness_wait_exit(p, 10000), 128 + SIGKILL);
		if (getenv("GHLPROXY_TEST_DUMP")) {
			char *pl = harness_log(p);
			fprintf(stderr, "round %d gen %lld:\n%s\n", round,
			        (long long)store_generation(path), pl);
			free(pl);
		}
		harness_proc_free(p);
	}
	char addr[128], admin[128];
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	for (int i = 0; i < 20; i++) {
		cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
		cr_expect_eq(r.status, 200);
		httpc_response_free(&r);
		usleep(100000);
	}
	if (stat_of("reuses") && getenv("GHLPROXY_TEST_DUMP")) {
		char *ml = fixture_mock_log(fx.mock_ctl, 0);
		json_t *all = json_loads(ml, 0, NULL), *e;
		size_t i;
		json_array_foreach(all, i, e)
		{
			json_t *oa = json_object_get(e, "oauth");
			if (oa) {
				char *t = json_dumps(oa, JSON_COMPACT);
				fprintf(stderr, "%lld %s\n",
				        (long long)json_integer_value(json_object_get(e, "t_ms")),
				        t);
				free(t);
			}
		}
		json_decref(all);
		free(ml);
		char *pl = harness_log(fx.proxy);
		fprintf(stderr, "final proxy:\n%s\n", pl);
		free(pl);
	}
	cr_expect_eq(stat_of("reuses"), 0, "a refresh token was spent twice");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	free(rts[0]);
}

/*
 * Two proxies on one store file, both under load, with tokens of 2 s: every refresh is taken by
 * one of them (the per-resource flock) while the other waits for it and takes its pair from the
 * file; the file's reads and writes run off both loops. No refresh token is spent twice, no
 * request gets a 401, and the two stay within one refresh per token life.
 */
Test(oauth, two_proxies_share_one_store_file)
{
	char path[400], *rts[3], a1[128], ad1[128], a2[128], ad2[128];

	start_mock(MOCK_OAUTH("2000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, three, 3, rts);
	fx.proxy = spawn("proxy", NULL, NULL, a1, sizeof(a1), ad1, sizeof(ad1));
	struct harness_proc *p2 = spawn("proxy2", NULL, NULL, a2, sizeof(a2), ad2, sizeof(ad2));
	struct load l = { .addrs = { a1, a2 }, .n_addrs = 2 };
	int64_t t0 = harness_now_ms();
	run_load(&l, 20000);
	int64_t secs = (harness_now_ms() - t0) / 1000 + 1;
	cr_expect_eq(stat_of("reuses"), 0, "a refresh token was spent twice");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	cr_expect_eq(stat_of("unauthorized"), 0, "HighLevel saw an expired token");
	/* Three stored resources (two locations, the company), each token refreshed 1 s before
	 * its 2 s are up: at most one refresh per resource per second between the two proxies,
	 * where both refreshing every token would be twice that. */
	json_int_t n = stat_of("refreshes");
	cr_log_info("refreshes: %lld in %lld s", (long long)n, (long long)secs);
	cr_expect_geq(n, 10, "tokens were not kept fresh");
	cr_expect_leq(n, 3 * secs + 6, "both proxies refreshed the same tokens");
	harness_kill(p2, SIGTERM);
	cr_expect_eq(harness_wait_exit(p2, 10000), 0, "proxy2 did not exit cleanly");
	harness_proc_free(p2);
	for (int i = 0; i < 3; i++)
		free(rts[i]);
}

/* ---- three proxies sharing Redis ---- */

static void redis_put(redisContext *c, const char *resource, const char *user_type, const char *rt)
{
	char key[200];
	json_t *e = entry(resource, user_type, rt);
	char *blob = json_dumps(e, JSON_COMPACT);

	snprintf(key, sizeof(key), "ghlproxy:{tok:%s}", resource);
	redisReply *rep = redisCommand(c, "HSET %s gen 1 blob %s", key, blob);
	cr_assert(rep && rep->type == REDIS_REPLY_INTEGER, "HSET failed");
	freeReplyObject(rep);
	rep = redisCommand(c, "SADD ghlproxy:tokens %s", resource);
	freeReplyObject(rep);
	free(blob);
	json_decref(e);
}

Test(oauth, three_proxies_sharing_redis)
{
	char *rts[3];
	struct harness_proc *p[3];
	char addrs[3][128], admins[3][128], extra[600];

	start_mock(MOCK_OAUTH("2000"));
	redis = fixture_redis_start(fx.dir, "redis", NULL, redis_sock, sizeof(redis_sock));
	cr_assert(redis);
	redisContext *c = redisConnectUnix(redis_sock);
	cr_assert(c && !c->err);
	for (int i = 0; i < 3; i++) {
		rts[i] = seed(three[i].user_type, three[i].resource, NULL);
		redis_put(c, three[i].resource, three[i].user_type, rts[i]);
	}
	redisFree(c);
	snprintf(extra, sizeof(extra), "[limits]\nbackend = redis\n[redis]\nurl = unix://%s\n",
	         redis_sock);
	for (int i = 0; i < 3; i++) {
		char name[16];
		snprintf(name, sizeof(name), "proxy%d", i);
		p[i] = spawn(name, extra, NULL, addrs[i], sizeof(addrs[i]), admins[i],
		             sizeof(admins[i]));
	}
	struct load l = { .addrs = { addrs[0], addrs[1], addrs[2] }, .n_addrs = 3 };
	int64_t t0 = harness_now_ms();
	run_load(&l, 60000);
	int64_t secs = (harness_now_ms() - t0) / 1000 + 1;
	cr_expect_eq(stat_of("reuses"), 0, "a refresh token was spent twice");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	cr_expect_eq(stat_of("unauthorized"), 0);
	/* As with one store file (two_proxies_share_one_store_file): at most one refresh per
	 * stored resource per second between the three proxies. */
	json_int_t n = stat_of("refreshes");
	cr_log_info("refreshes: %lld in %lld s", (long long)n, (long long)secs);
	cr_expect_geq(n, 30);
	cr_expect_leq(n, 3 * secs + 6, "several proxies refreshed the same tokens");
	for (int i = 0; i < 3; i++) {
		harness_kill(p[i], SIGTERM);
		cr_expect_eq(harness_wait_exit(p[i], 30000), 0);
		char *log = harness_log(p[i]);
		if (getenv("GHLPROXY_TEST_DUMP")) {
			char dp[300];
			snprintf(dp, sizeof(dp), "%s.proxy%d.log", getenv("GHLPROXY_TEST_DUMP"), i);
			FILE *df = fopen(dp, "w");
			if (df) {
				fputs(log, df);
				fclose(df);
			}
		}
		for (int k = 0; k < 3; k++)
			cr_expect_null(strstr(log, rts[k]), "a refresh token leaked");
		free(log);
		harness_proc_free(p[i]);
	}
	for (int i = 0; i < 3; i++)
		free(rts[i]);
}

/* ---- install ---- */

Test(oauth, install_callback_end_to_end)
{
	struct httpc_response r;
	char addr[128], admin[128];

	start_mock(MOCK_OAUTH("60000"));
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	/* Nothing installed yet: a clear 401 naming the resource. */
	cr_assert_eq(get(addr, "/contacts/?locationId=LocNew000077", NULL, &r), 0);
	cr_expect_eq(r.status, 401);
	cr_expect(strstr((const char *)r.body, "LocNew000077") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 0, "forwarded without a credential");

	/* /oauth/start sends the operator to the authorize page of this app. */
	cr_assert_eq(get(admin, "/oauth/start", NULL, &r), 0);
	cr_expect_eq(r.status, 302);
	const char *loc = httpc_header(&r, "Location");
	cr_assert(loc);
	cr_expect(strstr(loc, "client_id=" CLIENT_ID) != NULL, "%s", loc);
	cr_expect(strstr(loc, "response_type=code") != NULL, "%s", loc);
	cr_expect(strstr(loc, "redirect_uri=https%3A%2F%2Fproxy.example%2Foauth%2Fcallback") !=
	                  NULL,
	          "%s", loc);
	httpc_response_free(&r);

	harness_secret("install-code-1");
	json_decref(ctl("POST", "/__mock/oauth/code",
	                json_pack("{s:s, s:s, s:s}", "code", "install-code-1", "user_type",
	                          "Location", "resource", "LocNew000077")));
	cr_assert_eq(get(admin, "/oauth/callback?code=install-code-1", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "%s", r.body);
	cr_expect(strstr((const char *)r.body, "LocNew000077") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("code_exchanges"), 1);

	cr_assert_eq(get(addr, "/contacts/?locationId=LocNew000077", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "%s", r.body);
	httpc_response_free(&r);

	/* A spent code: a clear error page, nothing stored twice. */
	cr_assert_eq(get(admin, "/oauth/callback?code=install-code-1", NULL, &r), 0);
	cr_expect_eq(r.status, 502);
	httpc_response_free(&r);
	cr_assert_eq(get(admin, "/oauth/callback", NULL, &r), 0);
	cr_expect_eq(r.status, 400);
	httpc_response_free(&r);
}

struct callback_call {
	const char *admin;
	const char *target;
	struct httpc_response r;
	int rc;
};

static void *callback_main(void *arg)
{
	struct callback_call *c = arg;

	c->rc = get(c->admin, c->target, NULL, &c->r);
	return NULL;
}

/* The proxy keeps answering while the store's lock is held elsewhere: /healthz ten times, each
 * within 2 s. */
static void expect_answering_while_locked(const char *admin)
{
	struct httpc_response r;

	for (int i = 0; i < 10; i++) {
		memset(&r, 0, sizeof(r));
		cr_assert_eq(httpc_request(admin, "GET", "/healthz", NULL, NULL, 0, &r, 2000), 0,
		             "the proxy stopped answering while the store was locked elsewhere");
		cr_expect_eq(r.status, 200);
		httpc_response_free(&r);
		usleep(100 * 1000);
	}
}

/* An install under way, its pair's write waiting for the store's lock, held here: a proxy on
 * the mock (extra: its configuration), the code seeded for `resource`, the lock taken, then
 * /oauth/callback from th (its answer in cb) until the code is exchanged. Returns the lock's fd;
 * path gets the store's. */
struct pending_install {
	char addr[128], admin[128], path[400], target[100];
	struct callback_call cb;
	pthread_t th;
};

static int install_with_store_locked(struct pending_install *pi, const char *extra,
                                     const char *code, const char *resource)
{
	char lock_path[450];

	start_mock(MOCK_OAUTH("60000"));
	fx.proxy = spawn("proxy", extra, NULL, pi->addr, sizeof(pi->addr), pi->admin,
	                 sizeof(pi->admin));
	snprintf(pi->path, sizeof(pi->path), "%s/tokens.json", fx.dir);
	snprintf(lock_path, sizeof(lock_path), "%s.lock", pi->path);
	harness_secret(code);
	json_decref(ctl("POST", "/__mock/oauth/code",
	                json_pack("{s:s, s:s, s:s}", "code", code, "user_type", "Location",
	                          "resource", resource)));
	int lfd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(flock(lfd, LOCK_EX), 0);

	snprintf(pi->target, sizeof(pi->target), "/oauth/callback?code=%s", code);
	pi->cb.admin = pi->admin;
	pi->cb.target = pi->target;
	cr_assert_eq(pthread_create(&pi->th, NULL, callback_main, &pi->cb), 0);
	int64_t until = harness_now_ms() + 10000;
	while (stat_of("code_exchanges") < 1 && harness_now_ms() < until)
		usleep(20000);
	cr_assert_eq(stat_of("code_exchanges"), 1, "the install code was not exchanged");
	return lfd;
}

/*
 * An install while the store's lock is held by another process (`ghlproxy token import`,
 * another proxy writing the store): the install's write waits for the lock on the file's helper
 * thread, the proxy answers meanwhile, and the install page comes once the pair is stored.
 * (Before, the write waited on the event loop: nothing was answered, /healthz included, until
 * the lock was released.)
 */
Test(oauth, install_waits_for_a_store_lock_held_elsewhere)
{
	struct httpc_response r;
	struct pending_install pi = { 0 };
	int lfd = install_with_store_locked(&pi, NULL, "install-code-2", "LocNew000078");

	expect_answering_while_locked(pi.admin);
	char *stored = harness_read_file(pi.path, NULL);
	cr_expect(!stored || !strstr(stored, "LocNew000078"),
	          "stored through a lock held elsewhere");
	free(stored);

	close(lfd); /* the lock is free: the waiting write goes through, then the page */
	cr_assert_eq(pthread_join(pi.th, NULL), 0);
	cr_assert_eq(pi.cb.rc, 0, "the install page never came");
	cr_expect_eq(pi.cb.r.status, 200, "%s", pi.cb.r.body);
	cr_expect(strstr((const char *)pi.cb.r.body, "LocNew000078") != NULL, "%s", pi.cb.r.body);
	httpc_response_free(&pi.cb.r);
	stored = harness_read_file(pi.path, NULL);
	cr_expect(stored && strstr(stored, "LocNew000078"), "the install was not stored");
	free(stored);
	cr_assert_eq(get(pi.addr, "/contacts/?locationId=LocNew000078", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "%s", r.body);
	httpc_response_free(&r);
}

/*
 * SIGTERM while an install's write waits for a store lock held elsewhere: the drain waits for the
 * install (its code is spent), and at its deadline the page says the install was not confirmed,
 * before the admin connection goes. (Before, the page was written to a freed connection at exit,
 * and the proxy aborted.)
 */
Test(oauth, install_under_way_at_exit_is_answered)
{
	struct pending_install pi = { 0 };
	int lfd = install_with_store_locked(&pi, "[server]\ndrain_timeout = 1s\n", "install-code-3",
	                                    "LocNew000079");
	usleep(300 * 1000); /* the answer is in: its write waits for the lock */

	harness_kill(fx.proxy, SIGTERM);
	cr_expect_eq(harness_wait_exit(fx.proxy, 20000), 0, "the proxy did not exit cleanly");
	cr_assert_eq(pthread_join(pi.th, NULL), 0);
	cr_expect_eq(pi.cb.rc, 0, "the install page never came");
	cr_expect_eq(pi.cb.r.status, 503, "%s", pi.cb.r.body);
	cr_expect(pi.cb.r.body && strstr((const char *)pi.cb.r.body, "not confirmed") != NULL, "%s",
	          pi.cb.r.body);
	httpc_response_free(&pi.cb.r);
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "installs left") != NULL, "the drain did not wait for the install");
	free(log);
	harness_proc_free(fx.proxy);
	fx.proxy = NULL;
	close(lfd);
}

/* A refused refresh token: the resource needs a new install; requests get a clear 401. */
Test(oauth, invalid_grant_means_reinstall)
{
	char path[400], *rts[1];
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };
	struct httpc_response r;
	char addr[128], admin[128];

	start_mock(MOCK_OAUTH("60000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, one, 1, rts);
	json_decref(ctl("POST", "/__mock/oauth/revoke",
	                json_pack("{s:s}", "resource", "LocAlpha0001")));
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 401);
	cr_expect(strstr((const char *)r.body, "installed again") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 401);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("invalid_grants"), 1, "the dead refresh token was tried again");
	cr_expect_eq(fixture_metric_at(admin, "ghlproxy_tokens_needing_reinstall"), 1);

	/* The mark is in the store, one generation up, so a restarted proxy (or another one on
	 * the store) does not try the dead refresh token again. */
	int64_t until = harness_now_ms() + 5000;
	while (store_generation(path) != 2 && harness_now_ms() < until)
		usleep(20000);
	cr_expect_eq(store_generation(path), 2, "the mark was not stored one generation up");
	json_t *j = json_load_file(path, 0, NULL);
	cr_expect_str_eq(json_string_value(json_object_get(
	                         json_array_get(json_object_get(j, "tokens"), 0), "state")),
	                 "needs_reinstall");
	json_decref(j);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	harness_proc_free(fx.proxy);
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 401);
	cr_expect(strstr((const char *)r.body, "installed again") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("invalid_grants"), 1,
	             "the dead refresh token was tried after a restart");
	free(rts[0]);
}

/*
 * Two proxies on one store, a dead refresh token, and the store's lock held elsewhere: the proxy
 * that hears "invalid grant" keeps the resource's refresh lock until its mark is written, so the
 * other one waits, then reads the mark and never spends the dead token on a call of its own.
 */
Test(oauth, invalid_grant_mark_keeps_the_refresh_lock)
{
	char path[400], lock_path[450], *rts[1];
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };
	struct httpc_response r;
	char addr[2][128], admin[2][128];
	struct harness_proc *p[2];

	start_mock(MOCK_OAUTH("60000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	snprintf(lock_path, sizeof(lock_path), "%s.lock", path);
	write_store(path, one, 1, rts);
	json_decref(ctl("POST", "/__mock/oauth/revoke",
	                json_pack("{s:s}", "resource", "LocAlpha0001")));
	int lfd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(flock(lfd, LOCK_EX), 0);
	/* Both start a refresh of the expired token at once; one of them wins the refresh lock. */
	for (int i = 0; i < 2; i++)
		p[i] = spawn(i ? "proxyB" : "proxyA", NULL, NULL, addr[i], sizeof(addr[i]),
		             admin[i], sizeof(admin[i]));
	int64_t until = harness_now_ms() + 10000;
	while (stat_of("invalid_grants") < 1 && harness_now_ms() < until)
		usleep(20000);
	cr_assert_eq(stat_of("invalid_grants"), 1, "no refresh reached HighLevel");
	usleep(1500 * 1000); /* the mark waits for the store's lock; the other proxy waits too */
	cr_expect_eq(stat_of("invalid_grants"), 1, "the dead refresh token was spent twice");

	close(lfd); /* the mark is written, the refresh lock released */
	until = harness_now_ms() + 5000;
	while (store_generation(path) != 2 && harness_now_ms() < until)
		usleep(20000);
	cr_expect_eq(store_generation(path), 2, "the mark was not stored");
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(get(addr[i], "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
		cr_expect_eq(r.status, 401, "proxy %d: %d %s", i, r.status, r.body);
		cr_expect(strstr((const char *)r.body, "installed again") != NULL, "%s", r.body);
		httpc_response_free(&r);
	}
	cr_expect_eq(stat_of("invalid_grants"), 1, "the dead refresh token was spent twice");
	for (int i = 0; i < 2; i++) {
		harness_kill(p[i], SIGTERM);
		cr_expect_eq(harness_wait_exit(p[i], 30000), 0);
		harness_proc_free(p[i]);
	}
	free(rts[0]);
}

/* "Location is not active" keeps the refresh token: later refreshes use it successfully. */
Test(oauth, inactive_location_keeps_its_refresh_token)
{
	char path[400], *rts[1];
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };
	struct httpc_response r;
	char addr[128], admin[128];

	start_mock(MOCK_OAUTH("60000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, one, 1, rts);
	json_decref(ctl("POST", "/__mock/oauth/inactive",
	                json_pack("{s:s, s:i}", "resource", "LocAlpha0001", "count", 1)));
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 503, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	/* The proxy retries by itself after its backoff (30 s) — restart it instead, which retries
	 * at once with the same, still valid, refresh token. */
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	harness_proc_free(fx.proxy);
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("reuses"), 0);
	cr_expect_eq(stat_of("invalid_grants"), 0);
	free(rts[0]);
}

/* ---- PITs and API keys ---- */

static json_t *last_entry(void)
{
	char *log = fixture_mock_log(fx.mock_ctl, 0);
	json_t *all = json_loads(log, 0, NULL);
	free(log);
	json_t *arr = json_is_array(all) ? all : json_object_get(all, "entries");
	json_t *e = json_incref(json_array_get(arr, json_array_size(arr) - 1));
	json_decref(all);
	return e;
}

static const char *entry_header(json_t *e, const char *name)
{
	json_t *hs = json_object_get(e, "headers"), *h;
	size_t i;

	json_array_foreach(hs, i, h)
	{
		const char *n = json_string_value(json_array_get(h, 0));
		if (n && strcasecmp(n, name) == 0)
			return json_string_value(json_array_get(h, 1));
	}
	return NULL;
}

Test(oauth, pit_injected_and_rotated_on_reload)
{
	struct fixture_opts o = { .no_proxy = true };
	struct httpc_response r;
	const char *pit1 = "pit-11111111-2222-4333-8444-555555555555";
	const char *pit2 = "pit-66666666-7777-4888-9999-aaaaaaaaaaaa";
	char extra[600];

	fixture_start(&fx, &o);
	harness_secret(pit1);
	harness_secret(pit2);
	harness_secret("client-side-key");
	cr_assert_eq(harness_write_file(fx.dir, "loc.pit", pit1), 0);
	snprintf(extra, sizeof(extra),
	         "[server]\nmode = inject\n[pit]\nLocPit000001 = %s/loc.pit\n", fx.dir);
	char addr[128], admin[128];
	fx.proxy = fixture_spawn_proxy(&fx, "proxy", extra, NULL, addr, sizeof(addr), admin,
	                               sizeof(admin));
	cr_assert(fx.proxy);
	/* The client's own Authorization (a proxy client key, say) is never forwarded. */
	cr_assert_eq(get(addr, "/contacts/?locationId=LocPit000001",
	                 "Authorization: Bearer client-side-key\r\n", &r),
	             0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	json_t *e = last_entry();
	const char *auth = entry_header(e, "Authorization");
	cr_expect(auth && strstr(auth, pit1), "the PIT was not injected");
	json_decref(e);

	cr_assert_eq(harness_write_file(fx.dir, "loc.pit", pit2), 0);
	harness_kill(fx.proxy, SIGHUP);
	int64_t until = harness_now_ms() + 10000;
	bool rotated = false;
	while (!rotated && harness_now_ms() < until) {
		cr_assert_eq(get(addr, "/contacts/?locationId=LocPit000001", NULL, &r), 0);
		cr_expect_eq(r.status, 200);
		httpc_response_free(&r);
		e = last_entry();
		auth = entry_header(e, "Authorization");
		rotated = auth && strstr(auth, pit2);
		json_decref(e);
		usleep(50000);
	}
	cr_expect(rotated, "the replaced PIT was not picked up on reload");
	/* No credential for another location: a clear 401, nothing forwarded. */
	int before = fixture_mock_count(fx.mock_ctl);
	cr_assert_eq(get(addr, "/contacts/?locationId=LocOther0002", NULL, &r), 0);
	cr_expect_eq(r.status, 401);
	cr_expect(strstr((const char *)r.body, "LocOther0002") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before);
	char *log = harness_log(fx.proxy);
	cr_expect_null(strstr(log, "11111111-2222"), "a PIT leaked to the log");
	cr_expect_null(strstr(log, "66666666-7777"), "a PIT leaked to the log");
	free(log);
}

/* Passthrough: "Bearer undefined" and friends are answered 401 by the proxy, for free. */
Test(oauth, empty_bearer_answered_by_the_proxy)
{
	struct fixture_opts o = { 0 };
	struct httpc_response r;
	static const char *const bad[] = { "Authorization: Bearer undefined\r\n",
		                           "Authorization: Bearer null\r\n",
		                           "Authorization: Bearer \r\n" };

	fixture_start(&fx, &o);
	for (size_t i = 0; i < 3; i++) {
		cr_assert_eq(get(fx.proxy_addr, "/contacts/?locationId=LocA", bad[i], &r), 0);
		cr_expect_eq(r.status, 401, "%s", bad[i]);
		cr_expect(strstr((const char *)r.body, "undefined") != NULL, "%s", r.body);
		httpc_response_free(&r);
	}
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 0, "an empty credential was forwarded");
}

/* ---- the encrypted store, through `ghlproxy token import`, while the daemon runs ---- */

static int run_token_cli(const char *conf, const char *args, const char *stdin_text)
{
	char *cmd;

	cr_assert_eq(harness_write_file(fx.dir, "cli.in", stdin_text ? stdin_text : ""), 0);
	cr_assert(asprintf(&cmd, "exec '%s' -c '%s' token %s < '%s/cli.in'", harness_proxy_bin(),
	                   conf, args, fx.dir) > 0);
	char *argv[] = { "/bin/sh", "-c", cmd, NULL };
	struct harness_proc *p = harness_spawn(fx.dir, "cli", argv, NULL);
	free(cmd);
	cr_assert(p);
	int rc = harness_wait_exit(p, 30000);
	char *log = harness_log(p);
	cr_expect_null(strstr(log, "eyJ"), "the CLI printed a token");
	free(log);
	harness_proc_free(p);
	return rc;
}

Test(oauth, encrypted_store_import_while_running_and_wrong_key)
{
	struct httpc_response r;
	char addr[128], admin[128], extra[512], conf[400], path[400];

	start_mock(MOCK_OAUTH("60000"));
	harness_secret("5f0c6d2a9b7e4c1d8a3f6e2b9c0d7a4e1f8b5c2d9e6a3f0b7c4d1e8a5b2f9c6d");
	cr_assert_eq(harness_write_file(
	                     fx.dir, "store.key",
	                     "5f0c6d2a9b7e4c1d8a3f6e2b9c0d7a4e1f8b5c2d9e6a3f0b7c4d1e8a5b2f9c6d\n"),
	             0);
	snprintf(extra, sizeof(extra), "[store]\nkey_file = %s/store.key\n", fx.dir);
	fx.proxy = spawn("proxy", extra, NULL, addr, sizeof(addr), admin, sizeof(admin));
	snprintf(conf, sizeof(conf), "%s/proxy.conf", fx.dir);
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);

	/* Nothing yet; then an import while the daemon runs, picked up without a restart. */
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 401);
	httpc_response_free(&r);
	char *rt = seed("Location", "LocAlpha0001", NULL);
	char in[2048];
	snprintf(in, sizeof(in), "%s\n", rt);
	cr_assert_eq(run_token_cli(conf, "import --resource LocAlpha0001 --user-type Location", in),
	             0);
	int64_t until = harness_now_ms() + 10000;
	int status = 0;
	while (harness_now_ms() < until && status != 200) {
		cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
		status = r.status;
		httpc_response_free(&r);
		if (status != 200)
			usleep(100000);
	}
	cr_expect_eq(status, 200, "the imported token was not picked up");
	cr_expect_eq(stat_of("refreshes"), 1);

	/* At rest the file is sealed: no token, no id of a token in clear. */
	char *text = harness_read_file(path, NULL);
	cr_assert(text);
	cr_expect(strstr(text, "aes-256-gcm") != NULL, "not encrypted");
	cr_expect_null(strstr(text, "LocAlpha0001"), "the store is readable without the key");
	/* The sealed file is base64: "eyJ" alone may occur by chance, a JWT header or the refresh
	 * token in clear may not. */
	cr_expect_null(strstr(text, "eyJhbGciOi"), "a token in clear");
	cr_expect_null(strstr(text, rt), "the refresh token in clear");
	free(text);

	/* The same store with another key: refused at start, clearly, with nothing spent. */
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	harness_proc_free(fx.proxy);
	fx.proxy = NULL;
	cr_assert_eq(harness_write_file(
	                     fx.dir, "store.key",
	                     "0000000000000000000000000000000000000000000000000000000000000001\n"),
	             0);
	char *argv[] = { (char *)harness_proxy_bin(), "-c", conf, NULL };
	struct harness_proc *p = harness_spawn(fx.dir, "wrongkey", argv, NULL);
	cr_assert(p);
	cr_expect_eq(harness_wait_exit(p, 20000), 1, "started with the wrong key");
	char *log = harness_log(p);
	cr_expect(strstr(log, "wrong store.key_file") != NULL, "unclear: %s", log);
	cr_expect_null(strstr(log, rt), "a token in the log");
	free(log);
	harness_proc_free(p);
	cr_expect_eq(stat_of("reuses"), 0);
	free(rt);
}

/* HighLevel refuses a token the proxy still believes live: the proxy refreshes once and sends
 * the request again, the client never sees the 401. */
Test(oauth, upstream_401_refreshes_and_resends)
{
	char path[400], *rts[1];
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };
	struct httpc_response r;
	char addr[128], admin[128];

	start_mock(MOCK_OAUTH("600000"));
	snprintf(path, sizeof(path), "%s/tokens.json", fx.dir);
	write_store(path, one, 1, rts);
	fx.proxy = spawn("proxy", NULL, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("refreshes"), 1);
	/* Kill the live access tokens only (the refresh token stays good). */
	json_decref(ctl("POST", "/__mock/oauth/revoke",
	                json_pack("{s:s, s:b, s:b}", "resource", "LocAlpha0001", "access_tokens", 1,
	                          "refresh_tokens", 0)));
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
		cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
		httpc_response_free(&r);
	}
	cr_expect_eq(stat_of("unauthorized"), 1, "one 401 at the mock, absorbed");
	cr_expect_eq(stat_of("refreshes"), 2, "one refresh after the 401");
	cr_expect_eq(stat_of("reuses"), 0);
	free(rts[0]);
}

static bool refreshing(const char *resource)
{
	json_t *st = ctl("GET", "/__mock/oauth/stats", NULL);
	json_t *r = json_object_get(json_object_get(st, "by_resource"), resource);
	bool yes = json_integer_value(json_object_get(r, "refreshing")) > 0;
	json_decref(st);
	return yes;
}

static void wait_refreshing(const char *resource)
{
	int64_t until = harness_now_ms() + 10000;

	while (!refreshing(resource) && harness_now_ms() < until)
		usleep(20000);
	cr_assert(refreshing(resource), "no refresh within 10 s");
}

/* A proxy whose store lives in its own directory (state/), which a test can take away. */
struct state_env {
	char sdir[300], away[300], path[400], extra[600];
	char *env[2];
	char *rts[1];
	char addr[128], admin[128];
};

/* The mock (tokens of 3 s, answers held 800 ms), one location in state/tokens.json, the proxy,
 * and one request through it. */
static void state_env_start(struct state_env *se)
{
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };
	struct httpc_response r;

	start_mock(MOCK_OAUTH("3000") " --oauth-delay-ms 800");
	snprintf(se->sdir, sizeof(se->sdir), "%s/state", fx.dir);
	snprintf(se->away, sizeof(se->away), "%s/state.away", fx.dir);
	cr_assert_eq(mkdir(se->sdir, 0700), 0);
	snprintf(se->path, sizeof(se->path), "%s/tokens.json", se->sdir);
	write_store(se->path, one, 1, se->rts);
	snprintf(se->extra, sizeof(se->extra), "GHLPROXY_STORE_PATH=%s", se->path);
	se->env[0] = se->extra;
	se->env[1] = NULL;
	fx.proxy = spawn("proxy", NULL, se->env, se->addr, sizeof(se->addr), se->admin,
	                 sizeof(se->admin));
	cr_assert_eq(get(se->addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
}

/* The store's directory disappears while the next refresh is at HighLevel (the mock holds its
 * answer 800 ms): the new pair cannot be stored, and the proxy counts the failure. */
static void state_env_lose_dir(struct state_env *se)
{
	wait_refreshing("LocAlpha0001");
	cr_assert_eq(rename(se->sdir, se->away), 0);
	int64_t until = harness_now_ms() + 10000;
	while (fixture_metric_at(se->admin, "ghlproxy_token_store_write_failures_total") < 1 &&
	       harness_now_ms() < until)
		usleep(50000);
	cr_assert_geq(fixture_metric_at(se->admin, "ghlproxy_token_store_write_failures_total"), 1);
}

/* The pair held in memory reaches the store (a generation above g) within 10 s, and the location
 * is served with it. */
static void expect_stored_then_served(const struct state_env *se, json_int_t g, const char *why)
{
	struct httpc_response r;
	int64_t until = harness_now_ms() + 10000;

	while (store_generation(se->path) <= g && harness_now_ms() < until)
		usleep(50000);
	cr_expect_gt(store_generation(se->path), g, "%s", why);
	cr_assert_eq(get(se->addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
}

/* The store cannot be written when a refresh ends: the new pair stays in memory, storing is
 * retried, /readyz and the metrics say so; once the store is back the pair lands in it and
 * nothing was lost. */
Test(oauth, store_failure_keeps_the_pair_and_retries)
{
	struct state_env se;
	struct httpc_response r;

	state_env_start(&se);
	json_int_t g = store_generation(se.path);
	state_env_lose_dir(&se);
	cr_assert_eq(get(se.admin, "/readyz", NULL, &r), 0);
	cr_expect_eq(r.status, 503);
	cr_expect(strstr((const char *)r.body, "not stored") != NULL, "%s", r.body);
	httpc_response_free(&r);

	/* Back: the pair held in memory is stored, and requests flow again. */
	cr_assert_eq(rename(se.away, se.sdir), 0);
	expect_stored_then_served(&se, g, "the pair held in memory was never stored");
	cr_assert_eq(get(se.admin, "/readyz", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("reuses"), 0);
	cr_expect_eq(stat_of("invalid_grants"), 0);
	free(se.rts[0]);
}

static int readyz_status(const char *admin);

/*
 * The store's lock held by another process (`ghlproxy token import` on a large store, another
 * proxy writing it) while a refresh stores its new pair: the write waits for the lock on the
 * file's helper thread, and the proxy answers meanwhile (/readyz says a pair is not stored yet).
 * Once the lock is free the pair is stored and used, and no refresh token was spent twice.
 * (Before, the write waited on the event loop: nothing was answered, /healthz included, until
 * the lock was released.)
 */
Test(oauth, store_lock_held_elsewhere_stops_nothing)
{
	struct state_env se;
	char lock_path[450];

	state_env_start(&se);
	snprintf(lock_path, sizeof(lock_path), "%s.lock", se.path);
	int lfd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(flock(lfd, LOCK_EX), 0);
	json_int_t g = store_generation(se.path);
	/* A refresh answered by HighLevel: its pair now waits for the lock. */
	json_int_t refreshes = stat_of("refreshes");
	int64_t until = harness_now_ms() + 10000;
	while (stat_of("refreshes") <= refreshes && harness_now_ms() < until)
		usleep(20000);
	cr_assert_gt(stat_of("refreshes"), refreshes, "no refresh within 10 s");
	until = harness_now_ms() + 5000;
	while (readyz_status(se.admin) != 503 && harness_now_ms() < until)
		usleep(20000);

	expect_answering_while_locked(se.admin);
	cr_expect_eq(readyz_status(se.admin), 503, "the pair waiting for the lock is not shown");
	cr_expect_eq(store_generation(se.path), g, "stored through a lock held elsewhere");

	close(lfd); /* the lock is free: the waiting write goes through */
	expect_stored_then_served(&se, g, "the pair was never stored");
	cr_expect_eq(stat_of("reuses"), 0);
	cr_expect_eq(stat_of("invalid_grants"), 0);
	free(se.rts[0]);
}

/* An API 1.0 key is a JWT of any length: a long one goes upstream whole, on the /v1/ host. */
Test(oauth, long_v1_key_injected_whole)
{
	struct fixture_opts o = { .no_proxy = true };
	struct httpc_response r;
	char key[1201], extra[600], addr[128], admin[128];

	memset(key, 'k', sizeof(key) - 1);
	memcpy(key, "eyJv1key.", 9);
	key[sizeof(key) - 1] = '\0';
	fixture_start(&fx, &o);
	harness_secret(key);
	cr_assert_eq(harness_write_file(fx.dir, "loc.v1key", key), 0);
	snprintf(extra, sizeof(extra),
	         "[server]\nmode = inject\n[v1_keys]\nLocV1Long0001 = %s/loc.v1key\n", fx.dir);
	fx.proxy = fixture_spawn_proxy(&fx, "proxy", extra, NULL, addr, sizeof(addr), admin,
	                               sizeof(admin));
	cr_assert(fx.proxy);
	cr_assert_eq(get(addr, "/v1/contacts/?locationId=LocV1Long0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	char *log = fixture_mock_log(fx.mock_v1_ctl, 0);
	json_t *all = json_loads(log, 0, NULL);
	free(log);
	json_t *arr = json_is_array(all) ? all : json_object_get(all, "entries");
	const char *auth =
	        entry_header(json_array_get(arr, json_array_size(arr) - 1), "Authorization");
	cr_assert(auth, "no Authorization reached the API 1.0 host");
	cr_expect_eq(strlen(auth), strlen("Bearer ") + strlen(key), "the key was cut");
	cr_expect(strstr(auth, key) != NULL, "not the configured key");
	json_decref(all);
}

/* ---- a new pair is never left behind ---- */

static int readyz_status(const char *admin)
{
	struct httpc_response r;

	cr_assert_eq(get(admin, "/readyz", NULL, &r), 0);
	int st = r.status;
	httpc_response_free(&r);
	return st;
}

/*
 * SIGTERM while a new pair cannot be stored (the store's directory is gone): the drain waits
 * for it, retrying the store, instead of exiting with the only live refresh token in memory.
 * Once the directory is back the pair is stored and the proxy exits; the next proxy goes on
 * with it, spending no dead refresh token. (Before, the proxy exited at once and the next one
 * presented the spent token.)
 */
Test(oauth, drain_waits_for_the_new_pair_to_be_stored)
{
	struct state_env se;
	struct httpc_response r;

	state_env_start(&se);
	state_env_lose_dir(&se);
	cr_assert_eq(readyz_status(se.admin), 503, "the store did not fail");

	harness_kill(fx.proxy, SIGTERM);
	cr_expect_eq(harness_wait_exit(fx.proxy, 1500), -1,
	             "the proxy exited with a pair not stored");
	cr_assert_eq(rename(se.away, se.sdir), 0);
	cr_expect_eq(harness_wait_exit(fx.proxy, 10000), 0, "no clean exit once stored");
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "exiting with new tokens not stored") == NULL, "a pair was left");
	free(log);
	harness_proc_free(fx.proxy);
	fx.proxy =
	        spawn("proxy2", NULL, se.env, se.addr, sizeof(se.addr), se.admin, sizeof(se.admin));
	cr_assert_eq(get(se.addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("reuses"), 0, "the rotated refresh token was lost at exit");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	free(se.rts[0]);
}

/* The mock (mock_args), one location in tokens.json, and the proxy on that store. */
static void one_location_proxy(const char *mock_args, char *path, size_t path_len, char **rts,
                               char *addr, char *admin)
{
	static const struct install_set one[] = { { "LocAlpha0001", "Location" } };

	start_mock(mock_args);
	snprintf(path, path_len, "%s/tokens.json", fx.dir);
	write_store(path, one, 1, rts);
	fx.proxy = spawn("proxy", NULL, NULL, addr, 128, admin, 128);
}

/*
 * `ghlproxy token import` of another pair while a refresh is at HighLevel (a reinstall made
 * elsewhere): the refresh's pair gives way to the imported one, which the resource then uses;
 * /readyz stays 200. (Before, the refresh's store failed its generation check forever: 503 for
 * the resource and the whole /readyz until a restart.)
 */
Test(oauth, import_during_a_refresh_is_kept)
{
	char path[400], conf[400], *rts[1], in[2048];
	struct httpc_response r;
	char addr[128], admin[128];

	one_location_proxy(MOCK_OAUTH("3000") " --oauth-delay-ms 1500", path, sizeof(path), rts,
	                   addr, admin);
	snprintf(conf, sizeof(conf), "%s/proxy.conf", fx.dir);
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	httpc_response_free(&r);
	wait_refreshing("LocAlpha0001");
	char *rt = seed("Location", "LocAlpha0001", NULL);
	snprintf(in, sizeof(in), "%s\n", rt);
	cr_assert_eq(run_token_cli(conf, "import --resource LocAlpha0001 --user-type Location", in),
	             0);
	int64_t until = harness_now_ms() + 10000;
	while (refreshing("LocAlpha0001") && harness_now_ms() < until)
		usleep(20000);
	usleep(300 * 1000); /* the refresh's answer, then its store */
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "the resource is stuck after the import (%d)", r.status);
	httpc_response_free(&r);
	cr_expect_eq(readyz_status(admin), 200, "/readyz stuck after the import");
	cr_expect_eq(stat_of("reuses"), 0);
	free(rt);
	free(rts[0]);
}

/*
 * A 401 that is not about the token (here a status the mock makes, on a token far from expiry,
 * not "Invalid JWT"): passed on as it came, and no refresh token is spent on it. (Before, each
 * such 401 rotated the pair.)
 */
Test(oauth, other_401s_spend_no_refresh_token)
{
	char path[400], *rts[1];
	struct httpc_response r;
	char addr[128], admin[128];

	one_location_proxy(MOCK_OAUTH("600000"), path, sizeof(path), rts, addr, admin);
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	json_int_t before = stat_of("refreshes");
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(get(addr, "/mock/status/401?locationId=LocAlpha0001", NULL, &r), 0);
		cr_expect_eq(r.status, 401);
		httpc_response_free(&r);
	}
	cr_expect_eq(stat_of("refreshes") - before, 0, "a 401 not about the token rotated it");
	free(rts[0]);
}

/* The mock (mock_args), Redis holding one location's entry, and the proxies' [redis] config
 * in extra. Returns the seeded refresh token (caller frees) and a connection to Redis. */
static char *redis_one_location(const char *mock_args, char *extra, size_t extra_len,
                                redisContext **out)
{
	start_mock(mock_args);
	redis = fixture_redis_start(fx.dir, "redis", NULL, redis_sock, sizeof(redis_sock));
	cr_assert(redis);
	redisContext *c = redisConnectUnix(redis_sock);
	cr_assert(c && !c->err);
	char *rt = seed("Location", "LocAlpha0001", NULL);
	redis_put(c, "LocAlpha0001", "Location", rt);
	snprintf(extra, extra_len, "[limits]\nbackend = redis\n[redis]\nurl = unix://%s\n",
	         redis_sock);
	*out = c;
	return rt;
}

/*
 * Redis store: the refresh lock is lost while the token call is out (it expired, Redis
 * restarted): the compare-and-set says so; the proxy reads the entry, finds it unchanged, takes
 * the lock again and stores its pair. A new proxy then goes on with it. (Before, the pair was
 * never stored and a restart lost it.)
 */
Test(oauth, redis_lock_lost_mid_refresh_still_stores)
{
	char extra[600];
	char addr[128], admin[128];
	struct httpc_response r;
	redisContext *c;
	char *rt = redis_one_location(MOCK_OAUTH("3000") " --oauth-delay-ms 1500", extra,
	                              sizeof(extra), &c);

	fx.proxy = spawn("proxy", extra, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	httpc_response_free(&r);
	wait_refreshing("LocAlpha0001");
	redisReply *rep = redisCommand(c, "DEL ghlproxy:{tok:LocAlpha0001}:lock");
	cr_assert(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1,
	          "the refresh lock was not held");
	freeReplyObject(rep);
	int64_t until = harness_now_ms() + 10000;
	while (refreshing("LocAlpha0001") && harness_now_ms() < until)
		usleep(20000);
	until = harness_now_ms() + 5000;
	while (readyz_status(admin) != 200 && harness_now_ms() < until)
		usleep(50000);
	cr_expect_eq(readyz_status(admin), 200, "the pair was not stored");
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	harness_proc_free(fx.proxy);
	fx.proxy = spawn("proxy2", extra, NULL, addr, sizeof(addr), admin, sizeof(admin));
	cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_eq(stat_of("reuses"), 0, "the rotated refresh token was lost");
	redisFree(c);
	free(rt);
}

/*
 * Redis store, two proxies: the refresh token is dead (invalid grant, both learn it), then the
 * app is installed again through one of them. The other takes the new entry too. (Before, it
 * held the dead one at the generation the install was stored at, and kept answering "install
 * again" until restarted.)
 */
Test(oauth, redis_reinstall_reaches_every_proxy)
{
	char extra[600];
	char addr[2][128], admin[2][128];
	struct httpc_response r;
	redisContext *c;
	char *rt = redis_one_location(MOCK_OAUTH("60000"), extra, sizeof(extra), &c);

	redisFree(c);
	json_decref(ctl("POST", "/__mock/oauth/revoke",
	                json_pack("{s:s}", "resource", "LocAlpha0001")));
	fx.proxy =
	        spawn("proxy0", extra, NULL, addr[0], sizeof(addr[0]), admin[0], sizeof(admin[0]));
	struct harness_proc *p1 =
	        spawn("proxy1", extra, NULL, addr[1], sizeof(addr[1]), admin[1], sizeof(admin[1]));
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(get(addr[i], "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
		cr_expect_eq(r.status, 401, "proxy%d: the dead token was not seen as such", i);
		httpc_response_free(&r);
	}
	harness_secret("install-code-9");
	json_decref(ctl("POST", "/__mock/oauth/code",
	                json_pack("{s:s, s:s, s:s}", "code", "install-code-9", "user_type",
	                          "Location", "resource", "LocAlpha0001")));
	cr_assert_eq(get(admin[0], "/oauth/callback?code=install-code-9", NULL, &r), 0);
	cr_expect_eq(r.status, 200, "the install failed");
	httpc_response_free(&r);
	for (int i = 0; i < 2; i++) {
		int64_t until = harness_now_ms() + 5000;
		int st = 0;
		while (harness_now_ms() < until) {
			cr_assert_eq(get(addr[i], "/contacts/?locationId=LocAlpha0001", NULL, &r),
			             0);
			st = r.status;
			httpc_response_free(&r);
			if (st == 200)
				break;
			usleep(200 * 1000);
		}
		cr_expect_eq(st, 200, "proxy%d did not take the reinstall", i);
	}
	harness_kill(p1, SIGTERM);
	cr_expect_eq(harness_wait_exit(p1, 30000), 0);
	harness_proc_free(p1);
	free(rt);
}

/*
 * Token answers that are odd but carry a new pair (expires_in as a string, a userId the store's
 * character set refuses): the pair is kept, the odd fields give way, and refreshes go on with
 * no spent refresh token presented again. (Before, such an answer was "unusable": the new
 * refresh token was dropped and the spent one presented on the next try.)
 */
Test(oauth, odd_token_answers_keep_the_new_pair)
{
	char path[400], *rts[1];
	struct httpc_response r;
	char addr[128], admin[128];

	one_location_proxy(MOCK_OAUTH("2000") " --oauth-odd-answers", path, sizeof(path), rts, addr,
	                   admin);
	int64_t until = harness_now_ms() + 6000;
	int n = 0;
	while (harness_now_ms() < until) {
		cr_assert_eq(get(addr, "/contacts/?locationId=LocAlpha0001", NULL, &r), 0);
		cr_expect_eq(r.status, 200, "request %d: %d", n, r.status);
		httpc_response_free(&r);
		n++;
		usleep(200 * 1000);
	}
	cr_expect_geq(stat_of("refreshes"), 3, "too few refreshes to judge");
	cr_expect_eq(stat_of("reuses"), 0, "a new refresh token was dropped");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	cr_expect_geq(store_generation(path), 3, "the pairs were not stored");
	free(rts[0]);
}
