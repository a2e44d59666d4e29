/*
 * test_token_cli.c: `ghlproxy -c FILE token import|list|remove` run as the real binary, on a
 * file store, an encrypted file store and a Redis store (a real redis-server on a unix socket,
 * with a password and a database number): what each command stores, that `list` and every
 * message hold no token, that a token on the command line is refused, that concurrent imports
 * lose nothing (the store's flock), and the Redis compare-and-set script the daemon will use.
 *
 * The refresh token reaches the binary's standard input through `sh -c '... < file'` (the
 * harness gives children /dev/null). Token values contain "SECRET" so leaks are easy to find.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>

#include "fixture.h"
#include "harness.h"
#include "token_store.h"

static char *dir;
static int run_no;

static void setup(void)
{
	dir = harness_tmpdir();
	cr_assert(dir);
	run_no = 0;
	/* Every token, password and key these tests give the CLI, for the secret scan. */
	harness_secret("SECRET-rt-one");
	harness_secret("SECRET-rt-two");
	harness_secret("SECRET-rt-c");
	harness_secret("SECRET-rt-enc");
	harness_secret("SECRET-rt");
	harness_secret("SECRET-x");
	harness_secret("SECRET-on-cmdline");
	harness_secret("SECRET-stdin");
	harness_secret("SECRET with space");
	harness_secret("SECRET-redis-pw");
	harness_secret("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
	harness_secret("ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100");
}

static void teardown(void)
{
	harness_tmpdir_free(dir);
}

TestSuite(token_cli, .init = setup, .fini = teardown, .timeout = 120);

struct run {
	int rc;
	char *out; /* stdout */
	char *err; /* stderr */
};

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
}

/*
 * Start `ghlproxy -c conf token <args>` with stdin_text on standard input (NULL: empty); its
 * stdout goes to dir/cliN.out (N in *n). args is shell text (the test's own).
 */
/* Shell text run before the CLI (an `export`), or "". */
static const char *cli_prelude = "";

static struct harness_proc *spawn_cli(const char *conf, const char *args, const char *stdin_text,
                                      int *n)
{
	char name[32], in_name[48], *cmd;

	*n = ++run_no;
	snprintf(name, sizeof(name), "cli%d", *n);
	snprintf(in_name, sizeof(in_name), "cli%d.in", *n);
	cr_assert_eq(harness_write_file(dir, in_name, stdin_text ? stdin_text : ""), 0);
	cr_assert(asprintf(&cmd, "%sexec '%s' -c '%s' token %s < '%s/%s' > '%s/cli%d.out'",
	                   cli_prelude, harness_proxy_bin(), conf, args, dir, in_name, dir,
	                   *n) > 0);
	char *argv[] = { "/bin/sh", "-c", cmd, NULL };
	struct harness_proc *p = harness_spawn(dir, name, argv, NULL);
	free(cmd);
	cr_assert(p);
	return p;
}

/* Wait for a spawned command and collect its exit code and output. */
static struct run finish_cli(struct harness_proc *p, int n)
{
	struct run r = { 0 };
	char *out_path;

	r.rc = harness_wait_exit(p, 30000);
	r.err = harness_log(p);
	harness_proc_free(p);
	cr_assert(asprintf(&out_path, "%s/cli%d.out", dir, n) > 0);
	r.out = harness_read_file(out_path, NULL);
	cr_assert(r.out);
	harness_transcript_append("log-cli-stdout", r.out, strlen(r.out));
	cr_assert(r.err);
	free(out_path);
	return r;
}

/* Run `ghlproxy -c conf token <args>` to completion. */
static struct run run_cli(const char *conf, const char *args, const char *stdin_text)
{
	int n;
	struct harness_proc *p = spawn_cli(conf, args, stdin_text, &n);
	return finish_cli(p, n);
}

