/*
 * util.c: clocks, bounded strings, constant-time compare, small file reads. No state.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * A test hook: GHLPROXY_TEST_CLOCK_SKEW_MS shifts both clocks of this process, so a test can show
 * that a proxy whose clock disagrees with the others' changes nothing when they share Redis (the
 * shared limiter uses Redis' clock only). Read once.
 */
static int64_t clock_skew_ns(void)
{
	static int64_t skew = INT64_MIN;

	if (skew == INT64_MIN) {
		const char *s = getenv("GHLPROXY_TEST_CLOCK_SKEW_MS");
		skew = s ? strtoll(s, NULL, 10) * 1000000LL : 0;
	}
	return skew;
}

int64_t util_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + clock_skew_ns();
}

int64_t util_now_ms(void)
{
	return util_now_ns() / 1000000LL;
}

int64_t util_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000LL + clock_skew_ns() / 1000000LL;
}

const char *util_http_date(void)
{
	static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
		                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	static UTIL_THREAD_LOCAL char
	        date[80]; /* 29 used; room for what -Wformat-truncation assumes of ints */
	static UTIL_THREAD_LOCAL time_t date_sec = -1;
	time_t t = (time_t)(util_wall_ms() / 1000);
	struct tm tm;

	if (t == date_sec)
		return date;
	if (!gmtime_r(&t, &tm))
		return date_sec == -1 ? "Thu, 01 Jan 1970 00:00:00 GMT" : date;
	snprintf(date, sizeof(date), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
	         tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	         tm.tm_sec);
	date_sec = t;
	return date;
}

size_t util_fmt_i64(char *buf, int64_t v)
{
	char tmp[UTIL_I64_LEN];
	/* the magnitude as unsigned: -INT64_MIN does not fit an int64_t */
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	size_t n = 0, len = 0;

	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		buf[len++] = '-';
	while (n)
		buf[len++] = tmp[--n];
	buf[len] = '\0';
	return len;
}

size_t util_strlcpy(char *dst, const char *src, size_t size)
{
	size_t len = strlen(src);

	if (size > 0) {
		size_t n = len < size - 1 ? len : size - 1;
		memcpy(dst, src, n);
		dst[n] = '\0';
	}
	return len;
}

static int lower(int c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

bool util_strcaseeq(const char *a, const char *b)
{
	while (*a && *b) {
		if (lower((unsigned char)*a) != lower((unsigned char)*b))
			return false;
		a++;
		b++;
	}
	return *a == *b;
}

int util_hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool util_strncaseeq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
		if (a[i] == '\0')
			return true;
	}
	return true;
}

bool util_startswith(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

void *util_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p) {
		fputs("ghlproxy: out of memory\n", stderr);
		abort();
	}
	return p;
}

char *util_xstrdup(const char *s)
{
	char *p = strdup(s ? s : "");

	if (!p) {
		fputs("ghlproxy: out of memory\n", stderr);
		abort();
	}
	return p;
}

bool util_ct_equal(const void *a, size_t a_len, const void *b, size_t b_len)
{
	/* Compare b_len bytes whatever a_len is, so timing reveals nothing about a. */
	const unsigned char *pa = a, *pb = b;
	unsigned char diff = (unsigned char)(a_len != b_len);

	for (size_t i = 0; i < b_len; i++)
		diff |= (unsigned char)((i < a_len ? pa[i] : 0) ^ pb[i]);
	return diff == 0;
}

int util_read_small_file(const char *path, size_t max, char **out, size_t *out_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	char *buf;
	size_t len = 0;

	*out = NULL;
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
		close(fd);
		return S_ISREG(st.st_mode) ? -EFBIG : -EINVAL;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	*out = buf;
	if (out_len)
		*out_len = len;
	return 0;
}

void util_wipe_free(void *p, size_t len)
{
	if (!p)
		return;
	OPENSSL_cleanse(p, len);
	free(p);
}
