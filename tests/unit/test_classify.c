/*
 * test_classify.c: classify_request() rule by rule (credential kinds, keys, configured mapping,
 * hint headers, query, path, JSON body, /oauth/), their precedence, hostile inputs, and every
 * operation of HighLevel's API 2.0 from tests/vectors/endpoint-resource-map-v2.csv.
 *
 * Bearer strings are made up and never printed: failure messages name the case only.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "classify.h"

#define UUID "8f14e45f-ceea-467f-a0e6-3c4e2f5a9b1d"
static const char PIT[] = "pit-" UUID;

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                   */

/* malloc that fails the test instead of returning NULL. */
static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (p == NULL)
		abort(); /* cr_assert is not noreturn to the compiler */
	return p;
}

static size_t b64url_encode(const void *data, size_t len, char *out)
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
	if (len - i >= 1) {
		unsigned v = (unsigned)p[i] << 16 | (len - i == 2 ? (unsigned)p[i + 1] << 8 : 0);
		out[o++] = tbl[v >> 18 & 63];
		out[o++] = tbl[v >> 12 & 63];
		if (len - i == 2)
			out[o++] = tbl[v >> 6 & 63];
	}
	out[o] = '\0';
	return o;
}

/* An RS256-shaped HighLevel access token with this payload (static buffer, one at a time). */
static const char *jwt_of(const char *payload)
{
	static char tok[4096];
	static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	size_t o = b64url_encode(hdr, strlen(hdr), tok);
	tok[o++] = '.';
	cr_assert_lt(strlen(payload) * 4 / 3 + o + 64, sizeof(tok));
	o += b64url_encode(payload, strlen(payload), tok + o);
	memcpy(tok + o, ".c2lnbmF0dXJlLW5vdC1jaGVja2Vk", 29);
	tok[o + 29] = '\0';
	return tok;
}

#define APP_ID "6650e2b7c1d8f2a1b3c4d5e6"
#define LOC_TOKEN_PAYLOAD                                                                          \
	"{\"authClass\":\"Location\",\"authClassId\":\"ve9EPM428h8vShlRW1KT\",\"source\":"         \
	"\"INTEGRATION\",\"channel\":\"OAUTH\",\"oauthMeta\":{\"scopes\":[\"contacts.readonly\"]," \
	"\"client\":\"" APP_ID "\",\"clientKey\":\"" APP_ID "-lxyz12ab\",\"versionId\":\"" APP_ID  \
	"\"},\"iat\":1751436979.849,\"exp\":1751523379.849}"
#define CMP_TOKEN_PAYLOAD                                                                    \
	"{\"authClass\":\"Company\",\"authClassId\":\"Xq2LmN7pQr8sTu9vWx0Y\",\"oauthMeta\":" \
	"{\"client\":\"" APP_ID "\",\"clientKey\":\"" APP_ID "-x\"},\"iat\":1,\"exp\":2}"

#define MAX_HDRS 4

/* One request of a table; NULL fields are absent. */
struct req {
	const char *path;
	const char *query;
	const char *h[MAX_HDRS][2]; /* name, value */
	const char *ctype;          /* Content-Type, added after h[] */
	const char *body;
	const char *bearer;
	bool is_v1;
	bool inject;
};

/* Expected resource: src, kind, id. */
struct want {
	enum classify_source src;
	enum classify_res_kind kind;
	const char *id;
};

struct tc {
	const char *name;
	struct req r;
	struct want w;
};

static void run_req(const struct req *r, classify_lookup_fn lookup, void *ctx,
                    struct classify_result *out)
{
	struct classify_header hdrs[MAX_HDRS + 1];
	size_t n = 0;
	for (size_t i = 0; i < MAX_HDRS && r->h[i][0] != NULL; i++) {
		hdrs[n].name = r->h[i][0];
		hdrs[n].value = r->h[i][1];
		n++;
	}
	if (r->ctype != NULL) {
		hdrs[n].name = "Content-Type";
		hdrs[n].value = r->ctype;
		n++;
	}
	struct classify_input in = {
		.method = "GET",
		.path = r->path,
		.path_len = r->path != NULL ? strlen(r->path) : 0,
		.query = r->query,
		.query_len = r->query != NULL ? strlen(r->query) : 0,
		.headers = hdrs,
		.n_headers = n,
		.bearer = r->bearer,
		.bearer_len = r->bearer != NULL ? strlen(r->bearer) : 0,
		.body = (const unsigned char *)r->body,
		.body_len = r->body != NULL ? strlen(r->body) : 0,
		.is_v1 = r->is_v1,
		.inject = r->inject,
		.lookup = lookup,
		.lookup_ctx = ctx,
	};
	classify_request(&in, out);
}

static bool key_chars_ok(const char *k)
{
	for (; *k != '\0'; k++) {
		char c = *k;
		bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		          (c >= '0' && c <= '9') || c == '_' || c == '-' || c == ':' || c == '.';
		if (!ok)
			return false;
	}
	return true;
}

/* Check the resource, and that the PIT keys are built from it (or from the fingerprint). */
static void check(const char *name, const struct classify_result *res, const struct want *w)
{
	const char *id = w->id != NULL ? w->id : "";
	cr_expect_eq(res->source, w->src, "%s: source %d, want %d", name, res->source, w->src);
	cr_expect_eq(res->res_kind, w->kind, "%s: kind %d, want %d", name, res->res_kind, w->kind);
	cr_expect_str_eq(res->resource, id, "%s: resource '%s', want '%s'", name, res->resource,
	                 id);
	cr_expect(key_chars_ok(res->burst_key) && key_chars_ok(res->daily_key), "%s: key chars",
	          name);
	if (res->cred == CRED_PIT) {
		char burst[CLASSIFY_KEY_MAX + 1], daily[CLASSIFY_KEY_MAX + 1];
		if (id[0] != '\0') {
			snprintf(burst, sizeof(burst), "pit.%s:%s", res->fingerprint, id);
			snprintf(daily, sizeof(daily), "pit:%s", id);
		} else {
			snprintf(burst, sizeof(burst), "pit.%s:fp.%s", res->fingerprint,
			         res->fingerprint);
			snprintf(daily, sizeof(daily), "pit:fp.%s", res->fingerprint);
		}
		cr_expect_str_eq(res->burst_key, burst, "%s: burst key", name);
		cr_expect_str_eq(res->daily_key, daily, "%s: daily key", name);
	}
}

static void run_table(const struct tc *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct req r = t[i].r;
		if (r.bearer == NULL)
			r.bearer = PIT;
		struct classify_result res;
		run_req(&r, NULL, NULL, &res);
		cr_expect_eq(res.cred, CRED_PIT, "%s: cred", t[i].name);
		check(t[i].name, &res, &t[i].w);
	}
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))
#define NONE                                \
	{                                   \
		SRC_NONE, RES_UNKNOWN, NULL \
	}
#define HL(id)                               \
	{                                    \
		SRC_HEADER, RES_LOCATION, id \
	}
#define HC(id)                              \
	{                                   \
		SRC_HEADER, RES_COMPANY, id \
	}
#define QL(id)                              \
	{                                   \
		SRC_QUERY, RES_LOCATION, id \
	}
#define QC(id)                             \
	{                                  \
		SRC_QUERY, RES_COMPANY, id \
	}
#define PL(id)                             \
	{                                  \
		SRC_PATH, RES_LOCATION, id \
	}
#define PC(id)                            \
	{                                 \
		SRC_PATH, RES_COMPANY, id \
	}
#define BL(id)                             \
	{                                  \
		SRC_BODY, RES_LOCATION, id \
	}
#define BC(id)                            \
	{                                 \
		SRC_BODY, RES_COMPANY, id \
	}
#define JSON_CT "application/json"

/* ---------------------------------------------------------------------------------------- */
/* Credentials and keys                                                                      */

Test(classify, fingerprint_is_sha256_prefix)
{
	char fp[CLASSIFY_FP_LEN + 1];
	classify_fingerprint("abc", 3, fp);
	cr_expect_str_eq(fp, "ba7816bf8f01cfea");
	classify_fingerprint("", 0, fp);
	cr_expect_str_eq(fp, "e3b0c44298fc1c14");
	/* The length counts, not a NUL. */
	classify_fingerprint("abc\0d", 5, fp);
	cr_expect_str_neq(fp, "ba7816bf8f01cfea");
	classify_fingerprint(PIT, strlen(PIT), fp);
	cr_expect_eq(strlen(fp), CLASSIFY_FP_LEN);
}

/* The fingerprint computed the long way, for the cache's checks. */
static void sha256_prefix(const char *s, size_t len, char out[CLASSIFY_FP_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	cr_assert_eq(EVP_Digest(s, len, md, &n, EVP_sha256(), NULL), 1);
	for (size_t i = 0; i < CLASSIFY_FP_LEN / 2; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Fingerprints are cached: a hit must be the same secret, byte for byte, whatever the slot.
 * Many secrets (more than the slots), secrets one byte apart, lengths at the cache's limit and
 * past it, each asked twice and interleaved: every answer is the SHA-256 prefix of its own. */
Test(classify, fingerprint_cache_is_exact)
{
	char secret[600], fp[CLASSIFY_FP_LEN + 1], want[CLASSIFY_FP_LEN + 1];
	const size_t lens[] = { 1, 40, 255, 256, 257, 599 };

	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < 1000; i++) {
			int n = snprintf(secret, sizeof(secret),
			                 "pit-00000000-0000-4000-8000-%012d", i);
			classify_fingerprint(secret, (size_t)n, fp);
			sha256_prefix(secret, (size_t)n, want);
			cr_assert_str_eq(fp, want, "secret %d, round %d", i, round);
			secret[n - 1] ^= 1; /* one bit apart, asked right after */
			classify_fingerprint(secret, (size_t)n, fp);
			sha256_prefix(secret, (size_t)n, want);
			cr_assert_str_eq(fp, want, "secret %d flipped, round %d", i, round);
		}
		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			memset(secret, 'a' + (int)k, lens[k]);
			classify_fingerprint(secret, lens[k], fp);
			sha256_prefix(secret, lens[k], want);
			cr_assert_str_eq(fp, want, "length %zu", lens[k]);
			/* The same bytes, one shorter: a prefix is not a hit. */
			classify_fingerprint(secret, lens[k] - 1, fp);
			sha256_prefix(secret, lens[k] - 1, want);
			cr_assert_str_eq(fp, want, "length %zu - 1", lens[k]);
		}
	}
}

