/*
 * limiter.c: keys, queues and wake-up timers of the in-process limiter. See limiter.h.
 *
 * The guarantee is window.c's (at most N admissions in any W + guard, at most D in any rolling
 * 24 h, never past HighLevel's own daily remaining before its reset, nothing while a 429 block
 * holds): every admission here goes through window_check() and window_record() at the same
 * instant, on one thread, so no two decisions can overlap.
 *
 * Life of a waiter: limiter_acquire ─► admit now (queue empty and window_check OK)
 *                                   ─► reject now (its slot behind the queue is past its deadline)
 *                                   ─► queue (FIFO per burst key; a 429'd resend goes to the head)
 *   key timer at the head's earliest time ─► pump: admit heads while window_check says OK
 *   limiter_feedback (limits learned, remaining believed, 429 block) ─► recheck: answer at once
 *   every waiter whose slot moved past its deadline.
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
#include "log.h"
#include "ratelimit_headers.h"
#include "util.h"

#define SWEEP_INTERVAL_MS 5000
#define SWEEP_BATCH       4096 /* buckets of the table visited per sweep tick */

struct lkey {
	struct lkey *hnext;
	uint32_t hash;
	uint32_t n_refs; /* waiters (queued or in flight) that point here */
	struct burst_window burst;
	struct daily_window daily;
	enum limiter_source burst_src, daily_src;
	struct limiter_waiter *qhead, *qtail; /* waiters queued on this (burst) key */
	uint32_t n_waiting;
	uint32_t n_inflight;    /* admitted, answer not yet seen */
	bool seen_remaining;    /* the upstream tells X-RateLimit-Remaining for this key */
	int64_t last_answer_ms; /* last upstream answer for this key */
	int64_t last_admit_ms;
	struct event *timer; /* only while waiters exist */
	struct limiter *l;
	char name[];
};

struct limiter {
	struct event_base *base;
	uint32_t burst, window_ms, guard_ms, daily; /* defaults from limits.* */
	uint32_t max_queue_per_key, max_queue;
	struct lkey **tab;
	uint32_t tab_mask; /* n_buckets - 1 */
	uint32_t n_keys;
	uint32_t sweep_pos;
	struct event *sweep;
	struct limiter_stats st;
	int64_t drain_until_ms; /* 0: not draining */
};

static void pump(struct lkey *k);
static void recheck(struct lkey *k, int64_t now);

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
	uint32_t n = (l->tab_mask + 1) * 2;
	struct lkey **nt = calloc(n, sizeof(*nt));

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
		burst_trim(&k->burst, now);
		daily_trim(&k->daily, now);
		if (k->n_refs == 0 && k->n_waiting == 0 && burst_is_idle(&k->burst, now) &&
		    daily_is_idle(&k->daily, now)) {
			*pp = k->hnext;
			l->n_keys--;
			key_free(k);
			continue;
		}
		pp = &k->hnext;
	}
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct limiter *l = arg;
	int64_t now = util_now_ms();
	uint32_t n = MIN((uint32_t)SWEEP_BATCH, l->tab_mask + 1);
	struct timeval tv = { SWEEP_INTERVAL_MS / 1000, 0 };

	for (uint32_t j = 0; j < n; j++) {
		sweep_bucket(l, l->sweep_pos, now);
		l->sweep_pos = (l->sweep_pos + 1) & l->tab_mask;
	}
	event_add(l->sweep, &tv);
}

/* ---- queues ---- */

static void q_remove(struct lkey *k, struct limiter_waiter *w)
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

static void on_key_timer(evutil_socket_t fd, short what, void *arg)
{
	pump(arg);
}

