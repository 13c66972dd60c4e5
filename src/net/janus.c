/* janus: the AudioBridge client (janus.h). Every request is one httpc POST or GET; its
 * janus_req_t says what the answer means. A peer walks attach -> create -> join -> live; the
 * session's long poll brings the plugin's events (the join's answer, talking, leaving). */
#include "net/janus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "base/map.h"
#include "net/httpc.h"

#define JANUS_BACKOFF_MIN_MS 250
#define JANUS_BACKOFF_MAX_MS 5000
#define JANUS_POLL_MS 40000        /* Janus answers a long poll within 30 s */
#define JANUS_POLL_EVENTS 16
#define JANUS_CANDS_MAX 64         /* trickled candidates held until the handle exists */
#define JANUS_INFLIGHT 256
#define JANUS_ROOM_EXISTS 486      /* AudioBridge error codes */
#define JANUS_NO_SUCH_ROOM 485

typedef enum { R_SESSION, R_CONTROL, R_POLL, R_KEEPALIVE, R_ATTACH, R_CREATE, R_JOIN, R_DETACH, R_LIST, R_FIRE } janus_kind_t;
typedef enum { P_ATTACH, P_CREATE, P_JOIN, P_LIVE, P_DEAD } janus_pstate_t;

typedef struct janus_req {
    struct janus_req *next, *prev;
    janus_t *j;
    janus_peer_t *p;               /* the peer it serves, or NULL */
    janus_kind_t kind;
    int64_t id;                    /* httpc's */
    char *room;                    /* R_LIST: the room to destroy when empty */
} janus_req_t;

typedef struct {
    uint64_t rid;
    size_t npeers;                 /* this client's peers in it */
} janus_room_t;

struct janus_peer {
    struct janus_peer *next, *prev;
    janus_t *j;
    void *ud;
    char *room, *member, *offer;
    uint64_t rid;
    int64_t handle, pid;           /* 0 until attached, joined */
    int muted, joined_muted, retried;
    janus_pstate_t state;
    uint64_t deadline;             /* the join's, on the loop's clock */
    json_t *cands;                 /* held until attached */
    int cands_done;
};

struct janus {
    uv_loop_t *loop;
    httpc_t *http;
    char *url;
    unsigned timeout_ms, keepalive_ms;
    uint64_t keepalive_at;         /* the next keepalive, on the loop's clock */
    janus_handlers_t h;
    void *arg;
    int64_t session, control;
    int up, connecting;
    uint64_t retry_at;
    unsigned backoff;
    uv_timer_t *tick;
    janus_req_t *reqs;
    janus_peer_t *peers;
    size_t npeers;
    map_t rooms;                   /* chat room -> janus_room_t */
    map_t names;                   /* "rid/pid" -> member id (char *), every replica's */
    uint64_t txn;
};

uint64_t janus_room_id(const char *room)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)room, strlen(room), md);
    uint64_t v = 0;
    for (int i = 0; i < 7; i++) v = v << 8 | md[i];
    v &= (UINT64_C(1) << 52) - 1;  /* exact in a JavaScript number, for Janus's own tools */
    return v ? v : 1;
}

/* ---- requests ---- */

static void janus_on_done(void *ud, int status, const char *body, size_t len);

static void janus_req_unlink(janus_req_t *r)
{
    if (r->prev) r->prev->next = r->next;
    else r->j->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    free(r->room);
    free(r);
}

/* Sends body (taken) to url+path; POST unless body is NULL (the long poll). 0, or a negative
 * code with nothing left in flight. */
