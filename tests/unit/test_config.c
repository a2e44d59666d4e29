/*
 * test_config.c: the configuration loader. Defaults, every kind of bad input with its exact
 * message and line, units, environment and -o precedence, reload-static keys, the store path,
 * and that conf/ghlproxy.conf documents every key with its real default.
 */
#define _GNU_SOURCE

#include "src/config.h"
#include "build_config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* All errors, one per line, so a table row states exactly what the user would see. */
static char *join_errors(const struct config_errors *e)
{
	size_t i, len = 1;
	char *s;

	for (i = 0; i < e->n; i++)
		len += strlen(e->v[i]) + 1;
	s = malloc(len);
	cr_assert_not_null(s);
	s[0] = '\0';
	for (i = 0; i < e->n; i++) {
		if (i)
			strcat(s, "\n");
		strcat(s, e->v[i]);
	}
	return s;
}

static struct config *load_text(const char *text, struct config_errors *errs)
{
	return config_load_string(text, "t.conf", NULL, NULL, 0, errs);
}

/* Load text that must be valid; fails the test with every message otherwise. */
static struct config *load_ok(const char *text, char *const *envp, const char *const *ov,
                              size_t n_ov)
{
	struct config_errors errs = { 0 };
	struct config *c = config_load_string(text, "t.conf", envp, ov, n_ov, &errs);
	char *got = join_errors(&errs);

	cr_assert_not_null(c, "expected success for:\n%s\ngot:\n%s", text, got);
	cr_assert_eq(errs.n, 0, "%s", got);
	free(got);
	config_errors_deinit(&errs);
	return c;
}

static void assert_defaults(const struct config *c)
{
	cr_assert_str_eq(c->server.listen, "127.0.0.1:8080");
	cr_assert_str_eq(c->server.admin_listen, "127.0.0.1:8081");
	cr_assert_eq(c->server.mode, CONFIG_MODE_PASSTHROUGH);
	cr_assert_eq(c->server.max_body, 128ULL << 20);
	cr_assert_eq(c->server.max_header_size, 64ULL << 10);
	cr_assert_eq(c->server.max_request_line, 16ULL << 10);
	cr_assert_eq(c->server.max_headers, 100);
	cr_assert_eq(c->server.header_timeout_ms, 10000);
	cr_assert_eq(c->server.body_timeout_ms, 30000);
	cr_assert_eq(c->server.idle_timeout_ms, 60000);
	cr_assert_eq(c->server.max_connections, 4096);
	cr_assert_eq(c->server.drain_timeout_ms, 25000);
	cr_assert_eq(c->server.allow_remote, false);
	cr_assert_str_eq(c->server.socket_owner, "");
	cr_assert_str_eq(c->server.socket_group, "");
	cr_assert_eq(c->server.socket_mode, 0660);

	cr_assert_str_eq(c->admin.key_file, "");

	cr_assert_str_eq(c->upstream.url, "https://services.leadconnectorhq.com");
	cr_assert_str_eq(c->upstream.v1_url, "https://rest.gohighlevel.com");
	cr_assert_str_eq(c->upstream.ca_file, "");
	cr_assert_str_eq(c->upstream.default_version, "2021-07-28");
	cr_assert_str_eq(c->upstream.user_agent, "ghlproxy/" GHLPROXY_VERSION);
	cr_assert_eq(c->upstream.connect_timeout_ms, 5000);
	cr_assert_eq(c->upstream.timeout_ms, 60000);
	cr_assert_eq(c->upstream.max_connections, 512);
	cr_assert_eq(c->upstream.idle_timeout_ms, 50000);
	cr_assert_eq(c->upstream.max_header_size, 64ULL << 10);

	cr_assert_eq(c->limits.burst, 100);
	cr_assert_eq(c->limits.window_ms, 10000);
	cr_assert_eq(c->limits.daily, 200000);
	cr_assert_eq(c->limits.guard_ms, 250);
	cr_assert_eq(c->limits.max_wait_ms, 20000);
	cr_assert_eq(c->limits.backend, CONFIG_BACKEND_LOCAL);
	cr_assert_eq(c->limits.max_queue_per_key, 1000);
	cr_assert_eq(c->limits.max_queue, 100000);
	cr_assert_eq(c->limits.on_redis_down, CONFIG_REDIS_DOWN_LOCAL);

	cr_assert_str_eq(c->redis.url, "redis://127.0.0.1:6379/0");
	cr_assert_str_eq(c->redis.password_file, "");
	cr_assert_eq(c->redis.connect_timeout_ms, 1000);
	cr_assert_eq(c->redis.command_timeout_ms, 1000);
	cr_assert_eq(c->redis.instances, 0);
	cr_assert_str_eq(c->redis.key_prefix, "ghlproxy");

	cr_assert_str_eq(c->oauth.client_id, "");
	cr_assert_str_eq(c->oauth.client_secret_file, "");
	cr_assert_str_eq(c->oauth.redirect_uri, "");
	cr_assert_str_eq(c->oauth.scopes, "");
	cr_assert_str_eq(c->oauth.authorize_url,
	                 "https://marketplace.gohighlevel.com/v2/oauth/chooselocation");
	cr_assert_eq(c->oauth.refresh_ahead_ms, 600000);

	cr_assert_str_eq(c->store.path, "");
	cr_assert_str_eq(c->store.key_file, "");

	cr_assert_eq(c->log.level, CONFIG_LOG_INFO);
	cr_assert_eq(c->log.format, CONFIG_LOG_TEXT);

	cr_assert_eq(c->pit.n, 0);
	cr_assert_eq(c->v1_keys.n, 0);
	cr_assert_eq(c->clients.n, 0);
}

Test(config, empty_text_gives_defaults)
{
	struct config *c = load_ok("", NULL, NULL, 0);

	assert_defaults(c);
	cr_assert_null(c->path, "a string has no file to reload from");
	config_free(c);
}

Test(config, comments_and_empty_sections_give_defaults)
{
	struct config *c = load_ok("; comment\n# comment\n\n   \n  # indented comment\n"
	                           "[server]\n[limits] ; inline\n[log] # note\n[pit]\n",
	                           NULL, NULL, 0);

	assert_defaults(c);
	config_free(c);
}

/* ---- invalid files: exact messages, lines, order ---- */

struct bad_row {
	const char *text;
	const char *want; /* every error, '\n'-separated, in order */
};

