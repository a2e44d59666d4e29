/*
 * classify.h: the rate-limit key of a request, pure.
 *
 * Data enters as a struct classify_input (method, path, query, headers, credential, a prefix of
 * the body) and leaves as a struct classify_result: which credential the client sent (kind and
 * fingerprint, never the token), which resource (location or company) the request is for and
 * where that was found, and the burst and daily keys that the limiter counts against.
 *
 * Keys (ASCII, at most CLASSIFY_KEY_MAX bytes, no secret in them):
 *   OAuth access token  burst = daily = "<app>:<authClassId>"
 *   PIT                 burst = "pit.<fp>:<res>", daily = "pit:<res>"
 *                       (burst per token per resource, daily shared by the resource's PITs)
 *   API 1.0 key         burst = daily = "v1:<res>"
 *   anything else       burst = daily = "tok:<res>"
 * where <res> is the resource id, or "fp.<fp>" (a per-credential bucket) when no resource is
 * known, or "none" when there is no credential either ("tok:none"), and <fp> is the credential's
 * fingerprint. The daily key is also the Redis hash tag.
 *
 * Resource lookup order (first found wins; a candidate id must match [A-Za-z0-9_-]{1,64}):
 *   1. for OAuth tokens in passthrough: the token's authClassId (the request is not consulted);
 *   2. a configured credential -> resource mapping (PIT files, API 1.0 key files);
 *   3. hint headers x-location-id, locationId, location-id, x-company-id, companyId, company-id;
 *   4. query locationId, location_id, companyId, company_id, altId with altType=location|company;
 *   5. path forms (/locations/{id}/..., /social-media-posting/{id}/..., /companies/{id}, ...);
 *   6. JSON body field locationId / companyId / altId+altType at the top level, sniffing at most
 *      CLASSIFY_BODY_SNIFF bytes of a body whose Content-Type is JSON;
 *   7. none: the per-credential bucket.
 * Within one source the names are tried in the order listed (locations first); an invalid
 * candidate is skipped. A repeated query parameter or header keeps its first valid value, a
 * repeated body key its last (as JSON.parse does). Query and path ids are percent-decoded
 * before validation; header values are not.
 * Calls under /oauth/ are not counted (is_counted = false).
 */
#ifndef GHLPROXY_CLASSIFY_H
#define GHLPROXY_CLASSIFY_H

#include <stdbool.h>
#include <stddef.h>

#include "jwt.h"

#define CLASSIFY_KEY_MAX    160
#define CLASSIFY_ID_MAX     64
#define CLASSIFY_FP_LEN     16 /* hex chars of the fingerprint */
#define CLASSIFY_BODY_SNIFF (64 * 1024)

enum classify_cred {
	CRED_NONE = 0,      /* no Authorization: Bearer */
	CRED_EMPTY,         /* "Bearer", "Bearer undefined", "Bearer null": an integration bug */
	CRED_OAUTH,         /* a JWT with HighLevel's OAuth claims */
	CRED_JWT_MALFORMED, /* looks like a JWT, claims unreadable: keyed by fingerprint */
	CRED_PIT,           /* "pit-" + UUID */
	CRED_V1_KEY,        /* any bearer on a /v1/ call */
	CRED_OPAQUE,        /* any other bearer */
};

enum classify_res_kind { RES_UNKNOWN = 0, RES_LOCATION, RES_COMPANY };

enum classify_source {
	SRC_NONE = 0, /* per-credential bucket */
	SRC_TOKEN,    /* OAuth claims */
	SRC_CONFIG,   /* credential -> resource mapping */
	SRC_HEADER,
	SRC_QUERY,
	SRC_PATH,
	SRC_BODY,
};

/* A configured mapping from a credential's fingerprint to its resource; NULL if unknown. */
typedef const char *(*classify_lookup_fn)(void *ctx, const char *fingerprint,
                                          enum classify_res_kind *kind);

struct classify_header {
	const char *name;
	const char *value;
};

struct classify_input {
	const char *method; /* "GET", ... */
	const char *path;   /* raw path, no query, percent-encoding untouched */
	size_t path_len;
	const char *query; /* raw query without '?', or NULL */
	size_t query_len;
	const struct classify_header *headers; /* request headers as received */
	size_t n_headers;
	const char *bearer; /* the credential after "Bearer ", or NULL (passthrough) */
	size_t bearer_len;
	const unsigned char *body; /* the body, or its first bytes; may be NULL */
	size_t body_len;
	bool is_v1;  /* routed to the API 1.0 upstream */
	bool inject; /* inject mode: the bearer (if any) is not a HighLevel credential */
	classify_lookup_fn lookup; /* may be NULL */
	void *lookup_ctx;
};

struct classify_result {
	enum classify_cred cred;
	char fingerprint[CLASSIFY_FP_LEN + 1]; /* of the bearer; "" when none */
	struct jwt_claims claims;              /* when cred == CRED_OAUTH */
	enum classify_res_kind res_kind;
	enum classify_source source;
	char resource[CLASSIFY_ID_MAX + 1]; /* "" when unknown */
	char app[CLASSIFY_ID_MAX + 1];      /* the OAuth app id, "pit", "v1" or "tok" */
	bool is_counted;                    /* false for /oauth/ calls */
	char burst_key[CLASSIFY_KEY_MAX + 1];
	char daily_key[CLASSIFY_KEY_MAX + 1];
};

/* Classify one request. Never fails: every input yields a key. */
void classify_request(const struct classify_input *in, struct classify_result *out);

/*
 * Rebuild the keys of `r` for a credential chosen by the proxy (inject mode): cred is the
 * injected credential's kind, app its app id (OAuth) and fp its fingerprint. Only the leading hex
 * digits of fingerprint are kept; an OAuth credential without a valid app id is keyed as "tok".
 */
void classify_set_credential(struct classify_result *r, enum classify_cred cred, const char *app,
                             const char *fingerprint);

/* Fingerprint of a secret: first CLASSIFY_FP_LEN hex chars of SHA-256 over it. */
void classify_fingerprint(const char *secret, size_t len, char out[CLASSIFY_FP_LEN + 1]);

/* True for ids made of [A-Za-z0-9_-], 1..CLASSIFY_ID_MAX long. */
bool classify_id_valid(const char *s, size_t len);

#endif
