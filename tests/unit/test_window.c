/*
 * test_window.c: the limiter window (src/window.c).
 *
 * Four layers: (1) a runner for the shared vectors in tests/vectors/window.vec (the format is
 * documented at the top of that file; the Redis backend runs the same file), naming the vector
 * and line of any failure; (2) direct unit tests of what the vectors cannot see (memory,
 * ring growth, HighLevel's burst budget, consistency of the _next_ms functions); (3) a
 * randomized oracle with a fixed seed that checks the guarantees over every recorded admission
 * time (HighLevel's burst and daily remaining included), and utilisation under saturation;
 * (4) a property test of the look-ahead functions (*_slot_ms, window_slot) against the rule
 * they summarise, run step by step on copies of random states, with the burst budget modelled
 * apart from the code under test.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/window.h"

/* ------------------------------------------------------------------ look-ahead reference */

/* Deep copies, so that a simulation can run on a key without touching it. */
static void burst_copy(struct burst_window *dst, const struct burst_window *src)
{
	*dst = *src;
	dst->ring = NULL;
	if (src->cap) {
		dst->ring = malloc((size_t)src->cap * sizeof(*dst->ring));
		cr_assert(dst->ring);
		memcpy(dst->ring, src->ring, (size_t)src->cap * sizeof(*dst->ring));
	}
}

static void daily_copy(struct daily_window *dst, const struct daily_window *src)
{
	*dst = *src;
	dst->b = NULL;
	if (src->cap) {
		dst->b = malloc((size_t)src->cap * sizeof(*dst->b));
		cr_assert(dst->b);
		memcpy(dst->b, src->b, (size_t)src->cap * sizeof(*dst->b));
	}
}

struct sim_result {
	int64_t t;       /* when the (k+1)-th admission was recorded */
	bool consistent; /* every refusal named a later time, and the check admitted there */
};

/*
 * HighLevel's burst budget, modelled apart from the code under test: `left` more admissions
 * until `until_ms`, each admission before then spends one, and from until_ms on it is forgotten.
 * left -1: none in force.
 */
struct budget_model {
	int64_t left;
	int64_t until_ms;
};

static struct budget_model budget_of(const struct burst_window *b)
{
	if (!b || b->hl_remaining < 0)
		return (struct budget_model){ .left = -1 };
	return (struct budget_model){ .left = b->hl_remaining, .until_ms = b->hl_until_ms };
}

static void budget_spend(struct budget_model *m, int64_t t)
{
	if (m->left > 0 && t < m->until_ms)
		m->left--;
}

/*
 * The verdict the budget semantics ask for at t: the verdict of the same key without a budget
 * (nb, same ring and block), held until the budget's end when it is spent and still in force.
 * On a tie the other reason names it (burst comes last in window_check's precedence).
 */
static struct window_verdict budget_verdict(const struct burst_window *nb,
                                            const struct daily_window *d,
                                            const struct budget_model *m, int64_t t)
{
	struct window_verdict v = window_check(nb, d, t);

	if (m->left == 0 && t < m->until_ms && m->until_ms > v.earliest_ms) {
		v.scope = WINDOW_BURST;
		v.earliest_ms = m->until_ms;
	}
	return v;
}

static bool verdict_eq(struct window_verdict a, struct window_verdict b)
{
	return a.scope == b.scope && a.earliest_ms == b.earliest_ms;
}

/*
 * What the look-ahead functions summarise: k + 1 rounds of "check at t; when refused,
 * t = its earliest time; record at t" from t = now, on copies of b and d (either may be NULL).
 * Every check is also held against the budget model (budget_verdict on a budget-free copy of
 * b, recorded in step): a check that admits past a spent budget, holds the key for a budget
 * that is not spent or has ended, or records without spending it, makes the run inconsistent.
 */
static struct sim_result simulate_slot(const struct burst_window *b, const struct daily_window *d,
                                       int64_t now, uint64_t k)
{
	struct burst_window bc, nbc;
	struct daily_window dc;
	struct burst_window *pb = NULL, *nb = NULL;
	struct daily_window *pd = NULL;
	struct sim_result r = { .t = now, .consistent = true };
	struct budget_model m = budget_of(b);

	if (b) {
		burst_copy(&bc, b);
		pb = &bc;
		burst_copy(&nbc, b);
		nbc.hl_remaining = -1;
		nb = &nbc;
	}
	if (d) {
		daily_copy(&dc, d);
		pd = &dc;
	}
	for (uint64_t j = 0; j <= k; j++) {
		struct window_verdict v = window_check(pb, pd, r.t);

		if (pb && !verdict_eq(v, budget_verdict(nb, pd, &m, r.t))) {
			r.consistent = false;
			break;
		}
		if (v.scope != WINDOW_OK) {
			if (v.earliest_ms <= r.t) {
				r.consistent = false;
				break;
			}
			r.t = v.earliest_ms;
			if (r.t == INT64_MAX)
				break; /* saturated: never */
			v = window_check(pb, pd, r.t);
			if (v.scope != WINDOW_OK ||
			    (pb && !verdict_eq(v, budget_verdict(nb, pd, &m, r.t)))) {
				r.consistent = false;
				break;
			}
		}
		if (window_record(pb, pd, r.t) != 0 || (nb && burst_record(nb, r.t) != 0)) {
			r.consistent = false;
			break;
		}
		budget_spend(&m, r.t);
		if (pb && m.left >= 0 && r.t < m.until_ms && pb->hl_remaining != m.left) {
			r.consistent = false; /* the record did not spend the budget */
			break;
		}
	}
	if (pb) {
		burst_deinit(pb);
		burst_deinit(nb);
	}
	if (pd)
		daily_deinit(pd);
	return r;
}

static uint64_t daily_limit_of(const struct daily_window *d)
{
	return d->daily_max ? d->daily_max : 1;
}

/*
 * A look-ahead answer against its simulation: equal, or INT64_MAX exactly when the daily window
 * takes part and k >= D, and then the simulated admission is more than a day away.
 */
static bool slot_agrees(int64_t got, struct sim_result sim, const struct daily_window *d,
                        int64_t now, uint64_t k)
{
	if (!sim.consistent)
		return false;
	if (d && k >= daily_limit_of(d))
		return got == INT64_MAX && (sim.t == INT64_MAX || sim.t - now > WINDOW_DAY_MS);
	return got == sim.t;
}

struct slot_stats {
	uint64_t cases, beyond_day, cross, clock_back_rounds;
	uint64_t budget_held; /* burst_slot_ms later than the same ring without the budget */
	uint64_t scopes[WINDOW_BLOCKED_DAY + 1];
};

/*
 * window_slot, burst_slot_ms and daily_slot_ms at (now, k) against the simulations, and
 * window_slot's scope against its definition in window.h (computed from the simulations).
 * Writes what differs into err; returns whether all agree.
 */
static bool slot_matches(const struct burst_window *b, const struct daily_window *d, int64_t now,
                         uint64_t k, char *err, size_t errlen, struct slot_stats *st)
{
	struct window_verdict v = window_slot(b, d, now, k);
	struct sim_result both = simulate_slot(b, d, now, k);
	int64_t t_daily = INT64_MIN, t_burst = INT64_MIN;
	enum window_scope want;

	err[0] = '\0';
	if (!slot_agrees(v.earliest_ms, both, d, now, k)) {
		snprintf(err, errlen,
		         "window_slot(k=%" PRIu64 ") = %" PRId64 ", simulation %" PRId64 "%s", k,
		         v.earliest_ms, both.t, both.consistent ? "" : " (inconsistent check)");
		return false;
	}
	if (b) {
		struct sim_result sb = simulate_slot(b, NULL, now, k);

		t_burst = burst_slot_ms(b, now, k);
		if (!slot_agrees(t_burst, sb, NULL, now, k)) {
			snprintf(err, errlen,
			         "burst_slot_ms(k=%" PRIu64 ") = %" PRId64 ", simulation %" PRId64,
			         k, t_burst, sb.t);
			return false;
		}
	}
	if (d) {
		struct sim_result sd = simulate_slot(NULL, d, now, k);

		t_daily = daily_slot_ms(d, now, k);
		if (!slot_agrees(t_daily, sd, d, now, k)) {
			snprintf(err, errlen,
			         "daily_slot_ms(k=%" PRIu64 ") = %" PRId64 ", simulation %" PRId64,
			         k, t_daily, sd.t);
			return false;
		}
	}
	if (v.earliest_ms == now)
		want = WINDOW_OK;
	else if (d && d->blocked_until_ms == v.earliest_ms)
		want = WINDOW_BLOCKED_DAY;
	else if (d && t_daily == v.earliest_ms)
		want = WINDOW_DAILY;
	else if (b && b->blocked_until_ms == v.earliest_ms)
		want = WINDOW_BLOCKED;
	else
		want = WINDOW_BURST;
	if (v.scope != want) {
		snprintf(err, errlen, "window_slot(k=%" PRIu64 ") scope %d, want %d", k,
		         (int)v.scope, (int)want);
		return false;
	}
	if (st) {
		st->cases++;
		st->scopes[v.scope]++;
		if (v.earliest_ms == INT64_MAX)
			st->beyond_day++;
		else if (b && d && v.earliest_ms > t_burst && v.earliest_ms > t_daily)
			st->cross++;
		if (b && b->len && b->ring[(b->head + b->len - 1) % b->cap] > now &&
		    k >= b->burst_max)
			st->clock_back_rounds++;
		if (b) {
			struct burst_window nb = *b; /* read only: the ring is shared */

			nb.hl_remaining = -1;
			if (t_burst > burst_slot_ms(&nb, now, k))
				st->budget_held++;
		}
	}
	return true;
}

