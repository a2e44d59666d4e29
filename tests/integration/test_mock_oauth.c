/*
 * test_mock_oauth.c: the mock upstream's OAuth side, talked to directly: code exchange, refresh
 * token rotation and reuse counting, invalid grants, "Location is not active", access token
 * expiry (401 Invalid JWT) and the life of an old access token after a refresh, the agency's
 * locationToken, client credentials, concurrent refreshes under --oauth-delay-ms, revoke, reset,
 * and the shape of the tokens (claims, fractional iat/exp, uniqueness). These are the rules the
 * proxy's token handling is judged by, so each is pinned here.
 *
 * Needs GHLPROXY_MOCK_BIN (or GHLPROXY_BUILDDIR). Expiry is observed on the wall clock the mock
 * and the test share: a bounded number of polls, each bracketed by clock readings, so no
 * assertion depends on how fast the machine is.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <jansson.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "httpc.h"
#include "oracle.h"

#define T_MS   10000 /* generous per-operation timeout: valgrind and CI are slow */
#define APP    "0123456789abcdef01234567"
#define CID    APP "-lx1q2w3e"
#define SECRET "s3cr+t/=&%x" /* every character a form must encode */

#define RT_INVALID "{\"statusCode\":400,\"message\":\"Invalid grant: refresh token is invalid\"}"
#define NOT_ACTIVE "{\"statusCode\":400,\"message\":\"Location is not active\"}"
#define BAD_JWT    "{\"statusCode\":401,\"message\":\"Invalid JWT\"}"

TestSuite(mock_oauth, .fini = harness_cleanup_all, .timeout = 180);

/* ---- helpers ---- */

struct mock {
	struct harness_proc *proc;
	char *addr;
};

/* The mock with OAuth on (unless `oauth` is false), a TTL, a delay (0: none) and extra args. */
static struct mock mock_start_opts(const char *dir, bool oauth, long ttl_ms, long delay_ms,
                                   const char *const *extra)
{
	const char *bin = harness_mock_bin();
	char ttl[32];
	char delay[32];
	char *argv[40];
	size_t n = 0;
	struct mock m = { 0 };

	cr_assert_not_null(bin, "set GHLPROXY_MOCK_BIN or GHLPROXY_BUILDDIR");
	snprintf(ttl, sizeof(ttl), "%ld", ttl_ms);
	snprintf(delay, sizeof(delay), "%ld", delay_ms);
	argv[n++] = (char *)bin;
	argv[n++] = "--listen";
	argv[n++] = "127.0.0.1:0";
	if (oauth) {
		argv[n++] = "--oauth-client-id";
		argv[n++] = CID;
		argv[n++] = "--oauth-client-secret";
		argv[n++] = SECRET;
		argv[n++] = "--oauth-access-ttl-ms";
		argv[n++] = ttl;
		if (delay_ms > 0) {
			argv[n++] = "--oauth-delay-ms";
			argv[n++] = delay;
		}
	}
	for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 38; i++) {
		argv[n++] = (char *)extra[i];
	}
	argv[n] = NULL;
	m.proc = harness_spawn(dir, "mock", argv, NULL);
	cr_assert_not_null(m.proc);
	cr_assert_eq(harness_wait_ready(m.proc, T_MS), 0, "mock not ready");
	m.addr = harness_notify_var(m.proc, "X_MOCK_LISTEN");
	cr_assert_not_null(m.addr);
	return m;
}

static struct mock mock_start(const char *dir, long ttl_ms, long delay_ms)
{
	return mock_start_opts(dir, true, ttl_ms, delay_ms, NULL);
}

/* Stop it, and check that its stderr never carried the client secret (nor a sanitizer report:
 * ASan's make the exit status non-zero, UBSan's only show in the log). */
static void mock_stop(struct mock *m)
{
	char *log;

	cr_assert_eq(harness_kill(m->proc, SIGTERM), 0);
	cr_assert_eq(harness_wait_exit(m->proc, T_MS), 0, "mock must exit 0 on SIGTERM");
	log = harness_log(m->proc);
	cr_assert_not_null(log);
	cr_assert_null(strstr(log, SECRET), "the client secret in the mock's stderr");
	cr_assert_null(strstr(log, "runtime error"), "UBSan in the mock: %s", log);
	free(log);
	harness_proc_free(m->proc);
	free(m->addr);
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One request; the answer's status, its body parsed (NULL unless JSON) and raw (both may be
 * NULL to ignore). */
static int call(const char *addr, const char *method, const char *target, const char *headers,
                const char *body, json_t **json, char **raw)
{
	struct httpc_response r;
	int status;

	cr_assert_eq(httpc_request(addr, method, target, headers, body,
	                           body == NULL ? 0 : strlen(body), &r, T_MS),
	             0, "%s %s: no answer", method, target);
	status = r.status;
	if (json != NULL) {
		*json = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	}
	if (raw != NULL) {
		*raw = strndup((const char *)r.body, r.body_len);
	}
	httpc_response_free(&r);
	return status;
}

/* A control call with a JSON body; asserts the status; returns the JSON answer. */
static json_t *ctl(const char *addr, const char *method, const char *path, const char *body,
                   int want)
{
	json_t *j = NULL;
	int status = call(addr, method, path, "Content-Type: application/json\r\n", body, &j, NULL);

	cr_assert_eq(status, want, "%s %s: %d", method, path, status);
	cr_assert_not_null(j, "%s %s: not JSON", method, path);
	return j;
}

static json_t *stats(const char *addr)
{
	return ctl(addr, "GET", "/__mock/oauth/stats", NULL, 200);
}

static long stat_of(json_t *st, const char *name)
{
	json_t *v = json_object_get(st, name);

	cr_assert(json_is_integer(v), "stats.%s", name);
	return (long)json_integer_value(v);
}

static long res_stat(json_t *st, const char *res, const char *name)
{
	json_t *v = json_object_get(json_object_get(json_object_get(st, "by_resource"), res), name);

	cr_assert(json_is_integer(v) || json_is_boolean(v), "by_resource.%s.%s", res, name);
	return json_is_boolean(v) ? json_is_true(v) : (long)json_integer_value(v);
}

/* Check every named counter of /__mock/oauth/stats at once ("name", value, ..., NULL). */
static void expect_stats(const char *addr, ...)
{
	json_t *st = stats(addr);
	va_list ap;
	const char *name;

	va_start(ap, addr);
	while ((name = va_arg(ap, const char *)) != NULL) {
		long want = va_arg(ap, long);
		long got = stat_of(st, name);

		cr_assert_eq(got, want, "stats.%s = %ld, want %ld", name, got, want);
	}
	va_end(ap);
	json_decref(st);
}