static const struct bad_row bad_rows[] = {
	/* unknown key / section, syntax */
	{ "[server]\nfoo = 1\n", "t.conf:2: unknown key 'foo' in [server]" },
	{ "[nope]\nx = 1\ny = 2\n", "t.conf:1: unknown section [nope]" },
	{ "[Server]\nlisten = 127.0.0.1:1\n", "t.conf:1: unknown section [Server]" },
	{ "burst = 5\n", "t.conf:1: key 'burst' is outside any [section]" },
	{ "[server\nfoo = 1\n", "t.conf:1: missing ']' in section header" },
	{ "[server] junk\n", "t.conf:1: unexpected text after ']'" },
	{ "[server]\njust words\n", "t.conf:2: expected 'key = value'" },
	{ "[server]\n= 5\n", "t.conf:2: missing key name before '='" },
	{ "[server]\nmode: inject\n",
	  "t.conf:2: expected 'key = value' (':' does not separate a key from its value)" },
	{ "[pit]\nA:B = /x\n",
	  "t.conf:2: expected 'key = value' (':' does not separate a key from its value)" },
	{ "[limits]\nburst = 5\n  window = 1s\n",
	  "t.conf:3: line starts with whitespace (continuation lines are not supported)" },
	{ "[limits]\n\tburst = 5\n",
	  "t.conf:2: line starts with whitespace (continuation lines are not supported)" },
	{ "[server]\nmode = inject\x01\n", "t.conf:2: line contains a control character" },
	/* bool */
	{ "[server]\nallow_remote = maybe\n",
	  "t.conf:2: server.allow_remote: 'maybe' is not a boolean (yes/no, true/false, on/off, "
	  "1/0)" },
	/* numbers */
	{ "[limits]\nburst = abc\n", "t.conf:2: limits.burst: 'abc' is not a number" },
	{ "[limits]\nburst = -5\n", "t.conf:2: limits.burst: '-5' is not a number" },
	{ "[limits]\nburst = 1.5\n", "t.conf:2: limits.burst: '1.5' is not a number" },
	{ "[limits]\nburst = 0\n", "t.conf:2: limits.burst: '0' is out of range (1..1000000)" },
	{ "[limits]\nburst = 1000001\n",
	  "t.conf:2: limits.burst: '1000001' is out of range (1..1000000)" },
	{ "[limits]\ndaily = 99999999999999999999999\n",
	  "t.conf:2: limits.daily: '99999999999999999999999' is out of range (1..1000000000)" },
	{ "[limits]\nburst = 5 # five\n",
	  "t.conf:2: limits.burst: '5 # five' is not a number (inline comments start with ';')" },
	/* durations */
	{ "[limits]\nwindow = 10\n",
	  "t.conf:2: limits.window: '10' needs a unit (ms, s, m, h, d)" },
	{ "[limits]\nwindow = 10x\n",
	  "t.conf:2: limits.window: '10x' has an unknown unit (ms, s, m, h, d)" },
	{ "[limits]\nwindow = fast\n",
	  "t.conf:2: limits.window: 'fast' is not a duration (e.g. 250ms, 10s, 5m, 1h, 2d)" },
	{ "[limits]\nwindow = 2d\n", "t.conf:2: limits.window: '2d' is out of range (1ms..1d)" },
	{ "[limits]\nwindow = 0s\n", "t.conf:2: limits.window: '0s' is out of range (1ms..1d)" },
	{ "[limits]\nmax_wait = 99999999999999999999d\n",
	  "t.conf:2: limits.max_wait: '99999999999999999999d' is out of range (0ms..1h)" },
	/* sizes */
	{ "[server]\nmax_body = big\n",
	  "t.conf:2: server.max_body: 'big' is not a size (e.g. 512, 64KiB, 16MiB, 1GiB)" },
	{ "[server]\nmax_body = 10kb\n",
	  "t.conf:2: server.max_body: '10kb' has an unknown unit (B, KB, KiB, MB, MiB, GB, GiB, "
	  "TB, TiB)" },
	{ "[server]\nmax_header_size = 100\n",
	  "t.conf:2: server.max_header_size: '100' is out of range (1KiB..16MiB)" },
	{ "[upstream]\nmax_header_size = 17MiB\n",
	  "t.conf:2: upstream.max_header_size: '17MiB' is out of range (1KiB..16MiB)" },
	/* enums */
	{ "[server]\nmode = proxy\n",
	  "t.conf:2: server.mode: 'proxy' is not one of: passthrough, inject" },
	{ "[log]\nlevel = verbose\n",
	  "t.conf:2: log.level: 'verbose' is not one of: error, warning, info, debug" },
	{ "[limits]\nbackend = memcached\n",
	  "t.conf:2: limits.backend: 'memcached' is not one of: local, redis" },
	/* listen lists */
	{ "[server]\nlisten = 127.0.0.1\n",
	  "t.conf:2: server.listen: '127.0.0.1': missing port (host:port)" },
	{ "[server]\nlisten = 127.0.0.1:65536\n",
	  "t.conf:2: server.listen: '127.0.0.1:65536': port must be a number from 0 to 65535" },
	{ "[server]\nlisten = 127.0.0.1:http\n",
	  "t.conf:2: server.listen: '127.0.0.1:http': port must be a number from 0 to 65535" },
	{ "[server]\nlisten = 256.1.1.1:80\n",
	  "t.conf:2: server.listen: '256.1.1.1:80': not an IPv4 address" },
	{ "[server]\nlisten = ::1:80\n",
	  "t.conf:2: server.listen: '::1:80': IPv6 addresses need brackets ([IPv6]:port)" },
	{ "[server]\nlisten = [::g]:80\n",
	  "t.conf:2: server.listen: '[::g]:80': not an IPv6 address" },
	{ "[server]\nlisten = [::1]\n",
	  "t.conf:2: server.listen: '[::1]': missing port ([IPv6]:port)" },
	{ "[server]\nlisten = bad_host:80\n",
	  "t.conf:2: server.listen: 'bad_host:80': not a valid host name" },
	{ "[server]\nlisten = :80\n", "t.conf:2: server.listen: ':80': missing host" },
	{ "[server]\nlisten = unix:run/ghlproxy.sock\n",
	  "t.conf:2: server.listen: 'unix:run/ghlproxy.sock': the socket path must be absolute "
	  "(unix:/path)" },
	{ "[server]\nlisten = unix:/"
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	  "aaaaaaaaaaaaaaaaaaaa\n",
	  "t.conf:2: server.listen: 'unix:/"
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	  "aaaaaaaaaaaaaaaaaaaa': the socket path is too long" },
	{ "[server]\nlisten = 127.0.0.1:80,,127.0.0.1:81\n",
	  "t.conf:2: server.listen: '127.0.0.1:80,,127.0.0.1:81' has an empty entry" },
	{ "[server]\nlisten =\n", "t.conf:2: server.listen: needs at least one address" },
	/* URLs */
	{ "[upstream]\nurl = ftp://example.com\n",
	  "t.conf:2: upstream.url: 'ftp://example.com' must start with http:// or https://" },
	{ "[upstream]\nurl = https://user:pw@example.com\n",
	  "t.conf:2: upstream.url: user info (user:password@) is not allowed in a URL" },
	{ "[upstream]\nurl = https://example.com/?a=1\n",
	  "t.conf:2: upstream.url: 'https://example.com/?a=1' must not have a query or fragment" },
	{ "[upstream]\nv1_url = https://example.com#top\n",
	  "t.conf:2: upstream.v1_url: 'https://example.com#top' must not have a query or "
	  "fragment" },
	{ "[upstream]\nurl = https://example.com:0\n",
	  "t.conf:2: upstream.url: 'https://example.com:0' has a bad port (1..65535)" },
	{ "[upstream]\nurl = https://\n", "t.conf:2: upstream.url: 'https://' has no host" },
	{ "[upstream]\nurl = https://ex ample.com\n",
	  "t.conf:2: upstream.url: 'https://ex ample.com' has an invalid host" },
	{ "[upstream]\nurl = https://example.com/a b\n",
	  "t.conf:2: upstream.url: 'https://example.com/a b' has an invalid character in its "
	  "path" },
	{ "[upstream]\nurl =\n", "t.conf:2: upstream.url: must not be empty" },
	{ "[oauth]\nredirect_uri = localhost/cb\n",
	  "t.conf:2: oauth.redirect_uri: 'localhost/cb' must start with http:// or https://" },
	{ "[redis]\nurl = http://127.0.0.1\n",
	  "t.conf:2: redis.url: 'http://127.0.0.1' is not redis://host[:port][/db] or "
	  "unix:///path[?db=N]" },
	{ "[redis]\nurl = redis://:s3cret@127.0.0.1:6379/0\n",
	  "t.conf:2: redis.url: a password in the URL is not allowed (use redis.password_file)" },
	{ "[redis]\nurl = redis://127.0.0.1:6379/x\n",
	  "t.conf:2: redis.url: 'redis://127.0.0.1:6379/x' has a bad database number" },
	{ "[redis]\nurl = unix:///run/redis.sock?db=x\n",
	  "t.conf:2: redis.url: 'unix:///run/redis.sock?db=x' has a bad database "
	  "(unix:///path?db=N)" },
	{ "[redis]\nurl = unix://run/redis.sock\n",
	  "t.conf:2: redis.url: 'unix://run/redis.sock' needs an absolute socket path "
	  "(unix:///path)" },
	/* octal, strings */
	{ "[server]\nsocket_mode = 0668\n",
	  "t.conf:2: server.socket_mode: '0668' is not an octal mode (e.g. 0660)" },
	{ "[server]\nsocket_mode = 1777\n",
	  "t.conf:2: server.socket_mode: '1777' is out of range (0..0777)" },
	{ "[upstream]\ndefault_version = 2021 07 28\n",
	  "t.conf:2: upstream.default_version: '2021 07 28' may only contain A-Z a-z 0-9 . _ -" },
	{ "[redis]\nkey_prefix = a{b}\n",
	  "t.conf:2: redis.key_prefix: 'a{b}' may only contain A-Z a-z 0-9 . _ - :" },
	{ "[upstream]\nuser_agent =\n", "t.conf:2: upstream.user_agent: must not be empty" },
	/* duplicates */
	{ "[limits]\nburst = 5\nburst = 6\n",
	  "t.conf:3: duplicate key 'burst' in [limits] (first on line 2)" },
	{ "[limits]\nburst = x\n[server]\n[limits]\nburst = 6\n",
	  "t.conf:2: limits.burst: 'x' is not a number\n"
	  "t.conf:5: duplicate key 'burst' in [limits] (first on line 2)" },
	{ "[pit]\nLOC1 = /a\nLOC1 = /b\n",
	  "t.conf:3: duplicate name 'LOC1' in [pit] (first on line 2)" },
	/* map sections */
	{ "[pit]\nbad id! = /etc/pit\n",
	  "t.conf:2: [pit] 'bad id!' is not a resource id (1 to 64 of A-Z a-z 0-9 _ -)" },
	{ "[pit]\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA = /x\n",
	  "t.conf:2: [pit] 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' is "
	  "not a "
	  "resource id (1 to 64 of A-Z a-z 0-9 _ -)" },
	{ "[pit]\nLOC1 =\n", "t.conf:2: [pit] 'LOC1': empty value (expected a file path)" },
	{ "[pit]\nLOC1 = /a,,/b\n", "t.conf:2: [pit] 'LOC1': empty entry in the list of files" },
	{ "[v1_keys]\nloc/1 = /x\n",
	  "t.conf:2: [v1_keys] 'loc/1' is not a location id (1 to 64 of A-Z a-z 0-9 _ -) or "
	  "'agency'" },
	{ "[clients]\nbad name = /k\n",
	  "t.conf:2: [clients] 'bad name' is not a client name (1 to 64 of A-Z a-z 0-9 . _ -)" },
	{ "[clients]\nci = /k\nci.read_only = maybe\n",
	  "t.conf:3: [clients] 'ci.read_only': 'maybe' is not a boolean (yes/no, true/false, "
	  "on/off, 1/0)" },
	{ "[clients]\nci = /k\nci.resources = LOC1,,LOC2\n",
	  "t.conf:3: [clients] 'ci.resources': 'LOC1,,LOC2' is not a comma-separated list of "
	  "resource ids" },
	{ "[clients]\nci.resources = LOC1\n",
	  "t.conf:2: [clients] 'ci.resources': no client 'ci' (add 'ci = /path/to/key')" },
	/* rules across keys */
	{ "[limits]\nwindow = 1s\nguard = 1s\n",
	  "t.conf:3: limits.guard (1s) must be shorter than limits.window (1s)" },
	{ "[limits]\nwindow = 100ms\n",
	  "t.conf:2: limits.guard (250ms) must be shorter than limits.window (100ms)" },
	{ "[limits]\nbackend = redis\n[redis]\nurl =\n",
	  "t.conf:2: limits.backend = redis needs redis.url" },
	{ "[server]\nmax_request_line = 128KiB\n",
	  "t.conf:2: server.max_request_line (128KiB) must not exceed server.max_header_size "
	  "(64KiB)" },
	{ "[limits]\nmax_queue_per_key = 200000\n",
	  "t.conf:2: limits.max_queue_per_key (200000) must not exceed limits.max_queue (100000)" },
	{ "[oauth]\nclient_id = abc\n",
	  "t.conf:2: oauth.client_id needs oauth.client_secret_file" },
	{ "[oauth]\nclient_secret_file = /s\n",
	  "t.conf:2: oauth.client_secret_file needs oauth.client_id" },
	{ "[server]\nlisten = 0.0.0.0:8080\n",
	  "t.conf:2: server.listen: '0.0.0.0:8080' is not a loopback address (set "
	  "server.allow_remote = yes or add [clients] keys)" },
	{ "[server]\nadmin_listen = [::]:8081\n",
	  "t.conf:2: server.admin_listen: '[::]:8081' is not a loopback address (set "
	  "server.allow_remote = yes or admin.key_file)" },
	{ "[server]\nadmin_listen = 127.0.0.1:8080\n",
	  "t.conf:2: server.admin_listen: '127.0.0.1:8080' is also in server.listen" },
	/* a rule is not checked against a value that was already rejected */
	{ "[limits]\nwindow = 100\n",
	  "t.conf:2: limits.window: '100' needs a unit (ms, s, m, h, d)" },
	/* several errors, all reported, in file order, rules last */
	{ "[server]\nfoo = 1\nmode = x\n\n[limits]\nburst = 0\nwindow = 5\nguard = 20s\n[bad]\n"
	  "x = 1\n[log]\nlevel = warn\nformat = xml\n",
	  "t.conf:2: unknown key 'foo' in [server]\n"
	  "t.conf:3: server.mode: 'x' is not one of: passthrough, inject\n"
	  "t.conf:6: limits.burst: '0' is out of range (1..1000000)\n"
	  "t.conf:7: limits.window: '5' needs a unit (ms, s, m, h, d)\n"
	  "t.conf:9: unknown section [bad]\n"
	  "t.conf:13: log.format: 'xml' is not one of: text, json" },
	{ "[limits]\nguard = 20s\n[server]\nlisten = 0.0.0.0:1\n",
	  "t.conf:2: limits.guard (20s) must be shorter than limits.window (10s)\n"
	  "t.conf:4: server.listen: '0.0.0.0:1' is not a loopback address (set "
	  "server.allow_remote = yes or add [clients] keys)" },
};

