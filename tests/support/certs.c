/*
 * certs.c: a throwaway PKI for integration tests, made with the OpenSSL 3 API.
 *
 * certs_make creates a P-256 CA (basicConstraints CA:TRUE, keyUsage keyCertSign) and a P-256
 * server certificate it signs (subjectAltName from `names`, extendedKeyUsage serverAuth),
 * both valid from one hour ago to one day ahead with random serials, and writes the CA
 * certificate, the server certificate and the server key as PEM files (mode 0600). The CA key
 * lives only in memory. Nothing else is kept.
 */
#define _GNU_SOURCE
#include "certs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VALID_BEFORE_S (60L * 60)      /* notBefore: now - 1 h (clock skew between peers) */
#define VALID_AFTER_S  (24L * 60 * 60) /* notAfter: now + 1 day */

static int set_random_serial(X509 *x)
{
	unsigned char raw[16];
	BIGNUM *bn;
	int rc = -1;

	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		return -1;
	}
	raw[0] &= 0x7f; /* positive, as RFC 5280 requires */
	raw[0] |= 0x01; /* and non-zero */
	bn = BN_bin2bn(raw, sizeof(raw), NULL);
	if (bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL) {
		rc = 0;
	}
	BN_free(bn);
	return rc;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (ext == NULL) {
		return -1;
	}
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok == 1 ? 0 : -1;
}

/* A certificate for `key` named CN=cn, issued by `issuer` (NULL: self-signed), not yet signed. */
static X509 *new_cert(EVP_PKEY *key, const char *cn, X509 *issuer)
{
	X509 *x = X509_new();
	X509_NAME *name;

	if (x == NULL) {
		return NULL;
	}
	name = X509_get_subject_name(x);
	if (X509_set_version(x, X509_VERSION_3) != 1 || set_random_serial(x) != 0 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), -VALID_BEFORE_S) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), VALID_AFTER_S) == NULL ||
	    X509_set_pubkey(x, key) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
	                               (const unsigned char *)"ghlproxy tests", -1, -1, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
	                               0) != 1 ||
	    X509_set_issuer_name(x, issuer == NULL ? name : X509_get_subject_name(issuer)) != 1) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* "a,b,1.2.3.4" to "DNS:a,DNS:b,IP:1.2.3.4"; the first name (for CN) in *first. */
static char *san_value(const char *names, char **first)
{
	char *copy = strdup(names);
	char *out = NULL;
	size_t out_len = 0;
	FILE *f;
	char *save = NULL;
	bool any = false;

	*first = NULL;
	if (copy == NULL) {
		return NULL;
	}
	f = open_memstream(&out, &out_len);
	if (f == NULL) {
		free(copy);
		return NULL;
	}
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL;
	     tok = strtok_r(NULL, ",", &save)) {
		unsigned char bin[16];
		char *end;

		while (*tok == ' ' || *tok == '\t') {
			tok++;
		}
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) {
			*--end = '\0';
		}
		if (*tok == '\0') {
			continue;
		}
		if (strpbrk(tok, ",:=") != NULL && inet_pton(AF_INET6, tok, bin) != 1) {
			continue; /* would break the extension's own syntax; not a name anyway */
		}
		bool is_ip =
		        inet_pton(AF_INET, tok, bin) == 1 || inet_pton(AF_INET6, tok, bin) == 1;

		fprintf(f, "%s%s:%s", any ? "," : "", is_ip ? "IP" : "DNS", tok);
		if (!any) {
			*first = strdup(tok);
		}
		any = true;
	}
	fclose(f);
	free(copy);
	if (!any || *first == NULL) {
		free(out);
		free(*first);
		*first = NULL;
		return NULL;
	}
	return out;
}

static int write_pem(const char *dir, const char *prefix, const char *leaf, X509 *cert,
                     EVP_PKEY *key)
{
	char *path;
	FILE *f;
	int fd;
	int ok;

	if (asprintf(&path, "%s/%s%s", dir, prefix, leaf) < 0) {
		return -1;
	}
	unlink(path); /* O_CREAT does not narrow the mode of an existing file */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	free(path);
	if (fd < 0) {
		return -1;
	}
	f = fdopen(fd, "w");
	if (f == NULL) {
		close(fd);
		return -1;
	}
	if (cert != NULL) {
		ok = PEM_write_X509(f, cert);
	} else {
		ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	}
	if (fclose(f) != 0) {
		ok = 0;
	}
	return ok == 1 ? 0 : -1;
}

int certs_make(const char *dir, const char *prefix, const char *names)
{
	EVP_PKEY *ca_key = NULL;
	EVP_PKEY *srv_key = NULL;
	X509 *ca = NULL;
	X509 *srv = NULL;
	char *san = NULL;
	char *cn = NULL;
	int rc = -1;

	if (dir == NULL || names == NULL) {
		return -1;
	}
	if (prefix == NULL) {
		prefix = "";
	}
	san = san_value(names, &cn);
	if (san == NULL) {
		goto out;
	}
	ca_key = EVP_EC_gen("P-256");
	srv_key = EVP_EC_gen("P-256");
	if (ca_key == NULL || srv_key == NULL) {
		goto out;
	}

	ca = new_cert(ca_key, "ghlproxy test CA", NULL);
	if (ca == NULL ||
	    add_ext(ca, ca, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
	    add_ext(ca, ca, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
	    add_ext(ca, ca, NID_subject_key_identifier, "hash") != 0 ||
	    X509_sign(ca, ca_key, EVP_sha256()) == 0) {
		goto out;
	}

	/* CN is informational (verifiers use subjectAltName); it is capped at 64 by X.520. */
	if (strlen(cn) > 64) {
		cn[64] = '\0';
	}
	srv = new_cert(srv_key, cn, ca);
	if (srv == NULL || add_ext(srv, ca, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
	    add_ext(srv, ca, NID_key_usage, "critical,digitalSignature") != 0 ||
	    add_ext(srv, ca, NID_ext_key_usage, "serverAuth") != 0 ||
	    add_ext(srv, ca, NID_subject_alt_name, san) != 0 ||
	    add_ext(srv, ca, NID_subject_key_identifier, "hash") != 0 ||
	    add_ext(srv, ca, NID_authority_key_identifier, "keyid:always") != 0 ||
	    X509_sign(srv, ca_key, EVP_sha256()) == 0) {
		goto out;
	}

	if (write_pem(dir, prefix, "ca.pem", ca, NULL) != 0 ||
	    write_pem(dir, prefix, "cert.pem", srv, NULL) != 0 ||
	    write_pem(dir, prefix, "key.pem", NULL, srv_key) != 0) {
		goto out;
	}
	rc = 0;
out:
	if (rc != 0) {
		ERR_print_errors_fp(stderr);
	}
	ERR_clear_error();
	X509_free(srv);
	X509_free(ca);
	EVP_PKEY_free(srv_key);
	EVP_PKEY_free(ca_key);
	free(san);
	free(cn);
	return rc;
}
