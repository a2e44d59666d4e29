/*
 * test_ratelimit_headers.c: reading X-RateLimit-* and Retry-After (src/ratelimit_headers.c).
 *
 * A table of (headers as libevent holds them, wall clock) -> expected struct ratelimit_info,
 * covering well-formed values, every kind of malformed one, range limits, duplicates and
 * comma lists, mixed-case names and HTTP-dates; then ratelimit_429_wait_ms() branch by branch.
 */
#include <criterion/criterion.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "src/ratelimit_headers.h"
#include "src/util.h"

#define A -1 /* absent */

/* Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date, in unix ms. */
#define NOV94_MS 784111777000LL

struct hdr {
	const char *name;
	const char *value;
};

struct rh_case {
	const char *what;
	struct hdr h[8]; /* up to the first NULL name */
	int64_t now_unix_ms;
	struct ratelimit_info want;
	bool want_any;
};

/* Every field listed, so a table row reads as the struct does. */
#define INFO(mx, iv, rem, dl, dr, rs, ra)                                                  \
	{                                                                                  \
		.max = (mx), .interval_ms = (iv), .remaining = (rem), .daily_limit = (dl), \
		.daily_remaining = (dr), .daily_reset_ms = (rs), .retry_after_ms = (ra)    \
	}
#define NONE INFO(A, A, A, A, A, A, A)

