/*
 * token_store.c: token entries and sets, their JSON and AES-256-GCM encodings, key files, the
 * file store (flock'd read-modify-write, atomic replace) and the refresh lock across processes.
 * The contract and the formats are in token_store.h.
 *
 * Decoding, the part that meets hostile bytes: a size bound, then a scan that refuses nesting
 * deeper than the format needs (so jansson's recursion stays shallow), then jansson with
 * JSON_REJECT_DUPLICATES, then every field checked for type, bounds and character set. Strings
 * are restricted to printable ASCII, which is what HighLevel's tokens and ids are made of; that
 * also makes the encoder (written here, so that every buffer holding a token can be wiped) a
 * matter of escaping '"' and '\'. jansson's error text is never copied into a message: its
 * "near '...'" part can quote a token. Only its line, column and error code are used.
 *
 * Encryption: the plain JSON text is sealed whole (entry or file) with AES-256-GCM, a fresh
 * 12-byte random nonce each time, AAD TS_AAD; a failed tag check cannot tell a wrong key from
 * tampered data, and says so.
 *
 * Writes (ts_file_update): the flock on "<path>.lock" serialises every writer on the host (the
 * CLI and daemons), so no read-modify-write loses another's change; readers need no lock since
 * the file is only ever replaced by rename, and the rename is the commit point: before it the
 * old file is intact and the temp file is removed, after it the new content is whole.
 */
#define _GNU_SOURCE /* asprintf, mkostemp */
#include "token_store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "config.h"
#include "util.h"

#define NONCE_LEN        12
#define TAG_LEN          16
#define FILE_DEPTH_MAX   5 /* root, tokens, entry, and room for unknown entry fields */
#define ENTRY_DEPTH_MAX  3
#define KEY_FILE_MAX     4096
#define FILE_VERSION     1
#define CIPHER_NAME      "aes-256-gcm"
#define MSG_WRONG_KEY    "cannot decrypt the token store: wrong store.key_file?"
#define REFRESH_HASH_HEX 32

