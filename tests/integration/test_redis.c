/*
 * test_redis.c: the asynchronous Redis client (src/redis.c) against real redis-servers on unix
 * sockets (and one on loopback TCP), driven by an event loop in the test.
 *
 * What is judged: exactly one callback per accepted command, in order, never synchronous, never
 * after redis_free(); our own timeouts (command and connect) and what they tear down; reconnection
 * by itself after a kill, a timeout or a refused AUTH; EVALSHA's NOSCRIPT path; SELECT; the
 * password kept out of the log. Waits are bounded loops on conditions, never fixed sleeps; time
 * is asserted only as lower bounds and loose upper bounds.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "fixture.h"
#include "harness.h"
#include "log.h"
#include "redis.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif
#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

#define T_MS 15000 /* generous bound for one wait: valgrind is slow */

static char *dir;
static struct event_base *base;
static struct event *tick;
static int seq; /* order of callbacks, across all clients */

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static void setup(void)
{
	signal(SIGPIPE, SIG_IGN); /* as the daemon does: hiredis writes without MSG_NOSIGNAL */
	dir = harness_tmpdir();
	cr_assert_not_null(dir);
	base = event_base_new();
	cr_assert_not_null(base);
	tick = evtimer_new(base, noop_cb, NULL);
	seq = 0;
}

static void teardown(void)
{
	/* Runs after a failed assertion too: the clients of that test may be left (leak), the
	 * children are killed. */
	if (tick)
		event_free(tick);
	tick = NULL;
	if (base)
		event_base_free(base);
	base = NULL;
	harness_cleanup_all();
	dir = NULL;
}

TestSuite(redis, .init = setup, .fini = teardown, .timeout = 180);

/* The end of every test body: Criterion does not fail a test for leaks found at its worker's
 * exit, so look for them here (ASan builds). Then remove the scratch dir. */
static void finish(void)
{
#ifdef HAVE_LSAN
	cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "leaks (see the report above)");
#endif
	harness_tmpdir_free(dir);
	dir = NULL;
}

/* One loop turn, waiting at most until deadline_ms. */
static void loop_once(int64_t deadline_ms)
{
	int64_t left = deadline_ms - harness_now_ms();

	if (left < 0)
		left = 0;
	struct timeval tv = { .tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000 };
	evtimer_add(tick, &tv);
	event_base_loop(base, EVLOOP_ONCE);
	evtimer_del(tick);
}

/* Run the loop while cond holds, at most ms. */
#define RUN_WHILE(cond, ms)                              \
	do {                                             \
		int64_t dl_ = harness_now_ms() + (ms);   \
		while ((cond) && harness_now_ms() < dl_) \
			loop_once(dl_);                  \
	} while (0)

/* Run the loop for ms whatever happens (to see that nothing more happens). */
static void run_for(int ms)
{
	RUN_WHILE(true, ms);
}

/* ---- callbacks ---- */

struct call {
	int n;     /* callbacks: 1 when done right */
	int order; /* seq at the (last) callback */
	int64_t at_ms;
	char error[256];
	bool has_reply;
	int type;
	long long integer;
	char *str; /* reply->str copy (status, string, error), malloc'd */
	size_t len;
	size_t elements;
};

static void call_reset(struct call *c)
{
	free(c->str);
	memset(c, 0, sizeof(*c));
}

static void on_call(struct redis *r, const redisReply *reply, const char *error, void *arg)
{
	struct call *c = arg;

	(void)r;
	c->n++;
	c->order = ++seq;
	c->at_ms = harness_now_ms();
	if (error)
		snprintf(c->error, sizeof(c->error), "%s", error);
	if (reply) {
		c->has_reply = true;
		c->type = reply->type;
		c->integer = reply->integer;
		c->elements = reply->elements;
		if (reply->str) {
			free(c->str);
			c->str = malloc(reply->len + 1);
			memcpy(c->str, reply->str, reply->len);
			c->str[reply->len] = '\0';
			c->len = reply->len;
		}
	}
}

struct state_log {
	int ups, downs;
	bool up;
};

static void on_state(struct redis *r, bool up, void *arg)
{
	struct state_log *st = arg;

	cr_assert_eq(redis_is_up(r), up, "the state callback agrees with redis_is_up");
	cr_assert_neq(st->up, up, "a state callback is a change");
	st->up = up;
	if (up)
		st->ups++;
	else
		st->downs++;
}

/* ---- helpers ---- */

static struct redis *client(const char *url, const char *password, uint32_t connect_ms,
                            uint32_t command_ms, struct state_log *st)
{
	struct redis_settings s = { .url = url,
		                    .password = password,
		                    .connect_timeout_ms = connect_ms,
		                    .command_timeout_ms = command_ms };
	char err[256] = "";
	struct redis *r = redis_new(base, &s, err, sizeof(err));

	cr_assert_not_null(r, "redis_new: %s", err);
	if (st)
		redis_on_state(r, on_state, st);
	return r;
}

static void wait_up(struct redis *r)
{
	RUN_WHILE(!redis_is_up(r), T_MS);
	cr_assert(redis_is_up(r), "the client did not come up");
}

/* Send a NULL-terminated list of strings; the send must be accepted and not answered yet. */
static void send_cmd(struct redis *r, struct call *c, ...)
{
	const char *argv[16];
	int argc = 0;
	va_list ap;

	va_start(ap, c);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 16;)
		argv[argc++] = a;
	va_end(ap);
	int n_before = c->n;
	cr_assert_eq(redis_command_argv(r, argc, argv, NULL, on_call, c), 0);
	cr_assert_eq(c->n, n_before, "a callback ran inside redis_command_argv");
}

