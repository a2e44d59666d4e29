/*
 * daemon.c: builds the process's long-lived objects from a config, runs the event loop, and
 * handles signals through libevent (no logic in signal context):
 *   SIGHUP   reload: parse the file again (and the environment and -o overrides); on any error
 *            keep the running config and log every error; else apply what can change at run
 *            time (limits, timeouts, log level, admin key, client keys...) and name in a warning
 * the keys that cannot (listen addresses, upstream URLs, backend, redis.url...). Connections,
 *            queues and limiter state are untouched.
 *   SIGTERM, SIGINT  drain: stop accepting connections; queued requests that cannot be admitted
 *            before the drain's admission cutoff are answered 503 + Retry-After now (the
 *            limiter's LIMITER_SHUTDOWN); admitted ones finish and their answers are flushed;
 *            exit 0 when none is left or at server.drain_timeout; a second signal exits at once.
 * Readiness and state go to systemd with sd_notify (a datagram to $NOTIFY_SOCKET): READY=1 once
 * listening, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around each reload, STOPPING=1 on
 * drain, STATUS= lines (keys, queue depth, requests in flight) when they change, and WATCHDOG=1
 * every half of $WATCHDOG_USEC when the service manager asks for it.
 * Readiness for /readyz: the upstream hosts resolve (checked in the background, DNS_RECHECK_MS
 * apart, sooner while failing), and Redis is reachable when limits.backend = redis.
 *
 * Test hook: GHLPROXY_TEST_RESOLV_CONF names a resolv.conf to use instead of /etc/resolv.conf,
 * so a test can make a host fail to resolve without sending a query off this machine.
 */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "admin.h"
#include "build_config.h"
#include "clients.h"
#include "config.h"
#include "credentials.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "oauth.h"
#include "request.h"
#include "route.h"
#include "server.h"
#include "tls.h"
#include "upstream.h"
#include "util.h"

#define DRAIN_TICK_MS        50
#define DRAIN_RESERVE_MAX_MS 5000
#define STATUS_INTERVAL_MS   5000
#define DNS_RECHECK_MS       30000
#define DNS_RETRY_MS         2000

/* Whether an upstream host resolves, as /readyz reports it. */
enum dns_state { DNS_UNKNOWN = 0, DNS_OK, DNS_FAILED };

struct dns_probe {
	struct daemon *d;
	const char *what; /* "upstream.url" */
	char host[ROUTE_HOST_MAX + 1];
	bool is_ip;
	enum dns_state state;
	char why[160];
	struct evdns_getaddrinfo_request *req; /* in flight, NULL otherwise */
	bool in_flight;
};

struct daemon {
	struct event_base *base;
	struct evdns_base *dns;
	SSL_CTX *tls;
	struct config *cfg;
	struct config *old_cfg; /* kept one generation: objects may still point into it */
	const struct daemon_args *args;
	struct proxy px;
	struct server *srv;
	struct admin *admin;
	struct event *ev_hup, *ev_term, *ev_int, *ev_drain, *ev_watchdog, *ev_status, *ev_dns;
	struct dns_probe probes[2];
	int n_probes;
	int64_t drain_deadline_ms;
	uint64_t watchdog_usec;
	bool draining;
	char last_status[256];
};

int daemon_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	socklen_t len;
	int fd, rc = 0;

	if (!path || !*path)
		return 0;
	size_t plen = strlen(path);
	if (plen >= sizeof(sun.sun_path) || (path[0] != '/' && path[0] != '@'))
		return -EINVAL;
	memcpy(sun.sun_path, path, plen);
	if (path[0] == '@')
		sun.sun_path[0] = '\0'; /* abstract namespace */
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
	/* Never wait for the receiver: with its queue full (net.unix.max_dgram_qlen is 10 on
	 * Debian) a blocking sendto would stop the event loop; a status line is worth dropping. */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sun,
	           len) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* $WATCHDOG_USEC when it is meant for this process, else 0. */
static uint64_t watchdog_usec(void)
{
	const char *s = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	char *end;

	if (!s || !*s)
		return 0;
	if (pid && *pid) {
		/* Meant for another process (we were started by one that was watched). */
		long p = strtol(pid, &end, 10);
		if (*end || p != (long)getpid())
			return 0;
	}
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v == 0 || s[0] == '-')
		return 0;
	return (uint64_t)v;
}

