/*
 * test_hostile.c: the real binary against hostile clients, a hostile upstream and hostile
 * tokens and bodies.
 *
 *  - smuggling: a table of raw request vectors (framing, chunk syntax, field syntax, limits,
 *    methods, versions, targets, pipelined tricks), each sent on its own connection: the status
 *    and JSON error expected, the connection closed after it, and nothing forwarded (the mock's
 *    log, read after a sentinel request that did go through, holds the sentinel alone). A few
 *    accepted controls show that what the table refuses is refused for its trick, not by
 *    accident.
 *  - slow clients: header and body timeouts, a silent connection, max_connections, and the
 *    memory that 1,000 idle connections cost (the proxy's RSS from /proc).
 *  - hostile upstream: an oversized header block, truncated bodies (buffered and streamed), a
 *    connection closed without an answer, bytes past the end of a body, a TLS server that offers
 *    only TLS 1.0/1.1, a certificate for another name, an answer with no length ended by a bare
 *    TCP close instead of close_notify: a clear JSON 502 (or, once the head has gone out, a cut
 *    connection), and the proxy serves on.
 *  - hostile tokens and bodies given to classification: classified by the fallback rules, read
 *    from the request log's key field, and answered.
 *
 * Line folding and NUL bytes in field values are refused (400), never rewritten to SP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "certs.h"
#include "fixture.h"
#include "httpc.h"

#define TIMEOUT_MS 20000

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static struct fixture fx;

/* ---- helpers ---------------------------------------------------------------------------- */

static void stop_clean(void)
{
	/* A clean exit (0) also means no sanitizer report from the proxy. */
	if (fx.proxy)
		cr_expect_eq(fixture_stop_proxy(&fx), 0, "the proxy did not exit cleanly");
	fixture_stop(&fx);
}

static void start_with(const char *conf)
{
	struct fixture_opts o = { .proxy_conf = conf };

	fixture_start(&fx, &o);
}

/* An error the proxy answers itself: JSON {"statusCode":N,"message":...}. */
static void expect_json_error(const struct httpc_response *r, int status, const char *what)
{
	cr_expect_eq(r->status, status, "%s: status %d, want %d", what, r->status, status);
	const char *ct = httpc_header(r, "Content-Type");
	cr_expect(ct && strstr(ct, "application/json"), "%s: error is not JSON", what);
	json_t *j = r->body ? json_loads((const char *)r->body, 0, NULL) : NULL;
	cr_expect(j != NULL, "%s: error body does not parse: %s", what,
	          r->body ? (const char *)r->body : "(none)");
	cr_expect_eq(json_integer_value(json_object_get(j, "statusCode")), status, "%s", what);
	cr_expect(json_string_length(json_object_get(j, "message")) > 0, "%s: no message", what);
	json_decref(j);
}

/* The mock's log entries from index `since` on (a JSON array; caller decrefs). */
static json_t *mock_since(const char *ctl, int since)
{
	char *s = fixture_mock_log(ctl, since);
	cr_assert(s, "cannot read the mock's log");
	json_t *j = json_loads(s, 0, NULL);
	free(s);
	cr_assert(json_is_array(j));
	return j;
}

static const char *entry_uri(json_t *e)
{
	const char *u = json_string_value(json_object_get(e, "uri"));
	return u ? u : "";
}

/* One request on a fresh connection through the proxy. */
static int req(const char *method, const char *target, const char *headers, const void *body,
               size_t len, struct httpc_response *r)
{
	memset(r, 0, sizeof(*r));
	return httpc_request(fx.proxy_addr, method, target, headers, body, len, r, TIMEOUT_MS);
}

/* The proxy answers an ordinary request: it is alive and serving. */
static void expect_serving(const char *what)
{
	struct httpc_response r;

	cr_assert_eq(req("GET", "/contacts/still-serving", NULL, NULL, 0, &r), 0,
	             "%s: the proxy stopped answering", what);
	cr_expect_eq(r.status, 200, "%s: the next request got %d", what, r.status);
	httpc_response_free(&r);
}

static long proc_rss_kib(pid_t pid)
{
	char path[64], *s, *p;
	long kib = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	s = harness_read_file(path, NULL);
	if (!s)
		return -1;
	p = strstr(s, "VmRSS:");
	if (p)
		kib = strtol(p + 6, NULL, 10);
	free(s);
	return kib;
}

/* Poll the proxy's open-connection gauge until `pred` holds (bounded). */
static bool wait_connections(long at_least, long at_most, int timeout_ms)
{
	int64_t until = harness_now_ms() + timeout_ms;

	for (;;) {
		double v = fixture_metric(&fx, "ghlproxy_client_connections");
		if (v >= (double)at_least && v <= (double)at_most)
			return true;
		if (harness_now_ms() > until)
			return false;
		usleep(20000);
	}
}