Test(config, invalid_files_report_every_error_with_its_line)
{
	size_t i;

	cr_assert_geq(ARRAY_SIZE(bad_rows), 25);
	for (i = 0; i < ARRAY_SIZE(bad_rows); i++) {
		struct config_errors errs = { 0 };
		struct config *c = load_text(bad_rows[i].text, &errs);
		char *got = join_errors(&errs);

		cr_expect_null(c, "row %zu must fail:\n%s", i, bad_rows[i].text);
		cr_expect_str_eq(got, bad_rows[i].want, "row %zu:\n%s", i, bad_rows[i].text);
		free(got);
		config_free(c);
		config_errors_deinit(&errs);
	}
}

/* A line longer than inih's buffer must not be cut in two with the tail parsed as a new line. */
Test(config, long_line_cannot_smuggle_a_key)
{
	struct config_errors errs = { 0 };
	char text[512];
	char *got;
	struct config *c;

	snprintf(text, sizeof(text), "[limits]\nburst = 5%*s burst = 1\nwindow = 1s\n", 200, "");
	c = load_text(text, &errs);
	got = join_errors(&errs);
	cr_assert_null(c);
	cr_assert_str_eq(got, "t.conf:2: line is longer than 198 bytes");
	free(got);
	config_errors_deinit(&errs);
}

