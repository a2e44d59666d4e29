/*
 * test_lifecycle.c: the process as systemd and an operator see it.
 *   - sd_notify on the harness's NOTIFY_SOCKET: READY=1 with STATUS= (keys, queue depth), STATUS=
 *     again when it changes, WATCHDOG=1 every half of WATCHDOG_USEC (and never for another pid);
 *   - SIGHUP under load: RELOADING=1 then READY=1, not one failed request, and the new limits
 *     apply (judged by the window oracle over what the mock received before and after);
 *   - a broken config on reload is refused with its errors logged, the old one keeps serving;
 *     keys that need a restart are named in a warning and keep their running values;
 *   - SIGTERM: STOPPING=1, no new connection, /readyz 503, queued requests that cannot be
 *     admitted in time answered 503 + Retry-After at once, in-flight ones complete, exit 0; a
 *     second signal exits at once; the drain timeout cuts what is left;
 *   - /readyz: 200 when the upstream resolves, 503 with the reason when it does not or when
 *     Redis is unreachable.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "fixture.h"
#include "httpc.h"
#include "oracle.h"

#define TIMEOUT_MS 20000

static struct fixture fx;

static void stop(void)
{
	if (fx.proxy && !fx.proxy->reaped)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
	harness_cleanup_all();
}

TestSuite(lifecycle, .fini = stop, .timeout = 120);

/* ---- helpers ---- */

static char *jwt_headers(const char *app, const char *loc)
{
	char *jwt = oracle_make_jwt(app, "Location", loc, 4102444800.0);
	size_t len = strlen(jwt) + 80;
	char *h = malloc(len);

	harness_secret(jwt);
	snprintf(h, len, "Authorization: Bearer %s\r\nVersion: 2021-07-28\r\n", jwt);
	free(jwt);
	return h;
}

static int get_status(const char *addr, const char *target, const char *headers)
{
	struct httpc_response r = { 0 };
	int rc = httpc_request(addr, "GET", target, headers, NULL, 0, &r, TIMEOUT_MS);
	int status = rc == 0 ? r.status : -1;

	httpc_response_free(&r);
	return status;
}

static json_t *admin_json(const char *target, int *status)
{
	struct httpc_response r = { 0 };
	json_t *j = NULL;

	*status = -1;
	if (httpc_request(fx.admin_addr, "GET", target, NULL, NULL, 0, &r, TIMEOUT_MS) == 0) {
		*status = r.status;
		j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	}
	httpc_response_free(&r);
	return j;
}

/* burst.limit of the first key in /status, or -1. */
static long first_key_burst_limit(void)
{
	int st;
	json_t *s = admin_json("/status", &st);
	json_t *k = json_array_get(json_object_get(s, "keys"), 0);
	long v = k ? (long)json_integer_value(json_object_get(json_object_get(k, "burst"), "limit"))
	           : -1;

	json_decref(s);
	return v;
}

/* Replace everything from "[limits]" on in the proxy's config file with `limits`. */
static void rewrite_limits(const char *limits)
{
	char *base = harness_read_file(fx.conf_path, NULL);
	cr_assert(base);
	char *cut = strstr(base, "[limits]");
	cr_assert(cut);
	*cut = '\0';
	size_t len = strlen(base) + strlen(limits) + 1;
	char *text = malloc(len);
	snprintf(text, len, "%s%s", base, limits);
	cr_assert_eq(harness_write_file(fx.dir, "ghlproxy.conf", text), 0);
	free(text);
	free(base);
}

