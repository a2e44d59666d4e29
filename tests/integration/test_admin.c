/*
 * test_admin.c: the admin endpoints.
 *   - /metrics parses as Prometheus text (every sample line `name{labels} value`, HELP and TYPE
 *     once per family and before its samples, a family's samples together, histogram buckets
 *     cumulative with +Inf equal to _count), every metric the product promises is there, and
 *     the counters move as requests go through the real binary;
 *   - /status shows every live key with its limits, where they came from, use, queue and block,
 *     and no credential a client sent appears in /status, /status.html, /metrics or the log;
 *   - in process: the admin key (Bearer and Basic), public routes added by other modules, the
 *     token entries' allowlist, readiness checks, methods and unknown paths.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "admin.h"
#include "config.h"
#include "fixture.h"
#include "httpc.h"
#include "limiter.h"
#include "oracle.h"
#include "request.h"

#define TIMEOUT_MS 20000

static struct fixture fx;

static void stop(void)
{
	if (fx.proxy)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
	harness_cleanup_all();
}

/* ---- a Prometheus text-format checker ---- */

struct prom_sample {
	char *series; /* "name" or "name{labels}" exactly as written */
	double value;
};

struct prom_family {
	char *name;
	char *type;
	bool has_help;
	bool closed; /* another family's lines came after its own */
	bool has_samples;
};

struct prom {
	struct prom_sample *s;
	size_t n_s;
	struct prom_family *f;
	size_t n_f;
	char err[512]; /* the first violation, "" when the text is well formed */
};

/* Record the first violation and leave the calling function with false. */
#define PROM_CHECK(p, cond, ...)                                           \
	do {                                                               \
		if (!(cond)) {                                             \
			snprintf((p)->err, sizeof((p)->err), __VA_ARGS__); \
			return false;                                      \
		}                                                          \
	} while (0)

static bool name_char(char c, bool first)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
	       (!first && c >= '0' && c <= '9');
}

/* Length of a valid metric or label name at s, 0 if none. */
static size_t name_len(const char *s)
{
	size_t n = 0;

	while (name_char(s[n], n == 0))
		n++;
	return n;
}

static struct prom_family *family(struct prom *p, const char *name, size_t len)
{
	for (size_t i = 0; i < p->n_f; i++)
		if (strlen(p->f[i].name) == len && strncmp(p->f[i].name, name, len) == 0)
			return &p->f[i];
	return NULL;
}

static struct prom_family *family_add(struct prom *p, const char *name, size_t len)
{
	p->f = realloc(p->f, (p->n_f + 1) * sizeof(*p->f));
	struct prom_family *f = &p->f[p->n_f++];
	memset(f, 0, sizeof(*f));
	f->name = strndup(name, len);
	return f;
}

/* Close every family but `keep` that has begun: its lines must not come back. */
static void close_others(struct prom *p, const struct prom_family *keep)
{
	for (size_t i = 0; i < p->n_f; i++)
		if (&p->f[i] != keep)
			p->f[i].closed = true;
}

/* The family a sample name belongs to (histograms: _bucket, _sum, _count), or NULL. */
static struct prom_family *family_of_sample(struct prom *p, const char *name, size_t len)
{
	static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
	struct prom_family *f = family(p, name, len);

	if (f && f->type && strcmp(f->type, "histogram") != 0)
		return f;
	for (size_t i = 0; i < 3; i++) {
		size_t sl = strlen(suffixes[i]);
		if (len > sl && strncmp(name + len - sl, suffixes[i], sl) == 0) {
			struct prom_family *h = family(p, name, len - sl);
			if (h && h->type && strcmp(h->type, "histogram") == 0)
				return h;
		}
	}
	return f;
}

/* Length of the label set at s ("{...}"), or 0 when malformed. */
static size_t labels_len(const char *s)
{
	size_t i = 1;

	if (s[0] != '{')
		return 0;
	while (s[i] != '}') {
		size_t n = name_len(s + i);
		if (n == 0 || s[i + n] != '=' || s[i + n + 1] != '"')
			return 0;
		i += n + 2;
		while (s[i] != '"') {
			if (s[i] == '\0' || s[i] == '\n')
				return 0;
			if (s[i] == '\\') {
				if (s[i + 1] != '\\' && s[i + 1] != '"' && s[i + 1] != 'n')
					return 0;
				i++;
			}
			i++;
		}
		i++;
		if (s[i] == ',')
			i++;
		else if (s[i] != '}')
			return 0;
	}
	return i + 1;
}

static bool parse_value(const char *s, double *v)
{
	char *end;

	if (strcmp(s, "+Inf") == 0 || strcmp(s, "-Inf") == 0 || strcmp(s, "NaN") == 0) {
		*v = strcmp(s, "NaN") == 0 ? NAN : s[0] == '+' ? INFINITY : -INFINITY;
		return true;
	}
	*v = strtod(s, &end);
	return end != s && *end == '\0';
}

static void prom_free(struct prom *p)
{
	for (size_t i = 0; i < p->n_s; i++)
		free(p->s[i].series);
	for (size_t i = 0; i < p->n_f; i++) {
		free(p->f[i].name);
		free(p->f[i].type);
	}
	free(p->s);
	free(p->f);
	memset(p, 0, sizeof(*p));
}