/* ------------------------------------------------------------------ vector runner */

#define MAX_TOKENS 16

struct vec_key {
	struct burst_window b;
	struct daily_window d;
};

struct vec_run {
	const char *path;
	int line;
	char name[128];
	bool in_vector;
	bool failed;    /* the current vector failed: skip to its end */
	bool has_steps; /* config is only allowed before the first step */
	int n_vectors;  /* vectors seen */
	int n_failed;   /* vectors failed */
	int n_steps;    /* steps run */
	char names[256][128];
	bool quiet; /* keep the first failure in first_error instead of logging it */
	char first_error[1024];
	struct vec_key k;
};

static void key_reset(struct vec_key *k, uint32_t burst, uint32_t window_ms, uint32_t guard_ms,
                      uint32_t daily)
{
	burst_deinit(&k->b);
	daily_deinit(&k->d);
	burst_init(&k->b, burst, window_ms, guard_ms);
	daily_init(&k->d, daily);
}

static void key_free(struct vec_key *k)
{
	burst_deinit(&k->b);
	daily_deinit(&k->d);
}

static void vfail(struct vec_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void vfail(struct vec_run *r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!r->quiet)
		cr_log_error("%s:%d: vector %s: %s", r->path, r->line,
		             r->in_vector ? r->name : "(none)", msg);
	else if (!r->first_error[0])
		snprintf(r->first_error, sizeof(r->first_error), "%s:%d: vector %s: %s", r->path,
		         r->line, r->in_vector ? r->name : "(none)", msg);
	if (r->in_vector && !r->failed)
		r->n_failed++;
	if (!r->in_vector)
		r->n_failed++;
	r->failed = true;
}

