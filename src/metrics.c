/*
 * metrics.c: storage and Prometheus rendering of the table in metrics.h. One process, one loop:
 * plain integers, no atomics.
 */
#include "metrics.h"

#include <string.h>

#include <event2/buffer.h>

#include "util.h"

struct metric_def {
	const char *type;
	const char *family;
	const char *labels;
	const char *help;
};

static const struct metric_def defs[M__COUNT] = {
#define METRIC_DEF(id, type, family, labels, help) [M_##id] = { #type, family, labels, help },
	METRICS_TABLE(METRIC_DEF)
#undef METRIC_DEF
};

static int64_t values[M__COUNT];

/* Bucket bounds in ms; +Inf is implicit. */
static const double bounds[] = { 1,   5,    10,   25,   50,    100,   250,
	                         500, 1000, 2500, 5000, 10000, 20000, 60000 };
#define N_BOUNDS ARRAY_SIZE(bounds)

static const struct {
	const char *family;
	const char *help;
} hist_defs[H__COUNT] = {
	[H_QUEUE_WAIT] = { "ghlproxy_queue_wait_ms",
	                   "Time requests spent queued before admission" },
	[H_UPSTREAM_LATENCY] = { "ghlproxy_upstream_latency_ms",
	                         "Time from sending a request to HighLevel to its answer's head" },
};

static struct {
	uint64_t buckets[N_BOUNDS + 1];
	double sum;
	uint64_t count;
} hists[H__COUNT];

void metrics_inc(enum metric_id id)
{
	values[id]++;
}

void metrics_add(enum metric_id id, uint64_t n)
{
	values[id] += (int64_t)n;
}

void metrics_set(enum metric_id id, int64_t v)
{
	values[id] = v;
}

uint64_t metrics_get(enum metric_id id)
{
	return (uint64_t)values[id];
}

void metrics_observe(enum metric_hist h, double ms)
{
	size_t i = 0;

	while (i < N_BOUNDS && ms > bounds[i])
		i++;
	hists[h].buckets[i]++;
	hists[h].sum += ms;
	hists[h].count++;
}

void metrics_upstream_status(int status)
{
	static const enum metric_id classes[] = { M_UP_1XX, M_UP_2XX, M_UP_3XX, M_UP_4XX,
		                                  M_UP_5XX };

	if (status >= 100 && status < 600)
		metrics_inc(classes[status / 100 - 1]);
	if (status == 429)
		metrics_inc(M_UP_429);
}

void metrics_render(struct evbuffer *out)
{
	const char *last_family = NULL;

	for (int i = 0; i < M__COUNT; i++) {
		const struct metric_def *d = &defs[i];
		/* Rows of one family are adjacent in the table: HELP and TYPE once per family. */
		if (!last_family || strcmp(last_family, d->family) != 0) {
			evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", d->family, d->help,
			                    d->family, d->type);
			last_family = d->family;
		}
		if (*d->labels)
			evbuffer_add_printf(out, "%s{%s} %lld\n", d->family, d->labels,
			                    (long long)values[i]);
		else
			evbuffer_add_printf(out, "%s %lld\n", d->family, (long long)values[i]);
	}
	for (int h = 0; h < H__COUNT; h++) {
		uint64_t cum = 0;
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", hist_defs[h].family,
		                    hist_defs[h].help, hist_defs[h].family);
		for (size_t i = 0; i < N_BOUNDS; i++) {
			cum += hists[h].buckets[i];
			evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", hist_defs[h].family,
			                    bounds[i], (unsigned long long)cum);
		}
		cum += hists[h].buckets[N_BOUNDS];
		evbuffer_add_printf(
		        out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.3f\n%s_count %llu\n",
		        hist_defs[h].family, (unsigned long long)cum, hist_defs[h].family,
		        hists[h].sum, hist_defs[h].family, (unsigned long long)hists[h].count);
	}
}

void metrics_reset(void)
{
	memset(values, 0, sizeof(values));
	memset(hists, 0, sizeof(hists));
}
