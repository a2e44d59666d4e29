/*
 * oauth.h: the OAuth tokens of every installed location and company (inject mode), kept alive.
 *
 * Data enters from the token store (token_store.h: a file, or Redis when limits.backend =
 * redis), from HighLevel's token endpoint (refreshes, install codes, location tokens minted from
 * a company token) and from requests (which ask for a resource's access token, and report a 401
 * on one). It leaves as access tokens handed to requests, entries written back to the store,
 * /status rows and metrics.
 *
 * Invariants (highlevel-api.md: refresh tokens are single-use; losing the newest loses the
 * installation):
 *  - one refresh per resource at a time: in this process (a resource is either idle or
 *    refreshing, and requests wait for the refresh in flight), and across processes (the file
 *    store's per-resource flock, or a Redis lock with an expiry plus a generation check on
 *    write). Before spending a refresh token the entry is read again from the store: a process
 *    that lost the race takes the winner's tokens instead of spending a dead refresh token;
 *  - a new pair is stored durably before its access token is handed out. If storing fails the
 *    pair stays in memory, storing is retried, and the failure is logged, counted and shown on
 *    /readyz; requests wait (within their deadlines) meanwhile;
 *  - tokens never reach a log line, /status or /metrics.
 */
#ifndef GHLPROXY_OAUTH_H
#define GHLPROXY_OAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event_struct.h>
#include <jansson.h>
#include <sys/queue.h>

struct config;
struct event_base;
struct evbuffer;
struct evhttp_request;
struct oauth;
struct oauth_res;
struct upstream;

enum oauth_status {
	OAUTH_READY = 0,   /* a live access token is available now */
	OAUTH_WAIT,        /* being refreshed or fetched: the waiter's callback will say */
	OAUTH_NO_TOKEN,    /* nothing installed for this resource */
	OAUTH_REINSTALL,   /* the refresh token was refused: the app must be installed again */
	OAUTH_UNAVAILABLE, /* temporarily (location not active, HighLevel or the store failing) */
};

struct oauth_waiter;
/* token: the access token (valid during the call) when status is OAUTH_READY. */
typedef void (*oauth_cb)(struct oauth_waiter *w, enum oauth_status status, const char *token,
                         const char *why, void *arg);

/* Owned by the caller (embedded in its request); opaque inside. */
struct oauth_waiter {
	TAILQ_ENTRY(oauth_waiter) link;
	struct oauth_res *res;
	struct event timer; /* the deadline */
	bool queued;
	bool timer_set;
	oauth_cb cb;
	void *arg;
};

/* NULL with a reason (no secret) when the app's secret, the store key or the store cannot be
 * read. up is the API 2.0 upstream (the token endpoint lives there). */
struct oauth *oauth_new(struct event_base *base, const struct config *cfg, struct upstream *up,
                        char *err, size_t err_len);
void oauth_free(struct oauth *o);
/* A reload: the client secret and store key files again; refresh_ahead. -errno with a reason. */
int oauth_reload(struct oauth *o, const struct config *cfg, char *err, size_t err_len);

/*
 * The process is stopping: no refresh starts any more ahead of expiry (one a request waits for
 * still does). Returns how many refreshes may hold a pair HighLevel has already rotated (the
 * token call is out, or its answer is not stored yet), and installs under way (the code is spent,
 * the pair not stored yet): the drain waits for them to reach 0, since exiting then would lose
 * the only live refresh token of those resources.
 */
void oauth_drain(struct oauth *o);
uint32_t oauth_unsettled(const struct oauth *o);
/* At exit, before the admin server's connections are freed: answer the installs still under way
 * (503) and let go of their requests. Their store writes may still finish in oauth_free. */
void oauth_close_installs(struct oauth *o);

/* The app id (24 hex of oauth.client_id) requests are keyed under. */
const char *oauth_app(const struct oauth *o);

/*
 * What a request for `resource` can expect now, without waiting: OAUTH_READY when a token
 * exists or can be made (refresh, or minted from a company token), else why not. company_hint
 * (may be NULL): the company to mint a location token from when several are installed.
 */
enum oauth_status oauth_check(struct oauth *o, const char *resource, const char *company_hint);

/*
 * The access token for resource: OAUTH_READY with *token set (valid until control returns to
 * the loop), OAUTH_WAIT (w's callback runs exactly once later, unless oauth_cancel), or the
 * reason there is none. deadline_ms: monotonic ms after which the waiter is answered
 * OAUTH_UNAVAILABLE.
 */
enum oauth_status oauth_token(struct oauth *o, const char *resource, const char *company_hint,
                              int64_t deadline_ms, struct oauth_waiter *w, oauth_cb cb, void *arg,
                              const char **token, const char **why);
void oauth_cancel(struct oauth_waiter *w);

/*
 * HighLevel answered 401, with `body`, to a request that carried `token` for resource. A 401
 * about the token (its message is "Invalid JWT", or the token is at or near its expiry) starts
 * a refresh, once, and returns true: the request may be sent again with the new token. Any
 * other 401 (a missing or invalid Version header, a scope the app lacks) returns false: a
 * refresh would spend a single-use refresh token and change nothing.
 */
bool oauth_unauthorized(struct oauth *o, const char *resource, const char *token,
                        struct evbuffer *body);

/* Admin endpoints: /oauth/start (redirect to the authorize page) and /oauth/callback (exchange
 * the install code, store the pair, say which resource was installed). True when handled. */
bool oauth_admin_handle(struct oauth *o, struct evhttp_request *req, const char *path);

/* The same as admin routes (admin_route_fn; arg: the struct oauth). */
void oauth_admin_start(struct evhttp_request *req, void *arg);
void oauth_admin_callback(struct evhttp_request *req, void *arg);

/* /status (an admin_token_status_fn; arg: the struct oauth): one object per resource, no
 * secret, appended to arr. */
void oauth_status_json(void *arg, json_t *arr);

/* /readyz: false with the reason while a new pair waits to be stored. */
bool oauth_ready(void *o, char *why, size_t why_len);

struct oauth_stats {
	uint64_t refreshes, refresh_failures, store_failures, reinstall_needed, location_tokens;
	uint64_t adopted; /* refreshes avoided: another process had refreshed */
};
void oauth_get_stats(const struct oauth *o, struct oauth_stats *st);

#endif
