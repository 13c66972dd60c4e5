/* sentry: see sentry.h. Capturing threads build the envelope, take the lock only to pass the
 * rate limit and push onto a fixed ring, then wake the loop with a uv_async; the loop pops
 * envelopes into httpc as request slots free up. Nothing on a worker's path waits for the
 * network, and a DSN that is down costs a failed request per queued event, nothing more. */
#include "net/sentry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/hex.h"
#include "base/map.h"
#include "net/httpc.h"

typedef struct {
    char *body;
    size_t len;
    char *done_path;             /* removed once accepted, or NULL */
} sentry_item_t;

typedef struct {
    uint64_t hash;               /* 0 = free */
    double tokens;
    uint64_t last_ms;            /* last refill, and recency for eviction */
    unsigned suppressed;
} sentry_fp_t;

typedef struct {
    sentry_t *s;
    int64_t id;                  /* 0 = free slot */
    char *done_path;
} sentry_req_t;

struct sentry {
    uv_loop_t *loop;
    uv_async_t wake;
    httpc_t *http;
    sentry_dsn_t dsn;
    char *release, *environment, *server_name;
    metrics_t *metrics;
    char *headers[4];
    sentry_req_t reqs[SENTRY_INFLIGHT];
    uv_mutex_t mu;               /* guards what follows */
    sentry_item_t queue[SENTRY_QUEUE_MAX];
    unsigned qhead, qlen;
    sentry_fp_t fps[SENTRY_FINGERPRINTS];
    int closed;
};

static void sentry_count(sentry_t *s, int result)
{
    if (s->metrics) METRIC_INC(s->metrics->sentry_events[result]);
}

/* ---- the DSN ---- */

int sentry_dsn_parse(const char *dsn, sentry_dsn_t *out, char *err, size_t errlen)
{
    const char *rest;
    int tls;
    if (!dsn || !*dsn) return snprintf(err, errlen, "empty DSN"), GW_EINVAL;
    if (!strncmp(dsn, "https://", 8)) tls = 1, rest = dsn + 8;
    else if (!strncmp(dsn, "http://", 7)) tls = 0, rest = dsn + 7;
    else return snprintf(err, errlen, "the DSN must start with https:// or http://"), GW_EINVAL;
    if (strpbrk(dsn, " \t\r\n\"\\?#")) return snprintf(err, errlen, "the DSN holds a space, quote, query or fragment"), GW_EINVAL;
    const char *at = strchr(rest, '@');
    const char *slash = strchr(rest, '/');
    if (!at || (slash && slash < at)) return snprintf(err, errlen, "the DSN has no public key (KEY@HOST)"), GW_EINVAL;
    char key[128] = "", secret[128] = "";
    size_t ulen = (size_t)(at - rest), klen = strcspn(rest, ":@");
    if (!klen || klen >= sizeof key) return snprintf(err, errlen, "the DSN's public key is empty or too long"), GW_EINVAL;
    memcpy(key, rest, klen);
    if (klen < ulen) {
        size_t slen = ulen - klen - 1;
        if (slen >= sizeof secret) return snprintf(err, errlen, "the DSN's secret key is too long"), GW_EINVAL;
        memcpy(secret, rest + klen + 1, slen);
        secret[slen] = '\0';
    }
    const char *host = at + 1;
    const char *last = strrchr(host, '/');
    if (!last || last == host) return snprintf(err, errlen, "the DSN has no project id (HOST/PROJECT)"), GW_EINVAL;
    const char *project = last + 1;
    size_t hlen = strcspn(host, "/");
    if (!hlen || !*project || strlen(project) > 64)
        return snprintf(err, errlen, "the DSN's host or project id is empty or too long"), GW_EINVAL;
    /* host[:port] and the path prefix between it and the project */
    const char *path = host + hlen;   /* "/prefix/" or "/" */
    int n = snprintf(out->url, sizeof out->url, "%s://%.*s%.*sapi/%s/envelope/", tls ? "https" : "http", (int)hlen,
                     host, (int)(last - path + 1), path, project);
    if (n < 0 || (size_t)n >= sizeof out->url) return snprintf(err, errlen, "the DSN is too long"), GW_EINVAL;
    snprintf(out->public_dsn, sizeof out->public_dsn, "%s://%s@%s", tls ? "https" : "http", key, host);
    snprintf(out->auth, sizeof out->auth, "X-Sentry-Auth: Sentry sentry_version=7, sentry_client=chatgw/%s, sentry_key=%s%s%s",
             CHATGW_VERSION, key, secret[0] ? ", sentry_secret=" : "", secret);
    return 0;
}

/* ---- the codec ---- */

static double sentry_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1000.0;
}

