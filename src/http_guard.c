/*
 * http_guard.c: the strict HTTP/1.1 request framer in front of evhttp (RFC 9112), pure.
 *
 * Owns the byte-level parse of one client connection's requests. Bytes enter through
 * http_guard_feed() from the connection's input evbuffer and leave in three ways:
 *   - copied to g->cur: the request line and header block (verbatim, once validated) and the
 *     Content-Length body (moved chain by chain with evbuffer_remove_buffer, never per byte);
 *   - dropped: empty lines between messages, chunk-size lines, the CRLF after chunk data and the
 *     trailer section, replaced in g->cur by canonical "<hex>\r\n", "\r\n" and "0\r\n\r\n";
 *   - g->cur moves to g->out (a chain relink) only when the message is complete.
 *
 * How a feed runs: peek a few extents of `in`, run the byte state machine over contiguous
 * memory (tight loops over runs of token/value bytes, no call per byte), then drain or move
 * what was scanned in one evbuffer call. A scan stops where the fate of the bytes changes
 * (dropped -> copied at a request line, copied -> moved at a body, ...) or where an event is due,
 * so every byte is consumed exactly once and one byte per feed behaves like one feed of all.
 * Every limit is checked at the byte that crosses it, so the outcome never depends on how the
 * input was split.
 *
 * What evhttp (libevent 2.1.12) does with what we let through decides some rules beyond
 * RFC 9112, since the header block reaches it verbatim:
 *   - it strips only SP, not HTAB, before a value, so "Transfer-Encoding:<HTAB>chunked" would not
 *     be chunked to it: a leading HTAB in the fields we interpret (Host, Content-Length,
 *     Transfer-Encoding, Expect) is refused;
 *   - it reads the first Transfer-Encoding field only and needs it to be exactly "chunked": we
 *     accept only one coding in all, so only one field can carry it;
 *   - it never reads a body on HEAD, so HEAD with a body would smuggle the body as the next
 *     request: refused with 400;
 *   - it ignores Expect in HTTP/1.0 (RFC 9110 10.1.1 says so too), and so do we;
 *   - it reads the first Content-Length field with strtoll, so it would refuse a list of
 *     equal values ("5, 5", which RFC 9112 6.3 lets a recipient accept) with its own HTML 400:
 *     we refuse every list ourselves, as 6.3 also allows, so the client gets our JSON error.
 *     Separate fields with equal values stay accepted (evhttp reads the first, the same).
 */
#include "http_guard.h"

#include <errno.h>
#include <string.h>

#include <event2/buffer.h>

/* At most this many empty lines (CRLF) before a request line (RFC 9112 2.2 robustness). */
#define GUARD_MAX_EMPTY_LINES 8
/* Chunk-line bytes after the chunk-size: BWS and extensions, which we drop. */
#define GUARD_MAX_CHUNK_EXT 1024
/* A chunk-size of more hex digits than this is refused (2^64 - 1 fits). */
#define GUARD_MAX_CHUNK_DIGITS 16
/* Extents peeked per scan; more are picked up by the next round. */
#define GUARD_PEEK_VECS 8
/* evbuffer_remove_buffer() returns int: move bodies in pieces below INT_MAX. */
#define GUARD_MOVE_MAX ((size_t)1 << 30)

enum guard_state {
	ST_IDLE, /* between messages: empty lines or the first byte of a request line */
	ST_IDLE_LF,
	/* request line and header block (or trailer section when m.in_trailer) */
	ST_METHOD,
	ST_TARGET,
	ST_VERSION,
	ST_RL_LF,
	ST_FIELD_START,
	ST_FIELD_NAME,
	ST_FIELD_VALUE,
	ST_FIELD_LF,
	ST_BLOCK_LF, /* the LF of the empty line that ends the block */
	/* Content-Length body, moved */
	ST_BODY_CL,
	/* chunk lines and the CRLF after chunk data, dropped */
	ST_CHUNK_SIZE0,
	ST_CHUNK_SIZE,
	ST_CHUNK_BWS, /* BWS after the size: only ';' may follow */
	ST_EXT_PRE,   /* after ';' */
	ST_EXT_NAME,
	ST_EXT_NAME_WS, /* BWS after a name: '=' or ';' or CR */
	ST_EXT_VAL_PRE, /* after '=' */
	ST_EXT_TOKEN,
	ST_EXT_QS,   /* inside a quoted-string */
	ST_EXT_QP,   /* after a backslash in it */
	ST_EXT_POST, /* BWS after a value */
	ST_CHUNK_LF,
	ST_CHUNK_DATA, /* chunk data, moved */
	ST_DATA_CR,
	ST_DATA_LF,
	ST_DEAD,
};

/* How the bytes a state scans are disposed of; a scan never crosses a change. */
enum guard_group {
	GRP_IDLE,    /* dropped */
	GRP_HEAD,    /* copied to cur */
	GRP_TRAILER, /* dropped */
	GRP_CHUNK,   /* dropped */
	GRP_MOVE,    /* moved to cur without scanning */
	GRP_DEAD,
};

