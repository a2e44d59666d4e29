/*
 * test_redis_vectors.c: the Redis admission script (src/limiter.lua, compiled in as
 * limiter_lua.h) on a real redis-server, through hiredis' synchronous API.
 *
 * Two layers:
 * (1) every vector of tests/vectors/window.vec, the judge of src/window.c, run through the
 *     script with the vector's virtual clock as `now`, on fresh keys (FLUSHDB per vector). Steps
 *     map to script calls: `try admit` / `try wait` / `admit k` to admit (`admit k` also checked
 *     against k single admissions on a copy of the keys), `limits` / `remaining` /
 *     `daily-remaining` / `block` to feedback, `used` / `idle` / `slot` to state. `slot` steps
 *     rebuild window.c from the state: once exactly (the reply plus the bucket hash, read here),
 *     which must give the vector's answer, and once as the proxy will (the reply alone, the day's
 *     count all in now's bucket), which must never be earlier and is exact whenever the counted
 *     admissions all are in now's bucket. `trim` and `heap` are in-process only (skipped).
 *     After every step, every key must carry a TTL (it is then extended to an hour, so that a
 *     slow run never sees a key expire in real time in the middle of a virtual-clock vector).
 *     Vectors whose clock lies outside the script's range (|t| > 2^53 - 1 ms, see limiter.lua)
 *     are skipped by name; the same saturation is tested at the script's own limit below.
 * (2) what only Redis has: the reply layout, TTLs after every kind of write, keys expiring when
 *     idle, memory bounds after 10,000 admissions, error replies for bad arguments, EVALSHA
 *     falling back to EVAL, Redis TIME as the clock, the hash tag (one cluster slot per key),
 *     merge, a clock that went back across buckets, and the script's numeric limits.
 *
 * Every failure names window.vec:<line> and the vector. Needs redis-server in /usr/bin and
 * GHLPROXY_SRCDIR (set by meson).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"
#include "harness.h"
#include "src/limiter_lua.h"
#include "src/window.h"

/* The script's "never" and largest time: 2^53 - 1, where window.c has INT64_MAX. */
#define NEVER_MS   9007199254740991LL
#define MAX_ARGS   64
#define MAX_TOKENS 16
#define RUN_TTL_MS 3600000 /* TTL the runner gives every key after each step */
#define HOUR_MS    3600000LL

/* ------------------------------------------------------------------ redis-server and calls */

struct rs {
	char *dir;
	struct harness_proc *proc;
	redisContext *c;
	char sock[256];
	char sha[41];
};

/* A NULL-terminated command. The reply (caller frees); asserts on a transport error. */
static redisReply *rcmd(struct rs *r, const char *arg0, ...)
{
	const char *argv[MAX_ARGS];
	int argc = 0;
	va_list ap;
	redisReply *rep;

	va_start(ap, arg0);
	for (const char *a = arg0; a && argc < MAX_ARGS; a = va_arg(ap, const char *))
		argv[argc++] = a;
	va_end(ap);
	rep = redisCommandArgv(r->c, argc, argv, NULL);
	cr_assert_not_null(rep, "redis %s: %s", arg0, r->c->errstr);
	return rep;
}

/* A command whose integer reply is returned. */
static long long rint_cmd(struct rs *r, const char *arg0, ...)
{
	const char *argv[MAX_ARGS];
	int argc = 0;
	va_list ap;
	redisReply *rep;
	long long v;

	va_start(ap, arg0);
	for (const char *a = arg0; a && argc < MAX_ARGS; a = va_arg(ap, const char *))
		argv[argc++] = a;
	va_end(ap);
	rep = redisCommandArgv(r->c, argc, argv, NULL);
	cr_assert_not_null(rep, "redis %s: %s", arg0, r->c->errstr);
	cr_assert_eq(rep->type, REDIS_REPLY_INTEGER, "redis %s: not an integer reply (%s)", arg0,
	             rep->type == REDIS_REPLY_ERROR ? rep->str : "");
	v = rep->integer;
	freeReplyObject(rep);
	return v;
}

static void rs_start(struct rs *r, const char *extra)
{
	struct timeval tv = { .tv_sec = 20 };
	redisReply *rep;

	memset(r, 0, sizeof(*r));
	r->dir = harness_tmpdir();
	cr_assert_not_null(r->dir);
	r->proc = fixture_redis_start(r->dir, "redis", extra, r->sock, sizeof(r->sock));
	cr_assert_not_null(r->proc, "redis-server did not start");
	r->c = redisConnectUnix(r->sock);
	cr_assert(r->c && !r->c->err, "connect %s: %s", r->sock, r->c ? r->c->errstr : "oom");
	cr_assert_eq(redisSetTimeout(r->c, tv), REDIS_OK);
	rep = rcmd(r, "SCRIPT", "LOAD", limiter_lua, NULL);
	cr_assert_eq(rep->type, REDIS_REPLY_STRING, "SCRIPT LOAD: %s",
	             rep->type == REDIS_REPLY_ERROR ? rep->str : "?");
	cr_assert_eq(rep->len, 40);
	memcpy(r->sha, rep->str, 41);
	freeReplyObject(rep);
}

static void rs_stop(struct rs *r)
{
	redisFree(r->c);
	harness_proc_free(r->proc);
	harness_tmpdir_free(r->dir);
	memset(r, 0, sizeof(*r));
}

/* The four keys of one (daily key, burst key), as limiter_redis.c names them. */
struct rkeys {
	char list[256], bmeta[256], daily[256], dmeta[256];
};

static void rkeys_make(struct rkeys *k, const char *prefix, const char *dk, const char *bk)
{
	snprintf(k->list, sizeof(k->list), "%s:{%s}:b:%s", prefix, dk, bk);
	snprintf(k->bmeta, sizeof(k->bmeta), "%s:{%s}:mb:%s", prefix, dk, bk);
	snprintf(k->daily, sizeof(k->daily), "%s:{%s}:d", prefix, dk);
	snprintf(k->dmeta, sizeof(k->dmeta), "%s:{%s}:md", prefix, dk);
}

/* Script arguments (ARGV), built as text. */
struct sargs {
	char text[MAX_ARGS][32];
	const char *argv[MAX_ARGS];
	int n;
};

static void sa_str(struct sargs *a, const char *s)
{
	cr_assert_lt(a->n, MAX_ARGS);
	a->argv[a->n++] = s;
}

static void sa_i64(struct sargs *a, int64_t v)
{
	cr_assert_lt(a->n, MAX_ARGS);
	snprintf(a->text[a->n], sizeof(a->text[0]), "%" PRId64, v);
	a->argv[a->n] = a->text[a->n];
	a->n++;
}

/*
 * EVALSHA the script on keys k with ARGV a (`nkeys` of k's four: 4 but in the bad-argument
 * test); on NOSCRIPT, EVAL (which loads it), as redis.c does. The reply; caller frees.
 */
static redisReply *script_eval_n(struct rs *r, const struct rkeys *k, int nkeys,
                                 const struct sargs *a)
{
	const char *argv[MAX_ARGS + 8];
	const char *keys[4] = { k->list, k->bmeta, k->daily, k->dmeta };
	char nk[4];
	int argc = 0;
	redisReply *rep;

	snprintf(nk, sizeof(nk), "%d", nkeys);
	argv[argc++] = "EVALSHA";
	argv[argc++] = r->sha;
	argv[argc++] = nk;
	for (int i = 0; i < nkeys; i++)
		argv[argc++] = keys[i];
	for (int i = 0; i < a->n; i++)
		argv[argc++] = a->argv[i];
	rep = redisCommandArgv(r->c, argc, argv, NULL);
	cr_assert_not_null(rep, "EVALSHA: %s", r->c->errstr);
	if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
		freeReplyObject(rep);
		argv[0] = "EVAL";
		argv[1] = limiter_lua;
		rep = redisCommandArgv(r->c, argc, argv, NULL);
		cr_assert_not_null(rep, "EVAL: %s", r->c->errstr);
	}
	return rep;
}

static redisReply *script_eval(struct rs *r, const struct rkeys *k, const struct sargs *a)
{
	return script_eval_n(r, k, 4, a);
}

/* The reply array, by index (see limiter.lua's head comment). */
enum lr_field {
	LR_GRANTED,
	LR_SCOPE,
	LR_EARLIEST_IN,
	LR_NOW,
	LR_N,
	LR_W,
	LR_GUARD,
	LR_D,
	LR_DAILY_USED,
	LR_BLK_BURST,
	LR_BLK_DAILY,
	LR_HL_B_REM,
	LR_HL_B_UNTIL,
	LR_HL_D_REM,
	LR_HL_D_UNTIL,
	LR_N_FIELDS, /* the ring, oldest first, follows */
};

struct lreply {
	int64_t f[LR_N_FIELDS];
	int64_t *ring;
	size_t n_ring;
};

static void lreply_free(struct lreply *l)
{
	free(l->ring);
	memset(l, 0, sizeof(*l));
}

/*
 * Parse and sanity-check a script reply: at least LR_N_FIELDS integers, a known scope that is 0
 * exactly when earliest_in_ms is, a ring of at most N entries, oldest first. 0, or -1 with err.
 */
static int lreply_parse(const redisReply *rep, struct lreply *l, char *err, size_t errlen)
{
	memset(l, 0, sizeof(*l));
	if (rep->type == REDIS_REPLY_ERROR) {
		snprintf(err, errlen, "error reply: %s", rep->str);
		return -1;
	}
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements < LR_N_FIELDS) {
		snprintf(err, errlen, "not an array of at least %d (type %d)", LR_N_FIELDS,
		         rep->type);
		return -1;
	}
	for (size_t i = 0; i < rep->elements; i++) {
		if (rep->element[i]->type != REDIS_REPLY_INTEGER) {
			snprintf(err, errlen, "element %zu is not an integer", i);
			return -1;
		}
	}
	for (int i = 0; i < LR_N_FIELDS; i++)
		l->f[i] = rep->element[i]->integer;
	l->n_ring = rep->elements - LR_N_FIELDS;
	l->ring = calloc(l->n_ring ? l->n_ring : 1, sizeof(*l->ring));
	cr_assert_not_null(l->ring);
	for (size_t i = 0; i < l->n_ring; i++) {
		l->ring[i] = rep->element[LR_N_FIELDS + i]->integer;
		if (i > 0 && l->ring[i] < l->ring[i - 1]) {
			snprintf(err, errlen, "ring not oldest first at %zu", i);
			lreply_free(l);
			return -1;
		}
	}
	if (l->f[LR_SCOPE] < WINDOW_OK || l->f[LR_SCOPE] > WINDOW_BLOCKED_DAY ||
	    (l->f[LR_SCOPE] == WINDOW_OK) != (l->f[LR_EARLIEST_IN] == 0) ||
	    l->f[LR_EARLIEST_IN] < 0) {
		snprintf(err, errlen, "scope %" PRId64 " with earliest_in_ms %" PRId64,
		         l->f[LR_SCOPE], l->f[LR_EARLIEST_IN]);
		lreply_free(l);
		return -1;
	}
	if (l->n_ring > (uint64_t)l->f[LR_N]) {
		snprintf(err, errlen, "ring of %zu with N %" PRId64, l->n_ring, l->f[LR_N]);
		lreply_free(l);
		return -1;
	}
	return 0;
}

