/* hub: rooms, presence, history and fan-out for the chat endpoint; see hub.h.
 *
 * Ownership: the hub owns clients (one per chat connection, freed on detach) and rooms (freed
 * when their last member leaves). A member entry links one client to one room; both sides keep
 * it consistent through hub_room_leave. History entries hold a reference on the encoded msg
 * payload, so a history reply splices stored bytes without re-encoding.
 *
 * With Redis, hub_sync.c carries the bus side: posts in Redis's order, the other replicas'
 * members, snapshots and refills through the bus. */
#include "hub/hub_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "bus/bus.h"
#include "bus/bus_inproc.h"
#include "base/err.h"
#include "base/gw_sum.h"
#include "base/hex.h"
#include "base/log.h"
#include "base/map.h"
#include "policy/policy.h"
#include "proto/proto.h"
#include "proto/ws.h"


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

int64_t hub_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The connection as the policy sees it. */
static policy_conn_t hub_pconn(hub_client_t *cl, json_t *headers)
{
    return (policy_conn_t){ cl->id, cl->ip, cl->name, cl->query, headers, &cl->pslot, cl->pgen };
}

/* ---- sending ---- */

/* One frame to one client (hub_int.h). */
void hub_send(hub_t *hub, hub_client_t *cl, sbuf_t *payload)
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

/* The room send loop: one shared frame, framed once per variant, to every member that takes
 * it (hub_int.h). */
void hub_room_send(hub_t *hub, hub_room_t *r, sbuf_t *payload, const hub_client_t *skip, const proto_id_t *id)
{
    server_msg_t m;
    server_msg_init(&m, payload);
    size_t n = 0;
    for (size_t i = 0; i < r->nmembers; i++) {
        hub_member_t *mem = &r->members[i];
        if (mem->client == skip || (mem->join && !hub_member_takes(mem, id, payload))) continue;
        server_conn_send_msg(mem->client->conn, &m);
        n++;
    }
    METRIC_ADD(hub->gw->metrics.msgs_delivered, n);
    server_msg_release(&m);
}

/* ---- rooms ---- */

hub_room_t *hub_room_get(hub_t *hub, const char *name) { return map_get(&hub->rooms, name); }

static hub_room_t *hub_room_create(hub_t *hub, const char *name)
{
    hub_room_t *r = xcalloc(1, sizeof *r);
    r->name = xstrdup(name);
    r->serial = ++hub->room_serial;
    hex_random(r->epoch, HUB_EPOCH_BYTES);
    snprintf(r->last_epoch, sizeof r->last_epoch, "%s", r->epoch);
    r->hist_max = (size_t)hub->gw->cfg.history_size;
    map_set(&hub->rooms, name, r);
    METRIC_INC(hub->gw->metrics.rooms);
    if (hub->remote) bus_room_subscribe(hub->bus, name);   /* the first local member: hear the room */
    return r;
}

void hub_remote_free(hub_remote_t *m)
{
    free(m->id);
    free(m->name);
    free(m->node);
}

static void hub_room_destroy(hub_t *hub, hub_room_t *r)
{
    map_del(&hub->rooms, r->name);  /* first: posts the bus finishes on unsubscribe find no room */
    if (hub->remote) bus_room_unsubscribe(hub->bus, r->name);   /* the last local member left */
    METRIC_SUB(hub->gw->metrics.rooms, 1);
    for (size_t i = 0; i < r->hist_len; i++) sbuf_unref(r->hist[(r->hist_head + i) % r->hist_cap].payload);
    for (size_t i = 0; i < r->nremote; i++) hub_remote_free(&r->remote[i]);
    free(r->remote);
    for (size_t i = 0; i < r->nqueue; i++) sbuf_unref(r->queue[i].payload);
    free(r->queue);
    free(r->hist);
    for (size_t i = 0; i < r->nmembers; i++) hub_member_release(&r->members[i]);
    free(r->members);
    free(r->name);
    free(r);
}

hub_member_t *hub_room_member(hub_room_t *r, const hub_client_t *cl)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (r->members[i].client == cl) return &r->members[i];
    return NULL;
}

static json_t *hub_member_json(const hub_member_t *m)
{
    return json_pack("{s:s, s:s, s:b}", "id", m->client->id, "name", m->client->name, "muted", m->muted);
}

/* Local members in join order, then the other replicas' members. */
json_t *hub_room_members_json(const hub_room_t *r)
{
    json_t *a = json_array();
    for (size_t i = 0; i < r->nmembers; i++) json_array_append_new(a, hub_member_json(&r->members[i]));
    for (size_t i = 0; i < r->nremote; i++)
        json_array_append_new(a, json_pack("{s:s, s:s, s:b}", "id", r->remote[i].id, "name", r->remote[i].name,
                                           "muted", r->remote[i].muted));
    return a;
}

static size_t hub_room_online(const hub_room_t *r) { return r->nmembers + r->nremote; }

/* Copies the string epoch into an epoch field of cap bytes, cut as snprintf would: on every
 * message, where snprintf's format machinery cost more than the rest of the push. */
static void hub_epoch_copy(char *dst, size_t cap, const char *epoch)
{
    size_t n = strnlen(epoch, cap - 1);
    memmove(dst, epoch, n);
    dst[n] = '\0';
}

