/*
 * limiter.c: the limiter's keys, their queues and wake-up timers, and the public API. Decisions
 * are limiter_local.c's (this process alone) or limiter_redis.c's (shared through Redis); a key's
 * `mode` says which, and a key falls back from shared to local when Redis cannot be reached.
 *
 * Life of a waiter: limiter_acquire ─► decided at once (admit, or reject: its slot behind the
 *                                       queue is past its deadline)
 *                                   ─► queued (FIFO per burst key; a 429'd resend at the head)
 *   the key's wake-up (local: its next slot; shared: the script's answer, plus jitter)
 *     ─► pump: admit heads that may go, answer those that cannot make their deadline
 *   limiter_feedback (limits learned, remaining believed, 429 block) ─► recheck at once
 *   limiter_cancel (client gone) ─► out of the queue, references dropped.
 *
 * Keys live in a hash table by name. A key is freed by the sweep once nothing refers to it and
 * its windows hold nothing that still counts (its burst window after W + guard, its daily counts
 * after a day), so an idle key costs a few hundred bytes and a forgotten one nothing.
 */
#include "limiter.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "classify.h"
#include "config.h"
#include "limiter_internal.h"
#include "log.h"
#include "ratelimit_headers.h"
#include "util.h"

/*
 * The sweep visits the whole key table once per SWEEP_INTERVAL_MS, whatever its size, so an idle
 * key is freed at most that long after its windows passed. A table of up to SWEEP_BATCH buckets
 * is one tick; a larger one is spread over ticks of SWEEP_BATCH buckets (262,144 buckets, as
 * 100,000 PIT locations make: 64 ticks 78 ms apart, a fraction of a millisecond each), and once
 * ticks would come closer than SWEEP_TICK_MIN_MS, over larger batches. (One fixed batch every
 * 5 s took 320 s to reach every key of that table: forgotten keys held their memory that long.)
 */
#define SWEEP_INTERVAL_MS 5000
#define SWEEP_BATCH       4096 /* buckets visited per tick, while ticks are far enough apart */
#define SWEEP_TICK_MIN_MS 20

/* ---- the key table ---- */

