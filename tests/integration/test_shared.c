/*
 * test_shared.c: several proxies sharing one Redis keep the limiter contract together, as if they
 * were one: judged by the window oracle over what the strict mock upstream recorded, with a proxy
 * whose clock is skewed, and with Redis killed and restarted (and its script cache flushed)
 * mid-run. Single paths of the fallback, made to happen on purpose: merges that fail, and an
 * admission that Redis answers after its key fell back.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "fixture.h"
#include "httpc.h"
#include "oracle.h"

#define N_BURST   20
#define WINDOW_MS 2000
#define N_PROXIES 4

static struct fixture fx;
static struct harness_proc *redis;
static char redis_sock[300];
static struct harness_proc *proxies[N_PROXIES];
static char addrs[N_PROXIES][128], admins[N_PROXIES][128];
/* The proxies' [redis] timeouts (a test that pauses Redis on purpose sets longer ones). */
static const char *redis_timeouts = "command_timeout = 500ms\nconnect_timeout = 500ms\n";

static void stop(void)
{
	const char *dump = getenv("GHLPROXY_TEST_DUMP");
	for (int i = 0; dump && i < N_PROXIES; i++) {
		char path[256];
		snprintf(path, sizeof(path), "%s.proxy%d.log", dump, i);
		char *log = proxies[i] ? harness_log(proxies[i]) : NULL;
		FILE *f = log ? fopen(path, "w") : NULL;
		if (f) {
			fputs(log, f);
			fclose(f);
		}
		free(log);
	}
	for (int i = 0; i < N_PROXIES; i++) {
		if (proxies[i]) {
			harness_kill(proxies[i], SIGTERM);
			cr_expect_eq(harness_wait_exit(proxies[i], 30000), 0,
			             "proxy %d did not exit cleanly", i);
			harness_proc_free(proxies[i]);
			proxies[i] = NULL;
		}
	}
	harness_proc_free(redis);
	redis = NULL;
	fixture_stop(&fx);
}

/* Wait until a proxy's metric has a value; fail the test if it never does. */
static void wait_metric(const char *admin, const char *series, double want, int64_t within_ms)
{
	int64_t until = harness_now_ms() + within_ms;

	while (fixture_metric_at(admin, series) != want && harness_now_ms() < until)
		usleep(50000);
	cr_assert_eq(fixture_metric_at(admin, series), want, "%s never became %g", series, want);
}

/* The mock (strict, jittered), Redis, and n proxies on it; skew[i]: proxy i's clock offset. */
static void start_env(int n, const int *skew_ms, const char *env_extra)
{
	struct fixture_opts o = {
		.mock_args = "--limit 20 --window-ms 2000 --jitter-ms 20",
		.proxy_conf = "[limits]\nburst = 20\nwindow = 2s\nguard = 50ms\n",
		.no_proxy = true,
	};
	char extra[600];

	fixture_start(&fx, &o);
	redis = fixture_redis_start(fx.dir, "redis", NULL, redis_sock, sizeof(redis_sock));
	cr_assert(redis, "redis-server did not start");
	snprintf(extra, sizeof(extra), "[redis]\nurl = unix://%s\n%s", redis_sock, redis_timeouts);
	for (int i = 0; i < n; i++) {
		char name[16], skew[64];
		char *env[] = { "GHLPROXY_LIMITS_BACKEND=redis", skew, (char *)env_extra, NULL };
		snprintf(name, sizeof(name), "proxy%d", i);
		snprintf(skew, sizeof(skew), "GHLPROXY_TEST_CLOCK_SKEW_MS=%d",
		         skew_ms ? skew_ms[i] : 0);
		proxies[i] = fixture_spawn_proxy(&fx, name, extra, env, addrs[i], sizeof(addrs[i]),
		                                 admins[i], sizeof(admins[i]));
		cr_assert(proxies[i], "proxy %d did not start", i);
	}
	/* Shared mode is reached once each proxy's first heartbeat found Redis. */
	for (int i = 0; i < n; i++)
		wait_metric(admins[i], "ghlproxy_redis_up", 1, 10000);
}

