/*
 * fixture.h: the common setup of integration tests: a scratch dir with test certificates, one or
 * two mock upstreams (API 2.0 and 1.0) and the proxy pointed at them, all ready.
 */
#ifndef GHLPROXY_TEST_FIXTURE_H
#define GHLPROXY_TEST_FIXTURE_H

#include <stdbool.h>

#include "harness.h"

struct fixture_opts {
	bool plain_http;        /* mock upstreams without TLS */
	const char *mock_args;  /* extra mock arguments, space-separated */
	const char *proxy_conf; /* extra config text appended to the generated file; unless it
	                         * has a [limits] section, limits are set too high to bind */
	const char
	        *cert_names; /* names in the mock's certificate (default "localhost,127.0.0.1") */
	const char *upstream_host; /* host the proxy uses for the mocks (default "localhost") */
	bool wrong_ca;          /* give the proxy a CA that did not sign the mock's certificate */
	bool system_store;      /* no upstream.ca_file: the proxy verifies with the system store
	                         * (tests point SSL_CERT_DIR / SSL_CERT_FILE at their CA) */
	bool no_proxy;          /* start only the mocks */
	char *const *proxy_env; /* extra environment for the proxy */
};

struct fixture {
	char *dir;
	struct harness_proc *mock;    /* API 2.0 upstream */
	struct harness_proc *mock_v1; /* API 1.0 upstream */
	struct harness_proc *proxy;
	char mock_addr[64]; /* where the proxy sends (TLS unless plain_http) */
	char mock_v1_addr[64];
	char mock_ctl[64]; /* the mock's plain-HTTP control address (/__mock/...) */
	char mock_v1_ctl[64];
	char proxy_addr[128];
	char admin_addr[128]; /* the proxy's admin listener */
	char conf_path[256];
};

/* Start everything; asserts (Criterion) on failure. */
void fixture_start(struct fixture *f, const struct fixture_opts *o);

/* Start (or restart) only the proxy with the current conf_path. Returns 0 when ready. */
int fixture_start_proxy(struct fixture *f, char *const *extra_env);

/*
 * One more proxy against the same mocks: the fixture's config plus `extra` (sections not already
 * in it), in dir/<name>.conf, ready. Its addresses go to addr/admin. NULL on failure.
 */
struct harness_proc *fixture_spawn_proxy(struct fixture *f, const char *name, const char *extra,
                                         char *const *env, char *addr, size_t addr_len, char *admin,
                                         size_t admin_len);

/* SIGTERM the proxy and expect a clean exit (0). Returns its exit code. */
int fixture_stop_proxy(struct fixture *f);

/* Stop everything, remove the scratch dir. */
void fixture_stop(struct fixture *f);

/* The mock's request log as a JSON text (GET /__mock/log?since=K), from its control address
 * (fx.mock_ctl). Caller frees. */
char *fixture_mock_log(const char *mock_addr, int since);

/*
 * A real redis-server for the test, on a unix socket in `dir` (no TCP port, no persistence),
 * ready when it says so over NOTIFY_SOCKET. `extra` adds "--name value" options (may be NULL).
 * Writes the socket path to sock. Returns the process (harness_proc_free stops it), or NULL.
 */
struct harness_proc *fixture_redis_start(const char *dir, const char *name, const char *extra,
                                         char *sock, size_t sock_len);

/* Value of one sample in the proxy's /metrics ("family{labels}" or "family"); -1 if absent. */
double fixture_metric(const struct fixture *f, const char *series);

/* The same, for any proxy's admin address. */
double fixture_metric_at(const char *admin_addr, const char *series);

/* Number of requests the mock recorded. */
int fixture_mock_count(const char *mock_addr);

/* POST /__mock/reset. */
void fixture_mock_reset(const char *mock_addr);

#endif