/* A script time as window.c sees it: the script's "never" is INT64_MAX. */
static int64_t from_script_ms(int64_t t)
{
	return t >= NEVER_MS ? INT64_MAX : t;
}

/* The absolute earliest time of a reply. */
static int64_t lreply_earliest(const struct lreply *l)
{
	return from_script_ms(l->f[LR_NOW] + l->f[LR_EARLIEST_IN]);
}

static int64_t sat_sub(int64_t a, int64_t b)
{
	int64_t d;

	if (__builtin_sub_overflow(a, b, &d))
		return b < 0 ? INT64_MAX : INT64_MIN;
	return d;
}

/* Burst admissions counted at now in a reply: ring entries in (now - W - guard, now]. */
static uint64_t lreply_burst_used(const struct lreply *l)
{
	uint64_t span = (uint64_t)l->f[LR_W] + (uint64_t)l->f[LR_GUARD], n = 0;
	int64_t now = l->f[LR_NOW];

	for (size_t i = 0; i < l->n_ring; i++)
		if (l->ring[i] > now || (uint64_t)now - (uint64_t)l->ring[i] < span)
			n++;
	return n;
}

/* Nothing counts and no block or HighLevel state is in force (window.c's *_is_idle). */
static bool lreply_idle(const struct lreply *l)
{
	return lreply_burst_used(l) == 0 && l->f[LR_DAILY_USED] == 0 && l->f[LR_BLK_BURST] == -1 &&
	       l->f[LR_BLK_DAILY] == -1 && l->f[LR_HL_B_REM] == -1 && l->f[LR_HL_D_REM] == -1;
}

/* ------------------------------------------------------------------ script operations */

struct cfg {
	uint32_t n, w, guard, d;
};

static void sa_common(struct sargs *a, const char *op, int64_t now, const struct cfg *c)
{
	a->n = 0;
	sa_str(a, op);
	sa_i64(a, now);
	sa_i64(a, c->n);
	sa_i64(a, c->w);
	sa_i64(a, c->guard);
	sa_i64(a, c->d);
}

/* Run one script call and parse its reply. 0, or -1 with err. */
static int call_parse(struct rs *r, const struct rkeys *k, const struct sargs *a,
                      struct lreply *out, char *err, size_t errlen)
{
	redisReply *rep = script_eval(r, k, a);
	int rc = lreply_parse(rep, out, err, errlen);

	freeReplyObject(rep);
	return rc;
}

static int s_admit(struct rs *r, const struct rkeys *k, const struct cfg *c, int64_t now,
                   int64_t want, struct lreply *out, char *err, size_t errlen)
{
	struct sargs a;

	sa_common(&a, "admit", now, c);
	sa_i64(&a, want);
	return call_parse(r, k, &a, out, err, errlen);
}

static int s_state(struct rs *r, const struct rkeys *k, const struct cfg *c, int64_t now,
                   struct lreply *out, char *err, size_t errlen)
{
	struct sargs a;

	sa_common(&a, "state", now, c);
	return call_parse(r, k, &a, out, err, errlen);
}

/* feedback's arguments (fb_none(): all absent). Text, so that huge header values pass as such. */
struct fb {
	const char *learned_n, *learned_w, *learned_d, *remaining, *uncertain, *valid_ms,
	        *daily_remaining, *daily_reset_in_ms, *block_burst_ms, *block_daily_ms;
};

/* feedback with nothing to say: every field "none". */
static struct fb fb_none(void)
{
	return (struct fb){ .learned_n = "0",
		            .learned_w = "0",
		            .learned_d = "0",
		            .remaining = "-1",
		            .uncertain = "0",
		            .valid_ms = "0",
		            .daily_remaining = "-1",
		            .daily_reset_in_ms = "-1",
		            .block_burst_ms = "0",
		            .block_daily_ms = "0" };
}

static void sa_feedback(struct sargs *a, const struct fb *f)
{
	sa_str(a, f->learned_n);
	sa_str(a, f->learned_w);
	sa_str(a, f->learned_d);
	sa_str(a, f->remaining);
	sa_str(a, f->uncertain);
	sa_str(a, f->valid_ms);
	sa_str(a, f->daily_remaining);
	sa_str(a, f->daily_reset_in_ms);
	sa_str(a, f->block_burst_ms);
	sa_str(a, f->block_daily_ms);
}

static int s_feedback(struct rs *r, const struct rkeys *k, const struct cfg *c, int64_t now,
                      const struct fb *f, struct lreply *out, char *err, size_t errlen)
{
	struct sargs a;

	sa_common(&a, "feedback", now, c);
	sa_feedback(&a, f);
	return call_parse(r, k, &a, out, err, errlen);
}

/* ------------------------------------------------------------------ window.c mirrors */

struct bucket {
	int64_t idx;
	uint32_t count;
};

struct mirror {
	struct burst_window b;
	struct daily_window d;
};

static int bucket_cmp(const void *x, const void *y)
{
	const struct bucket *a = x, *b = y;

	return (a->idx > b->idx) - (a->idx < b->idx);
}

/* The bucket fields of the daily hash (not tot/lo/hi), sorted. Caller frees. */
static struct bucket *read_buckets(struct rs *r, const struct rkeys *k, size_t *n)
{
	redisReply *rep = rcmd(r, "HGETALL", k->daily, NULL);
	struct bucket *b;

	cr_assert_eq(rep->type, REDIS_REPLY_ARRAY);
	b = calloc(rep->elements / 2 + 1, sizeof(*b));
	cr_assert_not_null(b);
	*n = 0;
	for (size_t i = 0; i + 1 < rep->elements; i += 2) {
		const char *f = rep->element[i]->str, *v = rep->element[i + 1]->str;

		if (!strcmp(f, "tot") || !strcmp(f, "lo") || !strcmp(f, "hi"))
			continue;
		b[*n].idx = strtoll(f, NULL, 10);
		b[*n].count = (uint32_t)strtoul(v, NULL, 10);
		(*n)++;
	}
	freeReplyObject(rep);
	qsort(b, *n, sizeof(*b), bucket_cmp);
	return b;
}

/*
 * window.c rebuilt from a state reply, as the proxy does: the ring recorded oldest first, then
 * HighLevel's budgets and the blocks; the day's count all at now (conservative: those buckets
 * stop counting last) when `buckets` is NULL, else each bucket at its own time (exact).
 * Recording spends HighLevel's budgets, so they are set after it.
 */
static void mirror_build(struct mirror *m, const struct lreply *l, const struct bucket *buckets,
                         size_t n_buckets)
{
	int64_t now = l->f[LR_NOW];

	burst_init(&m->b, (uint32_t)l->f[LR_N], (uint32_t)l->f[LR_W], (uint32_t)l->f[LR_GUARD]);
	daily_init(&m->d, (uint32_t)l->f[LR_D]);
	for (size_t i = 0; i < l->n_ring; i++)
		cr_assert_eq(burst_record(&m->b, l->ring[i]), 0);
	if (buckets) {
		for (size_t i = 0; i < n_buckets; i++)
			cr_assert_eq(daily_record(&m->d, buckets[i].idx * WINDOW_BUCKET_MS,
			                          buckets[i].count),
			             0);
	} else {
		cr_assert_eq(daily_record(&m->d, now, (uint32_t)l->f[LR_DAILY_USED]), 0);
	}
	if (l->f[LR_HL_B_REM] >= 0)
		(void)burst_reconcile(&m->b, now, l->f[LR_HL_B_REM], 0,
		                      sat_sub(from_script_ms(l->f[LR_HL_B_UNTIL]), now));
	if (l->f[LR_HL_D_REM] >= 0)
		(void)daily_reconcile(&m->d, now, l->f[LR_HL_D_REM],
		                      sat_sub(from_script_ms(l->f[LR_HL_D_UNTIL]), now), 0);
	if (l->f[LR_BLK_BURST] != -1)
		burst_block(&m->b, from_script_ms(l->f[LR_BLK_BURST]));
	if (l->f[LR_BLK_DAILY] != -1)
		daily_block(&m->d, from_script_ms(l->f[LR_BLK_DAILY]));
}

static void mirror_free(struct mirror *m)
{
	burst_deinit(&m->b);
	daily_deinit(&m->d);
}

/* ------------------------------------------------------------------ vector runner */

/* Vectors whose clock the script cannot hold (|t| > 2^53 - 1); any other skip is a failure. */
static const char *const out_of_range_ok[] = { "huge-clock-saturates", "huge-negative-clock" };

struct vrun {
	struct rs *rs;
	const char *path;
	int line;
	char name[128];
	bool in_vector, failed, has_steps, quiet;
	char first_error[1024];
	struct cfg cfg;
	struct rkeys k, shadow;
	/* counts */
	int n_vectors, n_failed, n_skipped, n_steps, n_ignored;
	int n_slot, n_slot_proxy_exact, n_slot_proxy_later;
};

static void vfail(struct vrun *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void vfail(struct vrun *v, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!v->quiet)
		cr_log_error("%s:%d: vector %s: %s", v->path, v->line,
		             v->in_vector ? v->name : "(none)", msg);
	else if (!v->first_error[0])
		snprintf(v->first_error, sizeof(v->first_error), "%s:%d: vector %s: %s", v->path,
		         v->line, v->in_vector ? v->name : "(none)", msg);
	if (!v->failed || !v->in_vector)
		v->n_failed++;
	v->failed = true;
}