static void start(int n, const int *skew_ms)
{
	start_env(n, skew_ms, NULL);
}

struct keys {
	char *auth[2];
	char *mock_key[2];
};

static void make_keys(struct keys *k)
{
	for (int i = 0; i < 2; i++) {
		char app[40], loc[40];
		snprintf(app, sizeof(app), "75f0a1b2c3d4e5f6a7b8c9d%d", i);
		snprintf(loc, sizeof(loc), "SharedLoc%dXyZ", i);
		char *jwt = oracle_make_jwt(app, "Location", loc, 4102444800.0);
		size_t len = strlen(jwt) + 64;
		harness_secret(jwt);
		k->auth[i] = malloc(len);
		snprintf(k->auth[i], len, "Authorization: Bearer %s\r\n", jwt);
		free(jwt);
		k->mock_key[i] = malloc(96);
		snprintf(k->mock_key[i], 96, "%s:%s", app, loc);
	}
}

static void free_keys(struct keys *k)
{
	for (int i = 0; i < 2; i++) {
		free(k->auth[i]);
		free(k->mock_key[i]);
	}
}

/* 16 clients spread over the proxies, each on one of the two keys. */
struct run {
	struct keys *k;
	int n_proxies;
	int64_t end_ms;
	uint64_t by_status[600];
	uint64_t errors;
	pthread_mutex_t lock;
};

struct client {
	pthread_t th;
	int id;
	struct run *run;
};

static void *client_main(void *a)
{
	struct client *c = a;
	struct run *run = c->run;
	const char *addr = addrs[c->id % run->n_proxies];
	const char *auth = run->k->auth[(c->id / run->n_proxies) % 2];
	int fd = -1;

	while (harness_now_ms() < run->end_ms) {
		char rq[4096];
		struct httpc_response r = { 0 };
		if (fd < 0 && (fd = httpc_connect(addr)) < 0) {
			usleep(10000);
			continue;
		}
		int n = snprintf(rq, sizeof(rq), "GET /contacts/ HTTP/1.1\r\nHost: x\r\n%s\r\n",
		                 auth);
		if (httpc_send_all(fd, rq, (size_t)n) < 0 ||
		    httpc_read_response(fd, &r, false, 60000) < 0) {
			pthread_mutex_lock(&run->lock);
			run->errors++;
			pthread_mutex_unlock(&run->lock);
			httpc_close(fd);
			fd = -1;
			httpc_response_free(&r);
			continue;
		}
		pthread_mutex_lock(&run->lock);
		if (r.status > 0 && r.status < 600)
			run->by_status[r.status]++;
		pthread_mutex_unlock(&run->lock);
		if (r.closed) {
			httpc_close(fd);
			fd = -1;
		}
		httpc_response_free(&r);
	}
	if (fd >= 0)
		httpc_close(fd);
	return NULL;
}

static void run_clients(struct run *run, int n_clients, int64_t duration_ms)
{
	struct client *c = calloc((size_t)n_clients, sizeof(*c));

	run->end_ms = harness_now_ms() + duration_ms;
	for (int i = 0; i < n_clients; i++) {
		c[i] = (struct client){ .id = i, .run = run };
		pthread_create(&c[i].th, NULL, client_main, &c[i]);
	}
	for (int i = 0; i < n_clients; i++)
		pthread_join(c[i].th, NULL);
	free(c);
}

static void expect_contract(json_t *log, const char *key, const char *what, double min_util)
{
	struct oracle_result o;

	oracle_check(log, key, N_BURST, WINDOW_MS, &o);
	cr_log_info("%s: %zu calls, %zu upstream 429s, min gap %.1f ms, utilisation %.3f", what,
	            o.n_calls, o.n_429, o.min_gap_ms, o.utilisation);
	cr_expect_eq(o.n_429, 0, "%s: %zu upstream 429s", what, o.n_429);
	cr_expect_eq(o.n_violations, 0, "%s: %zu windows held more than %d calls (min gap %.1f)",
	             what, o.n_violations, N_BURST, o.min_gap_ms);
	if (min_util > 0)
		cr_expect_geq(o.utilisation, min_util, "%s: utilisation %.3f", what, o.utilisation);
}