static bool parse_i64(const char *s, int64_t *out)
{
	char *end;
	long long v;

	if (!*s || (*s != '-' && (*s < '0' || *s > '9')))
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static bool parse_u32(const char *s, uint32_t *out)
{
	int64_t v;

	if (!parse_i64(s, &v) || v < 0 || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* "key=value" with a matching key: its value, else NULL. */
static const char *opt_value(const char *tok, const char *key)
{
	size_t n = strlen(key);

	if (strncmp(tok, key, n) == 0 && tok[n] == '=')
		return tok + n + 1;
	return NULL;
}

static const char *scope_name(enum window_scope s)
{
	switch (s) {
	case WINDOW_OK:
		return "admit";
	case WINDOW_BURST:
		return "burst";
	case WINDOW_DAILY:
		return "daily";
	case WINDOW_BLOCKED:
		return "blocked";
	case WINDOW_BLOCKED_DAY:
		return "blocked-day";
	}
	return "?";
}

static bool parse_scope(const char *s, enum window_scope *out)
{
	static const enum window_scope all[] = { WINDOW_BURST, WINDOW_DAILY, WINDOW_BLOCKED,
		                                 WINDOW_BLOCKED_DAY };

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (strcmp(s, scope_name(all[i])) == 0) {
			*out = all[i];
			return true;
		}
	}
	return false;
}

/*
 * The check, cross-checked against the per-part functions: the verdict's earliest time is the
 * later of burst_next_ms() and daily_next_ms().
 */
static struct window_verdict checked_verdict(struct vec_run *r, int64_t now)
{
	struct window_verdict v = window_check(&r->k.b, &r->k.d, now);
	int64_t bn = burst_next_ms(&r->k.b, now), dn = daily_next_ms(&r->k.d, now);
	int64_t want = bn > dn ? bn : dn;

	if (v.earliest_ms != want)
		vfail(r,
		      "window_check earliest %" PRId64 " but burst_next %" PRId64
		      " / daily_next %" PRId64,
		      v.earliest_ms, bn, dn);
	if ((v.scope == WINDOW_OK) != (v.earliest_ms == now))
		vfail(r, "verdict %s with earliest %" PRId64 " at %" PRId64, scope_name(v.scope),
		      v.earliest_ms, now);
	/* Looking zero admissions ahead is the check itself. */
	struct window_verdict s = window_slot(&r->k.b, &r->k.d, now, 0);

	if (s.scope != v.scope || s.earliest_ms != v.earliest_ms)
		vfail(r, "window_slot(k=0) %s %" PRId64 " but window_check %s %" PRId64,
		      scope_name(s.scope), s.earliest_ms, scope_name(v.scope), v.earliest_ms);
	if (burst_slot_ms(&r->k.b, now, 0) != bn || daily_slot_ms(&r->k.d, now, 0) != dn)
		vfail(r, "burst_slot_ms/daily_slot_ms(k=0) differ from burst_next/daily_next");
	return v;
}

static void step_admit(struct vec_run *r, int64_t now)
{
	struct window_verdict v = checked_verdict(r, now);
	int rc;

	if (v.scope != WINDOW_OK) {
		vfail(r, "expected admit, got wait %s %" PRId64, scope_name(v.scope),
		      v.earliest_ms);
		return;
	}
	rc = window_record(&r->k.b, &r->k.d, now);
	if (rc != 0)
		vfail(r, "window_record: %d", rc);
}

static void run_step(struct vec_run *r, int64_t now, char **tok, int n)
{
	const char *op = tok[0];
	int64_t x;
	uint32_t u;

	r->n_steps++;
	if (strcmp(op, "try") == 0 && n == 2 && strcmp(tok[1], "admit") == 0) {
		step_admit(r, now);
	} else if (strcmp(op, "try") == 0 && n == 4 && strcmp(tok[1], "wait") == 0) {
		enum window_scope want;
		struct window_verdict v;

		if (!parse_scope(tok[2], &want) || !parse_i64(tok[3], &x)) {
			vfail(r, "bad 'try wait' step");
			return;
		}
		v = checked_verdict(r, now);
		if (v.scope != want || v.earliest_ms != x)
			vfail(r, "expected wait %s %" PRId64 ", got %s %" PRId64, tok[2], x,
			      scope_name(v.scope), v.earliest_ms);
	} else if (strcmp(op, "admit") == 0 && n == 2) {
		if (!parse_i64(tok[1], &x) || x < 1 || x > 10000000) {
			vfail(r, "bad admit count");
			return;
		}
		for (int64_t i = 0; i < x && !r->failed; i++)
			step_admit(r, now);
	} else if (strcmp(op, "limits") == 0) {
		uint32_t nb = 0, nw = 0, nd = 0;

		for (int i = 1; i < n; i++) {
			const char *v;

			if ((v = opt_value(tok[i], "burst")) && parse_u32(v, &u))
				nb = u;
			else if ((v = opt_value(tok[i], "window")) && parse_u32(v, &u))
				nw = u;
			else if ((v = opt_value(tok[i], "daily")) && parse_u32(v, &u))
				nd = u;
			else {
				vfail(r, "bad limits option '%s'", tok[i]);
				return;
			}
		}
		if (burst_set_limits(&r->k.b, nb, nw) != 0)
			vfail(r, "burst_set_limits failed");
		daily_set_limit(&r->k.d, nd);
	} else if (strcmp(op, "remaining") == 0 && n >= 2) {
		/* The limiter's default: believe an answer for a quarter of HighLevel's W. */
		int64_t valid_ms = r->k.b.window_ms / 4;
		uint32_t uncertain = 0;

		if (!parse_i64(tok[1], &x)) {
			vfail(r, "bad remaining");
			return;
		}
		for (int i = 2; i < n; i++) {
			const char *v;

			if ((v = opt_value(tok[i], "valid"))) {
				if (!parse_i64(v, &valid_ms) || valid_ms < 0) {
					vfail(r, "bad valid '%s'", v);
					return;
				}
			} else if ((v = opt_value(tok[i], "uncertain"))) {
				if (!parse_u32(v, &uncertain)) {
					vfail(r, "bad uncertain '%s'", v);
					return;
				}
			} else {
				vfail(r, "unknown option '%s'", tok[i]);
				return;
			}
		}
		(void)burst_reconcile(&r->k.b, now, x, uncertain, valid_ms);
	} else if (strcmp(op, "daily-remaining") == 0 && n >= 2) {
		int64_t reset = -1;
		uint32_t uncertain = 0;

		if (!parse_i64(tok[1], &x)) {
			vfail(r, "bad daily-remaining");
			return;
		}
		for (int i = 2; i < n; i++) {
			const char *v;

			if ((v = opt_value(tok[i], "reset"))) {
				if (!parse_i64(v, &reset) || reset < 0) {
					vfail(r, "bad reset '%s'", v);
					return;
				}
			} else if ((v = opt_value(tok[i], "uncertain"))) {
				if (!parse_u32(v, &uncertain)) {
					vfail(r, "bad uncertain '%s'", v);
					return;
				}
			} else {
				vfail(r, "unknown option '%s'", tok[i]);
				return;
			}
		}
		if (daily_reconcile(&r->k.d, now, x, reset, uncertain) != 0)
			vfail(r, "daily_reconcile failed");
	} else if (strcmp(op, "slot") == 0 && (n == 3 || n == 4)) {
		enum window_scope want = WINDOW_OK;
		int64_t want_t = now, k;
		struct window_verdict v;
		char err[256];

		if (!parse_i64(tok[1], &k) || k < 0 ||
		    (n == 3 ? strcmp(tok[2], "admit") != 0
		            : !parse_scope(tok[2], &want) || !parse_i64(tok[3], &want_t))) {
			vfail(r, "bad 'slot' step");
			return;
		}
		v = window_slot(&r->k.b, &r->k.d, now, (uint64_t)k);
		if (v.scope != want || v.earliest_ms != want_t)
			vfail(r, "expected slot %" PRId64 " %s %" PRId64 ", got %s %" PRId64, k,
			      scope_name(want), want_t, scope_name(v.scope), v.earliest_ms);
		else if (!slot_matches(&r->k.b, &r->k.d, now, (uint64_t)k, err, sizeof(err), NULL))
			vfail(r, "slot against its simulation: %s", err);
	} else if (strcmp(op, "block") == 0 && n == 3) {
		const char *v = opt_value(tok[2], "until");

		if (!v || !parse_i64(v, &x)) {
			vfail(r, "bad block until");
			return;
		}
		if (strcmp(tok[1], "burst") == 0)
			burst_block(&r->k.b, x);
		else if (strcmp(tok[1], "daily") == 0)
			daily_block(&r->k.d, x);
		else
			vfail(r, "bad block scope '%s'", tok[1]);
	} else if (strcmp(op, "used") == 0 && n == 3) {
		uint64_t got;

		if (!parse_i64(tok[2], &x) || x < 0) {
			vfail(r, "bad used count");
			return;
		}
		if (strcmp(tok[1], "burst") == 0)
			got = burst_used(&r->k.b, now);
		else if (strcmp(tok[1], "daily") == 0)
			got = daily_used(&r->k.d, now);
		else {
			vfail(r, "bad used scope '%s'", tok[1]);
			return;
		}
		if (got != (uint64_t)x)
			vfail(r, "expected used %s %" PRId64 ", got %" PRIu64, tok[1], x, got);
	} else if (strcmp(op, "trim") == 0 && n == 1) {
		burst_trim(&r->k.b, now);
		daily_trim(&r->k.d, now);
	} else if (strcmp(op, "idle") == 0 && n == 2) {
		bool idle = burst_is_idle(&r->k.b, now) && daily_is_idle(&r->k.d, now);
		bool want = strcmp(tok[1], "yes") == 0;

		if (!want && strcmp(tok[1], "no") != 0)
			vfail(r, "bad idle '%s'", tok[1]);
		else if (idle != want)
			vfail(r, "expected idle %s", tok[1]);
	} else if (strcmp(op, "heap") == 0 && n == 2) {
		bool none = !r->k.b.ring && !r->k.d.b && !r->k.b.cap && !r->k.d.cap;
		bool want = strcmp(tok[1], "none") == 0;

		if (!want && strcmp(tok[1], "some") != 0)
			vfail(r, "bad heap '%s'", tok[1]);
		else if (none != want)
			vfail(r, "expected heap %s", tok[1]);
	} else {
		vfail(r, "unknown step '%s' (%d tokens)", op, n);
	}
}

static void run_config(struct vec_run *r, char **tok, int n)
{
	uint32_t burst = 100, window_ms = 10000, guard_ms = 250, daily = 200000;

	if (r->has_steps) {
		vfail(r, "config after the first step");
		return;
	}
	for (int i = 1; i < n; i++) {
		const char *v;
		uint32_t *dst = NULL;

		if ((v = opt_value(tok[i], "burst")))
			dst = &burst;
		else if ((v = opt_value(tok[i], "window")))
			dst = &window_ms;
		else if ((v = opt_value(tok[i], "guard")))
			dst = &guard_ms;
		else if ((v = opt_value(tok[i], "daily")))
			dst = &daily;
		if (!dst || !parse_u32(v, dst)) {
			vfail(r, "bad config option '%s'", tok[i]);
			return;
		}
	}
	key_reset(&r->k, burst, window_ms, guard_ms, daily);
}

static void run_line(struct vec_run *r, char *line)
{
	char *tok[MAX_TOKENS];
	char *hash = strchr(line, '#'), *save = NULL, *t;
	int n = 0;

	if (hash)
		*hash = '\0';
	for (t = strtok_r(line, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
		if (n == MAX_TOKENS) {
			vfail(r, "too many tokens");
			return;
		}
		tok[n++] = t;
	}
	if (n == 0)
		return;

	if (strcmp(tok[0], "vector") == 0) {
		if (r->in_vector)
			vfail(r, "vector inside vector %s", r->name);
		if (n != 2 || strlen(tok[1]) >= sizeof(r->name) ||
		    strspn(tok[1],
		           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
		            strlen(tok[1])) {
			vfail(r, "bad vector name");
			return;
		}
		snprintf(r->name, sizeof(r->name), "%s", tok[1]);
		r->in_vector = true;
		r->failed = false;
		r->has_steps = false;
		for (int i = 0; i < r->n_vectors && i < 256; i++)
			if (strcmp(r->names[i], tok[1]) == 0)
				vfail(r, "duplicate vector name");
		if (r->n_vectors < 256)
			snprintf(r->names[r->n_vectors], sizeof(r->names[0]), "%s", tok[1]);
		r->n_vectors++;
		key_reset(&r->k, 100, 10000, 250, 200000);
		return;
	}
	if (!r->in_vector) {
		vfail(r, "'%s' outside a vector", tok[0]);
		return;
	}
	if (strcmp(tok[0], "end") == 0 && n == 1) {
		r->in_vector = false;
		key_free(&r->k);
		return;
	}
	if (r->failed)
		return;
	if (strcmp(tok[0], "config") == 0) {
		run_config(r, tok, n);
	} else if (strcmp(tok[0], "at") == 0 && n >= 3) {
		int64_t now;

		if (!parse_i64(tok[1], &now)) {
			vfail(r, "bad time '%s'", tok[1]);
			return;
		}
		r->has_steps = true;
		run_step(r, now, tok + 2, n - 2);
	} else {
		vfail(r, "unknown statement '%s'", tok[0]);
	}
}

static char *vec_path(void)
{
	const char *root = getenv("GHLPROXY_SRCDIR");
	static const char rel[] = "/tests/vectors/window.vec";
	size_t n;
	char *p;

	cr_assert(root, "GHLPROXY_SRCDIR is not set (the meson test sets it)");
	n = strlen(root) + sizeof(rel);
	p = malloc(n);
	cr_assert(p);
	snprintf(p, n, "%s%s", root, rel);
	return p;
}

Test(window_vectors, all_pass)
{
	struct vec_run *r = calloc(1, sizeof(*r));
	char *path = vec_path();
	FILE *f = fopen(path, "r");
	char line[1024];

	cr_assert(r);
	cr_assert(f, "cannot open %s", path);
	r->path = "window.vec";
	while (fgets(line, sizeof(line), f)) {
		r->line++;
		if (!strchr(line, '\n') && !feof(f))
			vfail(r, "line too long");
		run_line(r, line);
	}
	fclose(f);
	if (r->in_vector)
		vfail(r, "vector %s has no end", r->name);
	key_free(&r->k);
	cr_log_info("window.vec: %d vectors, %d steps", r->n_vectors, r->n_steps);

	int n_vectors = r->n_vectors, n_failed = r->n_failed;

	free(r);
	free(path);
	cr_expect_geq(n_vectors, 40, "only %d vectors", n_vectors);
	cr_assert_eq(n_failed, 0, "%d vector(s) failed (see the log above)", n_failed);
}

/* The runner itself must catch a wrong expectation, and name the line. */
Test(window_vectors, runner_detects_failures)
{
	static const struct {
		const char *text;
		const char *error; /* the start of the first message: file, line and vector */
	} bad[] = {
		{ "vector a\nconfig burst=1 window=1000 guard=0\nat 0 try admit\nat 0 try admit\n"
		  "at 0 try admit\nend\n",
		  "inline:4: vector a: expected admit, got wait burst 1000" },
		{ "vector b\nat 0 try wait burst 5\nend\n",
		  "inline:2: vector b: expected wait burst 5" },
		{ "vector c\nat 0 used burst 1\nend\n",
		  "inline:2: vector c: expected used burst 1" },
		{ "vector d\nat 0 admit 1\nat 0 used daily 2\nend\n",
		  "inline:3: vector d: expected used daily 2" },
		{ "vector e\nat 0 frobnicate\nend\n", "inline:2: vector e: unknown step" },
		{ "vector f\nat 0 try admit\nconfig burst=1\nend\n", "inline:3: vector f: config" },
		{ "vector g\nat 0 heap some\nend\n", "inline:2: vector g: expected heap some" },
		{ "vector h\nat 0 idle no\nend\n", "inline:2: vector h: expected idle no" },
		{ "at 0 try admit\n", "inline:1: vector (none):" },
		{ "vector i\nat x try admit\nend\n", "inline:2: vector i: bad time" },
		{ "vector j\nat 0 daily-remaining 1 ticket=-1\nend\n",
		  "inline:2: vector j: unknown option 'ticket=-1'" },
		{ "vector l\nconfig burst=1 window=1000 guard=0\nat 0 admit 1\nat 0 slot 0 "
		  "admit\nend\n",
		  "inline:4: vector l: expected slot 0 admit 0, got burst 1000" },
		{ "vector m\nat 0 slot 100 burst 10251\nend\n",
		  "inline:2: vector m: expected slot 100 burst 10251, got burst 10250" },
		{ "vector n\nat 0 slot 1 frobnicate 5\nend\n", "inline:2: vector n: bad 'slot'" },
		{ "vector o\nat 0 remaining 1 ticket=0\nend\n",
		  "inline:2: vector o: unknown option 'ticket=0'" },
		{ "vector p\nat 0 remaining 1 valid=-1\nend\n",
		  "inline:2: vector p: bad valid '-1'" },
		{ "vector q\nconfig burst=5 window=1000 guard=0\nat 0 remaining 1\nat 0 admit 1\n"
		  "at 0 try wait burst 251\nend\n",
		  "inline:5: vector q: expected wait burst 251, got burst 250" },
		{ "vector r\nat 0 remaining 0\nat 0 idle yes\nend\n",
		  "inline:3: vector r: expected idle yes" },
		{ "vector k\nend\nvector k\nend\n", "inline:3: vector k: duplicate" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct vec_run *r = calloc(1, sizeof(*r));
		char *text = strdup(bad[i].text), *save = NULL;

		cr_assert(r && text);
		r->path = "inline";
		r->quiet = true;
		for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
			r->line++;
			run_line(r, l);
		}
		key_free(&r->k);
		cr_expect_eq(r->n_failed, 1, "case %zu: %d failures", i, r->n_failed);
		cr_expect(strncmp(r->first_error, bad[i].error, strlen(bad[i].error)) == 0,
		          "case %zu: got '%s'", i, r->first_error);
		free(text);
		free(r);
	}
}

/* ------------------------------------------------------------------ direct unit tests */

Test(window_burst, init_is_empty_and_admits)
{
	struct burst_window b;

	burst_init(&b, 3, 1000, 100);
	cr_assert_null(b.ring);
	cr_assert_eq(b.len, 0);
	cr_assert_eq(b.blocked_until_ms, INT64_MIN);
	cr_assert_eq(burst_next_ms(&b, -123), -123);
	cr_assert_eq(burst_used(&b, 0), 0);
	cr_assert(burst_is_idle(&b, INT64_MIN));
	burst_deinit(&b);
	burst_deinit(NULL);
}

Test(window_burst, zero_limit_is_one_and_cap)
{
	struct burst_window b;

	burst_init(&b, 0, 1000, 0);
	cr_assert_eq(b.burst_max, 1);
	cr_assert_eq(burst_record(&b, 0), 0);
	cr_assert_eq(burst_next_ms(&b, 0), 1000);
	cr_assert_eq(burst_set_limits(&b, UINT32_MAX, 0), 0);
	cr_assert_eq(b.burst_max, WINDOW_MAX_BURST);
	burst_deinit(&b);

	/* A struct filled by hand beyond the cap, or zero, must not crash or over-allocate. */
	memset(&b, 0, sizeof(b));
	b.burst_max = 0;
	b.blocked_until_ms = INT64_MIN;
	cr_assert_eq(burst_next_ms(&b, 5), 5);
	cr_assert_eq(burst_record(&b, 5), 0);
	cr_assert_eq(burst_next_ms(&b, 5), 5); /* W + guard = 0 */
	burst_deinit(&b);
}

Test(window_burst, ring_grows_lazily_and_stays_sorted)
{
	struct burst_window b;

	burst_init(&b, 1000, 1000, 0);
	for (int i = 0; i < 100; i++)
		cr_assert_eq(burst_record(&b, i), 0);
	cr_assert_eq(b.len, 100);
	cr_assert_geq(b.cap, 100);
	cr_assert_leq(b.cap, 200, "capacity %u: not lazy", b.cap);
	/* A record earlier than the newest is moved up to it. */
	cr_assert_eq(burst_record(&b, 10), 0);
	cr_assert_eq(b.ring[(b.head + b.len - 1) % b.cap], 99);
	cr_assert_eq(b.len, 101);
	burst_deinit(&b);
}

Test(window_burst, full_ring_wraps)
{
	struct burst_window b;

	burst_init(&b, 3, 100, 0);
	for (int64_t t = 0; t < 1000; t += 100) {
		cr_assert_eq(burst_next_ms(&b, t), t);
		cr_assert_eq(burst_record(&b, t), 0);
	}
	cr_assert_eq(b.len, 3);
	cr_assert_leq(b.cap, 3);
	cr_assert_eq(burst_used(&b, 900), 1);
	cr_assert_eq(burst_used(&b, 899), 2);
	burst_deinit(&b);
}

Test(window_burst, set_limits_keeps_newest_and_shrinks_memory)
{
	struct burst_window b;

	burst_init(&b, 64, 1000, 0);
	for (int64_t t = 0; t < 64; t++)
		cr_assert_eq(burst_record(&b, t), 0);
	cr_assert_eq(burst_set_limits(&b, 4, 0), 0);
	cr_assert_eq(b.len, 4);
	cr_assert_leq(b.cap, 4);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(b.ring[(b.head + i) % b.cap], 60 + i);
	cr_assert_eq(b.window_ms, 1000);
	cr_assert_eq(burst_next_ms(&b, 64), 1060);
	burst_deinit(&b);
}

/*
 * Each answer REPLACES HighLevel's burst budget: max(0, remaining - uncertain) until
 * now + valid_ms; nothing reaches the ring; true only when the budget, in force, is below what
 * the ring allows at now.
 */
Test(window_burst, reconcile_sets_budget)
{
	static const struct {
		int64_t now_ms, remaining;
		uint32_t uncertain;
		int64_t valid_ms;
		int64_t want_remaining, want_until_ms;
		bool want_tighter;
	} steps[] = {
		{ 10, -1, 0, 250, -1, 0, false },        /* absent: nothing */
		{ 10, INT64_MIN, 0, 250, -1, 0, false }, /* absent */
		{ 10, 8, 0, 250, 8, 260, false },        /* the ring allows 8 too: not tighter */
		{ 20, 7, 0, 250, 7, 270, true },         /* lower */
		{ 30, 9, 0, 250, 9, 280, false },        /* higher: replaced, not kept low */
		{ 40, 9, 2, 250, 7, 290, true },         /* uncertain subtracted */
		{ 50, 3, 5, 1000, 0, 1050, true },       /* never below 0 */
		{ 60, 5, 0, 100, 5, 160, true },         /* ends earlier than the last: replaced */
		{ 70, 0, 0, 0, 0, 70, false },  /* valid 0: never in force, holds nothing */
		{ 80, 0, 0, -5, 0, 80, false }, /* negative validity is 0 */
		{ 90, 4, 0, 1000, 4, 1090, true },
		{ 95, -1, 3, 10, 4, 1090, false }, /* absent: the budget in force stays */
		{ INT64_MAX - 10, 1, 0, 100, 1, INT64_MAX, true }, /* saturates */
		{ INT64_MIN, INT64_MAX, UINT32_MAX, INT64_MAX, INT64_MAX - UINT32_MAX, -1, false },
	};
	struct burst_window b;

	burst_init(&b, 10, 1000, 0);
	cr_assert_eq(b.hl_remaining, -1);
	cr_assert_eq(burst_record(&b, 0), 0);
	cr_assert_eq(burst_record(&b, 0), 0);
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		bool tighter = burst_reconcile(&b, steps[i].now_ms, steps[i].remaining,
		                               steps[i].uncertain, steps[i].valid_ms);

		cr_expect_eq(tighter, steps[i].want_tighter, "step %zu", i);
		cr_expect_eq(b.hl_remaining, steps[i].want_remaining, "step %zu: %" PRId64, i,
		             b.hl_remaining);
		cr_expect_eq(b.hl_until_ms, steps[i].want_until_ms, "step %zu: %" PRId64, i,
		             b.hl_until_ms);
		cr_assert_eq(b.len, 2, "step %zu: reconciliation recorded admissions", i);
	}
	burst_deinit(&b);
}

/* A full ring already allows nothing: a budget of 0 is not tighter than that. */
Test(window_burst, reconcile_on_full_ring_is_not_tighter)
{
	struct burst_window b;

	burst_init(&b, 2, 1000, 0);
	cr_assert_eq(burst_record(&b, 0), 0);
	cr_assert_eq(burst_record(&b, 0), 0);
	cr_assert_not(burst_reconcile(&b, 10, 0, 0, 2000));
	cr_assert_eq(burst_next_ms(&b, 10), 2010, "but it holds the key past the ring");
	cr_assert(burst_reconcile(&b, 1000, 1, 0, 250), "the ring is empty again at 1000");
	cr_assert_eq(burst_used(&b, 1000), 0);
	burst_deinit(&b);
}

/*
 * Every path that records spends the budget while in force, never below 0, and none after its
 * end; burst_next_ms, window_check and burst_slot_ms hold the key until the end once spent.
 */
Test(window_burst, budget_spent_by_every_record_path)
{
	for (int path = 0; path < 3; path++) {
		struct burst_window b;
		struct daily_window d;
		struct window_verdict v;

		burst_init(&b, 100, 1000, 0);
		daily_init(&d, 1000);
		cr_assert(burst_reconcile(&b, 0, 2, 0, 100));
		for (int64_t t = 10; t <= 30; t += 10) {
			int rc = path == 0   ? burst_record(&b, t)
			         : path == 1 ? window_record(&b, NULL, t)
			                     : window_record(&b, &d, t);

			cr_assert_eq(rc, 0);
		}
		cr_expect_eq(b.hl_remaining, 0, "path %d: %" PRId64, path, b.hl_remaining);
		cr_expect_eq(burst_next_ms(&b, 40), 100, "path %d", path);
		v = window_check(&b, path == 2 ? &d : NULL, 40);
		cr_expect_eq(v.scope, WINDOW_BURST, "path %d", path);
		cr_expect_eq(v.earliest_ms, 100, "path %d", path);
		cr_expect_eq(burst_slot_ms(&b, 40, 0), 100, "path %d", path);
		cr_expect_eq(burst_slot_ms(&b, 40, 100), 1100, "path %d: one round later", path);
		cr_expect_eq(burst_next_ms(&b, 100), 100, "path %d: ended", path);
		cr_assert_eq(burst_record(&b, 100), 0);
		cr_expect_eq(b.hl_remaining, 0, "path %d: not spent after its end", path);
		burst_deinit(&b);
		daily_deinit(&d);
	}
}

/* A budget in force keeps the key from being idle; trim forgets it from its end on. */
Test(window_burst, budget_idle_and_trim)
{
	struct burst_window b;

	burst_init(&b, 3, 1000, 100);
	cr_assert(burst_is_idle(&b, 0));
	cr_assert_not(burst_reconcile(&b, 0, 5, 0, 500));
	cr_assert_not(burst_is_idle(&b, 0));
	cr_assert_not(burst_is_idle(&b, 499));
	cr_assert(burst_is_idle(&b, 500));
	burst_trim(&b, 499);
	cr_assert_eq(b.hl_remaining, 5, "still in force at 499");
	cr_assert_null(b.ring);
	burst_trim(&b, 500);
	cr_assert_eq(b.hl_remaining, -1, "forgotten at its end");
	cr_assert(burst_is_idle(&b, 500));
	/* Spent to 0, it still is not idle, and trim keeps it until its end. */
	cr_assert(burst_reconcile(&b, 1000, 0, 0, 500));
	burst_trim(&b, 1200);
	cr_assert_eq(b.hl_remaining, 0);
	cr_assert_not(burst_is_idle(&b, 1200));
	cr_assert_eq(burst_next_ms(&b, 1200), 1500);
	burst_trim(&b, 1500);
	cr_assert_eq(b.hl_remaining, -1);
	cr_assert_eq(burst_next_ms(&b, 1500), 1500);
	burst_deinit(&b);
}

Test(window_burst, trim_frees_and_compacts)
{
	struct burst_window b;

	burst_init(&b, 1000, 100, 0);
	for (int64_t t = 0; t < 500; t++)
		cr_assert_eq(burst_record(&b, t), 0);
	cr_assert_geq(b.cap, 500);
	burst_trim(&b, 590); /* keeps 491..499 */
	cr_assert_eq(b.len, 9);
	cr_assert_lt(b.cap, 500, "trim must give back memory (cap %u)", b.cap);
	cr_assert_eq(burst_used(&b, 590), 9);
	cr_assert_eq(b.ring[b.head], 491);
	burst_trim(&b, 599);
	cr_assert_null(b.ring);
	cr_assert_eq(b.cap, 0);
	cr_assert(burst_is_idle(&b, 599));
	burst_deinit(&b);
}

Test(window_daily, init_and_zero_limit)
{
	struct daily_window d;

	daily_init(&d, 0);
	cr_assert_eq(d.daily_max, 1);
	cr_assert_eq(d.hl_remaining, -1);
	cr_assert_eq(d.blocked_until_ms, INT64_MIN);
	cr_assert_null(d.b);
	cr_assert_eq(daily_next_ms(&d, -7), -7);
	cr_assert_eq(daily_record(&d, 0, 0), 0);
	cr_assert_null(d.b, "recording nothing allocates nothing");
	cr_assert_eq(daily_record(&d, 0, 1), 0);
	cr_assert_eq(daily_next_ms(&d, 0), 289 * WINDOW_BUCKET_MS);
	daily_deinit(&d);
	daily_deinit(NULL);
}

Test(window_daily, floor_division_for_negative_times)
{
	static const struct {
		int64_t t;
		int64_t end_ms; /* when an admission at t stops counting */
	} cases[] = {
		{ 0, 289 * WINDOW_BUCKET_MS },
		{ 299999, 289 * WINDOW_BUCKET_MS },
		{ 300000, 290 * WINDOW_BUCKET_MS },
		{ -1, 288 * WINDOW_BUCKET_MS },
		{ -300000, 288 * WINDOW_BUCKET_MS },
		{ -300001, 287 * WINDOW_BUCKET_MS },
		{ -86700000, 0 },
		{ INT64_MAX, INT64_MAX },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct daily_window d;

		daily_init(&d, 1);
		cr_assert_eq(daily_record(&d, cases[i].t, 1), 0);
		cr_expect_eq(daily_next_ms(&d, cases[i].t), cases[i].end_ms, "t=%" PRId64,
		             cases[i].t);
		if (cases[i].end_ms != INT64_MAX) {
			cr_expect_eq(daily_used(&d, cases[i].end_ms - 1), 1);
			cr_expect_eq(daily_used(&d, cases[i].end_ms), 0);
		}
		daily_deinit(&d);
	}
}

Test(window_daily, deque_bounded_by_bucket_count)
{
	struct daily_window d;

	daily_init(&d, 200000);
	/* One admission per bucket over three days: never more than 289 buckets held. */
	for (int64_t t = 0; t < 3 * WINDOW_DAY_MS; t += WINDOW_BUCKET_MS) {
		cr_assert_eq(daily_record(&d, t, 1), 0);
		cr_assert_leq(d.len, WINDOW_N_BUCKETS);
		cr_assert_leq(d.cap, 2 * WINDOW_N_BUCKETS);
		cr_assert_eq(daily_used(&d, t), d.len);
		cr_assert_eq(d.total, d.len);
	}
	cr_assert_eq(d.len, WINDOW_N_BUCKETS);
	daily_deinit(&d);
}

Test(window_daily, bucket_count_saturates)
{
	struct daily_window d;

	daily_init(&d, UINT32_MAX);
	cr_assert_eq(daily_record(&d, 0, UINT32_MAX), 0);
	cr_assert_eq(daily_record(&d, 0, 5), 0);
	cr_assert_eq(daily_used(&d, 0), UINT32_MAX);
	cr_assert_eq(d.total, UINT32_MAX);
	cr_assert_eq(daily_next_ms(&d, 0), 289 * WINDOW_BUCKET_MS);
	daily_deinit(&d);
}

Test(window_daily, hl_remaining_spent_and_forgotten)
{
	struct daily_window d;

	daily_init(&d, 1000);
	cr_assert_eq(daily_reconcile(&d, 0, 3, 1000, 0), 0);
	cr_assert_eq(d.hl_remaining, 3);
	cr_assert_eq(d.hl_reset_at_ms, 1000);
	cr_assert_eq(daily_record(&d, 10, 2), 0);
	cr_assert_eq(d.hl_remaining, 1);
	cr_assert_eq(daily_record(&d, 20, 5), 0);
	cr_assert_eq(d.hl_remaining, 0);
	cr_assert_eq(daily_next_ms(&d, 30), 1000);
	cr_assert_eq(daily_record(&d, 1000, 1), 0);
	cr_assert_eq(d.hl_remaining, -1, "forgotten at the reset");
	cr_assert_eq(daily_reconcile(&d, 2000, 0, 5000, 0), 0);
	daily_trim(&d, 6999);
	cr_assert_eq(d.hl_remaining, 0);
	daily_trim(&d, 7000);
	cr_assert_eq(d.hl_remaining, -1);
	daily_deinit(&d);
}

/* Each answer's view replaces the last one, and none of it reaches the buckets. */
Test(window_daily, reconcile_replaces_view_and_records_nothing)
{
	static const struct {
		int64_t now_ms, remaining, reset_in_ms;
		uint32_t uncertain;
		int64_t want_remaining, want_reset_at_ms;
	} steps[] = {
		{ 0, 100, 50000, 0, 100, 50000 },
		{ 10, 40, 49990, 0, 40, 50000 },         /* lower */
		{ 20, 90, 49980, 0, 90, 50000 },         /* higher: replaced, not kept low */
		{ 30, 90, 200000, 5, 85, 200030 },       /* uncertain subtracted, new reset */
		{ 40, 3, 1000, 7, 0, 1040 },             /* never below 0; an earlier reset too */
		{ 50, 7, -1, 0, 7, 50 + WINDOW_DAY_MS }, /* no reset: held a day */
		{ 60, -1, 5, 0, 7, 50 + WINDOW_DAY_MS }, /* absent: unchanged */
		{ INT64_MAX - 10, 1, -1, 0, 1, INT64_MAX }, /* saturates */
		{ INT64_MIN, INT64_MAX, INT64_MAX, UINT32_MAX, INT64_MAX - UINT32_MAX, -1 },
	};
	struct daily_window d;

	daily_init(&d, 200000);
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		cr_assert_eq(daily_reconcile(&d, steps[i].now_ms, steps[i].remaining,
		                             steps[i].reset_in_ms, steps[i].uncertain),
		             0);
		cr_expect_eq(d.hl_remaining, steps[i].want_remaining, "step %zu: %" PRId64, i,
		             d.hl_remaining);
		cr_expect_eq(d.hl_reset_at_ms, steps[i].want_reset_at_ms, "step %zu: %" PRId64, i,
		             d.hl_reset_at_ms);
		cr_assert_null(d.b, "step %zu: reconciliation allocated buckets", i);
		cr_assert_eq(d.total, 0);
	}
	daily_deinit(&d);
}

/* The slow path of the old semantics: many answers over a day never eat the daily budget. */
Test(window_daily, many_answers_do_not_accumulate)
{
	struct burst_window b;
	struct daily_window d;
	uint64_t admitted = 0;
	int64_t t = 0;

	burst_init(&b, 100, 10000, 250);
	daily_init(&d, 5000);
	/*
	 * One call a second. Every answer comes after HighLevel has seen all our calls (the ones
	 * sent after it arrived first), while 3 calls are still unanswered: it says
	 * 5000 - admitted today and 100 - 10 in its 10 s. Counting the 3 again on each answer
	 * would eat the budget within about 1700 calls.
	 */
	for (; t < WINDOW_DAY_MS; t += 1000) {
		cr_assert_eq(window_check(&b, &d, t).scope, WINDOW_OK, "refused at %" PRId64, t);
		cr_assert_eq(window_record(&b, &d, t), 0);
		admitted++;
		if (admitted >= 4990)
			break;
		/* 3 of ours unanswered: believed for W / 4, as the limiter does. */
		(void)burst_reconcile(&b, t, 100 - (admitted < 10 ? (int64_t)admitted : 10), 3,
		                      2500);
		cr_assert_eq(b.hl_remaining, 97 - (admitted < 10 ? (int64_t)admitted : 10));
		cr_assert_eq(b.len, admitted < 100 ? admitted : 100, "nothing recorded");
		cr_assert_eq(daily_reconcile(&d, t, 5000 - (int64_t)admitted, -1, 3), 0);
		cr_assert_eq(d.hl_remaining, 4997 - (int64_t)admitted);
	}
	cr_assert_eq(admitted, 4990);
	cr_assert_eq(daily_used(&d, t), 4990);
	burst_deinit(&b);
	daily_deinit(&d);
}

Test(window_slot, edge_values)
{
	struct burst_window b;
	struct daily_window d;
	struct window_verdict v;

	/* W + guard = 0: every admission may go at once, however far ahead. */
	burst_init(&b, 1, 0, 0);
	cr_assert_eq(burst_slot_ms(&b, 5, UINT64_MAX), 5);
	burst_deinit(&b);

	burst_init(&b, 2, UINT32_MAX, UINT32_MAX);
	cr_assert_eq(burst_slot_ms(&b, 0, UINT64_MAX), INT64_MAX, "saturates");
	cr_assert_eq(burst_slot_ms(&b, INT64_MIN, 2), INT64_MIN + 2 * (int64_t)UINT32_MAX);
	burst_block(&b, INT64_MAX);
	cr_assert_eq(burst_slot_ms(&b, 0, 0), INT64_MAX);
	burst_deinit(&b);

	/* A spent budget that never ends, and rounds after one that ends late, saturate. */
	burst_init(&b, 3, 1000, 0);
	cr_assert(burst_reconcile(&b, 0, 0, 0, INT64_MAX));
	cr_assert_eq(burst_slot_ms(&b, 0, 0), INT64_MAX);
	cr_assert_eq(burst_slot_ms(&b, 0, UINT64_MAX), INT64_MAX);
	cr_assert(burst_reconcile(&b, 0, 2, 0, INT64_MAX - 5000));
	cr_assert_eq(burst_slot_ms(&b, 0, 1), 0);
	cr_assert_eq(burst_slot_ms(&b, 0, 2), INT64_MAX - 5000);
	cr_assert_eq(burst_slot_ms(&b, 0, 5), INT64_MAX - 4000);
	cr_assert_eq(burst_slot_ms(&b, 0, 20), INT64_MAX);
	cr_assert_eq(burst_slot_ms(&b, 0, UINT64_MAX), INT64_MAX);
	burst_deinit(&b);

	daily_init(&d, 3);
	cr_assert_eq(daily_slot_ms(&d, 7, 2), 7);
	cr_assert_eq(daily_slot_ms(&d, 7, 3), INT64_MAX, "k >= D: beyond the day");
	cr_assert_eq(daily_slot_ms(&d, 7, UINT64_MAX), INT64_MAX);
	v = window_slot(NULL, &d, 7, 3);
	cr_assert_eq(v.scope, WINDOW_DAILY);
	cr_assert_eq(v.earliest_ms, INT64_MAX);
	daily_deinit(&d);

	v = window_slot(NULL, NULL, 42, UINT64_MAX);
	cr_assert_eq(v.scope, WINDOW_OK);
	cr_assert_eq(v.earliest_ms, 42);
}

Test(window_both, check_accepts_null_parts)
{
	struct burst_window b;
	struct daily_window d;
	struct window_verdict v;

	burst_init(&b, 1, 1000, 0);
	daily_init(&d, 1);
	cr_assert_eq(window_record(&b, NULL, 0), 0);
	cr_assert_eq(daily_used(&d, 0), 0);
	v = window_check(&b, NULL, 0);
	cr_assert_eq(v.scope, WINDOW_BURST);
	cr_assert_eq(v.earliest_ms, 1000);
	v = window_check(NULL, &d, 0);
	cr_assert_eq(v.scope, WINDOW_OK);
	cr_assert_eq(window_record(NULL, &d, 0), 0);
	v = window_check(NULL, &d, 0);
	cr_assert_eq(v.scope, WINDOW_DAILY);
	v = window_check(NULL, NULL, 42);
	cr_assert_eq(v.scope, WINDOW_OK);
	cr_assert_eq(v.earliest_ms, 42);
	burst_deinit(&b);
	daily_deinit(&d);
}

/* A PIT: its own burst window, the daily window shared with the resource's other PITs. */
Test(window_both, shared_daily_between_burst_windows)
{
	struct burst_window p1, p2;
	struct daily_window shared;

	burst_init(&p1, 2, 1000, 0);
	burst_init(&p2, 2, 1000, 0);
	daily_init(&shared, 3);
	cr_assert_eq(window_check(&p1, &shared, 0).scope, WINDOW_OK);
	cr_assert_eq(window_record(&p1, &shared, 0), 0);
	cr_assert_eq(window_record(&p1, &shared, 0), 0);
	cr_assert_eq(window_check(&p1, &shared, 0).scope, WINDOW_BURST);
	cr_assert_eq(window_check(&p2, &shared, 0).scope, WINDOW_OK);
	cr_assert_eq(window_record(&p2, &shared, 0), 0);
	cr_assert_eq(window_check(&p2, &shared, 0).scope, WINDOW_DAILY);
	burst_deinit(&p1);
	burst_deinit(&p2);
	daily_deinit(&shared);
}

/* An idle key, once trimmed, holds no heap memory, whatever it went through. */
Test(window_both, idle_key_holds_no_heap_after_trim)
{
	struct burst_window b;
	struct daily_window d;
	int64_t t = 0;

	burst_init(&b, 100, 10000, 250);
	daily_init(&d, 200000);
	for (int i = 0; i < 5000; i++) {
		struct window_verdict v = window_check(&b, &d, t);

		if (v.scope == WINDOW_OK)
			cr_assert_eq(window_record(&b, &d, t), 0);
		else
			t = v.earliest_ms;
		if (i % 1000 == 0) {
			(void)burst_reconcile(&b, t, 0, 2, 2500);
			cr_assert_eq(daily_reconcile(&d, t, 10, -1, 3), 0);
		}
	}
	cr_assert_not_null(b.ring);
	cr_assert_not_null(d.b);
	burst_block(&b, t + 1000);
	daily_block(&d, t + 2000);
	cr_assert_eq(daily_reconcile(&d, t, 5, 3000, 0), 0);

	t += WINDOW_DAY_MS + WINDOW_BUCKET_MS; /* every bucket has stopped counting by now */
	cr_assert(burst_is_idle(&b, t));
	cr_assert(daily_is_idle(&d, t));
	burst_trim(&b, t);
	daily_trim(&d, t);
	cr_assert_null(b.ring);
	cr_assert_eq(b.cap, 0);
	cr_assert_eq(b.len, 0);
	cr_assert_null(d.b);
	cr_assert_eq(d.cap, 0);
	cr_assert_eq(d.len, 0);
	cr_assert_eq(d.total, 0);
	cr_assert_eq(b.blocked_until_ms, INT64_MIN);
	cr_assert_eq(d.blocked_until_ms, INT64_MIN);
	cr_assert_eq(d.hl_remaining, -1);
	cr_assert_eq(b.hl_remaining, -1);
	/* Deinit after trim is a no-op; the key is reusable. */
	cr_assert_eq(window_check(&b, &d, t).scope, WINDOW_OK);
	burst_deinit(&b);
	daily_deinit(&d);
}

/* ------------------------------------------------------------------ randomized oracle */

/* splitmix64: a fixed seed gives the same run on every machine. */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return rng_next(s) % n;
}

struct admission {
	int64_t t;
	uint32_t n;        /* N in force when admitted */
	uint64_t span;     /* W + guard in force when admitted */
	uint32_t min_n;    /* smallest N in force since the previous admission (incl. this one) */
	size_t known_from; /* admissions before this index were trimmed away by then */
};

/*
 * The burst guarantee over recorded times: for admission j, the admission N_j before it is at
 * least W_j + guard older, unless N was smaller than N_j at some point in between, or a trim
 * dropped it as no longer counting under the W of that time (a grown N or W cannot know
 * admissions the window was not asked to keep). While N and W only shrink or stay, this is
 * the full "at most N in any W + guard".
 */
static size_t check_burst_oracle(const struct admission *a, size_t n)
{
	size_t checked = 0;

	for (size_t j = 0; j < n; j++) {
		uint32_t nj = a[j].n, lowest = UINT32_MAX;
		size_t i;

		if (j < nj)
			continue;
		i = j - nj;
		if (i < a[j].known_from)
			continue;
		for (size_t k = i + 1; k <= j; k++)
			if (a[k].min_n < lowest)
				lowest = a[k].min_n;
		if (lowest < nj)
			continue;
		cr_assert_geq((uint64_t)(a[j].t - a[i].t), a[j].span,
		              "admissions %zu (t=%" PRId64 ") and %zu (t=%" PRId64
		              ") closer than W+guard=%" PRIu64 " with N=%u",
		              i, a[i].t, j, a[j].t, a[j].span, nj);
		checked++;
	}
	return checked;
}

/* The daily guarantee: two pointers, no rolling 24 h holds more than D. */
static void check_daily_oracle(const struct admission *a, size_t n, uint32_t daily_max)
{
	size_t lo = 0;

	for (size_t hi = 0; hi < n; hi++) {
		while (a[hi].t - a[lo].t >= WINDOW_DAY_MS)
			lo++;
		cr_assert_leq(hi - lo + 1, daily_max,
		              "%zu admissions in the 24 h ending at %" PRId64, hi - lo + 1,
		              a[hi].t);
	}
}

Test(window_oracle, random_arrivals_keep_guarantees, .timeout = 60)
{
	uint64_t seed = 0x5eed0001;

	for (int run = 0; run < 24; run++) {
		uint32_t n = 1 + (uint32_t)rng_below(&seed, 12);
		uint32_t w = 50 + (uint32_t)rng_below(&seed, 2000);
		uint32_t guard = (uint32_t)rng_below(&seed, 300);
		uint32_t daily = 20 + (uint32_t)rng_below(&seed, 400);
		bool change_limits = run % 2 == 1;
		bool reconcile = run % 3 == 2;
		int64_t t = (int64_t)rng_below(&seed, 2000000) - 1000000; /* negative too */
		struct burst_window b;
		struct daily_window d;
		size_t cap = 20000, len = 0;
		struct admission *a = calloc(cap, sizeof(*a));
		uint32_t min_n = n;
		size_t known_from = 0, checked;
		uint64_t blocked_checks = 0;
		/* HighLevel's latest daily view: at most hl_view admissions from then to hl_until.
		 */
		int64_t hl_view = -1, hl_until = 0;
		uint64_t hl_spent = 0;
		/* HighLevel's latest burst remaining: at most bl_view from then to bl_until. */
		int64_t bl_view = -1, bl_until = 0;
		uint64_t bl_spent = 0, budget_waits = 0;

		cr_assert(a);
		burst_init(&b, n, w, guard);
		daily_init(&d, daily);
		for (int step = 0; step < 30000 && len < cap; step++) {
			uint64_t r = rng_below(&seed, 1000);

			/* Arrivals: mostly close together, sometimes long idle gaps. */
			if (r < 600)
				t += (int64_t)rng_below(&seed, w / 4 + 1);
			else if (r < 980)
				t += (int64_t)rng_below(&seed, 3 * (uint64_t)w + 1);
			else
				t += (int64_t)rng_below(&seed, 2 * WINDOW_DAY_MS / 10);
			if (change_limits && rng_below(&seed, 200) == 0) {
				uint32_t nn = 1 + (uint32_t)rng_below(&seed, 12);
				uint32_t nw = 50 + (uint32_t)rng_below(&seed, 2000);

				cr_assert_eq(burst_set_limits(&b, nn, nw), 0);
				if (nn < min_n)
					min_n = nn;
			}
			if (reconcile && rng_below(&seed, 20) == 0) {
				int64_t rem =
				        (int64_t)rng_below(&seed, daily + 2) - 1; /* -1: absent */
				int64_t reset =
				        rng_below(&seed, 4) == 0
				                ? -1
				                : (int64_t)rng_below(&seed, 2 * WINDOW_DAY_MS);
				uint32_t uncertain = (uint32_t)rng_below(&seed, 4);

				cr_assert_eq(daily_reconcile(&d, t, rem, reset, uncertain), 0);
				if (rem >= 0) {
					hl_view = rem > uncertain ? rem - uncertain : 0;
					hl_until = t + (reset >= 0 ? reset : WINDOW_DAY_MS);
					hl_spent = 0;
				}
			}
			if (reconcile && rng_below(&seed, 8) == 0) {
				/* As the limiter does: W / 4, or (another W) shorter or longer. */
				int64_t rem = (int64_t)rng_below(&seed, b.burst_max + 2) - 1;
				uint32_t uncertain = (uint32_t)rng_below(&seed, 3);
				int64_t valid =
				        rng_below(&seed, 2)
				                ? (int64_t)(b.window_ms / 4)
				                : (int64_t)rng_below(&seed, 3 * (uint64_t)w);

				(void)burst_reconcile(&b, t, rem, uncertain, valid);
				if (rem >= 0) {
					bl_view = rem > uncertain ? rem - uncertain : 0;
					bl_until = t + valid;
					bl_spent = 0;
				}
			}
			if (rng_below(&seed, 100) == 0) {
				uint64_t span = (uint64_t)b.window_ms + b.guard_ms;

				burst_trim(&b, t);
				while (known_from < len && (uint64_t)(t - a[known_from].t) >= span)
					known_from++;
			}
			if (rng_below(&seed, 100) == 0)
				daily_trim(&d, t);

			struct window_verdict v = window_check(&b, &d, t);

			if (v.scope != WINDOW_OK) {
				cr_assert_gt(v.earliest_ms, t);
				blocked_checks++;
				if (bl_view >= 0 && t < bl_until && bl_spent == (uint64_t)bl_view &&
				    v.scope == WINDOW_BURST && v.earliest_ms == bl_until)
					budget_waits++;
				continue;
			}
			cr_assert_eq(window_record(&b, &d, t), 0);
			if (bl_view >= 0 && t < bl_until) {
				bl_spent++;
				cr_assert_leq(bl_spent, (uint64_t)bl_view,
				              "run %d: %" PRIu64
				              " admissions after HighLevel said %" PRId64
				              " left in its interval until %" PRId64,
				              run, bl_spent, bl_view, bl_until);
			}
			if (hl_view >= 0 && t < hl_until) {
				hl_spent++;
				cr_assert_leq(hl_spent, (uint64_t)hl_view,
				              "run %d: %" PRIu64
				              " admissions after HighLevel said %" PRId64
				              " until %" PRId64,
				              run, hl_spent, hl_view, hl_until);
			}
			if (min_n > b.burst_max)
				min_n = b.burst_max;
			a[len].t = t;
			a[len].n = b.burst_max;
			a[len].span = (uint64_t)b.window_ms + b.guard_ms;
			a[len].min_n = min_n;
			a[len].known_from = known_from;
			len++;
			min_n = b.burst_max;
		}
		cr_assert_gt(len, 100, "run %d: only %zu admissions", run, len);
		cr_assert_gt(blocked_checks, 0, "run %d never saturated", run);
		if (reconcile)
			cr_assert_gt(budget_waits, 0, "run %d: HighLevel's budget never held", run);
		checked = check_burst_oracle(a, len);
		cr_log_info("run %d: N=%u W=%u guard=%u D=%u: %zu admissions, %zu pairs checked, "
		            "%" PRIu64 " waits for HighLevel's burst budget",
		            run, n, w, guard, daily, len, checked, budget_waits);
		/* The exemptions (grown N or W) must leave most pairs checked. */
		cr_assert_gt(checked, len / 2, "run %d: only %zu of %zu checked", run, checked,
		             len);
		check_daily_oracle(a, len, daily);
		free(a);
		burst_deinit(&b);
		daily_deinit(&d);
	}
}

/*
 * Under constant demand a waiting request is admitted exactly at the earliest time the check
 * gave: never refused there, never admissible a millisecond before. In steady state that is N
 * admissions per W + guard.
 */
Test(window_oracle, saturation_uses_full_budget)
{
	static const struct {
		uint32_t n, w, guard;
	} cfg[] = { { 100, 10000, 250 }, { 1, 1000, 0 }, { 7, 333, 17 }, { 25, 10000, 250 } };

	for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++) {
		struct burst_window b;
		struct daily_window d;
		uint64_t span = (uint64_t)cfg[c].w + cfg[c].guard;
		uint64_t periods = 50;
		int64_t t = 12345, start = t, end = t + (int64_t)(span * periods);
		uint64_t admitted = 0;

		burst_init(&b, cfg[c].n, cfg[c].w, cfg[c].guard);
		daily_init(&d, 200000);
		while (t < end) {
			struct window_verdict v = window_check(&b, &d, t);

			if (v.scope == WINDOW_OK) {
				cr_assert_eq(window_record(&b, &d, t), 0);
				admitted++;
				continue;
			}
			cr_assert_eq(v.scope, WINDOW_BURST);
			cr_assert_neq(window_check(&b, &d, v.earliest_ms - 1).scope, WINDOW_OK);
			t = v.earliest_ms;
			cr_assert_eq(window_check(&b, &d, t).scope, WINDOW_OK,
			             "refused at its own earliest time %" PRId64, t);
		}
		/* Exactly N per period from an idle start: [start, start + k * span). */
		cr_assert_eq(admitted, (uint64_t)cfg[c].n * periods,
		             "config %zu: %" PRIu64 " admissions in %" PRIu64 " periods", c,
		             admitted, periods);
		cr_assert_eq(t, end);
		(void)start;
		burst_deinit(&b);
		daily_deinit(&d);
	}
}