static int janus_send(janus_t *j, const char *path, json_t *body, janus_kind_t kind, janus_peer_t *p,
                      const char *room)
{
    char url[1024];
    snprintf(url, sizeof url, "%s%s", j->url, path);
    char *text = NULL;
    if (body) {
        char txn[24];
        snprintf(txn, sizeof txn, "t%llu", (unsigned long long)++j->txn);
        json_object_set_new(body, "transaction", json_string(txn));
        text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        if (!text) return GW_ENOMEM;
    }
    janus_req_t *r = xcalloc(1, sizeof *r);
    r->j = j;
    r->p = p;
    r->kind = kind;
    r->room = room ? xstrdup(room) : NULL;
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    int64_t id = httpc_request(j->http, body ? "POST" : "GET", url, headers, text, text ? strlen(text) : 0,
                               kind == R_POLL ? JANUS_POLL_MS : j->timeout_ms, janus_on_done, r);
    free(text);
    if (id < 0) {
        free(r->room);
        free(r);
        return (int)id;
    }
    r->id = id;
    r->next = j->reqs;
    if (j->reqs) j->reqs->prev = r;
    j->reqs = r;
    return 0;
}

static void janus_path(char *out, size_t len, const janus_t *j, int64_t handle)
{
    if (handle) snprintf(out, len, "/%lld/%lld", (long long)j->session, (long long)handle);
    else snprintf(out, len, "/%lld", (long long)j->session);
}

/* An AudioBridge request (body taken) on a handle. */
static int janus_plugin_send(janus_t *j, int64_t handle, json_t *body, json_t *jsep, janus_kind_t kind,
                             janus_peer_t *p, const char *room)
{
    char path[64];
    janus_path(path, sizeof path, j, handle);
    json_t *msg = json_pack("{s:s, s:o}", "janus", "message", "body", body);
    if (jsep) json_object_set_new(msg, "jsep", jsep);
    return janus_send(j, path, msg, kind, p, room);
}

static void janus_cancel_peer(janus_t *j, janus_peer_t *p)
{
    for (janus_req_t *r = j->reqs, *next; r; r = next) {
        next = r->next;
        if (r->p != p) continue;
        httpc_cancel(j->http, r->id);
        janus_req_unlink(r);
    }
}

/* ---- peers ---- */

static void janus_names_set(janus_t *j, uint64_t rid, json_t *participants)
{
    size_t i;
    json_t *v;
    json_array_foreach(participants, i, v) {
        json_t *id = json_object_get(v, "id");
        const char *display = json_string_value(json_object_get(v, "display"));
        if (!json_is_integer(id) || !display) continue;
        char key[48];
        snprintf(key, sizeof key, "%llu/%lld", (unsigned long long)rid, (long long)json_integer_value(id));
        free(map_del(&j->names, key));
        map_set(&j->names, key, xstrdup(display));
    }
}

static const char *janus_name_of(janus_t *j, uint64_t rid, json_t *id)
{
    char key[48];
    snprintf(key, sizeof key, "%llu/%lld", (unsigned long long)rid, (long long)json_integer_value(id));
    return map_get(&j->names, key);
}

static void janus_name_del(janus_t *j, uint64_t rid, json_t *id)
{
    char key[48];
    snprintf(key, sizeof key, "%llu/%lld", (unsigned long long)rid, (long long)json_integer_value(id));
    free(map_del(&j->names, key));
}

/* The peer's voice ended: inert from now on, its owner told (who may leave it at once). */
static void janus_peer_lose(janus_peer_t *p, const char *code, const char *message)
{
    if (p->state == P_DEAD) return;
    p->state = P_DEAD;
    janus_cancel_peer(p->j, p);
    p->j->h.lost(p->ud, p, code, message);
}

static void janus_mute_send(janus_peer_t *p)
{
    janus_t *j = p->j;
    json_t *body = json_pack("{s:s, s:I, s:I}", "request", p->muted ? "mute" : "unmute", "room", (json_int_t)p->rid,
                             "id", (json_int_t)p->pid);
    if (janus_plugin_send(j, j->control, body, NULL, R_FIRE, NULL, NULL) < 0)
        log_warn("janus: mute not sent", "{s:s}", "member", p->member);
    p->joined_muted = p->muted;
}

