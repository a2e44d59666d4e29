/*
 * test_clients.c: client keys (clients.c) and what they rest on: the constant-time comparison
 * (util_ct_equal), authentication against every client, the resource and read-only rules, what
 * a snapshot refuses to hold, loading key files (errors name the file, never the key), and the
 * labelled metrics family the per-client counters live in.
 */
#define _GNU_SOURCE

#include "src/clients.h"
#include "src/config.h"
#include "src/metrics.h"
#include "src/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_A "key-a-0123456789abcdef0123456789abcdef"
#define KEY_B "key-b-fedcba9876543210fedcba9876543210"
#define KEY_C "key-c-00000000000000000000000000000000"

/* ---- util_ct_equal ---- */

struct ct_case {
	const char *a;
	size_t a_len;
	const char *b;
	size_t b_len;
	bool equal;
};

Test(ct_equal, table)
{
	static const struct ct_case cases[] = {
		{ "", 0, "", 0, true },
		{ "abc", 3, "abc", 3, true },
		{ KEY_A, sizeof(KEY_A) - 1, KEY_A, sizeof(KEY_A) - 1, true },
		/* one byte off at the start, the middle, the end */
		{ "xbc", 3, "abc", 3, false },
		{ "axc", 3, "abc", 3, false },
		{ "abx", 3, "abc", 3, false },
		/* a single bit */
		{ "abc", 3, "abb", 3, false },
		/* prefixes either way, and empty against non-empty */
		{ "ab", 2, "abc", 3, false },
		{ "abc", 3, "ab", 2, false },
		{ "", 0, "a", 1, false },
		{ "a", 1, "", 0, false },
		/* a shorter a padded with what the compare pads with must still differ */
		{ "ab\0", 2, "ab\0", 3, false },
		/* embedded NULs are bytes like any other */
		{ "a\0b", 3, "a\0b", 3, true },
		{ "a\0b", 3, "a\0c", 3, false },
		/* high bytes */
		{ "\xff\x80", 2, "\xff\x80", 2, true },
		{ "\xff\x80", 2, "\x7f\x80", 2, false },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct ct_case *c = &cases[i];
		cr_expect_eq(util_ct_equal(c->a, c->a_len, c->b, c->b_len), c->equal, "case %zu",
		             i);
	}
}

/* Every single-byte change at every position of a 32-byte digest is seen. */
Test(ct_equal, every_position)
{
	unsigned char a[32], b[32];

	for (size_t i = 0; i < sizeof(a); i++)
		a[i] = (unsigned char)(i * 37 + 11);
	for (size_t pos = 0; pos < sizeof(a); pos++) {
		for (unsigned bit = 0; bit < 8; bit++) {
			memcpy(b, a, sizeof(a));
			b[pos] ^= (unsigned char)(1u << bit);
			cr_expect_not(util_ct_equal(a, sizeof(a), b, sizeof(b)), "pos %zu bit %u",
			              pos, bit);
		}
	}
	cr_expect(util_ct_equal(a, sizeof(a), a, sizeof(a)));
}

/* ---- snapshots ---- */

static struct clients *three(void)
{
	struct clients *c = clients_new();
	char err[256];

	cr_assert_not_null(c);
	cr_assert_eq(clients_add(c, "alpha", KEY_A, strlen(KEY_A), NULL, false, err, sizeof(err)),
	             0, "%s", err);
	cr_assert_eq(clients_add(c, "beta.ro", KEY_B, strlen(KEY_B), NULL, true, err, sizeof(err)),
	             0, "%s", err);
	cr_assert_eq(clients_add(c, "gamma_1", KEY_C, strlen(KEY_C), "LocA, LocB,Comp-9", false,
	                         err, sizeof(err)),
	             0, "%s", err);
	return c;
}