/* Lua traceback lines ("\tfile.lua:12: in function 'f'", "\t[C]: in ?") as Sentry frames,
 * oldest first; NULL when none names a Lua file. */
static json_t *sentry_lua_frames(const char *tb)
{
    json_t *frames = json_array();
    int lua = 0;
    for (const char *line = tb; line && *line;) {
        size_t len = strcspn(line, "\n");
        const char *p = line;
        while (p < line + len && (*p == '\t' || *p == ' ')) p++;
        const char *colon = memchr(p, ':', (size_t)(line + len - p));
        if (colon && strncmp(p, "stack traceback", 15)) {
            json_t *f = json_object();
            long lineno = 0;
            const char *after = colon + 1;
            if (*after >= '0' && *after <= '9') {
                lineno = strtol(after, (char **)&after, 10);
                if (*after == ':') after++;
                lua = 1;
            }
            json_object_set_new(f, "filename", json_stringn(p, (size_t)(colon - p)));
            if (lineno) json_object_set_new(f, "lineno", json_integer(lineno));
            while (*after == ' ') after++;
            const char *fn = after;
            size_t fnlen = (size_t)(line + len - fn);
            if (fnlen > 3 && !strncmp(fn, "in ", 3)) fn += 3, fnlen -= 3;
            json_object_set_new(f, "function", json_stringn(fn, fnlen));
            json_object_set_new(f, "in_app", json_boolean(lineno > 0));
            json_array_insert_new(frames, 0, f);
            if (json_array_size(frames) >= 64) break;
        }
        line += len;
        if (*line) line++;
    }
    if (!lua) {
        json_decref(frames);
        return NULL;
    }
    return frames;
}

json_t *sentry_event_of(const report_t *r, int worker, unsigned suppressed)
{
    const char *kind = r->kind ? r->kind : "error", *msg = r->message ? r->message : kind;
    json_t *tags = json_pack("{s:s}", "kind", kind);
    if (r->hook) json_object_set_new(tags, "hook", json_string(r->hook));
    if (r->policy_version && *r->policy_version)
        json_object_set_new(tags, "policy_version", json_stringn(r->policy_version, strnlen(r->policy_version, 12)));
    if (worker >= 0) json_object_set_new(tags, "worker", json_sprintf("%d", worker));
    json_t *extra = json_object();
    if (r->where) json_object_set_new(extra, "where", json_string(r->where));
    if (r->traceback) json_object_set_new(extra, "traceback", json_string(r->traceback));
    if (r->policy_version) json_object_set_new(extra, "policy_version", json_string(r->policy_version));
    if (suppressed) json_object_set_new(extra, "suppressed_since_last", json_integer(suppressed));
    json_t *ev = json_pack("{s:s, s:s, s:{s:s}, s:o, s:o, s:[s, s, s]}", "level", r->level ? r->level : "error",
                           "logger", "chatgw", "message", "formatted", msg, "tags", tags, "extra", extra,
                           "fingerprint", kind, r->hook ? r->hook : "-", r->where ? r->where : msg);
    if (!ev) return NULL;   /* a string that is not UTF-8: jansson refuses it */
    json_t *exc = json_pack("{s:s, s:s}", "type", kind, "value", msg);
    if (exc && r->hook) json_object_set_new(exc, "module", json_string(r->hook));
    json_t *frames = r->traceback ? sentry_lua_frames(r->traceback) : NULL;
    if (exc && frames) json_object_set_new(exc, "stacktrace", json_pack("{s:o}", "frames", frames));
    else json_decref(frames);
    if (exc) json_object_set_new(ev, "exception", json_pack("{s:[o]}", "values", exc));
    return ev;
}

static void sentry_rfc3339(double t, char out[32])
{
    time_t sec = (time_t)t;
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)((t - (double)sec) * 1000) % 1000);
}

char *sentry_envelope(const char *public_dsn, const json_t *event, size_t *len)
{
    char *payload = json_dumps(event, JSON_COMPACT);
    if (!payload) return NULL;
    char sent_at[32];
    sentry_rfc3339(sentry_now_s(), sent_at);
    const char *id = json_string_value(json_object_get(event, "event_id"));
    json_t *hdr = json_pack("{s:s, s:s, s:{s:s, s:s}}", "sent_at", sent_at, "dsn", public_dsn, "sdk", "name", "chatgw",
                            "version", CHATGW_VERSION);
    if (id) json_object_set_new(hdr, "event_id", json_string(id));
    size_t plen = strlen(payload);
    json_t *item = json_pack("{s:s, s:I, s:s}", "type", "event", "length", (json_int_t)plen, "content_type",
                             "application/json");
    char *h = json_dumps(hdr, JSON_COMPACT), *i = json_dumps(item, JSON_COMPACT);
    json_decref(hdr);
    json_decref(item);
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s\n%s\n", h, i);
    buf_append(&b, payload, plen);
    buf_append(&b, "\n", 1);
    free(h);
    free(i);
    free(payload);
    buf_cstr(&b);   /* NUL-terminated too */
    *len = b.len;
    return b.data;
}

