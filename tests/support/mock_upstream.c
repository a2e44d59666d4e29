/*
 * mock_upstream.c: a mock HighLevel API upstream for integration tests (libevent evhttp).
 *
 * It is the judge of the proxy's correctness, so it stays simple and exact:
 *  - every request outside /__mock/ is recorded in arrival order (CLOCK_MONOTONIC ms taken when
 *    the call is counted, i.e. after the optional jitter wait; method; raw URI; headers in
 *    received order; body length and SHA-256; status answered; rate-limit keys) and answered
 *    with a JSON echo, or by a behaviour under /mock/ (status, slow, big, close,
 *    truncate[?bytes=N&sent=M], bigheaders, headers, overlong: extra bytes after the body);
 *  - with --limit N --window-ms W it limits calls per key like HighLevel (sliding or fixed
 *    windows, optional rolling daily limit) and answers 429 with lower-case X-RateLimit-* headers;
 *  - /__mock/ is control (log, reset, stats, spend), never recorded nor limited.
 *  - with --oauth-client-id ID --oauth-client-secret S it is HighLevel's OAuth, strictly:
 *    POST /oauth/token (authorization_code, refresh_token with single-use rotating refresh
 *    tokens; a spent one presented again is counted as a reuse), POST /oauth/locationToken,
 *    JWT-shaped access tokens living --oauth-access-ttl-ms (claims like HighLevel's, iat/exp in
 *    fractional seconds), and 401 Invalid JWT for its own tokens once expired, revoked or never
 *    issued (other bearers are answered as without OAuth). Calls under /oauth/ are recorded (key
 *    "oauth", an "oauth" object saying what happened, never a token or secret) but not limited;
 *    --oauth-delay-ms holds their answers (decided on arrival) to expose concurrent refreshes;
 *    --oauth-odd-answers makes grant answers odd but usable (expires_in as a string, a userId
 *    out of the store's character set), as a changed API might.
 *    Control under /__mock/oauth/ (code, seed, inactive, revoke, stats); /__mock/reset forgets
 *    every token too.
 * Readiness: one datagram "READY=1\nX_MOCK_LISTEN=host:port\nX_MOCK_CONTROL=host:port\n" to
 * $NOTIFY_SOCKET once bound. With TLS, X_MOCK_CONTROL is a second, plain-HTTP listener on
 * 127.0.0.1 that serves only /__mock/ (tests' httpc speaks plain TCP); without TLS it is the
 * same address as X_MOCK_LISTEN.
 * SIGTERM/SIGINT end it with status 0; SIGPIPE is ignored; client errors never end it.
 *
 * Request life (struct call): mock_request_cb -> (jitter timer) -> call_process: count, record,
 * decide -> reply now, or after a timer (slow, OAuth delay), or streamed (big) -> freed by one of
 * on_request_complete (reply written), on_conn_close (connection freed under it) or the code
 * that frees the connection itself (close, truncate).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* major/minor: 2.1 has no getters */
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DAY_MS             86400000.0
#define BIG_PIECE_BYTES    16384 /* a multiple of 256: every full piece of the pattern is equal */
#define MAX_BODY_BYTES     (256LL * 1024 * 1024)
#define MAX_HEADERS_BYTES  (8LL * 1024 * 1024)
#define MAX_BIG_BYTES      (16ULL << 30)
#define MAX_BIGHEAD_BYTES  (16L * 1024 * 1024)
#define MAX_SLOW_MS        600000L
#define TRUNCATE_ANNOUNCED 100000
#define TRUNCATE_SENT      1000
#define CONN_TIMEOUT_S     300
#define OAUTH_MAX_BODY     65536              /* a token call's form or JSON, bytes */
#define OAUTH_REFRESH_MS   (366LL * 86400000) /* refresh tokens' exp claim: a year */
#define OAUTH_SIG_BYTES    256                /* an RS256 signature's size; the bytes are random */
#define OAUTH_SWEEP_AT     10000              /* access tokens kept before expired ones go */
#define OAUTH_MAX_TOKENS   1000000            /* refresh tokens kept (spent ones too) */
/* The scope every token gets (space-separated, as HighLevel answers it). */
#define OAUTH_SCOPE "contacts.readonly contacts.write locations.readonly oauth.readonly oauth.write"

struct options {
	const char *listen;
	const char *tls_cert;
	const char *tls_key;
	long limit;     /* burst N; 0 = no burst limit */
	long window_ms; /* W */
	bool fixed;     /* fixed windows [t0 + kW, t0 + (k+1)W) instead of sliding (t - W, t] */
	long jitter_ms;
	long daily; /* D; 0 = none */
	bool count_rejected;
	uint64_t seed;
	bool has_seed;
	const char *oauth_client_id; /* "<24 hex app id>-<suffix>"; NULL: OAuth off */
	const char *oauth_client_secret;
	long oauth_access_ttl_ms; /* access tokens' life */
	long oauth_delay_ms;      /* /oauth/token and /oauth/locationToken answer this late */
	bool oauth_odd_answers;   /* grant answers: expires_in a string, a non-ASCII userId */
};

/* Times (monotonic ms) at which calls were counted against one key, ascending. */
struct key_state {
	char *key;
	double *t;
	size_t start; /* first live entry */
	size_t end;
	size_t cap;
	struct key_state *next;
};

enum call_step {
	STEP_PROCESS, /* jitter done: count and answer */
	STEP_SLOW,    /* slow delay done: answer */
	STEP_CLOSE,   /* drop the connection without answering */
	STEP_ABANDON, /* the connection went away under a detached request: free it */
	STEP_OAUTH,   /* --oauth-delay-ms done: send the answer decided on arrival */
};

struct oauth_res;

struct call {
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct event *timer;
	enum call_step step;
	bool replied;   /* evhttp_send_reply* / _end called: libevent owns req from now on */
	bool streaming; /* evhttp_send_reply_start called */
	uint64_t big_left;
	json_t *oauth_body; /* a delayed OAuth answer (owned), with its status */
	int oauth_status;
	struct oauth_res *refreshing; /* a refresh of this resource in progress, or NULL */
	unsigned refreshing_epoch;    /* the OAuth state it belongs to (see oauth_reset) */
	struct call *prev;
	struct call *next;
};

static struct options g_opt = { .window_ms = 10000, .oauth_access_ttl_ms = 86399000 };
static struct event_base *g_base;
static struct evhttp *g_http;
static struct evhttp *g_ctl_http; /* plain control listener, only with TLS */
static SSL_CTX *g_ssl_ctx;
static json_t *g_log; /* array of entries, index = position */
static struct key_state *g_keys;
static struct call *g_calls; /* every live call, to free at exit */
static double g_t0_ms;       /* fixed-window origin: the mock's start */
static uint64_t g_rng;
static unsigned char g_pattern[BIG_PIECE_BYTES];

/* ---- small helpers ---- */

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* splitmix64: a tiny seeded generator, so --seed reproduces jitter. */
static uint64_t rng_next(void)
{
	uint64_t z = (g_rng += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static double rng_unit(void)
{
	return (double)(rng_next() >> 11) / 9007199254740992.0; /* [0, 1) */
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[32];
	unsigned int md_len = 0;

	EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL);
	hex_encode(md, 32, out);
}

/* The SHA-256 of an evbuffer, walked chunk by chunk without copying. */
static void sha256_evbuffer(struct evbuffer *buf, char out[65])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char digest[32];
	unsigned int digest_len = 0;
	int n = evbuffer_peek(buf, -1, NULL, NULL, 0);
	struct evbuffer_iovec *v = NULL;

	if (n > 0) {
		v = calloc((size_t)n, sizeof(*v));
	}
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	if (v != NULL) {
		n = evbuffer_peek(buf, -1, NULL, v, n);
		for (int i = 0; i < n; i++) {
			EVP_DigestUpdate(md, v[i].iov_base, v[i].iov_len);
		}
	}
	EVP_DigestFinal_ex(md, digest, &digest_len);
	EVP_MD_CTX_free(md);
	free(v);
	hex_encode(digest, 32, out);
}

/* A token's stand-in in keys: never the token itself. */
static void token_hash(const char *token, char out[17])
{
	char full[65];

	sha256_hex(token, strlen(token), full);
	memcpy(out, full, 16);
	out[16] = '\0';
}

/*
 * A JSON string from arbitrary bytes: as is when valid UTF-8, else each byte >= 0x80 as the
 * code point of the same value (Latin-1), so that the log never loses a request.
 */
static json_t *json_bytes(const char *s, size_t n)
{
	json_t *j = json_stringn(s, n);
	char *u;
	size_t k = 0;

	if (j != NULL) {
		return j;
	}
	u = malloc(2 * n + 1);
	if (u == NULL) {
		return json_string("");
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x80) {
			u[k++] = (char)c;
		} else {
			u[k++] = (char)(0xC0 | (c >> 6));
			u[k++] = (char)(0x80 | (c & 0x3F));
		}
	}
	j = json_stringn(u, k);
	free(u);
	return j;
}

static json_t *json_cstr(const char *s)
{
	return json_bytes(s, strlen(s));
}

static bool parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0') {
		return false;
	}
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max) {
		return false;
	}
	*out = v;
	return true;
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9') {
		return false;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max) {
		return false;
	}
	*out = v;
	return true;
}

static const char *method_name(enum evhttp_cmd_type t)
{
	switch (t) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	}
	return "UNKNOWN";
}

/* ---- rate-limit state ---- */

static struct key_state *key_find(const char *key, bool create)
{
	struct key_state *k;

	for (k = g_keys; k != NULL; k = k->next) {
		if (strcmp(k->key, key) == 0) {
			return k;
		}
	}
	if (!create) {
		return NULL;
	}
	k = calloc(1, sizeof(*k));
	if (k == NULL || (k->key = strdup(key)) == NULL) {
		free(k);
		return NULL;
	}
	k->next = g_keys;
	g_keys = k;
	return k;
}

static void keys_free(void)
{
	while (g_keys != NULL) {
		struct key_state *k = g_keys;

		g_keys = k->next;
		free(k->key);
		free(k->t);
		free(k);
	}
}

/* Forget times that no rule can count any more at `now`. */
static void key_prune(struct key_state *k, double now)
{
	double keep_ms = (double)g_opt.window_ms;

	if (g_opt.daily > 0 && keep_ms < DAY_MS) {
		keep_ms = DAY_MS;
	}
	while (k->start < k->end && k->t[k->start] <= now - keep_ms) {
		k->start++;
	}
	if (k->start == k->end) {
		k->start = k->end = 0;
	}
}

static int key_push(struct key_state *k, double t)
{
	if (k->end == k->cap) {
		if (k->start > 0) {
			memmove(k->t, k->t + k->start, (k->end - k->start) * sizeof(*k->t));
			k->end -= k->start;
			k->start = 0;
		}
		if (k->end == k->cap) {
			size_t ncap = k->cap == 0 ? 64 : k->cap * 2;
			double *nt = realloc(k->t, ncap * sizeof(*nt));

			if (nt == NULL) {
				return -1;
			}
			k->t = nt;
			k->cap = ncap;
		}
	}
	/* The clock is monotonic and the loop single-threaded, so times arrive in order; keep
	 * the array sorted even if not, by clamping (never observed). */
	if (k->end > k->start && t < k->t[k->end - 1]) {
		t = k->t[k->end - 1];
	}
	k->t[k->end++] = t;
	return 0;
}

/* Number of times > from (strict) in k: binary search over the sorted live range. */
static size_t key_count_after(const struct key_state *k, double from, bool inclusive)
{
	size_t lo = k->start;
	size_t hi = k->end;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		bool in = inclusive ? k->t[mid] >= from : k->t[mid] > from;

		if (in) {
			hi = mid;
		} else {
			lo = mid + 1;
		}
	}
	return k->end - lo;
}