static bool prom_comment(struct prom *p, const char *line, int lineno)
{
	char kw[8] = "";
	int off = 0;

	if (sscanf(line, "# %7s %n", kw, &off) != 1 || off == 0 ||
	    (strcmp(kw, "HELP") != 0 && strcmp(kw, "TYPE") != 0))
		return true; /* a plain comment */
	const char *name = line + off;
	size_t nl = name_len(name);
	PROM_CHECK(p, nl > 0 && (name[nl] == ' ' || name[nl] == '\0'), "line %d: bad name: %s",
	           lineno, line);
	struct prom_family *f = family(p, name, nl);
	if (!f)
		f = family_add(p, name, nl);
	PROM_CHECK(p, !f->closed, "line %d: family %s comes back after others", lineno, f->name);
	PROM_CHECK(p, !f->has_samples, "line %d: %s after samples of %s", lineno, kw, f->name);
	close_others(p, f);
	const char *rest = name[nl] ? name + nl + 1 : "";
	if (kw[0] == 'H') {
		PROM_CHECK(p, !f->has_help, "line %d: second HELP for %s", lineno, f->name);
		f->has_help = true;
		return true;
	}
	PROM_CHECK(p, !f->type, "line %d: second TYPE for %s", lineno, f->name);
	PROM_CHECK(p,
	           strcmp(rest, "counter") == 0 || strcmp(rest, "gauge") == 0 ||
	                   strcmp(rest, "histogram") == 0 || strcmp(rest, "summary") == 0 ||
	                   strcmp(rest, "untyped") == 0,
	           "line %d: unknown type '%s'", lineno, rest);
	f->type = strdup(rest);
	return true;
}

/* One comment or sample line (without its newline). */
static bool prom_line(struct prom *p, const char *line, int lineno)
{
	if (line[0] == '#')
		return prom_comment(p, line, lineno);
	size_t nl = name_len(line);
	PROM_CHECK(p, nl > 0, "line %d: not a sample: '%s'", lineno, line);
	size_t ll = line[nl] == '{' ? labels_len(line + nl) : 0;
	PROM_CHECK(p, line[nl] != '{' || ll > 0, "line %d: malformed labels: '%s'", lineno, line);
	PROM_CHECK(p, line[nl + ll] == ' ', "line %d: no space before the value: '%s'", lineno,
	           line);
	double v;
	PROM_CHECK(p, parse_value(line + nl + ll + 1, &v), "line %d: bad value: '%s'", lineno,
	           line);
	struct prom_family *f = family_of_sample(p, line, nl);
	PROM_CHECK(p, f && f->type, "line %d: sample before its TYPE: '%s'", lineno, line);
	PROM_CHECK(p, f->has_help, "line %d: sample before its HELP: '%s'", lineno, line);
	PROM_CHECK(p, !f->closed, "line %d: samples of %s are not together", lineno, f->name);
	close_others(p, f);
	f->has_samples = true;
	for (size_t i = 0; i < p->n_s; i++)
		PROM_CHECK(p,
		           strlen(p->s[i].series) != nl + ll ||
		                   strncmp(p->s[i].series, line, nl + ll) != 0,
		           "line %d: duplicate series '%.*s'", lineno, (int)(nl + ll), line);
	p->s = realloc(p->s, (p->n_s + 1) * sizeof(*p->s));
	p->s[p->n_s].series = strndup(line, nl + ll);
	p->s[p->n_s].value = v;
	p->n_s++;
	return true;
}

static double prom_value(const struct prom *p, const char *series)
{
	for (size_t i = 0; i < p->n_s; i++)
		if (strcmp(p->s[i].series, series) == 0)
			return p->s[i].value;
	return NAN;
}

/* Buckets ascending in le, cumulative, the last +Inf and equal to _count; _sum present. */
static bool prom_check_histogram(struct prom *p, const char *fam)
{
	char bucket[160], key[200];
	double last_le = -INFINITY, last_count = 0;
	size_t n_buckets = 0;
	bool saw_inf = false;

	snprintf(bucket, sizeof(bucket), "%s_bucket{le=\"", fam);
	for (size_t i = 0; i < p->n_s; i++) {
		const char *s = p->s[i].series;
		size_t bl = strlen(bucket);
		if (strncmp(s, bucket, bl) != 0)
			continue;
		char lebuf[40];
		double le;
		PROM_CHECK(p, strlen(s) >= bl + 2 && strcmp(s + strlen(s) - 2, "\"}") == 0,
		           "%s: a bucket with other labels: %s", fam, s);
		snprintf(lebuf, sizeof(lebuf), "%.*s", (int)(strlen(s) - bl - 2), s + bl);
		PROM_CHECK(p, parse_value(lebuf, &le), "%s: bad le '%s'", fam, lebuf);
		PROM_CHECK(p, !saw_inf, "%s: a bucket after +Inf", fam);
		PROM_CHECK(p, le > last_le, "%s: le not ascending at %s", fam, lebuf);
		PROM_CHECK(p, p->s[i].value >= last_count, "%s: buckets not cumulative at le=%s",
		           fam, lebuf);
		last_le = le;
		last_count = p->s[i].value;
		saw_inf = isinf(le);
		n_buckets++;
	}
	PROM_CHECK(p, n_buckets > 1, "%s: no buckets", fam);
	PROM_CHECK(p, saw_inf, "%s: no +Inf bucket", fam);
	snprintf(key, sizeof(key), "%s_count", fam);
	PROM_CHECK(p, prom_value(p, key) == last_count, "%s: +Inf bucket %g != _count %g", fam,
	           last_count, prom_value(p, key));
	snprintf(key, sizeof(key), "%s_sum", fam);
	PROM_CHECK(p, !isnan(prom_value(p, key)), "%s: no _sum", fam);
	return true;
}