/* The value of key=... on the proxy's request log line for `path`, or NULL. Caller frees. */
static char *log_key_for(const char *path)
{
	char *log = harness_log(fx.proxy), *found = NULL;
	char needle[256];

	if (!log)
		return NULL;
	snprintf(needle, sizeof(needle), "path=%s ", path);
	for (char *save = NULL, *line = strtok_r(log, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (!strstr(line, needle))
			continue;
		char *k = strstr(line, " key=");
		if (!k)
			continue;
		k += 5;
		size_t n = strcspn(k, " ");
		free(found);
		found = strndup(k, n);
	}
	free(log);
	return found;
}

/* ---- 1. the smuggling table -------------------------------------------------------------- */

#define P  "POST /smug HTTP/1.1\r\nHost: x\r\n"
#define TE "Transfer-Encoding: chunked\r\n"
/* A request hidden where a confused parser would read it as the next one (35 bytes). */
#define HIDDEN "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

struct vec {
	const char *name;
	const char *bytes;
	size_t len;
	int status;       /* the answer to the vector */
	int first_status; /* 0, or the status of a legitimate request pipelined before it */
	int n_forwarded;  /* requests that reach the mock (those before the vector, controls) */
	bool malloced;
};

#define VEC(n, b, st)                                \
	{                                            \
		n, b, sizeof(b) - 1, st, 0, 0, false \
	}
#define VEC_FIRST(n, b, st0, st)                       \
	{                                              \
		n, b, sizeof(b) - 1, st, st0, 1, false \
	}
#define OK_VEC(n, b)                                  \
	{                                             \
		n, b, sizeof(b) - 1, 200, 0, 1, false \
	}

/* Limits of the smuggling suite's proxy. */
#define SMUG_CONF                                                                      \
	"[server]\nmax_body = 1MiB\nmax_header_size = 8KiB\nmax_request_line = 4KiB\n" \
	"max_headers = 50\n"

static const struct vec static_vectors[] = {
	/* framing: Content-Length and Transfer-Encoding */
	VEC("CL.TE: both Content-Length and Transfer-Encoding",
	    P "Content-Length: 41\r\n" TE "\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("TE.CL: Transfer-Encoding then Content-Length",
	    P TE "Content-Length: 4\r\n\r\n23\r\n" HIDDEN "\r\n0\r\n\r\n", 400),
	VEC("two different Content-Length fields",
	    P "Content-Length: 0\r\nContent-Length: 35\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length list of different values", P "Content-Length: 0, 35\r\n\r\n" HIDDEN,
	    400),
	VEC("Content-Length list of equal values", P "Content-Length: 35, 35\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length with a plus sign", P "Content-Length: +35\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length negative", P "Content-Length: -1\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length with a space inside", P "Content-Length: 3 5\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length in hex", P "Content-Length: 0x23\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length with trailing letters", P "Content-Length: 35abc\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length overflowing 64 bits",
	    P "Content-Length: 18446744073709551653\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length empty", P "Content-Length:\r\n\r\n" HIDDEN, 400),
	VEC("Content-Length over server.max_body", P "Content-Length: 2000000\r\n\r\n", 413),
	VEC("Transfer-Encoding gzip (final coding not chunked)",
	    P "Transfer-Encoding: gzip\r\n\r\n" HIDDEN, 501),
	VEC("Transfer-Encoding: chunked, gzip", P "Transfer-Encoding: chunked, gzip\r\n\r\n" HIDDEN,
	    400),
	VEC("Transfer-Encoding: gzip, chunked",
	    P "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" HIDDEN, 501),
	VEC("Transfer-Encoding duplicated", P TE TE "\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding chunked then identity",
	    P TE "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding with space before the colon",
	    P "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding with a tab before the value",
	    P "Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding with space then tab before the value",
	    P "Transfer-Encoding: \tchunked\r\n\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding: xchunked", P "Transfer-Encoding: xchunked\r\n\r\n" HIDDEN, 501),
	VEC("Transfer-Encoding with parameters",
	    P "Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding folded onto the next line",
	    P "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("Transfer-Encoding in HTTP/1.0", "POST /smug HTTP/1.0\r\n" TE "\r\n0\r\n\r\n" HIDDEN,
	    400),
	VEC("HEAD with a body hiding a request",
	    "HEAD /smug HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\n" HIDDEN, 400),

	/* chunk syntax */
	VEC("chunk size negative", P TE "\r\n-1\r\n" HIDDEN, 400),
	VEC("chunk size 0x prefix", P TE "\r\n0x23\r\n" HIDDEN "\r\n0\r\n\r\n", 400),
	VEC("chunk size of 17 hex digits (overflow)", P TE "\r\n10000000000000023\r\n" HIDDEN, 400),
	VEC("chunk size of 2^64-1 (over max_body)", P TE "\r\nffffffffffffffff\r\n" HIDDEN, 413),
	VEC("chunk size empty", P TE "\r\n\r\n" HIDDEN, 400),
	VEC("chunk data not followed by CRLF (request after a short chunk)",
	    P TE "\r\n5\r\nhello" HIDDEN "\r\n0\r\n\r\n", 400),
	VEC("chunk data followed by a bare LF", P TE "\r\n5\r\nhello\n0\r\n\r\n" HIDDEN, 400),
	VEC("chunk line ended by a bare LF", P TE "\r\n5\nhello\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("chunk extension ended by a bare LF", P TE "\r\n5;a=b\nhello\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("chunk extension with a control character",
	    P TE "\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n" HIDDEN, 400),
	VEC("chunk extension with a bare CR inside", P TE "\r\n5;a\rb\r\nhello\r\n0\r\n\r\n" HIDDEN,
	    400),
	VEC("unterminated quoted chunk extension", P TE "\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n" HIDDEN,
	    400),
	VEC("last chunk followed by a folded trailer", P TE "\r\n0\r\nX-T: 1\r\n 2\r\n\r\n" HIDDEN,
	    400),

	/* field and line syntax */
	VEC("bare CR inside a field value",
	    "GET /smug HTTP/1.1\r\nHost: x\r\nX-A: a\rContent-Length: 35\r\n\r\n" HIDDEN, 400),
	VEC("bare LF ending a field line",
	    "GET /smug HTTP/1.1\r\nHost: x\nContent-Length: 35\r\n\r\n" HIDDEN, 400),
	VEC("bare LF ending the request line", "GET /smug HTTP/1.1\nHost: x\r\n\r\n", 400),
	VEC("bare LF ending the header block", "GET /smug HTTP/1.1\r\nHost: x\r\n\n", 400),
	VEC("obsolete line folding (refused, not rewritten to SP)",
	    "GET /smug HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
	VEC("line folding with a tab", "GET /smug HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
	    400),
	VEC("NUL in a field value (refused, not rewritten to SP)",
	    "GET /smug HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 400),
	VEC("NUL in the request target", "GET /smug\0/x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("DEL in a field value", "GET /smug HTTP/1.1\r\nHost: x\r\nX-A: a\x7f\r\n\r\n", 400),
	VEC("field name with a space", "GET /smug HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
	    400),
	VEC("field name with invalid characters",
	    "GET /smug HTTP/1.1\r\nHost: x\r\nX(y)/z: 1\r\n\r\n", 400),
	VEC("field name with a control character",
	    "GET /smug HTTP/1.1\r\nHost: x\r\nX\x01Y: 1\r\n\r\n", 400),
	VEC("empty field name", "GET /smug HTTP/1.1\r\nHost: x\r\n: y\r\n\r\n", 400),
	VEC("whitespace before the first field", "GET /smug HTTP/1.1\r\n Host: x\r\n\r\n", 400),
	VEC("missing Host in HTTP/1.1", "GET /smug HTTP/1.1\r\n\r\n", 400),
	VEC("two Host fields", "GET /smug HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
	VEC("Expect other than 100-continue", P "Expect: 200-ok\r\nContent-Length: 1\r\n\r\n!",
	    417),

	/* request line: methods, versions, targets */
	VEC("invalid method (not a token)", "G@T /smug HTTP/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("unknown method", "BREW /smug HTTP/1.1\r\nHost: x\r\n\r\n", 501),
	VEC("lower-case method", "get /smug HTTP/1.1\r\nHost: x\r\n\r\n", 501),
	VEC("CONNECT",
	    "CONNECT services.leadconnectorhq.com:443 HTTP/1.1\r\n"
	    "Host: services.leadconnectorhq.com:443\r\n\r\n",
	    405),
	VEC("TRACE", "TRACE /smug HTTP/1.1\r\nHost: x\r\n\r\n", 405),
	VEC("HTTP/2 connection preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 501),
	VEC("HTTP/2.0 request line", "GET /smug HTTP/2.0\r\nHost: x\r\n\r\n", 505),
	VEC("HTTP/1.2", "GET /smug HTTP/1.2\r\nHost: x\r\n\r\n", 505),
	VEC("lower-case version", "GET /smug http/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("space inside the target", "GET /smug x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("two spaces after the method", "GET  /smug HTTP/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("fragment in the target", "GET /smug#x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("absolute-form to another host",
	    "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400),
	VEC("absolute-form with userinfo to another host",
	    "GET https://localhost@evil.example/x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
	VEC("absolute-form of another scheme", "GET ftp://localhost/x HTTP/1.1\r\nHost: x\r\n\r\n",
	    400),
	VEC("nine empty lines before the request line",
	    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET /smug HTTP/1.1\r\nHost: x\r\n\r\n", 400),

	/* pipelined: a good request, then a bad one: the first is answered and forwarded */
	VEC_FIRST("pipelined: a good request, then a bare LF",
	          "GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled HTTP/1.1\nHost: x\r\n\r\n",
	          200, 400),
	VEC_FIRST("pipelined: a good POST, then CL.TE",
	          P "Content-Length: 2\r\n\r\nokPOST /smuggled HTTP/1.1\r\nHost: x\r\n"
	            "Content-Length: 5\r\n" TE "\r\n0\r\n\r\n",
	          200, 400),

	/* accepted controls: each reaches the mock once, as one request */
	OK_VEC("control: a GET whose body is a request (one request with a body)",
	       "GET /smug HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\n" HIDDEN),
	OK_VEC("control: Transfer-Encoding CHUNKED, extension and trailer dropped",
	       P "Transfer-Encoding: CHUNKED\r\n\r\n23;ext=\"v\"\r\n" HIDDEN
	         "\r\n0\r\nX-Trailer: 1\r\n\r\n"),
	OK_VEC("control: two equal Content-Length fields",
	       P "Content-Length: 35\r\nContent-Length: 35\r\n\r\n" HIDDEN),
};

/* Vectors made at run time (sizes relative to SMUG_CONF's limits). */
static size_t make_generated(struct vec *out)
{
	size_t n = 0;
	char *b;
	size_t len;

	/* a request line over max_request_line (4 KiB) */
	len = 5000 + 64;
	b = malloc(len);
	cr_assert_not_null(b);
	memcpy(b, "GET /", 5);
	memset(b + 5, 'a', 5000);
	len = 5 + 5000 + (size_t)sprintf(b + 5 + 5000, " HTTP/1.1\r\nHost: x\r\n\r\n");
	out[n++] = (struct vec){ "request line over max_request_line", b, len, 414, 0, 0, true };

	/* more fields than max_headers (50) */
	b = malloc(51 * 32 + 64);
	cr_assert_not_null(b);
	len = (size_t)sprintf(b, "GET /smug HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; i < 50; i++)
		len += (size_t)sprintf(b + len, "X-F%d: v\r\n", i);
	len += (size_t)sprintf(b + len, "\r\n");
	out[n++] = (struct vec){ "too many header fields", b, len, 431, 0, 0, true };

	/* a header block over max_header_size (8 KiB) in fields under max_headers */
	b = malloc(12 * 1024);
	cr_assert_not_null(b);
	len = (size_t)sprintf(b, "GET /smug HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; i < 9; i++) {
		len += (size_t)sprintf(b + len, "X-Big%d: ", i);
		memset(b + len, 'v', 1000);
		len += 1000;
		len += (size_t)sprintf(b + len, "\r\n");
	}
	len += (size_t)sprintf(b + len, "\r\n");
	out[n++] = (struct vec){ "header block over max_header_size", b, len, 431, 0, 0, true };

	/* a chunk extension of 2,000 bytes */
	b = malloc(2200 + 256);
	cr_assert_not_null(b);
	len = (size_t)sprintf(b, P TE "\r\n5;x=");
	memset(b + len, 'e', 2000);
	len += 2000;
	len += (size_t)sprintf(b + len, "\r\nhello\r\n0\r\n\r\n");
	out[n++] = (struct vec){ "chunk extension of 2,000 bytes", b, len, 400, 0, 0, true };

	/* 3,000 chunk extensions of one byte each on one chunk line */
	b = malloc(3 * 3000 + 256);
	cr_assert_not_null(b);
	len = (size_t)sprintf(b, P TE "\r\n1");
	for (int i = 0; i < 3000; i++)
		len += (size_t)sprintf(b + len, ";a");
	len += (size_t)sprintf(b + len, "\r\nx\r\n0\r\n\r\n");
	out[n++] = (struct vec){ "3,000 chunk extensions on one line", b, len, 400, 0, 0, true };
	return n;
}

/*
 * Send one vector on its own connection; check the answers, the close, and what the mock got,
 * after a sentinel request on another connection went through (so anything the proxy would
 * have forwarded from the vector reached the mock before it).
 */
static void run_vector(const struct vec *v, int idx)
{
	struct httpc_response r;
	int before = fixture_mock_count(fx.mock_ctl);
	int before_v1 = fixture_mock_count(fx.mock_v1_ctl);
	int fd = httpc_connect(fx.proxy_addr);

	cr_assert_geq(fd, 0, "[%d] %s: cannot connect", idx, v->name);
	cr_assert_eq(httpc_send_all(fd, v->bytes, v->len), 0, "[%d] %s: send", idx, v->name);
	if (v->first_status) {
		memset(&r, 0, sizeof(r));
		cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0,
		             "[%d] %s: no first answer", idx, v->name);
		cr_expect_eq(r.status, v->first_status, "[%d] %s: first answer %d", idx, v->name,
		             r.status);
		httpc_response_free(&r);
	}
	memset(&r, 0, sizeof(r));
	bool is_head = strncmp(v->bytes, "HEAD ", 5) == 0 && v->status == 200;
	cr_assert_eq(httpc_read_response(fd, &r, is_head, TIMEOUT_MS), 0, "[%d] %s: no answer", idx,
	             v->name);
	if (v->status == 200) {
		cr_expect_eq(r.status, 200, "[%d] %s: status %d", idx, v->name, r.status);
		httpc_response_free(&r);
		httpc_close(fd);
	} else {
		char what[200];
		snprintf(what, sizeof(what), "[%d] %s", idx, v->name);
		expect_json_error(&r, v->status, what);
		httpc_response_free(&r);
		/* Nothing more comes (no answer to a hidden request), and the proxy closes. */
		memset(&r, 0, sizeof(r));
		cr_expect_neq(httpc_read_response(fd, &r, false, 5000), 0,
		              "[%d] %s: a second answer came (status %d)", idx, v->name, r.status);
		httpc_response_free(&r);
		cr_expect(httpc_wait_closed(fd, 5000), "[%d] %s: connection left open", idx,
		          v->name);
		httpc_close(fd);
	}

	/* The sentinel: once it is in the mock's log, whatever the vector let through is too. */
	char sentinel[64];
	snprintf(sentinel, sizeof(sentinel), "/sentinel/%d", idx);
	memset(&r, 0, sizeof(r));
	cr_assert_eq(req("GET", sentinel, NULL, NULL, 0, &r), 0, "[%d] %s: sentinel unanswered",
	             idx, v->name);
	cr_assert_eq(r.status, 200, "[%d] %s: the proxy stopped serving", idx, v->name);
	httpc_response_free(&r);

	json_t *all = mock_since(fx.mock_ctl, before), *e;
	size_t i, n_vec = 0;
	json_array_foreach(all, i, e)
	{
		const char *u = entry_uri(e);
		cr_expect_null(strstr(u, "smuggled"), "[%d] %s: a hidden request reached the mock",
		               idx, v->name);
		if (strcmp(u, sentinel) != 0) {
			n_vec++;
			/* a control's body arrives whole, as the body of its one request */
			if (v->status == 200 && strstr(v->bytes, HIDDEN))
				cr_expect_eq(json_integer_value(json_object_get(e, "body_len")), 35,
				             "[%d] %s: body length", idx, v->name);
		}
	}
	cr_expect_eq(n_vec, (size_t)v->n_forwarded, "[%d] %s: %zu forwarded, want %d", idx, v->name,
	             n_vec, v->n_forwarded);
	json_decref(all);
	cr_expect_eq(fixture_mock_count(fx.mock_v1_ctl), before_v1,
	             "[%d] %s: something reached the v1 upstream", idx, v->name);
}

TestSuite(smuggling, .fini = harness_cleanup_all, .timeout = 300);

Test(smuggling, vector_table)
{
	struct vec gen[8];
	size_t n_gen = make_generated(gen);
	size_t n_static = sizeof(static_vectors) / sizeof(static_vectors[0]);
	size_t n_refused = 0;

	start_with(SMUG_CONF);
	for (size_t i = 0; i < n_static; i++) {
		run_vector(&static_vectors[i], (int)i);
		n_refused += static_vectors[i].status != 200;
	}
	for (size_t i = 0; i < n_gen; i++) {
		run_vector(&gen[i], (int)(n_static + i));
		n_refused += gen[i].status != 200;
		free((char *)gen[i].bytes);
	}
	cr_expect_geq(n_refused, 20, "the table has only %zu refused vectors", n_refused);

	/* Every refusal was logged with its reason, and the proxy is still healthy. */
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "request refused") != NULL, "refusals are not logged");
	cr_expect(strstr(log, "conflicting Content-Length values") != NULL);
	free(log);
	expect_serving("after the table");
	stop_clean();
}

/* The same vectors cut into one-byte writes: the outcome does not depend on the segments. */
Test(smuggling, vectors_byte_by_byte)
{
	static const char *const pick[] = {
		"CL.TE: both Content-Length and Transfer-Encoding",
		"TE.CL: Transfer-Encoding then Content-Length",
		"two different Content-Length fields",
		"Transfer-Encoding with space before the colon",
		"Transfer-Encoding: chunked, gzip",
		"chunk data not followed by CRLF (request after a short chunk)",
		"obsolete line folding (refused, not rewritten to SP)",
		"NUL in a field value (refused, not rewritten to SP)",
		"bare LF ending a field line",
		"absolute-form to another host",
	};

	start_with(SMUG_CONF);
	for (size_t k = 0; k < sizeof(pick) / sizeof(pick[0]); k++) {
		const struct vec *v = NULL;
		for (size_t i = 0; i < sizeof(static_vectors) / sizeof(static_vectors[0]); i++)
			if (strcmp(static_vectors[i].name, pick[k]) == 0)
				v = &static_vectors[i];
		cr_assert(v, "no vector named %s", pick[k]);
		int before = fixture_mock_count(fx.mock_ctl);
		int fd = httpc_connect(fx.proxy_addr);
		struct httpc_response r = { 0 };
		size_t cuts[512], n_cuts = 0;

		cr_assert_geq(fd, 0);
		for (size_t c = 1; c < v->len && n_cuts < 512; c++)
			cuts[n_cuts++] = c;
		/* the proxy may answer and close before the last byte: a failed send is fine */
		(void)httpc_send_split(fd, v->bytes, v->len, cuts, n_cuts, 200);
		cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0, "%s: no answer",
		             v->name);
		expect_json_error(&r, v->status, v->name);
		httpc_response_free(&r);
		cr_expect(httpc_wait_closed(fd, 5000), "%s: connection left open", v->name);
		httpc_close(fd);
		expect_serving(v->name);
		json_t *all = mock_since(fx.mock_ctl, before);
		cr_expect_eq(json_array_size(all), 1, "%s: forwarded something", v->name);
		json_decref(all);
	}
	stop_clean();
}

/* ---- 2. slow clients ---------------------------------------------------------------------- */

TestSuite(slow_clients, .fini = harness_cleanup_all, .timeout = 300);

#define SLOW_CONF "[server]\nheader_timeout = 500ms\nbody_timeout = 500ms\n"

/* Read the answer to a stalled request: 408 as JSON, then the close, within `max_ms`. */
static void expect_timeout_close(int fd, int64_t t0, int64_t min_ms, int64_t max_ms,
                                 const char *what)
{
	struct httpc_response r = { 0 };

	cr_assert_eq(httpc_read_response(fd, &r, false, (int)max_ms + 5000), 0, "%s: no answer",
	             what);
	int64_t took = harness_now_ms() - t0;
	expect_json_error(&r, 408, what);
	httpc_response_free(&r);
	cr_expect(httpc_wait_closed(fd, 5000), "%s: connection left open", what);
	cr_expect_geq(took, min_ms, "%s: cut after %lld ms, before its timeout", what,
	              (long long)took);
	cr_expect_lt(took, max_ms, "%s: cut only after %lld ms", what, (long long)took);
}

Test(slow_clients, header_timeout)
{
	start_with(SLOW_CONF);
	int before = fixture_mock_count(fx.mock_ctl);
	const char *part = "GET /slow-head HTTP/1.1\r\nHost: x\r\nX-Partial: ";
	int fd = httpc_connect(fx.proxy_addr);
	int64_t t0 = harness_now_ms();

	cr_assert_geq(fd, 0);
	cr_assert_eq(httpc_send_all(fd, part, strlen(part)), 0);
	expect_timeout_close(fd, t0, 400, 3000, "stalled header block");
	httpc_close(fd);

	/* Trickling one byte every 100 ms does not extend it: the clock runs from the first
	 * byte of the message. */
	fd = httpc_connect(fx.proxy_addr);
	cr_assert_geq(fd, 0);
	t0 = harness_now_ms();
	cr_assert_eq(httpc_send_all(fd, part, strlen(part)), 0);
	for (int i = 0; i < 50; i++) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (poll(&pfd, 1, 100) > 0)
			break; /* the answer is coming */
		if (httpc_send_all(fd, "a", 1) < 0)
			break;
	}
	expect_timeout_close(fd, t0, 400, 3000, "trickled header block");
	httpc_close(fd);

	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before, "a timed-out request went through");
	expect_serving("after header timeouts");
	stop_clean();
}

Test(slow_clients, body_timeout)
{
	start_with(SLOW_CONF);
	int before = fixture_mock_count(fx.mock_ctl);
	const char *part =
	        "POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
	int fd = httpc_connect(fx.proxy_addr);

	cr_assert_geq(fd, 0);
	cr_assert_eq(httpc_send_all(fd, part, strlen(part)), 0);
	expect_timeout_close(fd, harness_now_ms(), 400, 3000, "stalled Content-Length body");
	httpc_close(fd);

	const char *chunked = "POST /slow-body HTTP/1.1\r\nHost: x\r\n" TE "\r\n5\r\nhel";
	fd = httpc_connect(fx.proxy_addr);
	cr_assert_geq(fd, 0);
	cr_assert_eq(httpc_send_all(fd, chunked, strlen(chunked)), 0);
	expect_timeout_close(fd, harness_now_ms(), 400, 3000, "stalled chunked body");
	httpc_close(fd);

	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before, "a half-sent body was forwarded");
	expect_serving("after body timeouts");
	stop_clean();
}

/* A connection that never sends a byte is closed after header_timeout (silently), not kept for
 * the keep-alive idle_timeout. */
Test(slow_clients, silent_connection)
{
	start_with("[server]\nheader_timeout = 500ms\nidle_timeout = 60s\n");
	int fd = httpc_connect(fx.proxy_addr);
	int64_t t0 = harness_now_ms();
	struct httpc_response r = { 0 };

	cr_assert_geq(fd, 0);
	cr_expect(httpc_wait_closed(fd, 10000), "a silent connection was kept open");
	int64_t took = harness_now_ms() - t0;
	cr_expect_geq(took, 400, "closed after %lld ms", (long long)took);
	cr_expect_lt(took, 5000, "closed only after %lld ms", (long long)took);
	httpc_close(fd);

	/* A keep-alive connection that was used is kept for idle_timeout. */
	fd = httpc_connect(fx.proxy_addr);
	const char *rq = "GET /used HTTP/1.1\r\nHost: x\r\n\r\n";
	cr_assert_eq(httpc_send_all(fd, rq, strlen(rq)), 0);
	cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	cr_expect_not(httpc_wait_closed(fd, 1500), "a used keep-alive connection was cut early");
	cr_assert_eq(httpc_send_all(fd, rq, strlen(rq)), 0);
	cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0);
	cr_expect_eq(r.status, 200);
	httpc_response_free(&r);
	httpc_close(fd);
	stop_clean();
}

Test(slow_clients, max_connections)
{
	enum { CAP = 16 };
	int fds[CAP];
	struct httpc_response r;
	const char *rq = "GET /held HTTP/1.1\r\nHost: x\r\n\r\n";

	start_with("[server]\nmax_connections = 16\n");
	for (int i = 0; i < CAP; i++) {
		fds[i] = httpc_connect(fx.proxy_addr);
		cr_assert_geq(fds[i], 0);
		memset(&r, 0, sizeof(r));
		cr_assert_eq(httpc_send_all(fds[i], rq, strlen(rq)), 0);
		cr_assert_eq(httpc_read_response(fds[i], &r, false, TIMEOUT_MS), 0, "conn %d", i);
		cr_expect_eq(r.status, 200, "conn %d", i);
		httpc_response_free(&r);
	}
	int before = fixture_mock_count(fx.mock_ctl);

	/* Beyond the cap: 503 with Retry-After, then the close, even with a request sent. */
	for (int k = 0; k < 3; k++) {
		int fd = httpc_connect(fx.proxy_addr);
		cr_assert_geq(fd, 0);
		if (k == 1)
			(void)httpc_send_all(fd, rq, strlen(rq));
		memset(&r, 0, sizeof(r));
		cr_assert_eq(httpc_read_response(fd, &r, false, TIMEOUT_MS), 0, "no refusal");
		expect_json_error(&r, 503, "over max_connections");
		httpc_response_free(&r);
		cr_expect(httpc_wait_closed(fd, 5000), "the refused connection stayed open");
		httpc_close(fd);
	}
	cr_expect_eq(fixture_mock_count(fx.mock_ctl), before,
	             "a refused connection's request "
	             "was forwarded");

	/* The connections under the cap are served on. */
	for (int i = 0; i < CAP; i += 5) {
		memset(&r, 0, sizeof(r));
		cr_assert_eq(httpc_send_all(fds[i], rq, strlen(rq)), 0);
		cr_assert_eq(httpc_read_response(fds[i], &r, false, TIMEOUT_MS), 0, "conn %d", i);
		cr_expect_eq(r.status, 200, "conn %d after the refusals", i);
		httpc_response_free(&r);
	}
	/* A slot freed is a slot usable. */
	httpc_close(fds[0]);
	cr_expect(wait_connections(0, CAP - 1, 10000), "the closed connection was not noticed");
	expect_serving("after a slot was freed");
	for (int i = 1; i < CAP; i++)
		httpc_close(fds[i]);
	stop_clean();
}

/*
 * 1,000 idle connections cost bounded memory. Per connection the proxy holds its struct
 * server_conn and http_guard (~0.5 KiB), two bufferevents (socket and filter, ~0.4 KiB each), an
 * evhttp_connection (~0.3 KiB), a few events, and evbuffers that are empty once a request was
 * read. Kernel socket buffers are not in RSS. So a few KiB each; we allow 16 KiB (32 KiB under
 * ASan, whose redzones and shadow memory inflate every allocation; its quarantine of freed
 * memory is turned off for this proxy, else every request's freed buffers would count), which
 * still catches a read buffer or a per-connection arena kept alive.
 */
Test(slow_clients, thousand_idle_connections, .timeout = 600)
{
	enum { N = 1000 };
	static int fds[N];
	const long bound_kib = UNDER_ASAN ? 32 : 16;
	const char *rq = "GET /idle HTTP/1.1\r\nHost: x\r\n\r\n";
	char asan[512];
	char *env[] = { asan, NULL };
	struct fixture_opts o = {
		.proxy_conf = "[server]\nheader_timeout = 120s\nidle_timeout = 120s\n"
		              "max_connections = 2000\n",
		.proxy_env = UNDER_ASAN ? env : NULL,
	};

	/* 1,000 sockets here and as many in the proxy (which inherits this limit). */
	struct rlimit rl;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < 4096 && rl.rlim_max > rl.rlim_cur) {
		rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < N + 100)
		cr_skip_test("RLIMIT_NOFILE is %lu: too low for %d connections",
		             (unsigned long)rl.rlim_cur, N);
	snprintf(asan, sizeof(asan), "ASAN_OPTIONS=%s%squarantine_size_mb=0",
	         getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "",
	         getenv("ASAN_OPTIONS") ? ":" : "");
	fixture_start(&fx, &o);
	/* Warm up: the allocator, the upstream pool, the limiter key. */
	for (int i = 0; i < 20; i++)
		expect_serving("warm-up");
	long rss0 = proc_rss_kib(fx.proxy->pid);
	cr_assert_gt(rss0, 0);

	for (int i = 0; i < N; i++) {
		fds[i] = httpc_connect(fx.proxy_addr);
		cr_assert_geq(fds[i], 0, "connection %d refused", i);
	}
	cr_assert(wait_connections(N, N + 1, 30000), "the proxy did not take %d connections", N);
	long rss1 = proc_rss_kib(fx.proxy->pid);

	/* Each makes one request and stays open, idle in keep-alive. */
	for (int i = 0; i < N; i++) {
		struct httpc_response r = { 0 };
		cr_assert_eq(httpc_send_all(fds[i], rq, strlen(rq)), 0);
		cr_assert_eq(httpc_read_response(fds[i], &r, false, TIMEOUT_MS), 0, "conn %d", i);
		cr_assert_eq(r.status, 200, "conn %d", i);
		httpc_response_free(&r);
	}
	long rss2 = proc_rss_kib(fx.proxy->pid);
	double fresh_kib = (double)(rss1 - rss0) / N, used_kib = (double)(rss2 - rss0) / N;

	fprintf(stderr,
	        "thousand_idle_connections: RSS %ld KiB before, %ld KiB with %d fresh connections "
	        "(%.2f KiB each), %ld KiB after a request on each (%.2f KiB each)%s\n",
	        rss0, rss1, N, fresh_kib, rss2, used_kib, UNDER_ASAN ? " [ASan]" : "");
	cr_expect_lt(fresh_kib, (double)bound_kib, "%.2f KiB per fresh connection", fresh_kib);
	cr_expect_lt(used_kib, (double)bound_kib, "%.2f KiB per idle connection", used_kib);

	expect_serving("with 1,000 idle connections");
	for (int i = 0; i < N; i++)
		httpc_close(fds[i]);
	cr_expect(wait_connections(0, 1, 30000), "connections were not released");
	stop_clean();
}

/* ---- 3. hostile upstream ------------------------------------------------------------------ */

TestSuite(hostile_upstream, .fini = harness_cleanup_all, .timeout = 300);

/* The answer to GET target through the proxy is a JSON 502; then the proxy serves on. */
static void expect_502_then_serving(const char *target, const char *headers, const char *detail)
{
	struct httpc_response r;

	cr_assert_eq(req("GET", target, headers, NULL, 0, &r), 0, "%s: no answer", target);
	expect_json_error(&r, 502, target);
	if (detail)
		cr_expect(r.body && strstr((const char *)r.body, detail), "%s: %s", target,
		          r.body ? (const char *)r.body : "");
	httpc_response_free(&r);
	expect_serving(target);
}

Test(hostile_upstream, oversized_truncated_closed)
{
	/* upstream.max_header_size 64 KiB by default */
	start_with(NULL);
	expect_502_then_serving("/mock/bigheaders?bytes=200000", NULL, "oversized response");
	/* announced 100,000 bytes, sent 1,000: buffered, so a clean 502 */
	expect_502_then_serving("/mock/truncate", NULL, "connection closed");
	expect_502_then_serving("/mock/close", NULL, "connection");

	/* A truncated answer too large to buffer: the head is already out, so the client's
	 * connection is cut short; never a complete-looking answer. */
	struct httpc_response r = { 0 };
	int rc = req("GET", "/mock/truncate?bytes=2000000&sent=600000", NULL, NULL, 0, &r);
	cr_expect_neq(rc, 0, "a truncated answer looked complete");
	cr_expect(r.status == 200 || r.status == 0, "status %d", r.status);
	cr_expect_lt(r.body_len, 2000000);
	httpc_response_free(&r);
	expect_serving("after a streamed truncation");

	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "upstream error") != NULL);
	free(log);
	stop_clean();
}

/* Bytes after the end of a body are never read as the answer to the next request. */
Test(hostile_upstream, bytes_past_the_body)
{
	struct httpc_response r;

	start_with("[upstream]\nmax_connections = 1\n");
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(req("GET", "/mock/overlong", NULL, NULL, 0, &r), 0);
		cr_expect_eq(r.status, 200);
		httpc_response_free(&r);
		cr_assert_eq(req("GET", "/contacts/after-overlong", NULL, NULL, 0, &r), 0);
		cr_expect_eq(r.status, 200);
		cr_expect(r.body && strstr((const char *)r.body, "/contacts/after-overlong"),
		          "the next request got someone else's answer: %s",
		          r.body ? (const char *)r.body : "");
		cr_expect(r.body && !strstr((const char *)r.body, "smuggled"),
		          "the smuggled answer was delivered");
		httpc_response_free(&r);
	}
	stop_clean();
}

/*
 * A minimal TLS server in a thread: accepts connections, handshakes with the given version
 * range and certificate, and to a handshake that succeeds answers one HTTP request with 200.
 * The answer has a Content-Length, unless unframed_len is set: then it is that many bytes
 * (unframed_byte(i)) that only the connection's close delimits. The server ends each
 * connection with close_notify, unless bare_close is set: then with a bare TCP close.
 */
struct tls_srv {
	SSL_CTX *ctx;
	int lfd;
	int port;
	pthread_t th;
	atomic_bool stop;
	atomic_int n_accepted, n_handshakes, n_requests;
	atomic_size_t unframed_len;
	atomic_bool bare_close;
};

static char unframed_byte(size_t i)
{
	return (char)('a' + i % 26);
}

static void tls_srv_answer(struct tls_srv *s, SSL *ssl)
{
	static const char framed[] = "HTTP/1.1 200 OK\r\nContent-Type: "
	                             "application/json\r\nContent-Length: 15\r\n"
	                             "Connection: close\r\n\r\n{\"tls\":\"fine\"}\n";
	static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
	                           "Connection: close\r\n\r\n";
	size_t n = atomic_load(&s->unframed_len);

	if (n == 0) {
		SSL_write(ssl, framed, sizeof(framed) - 1);
		return;
	}
	char *body = malloc(n);
	if (!body)
		return;
	for (size_t i = 0; i < n; i++)
		body[i] = unframed_byte(i);
	if (SSL_write(ssl, head, sizeof(head) - 1) > 0)
		SSL_write(ssl, body, (int)n);
	free(body);
}

static void *tls_srv_main(void *arg)
{
	struct tls_srv *s = arg;

	while (!atomic_load(&s->stop)) {
		struct pollfd pfd = { .fd = s->lfd, .events = POLLIN };
		if (poll(&pfd, 1, 50) <= 0)
			continue;
		int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		struct timeval tv = { .tv_sec = 5 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		atomic_fetch_add(&s->n_accepted, 1);
		SSL *ssl = SSL_new(s->ctx);
		SSL_set_fd(ssl, fd);
		if (SSL_accept(ssl) == 1) {
			char buf[4096];
			size_t got = 0;
			atomic_fetch_add(&s->n_handshakes, 1);
			while (got < sizeof(buf) - 1) {
				int k = SSL_read(ssl, buf + got, (int)(sizeof(buf) - 1 - got));
				if (k <= 0)
					break;
				got += (size_t)k;
				buf[got] = '\0';
				if (strstr(buf, "\r\n\r\n"))
					break;
			}
			if (got > 0) {
				atomic_fetch_add(&s->n_requests, 1);
				tls_srv_answer(s, ssl);
			}
			if (atomic_load(&s->bare_close))
				shutdown(fd, SHUT_WR); /* FIN, no close_notify */
			else
				SSL_shutdown(ssl);
		}
		ERR_clear_error();
		SSL_free(ssl);
		close(fd);
	}
	return NULL;
}

static void tls_srv_start(struct tls_srv *s, const char *dir, const char *prefix, int min_v,
                          int max_v)
{
	char cert[512], key[512];
	struct sockaddr_in sa = { .sin_family = AF_INET,
		                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);

	memset(s, 0, sizeof(*s));
	snprintf(cert, sizeof(cert), "%s/%scert.pem", dir, prefix);
	snprintf(key, sizeof(key), "%s/%skey.pem", dir, prefix);
	s->ctx = SSL_CTX_new(TLS_server_method());
	cr_assert(s->ctx);
	/* Let this server speak what it is told to, whatever the system's policy says. */
	SSL_CTX_set_security_level(s->ctx, 0);
	cr_assert_eq(SSL_CTX_set_cipher_list(s->ctx, "DEFAULT:@SECLEVEL=0"), 1);
	cr_assert_eq(SSL_CTX_set_min_proto_version(s->ctx, min_v), 1);
	cr_assert_eq(SSL_CTX_set_max_proto_version(s->ctx, max_v), 1);
	cr_assert_eq(SSL_CTX_use_certificate_chain_file(s->ctx, cert), 1, "%s", cert);
	cr_assert_eq(SSL_CTX_use_PrivateKey_file(s->ctx, key, SSL_FILETYPE_PEM), 1);
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(s->lfd, 0);
	cr_assert_eq(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(s->lfd, 16), 0);
	cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&sa, &sl), 0);
	s->port = ntohs(sa.sin_port);
	cr_assert_eq(pthread_create(&s->th, NULL, tls_srv_main, s), 0);
}