/* Calls counted in the burst window that contains `now`. */
static size_t burst_count(const struct key_state *k, double now)
{
	if (k == NULL) {
		return 0;
	}
	if (g_opt.fixed) {
		double w = (double)g_opt.window_ms;
		double ws = g_t0_ms + floor((now - g_t0_ms) / w) * w;

		return key_count_after(k, ws, true);
	}
	return key_count_after(k, now - (double)g_opt.window_ms, false);
}

static size_t daily_count(const struct key_state *k, double now)
{
	return k == NULL ? 0 : key_count_after(k, now - DAY_MS, false);
}

/* ---- keys from the request ---- */

static int b64url_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z') {
		return c - 'A';
	}
	if (c >= 'a' && c <= 'z') {
		return c - 'a' + 26;
	}
	if (c >= '0' && c <= '9') {
		return c - '0' + 52;
	}
	if (c == '-' || c == '+') {
		return 62;
	}
	if (c == '_' || c == '/') {
		return 63;
	}
	return -1;
}

/* Decode base64url (padding optional) into a fresh buffer. NULL if invalid. */
static unsigned char *b64url_decode(const char *s, size_t n, size_t *out_len)
{
	unsigned char *out;
	uint32_t acc = 0;
	int bits = 0;
	size_t k = 0;

	while (n > 0 && s[n - 1] == '=') {
		n--;
	}
	if (n > 65536) {
		return NULL;
	}
	out = malloc(n * 3 / 4 + 3);
	if (out == NULL) {
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		int v = b64url_val((unsigned char)s[i]);

		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[k++] = (unsigned char)(acc >> bits);
		}
	}
	*out_len = k;
	return out;
}

/* The claims object of a JWT-shaped token (three dot-separated parts), or NULL. */
static json_t *jwt_claims(const char *token)
{
	const char *d1 = strchr(token, '.');
	const char *d2 = d1 == NULL ? NULL : strchr(d1 + 1, '.');
	unsigned char *payload;
	size_t len = 0;
	json_t *claims;

	if (d2 == NULL || strchr(d2 + 1, '.') != NULL) {
		return NULL;
	}
	payload = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &len);
	if (payload == NULL) {
		return NULL;
	}
	claims = json_loadb((const char *)payload, len, 0, NULL);
	free(payload);
	if (!json_is_object(claims)) {
		json_decref(claims);
		return NULL;
	}
	return claims;
}

/* "<oauthMeta.client>:<authClassId>" from a JWT's payload, or NULL. */
static char *jwt_key(const char *token)
{
	json_t *claims = jwt_claims(token);
	const char *client;
	const char *cls;
	char *key = NULL;

	if (claims == NULL) {
		return NULL;
	}
	client = json_string_value(json_object_get(json_object_get(claims, "oauthMeta"), "client"));
	cls = json_string_value(json_object_get(claims, "authClassId"));
	if (client != NULL && cls != NULL && asprintf(&key, "%s:%s", client, cls) < 0) {
		key = NULL;
	}
	json_decref(claims);
	return key;
}

/* The location a PIT call is for: x-location-id or locationId header, else ?locationId=. */
static char *pit_resource(struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *v = evhttp_find_header(in, "x-location-id");
	const char *query;
	struct evkeyvalq q;
	char *res = NULL;

	if (v == NULL || *v == '\0') {
		v = evhttp_find_header(in, "locationId");
	}
	if (v != NULL && *v != '\0') {
		return strdup(v);
	}
	query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	if (query == NULL) {
		return NULL;
	}
	TAILQ_INIT(&q);
	if (evhttp_parse_query_str(query, &q) == 0) {
		v = evhttp_find_header(&q, "locationId");
		if (v != NULL && *v != '\0') {
			res = strdup(v);
		}
	}
	evhttp_clear_headers(&q);
	return res;
}

/*
 * The burst and daily keys of a call, like HighLevel's budgets (highlevel-api.md):
 * JWT: "<client>:<authClassId>" for both; PIT: "pit:<hash>:<res>" and "<res>" (or "pit:<hash>"
 * for both without a resource); other bearer or scheme: "tok:<hash>"; none: "anon".
 */
static void request_keys(struct evhttp_request *req, char **burst, char **daily)
{
	const char *auth =
	        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	const char *token;
	char hash[17];
	char *jk;

	*burst = *daily = NULL;
	if (auth == NULL) {
		*burst = strdup("anon");
		*daily = strdup("anon");
		return;
	}
	if (strncasecmp(auth, "Bearer ", 7) != 0) {
		token_hash(auth, hash);
		if (asprintf(burst, "tok:%s", hash) < 0) {
			*burst = NULL;
		}
		*daily = *burst == NULL ? NULL : strdup(*burst);
		return;
	}
	token = auth + 7;
	while (*token == ' ' || *token == '\t') {
		token++;
	}
	token_hash(token, hash);
	if (strncmp(token, "pit-", 4) == 0) {
		char *res = pit_resource(req);

		if (res != NULL) {
			if (asprintf(burst, "pit:%s:%s", hash, res) < 0) {
				*burst = NULL;
			}
			*daily = res;
		} else {
			if (asprintf(burst, "pit:%s", hash) < 0) {
				*burst = NULL;
			}
			*daily = *burst == NULL ? NULL : strdup(*burst);
		}
		return;
	}
	jk = jwt_key(token);
	if (jk != NULL) {
		*burst = jk;
		*daily = strdup(jk);
		return;
	}
	if (asprintf(burst, "tok:%s", hash) < 0) {
		*burst = NULL;
	}
	*daily = *burst == NULL ? NULL : strdup(*burst);
}

/* ---- OAuth state (only with --oauth-client-id) ---- */

/*
 * HighLevel's OAuth, strictly (highlevel-api.md): refresh tokens are single use and rotate; a
 * spent one presented again is a reuse, the mistake that loses an installation, so it is
 * counted apart from tokens that are merely unknown. An access token lives until its exp even
 * after a refresh handed out a newer one (HighLevel does the same). There is no 30 s grace
 * window for identical refresh calls: the mock judges, so a repeated refresh is a reuse.
 * Everything here is freed and forgotten by oauth_reset; g_oauth.epoch tells calls in flight
 * that the resource they point at is gone.
 */

enum oauth_type { OAUTH_LOCATION, OAUTH_COMPANY };

/* One installation of the app: a location or a company. */
struct oauth_res {
	char *id;
	enum oauth_type type;
	char *company_id;   /* the agency of a location, "" when unknown */
	char user_id[24];   /* derived from id: stable across refreshes */
	json_t *approved;   /* Company: approvedLocations (array, owned) or NULL */
	long inactive_left; /* refreshes still to answer "Location is not active" */
	long refreshing;    /* refresh calls decided and not yet answered */
	long concurrent_max;
	long refreshes;
	long reuses;
	struct oauth_res *next;
};

enum oauth_rt_state {
	RT_LIVE,
	RT_SPENT,   /* rotated away: presenting it is a reuse */
	RT_REVOKED, /* killed by a new install or /__mock/oauth/revoke: merely invalid */
};

struct oauth_rt {
	char *token;
	struct oauth_res *res;
	enum oauth_rt_state state;
	struct oauth_rt *next;
};

struct oauth_at {
	char *token;
	struct oauth_res *res;
	int64_t exp_wall_ms; /* the exp claim, in ms: the token is live while now <= exp */
	bool revoked;
	struct oauth_at *next;
};

struct oauth_code {
	char *code;
	struct oauth_res *res;
	char *redirect_uri; /* NULL: any */
	bool used;
	struct oauth_code *next;
};

/* The counters of /__mock/oauth/stats, in its order. */
#define OAUTH_STATS(X)                                                                    \
	X(refreshes)        /* successful refresh_token grants */                         \
	X(code_exchanges)   /* successful authorization_code grants */                    \
	X(reuses)           /* a spent refresh token presented again */                   \
	X(invalid_grants)   /* unknown or revoked refresh token, unknown or used code */  \
	X(location_tokens)  /* successful /oauth/locationToken calls */                   \
	X(unauthorized)     /* 401 Invalid JWT answers */                                 \
	X(inactive_answers) /* 400 Location is not active answers */                      \
	X(concurrent_max)   /* most refresh calls in progress at once for one resource */ \
	X(bad_client)       /* 401 for wrong client credentials */                        \
	X(bad_requests)     /* other 4xx of the OAuth endpoints (fields, content type, ...) */

struct oauth_stats {
#define X(name) long name;
	OAUTH_STATS(X)
#undef X
};

static struct {
	char app_id[25]; /* the 24 hex digits before the client id's '-' */
	struct oauth_res *res;
	struct oauth_rt *rts;
	struct oauth_at *ats;
	struct oauth_code *codes;
	size_t n_rts;
	size_t n_ats;
	struct oauth_stats st;
	unsigned epoch; /* bumped by oauth_reset */
} g_oauth;