/* Keeps payload in the ring as the room's newest msg, id epoch:seq. */
void hub_hist_push(hub_room_t *r, const char *epoch, uint64_t seq, sbuf_t *payload)
{
    hub_epoch_copy(r->last_epoch, sizeof r->last_epoch, epoch);
    r->last_seq = seq;
    if (!r->hist_max) return;
    if (r->hist_len == r->hist_cap && r->hist_cap < r->hist_max) {
        /* the ring grows as it fills (an idle room holds none of it); it has not wrapped yet */
        size_t cap = r->hist_cap ? r->hist_cap * 4 : 4;
        r->hist_cap = cap < r->hist_max ? cap : r->hist_max;
        r->hist = xrealloc(r->hist, r->hist_cap * sizeof *r->hist);
    }
    size_t slot;
    if (r->hist_len < r->hist_cap) {
        slot = (r->hist_head + r->hist_len++) % r->hist_cap;
    } else {
        slot = r->hist_head;
        sbuf_unref(r->hist[slot].payload);
        r->hist_head = (r->hist_head + 1) % r->hist_cap;
    }
    r->hist[slot].seq = seq;
    r->hist[slot].payload = sbuf_ref(payload);
    hub_epoch_copy(r->hist[slot].epoch, sizeof r->hist[slot].epoch, epoch);
}

const hub_hist_t *hub_hist_at(const hub_room_t *r, size_t i)
{
    return &r->hist[(r->hist_head + i) % r->hist_cap];
}

/* Collects the history after since (NULL = all kept) into out (borrowed pointers).
 * Returns the count; GW_EINVAL when since is not a msg id, GW_ENOTFOUND when it is older than
 * the ring or from another epoch (both a gap for the caller). The ring
 * may mix epochs (Redis's, and the hub's own while Redis was down), so since must name the
 * newest msg or the one just before a kept msg. */
static long hub_hist_since(const hub_room_t *r, const char *since, sbuf_t **out)
{
    size_t from = 0;
    if (since) {
        char epoch[PROTO_EPOCH_MAX];
        uint64_t after;
        int rc = proto_since_parse(since, epoch, sizeof epoch, &after);
        if (rc < 0) return rc;
        if (!strcmp(epoch, r->last_epoch) && after == r->last_seq) return 0;
        for (from = 0; from < r->hist_len; from++) {
            const hub_hist_t *h = hub_hist_at(r, from);
            if (h->seq == after + 1 && !strcmp(h->epoch, epoch)) break;
        }
        if (from == r->hist_len) return GW_ENOTFOUND;
    }
    long n = 0;
    for (size_t i = from; i < r->hist_len; i++) out[n++] = hub_hist_at(r, i)->payload;
    return n;
}

void hub_send_gap(hub_t *hub, hub_room_t *r, hub_client_t *cl)
{
    METRIC_INC(hub->gw->metrics.history_gaps);
    json_t *ref = json_string(r->name);
    hub_send(hub, cl, proto_error("history_gap", "messages after 'since' are no longer kept; history restarts", ref));
    json_decref(ref);
}

/* The ring's history after since: a new array (the caller frees it) of borrowed payloads, its
 * count in *n. When since is no longer kept, cl gets history_gap and the array all that is kept. */
sbuf_t **hub_hist_recover(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since, size_t *n)
{
    sbuf_t **hist = xcalloc(r->hist_len + 1, sizeof *hist);
    long got = hub_hist_since(r, since, hist);
    if (got < 0) {
        hub_send_gap(hub, r, cl);
        got = hub_hist_since(r, NULL, hist);
    }
    *n = (size_t)got;
    return hist;
}

/* Sends `history` after since from the ring, after history_gap when since is lost. */
void hub_history_send(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since)
{
    size_t n;
    sbuf_t **hist = hub_hist_recover(hub, r, cl, since, &n);
    hub_send(hub, cl, proto_history(r->name, hist, n));
    free(hist);
}

/* Sends `room` (snapshot + history) to cl, after history_gap when since is lost. */
void hub_snapshot_send(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since)
{
    size_t n;
    sbuf_t **hist = hub_hist_recover(hub, r, cl, since, &n);
    json_t *members = hub_room_members_json(r);
    hub_send(hub, cl, proto_room(r->name, members, hist, n));
    json_decref(members);
    free(hist);
}

hub_client_t *hub_client_find(hub_t *hub, const char *id) { return map_get(&hub->clients, id); }

static int hub_client_in(const hub_client_t *cl, const hub_room_t *r)
{
    for (size_t i = 0; i < cl->nrooms; i++)
        if (cl->rooms[i] == r) return 1;
    return 0;
}

/* Asks on_join; 0 allows, else code is set: GW_EREFUSED when the hook refuses, GW_EUNAVAIL
 * when it failed and policy_fail is closed ("policy_error"). */
static int hub_policy_join(hub_t *hub, hub_client_t *cl, const char *room, char *code, size_t len)
{
    policy_t *p = hub->gw->policy;
    if (!p || !policy_has(p, POLICY_HOOK_JOIN)) return 0;
    policy_conn_t pc = hub_pconn(cl, NULL);
    int rc = policy_on_join(p, &pc, room, code, len);
    if (rc == POLICY_DROP) return GW_EREFUSED;
    if (rc == POLICY_ERROR && strcmp(hub->gw->cfg.policy_fail, "open")) {
        snprintf(code, len, "policy_error");
        return GW_EUNAVAIL;
    }
    return 0;
}

/* Tells the other replicas that cl is (still) in r, muted or not. */
static void hub_presence_publish(hub_t *hub, hub_room_t *r, hub_client_t *cl, int muted)
{
    if (!hub->remote) return;
    bus_member_t bm = {cl->id, cl->name, muted, NULL};
    int rc = bus_presence_add(hub->bus, r->name, &bm);
    if (rc < 0) log_warn("bus: presence not published", "{s:s, s:s, s:s}", "client", cl->id, "room", r->name,
                         "error", gw_strerror(rc));
}

