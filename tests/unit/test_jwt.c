/*
 * test_jwt.c: jwt_read_claims() on HighLevel-shaped tokens built here (header, payload and
 * signature base64url-encoded at test time) and on every kind of broken input. Token text is
 * never printed: failure messages name the case only.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

static const char RS256[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
static const char HS256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* A Location token's payload as HighLevel issues it (ids made up, same shapes). */
#define HL_LOCATION_PAYLOAD                                                           \
	"{\"authClass\":\"Location\",\"authClassId\":\"ve9EPM428h8vShlRW1KT\","       \
	"\"primaryAuthClassId\":\"ve9EPM428h8vShlRW1KT\",\"source\":\"INTEGRATION\"," \
	"\"sourceId\":\"6650e2b7c1d8f2a1b3c4d5e6-lxyz12ab\",\"channel\":\"OAUTH\","   \
	"\"oauthMeta\":{\"scopes\":[\"contacts.readonly\",\"contacts.write\","        \
	"\"locations.readonly\"],\"client\":\"6650e2b7c1d8f2a1b3c4d5e6\","            \
	"\"clientKey\":\"6650e2b7c1d8f2a1b3c4d5e6-lxyz12ab\",\"versionId\":"          \
	"\"6650e2b7c1d8f2a1b3c4d5e6\"},\"iat\":1751436979.849,\"exp\":1751523379.849}"

#define HL_COMPANY_PAYLOAD                                                            \
	"{\"authClass\":\"Company\",\"authClassId\":\"Xq2LmN7pQr8sTu9vWx0Y\","        \
	"\"source\":\"INTEGRATION\",\"channel\":\"OAUTH\",\"oauthMeta\":{\"scopes\":" \
	"[\"locations.readonly\"],\"client\":\"66a0b1c2d3e4f5a6b7c8d9e0\","           \
	"\"clientKey\":\"66a0b1c2d3e4f5a6b7c8d9e0-m1abcd\",\"versionId\":"            \
	"\"66a0b1c2d3e4f5a6b7c8d9e0\"},\"iat\":1720000000,\"exp\":1720086399}"

/* malloc that fails the test instead of returning NULL. */
static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (p == NULL)
		abort(); /* cr_assert is not noreturn to the compiler */
	return p;
}