static bool oauth_on(void)
{
	return g_opt.oauth_client_id != NULL;
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *oauth_type_name(enum oauth_type t)
{
	return t == OAUTH_COMPANY ? "Company" : "Location";
}

static bool oauth_type_parse(const char *s, enum oauth_type *out)
{
	if (s != NULL && strcmp(s, "Location") == 0) {
		*out = OAUTH_LOCATION;
		return true;
	}
	if (s != NULL && strcmp(s, "Company") == 0) {
		*out = OAUTH_COMPANY;
		return true;
	}
	return false;
}

static void oauth_reset(void)
{
	while (g_oauth.res != NULL) {
		struct oauth_res *r = g_oauth.res;

		g_oauth.res = r->next;
		free(r->id);
		free(r->company_id);
		json_decref(r->approved);
		free(r);
	}
	while (g_oauth.rts != NULL) {
		struct oauth_rt *t = g_oauth.rts;

		g_oauth.rts = t->next;
		free(t->token);
		free(t);
	}
	while (g_oauth.ats != NULL) {
		struct oauth_at *t = g_oauth.ats;

		g_oauth.ats = t->next;
		free(t->token);
		free(t);
	}
	while (g_oauth.codes != NULL) {
		struct oauth_code *k = g_oauth.codes;

		g_oauth.codes = k->next;
		free(k->code);
		free(k->redirect_uri);
		free(k);
	}
	g_oauth.n_rts = g_oauth.n_ats = 0;
	memset(&g_oauth.st, 0, sizeof(g_oauth.st));
	g_oauth.epoch++;
}

static struct oauth_res *oauth_res_find(const char *id)
{
	for (struct oauth_res *r = g_oauth.res; r != NULL; r = r->next) {
		if (strcmp(r->id, id) == 0) {
			return r;
		}
	}
	return NULL;
}

/* Find or create the resource `id`, then (re)describe it. NULL on allocation failure. */
static struct oauth_res *oauth_res_set(const char *id, enum oauth_type type, const char *company,
                                       json_t *approved)
{
	struct oauth_res *r = oauth_res_find(id);
	char hash[17];
	char *cid = strdup(company == NULL ? "" : company);

	if (cid == NULL) {
		return NULL;
	}
	if (r == NULL) {
		r = calloc(1, sizeof(*r));
		if (r == NULL || (r->id = strdup(id)) == NULL) {
			free(r);
			free(cid);
			return NULL;
		}
		token_hash(id, hash);
		snprintf(r->user_id, sizeof(r->user_id), "user%s", hash);
		r->next = g_oauth.res;
		g_oauth.res = r;
	} else if (company == NULL && r->company_id[0] != '\0') {
		free(cid);
		cid = strdup(r->company_id); /* keep what was known */
		if (cid == NULL) {
			return NULL;
		}
	}
	free(r->company_id);
	r->company_id = cid;
	r->type = type;
	if (approved != NULL) {
		json_decref(r->approved);
		r->approved = json_incref(approved);
	}
	return r;
}

static char *b64url_encode(const unsigned char *in, size_t n)
{
	static const char digits[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out = malloc(n / 3 * 4 + 5);
	size_t k = 0;
	size_t i = 0;

	if (out == NULL) {
		return NULL;
	}
	for (; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		out[k++] = digits[v >> 18];
		out[k++] = digits[(v >> 12) & 63];
		out[k++] = digits[(v >> 6) & 63];
		out[k++] = digits[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);

		out[k++] = digits[v >> 18];
		out[k++] = digits[(v >> 12) & 63];
		if (i + 1 < n) {
			out[k++] = digits[(v >> 6) & 63];
		}
	}
	out[k] = '\0';
	return out;
}

/*
 * A JWT-shaped token: base64url header, claims plus "iat" and "exp" as fractional seconds
 * with three decimals (like HighLevel's), and OAUTH_SIG_BYTES random bytes as the signature,
 * which makes every token unique. NULL on failure.
 */
static char *oauth_jwt(json_t *claims, int64_t iat_ms, int64_t exp_ms)
{
	static const char header[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	unsigned char sig[OAUTH_SIG_BYTES];
	char *text = json_dumps(claims, JSON_COMPACT);
	char *payload = NULL;
	char *h64 = NULL;
	char *p64 = NULL;
	char *s64 = NULL;
	char *token = NULL;
	size_t len;

	/* Splice the two numbers in by hand: jansson would print 17 significant digits. */
	if (text == NULL || (len = strlen(text)) < 2 || text[len - 1] != '}') {
		goto out;
	}
	text[len - 1] = '\0';
	if (asprintf(&payload, "%s%s\"iat\":%lld.%03lld,\"exp\":%lld.%03lld}", text,
	             len > 2 ? "," : "", (long long)(iat_ms / 1000), (long long)(iat_ms % 1000),
	             (long long)(exp_ms / 1000), (long long)(exp_ms % 1000)) < 0) {
		payload = NULL;
		goto out;
	}
	if (RAND_bytes(sig, sizeof(sig)) != 1) {
		goto out;
	}
	h64 = b64url_encode((const unsigned char *)header, strlen(header));
	p64 = b64url_encode((const unsigned char *)payload, strlen(payload));
	s64 = b64url_encode(sig, sizeof(sig));
	if (h64 == NULL || p64 == NULL || s64 == NULL ||
	    asprintf(&token, "%s.%s.%s", h64, p64, s64) < 0) {
		token = NULL;
	}
out:
	free(text);
	free(payload);
	free(h64);
	free(p64);
	free(s64);
	return token;
}

/* iat now (ms), never on a whole second, so that the claim always shows its fraction. */
static int64_t oauth_iat_ms(void)
{
	int64_t t = wall_ms();

	return t % 1000 == 0 ? t + 1 : t;
}

static json_t *oauth_scopes(void)
{
	json_t *a = json_array();
	char buf[] = OAUTH_SCOPE;
	char *save = NULL;

	for (char *w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		json_array_append_new(a, json_string(w));
	}
	return a;
}

/* Drop access tokens past their exp once there are many: an expired token and an unknown one
 * get the same 401, so forgetting them changes no answer. */
static void oauth_sweep(int64_t now_wall_ms)
{
	struct oauth_at **pp = &g_oauth.ats;

	if (g_oauth.n_ats < OAUTH_SWEEP_AT) {
		return;
	}
	while (*pp != NULL) {
		struct oauth_at *t = *pp;

		if (t->exp_wall_ms < now_wall_ms) {
			*pp = t->next;
			free(t->token);
			free(t);
			g_oauth.n_ats--;
		} else {
			pp = &t->next;
		}
	}
}

/* A new access token for `res`, living --oauth-access-ttl-ms. NULL on failure. */
static struct oauth_at *oauth_access_new(struct oauth_res *res)
{
	int64_t iat = oauth_iat_ms();
	int64_t exp = iat + g_opt.oauth_access_ttl_ms;
	struct oauth_at *at;
	json_t *claims;

	if (exp % 1000 == 0) {
		exp++;
	}
	oauth_sweep(iat);
	claims = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:{s:o, s:s, s:s, s:s}}",
	                   "authClass", oauth_type_name(res->type), "authClassId", res->id,
	                   "primaryAuthClassId", res->id, "source", "INTEGRATION", "sourceId",
	                   g_opt.oauth_client_id, "channel", "OAUTH", "primaryUserId", res->user_id,
	                   "oauthMeta", "scopes", oauth_scopes(), "client", g_oauth.app_id,
	                   "clientKey", g_opt.oauth_client_id, "versionId", g_oauth.app_id);
	at = calloc(1, sizeof(*at));
	if (claims == NULL || at == NULL || (at->token = oauth_jwt(claims, iat, exp)) == NULL) {
		json_decref(claims);
		free(at);
		return NULL;
	}
	json_decref(claims);
	at->res = res;
	at->exp_wall_ms = exp;
	at->next = g_oauth.ats;
	g_oauth.ats = at;
	g_oauth.n_ats++;
	return at;
}

/* A new live refresh token for `res`; the one live before it is revoked (one installation has
 * one refresh token), unless the caller spends it. NULL on failure. */
static struct oauth_rt *oauth_refresh_new(struct oauth_res *res)
{
	int64_t iat = oauth_iat_ms();
	struct oauth_rt *rt;
	json_t *claims;

	if (g_oauth.n_rts >= OAUTH_MAX_TOKENS) {
		return NULL;
	}
	claims =
	        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "authClass", oauth_type_name(res->type),
	                  "authClassId", res->id, "source", "INTEGRATION", "sourceId",
	                  g_opt.oauth_client_id, "channel", "OAUTH", "tokenType", "refresh_token");
	rt = calloc(1, sizeof(*rt));
	if (claims == NULL || rt == NULL ||
	    (rt->token = oauth_jwt(claims, iat, iat + OAUTH_REFRESH_MS)) == NULL) {
		json_decref(claims);
		free(rt);
		return NULL;
	}
	json_decref(claims);
	for (struct oauth_rt *o = g_oauth.rts; o != NULL; o = o->next) {
		if (o->res == res && o->state == RT_LIVE) {
			o->state = RT_REVOKED;
		}
	}
	rt->res = res;
	rt->state = RT_LIVE;
	rt->next = g_oauth.rts;
	g_oauth.rts = rt;
	g_oauth.n_rts++;
	return rt;
}

static struct oauth_rt *oauth_rt_find(const char *token)
{
	for (struct oauth_rt *t = g_oauth.rts; t != NULL; t = t->next) {
		if (strcmp(t->token, token) == 0) {
			return t;
		}
	}
	return NULL;
}

static struct oauth_at *oauth_at_find(const char *token)
{
	for (struct oauth_at *t = g_oauth.ats; t != NULL; t = t->next) {
		if (strcmp(t->token, token) == 0) {
			return t;
		}
	}
	return NULL;
}

/* What a bearer token is worth to the API. */
enum oauth_verdict {
	AUTH_FOREIGN, /* not the mock's: answered as without OAuth */
	AUTH_LIVE,    /* an access token the mock issued, before its exp */
	AUTH_EXPIRED, /* issued, wall clock past exp */
	AUTH_REVOKED, /* issued, killed by /__mock/oauth/revoke with access_tokens */
	AUTH_REFRESH, /* a refresh token sent as an access token */
	AUTH_UNKNOWN, /* claims of this app (oauthMeta.client or sourceId), never issued */
};

static const char *oauth_verdict_name(enum oauth_verdict v)
{
	switch (v) {
	case AUTH_FOREIGN:
		return "foreign";
	case AUTH_LIVE:
		return "live";
	case AUTH_EXPIRED:
		return "expired";
	case AUTH_REVOKED:
		return "revoked";
	case AUTH_REFRESH:
		return "refresh_token";
	case AUTH_UNKNOWN:
		return "unknown";
	}
	return "?";
}

static enum oauth_verdict oauth_judge(const char *token, struct oauth_at **out)
{
	struct oauth_at *at = oauth_at_find(token);
	enum oauth_verdict v = AUTH_FOREIGN;
	json_t *claims;

	*out = at;
	if (at != NULL) {
		return at->revoked                   ? AUTH_REVOKED
		       : wall_ms() > at->exp_wall_ms ? AUTH_EXPIRED
		                                     : AUTH_LIVE;
	}
	if (oauth_rt_find(token) != NULL) {
		return AUTH_REFRESH;
	}
	claims = jwt_claims(token);
	if (claims != NULL) {
		const char *client = json_string_value(
		        json_object_get(json_object_get(claims, "oauthMeta"), "client"));
		const char *source = json_string_value(json_object_get(claims, "sourceId"));

		if ((client != NULL && strcmp(client, g_oauth.app_id) == 0) ||
		    (source != NULL && strcmp(source, g_opt.oauth_client_id) == 0)) {
			v = AUTH_UNKNOWN; /* forged, or issued before a reset */
		}
		json_decref(claims);
	}
	return v;
}

/* The token of "Authorization: Bearer <token>", or NULL. */
static const char *bearer_token(struct evhttp_request *req)
{
	const char *auth =
	        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");

	if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0) {
		return NULL;
	}
	auth += 7;
	while (*auth == ' ' || *auth == '\t') {
		auth++;
	}
	return auth;
}

/* The verdict on a request's bearer token; AUTH_FOREIGN without OAuth or without a bearer. */
static enum oauth_verdict oauth_judge_request(struct evhttp_request *req, struct oauth_at **at)
{
	const char *token = oauth_on() ? bearer_token(req) : NULL;

	*at = NULL;
	return token == NULL ? AUTH_FOREIGN : oauth_judge(token, at);
}

/* A refresh call of `res` starts (on arrival) or ends (answer sent, or client gone). */
static void oauth_refresh_begin(struct call *c, struct oauth_res *res)
{
	c->refreshing = res;
	c->refreshing_epoch = g_oauth.epoch;
	res->refreshing++;
	if (res->refreshing > res->concurrent_max) {
		res->concurrent_max = res->refreshing;
	}
	if (res->refreshing > g_oauth.st.concurrent_max) {
		g_oauth.st.concurrent_max = res->refreshing;
	}
}

static void oauth_refresh_end(struct call *c)
{
	if (c->refreshing != NULL && c->refreshing_epoch == g_oauth.epoch) {
		c->refreshing->refreshing--;
	}
	c->refreshing = NULL;
}

/* ---- replies ---- */