TestSuite(shared, .fini = stop, .timeout = 240);

/* 4 proxies sharing one Redis, 16 clients spread over them, overloading 2 keys for 30 s. */
Test(shared, four_proxies_two_keys)
{
	struct keys k;
	struct run run = { .n_proxies = N_PROXIES, .lock = PTHREAD_MUTEX_INITIALIZER };

	start(N_PROXIES, NULL);
	make_keys(&k);
	run.k = &k;
	run_clients(&run, 16, 30000);
	cr_expect_eq(run.errors, 0);
	cr_expect_eq(run.by_status[429], 0, "the proxies answered 429 to clients");
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	expect_contract(log, k.mock_key[0], "key 0", 0.95);
	expect_contract(log, k.mock_key[1], "key 1", 0.95);
	json_decref(log);
	for (int i = 0; i < N_PROXIES; i++)
		cr_expect_eq(fixture_metric_at(admins[i], "ghlproxy_redis_fallbacks_total"), 0);
	free_keys(&k);
}

/* A proxy whose clocks are off by half a minute (and another by -7 s) changes nothing: the
 * shared limiter runs on Redis' clock. */
Test(shared, skewed_clock_changes_nothing)
{
	static const int skew[N_PROXIES] = { 0, 30000, -7000, 0 };
	struct keys k;
	struct run run = { .n_proxies = 3, .lock = PTHREAD_MUTEX_INITIALIZER };

	start(3, skew);
	make_keys(&k);
	run.k = &k;
	run_clients(&run, 12, 20000);
	cr_expect_eq(run.errors, 0);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	expect_contract(log, k.mock_key[0], "skewed, key 0", 0.95);
	expect_contract(log, k.mock_key[1], "skewed, key 1", 0.95);
	json_decref(log);
	free_keys(&k);
}

/* Redis killed mid-run: no crash, every client gets an answer, the oracle stays clean within the
 * fallback shares; Redis restarted with an empty script cache: the proxies come back to shared
 * mode by themselves. Redis is restarted from this (the main) thread: the harness gives its
 * children PR_SET_PDEATHSIG, which fires when the thread that forked them exits. */
struct clients_arg {
	struct run *run;
	int n;
	int64_t duration_ms;
};

static void *clients_main(void *a)
{
	struct clients_arg *ca = a;
	run_clients(ca->run, ca->n, ca->duration_ms);
	return NULL;
}

Test(shared, redis_killed_and_restarted)
{
	struct keys k;
	struct run run = { .n_proxies = N_PROXIES, .lock = PTHREAD_MUTEX_INITIALIZER };
	pthread_t th;
	char sock[300];

	start(N_PROXIES, NULL);
	make_keys(&k);
	run.k = &k;
	int64_t t0 = harness_now_ms();
	struct clients_arg ca = { &run, 16, 30000 };
	pthread_create(&th, NULL, clients_main, &ca);
	while (harness_now_ms() < t0 + 8000)
		usleep(10000);
	harness_kill(redis, SIGKILL);
	harness_wait_exit(redis, 10000);
	harness_proc_free(redis);
	redis = NULL;
	while (harness_now_ms() < t0 + 16000)
		usleep(10000);
	redis = fixture_redis_start(fx.dir, "redis", NULL, sock, sizeof(sock));
	cr_assert(redis, "redis did not restart");
	pthread_join(th, NULL);

	cr_expect_eq(run.errors, 0, "%llu requests got no answer", (unsigned long long)run.errors);
	uint64_t answered = 0;
	for (int s = 0; s < 600; s++)
		answered += run.by_status[s];
	cr_expect_eq(run.by_status[200] + run.by_status[429] + run.by_status[503], answered,
	             "answers other than 200, 429 or 503");
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	/* Within the fallback shares (N / 4 each after a full window) the window still holds. */
	expect_contract(log, k.mock_key[0], "chaos, key 0", 0);
	expect_contract(log, k.mock_key[1], "chaos, key 1", 0);
	json_decref(log);
	for (int i = 0; i < N_PROXIES; i++) {
		cr_expect_geq(fixture_metric_at(admins[i], "ghlproxy_redis_fallbacks_total"), 1,
		              "proxy %d never fell back", i);
		cr_expect_eq(fixture_metric_at(admins[i], "ghlproxy_redis_up"), 1,
		             "proxy %d did not come back to the shared limiter", i);
	}
	/* Back in shared mode for real: a fresh run keeps the full contract again. */
	fixture_mock_reset(fx.mock_ctl);
	memset(run.by_status, 0, sizeof(run.by_status));
	run_clients(&run, 16, 12000);
	log = oracle_fetch_log(fx.mock_ctl);
	expect_contract(log, k.mock_key[0], "after restart, key 0", 0.90);
	json_decref(log);
	free_keys(&k);
}