static void tls_srv_stop(struct tls_srv *s)
{
	atomic_store(&s->stop, true);
	pthread_join(s->th, NULL);
	close(s->lfd);
	SSL_CTX_free(s->ctx);
}

/* Start the fixture's proxy with its API 1.0 upstream at the test's TLS server, trusting the
 * fixture's CA and `extra_ca` (a bundle). */
static void proxy_with_v1_at(const struct tls_srv *s, const char *extra_ca_prefix)
{
	char v1[128], ca[600];
	char *env[3] = { v1, NULL, NULL };

	snprintf(v1, sizeof(v1), "GHLPROXY_UPSTREAM_V1_URL=https://localhost:%d", s->port);
	if (extra_ca_prefix) {
		char a[300], b[300];
		snprintf(a, sizeof(a), "%s/srv-ca.pem", fx.dir);
		snprintf(b, sizeof(b), "%s/%sca.pem", fx.dir, extra_ca_prefix);
		char *ta = harness_read_file(a, NULL), *tb = harness_read_file(b, NULL);
		cr_assert(ta && tb);
		size_t la = strlen(ta), lb = strlen(tb);
		char *bundle = malloc(la + lb + 2);
		cr_assert_not_null(bundle);
		memcpy(bundle, ta, la);
		bundle[la] = '\n';
		memcpy(bundle + la + 1, tb, lb + 1);
		cr_assert_eq(harness_write_file(fx.dir, "bundle.pem", bundle), 0);
		free(ta);
		free(tb);
		free(bundle);
		snprintf(ca, sizeof(ca), "GHLPROXY_UPSTREAM_CA_FILE=%s/bundle.pem", fx.dir);
		env[1] = ca;
	}
	cr_assert_eq(fixture_start_proxy(&fx, env), 0, "the proxy did not start");
}