static const struct rh_case cases[] = {
	{ "no headers", { { NULL, NULL } }, 0, NONE, false },
	{ "unrelated headers",
	  { { "Content-Type", "application/json" },
	    { "x-ratelimit-max-foo", "5" },
	    { "x-ratelimit", "5" },
	    { "ratelimit-remaining", "5" } },
	  0,
	  NONE,
	  false },
	{ "HighLevel, lower case",
	  { { "x-ratelimit-max", "100" },
	    { "x-ratelimit-interval-milliseconds", "10000" },
	    { "x-ratelimit-remaining", "99" },
	    { "x-ratelimit-limit-daily", "200000" },
	    { "x-ratelimit-daily-remaining", "199999" },
	    { "x-ratelimit-daily-reset", "84322000" } },
	  0,
	  INFO(100, 10000, 99, 200000, 199999, 84322000, A),
	  true },
	{ "mixed case names",
	  { { "X-RateLimit-Max", "25" },
	    { "X-RATELIMIT-INTERVAL-MILLISECONDS", "10000" },
	    { "x-RateLimit-Remaining", "0" },
	    { "X-Ratelimit-Limit-Daily", "10000" },
	    { "X-RateLimit-Daily-Remaining", "0" },
	    { "RETRY-AFTER", "3" } },
	  0,
	  INFO(25, 10000, 0, 10000, 0, A, 3000),
	  true },
	{ "surrounding whitespace",
	  { { "x-ratelimit-max", " 100" },
	    { "x-ratelimit-remaining", "\t7\t" },
	    { "x-ratelimit-daily-remaining", "  5  " },
	    { "retry-after", " 2 " } },
	  0,
	  INFO(100, A, 7, A, 5, A, 2000),
	  true },
	{ "leading zeros are decimal",
	  { { "x-ratelimit-max", "0010" }, { "x-ratelimit-remaining", "00" } },
	  0,
	  INFO(10, A, 0, A, A, A, A),
	  true },
	{ "garbage is absent",
	  { { "x-ratelimit-max", "abc" },
	    { "x-ratelimit-interval-milliseconds", "" },
	    { "x-ratelimit-remaining", " " },
	    { "x-ratelimit-limit-daily", "10abc" },
	    { "x-ratelimit-daily-remaining", "+5" },
	    { "x-ratelimit-daily-reset", "-5" },
	    { "retry-after", "soon" } },
	  0,
	  NONE,
	  false },
	{ "more garbage is absent",
	  { { "x-ratelimit-max", "0x10" },
	    { "x-ratelimit-interval-milliseconds", "1e3" },
	    { "x-ratelimit-remaining", "1.5" },
	    { "x-ratelimit-limit-daily", "10 10" },
	    { "x-ratelimit-daily-remaining", "５" },
	    { "x-ratelimit-daily-reset", "1 2" },
	    { "retry-after", "-1" } },
	  0,
	  NONE,
	  false },
	{ "overflow is absent",
	  { { "x-ratelimit-max", "99999999999999999999999" },
	    { "x-ratelimit-remaining", "9223372036854775808" },
	    { "x-ratelimit-daily-remaining", "18446744073709551617" } },
	  0,
	  NONE,
	  false },
	{ "ranges: lower bounds",
	  { { "x-ratelimit-max", "0" },
	    { "x-ratelimit-interval-milliseconds", "0" },
	    { "x-ratelimit-remaining", "0" },
	    { "x-ratelimit-limit-daily", "0" },
	    { "x-ratelimit-daily-remaining", "0" },
	    { "x-ratelimit-daily-reset", "0" },
	    { "retry-after", "0" } },
	  0,
	  INFO(A, A, 0, A, 0, 0, 0),
	  true },
	{ "ranges: upper bounds",
	  { { "x-ratelimit-max", "1000000" },
	    { "x-ratelimit-interval-milliseconds", "86400000" },
	    { "x-ratelimit-remaining", "1000000" },
	    { "x-ratelimit-limit-daily", "1000000000" },
	    { "x-ratelimit-daily-remaining", "1000000000" },
	    { "x-ratelimit-daily-reset", "172800000" },
	    { "retry-after", "172800" } },
	  0,
	  INFO(1000000, 86400000, 1000000, 1000000000, 1000000000, 172800000, 172800000),
	  true },
	{ "ranges: one beyond",
	  { { "x-ratelimit-max", "1000001" },
	    { "x-ratelimit-interval-milliseconds", "86400001" },
	    { "x-ratelimit-remaining", "1000001" },
	    { "x-ratelimit-limit-daily", "1000000001" },
	    { "x-ratelimit-daily-remaining", "1000000001" },
	    { "x-ratelimit-daily-reset", "172800001" },
	    { "retry-after", "172801" } },
	  0,
	  INFO(A, A, A, A, A, A, 172800000), /* Retry-After is capped, not dropped */
	  false },
	{ "retry-after overflow is capped",
	  { { "retry-after", "99999999999999999999999999" } },
	  0,
	  INFO(A, A, A, A, A, A, 172800000),
	  false },
	{ "duplicates: the conservative value",
	  { { "x-ratelimit-max", "100" },
	    { "X-RateLimit-Max", "50" },
	    { "x-ratelimit-interval-milliseconds", "10000" },
	    { "x-ratelimit-interval-milliseconds", "20000" },
	    { "x-ratelimit-remaining", "3" },
	    { "x-ratelimit-remaining", "5" },
	    { "retry-after", "10" },
	    { "Retry-After", "5" } },
	  0,
	  INFO(50, 20000, 3, A, A, A, 10000),
	  true },
	{ "duplicates: daily fields",
	  { { "x-ratelimit-limit-daily", "200000" },
	    { "x-ratelimit-limit-daily", "10000" },
	    { "x-ratelimit-daily-remaining", "7" },
	    { "x-ratelimit-daily-remaining", "9" },
	    { "x-ratelimit-daily-reset", "100" },
	    { "x-ratelimit-daily-reset", "200" } },
	  0,
	  INFO(A, A, A, 10000, 7, 200, A),
	  true },
	{ "duplicates: an invalid one does not erase a valid one",
	  { { "x-ratelimit-max", "abc" },
	    { "x-ratelimit-max", "100" },
	    { "x-ratelimit-remaining", "5" },
	    { "x-ratelimit-remaining", "-1" },
	    { "retry-after", "7" },
	    { "retry-after", "garbage" } },
	  0,
	  INFO(100, A, 5, A, A, A, 7000),
	  true },
	{ "comma lists: each element",
	  { { "x-ratelimit-max", "100, 50" },
	    { "x-ratelimit-remaining", "9,abc" },
	    { "x-ratelimit-daily-reset", "10,,20" },
	    { "x-ratelimit-limit-daily", "," } },
	  0,
	  INFO(50, A, 9, A, A, 20, A),
	  true },
	{ "http-date 10 s ahead",
	  { { "Retry-After", "Sun, 06 Nov 1994 08:49:47 GMT" } },
	  NOV94_MS,
	  INFO(A, A, A, A, A, A, 10000),
	  false },
	{ "http-date, ms resolution of now",
	  { { "retry-after", "  Sun, 06 Nov 1994 08:49:47 GMT\t" } },
	  NOV94_MS + 250,
	  INFO(A, A, A, A, A, A, 9750),
	  false },
	{ "http-date in the past is 0",
	  { { "retry-after", "Sun, 06 Nov 1994 08:49:37 GMT" } },
	  NOV94_MS + 1,
	  INFO(A, A, A, A, A, A, 0),
	  false },
	{ "http-date far ahead is capped",
	  { { "retry-after", "Fri, 31 Dec 9999 23:59:59 GMT" } },
	  NOV94_MS,
	  INFO(A, A, A, A, A, A, 172800000),
	  false },
	{ "http-date at the epoch",
	  { { "retry-after", "Thu, 01 Jan 1970 00:00:00 GMT" } },
	  -5000,
	  INFO(A, A, A, A, A, A, 5000),
	  false },
	{ "http-date on leap days",
	  { { "retry-after", "Thu, 29 Feb 2024 00:00:00 GMT" } },
	  1709164800000LL - 1234,
	  INFO(A, A, A, A, A, A, 1234),
	  false },
	{ "http-date 2000 is a leap year",
	  { { "retry-after", "Tue, 29 Feb 2000 23:59:59 GMT" } },
	  951868799000LL - 1,
	  INFO(A, A, A, A, A, A, 1),
	  false },
	{ "http-date past 2038",
	  { { "retry-after", "Tue, 19 Jan 2038 03:14:08 GMT" } },
	  2147483648000LL - 60000,
	  INFO(A, A, A, A, A, A, 60000),
	  false },
	{ "http-date leap second",
	  { { "retry-after", "Sun, 06 Nov 1994 08:49:60 GMT" } },
	  NOV94_MS,
	  INFO(A, A, A, A, A, A, 23000),
	  false },
	{ "http-date with the other scope's headers",
	  { { "retry-after", "Sun, 06 Nov 1994 08:49:47 GMT" },
	    { "retry-after", "20" },
	    { "x-ratelimit-daily-remaining", "0" } },
	  NOV94_MS,
	  INFO(A, A, A, A, 0, A, 20000),
	  true },
	{ "obsolete and malformed dates are absent",
	  { { "retry-after", "Sunday, 06-Nov-94 08:49:37 GMT" },
	    { "retry-after", "Sun Nov  6 08:49:37 1994" },
	    { "retry-after", "Sun, 06 Nov 1994 08:49:37 gmt" },
	    { "retry-after", "Sun, 06 Nov 1994 08:49:37 UTC" },
	    { "retry-after", "Sun, 6 Nov 1994 08:49:37 GMT" },
	    { "retry-after", "Sun, 06 nov 1994 08:49:37 GMT" },
	    { "retry-after", "Sun, 06 Nov 1994 08:49:37 GMT junk" },
	    { "retry-after", "Xyz, 06 Nov 1994 08:49:37 GMT" } },
	  NOV94_MS - 100000,
	  NONE,
	  false },
	{ "impossible dates are absent",
	  { { "retry-after", "Sun, 31 Feb 1994 08:49:37 GMT" },
	    { "retry-after", "Thu, 29 Feb 2023 00:00:00 GMT" },
	    { "retry-after", "Thu, 29 Feb 1900 00:00:00 GMT" },
	    { "retry-after", "Sun, 00 Nov 1994 08:49:37 GMT" },
	    { "retry-after", "Sun, 31 Nov 1994 08:49:37 GMT" },
	    { "retry-after", "Sun, 06 Nov 1994 24:00:00 GMT" },
	    { "retry-after", "Sun, 06 Nov 1994 08:60:00 GMT" },
	    { "retry-after", "Sun, 06 Nov 1994 08:49:61 GMT" } },
	  NOV94_MS - 100000,
	  NONE,
	  false },
	{ "separators must be exact",
	  { { "retry-after", "Sun,06 Nov 1994 08:49:37 GMT " },
	    { "retry-after", "Sun, 06 Nov 1994 08.49:37 GMT" },
	    { "retry-after", "Sun, 06 Nov 1994 08:49:3x GMT" },
	    { "retry-after", "Sun, 06 Nov 19x4 08:49:37 GMT" },
	    { "retry-after", "Sun, 06-Nov 1994 08:49:37 GMT" } },
	  NOV94_MS - 100000,
	  NONE,
	  false },
};

