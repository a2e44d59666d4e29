/*
 * test_forward.c: the proxy as a correct pass-through: what arrives at the mock HighLevel
 * upstream is what the client sent (method, path, query, body: byte-exact; headers: end-to-end
 * only, Host/Version/User-Agent as specified), and what the client gets back is what the
 * upstream answered, whatever the framing, the timing or the client's behaviour.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <criterion/criterion.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fixture.h"
#include "httpc.h"

#define TIMEOUT_MS 20000

static struct fixture fx;

static void sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[32];
	unsigned int n = 0;

	EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* The last `n` entries the mock recorded, as a JSON array (caller decrefs). */
static json_t *mock_entries(const char *addr)
{
	char *s = fixture_mock_log(addr, 0);
	cr_assert(s, "cannot read the mock's log");
	json_t *j = json_loads(s, 0, NULL);
	free(s);
	cr_assert(json_is_array(j));
	return j;
}

static json_t *last_entry(const char *addr)
{
	json_t *all = mock_entries(addr);
	size_t n = json_array_size(all);
	cr_assert_gt(n, 0, "the mock received nothing");
	json_t *e = json_incref(json_array_get(all, n - 1));
	json_decref(all);
	return e;
}

/* Value of a header in a mock log entry ([[name, value], ...]), case-insensitive, or NULL. */
static const char *entry_header(json_t *e, const char *name)
{
	json_t *hs = json_object_get(e, "headers"), *h;
	size_t i;

	json_array_foreach(hs, i, h)
	{
		if (strcasecmp(json_string_value(json_array_get(h, 0)), name) == 0)
			return json_string_value(json_array_get(h, 1));
	}
	return NULL;
}

static int entry_header_count(json_t *e, const char *name)
{
	json_t *hs = json_object_get(e, "headers"), *h;
	size_t i;
	int n = 0;

	json_array_foreach(hs, i, h) n +=
	        strcasecmp(json_string_value(json_array_get(h, 0)), name) == 0;
	return n;
}

static void start_default(void)
{
	struct fixture_opts o = { 0 };
	fixture_start(&fx, &o);
}

static void stop_clean(void)
{
	/* A clean exit also means no leak report from the sanitizers. */
	if (fx.proxy)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
}

/* One request on a fresh connection through the proxy. */
static void req(const char *method, const char *target, const char *headers, const void *body,
                size_t len, struct httpc_response *r)
{
	memset(r, 0, sizeof(*r));
	cr_assert_eq(
	        httpc_request(fx.proxy_addr, method, target, headers, body, len, r, TIMEOUT_MS), 0,
	        "%s %s: no answer", method, target);
}

TestSuite(forward, .init = start_default, .fini = stop_clean, .timeout = 120);

/* Every method, an exotic path and query, a binary body: all byte-exact at the upstream. */
Test(forward, methods_path_query_body_byte_exact)
{
	static const char *methods[] = {
		"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"
	};
	const char *target = "/contacts/a%2Fb;c=d/%E2%82%AC..%2e?locationId=L1&q=a+b%20c&x=%00&"
	                     "empty=&dup=1&dup=2&u=%7B%22a%22%3A1%7D";
	unsigned char body[4096];

	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = (unsigned char)(i * 7 + 3); /* includes NUL and CR/LF bytes */
	char want[65];
	sha256_hex(body, sizeof(body), want);

	for (size_t m = 0; m < sizeof(methods) / sizeof(*methods); m++) {
		bool has_body = strcmp(methods[m], "HEAD") != 0;
		struct httpc_response r;
		memset(&r, 0, sizeof(r));
		cr_assert_eq(httpc_request(fx.proxy_addr, methods[m], target,
		                           "Content-Type: application/octet-stream\r\n",
		                           has_body ? body : NULL, has_body ? sizeof(body) : 0, &r,
		                           TIMEOUT_MS),
		             0);
		cr_assert_eq(r.status, 200, "%s: status %d", methods[m], r.status);
		json_t *e = last_entry(fx.mock_ctl);
		cr_expect_str_eq(json_string_value(json_object_get(e, "method")), methods[m]);
		cr_expect_str_eq(json_string_value(json_object_get(e, "uri")), target);
		if (has_body) {
			cr_expect_eq(json_integer_value(json_object_get(e, "body_len")),
			             (json_int_t)sizeof(body), "%s body length", methods[m]);
			cr_expect_str_eq(json_string_value(json_object_get(e, "body_sha256")),
			                 want);
		}
		json_decref(e);
		httpc_response_free(&r);
	}
}

/* The response comes back as sent: status, body, and HighLevel's X-RateLimit-* untouched. */
Test(forward, response_status_headers_body)
{
	struct httpc_response r;

	req("GET", "/mock/status/418", NULL, NULL, 0, &r);
	cr_expect_eq(r.status, 418);
	httpc_response_free(&r);

	req("GET",
	    "/mock/headers?x-ratelimit-max=100&x-ratelimit-remaining=7&"
	    "X-RateLimit-Interval-Milliseconds=10000&x-ratelimit-daily-remaining=199000",
	    NULL, NULL, 0, &r);
	cr_assert_eq(r.status, 200);
	cr_expect_str_eq(httpc_header(&r, "X-RateLimit-Max"), "100");
	cr_expect_str_eq(httpc_header(&r, "X-RateLimit-Remaining"), "7");
	cr_expect_str_eq(httpc_header(&r, "X-RateLimit-Interval-Milliseconds"), "10000");
	cr_expect_str_eq(httpc_header(&r, "X-RateLimit-Daily-Remaining"), "199000");
	cr_expect(httpc_header(&r, "X-GHL-Proxy-Wait-Ms") != NULL);
	httpc_response_free(&r);

	/* The upstream's Date is passed on as it is, once (the proxy adds its own only to an
	 * answer without one). */
	req("GET", "/mock/headers?Date=Sun,%2006%20Nov%201994%2008:49:37%20GMT", NULL, NULL, 0, &r);
	cr_assert_eq(r.status, 200);
	cr_expect_eq(httpc_header_count(&r, "Date"), 1);
	cr_expect_str_eq(httpc_header(&r, "Date"), "Sun, 06 Nov 1994 08:49:37 GMT");
	httpc_response_free(&r);
}