/* A config file with store.path in dir plus extra text; returns its path (caller frees). */
static char *write_conf(const char *name, const char *extra)
{
	char *text, *path;
	cr_assert(asprintf(&text,
	                   "[server]\nlisten = 127.0.0.1:0\n[store]\npath = %s/tokens.json\n%s",
	                   dir, extra ? extra : "") > 0);
	cr_assert_eq(harness_write_file(dir, name, text), 0);
	free(text);
	cr_assert(asprintf(&path, "%s/%s", dir, name) > 0);
	return path;
}

static char *in_dir(const char *name)
{
	char *p;
	cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

static void expect_no_secret(const struct run *r, const char *what)
{
	cr_expect_null(strstr(r->out, "SECRET"), "%s: a token on stdout", what);
	cr_expect_null(strstr(r->err, "SECRET"), "%s: a token on stderr", what);
}

/* The store file's entries, under key (NULL: plain). */
static void load_store(const struct ts_key *key, struct ts_set *s)
{
	char err[512] = "";
	char *p = in_dir("tokens.json");
	ts_set_init(s);
	cr_assert_eq(ts_file_load(p, key, s, NULL, err, sizeof(err)), 0, "%s", err);
	free(p);
}

static int count_temp_files(void)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	cr_assert(d);
	while ((de = readdir(d)) != NULL)
		n += strncmp(de->d_name, ".tokens.json.", 13) == 0;
	closedir(d);
	return n;
}

/* The line of a list output that starts with resource (NULL when none). Caller frees. */
static char *list_line(const char *out, const char *resource)
{
	for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		size_t n = strcspn(l, "\n");
		if (strncmp(l, resource, strlen(resource)) == 0 && l[strlen(resource)] == ' ')
			return strndup(l, n);
	}
	return NULL;
}

/* The generation an import reported ("... (generation N)"); 0 when absent. Imports take the
 * wall clock in ms (or the previous generation + 1, if higher), so a removed and re-imported
 * resource still counts as newer for a daemon that missed the removal. */
static uint64_t reported_generation(const char *out)
{
	const char *g = strstr(out, "generation ");
	return g ? strtoull(g + strlen("generation "), NULL, 10) : 0;
}

static void expect_listed(const char *out, const char *resource, const char *type, const char *gen)
{
	char *line = list_line(out, resource);
	cr_assert(line, "%s not listed in:\n%s", resource, out);
	cr_expect(strstr(line, type), "%s", line);
	cr_expect(strstr(line, " ok "), "%s", line);
	if (gen) {
		char want[32];
		snprintf(want, sizeof(want), " %s ", gen);
		cr_expect(strstr(line, want), "generation %s: %s", gen, line);
	}
	/* No access token yet: expiry "-"; updated is a UTC ISO-8601 date. */
	cr_expect(strstr(line, " - "), "%s", line);
	cr_expect(strstr(line, "Z"), "%s", line);
	free(line);
}

/* ---- the file store ---- */

