/*
 * test_limiter.c: the limiter contract end to end, judged by the window oracle over what a
 * strict mock upstream recorded. The mock enforces N per W (sliding log, or fixed windows),
 * waits a random 0-20 ms before it counts a call (calls sent in order arrive closer together),
 * and answers 429 with HighLevel's headers; the proxy must never make it.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "fixture.h"
#include "httpc.h"
#include "oracle.h"

#define N_BURST   20
#define WINDOW_MS 2000
#define RUN_MS    30000

static struct fixture fx;

static void stop(void)
{
	if (fx.proxy)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
}

static void start(const char *mock_args, const char *conf)
{
	static char *debug_env[] = { "GHLPROXY_LOG_LEVEL=debug", NULL };
	struct fixture_opts o = { .plain_http = false, .mock_args = mock_args, .proxy_conf = conf };
	if (getenv("GHLPROXY_TEST_DUMP"))
		o.proxy_env = debug_env;
	fixture_start(&fx, &o);
}

/* --- request pickers for the load generator --- */

struct keys {
	int n;
	char *auth[8]; /* "Authorization: Bearer <jwt>\r\n" per key */
	char *mock_key[8];
};

static void make_keys(struct keys *k, int n)
{
	k->n = n;
	for (int i = 0; i < n; i++) {
		char app[40], loc[40];
		snprintf(app, sizeof(app), "65f0a1b2c3d4e5f6a7b8c9d%d", i);
		snprintf(loc, sizeof(loc), "Loc%dAbCdEfGhIjKlMnOp", i);
		char *jwt = oracle_make_jwt(app, "Location", loc, 4102444800.0);
		size_t len = strlen(jwt) + 64;
		harness_secret(jwt);
		k->auth[i] = malloc(len);
		snprintf(k->auth[i], len, "Authorization: Bearer %s\r\nVersion: 2021-07-28\r\n",
		         jwt);
		free(jwt);
		k->mock_key[i] = malloc(80);
		snprintf(k->mock_key[i], 80, "%s:%s", app, loc);
	}
}

static void free_keys(struct keys *k)
{
	for (int i = 0; i < k->n; i++) {
		free(k->auth[i]);
		free(k->mock_key[i]);
	}
}

static void pick_by_thread(int thread, uint64_t n, struct load_req *r, void *arg)
{
	struct keys *k = arg;
	r->target = "/contacts/?limit=1";
	r->headers = k->auth[thread % k->n];
}

static void expect_contract(json_t *log, const char *key, int n, const char *what)
{
	struct oracle_result o;

	oracle_check(log, key, n, WINDOW_MS, &o);
	cr_log_info("%s: %zu calls, %zu upstream 429s, min gap %.1f ms, utilisation %.3f", what,
	            o.n_calls, o.n_429, o.min_gap_ms, o.utilisation);
	cr_expect_gt(o.n_calls, (size_t)(n * (RUN_MS / WINDOW_MS) / 2), "%s: too few calls", what);
	cr_expect_eq(o.n_429, 0, "%s: %zu upstream 429s", what, o.n_429);
	cr_expect_eq(o.n_violations, 0, "%s: %zu windows held more than %d calls (min gap %.1f)",
	             what, o.n_violations, n, o.min_gap_ms);
	cr_expect_geq(o.utilisation, 0.95, "%s: utilisation %.3f", what, o.utilisation);
}

static const char *conf_20_2s = "[limits]\nburst = 20\nwindow = 2s\nguard = 50ms\n";

TestSuite(limiter, .fini = stop, .timeout = 180);

/* 16 clients overload one key for 30 s: zero upstream 429s, no W with more than N, >= 95%. */
Test(limiter, one_key_sliding_log)
{
	struct keys k;
	struct load_result lr;

	start("--limit 20 --window-ms 2000 --jitter-ms 20", conf_20_2s);
	make_keys(&k, 1);
	load_run(fx.proxy_addr, 16, RUN_MS, pick_by_thread, &k, &lr);
	cr_expect_eq(lr.n_errors, 0);
	cr_expect_eq(lr.by_status[429], 0, "the proxy answered 429 to clients");
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	if (getenv("GHLPROXY_TEST_DUMP")) {
		json_dump_file(log, getenv("GHLPROXY_TEST_DUMP"), 0);
		char *pl = harness_log(fx.proxy);
		FILE *f = fopen("/tmp/proxylog.txt", "w");
		fputs(pl, f);
		fclose(f);
		free(pl);
	}
	expect_contract(log, k.mock_key[0], N_BURST, "one key");
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_upstream_429_total"), 0);
	json_decref(log);
	free_keys(&k);
}