enum guard_pending {
	PEND_NONE,
	PEND_MESSAGE,
	PEND_CONTINUE,
};

enum guard_method {
	M_OTHER,
	M_GET,
	M_HEAD,
	M_POST,
	M_PUT,
	M_PATCH,
	M_DELETE,
	M_OPTIONS,
};

enum field_kind {
	FK_OTHER,
	FK_HOST,
	FK_CONTENT_LENGTH,
	FK_TRANSFER_ENCODING,
	FK_EXPECT,
};

/* Sub-states of the Content-Length, Transfer-Encoding and Expect value parsers. */
enum value_state {
	VS_LEAD,  /* before the first element: SP allowed, HTAB refused (see head comment) */
	VS_OWS,   /* after a comma */
	VS_ELEM,  /* inside an element */
	VS_TRAIL, /* OWS after an element */
	VS_OTHER, /* Expect: something else than 100-continue */
};

/* Character classes, one bit each in ctab[]. */
#define CT_TCHAR  0x01 /* token character (RFC 9110 5.6.2) */
#define CT_VALUE  0x02 /* field-content byte: VCHAR, SP, HTAB, obs-text */
#define CT_HEX    0x04
#define CT_TARGET 0x08 /* request-target byte: VCHAR except '#' */
#define CT_QDTEXT 0x10 /* quoted-string byte without escape: HTAB SP VCHAR-{'"','\'} obs-text */
#define CT_DIGIT  0x20

/* Generated from the definitions above (RFC 9110 5.5, 5.6.2, 5.6.4; RFC 9112 3.2). */
/* clang-format off */
static const uint8_t ctab[256] = {
	/* 0x00 */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	/* 0x08 */ 0x00, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	/* 0x10 */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	/* 0x18 */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	/* 0x20 */ 0x12, 0x1b, 0x0a, 0x13, 0x1b, 0x1b, 0x1b, 0x1b,
	/* 0x28 */ 0x1a, 0x1a, 0x1b, 0x1b, 0x1a, 0x1b, 0x1b, 0x1a,
	/* 0x30 */ 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f,
	/* 0x38 */ 0x3f, 0x3f, 0x1a, 0x1a, 0x1a, 0x1a, 0x1a, 0x1a,
	/* 0x40 */ 0x1a, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1b,
	/* 0x48 */ 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b,
	/* 0x50 */ 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b,
	/* 0x58 */ 0x1b, 0x1b, 0x1b, 0x1a, 0x0a, 0x1a, 0x1b, 0x1b,
	/* 0x60 */ 0x1b, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1b,
	/* 0x68 */ 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b,
	/* 0x70 */ 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b, 0x1b,
	/* 0x78 */ 0x1b, 0x1b, 0x1b, 0x1a, 0x1b, 0x1a, 0x1b, 0x00,
	/* 0x80 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0x88 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0x90 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0x98 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xa0 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xa8 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xb0 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xb8 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xc0 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xc8 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xd0 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xd8 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xe0 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xe8 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xf0 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
	/* 0xf8 */ 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
};
/* clang-format on */

static inline uint8_t lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + ('a' - 'A')) : c;
}

static inline uint8_t hex_value(uint8_t c)
{
	if (c <= '9')
		return (uint8_t)(c - '0');
	return (uint8_t)(lower(c) - 'a' + 10);
}

static void fail(struct http_guard *g, int status, const char *reason)
{
	g->state = ST_DEAD;
	g->status = status;
	g->reason = reason;
}

static enum guard_group group_of(uint8_t state, bool in_trailer)
{
	if (state <= ST_IDLE_LF)
		return GRP_IDLE;
	if (state <= ST_BLOCK_LF)
		return in_trailer ? GRP_TRAILER : GRP_HEAD;
	if (state == ST_BODY_CL || state == ST_CHUNK_DATA)
		return GRP_MOVE;
	if (state == ST_DEAD)
		return GRP_DEAD;
	return GRP_CHUNK;
}

int http_guard_init(struct http_guard *g, const struct http_guard_limits *lim)
{
	if (g == NULL || lim == NULL)
		return -EINVAL;
	memset(g, 0, sizeof(*g));
	g->lim = *lim;
	g->out = evbuffer_new();
	g->cur = evbuffer_new();
	if (g->out == NULL || g->cur == NULL) {
		http_guard_deinit(g);
		return -ENOMEM;
	}
	g->state = ST_IDLE;
	return 0;
}

void http_guard_deinit(struct http_guard *g)
{
	if (g == NULL)
		return;
	if (g->out != NULL)
		evbuffer_free(g->out);
	if (g->cur != NULL)
		evbuffer_free(g->cur);
	g->out = NULL;
	g->cur = NULL;
	g->state = ST_DEAD;
}

/* ---- request line ---------------------------------------------------------------------- */