static size_t b64url_encode(const void *data, size_t len, char *out, bool pad)
{
	static const char tbl[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const unsigned char *p = data;
	size_t o = 0, i = 0;
	for (; i + 3 <= len; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		out[o++] = tbl[v >> 6 & 63];
		out[o++] = tbl[v & 63];
	}
	if (len - i == 1) {
		unsigned v = (unsigned)p[i] << 16;
		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		if (pad) {
			out[o++] = '=';
			out[o++] = '=';
		}
	} else if (len - i == 2) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		out[o++] = tbl[v >> 6 & 63];
		if (pad)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

/* header.payload.signature with a fake 32-byte signature; the caller frees. */
static char *make_token_n(const char *header, const void *payload, size_t payload_len, bool pad)
{
	static const unsigned char sig[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 250, 251, 252 };
	size_t cap = (strlen(header) + payload_len + sizeof(sig)) * 4 / 3 + 32;
	char *t = xmalloc(cap);
	cr_assert_not_null(t);
	size_t o = b64url_encode(header, strlen(header), t, pad);
	t[o++] = '.';
	o += b64url_encode(payload, payload_len, t + o, pad);
	t[o++] = '.';
	b64url_encode(sig, sizeof(sig), t + o, pad);
	return t;
}

static char *make_token(const char *header, const char *payload)
{
	return make_token_n(header, payload, strlen(payload), false);
}

static enum jwt_status read_str(const char *token, struct jwt_claims *c)
{
	return jwt_read_claims(token, strlen(token), c);
}

/* ---------------------------------------------------------------------------------------- */

struct good_case {
	const char *name;
	const char *header;
	const char *payload;
	bool pad;
	enum jwt_auth_class auth_class;
	const char *auth_class_id;
	const char *app_id;
	double iat, exp;
};

static const struct good_case good_cases[] = {
	{ "RS256 location, fractional iat/exp", RS256, HL_LOCATION_PAYLOAD, false,
	  JWT_CLASS_LOCATION, "ve9EPM428h8vShlRW1KT", "6650e2b7c1d8f2a1b3c4d5e6", 1751436979.849,
	  1751523379.849 },
	{ "RS256 location, padded base64", RS256, HL_LOCATION_PAYLOAD, true, JWT_CLASS_LOCATION,
	  "ve9EPM428h8vShlRW1KT", "6650e2b7c1d8f2a1b3c4d5e6", 1751436979.849, 1751523379.849 },
	{ "HS256 company, integer iat/exp", HS256, HL_COMPANY_PAYLOAD, false, JWT_CLASS_COMPANY,
	  "Xq2LmN7pQr8sTu9vWx0Y", "66a0b1c2d3e4f5a6b7c8d9e0", 1720000000.0, 1720086399.0 },
	{ "minimal claims, no authClass, no iat/exp", RS256,
	  "{\"authClassId\":\"loc_1-A\",\"oauthMeta\":{\"client\":\"app1\"}}", false,
	  JWT_CLASS_UNKNOWN, "loc_1-A", "app1", 0, 0 },
	{ "authClass in another case", RS256,
	  "{\"authClass\":\"location\",\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"}}",
	  false, JWT_CLASS_LOCATION, "L1", "a", 0, 0 },
	{ "unknown authClass", RS256,
	  "{\"authClass\":\"Agency\",\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"}}",
	  false, JWT_CLASS_UNKNOWN, "L1", "a", 0, 0 },
	{ "iat/exp of the wrong type read as 0", RS256,
	  "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"},\"iat\":\"1751436979\","
	  "\"exp\":null}",
	  false, JWT_CLASS_UNKNOWN, "L1", "a", 0, 0 },
	{ "exponent and negative numbers", RS256,
	  "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"},\"iat\":1.5e9,\"exp\":-2.25}",
	  false, JWT_CLASS_UNKNOWN, "L1", "a", 1.5e9, -2.25 },
	{ "duplicate keys: the last wins", RS256,
	  "{\"authClassId\":\"first\",\"authClassId\":\"second\",\"oauthMeta\":{\"client\":\"a\"}}",
	  false, JWT_CLASS_UNKNOWN, "second", "a", 0, 0 },
	{ "64-character ids", RS256,
	  "{\"authClassId\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\","
	  "\"oauthMeta\":{\"client\":"
	  "\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"}}",
	  false, JWT_CLASS_UNKNOWN,
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	  "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 0, 0 },
	{ "whitespace around the JSON", RS256,
	  " \n\t{ \"authClassId\" : \"L1\" , \"oauthMeta\" : { \"client\" : \"a\" } }\r\n ", false,
	  JWT_CLASS_UNKNOWN, "L1", "a", 0, 0 },
};

Test(jwt, good_tokens)
{
	for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]); i++) {
		const struct good_case *g = &good_cases[i];
		char *t = make_token_n(g->header, g->payload, strlen(g->payload), g->pad);
		struct jwt_claims c;
		enum jwt_status st = read_str(t, &c);
		free(t);
		cr_expect_eq(st, JWT_OK, "%s: status %d", g->name, st);
		cr_expect_eq(c.auth_class, g->auth_class, "%s: authClass", g->name);
		cr_expect_str_eq(c.auth_class_id, g->auth_class_id, "%s: authClassId", g->name);
		cr_expect_str_eq(c.app_id, g->app_id, "%s: app", g->name);
		cr_expect_eq(c.iat, g->iat, "%s: iat %.3f", g->name, c.iat);
		cr_expect_eq(c.exp, g->exp, "%s: exp %.3f", g->name, c.exp);
	}
}

Test(jwt, fractional_seconds_are_kept)
{
	char *t = make_token(RS256, HL_LOCATION_PAYLOAD);
	struct jwt_claims c;
	cr_assert_eq(read_str(t, &c), JWT_OK);
	free(t);
	/* An integer parse would lose the .849 (or fail on the '.'). */
	cr_expect(c.iat > 1751436979.8 && c.iat < 1751436979.9);
	cr_expect(c.exp - c.iat > 86399.9 && c.exp - c.iat < 86400.1);
}

Test(jwt, empty_signature_is_accepted)
{
	char *t = make_token(RS256, HL_COMPANY_PAYLOAD);
	char *last = strrchr(t, '.');
	last[1] = '\0';
	struct jwt_claims c;
	cr_expect_eq(read_str(t, &c), JWT_OK);
	cr_expect_str_eq(c.auth_class_id, "Xq2LmN7pQr8sTu9vWx0Y");
	free(t);
}

/* ---------------------------------------------------------------------------------------- */

