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
	b->n_recorded++;
}

/*
 * When the admitted call actually left (its first byte reached the socket), later than its
 * admission when a connection had to be opened or the loop was busy: its entry moves to that
 * time, and any later entry that would now be earlier moves with it, so the ring stays sorted.
 * Spacing the ring by real sends keeps the guarantee at the upstream's door: what happens in
 * the proxy between admitting and sending no longer eats into the guard band.
 */
void burst_sent(struct burst_window *b, uint64_t ticket, int64_t sent_ms)
{
	uint64_t back;

	if (ticket == 0 || ticket > b->n_recorded)
		return;
	back = b->n_recorded - ticket; /* 0: the newest entry */
	if (back >= b->len)
		return; /* already out of the ring */
	for (uint32_t i = b->len - 1 - (uint32_t)back; i < b->len; i++) {
		int64_t *e = &b->ring[ring_pos(b, i)];
		if (*e >= sent_ms)
			break;
		*e = sent_ms;
	}
}

void burst_init(struct burst_window *b, uint32_t burst_max, uint32_t window_ms, uint32_t guard_ms)
{
	memset(b, 0, sizeof(*b));
	b->burst_max = clamp_burst(burst_max);
	b->window_ms = window_ms;
	b->guard_ms = guard_ms;
	b->blocked_until_ms = INT64_MIN;
	b->hl_remaining = -1;
}

static bool burst_hl_in_force(const struct burst_window *b, int64_t now)
{
	return b->hl_remaining >= 0 && now < b->hl_until_ms;
}

/*
 * One admission at now spends one of HighLevel's remaining while it is in force. Every path
 * that records (burst_record, window_record) must spend it, or the budget never runs out.
 */
static void burst_spend_hl(struct burst_window *b, int64_t now)
{
	if (burst_hl_in_force(b, now) && b->hl_remaining > 0)
		b->hl_remaining--;
}

/* The earliest the (k+1)-th admission from now can go by HighLevel's remaining alone. */
static int64_t burst_hl_earliest(const struct burst_window *b, int64_t now, uint64_t k)
{
	if (!burst_hl_in_force(b, now) || k < (uint64_t)b->hl_remaining)
		return now;
	return b->hl_until_ms;
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
	if (burst_hl_earliest(b, now_ms, 0) > t)
		t = burst_hl_earliest(b, now_ms, 0);
	return t;
}

int burst_record(struct burst_window *b, int64_t now_ms)
{
	int rc = ring_reserve(b, 1);

	if (rc < 0)
		return rc;
	ring_push(b, now_ms);
	burst_spend_hl(b, now_ms);
	return 0;
}