Test(classify, id_valid)
{
	static const struct {
		const char *s;
		bool ok;
	} cases[] = {
		{ "ve9EPM428h8vShlRW1KT", true },
		{ "a", true },
		{ "A_b-9", true },
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true },
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false },
		{ "", false },
		{ "a b", false },
		{ "a.b", false },
		{ "a:b", false },
		{ "a/b", false },
		{ "a%41", false },
		{ "\xc3\xa9", false },
		{ "{x}", false },
	};
	for (size_t i = 0; i < N_OF(cases); i++)
		cr_expect_eq(classify_id_valid(cases[i].s, strlen(cases[i].s)), cases[i].ok,
		             "case %zu", i);
	cr_expect_not(classify_id_valid(NULL, 3));
	cr_expect_not(classify_id_valid("ab\0c", 4));
	cr_expect(classify_id_valid("ab\0c", 2));
}

Test(classify, credential_kinds)
{
	char pit_upper[64], pit_nodash[64], pit_short[64], pit_long[64], pit_bad[64], pit_cap[64];
	snprintf(pit_upper, sizeof(pit_upper), "pit-8F14E45F-CEEA-467F-A0E6-3C4E2F5A9B1D");
	snprintf(pit_nodash, sizeof(pit_nodash), "pit-8f14e45fceea467fa0e63c4e2f5a9b1d0000");
	snprintf(pit_short, sizeof(pit_short), "pit-8f14e45f-ceea-467f-a0e6-3c4e2f5a9b1");
	snprintf(pit_long, sizeof(pit_long), "pit-8f14e45f-ceea-467f-a0e6-3c4e2f5a9b1d0");
	snprintf(pit_bad, sizeof(pit_bad), "pit-8f14e45f-ceea-467f-a0e6-3c4e2f5a9b1g");
	snprintf(pit_cap, sizeof(pit_cap), "PIT-8f14e45f-ceea-467f-a0e6-3c4e2f5a9b1d");
	char oauth[4096];
	snprintf(oauth, sizeof(oauth), "%s", jwt_of(LOC_TOKEN_PAYLOAD));
	char jwt_bad[4096];
	snprintf(jwt_bad, sizeof(jwt_bad), "%s", jwt_of("{\"authClassId\":\"L1\"}"));

	static const char *const cred_names[] = { "NONE", "EMPTY",  "OAUTH", "JWT_MALFORMED",
		                                  "PIT",  "V1_KEY", "OPAQUE" };
	const struct {
		const char *name;
		const char *bearer;
		bool is_v1, inject;
		enum classify_cred want;
	} cases[] = {
		{ "no bearer", NULL, false, false, CRED_NONE },
		{ "empty", "", false, false, CRED_EMPTY },
		{ "blanks", "  \t ", false, false, CRED_EMPTY },
		{ "undefined", "undefined", false, false, CRED_EMPTY },
		{ "Undefined padded", " UNDEFINED\t", false, false, CRED_EMPTY },
		{ "null", "null", false, false, CRED_EMPTY },
		{ "Null padded", " Null ", false, false, CRED_EMPTY },
		{ "nullx", "nullx", false, false, CRED_OPAQUE },
		{ "pit", PIT, false, false, CRED_PIT },
		{ "pit upper hex", pit_upper, false, false, CRED_PIT },
		{ "pit no dashes", pit_nodash, false, false, CRED_PIT },
		{ "pit 35", pit_short, false, false, CRED_OPAQUE },
		{ "pit 37", pit_long, false, false, CRED_OPAQUE },
		{ "pit non-hex", pit_bad, false, false, CRED_OPAQUE },
		{ "PIT- prefix", pit_cap, false, false, CRED_OPAQUE },
		{ "oauth jwt", oauth, false, false, CRED_OAUTH },
		{ "jwt without claims", jwt_bad, false, false, CRED_JWT_MALFORMED },
		{ "dotted garbage", "abc.de!f.ghi", false, false, CRED_JWT_MALFORMED },
		{ "opaque", "some-opaque-api-key-0123456789", false, false, CRED_OPAQUE },
		{ "two parts", "abc.def", false, false, CRED_OPAQUE },
		{ "v1 opaque", "some-opaque-api-key-0123456789", true, false, CRED_V1_KEY },
		{ "v1 jwt", oauth, true, false, CRED_V1_KEY },
		{ "v1 pit", PIT, true, false, CRED_V1_KEY },
		{ "v1 empty", "", true, false, CRED_EMPTY },
		{ "v1 undefined", "undefined", true, false, CRED_EMPTY },
		{ "inject pit", PIT, false, true, CRED_NONE },
		{ "inject jwt", oauth, false, true, CRED_NONE },
		{ "inject v1", "key", true, true, CRED_NONE },
	};
	for (size_t i = 0; i < N_OF(cases); i++) {
		struct req r = { .path = "/contacts/",
			         .bearer = cases[i].bearer,
			         .is_v1 = cases[i].is_v1,
			         .inject = cases[i].inject };
		struct classify_result res;
		run_req(&r, NULL, NULL, &res);
		cr_expect_eq(res.cred, cases[i].want, "%s: cred %s, want %s", cases[i].name,
		             cred_names[res.cred], cred_names[cases[i].want]);
		if (cases[i].bearer == NULL || cases[i].inject) {
			cr_expect_str_eq(res.fingerprint, "", "%s: no fingerprint", cases[i].name);
		} else {
			char fp[CLASSIFY_FP_LEN + 1];
			classify_fingerprint(cases[i].bearer, strlen(cases[i].bearer), fp);
			cr_expect_str_eq(res.fingerprint, fp, "%s: fingerprint", cases[i].name);
		}
	}
}

Test(classify, keys_per_credential)
{
	char oauth[4096], oauth_c[4096];
	snprintf(oauth, sizeof(oauth), "%s", jwt_of(LOC_TOKEN_PAYLOAD));
	snprintf(oauth_c, sizeof(oauth_c), "%s", jwt_of(CMP_TOKEN_PAYLOAD));
	static const char opaque[] = "some-opaque-api-key-0123456789";
	static const char malformed[] = "abc.de!f.ghi";
	char fp_pit[17], fp_opq[17], fp_mal[17], fp_empty[17], fp_undef[17];
	classify_fingerprint(PIT, strlen(PIT), fp_pit);
	classify_fingerprint(opaque, strlen(opaque), fp_opq);
	classify_fingerprint(malformed, strlen(malformed), fp_mal);
	classify_fingerprint("", 0, fp_empty);
	classify_fingerprint("undefined", 9, fp_undef);

	char k[16][CLASSIFY_KEY_MAX + 1];
	snprintf(k[0], sizeof(k[0]), "pit.%s:H1", fp_pit);
	snprintf(k[1], sizeof(k[1]), "pit.%s:fp.%s", fp_pit, fp_pit);
	snprintf(k[2], sizeof(k[2]), "pit:fp.%s", fp_pit);
	snprintf(k[3], sizeof(k[3]), "v1:fp.%s", fp_opq);
	snprintf(k[4], sizeof(k[4]), "tok:fp.%s", fp_opq);
	snprintf(k[5], sizeof(k[5]), "tok:fp.%s", fp_mal);
	snprintf(k[6], sizeof(k[6]), "tok:fp.%s", fp_empty);
	snprintf(k[7], sizeof(k[7]), "tok:fp.%s", fp_undef);

	const char *hint[MAX_HDRS][2] = { { "x-location-id", "H1" } };
	const struct {
		const char *name;
		const char *bearer;
		bool is_v1, has_hint;
		const char *app, *burst, *daily;
	} cases[] = {
		{ "oauth location", oauth, false, true, APP_ID, APP_ID ":ve9EPM428h8vShlRW1KT",
		  APP_ID ":ve9EPM428h8vShlRW1KT" },
		{ "oauth company", oauth_c, false, false, APP_ID, APP_ID ":Xq2LmN7pQr8sTu9vWx0Y",
		  APP_ID ":Xq2LmN7pQr8sTu9vWx0Y" },
		{ "pit hinted", PIT, false, true, "pit", k[0], "pit:H1" },
		{ "pit bucket", PIT, false, false, "pit", k[1], k[2] },
		{ "v1 hinted", opaque, true, true, "v1", "v1:H1", "v1:H1" },
		{ "v1 bucket", opaque, true, false, "v1", k[3], k[3] },
		{ "opaque hinted", opaque, false, true, "tok", "tok:H1", "tok:H1" },
		{ "opaque bucket", opaque, false, false, "tok", k[4], k[4] },
		{ "malformed jwt bucket", malformed, false, false, "tok", k[5], k[5] },
		{ "empty hinted", "", false, true, "tok", "tok:H1", "tok:H1" },
		{ "empty bucket", "", false, false, "tok", k[6], k[6] },
		{ "undefined bucket", "undefined", false, false, "tok", k[7], k[7] },
		{ "no credential hinted", NULL, false, true, "tok", "tok:H1", "tok:H1" },
		{ "no credential", NULL, false, false, "tok", "tok:none", "tok:none" },
	};
	for (size_t i = 0; i < N_OF(cases); i++) {
		struct req r = { .path = "/contacts/",
			         .bearer = cases[i].bearer,
			         .is_v1 = cases[i].is_v1 };
		if (cases[i].has_hint)
			memcpy(r.h, hint, sizeof(hint));
		struct classify_result res;
		run_req(&r, NULL, NULL, &res);
		cr_expect_str_eq(res.app, cases[i].app, "%s: app", cases[i].name);
		cr_expect_str_eq(res.burst_key, cases[i].burst, "%s: burst '%s'", cases[i].name,
		                 res.burst_key);
		cr_expect_str_eq(res.daily_key, cases[i].daily, "%s: daily '%s'", cases[i].name,
		                 res.daily_key);
		cr_expect(res.is_counted, "%s: counted", cases[i].name);
		if (cases[i].bearer != NULL && strlen(cases[i].bearer) >= 8) {
			cr_expect_null(strstr(res.burst_key, cases[i].bearer), "%s: secret in key",
			               cases[i].name);
			cr_expect_null(strstr(res.daily_key, cases[i].bearer), "%s: secret in key",
			               cases[i].name);
		}
	}
}