/* Bounded wait for a condition that has no event to wait on (another process's counters). */
#define WAIT_UNTIL(cond, ms)                                                             \
	do {                                                                             \
		int64_t until_ = harness_now_ms() + (ms);                                \
		while (!(cond) && harness_now_ms() < until_)                             \
			usleep(20 * 1000);                                               \
		cr_assert((cond), "timed out after %d ms waiting for: %s", (ms), #cond); \
	} while (0)

static int queue_depth(void)
{
	int st;
	json_t *s = admin_json("/status", &st);
	int v = s ? (int)json_integer_value(json_object_get(s, "queue_depth")) : -1;

	json_decref(s);
	return v;
}

/* Entries of the mock's log with t_ms in [from, to). */
static json_t *log_between(json_t *log, double from, double to)
{
	json_t *out = json_array(), *e;
	size_t i;

	json_array_foreach(log, i, e)
	{
		double t = json_number_value(json_object_get(e, "t_ms"));
		if (t >= from && t < to)
			json_array_append(out, e);
	}
	return out;
}

/* ---- sd_notify ---- */

Test(lifecycle, notify_ready_status_and_watchdog)
{
	static char *env[] = { "WATCHDOG_USEC=200000", NULL };
	struct fixture_opts o = { .proxy_env = env };

	fixture_start(&fx, &o);
	char *status = harness_notify_var(fx.proxy, "STATUS");
	cr_assert(status, "no STATUS= with READY=1");
	cr_expect(strstr(status, "serving: 0 keys, 0 waiting") != NULL, "%s", status);
	free(status);

	/* Every 100 ms (half of 200 ms), from the loop. */
	int64_t t0 = harness_now_ms();
	for (int i = 0; i < 4; i++)
		cr_assert_eq(harness_wait_notify(fx.proxy, "WATCHDOG=1", 2000), 0,
		             "WATCHDOG=1 number %d missing", i + 1);
	int64_t took = harness_now_ms() - t0;
	cr_expect_geq(took, 250, "4 pings in %lld ms: faster than every 100 ms", (long long)took);
	cr_expect_lt(took, 3000);

	/* STATUS= follows the state. */
	char *h = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e0", "LocNotify000000000001");
	cr_assert_eq(get_status(fx.proxy_addr, "/contacts/", h), 200);
	cr_expect_eq(harness_wait_notify(fx.proxy, "STATUS=serving: 1 keys, 0 waiting", 15000), 0,
	             "STATUS= did not follow the new key");
	free(h);
}

Test(lifecycle, no_watchdog_for_another_pid)
{
	static char *env[] = { "WATCHDOG_USEC=100000", "WATCHDOG_PID=1", NULL };
	struct fixture_opts o = { .proxy_env = env };

	fixture_start(&fx, &o);
	cr_expect_neq(harness_wait_notify(fx.proxy, "WATCHDOG=1", 600), 0,
	              "WATCHDOG=1 sent though WATCHDOG_PID names another process");
}

/* ---- reload ---- */

struct load_ctx {
	const char *addr;
	char *headers;
	int64_t ms;
	struct load_result lr;
};

static void pick_one(int thread, uint64_t n, struct load_req *r, void *arg)
{
	struct load_ctx *c = arg;

	r->target = "/contacts/?limit=1";
	r->headers = c->headers;
}

static void *load_thread(void *arg)
{
	struct load_ctx *c = arg;

	load_run(c->addr, 8, c->ms, pick_one, c, &c->lr);
	return NULL;
}

Test(lifecycle, reload_under_load_new_limits_apply)
{
	struct fixture_opts o = { .proxy_conf = "[limits]\nburst = 10\nwindow = 1s\nguard = 50ms\n"
		                                "max_wait = 20s\n" };
	const char *app = "65f0a1b2c3d4e5f6a7b8c9e1", *loc = "LocReload000000000001";
	char mock_key[80];
	pthread_t th;

	fixture_start(&fx, &o);
	snprintf(mock_key, sizeof(mock_key), "%s:%s", app, loc);
	struct load_ctx lc = { .addr = fx.proxy_addr,
		               .headers = jwt_headers(app, loc),
		               .ms = 7000 };
	cr_assert_eq(pthread_create(&th, NULL, load_thread, &lc), 0);

	/* Two windows at 10 per second, then the reload to 20. */
	WAIT_UNTIL(fixture_mock_count(fx.mock_ctl) >= 20, 10000);
	double t_hup = (double)harness_now_ms();
	rewrite_limits("[limits]\nburst = 20\nwindow = 1s\nguard = 50ms\nmax_wait = 20s\n");
	harness_kill(fx.proxy, SIGHUP);
	cr_assert_eq(harness_wait_notify(fx.proxy, "RELOADING=1", 10000), 0);
	cr_assert_eq(harness_wait_notify(fx.proxy, "READY=1", 10000), 0);
	double t_ready = (double)harness_now_ms();
	cr_expect_eq(first_key_burst_limit(), 20, "the new limit is not in force");
	pthread_join(th, NULL);

	cr_log_info("reload under load: %llu requests, %llu answered 200, %llu failed",
	            (unsigned long long)lc.lr.n_sent, (unsigned long long)lc.lr.by_status[200],
	            (unsigned long long)lc.lr.n_errors);
	cr_expect_eq(lc.lr.n_errors, 0, "requests without an answer across the reload");
	cr_expect_eq(lc.lr.by_status[200], lc.lr.n_sent, "requests not answered 200");
	cr_expect_gt(lc.lr.n_sent, 60);

	json_t *log = oracle_fetch_log(fx.mock_ctl);
	cr_assert(log);
	json_t *before = log_between(log, 0, t_hup),
	       *after = log_between(log, t_ready + 1100, 1e18);
	struct oracle_result ob, oa, oa10;
	oracle_check(before, mock_key, 10, 1000, &ob);
	oracle_check(after, mock_key, 20, 1000, &oa);
	oracle_check(after, mock_key, 10, 1000, &oa10);
	cr_log_info("before: %zu calls (min gap of 10: %.0f ms); after: %zu calls (min gap of 20: "
	            "%.0f ms)",
	            ob.n_calls, ob.min_gap_ms, oa.n_calls, oa.min_gap_ms);
	cr_expect_eq(ob.n_violations, 0, "more than 10 per window before the reload");
	cr_expect_eq(oa.n_violations, 0, "more than 20 per window after the reload");
	cr_expect_gt(oa10.n_violations, 0, "never more than 10 per window after the reload");
	cr_expect_gt(oa.n_calls, 40);
	json_decref(before);
	json_decref(after);
	json_decref(log);
	free(lc.headers);
}

Test(lifecycle, broken_config_refused_and_restart_keys_named)
{
	struct fixture_opts o = { .proxy_conf = "[limits]\nburst = 5\nwindow = 10s\n" };
	char *h = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e2", "LocBroken000000000001");

	fixture_start(&fx, &o);
	cr_assert_eq(get_status(fx.proxy_addr, "/contacts/", h), 200);
	cr_assert_eq(first_key_burst_limit(), 5);

	/* Broken: refused, every error logged with its line, the old config serves on. */
	rewrite_limits("[limits]\nburst = many\nwindow = 10\n");
	harness_kill(fx.proxy, SIGHUP);
	cr_assert_eq(harness_wait_notify(fx.proxy, "RELOADING=1", 10000), 0);
	cr_assert_eq(harness_wait_notify(fx.proxy, "READY=1", 10000), 0);
	char *status = harness_notify_var(fx.proxy, "STATUS");
	cr_expect(status && strstr(status, "reload refused"), "STATUS=%s", status ? status : "");
	free(status);
	char *log = harness_log(fx.proxy);
	char want[600];
	snprintf(want, sizeof(want), "%s:", fx.conf_path);
	cr_expect(strstr(log, "reload refused") != NULL, "%s", log);
	const char *p = strstr(log, want);
	cr_expect(p != NULL && strstr(p + 1, want) != NULL, "not both errors with file:line: %s",
	          log);
	free(log);
	cr_expect_eq(get_status(fx.proxy_addr, "/contacts/", h), 200);
	cr_expect_eq(first_key_burst_limit(), 5);
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_reload_failures_total"), 1);
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_reloads_total"), 0);

	/* Valid, but with keys only a restart changes: named, kept; the rest applies. */
	char *base = harness_read_file(fx.conf_path, NULL), text[8192], sock[512];
	snprintf(sock, sizeof(sock), "unix:%s/moved.sock", fx.dir);
	char *url = strstr(base, "\nurl = ");
	cr_assert(url);
	*url = '\0';
	char *rest = strchr(url + 1, '\n');
	char *limits = strstr(rest, "[limits]");
	*limits = '\0';
	char *listen = strstr(base, "listen = 127.0.0.1:0\n");
	cr_assert(listen);
	*listen = '\0';
	snprintf(
	        text, sizeof(text),
	        "%slisten = %s\n%s\nurl = https://localhost:1%s[limits]\nburst = 7\nwindow = 10s\n",
	        base, sock, listen + strlen("listen = 127.0.0.1:0\n"), rest);
	free(base);
	cr_assert_eq(harness_write_file(fx.dir, "ghlproxy.conf", text), 0);
	harness_kill(fx.proxy, SIGHUP);
	cr_assert_eq(harness_wait_notify(fx.proxy, "RELOADING=1", 10000), 0);
	cr_assert_eq(harness_wait_notify(fx.proxy, "READY=1", 10000), 0);
	log = harness_log(fx.proxy);
	const char *warn = strstr(log, "need a restart");
	cr_expect(warn != NULL, "%s", log);
	cr_expect(warn && strstr(warn, "server.listen") && strstr(warn, "upstream.url"),
	          "the warning does not name both keys: %s", warn ? warn : "");
	free(log);
	/* Still on the old address, to the old upstream (port 1 would fail); new limit in force. */
	cr_expect_eq(get_status(fx.proxy_addr, "/contacts/", h), 200);
	cr_expect(access(sock + 5, F_OK) != 0, "a listener was opened at the new address");
	cr_expect_eq(first_key_burst_limit(), 7);
	cr_expect_eq(fixture_metric(&fx, "ghlproxy_reloads_total"), 1);
	free(h);
}

/* ---- drain ---- */

static int send_get(const char *target, const char *headers)
{
	char req[8192];
	int fd = httpc_connect(fx.proxy_addr);

	cr_assert(fd >= 0);
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", target, headers);
	cr_assert_eq(httpc_send_all(fd, req, strlen(req)), 0);
	return fd;
}

Test(lifecycle, drain_answers_queued_503_lets_in_flight_finish)
{
	static char *env[] = { "GHLPROXY_SERVER_DRAIN_TIMEOUT=6s", NULL };
	struct fixture_opts o = { .proxy_conf =
		                          "[limits]\nburst = 2\nwindow = 20s\nmax_wait = 60s\n",
		                  .proxy_env = env };
	char *h = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e3", "LocDrain0000000000001");
	int slow[2], queued[3];

	fixture_start(&fx, &o);
	/* A keep-alive connection with nothing under way (its key is another location's): closed
	 * when the drain starts. */
	char *hi = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e3", "LocDrainIdle000000001");
	int idle = send_get("/contacts/idle", hi);
	struct httpc_response ir = { 0 };
	cr_assert_eq(httpc_read_response(idle, &ir, false, 5000), 0);
	cr_assert_eq(ir.status, 200);
	cr_assert(!ir.closed);
	httpc_response_free(&ir);
	free(hi);
	for (int i = 0; i < 2; i++)
		slow[i] = send_get("/mock/slow?ms=3000", h);
	WAIT_UNTIL(fixture_mock_count(fx.mock_ctl) == 3, 10000);
	for (int i = 0; i < 3; i++)
		queued[i] = send_get("/contacts/", h);
	WAIT_UNTIL(queue_depth() == 3, 10000);

	int64_t t_term = harness_now_ms();
	harness_kill(fx.proxy, SIGTERM);
	cr_assert_eq(harness_wait_notify(fx.proxy, "STOPPING=1", 5000), 0);
	cr_expect_lt(httpc_connect(fx.proxy_addr), 0,
	             "a new connection was accepted while draining");
	int st;
	json_t *ready = admin_json("/readyz", &st);
	cr_expect_eq(st, 503, "/readyz while draining");
	json_t *f0 = json_array_get(json_object_get(ready, "failing"), 0);
	cr_expect_str_eq(json_string_value(json_object_get(f0, "check")), "draining");
	json_decref(ready);

	/* The idle connection is closed now, while the slow requests (3 s) are still in flight,
	 * not when the process exits. */
	{
		char b;
		ssize_t k = -1;
		while (harness_now_ms() < t_term + 1000 && (k = read(idle, &b, 1)) < 0 &&
		       (errno == EAGAIN || errno == EWOULDBLOCK))
			usleep(10000);
		cr_expect_eq(k, 0, "the idle keep-alive connection was not closed by the drain");
		httpc_close(idle);
	}
	/* Their slots (20 s and 40 s away) are past the drain: 503 now, with Retry-After. */
	for (int i = 0; i < 3; i++) {
		struct httpc_response r = { 0 };
		cr_assert_eq(httpc_read_response(queued[i], &r, false, 3000), 0,
		             "queued request %d got no answer", i);
		cr_expect_eq(r.status, 503);
		cr_expect(httpc_header(&r, "Retry-After") != NULL);
		cr_expect_str_eq(httpc_header(&r, "Connection"), "close",
		                 "a keep-alive answer while draining");
		json_t *b = json_loadb((const char *)r.body, r.body_len, 0, NULL);
		cr_expect_eq(json_integer_value(json_object_get(b, "statusCode")), 503);
		json_decref(b);
		httpc_response_free(&r);
		httpc_close(queued[i]);
	}
	cr_expect_lt(harness_now_ms() - t_term, 1000, "the queued were not answered at once");
	/* In flight: they complete. */
	for (int i = 0; i < 2; i++) {
		struct httpc_response r = { 0 };
		cr_assert_eq(httpc_read_response(slow[i], &r, false, 10000), 0,
		             "in-flight request %d was cut", i);
		cr_expect_eq(r.status, 200);
		cr_expect_str_eq(httpc_header(&r, "Connection"), "close",
		                 "a keep-alive answer while draining");
		cr_expect(r.closed, "the connection stayed open after the drain's answer");
		httpc_response_free(&r);
		httpc_close(slow[i]);
	}
	cr_expect_eq(harness_wait_exit(fx.proxy, 10000), 0, "no clean exit after the drain");
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "drained: exiting") != NULL, "%s", log);
	free(log);
	free(h);
}

