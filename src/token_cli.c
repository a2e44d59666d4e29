/*
 * token_cli.c: the `token` command (see token_cli.h): import, list and remove token entries in
 * the store the daemon reads, without the daemon's help, safely while it runs.
 *
 * Data enters as the command line (ids and user types only: a refresh token is read from
 * standard input, first line, and the command line is refused for it because every user of the
 * host can read another's arguments) and leaves as one store change, or as a listing that names
 * resources, user types, expiry, state, generation and update time, never a token.
 *
 * Two stores, as the daemon has them:
 *   file  (limits.backend = local): token_store.c's ts_file_update, under the same flock as the
 *         daemon's writes, so neither loses the other's change; the daemon notices the new file
 *         by polling its identity.
 *   redis (limits.backend = redis): hiredis' synchronous API, one connection for the command.
 *         import goes through ts_redis_cas_lua with the generation it read (and no lock owner),
 *         retried when another writer moved it, so the generation bumps exactly once per change
 *         and a daemon refreshing the same resource at that moment loses its fencing check and
 *         reads the imported entry.
 * Both encrypt with store.key_file when it is set.
 */
#include "token_cli.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

#include "config.h"
#include "credentials.h"
#include "redis.h"
#include "token_store.h"
#include "util.h"

#define EXIT_OK    0
#define EXIT_FAIL  1
#define EXIT_USAGE 2

#define ERR_LEN          512
#define REDIS_KEY_MAX    512
#define CAS_ATTEMPTS     16
#define REDIS_TIMEOUT_MS 1000u /* when the config says 0 */

enum cmd { CMD_IMPORT, CMD_LIST, CMD_REMOVE };

struct args {
	enum cmd cmd;
	const char *resource;
	const char *user_type;
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: ghlproxy [-c FILE] [-o K=V]... token import --resource ID "
	           "--user-type Location|Company\n"
	           "       ghlproxy [-c FILE] [-o K=V]... token list\n"
	           "       ghlproxy [-c FILE] [-o K=V]... token remove --resource ID\n"
	           "\n"
	           "import reads the refresh token from standard input (its first line),\n"
	           "never from the command line. The store is the daemon's: store.path,\n"
	           "or Redis when limits.backend = redis.\n");
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
	va_list ap;

	fputs("ghlproxy token: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- arguments ---- */

/* "--word-word[=...]": an option name that is safe to repeat in a message. */
static bool is_option_name(const char *arg)
{
	size_t n = strcspn(arg, "=");

	if (n < 3 || n > 32 || arg[0] != '-' || arg[1] != '-')
		return false;
	for (size_t i = 2; i < n; i++) {
		if (!((arg[i] >= 'a' && arg[i] <= 'z') || arg[i] == '-'))
			return false;
	}
	return true;
}

/*
 * An argument that is not ours is named in messages only by its option name, never by a value:
 * it may be a token pasted on the command line.
 */
static int parse_args(int argc, char **argv, struct args *a)
{
	const char *sub;

	memset(a, 0, sizeof(*a));
	if (argc < 2) {
		fail("missing command (import, list or remove)");
		return -1;
	}
	sub = argv[1];
	if (strcmp(sub, "import") == 0) {
		a->cmd = CMD_IMPORT;
	} else if (strcmp(sub, "list") == 0) {
		a->cmd = CMD_LIST;
	} else if (strcmp(sub, "remove") == 0) {
		a->cmd = CMD_REMOVE;
	} else {
		fail("unknown command (import, list or remove)");
		return -1;
	}
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i];
		const char **slot = NULL;
		const char *name = NULL;

		if (strncmp(arg, "--resource", 10) == 0 && (arg[10] == '\0' || arg[10] == '=')) {
			slot = &a->resource;
			name = "--resource";
		} else if (strncmp(arg, "--user-type", 11) == 0 &&
		           (arg[11] == '\0' || arg[11] == '=')) {
			slot = &a->user_type;
			name = "--user-type";
		}
		if (!slot || (a->cmd == CMD_LIST) ||
		    (a->cmd == CMD_REMOVE && slot == &a->user_type)) {
			if (arg[0] == '-' && arg[1] == '-' && strstr(arg, "token")) {
				fail("a token is never accepted on the command line: import reads "
				     "the refresh token from standard input");
			} else if (arg[0] == '-' && is_option_name(arg)) {
				fail("unknown option %.*s for %s", (int)strcspn(arg, "="), arg,
				     sub);
			} else if (arg[0] == '-') {
				fail("unknown option (not shown) for %s", sub);
			} else if (a->cmd == CMD_IMPORT) {
				fail("unexpected argument (not shown): import reads the refresh "
				     "token from standard input, never from the command line");
			} else {
				fail("unexpected argument (not shown) for %s", sub);
			}
			return -1;
		}
		if (*slot) {
			fail("%s given twice", name);
			return -1;
		}
		if (arg[strlen(name)] == '=') {
			*slot = arg + strlen(name) + 1;
		} else if (i + 1 < argc) {
			*slot = argv[++i];
		} else {
			fail("%s needs a value", name);
			return -1;
		}
	}
	if (a->cmd != CMD_LIST && !a->resource) {
		fail("%s needs --resource ID", sub);
		return -1;
	}
	if (a->resource && !ts_resource_valid(a->resource, strlen(a->resource))) {
		fail("--resource must be a location or company id: 1..%d of [A-Za-z0-9_-]",
		     TS_RESOURCE_MAX);
		return -1;
	}
	if (a->cmd == CMD_IMPORT) {
		enum ts_user_type t;
		if (!a->user_type || ts_user_type_parse(a->user_type, &t) < 0) {
			fail("import needs --user-type Location or --user-type Company");
			return -1;
		}
	}
	return 0;
}

