/*
 * fuzz_classify.c: libFuzzer target for a request's way from evhttp to its rate-limit key:
 * route_split_target() / route_authority_is() on the target (with route_parse_url() on it
 * too), headers_check_request() and headers_copy() on the headers, then classify_request()
 * (and, in inject mode, classify_set_credential()), the way request.c calls them.
 *
 * Input (an HTTP request written loosely, so seeds are readable):
 *   byte 0      flags: bit 0 inject mode; bit 1 a configured credential mapping exists;
 *               bit 2 it answers an invalid id; bit 3 it answers a company; bit 4 it answers
 *               an over-long id; bits 5-7 the credential classify_set_credential() gets
 *   line        method
 *   line        request-target (origin form, or absolute form naming an upstream)
 *   lines       "name: value" header fields, up to an empty line (at most MAX_FIELDS)
 *   the rest    body
 * Inject mode takes the injected credential's app id and fingerprint from the fields
 * "x-fuzz-app" and "x-fuzz-fp" (absent: NULL).
 *
 * Checks, beyond "no crash, no leak": the keys are exactly what classify.h says, built from
 * the result's own credential, fingerprint and resource; every id is [A-Za-z0-9_-]{1,64};
 * an OAuth result names the token's own claims; a bearer of 12 characters or more never
 * shows up in a key unless the client also sent it somewhere a resource id is read from;
 * headers_copy() forwards no hop-by-hop or dropped field, and keeps the order of the rest.
 */
#define _GNU_SOURCE /* memmem */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sys/queue.h> /* TAILQ_*; before libevent defines its own TAILQ_ENTRY */
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "classify.h"
#include "fuzz.h"
#include "headers.h"
#include "route.h"

#define MAX_FIELDS 128

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct route_url up_v2, up_v1;

static const char CFG_ID[] = "cfgLoc_0123456789abcd";
static const char CFG_BAD_ID[] = "cfg loc/../x";
static const char CFG_LONG_ID[] =
        "L1234567890123456789012345678901234567890123456789012345678901234"; /* 65 chars */

_Static_assert(sizeof(CFG_LONG_ID) - 1 == CLASSIFY_ID_MAX + 1, "one byte over the limit");

struct lookup_ctx {
	uint8_t flags;
};

static const char *lookup(void *arg, const char *fp, enum classify_res_kind *kind)
{
	const struct lookup_ctx *l = arg;

	fuzz_check(fp != NULL && strlen(fp) == CLASSIFY_FP_LEN);
	fuzz_check(strspn(fp, "0123456789abcdef") == CLASSIFY_FP_LEN);
	/* half of the credentials are mapped */
	if (fp[0] >= '8')
		return NULL;
	*kind = (l->flags & 8) ? RES_COMPANY : RES_LOCATION;
	if (l->flags & 4)
		return CFG_BAD_ID;
	if (l->flags & 16)
		return CFG_LONG_ID;
	return CFG_ID;
}

static void init_once(void)
{
	static bool done;
	char err[128];

	if (done)
		return;
	done = true;
	fuzz_check(route_parse_url("https://services.leadconnectorhq.com", &up_v2, err,
	                           sizeof(err)) == 0);
	fuzz_check(route_parse_url("https://rest.gohighlevel.com", &up_v1, err, sizeof(err)) == 0);
}

/* Keys are ids, hex and the separators ':' and '.', and fit. */
static bool key_ok(const char *k, size_t cap)
{
	size_t n;

	if (!fuzz_terminated(k, cap))
		return false;
	n = strlen(k);
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!fuzz_is_id(k + i, 1) && k[i] != ':' && k[i] != '.')
			return false;
	}
	return true;
}