#define V1_AUTH "Authorization: Bearer v1-api-key-hostile\r\n"

Test(hostile_upstream, tls_downgrade_refused)
{
	struct fixture_opts o = { .no_proxy = true };
	struct tls_srv ok, old;
	struct httpc_response r;

	fixture_start(&fx, &o);
	harness_secret("v1-api-key-hostile");

	/* Control: the same server with TLS 1.2 allowed is served through, so what follows fails
	 * for the version alone. */
	tls_srv_start(&ok, fx.dir, "srv-", TLS1_2_VERSION, TLS1_2_VERSION);
	proxy_with_v1_at(&ok, NULL);
	cr_assert_eq(req("GET", "/v1/contacts/", V1_AUTH, NULL, 0, &r), 0);
	cr_expect_eq(r.status, 200, "control: TLS 1.2 test server not reachable (%d): %s", r.status,
	             r.body ? (const char *)r.body : "");
	httpc_response_free(&r);
	cr_expect_eq(atomic_load(&ok.n_requests), 1);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	tls_srv_stop(&ok);

	/* TLS 1.0 and 1.1 only: refused by the proxy's client context (minimum TLS 1.2). */
	tls_srv_start(&old, fx.dir, "srv-", TLS1_VERSION, TLS1_1_VERSION);
	proxy_with_v1_at(&old, NULL);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(req("GET", "/v1/contacts/", V1_AUTH, NULL, 0, &r), 0);
		expect_json_error(&r, 502, "TLS 1.0/1.1 upstream");
		cr_expect(r.body && strstr((const char *)r.body, "TLS"), "%s",
		          r.body ? (const char *)r.body : "");
		httpc_response_free(&r);
		expect_serving("after a TLS downgrade attempt"); /* API 2.0 is fine */
	}
	cr_expect_geq(atomic_load(&old.n_accepted), 1, "the proxy never tried the old server");
	cr_expect_eq(atomic_load(&old.n_handshakes), 0, "a TLS 1.0/1.1 handshake succeeded");
	cr_expect_eq(atomic_load(&old.n_requests), 0, "a request went over TLS < 1.2");
	char *log = harness_log(fx.proxy);
	cr_expect(strstr(log, "TLS handshake failed") != NULL, "the log does not say why");
	free(log);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	tls_srv_stop(&old);
	fixture_stop(&fx);
}