static bool parse_i64(const char *s, int64_t *out)
{
	char *end;
	long long x;

	if (!*s || (*s != '-' && (*s < '0' || *s > '9')))
		return false;
	errno = 0;
	x = strtoll(s, &end, 10);
	if (errno || *end)
		return false;
	*out = x;
	return true;
}

static bool parse_u32(const char *s, uint32_t *out)
{
	int64_t x;

	if (!parse_i64(s, &x) || x < 0 || x > UINT32_MAX)
		return false;
	*out = (uint32_t)x;
	return true;
}

static const char *opt_value(const char *tok, const char *key)
{
	size_t n = strlen(key);

	return strncmp(tok, key, n) == 0 && tok[n] == '=' ? tok + n + 1 : NULL;
}

static const char *const scope_names[] = { "admit", "burst", "daily", "blocked", "blocked-day" };

static const char *scope_name(int64_t s)
{
	return s >= 0 && s <= WINDOW_BLOCKED_DAY ? scope_names[s] : "?";
}

static bool parse_scope(const char *s, int64_t *out)
{
	for (int i = WINDOW_BURST; i <= WINDOW_BLOCKED_DAY; i++) {
		if (strcmp(s, scope_names[i]) == 0) {
			*out = i;
			return true;
		}
	}
	return false;
}

static bool v_state(struct vrun *v, int64_t now, struct lreply *l);

/*
 * After every step: memory stays bounded (the list at most N long, the bucket hash at most 289
 * buckets plus tot/lo/hi), and every key carries a TTL; it is then given an hour, so that real
 * time never expires a key in the middle of a virtual-clock vector, however slow the run.
 */
static void check_keys(struct vrun *v, int64_t now)
{
	redisReply *keys;
	struct lreply l;
	long long len;
	char ttl[24];

	if (!v_state(v, now, &l))
		return;
	len = rint_cmd(v->rs, "LLEN", v->k.list, NULL);
	if (len > l.f[LR_N])
		vfail(v, "the list holds %lld entries, N is %" PRId64, len, l.f[LR_N]);
	lreply_free(&l);
	len = rint_cmd(v->rs, "HLEN", v->k.daily, NULL);
	if (len > WINDOW_N_BUCKETS + 3)
		vfail(v, "the bucket hash holds %lld fields", len);
	keys = rcmd(v->rs, "KEYS", "*", NULL);

	snprintf(ttl, sizeof(ttl), "%d", RUN_TTL_MS);
	cr_assert_eq(keys->type, REDIS_REPLY_ARRAY);
	for (size_t i = 0; i < keys->elements; i++) {
		const char *key = keys->element[i]->str;
		long long pttl = rint_cmd(v->rs, "PTTL", key, NULL);

		if (pttl <= 0)
			vfail(v, "key %s has no TTL (PTTL %lld)", key, pttl);
		(void)rint_cmd(v->rs, "PEXPIRE", key, ttl, NULL);
	}
	freeReplyObject(keys);
}

static bool v_state(struct vrun *v, int64_t now, struct lreply *l)
{
	char err[256];

	if (s_state(v->rs, &v->k, &v->cfg, now, l, err, sizeof(err)) != 0) {
		vfail(v, "state: %s", err);
		return false;
	}
	return true;
}

/*
 * A write's reply must be what a state call then reads back (granted aside): what the reply
 * tells the proxy was written, and the next decision sees it.
 */
static void check_persisted(struct vrun *v, int64_t now, const struct lreply *w)
{
	struct lreply s;

	if (!v_state(v, now, &s))
		return;
	if (memcmp(&w->f[1], &s.f[1], sizeof(w->f) - sizeof(w->f[0])) != 0 ||
	    w->n_ring != s.n_ring || memcmp(w->ring, s.ring, w->n_ring * sizeof(*w->ring)) != 0)
		vfail(v, "the reply differs from the state read back after it");
	lreply_free(&s);
}

static bool v_feedback(struct vrun *v, int64_t now, const struct fb *f)
{
	struct lreply l;
	char err[256];

	if (s_feedback(v->rs, &v->k, &v->cfg, now, f, &l, err, sizeof(err)) != 0) {
		vfail(v, "feedback: %s", err);
		return false;
	}
	check_persisted(v, now, &l);
	lreply_free(&l);
	return true;
}

/* admit want=1 must grant it. */
static void step_try_admit(struct vrun *v, int64_t now)
{
	struct lreply l;
	char err[256];

	if (s_admit(v->rs, &v->k, &v->cfg, now, 1, &l, err, sizeof(err)) != 0) {
		vfail(v, "admit: %s", err);
		return;
	}
	if (l.f[LR_GRANTED] != 1) {
		/* the verdict of the check that refused it is the reply's */
		vfail(v, "expected admit, got wait %s %" PRId64, scope_name(l.f[LR_SCOPE]),
		      lreply_earliest(&l));
	}
	check_persisted(v, now, &l);
	lreply_free(&l);
}

/* admit want=1 must grant nothing, naming scope and the earliest time. */
static void step_try_wait(struct vrun *v, int64_t now, int64_t scope, int64_t t)
{
	struct lreply l;
	char err[256];

	if (s_admit(v->rs, &v->k, &v->cfg, now, 1, &l, err, sizeof(err)) != 0) {
		vfail(v, "admit: %s", err);
		return;
	}
	if (l.f[LR_GRANTED] != 0)
		vfail(v, "expected wait %s %" PRId64 ", got admit", scope_name(scope), t);
	else if (l.f[LR_SCOPE] != scope || lreply_earliest(&l) != t)
		vfail(v, "expected wait %s %" PRId64 ", got %s %" PRId64, scope_name(scope), t,
		      scope_name(l.f[LR_SCOPE]), lreply_earliest(&l));
	check_persisted(v, now, &l);
	lreply_free(&l);
}

static void copy_keys(struct vrun *v, const struct rkeys *from, const struct rkeys *to)
{
	const char *src[4] = { from->list, from->bmeta, from->daily, from->dmeta };
	const char *dst[4] = { to->list, to->bmeta, to->daily, to->dmeta };

	for (int i = 0; i < 4; i++) {
		(void)rint_cmd(v->rs, "DEL", dst[i], NULL);
		(void)rint_cmd(v->rs, "COPY", src[i], dst[i], NULL);
	}
}

static void del_keys(struct vrun *v, const struct rkeys *k)
{
	(void)rint_cmd(v->rs, "DEL", k->list, k->bmeta, k->daily, k->dmeta, NULL);
}

/*
 * admit want=k must grant k; k admissions of want=1 on a copy of the keys must grant each and
 * leave the same state.
 */
static void step_admit_k(struct vrun *v, int64_t now, int64_t k)
{
	struct lreply l, one, sa, sb;
	char err[256];

	copy_keys(v, &v->k, &v->shadow);
	if (s_admit(v->rs, &v->k, &v->cfg, now, k, &l, err, sizeof(err)) != 0) {
		vfail(v, "admit %" PRId64 ": %s", k, err);
		return;
	}
	if (l.f[LR_GRANTED] != k)
		vfail(v, "admit %" PRId64 ": granted %" PRId64 ", then wait %s %" PRId64, k,
		      l.f[LR_GRANTED], scope_name(l.f[LR_SCOPE]), lreply_earliest(&l));
	check_persisted(v, now, &l);
	lreply_free(&l);
	for (int64_t i = 0; i < k && !v->failed; i++) {
		if (s_admit(v->rs, &v->shadow, &v->cfg, now, 1, &one, err, sizeof(err)) != 0) {
			vfail(v, "admit 1 on the copy: %s", err);
			return;
		}
		if (one.f[LR_GRANTED] != 1)
			vfail(v, "one by one: admission %" PRId64 " of %" PRId64 " refused", i + 1,
			      k);
		lreply_free(&one);
	}
	if (v->failed)
		return;
	if (!v_state(v, now, &sa))
		return;
	if (s_state(v->rs, &v->shadow, &v->cfg, now, &sb, err, sizeof(err)) != 0) {
		vfail(v, "state of the copy: %s", err);
		lreply_free(&sa);
		return;
	}
	if (memcmp(sa.f, sb.f, sizeof(sa.f)) != 0 || sa.n_ring != sb.n_ring ||
	    memcmp(sa.ring, sb.ring, sa.n_ring * sizeof(*sa.ring)) != 0)
		vfail(v, "admit %" PRId64 " at once and one by one leave different states", k);
	lreply_free(&sa);
	lreply_free(&sb);
	del_keys(v, &v->shadow);
}

static void step_limits(struct vrun *v, int64_t now, char **tok, int n)
{
	struct fb f = fb_none();
	uint32_t u;

	for (int i = 1; i < n; i++) {
		const char *x;

		if ((x = opt_value(tok[i], "burst")) && parse_u32(x, &u))
			f.learned_n = x;
		else if ((x = opt_value(tok[i], "window")) && parse_u32(x, &u))
			f.learned_w = x;
		else if ((x = opt_value(tok[i], "daily")) && parse_u32(x, &u))
			f.learned_d = x;
		else {
			vfail(v, "bad limits option '%s'", tok[i]);
			return;
		}
	}
	(void)v_feedback(v, now, &f);
}

/* remaining r [uncertain=k] [valid=ms]; valid defaults to W / 4 of the W in force. */
static void step_remaining(struct vrun *v, int64_t now, char **tok, int n)
{
	struct fb f = fb_none();
	struct lreply l;
	char valid[24];
	int64_t x;
	uint32_t u;

	if (!parse_i64(tok[1], &x)) {
		vfail(v, "bad remaining");
		return;
	}
	f.remaining = tok[1];
	if (!v_state(v, now, &l))
		return;
	snprintf(valid, sizeof(valid), "%" PRId64, l.f[LR_W] / 4);
	lreply_free(&l);
	f.valid_ms = valid;
	for (int i = 2; i < n; i++) {
		const char *o;

		if ((o = opt_value(tok[i], "valid")) && parse_i64(o, &x) && x >= 0)
			f.valid_ms = o;
		else if ((o = opt_value(tok[i], "uncertain")) && parse_u32(o, &u))
			f.uncertain = o;
		else {
			vfail(v, "bad remaining option '%s'", tok[i]);
			return;
		}
	}
	(void)v_feedback(v, now, &f);
}