static void wait_call(struct call *c)
{
	RUN_WHILE(c->n == 0, T_MS);
	cr_assert_eq(c->n, 1, "one callback (got %d)", c->n);
}

#define SYNC_CMD(r, c, ...)                  \
	do {                                 \
		call_reset(c);               \
		send_cmd(r, c, __VA_ARGS__); \
		wait_call(c);                \
	} while (0)

static struct harness_proc *start_redis(const char *name, const char *extra, char *sock,
                                        size_t sock_len)
{
	struct harness_proc *p = fixture_redis_start(dir, name, extra, sock, sock_len);
	cr_assert_not_null(p, "redis-server did not start");
	return p;
}

static void url_of(char *url, size_t len, const char *sock, const char *query)
{
	snprintf(url, len, "unix://%s%s", sock, query ? query : "");
}

static struct redis_stats stats_of(struct redis *r)
{
	struct redis_stats st;
	redis_get_stats(r, &st);
	return st;
}

/* ---- connect and commands ---- */

Test(redis, set_get_and_state)
{
	char sock[256], url[300];
	struct state_log st = { 0 };
	struct call c = { 0 };
	const char *bin[] = { "SET", "bin", "a\0b" };
	const size_t bin_len[] = { 3, 3, 3 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 2000, &st);
	cr_assert_not(redis_is_up(r), "up only after the handshake, in the loop");
	wait_up(r);
	cr_assert_eq(st.ups, 1);

	SYNC_CMD(r, &c, "SET", "k", "v", NULL);
	cr_assert_str_empty(c.error);
	cr_assert_eq(c.type, REDIS_REPLY_STATUS);
	cr_assert_str_eq(c.str, "OK");
	SYNC_CMD(r, &c, "GET", "k", NULL);
	cr_assert_eq(c.type, REDIS_REPLY_STRING);
	cr_assert_str_eq(c.str, "v");
	SYNC_CMD(r, &c, "GET", "missing", NULL);
	cr_assert_eq(c.type, REDIS_REPLY_NIL);

	/* Binary-safe arguments with explicit lengths. */
	call_reset(&c);
	cr_assert_eq(redis_command_argv(r, 3, bin, bin_len, on_call, &c), 0);
	wait_call(&c);
	SYNC_CMD(r, &c, "STRLEN", "bin", NULL);
	cr_assert_eq(c.integer, 3);

	struct redis_stats s = stats_of(r);
	cr_assert_eq(s.commands, 5);
	cr_assert_eq(s.errors, 0);
	cr_assert_eq(s.timeouts, 0);
	cr_assert_eq(s.reconnects, 0);

	redis_free(r);
	cr_assert_eq(st.downs, 0, "no state callback from redis_free");
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

#define BURST 1000

Test(redis, pipelined_burst_in_order)
{
	char sock[256], url[300];
	static struct call calls[BURST];
	struct call c = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 5000, NULL);
	wait_up(r);

	memset(calls, 0, sizeof(calls));
	for (int i = 0; i < BURST; i++)
		send_cmd(r, &calls[i], "INCR", "counter", NULL);
	RUN_WHILE(calls[BURST - 1].n == 0, T_MS);
	run_for(50); /* nothing more may come */
	for (int i = 0; i < BURST; i++) {
		cr_assert_eq(calls[i].n, 1, "command %d: %d callbacks", i, calls[i].n);
		cr_assert_str_empty(calls[i].error, "command %d: %s", i, calls[i].error);
		cr_assert_eq(calls[i].integer, i + 1, "command %d answered out of order", i);
		if (i > 0)
			cr_assert_gt(calls[i].order, calls[i - 1].order);
	}
	SYNC_CMD(r, &c, "GET", "counter", NULL);
	cr_assert_str_eq(c.str, "1000");
	cr_assert_eq(stats_of(r).commands, BURST + 1);

	redis_free(r);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

Test(redis, error_replies)
{
	char sock[256], url[300];
	struct call c = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 2000, NULL);
	wait_up(r);

	SYNC_CMD(r, &c, "NOSUCHCOMMAND", "x", NULL);
	cr_assert(c.has_reply, "an error reply is given too");
	cr_assert_eq(c.type, REDIS_REPLY_ERROR);
	cr_assert(strncmp(c.error, "ERR unknown command", 19) == 0, "error: %s", c.error);
	cr_assert_str_eq(c.error, c.str);

	SYNC_CMD(r, &c, "LPUSH", "list", "x", NULL);
	SYNC_CMD(r, &c, "GET", "list", NULL);
	cr_assert(strncmp(c.error, "WRONGTYPE", 9) == 0, "error: %s", c.error);

	/* The connection stays up after error replies. */
	SYNC_CMD(r, &c, "PING", NULL);
	cr_assert_str_empty(c.error);
	cr_assert_str_eq(c.str, "PONG");
	cr_assert(redis_is_up(r));
	cr_assert_eq(stats_of(r).errors, 2);
	cr_assert_eq(stats_of(r).reconnects, 0);

	/* Refused at once (no callback ever): bad arguments, pub/sub. */
	const char *sub[] = { "SUBSCRIBE", "ch" };
	const char *mon[] = { "monitor" };
	cr_assert_eq(redis_command_argv(r, 2, sub, NULL, on_call, &c), -EINVAL);
	cr_assert_eq(redis_command_argv(r, 1, mon, NULL, on_call, &c), -EINVAL);
	cr_assert_eq(redis_command_argv(r, 0, sub, NULL, on_call, &c), -EINVAL);
	cr_assert_eq(redis_command_argv(r, 1, sub, NULL, NULL, &c), -EINVAL);

	redis_free(r);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

/* "cmdstat_<name>:calls=N," from INFO commandstats, or -1. */
static long cmdstat_calls(struct redis *r, const char *name)
{
	struct call c = { 0 };
	char needle[64];
	long v = -1;

	SYNC_CMD(r, &c, "INFO", "commandstats", NULL);
	snprintf(needle, sizeof(needle), "cmdstat_%s:calls=", name);
	const char *at = c.str ? strstr(c.str, needle) : NULL;
	if (at)
		v = strtol(at + strlen(needle), NULL, 10);
	call_reset(&c);
	return v;
}

Test(redis, evalsha_and_noscript)
{
	char sock[256], url[300];
	struct call c = { 0 };
	struct redis_script sc, bad;
	const char *kv[] = { "ctr", "5" };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 2000, NULL);
	wait_up(r);

	redis_script_init(&sc, "return redis.call('INCRBY', KEYS[1], ARGV[1])");
	cr_assert_eq(strlen(sc.sha1), 40);
	SYNC_CMD(r, &c, "SCRIPT", "LOAD", sc.source, NULL);
	cr_assert_str_eq(c.str, sc.sha1, "our SHA1 is Redis's");

	call_reset(&c);
	cr_assert_eq(redis_evalsha(r, &sc, 1, 1, kv, NULL, on_call, &c), 0);
	cr_assert_eq(c.n, 0);
	wait_call(&c);
	cr_assert_str_empty(c.error, "%s", c.error);
	cr_assert_eq(c.integer, 5);

	/* The server forgets the script: EVALSHA -> NOSCRIPT -> one EVAL, one callback. */
	SYNC_CMD(r, &c, "SCRIPT", "FLUSH", NULL);
	SYNC_CMD(r, &c, "CONFIG", "RESETSTAT", NULL);
	call_reset(&c);
	cr_assert_eq(redis_evalsha(r, &sc, 1, 1, kv, NULL, on_call, &c), 0);
	wait_call(&c);
	cr_assert_str_empty(c.error, "%s", c.error);
	cr_assert_eq(c.integer, 10);
	cr_assert_eq(cmdstat_calls(r, "eval"), 1, "one EVAL loaded the script");

	/* Loaded again: back to EVALSHA alone. */
	call_reset(&c);
	cr_assert_eq(redis_evalsha(r, &sc, 1, 1, kv, NULL, on_call, &c), 0);
	wait_call(&c);
	cr_assert_eq(c.integer, 15);
	cr_assert_eq(cmdstat_calls(r, "eval"), 1, "no second EVAL");
	cr_assert_eq(cmdstat_calls(r, "evalsha"), 2);

	/* A script's error reply reaches the caller once, after its own single EVAL. */
	redis_script_init(&bad, "return redis.error_reply('BAD thing')");
	call_reset(&c);
	cr_assert_eq(redis_evalsha(r, &bad, 0, 0, NULL, NULL, on_call, &c), 0);
	wait_call(&c);
	cr_assert_str_eq(c.error, "BAD thing");
	cr_assert_eq(c.type, REDIS_REPLY_ERROR);
	cr_assert_eq(cmdstat_calls(r, "eval"), 2);

	/* Keys and args with explicit lengths (binary). */
	const char *kb[] = { "bk", "7\0x" };
	const size_t kb_len[] = { 2, 1 };
	call_reset(&c);
	cr_assert_eq(redis_evalsha(r, &sc, 1, 1, kb, kb_len, on_call, &c), 0);
	wait_call(&c);
	cr_assert_eq(c.integer, 7);
	cr_assert_eq(redis_evalsha(r, &sc, -1, 0, NULL, NULL, on_call, &c), -EINVAL);

	redis_free(r);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

/* ---- timeouts and failures ---- */

#define N_BEHIND 5

Test(redis, command_timeout_drops_the_connection)
{
	char sock[256], url[300];
	struct state_log st = { 0 };
	struct call slow = { 0 }, behind[N_BEHIND] = { 0 }, c = { 0 };

	struct harness_proc *p =
	        start_redis("redis", "--enable-debug-command yes", sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 3000, 200, &st);
	wait_up(r);

	int64_t t0 = harness_now_ms();
	send_cmd(r, &slow, "DEBUG", "SLEEP", "1", NULL);
	for (int i = 0; i < N_BEHIND; i++)
		send_cmd(r, &behind[i], "PING", NULL);
	RUN_WHILE(behind[N_BEHIND - 1].n == 0, T_MS);

	cr_assert_eq(slow.n, 1);
	cr_assert_str_eq(slow.error, "timeout");
	cr_assert_not(slow.has_reply);
	int64_t took = slow.at_ms - t0;
	cr_assert_geq(took, 195, "timed out early: %lld ms", (long long)took);
	cr_assert_lt(took, 900, "timed out late: %lld ms (DEBUG SLEEP lasts 1000)",
	             (long long)took);
	for (int i = 0; i < N_BEHIND; i++) {
		cr_assert_eq(behind[i].n, 1);
		cr_assert_str_eq(behind[i].error, "disconnected");
		cr_assert_gt(behind[i].order, slow.order, "the late one is answered first");
	}
	cr_assert_eq(st.downs, 1);
	cr_assert_not(redis_is_up(r));

	/* Back by itself (the server answers again after its sleep), and working. */
	RUN_WHILE(st.ups < 2, T_MS);
	cr_assert_eq(st.ups, 2);
	SYNC_CMD(r, &c, "SET", "after", "yes", NULL);
	cr_assert_str_eq(c.str, "OK");
	SYNC_CMD(r, &c, "GET", "after", NULL);
	cr_assert_str_eq(c.str, "yes");

	/* Still one callback each, once the old connection is long gone. */
	cr_assert_eq(slow.n, 1);
	for (int i = 0; i < N_BEHIND; i++)
		cr_assert_eq(behind[i].n, 1);
	struct redis_stats s = stats_of(r);
	cr_assert_eq(s.timeouts, 1);
	cr_assert_geq(s.reconnects, 1);
	cr_assert_eq(s.errors, 1 + N_BEHIND);

	redis_free(r);
	call_reset(&slow);
	call_reset(&c);
	for (int i = 0; i < N_BEHIND; i++)
		call_reset(&behind[i]);
	harness_proc_free(p);
	finish();
}

/* Wait until the server reports n blocked clients (asked through another client). */
static void wait_blocked(struct redis *other, int n)
{
	char needle[32];
	struct call c = { 0 };
	int64_t dl = harness_now_ms() + T_MS;
	bool seen = false;

	snprintf(needle, sizeof(needle), "blocked_clients:%d\r", n);
	while (!seen && harness_now_ms() < dl) {
		SYNC_CMD(other, &c, "INFO", "clients", NULL);
		seen = c.str && strstr(c.str, needle);
	}
	call_reset(&c);
	cr_assert(seen, "the server never had %d blocked clients", n);
}

#define N_FLIGHT 10

Test(redis, server_killed_then_restarted)
{
	char sock[256], sock2[256], url[300];
	struct state_log st = { 0 };
	struct call blocked = { 0 }, flight[N_FLIGHT] = { 0 }, c = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 10000, &st);
	struct redis *watcher = client(url, NULL, 2000, 10000, NULL);
	wait_up(r);
	wait_up(watcher);

	/* In flight for sure: BLPOP blocks on the server, the rest queue behind it. */
	send_cmd(r, &blocked, "BLPOP", "never", "0", NULL);
	for (int i = 0; i < N_FLIGHT; i++)
		send_cmd(r, &flight[i], "GET", "x", NULL);
	wait_blocked(watcher, 1);
	cr_assert_eq(blocked.n, 0);

	cr_assert_eq(harness_kill(p, SIGKILL), 0);
	cr_assert_eq(harness_wait_exit(p, T_MS), 128 + SIGKILL);
	harness_proc_free(p);

	RUN_WHILE(flight[N_FLIGHT - 1].n == 0 || blocked.n == 0, T_MS);
	cr_assert_eq(blocked.n, 1);
	cr_assert_str_eq(blocked.error, "disconnected");
	for (int i = 0; i < N_FLIGHT; i++) {
		cr_assert_eq(flight[i].n, 1);
		cr_assert_str_eq(flight[i].error, "disconnected");
	}
	cr_assert_eq(st.downs, 1);
	cr_assert_not(redis_is_up(r));

	/* Down: refused at once, answered from the loop, never queued. */
	call_reset(&c);
	send_cmd(r, &c, "GET", "x", NULL);
	wait_call(&c);
	cr_assert_str_eq(c.error, "not connected");

	/* Same socket path again: back by itself. */
	p = start_redis("redis", NULL, sock2, sizeof(sock2));
	cr_assert_str_eq(sock, sock2);
	RUN_WHILE(st.ups < 2, T_MS);
	cr_assert_eq(st.ups, 2);
	SYNC_CMD(r, &c, "SET", "back", "1", NULL);
	cr_assert_str_eq(c.str, "OK");
	cr_assert_geq(stats_of(r).reconnects, 1);

	/* No late second callback for anything. */
	run_for(50);
	cr_assert_eq(blocked.n, 1);
	for (int i = 0; i < N_FLIGHT; i++)
		cr_assert_eq(flight[i].n, 1);

	redis_free(r);
	redis_free(watcher);
	call_reset(&c);
	call_reset(&blocked);
	for (int i = 0; i < N_FLIGHT; i++)
		call_reset(&flight[i]);
	harness_proc_free(p);
	finish();
}