/* Requests under /v1/ go to the API 1.0 upstream, everything else to API 2.0. */
Test(forward, v1_routing)
{
	struct httpc_response r;
	int before_v2 = fixture_mock_count(fx.mock_ctl);

	harness_secret("v1-api-key-abc");
	req("GET", "/v1/contacts/?limit=1", "Authorization: Bearer v1-api-key-abc\r\n", NULL, 0,
	    &r);
	cr_assert_eq(r.status, 200);
	httpc_response_free(&r);
	json_t *e = last_entry(fx.mock_v1_ctl);
	cr_expect_str_eq(json_string_value(json_object_get(e, "uri")), "/v1/contacts/?limit=1");
	/* API 1.0 has no Version header: none is added there. */
	cr_expect_null(entry_header(e, "Version"));
	json_decref(e);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before_v2, "v1 call reached the v2 upstream");

	req("GET", "/v1x/contacts", NULL, NULL, 0, &r);
	httpc_response_free(&r);
	e = last_entry(fx.mock_ctl);
	cr_expect_str_eq(json_string_value(json_object_get(e, "uri")), "/v1x/contacts");
	json_decref(e);
}

/* Hop-by-hop headers never cross; Host is the upstream's; Version and User-Agent defaults. */
Test(forward, request_headers)
{
	struct httpc_response r;
	char host[64], want_host[80];
	int port;

	harness_secret("passthrough-token-123");
	harness_secret("cHJveHk6c2VjcmV0"); /* Proxy-Authorization: proxy:secret */
	req("GET", "/contacts/",
	    "Connection: keep-alive, X-Remove-Me\r\n"
	    "X-Remove-Me: secret-hop\r\n"
	    "Keep-Alive: timeout=5\r\n"
	    "Proxy-Connection: keep-alive\r\n"
	    "TE: trailers\r\n"
	    "Upgrade: h2c\r\n"
	    "Trailer: X-Checksum\r\n"
	    "Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n"
	    "X-GHL-Max-Wait: 5000\r\n"
	    "X-Keep-1: one\r\n"
	    "Authorization: Bearer passthrough-token-123\r\n"
	    "X-Keep-2: two\r\n",
	    NULL, 0, &r);
	cr_assert_eq(r.status, 200);
	httpc_response_free(&r);
	json_t *e = last_entry(fx.mock_ctl);
	static const char *gone[] = {
		"Connection", "X-Remove-Me", "Keep-Alive",          "Proxy-Connection", "TE",
		"Upgrade",    "Trailer",     "Proxy-Authorization", "X-GHL-Max-Wait"
	};
	for (size_t i = 0; i < sizeof(gone) / sizeof(*gone); i++)
		cr_expect_null(entry_header(e, gone[i]), "%s was forwarded", gone[i]);
	cr_expect_str_eq(entry_header(e, "X-Keep-1"), "one");
	cr_expect_str_eq(entry_header(e, "X-Keep-2"), "two");
	cr_expect_str_eq(entry_header(e, "Authorization"), "Bearer passthrough-token-123");
	cr_assert_eq(harness_split_addr(fx.mock_addr, host, sizeof(host), &port), 0);
	snprintf(want_host, sizeof(want_host), "localhost:%d", port);
	cr_expect_str_eq(entry_header(e, "Host"), want_host);
	cr_expect_eq(entry_header_count(e, "Host"), 1);
	cr_expect_str_eq(entry_header(e, "Version"), "2021-07-28");
	cr_expect(entry_header(e, "User-Agent") &&
	          strncmp(entry_header(e, "User-Agent"), "ghlproxy/", 9) == 0);
	json_decref(e);

	/* The client's own Version and User-Agent are passed through untouched. */
	req("GET", "/contacts/", "Version: 2023-02-21\r\nUser-Agent: my-worker/1.0\r\n", NULL, 0,
	    &r);
	httpc_response_free(&r);
	e = last_entry(fx.mock_ctl);
	cr_expect_str_eq(entry_header(e, "Version"), "2023-02-21");
	cr_expect_eq(entry_header_count(e, "Version"), 1);
	cr_expect_str_eq(entry_header(e, "User-Agent"), "my-worker/1.0");
	json_decref(e);
}

/* Response hop-by-hop headers (and those the upstream's Connection names) are dropped. */
Test(forward, response_hop_by_hop)
{
	struct httpc_response r;

	req("GET",
	    "/mock/headers?Connection=X-Drop-Me&X-Drop-Me=1&Keep-Alive=timeout%3D5&X-Stay=ok", NULL,
	    NULL, 0, &r);
	cr_assert_eq(r.status, 200);
	cr_expect_null(httpc_header(&r, "X-Drop-Me"));
	cr_expect_null(httpc_header(&r, "Keep-Alive"));
	cr_expect_str_eq(httpc_header(&r, "X-Stay"), "ok");
	httpc_response_free(&r);
}

