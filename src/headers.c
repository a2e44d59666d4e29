/*
 * headers.c: header filtering between client and upstream. See headers.h for the rules.
 */
#include "headers.h"

#include <errno.h>
#include <string.h>

#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "util.h"

#define HOP(s)                   \
	{                        \
		s, sizeof(s) - 1 \
	}
static const struct {
	const char *name;
	size_t len;
} hop_by_hop[] = {
	HOP("Connection"),
	HOP("Keep-Alive"),
	HOP("Proxy-Connection"),
	HOP("TE"),
	HOP("Trailer"),
	HOP("Transfer-Encoding"),
	HOP("Upgrade"),
	HOP("Proxy-Authenticate"),
	HOP("Proxy-Authorization"),
};
#undef HOP

/* Every header of every request and answer passes here: the length rules out most names
 * before a byte is compared. */
bool headers_is_hop_by_hop(const char *name)
{
	size_t len = strlen(name);

	for (size_t i = 0; i < ARRAY_SIZE(hop_by_hop); i++)
		if (hop_by_hop[i].len == len && util_strcaseeq(name, hop_by_hop[i].name))
			return true;
	return false;
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* Is `name` one of the comma-separated tokens of `list`? */
static bool list_has_token(const char *list, const char *name)
{
	size_t name_len = strlen(name);
	const char *p = list;

	while (*p) {
		while (*p == ',' || is_ows(*p))
			p++;
		const char *start = p;
		while (*p && *p != ',')
			p++;
		const char *end = p;
		while (end > start && is_ows(end[-1]))
			end--;
		if ((size_t)(end - start) == name_len && util_strncaseeq(start, name, name_len))
			return true;
	}
	return false;
}

bool headers_named_by_connection(const struct evkeyvalq *h, const char *name)
{
	const struct evkeyval *kv;

	TAILQ_FOREACH(kv, h, next)
	if (util_strcaseeq(kv->key, "Connection") && list_has_token(kv->value, name))
		return true;
	return false;
}

bool headers_has_connection(const struct evkeyvalq *h)
{
	return headers_count(h, "Connection") > 0;
}

bool headers_end_to_end(const struct evkeyvalq *h, bool has_connection, const char *name)
{
	return !headers_is_hop_by_hop(name) &&
	       !(has_connection && headers_named_by_connection(h, name));
}

static bool dropped(const struct evkeyvalq *in, bool has_connection, const char *name,
                    unsigned flags)
{
	if (!headers_end_to_end(in, has_connection, name))
		return true;
	if ((flags & HEADERS_DROP_HOST) && util_strcaseeq(name, "Host"))
		return true;
	if ((flags & HEADERS_DROP_LENGTH) && util_strcaseeq(name, "Content-Length"))
		return true;
	if ((flags & HEADERS_DROP_AUTHORIZATION) && util_strcaseeq(name, "Authorization"))
		return true;
	if ((flags & HEADERS_DROP_PROXY_CONTROL) && util_strncaseeq(name, "X-GHL-", 6))
		return true;
	return (flags & HEADERS_DROP_EXPECT) && util_strcaseeq(name, "Expect");
}

int headers_copy(const struct evkeyvalq *in, struct evkeyvalq *out, unsigned flags)
{
	const struct evkeyval *kv;
	bool has_connection = headers_has_connection(in);

	TAILQ_FOREACH(kv, in, next)
	{
		if (dropped(in, has_connection, kv->key, flags))
			continue;
		if (evhttp_add_header(out, kv->key, kv->value) < 0)
			return -ENOMEM;
	}
	return 0;
}

size_t headers_count(const struct evkeyvalq *h, const char *name)
{
	const struct evkeyval *kv;
	size_t n = 0;

	TAILQ_FOREACH(kv, h, next)
	if (util_strcaseeq(kv->key, name))
		n++;
	return n;
}

const char *headers_check_request(const struct evkeyvalq *h)
{
	const struct evkeyval *kv;
	const char *cl = NULL;

	TAILQ_FOREACH(kv, h, next)
	{
		if (strpbrk(kv->value, "\r\n") || strpbrk(kv->key, "\r\n :"))
			return "invalid header field";
		if (util_strcaseeq(kv->key, "Content-Length")) {
			if (cl && strcmp(cl, kv->value) != 0)
				return "conflicting Content-Length";
			cl = kv->value;
		} else if (util_strcaseeq(kv->key, "Transfer-Encoding")) {
			if (!util_strcaseeq(kv->value, "chunked"))
				return "unsupported Transfer-Encoding";
		}
	}
	return NULL;
}