Test(clients, authenticate_finds_each_client)
{
	struct clients *c = three();
	static const struct {
		const char *key;
		const char *name;
	} ok[] = { { KEY_A, "alpha" }, { KEY_B, "beta.ro" }, { KEY_C, "gamma_1" } };

	cr_expect_eq(clients_count(c), 3);
	for (size_t i = 0; i < 3; i++) {
		const struct client *cl = NULL;
		cr_expect_eq(clients_authenticate(c, ok[i].key, strlen(ok[i].key), &cl),
		             CLIENTS_OK);
		cr_assert_not_null(cl);
		cr_expect_str_eq(clients_name(cl), ok[i].name);
		cr_expect_str_eq(clients_name_at(c, i), ok[i].name);
	}
	cr_expect_null(clients_name_at(c, 3));
	clients_free(c);
}

Test(clients, authenticate_refuses_near_misses)
{
	struct clients *c = three();
	char buf[128];
	const struct client *cl;
	size_t n = strlen(KEY_A);

	/* A prefix, the key plus one byte, one byte changed at each end, another case. */
	const struct {
		const char *key;
		size_t len;
	} bad[] = {
		{ KEY_A, n - 1 },
		{ KEY_A "x", n + 1 },
		{ "Xey-a-0123456789abcdef0123456789abcdef", n },
		{ "key-a-0123456789abcdef0123456789abcdeX", n },
		{ "KEY-A-0123456789ABCDEF0123456789ABCDEF", n },
		{ "Bearer " KEY_A, n + 7 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cl = (const struct client *)buf; /* must be cleared */
		cr_expect_eq(clients_authenticate(c, bad[i].key, bad[i].len, &cl), CLIENTS_INVALID,
		             "case %zu", i);
		cr_expect_null(cl);
	}
	cr_expect_eq(clients_authenticate(c, NULL, 0, &cl), CLIENTS_MISSING);
	cr_expect_eq(clients_authenticate(c, KEY_A, 0, &cl), CLIENTS_MISSING);
	/* A key made of an embedded NUL and the rest: compared by length, not as a C string. */
	memcpy(buf, KEY_A, n + 1);
	cr_expect_eq(clients_authenticate(c, buf, n + 1, &cl), CLIENTS_INVALID);
	clients_free(c);

	/* No client at all: nothing is anyone's key. */
	struct clients *none = clients_new();
	cr_expect_eq(clients_authenticate(none, KEY_A, n, &cl), CLIENTS_INVALID);
	cr_expect_eq(clients_authenticate(NULL, KEY_A, n, &cl), CLIENTS_INVALID);
	cr_expect_eq(clients_count(NULL), 0);
	clients_free(none);
	clients_free(NULL);
}

struct authz_case {
	const char *client;
	const char *method;
	const char *resource;
	enum clients_verdict want;
};

Test(clients, authorize_table)
{
	static const struct authz_case cases[] = {
		/* unrestricted */
		{ "alpha", "GET", "LocA", CLIENTS_OK },
		{ "alpha", "DELETE", "LocZ", CLIENTS_OK },
		{ "alpha", "POST", "", CLIENTS_OK },
		/* read-only: GET, HEAD and OPTIONS only, exact method names */
		{ "beta.ro", "GET", "LocA", CLIENTS_OK },
		{ "beta.ro", "HEAD", "", CLIENTS_OK },
		{ "beta.ro", "OPTIONS", "LocA", CLIENTS_OK },
		{ "beta.ro", "POST", "LocA", CLIENTS_READ_ONLY },
		{ "beta.ro", "PUT", "LocA", CLIENTS_READ_ONLY },
		{ "beta.ro", "PATCH", "LocA", CLIENTS_READ_ONLY },
		{ "beta.ro", "DELETE", "LocA", CLIENTS_READ_ONLY },
		{ "beta.ro", "get", "LocA", CLIENTS_READ_ONLY },
		{ "beta.ro", NULL, "LocA", CLIENTS_READ_ONLY },
		/* resources: exact, case-sensitive, and none named is refused */
		{ "gamma_1", "GET", "LocA", CLIENTS_OK },
		{ "gamma_1", "POST", "LocB", CLIENTS_OK },
		{ "gamma_1", "GET", "Comp-9", CLIENTS_OK },
		{ "gamma_1", "GET", "LocC", CLIENTS_RESOURCE },
		{ "gamma_1", "GET", "loca", CLIENTS_RESOURCE },
		{ "gamma_1", "GET", "LocAB", CLIENTS_RESOURCE },
		{ "gamma_1", "GET", "Loc", CLIENTS_RESOURCE },
		{ "gamma_1", "GET", "", CLIENTS_RESOURCE },
		{ "gamma_1", "GET", NULL, CLIENTS_RESOURCE },
	};
	struct clients *c = three();
	const struct client *by_name[3];

	cr_assert_eq(clients_authenticate(c, KEY_A, strlen(KEY_A), &by_name[0]), CLIENTS_OK);
	cr_assert_eq(clients_authenticate(c, KEY_B, strlen(KEY_B), &by_name[1]), CLIENTS_OK);
	cr_assert_eq(clients_authenticate(c, KEY_C, strlen(KEY_C), &by_name[2]), CLIENTS_OK);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct client *cl = NULL;
		for (size_t j = 0; j < 3; j++)
			if (strcmp(clients_name(by_name[j]), cases[i].client) == 0)
				cl = by_name[j];
		cr_assert_not_null(cl);
		cr_expect_eq(clients_authorize(cl, cases[i].method, cases[i].resource),
		             cases[i].want, "case %zu: %s %s %s", i, cases[i].client,
		             cases[i].method ? cases[i].method : "(null)",
		             cases[i].resource ? cases[i].resource : "(null)");
	}
	/* Read-only and limited at once: the method is judged first. */
	struct clients *both = clients_new();
	char err[256];
	const struct client *cl;
	cr_assert_eq(
	        clients_add(both, "both", KEY_A, strlen(KEY_A), "LocA", true, err, sizeof(err)), 0);
	cr_assert_eq(clients_authenticate(both, KEY_A, strlen(KEY_A), &cl), CLIENTS_OK);
	cr_expect_eq(clients_authorize(cl, "POST", "LocZ"), CLIENTS_READ_ONLY);
	cr_expect_eq(clients_authorize(cl, "GET", "LocZ"), CLIENTS_RESOURCE);
	cr_expect_eq(clients_authorize(cl, "GET", "LocA"), CLIENTS_OK);
	cr_expect_eq(clients_authorize(NULL, "GET", "LocA"), CLIENTS_INVALID);
	clients_free(both);
	clients_free(c);
}

