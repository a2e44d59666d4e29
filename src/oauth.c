/*
 * oauth.c: OAuth tokens kept alive for inject mode (oauth.h says what and why).
 *
 * One struct oauth_res per resource this process knows: its stored entry (from the token store)
 * or, for a location reached through a company token, a minted access token (not stored: it is
 * cheap to mint again). A resource is idle or refreshing; a refresh is a chain of steps, each
 * run from the loop:
 *
 *   lock ─► read the store again ─► (someone else refreshed: adopt, done)
 *        ─► POST /oauth/token (or /oauth/locationToken) ─► store the new pair ─► unlock ─► done
 *
 * With the file store, lock is ts_refresh_lock (a flock held for the whole refresh) and the
 * store steps are ts_file_load / ts_file_update, run on a helper thread (offload.h: the file
 * holds every resource, megabytes for a thousand of them) and finished on the loop. With Redis,
 * lock is SET NX PX with this process's owner id, the read is HMGET, the write the compare-and-set
 * script of token_store.h (generation + lock owner), the unlock a compare-and-delete. A busy lock
 * means another process is refreshing: the step is retried after a short wait, reading the store
 * first, so the winner's pair is adopted.
 *
 * Waiters (requests) queue on the resource and are answered when the chain ends, or at their
 * deadline. A timer per resource refreshes ahead of expiry (oauth.refresh_ahead), retries after
 * failures with backoff, and retries storing a pair that could not be stored. A second timer
 * polls the store for entries written by other processes (imports, other proxies' refreshes).
 */
#define _GNU_SOURCE /* strcasestr */
#include "oauth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/rand.h>

#include "config.h"
#include "credentials.h"
#include "jwt.h"
#include "log.h"
#include "metrics.h"
#include "offload.h"
#include "redis.h"
#include "token_store.h"
#include "upstream.h"
#include "util.h"

#define SYNC_INTERVAL_MS       1000
#define LOCK_RETRY_MS          200
#define LOCK_TTL_MS            60000 /* above any token call: a lock never expires mid-refresh */
#define STORE_RETRY_MS         1000
#define STORE_EXIT_WAIT_MS     5000 /* at exit, for a file read or write on the helper thread */
#define BACKOFF_MIN_MS         1000
#define BACKOFF_MAX_MS         60000
#define INACTIVE_MIN_MS        30000
#define INACTIVE_MAX_MS        (15 * 60000)
#define ANSWER_MAX             (256 * 1024)
#define USABLE_MARGIN_MS       1000 /* a token this close to expiry is not handed out */
#define LOCATION_TOKEN_TTL     (23 * 3600 * 1000LL)
#define REFUSED_NEAR_EXPIRY_MS (5 * 60000) /* a 401 this close to exp is taken as expiry */
#define TOKEN_CALL_TIMEOUT_MS  15000       /* answer head of a token call, at most */
#define ANSWER_TTL_UNKNOWN_S   3600.0      /* a token answer without a usable expires_in */

enum res_phase {
	PH_IDLE = 0,
	PH_LOCKING, /* waiting for the cross-process lock (Redis reply or a retry timer) */
	PH_READING, /* Redis: reading the entry under the lock */
	PH_CALLING, /* token endpoint exchange in flight */
	PH_STORING, /* Redis: compare-and-set in flight, or a store retry pending */
	PH_COMPANY, /* a minted location token waits for its company's token */
	PH_FETCH,   /* Redis: a resource first seen here, its entry being read */
};

struct oauth_res {
	LIST_ENTRY(oauth_res) link;
	struct oauth *o;
	char id[TS_RESOURCE_MAX + 1];
	struct ts_entry *e; /* the stored entry; NULL for a minted location token */
	/* Minted (location through a company token): */
	char company[TS_RESOURCE_MAX + 1];
	char *minted;
	int64_t minted_expires_ms;
	struct oauth_waiter company_wait;

	enum res_phase phase;
	bool forced;              /* a 401 said the current token is dead */
	char *dead_token;         /* the token that got the 401 (wiped) */
	struct ts_entry *pending; /* a new pair not yet stored */
	uint64_t base_gen;        /* generation the refresh started from */
	uint64_t start_gen;       /* generation held when the refresh began (file store: a newer
	                           * one found in the store means another process refreshed) */
	int lock_fd;              /* file store flock, or -1 */
	struct file_job *job;     /* file store: the read or write on the helper thread, or NULL */
	bool redis_locked;
	struct event *timer; /* refresh ahead, retries */
	int64_t backoff_ms;
	int64_t retry_at_ms; /* after a failure: no new attempt before (wall ms) */
	char last_error[160];
	TAILQ_HEAD(, oauth_waiter) waiters;
	struct upstream_exchange *x;
	struct evbuffer *answer;
	int status;
};

struct oauth {
	struct event_base *base;
	struct upstream *up;
	char *client_id;
	char *client_secret;
	char app[25];
	char *redirect_uri, *scopes, *authorize_url;
	int64_t refresh_ahead_ms;
	/* store */
	bool on_redis;
	char *path;
	struct ts_file_id file_id;
	bool missing_logged;
	struct ts_key key;
	bool has_key;
	struct redis *rd;
	char prefix[80];
	char owner[40];
	struct event *sync_timer;
	bool sync_busy;     /* a sync in flight (Redis commands, or the file's job) */
	struct offload *ow; /* file store: the thread that reads and writes the file */
	LIST_HEAD(, oauth_res) res;
	struct oauth_stats st;
	/* install callbacks in progress */
	LIST_HEAD(, install) installs;
	bool draining; /* oauth_drain: no refresh ahead of expiry */
};

struct install {
	LIST_ENTRY(install) link;
	struct oauth *o;
	struct evhttp_request *req;
	struct upstream_exchange *x;
	struct evbuffer *answer;
	int status;
};

/*
 * What the store holds for a resource whose new pair (r->pending) is to be written, when that
 * may not be the entry the refresh started from (generation r->base_gen): a write whose answer
 * was lost, an import, an install or a removal during the refresh, a lost Redis lock.
 */
enum store_finding {
	FOUND_OURS,    /* our pair is there already: the earlier write landed */
	FOUND_SPENT,   /* the entry we started from, or another with the refresh token we spent:
	                  ours goes on top of it */
	FOUND_THEIRS,  /* another pair, written by an install or an import: it stands */
	FOUND_REMOVED, /* removed (`ghlproxy token remove`): ours is dropped too */
};

/*
 * The file store's reads and writes run on the helper thread (o->ow): with a thousand resources
 * the file is megabytes, and reading it or writing it whole took a hundred milliseconds and more
 * of the loop (bench/results/tokens.txt). A job carries what its step needs, copied, and its
 * results back; every decision is taken on the loop when it is done, as it was before.
 */

struct file_job {
	struct offload_job j; /* first: the job is the offload_job */
	struct oauth *o;
	struct oauth_res *r; /* read, store: NULL once r let go of it */
	struct install *in;  /* install: answered when the job is done */
	ts_mutate_cb put;    /* install, mark: how run_put writes `pending` */
	int lock_fd;         /* mark: the resource's refresh lock, held until written, or -1 */
	/* in */
	char *path;
	struct ts_key key;
	bool has_key;
	char resource[TS_RESOURCE_MAX + 1];
	struct ts_entry *pending; /* store: a copy of r->pending */
	char *spent;              /* store: the refresh token the refresh spent, or NULL */
	uint64_t base_gen;        /* store: r->base_gen */
	/* out */
	int rc;
	char err[256];
	struct ts_file_id id;     /* the file as read (sync) or as left (writes; see seen) */
	struct ts_file_id seen;   /* writes: the file as memory last read it, when submitted */
	struct ts_set set;        /* sync */
	struct ts_entry *entry;   /* read: the resource's entry, NULL when it has none */
	enum store_finding found; /* store, when the file was read */
	bool judged;
	struct ts_entry *theirs; /* store, FOUND_THEIRS: a copy of the store's entry */
};

static void step(struct oauth_res *r);
static void company_ready(struct oauth_waiter *w, enum oauth_status st, const char *token,
                          const char *why, void *arg);
static void finish(struct oauth_res *r, enum oauth_status st, const char *why);
static void arm_ahead(struct oauth_res *r);

/* ---- small helpers ---- */

static int64_t wall_ms(void)
{
	return util_wall_ms();
}

static void wipe_str(char **s)
{
	if (*s)
		util_wipe_free(*s, strlen(*s));
	*s = NULL;
}

static const char *res_token(const struct oauth_res *r)
{
	if (r->e)
		return r->e->access_token;
	return r->minted ? r->minted : "";
}

static int64_t res_expires(const struct oauth_res *r)
{
	return r->e ? r->e->access_expires_ms : r->minted_expires_ms;
}

static bool token_usable(const struct oauth_res *r, int64_t now)
{
	const char *t = res_token(r);
	int64_t margin = MIN((int64_t)USABLE_MARGIN_MS, r->o->refresh_ahead_ms / 2);

	if (!*t || now >= res_expires(r) - margin)
		return false;
	if (r->forced && r->dead_token && strcmp(r->dead_token, t) == 0)
		return false;
	return !r->e || r->e->state == TS_STATE_OK;
}

static struct oauth_res *res_find(struct oauth *o, const char *id)
{
	struct oauth_res *r;

	LIST_FOREACH(r, &o->res, link)
	if (strcmp(r->id, id) == 0)
		return r;
	return NULL;
}

static void on_res_timer(evutil_socket_t fd, short what, void *arg);

static struct oauth_res *res_new(struct oauth *o, const char *id)
{
	struct oauth_res *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->o = o;
	util_strlcpy(r->id, id, sizeof(r->id));
	r->lock_fd = -1;
	TAILQ_INIT(&r->waiters);
	r->timer = evtimer_new(o->base, on_res_timer, r);
	if (!r->timer) {
		free(r);
		return NULL;
	}
	LIST_INSERT_HEAD(&o->res, r, link);
	return r;
}

static void res_unlock(struct oauth_res *r);

static void res_free(struct oauth_res *r)
{
	struct oauth_waiter *w;

	while ((w = TAILQ_FIRST(&r->waiters)))
		oauth_cancel(w);
	if (r->company_wait.queued)
		oauth_cancel(&r->company_wait);
	if (r->x)
		upstream_cancel(r->x);
	if (r->answer)
		evbuffer_free(r->answer);
	if (r->job)
		r->job->r = NULL; /* its done frees it */
	res_unlock(r);
	event_free(r->timer);
	ts_entry_free(r->e);
	ts_entry_free(r->pending);
	wipe_str(&r->minted);
	wipe_str(&r->dead_token);
	LIST_REMOVE(r, link);
	free(r);
}

/* ---- waiters ---- */

static void on_waiter_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct oauth_waiter *w = arg;
	struct oauth_res *r = w->res;

	TAILQ_REMOVE(&r->waiters, w, link);
	w->queued = false;
	w->timer_set = false;
	w->cb(w, OAUTH_UNAVAILABLE, NULL,
	      r->last_error[0] ? r->last_error : "the token was not ready before the deadline",
	      w->arg);
}

void oauth_cancel(struct oauth_waiter *w)
{
	if (!w->queued)
		return;
	TAILQ_REMOVE(&w->res->waiters, w, link);
	w->queued = false;
	if (w->timer_set)
		event_del(&w->timer);
	w->timer_set = false;
}

