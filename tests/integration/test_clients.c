/*
 * test_clients.c: who may use the proxy, through the real binary and the mock upstream.
 *   - [clients] keys in passthrough (X-GHL-Proxy-Key) and inject mode (Authorization: Bearer):
 *     a missing, wrong, doubled or misplaced key is answered 401 JSON with nothing forwarded and
 *     no rate-limit key touched; the right key goes through and the key header never reaches
 *     the upstream (the mock's own record, /__mock/log);
 *   - resource limits and read-only clients answered 403, nothing forwarded;
 *   - SIGHUP picks up a replaced key file, and refuses a reload with a missing or empty one
 *     (the running keys stay);
 *   - per-client and per-reason counters in /metrics;
 *   - off-loopback listeners: refused at start without client keys (proxy) or admin.key_file
 *     (admin), accepted with them (tests still talk to 127.0.0.1 only);
 *   - no key in the log, /metrics or /status; the client's name on the request line.
 */
#define _GNU_SOURCE /* strcasestr */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "fixture.h"
#include "httpc.h"

#define TIMEOUT_MS 20000

#define KEY_ALPHA "ck-alpha-5b0e3f7a91c24d6e8f10"
#define KEY_BETA  "ck-beta-c47d2a9e0b13f5688e21"
#define KEY_GAMMA "ck-gamma-0f9e8d7c6b5a49382716"
#define KEY_NEW   "ck-alpha-rotated-3e4f5a6b7c8d"
#define PIT_1     "pit-11111111-2222-4333-8444-555555555555"
#define PIT_2     "pit-66666666-7777-4888-9999-aaaaaaaaaaaa"
#define ADMIN_KEY "admin-key-9a8b7c6d5e4f3a2b1c0d"

static struct fixture fx;
static char addr[128], admin[128];

static void stop(void)
{
	if (fx.proxy)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
	harness_cleanup_all();
}

TestSuite(clients, .fini = stop, .timeout = 180);
TestSuite(listen, .fini = stop, .timeout = 180);

/* ---- helpers ---- */

static void write_key(const char *name, const char *key)
{
	char content[256];

	harness_secret(key);
	snprintf(content, sizeof(content), "%s\n", key);
	cr_assert_eq(harness_write_file(fx.dir, name, content), 0);
}

/* Copy `in` to `out`, every "@D@" replaced by dir. */
static void subst_dir(const char *in, const char *dir, char *out, size_t len)
{
	size_t used = 0;

	while (*in && used + 1 < len) {
		if (strncmp(in, "@D@", 3) == 0) {
			int n = snprintf(out + used, len - used, "%s", dir);
			used = n < 0 ? used : used + (size_t)n;
			if (used >= len)
				used = len - 1;
			in += 3;
		} else {
			out[used++] = *in++;
		}
	}
	out[used] = '\0';
}

/* The mocks, the key files, and a proxy with the fixture's config plus `extra` (@D@: the scratch
 * directory). */
static void start(const char *extra_fmt)
{
	struct fixture_opts o = { .no_proxy = true };
	char extra[2048];

	fixture_start(&fx, &o);
	write_key("alpha.key", KEY_ALPHA);
	write_key("beta.key", KEY_BETA);
	write_key("gamma.key", KEY_GAMMA);
	harness_secret(PIT_1);
	harness_secret(PIT_2);
	cr_assert_eq(harness_write_file(fx.dir, "loc1.pit", PIT_1), 0);
	cr_assert_eq(harness_write_file(fx.dir, "loc2.pit", PIT_2), 0);
	subst_dir(extra_fmt, fx.dir, extra, sizeof(extra));
	fx.proxy = fixture_spawn_proxy(&fx, "proxy", extra, NULL, addr, sizeof(addr), admin,
	                               sizeof(admin));
	cr_assert(fx.proxy, "the proxy did not start");
	snprintf(fx.proxy_addr, sizeof(fx.proxy_addr), "%s", addr);
	snprintf(fx.admin_addr, sizeof(fx.admin_addr), "%s", admin);
}

