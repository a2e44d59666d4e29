/*
 * fuzz_config.c: libFuzzer target for the configuration loader: the INI text (through inih and
 * config.c's line reader), GHLPROXY_* environment entries, -o overrides, the cross-key rules,
 * config_diff_static() and config_store_path(), plus the value parsers config.h exports.
 *
 * Input:
 *   byte 0      flags: bit 0 load through a file (config_load() on a memfd, so NUL bytes
 *               reach the line reader); else config_load_string() (text up to the first NUL)
 *   text        the INI file, up to a line "%%" (or the end)
 *   lines       after "%%": one each, "GHLPROXY_..." an environment entry, anything else an
 *               -o override (at most MAX_ARGS of each)
 * Checks, beyond "no crash, no leak":
 *   - a config comes back exactly when no error does; each error is one line of printable
 *     text (no control character but HTAB: `ghlproxy -t` prints them to a terminal) starting
 *     with its origin ("fuzz.conf:", "environment: ", "command line: ");
 *   - a loaded config keeps the cross-key rules (guard < window, max_request_line <=
 *     max_header_size, max_queue_per_key <= max_queue, client_id with its secret file);
 *   - secrets are never echoed: a word that appears once in the input (8+ of [A-Za-z0-9_],
 *     with a digit and an upper-case letter, so that no fixed message text contains it) does
 *     not appear in any error when it sits in a [pit] / [v1_keys] / [clients] value, in the
 *     value of an unknown key given by -o or the environment, or in a URL key's value that
 *     holds an '@' (a user:password@ URL).
 */
#define _GNU_SOURCE /* memfd_create, memmem */

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

#define MAX_ARGS  64
#define MAX_KEYS  128
#define MAX_WORDS 64
#define ORIGIN    "fuzz.conf"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every scalar key, from config_keys_foreach(). */
static struct {
	const char *section, *key;
} known[MAX_KEYS];
static size_t n_known;
static struct config *defaults;
static int memfd = -1;
static char memfd_path[64];

static void add_known(const char *section, const char *key, const char *def, const char *help,
                      void *arg)
{
	(void)def;
	(void)help;
	(void)arg;
	fuzz_check(n_known < MAX_KEYS);
	known[n_known].section = section;
	known[n_known].key = key;
	n_known++;
}

static void init_once(void)
{
	struct config_errors errs = { 0 };

	if (defaults != NULL)
		return;
	/* systemd may list several state directories; the store goes in the first */
	fuzz_check(setenv("STATE_DIRECTORY", "/var/lib/ghlproxy/:/var/lib/other", 1) == 0);
	config_keys_foreach(add_known, NULL);
	defaults = config_load_string(NULL, ORIGIN, NULL, NULL, 0, &errs);
	fuzz_check(defaults != NULL && errs.n == 0);
	config_errors_deinit(&errs);
	memfd = memfd_create("fuzz_config", MFD_CLOEXEC);
	fuzz_check(memfd >= 0);
	snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
}

/* Is "section.key" (lengths given) a scalar key? Case-insensitive when `upper` (environment). */
static bool is_known(const char *sec, size_t slen, const char *key, size_t klen, bool upper)
{
	for (size_t i = 0; i < n_known; i++) {
		if (strlen(known[i].section) != slen || strlen(known[i].key) != klen)
			continue;
		if (upper ? strncasecmp(known[i].section, sec, slen) == 0 &&
		                    strncasecmp(known[i].key, key, klen) == 0
		          : memcmp(known[i].section, sec, slen) == 0 &&
		                    memcmp(known[i].key, key, klen) == 0)
			return true;
	}
	return false;
}

static bool is_url_key(const char *key, size_t klen)
{
	static const char *const url_keys[] = { "url", "v1_url", "redirect_uri", "authorize_url" };

	for (size_t i = 0; i < sizeof(url_keys) / sizeof(url_keys[0]); i++) {
		if (strlen(url_keys[i]) == klen && strncasecmp(url_keys[i], key, klen) == 0)
			return true;
	}
	return false;
}

/* ---- secret words ---- */

struct words {
	const char *p[MAX_WORDS];
	size_t len[MAX_WORDS];
	size_t n;
};

static bool is_word_char(char c)
{
	return isalnum((unsigned char)c) || c == '_';
}

/* Collect the secret-shaped words of s[0..n) that occur only once in the whole input. */
static void add_words(struct words *w, const char *s, size_t n, const uint8_t *all, size_t all_len)
{
	size_t i = 0;

	while (i < n) {
		size_t b = i, e;
		bool digit = false, upper = false;

		if (!is_word_char(s[i]) || (i > 0 && is_word_char(s[i - 1]))) {
			i++;
			continue;
		}
		for (e = b; e < n && is_word_char(s[e]); e++) {
			digit = digit || isdigit((unsigned char)s[e]);
			upper = upper || isupper((unsigned char)s[e]);
		}
		i = e;
		if (e - b < 8 || !digit || !upper || w->n == MAX_WORDS)
			continue;
		{
			const uint8_t *first = memmem(all, all_len, s + b, e - b);

			if (first == NULL)
				continue; /* from an unterminated copy: not the input's own bytes */
			if (memmem(first + 1, all_len - (size_t)(first + 1 - all), s + b, e - b))
				continue;
		}
		w->p[w->n] = s + b;
		w->len[w->n] = e - b;
		w->n++;
	}
}