/* Parse a whole exposition; false with p->err on the first violation. Free with prom_free. */
static bool prom_parse(const char *text, struct prom *p)
{
	char *copy = strdup(text), *save = NULL;
	int lineno = 0;
	bool ok = true;

	memset(p, 0, sizeof(*p));
	if (!text[0] || text[strlen(text) - 1] != '\n') {
		snprintf(p->err, sizeof(p->err), "the exposition does not end with a newline");
		ok = false;
	}
	for (char *line = strtok_r(copy, "\n", &save); ok && line;
	     line = strtok_r(NULL, "\n", &save))
		ok = prom_line(p, line, ++lineno);
	free(copy);
	for (size_t i = 0; ok && i < p->n_f; i++) {
		if (!p->f[i].type || !p->f[i].has_samples) {
			snprintf(p->err, sizeof(p->err), "family %s has no TYPE or no sample",
			         p->f[i].name);
			ok = false;
		} else if (strcmp(p->f[i].type, "histogram") == 0) {
			ok = prom_check_histogram(p, p->f[i].name);
		}
	}
	return ok;
}

static void scrape(const char *admin, struct prom *p, char **text_out)
{
	struct httpc_response r = { 0 };

	cr_assert_eq(httpc_request(admin, "GET", "/metrics", NULL, NULL, 0, &r, TIMEOUT_MS), 0);
	cr_assert_eq(r.status, 200);
	const char *ct = httpc_header(&r, "Content-Type");
	cr_assert(ct && strncmp(ct, "text/plain; version=0.0.4", 25) == 0, "Content-Type %s",
	          ct ? ct : "(none)");
	cr_assert(prom_parse((const char *)r.body, p), "/metrics: %s", p->err);
	if (text_out)
		*text_out = strdup((const char *)r.body);
	httpc_response_free(&r);
}

/* The checker must refuse what it exists to catch (and take what it must). */
static const struct {
	const char *what;
	const char *text;
	bool ok;
} checker_cases[] = {
	{ "counter with and without labels",
	  "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\na_total 2\n", true },
	{ "histogram",
	  "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
	  "h_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n",
	  true },
	{ "escaped label", "# HELP a x\n# TYPE a gauge\na{k=\"q\\\"\\\\\\n\"} 1\n", true },
	{ "sample before TYPE", "# HELP a_total x\na_total 1\n# TYPE a_total counter\n", false },
	{ "sample without HELP", "# TYPE a gauge\na 1\n", false },
	{ "no trailing newline", "# HELP a x\n# TYPE a gauge\na 1", false },
	{ "second TYPE", "# HELP a x\n# TYPE a gauge\n# TYPE a gauge\na 1\n", false },
	{ "buckets not cumulative",
	  "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\n"
	  "h_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
	  false },
	{ "+Inf is not _count",
	  "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
	  "h_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 5\n",
	  false },
	{ "no +Inf bucket",
	  "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
	  "h_bucket{le=\"2\"} 2\nh_sum 3\nh_count 2\n",
	  false },
	{ "le not ascending",
	  "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\n"
	  "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n",
	  false },
	{ "family split",
	  "# HELP a x\n# TYPE a gauge\na{k=\"1\"} 1\n# HELP b x\n# TYPE b gauge\n"
	  "b 1\na{k=\"2\"} 1\n",
	  false },
	{ "unquoted label", "# HELP a x\n# TYPE a gauge\na{k=v} 1\n", false },
	{ "bad value", "# HELP a x\n# TYPE a gauge\na one\n", false },
	{ "duplicate series", "# HELP a x\n# TYPE a gauge\na 1\na 2\n", false },
	{ "bad name", "# HELP a x\n# TYPE a gauge\n9a 1\n", false },
};

Test(prometheus_checker, table)
{
	for (size_t i = 0; i < sizeof(checker_cases) / sizeof(*checker_cases); i++) {
		struct prom p;
		bool ok = prom_parse(checker_cases[i].text, &p);
		cr_expect_eq(ok, checker_cases[i].ok, "%s: %s (%s)", checker_cases[i].what,
		             ok ? "accepted" : "refused", p.err);
		prom_free(&p);
	}
}

/* ---- requests through the proxy ---- */

struct cred {
	char *token;
	char *headers; /* "Authorization: Bearer ...\r\nVersion: ...\r\n" */
	char app[40];
	char res[40];
};

static void cred_jwt(struct cred *c, const char *app, const char *loc)
{
	snprintf(c->app, sizeof(c->app), "%s", app);
	snprintf(c->res, sizeof(c->res), "%s", loc);
	c->token = oracle_make_jwt(app, "Location", loc, 4102444800.0);
	harness_secret(c->token);
	size_t len = strlen(c->token) + 80;
	c->headers = malloc(len);
	snprintf(c->headers, len, "Authorization: Bearer %s\r\nVersion: 2021-07-28\r\n", c->token);
}

static void cred_free(struct cred *c)
{
	free(c->token);
	free(c->headers);
}

/* GET target with the credential's headers plus `extra` (may be NULL); returns the status. */
static int call(const struct cred *c, const char *target, const char *extra)
{
	struct httpc_response r = { 0 };
	char headers[4096];

	snprintf(headers, sizeof(headers), "%s%s", c->headers, extra ? extra : "");
	int rc = httpc_request(fx.proxy_addr, "GET", target, headers, NULL, 0, &r, TIMEOUT_MS);
	int status = rc == 0 ? r.status : -1;
	httpc_response_free(&r);
	return status;
}

