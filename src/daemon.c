/*
 * daemon.c: builds the process's long-lived objects from a config, runs the event loop, and
 * handles signals through libevent (no logic in signal context):
 *   SIGHUP   reload: parse the file again; on any error keep the old config and log why;
 *            else apply what can change at run time and name what cannot;
 *   SIGTERM, SIGINT  drain: stop accepting, let in-flight requests finish within
 *            server.drain_timeout, exit 0; a second signal exits at once.
 * Readiness and state go to systemd with sd_notify (a datagram to $NOTIFY_SOCKET).
 */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "admin.h"
#include "build_config.h"
#include "config.h"
#include "limiter.h"
#include "log.h"
#include "request.h"
#include "route.h"
#include "server.h"
#include "tls.h"
#include "upstream.h"
#include "util.h"

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
	struct event *ev_hup, *ev_term, *ev_int, *ev_drain;
	int64_t drain_deadline_ms;
	bool draining;
	int exit_code;
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
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, len) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

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

static void notify_status(struct daemon *d, const char *prefix)
{
	char buf[1536];

	snprintf(buf, sizeof(buf), "%sSTATUS=%s; %u requests in flight, %u waiting\n", prefix,
	         d->draining ? "draining" : "serving", d->px.n_active,
	         limiter_n_waiting(d->px.limiter));
	daemon_notify(buf);
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
	admin_set_config(d->admin, cfg);
	d->px.cfg = cfg;
}

static void reload(struct daemon *d)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	char names[512];

	daemon_notify("RELOADING=1\n");
	cfg = config_load(d->args->config_path, d->args->envp, d->args->overrides,
	                  d->args->n_overrides, &errs);
	if (!cfg) {
		for (size_t i = 0; i < errs.n; i++)
			log_error("reload refused: %s", errs.v[i]);
		log_error("reload refused: keeping the running configuration");
		config_errors_deinit(&errs);
		notify_status(d, "READY=1\n");
		return;
	}
	config_errors_deinit(&errs);
	if (config_diff_static(d->cfg, cfg, names, sizeof(names)) > 0)
		log_warning("reload: these keys need a restart to change and keep their old "
		            "values: %s",
		            names);
	apply_config(d, cfg);
	config_free(d->old_cfg);
	d->old_cfg = d->cfg;
	d->cfg = cfg;
	log_info("configuration reloaded");
	notify_status(d, "READY=1\n");
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	reload(arg);
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	if (d->px.n_active == 0) {
		log_info("drained: exiting");
		event_base_loopbreak(d->base);
		return;
	}
	if (util_now_ms() >= d->drain_deadline_ms) {
		log_warning("drain timeout: %u requests still in flight are cut", d->px.n_active);
		event_base_loopbreak(d->base);
		return;
	}
	struct timeval tv = { 0, 50 * 1000 };
	event_add(d->ev_drain, &tv);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;

	if (d->draining) {
		log_warning("second signal: exiting at once");
		event_base_loopbreak(d->base);
		return;
	}
	d->draining = true;
	d->px.draining = true;
	daemon_notify("STOPPING=1\n");
	log_info("signal %d: draining (up to %u ms)", (int)sig, d->cfg->server.drain_timeout_ms);
	server_stop_accepting(d->srv);
	d->drain_deadline_ms = util_now_ms() + d->cfg->server.drain_timeout_ms;
	on_drain_tick(-1, 0, d);
}

static bool ready_redis(void *arg, char *why, size_t why_len)
{
	struct limiter *l = arg;

	if (limiter_redis_reachable_now(l))
		return true;
	snprintf(why, why_len, "redis unreachable (limits.on_redis_down applies)");
	return false;
}

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
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	if (!base)
		base = event_base_new();
	return base;
}

int daemon_run(struct config *cfg, const struct daemon_args *args)
{
	struct daemon d = { .cfg = cfg, .args = args };
	struct server_limits lim;
	char err[512];
	int rc = 1;
	bool px_ready = false;

	signal(SIGPIPE, SIG_IGN); /* libevent and hiredis write without MSG_NOSIGNAL */
	log_setup((enum log_level)cfg->log.level, (enum log_format)cfg->log.format);

	d.base = make_base();
	if (!d.base) {
		log_error("cannot create the event loop");
		goto out;
	}
	d.dns = evdns_base_new(d.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
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

	server_limits_from_config(&lim, cfg);
	d.srv = server_new(d.base, "proxy", cfg->server.listen, &lim, cfg, cfg->server.allow_remote,
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
	if (limiter_uses_redis(d.px.limiter))
		admin_add_ready_check(d.admin, "redis", ready_redis, d.px.limiter);

	d.ev_hup = evsignal_new(d.base, SIGHUP, on_hup, &d);
	d.ev_term = evsignal_new(d.base, SIGTERM, on_term, &d);
	d.ev_int = evsignal_new(d.base, SIGINT, on_term, &d);
	d.ev_drain = evtimer_new(d.base, on_drain_tick, &d);
	if (!d.ev_hup || !d.ev_term || !d.ev_int || !d.ev_drain)
		goto out;
	event_add(d.ev_hup, NULL);
	event_add(d.ev_term, NULL);
	event_add(d.ev_int, NULL);

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
	notify_status(&d, ready);

	event_base_dispatch(d.base);
	rc = 0;
out:
	admin_free(d.admin);
	if (d.srv)
		server_free(d.srv);
	if (px_ready)
		request_proxy_deinit(&d.px);
	limiter_free(d.px.limiter);
	upstream_free(d.px.up_v2);
	upstream_free(d.px.up_v1);
	if (d.ev_hup)
		event_free(d.ev_hup);
	if (d.ev_term)
		event_free(d.ev_term);
	if (d.ev_int)
		event_free(d.ev_int);
	if (d.ev_drain)
		event_free(d.ev_drain);
	if (d.tls)
		tls_client_ctx_free(d.tls);
	if (d.dns)
		evdns_base_free(d.dns, 0);
	if (d.base)
		event_base_free(d.base);
	config_free(d.old_cfg);
	config_free(d.cfg);
	return rc;
}