#define PASSTHROUGH_CONF          \
	"[clients]\n"             \
	"alpha = @D@/alpha.key\n" \
	"beta = @D@/beta.key\n"   \
	"beta.read_only = yes\n"  \
	"gamma = @D@/gamma.key\n" \
	"gamma.resources = LocPit000001, Comp0001\n"

#define INJECT_CONF                     \
	"[server]\nmode = inject\n"     \
	"[pit]\n"                       \
	"LocPit000001 = @D@/loc1.pit\n" \
	"LocPit000002 = @D@/loc2.pit\n" PASSTHROUGH_CONF

static void request(const char *method, const char *target, const char *headers,
                    struct httpc_response *r)
{
	memset(r, 0, sizeof(*r));
	bool body = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0;
	cr_assert_eq(httpc_request(fx.proxy_addr, method, target, headers, body ? "{}" : NULL,
	                           body ? 2 : 0, r, TIMEOUT_MS),
	             0, "%s %s: no answer", method, target);
}

static json_t *mock_entries(void)
{
	char *log = fixture_mock_log(fx.mock_ctl, 0);
	cr_assert(log);
	json_t *all = json_loads(log, 0, NULL);
	free(log);
	cr_assert(json_is_array(all));
	return all;
}

static json_t *last_entry(void)
{
	json_t *all = mock_entries();
	json_t *e = json_incref(json_array_get(all, json_array_size(all) - 1));
	json_decref(all);
	cr_assert(e, "the mock recorded nothing");
	return e;
}

/* Value of a header the mock received (first of that name), or NULL. Count in *n. */
static const char *entry_header(json_t *e, const char *name, size_t *n)
{
	json_t *hs = json_object_get(e, "headers"), *h;
	const char *v = NULL;
	size_t i, count = 0;

	json_array_foreach(hs, i, h)
	{
		const char *k = json_string_value(json_array_get(h, 0));
		if (k && strcasecmp(k, name) == 0) {
			if (!v)
				v = json_string_value(json_array_get(h, 1));
			count++;
		}
	}
	if (n)
		*n = count;
	return v;
}

static double metric(const char *series)
{
	return fixture_metric(&fx, series);
}

static char *get_admin(const char *path)
{
	struct httpc_response r = { 0 };

	cr_assert_eq(httpc_request(fx.admin_addr, "GET", path, NULL, NULL, 0, &r, TIMEOUT_MS), 0);
	cr_assert_eq(r.status, 200, "%s: %d", path, r.status);
	char *s = strdup((const char *)r.body);
	httpc_response_free(&r);
	return s;
}

/* None of the keys in the proxy's log, /metrics, /status or anything the mock received. */
static void expect_no_key_anywhere(void)
{
	static const char *const secrets[] = { KEY_ALPHA, KEY_BETA, KEY_GAMMA, KEY_NEW };
	char *log = harness_log(fx.proxy);
	char *metrics = get_admin("/metrics");
	char *status = get_admin("/status");
	char *mock = fixture_mock_log(fx.mock_ctl, 0);

	cr_assert(log && mock);
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
		/* A prefix of a key is a leak too: the first 16 bytes are enough to look for. */
		char prefix[17];
		snprintf(prefix, sizeof(prefix), "%s", secrets[i]);
		cr_expect_null(strstr(log, prefix), "a client key in the log");
		cr_expect_null(strstr(metrics, prefix), "a client key in /metrics");
		cr_expect_null(strstr(status, prefix), "a client key in /status");
		cr_expect_null(strstr(mock, prefix), "a client key reached the upstream");
	}
	cr_expect_null(strcasestr(mock, "x-ghl-proxy-key"), "the key header reached the upstream");
	free(log);
	free(metrics);
	free(status);
	free(mock);
}

