/* hub_voice: voice rooms through the media server (janus_url; net/janus.h), the hub's side.
 * A member in voice has one entry here and one janus peer; the browser speaks only to chatgw
 * (voice_join with its offer, voice_trickle), and gets voice_answer, then the room's voice
 * events (voice, voice_talking) and, when its voice ends without its asking, voice_lost (the
 * web client joins again with backoff). Without janus_url every voice_* message answers
 * voice_unavailable and the browsers use the mesh (signal). */
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "hub/hub_int.h"
#include "net/janus.h"

#define HUB_VOICE_SDP_MAX 65536     /* a browser's audio offer is a few KB */

typedef struct hub_voice_entry_s {
    struct hub_voice_entry_s *next;
    hub_t *hub;
    hub_client_t *client;
    char room[PROTO_MAX_ROOM + 1];
    janus_peer_t *peer;
    int muted, live;
} hub_voice_entry_t;

struct hub_voice_s {
    janus_t *janus;
    hub_voice_entry_t *entries;
    map_t talking;                 /* "room\nmember" -> (void *)1 while talking */
};

static sbuf_t *hub_voice_frame(json_t *o)
{
    sbuf_t *b = proto_encode(o);
    json_decref(o);
    return b;
}

/* error {code, message, ref}: ref is the message's cid, else {type: "voice_join", room}. */
static void hub_voice_error(hub_t *hub, hub_client_t *cl, const char *code, const char *message, json_t *cid,
                            const char *room)
{
    json_t *ref = cid ? json_incref(cid) : json_pack("{s:s, s:s}", "type", "voice_join", "room", room);
    hub_send(hub, cl, proto_error(code, message, ref));
    json_decref(ref);
}

/* voice {room, member, on, muted} to every member of the room (the joiner too), and with Redis
 * to the other replicas' members. voice_talking is not published: every replica with a member
 * in voice in the room hears the mixer's talking events itself. */
static void hub_voice_announce(hub_t *hub, const char *room, const char *member, int on, int muted)
{
    hub_room_t *r = hub_room_get(hub, room);
    if (!r) return;
    sbuf_t *f = hub_voice_frame(json_pack("{s:s, s:s, s:s, s:b, s:b}", "type", "voice", "room", room, "member",
                                          member, "on", on, "muted", muted));
    if (!f) return;
    if (hub->remote) {
        int rc = bus_room_publish(hub->bus, r->name, f->data, f->len);
        if (rc < 0) log_debug("bus: voice event not published", "{s:s, s:s}", "room", r->name, "error", gw_strerror(rc));
    }
    hub_room_send(hub, r, f, NULL, NULL);
}

static hub_voice_entry_t **hub_voice_find(hub_voice_t *v, const hub_client_t *cl, const char *room)
{
    for (hub_voice_entry_t **e = &v->entries; *e; e = &(*e)->next)
        if ((*e)->client == cl && !strcmp((*e)->room, room)) return e;
    return NULL;
}

static void hub_voice_talking_clear(hub_voice_t *v, const char *room, const char *member)
{
    char key[PROTO_MAX_ROOM + 64];
    snprintf(key, sizeof key, "%s\n%s", room, member);
    map_del(&v->talking, key);
}

/* Unlinks and frees *at; its peer leaves the mixer. announce: tell the room. */
static void hub_voice_drop(hub_t *hub, hub_voice_entry_t **at, int announce)
{
    hub_voice_entry_t *e = *at;
    *at = e->next;
    if (e->peer) janus_peer_leave(e->peer);
    hub_voice_talking_clear(hub->voice, e->room, e->client->id);
    if (announce && e->live) hub_voice_announce(hub, e->room, e->client->id, 0, e->muted);
    METRIC_SUB(hub->gw->metrics.voice_sfu_members, e->live ? 1 : 0);
    free(e);
}

/* ---- janus's handlers ---- */