/* stderr to a file for a while (the log), to look for the password in it. */
struct capture {
	int saved_fd;
	char path[512];
};

static void capture_start(struct capture *cap)
{
	snprintf(cap->path, sizeof(cap->path), "%s/stderr.txt", dir);
	int fd = open(cap->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	fflush(stderr);
	cap->saved_fd = dup(2);
	dup2(fd, 2);
	close(fd);
}

static char *capture_end(struct capture *cap)
{
	fflush(stderr);
	dup2(cap->saved_fd, 2);
	close(cap->saved_fd);
	return harness_read_file(cap->path, NULL);
}

Test(redis, requirepass)
{
	char sock[256], url[300];
	struct state_log st_bad = { 0 }, st_none = { 0 };
	struct call c = { 0 };
	struct capture cap;

	harness_secret("s3cret-Pass");
	harness_secret("wrong-Pass-42");
	struct harness_proc *p =
	        start_redis("redis", "--requirepass s3cret-Pass", sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);

	struct redis *good = client(url, "s3cret-Pass", 2000, 2000, NULL);
	wait_up(good);
	SYNC_CMD(good, &c, "SET", "k", "v", NULL);
	cr_assert_str_eq(c.str, "OK");

	log_setup(LOG_DEBUG, LOG_FORMAT_TEXT);
	capture_start(&cap);
	struct redis *bad = client(url, "wrong-Pass-42", 2000, 2000, &st_bad);
	struct redis *none = client(url, NULL, 2000, 2000, &st_none);
	/* Refused, retried with backoff, never up. */
	RUN_WHILE(stats_of(bad).reconnects < 3 || stats_of(none).reconnects < 3, T_MS);
	char *log = capture_end(&cap);
	log_setup(LOG_INFO, LOG_FORMAT_TEXT);

	cr_assert_geq(stats_of(bad).reconnects, 3);
	cr_assert_geq(stats_of(none).reconnects, 3);
	cr_assert_eq(st_bad.ups, 0);
	cr_assert_eq(st_none.ups, 0);
	cr_assert_not_null(log);
	cr_assert_not_null(strstr(log, "AUTH refused: WRONGPASS"), "log: %s", log);
	cr_assert_not_null(strstr(log, "NOAUTH"), "log: %s", log);
	cr_assert_null(strstr(log, "wrong-Pass"), "the password is in the log");
	cr_assert_null(strstr(log, "s3cret"), "the password is in the log");
	free(log);

	/* Down clients answer "not connected"; the good one is unaffected. */
	call_reset(&c);
	send_cmd(bad, &c, "GET", "k", NULL);
	wait_call(&c);
	cr_assert_str_eq(c.error, "not connected");
	SYNC_CMD(good, &c, "GET", "k", NULL);
	cr_assert_str_eq(c.str, "v");

	redis_free(bad);
	redis_free(none);
	redis_free(good);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

Test(redis, select_db)
{
	char sock[256], url0[300], url3[300];
	struct call c = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url0, sizeof(url0), sock, NULL);
	url_of(url3, sizeof(url3), sock, "?db=3");
	struct redis *r0 = client(url0, NULL, 2000, 2000, NULL);
	struct redis *r3 = client(url3, NULL, 2000, 2000, NULL);
	wait_up(r0);
	wait_up(r3);

	SYNC_CMD(r3, &c, "SET", "in3", "three", NULL);
	SYNC_CMD(r0, &c, "GET", "in3", NULL);
	cr_assert_eq(c.type, REDIS_REPLY_NIL, "a key of db 3 is not in db 0");
	SYNC_CMD(r3, &c, "GET", "in3", NULL);
	cr_assert_str_eq(c.str, "three");
	SYNC_CMD(r0, &c, "SELECT", "3", NULL); /* the check, from db 0's side */
	SYNC_CMD(r0, &c, "GET", "in3", NULL);
	cr_assert_str_eq(c.str, "three");

	redis_free(r0);
	redis_free(r3);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

/* A free loopback TCP port (tiny race with other processes: fine in tests). */
static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

Test(redis, tcp_literal_and_host_name)
{
	char sock[256], extra[128], url[128];
	struct call c = { 0 };
	int port = free_port();

	snprintf(extra, sizeof(extra), "--port %d --bind 127.0.0.1", port);
	struct harness_proc *p = start_redis("redis", extra, sock, sizeof(sock));

	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/2", port);
	struct redis *lit = client(url, NULL, 2000, 2000, NULL);
	/* "localhost" goes through the lookup thread; ::1 may come first and be refused (the
	 * server is on 127.0.0.1 only): the next attempt takes the next address. */
	snprintf(url, sizeof(url), "redis://localhost:%d/2", port);
	struct redis *named = client(url, NULL, 2000, 2000, NULL);
	wait_up(lit);
	wait_up(named);

	SYNC_CMD(lit, &c, "SET", "tcp", "ok", NULL);
	SYNC_CMD(named, &c, "GET", "tcp", NULL);
	cr_assert_str_eq(c.str, "ok");

	redis_free(lit);
	redis_free(named);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

/* A unix socket that listens (backlog) and never accepts: connect works, nothing answers. */
static int silent_listener(const char *path, int backlog)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, backlog), 0);
	return fd;
}