/* application/x-www-form-urlencoded of ("name", "value", ..., NULL); caller frees. */
static char *form(const char *first, ...)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	va_list ap;
	const char *name = first;
	bool sep = false;

	cr_assert_not_null(f);
	va_start(ap, first);
	while (name != NULL) {
		const char *value = va_arg(ap, const char *);

		fprintf(f, "%s%s=", sep ? "&" : "", name);
		for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
			if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.') {
				fputc(*p, f);
			} else {
				fprintf(f, "%%%02X", *p);
			}
		}
		sep = true;
		name = va_arg(ap, const char *);
	}
	va_end(ap);
	fclose(f);
	return out;
}

#define FORM_HDR "Content-Type: application/x-www-form-urlencoded\r\n"

/* POST /oauth/token with a ready form body. */
static int token_post(const char *addr, const char *body, json_t **json, char **raw)
{
	return call(addr, "POST", "/oauth/token", FORM_HDR, body, json, raw);
}

/* A v2 refresh of `rt`; user_type may be NULL (not sent). */
static int refresh(const char *addr, const char *rt, const char *user_type, json_t **json,
                   char **raw)
{
	char *body =
	        user_type == NULL
	                ? form("client_id", CID, "client_secret", SECRET, "grant_type",
	                       "refresh_token", "refresh_token", rt, NULL)
	                : form("client_id", CID, "client_secret", SECRET, "grant_type",
	                       "refresh_token", "refresh_token", rt, "user_type", user_type, NULL);
	int status = token_post(addr, body, json, raw);

	free(body);
	return status;
}

/* A successful refresh: new refresh token to *rt_out, access token to *at_out (either may be
 * NULL); returns the answer. */
static json_t *refresh_ok(const char *addr, const char *rt, char **rt_out, char **at_out)
{
	json_t *j = NULL;
	int status = refresh(addr, rt, NULL, &j, NULL);

	cr_assert_eq(status, 200, "refresh: %d", status);
	cr_assert_not_null(j);
	if (rt_out != NULL) {
		*rt_out = strdup(json_string_value(json_object_get(j, "refresh_token")));
	}
	if (at_out != NULL) {
		*at_out = strdup(json_string_value(json_object_get(j, "access_token")));
	}
	return j;
}

/* /__mock/oauth/seed; returns the refresh token (caller frees). */
static char *seed(const char *addr, const char *user_type, const char *res, const char *extra)
{
	char body[512];
	json_t *j;
	char *rt;

	snprintf(body, sizeof(body), "{\"user_type\":\"%s\",\"resource\":\"%s\"%s%s}", user_type,
	         res, extra == NULL ? "" : ",", extra == NULL ? "" : extra);
	j = ctl(addr, "POST", "/__mock/oauth/seed", body, 200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "resource")), res);
	rt = strdup(json_string_value(json_object_get(j, "refresh_token")));
	json_decref(j);
	return rt;
}

/* An API call with `token` as bearer (NULL: no Authorization); its status. */
static int api(const char *addr, const char *token, char **raw)
{
	char *hdr = NULL;
	int status;

	if (token != NULL) {
		cr_assert_gt(asprintf(&hdr, "Authorization: Bearer %s\r\nVersion: 2021-07-28\r\n",
		                      token),
		             0);
	}
	status = call(addr, "GET", "/contacts/?locationId=locA", hdr, NULL, NULL, raw);
	free(hdr);
	return status;
}

/* The JSON of one base64url part of a JWT (part 0: header, 1: claims); *text gets the raw
 * decoded text when not NULL. */
static json_t *jwt_part(const char *token, int part, char **text)
{
	const char *s = token;
	const char *e;
	char *b64;
	size_t n;
	BIO *bio;
	BIO *b;
	char buf[4096];
	int got;
	json_t *j;

	for (int i = 0; i < part; i++) {
		s = strchr(s, '.');
		cr_assert_not_null(s, "not a JWT");
		s++;
	}
	e = strchr(s, '.');
	cr_assert_not_null(e, "not a JWT");
	n = (size_t)(e - s);
	b64 = calloc(1, n + 4);
	for (size_t i = 0; i < n; i++) {
		b64[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
	}
	while (n % 4 != 0) {
		b64[n++] = '=';
	}
	b = BIO_new(BIO_f_base64());
	BIO_set_flags(b, BIO_FLAGS_BASE64_NO_NL);
	bio = BIO_push(b, BIO_new_mem_buf(b64, (int)n));
	got = BIO_read(bio, buf, sizeof(buf) - 1);
	BIO_free_all(bio);
	free(b64);
	cr_assert_gt(got, 0);
	buf[got] = '\0';
	j = json_loads(buf, 0, NULL);
	cr_assert_not_null(j, "JWT part %d is not JSON: %s", part, buf);
	if (text != NULL) {
		*text = strdup(buf);
	}
	return j;
}

/* The exp claim of an access token, in wall ms. */
static int64_t exp_ms(const char *token)
{
	json_t *c = jwt_part(token, 1, NULL);
	double exp = json_number_value(json_object_get(c, "exp"));

	json_decref(c);
	return (int64_t)llround(exp * 1000.0);
}

/*
 * Call the API with `token` until it answers 401 (a bounded number of polls). Each answer is
 * bracketed by wall-clock readings: a 200 must have started no later than exp, the 401 must
 * have ended no earlier. Returns the number of 200s before it.
 */
static int poll_until_expired(const char *addr, const char *token)
{
	int64_t exp = exp_ms(token);
	int n200 = 0;

	for (int i = 0; i < 3000; i++) {
		int64_t before = wall_ms();
		char *raw = NULL;
		int status = api(addr, token, &raw);
		int64_t after = wall_ms();

		if (status == 200) {
			cr_assert_leq(before, exp, "answered 200 after exp (%lld > %lld)",
			              (long long)before, (long long)exp);
			n200++;
		} else {
			cr_assert_eq(status, 401);
			cr_assert_str_eq(raw, BAD_JWT);
			cr_assert_geq(after, exp, "401 before exp (%lld < %lld)", (long long)after,
			              (long long)exp);
			free(raw);
			return n200;
		}
		free(raw);
		poll(NULL, 0, 5);
	}
	cr_assert_fail("the token never expired");
	return n200;
}

/* The outcomes the mock logged for calls under /oauth/, in order, space-joined. */
static char *logged_outcomes(const char *addr, char **whole)
{
	char *raw = NULL;
	json_t *log = NULL;
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	size_t i;
	json_t *e;

	cr_assert_eq(call(addr, "GET", "/__mock/log", NULL, NULL, &log, &raw), 200);
	json_array_foreach(log, i, e)
	{
		json_t *o = json_object_get(e, "oauth");

		if (strncmp(json_string_value(json_object_get(e, "uri")), "/oauth/", 7) == 0) {
			cr_assert_str_eq(json_string_value(json_object_get(e, "key")), "oauth");
			fprintf(f, "%s%s", ftell(f) > 0 ? " " : "",
			        json_string_value(json_object_get(o, "outcome")));
		}
	}
	fclose(f);
	json_decref(log);
	if (whole != NULL) {
		*whole = raw;
	} else {
		free(raw);
	}
	return out;
}

/* ---- options ---- */

Test(mock_oauth, options_are_checked)
{
	static const struct {
		const char *args[6];
	} bad[] = {
		{ { "--oauth-client-id", CID, NULL } }, /* no secret */
		{ { "--oauth-client-secret", SECRET, NULL } },
		{ { "--oauth-client-id", "0123456789abcdef0123456-x", "--oauth-client-secret", "s",
		    NULL } }, /* 23 hex digits */
		{ { "--oauth-client-id", "0123456789abcdef0123456g-x", "--oauth-client-secret", "s",
		    NULL } },
		{ { "--oauth-client-id", APP "-", "--oauth-client-secret", "s", NULL } },
		{ { "--oauth-client-id", APP, "--oauth-client-secret", "s", NULL } },
		{ { "--oauth-client-id", CID, "--oauth-client-secret", "", NULL } },
		{ { "--oauth-access-ttl-ms", "0", NULL } },
		{ { "--oauth-delay-ms", "-1", NULL } },
	};
	char *dir = harness_tmpdir();

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *argv[10] = { (char *)harness_mock_bin(), "--listen", "127.0.0.1:0" };
		size_t n = 3;
		struct harness_proc *p;

		for (size_t k = 0; bad[i].args[k] != NULL; k++) {
			argv[n++] = (char *)bad[i].args[k];
		}
		argv[n] = NULL;
		p = harness_spawn(dir, "bad", argv, NULL);
		cr_assert_not_null(p);
		cr_assert_eq(harness_wait_exit(p, T_MS), 2, "case %zu must be refused", i);
		harness_proc_free(p);
	}
	harness_tmpdir_free(dir);
}