static void end_method(struct http_guard *g)
{
	static const struct {
		const char *name;
		uint8_t len;
		uint8_t method;
	} known[] = {
		{ "GET", 3, M_GET },         { "HEAD", 4, M_HEAD },   { "POST", 4, M_POST },
		{ "PUT", 3, M_PUT },         { "PATCH", 5, M_PATCH }, { "DELETE", 6, M_DELETE },
		{ "OPTIONS", 7, M_OPTIONS },
	};
	struct http_guard_msg *m = &g->m;
	size_t i;

	/* methods are case-sensitive (RFC 9110 9.1): "get" is an unknown method */
	for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (m->tok_len == known[i].len &&
		    memcmp(m->tok, known[i].name, known[i].len) == 0) {
			m->method = known[i].method;
			return;
		}
	}
	if ((m->tok_len == 7 && memcmp(m->tok, "CONNECT", 7) == 0) ||
	    (m->tok_len == 5 && memcmp(m->tok, "TRACE", 5) == 0)) {
		fail(g, 405, "method not allowed");
		return;
	}
	fail(g, 501, "unknown method");
}

/* Called at the SP after the target: which of the forms we accept is it? */
static void end_target(struct http_guard *g)
{
	const struct http_guard_msg *m = &g->m;

	if (m->tok[0] == '/')
		return;
	if (m->tok[0] == '*' && m->tok_len == 1) {
		if (m->method != M_OPTIONS)
			fail(g, 400, "asterisk-form target without OPTIONS");
		return;
	}
	/* absolute-form; m->tok is lower-cased, and the caller checks the authority */
	if ((m->tok_len > 7 && memcmp(m->tok, "http://", 7) == 0) ||
	    (m->tok_len > 8 && memcmp(m->tok, "https://", 8) == 0))
		return;
	fail(g, 400, "invalid request target");
}

static void end_version(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;
	const char *v = m->tok;

	if (m->tok_len != 8 || memcmp(v, "HTTP/", 5) != 0 || !(ctab[(uint8_t)v[5]] & CT_DIGIT) ||
	    v[6] != '.' || !(ctab[(uint8_t)v[7]] & CT_DIGIT)) {
		fail(g, 400, "malformed HTTP version");
		return;
	}
	if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) {
		fail(g, 505, "HTTP version not supported");
		return;
	}
	m->is_http10 = v[7] == '0';
}

/* ---- field values we interpret ------------------------------------------------------------ */

static void cl_end_element(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;

	if (m->has_cl && m->cl_value != m->content_length) {
		fail(g, 400, "conflicting Content-Length values");
		return;
	}
	m->has_cl = true;
	m->content_length = m->cl_value;
}

/* Content-Length = 1*DIGIT below 2^63, one per field; separate fields must agree. A list
 * ("5, 5", RFC 9112 6.3 item 5) is refused: see the head comment. */
static void cl_byte(struct http_guard *g, uint8_t c)
{
	struct http_guard_msg *m = &g->m;

	if (ctab[c] & CT_DIGIT) {
		unsigned d = c - '0';

		if (m->vstate == VS_TRAIL) {
			fail(g, 400, "invalid Content-Length");
			return;
		}
		if (m->vstate != VS_ELEM) {
			m->vstate = VS_ELEM;
			m->cl_value = 0;
		}
		if (m->cl_value > ((uint64_t)INT64_MAX - d) / 10) {
			fail(g, 400, "Content-Length too large");
			return;
		}
		m->cl_value = m->cl_value * 10 + d;
	} else if (c == ' ' || c == '\t') {
		if (m->vstate == VS_LEAD && c == '\t') {
			fail(g, 400, "tab before Content-Length value");
		} else if (m->vstate == VS_ELEM) {
			m->vstate = VS_TRAIL;
			cl_end_element(g);
		}
	} else if (c == ',') {
		fail(g, 400, "Content-Length with a list of values");
	} else {
		fail(g, 400, "invalid Content-Length");
	}
}

static void te_end_element(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;
	bool is_chunked = m->elem_match && m->tok_len == 7;

	if (m->te_last_chunked)
		m->te_chunked_early = true;
	m->te_last_chunked = is_chunked;
	if (m->n_codings < UINT32_MAX)
		m->n_codings++;
}

/*
 * Transfer-Encoding = 1#token, no parameters and no empty elements: the only value we accept
 * is one "chunked", and anything looser would be read differently by someone down the line.
 */