/* Accept what is queued (non-blocking); returns how many. */
static int drain_accept(int lfd)
{
	int n = 0, fd;

	fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
	while ((fd = accept(lfd, NULL, NULL)) >= 0) {
		close(fd);
		n++;
	}
	return n;
}

Test(redis, connect_timeout_on_a_silent_socket)
{
	char path[300], url[320];
	struct state_log st = { 0 };
	struct call c = { 0 };

	snprintf(path, sizeof(path), "%s/silent.sock", dir);
	int lfd = silent_listener(path, 64);
	url_of(url, sizeof(url), path, NULL);

	int64_t t0 = harness_now_ms();
	struct redis *r = client(url, NULL, 200, 2000, &st);
	RUN_WHILE(stats_of(r).reconnects < 1, T_MS);
	int64_t first_retry = harness_now_ms() - t0;
	cr_assert_geq(first_retry, 200 + 50 - 5,
	              "retried before the connect timeout + backoff: %lld", (long long)first_retry);

	/* While it tries: commands fail at once, from the loop. */
	send_cmd(r, &c, "PING", NULL);
	wait_call(&c);
	cr_assert_str_eq(c.error, "not connected");

	RUN_WHILE(stats_of(r).reconnects < 2, T_MS);
	cr_assert_eq(st.ups, 0);
	cr_assert_not(redis_is_up(r));
	cr_assert_geq(drain_accept(lfd), 2, "each attempt connected, then timed out");

	redis_free(r);
	close(lfd);
	call_reset(&c);
	finish();
}