/* A 401 from the key check: JSON, the scheme to use, nothing forwarded. */
static void expect_401(const char *method, const char *target, const char *headers,
                       const char *scheme, const char *message)
{
	struct httpc_response r;
	int before = fixture_mock_count(fx.mock_ctl);

	request(method, target, headers, &r);
	cr_expect_eq(r.status, 401, "%s: %d %s", headers ? headers : "(none)", r.status, r.body);
	const char *ct = httpc_header(&r, "Content-Type");
	cr_expect(ct && strstr(ct, "application/json"), "not JSON");
	json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	cr_expect(json_is_object(j), "body: %s", r.body);
	cr_expect_eq(json_integer_value(json_object_get(j, "statusCode")), 401);
	const char *m = json_string_value(json_object_get(j, "message"));
	cr_expect(m && strstr(m, message), "message: %s", m ? m : "(none)");
	json_decref(j);
	const char *www = httpc_header(&r, "WWW-Authenticate");
	cr_expect(www && strncmp(www, scheme, strlen(scheme)) == 0, "WWW-Authenticate: %s",
	          www ? www : "(none)");
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before, "a refused request was forwarded");
}

static void expect_403(const char *method, const char *target, const char *headers,
                       const char *message)
{
	struct httpc_response r;
	int before = fixture_mock_count(fx.mock_ctl);

	request(method, target, headers, &r);
	cr_expect_eq(r.status, 403, "%s %s: %d %s", method, target, r.status, r.body);
	json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	const char *m = json_string_value(json_object_get(j, "message"));
	cr_expect(m && strstr(m, message), "message: %s", m ? m : "(none)");
	json_decref(j);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before, "a refused request was forwarded");
}

static void expect_status(const char *method, const char *target, const char *headers, int status)
{
	struct httpc_response r;

	request(method, target, headers, &r);
	cr_expect_eq(r.status, status, "%s %s: %d %s", method, target, r.status, r.body);
	httpc_response_free(&r);
}

#define HL_AUTH   "Authorization: Bearer " PIT_1 "\r\n"
#define PX(k)     "X-GHL-Proxy-Key: " k "\r\n"
#define BEARER(k) "Authorization: Bearer " k "\r\n"

/* ---- passthrough ---- */

