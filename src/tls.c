/*
 * tls.c: client TLS contexts and connections for upstreams. See tls.h.
 *
 * OpenSSL 3 reports an unexpected EOF (a peer closing without close_notify) as an error;
 * libevent 2.1.12 predates that, so SSL_OP_IGNORE_UNEXPECTED_EOF restores the old behaviour
 * (an EOF is then a clean end, and HTTP framing decides whether the body was complete). For an
 * answer that only the connection's close delimits, that is not enough: tls_watch_close_notify
 * tells whether the close was the peer's close_notify or a bare TCP close.
 */
#include "tls.h"

#include <ctype.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Does `dir` hold at least one certificate under its subject hash ("1a2b3c4d.0")? */
static bool has_hash_links(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	/* readdir is safe on a stream of our own (readdir_r is the deprecated one) */
	/* cppcheck-suppress readdirCalled */
	while (!found && (e = readdir(d)) != NULL) {
		const char *n = e->d_name;
		size_t i = 0;

		while (i < 8 && isxdigit((unsigned char)n[i]))
			i++;
		found = i == 8 && n[8] == '.' && isdigit((unsigned char)n[9]);
	}
	closedir(d);
	return found;
}

/*
 * The system store. SSL_CTX_set_default_verify_paths() parses the whole bundle file (about 140
 * certificates, 1.4 MiB of the proxy's idle memory) at start; the hashed directory that Debian's
 * ca-certificates keeps beside it (/etc/ssl/certs) is read one certificate at a time, when a
 * chain needs it. So the directory alone is used when it has hash links, and neither
 * SSL_CERT_FILE (set and not empty) nor a list in SSL_CERT_DIR asks for something else;
 * otherwise the default paths.
 */
static int load_system_store(SSL_CTX *ctx)
{
	const char *dir = getenv(X509_get_default_cert_dir_env());
	const char *file = getenv(X509_get_default_cert_file_env());

	if (!dir || !*dir)
		dir = X509_get_default_cert_dir();
	if ((!file || !*file) && !strchr(dir, ':') && has_hash_links(dir) &&
	    SSL_CTX_load_verify_dir(ctx, dir) == 1)
		return 1;
	return SSL_CTX_set_default_verify_paths(ctx);
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t err_len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx) {
		snprintf(err, err_len, "cannot create a TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION |
	                                 SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);

	if (ca_file && *ca_file) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			unsigned long e = ERR_get_error();
			snprintf(err, err_len, "cannot load CA file %s: %s", ca_file,
			         e ? ERR_reason_error_string(e) : "unknown error");
			ERR_clear_error();
			SSL_CTX_free(ctx);
			return NULL;
		}
	} else if (load_system_store(ctx) != 1) {
		snprintf(err, err_len, "cannot load the system CA store");
		ERR_clear_error();
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

void tls_client_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}

SSL *tls_client_new(SSL_CTX *ctx, const char *host, bool host_is_ip)
{
	SSL *ssl = SSL_new(ctx);

	if (!ssl)
		return NULL;
	if (host_is_ip) {
		/* No SNI for IP literals (RFC 6066 3); check the IP SAN instead. */
		X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
		if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
			goto fail;
	} else {
		if (SSL_set_tlsext_host_name(ssl, host) != 1)
			goto fail;
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(ssl, host) != 1)
			goto fail;
	}
	SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
	return ssl;
fail:
	SSL_free(ssl);
	return NULL;
}

static void on_tls_message(int write_p, int version, int content_type, const void *buf, size_t len,
                           SSL *ssl, void *arg)
{
	const unsigned char *b = buf;

	(void)version;
	(void)ssl;
	/* An alert record is two bytes: level, description. */
	if (!write_p && content_type == SSL3_RT_ALERT && len >= 2 && b[1] == SSL_AD_CLOSE_NOTIFY)
		*(bool *)arg = true;
}

void tls_watch_close_notify(SSL *ssl, bool *seen)
{
	*seen = false;
	SSL_set_msg_callback(ssl, on_tls_message);
	SSL_set_msg_callback_arg(ssl, seen);
}

bool tls_describe_error(SSL *ssl, struct bufferevent *bev, char *buf, size_t len)
{
	long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	unsigned long e = 0, last = 0;

	/* Drain the bufferevent's copy of the OpenSSL error queue; keep the last reason. */
	while (bev && (e = bufferevent_get_openssl_error(bev)) != 0)
		last = e;
	if (vr != X509_V_OK) {
		snprintf(buf, len, "certificate verify failed: %s",
		         X509_verify_cert_error_string(vr));
		return true;
	}
	if (last) {
		const char *r = ERR_reason_error_string(last);
		snprintf(buf, len, "TLS handshake failed: %s", r ? r : "unknown error");
		return true;
	}
	return false;
}