/* The script cache flushed mid-run (what a Redis restart or an operator's SCRIPT FLUSH does):
 * the proxies load the script again and go on, without falling back. */
static void *flush_later(void *a)
{
	int64_t at = *(int64_t *)a;

	while (harness_now_ms() < at)
		usleep(10000);
	redisContext *c = redisConnectUnix(redis_sock);
	if (c && !c->err) {
		redisReply *rep = redisCommand(c, "SCRIPT FLUSH");
		freeReplyObject(rep);
	}
	if (c)
		redisFree(c);
	return NULL;
}

Test(shared, script_flush_mid_run)
{
	struct keys k;
	struct run run = { .n_proxies = 2, .lock = PTHREAD_MUTEX_INITIALIZER };
	pthread_t th;

	start(2, NULL);
	make_keys(&k);
	run.k = &k;
	int64_t at = harness_now_ms() + 4000;
	pthread_create(&th, NULL, flush_later, &at);
	run_clients(&run, 8, 10000);
	pthread_join(th, NULL);
	cr_expect_eq(run.errors, 0);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	expect_contract(log, k.mock_key[0], "flush, key 0", 0.95);
	json_decref(log);
	for (int i = 0; i < 2; i++)
		cr_expect_eq(fixture_metric_at(admins[i], "ghlproxy_redis_fallbacks_total"), 0,
		             "proxy %d fell back on NOSCRIPT", i);
	free_keys(&k);
}

/* One GET through proxy i; returns the status (-1: no answer) and the body and Retry-After. */
static int get_status(const char *addr, const char *auth, char *retry_after, size_t ra_len)
{
	struct httpc_response r = { 0 };
	char rq[4096];
	int fd = httpc_connect(addr);

	if (fd < 0)
		return -1;
	int n = snprintf(rq, sizeof(rq), "GET /contacts/ HTTP/1.1\r\nHost: x\r\n%s\r\n", auth);
	int status = -1;
	if (httpc_send_all(fd, rq, (size_t)n) == 0 &&
	    httpc_read_response(fd, &r, false, 10000) == 0)
		status = r.status;
	if (retry_after) {
		const char *ra = httpc_header(&r, "Retry-After");
		snprintf(retry_after, ra_len, "%s", ra ? ra : "");
	}
	httpc_response_free(&r);
	httpc_close(fd);
	return status;
}

static int readyz(const char *admin, char *body, size_t len)
{
	struct httpc_response r = { 0 };
	int st = httpc_request(admin, "GET", "/readyz", NULL, NULL, 0, &r, 5000) == 0 ? r.status
	                                                                              : -1;
	snprintf(body, len, "%.*s", (int)r.body_len, r.body ? (const char *)r.body : "");
	httpc_response_free(&r);
	return st;
}

