/*
 * limiter_redis.c: admission shared by every proxy of one Redis (limits.backend = redis).
 *
 * One Lua script (limiter.lua) holds the contract in Redis, with Redis TIME as the only clock, so
 * proxies whose clocks disagree decide as one. Per decision, one EVALSHA:
 *
 *   a waiter queued, or the key's wake-up fired ─► limiter_redis_pump
 *     ─► "admit" up to `want` of this proxy's waiters of the key (one call per key at a time)
 *     ─► on_admit: grant the heads; rebuild the key's mirror (window.c structures in this
 *        process's clock) from the reply; answer at once the waiters whose slot behind the
 *        queue is past their deadline; wake up again when the script says the next slot frees
 *        (plus a little jitter, so proxies do not stampede). Waiting never polls Redis.
 *   an upstream answer that taught something (429, limits, less budget) ─► "feedback", so every
 *     proxy's next decision for the key knows it.
 *
 * When Redis cannot be reached (limits.on_redis_down):
 *   local   each key falls back to this process's own windows with its share of N and of what is
 *           left of D (N / live proxies, counted by a heartbeat in Redis, or redis.instances),
 *           after treating its window as full for W + guard (it cannot know what the others
 *           admitted just before).
 *   reject  requests get 503 with Retry-After until Redis is back.
 *
 * Coming back. Proxies notice Redis again at different times (reconnect backoff, heartbeat), and
 * one deciding through Redis while another still decides alone on its share would together
 * exceed N. So the first proxy back sets a common rejoin time in Redis, REJOIN_LAG_MS + W + guard
 * ahead (every proxy notices within REJOIN_LAG_MS); until then every proxy keeps deciding alone
 * and carries each admission over to Redis at once ("merge"); at that Redis-clock instant all
 * switch to shared decisions, with Redis holding what all of them admitted in the last window.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>

#include "classify.h"
#include "config.h"
#include "credentials.h"
#include "limiter_internal.h"
#include "limiter_lua.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit_headers.h"
#include "redis.h"
#include "util.h"

#define HEARTBEAT_MS     1000
#define HEARTBEAT_TTL_MS 5000
#define REJOIN_LAG_MS    7000 /* reconnect backoff (5 s) + heartbeat (1 s) + slack */
#define MAX_WANT         64   /* waiters admitted by one call, at most */
#define WAKE_JITTER_MS   5
#define ARG_MAX_N        24

/* Reply layout of the script: fixed fields, then the ring, oldest first. */
enum {
	R_GRANTED = 0,
	R_SCOPE,
	R_EARLIEST_IN,
	R_NOW,
	R_N,
	R_W,
	R_GUARD,
	R_D,
	R_DAILY_USED,
	R_BLK_BURST,
	R_BLK_DAILY,
	R_HLB_REM,
	R_HLB_UNTIL,
	R_HLD_REM,
	R_HLD_UNTIL,
	R__FIXED,
};

/*
 * Heartbeat: register this proxy (KEYS[1], a sorted set of live proxies), count the live ones,
 * and read (or, coming back from a fallback, set) the common rejoin time (KEYS[2]).
 * ARGV: id, ttl_ms, fell_back (0/1), grace_ms.
 * Returns { live, ms until rejoin (0: now), Redis' now in ms }.
 */
static const char heartbeat_lua[] =
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local ttl = tonumber(ARGV[2])\n"
        "redis.call('ZADD', KEYS[1], now, ARGV[1])\n"
        "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)\n"
        "redis.call('PEXPIRE', KEYS[1], ttl * 2)\n"
        "local live = redis.call('ZCARD', KEYS[1])\n"
        "local ra = tonumber(redis.call('GET', KEYS[2]) or '0') or 0\n"
        "if ra <= now then\n"
        "  ra = 0\n"
        "  if ARGV[3] == '1' then\n"
        "    local grace = tonumber(ARGV[4])\n"
        "    ra = now + grace\n"
        "    redis.call('SET', KEYS[2], ra, 'PX', grace)\n"
        "  end\n"
        "end\n"
        "if ra > now then return { live, ra - now, now } end\n"
        "return { live, 0, now }\n";

struct limiter_redis {
	struct limiter *l;
	struct redis *rc;
	struct redis_script script;
	struct redis_script heartbeat;
	struct event *hb_timer;
	char prefix[64];
	char proxy_id[64];
	char hb_key[96];
	char rejoin_key[96];
	uint32_t instances; /* redis.instances, 0: count live proxies */
	uint32_t live;      /* last heartbeat count */
	bool reject_mode;   /* on_redis_down = reject */
	bool up;            /* shared decisions possible */
	bool fell_back;     /* keys fell back since the last time decisions were shared */
	int64_t rejoin_at;  /* local ms of the common rejoin time, 0: none pending */
	bool known;         /* Redis has been reached, or given up on, once since start */
	int64_t started_ms;
	uint32_t connect_timeout_ms;
	int64_t clock_offset_ms; /* Redis clock - this process's, from the last reply */
	bool have_offset;
};

