/*
 * ratelimit_headers.c: what an upstream answer says about its key's limits (see
 * ratelimit_headers.h). Pure: headers and the wall clock come in as arguments, a struct
 * ratelimit_info comes out; upstream.c feeds it every answer and limiter.c applies it.
 *
 * Parsing is strict: a value is a plain decimal number (optional spaces or tabs around it; no
 * sign, no hex, no fraction, no trailing junk, no overflow) inside its field's range, else it is
 * ignored as if absent. A header sent twice, or a comma-separated list (how an intermediary may
 * join repeated headers), counts each element, and the most conservative one wins: the
 * smallest remaining or limit, the largest interval, reset or Retry-After.
 */
#include "ratelimit_headers.h"

#include <sys/queue.h> /* TAILQ_FOREACH; before libevent defines its own TAILQ_ENTRY */
#include <event2/keyvalq_struct.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#define MS_PER_S        1000LL
#define DAY_MS          (24LL * 3600 * MS_PER_S)
#define RETRY_CAP_MS    (2 * DAY_MS)
#define RETRY_CAP_S     (RETRY_CAP_MS / MS_PER_S)
#define IMF_FIXDATE_LEN 29 /* "Sun, 06 Nov 1994 08:49:37 GMT" */

enum parse_rc {
	PARSE_OK,
	PARSE_INVALID,
	PARSE_OVERFLOW, /* well-formed digits beyond INT64_MAX */
};

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Strip optional whitespace from [*s, *e). */
static void trim_ows(const char **s, const char **e)
{
	while (*s < *e && is_ows(**s))
		(*s)++;
	while (*e > *s && is_ows((*e)[-1]))
		(*e)--;
}

/* Strict decimal over [s, e): digits only, at least one. */
static enum parse_rc parse_decimal(const char *s, const char *e, int64_t *out)
{
	int64_t v = 0;

	trim_ows(&s, &e);
	if (s == e)
		return PARSE_INVALID;
	for (const char *p = s; p < e; p++)
		if (!is_digit(*p))
			return PARSE_INVALID;
	for (; s < e; s++) {
		int d = *s - '0';

		if (v > (INT64_MAX - d) / 10)
			return PARSE_OVERFLOW;
		v = v * 10 + d;
	}
	*out = v;
	return PARSE_OK;
}

/* ---- IMF-fixdate (RFC 9110 5.6.7), the only HTTP-date form a current server sends ---- */

static int match_name(const char *s, const char *const *names, int n)
{
	for (int i = 0; i < n; i++)
		if (memcmp(s, names[i], 3) == 0)
			return i;
	return -1;
}

/* Two digits at s, or -1. */
static int two_digits(const char *s)
{
	if (!is_digit(s[0]) || !is_digit(s[1]))
		return -1;
	return (s[0] - '0') * 10 + (s[1] - '0');
}

static bool is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; m 1..12), after H. Hinnant. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/*
 * "Sun, 06 Nov 1994 08:49:37 GMT" over [s, e) (whitespace trimmed) to unix ms. Case and every
 * separator must be exact; the day must exist in its month; the weekday name must be a weekday
 * name (it is not checked against the date, as senders get it wrong and it carries nothing).
 */
static bool parse_imf_fixdate(const char *s, const char *e, int64_t *out_ms)
{
	static const char *const days[] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
		                              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	int day, mon, y_hi, y_lo, hh, mm, ss, dim;
	int64_t year;

	trim_ows(&s, &e);
	if (e - s != IMF_FIXDATE_LEN)
		return false;
	/* 0123456789012345678901234567 8 */
	/* Sun, 06 Nov 1994 08:49:37 GMT  */
	if (match_name(s, days, 7) < 0 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' ||
	    s[11] != ' ' || s[16] != ' ' || s[19] != ':' || s[22] != ':' || s[25] != ' ' ||
	    memcmp(s + 26, "GMT", 3) != 0)
		return false;
	day = two_digits(s + 5);
	mon = match_name(s + 8, months, 12);
	y_hi = two_digits(s + 12);
	y_lo = two_digits(s + 14);
	hh = two_digits(s + 17);
	mm = two_digits(s + 20);
	ss = two_digits(s + 23);
	if (day < 1 || mon < 0 || y_hi < 0 || y_lo < 0 || hh < 0 || hh > 23 || mm < 0 || mm > 59 ||
	    ss < 0 || ss > 60)
		return false;
	year = y_hi * 100 + y_lo;
	dim = mdays[mon] + (mon == 1 && is_leap(year));
	if (day > dim)
		return false;
	*out_ms = ((days_from_civil(year, mon + 1, day) * 24 + hh) * 60 + mm) * 60 * MS_PER_S +
	          ss * MS_PER_S;
	return true;
}