static void headers_init(struct evkeyvalq *q)
{
	q->tqh_first = NULL;
	q->tqh_last = &q->tqh_first;
}

Test(ratelimit_headers, table)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct rh_case *c = &cases[i];
		struct evkeyvalq q;
		struct ratelimit_info got;

		headers_init(&q);
		for (size_t j = 0; j < 8 && c->h[j].name; j++)
			cr_assert_eq(evhttp_add_header(&q, c->h[j].name, c->h[j].value), 0,
			             "%s: header %zu not accepted by libevent", c->what, j);
		memset(&got, 0x5a, sizeof(got)); /* parse must set every field */
		ratelimit_headers_parse(&q, c->now_unix_ms, &got);
		evhttp_clear_headers(&q);

		cr_expect_eq(got.max, c->want.max, "%s: max %" PRId64, c->what, got.max);
		cr_expect_eq(got.interval_ms, c->want.interval_ms, "%s: interval %" PRId64, c->what,
		             got.interval_ms);
		cr_expect_eq(got.remaining, c->want.remaining, "%s: remaining %" PRId64, c->what,
		             got.remaining);
		cr_expect_eq(got.daily_limit, c->want.daily_limit, "%s: daily_limit %" PRId64,
		             c->what, got.daily_limit);
		cr_expect_eq(got.daily_remaining, c->want.daily_remaining,
		             "%s: daily_remaining %" PRId64, c->what, got.daily_remaining);
		cr_expect_eq(got.daily_reset_ms, c->want.daily_reset_ms, "%s: daily_reset %" PRId64,
		             c->what, got.daily_reset_ms);
		cr_expect_eq(got.retry_after_ms, c->want.retry_after_ms, "%s: retry_after %" PRId64,
		             c->what, got.retry_after_ms);
		cr_expect_eq(ratelimit_info_any(&got), c->want_any, "%s: any", c->what);
	}
}