static void te_byte(struct http_guard *g, uint8_t c)
{
	static const char chunked[] = "chunked";
	struct http_guard_msg *m = &g->m;

	if (ctab[c] & CT_TCHAR) {
		if (m->vstate == VS_TRAIL) {
			fail(g, 400, "invalid Transfer-Encoding");
			return;
		}
		if (m->vstate != VS_ELEM) {
			m->vstate = VS_ELEM;
			m->tok_len = 0;
			m->elem_match = true;
		}
		if (m->tok_len >= 7 || lower(c) != (uint8_t)chunked[m->tok_len])
			m->elem_match = false;
		if (m->tok_len < UINT32_MAX)
			m->tok_len++;
	} else if (c == ' ' || c == '\t') {
		if (m->vstate == VS_LEAD && c == '\t') {
			fail(g, 400, "tab before Transfer-Encoding value");
		} else if (m->vstate == VS_ELEM) {
			m->vstate = VS_TRAIL;
			te_end_element(g);
		}
	} else if (c == ',' && (m->vstate == VS_ELEM || m->vstate == VS_TRAIL)) {
		if (m->vstate == VS_ELEM)
			te_end_element(g);
		m->vstate = VS_OWS;
	} else if (c == ',') {
		fail(g, 400, "empty Transfer-Encoding element");
	} else {
		fail(g, 400, "invalid Transfer-Encoding");
	}
}

/* Expect: we understand exactly "100-continue" (case-insensitive), anything else is 417. */
static void expect_byte(struct http_guard *g, uint8_t c)
{
	static const char want[] = "100-continue";
	struct http_guard_msg *m = &g->m;

	switch (m->vstate) {
	case VS_LEAD:
		if (c == ' ')
			return;
		if (c == '\t') {
			fail(g, 400, "tab before Expect value");
			return;
		}
		m->vstate = VS_ELEM;
		m->tok_len = 0;
		/* fall through */
	case VS_ELEM:
		if (m->tok_len < sizeof(want) - 1 && lower(c) == (uint8_t)want[m->tok_len])
			m->tok_len++;
		else if ((c == ' ' || c == '\t') && m->tok_len == sizeof(want) - 1)
			m->vstate = VS_TRAIL;
		else
			m->vstate = VS_OTHER;
		return;
	case VS_TRAIL:
		if (c != ' ' && c != '\t')
			m->vstate = VS_OTHER;
		return;
	default:
		return;
	}
}

static inline void value_byte(struct http_guard *g, uint8_t c)
{
	switch (g->m.kind) {
	case FK_CONTENT_LENGTH:
		cl_byte(g, c);
		break;
	case FK_TRANSFER_ENCODING:
		te_byte(g, c);
		break;
	case FK_EXPECT:
		expect_byte(g, c);
		break;
	case FK_HOST:
		/* the caller validates the value; only evhttp's view of its start matters here */
		if (g->m.vstate == VS_LEAD && c == '\t')
			fail(g, 400, "tab before Host value");
		else if (c != ' ')
			g->m.vstate = VS_ELEM;
		break;
	default:
		break;
	}
}

/* At the colon: which field is it? m->tok holds the lower-cased name if it fits. */
static void end_field_name(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;

	m->kind = FK_OTHER;
	m->vstate = VS_LEAD;
	if (m->in_trailer)
		return; /* trailer fields are validated and dropped, never interpreted */
	if (m->tok_len == 4 && memcmp(m->tok, "host", 4) == 0) {
		m->kind = FK_HOST;
		if (++m->n_hosts > 1)
			fail(g, 400, "more than one Host field");
	} else if (m->tok_len == 14 && memcmp(m->tok, "content-length", 14) == 0) {
		m->kind = FK_CONTENT_LENGTH;
	} else if (m->tok_len == 17 && memcmp(m->tok, "transfer-encoding", 17) == 0) {
		m->kind = FK_TRANSFER_ENCODING;
		m->has_te = true;
	} else if (m->tok_len == 6 && memcmp(m->tok, "expect", 6) == 0) {
		m->kind = FK_EXPECT;
	}
}

/* At the LF of a field line. */
static void end_field_value(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;

	switch (m->kind) {
	case FK_CONTENT_LENGTH:
		if (m->vstate == VS_ELEM)
			cl_end_element(g);
		else if (m->vstate != VS_TRAIL)
			fail(g, 400, "empty Content-Length element");
		break;
	case FK_TRANSFER_ENCODING:
		if (m->vstate == VS_ELEM)
			te_end_element(g);
		else if (m->vstate != VS_TRAIL)
			fail(g, 400, "empty Transfer-Encoding element");
		break;
	case FK_EXPECT:
		if ((m->vstate == VS_ELEM && m->tok_len == 12) || m->vstate == VS_TRAIL)
			m->expect_continue = true;
		else
			m->expect_other = true;
		break;
	default:
		break;
	}
}

/* ---- end of the header block: framing decisions (RFC 9112 6.1-6.3) ----------------------- */