Test(token_cli, file_import_list_remove)
{
	char *conf = write_conf("a.conf", NULL);
	struct run r;
	struct ts_set s;
	struct stat st;

	r = run_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt-one\n");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	uint64_t g1 = reported_generation(r.out);
	cr_expect_geq(g1, 1700000000000ULL, "%s", r.out);
	expect_no_secret(&r, "import");
	run_free(&r);

	char *p = in_dir("tokens.json");
	cr_assert_eq(stat(p, &st), 0);
	cr_expect_eq(st.st_mode & 0777, 0600);
	free(p);
	load_store(NULL, &s);
	cr_assert_eq(s.n, 1);
	struct ts_entry *e = s.v[0];
	cr_expect_str_eq(e->resource, "loc1");
	cr_expect_eq(e->user_type, TS_USER_LOCATION);
	cr_expect(strcmp(e->refresh_token, "SECRET-rt-one") == 0, "refresh token not stored");
	cr_expect_str_eq(e->access_token, "");
	cr_expect_eq(e->access_expires_ms, 0);
	cr_expect_eq(e->state, TS_STATE_OK);
	cr_expect_eq(e->generation, g1);
	cr_expect_str_eq(e->location_id, "loc1");
	cr_expect_gt(e->updated_ms, 1700000000000);
	ts_set_deinit(&s);

	/* Again: replaced, generation bumped; surrounding whitespace trimmed, line 2 ignored. */
	r = run_cli(conf, "import --resource=loc1 --user-type=Location",
	            "  SECRET-rt-two \r\nignored\n");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	uint64_t g2 = reported_generation(r.out);
	cr_expect_gt(g2, g1, "%s", r.out);
	run_free(&r);
	r = run_cli(conf, "import --user-type Company --resource Cmp_9", "SECRET-rt-c");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	load_store(NULL, &s);
	cr_assert_eq(s.n, 2);
	e = ts_set_find(&s, "loc1");
	cr_assert(e);
	cr_expect(strcmp(e->refresh_token, "SECRET-rt-two") == 0, "not trimmed or not replaced");
	cr_expect_eq(e->generation, g2);
	e = ts_set_find(&s, "Cmp_9");
	cr_assert(e);
	cr_expect_eq(e->user_type, TS_USER_COMPANY);
	cr_expect_str_eq(e->company_id, "Cmp_9");
	ts_set_deinit(&s);

	r = run_cli(conf, "list", NULL);
	cr_assert_eq(r.rc, 0, "%s", r.err);
	cr_expect(strncmp(r.out, "RESOURCE", 8) == 0, "%s", r.out);
	expect_listed(r.out, "loc1", "Location", NULL);
	expect_listed(r.out, "Cmp_9", "Company", NULL);
	expect_no_secret(&r, "list");
	run_free(&r);

	r = run_cli(conf, "remove --resource loc1", NULL);
	cr_assert_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	r = run_cli(conf, "remove --resource loc1", NULL);
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "no token for resource loc1"), "%s", r.err);
	run_free(&r);
	r = run_cli(conf, "list", NULL);
	cr_assert_eq(r.rc, 0);
	char *gone = list_line(r.out, "loc1");
	cr_expect_null(gone, "removed entry still listed");
	free(gone);
	expect_listed(r.out, "Cmp_9", "Company", NULL);
	run_free(&r);
	cr_expect_eq(count_temp_files(), 0);
	free(conf);
}

Test(token_cli, list_of_a_missing_store_is_empty)
{
	char *conf = write_conf("a.conf", NULL);
	struct run r = run_cli(conf, "list", NULL);
	cr_expect_eq(r.rc, 0, "%s", r.err);
	cr_expect(strncmp(r.out, "RESOURCE", 8) == 0);
	cr_expect_null(strchr(strchr(r.out, '\n') + 1, '\n'), "rows in an empty store");
	run_free(&r);
	free(conf);
}

