/*
 * fixture.c: see fixture.h.
 */
#include "fixture.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "certs.h"
#include "httpc.h"

#define READY_MS 20000

static struct harness_proc *start_mock(struct fixture *f, const char *name,
                                       const struct fixture_opts *o, char *addr, size_t addr_len,
                                       char *ctl, size_t ctl_len)
{
	char *argv[64];
	int argc = 0;
	char cert[300], key[300], *extra = NULL;

	argv[argc++] = (char *)harness_mock_bin();
	argv[argc++] = "--listen";
	argv[argc++] = "127.0.0.1:0";
	if (!o->plain_http) {
		snprintf(cert, sizeof(cert), "%s/srv-cert.pem", f->dir);
		snprintf(key, sizeof(key), "%s/srv-key.pem", f->dir);
		argv[argc++] = "--tls-cert";
		argv[argc++] = cert;
		argv[argc++] = "--tls-key";
		argv[argc++] = key;
	}
	if (o->mock_args && *o->mock_args) {
		extra = strdup(o->mock_args);
		char *save = NULL;
		for (char *t = strtok_r(extra, " ", &save); t && argc < 62;
		     t = strtok_r(NULL, " ", &save))
			argv[argc++] = t;
	}
	argv[argc] = NULL;
	struct harness_proc *p = harness_spawn(f->dir, name, argv, NULL);
	cr_assert(p, "cannot spawn %s", name);
	cr_assert_eq(harness_wait_ready(p, READY_MS), 0, "%s did not become ready", name);
	char *listen = harness_notify_var(p, "X_MOCK_LISTEN");
	cr_assert(listen, "%s did not report its address", name);
	snprintf(addr, addr_len, "%s", listen);
	free(listen);
	char *control = harness_notify_var(p, "X_MOCK_CONTROL");
	cr_assert(control, "%s did not report its control address", name);
	snprintf(ctl, ctl_len, "%s", control);
	free(control);
	free(extra);
	return p;
}

static void write_conf(struct fixture *f, const struct fixture_opts *o)
{
	char host[64], conf[8192], ca_line[512] = "";
	int port = 0, port_v1 = 0;
	const char *scheme = o->plain_http ? "http" : "https";
	const char *uh = o->upstream_host ? o->upstream_host : "localhost";

	if (!o->system_store)
		snprintf(ca_line, sizeof(ca_line), "ca_file = %s/%s\n", f->dir,
		         o->wrong_ca ? "other-ca.pem" : "srv-ca.pem");
	cr_assert_eq(harness_split_addr(f->mock_addr, host, sizeof(host), &port), 0);
	cr_assert_eq(harness_split_addr(f->mock_v1_addr, host, sizeof(host), &port_v1), 0);
	snprintf(conf, sizeof(conf),
	         "[server]\n"
	         "listen = 127.0.0.1:0\n"
	         "admin_listen = 127.0.0.1:0\n"
	         "\n"
	         "[upstream]\n"
	         "url = %s://%s:%d\n"
	         "v1_url = %s://%s:%d\n"
	         "%s"
	         "\n"
	         "[log]\n"
	         "level = info\n"
	         "%s\n",
	         scheme, uh, port, scheme, uh, port_v1, ca_line,
	         o->proxy_conf ? o->proxy_conf : "");
	if (!o->proxy_conf || !strstr(o->proxy_conf, "[limits]")) {
		/* Forwarding tests: the limiter must not be what they measure. */
		strncat(conf, "[limits]\nburst = 1000000\nwindow = 1s\n",
		        sizeof(conf) - strlen(conf) - 1);
	}
	cr_assert_eq(harness_write_file(f->dir, "ghlproxy.conf", conf), 0);
	snprintf(f->conf_path, sizeof(f->conf_path), "%s/ghlproxy.conf", f->dir);
}

int fixture_start_proxy(struct fixture *f, char *const *extra_env)
{
	char *argv[] = { (char *)harness_proxy_bin(), "-c", f->conf_path, NULL };

	harness_proc_free(f->proxy);
	f->proxy = harness_spawn(f->dir, "proxy", argv, extra_env);
	if (!f->proxy || harness_wait_ready(f->proxy, READY_MS) != 0)
		return -1;
	char *listen = harness_notify_var(f->proxy, "X_GHLPROXY_LISTEN");
	if (!listen)
		return -1;
	/* The first address is the one tests talk to. */
	char *comma = strchr(listen, ',');
	if (comma)
		*comma = '\0';
	snprintf(f->proxy_addr, sizeof(f->proxy_addr), "%s", listen);
	free(listen);
	char *admin = harness_notify_var(f->proxy, "X_GHLPROXY_ADMIN");
	snprintf(f->admin_addr, sizeof(f->admin_addr), "%s", admin ? admin : "");
	free(admin);
	return 0;
}

void fixture_start(struct fixture *f, const struct fixture_opts *o)
{
	memset(f, 0, sizeof(*f));
	f->dir = harness_tmpdir();
	cr_assert(f->dir);
	if (!o->plain_http) {
		const char *names = o->cert_names ? o->cert_names : "localhost,127.0.0.1";
		cr_assert_eq(certs_make(f->dir, "srv-", names), 0);
		cr_assert_eq(certs_make(f->dir, "other-", "localhost,127.0.0.1"), 0);
	}
	f->mock = start_mock(f, "mock", o, f->mock_addr, sizeof(f->mock_addr), f->mock_ctl,
	                     sizeof(f->mock_ctl));
	f->mock_v1 = start_mock(f, "mock_v1", o, f->mock_v1_addr, sizeof(f->mock_v1_addr),
	                        f->mock_v1_ctl, sizeof(f->mock_v1_ctl));
	write_conf(f, o);
	if (!o->no_proxy)
		cr_assert_eq(fixture_start_proxy(f, o->proxy_env), 0, "the proxy did not start");
}