static void end_head(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;
	bool has_body;

	if (!m->is_http10 && m->n_hosts == 0) {
		fail(g, 400, "missing Host");
		return;
	}
	if (m->has_te) {
		if (m->is_http10) {
			fail(g, 400, "Transfer-Encoding in HTTP/1.0");
		} else if (m->has_cl) {
			fail(g, 400, "Content-Length and Transfer-Encoding together");
		} else if (!m->te_last_chunked) {
			if (m->n_codings == 1)
				fail(g, 501, "unsupported transfer coding");
			else
				fail(g, 400, "chunked is not the final transfer coding");
		} else if (m->te_chunked_early) {
			fail(g, 400, "chunked applied more than once");
		} else if (m->n_codings > 1) {
			fail(g, 501, "transfer codings other than chunked");
		}
		if (g->state == ST_DEAD)
			return;
	}
	if (!m->has_te && m->content_length > g->lim.max_body) {
		fail(g, 413, "Content-Length over the body limit");
		return;
	}
	has_body = m->has_te || m->content_length > 0;
	if (has_body && m->method == M_HEAD) {
		fail(g, 400, "body in a HEAD request");
		return;
	}
	/* RFC 9110 10.1.1: an expectation in an HTTP/1.0 request is ignored (evhttp does too) */
	if (!m->is_http10 && m->expect_other) {
		fail(g, 417, "unsupported expectation");
		return;
	}
	if (!has_body) {
		g->pending = PEND_MESSAGE;
		return;
	}
	g->in_body = true;
	if (m->has_te) {
		g->state = ST_CHUNK_SIZE0;
	} else {
		g->state = ST_BODY_CL;
		m->body_left = m->content_length;
	}
	if (!m->is_http10 && m->expect_continue)
		g->pending = PEND_CONTINUE;
}

static void end_trailer(struct http_guard *g)
{
	if (evbuffer_add(g->cur, "0\r\n\r\n", 5) != 0) {
		fail(g, 500, "out of memory");
		return;
	}
	g->pending = PEND_MESSAGE;
}

/* ---- scanners: each returns the bytes it consumed from p[0..n) ---------------------------- */

static size_t scan_idle(struct http_guard *g, const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		uint8_t c = p[i];

		if (g->state == ST_IDLE_LF) {
			if (c != '\n') {
				fail(g, 400, "bare CR before request line");
				return i;
			}
			g->state = ST_IDLE;
		} else if (c == '\r') {
			if (++g->n_empty > GUARD_MAX_EMPTY_LINES) {
				fail(g, 400, "too many empty lines before request line");
				return i;
			}
			g->state = ST_IDLE_LF;
		} else if (c == '\n') {
			fail(g, 400, "bare LF before request line");
			return i;
		} else {
			/* the first byte of a message: leave it for the head scan, which copies */
			memset(&g->m, 0, sizeof(g->m));
			g->in_message = true;
			g->state = ST_METHOD;
			return i;
		}
	}
	return n;
}

/* Counts one more request-line byte; false (and 414) if that crosses the limit. */
static inline bool count_line_byte(struct http_guard *g)
{
	if (g->m.line_len >= g->lim.max_request_line) {
		fail(g, 414, "request line too long");
		return false;
	}
	g->m.line_len++;
	return true;
}

static inline void tok_push(struct http_guard_msg *m, uint8_t c)
{
	if (m->tok_len < sizeof(m->tok))
		m->tok[m->tok_len] = (char)c;
	if (m->tok_len < UINT32_MAX)
		m->tok_len++;
}

/*
 * Request line, header fields and (with m.in_trailer) trailer fields. The block limit is
 * applied by never looking past it: the byte after the last allowed one fails the next call.
 * Returns early only when the block ends or on error.
 */
