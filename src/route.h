/*
 * route.h: where a request goes, pure. Two upstreams only: API 2.0 (`upstream.url`) and API 1.0
 * (`upstream.v1_url`, for paths under /v1/). A request-target in absolute form is accepted only
 * when it names one of them (or the proxy itself, by its Host); nothing is ever sent elsewhere.
 */
#ifndef GHLPROXY_ROUTE_H
#define GHLPROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#define ROUTE_HOST_MAX 255

struct route_url {
	bool tls;                      /* https */
	char host[ROUTE_HOST_MAX + 1]; /* no brackets for IPv6 literals */
	int port;
	bool host_is_ip;
	char host_header[ROUTE_HOST_MAX + 16]; /* "host" or "host:port" or "[v6]:port" */
	char base_path[256];                   /* path prefix without trailing '/', often "" */
};

/* Parse an upstream URL ("https://host[:port][/base]"). 0, or -1 with a message in err. */
int route_parse_url(const char *url, struct route_url *out, char *err, size_t err_len);

enum route_target_kind {
	ROUTE_ORIGIN = 0, /* "/path?query" */
	ROUTE_ABSOLUTE,   /* "http(s)://authority/path?query" */
	ROUTE_BAD,
};

/*
 * Split a raw request-target. For absolute form, *authority / *authority_len name its
 * authority and *path points at its path (or at "" when it has none: the path is then "/").
 * For origin form, *path = target.
 */
enum route_target_kind route_split_target(const char *target, const char **authority,
                                          size_t *authority_len, const char **path);

/* True when `authority` ("host[:port]") names `u` (host case-insensitive, default port). */
bool route_authority_is(const struct route_url *u, const char *authority, size_t len);

/* True when the origin-form path goes to the API 1.0 upstream ("/v1" or "/v1/..."). */
bool route_is_v1(const char *path);

/* Length of the path part of an origin-form target (up to '?'). */
size_t route_path_len(const char *path);

#endif