/* Joins cl to the room name. Returns 0, or with an error code in code: GW_ELIMIT
 * ("room_full"), or hub_policy_join's GW_EREFUSED or GW_EUNAVAIL. */
static int hub_room_join(hub_t *hub, hub_client_t *cl, const char *name, const char *since, char *code, size_t len)
{
    const config_t *cfg = &hub->gw->cfg;
    hub_room_t *r = hub_room_get(hub, name);
    if (r && hub_client_in(cl, r)) {
        hub_snapshot_start(hub, r, cl, since);
        return 0;
    }
    if (cl->nrooms >= (size_t)cfg->max_rooms_per_conn || (r && r->nmembers >= (size_t)cfg->max_room_members)) {
        snprintf(code, len, "room_full");
        return GW_ELIMIT;
    }
    int rc = hub_policy_join(hub, cl, name, code, len);
    if (rc < 0) return rc;
    r = hub_room_get(hub, name);   /* the hook cannot create rooms, but keep the lookup honest */
    if (!r) r = hub_room_create(hub, name);
    if (r->nmembers == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 4;
        r->members = xrealloc(r->members, r->cap * sizeof *r->members);
    }
    hub_member_t *m = &r->members[r->nmembers++];
    *m = (hub_member_t){.client = cl};
    if (hub->remote) {
        m->join = xcalloc(1, sizeof *m->join);
        m->join->pending = 1;
    }
    cl->rooms = xrealloc(cl->rooms, (cl->nrooms + 1) * sizeof *cl->rooms);
    cl->rooms[cl->nrooms++] = r;
    METRIC_INC(hub->gw->metrics.room_members);
    if (hub->remote) {             /* recorded under max_room_members across replicas; then the join event */
        hub_presence_join(hub, r, cl);
        hub_snapshot_start(hub, r, cl, since);
        return 0;
    }
    hub_snapshot_start(hub, r, cl, since);
    hub_room_send(hub, r, proto_presence("join", r->name, cl->id, cl->name, 0), cl, NULL);
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

static void hub_room_leave_as(hub_t *hub, hub_client_t *cl, hub_room_t *r, int announced);

void hub_room_refuse(hub_t *hub, hub_client_t *cl, hub_room_t *r)
{
    json_t *ref = json_string(r->name);
    hub_room_leave_as(hub, cl, r, 0);
    hub_send_error(hub, cl, "room_full", "the room or your room count is at its limit", ref, METRICS_DROP_ROOM_FULL);
    json_decref(ref);
}

static void hub_room_leave(hub_t *hub, hub_client_t *cl, hub_room_t *r) { hub_room_leave_as(hub, cl, r, 1); }

/* announced: the room's members were told of the join (so now of the leave). */
static void hub_room_leave_as(hub_t *hub, hub_client_t *cl, hub_room_t *r, int announced)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (r->members[i].client == cl) {   /* keep join order: gw.members promises it */
            hub_member_release(&r->members[i]);
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
    hub_voice_left(hub, cl, r);
    if (hub->remote) bus_presence_remove(hub->bus, r->name, cl->id);
    if (r->nmembers && announced)
        hub_room_send(hub, r, proto_presence("leave", r->name, cl->id, cl->name, 0), NULL, NULL);
    if (hub->gw->policy) {
        policy_conn_t pc = hub_pconn(cl, NULL);
        policy_on_leave(hub->gw->policy, &pc, r->name);
    }
    if (!r->nmembers) hub_room_destroy(hub, r);
}

proto_id_t hub_room_own_id(hub_room_t *r)
{
    proto_id_t id = {"", ++r->seq};
    memcpy(id.epoch, r->epoch, sizeof r->epoch);   /* NUL-terminated, shorter than PROTO_EPOCH_MAX */
    return id;
}

/* Posts a msg on a single node: the hub's own id (written to id_out), then delivered. */
static void hub_room_post_own(hub_t *hub, hub_room_t *r, const char *from_id, const char *from_name,
                              const char *text, json_t *extra, char *id_out, size_t id_len)
{
    proto_id_t id = hub_room_own_id(r);
    sbuf_t *payload = proto_msg(r->name, r->epoch, id.seq, from_id, from_name, text, hub_wall_ms(), extra);
    proto_id_write(id_out, id_len, r->epoch, id.seq);
    hub_room_deliver(hub, r, &id, payload, 0);
}

/* ---- client messages ---- */

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

static void hub_handle_join(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    /* The hook and the join presence see the new name; a refused join leaves the old one. */
    char *old = cl->name;
    if (in->name) {
        cl->name = xstrdup(in->name);
        cl->pgen++;
    }
    int joined = hub_join_or_error(hub, cl, in->room, in->since);
    if (cl->name == old) return;
    free(joined ? old : cl->name);
    if (!joined) {
        cl->name = old;
        cl->pgen++;
    }
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

/* A chat msg: posted through the bus (acked with the bus's answer) or here (acked now). */
static void hub_handle_msg(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in, int from_policy)
{
    char id[64];
    json_t *extra = hub_msg_extra(in->root, from_policy);
    if (hub->remote) {
        hub_room_post(hub, r->name, cl->id, cl->name, in->text, extra, cl->id, in->cid);
    } else {
        hub_latency_observe(hub, hub->msg_t0);
        hub_room_post_own(hub, r, cl->id, cl->name, in->text, extra, id, sizeof id);
        hub_send(hub, cl, proto_ack(in->cid, id));
    }
    json_decref(extra);
}

/* A frame for a connection held by another replica. Takes the reference. 0, or GW_ENOTSUP
 * when there is no bus to carry it, or the bus's code when it did not take it (logged). */
static int hub_direct_publish(hub_t *hub, const char *to, sbuf_t *payload)
{
    int rc = hub->remote ? bus_direct_publish(hub->bus, to, payload->data, payload->len) : GW_ENOTSUP;
    sbuf_unref(payload);
    if (rc < 0 && rc != GW_ENOTSUP) log_debug("bus: direct not sent", "{s:s, s:s}", "to", to, "error", gw_strerror(rc));
    return rc < 0 ? rc : 0;
}

static void hub_handle_dm(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    hub_client_t *to = hub_client_find(hub, in->to);
    if (!to && hub->remote && hub_dm_send(hub, cl, in->to, proto_dm(cl->id, cl->name, in->text, hub_wall_ms()),
                                          in->cid) == 0)
        return;                    /* acked, or unknown_peer, once Redis says whether a node holds it */
    if (!to && hub_direct_publish(hub, in->to, proto_dm(cl->id, cl->name, in->text, hub_wall_ms())) == 0) {
        if (in->cid) hub_send(hub, cl, proto_ack(in->cid, NULL));   /* sent; the peer may be anywhere */
        return;
    }
    if (!to) {
        hub_send_error(hub, cl, "unknown_peer", "no such connection", in->cid, METRICS_DROP_UNKNOWN_PEER);
        return;
    }
    hub_send(hub, to, proto_dm(cl->id, cl->name, in->text, hub_wall_ms()));
    METRIC_INC(hub->gw->metrics.msgs_delivered);
    if (in->cid) hub_send(hub, cl, proto_ack(in->cid, NULL));
}

static void hub_handle_signal(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    hub_client_t *to = hub_client_find(hub, in->to);
    if (!to && hub_remote_find(r, in->to) && hub_direct_publish(hub, in->to, proto_signal(r->name, cl->id, in->data)) == 0)
        return;                    /* a member on another replica */
    if (!to || to == cl || !hub_room_member(r, to)) {
        hub_send_error(hub, cl, "unknown_peer", "no such member in this room", in->cid, METRICS_DROP_UNKNOWN_PEER);
        return;
    }
    hub_send(hub, to, proto_signal(r->name, cl->id, in->data));
    METRIC_INC(hub->gw->metrics.msgs_delivered);
}

static void hub_handle_mute(hub_t *hub, hub_client_t *cl, hub_room_t *r, int muted)
{
    hub_room_member(r, cl)->muted = muted;
    hub_voice_mute(hub, cl, r, muted);
    hub_presence_publish(hub, r, cl, muted);   /* the other replicas send mute/unmute themselves */
    sbuf_t *frame = proto_presence(muted ? "mute" : "unmute", r->name, cl->id, cl->name, muted);
    hub_room_send(hub, r, frame, cl, NULL);
}

static void hub_handle_history(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    if (hub->remote) {
        hub_history_start(hub, r, cl, in->since);
        return;
    }
    hub_history_send(hub, r, cl, in->since);
}

/* A custom type the policy delivered: to the room's other members, with from added. */
static void hub_handle_custom(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    if (!r) return;                /* no room to deliver to: the policy answered it itself */
    json_t *out = json_copy(in->root);
    json_object_del(out, "cid");
    json_object_set_new(out, "from", json_pack("{s:s, s:s}", "id", cl->id, "name", cl->name));
    sbuf_t *payload = proto_encode(out);
    json_decref(out);
    if (!payload) return;
    if (hub->remote) {
        int rc = bus_room_publish(hub->bus, r->name, payload->data, payload->len);
        if (rc < 0) log_debug("bus: custom message not published", "{s:s, s:s}", "room", r->name, "error",
                              gw_strerror(rc));
    }
    hub_room_send(hub, r, payload, cl, NULL);
}

/* Carries out a message the policy let through (or every message when it has no hook). */
static void hub_handle(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in, int from_policy)
{
    switch (in->type) {
    case PROTO_MSG: hub_handle_msg(hub, cl, r, in, from_policy); break;
    case PROTO_DM: hub_handle_dm(hub, cl, in); break;
    case PROTO_SIGNAL: hub_handle_signal(hub, cl, r, in); break;
    case PROTO_MUTE: hub_handle_mute(hub, cl, r, 1); break;
    case PROTO_UNMUTE: hub_handle_mute(hub, cl, r, 0); break;
    case PROTO_HISTORY: hub_handle_history(hub, cl, r, in); break;
    case PROTO_VOICE_JOIN:
    case PROTO_VOICE_LEAVE:
    case PROTO_VOICE_TRICKLE: hub_voice_handle(hub, cl, r, in); break;
    case PROTO_CUSTOM: hub_handle_custom(hub, cl, r, in); break;
    case PROTO_JOIN:
    case PROTO_LEAVE: break;       /* handled before the policy */
    }
}

/* A message the policy rewrote: checked like a client's, and its room must be one of ours. */
static void hub_handle_rewritten(hub_t *hub, hub_client_t *cl, json_t *out)
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
        hub_handle(hub, cl, r, &in, 1);
    }
    proto_in_free(&in);
}