static json_t *get_json(const char *addr, const char *target, int *status)
{
	struct httpc_response r = { 0 };

	cr_assert_eq(httpc_request(addr, "GET", target, NULL, NULL, 0, &r, TIMEOUT_MS), 0);
	*status = r.status;
	json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	cr_assert(j, "%s did not answer JSON: %s", target, r.body);
	httpc_response_free(&r);
	return j;
}

/* Every metric the product promises (issue 6), by series. */
static const char *const promised[] = {
	"ghlproxy_requests_total{outcome=\"forwarded\"}",
	"ghlproxy_requests_total{outcome=\"rejected_burst\"}",
	"ghlproxy_requests_total{outcome=\"rejected_daily\"}",
	"ghlproxy_requests_total{outcome=\"queue_full\"}",
	"ghlproxy_requests_total{outcome=\"upstream_error\"}",
	"ghlproxy_requests_queued_total",
	"ghlproxy_upstream_responses_total{class=\"2xx\"}",
	"ghlproxy_upstream_responses_total{class=\"4xx\"}",
	"ghlproxy_upstream_responses_total{class=\"5xx\"}",
	"ghlproxy_upstream_429_total",
	"ghlproxy_queue_depth",
	"ghlproxy_queue_wait_seconds_count",
	"ghlproxy_upstream_latency_seconds_count",
	"ghlproxy_redis_errors_total",
	"ghlproxy_redis_up",
	"ghlproxy_redis_fallback",
	"ghlproxy_token_refreshes_total",
	"ghlproxy_token_refresh_failures_total",
	"ghlproxy_token_store_write_failures_total",
	"ghlproxy_tokens_needing_reinstall",
	"ghlproxy_live_keys",
	"ghlproxy_reloads_total",
	"ghlproxy_reload_failures_total",
};

TestSuite(metrics, .fini = stop, .timeout = 120);

Test(metrics, parse_and_counters_move)
{
	struct fixture_opts o = { .proxy_conf = "[limits]\nburst = 3\nwindow = 2s\nguard = 50ms\n"
		                                "max_wait = 10s\n" };
	struct prom before, after;
	struct cred a, b, c;

	fixture_start(&fx, &o);
	cred_jwt(&a, "65f0a1b2c3d4e5f6a7b8c9d0", "LocMetricsA0000000001");
	cred_jwt(&b, "65f0a1b2c3d4e5f6a7b8c9d0", "LocMetricsB0000000001");
	cred_jwt(&c, "65f0a1b2c3d4e5f6a7b8c9d0", "LocMetricsC0000000001");

	scrape(fx.admin_addr, &before, NULL);
	for (size_t i = 0; i < sizeof(promised) / sizeof(*promised); i++)
		cr_expect(!isnan(prom_value(&before, promised[i])), "no %s in /metrics",
		          promised[i]);

	/* Three go at once, the fourth may not wait, the fifth waits for the window. */
	for (int i = 0; i < 3; i++)
		cr_assert_eq(call(&a, "/contacts/?limit=1", NULL), 200);
	cr_assert_eq(call(&a, "/contacts/?limit=1", "X-GHL-Max-Wait: 0\r\n"), 429);
	cr_assert_eq(call(&a, "/contacts/?limit=1", NULL), 200);
	/* HighLevel's own 429, passed on (no time to send it again). */
	cr_assert_eq(call(&b, "/mock/status/429", "X-GHL-Max-Wait: 0\r\n"), 429);
	/* The upstream hangs up: 502. */
	cr_assert_eq(call(&c, "/mock/close", NULL), 502);

	char *text;
	scrape(fx.admin_addr, &after, &text);
	struct {
		const char *series;
		double delta;
	} moves[] = {
		{ "ghlproxy_requests_total{outcome=\"forwarded\"}", 5 },
		{ "ghlproxy_requests_total{outcome=\"rejected_burst\"}", 1 },
		{ "ghlproxy_requests_total{outcome=\"upstream_error\"}", 1 },
		{ "ghlproxy_requests_total{outcome=\"rejected_daily\"}", 0 },
		{ "ghlproxy_upstream_responses_total{class=\"2xx\"}", 4 },
		{ "ghlproxy_upstream_responses_total{class=\"4xx\"}", 1 },
		{ "ghlproxy_upstream_429_total", 1 },
		{ "ghlproxy_upstream_errors_total", 1 },
		{ "ghlproxy_upstream_latency_seconds_count", 5 },
	};
	for (size_t i = 0; i < sizeof(moves) / sizeof(*moves); i++) {
		double d =
		        prom_value(&after, moves[i].series) - prom_value(&before, moves[i].series);
		cr_expect_eq(d, moves[i].delta, "%s moved by %g, not %g", moves[i].series, d,
		             moves[i].delta);
	}
	/* The fifth, and only it, waited in the queue (~2 s); the others were decided at once. */
	double queued = prom_value(&after, "ghlproxy_requests_queued_total") -
	                prom_value(&before, "ghlproxy_requests_queued_total");
	cr_expect_eq(queued, 1, "ghlproxy_requests_queued_total moved by %g", queued);
	/* Every admitted or refused request was timed in the queue. */
	cr_expect_geq(prom_value(&after, "ghlproxy_queue_wait_seconds_count") -
	                      prom_value(&before, "ghlproxy_queue_wait_seconds_count"),
	              6);
	cr_expect_lt(prom_value(&after, "ghlproxy_queue_wait_seconds_bucket{le=\"0.5\"}"),
	             prom_value(&after, "ghlproxy_queue_wait_seconds_count"),
	             "the request that waited is not in a bucket above 0.5 s");
	cr_expect_geq(prom_value(&after, "ghlproxy_live_keys"), 3);
	cr_expect_eq(prom_value(&after, "ghlproxy_queue_depth"), 0);
	cr_expect_eq(prom_value(&after, "ghlproxy_requests_in_flight"), 0);
	/* Bounded cardinality: no per-key or per-location label. */
	cr_expect(strstr(text, "LocMetrics") == NULL, "a location id in /metrics");
	cr_expect(strstr(text, a.token) == NULL);
	free(text);
	prom_free(&before);
	prom_free(&after);
	cred_free(&a);
	cred_free(&b);
	cred_free(&c);
}

