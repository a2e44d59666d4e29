/*
 * ratelimit_headers.h: read what HighLevel says about a key's limits from an answer's headers
 * (X-RateLimit-*, Retry-After), pure. Header names match case-insensitively (HighLevel sends
 * them lower-case through its HTTP/2 edge). A value that is not a plain, in-range decimal
 * number is ignored as if absent: a hostile or broken upstream must not be able to raise our
 * limits or stall a key for ever.
 */
#ifndef GHLPROXY_RATELIMIT_HEADERS_H
#define GHLPROXY_RATELIMIT_HEADERS_H

#include <stdbool.h>
#include <stdint.h>

struct evkeyvalq;

/* Every field is -1 when absent or invalid. */
struct ratelimit_info {
	int64_t max;             /* X-RateLimit-Max: burst N, 1..1000000 */
	int64_t interval_ms;     /* X-RateLimit-Interval-Milliseconds: burst W, 1..86400000 */
	int64_t remaining;       /* X-RateLimit-Remaining, 0..1000000 */
	int64_t daily_limit;     /* X-RateLimit-Limit-Daily: D, 1..1000000000 */
	int64_t daily_remaining; /* X-RateLimit-Daily-Remaining, 0..1000000000 */
	int64_t daily_reset_ms;  /* X-RateLimit-Daily-Reset: ms until the daily reset, 0..172800000
	                          */
	int64_t retry_after_ms;  /* Retry-After: delta-seconds or HTTP-date, capped at 2 days */
};

/* now_unix_ms: the wall clock, only to turn a Retry-After HTTP-date into a delay. */
void ratelimit_headers_parse(const struct evkeyvalq *headers, int64_t now_unix_ms,
                             struct ratelimit_info *out);

/* Parse one value by header name (lower-case name given); for callers holding other lists. */
void ratelimit_info_clear(struct ratelimit_info *out);
void ratelimit_info_add(struct ratelimit_info *out, const char *name, const char *value,
                        int64_t now_unix_ms);

/*
 * How long an upstream 429 blocks its key: Retry-After when sent; else, when the daily budget
 * is spent (daily_remaining == 0), until the daily reset (daily_reset_ms, else a full day);
 * else the burst interval (interval_ms when sent, else window_ms, the one in force).
 * *is_daily tells which scope the 429 is.
 */
int64_t ratelimit_429_wait_ms(const struct ratelimit_info *ri, uint32_t window_ms, bool *is_daily);

/* True when any X-RateLimit-* field was present. */
bool ratelimit_info_any(const struct ratelimit_info *ri);

#endif