static void arm_timer(struct lkey *k, int64_t at_ms, int64_t now)
{
	struct timeval tv;
	int64_t in_ms = at_ms - now;

	if (!k->timer) {
		k->timer = evtimer_new(k->l->base, on_key_timer, k);
		if (!k->timer)
			return; /* out of memory: the waiters time out at their deadline sweep */
	}
	if (in_ms < 0)
		in_ms = 0;
	tv.tv_sec = in_ms / 1000;
	tv.tv_usec = (in_ms % 1000) * 1000;
	event_add(k->timer, &tv);
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

/* ---- verdicts ---- */

static void describe(const struct lkey *b, const struct lkey *d, int64_t now,
                     struct limiter_verdict *v)
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

static void fill_reject(struct lkey *b, struct lkey *d, int64_t now, struct window_verdict wv,
                        struct limiter_verdict *v)
{
	describe(b, d, now, v);
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

static void count_reject(struct limiter *l, enum window_scope s)
{
	if (scope_is_daily(s))
		l->st.rejected_daily++;
	else
		l->st.rejected_burst++;
}

/* Record one admission of w at now. */
static int admit(struct limiter_waiter *w, int64_t now)
{
	if (window_record(&w->burst_key->burst, &w->daily_key->daily, now) < 0)
		return -ENOMEM;
	w->admitted = true;
	w->answered = false;
	w->burst_ticket = w->burst_key->burst.n_recorded;
	w->burst_key->n_inflight++;
	w->burst_key->last_admit_ms = now;
	if (w->daily_key != w->burst_key)
		w->daily_key->n_inflight++;
	log_debug("admit key=%s at=%lld waited=%lld queue=%u", w->burst_key->name, (long long)now,
	          (long long)(now - w->enqueued_ms), w->burst_key->n_waiting);
	return 0;
}

/* Answer a waiter that leaves its queue; it keeps its key references until released. */
static void answer(struct limiter_waiter *w, struct limiter_verdict *v, int64_t now)
{
	struct lkey *k = w->burst_key;

	if (w->queued)
		q_remove(k, w);
	v->wait_ms = now - w->enqueued_ms;
	w->cb(w, v, w->arg);
}

/* How old the last answer may be before the budget it told is doubted: a quarter window. */
static int64_t stale_ms(const struct lkey *k)
{
	return k->burst.window_ms / 4;
}

/* How long the rest of a clump waits for the probe's answer at most. */
static int64_t probe_timeout_ms(const struct lkey *k)
{
	return MIN((int64_t)1000, (int64_t)k->burst.window_ms / 2);
}

/*
 * Do we know the key's budget well enough to send more than one call now? Yes while HighLevel's
 * last remaining is in force (burst_reconcile), or, for an upstream that does not say, while its
 * last answer is recent.
 */
static bool budget_known(const struct lkey *k, int64_t now)
{
	if (k->seen_remaining)
		return k->burst.hl_remaining >= 0 && now < k->burst.hl_until_ms;
	return now - k->last_answer_ms <= stale_ms(k);
}

/* A probe is out and its answer is awaited: the budget is not known well enough to send more. */
static bool probe_pending(const struct lkey *k, int64_t now)
{
	return k->n_inflight > 0 && !budget_known(k, now) &&
	       now < k->last_admit_ms + probe_timeout_ms(k);
}

/*
 * Admit waiters at the head of k's queue while the window allows, answer those that can no
 * longer make their deadline, and set the timer for the next one.
 */
static void pump(struct lkey *k)
{
	struct limiter *l = k->l;
	int64_t now = util_now_ms();
	struct limiter_waiter *w;

	while ((w = k->qhead)) {
		struct window_verdict wv =
		        window_check(&w->burst_key->burst, &w->daily_key->daily, now);
		struct limiter_verdict v = { 0 };

		if (wv.scope == WINDOW_OK && probe_pending(k, now)) {
			/* Wait for the probe's answer, or its timeout, before the rest. */
			int64_t until = k->last_admit_ms + probe_timeout_ms(k);
			if (until <= w->deadline_ms) {
				arm_timer(k, until, now);
				return;
			}
		}
		if (wv.scope == WINDOW_OK) {
			if (admit(w, now) < 0) {
				arm_timer(k, now + 10, now); /* out of memory: try again shortly */
				return;
			}
			describe(w->burst_key, w->daily_key, now, &v);
			v.outcome = LIMITER_ADMIT;
			l->st.admitted_late++;
			answer(w, &v, now);
			continue;
		}
		if (wv.earliest_ms > w->deadline_ms) {
			fill_reject(w->burst_key, w->daily_key, now, wv, &v);
			count_reject(l, wv.scope);
			answer(w, &v, now);
			continue;
		}
		log_debug("wait key=%s scope=%d until=%lld now=%lld hl=%lld/%lld inflight=%u",
		          k->name, wv.scope, (long long)wv.earliest_ms, (long long)now,
		          (long long)k->burst.hl_remaining, (long long)k->burst.hl_until_ms,
		          k->n_inflight);
		arm_timer(k, wv.earliest_ms, now);
		return;
	}
	if (k->timer) {
		event_free(k->timer);
		k->timer = NULL;
	}
}

/*
 * Conditions got worse (a block, smaller limits, less budget): every waiter whose slot is now
 * past its deadline is answered at once instead of waiting for nothing; then pump.
 */
static void recheck(struct lkey *k, int64_t now)
{
	struct limiter *l = k->l;
	struct limiter_waiter *w = k->qhead, *next;
	uint64_t pos = 0;

	for (; w; w = next) {
		next = w->next;
		struct window_verdict wv =
		        window_slot(&w->burst_key->burst, &w->daily_key->daily, now, pos);
		int64_t limit =
		        l->drain_until_ms ? MIN(w->deadline_ms, l->drain_until_ms) : w->deadline_ms;
		if (wv.earliest_ms > limit) {
			struct limiter_verdict v = { 0 };
			fill_reject(w->burst_key, w->daily_key, now, wv, &v);
			if (wv.earliest_ms <= w->deadline_ms)
				v.outcome = LIMITER_SHUTDOWN;
			else
				count_reject(l, wv.scope);
			answer(w, &v, now);
			continue;
		}
		pos++;
	}
	if (k->qhead)
		pump(k);
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

	/* Nobody may jump the queue: with k waiting ahead, this one's slot is the (k+1)-th. */
	uint64_t ahead = at_head ? 0 : b->n_waiting;
	struct window_verdict wv = window_slot(&b->burst, &d->daily, now, ahead);
	int64_t limit = l->drain_until_ms ? MIN(deadline_ms, l->drain_until_ms) : deadline_ms;

	if (ahead == 0 && wv.scope == WINDOW_OK && (at_head || !b->qhead)) {
		if (admit(w, now) < 0) {
			v->outcome = LIMITER_QUEUE_FULL;
			v->retry_after_ms = 1000;
			l->st.queue_full++;
			return true;
		}
		describe(b, d, now, v);
		v->outcome = LIMITER_ADMIT;
		l->st.admitted_now++;
		return true;
	}
	if (wv.earliest_ms > limit) {
		fill_reject(b, d, now, wv, v);
		if (wv.earliest_ms <= deadline_ms) {
			v->outcome = LIMITER_SHUTDOWN;
		} else {
			count_reject(l, wv.scope);
		}
		return true;
	}
	if (b->n_waiting >= l->max_queue_per_key || l->st.n_waiting >= l->max_queue) {
		describe(b, d, now, v);
		v->outcome = LIMITER_QUEUE_FULL;
		v->scope = wv.scope;
		v->retry_after_ms = MAX(wv.earliest_ms - now, (int64_t)1000);
		l->st.queue_full++;
		return true;
	}
	log_debug("queue key=%s scope=%d slot=%lld now=%lld hl=%lld/%lld inflight=%u ahead=%llu",
	          b->name, wv.scope, (long long)wv.earliest_ms, (long long)now,
	          (long long)b->burst.hl_remaining, (long long)b->burst.hl_until_ms, b->n_inflight,
	          (unsigned long long)ahead);
	q_insert(b, w, at_head);
	if (b->qhead == w || at_head) {
		struct window_verdict hv = window_check(&b->burst, &d->daily, now);
		arm_timer(b, hv.scope == WINDOW_OK ? now : hv.earliest_ms, now);
	}
	return false;
}

void limiter_cancel(struct limiter_waiter *w)
{
	if (w->queued) {
		struct lkey *k = w->burst_key;
		bool was_head = k->qhead == w;
		q_remove(k, w);
		k->l->st.cancelled++;
		if (was_head && k->qhead)
			pump(k);
		else if (!k->qhead && k->timer) {
			event_free(k->timer);
			k->timer = NULL;
		}
	}
	release(w);
}

void limiter_feedback(struct limiter *l, struct limiter_waiter *w, int status,
                      const struct ratelimit_info *ri)
{
	struct lkey *b = w->burst_key, *d = w->daily_key;
	int64_t now = util_now_ms();
	bool worse = false;

	if (!b || !d || !w->admitted || w->answered)
		return;
	w->answered = true;
	b->n_inflight--;
	if (d != b)
		d->n_inflight--;
	b->last_answer_ms = now;
	/* The headers are the truth about this key's limits: follow them both ways. */
	if (ri->max > 0 || ri->interval_ms > 0) {
		uint32_t old_n = b->burst.burst_max, old_w = b->burst.window_ms;
		if (burst_set_limits(&b->burst, ri->max > 0 ? (uint32_t)ri->max : 0,
		                     ri->interval_ms > 0 ? (uint32_t)ri->interval_ms : 0) == 0) {
			b->burst_src = LIMIT_FROM_UPSTREAM;
			worse |= b->burst.burst_max < old_n || b->burst.window_ms > old_w;
		}
	}
	if (ri->daily_limit > 0) {
		uint32_t old = d->daily.daily_max;
		daily_set_limit(&d->daily, (uint32_t)MIN(ri->daily_limit, (int64_t)UINT32_MAX));
		d->daily_src = LIMIT_FROM_UPSTREAM;
		worse |= d->daily.daily_max < old;
	}
	/* Other clients outside the proxy spend the same budget, and our ring cannot see them:
	 * believe HighLevel's remaining for a while (our calls still in flight may not be in its
	 * count yet), then probe again. */
	if (ri->remaining >= 0) {
		b->seen_remaining = true;
		worse |= burst_reconcile(&b->burst, now, ri->remaining, b->n_inflight, stale_ms(b));
	}
	if (ri->daily_remaining >= 0) {
		int64_t hl_before = d->daily.hl_remaining;
		/* Our calls still in flight may or may not be in HighLevel's count: the daily
		 * contract takes the worse case. */
		daily_reconcile(&d->daily, now, ri->daily_remaining, ri->daily_reset_ms,
		                d->n_inflight);
		worse |= hl_before < 0 || d->daily.hl_remaining < hl_before;
	}
	if (status == 429) {
		bool is_daily = false;
		int64_t wait = ratelimit_429_wait_ms(ri, b->burst.window_ms, &is_daily);
		l->st.upstream_429++;
		if (is_daily)
			daily_block(&d->daily, now + wait);
		else
			burst_block(&b->burst, now + wait);
		worse = true;
		log_fields(LOG_WARNING, "upstream 429: key blocked",
		           (struct log_field[]){ LOG_STR("key", b->name),
		                                 LOG_STR("scope", is_daily ? "daily" : "burst"),
		                                 LOG_NUM("blocked_ms", wait) },
		           3);
	}
	if (worse) {
		recheck(b, now);
		if (d != b && d->qhead)
			recheck(d, now);
	} else if (b->qhead) {
		pump(b); /* the probe's answer: the rest of the clump may go */
	}
}

void limiter_sent(struct limiter *l, struct limiter_waiter *w)
{
	if (w->admitted && w->burst_key)
		burst_sent(&w->burst_key->burst, w->burst_ticket, util_now_ms());
}

void limiter_describe(struct limiter *l, const struct limiter_waiter *w, struct limiter_verdict *v)
{
	if (w->burst_key && w->daily_key)
		describe(w->burst_key, w->daily_key, util_now_ms(), v);
}

void limiter_drain(struct limiter *l, int64_t until_ms)
{
	int64_t now = util_now_ms();

	l->drain_until_ms = until_ms > 0 ? until_ms : 1;
	for (uint32_t i = 0; i <= l->tab_mask; i++) {
		for (struct lkey *k = l->tab[i], *next; k; k = next) {
			next = k->hnext;
			if (k->qhead)
				recheck(k, now);
		}
	}
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

struct limiter *limiter_new(struct event_base *base, const struct config *cfg)
{
	struct limiter *l = calloc(1, sizeof(*l));
	struct timeval tv = { SWEEP_INTERVAL_MS / 1000, 0 };

	if (!l)
		return NULL;
	l->base = base;
	apply_defaults(l, cfg);
	l->tab_mask = 255;
	l->tab = calloc(l->tab_mask + 1, sizeof(*l->tab));
	l->sweep = event_new(base, -1, 0, on_sweep, l);
	if (!l->tab || !l->sweep) {
		limiter_free(l);
		return NULL;
	}
	event_add(l->sweep, &tv);
	return l;
}

void limiter_set_config(struct limiter *l, const struct config *cfg)
{
	int64_t now = util_now_ms();

	apply_defaults(l, cfg);
	for (uint32_t i = 0; i <= l->tab_mask; i++) {
		for (struct lkey *k = l->tab[i], *next; k; k = next) {
			next = k->hnext;
			k->burst.guard_ms = l->guard_ms;
			if (k->burst_src == LIMIT_FROM_CONFIG)
				burst_set_limits(&k->burst, l->burst, l->window_ms);
			if (k->daily_src == LIMIT_FROM_CONFIG)
				daily_set_limit(&k->daily, l->daily);
			if (k->qhead)
				recheck(k, now);
		}
	}
}

void limiter_free(struct limiter *l)
{
	if (!l)
		return;
	for (uint32_t i = 0; l->tab && i <= l->tab_mask; i++) {
		for (struct lkey *k = l->tab[i], *next; k; k = next) {
			next = k->hnext;
			/* Callers cancel their waiters first; drop whatever is left silently. */
			while (k->qhead)
				q_remove(k, k->qhead);
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
			};
			int64_t blocked = MAX(k->burst.blocked_until_ms, k->daily.blocked_until_ms);
			ki.blocked_for_ms = blocked > now ? blocked - now : 0;
			fn(&ki, arg);
		}
	}
}
