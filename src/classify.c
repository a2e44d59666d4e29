/*
 * classify.c: which rate-limit key a request counts against, pure.
 *
 * Data enters as a struct classify_input (borrowed; nothing is kept) and leaves in a caller's
 * struct classify_result. Nothing is allocated, except what jansson allocates (and frees) while
 * jwt_read_claims() reads an OAuth token's claims. The one state kept between calls is a small
 * per-thread cache of fingerprints (fp_cache below), which changes no result.
 *
 * The credential is recognised first (classify_request), then the resource is looked up in the
 * order classify.h documents: token claims, configured mapping, hint headers, query, path, body,
 * else a per-credential bucket. Every request-supplied id passes classify_id_valid() before it
 * is used, so a key never holds anything but [A-Za-z0-9_-] ids, hex fingerprints and the fixed
 * separators: never the bearer, never raw client bytes.
 *
 * Every scan is linear in its input and bounded, with no recursion: the headers once per hint
 * name, the query once, the path once per template, at most CLASSIFY_BODY_SNIFF bytes of the body.
 */
#include "classify.h"
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

/* A resource candidate found by one rule. */
struct cand {
	enum classify_res_kind kind;
	char id[CLASSIFY_ID_MAX + 1];
};

static bool is_id_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-';
}

bool classify_id_valid(const char *s, size_t len)
{
	if (s == NULL || len == 0 || len > CLASSIFY_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!is_id_char((unsigned char)s[i]))
			return false;
	}
	return true;
}

/* Take s[0..len) as the candidate when it is a valid id. */
static bool cand_set(struct cand *c, enum classify_res_kind kind, const char *s, size_t len)
{
	if (!classify_id_valid(s, len))
		return false;
	memcpy(c->id, s, len);
	c->id[len] = '\0';
	c->kind = kind;
	return true;
}

/*
 * Percent-decode s[0..len) into out (cap bytes, not NUL-terminated). Returns the decoded length,
 * or -1 when a '%' escape is broken or the result does not fit. '+' is left as is: no id or
 * parameter name we look for contains a space.
 */
static long pct_decode(const char *s, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '%') {
			if (len - i < 3)
				return -1;
			int hi = util_hex_value((unsigned char)s[i + 1]);
			int lo = util_hex_value((unsigned char)s[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			c = (unsigned char)(hi * 16 + lo);
			i += 2;
		}
		if (o == cap)
			return -1;
		out[o++] = (char)c;
	}
	return (long)o;
}

/* Percent-decode then validate an id ("%00", "%2F" and broken escapes make it invalid). */
static bool cand_set_pct(struct cand *c, enum classify_res_kind kind, const char *s, size_t len)
{
	char buf[CLASSIFY_ID_MAX];
	/* An encoded id is at most three times its decoded length: skip the obvious misfits. */
	if (len > 3 * CLASSIFY_ID_MAX)
		return false;
	long n = pct_decode(s, len, buf, sizeof(buf));
	if (n <= 0)
		return false;
	return cand_set(c, kind, buf, (size_t)n);
}

static bool ieq(const char *s, size_t len, const char *lit)
{
	return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Credential                                                                                  */

static void fingerprint_compute(const char *secret, size_t len, char out[CLASSIFY_FP_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	/* An allocation failure inside OpenSSL is the only way this fails: use a fixed digest. */
	if (EVP_Digest(secret != NULL ? secret : "", secret != NULL ? len : 0, md, &md_len,
	               EVP_sha256(), NULL) != 1 ||
	    md_len < CLASSIFY_FP_LEN / 2)
		memset(md, 0, sizeof(md));
	for (size_t i = 0; i < CLASSIFY_FP_LEN / 2; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 0x0f];
	}
	out[CLASSIFY_FP_LEN] = '\0';
	OPENSSL_cleanse(md, sizeof(md));
}

/*
 * Every request's bearer is fingerprinted, and a SHA-256 through EVP costs about 6,000
 * instructions (bench/results/perf.txt, case p): a worker sends the same few credentials again
 * and again. So the last fingerprints are kept, direct-mapped by an FNV-1a hash of the secret,
 * and a hit is a comparison of the whole secret, never of the hash alone. Secrets longer than
 * FP_CACHE_SECRET_MAX (OAuth JWTs) are not kept. An evicted secret is wiped.
 */
#define FP_CACHE_SLOTS      64
#define FP_CACHE_SECRET_MAX 256

struct fp_slot {
	uint16_t len; /* 0: empty */
	char secret[FP_CACHE_SECRET_MAX];
	char fp[CLASSIFY_FP_LEN + 1];
};

static UTIL_THREAD_LOCAL struct fp_slot fp_cache[FP_CACHE_SLOTS];

static uint64_t fnv1a(const char *s, size_t len)
{
	uint64_t h = 14695981039346656037ull;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ull;
	}
	return h;
}

