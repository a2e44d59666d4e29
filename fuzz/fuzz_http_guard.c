/*
 * fuzz_http_guard.c: libFuzzer target for the request framer (http_guard_feed).
 *
 * Input:
 *   byte 0      flags: bit 0 small limits read from the next 7 bytes (else the defaults of
 *               conf/ghlproxy.conf); bits 1-2 how pieces are cut (1 byte each, 1-8, 1-64 or
 *               1-512 bytes, from a generator seeded by byte 1)
 *   byte 1      seed of the piece generator
 *   the rest    the bytes a client sends on one connection
 * The same bytes are framed three ways: all at once; piece by piece with a feed after each
 * (as reads arrive); and as one input buffer of many chains (one per piece, so a feed sees
 * more extents than it peeks at once). All three must give the same events, the same output
 * and the same error (http_guard.c promises that the split never changes the outcome).
 * The output is then fed to a fresh guard, which must accept it unchanged: canonical messages
 * are a fixed point. Also: GUARD_MORE leaves no input behind, an error has a documented
 * status and a reason, and 500 (out of memory, internal state error) never happens here.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "fuzz.h"
#include "http_guard.h"

#define MAX_EVENTS 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
	uint8_t events[MAX_EVENTS]; /* GUARD_MESSAGE, GUARD_CONTINUE, GUARD_ERROR in order */
	size_t n_events;
	int status;
	const char *reason;
	uint32_t n_messages;
	unsigned char *out; /* everything released, copied */
	size_t out_len;
};

static void record(struct run *r, enum http_guard_event ev)
{
	if (r->n_events < MAX_EVENTS)
		r->events[r->n_events++] = (uint8_t)ev;
}

/* Feed until the guard wants more or fails; false once it has failed. */
static bool drive(struct http_guard *g, struct evbuffer *in, struct run *r)
{
	for (;;) {
		enum http_guard_event ev = http_guard_feed(g, in);

		if (ev == GUARD_MORE) {
			fuzz_check(evbuffer_get_length(in) == 0);
			return true;
		}
		record(r, ev);
		if (ev == GUARD_ERROR) {
			fuzz_check(g->reason != NULL && g->reason[0] != '\0');
			fuzz_check(g->status == 400 || g->status == 405 || g->status == 413 ||
			           g->status == 414 || g->status == 417 || g->status == 431 ||
			           g->status == 501 || g->status == 505);
			/* dead for good, and drains nothing */
			size_t left = evbuffer_get_length(in);

			fuzz_check(http_guard_feed(g, in) == GUARD_ERROR);
			fuzz_check(evbuffer_get_length(in) == left);
			return false;
		}
		fuzz_check(ev == GUARD_MESSAGE || ev == GUARD_CONTINUE);
	}
}

static void finish(struct http_guard *g, struct run *r)
{
	size_t n = evbuffer_get_length(g->out);

	r->status = g->status;
	r->reason = g->reason;
	r->n_messages = g->n_messages;
	r->out = fuzz_xmalloc(n);
	r->out_len = n;
	if (n > 0)
		fuzz_check(evbuffer_remove(g->out, r->out, n) == (int)n);
	http_guard_deinit(g);
}

/* Piece lengths: a small xorshift generator, so an input always cuts the same way. */
struct cutter {
	uint32_t state;
	uint32_t max;
};

static size_t next_piece(struct cutter *c)
{
	c->state ^= c->state << 13;
	c->state ^= c->state >> 17;
	c->state ^= c->state << 5;
	return 1 + c->state % c->max;
}

static void run_whole(const struct http_guard_limits *lim, const uint8_t *p, size_t n,
                      struct run *r)
{
	struct http_guard g;
	struct evbuffer *in = evbuffer_new();

	fuzz_check(in != NULL && http_guard_init(&g, lim) == 0);
	fuzz_check(evbuffer_add(in, p, n) == 0);
	drive(&g, in, r);
	finish(&g, r);
	evbuffer_free(in);
}

static void run_pieces(const struct http_guard_limits *lim, const uint8_t *p, size_t n,
                       struct cutter c, struct run *r)
{
	struct http_guard g;
	struct evbuffer *in = evbuffer_new();
	size_t off = 0;

	fuzz_check(in != NULL && http_guard_init(&g, lim) == 0);
	while (off < n) {
		size_t k = next_piece(&c);

		if (k > n - off)
			k = n - off;
		fuzz_check(evbuffer_add(in, p + off, k) == 0);
		off += k;
		if (!drive(&g, in, r))
			break;
	}
	finish(&g, r);
	evbuffer_free(in);
}

static void run_chains(const struct http_guard_limits *lim, const uint8_t *p, size_t n,
                       struct cutter c, struct run *r)
{
	struct http_guard g;
	struct evbuffer *in = evbuffer_new();
	size_t off = 0;

	fuzz_check(in != NULL && http_guard_init(&g, lim) == 0);
	while (off < n) {
		size_t k = next_piece(&c);

		if (k > n - off)
			k = n - off;
		/* a reference is always a chain of its own */
		fuzz_check(evbuffer_add_reference(in, p + off, k, NULL, NULL) == 0);
		off += k;
	}
	drive(&g, in, r);
	finish(&g, r);
	evbuffer_free(in);
}

static void check_same(const struct run *a, const struct run *b)
{
	fuzz_check(a->n_events == b->n_events);
	fuzz_check(memcmp(a->events, b->events, a->n_events) == 0);
	fuzz_check(a->status == b->status);
	fuzz_check((a->reason == NULL) == (b->reason == NULL));
	fuzz_check(a->reason == NULL || strcmp(a->reason, b->reason) == 0);
	fuzz_check(a->n_messages == b->n_messages);
	fuzz_check(a->out_len == b->out_len);
	fuzz_check(a->out_len == 0 || memcmp(a->out, b->out, a->out_len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t piece_max[4] = { 1, 8, 64, 512 };
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in);
	struct http_guard_limits lim = {
		.max_request_line = 16 * 1024,
		.max_header_bytes = 64 * 1024,
		.max_headers = 100,
		.max_body = 128 * 1024 * 1024,
	};
	struct cutter cut;
	struct run whole = { 0 }, pieces = { 0 }, chains = { 0 }, again = { 0 };

	cut.state = 0x9e3779b9u ^ fuzz_u8(&in);
	cut.max = piece_max[(flags >> 1) & 3];
	if (flags & 1) {
		lim.max_request_line = fuzz_u64(&in, 2) % 1024;
		lim.max_header_bytes = fuzz_u64(&in, 2) % 4096;
		lim.max_headers = fuzz_u8(&in) % 32;
		lim.max_body = fuzz_u64(&in, 2);
	}

	run_whole(&lim, in.p, in.n, &whole);
	run_pieces(&lim, in.p, in.n, cut, &pieces);
	check_same(&whole, &pieces);
	run_chains(&lim, in.p, in.n, cut, &chains);
	check_same(&whole, &chains);

	/* canonical output is a fixed point */
	run_whole(&lim, whole.out, whole.out_len, &again);
	fuzz_check(again.status == 0);
	fuzz_check(again.n_messages == whole.n_messages);
	fuzz_check(again.out_len == whole.out_len);
	fuzz_check(whole.out_len == 0 || memcmp(again.out, whole.out, whole.out_len) == 0);

	free(whole.out);
	free(pieces.out);
	free(chains.out);
	free(again.out);
	return 0;
}
