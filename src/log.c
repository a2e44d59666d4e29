/*
 * log.c: formats and writes log lines to stderr (fd 2) with one write(2) per line, so lines
 * from concurrent processes (tests, several proxies) do not interleave. A line is built in a
 * fixed buffer; an overlong value is cut and marked, never allowed to overflow.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096

static enum log_level cur_level = LOG_INFO;
static enum log_format cur_format = LOG_FORMAT_TEXT;

static const char *const level_names[] = { "error", "warning", "info", "debug" };

void log_setup(enum log_level level, enum log_format format)
{
	cur_level = level;
	cur_format = format;
}

bool log_enabled(enum log_level level)
{
	return level <= cur_level;
}

struct line {
	char buf[LINE_MAX_BYTES];
	size_t len;
	bool cut;
	size_t mark; /* end of the last complete field: a cut JSON line is rolled back to it */
};

/* Room kept at the end of every line for the cut marker and the line's end. */
#define TAIL_RESERVE 24

static void put(struct line *l, const char *s, size_t n)
{
	size_t room = sizeof(l->buf) - TAIL_RESERVE - l->len;

	if (l->cut)
		return;

	if (n > room) {
		/* All or nothing: never half an escape sequence or a structural token. */
		l->cut = true;
		return;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_(struct line *l, const char *s)
{
	put(l, s, strlen(s));
}

/* Escape a value: JSON string rules in JSON; in text, the same escapes for controls, quotes and
 * backslashes, so one event is always one line. */
static void put_escaped(struct line *l, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p && !l->cut; p++) {
		char esc[8];
		switch (*p) {
		case '"':
			puts_(l, "\\\"");
			break;
		case '\\':
			puts_(l, "\\\\");
			break;
		case '\n':
			puts_(l, "\\n");
			break;
		case '\r':
			puts_(l, "\\r");
			break;
		case '\t':
			puts_(l, "\\t");
			break;
		default:
			if (*p < 0x20 || *p == 0x7f) {
				snprintf(esc, sizeof(esc), "\\u%04x", *p);
				puts_(l, esc);
			} else {
				put(l, (const char *)p, 1);
			}
		}
	}
}

static bool needs_quotes(const char *s)
{
	if (*s == '\0')
		return true;
	for (; *s; s++)
		if (*s == ' ' || *s == '"' || *s == '=' || (unsigned char)*s < 0x21 || *s == 0x7f ||
		    *s == '\\')
			return true;
	return false;
}

static void put_stamp(struct line *l)
{
	struct timespec ts;
	struct tm tm;
	char buf[40];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, sizeof(buf) - n, ".%03ldZ", ts.tv_nsec / 1000000L);
	puts_(l, buf);
}

static void tail(struct line *l, const char *s)
{
	size_t n = strlen(s);

	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void emit(struct line *l)
{
	size_t off = 0;

	if (cur_format == LOG_FORMAT_JSON) {
		if (l->cut) {
			l->len = l->mark;
			tail(l, ",\"cut\":true");
		}
		tail(l, "}");
	} else if (l->cut) {
		tail(l, " (cut)");
	}
	tail(l, "\n");
	while (off < l->len) {
		ssize_t n = write(2, l->buf + off, l->len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		off += (size_t)n;
	}
}

static void begin(struct line *l, enum log_level level, const char *msg)
{
	l->len = 0;
	l->cut = false;
	l->mark = 0;
	if (cur_format == LOG_FORMAT_JSON) {
		puts_(l, "{\"ts\":\"");
		put_stamp(l);
		puts_(l, "\",\"level\":\"");
		puts_(l, level_names[level]);
		puts_(l, "\",\"msg\":");
		puts_(l, "\"");
		put_escaped(l, msg);
		puts_(l, "\"");
		if (!l->cut)
			l->mark = l->len;
	} else {
		put_stamp(l);
		puts_(l, " ");
		puts_(l, level_names[level]);
		puts_(l, " ");
		put_escaped(l, msg);
	}
}

static void field(struct line *l, const struct log_field *f)
{
	char num[32];

	if (cur_format == LOG_FORMAT_JSON) {
		puts_(l, ",\"");
		put_escaped(l, f->key);
		puts_(l, "\":");
		if (f->str) {
			puts_(l, "\"");
			put_escaped(l, f->str);
			puts_(l, "\"");
		} else {
			snprintf(num, sizeof(num), "%lld", (long long)f->num);
			puts_(l, num);
		}
		if (!l->cut)
			l->mark = l->len;
		return;
	}
	puts_(l, " ");
	puts_(l, f->key);
	puts_(l, "=");
	if (f->str) {
		bool q = needs_quotes(f->str);
		if (q)
			puts_(l, "\"");
		put_escaped(l, f->str);
		if (q)
			puts_(l, "\"");
	} else {
		snprintf(num, sizeof(num), "%lld", (long long)f->num);
		puts_(l, num);
	}
}

void log_fields(enum log_level level, const char *msg, const struct log_field *fields, int n)
{
	struct line l;

	if (!log_enabled(level))
		return;
	begin(&l, level, msg);
	for (int i = 0; i < n; i++)
		field(&l, &fields[i]);
	emit(&l);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char msg[LINE_MAX_BYTES / 2];
	struct line l;
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	begin(&l, level, msg);
	emit(&l);
}