Test(jwt, not_a_jwt)
{
	static const char *const cases[] = {
		"pit-8f14e45f-ceea-467f-a0e6-3c4e2f5a9b1d",
		"opaque",
		"a.b",
		"a.b.c.d",
		"eyJhbGciOiJSUzI1NiJ9.eyJ9",
		"....",
		".",
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct jwt_claims c;
		memset(&c, 0x5a, sizeof(c));
		cr_expect_eq(read_str(cases[i], &c), JWT_NOT_JWT, "case %zu", i);
		cr_expect_eq(c.app_id[0], '\0', "case %zu: claims zeroed", i);
	}
	struct jwt_claims c;
	cr_expect_eq(jwt_read_claims(NULL, 0, &c), JWT_NOT_JWT);
	cr_expect_eq(jwt_read_claims("", 0, &c), JWT_NOT_JWT);
}

struct bad_payload {
	const char *name;
	const char *payload;
};

static const struct bad_payload bad_payloads[] = {
	{ "not JSON", "this is not json" },
	{ "JSON array", "[{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"}}]" },
	{ "JSON string", "\"L1\"" },
	{ "JSON number", "1751436979.849" },
	{ "JSON null", "null" },
	{ "truncated object", "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"}" },
	{ "trailing garbage", "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"}} x" },
	{ "empty object", "{}" },
	{ "missing authClassId", "{\"authClass\":\"Location\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "missing oauthMeta", "{\"authClass\":\"Location\",\"authClassId\":\"L1\"}" },
	{ "missing client", "{\"authClassId\":\"L1\",\"oauthMeta\":{\"clientKey\":\"a-b\"}}" },
	{ "oauthMeta not an object", "{\"authClassId\":\"L1\",\"oauthMeta\":\"a\"}" },
	{ "oauthMeta an array", "{\"authClassId\":\"L1\",\"oauthMeta\":[{\"client\":\"a\"}]}" },
	{ "authClassId a number", "{\"authClassId\":12345,\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId null", "{\"authClassId\":null,\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "client a number", "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":7}}" },
	{ "client an object", "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":{}}}" },
	{ "empty authClassId", "{\"authClassId\":\"\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "empty client", "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"\"}}" },
	{ "authClassId with a space",
	  "{\"authClassId\":\"L 1\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId with a colon",
	  "{\"authClassId\":\"L:1\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId with a brace",
	  "{\"authClassId\":\"L{1}\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId with a slash",
	  "{\"authClassId\":\"L/1\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId with a dot", "{\"authClassId\":\"L.1\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId non-ASCII",
	  "{\"authClassId\":\"L\xc3\xa9\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "authClassId escaped NUL",
	  "{\"authClassId\":\"L\\u0000x\",\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "client with a newline",
	  "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\\nb\"}}" },
	{ "authClassId of 65 characters",
	  "{\"authClassId\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\","
	  "\"oauthMeta\":{\"client\":\"a\"}}" },
	{ "client of 65 characters",
	  "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":"
	  "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}" },
	{ "invalid UTF-8",
	  "{\"authClassId\":\"L1\",\"x\":\"\xff\xfe\",\"oauthMeta\":{\"client\":\"a\"}}" },
};

Test(jwt, malformed_payloads)
{
	for (size_t i = 0; i < sizeof(bad_payloads) / sizeof(bad_payloads[0]); i++) {
		char *t = make_token(RS256, bad_payloads[i].payload);
		struct jwt_claims c;
		enum jwt_status st = read_str(t, &c);
		free(t);
		cr_expect_eq(st, JWT_MALFORMED, "%s: status %d", bad_payloads[i].name, st);
		/* Claims are zeroed on failure, even those read before the failing one. */
		cr_expect_eq(c.app_id[0], '\0', "%s: app zeroed", bad_payloads[i].name);
		cr_expect_eq(c.auth_class_id[0], '\0', "%s: id zeroed", bad_payloads[i].name);
		cr_expect_eq(c.auth_class, JWT_CLASS_UNKNOWN, "%s", bad_payloads[i].name);
		cr_expect_eq(c.iat, 0.0, "%s", bad_payloads[i].name);
	}
}

