/*
 * config.c: the configuration, from defaults, one INI file, GHLPROXY_* variables and -o overrides.
 *
 * Data enters as text (the file, read whole into memory; `NAME=VALUE` environment entries;
 * `section.key=value` arguments) and leaves as an immutable struct config plus a list of
 * "origin:line: message" errors. Nothing here prints, logs or touches global state, and only
 * config_load() does I/O (it reads the one file), so config_load_string() can be fuzzed.
 *
 * Every scalar key is one row of keys[] below: where it lives in struct config, its type, its
 * default (as text, parsed by the same code as the file so a bad default fails the unit test),
 * its range and one line of help. conf/ghlproxy.conf documents the same rows; a unit test keeps
 * them in step through config_keys_foreach().
 *
 * The INI syntax is inih's (Debian 12 ships r55), fed through our own line reader because r55,
 * as built there, has three traps we must close:
 *  - lines longer than its 200-byte buffer are cut and the rest is parsed as a new line, so a
 *    long value could smuggle in a key (and every later line number shifts);
 *  - a line starting with whitespace continues the previous key's value (INI_ALLOW_MULTILINE),
 *    so an indented `key = value` would silently become part of another value;
 *  - it reports only the first syntax error and its handler gets no line number.
 * The reader hands inih exactly one physical line per call, and rejects long lines, control
 * characters, indented lines, broken section headers and lines without `=`, handing over an
 * empty line instead (so numbering stays right), or a placeholder section when the line looked
 * like a header (so the keys under it are ignored, not filed under the previous section).
 * inih still does the splitting, trimming and comments.
 * Inline comments start with ';' after whitespace; '#' and ';' start full-line comments; only
 * '=' separates a key from its value (inih's ':' would let "A:B = x" mean A = "B = x").
 *
 * The configuration only ever holds *paths* to secret files. Values the user typed are echoed
 * in messages so mistakes are easy to find, except where a secret could hide: unknown keys,
 * map values, `user:password@` in URLs.
 */
#define _GNU_SOURCE

#include "config.h"

#include "build_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define MS_PER_S   1000ULL
#define MS_PER_MIN (60ULL * MS_PER_S)
#define MS_PER_H   (60ULL * MS_PER_MIN)
#define MS_PER_DAY (24ULL * MS_PER_H)

#define KIB (1ULL << 10)
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define TIB (1ULL << 40)

/* Longest value accepted from any source; file lines are shorter still (inih's buffer). */
#define MAX_VALUE_LEN 4096
/* A config file is small; refusing big ones bounds what a wrong path can make us allocate. */
#define MAX_FILE_SIZE (1024 * 1024)
/* Entries in one listen list. */
#define MAX_LISTEN_ITEMS 64
/* Resource ids, client names. */
#define MAX_NAME_LEN 64
/* sun_path minus its terminating NUL. */
#define UNIX_PATH_MAX_LEN (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

_Static_assert(sizeof(enum config_mode) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum config_backend) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum config_redis_down) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum config_log_format) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum config_log_level) == sizeof(int), "enums are stored as int");

enum key_type {
	KEY_STRING,    /* printable text, length min..max, characters from `alphabet` */
	KEY_BOOL,      /* yes/no/true/false/on/off/1/0 */
	KEY_UINT32,    /* decimal, min..max */
	KEY_DURATION,  /* number + unit, stored as uint32 ms, min..max in ms */
	KEY_SIZE,      /* number + optional unit, stored as uint64 bytes, min..max */
	KEY_ENUM,      /* one of `names`, stored as int */
	KEY_MODE,      /* octal permission bits, min..max */
	KEY_LISTEN,    /* comma-separated listen addresses, at least `min` of them */
	KEY_URL,       /* http(s)://host[:port][/path]; empty allowed when min is 0 */
	KEY_REDIS_URL, /* redis://host[:port][/db] or unix:///path[?db=N]; may be empty */
};

/* The first name given for a value is how messages spell it; aliases are accepted silently. */
struct enum_name {
	const char *name;
	int value;
	bool is_alias;
};

struct alphabet {
	bool (*is_ok)(unsigned char c);
	const char *desc;
};

/* Keys a reload cannot apply (config_diff_static). */
#define KEY_STATIC 1u

struct key_def {
	const char *section;
	const char *key;
	enum key_type type;
	size_t offset; /* into struct config */
	const char *default_value;
	uint64_t min, max; /* value range, or length range for strings, or list length */
	const struct enum_name *names;   /* KEY_ENUM, ends with a NULL name */
	const struct alphabet *alphabet; /* KEY_STRING, NULL: any printable byte */
	unsigned flags;
	const char *help;
};

static bool is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* Resource ids (location / company ids): [A-Za-z0-9_-]. */
static bool is_id_char(unsigned char c)
{
	return is_alnum(c) || c == '_' || c == '-';
}

static bool is_token_char(unsigned char c)
{
	return is_alnum(c) || c == '_' || c == '-' || c == '.';
}

/* Redis key prefix: no braces (keys are hash-tagged after it), no spaces. */
static bool is_prefix_char(unsigned char c)
{
	return is_token_char(c) || c == ':';
}

static bool is_visible_char(unsigned char c)
{
	return c > 0x20 && c != 0x7f;
}

static const struct alphabet alpha_token = { is_token_char, "A-Z a-z 0-9 . _ -" };
static const struct alphabet alpha_prefix = { is_prefix_char, "A-Z a-z 0-9 . _ - :" };
static const struct alphabet alpha_visible = { is_visible_char, "printable characters but spaces" };

static const struct enum_name mode_names[] = {
	{ "passthrough", CONFIG_MODE_PASSTHROUGH, false },
	{ "inject", CONFIG_MODE_INJECT, false },
	{ NULL, 0, false },
};
static const struct enum_name backend_names[] = {
	{ "local", CONFIG_BACKEND_LOCAL, false },
	{ "redis", CONFIG_BACKEND_REDIS, false },
	{ NULL, 0, false },
};
static const struct enum_name redis_down_names[] = {
	{ "local", CONFIG_REDIS_DOWN_LOCAL, false },
	{ "reject", CONFIG_REDIS_DOWN_REJECT, false },
	{ NULL, 0, false },
};
static const struct enum_name log_level_names[] = {
	{ "error", CONFIG_LOG_ERROR, false }, { "warning", CONFIG_LOG_WARNING, false },
	{ "warn", CONFIG_LOG_WARNING, true }, { "info", CONFIG_LOG_INFO, false },
	{ "debug", CONFIG_LOG_DEBUG, false }, { NULL, 0, false },
};
static const struct enum_name log_format_names[] = {
	{ "text", CONFIG_LOG_TEXT, false },
	{ "json", CONFIG_LOG_JSON, false },
	{ NULL, 0, false },
};

#define OFF(field) offsetof(struct config, field)

/* Row builders, so each key reads as one line of its essentials. */
#define K_STR(sec, key, field, def, minlen, maxlen, alpha, flags, help)                         \
	{                                                                                       \
		sec, key, KEY_STRING, OFF(field), def, minlen, maxlen, NULL, alpha, flags, help \
	}
#define K_BOOL(sec, key, field, def, help)                                     \
	{                                                                      \
		sec, key, KEY_BOOL, OFF(field), def, 0, 1, NULL, NULL, 0, help \
	}
#define K_U32(sec, key, field, def, lo, hi, help)                                  \
	{                                                                          \
		sec, key, KEY_UINT32, OFF(field), def, lo, hi, NULL, NULL, 0, help \
	}
#define K_DUR(sec, key, field, def, lo, hi, help)                                    \
	{                                                                            \
		sec, key, KEY_DURATION, OFF(field), def, lo, hi, NULL, NULL, 0, help \
	}
#define K_SIZE(sec, key, field, def, lo, hi, help)                               \
	{                                                                        \
		sec, key, KEY_SIZE, OFF(field), def, lo, hi, NULL, NULL, 0, help \
	}
#define K_ENUM(sec, key, field, def, names, flags, help)                            \
	{                                                                           \
		sec, key, KEY_ENUM, OFF(field), def, 0, 0, names, NULL, flags, help \
	}
#define K_MODE(sec, key, field, def, hi, flags, help)                               \
	{                                                                           \
		sec, key, KEY_MODE, OFF(field), def, 0, hi, NULL, NULL, flags, help \
	}
#define K_LISTEN(sec, key, field, def, min_items, flags, help)                                  \
	{                                                                                       \
		sec, key, KEY_LISTEN, OFF(field), def, min_items, MAX_LISTEN_ITEMS, NULL, NULL, \
		        flags, help                                                             \
	}
#define K_URL(sec, key, field, def, required, help)                                              \
	{                                                                                        \
		sec, key, KEY_URL, OFF(field), def, required, MAX_VALUE_LEN, NULL, NULL, 0, help \
	}
#define K_REDIS(sec, key, field, def, flags, help)                                             \
	{                                                                                      \
		sec, key, KEY_REDIS_URL, OFF(field), def, 0, MAX_VALUE_LEN, NULL, NULL, flags, \
		        help                                                                   \
	}