static void janus_cands_flush(janus_peer_t *p)
{
    janus_t *j = p->j;
    char path[64];
    janus_path(path, sizeof path, j, p->handle);
    if (p->cands && json_array_size(p->cands)) {
        janus_send(j, path, json_pack("{s:s, s:O}", "janus", "trickle", "candidates", p->cands), R_FIRE, NULL, NULL);
        json_array_clear(p->cands);
    }
    if (p->cands_done) {
        janus_send(j, path, json_pack("{s:s, s:{s:b}}", "janus", "trickle", "candidate", "completed", 1), R_FIRE,
                   NULL, NULL);
        p->cands_done = 0;
    }
}

static void janus_peer_create(janus_peer_t *p)
{
    janus_t *j = p->j;
    p->state = P_CREATE;
    /* talking: an average level above -40 dBov over 50 packets (1 s), about a voice at speaking
     * level; the mixer says so to every participant */
    char desc[64];
    snprintf(desc, sizeof desc, "%.60s", p->room);   /* AudioBridge descriptions are for people */
    json_t *body = json_pack("{s:s, s:I, s:s, s:b, s:b, s:i, s:b, s:i, s:i}", "request", "create", "room",
                             (json_int_t)p->rid, "description", desc, "permanent", 0, "is_private", 1,
                             "sampling_rate", 48000, "audiolevel_event", 1, "audio_active_packets", 50,
                             "audio_level_average", 40);
    if (janus_plugin_send(j, p->handle, body, NULL, R_CREATE, p, NULL) < 0)
        janus_peer_lose(p, "voice_unavailable", "the media server cannot be asked now");
}

static void janus_peer_send_join(janus_peer_t *p)
{
    janus_t *j = p->j;
    p->state = P_JOIN;
    json_t *body = json_pack("{s:s, s:I, s:s, s:b}", "request", "join", "room", (json_int_t)p->rid, "display",
                             p->member, "muted", p->muted);
    json_t *jsep = json_pack("{s:s, s:s}", "type", "offer", "sdp", p->offer);
    p->joined_muted = p->muted;
    if (janus_plugin_send(j, p->handle, body, jsep, R_JOIN, p, NULL) < 0)
        janus_peer_lose(p, "voice_unavailable", "the media server cannot be asked now");
}

/* An AudioBridge event on p's handle (data borrowed), with jsep when it carries an answer. */
static void janus_peer_event(janus_peer_t *p, json_t *data, json_t *jsep)
{
    janus_t *j = p->j;
    const char *what = json_string_value(json_object_get(data, "audiobridge"));
    if (!what) return;
    json_t *participants = json_object_get(data, "participants");
    if (json_is_array(participants)) janus_names_set(j, p->rid, participants);
    json_t *id = json_object_get(data, "id");
    if (!strcmp(what, "joined") && json_is_integer(id) && p->state == P_JOIN) {
        const char *sdp = json_string_value(json_object_get(jsep, "sdp"));
        if (!sdp) {
            janus_peer_lose(p, "voice_unavailable", "the media server gave no answer");
            return;
        }
        p->pid = (int64_t)json_integer_value(id);
        json_t *self = json_pack("[{s:I, s:s}]", "id", (json_int_t)p->pid, "display", p->member);
        janus_names_set(j, p->rid, self);
        json_decref(self);
        p->state = P_LIVE;
        free(p->offer);
        p->offer = NULL;
        if (p->muted != p->joined_muted) janus_mute_send(p);
        j->h.answer(p->ud, p, sdp);
        return;
    }
    if (!strcmp(what, "talking") || !strcmp(what, "stopped-talking")) {
        const char *member = json_is_integer(id) ? janus_name_of(j, p->rid, id) : NULL;
        if (member && p->state == P_LIVE) j->h.talking(p->ud, p, member, !strcmp(what, "talking"));
        return;
    }
    if (!strcmp(what, "destroyed")) {
        janus_peer_lose(p, "voice_lost", "the voice room was closed");
        return;
    }
    json_t *leaving = json_object_get(data, "leaving");
    if (json_is_integer(leaving)) janus_name_del(j, p->rid, leaving);
    json_t *code = json_object_get(data, "error_code");
    if (json_is_integer(code) && p->state == P_JOIN) {
        if (json_integer_value(code) == JANUS_NO_SUCH_ROOM && !p->retried) {
            p->retried = 1;        /* another replica destroyed it just now: make it again */
            janus_peer_create(p);
            return;
        }
        const char *err = json_string_value(json_object_get(data, "error"));
        janus_peer_lose(p, "voice_unavailable", err ? err : "the media server refused the join");
    }
}

