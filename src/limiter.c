/*
 * limiter.c: placeholder admission: every request is admitted at once.
 */
#include "limiter.h"

#include <stdlib.h>
#include <string.h>

struct limiter {
	const struct config *cfg;
};

struct limiter *limiter_new(struct event_base *base, const struct config *cfg)
{
	struct limiter *l = calloc(1, sizeof(*l));

	if (l)
		l->cfg = cfg;
	return l;
}

void limiter_free(struct limiter *l)
{
	free(l);
}

void limiter_set_config(struct limiter *l, const struct config *cfg)
{
	l->cfg = cfg;
}

bool limiter_acquire(struct limiter *l, const struct classify_result *key, int64_t deadline_ms,
                     bool at_head, struct limiter_waiter *w, limiter_cb cb, void *arg,
                     struct limiter_verdict *v)
{
	memset(v, 0, sizeof(*v));
	v->outcome = LIMITER_ADMIT;
	v->limit = v->remaining = v->interval_ms = -1;
	v->daily_limit = v->daily_remaining = v->daily_reset_ms = -1;
	return true;
}

void limiter_cancel(struct limiter_waiter *w)
{
}

void limiter_feedback(struct limiter *l, const struct classify_result *key,
                      const struct limiter_waiter *w, int status, const struct ratelimit_info *ri)
{
}

uint32_t limiter_n_waiting(const struct limiter *l)
{
	return 0;
}