static size_t scan_head(struct http_guard *g, const uint8_t *p, size_t n)
{
	struct http_guard_msg *m = &g->m;
	const uint8_t *const start = p;
	const uint8_t *end;
	uint64_t room = g->lim.max_header_bytes - m->block_bytes;

	if (room == 0) {
		fail(g, 431,
		     m->in_trailer ? "trailer section too large" : "header block too large");
		return 0;
	}
	end = p + (n < room ? n : room);

	while (p < end && g->state != ST_DEAD) {
		uint8_t c = *p;

		switch (g->state) {
		case ST_METHOD:
			p++;
			if (!count_line_byte(g))
				break;
			if (ctab[c] & CT_TCHAR) {
				tok_push(m, c); /* case kept: methods are case-sensitive */
			} else if (c == ' ' && m->tok_len > 0) {
				end_method(g);
				m->tok_len = 0;
				if (g->state != ST_DEAD)
					g->state = ST_TARGET;
			} else {
				fail(g, 400, "invalid method");
			}
			break;
		case ST_TARGET: {
			/* the run of target bytes, bounded by the request-line limit */
			uint64_t line_room = g->lim.max_request_line - m->line_len;
			const uint8_t *q = p;
			const uint8_t *q_end =
			        (uint64_t)(end - p) < line_room ? end : p + line_room;

			while (q < q_end && (ctab[*q] & CT_TARGET)) {
				tok_push(m, lower(*q)); /* lower-cased for the scheme check */
				q++;
			}
			m->line_len += (uint64_t)(q - p);
			p = q;
			if (p == end)
				break;
			c = *p++;
			if (c != '\r' && !count_line_byte(g))
				break;
			if (c == ' ' && m->tok_len > 0) {
				end_target(g);
				m->tok_len = 0;
				if (g->state != ST_DEAD)
					g->state = ST_VERSION;
			} else if (ctab[c] & CT_TARGET) {
				/* unreachable: the run above stops only at the line limit */
				fail(g, 414, "request line too long");
			} else if (c == '#') {
				fail(g, 400, "fragment in request target");
			} else if (c == '\r' || c == '\n') {
				fail(g, 400, "request line without HTTP version");
			} else {
				fail(g, 400, "invalid request target");
			}
			break;
		}
		case ST_VERSION:
			p++;
			if (c == '\r') {
				g->state = ST_RL_LF;
				break;
			}
			if (!count_line_byte(g))
				break;
			if (c == '\n')
				fail(g, 400, "bare LF in request line");
			else if (m->tok_len < 8 && c > ' ' && c < 0x7f)
				tok_push(m, c); /* case kept: "HTTP" is case-sensitive */
			else
				fail(g, 400, "malformed HTTP version");
			break;
		case ST_RL_LF:
			p++;
			if (c != '\n') {
				fail(g, 400, "bare CR in request line");
				break;
			}
			end_version(g);
			g->state = g->state == ST_DEAD ? ST_DEAD : ST_FIELD_START;
			break;
		case ST_FIELD_START:
			if (ctab[c] & CT_TCHAR) {
				if (m->n_fields >= g->lim.max_headers) {
					fail(g, 431,
					     m->in_trailer ? "too many trailer fields"
					                   : "too many header fields");
					break;
				}
				m->n_fields++;
				m->tok_len = 0;
				g->state = ST_FIELD_NAME; /* whose loop takes this byte */
				break;
			}
			p++;
			if (c == '\r')
				g->state = ST_BLOCK_LF;
			else if (c == '\n')
				fail(g, 400, "bare LF in header");
			else if (c == ' ' || c == '\t')
				fail(g, 400, "obs-fold or whitespace at start of field line");
			else if (c == ':')
				fail(g, 400, "empty field name");
			else
				fail(g, 400, "invalid field name");
			break;
		case ST_FIELD_NAME:
			while (p < end && (ctab[*p] & CT_TCHAR)) {
				tok_push(m, lower(*p));
				p++;
			}
			if (p == end)
				break;
			c = *p++;
			if (c == ':') {
				end_field_name(g);
				if (g->state != ST_DEAD)
					g->state = ST_FIELD_VALUE;
			} else if (c == ' ' || c == '\t') {
				fail(g, 400, "whitespace before colon");
			} else if (c == '\n') {
				fail(g, 400, "bare LF in header");
			} else if (c == '\r') {
				fail(g, 400, "field line without colon");
			} else {
				fail(g, 400, "invalid field name");
			}
			break;
		case ST_FIELD_VALUE:
			if (m->kind == FK_OTHER) {
				while (p < end && (ctab[*p] & CT_VALUE))
					p++;
			} else {
				while (p < end && (ctab[*p] & CT_VALUE) && g->state != ST_DEAD)
					value_byte(g, *p++);
			}
			if (p == end || g->state == ST_DEAD)
				break;
			c = *p++;
			if (c == '\r')
				g->state = ST_FIELD_LF;
			else if (c == '\n')
				fail(g, 400, "bare LF in header");
			else if (c == 0)
				fail(g, 400, "NUL in field value");
			else
				fail(g, 400, "control character in field value");
			break;
		case ST_FIELD_LF:
			p++;
			if (c != '\n') {
				fail(g, 400, "bare CR in header");
				break;
			}
			end_field_value(g);
			if (g->state != ST_DEAD)
				g->state = ST_FIELD_START;
			break;
		case ST_BLOCK_LF:
			p++;
			if (c != '\n') {
				fail(g, 400, "bare CR in header");
				break;
			}
			/* The block is over: what follows is moved, dropped, or another message, so
			 * the scan ends here. end_head() picks the next state, else complete()
			 * does. */
			g->state = ST_IDLE;
			if (m->in_trailer)
				end_trailer(g);
			else
				end_head(g);
			m->block_bytes += (uint64_t)(p - start);
			return (size_t)(p - start);
		default:
			fail(g, 500, "internal state error");
			break;
		}
	}
	m->block_bytes += (uint64_t)(p - start);
	return (size_t)(p - start);
}

/* Appends "<hex>\r\n" for a chunk of `size` bytes (size > 0). */
static int add_chunk_line(struct evbuffer *buf, uint64_t size)
{
	static const char digits[] = "0123456789abcdef";
	char line[GUARD_MAX_CHUNK_DIGITS + 2];
	size_t i = sizeof(line);

	line[--i] = '\n';
	line[--i] = '\r';
	do {
		line[--i] = digits[size & 0xf];
		size >>= 4;
	} while (size != 0);
	return evbuffer_add(buf, line + i, sizeof(line) - i);
}

