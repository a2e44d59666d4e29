/*
 * http_guard.h: a strict HTTP/1.1 request framer that stands in front of evhttp, pure.
 *
 * Why: libevent's evhttp, on its defaults, accepts two different Content-Lengths (it uses the
 * first), Transfer-Encoding values other than chunked (it then reads by Content-Length), NUL
 * bytes and bare CRs in values, obs-folded lines, whitespace before the colon, chunk extensions
 * it then rejects with the wrong status, trailers that it merges into the headers, and header
 * blocks of any count. In a proxy each of those is a request-smuggling or confusion vector. The
 * guard reads the raw bytes of a connection first, refuses anything ambiguous with the right
 * status, and hands evhttp only whole, canonical messages:
 *   - the request line and header block verbatim (after validation),
 *   - a Content-Length body verbatim,
 *   - a chunked body re-framed canonically ("<hex>\r\n<data>\r\n" ... "0\r\n\r\n": chunk
 *     extensions and trailer fields dropped).
 * A message is released only once complete, so evhttp never waits on a partial message and an
 * error is always found at a message boundary (the caller can then answer it in order).
 *
 * Data enters with http_guard_feed() from a connection's input evbuffer and leaves in
 * g->out, one or more complete messages; the caller moves g->out to evhttp.
 */
#ifndef GHLPROXY_HTTP_GUARD_H
#define GHLPROXY_HTTP_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

struct http_guard_limits {
	uint64_t max_request_line; /* bytes of the request line, CRLF excluded -> 414 */
	uint64_t max_header_bytes; /* request line + header block, CRLFs included -> 431 */
	uint32_t max_headers;      /* header fields (and, separately, trailer fields) -> 431 */
	uint64_t max_body;         /* decoded body bytes -> 413 */
};

enum http_guard_event {
	GUARD_MORE = 0, /* consumed all input; waiting for more bytes */
	GUARD_MESSAGE,  /* one more complete message was appended to g->out */
	GUARD_CONTINUE, /* header block complete and says Expect: 100-continue; the body
	                 * has not started. The caller may send "100 Continue", then feeds on. */
	GUARD_ERROR,    /* g->status / g->reason say why; the guard refuses all further input */
};

/* Per-message parser state (private to http_guard.c); zeroed when a message starts. */
struct http_guard_msg {
	uint64_t line_len;       /* request-line bytes so far, CRLF excluded */
	uint64_t block_bytes;    /* header block, later trailer section, bytes so far */
	uint64_t content_length; /* the value every Content-Length element must repeat */
	uint64_t cl_value;       /* the Content-Length element being read */
	uint64_t body_left;      /* Content-Length or current chunk bytes still to move */
	uint64_t body_total;     /* chunk-data bytes announced so far (<= lim.max_body) */
	uint64_t chunk_size;     /* the chunk-size being read */
	uint32_t n_fields;       /* header field lines, later trailer field lines */
	uint32_t n_hosts;
	uint32_t n_codings; /* transfer codings over every Transfer-Encoding field */
	uint32_t tok_len;   /* bytes of the current method/target/version/name/element */
	uint16_t ext_len;   /* chunk-line bytes after the chunk-size, CRLF excluded */
	uint8_t method;     /* enum guard_method */
	uint8_t kind;       /* enum field_kind: the field whose value is being read */
	uint8_t vstate;     /* sub-state of that value's parser */
	uint8_t chunk_digits;
	bool is_http10;
	bool has_cl;
	bool has_te;
	bool te_last_chunked;  /* the last coding seen so far is "chunked" */
	bool te_chunked_early; /* "chunked" appeared before the last coding */
	bool elem_match;       /* the element being read still matches its keyword */
	bool expect_continue;
	bool expect_other;
	bool in_trailer;
	char tok[18]; /* the first bytes of that token, lower-cased where case does not count */
};

/* Opaque parser state lives in the struct so it can be embedded without allocation. */
struct http_guard {
	struct http_guard_limits lim;
	struct evbuffer *out; /* complete canonical messages, for evhttp */
	struct evbuffer *cur; /* the message being assembled (not yet complete) */
	int status;           /* on GUARD_ERROR: 400, 405, 413, 414, 417, 431, 501, 505
	                       * (500 if an evbuffer could not grow) */
	const char *reason;   /* on GUARD_ERROR: a short static English message */
	bool in_message;      /* a message has started (its first byte was read) */
	bool in_body;         /* its header block is complete and a body is being read */
	uint32_t n_messages;  /* complete messages released so far */

	/* private: parser state, read and written only by http_guard.c */
	uint8_t state;   /* enum guard_state in http_guard.c */
	uint8_t pending; /* an event found by a scan, returned once its bytes are flushed */
	uint8_t n_empty; /* empty lines skipped since the last message */
	struct http_guard_msg m;
};

int http_guard_init(struct http_guard *g, const struct http_guard_limits *lim);
void http_guard_deinit(struct http_guard *g);

/*
 * Consume bytes from `in` (draining what was consumed) until an event. Call again while it
 * returns GUARD_MESSAGE or GUARD_CONTINUE and `in` still holds bytes. After GUARD_ERROR every
 * call returns GUARD_ERROR and drains nothing.
 */
enum http_guard_event http_guard_feed(struct http_guard *g, struct evbuffer *in);

#endif
