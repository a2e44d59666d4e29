/*
 * fuzz.h: helpers shared by the libFuzzer targets in this directory (header-only, static).
 *
 * Every target reads its input through a struct fuzz_in: a few leading bytes choose modes and
 * limits, the rest is split into fields (lines, or "the rest"). Each field is copied into a
 * buffer of exactly its size (plus a NUL where the API wants a C string), so AddressSanitizer
 * sees any read past the end of what the code was given.
 *
 * fuzz_check() is the targets' assert: it stays on in every build type (-DNDEBUG does not turn
 * it off) and aborts, which libFuzzer reports as a crash with the input that caused it.
 */
#ifndef GHLPROXY_FUZZ_H
#define GHLPROXY_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define fuzz_check(cond)                                                                         \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

struct fuzz_in {
	const uint8_t *p;
	size_t n;
};

static inline void *fuzz_xmalloc(size_t n)
{
	void *p = malloc(n > 0 ? n : 1);

	if (p == NULL)
		abort();
	return p;
}

/* A copy of p[0..n) with a NUL after it; the caller frees. */
static inline char *fuzz_strndup(const void *p, size_t n)
{
	char *s = fuzz_xmalloc(n + 1);

	if (n > 0)
		memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

/* One byte, or 0 when the input is used up. */
static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
	uint8_t v;

	if (in->n == 0)
		return 0;
	v = in->p[0];
	in->p++;
	in->n--;
	return v;
}

/* Up to 8 bytes, little-endian; missing bytes read as 0. */
static inline uint64_t fuzz_u64(struct fuzz_in *in, unsigned n_bytes)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n_bytes && i < 8; i++)
		v |= (uint64_t)fuzz_u8(in) << (8 * i);
	return v;
}

/*
 * The next line (without its '\n'), or false when the input is used up. A last line without
 * '\n' counts.
 */
static inline bool fuzz_line(struct fuzz_in *in, const uint8_t **line, size_t *len)
{
	const uint8_t *nl;

	if (in->n == 0)
		return false;
	nl = memchr(in->p, '\n', in->n);
	*line = in->p;
	*len = nl != NULL ? (size_t)(nl - in->p) : in->n;
	in->p += *len + (nl != NULL ? 1 : 0);
	in->n -= *len + (nl != NULL ? 1 : 0);
	return true;
}

/* Base64url of data[0..len) into out (room for 4 * ceil(len / 3) + 1), NUL-terminated. */
static inline size_t fuzz_b64url(const uint8_t *data, size_t len, char *out, bool pad)
{
	static const char tbl[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0, i = 0;

	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];

		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		out[o++] = tbl[v >> 6 & 63];
		out[o++] = tbl[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)data[i] << 16;

		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		if (pad) {
			out[o++] = '=';
			out[o++] = '=';
		}
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;

		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		out[o++] = tbl[v >> 6 & 63];
		if (pad)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

/* True when s[0..len) is made of [A-Za-z0-9_-] only (the ids every module agrees on). */
static inline bool fuzz_is_id(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* True when the NUL-terminated string lies within buf[0..cap). */
static inline bool fuzz_terminated(const char *buf, size_t cap)
{
	return memchr(buf, '\0', cap) != NULL;
}

#endif