/* limits.on_redis_down = reject: with Redis gone every request is answered 503 with Retry-After
 * at once (nothing forwarded), /readyz says Redis is the reason; when Redis returns, requests go
 * through again and /readyz is 200, without a restart of the proxy. */
Test(shared, on_redis_down_reject)
{
	struct keys k;
	char ra[64], body[512], sock[300];

	start_env(1, NULL, "GHLPROXY_LIMITS_ON_REDIS_DOWN=reject");
	make_keys(&k);
	cr_expect_eq(readyz(admins[0], body, sizeof(body)), 200, "readyz with Redis up: %s", body);
	cr_expect_eq(get_status(addrs[0], k.auth[0], NULL, 0), 200);

	harness_kill(redis, SIGKILL);
	harness_wait_exit(redis, 10000);
	harness_proc_free(redis);
	redis = NULL;
	int before = fixture_mock_count(fx.mock_ctl);
	int64_t until = harness_now_ms() + 10000;
	int st = 0;
	while (harness_now_ms() < until &&
	       (st = get_status(addrs[0], k.auth[0], ra, sizeof(ra))) != 503)
		usleep(50000);
	cr_expect_eq(st, 503, "no 503 while Redis is down (last %d)", st);
	cr_expect(ra[0] != '\0' && atoi(ra) >= 1, "503 without a usable Retry-After: '%s'", ra);
	/* Once the proxy knows Redis is down, nothing more reaches the upstream. */
	int mid = fixture_mock_count(fx.mock_ctl);
	for (int i = 0; i < 5; i++)
		cr_expect_eq(get_status(addrs[0], k.auth[0], NULL, 0), 503);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), mid, "forwarded while Redis was down");
	cr_expect_leq(mid - before, 1);
	cr_expect_eq(readyz(admins[0], body, sizeof(body)), 503);
	cr_expect(strstr(body, "redis") != NULL, "readyz does not name Redis: %s", body);

	redis = fixture_redis_start(fx.dir, "redis", NULL, sock, sizeof(sock));
	cr_assert(redis, "redis did not restart");
	until = harness_now_ms() + 15000;
	while (harness_now_ms() < until && (st = get_status(addrs[0], k.auth[0], NULL, 0)) != 200)
		usleep(100000);
	cr_expect_eq(st, 200, "requests did not go through after Redis came back");
	cr_expect_eq(readyz(admins[0], body, sizeof(body)), 200, "readyz after Redis returned: %s",
	             body);
	free_keys(&k);
}

/*
 * Proxies started while Redis is down decide alone (each with all of N: no other proxy is known
 * to be alive); when Redis comes, they go back to shared decisions at the common rejoin time,
 * with the keys they made during the outage too. (A proxy that had never had a script reply
 * did not know Redis' clock, could not carry its admissions over, and kept those keys local for
 * good: two proxies then sent 2N per window.) Judged by the oracle on a run after the rejoin.
 */