Test(clients, passthrough_keys)
{
	start(PASSTHROUGH_CONF);
	const char *t = "/contacts/?locationId=LocPit000001";

	/* Every client's series is there, at 0, before any request. */
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"alpha\"}"), 0);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"beta\"}"), 0);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"gamma\"}"), 0);

	expect_401("GET", t, HL_AUTH, "X-GHL-Proxy-Key", "needs a client key");
	expect_401("GET", t, NULL, "X-GHL-Proxy-Key", "needs a client key");
	expect_401("GET", t, HL_AUTH PX(""), "X-GHL-Proxy-Key", "needs a client key");
	expect_401("GET", t, HL_AUTH PX("ck-alpha-wrong-key-00000000"), "X-GHL-Proxy-Key",
	           "not valid");
	/* A prefix, the key with one more byte, another client's key with a case change */
	expect_401("GET", t, HL_AUTH PX("ck-alpha-5b0e3f7a91c24d6e8f1"), "X-GHL-Proxy-Key",
	           "not valid");
	expect_401("GET", t, HL_AUTH PX(KEY_ALPHA "0"), "X-GHL-Proxy-Key", "not valid");
	expect_401("GET", t, HL_AUTH PX("CK-BETA-C47D2A9E0B13F5688E21"), "X-GHL-Proxy-Key",
	           "not valid");
	/* Two key headers, even with one right: refused rather than guessed between. */
	expect_401("GET", t, HL_AUTH PX(KEY_ALPHA) PX("ck-other-00000000000000000"),
	           "X-GHL-Proxy-Key", "not valid");
	/* In passthrough the key goes in X-GHL-Proxy-Key, not Authorization. */
	expect_401("GET", t, BEARER(KEY_ALPHA), "X-GHL-Proxy-Key", "needs a client key");
	cr_expect_eq(metric("ghlproxy_client_refusals_total{reason=\"missing\"}"), 4);
	cr_expect_eq(metric("ghlproxy_client_refusals_total{reason=\"invalid\"}"), 5);
	cr_expect_eq(metric("ghlproxy_requests_total{outcome=\"unauthorized\"}"), 9);
	/* Nothing refused was counted against a rate-limit key. */
	cr_expect_eq(metric("ghlproxy_live_keys"), 0);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"alpha\"}"), 0);

	/* The right key: forwarded with the client's own Authorization, without the key header. */
	struct httpc_response r;
	request("GET", t, HL_AUTH PX(" " KEY_ALPHA " "), &r);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	json_t *e = last_entry();
	size_t n;
	const char *auth = entry_header(e, "Authorization", &n);
	cr_expect(auth && strcmp(auth, "Bearer " PIT_1) == 0, "Authorization: %s", auth);
	cr_expect_null(entry_header(e, "X-GHL-Proxy-Key", &n));
	json_decref(e);
	request("POST", t, HL_AUTH PX(KEY_ALPHA), &r);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"alpha\"}"), 2);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"beta\"}"), 0);
	cr_expect_eq(metric("ghlproxy_requests_total{outcome=\"forwarded\"}"), 2);

	/* Limits hold in passthrough too (on the resource the proxy classified). */
	expect_status("GET", t, HL_AUTH PX(KEY_BETA), 200);
	expect_403("DELETE", t, HL_AUTH PX(KEY_BETA), "read-only");
	expect_status("GET", t, HL_AUTH PX(KEY_GAMMA), 200);
	expect_403("GET", "/contacts/?locationId=LocElse00001", HL_AUTH PX(KEY_GAMMA),
	           "may not use LocElse00001");
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"beta\"}"), 2);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"gamma\"}"), 2);

	/* The request line names the client, never its key. */
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "alpha") != NULL, "no client name on the request line");
	free(log);
	expect_no_key_anywhere();
}

/* ---- inject ---- */

Test(clients, inject_keys)
{
	start(INJECT_CONF);
	const char *t = "/contacts/?locationId=LocPit000001";

	expect_401("GET", t, NULL, "Bearer", "needs a client key: send Authorization: Bearer");
	expect_401("GET", t, BEARER("ck-wrong-000000000000000000"), "Bearer", "not valid");
	expect_401("GET", t, "Authorization: Basic Y2s6Y2s=\r\n", "Bearer", "not valid");
	expect_401("GET", t, "Authorization: Bearer \r\n", "Bearer", "needs a client key");
	expect_401("GET", t, BEARER(KEY_ALPHA) BEARER(KEY_ALPHA), "Bearer", "not valid");
	/* In inject mode the key goes in Authorization: X-GHL-Proxy-Key alone is no key. */
	expect_401("GET", t, PX(KEY_ALPHA), "Bearer", "needs a client key");
	cr_expect_eq(metric("ghlproxy_live_keys"), 0);

	/* The right key: the PIT goes upstream in its place. */
	struct httpc_response r;
	request("GET", t, BEARER(KEY_ALPHA), &r);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	json_t *e = last_entry();
	size_t n;
	const char *auth = entry_header(e, "Authorization", &n);
	cr_expect(auth && strcmp(auth, "Bearer " PIT_1) == 0, "Authorization: %s", auth);
	cr_expect_eq(n, 1, "%zu Authorization headers upstream", n);
	json_decref(e);
	/* Both key headers sent: Authorization is the key; X-GHL-Proxy-Key is dropped anyway. */
	request("GET", "/contacts/?locationId=LocPit000002", BEARER(KEY_ALPHA) PX(KEY_BETA), &r);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	e = last_entry();
	auth = entry_header(e, "Authorization", &n);
	cr_expect(auth && strcmp(auth, "Bearer " PIT_2) == 0, "Authorization: %s", auth);
	cr_expect_null(entry_header(e, "X-GHL-Proxy-Key", &n));
	json_decref(e);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"alpha\"}"), 2);
	cr_expect_eq(metric("ghlproxy_client_refusals_total{reason=\"missing\"}"), 3);
	cr_expect_eq(metric("ghlproxy_client_refusals_total{reason=\"invalid\"}"), 3);
	expect_no_key_anywhere();
}