enum op { OP_ADMIT, OP_FEEDBACK, OP_MERGE, OP_LATE };

struct call {
	struct limiter_redis *r;
	struct lkey *b, *d;
	enum op op;
	uint32_t want;
	int64_t t_sent_ms; /* local ms when the call was sent (admit: the decision is after it) */
	uint64_t merged_from; /* merge: the key's rd_merged_n and rd_fb_daily before it was sent, */
	uint32_t fb_daily;    /* given back if it does not go through */
};

static void fallback_key(struct lkey *k, void *arg);

/* ---- arguments ---- */

struct args {
	const char *v[ARG_MAX_N + 300];
	size_t len[ARG_MAX_N + 300];
	char buf[ARG_MAX_N + 300][24];
	char keys[4][CLASSIFY_KEY_MAX * 2 + 96];
	int n;
};
_Static_assert(sizeof(((struct args *)0)->buf[0]) >= UTIL_I64_LEN, "a number fits an argument");

static void arg_push(struct args *a, const char *s, size_t len)
{
	a->v[a->n] = s;
	a->len[a->n] = len;
	a->n++;
}

static void arg_str(struct args *a, const char *s)
{
	arg_push(a, s, strlen(s));
}

static void arg_num(struct args *a, int64_t x)
{
	arg_push(a, a->buf[a->n], util_fmt_i64(a->buf[a->n], x));
}

/* KEYS[i]: "<prefix>:{<daily key>}:<kind><burst key>", the parts joined without a format string
 * (this runs for every decision). The buffer holds the longest names (CLASSIFY_KEY_MAX each). */
static void arg_key(struct args *a, int i, const char *prefix, const char *dname, const char *kind,
                    const char *bname)
{
	const char *parts[] = { prefix, ":{", dname, "}:", kind, bname };
	char *k = a->keys[i];
	size_t len = 0;

	for (size_t p = 0; p < ARRAY_SIZE(parts); p++) {
		size_t n = strlen(parts[p]);

		n = MIN(n, sizeof(a->keys[i]) - 1 - len);
		memcpy(k + len, parts[p], n);
		len += n;
	}
	k[len] = '\0';
	arg_push(a, k, len);
}

/* KEYS (list, burst meta, daily buckets, daily meta) and the common ARGV (op, now, N, W, guard,
 * D): the configured defaults; Redis' learned values override them. */
static void args_begin(struct args *a, struct limiter_redis *r, const struct lkey *b,
                       const struct lkey *d, const char *op)
{
	struct limiter *l = r->l;

	a->n = 0;
	arg_key(a, 0, r->prefix, d->name, "b:", b->name);
	arg_key(a, 1, r->prefix, d->name, "mb:", b->name);
	arg_key(a, 2, r->prefix, d->name, "d", "");
	arg_key(a, 3, r->prefix, d->name, "md", "");
	arg_str(a, op);
	arg_str(a, ""); /* now: Redis TIME */
	arg_num(a, l->burst);
	arg_num(a, l->window_ms);
	arg_num(a, l->guard_ms);
	arg_num(a, l->daily);
}

/* ---- the mirror ---- */

static int64_t reply_int(const redisReply *rep, size_t i)
{
	if (!rep || rep->type != REDIS_REPLY_ARRAY || i >= rep->elements)
		return -1;
	const redisReply *e = rep->element[i];
	if (e->type == REDIS_REPLY_INTEGER)
		return e->integer;
	if (e->type == REDIS_REPLY_STRING)
		return strtoll(e->str, NULL, 10);
	return -1;
}

/* A Redis-clock time in this process's clock; absent (-1) stays absent. */
static int64_t to_local(const struct limiter_redis *r, int64_t t, int64_t absent)
{
	if (t < 0)
		return absent;
	if (t >= (1LL << 53) - 1)
		return INT64_MAX; /* the script's "never": Lua numbers are doubles */
	return t - r->clock_offset_ms;
}

/*
 * Rebuild the key's windows from a script reply, in this process's clock: the ring entries,
 * blocks and budgets exactly; the daily count as if all of it were in the current bucket (it then
 * frees later than it really does: the safe side for slots ahead).
 */
