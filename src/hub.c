/* hub: rooms, presence, history and fan-out for the chat endpoint; see hub.h.
 *
 * Ownership: the hub owns clients (one per chat connection, freed on detach) and rooms (freed
 * when their last member leaves). A member entry links one client to one room; both sides keep
 * it consistent through hub_room_leave. History entries hold a reference on the encoded msg
 * payload, so a history reply splices stored bytes without re-encoding. */
#include "hub.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "log.h"
#include "map.h"
#include "proto.h"
#include "ws.h"

#define HUB_ID_BYTES 12            /* 96 random bits, 16 base64url characters */
#define HUB_EPOCH_BYTES 6

typedef struct hub_room_s hub_room_t;

typedef struct {
    uint64_t seq;
    sbuf_t *payload;
} hub_hist_t;

typedef struct {
    struct hub_client_s *client;
    int muted;
} hub_member_t;

struct hub_room_s {
    char *name;
    char epoch[HUB_EPOCH_BYTES * 2 + 1];
    uint64_t seq;
    hub_member_t *members;
    size_t nmembers, cap;
    hub_hist_t *hist;              /* ring of history_size entries */
    size_t hist_cap, hist_len, hist_head;
};

typedef struct hub_client_s {
    conn_t *conn;
    char id[24];
    char name[PROTO_MAX_NAME * 4 + 1];
    hub_room_t **rooms;
    size_t nrooms;
    double tokens;
    uint64_t tokens_ms;
} hub_client_t;

struct hub_s {
    gw_t *gw;
    map_t rooms;                   /* name -> hub_room_t */
    map_t clients;                 /* id -> hub_client_t */
};

/* ---- identity ---- */

static void hub_random_b64url(char *out, size_t nbytes)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[33];
    if (RAND_bytes(raw, (int)nbytes) != 1) abort();  /* no entropy: ids would be guessable */
    size_t o = 0;
    for (size_t i = 0; i + 3 <= nbytes; i += 3) {     /* nbytes is a multiple of 3 */
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        for (int k = 3; k >= 0; k--) out[o++] = tab[(v >> (6 * k)) & 63];
    }
    out[o] = '\0';
}

static void hub_random_hex(char *out, size_t nbytes)
{
    unsigned char raw[32];
    if (RAND_bytes(raw, (int)nbytes) != 1) abort();
    for (size_t i = 0; i < nbytes; i++) sprintf(out + 2 * i, "%02x", raw[i]);
}

static void hub_random_name(char *out, size_t len)
{
    static const char *const adj[] = {"Swift", "Calm", "Brave", "Sunny", "Quiet", "Lucky", "Witty", "Gentle",
                                      "Bold", "Merry", "Clever", "Kind", "Bright", "Cosy", "Jolly", "Noble"};
    static const char *const animal[] = {"🦊 Fox",   "🐼 Panda", "🐨 Koala", "🦉 Owl",    "🐙 Octopus", "🦁 Lion",
                                         "🐧 Penguin", "🐢 Turtle", "🦄 Unicorn", "🐳 Whale", "🦋 Butterfly", "🐝 Bee",
                                         "🦜 Parrot", "🐺 Wolf",  "🐸 Frog",   "🦔 Hedgehog"};
    unsigned char r[2];
    if (RAND_bytes(r, 2) != 1) abort();
    const char *a = animal[r[1] % 16];
    /* "🦊 Swift Fox": emoji first, as free4chat showed identities */
    const char *space = strchr(a, ' ');
    snprintf(out, len, "%.*s %s %s", (int)(space - a), a, adj[r[0] % 16], space + 1);
}

static int64_t hub_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- sending ---- */

static void hub_send(hub_t *hub, hub_client_t *cl, sbuf_t *payload)
{
    server_msg_t m;
    server_msg_init(&m, payload);
    server_conn_send_msg(cl->conn, &m);
    server_msg_release(&m);
    (void)hub;
}

static void hub_send_error(hub_t *hub, hub_client_t *cl, const char *code, const char *message, json_t *ref,
                           int drop_reason)
{
    if (drop_reason >= 0) METRIC_INC(hub->gw->metrics.msgs_dropped[drop_reason]);
    hub_send(hub, cl, proto_error(code, message, ref));
}

/* Fans payload out to every member of room except skip (may be NULL). Takes the reference. */
static void hub_room_fanout(hub_t *hub, hub_room_t *room, sbuf_t *payload, const hub_client_t *skip)
{
    server_msg_t m;
    server_msg_init(&m, payload);
    size_t n = 0;
    for (size_t i = 0; i < room->nmembers; i++) {
        hub_client_t *cl = room->members[i].client;
        if (cl == skip) continue;
        server_conn_send_msg(cl->conn, &m);
        n++;
    }
    METRIC_ADD(hub->gw->metrics.msgs_delivered, n);
    server_msg_release(&m);
}