Test(clients, resources_limit)
{
	start(INJECT_CONF);

	/* gamma: LocPit000001 and Comp0001 only. */
	expect_status("GET", "/contacts/?locationId=LocPit000001", BEARER(KEY_GAMMA), 200);
	expect_status("POST", "/contacts/", BEARER(KEY_GAMMA) "x-location-id: LocPit000001\r\n",
	              200);
	/* Another resource the proxy holds a PIT for: 403, before any credential is chosen. */
	expect_403("GET", "/contacts/?locationId=LocPit000002", BEARER(KEY_GAMMA),
	           "client gamma may not use LocPit000002");
	/* One it holds nothing for: 403 too (not a 401 telling what the proxy has). */
	expect_403("GET", "/locations/LocNothing01/customFields", BEARER(KEY_GAMMA),
	           "may not use LocNothing01");
	/* A request that names no resource. */
	expect_403("GET", "/users/search", BEARER(KEY_GAMMA), "names no location or company");
	/* Ids are matched exactly. */
	expect_403("GET", "/contacts/?locationId=locpit000001", BEARER(KEY_GAMMA), "may not use");
	expect_403("GET", "/contacts/?locationId=LocPit0000011", BEARER(KEY_GAMMA), "may not use");
	cr_expect_eq(metric("ghlproxy_client_refusals_total{reason=\"resource\"}"), 5);
	cr_expect_eq(metric("ghlproxy_requests_total{outcome=\"forbidden\"}"), 5);
	cr_expect_eq(metric("ghlproxy_client_requests_total{client=\"gamma\"}"), 7);
	/* alpha is not limited. */
	expect_status("GET", "/contacts/?locationId=LocPit000002", BEARER(KEY_ALPHA), 200);
	expect_no_key_anywhere();
}

Test(clients, read_only)
{
	static const struct {
		const char *method;
		int status;
	} cases[] = {
		{ "GET", 200 }, { "HEAD", 200 },  { "OPTIONS", 200 }, { "POST", 403 },
		{ "PUT", 403 }, { "PATCH", 403 }, { "DELETE", 403 },
	};
	int refused = 0;

	start(INJECT_CONF);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *t = "/contacts/?locationId=LocPit000001";
		if (cases[i].status == 403) {
			expect_403(cases[i].method, t, BEARER(KEY_BETA),
			           "client beta is read-only");
			refused++;
		} else {
			int before = fixture_mock_count(fx.mock_ctl);
			struct httpc_response r;
			memset(&r, 0, sizeof(r));
			cr_assert_eq(httpc_request(fx.proxy_addr, cases[i].method, t,
			                           BEARER(KEY_BETA), NULL, 0, &r, TIMEOUT_MS),
			             0);
			cr_expect_eq(r.status, cases[i].status, "%s: %d", cases[i].method,
			             r.status);
			httpc_response_free(&r);
			cr_expect_eq(fixture_mock_count(fx.mock_ctl), before + 1,
			             "%s not forwarded", cases[i].method);
		}
		/* The same methods from a client that may write. */
		expect_status(cases[i].method, t, BEARER(KEY_ALPHA), 200);
	}
	cr_expect_eq(metric("ghlproxy_client_refusals_total{reason=\"read_only\"}"), refused);
	expect_no_key_anywhere();
}

/* ---- reload ---- */

