/*
 * window.h: the limiter's arithmetic for one key, pure (no I/O, no clock: `now_ms` is always
 * an argument). Both backends keep this contract; the Redis Lua script mirrors it and runs the
 * same vectors (tests/vectors/window.vec).
 *
 * Times are int64 milliseconds on a clock the caller chooses (in process: CLOCK_MONOTONIC;
 * in Redis: TIME), never wall-clock dates.
 *
 * Burst guarantee: at most `burst_max` admissions in any interval of length
 * `window_ms + guard_ms`. Kept with a ring of the last N admission times: one more admission at
 * t is allowed iff fewer than N are recorded, or the oldest of the last N is at least
 * W + guard old at t.
 *
 * Daily guarantee: at most `daily_max` admissions in any rolling 24 h, counted in 5-minute
 * buckets. Every bucket touching (now - 24 h, now] is counted in full (289 buckets), so the
 * count never undercounts; and, when HighLevel told us its own daily remaining and reset, never
 * more than that remaining before that reset.
 *
 * Memory: the ring and the bucket list are allocated lazily and released by *_trim() once
 * everything in them has aged out, so an idle key costs its struct only.
 *
 * Limits of 0 (burst_max, daily_max) are taken as 1: a window that admits nothing is not a
 * state this module represents. burst_max is capped at WINDOW_MAX_BURST (the largest
 * X-RateLimit-Max we accept), which bounds a key's ring at 8 MB whatever the caller passes.
 * Blocks use INT64_MIN for "not blocked", so that negative clock values (a monotonic clock may
 * start anywhere) are never mistaken for a block in force. All time arithmetic saturates at
 * the int64 limits.
 *
 * A record at a time earlier than the newest one held (a clock that went back) is counted at
 * the newest time instead: later is the safe side, and the ring and deque stay sorted.
 *
 * Cost: checks and records are O(1) amortised (the ring's oldest, the deque's running total),
 * except that a const check walks the buckets that expired since the last record or trim; a
 * caller that checks a key often without recording should call daily_trim() now and then.
 */
#ifndef GHLPROXY_WINDOW_H
#define GHLPROXY_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

#define WINDOW_DAY_MS    (24LL * 3600 * 1000)
#define WINDOW_BUCKET_MS (5LL * 60 * 1000)
#define WINDOW_N_BUCKETS 289 /* buckets that touch any rolling 24 h */
#define WINDOW_MAX_BURST 1000000u
/* Two daily resets announced within this of each other are the same reset (network jitter). */
#define WINDOW_RESET_SLACK_MS (60LL * 1000)

enum window_scope {
	WINDOW_OK = 0,      /* may be admitted now */
	WINDOW_BURST,       /* burst window full until earliest_ms */
	WINDOW_DAILY,       /* daily budget spent until earliest_ms */
	WINDOW_BLOCKED,     /* blocked by an upstream 429 until earliest_ms */
	WINDOW_BLOCKED_DAY, /* blocked by a daily-scope upstream 429 until earliest_ms */
};

/* Burst state of one key. Zero-initialised memory plus burst_init() is a valid empty window. */
struct burst_window {
	int64_t *ring;      /* admission times, oldest at ring[head]; NULL until used, and after a
	                       trim that empties it */
	uint32_t cap;       /* allocated slots */
	uint32_t len;       /* recorded admissions, <= burst_max */
	uint32_t head;      /* index of the oldest */
	uint32_t burst_max; /* N */
	uint32_t window_ms; /* W */
	uint32_t guard_ms;
	int64_t blocked_until_ms; /* from a burst-scope 429; INT64_MIN: not blocked */
	uint64_t seq;             /* admissions recorded by burst_record() so far */
};

struct daily_bucket {
	int64_t idx; /* floor(t / WINDOW_BUCKET_MS) */
	uint32_t count;
};

/* Daily state of one key: a deque of non-empty buckets, oldest first. */
struct daily_window {
	struct daily_bucket *b;
	uint32_t cap, len, head;
	uint32_t daily_max; /* D */
	uint64_t total;     /* sum of counts in the deque */
	/* HighLevel's own daily view: remaining calls until hl_reset_at_ms. -1: unknown. */
	int64_t hl_remaining;
	int64_t hl_reset_at_ms;
	int64_t blocked_until_ms; /* from a daily-scope 429; INT64_MIN: not blocked */
	uint64_t seq;             /* admissions recorded by daily_record() so far */
};

/* ---- burst ---- */
void burst_init(struct burst_window *b, uint32_t burst_max, uint32_t window_ms, uint32_t guard_ms);
void burst_deinit(struct burst_window *b);

/* Earliest t >= now_ms at which one more admission keeps the guarantee (blocks included). */
int64_t burst_next_ms(const struct burst_window *b, int64_t now_ms);

/*
 * Record one admission at now_ms and bump b->seq (the caller keeps b->seq as the call's ticket
 * for burst_reconcile). Caller checked burst_next_ms() <= now_ms. Returns 0 or -ENOMEM.
 */
