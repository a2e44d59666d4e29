/*
 * clients.h: who may use the proxy. `[clients]` names each client and the file holding its key;
 * `name.resources = id,id` limits it to those locations or companies, `name.read_only = yes` to
 * GET, HEAD and OPTIONS. When any client is configured, every proxied request must present a key:
 * `Authorization: Bearer <key>` in inject mode, `X-GHL-Proxy-Key: <key>` in passthrough (where
 * Authorization is the client's own HighLevel credential). request.c asks here at intake.
 *
 * A snapshot is built whole (clients_load at start and on every reload, so a replaced key file
 * is picked up then) and never changes; the daemon swaps snapshots. Requests copy their client's
 * name, never a pointer into the snapshot.
 *
 * Keys are not kept: a snapshot holds the SHA-256 of each (the files are wiped from memory once
 * hashed). A presented key is hashed and compared with every client's digest in constant time,
 * without an early exit, so the time taken says nothing about which client matched, how many
 * bytes matched, or how long the configured keys are.
 *
 * Everything but clients_load is pure (no I/O, no clock): tests and fuzzing build snapshots with
 * clients_add.
 */
#ifndef GHLPROXY_CLIENTS_H
#define GHLPROXY_CLIENTS_H

#include <stdbool.h>
#include <stddef.h>

struct config;
struct clients;
struct client;

/* Most clients in one configuration: bounds the per-request comparison and the metrics. */
#define CLIENTS_MAX 256
/* A key shorter than this is refused: a guessable key on an off-loopback listener gives the
 * agency's credentials away. `openssl rand -hex 32` makes a good one. */
#define CLIENTS_KEY_MIN 16
#define CLIENTS_KEY_MAX 1024
/* Client names: 1 to 64 of A-Z a-z 0-9 . _ - (config.c checks the file; clients_add again). */
#define CLIENTS_NAME_MAX 64

enum clients_verdict {
	CLIENTS_OK = 0,
	CLIENTS_MISSING,   /* no key presented (401) */
	CLIENTS_INVALID,   /* a key that is no client's, or more than one key header (401) */
	CLIENTS_RESOURCE,  /* the client may not use this resource, or it names none (403) */
	CLIENTS_READ_ONLY, /* the client may only read (403) */
};

/* An empty snapshot, or NULL when out of memory. */
struct clients *clients_new(void);
void clients_free(struct clients *c);

/*
 * Add a client: its key (key_len bytes, at least CLIENTS_KEY_MIN, at most CLIENTS_KEY_MAX,
 * printable ASCII without spaces), the resources it is limited to ("id,id", spaces around ids
 * allowed; NULL or "": all), read_only. Returns 0, or -EINVAL (bad name, key or list), -EEXIST
 * (the name, or the same key, is already another client's), -ENOSPC (CLIENTS_MAX reached),
 * -ENOMEM, with a message in err that names the client, never the key.
 */
int clients_add(struct clients *c, const char *name, const char *key, size_t key_len,
                const char *resources, bool read_only, char *err, size_t err_len);

/* Clients in the snapshot; 0 for NULL (no client keys: everyone on the listener may use it). */
size_t clients_count(const struct clients *c);
/* The i-th client in configuration order (i < clients_count), for metrics. */
const char *clients_name_at(const struct clients *c, size_t i);

/*
 * Read every key file [clients] names (through $CREDENTIALS_DIRECTORY like every other secret,
 * credentials_read_file) and build the snapshot. NULL with a message in err (client name, file
 * name and why; never the key). A configuration without [clients] gives an empty snapshot.
 */
struct clients *clients_load(const struct config *cfg, char *err, size_t err_len);

/*
 * Which client presented this key (len bytes; key NULL or len 0: none presented)? CLIENTS_OK
 * with *out set, CLIENTS_MISSING or CLIENTS_INVALID. The work done is the same whichever client
 * matches, and whether one does.
 */
enum clients_verdict clients_authenticate(const struct clients *c, const char *key, size_t len,
                                          const struct client **out);

/*
 * May this client send this request? method: "GET", ...; resource: the classified location or
 * company id, "" when unknown. CLIENTS_OK, CLIENTS_READ_ONLY (checked first) or CLIENTS_RESOURCE.
 */
enum clients_verdict clients_authorize(const struct client *cl, const char *method,
                                       const char *resource);

const char *clients_name(const struct client *cl);

/* "ok", "missing", "invalid", "resource", "read_only": the refusal reasons in /metrics. */
const char *clients_verdict_name(enum clients_verdict v);

#endif