static void reload_and_wait(void)
{
	cr_assert_eq(harness_kill(fx.proxy, SIGHUP), 0);
	cr_assert_eq(harness_wait_notify(fx.proxy, "RELOADING=1", TIMEOUT_MS), 0);
	cr_assert_eq(harness_wait_notify(fx.proxy, "READY=1", TIMEOUT_MS), 0);
}

Test(clients, reload_replaced_and_unreadable_key_files)
{
	start(INJECT_CONF);
	const char *t = "/contacts/?locationId=LocPit000001";
	char path[512];

	expect_status("GET", t, BEARER(KEY_ALPHA), 200);

	/* A replaced key file: the new key works after SIGHUP, the old one no longer. */
	write_key("alpha.key", KEY_NEW);
	expect_status("GET", t, BEARER(KEY_ALPHA), 200); /* not before the reload */
	reload_and_wait();
	cr_expect_eq(metric("ghlproxy_reloads_total"), 1);
	expect_401("GET", t, BEARER(KEY_ALPHA), "Bearer", "not valid");
	expect_status("GET", t, BEARER(KEY_NEW), 200);
	expect_status("GET", t, BEARER(KEY_BETA), 200);

	/* A key file gone: the reload is refused and the running keys stay. */
	snprintf(path, sizeof(path), "%s/beta.key", fx.dir);
	cr_assert_eq(unlink(path), 0);
	write_key("alpha.key", KEY_ALPHA); /* would change alpha's key if applied */
	reload_and_wait();
	cr_expect_eq(metric("ghlproxy_reload_failures_total"), 1);
	cr_expect_eq(metric("ghlproxy_reloads_total"), 1);
	expect_status("GET", t, BEARER(KEY_NEW), 200);
	expect_status("GET", t, BEARER(KEY_BETA), 200);
	expect_401("GET", t, BEARER(KEY_ALPHA), "Bearer", "not valid");

	/* An empty one, and one too short: refused the same way. */
	cr_assert_eq(harness_write_file(fx.dir, "beta.key", ""), 0);
	reload_and_wait();
	cr_assert_eq(harness_write_file(fx.dir, "beta.key", "short\n"), 0);
	reload_and_wait();
	cr_expect_eq(metric("ghlproxy_reload_failures_total"), 3);
	expect_status("GET", t, BEARER(KEY_BETA), 200);

	/* The errors name the client and the file, never a key. */
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "beta.key") != NULL, "the refused reload names no file");
	cr_expect(strstr(log, "reload refused") != NULL, "no refusal logged");
	free(log);

	/* Back to readable files: applied. */
	write_key("beta.key", KEY_BETA);
	reload_and_wait();
	cr_expect_eq(metric("ghlproxy_reloads_total"), 2);
	expect_status("GET", t, BEARER(KEY_ALPHA), 200);
	expect_401("GET", t, BEARER(KEY_NEW), "Bearer", "not valid");
	expect_no_key_anywhere();
}

/* Removing every client by a reload would leave the listener open: refused (restart). */
Test(clients, reload_cannot_remove_every_client)
{
	start("[clients]\nalpha = @D@/alpha.key\n");
	const char *t = "/contacts/?locationId=LocPit000001";
	char *base = harness_read_file(fx.conf_path, NULL);
	cr_assert(base);
	cr_assert_eq(harness_write_file(fx.dir, "proxy.conf", base), 0);
	free(base);
	reload_and_wait();
	cr_expect_eq(metric("ghlproxy_reload_failures_total"), 1);
	expect_401("GET", t, HL_AUTH, "X-GHL-Proxy-Key", "needs a client key");
	expect_status("GET", t, HL_AUTH PX(KEY_ALPHA), 200);
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "cannot remove every client key") != NULL, "%s", log);
	free(log);
}

/* ---- listening off loopback ---- */