Test(shared, started_before_redis)
{
	struct keys k;
	struct run run = { .n_proxies = 2, .lock = PTHREAD_MUTEX_INITIALIZER };
	const char *env[] = { "GHLPROXY_LIMITS_BACKEND=redis", NULL };
	char sock[300], extra[600];

	fixture_start(&fx,
	              &(struct fixture_opts){
	                      .mock_args = "--limit 20 --window-ms 2000 --jitter-ms 20",
	                      .proxy_conf = "[limits]\nburst = 20\nwindow = 2s\nguard = 50ms\n",
	                      .no_proxy = true,
	              });
	/* Where Redis will listen: started once for its socket path, then gone. */
	redis = fixture_redis_start(fx.dir, "redis", NULL, redis_sock, sizeof(redis_sock));
	cr_assert(redis, "redis-server did not start");
	harness_kill(redis, SIGKILL);
	harness_wait_exit(redis, 10000);
	harness_proc_free(redis);
	redis = NULL;
	unlink(redis_sock);
	snprintf(extra, sizeof(extra),
	         "[redis]\nurl = unix://%s\ncommand_timeout = 500ms\nconnect_timeout = 500ms\n",
	         redis_sock);
	for (int i = 0; i < 2; i++) {
		char name[16];
		snprintf(name, sizeof(name), "proxy%d", i);
		proxies[i] = fixture_spawn_proxy(&fx, name, extra, (char **)env, addrs[i],
		                                 sizeof(addrs[i]), admins[i], sizeof(admins[i]));
		cr_assert(proxies[i], "proxy %d did not start", i);
	}
	make_keys(&k);
	run.k = &k;
	run_clients(&run, 8, 4000); /* the keys are made, and decided alone */
	for (int i = 0; i < 2; i++)
		cr_expect_geq(fixture_metric_at(admins[i], "ghlproxy_redis_fallbacks_total"), 1,
		              "proxy %d did not decide alone", i);

	redis = fixture_redis_start(fx.dir, "redis", NULL, sock, sizeof(sock));
	cr_assert(redis, "redis did not start");
	/* Reached, then the common rejoin time: REJOIN_LAG_MS (7 s) + W + guard after. */
	for (int i = 0; i < 2; i++)
		wait_metric(admins[i], "ghlproxy_redis_fallback", 0, 30000);
	usleep(500 * 1000); /* the merges of the rejoin go through */
	fixture_mock_reset(fx.mock_ctl);
	memset(run.by_status, 0, sizeof(run.by_status));
	run_clients(&run, 8, 10000);
	cr_expect_eq(run.errors, 0);
	json_t *log = oracle_fetch_log(fx.mock_ctl);
	expect_contract(log, k.mock_key[0], "after the rejoin, key 0", 0.85);
	expect_contract(log, k.mock_key[1], "after the rejoin, key 1", 0.85);
	json_decref(log);
	free_keys(&k);
}

/* One Redis command on the test's own connection to the shared Redis (caller frees). */
static redisReply *redis_do(const char *fmt, const char *arg)
{
	redisContext *c = redisConnectUnix(redis_sock);
	cr_assert(c && !c->err, "cannot reach the test's Redis");
	redisReply *rep = redisCommand(c, fmt, arg);
	redisFree(c);
	cr_assert(rep, "no reply to %s", fmt);
	return rep;
}

/* The name of the one Redis key matching `pattern`. */
static void redis_only_key(const char *pattern, char *out, size_t len)
{
	redisReply *rep = redis_do("KEYS %s", pattern);
	cr_assert_eq(rep->type, REDIS_REPLY_ARRAY);
	cr_assert_eq(rep->elements, 1, "%zu keys match %s", rep->elements, pattern);
	snprintf(out, len, "%s", rep->element[0]->str);
	freeReplyObject(rep);
}

/*
 * A merge that fails carries nothing away: what it held goes with the next one. The key's daily
 * hash is made the wrong type in Redis, so its admission fails and the key decides alone (Redis
 * itself stays up); its admissions then cannot be carried over, merge after merge, until the
 * hash is deleted. The next merge must bring every one of them: Redis' daily count then equals
 * the calls forwarded meanwhile. (Before, each failed merge dropped what it carried.)
 */