int fixture_stop_proxy(struct fixture *f)
{
	if (!f->proxy)
		return -1;
	harness_kill(f->proxy, SIGTERM);
	int rc = harness_wait_exit(f->proxy, 30000);
	return rc;
}

void fixture_stop(struct fixture *f)
{
	harness_proc_free(f->proxy);
	harness_proc_free(f->mock);
	harness_proc_free(f->mock_v1);
	f->proxy = f->mock = f->mock_v1 = NULL;
	harness_tmpdir_free(f->dir);
	f->dir = NULL;
}

char *fixture_mock_log(const char *mock_addr, int since)
{
	struct httpc_response r = { 0 };
	char target[64];

	snprintf(target, sizeof(target), "/__mock/log?since=%d", since);
	if (httpc_request(mock_addr, "GET", target, NULL, NULL, 0, &r, 10000) < 0 ||
	    r.status != 200) {
		httpc_response_free(&r);
		return NULL;
	}
	char *s = strdup((const char *)r.body);
	httpc_response_free(&r);
	return s;
}

int fixture_mock_count(const char *mock_addr)
{
	char *log = fixture_mock_log(mock_addr, 0);
	json_t *j = log ? json_loads(log, 0, NULL) : NULL;
	int n = j && json_is_array(j) ? (int)json_array_size(j) : -1;

	json_decref(j);
	free(log);
	return n;
}

void fixture_mock_reset(const char *mock_addr)
{
	struct httpc_response r = { 0 };

	httpc_request(mock_addr, "POST", "/__mock/reset", NULL, NULL, 0, &r, 10000);
	httpc_response_free(&r);
}

double fixture_metric(const struct fixture *f, const char *series)
{
	struct httpc_response r = { 0 };
	double v = -1;
	size_t n = strlen(series);

	if (httpc_request(f->admin_addr, "GET", "/metrics", NULL, NULL, 0, &r, 10000) < 0 ||
	    r.status != 200) {
		httpc_response_free(&r);
		return -1;
	}
	for (const char *line = (const char *)r.body; line && *line;) {
		if (strncmp(line, series, n) == 0 && line[n] == ' ') {
			v = strtod(line + n + 1, NULL);
			break;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	httpc_response_free(&r);
	return v;
}

struct harness_proc *fixture_redis_start(const char *dir, const char *name, const char *extra,
                                         char *sock, size_t sock_len)
{
	char *argv[48];
	int argc = 0;
	char *extra_copy = extra ? strdup(extra) : NULL, *save = NULL;

	snprintf(sock, sock_len, "%s/%s.sock", dir, name);
	argv[argc++] = "redis-server";
	argv[argc++] = "--port";
	argv[argc++] = "0";
	argv[argc++] = "--unixsocket";
	argv[argc++] = sock;
	argv[argc++] = "--unixsocketperm";
	argv[argc++] = "700";
	argv[argc++] = "--save";
	argv[argc++] = "";
	argv[argc++] = "--appendonly";
	argv[argc++] = "no";
	argv[argc++] = "--supervised";
	argv[argc++] = "systemd";
	argv[argc++] = "--dir";
	argv[argc++] = (char *)dir;
	for (char *t = extra_copy ? strtok_r(extra_copy, " ", &save) : NULL; t && argc < 46;
	     t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	argv[argc] = NULL;
	char path[] = "/usr/bin/redis-server";
	argv[0] = path;
	struct harness_proc *p = harness_spawn(dir, name, argv, NULL);
	free(extra_copy);
	if (!p)
		return NULL;
	if (harness_wait_ready(p, 20000) != 0) {
		harness_proc_free(p);
		return NULL;
	}
	return p;
}

struct harness_proc *fixture_spawn_proxy(struct fixture *f, const char *name, const char *extra,
                                         char *const *env, char *addr, size_t addr_len, char *admin,
                                         size_t admin_len)
{
	char *base = harness_read_file(f->conf_path, NULL);
	char file[64], path[512];

	if (!base)
		return NULL;
	size_t len = strlen(base) + (extra ? strlen(extra) : 0) + 2;
	char *conf = malloc(len);
	snprintf(conf, len, "%s\n%s", base, extra ? extra : "");
	snprintf(file, sizeof(file), "%s.conf", name);
	int rc = harness_write_file(f->dir, file, conf);
	free(conf);
	free(base);
	if (rc < 0)
		return NULL;
	snprintf(path, sizeof(path), "%s/%s", f->dir, file);
	char *argv[] = { (char *)harness_proxy_bin(), "-c", path, NULL };
	struct harness_proc *p = harness_spawn(f->dir, name, argv, env);
	if (!p || harness_wait_ready(p, READY_MS) != 0) {
		harness_proc_free(p);
		return NULL;
	}
	char *l = harness_notify_var(p, "X_GHLPROXY_LISTEN");
	char *a = harness_notify_var(p, "X_GHLPROXY_ADMIN");
	if (l && strchr(l, ','))
		*strchr(l, ',') = '\0';
	snprintf(addr, addr_len, "%s", l ? l : "");
	snprintf(admin, admin_len, "%s", a ? a : "");
	free(l);
	free(a);
	return p;
}

double fixture_metric_at(const char *admin_addr, const char *series)
{
	struct fixture f;

	snprintf(f.admin_addr, sizeof(f.admin_addr), "%s", admin_addr);
	return fixture_metric(&f, series);
}
