/*
 * fuzz_jwt.c: libFuzzer target for jwt_read_claims(), the OAuth claims reader.
 *
 * Input: one mode byte, then either
 *   - (mode bit 0 clear) the bearer string itself, bytes as given (NUL bytes included), or
 *   - (mode bit 0 set) the JSON payload: the target wraps it as header.payload.signature,
 *     base64url-encoded (bit 1: with '=' padding; bit 2: empty signature; bit 3: HS256
 *     header), so the fuzzer works on the JSON directly instead of on its base64.
 * Checks, beyond "no crash, no leak": the documented contract of jwt.h (three parts or
 * JWT_NOT_JWT; over JWT_MAX_LEN is JWT_MALFORMED; on success both ids are [A-Za-z0-9_-]{1,64}
 * and NUL-terminated; on failure the claims are all zero).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char HDR_RS256[] = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
static const char HDR_HS256[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
static const char SIG[] = "c2lnbmF0dXJlLW5vdC1jaGVja2Vk";

static void check_claims(const char *token, size_t len, enum jwt_status st,
                         const struct jwt_claims *c)
{
	static const struct jwt_claims zero;
	size_t n_dots = 0;

	for (size_t i = 0; i < len; i++)
		n_dots += token[i] == '.';
	fuzz_check(st == JWT_OK || st == JWT_NOT_JWT || st == JWT_MALFORMED);
	if (n_dots != 2)
		fuzz_check(st == JWT_NOT_JWT);
	else if (len > JWT_MAX_LEN)
		fuzz_check(st == JWT_MALFORMED);
	if (st != JWT_OK) {
		fuzz_check(memcmp(c, &zero, sizeof(zero)) == 0);
		return;
	}
	fuzz_check(fuzz_terminated(c->app_id, sizeof(c->app_id)));
	fuzz_check(fuzz_terminated(c->auth_class_id, sizeof(c->auth_class_id)));
	fuzz_check(c->app_id[0] != '\0' && fuzz_is_id(c->app_id, strlen(c->app_id)));
	fuzz_check(c->auth_class_id[0] != '\0' &&
	           fuzz_is_id(c->auth_class_id, strlen(c->auth_class_id)));
	fuzz_check(c->auth_class == JWT_CLASS_UNKNOWN || c->auth_class == JWT_CLASS_LOCATION ||
	           c->auth_class == JWT_CLASS_COMPANY);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t mode = fuzz_u8(&in);
	struct jwt_claims c;
	enum jwt_status st;
	char *token;
	size_t len;

	if (!(mode & 1)) {
		/* exactly the bytes given, in a buffer of exactly that size */
		token = fuzz_xmalloc(in.n);
		if (in.n > 0)
			memcpy(token, in.p, in.n);
		len = in.n;
	} else {
		const char *hdr = (mode & 8) ? HDR_HS256 : HDR_RS256;
		const char *sig = (mode & 4) ? "" : SIG;
		size_t cap = strlen(hdr) + 1 + (in.n + 2) / 3 * 4 + 1 + strlen(sig) + 1;
		size_t o;

		token = fuzz_xmalloc(cap);
		o = strlen(hdr);
		memcpy(token, hdr, o);
		token[o++] = '.';
		o += fuzz_b64url(in.p, in.n, token + o, (mode & 2) != 0);
		token[o++] = '.';
		memcpy(token + o, sig, strlen(sig));
		o += strlen(sig);
		len = o;
	}

	st = jwt_read_claims(token, len, &c);
	check_claims(token, len, st, &c);
	/* Reading is deterministic: a second read gives the same answer. */
	{
		struct jwt_claims c2;

		fuzz_check(jwt_read_claims(token, len, &c2) == st);
		fuzz_check(memcmp(&c, &c2, sizeof(c)) == 0);
	}
	free(token);
	return 0;
}