/* ---- the session ---- */

static void janus_session_start(janus_t *j);

static void janus_session_fail(janus_t *j, const char *why)
{
    int was_up = j->up;
    log_warn("janus: session lost", "{s:s, s:s, s:i}", "url", j->url, "error", why, "retry_ms", (int)j->backoff);
    for (janus_req_t *r = j->reqs, *next; r; r = next) {
        next = r->next;
        httpc_cancel(j->http, r->id);
        janus_req_unlink(r);
    }
    j->up = j->connecting = 0;
    j->session = j->control = 0;
    j->retry_at = uv_now(j->loop) + j->backoff;
    j->backoff = j->backoff * 2 > JANUS_BACKOFF_MAX_MS ? JANUS_BACKOFF_MAX_MS : j->backoff * 2;
    size_t i;
    for (map_entry_t *e = map_first(&j->names, &i); e; e = map_next(&j->names, e, &i)) free(e->value);
    map_free(&j->names);
    map_init(&j->names);
    for (janus_peer_t *p = j->peers, *next; p; p = next) {
        next = p->next;            /* the owner may leave p in its handler */
        p->handle = p->pid = 0;
        janus_peer_lose(p, "voice_lost", "the media server went away");
    }
    if (was_up && j->h.state) j->h.state(j->arg, 0);
}

static void janus_poll(janus_t *j)
{
    char path[64];
    janus_path(path, sizeof path, j, 0);
    char q[96];
    snprintf(q, sizeof q, "%s?maxev=%d", path, JANUS_POLL_EVENTS);
    if (janus_send(j, q, NULL, R_POLL, NULL, NULL) < 0) janus_session_fail(j, "long poll not sent");
}

static janus_peer_t *janus_peer_by_handle(janus_t *j, int64_t handle)
{
    for (janus_peer_t *p = j->peers; p; p = p->next)
        if (p->handle == handle) return p;
    return NULL;
}

/* One event from the long poll (borrowed). */
static void janus_event(janus_t *j, json_t *ev)
{
    const char *what = json_string_value(json_object_get(ev, "janus"));
    json_t *sender = json_object_get(ev, "sender");
    janus_peer_t *p = json_is_integer(sender) ? janus_peer_by_handle(j, (int64_t)json_integer_value(sender)) : NULL;
    if (!what || !p) return;       /* keepalives, the control handle's, handles already left */
    if (!strcmp(what, "event")) {
        json_t *data = json_object_get(json_object_get(ev, "plugindata"), "data");
        if (json_is_object(data)) janus_peer_event(p, data, json_object_get(ev, "jsep"));
    } else if ((!strcmp(what, "hangup") || !strcmp(what, "detached")) && p->state != P_DEAD) {
        janus_peer_lose(p, "voice_lost", "the media connection closed");
    }
}

/* The "janus" field of an answer, or NULL; *err_out the error's reason when it is an error. */
static const char *janus_answer_kind(json_t *root, const char **reason)
{
    const char *kind = json_string_value(json_object_get(root, "janus"));
    *reason = kind && !strcmp(kind, "error")
                  ? json_string_value(json_object_get(json_object_get(root, "error"), "reason"))
                  : NULL;
    if (kind && !strcmp(kind, "error") && !*reason) *reason = "error";
    return kind;
}

