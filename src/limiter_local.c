/*
 * limiter_local.c: admission decided in this process, with window.c's arithmetic on the key's own
 * windows (limits.backend = local, and every key while Redis cannot be reached).
 *
 * The guarantee is window.c's: at most N admissions in any W + guard, at most D in any rolling
 * 24 h, never past HighLevel's own remaining before it runs out, nothing while a 429 block holds.
 * It holds because every admission here goes through window_check() and window_record() at the
 * same instant, on one thread, so no two decisions can overlap.
 *
 * Under saturation a key's slots free in clumps one window apart, with nothing in flight in
 * between: an outside client may have spent budget meanwhile, and a whole clump sent blind would
 * meet a 429 for each call over it. So when HighLevel's last word on the key is stale, one queued
 * request goes first (the probe) and the rest follow its answer, which tells the budget left (or
 * a probe timeout). A burst on an idle key is never held back: it goes at once.
 */
#include <stdlib.h>
#include <string.h>

#include "limiter_internal.h"
#include "log.h"
#include "ratelimit_headers.h"
#include "util.h"

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
	return now - k->last_answer_ms <= lk_stale_ms(k);
}

/* A probe is out and its answer is awaited: the budget is not known well enough to send more. */
static bool probe_pending(const struct lkey *k, int64_t now)
{
	return k->n_inflight > 0 && !budget_known(k, now) &&
	       now < k->last_admit_ms + probe_timeout_ms(k);
}

bool local_acquire(struct limiter *l, struct lkey *b, struct lkey *d, struct limiter_waiter *w,
                   bool at_head, int64_t now, struct limiter_verdict *v)
{
	/* Nobody may jump the queue: with k waiting ahead, this one's slot is the (k+1)-th. */
	uint64_t ahead = at_head ? 0 : b->n_waiting;
	struct window_verdict wv = window_slot(&b->burst, &d->daily, now, ahead);

	if (ahead == 0 && wv.scope == WINDOW_OK && (at_head || !b->qhead)) {
		if (lk_record(w, now) < 0) {
			v->outcome = LIMITER_QUEUE_FULL;
			v->retry_after_ms = 1000;
			l->st.queue_full++;
			return true;
		}
		lk_describe(b, d, now, v);
		v->outcome = LIMITER_ADMIT;
		l->st.admitted_now++;
		return true;
	}
	if (wv.earliest_ms > lk_deadline(l, w)) {
		lk_fill_reject(b, d, now, wv, v);
		if (wv.earliest_ms <= w->deadline_ms)
			v->outcome = LIMITER_SHUTDOWN;
		else
			lk_count_reject(l, wv.scope);
		return true;
	}
	log_debug("queue key=%s scope=%d slot=%lld now=%lld ahead=%llu", b->name, wv.scope,
	          (long long)wv.earliest_ms, (long long)now, (unsigned long long)ahead);
	lk_q_insert(b, w, at_head);
	if (b->qhead == w) {
		struct window_verdict hv = window_check(&b->burst, &d->daily, now);
		lk_arm_timer(b, hv.scope == WINDOW_OK ? now : hv.earliest_ms, now);
	}
	return false;
}

void local_pump(struct lkey *k)
{
	int64_t now = util_now_ms();
	struct limiter_waiter *w;

	while ((w = k->qhead)) {
		struct window_verdict wv = window_check(&k->burst, &w->daily_key->daily, now);

		if (wv.scope == WINDOW_OK && probe_pending(k, now)) {
			/* Wait for the probe's answer, or its timeout, before the rest. */
			int64_t until = k->last_admit_ms + probe_timeout_ms(k);
			if (until <= lk_deadline(k->l, w)) {
				lk_arm_timer(k, until, now);
				return;
			}
		}
		if (wv.scope == WINDOW_OK) {
			if (lk_record(w, now) < 0) {
				lk_arm_timer(k, now + 10,
				             now); /* out of memory: try again shortly */
				return;
			}
			lk_admitted(w, now, true);
			continue;
		}
		if (wv.earliest_ms > lk_deadline(k->l, w)) {
			lk_reject(w, wv, now);
			continue;
		}
		log_debug("wait key=%s scope=%d until=%lld now=%lld inflight=%u", k->name, wv.scope,
		          (long long)wv.earliest_ms, (long long)now, k->n_inflight);
		lk_arm_timer(k, wv.earliest_ms, now);
		return;
	}
	lk_stop_timer(k);
}

void local_recheck(struct lkey *k, int64_t now)
{
	uint64_t pos = 0;

	for (struct limiter_waiter *w = k->qhead, *next; w; w = next) {
		next = w->next;
		struct window_verdict wv = window_slot(&k->burst, &w->daily_key->daily, now, pos);
		if (wv.earliest_ms > lk_deadline(k->l, w)) {
			lk_reject(w, wv, now);
			continue;
		}
		pos++;
	}
	if (k->qhead)
		local_pump(k);
}

unsigned local_learn(struct lkey *b, struct lkey *d, int status, const struct ratelimit_info *ri,
                     int64_t now)
{
	bool worse = false;
	unsigned flags = 0;

	/* The headers are the truth about this key's limits: follow them both ways (in a Redis
	 * fallback, this proxy's share of them). */
	uint32_t share = b->rd_share > 1 ? b->rd_share : 1;
	if (ri->max > 0 || ri->interval_ms > 0) {
		uint32_t old_n = b->burst.burst_max, old_w = b->burst.window_ms;
		uint32_t n = ri->max > 0 ? (uint32_t)MAX(ri->max / share, (int64_t)1) : 0;
		if (burst_set_limits(&b->burst, n,
		                     ri->interval_ms > 0 ? (uint32_t)ri->interval_ms : 0) == 0) {
			b->burst_src = LIMIT_FROM_UPSTREAM;
			worse |= b->burst.burst_max < old_n || b->burst.window_ms > old_w;
			if (b->burst.burst_max != old_n || b->burst.window_ms != old_w)
				flags |= LEARN_LIMITS;
		}
	}
	if (ri->daily_limit > 0) {
		uint32_t old = d->daily.daily_max;
		uint64_t dmax = (uint64_t)ri->daily_limit;
		if (d->rd_share > 1) {
			/* What is used, and this proxy's share of what is left. */
			uint64_t used = daily_used(&d->daily, now);
			dmax = used + (dmax > used ? dmax - used : 0) / d->rd_share;
		}
		daily_set_limit(&d->daily, (uint32_t)MIN(dmax, (uint64_t)UINT32_MAX));
		d->daily_src = LIMIT_FROM_UPSTREAM;
		worse |= d->daily.daily_max < old;
		if (d->daily.daily_max != old)
			flags |= LEARN_LIMITS;
	}
	/* Other clients outside the proxy spend the same budget, and our ring cannot see them:
	 * believe HighLevel's remaining for a while (our calls still in flight may not be in its
	 * count yet), then probe again. */
	if (ri->remaining >= 0) {
		b->seen_remaining = true;
		worse |= burst_reconcile(&b->burst, now, ri->remaining, b->n_inflight,
		                         lk_stale_ms(b));
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
	return flags | (worse ? LEARN_TIGHTER : 0);
}