/* ---- /status ---- */

static json_t *find_key(json_t *status, const char *key)
{
	size_t i;
	json_t *k;

	json_array_foreach(json_object_get(status, "keys"), i, k)
	{
		if (strcmp(json_string_value(json_object_get(k, "key")), key) == 0)
			return k;
	}
	return NULL;
}

static json_int_t jint(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(o, a);
	if (b)
		v = json_object_get(v, b);
	cr_assert(json_is_integer(v), "%s.%s is not an integer", a, b ? b : "");
	return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(o, a);
	if (b)
		v = json_object_get(v, b);
	return json_string_value(v) ? json_string_value(v) : "(absent)";
}

TestSuite(status, .fini = stop, .timeout = 120);

Test(status, keys_limits_and_no_secret)
{
	struct fixture_opts o = { .proxy_conf = "[limits]\nburst = 3\nwindow = 10s\n"
		                                "daily = 5000\nmax_wait = 10s\n" };
	struct cred j[3], pit, opaque;
	const char *app = "65f0a1b2c3d4e5f6a7b8c9d1";
	int status;

	fixture_start(&fx, &o);
	cred_jwt(&j[0], app, "LocStatusA00000000001");
	cred_jwt(&j[1], app, "LocStatusB00000000001");
	cred_jwt(&j[2], app, "LocStatusC00000000001");
	pit.token = strdup("pit-6c0e8d41-98b2-4a8f-9d3c-5f1e2a7b4c90");
	pit.headers = strdup("Authorization: Bearer pit-6c0e8d41-98b2-4a8f-9d3c-5f1e2a7b4c90\r\n"
	                     "Version: 2021-07-28\r\nx-location-id: LocStatusPit000000001\r\n");
	opaque.token = strdup("sk_opaque_7d1c9e0b3a5f4e2d8c6b");
	opaque.headers = strdup("Authorization: Bearer sk_opaque_7d1c9e0b3a5f4e2d8c6b\r\n"
	                        "Version: 2021-07-28\r\nx-location-id: LocStatusOpq000000001\r\n");
	harness_secret(pit.token);
	harness_secret(opaque.token);

	cr_assert_eq(call(&j[0], "/contacts/?limit=1", NULL), 200);
	cr_assert_eq(call(&j[0], "/contacts/?limit=1", NULL), 200);
	/* HighLevel says this key's window is 50 per 5 s: the limits come from headers now. */
	cr_assert_eq(call(&j[1],
	                  "/mock/headers?X-RateLimit-Max=50&X-RateLimit-Interval-Milliseconds=5000"
	                  "&X-RateLimit-Remaining=49",
	                  NULL),
	             200);
	/* A 429 from HighLevel blocks the key for the window (10 s: no Retry-After). */
	cr_assert_eq(call(&j[2], "/mock/status/429", "X-GHL-Max-Wait: 0\r\n"), 429);
	cr_assert_eq(call(&pit, "/contacts/?limit=1", NULL), 200);
	cr_assert_eq(call(&opaque, "/contacts/?limit=1", NULL), 200);

	json_t *s = get_json(fx.admin_addr, "/status", &status);
	cr_assert_eq(status, 200);
	char *dump = json_dumps(s, JSON_INDENT(1));
	cr_log_info("%s", dump);

	char name[120];
	snprintf(name, sizeof(name), "%s:LocStatusA00000000001", app);
	json_t *k = find_key(s, name);
	cr_assert(k, "no key %s", name);
	cr_expect_str_eq(jstr(k, "app", NULL), app);
	cr_expect_str_eq(jstr(k, "resource", NULL), "LocStatusA00000000001");
	cr_expect_str_eq(jstr(k, "scope", NULL), "both");
	cr_expect_eq(jint(k, "burst", "limit"), 3);
	cr_expect_eq(jint(k, "burst", "window_ms"), 10000);
	cr_expect_eq(jint(k, "burst", "used"), 2);
	cr_expect_eq(jint(k, "burst", "remaining"), 1);
	cr_expect_str_eq(jstr(k, "burst", "source"), "config");
	cr_expect_eq(jint(k, "daily", "limit"), 5000);
	cr_expect_eq(jint(k, "daily", "used"), 2);
	cr_expect_eq(jint(k, "daily", "remaining"), 4998);
	cr_expect_str_eq(jstr(k, "daily", "source"), "config");
	cr_expect_eq(jint(k, "queue", NULL), 0);
	cr_expect(json_is_null(json_object_get(k, "blocked_until_ms")));

	snprintf(name, sizeof(name), "%s:LocStatusB00000000001", app);
	k = find_key(s, name);
	cr_assert(k, "no key %s", name);
	cr_expect_eq(jint(k, "burst", "limit"), 50);
	cr_expect_eq(jint(k, "burst", "window_ms"), 5000);
	cr_expect_str_eq(jstr(k, "burst", "source"), "headers");

	snprintf(name, sizeof(name), "%s:LocStatusC00000000001", app);
	k = find_key(s, name);
	cr_assert(k, "no key %s", name);
	json_int_t now = jint(s, "now_ms", NULL);
	cr_expect_gt(jint(k, "blocked_ms", NULL), 0);
	cr_expect_gt(jint(k, "blocked_until_ms", NULL), now, "the 429'd key is not blocked");
	cr_expect_leq(jint(k, "blocked_until_ms", NULL), now + 10000 + 1000);

	/* The PIT: its own window, and the day its resource's PITs share. */
	bool pit_burst = false, pit_daily = false;
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(s, "keys"), i, e)
	{
		if (strcmp(jstr(e, "resource", NULL), "LocStatusPit000000001") != 0)
			continue;
		cr_expect_str_eq(jstr(e, "app", NULL), "pit");
		if (strcmp(jstr(e, "scope", NULL), "burst") == 0) {
			pit_burst = true;
			cr_expect_eq(strlen(jstr(e, "credential", NULL)), 16, "fingerprint");
			cr_expect_eq(jint(e, "burst", "used"), 1);
		} else if (strcmp(jstr(e, "scope", NULL), "daily") == 0) {
			pit_daily = true;
			cr_expect_eq(jint(e, "daily", "used"), 1);
		}
	}
	cr_expect(pit_burst && pit_daily, "the PIT's two keys are not both shown");

	cr_expect_eq(jint(s, "keys_total", NULL), 6);
	cr_expect_eq(jint(s, "keys_shown", NULL), jint(s, "keys_total", NULL));
	cr_expect_eq(jint(s, "queue_depth", NULL), 0);
	cr_expect_eq(jint(s, "upstream_429", NULL), 1);
	cr_expect_str_eq(jstr(s, "mode", NULL), "passthrough");
	cr_expect_str_eq(jstr(s, "backend", NULL), "local");
	cr_expect(json_is_false(json_object_get(s, "draining")));
	cr_expect(json_is_array(json_object_get(s, "tokens")));
	cr_expect_eq(json_array_size(json_object_get(s, "tokens")), 0);

	/* No credential anywhere: not whole, not its secret part. */
	struct httpc_response page = { 0 }, met = { 0 };
	cr_assert_eq(httpc_request(fx.admin_addr, "GET", "/status.html", NULL, NULL, 0, &page,
	                           TIMEOUT_MS),
	             0);
	cr_assert_eq(page.status, 200);
	cr_assert_eq(
	        httpc_request(fx.admin_addr, "GET", "/metrics", NULL, NULL, 0, &met, TIMEOUT_MS),
	        0);
	char *log = harness_log(fx.proxy);
	const char *where[] = { dump, (const char *)page.body, (const char *)met.body, log };
	const char *where_name[] = { "/status", "/status.html", "/metrics", "the log" };
	for (int w = 0; w < 4; w++) {
		for (int t = 0; t < 3; t++) {
			const char *sig = strrchr(j[t].token, '.');
			cr_expect(strstr(where[w], j[t].token) == NULL, "a JWT in %s",
			          where_name[w]);
			cr_expect(strstr(where[w], sig + 1) == NULL, "a JWT signature in %s",
			          where_name[w]);
		}
		cr_expect(strstr(where[w], "6c0e8d41-98b2") == NULL, "a PIT in %s", where_name[w]);
		cr_expect(strstr(where[w], "sk_opaque_7d1c") == NULL, "a token in %s",
		          where_name[w]);
	}
	free(log);
	httpc_response_free(&page);
	httpc_response_free(&met);
	free(dump);
	json_decref(s);
	for (int t = 0; t < 3; t++)
		cred_free(&j[t]);
	cred_free(&pit);
	cred_free(&opaque);
}