struct add_case {
	const char *name;
	const char *key;
	const char *resources;
	int want;
	const char *msg; /* a part of the message */
};

Test(clients, add_refuses)
{
	static const struct add_case cases[] = {
		{ "", KEY_A, NULL, -EINVAL, "client name" },
		{ "has space", KEY_A, NULL, -EINVAL, "client name" },
		{ "semi;colon", KEY_A, NULL, -EINVAL, "client name" },
		{ "quote\"", KEY_A, NULL, -EINVAL, "client name" },
		{ "x12345678901234567890123456789012345678901234567890123456789012345", KEY_A, NULL,
		  -EINVAL, "client name" },
		{ "short", "0123456789abcde", NULL, -EINVAL, "16 to 1024" },
		{ "spacey", "0123456789 abcdef", NULL, -EINVAL, "cannot be sent" },
		{ "tabby", "0123456789\tabcdef", NULL, -EINVAL, "cannot be sent" },
		{ "highbit",
		  "0123456789\xc3\xa9"
		  "abcdef",
		  NULL, -EINVAL, "cannot be sent" },
		{ "alpha", KEY_C, NULL, -EEXIST, "twice" },
		{ "other", KEY_A, NULL, -EEXIST, "same key as client alpha" },
		{ "res1", KEY_C, "LocA,", -EINVAL, "resources" },
		{ "res2", KEY_C, ",LocA", -EINVAL, "resources" },
		{ "res3", KEY_C, "LocA,,LocB", -EINVAL, "resources" },
		{ "res4", KEY_C, "Loc A", -EINVAL, "resources" },
		{ "res5", KEY_C, "Loc/A", -EINVAL, "resources" },
		{ "res6", KEY_C, " , ", -EINVAL, "resources" },
	};
	struct clients *c = clients_new();
	char err[256];

	cr_assert_eq(clients_add(c, "alpha", KEY_A, strlen(KEY_A), NULL, false, err, sizeof(err)),
	             0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		int rc = clients_add(c, cases[i].name, cases[i].key, strlen(cases[i].key),
		                     cases[i].resources, false, err, sizeof(err));
		cr_expect_eq(rc, cases[i].want, "case %zu: %d (%s)", i, rc, err);
		cr_expect(strstr(err, cases[i].msg) != NULL, "case %zu: %s", i, err);
		/* The message never carries the key. */
		cr_expect_null(strstr(err, cases[i].key), "case %zu: %s", i, err);
	}
	cr_expect_eq(clients_count(c), 1, "a refused client was added");
	/* A key over the limit. */
	char *big = malloc(CLIENTS_KEY_MAX + 2);
	memset(big, 'k', CLIENTS_KEY_MAX + 1);
	big[CLIENTS_KEY_MAX + 1] = '\0';
	cr_expect_eq(clients_add(c, "big", big, CLIENTS_KEY_MAX + 1, NULL, false, err, sizeof(err)),
	             -EINVAL);
	cr_expect_eq(clients_add(c, "big", big, CLIENTS_KEY_MAX, NULL, false, err, sizeof(err)), 0,
	             "%s", err);
	free(big);
	clients_free(c);
}