/* The keys classify.h documents, rebuilt from r's own fields, must be the ones it holds. */
static void check_keys(const struct classify_result *r)
{
	char res[CLASSIFY_ID_MAX + 1], burst[CLASSIFY_KEY_MAX + 1], daily[CLASSIFY_KEY_MAX + 1];
	const char *app;

	fuzz_check(key_ok(r->burst_key, sizeof(r->burst_key)));
	fuzz_check(key_ok(r->daily_key, sizeof(r->daily_key)));
	fuzz_check(fuzz_terminated(r->resource, sizeof(r->resource)));
	fuzz_check(fuzz_terminated(r->app, sizeof(r->app)));
	fuzz_check(fuzz_terminated(r->fingerprint, sizeof(r->fingerprint)));
	fuzz_check(strspn(r->fingerprint, "0123456789abcdefABCDEF") == strlen(r->fingerprint));
	if (r->resource[0] != '\0')
		fuzz_check(classify_id_valid(r->resource, strlen(r->resource)));

	if (r->resource[0] != '\0')
		snprintf(res, sizeof(res), "%s", r->resource);
	else if (r->fingerprint[0] != '\0')
		snprintf(res, sizeof(res), "fp.%s", r->fingerprint);
	else
		snprintf(res, sizeof(res), "none");

	if (r->cred == CRED_OAUTH && classify_id_valid(r->app, strlen(r->app))) {
		app = r->app;
		snprintf(burst, sizeof(burst), "%s:%s", r->app, res);
		snprintf(daily, sizeof(daily), "%s", burst);
	} else if (r->cred == CRED_PIT) {
		app = "pit";
		snprintf(burst, sizeof(burst), "pit.%s:%s", r->fingerprint, res);
		snprintf(daily, sizeof(daily), "pit:%s", res);
	} else if (r->cred == CRED_V1_KEY) {
		app = "v1";
		snprintf(burst, sizeof(burst), "v1:%s", res);
		snprintf(daily, sizeof(daily), "%s", burst);
	} else {
		app = "tok";
		snprintf(burst, sizeof(burst), "tok:%s", res);
		snprintf(daily, sizeof(daily), "%s", burst);
	}
	fuzz_check(strcmp(r->app, app) == 0);
	fuzz_check(strcmp(r->burst_key, burst) == 0);
	fuzz_check(strcmp(r->daily_key, daily) == 0);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode (valid escapes only) or JSON-unescape (\uXXXX below 0x80 and the one-char
 * escapes): the two decodings classify applies before an id is validated. */
static size_t decode(const char *s, size_t n, char *out, bool json)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (!json && s[i] == '%' && n - i >= 3 && hexval(s[i + 1]) >= 0 &&
		    hexval(s[i + 2]) >= 0) {
			out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else if (json && s[i] == '\\' && n - i >= 6 && s[i + 1] == 'u') {
			int v = 0;

			for (int k = 2; k < 6 && v >= 0; k++)
				v = hexval(s[i + k]) < 0 ? -1 : v * 16 + hexval(s[i + k]);
			if (v >= 0 && v < 0x80) {
				out[o++] = (char)v;
				i += 5;
			} else {
				out[o++] = s[i];
			}
		} else if (json && s[i] == '\\' && n - i >= 2) {
			out[o++] = s[++i];
		} else {
			out[o++] = s[i];
		}
	}
	return o;
}

static bool contains(const char *hay, size_t hay_len, const char *needle, size_t n)
{
	return hay_len >= n && memmem(hay, hay_len, needle, n) != NULL;
}

/*
 * A secret reaches a key only through an id the client sent elsewhere (it chose to put it
 * there) or through the configured mapping. Checked for bearers without '.' or ':' (so that
 * any occurrence lies inside one part of the key) and long enough not to match a fingerprint
 * or a constant by chance.
 */
static void check_no_secret(const struct classify_result *r, const char *bearer, size_t blen,
                            const char *target, const struct evkeyvalq *in, const uint8_t *body,
                            size_t body_len)
{
	const struct evkeyval *kv;
	char *dec;
	size_t n;
	bool elsewhere = false;

	if (bearer == NULL || blen < 12 || memchr(bearer, '.', blen) || memchr(bearer, ':', blen))
		return;
	if (!contains(r->burst_key, strlen(r->burst_key), bearer, blen) &&
	    !contains(r->daily_key, strlen(r->daily_key), bearer, blen))
		return;
	if (contains(CFG_ID, strlen(CFG_ID), bearer, blen))
		return;
	dec = fuzz_xmalloc(strlen(target) + body_len + 1);
	n = decode(target, strlen(target), dec, false);
	elsewhere =
	        contains(target, strlen(target), bearer, blen) || contains(dec, n, bearer, blen);
	n = decode((const char *)body, body_len, dec, true);
	elsewhere = elsewhere || contains((const char *)body, body_len, bearer, blen) ||
	            contains(dec, n, bearer, blen);
	TAILQ_FOREACH(kv, in, next)
	{
		if (strcasecmp(kv->key, "authorization") != 0 &&
		    contains(kv->value, strlen(kv->value), bearer, blen))
			elsewhere = true;
	}
	free(dec);
	fuzz_check(elsewhere);
}