/* ---- status for systemd ---- */

static void status_text(struct daemon *d, const char *state, char *buf, size_t len)
{
	struct limiter_stats ls;

	limiter_get_stats(d->px.limiter, &ls);
	snprintf(buf, len, "%s: %u keys, %u waiting, %u in flight", state, ls.n_keys, ls.n_waiting,
	         d->px.n_active);
}

/* Send `prefix` (may be "") plus a STATUS= line saying `state` (NULL: serving or draining). */
static void notify_status(struct daemon *d, const char *prefix, const char *state)
{
	char status[256], buf[1536];

	status_text(d,
	            state         ? state
	            : d->draining ? "draining"
	                          : "serving",
	            status, sizeof(status));
	util_strlcpy(d->last_status, status, sizeof(d->last_status));
	snprintf(buf, sizeof(buf), "%sSTATUS=%s\n", prefix, status);
	daemon_notify(buf);
}

static void on_status_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	char status[256];

	UNUSED(fd);
	UNUSED(what);
	status_text(d, d->draining ? "draining" : "serving", status, sizeof(status));
	if (strcmp(status, d->last_status) != 0)
		notify_status(d, "", NULL);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	/* Sent from the loop itself: a loop that hangs stops it, and systemd restarts us. */
	daemon_notify("WATCHDOG=1\n");
}

/* ---- upstream host resolution (readiness) ---- */

static void dns_schedule(struct daemon *d);

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
	struct dns_probe *p = arg;

	p->req = NULL;
	p->in_flight = false;
	if (res)
		evutil_freeaddrinfo(res);
	if (result == EVUTIL_EAI_CANCEL)
		return; /* shutting down */
	if (result == 0) {
		if (p->state != DNS_OK && p->state != DNS_UNKNOWN)
			log_info("%s: host %s resolves again", p->what, p->host);
		p->state = DNS_OK;
		p->why[0] = '\0';
	} else {
		if (p->state != DNS_FAILED)
			log_warning("%s: host %s does not resolve: %s", p->what, p->host,
			            evutil_gai_strerror(result));
		p->state = DNS_FAILED;
		snprintf(p->why, sizeof(p->why), "%s", evutil_gai_strerror(result));
	}
	dns_schedule(p->d);
}

static void dns_start(struct dns_probe *p)
{
	struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct evdns_getaddrinfo_request *req;

	if (p->is_ip || p->in_flight)
		return;
	p->in_flight = true;
	/* The callback may run before this returns (hosts file, cache): it clears in_flight. */
	req = evdns_getaddrinfo(p->d->dns, p->host, NULL, &hints, on_resolved, p);
	if (p->in_flight)
		p->req = req;
}

static void on_dns_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	UNUSED(fd);
	UNUSED(what);
	for (int i = 0; i < d->n_probes; i++)
		dns_start(&d->probes[i]);
}

/* Next round once every probe has answered: soon while one fails, else DNS_RECHECK_MS. */
static void dns_schedule(struct daemon *d)
{
	int64_t in_ms = DNS_RECHECK_MS;

	for (int i = 0; i < d->n_probes; i++) {
		if (d->probes[i].in_flight)
			return;
		if (d->probes[i].state != DNS_OK)
			in_ms = DNS_RETRY_MS;
	}
	struct timeval tv = { in_ms / 1000, (in_ms % 1000) * 1000 };
	if (d->ev_dns)
		event_add(d->ev_dns, &tv);
}

static void dns_add_probe(struct daemon *d, const struct upstream *up, const char *what)
{
	const struct route_url *u = upstream_url(up);

	for (int i = 0; i < d->n_probes; i++)
		if (strcmp(d->probes[i].host, u->host) == 0)
			return;
	struct dns_probe *p = &d->probes[d->n_probes++];
	*p = (struct dns_probe){ .d = d, .what = what, .is_ip = u->host_is_ip };
	util_strlcpy(p->host, u->host, sizeof(p->host));
	if (p->is_ip)
		p->state = DNS_OK;
}