Test(clients, at_most_clients_max)
{
	struct clients *c = clients_new();
	char name[32], key[64], err[256];

	for (int i = 0; i < CLIENTS_MAX; i++) {
		snprintf(name, sizeof(name), "c%d", i);
		snprintf(key, sizeof(key), "client-key-%08d-padding", i);
		cr_assert_eq(clients_add(c, name, key, strlen(key), NULL, false, err, sizeof(err)),
		             0, "%s", err);
	}
	snprintf(key, sizeof(key), "client-key-%08d-padding", CLIENTS_MAX);
	cr_expect_eq(clients_add(c, "one-more", key, strlen(key), NULL, false, err, sizeof(err)),
	             -ENOSPC);
	/* The last one still authenticates: every digest is compared. */
	const struct client *cl;
	snprintf(key, sizeof(key), "client-key-%08d-padding", CLIENTS_MAX - 1);
	cr_expect_eq(clients_authenticate(c, key, strlen(key), &cl), CLIENTS_OK);
	snprintf(name, sizeof(name), "c%d", CLIENTS_MAX - 1);
	cr_expect_str_eq(clients_name(cl), name);
	clients_free(c);
}

Test(clients, verdict_names)
{
	cr_expect_str_eq(clients_verdict_name(CLIENTS_OK), "ok");
	cr_expect_str_eq(clients_verdict_name(CLIENTS_MISSING), "missing");
	cr_expect_str_eq(clients_verdict_name(CLIENTS_INVALID), "invalid");
	cr_expect_str_eq(clients_verdict_name(CLIENTS_RESOURCE), "resource");
	cr_expect_str_eq(clients_verdict_name(CLIENTS_READ_ONLY), "read_only");
}

/* ---- loading key files ---- */

static char tmpdir[64];

static void make_tmpdir(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_clients.XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	cr_expect_eq(system(cmd), 0);
}

static void write_file(const char *name, const char *content)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(content, f);
	fclose(f);
}

/* Copy `in` to `out`, every "@D@" replaced by dir. */
static void subst_dir(const char *in, const char *dir, char *out, size_t len)
{
	size_t used = 0;

	while (*in && used + 1 < len) {
		if (strncmp(in, "@D@", 3) == 0) {
			int n = snprintf(out + used, len - used, "%s", dir);
			used = n < 0 ? used : used + (size_t)n;
			if (used >= len)
				used = len - 1;
			in += 3;
		} else {
			out[used++] = *in++;
		}
	}
	out[used] = '\0';
}

/* A config from text with @D@ for the scratch directory. */
static struct config *conf(const char *fmt)
{
	char text[1024];
	struct config_errors errs = { 0 };

	subst_dir(fmt, tmpdir, text, sizeof(text));
	struct config *c = config_load_string(text, "t.conf", NULL, NULL, 0, &errs);
	cr_assert_not_null(c, "%s", errs.n ? errs.v[0] : "?");
	config_errors_deinit(&errs);
	return c;
}

TestSuite(load, .init = make_tmpdir, .fini = rm_tmpdir);