Test(hostile_upstream, certificate_for_another_name)
{
	struct fixture_opts o = { .no_proxy = true };
	struct tls_srv bad;
	struct httpc_response r;

	fixture_start(&fx, &o);
	/* A certificate for wrong.example from a CA the proxy trusts: only the name is wrong. */
	cr_assert_eq(certs_make(fx.dir, "bad-", "wrong.example"), 0);
	tls_srv_start(&bad, fx.dir, "bad-", TLS1_2_VERSION, TLS1_3_VERSION);
	proxy_with_v1_at(&bad, "bad-");
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(req("GET", "/v1/contacts/", V1_AUTH, NULL, 0, &r), 0);
		expect_json_error(&r, 502, "certificate for another name");
		cr_expect(r.body && strstr((const char *)r.body, "certificate verify failed"), "%s",
		          r.body ? (const char *)r.body : "");
		httpc_response_free(&r);
		expect_serving("after a wrong certificate");
	}
	cr_expect_geq(atomic_load(&bad.n_accepted), 1);
	cr_expect_eq(atomic_load(&bad.n_requests), 0, "a request went to the wrong host");
	cr_expect_eq(fixture_mock_count(fx.mock_v1_ctl), 0);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	tls_srv_stop(&bad);
	fixture_stop(&fx);
}

