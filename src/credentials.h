/*
 * credentials.h: the static secrets the proxy holds, read from files: Private Integration Tokens
 * ([pit]: resource = file[,file...]) and API 1.0 keys ([v1_keys]: location = file, agency = file).
 *
 * A snapshot is loaded whole from the configuration (at start and on every reload: a replaced
 * file is picked up then) and never changes; the daemon swaps snapshots. Requests copy what they
 * inject into their own headers when they start, so a request in flight keeps the credential it
 * started with while new ones use the new file.
 *
 * A relative file name is looked up in $CREDENTIALS_DIRECTORY first (systemd's LoadCredential=),
 * then relative to the working directory. Files hold one secret, surrounding whitespace ignored.
 * Errors name the file, never its content.
 *
 * Uses: in passthrough, a client's PIT or API key is mapped to its resource by fingerprint
 * (credentials_lookup, a classify_lookup_fn); in inject mode, the credential for a resource is
 * chosen here (credentials_pit_for, credentials_v1_for).
 */
#ifndef GHLPROXY_CREDENTIALS_H
#define GHLPROXY_CREDENTIALS_H

#include <stddef.h>

#include "classify.h"

struct config;
struct credentials;

/* One secret and what it is for. */
struct credential {
	char *secret;
	char fingerprint[CLASSIFY_FP_LEN + 1];
	char resource[CLASSIFY_ID_MAX + 1]; /* "" for the agency API key */
	enum classify_cred kind;            /* CRED_PIT or CRED_V1_KEY */
};

/* Read every credential file the configuration names. NULL with a message (file name and
 * reason, no secret) in err on any failure. An empty configuration gives an empty snapshot. */
struct credentials *credentials_load(const struct config *cfg, char *err, size_t err_len);
void credentials_free(struct credentials *c);

/* classify_lookup_fn: the resource of the credential with this fingerprint, or NULL. */
const char *credentials_lookup(void *creds, const char *fingerprint, enum classify_res_kind *kind);

/* A PIT for this resource (several: taken in turn), or NULL. */
const struct credential *credentials_pit_for(struct credentials *c, const char *resource);
/* The API 1.0 key of this location, else the agency key, else NULL. */
const struct credential *credentials_v1_for(const struct credentials *c, const char *resource);

size_t credentials_count(const struct credentials *c);

/* The file a configured name means: relative names in $CREDENTIALS_DIRECTORY when there, else
 * the name itself. */
void credentials_resolve(const char *path, char *out, size_t len);

/* Read a one-secret file (relative names through $CREDENTIALS_DIRECTORY first): trimmed,
 * non-empty, printable ASCII, at most max_len bytes. Returns 0 or -errno / -EINVAL with a
 * message naming the file. *out is malloc'ed; wipe and free it. */
int credentials_read_file(const char *path, size_t max_len, char **out, char *err, size_t err_len);

#endif