/* A client's msg reaches the policy with its protocol fields only (type, room, text, cid), so
 * every other field of a msg the policy returns is one the policy set: a client cannot slip
 * "action":true onto a msg through a filter that rewrote its text. */
static void hub_msg_envelope_only(const proto_in_t *in)
{
    json_t *root = in->root;
    const char *key;
    json_t *v, *tmp;
    /* type and text are always there (decoded); as many members as envelope fields: no other */
    if (json_object_size(root) <= 2u + (in->room != NULL) + (in->cid != NULL)) return;
    json_object_foreach_safe(root, tmp, key, v) {
        if (strcmp(key, "type") && strcmp(key, "room") && strcmp(key, "text") && strcmp(key, "cid"))
            json_object_del(root, key);
    }
}

/* Runs on_message over a message of a member (r is its room, NULL for dm and roomless custom
 * types) and carries out the verdict. */
static void hub_filter(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in)
{
    policy_t *p = hub->gw->policy;
    if (!p || !policy_wants(p, in->type_name)) {
        if (in->type == PROTO_CUSTOM)
            hub_send_error(hub, cl, "bad_type", "no handler for this message type", in->cid, METRICS_DROP_INVALID);
        else
            hub_handle(hub, cl, r, in, 0);
        return;
    }
    if (in->type == PROTO_MSG) hub_msg_envelope_only(in);
    if (in->type == PROTO_VOICE_JOIN) hub_voice_annotate(hub, cl, r, in->root);
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
        hub_handle(hub, cl, r, in, 0);
    } else {
        hub_handle_rewritten(hub, cl, out);
    }
}