Test(lifecycle, second_signal_exits_at_once)
{
	static char *env[] = { "GHLPROXY_SERVER_DRAIN_TIMEOUT=60s", NULL };
	struct fixture_opts o = { .proxy_env = env };
	char *h = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e4", "LocSecond000000000001");

	fixture_start(&fx, &o);
	int fd = send_get("/mock/slow?ms=30000", h);
	WAIT_UNTIL(fixture_mock_count(fx.mock_ctl) == 1, 10000);
	harness_kill(fx.proxy, SIGTERM);
	cr_assert_eq(harness_wait_notify(fx.proxy, "STOPPING=1", 5000), 0);
	/* Still draining: the request is in flight for 30 s. */
	cr_expect_eq(harness_wait_exit(fx.proxy, 300), -1, "exited before the second signal");
	int64_t t0 = harness_now_ms();
	harness_kill(fx.proxy, SIGINT);
	cr_expect_eq(harness_wait_exit(fx.proxy, 5000), 0);
	cr_expect_lt(harness_now_ms() - t0, 3000);
	struct httpc_response r = { 0 };
	cr_expect_neq(httpc_read_response(fd, &r, false, 5000), 0, "the cut request was answered");
	httpc_response_free(&r);
	httpc_close(fd);
	free(h);
}

