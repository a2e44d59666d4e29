/*
 * log.h: the proxy's log, on stderr, one line per event, as text or JSON (log.format).
 *
 * Lines never carry a credential: callers pass ids, fingerprints and paths (without query),
 * never a token, key or secret, not even a prefix of one. Values are escaped, so a hostile path
 * cannot forge a log line.
 */
#ifndef GHLPROXY_LOG_H
#define GHLPROXY_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARNING, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };

/* A structured field: a string (str != NULL) or a number. */
struct log_field {
	const char *key;
	const char *str;
	int64_t num;
};

static inline const char *log_str_or_empty(const char *s)
{
	return s ? s : "";
}

#define LOG_STR(k, v) ((struct log_field){ .key = (k), .str = log_str_or_empty(v) })
#define LOG_NUM(k, v) ((struct log_field){ .key = (k), .str = NULL, .num = (int64_t)(v) })

void log_setup(enum log_level level, enum log_format format);
bool log_enabled(enum log_level level);

/* A free-text message (printf format). */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A message with structured fields. */
void log_fields(enum log_level level, const char *msg, const struct log_field *fields, int n);

#define log_error(...)   log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                   \
	do {                                             \
		if (log_enabled(LOG_DEBUG))              \
			log_msg(LOG_DEBUG, __VA_ARGS__); \
	} while (0)

#endif
