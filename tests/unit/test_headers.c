/*
 * test_headers.c: which headers cross the proxy (headers.c).
 */
#include <string.h>
#include <sys/queue.h>

#include <criterion/criterion.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "headers.h"

static void add_all(struct evkeyvalq *h, const char *const *pairs)
{
	TAILQ_INIT(h);
	for (size_t i = 0; pairs[i]; i += 2)
		cr_assert_eq(evhttp_add_header(h, pairs[i], pairs[i + 1]), 0);
}

static size_t count(const struct evkeyvalq *h)
{
	const struct evkeyval *kv;
	size_t n = 0;

	TAILQ_FOREACH(kv, h, next)
	n++;
	return n;
}

Test(headers, hop_by_hop_list)
{
	const char *hop[] = { "Connection",        "keep-alive",
		              "PROXY-CONNECTION",  "te",
		              "Trailer",           "Transfer-Encoding",
		              "upgrade",           "Proxy-Authorization",
		              "Proxy-Authenticate" };
	const char *e2e[] = { "Authorization", "Content-Type",
		              "Version",       "X-RateLimit-Max",
		              "Accept",        "Tee",
		              "Connections",   "Upgrade-Insecure-Requests" };

	for (size_t i = 0; i < sizeof(hop) / sizeof(*hop); i++)
		cr_expect(headers_is_hop_by_hop(hop[i]), "%s", hop[i]);
	for (size_t i = 0; i < sizeof(e2e) / sizeof(*e2e); i++)
		cr_expect(!headers_is_hop_by_hop(e2e[i]), "%s", e2e[i]);
}

Test(headers, copy_request_drops_hop_by_hop_and_named)
{
	struct evkeyvalq in, out;
	const char *pairs[] = { "Host",
		                "proxy:8080",
		                "Connection",
		                "keep-alive, X-Private , x-other",
		                "X-Private",
		                "1",
		                "X-Other",
		                "2",
		                "Authorization",
		                "Bearer t",
		                "Content-Length",
		                "10",
		                "X-GHL-Max-Wait",
		                "100",
		                "Expect",
		                "100-continue",
		                "Accept",
		                "application/json",
		                "TE",
		                "trailers",
		                "x-keep",
		                "yes",
		                NULL };

	add_all(&in, pairs);
	TAILQ_INIT(&out);
	cr_assert_eq(headers_copy(&in, &out,
	                          HEADERS_DROP_HOST | HEADERS_DROP_LENGTH |
	                                  HEADERS_DROP_PROXY_CONTROL | HEADERS_DROP_EXPECT),
	             0);
	cr_expect_eq(count(&out), 3);
	cr_expect_str_eq(evhttp_find_header(&out, "Authorization"), "Bearer t");
	cr_expect_str_eq(evhttp_find_header(&out, "Accept"), "application/json");
	cr_expect_str_eq(evhttp_find_header(&out, "X-Keep"), "yes");
	/* Order is kept. */
	cr_expect_str_eq(TAILQ_FIRST(&out)->key, "Authorization");
	evhttp_clear_headers(&out);

	cr_assert_eq(headers_copy(&in, &out, HEADERS_DROP_AUTHORIZATION), 0);
	cr_expect_null(evhttp_find_header(&out, "Authorization"));
	cr_expect_str_eq(evhttp_find_header(&out, "Host"), "proxy:8080");
	cr_expect_str_eq(evhttp_find_header(&out, "Content-Length"), "10");
	cr_expect_str_eq(evhttp_find_header(&out, "X-GHL-Max-Wait"), "100");
	evhttp_clear_headers(&out);
	evhttp_clear_headers(&in);
}

Test(headers, named_by_connection_tokens)
{
	struct evkeyvalq in;
	const char *pairs[] = { "Connection", "a,,  b ,\tc", "connection", "D", NULL };

	add_all(&in, pairs);
	cr_expect(headers_named_by_connection(&in, "A"));
	cr_expect(headers_named_by_connection(&in, "b"));
	cr_expect(headers_named_by_connection(&in, "c"));
	cr_expect(headers_named_by_connection(&in, "d"));
	cr_expect(!headers_named_by_connection(&in, "e"));
	cr_expect(!headers_named_by_connection(&in, "b ,"));
	evhttp_clear_headers(&in);
}

/* The one rule both directions apply: requests (headers_copy) and answers (request.c). */
Test(headers, end_to_end)
{
	struct evkeyvalq in;
	const char *pairs[] = { "Connection", "X-Hop", "X-Hop", "1", "X-Kept", "2", NULL };

	add_all(&in, pairs);
	cr_expect(!headers_end_to_end(&in, true, "Connection"));
	cr_expect(!headers_end_to_end(&in, true, "keep-alive"));
	cr_expect(!headers_end_to_end(&in, true, "x-hop"));
	cr_expect(headers_end_to_end(&in, true, "X-Kept"));
	/* has_connection false: the caller found no Connection header, none is looked for */
	cr_expect(headers_end_to_end(&in, false, "X-Hop"));
	cr_expect(!headers_end_to_end(&in, false, "Transfer-Encoding"));
	evhttp_clear_headers(&in);
}

Test(headers, check_request)
{
	struct evkeyvalq h;
	const char *ok[] = { "Content-Length", "5", "content-length", "5", NULL };
	const char *two_cl[] = { "Content-Length", "5", "Content-Length", "6", NULL };
	const char *te_gzip[] = { "Transfer-Encoding", "gzip", NULL };
	const char *te_chunked[] = { "Transfer-Encoding", "Chunked", NULL };

	add_all(&h, ok);
	cr_expect_null(headers_check_request(&h));
	evhttp_clear_headers(&h);
	add_all(&h, two_cl);
	cr_expect_not_null(headers_check_request(&h));
	evhttp_clear_headers(&h);
	add_all(&h, te_gzip);
	cr_expect_not_null(headers_check_request(&h));
	evhttp_clear_headers(&h);
	add_all(&h, te_chunked);
	cr_expect_null(headers_check_request(&h));
	evhttp_clear_headers(&h);
}

Test(headers, count)
{
	struct evkeyvalq h;
	const char *p[] = { "Host", "a", "host", "b", "HOST", "c", "X", "d", NULL };

	add_all(&h, p);
	cr_expect_eq(headers_count(&h, "Host"), 3);
	cr_expect_eq(headers_count(&h, "x"), 1);
	cr_expect_eq(headers_count(&h, "y"), 0);
	evhttp_clear_headers(&h);
}
