/*
 * jwt.c: the claims of a HighLevel OAuth access token, decoded and never verified.
 *
 * Data enters as the bearer string (pointer + length, NUL bytes allowed) and leaves as a filled
 * struct jwt_claims and a status. Nothing is allocated by this file; jansson allocates the parsed
 * payload and it is freed before returning.
 *
 * Bounds: the token is at most JWT_MAX_LEN bytes, checked before anything is decoded, so the
 * decoded payload is at most JWT_PAYLOAD_MAX bytes and fits a fixed buffer on the stack. jansson
 * limits nesting itself (2048 levels), so a payload of 10,000 '[' fails cleanly.
 */
#include "jwt.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

/* base64 turns every 4 characters into at most 3 bytes. */
#define JWT_PAYLOAD_MAX (JWT_MAX_LEN / 4 * 3 + 3)

/* Value of a base64url character, or -1. Standard base64's '+' and '/' are not accepted. */
static int b64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/*
 * Decode one base64url part, with or without '=' padding, into out (room for out_cap bytes).
 * Returns the decoded length, or -1 on a bad character, a bad length or lack of room.
 */
static long b64url_decode(const char *in, size_t len, unsigned char *out, size_t out_cap)
{
	size_t n_pad = 0;
	while (len > 0 && in[len - 1] == '=' && n_pad < 2) {
		len--;
		n_pad++;
	}
	/* Padding, when present, must complete a 4-character group. */
	if (n_pad > 0 && (len + n_pad) % 4 != 0)
		return -1;
	if (len % 4 == 1)
		return -1;
	if (len / 4 * 3 + 2 > out_cap)
		return -1;

	size_t o = 0;
	uint32_t acc = 0;
	unsigned n_bits = 0;
	for (size_t i = 0; i < len; i++) {
		int v = b64url_value((unsigned char)in[i]);
		if (v < 0)
			return -1;
		acc = ((acc << 6) | (uint32_t)v) & 0xffffffu;
		n_bits += 6;
		if (n_bits >= 8) {
			n_bits -= 8;
			out[o++] = (unsigned char)((acc >> n_bits) & 0xffu);
		}
	}
	return (long)o;
}

/* True when every character of the part is base64url (padding allowed at its end). */
static bool b64url_part_valid(const char *in, size_t len)
{
	size_t n_pad = 0;
	while (len > 0 && in[len - 1] == '=' && n_pad < 2) {
		len--;
		n_pad++;
	}
	for (size_t i = 0; i < len; i++) {
		if (b64url_value((unsigned char)in[i]) < 0)
			return false;
	}
	return true;
}

/* Copy a string claim made of [A-Za-z0-9_-]{1,JWT_ID_MAX}; false if absent or not such an id. */
static bool copy_id(json_t *v, char out[JWT_ID_MAX + 1])
{
	if (!json_is_string(v))
		return false;
	const char *s = json_string_value(v);
	size_t len = json_string_length(v);
	if (len == 0 || len > JWT_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		          (c >= '0' && c <= '9') || c == '_' || c == '-';
		if (!ok)
			return false;
	}
	memcpy(out, s, len);
	out[len] = '\0';
	return true;
}

static double number_or_zero(json_t *v)
{
	return json_is_number(v) ? json_number_value(v) : 0.0;
}

static enum jwt_auth_class auth_class_of(json_t *v)
{
	if (!json_is_string(v))
		return JWT_CLASS_UNKNOWN;
	const char *s = json_string_value(v);
	if (json_string_length(v) == 8 && strncasecmp(s, "Location", 8) == 0)
		return JWT_CLASS_LOCATION;
	if (json_string_length(v) == 7 && strncasecmp(s, "Company", 7) == 0)
		return JWT_CLASS_COMPANY;
	return JWT_CLASS_UNKNOWN;
}

/* Fill `out` from the decoded payload; false when the required claims are not there. */
static bool read_payload(const unsigned char *payload, size_t len, struct jwt_claims *out)
{
	json_error_t err;
	/* Duplicate keys are accepted (the last wins, as in the upstream's JSON.parse). */
	json_t *root = json_loadb((const char *)payload, len, 0, &err);
	if (root == NULL)
		return false;

	bool ok = false;
	if (!json_is_object(root))
		goto out;
	json_t *meta = json_object_get(root, "oauthMeta");
	if (!json_is_object(meta))
		goto out;
	if (!copy_id(json_object_get(meta, "client"), out->app_id))
		goto out;
	if (!copy_id(json_object_get(root, "authClassId"), out->auth_class_id))
		goto out;
	out->auth_class = auth_class_of(json_object_get(root, "authClass"));
	out->iat = number_or_zero(json_object_get(root, "iat"));
	out->exp = number_or_zero(json_object_get(root, "exp"));
	ok = true;
out:
	json_decref(root);
	return ok;
}

enum jwt_status jwt_read_claims(const char *token, size_t len, struct jwt_claims *out)
{
	memset(out, 0, sizeof(*out));
	if (token == NULL || len == 0)
		return JWT_NOT_JWT;

	/* Shape first: exactly three parts. Anything else is an opaque token. */
	size_t dot[2];
	size_t n_dots = 0;
	for (size_t i = 0; i < len; i++) {
		if (token[i] != '.')
			continue;
		if (n_dots == 2)
			return JWT_NOT_JWT;
		dot[n_dots++] = i;
	}
	if (n_dots != 2)
		return JWT_NOT_JWT;
	if (len > JWT_MAX_LEN)
		return JWT_MALFORMED;

	const char *hdr = token;
	size_t hdr_len = dot[0];
	const char *pay = token + dot[0] + 1;
	size_t pay_len = dot[1] - dot[0] - 1;
	const char *sig = token + dot[1] + 1;
	size_t sig_len = len - dot[1] - 1;
	/* The signature may be empty (alg "none"); the header and payload may not. */
	if (hdr_len == 0 || pay_len == 0 || !b64url_part_valid(hdr, hdr_len) ||
	    !b64url_part_valid(sig, sig_len))
		return JWT_MALFORMED;

	unsigned char buf[JWT_PAYLOAD_MAX];
	long n = b64url_decode(pay, pay_len, buf, sizeof(buf));
	if (n <= 0)
		return JWT_MALFORMED;
	if (!read_payload(buf, (size_t)n, out)) {
		memset(out, 0, sizeof(*out));
		return JWT_MALFORMED;
	}
	return JWT_OK;
}
