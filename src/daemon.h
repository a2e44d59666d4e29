/*
 * daemon.h: the process around the proxy: event loop, signals (reload on HUP, drain on TERM and
 * INT), readiness and status for systemd (sd_notify), and the objects that live as long as the
 * process (upstreams, limiter, listeners).
 */
#ifndef GHLPROXY_DAEMON_H
#define GHLPROXY_DAEMON_H

#include <stddef.h>

struct config;

struct daemon_args {
	const char *config_path; /* NULL: the default file if it exists, else built-in defaults */
	const char *const *overrides;
	size_t n_overrides;
	char *const *envp;
};

/* Run until stopped. Takes ownership of cfg. Returns the process exit code. */
int daemon_run(struct config *cfg, const struct daemon_args *args);

/* Send a notification to $NOTIFY_SOCKET if set (systemd's protocol). 0 or -errno. */
int daemon_notify(const char *state);

#endif