Test(redis, no_socket_and_full_backlog_fail_fast_and_retry)
{
	char path[300], url[320], full[300], url_full[320];
	struct state_log st = { 0 };
	struct call c = { 0 };

	/* A path that does not exist: connect fails at once, no need to wait for the timeout. */
	snprintf(path, sizeof(path), "%s/nothing.sock", dir);
	url_of(url, sizeof(url), path, NULL);
	int64_t t0 = harness_now_ms();
	struct redis *r = client(url, NULL, 5000, 2000, &st);
	RUN_WHILE(stats_of(r).reconnects < 2, T_MS);
	cr_assert_geq(stats_of(r).reconnects, 2);
	cr_assert_lt(harness_now_ms() - t0, 4000, "failures wait for the connect timeout");

	/* A full backlog: the kernel refuses at once (EAGAIN), same story. */
	snprintf(full, sizeof(full), "%s/full.sock", dir);
	int lfd = silent_listener(full, 0);
	int fillers[4], n_fill = 0;
	for (; n_fill < 4; n_fill++) {
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		cr_assert_lt(strlen(full), sizeof(a.sun_path));
		memcpy(a.sun_path, full, strlen(full) + 1);
		fillers[n_fill] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (connect(fillers[n_fill], (struct sockaddr *)&a, sizeof(a)) != 0) {
			close(fillers[n_fill]);
			break;
		}
	}
	url_of(url_full, sizeof(url_full), full, NULL);
	t0 = harness_now_ms();
	struct redis *rf = client(url_full, NULL, 5000, 2000, NULL);
	RUN_WHILE(stats_of(rf).reconnects < 2, T_MS);
	cr_assert_geq(stats_of(rf).reconnects, 2);
	cr_assert_lt(harness_now_ms() - t0, 4000);
	cr_assert_not(redis_is_up(rf));

	send_cmd(r, &c, "GET", "x", NULL);
	wait_call(&c);
	cr_assert_str_eq(c.error, "not connected");
	cr_assert_eq(st.ups, 0);

	redis_free(r);
	redis_free(rf);
	for (int i = 0; i < n_fill; i++)
		close(fillers[i]);
	close(lfd);
	call_reset(&c);
	finish();
}

