/*
 * clients.c: client key snapshots and the access checks (clients.h). The comparison of a
 * presented key is the one place here where timing matters: see clients_authenticate.
 */
#include "clients.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "classify.h"
#include "config.h"
#include "credentials.h"
#include "util.h"

/* Resources one client may be limited to: far more than a config line can name. */
#define RESOURCES_MAX 1024

struct client {
	char name[CLIENTS_NAME_MAX + 1];
	unsigned char digest[SHA256_DIGEST_LENGTH]; /* SHA-256 of the key; the key is not kept */
	char (*resources)[CLASSIFY_ID_MAX + 1];     /* NULL: every resource */
	size_t n_resources;
	bool read_only;
};

struct clients {
	struct client *v;
	size_t n;
};

struct clients *clients_new(void)
{
	return calloc(1, sizeof(struct clients));
}

void clients_free(struct clients *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++)
		free(c->v[i].resources);
	/* Digests of keys: not the keys, but nothing to leave lying around either. */
	if (c->v)
		OPENSSL_cleanse(c->v, c->n * sizeof(*c->v));
	free(c->v);
	free(c);
}

size_t clients_count(const struct clients *c)
{
	return c ? c->n : 0;
}

const char *clients_name_at(const struct clients *c, size_t i)
{
	return c && i < c->n ? c->v[i].name : NULL;
}

const char *clients_name(const struct client *cl)
{
	return cl ? cl->name : "";
}

static bool name_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > CLIENTS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
		if (!ok)
			return false;
	}
	return true;
}

/* "id, id,id" into cl->resources: 0, -EINVAL on an empty or invalid entry or too many, or
 * -ENOMEM. */
static int parse_resources(struct client *cl, const char *s)
{
	size_t n = 1;

	for (const char *p = s; *p; p++)
		n += *p == ',';
	if (n > RESOURCES_MAX)
		return -EINVAL;
	cl->resources = calloc(n, sizeof(*cl->resources));
	if (!cl->resources)
		return -ENOMEM;
	for (const char *p = s;;) {
		size_t len = strcspn(p, ",");
		const char *id = p;

		while (len > 0 && (*id == ' ' || *id == '\t')) {
			id++;
			len--;
		}
		while (len > 0 && (id[len - 1] == ' ' || id[len - 1] == '\t'))
			len--;
		if (!classify_id_valid(id, len))
			return -EINVAL;
		memcpy(cl->resources[cl->n_resources], id, len);
		cl->resources[cl->n_resources][len] = '\0';
		cl->n_resources++;
		p += strcspn(p, ",");
		if (*p == '\0')
			return 0;
		p++;
	}
}

int clients_add(struct clients *c, const char *name, const char *key, size_t key_len,
                const char *resources, bool read_only, char *err, size_t err_len)
{
	struct client cl = { .read_only = read_only };

	if (!name_valid(name)) {
		snprintf(err, err_len, "a client name must be 1 to %d of A-Z a-z 0-9 . _ -",
		         CLIENTS_NAME_MAX);
		return -EINVAL;
	}
	if (!key || key_len < CLIENTS_KEY_MIN || key_len > CLIENTS_KEY_MAX) {
		snprintf(err, err_len,
		         "client %s: its key must be %d to %d bytes long (make one with `openssl "
		         "rand -hex 32`)",
		         name, CLIENTS_KEY_MIN, CLIENTS_KEY_MAX);
		return -EINVAL;
	}
	for (size_t i = 0; i < key_len; i++) {
		if ((unsigned char)key[i] <= 0x20 || (unsigned char)key[i] >= 0x7f) {
			snprintf(err, err_len,
			         "client %s: its key holds bytes that cannot be sent in a header",
			         name);
			return -EINVAL;
		}
	}
	if (c->n >= CLIENTS_MAX) {
		snprintf(err, err_len, "client %s: more than %d clients", name, CLIENTS_MAX);
		return -ENOSPC;
	}
	util_strlcpy(cl.name, name, sizeof(cl.name));
	if (!SHA256((const unsigned char *)key, key_len, cl.digest)) {
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < c->n; i++) {
		int rc = 0;

		if (strcmp(c->v[i].name, name) == 0) {
			snprintf(err, err_len, "client %s is configured twice", name);
			rc = -EEXIST;
		} else if (CRYPTO_memcmp(c->v[i].digest, cl.digest, sizeof(cl.digest)) == 0) {
			/* Two clients with one key could not be told apart. (At load, not per
			 * request: no timing concern here.) */
			snprintf(err, err_len, "client %s has the same key as client %s", name,
			         c->v[i].name);
			rc = -EEXIST;
		}
		if (rc < 0) {
			OPENSSL_cleanse(cl.digest, sizeof(cl.digest));
			return rc;
		}
	}
	if (resources && *resources) {
		int rc = parse_resources(&cl, resources);

		if (rc < 0) {
			free(cl.resources);
			OPENSSL_cleanse(cl.digest, sizeof(cl.digest));
			if (rc == -ENOMEM)
				snprintf(err, err_len, "out of memory");
			else
				snprintf(err, err_len,
				         "client %s: resources must be 1 to %d comma-separated ids "
				         "(A-Z a-z 0-9 _ -, up to 64 each)",
				         name, RESOURCES_MAX);
			return rc;
		}
	}
	struct client *v = realloc(c->v, (c->n + 1) * sizeof(*v));
	if (!v) {
		free(cl.resources);
		OPENSSL_cleanse(cl.digest, sizeof(cl.digest));
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	c->v = v;
	c->v[c->n++] = cl;
	return 0;
}

/* The value of map entry "<name><suffix>", or NULL. */
static const char *map_get(const struct config_map *m, const char *name, const char *suffix)
{
	size_t nl = strlen(name), sl = strlen(suffix);

	for (size_t i = 0; i < m->n; i++) {
		const char *e = m->v[i].name;
		if (strlen(e) == nl + sl && memcmp(e, name, nl) == 0 && strcmp(e + nl, suffix) == 0)
			return m->v[i].value;
	}
	return NULL;
}

static bool has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), sl = strlen(suffix);

	return n > sl && strcmp(s + n - sl, suffix) == 0;
}