static void add_waiter(struct oauth_res *r, struct oauth_waiter *w, int64_t deadline_ms,
                       oauth_cb cb, void *arg)
{
	w->res = r;
	w->cb = cb;
	w->arg = arg;
	w->queued = true;
	TAILQ_INSERT_TAIL(&r->waiters, w, link);
	if (deadline_ms > 0) {
		int64_t in = MAX(deadline_ms - util_now_ms(), (int64_t)0);
		struct timeval tv = { .tv_sec = in / 1000, .tv_usec = (in % 1000) * 1000 };
		evtimer_assign(&w->timer, r->o->base, on_waiter_deadline, w);
		evtimer_add(&w->timer, &tv);
		w->timer_set = true;
	}
}

/* Answer every waiter of r. A callback may add or cancel waiters: take them one by one. */
static void answer_waiters(struct oauth_res *r, enum oauth_status st, const char *why)
{
	TAILQ_HEAD(, oauth_waiter) now;
	struct oauth_waiter *w;

	TAILQ_INIT(&now);
	TAILQ_CONCAT(&now, &r->waiters, link);
	while ((w = TAILQ_FIRST(&now))) {
		TAILQ_REMOVE(&now, w, link);
		w->queued = false;
		if (w->timer_set)
			event_del(&w->timer);
		w->timer_set = false;
		if (st == OAUTH_READY)
			w->cb(w, st, res_token(r), NULL, w->arg);
		else
			w->cb(w, st, NULL, why, w->arg);
	}
}

/* ---- the store ---- */

static int mutate_put(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	struct ts_entry *want = arg;
	struct ts_entry *cur = ts_set_find(set, want->resource);
	uint64_t cur_gen = cur ? cur->generation : 0;

	/* Fencing: the entry must still be the one this change was made from. */
	if (want->generation != cur_gen + 1) {
		snprintf(err, err_len, "the entry of %s changed meanwhile", want->resource);
		return -ESTALE;
	}
	struct ts_entry *copy = ts_entry_dup(want);
	if (!copy || ts_set_put(set, copy) < 0) {
		ts_entry_free(copy);
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

/*
 * A stored entry was not taken because r is mid-refresh. A refresh reads the store again under
 * its lock and finds it; a location token being minted from its company (r->e NULL) does not.
 * The file store is then read again at the next tick, not left until the file changes again.
 */
static void dropped_mid_refresh(struct oauth *o, const struct oauth_res *r)
{
	if (!r->e && !o->on_redis)
		memset(&o->file_id, 0, sizeof(o->file_id));
}

/* Merge what the store holds into memory: an entry newer than ours replaces it; an entry gone
 * from the store (removed with `ghlproxy token remove`) goes, unless a refresh holds it. */
static void merge_entry(struct oauth *o, struct ts_entry *e)
{
	struct oauth_res *r = res_find(o, e->resource);

	if (!r) {
		r = res_new(o, e->resource);
		if (!r) {
			ts_entry_free(e);
			return;
		}
	}
	if (r->e && r->e->generation >= e->generation) {
		ts_entry_free(e);
		return;
	}
	if (r->phase != PH_IDLE && r->phase != PH_LOCKING) {
		dropped_mid_refresh(o, r);
		ts_entry_free(e);
		return;
	}
	bool was_minted = !r->e;
	ts_entry_free(r->e);
	r->e = e;
	if (was_minted)
		wipe_str(&r->minted);
	r->retry_at_ms = 0;
	r->backoff_ms = 0;
	arm_ahead(r);
	if (r->phase == PH_IDLE && !TAILQ_EMPTY(&r->waiters) && token_usable(r, wall_ms()))
		answer_waiters(r, OAUTH_READY, NULL);
}

static void reinstall_gauge(struct oauth *o)
{
	struct oauth_res *r;
	int64_t n = 0;

	LIST_FOREACH(r, &o->res, link)
	n += r->e && r->e->state == TS_STATE_NEEDS_REINSTALL;
	metrics_set(M_TOKENS_NEEDING_REINSTALL, n);
}

static void file_job_free(struct file_job *fj)
{
	if (fj->lock_fd >= 0)
		ts_refresh_unlock(fj->lock_fd);
	free(fj->path);
	ts_key_wipe(&fj->key);
	ts_entry_free(fj->pending);
	wipe_str(&fj->spent);
	ts_set_deinit(&fj->set);
	ts_entry_free(fj->entry);
	ts_entry_free(fj->theirs);
	free(fj);
}

static struct file_job *file_job_new(struct oauth *o, struct oauth_res *r,
                                     void (*run)(struct offload_job *),
                                     void (*done)(struct offload_job *, bool, bool))
{
	struct file_job *fj = calloc(1, sizeof(*fj));

	if (!fj)
		return NULL;
	fj->j.run = run;
	fj->j.done = done;
	fj->lock_fd = -1;
	fj->o = o;
	fj->seen = o->file_id;
	fj->r = r;
	fj->path = strdup(o->path);
	fj->has_key = o->has_key;
	if (o->has_key)
		fj->key = o->key;
	if (r)
		util_strlcpy(fj->resource, r->id, sizeof(fj->resource));
	ts_set_init(&fj->set);
	if (!fj->path) {
		file_job_free(fj);
		return NULL;
	}
	return fj;
}

static const struct ts_key *file_job_key(const struct file_job *fj)
{
	return fj->has_key ? &fj->key : NULL;
}

/* A write's job is done: the file as it left it is the file memory holds, unless the write did not
 * happen or the file had changed elsewhere (fj->id zero): then the next tick reads it again. */
static void file_job_took_write(struct file_job *fj, bool ran)
{
	if (ran)
		fj->o->file_id = fj->id;
}

/* Write `pending` as `put` says (an install's pair, an invalid grant's mark). */
static void run_put(struct offload_job *j)
{
	struct file_job *fj = (struct file_job *)j;

	fj->rc = ts_file_update_seen(fj->path, file_job_key(fj), fj->put, fj->pending, &fj->seen,
	                             &fj->id, fj->err, sizeof(fj->err));
}

/* The store's content at id merged into memory: removed entries first, then every entry. */
static void sync_apply(struct oauth *o, struct ts_set *set, const struct ts_file_id *id)
{
	o->file_id = *id;
	struct oauth_res *r, *next;
	for (r = LIST_FIRST(&o->res); r; r = next) {
		next = LIST_NEXT(r, link);
		if (r->e && !ts_set_find(set, r->id) && r->phase == PH_IDLE && !r->pending &&
		    !r->job) {
			log_info("token store: resource=%s removed", r->id);
			answer_waiters(r, OAUTH_NO_TOKEN, "the resource's tokens were removed");
			res_free(r);
		}
	}
	while (set->n > 0) {
		struct ts_entry *e = ts_set_take(set, set->v[set->n - 1]->resource);
		if (!e)
			break;
		merge_entry(o, e);
	}
	reinstall_gauge(o);
}

/* Whether the store must be read again: 1 yes, 0 no (unchanged, or gone: kept in memory), <0 the
 * file cannot be looked at. id gets what was seen. */
static int sync_needed(struct oauth *o, bool force, struct ts_file_id *id)
{
	if (ts_file_identity(o->path, id) < 0)
		return -EIO;
	if (!force && ts_file_id_equal(id, &o->file_id))
		return 0;
	if (!id->exists && o->file_id.exists) {
		/* The file went away (a moved directory, an operator's mistake): keep what we
		 * hold rather than forget every installation; `token remove` removes entries,
		 * never the file. */
		if (!o->missing_logged)
			log_error("token store %s is missing: keeping the tokens in memory",
			          o->path);
		o->missing_logged = true;
		return 0;
	}
	o->missing_logged = false;
	return 1;
}

/* At start, before the loop serves: read the store here and now. */
static int file_sync(struct oauth *o)
{
	struct ts_file_id id;
	struct ts_set set;
	char err[256];
	int rc = sync_needed(o, true, &id);

	if (rc <= 0)
		return rc;
	ts_set_init(&set);
	if (ts_file_load(o->path, o->has_key ? &o->key : NULL, &set, &id, err, sizeof(err)) < 0) {
		log_warning("token store: %s", err);
		ts_set_deinit(&set);
		return -EIO;
	}
	sync_apply(o, &set, &id);
	ts_set_deinit(&set);
	return 0;
}

static void run_sync(struct offload_job *j)
{
	struct file_job *fj = (struct file_job *)j;

	fj->rc = ts_file_load(fj->path, file_job_key(fj), &fj->set, &fj->id, fj->err,
	                      sizeof(fj->err));
}

static void sync_done(struct offload_job *j, bool ran, bool stopping)
{
	struct file_job *fj = (struct file_job *)j;
	struct oauth *o = fj->o;

	o->sync_busy = false;
	if (ran && !stopping) {
		if (fj->rc < 0) {
			log_warning("token store: %s", fj->err);
		} else {
			/* Every write of the file is a job of this helper, in turn: this read saw
			 * every write done before it, and none done after it. */
			sync_apply(o, &fj->set, &fj->id);
		}
	}
	file_job_free(fj);
}

/* While serving: the store is read on the helper thread when it changed, and merged when read. */
static void file_sync_async(struct oauth *o)
{
	struct ts_file_id id;

	if (o->sync_busy || sync_needed(o, false, &id) <= 0)
		return;
	struct file_job *fj = file_job_new(o, NULL, run_sync, sync_done);
	if (!fj)
		return; /* out of memory: the next tick tries again */
	o->sync_busy = true;
	offload_submit(o->ow, &fj->j);
}

/* Redis: the index, then every entry's generation and blob. */
static void on_redis_entry(struct redis *rd, const redisReply *rep, const char *error, void *arg);

static void on_redis_index(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth *o = arg;

	o->sync_busy = false;
	if (error || !rep || rep->type != REDIS_REPLY_ARRAY)
		return;
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *m = rep->element[i];
		char key[200];
		if (m->type != REDIS_REPLY_STRING ||
		    ts_redis_entry_key(o->prefix, m->str, key, sizeof(key)) < 0)
			continue;
		const char *argv[] = { "HMGET", key, "gen", "blob" };
		redis_command_argv(o->rd, 4, argv, NULL, on_redis_entry, o);
	}
}

static struct ts_entry *decode_hmget(struct oauth *o, const redisReply *rep)
{
	struct ts_entry *e = NULL;
	char err[256];

	if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
	    rep->element[1]->type != REDIS_REPLY_STRING)
		return NULL;
	if (ts_decode_entry(rep->element[1]->str, rep->element[1]->len, o->has_key ? &o->key : NULL,
	                    &e, err, sizeof(err)) < 0) {
		log_warning("token store (redis): %s", err);
		return NULL;
	}
	return e;
}

static void on_redis_entry(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth *o = arg;
	struct ts_entry *e = error ? NULL : decode_hmget(o, rep);

	if (e)
		merge_entry(o, e);
}

static void store_sync(struct oauth *o)
{
	if (!o->on_redis) {
		file_sync_async(o);
		return;
	}
	if (o->sync_busy || !redis_is_up(o->rd))
		return;
	char key[120];
	ts_redis_index_key(o->prefix, key, sizeof(key));
	const char *argv[] = { "SMEMBERS", key };
	if (redis_command_argv(o->rd, 2, argv, NULL, on_redis_index, o) == 0)
		o->sync_busy = true;
}

static void on_redis_state(struct redis *rd, bool up, void *arg)
{
	if (up)
		store_sync(arg);
}

static void on_sync_timer(evutil_socket_t fd, short what, void *arg)
{
	struct oauth *o = arg;
	struct timeval tv = { .tv_sec = SYNC_INTERVAL_MS / 1000,
		              .tv_usec = (SYNC_INTERVAL_MS % 1000) * 1000 };

	store_sync(o);
	evtimer_add(o->sync_timer, &tv);
}

