/*
 * oracle.c: see oracle.h.
 */
#include "oracle.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "httpc.h"

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

void oracle_check(json_t *log, const char *key, int n, double window_ms, struct oracle_result *out)
{
	size_t i, cap = json_array_size(log), m = 0;
	double *ts = calloc(cap ? cap : 1, sizeof(*ts));
	json_t *e;

	memset(out, 0, sizeof(*out));
	json_array_foreach(log, i, e)
	{
		const char *k = json_string_value(json_object_get(e, "key"));
		if (key && (!k || strcmp(k, key) != 0))
			continue;
		ts[m++] = json_number_value(json_object_get(e, "t_ms"));
		if (json_integer_value(json_object_get(e, "status")) == 429)
			out->n_429++;
	}
	out->n_calls = m;
	qsort(ts, m, sizeof(*ts), cmp_double);
	out->min_gap_ms = -1;
	double sum = 0;
	size_t n_gaps = 0;
	for (i = 0; i + (size_t)n < m; i++) {
		double gap = ts[i + (size_t)n] - ts[i];
		if (gap < window_ms)
			out->n_violations++;
		if (out->min_gap_ms < 0 || gap < out->min_gap_ms)
			out->min_gap_ms = gap;
		if (ts[i] >= ts[0] + window_ms) {
			sum += gap;
			n_gaps++;
		}
	}
	out->utilisation = n_gaps ? window_ms / (sum / (double)n_gaps) : 0;
	free(ts);
}

json_t *oracle_fetch_log(const char *mock_ctl)
{
	struct httpc_response r = { 0 };
	json_t *j = NULL;

	if (httpc_request(mock_ctl, "GET", "/__mock/log", NULL, NULL, 0, &r, 20000) == 0 &&
	    r.status == 200)
		j = json_loadb((const char *)r.body, r.body_len, 0, NULL);
	httpc_response_free(&r);
	return j;
}

static char *b64url(const char *s)
{
	static const char tab[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = strlen(s), o = 0;
	char *out = malloc(n * 4 / 3 + 4);

	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned char)s[i] << 16;
		if (i + 1 < n)
			v |= (unsigned char)s[i + 1] << 8;
		if (i + 2 < n)
			v |= (unsigned char)s[i + 2];
		out[o++] = tab[(v >> 18) & 63];
		out[o++] = tab[(v >> 12) & 63];
		if (i + 1 < n)
			out[o++] = tab[(v >> 6) & 63];
		if (i + 2 < n)
			out[o++] = tab[v & 63];
	}
	out[o] = '\0';
	return out;
}

char *oracle_make_jwt(const char *app_id, const char *auth_class, const char *auth_class_id,
                      double exp)
{
	char payload[1024];
	snprintf(payload, sizeof(payload),
	         "{\"authClass\":\"%s\",\"authClassId\":\"%s\",\"source\":\"INTEGRATION\","
	         "\"sourceId\":\"%s-mbx1\",\"channel\":\"OAUTH\",\"primaryAuthClassId\":\"%s\","
	         "\"oauthMeta\":{\"scopes\":[\"contacts.readonly\"],\"client\":\"%s\","
	         "\"versionId\":\"%s\",\"clientKey\":\"%s-mbx1\"},\"iat\":%.3f,\"exp\":%.3f}",
	         auth_class, auth_class_id, app_id, auth_class_id, app_id, app_id, app_id,
	         exp - 86399.0, exp);
	char *h = b64url("{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
	char *p = b64url(payload);
	char *sig = b64url("not-a-real-signature-not-a-real-signature");
	size_t len = strlen(h) + strlen(p) + strlen(sig) + 3;
	char *out = malloc(len);
	snprintf(out, len, "%s.%s.%s", h, p, sig);
	free(h);
	free(p);
	free(sig);
	return out;
}

struct load_thread {
	pthread_t th;
	int id;
	const char *addr;
	int64_t end_ms;
	load_pick_fn pick;
	void *arg;
	struct load_result res;
};

static void *load_main(void *a)
{
	struct load_thread *t = a;
	int fd = -1;

	for (uint64_t n = 0; harness_now_ms() < t->end_ms; n++) {
		struct load_req rq = { 0 };
		char buf[8192];
		struct httpc_response r = { 0 };

		t->pick(t->id, n, &rq, t->arg);
		if (fd < 0 && (fd = httpc_connect(t->addr)) < 0) {
			t->res.n_errors++;
			break;
		}
		int len = snprintf(buf, sizeof(buf), "GET %s HTTP/1.1\r\nHost: proxy\r\n%s\r\n",
		                   rq.target, rq.headers ? rq.headers : "");
		int64_t t0 = harness_now_ms();
		t->res.n_sent++;
		if (httpc_send_all(fd, buf, (size_t)len) < 0 ||
		    httpc_read_response(fd, &r, false, 60000) < 0) {
			t->res.n_errors++;
			httpc_close(fd);
			fd = -1;
			httpc_response_free(&r);
			continue;
		}
		double lat = (double)(harness_now_ms() - t0);
		if (r.status >= 0 && r.status < 600)
			t->res.by_status[r.status]++;
		if (lat > t->res.max_latency_ms)
			t->res.max_latency_ms = lat;
		if (r.status == 429 && lat > t->res.max_latency_429_ms)
			t->res.max_latency_429_ms = lat;
		if (r.closed) {
			httpc_close(fd);
			fd = -1;
		}
		httpc_response_free(&r);
	}
	if (fd >= 0)
		httpc_close(fd);
	return NULL;
}

void load_run(const char *addr, int threads, int64_t duration_ms, load_pick_fn pick, void *arg,
              struct load_result *out)
{
	struct load_thread *t = calloc((size_t)threads, sizeof(*t));
	int64_t end = harness_now_ms() + duration_ms;

	memset(out, 0, sizeof(*out));
	for (int i = 0; i < threads; i++) {
		t[i] = (struct load_thread){
			.id = i, .addr = addr, .end_ms = end, .pick = pick, .arg = arg
		};
		pthread_create(&t[i].th, NULL, load_main, &t[i]);
	}
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i].th, NULL);
		out->n_sent += t[i].res.n_sent;
		out->n_errors += t[i].res.n_errors;
		for (int s = 0; s < 600; s++)
			out->by_status[s] += t[i].res.by_status[s];
		if (t[i].res.max_latency_ms > out->max_latency_ms)
			out->max_latency_ms = t[i].res.max_latency_ms;
		if (t[i].res.max_latency_429_ms > out->max_latency_429_ms)
			out->max_latency_429_ms = t[i].res.max_latency_429_ms;
	}
	free(t);
}