/* The one description of every scalar key. Names and defaults are fixed by DESIGN.md. */
static const struct key_def keys[] = {
	K_LISTEN("server", "listen", server.listen, "127.0.0.1:8080", 1, KEY_STATIC,
	         "addresses the proxy listens on: host:port, [IPv6]:port or unix:/path, "
	         "comma-separated"),
	K_LISTEN("server", "admin_listen", server.admin_listen, "127.0.0.1:8081", 0, KEY_STATIC,
	         "addresses of the admin endpoints (health, metrics, status); empty disables them"),
	K_ENUM("server", "mode", server.mode, "passthrough", mode_names, 0,
	       "passthrough: clients send their own Authorization; inject: the proxy adds it"),
	K_SIZE("server", "max_body", server.max_body, "128MiB", 1, TIB,
	       "largest request body accepted"),
	K_SIZE("server", "max_header_size", server.max_header_size, "64KiB", KIB, 16 * MIB,
	       "largest request line plus header block accepted"),
	K_SIZE("server", "max_request_line", server.max_request_line, "16KiB", 256, 16 * MIB,
	       "longest request line accepted"),
	K_U32("server", "max_headers", server.max_headers, "100", 1, 10000,
	      "most header fields in one request"),
	K_DUR("server", "header_timeout", server.header_timeout_ms, "10s", 1, MS_PER_H,
	      "time a client has to send its request line and headers"),
	K_DUR("server", "body_timeout", server.body_timeout_ms, "30s", 1, MS_PER_H,
	      "longest silence while a request body is read"),
	K_DUR("server", "idle_timeout", server.idle_timeout_ms, "60s", 1, MS_PER_DAY,
	      "how long an idle keep-alive client connection is kept"),
	K_U32("server", "max_connections", server.max_connections, "4096", 1, 1000000,
	      "most client connections open at once"),
	K_DUR("server", "drain_timeout", server.drain_timeout_ms, "25s", 0, MS_PER_H,
	      "on shutdown, how long requests in flight may take to finish"),
	K_BOOL("server", "allow_remote", server.allow_remote, "no",
	       "allow listening off loopback without [clients] keys"),
	K_STR("server", "socket_owner", server.socket_owner, "", 0, 32, &alpha_token, KEY_STATIC,
	      "owner (user name or uid) of unix listening sockets; empty: unchanged"),
	K_STR("server", "socket_group", server.socket_group, "", 0, 32, &alpha_token, KEY_STATIC,
	      "group (name or gid) of unix listening sockets; empty: unchanged"),
	K_MODE("server", "socket_mode", server.socket_mode, "0660", 0777, KEY_STATIC,
	       "permissions of unix listening sockets, in octal"),

	K_STR("admin", "key_file", admin.key_file, "", 0, MAX_VALUE_LEN, NULL, 0,
	      "file holding the key the admin endpoints require; empty: none"),

	K_URL("upstream", "url", upstream.url, "https://services.leadconnectorhq.com", 1,
	      "base URL of the HighLevel API 2.0"),
	K_URL("upstream", "v1_url", upstream.v1_url, "https://rest.gohighlevel.com", 1,
	      "base URL for requests under /v1/ (API 1.0)"),
	K_STR("upstream", "ca_file", upstream.ca_file, "", 0, MAX_VALUE_LEN, NULL, 0,
	      "CA bundle that verifies the upstream; empty: the system store"),
	K_STR("upstream", "default_version", upstream.default_version, "2021-07-28", 1, 32,
	      &alpha_token, 0, "Version header added when the client sent none"),
	K_STR("upstream", "user_agent", upstream.user_agent, "ghlproxy/" GHLPROXY_VERSION, 1, 256,
	      NULL, 0, "User-Agent added when the client sent none"),
	K_DUR("upstream", "connect_timeout", upstream.connect_timeout_ms, "5s", 1, 5 * MS_PER_MIN,
	      "TCP connect plus TLS handshake to the upstream"),
	K_DUR("upstream", "timeout", upstream.timeout_ms, "60s", 1, MS_PER_H,
	      "request sent to response headers, and longest silence in a response body"),
	K_U32("upstream", "max_connections", upstream.max_connections, "512", 1, 100000,
	      "most connections open to each upstream"),
	K_DUR("upstream", "idle_timeout", upstream.idle_timeout_ms, "50s", 1, MS_PER_H,
	      "how long an idle pooled upstream connection is kept"),
	K_SIZE("upstream", "max_header_size", upstream.max_header_size, "64KiB", KIB, 16 * MIB,
	       "largest upstream response header block accepted"),

	K_U32("limits", "burst", limits.burst, "100", 1, 1000000,
	      "calls per window per key until X-RateLimit-Max says otherwise"),
	K_DUR("limits", "window", limits.window_ms, "10s", 1, MS_PER_DAY,
	      "burst window until X-RateLimit-Interval-Milliseconds says otherwise"),
	K_U32("limits", "daily", limits.daily, "200000", 1, 1000000000,
	      "calls per rolling 24 hours per key"),
	K_DUR("limits", "guard", limits.guard_ms, "250ms", 0, MS_PER_H,
	      "guard band added to the window; must be shorter than the window"),
	K_DUR("limits", "max_wait", limits.max_wait_ms, "20s", 0, MS_PER_H,
	      "longest a request may wait in the queue (0s: answer 429 at once)"),
	K_ENUM("limits", "backend", limits.backend, "local", backend_names, KEY_STATIC,
	       "local: this process alone; redis: share the limits through redis.url"),
	K_U32("limits", "max_queue_per_key", limits.max_queue_per_key, "1000", 1, 10000000,
	      "most requests waiting for one key"),
	K_U32("limits", "max_queue", limits.max_queue, "100000", 1, 10000000,
	      "most requests waiting in all"),
	K_ENUM("limits", "on_redis_down", limits.on_redis_down, "local", redis_down_names, 0,
	       "when Redis is unreachable: local (spend a safe share) or reject"),

	K_REDIS("redis", "url", redis.url, "redis://127.0.0.1:6379/0", KEY_STATIC,
	        "redis://host[:port][/db] or unix:///path[?db=N]"),
	K_STR("redis", "password_file", redis.password_file, "", 0, MAX_VALUE_LEN, NULL, 0,
	      "file holding the Redis password; empty: none"),
	K_DUR("redis", "connect_timeout", redis.connect_timeout_ms, "1s", 1, MS_PER_MIN,
	      "connecting to Redis"),
	K_DUR("redis", "command_timeout", redis.command_timeout_ms, "1s", 1, MS_PER_MIN,
	      "one Redis command"),
	K_U32("redis", "instances", redis.instances, "0", 0, 10000,
	      "proxies sharing Redis, for the fallback share; 0: count them by heartbeat"),
	K_STR("redis", "key_prefix", redis.key_prefix, "ghlproxy", 1, 64, &alpha_prefix, 0,
	      "prefix of every Redis key"),

	K_STR("oauth", "client_id", oauth.client_id, "", 0, 256, &alpha_visible, 0,
	      "Marketplace app client id"),
	K_STR("oauth", "client_secret_file", oauth.client_secret_file, "", 0, MAX_VALUE_LEN, NULL,
	      0, "file holding the Marketplace app client secret"),
	K_URL("oauth", "redirect_uri", oauth.redirect_uri, "", 0,
	      "redirect URI registered for the app (the admin /oauth/callback)"),
	K_STR("oauth", "scopes", oauth.scopes, "", 0, MAX_VALUE_LEN, NULL, 0,
	      "space-separated scopes asked for by /oauth/start"),
	K_URL("oauth", "authorize_url", oauth.authorize_url,
	      "https://marketplace.gohighlevel.com/v2/oauth/chooselocation", 1,
	      "where /oauth/start sends the installing user"),
	K_DUR("oauth", "refresh_ahead", oauth.refresh_ahead_ms, "10m", 0, 12 * MS_PER_H,
	      "refresh an access token this long before it expires"),

	K_STR("store", "path", store.path, "", 0, MAX_VALUE_LEN, NULL, KEY_STATIC,
	      "token store file; empty: $STATE_DIRECTORY/tokens.json or /var/lib/ghlproxy"),
	K_STR("store", "key_file", store.key_file, "", 0, MAX_VALUE_LEN, NULL, 0,
	      "file holding the key that encrypts the token store"),

	K_ENUM("log", "level", log.level, "info", log_level_names, 0,
	       "error, warning, info or debug"),
	K_ENUM("log", "format", log.format, "text", log_format_names, 0, "text or json"),
};

#define N_KEYS ARRAY_SIZE(keys)

enum map_kind { MAP_PIT, MAP_V1_KEYS, MAP_CLIENTS };

static const struct {
	const char *section;
	enum map_kind kind;
	size_t offset;
} map_sections[] = {
	{ "pit", MAP_PIT, OFF(pit) },
	{ "v1_keys", MAP_V1_KEYS, OFF(v1_keys) },
	{ "clients", MAP_CLIENTS, OFF(clients) },
};

static const char *const scalar_sections[] = { "server", "admin", "upstream", "limits",
	                                       "redis",  "oauth", "store",    "log" };

/* Where a value came from, for messages. Later sources have larger values (and win). */
enum source { SOURCE_DEFAULT = 0, SOURCE_FILE, SOURCE_ENV, SOURCE_CMDLINE };

struct where {
	enum source source;
	int line;         /* SOURCE_FILE */
	const char *what; /* SOURCE_ENV: the variable name; SOURCE_CMDLINE: the -o argument */
	size_t what_len;
	bool hide_value; /* SOURCE_CMDLINE: print `what` (up to '=') followed by "=(hidden)" */
};

union value {
	uint64_t u;
	bool b;
	int e;
	char *s; /* owned */
};

struct loader {
	struct config *cfg;
	struct config_errors *errs;
	size_t n_errors; /* counted even when a message could not be stored */
	const char *origin;