Test(classify, oauth_token_ignores_the_request)
{
	char oauth[4096];
	snprintf(oauth, sizeof(oauth), "%s", jwt_of(LOC_TOKEN_PAYLOAD));
	struct req r = {
		.path = "/locations/PathLoc/tags",
		.query = "locationId=QueryLoc",
		.h = { { "x-location-id", "HintLoc" }, { "companyId", "HintCmp" } },
		.ctype = JSON_CT,
		.body = "{\"locationId\":\"BodyLoc\"}",
		.bearer = oauth,
	};
	struct classify_result res;
	run_req(&r, NULL, NULL, &res);
	cr_expect_eq(res.cred, CRED_OAUTH);
	cr_expect_eq(res.source, SRC_TOKEN);
	cr_expect_eq(res.res_kind, RES_LOCATION);
	cr_expect_str_eq(res.resource, "ve9EPM428h8vShlRW1KT");
	cr_expect_str_eq(res.app, APP_ID);
	cr_expect_str_eq(res.claims.app_id, APP_ID);
	cr_expect(res.claims.iat > 1751436979.8 && res.claims.iat < 1751436979.9);

	snprintf(oauth, sizeof(oauth), "%s", jwt_of(CMP_TOKEN_PAYLOAD));
	run_req(&r, NULL, NULL, &res);
	cr_expect_eq(res.res_kind, RES_COMPANY);
	cr_expect_str_eq(res.resource, "Xq2LmN7pQr8sTu9vWx0Y");

	/* Without authClass the id still keys the token; its kind is unknown. */
	snprintf(oauth, sizeof(oauth), "%s",
	         jwt_of("{\"authClassId\":\"abc\",\"oauthMeta\":{\"client\":\"app9\"}}"));
	run_req(&r, NULL, NULL, &res);
	cr_expect_eq(res.cred, CRED_OAUTH);
	cr_expect_eq(res.res_kind, RES_UNKNOWN);
	cr_expect_str_eq(res.burst_key, "app9:abc");
}

/* ---------------------------------------------------------------------------------------- */
/* Configured mapping                                                                        */

struct mapping {
	const char *fp; /* the fingerprint it knows */
	const char *id;
	enum classify_res_kind kind;
	int n_calls;
	char seen_fp[CLASSIFY_FP_LEN + 1];
};

static const char *map_lookup(void *ctx, const char *fingerprint, enum classify_res_kind *kind)
{
	struct mapping *m = ctx;
	m->n_calls++;
	snprintf(m->seen_fp, sizeof(m->seen_fp), "%s", fingerprint);
	if (strcmp(fingerprint, m->fp) != 0)
		return NULL;
	*kind = m->kind;
	return m->id;
}

Test(classify, configured_mapping)
{
	static const char opaque[] = "agency-api-key-0123456789";
	char fp_pit[17], fp_opq[17], fp_mal[17], oauth[4096];
	classify_fingerprint(PIT, strlen(PIT), fp_pit);
	classify_fingerprint(opaque, strlen(opaque), fp_opq);
	classify_fingerprint("x.y!.z", 6, fp_mal);
	snprintf(oauth, sizeof(oauth), "%s", jwt_of(LOC_TOKEN_PAYLOAD));
	char pit_burst[CLASSIFY_KEY_MAX + 1];
	snprintf(pit_burst, sizeof(pit_burst), "pit.%s:LocCfg", fp_pit);

	const struct {
		const char *name;
		const char *bearer;
		bool is_v1;
		struct mapping m;
		int want_calls;
		struct want w;
		const char *burst, *daily;
	} cases[] = {
		{ "pit mapped (beats hint, query, path, body)",
		  PIT,
		  false,
		  { fp_pit, "LocCfg", RES_LOCATION },
		  1,
		  { SRC_CONFIG, RES_LOCATION, "LocCfg" },
		  pit_burst,
		  "pit:LocCfg" },
		{ "v1 key mapped to a company",
		  opaque,
		  true,
		  { fp_opq, "CmpCfg", RES_COMPANY },
		  1,
		  { SRC_CONFIG, RES_COMPANY, "CmpCfg" },
		  "v1:CmpCfg",
		  "v1:CmpCfg" },
		{ "opaque mapped",
		  opaque,
		  false,
		  { fp_opq, "LocCfg", RES_LOCATION },
		  1,
		  { SRC_CONFIG, RES_LOCATION, "LocCfg" },
		  "tok:LocCfg",
		  "tok:LocCfg" },
		{ "malformed jwt mapped",
		  "x.y!.z",
		  false,
		  { fp_mal, "LocCfg", RES_LOCATION },
		  1,
		  { SRC_CONFIG, RES_LOCATION, "LocCfg" },
		  "tok:LocCfg",
		  "tok:LocCfg" },
		{ "unknown to the mapping: hint",
		  PIT,
		  false,
		  { "0000000000000000", "X", RES_LOCATION },
		  1,
		  HL("HintLoc"),
		  NULL,
		  NULL },
		{ "mapping gives an invalid id: hint",
		  PIT,
		  false,
		  { fp_pit, "bad id", RES_LOCATION },
		  1,
		  HL("HintLoc"),
		  NULL,
		  NULL },
		{ "mapping gives an over-long id: hint",
		  PIT,
		  false,
		  { fp_pit, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		    RES_LOCATION },
		  1,
		  HL("HintLoc"),
		  NULL,
		  NULL },
		{ "oauth never asks the mapping",
		  oauth,
		  false,
		  { fp_pit, "LocCfg", RES_LOCATION },
		  0,
		  { SRC_TOKEN, RES_LOCATION, "ve9EPM428h8vShlRW1KT" },
		  NULL,
		  NULL },
		{ "empty bearer never asks",
		  "undefined",
		  false,
		  { fp_pit, "LocCfg", RES_LOCATION },
		  0,
		  HL("HintLoc"),
		  "tok:HintLoc",
		  "tok:HintLoc" },
		{ "no bearer never asks",
		  NULL,
		  false,
		  { fp_pit, "LocCfg", RES_LOCATION },
		  0,
		  HL("HintLoc"),
		  "tok:HintLoc",
		  "tok:HintLoc" },
	};
	for (size_t i = 0; i < N_OF(cases); i++) {
		struct mapping m = cases[i].m;
		struct req r = {
			.path = "/locations/PathLoc",
			.query = "locationId=QueryLoc",
			.h = { { "x-location-id", "HintLoc" } },
			.ctype = JSON_CT,
			.body = "{\"locationId\":\"BodyLoc\"}",
			.bearer = cases[i].bearer,
			.is_v1 = cases[i].is_v1,
		};
		struct classify_result res;
		run_req(&r, map_lookup, &m, &res);
		cr_expect_eq(m.n_calls, cases[i].want_calls, "%s: %d lookups", cases[i].name,
		             m.n_calls);
		if (m.n_calls > 0)
			cr_expect_str_eq(m.seen_fp, res.fingerprint, "%s: lookup by fingerprint",
			                 cases[i].name);
		check(cases[i].name, &res, &cases[i].w);
		if (cases[i].burst != NULL) {
			cr_expect_str_eq(res.burst_key, cases[i].burst, "%s: burst", cases[i].name);
			cr_expect_str_eq(res.daily_key, cases[i].daily, "%s: daily", cases[i].name);
		}
	}

	/* Inject mode: the client's bearer is not ours to map. */
	struct mapping m = { fp_pit, "LocCfg", RES_LOCATION };
	struct req r = { .path = "/contacts/", .bearer = PIT, .inject = true };
	struct classify_result res;
	run_req(&r, map_lookup, &m, &res);
	cr_expect_eq(m.n_calls, 0);
	cr_expect_eq(res.source, SRC_NONE);
}

/* ---------------------------------------------------------------------------------------- */
/* Hint headers                                                                              */

static const struct tc header_cases[] = {
	{ "x-location-id", { .h = { { "x-location-id", "H1" } } }, HL("H1") },
	{ "X-Location-Id", { .h = { { "X-Location-Id", "H1" } } }, HL("H1") },
	{ "locationId", { .h = { { "locationId", "H1" } } }, HL("H1") },
	{ "locationid", { .h = { { "locationid", "H1" } } }, HL("H1") },
	{ "LOCATION-ID", { .h = { { "LOCATION-ID", "H1" } } }, HL("H1") },
	{ "x-company-id", { .h = { { "x-company-id", "C1" } } }, HC("C1") },
	{ "companyId", { .h = { { "companyId", "C1" } } }, HC("C1") },
	{ "Company-Id", { .h = { { "Company-Id", "C1" } } }, HC("C1") },
	{ "location before company, whatever the header order",
	  { .h = { { "x-company-id", "C1" }, { "location-id", "H3" } } },
	  HL("H3") },
	{ "x-location-id before locationId",
	  { .h = { { "location-id", "H3" }, { "locationId", "H2" }, { "x-location-id", "H1" } } },
	  HL("H1") },
	{ "locationId before location-id",
	  { .h = { { "location-id", "H3" }, { "locationId", "H2" } } },
	  HL("H2") },
	{ "x-company-id before companyId, company-id",
	  { .h = { { "company-id", "C3" }, { "companyId", "C2" }, { "x-company-id", "C1" } } },
	  HC("C1") },
	{ "first valid of a repeated header",
	  { .h = { { "x-location-id", "bad/one" }, { "x-location-id", "H2" } } },
	  HL("H2") },
	{ "invalid value skipped for the next name",
	  { .h = { { "x-location-id", "bad id" }, { "locationId", "H2" } } },
	  HL("H2") },
	{ "invalid location, valid company",
	  { .h = { { "x-location-id", "bad id" }, { "companyId", "C2" } } },
	  HC("C2") },
	{ "blanks trimmed", { .h = { { "x-location-id", " \tH1 \t" } } }, HL("H1") },
	{ "empty value", { .h = { { "x-location-id", "" } } }, NONE },
	{ "only blanks", { .h = { { "x-location-id", "   " } } }, NONE },
	{ "percent is not decoded in headers", { .h = { { "x-location-id", "H%31" } } }, NONE },
	{ "comma list", { .h = { { "x-location-id", "H1, H2" } } }, NONE },
	{ "invalid UTF-8", { .h = { { "x-location-id", "\xff\xfeH1" } } }, NONE },
	{ "65 characters",
	  { .h = { { "x-location-id",
	             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } } },
	  NONE },
	{ "similar names are not hints",
	  { .h = { { "x-location-id2", "H1" }, { "location", "H1" }, { "x-locationid", "H1" } } },
	  NONE },
	{ "hint beats query, path and body",
	  { .h = { { "companyId", "C1" } },
	    .query = "locationId=Q1",
	    .path = "/locations/P1",
	    .ctype = JSON_CT,
	    .body = "{\"locationId\":\"B1\"}" },
	  HC("C1") },
	{ "NULL name and value are skipped",
	  { .h = { { NULL, NULL } }, .path = "/locations/P1" },
	  PL("P1") },
};