/* Spawn the proxy on the fixture's config plus extra, with env; wait for ready or exit. */
static struct harness_proc *spawn_with(const char *name, const char *extra, char **env,
                                       int *exit_code)
{
	char file[64], path[512];
	char *base = harness_read_file(fx.conf_path, NULL);
	char conf[4096];

	cr_assert(base);
	snprintf(conf, sizeof(conf), "%s\n%s", base, extra);
	free(base);
	snprintf(file, sizeof(file), "%s.conf", name);
	cr_assert_eq(harness_write_file(fx.dir, file, conf), 0);
	snprintf(path, sizeof(path), "%s/%s", fx.dir, file);
	char *argv[] = { (char *)harness_proxy_bin(), "-c", path, NULL };
	struct harness_proc *p = harness_spawn(fx.dir, name, argv, env);
	cr_assert(p);
	*exit_code = -1;
	if (harness_wait_ready(p, TIMEOUT_MS) != 0)
		*exit_code = harness_wait_exit(p, TIMEOUT_MS);
	return p;
}

/* "0.0.0.0:PORT" or "[::]:PORT" as bound: the same port on 127.0.0.1. */
static void loopback_of(struct harness_proc *p, const char *var, char *out, size_t len)
{
	char *bound = harness_notify_var(p, var);
	cr_assert(bound);
	char *comma = strchr(bound, ',');
	if (comma)
		*comma = '\0';
	char *colon = strrchr(bound, ':');
	cr_assert(colon);
	snprintf(out, len, "127.0.0.1:%s", colon + 1);
	free(bound);
}

struct listen_case {
	const char *what;
	const char *listen;       /* GHLPROXY_SERVER_LISTEN */
	const char *admin_listen; /* GHLPROXY_SERVER_ADMIN_LISTEN */
	const char *extra;        /* config text (@D@: the scratch dir) */
	bool starts;
};