	/* inih reader state: the file text and the line last handed over */
	const char *text;
	size_t len;
	size_t pos;
	int line;

	struct where set_at[N_KEYS]; /* where each key got its current value */
	bool is_bad[N_KEYS];         /* its last value was rejected: skip rules using it */
};

/* ---- errors ---- */

static void append_error(struct loader *ld, char *msg)
{
	struct config_errors *e = ld->errs;
	char **v;

	ld->n_errors++;
	if (!msg)
		return;
	if (!e) {
		free(msg);
		return;
	}
	v = realloc(e->v, (e->n + 1) * sizeof(*v));
	if (!v) {
		free(msg);
		return;
	}
	e->v = v;
	e->v[e->n++] = msg;
}

static __attribute__((format(printf, 3, 0))) void
add_errorv(struct loader *ld, const struct where *w, const char *fmt, va_list ap)
{
	char *msg = NULL;
	char *out = NULL;
	int r;

	if (vasprintf(&msg, fmt, ap) < 0) {
		append_error(ld, NULL);
		return;
	}
	switch (w->source) {
	case SOURCE_FILE:
		r = asprintf(&out, "%s:%d: %s", ld->origin, w->line, msg);
		break;
	case SOURCE_ENV:
		r = asprintf(&out, "environment: %.*s: %s", (int)w->what_len, w->what, msg);
		break;
	case SOURCE_CMDLINE:
		r = asprintf(&out, "command line: -o %.*s%s: %s", (int)w->what_len, w->what,
		             w->hide_value ? "=(hidden)" : "", msg);
		break;
	case SOURCE_DEFAULT:
	default:
		r = asprintf(&out, "built-in default: %s", msg);
		break;
	}
	free(msg);
	append_error(ld, r < 0 ? NULL : out);
}

static __attribute__((format(printf, 3, 4))) void
add_error(struct loader *ld, const struct where *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	add_errorv(ld, w, fmt, ap);
	va_end(ap);
}

/* ---- value parsers (pure) ---- */

enum parse_status { PARSE_OK, PARSE_BAD, PARSE_NO_UNIT, PARSE_BAD_UNIT, PARSE_RANGE };

/* Leading decimal digits of s; *overflow when they exceed UINT64_MAX. Returns how many. */
static size_t parse_digits(const char *s, uint64_t *out, bool *overflow)
{
	uint64_t v = 0;
	size_t i;

	*overflow = false;
	for (i = 0; is_digit((unsigned char)s[i]); i++) {
		unsigned d = (unsigned)(s[i] - '0');

		if (v > (UINT64_MAX - d) / 10)
			*overflow = true;
		else
			v = v * 10 + d;
	}
	*out = v;
	return i;
}

struct unit {
	const char *name;
	uint64_t factor;
};

static const struct unit duration_units[] = {
	{ "ms", 1 },       { "s", MS_PER_S },   { "m", MS_PER_MIN },
	{ "h", MS_PER_H }, { "d", MS_PER_DAY }, { NULL, 0 },
};

static const struct unit size_units[] = {
	{ "", 1 },
	{ "B", 1 },
	{ "KB", 1000ULL },
	{ "KiB", KIB },
	{ "MB", 1000000ULL },
	{ "MiB", MIB },
	{ "GB", 1000000000ULL },
	{ "GiB", GIB },
	{ "TB", 1000000000000ULL },
	{ "TiB", TIB },
	{ NULL, 0 },
};

static enum parse_status parse_with_units(const char *s, const struct unit *units,
                                          bool unit_required, uint64_t *out)
{
	uint64_t n;
	bool overflow;
	size_t nd = parse_digits(s, &n, &overflow);
	const char *u = s + nd;

	if (nd == 0)
		return PARSE_BAD;
	if (*u == '\0' && unit_required)
		return PARSE_NO_UNIT;
	for (; units->name; units++) {
		if (strcmp(u, units->name) != 0)
			continue;
		if (overflow || (units->factor && n > UINT64_MAX / units->factor))
			return PARSE_RANGE;
		*out = n * units->factor;
		return PARSE_OK;
	}
	/* Something that is not a unit at all ("10 s", "1.5s") is a malformed value. */
	return is_alnum((unsigned char)*u) ? PARSE_BAD_UNIT : PARSE_BAD;
}

static int status_to_errno(enum parse_status st)
{
	switch (st) {
	case PARSE_OK:
		return 0;
	case PARSE_RANGE:
		return -ERANGE;
	default:
		return -EINVAL;
	}
}

int config_parse_duration_ms(const char *s, uint64_t *out_ms)
{
	uint64_t v;
	int r;

	if (!s || !out_ms)
		return -EINVAL;
	r = status_to_errno(parse_with_units(s, duration_units, true, &v));
	if (r == 0)
		*out_ms = v;
	return r;
}

int config_parse_size(const char *s, uint64_t *out_bytes)
{
	uint64_t v;
	int r;

	if (!s || !out_bytes)
		return -EINVAL;
	r = status_to_errno(parse_with_units(s, size_units, false, &v));
	if (r == 0)
		*out_bytes = v;
	return r;
}

int config_parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };
	size_t i;

	if (!s || !out)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

/* "250ms", "10s", "1h": the largest unit that divides evenly. */
static void format_duration(uint64_t ms, char *buf, size_t len)
{
	size_t i;

	for (i = ARRAY_SIZE(duration_units) - 1; i-- > 1;) {
		if (ms != 0 && ms % duration_units[i].factor == 0) {
			snprintf(buf, len, "%llu%s",
			         (unsigned long long)(ms / duration_units[i].factor),
			         duration_units[i].name);
			return;
		}
	}
	snprintf(buf, len, "%llums", (unsigned long long)ms);
}

static void format_size(uint64_t bytes, char *buf, size_t len)
{
	static const struct unit bin[] = {
		{ "TiB", TIB }, { "GiB", GIB }, { "MiB", MIB }, { "KiB", KIB }
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(bin); i++) {
		if (bytes != 0 && bytes % bin[i].factor == 0) {
			snprintf(buf, len, "%llu%s", (unsigned long long)(bytes / bin[i].factor),
			         bin[i].name);
			return;
		}
	}
	snprintf(buf, len, "%llu", (unsigned long long)bytes);
}

static bool has_control_char(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return true;
	}
	return false;
}

/* Decimal port, 1 to 5 digits, min..65535. */
static bool parse_port(const char *p, size_t n, uint32_t min)
{
	uint32_t v = 0;
	size_t i;

	if (n == 0 || n > 5)
		return false;
	for (i = 0; i < n; i++) {
		if (!is_digit((unsigned char)p[i]))
			return false;
		v = v * 10 + (uint32_t)(p[i] - '0');
	}
	return v >= min && v <= 65535;
}