/* Is r a 200 whose body is exactly n bytes of unframed_byte? */
static bool unframed_answer_whole(const struct httpc_response *r, size_t n)
{
	if (r->status != 200 || r->body_len != n || !r->body)
		return false;
	for (size_t i = 0; i < n; i++)
		if (((const char *)r->body)[i] != unframed_byte(i))
			return false;
	return true;
}

/*
 * An answer with neither a length nor chunks ends where its connection does. Over TLS the
 * server's close_notify says the end is real; a bare TCP close may have cut the answer short
 * (the proxy treats an unexpected EOF as an end, see tls.c), so such an answer is never passed
 * on as whole: a JSON 502 while it is buffered, a cut connection once its head is out. Both
 * sizes: one the proxy buffers, one it streams (over 256 KiB).
 */
Test(hostile_upstream, unframed_tls_answer_needs_close_notify)
{
	struct fixture_opts o = { .no_proxy = true };
	static const size_t sizes[] = { 20, 300000 };
	struct tls_srv srv;
	struct httpc_response r;

	fixture_start(&fx, &o);
	harness_secret("v1-api-key-hostile");
	tls_srv_start(&srv, fx.dir, "srv-", TLS1_2_VERSION, TLS1_3_VERSION);
	proxy_with_v1_at(&srv, NULL);
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];

		atomic_store(&srv.unframed_len, n);
		atomic_store(&srv.bare_close, false);
		cr_assert_eq(req("GET", "/v1/contacts/", V1_AUTH, NULL, 0, &r), 0, "%zu bytes", n);
		cr_expect(unframed_answer_whole(&r, n),
		          "%zu bytes ended by close_notify: status %d, %zu bytes", n, r.status,
		          r.body_len);
		httpc_response_free(&r);

		atomic_store(&srv.bare_close, true);
		int rc = req("GET", "/v1/contacts/", V1_AUTH, NULL, 0, &r);
		if (n < 256 * 1024) {
			cr_assert_eq(rc, 0, "%zu bytes, bare close: no answer", n);
			expect_json_error(&r, 502, "unframed answer ended by a bare close");
			cr_expect(r.body && strstr((const char *)r.body, "close_notify"), "%s",
			          r.body ? (const char *)r.body : "");
		} else {
			/* Every byte may have arrived; the missing last chunk says it is not whole.
			 */
			cr_expect_neq(rc, 0, "%zu bytes cut by a bare close looked complete (%d)",
			              n, r.status);
		}
		httpc_response_free(&r);
		expect_serving("after an unframed TLS answer");
	}
	cr_expect_eq(atomic_load(&srv.n_requests), 4);
	cr_expect_eq(fixture_stop_proxy(&fx), 0);
	tls_srv_stop(&srv);
	fixture_stop(&fx);
}