/* ---- capture (any thread) ---- */

static uint64_t sentry_now_ms(void) { return uv_hrtime() / 1000000; }

/* Under mu: whether the fingerprint may send now; *suppressed gets what it held back since. */
static int sentry_rate_pass(sentry_t *s, const char *fingerprint, unsigned *suppressed)
{
    uint64_t h = (uint64_t)map_hash(fingerprint) << 1 | 1, now = sentry_now_ms();
    sentry_fp_t *slot = NULL, *oldest = &s->fps[0];
    for (int i = 0; i < SENTRY_FINGERPRINTS; i++) {
        sentry_fp_t *f = &s->fps[i];
        if (f->hash == h) {
            slot = f;
            break;
        }
        if (!f->hash || (oldest->hash && f->last_ms < oldest->last_ms)) oldest = f;
    }
    if (!slot) {
        slot = oldest;
        *slot = (sentry_fp_t){.hash = h, .tokens = SENTRY_BURST, .last_ms = now};
    }
    slot->tokens += (double)(now - slot->last_ms) / (SENTRY_REFILL_S * 1000.0);
    if (slot->tokens > SENTRY_BURST) slot->tokens = SENTRY_BURST;
    slot->last_ms = now;
    if (slot->tokens < 1) {
        slot->suppressed++;
        return 0;
    }
    slot->tokens -= 1;
    *suppressed = slot->suppressed;
    slot->suppressed = 0;
    return 1;
}

/* Fills what the sender knows; then queues the envelope. Takes event. */
static void sentry_enqueue(sentry_t *s, json_t *event, const char *done_path)
{
    char id[33];
    if (!json_object_get(event, "event_id")) json_object_set_new(event, "event_id", json_string(hex_random(id, 16)));
    if (!json_object_get(event, "timestamp")) json_object_set_new(event, "timestamp", json_real(sentry_now_s()));
    if (!json_object_get(event, "platform")) json_object_set_new(event, "platform", json_string("c"));
    if (!json_object_get(event, "release")) json_object_set_new(event, "release", json_string(s->release));
    if (!json_object_get(event, "environment")) json_object_set_new(event, "environment", json_string(s->environment));
    if (!json_object_get(event, "server_name")) json_object_set_new(event, "server_name", json_string(s->server_name));
    json_object_set_new(event, "sdk", json_pack("{s:s, s:s}", "name", "chatgw", "version", CHATGW_VERSION));
    size_t len;
    char *body = sentry_envelope(s->dsn.public_dsn, event, &len);
    json_decref(event);
    if (!body) {
        sentry_count(s, METRICS_SENTRY_DROPPED);
        return;
    }
    uv_mutex_lock(&s->mu);
    int ok = !s->closed && s->qlen < SENTRY_QUEUE_MAX;
    if (ok) {
        sentry_item_t *it = &s->queue[(s->qhead + s->qlen++) % SENTRY_QUEUE_MAX];
        it->body = body;
        it->len = len;
        it->done_path = done_path ? xstrdup(done_path) : NULL;
        uv_async_send(&s->wake);
    }
    uv_mutex_unlock(&s->mu);
    if (!ok) {
        free(body);
        sentry_count(s, METRICS_SENTRY_DROPPED);
    }
}

void sentry_capture(sentry_t *s, const report_t *r, int worker)
{
    if (!s || !r) return;
    char fp[512];
    snprintf(fp, sizeof fp, "%s|%s|%s", r->kind ? r->kind : "", r->hook ? r->hook : "",
             r->where ? r->where : r->message ? r->message : "");
    unsigned suppressed = 0;
    uv_mutex_lock(&s->mu);
    int pass = !s->closed && sentry_rate_pass(s, fp, &suppressed);
    uv_mutex_unlock(&s->mu);
    if (!pass) {
        sentry_count(s, METRICS_SENTRY_RATE_LIMITED);
        return;
    }
    json_t *ev = sentry_event_of(r, worker, suppressed);
    if (!ev) {
        sentry_count(s, METRICS_SENTRY_DROPPED);
        return;
    }
    sentry_enqueue(s, ev, NULL);
}