/* libevent refuses a value with a bare newline; ratelimit_info_add gets such lists directly. */
Test(ratelimit_headers, add_direct_and_null)
{
	struct ratelimit_info ri;

	ratelimit_info_clear(&ri);
	ratelimit_info_add(&ri, "x-ratelimit-max", "12\n", 0);
	cr_expect_eq(ri.max, -1);
	ratelimit_info_add(&ri, "x-ratelimit-max", "12", 0);
	cr_expect_eq(ri.max, 12);
	ratelimit_info_add(&ri, NULL, "5", 0);
	ratelimit_info_add(&ri, "x-ratelimit-max", NULL, 0);
	ratelimit_info_add(NULL, "x-ratelimit-max", "5", 0);
	cr_expect_eq(ri.max, 12);
	ratelimit_info_add(&ri, "X-RATELIMIT-MAX", "7", 0);
	cr_expect_eq(ri.max, 7);
	ratelimit_info_add(&ri, "x-ratelimit-max", "8", 0);
	cr_expect_eq(ri.max, 7, "a larger duplicate must not raise the limit");

	ratelimit_headers_parse(NULL, 0, &ri);
	cr_expect_eq(ri.max, -1);
	cr_expect_not(ratelimit_info_any(&ri));
}

/* Every field alone makes ratelimit_info_any() true; Retry-After alone does not. */
Test(ratelimit_headers, any_per_field)
{
	static const char *const names[] = {
		"x-ratelimit-max",
		"x-ratelimit-interval-milliseconds",
		"x-ratelimit-remaining",
		"x-ratelimit-limit-daily",
		"x-ratelimit-daily-remaining",
		"x-ratelimit-daily-reset",
	};
	struct ratelimit_info ri;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		ratelimit_info_clear(&ri);
		cr_assert_not(ratelimit_info_any(&ri));
		ratelimit_info_add(&ri, names[i], "1", 0);
		cr_expect(ratelimit_info_any(&ri), "%s", names[i]);
	}
	ratelimit_info_clear(&ri);
	ratelimit_info_add(&ri, "retry-after", "1", 0);
	cr_expect_eq(ri.retry_after_ms, 1000);
	cr_expect_not(ratelimit_info_any(&ri));
}