/* A chunked upload arrives whole, with its length, and byte-exact. */
Test(forward, chunked_upload)
{
	static const char body[] = "hello, chunked world!\r\n0\r\nnot the end";
	char head[512], want[65];
	int fd = httpc_connect(fx.proxy_addr);
	struct httpc_response r = { 0 };

	cr_assert_geq(fd, 0);
	snprintf(head, sizeof(head),
	         "POST /contacts/upsert HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
	         "Content-Type: application/json\r\n\r\n");
	cr_assert_eq(httpc_send_all(fd, head, strlen(head)), 0);
	/* Three chunks, uneven, one with an extension. */
	const size_t cuts[] = { 0, 5, 23, sizeof(body) - 1 };
	for (int i = 0; i < 3; i++) {
		char line[64];
		size_t n = cuts[i + 1] - cuts[i];
		snprintf(line, sizeof(line), i == 1 ? "%zx;name=val\r\n" : "%zx\r\n", n);
		cr_assert_eq(httpc_send_all(fd, line, strlen(line)), 0);
		cr_assert_eq(httpc_send_all(fd, body + cuts[i], n), 0);
		cr_assert_eq(httpc_send_all(fd, "\r\n", 2), 0);
	}
	cr_assert_eq(httpc_send_all(fd, "0\r\n\r\n", 5), 0);
	cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	httpc_close(fd);

	json_t *e = last_entry(fx.mock_ctl);
	sha256_hex(body, sizeof(body) - 1, want);
	cr_expect_eq(json_integer_value(json_object_get(e, "body_len")),
	             (json_int_t)(sizeof(body) - 1));
	cr_expect_str_eq(json_string_value(json_object_get(e, "body_sha256")), want);
	cr_expect_null(entry_header(e, "Transfer-Encoding"));
	json_decref(e);
}

/* A 30 MB upload (HighLevel takes media up to 25 MB, files up to 50 MB) arrives intact. */
Test(forward, upload_30mb)
{
	size_t len = 30u * 1024 * 1024;
	unsigned char *body = malloc(len);
	char want[65];
	struct httpc_response r;

	cr_assert(body);
	for (size_t i = 0; i < len; i++)
		body[i] = (unsigned char)((i * 2654435761u) >> 13);
	sha256_hex(body, len, want);
	req("POST", "/medias/upload-file", "Content-Type: application/octet-stream\r\n", body, len,
	    &r);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	free(body);
	json_t *e = last_entry(fx.mock_ctl);
	cr_expect_eq(json_integer_value(json_object_get(e, "body_len")), (json_int_t)len);
	cr_expect_str_eq(json_string_value(json_object_get(e, "body_sha256")), want);
	json_decref(e);
}

/* Large answers are streamed and arrive intact, with Content-Length and chunked upstreams. */
Test(forward, large_response_streamed)
{
	const char *targets[] = { "/mock/big?bytes=52428800", "/mock/big?bytes=20000000&chunked=1",
		                  "/mock/big?bytes=1000" };

	for (size_t i = 0; i < 3; i++) {
		struct httpc_response r;
		char got[65];
		req("GET", targets[i], NULL, NULL, 0, &r);
		cr_assert_eq(r.status, 200, "%s", targets[i]);
		sha256_hex(r.body, r.body_len, got);
		cr_expect_str_eq(got, httpc_header(&r, "X-Mock-Sha256"), "%s: body differs",
		                 targets[i]);
		httpc_response_free(&r);
	}
}

/*
 * A streamed answer ends its exchange: the next request on the same keep-alive connection is
 * answered. (The end of a chunked stream, written at once to a client that keeps up, once left
 * evhttp waiting forever for a "written" it had already missed.)
 */
Test(forward, keep_alive_after_streamed_answer)
{
	const char *targets[] = { "/mock/big?bytes=2000000&chunked=1", "/mock/big?bytes=2000000" };
	const size_t n_targets = sizeof(targets) / sizeof(targets[0]);
	int fd = httpc_connect(fx.proxy_addr);

	cr_assert_geq(fd, 0);
	for (size_t i = 0; i < 2 * n_targets; i++) {
		const char *target = targets[i % n_targets];
		struct httpc_response r = { 0 };
		char rq[256], got[65];
		int n = snprintf(rq, sizeof(rq), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target);

		cr_assert_eq(httpc_send_all(fd, rq, (size_t)n), 0);
		cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0,
		             "request %zu (%s): no answer on the kept-alive connection", i, target);
		cr_expect_eq(r.status, 200, "%s", target);
		sha256_hex(r.body, r.body_len, got);
		cr_expect_str_eq(got, httpc_header(&r, "X-Mock-Sha256"), "%s: body differs",
		                 target);
		cr_assert(!r.closed, "request %zu: the proxy closed the connection", i);
		httpc_response_free(&r);
	}
	httpc_close(fd);
}