/* ---- redis_free and re-entrancy ---- */

#define N_FREE 50

Test(redis, free_with_commands_in_flight)
{
	char sock[256], url[300], path[300], url2[320];
	struct call flight[N_FREE] = { 0 }, down = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 5000, NULL);
	wait_up(r);
	send_cmd(r, &flight[0], "BLPOP", "never", "0", NULL);
	for (int i = 1; i < N_FREE; i++)
		send_cmd(r, &flight[i], "INCR", "n", NULL);
	redis_free(r);
	/* Inside redis_free, in order, once each. */
	for (int i = 0; i < N_FREE; i++) {
		cr_assert_eq(flight[i].n, 1, "command %d: %d callbacks", i, flight[i].n);
		cr_assert_str_eq(flight[i].error, "shutting down");
		if (i > 0)
			cr_assert_gt(flight[i].order, flight[i - 1].order);
	}
	run_for(100);
	for (int i = 0; i < N_FREE; i++)
		cr_assert_eq(flight[i].n, 1);

	/* Down, with a refusal queued for the next loop turn: it is answered by redis_free. */
	snprintf(path, sizeof(path), "%s/nothing.sock", dir);
	url_of(url2, sizeof(url2), path, NULL);
	r = client(url2, NULL, 2000, 2000, NULL);
	send_cmd(r, &down, "GET", "x", NULL);
	redis_free(r);
	cr_assert_eq(down.n, 1);
	cr_assert_str_eq(down.error, "shutting down");
	run_for(50);
	cr_assert_eq(down.n, 1);

	/* Freed while connecting (silent socket) and while resolving a name. */
	snprintf(path, sizeof(path), "%s/silent.sock", dir);
	int lfd = silent_listener(path, 8);
	url_of(url2, sizeof(url2), path, NULL);
	r = client(url2, NULL, 2000, 2000, NULL);
	run_for(20);
	redis_free(r);
	r = client("redis://localhost:1", NULL, 2000, 2000, NULL);
	redis_free(r);
	r = client("redis://localhost:1", NULL, 2000, 2000, NULL);
	run_for(20);
	redis_free(r);
	run_for(50); /* the lookup threads finish and let go */
	close(lfd);

	for (int i = 0; i < N_FREE; i++)
		call_reset(&flight[i]);
	call_reset(&down);
	harness_proc_free(p);
	finish();
}

/* Frees its client from inside a callback, and checks nothing can be sent any more. */
struct freer {
	struct redis *r;
	struct call call;
	int refused; /* what a send from inside the callback returned */
};

static void free_in_cb(struct redis *r, const redisReply *reply, const char *error, void *arg)
{
	struct freer *f = arg;
	const char *ping[] = { "PING" };

	on_call(r, reply, error, &f->call);
	if (f->r) {
		f->r = NULL;
		redis_free(r);
		f->refused = redis_command_argv(r, 1, ping, NULL, on_call, &f->call);
	}
}