int burst_record(struct burst_window *b, int64_t now_ms);

/* Admissions counted at now_ms: those in (now - W - guard, now]. */
uint32_t burst_used(const struct burst_window *b, int64_t now_ms);

/*
 * New N and W learned from X-RateLimit-Max / -Interval-Milliseconds. Keeps the newest
 * min(len, N) admissions. 0 leaves a value unchanged. Returns 0 or -ENOMEM.
 */
int burst_set_limits(struct burst_window *b, uint32_t burst_max, uint32_t window_ms);

/*
 * HighLevel said `remaining` calls are left in its interval, in the answer to the call whose
 * ticket (b->seq right after its burst_record) is `seq`. Calls admitted after it may not have
 * been counted by HighLevel yet, so its view of now is remaining - (b->seq - seq). When that is
 * below what we believe (burst_max - burst_used(now)), record the difference as admissions at
 * now_ms (conservative: they expire later than the real ones; they do not bump seq). A view
 * below 0 counts as 0; a ticket not issued yet (seq > b->seq) assumes no later calls; a
 * negative `remaining` (absent) does nothing. Returns how many were recorded.
 */
uint32_t burst_reconcile(struct burst_window *b, int64_t now_ms, int64_t remaining, uint64_t seq);

/* Block until `until_ms` (keeps the later of the current and the new block). */
void burst_block(struct burst_window *b, int64_t until_ms);

/*
 * Drop admissions that no longer count at now_ms under the W in force; frees the ring when none
 * is left, shrinks it when mostly empty, and clears an expired block. What is dropped is gone:
 * a W learned later and larger cannot count it (as with a Redis key that expired).
 */
void burst_trim(struct burst_window *b, int64_t now_ms);

/* True when nothing recorded counts any more and no block is in force. */
bool burst_is_idle(const struct burst_window *b, int64_t now_ms);

/* ---- daily ---- */
void daily_init(struct daily_window *d, uint32_t daily_max);
void daily_deinit(struct daily_window *d);

/* Earliest t >= now_ms at which one more admission keeps the daily guarantee (blocks included). */
int64_t daily_next_ms(const struct daily_window *d, int64_t now_ms);

/*
 * Record `count` admissions at now_ms (also spends hl_remaining; bumps d->seq by count, the
 * caller keeps d->seq as the call's ticket). Returns 0 or -ENOMEM.
 */
int daily_record(struct daily_window *d, int64_t now_ms, uint32_t count);

/* Admissions counted at now_ms (whole buckets touching the rolling day). */
uint64_t daily_used(const struct daily_window *d, int64_t now_ms);

/* New D from X-RateLimit-Limit-Daily; 0 leaves it unchanged. */
void daily_set_limit(struct daily_window *d, uint32_t daily_max);

/*
 * HighLevel said `remaining` calls are left today (X-RateLimit-Daily-Remaining), and optionally
 * reset_in_ms until its reset (X-RateLimit-Daily-Reset; < 0 when not sent), in the answer to the
 * call with ticket `seq`. Its view of now is remaining - (d->seq - seq).
 * With a reset: hl_remaining = that view (never raised above a lower value already known for
 * the same reset, i.e. one within WINDOW_RESET_SLACK_MS; the later of the two is kept),
 * hl_reset_at_ms = now + reset_in_ms; admissions spend it; it is forgotten at the reset. Without a
 * reset: when the view is below what we believe (D - daily_used(now)), record the difference as
 * admissions at now_ms (without bumping seq), and lower a known hl_remaining still in force to the
 * view. Returns 0 or -ENOMEM (nothing recorded then).
 */
int daily_reconcile(struct daily_window *d, int64_t now_ms, int64_t remaining, int64_t reset_in_ms,
                    uint64_t seq);

/* Block until `until_ms` (keeps the later of the current and the new block). */
void daily_block(struct daily_window *d, int64_t until_ms);

/*
 * Drop buckets that no longer count at now_ms; frees the deque when none is left, and forgets a
 * passed HighLevel reset and an expired block.
 */
void daily_trim(struct daily_window *d, int64_t now_ms);

/* True when no bucket counts any more, no block is in force and no HighLevel reset pending. */
bool daily_is_idle(const struct daily_window *d, int64_t now_ms);

/* ---- both ---- */
struct window_verdict {
	enum window_scope scope; /* WINDOW_OK, or what holds the request back longest */
	int64_t earliest_ms;     /* now_ms when WINDOW_OK */
};

/*
 * Check a key whose burst and daily state may be distinct objects (PITs: the daily state is
 * shared by the resource's PITs) or one key's pair; either may be NULL. The verdict names the
 * reason that ends last; on a tie, BLOCKED_DAY > DAILY > BLOCKED > BURST.
 */
struct window_verdict window_check(const struct burst_window *b, const struct daily_window *d,
                                   int64_t now_ms);

/* Record one admission in both. Returns 0 or -ENOMEM (nothing recorded then). */
int window_record(struct burst_window *b, struct daily_window *d, int64_t now_ms);

#endif