/* HEAD answers carry the upstream's Content-Length and no body. */
Test(forward, head_request)
{
	int fd = httpc_connect(fx.proxy_addr);
	struct httpc_response r = { 0 };
	const char *rq = "HEAD /mock/big?bytes=5000 HTTP/1.1\r\nHost: x\r\n\r\n"
	                 "GET /contacts/after-head HTTP/1.1\r\nHost: x\r\n\r\n";

	cr_assert_geq(fd, 0);
	cr_assert_eq(httpc_send_all(fd, rq, strlen(rq)), 0);
	cr_assert_eq(httpc_read_response(fd, &r, true, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(httpc_header(&r, "Content-Length"), "5000");
	cr_expect_eq(r.body_len, 0);
	httpc_response_free(&r);
	/* The connection is still in step: the next answer is the GET's. */
	cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0);
	cr_expect(strstr((const char *)r.body, "/contacts/after-head") != NULL);
	httpc_response_free(&r);
	httpc_close(fd);
}

/* A request line and header block split across TCP writes at every byte offset. */
static void split_at_every_offset(size_t path_len)
{
	char *path = malloc(path_len + 1);
	char *rq = malloc(path_len + 256);
	int fd = httpc_connect(fx.proxy_addr);
	int since = fixture_mock_count(fx.mock_ctl);

	cr_assert(path && rq && fd >= 0);
	path[0] = '/';
	for (size_t i = 1; i < path_len; i++)
		path[i] = "abcdefghijklmnopqrstuvwxyz0123456789-_/%20"[i % 40];
	/* Keep it a valid path: no "%" that is not followed by two hex digits. */
	for (size_t i = 1; i < path_len; i++)
		if (path[i] == '%' && (i + 2 >= path_len))
			path[i] = 'x';
	path[path_len] = '\0';
	int n = snprintf(rq, path_len + 256,
	                 "GET %s HTTP/1.1\r\nHost: proxy\r\nX-Split: yes\r\nAccept: */*\r\n\r\n",
	                 path);

	for (int off = 1; off < n; off++) {
		size_t cut = (size_t)off;
		struct httpc_response r = { 0 };
		cr_assert_eq(httpc_send_split(fd, rq, (size_t)n, &cut, 1, 300), 0);
		cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0, "offset %d", off);
		cr_assert_eq(r.status, 200, "offset %d: status %d", off, r.status);
		httpc_response_free(&r);
	}
	httpc_close(fd);

	/* Every request reached the upstream with the path intact. */
	char *log = fixture_mock_log(fx.mock_ctl, since);
	json_t *all = json_loads(log, 0, NULL), *e;
	size_t i;
	cr_assert_eq(json_array_size(all), (size_t)(n - 1));
	json_array_foreach(all, i, e) cr_assert_str_eq(json_string_value(json_object_get(e, "uri")),
	                                               path, "request %zu: path changed", i);
	json_decref(all);
	free(log);
	free(path);
	free(rq);
}

Test(forward, split_writes_path_100)
{
	split_at_every_offset(100);
}

Test(forward, split_writes_path_1000)
{
	split_at_every_offset(1000);
}

Test(forward, split_writes_path_6000, .timeout = 300)
{
	split_at_every_offset(6000);
}

/* Three pipelined requests are answered in order. */
Test(forward, pipelined_in_order)
{
	const char *rq = "GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\n"
	                 "POST /p/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	                 "GET /mock/slow?ms=200&n=3 HTTP/1.1\r\nHost: x\r\n\r\n";
	const char *want[] = { "/p/1", "/p/2", "/mock/slow?ms=200&n=3" };
	int fd = httpc_connect(fx.proxy_addr);

	cr_assert_geq(fd, 0);
	cr_assert_eq(httpc_send_all(fd, rq, strlen(rq)), 0);
	for (int i = 0; i < 3; i++) {
		struct httpc_response r = { 0 };
		cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0, "answer %d", i);
		json_t *j = json_loads((const char *)r.body, 0, NULL);
		if (i < 2) {
			cr_assert(j, "answer %d is not the echo", i);
			cr_expect_str_eq(json_string_value(json_object_get(j, "uri")), want[i]);
		}
		json_decref(j);
		httpc_response_free(&r);
	}
	httpc_close(fd);
}

struct client_arg {
	int id;
	int n_ok;
	const char *addr;
};

static void *client_thread(void *arg)
{
	struct client_arg *a = arg;
	int fd = httpc_connect(a->addr);

	if (fd < 0)
		return NULL;
	for (int k = 0; k < 10; k++) {
		char rq[256], want[64];
		struct httpc_response r = { 0 };
		snprintf(want, sizeof(want), "/clients/%d/req/%d", a->id, k);
		snprintf(rq, sizeof(rq), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", want);
		if (httpc_send_all(fd, rq, strlen(rq)) < 0 ||
		    httpc_read_response(fd, &r, false, TIMEOUT_MS) < 0)
			break;
		json_t *j = json_loads((const char *)r.body, 0, NULL);
		if (r.status == 200 && j &&
		    strcmp(json_string_value(json_object_get(j, "uri")), want) == 0)
			a->n_ok++;
		json_decref(j);
		httpc_response_free(&r);
	}
	httpc_close(fd);
	return NULL;
}

/* 200 concurrent keep-alive clients all get their own, correct answers. */
Test(forward, concurrent_keepalive_clients)
{
	enum { N = 200 };
	pthread_t th[N];
	static struct client_arg args[N];

	for (int i = 0; i < N; i++) {
		args[i] = (struct client_arg){ .id = i, .addr = fx.proxy_addr };
		cr_assert_eq(pthread_create(&th[i], NULL, client_thread, &args[i]), 0);
	}
	int total = 0;
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		total += args[i].n_ok;
	}
	cr_expect_eq(total, N * 10, "%d of %d answers were right", total, N * 10);
}

/* Errors the proxy answers itself are JSON, with a clear message. */
static void expect_json_error(struct httpc_response *r, int status)
{
	cr_expect_eq(r->status, status, "status %d, want %d", r->status, status);
	const char *ct = httpc_header(r, "Content-Type");
	cr_expect(ct && strstr(ct, "application/json"), "error is not JSON");
	json_t *j = json_loads((const char *)r->body, 0, NULL);
	cr_expect(j != NULL, "error body does not parse: %s", r->body);
	cr_expect_eq(json_integer_value(json_object_get(j, "statusCode")), status);
	cr_expect(json_string_length(json_object_get(j, "message")) > 0);
	json_decref(j);
}

static int raw_exchange(const char *bytes, size_t len, struct httpc_response *r)
{
	int fd = httpc_connect(fx.proxy_addr);

	memset(r, 0, sizeof(*r));
	if (fd < 0 || httpc_send_all(fd, bytes, len) < 0)
		return -1;
	int rc = httpc_read_response(fd, r, false, TIMEOUT_MS);
	httpc_close(fd);
	return rc;
}