Test(lifecycle, drain_timeout_cuts_the_rest)
{
	static char *env[] = { "GHLPROXY_SERVER_DRAIN_TIMEOUT=1s", NULL };
	struct fixture_opts o = { .proxy_env = env };
	char *h = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e5", "LocTimeout00000000001");

	fixture_start(&fx, &o);
	int fd = send_get("/mock/slow?ms=30000", h);
	WAIT_UNTIL(fixture_mock_count(fx.mock_ctl) == 1, 10000);
	int64_t t0 = harness_now_ms();
	harness_kill(fx.proxy, SIGTERM);
	int rc = harness_wait_exit(fx.proxy, 10000);
	int64_t took = harness_now_ms() - t0;
	char *log = harness_log(fx.proxy);
	cr_expect_eq(rc, 0, "exit %d: %s", rc, log);
	cr_expect_geq(took, 900, "exited before server.drain_timeout (%lld ms)", (long long)took);
	cr_expect_lt(took, 5000);
	cr_expect(strstr(log, "drain timeout") != NULL, "%s", log);
	free(log);
	httpc_close(fd);
	free(h);
}

/* ---- readiness ---- */

/* The first failing check of /readyz, polled until it is `want_check` (or ready, for NULL). */
static void wait_readyz(const char *want_check, const char *want_reason)
{
	int64_t until = harness_now_ms() + 20000;
	char last[1024] = "";

	while (harness_now_ms() < until) {
		int st;
		json_t *j = admin_json("/readyz", &st);
		json_t *f = json_array_get(json_object_get(j, "failing"), 0);
		const char *check = json_string_value(json_object_get(f, "check"));
		const char *reason = json_string_value(json_object_get(f, "reason"));
		char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
		snprintf(last, sizeof(last), "%d %s", st, d ? d : "");
		free(d);
		bool done = want_check ? st == 503 && check && strcmp(check, want_check) == 0 &&
		                                 reason && strstr(reason, want_reason)
		                       : st == 200 && json_is_true(json_object_get(j, "ready"));
		json_decref(j);
		if (done)
			return;
		usleep(50 * 1000);
	}
	cr_assert_fail("/readyz never became %s; last: %s", want_check ? want_check : "ready",
	               last);
}