Test(load, reads_keys_and_rules)
{
	char err[512];

	write_file("a.key", "  " KEY_A "\n");
	write_file("b.key", KEY_B);
	struct config *cfg = conf("[clients]\n"
	                          "a = @D@/a.key\n"
	                          "a.resources = LocA, LocB\n"
	                          "b = @D@/b.key\n"
	                          "b.read_only = yes\n");
	struct clients *c = clients_load(cfg, err, sizeof(err));
	cr_assert_not_null(c, "%s", err);
	cr_expect_eq(clients_count(c), 2);
	const struct client *cl;
	cr_assert_eq(clients_authenticate(c, KEY_A, strlen(KEY_A), &cl), CLIENTS_OK);
	cr_expect_str_eq(clients_name(cl), "a");
	cr_expect_eq(clients_authorize(cl, "POST", "LocB"), CLIENTS_OK);
	cr_expect_eq(clients_authorize(cl, "GET", "LocC"), CLIENTS_RESOURCE);
	cr_assert_eq(clients_authenticate(c, KEY_B, strlen(KEY_B), &cl), CLIENTS_OK);
	cr_expect_str_eq(clients_name(cl), "b");
	cr_expect_eq(clients_authorize(cl, "POST", "LocC"), CLIENTS_READ_ONLY);
	cr_expect_eq(clients_authorize(cl, "GET", "LocC"), CLIENTS_OK);
	clients_free(c);
	config_free(cfg);

	/* No [clients]: an empty snapshot. */
	cfg = conf("[log]\nlevel = info\n");
	c = clients_load(cfg, err, sizeof(err));
	cr_assert_not_null(c, "%s", err);
	cr_expect_eq(clients_count(c), 0);
	clients_free(c);
	config_free(cfg);
}

struct load_case {
	const char *file;    /* content of x.key, NULL: no such file */
	const char *message; /* a part of the error */
};

Test(load, refuses_bad_key_files)
{
	static const struct load_case cases[] = {
		{ NULL, "No such file" },
		{ "", "is empty" },
		{ "  \n", "is empty" },
		{ "short-key-12345\n", "16 to 1024" },
		{ KEY_A "\n" KEY_B "\n", "more than one line" },
		{ KEY_A " " KEY_B, "more than one line" },
	};
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char path[128];

		snprintf(path, sizeof(path), "%s/x.key", tmpdir);
		unlink(path);
		if (cases[i].file)
			write_file("x.key", cases[i].file);
		struct config *cfg = conf("[clients]\nx = @D@/x.key\n");
		err[0] = '\0';
		struct clients *c = clients_load(cfg, err, sizeof(err));
		cr_expect_null(c, "case %zu loaded", i);
		clients_free(c);
		cr_expect(strstr(err, cases[i].message) != NULL, "case %zu: %s", i, err);
		cr_expect(strstr(err, "x.key") != NULL, "case %zu names no file: %s", i, err);
		cr_expect(strstr(err, "[clients] ") != NULL, "case %zu: %s", i, err);
		cr_expect_null(strstr(err, "key-a-"), "case %zu shows the key: %s", i, err);
		cr_expect_null(strstr(err, "short-key"), "case %zu shows the key: %s", i, err);
		config_free(cfg);
	}

	/* Two clients with one key. */
	write_file("a.key", KEY_A);
	write_file("a2.key", KEY_A "\n");
	struct config *cfg = conf("[clients]\na = @D@/a.key\nsecond = @D@/a2.key\n");
	struct clients *c = clients_load(cfg, err, sizeof(err));
	cr_expect_null(c);
	cr_expect(strstr(err, "same key as client a") != NULL, "%s", err);
	cr_expect_null(strstr(err, "key-a-"), "%s", err);
	clients_free(c);
	config_free(cfg);
}

/* Relative names are looked up in $CREDENTIALS_DIRECTORY first, like every other secret. */
Test(load, credentials_directory)
{
	char err[512];

	write_file("cred.key", KEY_C);
	cr_assert_eq(setenv("CREDENTIALS_DIRECTORY", tmpdir, 1), 0);
	struct config *cfg = conf("[clients]\nsvc = cred.key\n");
	struct clients *c = clients_load(cfg, err, sizeof(err));
	unsetenv("CREDENTIALS_DIRECTORY");
	cr_assert_not_null(c, "%s", err);
	const struct client *cl;
	cr_expect_eq(clients_authenticate(c, KEY_C, strlen(KEY_C), &cl), CLIENTS_OK);
	clients_free(c);
	config_free(cfg);
}