Test(forward, refused_requests)
{
	struct httpc_response r;
	char host[64], rq[512];
	int port;
	int before = fixture_mock_count(fx.mock_ctl);

	const char *connect_rq = "CONNECT services.leadconnectorhq.com:443 HTTP/1.1\r\n"
	                         "Host: services.leadconnectorhq.com:443\r\n\r\n";
	cr_assert_eq(raw_exchange(connect_rq, strlen(connect_rq), &r), 0);
	expect_json_error(&r, 405);
	httpc_response_free(&r);

	const char *abs_rq = "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\n\r\n";
	cr_assert_eq(raw_exchange(abs_rq, strlen(abs_rq), &r), 0);
	expect_json_error(&r, 400);
	httpc_response_free(&r);

	const char *bad = "GET /x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n";
	cr_assert_eq(raw_exchange(bad, strlen(bad), &r), 0);
	expect_json_error(&r, 400);
	httpc_response_free(&r);

	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before, "a refused request was forwarded");

	/* An absolute-form target naming the configured upstream is served. */
	cr_assert_eq(harness_split_addr(fx.mock_addr, host, sizeof(host), &port), 0);
	snprintf(rq, sizeof(rq),
	         "GET https://localhost:%d/contacts/abs?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", port);
	cr_assert_eq(raw_exchange(rq, strlen(rq), &r), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	json_t *e = last_entry(fx.mock_ctl);
	cr_expect_str_eq(json_string_value(json_object_get(e, "uri")), "/contacts/abs?x=1");
	json_decref(e);
}

/* Over server.max_body: 413 before the body is read; over the header limit: 431. */
Test(forward, size_limits)
{
	struct fixture_opts o = { .proxy_conf = "[server]\nmax_body = 1MiB\nmax_header_size = "
		                                "8KiB\nmax_request_line = 4KiB\n" };
	struct httpc_response r;

	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	fixture_stop(&fx);
	fixture_start(&fx, &o);
	int before = fixture_mock_count(fx.mock_ctl);

	const char *big = "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n";
	cr_assert_eq(raw_exchange(big, strlen(big), &r), 0);
	expect_json_error(&r, 413);
	httpc_response_free(&r);

	size_t hl = 10000;
	char *rq = malloc(hl + 128);
	int n = snprintf(rq, hl + 128, "GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ");
	memset(rq + n, 'a', hl);
	memcpy(rq + n + hl, "\r\n\r\n", 5);
	cr_assert_eq(raw_exchange(rq, strlen(rq), &r), 0);
	expect_json_error(&r, 431);
	httpc_response_free(&r);
	free(rq);

	/* Just under the body limit passes. */
	size_t ok_len = 1024 * 1024;
	char *body = calloc(1, ok_len);
	req("PUT", "/x", NULL, body, ok_len, &r);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	free(body);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before + 1);
}

/* A client that hangs up while its request waits on a slow upstream leaves no trace: the
 * exchange is cancelled, the proxy serves on, and it exits clean (no leak under ASan). */
Test(forward, client_hangs_up_while_waiting)
{
	for (int i = 0; i < 5; i++) {
		int fd = httpc_connect(fx.proxy_addr);
		int n0 = fixture_mock_count(fx.mock_ctl);
		const char *rq = "GET /mock/slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n";
		cr_assert_geq(fd, 0);
		cr_assert_eq(httpc_send_all(fd, rq, strlen(rq)), 0);
		/* Hang up once the request is waiting on the upstream's answer. */
		int64_t until = harness_now_ms() + TIMEOUT_MS;
		while (fixture_mock_count(fx.mock_ctl) == n0 && harness_now_ms() < until)
			usleep(5000);
		cr_assert_gt(fixture_mock_count(fx.mock_ctl), n0, "the slow request never arrived");
		httpc_close(fd);
	}
	/* Hang up mid-upload: nothing is forwarded. */
	int before = fixture_mock_count(fx.mock_ctl);
	int fd = httpc_connect(fx.proxy_addr);
	const char *half =
	        "POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly-some";
	cr_assert_eq(httpc_send_all(fd, half, strlen(half)), 0);
	httpc_close(fd);
	/* Hang up mid-answer of a big streamed response. */
	fd = httpc_connect(fx.proxy_addr);
	const char *bigrq = "GET /mock/big?bytes=200000000 HTTP/1.1\r\nHost: x\r\n\r\n";
	cr_assert_eq(httpc_send_all(fd, bigrq, strlen(bigrq)), 0);
	char buf[65536];
	size_t got = 0;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* httpc's sockets are non-blocking */
	while (got < 2 * 1024 * 1024) {
		ssize_t k = read(fd, buf, sizeof(buf));
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	httpc_close(fd);

	struct httpc_response r;
	req("GET", "/after/hangups", NULL, NULL, 0, &r);
	cr_expect_eq(r.status, 200, "the proxy stopped serving");
	httpc_response_free(&r);
	json_t *all = mock_entries(fx.mock_ctl), *e;
	size_t i;
	json_array_foreach(all, i, e)
	        cr_expect(strcmp(json_string_value(json_object_get(e, "uri")), "/half") != 0,
	                  "a half-sent request was forwarded");
	json_decref(all);
	int after = fixture_mock_count(fx.mock_ctl);
	cr_expect_geq(after, before + 2, "before %d after %d", before, after);
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "client_gone") != NULL, "the proxy did not notice the hang-ups");
	free(log);
}

/* The log has one line per request, with the path but not the query, and never a credential. */
Test(forward, log_lines_without_secrets)
{
	struct httpc_response r;
	const char *token = "pit-7f3a9c1e-5b2d-4e8f-a6c4-0d1e2f3a4b5c";
	char hdr[128];

	harness_secret(token);
	snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", token);
	req("GET", "/contacts/logged?secret_query=hunter2&locationId=LOC9", hdr, NULL, 0, &r);
	httpc_response_free(&r);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	char *log = harness_log(fx.proxy);
	cr_assert(log);
	cr_expect(strstr(log, "path=/contacts/logged") != NULL, "no request line: %s", log);
	cr_expect(strstr(log, "status=200") != NULL);
	cr_expect(strstr(log, "upstream_ms=") != NULL);
	cr_expect(strstr(log, "bytes=") != NULL);
	cr_expect(strstr(log, "method=GET") != NULL);
	cr_expect_null(strstr(log, "hunter2"), "the query was logged");
	cr_expect_null(strstr(log, "7f3a9c1e"), "a token fragment was logged");
	cr_expect_null(strstr(log, "pit-7f3a"), "a token prefix was logged");
	free(log);
	harness_proc_free(fx.proxy);
	fx.proxy = NULL;
}

