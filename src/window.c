/*
 * window.c: the limiter's arithmetic for one key (see window.h for the contract).
 *
 * Owns two pieces of state per key and nothing else:
 * - struct burst_window: a ring of the last N admission times, oldest at ring[head], kept in
 *   non-decreasing order (a record earlier than the newest is moved up to the newest, which only
 *   makes it expire later);
 * - struct daily_window: a deque of non-empty 5-minute buckets, oldest first, strictly
 *   increasing idx, with a running total of their counts; plus HighLevel's own daily remaining
 *   and reset, and a daily-scope block.
 * Data enters as (now_ms, event) calls from limiter_local.c (and the vector tests); it leaves
 * as earliest admission times and counts. No I/O, no clock, no globals.
 *
 * Arithmetic on times saturates instead of overflowing, and every "is it still counted"
 * comparison is made on unsigned distances, so any int64 clock value (negative, near the
 * limits) is safe. Bucket indices use a floor division that is correct for negative times.
 */
#include "window.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RING_MIN_CAP  8u
#define DEQUE_MIN_CAP 4u

/* ---- helpers on times ---- */

/* a + b for b >= 0, saturating at INT64_MAX ("never" in practice). */
static int64_t sat_add(int64_t a, int64_t b)
{
	if (b > 0 && a > INT64_MAX - b)
		return INT64_MAX;
	return a + b;
}

/*
 * True when an event at t still counts at now for a span of span_ms, i.e. t > now - span_ms.
 * Events after now count (a clock that went back must not free capacity early). Computed on
 * the unsigned distance so that now - span never overflows.
 */
static bool still_counts(int64_t t, int64_t now, uint64_t span_ms)
{
	if (t > now)
		return true;
	return (uint64_t)now - (uint64_t)t < span_ms;
}

/* floor(a / b) for b > 0, also for negative a (C division truncates toward zero). */
static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	if (a % b != 0 && a < 0)
		q--;
	return q;
}

/* ---- burst ---- */

/* N in force; 0 is taken as 1 (and a struct filled by hand is capped here too). */
static uint32_t burst_limit(const struct burst_window *b)
{
	if (!b->burst_max)
		return 1;
	return b->burst_max < WINDOW_MAX_BURST ? b->burst_max : WINDOW_MAX_BURST;
}

/* A new N as stored: 1..WINDOW_MAX_BURST. */
static uint32_t clamp_burst(uint32_t n)
{
	if (!n)
		return 1;
	return n < WINDOW_MAX_BURST ? n : WINDOW_MAX_BURST;
}

static uint64_t burst_span_ms(const struct burst_window *b)
{
	return (uint64_t)b->window_ms + b->guard_ms;
}

/* Slot of the i-th oldest entry (i < cap). */
static uint32_t ring_pos(const struct burst_window *b, uint32_t i)
{
	uint64_t p = (uint64_t)b->head + i;

	if (p >= b->cap)
		p -= b->cap;
	return (uint32_t)p;
}

static int64_t ring_at(const struct burst_window *b, uint32_t i)
{
	return b->ring[ring_pos(b, i)];
}

/* Move the entries into a fresh array of new_cap (>= len) slots, oldest first. */
static int ring_realloc(struct burst_window *b, uint32_t new_cap)
{
	int64_t *r = malloc((size_t)new_cap * sizeof(*r));

	if (!r)
		return -ENOMEM;
	for (uint32_t i = 0; i < b->len; i++)
		r[i] = ring_at(b, i);
	free(b->ring);
	b->ring = r;
	b->cap = new_cap;
	b->head = 0;
	return 0;
}

/*
 * Make room for `more` entries beyond len, as far as N allows (entries past N overwrite the
 * oldest and need no room). Capacity doubles, so growth is O(1) amortised and an idle or quiet
 * key with a large N holds only what it uses.
 */
static int ring_reserve(struct burst_window *b, uint32_t more)
{
	uint64_t want = (uint64_t)b->len + more;
	uint64_t new_cap;

	if (want > burst_limit(b))
		want = burst_limit(b);
	if (want <= b->cap)
		return 0;
	new_cap = b->cap ? (uint64_t)b->cap * 2 : RING_MIN_CAP;
	if (new_cap < want)
		new_cap = want;
	if (new_cap > burst_limit(b))
		new_cap = burst_limit(b);
	return ring_realloc(b, (uint32_t)new_cap);
}