/* ---- rooms ---- */

static hub_room_t *hub_room_get(hub_t *hub, const char *name) { return map_get(&hub->rooms, name); }

static hub_room_t *hub_room_create(hub_t *hub, const char *name)
{
    hub_room_t *r = xcalloc(1, sizeof *r);
    r->name = xstrdup(name);
    hub_random_hex(r->epoch, HUB_EPOCH_BYTES);
    r->hist_cap = (size_t)hub->gw->cfg.history_size;
    if (r->hist_cap) r->hist = xcalloc(r->hist_cap, sizeof *r->hist);
    map_set(&hub->rooms, name, r);
    METRIC_INC(hub->gw->metrics.rooms);
    return r;
}

static void hub_room_destroy(hub_t *hub, hub_room_t *r)
{
    map_del(&hub->rooms, r->name);
    METRIC_SUB(hub->gw->metrics.rooms, 1);
    for (size_t i = 0; i < r->hist_len; i++) sbuf_unref(r->hist[(r->hist_head + i) % r->hist_cap].payload);
    free(r->hist);
    free(r->members);
    free(r->name);
    free(r);
}

static hub_member_t *hub_room_member(hub_room_t *r, const hub_client_t *cl)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (r->members[i].client == cl) return &r->members[i];
    return NULL;
}

static json_t *hub_member_json(const hub_member_t *m)
{
    return json_pack("{s:s, s:s, s:b}", "id", m->client->id, "name", m->client->name, "muted", m->muted);
}

static json_t *hub_room_members_json(const hub_room_t *r)
{
    json_t *a = json_array();
    for (size_t i = 0; i < r->nmembers; i++) json_array_append_new(a, hub_member_json(&r->members[i]));
    return a;
}

static void hub_hist_push(hub_room_t *r, uint64_t seq, sbuf_t *payload)
{
    if (!r->hist_cap) return;
    size_t slot;
    if (r->hist_len < r->hist_cap) {
        slot = (r->hist_head + r->hist_len++) % r->hist_cap;
    } else {
        slot = r->hist_head;
        sbuf_unref(r->hist[slot].payload);
        r->hist_head = (r->hist_head + 1) % r->hist_cap;
    }
    r->hist[slot] = (hub_hist_t){seq, sbuf_ref(payload)};
}

/* Collects the history after since (NULL = all kept) into out (borrowed pointers).
 * Returns the count, or -1 when since is older than the ring or from another epoch. */
static long hub_hist_since(const hub_room_t *r, const char *since, sbuf_t **out)
{
    uint64_t after = 0;
    if (since) {
        char epoch[40];
        if (proto_since_parse(since, epoch, sizeof epoch, &after) < 0 || strcmp(epoch, r->epoch)) return -1;
        if (after > r->seq) return -1;
        uint64_t oldest = r->hist_len ? r->hist[r->hist_head].seq : r->seq + 1;
        if (after + 1 < oldest) return -1;
    }
    long n = 0;
    for (size_t i = 0; i < r->hist_len; i++) {
        const hub_hist_t *h = &r->hist[(r->hist_head + i) % r->hist_cap];
        if (h->seq > after) out[n++] = h->payload;
    }
    return n;
}

/* Sends `room` (snapshot + history) to cl, or history_gap then the snapshot with what is kept. */
static void hub_room_snapshot(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since)
{
    sbuf_t **hist = xcalloc(r->hist_len + 1, sizeof *hist);
    long n = hub_hist_since(r, since, hist);
    if (n < 0) {
        METRIC_INC(hub->gw->metrics.history_gaps);
        json_t *ref = json_string(r->name);
        hub_send(hub, cl, proto_error("history_gap", "messages after 'since' are no longer kept; history restarts", ref));
        json_decref(ref);
        n = hub_hist_since(r, NULL, hist);
    }
    json_t *members = hub_room_members_json(r);
    hub_send(hub, cl, proto_room(r->name, members, hist, (size_t)n));
    json_decref(members);
    free(hist);
}

static int hub_client_in(const hub_client_t *cl, const hub_room_t *r)
{
    for (size_t i = 0; i < cl->nrooms; i++)
        if (cl->rooms[i] == r) return 1;
    return 0;
}