static bool mirror(struct limiter_redis *r, struct lkey *b, struct lkey *d, const redisReply *rep,
                   int64_t local_now)
{
	struct limiter *l = r->l;

	if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < R__FIXED)
		return false;
	r->clock_offset_ms = reply_int(rep, R_NOW) - local_now;
	r->have_offset = true;

	int64_t n = reply_int(rep, R_N), w = reply_int(rep, R_W), g = reply_int(rep, R_GUARD);
	int64_t dmax = reply_int(rep, R_D), dused = reply_int(rep, R_DAILY_USED);
	if (n < 1 || w < 1 || g < 0 || dmax < 1 || dused < 0)
		return false;

	burst_deinit(&b->burst);
	burst_init(&b->burst, (uint32_t)MIN(n, (int64_t)WINDOW_MAX_BURST), (uint32_t)w,
	           (uint32_t)g);
	for (size_t i = R__FIXED; i < rep->elements; i++)
		burst_record(&b->burst, to_local(r, reply_int(rep, i), local_now));
	b->burst.blocked_until_ms = to_local(r, reply_int(rep, R_BLK_BURST), INT64_MIN);
	b->burst.hl_remaining = reply_int(rep, R_HLB_REM);
	b->burst.hl_until_ms = to_local(r, reply_int(rep, R_HLB_UNTIL), 0);
	b->burst_src = (uint32_t)n != l->burst || (uint32_t)w != l->window_ms ? LIMIT_FROM_UPSTREAM
	                                                                      : LIMIT_FROM_CONFIG;

	daily_deinit(&d->daily);
	daily_init(&d->daily, (uint32_t)MIN(dmax, (int64_t)UINT32_MAX));
	if (dused > 0)
		daily_record(&d->daily, local_now, (uint32_t)MIN(dused, (int64_t)UINT32_MAX));
	d->daily.blocked_until_ms = to_local(r, reply_int(rep, R_BLK_DAILY), INT64_MIN);
	d->daily.hl_remaining = reply_int(rep, R_HLD_REM);
	d->daily.hl_reset_at_ms = to_local(r, reply_int(rep, R_HLD_UNTIL), 0);
	d->daily_src = (uint32_t)dmax != l->daily ? LIMIT_FROM_UPSTREAM : LIMIT_FROM_CONFIG;
	return true;
}

/* ---- calls ---- */

static void call_done(struct call *c)
{
	c->b->rd_calls--;
	if (c->d != c->b)
		c->d->rd_calls--;
	free(c);
}

static struct call *call_new(struct limiter_redis *r, struct lkey *b, struct lkey *d, enum op op)
{
	struct call *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->r = r;
	c->b = b;
	c->d = d;
	c->op = op;
	b->rd_calls++;
	if (d != b)
		d->rd_calls++;
	return c;
}

static void redis_failed(struct limiter_redis *r, struct lkey *b, const char *error)
{
	metrics_inc(M_REDIS_ERRORS);
	log_fields(LOG_WARNING, "redis call failed",
	           (struct log_field[]){ LOG_STR("key", b->name), LOG_STR("error", error) }, 2);
	/* The key decides alone until the next heartbeat finds Redis working again. */
	if (b->mode == LK_SHARED)
		fallback_key(b, r);
}

/* The waiters still queued behind the granted ones: answer at once those that cannot make it,
 * and wake up for the next slot. */
static void settle_queue(struct limiter_redis *r, struct lkey *b, int64_t earliest_in, int64_t now)
{
	uint64_t pos = 0;

	for (struct limiter_waiter *w = b->qhead, *next; w; w = next) {
		next = w->next;
		struct window_verdict wv = window_slot(&b->burst, &w->daily_key->daily, now, pos);
		if (wv.earliest_ms > lk_deadline(r->l, w)) {
			lk_reject(w, wv, now);
			continue;
		}
		pos++;
	}
	if (!b->qhead) {
		lk_stop_timer(b);
		return;
	}
	uint32_t jitter = 0;
	RAND_bytes((unsigned char *)&jitter, sizeof(jitter));
	lk_arm_timer(b,
	             now + MAX(earliest_in, (int64_t)0) + (int64_t)(jitter % (WAKE_JITTER_MS + 1)),
	             now);
}