Test(status, methods_and_unknown_paths)
{
	struct fixture_opts o = { 0 };
	struct httpc_response r = { 0 };

	fixture_start(&fx, &o);
	cr_assert_eq(httpc_request(fx.admin_addr, "POST", "/status", NULL, "", 0, &r, TIMEOUT_MS),
	             0);
	cr_expect_eq(r.status, 405);
	cr_expect_str_eq(httpc_header(&r, "Allow"), "GET, HEAD");
	httpc_response_free(&r);
	cr_assert_eq(httpc_request(fx.admin_addr, "GET", "/nope", NULL, NULL, 0, &r, TIMEOUT_MS),
	             0);
	cr_expect_eq(r.status, 404);
	httpc_response_free(&r);
	cr_assert_eq(
	        httpc_request(fx.admin_addr, "GET", "/status.htmlx", NULL, NULL, 0, &r, TIMEOUT_MS),
	        0);
	cr_expect_eq(r.status, 404);
	httpc_response_free(&r);
	cr_assert_eq(httpc_request(fx.admin_addr, "GET", "/status.html?x=1", NULL, NULL, 0, &r,
	                           TIMEOUT_MS),
	             0);
	cr_expect_eq(r.status, 200);
	cr_expect(strstr(httpc_header(&r, "Content-Type"), "text/html") != NULL);
	const char *csp = httpc_header(&r, "Content-Security-Policy");
	cr_expect(csp && strstr(csp, "default-src 'none'") && strstr(csp, "connect-src 'self'"),
	          "CSP: %s", csp ? csp : "(none)");
	/* No external asset: nothing the page loads names another origin. */
	cr_expect(strstr((const char *)r.body, "src=\"http") == NULL);
	cr_expect(strstr((const char *)r.body, "href=\"http") == NULL);
	cr_expect(strstr((const char *)r.body, "fetch(\"status\"") != NULL);
	httpc_response_free(&r);
	cr_assert_eq(httpc_request(fx.admin_addr, "GET", "/healthz", NULL, NULL, 0, &r, TIMEOUT_MS),
	             0);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq((const char *)r.body, "ok\n");
	httpc_response_free(&r);
}