static const char key_hex[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";

Test(token_cli, encrypted_file_store)
{
	cr_assert_eq(harness_write_file(dir, "store.key", key_hex), 0);
	cr_assert_eq(harness_write_file(
	                     dir, "other.key",
	                     "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"),
	             0);
	char *kx, *ko;
	cr_assert(asprintf(&kx, "key_file = %s/store.key\n", dir) > 0);
	cr_assert(asprintf(&ko, "key_file = %s/other.key\n", dir) > 0);
	char *conf = write_conf("enc.conf", kx);
	char *wrong = write_conf("wrong.conf", ko);
	char *plain = write_conf("plain.conf", NULL);
	struct run r;

	r = run_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt-enc\n");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	run_free(&r);

	/* On disk: no token, no resource id; the key opens it. */
	char *p = in_dir("tokens.json");
	char *raw = harness_read_file(p, NULL);
	cr_assert(raw);
	cr_expect(strstr(raw, "\"cipher\":\"aes-256-gcm\""));
	cr_expect_null(strstr(raw, "SECRET"));
	cr_expect_null(strstr(raw, "loc1"));
	free(raw);
	struct ts_key key;
	char err[512];
	cr_assert_eq(ts_key_parse(key_hex, strlen(key_hex), &key, err, sizeof(err)), 0);
	struct ts_set s;
	load_store(&key, &s);
	cr_assert_eq(s.n, 1);
	cr_expect(strcmp(s.v[0]->refresh_token, "SECRET-rt-enc") == 0);
	ts_set_deinit(&s);

	r = run_cli(conf, "list", NULL);
	cr_assert_eq(r.rc, 0, "%s", r.err);
	expect_listed(r.out, "loc1", "Location", NULL);
	expect_no_secret(&r, "list");
	run_free(&r);

	/* A wrong key and no key: clear errors, the file untouched. */
	struct ts_file_id before, after;
	cr_assert_eq(ts_file_identity(p, &before), 0);
	r = run_cli(wrong, "list", NULL);
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "cannot decrypt the token store: wrong store.key_file?"), "%s",
	          r.err);
	run_free(&r);
	r = run_cli(wrong, "import --resource loc2 --user-type Location", "SECRET-x\n");
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "wrong store.key_file?"), "%s", r.err);
	expect_no_secret(&r, "wrong key import");
	run_free(&r);
	r = run_cli(plain, "list", NULL);
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "is encrypted: set store.key_file"), "%s", r.err);
	run_free(&r);
	cr_assert_eq(ts_file_identity(p, &after), 0);
	cr_expect(ts_file_id_equal(&before, &after), "a failed command replaced the file");

	r = run_cli(conf, "remove --resource loc1", NULL);
	cr_expect_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	load_store(&key, &s);
	cr_expect_eq(s.n, 0);
	ts_set_deinit(&s);
	cr_expect_eq(count_temp_files(), 0);
	free(p);
	free(kx);
	free(ko);
	free(conf);
	free(wrong);
	free(plain);
}

/* Eight imports at once, each of its own resource: the flock'd update loses none. */
Test(token_cli, concurrent_imports_lose_nothing)
{
	enum { N = 8 };
	char *conf = write_conf("a.conf", NULL);
	struct harness_proc *procs[N];
	char *cmds[N];

	for (int i = 0; i < N; i++) {
		char in_name[32];
		snprintf(in_name, sizeof(in_name), "c%d.in", i);
		cr_assert_eq(harness_write_file(dir, in_name, "SECRET-rt-c\n"), 0);
		cr_assert(asprintf(&cmds[i],
		                   "exec '%s' -c '%s' token import --resource loc%d --user-type "
		                   "Location < '%s/%s' > /dev/null",
		                   harness_proxy_bin(), conf, i, dir, in_name) > 0);
		char name[16];
		snprintf(name, sizeof(name), "c%d", i);
		char *argv[] = { "/bin/sh", "-c", cmds[i], NULL };
		procs[i] = harness_spawn(dir, name, argv, NULL);
		cr_assert(procs[i]);
	}
	for (int i = 0; i < N; i++) {
		cr_expect_eq(harness_wait_exit(procs[i], 30000), 0);
		harness_proc_free(procs[i]);
		free(cmds[i]);
	}
	struct ts_set s;
	load_store(NULL, &s);
	cr_expect_eq(s.n, N);
	ts_set_deinit(&s);
	cr_expect_eq(count_temp_files(), 0);
	free(conf);
}

/* An import waits for the store's lock (held here as a daemon's write would hold it). */
Test(token_cli, import_waits_for_the_store_lock)
{
	char *conf = write_conf("a.conf", NULL);
	char *lock = in_dir("tokens.json.lock"), *p = in_dir("tokens.json");
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	int n;

	cr_assert_geq(fd, 0);
	cr_assert_eq(flock(fd, LOCK_EX), 0);
	struct harness_proc *proc =
	        spawn_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt\n", &n);
	/* Still blocked after a while, and nothing written. */
	cr_expect_eq(harness_wait_exit(proc, 500), -1, "import did not wait for the lock");
	cr_expect_neq(access(p, F_OK), 0, "written while the lock was held");
	close(fd);
	struct run r = finish_cli(proc, n);
	cr_expect_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	struct ts_set s;
	load_store(NULL, &s);
	cr_expect_eq(s.n, 1);
	ts_set_deinit(&s);
	free(lock);
	free(p);
	free(conf);
}

/* ---- usage: the command line never carries a token ---- */