/* At the LF of a chunk line: start the chunk data, or the trailer section after "0". */
static void end_chunk_line(struct http_guard *g)
{
	struct http_guard_msg *m = &g->m;

	if (m->chunk_size == 0) {
		m->in_trailer = true;
		m->block_bytes = 0;
		m->n_fields = 0;
		g->state = ST_FIELD_START;
		return;
	}
	/* body_total <= max_body always holds, so the subtraction cannot wrap */
	if (m->chunk_size > g->lim.max_body - m->body_total) {
		fail(g, 413, "chunked body over the body limit");
		return;
	}
	m->body_total += m->chunk_size;
	m->body_left = m->chunk_size;
	if (add_chunk_line(g->cur, m->chunk_size) != 0) {
		fail(g, 500, "out of memory");
		return;
	}
	g->state = ST_CHUNK_DATA;
}

/*
 * chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF (RFC 9112 7.1); this scans the lines,
 * the data is moved by the driver. Extensions are checked loosely and dropped.
 */
static size_t scan_chunk(struct http_guard *g, const uint8_t *p, size_t n)
{
	struct http_guard_msg *m = &g->m;
	size_t i;

	for (i = 0; i < n; i++) {
		uint8_t c = p[i];
		uint8_t st = g->state;

		if (st >= ST_CHUNK_BWS && st <= ST_EXT_POST && c != '\r' &&
		    ++m->ext_len > GUARD_MAX_CHUNK_EXT) {
			fail(g, 400, "chunk extension too long");
			return i;
		}
		switch (st) {
		case ST_CHUNK_SIZE0:
			if (!(ctab[c] & CT_HEX)) {
				fail(g, 400, "invalid chunk size");
				return i;
			}
			m->chunk_size = hex_value(c);
			m->chunk_digits = 1;
			m->ext_len = 0;
			g->state = ST_CHUNK_SIZE;
			break;
		case ST_CHUNK_SIZE:
			if (ctab[c] & CT_HEX) {
				if (m->chunk_digits >= GUARD_MAX_CHUNK_DIGITS) {
					fail(g, 400, "chunk size too long");
					return i;
				}
				m->chunk_size = (m->chunk_size << 4) | hex_value(c);
				m->chunk_digits++;
			} else if (c == ';') {
				m->ext_len = 1;
				g->state = ST_EXT_PRE;
			} else if (c == ' ' || c == '\t') {
				m->ext_len = 1;
				g->state = ST_CHUNK_BWS;
			} else if (c == '\r') {
				g->state = ST_CHUNK_LF;
			} else if (c == '\n') {
				fail(g, 400, "bare LF in chunk line");
				return i;
			} else {
				fail(g, 400, "invalid chunk size");
				return i;
			}
			break;
		case ST_CHUNK_BWS:
			if (c == ';') {
				g->state = ST_EXT_PRE;
			} else if (c != ' ' && c != '\t') {
				fail(g, 400, "invalid chunk size");
				return i;
			}
			break;
		case ST_EXT_PRE:
			if (ctab[c] & CT_TCHAR) {
				g->state = ST_EXT_NAME;
			} else if (c != ' ' && c != '\t') {
				fail(g, 400, "invalid chunk extension");
				return i;
			}
			break;
		case ST_EXT_NAME:
		case ST_EXT_TOKEN:
		case ST_EXT_NAME_WS:
		case ST_EXT_POST:
			if ((st == ST_EXT_NAME || st == ST_EXT_TOKEN) && (ctab[c] & CT_TCHAR))
				break;
			if (c == ' ' || c == '\t') {
				if (st == ST_EXT_NAME)
					g->state = ST_EXT_NAME_WS;
				else if (st == ST_EXT_TOKEN)
					g->state = ST_EXT_POST;
			} else if (c == '=' && (st == ST_EXT_NAME || st == ST_EXT_NAME_WS)) {
				g->state = ST_EXT_VAL_PRE;
			} else if (c == ';') {
				g->state = ST_EXT_PRE;
			} else if (c == '\r') {
				g->state = ST_CHUNK_LF;
			} else if (c == '\n') {
				fail(g, 400, "bare LF in chunk line");
				return i;
			} else {
				fail(g, 400, "invalid chunk extension");
				return i;
			}
			break;
		case ST_EXT_VAL_PRE:
			if (c == '"') {
				g->state = ST_EXT_QS;
			} else if (ctab[c] & CT_TCHAR) {
				g->state = ST_EXT_TOKEN;
			} else if (c != ' ' && c != '\t') {
				fail(g, 400, "invalid chunk extension");
				return i;
			}
			break;
		case ST_EXT_QS:
			if (c == '"') {
				g->state = ST_EXT_POST;
			} else if (c == '\\') {
				g->state = ST_EXT_QP;
			} else if (!(ctab[c] & CT_QDTEXT)) {
				fail(g, 400, "invalid chunk extension");
				return i;
			}
			break;
		case ST_EXT_QP:
			if (!(ctab[c] & CT_VALUE)) {
				fail(g, 400, "invalid chunk extension");
				return i;
			}
			g->state = ST_EXT_QS;
			break;
		case ST_CHUNK_LF:
			if (c != '\n') {
				fail(g, 400, "bare CR in chunk line");
				return i;
			}
			end_chunk_line(g);
			return i + 1; /* data is moved, trailers scanned by scan_head */
		case ST_DATA_CR:
			if (c != '\r') {
				fail(g, 400, "chunk data not followed by CRLF");
				return i;
			}
			g->state = ST_DATA_LF;
			break;
		case ST_DATA_LF:
			if (c != '\n') {
				fail(g, 400, "chunk data not followed by CRLF");
				return i;
			}
			if (evbuffer_add(g->cur, "\r\n", 2) != 0) {
				fail(g, 500, "out of memory");
				return i;
			}
			g->state = ST_CHUNK_SIZE0;
			break;
		default:
			fail(g, 500, "internal state error");
			return i;
		}
	}
	return n;
}