Test(shared, failed_merges_are_carried_by_the_next)
{
	struct keys k;
	char daily[512];
	const int n_alone = 6;

	start(1, NULL);
	make_keys(&k);
	cr_assert_eq(get_status(addrs[0], k.auth[0], NULL, 0), 200);
	redis_only_key("ghlproxy:*:d", daily, sizeof(daily));
	freeReplyObject(redis_do("DEL %s", daily));
	freeReplyObject(redis_do("SET %s not-a-hash", daily));
	double errors0 = fixture_metric_at(admins[0], "ghlproxy_redis_errors_total");

	int before = fixture_mock_count(fx.mock_ctl);
	for (int i = 0; i < n_alone; i++)
		cr_assert_eq(get_status(addrs[0], k.auth[0], NULL, 0), 200, "call %d", i);
	cr_assert_eq(fixture_mock_count(fx.mock_ctl) - before, n_alone);
	cr_assert_eq(fixture_metric_at(admins[0], "ghlproxy_redis_fallback"), 1,
	             "the key did not decide alone");
	/* Heartbeats come each second, each with a merge that fails. */
	usleep(2500 * 1000);
	double errors = fixture_metric_at(admins[0], "ghlproxy_redis_errors_total") - errors0;
	cr_expect_geq(errors, 3, "%g Redis errors: the merges did not fail", errors);

	freeReplyObject(redis_do("DEL %s", daily));
	wait_metric(admins[0], "ghlproxy_redis_fallback", 0, 30000);
	redisReply *tot = redis_do("HGET %s tot", daily);
	cr_assert_eq(tot->type, REDIS_REPLY_STRING, "no daily count in Redis after the rejoin");
	cr_expect_eq(atoi(tot->str), n_alone, "Redis counts %s of the %d calls made alone",
	             tot->str, n_alone);
	freeReplyObject(tot);
	free_keys(&k);
}

/* get_status, and how long it took (ms). */
static int timed_status(const char *addr, const char *auth, int64_t *took_ms)
{
	int64_t t0 = harness_now_ms();
	int st = get_status(addr, auth, NULL, 0);

	*took_ms = harness_now_ms() - t0;
	return st;
}

/*
 * An admission Redis granted after its key fell back. The key decides through Redis; then, in
 * one transaction, another proxy's rejoin time is set in Redis and Redis is paused for 2 s. The
 * heartbeat sent during the pause is answered first: others are coming back, so the key falls
 * back (its window full for W + guard). Then comes the answer to the admission sent after it.
 * That request goes at once (Redis admitted it), and the key keeps its fallback: the next
 * request waits for the block. (Before, the late reply rebuilt the key's windows from Redis,
 * dropping the block and the share, and the next request went at once.)
 */
Test(shared, admission_answered_after_the_key_fell_back)
{
	struct keys k;
	int64_t took;

	redis_timeouts = "command_timeout = 5s\nconnect_timeout = 500ms\n";
	start(1, NULL);
	make_keys(&k);
	cr_assert_eq(get_status(addrs[0], k.auth[0], NULL, 0), 200);
	cr_assert_eq(fixture_metric_at(admins[0], "ghlproxy_redis_fallback"), 0);

	redisContext *c = redisConnectUnix(redis_sock);
	cr_assert(c && !c->err);
	freeReplyObject(redisCommand(c, "MULTI"));
	freeReplyObject(redisCommand(c, "EVAL %s 1 ghlproxy:{proxies}:rejoin 15000",
	                             "local t = redis.call('TIME') "
	                             "local now = t[1] * 1000 + math.floor(t[2] / 1000) "
	                             "redis.call('SET', KEYS[1], now + ARGV[1], 'PX', ARGV[1])"));
	freeReplyObject(redisCommand(c, "CLIENT PAUSE 2000 ALL"));
	int64_t paused_at = harness_now_ms();
	redisReply *rep = redisCommand(c, "EXEC");
	cr_assert(rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2,
	          "the transaction failed");
	freeReplyObject(rep);
	redisFree(c);

	/* A heartbeat went out in the pause's first second; this admission goes after it. */
	while (harness_now_ms() < paused_at + 1200)
		usleep(10000);
	cr_assert_eq(timed_status(addrs[0], k.auth[0], &took), 200);
	cr_expect_lt(took, 1500, "the admission Redis granted waited %lld ms", (long long)took);
	cr_expect_eq(fixture_metric_at(admins[0], "ghlproxy_redis_fallback"), 1,
	             "the key did not fall back");
	cr_assert_eq(timed_status(addrs[0], k.auth[0], &took), 200);
	cr_expect_geq(took, 1000,
	              "the fallback's block was dropped: the next request waited %lld ms",
	              (long long)took);
	free_keys(&k);
}