static void add_header_fmt(struct evhttp_request *req, const char *name, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void add_header_fmt(struct evhttp_request *req, const char *name, const char *fmt, ...)
{
	char value[64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(value, sizeof(value), fmt, ap);
	va_end(ap);
	evhttp_add_header(evhttp_request_get_output_headers(req), name, value);
}

static bool status_has_body(int status)
{
	return !(status < 200 || status == 204 || status == 304);
}

/* evhttp's phrase table stops before 429; the rest it knows. */
static const char *reason_phrase(int status)
{
	return status == 429 ? "Too Many Requests" : NULL;
}

static void call_mark_replied(struct call *c)
{
	c->replied = true;
}

/* Answer `status` with a JSON body (serialised compact). HEAD, 204 and 304 get no body; HEAD
 * still announces the length it would have had. */
static void reply_json(struct call *c, int status, json_t *obj)
{
	struct evhttp_request *req = c->req;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	char *text = json_dumps(obj, JSON_COMPACT);
	size_t len = text == NULL ? 0 : strlen(text);
	struct evbuffer *body = evbuffer_new();

	if (evhttp_find_header(out, "Content-Type") == NULL && status_has_body(status)) {
		evhttp_add_header(out, "Content-Type", "application/json");
	}
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		if (status_has_body(status)) {
			add_header_fmt(req, "Content-Length", "%zu", len);
		}
	} else if (status_has_body(status) && text != NULL) {
		evbuffer_add(body, text, len);
	}
	call_mark_replied(c);
	evhttp_send_reply(req, status, reason_phrase(status), body);
	evbuffer_free(body);
	free(text);
}

/* The echo answered to an ordinary call. */
static json_t *echo_json(struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	json_t *headers = json_array();
	struct evkeyval *h;
	char sha[65];

	TAILQ_FOREACH(h, in, next)
	{
		json_array_append_new(headers,
		                      json_pack("[oo]", json_cstr(h->key), json_cstr(h->value)));
	}
	sha256_evbuffer(body, sha);
	return json_pack("{s:s, s:o, s:o, s:I, s:s}", "method",
	                 method_name(evhttp_request_get_command(req)), "uri",
	                 json_cstr(evhttp_request_get_uri(req)), "headers", headers, "body_len",
	                 (json_int_t)evbuffer_get_length(body), "body_sha256", sha);
}

static void reply_echo(struct call *c, int status)
{
	json_t *echo = echo_json(c->req);

	reply_json(c, status, echo);
	json_decref(echo);
}

/* ---- call lifecycle ---- */

static void call_free(struct call *c)
{
	if (c->prev != NULL) {
		c->prev->next = c->next;
	} else {
		g_calls = c->next;
	}
	if (c->next != NULL) {
		c->next->prev = c->prev;
	}
	if (c->timer != NULL) {
		event_free(c->timer);
	}
	oauth_refresh_end(c);
	json_decref(c->oauth_body);
	free(c);
}

static void call_arm(struct call *c, enum call_step step, double delay_ms)
{
	struct timeval tv;

	if (delay_ms < 0) {
		delay_ms = 0;
	}
	tv.tv_sec = (time_t)(delay_ms / 1000.0);
	tv.tv_usec = (suseconds_t)((delay_ms - (double)tv.tv_sec * 1000.0) * 1000.0);
	if (tv.tv_usec >= 1000000) {
		tv.tv_sec++;
		tv.tv_usec -= 1000000;
	}
	c->step = step;
	evtimer_add(c->timer, &tv);
}

/* The reply was written: libevent frees req after this returns. */
static void on_request_complete(struct evhttp_request *req, void *arg)
{
	struct call *c = arg;

	evhttp_connection_set_closecb(c->evcon, NULL, NULL);
	call_free(c);
}

/*
 * The connection is being freed with the call on it. If we had replied, libevent frees req with
 * the connection. If not, libevent detached req (client went away mid-wait or mid-stream): it is
 * ours to free, by finishing it (evhttp_send_reply* on a detached request only frees it).
 */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	struct call *c = arg;

	c->evcon = NULL;
	if (c->replied) {
		call_free(c);
		return;
	}
	if (evtimer_pending(c->timer, NULL)) {
		return; /* the pending step sees evcon == NULL and finishes it */
	}
	call_arm(c, STEP_ABANDON, 0);
}

/* Finish a call whose connection is gone: free the detached request and the call. */
static void call_abandon(struct call *c)
{
	if (c->streaming) {
		evhttp_send_reply_end(c->req);
	} else {
		evhttp_send_reply(c->req, 500, NULL, NULL);
	}
	call_free(c);
}

/* Drop the connection without (more of) an answer; frees req with it. */
static void call_drop_connection(struct call *c)
{
	struct evhttp_connection *evcon = c->evcon;

	evhttp_connection_set_closecb(evcon, NULL, NULL);
	call_free(c);
	evhttp_connection_free(evcon);
}

/* ---- behaviours ---- */

static void big_next(struct evhttp_connection *evcon, void *arg);

static void big_start(struct call *c, uint64_t bytes, bool chunked)
{
	struct evhttp_request *req = c->req;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char digest[32];
	unsigned int digest_len = 0;
	char sha[65];
	uint64_t left = bytes;

	/* Every full piece is the same bytes (the period, 256, divides the piece). */
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	while (left > 0) {
		size_t n = left < BIG_PIECE_BYTES ? (size_t)left : BIG_PIECE_BYTES;

		EVP_DigestUpdate(md, g_pattern, n);
		left -= n;
	}
	EVP_DigestFinal_ex(md, digest, &digest_len);
	EVP_MD_CTX_free(md);
	hex_encode(digest, 32, sha);

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "application/octet-stream");
	evhttp_add_header(evhttp_request_get_output_headers(req), "X-Mock-Sha256", sha);
	if (!chunked || evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		add_header_fmt(req, "Content-Length", "%llu", (unsigned long long)bytes);
	}
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		call_mark_replied(c);
		evhttp_send_reply(req, 200, NULL, NULL);
		return;
	}
	c->big_left = bytes;
	c->streaming = true;
	evhttp_send_reply_start(req, 200, NULL);
	big_next(c->evcon, c);
}

/* Queue the next piece once the previous one left the output buffer (flow control: a slow
 * reader holds at most one piece here). */
static void big_next(struct evhttp_connection *evcon, void *arg)
{
	struct call *c = arg;
	struct evbuffer *piece;
	size_t n;

	if (c->big_left == 0) {
		call_mark_replied(c);
		evhttp_send_reply_end(c->req);
		return;
	}
	n = c->big_left < BIG_PIECE_BYTES ? (size_t)c->big_left : BIG_PIECE_BYTES;
	c->big_left -= n;
	piece = evbuffer_new();
	evbuffer_add(piece, g_pattern, n);
	evhttp_send_reply_chunk_with_cb(c->req, piece, big_next, c);
	evbuffer_free(piece);
}

static void truncate_sent(struct evhttp_connection *evcon, void *arg)
{
	call_drop_connection(arg);
}

/* Announce `announced` bytes, send `sent` (< announced) of them, then drop the connection. */
static void truncate_start(struct call *c, long announced, long sent)
{
	struct evhttp_request *req = c->req;
	struct evbuffer *piece;

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "application/octet-stream");
	add_header_fmt(req, "Content-Length", "%ld", announced);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		call_mark_replied(c);
		evhttp_send_reply(req, 200, NULL, NULL); /* a HEAD has nothing to cut */
		return;
	}
	c->streaming = true;
	evhttp_send_reply_start(req, 200, NULL);
	piece = evbuffer_new();
	for (long left = sent; left > 0; left -= BIG_PIECE_BYTES)
		evbuffer_add(piece, g_pattern,
		             left < BIG_PIECE_BYTES ? (size_t)left : BIG_PIECE_BYTES);
	evhttp_send_reply_chunk_with_cb(req, piece, truncate_sent, c);
	evbuffer_free(piece);
}

/*
 * /mock/overlong: a response whose body is followed, in the same write, by bytes beyond its
 * Content-Length that look like a second response (a hostile or broken upstream). A client that
 * reuses the connection would read them as the answer to its next request.
 */
static void overlong_reply(struct call *c)
{
	static const char extra[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
	                            "Content-Length: 17\r\n\r\n{\"smuggled\":true}";
	struct evhttp_connection *evcon = c->evcon;
	bool is_head = evhttp_request_get_command(c->req) == EVHTTP_REQ_HEAD;

	reply_echo(c, 200);
	/* evhttp queued the whole reply in the connection's output buffer: append after it. */
	if (!is_head && evcon != NULL)
		bufferevent_write(evhttp_connection_get_bufferevent(evcon), extra,
		                  sizeof(extra) - 1);
}

static void bigheaders_reply(struct call *c, long bytes)
{
	char value[101];
	long total = 0;

	memset(value, 'p', 100);
	value[100] = '\0';
	for (long i = 0; total < bytes; i++) {
		char name[32];

		snprintf(name, sizeof(name), "X-Pad-%ld", i);
		evhttp_add_header(evhttp_request_get_output_headers(c->req), name, value);
		total += (long)strlen(name) + 2 + 100 + 2;
	}
	reply_echo(c, 200);
}

/*
 * /mock/headers?name=value&...: set the given response headers. Framing headers are the mock's:
 * Content-Length is never taken, Transfer-Encoding only as "chunked" (then the echo is sent
 * chunked, so the header is true). Connection and Keep-Alive are sent as given (evhttp closes
 * after a "Connection: close" it sends).
 */
static void headers_reply(struct call *c, const char *query)
{
	struct evkeyvalq q;
	struct evkeyval *kv;
	bool chunked = false;

	TAILQ_INIT(&q);
	if (query != NULL && evhttp_parse_query_str(query, &q) == 0) {
		TAILQ_FOREACH(kv, &q, next)
		{
			if (strcasecmp(kv->key, "Content-Length") == 0) {
				continue;
			}
			if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
				chunked = chunked || strcasecmp(kv->value, "chunked") == 0;
				continue;
			}
			/* evhttp refuses names or values that would split the header. */
			evhttp_add_header(evhttp_request_get_output_headers(c->req), kv->key,
			                  kv->value);
		}
	}
	evhttp_clear_headers(&q);
	if (chunked && evhttp_request_get_command(c->req) != EVHTTP_REQ_HEAD &&
	    c->req->major == 1 && c->req->minor >= 1) {
		json_t *echo = echo_json(c->req);
		char *text = json_dumps(echo, JSON_COMPACT);
		struct evbuffer *b = evbuffer_new();

		evhttp_add_header(evhttp_request_get_output_headers(c->req), "Content-Type",
		                  "application/json");
		evbuffer_add(b, text, strlen(text));
		call_mark_replied(c);
		evhttp_send_reply_start(c->req, 200, NULL); /* no Content-Length: chunked */
		evhttp_send_reply_chunk(c->req, b);
		evhttp_send_reply_end(c->req);
		evbuffer_free(b);
		free(text);
		json_decref(echo);
		return;
	}
	reply_echo(c, 200);
}

/* /mock/status/NNN: NNN in 200..599 (1xx would break HTTP framing); returns the status sent. */
static int status_reply(struct call *c, const char *code_s)
{
	long code;
	json_t *body;

	if (strlen(code_s) != 3 || !parse_long(code_s, 200, 599, &code)) {
		code = 400;
		body = json_pack("{s:i, s:s}", "statusCode", 400, "message",
		                 "mock: /mock/status/NNN wants 200..599");
	} else {
		body = json_pack("{s:i, s:s}", "statusCode", (int)code, "message", "mock status");
	}
	reply_json(c, (int)code, body);
	json_decref(body);
	return (int)code;
}

static const char *query_param(struct evkeyvalq *q, const char *name)
{
	return evhttp_find_header(q, name);
}

/* Run the behaviour of an admitted call. Returns the status actually chosen. */
static int call_behave(struct call *c, const char *path, const char *query)
{
	struct evkeyvalq q;
	int status = 200;
	long n;
	uint64_t bytes;
	const char *v;

	TAILQ_INIT(&q);
	if (query != NULL) {
		evhttp_parse_query_str(query, &q);
	}
	if (strncmp(path, "/mock/status/", 13) == 0) {
		status = status_reply(c, path + 13);
	} else if (strcmp(path, "/mock/slow") == 0) {
		v = query_param(&q, "ms");
		if (parse_long(v == NULL ? "0" : v, 0, MAX_SLOW_MS, &n)) {
			call_arm(c, STEP_SLOW, (double)n);
		} else {
			status = 400;
			reply_echo(c, 400);
		}
	} else if (strcmp(path, "/mock/big") == 0) {
		v = query_param(&q, "bytes");
		if (parse_u64(v, MAX_BIG_BYTES, &bytes)) {
			v = query_param(&q, "chunked");
			big_start(c, bytes, v != NULL && strcmp(v, "1") == 0);
		} else {
			status = 400;
			reply_echo(c, 400);
		}
	} else if (strcmp(path, "/mock/close") == 0) {
		status = 0;
		call_arm(c, STEP_CLOSE, 0); /* not from inside evhttp's read callback */
	} else if (strcmp(path, "/mock/truncate") == 0) {
		long sent = TRUNCATE_SENT;
		v = query_param(&q, "bytes");
		n = TRUNCATE_ANNOUNCED;
		if ((v == NULL || parse_long(v, 2, MAX_BIGHEAD_BYTES, &n)) &&
		    ((v = query_param(&q, "sent")) == NULL ||
		     parse_long(v, 0, MAX_BIGHEAD_BYTES, &sent)) &&
		    sent < n) {
			truncate_start(c, n, sent);
		} else {
			status = 400;
			reply_echo(c, 400);
		}
	} else if (strcmp(path, "/mock/overlong") == 0) {
		overlong_reply(c);
	} else if (strcmp(path, "/mock/bigheaders") == 0) {
		v = query_param(&q, "bytes");
		if (parse_long(v, 0, MAX_BIGHEAD_BYTES, &n)) {
			bigheaders_reply(c, n);
		} else {
			status = 400;
			reply_echo(c, 400);
		}
	} else if (strcmp(path, "/mock/headers") == 0) {
		headers_reply(c, query);
	} else {
		reply_echo(c, 200);
	}
	evhttp_clear_headers(&q);
	return status;
}