/* A command whose answer changes nothing here (the unlock, the index): failures are logged by
 * the client and retried by the next refresh or sync. */
static void ignore_reply(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
}

/* ---- the refresh chain ---- */

static void arm_in(struct oauth_res *r, int64_t in_ms)
{
	struct timeval tv;

	in_ms = MAX(in_ms, (int64_t)0);
	tv.tv_sec = in_ms / 1000;
	tv.tv_usec = (in_ms % 1000) * 1000;
	evtimer_add(r->timer, &tv);
}

/* Refresh ahead of expiry, with a little jitter so proxies sharing a store do not all try at
 * the same moment (the loser of a race adopts the winner's pair anyway). */
static void arm_ahead(struct oauth_res *r)
{
	if (r->phase != PH_IDLE)
		return;
	if (r->e && (r->e->state != TS_STATE_OK || !r->e->refresh_token[0])) {
		if (r->e->state == TS_STATE_INACTIVE && r->retry_at_ms)
			arm_in(r, r->retry_at_ms - wall_ms());
		return;
	}
	int64_t exp = res_expires(r);
	if (!exp) {
		if (r->e)
			arm_in(r, 0);
		return;
	}
	uint32_t j = 0;
	RAND_bytes((unsigned char *)&j, sizeof(j));
	int64_t jitter = r->o->refresh_ahead_ms > 10
	                         ? (int64_t)(j % (uint32_t)(r->o->refresh_ahead_ms / 10))
	                         : 0;
	int64_t at = exp - r->o->refresh_ahead_ms + jitter;
	if (r->retry_at_ms > at)
		at = r->retry_at_ms;
	arm_in(r, at - wall_ms());
}

static void start_refresh(struct oauth_res *r)
{
	if (r->phase != PH_IDLE)
		return;
	if (r->e && r->e->state == TS_STATE_NEEDS_REINSTALL)
		return;
	r->phase = PH_LOCKING;
	r->start_gen = r->e ? r->e->generation : 0;
	evtimer_del(r->timer);
	step(r);
}

static void on_res_timer(evutil_socket_t fd, short what, void *arg)
{
	struct oauth_res *r = arg;

	if (r->phase == PH_IDLE) {
		/* A minted token nobody asks for is not minted again; while stopping, no token
		 * nobody asks for is refreshed (the next process will). */
		if ((!r->e || r->o->draining) && TAILQ_EMPTY(&r->waiters))
			return;
		start_refresh(r);
	} else {
		step(r); /* a lock or store retry */
	}
}

static void res_unlock(struct oauth_res *r)
{
	if (r->lock_fd >= 0)
		ts_refresh_unlock(r->lock_fd);
	r->lock_fd = -1;
	if (r->redis_locked && r->o->rd) {
		static const char *unlock_lua = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
		                                "return redis.call('DEL', KEYS[1]) end return 0";
		char key[200];
		if (ts_redis_lock_key(r->o->prefix, r->id, key, sizeof(key)) == 0) {
			const char *argv[] = { "EVAL", unlock_lua, "1", key, r->o->owner };
			redis_command_argv(r->o->rd, 5, argv, NULL, ignore_reply, NULL);
		}
	}
	r->redis_locked = false;
}

static void finish(struct oauth_res *r, enum oauth_status st, const char *why)
{
	res_unlock(r);
	r->phase = PH_IDLE;
	if (st == OAUTH_READY) {
		r->forced = false;
		wipe_str(&r->dead_token);
		r->backoff_ms = 0;
		r->retry_at_ms = 0;
		r->last_error[0] = '\0';
	}
	arm_ahead(r);
	answer_waiters(r, st, why);
}

/* A failed attempt: waiters are told (those who can wait longer keep waiting for the retry
 * only if it comes before their deadline: simpler and honest to answer them now). */
static void fail(struct oauth_res *r, enum oauth_status st, const char *why)
{
	r->o->st.refresh_failures++;
	metrics_inc(M_TOKEN_REFRESH_FAILURES);
	if (st == OAUTH_UNAVAILABLE) {
		int64_t lo =
		        r->e && r->e->state == TS_STATE_INACTIVE ? INACTIVE_MIN_MS : BACKOFF_MIN_MS;
		int64_t hi =
		        r->e && r->e->state == TS_STATE_INACTIVE ? INACTIVE_MAX_MS : BACKOFF_MAX_MS;
		r->backoff_ms = r->backoff_ms ? MIN(r->backoff_ms * 2, hi) : lo;
		r->retry_at_ms = wall_ms() + r->backoff_ms;
	}
	util_strlcpy(r->last_error, why, sizeof(r->last_error));
	log_fields(LOG_WARNING, "token refresh failed",
	           (struct log_field[]){ LOG_STR("resource", r->id), LOG_STR("reason", why),
	                                 LOG_NUM("retry_in_ms", r->backoff_ms) },
	           3);
	finish(r, st, why);
}

/* Adopt `e` (read from the store under the lock) when it is newer than ours. */
static void adopt(struct oauth_res *r, struct ts_entry *e)
{
	if (!e)
		return;
	if (!r->e || e->generation > r->e->generation) {
		ts_entry_free(r->e);
		r->e = e;
	} else {
		ts_entry_free(e);
	}
}

static void send_token_call(struct oauth_res *r);

/* Under the lock, with the freshest entry: done if someone else refreshed, else call. */
static void after_read(struct oauth_res *r, bool adopted_newer)
{
	if (!r->e) {
		r->phase = PH_IDLE;
		res_unlock(r);
		answer_waiters(r, OAUTH_NO_TOKEN, "no token installed for this resource");
		return;
	}
	if (r->e->state == TS_STATE_NEEDS_REINSTALL) {
		finish(r, OAUTH_REINSTALL, "the app must be installed again for this resource");
		return;
	}
	if (adopted_newer && token_usable(r, wall_ms())) {
		r->o->st.adopted++;
		log_debug("resource=%s took the tokens another process refreshed", r->id);
		finish(r, OAUTH_READY, NULL);
		return;
	}
	r->base_gen = r->e->generation;
	send_token_call(r);
}

static void on_redis_lock(struct redis *rd, const redisReply *rep, const char *error, void *arg);
static void on_redis_read(struct redis *rd, const redisReply *rep, const char *error, void *arg);
static void on_redis_cas(struct redis *rd, const redisReply *rep, const char *error, void *arg);
static void on_redis_verify(struct redis *rd, const redisReply *rep, const char *error, void *arg);
static void store_pending(struct oauth_res *r);

static void run_read(struct offload_job *j)
{
	struct file_job *fj = (struct file_job *)j;

	fj->rc = ts_file_load(fj->path, file_job_key(fj), &fj->set, NULL, fj->err, sizeof(fj->err));
	if (fj->rc == 0)
		fj->entry = ts_set_take(&fj->set, fj->resource);
}

/* The entry as the store holds it under the refresh lock: someone else's newer pair is taken,
 * else the token call goes. */
static void read_done(struct offload_job *j, bool ran, bool stopping)
{
	struct file_job *fj = (struct file_job *)j;
	struct oauth_res *r = fj->r;

	if (!r || stopping) {
		if (r)
			r->job = NULL;
		file_job_free(fj);
		return;
	}
	r->job = NULL;
	if (!ran || fj->rc < 0) {
		if (ran)
			log_warning("token store: %s", fj->err);
		file_job_free(fj);
		fail(r, OAUTH_UNAVAILABLE, "token store unreadable");
		return;
	}
	struct ts_entry *e = fj->entry;
	fj->entry = NULL;
	file_job_free(fj);
	if (!e) {
		ts_entry_free(r->e);
		r->e = NULL;
		after_read(r, false);
		return;
	}
	bool newer = e->generation > r->start_gen;
	adopt(r, e);
	after_read(r, newer);
}

static void step(struct oauth_res *r)
{
	struct oauth *o = r->o;

	if (r->phase == PH_STORING) {
		store_pending(r);
		return;
	}
	if (r->phase != PH_LOCKING)
		return;
	if (!r->e) {
		/* A minted location token: no store, no lock. */
		send_token_call(r);
		return;
	}
	if (!o->on_redis) {
		if (r->job)
			return; /* the read under the lock is out: read_done goes on */
		int fd = ts_refresh_lock(o->path, r->id);
		if (fd == -EWOULDBLOCK) {
			/* Another process refreshes: its result comes in with a sync (merge_entry
			 * takes it while we wait for the lock), and is taken at the next try. */
			file_sync_async(o);
			if (r->e && r->e->generation > r->start_gen && token_usable(r, wall_ms())) {
				o->st.adopted++;
				finish(r, OAUTH_READY, NULL);
				return;
			}
			arm_in(r, LOCK_RETRY_MS);
			return;
		}
		if (fd < 0) {
			fail(r, OAUTH_UNAVAILABLE, "token store: cannot take the refresh lock");
			return;
		}
		r->lock_fd = fd;
		/* Read again under the lock: only now is the refresh token surely the newest. */
		struct file_job *fj = file_job_new(o, r, run_read, read_done);
		if (!fj) {
			fail(r, OAUTH_UNAVAILABLE, "out of memory");
			return;
		}
		r->job = fj;
		offload_submit(o->ow, &fj->j);
		return;
	}
	char key[200];
	char px[24];
	if (!redis_is_up(o->rd)) {
		fail(r, OAUTH_UNAVAILABLE, "token store (redis) unreachable");
		return;
	}
	ts_redis_lock_key(o->prefix, r->id, key, sizeof(key));
	snprintf(px, sizeof(px), "%d", LOCK_TTL_MS);
	const char *argv[] = { "SET", key, o->owner, "NX", "PX", px };
	if (redis_command_argv(o->rd, 6, argv, NULL, on_redis_lock, r) < 0)
		fail(r, OAUTH_UNAVAILABLE, "token store (redis) unreachable");
}

static void redis_read(struct oauth_res *r)
{
	char key[200];

	ts_redis_entry_key(r->o->prefix, r->id, key, sizeof(key));
	const char *argv[] = { "HMGET", key, "gen", "blob" };
	r->phase = PH_READING;
	if (redis_command_argv(r->o->rd, 4, argv, NULL, on_redis_read, r) < 0)
		fail(r, OAUTH_UNAVAILABLE, "token store (redis) unreachable");
}

static void on_redis_lock(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth_res *r = arg;

	if (error) {
		fail(r, OAUTH_UNAVAILABLE, "token store (redis) failed");
		return;
	}
	if (rep->type == REDIS_REPLY_NIL) {
		/* Busy: read what the holder may have stored, then try again. */
		r->redis_locked = false;
		redis_read(r);
		return;
	}
	r->redis_locked = true;
	redis_read(r);
}

static void on_redis_read(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth_res *r = arg;

	if (error) {
		fail(r, OAUTH_UNAVAILABLE, "token store (redis) failed");
		return;
	}
	struct ts_entry *e = decode_hmget(r->o, rep);
	/* Against the generation the refresh began from: a sync may have brought the winner's
	 * entry in meanwhile, which is then taken, not refreshed again. */
	bool newer = e && e->generation > r->start_gen;
	if (e)
		adopt(r, e);
	if (!r->redis_locked) {
		if (newer && token_usable(r, wall_ms())) {
			r->o->st.adopted++;
			finish(r, OAUTH_READY, NULL);
			return;
		}
		r->phase = PH_LOCKING;
		arm_in(r, LOCK_RETRY_MS);
		return;
	}
	if (!e && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	    rep->element[0]->type == REDIS_REPLY_NIL) {
		/* Removed from the store. */
		ts_entry_free(r->e);
		r->e = NULL;
	}
	after_read(r, newer);
}