void sentry_capture_event(sentry_t *s, json_t *event, const char *fingerprint, const char *done_path)
{
    if (!s || !event) {
        json_decref(event);
        return;
    }
    if (fingerprint) {
        unsigned suppressed = 0;
        uv_mutex_lock(&s->mu);
        int pass = !s->closed && sentry_rate_pass(s, fingerprint, &suppressed);
        uv_mutex_unlock(&s->mu);
        if (!pass) {
            json_decref(event);
            sentry_count(s, METRICS_SENTRY_RATE_LIMITED);
            return;
        }
    }
    sentry_enqueue(s, event, done_path);
}

/* ---- sending (the loop's thread) ---- */

static void sentry_pump(sentry_t *s);

static void sentry_on_done(void *ud, int status, const char *body, size_t len)
{
    sentry_req_t *q = ud;
    sentry_t *s = q->s;
    int ok = status >= 200 && status < 300;
    sentry_count(s, ok ? METRICS_SENTRY_SENT : METRICS_SENTRY_FAILED);
    if (ok && q->done_path) unlink(q->done_path);
    free(q->done_path);
    q->done_path = NULL;
    q->id = 0;
    sentry_pump(s);
}

static void sentry_pump(sentry_t *s)
{
    for (;;) {
        sentry_req_t *q = NULL;
        for (int i = 0; i < SENTRY_INFLIGHT && !q; i++)
            if (!s->reqs[i].id) q = &s->reqs[i];
        if (!q) return;
        sentry_item_t it;
        uv_mutex_lock(&s->mu);
        int have = s->qlen > 0;
        if (have) {
            it = s->queue[s->qhead];
            s->qhead = (s->qhead + 1) % SENTRY_QUEUE_MAX;
            s->qlen--;
        }
        uv_mutex_unlock(&s->mu);
        if (!have) return;
        q->s = s;
        q->done_path = it.done_path;
        int64_t id = httpc_request(s->http, "POST", s->dsn.url, (const char *const *)s->headers, it.body, it.len,
                                   SENTRY_TIMEOUT_MS, sentry_on_done, q);
        free(it.body);
        if (id > 0) {
            q->id = id;
        } else {
            sentry_count(s, METRICS_SENTRY_FAILED);
            free(q->done_path);
            q->done_path = NULL;
        }
    }
}

static void sentry_on_wake(uv_async_t *a) { sentry_pump(a->data); }

sentry_t *sentry_new(uv_loop_t *loop, const sentry_opts_t *o, char *err, size_t errlen)
{
    sentry_t *s = xcalloc(1, sizeof *s);
    if (sentry_dsn_parse(o->dsn, &s->dsn, err, errlen) < 0) goto fail;
    s->http = httpc_new(loop, SENTRY_INFLIGHT);
    if (!s->http) {
        snprintf(err, errlen, "cannot start the HTTP client");
        goto fail;
    }
    if (uv_mutex_init(&s->mu) != 0) goto fail_http;
    if (uv_async_init(loop, &s->wake, sentry_on_wake) < 0) goto fail_mu;
    uv_unref((uv_handle_t *)&s->wake);   /* pending reports never keep the process up */
    s->wake.data = s;
    s->loop = loop;
    s->metrics = o->metrics;
    s->release = xstrdup(o->release ? o->release : "chatgw@" CHATGW_VERSION);
    s->environment = xstrdup(o->environment ? o->environment : "production");
    s->server_name = xstrdup(o->server_name ? o->server_name : "chatgw");
    s->headers[0] = xstrdup("Content-Type: application/x-sentry-envelope");
    s->headers[1] = xstrdup(s->dsn.auth);
    s->headers[2] = xstrdup("User-Agent: chatgw/" CHATGW_VERSION);
    return s;

fail_mu:
    uv_mutex_destroy(&s->mu);
fail_http:
    httpc_free(s->http);
fail:
    free(s);
    return NULL;
}

static void sentry_on_closed(uv_handle_t *h)
{
    sentry_t *s = h->data;
    uv_mutex_destroy(&s->mu);
    free(s);
}

void sentry_free(sentry_t *s)
{
    if (!s) return;
    uv_mutex_lock(&s->mu);
    s->closed = 1;
    while (s->qlen) {
        sentry_item_t *it = &s->queue[s->qhead];
        free(it->body);
        free(it->done_path);
        s->qhead = (s->qhead + 1) % SENTRY_QUEUE_MAX;
        s->qlen--;
    }
    uv_mutex_unlock(&s->mu);
    httpc_free(s->http);   /* in-flight requests never call back */
    for (int i = 0; i < SENTRY_INFLIGHT; i++) free(s->reqs[i].done_path);
    free(s->release);
    free(s->environment);
    free(s->server_name);
    for (int i = 0; i < 4; i++) free(s->headers[i]);
    uv_close((uv_handle_t *)&s->wake, sentry_on_closed);
}
