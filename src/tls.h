/*
 * tls.h: the upstream side of TLS. One client SSL_CTX per process (verification always on:
 * peer certificate chain against the system store or upstream.ca_file, and the upstream's host
 * name or IP checked against the certificate), one SSL per connection with SNI set. TLS 1.2 is
 * the floor. Session tickets are kept per upstream so reconnects resume.
 */
#ifndef GHLPROXY_TLS_H
#define GHLPROXY_TLS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
struct bufferevent;

/* NULL ca_file or "": the system store. On error returns NULL and writes a message to err. */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t err_len);
void tls_client_ctx_free(SSL_CTX *ctx);

/* A client SSL for `host` (a DNS name gets SNI + name check; an IP literal an IP check). */
SSL *tls_client_new(SSL_CTX *ctx, const char *host, bool host_is_ip);

/*
 * Describe why a TLS connection failed, from its SSL and the bufferevent's OpenSSL error queue
 * ("certificate verify failed: unable to get local issuer certificate", "handshake failed: ...").
 * Returns false when nothing TLS-specific is known (then it was a plain network error).
 */
bool tls_describe_error(SSL *ssl, struct bufferevent *bev, char *buf, size_t len);

/*
 * Set *seen once the peer's close_notify alert arrives on `ssl` (seen must outlive ssl). With
 * SSL_OP_IGNORE_UNEXPECTED_EOF a bare TCP close reads as a clean end too; only this tells an
 * answer delimited by the connection's close from one cut short by it.
 */
void tls_watch_close_notify(SSL *ssl, bool *seen);

#endif
