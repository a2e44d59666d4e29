/*
 * bench/perf/evhttp_floor.c: the cheapest reverse proxy libevent's evhttp allows, as a reference
 * target of the performance benchmark (bench/perf/perf.py, cases (a) and (p)).
 *
 * DESIGN.md builds ghlproxy on evhttp, for both the client-facing server and the upstream
 * client. This program is that library and nothing else: an evhttp server whose every request
 * goes out on a pooled keep-alive evhttp client connection, with the end-to-end headers copied
 * both ways and Host set, and the answer sent back whole. No classification, limiter, queue,
 * credentials, request checks or metrics. What it costs per request is what evhttp costs, so the
 * benchmark can tell the library's share of ghlproxy's cost from the proxy's own.
 *
 * It is a measuring tool, not a product: no TLS, no timeouts beyond evhttp's, no limits beyond
 * the pool's, no drain. It keeps evhttp's defaults where the product sets its own.
 *
 * Usage: evhttp_floor --listen HOST:PORT --upstream HOST:PORT
 * Prints "ready" on standard output once listening. SIGTERM or SIGINT: exit 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define POOL_MAX 256 /* idle upstream connections kept; more are freed when done */

struct floor {
	struct event_base *base;
	char *up_host;
	int up_port;
	char up_hostport[300];
	struct evhttp_connection *idle[POOL_MAX];
	int n_idle;
};

struct exchange {
	struct floor *f;
	struct evhttp_request *client;
	struct evhttp_connection *conn;
};

/* The hop-by-hop headers (RFC 9110 7.6.1), and the ones evhttp writes itself. */
static int hop_by_hop(const char *name)
{
	static const char *const names[] = { "Connection", "Keep-Alive", "Proxy-Connection",
		                             "TE",         "Trailer",    "Transfer-Encoding",
		                             "Upgrade",    "Host",       "Content-Length" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(name, names[i]) == 0)
			return 1;
	return 0;
}

static void copy_headers(struct evkeyvalq *to, struct evkeyvalq *from)
{
	struct evkeyval *h;

	TAILQ_FOREACH(h, from, next)
	{
		if (!hop_by_hop(h->key))
			evhttp_add_header(to, h->key, h->value);
	}
}

static void conn_put(struct floor *f, struct evhttp_connection *conn)
{
	if (f->n_idle < POOL_MAX)
		f->idle[f->n_idle++] = conn;
	else
		evhttp_connection_free(conn);
}

static struct evhttp_connection *conn_get(struct floor *f)
{
	if (f->n_idle > 0)
		return f->idle[--f->n_idle];
	return evhttp_connection_base_new(f->base, NULL, f->up_host, (unsigned short)f->up_port);
}

static void on_upstream_done(struct evhttp_request *up, void *arg)
{
	struct exchange *x = arg;
	int code = up ? evhttp_request_get_response_code(up) : 0;

	if (code == 0) {
		evhttp_send_error(x->client, 502, "upstream failed");
	} else {
		copy_headers(evhttp_request_get_output_headers(x->client),
		             evhttp_request_get_input_headers(up));
		evhttp_send_reply(x->client, code, evhttp_request_get_response_code_line(up),
		                  evhttp_request_get_input_buffer(up));
	}
	/* evhttp frees the upstream request when this returns; the connection is reusable. */
	conn_put(x->f, x->conn);
	free(x);
}

static void on_request(struct evhttp_request *client, void *arg)
{
	struct floor *f = arg;
	struct exchange *x = calloc(1, sizeof(*x));
	struct evhttp_request *up;

	if (!x || !(x->conn = conn_get(f))) {
		free(x);
		evhttp_send_error(client, 503, "no memory");
		return;
	}
	x->f = f;
	x->client = client;
	up = evhttp_request_new(on_upstream_done, x);
	if (!up) {
		conn_put(f, x->conn);
		free(x);
		evhttp_send_error(client, 503, "no memory");
		return;
	}
	copy_headers(evhttp_request_get_output_headers(up),
	             evhttp_request_get_input_headers(client));
	evhttp_add_header(evhttp_request_get_output_headers(up), "Host", f->up_hostport);
	evbuffer_add_buffer(evhttp_request_get_output_buffer(up),
	                    evhttp_request_get_input_buffer(client));
	if (evhttp_make_request(x->conn, up, evhttp_request_get_command(client),
	                        evhttp_request_get_uri(client)) != 0) {
		/* evhttp freed the request; the connection is still ours. */
		conn_put(f, x->conn);
		free(x);
		evhttp_send_error(client, 502, "upstream failed");
	}
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	event_base_loopexit(arg, NULL);
}

static int split_hostport(const char *s, char **host, int *port)
{
	const char *colon = strrchr(s, ':');

	if (!colon || colon == s)
		return -1;
	*port = atoi(colon + 1);
	*host = strndup(s, (size_t)(colon - s));
	return *host && *port > 0 && *port < 65536 ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct floor f = { 0 };
	const char *listen = NULL, *upstream = NULL;
	char *lhost = NULL;
	int lport = 0;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--listen") == 0)
			listen = argv[i + 1];
		else if (strcmp(argv[i], "--upstream") == 0)
			upstream = argv[i + 1];
	}
	if (!listen || !upstream || split_hostport(listen, &lhost, &lport) < 0 ||
	    split_hostport(upstream, &f.up_host, &f.up_port) < 0) {
		fprintf(stderr, "usage: evhttp_floor --listen HOST:PORT --upstream HOST:PORT\n");
		return 2;
	}
	snprintf(f.up_hostport, sizeof(f.up_hostport), "%s:%d", f.up_host, f.up_port);
	signal(SIGPIPE, SIG_IGN);
	f.base = event_base_new();
	struct evhttp *http = f.base ? evhttp_new(f.base) : NULL;
	if (!http) {
		fprintf(stderr, "evhttp_floor: cannot set up libevent\n");
		return 1;
	}
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                         EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_default_content_type(http, NULL);
	evhttp_set_gencb(http, on_request, &f);
	if (evhttp_bind_socket(http, lhost, (unsigned short)lport) != 0) {
		fprintf(stderr, "evhttp_floor: cannot listen on %s\n", listen);
		return 1;
	}
	struct event *sigterm = evsignal_new(f.base, SIGTERM, on_signal, f.base);
	struct event *sigint = evsignal_new(f.base, SIGINT, on_signal, f.base);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	printf("ready\n");
	fflush(stdout);
	event_base_dispatch(f.base);
	/* Requests still in flight at exit own their connection; the rest are idle. */
	while (f.n_idle > 0)
		evhttp_connection_free(f.idle[--f.n_idle]);
	evhttp_free(http);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(f.base);
	free(lhost);
	free(f.up_host);
	return 0;
}