/* ---- OAuth endpoints ---- */

#define OAUTH_RT_INVALID "Invalid grant: refresh token is invalid"

static json_t *oauth_error(int status, const char *msg)
{
	return json_pack("{s:i, s:s}", "statusCode", status, "message", msg);
}

/* Send an OAuth answer (taking `body`) now, or after --oauth-delay-ms. A refresh in progress
 * ends when its answer goes out. */
static void oauth_answer(struct call *c, int status, json_t *body)
{
	if (g_opt.oauth_delay_ms > 0) {
		c->oauth_status = status;
		c->oauth_body = body;
		call_arm(c, STEP_OAUTH, (double)g_opt.oauth_delay_ms);
		return;
	}
	oauth_refresh_end(c);
	reply_json(c, status, body);
	json_decref(body);
}

/*
 * The fields of an OAuth call as a JSON object of strings: from a form body
 * (application/x-www-form-urlencoded), or from a JSON object when `allow_json` (other than
 * string values are dropped). NULL, with *why, when the body is neither.
 */
static json_t *oauth_fields(struct evhttp_request *req, bool allow_json, const char **why)
{
	const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	struct evbuffer *buf = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(buf);
	json_t *out = NULL;
	char *text;

	*why = allow_json ? "Content-Type must be application/x-www-form-urlencoded or "
	                    "application/json"
	                  : "Content-Type must be application/x-www-form-urlencoded";
	if (len > OAUTH_MAX_BODY) {
		*why = "body too large";
		return NULL;
	}
	text = malloc(len + 1);
	if (text == NULL) {
		return NULL;
	}
	evbuffer_copyout(buf, text, len);
	text[len] = '\0';
	if (ct != NULL && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0) {
		struct evkeyvalq q;
		struct evkeyval *kv;

		TAILQ_INIT(&q);
		if (strlen(text) == len && evhttp_parse_query_str(text, &q) == 0) {
			out = json_object();
			TAILQ_FOREACH(kv, &q, next)
			{
				json_object_set_new(out, kv->key, json_cstr(kv->value));
			}
		} else {
			*why = "malformed form body";
		}
		evhttp_clear_headers(&q);
	} else if (allow_json && ct != NULL && strncasecmp(ct, "application/json", 16) == 0) {
		json_t *j = json_loadb(text, len, 0, NULL);
		const char *k;
		json_t *v;

		if (json_is_object(j)) {
			out = json_object();
			json_object_foreach(j, k, v)
			{
				if (json_is_string(v)) {
					json_object_set(out, k, v);
				}
			}
		} else {
			*why = "malformed JSON body";
		}
		json_decref(j);
	}
	free(text);
	return out;
}

static json_int_t oauth_expires_in_s(void)
{
	long s = g_opt.oauth_access_ttl_ms / 1000;

	return s < 1 ? 1 : s;
}

/* The answer of a successful grant, with v2 names; rt may be NULL (locationToken). */
static json_t *oauth_grant_answer(struct oauth_res *res, struct oauth_at *at, struct oauth_rt *rt)
{
	json_t *b = json_pack("{s:s, s:s, s:I}", "access_token", at->token, "token_type", "Bearer",
	                      "expires_in", oauth_expires_in_s());

	if (rt != NULL) {
		json_object_set_new(b, "refresh_token", json_string(rt->token));
	}
	json_object_set_new(b, "scope", json_string(OAUTH_SCOPE));
	json_object_set_new(b, "userType", json_string(oauth_type_name(res->type)));
	if (res->type == OAUTH_COMPANY) {
		json_object_set_new(b, "companyId", json_cstr(res->id));
		json_object_set_new(b, "approvedLocations",
		                    res->approved != NULL ? json_deep_copy(res->approved)
		                                          : json_array());
	} else {
		json_object_set_new(b, "locationId", json_cstr(res->id));
		if (res->company_id[0] != '\0') {
			json_object_set_new(b, "companyId", json_cstr(res->company_id));
		}
	}
	json_object_set_new(b, "userId", json_string(res->user_id));
	if (g_opt.oauth_odd_answers) {
		char s[32];
		snprintf(s, sizeof(s), "%lld", (long long)oauth_expires_in_s());
		json_object_set_new(b, "expires_in", json_string(s));
		json_object_set_new(b, "userId",
		                    json_string("us\xc3\xa9r-\xc3\xa9t\xc3\xa9" /* UTF-8 */));
	}
	return b;
}

static void oauth_note(json_t *info, const char *outcome, const struct oauth_res *res)
{
	json_object_set_new(info, "outcome", json_string(outcome));
	if (res != NULL) {
		json_object_set_new(info, "resource", json_cstr(res->id));
	}
}

/* grant_type=authorization_code. `ut` is the requested user type, or NULL. */
static json_t *oauth_grant_code(const char *code, const char *redirect, const enum oauth_type *ut,
                                json_t *info, int *status)
{
	struct oauth_code *k = NULL;
	struct oauth_rt *rt;
	struct oauth_at *at;

	*status = 400;
	if (code == NULL || *code == '\0') {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", NULL);
		return oauth_error(400, "code is required");
	}
	for (k = g_oauth.codes; k != NULL && strcmp(k->code, code) != 0; k = k->next) {
	}
	if (k == NULL || k->used) {
		g_oauth.st.invalid_grants++;
		oauth_note(info, "invalid_grant", k == NULL ? NULL : k->res);
		return oauth_error(400, "Invalid grant: authorization code is invalid");
	}
	if (k->redirect_uri != NULL &&
	    (redirect == NULL || strcmp(redirect, k->redirect_uri) != 0)) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", k->res);
		return oauth_error(400, "Invalid grant: redirect_uri does not match");
	}
	if (ut != NULL && *ut != k->res->type) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", k->res);
		return oauth_error(400, "user_type does not match the installation");
	}
	rt = oauth_refresh_new(k->res); /* a new install: the old refresh token dies */
	at = rt == NULL ? NULL : oauth_access_new(k->res);
	if (at == NULL) {
		*status = 500;
		oauth_note(info, "error", k->res);
		return oauth_error(500, "mock: out of memory");
	}
	k->used = true;
	g_oauth.st.code_exchanges++;
	*status = 200;
	oauth_note(info, "ok", k->res);
	return oauth_grant_answer(k->res, at, rt);
}

/* grant_type=refresh_token. Decided on arrival: the token is spent even if the answer is then
 * lost (client gone during --oauth-delay-ms), as it would be upstream. */
static json_t *oauth_grant_refresh(struct call *c, const char *token, const enum oauth_type *ut,
                                   json_t *info, int *status)
{
	struct oauth_rt *rt = token == NULL ? NULL : oauth_rt_find(token);
	struct oauth_res *res;
	struct oauth_rt *nrt;
	struct oauth_at *at;

	*status = 400;
	if (token == NULL || *token == '\0') {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", NULL);
		return oauth_error(400, "refresh_token is required");
	}
	if (rt == NULL) {
		g_oauth.st.invalid_grants++;
		oauth_note(info, "invalid_grant", NULL);
		return oauth_error(400, OAUTH_RT_INVALID);
	}
	res = rt->res;
	oauth_refresh_begin(c, res);
	if (rt->state == RT_SPENT) {
		g_oauth.st.reuses++;
		res->reuses++;
		oauth_note(info, "reuse", res);
		return oauth_error(400, OAUTH_RT_INVALID);
	}
	if (rt->state == RT_REVOKED) {
		g_oauth.st.invalid_grants++;
		oauth_note(info, "invalid_grant", res);
		return oauth_error(400, OAUTH_RT_INVALID);
	}
	if (ut != NULL && *ut != res->type) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", res);
		return oauth_error(400, "user_type does not match the token");
	}
	if (res->inactive_left > 0) {
		/* Temporary (a paused subscription): the refresh token stays live. */
		res->inactive_left--;
		g_oauth.st.inactive_answers++;
		oauth_note(info, "inactive", res);
		return oauth_error(400, "Location is not active");
	}
	rt->state = RT_SPENT;
	nrt = oauth_refresh_new(res);
	at = nrt == NULL ? NULL : oauth_access_new(res);
	if (at == NULL) {
		*status = 500;
		oauth_note(info, "error", res);
		return oauth_error(500, "mock: out of memory");
	}
	g_oauth.st.refreshes++;
	res->refreshes++;
	*status = 200;
	oauth_note(info, "ok", res);
	return oauth_grant_answer(res, at, nrt);
}

/*
 * POST /oauth/token. v2: form fields client_id, client_secret, grant_type, code, refresh_token,
 * user_type, redirect_uri. With "Version: v3": the same in camelCase (clientId, ...), as a form
 * or JSON. Returns the status; the answer goes out through oauth_answer.
 */
static int oauth_token(struct call *c, json_t *info)
{
	const char *version =
	        evhttp_find_header(evhttp_request_get_input_headers(c->req), "Version");
	bool v3 = version != NULL && strcmp(version, "v3") == 0;
	const char *why = NULL;
	json_t *f = oauth_fields(c->req, v3, &why);
	const char *id = json_string_value(json_object_get(f, v3 ? "clientId" : "client_id"));
	const char *secret =
	        json_string_value(json_object_get(f, v3 ? "clientSecret" : "client_secret"));
	const char *grant = json_string_value(json_object_get(f, v3 ? "grantType" : "grant_type"));
	const char *ut_s = json_string_value(json_object_get(f, v3 ? "userType" : "user_type"));
	enum oauth_type ut = OAUTH_LOCATION;
	json_t *body;
	int status = 400;

	json_object_set_new(info, "endpoint", json_string("token"));
	json_object_set_new(info, "grant_type", json_cstr(grant == NULL ? "" : grant));
	if (ut_s != NULL) {
		json_object_set_new(info, "user_type", json_cstr(ut_s));
	}
	if (f == NULL) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", NULL);
		body = oauth_error(400, why);
	} else if (id == NULL || secret == NULL || strcmp(id, g_opt.oauth_client_id) != 0 ||
	           strcmp(secret, g_opt.oauth_client_secret) != 0) {
		status = 401;
		g_oauth.st.bad_client++;
		oauth_note(info, "bad_client", NULL);
		body = oauth_error(401, "Invalid client credentials");
	} else if (ut_s != NULL && !oauth_type_parse(ut_s, &ut)) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", NULL);
		body = oauth_error(400, "user_type must be Location or Company");
	} else if (grant != NULL && strcmp(grant, "authorization_code") == 0) {
		body = oauth_grant_code(
		        json_string_value(json_object_get(f, "code")),
		        json_string_value(json_object_get(f, v3 ? "redirectUri" : "redirect_uri")),
		        ut_s == NULL ? NULL : &ut, info, &status);
	} else if (grant != NULL && strcmp(grant, "refresh_token") == 0) {
		body = oauth_grant_refresh(c,
		                           json_string_value(json_object_get(
		                                   f, v3 ? "refreshToken" : "refresh_token")),
		                           ut_s == NULL ? NULL : &ut, info, &status);
	} else {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", NULL);
		body = oauth_error(400, "grant_type must be authorization_code or refresh_token");
	}
	json_decref(f);
	oauth_answer(c, status, body);
	return status;
}