/* Saturation against the daily limit alone: D per day plus at most one bucket held back. */
Test(window_oracle, daily_saturation)
{
	struct burst_window b;
	struct daily_window d;
	int64_t t = 0, end = 3 * WINDOW_DAY_MS;
	uint64_t admitted = 0;
	size_t cap = 4000, len = 0;
	struct admission *a = calloc(cap, sizeof(*a));

	cr_assert(a);
	burst_init(&b, 1, 60000, 0); /* one a minute: 1440 a day */
	daily_init(&d, 1000);
	while (t < end && len < cap) {
		struct window_verdict v = window_check(&b, &d, t);

		if (v.scope != WINDOW_OK) {
			t = v.earliest_ms;
			continue;
		}
		cr_assert_eq(window_record(&b, &d, t), 0);
		a[len++] = (struct admission){ .t = t, .n = 1, .span = 60000, .min_n = 1 };
		admitted++;
	}
	check_daily_oracle(a, len, 1000);
	/* Three days, 1000 a day: the whole-bucket rounding costs at most a few per day. */
	cr_assert_geq(admitted, 2980, "%" PRIu64 " admissions in 3 days", admitted);
	cr_assert_leq(admitted, 3000);
	free(a);
	burst_deinit(&b);
	daily_deinit(&d);
}