Test(mock_oauth, off_by_default)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start_opts(dir, false, 0, 0, NULL);
	json_t *j = NULL;

	/* Without the options /oauth/ is an ordinary echoed path and control says why not. */
	cr_assert_eq(call(m.addr, "POST", "/oauth/token", FORM_HDR, "grant_type=refresh_token", &j,
	                  NULL),
	             200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "uri")), "/oauth/token");
	json_decref(j);
	json_decref(ctl(m.addr, "GET", "/__mock/oauth/stats", NULL, 404));
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- grants ---- */

Test(mock_oauth, code_exchange)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *old_rt = seed(m.addr, "Location", "locA", NULL);
	char *exchange = form("client_id", CID, "client_secret", SECRET, "grant_type",
	                      "authorization_code", "code", "c-1", "user_type", "Location",
	                      "redirect_uri", "https://app.example/cb", NULL);
	char *no_redirect = form("client_id", CID, "client_secret", SECRET, "grant_type",
	                         "authorization_code", "code", "c-1", NULL);
	char *unknown = form("client_id", CID, "client_secret", SECRET, "grant_type",
	                     "authorization_code", "code", "c-nope", NULL);
	char *company = form("client_id", CID, "client_secret", SECRET, "grant_type",
	                     "authorization_code", "code", "c-2", "user_type", "Company", NULL);
	char *rt = NULL;
	char *raw = NULL;
	json_t *j = NULL;

	json_decref(ctl(m.addr, "POST", "/__mock/oauth/code",
	                "{\"code\":\"c-1\",\"user_type\":\"Location\",\"resource\":\"locA\","
	                "\"company_id\":\"compX\",\"redirect_uri\":\"https://app.example/cb\"}",
	                200));
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/code",
	                "{\"code\":\"c-1\",\"user_type\":\"Location\",\"resource\":\"locB\"}",
	                400));
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/code",
	                "{\"code\":\"c-2\",\"user_type\":\"Company\",\"resource\":\"compX\"}",
	                200));
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/code", "{\"code\":\"c-3\"}", 400));
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/code", "not json", 400));

	/* a registered redirect_uri must match; the code survives the mismatch */
	cr_assert_eq(token_post(m.addr, no_redirect, NULL, NULL), 400);
	cr_assert_eq(token_post(m.addr, exchange, &j, NULL), 200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "token_type")), "Bearer");
	cr_assert_eq(json_integer_value(json_object_get(j, "expires_in")), 86399);
	cr_assert_str_eq(json_string_value(json_object_get(j, "userType")), "Location");
	cr_assert_str_eq(json_string_value(json_object_get(j, "locationId")), "locA");
	cr_assert_str_eq(json_string_value(json_object_get(j, "companyId")), "compX");
	cr_assert_not_null(strstr(json_string_value(json_object_get(j, "scope")), "contacts."));
	cr_assert_gt(strlen(json_string_value(json_object_get(j, "userId"))), 0);
	cr_assert_null(json_object_get(j, "approvedLocations"), "a Location answer");
	rt = strdup(json_string_value(json_object_get(j, "refresh_token")));
	cr_assert_eq(api(m.addr, json_string_value(json_object_get(j, "access_token")), NULL), 200);
	json_decref(j);

	/* single use; unknown codes are invalid grants too */
	cr_assert_eq(token_post(m.addr, exchange, NULL, &raw), 400);
	cr_assert_not_null(strstr(raw, "Invalid grant"), "%s", raw);
	free(raw);
	cr_assert_eq(token_post(m.addr, unknown, NULL, NULL), 400);

	/* the install replaced the seeded refresh token: invalid now, but not a reuse */
	cr_assert_eq(refresh(m.addr, old_rt, NULL, NULL, &raw), 400);
	cr_assert_str_eq(raw, RT_INVALID);
	free(raw);
	json_decref(refresh_ok(m.addr, rt, NULL, NULL));

	/* an agency install */
	cr_assert_eq(token_post(m.addr, company, &j, NULL), 200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "userType")), "Company");
	cr_assert_str_eq(json_string_value(json_object_get(j, "companyId")), "compX");
	cr_assert_null(json_object_get(j, "locationId"));
	cr_assert(json_is_array(json_object_get(j, "approvedLocations")));
	json_decref(j);

	expect_stats(m.addr, "code_exchanges", 2L, "invalid_grants", 3L, "reuses", 0L, "refreshes",
	             1L, "bad_requests", 1L, "bad_client", 0L, NULL);
	free(exchange);
	free(no_redirect);
	free(unknown);
	free(company);
	free(old_rt);
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, rotation_reuse_and_invalid_grant)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt[4] = { seed(m.addr, "Location", "locA", "\"company_id\":\"compX\"") };
	char *at[4] = { NULL };
	char *raw = NULL;
	char *whole = NULL;
	char *outcomes;
	json_t *st;

	json_decref(refresh_ok(m.addr, rt[0], &rt[1], &at[1]));
	json_decref(refresh_ok(m.addr, rt[1], &rt[2], &at[2]));

	/* each spent token presented again: the exact 400, counted as a reuse */
	cr_assert_eq(refresh(m.addr, rt[0], "Location", NULL, &raw), 400);
	cr_assert_str_eq(raw, RT_INVALID);
	free(raw);
	cr_assert_eq(refresh(m.addr, rt[1], NULL, NULL, &raw), 400);
	cr_assert_str_eq(raw, RT_INVALID);
	free(raw);
	/* never issued: the same 400, counted as an invalid grant */
	cr_assert_eq(refresh(m.addr, "eyJhbGciOiJub25lIn0.e30.c2ln", NULL, NULL, &raw), 400);
	cr_assert_str_eq(raw, RT_INVALID);
	free(raw);

	/* the reuses did not kill the live token; old access tokens still work */
	json_decref(refresh_ok(m.addr, rt[2], &rt[3], &at[3]));
	for (int i = 1; i <= 3; i++) {
		cr_assert_eq(api(m.addr, at[i], NULL), 200, "access token %d", i);
	}
	for (int i = 0; i < 4; i++) {
		for (int k = i + 1; k < 4; k++) {
			cr_assert_str_neq(rt[i], rt[k]);
			if (i > 0) {
				cr_assert_str_neq(at[i], at[k]);
			}
		}
	}

	st = stats(m.addr);
	cr_assert_eq(stat_of(st, "refreshes"), 3);
	cr_assert_eq(stat_of(st, "reuses"), 2);
	cr_assert_eq(stat_of(st, "invalid_grants"), 1);
	cr_assert_eq(stat_of(st, "concurrent_max"), 1, "one at a time");
	cr_assert_eq(res_stat(st, "locA", "reuses"), 2);
	cr_assert_eq(res_stat(st, "locA", "refreshes"), 3);
	cr_assert_eq(res_stat(st, "locA", "has_live_refresh_token"), 1);
	json_decref(st);

	/* the log says what happened, and never carries a refresh token or the secret */
	outcomes = logged_outcomes(m.addr, &whole);
	cr_assert_str_eq(outcomes, "ok ok reuse reuse invalid_grant ok");
	cr_assert_null(strstr(whole, SECRET));
	for (int i = 0; i < 4; i++) {
		cr_assert_null(strstr(whole, rt[i]), "refresh token %d in the log", i);
	}
	free(outcomes);
	free(whole);
	for (int i = 0; i < 4; i++) {
		free(rt[i]);
		free(at[i]);
	}
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, inactive_keeps_the_refresh_token)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *raw = NULL;
	char *outcomes;

	json_decref(ctl(m.addr, "POST", "/__mock/oauth/inactive",
	                "{\"resource\":\"locA\",\"count\":2}", 200));
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/inactive",
	                "{\"resource\":\"nowhere\",\"count\":1}", 404));
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/inactive",
	                "{\"resource\":\"locA\",\"count\":-1}", 400));
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(refresh(m.addr, rt, NULL, NULL, &raw), 400);
		cr_assert_str_eq(raw, NOT_ACTIVE);
		free(raw);
	}
	json_decref(refresh_ok(m.addr, rt, NULL, NULL)); /* the same token, still live */
	expect_stats(m.addr, "inactive_answers", 2L, "refreshes", 1L, "reuses", 0L,
	             "invalid_grants", 0L, NULL);
	outcomes = logged_outcomes(m.addr, NULL);
	cr_assert_str_eq(outcomes, "inactive inactive ok");
	free(outcomes);
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- access tokens ---- */