/* A decoded message of cl: join and leave are the hub's own, the rest goes to the policy. */
static void hub_dispatch(hub_t *hub, hub_client_t *cl, const proto_in_t *in)
{
    if (in->type == PROTO_JOIN) {
        hub_handle_join(hub, cl, in);
        return;
    }
    hub_room_t *r = NULL;
    if (in->room && !(r = hub_member_room(hub, cl, in))) return;
    if (in->type == PROTO_LEAVE)
        hub_room_leave(hub, cl, r);
    else
        hub_filter(hub, cl, r, in);
}

void hub_message(gw_t *gw, conn_t *c, int opcode, uint8_t *data, size_t len)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = server_conn_data(c);
    hub->msg_t0 = uv_hrtime();
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
        int reason = !strcmp(err.code, "too_large") || !strcmp(err.code, "too_complex") ? METRICS_DROP_TOO_LARGE
                                                                                     : METRICS_DROP_INVALID;
        hub_send_error(hub, cl, err.code, err.message, NULL, reason);
        return;
    }
    hub_dispatch(hub, cl, &in);
    proto_in_free(&in);
}

/* ---- connection lifecycle ---- */

/* A copy of pairs (a NULL key last) in one block, the array then its strings: one free. NULL
 * when there are none. */
static policy_pair_t *hub_pairs_copy(const policy_pair_t *pairs)
{
    size_t n = 0, bytes = 0;
    for (const policy_pair_t *p = pairs; p && p->key; p++, n++) bytes += strlen(p->key) + strlen(p->value) + 2;
    if (!n) return NULL;
    policy_pair_t *out = xmalloc((n + 1) * sizeof *out + bytes);
    char *s = (char *)(out + n + 1);
    for (size_t i = 0; i < n; i++) {
        out[i].key = s;
        s = stpcpy(s, pairs[i].key) + 1;
        out[i].value = s;
        s = stpcpy(s, pairs[i].value) + 1;
    }
    out[n] = (policy_pair_t){NULL, NULL};
    return out;
}

/* Request headers with lower-case names, for on_connect only. */
static json_t *hub_headers_json(const policy_pair_t *headers)
{
    json_t *obj = json_object();
    for (const policy_pair_t *h = headers; h && h->key; h++) {
        char name[64];
        size_t n = 0;
        for (const char *c = h->key; *c && n + 1 < sizeof name; c++)
            name[n++] = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        name[n] = '\0';
        json_object_set_new(obj, name, json_string(h->value));
    }
    return obj;
}

/* A client for an admitted request: its id, its name (the request's or a random one), and
 * what attach needs (the room to join, since). */
static hub_client_t *hub_client_new(hub_t *hub, const hub_connect_t *req)
{
    hub_client_t *cl = xcalloc(1, sizeof *cl);
    char name[PROTO_MAX_NAME * 4 + 1];
    if (!req->name) hub_random_name(name, sizeof name);
    cl->name = xstrdup(req->name ? req->name : name);
    do hub_random_b64url(cl->id, HUB_ID_BYTES);
    while (map_get(&hub->clients, cl->id));
    cl->ip = req->ip;
    cl->query = hub_pairs_copy(req->query);
    cl->join_room = req->room ? xstrdup(req->room) : NULL;
    cl->join_since = req->since ? xstrdup(req->since) : NULL;
    return cl;
}

static void hub_client_free(hub_client_t *cl)
{
    free(cl->name);
    free(cl->query);
    free(cl->join_room);
    free(cl->join_since);
    free(cl->rooms);
    free(cl);
}

/* Asks on_connect. 0 admits; otherwise GW_EREFUSED or GW_EUNAVAIL with reason. A holder with
 * no policy loaded (policy_boot = wait) refuses every connection, whatever policy_fail says. */
static int hub_policy_connect(gw_t *gw, hub_client_t *cl, const policy_pair_t *headers, char *reason, size_t len)
{
    policy_t *p = gw->policy;
    if (p && !policy_version(p)[0]) {   /* policy_boot = wait, nothing loaded yet: never open the doors */
        snprintf(reason, len, "policy_unavailable");
        return GW_EUNAVAIL;
    }
    if (!p || !policy_has(p, POLICY_HOOK_CONNECT)) return 0;
    json_t *hj = hub_headers_json(headers);
    policy_conn_t pc = hub_pconn(cl, hj);
    int rc = policy_on_connect(p, &pc, reason, len);
    json_decref(hj);
    if (rc == POLICY_DROP) return GW_EREFUSED;
    if (rc == POLICY_ERROR && strcmp(gw->cfg.policy_fail, "open")) {
        snprintf(reason, len, "policy_error");
        return GW_EUNAVAIL;
    }
    return 0;
}

