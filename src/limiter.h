/*
 * limiter.h: admission of requests per rate-limit key: admit now, queue until the key's next
 * free slot, or reject at once when that slot is past the request's deadline.
 *
 * Under saturation a key's slots free in clumps, one window apart, with nothing in flight in
 * between: an outside client may have spent budget meanwhile, and a whole clump sent blind would
 * meet a 429 for each call over it. So when a key's last answer is stale and queued requests are
 * due, one goes first (the probe); the rest follow its answer, which tells the budget left (or
 * after a probe timeout). A burst on an idle key is never held back: it goes at once.
 *
 * Keys come from classify.c: a request has a burst key and a daily key (the same one except for
 * Private Integration Tokens, whose daily budget is shared by every PIT of a resource). The
 * arithmetic of each key is window.c's; this module owns the keys (created on first use, evicted
 * once idle), their FIFO queues, one wake-up timer per key with waiters (no polling), the caps on
 * queues, and what HighLevel's answers teach (limits, remaining budget, 429 blocks).
 */
#ifndef GHLPROXY_LIMITER_H
#define GHLPROXY_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "window.h"

struct event_base;
struct config;
struct classify_result;
struct ratelimit_info;
struct limiter;
struct lkey;

enum limiter_outcome {
	LIMITER_ADMIT = 0,
	LIMITER_REJECT,      /* cannot be admitted before its deadline (burst or daily) */
	LIMITER_QUEUE_FULL,  /* per-key or global queue cap */
	LIMITER_UNAVAILABLE, /* shared backend down and on_redis_down = reject */
	LIMITER_SHUTDOWN,    /* the proxy is stopping and cannot admit it in time */
};

/* Where a key's limits in force came from. */
enum limiter_source { LIMIT_FROM_CONFIG = 0, LIMIT_FROM_UPSTREAM };

/* What the limiter knows of the key, for the answer's headers and the log. -1: unknown. */
struct limiter_verdict {
	enum limiter_outcome outcome;
	enum window_scope scope; /* why it waits or was rejected */
	int64_t retry_after_ms;  /* rejections: when to come back */
	int64_t wait_ms;         /* time spent queued */
	int64_t limit, remaining, interval_ms;
	int64_t daily_limit, daily_remaining, daily_reset_ms;
};

struct limiter_waiter;
typedef void (*limiter_cb)(struct limiter_waiter *w, const struct limiter_verdict *v, void *arg);

/* Embedded in the caller's request; the limiter links it into its key's queue. */
struct limiter_waiter {
	struct limiter_waiter *next, *prev;
	struct lkey *burst_key; /* the key whose queue it waits in */
	struct lkey *daily_key; /* may be the same */
	limiter_cb cb;
	void *arg;
	int64_t enqueued_ms;
	int64_t decided_ms; /* shared: local ms when the admitting Redis call was sent, else 0 */
	int64_t deadline_ms;
	uint64_t burst_ticket; /* its entry in the burst window, for limiter_sent */
	bool queued;
	bool admitted; /* counted, and in flight until its answer (limiter_feedback) */
	bool answered;
};

struct limiter_stats {
	uint64_t admitted_now;  /* admitted without waiting */
	uint64_t admitted_late; /* admitted after waiting */
	uint64_t rejected_burst, rejected_daily, queue_full, cancelled;
	uint64_t upstream_429;
	uint32_t n_waiting, n_keys;
};

/* NULL with a message in err (Redis URL, password file...). */
struct limiter *limiter_new(struct event_base *base, const struct config *cfg, char *err,
                            size_t err_len);
void limiter_free(struct limiter *l);

/* New defaults (limits.*) on reload: applied to keys whose limits still come from the config. */
void limiter_set_config(struct limiter *l, const struct config *cfg);

/*
 * Ask for admission of one request of `key` before deadline_ms (monotonic ms). Returns true when
 * decided at once (v is filled; cb is not called), false when the waiter is queued: cb then runs
 * exactly once, from the event loop, unless limiter_cancel() comes first. at_head: a request sent
 * again after an upstream 429 goes back to the head of its queue.
 */
bool limiter_acquire(struct limiter *l, const struct classify_result *key, int64_t deadline_ms,
                     bool at_head, struct limiter_waiter *w, limiter_cb cb, void *arg,
                     struct limiter_verdict *v);

/* Leave the queue (client gone). No callback after this. Harmless when not queued. */
void limiter_cancel(struct limiter_waiter *w);

/*
 * What the upstream answered to an admitted request: learn N, W and D, believe a lower
 * remaining budget, and block the key on a 429 until the time it implies.
 */
void limiter_feedback(struct limiter *l, struct limiter_waiter *w, int status,
                      const struct ratelimit_info *ri);

/* The admitted request's first byte reached the upstream's socket now: space by that. */
void limiter_sent(struct limiter *l, struct limiter_waiter *w);

/* Fill the header values of a key as they stand now (for answers the proxy makes itself). */
void limiter_describe(struct limiter *l, const struct limiter_waiter *w, struct limiter_verdict *v);

/*
 * Stop admitting anything that cannot be admitted before `until_ms`: every waiter whose slot is
 * later is answered LIMITER_SHUTDOWN now (drain on SIGTERM).
 */
void limiter_drain(struct limiter *l, int64_t until_ms);

void limiter_get_stats(const struct limiter *l, struct limiter_stats *st);

/* limits.backend = redis? And is Redis reachable now (else each key falls back)? */
bool limiter_uses_redis(const struct limiter *l);
bool limiter_shared_up(const struct limiter *l);
/* Redis answers (it may still be rejoining: deciding locally at its share for a moment). */
bool limiter_redis_reachable_now(const struct limiter *l);
uint32_t limiter_n_waiting(const struct limiter *l);

/* One key, as /status shows it. */
struct limiter_key_info {
	const char *name;
	uint32_t burst_max, window_ms, burst_used;
	uint32_t daily_max;
	uint64_t daily_used;
	int64_t hl_daily_remaining; /* -1: unknown */
	enum limiter_source burst_source, daily_source;
	uint32_t n_waiting;
	bool shared;            /* decided through Redis (else by this process alone) */
	int64_t blocked_for_ms; /* 0: not blocked */
};

/* Call fn for every live key. */
void limiter_foreach_key(struct limiter *l,
                         void (*fn)(const struct limiter_key_info *ki, void *arg), void *arg);

#endif
