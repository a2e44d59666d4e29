/*
 * token_store.h: the OAuth tokens of every installed location and company, as entries (one per
 * resource), their encodings, and the file store shared by the daemon and `ghlproxy token`.
 * Formats: /work/notes/creds-design.md ("Credentials design"), summarised here.
 *
 * Data enters as bytes (a file's content, a Redis blob, a key file) and leaves as a struct
 * ts_set / struct ts_entry, and back. The encoders and decoders are pure (no I/O; the encoders
 * draw a random nonce) and never crash on any input: sizes are bounded (TS_*_MAX), nesting is
 * checked before jansson sees the text, duplicate keys are refused and every field's type and
 * length is validated. The ts_file_* functions and ts_refresh_lock do the I/O.
 *
 * File (store.path): {"version":1,"tokens":[entry,...]}, or with store.key_file the envelope
 * {"version":1,"cipher":"aes-256-gcm","nonce":b64(12),"tag":b64(16),"data":b64(ciphertext)}
 * with AAD TS_AAD, a fresh nonce per write. A Redis blob is one entry object, or the same
 * envelope of it. Unknown fields of an entry are ignored (and dropped when it is written again).
 *
 * Secrets: every string of an entry that holds a token lives in its own allocation and is wiped
 * (OPENSSL_cleanse) when replaced or freed, as are the buffers this module encodes into and the
 * strings jansson parsed. Error messages never hold a token, a key or any part of the input
 * text, only field names, entry positions and resource ids that passed validation.
 */
#ifndef GHLPROXY_TOKEN_STORE_H
#define GHLPROXY_TOKEN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct config;

#define TS_RESOURCE_MAX 64           /* resource id: 1..64 chars of [A-Za-z0-9_-] */
#define TS_TOKEN_MAX    16384        /* access and refresh tokens, bytes */
#define TS_ID_MAX       128          /* company_id, location_id, user_id, bytes */
#define TS_SCOPE_MAX    8192         /* scope (space-separated), bytes */
#define TS_ENTRIES_MAX  100000       /* entries in one file */
#define TS_FILE_MAX     (128u << 20) /* bytes of a file, plain or encrypted */
#define TS_ENTRY_MAX    (128u << 10) /* bytes of one Redis blob, plain or encrypted */
#define TS_KEY_LEN      32           /* AES-256 */
#define TS_AAD          "ghlproxy-token-store-v1"

enum ts_user_type { TS_USER_LOCATION = 0, TS_USER_COMPANY };
enum ts_state { TS_STATE_OK = 0, TS_STATE_NEEDS_REINSTALL, TS_STATE_INACTIVE };

/*
 * One resource's tokens. Every string is non-NULL, NUL-terminated, printable ASCII (0x20..0x7e)
 * and within its bound ("" when absent); change one with ts_entry_set_str so the old value is
 * wiped. Times are wall-clock ms since the epoch.
 */
struct ts_entry {
	char resource[TS_RESOURCE_MAX + 1]; /* the location or company id */
	enum ts_user_type user_type;
	char *access_token;        /* "" when none */
	int64_t access_expires_ms; /* 0: none */
	char *refresh_token; /* single-use at HighLevel: losing the newest loses the install */
	char *company_id;
	char *location_id;
	char *user_id;
	char *scope;
	enum ts_state state;
	uint64_t generation; /* bumps on every change of the entry; fencing across processes */
	int64_t updated_ms;
};

/* Every string "", user type Location, state ok, numbers 0, resource "". NULL: no memory. */
struct ts_entry *ts_entry_new(void);
/* A deep copy; NULL: no memory. */
struct ts_entry *ts_entry_dup(const struct ts_entry *e);
/* Wipes every string, then frees. NULL is fine. */
void ts_entry_free(struct ts_entry *e);
/*
 * Replace one string field of an entry (slot is &e->access_token, &e->scope, ...) by a copy of
 * value (NULL: ""), wiping the old one. 0, or -ENOMEM (the field is unchanged). Bounds and
 * character set are checked by ts_entry_validate, not here.
 */
int ts_entry_set_str(char **slot, const char *value);
/* 0 when e could be written and read back; else -EINVAL with the reason (field name) in err. */
int ts_entry_validate(const struct ts_entry *e, char *err, size_t err_len);

/* A resource id: 1..TS_RESOURCE_MAX chars of [A-Za-z0-9_-] (len: bytes, NUL not needed). */
bool ts_resource_valid(const char *s, size_t len);

