/*
 * redis.h: one asynchronous connection to the shared Redis (hiredis 0.14 on the proxy's libevent
 * loop), kept up by itself, for limiter_redis.c.
 *
 * Data enters as commands (argv vectors, or EVALSHA of a script) and leaves as exactly one
 * callback per accepted command: the reply, the server's error, or one of our own errors. A
 * command is accepted (0) or refused (< 0, and then its callback never runs). The callback of an
 * accepted command always runs from the event loop, never inside the call that sent it, and never
 * after redis_free() returns. Errors, in `error` (reply NULL unless said):
 *   "timeout"        no answer within command_timeout_ms; the connection is then dropped
 *   "disconnected"   the connection was lost (or dropped for another command's timeout)
 *   "not connected"  sent while the connection is down or still being set up (never queued:
 *                    the caller falls back to its local limits)
 *   "shutting down"  redis_free() ran with the command pending
 *   server text      an error reply ("ERR ...", "WRONGTYPE ..."); reply is given too
 *
 * The connection: resolve (a host name is looked up in a helper thread, one at a time, so the
 * loop never waits for DNS; an IP address or a unix socket needs none), connect (TCP keepalive
 * on), AUTH if a password is set, SELECT if the database is not 0, PING if neither (so "up"
 * always means a Redis answered), then "up". connect_timeout_ms covers all of that;
 * command_timeout_ms each command from its send. hiredis 0.14 cannot cancel one command, so a
 * timeout drops the whole connection. Any failure, or a lost connection, means "down" and a new
 * attempt after a backoff (100 ms doubling to 5 s, with jitter), reset once up. redis_on_state
 * reports the changes.
 *
 * Secrets: the password is sent with AUTH and is never logged, not even a prefix of it.
 */
#ifndef GHLPROXY_REDIS_H
#define GHLPROXY_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct event_base;
struct redis;

#define REDIS_HOST_MAX_LEN 255

/* Where a redis.url points. */
struct redis_target {
	bool is_unix;
	bool is_literal;                   /* host is an IP address: no name lookup */
	char path[108];                    /* sun_path */
	char host[REDIS_HOST_MAX_LEN + 1]; /* without the brackets of an IPv6 address */
	int port;
	int db;
	char where[REDIS_HOST_MAX_LEN + 16]; /* for logs: "unix:/path" or "host:port" */
};

/* redis://host[:port][/db] or unix:///path[?db=N] into t. 0, or -EINVAL with why set (the URL
 * itself is never copied into why). Shared by the async client and `ghlproxy token`. */
int redis_parse_url(const char *url, struct redis_target *t, const char **why);

struct redis_settings {
	const char *url;      /* redis://host[:port][/db], unix:///path[?db=N] (config validated) */
	const char *password; /* NULL or "": no AUTH (the caller read redis.password_file) */
	uint32_t connect_timeout_ms, command_timeout_ms; /* 0: the default, 1000 ms */
};

/*
 * The completion of one command. reply is owned by hiredis and valid only during the call (copy
 * what you keep). reply NULL and error set: the command failed (see the list above); error set
 * with a reply: the server's error reply (reply->type == REDIS_REPLY_ERROR, error == reply->str).
 * The callback may call any function here, redis_free() included.
 */
typedef void (*redis_reply_cb)(struct redis *r, const redisReply *reply, const char *error,
                               void *arg);

/*
 * Starts connecting (returns at once, never blocks on the network or DNS). The settings are
 * copied. NULL on a bad URL or no memory, with the reason in err (never the password; the URL
 * is not echoed either, it is the caller's to log).
 */
struct redis *redis_new(struct event_base *base, const struct redis_settings *s, char *err,
                        size_t err_len);

/*
 * Every pending callback runs here, before it returns, with "shutting down" (so the caller's
 * pending work ends in one place); commands sent from those callbacks are refused (-ESHUTDOWN).
 * May be called from inside any callback of r. NULL is fine.
 */
void redis_free(struct redis *r);

/* Connected, authenticated, database selected: commands are sent now. */
bool redis_is_up(const struct redis *r);

/*
 * cb(r, up, arg) on every change of redis_is_up(), from the event loop (none at redis_new: the
 * state starts down; none from redis_free). When a connection is lost, cb(down) runs before the
 * callbacks of the commands that were in flight. One callback; a second call replaces it, NULL
 * removes it.
 */
void redis_on_state(struct redis *r, void (*cb)(struct redis *r, bool up, void *arg), void *arg);

/*
 * Send one command (argv[0] is its name; argvlen NULL: the strings are NUL-terminated). Returns
 * 0, after which cb runs exactly once, or -EINVAL (argc < 1, NULL argv or cb; pub/sub and
 * MONITOR, whose replies do not pair with commands), -ESHUTDOWN (in redis_free), -ENOMEM; then
 * cb never runs. The arguments are copied before it returns.
 */
int redis_command_argv(struct redis *r, int argc, const char **argv, const size_t *argvlen,
                       redis_reply_cb cb, void *arg);

/* A Lua script run by its SHA1. source must outlive every redis_evalsha() using it. */
struct redis_script {
	const char *source;
	char sha1[41]; /* lowercase hex, computed by redis_script_init */
};

void redis_script_init(struct redis_script *sc, const char *source);

/*
 * EVALSHA sc with argv holding the nkeys keys then the nargs args (argvlen NULL: NUL-terminated).
 * On NOSCRIPT (the server lost its script cache: restart, SCRIPT FLUSH) the same call is sent
 * again as EVAL with the source, which loads it, and later calls go on with EVALSHA; the caller
 * sees one callback either way. The EVAL gets its own command_timeout_ms. Returns like
 * redis_command_argv (also -EINVAL for a negative count); sc must outlive the callback.
 */
int redis_evalsha(struct redis *r, struct redis_script *sc, int nkeys, int nargs, const char **argv,
                  const size_t *argvlen, redis_reply_cb cb, void *arg);

/*
 * A command in RESP, byte for byte as hiredis' redisFormatCommandArgv writes it ("*<argc>\r\n",
 * then "$<len>\r\n<bytes>\r\n" per argument; argvlen NULL: NUL-terminated strings). Commands
 * are sent so, formatted once into one buffer. redis_format_bound is the room it needs, at most,
 * with a NUL after the command (SIZE_MAX when that does not fit a size_t); redis_format_argv
 * returns the command's length, the NUL not counted.
 */
size_t redis_format_bound(int argc, const char **argv, const size_t *argvlen);
size_t redis_format_argv(char *out, int argc, const char **argv, const size_t *argvlen);

/* Counters since redis_new, for metrics. */
struct redis_stats {
	uint64_t commands;   /* commands accepted (each has had or will have its callback) */
	uint64_t errors;     /* callbacks with an error, of any kind (server errors included) */
	uint64_t timeouts;   /* commands that timed out (each also counted in errors) */
	uint64_t reconnects; /* connection attempts after the first */
};

void redis_get_stats(const struct redis *r, struct redis_stats *st);

#endif