/* The same against an upstream that counts in fixed windows. */
Test(limiter, one_key_fixed_windows)
{
	struct keys k;
	struct load_result lr;

	start("--limit 20 --window-ms 2000 --jitter-ms 20 --limit-mode fixed", conf_20_2s);
	make_keys(&k, 1);
	load_run(fx.proxy_addr, 16, RUN_MS, pick_by_thread, &k, &lr);
	cr_expect_eq(lr.n_errors, 0);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	expect_contract(log, k.mock_key[0], N_BURST, "fixed windows");
	json_decref(log);
	free_keys(&k);
}

/* Four keys at once, each isolated from the others. */
Test(limiter, four_keys_isolated)
{
	struct keys k;
	struct load_result lr;

	start("--limit 20 --window-ms 2000 --jitter-ms 20", conf_20_2s);
	make_keys(&k, 4);
	load_run(fx.proxy_addr, 16, RUN_MS, pick_by_thread, &k, &lr);
	cr_expect_eq(lr.n_errors, 0);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	if (getenv("GHLPROXY_TEST_DUMP")) {
		json_dump_file(log, getenv("GHLPROXY_TEST_DUMP"), 0);
		char *pl = harness_log(fx.proxy);
		FILE *f = fopen("/tmp/proxylog.txt", "w");
		fputs(pl, f);
		fclose(f);
		free(pl);
	}
	for (int i = 0; i < 4; i++) {
		char what[32];
		snprintf(what, sizeof(what), "key %d", i);
		expect_contract(log, k.mock_key[i], N_BURST, what);
	}
	json_decref(log);
	free_keys(&k);
}

/* The upstream says its limit is 10, not the configured 20: the proxy follows it. Only the
 * calls sent before the first answer taught it can meet a 429; after the first window, none. */
Test(limiter, follows_smaller_upstream_max)
{
	struct keys k;
	struct load_result lr;
	struct oracle_result o;

	start("--limit 10 --window-ms 2000 --jitter-ms 20", conf_20_2s);
	make_keys(&k, 1);
	load_run(fx.proxy_addr, 16, RUN_MS, pick_by_thread, &k, &lr);
	cr_expect_eq(lr.n_errors, 0);
	json_t *log = oracle_fetch_log(fx.mock_ctl), *e;
	size_t i, late_429 = 0;
	double t0 = -1;
	json_array_foreach(log, i, e)
	{
		double t = json_number_value(json_object_get(e, "t_ms"));
		if (t0 < 0)
			t0 = t;
		if (t > t0 + WINDOW_MS + 500 &&
		    json_integer_value(json_object_get(e, "status")) == 429)
			late_429++;
	}
	cr_expect_eq(late_429, 0, "%zu upstream 429s after the limit was learned", late_429);
	oracle_check(log, k.mock_key[0], 10, WINDOW_MS, &o);
	cr_expect_geq(o.utilisation, 0.95, "utilisation %.3f of the learned limit", o.utilisation);
	cr_expect_eq(lr.by_status[200] + lr.by_status[429], lr.n_sent - lr.n_errors);
	json_decref(log);
	free_keys(&k);
}

/* An outside client spends part of the budget mid-run: the proxy believes
 * X-RateLimit-Remaining and meets at most one 429, then none. */
struct spend_arg {
	const char *ctl;
	const char *key;
	int64_t at_ms;
};

static void *spend_later(void *a)
{
	struct spend_arg *s = a;
	struct httpc_response r = { 0 };
	char target[256];

	while (harness_now_ms() < s->at_ms)
		usleep(10000);
	snprintf(target, sizeof(target), "/__mock/spend?key=%s&n=8", s->key);
	httpc_request(s->ctl, "POST", target, NULL, NULL, 0, &r, 10000);
	httpc_response_free(&r);
	return NULL;
}