static void janus_on_done(void *ud, int status, const char *body, size_t len)
{
    janus_req_t *r = ud;
    janus_t *j = r->j;
    janus_peer_t *p = r->p;
    janus_kind_t kind = r->kind;
    char *room = r->room ? xstrdup(r->room) : NULL;
    janus_req_unlink(r);
    json_t *root = status == 200 ? json_loadb(body, len, 0, NULL) : NULL;
    const char *reason = NULL;
    const char *answer = root && json_is_object(root) ? janus_answer_kind(root, &reason) : NULL;
    char why[96];
    if (!root) snprintf(why, sizeof why, "%s", status < 0 ? gw_strerror(status) : "bad answer");
    else snprintf(why, sizeof why, "%s", reason ? reason : "unexpected answer");
    int ok = root && (json_is_array(root) || (answer && !reason));
    json_t *data = json_object_get(root, "data");
    json_t *pdata = json_object_get(json_object_get(root, "plugindata"), "data");

    switch (kind) {
    case R_SESSION:
    case R_CONTROL: {
        json_t *id = json_object_get(data, "id");
        if (!ok || !json_is_integer(id)) {
            janus_session_fail(j, why);
            break;
        }
        if (kind == R_SESSION) {
            j->session = (int64_t)json_integer_value(id);
            char path[64];
            janus_path(path, sizeof path, j, 0);
            if (janus_send(j, path, json_pack("{s:s, s:s}", "janus", "attach", "plugin", "janus.plugin.audiobridge"),
                           R_CONTROL, NULL, NULL) < 0)
                janus_session_fail(j, "attach not sent");
            break;
        }
        j->control = (int64_t)json_integer_value(id);
        j->up = 1;
        j->connecting = 0;
        j->backoff = JANUS_BACKOFF_MIN_MS;
        j->keepalive_at = uv_now(j->loop) + j->keepalive_ms;
        log_info("janus: session up", "{s:s}", "url", j->url);
        janus_poll(j);
        if (j->h.state) j->h.state(j->arg, 1);
        break;
    }
    case R_KEEPALIVE:              /* "ack"; an error (458: no such session) or no answer ends it */
        if (!ok) janus_session_fail(j, why);
        break;
    case R_POLL:
        if (!ok) {
            janus_session_fail(j, why);
            break;
        }
        if (json_is_array(root)) {
            size_t i;
            json_t *ev;
            json_array_foreach(root, i, ev) {
                if (!j->up) break;  /* a handler's call may not end the session, but be safe */
                janus_event(j, ev);
            }
        } else {
            janus_event(j, root);
        }
        if (j->up) janus_poll(j);
        break;
    case R_ATTACH: {
        json_t *id = json_object_get(data, "id");
        if (!ok || !json_is_integer(id)) {
            janus_peer_lose(p, "voice_unavailable", why);
            break;
        }
        p->handle = (int64_t)json_integer_value(id);
        janus_cands_flush(p);
        janus_peer_create(p);
        break;
    }
    case R_CREATE: {
        json_t *code = json_object_get(pdata, "error_code");
        if (!ok || (json_is_integer(code) && json_integer_value(code) != JANUS_ROOM_EXISTS)) {
            const char *err = json_string_value(json_object_get(pdata, "error"));
            janus_peer_lose(p, "voice_unavailable", err ? err : why);
            break;
        }
        janus_peer_send_join(p);
        break;
    }
    case R_JOIN:                   /* "ack": the answer comes on the long poll */
        if (!ok) janus_peer_lose(p, "voice_unavailable", why);
        break;
    case R_DETACH:                 /* the room emptied here: after the detach, ask who is left */
        if (room && j->up && !map_get(&j->rooms, room)) {
            json_t *b = json_pack("{s:s, s:I}", "request", "listparticipants", "room", (json_int_t)janus_room_id(room));
            janus_plugin_send(j, j->control, b, NULL, R_LIST, NULL, room);
        }
        break;
    case R_LIST: {
        janus_room_t *jr = room ? map_get(&j->rooms, room) : NULL;
        json_t *list = json_object_get(pdata, "participants");
        if (ok && json_is_array(list) && !json_array_size(list) && !jr && j->up) {
            json_t *b = json_pack("{s:s, s:I}", "request", "destroy", "room", (json_int_t)janus_room_id(room));
            janus_plugin_send(j, j->control, b, NULL, R_FIRE, NULL, NULL);
        }
        break;
    }
    case R_FIRE:
        if (!ok) log_debug("janus: request failed", "{s:s}", "error", why);
        break;
    }
    free(room);
    json_decref(root);
}