/* --- upstream failures: each with its own proxy configuration --- */

TestSuite(upstream_errors, .timeout = 120);

Test(upstream_errors, wrong_ca_gives_502_and_forwards_nothing)
{
	struct fixture_opts o = { .wrong_ca = true };
	struct httpc_response r;

	fixture_start(&fx, &o);
	req("GET", "/contacts/", NULL, NULL, 0, &r);
	expect_json_error(&r, 502);
	cr_expect(strstr((const char *)r.body, "certificate verify failed") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 0);
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "certificate verify failed") != NULL, "the log does not say why");
	free(log);
	stop_clean();
}

Test(upstream_errors, wrong_hostname_gives_502_and_forwards_nothing)
{
	struct fixture_opts o = { .cert_names = "wrong.example" };
	struct httpc_response r;

	fixture_start(&fx, &o);
	req("GET", "/contacts/", NULL, NULL, 0, &r);
	expect_json_error(&r, 502);
	cr_expect(strstr((const char *)r.body, "certificate verify failed") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 0);
	stop_clean();
}

Test(upstream_errors, dead_upstream_gives_502)
{
	struct fixture_opts o = { .no_proxy = true };
	struct httpc_response r;

	fixture_start(&fx, &o);
	/* Stop the mock so its port refuses connections. */
	harness_proc_free(fx.mock);
	fx.mock = NULL;
	cr_assert_eq(fixture_start_proxy(&fx, NULL), 0);
	req("GET", "/contacts/", NULL, NULL, 0, &r);
	expect_json_error(&r, 502);
	httpc_response_free(&r);
	stop_clean();
}

Test(upstream_errors, slow_upstream_gives_504)
{
	struct fixture_opts o = { .proxy_conf = "[upstream]\ntimeout = 1s\n" };
	struct httpc_response r;

	fixture_start(&fx, &o);
	int64_t t0 = harness_now_ms();
	req("GET", "/mock/slow?ms=5000", NULL, NULL, 0, &r);
	expect_json_error(&r, 504);
	cr_expect_lt(harness_now_ms() - t0, 4500, "the timeout did not cut the wait");
	httpc_response_free(&r);
	/* The proxy serves on. */
	req("GET", "/contacts/", NULL, NULL, 0, &r);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	stop_clean();
}

/* An upstream that reads a request slowly (128 KiB per 50 ms, through a small receive buffer),
 * then answers "ok". */
struct slow_reader {
	int lfd;
	size_t want; /* header block plus body */
	size_t got;
};

static void *slow_reader_main(void *arg)
{
	struct slow_reader *s = arg;
	int fd = accept(s->lfd, NULL, NULL);
	char *buf = malloc(131072);
	const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

	if (fd < 0 || !buf) {
		free(buf);
		return NULL;
	}
	for (int64_t end = harness_now_ms() + 30000; s->got < s->want && harness_now_ms() < end;) {
		ssize_t n = read(fd, buf, 131072);
		if (n <= 0)
			break;
		s->got += (size_t)n;
		usleep(50 * 1000);
	}
	if (s->got >= s->want)
		(void)!write(fd, ok, sizeof(ok) - 1);
	close(fd);
	free(buf);
	return NULL;
}

/*
 * upstream.timeout runs from the last byte of the request written to the answer's head: an upload
 * that keeps moving for three times as long is not cut (it once ran from the first byte, and a
 * large upload on a slow link got a 504 midway). "Written" is handed to the kernel, which holds
 * up to 4 MiB more here (tcp_wmem), delivered in under 2 s: the timeout is 3 s.
 */