Test(limiter, follows_remaining_when_budget_spent_outside)
{
	struct keys k;
	struct load_result lr;
	pthread_t th;

	start("--limit 20 --window-ms 2000 --jitter-ms 20", conf_20_2s);
	make_keys(&k, 1);
	struct spend_arg sa = { fx.mock_ctl, k.mock_key[0], harness_now_ms() + 10000 };
	pthread_create(&th, NULL, spend_later, &sa);
	load_run(fx.proxy_addr, 16, 20000, pick_by_thread, &k, &lr);
	pthread_join(th, NULL);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	if (getenv("GHLPROXY_TEST_DUMP")) {
		json_dump_file(log, getenv("GHLPROXY_TEST_DUMP"), 0);
		char *pl = harness_log(fx.proxy);
		FILE *f = fopen("/tmp/proxylog.txt", "w");
		fputs(pl, f);
		fclose(f);
		free(pl);
	}
	struct oracle_result o;
	oracle_check(log, k.mock_key[0], N_BURST, WINDOW_MS, &o);
	cr_log_info("outside spend: %zu calls, %zu upstream 429s", o.n_calls, o.n_429);
	cr_expect_leq(o.n_429, 1, "%zu upstream 429s after the outside spend", o.n_429);
	cr_expect_eq(lr.n_errors, 0);
	cr_expect_eq(lr.by_status[429], 0, "a 429 reached a client instead of being resent");
	json_decref(log);
	free_keys(&k);
}

/* Two PITs of one location share its daily budget (and each has its own burst window). */
static void pick_pits(int thread, uint64_t n, struct load_req *r, void *arg)
{
	static const char *pits[] = {
		"Authorization: Bearer pit-11111111-2222-3333-4444-555555555555\r\n",
		"Authorization: Bearer pit-66666666-7777-8888-9999-000000000000\r\n",
	};
	r->target = "/contacts/?locationId=SharedLoc123";
	r->headers = pits[thread % 2];
}

Test(limiter, pits_share_a_daily_budget)
{
	struct load_result lr;

	harness_secret("pit-11111111-2222-3333-4444-555555555555");
	harness_secret("pit-66666666-7777-8888-9999-000000000000");
	start("--limit 20 --window-ms 2000 --daily 60 --jitter-ms 20",
	      "[limits]\nburst = 20\nwindow = 2s\nguard = 50ms\ndaily = 60\n");
	load_run(fx.proxy_addr, 8, 8000, pick_pits, NULL, &lr);
	json_t *log = oracle_fetch_log(fx.mock_ctl), *e;
	size_t i, n_loc = 0, n_429 = 0;
	json_array_foreach(log, i, e)
	{
		const char *dk = json_string_value(json_object_get(e, "daily_key"));
		if (dk && strcmp(dk, "SharedLoc123") == 0)
			n_loc++;
		n_429 += json_integer_value(json_object_get(e, "status")) == 429;
	}
	cr_expect_eq(n_loc, 60, "the location's daily budget: %zu calls reached it", n_loc);
	cr_expect_eq(n_429, 0);
	cr_expect_eq(lr.by_status[200], 60);
	cr_expect_gt(lr.by_status[429], 0, "the proxy did not reject past the daily budget");
	cr_expect_lt(lr.max_latency_429_ms, 1000, "a daily rejection was not answered at once");
	json_decref(log);
}

/* Daily limit 50: the 51st call of the rolling day is rejected at once, scope daily, with a
 * Retry-After reaching to when budget returns (HighLevel's X-RateLimit-Daily-Reset). */