/* Append t after ring_reserve(b, 1); a full ring drops its oldest. Never fails. */
static void ring_push(struct burst_window *b, int64_t t)
{
	if (b->len > 0 && t < ring_at(b, b->len - 1))
		t = ring_at(b, b->len - 1); /* keep the ring sorted; later is the safe side */
	if (b->len >= burst_limit(b)) {
		b->head = ring_pos(b, 1);
		b->len--;
	}
	b->ring[ring_pos(b, b->len)] = t;
	b->len++;
}

void burst_init(struct burst_window *b, uint32_t burst_max, uint32_t window_ms, uint32_t guard_ms)
{
	memset(b, 0, sizeof(*b));
	b->burst_max = clamp_burst(burst_max);
	b->window_ms = window_ms;
	b->guard_ms = guard_ms;
	b->blocked_until_ms = INT64_MIN;
}

void burst_deinit(struct burst_window *b)
{
	if (!b)
		return;
	free(b->ring);
	b->ring = NULL;
	b->cap = b->len = b->head = 0;
}

/*
 * THE BURST GUARANTEE: at most N admissions in any interval of length W + guard.
 * The ring holds the newest (up to) N admissions in order. One more may go at t iff fewer than
 * N are recorded or the oldest of the last N, o, is at least W + guard old (t - o >= W + guard).
 * So for consecutive admissions ts[i] <= ts[i+1] <= ...: ts[i+N] - ts[i] >= W + guard, and any
 * half-open interval of length W + guard holds at most N of them. The earliest time for one
 * more is therefore exactly o + W + guard (not later: utilisation stays at N per W + guard).
 */
static int64_t burst_window_earliest(const struct burst_window *b, int64_t now)
{
	uint32_t n = burst_limit(b);

	if (b->len < n)
		return now;
	return sat_add(ring_at(b, b->len - n), (int64_t)burst_span_ms(b));
}

int64_t burst_next_ms(const struct burst_window *b, int64_t now_ms)
{
	int64_t t = burst_window_earliest(b, now_ms);

	if (t < now_ms)
		t = now_ms;
	if (b->blocked_until_ms > t)
		t = b->blocked_until_ms;
	return t;
}

int burst_record(struct burst_window *b, int64_t now_ms)
{
	int rc = ring_reserve(b, 1);

	if (rc < 0)
		return rc;
	ring_push(b, now_ms);
	b->seq++;
	return 0;
}