static void on_admit(struct redis *rc, const redisReply *rep, const char *error, void *arg)
{
	struct call *c = arg;
	struct limiter_redis *r = c->r;
	struct lkey *b = c->b, *d = c->d;
	int64_t now = util_now_ms();

	b->rd_busy = false;
	if (error || !rep) {
		if (r->l->redis == r)
			redis_failed(r, b, error ? error : "no reply");
		call_done(c);
		if (b->mode == LK_LOCAL && b->qhead)
			local_pump(b);
		return;
	}
	if (b->mode != LK_SHARED) {
		/*
		 * The key fell back while this call was out (Redis lost, or other proxies coming
		 * back): its windows are the local ones now, with their share and block, and the
		 * reply must not replace them. Redis admitted `granted` of its waiters: they go,
		 * and count in the local windows too (carried over again by the next merge: counted
		 * twice in Redis, the safe side). The others wait for local decisions.
		 */
		int64_t granted = reply_int(rep, R_GRANTED);
		call_done(c);
		b->rd_again = false;
		for (int64_t i = 0; i < granted && b->qhead; i++) {
			struct limiter_waiter *w = b->qhead;
			if (lk_record(w, now) < 0)
				break;
			lk_admitted(w, now, now > w->enqueued_ms);
		}
		if (b->qhead)
			local_pump(b);
		return;
	}
	if (!mirror(r, b, d, rep, now)) {
		redis_failed(r, b, "unexpected script reply");
		call_done(c);
		if (b->qhead)
			local_pump(b);
		return;
	}
	int64_t granted = reply_int(rep, R_GRANTED);
	int64_t decided_after = c->t_sent_ms;
	call_done(c);
	/* The script admitted them at its own clock's now: they go. */
	for (int64_t i = 0; i < granted && b->qhead; i++) {
		struct limiter_waiter *w = b->qhead;
		w->admitted = true;
		w->answered = false;
		w->decided_ms = decided_after;
		b->n_inflight++;
		b->last_admit_ms = now;
		if (w->daily_key != b)
			w->daily_key->n_inflight++;
		lk_admitted(w, now, now > w->enqueued_ms);
	}
	if (b->rd_again && b->qhead) {
		b->rd_again = false;
		limiter_redis_pump(b);
		return;
	}
	b->rd_again = false;
	settle_queue(r, b, reply_int(rep, R_EARLIEST_IN), now);
}

void limiter_redis_pump(struct lkey *b)
{
	struct limiter_redis *r = b->l->redis;
	struct args a;

	if (b->mode != LK_SHARED) {
		local_pump(b);
		return;
	}
	if (!r->up || r->rejoin_at) {
		if (!r->known) {
			/* Starting: Redis not reached yet, not given up on either. */
			lk_arm_timer(b, util_now_ms() + 20, util_now_ms());
			return;
		}
		fallback_key(b, r);
		return;
	}
	if (b->rd_busy) {
		b->rd_again = true; /* decide again for the newcomers when this call returns */
		return;
	}
	if (!b->qhead)
		return;
	struct lkey *d = b->qhead->daily_key;
	struct call *c = call_new(r, b, d, OP_ADMIT);
	if (!c) {
		lk_arm_timer(b, util_now_ms() + 10, util_now_ms());
		return;
	}
	c->want = MIN(b->n_waiting, (uint32_t)MAX_WANT);
	c->t_sent_ms = util_now_ms();
	args_begin(&a, r, b, d, "admit");
	arg_num(&a, c->want);
	b->rd_busy = true;
	if (redis_evalsha(r->rc, &r->script, 4, a.n - 4, a.v, a.len, on_admit, c) < 0) {
		b->rd_busy = false;
		call_done(c);
		redis_failed(r, b, "cannot send");
		if (b->qhead)
			local_pump(b);
	}
}

static void on_feedback(struct redis *rc, const redisReply *rep, const char *error, void *arg)
{
	struct call *c = arg;
	struct limiter_redis *r = c->r;
	struct lkey *b = c->b, *d = c->d;

	if (error || !rep) {
		metrics_inc(M_REDIS_ERRORS);
	} else if (b->mode == LK_SHARED && !b->rd_busy) {
		/* Newer state than the mirror holds (Redis answers in order): take it. */
		mirror(r, b, d, rep, util_now_ms());
		if (b->qhead)
			settle_queue(r, b, reply_int(rep, R_EARLIEST_IN), util_now_ms());
	}
	call_done(c);
}