static bool ready_upstream(void *arg, char *why, size_t why_len)
{
	struct daemon *d = arg;
	size_t used = 0;
	bool ok = true;

	for (int i = 0; i < d->n_probes; i++) {
		const struct dns_probe *p = &d->probes[i];
		int n = 0;

		if (p->state == DNS_OK)
			continue;
		if (p->state == DNS_UNKNOWN)
			n = snprintf(why + used, why_len - used, "%s%s: resolving host %s",
			             ok ? "" : "; ", p->what, p->host);
		else
			n = snprintf(why + used, why_len - used,
			             "%s%s: host %s does not resolve (%s)", ok ? "" : "; ", p->what,
			             p->host, p->why);
		ok = false;
		used = n < 0 ? used : MIN(why_len - 1, used + (size_t)n);
	}
	return ok;
}

static bool ready_redis(void *arg, char *why, size_t why_len)
{
	struct limiter *l = arg;

	if (limiter_redis_reachable_now(l))
		return true;
	snprintf(why, why_len, "redis unreachable (limits.on_redis_down applies)");
	return false;
}

static struct evdns_base *make_dns(struct event_base *base)
{
	const char *test_conf = getenv("GHLPROXY_TEST_RESOLV_CONF");
	struct evdns_base *dns;

	if (!test_conf || !*test_conf)
		return evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	log_warning("test hook: resolving with %s (GHLPROXY_TEST_RESOLV_CONF)", test_conf);
	dns = evdns_base_new(base, 0);
	if (dns && evdns_base_resolv_conf_parse(dns, DNS_OPTIONS_ALL, test_conf) != 0)
		log_warning("test hook: %s did not parse cleanly", test_conf);
	return dns;
}

/* ---- configuration ---- */

static void upstream_settings_from(struct upstream_settings *s, const struct config *cfg)
{
	s->connect_timeout_ms = cfg->upstream.connect_timeout_ms;
	s->timeout_ms = cfg->upstream.timeout_ms;
	s->max_connections = cfg->upstream.max_connections;
	s->idle_timeout_ms = cfg->upstream.idle_timeout_ms;
	s->max_header_size = cfg->upstream.max_header_size;
}

static struct upstream *make_upstream(struct daemon *d, const char *url, const char *what)
{
	struct route_url ru;
	struct upstream_settings s;
	char err[256];

	if (route_parse_url(url, &ru, err, sizeof(err)) < 0) {
		log_error("%s %s: %s", what, url, err);
		return NULL;
	}
	if (!ru.tls)
		log_warning("%s %s is plain http: requests and credentials cross the network "
		            "unencrypted (use only for local tests and benchmarks)",
		            what, url);
	upstream_settings_from(&s, d->cfg);
	return upstream_new(d->base, d->dns, d->tls, &ru, &s);
}

/*
 * Keys that config.c does not mark static but that only take effect when their objects are
 * built, at start: the upstreams (and their TLS context) and the Redis client.
 */
static const struct {
	const char *name;
	size_t off;
	bool is_str; /* else uint32_t */
} built_once[] = {
	{ "upstream.url", offsetof(struct config, upstream.url), true },
	{ "upstream.v1_url", offsetof(struct config, upstream.v1_url), true },
	{ "upstream.ca_file", offsetof(struct config, upstream.ca_file), true },
	{ "redis.password_file", offsetof(struct config, redis.password_file), true },
	{ "redis.key_prefix", offsetof(struct config, redis.key_prefix), true },
	{ "redis.connect_timeout", offsetof(struct config, redis.connect_timeout_ms), false },
	{ "redis.command_timeout", offsetof(struct config, redis.command_timeout_ms), false },
};

/* Names of the keys a reload cannot apply that differ, comma-separated. Returns how many. */
static int restart_only_changes(const struct config *a, const struct config *b, char *buf,
                                size_t len)
{
	int n = config_diff_static(a, b, buf, len);
	size_t used = strlen(buf);

	if (n < 0)
		return n;
	for (size_t i = 0; i < ARRAY_SIZE(built_once); i++) {
		const char *pa = (const char *)a + built_once[i].off;
		const char *pb = (const char *)b + built_once[i].off;
		bool same;

		if (built_once[i].is_str) {
			const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
			same = strcmp(sa ? sa : "", sb ? sb : "") == 0;
		} else {
			same = memcmp(pa, pb, sizeof(uint32_t)) == 0;
		}
		if (same)
			continue;
		/* The redis.* ones matter only with the Redis backend. */
		if (strncmp(built_once[i].name, "redis.", 6) == 0 &&
		    a->limits.backend != CONFIG_BACKEND_REDIS)
			continue;
		if (used < len) {
			int r = snprintf(buf + used, len - used, "%s%s", n ? ", " : "",
			                 built_once[i].name);
			used = r < 0 ? len : MIN(len, used + (size_t)r);
		}
		n++;
	}
	return n;
}