/* RFC 1123 host name: dot-separated labels of [A-Za-z0-9-], not starting or ending with '-'. */
static bool is_hostname(const char *p, size_t n)
{
	size_t i, label = 0;

	if (n == 0 || n > 253)
		return false;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c == '.') {
			if (label == 0 || p[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!is_alnum(c) && c != '-')
			return false;
		if (label == 0 && c == '-')
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0 && p[n - 1] != '-';
}

enum host_check { HOST_IP, HOST_NAME, HOST_BAD_IPV4, HOST_BAD_IPV6, HOST_BAD_NAME };

/*
 * An IPv4 literal, an IPv6 literal (when it was bracketed) or a host name. A host made only of
 * digits and dots must be a valid IPv4 literal, so "256.1.1.1" is not taken for a name.
 */
static enum host_check check_host(const char *p, size_t n, bool bracketed, bool *is_loopback)
{
	char buf[INET6_ADDRSTRLEN];
	unsigned char addr[16];
	size_t i;
	bool digits_dots = true;

	*is_loopback = false;
	if (bracketed) {
		if (n == 0 || n >= sizeof(buf))
			return HOST_BAD_IPV6;
		memcpy(buf, p, n);
		buf[n] = '\0';
		if (inet_pton(AF_INET6, buf, addr) != 1)
			return HOST_BAD_IPV6;
		/* ::1, or ::ffff:127.x.x.x */
		static const unsigned char v4mapped[12] = {
			0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
		};
		static const unsigned char one[16] = { 0, 0, 0, 0, 0, 0, 0, 0,
			                               0, 0, 0, 0, 0, 0, 0, 1 };
		*is_loopback = memcmp(addr, one, 16) == 0 ||
		               (memcmp(addr, v4mapped, 12) == 0 && addr[12] == 127);
		return HOST_IP;
	}
	for (i = 0; i < n; i++) {
		if (!is_digit((unsigned char)p[i]) && p[i] != '.')
			digits_dots = false;
	}
	if (n > 0 && digits_dots) {
		if (n >= sizeof(buf))
			return HOST_BAD_IPV4;
		memcpy(buf, p, n);
		buf[n] = '\0';
		if (inet_pton(AF_INET, buf, addr) != 1)
			return HOST_BAD_IPV4;
		*is_loopback = addr[0] == 127;
		return HOST_IP;
	}
	if (!is_hostname(p, n))
		return HOST_BAD_NAME;
	*is_loopback = n == 9 && strncasecmp(p, "localhost", 9) == 0;
	return HOST_NAME;
}

static const char *host_error(enum host_check hc)
{
	switch (hc) {
	case HOST_BAD_IPV4:
		return "not an IPv4 address";
	case HOST_BAD_IPV6:
		return "not an IPv6 address";
	case HOST_BAD_NAME:
		return "not a valid host name";
	case HOST_IP:
	case HOST_NAME:
	default:
		return NULL;
	}
}

/*
 * One listen address: host:port, [IPv6]:port, unix:/absolute/path. Port 0 is allowed (the
 * kernel picks one; tests use it). Returns NULL or why it is wrong. *is_remote is set for an
 * address literal off loopback; a host name other than localhost cannot be judged without
 * resolving it, so the server checks those when it binds.
 */
static const char *check_listen_item(const char *p, size_t n, bool *is_remote)
{
	const char *colon;
	const char *host = p;
	size_t host_len;
	bool bracketed = false, loopback;
	enum host_check hc;

	*is_remote = false;
	if (n >= 5 && memcmp(p, "unix:", 5) == 0) {
		if (n == 5 || p[5] != '/')
			return "the socket path must be absolute (unix:/path)";
		if (n - 5 > UNIX_PATH_MAX_LEN)
			return "the socket path is too long";
		return NULL;
	}
	if (n > 0 && p[0] == '[') {
		const char *close = memchr(p, ']', n);

		if (!close)
			return "missing ']'";
		host = p + 1;
		host_len = (size_t)(close - host);
		bracketed = true;
		if ((size_t)(close - p) + 1 >= n || close[1] != ':')
			return "missing port ([IPv6]:port)";
		colon = close + 1;
	} else {
		colon = NULL;
		for (size_t i = n; i-- > 0;) {
			if (p[i] == ':') {
				colon = p + i;
				break;
			}
		}
		if (!colon)
			return "missing port (host:port)";
		host_len = (size_t)(colon - p);
		if (memchr(p, ':', host_len))
			return "IPv6 addresses need brackets ([IPv6]:port)";
		if (host_len == 0)
			return "missing host";
	}
	hc = check_host(host, host_len, bracketed, &loopback);
	if (hc != HOST_IP && hc != HOST_NAME)
		return host_error(hc);
	if (!parse_port(colon + 1, (size_t)(p + n - colon - 1), 0))
		return "port must be a number from 0 to 65535";
	*is_remote = hc == HOST_IP && !loopback;
	return NULL;
}

static bool is_hex(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 3986 path characters (pchar and '/'), '@' excluded: see check_url. */
static bool is_path_char(unsigned char c)
{
	return is_alnum(c) || strchr("-._~!$&'()*+,;=:/", c) != NULL;
}

/*
 * http(s)://host[:port][/path]: no user info, query or fragment. Returns NULL or why not.
 * The caller has already refused any '@', so echoing the value cannot print a password.
 */
static const char *check_url(const char *s)
{
	const char *auth, *port = NULL, *path;
	size_t alen, host_len;
	bool bracketed = false, loopback;
	enum host_check hc;

	if (strncasecmp(s, "https://", 8) == 0)
		auth = s + 8;
	else if (strncasecmp(s, "http://", 7) == 0)
		auth = s + 7;
	else
		return "must start with http:// or https://";
	alen = strcspn(auth, "/?#");
	path = auth + alen;
	if (alen == 0)
		return "has no host";
	if (auth[0] == '[') {
		const char *close = memchr(auth, ']', alen);

		if (!close)
			return "has no ']' after its IPv6 address";
		bracketed = true;
		host_len = (size_t)(close - auth) - 1;
		if (close + 1 < path) {
			if (close[1] != ':')
				return "has junk after its IPv6 address";
			port = close + 2;
		}
		hc = check_host(auth + 1, host_len, bracketed, &loopback);
	} else {
		const char *colon = memchr(auth, ':', alen);

		host_len = colon ? (size_t)(colon - auth) : alen;
		if (colon)
			port = colon + 1;
		if (host_len == 0)
			return "has no host";
		hc = check_host(auth, host_len, bracketed, &loopback);
	}
	if (hc != HOST_IP && hc != HOST_NAME)
		return "has an invalid host";
	if (port && !parse_port(port, (size_t)(path - port), 1))
		return "has a bad port (1..65535)";
	for (; *path; path++) {
		unsigned char c = (unsigned char)*path;

		if (c == '?' || c == '#')
			return "must not have a query or fragment";
		if (c == '%') {
			if (!is_hex((unsigned char)path[1]) || !is_hex((unsigned char)path[2]))
				return "has a bad %-escape in its path";
			path += 2;
			continue;
		}
		if (!is_path_char(c))
			return "has an invalid character in its path";
	}
	return NULL;
}

/* A Redis database number: SELECT takes a signed 32-bit index. */
static bool parse_db(const char *p, size_t n)
{
	uint64_t v;
	bool overflow;

	if (n == 0 || n > 10)
		return false;
	if (parse_digits(p, &v, &overflow) != n)
		return false;
	return !overflow && v <= INT32_MAX;
}

/* redis://host[:port][/db] or unix:///path[?db=N]. Returns NULL or why not. */
static const char *check_redis_url(const char *s)
{
	if (strncmp(s, "unix://", 7) == 0) {
		const char *path = s + 7;
		size_t plen = strcspn(path, "?");

		if (path[0] != '/')
			return "needs an absolute socket path (unix:///path)";
		if (plen > UNIX_PATH_MAX_LEN)
			return "has a socket path that is too long";
		if (path[plen] == '\0')
			return NULL;
		if (strncmp(path + plen, "?db=", 4) != 0 ||
		    !parse_db(path + plen + 4, strlen(path + plen + 4)))
			return "has a bad database (unix:///path?db=N)";
		return NULL;
	}
	if (strncmp(s, "redis://", 8) == 0) {
		const char *auth = s + 8;
		size_t alen = strcspn(auth, "/");
		const char *colon, *host = auth;
		size_t host_len;
		bool bracketed = false, loopback;
		enum host_check hc;

		if (alen == 0)
			return "has no host";
		if (auth[0] == '[') {
			const char *close = memchr(auth, ']', alen);

			if (!close)
				return "has no ']' after its IPv6 address";
			host = auth + 1;
			host_len = (size_t)(close - host);
			bracketed = true;
			colon = close + 1 < auth + alen ? close + 1 : NULL;
			if (colon && *colon != ':')
				return "has junk after its IPv6 address";
		} else {
			colon = memchr(auth, ':', alen);
			host_len = colon ? (size_t)(colon - auth) : alen;
		}
		hc = check_host(host, host_len, bracketed, &loopback);
		if (hc != HOST_IP && hc != HOST_NAME)
			return "has an invalid host";
		if (colon && !parse_port(colon + 1, (size_t)(auth + alen - colon - 1), 1))
			return "has a bad port (1..65535)";
		if (auth[alen] == '/' && !parse_db(auth + alen + 1, strlen(auth + alen + 1)))
			return "has a bad database number";
		return NULL;
	}
	return "is not redis://host[:port][/db] or unix:///path[?db=N]";
}

static char *field_at(struct config *cfg, const struct key_def *k)
{
	return (char *)cfg + k->offset;
}

static const char *cfield_at(const struct config *cfg, const struct key_def *k)
{
	return (const char *)cfg + k->offset;
}

/* "passthrough, inject": the names a message lists (aliases left out). */
static void enum_list(const struct enum_name *names, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (; names->name; names++) {
		int r;

		if (names->is_alias)
			continue;
		r = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", names->name);
		if (r < 0 || (size_t)r >= len - used)
			return;
		used += (size_t)r;
	}
}

/*
 * Split a listen list, check each entry, and build its normalised form (entries trimmed,
 * joined by ','). Returns false with *why set.
 */
static bool parse_listen(const struct key_def *k, const char *value, union value *out, char *why,
                         size_t why_len)
{
	size_t n_items = 0, vlen = strlen(value);
	char *norm = malloc(vlen + 1);
	size_t used = 0;
	const char *p = value;

	if (!norm) {
		snprintf(why, why_len, "out of memory");
		return false;
	}
	while (vlen > 0) {
		const char *end = strchr(p, ',');
		const char *e = end ? end : p + strlen(p);
		const char *b = p;
		const char *reason;
		bool remote;

		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (b == e) {
			snprintf(why, why_len, "'%s' has an empty entry", value);
			goto fail;
		}
		if (++n_items > k->max) {
			snprintf(why, why_len, "more than %llu addresses",
			         (unsigned long long)k->max);
			goto fail;
		}
		reason = check_listen_item(b, (size_t)(e - b), &remote);
		if (reason) {
			snprintf(why, why_len, "'%.*s': %s", (int)(e - b), b, reason);
			goto fail;
		}
		if (used)
			norm[used++] = ',';
		memcpy(norm + used, b, (size_t)(e - b));
		used += (size_t)(e - b);
		if (!end)
			break;
		p = end + 1;
	}
	norm[used] = '\0';
	if (n_items < k->min) {
		snprintf(why, why_len, "needs at least one address");
		goto fail;
	}
	out->s = norm;
	return true;
fail:
	free(norm);
	return false;
}

/*
 * Parse `value` for key k into *out (strings are allocated). On failure, writes the reason
 * (which may quote the value) into why and returns false.
 */
static bool parse_value(const struct key_def *k, const char *value, union value *out, char *why,
                        size_t why_len)
{
	enum parse_status st;
	char lo[32], hi[32];
	size_t len = strlen(value);
	const char *reason;

	switch (k->type) {
	case KEY_STRING: {
		size_t i;

		if (len < k->min) {
			snprintf(why, why_len, "must not be empty");
			return false;
		}
		if (len > k->max) {
			snprintf(why, why_len, "is longer than %llu bytes",
			         (unsigned long long)k->max);
			return false;
		}
		for (i = 0; k->alphabet && i < len; i++) {
			if (!k->alphabet->is_ok((unsigned char)value[i])) {
				snprintf(why, why_len, "'%s' may only contain %s", value,
				         k->alphabet->desc);
				return false;
			}
		}
		out->s = strdup(value);
		if (!out->s) {
			snprintf(why, why_len, "out of memory");
			return false;
		}
		return true;
	}
	case KEY_BOOL:
		if (config_parse_bool(value, &out->b) == 0)
			return true;
		snprintf(why, why_len, "'%s' is not a boolean (yes/no, true/false, on/off, 1/0)",
		         value);
		return false;
	case KEY_UINT32: {
		bool overflow;

		if (len == 0 || parse_digits(value, &out->u, &overflow) != len) {
			snprintf(why, why_len, "'%s' is not a number", value);
			return false;
		}
		if (overflow || out->u < k->min || out->u > k->max) {
			snprintf(why, why_len, "'%s' is out of range (%llu..%llu)", value,
			         (unsigned long long)k->min, (unsigned long long)k->max);
			return false;
		}
		return true;
	}
	case KEY_DURATION:
		st = parse_with_units(value, duration_units, true, &out->u);
		if (st == PARSE_OK && (out->u < k->min || out->u > k->max))
			st = PARSE_RANGE;
		switch (st) {
		case PARSE_OK:
			return true;
		case PARSE_NO_UNIT:
			snprintf(why, why_len, "'%s' needs a unit (ms, s, m, h, d)", value);
			return false;
		case PARSE_BAD_UNIT:
			snprintf(why, why_len, "'%s' has an unknown unit (ms, s, m, h, d)", value);
			return false;
		case PARSE_RANGE:
			format_duration(k->min, lo, sizeof(lo));
			format_duration(k->max, hi, sizeof(hi));
			snprintf(why, why_len, "'%s' is out of range (%s..%s)", value, lo, hi);
			return false;
		case PARSE_BAD:
		default:
			snprintf(why, why_len,
			         "'%s' is not a duration (e.g. 250ms, 10s, 5m, 1h, 2d)", value);
			return false;
		}
	case KEY_SIZE:
		st = parse_with_units(value, size_units, false, &out->u);
		if (st == PARSE_OK && (out->u < k->min || out->u > k->max))
			st = PARSE_RANGE;
		switch (st) {
		case PARSE_OK:
			return true;
		case PARSE_BAD_UNIT:
			snprintf(why, why_len,
			         "'%s' has an unknown unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)",
			         value);
			return false;
		case PARSE_RANGE:
			format_size(k->min, lo, sizeof(lo));
			format_size(k->max, hi, sizeof(hi));
			snprintf(why, why_len, "'%s' is out of range (%s..%s)", value, lo, hi);
			return false;
		case PARSE_BAD:
		case PARSE_NO_UNIT:
		default:
			snprintf(why, why_len, "'%s' is not a size (e.g. 512, 64KiB, 16MiB, 1GiB)",
			         value);
			return false;
		}
	case KEY_ENUM: {
		const struct enum_name *n;
		char list[128];

		for (n = k->names; n->name; n++) {
			if (strcasecmp(value, n->name) == 0) {
				out->e = n->value;
				return true;
			}
		}
		enum_list(k->names, list, sizeof(list));
		snprintf(why, why_len, "'%s' is not one of: %s", value, list);
		return false;
	}
	case KEY_MODE: {
		uint64_t v = 0;
		size_t i;

		for (i = 0; i < len && value[i] >= '0' && value[i] <= '7' && i < 8; i++)
			v = v * 8 + (uint64_t)(value[i] - '0');
		if (len == 0 || i != len) {
			snprintf(why, why_len, "'%s' is not an octal mode (e.g. 0660)", value);
			return false;
		}
		if (v < k->min || v > k->max) {
			snprintf(why, why_len, "'%s' is out of range (%#llo..%#llo)", value,
			         (unsigned long long)k->min, (unsigned long long)k->max);
			return false;
		}
		out->u = v;
		return true;
	}
	case KEY_LISTEN:
		return parse_listen(k, value, out, why, why_len);
	case KEY_URL:
	case KEY_REDIS_URL:
		if (len == 0 && k->min == 0) {
			reason = NULL;
		} else if (len == 0) {
			snprintf(why, why_len, "must not be empty");
			return false;
		} else if (strchr(value, '@')) {
			/* Never echo it: the part before '@' may be a password. */
			snprintf(why, why_len,
			         k->type == KEY_URL
			                 ? "user info (user:password@) is not allowed in a URL"
			                 : "a password in the URL is not allowed (use "
			                   "redis.password_file)");
			return false;
		} else {
			reason = k->type == KEY_URL ? check_url(value) : check_redis_url(value);
		}
		if (reason) {
			snprintf(why, why_len, "'%s' %s", value, reason);
			return false;
		}
		out->s = strdup(value);
		if (!out->s) {
			snprintf(why, why_len, "out of memory");
			return false;
		}
		return true;
	}
	snprintf(why, why_len, "unsupported key type");
	return false;
}

static void store_value(struct config *cfg, const struct key_def *k, const union value *v)
{
	char *f = field_at(cfg, k);

	switch (k->type) {
	case KEY_STRING:
	case KEY_LISTEN:
	case KEY_URL:
	case KEY_REDIS_URL: {
		char *old;

		memcpy(&old, f, sizeof(old));
		free(old);
		memcpy(f, &v->s, sizeof(v->s));
		break;
	}
	case KEY_BOOL:
		memcpy(f, &v->b, sizeof(bool));
		break;
	case KEY_UINT32:
	case KEY_DURATION:
	case KEY_MODE: {
		uint32_t u = (uint32_t)v->u; /* range-checked against a uint32 max */

		memcpy(f, &u, sizeof(u));
		break;
	}
	case KEY_SIZE:
		memcpy(f, &v->u, sizeof(v->u));
		break;
	case KEY_ENUM:
		memcpy(f, &v->e, sizeof(int));
		break;
	}
}

/* Set key i from `value`, or report why not. The key counts as set at `w` either way. */
static void set_key(struct loader *ld, size_t i, const char *value, const struct where *w)
{
	const struct key_def *k = &keys[i];
	char why[MAX_VALUE_LEN + 256];
	union value v;
	size_t len = strlen(value);

	ld->set_at[i] = *w;
	ld->is_bad[i] = true;
	if (has_control_char(value, len)) {
		add_error(ld, w, "%s.%s: value contains a control character", k->section, k->key);
		return;
	}
	if (len > MAX_VALUE_LEN) {
		add_error(ld, w, "%s.%s: value is longer than %d bytes", k->section, k->key,
		          MAX_VALUE_LEN);
		return;
	}
	memset(&v, 0, sizeof(v));
	if (!parse_value(k, value, &v, why, sizeof(why))) {
		/* '#' only starts a comment at the start of a line: say so when it looks meant. */
		bool hash = strstr(value, " #") || strstr(value, "\t#");

		add_error(ld, w, "%s.%s: %s%s", k->section, k->key, why,
		          hash ? " (inline comments start with ';')" : "");
		return;
	}
	store_value(ld->cfg, k, &v);
	/* store_value took v.s (memcpy into the field): clang-analyzer cannot follow it there. */
	ld->is_bad[i] = false; /* NOLINT(clang-analyzer-unix.Malloc) */
}

/* ---- lookup ---- */

static bool name_eq(const char *name, const char *s, size_t n)
{
	return strlen(name) == n && memcmp(name, s, n) == 0;
}

static size_t find_key(const char *section, size_t slen, const char *key, size_t klen)
{
	size_t i;

	for (i = 0; i < N_KEYS; i++) {
		if (name_eq(keys[i].section, section, slen) && name_eq(keys[i].key, key, klen))
			return i;
	}
	return SIZE_MAX;
}

static size_t key_index(const char *section, const char *key)
{
	return find_key(section, strlen(section), key, strlen(key));
}

static bool is_scalar_section(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(scalar_sections); i++) {
		if (name_eq(scalar_sections[i], s, n))
			return true;
	}
	return false;
}

static int find_map(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(map_sections); i++) {
		if (name_eq(map_sections[i].section, s, n))
			return (int)i;
	}
	return -1;
}