void limiter_redis_feedback(struct lkey *b, struct lkey *d, int status,
                            const struct ratelimit_info *ri, uint32_t uncertain, unsigned learned)
{
	struct limiter_redis *r = b->l->redis;
	struct args a;
	int64_t block_burst = 0, block_daily = 0;

	/* Only what changes the shared picture goes to Redis: most answers teach nothing new. */
	if (status != 429 && !(learned & (LEARN_TIGHTER | LEARN_LIMITS)))
		return;
	if (!limiter_redis_up(r))
		return;
	if (status == 429) {
		bool is_daily = false;
		int64_t wait = ratelimit_429_wait_ms(ri, b->burst.window_ms, &is_daily);
		if (is_daily)
			block_daily = MAX(wait, (int64_t)1);
		else
			block_burst = MAX(wait, (int64_t)1);
	}
	struct call *c = call_new(r, b, d, OP_FEEDBACK);
	if (!c)
		return;
	args_begin(&a, r, b, d, "feedback");
	arg_num(&a, ri->max > 0 ? ri->max : 0);
	arg_num(&a, ri->interval_ms > 0 ? ri->interval_ms : 0);
	arg_num(&a, ri->daily_limit > 0 ? ri->daily_limit : 0);
	arg_num(&a, ri->remaining);
	arg_num(&a, uncertain);
	arg_num(&a, lk_stale_ms(b));
	arg_num(&a, ri->daily_remaining);
	arg_num(&a, ri->daily_reset_ms);
	arg_num(&a, block_burst);
	arg_num(&a, block_daily);
	if (redis_evalsha(r->rc, &r->script, 4, a.n - 4, a.v, a.len, on_feedback, c) < 0) {
		metrics_inc(M_REDIS_ERRORS);
		call_done(c);
	}
}

/* ---- falling back and coming back ---- */

static uint32_t live_proxies(const struct limiter_redis *r)
{
	if (r->instances)
		return r->instances;
	return r->live ? r->live : 1;
}

/*
 * This key decides alone from now on, with its share: N / live proxies, and of the daily budget
 * what is used plus its share of what is left. Its window is full until W + guard has passed: it
 * cannot know what the others admitted just before.
 */
static void fallback_key(struct lkey *k, void *arg)
{
	struct limiter_redis *r = arg;
	int64_t now = util_now_ms();
	uint32_t live = live_proxies(r);

	if (k->mode == LK_LOCAL)
		return;
	k->mode = LK_LOCAL;
	k->rd_fb_since = now;
	k->rd_fb_daily = 0;
	k->rd_merged_n = k->burst.n_recorded; /* what the ring holds so far is Redis' */
	k->rd_share = live;
	uint32_t n = k->burst.burst_max / live;
	burst_set_limits(&k->burst, n ? n : 1, 0);
	burst_block(&k->burst, now + k->burst.window_ms + k->burst.guard_ms);
	uint64_t used = daily_used(&k->daily, now);
	uint64_t left = k->daily.daily_max > used ? k->daily.daily_max - used : 0;
	daily_set_limit(&k->daily, (uint32_t)MIN(used + left / live, (uint64_t)UINT32_MAX));
	r->fell_back = true;
	if (k->qhead) {
		if (r->reject_mode) {
			for (struct limiter_waiter *w = k->qhead, *next; w; w = next) {
				struct limiter_verdict v = { .outcome = LIMITER_UNAVAILABLE,
					                     .retry_after_ms = 1000 };
				next = w->next;
				lk_answer(w, &v, now);
			}
			return;
		}
		local_recheck(k, now);
	}
}

void limiter_redis_fallback(struct lkey *k)
{
	fallback_key(k, k->l->redis);
}

/* The key decides through Redis again; its mirror is refreshed by its next call. */
static void share_key(struct lkey *k)
{
	k->mode = LK_SHARED;
	k->rd_fb_since = 0;
	k->rd_fb_daily = 0;
	k->rd_share = 0;
	k->rd_share_pending = false;
	log_debug("key=%s rejoined the shared limiter", k->name);
	if (k->qhead)
		limiter_redis_pump(k);
}

static void merge_key(struct lkey *k, bool then_share);

/*
 * A merge that did not go through: what it carried is unmerged again and goes with the next one
 * (the key's merges go one at a time, and a key in fallback does not fall back again, so nothing
 * else moved these counters meanwhile but new admissions). A key waiting to share decisions
 * tries again at the next heartbeat.
 */
static void merge_failed(struct lkey *k, const struct call *c)
{
	k->rd_merged_n = c->merged_from;
	k->rd_fb_daily += c->fb_daily;
	if (k->rd_share_pending)
		c->r->fell_back = true;
}

static void on_merged(struct redis *rc, const redisReply *rep, const char *error, void *arg)
{
	struct call *c = arg;
	struct limiter_redis *r = c->r;
	struct lkey *b = c->b;

	b->rd_busy = false;
	b->rd_again = false;
	if (error || !rep || rep->type != REDIS_REPLY_ARRAY) {
		metrics_inc(M_REDIS_ERRORS);
		merge_failed(b, c);
		call_done(c);
		return;
	}
	call_done(c);
	/* What was admitted meanwhile goes next; once all is there, the key shares if asked to. */
	if (b->mode == LK_LOCAL && r->up)
		merge_key(b, false);
}

