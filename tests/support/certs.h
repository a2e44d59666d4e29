/*
 * certs.h: test certificates made at test time with OpenSSL: a CA, and a server certificate it
 * signs for given DNS names and IP addresses. Nothing is committed; nothing leaves the scratch dir.
 */
#ifndef GHLPROXY_TEST_CERTS_H
#define GHLPROXY_TEST_CERTS_H

/*
 * Write dir/<prefix>ca.pem (CA certificate), dir/<prefix>cert.pem and dir/<prefix>key.pem (server
 * certificate + key for `names`: comma-separated, each a DNS name or an IP literal).
 * Returns 0 or -1.
 */
int certs_make(const char *dir, const char *prefix, const char *names);

#endif