/* A client key snapshot goes live: its clients appear in /metrics at 0 before their first
 * request. */
static void set_clients(struct daemon *d, struct clients *c)
{
	clients_free(d->px.clients);
	d->px.clients = c;
	for (size_t i = 0; i < clients_count(c); i++)
		metrics_labelled_add(ML_CLIENT_REQUESTS, clients_name_at(c, i), 0);
}

/* [clients], [pit], [v1_keys] and, in inject mode with an app, the OAuth token keeper. */
static int start_credentials(struct daemon *d, const struct config *cfg)
{
	char err[512];
	struct clients *clients = clients_load(cfg, err, sizeof(err));

	if (!clients) {
		log_error("clients: %s", err);
		return -1;
	}
	set_clients(d, clients);
	d->px.creds = credentials_load(cfg, err, sizeof(err));
	if (!d->px.creds) {
		log_error("credentials: %s", err);
		return -1;
	}
	if (cfg->server.mode == CONFIG_MODE_INJECT && *cfg->oauth.client_id) {
		d->px.oauth = oauth_new(d->base, cfg, d->px.up_v2, err, sizeof(err));
		if (!d->px.oauth) {
			log_error("oauth: %s", err);
			return -1;
		}
	}
	if (cfg->server.mode == CONFIG_MODE_INJECT && !d->px.oauth &&
	    credentials_count(d->px.creds) == 0)
		log_warning(
		        "inject mode without oauth.client_id, [pit] or [v1_keys]: every request "
		        "will be answered 401");
	return 0;
}

static void apply_config(struct daemon *d, struct config *cfg)
{
	struct upstream_settings s;
	struct server_limits lim;

	log_setup((enum log_level)cfg->log.level, (enum log_format)cfg->log.format);
	upstream_settings_from(&s, cfg);
	upstream_set_settings(d->px.up_v2, &s);
	upstream_set_settings(d->px.up_v1, &s);
	server_limits_from_config(&lim, cfg);
	server_set_limits(d->srv, &lim);
	limiter_set_config(d->px.limiter, cfg);
	d->px.cfg = cfg;
}

static void refuse_reload(struct daemon *d, const char *why)
{
	log_error("reload refused: %s; keeping the running configuration", why);
	metrics_inc(M_RELOAD_FAILURES);
	notify_status(d, "READY=1\n", "reload refused (see the log), serving the previous config");
}