int hub_admit(gw_t *gw, const hub_connect_t *req, void **data, char *reason, size_t len)
{
    hub_client_t *cl = hub_client_new(gw->hub, req);
    int rc = hub_policy_connect(gw, cl, req->headers, reason, len);
    if (rc < 0) {
        hub_client_free(cl);
        return rc;
    }
    *data = cl;
    return 0;
}

void hub_attach(gw_t *gw, conn_t *c)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = server_conn_data(c);
    cl->conn = c;
    cl->tokens = (double)gw->cfg.rate_burst;
    cl->tokens_ms = gw_now_ms(gw);
    map_set(&hub->clients, cl->id, cl);
    if (hub->remote) bus_conn_add(hub->bus, cl->id);   /* a dm target for the other replicas */
    __atomic_add_fetch(&gw->chat_clients, 1, __ATOMIC_RELAXED);
    const char *version = gw->policy ? policy_version(gw->policy) : "";
    hub_send(hub, cl, proto_welcome(cl->id, cl->name, "chatgw/" CHATGW_VERSION, version));
    if (cl->join_room) hub_join_or_error(hub, cl, cl->join_room, cl->join_since);
    free(cl->join_room);
    free(cl->join_since);
    cl->join_room = cl->join_since = NULL;
    if (gw->nworkers > 1)
        log_debug("client attached", "{s:s, s:s, s:I, s:i}", "client", cl->id, "ip", cl->ip,
                  "conn", (json_int_t)server_conn_serial(c), "worker", gw->worker);
    else
        log_debug("client attached", "{s:s, s:s, s:I}", "client", cl->id, "ip", cl->ip,
                  "conn", (json_int_t)server_conn_serial(c));
}

void hub_detach(gw_t *gw, conn_t *c)
{
    hub_t *hub = gw->hub;
    hub_client_t *cl = server_conn_data(c);
    if (!cl) return;
    while (cl->nrooms) hub_room_leave(hub, cl, cl->rooms[cl->nrooms - 1]);
    policy_conn_forget(gw->policy, &cl->pslot);
    map_del(&hub->clients, cl->id);
    if (hub->remote) bus_conn_remove(hub->bus, cl->id);
    __atomic_sub_fetch(&gw->chat_clients, 1, __ATOMIC_RELAXED);
    server_conn_data_set(c, NULL);
    hub_client_free(cl);
}

/* ---- the policy's host API (gw.send, gw.broadcast, ...) ---- */

/* The policy host's calls (policy_host_t) answer 0, GW_ENOTFOUND when the connection or room
 * is not here, or GW_EINVAL when msg does not encode; the policy only tests for 0. */
static int hub_host_send(void *ud, const char *conn_id, json_t *msg)
{
    hub_t *hub = ud;
    hub_client_t *cl = hub_client_find(hub, conn_id);
    if (!cl) return GW_ENOTFOUND;
    sbuf_t *payload = proto_encode(msg);
    if (!payload) return GW_EINVAL;
    hub_send(hub, cl, payload);
    return 0;
}

static int hub_host_broadcast(void *ud, const char *room, json_t *msg, const char *except)
{
    hub_t *hub = ud;
    hub_room_t *r = hub_room_get(hub, room);
    if (!r) return GW_ENOTFOUND;
    sbuf_t *payload = proto_encode(msg);
    if (!payload) return GW_EINVAL;
    hub_room_send(hub, r, payload, except ? hub_client_find(hub, except) : NULL, NULL);
    return 0;
}

static int hub_host_kick(void *ud, const char *conn_id, const char *code, const char *reason)
{
    hub_t *hub = ud;
    hub_client_t *cl = hub_client_find(hub, conn_id);
    if (!cl || !server_conn_is_open(cl->conn)) return GW_ENOTFOUND;
    hub_send(hub, cl, proto_error(code ? code : "kicked", reason ? reason : "removed by policy", NULL));
    log_info("kicked by policy", "{s:s, s:s, s:s}", "client", cl->id, "ip", cl->ip, "code", code ? code : "kicked");
    server_conn_close(cl->conn, WS_CLOSE_POLICY, reason ? reason : "kicked");
    return 0;
}

/* A moderator's mute: like the member's own, in the mixer too, and the member is told. */
static int hub_host_mute(void *ud, const char *conn_id, const char *room, int muted)
{
    hub_t *hub = ud;
    hub_client_t *cl = hub_client_find(hub, conn_id);
    hub_room_t *r = hub_room_get(hub, room);
    hub_member_t *m = cl && r ? hub_room_member(r, cl) : NULL;
    if (!m) return GW_ENOTFOUND;
    m->muted = muted;
    hub_voice_mute(hub, cl, r, muted);
    hub_presence_publish(hub, r, cl, muted);
    hub_room_send(hub, r, proto_presence(muted ? "mute" : "unmute", r->name, cl->id, cl->name, muted), NULL, NULL);
    return 0;
}

static json_t *hub_host_members(void *ud, const char *room)
{
    hub_room_t *r = hub_room_get(ud, room);
    return r ? hub_room_members_json(r) : NULL;
}

static json_t *hub_stats_local_json(hub_t *hub);

