/*
 * metrics.c: storage and Prometheus rendering of the table in metrics.h. One process, one loop:
 * plain integers, no atomics.
 *
 * Histograms get storage only for the table's histogram rows: a second expansion of the table
 * numbers them (enum hist_slot) and maps each metric id to its slot, or to -1.
 *
 * Labelled families keep a fixed array of (value, count) per family, found by a linear search:
 * at most METRICS_LABEL_VALUES_MAX entries plus one for METRICS_LABEL_OTHER, whatever the
 * configuration does over any number of reloads.
 */
#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include <event2/buffer.h>

#include "util.h"

enum metric_type { MT_counter, MT_gauge, MT_histogram };

struct metric_def {
	enum metric_type type;
	const char *type_name;
	const char *family;
	const char *labels;
	const char *help;
};

static const struct metric_def defs[M__COUNT] = {
#define METRIC_DEF(id, type, family, labels, help) \
	[M_##id] = { MT_##type, #type, family, labels, help },
	METRICS_TABLE(METRIC_DEF)
#undef METRIC_DEF
};

#define HSLOT_counter(id)
#define HSLOT_gauge(id)
#define HSLOT_histogram(id)                   HS_##id,
#define HSLOT(id, type, family, labels, help) HSLOT_##type(id)
enum hist_slot { METRICS_TABLE(HSLOT) HS__COUNT };

#define HINDEX_counter(id)                     (-1)
#define HINDEX_gauge(id)                       (-1)
#define HINDEX_histogram(id)                   HS_##id
#define HINDEX(id, type, family, labels, help) [M_##id] = HINDEX_##type(id),
static const int hist_index[M__COUNT] = { METRICS_TABLE(HINDEX) };

static int64_t values[M__COUNT];

/* Bucket upper bounds in seconds, shared by every histogram; +Inf is implicit. From 1 ms (a
 * wait that is no wait) to a minute (limits.max_wait and upstream.timeout are at most that by
 * default). */
static const double bounds_s[] = { 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
	                           0.5,   1,     2.5,  5,     10,   20,  60 };
#define N_BOUNDS ARRAY_SIZE(bounds_s)

static struct {
	uint64_t buckets[N_BOUNDS + 1]; /* not cumulative; the last is (60 s, +Inf) */
	double sum_s;
	uint64_t count;
} hists[HS__COUNT];

struct labelled_series {
	char value[METRICS_LABEL_VALUE_LEN + 1];
	uint64_t count;
};

static const struct {
	const char *family, *label, *help;
} labelled_defs[ML__COUNT] = {
#define METRIC_LABELLED_DEF(id, family, label, help) [ML_##id] = { family, label, help },
	METRICS_LABELLED_TABLE(METRIC_LABELLED_DEF)
#undef METRIC_LABELLED_DEF
};

static struct {
	struct labelled_series v[METRICS_LABEL_VALUES_MAX + 1]; /* + the "other" series */
	size_t n;
} labelled[ML__COUNT];

void metrics_inc(enum metric_id id)
{
	if ((unsigned)id < M__COUNT)
		values[id]++;
}

void metrics_add(enum metric_id id, uint64_t n)
{
	if ((unsigned)id < M__COUNT)
		values[id] += (int64_t)n;
}

void metrics_set(enum metric_id id, int64_t v)
{
	if ((unsigned)id < M__COUNT)
		values[id] = v;
}

uint64_t metrics_get(enum metric_id id)
{
	if ((unsigned)id >= M__COUNT)
		return 0;
	if (hist_index[id] >= 0)
		return hists[hist_index[id]].count;
	return (uint64_t)values[id];
}

void metrics_observe(enum metric_id id, double ms)
{
	size_t i = 0;

	if ((unsigned)id >= M__COUNT || hist_index[id] < 0 || isnan(ms))
		return;
	double s = ms < 0 ? 0 : ms / 1000.0;
	while (i < N_BOUNDS && s > bounds_s[i])
		i++;
	hists[hist_index[id]].buckets[i]++;
	hists[hist_index[id]].sum_s += isinf(s) ? 0 : s;
	hists[hist_index[id]].count++;
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

static struct labelled_series *labelled_search(enum metric_labelled_id id, const char *value)
{
	for (size_t i = 0; i < labelled[id].n; i++)
		if (strcmp(labelled[id].v[i].value, value) == 0)
			return &labelled[id].v[i];
	return NULL;
}

static struct labelled_series *labelled_find(enum metric_labelled_id id, const char *value,
                                             bool create)
{
	struct labelled_series *e;
	size_t len;

	if ((unsigned)id >= ML__COUNT)
		return NULL;
	len = value ? strnlen(value, METRICS_LABEL_VALUE_LEN + 1) : 0;
	if (len == 0 || len > METRICS_LABEL_VALUE_LEN)
		value = METRICS_LABEL_OTHER;
	e = labelled_search(id, value);
	if (e || !create)
		return e;
	/* Full: what does not fit goes to "other", which has a slot of its own (the + 1). */
	if (labelled[id].n >= METRICS_LABEL_VALUES_MAX) {
		value = METRICS_LABEL_OTHER;
		e = labelled_search(id, value);
		if (e)
			return e;
	}
	e = &labelled[id].v[labelled[id].n++];
	util_strlcpy(e->value, value, sizeof(e->value));
	e->count = 0;
	return e;
}

void metrics_labelled_add(enum metric_labelled_id id, const char *value, uint64_t n)
{
	struct labelled_series *e = labelled_find(id, value, true);

	if (e)
		e->count += n;
}

uint64_t metrics_labelled_get(enum metric_labelled_id id, const char *value)
{
	const struct labelled_series *e = labelled_find(id, value, false);

	return e ? e->count : 0;
}

/* A label value in the exposition format: backslash, double quote and newline escaped. */
static void add_label_value(struct evbuffer *out, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			evbuffer_add_printf(out, "\\%c", *v);
		else if (*v == '\n')
			evbuffer_add(out, "\\n", 2);
		else
			evbuffer_add(out, v, 1);
	}
}

static void render_labelled(struct evbuffer *out)
{
	for (int id = 0; id < ML__COUNT; id++) {
		if (labelled[id].n == 0)
			continue; /* no client configured: a family without samples is left out */
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n",
		                    labelled_defs[id].family, labelled_defs[id].help,
		                    labelled_defs[id].family);
		for (size_t i = 0; i < labelled[id].n; i++) {
			evbuffer_add_printf(out, "%s{%s=\"", labelled_defs[id].family,
			                    labelled_defs[id].label);
			add_label_value(out, labelled[id].v[i].value);
			evbuffer_add_printf(out, "\"} %llu\n",
			                    (unsigned long long)labelled[id].v[i].count);
		}
	}
}

