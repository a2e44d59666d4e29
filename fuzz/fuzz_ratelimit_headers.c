/*
 * fuzz_ratelimit_headers.c: libFuzzer target for the X-RateLimit-* / Retry-After reader
 * (ratelimit_headers_parse, ratelimit_info_add, ratelimit_429_wait_ms).
 *
 * Input:
 *   byte 0      flags: bit 0 the clock comes from the next 8 bytes (any int64, even absurd);
 *               else it is a fixed 2025 instant
 *   4 bytes     the limiter's window_ms for ratelimit_429_wait_ms()
 *   lines       "name: value" answer header fields (at most MAX_FIELDS)
 * Checks, beyond "no crash, no leak": every field is -1 or inside its documented range; the
 * result does not depend on the order of the fields (the most conservative value wins, per
 * field); ratelimit_info_add() over the same fields gives what ratelimit_headers_parse() gives;
 * the 429 wait is never negative and never above max(2 days, window_ms).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sys/queue.h> /* TAILQ_*; before libevent defines its own TAILQ_ENTRY */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fuzz.h"
#include "ratelimit_headers.h"

#define MAX_FIELDS 256
#define DAY_MS     (24LL * 3600 * 1000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool in_range(int64_t v, int64_t lo, int64_t hi)
{
	return v == -1 || (v >= lo && v <= hi);
}

static void check_info(const struct ratelimit_info *ri)
{
	fuzz_check(in_range(ri->max, 1, 1000000));
	fuzz_check(in_range(ri->interval_ms, 1, 86400000));
	fuzz_check(in_range(ri->remaining, 0, 1000000));
	fuzz_check(in_range(ri->daily_limit, 1, 1000000000));
	fuzz_check(in_range(ri->daily_remaining, 0, 1000000000));
	fuzz_check(in_range(ri->daily_reset_ms, 0, 172800000));
	fuzz_check(in_range(ri->retry_after_ms, 0, 2 * DAY_MS));
	fuzz_check(ratelimit_info_any(ri) == (ri->max >= 0 || ri->interval_ms >= 0 ||
	                                      ri->remaining >= 0 || ri->daily_limit >= 0 ||
	                                      ri->daily_remaining >= 0 || ri->daily_reset_ms >= 0));
}

static bool same(const struct ratelimit_info *a, const struct ratelimit_info *b)
{
	return a->max == b->max && a->interval_ms == b->interval_ms &&
	       a->remaining == b->remaining && a->daily_limit == b->daily_limit &&
	       a->daily_remaining == b->daily_remaining && a->daily_reset_ms == b->daily_reset_ms &&
	       a->retry_after_ms == b->retry_after_ms;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in);
	int64_t now_ms = 1751436979849LL; /* 2025-07-02 */
	uint32_t window_ms;
	struct evkeyvalq fwd, rev;
	struct ratelimit_info a, b, c;
	const struct evkeyval *kv;
	const uint8_t *line;
	size_t len, n_fields = 0;
	int64_t wait_ms;
	bool is_daily;

	if (flags & 1)
		now_ms = (int64_t)fuzz_u64(&in, 8);
	window_ms = (uint32_t)fuzz_u64(&in, 4);

	TAILQ_INIT(&fwd);
	TAILQ_INIT(&rev);
	while (fuzz_line(&in, &line, &len) && n_fields < MAX_FIELDS) {
		const uint8_t *colon = memchr(line, ':', len);
		char *name, *value;
		size_t vlen;

		if (colon == NULL)
			continue;
		name = fuzz_strndup(line, (size_t)(colon - line));
		colon++;
		vlen = len - (size_t)(colon - line);
		if (vlen > 0 && *colon == ' ') {
			colon++;
			vlen--;
		}
		value = fuzz_strndup(colon, vlen);
		/* the same list, forwards and backwards; evhttp refuses some values (CR, LF) */
		if (evhttp_add_header(&fwd, name, value) == 0) {
			struct evkeyval *last = TAILQ_LAST(&fwd, evkeyvalq);
			struct evkeyval *copy = fuzz_xmalloc(sizeof(*copy));

			copy->key = fuzz_strndup(last->key, strlen(last->key));
			copy->value = fuzz_strndup(last->value, strlen(last->value));
			TAILQ_INSERT_HEAD(&rev, copy, next);
			n_fields++;
		}
		free(name);
		free(value);
	}

	ratelimit_headers_parse(&fwd, now_ms, &a);
	check_info(&a);
	ratelimit_headers_parse(&rev, now_ms, &b);
	fuzz_check(same(&a, &b));
	ratelimit_info_clear(&c);
	TAILQ_FOREACH(kv, &fwd, next)
	ratelimit_info_add(&c, kv->key, kv->value, now_ms);
	fuzz_check(same(&a, &c));

	wait_ms = ratelimit_429_wait_ms(&a, window_ms, &is_daily);
	fuzz_check(wait_ms >= 0);
	fuzz_check(wait_ms <= 2 * DAY_MS || wait_ms <= (int64_t)window_ms);
	fuzz_check(is_daily == (a.daily_remaining == 0));

	ratelimit_headers_parse(NULL, now_ms, &c);
	fuzz_check(!ratelimit_info_any(&c) && c.retry_after_ms == -1);

	evhttp_clear_headers(&fwd);
	evhttp_clear_headers(&rev);
	return 0;
}
