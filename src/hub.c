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
#include "policy.h"
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
    conn_t *conn;                  /* NULL between admit and attach */
    char id[24];
    char name[PROTO_MAX_NAME * 4 + 1];
    char ip[64];
    json_t *query;                 /* the upgrade URL's query parameters, for on_join */
    hub_room_t **rooms;
    size_t nrooms;
    double tokens;
    uint64_t tokens_ms;
} hub_client_t;

struct hub_s {
    gw_t *gw;
    map_t rooms;                   /* name -> hub_room_t */
    map_t clients;                 /* id -> hub_client_t */
    uv_timer_t *tick;              /* on_tick, once a second; freed by its close callback */
};

#define HUB_CODE_LEN 64            /* error codes from the policy */

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

/* The connection as the policy sees it. */
static policy_conn_t hub_pconn(const hub_client_t *cl, json_t *headers)
{
    return (policy_conn_t){ cl->id, cl->ip, cl->name, cl->query, headers };
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

/* The history after since into hist (room for hist_len entries). When since is no longer
 * kept, cl gets history_gap and hist gets everything kept. Returns the count. */
static size_t hub_hist_recover(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since, sbuf_t **hist)
{
    long n = hub_hist_since(r, since, hist);
    if (n >= 0) return (size_t)n;
    METRIC_INC(hub->gw->metrics.history_gaps);
    json_t *ref = json_string(r->name);
    hub_send(hub, cl, proto_error("history_gap", "messages after 'since' are no longer kept; history restarts", ref));
    json_decref(ref);
    return (size_t)hub_hist_since(r, NULL, hist);
}

/* Sends `room` (snapshot + history) to cl, after history_gap when since is lost. */
static void hub_room_snapshot(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since)
{
    sbuf_t **hist = xcalloc(r->hist_len + 1, sizeof *hist);
    size_t n = hub_hist_recover(hub, r, cl, since, hist);
    json_t *members = hub_room_members_json(r);
    hub_send(hub, cl, proto_room(r->name, members, hist, n));
    json_decref(members);
    free(hist);
}

static int hub_client_in(const hub_client_t *cl, const hub_room_t *r)
{
    for (size_t i = 0; i < cl->nrooms; i++)
        if (cl->rooms[i] == r) return 1;
    return 0;
}

/* Asks on_join; 0 allows, -1 with code. A failed hook applies policy_fail. */
static int hub_policy_join(hub_t *hub, hub_client_t *cl, const char *room, char *code, size_t len)
{
    policy_t *p = hub->gw->policy;
    if (!p || !policy_has(p, POLICY_HOOK_JOIN)) return 0;
    policy_conn_t pc = hub_pconn(cl, NULL);
    int rc = policy_on_join(p, &pc, room, code, len);
    if (rc == POLICY_DROP) return -1;
    if (rc == POLICY_ERROR && strcmp(hub->gw->cfg.policy_fail, "open")) {
        snprintf(code, len, "policy_error");
        return -1;
    }
    return 0;
}

/* Joins cl to the room name. Returns 0, or -1 with an error code in code. */
static int hub_room_join(hub_t *hub, hub_client_t *cl, const char *name, const char *since, char *code, size_t len)
{
    const config_t *cfg = &hub->gw->cfg;
    hub_room_t *r = hub_room_get(hub, name);
    if (r && hub_client_in(cl, r)) {
        hub_room_snapshot(hub, r, cl, since);
        return 0;
    }
    if (cl->nrooms >= (size_t)cfg->max_rooms_per_conn || (r && r->nmembers >= (size_t)cfg->max_room_members)) {
        snprintf(code, len, "room_full");
        return -1;
    }
    if (hub_policy_join(hub, cl, name, code, len) < 0) return -1;
    r = hub_room_get(hub, name);   /* the hook cannot create rooms, but keep the lookup honest */
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
    log_debug("join", "{s:s, s:s, s:s}", "client", cl->id, "room", r->name, "ip", cl->ip);
    return 0;
}

/* Joins, or answers the refusal with an error frame naming the room. Returns 1 on a join. */
static int hub_join_or_error(hub_t *hub, hub_client_t *cl, const char *room, const char *since)
{
    char code[HUB_CODE_LEN];
    if (hub_room_join(hub, cl, room, since, code, sizeof code) == 0) return 1;
    json_t *ref = json_string(room);
    const char *why = !strcmp(code, "room_full") ? "the room or your room count is at its limit"
                      : !strcmp(code, "policy_error") ? "the policy failed; try again"
                                                      : "refused by policy";
    hub_send_error(hub, cl, code, why, ref, !strcmp(code, "room_full") ? METRICS_DROP_ROOM_FULL : METRICS_DROP_POLICY);
    json_decref(ref);
    return 0;
}

static void hub_room_leave(hub_t *hub, hub_client_t *cl, hub_room_t *r)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (r->members[i].client == cl) {   /* keep join order: gw.members promises it */
            memmove(&r->members[i], &r->members[i + 1], (r->nmembers - i - 1) * sizeof *r->members);
            r->nmembers--;
            break;
        }
    for (size_t i = 0; i < cl->nrooms; i++)
        if (cl->rooms[i] == r) {
            cl->rooms[i] = cl->rooms[--cl->nrooms];
            break;
        }
    METRIC_SUB(hub->gw->metrics.room_members, 1);
    if (r->nmembers) hub_room_fanout(hub, r, proto_presence("leave", r->name, cl->id, cl->name, 0), NULL);
    if (hub->gw->policy) {
        policy_conn_t pc = hub_pconn(cl, NULL);
        policy_on_leave(hub->gw->policy, &pc, r->name);
    }
    if (!r->nmembers) hub_room_destroy(hub, r);
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
    /* The hook and the join presence see the new name; a refused join leaves the old one. */
    char old[sizeof cl->name];
    memcpy(old, cl->name, sizeof old);
    if (in->name) snprintf(cl->name, sizeof cl->name, "%s", in->name);
    if (!hub_join_or_error(hub, cl, in->room, in->since)) memcpy(cl->name, old, sizeof old);
}

