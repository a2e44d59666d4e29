/*
 * test_token_store.c: token_store.c: entries and sets, the file and entry codecs (plain and
 * AES-256-GCM), a table of malformed files each refused with its own message, key file forms,
 * the file store's atomic update under its lock, the refresh lock and file identity.
 *
 * Token values in this file are made up; failure messages name the case, never print a token.
 * Every error message the module produces is also checked to hold no token text ("SECRET").
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "token_store.h"

#define ERR_LEN 512

static char *dir; /* a scratch directory per test */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void setup(void)
{
	char tmpl[] = "/tmp/ghlproxy-ts-XXXXXX";
	cr_assert(mkdtemp(tmpl));
	dir = strdup(tmpl);
	cr_assert(dir);
}

static void teardown(void)
{
	if (dir)
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
	dir = NULL;
}

TestSuite(token_store, .init = setup, .fini = teardown);

static char *path_in_dir(const char *name)
{
	char *p;
	cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

static char *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	cr_assert(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	if (len)
		*len = (size_t)n;
	return buf;
}

static void write_all(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	cr_assert(f);
	cr_assert_eq(fwrite(data, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
}

/* Names in dir that start with prefix (temp files left behind). */
static int count_prefixed(const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	cr_assert(d);
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
			n++;
	}
	closedir(d);
	return n;
}

static struct ts_entry *make_entry(const char *resource, enum ts_user_type type,
                                   const char *refresh, uint64_t gen)
{
	struct ts_entry *e = ts_entry_new();
	cr_assert(e);
	strcpy(e->resource, resource);
	e->user_type = type;
	cr_assert_eq(ts_entry_set_str(&e->refresh_token, refresh), 0);
	cr_assert_eq(ts_entry_set_str(&e->access_token, "SECRET-access-eyJhbGciOi.x.y"), 0);
	cr_assert_eq(ts_entry_set_str(&e->company_id, "Cmp123"), 0);
	cr_assert_eq(ts_entry_set_str(&e->location_id, type == TS_USER_LOCATION ? resource : ""),
	             0);
	cr_assert_eq(ts_entry_set_str(&e->user_id, "User_9"), 0);
	/* '"' and '\' exercise the encoder's escaping. */
	cr_assert_eq(ts_entry_set_str(&e->scope, "contacts.readonly \"q\" back\\slash"), 0);
	e->access_expires_ms = 1751523379849;
	e->state = TS_STATE_NEEDS_REINSTALL;
	e->generation = gen;
	e->updated_ms = 1751436979849;
	return e;
}

static void expect_entry_eq(const struct ts_entry *a, const struct ts_entry *b)
{
	cr_expect_str_eq(a->resource, b->resource);
	cr_expect_eq(a->user_type, b->user_type);
	cr_expect(strcmp(a->access_token, b->access_token) == 0, "access_token differs");
	cr_expect(strcmp(a->refresh_token, b->refresh_token) == 0, "refresh_token differs");
	cr_expect_eq(a->access_expires_ms, b->access_expires_ms);
	cr_expect_str_eq(a->company_id, b->company_id);
	cr_expect_str_eq(a->location_id, b->location_id);
	cr_expect_str_eq(a->user_id, b->user_id);
	cr_expect_str_eq(a->scope, b->scope);
	cr_expect_eq(a->state, b->state);
	cr_expect_eq(a->generation, b->generation);
	cr_expect_eq(a->updated_ms, b->updated_ms);
}

static void fill_set(struct ts_set *s)
{
	ts_set_init(s);
	/* Put out of order: the set keeps them sorted. */
	cr_assert_eq(ts_set_put(s, make_entry("loc_B", TS_USER_LOCATION, "SECRET-rt-B", 7)), 0);
	cr_assert_eq(ts_set_put(s, make_entry("Cmp123", TS_USER_COMPANY, "SECRET-rt-C", 1)), 0);
	cr_assert_eq(ts_set_put(s, make_entry("loc-A", TS_USER_LOCATION, "SECRET-rt-A", 42)), 0);
}

static void expect_sets_eq(const struct ts_set *a, const struct ts_set *b)
{
	cr_assert_eq(a->n, b->n);
	for (size_t i = 0; i < a->n; i++)
		expect_entry_eq(a->v[i], b->v[i]);
}

static const struct ts_key key1 = { { 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
	                              12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
	                              23, 24, 25, 26, 27, 28, 29, 30, 31, 32 } };
static const struct ts_key key2 = { { 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
	                              12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
	                              23, 24, 25, 26, 27, 28, 29, 30, 31, 33 } };

/* ---- entries and sets ---- */

Test(token_store, set_sorted_find_replace_remove)
{
	struct ts_set s;
	fill_set(&s);
	cr_assert_eq(s.n, 3);
	cr_expect_str_eq(s.v[0]->resource, "Cmp123");
	cr_expect_str_eq(s.v[1]->resource, "loc-A");
	cr_expect_str_eq(s.v[2]->resource, "loc_B");
	cr_expect_eq(ts_set_find(&s, "loc-A")->generation, 42);
	cr_expect_null(ts_set_find(&s, "nope"));

	/* Same resource: replaced, not added. */
	cr_assert_eq(ts_set_put(&s, make_entry("loc-A", TS_USER_LOCATION, "SECRET-new", 43)), 0);
	cr_expect_eq(s.n, 3);
	cr_expect_eq(ts_set_find(&s, "loc-A")->generation, 43);

	struct ts_entry *t = ts_set_take(&s, "Cmp123");
	cr_assert(t);
	cr_expect_eq(s.n, 2);
	cr_expect_null(ts_set_find(&s, "Cmp123"));
	ts_entry_free(t);
	cr_expect_eq(ts_set_remove(&s, "loc_B"), 0);
	cr_expect_eq(ts_set_remove(&s, "loc_B"), -ENOENT);
	cr_expect_eq(s.n, 1);
	ts_set_deinit(&s);
	cr_expect_eq(s.n, 0);
}

Test(token_store, entry_dup_is_deep)
{
	struct ts_entry *e = make_entry("loc1", TS_USER_LOCATION, "SECRET-rt", 3);
	struct ts_entry *d = ts_entry_dup(e);
	cr_assert(d);
	expect_entry_eq(e, d);
	cr_expect_neq(e->refresh_token, d->refresh_token);
	cr_assert_eq(ts_entry_set_str(&e->refresh_token, "other"), 0);
	cr_expect(strcmp(d->refresh_token, "SECRET-rt") == 0);
	ts_entry_free(e);
	ts_entry_free(d);
	ts_entry_free(NULL);
}

Test(token_store, names_round_trip)
{
	enum ts_user_type t;
	enum ts_state st;
	cr_expect_eq(ts_user_type_parse("Location", &t), 0);
	cr_expect_eq(t, TS_USER_LOCATION);
	cr_expect_eq(ts_user_type_parse("Company", &t), 0);
	cr_expect_eq(t, TS_USER_COMPANY);
	cr_expect_eq(ts_user_type_parse("location", &t), -EINVAL);
	cr_expect_eq(ts_state_parse("needs_reinstall", &st), 0);
	cr_expect_eq(st, TS_STATE_NEEDS_REINSTALL);
	cr_expect_eq(ts_state_parse("inactive", &st), 0);
	cr_expect_eq(st, TS_STATE_INACTIVE);
	cr_expect_eq(ts_state_parse("gone", &st), -EINVAL);
	cr_expect_str_eq(ts_user_type_name(TS_USER_COMPANY), "Company");
	cr_expect_str_eq(ts_state_name(TS_STATE_OK), "ok");
}

Test(token_store, resource_ids)
{
	char long_id[TS_RESOURCE_MAX + 2];
	memset(long_id, 'a', sizeof(long_id));
	cr_expect(ts_resource_valid("ve9EPM428h8vShlRW1KT", 20));
	cr_expect(ts_resource_valid("a_b-C9", 6));
	cr_expect(ts_resource_valid(long_id, TS_RESOURCE_MAX));
	cr_expect_not(ts_resource_valid(long_id, TS_RESOURCE_MAX + 1));
	cr_expect_not(ts_resource_valid("", 0));
	cr_expect_not(ts_resource_valid("a b", 3));
	cr_expect_not(ts_resource_valid("a/b", 3));
	cr_expect_not(ts_resource_valid("a.b", 3));
	cr_expect_not(ts_resource_valid("a\0b", 3));
}

Test(token_store, validate_refuses_what_cannot_be_read_back)
{
	char err[ERR_LEN];
	struct ts_entry *e = make_entry("loc1", TS_USER_LOCATION, "SECRET-rt", 3);
	cr_expect_eq(ts_entry_validate(e, err, sizeof(err)), 0);

	cr_assert_eq(ts_entry_set_str(&e->refresh_token, "SECRET\nline"), 0);
	cr_expect_eq(ts_entry_validate(e, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "refresh_token"), "%s", err);
	cr_expect_null(strstr(err, "SECRET"), "%s", err);
	cr_assert_eq(ts_entry_set_str(&e->refresh_token, "ok"), 0);

	e->access_expires_ms = -1;
	cr_expect_eq(ts_entry_validate(e, err, sizeof(err)), -EINVAL);
	e->access_expires_ms = 0;

	strcpy(e->resource, "bad id");
	cr_expect_eq(ts_entry_validate(e, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "resource"), "%s", err);

	/* The encoder validates too. */
	struct ts_set s;
	char *out = NULL;
	size_t out_len = 0;
	ts_set_init(&s);
	cr_assert_eq(ts_set_put(&s, e), 0);
	cr_expect_eq(ts_encode_file(&s, NULL, &out, &out_len, err, sizeof(err)), -EINVAL);
	cr_expect_null(out);
	ts_set_deinit(&s);
}

/* ---- codecs ---- */

Test(token_store, file_round_trip_plain)
{
	struct ts_set s, d;
	char err[ERR_LEN] = "";
	char *out;
	size_t len;

	fill_set(&s);
	cr_assert_eq(ts_encode_file(&s, NULL, &out, &len, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(strlen(out), len);
	cr_expect(strncmp(out, "{\"version\":1,\"tokens\":[", 23) == 0);
	ts_set_init(&d);
	cr_assert_eq(ts_decode_file(out, len, NULL, &d, err, sizeof(err)), 0, "%s", err);
	expect_sets_eq(&s, &d);

	/* Deterministic: the same set encodes to the same text. */
	char *again;
	size_t again_len;
	cr_assert_eq(ts_encode_file(&d, NULL, &again, &again_len, err, sizeof(err)), 0);
	cr_expect(again_len == len && memcmp(again, out, len) == 0);
	ts_buf_free(again, again_len);
	ts_buf_free(out, len);
	ts_set_deinit(&s);
	ts_set_deinit(&d);
}

Test(token_store, file_round_trip_empty)
{
	struct ts_set s, d;
	char err[ERR_LEN];
	char *out;
	size_t len;

	ts_set_init(&s);
	ts_set_init(&d);
	cr_assert_eq(ts_encode_file(&s, &key1, &out, &len, err, sizeof(err)), 0);
	cr_assert_eq(ts_decode_file(out, len, &key1, &d, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(d.n, 0);
	ts_buf_free(out, len);
}

Test(token_store, file_round_trip_encrypted)
{
	struct ts_set s, d;
	char err[ERR_LEN] = "";
	char *out, *out2;
	size_t len, len2;

	fill_set(&s);
	cr_assert_eq(ts_encode_file(&s, &key1, &out, &len, err, sizeof(err)), 0, "%s", err);
	cr_expect(strstr(out, "\"cipher\":\"aes-256-gcm\""));
	cr_expect_null(strstr(out, "SECRET"), "plain text in the encrypted file");
	cr_expect_null(strstr(out, "loc-A"), "resource ids are encrypted too");
	ts_set_init(&d);
	cr_assert_eq(ts_decode_file(out, len, &key1, &d, err, sizeof(err)), 0, "%s", err);
	expect_sets_eq(&s, &d);

	/* A fresh nonce per write: the same set never encrypts to the same bytes. */
	cr_assert_eq(ts_encode_file(&s, &key1, &out2, &len2, err, sizeof(err)), 0);
	cr_expect(len != len2 || memcmp(out, out2, len) != 0);
	char *n1 = strstr(out, "\"nonce\":\""), *n2 = strstr(out2, "\"nonce\":\"");
	cr_assert(n1 && n2);
	cr_expect(strncmp(n1, n2, 9 + 16) != 0, "nonce reused");
	ts_buf_free(out, len);
	ts_buf_free(out2, len2);
	ts_set_deinit(&s);
	ts_set_deinit(&d);
}

Test(token_store, wrong_key_refused_clearly)
{
	struct ts_set s, d;
	char err[ERR_LEN] = "";
	char *out;
	size_t len;

	fill_set(&s);
	cr_assert_eq(ts_encode_file(&s, &key1, &out, &len, err, sizeof(err)), 0);
	ts_set_init(&d);
	cr_expect_eq(ts_decode_file(out, len, &key2, &d, err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err, "cannot decrypt the token store: wrong store.key_file?");
	cr_expect_eq(d.n, 0);
	ts_buf_free(out, len);
	ts_set_deinit(&s);
}

/* Replace the first character of the base64 value of member name by another valid one. */
static void tamper(char *text, const char *name)
{
	char needle[32];
	snprintf(needle, sizeof(needle), "\"%s\":\"", name);
	char *p = strstr(text, needle);
	cr_assert(p);
	p += strlen(needle) + 4; /* inside the value, not a padding position */
	*p = *p == 'A' ? 'B' : 'A';
}

Test(token_store, tampered_file_refused)
{
	static const char *const members[] = { "data", "tag", "nonce" };
	struct ts_set s;
	char err[ERR_LEN];

	fill_set(&s);
	for (size_t i = 0; i < 3; i++) {
		struct ts_set d;
		char *out;
		size_t len;
		cr_assert_eq(ts_encode_file(&s, &key1, &out, &len, err, sizeof(err)), 0);
		tamper(out, members[i]);
		ts_set_init(&d);
		cr_expect_eq(ts_decode_file(out, len, &key1, &d, err, sizeof(err)), -EINVAL, "%s",
		             members[i]);
		cr_expect(strstr(err, "cannot decrypt"), "%s: %s", members[i], err);
		cr_expect_eq(d.n, 0);
		ts_buf_free(out, len);
	}
	ts_set_deinit(&s);
}

Test(token_store, plain_and_encrypted_mismatch)
{
	struct ts_set s, d;
	char err[ERR_LEN];
	char *plain, *sealed;
	size_t plain_len, sealed_len;

	fill_set(&s);
	cr_assert_eq(ts_encode_file(&s, NULL, &plain, &plain_len, err, sizeof(err)), 0);
	cr_assert_eq(ts_encode_file(&s, &key1, &sealed, &sealed_len, err, sizeof(err)), 0);
	ts_set_init(&d);
	cr_expect_eq(ts_decode_file(plain, plain_len, &key1, &d, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "not encrypted, but store.key_file is set"), "%s", err);
	cr_expect_eq(ts_decode_file(sealed, sealed_len, NULL, &d, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "is encrypted: set store.key_file"), "%s", err);
	cr_expect_eq(d.n, 0);
	ts_buf_free(plain, plain_len);
	ts_buf_free(sealed, sealed_len);
	ts_set_deinit(&s);
}

Test(token_store, entry_round_trip_plain_and_encrypted)
{
	struct ts_entry *e = make_entry("loc1", TS_USER_LOCATION, "SECRET-rt", 9);
	const struct ts_key *keys[] = { NULL, &key1 };
	char err[ERR_LEN] = "";

	for (size_t i = 0; i < 2; i++) {
		struct ts_entry *d;
		char *out;
		size_t len;
		cr_assert_eq(ts_encode_entry(e, keys[i], &out, &len, err, sizeof(err)), 0, "%s",
		             err);
		cr_expect_eq(strstr(out, "SECRET") == NULL, keys[i] != NULL);
		cr_assert_eq(ts_decode_entry(out, len, keys[i], &d, err, sizeof(err)), 0, "%s",
		             err);
		expect_entry_eq(e, d);
		ts_entry_free(d);
		if (keys[i]) {
			cr_expect_eq(ts_decode_entry(out, len, &key2, &d, err, sizeof(err)),
			             -EINVAL);
			cr_expect_str_eq(err,
			                 "cannot decrypt the token store: wrong store.key_file?");
			cr_expect_null(d);
			cr_expect_eq(ts_decode_entry(out, len, NULL, &d, err, sizeof(err)),
			             -EINVAL);
			cr_expect(strstr(err, "is encrypted"), "%s", err);
		} else {
			cr_expect_eq(ts_decode_entry(out, len, &key1, &d, err, sizeof(err)),
			             -EINVAL);
			cr_expect(strstr(err, "not encrypted"), "%s", err);
		}
		ts_buf_free(out, len);
	}
	ts_entry_free(e);
}

Test(token_store, entry_decode_refuses_a_file)
{
	struct ts_entry *d;
	char err[ERR_LEN];
	const char *file = "{\"version\":1,\"tokens\":[]}";
	cr_expect_eq(ts_decode_entry(file, strlen(file), NULL, &d, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "\"resource\""), "%s", err);
	cr_expect_null(d);
}

/* The same entry without one member and with `member` instead; built at run time. */
static char *entry_replacing(const char *name, const char *value_json)
{
	static const char *const names[] = {
		"resource",      "user_type",  "access_token", "access_expires_ms",
		"refresh_token", "company_id", "location_id",  "user_id",
		"scope",         "state",      "generation",   "updated_ms"
	};
	static const char *const values[] = { "\"loc1\"",
		                              "\"Location\"",
		                              "\"SECRET-a\"",
		                              "5",
		                              "\"SECRET-r\"",
		                              "\"\"",
		                              "\"loc1\"",
		                              "\"\"",
		                              "\"\"",
		                              "\"ok\"",
		                              "1",
		                              "2" };
	char *out = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&out, &n);
	bool first = true;

	cr_assert(f);
	fputs("{\"version\":1,\"tokens\":[{", f);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *v = strcmp(names[i], name) == 0 ? value_json : values[i];
		if (!v)
			continue; /* left out */
		fprintf(f, "%s\"%s\":%s", first ? "" : ",", names[i], v);
		first = false;
	}
	fputs("}]}", f);
	fclose(f);
	return out;
}

struct bad_case {
	const char *what;
	const char *text;  /* the whole file, or NULL: built from field/value */
	const char *field; /* replace this member of a valid entry ... */
	const char *value; /* ... by this JSON (NULL: remove it) */
	const char *want;  /* substring of the error */
	bool with_key;
};

static const struct bad_case bad_cases[] = {
	{ "empty", "", NULL, NULL, "is empty", false },
	{ "array root", "[]", NULL, NULL, "not a JSON object", false },
	{ "string root", "\"SECRET\"", NULL, NULL, "not valid JSON", false },
	{ "truncated", "{\"version\":1,\"tokens\":[{\"refresh_token\":\"SECRET-trunc", NULL, NULL,
	  "is truncated", false },
	{ "garbage", "SECRET garbage", NULL, NULL, "not valid JSON", false },
	{ "trailing data", "{\"version\":1,\"tokens\":[]} SECRET", NULL, NULL,
	  "has data after its JSON value", false },
	{ "duplicate key", "{\"version\":1,\"version\":1,\"tokens\":[]}", NULL, NULL,
	  "duplicate key", false },
	{ "deep nesting",
	  "{\"version\":1,\"tokens\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]"
	  "]]]]]]]]]]]]]]]}",
	  NULL, NULL, "nested too deeply", false },
	{ "no version", "{\"tokens\":[]}", NULL, NULL, "no integer \"version\"", false },
	{ "version 2", "{\"version\":2,\"tokens\":[]}", NULL, NULL, "version 2, not 1", false },
	{ "version string", "{\"version\":\"1\",\"tokens\":[]}", NULL, NULL,
	  "no integer \"version\"", false },
	{ "no tokens", "{\"version\":1}", NULL, NULL, "no \"tokens\" array", false },
	{ "tokens object", "{\"version\":1,\"tokens\":{}}", NULL, NULL, "no \"tokens\" array",
	  false },
	{ "entry not object", "{\"version\":1,\"tokens\":[1]}", NULL, NULL,
	  "entry 1 is not a JSON object", false },
	{ "invalid utf-8", "{\"version\":1,\"tokens\":[],\"x\":\"\xff\xfe\"}", NULL, NULL,
	  "not valid UTF-8", false },
	{ "NUL escape", "{\"version\":1,\"tokens\":[],\"x\":\"SECRET\\u0000\"}", NULL, NULL, "NUL",
	  false },
	{ "huge number", "{\"version\":1,\"tokens\":[],\"x\":99999999999999999999999}", NULL, NULL,
	  "number out of range", false },
	{ "no resource", NULL, "resource", NULL, "entry 1: \"resource\" is missing", false },
	{ "resource with space", NULL, "resource", "\"bad id\"", "\"resource\"", false },
	{ "resource too long", NULL, "resource",
	  "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", "\"resource\"",
	  false },
	{ "resource number", NULL, "resource", "7", "\"resource\"", false },
	{ "user type", NULL, "user_type", "\"Agency\"", "entry loc1: \"user_type\"", false },
	{ "no user type", NULL, "user_type", NULL, "\"user_type\"", false },
	{ "state", NULL, "state", "\"weird\"", "entry loc1: \"state\"", false },
	{ "access token number", NULL, "access_token", "5",
	  "\"access_token\" is missing or not a string", false },
	{ "no refresh token", NULL, "refresh_token", NULL,
	  "\"refresh_token\" is missing or not a string", false },
	{ "control char", NULL, "refresh_token", "\"SECRET\\u0001\"",
	  "\"refresh_token\" is longer than 16384 bytes or not printable ASCII", false },
	{ "non-ascii", NULL, "scope", "\"SECRET\xc3\xa9\"", "\"scope\"", false },
	{ "id too long", NULL, "user_id",
	  "\"SECRETaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
	  "\"user_id\" is longer than 128 bytes", false },
	{ "negative generation", NULL, "generation", "-1",
	  "\"generation\" is missing or not a non-negative integer", false },
	{ "real generation", NULL, "generation", "1.5", "\"generation\"", false },
	{ "string expiry", NULL, "access_expires_ms", "\"5\"", "\"access_expires_ms\"", false },
	{ "no updated", NULL, "updated_ms", NULL, "\"updated_ms\"", false },
	{ "bad cipher",
	  "{\"version\":1,\"cipher\":\"aes-128-gcm\",\"nonce\":\"AAAAAAAAAAAAAAAA\","
	  "\"tag\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"data\":\"AAAA\"}",
	  NULL, NULL, "cipher is not aes-256-gcm", true },
	{ "short nonce",
	  "{\"version\":1,\"cipher\":\"aes-256-gcm\",\"nonce\":\"AAAA\","
	  "\"tag\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"data\":\"AAAA\"}",
	  NULL, NULL, "\"nonce\" is not valid base64 of the right length", true },
	{ "bad tag",
	  "{\"version\":1,\"cipher\":\"aes-256-gcm\",\"nonce\":\"AAAAAAAAAAAAAAAA\","
	  "\"tag\":\"!!!!\",\"data\":\"AAAA\"}",
	  NULL, NULL, "\"tag\" is not valid base64", true },
	{ "no data",
	  "{\"version\":1,\"cipher\":\"aes-256-gcm\",\"nonce\":\"AAAAAAAAAAAAAAAA\","
	  "\"tag\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}",
	  NULL, NULL, "no string \"data\"", true },
	{ "envelope version",
	  "{\"version\":3,\"cipher\":\"aes-256-gcm\",\"nonce\":\"AAAAAAAAAAAAAAAA\","
	  "\"tag\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"data\":\"AAAA\"}",
	  NULL, NULL, "version 3", true },
	{ "forged data",
	  "{\"version\":1,\"cipher\":\"aes-256-gcm\",\"nonce\":\"AAAAAAAAAAAAAAAA\","
	  "\"tag\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"data\":\"U0VDUkVU\"}",
	  NULL, NULL, "cannot decrypt the token store: wrong store.key_file?", true },
};

Test(token_store, malformed_files_refused_with_reason)
{
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *c = &bad_cases[i];
		char *text = c->text ? strdup(c->text) : entry_replacing(c->field, c->value);
		struct ts_set d;
		char err[ERR_LEN] = "";

		cr_assert(text);
		ts_set_init(&d);
		int rc = ts_decode_file(text, strlen(text), c->with_key ? &key1 : NULL, &d, err,
		                        sizeof(err));
		cr_expect_eq(rc, -EINVAL, "%s: rc %d", c->what, rc);
		cr_expect(strstr(err, c->want), "%s: got \"%s\", want \"%s\"", c->what, err,
		          c->want);
		cr_expect_null(strstr(err, "SECRET"), "%s: error quotes the input", c->what);
		cr_expect_eq(d.n, 0, "%s", c->what);
		ts_set_deinit(&d);
		free(text);
	}
}

Test(token_store, duplicate_resources_refused)
{
	char *one = entry_replacing("none", NULL);
	struct ts_set d;
	char err[ERR_LEN] = "";
	char *two;

	/* [entry] -> [entry,entry] */
	char *close = strstr(one, "}]}");
	cr_assert(close);
	const char *start = strchr(strchr(one, '[') + 1, '{');
	*close = '\0';
	cr_assert(asprintf(&two, "%s},%s}]}", one, start) > 0);
	ts_set_init(&d);
	cr_expect_eq(ts_decode_file(two, strlen(two), NULL, &d, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "two entries for resource loc1"), "%s", err);
	cr_expect_eq(d.n, 0);
	free(one);
	free(two);
}

Test(token_store, token_at_the_limit_accepted)
{
	size_t n = TS_TOKEN_MAX;
	char *big = malloc(n + 3), *text;
	struct ts_set d;
	char err[ERR_LEN] = "";

	cr_assert(big);
	big[0] = '"';
	memset(big + 1, 'x', n);
	strcpy(big + 1 + n, "\"");
	text = entry_replacing("access_token", big);
	ts_set_init(&d);
	cr_expect_eq(ts_decode_file(text, strlen(text), NULL, &d, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(d.n, 1);
	ts_set_deinit(&d);
	free(text);

	/* One more byte: refused. */
	big = realloc(big, n + 4);
	cr_assert(big);
	memset(big + 1, 'x', n + 1);
	strcpy(big + 2 + n, "\"");
	text = entry_replacing("access_token", big);
	cr_expect_eq(ts_decode_file(text, strlen(text), NULL, &d, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "\"access_token\" is longer than"), "%s", err);
	free(text);
	free(big);
}

/*
 * Mutations of valid files, plain and sealed: every one decodes or fails cleanly (run under
 * ASan/valgrind this is a small fuzz pass). A fixed seed keeps it reproducible.
 */
Test(token_store, mutations_never_crash)
{
	struct ts_set s;
	char err[ERR_LEN];
	unsigned seed = 12345;

	fill_set(&s);
	for (int k = 0; k < 2; k++) {
		char *out;
		size_t len;
		const struct ts_key *key = k ? &key1 : NULL;
		cr_assert_eq(ts_encode_file(&s, key, &out, &len, err, sizeof(err)), 0);
		for (int i = 0; i < 3000; i++) {
			char *m = malloc(len + 1);
			size_t mlen = len;
			cr_assert(m);
			memcpy(m, out, len);
			int flips = 1 + rand_r(&seed) % 4;
			for (int f = 0; f < flips; f++)
				m[(size_t)rand_r(&seed) % len] = (char)rand_r(&seed);
			if (rand_r(&seed) % 4 == 0)
				mlen = (size_t)rand_r(&seed) % len; /* truncated */
			struct ts_set d;
			ts_set_init(&d);
			if (ts_decode_file(m, mlen, key, &d, err, sizeof(err)) < 0)
				cr_assert_eq(d.n, 0);
			ts_set_deinit(&d);
			struct ts_entry *e = NULL;
			if (ts_decode_entry(m, mlen, key, &e, err, sizeof(err)) == 0)
				cr_assert(e);
			ts_entry_free(e);
			free(m);
		}
		ts_buf_free(out, len);
	}
	ts_set_deinit(&s);
}

/* ---- keys ---- */

Test(token_store, key_forms)
{
	struct ts_key k;
	char err[ERR_LEN];
	unsigned char raw[32];
	for (int i = 0; i < 32; i++)
		raw[i] = (unsigned char)(i + 1);
	/* Raw bytes are taken as they are, even a trailing '\n' or leading space. */
	raw[0] = ' ';
	raw[31] = '\n';

	cr_expect_eq(ts_key_parse(raw, 32, &k, err, sizeof(err)), 0);
	cr_expect(memcmp(k.bytes, raw, 32) == 0);

	const char *hex = "  0102030405060708090a0b0c0d0e0f10111213141516171819"
	                  "1A1B1C1D1E1F20\n";
	cr_expect_eq(ts_key_parse(hex, strlen(hex), &k, err, sizeof(err)), 0, "%s", err);
	cr_expect(memcmp(k.bytes, key1.bytes, 32) == 0);

	/* base64 of 1..32, with and without padding. */
	const char *b64 = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n";
	cr_expect_eq(ts_key_parse(b64, strlen(b64), &k, err, sizeof(err)), 0, "%s", err);
	cr_expect(memcmp(k.bytes, key1.bytes, 32) == 0);
	const char *b64np = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";
	cr_expect_eq(ts_key_parse(b64np, strlen(b64np), &k, err, sizeof(err)), 0, "%s", err);
	cr_expect(memcmp(k.bytes, key1.bytes, 32) == 0);

	static const struct {
		const char *what, *text;
		size_t len;
	} bad[] = {
		{ "31 raw bytes", "0123456789012345678901234567890", 31 },
		{ "33 raw bytes", "012345678901234567890123456789012", 33 },
		{ "63 hex", "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2", 63 },
		{ "65 hex", "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f201",
		  65 },
		{ "64 non-hex", "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fzz",
		  64 },
		{ "base64 of 31", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw==", 44 },
		{ "base64 bad char", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eH*A=", 44 },
		{ "base64 not canonical", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyB=", 44 },
		{ "empty", "", 0 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(ts_key_parse(bad[i].text, bad[i].len, &k, err, sizeof(err)), -EINVAL,
		             "%s", bad[i].what);
		cr_expect(strstr(err, "must hold a 32-byte key"), "%s: %s", bad[i].what, err);
	}
}

Test(token_store, key_load)
{
	struct ts_key k;
	char err[ERR_LEN];
	char *p = path_in_dir("key");

	write_all(p, "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\n", 65);
	cr_expect_eq(ts_key_load(p, &k, err, sizeof(err)), 0, "%s", err);
	cr_expect(memcmp(k.bytes, key1.bytes, 32) == 0);
	ts_key_wipe(&k);
	cr_expect_eq(k.bytes[31], 0);

	write_all(p, "short", 5);
	cr_expect_eq(ts_key_load(p, &k, err, sizeof(err)), -EINVAL);
	cr_expect_null(strstr(err, "short"), "the key file's content is echoed");

	char *missing = path_in_dir("nokey");
	cr_expect_eq(ts_key_load(missing, &k, err, sizeof(err)), -ENOENT);
	cr_expect(strstr(err, "store.key_file"), "%s", err);
	free(missing);
	free(p);
}

/* ---- the file store ---- */

struct put_arg {
	const char *resource;
	const char *refresh;
	int calls;
};

static int put_cb(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	struct put_arg *pa = arg;
	struct ts_entry *old = ts_set_find(set, pa->resource);
	pa->calls++;
	cr_assert_eq(ts_set_put(set, make_entry(pa->resource, TS_USER_LOCATION, pa->refresh,
	                                        old ? old->generation + 1 : 1)),
	             0);
	return 0;
}

static int abort_cb(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	/* Change the set, then abort: nothing of it may reach the file. */
	ts_set_deinit(set);
	snprintf(err, err_len, "changed my mind");
	return -ECANCELED;
}

static int unchanged_cb(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	return 1;
}

static int invalid_cb(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	struct ts_entry *e = make_entry("loc1", TS_USER_LOCATION, "SECRET\x01", 9);
	cr_assert_eq(ts_set_put(set, e), 0);
	return 0;
}

Test(token_store, load_missing_is_empty)
{
	struct ts_set s;
	struct ts_file_id id = { .exists = true };
	char err[ERR_LEN];
	char *p = path_in_dir("tokens.json");

	ts_set_init(&s);
	cr_expect_eq(ts_file_load(p, NULL, &s, &id, err, sizeof(err)), 0);
	cr_expect_eq(s.n, 0);
	cr_expect_not(id.exists);
	cr_expect_eq(ts_file_identity(p, &id), 0);
	cr_expect_not(id.exists);

	/* A directory, or garbage: an error naming the file. */
	cr_expect_lt(ts_file_load(dir, NULL, &s, &id, err, sizeof(err)), 0);
	write_all(p, "SECRET{", 7);
	cr_expect_eq(ts_file_load(p, NULL, &s, &id, err, sizeof(err)), -EINVAL);
	cr_expect(strncmp(err, p, strlen(p)) == 0, "%s", err);
	cr_expect(strstr(err, "not valid JSON"), "%s", err);
	cr_expect_null(strstr(err, "SECRET"), "%s", err);
	free(p);
}

Test(token_store, update_writes_atomically)
{
	char *p = path_in_dir("tokens.json");
	char err[ERR_LEN] = "";
	struct put_arg pa = { "loc1", "SECRET-rt-1", 0 };
	struct ts_file_id id, now;
	struct stat st;
	const struct ts_key *keys[] = { NULL, &key1 };

	for (size_t k = 0; k < 2; k++) {
		unlink(p);
		pa.calls = 0;
		cr_assert_eq(ts_file_update(p, keys[k], put_cb, &pa, &id, err, sizeof(err)), 0,
		             "%s", err);
		cr_expect_eq(pa.calls, 1);
		cr_assert_eq(stat(p, &st), 0);
		cr_expect_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
		cr_expect(id.exists);
		cr_assert_eq(ts_file_identity(p, &now), 0);
		cr_expect(ts_file_id_equal(&id, &now), "the identity returned is the file's");
		cr_expect_eq(count_prefixed(".tokens.json."), 0, "a temp file was left behind");

		/* Content: decodes to what the callback put, under the same key. */
		struct ts_set s;
		ts_set_init(&s);
		cr_assert_eq(ts_file_load(p, keys[k], &s, NULL, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(s.n, 1);
		cr_expect(strcmp(s.v[0]->refresh_token, "SECRET-rt-1") == 0);
		cr_expect_eq(s.v[0]->generation, 1);
		ts_set_deinit(&s);

		/* Second update sees the first's content (generation bumps). */
		pa.refresh = "SECRET-rt-2";
		cr_assert_eq(ts_file_update(p, keys[k], put_cb, &pa, &id, err, sizeof(err)), 0);
		cr_assert_eq(ts_file_load(p, keys[k], &s, NULL, err, sizeof(err)), 0);
		cr_expect_eq(s.v[0]->generation, 2);
		cr_expect(strcmp(s.v[0]->refresh_token, "SECRET-rt-2") == 0);
		ts_set_deinit(&s);
		pa.refresh = "SECRET-rt-1";
	}
	/* The lock file exists, 0600, and holds nothing. */
	char *lock = path_in_dir("tokens.json.lock");
	cr_assert_eq(stat(lock, &st), 0);
	cr_expect_eq(st.st_mode & 0777, 0600);
	cr_expect_eq(st.st_size, 0);
	free(lock);
	free(p);
}

/* The file's bytes and identity, to show it was not touched. */
struct snapshot {
	char *content;
	size_t len;
	struct ts_file_id id;
};

static void snap(const char *p, struct snapshot *s)
{
	s->content = read_all(p, &s->len);
	cr_assert(s->content);
	cr_assert_eq(ts_file_identity(p, &s->id), 0);
}

static void expect_untouched(const char *p, struct snapshot *before, const char *what)
{
	struct snapshot after;
	snap(p, &after);
	cr_expect(after.len == before->len &&
	                  memcmp(after.content, before->content, after.len) == 0,
	          "%s: the file changed", what);
	cr_expect(ts_file_id_equal(&after.id, &before->id), "%s: the file was replaced", what);
	cr_expect_eq(count_prefixed(".tokens.json."), 0, "%s: a temp file was left behind", what);
	free(after.content);
}

Test(token_store, aborted_update_leaves_the_file)
{
	char *p = path_in_dir("tokens.json");
	char err[ERR_LEN] = "";
	struct put_arg pa = { "loc1", "SECRET-rt-1", 0 };
	struct snapshot before;
	struct ts_file_id id;

	cr_assert_eq(ts_file_update(p, NULL, put_cb, &pa, NULL, err, sizeof(err)), 0);
	snap(p, &before);

	cr_expect_eq(ts_file_update(p, NULL, abort_cb, NULL, NULL, err, sizeof(err)), -ECANCELED);
	cr_expect_str_eq(err, "changed my mind");
	expect_untouched(p, &before, "aborted");

	cr_expect_eq(ts_file_update(p, NULL, unchanged_cb, NULL, &id, err, sizeof(err)), 0);
	cr_expect(ts_file_id_equal(&id, &before.id));
	expect_untouched(p, &before, "unchanged");

	/* An entry that cannot be written: refused before any temp file exists. */
	cr_expect_eq(ts_file_update(p, NULL, invalid_cb, NULL, NULL, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "refresh_token"), "%s", err);
	expect_untouched(p, &before, "invalid entry");

	/* The wrong key: the load fails, the callback never runs, the file stays. */
	pa.calls = 0;
	cr_expect_eq(ts_file_update(p, &key1, put_cb, &pa, NULL, err, sizeof(err)), -EINVAL);
	cr_expect_eq(pa.calls, 0);
	expect_untouched(p, &before, "wrong key");
	free(before.content);
	free(p);
}

/* A write that fails half-way (the file size limit): the temp file goes, the old file stays. */
Test(token_store, failed_write_removes_the_temp_file)
{
	char *p = path_in_dir("tokens.json");
	char err[ERR_LEN] = "";
	struct put_arg pa = { "loc1", "SECRET-rt-1", 0 };
	struct snapshot before;
	struct rlimit rl;

	cr_assert_eq(ts_file_update(p, NULL, put_cb, &pa, NULL, err, sizeof(err)), 0);
	snap(p, &before);

	/* The next content is longer than the limit (write fails with EFBIG, no signal). */
	signal(SIGXFSZ, SIG_IGN);
	cr_assert_eq(getrlimit(RLIMIT_FSIZE, &rl), 0);
	struct rlimit small = { .rlim_cur = before.len, .rlim_max = rl.rlim_max };
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
	pa.resource = "loc2";
	int rc = ts_file_update(p, NULL, put_cb, &pa, NULL, err, sizeof(err));
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	cr_expect_eq(rc, -EFBIG, "rc %d: %s", rc, err);
	cr_expect(strstr(err, "write failed"), "%s", err);
	expect_untouched(p, &before, "failed write");
	free(before.content);
	free(p);
}

/* A caller that keeps the file in memory learns when another writer changed it before its own
 * write: the identity afterwards is withheld (zero), so that it reads the file again. */
Test(token_store, update_seen_withholds_the_identity_after_a_change_elsewhere)
{
	char *p = path_in_dir("tokens.json");
	char err[ERR_LEN];
	struct put_arg mine = { "loc1", "SECRET-rt-a", 0 }, theirs = { "loc2", "SECRET-rt-b", 0 };
	struct ts_file_id seen, after, now;

	cr_assert_eq(ts_file_update(p, NULL, put_cb, &mine, &seen, err, sizeof(err)), 0, "%s", err);
	/* Unchanged since seen: the identity afterwards is given. */
	cr_assert_eq(ts_file_update_seen(p, NULL, put_cb, &mine, &seen, &after, err, sizeof(err)),
	             0, "%s", err);
	cr_assert_eq(ts_file_identity(p, &now), 0);
	cr_expect(after.exists && ts_file_id_equal(&after, &now));
	/* Another writer, then ours: withheld, though ours was written. */
	seen = after;
	cr_assert_eq(ts_file_update(p, NULL, put_cb, &theirs, NULL, err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(ts_file_update_seen(p, NULL, put_cb, &mine, &seen, &after, err, sizeof(err)),
	             0, "%s", err);
	cr_expect_not(after.exists, "the change made elsewhere would be missed");
	struct ts_set s;
	ts_set_init(&s);
	cr_assert_eq(ts_file_load(p, NULL, &s, NULL, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(s.n, 2, "both writes are in the file");
	ts_set_deinit(&s);
	free(p);
}

Test(token_store, identity_changes_on_every_update)
{
	char *p = path_in_dir("tokens.json");
	char err[ERR_LEN];
	struct put_arg pa = { "loc1", "SECRET-rt", 0 };
	struct ts_file_id prev = { 0 }, cur;

	for (int i = 0; i < 5; i++) {
		cr_assert_eq(ts_file_update(p, NULL, put_cb, &pa, &cur, err, sizeof(err)), 0);
		cr_expect_not(ts_file_id_equal(&prev, &cur), "update %d kept the identity", i);
		struct ts_file_id polled;
		cr_assert_eq(ts_file_identity(p, &polled), 0);
		cr_expect(ts_file_id_equal(&polled, &cur));
		prev = cur;
	}
	free(p);
}

Test(token_store, refresh_lock_is_exclusive)
{
	char *p = path_in_dir("tokens.json");

	int a = ts_refresh_lock(p, "loc1");
	cr_assert_geq(a, 0, "%s", strerror(-a));
	/* A second open file (as another process would have) cannot take it. */
	cr_expect_eq(ts_refresh_lock(p, "loc1"), -EWOULDBLOCK);
	/* Another resource is another lock. */
	int b = ts_refresh_lock(p, "loc2");
	cr_expect_geq(b, 0);
	ts_refresh_unlock(a);
	int c = ts_refresh_lock(p, "loc1");
	cr_expect_geq(c, 0, "not released by unlock");
	ts_refresh_unlock(b);
	ts_refresh_unlock(c);
	cr_expect_eq(ts_refresh_lock(p, "bad/id"), -EINVAL);
	cr_expect_eq(count_prefixed("tokens.json.refresh."), 2);
	free(p);
}

Test(token_store, refresh_lock_across_processes)
{
	char *p = path_in_dir("tokens.json");
	int fds[2];

	cr_assert_eq(pipe(fds), 0);
	int a = ts_refresh_lock(p, "loc1");
	cr_assert_geq(a, 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(a); /* the child's copy shares the lock; a fresh open must not get it */
		char r = ts_refresh_lock(p, "loc1") == -EWOULDBLOCK ? 'y' : 'n';
		free(p);
		if (write(fds[1], &r, 1) != 1)
			_exit(2);
		_exit(0);
	}
	char r = 0;
	cr_assert_eq(read(fds[0], &r, 1), 1);
	cr_expect_eq(r, 'y');
	int status;
	waitpid(pid, &status, 0);
	ts_refresh_unlock(a);
	close(fds[0]);
	close(fds[1]);
	free(p);
}

/* ---- paths and keys ---- */

Test(token_store, default_path)
{
	struct config_errors errs = { 0 };
	struct config *c = config_load_string("", "t.conf", NULL, NULL, 0, &errs);
	cr_assert(c);
	char *p;

	unsetenv("STATE_DIRECTORY");
	p = ts_default_path(c);
	cr_expect_str_eq(p, "/var/lib/ghlproxy/tokens.json");
	free(p);
	setenv("STATE_DIRECTORY", "/run/state/ghl", 1);
	p = ts_default_path(c);
	cr_expect_str_eq(p, "/run/state/ghl/tokens.json");
	free(p);
	config_free(c);

	const char *ov[] = { "store.path=/srv/t.json" };
	c = config_load_string("", "t.conf", NULL, ov, 1, &errs);
	cr_assert(c);
	p = ts_default_path(c);
	cr_expect_str_eq(p, "/srv/t.json");
	free(p);
	config_free(c);
	config_errors_deinit(&errs);
	unsetenv("STATE_DIRECTORY");
}

Test(token_store, redis_keys)
{
	char k[64];
	cr_expect_eq(ts_redis_entry_key("ghlproxy", "loc1", k, sizeof(k)), 0);
	cr_expect_str_eq(k, "ghlproxy:{tok:loc1}");
	cr_expect_eq(ts_redis_lock_key("ghlproxy", "loc1", k, sizeof(k)), 0);
	cr_expect_str_eq(k, "ghlproxy:{tok:loc1}:lock");
	cr_expect_eq(ts_redis_index_key("ghlproxy", k, sizeof(k)), 0);
	cr_expect_str_eq(k, "ghlproxy:tokens");
	cr_expect_eq(ts_redis_entry_key("ghlproxy", "a}b", k, sizeof(k)), -EINVAL);
	cr_expect_eq(ts_redis_entry_key("ghlproxy", "loc1", k, 10), -ENAMETOOLONG);
	cr_expect(strstr(ts_redis_cas_lua, "HSET"));
}