static void janus_session_start(janus_t *j)
{
    j->connecting = 1;
    if (janus_send(j, "", json_pack("{s:s}", "janus", "create"), R_SESSION, NULL, NULL) < 0)
        janus_session_fail(j, "create not sent");
}

/* Now and then: joins past their deadline, the session's keepalive, the next try at a session. */
static void janus_on_tick(uv_timer_t *t)
{
    janus_t *j = t->data;
    uint64_t now = uv_now(j->loop);
    if (j->up && now >= j->keepalive_at) {
        j->keepalive_at = now + j->keepalive_ms;
        char path[64];
        janus_path(path, sizeof path, j, 0);
        if (janus_send(j, path, json_pack("{s:s}", "janus", "keepalive"), R_KEEPALIVE, NULL, NULL) < 0)
            log_warn("janus: keepalive not sent", "{s:s}", "url", j->url);
    }
    for (janus_peer_t *p = j->peers, *next; p; p = next) {
        next = p->next;
        if (p->state < P_LIVE && now >= p->deadline) janus_peer_lose(p, "voice_timeout", "the media server is slow");
    }
    if (!j->up && !j->connecting && now >= j->retry_at) janus_session_start(j);
}

/* ---- the public side ---- */

janus_t *janus_new(uv_loop_t *loop, const char *url, unsigned timeout_ms, unsigned keepalive_ms,
                   const janus_handlers_t *handlers, void *arg)
{
    janus_t *j = xcalloc(1, sizeof *j);
    j->http = httpc_new(loop, JANUS_INFLIGHT);
    if (!j->http) {
        free(j);
        return NULL;
    }
    j->loop = loop;
    j->url = xstrdup(url);
    size_t n = strlen(j->url);
    while (n && j->url[n - 1] == '/') j->url[--n] = '\0';
    j->timeout_ms = timeout_ms;
    j->keepalive_ms = keepalive_ms;
    j->h = *handlers;
    j->arg = arg;
    j->backoff = JANUS_BACKOFF_MIN_MS;
    map_init(&j->rooms);
    map_init(&j->names);
    j->tick = xmalloc(sizeof *j->tick);
    uv_timer_init(loop, j->tick);
    j->tick->data = j;
    unsigned every = keepalive_ms < 1000 ? keepalive_ms : 1000;   /* a short keepalive ticks sooner */
    uv_timer_start(j->tick, janus_on_tick, every, every);
    janus_session_start(j);
    return j;
}

static void janus_tick_closed(uv_handle_t *h) { free(h); }

static void janus_peer_free(janus_peer_t *p)
{
    json_decref(p->cands);
    free(p->room);
    free(p->member);
    free(p->offer);
    free(p);
}

void janus_free(janus_t *j)
{
    if (!j) return;
    for (janus_req_t *r = j->reqs, *next; r; r = next) {
        next = r->next;
        free(r->room);
        free(r);
    }
    httpc_free(j->http);
    for (janus_peer_t *p = j->peers, *next; p; p = next) {
        next = p->next;
        janus_peer_free(p);
    }
    size_t i;
    for (map_entry_t *e = map_first(&j->rooms, &i); e; e = map_next(&j->rooms, e, &i)) free(e->value);
    for (map_entry_t *e = map_first(&j->names, &i); e; e = map_next(&j->names, e, &i)) free(e->value);
    map_free(&j->rooms);
    map_free(&j->names);
    uv_close((uv_handle_t *)j->tick, janus_tick_closed);
    free(j->url);
    free(j);
}