/* "Location" / "Company", "ok" / "needs_reinstall" / "inactive". */
const char *ts_user_type_name(enum ts_user_type t);
const char *ts_state_name(enum ts_state s);
/* The reverse, exact spelling. 0 or -EINVAL. */
int ts_user_type_parse(const char *s, enum ts_user_type *out);
int ts_state_parse(const char *s, enum ts_state *out);

/* The entries of a store, sorted by resource (strcmp), at most one per resource. */
struct ts_set {
	struct ts_entry **v;
	size_t n, cap;
};

void ts_set_init(struct ts_set *s);
/* Frees (and wipes) every entry; the set is empty and usable again. */
void ts_set_deinit(struct ts_set *s);
/* The entry of resource, owned by the set, or NULL. */
struct ts_entry *ts_set_find(const struct ts_set *s, const char *resource);
/*
 * Take ownership of e, replacing (and freeing) the set's entry of the same resource. 0, or
 * -ENOMEM with e still the caller's.
 */
int ts_set_put(struct ts_set *s, struct ts_entry *e);
/* Free the entry of resource. 0, or -ENOENT. */
int ts_set_remove(struct ts_set *s, const char *resource);
/* Remove the entry of resource from the set and hand it to the caller (NULL: none). */
struct ts_entry *ts_set_take(struct ts_set *s, const char *resource);

/* ---- keys ---- */

struct ts_key {
	unsigned char bytes[TS_KEY_LEN];
};

/*
 * A key file's content: exactly 32 raw bytes, or (surrounding whitespace ignored) 64 hex
 * characters or the base64 of 32 bytes (padding optional). 0, or -EINVAL with err set.
 */
int ts_key_parse(const void *buf, size_t len, struct ts_key *out, char *err, size_t err_len);
/* Read and parse a key file (at most 4 KiB). 0, or -errno / -EINVAL with err set. */
int ts_key_load(const char *path, struct ts_key *out, char *err, size_t err_len);
void ts_key_wipe(struct ts_key *k);

/* ---- encodings (pure) ---- */

/*
 * The whole file for the set: plain when key is NULL, else the AES-256-GCM envelope. Every entry
 * is validated first (-EINVAL naming the entry's resource and field). On success *out is a
 * malloc'd NUL-terminated text of *out_len bytes holding secrets: free it with
 * ts_buf_free(*out, *out_len). -ENOMEM, -EINVAL, -EIO (OpenSSL failed).
 */
int ts_encode_file(const struct ts_set *s, const struct ts_key *key, char **out, size_t *out_len,
                   char *err, size_t err_len);
/*
 * Parse a whole file into out (which must be empty: ts_set_init). key NULL: the file must be
 * plain; else it must be the envelope, sealed under key. 0, or -EINVAL (malformed, wrong key,
 * plain/encrypted mismatch; out is left empty) or -ENOMEM, with err set. A wrong key or tampered
 * data reads "cannot decrypt the token store: wrong store.key_file?".
 */
int ts_decode_file(const void *buf, size_t len, const struct ts_key *key, struct ts_set *out,
                   char *err, size_t err_len);

/* One entry, for a Redis blob: the entry object, or its envelope under key. As above. */
int ts_encode_entry(const struct ts_entry *e, const struct ts_key *key, char **out, size_t *out_len,
                    char *err, size_t err_len);
/* *out is a new entry (ts_entry_free) or NULL on error. */
int ts_decode_entry(const void *buf, size_t len, const struct ts_key *key, struct ts_entry **out,
                    char *err, size_t err_len);

/* Wipe and free a buffer from ts_encode_*. NULL is fine. */
void ts_buf_free(char *buf, size_t len);

/* ---- the file store ---- */

/* store.path, else $STATE_DIRECTORY/tokens.json, else /var/lib/ghlproxy/tokens.json (through
 * config_store_path). Caller frees; NULL: no memory. The daemon and the CLI both resolve the
 * path here. */
char *ts_default_path(const struct config *cfg);

/* What a daemon polls (about once a second) to notice that another process wrote the file. */
struct ts_file_id {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	int64_t mtime_ns;
};

/* The identity of path now (exists false when it is missing). 0, or -errno. */
int ts_file_identity(const char *path, struct ts_file_id *out);
bool ts_file_id_equal(const struct ts_file_id *a, const struct ts_file_id *b);

