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
 * count never undercounts; and, when HighLevel told us its own daily remaining (and reset),
 * never more than that remaining before that reset (or for a day when it named none).
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
	/* HighLevel's last word on this interval: at most hl_remaining more calls until
	 * hl_until_ms, when that word is stale. -1: none in force. */
	int64_t hl_remaining;
	int64_t hl_until_ms;
	uint64_t n_recorded; /* admissions recorded so far: the newest one's ticket */
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
	/*
	 * HighLevel's own daily view: calls it still allows until hl_reset_at_ms, as of its latest
	 * answer, less our admissions since. -1: unknown (or its reset has passed).
	 */
	int64_t hl_remaining;
	int64_t hl_reset_at_ms;
	int64_t blocked_until_ms; /* from a daily-scope 429; INT64_MIN: not blocked */
};

/* ---- burst ---- */
void burst_init(struct burst_window *b, uint32_t burst_max, uint32_t window_ms, uint32_t guard_ms);
void burst_deinit(struct burst_window *b);

/* Earliest t >= now_ms at which one more admission keeps the guarantee (blocks included). */
int64_t burst_next_ms(const struct burst_window *b, int64_t now_ms);

/*
 * Record one admission at now_ms (caller checked burst_next_ms); also spends one of HighLevel's
 * remaining while it is in force (as window_record does). Returns 0 or -ENOMEM.
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
 * HighLevel said `remaining` calls are left in its interval (X-RateLimit-Remaining), in an answer
 * arriving at now_ms while `uncertain` other calls of ours were in flight (HighLevel may not have
 * counted them yet). Until now + valid_ms, at most max(0, remaining - uncertain) more admissions
 * go; each admission spends one; a later answer replaces it; after valid_ms it is stale and the
 * ring alone rules again (the limiter then probes). This catches calls from outside the proxy,
 * which our ring cannot see, without inferring them from counts: HighLevel counts calls by when
 * they reach it, and ours near the edge of its interval may or may not be in its count.
 * Returns true when it holds the key tighter than the ring does now.
 */
bool burst_reconcile(struct burst_window *b, int64_t now_ms, int64_t remaining, uint32_t uncertain,
                     int64_t valid_ms);

/* Block until `until_ms` (keeps the later of the current and the new block). */
void burst_block(struct burst_window *b, int64_t until_ms);

/*
 * Drop admissions that no longer count at now_ms under the W in force; frees the ring when none
 * is left, shrinks it when mostly empty, and clears an expired block and an expired HighLevel
 * remaining (hl_remaining = -1). What is dropped is gone: a W learned later and larger cannot
 * count it (as with a Redis key that expired).
 */
void burst_trim(struct burst_window *b, int64_t now_ms);

/* True when nothing recorded counts any more and no block or HighLevel remaining is in force. */
bool burst_is_idle(const struct burst_window *b, int64_t now_ms);

/*
 * The admission with this ticket (b->n_recorded right after it was recorded) actually left at
 * sent_ms: move its ring entry there (never earlier), and later entries with it so the ring stays
 * sorted. Spaces the ring by real sends rather than decisions. Unknown or expired tickets: no-op.
 */
void burst_sent(struct burst_window *b, uint64_t ticket, int64_t sent_ms);

/* ---- daily ---- */
void daily_init(struct daily_window *d, uint32_t daily_max);
void daily_deinit(struct daily_window *d);

/* Earliest t >= now_ms at which one more admission keeps the daily guarantee (blocks included). */
int64_t daily_next_ms(const struct daily_window *d, int64_t now_ms);

/* Record `count` admissions at now_ms (also spends hl_remaining). Returns 0 or -ENOMEM. */
int daily_record(struct daily_window *d, int64_t now_ms, uint32_t count);

/* Admissions counted at now_ms (whole buckets touching the rolling day). */
uint64_t daily_used(const struct daily_window *d, int64_t now_ms);

/* New D from X-RateLimit-Limit-Daily; 0 leaves it unchanged. */
void daily_set_limit(struct daily_window *d, uint32_t daily_max);

/*
 * HighLevel said `remaining` calls are left today (X-RateLimit-Daily-Remaining of an answer that
 * arrived at now_ms) and, when reset_in_ms >= 0, that its day resets in reset_in_ms
 * (X-RateLimit-Daily-Reset). `uncertain` is how many of our admitted calls were still waiting for
 * their answer when this one came: HighLevel may or may not have counted them, and the daily
 * contract is conservative, so its view of now is max(0, remaining - uncertain).
 * That view REPLACES what was known: hl_remaining = view, hl_reset_at_ms = now + reset_in_ms, or
 * now + WINDOW_DAY_MS when no reset was sent (held at most a day). Each answer's view is fresh
 * and already holds everything HighLevel counted, so views neither add up nor only ever go down;
 * and nothing is recorded in the daily buckets (the count is ours alone). Admissions then spend
 * hl_remaining (daily_record, window_record); at 0 the key waits for hl_reset_at_ms, and the view
 * is forgotten then. A negative `remaining` (header absent) changes nothing. Returns 0 (int for
 * future use).
 */
int daily_reconcile(struct daily_window *d, int64_t now_ms, int64_t remaining, int64_t reset_in_ms,
                    uint32_t uncertain);

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

/*
 * Looking further ahead: the earliest time of the (k+1)-th admission from now, if the k before
 * it go at their earliest times. Exactly the time that k + 1 rounds of "check at t; if refused,
 * t = earliest_ms; record at t" (t starting at now_ms) would record the last admission at, with
 * no other event in between; k = 0 gives burst_next_ms / daily_next_ms / window_check. The
 * limiter uses it to answer at once a request that cannot be admitted before its deadline,
 * behind the k requests already queued. Cost: O(1) for the burst window, O(buckets held) when a
 * daily window is given.
 *
 * burst_slot_ms and daily_slot_ms see one window alone (window_check(b, NULL, .) and
 * window_check(NULL, d, .)); window_slot sees both together, which can be later than either
 * alone: a daily wait also delays the admissions the burst ring spaces after it.
 *
 * INT64_MAX when a daily window takes part and k >= its D: the (D+1)-th admission from now needs
 * one of those made from now on to stop counting first, always more than WINDOW_DAY_MS away (the
 * caller treats it as "a day or more"); and when a time saturates.
 *
 * window_slot's scope: WINDOW_OK when earliest_ms == now_ms; otherwise, with the precedence of
 * window_check, BLOCKED_DAY when the daily block ends then, DAILY when the daily window alone
 * would hold the (k+1)-th until then (daily_slot_ms), BLOCKED when the burst block ends then,
 * else BURST (the burst window, possibly spacing admissions that a daily wait had delayed).
 */
int64_t burst_slot_ms(const struct burst_window *b, int64_t now_ms, uint64_t k);
int64_t daily_slot_ms(const struct daily_window *d, int64_t now_ms, uint64_t k);
struct window_verdict window_slot(const struct burst_window *b, const struct daily_window *d,
                                  int64_t now_ms, uint64_t k);

#endif
