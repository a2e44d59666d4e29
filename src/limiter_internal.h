/*
 * limiter_internal.h: what limiter.c (keys, queues, the public API), limiter_local.c (decisions
 * in this process) and limiter_redis.c (decisions shared through Redis) share. Nothing outside
 * those three files includes it.
 */
#ifndef GHLPROXY_LIMITER_INTERNAL_H
#define GHLPROXY_LIMITER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "limiter.h"
#include "window.h"

struct event;
struct limiter_redis;
struct ratelimit_info;

/* Who decides a key's admissions right now. */
enum lkey_mode {
	LK_LOCAL = 0, /* this process alone (limits.backend = local, or Redis fallback) */
	LK_SHARED,    /* the Redis script */
};

struct lkey {
	struct lkey *hnext;
	uint32_t hash;
	uint32_t n_refs; /* waiters (queued or in flight), rd_daily of burst keys: here */
	/*
	 * Local mode: the key's windows. Shared mode: a mirror of Redis' state, in this process's
	 * clock, as of the last script reply (what /status shows, and what slots ahead are
	 * computed from); on fallback they become the local windows again.
	 */
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

	/* Shared mode (limiter_redis.c). */
	enum lkey_mode mode;
	bool rd_busy;          /* an admit or merge call about this key is out: one at a time */
	uint32_t rd_calls;     /* script calls out that refer to this key (it must stay) */
	bool rd_again;         /* decide again when it comes back */
	bool rd_share_pending; /* in fallback: share decisions again once all is merged */
	int64_t rd_fb_since;   /* fallback start (local ms), 0: never in fallback */
	uint32_t rd_fb_daily;  /* admissions made during fallback, for the daily count */
	uint32_t rd_share; /* in fallback: the live proxies its limits are divided by (0: none) */
	uint64_t rd_merged_n;  /* burst.n_recorded when Redis last had everything */
	struct lkey *rd_daily; /* the daily key of this burst key's waiters (for script calls), held
	                        * by a reference while this key lives (NULL, or this key: none) */

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
	int64_t drain_until_ms;      /* 0: not draining */
	struct limiter_redis *redis; /* NULL: limits.backend = local */
};

/* ---- limiter.c: queue and verdict helpers for the deciders ---- */
void lk_q_insert(struct lkey *k, struct limiter_waiter *w, bool at_head);
void lk_q_remove(struct lkey *k, struct limiter_waiter *w);
void lk_arm_timer(struct lkey *k, int64_t at_ms, int64_t now);
void lk_stop_timer(struct lkey *k);
/* Record an admission of w in its key's windows at now (both modes: in shared mode the mirror
 * learns it at once). */
int lk_record(struct limiter_waiter *w, int64_t now);
/* Answer a waiter: out of the queue, then its callback (which may re-enter the limiter). */
void lk_answer(struct limiter_waiter *w, struct limiter_verdict *v, int64_t now);
void lk_admitted(struct limiter_waiter *w, int64_t now, bool waited);
void lk_reject(struct limiter_waiter *w, struct window_verdict wv, int64_t now);
void lk_describe(const struct lkey *b, const struct lkey *d, int64_t now,
                 struct limiter_verdict *v);
void lk_fill_reject(const struct lkey *b, const struct lkey *d, int64_t now,
                    struct window_verdict wv, struct limiter_verdict *v);
void lk_count_reject(struct limiter *l, enum window_scope s);
/* The admission deadline in force for w (its own, or the drain's). */
int64_t lk_deadline(const struct limiter *l, const struct limiter_waiter *w);
/* Every key, for mode switches. */
void lk_foreach(struct limiter *l, void (*fn)(struct lkey *k, void *arg), void *arg);
/* How old the budget HighLevel told may get before it is doubted: a quarter window. */
int64_t lk_stale_ms(const struct lkey *k);

/* ---- limiter_local.c: decisions in this process ---- */
/* A new waiter for b (queued or not): decide now when possible. true: answered in v. */
bool local_acquire(struct limiter *l, struct lkey *b, struct lkey *d, struct limiter_waiter *w,
                   bool at_head, int64_t now, struct limiter_verdict *v);
/* Admit heads while allowed, answer the hopeless, arm the wake-up. */
void local_pump(struct lkey *k);
/* Conditions got worse: answer at once whoever can no longer make it, then pump. */
void local_recheck(struct lkey *k, int64_t now);
/* What an upstream answer changed in the key's windows. */
enum { LEARN_TIGHTER = 1, LEARN_LIMITS = 2 };
/* Apply an upstream answer to the key's windows; returns LEARN_* flags. */
unsigned local_learn(struct lkey *b, struct lkey *d, int status, const struct ratelimit_info *ri,
                     int64_t now);

/* ---- limiter_redis.c: decisions through Redis ---- */
struct limiter_redis *limiter_redis_new(struct limiter *l, const struct config *cfg, char *err,
                                        size_t err_len);
void limiter_redis_free(struct limiter_redis *r);
void limiter_redis_set_config(struct limiter_redis *r, const struct config *cfg);
/* Queue work for key b (a waiter was queued, or the wake-up fired). */
void limiter_redis_pump(struct lkey *b);
/* Share what an upstream answer taught (after local_learn applied it to the mirror). */
void limiter_redis_feedback(struct lkey *b, struct lkey *d, int status,
                            const struct ratelimit_info *ri, uint32_t uncertain, unsigned learned);
/* A local admission of k was recorded (carried over to Redis at once while rejoining). */
void limiter_redis_recorded(struct lkey *k);
/* A shared admission reached the socket: tell Redis when it was late (see limiter_redis.c). */
void limiter_redis_sent(struct lkey *b, struct limiter_waiter *w, int64_t now);
/* Redis is unreachable: the key decides alone, at its share. */
void limiter_redis_fallback(struct lkey *k);
/* The key must stay: a script call about it is out. */
bool limiter_redis_key_busy(const struct lkey *k);
bool limiter_redis_up(const struct limiter_redis *r);
bool limiter_redis_reachable(const struct limiter_redis *r);
/* Known to be unreachable (not merely "not reached yet" at start). */
bool limiter_redis_down(const struct limiter_redis *r);
bool limiter_redis_reject_when_down(const struct limiter_redis *r);

#endif