/*
 * Carry the admissions this key made alone (those Redis has not seen) over to Redis. With
 * then_share, the key decides through Redis once they are there.
 */
static void merge_key(struct lkey *k, bool then_share)
{
	struct limiter_redis *r = k->l->redis;
	struct args a;
	int64_t now = util_now_ms();
	uint64_t unmerged =
	        k->burst.n_recorded > k->rd_merged_n ? k->burst.n_recorded - k->rd_merged_n : 0;

	if (k->mode != LK_LOCAL)
		return;
	if (then_share)
		k->rd_share_pending = true; /* kept until it happens: a merge out now, or failing */
	if (!r->have_offset) {
		r->fell_back = true; /* Redis' clock not known yet: the next heartbeat brings it */
		return;
	}
	if (k->rd_busy) {
		k->rd_again = true;
		return;
	}
	if (unmerged == 0 && k->rd_fb_daily == 0) {
		/* Shared decisions only while they are allowed (not during a rejoin period). */
		if (k->rd_share_pending && limiter_redis_up(r))
			share_key(k);
		return;
	}
	struct lkey *d = k->rd_daily ? k->rd_daily : k;
	struct call *c = call_new(r, k, d, OP_MERGE);
	if (!c)
		return;
	c->merged_from = k->rd_merged_n;
	c->fb_daily = k->rd_fb_daily;
	args_begin(&a, r, k, d, "merge");
	arg_num(&a, k->rd_fb_daily);
	/* The newest `unmerged` ring entries, oldest first, in Redis' clock; what does not fit in
	 * one call (the newest) stays unmerged and goes with the next. */
	uint32_t n = (uint32_t)MIN(unmerged, (uint64_t)k->burst.len), sent = 0;
	for (uint32_t i = k->burst.len - n; i < k->burst.len && a.n < (int)ARRAY_SIZE(a.v) - 1;
	     i++, sent++) {
		int64_t t = k->burst.ring[(k->burst.head + i) % k->burst.cap];
		arg_num(&a, MIN(t, now) + r->clock_offset_ms);
	}
	k->rd_merged_n = k->burst.n_recorded - (n - sent);
	k->rd_fb_daily = 0;
	k->rd_busy = true;
	if (redis_evalsha(r->rc, &r->script, 4, a.n - 4, a.v, a.len, on_merged, c) < 0) {
		k->rd_busy = false;
		merge_failed(k, c);
		call_done(c);
	}
}

static void on_late(struct redis *rc, const redisReply *rep, const char *error, void *arg)
{
	struct call *c = arg;

	call_done(c);
	if (error || !rep || rep->type != REDIS_REPLY_ARRAY)
		metrics_inc(M_REDIS_ERRORS);
}

/*
 * A shared admission left late: the script recorded it at its decision (Redis' clock), but the
 * call reached the socket `late` ms after the decision was asked for (CPU starvation, a new TLS
 * connection). The guard band absorbs up to guard_ms of that; beyond half of it, the real send
 * time goes to Redis as one more entry of the key's burst log ("merge" with no daily count), so
 * every proxy's next decision spaces from the later time. The earlier entry stays: one slot may
 * be lost, never the contract. Costs a round trip only when it happens.
 */
void limiter_redis_sent(struct lkey *b, struct limiter_waiter *w, int64_t now)
{
	struct limiter_redis *r = b->l->redis;
	struct args a;

	if (!r || b->mode != LK_SHARED || !r->up || !r->have_offset || w->decided_ms <= 0)
		return;
	if (now - w->decided_ms <= (int64_t)b->l->guard_ms / 2)
		return;
	struct lkey *d = w->daily_key ? w->daily_key : b;
	struct call *c = call_new(r, b, d, OP_LATE);
	if (!c)
		return;
	args_begin(&a, r, b, d, "merge");
	arg_num(&a, 0);
	arg_num(&a, now + r->clock_offset_ms);
	metrics_inc(M_REDIS_LATE_SENDS);
	if (redis_evalsha(r->rc, &r->script, 4, a.n - 4, a.v, a.len, on_late, c) < 0)
		call_done(c);
}

void limiter_redis_recorded(struct lkey *k)
{
	struct limiter_redis *r = k->l->redis;

	/* Rejoining: Redis must hold every admission by the common switch time. */
	if (r && k->mode == LK_LOCAL && r->rejoin_at && r->up)
		merge_key(k, false);
}