/* The members of a message the policy returned that ride along on a msg: all but cid (the
 * sender's own correlation id). NULL when the client's message is delivered as it came. */
static json_t *hub_msg_extra(json_t *root, int from_policy)
{
    if (!from_policy || json_object_size(root) <= 3) return NULL;   /* type, room, text */
    json_t *extra = json_copy(root);
    json_object_del(extra, "cid");
    return extra;
}

static void hub_on_msg(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in, int from_policy)
{
    char id[64];
    json_t *extra = hub_msg_extra(in->root, from_policy);
    hub_room_publish(hub, r, cl->id, cl->name, in->text, extra, id, sizeof id);
    json_decref(extra);
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

static void hub_on_signal(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    hub_client_t *to = hub_client_find(hub, in->to);
    if (!to || to == cl || !hub_room_member(r, to)) {
        hub_send_error(hub, cl, "unknown_peer", "no such member in this room", in->cid, METRICS_DROP_UNKNOWN_PEER);
        return;
    }
    hub_send(hub, to, proto_signal(r->name, cl->id, in->data));
    METRIC_INC(hub->gw->metrics.msgs_delivered);
}

static void hub_on_mute(hub_t *hub, hub_client_t *cl, hub_room_t *r, int muted)
{
    hub_room_member(r, cl)->muted = muted;
    hub_room_fanout(hub, r, proto_presence(muted ? "mute" : "unmute", r->name, cl->id, cl->name, muted), cl);
}

static void hub_on_history(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    sbuf_t **hist = xcalloc(r->hist_len + 1, sizeof *hist);
    size_t n = hub_hist_recover(hub, r, cl, in->since, hist);
    hub_send(hub, cl, proto_history(r->name, hist, n));
    free(hist);
}

/* A custom type the policy delivered: to the room's other members, with from added. */
static void hub_on_custom(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    if (!r) return;                /* no room to deliver to: the policy answered it itself */
    json_t *out = json_copy(in->root);
    json_object_del(out, "cid");
    json_object_set_new(out, "from", json_pack("{s:s, s:s}", "id", cl->id, "name", cl->name));
    sbuf_t *payload = proto_encode(out);
    json_decref(out);
    if (payload) hub_room_fanout(hub, r, payload, cl);
}

/* Carries out a message the policy let through (or every message when it has no hook). */
static void hub_deliver(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in, int from_policy)
{
    switch (in->type) {
    case PROTO_MSG: hub_on_msg(hub, cl, r, in, from_policy); break;
    case PROTO_DM: hub_on_dm(hub, cl, in); break;
    case PROTO_SIGNAL: hub_on_signal(hub, cl, r, in); break;
    case PROTO_MUTE: hub_on_mute(hub, cl, r, 1); break;
    case PROTO_UNMUTE: hub_on_mute(hub, cl, r, 0); break;
    case PROTO_HISTORY: hub_on_history(hub, cl, r, in); break;
    case PROTO_CUSTOM: hub_on_custom(hub, cl, r, in); break;
    case PROTO_JOIN:
    case PROTO_LEAVE: break;       /* handled before the policy */
    }
}

/* A message the policy rewrote: checked like a client's, and its room must be one of ours. */
static void hub_deliver_rewritten(hub_t *hub, hub_client_t *cl, json_t *out)
{
    proto_in_t in;
    proto_err_t err;
    if (proto_decode_value(out, (size_t)hub->gw->cfg.max_text_bytes, &in, &err) < 0) {
        log_warn("policy returned an invalid message", "{s:s, s:s}", "client", cl->id, "error", err.message);
        hub_send_error(hub, cl, "policy_error", "the policy produced an invalid message", NULL, METRICS_DROP_POLICY);
        return;
    }
    hub_room_t *r = in.room ? hub_member_room(hub, cl, &in) : NULL;
    if (in.type == PROTO_JOIN || in.type == PROTO_LEAVE || (in.room && !r)) {
        if (in.type == PROTO_JOIN || in.type == PROTO_LEAVE)
            hub_send_error(hub, cl, "policy_error", "the policy cannot turn a message into a join or leave", NULL,
                           METRICS_DROP_POLICY);
    } else {
        hub_deliver(hub, cl, r, &in, 1);
    }
    proto_in_free(&in);
}

/* Runs on_message over a message of a member (r is its room, NULL for dm and roomless custom
 * types) and carries out the verdict. */
static void hub_route(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    policy_t *p = hub->gw->policy;
    if (!p || !policy_has(p, POLICY_HOOK_MESSAGE)) {
        if (in->type == PROTO_CUSTOM)
            hub_send_error(hub, cl, "bad_type", "no handler for this message type", in->cid, METRICS_DROP_INVALID);
        else
            hub_deliver(hub, cl, r, in, 0);
        return;
    }
    policy_conn_t pc = hub_pconn(cl, NULL);
    json_t *out;
    char code[HUB_CODE_LEN];
    int rc = policy_on_message(p, &pc, in->room, in->root, &out, code, sizeof code);
    if (rc == POLICY_ERROR) {
        hub_send_error(hub, cl, "policy_error", "the policy failed on this message; it was dropped", in->cid,
                       METRICS_DROP_POLICY);
    } else if (rc == POLICY_DROP) {
        hub_send_error(hub, cl, code, "refused by policy", in->cid, METRICS_DROP_POLICY);
    } else if (!out) {
        /* handled by the policy itself */
    } else if (!server_conn_is_open(cl->conn)) {
        json_decref(out);          /* the policy kicked the sender */
    } else if (out == in->root) {
        json_decref(out);
        hub_deliver(hub, cl, r, in, 0);
    } else {
        hub_deliver_rewritten(hub, cl, out);
    }
}

static void hub_dispatch(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    if (in->type == PROTO_JOIN) {
        hub_on_join(hub, cl, in);
        return;
    }
    hub_room_t *r = NULL;
    if (in->room && !(r = hub_member_room(hub, cl, in))) return;
    if (in->type == PROTO_LEAVE)
        hub_room_leave(hub, cl, r);
    else
        hub_route(hub, cl, r, in);
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

/* The query string as an object of decoded values (keys as sent). */
static json_t *hub_query_json(const char *query)
{
    json_t *obj = json_object();
    size_t qlen = strlen(query);
    char *val = xmalloc(qlen + 1);
    for (const char *p = query; *p;) {
        const char *amp = strchr(p, '&'), *end = amp ? amp : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        size_t klen = (size_t)((eq ? eq : end) - p);
        if (klen && klen < 64) {
            char key[64];
            memcpy(key, p, klen);
            key[klen] = '\0';
            if (!json_object_get(obj, key) && http_query_get(query, key, val, qlen + 1) >= 0)
                json_object_set_new(obj, key, json_string(val));   /* NULL (bad UTF-8) is skipped */
        }
        p = amp ? amp + 1 : end;
    }
    free(val);
    return obj;
}

/* Request headers with lower-case names, for on_connect only. */
static json_t *hub_headers_json(const http_request_t *req)
{
    json_t *obj = json_object();
    for (int i = 0; i < req->nheaders; i++) {
        char name[64];
        size_t n = 0;
        for (const char *h = req->headers[i].name; *h && n + 1 < sizeof name; h++)
            name[n++] = (char)(*h >= 'A' && *h <= 'Z' ? *h + 32 : *h);
        name[n] = '\0';
        json_object_set_new(obj, name, json_string(req->headers[i].value));
    }
    return obj;
}

static void hub_client_free(hub_client_t *cl)
{
    json_decref(cl->query);
    free(cl->rooms);
    free(cl);
}

/* Asks on_connect. 0 admits; otherwise an HTTP status with reason. */
static int hub_policy_connect(gw_t *gw, hub_client_t *cl, const http_request_t *req, char *reason, size_t len)
{
    policy_t *p = gw->policy;
    if (!p || !policy_has(p, POLICY_HOOK_CONNECT)) return 0;
    json_t *headers = hub_headers_json(req);
    policy_conn_t pc = hub_pconn(cl, headers);
    int rc = policy_on_connect(p, &pc, reason, len);
    json_decref(headers);
    if (rc == POLICY_DROP) return 403;
    if (rc == POLICY_ERROR && strcmp(gw->cfg.policy_fail, "open")) {
        snprintf(reason, len, "policy_error");
        return 503;
    }
    return 0;
}

static int hub_admit(gw_t *gw, const http_request_t *req, const char *ip, void **data, char *reason, size_t len)
{
    char room[PROTO_MAX_ROOM * 2];
    if (hub_url_room(req, room, sizeof room) < 0) {
        snprintf(reason, len, "invalid room name");
        return 400;
    }
    hub_client_t *cl = xcalloc(1, sizeof *cl);
    int n = http_query_get(req->query, "name", cl->name, sizeof cl->name);
    if (n == -2 || (n >= 0 && !proto_name_valid(cl->name))) {
        free(cl);
        snprintf(reason, len, "invalid name");
        return 400;
    }
    if (n < 0) hub_random_name(cl->name, sizeof cl->name);
    do hub_random_b64url(cl->id, HUB_ID_BYTES);
    while (map_get(&gw->hub->clients, cl->id));
    snprintf(cl->ip, sizeof cl->ip, "%s", ip);
    cl->query = hub_query_json(req->query);
    int status = hub_policy_connect(gw, cl, req, reason, len);
    if (status) {
        hub_client_free(cl);
        return status;
    }
    *data = cl;
    return 0;
}

static void hub_attach(gw_t *gw, conn_t *c, const http_request_t *req)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = server_conn_data(c);
    cl->conn = c;
    cl->tokens = (double)gw->cfg.rate_burst;
    cl->tokens_ms = gw_now_ms(gw);
    map_set(&hub->clients, cl->id, cl);
    const char *version = gw->policy ? policy_version(gw->policy) : "";
    hub_send(hub, cl, proto_welcome(cl->id, cl->name, "chatgw/" CHATGW_VERSION, version));
    char room[PROTO_MAX_ROOM * 2], since[128];
    if (hub_url_room(req, room, sizeof room) == 0 && room[0]) {
        int has_since = http_query_get(req->query, "since", since, sizeof since) >= 0;
        hub_join_or_error(hub, cl, room, has_since ? since : NULL);
    }
    log_debug("client attached", "{s:s, s:s, s:I}", "client", cl->id, "ip", cl->ip,
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
    hub_client_free(cl);
}

const server_endpoint_t hub_endpoint = {
    .name = "chat",
    .admit = hub_admit,
    .attach = hub_attach,
    .message = hub_message,
    .detach = hub_detach,
};

/* ---- the policy's host API (gw.send, gw.broadcast, ...) ---- */

static int hub_host_send(void *ud, const char *conn_id, json_t *msg)
{
    hub_t *hub = ud;
    hub_client_t *cl = hub_client_find(hub, conn_id);
    sbuf_t *payload = cl ? proto_encode(msg) : NULL;
    if (!payload) return -1;
    hub_send(hub, cl, payload);
    return 0;
}

static int hub_host_broadcast(void *ud, const char *room, json_t *msg, const char *except)
{
    hub_t *hub = ud;
    hub_room_t *r = hub_room_get(hub, room);
    sbuf_t *payload = r ? proto_encode(msg) : NULL;
    if (!payload) return -1;
    hub_room_fanout(hub, r, payload, except ? hub_client_find(hub, except) : NULL);
    return 0;
}

static int hub_host_kick(void *ud, const char *conn_id, const char *code, const char *reason)
{
    hub_t *hub = ud;
    hub_client_t *cl = hub_client_find(hub, conn_id);
    if (!cl || !server_conn_is_open(cl->conn)) return -1;
    hub_send(hub, cl, proto_error(code ? code : "kicked", reason ? reason : "removed by policy", NULL));
    log_info("kicked by policy", "{s:s, s:s, s:s}", "client", cl->id, "ip", cl->ip, "code", code ? code : "kicked");
    server_conn_close(cl->conn, WS_CLOSE_POLICY, reason ? reason : "kicked");
    return 0;
}

static json_t *hub_host_members(void *ud, const char *room)
{
    hub_room_t *r = hub_room_get(ud, room);
    return r ? hub_room_members_json(r) : NULL;
}

static json_t *hub_host_rooms(void *ud)
{
    json_t *stats = hub_stats_json(ud);
    json_t *rooms = json_incref(json_object_get(stats, "rooms"));
    json_decref(stats);
    return rooms;
}

static void hub_host_log(void *ud, int level, const char *msg, json_t *fields)
{
    (void)ud;
    if (fields)
        log_write(level, msg, "O", fields);
    else
        log_write(level, msg, NULL);
}

void hub_policy_host(hub_t *hub, policy_host_t *host)
{
    *host = (policy_host_t){
        .ud = hub,
        .send = hub_host_send,
        .broadcast = hub_host_broadcast,
        .kick = hub_host_kick,
        .members = hub_host_members,
        .rooms = hub_host_rooms,
        .log = hub_host_log,
    };
}

static void hub_on_tick(uv_timer_t *t)
{
    hub_t *hub = t->data;
    if (hub->gw->policy) policy_on_tick(hub->gw->policy, (double)hub_wall_ms() / 1000.0);
}

/* ---- hub ---- */

hub_t *hub_new(gw_t *gw)
{
    hub_t *hub = xcalloc(1, sizeof *hub);
    hub->gw = gw;
    map_init(&hub->rooms);
    map_init(&hub->clients);
    hub->tick = xcalloc(1, sizeof *hub->tick);
    uv_timer_init(gw->loop, hub->tick);
    hub->tick->data = hub;
    uv_timer_start(hub->tick, hub_on_tick, 1000, 1000);
    uv_unref((uv_handle_t *)hub->tick);     /* the tick alone does not keep the process up */
    return hub;
}

static void hub_tick_closed(uv_handle_t *h) { free(h); }

void hub_free(hub_t *hub)
{
    if (!hub) return;
    uv_close((uv_handle_t *)hub->tick, hub_tick_closed);
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