/* The rules of headers.h on what headers_copy() let through. */
static void check_copy(const struct evkeyvalq *in, const struct evkeyvalq *out, unsigned flags)
{
	const struct evkeyval *kv, *src = TAILQ_FIRST(in);

	TAILQ_FOREACH(kv, out, next)
	{
		fuzz_check(!headers_is_hop_by_hop(kv->key));
		fuzz_check(!headers_named_by_connection(in, kv->key));
		if (flags & HEADERS_DROP_HOST)
			fuzz_check(strcasecmp(kv->key, "host") != 0);
		if (flags & HEADERS_DROP_LENGTH)
			fuzz_check(strcasecmp(kv->key, "content-length") != 0);
		if (flags & HEADERS_DROP_AUTHORIZATION)
			fuzz_check(strcasecmp(kv->key, "authorization") != 0);
		if (flags & HEADERS_DROP_PROXY_CONTROL)
			fuzz_check(strncasecmp(kv->key, "x-ghl-", 6) != 0);
		if (flags & HEADERS_DROP_EXPECT)
			fuzz_check(strcasecmp(kv->key, "expect") != 0);
		/* in order: each forwarded field is a later field of the input */
		while (src != NULL &&
		       (strcmp(src->key, kv->key) != 0 || strcmp(src->value, kv->value) != 0))
			src = TAILQ_NEXT(src, next);
		fuzz_check(src != NULL);
		src = TAILQ_NEXT(src, next);
	}
}

/* What request.c's bearer_of() does: "Bearer" SP* token SP*. */
static const char *bearer_of(const struct evkeyvalq *in, size_t *len)
{
	const char *auth = evhttp_find_header(in, "Authorization");
	size_t n;

	if (!auth || strncasecmp(auth, "Bearer", 6) != 0 || (auth[6] != ' ' && auth[6] != '\0'))
		return NULL;
	auth += 6;
	while (*auth == ' ')
		auth++;
	n = strlen(auth);
	while (n > 0 && auth[n - 1] == ' ')
		n--;
	*len = n;
	return auth;
}

/* route_parse_url() on any text: a URL it accepts is well-formed and names itself. */
static void fuzz_route_url(const char *s)
{
	struct route_url u;
	char err[128];

	if (route_parse_url(s, &u, err, sizeof(err)) != 0) {
		fuzz_check(fuzz_terminated(err, sizeof(err)) && err[0] != '\0');
		return;
	}
	fuzz_check(fuzz_terminated(u.host, sizeof(u.host)) && u.host[0] != '\0');
	fuzz_check(fuzz_terminated(u.host_header, sizeof(u.host_header)));
	fuzz_check(fuzz_terminated(u.base_path, sizeof(u.base_path)));
	fuzz_check(u.port >= 1 && u.port <= 65535);
	fuzz_check(strlen(u.base_path) == 0 || u.base_path[strlen(u.base_path) - 1] != '/');
	fuzz_check(route_authority_is(&u, u.host_header, strlen(u.host_header)));
}