Test(limiter, daily_limit_rejects_at_once)
{
	struct keys k;
	struct httpc_response r = { 0 };
	long hl_reset_ms = -1;

	start("--limit 100 --window-ms 2000 --daily 50",
	      "[limits]\nburst = 100\nwindow = 2s\ndaily = 50\n");
	make_keys(&k, 1);
	for (int i = 0; i < 50; i++) {
		cr_assert_eq(httpc_request(fx.proxy_addr, "GET", "/contacts/", k.auth[0], NULL, 0,
		                           &r, 10000),
		             0);
		cr_assert_eq(r.status, 200, "call %d: %d", i + 1, r.status);
		const char *reset = httpc_header(&r, "X-RateLimit-Daily-Reset");
		if (reset)
			hl_reset_ms = atol(reset);
		httpc_response_free(&r);
	}
	cr_assert_gt(hl_reset_ms, 0, "the mock sent no daily reset");
	int64_t t0 = harness_now_ms();
	cr_assert_eq(
	        httpc_request(fx.proxy_addr, "GET", "/contacts/", k.auth[0], NULL, 0, &r, 10000),
	        0);
	int64_t took = harness_now_ms() - t0;
	cr_expect_eq(r.status, 429);
	cr_expect_lt(took, 1000, "rejected after %lld ms, not at once", (long long)took);
	json_t *j = json_loads((const char *)r.body, 0, NULL);
	cr_assert(j, "body: %s", r.body);
	cr_expect_str_eq(json_string_value(json_object_get(j, "scope")), "daily");
	cr_expect_eq(json_integer_value(json_object_get(j, "statusCode")), 429);
	cr_expect(json_string_length(json_object_get(j, "message")) > 0);
	json_int_t retry_ms = json_integer_value(json_object_get(j, "retryAfterMs"));
	long retry_after =
	        atol(httpc_header(&r, "Retry-After") ? httpc_header(&r, "Retry-After") : "0");
	/* Budget returns no earlier than HighLevel's reset, and the proxy's own count of its
	 * calls in the rolling day is bucketed: at most one bucket (5 min) later. */
	cr_expect_geq(retry_ms, hl_reset_ms - 2000, "retryAfterMs %lld < reset %ld",
	              (long long)retry_ms, hl_reset_ms);
	cr_expect_leq(retry_ms, hl_reset_ms + 300000 + 2000);
	cr_expect_eq(retry_after, (retry_ms + 999) / 1000);
	cr_expect_str_eq(httpc_header(&r, "X-RateLimit-Daily-Remaining"), "0");
	cr_expect_str_eq(httpc_header(&r, "X-RateLimit-Limit-Daily"), "50");
	cr_expect(httpc_header(&r, "X-RateLimit-Max") != NULL);
	json_decref(j);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 50, "the 51st call reached the upstream");
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_requests_total{outcome=\"rejected_daily\"}"), 1);
	free_keys(&k);
}

/* Deadlines: with 3 W worth of requests at once and a 1 W deadline, the excess is rejected at
 * once (not after waiting) with the headers and body above; the admitted ones succeed. */
struct burst_arg {
	const char *addr;
	const char *auth;
	pthread_barrier_t *go;
	int status;
	int64_t took_ms;
	char scope[16];
	char retry_after[16];
	char remaining[16];
};

static void *one_call(void *a)
{
	struct burst_arg *b = a;
	struct httpc_response r = { 0 };
	char rq[4096];
	int fd = httpc_connect(b->addr);

	snprintf(rq, sizeof(rq),
	         "GET /contacts/ HTTP/1.1\r\nHost: x\r\n%sX-GHL-Max-Wait: %d\r\n\r\n", b->auth,
	         WINDOW_MS);
	/* Everyone connected first, then all send at once: they arrive within the guard band. */
	pthread_barrier_wait(b->go);
	int64_t t0 = harness_now_ms();
	if (fd >= 0 && httpc_send_all(fd, rq, strlen(rq)) == 0 &&
	    httpc_read_response(fd, &r, false, 30000) == 0) {
		b->status = r.status;
		b->took_ms = harness_now_ms() - t0;
		json_t *j = json_loads((const char *)r.body, 0, NULL);
		if (j && json_string_value(json_object_get(j, "scope")))
			snprintf(b->scope, sizeof(b->scope), "%s",
			         json_string_value(json_object_get(j, "scope")));
		json_decref(j);
		const char *h = httpc_header(&r, "Retry-After");
		snprintf(b->retry_after, sizeof(b->retry_after), "%s", h ? h : "");
		h = httpc_header(&r, "X-RateLimit-Remaining");
		snprintf(b->remaining, sizeof(b->remaining), "%s", h ? h : "");
	}
	httpc_response_free(&r);
	if (fd >= 0)
		httpc_close(fd);
	return NULL;
}

