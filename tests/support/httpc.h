/*
 * httpc.h: a small blocking HTTP/1.1 client for tests, over raw sockets, so tests control every
 * byte: split writes at chosen offsets, pipelining, half-closes, hanging up mid-request.
 */
#ifndef GHLPROXY_TEST_HTTPC_H
#define GHLPROXY_TEST_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct httpc_header {
	char *name;
	char *value;
};

struct httpc_response {
	int status;
	char *reason;
	int minor_version; /* HTTP/1.<minor> */
	struct httpc_header *headers;
	size_t n_headers;
	unsigned char *body; /* NUL-terminated for convenience; body_len excludes the NUL */
	size_t body_len;
	bool chunked; /* body came chunked */
	bool closed;  /* the server closed the connection after this response */
};

/*
 * Connect to "host:port", "[v6]:port" or "unix:/path" (within 10 s). Returns fd or -1.
 * TCP_NODELAY set; the fd is non-blocking and close-on-exec (this module polls).
 */
int httpc_connect(const char *addr);

/* Write all bytes within 30 s (no SIGPIPE: a peer that hung up is -1); 0 or -1. */
int httpc_send_all(int fd, const void *buf, size_t len);

/*
 * Write `len` bytes in pieces cut at the given offsets (ascending, each < len), pausing
 * pause_us microseconds between pieces so they arrive as separate TCP segments.
 */
int httpc_send_split(int fd, const void *buf, size_t len, const size_t *cuts, size_t n_cuts,
                     unsigned pause_us);

/*
 * Read one response within timeout_ms. `head_request` tells that it answers a HEAD (no body).
 * Interim 1xx responses (but 101) are skipped. Bodies: none (HEAD, 1xx, 204, 304), chunked
 * (extensions ignored, trailers read and dropped), Content-Length, or until close.
 * Bytes after the response stay buffered in the per-fd reader for the next call.
 * `closed` is set when EOF was seen while reading it, when it said "Connection: close" (or was
 * HTTP/1.0 without keep-alive), or when the peer's EOF was already waiting right after it.
 * Returns 0, or -1 on timeout, parse error or EOF before a complete response. On -1 only
 * status (0, or the status if the head was read), minor_version, closed and body_len
 * (body bytes received) are kept and nothing else is allocated; httpc_response_free is safe on
 * either outcome.
 */
int httpc_read_response(int fd, struct httpc_response *resp, bool head_request, int timeout_ms);

void httpc_response_free(struct httpc_response *resp);

/* Case-insensitive header lookup (first match), or NULL. */
const char *httpc_header(const struct httpc_response *resp, const char *name);
/* Number of headers with that name. */
size_t httpc_header_count(const struct httpc_response *resp, const char *name);

/* Forget the per-fd read buffer and close. */
void httpc_close(int fd);

/*
 * One request on a new connection: method, target ("/path?query"), extra header lines
 * ("Name: value\r\n"... may be NULL), body (may be NULL). Adds Host unless `headers` has one,
 * and Content-Length when there is a body (or the method is POST, PUT or PATCH) unless `headers`
 * has Content-Length or Transfer-Encoding. Returns 0 or -1 (as httpc_read_response).
 */
int httpc_request(const char *addr, const char *method, const char *target, const char *headers,
                  const void *body, size_t body_len, struct httpc_response *resp, int timeout_ms);

/* True if the peer closed the connection within timeout_ms (reads and discards data). */
bool httpc_wait_closed(int fd, int timeout_ms);

#endif