/* ---- 4. hostile tokens and bodies ----------------------------------------------------------- */

TestSuite(hostile_classify, .fini = harness_cleanup_all, .timeout = 300);

static char *b64url(const void *data, size_t len)
{
	size_t cap = (len + 2) / 3 * 4 + 1;
	char *out = malloc(cap);
	cr_assert_not_null(out);
	int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);

	for (int i = 0; i < n; i++) {
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
	}
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	return out;
}

static char *make_jwt(const char *payload, size_t len)
{
	static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	char *h = b64url(hdr, sizeof(hdr) - 1), *p = b64url(payload, len);
	size_t n = strlen(h) + strlen(p) + 32;
	char *t = malloc(n);
	cr_assert_not_null(t);

	snprintf(t, n, "%s.%s.c2lnbmF0dXJl", h, p);
	free(h);
	free(p);
	return t;
}

/* One passthrough request with a bearer and a body; returns the key the log gives it. */
static char *classified(const char *path, const char *bearer, const char *ctype, const void *body,
                        size_t body_len)
{
	size_t hl = strlen(bearer) + 256;
	char *headers = malloc(hl);
	cr_assert_not_null(headers);
	struct httpc_response r;

	harness_secret(bearer);
	snprintf(headers, hl, "Authorization: Bearer %s\r\n%s%s%s", bearer,
	         ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "");
	cr_assert_eq(req(body ? "POST" : "GET", path, headers, body, body_len, &r), 0,
	             "%s: no answer", path);
	cr_expect_eq(r.status, 200, "%s: status %d: %s", path, r.status,
	             r.body ? (const char *)r.body : "");
	httpc_response_free(&r);
	free(headers);
	/* The proxy writes its log line right after the answer: give it a moment (bounded). */
	char *key = NULL;
	for (int64_t until = harness_now_ms() + 10000; !key && harness_now_ms() < until;) {
		key = log_key_for(path);
		if (!key)
			usleep(10000);
	}
	cr_assert(key, "%s: no request log line with a key", path);
	return key;
}

#define LOC_OK "LocHostile0123456789"
#define APP_ID "64b5f2c1e0a9d8b7c6a5f4e3"