/* ---- in process: key, routes, token allowlist, readiness ---- */

struct inproc {
	struct event_base *base;
	struct config *cfg;
	struct proxy px;
	struct admin *admin;
	struct event *stop_ev;
	int stop_pipe[2];
	pthread_t loop;
	char dir_key[512];
	char *dir;
	int callback_hits;
};

static struct inproc ip;

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

static void *loop_main(void *arg)
{
	event_base_dispatch(arg);
	return NULL;
}

static void tokens_cb(void *arg, json_t *tokens)
{
	char long_err[400];

	memset(long_err, 'x', sizeof(long_err) - 1);
	long_err[sizeof(long_err) - 1] = '\0';
	json_array_append_new(
	        tokens,
	        json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s,s:{s:s},s:s}", "resource",
	                  "LocTok0000000000001", "user_type", "Location", "state", "ok",
	                  "access_expires_ms", (json_int_t)4102444800000LL, "access_token",
	                  "eyJhbGciOiJSUzI1NiJ9.eyJzZWNyZXQiOjF9.c2VjcmV0LXNpZw", "refresh_token",
	                  "rt-9b1f7e33-secret", "client_secret", "cs-5d2a-secret", "nested",
	                  "token", "nested-secret", "last_error", long_err));
	json_array_append_new(tokens, json_string("not an object"));
	json_array_append_new(tokens,
	                      json_pack("{s:s,s:s,s:s}", "resource", "LocTok0000000000002", "state",
	                                "needs_reinstall", "last_error", "invalid_grant"));
}

static bool store_not_writable(void *arg, char *why, size_t why_len)
{
	snprintf(why, why_len, "token store /x/tokens.json is not writable");
	return false;
}

static bool always_ready(void *arg, char *why, size_t why_len)
{
	return true;
}

static void oauth_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();

	ip.callback_hits++;
	evbuffer_add(b, "cb", 2);
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void inproc_start(void)
{
	char conf[1024], err[256];
	struct config_errors errs = { 0 };

	memset(&ip, 0, sizeof(ip));
	ip.dir = harness_tmpdir();
	cr_assert(ip.dir);
	harness_secret("k3y-f0r-the-admin-endpoints");
	harness_secret("b3BzOmszeS1mMHItdGhlLWFkbWluLWVuZHBvaW50cw=="); /* Basic ops:<the key> */
	/* What tokens_cb hands the status page: none of it may be shown. */
	harness_secret("eyJhbGciOiJSUzI1NiJ9.eyJzZWNyZXQiOjF9.c2VjcmV0LXNpZw");
	harness_secret("rt-9b1f7e33-secret");
	harness_secret("cs-5d2a-secret");
	harness_secret("nested-secret");
	cr_assert_eq(harness_write_file(ip.dir, "admin.key", "k3y-f0r-the-admin-endpoints\n"), 0);
	snprintf(conf, sizeof(conf),
	         "[server]\nlisten = 127.0.0.1:0\nadmin_listen = 127.0.0.1:0\n"
	         "[admin]\nkey_file = %s/admin.key\n",
	         ip.dir);
	ip.cfg = config_load_string(conf, "test.conf", NULL, NULL, 0, &errs);
	cr_assert(ip.cfg, "%s", errs.n ? errs.v[0] : "?");
	config_errors_deinit(&errs);
	ip.base = event_base_new();
	cr_assert_eq(request_proxy_init(&ip.px, ip.base), 0);
	ip.px.cfg = ip.cfg;
	ip.px.limiter = limiter_new(ip.base, ip.cfg, err, sizeof(err));
	cr_assert(ip.px.limiter, "%s", err);
	ip.admin = admin_new(ip.base, ip.cfg, &ip.px, NULL, err, sizeof(err));
	cr_assert(ip.admin, "%s", err);
	admin_set_token_status_fn(ip.admin, tokens_cb, NULL);
	admin_add_ready_check(ip.admin, "always", always_ready, NULL);
	admin_add_ready_check(ip.admin, "token_store", store_not_writable, NULL);
	cr_assert_eq(
	        admin_add_route(ip.admin, "/oauth/callback", ADMIN_ROUTE_PUBLIC, oauth_cb, NULL),
	        0);
	cr_expect_eq(admin_add_route(ip.admin, "/oauth/callback", 0, oauth_cb, NULL), -EEXIST);
	cr_expect_eq(admin_add_route(ip.admin, "/status", 0, oauth_cb, NULL), -EEXIST);
	cr_assert_eq(admin_add_route(ip.admin, "/oauth/start", 0, oauth_cb, NULL), 0);
	cr_assert_eq(pipe(ip.stop_pipe), 0);
	ip.stop_ev = event_new(ip.base, ip.stop_pipe[0], EV_READ, on_stop, ip.base);
	event_add(ip.stop_ev, NULL);
	snprintf(ip.dir_key, sizeof(ip.dir_key), "%s", admin_addresses(ip.admin));
	cr_assert_eq(pthread_create(&ip.loop, NULL, loop_main, ip.base), 0);
}

