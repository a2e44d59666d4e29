/*
 * test_node_sdk.c: the official HighLevel Node SDK (@gohighlevel/api-client, npm, pinned in
 * tests/node/package.json and package-lock.json) pointed at the proxy works in both modes.
 *
 * The SDK is installed once per build directory (`npm ci` into $GHLPROXY_BUILDDIR/node-sdk,
 * redone only when the lock file changes); tests/node/sdk.mjs drives it. A test starts the mock
 * upstream with OAuth and the proxy, runs the script (environment in: the proxy's URL, the
 * location, the credentials; stderr out: one line per check, never a secret), and asserts on its
 * exit status and on what the mock recorded and counted:
 *  - passthrough: a PIT makes contact calls (query, JSON bodies, every method, id-less routes)
 *    with the SDK's headers; then OAuth tokens held by the SDK: a 401 from HighLevel on an
 *    expired token makes the SDK refresh through the proxy's /oauth/token and retry, and it
 *    refreshes ahead of expiry too, with no refresh token ever spent twice;
 *  - inject: the SDK holds a placeholder (it cannot be built, nor send, without some token);
 *    the proxy drops it and injects the OAuth token from its store; an id-less route needs the
 *    x-location-id header the SDK passes through from the caller's options;
 *  - the proxy's own 429s: the SDK tells burst from daily by their X-RateLimit-* headers, and
 *    its opt-in retry waits a burst out.
 * Skipped when `node` is not installed. With node but no npm, or no registry to install from,
 * it fails saying so (CI installs nodejs and npm, and reaches the npm registry).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <jansson.h>

#include "fixture.h"
#include "httpc.h"

#define CLIENT_ID     "0123456789abcdef01234567-k3xq9"
#define CLIENT_SECRET "mock-client-secret-7c1e55"
#define PIT           "pit-0badc0de-1234-4abc-8def-0123456789ab"
#define PLACEHOLDER   "sdk-placeholder-for-the-proxy"
#define LOCATION      "LocNodeSdk01"
#define MOCK_OAUTH(ttl)                                                        \
	"--oauth-client-id " CLIENT_ID " --oauth-client-secret " CLIENT_SECRET \
	" --oauth-access-ttl-ms " ttl

/* Bounds: installing the SDK (a registry round trip and 43 small packages), one script run. */
#define NPM_CI_MS   300000
#define NODE_RUN_MS 120000

static struct fixture fx;

static void stop(void)
{
	if (fx.proxy)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
	harness_cleanup_all(); /* npm or node, when an assertion ended the test early */
}

TestSuite(node_sdk, .fini = stop, .timeout = 600);

/* ---- node, npm and the SDK ---- */

/* An executable `name` on $PATH into out; false when there is none. */
static bool find_in_path(const char *name, char *out, size_t len)
{
	const char *path = getenv("PATH");
	char *copy, *save = NULL;
	bool found = false;

	copy = strdup(path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
	cr_assert(copy);
	for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
		int n = snprintf(out, len, "%s/%s", *d ? d : ".", name);
		found = n > 0 && (size_t)n < len && access(out, X_OK) == 0;
	}
	free(copy);
	return found;
}

static char *src_file(const char *rel)
{
	const char *src = getenv("GHLPROXY_SRCDIR");
	char path[1024];

	cr_assert(src, "GHLPROXY_SRCDIR is not set (run through meson test)");
	snprintf(path, sizeof(path), "%s/%s", src, rel);
	char *text = harness_read_file(path, NULL);
	cr_assert(text, "cannot read %s", path);
	return text;
}

/* Same content as the file at `path`? (false when it is absent) */
static bool file_equals(const char *path, const char *text)
{
	char *have = harness_read_file(path, NULL);
	bool same = have && strcmp(have, text) == 0;

	free(have);
	return same;
}

/* The installed SDK's version, from its package.json (caller frees), or NULL. */
static char *installed_version(const char *sdk_dir)
{
	char path[1024];

	snprintf(path, sizeof(path), "%s/node_modules/@gohighlevel/api-client/package.json",
	         sdk_dir);
	json_t *j = json_load_file(path, 0, NULL);
	const char *v = json_string_value(json_object_get(j, "version"));
	char *out = v ? strdup(v) : NULL;
	json_decref(j);
	return out;
}

