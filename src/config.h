/*
 * config.h: the proxy's configuration, parsed from one INI file, then `GHLPROXY_SECTION_KEY`
 * environment variables, then `-o section.key=value` overrides (later sources win).
 *
 * Every scalar key is described once in a table in config.c (section, key, type, default, one
 * line of help); conf/ghlproxy.conf documents the same keys and a unit test keeps the two in
 * step. Map sections ([pit], [v1_keys], [clients]) hold operator-chosen names.
 *
 * Errors are collected, never printed here: each is "origin:line: message", where origin is the
 * file name, "environment" or "command line", so `ghlproxy -t` can list every error at once.
 * A struct config is immutable once loaded; a reload builds a new one and swaps it in.
 */
#ifndef GHLPROXY_CONFIG_H
#define GHLPROXY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum config_mode { CONFIG_MODE_PASSTHROUGH = 0, CONFIG_MODE_INJECT };
enum config_backend { CONFIG_BACKEND_LOCAL = 0, CONFIG_BACKEND_REDIS };
enum config_redis_down { CONFIG_REDIS_DOWN_LOCAL = 0, CONFIG_REDIS_DOWN_REJECT };
enum config_log_format { CONFIG_LOG_TEXT = 0, CONFIG_LOG_JSON };
/* Same order as log.h's enum log_level. */
enum config_log_level {
	CONFIG_LOG_ERROR = 0,
	CONFIG_LOG_WARNING,
	CONFIG_LOG_INFO,
	CONFIG_LOG_DEBUG
};

/* One entry of a map section: `name = value` in file order. */
struct config_map_entry {
	char *name;
	char *value;
	int line; /* line in its file, for messages */
};

struct config_map {
	struct config_map_entry *v;
	size_t n;
};

struct config {
	char *path; /* file it was loaded from, or NULL for built-in defaults */

	struct {
		char *listen;       /* comma-separated list of host:port, [v6]:port, unix:/path */
		char *admin_listen; /* same syntax; empty disables the admin listener */
		enum config_mode mode;
		uint64_t max_body;         /* bytes */
		uint64_t max_header_size;  /* bytes, request line + header block */
		uint64_t max_request_line; /* bytes */
		uint32_t max_headers;      /* count */
		uint32_t header_timeout_ms;
		uint32_t body_timeout_ms; /* longest silence while a body is read */
		uint32_t idle_timeout_ms; /* keep-alive connection idle */
		uint32_t max_connections;
		uint32_t drain_timeout_ms;
		bool allow_remote;
		char *socket_owner; /* unix listeners: user name or empty */
		char *socket_group;
		uint32_t socket_mode; /* octal in the file, e.g. 0660 */
	} server;

	struct {
		char *key_file; /* admin listener's key, empty: none */
	} admin;

	struct {
		char *url;
		char *v1_url;
		char *ca_file; /* empty: the system store */
		char *default_version;
		char *user_agent;            /* added when the client sent none */
		uint32_t connect_timeout_ms; /* TCP connect + TLS handshake */
		uint32_t timeout_ms;      /* request sent -> response headers; also body silence */
		uint32_t max_connections; /* per upstream */
		uint32_t idle_timeout_ms; /* pooled idle connection lifetime */
		uint64_t max_header_size; /* response header block */
	} upstream;

	struct {
		uint32_t burst;
		uint32_t window_ms;
		uint32_t daily;
		uint32_t guard_ms;
		uint32_t max_wait_ms;
		enum config_backend backend;
		uint32_t max_queue_per_key;
		uint32_t max_queue;
		enum config_redis_down on_redis_down;
	} limits;

	struct {
		char *url; /* redis://host:port/db or unix:///path[?db=N] */
		char *password_file;
		uint32_t connect_timeout_ms;
		uint32_t command_timeout_ms;
		uint32_t instances; /* 0: count live proxies by heartbeat */
		char *key_prefix;
	} redis;

	struct {
		char *client_id;
		char *client_secret_file;
		char *redirect_uri;
		char *scopes; /* space-separated, for /oauth/start */
		char *authorize_url;
		uint32_t refresh_ahead_ms;
	} oauth;

	struct {
		char *path; /* empty: $STATE_DIRECTORY/tokens.json, else
		               /var/lib/ghlproxy/tokens.json */
		char *key_file;
	} store;

	struct {
		enum config_log_level level;
		enum config_log_format format;
	} log;

	/* [pit]: resource id = file holding a Private Integration Token (comma-separated files) */
	struct config_map pit;
	/* [v1_keys]: location id = file holding an API 1.0 location key; `agency` = agency key file
	 */
	struct config_map v1_keys;
	/* [clients]: name = key file; name.resources = id,id; name.read_only = yes|no */
	struct config_map clients;
};

/* Collected errors, "origin:line: message" each. */
struct config_errors {
	char **v;
	size_t n;
};

/*
 * Build a configuration: built-in defaults, then `path` (NULL: none; a missing file is an error),
 * then every GHLPROXY_* variable in `envp` (NULL: none), then `overrides` in order.
 * Returns the config, or NULL when any error was found; every error is appended to `errs`.
 */
struct config *config_load(const char *path, char *const *envp, const char *const *overrides,
                           size_t n_overrides, struct config_errors *errs);

/* The same, from an in-memory INI text (`origin` names it in messages). For tests and fuzzing. */
struct config *config_load_string(const char *text, const char *origin, char *const *envp,
                                  const char *const *overrides, size_t n_overrides,
                                  struct config_errors *errs);

void config_free(struct config *cfg);
void config_errors_deinit(struct config_errors *errs);

/*
 * Names of keys whose value differs between `a` and `b` and that a reload cannot apply
 * (listen addresses, backend, ...), written comma-separated into buf. Returns how many.
 */
int config_diff_static(const struct config *a, const struct config *b, char *buf, size_t len);

/*
 * Parse helpers shared with other modules (pure). Return 0, -EINVAL when malformed, or -ERANGE
 * when the number overflows 64 bits.
 * Durations: "250ms", "10s", "5m", "1h", "2d"; a bare number is rejected (units are required).
 * Sizes: "512", "512B", "64KiB", "64MiB", "1GiB", "1TiB", also "KB"/"MB"/"GB"/"TB" as powers
 * of 1000. Booleans: yes/no, true/false, on/off, 1/0, in any case.
 */
int config_parse_duration_ms(const char *s, uint64_t *out_ms);
int config_parse_size(const char *s, uint64_t *out_bytes);
int config_parse_bool(const char *s, bool *out);

/*
 * The token store path: store.path, else $STATE_DIRECTORY/tokens.json (the first directory when
 * systemd lists several, colon-separated), else /var/lib/ghlproxy/tokens.json. Caller frees;
 * NULL when out of memory.
 */
char *config_store_path(const struct config *cfg);

/*
 * Every scalar key in table order, with its default as written in the file and one line of help.
 * For the test that keeps conf/ghlproxy.conf in step, and for help output.
 */
typedef void (*config_key_cb)(const char *section, const char *key, const char *default_value,
                              const char *help, void *arg);
void config_keys_foreach(config_key_cb cb, void *arg);

#endif