static void run(uint8_t flags, const char *method, const char *target, const struct evkeyvalq *in,
                const uint8_t *body, size_t body_len)
{
	const char *authority, *path, *q;
	size_t alen;
	struct classify_input ci = { 0 };
	struct classify_result r;
	struct classify_header *hs;
	const struct evkeyval *kv;
	struct evkeyvalq fwd;
	struct lookup_ctx lctx = { flags };
	size_t n_hs = 0;
	bool inject = flags & 1;
	unsigned copy_flags = HEADERS_DROP_HOST | HEADERS_DROP_LENGTH | HEADERS_DROP_PROXY_CONTROL |
	                      HEADERS_DROP_EXPECT | (inject ? HEADERS_DROP_AUTHORIZATION : 0);

	fuzz_route_url(target);
	switch (route_split_target(target, &authority, &alen, &path)) {
	case ROUTE_ORIGIN:
		fuzz_check(path == target && authority == NULL);
		break;
	case ROUTE_ABSOLUTE:
		fuzz_check(alen > 0 && authority + alen == path &&
		           memchr(authority, '@', alen) == NULL);
		fuzz_check(*path == '\0' || *path == '/' || *path == '?');
		if (!route_authority_is(&up_v2, authority, alen) &&
		    !route_authority_is(&up_v1, authority, alen))
			return;
		path = *path ? path : "/";
		break;
	case ROUTE_BAD:
	default:
		return;
	}
	if (headers_check_request(in) != NULL)
		return;

	TAILQ_INIT(&fwd);
	fuzz_check(headers_copy(in, &fwd, copy_flags) == 0);
	check_copy(in, &fwd, copy_flags);
	evhttp_clear_headers(&fwd);

	TAILQ_FOREACH(kv, in, next)
	n_hs++;
	hs = fuzz_xmalloc((n_hs ? n_hs : 1) * sizeof(*hs));
	n_hs = 0;
	TAILQ_FOREACH(kv, in, next)
	{
		hs[n_hs].name = kv->key;
		hs[n_hs].value = kv->value;
		n_hs++;
	}
	q = strchr(path, '?');
	ci.method = method;
	ci.path = path;
	ci.path_len = route_path_len(path);
	ci.query = q ? q + 1 : NULL;
	ci.query_len = q ? strlen(q + 1) : 0;
	ci.headers = hs;
	ci.n_headers = n_hs;
	ci.bearer = bearer_of(in, &ci.bearer_len);
	ci.body = body_len > 0 ? body : NULL;
	ci.body_len = body_len < CLASSIFY_BODY_SNIFF ? body_len : CLASSIFY_BODY_SNIFF;
	ci.is_v1 = route_is_v1(path);
	ci.inject = inject;
	ci.lookup = (flags & 2) ? lookup : NULL;
	ci.lookup_ctx = &lctx;

	classify_request(&ci, &r);
	check_keys(&r);
	fuzz_check(r.is_counted == !(ci.path_len >= 7 && strncasecmp(path, "/oauth/", 7) == 0));
	fuzz_check((r.source == SRC_NONE) == (r.resource[0] == '\0'));
	if (inject || ci.bearer == NULL) {
		fuzz_check(r.cred == CRED_NONE && r.fingerprint[0] == '\0');
	} else {
		char fp[CLASSIFY_FP_LEN + 1];

		classify_fingerprint(ci.bearer, ci.bearer_len, fp);
		fuzz_check(strcmp(fp, r.fingerprint) == 0);
		fuzz_check(r.cred != CRED_NONE);
	}
	if (r.cred == CRED_OAUTH) {
		fuzz_check(r.source == SRC_TOKEN);
		fuzz_check(strcmp(r.resource, r.claims.auth_class_id) == 0);
		fuzz_check(strcmp(r.app, r.claims.app_id) == 0);
	}
	if (r.source == SRC_CONFIG)
		fuzz_check(strcmp(r.resource, CFG_ID) == 0);
	if (!inject)
		check_no_secret(&r, ci.bearer, ci.bearer_len, path, in, body, ci.body_len);

	if (inject) {
		static const enum classify_cred creds[8] = { CRED_NONE,   CRED_EMPTY,
			                                     CRED_OAUTH,  CRED_JWT_MALFORMED,
			                                     CRED_PIT,    CRED_V1_KEY,
			                                     CRED_OPAQUE, CRED_OAUTH };
		const char *app = evhttp_find_header(in, "x-fuzz-app");
		const char *fp = evhttp_find_header(in, "x-fuzz-fp");

		classify_set_credential(&r, creds[flags >> 5], app, fp);
		check_keys(&r);
		fuzz_check(strlen(r.fingerprint) <= CLASSIFY_FP_LEN);
	}
	free(hs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in);
	const uint8_t *line;
	size_t len, n_fields = 0;
	char *method, *target;
	struct evkeyvalq headers;
	uint8_t *body;

	init_once();
	if (!fuzz_line(&in, &line, &len))
		return 0;
	method = fuzz_strndup(line, len);
	if (!fuzz_line(&in, &line, &len)) {
		free(method);
		return 0;
	}
	target = fuzz_strndup(line, len);

	TAILQ_INIT(&headers);
	while (fuzz_line(&in, &line, &len) && len > 0) {
		const uint8_t *colon = memchr(line, ':', len);
		char *name, *value;
		size_t vlen;

		if (colon == NULL || ++n_fields > MAX_FIELDS)
			continue;
		name = fuzz_strndup(line, (size_t)(colon - line));
		colon++;
		vlen = len - (size_t)(colon - line);
		/* one SP: other leading blanks reach classify, which must cope */
		if (vlen > 0 && *colon == ' ') {
			colon++;
			vlen--;
		}
		value = fuzz_strndup(colon, vlen);
		/* evhttp refuses some names and values (CR, LF); the parser never passes them */
		(void)evhttp_add_header(&headers, name, value);
		free(name);
		free(value);
	}
	body = fuzz_xmalloc(in.n);
	if (in.n > 0)
		memcpy(body, in.p, in.n);

	run(flags, method, target, &headers, body, in.n);

	free(body);
	evhttp_clear_headers(&headers);
	free(target);
	free(method);
	return 0;
}