static struct config_map *map_at(struct config *cfg, int m)
{
	return (struct config_map *)(void *)((char *)cfg + map_sections[m].offset);
}

/* ---- map sections ---- */

static bool is_resource_id(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > MAX_NAME_LEN)
		return false;
	for (i = 0; i < n; i++) {
		if (!is_id_char((unsigned char)s[i]))
			return false;
	}
	return true;
}

static bool is_client_name(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > MAX_NAME_LEN)
		return false;
	for (i = 0; i < n; i++) {
		if (!is_token_char((unsigned char)s[i]))
			return false;
	}
	return true;
}

static bool has_suffix(const char *s, size_t n, const char *suffix)
{
	size_t sl = strlen(suffix);

	return n > sl && memcmp(s + n - sl, suffix, sl) == 0;
}

/* "id,id,..." with every id valid. */
static bool is_id_list(const char *s)
{
	const char *p = s;

	for (;;) {
		size_t n = strcspn(p, ",");

		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (!is_resource_id(p, n))
			return false;
		p += strcspn(p, ",");
		if (*p == '\0')
			return true;
		p++;
	}
}

/* A comma-separated list of file paths with no empty entry. */
static bool is_path_list(const char *s)
{
	const char *p = s;

	for (;;) {
		size_t n = strcspn(p, ",");
		size_t i;
		bool blank = true;

		for (i = 0; i < n; i++) {
			if (p[i] != ' ' && p[i] != '\t')
				blank = false;
		}
		if (blank)
			return false;
		p += n;
		if (*p == '\0')
			return true;
		p++;
	}
}