/*
 * Node, or skip the test. Then the SDK in $GHLPROXY_BUILDDIR/node-sdk, installed with `npm ci`
 * from tests/node's lock file unless that exact lock is already installed there (the stamp
 * .installed-lock is written only after a successful install).
 */
static void need_sdk(char *node, size_t node_len, char *sdk_dir, size_t sdk_len)
{
	char npm[1024], stamp[1100], nm[1100];
	const char *build = getenv("GHLPROXY_BUILDDIR");

	if (!find_in_path("node", node, node_len))
		cr_skip_test("node is not installed (Debian: apt-get install nodejs npm)");
	cr_assert(build, "GHLPROXY_BUILDDIR is not set (run through meson test)");
	snprintf(sdk_dir, sdk_len, "%s/node-sdk", build);
	snprintf(stamp, sizeof(stamp), "%s/.installed-lock", sdk_dir);
	char *pkg = src_file("tests/node/package.json");
	char *lock = src_file("tests/node/package-lock.json");
	char *have = installed_version(sdk_dir);
	bool fresh = have && file_equals(stamp, lock);

	free(have);
	if (!fresh) {
		cr_assert(find_in_path("npm", npm, sizeof(npm)),
		          "node is installed but npm is not: install it (Debian: apt-get install "
		          "npm) so the SDK can be installed");
		cr_assert(mkdir(sdk_dir, 0755) == 0 || errno == EEXIST, "cannot create %s",
		          sdk_dir);
		unlink(stamp);
		cr_assert_eq(harness_write_file(sdk_dir, "package.json", pkg), 0);
		cr_assert_eq(harness_write_file(sdk_dir, "package-lock.json", lock), 0);
		snprintf(nm, sizeof(nm), "npm_config_cache=%s/.npm-cache", sdk_dir);
		char *argv[] = { npm,
			         "ci",
			         "--prefix",
			         sdk_dir,
			         "--ignore-scripts",
			         "--no-audit",
			         "--no-fund",
			         "--fetch-retries=1",
			         "--fetch-timeout=60000",
			         NULL };
		char *env[] = { nm, "npm_config_update_notifier=false", "npm_config_loglevel=warn",
			        NULL };
		int64_t t0 = harness_now_ms();
		char *scratch = harness_tmpdir();
		cr_assert(scratch);
		struct harness_proc *p = harness_spawn(scratch, "npm", argv, env);
		cr_assert(p, "cannot run npm");
		int rc = harness_wait_exit(p, NPM_CI_MS);
		if (rc != 0) {
			char *log = harness_log(p);
			fprintf(stderr, "npm ci log:\n%s\n", log ? log : "");
			free(log);
		}
		harness_proc_free(p);
		harness_tmpdir_free(scratch);
		cr_assert_neq(rc, -1,
		              "npm ci did not finish within %d s: is the npm registry reachable?",
		              NPM_CI_MS / 1000);
		cr_assert_eq(rc, 0,
		             "npm ci failed (exit %d; its log is above): installing "
		             "@gohighlevel/api-client needs the npm registry",
		             rc);
		cr_assert_eq(harness_write_file(sdk_dir, ".installed-lock", lock), 0);
		cr_log_info("npm ci: %lld ms", (long long)(harness_now_ms() - t0));
	}
	/* The version that runs is the one pinned. */
	json_t *pj = json_loads(pkg, 0, NULL);
	const char *pinned = json_string_value(
	        json_object_get(json_object_get(pj, "dependencies"), "@gohighlevel/api-client"));
	have = installed_version(sdk_dir);
	cr_assert(pinned && have, "the SDK is not installed in %s", sdk_dir);
	cr_assert_str_eq(have, pinned, "installed SDK %s, pinned %s", have, pinned);
	free(have);
	json_decref(pj);
	free(pkg);
	free(lock);
}

/* ---- the mock ---- */

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
	cr_assert(r.status >= 200 && r.status < 300, "mock control %s: %d", path, r.status);
	json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	httpc_response_free(&r);
	cr_assert(j, "mock control %s: not JSON", path);
	return j;
}

static json_int_t stat_of(const char *name)
{
	json_t *s = ctl("GET", "/__mock/oauth/stats", NULL);
	json_t *v = json_object_get(s, name);
	cr_assert(json_is_integer(v), "no %s in the mock's OAuth stats", name);
	json_int_t n = json_integer_value(v);
	json_decref(s);
	return n;
}