/* Joins cl to the room name. Returns NULL on success or an error code string. */
static const char *hub_room_join(hub_t *hub, hub_client_t *cl, const char *name, const char *since)
{
    const config_t *cfg = &hub->gw->cfg;
    hub_room_t *r = hub_room_get(hub, name);
    if (r && hub_client_in(cl, r)) {
        hub_room_snapshot(hub, r, cl, since);
        return NULL;
    }
    if (cl->nrooms >= (size_t)cfg->max_rooms_per_conn) return "room_full";
    if (r && r->nmembers >= (size_t)cfg->max_room_members) return "room_full";
    if (!r) r = hub_room_create(hub, name);
    if (r->nmembers == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 4;
        r->members = xrealloc(r->members, r->cap * sizeof *r->members);
    }
    hub_member_t *m = &r->members[r->nmembers++];
    *m = (hub_member_t){cl, 0};
    cl->rooms = xrealloc(cl->rooms, (cl->nrooms + 1) * sizeof *cl->rooms);
    cl->rooms[cl->nrooms++] = r;
    METRIC_INC(hub->gw->metrics.room_members);
    hub_room_snapshot(hub, r, cl, since);
    hub_room_fanout(hub, r, proto_presence("join", r->name, cl->id, cl->name, 0), cl);
    log_debug("join", "{s:s, s:s, s:s}", "client", cl->id, "room", r->name, "ip", server_conn_ip(cl->conn));
    return NULL;
}

static void hub_room_leave(hub_t *hub, hub_client_t *cl, hub_room_t *r)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (r->members[i].client == cl) {
            r->members[i] = r->members[--r->nmembers];
            break;
        }
    for (size_t i = 0; i < cl->nrooms; i++)
        if (cl->rooms[i] == r) {
            cl->rooms[i] = cl->rooms[--cl->nrooms];
            break;
        }
    METRIC_SUB(hub->gw->metrics.room_members, 1);
    if (!r->nmembers) {
        hub_room_destroy(hub, r);
        return;
    }
    hub_room_fanout(hub, r, proto_presence("leave", r->name, cl->id, cl->name, 0), NULL);
}

static uint64_t hub_room_publish(hub_t *hub, hub_room_t *r, const char *from_id, const char *from_name,
                                 const char *text, json_t *extra, char *id_out, size_t id_len)
{
    uint64_t seq = ++r->seq;
    sbuf_t *payload = proto_msg(r->name, r->epoch, seq, from_id, from_name, text, hub_wall_ms(), extra);
    hub_hist_push(r, seq, payload);
    if (id_out) snprintf(id_out, id_len, "%s:%" PRIu64, r->epoch, seq);
    hub_room_fanout(hub, r, payload, NULL);
    return seq;
}

/* ---- client messages ---- */

static hub_client_t *hub_client_find(hub_t *hub, const char *id) { return map_get(&hub->clients, id); }

/* Token bucket: rate_msgs_per_sec, burst rate_burst. */
static int hub_client_allow(hub_t *hub, hub_client_t *cl)
{
    const config_t *cfg = &hub->gw->cfg;
    uint64_t now = gw_now_ms(hub->gw);
    cl->tokens += (double)(now - cl->tokens_ms) * cfg->rate_msgs_per_sec / 1000.0;
    if (cl->tokens > (double)cfg->rate_burst) cl->tokens = (double)cfg->rate_burst;
    cl->tokens_ms = now;
    if (cl->tokens < 1.0) return 0;
    cl->tokens -= 1.0;
    return 1;
}

static hub_room_t *hub_member_room(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    hub_room_t *r = hub_room_get(hub, in->room);
    if (r && hub_client_in(cl, r)) return r;
    hub_send_error(hub, cl, "not_in_room", "join the room first", in->cid, METRICS_DROP_NOT_IN_ROOM);
    return NULL;
}

static void hub_on_join(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    if (in->name) snprintf(cl->name, sizeof cl->name, "%s", in->name);
    const char *err = hub_room_join(hub, cl, in->room, in->since);
    if (err) {
        json_t *ref = json_string(in->room);
        hub_send_error(hub, cl, err, "the room or your room count is at its limit", ref, METRICS_DROP_POLICY);
        json_decref(ref);
    }
}

static void hub_on_msg(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    hub_room_t *r = hub_member_room(hub, cl, in);
    if (!r) return;
    char id[64];
    hub_room_publish(hub, r, cl->id, cl->name, in->text, NULL, id, sizeof id);
    hub_send(hub, cl, proto_ack(in->cid, id));
}

