/*
 * bench/token_store.c: what the embedded token store (store.path, the file store) costs per
 * refresh. A refresh reads the file under its refresh lock (ts_file_load) and stores the new
 * pair with one read-modify-write of the whole file (ts_file_update: load, change one entry,
 * encode, write a temp file, fsync, rename, fsync the directory). The proxy runs both on its
 * helper thread (src/offload.c), not on its event loop, so requests in flight do not wait for
 * them; the refresh itself takes that long, and the cost grows with the number of resources in
 * the file. This measures it, for plain and encrypted (store.key_file) files.
 *
 * Entries are sized like HighLevel's: access and refresh tokens of TOKEN_LEN bytes (JWTs of about
 * that size), a scope list, company and location ids. The file lives in a temporary directory
 * under $TMPDIR (default /var/tmp: a disk, not a tmpfs, where the daemon's state directory would
 * be), removed afterwards.
 *
 * Usage: bench_token_store [--sizes N,N,...] [--updates U]
 *        (defaults 10,100,1000,5000 resources, 10 updates each; every update changes another
 *        entry's refresh token, as a refresh does)
 * Output: one "key: value" line per figure (bench/run collects them), ending with "verdict:".
 *   tokens_<N>_<plain|encrypted>_file_bytes
 *   tokens_<N>_<plain|encrypted>_load_ms_median     one ts_file_load
 *   tokens_<N>_<plain|encrypted>_update_ms_median   one ts_file_update
 *   tokens_<N>_<plain|encrypted>_update_ms_max
 *   tokens_<N>_<plain|encrypted>_ms_per_refresh     load + update: a refresh's store steps
 * Exit 1 when a store call fails or a read-back does not hold the last update; 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/token_store.h"

#define TOKEN_LEN   1300 /* bytes of an access or refresh token */
#define MAX_SIZES   16
#define MAX_UPDATES 1000
#define SCOPE                                                                            \
	"contacts.readonly contacts.write locations.readonly opportunities.readonly "    \
	"opportunities.write calendars.readonly calendars.write conversations.readonly " \
	"conversations.write conversations/message.readonly conversations/message.write"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A token of TOKEN_LEN printable bytes, different for every (resource, serial). */
static void make_token(char *out, int resource, unsigned serial)
{
	int n = snprintf(out, TOKEN_LEN + 1, "eyJbench.%d.%u.", resource, serial);

	for (int i = n; i < TOKEN_LEN; i++)
		out[i] = (char)('a' + (unsigned)(i * 7 + resource + (int)serial) % 26);
	out[TOKEN_LEN] = '\0';
}

struct fill {
	int n;
};

static int fill_cb(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	const struct fill *f = arg;
	char tok[TOKEN_LEN + 1];

	for (int i = 0; i < f->n; i++) {
		struct ts_entry *e = ts_entry_new();
		if (!e) {
			snprintf(err, err_len, "out of memory");
			return -ENOMEM;
		}
		snprintf(e->resource, sizeof(e->resource), "BenchLoc%07d", i);
		make_token(tok, i, 0);
		if (ts_entry_set_str(&e->access_token, tok) < 0 ||
		    ts_entry_set_str(&e->refresh_token, tok) < 0 ||
		    ts_entry_set_str(&e->location_id, e->resource) < 0 ||
		    ts_entry_set_str(&e->company_id, "BenchCompany00000001") < 0 ||
		    ts_entry_set_str(&e->user_id, "BenchUser0000000001") < 0 ||
		    ts_entry_set_str(&e->scope, SCOPE) < 0 || ts_set_put(set, e) < 0) {
			ts_entry_free(e);
			snprintf(err, err_len, "out of memory");
			return -ENOMEM;
		}
		e->access_expires_ms = 1900000000000LL;
		e->generation = 1;
		e->updated_ms = 1800000000000LL;
	}
	return 0;
}

/* One refresh's store: entry `which` gets a new pair, one generation up. */
struct update {
	int which;
	unsigned serial;
};