/* Check one map entry's name and value; reports and returns false when wrong. */
static bool check_map_entry(struct loader *ld, const struct where *w, int m, const char *name,
                            const char *value)
{
	const char *sec = map_sections[m].section;
	size_t n = strlen(name);

	switch (map_sections[m].kind) {
	case MAP_PIT:
		if (!is_resource_id(name, n)) {
			add_error(ld, w,
			          "[pit] '%s' is not a resource id (1 to 64 of A-Z a-z 0-9 _ -)",
			          name);
			return false;
		}
		break;
	case MAP_V1_KEYS:
		if (!is_resource_id(name, n)) {
			add_error(
			        ld, w,
			        "[v1_keys] '%s' is not a location id (1 to 64 of A-Z a-z 0-9 _ -) "
			        "or 'agency'",
			        name);
			return false;
		}
		break;
	case MAP_CLIENTS:
		if (has_suffix(name, n, ".resources")) {
			n -= strlen(".resources");
			if (is_client_name(name, n) && !is_id_list(value)) {
				add_error(ld, w,
				          "[clients] '%s': '%s' is not a comma-separated list of "
				          "resource ids",
				          name, value);
				return false;
			}
		} else if (has_suffix(name, n, ".read_only")) {
			bool b;

			n -= strlen(".read_only");
			if (is_client_name(name, n) && config_parse_bool(value, &b) != 0) {
				add_error(ld, w,
				          "[clients] '%s': '%s' is not a boolean (yes/no, "
				          "true/false, on/off, 1/0)",
				          name, value);
				return false;
			}
		}
		if (!is_client_name(name, n)) {
			add_error(ld, w,
			          "[clients] '%s' is not a client name "
			          "(1 to 64 of A-Z a-z 0-9 . _ -)",
			          name);
			return false;
		}
		break;
	}
	if (value[0] == '\0') {
		add_error(ld, w, "[%s] '%s': empty value (expected a file path)", sec, name);
		return false;
	}
	if (map_sections[m].kind != MAP_CLIENTS && !is_path_list(value)) {
		add_error(ld, w, "[%s] '%s': empty entry in the list of files", sec, name);
		return false;
	}
	return true;
}

/*
 * Add (file: once per name) or replace (-o: later wins) a map entry. Values are file paths the
 * credential modules read later; they are never echoed (a token pasted by mistake stays
 * private), except the .resources / .read_only settings, which are not secret.
 */
static void map_put(struct loader *ld, const struct where *w, int m, const char *name,
                    const char *value)
{
	struct config_map *map = map_at(ld->cfg, m);
	size_t i;
	char *nv;

	if (has_control_char(value, strlen(value))) {
		add_error(ld, w, "[%s] '%s': value contains a control character",
		          map_sections[m].section, name);
		return;
	}
	if (strlen(value) > MAX_VALUE_LEN) {
		add_error(ld, w, "[%s] '%s': value is longer than %d bytes",
		          map_sections[m].section, name, MAX_VALUE_LEN);
		return;
	}
	if (!check_map_entry(ld, w, m, name, value))
		return;
	for (i = 0; i < map->n; i++) {
		if (strcmp(map->v[i].name, name) != 0)
			continue;
		if (w->source == SOURCE_FILE && map->v[i].line > 0) {
			add_error(ld, w, "duplicate name '%s' in [%s] (first on line %d)", name,
			          map_sections[m].section, map->v[i].line);
			return;
		}
		nv = strdup(value);
		if (!nv) {
			add_error(ld, w, "out of memory");
			return;
		}
		free(map->v[i].value);
		map->v[i].value = nv;
		map->v[i].line = w->source == SOURCE_FILE ? w->line : 0;
		return;
	}
	struct config_map_entry *v = realloc(map->v, (map->n + 1) * sizeof(*v));

	if (!v) {
		add_error(ld, w, "out of memory");
		return;
	}
	map->v = v;
	v[map->n].name = strdup(name);
	v[map->n].value = strdup(value);
	v[map->n].line = w->source == SOURCE_FILE ? w->line : 0;
	if (!v[map->n].name || !v[map->n].value) {
		free(v[map->n].name);
		free(v[map->n].value);
		add_error(ld, w, "out of memory");
		return;
	}
	map->n++;
}

/* ---- the file ---- */

/* inih calls this for each `name = value` of the line the reader just handed over. */
static int on_ini_pair(void *user, const char *section, const char *name, const char *value)
{
	struct loader *ld = user;
	struct where w = { .source = SOURCE_FILE, .line = ld->line };
	size_t slen = strlen(section);
	size_t i;
	int m;

	if (name[0] == '\0') {
		add_error(ld, &w, "missing key name before '='");
		return 1;
	}
	if (slen == 0) {
		add_error(ld, &w, "key '%s' is outside any [section]", name);
		return 1;
	}
	m = find_map(section, slen);
	if (m >= 0) {
		map_put(ld, &w, m, name, value);
		return 1;
	}
	if (!is_scalar_section(section, slen))
		return 1; /* the reader reported the section header */
	i = find_key(section, slen, name, strlen(name));
	if (i == SIZE_MAX) {
		add_error(ld, &w, "unknown key '%s' in [%s]", name, section);
		return 1;
	}
	if (ld->set_at[i].source == SOURCE_FILE) {
		add_error(ld, &w, "duplicate key '%s' in [%s] (first on line %d)", name, section,
		          ld->set_at[i].line);
		return 1;
	}
	set_key(ld, i, value, &w);
	return 1;
}