static void merge_each(struct lkey *k, void *arg)
{
	merge_key(k, *(bool *)arg);
}

static void set_down(struct limiter_redis *r)
{
	bool first = !r->known;

	r->known = true;
	r->rejoin_at = 0;
	if (!r->up && !first)
		return;
	r->up = false;
	metrics_set(M_REDIS_UP, 0);
	metrics_set(M_REDIS_FALLBACK, 1);
	metrics_inc(M_REDIS_FALLBACKS);
	log_warning("redis unreachable: %s", r->reject_mode
	                                             ? "answering 503 until it returns"
	                                             : "each key falls back to its local share");
	lk_foreach(r->l, fallback_key, r);
}

/* Redis answers: share decisions now, or at the common rejoin time (merging meanwhile). */
static void set_reachable(struct limiter_redis *r, int64_t rejoin_in_ms)
{
	int64_t now = util_now_ms();
	bool merge_only = false, share = true;

	r->known = true;
	if (rejoin_in_ms > 0) {
		if (!r->rejoin_at)
			log_info("redis reachable: keys carry their admissions over and share "
			         "decisions again in %lld ms",
			         (long long)rejoin_in_ms);
		r->rejoin_at = now + rejoin_in_ms;
		if (r->up && !r->fell_back) {
			/* Others are coming back: decide alone with them until the rejoin. */
			r->up = false;
			lk_foreach(r->l, fallback_key, r);
		}
		r->up = true; /* reachable: merges go through */
		lk_foreach(r->l, merge_each, &merge_only);
		metrics_set(M_REDIS_UP, 1);
		metrics_set(M_REDIS_FALLBACK, 1);
		return;
	}
	bool was_shared = r->up && !r->fell_back && !r->rejoin_at;
	r->up = true;
	r->rejoin_at = 0;
	metrics_set(M_REDIS_UP, 1);
	metrics_set(M_REDIS_FALLBACK, 0);
	if (was_shared)
		return;
	if (r->fell_back)
		log_info("redis reachable: keys share decisions again");
	r->fell_back = false;
	lk_foreach(r->l, merge_each, &share);
}

static void on_heartbeat(struct redis *rc, const redisReply *rep, const char *error, void *arg)
{
	struct limiter_redis *r = arg;

	if (error || !rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 2) {
		metrics_inc(M_REDIS_ERRORS);
		set_down(r);
		return;
	}
	int64_t live = reply_int(rep, 0), rejoin_in = reply_int(rep, 1),
	        redis_now = reply_int(rep, 2);
	r->live = live > 0 ? (uint32_t)live : 1;
	if (redis_now > 0) {
		/* Redis' clock, which merges need: a key that fell back before any script reply
		 * (this proxy started while Redis was down) has no other way to learn it. */
		r->clock_offset_ms = redis_now - util_now_ms();
		r->have_offset = true;
	}
	set_reachable(r, rejoin_in);
}

static void on_hb_timer(evutil_socket_t fd, short what, void *arg)
{
	struct limiter_redis *r = arg;
	struct timeval tv = { HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000 };
	const char *argv[6];
	size_t lens[6];
	char ttl[24], grace[24];
	int64_t now = util_now_ms();

	/* At the common rejoin time, switch on the dot, not at the next heartbeat. */
	if (r->rejoin_at && now < r->rejoin_at && r->rejoin_at - now < HEARTBEAT_MS) {
		tv.tv_sec = (r->rejoin_at - now) / 1000;
		tv.tv_usec = ((r->rejoin_at - now) % 1000) * 1000;
	}
	event_add(r->hb_timer, &tv);
	if (r->rejoin_at && now >= r->rejoin_at && r->up) {
		set_reachable(r, 0);
		return;
	}
	if (!redis_is_up(r->rc)) {
		/* At start, give the first connection its chance before falling back. */
		if (r->known || now - r->started_ms > (int64_t)r->connect_timeout_ms + 200)
			set_down(r);
		return;
	}
	snprintf(ttl, sizeof(ttl), "%d", HEARTBEAT_TTL_MS);
	snprintf(grace, sizeof(grace), "%lld",
	         (long long)(REJOIN_LAG_MS + r->l->window_ms + r->l->guard_ms));
	argv[0] = r->hb_key;
	argv[1] = r->rejoin_key;
	argv[2] = r->proxy_id;
	argv[3] = ttl;
	/* Ask for a rejoin time only when coming back; one already known is waited for (a
	 * heartbeat just past it must not start another). */
	argv[4] = r->fell_back && !r->rejoin_at ? "1" : "0";
	argv[5] = grace;
	for (int i = 0; i < 6; i++)
		lens[i] = strlen(argv[i]);
	if (redis_evalsha(r->rc, &r->heartbeat, 2, 4, argv, lens, on_heartbeat, r) < 0)
		set_down(r);
}