static bool json_array_has_string(json_t *a, const char *s)
{
	size_t i;
	json_t *v;

	json_array_foreach(a, i, v)
	{
		if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) {
			return true;
		}
	}
	return false;
}

/* POST /oauth/locationToken: a live Company access token as bearer, fields companyId and
 * locationId (form, or JSON); answers a Location access token (no refresh token). */
static int oauth_location_token(struct call *c, json_t *info, enum oauth_verdict v,
                                struct oauth_at *cat)
{
	const char *why = NULL;
	json_t *f = NULL;
	const char *company;
	const char *loc;
	struct oauth_res *lr;
	struct oauth_at *at;
	json_t *body;
	int status = 400;

	json_object_set_new(info, "endpoint", json_string("locationToken"));
	if (v != AUTH_LIVE) {
		status = 401;
		g_oauth.st.unauthorized++;
		oauth_note(info, "unauthorized", NULL);
		json_object_set_new(info, "reason", json_string(oauth_verdict_name(v)));
		oauth_answer(c, 401, oauth_error(401, "Invalid JWT"));
		return status;
	}
	f = oauth_fields(c->req, true, &why);
	company = json_string_value(json_object_get(f, "companyId"));
	loc = json_string_value(json_object_get(f, "locationId"));
	lr = loc == NULL ? NULL : oauth_res_find(loc);
	if (cat->res->type != OAUTH_COMPANY) {
		status = 403;
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", cat->res);
		body = oauth_error(403, "a Company access token is required");
	} else if (f == NULL) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", cat->res);
		body = oauth_error(400, why);
	} else if (company == NULL || loc == NULL || *loc == '\0') {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", cat->res);
		body = oauth_error(400, "companyId and locationId are required");
	} else if (strcmp(company, cat->res->id) != 0) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", cat->res);
		body = oauth_error(400, "companyId does not match the token");
	} else if ((lr != NULL && lr->type != OAUTH_LOCATION) ||
	           (json_array_size(cat->res->approved) > 0 &&
	            !json_array_has_string(cat->res->approved, loc))) {
		g_oauth.st.bad_requests++;
		oauth_note(info, "bad_request", cat->res);
		body = oauth_error(400, "location is not approved for this company");
	} else if ((lr = oauth_res_set(loc, OAUTH_LOCATION, company, NULL)) == NULL ||
	           (at = oauth_access_new(lr)) == NULL) {
		status = 500;
		oauth_note(info, "error", cat->res);
		body = oauth_error(500, "mock: out of memory");
	} else {
		status = 200;
		g_oauth.st.location_tokens++;
		oauth_note(info, "ok", lr);
		body = oauth_grant_answer(lr, at, NULL);
	}
	json_decref(f);
	oauth_answer(c, status, body);
	return status;
}

/* 401 Invalid JWT for an API call whose bearer the mock issued but no longer honours. */
static int oauth_unauthorized(struct call *c, json_t *info, enum oauth_verdict v)
{
	json_t *b = oauth_error(401, "Invalid JWT");

	g_oauth.st.unauthorized++;
	json_object_set_new(info, "outcome", json_string("unauthorized"));
	json_object_set_new(info, "reason", json_string(oauth_verdict_name(v)));
	reply_json(c, 401, b);
	json_decref(b);
	return 401;
}

static bool oauth_endpoint(const char *path)
{
	return strcmp(path, "/oauth/token") == 0 || strcmp(path, "/oauth/locationToken") == 0;
}

/* /oauth/token or /oauth/locationToken: POST only (the rest is Express' 404). */
static int oauth_behave(struct call *c, const char *path, json_t *info, enum oauth_verdict v,
                        struct oauth_at *at)
{
	char msg[64];

	if (evhttp_request_get_command(c->req) != EVHTTP_REQ_POST) {
		g_oauth.st.bad_requests++;
		json_object_set_new(info, "outcome", json_string("bad_request"));
		snprintf(msg, sizeof(msg), "Cannot %s %s",
		         method_name(evhttp_request_get_command(c->req)), path);
		oauth_answer(c, 404, oauth_error(404, msg));
		return 404;
	}
	if (strcmp(path, "/oauth/token") == 0) {
		return oauth_token(c, info);
	}
	return oauth_location_token(c, info, v, at);
}

/* Count the call, record it, and answer (or start answering) it. */
static void call_process(struct call *c)
{
	struct evhttp_request *req = c->req;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri == NULL ? NULL : evhttp_uri_get_path(uri);
	const char *query = uri == NULL ? NULL : evhttp_uri_get_query(uri);
	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	double t = now_ms();
	char *bkey = NULL;
	char *dkey = NULL;
	struct key_state *bk = NULL;
	struct key_state *dk = NULL;
	bool burst_refused = false;
	bool daily_refused = false;
	size_t bcount = 0;
	size_t dcount = 0;
	json_t *entry;
	json_t *headers = json_array();
	struct evkeyval *h;
	char sha[65];
	int status;
	struct oauth_at *at = NULL;
	enum oauth_verdict verdict = oauth_judge_request(req, &at);
	bool is_oauth_path;
	bool is_limited;
	json_t *info = NULL;

	if (path == NULL) {
		path = "";
	}
	/* Nothing under /oauth/ counts against a resource (HighLevel's limits are per resource; its
	 * token endpoint is not); a rejected token is refused before any limit is counted. */
	is_oauth_path = oauth_on() && strncmp(path, "/oauth/", 7) == 0;
	is_limited = !is_oauth_path && (verdict == AUTH_FOREIGN || verdict == AUTH_LIVE);
	if (is_oauth_path) {
		bkey = strdup("oauth");
		dkey = strdup("oauth");
	} else {
		request_keys(req, &bkey, &dkey);
	}
	if (bkey == NULL || dkey == NULL) {
		free(bkey);
		free(dkey);
		bkey = strdup("anon");
		dkey = strdup("anon");
	}
	if (g_opt.limit > 0 && is_limited) {
		bk = key_find(bkey, true);
		if (bk != NULL) {
			key_prune(bk, t);
		}
		bcount = burst_count(bk, t);
		burst_refused = bcount >= (size_t)g_opt.limit;
	}
	if (g_opt.daily > 0 && is_limited) {
		dk = key_find(dkey, true);
		if (dk != NULL) {
			key_prune(dk, t);
		}
		dcount = daily_count(dk, t);
		daily_refused = dcount >= (size_t)g_opt.daily;
	}
	if ((!burst_refused && !daily_refused) || g_opt.count_rejected) {
		/* One push per distinct array: a JWT's burst and daily key are the same. */
		if (bk != NULL) {
			key_push(bk, t);
		}
		if (dk != NULL && dk != bk) {
			key_push(dk, t);
		}
		if (bk != NULL) {
			bcount = burst_count(bk, t);
		}
		if (dk != NULL) {
			dcount = daily_count(dk, t);
		}
	}
	if (g_opt.limit > 0 && is_limited) {
		long rem = burst_refused ? 0 : g_opt.limit - (long)bcount;

		add_header_fmt(req, "x-ratelimit-max", "%ld", g_opt.limit);
		add_header_fmt(req, "x-ratelimit-interval-milliseconds", "%ld", g_opt.window_ms);
		add_header_fmt(req, "x-ratelimit-remaining", "%ld", rem < 0 ? 0 : rem);
	}
	if (g_opt.daily > 0 && is_limited) {
		long rem = daily_refused ? 0 : g_opt.daily - (long)dcount;
		double reset = DAY_MS;

		if (dk != NULL && dcount > 0) {
			/* The oldest call still inside the rolling day. */
			size_t first = dk->end - dcount;

			reset = dk->t[first] + DAY_MS - t;
		}
		add_header_fmt(req, "x-ratelimit-limit-daily", "%ld", g_opt.daily);
		add_header_fmt(req, "x-ratelimit-daily-remaining", "%ld", rem < 0 ? 0 : rem);
		add_header_fmt(req, "x-ratelimit-daily-reset", "%.0f", ceil(reset));
	}

	TAILQ_FOREACH(h, evhttp_request_get_input_headers(req), next)
	{
		json_array_append_new(headers,
		                      json_pack("[oo]", json_cstr(h->key), json_cstr(h->value)));
	}
	sha256_evbuffer(body, sha);
	entry = json_pack("{s:I, s:f, s:s, s:o, s:o, s:I, s:s, s:i, s:o, s:o}", "index",
	                  (json_int_t)json_array_size(g_log), "t_ms", t, "method",
	                  method_name(evhttp_request_get_command(req)), "uri",
	                  json_cstr(evhttp_request_get_uri(req)), "headers", headers, "body_len",
	                  (json_int_t)evbuffer_get_length(body), "body_sha256", sha, "status", 0,
	                  "key", json_cstr(bkey), "daily_key", json_cstr(dkey));
	json_array_append(g_log, entry);
	free(bkey);
	free(dkey);
	if (is_oauth_path || verdict != AUTH_FOREIGN) {
		/* What the OAuth side made of it, never a token or secret. */
		info = json_object();
		json_object_set(entry, "oauth", info);
	}

	if (burst_refused || daily_refused) {
		json_t *b =
		        json_pack("{s:i, s:s}", "statusCode", 429, "message", "Too Many Requests");

		status = 429;
		reply_json(c, 429, b);
		json_decref(b);
	} else if (is_oauth_path && oauth_endpoint(path)) {
		status = oauth_behave(c, path, info, verdict, at);
	} else if (verdict != AUTH_FOREIGN && verdict != AUTH_LIVE) {
		status = oauth_unauthorized(c, info, verdict);
	} else {
		if (info != NULL) {
			json_object_set_new(info, "outcome",
			                    json_string(oauth_verdict_name(verdict)));
		}
		status = call_behave(c, path, query);
	}
	json_decref(info);
	json_object_set_new(entry, "status", json_integer(status));
	json_decref(entry);
}

static void call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct call *c = arg;

	if (c->evcon == NULL) {
		call_abandon(c); /* the client left while we waited */
		return;
	}
	switch (c->step) {
	case STEP_PROCESS:
		call_process(c);
		break;
	case STEP_SLOW:
		reply_echo(c, 200);
		break;
	case STEP_CLOSE:
		call_drop_connection(c);
		break;
	case STEP_ABANDON:
		call_abandon(c);
		break;
	case STEP_OAUTH: {
		json_t *b = c->oauth_body;

		c->oauth_body = NULL;
		oauth_refresh_end(c);
		reply_json(c, c->oauth_status, b);
		json_decref(b);
		break;
	}
	}
}

/* ---- control: /__mock/ ---- */

static void control_reply(struct evhttp_request *req, int status, json_t *obj)
{
	struct evbuffer *b = evbuffer_new();
	char *text = json_dumps(obj, JSON_COMPACT);

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "application/json");
	if (text != NULL && evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
		evbuffer_add(b, text, strlen(text));
	}
	evhttp_send_reply(req, status, NULL, b);
	evbuffer_free(b);
	free(text);
	json_decref(obj);
}

static void control_error(struct evhttp_request *req, int status, const char *msg)
{
	control_reply(req, status, json_pack("{s:i, s:s}", "statusCode", status, "message", msg));
}