static bool is_blank(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/*
 * Like inih's search for a delimiter: the first of `chars`, or the start of an inline comment
 * (';' after whitespace), or the end. Returns its offset.
 */
static size_t find_delim(const char *s, size_t n, const char *chars)
{
	bool was_space = false;
	size_t i;

	for (i = 0; i < n; i++) {
		if (strchr(chars, s[i]) || (was_space && s[i] == ';'))
			return i;
		was_space = is_blank((unsigned char)s[i]);
	}
	return n;
}

/*
 * Check one physical line before inih sees it. Returns the text to hand over: the line itself,
 * "" (drop it, already reported) or a placeholder section that makes inih ignore the keys that
 * follow a broken header (instead of filing them under the previous section).
 */
static const char *vet_line(struct loader *ld, const char *p, size_t n, size_t max)
{
	struct where w = { .source = SOURCE_FILE, .line = ld->line };
	size_t b = 0, e = n, d, q;
	const char *dropped;

	if (ld->line == 1 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
		b = 3; /* inih skips a UTF-8 BOM */
	if (n > b && p[n - 1] == '\r')
		e = n - 1;
	while (b < e && is_blank((unsigned char)p[b]))
		b++;
	/* A rejected line that looked like a header: ignore the keys under it, not misfile them. */
	dropped = b < e && p[b] == '[' ? "[?]" : "";
	if (n > max) {
		add_error(ld, &w, "line is longer than %zu bytes", max);
		return dropped;
	}
	if (has_control_char(p + b, e - b) || has_control_char(p, b)) {
		add_error(ld, &w, "line contains a control character");
		return dropped;
	}
	while (e > b && is_blank((unsigned char)p[e - 1]))
		e--;
	if (b == e || p[b] == ';' || p[b] == '#')
		return NULL; /* blank or comment: hand over as is */
	if (b > 0 && is_blank((unsigned char)p[0])) {
		add_error(ld, &w,
		          "line starts with whitespace (continuation lines are not supported)");
		return dropped;
	}
	if (p[b] == '[') {
		d = b + 1 + find_delim(p + b + 1, e - b - 1, "]");
		if (d == e || p[d] != ']') {
			add_error(ld, &w, "missing ']' in section header");
			return "[?]";
		}
		q = d + 1;
		while (q < e && is_blank((unsigned char)p[q]))
			q++;
		/* inih ignores the rest of the line; only a comment belongs there */
		if (q < e && (q == d + 1 || (p[q] != ';' && p[q] != '#')))
			add_error(ld, &w, "unexpected text after ']'");
		if (!is_scalar_section(p + b + 1, d - b - 1) && find_map(p + b + 1, d - b - 1) < 0)
			add_error(ld, &w, "unknown section [%.*s]", (int)(d - b - 1), p + b + 1);
		return NULL;
	}
	/* inih also splits at ':', so "A:B = /x" would quietly become A = "B = /x": refuse it. */
	d = b + find_delim(p + b, e - b, "=:");
	if (d < e && p[d] == ':') {
		add_error(ld, &w,
		          "expected 'key = value' (':' does not separate a key from its value)");
		return "";
	}
	if (d == e || p[d] != '=') {
		add_error(ld, &w, "expected 'key = value'");
		return "";
	}
	return NULL;
}

/* inih's reader: one physical line per call, vetted. `size` is inih's buffer size. */
static char *read_line(char *buf, int size, void *stream)
{
	struct loader *ld = stream;
	const char *p, *nl;
	const char *text;
	size_t n, max;

	if (size < 3 || ld->pos >= ld->len)
		return NULL;
	/* fgets semantics: at most size - 1 bytes, and we always add '\n'. */
	max = (size_t)size - 2;
	p = ld->text + ld->pos;
	nl = memchr(p, '\n', ld->len - ld->pos);
	n = nl ? (size_t)(nl - p) : ld->len - ld->pos;
	ld->pos += n + (nl ? 1 : 0);
	ld->line++;
	text = vet_line(ld, p, n, max);
	if (text) {
		p = text;
		n = strlen(text);
	}
	memcpy(buf, p, n);
	buf[n] = '\n';
	buf[n + 1] = '\0';
	return buf;
}

/* ---- environment and -o ---- */

static bool is_harness_variable(const char *name, size_t n)
{
	static const char *const ignored[] = { "GHLPROXY_SRCDIR", "GHLPROXY_BUILDDIR",
		                               "GHLPROXY_BIN", "GHLPROXY_MOCK_BIN" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(ignored); i++) {
		if (name_eq(ignored[i], name, n))
			return true;
	}
	return n >= 14 && memcmp(name, "GHLPROXY_TEST_", 14) == 0;
}

/* Does the upper-case `s` (n bytes) spell `lower` in upper case? */
static bool upper_eq(const char *lower, const char *s, size_t n)
{
	size_t i;

	if (strlen(lower) != n)
		return false;
	for (i = 0; i < n; i++) {
		char c = lower[i];

		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		if (c != s[i])
			return false;
	}
	return true;
}

/* GHLPROXY_<SECTION>_<KEY>=value: SECTION has no '_', KEY may. */
static void apply_env(struct loader *ld, const char *entry)
{
	static const char prefix[] = "GHLPROXY_";
	const size_t plen = sizeof(prefix) - 1;
	const char *eq = strchr(entry, '=');
	struct where w = { .source = SOURCE_ENV, .what = entry };
	const char *sec, *us, *key;
	size_t i;

	if (strncmp(entry, prefix, plen) != 0 || !eq)
		return;
	w.what_len = (size_t)(eq - entry);
	if (is_harness_variable(entry, w.what_len))
		return;
	if (has_control_char(entry, w.what_len)) {
		w.what = "GHLPROXY_...";
		w.what_len = strlen(w.what);
		add_error(ld, &w, "variable name contains a control character");
		return;
	}
	sec = entry + plen;
	us = memchr(sec, '_', (size_t)(eq - sec));
	if (!us) {
		add_error(ld, &w, "unknown key");
		return;
	}
	key = us + 1;
	for (i = 0; i < ARRAY_SIZE(map_sections); i++) {
		if (upper_eq(map_sections[i].section, sec, (size_t)(us - sec))) {
			add_error(ld, &w, "[%s] cannot be set from the environment",
			          map_sections[i].section);
			return;
		}
	}
	/* v1_keys has an underscore, so GHLPROXY_V1_KEYS_x splits as section "V1". */
	if (strncmp(sec, "V1_KEYS", 7) == 0 && (sec[7] == '_' || sec[7] == '=')) {
		add_error(ld, &w, "[v1_keys] cannot be set from the environment");
		return;
	}
	for (i = 0; i < N_KEYS; i++) {
		if (upper_eq(keys[i].section, sec, (size_t)(us - sec)) &&
		    upper_eq(keys[i].key, key, (size_t)(eq - key))) {
			set_key(ld, i, eq + 1, &w);
			return;
		}
	}
	add_error(ld, &w, "unknown key");
}

/* -o section.key=value; map sections too (-o pit.LOC123=/path, -o clients.ci.read_only=yes). */
static void apply_override(struct loader *ld, const char *arg, size_t index)
{
	const char *eq = strchr(arg, '=');
	const char *dot = strchr(arg, '.');
	struct where w = { .source = SOURCE_CMDLINE, .what = arg };
	char placeholder[48];
	size_t i;
	int m;

	/* Until the key is known, the value may be anything, even a secret typed by mistake. */
	w.hide_value = eq != NULL;
	w.what_len = eq ? (size_t)(eq - arg) : strlen(arg);
	if (has_control_char(arg, strlen(arg))) {
		snprintf(placeholder, sizeof(placeholder), "(argument %zu)", index + 1);
		w.what = placeholder;
		w.what_len = strlen(placeholder);
		w.hide_value = false;
		add_error(ld, &w, "contains a control character");
		return;
	}
	if (!eq || !dot || dot > eq || dot == arg || dot + 1 == eq) {
		add_error(ld, &w, "expected section.key=value");
		return;
	}
	m = find_map(arg, (size_t)(dot - arg));
	if (m >= 0) {
		char *name = strndup(dot + 1, (size_t)(eq - dot - 1));

		if (!name) {
			add_error(ld, &w, "out of memory");
			return;
		}
		map_put(ld, &w, m, name, eq + 1);
		free(name);
		return;
	}
	if (!is_scalar_section(arg, (size_t)(dot - arg))) {
		add_error(ld, &w, "unknown section [%.*s]", (int)(dot - arg), arg);
		return;
	}
	i = find_key(arg, (size_t)(dot - arg), dot + 1, (size_t)(eq - dot - 1));
	if (i == SIZE_MAX) {
		add_error(ld, &w, "unknown key '%.*s' in [%.*s]", (int)(eq - dot - 1), dot + 1,
		          (int)(dot - arg), arg);
		return;
	}
	/* A known key's value is echoed with the argument, except a URL with user info: the part
	 * before '@' may be a password (parse_value refuses it without quoting it, too). */
	w.hide_value = (keys[i].type == KEY_URL || keys[i].type == KEY_REDIS_URL) &&
	               strchr(eq + 1, '@') != NULL;
	w.what_len = w.hide_value ? (size_t)(eq - arg) : strlen(arg);
	set_key(ld, i, eq + 1, &w);
}

/* ---- rules across keys ---- */

/* The later (higher-precedence) of the places two keys were set: where to point the user. */
static const struct where *rule_where(const struct loader *ld, size_t a, size_t b)
{
	return ld->set_at[b].source > ld->set_at[a].source ? &ld->set_at[b] : &ld->set_at[a];
}

static bool rule_usable(const struct loader *ld, size_t a, size_t b)
{
	return a != SIZE_MAX && b != SIZE_MAX && !ld->is_bad[a] && !ld->is_bad[b];
}

/*
 * Off-loopback listeners need a reason: client keys ([clients]) for the proxy, an admin key
 * for the admin endpoints, or server.allow_remote. The list is already normalised.
 */
static void check_loopback(struct loader *ld, size_t k, const char *need)
{
	const char *p;

	memcpy(&p, field_at(ld->cfg, &keys[k]), sizeof(p));
	while (p && *p) {
		size_t n = strcspn(p, ",");
		bool remote;

		if (!check_listen_item(p, n, &remote) && remote)
			add_error(ld, &ld->set_at[k],
			          "%s.%s: '%.*s' is not a loopback address (%s)", keys[k].section,
			          keys[k].key, (int)n, p, need);
		p += n + (p[n] == ',');
	}
}

static void check_rules(struct loader *ld)
{
	struct config *c = ld->cfg;
	char a[32], b[32];
	size_t guard = key_index("limits", "guard"), window = key_index("limits", "window");
	size_t backend = key_index("limits", "backend"), rurl = key_index("redis", "url");
	size_t line = key_index("server", "max_request_line");
	size_t hdr = key_index("server", "max_header_size");
	size_t qkey = key_index("limits", "max_queue_per_key");
	size_t qall = key_index("limits", "max_queue");
	size_t cid = key_index("oauth", "client_id");
	size_t csec = key_index("oauth", "client_secret_file");
	size_t listen = key_index("server", "listen");
	size_t admin = key_index("server", "admin_listen");
	size_t remote = key_index("server", "allow_remote");
	size_t akey = key_index("admin", "key_file");
	size_t i, j;

	if (rule_usable(ld, guard, window) && c->limits.guard_ms >= c->limits.window_ms) {
		format_duration(c->limits.guard_ms, a, sizeof(a));
		format_duration(c->limits.window_ms, b, sizeof(b));
		add_error(ld, rule_where(ld, guard, window),
		          "limits.guard (%s) must be shorter than limits.window (%s)", a, b);
	}
	if (rule_usable(ld, backend, rurl) && c->limits.backend == CONFIG_BACKEND_REDIS &&
	    c->redis.url[0] == '\0')
		add_error(ld, rule_where(ld, backend, rurl),
		          "limits.backend = redis needs redis.url");
	if (rule_usable(ld, line, hdr) && c->server.max_request_line > c->server.max_header_size) {
		format_size(c->server.max_request_line, a, sizeof(a));
		format_size(c->server.max_header_size, b, sizeof(b));
		add_error(
		        ld, rule_where(ld, line, hdr),
		        "server.max_request_line (%s) must not exceed server.max_header_size (%s)",
		        a, b);
	}
	if (rule_usable(ld, qkey, qall) && c->limits.max_queue_per_key > c->limits.max_queue)
		add_error(ld, rule_where(ld, qkey, qall),
		          "limits.max_queue_per_key (%u) must not exceed limits.max_queue (%u)",
		          c->limits.max_queue_per_key, c->limits.max_queue);
	if (rule_usable(ld, cid, csec) &&
	    (c->oauth.client_id[0] == '\0') != (c->oauth.client_secret_file[0] == '\0'))
		add_error(ld, rule_where(ld, cid, csec),
		          c->oauth.client_id[0] ? "oauth.client_id needs oauth.client_secret_file"
		                                : "oauth.client_secret_file needs oauth.client_id");
	if (rule_usable(ld, listen, remote) && !c->server.allow_remote && c->clients.n == 0)
		check_loopback(ld, listen, "set server.allow_remote = yes or add [clients] keys");
	if (rule_usable(ld, admin, remote) && rule_usable(ld, akey, akey) &&
	    !c->server.allow_remote && c->admin.key_file[0] == '\0')
		check_loopback(ld, admin, "set server.allow_remote = yes or admin.key_file");
	if (rule_usable(ld, listen, admin)) {
		const char *p;

		for (p = c->server.admin_listen; *p;) {
			size_t n = strcspn(p, ",");
			const char *q;

			for (q = c->server.listen; *q;) {
				size_t m = strcspn(q, ",");

				/* Port 0 means "any free port": two of them never collide. */
				bool any_port = n >= 2 && p[n - 2] == ':' && p[n - 1] == '0';
				if (m == n && memcmp(p, q, n) == 0 && !any_port)
					add_error(ld, rule_where(ld, admin, listen),
					          "server.admin_listen: '%.*s' is also in "
					          "server.listen",
					          (int)n, p);
				q += m + (q[m] == ',');
			}
			p += n + (p[n] == ',');
		}
	}
	/* [clients] x.resources / x.read_only need the client x itself. */
	for (i = 0; i < c->clients.n; i++) {
		const struct config_map_entry *e = &c->clients.v[i];
		size_t n = strlen(e->name);
		bool found = false;
		struct where w = { .source = SOURCE_FILE, .line = e->line };
		char what[MAX_NAME_LEN + 32];

		if (has_suffix(e->name, n, ".resources"))
			n -= strlen(".resources");
		else if (has_suffix(e->name, n, ".read_only"))
			n -= strlen(".read_only");
		else
			continue;
		for (j = 0; j < c->clients.n && !found; j++)
			found = name_eq(c->clients.v[j].name, e->name, n);
		if (found)
			continue;
		if (e->line == 0) {
			/* set by -o (map entries come from the file or the command line only) */
			w.source = SOURCE_CMDLINE;
			w.hide_value = true;
			snprintf(what, sizeof(what), "clients.%s", e->name);
			w.what = what;
			w.what_len = strlen(what);
		}
		add_error(ld, &w, "[clients] '%s': no client '%.*s' (add '%.*s = /path/to/key')",
		          e->name, (int)n, e->name, (int)n, e->name);
	}
}

/* ---- loading ---- */

static struct config *load(const char *text, size_t len, const char *origin, const char *path,
                           char *const *envp, const char *const *overrides, size_t n_overrides,
                           struct config_errors *errs)
{
	struct loader *ld = calloc(1, sizeof(*ld));
	struct config *cfg = calloc(1, sizeof(*cfg));
	struct where def = { .source = SOURCE_DEFAULT };
	struct config *result = NULL;
	size_t i;

	if (!ld || !cfg) {
		if (!ld) {
			struct loader tmp = { .errs = errs, .origin = origin };

			add_error(&tmp, &def, "out of memory");
		} else {
			ld->errs = errs;
			add_error(ld, &def, "out of memory");
		}
		free(ld);
		free(cfg);
		return NULL;
	}
	ld->cfg = cfg;
	ld->errs = errs;
	ld->origin = origin ? origin : "(config)";
	for (i = 0; i < N_KEYS; i++)
		set_key(ld, i, keys[i].default_value, &def);
	if (path) {
		cfg->path = strdup(path);
		if (!cfg->path)
			add_error(ld, &def, "out of memory");
	}
	if (text) {
		int r;

		ld->text = text;
		ld->len = len;
		r = ini_parse_stream(read_line, ld, on_ini_pair, ld);
		if (r != 0) {
			/* The reader leaves inih nothing to reject; this is a safety net. */
			struct where w = { .source = SOURCE_FILE, .line = r > 0 ? r : 0 };

			add_error(ld, &w, r > 0 ? "syntax error" : "cannot parse (out of memory)");
		}
	}
	for (i = 0; envp && envp[i]; i++)
		apply_env(ld, envp[i]);
	for (i = 0; overrides && i < n_overrides; i++) {
		if (overrides[i])
			apply_override(ld, overrides[i], i);
	}
	check_rules(ld);
	if (ld->n_errors == 0)
		result = cfg;
	else
		config_free(cfg);
	free(ld);
	return result;
}

struct config *config_load_string(const char *text, const char *origin, char *const *envp,
                                  const char *const *overrides, size_t n_overrides,
                                  struct config_errors *errs)
{
	return load(text, text ? strlen(text) : 0, origin, NULL, envp, overrides, n_overrides,
	            errs);
}

/* The whole file, or a negative errno. */
static int read_file(const char *path, char **out, size_t *out_len)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	int fd, err = 0;

	if (!buf)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		err = -errno;
		free(buf);
		return err;
	}
	for (;;) {
		ssize_t r;

		if (len == cap) {
			char *nb;

			if (cap >= MAX_FILE_SIZE) {
				err = -EFBIG;
				break;
			}
			cap *= 2;
			nb = realloc(buf, cap);
			if (!nb) {
				err = -ENOMEM;
				break;
			}
			buf = nb;
		}
		r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			err = -errno;
			break;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	if (err) {
		free(buf);
		return err;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

struct config *config_load(const char *path, char *const *envp, const char *const *overrides,
                           size_t n_overrides, struct config_errors *errs)
{
	struct config *cfg;
	char *text = NULL;
	size_t len = 0;
	int r;

	if (path) {
		r = read_file(path, &text, &len);
		if (r < 0) {
			struct loader tmp = { .errs = errs, .origin = path };
			struct where w = { .source = SOURCE_FILE, .line = 0 };

			add_error(&tmp, &w, "cannot read: %s", strerror(-r));
			return NULL;
		}
	}
	cfg = load(text, len, path, path, envp, overrides, n_overrides, errs);
	free(text);
	return cfg;
}

/* ---- the rest of the API ---- */

void config_free(struct config *cfg)
{
	size_t i, j;

	if (!cfg)
		return;
	for (i = 0; i < N_KEYS; i++) {
		switch (keys[i].type) {
		case KEY_STRING:
		case KEY_LISTEN:
		case KEY_URL:
		case KEY_REDIS_URL: {
			char *s;

			memcpy(&s, field_at(cfg, &keys[i]), sizeof(s));
			free(s);
			break;
		}
		default:
			break;
		}
	}
	for (i = 0; i < ARRAY_SIZE(map_sections); i++) {
		struct config_map *map = map_at(cfg, (int)i);

		for (j = 0; j < map->n; j++) {
			free(map->v[j].name);
			free(map->v[j].value);
		}
		free(map->v);
	}
	free(cfg->path);
	free(cfg);
}

void config_errors_deinit(struct config_errors *errs)
{
	size_t i;

	if (!errs)
		return;
	for (i = 0; i < errs->n; i++)
		free(errs->v[i]);
	free(errs->v);
	errs->v = NULL;
	errs->n = 0;
}

static bool same_value(const struct config *a, const struct config *b, const struct key_def *k)
{
	const char *fa = cfield_at(a, k), *fb = cfield_at(b, k);

	switch (k->type) {
	case KEY_STRING:
	case KEY_LISTEN:
	case KEY_URL:
	case KEY_REDIS_URL: {
		const char *sa, *sb;

		memcpy(&sa, fa, sizeof(sa));
		memcpy(&sb, fb, sizeof(sb));
		return strcmp(sa ? sa : "", sb ? sb : "") == 0;
	}
	case KEY_BOOL:
		return memcmp(fa, fb, sizeof(bool)) == 0;
	case KEY_UINT32:
	case KEY_DURATION:
	case KEY_MODE:
		return memcmp(fa, fb, sizeof(uint32_t)) == 0;
	case KEY_SIZE:
		return memcmp(fa, fb, sizeof(uint64_t)) == 0;
	case KEY_ENUM:
		return memcmp(fa, fb, sizeof(int)) == 0;
	}
	return false;
}

int config_diff_static(const struct config *a, const struct config *b, char *buf, size_t len)
{
	size_t i, used = 0;
	int n = 0;

	if (!a || !b)
		return -EINVAL;
	if (buf && len)
		buf[0] = '\0';
	for (i = 0; i < N_KEYS; i++) {
		if (!(keys[i].flags & KEY_STATIC) || same_value(a, b, &keys[i]))
			continue;
		if (buf && used < len) {
			int r = snprintf(buf + used, len - used, "%s%s.%s", n ? ", " : "",
			                 keys[i].section, keys[i].key);

			used = r < 0 ? len : used + (size_t)r;
		}
		n++;
	}
	return n;
}

char *config_store_path(const struct config *cfg)
{
	const char *dir = getenv("STATE_DIRECTORY");
	char *out = NULL;
	size_t n;

	if (cfg && cfg->store.path && cfg->store.path[0])
		return strdup(cfg->store.path);
	/* systemd sets a colon-separated list when StateDirectory= names several. */
	n = dir ? strcspn(dir, ":") : 0;
	if (n == 0)
		return strdup("/var/lib/ghlproxy/tokens.json");
	while (n > 0 && dir[n - 1] == '/')
		n--; /* "/" becomes "" and the result "/tokens.json" */
	if (asprintf(&out, "%.*s/tokens.json", (int)n, dir) < 0)
		return NULL;
	return out;
}

void config_keys_foreach(config_key_cb cb, void *arg)
{
	size_t i;

	for (i = 0; i < N_KEYS; i++)
		cb(keys[i].section, keys[i].key, keys[i].default_value, keys[i].help, arg);
}