static void set_err(char *err, size_t err_len, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (!err || err_len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

/* ---- entries ---- */

static char *empty_str(void)
{
	return calloc(1, 1);
}

/* The string fields of an entry, with their names and bounds, for validation and the codec. */
struct str_field {
	const char *name;
	size_t offset;
	size_t max;
};

static const struct str_field str_fields[] = {
	{ "access_token", offsetof(struct ts_entry, access_token), TS_TOKEN_MAX },
	{ "refresh_token", offsetof(struct ts_entry, refresh_token), TS_TOKEN_MAX },
	{ "company_id", offsetof(struct ts_entry, company_id), TS_ID_MAX },
	{ "location_id", offsetof(struct ts_entry, location_id), TS_ID_MAX },
	{ "user_id", offsetof(struct ts_entry, user_id), TS_ID_MAX },
	{ "scope", offsetof(struct ts_entry, scope), TS_SCOPE_MAX },
};

static char **field_slot(struct ts_entry *e, const struct str_field *f)
{
	return (char **)((char *)e + f->offset);
}

static const char *field_value(const struct ts_entry *e, const struct str_field *f)
{
	return *(char *const *)((const char *)e + f->offset);
}

static void wipe_str(char *s)
{
	if (!s)
		return;
	OPENSSL_cleanse(s, strlen(s));
	free(s);
}

struct ts_entry *ts_entry_new(void)
{
	struct ts_entry *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	for (size_t i = 0; i < sizeof(str_fields) / sizeof(str_fields[0]); i++) {
		char **slot = field_slot(e, &str_fields[i]);
		*slot = empty_str();
		if (!*slot) {
			ts_entry_free(e);
			return NULL;
		}
	}
	return e;
}

void ts_entry_free(struct ts_entry *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < sizeof(str_fields) / sizeof(str_fields[0]); i++)
		wipe_str(*field_slot(e, &str_fields[i]));
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

int ts_entry_set_str(char **slot, const char *value)
{
	char *copy = strdup(value ? value : "");

	if (!copy)
		return -ENOMEM;
	wipe_str(*slot);
	*slot = copy;
	return 0;
}

struct ts_entry *ts_entry_dup(const struct ts_entry *e)
{
	struct ts_entry *d = ts_entry_new();

	if (!d)
		return NULL;
	memcpy(d->resource, e->resource, sizeof(d->resource));
	d->user_type = e->user_type;
	d->access_expires_ms = e->access_expires_ms;
	d->state = e->state;
	d->generation = e->generation;
	d->updated_ms = e->updated_ms;
	for (size_t i = 0; i < sizeof(str_fields) / sizeof(str_fields[0]); i++) {
		if (ts_entry_set_str(field_slot(d, &str_fields[i]),
		                     field_value(e, &str_fields[i])) < 0) {
			ts_entry_free(d);
			return NULL;
		}
	}
	return d;
}

bool ts_resource_valid(const char *s, size_t len)
{
	if (!s || len == 0 || len > TS_RESOURCE_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Printable ASCII only, length within max (len is the known length). */
static bool text_ok(const char *s, size_t len, size_t max)
{
	if (len > max)
		return false;
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	}
	return true;
}

int ts_entry_validate(const struct ts_entry *e, char *err, size_t err_len)
{
	size_t rlen = strnlen(e->resource, sizeof(e->resource));

	if (rlen == sizeof(e->resource) || !ts_resource_valid(e->resource, rlen)) {
		set_err(err, err_len,
		        "an entry has an invalid resource id (1..%d of [A-Za-z0-9_-])",
		        TS_RESOURCE_MAX);
		return -EINVAL;
	}
	if (e->user_type != TS_USER_LOCATION && e->user_type != TS_USER_COMPANY) {
		set_err(err, err_len, "entry %s: invalid user_type", e->resource);
		return -EINVAL;
	}
	if (e->state != TS_STATE_OK && e->state != TS_STATE_NEEDS_REINSTALL &&
	    e->state != TS_STATE_INACTIVE) {
		set_err(err, err_len, "entry %s: invalid state", e->resource);
		return -EINVAL;
	}
	for (size_t i = 0; i < sizeof(str_fields) / sizeof(str_fields[0]); i++) {
		const struct str_field *f = &str_fields[i];
		const char *v = field_value(e, f);
		if (!v) {
			set_err(err, err_len, "entry %s: %s is missing", e->resource, f->name);
			return -EINVAL;
		}
		size_t len = strnlen(v, f->max + 1);
		if (!text_ok(v, len, f->max)) {
			set_err(err, err_len,
			        "entry %s: %s is longer than %zu bytes or not printable ASCII",
			        e->resource, f->name, f->max);
			return -EINVAL;
		}
	}
	if (e->access_expires_ms < 0 || e->updated_ms < 0 || e->generation > INT64_MAX) {
		set_err(err, err_len, "entry %s: a time or the generation is out of range",
		        e->resource);
		return -EINVAL;
	}
	return 0;
}

static const char *const user_type_names[] = { "Location", "Company" };
static const char *const state_names[] = { "ok", "needs_reinstall", "inactive" };

const char *ts_user_type_name(enum ts_user_type t)
{
	return (unsigned)t < 2 ? user_type_names[t] : "?";
}

const char *ts_state_name(enum ts_state s)
{
	return (unsigned)s < 3 ? state_names[s] : "?";
}

int ts_user_type_parse(const char *s, enum ts_user_type *out)
{
	for (unsigned i = 0; i < 2; i++) {
		if (s && strcmp(s, user_type_names[i]) == 0) {
			*out = (enum ts_user_type)i;
			return 0;
		}
	}
	return -EINVAL;
}

int ts_state_parse(const char *s, enum ts_state *out)
{
	for (unsigned i = 0; i < 3; i++) {
		if (s && strcmp(s, state_names[i]) == 0) {
			*out = (enum ts_state)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* ---- sets ---- */

void ts_set_init(struct ts_set *s)
{
	memset(s, 0, sizeof(*s));
}

void ts_set_deinit(struct ts_set *s)
{
	for (size_t i = 0; i < s->n; i++)
		ts_entry_free(s->v[i]);
	free(s->v);
	ts_set_init(s);
}

/* Index of the first entry whose resource is >= resource; *found when equal. */
static size_t lower_bound(const struct ts_set *s, const char *resource, bool *found)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(s->v[mid]->resource, resource) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < s->n && strcmp(s->v[lo]->resource, resource) == 0;
	return lo;
}

struct ts_entry *ts_set_find(const struct ts_set *s, const char *resource)
{
	bool found;
	size_t i = lower_bound(s, resource, &found);

	/* found means i < n, so v is set; clang-analyzer stops short of seeing that. */
	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
	return found ? s->v[i] : NULL;
}

int ts_set_put(struct ts_set *s, struct ts_entry *e)
{
	bool found;
	size_t i = lower_bound(s, e->resource, &found);

	if (found) {
		/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): as in ts_set_find */
		if (s->v[i] != e)
			ts_entry_free(s->v[i]);
		s->v[i] = e;
		return 0;
	}
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		struct ts_entry **v;
		if (cap > SIZE_MAX / sizeof(*v))
			return -ENOMEM;
		v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		s->v = v;
		s->cap = cap;
	}
	memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(*s->v));
	s->v[i] = e;
	s->n++;
	return 0;
}

struct ts_entry *ts_set_take(struct ts_set *s, const char *resource)
{
	bool found;
	size_t i = lower_bound(s, resource, &found);
	struct ts_entry *e;

	if (!found)
		return NULL;
	e = s->v[i];
	memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof(*s->v));
	s->n--;
	return e;
}

int ts_set_remove(struct ts_set *s, const char *resource)
{
	struct ts_entry *e = ts_set_take(s, resource);

	if (!e)
		return -ENOENT;
	ts_entry_free(e);
	return 0;
}

/* ---- base64 (standard alphabet) ---- */

/* Value of each byte as a standard base64 digit, or -1. */
static const int8_t b64_digit[256] = {
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62,
	-1, -1, -1, 63, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1, -1, 0,
	1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
	23, 24, 25, -1, -1, -1, -1, -1, -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38,
	39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/*
 * Decode base64, padding optional (but, when present, completing the last group). Returns the
 * decoded length, or -1 on a bad character or length, or when it would not fit out_cap. Strict:
 * no whitespace, and the unused bits of a short final group must be zero (canonical form).
 */
static long b64_decode(const char *in, size_t len, unsigned char *out, size_t out_cap)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t n_pad = 0, o = 0, i = 0;
	size_t rest;

	while (len > 0 && in[len - 1] == '=' && n_pad < 2) {
		len--;
		n_pad++;
	}
	if ((n_pad > 0 && (len + n_pad) % 4 != 0) || len % 4 == 1)
		return -1;
	/* Every 4 characters give 3 bytes, a final 2 or 3 give 1 or 2: len * 3 / 4 exactly. */
	if (len > SIZE_MAX / 3 || len * 3 / 4 > out_cap)
		return -1;
	for (; i + 4 <= len; i += 4) {
		int a = b64_digit[p[i]], b = b64_digit[p[i + 1]], c = b64_digit[p[i + 2]],
		    d = b64_digit[p[i + 3]];
		if ((a | b | c | d) < 0)
			return -1;
		uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
		out[o++] = (unsigned char)(v >> 16);
		out[o++] = (unsigned char)(v >> 8);
		out[o++] = (unsigned char)v;
	}
	rest = len - i;
	if (rest > 0) {
		int a = b64_digit[p[i]], b = b64_digit[p[i + 1]];
		int c = rest == 3 ? b64_digit[p[i + 2]] : 0;
		if ((a | b | c) < 0)
			return -1;
		uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6;
		/* Bits past the last whole byte must be zero. */
		if ((rest == 2 && (v & 0xffff)) || (rest == 3 && (v & 0xff)))
			return -1;
		out[o++] = (unsigned char)(v >> 16);
		if (rest == 3)
			out[o++] = (unsigned char)(v >> 8);
	}
	return (long)o;
}

static size_t b64_encoded_len(size_t n)
{
	return 4 * ((n + 2) / 3);
}

/* ---- an output buffer that never leaves a copy of its content behind ---- */

struct buf {
	char *p;
	size_t len, cap, max;
	bool failed;   /* out of memory */
	bool too_long; /* would exceed max */
};

static void buf_reserve(struct buf *b, size_t more)
{
	char *p;
	size_t cap;

	if (b->failed || b->too_long)
		return;
	if (more > b->max || b->len > b->max - more) {
		b->too_long = true;
		return;
	}
	if (b->len + more + 1 <= b->cap)
		return;
	cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more + 1)
		cap *= 2;
	p = malloc(cap);
	if (!p) {
		b->failed = true;
		return;
	}
	/* No realloc: the old block is wiped before it goes back to the allocator. */
	if (b->p) {
		memcpy(p, b->p, b->len);
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	b->p = p;
	b->cap = cap;
}

static void buf_add(struct buf *b, const char *s, size_t n)
{
	buf_reserve(b, n);
	if (b->failed || b->too_long)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_u64(struct buf *b, uint64_t v)
{
	char tmp[24];
	int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);

	buf_add(b, tmp, (size_t)n);
}

/* A JSON string of printable ASCII (validated before): only '"' and '\' need escaping. */
static void buf_json_str(struct buf *b, const char *s)
{
	buf_add(b, "\"", 1);
	while (*s) {
		size_t run = strcspn(s, "\"\\");
		buf_add(b, s, run);
		s += run;
		if (*s) {
			char esc[2] = { '\\', *s };
			buf_add(b, esc, 2);
			s++;
		}
	}
	buf_add(b, "\"", 1);
}

static void buf_b64(struct buf *b, const unsigned char *data, size_t n)
{
	size_t elen = b64_encoded_len(n);

	buf_reserve(b, elen);
	if (b->failed || b->too_long)
		return;
	/* n is bounded by the callers (TS_FILE_MAX), so it fits EVP's int. */
	EVP_EncodeBlock((unsigned char *)b->p + b->len, data, (int)n);
	b->len += elen;
	b->p[b->len] = '\0';
}

static void buf_wipe(struct buf *b)
{
	if (b->p) {
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	b->p = NULL;
	b->len = b->cap = 0;
}

void ts_buf_free(char *buf, size_t len)
{
	if (!buf)
		return;
	OPENSSL_cleanse(buf, len);
	free(buf);
}

/* 0, or the error for a failed buffer. On success the buffer is handed over in out. */
static int buf_finish(struct buf *b, const char *what, char **out, size_t *out_len, char *err,
                      size_t err_len)
{
	if (b->failed) {
		buf_wipe(b);
		set_err(err, err_len, "out of memory encoding %s", what);
		return -ENOMEM;
	}
	if (b->too_long) {
		buf_wipe(b);
		set_err(err, err_len, "%s would be larger than %zu bytes", what, b->max);
		return -EFBIG;
	}
	*out = b->p;
	*out_len = b->len;
	b->p = NULL;
	return 0;
}

/* ---- encoding ---- */

static void encode_entry_json(struct buf *b, const struct ts_entry *e)
{
	buf_puts(b, "{\"resource\":");
	buf_json_str(b, e->resource);
	buf_puts(b, ",\"user_type\":");
	buf_json_str(b, ts_user_type_name(e->user_type));
	buf_puts(b, ",\"access_token\":");
	buf_json_str(b, e->access_token);
	buf_puts(b, ",\"access_expires_ms\":");
	buf_u64(b, (uint64_t)e->access_expires_ms);
	buf_puts(b, ",\"refresh_token\":");
	buf_json_str(b, e->refresh_token);
	buf_puts(b, ",\"company_id\":");
	buf_json_str(b, e->company_id);
	buf_puts(b, ",\"location_id\":");
	buf_json_str(b, e->location_id);
	buf_puts(b, ",\"user_id\":");
	buf_json_str(b, e->user_id);
	buf_puts(b, ",\"scope\":");
	buf_json_str(b, e->scope);
	buf_puts(b, ",\"state\":");
	buf_json_str(b, ts_state_name(e->state));
	buf_puts(b, ",\"generation\":");
	buf_u64(b, e->generation);
	buf_puts(b, ",\"updated_ms\":");
	buf_u64(b, (uint64_t)e->updated_ms);
	buf_puts(b, "}");
}

/* Seal plain into the envelope, appended to out. */
static int seal(const struct ts_key *key, const char *plain, size_t plain_len, struct buf *out,
                char *err, size_t err_len)
{
	unsigned char nonce[NONCE_LEN], tag[TAG_LEN];
	unsigned char *ct = NULL;
	EVP_CIPHER_CTX *ctx = NULL;
	int n = 0, fin = 0, rc = -EIO;

	if (plain_len > INT_MAX - 64) {
		set_err(err, err_len, "the token store is too large to encrypt");
		return -EFBIG;
	}
	ct = malloc(plain_len + 1);
	ctx = EVP_CIPHER_CTX_new();
	if (!ct || !ctx) {
		set_err(err, err_len, "out of memory encrypting the token store");
		rc = -ENOMEM;
		goto out;
	}
	if (RAND_bytes(nonce, sizeof(nonce)) != 1 ||
	    EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
	    EVP_EncryptInit_ex(ctx, NULL, NULL, key->bytes, nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)TS_AAD, (int)strlen(TS_AAD)) !=
	            1 ||
	    EVP_EncryptUpdate(ctx, ct, &n, (const unsigned char *)plain, (int)plain_len) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + n, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1) {
		set_err(err, err_len, "encrypting the token store failed (OpenSSL)");
		goto out;
	}
	buf_puts(out, "{\"version\":1,\"cipher\":\"" CIPHER_NAME "\",\"nonce\":\"");
	buf_b64(out, nonce, sizeof(nonce));
	buf_puts(out, "\",\"tag\":\"");
	buf_b64(out, tag, sizeof(tag));
	buf_puts(out, "\",\"data\":\"");
	buf_b64(out, ct, (size_t)n + (size_t)fin);
	buf_puts(out, "\"}\n");
	rc = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	free(ct);
	return rc;
}

/* Encode the plain text (through plain), then seal it when key is set. */
static int finish_encoding(struct buf *plain, const struct ts_key *key, size_t max,
                           const char *what, char **out, size_t *out_len, char *err, size_t err_len)
{
	struct buf sealed = { .max = max };
	int rc;

	if (!key)
		return buf_finish(plain, what, out, out_len, err, err_len);
	if (plain->failed || plain->too_long)
		return buf_finish(plain, what, out, out_len, err, err_len);
	rc = seal(key, plain->p, plain->len, &sealed, err, err_len);
	buf_wipe(plain);
	if (rc < 0) {
		buf_wipe(&sealed);
		return rc;
	}
	return buf_finish(&sealed, what, out, out_len, err, err_len);
}

int ts_encode_file(const struct ts_set *s, const struct ts_key *key, char **out, size_t *out_len,
                   char *err, size_t err_len)
{
	struct buf b = { .max = TS_FILE_MAX };

	*out = NULL;
	*out_len = 0;
	if (s->n > TS_ENTRIES_MAX) {
		set_err(err, err_len, "the token store would hold more than %d entries",
		        TS_ENTRIES_MAX);
		return -EFBIG;
	}
	for (size_t i = 0; i < s->n; i++) {
		int rc = ts_entry_validate(s->v[i], err, err_len);
		if (rc < 0)
			return rc;
		if (i > 0 && strcmp(s->v[i - 1]->resource, s->v[i]->resource) >= 0) {
			set_err(err, err_len, "the token set is not sorted or has duplicates");
			return -EINVAL;
		}
	}
	buf_puts(&b, "{\"version\":1,\"tokens\":[");
	for (size_t i = 0; i < s->n; i++) {
		buf_puts(&b, i ? ",\n" : "\n");
		encode_entry_json(&b, s->v[i]);
	}
	buf_puts(&b, "\n]}\n");
	return finish_encoding(&b, key, TS_FILE_MAX, "the token store", out, out_len, err, err_len);
}

int ts_encode_entry(const struct ts_entry *e, const struct ts_key *key, char **out, size_t *out_len,
                    char *err, size_t err_len)
{
	struct buf b = { .max = TS_ENTRY_MAX };
	int rc;

	*out = NULL;
	*out_len = 0;
	rc = ts_entry_validate(e, err, err_len);
	if (rc < 0)
		return rc;
	encode_entry_json(&b, e);
	return finish_encoding(&b, key, TS_ENTRY_MAX, "the token entry", out, out_len, err,
	                       err_len);
}

/* ---- decoding ---- */

/* Nesting of arrays and objects, outside strings, never over max. Cheap, and bounds jansson. */
static bool depth_ok(const char *s, size_t len, int max)
{
	int depth = 0;
	bool in_str = false, esc = false;

	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (in_str) {
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				in_str = false;
		} else if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{') {
			if (++depth > max)
				return false;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return true;
}

/* Parse one JSON object; what names the input in messages ("the token store"). */
static int parse_json(const char *buf, size_t len, size_t max, int max_depth, const char *what,
                      json_t **out, char *err, size_t err_len)
{
	json_error_t jerr;
	json_t *root;

	*out = NULL;
	if (len == 0) {
		set_err(err, err_len, "%s is empty", what);
		return -EINVAL;
	}
	if (len > max) {
		set_err(err, err_len, "%s is larger than %zu bytes", what, max);
		return -EINVAL;
	}
	if (!depth_ok(buf, len, max_depth)) {
		set_err(err, err_len, "%s is nested too deeply", what);
		return -EINVAL;
	}
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		const char *why;
		switch (json_error_code(&jerr)) {
		case json_error_out_of_memory:
			set_err(err, err_len, "out of memory reading %s", what);
			return -ENOMEM;
		case json_error_premature_end_of_input:
			why = "is truncated";
			break;
		case json_error_end_of_input_expected:
			why = "has data after its JSON value";
			break;
		case json_error_duplicate_key:
			why = "has a duplicate key";
			break;
		case json_error_invalid_utf8:
			why = "is not valid UTF-8";
			break;
		case json_error_numeric_overflow:
			why = "has a number out of range";
			break;
		case json_error_null_character:
		case json_error_null_byte_in_key:
			why = "holds a NUL character";
			break;
		case json_error_stack_overflow:
			why = "is nested too deeply";
			break;
		default:
			why = "is not valid JSON";
			break;
		}
		/* Never jerr.text: it quotes the input near the error, maybe a token. */
		set_err(err, err_len, "%s %s (line %d, column %d)", what, why, jerr.line,
		        jerr.column);
		return -EINVAL;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		set_err(err, err_len, "%s is not a JSON object", what);
		return -EINVAL;
	}
	*out = root;
	return 0;
}

/* Wipe every string value jansson holds (bounded depth: parse_json checked nesting). */
static void wipe_json(json_t *v, int depth)
{
	if (!v || depth > FILE_DEPTH_MAX + 1)
		return;
	if (json_is_string(v)) {
		OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
	} else if (json_is_array(v)) {
		size_t i;
		json_t *x;
		json_array_foreach(v, i, x)
		{
			wipe_json(x, depth + 1);
		}
	} else if (json_is_object(v)) {
		const char *k;
		json_t *x;
		json_object_foreach(v, k, x)
		{
			wipe_json(x, depth + 1);
		}
	}
}

static void free_json(json_t *root)
{
	wipe_json(root, 0);
	json_decref(root);
}

static int check_version(json_t *root, const char *what, char *err, size_t err_len)
{
	json_t *v = json_object_get(root, "version");

	if (!json_is_integer(v)) {
		set_err(err, err_len, "%s has no integer \"version\"", what);
		return -EINVAL;
	}
	if (json_integer_value(v) != FILE_VERSION) {
		set_err(err, err_len, "%s has version %" JSON_INTEGER_FORMAT ", not %d", what,
		        json_integer_value(v), FILE_VERSION);
		return -EINVAL;
	}
	return 0;
}

/* Decode a base64 member of the envelope into out (exactly want bytes when want > 0). */
static long envelope_b64(json_t *env, const char *name, unsigned char *out, size_t cap, size_t want,
                         char *err, size_t err_len)
{
	json_t *v = json_object_get(env, name);
	long n;

	if (!json_is_string(v)) {
		set_err(err, err_len, "the encrypted token store has no string \"%s\"", name);
		return -EINVAL;
	}
	n = b64_decode(json_string_value(v), json_string_length(v), out, cap);
	if (n < 0 || (want > 0 && (size_t)n != want)) {
		set_err(err, err_len, "the encrypted token store's \"%s\" is not valid base64%s",
		        name, want ? " of the right length" : "");
		return -EINVAL;
	}
	return n;
}

/*
 * Open the envelope in env under key. On success *plain is a malloc'd text (ts_buf_free) of
 * *plain_len bytes.
 */
static int open_envelope(json_t *env, const struct ts_key *key, char **plain, size_t *plain_len,
                         char *err, size_t err_len)
{
	unsigned char nonce[NONCE_LEN], tag[TAG_LEN];
	unsigned char *ct = NULL, *pt = NULL;
	json_t *cipher = json_object_get(env, "cipher"), *data = json_object_get(env, "data");
	EVP_CIPHER_CTX *ctx = NULL;
	size_t cap;
	long ct_len;
	int n = 0, fin = 0, rc = -EINVAL;

	*plain = NULL;
	*plain_len = 0;
	if (!json_is_string(cipher) || strcmp(json_string_value(cipher), CIPHER_NAME) != 0) {
		set_err(err, err_len, "the token store's cipher is not " CIPHER_NAME);
		return -EINVAL;
	}
	if (envelope_b64(env, "nonce", nonce, sizeof(nonce), NONCE_LEN, err, err_len) < 0 ||
	    envelope_b64(env, "tag", tag, sizeof(tag), TAG_LEN, err, err_len) < 0)
		return -EINVAL;
	if (!json_is_string(data)) {
		set_err(err, err_len, "the encrypted token store has no string \"data\"");
		return -EINVAL;
	}
	/* data is bounded by the input size already checked by parse_json. */
	cap = json_string_length(data) / 4 * 3 + 3;
	ct = malloc(cap);
	pt = malloc(cap + 1);
	ctx = EVP_CIPHER_CTX_new();
	if (!ct || !pt || !ctx) {
		set_err(err, err_len, "out of memory decrypting the token store");
		rc = -ENOMEM;
		goto out;
	}
	ct_len = envelope_b64(env, "data", ct, cap, 0, err, err_len);
	if (ct_len < 0)
		goto out;
	if (ct_len > INT_MAX - 64) {
		set_err(err, err_len, "the encrypted token store is too large");
		goto out;
	}
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
	    EVP_DecryptInit_ex(ctx, NULL, NULL, key->bytes, nonce) != 1 ||
	    EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)TS_AAD, (int)strlen(TS_AAD)) !=
	            1 ||
	    EVP_DecryptUpdate(ctx, pt, &n, ct, (int)ct_len) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1) {
		set_err(err, err_len, "decrypting the token store failed (OpenSSL)");
		rc = -EIO;
		goto out;
	}
	if (EVP_DecryptFinal_ex(ctx, pt + n, &fin) != 1) {
		/* The tag did not verify: a different key, or altered bytes. */
		set_err(err, err_len, MSG_WRONG_KEY);
		goto out;
	}
	*plain_len = (size_t)n + (size_t)fin;
	pt[*plain_len] = '\0';
	*plain = (char *)pt;
	pt = NULL;
	rc = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	free(ct);
	if (pt) {
		OPENSSL_cleanse(pt, cap + 1);
		free(pt);
	}
	return rc;
}