/* ---- the token endpoint ---- */

static void form_add(struct evbuffer *b, const char *name, const char *value)
{
	char *enc = evhttp_encode_uri(value);

	evbuffer_add_printf(b, "%s%s=%s", evbuffer_get_length(b) ? "&" : "", name, enc ? enc : "");
	free(enc);
}

static int on_call_head(struct upstream_exchange *x, int status, const char *reason,
                        struct evkeyvalq *headers, void *arg)
{
	int *st = arg;
	*st = status;
	return 0;
}

/* The exchange's callbacks, shared by refreshes (arg: oauth_res) and installs (arg: install):
 * both start with the status and the answer buffer at the same place through these wrappers. */
struct call_ctx {
	int *status;
	struct evbuffer *answer;
	struct evbuffer *body; /* referenced by the exchange until it ends; holds secrets */
	void (*done)(void *owner, enum upstream_result r);
	void *owner;
};

static int call_head(struct upstream_exchange *x, int status, const char *reason,
                     struct evkeyvalq *headers, void *arg)
{
	struct call_ctx *c = arg;
	return on_call_head(x, status, reason, headers, c->status);
}

static void call_body(struct upstream_exchange *x, struct evbuffer *piece, void *arg)
{
	struct call_ctx *c = arg;

	if (evbuffer_get_length(c->answer) + evbuffer_get_length(piece) <= ANSWER_MAX)
		evbuffer_add_buffer(c->answer, piece);
	else
		evbuffer_drain(piece, evbuffer_get_length(piece));
}

static void call_done(struct upstream_exchange *x, enum upstream_result res, const char *detail,
                      void *arg)
{
	struct call_ctx *c = arg;
	void (*done)(void *, enum upstream_result) = c->done;
	void *owner = c->owner;
	size_t n = evbuffer_get_length(c->body);

	OPENSSL_cleanse(evbuffer_pullup(c->body, (ev_ssize_t)n), n);
	evbuffer_free(c->body);
	free(c);
	done(owner, res);
}

static const struct upstream_cbs call_cbs = {
	.on_head = call_head,
	.on_body = call_body,
	.on_done = call_done,
};

static struct upstream_exchange *post(struct oauth *o, const char *target, struct evbuffer *body,
                                      const char *bearer, int *status, struct evbuffer *answer,
                                      void (*done)(void *, enum upstream_result), void *owner)
{
	struct evkeyvalq h;
	struct call_ctx *c = calloc(1, sizeof(*c));
	char auth[TS_TOKEN_MAX + 16];

	if (!c) {
		evbuffer_free(body);
		return NULL;
	}
	*c = (struct call_ctx){
		.status = status, .answer = answer, .body = body, .done = done, .owner = owner
	};
	TAILQ_INIT(&h);
	evhttp_add_header(&h, "Content-Type", "application/x-www-form-urlencoded");
	evhttp_add_header(&h, "Accept", "application/json");
	evhttp_add_header(&h, "Version", "2021-07-28");
	if (bearer) {
		snprintf(auth, sizeof(auth), "Bearer %s", bearer);
		evhttp_add_header(&h, "Authorization", auth);
		OPENSSL_cleanse(auth, sizeof(auth));
	}
	/* Short enough that, should the answer be lost after HighLevel rotated the pair, the
	 * retry still falls in its 30 s grace window and gets the same pair again. */
	struct upstream_request rq = { .method = EVHTTP_REQ_POST,
		                       .target = target,
		                       .headers = &h,
		                       .body = body,
		                       .timeout_ms = TOKEN_CALL_TIMEOUT_MS };
	struct upstream_exchange *x = upstream_send(o->up, &rq, &call_cbs, c);
	/* The headers were copied into the request; wipe the one holding a token. */
	struct evkeyval *kv;
	TAILQ_FOREACH(kv, &h, next)
	if (strcasecmp(kv->key, "Authorization") == 0)
		OPENSSL_cleanse(kv->value, strlen(kv->value));
	evhttp_clear_headers(&h);
	if (!x) {
		size_t n = evbuffer_get_length(body);
		OPENSSL_cleanse(evbuffer_pullup(body, (ev_ssize_t)n), n);
		evbuffer_free(body);
		free(c);
	}
	return x;
}

