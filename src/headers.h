/*
 * headers.h: which headers cross the proxy, pure.
 *
 * Hop-by-hop headers (RFC 9110 7.6.1: Connection and every field it names, Keep-Alive,
 * Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, and the Proxy-Authenticate /
 * Proxy-Authorization pair) never cross. Framing (Content-Length) is the sender's own business:
 * the proxy sets it for what it sends. The proxy's own control headers (X-GHL-*) stop at the
 * proxy. Everything else is forwarded in the order received.
 */
#ifndef GHLPROXY_HEADERS_H
#define GHLPROXY_HEADERS_H

#include <stdbool.h>
#include <stddef.h>

struct evkeyvalq;

/* The fixed hop-by-hop list (case-insensitive). */
bool headers_is_hop_by_hop(const char *name);

/* True when `name` is listed in the Connection header(s) of `h`. */
bool headers_named_by_connection(const struct evkeyvalq *h, const char *name);

/* Does `h` hold a Connection header at all? (Most requests and answers do not: the check above
 * is then skipped.) */
bool headers_has_connection(const struct evkeyvalq *h);

/* Does `name` cross, by the hop-by-hop rule: neither in the fixed list nor named by a Connection
 * header of `h`? `has_connection` is headers_has_connection(h), asked once per message. */
bool headers_end_to_end(const struct evkeyvalq *h, bool has_connection, const char *name);

enum headers_copy_flags {
	HEADERS_DROP_HOST = 1 << 0,          /* requests: the upstream's Host is set instead */
	HEADERS_DROP_LENGTH = 1 << 1,        /* Content-Length: recomputed by the sender */
	HEADERS_DROP_AUTHORIZATION = 1 << 2, /* inject mode: the client's is not HighLevel's */
	HEADERS_DROP_PROXY_CONTROL = 1 << 3, /* X-GHL-* control headers */
	HEADERS_DROP_EXPECT = 1 << 4,        /* the proxy has the whole body already */
};

/* Copy end-to-end headers from `in` to `out`. Returns 0 or -ENOMEM. */
int headers_copy(const struct evkeyvalq *in, struct evkeyvalq *out, unsigned flags);

/* Number of headers named `name` (case-insensitive). */
size_t headers_count(const struct evkeyvalq *h, const char *name);

/*
 * Check a parsed request's headers for what evhttp lets through and a proxy must not:
 * differing duplicate Content-Length, Transfer-Encoding other than chunked, CR/LF in values.
 * (The framing guard refuses these earlier; this is the last line before forwarding.)
 * Returns NULL when fine, else a short static reason.
 */
const char *headers_check_request(const struct evkeyvalq *h);

#endif
