/*
 * util.h: small helpers every module uses: clocks, bounded string copies, ASCII case
 * comparisons, and a deferred-free list so nothing is freed while a caller up the stack in this
 * loop iteration may still touch it.
 */
#ifndef GHLPROXY_UTIL_H
#define GHLPROXY_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define UNUSED(x)     ((void)(x))
#define MIN(a, b)     ((a) < (b) ? (a) : (b))
#define MAX(a, b)     ((a) > (b) ? (a) : (b))

/* Per-thread state of the proxy's own executable: the initial-exec model reads it at a fixed
 * offset from the thread pointer, with no call into the dynamic loader (__tls_get_addr, which
 * the core library's -fPIC would otherwise use, and which would make ld.so a NEEDED library). */
#define UTIL_THREAD_LOCAL __thread __attribute__((tls_model("initial-exec")))

/* CLOCK_MONOTONIC in ns / ms: for every interval and deadline. */
int64_t util_now_ns(void);
int64_t util_now_ms(void);
/* Wall clock (CLOCK_REALTIME) in ms: for dates only (log stamps, token expiry, HTTP-dates). */
int64_t util_wall_ms(void);
/* The current time as an HTTP-date ("Sun, 06 Nov 1994 08:49:37 GMT"), formatted once a second
 * per thread; valid until the caller's thread calls it again. */
const char *util_http_date(void);

/* v in decimal, NUL-terminated, into buf (UTIL_I64_LEN bytes suffice); returns its length. The
 * hot paths' snprintf("%lld") without the format parsing. */
#define UTIL_I64_LEN 21
size_t util_fmt_i64(char *buf, int64_t v);

/* Copy at most size-1 bytes and NUL-terminate; returns strlen(src) (truncated if >= size). */
size_t util_strlcpy(char *dst, const char *src, size_t size);

bool util_strcaseeq(const char *a, const char *b);
bool util_strncaseeq(const char *a, const char *b, size_t n);
/* The value of a hexadecimal digit (either case), or -1. */
int util_hex_value(unsigned char c);
/* True when s starts with prefix (case-sensitive). */
bool util_startswith(const char *s, const char *prefix);

/* A malloc that aborts on failure, for small fixed-size allocations at setup time only. */
void *util_xcalloc(size_t n, size_t size);
char *util_xstrdup(const char *s);

/* Constant-time comparison of two byte strings (lengths may differ; time depends on b_len). */
bool util_ct_equal(const void *a, size_t a_len, const void *b, size_t b_len);

/* Read a small secret or text file (<= max bytes), trimming one trailing newline.
 * Returns 0 and a malloc'd NUL-terminated string, or -errno. */
int util_read_small_file(const char *path, size_t max, char **out, size_t *out_len);

/* Wipe memory that held a secret before freeing it. */
void util_wipe_free(void *p, size_t len);

#endif