Test(mock_oauth, expiry_and_bearer_judgement)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 1000, 0);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *next_rt = NULL;
	char *at = NULL;
	char *forged = oracle_make_jwt(APP, "Location", "locA", (double)wall_ms() / 1000.0 + 3600);
	char *foreign =
	        oracle_make_jwt("ffffffffffffffffffffffff", "Location", "locA", 1751436979.849);
	const struct {
		const char *token;
		int want;
		const char *reason;
	} cases[] = {
		{ forged, 401, "unknown" },   /* this app's claims, never issued */
		{ rt, 401, "refresh_token" }, /* a refresh token is no access token */
		{ foreign, 200, NULL },       /* another app's JWT: as without OAuth */
		{ "pit-0a1b2c3d-0000-4000-8000-000000000000", 200, NULL },
		{ "opaque-token", 200, NULL },
		{ NULL, 200, NULL }, /* no Authorization */
	};
	json_t *log = NULL;
	char *raw = NULL;
	size_t since;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(api(m.addr, cases[i].token, &raw), cases[i].want, "case %zu", i);
		if (cases[i].want == 401) {
			cr_assert_str_eq(raw, BAD_JWT);
		}
		free(raw);
	}
	cr_assert_eq(call(m.addr, "GET", "/__mock/log", NULL, NULL, &log, NULL), 200);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *o = json_object_get(json_array_get(log, i), "oauth");

		if (cases[i].reason != NULL) {
			cr_assert_str_eq(json_string_value(json_object_get(o, "reason")),
			                 cases[i].reason);
		} else {
			cr_assert_null(o, "case %zu: no OAuth verdict on foreign bearers", i);
		}
	}
	since = json_array_size(log);
	json_decref(log);

	json_decref(refresh_ok(m.addr, rt, &next_rt, &at));
	cr_assert_geq(poll_until_expired(m.addr, at), 1, "live right after the refresh");
	cr_assert_eq(api(m.addr, at, NULL), 401, "expired for good");
	expect_stats(m.addr, "unauthorized", 4L, NULL);
	{
		char target[64];
		json_t *e;

		snprintf(target, sizeof(target), "/__mock/log?since=%zu", since + 1);
		cr_assert_eq(call(m.addr, "GET", target, NULL, NULL, &log, NULL), 200);
		e = json_array_get(log, 0);
		cr_assert_str_eq(json_string_value(json_object_get(e, "key")), APP ":locA");
		cr_assert_str_eq(
		        json_string_value(json_object_get(json_object_get(e, "oauth"), "outcome")),
		        "live");
		e = json_array_get(log, json_array_size(log) - 1);
		cr_assert_eq(json_integer_value(json_object_get(e, "status")), 401);
		cr_assert_str_eq(
		        json_string_value(json_object_get(json_object_get(e, "oauth"), "reason")),
		        "expired");
		json_decref(log);
	}
	free(forged);
	free(foreign);
	free(rt);
	free(next_rt);
	free(at);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, old_access_token_lives_until_its_exp)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 1500, 0);
	char *rt0 = seed(m.addr, "Location", "locA", NULL);
	char *rt1 = NULL;
	char *rt2 = NULL;
	char *a1 = NULL;
	char *a2 = NULL;

	json_decref(refresh_ok(m.addr, rt0, &rt1, &a1));
	json_decref(refresh_ok(m.addr, rt1, &rt2, &a2));
	cr_assert_geq(exp_ms(a2), exp_ms(a1));
	/* a1 was superseded by a2, yet it keeps working until its own exp, and no longer */
	cr_assert_geq(poll_until_expired(m.addr, a1), 1);
	expect_stats(m.addr, "refreshes", 2L, "unauthorized", 1L, NULL);
	free(rt0);
	free(rt1);
	free(rt2);
	free(a1);
	free(a2);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, claims_fractional_and_unique)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 2000, 0);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *ats[12] = { NULL };
	char *text = NULL;
	json_t *c;
	json_t *h;
	json_t *meta;
	json_t *j;

	for (int i = 0; i < 12; i++) {
		char *next = NULL;
		int64_t before = wall_ms();
		int64_t after;
		double iat;
		double exp;
		const char *p;

		j = refresh_ok(m.addr, rt, &next, &ats[i]);
		after = wall_ms();
		cr_assert_eq(json_integer_value(json_object_get(j, "expires_in")), 2);
		json_decref(j);
		free(rt);
		rt = next;
		c = jwt_part(ats[i], 1, &text);
		iat = json_number_value(json_object_get(c, "iat"));
		exp = json_number_value(json_object_get(c, "exp"));
		cr_assert(json_is_real(json_object_get(c, "iat")), "iat is fractional: %s", text);
		cr_assert(json_is_real(json_object_get(c, "exp")), "exp is fractional: %s", text);
		cr_assert_neq(fmod(iat, 1.0), 0.0);
		cr_assert_neq(fmod(exp, 1.0), 0.0);
		cr_assert(fabs(exp - iat - 2.0) <= 0.0015, "exp - iat = %f", exp - iat);
		cr_assert(iat * 1000.0 >= (double)before - 1 && iat * 1000.0 <= (double)after + 2,
		          "iat %f is now", iat);
		/* as HighLevel writes them: three decimals */
		p = strstr(text, "\"iat\":");
		cr_assert_not_null(p);
		p = strchr(p, '.');
		cr_assert(p[1] >= '0' && p[1] <= '9' && p[3] >= '0' && p[3] <= '9' &&
		                  (p[4] == ',' || p[4] == '}'),
		          "%s", text);
		free(text);
		json_decref(c);
	}
	c = jwt_part(ats[0], 1, NULL);
	h = jwt_part(ats[0], 0, NULL);
	meta = json_object_get(c, "oauthMeta");
	cr_assert_str_eq(json_string_value(json_object_get(h, "alg")), "RS256");
	cr_assert_str_eq(json_string_value(json_object_get(c, "authClass")), "Location");
	cr_assert_str_eq(json_string_value(json_object_get(c, "authClassId")), "locA");
	cr_assert_str_eq(json_string_value(json_object_get(c, "source")), "INTEGRATION");
	cr_assert_str_eq(json_string_value(json_object_get(c, "channel")), "OAUTH");
	cr_assert_str_eq(json_string_value(json_object_get(c, "sourceId")), CID);
	cr_assert_str_eq(json_string_value(json_object_get(meta, "client")), APP);
	cr_assert_str_eq(json_string_value(json_object_get(meta, "clientKey")), CID);
	cr_assert_str_eq(json_string_value(json_object_get(meta, "versionId")), APP);
	cr_assert_gt(json_array_size(json_object_get(meta, "scopes")), 0);
	json_decref(c);
	json_decref(h);
	for (int i = 0; i < 12; i++) {
		for (int k = i + 1; k < 12; k++) {
			cr_assert_str_neq(ats[i], ats[k], "tokens %d and %d", i, k);
		}
	}
	for (int i = 0; i < 12; i++) {
		free(ats[i]);
	}
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- agency ---- */