/* ------------------------------------------------------------------ look-ahead property */

struct slot_features {
	bool blocks, limits, budget, hl, clock_back, small_daily;
};

/* A random reachable state: admissions (at their check or forced), answers, limits, blocks. */
static int64_t random_state(uint64_t *seed, struct slot_features f, struct burst_window *b,
                            struct daily_window *d)
{
	uint32_t n = 1 + (uint32_t)rng_below(seed, 6);
	uint32_t w = 1 + (uint32_t)rng_below(seed, 2000);
	uint32_t guard = (uint32_t)rng_below(seed, 300);
	uint32_t daily = f.small_daily ? 1 + (uint32_t)rng_below(seed, 25)
	                               : 1000 + (uint32_t)rng_below(seed, 100000);
	int64_t t = (int64_t)rng_below(seed, 4 * WINDOW_DAY_MS) - 2 * WINDOW_DAY_MS;
	int steps = (int)rng_below(seed, 80);

	burst_init(b, n, w, guard);
	daily_init(d, daily);
	for (int i = 0; i < steps; i++) {
		uint64_t r = rng_below(seed, 100), a = rng_below(seed, 10);
		uint64_t span = (uint64_t)b->window_ms + b->guard_ms;

		if (a < 6)
			t += (int64_t)rng_below(seed, span / 2 + 1);
		else if (a < 9)
			t += (int64_t)rng_below(seed, 2 * WINDOW_BUCKET_MS);
		else
			t += (int64_t)rng_below(seed, WINDOW_DAY_MS / 2);
		if (f.clock_back && rng_below(seed, 6) == 0)
			t -= (int64_t)rng_below(seed, 3 * span + 1);
		if (r < 50) {
			struct window_verdict v = window_check(b, d, t);

			if (v.scope != WINDOW_OK && rng_below(seed, 2) &&
			    v.earliest_ms - t < 2 * WINDOW_DAY_MS)
				t = v.earliest_ms, v.scope = WINDOW_OK;
			if (v.scope == WINDOW_OK)
				cr_assert_eq(window_record(b, d, t), 0);
		} else if (r < 58) {
			cr_assert_eq(window_record(b, d, t), 0); /* e.g. another process's */
		} else if (r < 68 && f.budget) {
			/* HighLevel's burst remaining: the limiter's W / 4, or shorter or longer.
			 */
			uint64_t c = rng_below(seed, 3);
			int64_t valid = c == 0   ? (int64_t)(b->window_ms / 4)
			                : c == 1 ? (int64_t)rng_below(seed, span + 1)
			                         : (int64_t)rng_below(seed, 4 * span + 1);

			(void)burst_reconcile(b, t, (int64_t)rng_below(seed, b->burst_max + 3) - 1,
			                      (uint32_t)rng_below(seed, 3), valid);
		} else if (r < 76 && f.hl) {
			uint64_t c = rng_below(seed, 3);
			int64_t reset = c == 0   ? -1
			                : c == 1 ? (int64_t)rng_below(seed, 3 * span + 1)
			                         : (int64_t)rng_below(seed, 2 * WINDOW_DAY_MS);

			cr_assert_eq(daily_reconcile(d, t, (int64_t)rng_below(seed, 12) - 1, reset,
			                             (uint32_t)rng_below(seed, 4)),
			             0);
		} else if (r < 82 && f.limits) {
			cr_assert_eq(burst_set_limits(b, (uint32_t)rng_below(seed, 7),
			                              (uint32_t)rng_below(seed, 2000)),
			             0);
			daily_set_limit(d, f.small_daily ? (uint32_t)rng_below(seed, 25)
			                                 : (uint32_t)rng_below(seed, 100000));
		} else if (r < 88 && f.blocks) {
			int64_t until = t + (int64_t)rng_below(seed, 3 * span + 1) - (int64_t)span;

			if (rng_below(seed, 2))
				burst_block(b, until);
			else
				daily_block(d,
				            rng_below(seed, 4)
				                    ? until
				                    : t + (int64_t)rng_below(seed, WINDOW_DAY_MS));
		} else if (r < 94) {
			burst_trim(b, t);
			daily_trim(d, t);
		}
	}
	/* Look from a moment near the last event: after it, or (clock went back) before it. */
	if (f.clock_back && rng_below(seed, 2))
		return t - (int64_t)rng_below(seed, 2 * ((uint64_t)b->window_ms + b->guard_ms) + 1);
	return t + (int64_t)rng_below(seed, (uint64_t)b->window_ms + b->guard_ms + 1);
}