Test(config, line_of_198_bytes_is_accepted_199_is_not)
{
	char line[256], text[300];
	struct config_errors errs = { 0 };
	struct config *c;
	char *got;

	/* "LOC1 = /aaa...": 198 bytes */
	snprintf(line, sizeof(line), "LOC1 = /%0*d", 190, 0);
	cr_assert_eq(strlen(line), 198);
	snprintf(text, sizeof(text), "[pit]\n%s\n", line);
	c = load_ok(text, NULL, NULL, 0);
	cr_assert_eq(c->pit.n, 1);
	cr_assert_eq(strlen(c->pit.v[0].value), 191);
	config_free(c);

	snprintf(text, sizeof(text), "[pit]\n%s0\n", line);
	c = load_text(text, &errs);
	got = join_errors(&errs);
	cr_assert_null(c);
	cr_assert_str_eq(got, "t.conf:2: line is longer than 198 bytes");
	free(got);
	config_errors_deinit(&errs);
}

/* inih continues a value on an indented line; that must never change another key or section. */
Test(config, indented_lines_cannot_smuggle_keys_or_sections)
{
	static const char *const texts[] = {
		"[pit]\nLOC1 = /a\n  [server]\nmode = inject\n",
		"[server]\nmode = passthrough\n inject\n",
		"[pit]\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA = /a\n  /b\n",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(texts); i++) {
		struct config_errors errs = { 0 };
		struct config *c = load_text(texts[i], &errs);

		cr_expect_null(c, "text %zu", i);
		cr_expect_eq(errs.n, 1, "text %zu", i);
		if (errs.n == 1)
			cr_expect_str_eq(errs.v[0],
			                 "t.conf:3: line starts with whitespace (continuation "
			                 "lines are not supported)");
		config_errors_deinit(&errs);
	}
}

Test(config, secrets_are_not_echoed)
{
	static const char *const texts[] = {
		"[oauth]\nclient_secret = s3cr3t\n",
		"[upstream]\nurl = https://user:s3cr3t@example.com\n",
		"[redis]\nurl = redis://:s3cr3t@127.0.0.1/0\n",
		"[redis]\nurl = rediss://:s3cr3t@127.0.0.1/0\n",
		"[pit]\nnot valid = s3cr3t\n",
		"[pit]\nLOC1 = s3cr3t,\n",
		"[v1_keys]\nbad! = s3cr3t\n",
	};
	const char *const ov[] = { "oauth.client_secret=s3cr3t", "client_secret=s3cr3t",
		                   "pit.bad name=s3cr3t", "nosuch.section=s3cr3t" };
	char *const envp[] = { "GHLPROXY_OAUTH_CLIENT_SECRET=s3cr3t", NULL };
	struct config_errors errs = { 0 };
	struct config *c;
	size_t i;
	char *got;

	for (i = 0; i < ARRAY_SIZE(texts); i++) {
		c = load_text(texts[i], &errs);
		cr_expect_null(c);
		config_free(c);
	}
	c = config_load_string("", "t.conf", envp, ov, ARRAY_SIZE(ov), &errs);
	cr_expect_null(c);
	config_free(c);
	got = join_errors(&errs);
	cr_expect_eq(errs.n, ARRAY_SIZE(texts) + ARRAY_SIZE(ov) + 1, "%s", got);
	cr_expect_null(strstr(got, "s3cr3t"), "a secret was echoed:\n%s", got);
	free(got);
	config_errors_deinit(&errs);
}

/*
 * Found by fuzz_config: -o echoed a known key's whole argument in front of the message, so a
 * refused "user:password@" URL printed its password there ("-o upstream.url=https://u:pw@h").
 */
Test(config, overridden_url_password_is_not_echoed)
{
	const char *const ov[] = {
		"upstream.url=https://user:s3cr3t@example.com",
		"upstream.v1_url=https://:s3cr3t@example.com/",
		"redis.url=redis://:s3cr3t@127.0.0.1:6379/0",
		"oauth.redirect_uri=http://user:s3cr3t@127.0.0.1:8081/oauth/callback",
		"oauth.authorize_url=https://s3cr3t@marketplace.gohighlevel.com/",
		"upstream.url=ftp://example.com/s3cr3t@",
	};
	char *const envp[] = { "GHLPROXY_UPSTREAM_URL=https://user:s3cr3t@example.com", NULL };
	const char *want = "command line: -o upstream.url=(hidden): upstream.url: user info "
	                   "(user:password@) is not allowed in a URL";
	struct config_errors errs = { 0 };
	struct config *c;
	char *got;

	c = config_load_string("", "t.conf", envp, ov, ARRAY_SIZE(ov), &errs);
	got = join_errors(&errs);
	cr_expect_null(c);
	config_free(c);
	cr_expect_eq(errs.n, ARRAY_SIZE(ov) + 1, "%s", got);
	cr_expect_null(strstr(got, "s3cr3t"), "a secret was echoed:\n%s", got);
	cr_expect_not_null(strstr(got, want), "%s", got);
	free(got);
	config_errors_deinit(&errs);

	/* a value without '@' is still quoted with its argument */
	const char *const ov_ok[] = { "upstream.url=ftp://example.com" };

	c = config_load_string("", "t.conf", NULL, ov_ok, 1, &errs);
	got = join_errors(&errs);
	cr_expect_null(c);
	cr_expect_str_eq(got, "command line: -o upstream.url=ftp://example.com: upstream.url: "
	                      "'ftp://example.com' must start with http:// or https://");
	free(got);
	config_errors_deinit(&errs);
}

/* ---- valid values ---- */