static void inproc_stop(void)
{
	if (!ip.base) {
		harness_cleanup_all();
		return;
	}
	cr_assert_eq(write(ip.stop_pipe[1], "x", 1), 1);
	pthread_join(ip.loop, NULL);
	event_free(ip.stop_ev);
	close(ip.stop_pipe[0]);
	close(ip.stop_pipe[1]);
	admin_free(ip.admin);
	request_proxy_deinit(&ip.px);
	limiter_free(ip.px.limiter);
	config_free(ip.cfg);
	event_base_free(ip.base);
	harness_tmpdir_free(ip.dir);
	memset(&ip, 0, sizeof(ip));
	harness_cleanup_all();
}

static int admin_get(const char *method, const char *target, const char *headers,
                     struct httpc_response *r)
{
	memset(r, 0, sizeof(*r));
	cr_assert_eq(httpc_request(ip.dir_key, method, target, headers, NULL, 0, r, TIMEOUT_MS), 0);
	return r->status;
}

TestSuite(admin_inproc, .init = inproc_start, .fini = inproc_stop, .timeout = 60);

Test(admin_inproc, key_required_bearer_and_basic)
{
	struct httpc_response r;
	/* base64("ops:k3y-f0r-the-admin-endpoints") and with a wrong password */
	const char *basic_ok =
	        "Authorization: Basic b3BzOmszeS1mMHItdGhlLWFkbWluLWVuZHBvaW50cw==\r\n";
	const char *basic_bad = "Authorization: Basic b3BzOndyb25n\r\n";

	cr_expect_eq(admin_get("GET", "/status", NULL, &r), 401);
	const char *wa = httpc_header(&r, "WWW-Authenticate");
	cr_expect(wa && strncmp(wa, "Basic realm=", 12) == 0, "%s", wa ? wa : "(none)");
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/metrics", "Authorization: Bearer wrong\r\n", &r), 401);
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/status.html", basic_bad, &r), 401);
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/status",
	                       "Authorization: Bearer k3y-f0r-the-admin-endpoint\r\n", &r),
	             401, "a prefix of the key was taken");
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/metrics",
	                       "Authorization: Bearer k3y-f0r-the-admin-endpoints\r\n", &r),
	             200);
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/status.html", basic_ok, &r), 200);
	cr_expect(strstr((const char *)r.body, "<title>ghlproxy status</title>") != NULL);
	httpc_response_free(&r);
	/* Health and readiness stay open for probes. */
	cr_expect_eq(admin_get("GET", "/healthz", NULL, &r), 200);
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/readyz", NULL, &r), 503);
	httpc_response_free(&r);
}

Test(admin_inproc, routes_added_by_other_modules)
{
	struct httpc_response r;

	cr_expect_eq(admin_get("GET", "/oauth/callback?code=abc", NULL, &r), 200);
	cr_expect_str_eq((const char *)r.body, "cb");
	httpc_response_free(&r);
	cr_expect_eq(admin_get("GET", "/oauth/start", NULL, &r), 401, "not public: needs the key");
	httpc_response_free(&r);
	cr_expect_eq(admin_get("POST", "/oauth/callback", NULL, &r), 405);
	httpc_response_free(&r);
	cr_expect_eq(ip.callback_hits, 1);
}

Test(admin_inproc, token_entries_keep_only_allowed_members)
{
	struct httpc_response r;

	cr_assert_eq(admin_get("GET", "/status",
	                       "Authorization: Bearer k3y-f0r-the-admin-endpoints\r\n", &r),
	             200);
	json_t *s = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	cr_assert(s);
	json_t *tokens = json_object_get(s, "tokens");
	cr_assert_eq(json_array_size(tokens), 2, "the non-object entry was kept");
	json_t *t = json_array_get(tokens, 0);
	cr_expect_str_eq(json_string_value(json_object_get(t, "resource")), "LocTok0000000000001");
	cr_expect_str_eq(json_string_value(json_object_get(t, "user_type")), "Location");
	cr_expect_str_eq(json_string_value(json_object_get(t, "state")), "ok");
	cr_expect_eq(json_integer_value(json_object_get(t, "access_expires_ms")), 4102444800000LL);
	const char *gone[] = { "access_token", "refresh_token", "client_secret", "nested",
		               "last_error" };
	for (size_t i = 0; i < sizeof(gone) / sizeof(*gone); i++)
		cr_expect(json_object_get(t, gone[i]) == NULL, "%s kept", gone[i]);
	t = json_array_get(tokens, 1);
	cr_expect_str_eq(json_string_value(json_object_get(t, "state")), "needs_reinstall");
	cr_expect_str_eq(json_string_value(json_object_get(t, "last_error")), "invalid_grant");
	const char *secrets[] = { "c2VjcmV0LXNpZw", "rt-9b1f7e33", "cs-5d2a", "nested-secret",
		                  "k3y-f0r" };
	for (size_t i = 0; i < sizeof(secrets) / sizeof(*secrets); i++)
		cr_expect(strstr((const char *)r.body, secrets[i]) == NULL, "%s in /status",
		          secrets[i]);
	json_decref(s);
	httpc_response_free(&r);
}

Test(admin_inproc, readiness_reasons)
{
	struct httpc_response r;

	cr_assert_eq(admin_get("GET", "/readyz", NULL, &r), 503);
	json_t *j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	cr_assert(j);
	cr_expect(json_is_false(json_object_get(j, "ready")));
	json_t *failing = json_object_get(j, "failing");
	cr_assert_eq(json_array_size(failing), 1, "%s", r.body);
	json_t *f = json_array_get(failing, 0);
	cr_expect_str_eq(json_string_value(json_object_get(f, "check")), "token_store");
	cr_expect(strstr(json_string_value(json_object_get(f, "reason")), "not writable") != NULL);
	json_decref(j);
	httpc_response_free(&r);
}