/*
 * The look-ahead functions agree exactly with the rule they summarise, over random states and
 * k, with every feature on and off: blocks, limit changes, HighLevel's burst remaining (a
 * budget spent per admission until it ends), a small daily limit, HighLevel's daily remaining,
 * and a clock that goes back. k >= D gives INT64_MAX, and the
 * simulation then really is more than a day away.
 */
Test(window_slot, matches_simulation_over_random_states, .timeout = 300)
{
	uint64_t seed = 0x5107a11;
	struct slot_stats st = { 0 };
	char err[256];

	for (int run = 0; run < 6400; run++) {
		unsigned bits = (unsigned)run % 64;
		struct slot_features f = { .blocks = bits & 1,
			                   .limits = bits & 2,
			                   .budget = bits & 4,
			                   .hl = bits & 8,
			                   .clock_back = bits & 16,
			                   .small_daily = bits & 32 };
		struct burst_window b;
		struct daily_window d;
		int64_t now = random_state(&seed, f, &b, &d);

		for (int i = 0; i < 4; i++) {
			uint64_t k = rng_below(&seed, 3 * (uint64_t)b.burst_max + 30);

			if (i == 0)
				k = rng_below(&seed, 2);
			if (!slot_matches(&b, &d, now, k, err, sizeof(err), &st) ||
			    !slot_matches(&b, NULL, now, k, err, sizeof(err), NULL) ||
			    !slot_matches(NULL, &d, now, k, err, sizeof(err), NULL))
				cr_assert_fail("run %d (features %#x, now %" PRId64 "): %s", run,
				               bits, now, err);
		}
		burst_deinit(&b);
		daily_deinit(&d);
	}
	cr_log_info("slots: %" PRIu64 " cases, %" PRIu64 " beyond a day, %" PRIu64
	            " daily-then-burst, %" PRIu64 " clock-back rounds, %" PRIu64
	            " held by a burst budget; scopes ok %" PRIu64 " burst %" PRIu64
	            " daily %" PRIu64 " blocked %" PRIu64 " blocked-day %" PRIu64,
	            st.cases, st.beyond_day, st.cross, st.clock_back_rounds, st.budget_held,
	            st.scopes[WINDOW_OK], st.scopes[WINDOW_BURST], st.scopes[WINDOW_DAILY],
	            st.scopes[WINDOW_BLOCKED], st.scopes[WINDOW_BLOCKED_DAY]);
	/* The states must reach every case the proofs distinguish. */
	cr_assert_gt(st.beyond_day, 10);
	cr_assert_gt(st.cross, 10);
	cr_assert_gt(st.clock_back_rounds, 10);
	cr_assert_gt(st.budget_held, 10);
	for (int sc = WINDOW_OK; sc <= WINDOW_BLOCKED_DAY; sc++)
		cr_assert_gt(st.scopes[sc], 10, "scope %d reached %" PRIu64 " times", sc,
		             st.scopes[sc]);
}