static json_t *stats_json(void)
{
	json_t *by_key = json_object();
	size_t i;
	json_t *e;
	json_int_t n429 = 0;

	json_array_foreach(g_log, i, e)
	{
		const char *key = json_string_value(json_object_get(e, "key"));
		bool is429 = json_integer_value(json_object_get(e, "status")) == 429;
		json_t *k = json_object_get(by_key, key);

		if (k == NULL) {
			k = json_pack("{s:I, s:I}", "requests", (json_int_t)0, "status_429",
			              (json_int_t)0);
			json_object_set_new(by_key, key, k);
		}
		json_object_set_new(
		        k, "requests",
		        json_integer(json_integer_value(json_object_get(k, "requests")) + 1));
		if (is429) {
			json_object_set_new(
			        k, "status_429",
			        json_integer(json_integer_value(json_object_get(k, "status_429")) +
			                     1));
			n429++;
		}
	}
	return json_pack("{s:I, s:I, s:o, s:f, s:f}", "requests",
	                 (json_int_t)json_array_size(g_log), "status_429", n429, "by_key", by_key,
	                 "t0_ms", g_t0_ms, "now_ms", now_ms());
}

/* ---- control: /__mock/oauth/ ---- */

/* A control call's JSON object body (caller decrefs), or NULL. */
static json_t *control_body(struct evhttp_request *req)
{
	struct evbuffer *buf = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(buf);
	unsigned char *p;
	json_t *j;

	if (len == 0 || len > OAUTH_MAX_BODY || (p = evbuffer_pullup(buf, -1)) == NULL) {
		return NULL;
	}
	j = json_loadb((const char *)p, len, 0, NULL);
	if (!json_is_object(j)) {
		json_decref(j);
		return NULL;
	}
	return j;
}

/* An installation described by a control body: user_type, resource, company_id?,
 * approved_locations? (array of strings). NULL, with *why, when malformed. */
static struct oauth_res *control_install(json_t *b, const char **why)
{
	const char *id = json_string_value(json_object_get(b, "resource"));
	const char *company = json_string_value(json_object_get(b, "company_id"));
	json_t *approved = json_object_get(b, "approved_locations");
	enum oauth_type t;
	size_t i;
	json_t *v;

	if (!oauth_type_parse(json_string_value(json_object_get(b, "user_type")), &t) ||
	    id == NULL || *id == '\0') {
		*why = "want {\"user_type\":\"Location\"|\"Company\",\"resource\":ID,...}";
		return NULL;
	}
	if (approved != NULL && !json_is_array(approved)) {
		*why = "approved_locations: an array of strings";
		return NULL;
	}
	json_array_foreach(approved, i, v)
	{
		if (!json_is_string(v)) {
			*why = "approved_locations: an array of strings";
			return NULL;
		}
	}
	*why = "out of memory";
	return oauth_res_set(id, t, company, approved);
}

static json_t *oauth_stats_json(void)
{
	json_t *by = json_object();
	json_t *o = json_object();

	for (struct oauth_res *r = g_oauth.res; r != NULL; r = r->next) {
		bool live = false;

		for (struct oauth_rt *t = g_oauth.rts; t != NULL && !live; t = t->next) {
			live = t->res == r && t->state == RT_LIVE;
		}
		json_object_set_new(
		        by, r->id,
		        json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:b}", "user_type",
		                  oauth_type_name(r->type), "refreshes", (json_int_t)r->refreshes,
		                  "reuses", (json_int_t)r->reuses, "concurrent_max",
		                  (json_int_t)r->concurrent_max, "refreshing",
		                  (json_int_t)r->refreshing, "inactive_left",
		                  (json_int_t)r->inactive_left, "has_live_refresh_token", live));
	}
#define X(name) json_object_set_new(o, #name, json_integer((json_int_t)g_oauth.st.name));
	OAUTH_STATS(X)
#undef X
	json_object_set_new(o, "by_resource", by);
	json_object_set_new(o, "now_wall_ms", json_integer((json_int_t)wall_ms()));
	return o;
}

/*
 * POST code {code, user_type, resource, company_id?, approved_locations?, redirect_uri?}
 * POST seed {user_type, resource, company_id?, approved_locations?} -> {refresh_token, ...}
 * POST inactive {resource, count}
 * POST revoke {resource, access_tokens?, refresh_tokens? (default true)}
 * GET stats
 */
static void oauth_control(struct evhttp_request *req, const char *path)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *name = path + strlen("/__mock/oauth/");
	json_t *b;
	const char *why = NULL;
	struct oauth_res *r;

	if (!oauth_on()) {
		control_error(req, 404, "OAuth is off: start the mock with --oauth-client-id");
		return;
	}
	if (strcmp(name, "stats") == 0) {
		if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) {
			control_reply(req, 200, oauth_stats_json());
		} else {
			control_error(req, 405, "method not allowed");
		}
		return;
	}
	if (strcmp(name, "code") != 0 && strcmp(name, "seed") != 0 &&
	    strcmp(name, "inactive") != 0 && strcmp(name, "revoke") != 0) {
		control_error(req, 404, "no such control path");
		return;
	}
	if (cmd != EVHTTP_REQ_POST) {
		control_error(req, 405, "method not allowed");
		return;
	}
	b = control_body(req);
	if (b == NULL) {
		control_error(req, 400, "want a JSON object body");
		return;
	}
	if (strcmp(name, "code") == 0) {
		const char *code = json_string_value(json_object_get(b, "code"));
		const char *redirect = json_string_value(json_object_get(b, "redirect_uri"));
		struct oauth_code *k;

		for (k = g_oauth.codes; code != NULL && k != NULL && strcmp(k->code, code) != 0;
		     k = k->next) {
		}
		if (code == NULL || *code == '\0' || k != NULL) {
			control_error(req, 400, "code: a new, non-empty string");
		} else if ((r = control_install(b, &why)) == NULL) {
			control_error(req, 400, why);
		} else if ((k = calloc(1, sizeof(*k))) == NULL ||
		           (k->code = strdup(code)) == NULL ||
		           (redirect != NULL && (k->redirect_uri = strdup(redirect)) == NULL)) {
			if (k != NULL) {
				free(k->code);
			}
			free(k);
			control_error(req, 500, "out of memory");
		} else {
			k->res = r;
			k->next = g_oauth.codes;
			g_oauth.codes = k;
			control_reply(req, 200, json_pack("{s:b}", "ok", 1));
		}
	} else if (strcmp(name, "seed") == 0) {
		struct oauth_rt *rt;

		if ((r = control_install(b, &why)) == NULL) {
			control_error(req, 400, why);
		} else if ((rt = oauth_refresh_new(r)) == NULL) {
			control_error(req, 500, "out of memory");
		} else {
			control_reply(req, 200,
			              json_pack("{s:s, s:o, s:s}", "refresh_token", rt->token,
			                        "resource", json_cstr(r->id), "user_type",
			                        oauth_type_name(r->type)));
		}
	} else {
		const char *id = json_string_value(json_object_get(b, "resource"));
		json_t *count = json_object_get(b, "count");

		r = id == NULL ? NULL : oauth_res_find(id);
		if (r == NULL) {
			control_error(req, 404, "no such resource (seed or register a code first)");
		} else if (strcmp(name, "inactive") == 0) {
			if (!json_is_integer(count) || json_integer_value(count) < 0 ||
			    json_integer_value(count) > 1000000) {
				control_error(req, 400, "count: an integer 0..1000000");
			} else {
				r->inactive_left = (long)json_integer_value(count);
				control_reply(req, 200, json_pack("{s:b}", "ok", 1));
			}
		} else {
			json_int_t n_rt = 0;
			json_int_t n_at = 0;
			bool access = json_is_true(json_object_get(b, "access_tokens"));
			/* refresh_tokens:false kills access tokens only (a token HighLevel stops
			 * honouring before its exp). */
			bool refresh = !json_is_false(json_object_get(b, "refresh_tokens"));

			for (struct oauth_rt *t = g_oauth.rts; refresh && t != NULL; t = t->next) {
				if (t->res == r && t->state == RT_LIVE) {
					t->state = RT_REVOKED;
					n_rt++;
				}
			}
			for (struct oauth_at *t = g_oauth.ats; access && t != NULL; t = t->next) {
				if (t->res == r && !t->revoked) {
					t->revoked = true;
					n_at++;
				}
			}
			control_reply(req, 200,
			              json_pack("{s:I, s:I}", "refresh_tokens", n_rt,
			                        "access_tokens", n_at));
		}
	}
	json_decref(b);
}

static void control_request(struct evhttp_request *req, const char *path, const char *query)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	bool is_get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
	struct evkeyvalq q;
	const char *v;

	TAILQ_INIT(&q);
	if (query != NULL) {
		evhttp_parse_query_str(query, &q);
	}
	if (strcmp(path, "/__mock/log") == 0 && is_get) {
		long since = 0;
		json_t *out = json_array();

		v = evhttp_find_header(&q, "since");
		if (v != NULL && !parse_long(v, 0, LONG_MAX, &since)) {
			json_decref(out);
			control_error(req, 400, "since: a non-negative integer");
		} else {
			for (size_t i = (size_t)since; i < json_array_size(g_log); i++) {
				json_array_append(out, json_array_get(g_log, i));
			}
			control_reply(req, 200, out);
		}
	} else if (strcmp(path, "/__mock/reset") == 0 && cmd == EVHTTP_REQ_POST) {
		json_array_clear(g_log);
		keys_free();
		oauth_reset();
		control_reply(req, 200, json_pack("{s:b}", "ok", 1));
	} else if (strcmp(path, "/__mock/stats") == 0 && is_get) {
		control_reply(req, 200, stats_json());
	} else if (strcmp(path, "/__mock/spend") == 0 && cmd == EVHTTP_REQ_POST) {
		const char *key = evhttp_find_header(&q, "key");
		long n = 0;
		struct key_state *k;
		double t = now_ms();

		v = evhttp_find_header(&q, "n");
		if (key == NULL || *key == '\0' || !parse_long(v, 0, 10000000, &n) ||
		    (k = key_find(key, true)) == NULL) {
			control_error(req, 400, "spend: key=K&n=N (0..10000000)");
		} else {
			key_prune(k, t);
			for (long i = 0; i < n; i++) {
				key_push(k, t);
			}
			control_reply(req, 200,
			              json_pack("{s:o, s:I}", "key", json_cstr(key), "counted",
			                        (json_int_t)(k->end - k->start)));
		}
	} else if (strncmp(path, "/__mock/oauth/", 14) == 0) {
		oauth_control(req, path);
	} else if (strcmp(path, "/__mock/log") == 0 || strcmp(path, "/__mock/reset") == 0 ||
	           strcmp(path, "/__mock/stats") == 0 || strcmp(path, "/__mock/spend") == 0) {
		control_error(req, 405, "method not allowed");
	} else {
		control_error(req, 404, "no such control path");
	}
	evhttp_clear_headers(&q);
}

/* ---- entry ---- */