Test(mock_oauth, location_token)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *crt = seed(m.addr, "Company", "compX", "\"approved_locations\":[\"locA\",\"locB\"]");
	char *cat = NULL;
	char *lat = NULL;
	char *hdr = NULL;
	char *lhdr = NULL;
	json_t *j = refresh_ok(m.addr, crt, NULL, &cat);
	json_t *log = NULL;
	json_t *c;
	const struct {
		const char *body;
		int want;
	} bad[] = {
		{ "companyId=compX&locationId=locZ", 400 }, /* not approved */
		{ "companyId=compY&locationId=locA", 400 }, /* not this agency */
		{ "companyId=compX", 400 },
		{ "companyId=compX&locationId=", 400 },
	};

	cr_assert_str_eq(json_string_value(json_object_get(j, "userType")), "Company");
	cr_assert_eq(json_array_size(json_object_get(j, "approvedLocations")), 2);
	json_decref(j);
	cr_assert_gt(asprintf(&hdr, FORM_HDR "Authorization: Bearer %s\r\n", cat), 0);

	cr_assert_eq(call(m.addr, "POST", "/oauth/locationToken", hdr,
	                  "companyId=compX&locationId=locA", &j, NULL),
	             200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "userType")), "Location");
	cr_assert_str_eq(json_string_value(json_object_get(j, "locationId")), "locA");
	cr_assert_str_eq(json_string_value(json_object_get(j, "companyId")), "compX");
	cr_assert_eq(json_integer_value(json_object_get(j, "expires_in")), 86399);
	cr_assert_null(json_object_get(j, "refresh_token"), "agency-minted: no refresh token");
	lat = strdup(json_string_value(json_object_get(j, "access_token")));
	json_decref(j);
	c = jwt_part(lat, 1, NULL);
	cr_assert_str_eq(json_string_value(json_object_get(c, "authClass")), "Location");
	cr_assert_str_eq(json_string_value(json_object_get(c, "authClassId")), "locA");
	json_decref(c);
	cr_assert_eq(api(m.addr, lat, NULL), 200);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(
		        call(m.addr, "POST", "/oauth/locationToken", hdr, bad[i].body, NULL, NULL),
		        bad[i].want, "case %zu", i);
	}
	/* a Location token, a foreign one or none cannot mint */
	cr_assert_gt(asprintf(&lhdr, FORM_HDR "Authorization: Bearer %s\r\n", lat), 0);
	cr_assert_eq(call(m.addr, "POST", "/oauth/locationToken", lhdr,
	                  "companyId=compX&locationId=locA", NULL, NULL),
	             403);
	cr_assert_eq(call(m.addr, "POST", "/oauth/locationToken",
	                  FORM_HDR "Authorization: Bearer pit-1\r\n",
	                  "companyId=compX&locationId=locA", NULL, NULL),
	             401);
	cr_assert_eq(call(m.addr, "POST", "/oauth/locationToken", FORM_HDR,
	                  "companyId=compX&locationId=locA", NULL, NULL),
	             401);
	cr_assert_eq(call(m.addr, "GET", "/oauth/locationToken", NULL, NULL, NULL, NULL), 404);
	/* JSON is accepted here too */
	free(hdr);
	cr_assert_gt(asprintf(&hdr,
	                      "Content-Type: application/json\r\nAuthorization: Bearer %s\r\n",
	                      cat),
	             0);
	cr_assert_eq(call(m.addr, "POST", "/oauth/locationToken", hdr,
	                  "{\"companyId\":\"compX\",\"locationId\":\"locB\"}", NULL, NULL),
	             200);

	expect_stats(m.addr, "location_tokens", 2L, "unauthorized", 2L, "bad_requests", 6L,
	             "refreshes", 1L, NULL);
	cr_assert_eq(call(m.addr, "GET", "/__mock/log", NULL, NULL, &log, NULL), 200);
	cr_assert_str_eq(json_string_value(json_object_get(json_array_get(log, 2), "key")),
	                 APP ":locA", "the minted token is the location's");
	json_decref(log);
	free(hdr);
	free(lhdr);
	free(crt);
	free(cat);
	free(lat);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- requests the token endpoint refuses ---- */

