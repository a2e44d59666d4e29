/*
 * oracle.h: judges of the limiter contract, from what the strict mock upstream recorded.
 *
 * The window oracle: for one key, sort the arrival times ts of every call that reached the
 * upstream (429'd ones too: they went through the proxy's door). "At most N in any W" holds iff
 * ts[i+N] - ts[i] >= W for every i; utilisation is W / mean(ts[i+N] - ts[i]) over the calls
 * after the first window.
 *
 * The load generator: T threads, each with one keep-alive connection, sending requests back to
 * back until a deadline, counting answers by status.
 */
#ifndef GHLPROXY_TEST_ORACLE_H
#define GHLPROXY_TEST_ORACLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct oracle_result {
	size_t n_calls;      /* arrivals for the key */
	size_t n_429;        /* of which the upstream refused */
	size_t n_violations; /* i with ts[i+N] - ts[i] < W */
	double min_gap_ms;   /* smallest ts[i+N] - ts[i] */
	double utilisation;  /* W / mean gap after the first window; 0 if too few calls */
};

/* Check the calls of `key` (the mock's "key" field; NULL: all) in the mock's log. */
void oracle_check(json_t *log, const char *key, int n, double window_ms, struct oracle_result *out);

/* The mock's whole log, parsed (caller decrefs). */
json_t *oracle_fetch_log(const char *mock_ctl);

/* A HighLevel-shaped OAuth access token (unsigned: the upstream mock decodes, never verifies). */
char *oracle_make_jwt(const char *app_id, const char *auth_class, const char *auth_class_id,
                      double exp);

/* ---- load ---- */

struct load_req {
	const char *target;  /* "/path?query" */
	const char *headers; /* extra header lines, "Name: value\r\n"..., may be NULL */
};

/* Called by each thread for each request: fill `r` (pointers must stay valid for the call). */
typedef void (*load_pick_fn)(int thread, uint64_t n, struct load_req *r, void *arg);

struct load_result {
	uint64_t n_sent;
	uint64_t by_status[600];
	uint64_t n_errors; /* no answer */
	double max_latency_ms;
	double max_latency_429_ms; /* slowest proxy 429 (answered "at once"?) */
};

/* Run `threads` clients against addr for duration_ms. */
void load_run(const char *addr, int threads, int64_t duration_ms, load_pick_fn pick, void *arg,
              struct load_result *out);

#endif