static void step_daily_remaining(struct vrun *v, int64_t now, char **tok, int n)
{
	struct fb f = fb_none();
	int64_t x;
	uint32_t u;

	if (!parse_i64(tok[1], &x)) {
		vfail(v, "bad daily-remaining");
		return;
	}
	f.daily_remaining = tok[1];
	for (int i = 2; i < n; i++) {
		const char *o;

		if ((o = opt_value(tok[i], "reset")) && parse_i64(o, &x) && x >= 0)
			f.daily_reset_in_ms = o;
		else if ((o = opt_value(tok[i], "uncertain")) && parse_u32(o, &u))
			f.uncertain = o;
		else {
			vfail(v, "bad daily-remaining option '%s'", tok[i]);
			return;
		}
	}
	(void)v_feedback(v, now, &f);
}

/* block burst|daily until=t: feedback with block_*_ms = t - now (<= 0: none, as a block that
 * has already ended). */
static void step_block(struct vrun *v, int64_t now, char **tok)
{
	struct fb f = fb_none();
	const char *o = opt_value(tok[2], "until");
	char ms[24];
	int64_t t;

	if (!o || !parse_i64(o, &t)) {
		vfail(v, "bad block until");
		return;
	}
	snprintf(ms, sizeof(ms), "%" PRId64, sat_sub(t, now));
	if (strcmp(tok[1], "burst") == 0)
		f.block_burst_ms = ms;
	else if (strcmp(tok[1], "daily") == 0)
		f.block_daily_ms = ms;
	else {
		vfail(v, "bad block scope '%s'", tok[1]);
		return;
	}
	(void)v_feedback(v, now, &f);
}

static void step_used(struct vrun *v, int64_t now, const char *what, int64_t want)
{
	struct lreply l;
	uint64_t got;

	if (!v_state(v, now, &l))
		return;
	if (strcmp(what, "burst") == 0)
		got = lreply_burst_used(&l);
	else if (strcmp(what, "daily") == 0)
		got = (uint64_t)l.f[LR_DAILY_USED];
	else {
		vfail(v, "bad used scope '%s'", what);
		lreply_free(&l);
		return;
	}
	if (got != (uint64_t)want)
		vfail(v, "expected used %s %" PRId64 ", got %" PRIu64, what, want, got);
	lreply_free(&l);
}

static void step_idle(struct vrun *v, int64_t now, const char *want)
{
	struct lreply l;
	bool yes = strcmp(want, "yes") == 0;

	if (!yes && strcmp(want, "no") != 0) {
		vfail(v, "bad idle '%s'", want);
		return;
	}
	if (!v_state(v, now, &l))
		return;
	if (lreply_idle(&l) != yes)
		vfail(v, "expected idle %s", want);
	lreply_free(&l);
}

/*
 * slot k: window.c rebuilt from the state. Exactly (with the bucket hash): the vector's answer.
 * As the proxy will (the day's count at now): never earlier; the same when every counted
 * admission is in now's bucket (then the two mirrors hold the same).
 */
static void step_slot(struct vrun *v, int64_t now, int64_t k, int64_t scope, int64_t t)
{
	struct lreply l;
	struct mirror exact, proxy;
	struct window_verdict ve, vp;
	struct bucket *bk;
	size_t n_bk;
	int64_t now_idx = now / WINDOW_BUCKET_MS - (now % WINDOW_BUCKET_MS < 0);
	bool in_now_bucket = true;

	if (!v_state(v, now, &l))
		return;
	bk = read_buckets(v->rs, &v->k, &n_bk);
	for (size_t i = 0; i < n_bk; i++)
		if (bk[i].idx != now_idx && bk[i].idx > now_idx - WINDOW_N_BUCKETS)
			in_now_bucket = false;
	mirror_build(&exact, &l, bk, n_bk);
	mirror_build(&proxy, &l, NULL, 0);
	v->n_slot++;
	if (daily_used(&exact.d, now) != (uint64_t)l.f[LR_DAILY_USED])
		vfail(v, "the bucket hash counts %" PRIu64 ", the reply %" PRId64,
		      daily_used(&exact.d, now), l.f[LR_DAILY_USED]);
	ve = window_slot(&exact.b, &exact.d, now, (uint64_t)k);
	vp = window_slot(&proxy.b, &proxy.d, now, (uint64_t)k);
	if ((int64_t)ve.scope != scope || ve.earliest_ms != t)
		vfail(v, "expected slot %" PRId64 " %s %" PRId64 ", the state gives %s %" PRId64, k,
		      scope_name(scope), t, scope_name(ve.scope), ve.earliest_ms);
	else if (vp.earliest_ms < t)
		vfail(v, "slot %" PRId64 ": the proxy's mirror gives %" PRId64 ", before %" PRId64,
		      k, vp.earliest_ms, t);
	else if (in_now_bucket && ((int64_t)vp.scope != scope || vp.earliest_ms != t))
		vfail(v, "slot %" PRId64 ": the proxy's mirror gives %s %" PRId64, k,
		      scope_name(vp.scope), vp.earliest_ms);
	else if (vp.earliest_ms == t)
		v->n_slot_proxy_exact++;
	else
		v->n_slot_proxy_later++;
	mirror_free(&exact);
	mirror_free(&proxy);
	free(bk);
	lreply_free(&l);
}

static void run_step(struct vrun *v, int64_t now, char **tok, int n)
{
	const char *op = tok[0];
	int64_t x, t;

	v->n_steps++;
	if (strcmp(op, "try") == 0 && n == 2 && strcmp(tok[1], "admit") == 0) {
		step_try_admit(v, now);
	} else if (strcmp(op, "try") == 0 && n == 4 && strcmp(tok[1], "wait") == 0) {
		if (!parse_scope(tok[2], &x) || !parse_i64(tok[3], &t))
			vfail(v, "bad 'try wait' step");
		else
			step_try_wait(v, now, x, t);
	} else if (strcmp(op, "admit") == 0 && n == 2) {
		if (!parse_i64(tok[1], &x) || x < 1 || x > 1000000)
			vfail(v, "bad admit count");
		else
			step_admit_k(v, now, x);
	} else if (strcmp(op, "limits") == 0) {
		step_limits(v, now, tok, n);
	} else if (strcmp(op, "remaining") == 0 && n >= 2) {
		step_remaining(v, now, tok, n);
	} else if (strcmp(op, "daily-remaining") == 0 && n >= 2) {
		step_daily_remaining(v, now, tok, n);
	} else if (strcmp(op, "block") == 0 && n == 3) {
		step_block(v, now, tok);
	} else if (strcmp(op, "used") == 0 && n == 3) {
		if (!parse_i64(tok[2], &x) || x < 0)
			vfail(v, "bad used count");
		else
			step_used(v, now, tok[1], x);
	} else if (strcmp(op, "idle") == 0 && n == 2) {
		step_idle(v, now, tok[1]);
	} else if (strcmp(op, "slot") == 0 && (n == 3 || n == 4)) {
		int64_t k, scope = WINDOW_OK;

		t = now;
		if (!parse_i64(tok[1], &k) || k < 0 ||
		    (n == 3 ? strcmp(tok[2], "admit") != 0
		            : !parse_scope(tok[2], &scope) || !parse_i64(tok[3], &t)))
			vfail(v, "bad 'slot' step");
		else
			step_slot(v, now, k, scope, t);
	} else if ((strcmp(op, "trim") == 0 && n == 1) || (strcmp(op, "heap") == 0 && n == 2)) {
		v->n_ignored++; /* in-process state only: Redis has no heap, expiry is its trim */
	} else {
		vfail(v, "unknown step '%s' (%d tokens)", op, n);
	}
	if (!v->failed)
		check_keys(v, now);
}

static void run_config(struct vrun *v, char **tok, int n)
{
	struct cfg c = { 100, 10000, 250, 200000 };

	if (v->has_steps) {
		vfail(v, "config after the first step");
		return;
	}
	for (int i = 1; i < n; i++) {
		const char *x;
		uint32_t *dst = NULL;

		if ((x = opt_value(tok[i], "burst")))
			dst = &c.n;
		else if ((x = opt_value(tok[i], "window")))
			dst = &c.w;
		else if ((x = opt_value(tok[i], "guard")))
			dst = &c.guard;
		else if ((x = opt_value(tok[i], "daily")))
			dst = &c.d;
		if (!dst || !parse_u32(x, dst)) {
			vfail(v, "bad config option '%s'", tok[i]);
			return;
		}
	}
	v->cfg = c;
}

