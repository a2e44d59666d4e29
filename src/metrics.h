/*
 * metrics.h: the process's counters, gauges and histograms, each defined once in the table below,
 * and their rendering in the Prometheus text format (version 0.0.4, /metrics on the admin
 * listener).
 *
 * Data enters through metrics_inc/add/set/observe from the modules that see the events (request.c
 * for outcomes and latencies, limiter_redis.c for Redis, daemon.c for reloads, the OAuth code for
 * token refreshes); gauges that describe a state (queue depth, live keys, connections) are set by
 * admin.c just before it renders. It leaves as text through metrics_render.
 *
 * Labels are fixed in the table: no per-location, per-key or per-token label, so the number of
 * series is bounded whatever the traffic. The one exception is a labelled family
 * (METRICS_LABELLED_TABLE), whose label values come from the configuration (client names), never
 * from requests: at most METRICS_LABEL_VALUES_MAX series each, further values counted together
 * under METRICS_LABEL_OTHER. Rows of one family are adjacent in the table (the
 * renderer writes HELP and TYPE once per family, on its first row, which carries the help text).
 * Histograms are in seconds (Prometheus' base unit); callers observe milliseconds.
 */
#ifndef GHLPROXY_METRICS_H
#define GHLPROXY_METRICS_H

#include <stdint.h>

struct evbuffer;

/* X(id, type, family, labels, help): type is counter, gauge or histogram. */
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
	X(REQ_INTERNAL_ERROR, counter, "ghlproxy_requests_total", "outcome=\"internal_error\"", \
	  "")                                                                                   \
	X(REQ_FORBIDDEN, counter, "ghlproxy_requests_total", "outcome=\"forbidden\"", "")       \
	X(REQ_QUEUED, counter, "ghlproxy_requests_queued_total", "",                            \
	  "Client requests that waited in a key's queue (each also ends with one outcome)")     \
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
	X(UP_LATENCY, histogram, "ghlproxy_upstream_latency_seconds", "",                       \
	  "Time from sending a request to HighLevel to its answer's head")                      \
	X(QUEUE_DEPTH, gauge, "ghlproxy_queue_depth", "", "Requests waiting in all queues")     \
	X(QUEUE_WAIT, histogram, "ghlproxy_queue_wait_seconds", "",                             \
	  "Time requests spent queued before their admission")                                  \
	X(KEYS, gauge, "ghlproxy_live_keys", "", "Rate-limit keys held in memory")              \
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
	X(REDIS_LATE_SENDS, counter, "ghlproxy_redis_late_sends_total", "",                     \
	  "Shared admissions sent later than half the guard band after their decision")         \
	X(TOKEN_REFRESHES, counter, "ghlproxy_token_refreshes_total", "",                       \
	  "OAuth token refreshes that succeeded")                                               \
	X(TOKEN_REFRESH_FAILURES, counter, "ghlproxy_token_refresh_failures_total", "",         \
	  "OAuth token refreshes that failed")                                                  \
	X(TOKEN_STORE_WRITE_FAILURES, counter, "ghlproxy_token_store_write_failures_total", "", \
	  "Writes of the token store that failed")                                              \
	X(TOKENS_NEEDING_REINSTALL, gauge, "ghlproxy_tokens_needing_reinstall", "",             \
	  "Installations whose refresh token HighLevel refused (the app must be reinstalled)")  \
	X(DENY_MISSING, counter, "ghlproxy_client_refusals_total", "reason=\"missing\"",        \
	  "Requests refused by the client-key check ([clients]), by reason")                    \
	X(DENY_INVALID, counter, "ghlproxy_client_refusals_total", "reason=\"invalid\"", "")    \
	X(DENY_RESOURCE, counter, "ghlproxy_client_refusals_total", "reason=\"resource\"", "")  \
	X(DENY_READONLY, counter, "ghlproxy_client_refusals_total", "reason=\"read_only\"", "") \
	X(RELOADS, counter, "ghlproxy_reloads_total", "", "Configuration reloads applied")      \
	X(RELOAD_FAILURES, counter, "ghlproxy_reload_failures_total", "",                       \
	  "Configuration reloads refused (the running configuration was kept)")                 \
	X(DRAINING, gauge, "ghlproxy_draining", "",                                             \
	  "1 once a stop signal was received and the proxy drains")

enum metric_id {
#define METRIC_ENUM(id, type, family, labels, help) M_##id,
	METRICS_TABLE(METRIC_ENUM)
#undef METRIC_ENUM
	        M__COUNT
};

/*
 * Counter families with one label whose values are known only at run time (from the config).
 * X(id, family, label, help).
 */
#define METRICS_LABELLED_TABLE(X)                                      \
	X(CLIENT_REQUESTS, "ghlproxy_client_requests_total", "client", \
	  "Requests that presented a valid client key ([clients]), by client")

enum metric_labelled_id {
#define METRIC_LABELLED_ENUM(id, family, label, help) ML_##id,
	METRICS_LABELLED_TABLE(METRIC_LABELLED_ENUM)
#undef METRIC_LABELLED_ENUM
	        ML__COUNT
};

/* Series per labelled family, and the longest label value kept (longer ones count as other). */
#define METRICS_LABEL_VALUES_MAX 256
#define METRICS_LABEL_VALUE_LEN  64
/* The series that takes what does not fit (not a valid client name, so it cannot clash). */
#define METRICS_LABEL_OTHER "(other)"

/* The names request.c has used for the two histograms. */
#define H_QUEUE_WAIT       M_QUEUE_WAIT
#define H_UPSTREAM_LATENCY M_UP_LATENCY

void metrics_inc(enum metric_id id);
void metrics_add(enum metric_id id, uint64_t n);
void metrics_set(enum metric_id id, int64_t v); /* gauges */
/* A counter's or gauge's value; a histogram's count. */
uint64_t metrics_get(enum metric_id id);
/* One observation of a histogram, in milliseconds (ignored for other types and for NaN). */
void metrics_observe(enum metric_id id, double ms);

/* Count one upstream answer by its status class. */
void metrics_upstream_status(int status);

/*
 * Add n to the series of a labelled family whose label is `value`, creating it (n = 0 makes it
 * appear at 0 before its first event). Series live until metrics_reset: a client removed by a
 * reload keeps its count, as a Prometheus counter should.
 */
void metrics_labelled_add(enum metric_labelled_id id, const char *value, uint64_t n);
/* The value of that series; 0 when it does not exist. */
uint64_t metrics_labelled_get(enum metric_labelled_id id, const char *value);

/* Append every metric in the Prometheus text exposition format (0.0.4). */
void metrics_render(struct evbuffer *out);

/* Zero everything (tests). */
void metrics_reset(void);

#endif