static void free_in_state(struct redis *r, bool up, void *arg)
{
	int *n = arg;
	(*n)++;
	if (up)
		redis_free(r);
}

Test(redis, free_from_inside_callbacks)
{
	char sock[256], url[300], path[300], url2[320];
	struct freer f = { 0 };
	struct call rest[10] = { 0 };
	const char *ping[] = { "PING" };

	struct harness_proc *p =
	        start_redis("redis", "--enable-debug-command yes", sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);

	/* 1. In a reply callback, with more replies in the same read. */
	f.r = client(url, NULL, 2000, 2000, NULL);
	wait_up(f.r);
	cr_assert_eq(redis_command_argv(f.r, 1, ping, NULL, free_in_cb, &f), 0);
	for (int i = 0; i < 10; i++)
		send_cmd(f.r, &rest[i], "PING", NULL);
	RUN_WHILE(f.call.n == 0, T_MS);
	cr_assert_eq(f.call.n, 1);
	cr_assert_str_eq(f.call.str, "PONG");
	cr_assert_eq(f.refused, -ESHUTDOWN);
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(rest[i].n, 1);
		cr_assert_str_eq(rest[i].error, "shutting down");
	}
	run_for(50);
	cr_assert_eq(f.call.n, 1);

	/* 2. In a "timeout" callback (inside our timer, the connection being dropped). */
	call_reset(&f.call);
	for (int i = 0; i < 10; i++)
		call_reset(&rest[i]);
	f.r = client(url, NULL, 3000, 200, NULL);
	wait_up(f.r);
	const char *sleep1[] = { "DEBUG", "SLEEP", "1" };
	cr_assert_eq(redis_command_argv(f.r, 3, sleep1, NULL, free_in_cb, &f), 0);
	send_cmd(f.r, &rest[0], "PING", NULL);
	RUN_WHILE(f.call.n == 0, T_MS);
	cr_assert_str_eq(f.call.error, "timeout");
	cr_assert_eq(rest[0].n, 1);
	cr_assert_str_eq(rest[0].error, "shutting down");
	run_for(50);

	/* 3. In a "not connected" callback, with another refusal queued behind it. */
	call_reset(&f.call);
	call_reset(&rest[0]);
	snprintf(path, sizeof(path), "%s/nothing.sock", dir);
	url_of(url2, sizeof(url2), path, NULL);
	f.r = client(url2, NULL, 2000, 2000, NULL);
	cr_assert_eq(redis_command_argv(f.r, 1, ping, NULL, free_in_cb, &f), 0);
	send_cmd(f.r, &rest[0], "PING", NULL);
	RUN_WHILE(f.call.n == 0, T_MS);
	cr_assert_str_eq(f.call.error, "not connected");
	cr_assert_eq(rest[0].n, 1);
	cr_assert_str_eq(rest[0].error, "shutting down");
	run_for(50);
	cr_assert_eq(rest[0].n, 1);

	/* 4. In the state callback (up). */
	int n_state = 0;
	struct redis *r = client(url, NULL, 2000, 2000, NULL);
	redis_on_state(r, free_in_state, &n_state);
	RUN_WHILE(n_state == 0, T_MS);
	cr_assert_eq(n_state, 1);
	run_for(50);
	cr_assert_eq(n_state, 1);

	call_reset(&f.call);
	for (int i = 0; i < 10; i++)
		call_reset(&rest[i]);
	harness_proc_free(p);
	finish();
}

/* Sends again from each "not connected" callback: the loop must keep turning. */
struct resender {
	struct redis *r;
	int n;
};

static void resend_cb(struct redis *r, const redisReply *reply, const char *error, void *arg)
{
	struct resender *rs = arg;
	const char *ping[] = { "PING" };

	(void)reply;
	(void)error;
	rs->n++;
	if (rs->r)
		cr_assert_eq(redis_command_argv(r, 1, ping, NULL, resend_cb, rs), 0);
}

Test(redis, refusals_are_deferred_and_do_not_spin)
{
	char path[300], url[320];
	struct resender rs = { 0 };
	struct call c = { 0 };
	const char *ping[] = { "PING" };

	snprintf(path, sizeof(path), "%s/nothing.sock", dir);
	url_of(url, sizeof(url), path, NULL);
	rs.r = client(url, NULL, 2000, 2000, NULL);
	cr_assert_eq(redis_command_argv(rs.r, 1, ping, NULL, resend_cb, &rs), 0);
	cr_assert_eq(rs.n, 0, "refused at once but answered from the loop");
	/* The tick timer must still fire while the resender keeps sending. */
	int64_t t0 = harness_now_ms();
	run_for(100);
	cr_assert_lt(harness_now_ms() - t0, 2000);
	cr_assert_geq(rs.n, 2);
	struct redis *r = rs.r;
	rs.r = NULL; /* the last callback (from redis_free) sends nothing */
	redis_free(r);
	int n = rs.n;
	run_for(20);
	cr_assert_eq(rs.n, n);
	call_reset(&c);
	finish();
}

/* Each reply sends the next command, the first from the state callback: how the limiter works. */
struct chain {
	struct redis *r;
	int n_sent, n_done, n_bad;
};

static void chain_next(struct chain *ch);

static void chain_cb(struct redis *r, const redisReply *reply, const char *error, void *arg)
{
	struct chain *ch = arg;

	(void)r;
	ch->n_done++;
	if (error || !reply || reply->type != REDIS_REPLY_INTEGER || reply->integer != ch->n_done)
		ch->n_bad++;
	chain_next(ch);
}

