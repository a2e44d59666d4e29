/*
 * jwt.h: read the claims the proxy needs from a HighLevel OAuth access token, pure. The token is
 * decoded, never verified (HighLevel has used RS256 and HS256; the upstream verifies). Input is
 * bounded (tokens over JWT_MAX_LEN are treated as malformed) and every failure is a clean
 * JWT_MALFORMED, never a crash.
 */
#ifndef GHLPROXY_JWT_H
#define GHLPROXY_JWT_H

#include <stddef.h>

#define JWT_MAX_LEN 16384 /* longer bearer strings are not decoded */
#define JWT_ID_MAX  64    /* longest id we keep; longer ids count as malformed */

enum jwt_status { JWT_OK = 0, JWT_NOT_JWT, JWT_MALFORMED };

enum jwt_auth_class { JWT_CLASS_UNKNOWN = 0, JWT_CLASS_LOCATION, JWT_CLASS_COMPANY };

struct jwt_claims {
	enum jwt_auth_class auth_class;     /* authClass */
	char auth_class_id[JWT_ID_MAX + 1]; /* authClassId: the location or company id */
	char app_id[JWT_ID_MAX + 1];        /* oauthMeta.client: the 24-hex app id */
	double iat, exp; /* seconds since the epoch, possibly fractional; 0 when absent */
};

/*
 * JWT_NOT_JWT: not three '.'-separated parts (an opaque token: PIT, API key).
 * JWT_MALFORMED: three parts, but over JWT_MAX_LEN, not base64url, or the payload is not a JSON
 * object with string oauthMeta.client and authClassId, both made of [A-Za-z0-9_-]{1,JWT_ID_MAX}
 * (claims are zeroed then). authClass, iat and exp are optional (UNKNOWN, 0 when absent or of
 * another type).
 */
enum jwt_status jwt_read_claims(const char *token, size_t len, struct jwt_claims *out);

#endif
