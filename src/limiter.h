/*
 * limiter.h: admission of requests per rate-limit key (placeholder seam: admits everything;
 * the limiter issue replaces the body, not this interface).
 */
#ifndef GHLPROXY_LIMITER_H
#define GHLPROXY_LIMITER_H

#include <stdbool.h>
#include <stdint.h>

#include "window.h"

struct event_base;
struct config;
struct classify_result;
struct ratelimit_info;
struct limiter;

enum limiter_outcome {
	LIMITER_ADMIT = 0,
	LIMITER_REJECT,      /* cannot be admitted before the deadline (burst or daily) */
	LIMITER_QUEUE_FULL,  /* per-key or global queue cap */
	LIMITER_UNAVAILABLE, /* shared backend down and on_redis_down = reject */
};

/* What the limiter knows of the key, for the answer's headers. -1: unknown. */
struct limiter_verdict {
	enum limiter_outcome outcome;
	enum window_scope
	        scope; /* for LIMITER_REJECT: WINDOW_BURST, WINDOW_DAILY, WINDOW_BLOCKED.. */
	int64_t retry_after_ms;
	int64_t wait_ms; /* time spent queued */
	int64_t limit, remaining, interval_ms;
	int64_t daily_limit, daily_remaining, daily_reset_ms;
};

struct limiter_waiter;
typedef void (*limiter_cb)(struct limiter_waiter *w, const struct limiter_verdict *v, void *arg);

/* Embedded in the caller's request; the limiter links it into its queues. */
struct limiter_waiter {
	struct limiter_waiter *next, *prev;
	void *key; /* the limiter's key entry */
	limiter_cb cb;
	void *arg;
	int64_t enqueued_ms;
	int64_t deadline_ms;
	uint64_t burst_seq, daily_seq; /* tickets of the admission, for feedback */
	bool queued;
	bool counted; /* admitted and counted */
};

struct limiter *limiter_new(struct event_base *base, const struct config *cfg);
void limiter_free(struct limiter *l);
void limiter_set_config(struct limiter *l, const struct config *cfg);

/*
 * Ask for admission of one request of `key` before deadline_ms (monotonic ms). Returns true when
 * decided at once (v is filled; cb is not called), false when the waiter is queued: cb then runs
 * exactly once, unless limiter_cancel() comes first. at_head: a request sent again after an
 * upstream 429 goes back to the head of its queue.
 */
bool limiter_acquire(struct limiter *l, const struct classify_result *key, int64_t deadline_ms,
                     bool at_head, struct limiter_waiter *w, limiter_cb cb, void *arg,
                     struct limiter_verdict *v);

/* Leave the queue (client gone). No callback after this. */
void limiter_cancel(struct limiter_waiter *w);

/* What the upstream answered for an admitted request: learn limits, reconcile, block on 429. */
void limiter_feedback(struct limiter *l, const struct classify_result *key,
                      const struct limiter_waiter *w, int status, const struct ratelimit_info *ri);

/* Requests waiting in all queues. */
uint32_t limiter_n_waiting(const struct limiter *l);

#endif
