/*
 * test_http_guard.c: the strict request framer, fed the way a socket feeds it.
 *
 * Every vector (raw bytes -> events, status, exact canonical output) runs fed as one piece,
 * one byte at a time, split in two at every offset, and as one chain per byte, and must give the
 * same result each way. Then: valid requests generated at random (fixed seed) whose canonical
 * output must decode to the same header and body bytes, mutations of them that must never crash
 * and never depend on the split, and a 30 MB body that must pass by chain moves, not copies.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "src/http_guard.h"

/* ---- the table ---------------------------------------------------------------------------- */

static const struct http_guard_limits table_limits = {
	.max_request_line = 200,
	.max_header_bytes = 4096,
	.max_headers = 100,
	.max_body = 1000,
};

struct vector {
	const char *name;
	const char *in;
	size_t in_len;
	const char *events; /* non-MORE events in order: 'C' continue, 'M' message, 'E' error */
	int status;         /* on 'E' */
	const char *out;    /* exactly what g->out holds at the end */
	size_t out_len;
	const char *reason; /* if not NULL: g->reason on 'E' */
	bool partial;       /* input ends inside a message (in_message stays true) */
};

#define V(name, in, ev, st, out)                                                    \
	{                                                                           \
		name, in, sizeof(in) - 1, ev, st, out, sizeof(out) - 1, NULL, false \
	}
#define VR(name, in, ev, st, out, reason)                                             \
	{                                                                             \
		name, in, sizeof(in) - 1, ev, st, out, sizeof(out) - 1, reason, false \
	}
#define VP(name, in, ev, out)                                                     \
	{                                                                         \
		name, in, sizeof(in) - 1, ev, 0, out, sizeof(out) - 1, NULL, true \
	}

#define GET_  "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
#define POST_ "POST /p HTTP/1.1\r\nHost: a\r\n"
#define TE_   "Transfer-Encoding: chunked\r\n"