/* Index of the oldest admission inside (now - span, now] (len when none): a binary search. */
static uint32_t burst_first_within(const struct burst_window *b, int64_t now, uint64_t span)
{
	uint32_t lo = 0, hi = b->len;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (still_counts(ring_at(b, mid), now, span))
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

static uint32_t burst_first_counting(const struct burst_window *b, int64_t now)
{
	return burst_first_within(b, now, burst_span_ms(b));
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

/*
 * Why believe `remaining` for a while instead of inferring outside calls from it (recording
 * N - remaining - used as phantom admissions): HighLevel counts calls by when they reach it, so
 * near the edge of its interval our own calls may or may not be in its count, and no count of
 * ours can tell them from outside calls. Replacing the budget on each answer never counts a
 * call twice; expiring it after valid_ms lets the ring alone rule (and the limiter probe) again.
 * A budget that is not in force at now (valid_ms <= 0) holds nothing: false.
 */
bool burst_reconcile(struct burst_window *b, int64_t now_ms, int64_t remaining, uint32_t uncertain,
                     int64_t valid_ms)
{
	uint32_t used, n = burst_limit(b);

	if (remaining < 0)
		return false;
	b->hl_remaining = remaining > (int64_t)uncertain ? remaining - uncertain : 0;
	b->hl_until_ms = sat_add(now_ms, valid_ms > 0 ? valid_ms : 0);
	if (!burst_hl_in_force(b, now_ms))
		return false;
	used = burst_used(b, now_ms);
	return b->hl_remaining < (int64_t)(n > used ? n - used : 0);
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
	if (b->hl_remaining >= 0 && !burst_hl_in_force(b, now_ms))
		b->hl_remaining = -1;
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
	if (b->blocked_until_ms > now_ms || burst_hl_in_force(b, now_ms))
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

/*
 * Add count to now's bucket after daily_reserve(). Never fails. daily_reserve() left b allocated,
 * len < cap, and every slot of [head, head + len) written; clang-analyzer loses that across
 * deque_realloc's copy loop and reports a garbage idx and a NULL b below (NOLINT).
 */
static void daily_add(struct daily_window *d, int64_t now, uint32_t count)
{
	int64_t idx = floor_div(now, WINDOW_BUCKET_MS);
	struct daily_bucket *last = d->len ? deque_at(d, d->len - 1) : NULL;

	/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult) */
	if (last && last->idx >= idx) {
		/* Now's bucket, or a later one when the clock went back: later is the safe side. */
		uint32_t room = UINT32_MAX - last->count;
		uint32_t add =
		        count < room ? count : room; /* a full bucket already exceeds any D */

		last->count += add;
		d->total += add;
		return;
	}
	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
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
	return 0;
}

void daily_set_limit(struct daily_window *d, uint32_t daily_max)
{
	if (daily_max)
		d->daily_max = daily_max;
}

/*
 * Why replace rather than keep the lower of two views, or record the difference as admissions:
 * every answer's remaining already counts all that HighLevel saw, ours included, so a phantom
 * recorded per answer counted the same calls again and piled up for a day; and the calls in
 * flight (`uncertain`) are the only ones it may not have seen, so subtracting them is enough.
 */
int daily_reconcile(struct daily_window *d, int64_t now_ms, int64_t remaining, int64_t reset_in_ms,
                    uint32_t uncertain)
{
	if (remaining < 0)
		return 0;
	d->hl_remaining = remaining > (int64_t)uncertain ? remaining - (int64_t)uncertain : 0;
	d->hl_reset_at_ms = sat_add(now_ms, reset_in_ms >= 0 ? reset_in_ms : WINDOW_DAY_MS);
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
		verdict_consider(&v, WINDOW_BURST, burst_hl_earliest(b, now_ms, 0));
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
		burst_spend_hl(b, now_ms);
	}
	if (d) {
		daily_add(d, now_ms, 1);
		daily_spend_hl(d, now_ms, 1);
	}
	return 0;
}

/* ---- slots further ahead ---- */

/*
 * Both rules, k admissions ahead, written as recurrences over f_j, the time of the (j+1)-th
 * admission from now when each goes at its earliest (f_{-1} = now): f_j = max(f_{j-1}, the
 * block(s), what the burst ring asks, what the daily window asks). Proofs are in the comments;
 * tests/unit/test_window.c checks them against that simulation over random states.
 */

/* t + q * span_ms, saturating at INT64_MAX ("never"). */
static int64_t add_rounds(int64_t t, uint64_t q, uint64_t span_ms)
{
	if (!q || !span_ms)
		return t;
	if (q > (uint64_t)INT64_MAX / span_ms)
		return INT64_MAX;
	return sat_add(t, (int64_t)(q * span_ms));
}

/*
 * The burst ring alone. Let m = min(len, N) entries a_0 <= ... <= a_{m-1} (oldest first) still be
 * able to hold one back, L = a_{m-1} the newest, span = W + guard. f_j must be >= the entry N
 * places before it in the ring, plus span.
 * - j < N: that entry is a_{j-(N-m)} (none when j < N - m). a is sorted, so
 *       f_j = X_j = max(now, block, a_{j-(N-m)} + span), non-decreasing in j.
 * - j >= N: it is future admission j - N as RECORDED, max(f_{j-N}, L): ring_push moves a record
 *   earlier than the newest entry up to it (now_ms may be before L after a clock went back). So
 *   f_j = max(f_{j-1}, max(f_{j-N}, L) + span). With R_i = max(X_i, L) non-decreasing and
 *   X_{N-1} <= R_0 + span (X_{N-1} is max(now, block, L + span)), induction on rounds gives
 *       f_k = max(X_{k mod N}, L) + (k / N) * span.
 * k = 0 gives burst_next_ms.
 */
static int64_t burst_first_round(const struct burst_window *b, int64_t now, uint32_t j)
{
	uint32_t n = burst_limit(b), m = b->len < n ? b->len : n;
	int64_t x = now;

	if (j >= n - m) {
		int64_t t =
		        sat_add(ring_at(b, b->len - m + (j - (n - m))), (int64_t)burst_span_ms(b));

		if (t > x)
			x = t;
	}
	if (b->blocked_until_ms > x)
		x = b->blocked_until_ms;
	return x;
}

static int64_t burst_ring_slot_ms(const struct burst_window *b, int64_t now_ms, uint64_t k)
{
	uint32_t n = burst_limit(b);
	uint64_t rounds = k / n;
	int64_t x = burst_first_round(b, now_ms, (uint32_t)(k % n));

	if (!rounds)
		return x;
	if (b->len > 0 && ring_at(b, b->len - 1) > x)
		x = ring_at(b, b->len - 1);
	return add_rounds(x, rounds, burst_span_ms(b));
}

/*
 * HighLevel's remaining h, in force until U, holds the (i+1)-th admission for i >= h until U: a
 * step term like the daily ones, which the ring then spaces: for k >= h the (k+1)-th goes no
 * earlier than U + ((k - h) / N) * span (the smallest such i, h, is the tightest).
 */
int64_t burst_slot_ms(const struct burst_window *b, int64_t now_ms, uint64_t k)
{
	int64_t x = burst_ring_slot_ms(b, now_ms, k);

	if (burst_hl_in_force(b, now_ms) && k >= (uint64_t)b->hl_remaining) {
		uint64_t h = (uint64_t)b->hl_remaining;
		int64_t t = add_rounds(b->hl_until_ms, (k - h) / burst_limit(b), burst_span_ms(b));
		if (t > x)
			x = t;
	}
	return x;
}

/*
 * The daily window asks f_i >= D_i, a non-decreasing step function of i alone:
 *     D_i = max(now, block, C_i, H_i).
 * C_i, the count: the i admissions before it are made at or after now, in a bucket no older than
 * the newest held, so none of them stops counting before every bucket held at now has. Until
 * then the (i+1)-th needs used + i + 1 <= D, so C_i = now while used + i < D, else the end of the
 * bucket at which the counts freed (oldest first) reach used + i + 1 - D. Those buckets hold
 * `used`, so C_i is defined for every i < D; for i >= D one of ours must stop counting first,
 * more than a day after it was made: INT64_MAX. H_i, HighLevel's remaining h (in force until its
 * reset R): each admission before R spends one, so H_i = R for i >= h.
 * Neither depends on when the earlier admissions went, only on how many: the daily window alone
 * admits the (k+1)-th at D_k. Next to a burst ring of N spacing admissions N apart by span, the
 * recurrence f_j = max(f_{j-1}, Y_j, f_{j-N} + span) (Y_j the burst terms and D_j) unrolls to
 * f_k = max over i <= k of Y_i + floor((k - i) / N) * span; the burst terms give burst_slot_ms,
 * and the daily ones
 *     max over i in {k, k - N, k - 2N, ...} of D_i + ((k - i) / N) * span,
 * since on a run of equal D_i the smallest such i is best. That is what this walk returns
 * (n = 0: no ring, D_k alone), in O(buckets held).
 */
struct daily_walk {
	int64_t k;       /* < D, so every index fits */
	uint32_t n;      /* burst N, 0: no burst ring */
	uint64_t span;   /* burst W + guard */
	int64_t floor;   /* max(now, daily block) */
	int64_t hl_from; /* H_i = hl_reset for i >= hl_from; -1: HighLevel's view not in force */
	int64_t hl_reset;
	int64_t best;
};

/* The run i in [lo, hi) (0 <= lo < hi <= k + 1) where D_i is v (after the HighLevel split). */
static void walk_piece(struct daily_walk *w, int64_t lo, int64_t hi, int64_t v)
{
	int64_t i;

	if (v < w->floor)
		v = w->floor;
	if (w->n == 0) {
		if (hi <= w->k)
			return;
		i = w->k;
	} else {
		i = lo + (w->k - lo) % w->n;
		if (i >= hi)
			return;
	}
	v = w->n ? add_rounds(v, (uint64_t)(w->k - i) / w->n, w->span) : v;
	if (v > w->best)
		w->best = v;
}

/* The run i in [lo, hi) where the count alone gives v: clamp to [0, k] and split at hl_from. */
static void walk_run(struct daily_walk *w, int64_t lo, int64_t hi, int64_t v)
{
	int64_t h = w->hl_from;

	if (lo < 0)
		lo = 0;
	if (hi > w->k + 1)
		hi = w->k + 1;
	if (lo >= hi)
		return;
	if (h < 0 || hi <= h) {
		walk_piece(w, lo, hi, v);
		return;
	}
	if (lo < h)
		walk_piece(w, lo, h, v);
	walk_piece(w, lo < h ? h : lo, hi, v > w->hl_reset ? v : w->hl_reset);
}

static int64_t daily_walk_ms(const struct daily_window *d, int64_t now, uint64_t k, uint32_t n,
                             uint64_t span)
{
	uint64_t lim = daily_limit(d);
	struct daily_walk w = {
		.n = n, .span = span, .floor = now, .hl_from = -1, .best = INT64_MIN
	};
	int64_t edge;

	if (k >= lim)
		return INT64_MAX;
	w.k = (int64_t)k;
	if (d->blocked_until_ms > w.floor)
		w.floor = d->blocked_until_ms;
	if (daily_hl_in_force(d, now)) {
		w.hl_from = d->hl_remaining;
		w.hl_reset = d->hl_reset_at_ms;
	}
	/* used < 2^32 * 289 and lim < 2^33: the run edges fit int64. */
	edge = (int64_t)lim - (int64_t)daily_used(d, now);
	walk_run(&w, 0, edge, now);
	for (uint32_t i = daily_n_expired(d, now); i < d->len && edge <= w.k; i++) {
		const struct daily_bucket *bk = deque_at(d, i);

		walk_run(&w, edge, edge + bk->count, bucket_end_ms(bk->idx));
		edge += bk->count;
	}
	return w.best;
}

int64_t daily_slot_ms(const struct daily_window *d, int64_t now_ms, uint64_t k)
{
	return daily_walk_ms(d, now_ms, k, 0, 0);
}

struct window_verdict window_slot(const struct burst_window *b, const struct daily_window *d,
                                  int64_t now_ms, uint64_t k)
{
	struct window_verdict v = { .scope = WINDOW_OK, .earliest_ms = now_ms };
	int64_t t_daily = INT64_MIN, t;

	if (b) {
		t = burst_slot_ms(b, now_ms, k);
		if (t > v.earliest_ms)
			v.earliest_ms = t;
	}
	if (d) {
		t_daily = daily_slot_ms(d, now_ms, k);
		/* With a ring, a daily wait also pushes back the admissions spaced after it. */
		t = b ? daily_walk_ms(d, now_ms, k, burst_limit(b), burst_span_ms(b)) : t_daily;
		if (t > v.earliest_ms)
			v.earliest_ms = t;
	}
	t = v.earliest_ms;
	if (t == now_ms)
		v.scope = WINDOW_OK;
	else if (d && d->blocked_until_ms == t)
		v.scope = WINDOW_BLOCKED_DAY;
	else if (d && t_daily == t)
		v.scope = WINDOW_DAILY;
	else if (b && b->blocked_until_ms == t)
		v.scope = WINDOW_BLOCKED;
	else
		v.scope = WINDOW_BURST;
	return v;
}