Test(token_cli, token_on_the_command_line_refused)
{
	char *conf = write_conf("a.conf", NULL);
	static const char *const cases[] = {
		"import --resource loc1 --user-type Location SECRET-on-cmdline",
		"import --resource loc1 --user-type Location --refresh-token SECRET-on-cmdline",
		"import --resource loc1 --user-type Location --refresh-token=SECRET-on-cmdline",
		"import --resource loc1 --user-type Location --token=SECRET-on-cmdline",
		"import SECRET-on-cmdline --resource loc1 --user-type Location",
		"import --resource loc1 --user-type Location -SECRET-on-cmdline",
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* Even with a token on stdin: nothing is stored. */
		struct run r = run_cli(conf, cases[i], "SECRET-stdin\n");
		cr_expect_eq(r.rc, 2, "case %zu: rc %d", i, r.rc);
		expect_no_secret(&r, cases[i]);
		cr_expect(strstr(r.err, "standard input") || strstr(r.err, "unknown option"),
		          "case %zu: %s", i, r.err);
		run_free(&r);
	}
	char *p = in_dir("tokens.json");
	cr_expect_neq(access(p, F_OK), 0, "something was stored");
	free(p);
	free(conf);
}

Test(token_cli, usage_errors)
{
	char *conf = write_conf("a.conf", NULL);
	static const struct {
		const char *args, *stdin_text, *want;
		int rc;
	} cases[] = {
		{ "", NULL, "missing command", 2 },
		{ "rotate", NULL, "unknown command", 2 },
		{ "import --user-type Location", "SECRET\n", "needs --resource", 2 },
		{ "import --resource loc1", "SECRET\n", "--user-type Location", 2 },
		{ "import --resource loc1 --user-type Agency", "SECRET\n", "--user-type Location",
		  2 },
		{ "import --resource 'a/b' --user-type Location", "SECRET\n", "--resource must be",
		  2 },
		{ "import --resource loc1 --resource loc2 --user-type Location", "SECRET\n",
		  "given twice", 2 },
		{ "import --resource", NULL, "needs a value", 2 },
		{ "list --resource loc1", NULL, "unknown option --resource", 2 },
		{ "remove", NULL, "needs --resource", 2 },
		{ "import --resource loc1 --user-type Location", "", "no refresh token", 1 },
		{ "import --resource loc1 --user-type Location", "  \n", "no refresh token", 1 },
		{ "import --resource loc1 --user-type Location", "SECRET with space\n",
		  "not printable ASCII", 1 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct run r = run_cli(conf, cases[i].args, cases[i].stdin_text);
		cr_expect_eq(r.rc, cases[i].rc, "'%s': rc %d", cases[i].args, r.rc);
		cr_expect(strstr(r.err, cases[i].want), "'%s': %s", cases[i].args, r.err);
		expect_no_secret(&r, cases[i].args);
		run_free(&r);
	}
	struct run r = run_cli(conf, "--help", NULL);
	cr_expect_eq(r.rc, 0);
	cr_expect(strstr(r.out, "token import --resource ID"), "%s", r.out);
	run_free(&r);
	free(conf);
}

Test(token_cli, main_usage_mentions_token)
{
	char *out_path = in_dir("h.out"), *cmd;
	cr_assert(asprintf(&cmd, "exec '%s' -h > '%s'", harness_proxy_bin(), out_path) > 0);
	char *argv[] = { "/bin/sh", "-c", cmd, NULL };
	struct harness_proc *p = harness_spawn(dir, "help", argv, NULL);
	cr_assert(p);
	cr_expect_eq(harness_wait_exit(p, 10000), 0);
	harness_proc_free(p);
	char *out = harness_read_file(out_path, NULL);
	cr_assert(out);
	cr_expect(strstr(out, "token import --resource ID --user-type Location|Company"), "%s",
	          out);
	cr_expect(strstr(out, "token list"));
	cr_expect(strstr(out, "token remove --resource ID"));
	free(out);
	free(cmd);
	free(out_path);
}

/* ---- the Redis store ---- */

struct redis_env {
	struct harness_proc *server;
	char sock[256];
	redisContext *c; /* the test's own connection, database 3 */
};

static void redis_env_start(struct redis_env *re)
{
	re->server = fixture_redis_start(dir, "redis", "--requirepass SECRET-redis-pw", re->sock,
	                                 sizeof(re->sock));
	cr_assert(re->server, "redis-server did not start");
	re->c = redisConnectUnix(re->sock);
	cr_assert(re->c && !re->c->err);
	redisReply *r = redisCommand(re->c, "AUTH %s", "SECRET-redis-pw");
	cr_assert(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
	r = redisCommand(re->c, "SELECT 3");
	cr_assert(r && r->type == REDIS_REPLY_STATUS);
	freeReplyObject(r);
}

static void redis_env_stop(struct redis_env *re)
{
	redisFree(re->c);
	harness_proc_free(re->server);
}

static char *redis_conf(const struct redis_env *re, const char *name, const char *extra)
{
	char *text, *conf;
	cr_assert_eq(harness_write_file(dir, "redis.pw", "SECRET-redis-pw\n"), 0);
	cr_assert(asprintf(&text,
	                   "[limits]\nbackend = redis\n[redis]\nurl = unix://%s?db=3\n"
	                   "password_file = %s/redis.pw\nkey_prefix = tst\n%s",
	                   re->sock, dir, extra ? extra : "") > 0);
	conf = write_conf(name, text);
	free(text);
	return conf;
}

/* HGET key field as a malloc'd string, or NULL when absent. */
static char *hget(redisContext *c, const char *key, const char *field, size_t *len)
{
	redisReply *r = redisCommand(c, "HGET %s %s", key, field);
	cr_assert(r);
	char *v = NULL;
	if (r->type == REDIS_REPLY_STRING) {
		v = malloc(r->len + 1);
		cr_assert(v);
		memcpy(v, r->str, r->len);
		v[r->len] = '\0';
		if (len)
			*len = r->len;
	}
	freeReplyObject(r);
	return v;
}

static long long sismember(redisContext *c, const char *set, const char *m)
{
	redisReply *r = redisCommand(c, "SISMEMBER %s %s", set, m);
	cr_assert(r && r->type == REDIS_REPLY_INTEGER);
	long long v = r->integer;
	freeReplyObject(r);
	return v;
}

static void redis_round_trip(const struct ts_key *key, const char *key_conf)
{
	struct redis_env re;
	struct run r;

	redis_env_start(&re);
	char *conf = redis_conf(&re, "r.conf", key_conf);

	r = run_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt-r1\n");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	uint64_t g1 = reported_generation(r.out);
	cr_expect_geq(g1, 1700000000000ULL, "%s", r.out);
	expect_no_secret(&r, "redis import");
	run_free(&r);

	char *gen = hget(re.c, "tst:{tok:loc1}", "gen", NULL);
	cr_assert(gen, "no entry at tst:{tok:loc1} in database 3");
	cr_expect_eq(strtoull(gen, NULL, 10), g1);
	free(gen);
	cr_expect_eq(sismember(re.c, "tst:tokens", "loc1"), 1);
	size_t blob_len;
	char *blob = hget(re.c, "tst:{tok:loc1}", "blob", &blob_len);
	cr_assert(blob);
	cr_expect_eq(strstr(blob, "SECRET") == NULL, key != NULL, "encryption of the blob");
	struct ts_entry *e;
	char err[512] = "";
	cr_assert_eq(ts_decode_entry(blob, blob_len, key, &e, err, sizeof(err)), 0, "%s", err);
	cr_expect(strcmp(e->refresh_token, "SECRET-rt-r1") == 0);
	cr_expect_eq(e->generation, g1);
	cr_expect_str_eq(e->access_token, "");
	ts_entry_free(e);
	free(blob);

	r = run_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt-r2\n");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	uint64_t g2 = reported_generation(r.out);
	cr_expect_gt(g2, g1, "%s", r.out);
	run_free(&r);
	r = run_cli(conf, "import --resource Cmp1 --user-type Company", "SECRET-rt-c\n");
	cr_assert_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	gen = hget(re.c, "tst:{tok:loc1}", "gen", NULL);
	cr_expect_eq(strtoull(gen, NULL, 10), g2);
	free(gen);

	r = run_cli(conf, "list", NULL);
	cr_assert_eq(r.rc, 0, "%s", r.err);
	expect_listed(r.out, "loc1", "Location", NULL);
	expect_listed(r.out, "Cmp1", "Company", NULL);
	expect_no_secret(&r, "redis list");
	/* Sorted by resource. */
	cr_expect_lt(strstr(r.out, "Cmp1"), strstr(r.out, "loc1"));
	run_free(&r);

	r = run_cli(conf, "remove --resource loc1", NULL);
	cr_assert_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	cr_expect_null(hget(re.c, "tst:{tok:loc1}", "gen", NULL));
	cr_expect_eq(sismember(re.c, "tst:tokens", "loc1"), 0);
	r = run_cli(conf, "remove --resource loc1", NULL);
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "no token for resource loc1"), "%s", r.err);
	run_free(&r);
	r = run_cli(conf, "list", NULL);
	cr_assert_eq(r.rc, 0, "%s", r.err);
	char *gone = list_line(r.out, "loc1");
	cr_expect_null(gone);
	free(gone);
	run_free(&r);

	/* The file store was not touched. */
	char *p = in_dir("tokens.json");
	cr_expect_neq(access(p, F_OK), 0);
	free(p);
	free(conf);
	redis_env_stop(&re);
}