Test(config, file_values_are_parsed)
{
	struct config *c = load_ok(
	        "\xEF\xBB\xBF; a BOM, CRLF lines, no spaces around '=', inline comments\r\n"
	        "[server]\r\n"
	        "listen = 127.0.0.1:80 , [::1]:81,unix:/run/ghlproxy/s.sock, localhost:0 ; all\r\n"
	        "admin_listen =\r\n"
	        "mode = INJECT\r\n"
	        "max_body = 1GiB\r\n"
	        "max_header_size = 1MB\r\n"
	        "max_request_line = 512\r\n"
	        "max_headers=7\r\n"
	        "header_timeout = 250ms\r\n"
	        "idle_timeout = 1d\r\n"
	        "drain_timeout = 0s\r\n"
	        "allow_remote = On\r\n"
	        "socket_owner = ghlproxy\r\n"
	        "socket_group = 1000\r\n"
	        "socket_mode = 600\r\n"
	        "[upstream]\n"
	        "url = http://127.0.0.1:9443/base/v2\n"
	        "v1_url = https://[::1]:8443\n"
	        "user_agent = my agent/1.0 (x)\n"
	        "[limits]\nburst = 1000000\nwindow = 1m\nguard = 0ms\nmax_wait = 1h\n"
	        "backend = redis\non_redis_down = reject\n"
	        "[redis]\nurl = unix:///run/redis/redis.sock?db=3\ninstances = 4\n"
	        "key_prefix = app:ghl\n"
	        "[oauth]\nclient_id = 64f0abc-lmn\nclient_secret_file = /run/credentials/secret\n"
	        "redirect_uri = http://localhost:8081/oauth/callback\nscopes = contacts.readonly "
	        "locations.readonly\nrefresh_ahead = 12h\n"
	        "[store]\npath = /srv/tokens.json\n"
	        "[log]\nlevel = warn\nformat = json\n",
	        NULL, NULL, 0);

	cr_assert_str_eq(c->server.listen,
	                 "127.0.0.1:80,[::1]:81,unix:/run/ghlproxy/s.sock,localhost:0");
	cr_assert_str_eq(c->server.admin_listen, "");
	cr_assert_eq(c->server.mode, CONFIG_MODE_INJECT);
	cr_assert_eq(c->server.max_body, 1ULL << 30);
	cr_assert_eq(c->server.max_header_size, 1000000);
	cr_assert_eq(c->server.max_request_line, 512);
	cr_assert_eq(c->server.max_headers, 7);
	cr_assert_eq(c->server.header_timeout_ms, 250);
	cr_assert_eq(c->server.idle_timeout_ms, 86400000);
	cr_assert_eq(c->server.drain_timeout_ms, 0);
	cr_assert_eq(c->server.allow_remote, true);
	cr_assert_str_eq(c->server.socket_owner, "ghlproxy");
	cr_assert_str_eq(c->server.socket_group, "1000");
	cr_assert_eq(c->server.socket_mode, 0600);
	cr_assert_str_eq(c->upstream.url, "http://127.0.0.1:9443/base/v2");
	cr_assert_str_eq(c->upstream.v1_url, "https://[::1]:8443");
	cr_assert_str_eq(c->upstream.user_agent, "my agent/1.0 (x)");
	cr_assert_eq(c->limits.burst, 1000000);
	cr_assert_eq(c->limits.window_ms, 60000);
	cr_assert_eq(c->limits.guard_ms, 0);
	cr_assert_eq(c->limits.max_wait_ms, 3600000);
	cr_assert_eq(c->limits.backend, CONFIG_BACKEND_REDIS);
	cr_assert_eq(c->limits.on_redis_down, CONFIG_REDIS_DOWN_REJECT);
	cr_assert_str_eq(c->redis.url, "unix:///run/redis/redis.sock?db=3");
	cr_assert_eq(c->redis.instances, 4);
	cr_assert_str_eq(c->redis.key_prefix, "app:ghl");
	cr_assert_str_eq(c->oauth.client_id, "64f0abc-lmn");
	cr_assert_str_eq(c->oauth.client_secret_file, "/run/credentials/secret");
	cr_assert_str_eq(c->oauth.redirect_uri, "http://localhost:8081/oauth/callback");
	cr_assert_str_eq(c->oauth.scopes, "contacts.readonly locations.readonly");
	cr_assert_eq(c->oauth.refresh_ahead_ms, 12 * 3600000);
	cr_assert_str_eq(c->store.path, "/srv/tokens.json");
	cr_assert_eq(c->log.level, CONFIG_LOG_WARNING);
	cr_assert_eq(c->log.format, CONFIG_LOG_JSON);
	config_free(c);
}

Test(config, accepted_listen_and_url_forms)
{
	static const char *const texts[] = {
		"[server]\nlisten = [::1]:0\n",
		"[server]\nlisten = localhost:8080\n",
		"[server]\nlisten = LOCALHOST:8080\n",
		"[server]\nlisten = 127.1.2.3:65535\n",
		"[server]\nlisten = [::ffff:127.0.0.1]:80\n",
		/* a name is judged when the server resolves it, not here */
		"[server]\nlisten = proxy.internal:8080\n",
		"[server]\nlisten = 0.0.0.0:8080\nallow_remote = yes\n",
		"[server]\nlisten = [::]:8080\n[clients]\nci = /etc/ghlproxy/ci.key\n",
		"[server]\nadmin_listen = 0.0.0.0:8081\n[admin]\nkey_file = /k\n",
		"[upstream]\nurl = HTTPS://Example.COM\n",
		"[upstream]\nurl = https://example.com/\n",
		"[upstream]\nurl = https://example.com:443/a/b%20c/~d;e=f\n",
		"[redis]\nurl = redis://cache\n",
		"[redis]\nurl = redis://cache:6380\n",
		"[redis]\nurl = redis://[::1]:6379/15\n",
		"[redis]\nurl = unix:///run/redis.sock\n",
		"[redis]\nurl =\n",
		"[limits]\nbackend = redis\n[redis]\nurl = redis://10.0.0.5/2\n",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(texts); i++) {
		struct config *c = load_ok(texts[i], NULL, NULL, 0);

		config_free(c);
	}
}

Test(config, map_sections_keep_order_and_lines)
{
	struct config *c =
	        load_ok("[pit]\nLOC_1 = /etc/p/1\nco-2 = /etc/p/2a,/etc/p/2b\n"
	                "[v1_keys]\nagency = /etc/v1/agency\nLOC_1 = /etc/v1/loc1\n"
	                "[clients]\nbilling.eu = /etc/c/billing\n"
	                "billing.eu.resources = LOC_1, co-2\nbilling.eu.read_only = yes\n",
	                NULL, NULL, 0);

	cr_assert_eq(c->pit.n, 2);
	cr_assert_str_eq(c->pit.v[0].name, "LOC_1");
	cr_assert_str_eq(c->pit.v[0].value, "/etc/p/1");
	cr_assert_eq(c->pit.v[0].line, 2);
	cr_assert_str_eq(c->pit.v[1].name, "co-2");
	cr_assert_str_eq(c->pit.v[1].value, "/etc/p/2a,/etc/p/2b");
	cr_assert_eq(c->pit.v[1].line, 3);
	cr_assert_eq(c->v1_keys.n, 2);
	cr_assert_str_eq(c->v1_keys.v[0].name, "agency");
	cr_assert_str_eq(c->v1_keys.v[1].value, "/etc/v1/loc1");
	cr_assert_eq(c->clients.n, 3);
	cr_assert_str_eq(c->clients.v[0].name, "billing.eu");
	cr_assert_str_eq(c->clients.v[1].name, "billing.eu.resources");
	cr_assert_str_eq(c->clients.v[1].value, "LOC_1, co-2");
	cr_assert_str_eq(c->clients.v[2].name, "billing.eu.read_only");
	cr_assert_eq(c->clients.v[2].line, 10);
	config_free(c);
}

/* ---- units ---- */

struct unit_row {
	const char *s;
	int ret;
	uint64_t value;
};

Test(config, durations)
{
	static const struct unit_row rows[] = {
		{ "0ms", 0, 0 },
		{ "250ms", 0, 250 },
		{ "10s", 0, 10000 },
		{ "5m", 0, 300000 },
		{ "1h", 0, 3600000 },
		{ "2d", 0, 172800000 },
		{ "007s", 0, 7000 },
		{ "18446744073709551615ms", 0, UINT64_MAX },
		{ "18446744073709551616ms", -ERANGE, 0 },
		{ "18446744073709552s", -ERANGE, 0 },
		{ "213503982334d", 0, 213503982334ULL * 86400000ULL },
		{ "213503982335d", -ERANGE, 0 },
		{ "99999999999999999999999999h", -ERANGE, 0 },
		{ "", -EINVAL, 0 },
		{ "10", -EINVAL, 0 },
		{ "0", -EINVAL, 0 },
		{ "s", -EINVAL, 0 },
		{ "10 s", -EINVAL, 0 },
		{ "10s ", -EINVAL, 0 },
		{ "1.5s", -EINVAL, 0 },
		{ "-1s", -EINVAL, 0 },
		{ "+1s", -EINVAL, 0 },
		{ "10S", -EINVAL, 0 },
		{ "10sec", -EINVAL, 0 },
		{ "1h30m", -EINVAL, 0 },
		{ "0x10s", -EINVAL, 0 },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(rows); i++) {
		uint64_t v = 12345;
		int r = config_parse_duration_ms(rows[i].s, &v);

		cr_expect_eq(r, rows[i].ret, "'%s': got %d", rows[i].s, r);
		cr_expect_eq(v, rows[i].ret == 0 ? rows[i].value : 12345, "'%s'", rows[i].s);
	}
	cr_expect_eq(config_parse_duration_ms(NULL, NULL), -EINVAL);
}