/* Answers go out in pieces (head, body, TLS records): no Nagle delay between them. */
static void set_nodelay(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	int one = 1;

	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void mock_request_cb(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri == NULL ? NULL : evhttp_uri_get_path(uri);
	struct call *c;

	set_nodelay(req);
	if (path != NULL && strncmp(path, "/__mock/", 8) == 0) {
		control_request(req, path, evhttp_uri_get_query(uri));
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		evhttp_send_error(req, 503, NULL);
		return;
	}
	c->req = req;
	c->evcon = evhttp_request_get_connection(req);
	c->timer = evtimer_new(g_base, call_timer_cb, c);
	c->next = g_calls;
	if (g_calls != NULL) {
		g_calls->prev = c;
	}
	g_calls = c;
	evhttp_connection_set_closecb(c->evcon, on_conn_close, c);
	evhttp_request_set_on_complete_cb(req, on_request_complete, c);
	if (g_opt.jitter_ms > 0) {
		call_arm(c, STEP_PROCESS, rng_unit() * (double)g_opt.jitter_ms);
	} else {
		call_process(c);
	}
}

/* The plain control listener next to a TLS one: /__mock/ only, so it records nothing. */
static void control_only_cb(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri == NULL ? NULL : evhttp_uri_get_path(uri);

	if (path != NULL && strncmp(path, "/__mock/", 8) == 0) {
		control_request(req, path, evhttp_uri_get_query(uri));
		return;
	}
	control_error(req, 404, "control port: only /__mock/ here");
}

static struct bufferevent *tls_bevcb(struct event_base *base, void *arg)
{
	SSL *ssl = SSL_new(g_ssl_ctx);
	struct bufferevent *bev;

	if (ssl == NULL) {
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
	                                     BEV_OPT_CLOSE_ON_FREE);
	if (bev != NULL) {
		/* Test clients hang up without close_notify; that is not an error here. */
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	}
	return bev;
}

static int tls_setup(void)
{
	g_ssl_ctx = SSL_CTX_new(TLS_server_method());
	if (g_ssl_ctx == NULL || SSL_CTX_set_min_proto_version(g_ssl_ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_use_certificate_chain_file(g_ssl_ctx, g_opt.tls_cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(g_ssl_ctx, g_opt.tls_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(g_ssl_ctx) != 1) {
		fprintf(stderr, "mock_upstream: TLS setup failed (%s, %s)\n", g_opt.tls_cert,
		        g_opt.tls_key);
		ERR_print_errors_fp(stderr);
		return -1;
	}
	SSL_CTX_set_mode(g_ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
	return 0;
}

/* "host:port" or "[v6]:port" into host and port. */
static int split_listen(const char *s, char *host, size_t host_len, long *port)
{
	const char *colon;
	const char *hs = s;
	size_t hl;

	if (s[0] == '[') {
		const char *rb = strchr(s, ']');

		if (rb == NULL || rb[1] != ':') {
			return -1;
		}
		hs = s + 1;
		hl = (size_t)(rb - hs);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL) {
			return -1;
		}
		hl = (size_t)(colon - s);
	}
	if (hl == 0 || hl >= host_len || !parse_long(colon + 1, 0, 65535, port)) {
		return -1;
	}
	memcpy(host, hs, hl);
	host[hl] = '\0';
	return 0;
}

/* The address clients should use: the bound one, with a wildcard replaced by loopback. */
static void bound_address(evutil_socket_t fd, char *out, size_t out_len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN];

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
		snprintf(out, out_len, "?");
		return;
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		if (IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr)) {
			snprintf(host, sizeof(host), "::1");
		} else {
			inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		}
		snprintf(out, out_len, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		if (s4->sin_addr.s_addr == htonl(INADDR_ANY)) {
			snprintf(host, sizeof(host), "127.0.0.1");
		} else {
			inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		}
		snprintf(out, out_len, "%s:%u", host, ntohs(s4->sin_port));
	}
}

static void notify_ready(const char *addr, const char *ctl_addr)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	socklen_t sl;
	char msg[768];
	int fd;

	if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(sun.sun_path)) {
		return;
	}
	memcpy(sun.sun_path, path, strlen(path));
	if (sun.sun_path[0] == '@') {
		sun.sun_path[0] = '\0'; /* abstract namespace */
	}
	sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	snprintf(msg, sizeof(msg), "READY=1\nX_MOCK_LISTEN=%s\nX_MOCK_CONTROL=%s\n", addr,
	         ctl_addr);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return;
	}
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun, sl) < 0) {
		fprintf(stderr, "mock_upstream: notify %s: %s\n", path, strerror(errno));
	}
	close(fd);
}

static void http_settings(struct evhttp *http)
{
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	                                         EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
	                                         EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
	evhttp_set_default_content_type(http, NULL);
	evhttp_set_max_body_size(http, MAX_BODY_BYTES);
	evhttp_set_max_headers_size(http, MAX_HEADERS_BYTES);
	evhttp_set_timeout(http, CONN_TIMEOUT_S);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	event_base_loopbreak(g_base);
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: mock_upstream --listen HOST:PORT [--tls-cert F --tls-key F]\n"
	        "  [--limit N --window-ms W] [--limit-mode sliding|fixed] [--count-rejected]\n"
	        "  [--daily D] [--jitter-ms J] [--seed S]\n"
	        "  [--oauth-client-id ID --oauth-client-secret S [--oauth-access-ttl-ms MS]\n"
	        "   [--oauth-delay-ms MS] [--oauth-odd-answers]]\n");
}

/* HighLevel's client ids: "<24 hex digits: the app id>-<suffix>". */
static bool client_id_valid(const char *s)
{
	if (strlen(s) < 26 || s[24] != '-') {
		return false;
	}
	for (int i = 0; i < 24; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
		      (s[i] >= 'A' && s[i] <= 'F'))) {
			return false;
		}
	}
	return true;
}

static int parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "tls-cert", required_argument, NULL, 'c' },
		{ "tls-key", required_argument, NULL, 'k' },
		{ "limit", required_argument, NULL, 'n' },
		{ "window-ms", required_argument, NULL, 'w' },
		{ "limit-mode", required_argument, NULL, 'm' },
		{ "jitter-ms", required_argument, NULL, 'j' },
		{ "daily", required_argument, NULL, 'd' },
		{ "seed", required_argument, NULL, 's' },
		{ "count-rejected", no_argument, NULL, 'r' },
		{ "oauth-client-id", required_argument, NULL, 'I' },
		{ "oauth-client-secret", required_argument, NULL, 'S' },
		{ "oauth-access-ttl-ms", required_argument, NULL, 'T' },
		{ "oauth-delay-ms", required_argument, NULL, 'D' },
		{ "oauth-odd-answers", no_argument, NULL, 'O' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		bool ok = true;

		switch (ch) {
		case 'l':
			g_opt.listen = optarg;
			break;
		case 'c':
			g_opt.tls_cert = optarg;
			break;
		case 'k':
			g_opt.tls_key = optarg;
			break;
		case 'n':
			ok = parse_long(optarg, 1, 100000000, &g_opt.limit);
			break;
		case 'w':
			ok = parse_long(optarg, 1, 86400000L * 7, &g_opt.window_ms);
			break;
		case 'm':
			ok = strcmp(optarg, "sliding") == 0 || strcmp(optarg, "fixed") == 0;
			g_opt.fixed = strcmp(optarg, "fixed") == 0;
			break;
		case 'j':
			ok = parse_long(optarg, 0, 600000, &g_opt.jitter_ms);
			break;
		case 'd':
			ok = parse_long(optarg, 1, 1000000000, &g_opt.daily);
			break;
		case 's':
			ok = parse_u64(optarg, UINT64_MAX, &g_opt.seed);
			g_opt.has_seed = true;
			break;
		case 'r':
			g_opt.count_rejected = true;
			break;
		case 'I':
			g_opt.oauth_client_id = optarg;
			ok = client_id_valid(optarg);
			break;
		case 'S':
			g_opt.oauth_client_secret = optarg;
			ok = *optarg != '\0';
			break;
		case 'T':
			ok = parse_long(optarg, 1, 366L * 86400000, &g_opt.oauth_access_ttl_ms);
			break;
		case 'D':
			ok = parse_long(optarg, 0, MAX_SLOW_MS, &g_opt.oauth_delay_ms);
			break;
		case 'O':
			g_opt.oauth_odd_answers = true;
			break;
		default:
			ok = false;
		}
		if (!ok) {
			usage();
			return -1;
		}
	}
	if (optind != argc || g_opt.listen == NULL ||
	    (g_opt.tls_cert == NULL) != (g_opt.tls_key == NULL) ||
	    (g_opt.oauth_client_id == NULL) != (g_opt.oauth_client_secret == NULL)) {
		usage();
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char host[256];
	long port;
	struct evhttp_bound_socket *bound;
	struct event *sig_term;
	struct event *sig_int;
	char addr[300];
	char ctl_addr[300];

	signal(SIGPIPE, SIG_IGN);
	if (parse_options(argc, argv) != 0) {
		return 2;
	}
	if (oauth_on()) {
		memcpy(g_oauth.app_id, g_opt.oauth_client_id, 24);
		g_oauth.app_id[24] = '\0';
	}
	if (split_listen(g_opt.listen, host, sizeof(host), &port) != 0) {
		fprintf(stderr, "mock_upstream: bad --listen %s\n", g_opt.listen);
		return 2;
	}
	g_rng = g_opt.has_seed ? g_opt.seed : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
	for (size_t i = 0; i < sizeof(g_pattern); i++) {
		g_pattern[i] = (unsigned char)((i * 31 + 7) & 0xff);
	}
	g_t0_ms = now_ms();
	g_log = json_array();

	g_base = event_base_new();
	g_http = g_base == NULL ? NULL : evhttp_new(g_base);
	if (g_http == NULL) {
		fprintf(stderr, "mock_upstream: libevent setup failed\n");
		return 1;
	}
	if (g_opt.tls_cert != NULL) {
		if (tls_setup() != 0) {
			return 1;
		}
		evhttp_set_bevcb(g_http, tls_bevcb, NULL);
	}
	http_settings(g_http);
	evhttp_set_gencb(g_http, mock_request_cb, NULL);

	bound = evhttp_bind_socket_with_handle(g_http, host, (ev_uint16_t)port);
	if (bound == NULL) {
		fprintf(stderr, "mock_upstream: cannot listen on %s: %s\n", g_opt.listen,
		        strerror(errno));
		return 1;
	}
	bound_address(evhttp_bound_socket_get_fd(bound), addr, sizeof(addr));
	snprintf(ctl_addr, sizeof(ctl_addr), "%s", addr);
	if (g_opt.tls_cert != NULL) {
		g_ctl_http = evhttp_new(g_base);
		bound = g_ctl_http == NULL
		                ? NULL
		                : evhttp_bind_socket_with_handle(g_ctl_http, "127.0.0.1", 0);
		if (bound == NULL) {
			fprintf(stderr, "mock_upstream: cannot open the control listener\n");
			return 1;
		}
		http_settings(g_ctl_http);
		evhttp_set_gencb(g_ctl_http, control_only_cb, NULL);
		bound_address(evhttp_bound_socket_get_fd(bound), ctl_addr, sizeof(ctl_addr));
	}

	sig_term = evsignal_new(g_base, SIGTERM, on_signal, NULL);
	sig_int = evsignal_new(g_base, SIGINT, on_signal, NULL);
	evsignal_add(sig_term, NULL);
	evsignal_add(sig_int, NULL);

	fprintf(stderr, "mock_upstream: listening on %s (%s), control %s%s%s%s\n", addr,
	        g_opt.tls_cert != NULL ? "https" : "http", ctl_addr,
	        g_opt.limit > 0 ? (g_opt.fixed ? ", fixed windows" : ", sliding windows") : "",
	        oauth_on() ? ", OAuth for app " : "", oauth_on() ? g_oauth.app_id : "");
	notify_ready(addr, ctl_addr);

	event_base_dispatch(g_base);

	/* Shutting down: calls still waiting are dropped with their connections. Their
	 * connection close callbacks must not run any more, so detach them first. */
	for (struct call *c = g_calls; c != NULL; c = c->next) {
		if (c->evcon != NULL) {
			evhttp_connection_set_closecb(c->evcon, NULL, NULL);
		}
		if (!c->replied && c->evcon == NULL) {
			evhttp_send_reply(c->req, 500, NULL, NULL); /* detached: frees it */
		}
	}
	while (g_calls != NULL) {
		call_free(g_calls);
	}
	evhttp_free(g_http);
	if (g_ctl_http != NULL) {
		evhttp_free(g_ctl_http);
	}
	event_free(sig_term);
	event_free(sig_int);
	event_base_free(g_base);
	SSL_CTX_free(g_ssl_ctx);
	keys_free();
	oauth_reset();
	json_decref(g_log);
	fprintf(stderr, "mock_upstream: stopped\n");
	return 0;
}