/* A live refresh token for LOCATION, as an install would give (caller frees). */
static char *seed(void)
{
	json_t *j = ctl("POST", "/__mock/oauth/seed",
	                json_pack("{s:s, s:s}", "user_type", "Location", "resource", LOCATION));
	const char *rt = json_string_value(json_object_get(j, "refresh_token"));
	cr_assert(rt, "the mock gave no refresh token");
	harness_secret(rt);
	char *out = strdup(rt);
	json_decref(j);
	return out;
}

/* Every request the mock recorded, in arrival order. */
static json_t *mock_log(void)
{
	char *text = fixture_mock_log(fx.mock_ctl, 0);
	json_t *log = text ? json_loads(text, 0, NULL) : NULL;

	free(text);
	cr_assert(json_is_array(log), "the mock's log is not a JSON array");
	return log;
}

static const char *entry_str(json_t *e, const char *name)
{
	const char *s = json_string_value(json_object_get(e, name));
	return s ? s : "";
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

static bool is_oauth_call(json_t *e)
{
	return strncmp(entry_str(e, "uri"), "/oauth/", 7) == 0;
}

/* The SDK's headers on an API call it made. */
static void expect_sdk_headers(json_t *e, const char *version)
{
	const char *v = entry_header(e, "Version"), *sv = entry_header(e, "x-sdk-version");

	cr_expect(v && strcmp(v, "2023-02-21") == 0, "%s %s: Version %s", entry_str(e, "method"),
	          entry_str(e, "uri"), v ? v : "(none)");
	cr_expect(sv && strcmp(sv, version) == 0, "%s %s: x-sdk-version %s", entry_str(e, "method"),
	          entry_str(e, "uri"), sv ? sv : "(none)");
}

/* ---- running the script ---- */

struct secret_list {
	const char *s[8];
	int n;
};

/* No secret (and nothing shaped like a JWT) in `text`; `what` names it. */
static bool expect_no_secret(const char *text, const char *what, const struct secret_list *sl)
{
	bool clean = strstr(text, "eyJ") == NULL;

	cr_expect(clean, "%s holds something shaped like a JWT", what);
	for (int i = 0; i < sl->n; i++) {
		bool leaked = sl->s[i] && *sl->s[i] && strstr(text, sl->s[i]);
		cr_expect(!leaked, "%s holds secret #%d", what, i);
		clean = clean && !leaked;
	}
	return clean;
}

/*
 * Run tests/node/sdk.mjs with the n_env entries of `env` added to its environment and return its
 * exit status. Its output is checked for secrets and printed only when the run failed and it is
 * clean.
 */
static int run_script(const char *node, const char *sdk_dir, char **env, int n_env,
                      const struct secret_list *sl)
{
	char script[1024], sdk_env[1100], url_env[200];
	const char *src = getenv("GHLPROXY_SRCDIR");

	snprintf(script, sizeof(script), "%s/tests/node/sdk.mjs", src);
	snprintf(sdk_env, sizeof(sdk_env), "GHL_SDK_DIR=%s", sdk_dir);
	snprintf(url_env, sizeof(url_env), "GHL_PROXY_URL=http://%s", fx.proxy_addr);
	cr_assert_lt(n_env, 12);
	char *all[20];
	int n = 0;
	all[n++] = sdk_env;
	all[n++] = url_env;
	all[n++] = "GHL_LOCATION=" LOCATION;
	/* Loopback only: no proxy from the environment for the SDK's axios. */
	all[n++] = "NO_PROXY=*";
	all[n++] = "no_proxy=*";
	for (int i = 0; i < n_env; i++)
		all[n++] = env[i];
	all[n] = NULL;
	char *argv[] = { (char *)node, script, NULL };

	int64_t t0 = harness_now_ms();
	struct harness_proc *p = harness_spawn(fx.dir, "node", argv, all);
	cr_assert(p, "cannot run node");
	int rc = harness_wait_exit(p, NODE_RUN_MS);
	char *log = harness_log(p);
	harness_proc_free(p);
	cr_log_info("node sdk.mjs: exit %d in %lld ms", rc, (long long)(harness_now_ms() - t0));
	cr_assert(log, "no output from the script");
	bool clean = expect_no_secret(log, "the script's output", sl);
	if (rc != 0)
		fprintf(stderr, "sdk.mjs output:\n%s\n",
		        clean ? log : "(withheld: it holds a secret)");
	free(log);
	return rc;
}

static void expect_clean_proxy_log(const struct secret_list *sl)
{
	char *log = harness_log(fx.proxy);
	cr_assert(log);
	expect_no_secret(log, "the proxy's log", sl);
	free(log);
}

/* Sum of daily admissions over the proxy's keys (/status), and whether a key names /oauth/. */
static json_int_t proxy_daily_used(bool *oauth_key)
{
	struct httpc_response r = { 0 };
	json_int_t used = 0;
	size_t i;
	json_t *k;

	cr_assert_eq(httpc_request(fx.admin_addr, "GET", "/status", NULL, NULL, 0, &r, 10000), 0);
	cr_assert_eq(r.status, 200);
	json_t *st = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	httpc_response_free(&r);
	*oauth_key = false;
	json_array_foreach(json_object_get(st, "keys"), i, k)
	{
		if (strcmp(entry_str(k, "scope"), "burst") != 0)
			used += json_integer_value(
			        json_object_get(json_object_get(k, "daily"), "used"));
		*oauth_key = *oauth_key || strstr(entry_str(k, "key"), "oauth") != NULL;
	}
	json_decref(st);
	return used;
}

/* ---- passthrough ---- */

struct want {
	const char *method, *uri;
	int status;
};

Test(node_sdk, passthrough_pit_calls_and_sdk_driven_refresh)
{
	char node[1024], sdk_dir[1024], rt_env[4096];
	struct fixture_opts o = { .mock_args = MOCK_OAUTH("1500") };

	need_sdk(node, sizeof(node), sdk_dir, sizeof(sdk_dir));
	fixture_start(&fx, &o);
	char *version = installed_version(sdk_dir);
	char *rt = seed();
	snprintf(rt_env, sizeof(rt_env), "GHL_REFRESH_TOKEN=%s", rt);
	char *env[] = { "GHL_MODE=passthrough", "GHL_PIT=" PIT, "GHL_CLIENT_ID=" CLIENT_ID,
		        "GHL_CLIENT_SECRET=" CLIENT_SECRET, rt_env };
	struct secret_list sl = { { PIT, CLIENT_SECRET, rt }, 3 };
	harness_secret(PIT);
	harness_secret(CLIENT_SECRET);

	cr_expect_eq(run_script(node, sdk_dir, env, 5, &sl), 0, "the SDK's checks failed");

	/* What HighLevel saw: the PIT calls as the SDK made them, then the OAuth exchange. */
	static const struct want want[] = {
		{ "GET", "/contacts/?locationId=" LOCATION "&query=ada+lovelace&limit=5", 200 },
		{ "POST", "/contacts/search", 200 },
		{ "POST", "/contacts/", 200 },
		{ "GET", "/contacts/ct0000000001", 200 },
		{ "PUT", "/contacts/ct0000000001", 200 },
		{ "DELETE", "/contacts/ct0000000001", 200 },
		{ "GET", "/contacts/?locationId=" LOCATION, 200 },
		/* OAuth held by the SDK: the first pair, then a 401 on the expired token, the
		 * SDK's refresh and its retry, then a refresh ahead of expiry and its call. */
		{ "POST", "/oauth/token", 200 },
		{ "GET", "/contacts/?locationId=" LOCATION "&limit=1", 401 },
		{ "POST", "/oauth/token", 200 },
		{ "GET", "/contacts/?locationId=" LOCATION "&limit=1", 200 },
		{ "POST", "/oauth/token", 200 },
		{ "POST", "/contacts/search", 200 },
	};
	size_t n_want = sizeof(want) / sizeof(want[0]);
	json_t *log = mock_log(), *e;
	size_t i;
	json_int_t n_api = 0;

	cr_expect_eq(json_array_size(log), n_want, "the mock saw %zu requests, not %zu",
	             json_array_size(log), n_want);
	json_array_foreach(log, i, e)
	{
		if (i >= n_want)
			break;
		json_int_t status = json_integer_value(json_object_get(e, "status"));
		cr_expect(strcmp(entry_str(e, "method"), want[i].method) == 0 &&
		                  strcmp(entry_str(e, "uri"), want[i].uri) == 0 &&
		                  status == want[i].status,
		          "request %zu: %s %s answered %d, expected %s %s answered %d", i,
		          entry_str(e, "method"), entry_str(e, "uri"), (int)status, want[i].method,
		          want[i].uri, want[i].status);
		if (status == 401)
			cr_expect_str_eq(entry_str(json_object_get(e, "oauth"), "reason"),
			                 "expired",
			                 "request %zu: a 401 for another reason than expiry", i);
		const char *auth = entry_header(e, "Authorization");
		if (is_oauth_call(e)) {
			json_t *info = json_object_get(e, "oauth");
			cr_expect_str_eq(entry_str(info, "grant_type"), "refresh_token");
			cr_expect_str_eq(entry_str(info, "outcome"), "ok", "token call %zu", i);
			const char *ct = entry_header(e, "Content-Type");
			cr_expect(ct && strncmp(ct, "application/x-www-form-urlencoded", 33) == 0,
			          "token call %zu: Content-Type %s", i, ct ? ct : "(none)");
			continue;
		}
		n_api++;
		expect_sdk_headers(e, version);
		if (i < 7)
			cr_expect(auth && strcmp(auth, "Bearer " PIT) == 0,
			          "request %zu: not the client's PIT", i);
		else
			cr_expect(auth && strncmp(auth, "Bearer eyJ", 10) == 0,
			          "request %zu: not the SDK's OAuth token", i);
	}
	json_decref(log);

	/* The SDK really refreshed, each refresh token once, through the proxy. */
	cr_expect_eq(stat_of("refreshes"), 3, "the SDK's refreshes did not all reach HighLevel");
	cr_expect_eq(stat_of("reuses"), 0, "a refresh token was spent twice");
	cr_expect_eq(stat_of("unauthorized"), 1, "one 401, on the expired token");
	cr_expect_eq(stat_of("invalid_grants"), 0);
	cr_expect_eq(stat_of("bad_client"), 0);
	cr_expect_eq(stat_of("bad_requests"), 0);

	/* /oauth/token was forwarded but counted against no key; every API call was. */
	bool oauth_key = false;
	cr_expect_eq(proxy_daily_used(&oauth_key), n_api, "the proxy's daily counts");
	cr_expect(!oauth_key, "a rate-limit key for /oauth/");
	expect_clean_proxy_log(&sl);
	free(rt);
	free(version);
}

/* ---- inject ---- */

Test(node_sdk, inject_mode_with_a_placeholder_credential)
{
	char node[1024], sdk_dir[1024], conf[2048], store[1100];
	struct fixture_opts o = { .mock_args = MOCK_OAUTH("60000"), .no_proxy = true };

	need_sdk(node, sizeof(node), sdk_dir, sizeof(sdk_dir));
	fixture_start(&fx, &o);
	char *version = installed_version(sdk_dir);

	/* The app installed on LOCATION: its refresh token in the proxy's store. */
	char *rt = seed();
	json_t *entry = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i}",
	                          "resource", LOCATION, "user_type", "Location", "access_token", "",
	                          "access_expires_ms", 0, "refresh_token", rt, "company_id", "",
	                          "location_id", "", "user_id", "", "scope", "", "state", "ok",
	                          "generation", 1, "updated_ms", 0);
	json_t *file = json_pack("{s:i, s:[o]}", "version", 1, "tokens", entry);
	snprintf(store, sizeof(store), "%s/tokens.json", fx.dir);
	cr_assert_eq(json_dump_file(file, store, JSON_COMPACT), 0);
	chmod(store, 0600);
	json_decref(file);
	cr_assert_eq(harness_write_file(fx.dir, "client_secret", CLIENT_SECRET "\n"), 0);
	snprintf(conf, sizeof(conf),
	         "[server]\nmode = inject\n"
	         "[oauth]\nclient_id = " CLIENT_ID "\nclient_secret_file = %s/client_secret\n"
	         "redirect_uri = https://proxy.example/oauth/callback\nrefresh_ahead = 1s\n"
	         "[store]\npath = %s\n",
	         fx.dir, store);
	fx.proxy = fixture_spawn_proxy(&fx, "proxy", conf, NULL, fx.proxy_addr,
	                               sizeof(fx.proxy_addr), fx.admin_addr, sizeof(fx.admin_addr));
	cr_assert(fx.proxy, "the proxy did not start");

	char *env[] = { "GHL_MODE=inject", "GHL_DUMMY_TOKEN=" PLACEHOLDER };
	struct secret_list sl = { { CLIENT_SECRET, rt }, 2 };
	harness_secret(CLIENT_SECRET);

	cr_expect_eq(run_script(node, sdk_dir, env, 2, &sl), 0, "the SDK's checks failed");

	/* Six SDK calls reached HighLevel with the injected token; the hint-less one did not. */
	static const struct want want[] = {
		{ "GET", "/contacts/?locationId=" LOCATION "&query=ada+lovelace&limit=5", 200 },
		{ "POST", "/contacts/search", 200 },
		{ "POST", "/contacts/", 200 },
		{ "GET", "/contacts/ct0000000001", 200 },
		{ "PUT", "/contacts/ct0000000001", 200 },
		{ "DELETE", "/contacts/ct0000000001", 200 },
	};
	size_t n_want = sizeof(want) / sizeof(want[0]), k = 0;
	json_t *log = mock_log(), *e;
	size_t i;

	json_array_foreach(log, i, e)
	{
		if (is_oauth_call(e))
			continue; /* the proxy's own refresh */
		json_int_t status = json_integer_value(json_object_get(e, "status"));
		cr_expect(k < n_want && strcmp(entry_str(e, "method"), want[k].method) == 0 &&
		                  strcmp(entry_str(e, "uri"), want[k].uri) == 0 &&
		                  status == want[k].status,
		          "call %zu: %s %s answered %d, not as expected", k, entry_str(e, "method"),
		          entry_str(e, "uri"), (int)status);
		k++;
		expect_sdk_headers(e, version);
		const char *auth = entry_header(e, "Authorization");
		cr_expect(auth && strncmp(auth, "Bearer eyJ", 10) == 0, "call %zu: not injected",
		          k - 1);
		cr_expect(!auth || !strstr(auth, PLACEHOLDER), "call %zu: the placeholder went out",
		          k - 1);
		cr_expect_eq(entry_header(e, "x-location-id") != NULL,
		             strncmp(entry_str(e, "uri"), "/contacts/ct", 12) == 0,
		             "call %zu: the hint header passes through on id-less routes only",
		             k - 1);
		cr_expect_str_eq(entry_str(json_object_get(e, "oauth"), "outcome"), "live",
		                 "call %zu: the token was not live", k - 1);
	}
	json_decref(log);
	cr_expect_eq(k, n_want, "the mock saw %zu API calls, not %zu", k, n_want);
	/* One refresh of the seeded token, at the first call; every call used its answer. */
	cr_expect_eq(stat_of("refreshes"), 1, "the proxy's refreshes of the stored token");
	cr_expect_eq(stat_of("reuses"), 0, "a refresh token was spent twice");
	cr_expect_eq(stat_of("unauthorized"), 0, "HighLevel saw a bad token");
	expect_clean_proxy_log(&sl);
	free(rt);
	free(version);
}

