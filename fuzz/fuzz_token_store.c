/*
 * fuzz_token_store.c: libFuzzer target for the token store decoders: ts_decode_file() (the
 * store file), ts_decode_entry() (a Redis blob), both plain and sealed (AES-256-GCM envelope),
 * and ts_key_parse() (a key file's content).
 *
 * Input:
 *   byte 0      flags: bit 0 an entry (Redis blob), else a whole file; bit 1 decode under a
 *               fixed key (the input must then be an envelope); bit 2 the target seals the
 *               rest under that key first (so the fuzzer works on the plain JSON inside a valid
 *               envelope; implies bit 1); bit 3 the rest is a key file for ts_key_parse()
 *   the rest    the bytes
 * Checks, beyond "no crash, no leak":
 *   - 0 or -EINVAL only; on failure an error message and nothing decoded (empty set, NULL
 *     entry); on success every entry validates and the set is sorted with unique resources;
 *   - what decodes encodes again, plain and sealed, and decodes back to the same entries;
 *   - error messages hold no part of the input but validated resource ids: a word that
 *     appears once in the input (8+ of [A-Za-z0-9_], with a digit and an upper-case letter,
 *     so no fixed message text contains it) never appears in one, once the resource id after
 *     "entry " or "resource " is taken out.
 */
#define _GNU_SOURCE /* memmem */

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "fuzz.h"
#include "token_store.h"

#define MAX_WORDS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct ts_key fixed_key = { {
	0x3c, 0x1f, 0x8a, 0x52, 0x77, 0x0e, 0x94, 0xd1, 0x2b, 0x6a, 0xc3,
	0x05, 0xe8, 0x4f, 0x90, 0x13, 0xa7, 0x5d, 0x21, 0xfe, 0x68, 0x0b,
	0xb4, 0x39, 0xc6, 0x72, 0x1e, 0x8d, 0x54, 0xf0, 0x2a, 0x97,
} };

/* ---- sealing, as token_store.c does it (fixed nonce: only the decoder is under test) ---- */

static size_t b64(const unsigned char *in, size_t n, char *out)
{
	return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* The envelope of plain[0..n) under fixed_key; the caller frees. */
static char *seal(const uint8_t *plain, size_t n, size_t *out_len)
{
	static const unsigned char nonce[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	static const char aad[] = TS_AAD;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	unsigned char *ct = fuzz_xmalloc(n + 16);
	unsigned char tag[16];
	char *out = fuzz_xmalloc(128 + 4 * (n / 3 + 1) + 64);
	int k = 0, fin = 0;
	size_t o;

	fuzz_check(ctx != NULL);
	fuzz_check(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1);
	fuzz_check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1);
	fuzz_check(EVP_EncryptInit_ex(ctx, NULL, NULL, fixed_key.bytes, nonce) == 1);
	fuzz_check(EVP_EncryptUpdate(ctx, NULL, &k, (const unsigned char *)aad, (int)strlen(aad)) ==
	           1);
	fuzz_check(EVP_EncryptUpdate(ctx, ct, &k, plain, (int)n) == 1);
	fuzz_check(EVP_EncryptFinal_ex(ctx, ct + k, &fin) == 1);
	fuzz_check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1);
	EVP_CIPHER_CTX_free(ctx);

	o = (size_t)sprintf(out, "{\"version\":1,\"cipher\":\"aes-256-gcm\",\"nonce\":\"");
	o += b64(nonce, sizeof(nonce), out + o);
	o += (size_t)sprintf(out + o, "\",\"tag\":\"");
	o += b64(tag, sizeof(tag), out + o);
	o += (size_t)sprintf(out + o, "\",\"data\":\"");
	o += b64(ct, (size_t)k + (size_t)fin, out + o);
	o += (size_t)sprintf(out + o, "\"}\n");
	free(ct);
	*out_len = o;
	return out;
}

/* ---- secret words ---- */

struct words {
	const uint8_t *p[MAX_WORDS];
	size_t len[MAX_WORDS];
	size_t n;
};