static uint32_t hash_name(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static int tab_grow(struct limiter *l)
{
	uint32_t n;
	struct lkey **nt;

	/* 2^31 buckets at most: twice that would wrap the uint32_t size to 0. */
	if (l->tab_mask >= UINT32_MAX / 2)
		return -ENOMEM;
	n = (l->tab_mask + 1) * 2;
	nt = calloc(n, sizeof(*nt));
	if (!nt)
		return -ENOMEM;
	for (uint32_t i = 0; i <= l->tab_mask; i++) {
		struct lkey *k = l->tab[i], *next;
		for (; k; k = next) {
			next = k->hnext;
			k->hnext = nt[k->hash & (n - 1)];
			nt[k->hash & (n - 1)] = k;
		}
	}
	free(l->tab);
	l->tab = nt;
	l->tab_mask = n - 1;
	return 0;
}

static struct lkey *key_find(struct limiter *l, const char *name, uint32_t h)
{
	for (struct lkey *k = l->tab[h & l->tab_mask]; k; k = k->hnext)
		if (k->hash == h && strcmp(k->name, name) == 0)
			return k;
	return NULL;
}

static struct lkey *key_get(struct limiter *l, const char *name)
{
	uint32_t h = hash_name(name);
	struct lkey *k = key_find(l, name, h);
	size_t len = strlen(name);

	if (k)
		return k;
	if (l->n_keys > l->tab_mask && tab_grow(l) < 0)
		return NULL;
	k = calloc(1, sizeof(*k) + len + 1);
	if (!k)
		return NULL;
	memcpy(k->name, name, len + 1);
	k->hash = h;
	k->l = l;
	burst_init(&k->burst, l->burst, l->window_ms, l->guard_ms);
	daily_init(&k->daily, l->daily);
	k->mode = l->redis ? LK_SHARED : LK_LOCAL;
	if (l->redis && limiter_redis_down(l->redis))
		limiter_redis_fallback(k); /* born during an outage: local, at its share */
	k->hnext = l->tab[h & l->tab_mask];
	l->tab[h & l->tab_mask] = k;
	l->n_keys++;
	return k;
}

static void key_free(struct lkey *k)
{
	if (k->timer)
		event_free(k->timer);
	burst_deinit(&k->burst);
	daily_deinit(&k->daily);
	free(k);
}

/* Drop what no longer counts; free the key when nothing is left of it. */
static void sweep_bucket(struct limiter *l, uint32_t i, int64_t now)
{
	struct lkey **pp = &l->tab[i];

	while (*pp) {
		struct lkey *k = *pp;
		if (k->mode == LK_LOCAL) {
			burst_trim(&k->burst, now);
			daily_trim(&k->daily, now);
		}
		/* A shared key's state lives in Redis: its mirror may go once its window passed. */
		bool idle = burst_is_idle(&k->burst, now) &&
		            (k->mode == LK_SHARED || daily_is_idle(&k->daily, now));
		if (k->n_refs == 0 && k->n_waiting == 0 && idle &&
		    !(l->redis && limiter_redis_key_busy(k))) {
			*pp = k->hnext;
			l->n_keys--;
			if (k->rd_daily && k->rd_daily != k)
				k->rd_daily->n_refs--; /* freed by a later visit, if nothing else
				                          holds it */
			key_free(k);
			continue;
		}
		pp = &k->hnext;
	}
}

/* This tick's batch of buckets, and when the next tick comes: see SWEEP_INTERVAL_MS. */
static uint32_t sweep_plan(const struct limiter *l, struct timeval *next)
{
	uint64_t buckets = (uint64_t)l->tab_mask + 1;
	uint64_t ticks = (buckets + SWEEP_BATCH - 1) / SWEEP_BATCH;
	uint64_t tick_ms;

	if (ticks > SWEEP_INTERVAL_MS / SWEEP_TICK_MIN_MS)
		ticks = SWEEP_INTERVAL_MS / SWEEP_TICK_MIN_MS;
	tick_ms = SWEEP_INTERVAL_MS / ticks;
	next->tv_sec = (time_t)(tick_ms / 1000);
	next->tv_usec = (suseconds_t)(tick_ms % 1000) * 1000;
	return (uint32_t)((buckets + ticks - 1) / ticks);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct limiter *l = arg;
	int64_t now = util_now_ms();
	struct timeval tv;
	uint32_t n = sweep_plan(l, &tv);

	/* cppcheck takes tab_mask + 1 for 0 (tab_mask is 2^k - 1, k <= 31: see tab_grow) */
	/* cppcheck-suppress knownConditionTrueFalse */
	for (uint32_t j = 0; j < n; j++) {
		sweep_bucket(l, l->sweep_pos, now);
		l->sweep_pos = (l->sweep_pos + 1) & l->tab_mask;
	}
	event_add(l->sweep, &tv);
}

void lk_foreach(struct limiter *l, void (*fn)(struct lkey *k, void *arg), void *arg)
{
	for (uint32_t i = 0; i <= l->tab_mask; i++) {
		for (struct lkey *k = l->tab[i], *next; k; k = next) {
			next = k->hnext;
			fn(k, arg);
		}
	}
}

/* ---- queues and timers ---- */

void lk_q_remove(struct lkey *k, struct limiter_waiter *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		k->qhead = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		k->qtail = w->prev;
	w->next = w->prev = NULL;
	w->queued = false;
	k->n_waiting--;
	k->l->st.n_waiting--;
}

static void q_insert(struct lkey *k, struct limiter_waiter *w, bool at_head)
{
	if (at_head) {
		w->prev = NULL;
		w->next = k->qhead;
		if (k->qhead)
			k->qhead->prev = w;
		else
			k->qtail = w;
		k->qhead = w;
	} else {
		w->next = NULL;
		w->prev = k->qtail;
		if (k->qtail)
			k->qtail->next = w;
		else
			k->qhead = w;
		k->qtail = w;
	}
	w->queued = true;
	k->n_waiting++;
	k->l->st.n_waiting++;
}

static void pump(struct lkey *k)
{
	if (k->mode == LK_SHARED)
		limiter_redis_pump(k);
	else
		local_pump(k);
}

static void on_key_timer(evutil_socket_t fd, short what, void *arg)
{
	pump(arg);
}

void lk_arm_timer(struct lkey *k, int64_t at_ms, int64_t now)
{
	struct timeval tv;
	int64_t in_ms = at_ms - now;

	if (!k->timer) {
		k->timer = evtimer_new(k->l->base, on_key_timer, k);
		if (!k->timer)
			return; /* out of memory: the next arrival or answer pumps the key */
	}
	if (in_ms < 0)
		in_ms = 0;
	tv.tv_sec = in_ms / 1000;
	tv.tv_usec = (in_ms % 1000) * 1000;
	event_add(k->timer, &tv);
}

void lk_stop_timer(struct lkey *k)
{
	if (k->timer) {
		event_free(k->timer);
		k->timer = NULL;
	}
}

static void release(struct limiter_waiter *w)
{
	if (w->admitted && !w->answered) {
		/* Done without an answer (upstream error, client gone): no longer in flight. */
		w->burst_key->n_inflight--;
		if (w->daily_key != w->burst_key)
			w->daily_key->n_inflight--;
		w->answered = true;
	}
	if (w->burst_key) {
		w->burst_key->n_refs--;
		w->burst_key = NULL;
	}
	if (w->daily_key) {
		w->daily_key->n_refs--;
		w->daily_key = NULL;
	}
}

int64_t lk_deadline(const struct limiter *l, const struct limiter_waiter *w)
{
	return l->drain_until_ms ? MIN(w->deadline_ms, l->drain_until_ms) : w->deadline_ms;
}

int64_t lk_stale_ms(const struct lkey *k)
{
	return k->burst.window_ms / 4;
}

/* ---- verdicts ---- */

void lk_describe(const struct lkey *b, const struct lkey *d, int64_t now, struct limiter_verdict *v)
{
	uint32_t used = burst_used(&b->burst, now);
	uint64_t dused = daily_used(&d->daily, now);
	int64_t drem = dused >= d->daily.daily_max ? 0 : (int64_t)(d->daily.daily_max - dused);

	v->limit = b->burst.burst_max;
	v->interval_ms = b->burst.window_ms;
	v->remaining = used >= b->burst.burst_max ? 0 : b->burst.burst_max - used;
	v->daily_limit = d->daily.daily_max;
	if (d->daily.hl_remaining >= 0 && now < d->daily.hl_reset_at_ms &&
	    d->daily.hl_remaining < drem)
		drem = d->daily.hl_remaining;
	v->daily_remaining = drem;
	v->daily_reset_ms = -1;
	if (d->daily.hl_remaining >= 0 && now < d->daily.hl_reset_at_ms)
		v->daily_reset_ms = d->daily.hl_reset_at_ms - now;
}

static bool scope_is_daily(enum window_scope s)
{
	return s == WINDOW_DAILY || s == WINDOW_BLOCKED_DAY;
}

void lk_fill_reject(const struct lkey *b, const struct lkey *d, int64_t now,
                    struct window_verdict wv, struct limiter_verdict *v)
{
	lk_describe(b, d, now, v);
	v->outcome = LIMITER_REJECT;
	v->scope = wv.scope;
	v->retry_after_ms = wv.earliest_ms == INT64_MAX ? WINDOW_DAY_MS : wv.earliest_ms - now;
	if (v->retry_after_ms < 1)
		v->retry_after_ms = 1;
	if (scope_is_daily(wv.scope)) {
		/* The SDK reads a daily 429 from Daily-Remaining 0; say when budget returns. */
		v->daily_remaining = 0;
		v->daily_reset_ms = v->retry_after_ms;
	} else {
		v->remaining = 0;
	}
}

void lk_count_reject(struct limiter *l, enum window_scope s)
{
	if (scope_is_daily(s))
		l->st.rejected_daily++;
	else
		l->st.rejected_burst++;
}

int lk_record(struct limiter_waiter *w, int64_t now)
{
	struct lkey *b = w->burst_key, *d = w->daily_key;

	if (window_record(&b->burst, &d->daily, now) < 0)
		return -ENOMEM;
	w->admitted = true;
	w->answered = false;
	w->burst_ticket = b->burst.n_recorded;
	b->n_inflight++;
	b->last_admit_ms = now;
	if (d != b)
		d->n_inflight++;
	if (b->rd_fb_since && b->mode == LK_LOCAL) {
		b->rd_fb_daily++; /* made during a Redis outage: carried over when it returns */
		limiter_redis_recorded(b);
	}
	log_debug("admit key=%s at=%lld waited=%lld queue=%u", b->name, (long long)now,
	          (long long)(now - w->enqueued_ms), b->n_waiting);
	return 0;
}

void lk_answer(struct limiter_waiter *w, struct limiter_verdict *v, int64_t now)
{
	struct lkey *k = w->burst_key;

	if (w->queued)
		lk_q_remove(k, w);
	v->wait_ms = now - w->enqueued_ms;
	w->cb(w, v, w->arg);
}

void lk_admitted(struct limiter_waiter *w, int64_t now, bool waited)
{
	struct limiter_verdict v = { 0 };

	lk_describe(w->burst_key, w->daily_key, now, &v);
	v.outcome = LIMITER_ADMIT;
	if (waited)
		w->burst_key->l->st.admitted_late++;
	else
		w->burst_key->l->st.admitted_now++;
	lk_answer(w, &v, now);
}

void lk_reject(struct limiter_waiter *w, struct window_verdict wv, int64_t now)
{
	struct limiter *l = w->burst_key->l;
	struct limiter_verdict v = { 0 };

	lk_fill_reject(w->burst_key, w->daily_key, now, wv, &v);
	if (wv.earliest_ms <= w->deadline_ms)
		v.outcome = LIMITER_SHUTDOWN; /* it would have made it, but the proxy stops */
	else
		lk_count_reject(l, wv.scope);
	lk_answer(w, &v, now);
}

/* ---- public ---- */

bool limiter_acquire(struct limiter *l, const struct classify_result *key, int64_t deadline_ms,
                     bool at_head, struct limiter_waiter *w, limiter_cb cb, void *arg,
                     struct limiter_verdict *v)
{
	int64_t now = util_now_ms();
	struct lkey *b, *d;

	memset(v, 0, sizeof(*v));
	v->limit = v->remaining = v->interval_ms = -1;
	v->daily_limit = v->daily_remaining = v->daily_reset_ms = -1;
	release(w); /* a resend after a 429 asks again */
	w->next = w->prev = NULL;
	w->queued = w->admitted = w->answered = false;
	w->cb = cb;
	w->arg = arg;
	w->enqueued_ms = now;
	w->deadline_ms = deadline_ms;

	b = key_get(l, key->burst_key);
	d = b && strcmp(key->daily_key, key->burst_key) != 0 ? key_get(l, key->daily_key) : b;
	if (!b || !d) {
		v->outcome = LIMITER_QUEUE_FULL;
		v->retry_after_ms = 1000;
		l->st.queue_full++;
		return true;
	}
	w->burst_key = b;
	w->daily_key = d;
	b->n_refs++;
	d->n_refs++;
	if (b->rd_daily != d) {
		/* Script calls about b name d's keys (merges may come long after its waiters). */
		if (b->rd_daily && b->rd_daily != b)
			b->rd_daily->n_refs--;
		b->rd_daily = d;
		if (d != b)
			d->n_refs++;
	}

	if (b->mode == LK_LOCAL && l->redis && limiter_redis_reject_when_down(l->redis)) {
		/* Shared limits that cannot be shared now: refuse rather than guess. */
		v->outcome = LIMITER_UNAVAILABLE;
		v->retry_after_ms = 1000;
		return true;
	}
	if (b->n_waiting >= l->max_queue_per_key || l->st.n_waiting >= l->max_queue) {
		struct window_verdict wv = window_slot(&b->burst, &d->daily, now, b->n_waiting);
		lk_describe(b, d, now, v);
		v->outcome = LIMITER_QUEUE_FULL;
		v->scope = wv.scope;
		v->retry_after_ms = MAX(wv.earliest_ms - now, (int64_t)1000);
		l->st.queue_full++;
		return true;
	}
	if (b->mode == LK_LOCAL)
		return local_acquire(l, b, d, w, at_head, now, v);

	/* Shared: the script decides; the waiter hears back from the loop. */
	q_insert(b, w, at_head);
	limiter_redis_pump(b);
	return false;
}

void lk_q_insert(struct lkey *k, struct limiter_waiter *w, bool at_head)
{
	q_insert(k, w, at_head);
}

void limiter_cancel(struct limiter_waiter *w)
{
	if (w->queued) {
		struct lkey *k = w->burst_key;
		bool was_head = k->qhead == w;
		lk_q_remove(k, w);
		k->l->st.cancelled++;
		if (!k->qhead)
			lk_stop_timer(k);
		else if (was_head && k->mode == LK_LOCAL)
			local_pump(k);
	}
	release(w);
}

void limiter_feedback(struct limiter *l, struct limiter_waiter *w, int status,
                      const struct ratelimit_info *ri)
{
	struct lkey *b = w->burst_key, *d = w->daily_key;
	int64_t now = util_now_ms();

	if (!b || !d || !w->admitted || w->answered)
		return;
	w->answered = true;
	b->n_inflight--;
	if (d != b)
		d->n_inflight--;
	b->last_answer_ms = now;
	if (status == 429)
		l->st.upstream_429++;
	unsigned learned = local_learn(b, d, status, ri, now);
	if (b->mode == LK_SHARED && l->redis)
		limiter_redis_feedback(b, d, status, ri, b->n_inflight, learned);
	if (b->mode == LK_LOCAL) {
		if (learned & LEARN_TIGHTER)
			local_recheck(b, now);
		else if (b->qhead)
			local_pump(b); /* the probe's answer: the rest of the clump may go */
		if (d != b && d->qhead)
			local_recheck(d, now);
	}
}

void limiter_sent(struct limiter *l, struct limiter_waiter *w)
{
	if (w->admitted && w->burst_key) {
		int64_t now = util_now_ms();
		burst_sent(&w->burst_key->burst, w->burst_ticket, now);
		if (l->redis)
			limiter_redis_sent(w->burst_key, w, now);
	}
}

void limiter_describe(struct limiter *l, const struct limiter_waiter *w, struct limiter_verdict *v)
{
	if (w->burst_key && w->daily_key)
		lk_describe(w->burst_key, w->daily_key, util_now_ms(), v);
}

static void drain_key(struct lkey *k, void *arg)
{
	int64_t now = *(int64_t *)arg;

	if (!k->qhead)
		return;
	if (k->mode == LK_LOCAL) {
		local_recheck(k, now);
		return;
	}
	/* Shared: every waiter whose slot (as last known) is past the drain answers now. */
	uint64_t pos = 0;
	for (struct limiter_waiter *w = k->qhead, *next; w; w = next) {
		next = w->next;
		struct window_verdict wv = window_slot(&k->burst, &w->daily_key->daily, now, pos);
		if (wv.earliest_ms > lk_deadline(k->l, w))
			lk_reject(w, wv, now);
		else
			pos++;
	}
}

void limiter_drain(struct limiter *l, int64_t until_ms)
{
	int64_t now = util_now_ms();

	l->drain_until_ms = until_ms > 0 ? until_ms : 1;
	lk_foreach(l, drain_key, &now);
}

static void apply_defaults(struct limiter *l, const struct config *cfg)
{
	l->burst = cfg->limits.burst;
	l->window_ms = cfg->limits.window_ms;
	l->guard_ms = cfg->limits.guard_ms;
	l->daily = cfg->limits.daily;
	l->max_queue_per_key = cfg->limits.max_queue_per_key;
	l->max_queue = cfg->limits.max_queue;
}

struct limiter *limiter_new(struct event_base *base, const struct config *cfg, char *err,
                            size_t err_len)
{
	struct limiter *l = calloc(1, sizeof(*l));
	struct timeval tv = { SWEEP_INTERVAL_MS / 1000, 0 };

	if (!l) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	l->base = base;
	apply_defaults(l, cfg);
	l->tab_mask = 255;
	l->tab = calloc(l->tab_mask + 1, sizeof(*l->tab));
	l->sweep = event_new(base, -1, 0, on_sweep, l);
	if (!l->tab || !l->sweep) {
		snprintf(err, err_len, "out of memory");
		limiter_free(l);
		return NULL;
	}
	if (cfg->limits.backend == CONFIG_BACKEND_REDIS) {
		l->redis = limiter_redis_new(l, cfg, err, err_len);
		if (!l->redis) {
			limiter_free(l);
			return NULL;
		}
	}
	event_add(l->sweep, &tv);
	return l;
}

static void reconfigure_key(struct lkey *k, void *arg)
{
	struct limiter *l = arg;

	k->burst.guard_ms = l->guard_ms;
	if (k->mode == LK_LOCAL) {
		if (k->burst_src == LIMIT_FROM_CONFIG)
			burst_set_limits(&k->burst, l->burst, l->window_ms);
		if (k->daily_src == LIMIT_FROM_CONFIG)
			daily_set_limit(&k->daily, l->daily);
		if (k->qhead)
			local_recheck(k, util_now_ms());
	} else if (k->qhead) {
		limiter_redis_pump(k);
	}
}

void limiter_set_config(struct limiter *l, const struct config *cfg)
{
	apply_defaults(l, cfg);
	if (l->redis)
		limiter_redis_set_config(l->redis, cfg);
	lk_foreach(l, reconfigure_key, l);
}

void limiter_free(struct limiter *l)
{
	if (!l)
		return;
	/* Redis first: its outstanding calls refer to keys. */
	limiter_redis_free(l->redis);
	l->redis = NULL;
	for (uint32_t i = 0; l->tab && i <= l->tab_mask; i++) {
		for (struct lkey *k = l->tab[i], *next; k; k = next) {
			next = k->hnext;
			/* Callers cancel their waiters first; drop whatever is left silently. */
			while (k->qhead)
				lk_q_remove(k, k->qhead);
			key_free(k);
		}
	}
	free(l->tab);
	if (l->sweep)
		event_free(l->sweep);
	free(l);
}

void limiter_get_stats(const struct limiter *l, struct limiter_stats *st)
{
	*st = l->st;
	st->n_keys = l->n_keys;
}

uint32_t limiter_n_waiting(const struct limiter *l)
{
	return l ? l->st.n_waiting : 0;
}

bool limiter_shared_up(const struct limiter *l)
{
	return l->redis && limiter_redis_up(l->redis);
}

bool limiter_redis_reachable_now(const struct limiter *l)
{
	return l->redis && limiter_redis_reachable(l->redis);
}

bool limiter_uses_redis(const struct limiter *l)
{
	return l->redis != NULL;
}

void limiter_foreach_key(struct limiter *l,
                         void (*fn)(const struct limiter_key_info *ki, void *arg), void *arg)
{
	int64_t now = util_now_ms();

	for (uint32_t i = 0; i <= l->tab_mask; i++) {
		for (struct lkey *k = l->tab[i]; k; k = k->hnext) {
			struct limiter_key_info ki = {
				.name = k->name,
				.burst_max = k->burst.burst_max,
				.window_ms = k->burst.window_ms,
				.burst_used = burst_used(&k->burst, now),
				.daily_max = k->daily.daily_max,
				.daily_used = daily_used(&k->daily, now),
				.hl_daily_remaining =
				        k->daily.hl_remaining >= 0 && now < k->daily.hl_reset_at_ms
				                ? k->daily.hl_remaining
				                : -1,
				.burst_source = k->burst_src,
				.daily_source = k->daily_src,
				.n_waiting = k->n_waiting,
				.shared = k->mode == LK_SHARED,
			};
			int64_t blocked = MAX(k->burst.blocked_until_ms, k->daily.blocked_until_ms);
			ki.blocked_for_ms = blocked > now ? blocked - now : 0;
			fn(&ki, arg);
		}
	}
}