Test(mock_oauth, client_credentials)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *wrong_secret = form("client_id", CID, "client_secret", "nope", "grant_type",
	                          "refresh_token", "refresh_token", rt, NULL);
	char *wrong_id = form("client_id", APP "-other", "client_secret", SECRET, "grant_type",
	                      "refresh_token", "refresh_token", rt, NULL);
	char *no_secret =
	        form("client_id", CID, "grant_type", "refresh_token", "refresh_token", rt, NULL);
	const char *bodies[] = { wrong_secret, wrong_id, no_secret };
	char *whole = NULL;

	for (size_t i = 0; i < 3; i++) {
		json_t *j = NULL;

		cr_assert_eq(token_post(m.addr, bodies[i], &j, NULL), 401, "case %zu", i);
		cr_assert_eq(json_integer_value(json_object_get(j, "statusCode")), 401);
		json_decref(j);
	}
	/* refused before the grant: the refresh token was not spent */
	json_decref(refresh_ok(m.addr, rt, NULL, NULL));
	expect_stats(m.addr, "bad_client", 3L, "refreshes", 1L, "reuses", 0L, NULL);
	free(logged_outcomes(m.addr, &whole));
	cr_assert_null(strstr(whole, SECRET), "no secret in the log");
	cr_assert_null(strstr(whole, "nope"));
	free(whole);
	free(wrong_secret);
	free(wrong_id);
	free(no_secret);
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, malformed_token_requests_spend_nothing)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *creds = form("client_id", CID, "client_secret", SECRET, NULL);
	const struct {
		const char *content_type;
		const char *fields; /* appended to the credentials */
		const char *version;
		int want;
		const char *message;
	} cases[] = {
		{ "application/json", NULL, NULL, 400, "Content-Type" }, /* JSON only with v3 */
		{ NULL, "&grant_type=refresh_token&refresh_token=", NULL, 400, "Content-Type" },
		{ "text/plain", "&grant_type=refresh_token&refresh_token=", NULL, 400,
		  "Content-Type" },
		{ FORM_HDR, "&grant_type=password", NULL, 400, "grant_type" },
		{ FORM_HDR, "", NULL, 400, "grant_type" },
		{ FORM_HDR, "&grant_type=refresh_token", NULL, 400, "refresh_token is required" },
		{ FORM_HDR, "&grant_type=authorization_code", NULL, 400, "code is required" },
		{ FORM_HDR, "&grant_type=refresh_token&user_type=Agency&refresh_token=", NULL, 400,
		  "user_type" },
		{ FORM_HDR, "&grant_type=refresh_token&user_type=Company&refresh_token=", NULL, 400,
		  "does not match" },
		{ FORM_HDR, "&novalue", NULL, 400, "malformed" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *body = NULL;
		char *hdr = NULL;
		char *raw = NULL;
		const char *ct = cases[i].content_type;
		int status;

		if (ct != NULL && strcmp(ct, "application/json") == 0) {
			cr_assert_gt(asprintf(&body,
			                      "{\"client_id\":\"%s\",\"client_secret\":\"%s\","
			                      "\"grant_type\":\"refresh_token\","
			                      "\"refresh_token\":\"%s\"}",
			                      CID, SECRET, rt),
			             0);
			ct = "Content-Type: application/json\r\n";
		} else {
			const char *f = cases[i].fields;
			bool with_rt = f[strlen(f) > 0 ? strlen(f) - 1 : 0] == '=';

			cr_assert_gt(asprintf(&body, "%s%s%s", creds, f, with_rt ? rt : ""), 0);
		}
		if (ct != NULL && strcmp(ct, "text/plain") == 0) {
			ct = "Content-Type: text/plain\r\n";
		}
		cr_assert_gt(asprintf(&hdr, "%s", ct == NULL ? "" : ct), -1);
		status = call(m.addr, "POST", "/oauth/token", hdr, body, NULL, &raw);
		cr_assert_eq(status, cases[i].want, "case %zu: %d %s", i, status, raw);
		cr_assert_not_null(strstr(raw, cases[i].message), "case %zu: %s", i, raw);
		free(raw);
		free(hdr);
		free(body);
	}
	cr_assert_eq(call(m.addr, "GET", "/oauth/token", NULL, NULL, NULL, NULL), 404);
	{
		json_t *st = stats(m.addr);
		size_t n = sizeof(cases) / sizeof(cases[0]);

		cr_assert_eq(stat_of(st, "bad_requests"), (long)n + 1);
		cr_assert_eq(stat_of(st, "refreshes") + stat_of(st, "reuses") +
		                     stat_of(st, "invalid_grants"),
		             0);
		cr_assert_eq(res_stat(st, "locA", "has_live_refresh_token"), 1);
		json_decref(st);
	}
	json_decref(refresh_ok(m.addr, rt, NULL, NULL));
	free(creds);
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, version_v3_camel_case)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt = seed(m.addr, "Company", "compX", NULL);
	char *body = NULL;
	char *next = NULL;
	json_t *j = NULL;

	cr_assert_gt(asprintf(&body,
	                      "{\"clientId\":\"%s\",\"clientSecret\":\"%s\","
	                      "\"grantType\":\"refresh_token\",\"refreshToken\":\"%s\","
	                      "\"userType\":\"Company\"}",
	                      CID, SECRET, rt),
	             0);
	cr_assert_eq(call(m.addr, "POST", "/oauth/token",
	                  "Version: v3\r\nContent-Type: application/json\r\n", body, &j, NULL),
	             200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "companyId")), "compX");
	next = strdup(json_string_value(json_object_get(j, "refresh_token")));
	json_decref(j);
	free(body);
	/* a form with camelCase names under v3; v2 names there lack the client: 401 */
	body = form("clientId", CID, "clientSecret", SECRET, "grantType", "refresh_token",
	            "refreshToken", next, NULL);
	cr_assert_eq(
	        call(m.addr, "POST", "/oauth/token", "Version: v3\r\n" FORM_HDR, body, NULL, NULL),
	        200);
	cr_assert_eq(call(m.addr, "POST", "/oauth/token", FORM_HDR, body, NULL, NULL), 401);
	expect_stats(m.addr, "refreshes", 2L, "bad_client", 1L, NULL);
	free(body);
	free(next);
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

