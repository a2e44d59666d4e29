/*
 * credentials.c: PITs and API 1.0 keys read from files into an immutable snapshot
 * (credentials.h). Lookups are linear over a handful of entries: an installation maps a few
 * resources, and the lookups run once per request.
 */
#include "credentials.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

/* A PIT is 40 bytes, an API 1.0 key a JWT of a few hundred: this leaves room and no more. */
#define SECRET_MAX 8192

struct credentials {
	struct credential *v;
	size_t n;
	size_t next_pit; /* round robin among a resource's PITs */
};

void credentials_resolve(const char *path, char *out, size_t len)
{
	const char *dir = getenv("CREDENTIALS_DIRECTORY");

	if (path[0] != '/' && dir && *dir) {
		snprintf(out, len, "%s/%s", dir, path);
		if (access(out, F_OK) == 0)
			return;
	}
	snprintf(out, len, "%s", path);
}

int credentials_read_file(const char *path, size_t max_len, char **out, char *err, size_t err_len)
{
	const char *dir = getenv("CREDENTIALS_DIRECTORY");
	char buf[4096];
	char *s = NULL;
	size_t len = 0;
	int rc = -ENOENT;

	*out = NULL;
	if (!path || !*path) {
		snprintf(err, err_len, "empty credential file name");
		return -EINVAL;
	}
	if (path[0] != '/' && dir && *dir) {
		snprintf(buf, sizeof(buf), "%s/%s", dir, path);
		rc = util_read_small_file(buf, max_len + 64, &s, &len);
	}
	if (rc == -ENOENT)
		rc = util_read_small_file(path, max_len + 64, &s, &len);
	if (rc < 0) {
		snprintf(err, err_len, "credential file %s: %s", path,
		         rc == -EFBIG ? "too large" : strerror(-rc));
		return rc;
	}
	/* Trim surrounding whitespace; what remains must be one printable token. */
	size_t a = 0;
	while (a < len && (s[a] == ' ' || s[a] == '\t' || s[a] == '\r' || s[a] == '\n'))
		a++;
	while (len > a && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' ||
	                   s[len - 1] == '\n'))
		len--;
	const char *why = NULL;
	if (len == a)
		why = "is empty";
	else if (len - a > max_len)
		why = "holds more than one secret's worth of bytes";
	for (size_t i = a; !why && i < len; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			why = "holds more than one line, or bytes that cannot be sent in a header";
	if (why) {
		snprintf(err, err_len, "credential file %s %s", path, why);
		util_wipe_free(s, len);
		return -EINVAL;
	}
	memmove(s, s + a, len - a);
	s[len - a] = '\0';
	*out = s;
	return 0;
}

static int add(struct credentials *c, const char *file, const char *resource,
               enum classify_cred kind, char *err, size_t err_len)
{
	char *secret;
	int rc = credentials_read_file(file, SECRET_MAX, &secret, err, err_len);

	if (rc < 0)
		return rc;
	struct credential *v = realloc(c->v, (c->n + 1) * sizeof(*v));
	if (!v) {
		util_wipe_free(secret, strlen(secret));
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	c->v = v;
	struct credential *e = &c->v[c->n++];
	memset(e, 0, sizeof(*e));
	e->secret = secret;
	e->kind = kind;
	util_strlcpy(e->resource, resource, sizeof(e->resource));
	classify_fingerprint(secret, strlen(secret), e->fingerprint);
	return 0;
}

struct credentials *credentials_load(const struct config *cfg, char *err, size_t err_len)
{
	struct credentials *c = calloc(1, sizeof(*c));

	if (!c) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < cfg->pit.n; i++) {
		const struct config_map_entry *m = &cfg->pit.v[i];
		char *files = strdup(m->value), *save = NULL;
		if (!files)
			goto oom;
		for (char *f = strtok_r(files, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
			while (*f == ' ' || *f == '\t')
				f++;
			size_t n = strlen(f);
			while (n > 0 && (f[n - 1] == ' ' || f[n - 1] == '\t'))
				f[--n] = '\0';
			if (n == 0)
				continue;
			if (add(c, f, m->name, CRED_PIT, err, err_len) < 0) {
				free(files);
				credentials_free(c);
				return NULL;
			}
		}
		free(files);
	}
	for (size_t i = 0; i < cfg->v1_keys.n; i++) {
		const struct config_map_entry *m = &cfg->v1_keys.v[i];
		const char *res = strcmp(m->name, "agency") == 0 ? "" : m->name;
		if (add(c, m->value, res, CRED_V1_KEY, err, err_len) < 0) {
			credentials_free(c);
			return NULL;
		}
	}
	return c;
oom:
	snprintf(err, err_len, "out of memory");
	credentials_free(c);
	return NULL;
}

void credentials_free(struct credentials *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++)
		util_wipe_free(c->v[i].secret, strlen(c->v[i].secret));
	free(c->v);
	free(c);
}

const char *credentials_lookup(void *creds, const char *fingerprint, enum classify_res_kind *kind)
{
	const struct credentials *c = creds;

	for (size_t i = 0; c && i < c->n; i++) {
		const struct credential *e = &c->v[i];
		if (e->resource[0] && strcmp(e->fingerprint, fingerprint) == 0) {
			*kind = e->kind == CRED_V1_KEY ? RES_LOCATION : RES_UNKNOWN;
			return e->resource;
		}
	}
	return NULL;
}

const struct credential *credentials_pit_for(struct credentials *c, const char *resource)
{
	size_t n = 0, pick;

	for (size_t i = 0; c && i < c->n; i++)
		n += c->v[i].kind == CRED_PIT && strcmp(c->v[i].resource, resource) == 0;
	if (n == 0)
		return NULL;
	pick = c->next_pit++ % n;
	for (size_t i = 0; i < c->n; i++) {
		if (c->v[i].kind != CRED_PIT || strcmp(c->v[i].resource, resource) != 0)
			continue;
		if (pick-- == 0)
			return &c->v[i];
	}
	return NULL;
}

const struct credential *credentials_v1_for(const struct credentials *c, const char *resource)
{
	const struct credential *agency = NULL;

	for (size_t i = 0; c && i < c->n; i++) {
		const struct credential *e = &c->v[i];
		if (e->kind != CRED_V1_KEY)
			continue;
		if (!e->resource[0])
			agency = e;
		else if (resource && strcmp(e->resource, resource) == 0)
			return e;
	}
	return agency;
}

size_t credentials_count(const struct credentials *c)
{
	return c ? c->n : 0;
}