Test(hostile_classify, tokens)
{
	/* header limit raised so a 1 MB token can arrive at all */
	start_with("[server]\nmax_header_size = 4MiB\nmax_request_line = 16KiB\n");
	char *key;

	/* Control: a well-formed OAuth token is keyed by its claims. */
	const char *claims = "{\"authClass\":\"Location\",\"authClassId\":\"" LOC_OK "\","
	                     "\"oauthMeta\":{\"client\":\"" APP_ID "\"},\"iat\":1,\"exp\":2}";
	char *good = make_jwt(claims, strlen(claims));
	key = classified("/hostile/jwt-good", good, NULL, NULL, 0);
	cr_expect_str_eq(key, APP_ID ":" LOC_OK);
	free(key);
	free(good);

	/* A JWT with a 1 MB payload (and the claims inside): over JWT_MAX_LEN, not decoded. */
	size_t big = 1024 * 1024;
	char *payload = malloc(big + 256);
	cr_assert_not_null(payload);
	int n = snprintf(payload, big + 256,
	                 "{\"authClassId\":\"" LOC_OK "\",\"oauthMeta\":{\"client\":\"" APP_ID
	                 "\"},\"pad\":\"");
	memset(payload + n, 'p', big);
	strcpy(payload + n + big, "\"}");
	char *huge = make_jwt(payload, strlen(payload));
	free(payload);
	cr_assert_gt(strlen(huge), 1000000);
	key = classified("/hostile/jwt-1mb", huge, NULL, NULL, 0);
	cr_expect(strncmp(key, "tok:fp.", 7) == 0, "1 MB JWT keyed %s", key);
	free(key);
	/* it was forwarded whole */
	json_t *all = mock_since(fx.mock_ctl, 0), *e;
	size_t i;
	bool seen = false;
	json_array_foreach(all, i, e)
	{
		if (strcmp(entry_uri(e), "/hostile/jwt-1mb") == 0)
			seen = true;
	}
	cr_expect(seen, "the 1 MB token's request did not reach the upstream");
	json_decref(all);
	free(huge);

	/* invalid base64url in each part */
	const char *bad_b64[] = {
		"eyJhbGciOiJIUzI1NiJ9.e30!.c2ln",
		"eyJhbG*iOiJIUzI1NiJ9.eyJhIjoxfQ.c2ln",
		"eyJhbGciOiJIUzI1NiJ9.eyJhIjoxfQ.c2l+n/=",
		"eyJhbGciOiJIUzI1NiJ9.e.c2ln",
		"eyJhbGciOiJIUzI1NiJ9..c2ln",
		"..",
	};
	for (size_t k = 0; k < sizeof(bad_b64) / sizeof(*bad_b64); k++) {
		char path[64];
		snprintf(path, sizeof(path), "/hostile/b64-%zu", k);
		key = classified(path, bad_b64[k], NULL, NULL, 0);
		cr_expect(strncmp(key, "tok:fp.", 7) == 0, "%s keyed %s", bad_b64[k], key);
		free(key);
	}

	/* Deeply nested claims (under JWT_MAX_LEN): jansson's depth limit, a clean failure. */
	enum { DEPTH = 5000 };
	char *deep = malloc(2 * DEPTH + 256);
	cr_assert_not_null(deep);
	n = sprintf(deep, "{\"authClassId\":\"" LOC_OK "\",\"oauthMeta\":{\"client\":\"" APP_ID
	                  "\"},\"x\":");
	memset(deep + n, '[', DEPTH);
	memset(deep + n + DEPTH, ']', DEPTH);
	strcpy(deep + n + 2 * DEPTH, "}");
	char *deep_jwt = make_jwt(deep, strlen(deep));
	free(deep);
	cr_assert_lt(strlen(deep_jwt), 16384);
	key = classified("/hostile/jwt-deep", deep_jwt, NULL, NULL, 0);
	cr_expect(strncmp(key, "tok:fp.", 7) == 0, "deep JWT keyed %s", key);
	free(key);
	free(deep_jwt);

	/* Claims of the wrong types. */
	const char *odd = "{\"authClassId\":[\"" LOC_OK "\"],\"oauthMeta\":\"" APP_ID "\"}";
	char *odd_jwt = make_jwt(odd, strlen(odd));
	key = classified("/hostile/jwt-types", odd_jwt, NULL, NULL, 0);
	cr_expect(strncmp(key, "tok:fp.", 7) == 0, "odd JWT keyed %s", key);
	free(key);
	free(odd_jwt);

	expect_serving("after hostile tokens");
	stop_clean();
}

Test(hostile_classify, bodies, .timeout = 600)
{
	start_with(NULL);
	const char *tok = "opaque-hostile-token-0001";
	char *key;

	/* Control: a small JSON body names its location. */
	const char *small = "{\"name\":\"x\",\"locationId\":\"" LOC_OK "\"}";
	key = classified("/hostile/body-ok", tok, "application/json", small, strlen(small));
	cr_expect_str_eq(key, "tok:" LOC_OK);
	free(key);

	/* Claims JSON, is not JSON: the body is ignored, the fallback bucket is used. */
	const char *notjson[] = {
		"this is not json, locationId: " LOC_OK,
		"{\"locationId\":\"" LOC_OK "\" \"x\"}", /* a syntax error after the id */
		"{\"locationId\":\"" LOC_OK "\",]]]]",
		"[\"locationId\",\"" LOC_OK "\"]",
		"{\"locationId\":\"" LOC_OK "\\u0000\"}",
		"\xff\xfe{\"locationId\":\"" LOC_OK "\"}",
	};
	for (size_t k = 0; k < sizeof(notjson) / sizeof(*notjson); k++) {
		char path[64];
		snprintf(path, sizeof(path), "/hostile/body-bad-%zu", k);
		key = classified(path, tok, "application/json; charset=utf-8", notjson[k],
		                 strlen(notjson[k]));
		cr_expect(strncmp(key, "tok:fp.", 7) == 0, "body %zu keyed %s", k, key);
		free(key);
	}

	/* Deeply nested JSON before the id (60,000 brackets, inside the 64 KiB sniffed): the
	 * scanner counts instead of recursing, and still finds the id after it. */
	enum { DEPTH = 30000 };
	char *deep = malloc(2 * DEPTH + 256);
	cr_assert_not_null(deep);
	int n = sprintf(deep, "{\"x\":");
	memset(deep + n, '[', DEPTH);
	memset(deep + n + DEPTH, ']', DEPTH);
	sprintf(deep + n + 2 * DEPTH, ",\"locationId\":\"" LOC_OK "\"}");
	key = classified("/hostile/body-deep", tok, "application/json", deep, strlen(deep));
	cr_expect_str_eq(key, "tok:" LOC_OK);
	free(key);
	/* unbalanced: only opening brackets */
	memset(deep, '[', 2 * DEPTH);
	deep[2 * DEPTH] = '\0';
	key = classified("/hostile/body-deep-open", tok, "application/json", deep, strlen(deep));
	cr_expect(strncmp(key, "tok:fp.", 7) == 0, "keyed %s", key);
	free(key);
	free(deep);

	/* A 10 MB JSON body with the id at the end: only 64 KiB is sniffed, so the fallback
	 * bucket; the body reaches the upstream whole. */
	size_t big = 10u * 1024 * 1024;
	char *body = malloc(big + 128);
	cr_assert_not_null(body);
	n = sprintf(body, "{\"pad\":\"");
	memset(body + n, 'z', big);
	size_t blen = (size_t)n + big;
	blen += (size_t)sprintf(body + blen, "\",\"locationId\":\"" LOC_OK "\"}");
	int before = fixture_mock_count(fx.mock_ctl);
	key = classified("/hostile/body-10mb", tok, "application/json", body, blen);
	cr_expect(strncmp(key, "tok:fp.", 7) == 0, "10 MB body keyed %s", key);
	free(key);
	free(body);
	json_t *all = mock_since(fx.mock_ctl, before);
	cr_assert_eq(json_array_size(all), 1);
	cr_expect_eq(json_integer_value(json_object_get(json_array_get(all, 0), "body_len")),
	             (json_int_t)blen);
	json_decref(all);

	/* The keys are live on /status too, and none is a token. */
	struct httpc_response r = { 0 };
	cr_assert_eq(httpc_request(fx.admin_addr, "GET", "/status", NULL, NULL, 0, &r, TIMEOUT_MS),
	             0);
	cr_expect_eq(r.status, 200);
	cr_expect(r.body && strstr((const char *)r.body, "tok:" LOC_OK), "/status lacks the key");
	cr_expect(r.body && strstr((const char *)r.body, "tok:fp."), "/status lacks the fallback");
	cr_expect(r.body && !strstr((const char *)r.body, tok), "/status shows the token");
	httpc_response_free(&r);

	expect_serving("after hostile bodies");
	stop_clean();
}