/* burst_sent: an admission's entry moves to when it actually left, later entries with it. */
Test(burst_sent, moves_entry_and_keeps_ring_sorted)
{
	struct burst_window b;

	burst_init(&b, 3, 1000, 100);
	cr_assert_eq(burst_record(&b, 0), 0);
	uint64_t t1 = b.n_recorded;
	cr_assert_eq(burst_record(&b, 0), 0);
	uint64_t t2 = b.n_recorded;
	cr_assert_eq(burst_record(&b, 5), 0);
	uint64_t t3 = b.n_recorded;
	cr_assert_eq(burst_next_ms(&b, 5), 1100);

	/* The first one left only at 40 (a connection had to be opened): its slot frees later,
	 * and the second, admitted with it but sent after it, cannot be earlier. */
	burst_sent(&b, t1, 40);
	cr_expect_eq(burst_next_ms(&b, 50), 1140);
	cr_expect_eq(burst_slot_ms(&b, 50, 1), 1140);
	cr_expect_eq(burst_slot_ms(&b, 50, 2), 1140);
	/* Never earlier: a send time before the entry changes nothing. */
	burst_sent(&b, t3, 1);
	cr_expect_eq(burst_slot_ms(&b, 50, 2), 1140);
	burst_sent(&b, t3, 60);
	cr_expect_eq(burst_slot_ms(&b, 50, 2), 1160);
	/* Unknown and future tickets are ignored. */
	burst_sent(&b, 0, 5000);
	burst_sent(&b, t3 + 1, 5000);
	cr_expect_eq(burst_next_ms(&b, 50), 1140);
	/* A ticket that left the ring is ignored. */
	cr_assert_eq(burst_record(&b, 1200), 0);
	burst_sent(&b, t1, 5000);
	cr_expect_eq(burst_next_ms(&b, 1200), 1200, "the entry of 40 frees at 1140");
	cr_expect_eq(burst_slot_ms(&b, 1200, 1), 1200);
	cr_expect_eq(burst_slot_ms(&b, 1200, 2), 2300);
	(void)t2;
	burst_deinit(&b);
}
