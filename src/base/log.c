/* log: JSON-lines logs on stdout. Each call builds one object {"ts","level","msg",fields...}
 * with jansson and writes it, newline included, with one write(2) so that lines from several
 * worker threads never interleave. The level filter is one atomic int; nothing else is shared.
 * A log call must never be lost: a bad fields format, a non-object result or invalid UTF-8
 * (scrubbed by utf8_json_new) still produces a line, with a "log_error" field that says what
 * went wrong. */
#include "base/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/utf8.h"

static atomic_int log_level_current = LOG_INFO;

static const char *const log_level_names[] = { "debug", "info", "warn", "error" };

void log_level_set(int level)
{
    if (level < LOG_DEBUG) level = LOG_DEBUG;
    if (level > LOG_ERROR) level = LOG_ERROR;
    atomic_store_explicit(&log_level_current, level, memory_order_relaxed);
}

int log_level_get(void) { return atomic_load_explicit(&log_level_current, memory_order_relaxed); }

int log_level_parse(const char *s)
{
    if (!s) return GW_EINVAL;
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
        if (strcmp(s, log_level_names[i]) == 0) return i;
    if (strcmp(s, "warning") == 0) return LOG_WARN;
    return GW_EINVAL;
}

/* RFC 3339 UTC with milliseconds: 2026-11-26T17:40:18.123Z. */
static void log_ts_format(char *out, size_t outlen)
{
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(out, outlen, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, outlen - n, ".%03ldZ", now.tv_nsec / 1000000L);
}

/* Adds text to the line's log_error field, after any earlier note, so no problem hides another. */
static void log_error_note(json_t *obj, const char *text)
{
    const char *prev = json_string_value(json_object_get(obj, "log_error"));
    if (!prev) {
        json_object_set_new(obj, "log_error", utf8_json_new(text, NULL));
        return;
    }
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s; %s", prev, text);
    buf_append(&b, "", 1); /* buf_t is not NUL-terminated */
    json_object_set_new(obj, "log_error", utf8_json_new(b.data, NULL));
    buf_free(&b);
}

/* Copies the caller's fields after ts/level/msg. A field that would overwrite one of those
 * three keeps its value under a "field_" prefix instead of silently replacing it. */
static void log_fields_merge(json_t *obj, json_t *fields)
{
    const char *key;
    json_t *value;
    json_object_foreach(fields, key, value) {
        if (strcmp(key, "ts") && strcmp(key, "level") && strcmp(key, "msg")) {
            json_object_set(obj, key, value);
            continue;
        }
        char renamed[32];
        snprintf(renamed, sizeof renamed, "field_%s", key);
        json_object_set(obj, renamed, value);
    }
}

static void log_fields_add(json_t *obj, const char *fields, va_list ap)
{
    json_error_t err;
    json_t *packed = json_vpack_ex(&err, 0, fields, ap);
    if (!packed) {
        char text[sizeof err.text + 64];
        snprintf(text, sizeof text, "fields \"%.40s\": %s", fields, err.text);
        log_error_note(obj, text);
        return;
    }
    if (json_is_object(packed))
        log_fields_merge(obj, packed);
    else
        log_error_note(obj, "fields format is not an object");
    json_decref(packed);
}

static int log_dump_cb(const char *p, size_t n, void *data)
{
    buf_append(data, p, n);
    return 0;
}

/* One write(2) per line is what keeps threads from interleaving; loop only for the rare
 * partial write (a full pipe) or a signal, so the line is still complete. */
static void log_line_write(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return; /* stdout is gone: nowhere left to report it */
        }
        p += w;
        n -= (size_t)w;
    }
}

void log_write(int level, const char *msg, const char *fields, ...)
{
    if (level < log_level_get()) return;
    if (level < LOG_DEBUG) level = LOG_DEBUG;
    if (level > LOG_ERROR) level = LOG_ERROR;

    char ts[40];
    log_ts_format(ts, sizeof ts);
    json_t *obj = json_object();
    json_object_set_new(obj, "ts", json_string(ts));
    json_object_set_new(obj, "level", json_string(log_level_names[level]));
    int lossy = 0;
    json_object_set_new(obj, "msg", utf8_json_new(msg ? msg : "", &lossy));
    if (lossy) log_error_note(obj, "msg is not valid UTF-8");
    if (fields) {
        va_list ap;
        va_start(ap, fields);
        log_fields_add(obj, fields, ap);
        va_end(ap);
    }

    buf_t line;
    buf_init(&line);
    if (json_dump_callback(obj, log_dump_cb, &line, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0) {
        buf_reset(&line);
        buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"?\",\"log_error\":\"dump failed\"}",
                   ts, log_level_names[level]);
    }
    buf_append(&line, "\n", 1);
    log_line_write(line.data, line.len);
    buf_free(&line);
    json_decref(obj);
}