Test(limiter, deadline_rejects_excess_at_once)
{
	enum { N = 3 * N_BURST };
	struct keys k;
	pthread_t th[N];
	static struct burst_arg args[N];
	pthread_barrier_t go;

	/* W = 2 s, guard 250 ms: the second window opens 2.25 s after the first burst, past the
	 * 2 s deadline of every request sent together with it. */
	start("--limit 20 --window-ms 2000 --jitter-ms 20",
	      "[limits]\nburst = 20\nwindow = 2s\nguard = 250ms\n");
	make_keys(&k, 1);
	pthread_barrier_init(&go, NULL, N);
	for (int i = 0; i < N; i++) {
		args[i] = (struct burst_arg){ .addr = fx.proxy_addr, .auth = k.auth[0], .go = &go };
		pthread_create(&th[i], NULL, one_call, &args[i]);
	}
	int ok = 0, rejected = 0;
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		if (args[i].status == 200) {
			ok++;
		} else if (args[i].status == 429) {
			rejected++;
			cr_expect_lt(args[i].took_ms, 1000, "a rejection took %lld ms",
			             (long long)args[i].took_ms);
			cr_expect_str_eq(args[i].scope, "burst");
			cr_expect_str_eq(args[i].remaining, "0");
			cr_expect_geq(atoi(args[i].retry_after), 1);
		}
	}
	cr_expect_eq(ok, N_BURST, "%d admitted", ok);
	cr_expect_eq(rejected, N - N_BURST, "%d rejected", rejected);
	pthread_barrier_destroy(&go);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	struct oracle_result o;
	oracle_check(log, k.mock_key[0], N_BURST, WINDOW_MS, &o);
	cr_expect_eq(o.n_calls, N_BURST);
	cr_expect_eq(o.n_429, 0);
	json_decref(log);
	free_keys(&k);
}

/* A client that hangs up while queued leaves the queue at once (the queue gauge says so). */
Test(limiter, hangup_leaves_the_queue)
{
	struct keys k;
	int fds[25];
	char rq[4096];

	start("--limit 20 --window-ms 2000",
	      "[limits]\nburst = 20\nwindow = 10s\nmax_wait = 20s\n");
	make_keys(&k, 1);
	snprintf(rq, sizeof(rq), "GET /contacts/ HTTP/1.1\r\nHost: x\r\n%s\r\n", k.auth[0]);
	for (int i = 0; i < 25; i++) {
		fds[i] = httpc_connect(fx.proxy_addr);
		cr_assert_geq(fds[i], 0);
		cr_assert_eq(httpc_send_all(fds[i], rq, strlen(rq)), 0);
	}
	/* 20 go through at once; 5 wait for the window (10 s). */
	int64_t until = harness_now_ms() + 10000;
	while (fixture_metric(&fx, "ghlproxy_queue_depth") != 5 && harness_now_ms() < until)
		usleep(10000);
	cr_assert_eq(fixture_metric(&fx, "ghlproxy_queue_depth"), 5);
	/* The 5 waiting are the ones without an answer yet: hang them up. */
	int hung = 0;
	for (int i = 0; i < 25; i++) {
		struct httpc_response r = { 0 };
		if (httpc_read_response(fds[i], &r, false, 300) == 0) {
			httpc_response_free(&r);
			continue;
		}
		httpc_close(fds[i]);
		fds[i] = -1;
		hung++;
	}
	cr_expect_eq(hung, 5);
	until = harness_now_ms() + 5000;
	while (fixture_metric(&fx, "ghlproxy_queue_depth") != 0 && harness_now_ms() < until)
		usleep(10000);
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_queue_depth"), 0,
	             "hung-up clients stayed queued");
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_requests_total{outcome=\"client_gone\"}"), 5);
	for (int i = 0; i < 25; i++)
		if (fds[i] >= 0)
			httpc_close(fds[i]);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 20);
	free_keys(&k);
}

/* /oauth/ calls are forwarded without counting against a location. */
Test(limiter, oauth_calls_not_counted)
{
	struct keys k;
	struct httpc_response r = { 0 };

	/* No X-RateLimit-* from this upstream: the configured burst of 2 holds. */
	start("", "[limits]\nburst = 2\nwindow = 20s\nmax_wait = 0s\n");
	make_keys(&k, 1);
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(httpc_request(fx.proxy_addr, "POST", "/oauth/token", k.auth[0],
		                           "grant_type=refresh_token", 24, &r, 10000),
		             0);
		cr_expect_eq(r.status, 200);
		httpc_response_free(&r);
	}
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(httpc_request(fx.proxy_addr, "GET", "/contacts/", k.auth[0], NULL, 0,
		                           &r, 10000),
		             0);
		cr_expect_eq(r.status, i < 2 ? 200 : 429, "call %d: %d %s", i, r.status, r.body);
		httpc_response_free(&r);
	}
	free_keys(&k);
}