void classify_fingerprint(const char *secret, size_t len, char out[CLASSIFY_FP_LEN + 1])
{
	if (secret == NULL || len == 0 || len > FP_CACHE_SECRET_MAX) {
		fingerprint_compute(secret, len, out);
		return;
	}
	struct fp_slot *slot = &fp_cache[fnv1a(secret, len) % FP_CACHE_SLOTS];
	if (slot->len == len && memcmp(slot->secret, secret, len) == 0) {
		memcpy(out, slot->fp, CLASSIFY_FP_LEN + 1);
		return;
	}
	fingerprint_compute(secret, len, out);
	OPENSSL_cleanse(slot->secret, slot->len);
	memcpy(slot->secret, secret, len);
	slot->len = (uint16_t)len;
	memcpy(slot->fp, out, CLASSIFY_FP_LEN + 1);
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* "", "undefined", "null" with any case and surrounding blanks: a client's unset variable. */
static bool bearer_is_empty(const char *s, size_t len)
{
	while (len > 0 && is_ows(s[0])) {
		s++;
		len--;
	}
	while (len > 0 && is_ows(s[len - 1]))
		len--;
	return len == 0 || ieq(s, len, "undefined") || ieq(s, len, "null");
}

/* "pit-" and 36 characters of a UUID (hex digits and dashes; the grouping is not checked). */
static bool bearer_is_pit(const char *s, size_t len)
{
	if (len != 40 || memcmp(s, "pit-", 4) != 0)
		return false;
	for (size_t i = 4; i < len; i++) {
		if (util_hex_value((unsigned char)s[i]) < 0 && s[i] != '-')
			return false;
	}
	return true;
}

static void classify_credential(const struct classify_input *in, struct classify_result *out)
{
	const char *b = in->bearer;
	size_t len = in->bearer_len;

	classify_fingerprint(b, len, out->fingerprint);
	if (bearer_is_empty(b, len)) {
		out->cred = CRED_EMPTY;
		return;
	}
	if (in->is_v1) {
		out->cred = CRED_V1_KEY;
		return;
	}
	if (bearer_is_pit(b, len)) {
		out->cred = CRED_PIT;
		return;
	}
	switch (jwt_read_claims(b, len, &out->claims)) {
	case JWT_OK:
		out->cred = CRED_OAUTH;
		break;
	case JWT_MALFORMED:
		out->cred = CRED_JWT_MALFORMED;
		break;
	case JWT_NOT_JWT:
	default:
		out->cred = CRED_OPAQUE;
		break;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Rule 3: hint headers                                                                        */

static const struct {
	const char *name;
	enum classify_res_kind kind;
} hint_headers[] = {
	{ "x-location-id", RES_LOCATION }, { "locationId", RES_LOCATION },
	{ "location-id", RES_LOCATION },   { "x-company-id", RES_COMPANY },
	{ "companyId", RES_COMPANY },      { "company-id", RES_COMPANY },
};

static bool from_headers(const struct classify_input *in, struct cand *c)
{
	if (in->headers == NULL)
		return false;
	for (size_t h = 0; h < sizeof(hint_headers) / sizeof(hint_headers[0]); h++) {
		for (size_t i = 0; i < in->n_headers; i++) {
			const struct classify_header *hd = &in->headers[i];
			if (hd->name == NULL || hd->value == NULL ||
			    strcasecmp(hd->name, hint_headers[h].name) != 0)
				continue;
			const char *v = hd->value;
			size_t len = strlen(v);
			while (len > 0 && is_ows(v[0])) {
				v++;
				len--;
			}
			while (len > 0 && is_ows(v[len - 1]))
				len--;
			if (cand_set(c, hint_headers[h].kind, v, len))
				return true;
		}
	}
	return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Rule 4: query                                                                               */

enum { Q_LOCATION_ID, Q_LOCATION_US, Q_COMPANY_ID, Q_COMPANY_US, Q_ALT_ID, Q_N };

static const char *const query_names[Q_N] = {
	[Q_LOCATION_ID] = "locationId", [Q_LOCATION_US] = "location_id",
	[Q_COMPANY_ID] = "companyId",   [Q_COMPANY_US] = "company_id",
	[Q_ALT_ID] = "altId",
};

/* "location" or "company" (any case) as an altType value, else RES_UNKNOWN. */
static enum classify_res_kind alt_kind(const char *s, size_t len)
{
	if (ieq(s, len, "location"))
		return RES_LOCATION;
	if (ieq(s, len, "company"))
		return RES_COMPANY;
	return RES_UNKNOWN;
}

/*
 * One pass over the parameters keeps, per name, the first value that is a valid id (duplicates
 * are rare and the upstream rejects most of them anyway); the names are then tried in order.
 */
static bool from_query(const struct classify_input *in, struct cand *c)
{
	if (in->query == NULL || in->query_len == 0)
		return false;

	struct cand found[Q_N];
	bool has[Q_N] = { false };
	enum classify_res_kind alt_type = RES_UNKNOWN;
	const char *q = in->query;
	const char *end = q + in->query_len;

	while (q < end) {
		const char *amp = memchr(q, '&', (size_t)(end - q));
		const char *pend = amp != NULL ? amp : end;
		const char *eq = memchr(q, '=', (size_t)(pend - q));
		if (eq != NULL) {
			char name[16];
			long n = pct_decode(q, (size_t)(eq - q), name, sizeof(name));
			const char *val = eq + 1;
			size_t val_len = (size_t)(pend - val);
			for (int k = 0; n > 0 && k < Q_N; k++) {
				if (has[k] || strlen(query_names[k]) != (size_t)n ||
				    memcmp(name, query_names[k], (size_t)n) != 0)
					continue;
				has[k] = cand_set_pct(&found[k], RES_UNKNOWN, val, val_len);
			}
			if (n == 7 && memcmp(name, "altType", 7) == 0 && alt_type == RES_UNKNOWN) {
				char tbuf[16];
				long tn = pct_decode(val, val_len, tbuf, sizeof(tbuf));
				if (tn > 0)
					alt_type = alt_kind(tbuf, (size_t)tn);
			}
		}
		q = pend + (amp != NULL ? 1 : 0);
	}

	static const enum classify_res_kind kind_of[Q_ALT_ID] = { RES_LOCATION, RES_LOCATION,
		                                                  RES_COMPANY, RES_COMPANY };
	for (int k = 0; k < Q_ALT_ID; k++) {
		if (has[k]) {
			*c = found[k];
			c->kind = kind_of[k];
			return true;
		}
	}
	if (has[Q_ALT_ID] && alt_type != RES_UNKNOWN) {
		*c = found[Q_ALT_ID];
		c->kind = alt_type;
		return true;
	}
	return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Rule 5: path                                                                                */

/*
 * Every API 2.0 path that carries a location or company id in a segment (from
 * endpoint-resource-map-v2.csv, every row with path:locationId or path:companyId, and two rows
 * whose spec forgot the parameter: /locations/{locationId}/timezones and
 * /social-media-posting/{locationId}/posts/bulk-delete, covered all the same). A template
 * is a list of segments: a literal (matched case-insensitively: a router that ignores case,
 * as Express does by default, serves /Locations/x as /locations/x), "*" (any non-empty segment) or
 * "{L}" / "{C}" (the location or company id). It matches a prefix of the request's segments, so the
 * id may end the path or be followed by more.
 *
 * `reserved` lists the literal segments the API itself uses where the id would go (e.g.
 * /locations/search, /social-media-posting/oauth/google/start): those are routes, never ids.
 */
static const struct path_rule {
	const char *tmpl;
	const char *const *reserved; /* NULL-terminated, or NULL */
} path_rules[] = {
	{ "/locations/{L}", (const char *const[]){ "search", NULL } },
	{ "/social-media-posting/{L}", (const char *const[]){ "oauth", "statistics", NULL } },
	/* OAuth connect routes are oauth/<provider>/start; the id form has two more segments. */
	{ "/social-media-posting/oauth/{L}/*/*",
	  (const char *const[]){ "google", "facebook", "instagram", "linkedin", "twitter", "tiktok",
	                         "tiktok-business", NULL } },
	{ "/affiliate-manager/{L}", NULL },
	{ "/brand-boards/{L}", NULL },
	{ "/companies/{C}", NULL },
	{ "/conversations/locations/{L}", NULL },
	{ "/conversations/messages/*/locations/{L}", NULL },
	{ "/emails/builder/{L}", (const char *const[]){ "data", NULL } },
	{ "/marketplace/app/*/rebilling-config/location/{L}", NULL },
	{ "/phone-system/numbers/location/{L}", NULL },
	{ "/saas-api/public-api/update-saas-subscription/{L}", NULL },
	{ "/saas-api/public-api/enable-saas/{L}", NULL },
	{ "/saas-api/public-api/pause/{L}", NULL },
	{ "/saas-api/public-api/get-saas-subscription/{L}", NULL },
	{ "/saas-api/public-api/bulk-disable-saas/{C}", NULL },
	{ "/saas-api/public-api/bulk-enable-saas/{C}", NULL },
	{ "/saas-api/public-api/update-rebilling/{C}", NULL },
	{ "/saas-api/public-api/agency-plans/{C}", NULL },
	{ "/saas-api/public-api/saas-locations/{C}", NULL },
	{ "/saas/update-saas-subscription/{L}", NULL },
	{ "/saas/enable-saas/{L}", NULL },
	{ "/saas/pause/{L}", NULL },
	{ "/saas/get-saas-subscription/{L}", NULL },
	{ "/saas/bulk-disable-saas/{C}", NULL },
	{ "/saas/bulk-enable-saas/{C}", NULL },
	{ "/saas/update-rebilling/{C}", NULL },
	{ "/saas/agency-plans/{C}", NULL },
	{ "/saas/saas-locations/{C}", NULL },
	{ "/snapshots/snapshot-status/*/location/{L}", NULL },
};

static bool is_reserved(const char *const *reserved, const char *id)
{
	for (; reserved != NULL && *reserved != NULL; reserved++) {
		if (strcasecmp(*reserved, id) == 0)
			return true;
	}
	return false;
}

static bool path_match(const struct path_rule *r, const char *path, size_t path_len, struct cand *c)
{
	const char *t = r->tmpl + 1; /* both start with '/' */
	size_t off = 1;              /* start of the current path segment */
	bool has_id = false;

	while (*t != '\0') {
		if (off > path_len)
			return false; /* the path has fewer segments than the template */
		const char *p = path + off;
		const char *tslash = strchr(t, '/');
		size_t tlen = tslash != NULL ? (size_t)(tslash - t) : strlen(t);
		const char *pslash = memchr(p, '/', path_len - off);
		size_t plen = pslash != NULL ? (size_t)(pslash - p) : path_len - off;

		if (tlen == 3 && t[0] == '{') {
			enum classify_res_kind kind = t[1] == 'L' ? RES_LOCATION : RES_COMPANY;
			if (!cand_set_pct(c, kind, p, plen) || is_reserved(r->reserved, c->id))
				return false;
			has_id = true;
		} else if (tlen == 1 && t[0] == '*') {
			if (plen == 0)
				return false;
		} else if (tlen != plen || strncasecmp(t, p, tlen) != 0) {
			return false;
		}
		t += tlen + (tslash != NULL ? 1 : 0);
		/* After the last segment off is path_len + 1, which the loop head catches. */
		off += plen + 1;
	}
	return has_id;
}

static bool from_path(const struct classify_input *in, struct cand *c)
{
	if (in->path == NULL || in->path_len < 2 || in->path[0] != '/')
		return false;
	for (size_t i = 0; i < sizeof(path_rules) / sizeof(path_rules[0]); i++) {
		if (path_match(&path_rules[i], in->path, in->path_len, c))
			return true;
	}
	return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Rule 6: JSON body                                                                           */

/* Content-Type application/json or any type/subtype+json, parameters allowed, any case. */
static bool content_type_is_json(const struct classify_input *in)
{
	if (in->headers == NULL)
		return false;
	for (size_t i = 0; i < in->n_headers; i++) {
		const struct classify_header *h = &in->headers[i];
		if (h->name == NULL || h->value == NULL || strcasecmp(h->name, "content-type") != 0)
			continue;
		const char *v = h->value;
		while (is_ows(*v))
			v++;
		size_t len = strcspn(v, ";");
		while (len > 0 && is_ows(v[len - 1]))
			len--;
		if (ieq(v, len, "application/json"))
			return true;
		return len > 5 && memchr(v, '/', len) != NULL &&
		       strncasecmp(v + len - 5, "+json", 5) == 0;
	}
	return false;
}

/*
 * A lexical scan of the top-level object of a JSON text that may be cut anywhere (only a prefix
 * of a long body is available). It reads top-level keys and string values, and skips any other
 * value by counting brackets (a counter, not recursion, so nesting depth costs nothing). It is
 * not a validator: it only guarantees that a string it returns was complete and that a clear
 * syntax error is reported as such.
 */
enum scan_status { SCAN_OK, SCAN_END, SCAN_ERROR };

struct scan {
	const unsigned char *p, *end;
};

static void scan_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/*
 * Read a string at s->p (which is '"'), decoding escapes into out (cap bytes). *out_len is set
 * to the decoded length, or to cap + 1 when it did not fit. Any non-ASCII character is kept as
 * a byte >= 0x80 so that it can never pass as an id.
 */
static enum scan_status scan_string(struct scan *s, char *out, size_t cap, size_t *out_len)
{
	size_t o = 0;
	bool overflow = false;
	s->p++;
	for (;;) {
		if (s->p >= s->end)
			return SCAN_END;
		unsigned char c = *s->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return SCAN_ERROR;
		if (c == '\\') {
			if (s->p >= s->end)
				return SCAN_END;
			unsigned char e = *s->p++;
			switch (e) {
			case '"':
			case '\\':
			case '/':
				c = e;
				break;
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'n':
				c = '\n';
				break;
			case 'r':
				c = '\r';
				break;
			case 't':
				c = '\t';
				break;
			case 'u': {
				if (s->end - s->p < 4)
					return SCAN_END;
				unsigned v = 0;
				for (int k = 0; k < 4; k++) {
					int h = util_hex_value(s->p[k]);
					if (h < 0)
						return SCAN_ERROR;
					v = v * 16 + (unsigned)h;
				}
				s->p += 4;
				c = v < 0x80 ? (unsigned char)v : 0x80;
				break;
			}
			default:
				return SCAN_ERROR;
			}
		}
		if (out != NULL) {
			if (o < cap)
				out[o++] = (char)c;
			else
				overflow = true;
		}
	}
	if (out_len != NULL)
		*out_len = overflow ? cap + 1 : o;
	return SCAN_OK;
}

static bool is_scalar_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '+' || c == '.';
}

/* Skip one value of any kind. Nesting is counted, and bracket kinds are not paired up. */
static enum scan_status scan_skip_value(struct scan *s)
{
	size_t depth = 0;
	do {
		scan_ws(s);
		if (s->p >= s->end)
			return SCAN_END;
		unsigned char c = *s->p;
		if (c == '"') {
			enum scan_status st = scan_string(s, NULL, 0, NULL);
			if (st != SCAN_OK)
				return st;
		} else if (c == '{' || c == '[') {
			depth++;
			s->p++;
		} else if (c == '}' || c == ']') {
			if (depth == 0)
				return SCAN_ERROR;
			depth--;
			s->p++;
		} else if (c == ',' || c == ':') {
			if (depth == 0)
				return SCAN_ERROR;
			s->p++;
		} else if (c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n' ||
		           (depth > 0 && is_scalar_char(c))) {
			while (s->p < s->end && is_scalar_char(*s->p))
				s->p++;
			if (s->p >= s->end)
				return SCAN_END; /* a number may go on past the cut */
		} else {
			return SCAN_ERROR;
		}
	} while (depth > 0);
	return SCAN_OK;
}

enum { B_LOCATION_ID, B_COMPANY_ID, B_ALT_ID, B_ALT_TYPE, B_N };

static const char *const body_names[B_N] = {
	[B_LOCATION_ID] = "locationId",
	[B_COMPANY_ID] = "companyId",
	[B_ALT_ID] = "altId",
	[B_ALT_TYPE] = "altType",
};

/*
 * Scan the top-level members. A duplicate key keeps its last valid value, as the upstream's
 * JSON.parse keeps the last. Returns false on a syntax error (the body is then ignored); the
 * end of the available bytes is not an error, and what was complete before it counts.
 */
static bool scan_top_level(struct scan *s, struct cand found[B_N], bool has[B_N])
{
	scan_ws(s);
	if (s->p >= s->end)
		return true;
	if (*s->p != '{')
		return false;
	s->p++;
	bool first = true;
	for (;;) {
		scan_ws(s);
		if (s->p >= s->end)
			return true;
		if (first && *s->p == '}')
			break;
		if (*s->p != '"')
			return false;
		first = false;

		char key[16];
		size_t key_len = 0;
		enum scan_status st = scan_string(s, key, sizeof(key), &key_len);
		if (st != SCAN_OK)
			return st == SCAN_END;
		scan_ws(s);
		if (s->p >= s->end)
			return true;
		if (*s->p != ':')
			return false;
		s->p++;
		scan_ws(s);
		if (s->p >= s->end)
			return true;

		int k = 0;
		while (k < B_N && !(strlen(body_names[k]) == key_len &&
		                    memcmp(key, body_names[k], key_len) == 0))
			k++;
		if (k < B_N && *s->p == '"') {
			char val[CLASSIFY_ID_MAX];
			size_t val_len = 0;
			st = scan_string(s, val, sizeof(val), &val_len);
			if (st != SCAN_OK)
				return st == SCAN_END;
			if (k == B_ALT_TYPE) {
				enum classify_res_kind kind = alt_kind(val, val_len);
				if (kind != RES_UNKNOWN) {
					found[k].kind = kind;
					has[k] = true;
				}
			} else if (cand_set(&found[k], RES_UNKNOWN, val, val_len)) {
				has[k] = true;
			}
		} else {
			st = scan_skip_value(s);
			if (st != SCAN_OK)
				return st == SCAN_END;
		}

		scan_ws(s);
		if (s->p >= s->end)
			return true;
		if (*s->p == '}')
			break;
		if (*s->p != ',')
			return false;
		s->p++;
	}
	/* The closing brace: only blanks may follow. */
	s->p++;
	scan_ws(s);
	return s->p >= s->end;
}

static bool from_body(const struct classify_input *in, struct cand *c)
{
	if (in->body == NULL || in->body_len == 0 || !content_type_is_json(in))
		return false;
	size_t len = in->body_len < CLASSIFY_BODY_SNIFF ? in->body_len : CLASSIFY_BODY_SNIFF;
	struct scan s = { in->body, in->body + len };
	struct cand found[B_N];
	bool has[B_N] = { false };
	if (!scan_top_level(&s, found, has))
		return false;
	if (has[B_LOCATION_ID]) {
		*c = found[B_LOCATION_ID];
		c->kind = RES_LOCATION;
		return true;
	}
	if (has[B_COMPANY_ID]) {
		*c = found[B_COMPANY_ID];
		c->kind = RES_COMPANY;
		return true;
	}
	if (has[B_ALT_ID] && has[B_ALT_TYPE]) {
		*c = found[B_ALT_ID];
		c->kind = found[B_ALT_TYPE].kind;
		return true;
	}
	return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Keys                                                                                        */

static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/*
 * Build app, burst_key and daily_key from cred, fingerprint and resource. Every part is an id,
 * a hex fingerprint or a constant, so the longest key ("<app>:<res>", 64 + 1 + 64) fits.
 */
static void build_keys(struct classify_result *r)
{
	char res[CLASSIFY_ID_MAX + 1]; /* an id, "fp.<fp>" or "none" */
	if (r->resource[0] != '\0')
		copy_str(res, sizeof(res), r->resource);
	else if (r->fingerprint[0] != '\0')
		snprintf(res, sizeof(res), "fp.%s", r->fingerprint);
	else
		copy_str(res, sizeof(res), "none");

	switch (r->cred) {
	case CRED_OAUTH:
		if (classify_id_valid(r->app, strnlen(r->app, sizeof(r->app)))) {
			snprintf(r->burst_key, sizeof(r->burst_key), "%s:%s", r->app, res);
			copy_str(r->daily_key, sizeof(r->daily_key), r->burst_key);
			return;
		}
		break; /* no usable app id: keyed as an unknown credential */
	case CRED_PIT:
		copy_str(r->app, sizeof(r->app), "pit");
		snprintf(r->burst_key, sizeof(r->burst_key), "pit.%s:%s", r->fingerprint, res);
		snprintf(r->daily_key, sizeof(r->daily_key), "pit:%s", res);
		return;
	case CRED_V1_KEY:
		copy_str(r->app, sizeof(r->app), "v1");
		snprintf(r->burst_key, sizeof(r->burst_key), "v1:%s", res);
		copy_str(r->daily_key, sizeof(r->daily_key), r->burst_key);
		return;
	default:
		break;
	}
	copy_str(r->app, sizeof(r->app), "tok");
	snprintf(r->burst_key, sizeof(r->burst_key), "tok:%s", res);
	copy_str(r->daily_key, sizeof(r->daily_key), r->burst_key);
}

/* ------------------------------------------------------------------------------------------ */

static void set_resource(struct classify_result *out, enum classify_source src,
                         const struct cand *c)
{
	out->source = src;
	out->res_kind = c->kind;
	copy_str(out->resource, sizeof(out->resource), c->id);
}

void classify_request(const struct classify_input *in, struct classify_result *out)
{
	memset(out, 0, sizeof(*out));
	out->cred = CRED_NONE;
	out->is_counted = !(in->path != NULL && in->path_len >= 7 &&
	                    strncasecmp(in->path, "/oauth/", 7) == 0);

	if (!in->inject && in->bearer != NULL)
		classify_credential(in, out);

	struct cand c;
	if (out->cred == CRED_OAUTH) {
		/* 1. The token names its own resource; the request is not consulted. */
		copy_str(out->app, sizeof(out->app), out->claims.app_id);
		copy_str(out->resource, sizeof(out->resource), out->claims.auth_class_id);
		out->source = SRC_TOKEN;
		out->res_kind = out->claims.auth_class == JWT_CLASS_LOCATION  ? RES_LOCATION
		                : out->claims.auth_class == JWT_CLASS_COMPANY ? RES_COMPANY
		                                                              : RES_UNKNOWN;
		build_keys(out);
		return;
	}

	/* 2. A configured mapping, for credentials that can be mapped. */
	bool mappable = out->cred == CRED_PIT || out->cred == CRED_V1_KEY ||
	                out->cred == CRED_OPAQUE || out->cred == CRED_JWT_MALFORMED;
	if (mappable && in->lookup != NULL) {
		enum classify_res_kind kind = RES_UNKNOWN;
		const char *id = in->lookup(in->lookup_ctx, out->fingerprint, &kind);
		if (id != NULL && cand_set(&c, kind, id, strnlen(id, CLASSIFY_ID_MAX + 1))) {
			set_resource(out, SRC_CONFIG, &c);
			build_keys(out);
			return;
		}
	}

	if (from_headers(in, &c))
		set_resource(out, SRC_HEADER, &c);
	else if (from_query(in, &c))
		set_resource(out, SRC_QUERY, &c);
	else if (from_path(in, &c))
		set_resource(out, SRC_PATH, &c);
	else if (from_body(in, &c))
		set_resource(out, SRC_BODY, &c);
	build_keys(out);
}

void classify_set_credential(struct classify_result *r, enum classify_cred cred, const char *app,
                             const char *fingerprint)
{
	r->cred = cred;
	memset(r->app, 0, sizeof(r->app));
	memset(r->fingerprint, 0, sizeof(r->fingerprint));
	if (app != NULL && classify_id_valid(app, strnlen(app, CLASSIFY_ID_MAX + 1)))
		copy_str(r->app, sizeof(r->app), app);
	if (fingerprint != NULL) {
		/* Only hex digits reach a key. */
		for (size_t i = 0; i < CLASSIFY_FP_LEN && fingerprint[i] != '\0'; i++) {
			if (util_hex_value((unsigned char)fingerprint[i]) < 0)
				break;
			r->fingerprint[i] = fingerprint[i];
		}
	}
	build_keys(r);
}