Test(token_cli, redis_import_list_remove)
{
	redis_round_trip(NULL, NULL);
}

Test(token_cli, redis_encrypted)
{
	struct ts_key key;
	char err[256], *kc;
	cr_assert_eq(harness_write_file(dir, "store.key", key_hex), 0);
	cr_assert_eq(ts_key_parse(key_hex, strlen(key_hex), &key, err, sizeof(err)), 0);
	cr_assert(asprintf(&kc, "[store]\nkey_file = %s/store.key\n", dir) > 0);
	redis_round_trip(&key, kc);
	free(kc);
}

Test(token_cli, redis_errors_are_clear)
{
	struct redis_env re;
	redis_env_start(&re);

	/* A wrong password: the server's refusal, not the password. */
	cr_assert_eq(harness_write_file(dir, "bad.pw", "SECRET-wrong-pw\n"), 0);
	char *text;
	cr_assert(asprintf(&text,
	                   "[limits]\nbackend = redis\n[redis]\nurl = unix://%s\n"
	                   "password_file = %s/bad.pw\n",
	                   re.sock, dir) > 0);
	char *conf = write_conf("bad.conf", text);
	free(text);
	struct run r = run_cli(conf, "list", NULL);
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "redis AUTH"), "%s", r.err);
	expect_no_secret(&r, "bad password");
	run_free(&r);
	free(conf);

	/* Nobody listening. */
	cr_assert(asprintf(&text, "[limits]\nbackend = redis\n[redis]\nurl = unix://%s/none.sock\n",
	                   dir) > 0);
	conf = write_conf("none.conf", text);
	free(text);
	r = run_cli(conf, "list", NULL);
	cr_expect_eq(r.rc, 1);
	cr_expect(strstr(r.err, "cannot connect to Redis"), "%s", r.err);
	run_free(&r);
	free(conf);
	redis_env_stop(&re);
}