/* Map-section values in the file: sections tracked only by exact "[pit]"-style headers. */
static void file_words(struct words *w, const char *text, size_t len, const uint8_t *all,
                       size_t all_len)
{
	bool in_map = false;
	size_t pos = 0;

	while (pos < len) {
		const char *line = text + pos;
		const char *nl = memchr(line, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - line) : len - pos;
		size_t m = n;
		const char *eq;

		pos += n + (nl ? 1 : 0);
		if (m > 0 && line[m - 1] == '\r')
			m--;
		if (m > 0 && line[0] == '[') {
			in_map = (m == 5 && memcmp(line, "[pit]", 5) == 0) ||
			         (m == 9 && memcmp(line, "[v1_keys]", 9) == 0) ||
			         (m == 9 && memcmp(line, "[clients]", 9) == 0);
			continue;
		}
		eq = memchr(line, '=', m);
		if (eq == NULL)
			continue;
		/* [clients] x.resources / x.read_only values are settings, echoed on purpose */
		if (in_map && !memmem(line, m, "resources", 9) && !memmem(line, m, "read_only", 9))
			add_words(w, eq + 1, (size_t)(line + m - eq - 1), all, all_len);
		/* a URL key's value with user info, in any section: the value as inih reads it, up
		 * to an inline comment (a ';' after whitespace), which may hold any '@' */
		{
			const char *k = line, *ke = eq;
			size_t vlen = 0;
			bool was_space = false;

			while (eq + 1 + vlen < line + m && !(was_space && eq[1 + vlen] == ';')) {
				was_space = isspace((unsigned char)eq[1 + vlen]);
				vlen++;
			}
			while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
				ke--;
			if (is_url_key(k, (size_t)(ke - k)) && memchr(eq + 1, '@', vlen))
				add_words(w, eq + 1, vlen, all, all_len);
		}
	}
}

/* -o section.key=value */
static void override_words(struct words *w, const char *arg, const uint8_t *all, size_t all_len)
{
	const char *eq = strchr(arg, '=');
	const char *dot = strchr(arg, '.');
	bool secret;

	if (eq == NULL)
		return;
	if (dot == NULL || dot > eq) {
		secret = true; /* malformed: the value is hidden */
	} else {
		size_t slen = (size_t)(dot - arg), klen = (size_t)(eq - dot - 1);
		bool map = (slen == 3 && memcmp(arg, "pit", 3) == 0) ||
		           (slen == 7 && memcmp(arg, "v1_keys", 7) == 0) ||
		           (slen == 7 && memcmp(arg, "clients", 7) == 0);

		if (map)
			secret = !memmem(dot, klen + 1, ".resources", 10) &&
			         !memmem(dot, klen + 1, ".read_only", 10);
		else
			secret = !is_known(arg, slen, dot + 1, klen, false) ||
			         (is_url_key(dot + 1, klen) && strchr(eq, '@'));
	}
	if (secret)
		add_words(w, eq + 1, strlen(eq + 1), all, all_len);
}

/* GHLPROXY_SECTION_KEY=value */
static void env_words(struct words *w, const char *entry, const uint8_t *all, size_t all_len)
{
	const char *eq = strchr(entry, '=');
	const char *sec = entry + 9, *us;
	bool secret = true;

	if (eq == NULL || eq < sec)
		return;
	us = memchr(sec, '_', (size_t)(eq - sec));
	if (us != NULL) {
		size_t slen = (size_t)(us - sec), klen = (size_t)(eq - us - 1);

		secret = !is_known(sec, slen, us + 1, klen, true) ||
		         (is_url_key(us + 1, klen) && strchr(eq, '@'));
	}
	if (secret)
		add_words(w, eq + 1, strlen(eq + 1), all, all_len);
}

/* ---- checks ---- */

static void check_errors(const struct config_errors *errs, const struct words *w)
{
	for (size_t i = 0; i < errs->n; i++) {
		const char *e = errs->v[i];

		fuzz_check(e != NULL && e[0] != '\0');
		for (const char *c = e; *c; c++)
			fuzz_check(((unsigned char)*c >= 0x20 || *c == '\t') && *c != 0x7f);
		fuzz_check(strncmp(e, ORIGIN ":", strlen(ORIGIN ":")) == 0 ||
		           strncmp(e, memfd_path, strlen(memfd_path)) == 0 ||
		           strncmp(e, "environment: ", 13) == 0 ||
		           strncmp(e, "command line: ", 14) == 0);
		for (size_t k = 0; k < w->n; k++) {
			if (memmem(e, strlen(e), w->p[k], w->len[k]) != NULL) {
				fprintf(stderr, "secret word '%.*s' echoed in: %s\n",
				        (int)w->len[k], w->p[k], e);
				abort();
			}
		}
	}
}