static const struct vector table[] = {
	/* accepted */
	V("simple GET", GET_, "M", 0, GET_),
	V("Content-Length body", POST_ "Content-Length: 5\r\n\r\nhello", "M", 0,
	  POST_ "Content-Length: 5\r\n\r\nhello"),
	V("Content-Length 0", POST_ "Content-Length: 0\r\n\r\n", "M", 0,
	  POST_ "Content-Length: 0\r\n\r\n"),
	V("chunked, canonical already", POST_ TE_ "\r\n5\r\nhello\r\n0\r\n\r\n", "M", 0,
	  POST_ TE_ "\r\n5\r\nhello\r\n0\r\n\r\n"),
	V("chunked: upper-case hex, leading zeros", POST_ TE_ "\r\n00A\r\n0123456789\r\n0\r\n\r\n",
	  "M", 0, POST_ TE_ "\r\na\r\n0123456789\r\n0\r\n\r\n"),
	V("chunked: extensions dropped",
	  POST_ TE_ "\r\n5;foo=bar ; baz = \"q\\\"x\"\r\nhello\r\n3 ;z\r\nabc\r\n0;last\r\n\r\n",
	  "M", 0, POST_ TE_ "\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"),
	V("chunked: trailers dropped",
	  POST_ TE_ "\r\n2\r\nhi\r\n0\r\nX-Trailer: 1\r\nChecksum: abc \t\r\n\r\n", "M", 0,
	  POST_ TE_ "\r\n2\r\nhi\r\n0\r\n\r\n"),
	V("chunked: no data chunks", POST_ TE_ "\r\n0\r\n\r\n", "M", 0, POST_ TE_ "\r\n0\r\n\r\n"),
	V("TE case-insensitive", POST_ "Transfer-Encoding: Chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", "M",
	  0, POST_ "Transfer-Encoding: Chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
	V("TE with trailing tab and leading spaces",
	  POST_ "Transfer-Encoding:   chunked\t\r\n\r\n0\r\n\r\n", "M", 0,
	  POST_ "Transfer-Encoding:   chunked\t\r\n\r\n0\r\n\r\n"),
	V("two identical Content-Length fields",
	  POST_ "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "M", 0,
	  POST_ "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
	V("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", "M", 0, "GET / HTTP/1.0\r\n\r\n"),
	V("HTTP/1.0 Content-Length body", "PUT /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab", "M", 0,
	  "PUT /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab"),
	V("absolute-form http",
	  "GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", "M", 0,
	  "GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
	V("absolute-form HTTPS upper-case scheme", "GET HTTPS://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
	  "M", 0, "GET HTTPS://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
	V("asterisk-form with OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "M", 0,
	  "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
	V("empty lines before the request line are dropped", "\r\n\r\n" GET_, "M", 0, GET_),
	V("eight empty lines are fine", "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n" GET_, "M", 0, GET_),
	V("HTAB, obs-text and empty values",
	  "GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xff\x80\r\nY:\r\n\r\n", "M", 0,
	  "GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xff\x80\r\nY:\r\n\r\n"),
	V("pipelined: three messages",
	  GET_ POST_ "Content-Length: 3\r\n\r\nabc" POST_ TE_ "\r\n3\r\nxyz\r\n0\r\n\r\n", "MMM", 0,
	  GET_ POST_ "Content-Length: 3\r\n\r\nabc" POST_ TE_ "\r\n3\r\nxyz\r\n0\r\n\r\n"),
	V("pipelined: CRLF between messages dropped", GET_ "\r\n" GET_, "MM", 0, GET_ GET_),
	V("Expect 100-continue with a body",
	  POST_ "Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok", "CM", 0,
	  POST_ "Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
	V("Expect 100-continue chunked, mixed case",
	  POST_ "Expect:  100-Continue \r\n" TE_ "\r\n0\r\n\r\n", "CM", 0,
	  POST_ "Expect:  100-Continue \r\n" TE_ "\r\n0\r\n\r\n"),
	V("Expect 100-continue without a body",
	  "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", "M", 0,
	  "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"),
	V("Expect ignored in HTTP/1.0",
	  "POST / HTTP/1.0\r\nExpect: x\r\nContent-Length: 1\r\n\r\n!", "M", 0,
	  "POST / HTTP/1.0\r\nExpect: x\r\nContent-Length: 1\r\n\r\n!"),
	V("HEAD with Content-Length 0", "HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
	  "M", 0, "HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
	V("chunk-size BWS before an extension", POST_ TE_ "\r\n1 \t;a\r\nz\r\n0\r\n\r\n", "M", 0,
	  POST_ TE_ "\r\n1\r\nz\r\n0\r\n\r\n"),
	V("16 hex digits of chunk size", POST_ TE_ "\r\n0000000000000001\r\nq\r\n0\r\n\r\n", "M", 0,
	  POST_ TE_ "\r\n1\r\nq\r\n0\r\n\r\n"),
	VP("incomplete body waits", POST_ "Content-Length: 5\r\n\r\nhel", "", ""),
	VP("incomplete header block waits", "GET / HTTP/1.1\r\nHo", "", ""),
	VP("complete message then a partial one", GET_ "POST", "M", GET_),

	/* smuggling: framing */
	VR("CL and TE", POST_ "Content-Length: 5\r\n" TE_ "\r\n0\r\n\r\n", "E", 400, "",
	   "Content-Length and Transfer-Encoding together"),
	VR("TE and CL", POST_ TE_ "Content-Length: 5\r\n\r\n0\r\n\r\n", "E", 400, "",
	   "Content-Length and Transfer-Encoding together"),
	VR("two different Content-Length fields",
	   POST_ "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "E", 400, "",
	   "conflicting Content-Length values"),
	VR("Content-Length list of different values", POST_ "Content-Length: 5, 6\r\n\r\nhello!",
	   "E", 400, "", "Content-Length with a list of values"),
	/* RFC 9112 6.3 lets a recipient accept it; evhttp would refuse it with its own HTML 400 */
	VR("Content-Length list of identical values", POST_ "Content-Length: 3 ,3,  3\r\n\r\nabc",
	   "E", 400, "", "Content-Length with a list of values"),
	V("Content-Length list in the second field",
	  POST_ "Content-Length: 3\r\nContent-Length: 3,3\r\n\r\nabc", "E", 400, ""),
	V("Content-Length list with an empty element", POST_ "Content-Length: 5,\r\n\r\nhello", "E",
	  400, ""),
	V("Content-Length with a sign", POST_ "Content-Length: +5\r\n\r\nhello", "E", 400, ""),
	V("Content-Length negative", POST_ "Content-Length: -1\r\n\r\n", "E", 400, ""),
	V("Content-Length with trailing letters", POST_ "Content-Length: 5abc\r\n\r\nhello", "E",
	  400, ""),
	V("Content-Length of 20 digits", POST_ "Content-Length: 18446744073709551621\r\n\r\n", "E",
	  400, ""),
	V("Content-Length with a space inside", POST_ "Content-Length: 1 0\r\n\r\n", "E", 400, ""),
	V("Content-Length empty", POST_ "Content-Length:\r\n\r\n", "E", 400, ""),
	V("Content-Length hex", POST_ "Content-Length: 0x5\r\n\r\nhello", "E", 400, ""),
	V("Content-Length 2^63", POST_ "Content-Length: 9223372036854775808\r\n\r\n", "E", 400, ""),
	V("Content-Length 2^63-1 is only too large",
	  POST_ "Content-Length: 9223372036854775807\r\n\r\n", "E", 413, ""),
	V("Content-Length with a leading tab", POST_ "Content-Length:\t5\r\n\r\nhello", "E", 400,
	  ""),
	VR("TE gzip", POST_ "Transfer-Encoding: gzip\r\n\r\n", "E", 501, "",
	   "unsupported transfer coding"),
	V("TE identity", POST_ "Transfer-Encoding: identity\r\n\r\n", "E", 501, ""),
	VR("TE chunked, gzip", POST_ "Transfer-Encoding: chunked, gzip\r\n\r\n", "E", 400, "",
	   "chunked is not the final transfer coding"),
	VR("TE gzip, chunked", POST_ "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "E", 501,
	   "", "transfer codings other than chunked"),
	V("TE gzip then chunked in two fields",
	  POST_ "Transfer-Encoding: gzip\r\n" TE_ "\r\n0\r\n\r\n", "E", 501, ""),
	VR("TE in HTTP/1.0", "POST / HTTP/1.0\r\n" TE_ "\r\n0\r\n\r\n", "E", 400, "",
	   "Transfer-Encoding in HTTP/1.0"),
	VR("TE chunked twice in two fields", POST_ TE_ TE_ "\r\n0\r\n\r\n", "E", 400, "",
	   "chunked applied more than once"),
	V("TE chunked, chunked", POST_ "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "E",
	  400, ""),
	V("TE , chunked", POST_ "Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", "E", 400, ""),
	V("TE chunked,", POST_ "Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n", "E", 400, ""),
	V("TE empty", POST_ "Transfer-Encoding:\r\n\r\n", "E", 400, ""),
	V("TE empty field then chunked", POST_ "Transfer-Encoding: \r\n" TE_ "\r\n0\r\n\r\n", "E",
	  400, ""),
	V("TE with a leading tab", POST_ "Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", "E", 400,
	  ""),
	V("TE with space then tab", POST_ "Transfer-Encoding: \tchunked\r\n\r\n0\r\n\r\n", "E", 400,
	  ""),
	V("TE chunked then identity in two fields",
	  POST_ TE_ "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n", "E", 400, ""),
	V("TE folded onto the next line", POST_ "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
	  "E", 400, ""),
	V("TE with parameters", POST_ "Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", "E", 400,
	  ""),
	V("TE chunkedx", POST_ "Transfer-Encoding: chunkedx\r\n\r\n", "E", 501, ""),
	V("TE chunk ed", POST_ "Transfer-Encoding: chunk ed\r\n\r\n", "E", 400, ""),
	VR("HEAD with a body", "HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", "E",
	   400, "", "body in a HEAD request"),

	/* smuggling: chunk syntax */
	V("chunk size -1", POST_ TE_ "\r\n-1\r\n", "E", 400, ""),
	V("chunk size 0x5", POST_ TE_ "\r\n0x5\r\nhello\r\n0\r\n\r\n", "E", 400, ""),
	VR("chunk size of 17 hex digits", POST_ TE_ "\r\nfffffffffffffffff\r\n", "E", 400, "",
	   "chunk size too long"),
	V("chunk size of 17 digits, zeros", POST_ TE_ "\r\n00000000000000001\r\nx\r\n0\r\n\r\n",
	  "E", 400, ""),
	V("chunk size of 16 f is only too large", POST_ TE_ "\r\nffffffffffffffff\r\n", "E", 413,
	  ""),
	V("chunk size empty", POST_ TE_ "\r\n\r\n", "E", 400, ""),
	V("chunk size then space then CRLF", POST_ TE_ "\r\n5 \r\nhello\r\n0\r\n\r\n", "E", 400,
	  ""),
	VR("chunk data not followed by CRLF", POST_ TE_ "\r\n5\r\nhelloX\r\n0\r\n\r\n", "E", 400,
	   "", "chunk data not followed by CRLF"),
	V("chunk data followed by LF only", POST_ TE_ "\r\n5\r\nhello\n0\r\n\r\n", "E", 400, ""),
	V("chunk data followed by CR only", POST_ TE_ "\r\n5\r\nhello\r0\r\n\r\n", "E", 400, ""),
	VR("bare LF in chunk line", POST_ TE_ "\r\n5\nhello\r\n0\r\n\r\n", "E", 400, "",
	   "bare LF in chunk line"),
	V("bare CR in chunk line", POST_ TE_ "\r\n5\rhello\r\n0\r\n\r\n", "E", 400, ""),
	V("bare LF in last-chunk line", POST_ TE_ "\r\n0\n\r\n", "E", 400, ""),
	V("bad chunk extension", POST_ TE_ "\r\n1;=x\r\nz\r\n0\r\n\r\n", "E", 400, ""),
	V("bare CR inside a chunk extension", POST_ TE_ "\r\n1;a\rb\r\nz\r\n0\r\n\r\n", "E", 400,
	  ""),
	V("control character in a chunk extension", POST_ TE_ "\r\n1;a=\x01\r\nz\r\n0\r\n\r\n", "E",
	  400, ""),
	V("chunk data hiding a request", POST_ TE_ "\r\n5\r\nhelloGET / HTTP/1.1\r\n\r\n", "E", 400,
	  ""),
	V("unterminated quoted chunk extension", POST_ TE_ "\r\n1;a=\"x\r\nz\r\n0\r\n\r\n", "E",
	  400, ""),
	V("bare LF ending the trailer section", POST_ TE_ "\r\n0\r\nX: 1\r\n\n", "E", 400, ""),
	V("obs-fold in a trailer", POST_ TE_ "\r\n0\r\nX: 1\r\n 2\r\n\r\n", "E", 400, ""),

	/* request line */
	VR("bare LF ending the request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", "E", 400, "",
	   "bare LF in request line"),
	V("bare CR ending the request line", "GET / HTTP/1.1\rHost: a\r\n\r\n", "E", 400, ""),
	V("bare CR inside the request line", "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("bare LF before the request line", "\n" GET_, "E", 400, ""),
	V("nine empty lines", "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n" GET_, "E", 400, ""),
	V("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", "E", 505, ""),
	V("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", "E", 505, ""),
	V("HTTP/0.9 style", "GET /\r\n\r\n", "E", 400, ""),
	VR("trailing space after the version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "E", 400, "",
	   "malformed HTTP version"),
	V("lower-case http/1.1", "GET / http/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("HTTP/1.10", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("HTTP/1", "GET / HTTP/1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("double space", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("tab as separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("leading space", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("method not a token", "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	VR("unknown method", "FOO / HTTP/1.1\r\nHost: a\r\n\r\n", "E", 501, "", "unknown method"),
	V("lower-case method", "get / HTTP/1.1\r\nHost: a\r\n\r\n", "E", 501, ""),
	V("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "E", 501, ""),
	V("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "E", 405, ""),
	V("TRACE", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", "E", 405, ""),
	VR("asterisk-form with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, "",
	   "asterisk-form target without OPTIONS"),
	V("asterisk followed by more", "OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	VR("fragment", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, "",
	   "fragment in request target"),
	V("relative target", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("other scheme", "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("scheme without authority", "GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("non-ASCII in target", "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("NUL in target", "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", "E", 400, ""),
	V("HTTP/1.0 with a body hiding a request, HEAD",
	  "HEAD / HTTP/1.0\r\nContent-Length: 16\r\n\r\nGET / HTTP/1.0\r\n\r\n", "E", 400, ""),

	/* header block */
	VR("bare LF ending a field line", "GET / HTTP/1.1\r\nHost: a\n\r\n", "E", 400, "",
	   "bare LF in header"),
	V("bare LF ending the header block", "GET / HTTP/1.1\r\nHost: a\r\n\n", "E", 400, ""),
	VR("bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "E", 400, "",
	   "bare CR in header"),
	VR("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "E", 400, "",
	   "obs-fold or whitespace at start of field line"),
	V("obs-fold with HTAB", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", "E", 400, ""),
	V("whitespace before the first field", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", "E", 400, ""),
	VR("NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", "E", 400, "",
	   "NUL in field value"),
	V("DEL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", "E", 400, ""),
	V("ESC in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[0m\r\n\r\n", "E", 400, ""),
	VR("space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "E", 400, "",
	   "whitespace before colon"),
	V("tab before colon", "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", "E", 400, ""),
	VR("empty field name", "GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", "E", 400, "",
	   "empty field name"),
	V("field line without colon", "GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n", "E", 400, ""),
	V("field name not a token", "GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", "E", 400, ""),
	VR("missing Host", "GET / HTTP/1.1\r\n\r\n", "E", 400, "", "missing Host"),
	VR("two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "E", 400, "",
	   "more than one Host field"),
	V("two Host fields in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", "E", 400,
	  ""),
	V("Host with a leading tab", "GET / HTTP/1.1\r\nHost:\ta\r\n\r\n", "E", 400, ""),
	VR("Content-Length over max_body", POST_ "Content-Length: 1001\r\n\r\n", "E", 413, "",
	   "Content-Length over the body limit"),
	V("Content-Length over max_body with Expect",
	  POST_ "Expect: 100-continue\r\nContent-Length: 1001\r\n\r\n", "E", 413, ""),
	VR("Expect other than 100-continue", POST_ "Expect: 200-ok\r\nContent-Length: 1\r\n\r\n!",
	   "E", 417, "", "unsupported expectation"),
	V("Expect list", POST_ "Expect: 100-continue, x\r\nContent-Length: 1\r\n\r\n!", "E", 417,
	  ""),
	V("Expect without a body, other value", "GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n",
	  "E", 417, ""),
	V("Expect empty", POST_ "Expect:\r\nContent-Length: 1\r\n\r\n!", "E", 417, ""),

	/* errors after good messages keep the good ones */
	V("pipelined: error in the second message", GET_ "GET / HTTP/1.1\nHost: a\r\n\r\n", "ME",
	  400, GET_),
	V("pipelined: continue, message, error",
	  POST_ "Expect: 100-continue\r\nContent-Length: 1\r\n\r\n!"
	        "BREW / HTTP/1.1\r\n\r\n",
	  "CME", 501, POST_ "Expect: 100-continue\r\nContent-Length: 1\r\n\r\n!"),
};

/* ---- feeding ------------------------------------------------------------------------------ */

struct outcome {
	char events[32];
	size_t n_events;
	int status;
	const char *reason;
	unsigned char *out;
	size_t out_len;
	bool in_message;
	uint32_t n_messages;
};

static void outcome_free(struct outcome *o)
{
	free(o->out);
	o->out = NULL;
}

/*
 * Feeds `data` to a fresh guard in pieces of the given lengths (summing to len). With
 * one_chain_per_byte every byte becomes its own evbuffer chain, so one feed spans many
 * extents. Checks the invariants every caller relies on after each event.
 */
static void feed(const char *name, const struct http_guard_limits *lim, const unsigned char *data,
                 size_t len, const size_t *pieces, size_t n_pieces, bool one_chain_per_byte,
                 struct outcome *o)
{
	struct http_guard g;
	struct evbuffer *in = evbuffer_new();
	size_t off = 0, i;
	bool stop = false;

	cr_assert_not_null(in);
	cr_assert_eq(http_guard_init(&g, lim), 0);
	memset(o, 0, sizeof(*o));
	for (i = 0; i < n_pieces && !stop; i++) {
		size_t j;

		if (one_chain_per_byte) {
			for (j = 0; j < pieces[i]; j++)
				cr_assert_eq(
				        evbuffer_add_reference(in, data + off + j, 1, NULL, NULL),
				        0);
		} else {
			cr_assert_eq(evbuffer_add(in, data + off, pieces[i]), 0);
		}
		off += pieces[i];
		cr_assert_leq(off, len, "%s: pieces overrun the input", name);
		for (;;) {
			size_t out_before = evbuffer_get_length(g.out);
			enum http_guard_event ev = http_guard_feed(&g, in);

			if (ev == GUARD_MORE) {
				cr_assert_eq(evbuffer_get_length(in), 0, "%s: MORE left input",
				             name);
				cr_assert_eq(evbuffer_get_length(g.out), out_before,
				             "%s: output grew without a message", name);
				break;
			}
			cr_assert_lt(o->n_events, sizeof(o->events) - 1, "%s: too many events",
			             name);
			if (ev == GUARD_MESSAGE) {
				o->events[o->n_events++] = 'M';
				cr_assert_gt(evbuffer_get_length(g.out), out_before, "%s", name);
				cr_assert(!g.in_message && !g.in_body, "%s: flags after message",
				          name);
			} else if (ev == GUARD_CONTINUE) {
				o->events[o->n_events++] = 'C';
				cr_assert(g.in_message && g.in_body, "%s: flags at continue", name);
				cr_assert_eq(evbuffer_get_length(g.out), out_before, "%s", name);
			} else {
				size_t left = evbuffer_get_length(in);

				cr_assert_eq(ev, GUARD_ERROR, "%s: unknown event %d", name,
				             (int)ev);
				o->events[o->n_events++] = 'E';
				o->status = g.status;
				o->reason = g.reason;
				cr_assert_not_null(g.reason, "%s", name);
				/* dead: refuses again and drains nothing */
				cr_assert_eq(http_guard_feed(&g, in), GUARD_ERROR, "%s", name);
				cr_assert_eq(evbuffer_get_length(in), left, "%s", name);
				stop = true;
				break;
			}
		}
	}
	cr_assert(stop || off == len, "%s: pieces do not cover the input", name);
	o->events[o->n_events] = '\0';
	o->in_message = g.in_message;
	o->n_messages = g.n_messages;
	o->out_len = evbuffer_get_length(g.out);
	o->out = malloc(o->out_len + 1);
	cr_assert_not_null(o->out);
	cr_assert_eq(evbuffer_remove(g.out, o->out, o->out_len), (int)o->out_len);
	http_guard_deinit(&g);
	evbuffer_free(in);
}

static size_t count_char(const char *s, char c)
{
	size_t n = 0;

	for (; *s != '\0'; s++)
		n += *s == c;
	return n;
}

static void check_vector(const struct vector *v, const struct outcome *o, const char *how)
{
	cr_assert_str_eq(o->events, v->events, "%s [%s]: events", v->name, how);
	if (v->status != 0 || strchr(v->events, 'E') != NULL)
		cr_assert_eq(o->status, v->status, "%s [%s]: status %d", v->name, how, o->status);
	if (v->reason != NULL)
		cr_assert_str_eq(o->reason, v->reason, "%s [%s]: reason", v->name, how);
	cr_assert_eq(o->out_len, v->out_len, "%s [%s]: output length %zu, want %zu", v->name, how,
	             o->out_len, v->out_len);
	cr_assert(memcmp(o->out, v->out, v->out_len) == 0, "%s [%s]: output bytes", v->name, how);
	cr_assert_eq(o->n_messages, count_char(v->events, 'M'), "%s [%s]", v->name, how);
	if (strchr(v->events, 'E') == NULL)
		cr_assert_eq(o->in_message, v->partial, "%s [%s]: in_message", v->name, how);
}

/* All the ways one vector is fed; each must match the vector and the one-piece reason. */
static void run_vector(const struct http_guard_limits *lim, const struct vector *v)
{
	const unsigned char *data = (const unsigned char *)v->in;
	size_t len = v->in_len, k, *ones;
	struct outcome whole, o;
	char how[48];

	feed(v->name, lim, data, len, &len, 1, false, &whole);
	check_vector(v, &whole, "one piece");

	ones = malloc((len ? len : 1) * sizeof(*ones));
	cr_assert_not_null(ones);
	for (k = 0; k < len; k++)
		ones[k] = 1;
	feed(v->name, lim, data, len, ones, len, false, &o);
	check_vector(v, &o, "byte by byte");
	cr_assert_str_eq(o.reason ? o.reason : "", whole.reason ? whole.reason : "", "%s", v->name);
	outcome_free(&o);

	feed(v->name, lim, data, len, &len, 1, true, &o);
	check_vector(v, &o, "one chain per byte");
	cr_assert_str_eq(o.reason ? o.reason : "", whole.reason ? whole.reason : "", "%s", v->name);
	outcome_free(&o);

	for (k = 1; k < len; k++) {
		size_t two[2] = { k, len - k };

		snprintf(how, sizeof(how), "split at %zu", k);
		feed(v->name, lim, data, len, two, 2, false, &o);
		check_vector(v, &o, how);
		cr_assert_str_eq(o.reason ? o.reason : "", whole.reason ? whole.reason : "",
		                 "%s [%s]", v->name, how);
		outcome_free(&o);
	}
	free(ones);
	outcome_free(&whole);
}

Test(http_guard, table_vectors)
{
	size_t i;

	cr_assert_geq(sizeof(table) / sizeof(table[0]), 40);
	for (i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		run_vector(&table_limits, &table[i]);
}

/* ---- vectors too long to write out --------------------------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		cr_assert_not_null(b->p);
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_insert(struct buf *b, size_t at, const void *data, size_t n)
{
	size_t tail = b->len - at;

	buf_add(b, data, n); /* grows by n; the bytes are put in place below */
	memmove(b->p + at + n, b->p + at, tail);
	memcpy(b->p + at, data, n);
}

static void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_fill(struct buf *b, char c, size_t n)
{
	while (n-- > 0)
		buf_add(b, &c, 1);
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	cr_assert(n >= 0 && (size_t)n < sizeof(tmp));
	buf_add(b, tmp, (size_t)n);
}

static void run_built(const char *name, struct buf *in, const char *events, int status,
                      struct buf *out, const char *reason)
{
	struct vector v = {
		.name = name,
		.in = in->p,
		.in_len = in->len,
		.events = events,
		.status = status,
		.out = out->p ? out->p : "",
		.out_len = out->len,
		.reason = reason,
	};

	run_vector(&table_limits, &v);
	free(in->p);
	free(out->p);
	memset(in, 0, sizeof(*in));
	memset(out, 0, sizeof(*out));
}

Test(http_guard, generated_vectors)
{
	struct buf in = { 0 }, out = { 0 };
	size_t i;

	/* request line of exactly max_request_line bytes passes; one more is 414 */
	buf_str(&in, "GET /");
	buf_fill(&in, 'a', 200 - strlen("GET / HTTP/1.1"));
	buf_str(&in, " HTTP/1.1\r\nHost: a\r\n\r\n");
	buf_add(&out, in.p, in.len);
	run_built("request line at the limit", &in, "M", 0, &out, NULL);

	buf_str(&in, "GET /");
	buf_fill(&in, 'a', 201 - strlen("GET / HTTP/1.1"));
	buf_str(&in, " HTTP/1.1\r\nHost: a\r\n\r\n");
	run_built("request line one over", &in, "E", 414, &out, "request line too long");

	buf_str(&in, "GET /");
	buf_fill(&in, 'a', 1000);
	run_built("long target, no end", &in, "E", 414, &out, NULL);

	buf_fill(&in, 'A', 300);
	run_built("long method", &in, "E", 414, &out, NULL);

	/* 100 fields pass (Host is one), 101 are 431 */
	buf_str(&in, "GET / HTTP/1.1\r\nHost: a\r\n");
	for (i = 0; i < 99; i++)
		buf_printf(&in, "X-%zu: v\r\n", i);
	buf_str(&in, "\r\n");
	buf_add(&out, in.p, in.len);
	run_built("100 header fields", &in, "M", 0, &out, NULL);

	buf_str(&in, "GET / HTTP/1.1\r\nHost: a\r\n");
	for (i = 0; i < 100; i++)
		buf_printf(&in, "X-%zu: v\r\n", i);
	buf_str(&in, "\r\n");
	run_built("101 header fields", &in, "E", 431, &out, "too many header fields");

	/* a header block of exactly max_header_bytes passes; one more byte is 431 */
	buf_str(&in, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
	buf_fill(&in, 'v', 4096 - in.len - 4);
	buf_str(&in, "\r\n\r\n");
	cr_assert_eq(in.len, 4096);
	buf_add(&out, in.p, in.len);
	run_built("header block at the limit", &in, "M", 0, &out, NULL);

	buf_str(&in, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
	buf_fill(&in, 'v', 4097 - in.len - 4);
	buf_str(&in, "\r\n\r\n");
	run_built("header block one over", &in, "E", 431, &out, "header block too large");

	buf_str(&in, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
	buf_fill(&in, 'v', 5000);
	buf_str(&in, "\n\r\n"); /* the limit is met before the bare LF */
	run_built("header block over, bare LF later", &in, "E", 431, &out, NULL);

	/* chunked totals: 1000 passes, 600 + 401 is 413 at the second chunk line */
	buf_str(&in, POST_ TE_ "\r\n258\r\n");
	buf_fill(&in, 'x', 600);
	buf_str(&in, "\r\n190\r\n");
	buf_fill(&in, 'y', 400);
	buf_str(&in, "\r\n0\r\n\r\n");
	buf_add(&out, in.p, in.len);
	run_built("chunked body at the limit", &in, "M", 0, &out, NULL);

	buf_str(&in, POST_ TE_ "\r\n258\r\n");
	buf_fill(&in, 'x', 600);
	buf_str(&in, "\r\n191\r\n");
	buf_fill(&in, 'y', 401);
	buf_str(&in, "\r\n0\r\n\r\n");
	run_built("chunked body over the limit", &in, "E", 413, &out,
	          "chunked body over the body limit");

	/* chunk extensions: 1 KiB after the size passes, one more byte is 400 */
	buf_str(&in, POST_ TE_ "\r\n1;");
	buf_fill(&in, 'e', 1023);
	buf_str(&in, "\r\nz\r\n0\r\n\r\n");
	buf_str(&out, POST_ TE_ "\r\n1\r\nz\r\n0\r\n\r\n");
	run_built("chunk extension at the limit", &in, "M", 0, &out, NULL);

	buf_str(&in, POST_ TE_ "\r\n1;");
	buf_fill(&in, 'e', 1024);
	buf_str(&in, "\r\nz\r\n0\r\n\r\n");
	run_built("chunk extension one over", &in, "E", 400, &out, "chunk extension too long");

	/* trailers count against max_headers and max_header_bytes separately */
	buf_str(&in, POST_ TE_ "\r\n0\r\n");
	for (i = 0; i < 101; i++)
		buf_printf(&in, "T-%zu: v\r\n", i);
	buf_str(&in, "\r\n");
	run_built("101 trailer fields", &in, "E", 431, &out, "too many trailer fields");

	buf_str(&in, POST_ TE_ "\r\n0\r\nT: ");
	buf_fill(&in, 't', 4100);
	buf_str(&in, "\r\n\r\n");
	run_built("trailer section too large", &in, "E", 431, &out, "trailer section too large");

	buf_str(&in, POST_);
	for (i = 0; i < 98; i++)
		buf_printf(&in, "X-%zu: v\r\n", i);
	buf_str(&in, TE_ "\r\n0\r\n");
	for (i = 0; i < 100; i++)
		buf_printf(&in, "T-%zu: v\r\n", i);
	buf_str(&in, "\r\n");
	buf_add(&out, in.p, strstr(in.p, "\r\n\r\n") + 4 - in.p);
	buf_str(&out, "0\r\n\r\n");
	run_built("100 header and 100 trailer fields", &in, "M", 0, &out, NULL);
}

/* ---- every byte in every position: the character classes ------------------------------- */

/* Feeds one small request built around byte b; returns its events (and status on error). */
static void feed_with_byte(const char *prefix, unsigned char b, const char *suffix,
                           struct outcome *o)
{
	struct buf in = { 0 };

	buf_str(&in, prefix);
	buf_add(&in, &b, 1);
	buf_str(&in, suffix);
	feed("byte class", &table_limits, (const unsigned char *)in.p, in.len, &in.len, 1, false,
	     o);
	free(in.p);
}

static bool is_tchar(unsigned b)
{
	return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') ||
	       (b != 0 && strchr("!#$%&'*+-.^_`|~", (int)b) != NULL);
}

static void expect_class(const struct outcome *o, bool accepted, int refused_status,
                         const char *where, unsigned b)
{
	if (accepted) {
		cr_assert_str_eq(o->events, "M", "byte 0x%02x in %s: refused (%s)", b, where,
		                 o->reason ? o->reason : "");
	} else {
		cr_assert_str_eq(o->events, "E", "byte 0x%02x in %s: accepted", b, where);
		cr_assert_eq(o->status, refused_status, "byte 0x%02x in %s: status %d", b, where,
		             o->status);
	}
}

Test(http_guard, every_byte_in_every_position)
{
	unsigned b;

	for (b = 0; b < 256; b++) {
		bool vchar = b > 0x20 && b < 0x7f;
		struct outcome o;

		/* field value: HTAB, SP, VCHAR, obs-text */
		feed_with_byte("GET / HTTP/1.1\r\nHost: a\r\nX: a", (unsigned char)b, "a\r\n\r\n",
		               &o);
		expect_class(&o, b == '\t' || b == ' ' || vchar || b >= 0x80, 400, "a value", b);
		outcome_free(&o);

		/* field name: tchar only (a colon just ends it early) */
		feed_with_byte("GET / HTTP/1.1\r\nHost: a\r\nX", (unsigned char)b, "Y: v\r\n\r\n",
		               &o);
		expect_class(&o, is_tchar(b) || b == ':', 400, "a field name", b); /* "X:Y: v" */
		outcome_free(&o);

		/* request target: VCHAR but '#' */
		feed_with_byte("GET /", (unsigned char)b, " HTTP/1.1\r\nHost: a\r\n\r\n", &o);
		expect_class(&o, vchar && b != '#', 400, "the target", b);
		outcome_free(&o);

		/* method: a token, only "GET" known; "G T" is the unknown method "G" */
		feed_with_byte("G", (unsigned char)b, "T / HTTP/1.1\r\nHost: a\r\n\r\n", &o);
		if (b == 'E')
			expect_class(&o, true, 0, "the method", b);
		else
			expect_class(&o, false, is_tchar(b) || b == ' ' ? 501 : 400, "the method",
			             b);
		outcome_free(&o);

		/* chunk extension quoted-string: qdtext only */
		feed_with_byte(POST_ TE_ "\r\n1;a=\"", (unsigned char)b, "\"\r\nz\r\n0\r\n\r\n",
		               &o);
		expect_class(&o,
		             b == '\t' || b == ' ' || (vchar && b != '"' && b != '\\') || b >= 0x80,
		             400, "a quoted chunk extension", b);
		outcome_free(&o);

		/* chunk size: hex digits ("1b" is 27 bytes) */
		if (!(b >= '0' && b <= '9') && !(b >= 'a' && b <= 'f') && !(b >= 'A' && b <= 'F') &&
		    b != ';' && b != ' ' && b != '\t') {
			feed_with_byte(POST_ TE_ "\r\n1", (unsigned char)b, "\r\nz\r\n0\r\n\r\n",
			               &o);
			expect_class(&o, false, 400, "a chunk size", b);
			outcome_free(&o);
		}
	}
}

/* ---- public flags across a message -------------------------------------------------------- */

Test(http_guard, flags_follow_the_message)
{
	struct http_guard g;
	struct evbuffer *in = evbuffer_new();

	cr_assert_eq(http_guard_init(&g, &table_limits), 0);
	cr_assert(!g.in_message && !g.in_body);

	evbuffer_add_printf(in, "\r\n");
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MORE);
	cr_assert(!g.in_message, "empty lines do not start a message");

	evbuffer_add_printf(in, "POST / HTTP/1.1\r\nHost: a\r\n");
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MORE);
	cr_assert(g.in_message && !g.in_body);
	cr_assert_eq(evbuffer_get_length(g.out), 0);

	evbuffer_add_printf(in, "Content-Length: 4\r\n\r\nab");
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MORE);
	cr_assert(g.in_message && g.in_body);
	cr_assert_eq(evbuffer_get_length(g.out), 0, "nothing leaves before the message is whole");

	evbuffer_add_printf(in, "cdGET / HTTP/1.1\r\n");
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MESSAGE);
	cr_assert(!g.in_message && !g.in_body);
	cr_assert_eq(g.n_messages, 1);
	cr_assert_gt(evbuffer_get_length(in), 0, "the next message waits for the next call");
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MORE);
	cr_assert(g.in_message && !g.in_body);

	evbuffer_add_printf(in, "Host: a\r\n\r\n");
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MESSAGE);
	cr_assert_eq(g.n_messages, 2);
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MORE);

	http_guard_deinit(&g);
	http_guard_deinit(&g); /* twice is harmless */
	evbuffer_free(in);
}

Test(http_guard, init_rejects_null)
{
	struct http_guard g;

	cr_assert_eq(http_guard_init(NULL, &table_limits), -EINVAL);
	cr_assert_eq(http_guard_init(&g, NULL), -EINVAL);
	http_guard_deinit(NULL);
}

/* ---- randomized --------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64*: fixed seed, reproducible everywhere */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t rnd(size_t n)
{
	return n ? (size_t)(rng() % n) : 0;
}

static const struct http_guard_limits random_limits = {
	.max_request_line = 8192,
	.max_header_bytes = 65536,
	.max_headers = 100,
	.max_body = 1 << 20,
};

/* What one generated message must come out as. */
struct expected_msg {
	size_t head_len; /* header block bytes, verbatim */
	size_t body_len; /* decoded body */
	bool chunked;
	bool continues; /* a GUARD_CONTINUE precedes its GUARD_MESSAGE */
	char *head, *body;
};

static void random_token(struct buf *b, size_t max_len)
{
	static const char tchars[] = "!#$%&'*+-.^_`|~0123456789"
	                             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
	size_t n = 1 + rnd(max_len), i;

	for (i = 0; i < n; i++)
		buf_add(b, &tchars[rnd(sizeof(tchars) - 1)], 1);
}

static void random_value(struct buf *b, size_t max_len)
{
	size_t n = rnd(max_len + 1), i;

	for (i = 0; i < n; i++) {
		unsigned char c;

		switch (rnd(8)) {
		case 0:
			c = (unsigned char)(0x80 + rnd(0x80));
			break;
		case 1:
			c = (i == 0) ? 'v' : (rnd(2) ? ' ' : '\t');
			break;
		default:
			c = (unsigned char)(0x21 + rnd(0x7e - 0x21 + 1));
			break;
		}
		buf_add(b, &c, 1);
	}
}

static const char *random_case(const char *s, char *tmp, size_t tmp_len)
{
	size_t i;

	for (i = 0; s[i] != '\0' && i + 1 < tmp_len; i++)
		tmp[i] = (char)(rnd(2) ? (s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]) : s[i]);
	tmp[i] = '\0';
	return tmp;
}

/* Appends one valid request to raw and its expected canonical form to canon. */
static void gen_request(struct buf *raw, struct buf *canon, struct expected_msg *e)
{
	static const char *const methods[] = { "GET",    "POST",    "PUT", "PATCH",
		                               "DELETE", "OPTIONS", "HEAD" };
	const char *method = methods[rnd(7)];
	bool http10 = rnd(6) == 0, is_head = strcmp(method, "HEAD") == 0;
	int body_kind = is_head ? 0 : (int)rnd(3); /* none, Content-Length, chunked */
	struct buf head = { 0 }, body = { 0 };
	size_t n_fields, i, empty = rnd(3);
	char tmp[32], tmp2[16];

	if (http10 && body_kind == 2)
		body_kind = 1;
	memset(e, 0, sizeof(*e));
	for (i = 0; i < empty; i++)
		buf_str(raw, "\r\n");

	buf_printf(&head, "%s ", method);
	if (strcmp(method, "OPTIONS") == 0 && rnd(3) == 0) {
		buf_str(&head, "*");
	} else {
		if (rnd(4) == 0)
			buf_str(&head, rnd(2) ? "http://h.example" : "HTTPS://h.example:8443");
		buf_str(&head, "/");
		static const char pchars[] = "abcXYZ09-._~/?=&%!$'()*+,;:@";

		for (i = rnd(40); i > 0; i--)
			buf_add(&head, &pchars[rnd(sizeof(pchars) - 1)], 1);
	}
	buf_str(&head, http10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");

	if (body_kind != 0) {
		size_t n = rnd(8) == 0 ? rnd(70000) : rnd(3000);

		for (i = 0; i < n; i++) {
			unsigned char c = (unsigned char)rnd(256);

			buf_add(&body, &c, 1);
		}
	}

	n_fields = rnd(12);
	if (!http10 || rnd(2))
		buf_printf(&head, "%s:%sh.example\r\n", random_case("host", tmp, sizeof(tmp)),
		           rnd(2) ? " " : "");
	if (body_kind == 1 || (body_kind == 0 && rnd(4) == 0))
		buf_printf(&head, "%s: %zu\r\n", random_case("content-length", tmp, sizeof(tmp)),
		           body.len);
	if (body_kind == 2)
		buf_printf(&head, "%s:  %s \t\r\n",
		           random_case("transfer-encoding", tmp, sizeof(tmp)),
		           random_case("chunked", tmp2, sizeof(tmp2)));
	if (!http10 && rnd(4) == 0) {
		buf_printf(&head, "Expect: %s\r\n", random_case("100-continue", tmp, sizeof(tmp)));
		e->continues = body_kind == 2 || (body_kind == 1 && body.len > 0);
	}
	for (i = 0; i < n_fields; i++) {
		buf_str(&head, "x-");
		random_token(&head, 12);
		buf_str(&head, ":");
		random_value(&head, 40);
		buf_str(&head, "\r\n");
	}
	buf_str(&head, "\r\n");
	buf_add(raw, head.p, head.len);
	buf_add(canon, head.p, head.len);

	if (body_kind == 1) {
		buf_add(raw, body.p, body.len);
		buf_add(canon, body.p, body.len);
	} else if (body_kind == 2) {
		size_t off = 0;

		while (off < body.len) {
			size_t n = 1 + rnd(rnd(2) ? 16 : 5000);

			if (n > body.len - off)
				n = body.len - off;
			buf_printf(raw, rnd(2) ? "%zx" : "%zX", n);
			if (rnd(4) == 0)
				buf_str(raw, rnd(2) ? ";a=b" : " ; name = \"q\\\"v\" ;x");
			buf_str(raw, "\r\n");
			buf_add(raw, body.p + off, n);
			buf_str(raw, "\r\n");
			buf_printf(canon, "%zx\r\n", n);
			buf_add(canon, body.p + off, n);
			buf_str(canon, "\r\n");
			off += n;
		}
		buf_str(raw, rnd(3) ? "0\r\n" : "000;end\r\n");
		for (i = rnd(3); i > 0; i--) {
			random_token(raw, 8);
			buf_str(raw, ": ");
			random_value(raw, 20);
			buf_str(raw, "\r\n");
		}
		buf_str(raw, "\r\n");
		buf_str(canon, "0\r\n\r\n");
	}
	e->chunked = body_kind == 2;
	e->head = head.p;
	e->head_len = head.len;
	e->body = body.p;
	e->body_len = body.len;
}

/* Decodes a canonical message at out[*off]; checks it against e and moves *off past it. */
static void decode_canonical(const unsigned char *out, size_t out_len, size_t *off,
                             const struct expected_msg *e, size_t msg_index)
{
	size_t at = *off;

	cr_assert_leq(e->head_len, out_len - at, "message %zu: head truncated", msg_index);
	cr_assert(memcmp(out + at, e->head, e->head_len) == 0, "message %zu: head bytes",
	          msg_index);
	at += e->head_len;
	if (!e->chunked) {
		cr_assert_leq(e->body_len, out_len - at, "message %zu: body truncated", msg_index);
		cr_assert(e->body_len == 0 || memcmp(out + at, e->body, e->body_len) == 0,
		          "message %zu: body bytes", msg_index);
		*off = at + e->body_len;
		return;
	}
	{
		size_t got = 0;

		for (;;) {
			size_t size = 0, digits = 0;

			/* canonical: lower-case hex without leading zeros, then CRLF */
			while (at < out_len && ((out[at] >= '0' && out[at] <= '9') ||
			                        (out[at] >= 'a' && out[at] <= 'f'))) {
				size = size * 16 + (size_t)(out[at] <= '9' ? out[at] - '0'
				                                           : out[at] - 'a' + 10);
				digits++;
				at++;
			}
			cr_assert(digits > 0 && (digits == 1 || out[at - digits] != '0'),
			          "message %zu: chunk size not canonical", msg_index);
			cr_assert(at + 2 <= out_len && out[at] == '\r' && out[at + 1] == '\n',
			          "message %zu: chunk line", msg_index);
			at += 2;
			if (size == 0)
				break;
			cr_assert_leq(size, e->body_len - got, "message %zu: too much data",
			              msg_index);
			cr_assert(at + size + 2 <= out_len, "message %zu", msg_index);
			cr_assert(memcmp(out + at, e->body + got, size) == 0,
			          "message %zu: chunk data", msg_index);
			got += size;
			at += size;
			cr_assert(out[at] == '\r' && out[at + 1] == '\n', "message %zu", msg_index);
			at += 2;
		}
		cr_assert(at + 2 <= out_len && out[at] == '\r' && out[at + 1] == '\n',
		          "message %zu: no trailers in canonical form", msg_index);
		cr_assert_eq(got, e->body_len, "message %zu: decoded body length", msg_index);
		*off = at + 2;
	}
}

/* Random piece lengths summing to len: mostly small, sometimes large. */
static size_t random_pieces(size_t len, size_t **pieces)
{
	size_t n = 0, off = 0;

	*pieces = malloc((len ? len : 1) * sizeof(**pieces));
	cr_assert_not_null(*pieces);
	while (off < len) {
		size_t k = 1 + rnd(rnd(4) == 0 ? 20000 : 64);

		if (k > len - off)
			k = len - off;
		(*pieces)[n++] = k;
		off += k;
	}
	return n;
}

Test(http_guard, random_valid_requests, .timeout = 120)
{
	int iter;

	rng_state = 0x9e3779b97f4a7c15ULL;
	for (iter = 0; iter < 300; iter++) {
		struct buf raw = { 0 }, canon = { 0 };
		struct expected_msg msgs[4];
		char want_events[16] = { 0 };
		size_t n_msgs = 1 + rnd(4), i, n_pieces, off = 0, *pieces;
		struct outcome o, whole;
		char name[32];

		for (i = 0; i < n_msgs; i++) {
			gen_request(&raw, &canon, &msgs[i]);
			if (msgs[i].continues)
				strcat(want_events, "C");
			strcat(want_events, "M");
		}
		snprintf(name, sizeof(name), "random #%d", iter);

		feed(name, &random_limits, (const unsigned char *)raw.p, raw.len, &raw.len, 1,
		     false, &whole);
		cr_assert_str_eq(whole.events, want_events, "%s: %s (status %d)", name,
		                 whole.reason ? whole.reason : "", whole.status);
		cr_assert_eq(whole.out_len, canon.len, "%s: canonical length", name);
		cr_assert(memcmp(whole.out, canon.p, canon.len) == 0, "%s: canonical bytes", name);
		for (i = 0; i < n_msgs; i++)
			decode_canonical(whole.out, whole.out_len, &off, &msgs[i], i);
		cr_assert_eq(off, whole.out_len, "%s: nothing after the last message", name);

		n_pieces = random_pieces(raw.len, &pieces);
		feed(name, &random_limits, (const unsigned char *)raw.p, raw.len, pieces, n_pieces,
		     iter % 2 == 0, &o);
		cr_assert_str_eq(o.events, want_events, "%s: split events", name);
		cr_assert(o.out_len == canon.len && memcmp(o.out, canon.p, canon.len) == 0,
		          "%s: split output", name);
		outcome_free(&o);
		free(pieces);

		outcome_free(&whole);
		for (i = 0; i < n_msgs; i++) {
			free(msgs[i].head);
			free(msgs[i].body);
		}
		free(raw.p);
		free(canon.p);
	}
}

static void mutate(struct buf *b)
{
	static const char specials[] = "\r\n\0 \t:;,\"\\#*0fF-+x";
	size_t at = rnd(b->len + 1);
	char c;

	switch (rnd(6)) {
	case 0: /* replace a byte with anything */
		if (b->len > 0)
			b->p[rnd(b->len)] = (char)rnd(256);
		break;
	case 1: /* replace a byte with a special */
		if (b->len > 0)
			b->p[rnd(b->len)] = specials[rnd(sizeof(specials) - 1)];
		break;
	case 2: /* insert a special */
		c = specials[rnd(sizeof(specials) - 1)];
		buf_insert(b, at, &c, 1);
		break;
	case 3: /* delete a byte */
		if (at < b->len) {
			memmove(b->p + at, b->p + at + 1, b->len - at - 1);
			b->len--;
		}
		break;
	case 4: { /* duplicate a short range somewhere */
		char tmp[24];
		size_t from = rnd(b->len + 1), n = rnd(sizeof(tmp));

		if (n > b->len - from)
			n = b->len - from;
		memcpy(tmp, b->p + from, n);
		buf_insert(b, at, tmp, n);
		break;
	}
	default: /* truncate */
		b->len = at;
		break;
	}
}

Test(http_guard, mutated_requests_never_crash_nor_depend_on_the_split, .timeout = 240)
{
	static const int allowed[] = { 400, 405, 413, 414, 417, 431, 501, 505 };
	struct http_guard_limits lim = random_limits;
	int iter;

	lim.max_body = 4096; /* so that mutated sizes also reach 413 */
	rng_state = 0x243f6a8885a308d3ULL;
	for (iter = 0; iter < 1500; iter++) {
		struct buf raw = { 0 }, canon = { 0 };
		struct expected_msg msgs[2];
		size_t n_msgs = 1 + rnd(2), i, n_pieces, n_mut = 1 + rnd(4), *pieces, *ones;
		struct outcome whole, o;
		char name[32];

		for (i = 0; i < n_msgs; i++)
			gen_request(&raw, &canon, &msgs[i]);
		for (i = 0; i < n_mut; i++)
			mutate(&raw);
		snprintf(name, sizeof(name), "mutant #%d", iter);

		feed(name, &lim, (const unsigned char *)raw.p, raw.len, &raw.len, 1, false, &whole);
		if (whole.status != 0) {
			bool ok = false;

			for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
				ok = ok || whole.status == allowed[i];
			cr_assert(ok, "%s: status %d", name, whole.status);
		}

		n_pieces = random_pieces(raw.len, &pieces);
		feed(name, &lim, (const unsigned char *)raw.p, raw.len, pieces, n_pieces,
		     iter % 2 == 0, &o);
		cr_assert_str_eq(o.events, whole.events, "%s: events depend on the split", name);
		cr_assert_eq(o.status, whole.status, "%s", name);
		cr_assert_str_eq(o.reason ? o.reason : "", whole.reason ? whole.reason : "", "%s",
		                 name);
		cr_assert(o.out_len == whole.out_len && memcmp(o.out, whole.out, o.out_len) == 0,
		          "%s: output depends on the split", name);
		outcome_free(&o);
		free(pieces);

		if (raw.len <= 4096) {
			ones = malloc((raw.len ? raw.len : 1) * sizeof(*ones));
			cr_assert_not_null(ones);
			for (i = 0; i < raw.len; i++)
				ones[i] = 1;
			feed(name, &lim, (const unsigned char *)raw.p, raw.len, ones, raw.len,
			     false, &o);
			cr_assert_str_eq(o.events, whole.events, "%s: byte by byte", name);
			cr_assert_eq(o.status, whole.status, "%s", name);
			cr_assert(o.out_len == whole.out_len &&
			                  memcmp(o.out, whole.out, o.out_len) == 0,
			          "%s: byte by byte output", name);
			outcome_free(&o);
			free(ones);
		}

		outcome_free(&whole);
		for (i = 0; i < n_msgs; i++) {
			free(msgs[i].head);
			free(msgs[i].body);
		}
		free(raw.p);
		free(canon.p);
	}
}

/* ---- a big body moves by chains ------------------------------------------------------------ */

static size_t n_released;

static void count_release(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	(void)arg;
	n_released++;
}

Test(http_guard, big_body_moves_chains_not_bytes, .timeout = 60)
{
	enum { PIECE = 16384, TOTAL = 30 * 1024 * 1024 };
	static unsigned char piece[PIECE];
	struct http_guard_limits lim = table_limits;
	struct http_guard g;
	struct evbuffer *in = evbuffer_new();
	size_t sent = 0, n_pieces = 0, i;
	unsigned char probe[4];

	for (i = 0; i < PIECE; i++)
		piece[i] = (unsigned char)(i * 7 + 3);
	lim.max_body = 64 * 1024 * 1024;
	cr_assert_eq(http_guard_init(&g, &lim), 0);
	evbuffer_add_printf(in, "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n",
	                    TOTAL);
	cr_assert_eq(http_guard_feed(&g, in), GUARD_MORE);
	cr_assert(g.in_body);

	n_released = 0;
	while (sent < TOTAL) {
		enum http_guard_event ev;

		/* a reference chain is released only when its bytes are drained or copied out:
		 * if the guard moves chains, none is released before we drain g->out */
		cr_assert_eq(evbuffer_add_reference(in, piece, PIECE, count_release, NULL), 0);
		sent += PIECE;
		n_pieces++;
		ev = http_guard_feed(&g, in);
		cr_assert_eq(ev, sent == TOTAL ? GUARD_MESSAGE : GUARD_MORE);
		cr_assert_eq(evbuffer_get_length(in), 0);
	}
	cr_assert_eq(n_released, 0, "body bytes were copied, not moved");
	cr_assert_eq(g.n_messages, 1);
	cr_assert_eq(evbuffer_get_length(g.cur), 0);
	cr_assert_gt(evbuffer_get_length(g.out), (size_t)TOTAL);

	/* the last body byte is the piece's last byte */
	{
		struct evbuffer_ptr ptr;
		size_t len = evbuffer_get_length(g.out);

		cr_assert_eq(evbuffer_ptr_set(g.out, &ptr, len - 1, EVBUFFER_PTR_SET), 0);
		cr_assert_eq(evbuffer_copyout_from(g.out, &ptr, probe, 1), 1);
		cr_assert_eq(probe[0], piece[PIECE - 1]);
	}
	evbuffer_drain(g.out, evbuffer_get_length(g.out));
	cr_assert_eq(n_released, n_pieces, "every piece went through by reference");

	http_guard_deinit(&g);
	evbuffer_free(in);
}