Test(upstream_errors, slow_upload_is_not_cut)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
		                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int rcvbuf = 131072, one = 1;
	const size_t body_len = 24u << 20;
	char conf[256];
	struct slow_reader s = { .lfd = socket(AF_INET, SOCK_STREAM, 0) };
	pthread_t th;
	struct httpc_response r;

	cr_assert_geq(s.lfd, 0);
	setsockopt(s.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(s.lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	cr_assert_eq(bind(s.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(s.lfd, 4), 0);
	cr_assert_eq(getsockname(s.lfd, (struct sockaddr *)&sa, &sl), 0);
	fixture_start(&fx, &(struct fixture_opts){ .proxy_conf = "[upstream]\ntimeout = 3s\n",
	                                           .no_proxy = true });
	/* The API 2.0 upstream is the slow reader: the generated url line is replaced. */
	FILE *f = fopen(fx.conf_path, "r");
	char text[8192], line[512];
	size_t used = 0;
	bool replaced = false;
	cr_assert(f);
	while (fgets(line, sizeof(line), f)) {
		if (!replaced && strncmp(line, "url = ", 6) == 0) {
			snprintf(conf, sizeof(conf), "url = http://127.0.0.1:%d\n",
			         ntohs(sa.sin_port));
			snprintf(line, sizeof(line), "%s", conf);
			replaced = true;
		}
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%s", line);
		cr_assert_lt(used, sizeof(text));
	}
	fclose(f);
	cr_assert(replaced, "no url line in %s", fx.conf_path);
	f = fopen(fx.conf_path, "w");
	cr_assert(f);
	fputs(text, f);
	fclose(f);
	cr_assert_eq(fixture_start_proxy(&fx, NULL), 0, "the proxy did not start");
	char *body = calloc(1, body_len);
	cr_assert(body);
	s.want = body_len; /* at least: the header block comes on top */
	pthread_create(&th, NULL, slow_reader_main, &s);
	int64_t t0 = harness_now_ms();
	req("POST", "/medias/upload-file", "Content-Type: application/octet-stream\r\n", body,
	    body_len, &r);
	int64_t took = harness_now_ms() - t0;
	pthread_join(th, NULL);
	close(s.lfd);
	free(body);
	cr_expect_eq(r.status, 200, "a moving upload was cut (%d after %lld ms)", r.status,
	             (long long)took);
	cr_expect_geq(took, 6000, "the upload was not slow (%lld ms): the test proves nothing",
	              (long long)took);
	httpc_response_free(&r);
	stop_clean();
}

/* --- the system store (no upstream.ca_file) --- */

/* dir/name/ holding `ca` (a file in dir) under its subject hash, as c_rehash leaves it. */
static void hashed_dir(const char *dir, const char *name, const char *ca)
{
	char path[512], link[600], target[512];

	snprintf(path, sizeof(path), "%s/%s", dir, ca);
	FILE *f = fopen(path, "r");
	cr_assert(f, "%s", path);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	cr_assert(x);
	unsigned long h = X509_subject_name_hash(x);
	X509_free(x);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(link, sizeof(link), "%s/%08lx.0", path, h);
	snprintf(target, sizeof(target), "../%s", ca);
	cr_assert_eq(symlink(target, link), 0);
}

/* Start the mocks, and the proxy with no upstream.ca_file and a system store (SSL_CERT_DIR) of
 * `ca` alone, hashed. SSL_CERT_FILE is set empty, which is unset: whatever bundle the test's own
 * environment names, the directory alone is used. Then one request. */
static void request_with_store(const char *ca, struct httpc_response *r)
{
	struct fixture_opts o = { .system_store = true, .no_proxy = true };
	char env[600];

	fixture_start(&fx, &o);
	hashed_dir(fx.dir, "certs", ca);
	snprintf(env, sizeof(env), "SSL_CERT_DIR=%s/certs", fx.dir);
	char *const envs[] = { env, (char *)"SSL_CERT_FILE=", NULL };
	cr_assert_eq(fixture_start_proxy(&fx, envs), 0);
	req("GET", "/contacts/", NULL, NULL, 0, r);
}

/* The proxy reads the hashed directory lazily; the mock's CA in it verifies the upstream. */
Test(upstream_errors, system_store_hashed_dir_verifies)
{
	struct httpc_response r;

	request_with_store("srv-ca.pem", &r);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	stop_clean();
}

/* A store that does not hold the CA that signed the upstream: 502, nothing forwarded. */
Test(upstream_errors, system_store_without_the_ca_gives_502)
{
	struct httpc_response r;

	request_with_store("other-ca.pem", &r);
	expect_json_error(&r, 502);
	cr_expect(strstr((const char *)r.body, "certificate verify failed") != NULL, "%s", r.body);
	httpc_response_free(&r);
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), 0);
	stop_clean();
}