static void reload(struct daemon *d)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	struct timespec ts;
	char names[1024], buf[128];

	if (d->draining) {
		log_warning("SIGHUP while draining: ignored");
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu\n",
	         (unsigned long long)ts.tv_sec * 1000000ULL +
	                 (unsigned long long)ts.tv_nsec / 1000);
	daemon_notify(buf);
	log_info("SIGHUP: reloading %s",
	         d->args->config_path ? d->args->config_path : "(built-in defaults)");
	cfg = config_load(d->args->config_path, d->args->envp, d->args->overrides,
	                  d->args->n_overrides, &errs);
	if (!cfg) {
		for (size_t i = 0; i < errs.n; i++)
			log_error("reload refused: %s", errs.v[i]);
		config_errors_deinit(&errs);
		refuse_reload(d, "the configuration has errors");
		return;
	}
	config_errors_deinit(&errs);
	/* What can fail is tried first, so a refused reload changes nothing: the files are read
	 * before anything is swapped (admin_set_config points the admin listener at cfg). The
	 * listener may be off loopback because of the client keys: they cannot all go away under
	 * it (as with the admin key). */
	if (clients_count(d->px.clients) > 0 && cfg->clients.n == 0 && !cfg->server.allow_remote) {
		config_free(cfg);
		refuse_reload(d, "[clients]: a reload cannot remove every client key (restart "
		                 "instead, or set server.allow_remote = yes)");
		return;
	}
	struct clients *clients = clients_load(cfg, names, sizeof(names));
	if (!clients) {
		config_free(cfg);
		refuse_reload(d, names);
		return;
	}
	struct credentials *creds = credentials_load(cfg, names, sizeof(names));
	if (!creds) {
		clients_free(clients);
		config_free(cfg);
		refuse_reload(d, names);
		return;
	}
	int rc = admin_set_config(d->admin, cfg);
	if (rc < 0) {
		snprintf(names, sizeof(names), "admin.key_file %s: %s", cfg->admin.key_file,
		         rc == -EPERM ? "cannot be removed by a reload (restart instead)"
		                      : strerror(-rc));
		clients_free(clients);
		credentials_free(creds);
		config_free(cfg);
		refuse_reload(d, names);
		return;
	}
	if (d->px.oauth && oauth_reload(d->px.oauth, cfg, names, sizeof(names)) < 0) {
		admin_set_config(d->admin, d->cfg); /* it must not keep pointing into cfg */
		clients_free(clients);
		credentials_free(creds);
		config_free(cfg);
		refuse_reload(d, names);
		return;
	}
	if (!d->px.oauth && cfg->server.mode == CONFIG_MODE_INJECT && *cfg->oauth.client_id)
		log_warning("reload: OAuth (oauth.client_id in inject mode) starts with a restart");
	credentials_free(d->px.creds);
	d->px.creds = creds;
	set_clients(d, clients);
	if (restart_only_changes(d->cfg, cfg, names, sizeof(names)) > 0)
		log_warning("reload: these keys need a restart to change and keep their running "
		            "values: %s",
		            names);
	apply_config(d, cfg);
	config_free(d->old_cfg);
	d->old_cfg = d->cfg;
	d->cfg = cfg;
	metrics_inc(M_RELOADS);
	log_info("configuration reloaded");
	notify_status(d, "READY=1\n", NULL);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	UNUSED(sig);
	UNUSED(what);
	reload(arg);
}

/* ---- drain ---- */

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	UNUSED(fd);
	UNUSED(what);
	/* Answered is not yet written: wait until the kernel holds every answer's last byte.
	 * A token refresh HighLevel may have rotated is waited for too: its new pair is the only
	 * live one (oauth_free says so if it must be left). */
	uint32_t refreshes = oauth_unsettled(d->px.oauth);
	if (d->px.n_active == 0 && server_output_pending(d->srv) == 0 && refreshes == 0) {
		log_info("drained: exiting");
		event_base_loopbreak(d->base);
		return;
	}
	if (util_now_ms() >= d->drain_deadline_ms) {
		log_warning(
		        "drain timeout: %u requests still in flight are cut, %u token refreshes "
		        "or installs left",
		        d->px.n_active, refreshes);
		event_base_loopbreak(d->base);
		return;
	}
	struct timeval tv = { 0, DRAIN_TICK_MS * 1000 };
	event_add(d->ev_drain, &tv);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	uint32_t timeout_ms = d->cfg->server.drain_timeout_ms;

	UNUSED(what);
	if (d->draining) {
		log_warning("signal %d again: exiting at once (%u requests cut)", (int)sig,
		            d->px.n_active);
		event_base_loopbreak(d->base);
		return;
	}
	d->draining = true;
	d->px.draining = true;
	metrics_set(M_DRAINING, 1);
	server_stop_accepting(d->srv);
	server_close_idle(d->srv);
	oauth_drain(d->px.oauth);
	d->drain_deadline_ms = util_now_ms() + timeout_ms;
	/*
	 * Admission stops a little before the end, so the last admitted requests have time for
	 * their answers: a quarter of the drain, at most DRAIN_RESERVE_MAX_MS. Whatever waits for
	 * a slot after that is answered 503 + Retry-After now, not cut at exit.
	 */
	int64_t reserve_ms = MIN((int64_t)timeout_ms / 4, (int64_t)DRAIN_RESERVE_MAX_MS);
	limiter_drain(d->px.limiter, d->drain_deadline_ms - reserve_ms);
	notify_status(d, "STOPPING=1\n", NULL);
	log_info("signal %d: draining (up to %u ms, %u requests in flight)", (int)sig, timeout_ms,
	         d->px.n_active);
	on_drain_tick(-1, 0, d);
}

/* ---- the process ---- */

