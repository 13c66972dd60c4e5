/* policy_record: the hook-input recorder (see policy_record.h). Lines are built as JSON,
 * appended to a buffer and written with one write(2) each time the buffer holds 64 KiB (and on
 * flush), always ending on a line's end, so lines of several workers never interleave. A
 * failed write is logged once and recording stops: the gateway serves on. */
#include "policy/policy_record.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/metrics.h"
#include "policy/policy_rollout.h"

#define POLICY_RECORD_BUF (64u << 10)

struct policy_record_s {
    int fd;
    char *path;
    double sample;
    int redact;
    int stopped;                   /* write failed or the byte bound was reached */
    long long written;
    uint64_t salt;                 /* redaction: address pseudonyms differ between files */
    buf_t buf;
};

policy_record_t *policy_record_open(const char *file, double sample, int redact, char *err, size_t errlen)
{
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "policy_record_file %s: cannot open: %s", file, strerror(errno));
        return NULL;
    }
    policy_record_t *r = xcalloc(1, sizeof *r);
    r->fd = fd;
    r->path = xstrdup(file);
    r->sample = sample;
    r->redact = redact;
    if (RAND_bytes((unsigned char *)&r->salt, sizeof r->salt) != 1) r->salt = (uint64_t)getpid();
    buf_init(&r->buf);
    return r;
}

void policy_record_flush(policy_record_t *r)
{
    if (!r || !r->buf.len) return;
    size_t off = 0;
    while (!r->stopped && off < r->buf.len) {
        ssize_t n = write(r->fd, r->buf.data + off, r->buf.len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            log_error("policy recording stopped: write failed", "{s:s, s:s}", "file", r->path, "error",
                      n < 0 ? strerror(errno) : "short write");
            r->stopped = 1;
            break;
        }
        off += (size_t)n;
        r->written += n;
    }
    r->buf.len = 0;
}

void policy_record_free(policy_record_t *r)
{
    if (!r) return;
    policy_record_flush(r);
    close(r->fd);
    buf_free(&r->buf);
    free(r->path);
    free(r);
}

int policy_record_wants(const policy_record_t *r, const char *conn_id)
{
    if (!r || r->stopped || !conn_id) return 0;
    return (double)policy_rollout_share(conn_id) < r->sample * 10000.0;
}

/* ---- redaction ---- */

static json_t *policy_record_mask(const char *s)
{
    size_t n = strlen(s);
    char *x = xmalloc(n + 1);
    memset(x, 'x', n);
    x[n] = '\0';
    json_t *v = json_string(x);
    free(x);
    return v;
}

/* Keys whose values the gateway routes by: kept, so the replay takes the same paths. */
static int policy_record_key_kept(const char *key)
{
    return !strcmp(key, "type") || !strcmp(key, "room") || !strcmp(key, "cid") || !strcmp(key, "to");
}

/* v with its strings masked (kept keys aside), new reference. */
static json_t *policy_record_redacted(json_t *v, int depth)
{
    if (json_is_string(v)) return policy_record_mask(json_string_value(v));
    if (depth > 32) return json_null();
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
            json_object_set_new(o, k, policy_record_key_kept(k) ? json_incref(m) : policy_record_redacted(m, depth + 1));
        return o;
    }
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) json_array_append_new(a, policy_record_redacted(m, depth + 1));
        return a;
    }
    return json_incref(v);
}

static json_t *policy_record_value(const policy_record_t *r, json_t *v)
{
    if (!v) return json_null();
    return r->redact ? policy_record_redacted(v, 0) : json_incref(v);
}

static json_t *policy_record_ip(const policy_record_t *r, const char *ip)
{
    if (!r->redact) return json_string(ip);
    uint64_t h = 1469598103934665603ULL ^ r->salt;
    for (const unsigned char *s = (const unsigned char *)ip; *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    char out[32];
    snprintf(out, sizeof out, "ip-%08x", (unsigned)(h ^ (h >> 32)));
    return json_string(out);
}

static json_t *policy_record_conn(const policy_record_t *r, const policy_conn_t *conn)
{
    json_t *c = json_object();
    if (!conn) return c;
    if (conn->id) json_object_set_new(c, "id", json_string(conn->id));
    if (conn->ip) json_object_set_new(c, "ip", policy_record_ip(r, conn->ip));
    if (conn->name) json_object_set_new(c, "name", r->redact ? policy_record_mask(conn->name) : json_string(conn->name));
    if (conn->query) {
        json_t *q = json_object();
        for (const policy_pair_t *p = conn->query; p->key; p++)
            json_object_set_new(q, p->key, r->redact && !policy_record_key_kept(p->key) ? policy_record_mask(p->value)
                                                                                     : json_string(p->value));
        json_object_set_new(c, "query", q);
    }
    return c;
}

void policy_record_add(policy_record_t *r, double ts, int hook, const policy_conn_t *conn, const char *room,
                       json_t *msg, int verdict, const char *code, json_t *out)
{
    if (!r || r->stopped || hook < 0 || hook >= POLICY_HOOKS) return;
    json_t *stable = json_pack("{s:s}", "verdict", verdict == POLICY_PASS ? "pass" : verdict == POLICY_DROP ? "drop" : "error");
    if (verdict == POLICY_DROP && code) json_object_set_new(stable, "code", json_string(code));
    if (verdict == POLICY_PASS && hook == POLICY_HOOK_MESSAGE) json_object_set_new(stable, "out", policy_record_value(r, out));
    json_t *line = json_pack("{s:f, s:s, s:o, s:o}", "ts", ts, "hook", metrics_policy_hooks[hook], "conn",
                             policy_record_conn(r, conn), "stable", stable);
    if (room) json_object_set_new(line, "room", json_string(room));
    if (msg) json_object_set_new(line, "msg", policy_record_value(r, msg));
    char *text = json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(line);
    if (!text) return;
    size_t n = strlen(text);
    if (r->written + (long long)r->buf.len + (long long)n + 1 > POLICY_RECORD_MAX_BYTES) {
        free(text);
        policy_record_flush(r);
        log_warn("policy recording stopped: the file reached its bound", "{s:s, s:I}", "file", r->path,
                 "bytes", (json_int_t)r->written);
        r->stopped = 1;
        return;
    }
    buf_append(&r->buf, text, n);
    buf_append(&r->buf, "\n", 1);
    free(text);
    if (r->buf.len >= POLICY_RECORD_BUF) policy_record_flush(r);
}