Test(jwt, invalid_base64)
{
	char *good = make_token(RS256, HL_LOCATION_PAYLOAD);
	const char *dot1 = strchr(good, '.');
	size_t pay_at = (size_t)(dot1 - good) + 1;
	/* Characters that are not base64url, put in the payload, the header or the signature. */
	static const char bad_chars[] = { '+', '/', '*', ' ', '!', '~', '\n', '\xc3', '=', '\0' };
	for (size_t i = 0; i < sizeof(bad_chars); i++) {
		for (int where = 0; where < 3; where++) {
			char *t = strdup(good);
			size_t len = strlen(t);
			size_t at = where == 0 ? 1 : where == 1 ? pay_at + 5 : len - 3;
			t[at] = bad_chars[i];
			struct jwt_claims c;
			cr_expect_eq(jwt_read_claims(t, len, &c), JWT_MALFORMED,
			             "char 0x%02x in part %d", (unsigned char)bad_chars[i], where);
			free(t);
		}
	}
	free(good);

	static const char *const cases[] = {
		/* payload of 1 character: not a whole byte */
		"eyJhbGciOiJSUzI1NiJ9.e.sig",
		/* padding that does not complete a group */
		"eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ=.sig",
		/* three '=' */
		"eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ===.sig",
		/* empty header, empty payload */
		".eyJhIjoxfQ.sig",
		"eyJhbGciOiJSUzI1NiJ9..sig",
		"..",
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct jwt_claims c;
		cr_expect_eq(read_str(cases[i], &c), JWT_MALFORMED, "case %zu", i);
	}
}

Test(jwt, padding)
{
	/* A payload whose encoding ends in a 2-character group: "==" completes it, "=" does not. */
	static const char base[] = "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"}";
	char payload[128];
	size_t n_spaces = (3 + 1 - (sizeof(base) - 1 + 1) % 3) % 3; /* with the closing '}' */
	size_t n = (size_t)snprintf(payload, sizeof(payload), "%s%*s}", base, (int)n_spaces, "");
	cr_assert_eq(n % 3, 1);
	char enc[256];
	size_t e = b64url_encode(payload, n, enc, false);
	cr_assert_eq(e % 4, 2);
	const struct {
		const char *pad;
		enum jwt_status want;
	} cases[] = {
		{ "", JWT_OK },
		{ "==", JWT_OK },
		{ "=", JWT_MALFORMED },
		{ "===", JWT_MALFORMED },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char t[512];
		snprintf(t, sizeof(t), "eyJhbGciOiJIUzI1NiJ9.%s%s.c2ln", enc, cases[i].pad);
		struct jwt_claims c;
		cr_expect_eq(read_str(t, &c), cases[i].want, "padding '%s'", cases[i].pad);
	}
}

Test(jwt, embedded_nul_bytes)
{
	/* A raw NUL inside the payload's JSON, encoded: jansson refuses it. */
	static const char p[] = "{\"authClassId\":\"L1\0\",\"oauthMeta\":{\"client\":\"a\"}}";
	char *t = make_token_n(RS256, p, sizeof(p) - 1, false);
	struct jwt_claims c;
	cr_expect_eq(read_str(t, &c), JWT_MALFORMED);
	free(t);

	/* A NUL byte in the token text itself (the length says there is more). */
	char *good = make_token(RS256, HL_LOCATION_PAYLOAD);
	size_t len = strlen(good);
	char *dot1 = strchr(good, '.');
	dot1[3] = '\0';
	cr_expect_eq(jwt_read_claims(good, len, &c), JWT_MALFORMED);
	free(good);

	/* A NUL after a complete token, inside the given length. */
	good = make_token(RS256, HL_LOCATION_PAYLOAD);
	len = strlen(good);
	char *withnul = xmalloc(len + 2);
	memcpy(withnul, good, len);
	withnul[len] = '\0';
	withnul[len + 1] = 'A';
	cr_expect_eq(jwt_read_claims(withnul, len + 2, &c), JWT_MALFORMED);
	cr_expect_eq(jwt_read_claims(withnul, len, &c), JWT_OK);
	free(withnul);
	free(good);
}