static struct event_base *make_base(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *base;

	if (!ec)
		return NULL;
	/* EV_CLOSED (epoll's EPOLLRDHUP) lets a waiting request notice its client hanging up. */
	event_config_require_features(ec, EV_FEATURE_EARLY_CLOSE);
	/* Key wake-ups are what admission precision rests on: timerfd, not epoll's ms rounding. */
	event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
	/* epoll_ctl once per fd and loop pass, not once per change: evhttp and the bufferevents
	 * turn reading and writing off and on several times per request (measured: 10 epoll_ctl
	 * calls per proxied request without it; bench/results/perf.txt). The proxy never dup()s a
	 * watched fd, the case the changelist gets wrong. */
	event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	if (!base)
		base = event_base_new();
	return base;
}

static void free_event(struct event *ev)
{
	if (ev)
		event_free(ev);
}

static int start_timers(struct daemon *d)
{
	struct timeval status_tv = { STATUS_INTERVAL_MS / 1000,
		                     (STATUS_INTERVAL_MS % 1000) * 1000 };

	d->ev_hup = evsignal_new(d->base, SIGHUP, on_hup, d);
	d->ev_term = evsignal_new(d->base, SIGTERM, on_term, d);
	d->ev_int = evsignal_new(d->base, SIGINT, on_term, d);
	d->ev_drain = evtimer_new(d->base, on_drain_tick, d);
	d->ev_dns = evtimer_new(d->base, on_dns_tick, d);
	d->ev_status = event_new(d->base, -1, EV_PERSIST, on_status_tick, d);
	if (!d->ev_hup || !d->ev_term || !d->ev_int || !d->ev_drain || !d->ev_dns || !d->ev_status)
		return -ENOMEM;
	event_add(d->ev_hup, NULL);
	event_add(d->ev_term, NULL);
	event_add(d->ev_int, NULL);
	if (getenv("NOTIFY_SOCKET"))
		event_add(d->ev_status, &status_tv);
	d->watchdog_usec = watchdog_usec();
	if (d->watchdog_usec) {
		uint64_t half_us = d->watchdog_usec / 2 ? d->watchdog_usec / 2 : 1;
		struct timeval tv = { (time_t)(half_us / 1000000),
			              (suseconds_t)(half_us % 1000000) };
		d->ev_watchdog = event_new(d->base, -1, EV_PERSIST, on_watchdog, d);
		if (!d->ev_watchdog)
			return -ENOMEM;
		event_add(d->ev_watchdog, &tv);
	}
	on_dns_tick(-1, 0, d);
	return 0;
}