Test(config, sizes)
{
	static const struct unit_row rows[] = {
		{ "0", 0, 0 },
		{ "512", 0, 512 },
		{ "512B", 0, 512 },
		{ "1KB", 0, 1000 },
		{ "64KiB", 0, 65536 },
		{ "2MB", 0, 2000000 },
		{ "64MiB", 0, 64ULL << 20 },
		{ "1GB", 0, 1000000000 },
		{ "1GiB", 0, 1ULL << 30 },
		{ "3TB", 0, 3000000000000ULL },
		{ "2TiB", 0, 2ULL << 40 },
		{ "18446744073709551615", 0, UINT64_MAX },
		{ "18446744073709551616", -ERANGE, 0 },
		{ "16777215TiB", 0, 16777215ULL << 40 },
		{ "16777216TiB", -ERANGE, 0 },
		{ "18446744073709552KB", -ERANGE, 0 },
		{ "", -EINVAL, 0 },
		{ "KiB", -EINVAL, 0 },
		{ "1kib", -EINVAL, 0 },
		{ "1K", -EINVAL, 0 },
		{ "1 KiB", -EINVAL, 0 },
		{ "1.5GiB", -EINVAL, 0 },
		{ "-1", -EINVAL, 0 },
		{ "1e6", -EINVAL, 0 },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(rows); i++) {
		uint64_t v = 12345;
		int r = config_parse_size(rows[i].s, &v);

		cr_expect_eq(r, rows[i].ret, "'%s': got %d", rows[i].s, r);
		cr_expect_eq(v, rows[i].ret == 0 ? rows[i].value : 12345, "'%s'", rows[i].s);
	}
	cr_expect_eq(config_parse_size(NULL, NULL), -EINVAL);
}

Test(config, booleans)
{
	static const struct {
		const char *s;
		int ret;
		bool value;
	} rows[] = {
		{ "yes", 0, true },      { "YES", 0, true },         { "true", 0, true },
		{ "True", 0, true },     { "on", 0, true },          { "1", 0, true },
		{ "no", 0, false },      { "false", 0, false },      { "off", 0, false },
		{ "0", 0, false },       { "", -EINVAL, false },     { "y", -EINVAL, false },
		{ "2", -EINVAL, false }, { "yes ", -EINVAL, false }, { "enabled", -EINVAL, false },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(rows); i++) {
		bool v = !rows[i].value;
		int r = config_parse_bool(rows[i].s, &v);

		cr_expect_eq(r, rows[i].ret, "'%s'", rows[i].s);
		if (r == 0)
			cr_expect_eq(v, rows[i].value, "'%s'", rows[i].s);
	}
}

/* ---- environment and -o ---- */

Test(config, precedence_file_then_environment_then_command_line)
{
	const char *text = "[limits]\nburst = 3\nmax_wait = 1s\n[log]\nlevel = debug\n";
	char *const envp[] = { "PATH=/usr/bin", "GHLPROXY_LIMITS_BURST=5",
		               "GHLPROXY_LIMITS_MAX_WAIT=5s", "GHLPROXY_SERVER_ALLOW_REMOTE=yes",
		               NULL };
	const char *const ov[] = { "limits.burst=7", "limits.burst=8", "log.format=json" };
	struct config *c;

	c = load_ok(text, NULL, NULL, 0);
	cr_assert_eq(c->limits.burst, 3);
	cr_assert_eq(c->limits.max_wait_ms, 1000);
	config_free(c);

	c = load_ok(text, envp, NULL, 0);
	cr_assert_eq(c->limits.burst, 5);
	cr_assert_eq(c->limits.max_wait_ms, 5000);
	cr_assert_eq(c->server.allow_remote, true);
	cr_assert_eq(c->log.level, CONFIG_LOG_DEBUG, "untouched by env: from the file");
	config_free(c);

	c = load_ok(text, envp, ov, ARRAY_SIZE(ov));
	cr_assert_eq(c->limits.burst, 8, "the later -o wins");
	cr_assert_eq(c->limits.max_wait_ms, 5000);
	cr_assert_eq(c->log.format, CONFIG_LOG_JSON);
	config_free(c);
}

/* A duplicate is a mistake inside the file; the environment and -o replace, they don't repeat. */
Test(config, environment_and_command_line_may_set_a_key_the_file_set)
{
	char *const envp[] = { "GHLPROXY_LIMITS_BURST=5", "GHLPROXY_LIMITS_BURST=6", NULL };
	const char *const ov[] = { "limits.burst=7" };
	struct config *c = load_ok("[limits]\nburst = 3\n", envp, ov, 1);

	cr_assert_eq(c->limits.burst, 7);
	config_free(c);
}

Test(config, harness_variables_are_ignored)
{
	char *const envp[] = { "GHLPROXY_SRCDIR=/src",
		               "GHLPROXY_BUILDDIR=/build",
		               "GHLPROXY_BIN=/build/ghlproxy",
		               "GHLPROXY_MOCK_BIN=/build/mock",
		               "GHLPROXY_TEST_ANYTHING=1",
		               "GHLPROXY_TEST_=1",
		               "GHLPROXY_SERVER_MODE",
		               "XGHLPROXY_LIMITS_BURST=x",
		               NULL };
	struct config *c = load_ok("", envp, NULL, 0);

	assert_defaults(c);
	config_free(c);
}

Test(config, bad_environment_variables)
{
	char *const envp[] = {
		"GHLPROXY_X=1",
		"GHLPROXY_LIMITS_NOPE=1",
		"GHLPROXY_limits_burst=5",
		"GHLPROXY_SRCDIRS=/x",
		"GHLPROXY_LIMITS_BURST=x",
		"GHLPROXY_UPSTREAM_USER_AGENT=a\r\nX-Injected: 1",
		"GHLPROXY_PIT_LOC1=/etc/pit",
		"GHLPROXY_V1_KEYS_agency=/etc/agency",
		"GHLPROXY_CLIENTS_CI=/k",
		NULL,
	};
	const char *want = "environment: GHLPROXY_X: unknown key\n"
	                   "environment: GHLPROXY_LIMITS_NOPE: unknown key\n"
	                   "environment: GHLPROXY_limits_burst: unknown key\n"
	                   "environment: GHLPROXY_SRCDIRS: unknown key\n"
	                   "environment: GHLPROXY_LIMITS_BURST: limits.burst: 'x' is not a number\n"
	                   "environment: GHLPROXY_UPSTREAM_USER_AGENT: upstream.user_agent: value "
	                   "contains a control character\n"
	                   "environment: GHLPROXY_PIT_LOC1: [pit] cannot be set from the "
	                   "environment\n"
	                   "environment: GHLPROXY_V1_KEYS_agency: [v1_keys] cannot be set from the "
	                   "environment\n"
	                   "environment: GHLPROXY_CLIENTS_CI: [clients] cannot be set from the "
	                   "environment";
	struct config_errors errs = { 0 };
	struct config *c = config_load_string("", "t.conf", envp, NULL, 0, &errs);
	char *got = join_errors(&errs);

	cr_expect_null(c);
	cr_expect_str_eq(got, want);
	free(got);
	config_errors_deinit(&errs);
}

Test(config, command_line_sets_scalars_and_map_entries)
{
	const char *const ov[] = {
		"limits.burst=7",
		"pit.LOC123=/etc/pit/b",
		"pit.NEW=/etc/pit/new",
		"clients.ci=/k",
		"clients.ci.read_only=yes",
		"server.listen=[::1]:9000",
		"upstream.url=https://h/p=q",
	};
	struct config *c = load_ok("[pit]\nLOC123 = /etc/pit/a\n", NULL, ov, ARRAY_SIZE(ov));

	cr_assert_eq(c->limits.burst, 7);
	cr_assert_eq(c->pit.n, 2);
	cr_assert_str_eq(c->pit.v[0].name, "LOC123");
	cr_assert_str_eq(c->pit.v[0].value, "/etc/pit/b", "-o replaces the file's entry");
	cr_assert_eq(c->pit.v[0].line, 0);
	cr_assert_str_eq(c->pit.v[1].name, "NEW");
	cr_assert_eq(c->clients.n, 2);
	cr_assert_str_eq(c->clients.v[1].name, "ci.read_only");
	cr_assert_str_eq(c->server.listen, "[::1]:9000");
	cr_assert_str_eq(c->upstream.url, "https://h/p=q");
	config_free(c);
}