/* ---- the proxy's own 429s ---- */

/* Burst 3 per 1 s and daily 4 with no waiting: the SDK tells the proxy's burst 429 from its
 * daily one by the X-RateLimit-* headers, as it would HighLevel's, and its opt-in retry waits
 * the burst out. Only admitted calls reach HighLevel. */
Test(node_sdk, proxy_429s_as_the_sdk_reads_them)
{
	char node[1024], sdk_dir[1024];
	struct fixture_opts o = {
		.proxy_conf = "[limits]\nburst = 3\nwindow = 1s\ndaily = 4\nguard = 250ms\n"
		              "max_wait = 0ms\n",
	};

	need_sdk(node, sizeof(node), sdk_dir, sizeof(sdk_dir));
	fixture_start(&fx, &o);
	char *env[] = { "GHL_MODE=ratelimit", "GHL_PIT=" PIT };
	struct secret_list sl = { { PIT }, 1 };
	harness_secret(PIT);

	cr_expect_eq(run_script(node, sdk_dir, env, 2, &sl), 0, "the SDK's checks failed");

	json_t *log = mock_log(), *e;
	size_t i;
	cr_expect_eq(json_array_size(log), 4, "HighLevel saw %zu calls, not the 4 admitted",
	             json_array_size(log));
	json_array_foreach(log, i, e)
	{
		cr_expect_eq(json_integer_value(json_object_get(e, "status")), 200, "call %zu", i);
	}
	json_decref(log);
	cr_expect_geq(fixture_metric(&fx, "ghlproxy_requests_total{outcome=\"rejected_burst\"}"), 2,
	              "the burst 429 and the SDK's early retry");
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_requests_total{outcome=\"rejected_daily\"}"), 1);
	expect_clean_proxy_log(&sl);
}