Test(lifecycle, ready_when_upstream_resolves)
{
	struct fixture_opts o = { 0 };

	fixture_start(&fx, &o);
	wait_readyz(NULL, NULL);
}

Test(lifecycle, not_ready_when_upstream_does_not_resolve)
{
	/* Resolution fails on this machine: a resolver on loopback where none listens. */
	struct fixture_opts o = { .upstream_host = "ghlproxy-test-nxhost.invalid",
		                  .no_proxy = true };
	char env_var[600];

	fixture_start(&fx, &o);
	cr_assert_eq(harness_write_file(fx.dir, "resolv.conf",
	                                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"),
	             0);
	snprintf(env_var, sizeof(env_var), "GHLPROXY_TEST_RESOLV_CONF=%s/resolv.conf", fx.dir);
	char *env[] = { env_var, NULL };
	cr_assert_eq(fixture_start_proxy(&fx, env), 0);
	wait_readyz("upstream", "ghlproxy-test-nxhost.invalid does not resolve");
}

Test(lifecycle, not_ready_when_redis_unreachable)
{
	struct fixture_opts o = {
		.proxy_conf = "[limits]\nbackend = redis\n"
		              "[redis]\nurl = unix:///nonexistent-ghlproxy-test/redis.sock\n"
		              "connect_timeout = 200ms\n"
	};

	fixture_start(&fx, &o);
	wait_readyz("redis", "redis unreachable");
}

/* A notify socket nobody reads (its queue full: net.unix.max_dgram_qlen is 10 on Debian) must
 * never stop the proxy: the watchdog pings, reloads and the drain all notify, and each would
 * block a blocking sendto for good. */
Test(lifecycle, full_notify_socket_never_blocks)
{
	static char *env[] = { "WATCHDOG_USEC=100000", NULL };
	struct fixture_opts o = { .proxy_env = env };

	fixture_start(&fx, &o);
	/* Fill the harness's receive queue from here, and keep it full: nobody reads it now. */
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	cr_assert(fd >= 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", fx.proxy->notify_path);
	int sent = 0;
	while (sent < 1000 &&
	       sendto(fd, "X=1", 3, MSG_DONTWAIT, (struct sockaddr *)&sun, sizeof(sun)) == 3)
		sent++;
	close(fd);
	cr_assert_lt(sent, 1000, "the queue never filled");
	/* Watchdog pings every 50 ms and two reloads, all into a full queue. */
	harness_kill(fx.proxy, SIGHUP);
	usleep(300000);
	harness_kill(fx.proxy, SIGHUP);
	usleep(300000);
	char *h = jwt_headers("65f0a1b2c3d4e5f6a7b8c9e0", "LocNotifyFull000000001");
	for (int i = 0; i < 3; i++)
		cr_expect_eq(get_status(fx.proxy_addr, "/contacts/", h), 200, "the loop is stuck");
	free(h);
	int64_t t0 = harness_now_ms();
	harness_kill(fx.proxy, SIGTERM);
	cr_expect_eq(harness_wait_exit(fx.proxy, 10000), 0, "no clean exit");
	cr_expect_lt(harness_now_ms() - t0, 5000);
}