struct wait_case {
	const char *what;
	struct ratelimit_info ri;
	uint32_t window_ms;
	int64_t want_ms;
	bool want_daily;
};

static const struct wait_case wait_cases[] = {
	{ "retry-after wins, burst", INFO(100, 10000, 0, A, 5, A, 3000), 10000, 3000, false },
	{ "retry-after wins, daily", INFO(A, 10000, A, A, 0, 5000, 7000), 10000, 7000, true },
	{ "retry-after 0", INFO(A, A, A, A, A, A, 0), 10000, 0, false },
	{ "daily spent: until the reset", INFO(100, 10000, 0, 200000, 0, 84322000, A), 10000,
	  84322000, true },
	{ "daily spent, reset 0", INFO(A, A, A, A, 0, 0, A), 10000, 0, true },
	{ "daily spent, no reset: a day", INFO(A, 10000, A, A, 0, A, A), 10000, 86400000, true },
	{ "burst: the interval sent", INFO(100, 7000, 0, A, 5, 1000, A), 10000, 7000, false },
	{ "burst: daily unknown, interval sent", INFO(A, 2500, A, A, A, A, A), 10000, 2500, false },
	{ "burst: the window in force", INFO(100, A, 0, A, 9, A, A), 12000, 12000, false },
	{ "nothing sent", NONE, 10000, 10000, false },
};

Test(ratelimit_headers, wait_429_every_branch)
{
	for (size_t i = 0; i < sizeof(wait_cases) / sizeof(wait_cases[0]); i++) {
		const struct wait_case *c = &wait_cases[i];
		bool daily = !c->want_daily;
		int64_t ms = ratelimit_429_wait_ms(&c->ri, c->window_ms, &daily);

		cr_expect_eq(ms, c->want_ms, "%s: %" PRId64 " ms", c->what, ms);
		cr_expect_eq(daily, c->want_daily, "%s: is_daily", c->what);
		cr_expect_eq(ratelimit_429_wait_ms(&c->ri, c->window_ms, NULL), c->want_ms,
		             "%s: without is_daily", c->what);
	}
}

/* End to end: a HighLevel 429 as libevent hands it over. */
Test(ratelimit_headers, daily_429_from_headers)
{
	struct evkeyvalq q;
	struct ratelimit_info ri;
	bool daily = false;

	headers_init(&q);
	evhttp_add_header(&q, "x-ratelimit-limit-daily", "200000");
	evhttp_add_header(&q, "x-ratelimit-daily-remaining", "0");
	evhttp_add_header(&q, "x-ratelimit-daily-reset", "3600000");
	evhttp_add_header(&q, "x-ratelimit-interval-milliseconds", "10000");
	ratelimit_headers_parse(&q, 0, &ri);
	evhttp_clear_headers(&q);
	cr_assert_eq(ratelimit_429_wait_ms(&ri, 10000, &daily), 3600000);
	cr_assert(daily);
}

/* The Date the proxy adds to answers without one: an IMF-fixdate of now, that the proxy's own
 * HTTP-date reader takes back (Retry-After: a date now or just past waits 0 ms). */
Test(ratelimit_headers, proxy_date_is_imf_fixdate_of_now)
{
	char want[2][64];

	for (int i = 0; i < 2; i++) {
		time_t t = time(NULL) - i;
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(want[i], sizeof(want[i]), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	}
	const char *d = util_http_date();
	cr_expect_eq(strlen(d), 29, "%s", d);
	cr_expect(strcmp(d, want[0]) == 0 || strcmp(d, want[1]) == 0, "%s, not %s", d, want[0]);
	struct ratelimit_info ri;
	ratelimit_info_clear(&ri);
	ratelimit_info_add(&ri, "Retry-After", d, util_wall_ms());
	cr_expect_eq(ri.retry_after_ms, 0);
}