/* Copy a validated string member into *slot. */
static int get_str(json_t *o, const char *name, size_t max, char **slot, const char *where,
                   char *err, size_t err_len)
{
	json_t *v = json_object_get(o, name);

	if (!json_is_string(v)) {
		set_err(err, err_len, "%s: \"%s\" is missing or not a string", where, name);
		return -EINVAL;
	}
	if (!text_ok(json_string_value(v), json_string_length(v), max)) {
		set_err(err, err_len, "%s: \"%s\" is longer than %zu bytes or not printable ASCII",
		        where, name, max);
		return -EINVAL;
	}
	if (ts_entry_set_str(slot, json_string_value(v)) < 0) {
		set_err(err, err_len, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int get_int(json_t *o, const char *name, int64_t *out, const char *where, char *err,
                   size_t err_len)
{
	json_t *v = json_object_get(o, name);

	if (!json_is_integer(v) || json_integer_value(v) < 0) {
		set_err(err, err_len, "%s: \"%s\" is missing or not a non-negative integer", where,
		        name);
		return -EINVAL;
	}
	*out = (int64_t)json_integer_value(v);
	return 0;
}

/* One entry object. where names it in messages ("entry 3", "the token entry"). */
static int entry_from_json(json_t *o, struct ts_entry **out, const char *where, char *err,
                           size_t err_len)
{
	struct ts_entry *e;
	json_t *v;
	char where_r[TS_RESOURCE_MAX + 32];
	int64_t gen;
	int rc;

	*out = NULL;
	if (!json_is_object(o)) {
		set_err(err, err_len, "%s is not a JSON object", where);
		return -EINVAL;
	}
	v = json_object_get(o, "resource");
	if (!json_is_string(v) || !ts_resource_valid(json_string_value(v), json_string_length(v))) {
		set_err(err, err_len,
		        "%s: \"resource\" is missing or not an id (1..%d of [A-Za-z0-9_-])", where,
		        TS_RESOURCE_MAX);
		return -EINVAL;
	}
	e = ts_entry_new();
	if (!e) {
		set_err(err, err_len, "out of memory");
		return -ENOMEM;
	}
	memcpy(e->resource, json_string_value(v), json_string_length(v) + 1);
	/* From here on the resource id is valid and safe to name. */
	snprintf(where_r, sizeof(where_r), "entry %s", e->resource);
	v = json_object_get(o, "user_type");
	if (!json_is_string(v) || ts_user_type_parse(json_string_value(v), &e->user_type) < 0) {
		set_err(err, err_len, "%s: \"user_type\" is not \"Location\" or \"Company\"",
		        where_r);
		rc = -EINVAL;
		goto fail;
	}
	v = json_object_get(o, "state");
	if (!json_is_string(v) || ts_state_parse(json_string_value(v), &e->state) < 0) {
		set_err(err, err_len,
		        "%s: \"state\" is not \"ok\", \"needs_reinstall\" or \"inactive\"",
		        where_r);
		rc = -EINVAL;
		goto fail;
	}
	for (size_t i = 0; i < sizeof(str_fields) / sizeof(str_fields[0]); i++) {
		rc = get_str(o, str_fields[i].name, str_fields[i].max,
		             field_slot(e, &str_fields[i]), where_r, err, err_len);
		if (rc < 0)
			goto fail;
	}
	if ((rc = get_int(o, "access_expires_ms", &e->access_expires_ms, where_r, err, err_len)) <
	            0 ||
	    (rc = get_int(o, "generation", &gen, where_r, err, err_len)) < 0 ||
	    (rc = get_int(o, "updated_ms", &e->updated_ms, where_r, err, err_len)) < 0)
		goto fail;
	e->generation = (uint64_t)gen;
	*out = e;
	return 0;
fail:
	ts_entry_free(e);
	return rc;
}

/* The plain file object {"version":1,"tokens":[...]} into out. */
static int set_from_json(json_t *root, struct ts_set *out, char *err, size_t err_len)
{
	json_t *tokens, *x;
	size_t i;
	int rc;

	rc = check_version(root, "the token store", err, err_len);
	if (rc < 0)
		return rc;
	tokens = json_object_get(root, "tokens");
	if (!json_is_array(tokens)) {
		set_err(err, err_len, "the token store has no \"tokens\" array");
		return -EINVAL;
	}
	if (json_array_size(tokens) > TS_ENTRIES_MAX) {
		set_err(err, err_len, "the token store has more than %d entries", TS_ENTRIES_MAX);
		return -EINVAL;
	}
	json_array_foreach(tokens, i, x)
	{
		struct ts_entry *e;
		char where[32];

		snprintf(where, sizeof(where), "entry %zu", i + 1);
		rc = entry_from_json(x, &e, where, err, err_len);
		if (rc < 0)
			goto fail;
		if (ts_set_find(out, e->resource)) {
			set_err(err, err_len, "the token store has two entries for resource %s",
			        e->resource);
			ts_entry_free(e);
			rc = -EINVAL;
			goto fail;
		}
		if (ts_set_put(out, e) < 0) {
			ts_entry_free(e);
			set_err(err, err_len, "out of memory");
			rc = -ENOMEM;
			goto fail;
		}
	}
	return 0;
fail:
	ts_set_deinit(out);
	return rc;
}

/*
 * Parse buf as what ("the token store" / "the token entry"): a plain object, or the envelope of
 * one (then opened under key). *root is the plain object.
 */
static int parse_maybe_sealed(const void *buf, size_t len, const struct ts_key *key, size_t max,
                              int max_depth, const char *what, json_t **root, char *err,
                              size_t err_len)
{
	json_t *outer, *inner;
	char *plain = NULL;
	size_t plain_len = 0;
	int rc;

	*root = NULL;
	rc = parse_json(buf, len, max, max_depth, what, &outer, err, err_len);
	if (rc < 0)
		return rc;
	if (!json_object_get(outer, "cipher")) {
		if (key) {
			free_json(outer);
			set_err(err, err_len, "%s is not encrypted, but store.key_file is set",
			        what);
			return -EINVAL;
		}
		*root = outer;
		return 0;
	}
	if (!key) {
		free_json(outer);
		set_err(err, err_len, "%s is encrypted: set store.key_file", what);
		return -EINVAL;
	}
	rc = check_version(outer, what, err, err_len);
	if (rc == 0)
		rc = open_envelope(outer, key, &plain, &plain_len, err, err_len);
	json_decref(outer); /* the envelope holds no plain secret */
	if (rc < 0)
		return rc;
	rc = parse_json(plain, plain_len, max, max_depth, what, &inner, err, err_len);
	ts_buf_free(plain, plain_len);
	if (rc < 0)
		return rc;
	if (json_object_get(inner, "cipher")) {
		free_json(inner);
		set_err(err, err_len, "%s is encrypted twice", what);
		return -EINVAL;
	}
	*root = inner;
	return 0;
}

int ts_decode_file(const void *buf, size_t len, const struct ts_key *key, struct ts_set *out,
                   char *err, size_t err_len)
{
	json_t *root;
	int rc;

	if (out->n != 0) {
		set_err(err, err_len, "internal error: decoding into a non-empty set");
		return -EINVAL;
	}
	rc = parse_maybe_sealed(buf, len, key, TS_FILE_MAX, FILE_DEPTH_MAX, "the token store",
	                        &root, err, err_len);
	if (rc < 0)
		return rc;
	rc = set_from_json(root, out, err, err_len);
	free_json(root);
	return rc;
}

int ts_decode_entry(const void *buf, size_t len, const struct ts_key *key, struct ts_entry **out,
                    char *err, size_t err_len)
{
	json_t *root;
	int rc;

	*out = NULL;
	rc = parse_maybe_sealed(buf, len, key, TS_ENTRY_MAX, ENTRY_DEPTH_MAX, "the token entry",
	                        &root, err, err_len);
	if (rc < 0)
		return rc;
	rc = entry_from_json(root, out, "the token entry", err, err_len);
	free_json(root);
	return rc;
}

/* ---- keys ---- */

static bool is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int ts_key_parse(const void *buf, size_t len, struct ts_key *out, char *err, size_t err_len)
{
	const unsigned char *p = buf;
	unsigned char tmp[TS_KEY_LEN + 3];
	bool is_hex = true;

	memset(out, 0, sizeof(*out));
	if (len == TS_KEY_LEN) {
		memcpy(out->bytes, p, TS_KEY_LEN);
		return 0;
	}
	while (len > 0 && is_space(p[0])) {
		p++;
		len--;
	}
	while (len > 0 && is_space(p[len - 1]))
		len--;
	if (len == 2 * TS_KEY_LEN) {
		for (size_t i = 0; i < len && is_hex; i++)
			is_hex = util_hex_value(p[i]) >= 0;
		if (is_hex) {
			for (size_t i = 0; i < TS_KEY_LEN; i++)
				out->bytes[i] = (unsigned char)(util_hex_value(p[2 * i]) << 4 |
				                                util_hex_value(p[2 * i + 1]));
			return 0;
		}
	}
	if (len >= 43 && len <= 44 &&
	    b64_decode((const char *)p, len, tmp, sizeof(tmp)) == TS_KEY_LEN) {
		memcpy(out->bytes, tmp, TS_KEY_LEN);
		OPENSSL_cleanse(tmp, sizeof(tmp));
		return 0;
	}
	OPENSSL_cleanse(tmp, sizeof(tmp));
	set_err(err, err_len,
	        "store.key_file must hold a 32-byte key: 32 raw bytes, 64 hex characters or "
	        "base64 (it holds %zu bytes)",
	        len);
	return -EINVAL;
}

void ts_key_wipe(struct ts_key *k)
{
	if (k)
		OPENSSL_cleanse(k, sizeof(*k));
}

/* Read a whole regular file of at most max bytes. 0, or -errno with *why set. */
static int read_file(int fd, size_t max, char **out, size_t *out_len, struct stat *st)
{
	char *p;
	size_t len = 0;

	*out = NULL;
	*out_len = 0;
	if (fstat(fd, st) < 0)
		return -errno;
	if (!S_ISREG(st->st_mode))
		return -EINVAL;
	if ((uint64_t)st->st_size > max)
		return -EFBIG;
	p = malloc((size_t)st->st_size + 1);
	if (!p)
		return -ENOMEM;
	while (len < (size_t)st->st_size) {
		ssize_t n = read(fd, p + len, (size_t)st->st_size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = -errno;
			ts_buf_free(p, (size_t)st->st_size + 1);
			return e;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	p[len] = '\0';
	*out = p;
	*out_len = len;
	return 0;
}

static const char *read_error(int rc)
{
	switch (rc) {
	case -EINVAL:
		return "not a regular file";
	case -EFBIG:
		return "file too large";
	default:
		return strerror(-rc);
	}
}

int ts_key_load(const char *path, struct ts_key *out, char *err, size_t err_len)
{
	struct stat st;
	char *buf;
	size_t len;
	int fd, rc;

	memset(out, 0, sizeof(*out));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		rc = -errno;
		set_err(err, err_len, "store.key_file %s: %s", path, strerror(-rc));
		return rc;
	}
	rc = read_file(fd, KEY_FILE_MAX, &buf, &len, &st);
	close(fd);
	if (rc < 0) {
		set_err(err, err_len, "store.key_file %s: %s", path, read_error(rc));
		return rc;
	}
	rc = ts_key_parse(buf, len, out, err, err_len);
	ts_buf_free(buf, len + 1);
	return rc;
}

/* ---- the file store ---- */

char *ts_default_path(const struct config *cfg)
{
	return config_store_path(cfg);
}

static void id_from_stat(const struct stat *st, struct ts_file_id *id)
{
	memset(id, 0, sizeof(*id));
	id->exists = true;
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	id->size = st->st_size;
	id->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

int ts_file_identity(const char *path, struct ts_file_id *out)
{
	struct stat st;

	memset(out, 0, sizeof(*out));
	if (stat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	id_from_stat(&st, out);
	return 0;
}

bool ts_file_id_equal(const struct ts_file_id *a, const struct ts_file_id *b)
{
	if (a->exists != b->exists)
		return false;
	if (!a->exists)
		return true;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns;
}

int ts_file_load(const char *path, const struct ts_key *key, struct ts_set *out,
                 struct ts_file_id *id, char *err, size_t err_len)
{
	struct ts_file_id tmp_id;
	struct stat st;
	char *buf;
	size_t len;
	int fd, rc;

	if (!id)
		id = &tmp_id;
	memset(id, 0, sizeof(*id));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0; /* no store yet: empty */
		rc = -errno;
		set_err(err, err_len, "%s: %s", path, strerror(-rc));
		return rc;
	}
	rc = read_file(fd, TS_FILE_MAX, &buf, &len, &st);
	close(fd);
	if (rc < 0) {
		set_err(err, err_len, "%s: %s", path, read_error(rc));
		return rc;
	}
	rc = ts_decode_file(buf, len, key, out, err, err_len);
	ts_buf_free(buf, len + 1);
	if (rc < 0) {
		/* Prefix the path: decode messages name no file. */
		char tmp[512];
		if (err && err_len > 0) {
			snprintf(tmp, sizeof(tmp), "%s", err);
			set_err(err, err_len, "%s: %s", path, tmp);
		}
		return rc;
	}
	id_from_stat(&st, id);
	return 0;
}

/* Directory and base name of path ("." when it has no '/'). Caller frees *dir. */
static int split_path(const char *path, char **dir, const char **base)
{
	const char *slash = strrchr(path, '/');

	if (!slash) {
		*dir = strdup(".");
		*base = path;
	} else if (slash == path) {
		*dir = strdup("/");
		*base = slash + 1;
	} else {
		*dir = strndup(path, (size_t)(slash - path));
		*base = slash + 1;
	}
	return *dir ? 0 : -ENOMEM;
}

/*
 * Run as root (`ghlproxy token` under sudo), give a file this process made to the owner of its
 * directory: the daemon runs as that user (systemd's StateDirectory=) and must still be able to
 * read the store and open its lock files. Best effort: a failure leaves the file as it is.
 */
static void match_dir_owner(int fd, const char *dir)
{
	struct stat d, f;

	if (geteuid() != 0 || stat(dir, &d) < 0 || fstat(fd, &f) < 0)
		return;
	if (f.st_uid != d.st_uid || f.st_gid != d.st_gid) {
		if (fchown(fd, d.st_uid, d.st_gid) < 0) {
			/* best effort, see above */
		}
	}
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Encode set and replace path with it (see ts_file_update). */
static int write_atomic(const char *path, const struct ts_key *key, const struct ts_set *set,
                        struct ts_file_id *id, char *err, size_t err_len)
{
	char *data = NULL, *dir = NULL, *tmp = NULL;
	const char *base;
	size_t data_len = 0;
	struct stat st;
	int fd = -1, dfd = -1, rc;
	bool renamed = false;
	const char *step = "";

	rc = ts_encode_file(set, key, &data, &data_len, err, err_len);
	if (rc < 0)
		return rc;
	rc = split_path(path, &dir, &base);
	if (rc == 0 && asprintf(&tmp, "%s/.%s.XXXXXX", dir, base) < 0) {
		tmp = NULL;
		rc = -ENOMEM;
	}
	if (rc < 0) {
		set_err(err, err_len, "out of memory");
		goto out;
	}
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		free(tmp);
		tmp = NULL; /* nothing to remove */
		set_err(err, err_len, "%s: cannot create a temporary file in %s: %s", path, dir,
		        strerror(-rc));
		goto out;
	}
	step = "fchmod";
	if (fchmod(fd, 0600) < 0)
		goto fail_errno;
	match_dir_owner(fd, dir);
	step = "write";
	if ((rc = write_all(fd, data, data_len)) < 0)
		goto fail_rc;
	step = "fsync";
	if (fsync(fd) < 0)
		goto fail_errno;
	step = "fstat";
	if (fstat(fd, &st) < 0)
		goto fail_errno;
	step = "close";
	rc = close(fd);
	fd = -1;
	if (rc < 0)
		goto fail_errno;
	step = "rename";
	if (rename(tmp, path) < 0)
		goto fail_errno;
	renamed = true;
	if (id)
		id_from_stat(&st, id);
	/* The rename is durable only once the directory is. */
	step = "fsync of the directory";
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0)
		goto fail_errno;
	rc = 0;
	goto out;
fail_errno:
	rc = -errno;
fail_rc:
	set_err(err, err_len, "%s: %s failed: %s", path, step, strerror(-rc));
out:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	if (tmp && !renamed)
		unlink(tmp);
	free(tmp);
	free(dir);
	ts_buf_free(data, data_len);
	return rc;
}

/* open(O_CREAT) a lock file 0600, in dir, owned like dir (match_dir_owner). */
static int open_lock_file(const char *lock_path)
{
	int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
	char *dir;
	const char *base;

	if (fd < 0)
		return -errno;
	if (split_path(lock_path, &dir, &base) == 0) {
		match_dir_owner(fd, dir);
		free(dir);
	}
	return fd;
}

int ts_file_update(const char *path, const struct ts_key *key, ts_mutate_cb cb, void *arg,
                   struct ts_file_id *id, char *err, size_t err_len)
{
	return ts_file_update_seen(path, key, cb, arg, NULL, id, err, err_len);
}

int ts_file_update_seen(const char *path, const struct ts_key *key, ts_mutate_cb cb, void *arg,
                        const struct ts_file_id *seen, struct ts_file_id *id, char *err,
                        size_t err_len)
{
	struct ts_file_id before;
	struct ts_set set;
	char *lock_path = NULL;
	int lfd, rc;

	if (id)
		memset(id, 0, sizeof(*id));
	if (asprintf(&lock_path, "%s.lock", path) < 0) {
		set_err(err, err_len, "out of memory");
		return -ENOMEM;
	}
	lfd = open_lock_file(lock_path);
	if (lfd < 0) {
		set_err(err, err_len, "%s: %s", lock_path, strerror(-lfd));
		free(lock_path);
		return lfd;
	}
	while ((rc = flock(lfd, LOCK_EX)) < 0 && errno == EINTR)
		;
	if (rc < 0) {
		rc = -errno;
		set_err(err, err_len, "%s: flock: %s", lock_path, strerror(-rc));
		goto out_close;
	}
	ts_set_init(&set);
	rc = ts_file_load(path, key, &set, &before, err, err_len);
	if (rc == 0)
		rc = cb(&set, arg, err, err_len);
	if (rc > 0) {
		if (id)
			*id = before;
		rc = 0;
	} else if (rc == 0) {
		rc = write_atomic(path, key, &set, id, err, err_len);
	}
	ts_set_deinit(&set);
	if (rc == 0 && id && seen && !ts_file_id_equal(&before, seen))
		memset(id, 0, sizeof(*id)); /* changed by another process: read it again */
out_close:
	close(lfd); /* releases the flock */
	free(lock_path);
	return rc;
}

int ts_refresh_lock(const char *path, const char *resource)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	char hex[REFRESH_HASH_HEX + 1];
	char *lock_path;
	int fd, rc;

	if (!resource || !ts_resource_valid(resource, strlen(resource)))
		return -EINVAL;
	if (EVP_Digest(resource, strlen(resource), md, &md_len, EVP_sha256(), NULL) != 1 ||
	    md_len * 2 < REFRESH_HASH_HEX)
		return -EIO;
	for (int i = 0; i < REFRESH_HASH_HEX / 2; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	if (asprintf(&lock_path, "%s.refresh.%s", path, hex) < 0)
		return -ENOMEM;
	fd = open_lock_file(lock_path);
	free(lock_path);
	if (fd < 0)
		return fd;
	while ((rc = flock(fd, LOCK_EX | LOCK_NB)) < 0 && errno == EINTR)
		;
	if (rc < 0) {
		rc = errno == EWOULDBLOCK ? -EWOULDBLOCK : -errno;
		close(fd);
		return rc;
	}
	return fd;
}

void ts_refresh_unlock(int fd)
{
	if (fd >= 0)
		close(fd);
}

/* ---- the Redis layout ---- */

/* 0, or -ENAMETOOLONG when snprintf's result n did not fit len. */
static int fits(int n, size_t len)
{
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int ts_redis_entry_key(const char *prefix, const char *resource, char *out, size_t len)
{
	if (!resource || !ts_resource_valid(resource, strlen(resource)))
		return -EINVAL;
	return fits(snprintf(out, len, "%s:{tok:%s}", prefix, resource), len);
}

int ts_redis_lock_key(const char *prefix, const char *resource, char *out, size_t len)
{
	if (!resource || !ts_resource_valid(resource, strlen(resource)))
		return -EINVAL;
	return fits(snprintf(out, len, "%s:{tok:%s}:lock", prefix, resource), len);
}

int ts_redis_index_key(const char *prefix, char *out, size_t len)
{
	return fits(snprintf(out, len, "%s:tokens", prefix), len);
}

/*
 * Generations are compared and written as decimal strings: Lua 5.1 numbers are doubles and
 * tostring() turns large ones into "1e+14".
 */
const char ts_redis_cas_lua[] =
        "local cur = redis.call('HGET', KEYS[1], 'gen') or '0'\n"
        "if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end\n"
        "if cur ~= ARGV[1] then return 0 end\n"
        "redis.call('HSET', KEYS[1], 'gen', ARGV[4], 'blob', ARGV[2])\n"
        "return 1\n";