/* ---- the refresh token from standard input ---- */

/*
 * The first line of fd 0, surrounding whitespace trimmed, read byte by byte with read(2) so no
 * stdio buffer keeps a copy. On a terminal, echo is off while it is typed. 0 and a malloc'd
 * token (wipe it), or -1 with the reason printed.
 */
static int read_refresh_token(const char *resource, char **out)
{
	size_t cap = TS_TOKEN_MAX + 1, len = 0, start = 0;
	char *buf = malloc(cap + 1);
	struct termios saved, quiet;
	bool is_tty = isatty(0) == 1, echo_off = false, too_long = false;
	int rc = -1;

	*out = NULL;
	if (!buf) {
		fail("out of memory");
		return -1;
	}
	if (is_tty && tcgetattr(0, &saved) == 0) {
		quiet = saved;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		echo_off = tcsetattr(0, TCSAFLUSH, &quiet) == 0;
		fprintf(stderr, "Refresh token for %s (not echoed): ", resource);
		(void)fflush(stderr); /* a prompt: nothing better to do if it fails */
	}
	for (;;) {
		char c;
		ssize_t n = read(0, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail("reading standard input: %s", strerror(errno));
			goto out;
		}
		if (n == 0 || c == '\n')
			break;
		if (len == cap) {
			too_long = true; /* keep reading to the end of the line, keep nothing */
			continue;
		}
		buf[len++] = c;
	}
	if (echo_off) {
		tcsetattr(0, TCSAFLUSH, &saved);
		fputc('\n', stderr);
	}
	echo_off = false;
	if (too_long) {
		fail("the refresh token is longer than %d bytes", TS_TOKEN_MAX);
		goto out;
	}
	while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t' || buf[len - 1] == '\r'))
		len--;
	while (start < len && (buf[start] == ' ' || buf[start] == '\t'))
		start++;
	if (start == len) {
		fail("no refresh token on standard input (give it as the first line)");
		goto out;
	}
	for (size_t i = start; i < len; i++) {
		if ((unsigned char)buf[i] < 0x21 || (unsigned char)buf[i] > 0x7e) {
			fail("the refresh token holds spaces or characters that are not printable "
			     "ASCII");
			goto out;
		}
	}
	memmove(buf, buf + start, len - start);
	len -= start;
	buf[len] = '\0';
	*out = buf;
	buf = NULL;
	rc = 0;
out:
	if (echo_off) {
		tcsetattr(0, TCSAFLUSH, &saved);
		fputc('\n', stderr);
	}
	if (buf) {
		OPENSSL_cleanse(buf, cap + 1);
		free(buf);
	}
	return rc;
}

/* The entry an import stores: the refresh token, no access token yet. */
/*
 * The generation of an imported entry: above the previous one, and above any generation a
 * removed entry of the same resource may have had (the wall clock in ms), so a daemon that
 * missed the removal between two polls still takes the import as the newer entry.
 */