/* The compare-and-set script the daemon's refresh will use: fencing by generation and lock. */
Test(token_cli, redis_cas_script)
{
	struct redis_env re;
	redis_env_start(&re);
	redisContext *c = re.c;
	const char *k = "tst:{tok:loc9}", *lk = "tst:{tok:loc9}:lock";
	struct {
		const char *expect_gen, *owner, *new_gen;
		long long want;
		const char *why;
	} steps[] = {
		{ "1", "", "2", 0, "absent entry, expected 1" },
		{ "0", "", "1", 1, "create" },
		{ "0", "", "1", 0, "create again: generation moved" },
		{ "1", "me", "2", -1, "lock not held" },
		{ "1", "", "2", 1, "bump without lock check" },
	};

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		redisReply *r =
		        redisCommand(c, "EVAL %s 2 %s %s %s %s %s %s", ts_redis_cas_lua, k, lk,
		                     steps[i].expect_gen, "blob", steps[i].owner, steps[i].new_gen);
		cr_assert(r);
		cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "%s: %s", steps[i].why,
		             r->type == REDIS_REPLY_ERROR ? r->str : "?");
		cr_expect_eq(r->integer, steps[i].want, "%s", steps[i].why);
		freeReplyObject(r);
	}
	/* Lock held by "me": my write goes through, another owner's does not. */
	redisReply *r = redisCommand(c, "SET %s me NX PX 30000", lk);
	cr_assert(r);
	freeReplyObject(r);
	r = redisCommand(c, "EVAL %s 2 %s %s 2 blob3 other 3", ts_redis_cas_lua, k, lk);
	cr_expect_eq(r->integer, -1);
	freeReplyObject(r);
	r = redisCommand(c, "EVAL %s 2 %s %s 2 blob3 me 3", ts_redis_cas_lua, k, lk);
	cr_expect_eq(r->integer, 1);
	freeReplyObject(r);
	char *gen = hget(c, k, "gen", NULL), *blob = hget(c, k, "blob", NULL);
	cr_expect_str_eq(gen, "3");
	cr_expect_str_eq(blob, "blob3");
	free(gen);
	free(blob);
	/* Large generations stay exact decimal strings (no Lua number in between). */
	r = redisCommand(c, "EVAL %s 2 %s %s 3 b me 123456789012345678", ts_redis_cas_lua, k, lk);
	cr_expect_eq(r->integer, 1);
	freeReplyObject(r);
	r = redisCommand(c, "EVAL %s 2 %s %s 123456789012345678 b me 123456789012345679",
	                 ts_redis_cas_lua, k, lk);
	cr_expect_eq(r->integer, 1);
	freeReplyObject(r);
	gen = hget(c, k, "gen", NULL);
	cr_expect_str_eq(gen, "123456789012345679");
	free(gen);
	redis_env_stop(&re);
}