static void hub_voice_on_answer(void *ud, janus_peer_t *p, const char *sdp)
{
    (void)p;
    hub_voice_entry_t *e = ud;
    hub_t *hub = e->hub;
    e->live = 1;
    METRIC_ADD(hub->gw->metrics.voice_sfu_members, 1);
    hub_send(hub, e->client, hub_voice_frame(json_pack("{s:s, s:s, s:{s:s, s:s}}", "type", "voice_answer", "room",
                                                       e->room, "data", "type", "answer", "sdp", sdp)));
    hub_voice_announce(hub, e->room, e->client->id, 1, e->muted);
    /* who else is in voice here, for the newcomer's list */
    for (hub_voice_entry_t *o = hub->voice->entries; o; o = o->next)
        if (o != e && o->live && !strcmp(o->room, e->room))
            hub_send(hub, e->client, hub_voice_frame(json_pack("{s:s, s:s, s:s, s:b, s:b}", "type", "voice", "room",
                                                               o->room, "member", o->client->id, "on", 1, "muted",
                                                               o->muted)));
}

static void hub_voice_on_lost(void *ud, janus_peer_t *p, const char *code, const char *message)
{
    (void)p;
    hub_voice_entry_t *e = ud;
    hub_t *hub = e->hub;
    hub_voice_entry_t **at = hub_voice_find(hub->voice, e->client, e->room);
    if (!at) return;
    log_info("voice lost", "{s:s, s:s, s:s, s:s}", "client", e->client->id, "room", e->room, "code", code,
             "error", message);
    hub_send(hub, e->client, hub_voice_frame(json_pack("{s:s, s:s, s:s, s:s}", "type", "voice_lost", "room", e->room,
                                                       "code", code, "message", message)));
    METRIC_INC(hub->gw->metrics.voice_lost);
    hub_voice_drop(hub, at, 1);
}

static void hub_voice_on_talking(void *ud, janus_peer_t *p, const char *member, int talking)
{
    (void)p;
    hub_voice_entry_t *e = ud;
    hub_t *hub = e->hub;
    char key[PROTO_MAX_ROOM + 64];
    snprintf(key, sizeof key, "%s\n%s", e->room, member);
    int was = map_get(&hub->voice->talking, key) != NULL;
    if (was == talking) return;    /* every local peer of the room reports the same event */
    if (talking) map_set(&hub->voice->talking, key, (void *)1);
    else map_del(&hub->voice->talking, key);
    hub_room_t *r = hub_room_get(hub, e->room);
    if (!r) return;
    sbuf_t *f = hub_voice_frame(json_pack("{s:s, s:s, s:s, s:b}", "type", "voice_talking", "room", e->room, "member",
                                          member, "talking", talking));
    if (f) hub_room_send(hub, r, f, NULL, NULL);
}

static void hub_voice_on_state(void *arg, int up)
{
    hub_t *hub = arg;
    if (!up && hub->voice) {       /* every voice here ended: nobody is talking */
        map_free(&hub->voice->talking);
        map_init(&hub->voice->talking);
    }
    __atomic_store_n(&hub->gw->metrics.janus_up, (uint64_t)(up ? 1 : 0), __ATOMIC_RELAXED);
}

/* ---- the hub's calls ---- */

void hub_voice_open(hub_t *hub)
{
    const char *url = hub->gw->cfg.janus_url;
    if (!url || !url[0]) return;
    hub_voice_t *v = xcalloc(1, sizeof *v);
    map_init(&v->talking);
    static const janus_handlers_t handlers = {hub_voice_on_answer, hub_voice_on_lost, hub_voice_on_talking,
                                              hub_voice_on_state};
    v->janus = janus_new(hub->gw->loop, url, (unsigned)hub->gw->cfg.janus_timeout_ms,
                         (unsigned)hub->gw->cfg.janus_keepalive_ms, &handlers, hub);
    if (!v->janus) {
        log_error("janus: no client (out of memory); voice stays peer to peer", "{s:s}", "url", url);
        map_free(&v->talking);
        free(v);
        return;
    }
    hub->voice = v;
}

void hub_voice_close(hub_t *hub)
{
    hub_voice_t *v = hub->voice;
    if (!v) return;
    while (v->entries) {
        hub_voice_entry_t *e = v->entries;
        v->entries = e->next;
        free(e);                   /* janus_free frees the peers */
    }
    janus_free(v->janus);
    map_free(&v->talking);
    free(v);
    hub->voice = NULL;
}