struct clients *clients_load(const struct config *cfg, char *err, size_t err_len)
{
	struct clients *c = clients_new();
	char why[512];

	if (!c) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < cfg->clients.n; i++) {
		const struct config_map_entry *e = &cfg->clients.v[i];
		const char *ro_s, *res;
		bool ro = false;
		char *key = NULL;
		int rc;

		if (has_suffix(e->name, ".resources") || has_suffix(e->name, ".read_only"))
			continue;
		ro_s = map_get(&cfg->clients, e->name, ".read_only");
		if (ro_s && config_parse_bool(ro_s, &ro) != 0) {
			snprintf(err, err_len, "[clients] %s.read_only: not a boolean", e->name);
			goto fail;
		}
		res = map_get(&cfg->clients, e->name, ".resources");
		rc = credentials_read_file(e->value, CLIENTS_KEY_MAX, &key, why, sizeof(why));
		if (rc < 0) {
			snprintf(err, err_len, "[clients] %s: %s", e->name, why);
			goto fail;
		}
		rc = clients_add(c, e->name, key, strlen(key), res, ro, why, sizeof(why));
		util_wipe_free(key, strlen(key));
		if (rc < 0) {
			snprintf(err, err_len, "[clients] %s (key file %s)", why, e->value);
			goto fail;
		}
	}
	return c;
fail:
	clients_free(c);
	return NULL;
}

enum clients_verdict clients_authenticate(const struct clients *c, const char *key, size_t len,
                                          const struct client **out)
{
	unsigned char d[SHA256_DIGEST_LENGTH];
	size_t found = 0, idx = 0;

	*out = NULL;
	if (!key || len == 0)
		return CLIENTS_MISSING;
	if (clients_count(c) == 0)
		return CLIENTS_INVALID;
	/* Hashing first makes every comparison 32 bytes against 32, whatever the lengths; the
	 * hash itself takes time by the presented length only, which the sender knows. */
	if (!SHA256((const unsigned char *)key, len, d))
		return CLIENTS_INVALID;
	for (size_t i = 0; i < c->n; i++) {
		size_t eq = util_ct_equal(d, sizeof(d), c->v[i].digest, sizeof(d));
		size_t mask = (size_t)0 - eq; /* all ones when equal */

		/* Every digest is compared; the match is picked by masks, not a branch. */
		idx = (idx & ~mask) | (i & mask);
		found |= eq;
	}
	OPENSSL_cleanse(d, sizeof(d));
	if (!found)
		return CLIENTS_INVALID;
	*out = &c->v[idx];
	return CLIENTS_OK;
}

enum clients_verdict clients_authorize(const struct client *cl, const char *method,
                                       const char *resource)
{
	if (!cl)
		return CLIENTS_INVALID;
	if (cl->read_only &&
	    (!method || (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 &&
	                 strcmp(method, "OPTIONS") != 0)))
		return CLIENTS_READ_ONLY;
	if (!cl->resources)
		return CLIENTS_OK;
	for (size_t i = 0; resource && *resource && i < cl->n_resources; i++)
		if (strcmp(cl->resources[i], resource) == 0)
			return CLIENTS_OK;
	return CLIENTS_RESOURCE;
}

const char *clients_verdict_name(enum clients_verdict v)
{
	switch (v) {
	case CLIENTS_OK:
		return "ok";
	case CLIENTS_MISSING:
		return "missing";
	case CLIENTS_INVALID:
		return "invalid";
	case CLIENTS_RESOURCE:
		return "resource";
	case CLIENTS_READ_ONLY:
		return "read_only";
	}
	return "invalid";
}