static int update_cb(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	const struct update *u = arg;
	char resource[TS_RESOURCE_MAX + 1], tok[TOKEN_LEN + 1];

	snprintf(resource, sizeof(resource), "BenchLoc%07d", u->which);
	struct ts_entry *e = ts_set_find(set, resource);
	if (!e) {
		snprintf(err, err_len, "entry %s missing", resource);
		return -ENOENT;
	}
	make_token(tok, u->which, u->serial);
	if (ts_entry_set_str(&e->refresh_token, tok) < 0 ||
	    ts_entry_set_str(&e->access_token, tok) < 0) {
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	e->generation++;
	return 0;
}

static int measure(const char *path, int n, int updates, const struct ts_key *key, double *load,
                   double *upd, double *worst);

static int run(const char *dir, int n, int updates, const struct ts_key *key)
{
	const char *kind = key ? "encrypted" : "plain";
	char path[512], err[600];
	double load[MAX_UPDATES], upd[MAX_UPDATES], worst = 0;
	struct stat st;

	snprintf(path, sizeof(path), "%s/tokens-%d-%s.json", dir, n, kind);
	int rc = measure(path, n, updates, key, load, upd, &worst);
	if (rc == 0 && stat(path, &st) < 0)
		rc = -errno;
	if (rc == 0) {
		double lm = median(load, updates), um = median(upd, updates);
		printf("tokens_%d_%s_file_bytes: %lld\n", n, kind, (long long)st.st_size);
		printf("tokens_%d_%s_load_ms_median: %.2f\n", n, kind, lm);
		printf("tokens_%d_%s_update_ms_median: %.2f\n", n, kind, um);
		printf("tokens_%d_%s_update_ms_max: %.2f\n", n, kind, worst);
		printf("tokens_%d_%s_ms_per_refresh: %.2f\n", n, kind, lm + um);
		fflush(stdout);
	}
	unlink(path);
	snprintf(err, sizeof(err), "%s.lock", path);
	unlink(err);
	return rc;
}

/* Fill the file with n entries, then time `updates` refreshes' load and update. */
static int measure(const char *path, int n, int updates, const struct ts_key *key, double *load,
                   double *upd, double *worst)
{
	char err[256];
	struct fill f = { .n = n };

	if (ts_file_update(path, key, fill_cb, &f, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_token_store: filling %d entries: %s\n", n, err);
		return -1;
	}
	for (int i = 0; i < updates; i++) {
		struct ts_set set;
		struct update u = { .which = (i * 7919) % n, .serial = (unsigned)i + 1 };
		double t0 = now_ms();

		ts_set_init(&set);
		int rc = ts_file_load(path, key, &set, NULL, err, sizeof(err));
		ts_set_deinit(&set);
		double t1 = now_ms();
		if (rc == 0)
			rc = ts_file_update(path, key, update_cb, &u, NULL, err, sizeof(err));
		double t2 = now_ms();
		if (rc < 0) {
			fprintf(stderr, "bench_token_store: %d entries, update %d: %s\n", n, i,
			        err);
			return -1;
		}
		load[i] = t1 - t0;
		upd[i] = t2 - t1;
		*worst = upd[i] > *worst ? upd[i] : *worst;
	}

	/* The last update must be what a reader finds. */
	struct ts_set set;
	char resource[TS_RESOURCE_MAX + 1], tok[TOKEN_LEN + 1];
	int last = ((updates - 1) * 7919) % n;
	ts_set_init(&set);
	if (ts_file_load(path, key, &set, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_token_store: reading back: %s\n", err);
		return -1;
	}
	snprintf(resource, sizeof(resource), "BenchLoc%07d", last);
	make_token(tok, last, (unsigned)updates);
	const struct ts_entry *e = ts_set_find(&set, resource);
	bool ok = set.n == (size_t)n && e && strcmp(e->refresh_token, tok) == 0;
	ts_set_deinit(&set);
	if (!ok) {
		fprintf(stderr,
		        "bench_token_store: %d entries: the last update is not in the file\n", n);
		return -1;
	}

	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_token_store [--sizes N,N,...] [--updates U]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int sizes[MAX_SIZES] = { 10, 100, 1000, 5000 }, nsizes = 4, updates = 10;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
			char *s = argv[++i], *end;
			nsizes = 0;
			while (*s && nsizes < MAX_SIZES) {
				long v = strtol(s, &end, 10);
				if (end == s || v < 1 || v > TS_ENTRIES_MAX)
					usage();
				sizes[nsizes++] = (int)v;
				s = *end == ',' ? end + 1 : end;
				if (*end && *end != ',')
					usage();
			}
		} else if (strcmp(argv[i], "--updates") == 0 && i + 1 < argc) {
			updates = atoi(argv[++i]);
			if (updates < 1 || updates > MAX_UPDATES)
				usage();
		} else {
			usage();
		}
	}

	const char *tmp = getenv("TMPDIR");
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/bench-tokens.XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
	if (!mkdtemp(dir)) {
		fprintf(stderr, "bench_token_store: mkdtemp %s: %s\n", dir, strerror(errno));
		return 1;
	}
	struct ts_key key;
	for (size_t i = 0; i < sizeof(key.bytes); i++)
		key.bytes[i] = (unsigned char)(i * 13 + 5);

	printf("token_len: %d\nupdates_per_size: %d\n", TOKEN_LEN, updates);
	int rc = 0;
	for (int i = 0; i < nsizes && rc == 0; i++) {
		rc = run(dir, sizes[i], updates, NULL);
		if (rc == 0)
			rc = run(dir, sizes[i], updates, &key);
	}
	rmdir(dir);
	printf("verdict: %s\n", rc == 0 ? "ok" : "FAILED");
	return rc == 0 ? 0 : 1;
}