Test(config, bad_command_line_overrides)
{
	const char *const ov[] = {
		"limits.burst=x",
		"limits.burst",
		"nodot=1",
		"=1",
		"limits.=1",
		".burst=1",
		"foo.bar=1",
		"limits.nope=1",
		"pit.bad name=/x",
		"clients.ci.resources=LOC1",
		"log.level=a\x1b[2J",
	};
	const char *want = "command line: -o limits.burst=x: limits.burst: 'x' is not a number\n"
	                   "command line: -o limits.burst: expected section.key=value\n"
	                   "command line: -o nodot=(hidden): expected section.key=value\n"
	                   "command line: -o =(hidden): expected section.key=value\n"
	                   "command line: -o limits.=(hidden): expected section.key=value\n"
	                   "command line: -o .burst=(hidden): expected section.key=value\n"
	                   "command line: -o foo.bar=(hidden): unknown section [foo]\n"
	                   "command line: -o limits.nope=(hidden): unknown key 'nope' in [limits]\n"
	                   "command line: -o pit.bad name=(hidden): [pit] 'bad name' is not a "
	                   "resource id (1 to "
	                   "64 of A-Z a-z 0-9 _ -)\n"
	                   "command line: -o (argument 11): contains a control character\n"
	                   "command line: -o clients.ci.resources=(hidden): [clients] "
	                   "'ci.resources': no client "
	                   "'ci' (add 'ci = /path/to/key')";
	struct config_errors errs = { 0 };
	struct config *c = config_load_string("", "t.conf", NULL, ov, ARRAY_SIZE(ov), &errs);
	char *got = join_errors(&errs);

	cr_expect_null(c);
	cr_expect_str_eq(got, want);
	free(got);
	config_errors_deinit(&errs);
}

/* A rule broken by a later source points at that source. */
Test(config, rule_errors_point_at_the_latest_source)
{
	char *const envp[] = { "GHLPROXY_LIMITS_WINDOW=200ms", NULL };
	const char *const ov[] = { "limits.guard=300ms" };
	struct config_errors errs = { 0 };
	struct config *c;
	char *got;

	c = config_load_string("[limits]\nguard = 100ms\n", "t.conf", envp, NULL, 0, &errs);
	cr_assert_not_null(c);
	config_free(c);
	c = config_load_string("[limits]\nguard = 100ms\n", "t.conf", envp, ov, 1, &errs);
	got = join_errors(&errs);
	cr_expect_null(c);
	cr_expect_str_eq(got, "command line: -o limits.guard=300ms: limits.guard (300ms) must be "
	                      "shorter than limits.window (200ms)");
	free(got);
	config_errors_deinit(&errs);
}

/* ---- files ---- */

static char tmpdir[64];