/* SSL_CERT_FILE names a bundle: it is read (the directory, with no hash links, is not enough). */
Test(upstream_errors, system_store_bundle_file)
{
	struct fixture_opts o = { .system_store = true, .no_proxy = true };
	struct httpc_response r;
	char env_dir[600], env_file[600], path[512];

	fixture_start(&fx, &o);
	snprintf(path, sizeof(path), "%s/empty", fx.dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(env_dir, sizeof(env_dir), "SSL_CERT_DIR=%s", path);
	snprintf(env_file, sizeof(env_file), "SSL_CERT_FILE=%s/srv-ca.pem", fx.dir);
	char *const envs[] = { env_dir, env_file, NULL };
	cr_assert_eq(fixture_start_proxy(&fx, envs), 0);
	req("GET", "/contacts/", NULL, NULL, 0, &r);
	cr_expect_eq(r.status, 200, "%d %s", r.status, r.body);
	httpc_response_free(&r);
	stop_clean();
}

/* --- listeners --- */

TestSuite(listen, .timeout = 60);

Test(listen, unix_socket)
{
	struct fixture_opts o = { .no_proxy = true };
	struct httpc_response r = { 0 };
	char conf[512], addr[600];

	fixture_start(&fx, &o);
	/* Point the generated config at a unix socket via an override file appended. */
	snprintf(conf, sizeof(conf), "%s/proxy.sock", fx.dir);
	char *env[] = { NULL, NULL };
	char var[700];
	snprintf(var, sizeof(var), "GHLPROXY_SERVER_LISTEN=unix:%s", conf);
	env[0] = var;
	cr_assert_eq(fixture_start_proxy(&fx, env), 0);
	snprintf(addr, sizeof(addr), "unix:%s", conf);
	cr_expect_str_eq(fx.proxy_addr, addr);
	cr_assert_eq(httpc_request(addr, "GET", "/over/unix", NULL, NULL, 0, &r, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	stop_clean();
}

/* A unix listener takes its owner, group and mode from server.socket_owner / socket_group /
 * socket_mode, so that only one service user may reach the proxy; an unknown user is refused at
 * start with a clear message. */
Test(listen, unix_socket_owner_group_mode)
{
	struct fixture_opts o = { .no_proxy = true };
	struct httpc_response r = { 0 };
	char path[512], var[700], addr[600];
	struct stat st;
	struct group *g = getgrnam("nogroup");
	struct passwd *pw = getpwnam("nobody");

	cr_assert(g && pw, "this test needs the nogroup group and the nobody user");
	fixture_start(&fx, &o);
	snprintf(path, sizeof(path), "%s/owned.sock", fx.dir);
	snprintf(var, sizeof(var), "GHLPROXY_SERVER_LISTEN=unix:%s", path);
	char *env[] = { var, "GHLPROXY_SERVER_SOCKET_MODE=0620",
		        "GHLPROXY_SERVER_SOCKET_OWNER=nobody",
		        "GHLPROXY_SERVER_SOCKET_GROUP=nogroup", NULL };
	cr_assert_eq(fixture_start_proxy(&fx, env), 0);
	cr_assert_eq(stat(path, &st), 0);
	cr_expect(S_ISSOCK(st.st_mode));
	cr_expect_eq(st.st_mode & 07777, 0620, "mode %o", st.st_mode & 07777);
	cr_expect_eq(st.st_uid, pw->pw_uid);
	cr_expect_eq(st.st_gid, g->gr_gid);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	cr_assert_eq(httpc_request(addr, "GET", "/over/owned/unix", NULL, NULL, 0, &r, TIMEOUT_MS),
	             0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	harness_proc_free(fx.proxy);
	fx.proxy = NULL;

	/* An owner that does not exist: refused at start, naming it. */
	char *bad[] = { var, "GHLPROXY_SERVER_SOCKET_OWNER=no-such-user-here", NULL };
	cr_expect_neq(fixture_start_proxy(&fx, bad), 0, "started with an unknown socket owner");
	if (fx.proxy) {
		char *log = harness_log(fx.proxy);
		cr_expect(strstr(log, "no-such-user-here") != NULL, "%s", log);
		free(log);
		harness_proc_free(fx.proxy);
		fx.proxy = NULL;
	}
	stop_clean();
}

Test(listen, ipv6_and_ipv4)
{
	struct fixture_opts o = { .no_proxy = true };
	struct httpc_response r = { 0 };
	char *env[] = { "GHLPROXY_SERVER_LISTEN=[::1]:0,127.0.0.1:0", NULL };

	fixture_start(&fx, &o);
	int fd6 = httpc_connect("[::1]:9"); /* is IPv6 loopback usable here at all? */
	if (fd6 < 0 && errno == EADDRNOTAVAIL) {
		stop_clean();
		cr_skip_test("no IPv6 loopback on this machine");
	}
	if (fd6 >= 0)
		httpc_close(fd6);
	cr_assert_eq(fixture_start_proxy(&fx, env), 0);
	char *all = harness_notify_var(fx.proxy, "X_GHLPROXY_LISTEN");
	cr_assert(all && strchr(all, ','));
	char *v4 = strchr(all, ',') + 1;
	*strchr(all, ',') = '\0';
	cr_assert_eq(httpc_request(all, "GET", "/over/v6", NULL, NULL, 0, &r, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_assert_eq(httpc_request(v4, "GET", "/over/v4", NULL, NULL, 0, &r, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	free(all);
	stop_clean();
}

Test(listen, remote_address_refused_without_allow_remote)
{
	struct fixture_opts o = { .no_proxy = true };
	char *env[] = { "GHLPROXY_SERVER_LISTEN=0.0.0.0:0", NULL };

	fixture_start(&fx, &o);
	char *argv[] = { (char *)harness_proxy_bin(), "-c", fx.conf_path, NULL };
	struct harness_proc *p = harness_spawn(fx.dir, "proxy-remote", argv, env);
	cr_assert(p);
	cr_expect_eq(harness_wait_exit(p, 10000), 1, "the proxy started on a remote address");
	char *log = harness_log(p);
	cr_expect(strstr(log, "not a loopback address") != NULL, "%s", log);
	free(log);
	harness_proc_free(p);
	fixture_stop(&fx);
}

/* --- log format --- */

TestSuite(logs, .timeout = 60);

/* log.format = json: every line the proxy writes is one JSON object with a level and a message,
 * the request line carries method, path (no query), status, upstream_ms and bytes, and no
 * credential appears anywhere. */
Test(logs, json_lines_without_secrets)
{
	struct fixture_opts o = { .proxy_conf = "[log]\nformat = json\n" };
	struct httpc_response r;
	const char *token = "pit-0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
	char hdr[128];

	fixture_start(&fx, &o);
	harness_secret(token);
	snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", token);
	req("POST", "/contacts/json?secret_query=hunter2&locationId=LOCJ", hdr, "{\"a\":1}", 7, &r);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	char *log = harness_log(fx.proxy);
	cr_assert(log);
	int lines = 0, request_lines = 0;
	for (char *save = NULL, *line = strtok_r(log, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		json_error_t err;
		json_t *j = json_loads(line, 0, &err);
		cr_expect(j != NULL && json_is_object(j), "not a JSON object: %s", line);
		lines++;
		if (!j)
			continue;
		cr_expect(json_is_string(json_object_get(j, "level")), "no level: %s", line);
		cr_expect(json_is_string(json_object_get(j, "msg")), "no msg: %s", line);
		json_t *path = json_object_get(j, "path");
		if (path && json_object_get(j, "status")) {
			request_lines++;
			cr_expect_str_eq(json_string_value(path), "/contacts/json");
			cr_expect_str_eq(json_string_value(json_object_get(j, "method")), "POST");
			cr_expect_eq(json_integer_value(json_object_get(j, "status")), 200);
			cr_expect(json_object_get(j, "upstream_ms") != NULL);
			cr_expect(json_object_get(j, "bytes") != NULL);
		}
		json_decref(j);
	}
	free(log);
	cr_expect_geq(lines, 3, "too few log lines");
	cr_expect_eq(request_lines, 1, "one request line expected");
	log = harness_log(fx.proxy);
	cr_expect_null(strstr(log, "hunter2"), "the query was logged");
	cr_expect_null(strstr(log, "0a1b2c3d"), "a token fragment was logged");
	free(log);
	stop_clean();
}