/* ---- the labelled metrics family ---- */

static char *render(void)
{
	struct evbuffer *b = evbuffer_new();

	metrics_render(b);
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

TestSuite(labelled, .init = metrics_reset);

Test(labelled, counts_and_renders)
{
	/* No series yet: the family is left out (a family without samples is not valid text). */
	char *empty = render();
	cr_expect_null(strstr(empty, "ghlproxy_client_requests_total"), "%s", empty);
	free(empty);
	metrics_labelled_add(ML_CLIENT_REQUESTS, "alpha", 0);
	metrics_labelled_add(ML_CLIENT_REQUESTS, "beta", 2);
	metrics_labelled_add(ML_CLIENT_REQUESTS, "alpha", 1);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, "alpha"), 1);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, "beta"), 2);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, "nobody"), 0);
	char *s = render();
	cr_expect(strstr(s, "# TYPE ghlproxy_client_requests_total counter\n") != NULL, "%s", s);
	cr_expect(strstr(s, "ghlproxy_client_requests_total{client=\"alpha\"} 1\n") != NULL, "%s",
	          s);
	cr_expect(strstr(s, "ghlproxy_client_requests_total{client=\"beta\"} 2\n") != NULL, "%s",
	          s);
	/* The fixed refusal rows are there too, at zero. */
	cr_expect(strstr(s, "ghlproxy_client_refusals_total{reason=\"read_only\"} 0\n") != NULL,
	          "%s", s);
	cr_expect(strstr(s, "ghlproxy_requests_total{outcome=\"forbidden\"} 0\n") != NULL, "%s", s);
	free(s);
	metrics_reset();
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, "beta"), 0);
}

/* Bounded: past METRICS_LABEL_VALUES_MAX values, and for values too long or empty, one series
 * takes the rest; label values are escaped. */
Test(labelled, bounded_and_escaped)
{
	char v[80];

	for (int i = 0; i < METRICS_LABEL_VALUES_MAX + 50; i++) {
		snprintf(v, sizeof(v), "client-%d", i);
		metrics_labelled_add(ML_CLIENT_REQUESTS, v, 1);
	}
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, "client-0"), 1);
	snprintf(v, sizeof(v), "client-%d", METRICS_LABEL_VALUES_MAX - 1);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, v), 1);
	snprintf(v, sizeof(v), "client-%d", METRICS_LABEL_VALUES_MAX);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, v), 0);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, METRICS_LABEL_OTHER), 50);
	/* Once full, an existing series still counts as itself. */
	metrics_labelled_add(ML_CLIENT_REQUESTS, "client-3", 1);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, "client-3"), 2);
	char *s = render();
	size_t series = 0;
	for (const char *p = s; (p = strstr(p, "ghlproxy_client_requests_total{")); p++)
		series++;
	cr_expect_eq(series, METRICS_LABEL_VALUES_MAX + 1);
	free(s);

	metrics_reset();
	memset(v, 'x', sizeof(v) - 1);
	v[sizeof(v) - 1] = '\0';
	metrics_labelled_add(ML_CLIENT_REQUESTS, v, 1);  /* too long */
	metrics_labelled_add(ML_CLIENT_REQUESTS, "", 1); /* empty */
	metrics_labelled_add(ML_CLIENT_REQUESTS, NULL, 1);
	cr_expect_eq(metrics_labelled_get(ML_CLIENT_REQUESTS, METRICS_LABEL_OTHER), 3);
	metrics_labelled_add(ML_CLIENT_REQUESTS, "a\"b\\c\nd", 1);
	metrics_labelled_add((enum metric_labelled_id)ML__COUNT, "x", 1); /* ignored */
	s = render();
	cr_expect(strstr(s, "{client=\"a\\\"b\\\\c\\nd\"} 1\n") != NULL, "%s", s);
	free(s);
}
