/*
 * test_util.c: the hot paths' formatting helpers: util_fmt_i64 (src/util.c) and the RESP
 * encoding of commands (redis_format_argv, src/redis.c), each against the reference it replaces
 * (snprintf "%lld", hiredis' redisFormatCommandArgv), byte for byte.
 */
#include <criterion/criterion.h>

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/redis.h"
#include "src/util.h"

static void check_i64(int64_t v)
{
	char want[64], got[UTIL_I64_LEN + 8];

	memset(got, 'x', sizeof(got));
	int n = snprintf(want, sizeof(want), "%" PRId64, v);
	size_t len = util_fmt_i64(got, v);
	cr_assert_eq(len, (size_t)n, "%" PRId64 ": length %zu, want %d", v, len, n);
	cr_assert_str_eq(got, want);
	cr_assert_eq(got[UTIL_I64_LEN], 'x', "%" PRId64 ": wrote past UTIL_I64_LEN", v);
}

Test(util, fmt_i64_matches_printf)
{
	static const int64_t edges[] = { 0,
		                         1,
		                         -1,
		                         9,
		                         10,
		                         -10,
		                         99,
		                         100,
		                         1000000,
		                         -999999,
		                         INT32_MAX,
		                         INT32_MIN,
		                         INT64_MAX,
		                         INT64_MIN,
		                         INT64_MIN + 1,
		                         INT64_MAX - 1 };

	for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
		check_i64(edges[i]);
	/* every power of ten and its neighbours, both signs */
	for (int64_t p = 1; p <= INT64_MAX / 10; p *= 10) {
		for (int64_t d = -1; d <= 1; d++) {
			check_i64(p + d);
			check_i64(-(p + d));
		}
	}
	/* a spread of values, deterministic */
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	for (int i = 0; i < 10000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		check_i64((int64_t)x);
		check_i64((int64_t)(x >> (i % 64)));
	}
}

/* ours against hiredis' for one command */
static void check_resp(int argc, const char **argv, const size_t *argvlen)
{
	char *want = NULL;
	int wlen = redisFormatCommandArgv(&want, argc, argv, argvlen);
	cr_assert_gt(wlen, 0);

	size_t bound = redis_format_bound(argc, argv, argvlen);
	cr_assert_geq(bound, (size_t)wlen, "bound %zu below the %d bytes needed", bound, wlen);
	char *got = malloc(bound + 1);
	cr_assert_not_null(got);
	memset(got, 'x', bound + 1);
	size_t len = redis_format_argv(got, argc, argv, argvlen);
	cr_assert_eq(len, (size_t)wlen, "length %zu, want %d", len, wlen);
	cr_assert(memcmp(got, want, len) == 0, "bytes differ from redisFormatCommandArgv");
	cr_assert_eq(got[len], '\0', "no NUL after the command (hiredis reads that byte)");
	cr_assert_eq(got[bound], 'x', "wrote past the bound");
	free(got);
	free(want);
}

Test(util, resp_matches_hiredis)
{
	const char *ping[] = { "PING" };
	check_resp(1, ping, NULL);

	/* an admission as limiter_redis.c sends it: an empty argument among them */
	const char *admit[] = { "EVALSHA",
		                "0123456789abcdef0123456789abcdef01234567",
		                "4",
		                "ghlproxy:{app:loc}:b:app:loc",
		                "ghlproxy:{app:loc}:mb:app:loc",
		                "ghlproxy:{app:loc}:d",
		                "ghlproxy:{app:loc}:md",
		                "admit",
		                "",
		                "100",
		                "10000",
		                "250",
		                "200000",
		                "1" };
	check_resp((int)(sizeof(admit) / sizeof(admit[0])), admit, NULL);

	/* binary arguments with explicit lengths: NUL, CR LF, and a length with more digits */
	static char big[70000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7);
	const char *bin[] = { "SET", "k\0ey", "a\r\nb", big };
	const size_t binlen[] = { 3, 4, 4, sizeof(big) };
	check_resp(4, bin, binlen);

	/* many arguments (a merge of a whole window): the count takes several digits */
	const char *many[1200];
	for (size_t i = 0; i < 1200; i++)
		many[i] = i % 3 ? "1700000000123" : "";
	check_resp(1200, many, NULL);
}

Test(util, resp_bound_refuses_what_does_not_fit)
{
	const char *argv[] = { "SET", "k", "v" };
	const size_t huge[] = { 3, SIZE_MAX / 2, SIZE_MAX / 2 };

	cr_assert_eq(redis_format_bound(3, argv, huge), SIZE_MAX);
}