static json_t *hub_host_rooms(void *ud)
{
    json_t *stats = hub_stats_local_json(ud);   /* the rooms gw.broadcast can reach from here */
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

/* gw.limit with Redis: the policy decided locally; take the same token from the cluster's
 * bucket (bus_limit_take namespaces the key as chatgw:limit:KEY) and hand the policy what is
 * left. One hub_limit_t per take in flight, linked in hub->limits so that a bus freed before
 * answering (shutdown, hub_bus_close) leaks nothing; the policy (done's arg) outlives the bus. */
typedef void (*hub_limit_done_fn)(void *arg, const char *key, double rate, double burst, double tokens);

typedef struct hub_limit_s {
    struct hub_limit_s *prev, *next;
    hub_t *hub;
    double rate, burst;
    hub_limit_done_fn done;
    void *arg;
    char key[];
} hub_limit_t;

static void hub_limit_free(hub_limit_t *q)
{
    if (q->prev) q->prev->next = q->next;
    else q->hub->limits = q->next;
    if (q->next) q->next->prev = q->prev;
    free(q);
}

static void hub_limit_answered(void *arg, int status, int allowed, double tokens)
{
    hub_limit_t *q = arg;
    (void)allowed;                 /* the local bucket already decided; tokens is what counts */
    if (!status) q->done(q->arg, q->key, q->rate, q->burst, tokens);
    hub_limit_free(q);
}

static int hub_host_limit_take(void *ud, const char *key, double rate, double burst, hub_limit_done_fn done,
                               void *arg)
{
    hub_t *hub = ud;
    if (!done || !hub->remote) return GW_ENOTSUP;   /* Redis, or the other workers of this process */
    bus_stats_t st;
    bus_stats_get(hub->bus, &st);
    if (!st.up) return GW_EDOWN;   /* Redis down: purely local until it is back */
    size_t klen = strlen(key);
    hub_limit_t *q = xmalloc(sizeof *q + klen + 1);
    *q = (hub_limit_t){ .hub = hub, .rate = rate, .burst = burst, .done = done, .arg = arg };
    memcpy(q->key, key, klen + 1);
    q->next = hub->limits;
    if (hub->limits) hub->limits->prev = q;
    hub->limits = q;
    int rc = bus_limit_take(hub->bus, key, rate, burst, hub_limit_answered, q);
    if (rc < 0) {
        hub_limit_free(q);
        return rc;
    }
    return 0;
}

void hub_policy_host(hub_t *hub, policy_host_t *host)
{
    *host = (policy_host_t){
        .ud = hub,
        .send = hub_host_send,
        .broadcast = hub_host_broadcast,
        .kick = hub_host_kick,
        .mute = hub_host_mute,
        .members = hub_host_members,
        .rooms = hub_host_rooms,
        .log = hub_host_log,
        .limit_take = hub_host_limit_take,
    };
}

static void hub_on_tick(uv_timer_t *t)
{
    hub_t *hub = t->data;
    hub_bus_metrics(hub);
    hub_report_tick(hub);
    if (hub->parked) hub_parked_check(hub, NULL);
    if (hub->gw->policy) policy_on_tick(hub->gw->policy, (double)hub_wall_ms() / 1000.0);
}

/* ---- the bus's handlers: what the other replicas did ---- */

static void hub_bus_on_message(void *arg, const char *room, sbuf_t *payload, const char *origin, const proto_id_t *id)
{
    hub_t *hub = arg;
    hub_room_t *r = hub_room_get(hub, room);
    if (!r) return;
    if (id) hub_room_deliver(hub, r, id, sbuf_ref(payload), 1);
    else hub_room_send(hub, r, sbuf_ref(payload), NULL, NULL);
    (void)origin;
}

static void hub_bus_on_direct(void *arg, const char *to, sbuf_t *payload, const char *origin)
{
    hub_t *hub = arg;
    hub_client_t *cl = hub_client_find(hub, to);
    if (!cl) return;               /* not ours: every replica hears every direct frame */
    hub_send(hub, cl, sbuf_ref(payload));
    METRIC_INC(hub->gw->metrics.msgs_delivered);
    (void)origin;
}

static void hub_bus_on_status(void *arg, int up)
{
    hub_t *hub = arg;
    hub_bus_metrics(hub);
    /* the bus logs the link itself; presence events were missed while down: list again */
    if (up) hub_rooms_relist(hub);
}

/* A worker of several gets its own node id on the bus: node "-w<i>" (the base cut to fit). */
static void hub_node_worker(const gw_t *gw, char *node, size_t len)
{
    if (gw->nworkers <= 1) return;
    char suffix[16];
    int n = snprintf(suffix, sizeof suffix, "-w%d", gw->worker);
    size_t base = strlen(node);
    if (base + (size_t)n >= len) base = len - 1 - (size_t)n;
    snprintf(node + base, len - base, "%s", suffix);
}

int hub_bus_open(hub_t *hub, char *err, size_t errlen)
{
    const config_t *cfg = &hub->gw->cfg;
    char node[BUS_NODE_MAX];
    if (cfg->node_id[0]) {
        snprintf(node, sizeof node, "%s", cfg->node_id);
    } else {
        /* hostname (the pod name in Kubernetes) plus a random suffix: two processes on one host,
         * or a restarted one, never share an id (a shared id would keep a dead one's members) */
        char host[BUS_NODE_MAX - 8] = "";
        if (gethostname(host, sizeof host) < 0 || !host[0]) snprintf(host, sizeof host, "chatgw");
        host[sizeof host - 1] = '\0';
        char rnd[7];
        hex_random(rnd, 3);
        snprintf(node, sizeof node, "%s-%s", host, rnd);
    }
    hub_node_worker(hub->gw, node, sizeof node);
    bus_options_t opts = {
        .redis_url = cfg->redis_url,
        .password_file = cfg->redis_password_file,
        .node_id = node,
        .connect_timeout_ms = cfg->redis_connect_timeout_ms,
        .command_timeout_ms = cfg->redis_command_timeout_ms,
        .backoff_min_ms = cfg->redis_backoff_min_ms,
        .backoff_max_ms = cfg->redis_backoff_max_ms,
        .presence_ttl_ms = cfg->presence_ttl_ms,
        .room_ttl_ms = cfg->redis_room_ttl_ms,
        .sentinels = cfg->redis_sentinels,
        .sentinel_master = cfg->redis_sentinel_master,
        .sentinel_password_file = cfg->redis_sentinel_password_file,
        .cluster_nodes = cfg->redis_cluster_nodes,
        .history_size = cfg->history_size,
        .inproc = hub->gw->inproc,
    };
    bus_handlers_t on = {
        .room_message = hub_bus_on_message,
        .presence = hub_bus_on_presence,
        .direct = hub_bus_on_direct,
        .status = hub_bus_on_status,
    };
    bus_t *bus;
    char why[256] = "";
    int rc = bus_open(hub->gw->loop, &opts, &on, hub, &bus, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "config: %s%s", cfg->redis_password_file[0] && strstr(why, "password file")
                                                   ? "redis_password_file: " : "", why);
        return rc;
    }
    bus_free(hub->bus);            /* the placeholder bus_local of hub_new */
    hub->bus = bus;
    hub->remote = strcmp(bus_kind(bus), "local") != 0;
    hub_bus_metrics(hub);
    if (hub->remote) log_info(hub->gw->inproc ? "bus: in-process" : "bus: redis", "{s:s}", "node", bus_node_id(bus));
    return 0;
}