int daemon_run(struct config *cfg, const struct daemon_args *args)
{
	struct daemon d = { .cfg = cfg, .args = args };
	struct server_limits lim;
	char err[512];
	int rc = 1;
	bool px_ready = false;

	/* libevent and hiredis write without MSG_NOSIGNAL. signal() fails only on a bad number. */
	(void)signal(SIGPIPE, SIG_IGN);
	log_setup((enum log_level)cfg->log.level, (enum log_format)cfg->log.format);

	d.base = make_base();
	if (!d.base) {
		log_error("cannot create the event loop");
		goto out;
	}
	d.dns = make_dns(d.base);
	if (!d.dns) {
		log_error("cannot set up DNS resolution");
		goto out;
	}
	d.tls = tls_client_ctx_new(cfg->upstream.ca_file, err, sizeof(err));
	if (!d.tls) {
		log_error("%s", err);
		goto out;
	}
	if (request_proxy_init(&d.px, d.base) < 0)
		goto out;
	px_ready = true;
	d.px.cfg = cfg;
	d.px.up_v2 = make_upstream(&d, cfg->upstream.url, "upstream.url");
	d.px.up_v1 = make_upstream(&d, cfg->upstream.v1_url, "upstream.v1_url");
	d.px.limiter = limiter_new(d.base, cfg, err, sizeof(err));
	if (!d.px.limiter)
		log_error("limits: %s", err);
	if (!d.px.up_v2 || !d.px.up_v1 || !d.px.limiter)
		goto out;
	if (start_credentials(&d, cfg) < 0)
		goto out;
	dns_add_probe(&d, d.px.up_v2, "upstream.url");
	dns_add_probe(&d, d.px.up_v1, "upstream.v1_url");

	server_limits_from_config(&lim, cfg);
	/* Off loopback needs a reason: allow_remote, or client keys every request must present. */
	d.srv = server_new(d.base, "proxy", cfg->server.listen, &lim, cfg,
	                   cfg->server.allow_remote || clients_count(d.px.clients) > 0,
	                   request_handle, &d.px, err, sizeof(err));
	if (!d.srv) {
		log_error("server.listen: %s", err);
		goto out;
	}

	d.admin = admin_new(d.base, cfg, &d.px, d.srv, err, sizeof(err));
	if (!d.admin && err[0]) {
		log_error("server.admin_listen: %s", err);
		goto out;
	}
	admin_add_ready_check(d.admin, "upstream", ready_upstream, &d);
	if (limiter_uses_redis(d.px.limiter))
		admin_add_ready_check(d.admin, "redis", ready_redis, d.px.limiter);
	if (d.px.oauth) {
		admin_add_route(d.admin, "/oauth/start", 0, oauth_admin_start, d.px.oauth);
		admin_add_route(d.admin, "/oauth/callback", ADMIN_ROUTE_PUBLIC,
		                oauth_admin_callback, d.px.oauth);
		admin_set_token_status_fn(d.admin, oauth_status_json, d.px.oauth);
		admin_add_ready_check(d.admin, "token_store", oauth_ready, d.px.oauth);
	}

	if (start_timers(&d) < 0) {
		log_error("out of memory");
		goto out;
	}

	log_fields(LOG_INFO, "listening",
	           (struct log_field[]){
	                   LOG_STR("version", GHLPROXY_VERSION),
	                   LOG_STR("listen", server_addresses(d.srv)),
	                   LOG_STR("admin", admin_addresses(d.admin)),
	                   LOG_STR("mode", cfg->server.mode == CONFIG_MODE_INJECT ? "inject"
	                                                                          : "passthrough"),
	                   LOG_STR("upstream", cfg->upstream.url),
	           },
	           5);
	char ready[1024];
	snprintf(ready, sizeof(ready),
	         "READY=1\nMAINPID=%ld\nX_GHLPROXY_LISTEN=%s\nX_GHLPROXY_ADMIN=%s\n",
	         (long)getpid(), server_addresses(d.srv), admin_addresses(d.admin));
	notify_status(&d, ready, NULL);

	event_base_dispatch(d.base);
	rc = 0;
out:
	/*
	 * A lookup still in flight is cancelled, but libevent frees it only in its callback, which
	 * the cancel merely schedules: one more pass of the loop (not waiting for anything) runs
	 * it. Without that pass every lookup in flight at exit leaked (found by ASan). The DNS
	 * timer goes first, so that the pass starts no new lookup. Installs still under way are
	 * answered before it, so that the pass writes their pages: their requests are admin
	 * connections, which admin_free frees.
	 */
	free_event(d.ev_dns);
	d.ev_dns = NULL;
	for (int i = 0; i < d.n_probes; i++)
		if (d.probes[i].req)
			evdns_getaddrinfo_cancel(d.probes[i].req);
	oauth_close_installs(d.px.oauth);
	if (d.base)
		event_base_loop(d.base, EVLOOP_NONBLOCK);
	admin_free(d.admin);
	/*
	 * Requests still alive (a drain cut short) let go of their connections first: freeing the
	 * server would otherwise tell each one its client is gone from inside evhttp's own free of
	 * that connection, and the request would free it a second time.
	 */
	if (px_ready)
		request_proxy_deinit(&d.px);
	if (d.srv)
		server_free(d.srv);
	oauth_free(d.px.oauth);
	credentials_free(d.px.creds);
	clients_free(d.px.clients);
	limiter_free(d.px.limiter);
	upstream_free(d.px.up_v2);
	upstream_free(d.px.up_v1);
	free_event(d.ev_hup);
	free_event(d.ev_term);
	free_event(d.ev_int);
	free_event(d.ev_drain);
	free_event(d.ev_dns);
	free_event(d.ev_status);
	free_event(d.ev_watchdog);
	if (d.tls)
		tls_client_ctx_free(d.tls);
	if (d.dns)
		evdns_base_free(d.dns, 1); /* 1: lookups still in flight are failed and freed */
	if (d.base)
		event_base_free(d.base);
	config_free(d.old_cfg);
	config_free(d.cfg);
	return rc;
}