static void hub_on_dm(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    hub_client_t *to = hub_client_find(hub, in->to);
    if (!to) {
        hub_send_error(hub, cl, "unknown_peer", "no such connection", in->cid, METRICS_DROP_UNKNOWN_PEER);
        return;
    }
    hub_send(hub, to, proto_dm(cl->id, cl->name, in->text, hub_wall_ms()));
    METRIC_INC(hub->gw->metrics.msgs_delivered);
    if (in->cid) hub_send(hub, cl, proto_ack(in->cid, NULL));
}

static void hub_on_signal(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    hub_room_t *r = hub_member_room(hub, cl, in);
    if (!r) return;
    hub_client_t *to = hub_client_find(hub, in->to);
    if (!to || to == cl || !hub_room_member(r, to)) {
        hub_send_error(hub, cl, "unknown_peer", "no such member in this room", in->cid, METRICS_DROP_UNKNOWN_PEER);
        return;
    }
    hub_send(hub, to, proto_signal(r->name, cl->id, in->data));
    METRIC_INC(hub->gw->metrics.msgs_delivered);
}

static void hub_on_mute(hub_t *hub, hub_client_t *cl, const proto_in_t *in, int muted)
{
    hub_room_t *r = hub_member_room(hub, cl, in);
    if (!r) return;
    hub_room_member(r, cl)->muted = muted;
    hub_room_fanout(hub, r, proto_presence(muted ? "mute" : "unmute", r->name, cl->id, cl->name, muted), cl);
}

static void hub_on_history(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    hub_room_t *r = hub_member_room(hub, cl, in);
    if (!r) return;
    sbuf_t **hist = xcalloc(r->hist_len + 1, sizeof *hist);
    long n = hub_hist_since(r, in->since, hist);
    if (n < 0) {
        METRIC_INC(hub->gw->metrics.history_gaps);
        json_t *ref = json_string(r->name);
        hub_send(hub, cl, proto_error("history_gap", "messages after 'since' are no longer kept", ref));
        json_decref(ref);
    } else {
        hub_send(hub, cl, proto_history(r->name, hist, (size_t)n));
    }
    free(hist);
}

static void hub_dispatch(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    switch (in->type) {
    case PROTO_JOIN: hub_on_join(hub, cl, in); break;
    case PROTO_LEAVE: {
        hub_room_t *r = hub_member_room(hub, cl, in);
        if (r) hub_room_leave(hub, cl, r);
        break;
    }
    case PROTO_MSG: hub_on_msg(hub, cl, in); break;
    case PROTO_DM: hub_on_dm(hub, cl, in); break;
    case PROTO_SIGNAL: hub_on_signal(hub, cl, in); break;
    case PROTO_MUTE: hub_on_mute(hub, cl, in, 1); break;
    case PROTO_UNMUTE: hub_on_mute(hub, cl, in, 0); break;
    case PROTO_HISTORY: hub_on_history(hub, cl, in); break;
    case PROTO_CUSTOM:
        hub_send_error(hub, cl, "bad_type", "no handler for this message type", in->cid, METRICS_DROP_INVALID);
        break;
    }
}

static void hub_message(gw_t *gw, conn_t *c, int opcode, uint8_t *data, size_t len)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = server_conn_data(c);
    METRIC_INC(gw->metrics.msgs_received);
    if (!hub_client_allow(hub, cl)) {
        hub_send_error(hub, cl, "rate_limited", "slow down", NULL, METRICS_DROP_RATE_LIMITED);
        return;
    }
    if (opcode != WS_OP_TEXT) {
        hub_send_error(hub, cl, "bad_type", "binary frames are not part of the protocol", NULL, METRICS_DROP_INVALID);
        return;
    }
    proto_in_t in;
    proto_err_t err;
    if (proto_decode((const char *)data, len, (size_t)gw->cfg.max_text_bytes, &in, &err) < 0) {
        int reason = !strcmp(err.code, "too_large") ? METRICS_DROP_TOO_LARGE : METRICS_DROP_INVALID;
        hub_send_error(hub, cl, err.code, err.message, NULL, reason);
        return;
    }
    hub_dispatch(hub, cl, &in);
    proto_in_free(&in);
}

/* ---- connection lifecycle ---- */

/* The room named by the URL: ?room=R, or the single path segment of /R. */
static int hub_url_room(const http_request_t *req, char *room, size_t len)
{
    room[0] = '\0';
    int n = http_query_get(req->query, "room", room, len);
    if (n == -2) return -1;
    if (n < 0 && strcmp(req->path, "/ws")) snprintf(room, len, "%s", req->path + 1);
    return room[0] && !proto_room_valid(room) ? -1 : 0;
}