Test(jwt, deep_nesting)
{
	/* 10,000 '[' inside the payload: over jansson's depth limit, a clean failure. */
	size_t n = 10000;
	char *p = xmalloc(n * 2 + 64);
	static const char head[] =
	        "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"},\"x\":";
	memcpy(p, head, sizeof(head) - 1);
	size_t o = sizeof(head) - 1;
	memset(p + o, '[', n);
	o += n;
	memset(p + o, ']', n);
	o += n;
	p[o++] = '}';
	p[o] = '\0';
	/* Encoded it is longer than JWT_MAX_LEN: first check the bound says malformed. */
	char *t = make_token(RS256, p);
	struct jwt_claims c;
	cr_expect_eq(read_str(t, &c), JWT_MALFORMED);
	free(t);

	/* Then the same shape within the bound: the JSON parser's depth limit refuses it. */
	size_t n2 = 5000;
	o = (size_t)sprintf(p, "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"},\"x\":");
	memset(p + o, '[', n2);
	o += n2;
	memset(p + o, ']', n2);
	o += n2;
	p[o++] = '}';
	p[o] = '\0';
	t = make_token(RS256, p);
	cr_assert_leq(strlen(t), JWT_MAX_LEN);
	cr_expect_eq(read_str(t, &c), JWT_MALFORMED);
	free(t);

	/* 10,000 '[' alone, unbalanced, in a token within the bound. */
	memset(p, '[', 10000);
	p[10000] = '\0';
	t = make_token_n(RS256, p, 10000, false);
	cr_assert_leq(strlen(t), JWT_MAX_LEN);
	cr_expect_eq(read_str(t, &c), JWT_MALFORMED);
	free(t);
	free(p);
}

Test(jwt, length_bound)
{
	/* Build a valid payload padded so that the token is exactly JWT_MAX_LEN, then one more. */
	char *p = xmalloc(JWT_MAX_LEN);
	static const char head[] =
	        "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"},\"pad\":\"";
	size_t hdr_b64 = (strlen(RS256) + 2) / 3 * 4; /* 27 bytes -> 36 characters */
	size_t sig_b64 = 43;                          /* 32 bytes unpadded */
	/* Token length = hdr_b64 + 1 + b64(payload) + 1 + sig_b64; choose a payload of 3k bytes. */
	size_t budget = JWT_MAX_LEN - hdr_b64 - sig_b64 - 2; /* characters for the payload */
	size_t payload_len = budget / 4 * 3;
	size_t fill = payload_len - strlen(head) - 2;
	memcpy(p, head, strlen(head));
	memset(p + strlen(head), 'x', fill);
	memcpy(p + strlen(head) + fill, "\"}", 2);

	char *t = make_token_n(RS256, p, payload_len, false);
	size_t len = strlen(t);
	cr_assert_leq(len, JWT_MAX_LEN);
	struct jwt_claims c;
	cr_expect_eq(jwt_read_claims(t, len, &c), JWT_OK, "token of %zu characters", len);
	free(t);

	/* Three more payload bytes: four more characters, over the bound. */
	memset(p + strlen(head), 'x', fill + 3);
	memcpy(p + strlen(head) + fill + 3, "\"}", 2);
	t = make_token_n(RS256, p, payload_len + 3, false);
	len = strlen(t);
	cr_assert_gt(len, JWT_MAX_LEN);
	cr_expect_eq(jwt_read_claims(t, len, &c), JWT_MALFORMED, "token of %zu characters", len);
	free(t);
	free(p);
}

Test(jwt, one_megabyte_payload)
{
	size_t n = 1024 * 1024;
	char *p = xmalloc(n + 1);
	static const char head[] =
	        "{\"authClassId\":\"L1\",\"oauthMeta\":{\"client\":\"a\"},\"pad\":\"";
	memcpy(p, head, strlen(head));
	memset(p + strlen(head), 'y', n - strlen(head) - 2);
	memcpy(p + n - 2, "\"}", 2);
	p[n] = '\0';
	char *t = make_token_n(RS256, p, n, false);
	struct jwt_claims c;
	cr_expect_eq(read_str(t, &c), JWT_MALFORMED);
	cr_expect_eq(c.app_id[0], '\0');
	free(t);
	free(p);
}

Test(jwt, every_truncation_is_clean)
{
	/* Every prefix of a real token: never a crash, never a claim from a partial payload. */
	char *t = make_token(RS256, HL_LOCATION_PAYLOAD);
	size_t len = strlen(t);
	size_t n_ok = 0;
	for (size_t i = 0; i <= len; i++) {
		struct jwt_claims c;
		enum jwt_status st = jwt_read_claims(t, i, &c);
		if (st == JWT_OK) {
			n_ok++;
			cr_expect_str_eq(c.auth_class_id, "ve9EPM428h8vShlRW1KT");
		}
	}
	/* Only cuts inside the signature (which is never decoded) leave the claims readable. */
	size_t sig_len = len - (size_t)(strrchr(t, '.') - t) - 1;
	cr_expect_eq(n_ok, sig_len + 1);
	free(t);
}