static void on_state(struct redis *rc, bool up, void *arg)
{
	struct limiter_redis *r = arg;

	if (!up)
		set_down(r);
	else
		event_active(r->hb_timer, EV_TIMEOUT, 0); /* count proxies, learn the rejoin time */
}

/* ---- life ---- */

struct limiter_redis *limiter_redis_new(struct limiter *l, const struct config *cfg, char *err,
                                        size_t err_len)
{
	struct limiter_redis *r = calloc(1, sizeof(*r));
	struct redis_settings s = { 0 };
	char *password = NULL;
	size_t password_len = 0;
	unsigned char rnd[6];

	if (!r) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	r->l = l;
	r->started_ms = util_now_ms();
	r->connect_timeout_ms = cfg->redis.connect_timeout_ms;
	util_strlcpy(r->prefix, cfg->redis.key_prefix, sizeof(r->prefix));
	r->instances = cfg->redis.instances;
	r->reject_mode = cfg->limits.on_redis_down == CONFIG_REDIS_DOWN_REJECT;
	RAND_bytes(rnd, sizeof(rnd));
	char host[32] = "";
	gethostname(host, sizeof(host) - 1);
	snprintf(r->proxy_id, sizeof(r->proxy_id), "%s-%ld-%02x%02x%02x%02x%02x%02x", host,
	         (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
	snprintf(r->hb_key, sizeof(r->hb_key), "%s:{proxies}", r->prefix);
	snprintf(r->rejoin_key, sizeof(r->rejoin_key), "%s:{proxies}:rejoin", r->prefix);
	redis_script_init(&r->script, limiter_lua);
	redis_script_init(&r->heartbeat, heartbeat_lua);

	if (cfg->redis.password_file && *cfg->redis.password_file) {
		char why[400];
		int rc = credentials_read_file(cfg->redis.password_file, 4096, &password, why,
		                               sizeof(why));
		if (rc < 0) {
			snprintf(err, err_len, "redis.password_file: %s", why);
			free(r);
			return NULL;
		}
		password_len = strlen(password);
	}
	s.url = cfg->redis.url;
	s.password = password;
	s.connect_timeout_ms = cfg->redis.connect_timeout_ms;
	s.command_timeout_ms = cfg->redis.command_timeout_ms;
	r->rc = redis_new(l->base, &s, err, err_len);
	util_wipe_free(password, password_len);
	if (!r->rc) {
		free(r);
		return NULL;
	}
	redis_on_state(r->rc, on_state, r);
	r->hb_timer = evtimer_new(l->base, on_hb_timer, r);
	if (!r->hb_timer) {
		snprintf(err, err_len, "out of memory");
		limiter_redis_free(r);
		return NULL;
	}
	/* Until the first heartbeat: not up (keys born now start local, at a share of one). */
	metrics_set(M_REDIS_UP, 0);
	metrics_set(M_REDIS_FALLBACK, 0);
	struct timeval tv = { 0, 0 };
	event_add(r->hb_timer, &tv);
	return r;
}

void limiter_redis_free(struct limiter_redis *r)
{
	if (!r)
		return;
	/* Outstanding calls get "shutting down" now and touch nothing but their own memory and
	 * the keys, which outlive this. */
	r->l->redis = NULL;
	redis_free(r->rc);
	if (r->hb_timer)
		event_free(r->hb_timer);
	free(r);
}

void limiter_redis_set_config(struct limiter_redis *r, const struct config *cfg)
{
	r->instances = cfg->redis.instances;
	r->reject_mode = cfg->limits.on_redis_down == CONFIG_REDIS_DOWN_REJECT;
}

bool limiter_redis_key_busy(const struct lkey *k)
{
	/* Also kept: a key in fallback whose admissions Redis' daily count has not seen yet. */
	return k->rd_calls > 0 || k->rd_busy || (k->mode == LK_LOCAL && k->rd_fb_daily > 0);
}

bool limiter_redis_up(const struct limiter_redis *r)
{
	return r && r->up && !r->rejoin_at;
}

bool limiter_redis_reachable(const struct limiter_redis *r)
{
	return r && r->up;
}

bool limiter_redis_reject_when_down(const struct limiter_redis *r)
{
	return r && r->reject_mode && r->known && !r->up;
}

bool limiter_redis_down(const struct limiter_redis *r)
{
	return r && r->known && (!r->up || r->rejoin_at);
}