static bool is_word_char(uint8_t c)
{
	return isalnum(c) || c == '_';
}

/* Secret-shaped words of s[0..n) that occur once in it. */
static void find_words(struct words *w, const uint8_t *s, size_t n)
{
	size_t i = 0;

	w->n = 0;
	while (i < n && w->n < MAX_WORDS) {
		size_t b = i, e;
		bool digit = false, upper = false;

		if (!is_word_char(s[i])) {
			i++;
			continue;
		}
		for (e = b; e < n && is_word_char(s[e]); e++) {
			digit = digit || isdigit(s[e]);
			upper = upper || isupper(s[e]);
		}
		i = e;
		if (e - b < 8 || !digit || !upper)
			continue;
		if (memmem(s + b + 1, n - b - 1, s + b, e - b) || memmem(s, e - 1, s + b, e - b))
			continue;
		w->p[w->n] = s + b;
		w->len[w->n] = e - b;
		w->n++;
	}
}

/* err with the id after every "entry " / "resource " blanked out, then no word in it. */
static void check_err_clean(const char *err, const struct words *w)
{
	char buf[512];
	static const char *const marks[] = { "entry ", "resource " };

	fuzz_check(fuzz_terminated(err, sizeof(buf)));
	strcpy(buf, err);
	for (size_t m = 0; m < 2; m++) {
		for (char *p = strstr(buf, marks[m]); p != NULL; p = strstr(p + 1, marks[m])) {
			char *q = p + strlen(marks[m]);

			while (*q && (isalnum((unsigned char)*q) || *q == '_' || *q == '-'))
				*q++ = ' ';
		}
	}
	for (const char *c = buf; *c; c++)
		fuzz_check((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f);
	for (size_t i = 0; i < w->n; i++) {
		if (memmem(buf, strlen(buf), w->p[i], w->len[i]) != NULL) {
			fprintf(stderr, "input word '%.*s' in the error: %s\n", (int)w->len[i],
			        (const char *)w->p[i], err);
			abort();
		}
	}
}

/* ---- checks on what decoded ---- */

static void check_same_entry(const struct ts_entry *a, const struct ts_entry *b)
{
	fuzz_check(strcmp(a->resource, b->resource) == 0);
	fuzz_check(a->user_type == b->user_type && a->state == b->state);
	fuzz_check(a->access_expires_ms == b->access_expires_ms);
	fuzz_check(a->generation == b->generation && a->updated_ms == b->updated_ms);
	fuzz_check(strcmp(a->access_token, b->access_token) == 0);
	fuzz_check(strcmp(a->refresh_token, b->refresh_token) == 0);
	fuzz_check(strcmp(a->company_id, b->company_id) == 0);
	fuzz_check(strcmp(a->location_id, b->location_id) == 0);
	fuzz_check(strcmp(a->user_id, b->user_id) == 0);
	fuzz_check(strcmp(a->scope, b->scope) == 0);
}

static void check_entry_ok(const struct ts_entry *e)
{
	char err[256];

	fuzz_check(ts_entry_validate(e, err, sizeof(err)) == 0);
	fuzz_check(ts_resource_valid(e->resource, strlen(e->resource)));
}

/* Encode (plain, then sealed), decode, compare. */
static void round_trip_entry(const struct ts_entry *e)
{
	const struct ts_key *keys[2] = { NULL, &fixed_key };
	char err[256];

	for (int k = 0; k < 2; k++) {
		struct ts_entry *back = NULL;
		char *text = NULL;
		size_t len = 0;

		fuzz_check(ts_encode_entry(e, keys[k], &text, &len, err, sizeof(err)) == 0);
		fuzz_check(ts_decode_entry(text, len, keys[k], &back, err, sizeof(err)) == 0);
		check_same_entry(e, back);
		ts_entry_free(back);
		ts_buf_free(text, len);
	}
}

static void round_trip_set(const struct ts_set *s)
{
	const struct ts_key *keys[2] = { NULL, &fixed_key };
	char err[256];

	for (int k = 0; k < 2; k++) {
		struct ts_set back;
		char *text = NULL;
		size_t len = 0;

		ts_set_init(&back);
		fuzz_check(ts_encode_file(s, keys[k], &text, &len, err, sizeof(err)) == 0);
		fuzz_check(ts_decode_file(text, len, keys[k], &back, err, sizeof(err)) == 0);
		fuzz_check(back.n == s->n);
		for (size_t i = 0; i < s->n; i++)
			check_same_entry(s->v[i], back.v[i]);
		ts_set_deinit(&back);
		ts_buf_free(text, len);
	}
}

static void fuzz_key(const uint8_t *p, size_t n, const struct words *w)
{
	struct ts_key key;
	char err[256] = "";
	int rc = ts_key_parse(p, n, &key, err, sizeof(err));

	fuzz_check(rc == 0 || rc == -EINVAL);
	if (rc < 0)
		check_err_clean(err, w);
	ts_key_wipe(&key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in);
	const struct ts_key *key = (flags & 6) ? &fixed_key : NULL;
	struct words w;
	char err[256];
	uint8_t *buf;
	size_t len;
	int rc;

	find_words(&w, in.p, in.n);
	if (flags & 8) {
		buf = fuzz_xmalloc(in.n);
		if (in.n > 0)
			memcpy(buf, in.p, in.n);
		fuzz_key(buf, in.n, &w);
		free(buf);
		return 0;
	}
	if (flags & 4) {
		buf = (uint8_t *)seal(in.p, in.n, &len);
	} else {
		/* exactly the bytes given, in a buffer of exactly that size */
		buf = fuzz_xmalloc(in.n);
		if (in.n > 0)
			memcpy(buf, in.p, in.n);
		len = in.n;
	}

	memset(err, 0, sizeof(err));
	if (flags & 1) {
		struct ts_entry *e = (struct ts_entry *)&w; /* must be overwritten */

		rc = ts_decode_entry(buf, len, key, &e, err, sizeof(err));
		fuzz_check(rc == 0 || rc == -EINVAL);
		if (rc == 0) {
			fuzz_check(e != NULL);
			check_entry_ok(e);
			round_trip_entry(e);
			ts_entry_free(e);
		} else {
			fuzz_check(e == NULL && err[0] != '\0');
			check_err_clean(err, &w);
		}
	} else {
		struct ts_set set;

		ts_set_init(&set);
		rc = ts_decode_file(buf, len, key, &set, err, sizeof(err));
		fuzz_check(rc == 0 || rc == -EINVAL);
		if (rc == 0) {
			for (size_t i = 0; i < set.n; i++) {
				check_entry_ok(set.v[i]);
				if (i > 0)
					fuzz_check(strcmp(set.v[i - 1]->resource,
					                  set.v[i]->resource) < 0);
				fuzz_check(ts_set_find(&set, set.v[i]->resource) == set.v[i]);
			}
			round_trip_set(&set);
			/* the set operations the daemon uses on a loaded store */
			if (set.n > 0) {
				struct ts_entry *d = ts_entry_dup(set.v[set.n - 1]);
				size_t n = set.n;

				fuzz_check(d != NULL);
				check_same_entry(d, set.v[n - 1]);
				fuzz_check(ts_set_put(&set, d) == 0 && set.n == n);
				fuzz_check(ts_set_find(&set, d->resource) == d);
				d = ts_set_take(&set, set.v[0]->resource);
				fuzz_check(d != NULL && set.n == n - 1);
				fuzz_check(ts_set_find(&set, d->resource) == NULL);
				fuzz_check(ts_set_remove(&set, d->resource) == -ENOENT);
				ts_entry_free(d);
			}
		} else {
			fuzz_check(set.n == 0 && err[0] != '\0');
			check_err_clean(err, &w);
		}
		ts_set_deinit(&set);
	}
	free(buf);
	return 0;
}