/* Frees the bus, then the requests it will never answer (no bus callback runs after bus_free). */
static void hub_bus_drop(hub_t *hub)
{
    bus_free(hub->bus);
    hub_ops_free(hub);
    while (hub->limits) hub_limit_free(hub->limits);
}

void hub_bus_close(hub_t *hub)
{
    hub_voice_close(hub);          /* Janus's long poll would keep the loop alive as well */
    if (!hub->remote) return;
    hub_bus_drop(hub);
    hub->remote = 0;
    char err[128];
    if (bus_open(hub->gw->loop, NULL, NULL, hub, &hub->bus, err, sizeof err) < 0) abort();
}

int hub_bus_state(hub_t *hub)
{
    if (!hub->remote || strcmp(bus_kind(hub->bus), "redis")) return -1;
    bus_stats_t st;
    bus_stats_get(hub->bus, &st);
    return st.up ? 1 : 0;
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
    char err[128];
    if (bus_open(gw->loop, NULL, NULL, hub, &hub->bus, err, sizeof err) < 0) abort();
    hub_bus_metrics(hub);
    hub_voice_open(hub);
    return hub;
}

static void hub_tick_closed(uv_handle_t *h) { free(h); }

void hub_free(hub_t *hub)
{
    if (!hub) return;
    uv_close((uv_handle_t *)hub->tick, hub_tick_closed);
    hub_voice_close(hub);
    size_t i;
    /* rooms outlive clients only if detach was skipped; free what is left */
    for (map_entry_t *e = map_first(&hub->rooms, &i); e; e = map_first(&hub->rooms, &i))
        hub_room_destroy(hub, e->value);
    hub_bus_drop(hub);
    map_free(&hub->rooms);
    map_free(&hub->clients);
    free(hub->report);
    free(hub);
}

/* The process's view with workers on the in-process bus: every worker's rooms and clients. */
static json_t *hub_stats_workers_json(hub_t *hub)
{
    const gw_t *gw = hub->gw;
    return json_pack("{s:I, s:o}", "online", (json_int_t)GW_SUM(gw, chat_clients), "rooms",
                     bus_inproc_rooms_json(gw->inproc));
}

json_t *hub_stats_json(hub_t *hub)
{
    if (hub->gw->inproc) return hub_stats_workers_json(hub);
    return hub_stats_local_json(hub);
}

static json_t *hub_stats_local_json(hub_t *hub)
{
    json_t *rooms = json_array();
    size_t i;
    for (map_entry_t *e = map_first(&hub->rooms, &i); e; e = map_next(&hub->rooms, e, &i)) {
        hub_room_t *r = e->value;
        json_array_append_new(rooms, json_pack("{s:s, s:I}", "name", r->name, "online", (json_int_t)hub_room_online(r)));
    }
    return json_pack("{s:I, s:o}", "online", (json_int_t)hub->clients.count, "rooms", rooms);
}

json_t *hub_room_json(hub_t *hub, const char *name)
{
    if (hub->gw->inproc) return bus_inproc_room_json(hub->gw->inproc, name);   /* every worker's members */
    hub_room_t *r = hub_room_get(hub, name);
    if (!r) return NULL;
    return json_pack("{s:s, s:I, s:o}", "name", r->name, "online", (json_int_t)hub_room_online(r), "members",
                     hub_room_members_json(r));
}

/* A room with members on other workers only (in-process bus). */
static int hub_room_elsewhere(hub_t *hub, const char *room)
{
    json_t *r = hub->gw->inproc ? bus_inproc_room_json(hub->gw->inproc, room) : NULL;
    int found = r != NULL;
    json_decref(r);
    return found;
}

int hub_room_announce(hub_t *hub, const char *room, const char *from_name, const char *text, char *id_out,
                      size_t id_len)
{
    hub_room_t *r = hub_room_get(hub, room);
    if (!r && !hub_room_elsewhere(hub, room)) return GW_ENOTFOUND;
    if (hub->remote) {             /* the id comes with the post's answer, after this returns */
        hub_room_post(hub, room, "server", from_name, text, NULL, NULL, NULL);
        if (id_len) id_out[0] = '\0';
        return 0;
    }
    hub_room_post_own(hub, r, "server", from_name, text, NULL, id_out, id_len);
    return 0;
}