int hub_voice_state(hub_t *hub)
{
    if (!hub || !hub->voice) return -1;
    return janus_up(hub->voice->janus);
}

static void hub_voice_join(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    hub_voice_t *v = hub->voice;
    const char *sdp = json_string_value(json_object_get(in->data, "sdp"));
    const char *type = json_string_value(json_object_get(in->data, "type"));
    if (!sdp || !type || strcmp(type, "offer")) {
        hub_voice_error(hub, cl, "bad_field", "field 'data' must be an SDP offer {type:\"offer\", sdp}", in->cid,
                        r->name);
        return;
    }
    if (strlen(sdp) > HUB_VOICE_SDP_MAX) {
        hub_voice_error(hub, cl, "too_large", "the SDP offer is over 64 KiB", in->cid, r->name);
        return;
    }
    hub_voice_entry_t **old = hub_voice_find(v, cl, r->name);
    int muted = hub_room_member(r, cl)->muted;
    if (old) hub_voice_drop(hub, old, 0);   /* a new offer replaces the old voice (a re-join) */
    hub_voice_entry_t *e = xcalloc(1, sizeof *e);
    e->hub = hub;
    e->client = cl;
    snprintf(e->room, sizeof e->room, "%s", r->name);
    e->muted = muted;
    int err = 0;
    e->peer = janus_peer_join(v->janus, r->name, cl->id, sdp, muted, e, &err);
    if (!e->peer) {
        free(e);
        METRIC_INC(hub->gw->metrics.voice_refused);
        hub_voice_error(hub, cl, "voice_unavailable",
                        err == GW_EDOWN ? "the media server is unreachable; text chat goes on" : "voice join failed",
                        in->cid, r->name);
        return;
    }
    e->next = v->entries;
    v->entries = e;
}

void hub_voice_handle(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    hub_voice_t *v = hub->voice;
    if (!v) {
        if (in->type == PROTO_VOICE_JOIN)
            hub_voice_error(hub, cl, "voice_unavailable", "no media server here: voice is peer to peer (signal)",
                            in->cid, r->name);
        return;
    }
    if (in->type == PROTO_VOICE_JOIN) {
        hub_voice_join(hub, cl, r, in);
        return;
    }
    hub_voice_entry_t **at = hub_voice_find(v, cl, r->name);
    if (!at) return;               /* a late trickle or a second leave: nothing to do */
    if (in->type == PROTO_VOICE_LEAVE) {
        hub_voice_drop(hub, at, 1);
        return;
    }
    json_t *c = json_is_null(in->data) ? NULL : in->data;
    if (janus_peer_trickle((*at)->peer, c) < 0)
        hub_voice_error(hub, cl, "bad_field", "field 'data' must be an ICE candidate {candidate, sdpMid, "
                        "sdpMLineIndex} or null (at most 64 before the media server answers)", in->cid, r->name);
}

void hub_voice_mute(hub_t *hub, hub_client_t *cl, hub_room_t *r, int muted)
{
    if (!hub->voice) return;
    hub_voice_entry_t **at = hub_voice_find(hub->voice, cl, r->name);
    if (!at) return;
    hub_voice_entry_t *e = *at;
    e->muted = muted;
    janus_peer_mute(e->peer, muted);
    if (muted) hub_voice_talking_clear(hub->voice, e->room, cl->id);
}

void hub_voice_left(hub_t *hub, hub_client_t *cl, hub_room_t *r)
{
    if (!hub->voice) return;
    hub_voice_entry_t **at = hub_voice_find(hub->voice, cl, r->name);
    if (at) hub_voice_drop(hub, at, 1);
}

void hub_voice_annotate(hub_t *hub, hub_client_t *cl, hub_room_t *r, json_t *root)
{
    json_int_t n = 0;
    for (hub_voice_entry_t *e = hub->voice ? hub->voice->entries : NULL; e; e = e->next)
        if (e->client != cl && !strcmp(e->room, r->name)) n++;
    json_object_set_new(root, "voice_members", json_integer(n));
}