/* ---- concurrency, revoke, reset, limits ---- */

/* Send one request per fd without reading, then read them all: concurrent on the wire. */
static void send_together(const char *addr, const char *const *bodies, size_t n, int *status)
{
	int fds[8];

	cr_assert_leq(n, 8);
	for (size_t i = 0; i < n; i++) {
		char *req = NULL;

		fds[i] = httpc_connect(addr);
		cr_assert_geq(fds[i], 0);
		cr_assert_gt(asprintf(&req,
		                      "POST /oauth/token HTTP/1.1\r\nHost: x\r\n" FORM_HDR
		                      "Content-Length: %zu\r\n\r\n%s",
		                      strlen(bodies[i]), bodies[i]),
		             0);
		cr_assert_eq(httpc_send_all(fds[i], req, strlen(req)), 0);
		free(req);
	}
	for (size_t i = 0; i < n; i++) {
		struct httpc_response r;

		cr_assert_eq(httpc_read_response(fds[i], &r, false, T_MS), 0);
		status[i] = r.status;
		httpc_response_free(&r);
		httpc_close(fds[i]);
	}
}

static char *refresh_form(const char *rt)
{
	return form("client_id", CID, "client_secret", SECRET, "grant_type", "refresh_token",
	            "refresh_token", rt, NULL);
}