/* Index of the oldest entry that still counts at now (len when none): a binary search. */
static uint32_t burst_first_counting(const struct burst_window *b, int64_t now)
{
	uint32_t lo = 0, hi = b->len;
	uint64_t span = burst_span_ms(b);

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (still_counts(ring_at(b, mid), now, span))
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

uint32_t burst_used(const struct burst_window *b, int64_t now_ms)
{
	return b->len - burst_first_counting(b, now_ms);
}

int burst_set_limits(struct burst_window *b, uint32_t burst_max, uint32_t window_ms)
{
	if (window_ms)
		b->window_ms = window_ms;
	if (!burst_max)
		return 0;
	b->burst_max = clamp_burst(burst_max);
	if (b->len > b->burst_max) {
		/* Keep the newest N: they decide the next admission under the new N. */
		b->head = ring_pos(b, b->len - b->burst_max);
		b->len = b->burst_max;
	}
	/* Give back what the smaller N can never use; failing to is harmless. */
	if (b->cap > b->burst_max)
		(void)ring_realloc(b, b->burst_max);
	return 0;
}

uint32_t burst_reconcile(struct burst_window *b, int64_t now_ms, int64_t remaining, uint64_t seq)
{
	uint64_t later, view, used, believed, k;

	if (remaining < 0)
		return 0;
	/* Admissions after the answered call: HighLevel may not have counted them yet. */
	later = b->seq > seq ? b->seq - seq : 0;
	view = later >= (uint64_t)remaining ? 0 : (uint64_t)remaining - later;
	used = burst_used(b, now_ms);
	believed = burst_limit(b) > used ? burst_limit(b) - used : 0;
	if (view >= believed)
		return 0;
	k = believed - view; /* used + k <= N: pushes only overwrite entries that no longer count */
	if (ring_reserve(b, (uint32_t)k) < 0) {
		/* Take what fits: fewer phantoms is less safe, but each one still helps. */
		k = b->cap > b->len ? b->cap - b->len : 0;
	}
	for (uint64_t i = 0; i < k; i++)
		ring_push(b, now_ms);
	return (uint32_t)k;
}

void burst_block(struct burst_window *b, int64_t until_ms)
{
	if (until_ms > b->blocked_until_ms)
		b->blocked_until_ms = until_ms;
}

void burst_trim(struct burst_window *b, int64_t now_ms)
{
	uint32_t drop = burst_first_counting(b, now_ms);

	if (b->blocked_until_ms <= now_ms)
		b->blocked_until_ms = INT64_MIN;
	if (drop) {
		b->head = b->len > drop ? ring_pos(b, drop) : 0;
		b->len -= drop;
	}
	if (b->len == 0) {
		free(b->ring);
		b->ring = NULL;
		b->cap = b->head = 0;
	} else if (b->cap > RING_MIN_CAP && b->len <= b->cap / 4) {
		uint32_t c = b->cap / 2;

		(void)ring_realloc(b, c > RING_MIN_CAP ? c : RING_MIN_CAP);
	}
}

bool burst_is_idle(const struct burst_window *b, int64_t now_ms)
{
	if (b->blocked_until_ms > now_ms)
		return false;
	return b->len == 0 || !still_counts(ring_at(b, b->len - 1), now_ms, burst_span_ms(b));
}

/* ---- daily ---- */

/* D in force; 0 is taken as 1. */
static uint32_t daily_limit(const struct daily_window *d)
{
	return d->daily_max ? d->daily_max : 1;
}

/* Oldest bucket index counted at now: every bucket touching (now - 24 h, now]. */
static int64_t daily_first_idx(int64_t now)
{
	return floor_div(now, WINDOW_BUCKET_MS) - (WINDOW_N_BUCKETS - 1);
}

/*
 * First time at which bucket idx no longer counts: (idx + 1) * B + 24 h, i.e. the time from which
 * daily_first_idx() exceeds idx. Saturates at INT64_MAX.
 */
static int64_t bucket_end_ms(int64_t idx)
{
	if (idx > INT64_MAX / WINDOW_BUCKET_MS - WINDOW_N_BUCKETS)
		return INT64_MAX;
	return (idx + WINDOW_N_BUCKETS) * WINDOW_BUCKET_MS;
}

static uint32_t deque_pos(const struct daily_window *d, uint32_t i)
{
	uint64_t p = (uint64_t)d->head + i;

	if (p >= d->cap)
		p -= d->cap;
	return (uint32_t)p;
}

static struct daily_bucket *deque_at(const struct daily_window *d, uint32_t i)
{
	return &d->b[deque_pos(d, i)];
}

/* Buckets at the head that no longer count at now (they are sorted by idx). */
static uint32_t daily_n_expired(const struct daily_window *d, int64_t now)
{
	int64_t first = daily_first_idx(now);
	uint32_t i = 0;

	while (i < d->len && deque_at(d, i)->idx < first)
		i++;
	return i;
}

/* Drop expired buckets from the head (memory is kept; see daily_trim). */
static void daily_drop_expired(struct daily_window *d, int64_t now)
{
	uint32_t n = daily_n_expired(d, now);

	for (uint32_t i = 0; i < n; i++)
		d->total -= deque_at(d, i)->count;
	d->head = d->len > n ? deque_pos(d, n) : 0;
	d->len -= n;
}

static int deque_realloc(struct daily_window *d, uint32_t new_cap)
{
	struct daily_bucket *nb = malloc((size_t)new_cap * sizeof(*nb));

	if (!nb)
		return -ENOMEM;
	for (uint32_t i = 0; i < d->len; i++)
		nb[i] = *deque_at(d, i);
	free(d->b);
	d->b = nb;
	d->cap = new_cap;
	d->head = 0;
	return 0;
}

/*
 * Ready the deque to take admissions at now: drop expired buckets, and make room for a new
 * bucket when now's bucket is not the newest. After dropping, every bucket has idx in
 * [first, newest], so at most WINDOW_N_BUCKETS are held and the deque never grows past that.
 */
static int daily_reserve(struct daily_window *d, int64_t now)
{
	int64_t idx = floor_div(now, WINDOW_BUCKET_MS);
	uint32_t c;

	daily_drop_expired(d, now);
	if (d->len > 0 && deque_at(d, d->len - 1)->idx >= idx)
		return 0;
	if (d->len < d->cap)
		return 0;
	c = d->cap ? d->cap * 2 : DEQUE_MIN_CAP;
	if (c < d->len + 1)
		c = d->len + 1;
	return deque_realloc(d, c);
}

/* Add count to now's bucket after daily_reserve(). Never fails. */
static void daily_add(struct daily_window *d, int64_t now, uint32_t count)
{
	int64_t idx = floor_div(now, WINDOW_BUCKET_MS);
	struct daily_bucket *last = d->len ? deque_at(d, d->len - 1) : NULL;

	if (last && last->idx >= idx) {
		/* Now's bucket, or a later one when the clock went back: later is the safe side. */
		uint32_t room = UINT32_MAX - last->count;
		uint32_t add =
		        count < room ? count : room; /* a full bucket already exceeds any D */

		last->count += add;
		d->total += add;
		return;
	}
	d->b[deque_pos(d, d->len)] = (struct daily_bucket){ .idx = idx, .count = count };
	d->len++;
	d->total += count;
}

static bool daily_hl_in_force(const struct daily_window *d, int64_t now)
{
	return d->hl_remaining >= 0 && now < d->hl_reset_at_ms;
}

void daily_init(struct daily_window *d, uint32_t daily_max)
{
	memset(d, 0, sizeof(*d));
	d->daily_max = daily_max ? daily_max : 1;
	d->hl_remaining = -1;
	d->hl_reset_at_ms = 0;
	d->blocked_until_ms = INT64_MIN;
}

void daily_deinit(struct daily_window *d)
{
	if (!d)
		return;
	free(d->b);
	d->b = NULL;
	d->cap = d->len = d->head = 0;
	d->total = 0;
}

uint64_t daily_used(const struct daily_window *d, int64_t now_ms)
{
	uint64_t used = d->total;
	uint32_t n = daily_n_expired(d, now_ms);

	for (uint32_t i = 0; i < n; i++)
		used -= deque_at(d, i)->count;
	return used;
}

/*
 * THE DAILY GUARANTEE: at most D admissions in any rolling 24 h.
 * At any t, daily_used(t) counts every bucket touching (t - 24 h, t] in full, so it is >= the
 * admissions in (t - 24 h, t]. One more is admitted at t only when daily_used(t) <= D - 1, so
 * right after it (t - 24 h, t] holds at most D; any 24 h interval is covered by the one ending
 * at its last admission. When full, the earliest time is when enough of the oldest counted
 * buckets have stopped counting (bucket i at (i + 1) * B + 24 h) to bring the count to D - 1.
 * HighLevel's own remaining, when known and not yet reset, is a second cap: at 0 the key waits
 * for HighLevel's reset.
 */
static int64_t daily_count_earliest(const struct daily_window *d, int64_t now)
{
	uint64_t used = daily_used(d, now);
	uint64_t excess, freed = 0;

	if (used < daily_limit(d))
		return now;
	excess = used - daily_limit(d) + 1;
	for (uint32_t i = daily_n_expired(d, now); i < d->len; i++) {
		freed += deque_at(d, i)->count;
		if (freed >= excess)
			return bucket_end_ms(deque_at(d, i)->idx);
	}
	return INT64_MAX; /* unreachable: the counted buckets sum to used >= excess */
}

/* The later of the two daily caps: our own count and HighLevel's remaining. */
static int64_t daily_earliest(const struct daily_window *d, int64_t now)
{
	int64_t t = daily_count_earliest(d, now);

	if (daily_hl_in_force(d, now) && d->hl_remaining == 0 && d->hl_reset_at_ms > t)
		t = d->hl_reset_at_ms;
	return t;
}

int64_t daily_next_ms(const struct daily_window *d, int64_t now_ms)
{
	int64_t t = daily_earliest(d, now_ms);

	if (d->blocked_until_ms > t)
		t = d->blocked_until_ms;
	return t;
}

/* Spend HighLevel's remaining (or forget it once its reset has passed). */
static void daily_spend_hl(struct daily_window *d, int64_t now, uint32_t count)
{
	if (d->hl_remaining < 0)
		return;
	if (!daily_hl_in_force(d, now)) {
		d->hl_remaining = -1;
		d->hl_reset_at_ms = 0;
		return;
	}
	d->hl_remaining = d->hl_remaining > (int64_t)count ? d->hl_remaining - count : 0;
}

int daily_record(struct daily_window *d, int64_t now_ms, uint32_t count)
{
	int rc;

	if (!count)
		return 0;
	rc = daily_reserve(d, now_ms);
	if (rc < 0)
		return rc;
	daily_add(d, now_ms, count);
	daily_spend_hl(d, now_ms, count);
	d->seq += count;
	return 0;
}

void daily_set_limit(struct daily_window *d, uint32_t daily_max)
{
	if (daily_max)
		d->daily_max = daily_max;
}

static uint64_t distance_ms(int64_t a, int64_t b)
{
	return a >= b ? (uint64_t)a - (uint64_t)b : (uint64_t)b - (uint64_t)a;
}

int daily_reconcile(struct daily_window *d, int64_t now_ms, int64_t remaining, int64_t reset_in_ms,
                    uint64_t seq)
{
	uint64_t later, used, believed;
	int64_t view;
	int rc;

	if (remaining < 0)
		return 0;
	later = d->seq > seq ? d->seq - seq : 0;
	view = later >= (uint64_t)remaining ? 0 : (int64_t)((uint64_t)remaining - later);

	if (reset_in_ms >= 0) {
		int64_t reset_at = sat_add(now_ms, reset_in_ms);

		if (daily_hl_in_force(d, now_ms) &&
		    distance_ms(reset_at, d->hl_reset_at_ms) <= (uint64_t)WINDOW_RESET_SLACK_MS) {
			/* The same day as we know: only ever lower, and wait for the later
			 * estimate. */
			if (view < d->hl_remaining)
				d->hl_remaining = view;
			if (reset_at > d->hl_reset_at_ms)
				d->hl_reset_at_ms = reset_at;
		} else {
			d->hl_remaining = view;
			d->hl_reset_at_ms = reset_at;
		}
		return 0;
	}

	if (daily_hl_in_force(d, now_ms) && view < d->hl_remaining)
		d->hl_remaining = view;
	used = daily_used(d, now_ms);
	believed = daily_limit(d) > used ? daily_limit(d) - used : 0;
	if ((uint64_t)view >= believed)
		return 0;
	rc = daily_reserve(d, now_ms);
	if (rc < 0)
		return rc;
	/* Recorded at now: they expire later than the real ones did, the safe side. */
	daily_add(d, now_ms, (uint32_t)(believed - (uint64_t)view));
	return 0;
}

void daily_block(struct daily_window *d, int64_t until_ms)
{
	if (until_ms > d->blocked_until_ms)
		d->blocked_until_ms = until_ms;
}

void daily_trim(struct daily_window *d, int64_t now_ms)
{
	daily_drop_expired(d, now_ms);
	if (d->hl_remaining >= 0 && !daily_hl_in_force(d, now_ms)) {
		d->hl_remaining = -1;
		d->hl_reset_at_ms = 0;
	}
	if (d->blocked_until_ms <= now_ms)
		d->blocked_until_ms = INT64_MIN;
	if (d->len == 0) {
		free(d->b);
		d->b = NULL;
		d->cap = d->head = 0;
		d->total = 0;
	} else if (d->cap > DEQUE_MIN_CAP && d->len <= d->cap / 4) {
		uint32_t c = d->cap / 2;

		(void)deque_realloc(d, c > DEQUE_MIN_CAP ? c : DEQUE_MIN_CAP);
	}
}

bool daily_is_idle(const struct daily_window *d, int64_t now_ms)
{
	if (d->blocked_until_ms > now_ms || daily_hl_in_force(d, now_ms))
		return false;
	return d->len == 0 || deque_at(d, d->len - 1)->idx < daily_first_idx(now_ms);
}

/* ---- both ---- */

/*
 * Keep the reason that holds the request back longest. Candidates come in increasing order of
 * precedence, so on a tie the later (daily before burst, a 429 before our own count) names it.
 */
static void verdict_consider(struct window_verdict *v, enum window_scope scope, int64_t t)
{
	if (t > v->earliest_ms || (v->scope != WINDOW_OK && t == v->earliest_ms)) {
		v->scope = scope;
		v->earliest_ms = t;
	}
}

struct window_verdict window_check(const struct burst_window *b, const struct daily_window *d,
                                   int64_t now_ms)
{
	struct window_verdict v = { .scope = WINDOW_OK, .earliest_ms = now_ms };

	if (b) {
		verdict_consider(&v, WINDOW_BURST, burst_window_earliest(b, now_ms));
		verdict_consider(&v, WINDOW_BLOCKED, b->blocked_until_ms);
	}
	if (d) {
		verdict_consider(&v, WINDOW_DAILY, daily_earliest(d, now_ms));
		verdict_consider(&v, WINDOW_BLOCKED_DAY, d->blocked_until_ms);
	}
	return v;
}

int window_record(struct burst_window *b, struct daily_window *d, int64_t now_ms)
{
	/* Reserve both first, so that either both record or neither does. */
	if (b && ring_reserve(b, 1) < 0)
		return -ENOMEM;
	if (d && daily_reserve(d, now_ms) < 0)
		return -ENOMEM;
	if (b) {
		ring_push(b, now_ms);
		b->seq++;
	}
	if (d) {
		daily_add(d, now_ms, 1);
		daily_spend_hl(d, now_ms, 1);
		d->seq++;
	}
	return 0;
}