/*
 * A store key named relatively (key_file = store.key) is looked up in $CREDENTIALS_DIRECTORY,
 * as the daemon does (systemd's LoadCredential=): the CLI encrypts with it, and fails, writing
 * nothing, when it is not there.
 */
Test(token_cli, key_file_through_credentials_directory)
{
	char *creds, *prelude;
	struct run r;

	cr_assert(asprintf(&creds, "%s/creds", dir) > 0);
	cr_assert_eq(mkdir(creds, 0700), 0);
	cr_assert_eq(harness_write_file(creds, "store.key", key_hex), 0);
	char *conf = write_conf("cred.conf", "key_file = store.key\n");

	r = run_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt-cred\n");
	cr_expect_neq(r.rc, 0, "imported without the key");
	run_free(&r);
	char *store = in_dir("tokens.json");
	char *raw = harness_read_file(store, NULL);
	cr_expect_null(raw, "a store was written");
	free(raw);
	free(store);

	cr_assert(asprintf(&prelude, "export CREDENTIALS_DIRECTORY='%s'; ", creds) > 0);
	cli_prelude = prelude;
	r = run_cli(conf, "import --resource loc1 --user-type Location", "SECRET-rt-cred\n");
	cr_expect_eq(r.rc, 0, "%s", r.err);
	run_free(&r);
	cli_prelude = "";
	struct ts_key key;
	char err[512];
	cr_assert_eq(ts_key_parse(key_hex, strlen(key_hex), &key, err, sizeof(err)), 0);
	struct ts_set set;
	load_store(&key, &set);
	cr_expect_eq(set.n, 1, "the import did not land, encrypted with the key");
	ts_set_deinit(&set);
	ts_key_wipe(&key);
	free(prelude);
	free(conf);
	free(creds);
}