static int tokenize(char *line, char **tok)
{
	char *hash = strchr(line, '#'), *save = NULL;
	int n = 0;

	if (hash)
		*hash = '\0';
	for (char *t = strtok_r(line, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
		if (n == MAX_TOKENS)
			return -1;
		tok[n++] = t;
	}
	return n;
}

/*
 * True when some `at` time of the vector starting after line index `from` lies outside the
 * script's range (|t| > 2^53 - 1).
 */
static bool vector_out_of_range(char **lines, size_t n_lines, size_t from)
{
	for (size_t i = from; i < n_lines; i++) {
		char buf[1024], *tok[MAX_TOKENS];
		int64_t t;
		int n;

		snprintf(buf, sizeof(buf), "%s", lines[i]);
		n = tokenize(buf, tok);
		if (n >= 1 && strcmp(tok[0], "end") == 0)
			return false;
		if (n >= 2 && strcmp(tok[0], "at") == 0 && parse_i64(tok[1], &t) &&
		    (t > NEVER_MS || t < -NEVER_MS))
			return true;
	}
	return false;
}

static void start_vector(struct vrun *v, char **tok, int n, char **lines, size_t n_lines,
                         size_t idx)
{
	bool allowed = false;

	if (v->in_vector)
		vfail(v, "vector inside vector %s", v->name);
	if (n != 2 || strlen(tok[1]) >= sizeof(v->name)) {
		vfail(v, "bad vector name");
		return;
	}
	snprintf(v->name, sizeof(v->name), "%s", tok[1]);
	v->in_vector = true;
	v->failed = false;
	v->has_steps = false;
	v->n_vectors++;
	v->cfg = (struct cfg){ 100, 10000, 250, 200000 };
	redisReply *rep = rcmd(v->rs, "FLUSHDB", NULL);
	freeReplyObject(rep);
	if (!vector_out_of_range(lines, n_lines, idx + 1))
		return;
	for (size_t i = 0; i < sizeof(out_of_range_ok) / sizeof(out_of_range_ok[0]); i++)
		allowed |= strcmp(v->name, out_of_range_ok[i]) == 0;
	if (!allowed) {
		vfail(v, "its clock lies outside the script's +-(2^53 - 1) ms");
		return;
	}
	cr_log_info("%s:%d: vector %s skipped: its clock lies outside the script's +-(2^53 - 1) "
	            "ms (tested at that limit by redis_script.numeric_limits)",
	            v->path, v->line, v->name);
	v->n_skipped++;
	v->failed = true; /* skip to its end, without counting it as failed */
}

/* Run a vector file's text (modified in place). */
static void run_text(struct vrun *v, char *text)
{
	size_t n_lines = 0, cap = 64;
	char **lines = malloc(cap * sizeof(*lines));

	cr_assert_not_null(lines);
	for (char *p = text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
		nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		if (n_lines == cap) {
			cap *= 2;
			lines = realloc(lines, cap * sizeof(*lines));
			cr_assert_not_null(lines);
		}
		lines[n_lines++] = p;
	}
	for (size_t i = 0; i < n_lines; i++) {
		char buf[1024], *tok[MAX_TOKENS];
		int n;

		v->line = (int)i + 1;
		if (strlen(lines[i]) >= sizeof(buf)) {
			vfail(v, "line too long");
			continue;
		}
		snprintf(buf, sizeof(buf), "%s", lines[i]);
		n = tokenize(buf, tok);
		if (n < 0) {
			vfail(v, "too many tokens");
			continue;
		}
		if (n == 0)
			continue;
		if (strcmp(tok[0], "vector") == 0) {
			start_vector(v, tok, n, lines, n_lines, i);
			continue;
		}
		if (!v->in_vector) {
			vfail(v, "'%s' outside a vector", tok[0]);
			continue;
		}
		if (strcmp(tok[0], "end") == 0 && n == 1) {
			v->in_vector = false;
			continue;
		}
		if (v->failed)
			continue;
		if (strcmp(tok[0], "config") == 0) {
			run_config(v, tok, n);
		} else if (strcmp(tok[0], "at") == 0 && n >= 3) {
			int64_t now;

			if (!parse_i64(tok[1], &now)) {
				vfail(v, "bad time '%s'", tok[1]);
				continue;
			}
			v->has_steps = true;
			run_step(v, now, tok + 2, n - 2);
		} else {
			vfail(v, "unknown statement '%s'", tok[0]);
		}
	}
	if (v->in_vector)
		vfail(v, "vector %s has no end", v->name);
	free(lines);
}

static void vrun_init(struct vrun *v, struct rs *r, const char *path, bool quiet)
{
	memset(v, 0, sizeof(*v));
	v->rs = r;
	v->path = path;
	v->quiet = quiet;
	rkeys_make(&v->k, "ghlproxy", "vec", "vec");
	rkeys_make(&v->shadow, "ghlproxy", "shadow", "shadow");
}

static char *vec_text(void)
{
	const char *root = getenv("GHLPROXY_SRCDIR");
	char path[4096];
	char *text;

	cr_assert_not_null(root, "GHLPROXY_SRCDIR is not set (the meson test sets it)");
	snprintf(path, sizeof(path), "%s/tests/vectors/window.vec", root);
	text = harness_read_file(path, NULL);
	cr_assert_not_null(text, "cannot read %s", path);
	return text;
}

TestSuite(redis_vectors, .fini = harness_cleanup_all, .timeout = 600);

Test(redis_vectors, all_pass)
{
	struct rs r;
	struct vrun *v = malloc(sizeof(*v));
	char *text = vec_text();

	cr_assert_not_null(v);
	rs_start(&r, NULL);
	vrun_init(v, &r, "window.vec", false);
	run_text(v, text);
	cr_log_info("window.vec: %d vectors (%d skipped), %d steps (%d in-process only), %d slot "
	            "steps (proxy mirror: %d exact, %d later)",
	            v->n_vectors, v->n_skipped, v->n_steps, v->n_ignored, v->n_slot,
	            v->n_slot_proxy_exact, v->n_slot_proxy_later);
	int n_vectors = v->n_vectors, n_failed = v->n_failed, n_skipped = v->n_skipped;
	int n_slot = v->n_slot, n_steps = v->n_steps;

	free(v);
	free(text);
	rs_stop(&r);
	cr_expect_geq(n_vectors, 90, "only %d vectors", n_vectors);
	cr_expect_eq(n_skipped, 2, "%d vectors skipped", n_skipped);
	cr_expect_geq(n_slot, 60, "only %d slot steps", n_slot);
	cr_expect_geq(n_steps, 600, "only %d steps", n_steps);
	cr_assert_eq(n_failed, 0, "%d vector(s) failed (see the log above)", n_failed);
}

/* The runner must catch a wrong expectation, and name its line. */
Test(redis_vectors, runner_detects_failures)
{
	static const struct {
		const char *text;
		const char *error;
	} bad[] = {
		{ "vector a\nconfig burst=1 window=1000 guard=0\nat 0 try admit\nat 0 try "
		  "admit\nend\n",
		  "inline:4: vector a: expected admit, got wait burst 1000" },
		{ "vector b\nat 0 try wait burst 5\nend\n",
		  "inline:2: vector b: expected wait burst 5, got admit" },
		{ "vector c\nconfig burst=1 window=1000 guard=0\nat 0 try admit\n"
		  "at 1 try wait daily 1000\nend\n",
		  "inline:4: vector c: expected wait daily 1000, got burst 1000" },
		{ "vector d\nat 0 admit 1\nat 0 used daily 2\nend\n",
		  "inline:3: vector d: expected used daily 2, got 1" },
		{ "vector e\nat 0 admit 2\nat 0 used burst 1\nend\n",
		  "inline:3: vector e: expected used burst 1, got 2" },
		{ "vector f\nconfig burst=2 window=1000 guard=0\nat 0 admit 3\nend\n",
		  "inline:3: vector f: admit 3: granted 2" },
		{ "vector g\nat 0 idle no\nend\n", "inline:2: vector g: expected idle no" },
		{ "vector h\nat 0 admit 1\nat 0 idle yes\nend\n",
		  "inline:3: vector h: expected idle yes" },
		{ "vector i\nconfig burst=1 window=1000 guard=0\nat 0 admit 1\nat 0 slot 0 admit\n"
		  "end\n",
		  "inline:4: vector i: expected slot 0 admit 0, the state gives burst 1000" },
		{ "vector j\nconfig burst=100 window=1000 guard=0 daily=2\nat 0 admit 2\n"
		  "at 300000 slot 0 daily 86700001\nend\n",
		  "inline:4: vector j: expected slot 0 daily 86700001, the state gives daily "
		  "86700000" },
		{ "vector k\nat 0 frobnicate\nend\n", "inline:2: vector k: unknown step" },
		{ "vector l\nat 0 try admit\nconfig burst=1\nend\n",
		  "inline:3: vector l: config after" },
		{ "at 0 try admit\n", "inline:1: vector (none): 'at' outside" },
		{ "vector m\nat 1 remaining 0\nat 2 try wait burst 2500\nend\n",
		  "inline:3: vector m: expected wait burst 2500, got burst 2501" },
		{ "vector n\nat 0 block daily until=100\nat 1 try wait blocked 100\nend\n",
		  "inline:3: vector n: expected wait blocked 100, got blocked-day 100" },
		{ "vector o\nat 9007199254740992 try admit\nend\n",
		  "inline:1: vector o: its clock lies outside" },
	};
	struct rs r;

	rs_start(&r, NULL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct vrun *v = malloc(sizeof(*v));
		char *text = strdup(bad[i].text);

		cr_assert(v && text);
		vrun_init(v, &r, "inline", true);
		run_text(v, text);
		cr_expect_geq(v->n_failed, 1, "case %zu: not detected", i);
		cr_expect(strncmp(v->first_error, bad[i].error, strlen(bad[i].error)) == 0,
		          "case %zu: got \"%s\", want \"%s...\"", i, v->first_error, bad[i].error);
		free(text);
		free(v);
	}
	rs_stop(&r);
}

/* ------------------------------------------------------------------ Redis only */

TestSuite(redis_script, .fini = harness_cleanup_all, .timeout = 300);

static const struct cfg small = { 3, 1000, 100, 10 };

static void must_admit(struct rs *r, const struct rkeys *k, const struct cfg *c, int64_t now,
                       int64_t want, struct lreply *l)
{
	char err[256];

	cr_assert_eq(s_admit(r, k, c, now, want, l, err, sizeof(err)), 0, "admit: %s", err);
}

static void must_state(struct rs *r, const struct rkeys *k, const struct cfg *c, int64_t now,
                       struct lreply *l)
{
	char err[256];

	cr_assert_eq(s_state(r, k, c, now, l, err, sizeof(err)), 0, "state: %s", err);
}

static void must_feedback(struct rs *r, const struct rkeys *k, const struct cfg *c, int64_t now,
                          const struct fb *f, struct lreply *l)
{
	char err[256];

	cr_assert_eq(s_feedback(r, k, c, now, f, l, err, sizeof(err)), 0, "feedback: %s", err);
}

static long long pttl(struct rs *r, const char *key)
{
	return rint_cmd(r, "PTTL", key, NULL);
}

/* The layout documented in limiter.lua, field by field. */
Test(redis_script, reply_layout)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct fb f = fb_none();
	const int64_t want[LR_N_FIELDS] = {
		[LR_GRANTED] = 3,
		[LR_SCOPE] = WINDOW_BURST,
		[LR_EARLIEST_IN] = 1100,
		[LR_NOW] = 1000,
		[LR_N] = 3,
		[LR_W] = 1000,
		[LR_GUARD] = 100,
		[LR_D] = 10,
		[LR_DAILY_USED] = 3,
		[LR_BLK_BURST] = -1,
		[LR_BLK_DAILY] = -1,
		[LR_HL_B_REM] = -1,
		[LR_HL_B_UNTIL] = -1,
		[LR_HL_D_REM] = -1,
		[LR_HL_D_UNTIL] = -1,
	};

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:abc", "loc:abc");
	must_admit(&r, &k, &small, 1000, 5, &l); /* N = 3: 3 of 5 */
	for (int i = 0; i < LR_N_FIELDS; i++)
		cr_expect_eq(l.f[i], want[i], "field %d: %" PRId64 " want %" PRId64, i, l.f[i],
		             want[i]);
	cr_assert_eq(l.n_ring, 3);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(l.ring[i], 1000);
	lreply_free(&l);

	f.remaining = "7";
	f.valid_ms = "400";
	f.daily_remaining = "5";
	f.daily_reset_in_ms = "60000";
	f.block_burst_ms = "5000";
	f.block_daily_ms = "2000";
	f.learned_n = "4";
	f.learned_d = "9";
	must_feedback(&r, &k, &small, 1010, &f, &l);
	cr_expect_eq(l.f[LR_GRANTED], 0);
	cr_expect_eq(l.f[LR_SCOPE], WINDOW_BLOCKED);
	cr_expect_eq(l.f[LR_EARLIEST_IN], 5000);
	cr_expect_eq(l.f[LR_N], 4);
	cr_expect_eq(l.f[LR_D], 9);
	cr_expect_eq(l.f[LR_W], 1000, "W unchanged");
	cr_expect_eq(l.f[LR_BLK_BURST], 6010);
	cr_expect_eq(l.f[LR_BLK_DAILY], 3010);
	cr_expect_eq(l.f[LR_HL_B_REM], 7);
	cr_expect_eq(l.f[LR_HL_B_UNTIL], 1410);
	cr_expect_eq(l.f[LR_HL_D_REM], 5);
	cr_expect_eq(l.f[LR_HL_D_UNTIL], 61010);
	lreply_free(&l);

	/* after the blocks: one more (N = 4 now), spending both budgets. The three at 1000 no
	 * longer count (1000 <= 6010 - W - guard): they are neither replied nor kept. */
	must_admit(&r, &k, &small, 6010, 1, &l);
	cr_expect_eq(l.f[LR_GRANTED], 1);
	cr_expect_eq(l.f[LR_HL_B_REM], -1, "the burst budget ended at 1410");
	cr_expect_eq(l.f[LR_HL_D_REM], 4);
	cr_expect_eq(l.f[LR_DAILY_USED], 4);
	cr_assert_eq(l.n_ring, 1);
	cr_expect_eq(l.ring[0], 6010);
	lreply_free(&l);
	cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 1);

	/* two more within the window: the ring, oldest first */
	must_admit(&r, &k, &small, 6500, 1, &l);
	lreply_free(&l);
	must_admit(&r, &k, &small, 6600, 1, &l);
	cr_assert_eq(l.n_ring, 3);
	cr_expect_eq(l.ring[0], 6010);
	cr_expect_eq(l.ring[1], 6500);
	cr_expect_eq(l.ring[2], 6600);
	lreply_free(&l);

	/* state changes nothing */
	must_state(&r, &k, &small, 6600, &l);
	cr_expect_eq(l.f[LR_GRANTED], 0);
	cr_expect_eq(l.f[LR_DAILY_USED], 6);
	cr_expect_eq(l.n_ring, 3);
	lreply_free(&l);
	/* nor does a later one, whose reply leaves out what stopped counting */
	must_state(&r, &k, &small, 7650, &l); /* 6500 <= 7650 - 1100 < 6600 */
	cr_expect_eq(l.f[LR_DAILY_USED], 6);
	cr_expect_eq(l.n_ring, 1);
	cr_expect_eq(l.ring[0], 6600);
	lreply_free(&l);
	cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 3);
	rs_stop(&r);
}