/* ---- driver ------------------------------------------------------------------------------ */

static enum http_guard_event complete(struct http_guard *g)
{
	if (evbuffer_add_buffer(g->out, g->cur) != 0) {
		fail(g, 500, "out of memory");
		return GUARD_ERROR;
	}
	g->n_messages++;
	g->in_message = false;
	g->in_body = false;
	g->n_empty = 0;
	g->state = ST_IDLE;
	return GUARD_MESSAGE;
}

static enum http_guard_event dead(struct http_guard *g)
{
	/* a partial message is never released; free its memory now */
	if (g->cur != NULL)
		evbuffer_drain(g->cur, evbuffer_get_length(g->cur));
	return GUARD_ERROR;
}

/* Body bytes go from `in` to cur without being looked at. Returns true at the end of them. */
static bool move_body(struct http_guard *g, struct evbuffer *in, size_t avail)
{
	struct http_guard_msg *m = &g->m;
	size_t want = avail;
	int moved;

	if (want > m->body_left)
		want = (size_t)m->body_left;
	if (want > GUARD_MOVE_MAX)
		want = GUARD_MOVE_MAX;
	moved = evbuffer_remove_buffer(in, g->cur, want);
	if (moved < 0 || (size_t)moved != want) {
		fail(g, 500, "out of memory");
		return false;
	}
	m->body_left -= want;
	return m->body_left == 0;
}

enum http_guard_event http_guard_feed(struct http_guard *g, struct evbuffer *in)
{
	for (;;) {
		struct evbuffer_iovec vec[GUARD_PEEK_VECS];
		enum guard_group grp;
		size_t used = 0;
		int i, nv;

		if (g->state == ST_DEAD)
			return GUARD_ERROR;
		grp = group_of(g->state, g->m.in_trailer);
		if (grp == GRP_MOVE) {
			size_t avail = evbuffer_get_length(in);

			if (avail == 0)
				return GUARD_MORE;
			if (!move_body(g, in, avail)) {
				if (g->state == ST_DEAD)
					return dead(g);
				continue;
			}
			if (g->state == ST_BODY_CL)
				return complete(g);
			g->state = ST_DATA_CR;
			continue;
		}

		nv = evbuffer_peek(in, -1, NULL, vec, GUARD_PEEK_VECS);
		if (nv > GUARD_PEEK_VECS)
			nv = GUARD_PEEK_VECS;
		for (i = 0; i < nv; i++) {
			const uint8_t *base = vec[i].iov_base;
			size_t len = vec[i].iov_len, k;

			if (len == 0)
				continue;
			if (len > GUARD_MOVE_MAX)
				len = GUARD_MOVE_MAX;
			if (grp == GRP_IDLE)
				k = scan_idle(g, base, len);
			else if (grp == GRP_CHUNK)
				k = scan_chunk(g, base, len);
			else
				k = scan_head(g, base, len);
			used += k;
			/* stop where the bytes' fate changes; keep `used` below INT_MAX */
			if (k < len || g->state == ST_DEAD || g->pending != PEND_NONE ||
			    group_of(g->state, g->m.in_trailer) != grp || used >= GUARD_MOVE_MAX)
				break;
		}
		if (g->state == ST_DEAD)
			return dead(g);
		if (used == 0 && g->pending == PEND_NONE &&
		    group_of(g->state, g->m.in_trailer) == grp)
			return GUARD_MORE; /* nothing left to scan */

		if (grp == GRP_HEAD) {
			if (used != 0 && evbuffer_remove_buffer(in, g->cur, used) != (int)used) {
				fail(g, 500, "out of memory");
				return dead(g);
			}
		} else if (used != 0) {
			evbuffer_drain(in, used);
		}

		if (g->pending != PEND_NONE) {
			enum guard_pending p = g->pending;

			g->pending = PEND_NONE;
			if (p == PEND_CONTINUE)
				return GUARD_CONTINUE;
			return complete(g);
		}
	}
}