int janus_up(const janus_t *j) { return j && j->up; }

size_t janus_peer_count(const janus_t *j) { return j ? j->npeers : 0; }

janus_peer_t *janus_peer_join(janus_t *j, const char *room, const char *member, const char *offer_sdp, int muted,
                              void *ud, int *err)
{
    if (!j->up) {
        *err = GW_EDOWN;
        return NULL;
    }
    if (!room || !member || !offer_sdp) {
        *err = GW_EINVAL;
        return NULL;
    }
    janus_peer_t *p = xcalloc(1, sizeof *p);
    p->j = j;
    p->ud = ud;
    p->room = xstrdup(room);
    p->member = xstrdup(member);
    p->offer = xstrdup(offer_sdp);
    p->rid = janus_room_id(room);
    p->muted = muted;
    p->state = P_ATTACH;
    p->deadline = uv_now(j->loop) + 2 * (uint64_t)j->timeout_ms;   /* attach, create and join */
    char path[64];
    janus_path(path, sizeof path, j, 0);
    int rc = janus_send(j, path, json_pack("{s:s, s:s}", "janus", "attach", "plugin", "janus.plugin.audiobridge"),
                        R_ATTACH, p, NULL);
    if (rc < 0) {
        janus_peer_free(p);
        *err = rc == GW_ELIMIT ? GW_EDOWN : rc;
        return NULL;
    }
    p->next = j->peers;
    if (j->peers) j->peers->prev = p;
    j->peers = p;
    j->npeers++;
    janus_room_t *jr = map_get(&j->rooms, room);
    if (!jr) {
        jr = xcalloc(1, sizeof *jr);
        jr->rid = p->rid;
        map_set(&j->rooms, room, jr);
    }
    jr->npeers++;
    return p;
}

int janus_peer_trickle(janus_peer_t *p, json_t *candidate)
{
    if (p->state == P_DEAD) return 0;
    if (candidate && (!json_is_object(candidate) || !json_is_string(json_object_get(candidate, "candidate"))))
        return GW_EINVAL;
    if (!p->handle) {              /* before the attach's answer: held, in bounds */
        if (!candidate) p->cands_done = 1;
        else {
            if (!p->cands) p->cands = json_array();
            if (json_array_size(p->cands) >= JANUS_CANDS_MAX) return GW_EINVAL;
            json_array_append(p->cands, candidate);
        }
        return 0;
    }
    char path[64];
    janus_path(path, sizeof path, p->j, p->handle);
    json_t *msg = candidate ? json_pack("{s:s, s:O}", "janus", "trickle", "candidate", candidate)
                            : json_pack("{s:s, s:{s:b}}", "janus", "trickle", "candidate", "completed", 1);
    janus_send(p->j, path, msg, R_FIRE, NULL, NULL);
    return 0;
}

void janus_peer_mute(janus_peer_t *p, int muted)
{
    p->muted = muted;
    if (p->state == P_LIVE && p->muted != p->joined_muted) janus_mute_send(p);
}

void janus_peer_leave(janus_peer_t *p)
{
    janus_t *j = p->j;
    janus_cancel_peer(j, p);
    janus_room_t *jr = map_get(&j->rooms, p->room);
    int emptied = jr && --jr->npeers == 0;
    if (emptied) free(map_del(&j->rooms, p->room));
    if (p->handle && j->up) {      /* an emptied room is destroyed if no other replica's member is in it */
        char path[64];
        janus_path(path, sizeof path, j, p->handle);
        janus_send(j, path, json_pack("{s:s}", "janus", "detach"), R_DETACH, NULL, emptied ? p->room : NULL);
    }
    if (p->prev) p->prev->next = p->next;
    else j->peers = p->next;
    if (p->next) p->next->prev = p->prev;
    j->npeers--;
    janus_peer_free(p);
}