/* Every key a write leaves carries a TTL, of the documented length. */
Test(redis_script, ttl_on_every_key)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct fb f = fb_none();
	const struct cfg c = { 10, 1000, 100, 1000 };
	const long long burst_ttl = (1000 + 100) * 2 + 1000;

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:ttl", "loc:ttl:pit:1");
	must_admit(&r, &k, &c, 0, 2, &l);
	lreply_free(&l);
	cr_expect(pttl(&r, k.list) > burst_ttl - 1000 && pttl(&r, k.list) <= burst_ttl);
	cr_expect(pttl(&r, k.daily) > 86700000 - 1000 && pttl(&r, k.daily) <= 86700000);
	cr_expect_eq(pttl(&r, k.bmeta), -2, "no burst meta yet");
	cr_expect_eq(pttl(&r, k.dmeta), -2, "no daily meta yet");

	/* feedback: blocks longer than the defaults keep their meta (and pair) alive */
	f.learned_n = "5";
	f.learned_d = "900";
	f.block_burst_ms = "60000";
	f.block_daily_ms = "172800000"; /* two days */
	must_feedback(&r, &k, &c, 10, &f, &l);
	lreply_free(&l);
	cr_expect(pttl(&r, k.list) > 59000 && pttl(&r, k.list) <= 60000, "%lld", pttl(&r, k.list));
	cr_expect(pttl(&r, k.bmeta) > 59000 && pttl(&r, k.bmeta) <= 60000);
	cr_expect(pttl(&r, k.daily) > 172799000 && pttl(&r, k.daily) <= 172800000);
	cr_expect(pttl(&r, k.dmeta) > 172799000 && pttl(&r, k.dmeta) <= 172800000);

	/* budgets alone, on fresh keys */
	rkeys_make(&k, "ghlproxy", "loc:ttl2", "loc:ttl2");
	f = fb_none();
	f.remaining = "3";
	f.valid_ms = "30000";
	f.daily_remaining = "3";
	f.daily_reset_in_ms = "100000000";
	must_feedback(&r, &k, &c, 0, &f, &l);
	lreply_free(&l);
	cr_expect(pttl(&r, k.bmeta) > 29000 && pttl(&r, k.bmeta) <= 30000);
	cr_expect(pttl(&r, k.dmeta) > 99999000 && pttl(&r, k.dmeta) <= 100000000);

	/* merge, and a clock that went back (the newest entry ahead of now) */
	rkeys_make(&k, "ghlproxy", "loc:ttl3", "loc:ttl3");
	{
		struct sargs a;
		char err[256];

		sa_common(&a, "merge", 1000, &c);
		sa_i64(&a, 2);
		sa_i64(&a, 500);
		sa_i64(&a, 11000);
		cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
		lreply_free(&l);
	}
	cr_expect(pttl(&r, k.list) > burst_ttl + 10000 - 1000 &&
	          pttl(&r, k.list) <= burst_ttl + 10000);
	cr_expect(pttl(&r, k.daily) > 86700000 - 1000);

	/* nothing without a TTL, anywhere */
	redisReply *keys = rcmd(&r, "KEYS", "*", NULL);

	cr_assert_geq(keys->elements, 7);
	for (size_t i = 0; i < keys->elements; i++)
		cr_expect_gt(pttl(&r, keys->element[i]->str), 0, "%s", keys->element[i]->str);
	freeReplyObject(keys);
	rs_stop(&r);
}

/* An idle key disappears by itself: the burst pair after (W + guard) * 2 + 1 s, in real time.
 * Polls for at most 3 s (the one test that waits on the wall clock: Redis expiry is real). */
Test(redis_script, idle_keys_expire)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct fb f = fb_none();
	struct sargs a;
	char err[256];
	const struct cfg c = { 5, 50, 0, 1000 }; /* burst TTL (50 + 0) * 2 + 1000 = 1100 ms */
	int64_t t0;

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:idle", "loc:idle");
	/* on Redis TIME (now = ""), as in production */
	sa_common(&a, "admit", 0, &c);
	a.argv[1] = "";
	sa_i64(&a, 2);
	cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(l.f[LR_GRANTED], 2);
	lreply_free(&l);
	f.remaining = "1";
	f.valid_ms = "100";
	sa_common(&a, "feedback", 0, &c);
	a.argv[1] = "";
	sa_feedback(&a, &f);
	cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(l.f[LR_HL_B_REM], 1);
	lreply_free(&l);
	cr_expect_eq(rint_cmd(&r, "EXISTS", k.list, k.bmeta, NULL), 2);
	cr_expect_leq(pttl(&r, k.list), 1100);
	t0 = harness_now_ms();
	while (rint_cmd(&r, "EXISTS", k.list, k.bmeta, NULL) > 0 && harness_now_ms() - t0 < 3000) {
		struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	cr_expect_eq(rint_cmd(&r, "EXISTS", k.list, k.bmeta, NULL), 0,
	             "the burst pair outlived its TTL");
	cr_expect_eq(rint_cmd(&r, "EXISTS", k.daily, NULL), 1, "the day still counts");
	cr_expect_gt(pttl(&r, k.daily), 86700000 - 5000);
	rs_stop(&r);
}

/* "cmdstat_<name>:calls=N," from INFO commandstats (the script's own commands count), or 0. */
static long long cmd_calls(struct rs *r, const char *name)
{
	redisReply *rep = rcmd(r, "INFO", "commandstats", NULL);
	char needle[64];
	const char *p;
	long long n = 0;

	snprintf(needle, sizeof(needle), "cmdstat_%s:calls=", name);
	cr_assert_eq(rep->type, REDIS_REPLY_STRING);
	p = strstr(rep->str, needle);
	if (p)
		n = strtoll(p + strlen(needle), NULL, 10);
	freeReplyObject(rep);
	return n;
}

/*
 * An admission sets TTLs only when it holds something the last ones may not cover (the first
 * entry of an epoch of W + guard, a new newest bucket), yet every key always outlives what it
 * holds. On Redis TIME, as in production, for about 1.5 s of admissions 25 ms apart across
 * several epochs: after each, the list and burst meta expire no sooner than the newest entry
 * stops counting, the buckets no sooner than the newest bucket does (PEXPIRETIME, absolute, in
 * the clock of the reply's now); and PEXPIRE ran exactly twice per epoch and per bucket started.
 */