Test(classify, hint_headers)
{
	run_table(header_cases, N_OF(header_cases));
}

Test(classify, null_header_entries)
{
	struct classify_header hdrs[] = { { NULL, "H0" },
		                          { "x-location-id", NULL },
		                          { "locationId", "H1" } };
	struct classify_input in = { .path = "/",
		                     .path_len = 1,
		                     .headers = hdrs,
		                     .n_headers = 3,
		                     .bearer = PIT,
		                     .bearer_len = strlen(PIT) };
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_str_eq(res.resource, "H1");
	/* n_headers without headers: nothing read. */
	in.headers = NULL;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
}

/* ---------------------------------------------------------------------------------------- */
/* Query                                                                                     */

static const struct tc query_cases[] = {
	{ "locationId", { .query = "locationId=Q1" }, QL("Q1") },
	{ "location_id", { .query = "location_id=Q1" }, QL("Q1") },
	{ "companyId", { .query = "companyId=C1" }, QC("C1") },
	{ "company_id", { .query = "company_id=C1" }, QC("C1") },
	{ "among others", { .query = "limit=20&skip=0&locationId=Q1&query=x" }, QL("Q1") },
	{ "location before company", { .query = "companyId=C1&locationId=Q1" }, QL("Q1") },
	{ "location_id before company_id", { .query = "company_id=C1&location_id=Q1" }, QL("Q1") },
	{ "locationId before location_id", { .query = "location_id=Q2&locationId=Q1" }, QL("Q1") },
	{ "companyId before company_id", { .query = "company_id=C2&companyId=C1" }, QC("C1") },
	{ "altId + altType=location", { .query = "altId=A1&altType=location" }, QL("A1") },
	{ "altType first", { .query = "altType=location&altId=A1" }, QL("A1") },
	{ "altType=company", { .query = "altId=A1&altType=company" }, QC("A1") },
	{ "altType any case", { .query = "altId=A1&altType=Location" }, QL("A1") },
	{ "altType percent-encoded", { .query = "altId=A1&altType=locatio%6E" }, QL("A1") },
	{ "altId without altType", { .query = "altId=A1" }, NONE },
	{ "altId with another altType", { .query = "altId=A1&altType=contact" }, NONE },
	{ "locationId before altId",
	  { .query = "altId=A1&altType=location&locationId=Q1" },
	  QL("Q1") },
	{ "companyId before altId",
	  { .query = "altId=A1&altType=location&companyId=C1" },
	  QC("C1") },
	{ "percent-decoded id", { .query = "locationId=Q%31%5fx" }, QL("Q1_x") },
	{ "percent-encoded name", { .query = "location%49d=Q1" }, QL("Q1") },
	{ "%00 in the id", { .query = "locationId=Q1%00x" }, NONE },
	{ "%2F in the id", { .query = "locationId=Q1%2Fx" }, NONE },
	{ "broken escape", { .query = "locationId=Q1%zz" }, NONE },
	{ "short escape", { .query = "locationId=Q1%4" }, NONE },
	{ "lone percent", { .query = "locationId=%" }, NONE },
	{ "'+' is not an id character", { .query = "locationId=Q+1" }, NONE },
	{ "empty value", { .query = "locationId=" }, NONE },
	{ "no '='", { .query = "locationId" }, NONE },
	{ "names are case-sensitive", { .query = "LocationId=Q1&locationid=Q1" }, NONE },
	{ "invalid candidate skipped", { .query = "locationId=bad!&locationId=Q2" }, QL("Q2") },
	{ "first valid of a repeated name", { .query = "locationId=Q1&locationId=Q2" }, QL("Q1") },
	{ "a later invalid one does not undo it",
	  { .query = "locationId=Q1&locationId=bad!" },
	  QL("Q1") },
	{ "invalid location, valid company",
	  { .query = "locationId=bad!&companyId=C1" },
	  QC("C1") },
	{ "empty parameters", { .query = "&&locationId=Q1&" }, QL("Q1") },
	{ "'=' in the value", { .query = "locationId=Q1=x" }, NONE },
	{ "';' is not a separator", { .query = "locationId=Q1;x=1" }, NONE },
	{ "invalid UTF-8", { .query = "locationId=%ff%fe" }, NONE },
	{ "raw invalid UTF-8", { .query = "locationId=\xff\xfe" }, NONE },
	{ "65 characters",
	  { .query = "locationId="
	             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
	  NONE },
	{ "64 characters",
	  { .query =
	            "locationId=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
	  QL("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") },
	{ "query beats path and body",
	  { .query = "company_id=C1",
	    .path = "/locations/P1",
	    .ctype = JSON_CT,
	    .body = "{\"locationId\":\"B1\"}" },
	  QC("C1") },
};

Test(classify, query)
{
	run_table(query_cases, N_OF(query_cases));
}

Test(classify, query_length_is_respected)
{
	/* Only query_len bytes are read: the rest of the buffer is not the query. */
	static const char q[] = "limit=1&locationId=Q1";
	struct classify_input in = { .path = "/",
		                     .path_len = 1,
		                     .query = q,
		                     .query_len = 8,
		                     .bearer = PIT,
		                     .bearer_len = strlen(PIT) };
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
	in.query_len = strlen(q) - 1; /* "...locationId=Q" */
	classify_request(&in, &res);
	cr_expect_str_eq(res.resource, "Q");
}

/* ---------------------------------------------------------------------------------------- */
/* Path                                                                                      */

static const struct tc path_cases[] = {
	{ "locations", { .path = "/locations/P1" }, PL("P1") },
	{ "locations/tags", { .path = "/locations/P1/tags/t1" }, PL("P1") },
	{ "trailing slash", { .path = "/locations/P1/" }, PL("P1") },
	{ "literals any case", { .path = "/LOCATIONS/P1/customFields" }, PL("P1") },
	{ "social-media-posting", { .path = "/social-media-posting/P1/posts/list" }, PL("P1") },
	{ "social-media-posting oauth",
	  { .path = "/social-media-posting/oauth/P1/google/locations/acc1" },
	  PL("P1") },
	{ "social-media-posting oauth tiktok-business",
	  { .path = "/social-media-posting/oauth/P1/tiktok-business/accounts/a" },
	  PL("P1") },
	{ "affiliate-manager", { .path = "/affiliate-manager/P1/affiliates" }, PL("P1") },
	{ "brand-boards", { .path = "/brand-boards/P1" }, PL("P1") },
	{ "companies", { .path = "/companies/C1" }, PC("C1") },
	{ "conversations/locations",
	  { .path = "/conversations/locations/P1/messages/m1/transcription" },
	  PL("P1") },
	{ "conversations/messages/*/locations",
	  { .path = "/conversations/messages/m1/locations/P1/recording" },
	  PL("P1") },
	{ "emails/builder", { .path = "/emails/builder/P1/tpl1" }, PL("P1") },
	{ "marketplace rebilling",
	  { .path = "/marketplace/app/app1/rebilling-config/location/P1" },
	  PL("P1") },
	{ "phone-system", { .path = "/phone-system/numbers/location/P1/available" }, PL("P1") },
	{ "saas-api location verb", { .path = "/saas-api/public-api/enable-saas/P1" }, PL("P1") },
	{ "saas-api company verb",
	  { .path = "/saas-api/public-api/bulk-disable-saas/C1" },
	  PC("C1") },
	{ "saas location verb", { .path = "/saas/get-saas-subscription/P1" }, PL("P1") },
	{ "saas company verb", { .path = "/saas/saas-locations/C1" }, PC("C1") },
	{ "snapshot status", { .path = "/snapshots/snapshot-status/s1/location/P1" }, PL("P1") },
	{ "percent-encoded id", { .path = "/locations/P%31" }, PL("P1") },
	/* Literal segments of the API are routes, never ids. */
	{ "/locations/search", { .path = "/locations/search" }, NONE },
	{ "/locations/Search", { .path = "/locations/Search" }, NONE },
	{ "/locations/", { .path = "/locations/" }, NONE },
	{ "/locations", { .path = "/locations" }, NONE },
	{ "/social-media-posting/oauth/google/start",
	  { .path = "/social-media-posting/oauth/google/start" },
	  NONE },
	{ "/social-media-posting/oauth/tiktok-business/start",
	  { .path = "/social-media-posting/oauth/tiktok-business/start" },
	  NONE },
	{ "/social-media-posting/oauth/<new provider>/start",
	  { .path = "/social-media-posting/oauth/youtube/start" },
	  NONE },
	{ "/social-media-posting/oauth/facebook/accounts/x",
	  { .path = "/social-media-posting/oauth/facebook/accounts/x" },
	  NONE },
	{ "/social-media-posting/oauth", { .path = "/social-media-posting/oauth" }, NONE },
	{ "/social-media-posting/oauth/P1/google",
	  { .path = "/social-media-posting/oauth/P1/google" },
	  NONE },
	{ "/social-media-posting/statistics",
	  { .path = "/social-media-posting/statistics" },
	  NONE },
	{ "/emails/builder/data", { .path = "/emails/builder/data" }, NONE },
	{ "/emails/builder", { .path = "/emails/builder" }, NONE },
	{ "/brand-boards/", { .path = "/brand-boards/" }, NONE },
	{ "/companies/", { .path = "/companies/" }, NONE },
	{ "/saas/locations", { .path = "/saas/locations" }, NONE },
	{ "/saas/saas-plan/x", { .path = "/saas/saas-plan/plan1" }, NONE },
	{ "/saas-api/public-api/locations", { .path = "/saas-api/public-api/locations" }, NONE },
	{ "/snapshots/snapshot-status/s1", { .path = "/snapshots/snapshot-status/s1" }, NONE },
	{ "/marketplace/app/a/installations",
	  { .path = "/marketplace/app/a/installations" },
	  NONE },
	{ "/conversations/c1", { .path = "/conversations/c1" }, NONE },
	{ "/contacts/c1", { .path = "/contacts/c1" }, NONE },
	{ "empty wildcard segment", { .path = "/conversations/messages//locations/P1" }, NONE },
	{ "empty id segment", { .path = "/locations//tags" }, NONE },
	{ "prefix of a literal", { .path = "/locationsX/P1" }, NONE },
	{ "literal inside", { .path = "/xlocations/P1" }, NONE },
	{ "v1 paths are not v2 forms", { .path = "/v1/locations/P1" }, NONE },
	{ "no leading slash", { .path = "locations/P1" }, NONE },
	{ "%00 in the id", { .path = "/locations/P1%00/tags" }, NONE },
	{ "%2F in the id", { .path = "/locations/P1%2Fx" }, NONE },
	{ "broken escape", { .path = "/locations/P1%g0" }, NONE },
	{ "lone percent", { .path = "/locations/%" }, NONE },
	{ "dot segment", { .path = "/locations/../companies" }, NONE },
	{ "invalid UTF-8", { .path = "/locations/\xc3\x28" }, NONE },
	{ "65 characters",
	  { .path = "/locations/"
	            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
	  NONE },
	{ "65 characters once decoded",
	  { .path = "/locations/"
	            "%61aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
	  NONE },
	{ "path beats body",
	  { .path = "/companies/C1", .ctype = JSON_CT, .body = "{\"locationId\":\"B1\"}" },
	  PC("C1") },
	{ "root", { .path = "/" }, NONE },
	{ "empty", { .path = "" }, NONE },
};

Test(classify, path)
{
	run_table(path_cases, N_OF(path_cases));
}

/* ---------------------------------------------------------------------------------------- */
/* Body                                                                                      */

static const struct tc body_cases[] = {
	{ "locationId", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\"}" }, BL("B1") },
	{ "companyId", { .ctype = JSON_CT, .body = "{\"companyId\":\"C1\"}" }, BC("C1") },
	{ "altId + altType location",
	  { .ctype = JSON_CT, .body = "{\"altId\":\"A1\",\"altType\":\"location\"}" },
	  BL("A1") },
	{ "altType first, company",
	  { .ctype = JSON_CT, .body = "{\"altType\":\"company\",\"altId\":\"A1\"}" },
	  BC("A1") },
	{ "altId alone", { .ctype = JSON_CT, .body = "{\"altId\":\"A1\"}" }, NONE },
	{ "altId, other altType",
	  { .ctype = JSON_CT, .body = "{\"altId\":\"A1\",\"altType\":\"contact\"}" },
	  NONE },
	{ "location before company",
	  { .ctype = JSON_CT, .body = "{\"companyId\":\"C1\",\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "company before altId",
	  { .ctype = JSON_CT,
	    .body = "{\"altId\":\"A1\",\"altType\":\"location\",\"companyId\":\"C1\"}" },
	  BC("C1") },
	{ "among other members",
	  { .ctype = JSON_CT,
	    .body = "{\"name\":\"x\",\"n\":-1.5e3,\"ok\":true,\"no\":false,\"z\":null,"
	            "\"list\":[1,{\"a\":\"}\"},\"]\"],\"locationId\":\"B1\",\"tail\":{}}" },
	  BL("B1") },
	{ "nested only",
	  { .ctype = JSON_CT, .body = "{\"contact\":{\"locationId\":\"N1\"}}" },
	  NONE },
	{ "nested in an array",
	  { .ctype = JSON_CT, .body = "{\"items\":[{\"locationId\":\"N1\"}]}" },
	  NONE },
	{ "nested, then top level",
	  { .ctype = JSON_CT,
	    .body = "{\"contact\":{\"locationId\":\"N1\",\"companyId\":\"N2\"},"
	            "\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "key inside a string value",
	  { .ctype = JSON_CT, .body = "{\"note\":\"\\\"locationId\\\":\\\"N1\\\"\"}" },
	  NONE },
	{ "top-level array", { .ctype = JSON_CT, .body = "[{\"locationId\":\"B1\"}]" }, NONE },
	{ "number value", { .ctype = JSON_CT, .body = "{\"locationId\":123}" }, NONE },
	{ "null value",
	  { .ctype = JSON_CT, .body = "{\"locationId\":null,\"companyId\":\"C1\"}" },
	  BC("C1") },
	{ "array value", { .ctype = JSON_CT, .body = "{\"locationId\":[\"B1\"]}" }, NONE },
	{ "object value", { .ctype = JSON_CT, .body = "{\"locationId\":{\"id\":\"B1\"}}" }, NONE },
	{ "escaped id", { .ctype = JSON_CT, .body = "{\"locationId\":\"B\\u0031\"}" }, BL("B1") },
	{ "escaped key", { .ctype = JSON_CT, .body = "{\"location\\u0049d\":\"B1\"}" }, BL("B1") },
	{ "escaped slash in id", { .ctype = JSON_CT, .body = "{\"locationId\":\"B\\/1\"}" }, NONE },
	{ "non-ASCII escape",
	  { .ctype = JSON_CT, .body = "{\"locationId\":\"B\\u00e91\"}" },
	  NONE },
	{ "escaped NUL", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\\u0000\"}" }, NONE },
	{ "escaped newline", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\\n\"}" }, NONE },
	{ "raw UTF-8", { .ctype = JSON_CT, .body = "{\"locationId\":\"B\xc3\xa9\"}" }, NONE },
	{ "invalid UTF-8", { .ctype = JSON_CT, .body = "{\"locationId\":\"\xff\xfe\"}" }, NONE },
	{ "empty string", { .ctype = JSON_CT, .body = "{\"locationId\":\"\"}" }, NONE },
	{ "65 characters",
	  { .ctype = JSON_CT,
	    .body = "{\"locationId\":"
	            "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}" },
	  NONE },
	{ "over-long key ignored",
	  { .ctype = JSON_CT,
	    .body = "{\"locationIdlocationIdlocationId\":\"X1\",\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "duplicate: the last wins",
	  { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\",\"locationId\":\"B2\"}" },
	  BL("B2") },
	{ "duplicate: the last valid wins",
	  { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\",\"locationId\":\"bad id\"}" },
	  BL("B1") },
	{ "blanks everywhere",
	  { .ctype = JSON_CT,
	    .body = " \r\n\t{ \"x\" : [ 1 , 2 ] ,\n \"locationId\" : \"B1\" } \n" },
	  BL("B1") },
	{ "empty object", { .ctype = JSON_CT, .body = "{}" }, NONE },
	{ "empty body", { .ctype = JSON_CT, .body = "" }, NONE },
	/* Content types. */
	{ "charset parameter",
	  { .ctype = "application/json; charset=utf-8", .body = "{\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "upper case",
	  { .ctype = "Application/JSON", .body = "{\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "blanks around",
	  { .ctype = " application/json ;x=y", .body = "{\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "+json",
	  { .ctype = "application/vnd.api+json", .body = "{\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "+json with parameters",
	  { .ctype = "application/merge-patch+json; charset=utf-8",
	    .body = "{\"locationId\":\"B1\"}" },
	  BL("B1") },
	{ "text/plain", { .ctype = "text/plain", .body = "{\"locationId\":\"B1\"}" }, NONE },
	{ "form", { .ctype = "application/x-www-form-urlencoded", .body = "locationId=B1" }, NONE },
	{ "jsonp", { .ctype = "application/jsonp", .body = "{\"locationId\":\"B1\"}" }, NONE },
	{ "bare +json", { .ctype = "+json", .body = "{\"locationId\":\"B1\"}" }, NONE },
	{ "json in a parameter",
	  { .ctype = "text/plain; x=application/json", .body = "{\"locationId\":\"B1\"}" },
	  NONE },
	{ "empty content type", { .ctype = "", .body = "{\"locationId\":\"B1\"}" }, NONE },
	{ "no content type", { .body = "{\"locationId\":\"B1\"}" }, NONE },
	/* Claims JSON, is not: the rule is skipped. */
	{ "form body", { .ctype = JSON_CT, .body = "locationId=B1" }, NONE },
	{ "missing comma", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\" \"x\":1}" }, NONE },
	{ "trailing comma", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\",}" }, NONE },
	{ "trailing garbage", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\"} x" }, NONE },
	{ "two objects", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\"}{}" }, NONE },
	{ "single quotes", { .ctype = JSON_CT, .body = "{'locationId':'B1'}" }, NONE },
	{ "bare key", { .ctype = JSON_CT, .body = "{locationId:\"B1\"}" }, NONE },
	{ "missing colon", { .ctype = JSON_CT, .body = "{\"locationId\" \"B1\"}" }, NONE },
	{ "bad escape",
	  { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\",\"x\":\"\\q\"}" },
	  NONE },
	{ "bad \\u escape", { .ctype = JSON_CT, .body = "{\"locationId\":\"B\\u00g1\"}" }, NONE },
	{ "raw control character",
	  { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\",\"x\":\"a\tb\"}" },
	  NONE },
	{ "stray closer", { .ctype = JSON_CT, .body = "{\"x\":]\"locationId\":\"B1\"}" }, NONE },
	{ "bad scalar", { .ctype = JSON_CT, .body = "{\"x\":@,\"locationId\":\"B1\"}" }, NONE },
	/* A prefix (the caller passes the first bytes): what was complete counts. */
	{ "cut after the id",
	  { .ctype = JSON_CT, .body = "{\"locationId\":\"B1\",\"x\":[1,2" },
	  BL("B1") },
	{ "cut inside the id", { .ctype = JSON_CT, .body = "{\"locationId\":\"B1" }, NONE },
	{ "cut in an escape", { .ctype = JSON_CT, .body = "{\"locationId\":\"B\\u00" }, NONE },
	{ "cut after the colon", { .ctype = JSON_CT, .body = "{\"locationId\":" }, NONE },
	{ "only a brace", { .ctype = JSON_CT, .body = "{" }, NONE },
};

Test(classify, body)
{
	run_table(body_cases, N_OF(body_cases));
}

Test(classify, body_length_is_respected)
{
	static const char b[] = "{\"locationId\":\"B1\"}{garbage";
	struct classify_header ct = { "content-type", JSON_CT };
	struct classify_input in = { .path = "/",
		                     .path_len = 1,
		                     .headers = &ct,
		                     .n_headers = 1,
		                     .bearer = PIT,
		                     .bearer_len = strlen(PIT),
		                     .body = (const unsigned char *)b,
		                     .body_len = 19 };
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_str_eq(res.resource, "B1");
	in.body_len = sizeof(b) - 1;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
	in.body = NULL;
	in.body_len = 10;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
}

/* ---------------------------------------------------------------------------------------- */
/* Precedence, /oauth/, inject                                                               */

Test(classify, precedence_chain)
{
	struct req r = {
		.path = "/locations/P1",
		.query = "companyId=Q1",
		.h = { { "company-id", "H1" } },
		.ctype = JSON_CT,
		.body = "{\"locationId\":\"B1\"}",
		.bearer = PIT,
	};
	const struct want steps[] = { HC("H1"), QC("Q1"), PL("P1"), BL("B1"), NONE };
	for (size_t i = 0; i < N_OF(steps); i++) {
		struct classify_result res;
		run_req(&r, NULL, NULL, &res);
		char name[32];
		snprintf(name, sizeof(name), "step %zu", i);
		check(name, &res, &steps[i]);
		/* Remove the winning source for the next step. */
		if (i == 0)
			r.h[0][0] = NULL;
		else if (i == 1)
			r.query = NULL;
		else if (i == 2)
			r.path = "/contacts/";
		else if (i == 3)
			r.body = NULL;
	}
}

Test(classify, oauth_paths_are_not_counted)
{
	static const struct {
		const char *path;
		bool counted;
	} cases[] = {
		{ "/oauth/token", false },
		{ "/oauth/locationToken", false },
		{ "/oauth/installedLocations", false },
		{ "/OAuth/token", false },
		{ "/oauth/", false },
		{ "/oauth", true },
		{ "/oauthx/token", true },
		{ "/social-media-posting/oauth/google/start", true },
		{ "/contacts/", true },
		{ "/", true },
		{ NULL, true },
	};
	for (size_t i = 0; i < N_OF(cases); i++) {
		struct req r = { .path = cases[i].path,
			         .ctype = JSON_CT,
			         .body = "{\"locationId\":\"L1\",\"companyId\":\"C1\"}",
			         .bearer = PIT };
		struct classify_result res;
		run_req(&r, NULL, NULL, &res);
		cr_expect_eq(res.is_counted, cases[i].counted, "%s", cases[i].path);
		/* Keys are set either way. */
		cr_expect_str_eq(res.daily_key, "pit:L1", "%s: key", cases[i].path);
	}
}

Test(classify, inject_then_set_credential)
{
	struct req r = {
		.path = "/contacts/", .query = "locationId=L1", .bearer = PIT, .inject = true
	};
	struct classify_result res;
	run_req(&r, NULL, NULL, &res);
	cr_expect_eq(res.cred, CRED_NONE);
	cr_expect_str_eq(res.fingerprint, "");
	cr_expect_eq(res.source, SRC_QUERY);
	cr_expect_str_eq(res.burst_key, "tok:L1");

	const struct {
		const char *name;
		enum classify_cred cred;
		const char *app, *fp;
		const char *want_app, *burst, *daily;
	} cases[] = {
		{ "pit", CRED_PIT, NULL, "0123456789abcdef", "pit", "pit.0123456789abcdef:L1",
		  "pit:L1" },
		{ "oauth", CRED_OAUTH, APP_ID, "fedcba9876543210", APP_ID, APP_ID ":L1",
		  APP_ID ":L1" },
		{ "v1", CRED_V1_KEY, NULL, "0123456789abcdef", "v1", "v1:L1", "v1:L1" },
		{ "opaque", CRED_OPAQUE, "ignored", "0123456789abcdef", "tok", "tok:L1", "tok:L1" },
		{ "oauth without a usable app", CRED_OAUTH, "bad app", "0123456789abcdef", "tok",
		  "tok:L1", "tok:L1" },
		{ "oauth with NULL app", CRED_OAUTH, NULL, NULL, "tok", "tok:L1", "tok:L1" },
	};
	for (size_t i = 0; i < N_OF(cases); i++) {
		struct classify_result c = res;
		classify_set_credential(&c, cases[i].cred, cases[i].app, cases[i].fp);
		cr_expect_eq(c.cred, cases[i].cred, "%s", cases[i].name);
		cr_expect_str_eq(c.app, cases[i].want_app, "%s: app", cases[i].name);
		cr_expect_str_eq(c.burst_key, cases[i].burst, "%s: burst", cases[i].name);
		cr_expect_str_eq(c.daily_key, cases[i].daily, "%s: daily", cases[i].name);
		cr_expect_str_eq(c.resource, "L1", "%s: resource kept", cases[i].name);
		cr_expect_eq(c.source, SRC_QUERY, "%s: source kept", cases[i].name);
	}

	/* No resource: the injected credential's bucket. */
	struct req r2 = { .path = "/contacts/", .inject = true };
	run_req(&r2, NULL, NULL, &res);
	cr_expect_str_eq(res.burst_key, "tok:none");
	classify_set_credential(&res, CRED_PIT, NULL, "0123456789abcdef");
	cr_expect_str_eq(res.burst_key, "pit.0123456789abcdef:fp.0123456789abcdef");
	cr_expect_str_eq(res.daily_key, "pit:fp.0123456789abcdef");
	/* Only hex of the fingerprint reaches a key. */
	classify_set_credential(&res, CRED_PIT, NULL, "01ab:zz}{0123456789abcdef");
	cr_expect_str_eq(res.fingerprint, "01ab");
	cr_expect_str_eq(res.daily_key, "pit:fp.01ab");
}

/* ---------------------------------------------------------------------------------------- */
/* Hostile inputs                                                                            */

Test(classify, huge_header_values_and_names)
{
	size_t n = 1024 * 1024;
	char *big = xmalloc(n + 1);
	memset(big, 'a', n);
	big[n] = '\0';
	char *bigname = xmalloc(n + 1);
	memcpy(bigname, big, n + 1);
	memcpy(bigname, "x-location-id", 13);
	struct classify_header hdrs[] = {
		{ "x-location-id", big },
		{ bigname, "H0" },
		{ "locationId", "H1" },
		{ "Content-Type", big },
	};
	struct classify_input in = { .path = "/",
		                     .path_len = 1,
		                     .headers = hdrs,
		                     .n_headers = 4,
		                     .bearer = PIT,
		                     .bearer_len = strlen(PIT) };
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_HEADER);
	cr_expect_str_eq(res.resource, "H1");
	free(big);
	free(bigname);
}

Test(classify, huge_jwt_bearer)
{
	/* 1 MB that looks like a JWT: malformed, keyed by its fingerprint, never copied. */
	size_t n = 1024 * 1024;
	char *t = xmalloc(n + 1);
	memset(t, 'A', n);
	memcpy(t, "eyJhbGciOiJSUzI1NiJ9.", 21);
	t[n / 2] = '.';
	t[n] = '\0';
	struct classify_input in = {
		.path = "/contacts/", .path_len = 10, .bearer = t, .bearer_len = n
	};
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_eq(res.cred, CRED_JWT_MALFORMED);
	char fp[CLASSIFY_FP_LEN + 1], key[CLASSIFY_KEY_MAX + 1];
	classify_fingerprint(t, n, fp);
	snprintf(key, sizeof(key), "tok:fp.%s", fp);
	cr_expect_str_eq(res.burst_key, key);
	cr_expect_eq(strlen(res.burst_key), 7 + CLASSIFY_FP_LEN);

	/* 1 MB without dots: opaque. */
	t[n / 2] = 'A';
	memset(t, 'B', 21);
	classify_request(&in, &res);
	cr_expect_eq(res.cred, CRED_OPAQUE);
	free(t);
}

Test(classify, embedded_nul_in_bearer)
{
	/* A PIT followed by a NUL and more: not a PIT (the length says 42 bytes). */
	char b[64];
	memcpy(b, PIT, 40);
	b[40] = '\0';
	b[41] = 'x';
	struct classify_input in = { .path = "/", .path_len = 1, .bearer = b, .bearer_len = 42 };
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_eq(res.cred, CRED_OPAQUE);
	in.bearer_len = 40;
	classify_request(&in, &res);
	cr_expect_eq(res.cred, CRED_PIT);
	/* "null\0" is not the empty credential either. */
	in.bearer = "null\0x";
	in.bearer_len = 6;
	classify_request(&in, &res);
	cr_expect_eq(res.cred, CRED_OPAQUE);
}

static void body_test(const unsigned char *body, size_t len, struct classify_result *res)
{
	struct classify_header ct = { "Content-Type", JSON_CT };
	struct classify_input in = { .path = "/contacts/",
		                     .path_len = 10,
		                     .headers = &ct,
		                     .n_headers = 1,
		                     .bearer = PIT,
		                     .bearer_len = strlen(PIT),
		                     .body = body,
		                     .body_len = len };
	classify_request(&in, res);
}

Test(classify, body_sniff_limit)
{
	size_t n = CLASSIFY_BODY_SNIFF + 10000;
	unsigned char *b = xmalloc(n);
	struct classify_result res;

	/* The id first, then a string running past the sniff limit: found. */
	int o = sprintf((char *)b, "{\"locationId\":\"B1\",\"pad\":\"");
	memset(b + o, 'x', n - (size_t)o);
	body_test(b, n, &res);
	cr_expect_eq(res.source, SRC_BODY);
	cr_expect_str_eq(res.resource, "B1");

	/* Padding first, the id after the limit: not seen. */
	for (int whole = 0; whole < 2; whole++) {
		/* whole: the same layout, CLASSIFY_BODY_SNIFF bytes long, so the id is in reach. */
		size_t len = whole ? CLASSIFY_BODY_SNIFF : n;
		o = sprintf((char *)b, "{\"pad\":\"");
		memset(b + o, 'x', len - (size_t)o);
		memcpy(b + len - 20, "\",\"locationId\":\"B1\"}", 20);
		body_test(b, len, &res);
		cr_expect_eq(res.source, whole ? SRC_BODY : SRC_NONE, "whole %d", whole);
	}

	/*
	 * The id's value cut by the limit: "B123456789" starts 4 bytes before it, so only "B123"
	 * is available. A partial id must never be taken.
	 */
	static const char tail[] = "\",\"locationId\":\"";
	size_t id_at = CLASSIFY_BODY_SNIFF - 4;
	o = sprintf((char *)b, "{\"pad\":\"");
	memset(b + o, 'x', id_at - strlen(tail) - (size_t)o);
	memcpy(b + id_at - strlen(tail), tail, strlen(tail));
	memcpy(b + id_at, "B123456789\"}", 12);
	body_test(b, id_at + 12, &res);
	cr_expect_eq(res.source, SRC_NONE, "partial id at the cut: %s", res.resource);
	/* The same body with 12 bytes less padding ends at id_at: the id is whole, and found. */
	memmove(b + o, b + o + 12, id_at - (size_t)o);
	body_test(b, id_at, &res);
	cr_expect_str_eq(res.resource, "B123456789");

	/* Truncated in the middle of a string key at exactly the limit. */
	o = sprintf((char *)b, "{\"locationId\":\"B1\",\"");
	memset(b + o, 'k', n - (size_t)o);
	body_test(b, n, &res);
	cr_expect_str_eq(res.resource, "B1");
	free(b);
}

Test(classify, deep_json_bodies)
{
	size_t depth = 30000; /* 60,000 bytes of brackets: within the sniff limit */
	size_t n = 2 * depth + 64;
	unsigned char *b = xmalloc(n);
	struct classify_result res;

	size_t o = 5;
	memcpy(b, "{\"a\":", o);
	memset(b + o, '[', depth);
	memset(b + o + depth, ']', depth);
	size_t len = o + 2 * depth;
	len += (size_t)sprintf((char *)b + len, ",\"locationId\":\"B1\"}");
	cr_assert_leq(len, CLASSIFY_BODY_SNIFF);
	body_test(b, len, &res);
	cr_expect_str_eq(res.resource, "B1");

	/* Objects nested as deep, keys inside them do not count. */
	len = o;
	for (size_t i = 0; i < 2000; i++) /* 2000 * 24 bytes */
		len += (size_t)sprintf((char *)b + len, "{\"locationId\":\"N1\",\"x\":");
	cr_assert_lt(len, n);
	body_test(b, len, &res);
	cr_expect_eq(res.source, SRC_NONE);
	free(b);

	/* 1 MB of '[' as the whole body, and as a member's value. */
	size_t big = 1024 * 1024;
	b = xmalloc(big);
	memset(b, '[', big);
	body_test(b, big, &res);
	cr_expect_eq(res.source, SRC_NONE);
	memcpy(b, "{\"locationId\":\"B1\",\"a\":", 23);
	body_test(b, big, &res);
	cr_expect_str_eq(res.resource, "B1");
	/* Unbalanced closers in a member's value. */
	memset(b, ']', big);
	memcpy(b, "{\"a\":[", 6);
	body_test(b, big, &res);
	cr_expect_eq(res.source, SRC_NONE);
	free(b);
}

Test(classify, query_with_ten_thousand_parameters)
{
	size_t n_params = 10000;
	char *q = xmalloc(n_params * 24 + 64);
	size_t len = 0;
	for (size_t i = 0; i < n_params; i++)
		len += (size_t)sprintf(q + len, "p%zu=v%zu&", i, i);
	len += (size_t)sprintf(q + len, "locationId=Q1");
	struct classify_input in = { .path = "/",
		                     .path_len = 1,
		                     .query = q,
		                     .query_len = len,
		                     .bearer = PIT,
		                     .bearer_len = strlen(PIT) };
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_str_eq(res.resource, "Q1");

	/* 10,000 invalid candidates, then a valid one. */
	len = 0;
	for (size_t i = 0; i < n_params; i++)
		len += (size_t)sprintf(q + len, "locationId=bad%%00&");
	len += (size_t)sprintf(q + len, "locationId=Q2");
	in.query_len = len;
	classify_request(&in, &res);
	cr_expect_str_eq(res.resource, "Q2");

	/* 10,000 separators only. */
	memset(q, '&', n_params);
	in.query_len = n_params;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
	free(q);
}

Test(classify, huge_path)
{
	size_t n = 1024 * 1024;
	char *p = xmalloc(n);
	memset(p, '/', n);
	struct classify_input in = {
		.path = p, .path_len = n, .bearer = PIT, .bearer_len = strlen(PIT)
	};
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
	memcpy(p, "/locations/P1/", 14);
	memset(p + 14, 'x', n - 14);
	classify_request(&in, &res);
	cr_expect_str_eq(res.resource, "P1");
	memset(p + 11, 'x', 3); /* "/locations/" then a 1 MB segment: not an id */
	memset(p + 14, 'x', n - 14);
	classify_request(&in, &res);
	cr_expect_eq(res.source, SRC_NONE);
	free(p);
}

Test(classify, empty_input)
{
	struct classify_input in;
	memset(&in, 0, sizeof(in));
	struct classify_result res;
	classify_request(&in, &res);
	cr_expect_eq(res.cred, CRED_NONE);
	cr_expect_eq(res.source, SRC_NONE);
	cr_expect(res.is_counted);
	cr_expect_str_eq(res.burst_key, "tok:none");
	cr_expect_str_eq(res.daily_key, "tok:none");
}

/* ---------------------------------------------------------------------------------------- */
/* Every API 2.0 operation (endpoint-resource-map-v2.csv)                                    */

#define MAX_REFS 4

struct ref {
	char src[8];   /* query, body, path */
	char name[32]; /* locationId, location_id, companyId, company_id, altId, altType */
	bool required;
};

struct op {
	char method[8];
	char path[256];
	struct ref loc[MAX_REFS], cmp[MAX_REFS], alt[MAX_REFS];
	size_t n_loc, n_cmp, n_alt;
};

static size_t parse_refs(const char *cell, struct ref *out)
{
	size_t n = 0;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", cell);
	for (char *save = NULL, *tok = strtok_r(buf, ";", &save); tok != NULL;
	     tok = strtok_r(NULL, ";", &save)) {
		cr_assert_lt(n, MAX_REFS);
		char *colon = strchr(tok, ':');
		cr_assert_not_null(colon, "ref without source: %s", tok);
		*colon = '\0';
		snprintf(out[n].src, sizeof(out[n].src), "%s", tok);
		size_t nl = strlen(colon + 1);
		out[n].required = nl > 0 && colon[nl] == '*';
		snprintf(out[n].name, sizeof(out[n].name), "%.*s",
		         (int)(nl - (out[n].required ? 1 : 0)), colon + 1);
		n++;
	}
	return n;
}

/* Read every row; returns the number of operations. The caller frees *ops. */
static size_t load_ops(const char *file, struct op **ops)
{
	FILE *f = fopen(file, "r");
	cr_assert_not_null(f, "cannot open %s", file);
	size_t cap = 1024, n = 0;
	*ops = xmalloc(cap * sizeof(**ops));
	memset(*ops, 0, cap * sizeof(**ops));
	char line[1024];
	bool header = true;
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\r\n")] = '\0';
		if (header) {
			cr_assert_str_eq(line, "spec,method,path,location_ref,company_ref,alt_ref,"
			                       "security");
			header = false;
			continue;
		}
		if (line[0] == '\0')
			continue;
		char *cells[7];
		size_t nc = 0;
		char *p = line;
		while (nc < 7) {
			cells[nc++] = p;
			char *comma = strchr(p, ',');
			if (comma == NULL)
				break;
			*comma = '\0';
			p = comma + 1;
		}
		cr_assert_eq(nc, 7, "row %zu has %zu cells", n + 1, nc);
		cr_assert_lt(n, cap);
		struct op *o = &(*ops)[n++];
		snprintf(o->method, sizeof(o->method), "%s", cells[1]);
		snprintf(o->path, sizeof(o->path), "%s", cells[2]);
		o->n_loc = parse_refs(cells[3], o->loc);
		o->n_cmp = parse_refs(cells[4], o->cmp);
		o->n_alt = parse_refs(cells[5], o->alt);
	}
	fclose(f);
	return n;
}

/* Values by source, distinct per row: a wrong source or kind shows in the id. */
static void val(char *out, size_t cap, const char *what, const char *src, size_t row)
{
	snprintf(out, cap, "%s%c%zu", what, src[0] == 'q' ? 'Q' : src[0] == 'p' ? 'P' : 'B', row);
}

enum csv_mode { CSV_ALL_REFS, CSV_REQUIRED_REFS, CSV_HINT };

struct csv_counts {
	size_t rows, with_id, spec_gaps, by_src[SRC_BODY + 1];
};

static bool uses(const struct ref *r, enum csv_mode mode)
{
	return mode != CSV_REQUIRED_REFS || r->required;
}

/*
 * A few rows have {locationId} in the path but no path ref (the spec omits the parameter): the
 * id is there all the same, and the classifier must find it. Add the missing ref.
 */
static bool add_missing_path_ref(struct op *o, struct ref *refs, size_t *n, const char *name)
{
	char param[40];
	snprintf(param, sizeof(param), "{%s}", name);
	if (strstr(o->path, param) == NULL)
		return false;
	for (size_t i = 0; i < *n; i++)
		if (strcmp(refs[i].src, "path") == 0 && strcmp(refs[i].name, name) == 0)
			return false;
	cr_assert_lt(*n, MAX_REFS);
	snprintf(refs[*n].src, sizeof(refs[*n].src), "path");
	snprintf(refs[*n].name, sizeof(refs[*n].name), "%s", name);
	refs[*n].required = true;
	(*n)++;
	return true;
}

static void run_op(const struct op *op, size_t row, enum csv_mode mode, struct csv_counts *cnt)
{
	struct op oc = *op;
	const struct op *o = &oc;
	bool gap = add_missing_path_ref(&oc, oc.loc, &oc.n_loc, "locationId");
	gap = add_missing_path_ref(&oc, oc.cmp, &oc.n_cmp, "companyId") || gap;
	if (gap)
		cnt->spec_gaps++;
	char path[512], query[512], body[1024], exp_id[64] = "";
	enum classify_source exp_src = SRC_NONE;
	enum classify_res_kind exp_kind = RES_UNKNOWN;
	size_t qn = 0, bn = 0, pn = 0;
	bool q_alt = false, q_alt_type = false, b_alt = false, b_alt_type = false;

	/* Path: each {param} replaced; location/company params named by a path ref get ids. */
	const char *s = o->path;
	size_t k = 0;
	while (*s != '\0') {
		if (*s != '{') {
			path[pn++] = *s++;
			continue;
		}
		const char *close = strchr(s, '}');
		cr_assert_not_null(close);
		char param[64];
		snprintf(param, sizeof(param), "%.*s", (int)(close - s - 1), s + 1);
		char v[64];
		snprintf(v, sizeof(v), "item%zux%zu", row, k++);
		for (size_t i = 0; i < o->n_loc; i++)
			if (strcmp(o->loc[i].src, "path") == 0 &&
			    strcmp(o->loc[i].name, param) == 0)
				val(v, sizeof(v), "loc", "path", row);
		for (size_t i = 0; i < o->n_cmp; i++)
			if (strcmp(o->cmp[i].src, "path") == 0 &&
			    strcmp(o->cmp[i].name, param) == 0)
				val(v, sizeof(v), "cmp", "path", row);
		pn += (size_t)snprintf(path + pn, sizeof(path) - pn, "%s", v);
		s = close + 1;
	}
	path[pn] = '\0';

	/* Query and body: every ref (or only the required ones), plus decoys. */
	qn += (size_t)snprintf(query + qn, sizeof(query) - qn, "limit=20");
	bn += (size_t)snprintf(body + bn, sizeof(body) - bn,
	                       "{\"contact\":{\"locationId\":\"decoyL%zu\",\"companyId\":"
	                       "\"decoyC%zu\",\"altId\":\"decoyA\",\"altType\":\"location\"}",
	                       row, row);
	const struct {
		const struct ref *refs;
		size_t n;
		const char *what;
	} groups[] = { { o->loc, o->n_loc, "loc" },
		       { o->cmp, o->n_cmp, "cmp" },
		       { o->alt, o->n_alt, "alt" } };
	for (size_t g = 0; g < 3; g++) {
		for (size_t i = 0; i < groups[g].n; i++) {
			const struct ref *r = &groups[g].refs[i];
			if (!uses(r, mode) || strcmp(r->src, "path") == 0)
				continue;
			bool is_q = strcmp(r->src, "query") == 0;
			cr_assert(is_q || strcmp(r->src, "body") == 0, "source %s", r->src);
			char v[64];
			if (strcmp(r->name, "altType") == 0) {
				snprintf(v, sizeof(v), "location");
				*(is_q ? &q_alt_type : &b_alt_type) = true;
			} else {
				val(v, sizeof(v), groups[g].what, r->src, row);
				if (strcmp(r->name, "altId") == 0)
					*(is_q ? &q_alt : &b_alt) = true;
			}
			if (is_q)
				qn += (size_t)snprintf(query + qn, sizeof(query) - qn, "&%s=%s",
				                       r->name, v);
			else
				bn += (size_t)snprintf(body + bn, sizeof(body) - bn,
				                       ",\"%s\":\"%s\"", r->name, v);
		}
	}
	/* altId is only meaningful with its altType: add it where the spec leaves it out. */
	if (q_alt && !q_alt_type)
		qn += (size_t)snprintf(query + qn, sizeof(query) - qn, "&altType=location");
	if (b_alt && !b_alt_type)
		bn += (size_t)snprintf(body + bn, sizeof(body) - bn, ",\"altType\":\"location\"");
	bn += (size_t)snprintf(body + bn, sizeof(body) - bn, "}");
	cr_assert_lt(qn, sizeof(query) - 1);
	cr_assert_lt(bn, sizeof(body) - 1);

	/* Expected: query > path > body; location, then company, then altId in each source. */
	static const char *const srcs[] = { "query", "path", "body" };
	static const enum classify_source src_of[] = { SRC_QUERY, SRC_PATH, SRC_BODY };
	for (size_t si = 0; si < 3 && exp_src == SRC_NONE; si++) {
		for (size_t g = 0; g < 3 && exp_src == SRC_NONE; g++) {
			for (size_t i = 0; i < groups[g].n; i++) {
				const struct ref *r = &groups[g].refs[i];
				if (strcmp(r->src, srcs[si]) != 0 ||
				    strcmp(r->name, "altType") == 0)
					continue;
				/* Path ids are always there; query and body per the mode. */
				if (si != 1 && !uses(r, mode))
					continue;
				val(exp_id, sizeof(exp_id), groups[g].what, r->src, row);
				exp_src = src_of[si];
				exp_kind = g == 1 ? RES_COMPANY : RES_LOCATION;
				break;
			}
		}
	}

	static const struct {
		const char *name;
		enum classify_res_kind kind;
	} hints[] = { { "x-location-id", RES_LOCATION }, { "locationId", RES_LOCATION },
		      { "location-id", RES_LOCATION },   { "x-company-id", RES_COMPANY },
		      { "companyId", RES_COMPANY },      { "company-id", RES_COMPANY } };
	char hint_val[32];
	struct classify_header hdrs[3];
	size_t nh = 0;
	hdrs[nh++] = (struct classify_header){ "Content-Type", "application/json" };
	hdrs[nh++] = (struct classify_header){ "Version", "2021-07-28" };
	if (mode == CSV_HINT) {
		snprintf(hint_val, sizeof(hint_val), "hint%zu", row);
		hdrs[nh++] = (struct classify_header){ hints[row % 6].name, hint_val };
		snprintf(exp_id, sizeof(exp_id), "%s", hint_val);
		exp_src = SRC_HEADER;
		exp_kind = hints[row % 6].kind;
	}

	struct classify_input in = {
		.method = o->method,
		.path = path,
		.path_len = pn,
		.query = query,
		.query_len = qn,
		.headers = hdrs,
		.n_headers = nh,
		.bearer = PIT,
		.bearer_len = strlen(PIT),
		.body = (const unsigned char *)body,
		.body_len = bn,
	};
	struct classify_result res;
	classify_request(&in, &res);

	char name[400];
	snprintf(name, sizeof(name), "row %zu %.7s %.255s (mode %d)", row + 2, o->method, o->path,
	         mode);
	cr_expect_eq(res.cred, CRED_PIT, "%s: cred", name);
	cr_expect_eq(res.is_counted, strncmp(o->path, "/oauth/", 7) != 0, "%s: counted", name);
	const struct want w = { exp_src, exp_kind, exp_id[0] != '\0' ? exp_id : NULL };
	check(name, &res, &w);

	cnt->rows++;
	if (exp_src != SRC_NONE)
		cnt->with_id++;
	cnt->by_src[res.source <= SRC_BODY ? res.source : 0]++;
}

static void run_csv(const char *file, struct csv_counts out[3])
{
	struct op *ops = NULL;
	size_t n = load_ops(file, &ops);
	memset(out, 0, 3 * sizeof(out[0]));
	for (int mode = CSV_ALL_REFS; mode <= CSV_HINT; mode++)
		for (size_t i = 0; i < n; i++)
			run_op(&ops[i], i, (enum csv_mode)mode, &out[mode]);
	free(ops);
	for (int mode = CSV_ALL_REFS; mode <= CSV_HINT; mode++) {
		const struct csv_counts *c = &out[mode];
		cr_log_info("%s mode %d: %zu operations, %zu carry an id (query %zu, path %zu, "
		            "body %zu, header %zu; %zu path ids missing from the spec), %zu to "
		            "the per-credential bucket",
		            file, mode, c->rows, c->with_id, c->by_src[SRC_QUERY],
		            c->by_src[SRC_PATH], c->by_src[SRC_BODY], c->by_src[SRC_HEADER],
		            c->spec_gaps, c->by_src[SRC_NONE]);
	}
}

static void csv_path(char *out, size_t cap, const char *rel)
{
	const char *root = getenv("GHLPROXY_SRCDIR");
	snprintf(out, cap, "%s/%s", root != NULL ? root : ".", rel);
}

Test(classify, every_v2_operation)
{
	char file[4096];
	csv_path(file, sizeof(file), "tests/vectors/endpoint-resource-map-v2.csv");
	struct csv_counts c[3];
	run_csv(file, c);
	/*
	 * The vectors copy: all 576 operations parsed; 457 carry an id by their refs, and two
	 * more (GET /locations/{locationId}/timezones, POST /social-media-posting/{locationId}/
	 * posts/bulk-delete) have it in the path without a ref.
	 */
	cr_expect_eq(c[CSV_ALL_REFS].rows, 576);
	cr_expect_eq(c[CSV_ALL_REFS].spec_gaps, 2);
	cr_expect_eq(c[CSV_ALL_REFS].with_id, 459);
	cr_expect_eq(c[CSV_ALL_REFS].by_src[SRC_NONE], 576 - 459);
	cr_expect_eq(c[CSV_ALL_REFS].by_src[SRC_QUERY] + c[CSV_ALL_REFS].by_src[SRC_PATH] +
	                     c[CSV_ALL_REFS].by_src[SRC_BODY],
	             459);
	cr_expect_eq(c[CSV_HINT].by_src[SRC_HEADER], 576);
}

Test(classify, every_v2_operation_shared_data)
{
	/* The shared copy, when this tree sits next to it (not in a bare clone). */
	char file[4096];
	csv_path(file, sizeof(file), "../shared/data/endpoint-resource-map-v2.csv");
	struct stat st;
	if (stat(file, &st) != 0)
		cr_skip_test("no shared data next to the source tree");
	struct csv_counts c[3];
	run_csv(file, c);
	cr_expect_gt(c[CSV_ALL_REFS].rows, 0);
}