static void render_histogram(struct evbuffer *out, const char *family, int slot)
{
	uint64_t cum = 0;

	for (size_t i = 0; i < N_BOUNDS; i++) {
		cum += hists[slot].buckets[i];
		evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", family, bounds_s[i],
		                    (unsigned long long)cum);
	}
	cum += hists[slot].buckets[N_BOUNDS];
	evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
	                    family, (unsigned long long)cum, family, hists[slot].sum_s, family,
	                    (unsigned long long)hists[slot].count);
}

void metrics_render(struct evbuffer *out)
{
	const char *last_family = NULL;

	for (int i = 0; i < M__COUNT; i++) {
		const struct metric_def *d = &defs[i];

		if (!last_family || strcmp(last_family, d->family) != 0) {
			evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", d->family, d->help,
			                    d->family, d->type_name);
			last_family = d->family;
		}
		if (d->type == MT_histogram)
			render_histogram(out, d->family, hist_index[i]);
		else if (*d->labels)
			evbuffer_add_printf(out, "%s{%s} %lld\n", d->family, d->labels,
			                    (long long)values[i]);
		else
			evbuffer_add_printf(out, "%s %lld\n", d->family, (long long)values[i]);
	}
	render_labelled(out);
}

void metrics_reset(void)
{
	memset(values, 0, sizeof(values));
	memset(hists, 0, sizeof(hists));
	memset(labelled, 0, sizeof(labelled));
}