Test(redis_script, admissions_set_ttls_only_when_needed)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct sargs a;
	char err[256];
	const struct cfg c = { 1000, 150, 50, 1000000 }; /* S = 200 ms, N not binding */
	const int64_t span = 150 + 50, bucket_ms = 300000;
	int64_t last_epoch = INT64_MIN, last_bucket = INT64_MIN;
	long long epochs = 0, buckets = 0, pexpire0;
	int calls = 0;

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:lazy", "loc:lazy");
	pexpire0 = cmd_calls(&r, "pexpire");
	for (int64_t t0 = harness_now_ms(); harness_now_ms() - t0 < 1500 && calls < 200; calls++) {
		struct timespec ts = { .tv_nsec = 25 * 1000 * 1000 };
		int64_t newest, epoch, bucket;

		sa_common(&a, "admit", 0, &c);
		a.argv[1] = ""; /* Redis TIME */
		sa_i64(&a, 1);
		cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(l.f[LR_GRANTED], 1);
		cr_assert_gt(l.n_ring, 0);
		newest = l.ring[l.n_ring - 1];
		epoch = newest / span;
		bucket = newest / bucket_ms;
		epochs += epoch != last_epoch;
		buckets += bucket != last_bucket;
		last_epoch = epoch;
		last_bucket = bucket;
		cr_expect_geq(rint_cmd(&r, "PEXPIRETIME", k.list, NULL), newest + span,
		              "call %d: the list expires before its newest entry stops counting",
		              calls);
		cr_expect_geq(
		        rint_cmd(&r, "PEXPIRETIME", k.daily, NULL), (bucket + 289) * bucket_ms,
		        "call %d: the buckets expire before the newest one stops counting", calls);
		lreply_free(&l);
		nanosleep(&ts, NULL);
	}
	cr_assert_geq(epochs, 4, "the run crossed %lld epochs only", epochs);
	cr_expect_eq(cmd_calls(&r, "pexpire") - pexpire0, 2 * epochs + 2 * buckets,
	             "%d admissions, %lld epochs, %lld buckets", calls, epochs, buckets);
	cr_expect_lt(2 * epochs + 2 * buckets, 4LL * calls, "TTLs were set on most calls");
	rs_stop(&r);
}

/* 10,000 admissions over 333 buckets: at most N list entries (here 1: each admission comes
 * after the previous one stopped counting), 289 buckets + tot/lo/hi. */
Test(redis_script, memory_bounded)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	const struct cfg c = { 100, 1000, 0, 1000000 };
	const int64_t step_ms = 10000, n = 10000;
	int64_t counted = 0, last = (n - 1) * step_ms;

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:mem", "loc:mem");
	for (int64_t i = 0; i < n; i++) {
		must_admit(&r, &k, &c, i * step_ms, 1, &l);
		cr_assert_eq(l.f[LR_GRANTED], 1, "admission %" PRId64, i);
		lreply_free(&l);
		if (i % 1000 == 999) {
			cr_assert_leq(rint_cmd(&r, "LLEN", k.list, NULL), 100);
			cr_assert_leq(rint_cmd(&r, "HLEN", k.daily, NULL), WINDOW_N_BUCKETS + 3);
		}
	}
	cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 1);
	cr_expect_eq(rint_cmd(&r, "HLEN", k.daily, NULL), WINDOW_N_BUCKETS + 3);
	for (int64_t i = 0; i < n; i++)
		counted +=
		        i * step_ms / WINDOW_BUCKET_MS > last / WINDOW_BUCKET_MS - WINDOW_N_BUCKETS;
	must_state(&r, &k, &c, last, &l);
	cr_expect_eq(l.f[LR_DAILY_USED], counted, "%" PRId64 " vs %" PRId64, l.f[LR_DAILY_USED],
	             counted);
	cr_expect_eq(l.n_ring, 1);
	lreply_free(&l);

	/* a huge want at one instant: N granted, the list still N long */
	rkeys_make(&k, "ghlproxy", "loc:mem2", "loc:mem2");
	must_admit(&r, &k, &c, 0, 1000000, &l);
	cr_expect_eq(l.f[LR_GRANTED], 100);
	lreply_free(&l);
	cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 100);

	/* W + guard = 0: an admission stops counting at once, and nothing is kept */
	const struct cfg z = { 100, 0, 0, 1000000 };

	rkeys_make(&k, "ghlproxy", "loc:mem3", "loc:mem3");
	for (int64_t i = 0; i < 5; i++) {
		must_admit(&r, &k, &z, 1000 + i, 3, &l);
		cr_expect_eq(l.f[LR_GRANTED], 3);
		cr_expect_eq(l.n_ring, 0);
		lreply_free(&l);
		cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 0, "admission %" PRId64, i);
	}
	rs_stop(&r);
}