static void chain_next(struct chain *ch)
{
	const char *incr[] = { "INCR", "chain" };

	if (ch->n_sent == 100)
		return;
	ch->n_sent++;
	cr_assert_eq(redis_command_argv(ch->r, 2, incr, NULL, chain_cb, ch), 0);
}

static void chain_on_up(struct redis *r, bool up, void *arg)
{
	(void)r;
	if (up)
		chain_next(arg);
}

Test(redis, commands_sent_from_callbacks)
{
	char sock[256], url[300];
	struct chain ch = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	ch.r = client(url, NULL, 2000, 2000, NULL);
	redis_on_state(ch.r, chain_on_up, &ch);
	RUN_WHILE(ch.n_done < 100, T_MS);
	cr_assert_eq(ch.n_done, 100);
	cr_assert_eq(ch.n_bad, 0);

	redis_free(ch.r);
	harness_proc_free(p);
	finish();
}

Test(redis, idle_connection_closed_by_the_server)
{
	char sock[256], url[300];
	struct state_log st = { 0 };
	struct call c = { 0 };

	struct harness_proc *p = start_redis("redis", NULL, sock, sizeof(sock));
	url_of(url, sizeof(url), sock, NULL);
	struct redis *r = client(url, NULL, 2000, 2000, &st);
	struct redis *killer = client(url, NULL, 2000, 2000, NULL);
	wait_up(r);
	wait_up(killer);

	/* hiredis sees EOF with nothing pending and frees the context by itself. */
	SYNC_CMD(killer, &c, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes", NULL);
	cr_assert_eq(c.integer, 1);
	RUN_WHILE(st.ups < 2, T_MS);
	cr_assert_eq(st.downs, 1);
	cr_assert_eq(st.ups, 2);
	SYNC_CMD(r, &c, "PING", NULL);
	cr_assert_str_eq(c.str, "PONG");
	cr_assert_eq(stats_of(r).reconnects, 1);

	redis_free(r);
	redis_free(killer);
	call_reset(&c);
	harness_proc_free(p);
	finish();
}

Test(redis, unresolvable_host_retries)
{
	struct state_log st = { 0 };
	struct call c = { 0 };

	/* Fails fast (NXDOMAIN) or slowly (no DNS server: the lookup outlives its attempt, and
	 * the next attempt waits for it); either way: down, retrying, commands refused. */
	struct redis *r = client("redis://nonexistent.invalid:6379", NULL, 300, 2000, &st);
	send_cmd(r, &c, "PING", NULL);
	wait_call(&c);
	cr_assert_str_eq(c.error, "not connected");
	RUN_WHILE(stats_of(r).reconnects < 2, T_MS);
	cr_assert_geq(stats_of(r).reconnects, 2);
	cr_assert_eq(st.ups, 0);
	redis_free(r);
	run_for(50);
	call_reset(&c);
	finish();
}

/* ---- URLs ---- */

struct url_case {
	const char *url;
	bool ok;
	const char *why; /* part of the message */
};

Test(redis, urls)
{
	static const struct url_case cases[] = {
		{ "redis://127.0.0.1", true, NULL },
		{ "redis://127.0.0.1:6380/15", true, NULL },
		{ "redis://[::1]:6380/2", true, NULL },
		{ "redis://[::1]", true, NULL },
		{ "redis://cache-1.internal_net:7000/0", true, NULL },
		{ "redis://h/2147483647", true, NULL },
		{ "unix:///run/redis.sock", true, NULL },
		{ "unix:///run/redis.sock?db=12", true, NULL },
		{ "", false, "empty" },
		{ "http://127.0.0.1", false, "is not redis://" },
		{ "redis://", false, "no host" },
		{ "redis:///3", false, "no host" },
		{ "redis://h:0", false, "port" },
		{ "redis://h:65536", false, "port" },
		{ "redis://h:", false, "port" },
		{ "redis://h:12x", false, "port" },
		{ "redis://h/", false, "database" },
		{ "redis://h/abc", false, "database" },
		{ "redis://h/2147483648", false, "database" },
		{ "redis://h/-1", false, "database" },
		{ "redis://user:hunter2@h:6379", false, "credentials" },
		{ "redis://h o", false, "invalid host" },
		{ "redis://[::1", false, "']'" },
		{ "redis://[::1]x", false, "junk" },
		{ "redis://[zz::1]", false, "IPv6" },
		{ "unix://relative/path", false, "absolute" },
		{ "unix:///run/r.sock?db=", false, "database" },
		{ "unix:///run/r.sock?db=x", false, "database" },
		{ "unix:///run/r.sock?x=1", false, "database" },
	};
	char err[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct redis_settings s = { .url = cases[i].url, .password = "pw" };
		err[0] = '\0';
		struct redis *r = redis_new(base, &s, err, sizeof(err));
		if (cases[i].ok) {
			cr_assert_not_null(r, "%s: %s", cases[i].url, err);
			redis_free(r);
			continue;
		}
		cr_assert_null(r, "%s accepted", cases[i].url);
		cr_assert_not_null(strstr(err, cases[i].why), "%s: %s", cases[i].url, err);
		cr_assert_null(strstr(err, "hunter2"), "the URL's secret is echoed");
	}
	run_for(50); /* the lookup thread of the name above finishes */
	finish();
}