/* Retry-After over [s, e): delta-seconds or IMF-fixdate, as a delay in [0, 2 days]; or -1. */
static int64_t parse_retry_after(const char *s, const char *e, int64_t now_unix_ms)
{
	int64_t v, date_ms;

	switch (parse_decimal(s, e, &v)) {
	case PARSE_OK:
		return v > RETRY_CAP_S ? RETRY_CAP_MS : v * MS_PER_S;
	case PARSE_OVERFLOW:
		return RETRY_CAP_MS; /* RFC 9110: too large a delta means "very long" */
	case PARSE_INVALID:
		break;
	}
	if (!parse_imf_fixdate(s, e, &date_ms))
		return -1;
	/* Compare without overflow: both are within a few thousand years of 1970 or now is odd. */
	if (date_ms <= now_unix_ms)
		return 0;
	if ((uint64_t)date_ms - (uint64_t)now_unix_ms >= (uint64_t)RETRY_CAP_MS)
		return RETRY_CAP_MS;
	return date_ms - now_unix_ms;
}

/* ---- fields ---- */

enum keep { KEEP_MIN, KEEP_MAX };

struct rl_field {
	const char *name; /* lower case */
	size_t off;       /* of the int64_t in struct ratelimit_info */
	int64_t lo, hi;   /* valid range; outside it the value is ignored */
	enum keep keep;   /* the conservative choice among duplicates */
};

static const struct rl_field rl_fields[] = {
	{ "x-ratelimit-max", offsetof(struct ratelimit_info, max), 1, 1000000, KEEP_MIN },
	{ "x-ratelimit-interval-milliseconds", offsetof(struct ratelimit_info, interval_ms), 1,
	  DAY_MS, KEEP_MAX },
	{ "x-ratelimit-remaining", offsetof(struct ratelimit_info, remaining), 0, 1000000,
	  KEEP_MIN },
	{ "x-ratelimit-limit-daily", offsetof(struct ratelimit_info, daily_limit), 1, 1000000000,
	  KEEP_MIN },
	{ "x-ratelimit-daily-remaining", offsetof(struct ratelimit_info, daily_remaining), 0,
	  1000000000, KEEP_MIN },
	{ "x-ratelimit-daily-reset", offsetof(struct ratelimit_info, daily_reset_ms), 0, 2 * DAY_MS,
	  KEEP_MAX },
};

static void keep_value(int64_t *slot, int64_t v, enum keep keep)
{
	if (*slot < 0 || (keep == KEEP_MIN ? v < *slot : v > *slot))
		*slot = v;
}

void ratelimit_info_clear(struct ratelimit_info *out)
{
	out->max = -1;
	out->interval_ms = -1;
	out->remaining = -1;
	out->daily_limit = -1;
	out->daily_remaining = -1;
	out->daily_reset_ms = -1;
	out->retry_after_ms = -1;
}

void ratelimit_info_add(struct ratelimit_info *out, const char *name, const char *value,
                        int64_t now_unix_ms)
{
	if (!out || !name || !value)
		return;
	/* Every header of every answer passes here; the names wanted all start "Retry-After" or
	 * "X-RateLimit-": rule the rest out on two bytes. */
	if ((name[0] | 0x20) == 'x' ? strncasecmp(name, "x-ratelimit-", 12) != 0
	                            : (name[0] | 0x20) != 'r')
		return;
	if (strcasecmp(name, "retry-after") == 0) {
		/* Not split on commas: an HTTP-date holds one. */
		int64_t v = parse_retry_after(value, value + strlen(value), now_unix_ms);

		if (v >= 0)
			keep_value(&out->retry_after_ms, v, KEEP_MAX);
		return;
	}
	for (size_t i = 0; i < sizeof(rl_fields) / sizeof(rl_fields[0]); i++) {
		const struct rl_field *f = &rl_fields[i];
		int64_t *slot = (int64_t *)((char *)out + f->off);
		const char *s = value;

		if (strcasecmp(name, f->name) != 0)
			continue;
		for (;;) {
			const char *comma = strchr(s, ',');
			const char *e = comma ? comma : s + strlen(s);
			int64_t v;

			if (parse_decimal(s, e, &v) == PARSE_OK && v >= f->lo && v <= f->hi)
				keep_value(slot, v, f->keep);
			if (!comma)
				break;
			s = comma + 1;
		}
		return;
	}
}

void ratelimit_headers_parse(const struct evkeyvalq *headers, int64_t now_unix_ms,
                             struct ratelimit_info *out)
{
	const struct evkeyval *kv;

	ratelimit_info_clear(out);
	if (!headers)
		return;
	TAILQ_FOREACH(kv, headers, next)
	ratelimit_info_add(out, kv->key, kv->value, now_unix_ms);
}

int64_t ratelimit_429_wait_ms(const struct ratelimit_info *ri, uint32_t window_ms, bool *is_daily)
{
	bool daily = ri->daily_remaining == 0;

	if (is_daily)
		*is_daily = daily;
	if (ri->retry_after_ms >= 0)
		return ri->retry_after_ms;
	if (daily)
		return ri->daily_reset_ms >= 0 ? ri->daily_reset_ms : DAY_MS;
	return ri->interval_ms >= 0 ? ri->interval_ms : (int64_t)window_ms;
}

bool ratelimit_info_any(const struct ratelimit_info *ri)
{
	return ri->max >= 0 || ri->interval_ms >= 0 || ri->remaining >= 0 || ri->daily_limit >= 0 ||
	       ri->daily_remaining >= 0 || ri->daily_reset_ms >= 0;
}
