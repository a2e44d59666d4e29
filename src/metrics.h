/*
 * metrics.h: the process's counters, gauges and histograms, each defined once in the table below,
 * and their rendering in the Prometheus text format (/metrics on the admin listener).
 *
 * Labels are fixed in the table: no per-location or per-token label, so the number of series is
 * bounded whatever the traffic.
 */
#ifndef GHLPROXY_METRICS_H
#define GHLPROXY_METRICS_H

#include <stdint.h>

struct evbuffer;

/* X(id, type, family, labels, help) */
#define METRICS_TABLE(X)                                                                        \
	X(REQ_FORWARDED, counter, "ghlproxy_requests_total", "outcome=\"forwarded\"",           \
	  "Client requests answered, by outcome")                                               \
	X(REQ_REJECTED_BURST, counter, "ghlproxy_requests_total", "outcome=\"rejected_burst\"", \
	  "")                                                                                   \
	X(REQ_REJECTED_DAILY, counter, "ghlproxy_requests_total", "outcome=\"rejected_daily\"", \
	  "")                                                                                   \
	X(REQ_QUEUE_FULL, counter, "ghlproxy_requests_total", "outcome=\"queue_full\"", "")     \
	X(REQ_UPSTREAM_ERROR, counter, "ghlproxy_requests_total", "outcome=\"upstream_error\"", \
	  "")                                                                                   \
	X(REQ_CLIENT_GONE, counter, "ghlproxy_requests_total", "outcome=\"client_gone\"", "")   \
	X(REQ_BAD_REQUEST, counter, "ghlproxy_requests_total", "outcome=\"bad_request\"", "")   \
	X(REQ_UNAVAILABLE, counter, "ghlproxy_requests_total", "outcome=\"unavailable\"", "")   \
	X(REQ_UNAUTHORIZED, counter, "ghlproxy_requests_total", "outcome=\"unauthorized\"", "") \
	X(REQ_SHUTDOWN, counter, "ghlproxy_requests_total", "outcome=\"shutdown\"", "")         \
	X(REQ_QUEUED, counter, "ghlproxy_requests_queued_total", "",                            \
	  "Client requests that waited in a key's queue before their answer")                   \
	X(UP_1XX, counter, "ghlproxy_upstream_responses_total", "class=\"1xx\"",                \
	  "Answers from HighLevel, by status class")                                            \
	X(UP_2XX, counter, "ghlproxy_upstream_responses_total", "class=\"2xx\"", "")            \
	X(UP_3XX, counter, "ghlproxy_upstream_responses_total", "class=\"3xx\"", "")            \
	X(UP_4XX, counter, "ghlproxy_upstream_responses_total", "class=\"4xx\"", "")            \
	X(UP_5XX, counter, "ghlproxy_upstream_responses_total", "class=\"5xx\"", "")            \
	X(UP_429, counter, "ghlproxy_upstream_429_total", "",                                   \
	  "429 answers received from HighLevel (the number this proxy exists to keep at zero)") \
	X(UP_ERRORS, counter, "ghlproxy_upstream_errors_total", "",                             \
	  "Exchanges with HighLevel that failed (connect, TLS, timeout, protocol)")             \
	X(UP_RESENT, counter, "ghlproxy_upstream_resent_total", "",                             \
	  "Requests sent again after an upstream 429")                                          \
	X(QUEUE_DEPTH, gauge, "ghlproxy_queue_depth", "", "Requests waiting in all queues")     \
	X(KEYS, gauge, "ghlproxy_keys", "", "Rate-limit keys held in memory")                   \
	X(CONNECTIONS, gauge, "ghlproxy_client_connections", "", "Open client connections")     \
	X(IN_FLIGHT, gauge, "ghlproxy_requests_in_flight", "", "Client requests being handled") \
	X(UP_CONNS, gauge, "ghlproxy_upstream_connections", "",                                 \
	  "Pooled connections to HighLevel (both hosts)")                                       \
	X(REDIS_UP, gauge, "ghlproxy_redis_up", "",                                             \
	  "1 when the shared Redis backend is reachable (0 also when not configured)")          \
	X(REDIS_FALLBACK, gauge, "ghlproxy_redis_fallback", "",                                 \
	  "1 while admitting with the local fallback because Redis is unreachable")             \
	X(REDIS_ERRORS, counter, "ghlproxy_redis_errors_total", "", "Failed Redis commands")    \
	X(REDIS_FALLBACKS, counter, "ghlproxy_redis_fallbacks_total", "",                       \
	  "Times the proxy switched to the local fallback")                                     \
	X(TOKEN_REFRESHES, counter, "ghlproxy_token_refreshes_total", "",                       \
	  "OAuth token refreshes that succeeded")                                               \
	X(TOKEN_REFRESH_FAILURES, counter, "ghlproxy_token_refresh_failures_total", "",         \
	  "OAuth token refreshes that failed")                                                  \
	X(TOKEN_STORE_FAILURES, counter, "ghlproxy_token_store_failures_total", "",             \
	  "Failed writes of the token store")                                                   \
	X(TOKENS_REINSTALL, gauge, "ghlproxy_tokens_need_reinstall", "",                        \
	  "Installations whose refresh token HighLevel refused (invalid grant)")                \
	X(RELOADS, counter, "ghlproxy_reloads_total", "", "Configuration reloads applied")      \
	X(RELOAD_FAILURES, counter, "ghlproxy_reload_failures_total", "",                       \
	  "Configuration reloads refused")

enum metric_id {
#define METRIC_ENUM(id, type, family, labels, help) M_##id,
	METRICS_TABLE(METRIC_ENUM)
#undef METRIC_ENUM
	        M__COUNT
};

/* Histograms, in milliseconds, with fixed buckets. */
enum metric_hist { H_QUEUE_WAIT = 0, H_UPSTREAM_LATENCY, H__COUNT };

void metrics_inc(enum metric_id id);
void metrics_add(enum metric_id id, uint64_t n);
void metrics_set(enum metric_id id, int64_t v); /* gauges */
uint64_t metrics_get(enum metric_id id);
void metrics_observe(enum metric_hist h, double ms);

/* Count one upstream answer by its status class. */
void metrics_upstream_status(int status);

/* Append every metric in the Prometheus text exposition format (0.0.4). */
void metrics_render(struct evbuffer *out);

/* Zero everything (tests). */
void metrics_reset(void);

#endif