/* A message of HighLevel's JSON error answer, for logs (never holds a token). */
static void answer_message(struct evbuffer *answer, char *out, size_t len)
{
	size_t n = evbuffer_get_length(answer);
	json_t *j = json_loadb((const char *)evbuffer_pullup(answer, (ev_ssize_t)n), n, 0, NULL);
	const char *m = NULL;

	if (j) {
		json_t *v = json_object_get(j, "message");
		if (json_is_array(v))
			v = json_array_get(v, 0);
		m = json_string_value(v);
		if (!m)
			m = json_string_value(json_object_get(j, "error"));
	}
	snprintf(out, len, "%.120s", m ? m : "no message");
	/* Only printable ASCII reaches a log. */
	for (char *p = out; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
	json_decref(j);
}

static const char *jstr(json_t *j, const char *k)
{
	const char *s = json_string_value(json_object_get(j, k));
	return s ? s : "";
}

/* A token answer into a new entry (generation base + 1). NULL when it is not usable. */
static struct ts_entry *entry_from_answer(struct oauth *o, struct evbuffer *answer,
                                          const struct ts_entry *base, const char *resource)
{
	size_t n = evbuffer_get_length(answer);
	json_t *j = json_loadb((const char *)evbuffer_pullup(answer, (ev_ssize_t)n), n, 0, NULL);
	struct ts_entry *e = NULL;
	char err[160];

	if (!j)
		return NULL;
	const char *at = jstr(j, "access_token"), *rt = jstr(j, "refresh_token");
	json_t *ei = json_object_get(j, "expires_in");
	/* A new refresh token is kept whatever else the answer gets wrong: the one presented is
	 * spent. Without a usable expires_in, the token's exp says, else an hour (a 401 "Invalid
	 * JWT" brings the next refresh sooner if that was too long). */
	if (!*at || !*rt)
		goto out;
	e = base ? ts_entry_dup(base) : ts_entry_new();
	if (!e)
		goto out;
	const char *ut = jstr(j, "userType");
	if (*ut)
		ts_user_type_parse(ut, &e->user_type);
	const char *loc = jstr(j, "locationId"), *comp = jstr(j, "companyId");
	if (resource)
		util_strlcpy(e->resource, resource, sizeof(e->resource));
	else
		util_strlcpy(e->resource, e->user_type == TS_USER_COMPANY ? comp : loc,
		             sizeof(e->resource));
	double secs = json_is_number(ei)   ? json_number_value(ei)
	              : json_is_string(ei) ? strtod(json_string_value(ei), NULL)
	                                   : 0;
	if (!(secs > 0))
		secs = ANSWER_TTL_UNKNOWN_S;
	if (secs < 1)
		secs = 1;
	if (secs > 365 * 86400.0)
		secs = 365 * 86400.0;
	e->access_expires_ms = wall_ms() + (int64_t)(secs * 1000);
	/* The token's own exp is more precise than expires_in (whole seconds): the earlier wins. */
	struct jwt_claims cl;
	if (jwt_read_claims(at, strlen(at), &cl) == JWT_OK && cl.exp > 0 &&
	    (int64_t)(cl.exp * 1000) < e->access_expires_ms)
		e->access_expires_ms = (int64_t)(cl.exp * 1000);
	e->state = TS_STATE_OK;
	e->generation = (base ? base->generation : 0) + 1;
	e->updated_ms = wall_ms();
	if (ts_entry_set_str(&e->access_token, at) < 0 ||
	    ts_entry_set_str(&e->refresh_token, rt) < 0 ||
	    (*comp && ts_entry_set_str(&e->company_id, comp) < 0) ||
	    (*loc && ts_entry_set_str(&e->location_id, loc) < 0) ||
	    ts_entry_set_str(&e->user_id, jstr(j, "userId")) < 0 ||
	    ts_entry_set_str(&e->scope, jstr(j, "scope")) < 0 ||
	    ts_entry_validate(e, err, sizeof(err)) < 0) {
		/* The descriptive fields the store refuses (an id out of its character set, a
		 * scope too long) give way to what the entry had: the pair is what matters. */
		log_fields(LOG_WARNING, "token answer: fields the store refuses are left out",
		           (struct log_field[]){ LOG_STR("resource", e->resource),
		                                 LOG_STR("reason", err) },
		           2);
		if (ts_entry_set_str(&e->company_id, base ? base->company_id : NULL) < 0 ||
		    ts_entry_set_str(&e->location_id, base ? base->location_id : NULL) < 0 ||
		    ts_entry_set_str(&e->user_id, base ? base->user_id : NULL) < 0 ||
		    ts_entry_set_str(&e->scope, base ? base->scope : NULL) < 0 ||
		    ts_entry_validate(e, err, sizeof(err)) < 0) {
			log_fields(LOG_ERROR, "token answer: the new pair cannot be stored",
			           (struct log_field[]){ LOG_STR("resource", e->resource),
			                                 LOG_STR("reason", err) },
			           2);
			ts_entry_free(e);
			e = NULL;
		}
	}
out:
	json_decref(j);
	return e;
}

/* Store r->pending (generation base_gen + 1) under the lock; then hand it out. */
static void stored(struct oauth_res *r)
{
	ts_entry_free(r->e);
	r->e = r->pending;
	r->pending = NULL;
	r->o->st.refreshes++;
	metrics_inc(M_TOKEN_REFRESHES);
	log_fields(LOG_INFO, "token refreshed",
	           (struct log_field[]){
	                   LOG_STR("resource", r->id), LOG_NUM("generation", r->e->generation),
	                   LOG_NUM("expires_in_ms", r->e->access_expires_ms - wall_ms()) },
	           3);
	finish(r, OAUTH_READY, NULL);
}

static void store_failed(struct oauth_res *r, const char *why)
{
	r->o->st.store_failures++;
	metrics_inc(M_TOKEN_STORE_WRITE_FAILURES);
	log_fields(LOG_ERROR,
	           "token store write failed: the new tokens are held in memory, retrying",
	           (struct log_field[]){ LOG_STR("resource", r->id), LOG_STR("reason", why) }, 2);
	util_strlcpy(r->last_error, "the new tokens could not be stored yet",
	             sizeof(r->last_error));
	r->phase = PH_STORING;
	arm_in(r, STORE_RETRY_MS);
}

/*
 * Write entry e to Redis with the compare-and-set of token_store.h: stored only if the entry is
 * still at base_gen and (owner not "") the refresh lock is owner's. The index set learns the
 * resource first. cb gets the script's answer (1 stored, 0 moved, -1 lock lost). Returns 0 when
 * sent, -EINVAL (err set) when e cannot be encoded, -EIO when Redis refused the command.
 */
static int redis_store_entry(struct oauth *o, const struct ts_entry *e, uint64_t base_gen,
                             const char *owner, redis_reply_cb cb, void *arg, char *err,
                             size_t err_len)
{
	char key[200], lock[200], gen[24], ngen[24], idx[120];
	char *blob = NULL;
	size_t blob_len = 0;

	if (ts_encode_entry(e, o->has_key ? &o->key : NULL, &blob, &blob_len, err, err_len) < 0)
		return -EINVAL;
	ts_redis_entry_key(o->prefix, e->resource, key, sizeof(key));
	ts_redis_lock_key(o->prefix, e->resource, lock, sizeof(lock));
	ts_redis_index_key(o->prefix, idx, sizeof(idx));
	snprintf(gen, sizeof(gen), "%llu", (unsigned long long)base_gen);
	snprintf(ngen, sizeof(ngen), "%llu", (unsigned long long)e->generation);
	const char *sadd[] = { "SADD", idx, e->resource };
	redis_command_argv(o->rd, 3, sadd, NULL, ignore_reply, NULL);
	const char *argv[] = { "EVAL", ts_redis_cas_lua, "2", key, lock, gen, blob, owner, ngen };
	size_t lens[] = { 4,
		          strlen(ts_redis_cas_lua),
		          1,
		          strlen(key),
		          strlen(lock),
		          strlen(gen),
		          blob_len,
		          strlen(owner),
		          strlen(ngen) };
	int rc = redis_command_argv(o->rd, 9, argv, lens, cb, arg);
	ts_buf_free(blob, blob_len);
	return rc < 0 ? -EIO : 0;
}

static bool tokens_equal(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

/* pending: the new pair; spent: the refresh token spent for it (NULL: none known); base_gen: the
 * generation the refresh started from; cur: what the store holds (NULL: nothing). */
static enum store_finding judge_entry(const struct ts_entry *pending, const char *spent,
                                      uint64_t base_gen, const struct ts_entry *cur)
{
	if (!cur)
		return FOUND_REMOVED;
	if (tokens_equal(cur->refresh_token, pending->refresh_token))
		return FOUND_OURS;
	if (cur->generation == base_gen || tokens_equal(cur->refresh_token, spent))
		return FOUND_SPENT;
	return FOUND_THEIRS;
}

static enum store_finding judge_store(const struct oauth_res *r, const struct ts_entry *cur)
{
	return judge_entry(r->pending, r->e ? r->e->refresh_token : NULL, r->base_gen, cur);
}

/* The pair of this refresh gives way to what the store holds (FOUND_THEIRS, FOUND_REMOVED). */
static void store_gave_way(struct oauth_res *r, struct ts_entry *cur)
{
	log_fields(LOG_WARNING,
	           cur ? "token store: another pair was written during the refresh (an install "
	                 "or an import): it is kept, this refresh's pair is dropped"
	               : "token store: the resource was removed during the refresh: this "
	                 "refresh's pair is dropped",
	           (struct log_field[]){ LOG_STR("resource", r->id) }, 1);
	ts_entry_free(r->pending);
	r->pending = NULL;
	ts_entry_free(r->e);
	r->e = cur;
	if (!cur) {
		after_read(r, false); /* as a removal read under the lock */
		return;
	}
	r->o->st.adopted++;
	if (r->e->state == TS_STATE_NEEDS_REINSTALL)
		finish(r, OAUTH_REINSTALL, "the app must be installed again for this resource");
	else
		finish(r, token_usable(r, wall_ms()) ? OAUTH_READY : OAUTH_UNAVAILABLE,
		       "the stored token is not usable");
}

/* File store, on the helper thread: write the job's copy of r->pending, judged against what the
 * file holds under its lock. What the judgement changes is applied to r in store_done. */
static int mutate_pending(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	struct file_job *fj = arg;
	struct ts_entry *cur = ts_set_find(set, fj->resource);

	fj->found = judge_entry(fj->pending, fj->spent, fj->base_gen, cur);
	fj->judged = true;
	switch (fj->found) {
	case FOUND_OURS:
		fj->pending->generation = cur->generation;
		return 1;
	case FOUND_REMOVED:
		snprintf(err, err_len, "removed from the store");
		return -ENOENT;
	case FOUND_THEIRS:
		fj->theirs = ts_entry_dup(cur);
		snprintf(err, err_len, "another pair was stored meanwhile");
		return -ESTALE;
	case FOUND_SPENT:
		break;
	}
	fj->base_gen = cur->generation;
	fj->pending->generation = cur->generation + 1;
	return mutate_put(set, fj->pending, err, err_len);
}

static void run_store(struct offload_job *j)
{
	struct file_job *fj = (struct file_job *)j;

	fj->rc = ts_file_update_seen(fj->path, file_job_key(fj), mutate_pending, fj, &fj->seen,
	                             &fj->id, fj->err, sizeof(fj->err));
}

static void store_done(struct offload_job *j, bool ran, bool stopping)
{
	struct file_job *fj = (struct file_job *)j;
	struct oauth_res *r = fj->r;

	if (!r) { /* r went away meanwhile */
		file_job_free(fj);
		return;
	}
	r->job = NULL;
	file_job_took_write(fj, ran);
	if (ran && fj->judged) {
		r->pending->generation = fj->pending->generation;
		if (fj->found == FOUND_SPENT)
			r->base_gen = fj->base_gen;
	}
	if (stopping) {
		/* Going away: only what the store now holds matters (oauth_free's account). */
		if (ran && fj->rc == 0) {
			ts_entry_free(r->e);
			r->e = r->pending;
			r->pending = NULL;
			r->phase = PH_IDLE;
		} else if (ran && fj->judged && (fj->found == FOUND_REMOVED || fj->theirs)) {
			/* Given way (store_gave_way): the store holds what stands. */
			ts_entry_free(r->pending);
			r->pending = NULL;
			ts_entry_free(r->e);
			r->e = fj->theirs;
			fj->theirs = NULL;
			r->phase = PH_IDLE;
		}
		file_job_free(fj);
		return;
	}
	if (!ran || fj->rc < 0) {
		if (ran && fj->judged && (fj->found == FOUND_REMOVED || fj->theirs)) {
			struct ts_entry *theirs = fj->theirs;
			fj->theirs = NULL;
			file_job_free(fj);
			store_gave_way(r, theirs);
			return;
		}
		char why[sizeof(fj->err)];
		util_strlcpy(why, ran ? fj->err : "not written", sizeof(why));
		file_job_free(fj);
		store_failed(r, why);
		return;
	}
	file_job_free(fj);
	stored(r);
}

static void store_pending(struct oauth_res *r)
{
	struct oauth *o = r->o;
	char err[256];

	r->phase = PH_STORING;
	if (!o->on_redis) {
		if (r->job)
			return; /* the write is out: store_done goes on */
		struct file_job *fj = file_job_new(o, r, run_store, store_done);
		if (fj) {
			fj->pending = ts_entry_dup(r->pending);
			fj->base_gen = r->base_gen;
			if (r->e && !(fj->spent = strdup(r->e->refresh_token))) {
				file_job_free(fj);
				fj = NULL;
			}
		}
		if (!fj || !fj->pending) {
			if (fj)
				file_job_free(fj);
			store_failed(r, "out of memory");
			return;
		}
		r->job = fj;
		offload_submit(o->ow, &fj->j);
		return;
	}
	int rc = redis_store_entry(o, r->pending, r->base_gen, o->owner, on_redis_cas, r, err,
	                           sizeof(err));
	if (rc < 0)
		store_failed(r, rc == -EINVAL ? err : "redis unreachable");
}

static void on_redis_cas(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth_res *r = arg;

	if (error || !rep || rep->type != REDIS_REPLY_INTEGER) {
		store_failed(r, error ? error : "unexpected reply");
		return;
	}
	if (rep->integer == 1) {
		stored(r);
		return;
	}
	/* The entry moved or the lock was lost (expired, Redis restarted), or an earlier attempt
	 * landed and its answer did not come: read what is there, then decide. */
	char key[200];
	ts_redis_entry_key(r->o->prefix, r->id, key, sizeof(key));
	const char *argv[] = { "HMGET", key, "gen", "blob" };
	if (redis_command_argv(r->o->rd, 4, argv, NULL, on_redis_verify, r) < 0)
		store_failed(r, "redis unreachable");
}

/* Take the refresh lock again, or keep it (1), unless another process holds it (0). */
static const char relock_lua[] =
        "local v = redis.call('GET', KEYS[1]) "
        "if v == ARGV[1] or not v then "
        "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0";

static void on_redis_relock(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth_res *r = arg;

	if (error || !rep || rep->type != REDIS_REPLY_INTEGER) {
		store_failed(r, error ? error : "unexpected reply");
		return;
	}
	if (rep->integer != 1) {
		store_failed(r, "another process holds the refresh lock");
		return;
	}
	r->redis_locked = true;
	store_pending(r);
}

static void on_redis_verify(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth_res *r = arg;

	if (error || !rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
		store_failed(r, error ? error : "unexpected reply");
		return;
	}
	struct ts_entry *cur = decode_hmget(r->o, rep);
	if (!cur && rep->element[0]->type != REDIS_REPLY_NIL) {
		store_failed(r, "the stored entry cannot be read");
		return;
	}
	switch (judge_store(r, cur)) {
	case FOUND_OURS:
		r->pending->generation = cur->generation;
		ts_entry_free(cur);
		stored(r);
		return;
	case FOUND_REMOVED:
	case FOUND_THEIRS:
		store_gave_way(r, cur);
		return;
	case FOUND_SPENT:
		break;
	}
	/* Ours goes on top, under the lock (taken again if it was lost). */
	r->base_gen = cur->generation;
	r->pending->generation = cur->generation + 1;
	ts_entry_free(cur);
	char key[200], px[24];
	ts_redis_lock_key(r->o->prefix, r->id, key, sizeof(key));
	snprintf(px, sizeof(px), "%d", LOCK_TTL_MS);
	const char *argv[] = { "EVAL", relock_lua, "1", key, r->o->owner, px };
	if (redis_command_argv(r->o->rd, 6, argv, NULL, on_redis_relock, r) < 0)
		store_failed(r, "redis unreachable");
}

/*
 * The file store: the invalid grant's mark (e) is written one generation up by the file's
 * helper. Memory takes that generation only once it is written: not written (the file changed
 * meanwhile, or cannot be written), the entry keeps its generation, so that a reinstall stored
 * one above it by any process is taken. The resource's refresh lock goes with the job and is
 * released once the mark is written, as before: another process must not take the lock, read the
 * entry as still good and spend the dead refresh token on a call. The mark is looked up by name
 * when done: nothing else waits for it.
 */
static void mark_done(struct offload_job *j, bool ran, bool stopping)
{
	struct file_job *fj = (struct file_job *)j;
	struct oauth_res *r = stopping ? NULL : res_find(fj->o, fj->resource);

	file_job_took_write(fj, ran);
	if (ran && fj->rc < 0)
		log_fields(LOG_WARNING, "token store: the mark \"installed again\" was not written",
		           (struct log_field[]){ LOG_STR("resource", fj->resource),
		                                 LOG_STR("reason", fj->err) },
		           2);
	if (ran && fj->rc == 0 && r && r->e && r->e->state == TS_STATE_NEEDS_REINSTALL &&
	    r->e->generation < fj->pending->generation)
		r->e->generation = fj->pending->generation;
	file_job_free(fj);
}

static void mark_reinstall(struct oauth_res *r, const struct ts_entry *e)
{
	struct file_job *fj = file_job_new(r->o, NULL, run_put, mark_done);

	if (!fj)
		return; /* not written: as a failed write */
	util_strlcpy(fj->resource, r->id, sizeof(fj->resource)); /* found by name when done */
	fj->pending = ts_entry_dup(e);
	if (!fj->pending) {
		file_job_free(fj);
		return;
	}
	fj->pending->generation = r->base_gen + 1;
	fj->put = mutate_put;
	fj->lock_fd = r->lock_fd;
	r->lock_fd = -1;
	offload_submit(r->o->ow, &fj->j);
}

static void on_call_done(void *owner, enum upstream_result res)
{
	struct oauth_res *r = owner;
	char msg[160];

	r->x = NULL;
	if (res != UPSTREAM_OK) {
		evbuffer_drain(r->answer, evbuffer_get_length(r->answer));
		snprintf(msg, sizeof(msg), "token endpoint unreachable (%s)",
		         upstream_result_str(res));
		fail(r, OAUTH_UNAVAILABLE, msg);
		return;
	}
	if (!r->e) {
		/* A minted location token. */
		size_t n = evbuffer_get_length(r->answer);
		json_t *j = r->status == 200 || r->status == 201
		                    ? json_loadb((const char *)evbuffer_pullup(r->answer,
		                                                               (ev_ssize_t)n),
		                                 n, 0, NULL)
		                    : NULL;
		const char *at = j ? jstr(j, "access_token") : "";
		json_t *ei = j ? json_object_get(j, "expires_in") : NULL;
		if (*at) {
			wipe_str(&r->minted);
			r->minted = strdup(at);
			double secs = json_is_number(ei) ? json_number_value(ei)
			                                 : LOCATION_TOKEN_TTL / 1000.0;
			r->minted_expires_ms = wall_ms() + (int64_t)(MAX(secs, 1.0) * 1000);
			struct jwt_claims cl;
			if (jwt_read_claims(at, strlen(at), &cl) == JWT_OK && cl.exp > 0 &&
			    (int64_t)(cl.exp * 1000) < r->minted_expires_ms)
				r->minted_expires_ms = (int64_t)(cl.exp * 1000);
			r->o->st.location_tokens++;
			json_decref(j);
			evbuffer_drain(r->answer, n);
			finish(r, r->minted ? OAUTH_READY : OAUTH_UNAVAILABLE, "out of memory");
			return;
		}
		json_decref(j);
		answer_message(r->answer, msg, sizeof(msg));
		evbuffer_drain(r->answer, n);
		char why[220];
		snprintf(why, sizeof(why), "location token refused (%d: %s)", r->status, msg);
		fail(r, OAUTH_UNAVAILABLE, why);
		return;
	}
	if (r->status == 200 || r->status == 201) {
		struct ts_entry *e = entry_from_answer(r->o, r->answer, r->e, r->id);
		evbuffer_drain(r->answer, evbuffer_get_length(r->answer));
		if (!e) {
			fail(r, OAUTH_UNAVAILABLE, "unusable token answer");
			return;
		}
		ts_entry_free(r->pending);
		r->pending = e;
		store_pending(r);
		return;
	}
	answer_message(r->answer, msg, sizeof(msg));
	evbuffer_drain(r->answer, evbuffer_get_length(r->answer));
	char why[220];
	snprintf(why, sizeof(why), "HighLevel answered %d: %s", r->status, msg);
	if (r->status == 400 && strcasestr(msg, "not active")) {
		/* Temporary (a paused subscription): keep the refresh token, retry later. */
		r->e->state = TS_STATE_INACTIVE;
		fail(r, OAUTH_UNAVAILABLE, why);
		r->e->state = TS_STATE_OK;
		return;
	}
	if ((r->status == 400 || r->status == 401) && strcasestr(msg, "invalid grant")) {
		/* The refresh token is dead: only a new install brings the resource back. */
		struct ts_entry *e = ts_entry_dup(r->e);
		if (e) {
			e->state = TS_STATE_NEEDS_REINSTALL;
			e->updated_ms = wall_ms();
			if (!r->o->on_redis)
				mark_reinstall(r, e);
			ts_entry_free(r->e);
			r->e = e;
		}
		r->o->st.reinstall_needed++;
		log_fields(LOG_ERROR, "refresh token refused: the app must be installed again",
		           (struct log_field[]){ LOG_STR("resource", r->id) }, 1);
		reinstall_gauge(r->o);
		r->o->st.refresh_failures++;
		metrics_inc(M_TOKEN_REFRESH_FAILURES);
		util_strlcpy(r->last_error, "refresh token refused (invalid grant)",
		             sizeof(r->last_error));
		finish(r, OAUTH_REINSTALL, "the app must be installed again for this resource");
		return;
	}
	fail(r, OAUTH_UNAVAILABLE, why);
}

static void send_token_call(struct oauth_res *r)
{
	struct oauth *o = r->o;
	struct evbuffer *body = evbuffer_new();

	if (!r->answer)
		r->answer = evbuffer_new();
	if (!body || !r->answer) {
		if (body)
			evbuffer_free(body);
		fail(r, OAUTH_UNAVAILABLE, "out of memory");
		return;
	}
	r->phase = PH_CALLING;
	r->status = 0;
	if (!r->e) {
		struct oauth_res *c = res_find(o, r->company);
		if (!c || !token_usable(c, wall_ms())) {
			evbuffer_free(body);
			/* The company's token first. */
			const char *tok = NULL, *why = NULL;
			r->phase = PH_COMPANY;
			enum oauth_status st;
			st = c ? oauth_token(o, r->company, NULL, 0, &r->company_wait,
			                     company_ready, r, &tok, &why)
			       : OAUTH_NO_TOKEN;
			if (st == OAUTH_READY) {
				r->phase = PH_LOCKING;
				send_token_call(r);
			} else if (st != OAUTH_WAIT) {
				fail(r, st, why ? why : "the company's token is not available");
			}
			return;
		}
		form_add(body, "companyId", r->company);
		form_add(body, "locationId", r->id);
		r->x = post(o, "/oauth/locationToken", body, c->e->access_token, &r->status,
		            r->answer, on_call_done, r);
	} else {
		form_add(body, "client_id", o->client_id);
		form_add(body, "client_secret", o->client_secret);
		form_add(body, "grant_type", "refresh_token");
		form_add(body, "refresh_token", r->e->refresh_token);
		form_add(body, "user_type", ts_user_type_name(r->e->user_type));
		if (*o->redirect_uri)
			form_add(body, "redirect_uri", o->redirect_uri);
		r->x = post(o, "/oauth/token", body, NULL, &r->status, r->answer, on_call_done, r);
	}
	if (!r->x)
		fail(r, OAUTH_UNAVAILABLE, "out of memory");
}

static void company_ready(struct oauth_waiter *w, enum oauth_status st, const char *token,
                          const char *why, void *arg)
{
	struct oauth_res *r = arg;

	if (st != OAUTH_READY) {
		fail(r, st == OAUTH_REINSTALL ? OAUTH_REINSTALL : OAUTH_UNAVAILABLE,
		     why ? why : "the company's token is not available");
		return;
	}
	r->phase = PH_LOCKING;
	send_token_call(r);
}

/* ---- what requests ask ---- */

/* The company a location token is minted from: the hinted one, else the only one installed. */
static struct oauth_res *choose_company(struct oauth *o, const char *hint)
{
	struct oauth_res *r, *only = NULL;
	int n = 0;

	if (hint && *hint) {
		r = res_find(o, hint);
		if (r && r->e && r->e->user_type == TS_USER_COMPANY)
			return r;
	}
	LIST_FOREACH(r, &o->res, link)
	{
		if (r->e && r->e->user_type == TS_USER_COMPANY &&
		    r->e->state != TS_STATE_NEEDS_REINSTALL) {
			only = r;
			n++;
		}
	}
	return n == 1 ? only : NULL;
}

enum oauth_status oauth_check(struct oauth *o, const char *resource, const char *company_hint)
{
	struct oauth_res *r = res_find(o, resource);

	if (r && r->e)
		return r->e->state == TS_STATE_NEEDS_REINSTALL ? OAUTH_REINSTALL : OAUTH_READY;
	if (r || choose_company(o, company_hint))
		return OAUTH_READY;
	/* Another proxy may have installed it since the last poll: oauth_token reads it. */
	return o->on_redis ? OAUTH_WAIT : OAUTH_NO_TOKEN;
}

static void on_fetch(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct oauth_res *r = arg;
	struct oauth *o = r->o;

	if (error) {
		r->phase = PH_IDLE;
		answer_waiters(r, OAUTH_UNAVAILABLE, "token store (redis) failed");
		res_free(r);
		return;
	}
	struct ts_entry *e = decode_hmget(o, rep);
	if (e) {
		r->e = e;
		r->phase = PH_IDLE;
		reinstall_gauge(o);
		if (e->state == TS_STATE_NEEDS_REINSTALL) {
			answer_waiters(r, OAUTH_REINSTALL,
			               "the app must be installed again for this resource");
			return;
		}
		if (token_usable(r, wall_ms())) {
			arm_ahead(r);
			answer_waiters(r, OAUTH_READY, NULL);
			return;
		}
		start_refresh(r);
		return;
	}
	struct oauth_res *c = choose_company(o, NULL);
	if (c) {
		util_strlcpy(r->company, c->id, sizeof(r->company));
		r->phase = PH_LOCKING;
		step(r);
		return;
	}
	r->phase = PH_IDLE;
	answer_waiters(r, OAUTH_NO_TOKEN, "no OAuth token installed for this resource");
	res_free(r);
}

static void start_refresh_later(struct oauth_res *r)
{
	if (r->phase != PH_IDLE)
		return;
	r->phase = PH_LOCKING;
	r->start_gen = r->e ? r->e->generation : 0;
	arm_in(r, 0);
}

enum oauth_status oauth_token(struct oauth *o, const char *resource, const char *company_hint,
                              int64_t deadline_ms, struct oauth_waiter *w, oauth_cb cb, void *arg,
                              const char **token, const char **why)
{
	struct oauth_res *r = res_find(o, resource);

	*token = NULL;
	*why = NULL;
	if (!r) {
		struct oauth_res *c = choose_company(o, company_hint);
		if (!c && o->on_redis && redis_is_up(o->rd) &&
		    ts_resource_valid(resource, strlen(resource))) {
			/* Not seen here yet: read it from Redis before deciding. */
			char key[200];
			r = res_new(o, resource);
			if (!r) {
				*why = "out of memory";
				return OAUTH_UNAVAILABLE;
			}
			ts_redis_entry_key(o->prefix, resource, key, sizeof(key));
			const char *argv[] = { "HMGET", key, "gen", "blob" };
			if (redis_command_argv(o->rd, 4, argv, NULL, on_fetch, r) < 0) {
				res_free(r);
				*why = "token store (redis) unreachable";
				return OAUTH_UNAVAILABLE;
			}
			r->phase = PH_FETCH;
			add_waiter(r, w, deadline_ms, cb, arg);
			return OAUTH_WAIT;
		}
		if (!c) {
			*why = "no OAuth token installed for this resource";
			return OAUTH_NO_TOKEN;
		}
		r = res_new(o, resource);
		if (!r) {
			*why = "out of memory";
			return OAUTH_UNAVAILABLE;
		}
		util_strlcpy(r->company, c->id, sizeof(r->company));
	}
	if (r->e && r->e->state == TS_STATE_NEEDS_REINSTALL) {
		*why = "the app must be installed again for this resource";
		return OAUTH_REINSTALL;
	}
	int64_t now = wall_ms();
	if (r->phase == PH_IDLE && token_usable(r, now)) {
		*token = res_token(r);
		return OAUTH_READY;
	}
	if (r->phase == PH_IDLE && r->retry_at_ms > now) {
		*why = r->last_error[0] ? r->last_error : "token refresh failing, retrying later";
		return OAUTH_UNAVAILABLE;
	}
	add_waiter(r, w, deadline_ms, cb, arg);
	start_refresh_later(r);
	return OAUTH_WAIT;
}

bool oauth_unauthorized(struct oauth *o, const char *resource, const char *token,
                        struct evbuffer *body)
{
	struct oauth_res *r = res_find(o, resource);
	char msg[160];

	if (!r || !token || strcmp(res_token(r), token) != 0)
		return true; /* already replaced: sending again takes the new token */
	/* HighLevel says "Invalid JWT" for a token it refuses; its text for an expired one is
	 * not known, so a 401 on a token within REFUSED_NEAR_EXPIRY_MS of its exp counts too. */
	answer_message(body, msg, sizeof(msg));
	if (!strcasestr(msg, "invalid jwt") &&
	    res_expires(r) - wall_ms() > REFUSED_NEAR_EXPIRY_MS) {
		log_fields(LOG_INFO,
		           "HighLevel answered 401 for another reason than the token: not "
		           "refreshing",
		           (struct log_field[]){ LOG_STR("resource", r->id) }, 1);
		return false;
	}
	if (!r->forced) {
		r->forced = true;
		wipe_str(&r->dead_token);
		r->dead_token = strdup(token);
		log_fields(LOG_INFO, "HighLevel refused an access token: refreshing",
		           (struct log_field[]){ LOG_STR("resource", r->id) }, 1);
	}
	start_refresh_later(r);
	return true;
}

const char *oauth_app(const struct oauth *o)
{
	return o->app;
}

/* ---- install: /oauth/start and /oauth/callback ---- */

static void install_reply(struct install *in, int status, const char *title, const char *text)
{
	if (!in->req)
		return; /* let go of at exit (oauth_close_installs): already answered */
	struct evbuffer *b = evbuffer_new();

	if (b) {
		char *t = evhttp_htmlescape(title), *x = evhttp_htmlescape(text);
		evbuffer_add_printf(
		        b,
		        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ghlproxy: "
		        "%s</title></head><body><h1>%s</h1><p>%s</p></body></html>\n",
		        t ? t : "", t ? t : "", x ? x : "");
		free(t);
		free(x);
	}
	evhttp_add_header(evhttp_request_get_output_headers(in->req), "Content-Type",
	                  "text/html; charset=utf-8");
	evhttp_add_header(evhttp_request_get_output_headers(in->req), "Cache-Control", "no-store");
	evhttp_send_reply(in->req, status, status == 200 ? "OK" : "Error", b);
	if (b)
		evbuffer_free(b);
}

static void install_free(struct install *in)
{
	if (in->x)
		upstream_cancel(in->x);
	if (in->answer)
		evbuffer_free(in->answer);
	LIST_REMOVE(in, link);
	free(in);
}

static int mutate_install(struct ts_set *set, void *arg, char *err, size_t err_len)
{
	struct ts_entry *want = arg;
	struct ts_entry *cur = ts_set_find(set, want->resource);

	want->generation = (cur ? cur->generation : 0) + 1;
	return mutate_put(set, want, err, err_len);
}

static void installed(struct oauth *o, struct ts_entry *e)
{
	struct oauth_res *r = res_find(o, e->resource);

	if (!r)
		r = res_new(o, e->resource);
	if (!r) {
		ts_entry_free(e);
		return;
	}
	if (r->phase != PH_IDLE) {
		/* A refresh of the old install is running: it will find the new generation. */
		dropped_mid_refresh(o, r);
		ts_entry_free(e);
		return;
	}
	ts_entry_free(r->e);
	r->e = e;
	wipe_str(&r->minted);
	r->retry_at_ms = 0;
	r->backoff_ms = 0;
	reinstall_gauge(o);
	arm_ahead(r);
	answer_waiters(r, OAUTH_READY, NULL);
}

/* The install's pair is in the store (e, taken): use it (not when the proxy is going away: the
 * next start reads it), and tell the operator. */
static void install_stored(struct install *in, struct ts_entry *e, bool use)
{
	char text[200];

	snprintf(text, sizeof(text), "%s %s is installed: ghlproxy holds its tokens.",
	         ts_user_type_name(e->user_type), e->resource);
	log_fields(LOG_INFO, "installed",
	           (struct log_field[]){ LOG_STR("resource", e->resource),
	                                 LOG_STR("user_type", ts_user_type_name(e->user_type)) },
	           2);
	if (use)
		installed(in->o, e);
	else
		ts_entry_free(e);
	install_reply(in, 200, "Installed", text);
	install_free(in);
}

static void install_not_stored(struct install *in, const char *why)
{
	log_fields(LOG_ERROR, "install: the token store cannot be written",
	           (struct log_field[]){ LOG_STR("reason", why) }, 1);
	install_reply(in, 503, "Install failed",
	              "the token store cannot be written: nothing was installed, try again");
	install_free(in);
}

/* The file store: the install's pair is written by the file's helper (o->ow), in turn with the
 * refreshes' reads and writes, so that a lock held elsewhere holds up the install, not the loop.
 * A sync queued before it read the file before the write and is done before it: neither it nor
 * memory has the new pair yet, so the sync's merge cannot take it for removed. */
static void install_done(struct offload_job *j, bool ran, bool stopping)
{
	struct file_job *fj = (struct file_job *)j;
	struct install *in = fj->in;
	struct ts_entry *e = fj->pending;

	fj->pending = NULL;
	file_job_took_write(fj, ran);
	if (ran && fj->rc == 0) {
		file_job_free(fj);
		install_stored(in, e, !stopping);
		return;
	}
	install_not_stored(in, ran ? fj->err : "the proxy is stopping");
	ts_entry_free(e);
	file_job_free(fj);
}

struct install_cas {
	struct install *in;
	struct ts_entry *e;
};

static void on_install_cas(struct redis *rd, const redisReply *rep, const char *error, void *arg);

static void install_store_redis(struct install *in, struct ts_entry *e, uint64_t cur_gen)
{
	struct oauth *o = in->o;
	char err[200];
	struct install_cas *ic = calloc(1, sizeof(*ic));

	e->generation = cur_gen + 1;
	int rc = ic ? redis_store_entry(o, e, cur_gen, "", on_install_cas, ic, err, sizeof(err))
	            : -ENOMEM;
	if (rc < 0) {
		free(ic);
		ts_entry_free(e);
		if (rc == -EIO)
			install_reply(in, 503, "Install failed",
			              "the token store (Redis) is unreachable");
		else
			install_reply(in, 500, "Install failed", "the tokens could not be encoded");
		install_free(in);
		return;
	}
	ic->in = in;
	ic->e = e;
}

static void on_install_gen(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct install_cas *ic = arg;
	struct install *in = ic->in;
	struct ts_entry *e = ic->e;

	free(ic);
	if (error) {
		ts_entry_free(e);
		install_reply(in, 503, "Install failed", "the token store (Redis) is unreachable");
		install_free(in);
		return;
	}
	uint64_t gen = rep->type == REDIS_REPLY_STRING ? strtoull(rep->str, NULL, 10) : 0;
	install_store_redis(in, e, gen);
}

static void on_install_cas(struct redis *rd, const redisReply *rep, const char *error, void *arg)
{
	struct install_cas *ic = arg;
	struct install *in = ic->in;
	struct ts_entry *e = ic->e;

	free(ic);
	if (error || !rep || rep->type != REDIS_REPLY_INTEGER || rep->integer != 1) {
		ts_entry_free(e);
		install_reply(in, 503, "Install failed",
		              "the token store (Redis) refused the write; try the install again");
		install_free(in);
		return;
	}
	install_stored(in, e, true);
}

static void on_install_done(void *owner, enum upstream_result res)
{
	struct install *in = owner;
	struct oauth *o = in->o;
	char msg[160], text[300];

	in->x = NULL;
	if (res != UPSTREAM_OK || (in->status != 200 && in->status != 201)) {
		if (res == UPSTREAM_OK)
			answer_message(in->answer, msg, sizeof(msg));
		else
			snprintf(msg, sizeof(msg), "token endpoint unreachable (%s)",
			         upstream_result_str(res));
		snprintf(text, sizeof(text), "HighLevel did not accept the install code: %s", msg);
		log_fields(LOG_WARNING, "install failed",
		           (struct log_field[]){ LOG_NUM("status", in->status),
		                                 LOG_STR("reason", msg) },
		           2);
		install_reply(in, 502, "Install failed", text);
		install_free(in);
		return;
	}
	struct ts_entry *e = entry_from_answer(o, in->answer, NULL, NULL);
	if (!e || !ts_resource_valid(e->resource, strlen(e->resource))) {
		ts_entry_free(e);
		install_reply(in, 502, "Install failed", "HighLevel's answer names no resource");
		install_free(in);
		return;
	}
	if (o->on_redis) {
		char key[200];
		struct install_cas *ic = calloc(1, sizeof(*ic));
		ts_redis_entry_key(o->prefix, e->resource, key, sizeof(key));
		const char *argv[] = { "HGET", key, "gen" };
		if (!ic) {
			ts_entry_free(e);
			install_reply(in, 500, "Install failed", "out of memory");
			install_free(in);
			return;
		}
		ic->in = in;
		ic->e = e;
		if (redis_command_argv(o->rd, 3, argv, NULL, on_install_gen, ic) < 0) {
			free(ic);
			ts_entry_free(e);
			install_reply(in, 503, "Install failed",
			              "the token store (Redis) is unreachable");
			install_free(in);
		}
		return;
	}
	struct file_job *fj = file_job_new(o, NULL, run_put, install_done);
	if (!fj) {
		ts_entry_free(e);
		install_not_stored(in, "out of memory");
		return;
	}
	fj->in = in;
	fj->pending = e;
	fj->put = mutate_install;
	offload_submit(o->ow, &fj->j);
}

static void oauth_start(struct oauth *o, struct evhttp_request *req)
{
	struct evbuffer *u = evbuffer_new();

	if (!u) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	evbuffer_add_printf(u, "%s%c", o->authorize_url, strchr(o->authorize_url, '?') ? '&' : '?');
	struct evbuffer *q = evbuffer_new();
	form_add(q, "response_type", "code");
	form_add(q, "redirect_uri", o->redirect_uri);
	form_add(q, "client_id", o->client_id);
	if (*o->scopes)
		form_add(q, "scope", o->scopes);
	evbuffer_add_buffer(u, q);
	evbuffer_free(q);
	evbuffer_add(u, "", 1);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Location",
	                  (const char *)evbuffer_pullup(u, -1));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	evhttp_send_reply(req, 302, "Found", NULL);
	evbuffer_free(u);
}

void oauth_admin_start(struct evhttp_request *req, void *arg)
{
	oauth_admin_handle(arg, req, "/oauth/start");
}

void oauth_admin_callback(struct evhttp_request *req, void *arg)
{
	oauth_admin_handle(arg, req, "/oauth/callback");
}

bool oauth_admin_handle(struct oauth *o, struct evhttp_request *req, const char *path)
{
	if (strcmp(path, "/oauth/start") == 0) {
		if (!*o->redirect_uri) {
			evhttp_send_error(req, 503, "oauth.redirect_uri is not configured");
			return true;
		}
		oauth_start(o, req);
		return true;
	}
	if (strcmp(path, "/oauth/callback") != 0)
		return false;

	struct evkeyvalq q;
	const char *uri = evhttp_request_get_uri(req), *qs = strchr(uri, '?');
	struct install *in = calloc(1, sizeof(*in));
	TAILQ_INIT(&q);
	if (!in) {
		evhttp_send_error(req, 500, "out of memory");
		return true;
	}
	in->o = o;
	in->req = req;
	LIST_INSERT_HEAD(&o->installs, in, link);
	if (!qs || evhttp_parse_query_str(qs + 1, &q) < 0) {
		install_reply(in, 400, "Install failed", "the callback carries no code");
		install_free(in);
		return true;
	}
	const char *code = evhttp_find_header(&q, "code");
	const char *ut = evhttp_find_header(&q, "user_type");
	if (!code || !*code || strlen(code) > 4096) {
		const char *e = evhttp_find_header(&q, "error");
		install_reply(in, 400, "Install failed",
		              e ? "HighLevel sent an error instead of a code"
		                : "the callback carries no code");
		evhttp_clear_headers(&q);
		install_free(in);
		return true;
	}
	struct evbuffer *body = evbuffer_new();
	in->answer = evbuffer_new();
	if (!body || !in->answer) {
		if (body)
			evbuffer_free(body);
		evhttp_clear_headers(&q);
		install_reply(in, 500, "Install failed", "out of memory");
		install_free(in);
		return true;
	}
	form_add(body, "client_id", o->client_id);
	form_add(body, "client_secret", o->client_secret);
	form_add(body, "grant_type", "authorization_code");
	form_add(body, "code", code);
	if (ut && (strcmp(ut, "Location") == 0 || strcmp(ut, "Company") == 0))
		form_add(body, "user_type", ut);
	if (*o->redirect_uri)
		form_add(body, "redirect_uri", o->redirect_uri);
	evhttp_clear_headers(&q);
	in->x = post(o, "/oauth/token", body, NULL, &in->status, in->answer, on_install_done, in);
	if (!in->x) {
		install_reply(in, 500, "Install failed", "out of memory");
		install_free(in);
	}
	return true;
}

/* ---- status, readiness, stats ---- */

static const char *phase_name(enum res_phase p)
{
	switch (p) {
	case PH_IDLE:
		return "idle";
	case PH_LOCKING:
	case PH_READING:
	case PH_COMPANY:
		return "refreshing";
	case PH_FETCH:
		return "loading";
	case PH_CALLING:
		return "refreshing";
	case PH_STORING:
		return "storing";
	}
	return "?";
}

void oauth_status_json(void *arg, json_t *arr)
{
	struct oauth *o = arg;
	struct oauth_res *r;

	LIST_FOREACH(r, &o->res, link)
	{
		json_t *j = json_object();
		if (!j)
			return;
		int64_t exp = res_expires(r);
		const char *state = r->e ? ts_state_name(r->e->state) : "ok";
		if (r->phase != PH_IDLE && (!r->e || r->e->state == TS_STATE_OK))
			state = phase_name(r->phase);
		json_object_set_new(j, "resource", json_string(r->id));
		json_object_set_new(
		        j, "user_type",
		        json_string(r->e ? ts_user_type_name(r->e->user_type) : "Location"));
		json_object_set_new(j, "app", json_string(o->app));
		json_object_set_new(j, "state", json_string(state));
		json_object_set_new(j, "access_expires_ms", exp ? json_integer(exp) : json_null());
		if (exp && (!r->e || r->e->state == TS_STATE_OK))
			json_object_set_new(j, "refresh_due_ms",
			                    json_integer(r->e ? exp - o->refresh_ahead_ms : exp));
		if (r->e) {
			json_object_set_new(j, "generation",
			                    json_integer((json_int_t)r->e->generation));
			json_object_set_new(j, "updated_ms", json_integer(r->e->updated_ms));
			if (r->e->company_id[0])
				json_object_set_new(j, "company_id", json_string(r->e->company_id));
		} else {
			json_object_set_new(j, "company_id", json_string(r->company));
		}
		if (r->last_error[0])
			json_object_set_new(j, "last_error", json_string(r->last_error));
		json_array_append_new(arr, j);
	}
}

bool oauth_ready(void *arg, char *why, size_t why_len)
{
	struct oauth *o = arg;
	struct oauth_res *r;

	LIST_FOREACH(r, &o->res, link)
	{
		if (r->phase == PH_STORING) {
			snprintf(why, why_len, "token store: new tokens of %s are not stored yet",
			         r->id);
			return false;
		}
	}
	if (!o->on_redis) {
		char *dir = strdup(o->path);
		char *slash = dir ? strrchr(dir, '/') : NULL;
		if (slash)
			*(slash == dir ? slash + 1 : slash) = '\0';
		bool ok = dir && access(slash ? dir : ".", W_OK) == 0;
		free(dir);
		if (!ok) {
			snprintf(why, why_len, "token store: its directory is not writable");
			return false;
		}
	} else if (!redis_is_up(o->rd)) {
		snprintf(why, why_len, "token store: redis unreachable");
		return false;
	}
	return true;
}

void oauth_get_stats(const struct oauth *o, struct oauth_stats *st)
{
	*st = o->st;
}

/* ---- life ---- */

static int read_settings(struct oauth *o, const struct config *cfg, char *err, size_t err_len)
{
	char *secret = NULL;
	struct ts_key key;
	bool has_key = false;

	if (credentials_read_file(cfg->oauth.client_secret_file, 4096, &secret, err, err_len) < 0)
		return -EINVAL;
	if (cfg->store.key_file && *cfg->store.key_file) {
		char path[4096];
		credentials_resolve(cfg->store.key_file, path, sizeof(path));
		if (ts_key_load(path, &key, err, err_len) < 0) {
			util_wipe_free(secret, strlen(secret));
			return -EINVAL;
		}
		has_key = true;
	}
	wipe_str(&o->client_secret);
	o->client_secret = secret;
	ts_key_wipe(&o->key);
	if (has_key)
		o->key = key;
	o->has_key = has_key;
	ts_key_wipe(&key);
	free(o->client_id);
	free(o->redirect_uri);
	free(o->scopes);
	free(o->authorize_url);
	o->client_id = strdup(cfg->oauth.client_id);
	o->redirect_uri = strdup(cfg->oauth.redirect_uri ? cfg->oauth.redirect_uri : "");
	o->scopes = strdup(cfg->oauth.scopes ? cfg->oauth.scopes : "");
	o->authorize_url = strdup(cfg->oauth.authorize_url);
	if (!o->client_id || !o->redirect_uri || !o->scopes || !o->authorize_url) {
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	size_t n = strcspn(o->client_id, "-");
	snprintf(o->app, sizeof(o->app), "%.*s", (int)MIN(n, (size_t)24), o->client_id);
	o->refresh_ahead_ms = cfg->oauth.refresh_ahead_ms;
	return 0;
}

struct oauth *oauth_new(struct event_base *base, const struct config *cfg, struct upstream *up,
                        char *err, size_t err_len)
{
	struct oauth *o = calloc(1, sizeof(*o));

	if (!o) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	o->base = base;
	o->up = up;
	LIST_INIT(&o->res);
	LIST_INIT(&o->installs);
	if (read_settings(o, cfg, err, err_len) < 0)
		goto fail;
	unsigned char rnd[12];
	RAND_bytes(rnd, sizeof(rnd));
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(o->owner + 2 * i, 3, "%02x", rnd[i]);
	o->on_redis = cfg->limits.backend == CONFIG_BACKEND_REDIS;
	if (o->on_redis) {
		char *password = NULL;
		if (cfg->redis.password_file && *cfg->redis.password_file &&
		    credentials_read_file(cfg->redis.password_file, 4096, &password, err, err_len) <
		            0)
			goto fail;
		struct redis_settings rs = {
			.url = cfg->redis.url,
			.password = password,
			.connect_timeout_ms = cfg->redis.connect_timeout_ms,
			.command_timeout_ms = cfg->redis.command_timeout_ms,
		};
		o->rd = redis_new(base, &rs, err, err_len);
		if (password)
			util_wipe_free(password, strlen(password));
		if (!o->rd)
			goto fail;
		redis_on_state(o->rd, on_redis_state, o);
		snprintf(o->prefix, sizeof(o->prefix), "%s", cfg->redis.key_prefix);
	} else {
		o->path = ts_default_path(cfg);
		if (!o->path) {
			snprintf(err, err_len, "out of memory");
			goto fail;
		}
		if (file_sync(o) < 0) {
			snprintf(err, err_len, "token store %s cannot be read (see the log)",
			         o->path);
			goto fail;
		}
		o->ow = offload_new(base, err, err_len);
		if (!o->ow)
			goto fail;
	}
	o->sync_timer = evtimer_new(base, on_sync_timer, o);
	if (!o->sync_timer) {
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	on_sync_timer(-1, 0, o);
	return o;
fail:
	oauth_free(o);
	return NULL;
}

int oauth_reload(struct oauth *o, const struct config *cfg, char *err, size_t err_len)
{
	return read_settings(o, cfg, err, err_len);
}

void oauth_drain(struct oauth *o)
{
	if (o)
		o->draining = true;
}

/* Has HighLevel maybe rotated r's pair, with the new one not stored yet? */
static bool res_unsettled(const struct oauth_res *r)
{
	return r->e && (r->phase == PH_CALLING || r->phase == PH_STORING);
}

uint32_t oauth_unsettled(const struct oauth *o)
{
	const struct oauth_res *r;
	const struct install *in;
	uint32_t n = 0;

	if (!o)
		return 0;
	LIST_FOREACH(r, &o->res, link)
	n += res_unsettled(r);
	/* An install under way: its code is spent at HighLevel, and its pair is the only one. */
	LIST_FOREACH(in, &o->installs, link)
	n++;
	return n;
}

void oauth_close_installs(struct oauth *o)
{
	struct install *in;

	if (!o)
		return;
	LIST_FOREACH(in, &o->installs, link)
	{
		install_reply(in, 503, "Install not confirmed",
		              "the proxy stopped before this install was confirmed: once it runs "
		              "again, look for the resource in /status, or install again");
		in->req = NULL;
	}
}

void oauth_free(struct oauth *o)
{
	struct oauth_res *r;
	struct install *in;

	if (!o)
		return;
	/* The file's helper first: a write it finishes still counts as stored below, and every
	 * job's done finds the resource it points to. */
	if (offload_free(o->ow, STORE_EXIT_WAIT_MS) > 0)
		log_error("token store: a read or write of the file was still running at exit");
	o->ow = NULL;
	LIST_FOREACH(r, &o->res, link)
	{
		if (res_unsettled(r))
			log_fields(
			        LOG_ERROR,
			        r->phase == PH_STORING
			                ? "exiting with new tokens not stored: unless the store "
			                  "is written before, this resource must be installed again"
			                : "exiting with a token call out: its answer, a new pair, "
			                  "is "
			                  "lost; another refresh within 30 s gets it again",
			        (struct log_field[]){ LOG_STR("resource", r->id) }, 1);
	}
	/* Redis first: its pending callbacks ("shutting down") still find what they point to. */
	if (o->rd) {
		struct redis *rd = o->rd;
		redis_free(rd);
		o->rd = NULL;
	}
	/* Each *_free unlinks its entry, so LIST_FIRST moves on. clang-analyzer does not see
	 * LIST_REMOVE write the head through le_prev, and reports the freed entry as read again. */
	while ((in = LIST_FIRST(&o->installs))) {
		/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
		install_reply(in, 503, "Shutting down", "the proxy is stopping");
		install_free(in);
	}
	while ((r = LIST_FIRST(&o->res)))
		res_free(r); /* NOLINT(clang-analyzer-unix.Malloc) */
	if (o->sync_timer)
		event_free(o->sync_timer);
	wipe_str(&o->client_secret);
	ts_key_wipe(&o->key);
	free(o->client_id);
	free(o->redirect_uri);
	free(o->scopes);
	free(o->authorize_url);
	free(o->path);
	free(o);
}