/*
 * Read the store at path into out (empty: ts_set_init). A missing file is an empty store. id
 * (may be NULL) gets the identity of the file that was read, so a poll compares against exactly
 * that content. No lock is needed: writers replace the file by rename. 0, or -errno / -EINVAL
 * with err set (path and reason; never content).
 */
int ts_file_load(const char *path, const struct ts_key *key, struct ts_set *out,
                 struct ts_file_id *id, char *err, size_t err_len);

/*
 * The mutation of one ts_file_update: change set as wished. Return 0 to write the set, > 0 to
 * leave the file as it is (nothing changed), < 0 (a negative errno, reason in err) to abort.
 */
typedef int (*ts_mutate_cb)(struct ts_set *set, void *arg, char *err, size_t err_len);

/*
 * Read-modify-write under flock(LOCK_EX) of "<path>.lock" (created 0600; waits for the holder):
 * load (missing: empty), cb, then when cb returned 0 write atomically: a 0600 temp file
 * ".<name>.XXXXXX" in the same directory, write, fsync, rename over path, fsync the directory.
 * The temp file is removed on every failure path; the file is untouched unless the rename
 * happened (only the directory's fsync comes after it: when that fails the new content is in
 * place but maybe not durable, and the error says "fsync of the directory"). id (may be NULL)
 * gets the identity of the file as it is afterwards. Returns 0 (also when cb returned > 0), cb's
 * negative value, or -errno / -EINVAL, with err set. Blocks while another process holds the
 * lock (writers hold it for one read-encode-write, milliseconds).
 */
int ts_file_update(const char *path, const struct ts_key *key, ts_mutate_cb cb, void *arg,
                   struct ts_file_id *id, char *err, size_t err_len);
/*
 * ts_file_update for a caller that keeps a copy of the file in memory, last read at identity
 * *seen: id gets the identity afterwards only when the file was still *seen when read under the
 * lock. When another process had changed it, id is zeroed, so that the caller reads the file
 * again rather than take the file as it left it for the copy it holds, and miss that change.
 */
int ts_file_update_seen(const char *path, const struct ts_key *key, ts_mutate_cb cb, void *arg,
                        const struct ts_file_id *seen, struct ts_file_id *id, char *err,
                        size_t err_len);

/*
 * The per-resource refresh lock across processes on one host: flock(LOCK_EX|LOCK_NB) on
 * "<path>.refresh.<first 32 hex of SHA-256(resource)>" (created 0600; lock files are left in
 * place, removing them would race). Returns the fd that holds the lock, to close when the
 * refresh is done (ts_refresh_unlock), -EWOULDBLOCK when another open file holds it (another
 * process, or another fd of this one), or another -errno.
 */
int ts_refresh_lock(const char *path, const char *resource);
void ts_refresh_unlock(int fd);

/* ---- the Redis layout (pure helpers; I/O is the caller's) ---- */

/*
 * Keys: "<prefix>:{tok:<resource>}" (hash: gen, blob), its refresh lock
 * "<prefix>:{tok:<resource>}:lock" (SET NX PX, value = owner id) and the index set
 * "<prefix>:tokens". Each returns 0, or -ENAMETOOLONG when out is too small, -EINVAL for a bad
 * resource.
 */
int ts_redis_entry_key(const char *prefix, const char *resource, char *out, size_t len);
int ts_redis_lock_key(const char *prefix, const char *resource, char *out, size_t len);
int ts_redis_index_key(const char *prefix, char *out, size_t len);

/*
 * Compare-and-set of one entry (EVAL with 2 keys, 4 args): KEYS[1] the entry key, KEYS[2] its
 * lock key; ARGV[1] the generation the caller started from, in decimal ("0": the entry must not
 * exist), ARGV[2] the new blob, ARGV[3] the lock owner id, or "" to skip the lock check (import
 * from the CLI), ARGV[4] the new generation in decimal (ARGV[1] + 1, as carried by the blob's
 * entry). Returns 1 (stored: gen = ARGV[4], blob = ARGV[2]), 0 (the generation moved: read the
 * winner's entry) or -1 (ARGV[3] does not hold the lock). Both keys share the hash tag, so the
 * script is valid on a cluster too; the index set is the caller's (SADD before storing, SREM
 * after deleting): a resource in the index without an entry is skipped by readers.
 */
extern const char ts_redis_cas_lua[];

#endif