static uint64_t import_generation(uint64_t prev)
{
	uint64_t now = (uint64_t)util_wall_ms();

	return prev + 1 > now ? prev + 1 : now;
}

static struct ts_entry *import_entry(const struct args *a, const char *refresh_token,
                                     uint64_t generation)
{
	struct ts_entry *e = ts_entry_new();

	if (!e)
		return NULL;
	util_strlcpy(e->resource, a->resource, sizeof(e->resource));
	ts_user_type_parse(a->user_type, &e->user_type);
	if (ts_entry_set_str(&e->refresh_token, refresh_token) < 0 ||
	    ts_entry_set_str(e->user_type == TS_USER_COMPANY ? &e->company_id : &e->location_id,
	                     a->resource) < 0) {
		ts_entry_free(e);
		return NULL;
	}
	e->access_expires_ms = 0;
	e->state = TS_STATE_OK;
	e->generation = generation;
	e->updated_ms = util_wall_ms();
	return e;
}

/* ---- listing ---- */

static void format_time(int64_t wall_ms, char *out, size_t len)
{
	time_t t = (time_t)(wall_ms / 1000);
	struct tm tm;

	if (wall_ms <= 0 || !gmtime_r(&t, &tm) ||
	    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		util_strlcpy(out, "-", len);
}

static void list_header(void)
{
	printf("%-24s  %-9s  %-20s  %-15s  %10s  %s\n", "RESOURCE", "USER_TYPE", "ACCESS_EXPIRES",
	       "STATE", "GENERATION", "UPDATED");
}

static void list_row(const struct ts_entry *e)
{
	char expires[32], updated[32];

	format_time(e->access_expires_ms, expires, sizeof(expires));
	format_time(e->updated_ms, updated, sizeof(updated));
	printf("%-24s  %-9s  %-20s  %-15s  %10" PRIu64 "  %s\n", e->resource,
	       ts_user_type_name(e->user_type), expires, ts_state_name(e->state), e->generation,
	       updated);
}

/* ---- the file store ---- */

struct import_ctx {
	const struct args *a;
	const char *refresh_token;
	uint64_t generation; /* out: the stored entry's */
};

static int import_mutate(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	struct import_ctx *ic = arg;
	struct ts_entry *old = ts_set_find(set, ic->a->resource);
	struct ts_entry *e;

	ic->generation = import_generation(old ? old->generation : 0);
	e = import_entry(ic->a, ic->refresh_token, ic->generation);
	if (!e || ts_set_put(set, e) < 0) {
		ts_entry_free(e);
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int remove_mutate(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	const char *resource = arg;

	if (ts_set_remove(set, resource) < 0) {
		snprintf(err, err_len, "no token for resource %s", resource);
		return -ENOENT;
	}
	return 0;
}

static int file_run(const struct config *cfg, const struct args *a, const struct ts_key *key,
                    const char *refresh_token)
{
	char err[ERR_LEN] = "";
	char *path = ts_default_path(cfg);
	int rc = EXIT_FAIL;

	if (!path) {
		fail("out of memory");
		return EXIT_FAIL;
	}
	if (a->cmd == CMD_IMPORT) {
		struct import_ctx ic = { .a = a, .refresh_token = refresh_token };
		if (ts_file_update(path, key, import_mutate, &ic, NULL, err, sizeof(err)) < 0) {
			fail("%s", err);
			goto out;
		}
		printf("imported the refresh token of %s %s into %s (generation %" PRIu64 ")\n",
		       a->user_type, a->resource, path, ic.generation);
	} else if (a->cmd == CMD_REMOVE) {
		if (ts_file_update(path, key, remove_mutate, (void *)a->resource, NULL, err,
		                   sizeof(err)) < 0) {
			fail("%s", err);
			goto out;
		}
		printf("removed the tokens of %s from %s\n", a->resource, path);
	} else {
		struct ts_set set;
		ts_set_init(&set);
		if (ts_file_load(path, key, &set, NULL, err, sizeof(err)) < 0) {
			fail("%s", err);
			goto out;
		}
		list_header();
		for (size_t i = 0; i < set.n; i++)
			list_row(set.v[i]);
		ts_set_deinit(&set);
	}
	rc = EXIT_OK;
out:
	free(path);
	return rc;
}

/* ---- the Redis store ---- */

static struct timeval tv_of_ms(uint32_t ms)
{
	if (ms == 0)
		ms = REDIS_TIMEOUT_MS;
	return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

/*
 * One command. Returns the reply (freeReplyObject), or NULL with the reason printed: the
 * connection failed, or the server answered with an error (its text is the server's, never our
 * arguments).
 */
static redisReply *rcmd(redisContext *c, int argc, const char **argv, const size_t *lens)
{
	redisReply *r = redisCommandArgv(c, argc, argv, lens);

	if (!r) {
		fail("redis %s: %s", argv[0], c->errstr[0] ? c->errstr : "connection lost");
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		fail("redis %s: %.200s", argv[0], r->str ? r->str : "error");
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

static redisContext *redis_open(const struct config *cfg)
{
	struct redis_target ra;
	const char *why = NULL;
	redisContext *c;
	struct timeval ctv = tv_of_ms(cfg->redis.connect_timeout_ms);
	char *password = NULL;

	if (redis_parse_url(cfg->redis.url, &ra, &why) < 0) {
		fail("%s", why);
		return NULL;
	}
	c = ra.is_unix ? redisConnectUnixWithTimeout(ra.path, ctv)
	               : redisConnectWithTimeout(ra.host, ra.port, ctv);
	if (!c || c->err) {
		if (ra.is_unix)
			fail("cannot connect to Redis at unix:%s: %s", ra.path,
			     c ? c->errstr : "out of memory");
		else
			fail("cannot connect to Redis at %s port %d: %s", ra.host, ra.port,
			     c ? c->errstr : "out of memory");
		redisFree(c);
		return NULL;
	}
	if (redisSetTimeout(c, tv_of_ms(cfg->redis.command_timeout_ms)) != REDIS_OK) {
		fail("cannot set the Redis command timeout");
		redisFree(c);
		return NULL;
	}
	if (cfg->redis.password_file && *cfg->redis.password_file) {
		/* As the daemon reads it: through $CREDENTIALS_DIRECTORY, trimmed. */
		char reason[400];
		if (credentials_read_file(cfg->redis.password_file, 4096, &password, reason,
		                          sizeof(reason)) < 0) {
			fail("redis.password_file: %s", reason);
			redisFree(c);
			return NULL;
		}
		size_t password_len = strlen(password);
		const char *argv[] = { "AUTH", password };
		const size_t lens[] = { 4, password_len };
		redisReply *r = rcmd(c, 2, argv, lens);
		util_wipe_free(password, password_len);
		if (!r) {
			redisFree(c);
			return NULL;
		}
		freeReplyObject(r);
	}
	if (ra.db != 0) {
		char db[16];
		snprintf(db, sizeof(db), "%d", ra.db);
		const char *argv[] = { "SELECT", db };
		redisReply *r = rcmd(c, 2, argv, NULL);
		if (!r) {
			redisFree(c);
			return NULL;
		}
		freeReplyObject(r);
	}
	return c;
}

/* HGET of one field of an entry key: 0 and *r (a string reply, or NULL when absent), or -1. */
static int hget(redisContext *c, const char *key, const char *field, redisReply **out)
{
	const char *argv[] = { "HGET", key, field };
	redisReply *r = rcmd(c, 3, argv, NULL);

	*out = NULL;
	if (!r)
		return -1;
	if (r->type == REDIS_REPLY_NIL) {
		freeReplyObject(r);
		return 0;
	}
	if (r->type != REDIS_REPLY_STRING) {
		fail("redis HGET %s: not a string", field);
		freeReplyObject(r);
		return -1;
	}
	*out = r;
	return 0;
}

static void free_secret_reply(redisReply *r)
{
	if (r && r->type == REDIS_REPLY_STRING && r->str)
		OPENSSL_cleanse(r->str, r->len);
	freeReplyObject(r);
}

static int redis_import(redisContext *c, const char *prefix, const struct args *a,
                        const struct ts_key *key, const char *refresh_token)
{
	char ekey[REDIS_KEY_MAX], lkey[REDIS_KEY_MAX], ikey[REDIS_KEY_MAX];
	char err[ERR_LEN];

	if (ts_redis_entry_key(prefix, a->resource, ekey, sizeof(ekey)) < 0 ||
	    ts_redis_lock_key(prefix, a->resource, lkey, sizeof(lkey)) < 0 ||
	    ts_redis_index_key(prefix, ikey, sizeof(ikey)) < 0) {
		fail("redis.key_prefix is too long");
		return EXIT_FAIL;
	}
	/* Index first: an index member without an entry is skipped by readers, the reverse
	 * would hide a token. */
	const char *sadd[] = { "SADD", ikey, a->resource };
	redisReply *r = rcmd(c, 3, sadd, NULL);
	if (!r)
		return EXIT_FAIL;
	freeReplyObject(r);

	for (int attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
		redisReply *gr;
		uint64_t prev = 0;
		char prev_s[24], next_s[24];
		char *blob = NULL;
		size_t blob_len = 0;

		if (hget(c, ekey, "gen", &gr) < 0)
			return EXIT_FAIL;
		if (gr) {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(gr->str, &end, 10);
			bool ok = gr->len > 0 && *end == '\0' && errno == 0 && gr->str[0] != '-' &&
			          v < INT64_MAX;
			freeReplyObject(gr);
			if (!ok) {
				fail("redis: the generation of %s is not a number", a->resource);
				return EXIT_FAIL;
			}
			prev = v;
		}
		snprintf(prev_s, sizeof(prev_s), "%" PRIu64, prev);
		uint64_t next = import_generation(prev);
		snprintf(next_s, sizeof(next_s), "%" PRIu64, next);
		struct ts_entry *e = import_entry(a, refresh_token, next);
		if (!e) {
			fail("out of memory");
			return EXIT_FAIL;
		}
		int rc = ts_encode_entry(e, key, &blob, &blob_len, err, sizeof(err));
		ts_entry_free(e);
		if (rc < 0) {
			fail("%s", err);
			return EXIT_FAIL;
		}
		const char *argv[] = { "EVAL", ts_redis_cas_lua, "2", ekey, lkey, prev_s, blob, "",
			               next_s };
		const size_t lens[] = { 4,
			                strlen(ts_redis_cas_lua),
			                1,
			                strlen(ekey),
			                strlen(lkey),
			                strlen(prev_s),
			                blob_len,
			                0,
			                strlen(next_s) };
		r = rcmd(c, 9, argv, lens);
		ts_buf_free(blob, blob_len);
		if (!r)
			return EXIT_FAIL;
		long long outcome = r->type == REDIS_REPLY_INTEGER ? r->integer : -2;
		freeReplyObject(r);
		if (outcome == 1) {
			printf("imported the refresh token of %s %s into Redis (generation %s)\n",
			       a->user_type, a->resource, next_s);
			return EXIT_OK;
		}
		if (outcome != 0) {
			fail("redis: unexpected answer from the store script");
			return EXIT_FAIL;
		}
		/* Another writer moved the generation between our read and the script: again. */
	}
	fail("redis: %s kept changing under us; try again", a->resource);
	return EXIT_FAIL;
}

static int redis_remove(redisContext *c, const char *prefix, const struct args *a)
{
	char ekey[REDIS_KEY_MAX], ikey[REDIS_KEY_MAX];

	if (ts_redis_entry_key(prefix, a->resource, ekey, sizeof(ekey)) < 0 ||
	    ts_redis_index_key(prefix, ikey, sizeof(ikey)) < 0) {
		fail("redis.key_prefix is too long");
		return EXIT_FAIL;
	}
	const char *del[] = { "DEL", ekey };
	redisReply *r = rcmd(c, 2, del, NULL);
	if (!r)
		return EXIT_FAIL;
	long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
	freeReplyObject(r);
	const char *srem[] = { "SREM", ikey, a->resource };
	r = rcmd(c, 3, srem, NULL);
	if (!r)
		return EXIT_FAIL;
	freeReplyObject(r);
	if (n == 0) {
		fail("no token for resource %s", a->resource);
		return EXIT_FAIL;
	}
	printf("removed the tokens of %s from Redis\n", a->resource);
	return EXIT_OK;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

static int redis_list(redisContext *c, const char *prefix, const struct ts_key *key)
{
	char ikey[REDIS_KEY_MAX], ekey[REDIS_KEY_MAX], err[ERR_LEN];
	const char **ids = NULL;
	size_t n = 0;
	int rc = EXIT_OK;

	if (ts_redis_index_key(prefix, ikey, sizeof(ikey)) < 0) {
		fail("redis.key_prefix is too long");
		return EXIT_FAIL;
	}
	const char *smembers[] = { "SMEMBERS", ikey };
	redisReply *set = rcmd(c, 2, smembers, NULL);
	if (!set)
		return EXIT_FAIL;
	if (set->type != REDIS_REPLY_ARRAY) {
		fail("redis: %s is not a set", ikey);
		freeReplyObject(set);
		return EXIT_FAIL;
	}
	ids = calloc(set->elements ? set->elements : 1, sizeof(*ids));
	if (!ids) {
		fail("out of memory");
		freeReplyObject(set);
		return EXIT_FAIL;
	}
	for (size_t i = 0; i < set->elements; i++) {
		redisReply *m = set->element[i];
		if (m->type == REDIS_REPLY_STRING && ts_resource_valid(m->str, m->len))
			ids[n++] = m->str;
		else
			fail("redis: skipping a member of %s that is not a resource id", ikey);
	}
	qsort(ids, n, sizeof(*ids), cmp_str);
	list_header();
	for (size_t i = 0; i < n; i++) {
		redisReply *blob;
		struct ts_entry *e;

		if (ts_redis_entry_key(prefix, ids[i], ekey, sizeof(ekey)) < 0 ||
		    hget(c, ekey, "blob", &blob) < 0) {
			rc = EXIT_FAIL;
			break;
		}
		if (!blob)
			continue; /* indexed, not (or no longer) stored */
		if (ts_decode_entry(blob->str, blob->len, key, &e, err, sizeof(err)) < 0) {
			fail("%s: %s", ids[i], err);
			rc = EXIT_FAIL;
		} else {
			list_row(e);
			ts_entry_free(e);
		}
		free_secret_reply(blob);
	}
	free(ids);
	freeReplyObject(set);
	return rc;
}

static int redis_run(const struct config *cfg, const struct args *a, const struct ts_key *key,
                     const char *refresh_token)
{
	const char *prefix = cfg->redis.key_prefix ? cfg->redis.key_prefix : "";
	redisContext *c = redis_open(cfg);
	int rc;

	if (!c)
		return EXIT_FAIL;
	if (a->cmd == CMD_IMPORT)
		rc = redis_import(c, prefix, a, key, refresh_token);
	else if (a->cmd == CMD_REMOVE)
		rc = redis_remove(c, prefix, a);
	else
		rc = redis_list(c, prefix, key);
	redisFree(c);
	return rc;
}

/* ---- entry ---- */

int token_cli_main(const struct config *cfg, int argc, char **argv)
{
	struct args a;
	struct ts_key key = { { 0 } };
	bool has_key = cfg->store.key_file && *cfg->store.key_file;
	char *refresh_token = NULL;
	char err[ERR_LEN];
	int rc;

	if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
	                  strcmp(argv[1], "help") == 0)) {
		usage(stdout);
		return EXIT_OK;
	}
	if (parse_args(argc, argv, &a) < 0) {
		usage(stderr);
		return EXIT_USAGE;
	}
	char key_path[PATH_MAX];
	if (has_key)
		credentials_resolve(cfg->store.key_file, key_path, sizeof(key_path));
	if (has_key && ts_key_load(key_path, &key, err, sizeof(err)) < 0) {
		fail("%s", err);
		return EXIT_FAIL;
	}
	if (a.cmd == CMD_IMPORT && read_refresh_token(a.resource, &refresh_token) < 0) {
		ts_key_wipe(&key);
		return EXIT_FAIL;
	}
	if (cfg->limits.backend == CONFIG_BACKEND_REDIS)
		rc = redis_run(cfg, &a, has_key ? &key : NULL, refresh_token);
	else
		rc = file_run(cfg, &a, has_key ? &key : NULL, refresh_token);
	/* A listing cut short (a full disk, a closed pipe) must not exit 0. */
	if ((fflush(stdout) != 0 || ferror(stdout)) && rc == EXIT_OK) {
		fail("writing standard output failed");
		rc = EXIT_FAIL;
	}
	if (refresh_token) {
		OPENSSL_cleanse(refresh_token, strlen(refresh_token));
		free(refresh_token);
	}
	ts_key_wipe(&key);
	return rc;
}