static void make_tmpdir(void)
{
	strcpy(tmpdir, "/tmp/test_config.XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static char *write_tmp(const char *name, const char *text, size_t len)
{
	char *path = NULL;
	FILE *f;

	cr_assert_geq(asprintf(&path, "%s/%s", tmpdir, name), 0);
	f = fopen(path, "wb");
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(text, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
	return path;
}

Test(config, load_from_file)
{
	static const char good[] = "[limits]\nburst = 9\n";
	static const char bad[] = "[limits]\nburst = 9\nwindow = 10\n";
	static const char nul[] = "[limits]\nburst = 9\n[server\0]\nmode = inject\n";
	struct config_errors errs = { 0 };
	struct config *c;
	char *p_good, *p_bad, *p_nul, *want = NULL, *got;

	make_tmpdir();
	p_good = write_tmp("good.conf", good, sizeof(good) - 1);
	p_bad = write_tmp("bad.conf", bad, sizeof(bad) - 1);
	p_nul = write_tmp("nul.conf", nul, sizeof(nul) - 1);

	c = config_load(p_good, NULL, NULL, 0, &errs);
	cr_assert_not_null(c);
	cr_assert_eq(errs.n, 0);
	cr_assert_str_eq(c->path, p_good);
	cr_assert_eq(c->limits.burst, 9);
	config_free(c);

	c = config_load(p_bad, NULL, NULL, 0, &errs);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 1);
	cr_assert_geq(
	        asprintf(&want, "%s:3: limits.window: '10' needs a unit (ms, s, m, h, d)", p_bad),
	        0);
	cr_assert_str_eq(errs.v[0], want);
	free(want);
	config_errors_deinit(&errs);

	/* a NUL byte cannot cut the file short: everything after it is still read */
	c = config_load(p_nul, NULL, NULL, 0, &errs);
	cr_assert_null(c);
	got = join_errors(&errs);
	cr_assert_geq(asprintf(&want, "%s:3: line contains a control character", p_nul), 0);
	cr_assert_str_eq(got, want);
	free(want);
	free(got);
	config_errors_deinit(&errs);

	/* no file at all: defaults, environment and -o only */
	c = config_load(NULL, NULL, NULL, 0, &errs);
	cr_assert_not_null(c);
	assert_defaults(c);
	cr_assert_null(c->path);
	config_free(c);

	unlink(p_good);
	unlink(p_bad);
	unlink(p_nul);
	rmdir(tmpdir);
	free(p_good);
	free(p_bad);
	free(p_nul);
}

Test(config, unreadable_file_is_a_file_level_error)
{
	struct config_errors errs = { 0 };
	struct config *c;

	make_tmpdir();
	c = config_load("/nonexistent/ghlproxy.conf", NULL, NULL, 0, &errs);
	cr_assert_null(c);
	c = config_load(tmpdir, NULL, NULL, 0, &errs);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 2);
	cr_assert_str_eq(errs.v[0],
	                 "/nonexistent/ghlproxy.conf:0: cannot read: No such file or directory");
	cr_assert(strstr(errs.v[1], ":0: cannot read: Is a directory") != NULL, "%s", errs.v[1]);
	cr_assert(strncmp(errs.v[1], tmpdir, strlen(tmpdir)) == 0);
	config_errors_deinit(&errs);
	cr_assert_eq(errs.n, 0);
	cr_assert_null(errs.v);
	rmdir(tmpdir);
}

Test(config, errors_are_appended)
{
	struct config_errors errs = { 0 };
	struct config *c;

	c = load_text("[x]\n", &errs);
	cr_assert_null(c);
	c = load_text("[y]\n", &errs);
	cr_assert_null(c);
	cr_assert_eq(errs.n, 2);
	cr_assert_str_eq(errs.v[0], "t.conf:1: unknown section [x]");
	cr_assert_str_eq(errs.v[1], "t.conf:1: unknown section [y]");
	config_errors_deinit(&errs);
	config_errors_deinit(&errs);
	config_free(NULL);
}

/* ---- conf/ghlproxy.conf cannot drift from the table ---- */

struct conf_line {
	char section[32];
	char key[64];
	char value[256];
	bool seen;
};

struct conf_scan {
	struct conf_line lines[128];
	size_t n;
	size_t n_keys;
	size_t n_missing;
};

static void check_key_documented(const char *section, const char *key, const char *def,
                                 const char *help, void *arg)
{
	struct conf_scan *scan = arg;
	size_t i;

	scan->n_keys++;
	cr_expect(help && help[0], "%s.%s has no help line", section, key);
	for (i = 0; i < scan->n; i++) {
		struct conf_line *l = &scan->lines[i];

		if (strcmp(l->section, section) != 0 || strcmp(l->key, key) != 0)
			continue;
		cr_expect_str_eq(l->value, def,
		                 "conf/ghlproxy.conf: %s.%s shows '%s', default is '%s'", section,
		                 key, l->value, def);
		l->seen = true;
		return;
	}
	scan->n_missing++;
	cr_expect_fail("conf/ghlproxy.conf does not mention %s.%s = %s", section, key, def);
}

Test(config, sample_conf_documents_every_key_with_its_default)
{
	const char *srcdir = getenv("GHLPROXY_SRCDIR");
	struct config_errors errs = { 0 };
	struct conf_scan scan = { .n = 0 };
	struct config *c;
	char *path = NULL, *line = NULL, *text, *got;
	size_t cap = 0, len = 0, size = 0, i;
	char section[32] = "";
	bool prev_is_comment = false;
	FILE *f, *out;

	cr_assert_not_null(srcdir, "GHLPROXY_SRCDIR is not set (run through meson test)");
	cr_assert_geq(asprintf(&path, "%s/conf/ghlproxy.conf", srcdir), 0);

	/* as shipped, everything commented out: the defaults */
	c = config_load(path, NULL, NULL, 0, &errs);
	got = join_errors(&errs);
	cr_assert_not_null(c, "%s", got);
	free(got);
	assert_defaults(c);
	config_free(c);

	/* uncomment every "#key = value" line */
	f = fopen(path, "r");
	cr_assert_not_null(f);
	out = open_memstream(&text, &size);
	cr_assert_not_null(out);
	while (getline(&line, &cap, f) > 0) {
		char *p = line;
		size_t k;

		len = strcspn(line, "\n");
		line[len] = '\0';
		if (line[0] == '[') {
			cr_assert_lt(strcspn(line + 1, "]"), sizeof(section));
			snprintf(section, sizeof(section), "%.*s", (int)strcspn(line + 1, "]"),
			         line + 1);
		}
		k = line[0] == '#' ? strspn(line + 1, "abcdefghijklmnopqrstuvwxyz0123456789_") : 0;
		if (k > 0 && strncmp(line + 1 + k, " =", 2) == 0 &&
		    (line[3 + k] == '\0' || line[3 + k] == ' ')) {
			struct conf_line *l = &scan.lines[scan.n++];

			cr_assert_lt(scan.n, ARRAY_SIZE(scan.lines));
			cr_expect(prev_is_comment, "%s.%.*s has no comment line above it", section,
			          (int)k, line + 1);
			snprintf(l->section, sizeof(l->section), "%s", section);
			snprintf(l->key, sizeof(l->key), "%.*s", (int)k, line + 1);
			snprintf(l->value, sizeof(l->value), "%s", line[3 + k] ? line + 4 + k : "");
			p = line + 1;
		}
		prev_is_comment = strncmp(line, "# ", 2) == 0;
		fprintf(out, "%s\n", p);
	}
	free(line);
	fclose(f);
	fclose(out);

	config_keys_foreach(check_key_documented, &scan);
	cr_assert_eq(scan.n_missing, 0);
	cr_assert_eq(scan.n, scan.n_keys, "the file has keys the table lacks");
	for (i = 0; i < scan.n; i++)
		cr_expect(scan.lines[i].seen, "%s.%s is not a key", scan.lines[i].section,
		          scan.lines[i].key);

	/* and, all uncommented, it still loads to exactly the defaults */
	c = config_load_string(text, "ghlproxy.conf (uncommented)", NULL, NULL, 0, &errs);
	got = join_errors(&errs);
	cr_assert_not_null(c, "%s", got);
	free(got);
	assert_defaults(c);
	config_free(c);
	free(text);
	free(path);
}

/* ---- reload ---- */

Test(config, diff_static_names_what_a_reload_cannot_apply)
{
	static const struct {
		const char *override;
		const char *name; /* NULL: a reload can apply it */
	} rows[] = {
		{ "server.listen=127.0.0.1:9090", "server.listen" },
		{ "server.admin_listen=", "server.admin_listen" },
		{ "server.socket_owner=www", "server.socket_owner" },
		{ "server.socket_group=www", "server.socket_group" },
		{ "server.socket_mode=0600", "server.socket_mode" },
		{ "limits.backend=redis", "limits.backend" },
		{ "redis.url=redis://10.0.0.1/0", "redis.url" },
		{ "store.path=/srv/t.json", "store.path" },
		{ "server.mode=inject", NULL },
		{ "limits.burst=5", NULL },
		{ "log.level=debug", NULL },
		{ "upstream.url=https://example.com", NULL },
		{ "pit.LOC1=/p", NULL },
	};
	struct config *a = load_ok("", NULL, NULL, 0), *b;
	const char *const many[] = { "log.level=debug", "store.path=/x", "server.listen=[::1]:1",
		                     "redis.url=", "server.socket_mode=0" };
	char buf[256], small[20];
	size_t i;

	cr_assert_eq(config_diff_static(a, a, buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "");
	for (i = 0; i < ARRAY_SIZE(rows); i++) {
		const char *ov[] = { rows[i].override };

		b = load_ok("", NULL, ov, 1);
		memset(buf, 'x', sizeof(buf));
		cr_expect_eq(config_diff_static(a, b, buf, sizeof(buf)), rows[i].name ? 1 : 0, "%s",
		             rows[i].override);
		cr_expect_str_eq(buf, rows[i].name ? rows[i].name : "", "%s", rows[i].override);
		config_free(b);
	}

	b = load_ok("", NULL, many, ARRAY_SIZE(many));
	cr_assert_eq(config_diff_static(a, b, buf, sizeof(buf)), 4);
	cr_assert_str_eq(buf, "server.listen, server.socket_mode, redis.url, store.path");
	cr_assert_eq(config_diff_static(b, a, small, sizeof(small)), 4, "count even if cut");
	cr_assert_str_eq(small, "server.listen, serv");
	cr_assert_eq(config_diff_static(a, b, NULL, 0), 4);
	cr_assert_eq(config_diff_static(a, NULL, buf, sizeof(buf)), -EINVAL);
	config_free(b);
	config_free(a);
}

/* ---- store path ---- */

Test(config, store_path)
{
	static const struct {
		const char *state_directory; /* NULL: unset */
		const char *want;
	} rows[] = {
		{ NULL, "/var/lib/ghlproxy/tokens.json" },
		{ "", "/var/lib/ghlproxy/tokens.json" },
		{ "/var/lib/ghlproxy", "/var/lib/ghlproxy/tokens.json" },
		{ "/var/lib/ghlproxy/", "/var/lib/ghlproxy/tokens.json" },
		{ "/var/lib/a:/var/lib/b", "/var/lib/a/tokens.json" },
		{ ":/var/lib/b", "/var/lib/ghlproxy/tokens.json" },
		{ "/", "/tokens.json" },
	};
	const char *const ov[] = { "store.path=/srv/ghl/tokens.json" };
	struct config *def = load_ok("", NULL, NULL, 0);
	struct config *set = load_ok("", NULL, ov, 1);
	size_t i;
	char *p;

	for (i = 0; i < ARRAY_SIZE(rows); i++) {
		if (rows[i].state_directory)
			setenv("STATE_DIRECTORY", rows[i].state_directory, 1);
		else
			unsetenv("STATE_DIRECTORY");
		p = config_store_path(def);
		cr_expect_str_eq(p, rows[i].want, "STATE_DIRECTORY=%s",
		                 rows[i].state_directory ? rows[i].state_directory : "(unset)");
		free(p);
		p = config_store_path(set);
		cr_expect_str_eq(p, "/srv/ghl/tokens.json");
		free(p);
	}
	config_free(def);
	config_free(set);
}