static int hub_admit(gw_t *gw, const http_request_t *req, const char *ip, char *reason, size_t len)
{
    char room[PROTO_MAX_ROOM * 2], name[PROTO_MAX_NAME * 8];
    if (hub_url_room(req, room, sizeof room) < 0) {
        snprintf(reason, len, "invalid room name");
        return 400;
    }
    int n = http_query_get(req->query, "name", name, sizeof name);
    if (n == -2 || (n >= 0 && !proto_name_valid(name))) {
        snprintf(reason, len, "invalid name");
        return 400;
    }
    return 0;
}

static void hub_attach(gw_t *gw, conn_t *c, const http_request_t *req)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = xcalloc(1, sizeof *cl);
    cl->conn = c;
    do hub_random_b64url(cl->id, HUB_ID_BYTES);
    while (map_get(&hub->clients, cl->id));
    if (http_query_get(req->query, "name", cl->name, sizeof cl->name) < 0) hub_random_name(cl->name, sizeof cl->name);
    cl->tokens = (double)gw->cfg.rate_burst;
    cl->tokens_ms = gw_now_ms(gw);
    map_set(&hub->clients, cl->id, cl);
    server_conn_data_set(c, cl);
    hub_send(hub, cl, proto_welcome(cl->id, cl->name, "chatgw/" CHATGW_VERSION, ""));
    char room[PROTO_MAX_ROOM * 2], since[128];
    if (hub_url_room(req, room, sizeof room) == 0 && room[0]) {
        int has_since = http_query_get(req->query, "since", since, sizeof since) >= 0;
        const char *err = hub_room_join(hub, cl, room, has_since ? since : NULL);
        if (err) {
            json_t *ref = json_string(room);
            hub_send_error(hub, cl, err, "the room or your room count is at its limit", ref, METRICS_DROP_POLICY);
            json_decref(ref);
        }
    }
    log_debug("client attached", "{s:s, s:s, s:I}", "client", cl->id, "ip", server_conn_ip(c),
              "conn", (json_int_t)server_conn_serial(c));
}

static void hub_detach(gw_t *gw, conn_t *c)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = server_conn_data(c);
    if (!cl) return;
    while (cl->nrooms) hub_room_leave(hub, cl, cl->rooms[cl->nrooms - 1]);
    map_del(&hub->clients, cl->id);
    server_conn_data_set(c, NULL);
    free(cl->rooms);
    free(cl);
}

const server_endpoint_t hub_endpoint = {
    .name = "chat",
    .admit = hub_admit,
    .attach = hub_attach,
    .message = hub_message,
    .detach = hub_detach,
};

/* ---- hub ---- */

hub_t *hub_new(gw_t *gw)
{
    hub_t *hub = xcalloc(1, sizeof *hub);
    hub->gw = gw;
    map_init(&hub->rooms);
    map_init(&hub->clients);
    return hub;
}

void hub_free(hub_t *hub)
{
    if (!hub) return;
    size_t i;
    /* rooms outlive clients only if detach was skipped; free what is left */
    for (map_entry_t *e = map_first(&hub->rooms, &i); e; e = map_first(&hub->rooms, &i))
        hub_room_destroy(hub, e->value);
    map_free(&hub->rooms);
    map_free(&hub->clients);
    free(hub);
}

json_t *hub_stats_json(hub_t *hub)
{
    json_t *rooms = json_array();
    size_t i;
    for (map_entry_t *e = map_first(&hub->rooms, &i); e; e = map_next(&hub->rooms, e, &i)) {
        hub_room_t *r = e->value;
        json_array_append_new(rooms, json_pack("{s:s, s:I}", "name", r->name, "online", (json_int_t)r->nmembers));
    }
    return json_pack("{s:I, s:o}", "online", (json_int_t)hub->clients.count, "rooms", rooms);
}

json_t *hub_room_json(hub_t *hub, const char *name)
{
    hub_room_t *r = hub_room_get(hub, name);
    if (!r) return NULL;
    return json_pack("{s:s, s:I, s:o}", "name", r->name, "online", (json_int_t)r->nmembers, "members",
                     hub_room_members_json(r));
}

int hub_room_announce(hub_t *hub, const char *room, const char *from_name, const char *text, char *id_out,
                      size_t id_len)
{
    hub_room_t *r = hub_room_get(hub, room);
    if (!r) return -1;
    hub_room_publish(hub, r, "server", from_name, text, NULL, id_out, id_len);
    return 0;
}