Test(mock_oauth, concurrent_refreshes_with_delay)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 300);
	char *rt_a = seed(m.addr, "Location", "locA", NULL);
	char *rt_b = seed(m.addr, "Location", "locB", NULL);
	char *rt_c = seed(m.addr, "Location", "locC", NULL);
	char *fa = refresh_form(rt_a);
	char *fb = refresh_form(rt_b);
	char *fc = refresh_form(rt_c);
	const char *same[] = { fa, fa };
	const char *different[] = { fb, fc };
	int status[2];
	int64_t t0 = harness_now_ms();
	json_t *st;

	/* one resource, two refreshes at once: what a proxy without single flight does */
	send_together(m.addr, same, 2, status);
	cr_assert_geq(harness_now_ms() - t0, 250, "answers are held");
	cr_assert_eq(status[0] + status[1], 600, "one 200, one 400: %d %d", status[0], status[1]);
	/* two resources at once: fine, each has one in progress */
	send_together(m.addr, different, 2, status);
	cr_assert_eq(status[0], 200);
	cr_assert_eq(status[1], 200);

	st = stats(m.addr);
	cr_assert_eq(stat_of(st, "concurrent_max"), 2);
	cr_assert_eq(stat_of(st, "reuses"), 1);
	cr_assert_eq(stat_of(st, "refreshes"), 3);
	cr_assert_eq(res_stat(st, "locA", "concurrent_max"), 2);
	cr_assert_eq(res_stat(st, "locB", "concurrent_max"), 1);
	cr_assert_eq(res_stat(st, "locC", "concurrent_max"), 1);
	cr_assert_eq(res_stat(st, "locA", "refreshing"), 0, "all answered");
	json_decref(st);
	free(fa);
	free(fb);
	free(fc);
	free(rt_a);
	free(rt_b);
	free(rt_c);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, refresh_lost_with_its_client)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 300);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *body = refresh_form(rt);
	char *req = NULL;
	int fd = httpc_connect(m.addr);
	char *raw = NULL;
	int i;

	/* The client hangs up while the answer is held: the token is spent all the same (it
	 * was on arrival), as upstream, and the new one is lost with the answer. */
	cr_assert_geq(fd, 0);
	cr_assert_gt(asprintf(&req,
	                      "POST /oauth/token HTTP/1.1\r\nHost: x\r\n" FORM_HDR
	                      "Content-Length: %zu\r\n\r\n%s",
	                      strlen(body), body),
	             0);
	cr_assert_eq(httpc_send_all(fd, req, strlen(req)), 0);
	for (i = 0; i < 2000; i++) {
		json_t *st = stats(m.addr);
		long n = stat_of(st, "refreshes");

		json_decref(st);
		if (n == 1) {
			break;
		}
		poll(NULL, 0, 1);
	}
	cr_assert_lt(i, 2000, "the refresh never arrived");
	httpc_close(fd);
	for (i = 0; i < 2000; i++) {
		json_t *st = stats(m.addr);
		long n = res_stat(st, "locA", "refreshing");

		json_decref(st);
		if (n == 0) {
			break;
		}
		poll(NULL, 0, 5);
	}
	cr_assert_lt(i, 2000, "the abandoned refresh never ended");
	cr_assert_eq(refresh(m.addr, rt, NULL, NULL, &raw), 400);
	cr_assert_str_eq(raw, RT_INVALID);
	expect_stats(m.addr, "refreshes", 1L, "reuses", 1L, "concurrent_max", 1L, NULL);
	free(raw);
	free(req);
	free(body);
	free(rt);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, revoke)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt0 = seed(m.addr, "Location", "locA", NULL);
	char *rt1 = NULL;
	char *rt2 = NULL;
	char *a1 = NULL;
	char *a2 = NULL;
	char *raw = NULL;
	json_t *j;

	json_decref(refresh_ok(m.addr, rt0, &rt1, &a1));
	j = ctl(m.addr, "POST", "/__mock/oauth/revoke", "{\"resource\":\"locA\"}", 200);
	cr_assert_eq(json_integer_value(json_object_get(j, "refresh_tokens")), 1);
	cr_assert_eq(json_integer_value(json_object_get(j, "access_tokens")), 0);
	json_decref(j);
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/revoke", "{\"resource\":\"nope\"}", 404));
	cr_assert_eq(refresh(m.addr, rt1, NULL, NULL, &raw), 400);
	cr_assert_str_eq(raw, RT_INVALID);
	free(raw);
	cr_assert_eq(api(m.addr, a1, NULL), 200, "the access token outlives its refresh token");

	/* a reinstall, then an uninstall that takes the access tokens too */
	free(rt0);
	rt0 = seed(m.addr, "Location", "locA", NULL);
	json_decref(refresh_ok(m.addr, rt0, &rt2, &a2));
	j = ctl(m.addr, "POST", "/__mock/oauth/revoke",
	        "{\"resource\":\"locA\",\"access_tokens\":true}", 200);
	cr_assert_eq(json_integer_value(json_object_get(j, "access_tokens")), 2);
	json_decref(j);
	cr_assert_eq(api(m.addr, a1, NULL), 401);
	cr_assert_eq(api(m.addr, a2, &raw), 401);
	cr_assert_str_eq(raw, BAD_JWT);
	free(raw);
	cr_assert_eq(refresh(m.addr, rt2, NULL, NULL, NULL), 400);
	expect_stats(m.addr, "invalid_grants", 2L, "reuses", 0L, "unauthorized", 2L, NULL);
	free(rt0);
	free(rt1);
	free(rt2);
	free(a1);
	free(a2);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, reset_forgets_everything)
{
	char *dir = harness_tmpdir();
	struct mock m = mock_start(dir, 86399000, 0);
	char *rt0 = seed(m.addr, "Location", "locA", NULL);
	char *rt1 = NULL;
	char *at = NULL;
	json_t *st;
	json_t *log = NULL;

	json_decref(refresh_ok(m.addr, rt0, &rt1, &at));
	cr_assert_eq(refresh(m.addr, rt0, NULL, NULL, NULL), 400);
	json_decref(ctl(m.addr, "POST", "/__mock/oauth/inactive",
	                "{\"resource\":\"locA\",\"count\":5}", 200));
	json_decref(ctl(m.addr, "POST", "/__mock/reset", NULL, 200));

	st = stats(m.addr);
	cr_assert_eq(stat_of(st, "refreshes"), 0);
	cr_assert_eq(stat_of(st, "reuses"), 0);
	cr_assert_eq(stat_of(st, "concurrent_max"), 0);
	cr_assert_eq(json_object_size(json_object_get(st, "by_resource")), 0);
	json_decref(st);
	/* the live refresh token and the access token are unknown now */
	cr_assert_eq(refresh(m.addr, rt1, NULL, NULL, NULL), 400);
	cr_assert_eq(api(m.addr, at, NULL), 401);
	expect_stats(m.addr, "invalid_grants", 1L, "reuses", 0L, "unauthorized", 1L, NULL);
	cr_assert_eq(call(m.addr, "GET", "/__mock/log", NULL, NULL, &log, NULL), 200);
	cr_assert_eq(json_array_size(log), 2);
	json_decref(log);
	free(rt0);
	free(rt1);
	free(at);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}

Test(mock_oauth, token_calls_are_not_rate_limited)
{
	char *dir = harness_tmpdir();
	const char *args[] = { "--limit", "2", "--window-ms", "60000", NULL };
	struct mock m = mock_start_opts(dir, true, 86399000, 0, args);
	char *rt = seed(m.addr, "Location", "locA", NULL);
	char *at = NULL;
	char *forged = oracle_make_jwt(APP, "Location", "locA", (double)wall_ms() / 1000.0 + 60);
	struct httpc_response r;
	char *hdr = NULL;

	for (int i = 0; i < 5; i++) {
		char *next = NULL;

		json_decref(refresh_ok(m.addr, rt, &next, i == 4 ? &at : NULL));
		free(rt);
		rt = next;
	}
	/* refused tokens are turned away before the limiter counts them */
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(api(m.addr, forged, NULL), 401);
	}
	cr_assert_gt(asprintf(&hdr, "Authorization: Bearer %s\r\n", at), 0);
	cr_assert_eq(httpc_request(m.addr, "POST", "/oauth/token", FORM_HDR, "x=1", 3, &r, T_MS),
	             0);
	cr_assert_null(httpc_header(&r, "x-ratelimit-max"), "no limit headers on /oauth/");
	httpc_response_free(&r);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(httpc_request(m.addr, "GET", "/contacts/", hdr, NULL, 0, &r, T_MS), 0);
		cr_assert_eq(r.status, i < 2 ? 200 : 429, "call %d", i);
		cr_assert_str_eq(httpc_header(&r, "x-ratelimit-max"), "2");
		httpc_response_free(&r);
	}
	free(hdr);
	free(forged);
	free(rt);
	free(at);
	mock_stop(&m);
	harness_tmpdir_free(dir);
}