static void check_config(const struct config *c)
{
	char buf[1024];
	char *path;

	fuzz_check(c->limits.guard_ms < c->limits.window_ms);
	fuzz_check(c->server.max_request_line <= c->server.max_header_size);
	fuzz_check(c->limits.max_queue_per_key <= c->limits.max_queue);
	fuzz_check((c->oauth.client_id[0] == '\0') == (c->oauth.client_secret_file[0] == '\0'));
	fuzz_check(c->server.listen != NULL && c->server.listen[0] != '\0');
	fuzz_check(c->limits.backend != CONFIG_BACKEND_REDIS || c->redis.url[0] != '\0');
	for (size_t i = 0; i < c->pit.n; i++)
		fuzz_check(c->pit.v[i].name[0] != '\0' && c->pit.v[i].value[0] != '\0');
	for (size_t i = 0; i < c->v1_keys.n; i++)
		fuzz_check(c->v1_keys.v[i].name[0] != '\0' && c->v1_keys.v[i].value[0] != '\0');
	for (size_t i = 0; i < c->clients.n; i++)
		fuzz_check(c->clients.v[i].name[0] != '\0' && c->clients.v[i].value[0] != '\0');

	fuzz_check(config_diff_static(c, c, buf, sizeof(buf)) == 0);
	fuzz_check(config_diff_static(defaults, c, buf, sizeof(buf)) >= 0);
	fuzz_check(fuzz_terminated(buf, sizeof(buf)));
	fuzz_check(config_diff_static(c, defaults, buf, 8) >= 0);
	fuzz_check(fuzz_terminated(buf, 8));
	path = config_store_path(c);
	fuzz_check(path != NULL && path[0] != '\0');
	free(path);
}

/* The exported value parsers on any string: only their documented results. */
static void check_parsers(const char *s)
{
	uint64_t v;
	bool b;
	int r;

	r = config_parse_duration_ms(s, &v);
	fuzz_check(r == 0 || r == -EINVAL || r == -ERANGE);
	r = config_parse_size(s, &v);
	fuzz_check(r == 0 || r == -EINVAL || r == -ERANGE);
	r = config_parse_bool(s, &b);
	fuzz_check(r == 0 || r == -EINVAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in);
	const uint8_t *sep = memmem(in.p, in.n, "\n%%\n", 4);
	size_t text_len = sep ? (size_t)(sep - in.p) + 1 : in.n;
	char *text = fuzz_strndup(in.p, text_len);
	char *env[MAX_ARGS + 1], *ov[MAX_ARGS];
	size_t n_env = 0, n_ov = 0;
	struct config_errors errs = { 0 };
	struct words w = { .n = 0 };
	struct config *cfg;
	const uint8_t *line;
	size_t len;

	init_once();
	in.p += text_len;
	in.n -= text_len;
	if (sep != NULL) {
		in.p += 3;
		in.n -= 3;
	}
	while (fuzz_line(&in, &line, &len)) {
		char *s = fuzz_strndup(line, len);

		check_parsers(s);
		if (len >= 9 && memcmp(s, "GHLPROXY_", 9) == 0 && n_env < MAX_ARGS) {
			env[n_env++] = s;
			env_words(&w, s, data, size);
		} else if (n_ov < MAX_ARGS) {
			ov[n_ov++] = s;
			override_words(&w, s, data, size);
		} else {
			free(s);
		}
	}
	env[n_env] = NULL;

	if (flags & 1) {
		/* the file as given, NUL bytes and all */
		file_words(&w, (const char *)data + 1, text_len, data, size);
		fuzz_check(ftruncate(memfd, 0) == 0);
		fuzz_check(pwrite(memfd, data + 1, text_len, 0) == (ssize_t)text_len);
		cfg = config_load(memfd_path, env, (const char *const *)ov, n_ov, &errs);
	} else {
		file_words(&w, text, strlen(text), data, size);
		cfg = config_load_string(text, ORIGIN, env, (const char *const *)ov, n_ov, &errs);
	}

	fuzz_check((cfg != NULL) == (errs.n == 0));
	check_errors(&errs, &w);
	if (cfg != NULL)
		check_config(cfg);

	config_free(cfg);
	config_errors_deinit(&errs);
	for (size_t i = 0; i < n_env; i++)
		free(env[i]);
	for (size_t i = 0; i < n_ov; i++)
		free(ov[i]);
	free(text);
	return 0;
}