/* Bad arguments give error replies and write nothing. */
Test(redis_script, bad_arguments)
{
	static const struct {
		int nkeys;
		const char *args[20];
		const char *error; /* the start of the message */
	} cases[] = {
		{ 4, { NULL }, "ERR limiter.lua: unknown operation" },
		{ 4,
		  { "frob", "0", "3", "1000", "100", "10", NULL },
		  "ERR limiter.lua: unknown operation" },
		{ 3,
		  { "state", "0", "3", "1000", "100", "10", NULL },
		  "ERR limiter.lua: 4 keys expected" },
		{ 4,
		  { "admit", "0", "3", "1000", "100", "10", NULL },
		  "ERR limiter.lua: admit takes 7 arguments" },
		{ 4,
		  { "state", "0", "3", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: state takes 6 arguments" },
		{ 4,
		  { "admit", "abc", "3", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: now must be" },
		{ 4,
		  { "admit", "1.5", "3", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: now must be" },
		{ 4,
		  { "admit", "9007199254740992", "3", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: now must be" },
		{ 4,
		  { "admit", "-9223372036854775808", "3", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: now must be" },
		{ 4,
		  { "admit", "0", "-1", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: N " },
		{ 4,
		  { "admit", "0", "4294967296", "1000", "100", "10", "1", NULL },
		  "ERR limiter.lua: N " },
		{ 4, { "admit", "0", "3", "1e3", "100", "10", "1", NULL }, "ERR limiter.lua: W " },
		{ 4,
		  { "admit", "0", "3", "1000", "", "10", "1", NULL },
		  "ERR limiter.lua: guard " },
		{ 4,
		  { "admit", "0", "3", "1000", "100", "0x10", "1", NULL },
		  "ERR limiter.lua: D " },
		{ 4,
		  { "admit", "0", "3", "1000", "100", "10", "-1", NULL },
		  "ERR limiter.lua: want " },
		{ 4,
		  { "admit", "0", "3", "1000", "100", "10", "1000001", NULL },
		  "ERR limiter.lua: want " },
		{ 4,
		  { "feedback", "0", "3", "1000", "100", "10", "0", "0", "0", "x", "0", "0", "-1",
		    "-1", "0", "0", NULL },
		  "ERR limiter.lua: remaining " },
		{ 4,
		  { "feedback", "0", "3", "1000", "100", "10", "0", "0", "0", "1", "-1", "0", "-1",
		    "-1", "0", "0", NULL },
		  "ERR limiter.lua: uncertain " },
		{ 4,
		  { "feedback", "0", "3", "1000", "100", "10", "0", "0", "0", "1", "0", "0", "-1",
		    "-1", "5 ", "0", NULL },
		  "ERR limiter.lua: block_burst_ms " },
		{ 4,
		  { "merge", "0", "3", "1000", "100", "10", NULL },
		  "ERR limiter.lua: merge takes at least 7" },
		{ 4,
		  { "merge", "0", "3", "1000", "100", "10", "1", "100", "-", NULL },
		  "ERR limiter.lua: time " },
	};
	struct rs r;
	struct rkeys k;

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:bad", "loc:bad");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sargs a = { .n = 0 };
		redisReply *rep;

		for (int j = 0; cases[i].args[j]; j++)
			sa_str(&a, cases[i].args[j]);
		rep = script_eval_n(&r, &k, cases[i].nkeys, &a);
		cr_expect_eq(rep->type, REDIS_REPLY_ERROR, "case %zu: not an error", i);
		if (rep->type == REDIS_REPLY_ERROR)
			cr_expect(strncmp(rep->str, cases[i].error, strlen(cases[i].error)) == 0,
			          "case %zu: \"%s\", want \"%s...\"", i, rep->str, cases[i].error);
		freeReplyObject(rep);
		cr_expect_eq(rint_cmd(&r, "DBSIZE", NULL), 0, "case %zu wrote something", i);
	}

	/* A corrupt or foreign key: an error reply, not a crash, and the server lives on. */
	redisReply *rep = rcmd(&r, "RPUSH", k.list, "garbage", NULL);
	struct lreply l;
	char err[256];

	freeReplyObject(rep);
	cr_expect_neq(s_admit(&r, &k, &small, 0, 1, &l, err, sizeof(err)), 0);
	cr_expect(strstr(err,
	                 "ERR limiter.lua: corrupt list entry in ghlproxy:{loc:bad}:b:loc:bad") !=
	                  NULL,
	          "%s", err);
	cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 1, "nothing written");
	/* Entries are checked inline (a number, and an integer), not only the first. */
	const char *bad_entries[] = { "1.5", "nan", "inf", "12abc", "" };
	for (size_t i = 0; i < sizeof(bad_entries) / sizeof(bad_entries[0]); i++) {
		freeReplyObject(rcmd(&r, "DEL", k.list, NULL));
		freeReplyObject(rcmd(&r, "RPUSH", k.list, "1000", bad_entries[i], NULL));
		cr_expect_neq(s_admit(&r, &k, &small, 0, 1, &l, err, sizeof(err)), 0,
		              "entry \"%s\" taken", bad_entries[i]);
		cr_expect(strstr(err, "corrupt list entry") != NULL, "\"%s\": %s", bad_entries[i],
		          err);
		cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 2, "\"%s\": written",
		             bad_entries[i]);
	}
	freeReplyObject(rcmd(&r, "DEL", k.list, NULL));
	rep = rcmd(&r, "SET", k.daily, "x", NULL);
	freeReplyObject(rep);
	rkeys_make(&k, "ghlproxy", "loc:bad", "loc:other");
	cr_expect_neq(s_admit(&r, &k, &small, 0, 1, &l, err, sizeof(err)), 0);
	cr_expect(strstr(err, "WRONGTYPE") != NULL, "%s", err);
	cr_expect_eq(rint_cmd(&r, "EXISTS", k.list, NULL), 0, "nothing written");
	rep = rcmd(&r, "PING", NULL);
	cr_expect_eq(rep->type, REDIS_REPLY_STATUS);
	freeReplyObject(rep);
	rs_stop(&r);
}

/* All four keys of a (daily key, burst key) hash to one cluster slot: the daily key's. */
Test(redis_script, hash_tag_one_slot)
{
	static const char *const pairs[][2] = {
		{ "loc:abc.DEF-1_x", "loc:abc.DEF-1_x:pit:pit-123" },
		{ "loc:xyz", "loc:xyz" }, /* OAuth: the burst key is the daily key */
		{ "co:9", "loc:7:burst" },
	};
	struct rs r;
	char slot[2][24];

	/* CLUSTER KEYSLOT needs a cluster-enabled node (no slots need be assigned). */
	rs_start(&r, "--cluster-enabled yes --cluster-config-file nodes.conf");
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		struct rkeys k;
		const char *names[4];

		rkeys_make(&k, "ghlproxy", pairs[i][0], pairs[i][1]);
		names[0] = k.list;
		names[1] = k.bmeta;
		names[2] = k.daily;
		names[3] = k.dmeta;
		snprintf(slot[0], sizeof(slot[0]), "%lld",
		         rint_cmd(&r, "CLUSTER", "KEYSLOT", pairs[i][0], NULL));
		for (int j = 0; j < 4; j++) {
			snprintf(slot[1], sizeof(slot[1]), "%lld",
			         rint_cmd(&r, "CLUSTER", "KEYSLOT", names[j], NULL));
			cr_expect_str_eq(slot[1], slot[0], "%s", names[j]);
		}
	}
	rs_stop(&r);
}

/* EVALSHA of the embedded script's SHA-1; NOSCRIPT (a restarted or flushed server) -> EVAL. */
Test(redis_script, evalsha_falls_back_to_eval)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	char hex[41];
	redisReply *rep;
	struct sargs a;

	rs_start(&r, NULL);
	cr_assert(EVP_Digest(limiter_lua, sizeof(limiter_lua) - 1, md, &md_len, EVP_sha1(), NULL));
	cr_assert_eq(md_len, 20);
	for (unsigned int i = 0; i < md_len; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	cr_expect_str_eq(r.sha, hex, "the proxy can compute the SHA itself");

	rep = rcmd(&r, "SCRIPT", "FLUSH", NULL);
	freeReplyObject(rep);
	rkeys_make(&k, "ghlproxy", "loc:sha", "loc:sha");
	sa_common(&a, "admit", 0, &small);
	sa_i64(&a, 1);
	{
		const char *argv[] = { "EVALSHA", r.sha, "4", k.list, k.bmeta, k.daily, k.dmeta };
		const char *all[MAX_ARGS];
		int n = 0;

		for (size_t i = 0; i < sizeof(argv) / sizeof(argv[0]); i++)
			all[n++] = argv[i];
		for (int i = 0; i < a.n; i++)
			all[n++] = a.argv[i];
		rep = redisCommandArgv(r.c, n, all, NULL);
		cr_assert_not_null(rep);
		cr_expect_eq(rep->type, REDIS_REPLY_ERROR);
		cr_expect(rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0);
		freeReplyObject(rep);
	}
	must_admit(&r, &k, &small, 0, 1, &l); /* falls back to EVAL, which loads it */
	cr_expect_eq(l.f[LR_GRANTED], 1);
	lreply_free(&l);
	rep = rcmd(&r, "SCRIPT", "EXISTS", r.sha, NULL);
	cr_assert_eq(rep->type, REDIS_REPLY_ARRAY);
	cr_expect_eq(rep->element[0]->integer, 1, "EVAL loaded it: EVALSHA works again");
	freeReplyObject(rep);
	rs_stop(&r);
}

/* now = "": Redis TIME, in ms. */
Test(redis_script, redis_time_is_the_clock)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct sargs a;
	struct timespec ts;
	char err[256];
	int64_t wall_ms;

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:time", "loc:time");
	sa_common(&a, "state", 0, &small);
	a.argv[1] = "";
	cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
	clock_gettime(CLOCK_REALTIME, &ts);
	wall_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	cr_expect(l.f[LR_NOW] > wall_ms - 10000 && l.f[LR_NOW] <= wall_ms + 10,
	          "Redis TIME %" PRId64 " vs %" PRId64, l.f[LR_NOW], wall_ms);
	lreply_free(&l);
	rs_stop(&r);
}

/*
 * merge: times join the list sorted (newest N kept), n_daily is counted in now's bucket, and
 * both spend HighLevel's budgets in force.
 */
Test(redis_script, merge)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct fb f = fb_none();
	struct sargs a;
	char err[256];
	const struct cfg c = { 3, 1000, 0, 100 };

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:merge", "loc:merge");
	must_admit(&r, &k, &c, 1000, 1, &l);
	lreply_free(&l);
	f.remaining = "10";
	f.valid_ms = "10000";
	f.daily_remaining = "10";
	must_feedback(&r, &k, &c, 1000, &f, &l);
	lreply_free(&l);

	sa_common(&a, "merge", 1900, &c);
	sa_i64(&a, 4);
	sa_i64(&a, 1800);
	sa_i64(&a, 500);
	sa_i64(&a, 1500);
	cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(l.n_ring, 3);
	cr_expect_eq(l.ring[0], 1000);
	cr_expect_eq(l.ring[1], 1500);
	cr_expect_eq(l.ring[2], 1800);
	cr_expect_eq(l.f[LR_DAILY_USED], 5);
	cr_expect_eq(l.f[LR_HL_B_REM], 7);
	cr_expect_eq(l.f[LR_HL_D_REM], 6);
	cr_expect_eq(l.f[LR_SCOPE], WINDOW_BURST);
	cr_expect_eq(l.f[LR_EARLIEST_IN], 100, "the oldest of N, 1000, + W = 2000");
	lreply_free(&l);
	cr_expect_eq(rint_cmd(&r, "LLEN", k.list, NULL), 3);

	/* n_daily alone, no times: the list is untouched */
	sa_common(&a, "merge", 1900, &c);
	sa_i64(&a, 2);
	cr_assert_eq(call_parse(&r, &k, &a, &l, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(l.f[LR_DAILY_USED], 7);
	cr_expect_eq(l.n_ring, 3);
	lreply_free(&l);
	rs_stop(&r);
}

/* A clock that went back across buckets counts in the newest bucket (later is the safe side). */
Test(redis_script, clock_back_counts_in_newest_bucket)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	size_t n;
	struct bucket *b;
	const struct cfg c = { 10, 1000, 0, 100 };

	rs_start(&r, NULL);
	rkeys_make(&k, "ghlproxy", "loc:back", "loc:back");
	must_admit(&r, &k, &c, 600000, 1, &l); /* bucket 2 */
	lreply_free(&l);
	must_admit(&r, &k, &c, 0, 1, &l); /* bucket 0, but bucket 2 is newer */
	cr_expect_eq(l.f[LR_GRANTED], 1);
	cr_assert_eq(l.n_ring, 2);
	cr_expect_eq(l.ring[0], 600000);
	cr_expect_eq(l.ring[1], 600000, "the list never goes back either");
	lreply_free(&l);
	b = read_buckets(&r, &k, &n);
	cr_assert_eq(n, 1);
	cr_expect_eq(b[0].idx, 2);
	cr_expect_eq(b[0].count, 2);
	free(b);
	must_state(&r, &k, &c, 291 * WINDOW_BUCKET_MS - 1, &l);
	cr_expect_eq(l.f[LR_DAILY_USED], 2);
	lreply_free(&l);
	must_state(&r, &k, &c, 291 * WINDOW_BUCKET_MS, &l);
	cr_expect_eq(l.f[LR_DAILY_USED], 0);
	lreply_free(&l);
	rs_stop(&r);
}

/*
 * The script's numeric range, as the two vectors it cannot run test window.c's: times saturate
 * at 2^53 - 1 ("never"), huge header values clamp to it, and both ends of the clock work.
 */
Test(redis_script, numeric_limits)
{
	struct rs r;
	struct rkeys k;
	struct lreply l;
	struct fb f = fb_none();
	const struct cfg c = { 1, 1000, 100, 2 };

	rs_start(&r, NULL);
	/* huge-clock-saturates, at the script's limit */
	rkeys_make(&k, "ghlproxy", "loc:max", "loc:max");
	must_admit(&r, &k, &c, NEVER_MS - 800, 1, &l);
	cr_expect_eq(l.f[LR_GRANTED], 1);
	cr_expect_eq(l.f[LR_SCOPE], WINDOW_BURST);
	cr_expect_eq(l.f[LR_NOW] + l.f[LR_EARLIEST_IN], NEVER_MS, "saturated");
	cr_expect_eq(lreply_earliest(&l), INT64_MAX);
	lreply_free(&l);
	must_state(&r, &k, &c, NEVER_MS, &l);
	cr_expect_eq(lreply_burst_used(&l), 1);
	cr_expect_eq(l.f[LR_DAILY_USED], 1);
	lreply_free(&l);

	/* huge-negative-clock, at the script's limit */
	rkeys_make(&k, "ghlproxy", "loc:min", "loc:min");
	must_admit(&r, &k, &c, -NEVER_MS, 1, &l);
	cr_expect_eq(l.f[LR_GRANTED], 1);
	cr_expect_eq(lreply_earliest(&l), -NEVER_MS + 1100);
	lreply_free(&l);
	must_admit(&r, &k, &c, -NEVER_MS + 1100, 1, &l);
	cr_expect_eq(l.f[LR_GRANTED], 1);
	cr_expect_eq(l.f[LR_DAILY_USED], 2);
	{
		/* both in the bucket of -NEVER: it ends 289 buckets after its start */
		int64_t idx = -NEVER_MS / WINDOW_BUCKET_MS - 1;

		cr_expect_eq(l.f[LR_SCOPE], WINDOW_DAILY);
		cr_expect_eq(lreply_earliest(&l), (idx + WINDOW_N_BUCKETS) * WINDOW_BUCKET_MS);
	}
	lreply_free(&l);

	/* header values far beyond 2^53 clamp; sums saturate; no error */
	rkeys_make(&k, "ghlproxy", "loc:hdr", "loc:hdr");
	f.remaining = "9223372036854775807";
	f.uncertain = "4294967295";
	f.valid_ms = "99999999999999999999999999999";
	f.daily_remaining = "0";
	f.daily_reset_in_ms = "9223372036854775807";
	f.block_burst_ms = "9223372036854775807";
	must_feedback(&r, &k, &c, 10, &f, &l);
	cr_expect_eq(l.f[LR_HL_B_REM], NEVER_MS - 4294967295LL);
	cr_expect_eq(l.f[LR_HL_B_UNTIL], NEVER_MS);
	cr_expect_eq(l.f[LR_HL_D_UNTIL], NEVER_MS);
	cr_expect_eq(l.f[LR_BLK_BURST], NEVER_MS);
	cr_expect_eq(l.f[LR_SCOPE], WINDOW_DAILY, "a tie at never: daily names it");
	cr_expect_eq(lreply_earliest(&l), INT64_MAX);
	lreply_free(&l);
	cr_expect_gt(pttl(&r, k.bmeta), 1000LL * HOUR_MS, "kept as long as the block holds");
	rs_stop(&r);
}
