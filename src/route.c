/*
 * route.c: upstream URL parsing and request-target checks. See route.h.
 */
#include "route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include "util.h"

static int fail(char *err, size_t err_len, const char *msg)
{
	snprintf(err, err_len, "%s", msg);
	return -1;
}

int route_parse_url(const char *url, struct route_url *out, char *err, size_t err_len)
{
	const char *p, *host, *host_end, *port_s = NULL;
	unsigned char addr[16];

	memset(out, 0, sizeof(*out));
	if (util_strncaseeq(url, "https://", 8)) {
		out->tls = true;
		p = url + 8;
	} else if (util_strncaseeq(url, "http://", 7)) {
		p = url + 7;
	} else {
		return fail(err, err_len, "URL must start with https:// or http://");
	}
	bool bracketed = *p == '[';

	if (bracketed) {
		host = p + 1;
		host_end = strchr(host, ']');
		if (!host_end)
			return fail(err, err_len, "unterminated IPv6 literal");
		p = host_end + 1;
	} else {
		host = p;
		while (*p && *p != ':' && *p != '/' && *p != '?' && *p != '#' && *p != '@')
			p++;
		host_end = p;
	}
	if (*p == '@' || memchr(host, '@', (size_t)(host_end - host)))
		return fail(err, err_len, "URL must not carry user information");
	if (host_end == host || (size_t)(host_end - host) > ROUTE_HOST_MAX)
		return fail(err, err_len, "URL has no valid host");
	memcpy(out->host, host, (size_t)(host_end - host));
	out->host[host_end - host] = '\0';
	/* A '[' or ']' in the host would make host_header an authority that route_authority_is()
	 * cannot match ("https://[[]/" gave the host "[" and the Host header "["). */
	for (const char *c = out->host; *c; c++)
		if ((unsigned char)*c <= ' ' || *c == '/' || *c == '\\' || *c == '%' || *c == '[' ||
		    *c == ']')
			return fail(err, err_len, "URL host has invalid characters");
	/* Brackets hold an IPv6 address and nothing else (RFC 3986 3.2.2), as config.c checks. */
	if (bracketed && inet_pton(AF_INET6, out->host, addr) != 1)
		return fail(err, err_len, "URL has an invalid IPv6 literal");
	out->port = out->tls ? 443 : 80;
	if (*p == ':') {
		char *end;
		port_s = ++p;
		/* digits only: strtol alone would also take " 443" and "+443" */
		if (*port_s < '0' || *port_s > '9')
			return fail(err, err_len, "URL has an invalid port");
		long v = strtol(port_s, &end, 10);
		if (end == port_s || v < 1 || v > 65535)
			return fail(err, err_len, "URL has an invalid port");
		out->port = (int)v;
		p = end;
	}
	if (*p == '?' || *p == '#')
		return fail(err, err_len, "URL must not have a query or fragment");
	if (*p && *p != '/')
		return fail(err, err_len, "URL is malformed");
	size_t base_len = strlen(p);
	while (base_len > 0 && p[base_len - 1] == '/')
		base_len--;
	if (base_len >= sizeof(out->base_path))
		return fail(err, err_len, "URL path is too long");
	memcpy(out->base_path, p, base_len);
	out->base_path[base_len] = '\0';
	if (strpbrk(out->base_path, "?# "))
		return fail(err, err_len, "URL path has invalid characters");

	out->host_is_ip = inet_pton(AF_INET, out->host, addr) == 1 ||
	                  inet_pton(AF_INET6, out->host, addr) == 1;
	bool v6 = strchr(out->host, ':') != NULL;
	bool default_port = out->port == (out->tls ? 443 : 80);
	if (default_port)
		snprintf(out->host_header, sizeof(out->host_header), v6 ? "[%s]" : "%s", out->host);
	else
		snprintf(out->host_header, sizeof(out->host_header), v6 ? "[%s]:%d" : "%s:%d",
		         out->host, out->port);
	return 0;
}

enum route_target_kind route_split_target(const char *target, const char **authority,
                                          size_t *authority_len, const char **path)
{
	const char *p;

	*authority = NULL;
	*authority_len = 0;
	*path = NULL;
	if (target[0] == '/') {
		/* "//host/..." is an origin-form path to us, not a network-path reference. */
		*path = target;
		return ROUTE_ORIGIN;
	}
	if (util_strncaseeq(target, "http://", 7))
		p = target + 7;
	else if (util_strncaseeq(target, "https://", 8))
		p = target + 8;
	else
		return ROUTE_BAD;
	*authority = p;
	while (*p && *p != '/' && *p != '?')
		p++;
	*authority_len = (size_t)(p - *authority);
	if (*authority_len == 0 || memchr(*authority, '@', *authority_len))
		return ROUTE_BAD;
	*path = p;
	return ROUTE_ABSOLUTE;
}

bool route_authority_is(const struct route_url *u, const char *authority, size_t len)
{
	const char *host = authority, *host_end, *p;
	int port = u->tls ? 443 : 80; /* no port given: the scheme's default */

	if (len == 0)
		return false;
	if (authority[0] == '[') {
		host = authority + 1;
		host_end = memchr(host, ']', len - 1);
		if (!host_end)
			return false;
		p = host_end + 1;
	} else {
		host_end = memchr(authority, ':', len);
		if (!host_end)
			host_end = authority + len;
		p = host_end;
	}
	if (p < authority + len) {
		if (*p != ':' || p + 1 >= authority + len)
			return false;
		port = 0;
		for (const char *c = p + 1; c < authority + len; c++) {
			if (*c < '0' || *c > '9' || port > 65535)
				return false;
			port = port * 10 + (*c - '0');
		}
	}
	size_t host_len = (size_t)(host_end - host);
	return port == u->port && host_len == strlen(u->host) &&
	       util_strncaseeq(host, u->host, host_len);
}

bool route_is_v1(const char *path)
{
	return strncmp(path, "/v1", 3) == 0 &&
	       (path[3] == '/' || path[3] == '\0' || path[3] == '?');
}

size_t route_path_len(const char *path)
{
	const char *q = strchr(path, '?');

	return q ? (size_t)(q - path) : strlen(path);
}