Test(listen, off_loopback_needs_keys)
{
	static const struct listen_case cases[] = {
		{ "proxy on 0.0.0.0 without keys", "0.0.0.0:0", NULL, "", false },
		{ "proxy on [::] without keys", "[::]:0", NULL, "", false },
		{ "proxy on 0.0.0.0 and loopback without keys", "127.0.0.1:0,0.0.0.0:0", NULL, "",
		  false },
		{ "proxy on 0.0.0.0 with client keys", "0.0.0.0:0", NULL,
		  "[clients]\nalpha = @D@/alpha.key\n", true },
		{ "proxy on 0.0.0.0 with allow_remote", "0.0.0.0:0", NULL,
		  "[server]\nallow_remote = yes\n", true },
		{ "admin on 0.0.0.0 without admin.key_file", NULL, "0.0.0.0:0", "", false },
		{ "admin on 0.0.0.0 with client keys only", NULL, "0.0.0.0:0",
		  "[clients]\nalpha = @D@/alpha.key\n", false },
		{ "admin on 0.0.0.0 with admin.key_file", NULL, "0.0.0.0:0",
		  "[admin]\nkey_file = @D@/admin.key\n", true },
		{ "admin on 0.0.0.0 with allow_remote", NULL, "0.0.0.0:0",
		  "[server]\nallow_remote = yes\n", true },
	};
	struct fixture_opts o = { .no_proxy = true };

	fixture_start(&fx, &o);
	write_key("alpha.key", KEY_ALPHA);
	write_key("admin.key", ADMIN_KEY);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct listen_case *c = &cases[i];
		char env_listen[128], env_admin[128], extra[512], name[32];
		char *env[3];
		int n = 0, code;

		if (c->listen) {
			snprintf(env_listen, sizeof(env_listen), "GHLPROXY_SERVER_LISTEN=%s",
			         c->listen);
			env[n++] = env_listen;
		}
		if (c->admin_listen) {
			snprintf(env_admin, sizeof(env_admin), "GHLPROXY_SERVER_ADMIN_LISTEN=%s",
			         c->admin_listen);
			env[n++] = env_admin;
		}
		env[n] = NULL;
		subst_dir(c->extra, fx.dir, extra, sizeof(extra));
		snprintf(name, sizeof(name), "listen%zu", i);
		struct harness_proc *p = spawn_with(name, extra, env, &code);
		if (!c->starts) {
			cr_expect_eq(code, 1, "%s: started (or exit %d)", c->what, code);
			char *log = harness_log(p);
			cr_expect(strstr(log, "not a loopback address") != NULL, "%s: %s", c->what,
			          log);
			free(log);
			harness_proc_free(p);
			continue;
		}
		cr_expect_eq(code, -1, "%s: did not start (exit %d)", c->what, code);
		if (code != -1) {
			char *log = harness_log(p);
			fprintf(stderr, "%s\n", log);
			free(log);
			harness_proc_free(p);
			continue;
		}
		struct httpc_response r = { 0 };
		char where[64];
		if (c->listen && strstr(c->extra, "[clients]")) {
			/* Reachable, and only with a key. */
			loopback_of(p, "X_GHLPROXY_LISTEN", where, sizeof(where));
			cr_assert_eq(httpc_request(where, "GET", "/contacts/?locationId=L1",
			                           HL_AUTH, NULL, 0, &r, TIMEOUT_MS),
			             0);
			cr_expect_eq(r.status, 401, "%s: %d", c->what, r.status);
			httpc_response_free(&r);
			cr_assert_eq(httpc_request(where, "GET", "/contacts/?locationId=L1",
			                           HL_AUTH PX(KEY_ALPHA), NULL, 0, &r, TIMEOUT_MS),
			             0);
			cr_expect_eq(r.status, 200, "%s: %d", c->what, r.status);
			httpc_response_free(&r);
		}
		if (c->admin_listen && strstr(c->extra, "[admin]")) {
			/* Reachable, and /metrics only with the admin key. */
			loopback_of(p, "X_GHLPROXY_ADMIN", where, sizeof(where));
			cr_assert_eq(httpc_request(where, "GET", "/metrics", NULL, NULL, 0, &r,
			                           TIMEOUT_MS),
			             0);
			cr_expect_eq(r.status, 401, "%s: %d", c->what, r.status);
			httpc_response_free(&r);
			cr_assert_eq(httpc_request(where, "GET", "/metrics", BEARER(ADMIN_KEY),
			                           NULL, 0, &r, TIMEOUT_MS),
			             0);
			cr_expect_eq(r.status, 200, "%s: %d", c->what, r.status);
			httpc_response_free(&r);
		}
		harness_kill(p, SIGTERM);
		cr_expect_eq(harness_wait_exit(p, TIMEOUT_MS), 0, "%s: unclean exit", c->what);
		char *log = harness_log(p);
		cr_expect_null(strstr(log, "ck-alpha-5b0e3f7a"), "%s: a key in the log", c->what);
		cr_expect_null(strstr(log, "admin-key-9a8b7c"), "%s: a key in the log", c->what);
		free(log);
		harness_proc_free(p);
	}
}

/* `ghlproxy -t` says the same before anything starts. */
Test(listen, check_mode_names_the_rule)
{
	struct fixture_opts o = { .no_proxy = true };
	char *env[] = { "GHLPROXY_SERVER_LISTEN=0.0.0.0:8080", NULL };

	fixture_start(&fx, &o);
	char *argv[] = { (char *)harness_proxy_bin(), "-t", "-c", fx.conf_path, NULL };
	struct harness_proc *p = harness_spawn(fx.dir, "check", argv, env);
	cr_assert(p);
	cr_expect_eq(harness_wait_exit(p, TIMEOUT_MS), 1);
	char *log = harness_log(p);
	cr_expect(strstr(log, "not a loopback address") && strstr(log, "[clients]"), "%s", log);
	free(log);
	harness_proc_free(p);
}
