/* hub_sync: the hub's side of the bus (see hub_int.h). A msg is posted once to the bus and
 * delivered here from the post's callback, at its place in the room's one order; other
 * replicas' msgs, presence and direct frames arrive through the bus handlers. A room keeps a
 * mirror of the other replicas' members. A joiner is `pending` until its snapshot (presence
 * list + shared history) came back and the room's channel caught up with it; what the channel
 * delivers meanwhile is held for it and goes around the snapshot's window, then a `floor`
 * keeps the channel's late copies from reaching it twice. */
#include "hub/hub_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/metrics.h"
#include "net/server.h"

/* ---- bus requests ----
 * A request to the bus (a post, a snapshot's presence list and history, a history range, a
 * reconcile) is one hub_op_t, linked in hub->ops until its last answer came, so hub_free can
 * free what the bus will never answer. It names its room and client instead of pointing at
 * them: either may be gone when the answer arrives. */

enum { HUB_OP_POST, HUB_OP_SNAPSHOT, HUB_OP_HISTORY, HUB_OP_LIST, HUB_OP_FILL, HUB_OP_API_ROOM, HUB_OP_API_STATS,
       HUB_OP_API_PUBLISH, HUB_OP_JOIN, HUB_OP_DM };

struct hub_op_s {
    hub_op_t *prev, *next;
    hub_t *hub;
    int kind;
    char room[PROTO_MAX_ROOM + 1];
    char client[24];               /* "" = none (HTTP announce, reconcile) */
    int waiting;                   /* answers still owed */
    /* post */
    json_t *cid;
    sbuf_t *tmpl;                  /* the msg without its id */
    size_t id_at;                  /* where in tmpl the id goes */
    int ack;
    uint64_t t0;                   /* arrival of the client's msg (0: not from a client) */
    /* snapshot / history / list */
    char *since;
    uint64_t room_serial;          /* fill: the room it counts in (filling) */
    uint64_t list_seq;             /* hub->pres_seq when the list was asked for */
    int list_status, hist_status;  /* 0 = answered; else a GW_E* code: use the hub's own state */
    hub_remote_t *members;
    size_t nmembers;
    proto_id_t last;
    int gap;
    hub_op_t *park_next;           /* snapshot: in hub->parked, since parked_ms */
    uint64_t parked_ms;
    sbuf_t **msgs;
    uint64_t *seqs;
    size_t nmsgs;
    /* the HTTP API: answered once through api_cb (hub_op_answer) */
    hub_api_cb api_cb;
    void *api_arg;
    char *from, *text;             /* publish: the msg, once the room is known to exist */
    json_t *reports;               /* stats: the nodes' reports */
};

static void hub_queue_flush(hub_t *hub, hub_room_t *r);
static void hub_api_settle(hub_t *hub, hub_op_t *op);

static hub_op_t *hub_op_new(hub_t *hub, int kind, const char *room, const char *client)
{
    hub_op_t *op = xcalloc(1, sizeof *op);
    op->hub = hub;
    op->kind = kind;
    snprintf(op->room, sizeof op->room, "%s", room);
    snprintf(op->client, sizeof op->client, "%s", client ? client : "");
    op->list_status = op->hist_status = GW_ENOTSUP;
    op->next = hub->ops;
    if (hub->ops) hub->ops->prev = op;
    hub->ops = op;
    return op;
}

static void hub_op_answer(hub_op_t *op, int status, json_t *body)
{
    hub_api_cb cb = op->api_cb;
    op->api_cb = NULL;
    if (cb) cb(op->api_arg, status, body);
    else json_decref(body);
}

static json_t *hub_api_error(const char *code, const char *message)
{
    return json_pack("{s:s, s:s}", "error", code, "message", message);
}

static void hub_op_free(hub_op_t *op)
{
    hub_t *hub = op->hub;
    if (op->api_cb) hub_op_answer(op, 503, hub_api_error("unavailable", "the server is shutting down"));
    free(op->from);
    free(op->text);
    json_decref(op->reports);
    if (op->prev) op->prev->next = op->next;
    else hub->ops = op->next;
    if (op->next) op->next->prev = op->prev;
    json_decref(op->cid);
    if (op->tmpl) sbuf_unref(op->tmpl);
    free(op->since);
    for (size_t i = 0; i < op->nmembers; i++) hub_remote_free(&op->members[i]);
    free(op->members);
    for (size_t i = 0; i < op->nmsgs; i++) sbuf_unref(op->msgs[i]);
    free(op->msgs);
    free(op->seqs);
    free(op);
}

void hub_bus_metrics(hub_t *hub)
{
    bus_stats_t st;
    bus_stats_get(hub->bus, &st);
    metrics_t *m = &hub->gw->metrics;
    __atomic_store_n(&m->bus_up, st.up, __ATOMIC_RELAXED);
    __atomic_store_n(&m->bus_reconnects, st.reconnects, __ATOMIC_RELAXED);
    __atomic_store_n(&m->bus_published, st.published, __ATOMIC_RELAXED);
    __atomic_store_n(&m->bus_received, st.received, __ATOMIC_RELAXED);
    for (int i = 0; i < METRICS_BUS_OPS; i++) __atomic_store_n(&m->bus_errors[i], st.errors[i], __ATOMIC_RELAXED);
    __atomic_store_n(&m->bus_refusing, st.refusing, __ATOMIC_RELAXED);
    __atomic_store_n(&m->bus_shards_down, st.shards_down, __ATOMIC_RELAXED);
}

int hub_bus_refusing(hub_t *hub)
{
    bus_stats_t st;
    bus_stats_get(hub->bus, &st);
    return st.refusing != 0;
}

/* ---- the other replicas' members ---- */

hub_remote_t *hub_remote_find(hub_room_t *r, const char *id)
{
    for (size_t i = 0; i < r->nremote; i++)
        if (!strcmp(r->remote[i].id, id)) return &r->remote[i];
    return NULL;
}

static hub_remote_t *hub_remote_add(hub_room_t *r, const char *id, const char *name, const char *node, int muted)
{
    if (r->nremote == r->remote_cap) {
        r->remote_cap = r->remote_cap ? r->remote_cap * 2 : 4;
        r->remote = xrealloc(r->remote, r->remote_cap * sizeof *r->remote);
    }
    hub_remote_t *m = &r->remote[r->nremote++];
    *m = (hub_remote_t){xstrdup(id), xstrdup(name), xstrdup(node ? node : ""), muted, 0};
    return m;
}

static void hub_remote_del(hub_room_t *r, hub_remote_t *m)
{
    hub_remote_free(m);
    size_t i = (size_t)(m - r->remote);
    memmove(m, m + 1, (r->nremote - i - 1) * sizeof *m);
    r->nremote--;
}

/* A member id local to room: its presence is the hub's own, never mirrored. */
static int hub_room_has_local(hub_t *hub, hub_room_t *r, const char *id)
{
    hub_client_t *cl = hub_client_find(hub, id);
    return cl && hub_room_member(r, cl);
}

static void hub_tomb_add(hub_t *hub, const char *room, const char *id)
{
    hub_tombstone_t *t = &hub->tombs[hub->tomb_next++ % HUB_TOMBSTONES];
    snprintf(t->room, sizeof t->room, "%s", room);
    snprintf(t->id, sizeof t->id, "%s", id);
    t->seq = hub->pres_seq;
}

/* Whether id left room after presence seq `after` (so a list older than that is stale). */
static int hub_tomb_after(const hub_t *hub, const char *room, const char *id, uint64_t after)
{
    for (size_t i = 0; i < HUB_TOMBSTONES; i++) {
        const hub_tombstone_t *t = &hub->tombs[i];
        if (t->seq > after && !strcmp(t->id, id) && !strcmp(t->room, room)) return 1;
    }
    return 0;
}

/* Tells the local members of r that another replica's member m joined, left or (un)muted. */
static void hub_remote_presence_send(hub_t *hub, hub_room_t *r, const char *type, const hub_remote_t *m)
{
    hub_room_send(hub, r, proto_presence(type, r->name, m->id, m->name, m->muted), NULL, NULL);
}

/* A presence event from another replica: mirror it and tell the local members. */
void hub_bus_on_presence(void *arg, const char *room, int event, const bus_member_t *bm)
{
    hub_t *hub = arg;
    hub_room_t *r = hub_room_get(hub, room);
    if (!r || hub_room_has_local(hub, r, bm->id)) return;
    hub->pres_seq++;
    hub_remote_t *m = hub_remote_find(r, bm->id);
    if (event == BUS_PRESENCE_LEAVE) {
        hub_tomb_add(hub, room, bm->id);
        if (!m) return;
        hub_remote_presence_send(hub, r, "leave", m);
        hub_remote_del(r, m);
    } else if (!m) {
        m = hub_remote_add(r, bm->id, bm->name, bm->node, bm->muted);
        m->touched = hub->pres_seq;
        hub_remote_presence_send(hub, r, "join", m);
    } else {
        m->touched = hub->pres_seq;
        if (m->muted != bm->muted) {
            m->muted = bm->muted;
            hub_remote_presence_send(hub, r, m->muted ? "mute" : "unmute", m);
        }
    }
    hub_bus_metrics(hub);
}

static int hub_op_has_member(const hub_op_t *op, const char *id)
{
    for (size_t i = 0; i < op->nmembers; i++)
        if (!strcmp(op->members[i].id, id)) return 1;
    return 0;
}

/* Brings the mirror in line with a presence list (op->members), with join/leave frames for the
 * difference. Entries changed by events after the list was asked for are newer than the list
 * and stay as they are; so do members that left since (tombstones). */
static void hub_presence_reconcile(hub_t *hub, hub_room_t *r, const hub_op_t *op)
{
    for (size_t i = r->nremote; i-- > 0;) {
        hub_remote_t *m = &r->remote[i];
        if (m->touched > op->list_seq || hub_op_has_member(op, m->id)) continue;
        hub_remote_presence_send(hub, r, "leave", m);
        hub_remote_del(r, m);
    }
    for (size_t i = 0; i < op->nmembers; i++) {
        const hub_remote_t *lm = &op->members[i];
        if (hub_room_has_local(hub, r, lm->id)) continue;
        hub_remote_t *m = hub_remote_find(r, lm->id);
        if (m) {
            if (m->touched > op->list_seq || m->muted == lm->muted) continue;
            m->muted = lm->muted;
            hub_remote_presence_send(hub, r, m->muted ? "mute" : "unmute", m);
        } else if (!hub_tomb_after(hub, r->name, lm->id, op->list_seq)) {
            m = hub_remote_add(r, lm->id, lm->name, lm->node, lm->muted);
            m->touched = op->list_seq;
            hub_remote_presence_send(hub, r, "join", m);
        }
    }
}

/* ---- snapshots and history through the bus ---- */

/* A pending member gets no fan-out (its snapshot is on its way); what the channel delivers
 * meanwhile is held for it, so nothing published after it joined can fall between the
 * snapshot's history window and the live stream. */
static void hub_member_hold(hub_joining_t *j, const proto_id_t *id, sbuf_t *payload)
{
    if (j->nheld == HUB_HELD_MAX) {
        sbuf_unref(j->held[0].payload);
        memmove(j->held, j->held + 1, (j->nheld - 1) * sizeof *j->held);
        j->nheld--;
        j->held_lost = 1;
    }
    if (j->nheld == j->held_cap) {
        j->held_cap = j->held_cap ? j->held_cap * 2 : 16;
        j->held = xrealloc(j->held, j->held_cap * sizeof *j->held);
    }
    j->held[j->nheld++] = (hub_queued_t){*id, sbuf_ref(payload)};
}

int hub_member_takes(hub_member_t *m, const proto_id_t *id, sbuf_t *payload)
{
    hub_joining_t *j = m->join;
    if (j->pending) {
        if (id) hub_member_hold(j, id, payload);   /* sent after its snapshot */
        return 0;
    }
    if (!id) return 1;
    if (!strcmp(j->floor.epoch, id->epoch) && id->seq <= j->floor.seq) return 0;   /* in its snapshot */
    hub_member_release(m);         /* past its snapshot: the join is settled */
    return 1;
}

void hub_member_release(hub_member_t *m)
{
    if (!m->join) return;
    for (size_t i = 0; i < m->join->nheld; i++) sbuf_unref(m->join->held[i].payload);
    free(m->join->held);
    free(m->join);
    m->join = NULL;
}

/* The room frame's history for a pending member: the msgs held for it (or, before the room's
 * first snapshot, queued in the room) that are older than the window the snapshot brought (a
 * join without since gets the newest history_size Redis kept, and a burst may have passed
 * them), then that window. Caller frees the array. */
static sbuf_t **hub_snapshot_history(const hub_room_t *r, const hub_joining_t *j, const hub_op_t *op, size_t *n)
{
    uint64_t first = op->nmsgs ? op->seqs[0] : op->last.seq + 1;
    const hub_queued_t *src[2] = {j->held, r->bus_init ? NULL : r->queue};
    size_t len[2] = {j->nheld, r->bus_init ? 0 : r->nqueue};
    sbuf_t **out = xcalloc(len[0] + len[1] + op->nmsgs + 1, sizeof *out);
    size_t k = 0;
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < len[s]; i++) {
            const hub_queued_t *h = &src[s][i];
            if (!op->since && !strcmp(h->id.epoch, op->last.epoch) && h->id.seq < first) out[k++] = h->payload;
        }
    memcpy(out + k, op->msgs, op->nmsgs * sizeof *out);
    *n = k + op->nmsgs;
    return out;
}

/* After the room frame: the held msgs newer than the snapshot (or of another epoch: this
 * replica's own ids while Redis was away), in the order they were delivered here. */
static void hub_held_flush(hub_t *hub, hub_client_t *cl, const hub_joining_t *j, const hub_op_t *op)
{
    for (size_t i = 0; i < j->nheld; i++) {
        const hub_queued_t *h = &j->held[i];
        if (strcmp(h->id.epoch, op->last.epoch) || h->id.seq > op->last.seq) hub_send(hub, cl, sbuf_ref(h->payload));
    }
}

static void hub_snapshot_finish(hub_t *hub, hub_op_t *op)
{
    hub_room_t *r = hub_room_get(hub, op->room);
    if (r && op->list_status == 0) hub_presence_reconcile(hub, r, op);
    hub_client_t *cl = hub_client_find(hub, op->client);
    hub_member_t *m = r && cl ? hub_room_member(r, cl) : NULL;
    if (!m) return;                /* it left, or went, meanwhile */
    sbuf_t **hist = op->msgs, **own = NULL;
    size_t n = op->nmsgs;
    hub_joining_t *j = hub_member_pending(m) ? m->join : NULL;
    if (op->hist_status == 0) {
        if (op->gap || (j && j->held_lost)) hub_send_gap(hub, r, cl);
        if (j) hist = own = hub_snapshot_history(r, j, op, &n);
    } else {                       /* the ring holds what was delivered here, held msgs included */
        hist = own = hub_hist_recover(hub, r, cl, op->since, &n);
    }
    json_t *members = hub_room_members_json(r);
    hub_send(hub, cl, proto_room(r->name, members, hist, n));
    json_decref(members);
    free(own);
    if (op->hist_status == 0 && !r->bus_init) {   /* nothing came on the channel yet: start from here */
        r->bus_last = op->last;
        r->bus_known = r->bus_init = 1;
    }
    if (j) {
        proto_id_t floor = {"", 0};
        if (op->hist_status == 0) {
            hub_held_flush(hub, cl, j, op);
            if (!(r->last_seq && !strcmp(r->last_epoch, op->last.epoch) && r->last_seq > op->last.seq))
                floor = op->last;   /* otherwise the ring already passed it: nothing older can come */
        }
        hub_member_release(m);
        if (floor.seq) {
            m->join = xcalloc(1, sizeof *m->join);
            m->join->floor = floor;
        }
    }
    if (r->bus_init && !r->filling && r->nqueue) hub_queue_flush(hub, r);   /* the position is set */
}

#define HUB_PARK_MS 2000           /* longest a snapshot waits for its room's channel */

/* Whether the room's channel has brought every msg up to the snapshot's newest: Redis answers
 * on another link than the channel, which may lag; until it catches up, msgs between the
 * joiner's held ones and the snapshot's window would be neither held nor in the window. */
static int hub_snapshot_ready(hub_t *hub, const hub_op_t *op)
{
    hub_room_t *r = hub_room_get(hub, op->room);
    if (!r || op->hist_status != 0 || !r->bus_known || strcmp(r->bus_last.epoch, op->last.epoch)) return 1;
    return r->bus_last.seq >= op->last.seq;
}

/* Finishes the parked snapshots of room (NULL: of every room) that are ready, or that waited
 * HUB_PARK_MS (the link went away: the joiner gets what there is). */
void hub_parked_check(hub_t *hub, const char *room)
{
    uint64_t now = uv_now(hub->gw->loop);
    for (hub_op_t **pp = &hub->parked; *pp;) {
        hub_op_t *op = *pp;
        if ((room && strcmp(op->room, room)) || (!hub_snapshot_ready(hub, op) && now - op->parked_ms < HUB_PARK_MS)) {
            pp = &op->park_next;
            continue;
        }
        *pp = op->park_next;
        hub_snapshot_finish(hub, op);
        hub_op_free(op);
    }
}

static void hub_history_finish(hub_t *hub, hub_op_t *op)
{
    hub_room_t *r = hub_room_get(hub, op->room);
    hub_client_t *cl = hub_client_find(hub, op->client);
    if (!r || !cl || !hub_room_member(r, cl)) return;
    if (op->hist_status != 0) {
        hub_history_send(hub, r, cl, op->since);
        return;
    }
    if (op->gap) hub_send_gap(hub, r, cl);
    hub_send(hub, cl, proto_history(r->name, op->msgs, op->nmsgs));
}

enum { HUB_SEQ_NEXT, HUB_SEQ_SEEN, HUB_SEQ_HOLE };

/* Where a msg from Redis stands against the newest one delivered here. Redis numbers every
 * msg of an epoch, so a skipped seq, or a first seq other than 1 after an empty store or in
 * a new epoch, means the channel missed some. */
static int hub_seq_class(const hub_room_t *r, const proto_id_t *id)
{
    const proto_id_t *last = &r->bus_last;
    if (!r->bus_known) return HUB_SEQ_NEXT;
    if (!last->epoch[0] || strcmp(last->epoch, id->epoch)) return id->seq == 1 && !last->epoch[0] ? HUB_SEQ_NEXT
                                                                                                  : HUB_SEQ_HOLE;
    if (id->seq <= last->seq) return HUB_SEQ_SEEN;
    return id->seq == last->seq + 1 ? HUB_SEQ_NEXT : HUB_SEQ_HOLE;
}

static void hub_room_gap(hub_t *hub, hub_room_t *r);

/* After a refill, a hole before the first new queued msg is one Redis cannot fill either
 * (trimmed, or lost with the store): say so once and go on, instead of asking again. */
static void hub_fill_check(hub_t *hub, hub_room_t *r)
{
    for (size_t i = 0; i < r->nqueue; i++) {
        int c = hub_seq_class(r, &r->queue[i].id);
        if (c == HUB_SEQ_SEEN) continue;
        if (c == HUB_SEQ_HOLE) {
            hub_room_gap(hub, r);
            r->bus_known = 0;
        }
        return;
    }
}

static void hub_room_gap(hub_t *hub, hub_room_t *r)
{
    METRIC_INC(hub->gw->metrics.history_gaps);
    json_t *ref = json_string(r->name);
    hub_room_send(hub, r, proto_error("history_gap", "messages of this room were lost on the way to this "
                                      "replica; history restarts", ref), NULL, NULL);
    json_decref(ref);
}

/* Delivers what the channel brought while the room's position was unsettled (a refill, or
 * the first snapshot), in order; hub_room_deliver drops what was already delivered. */
static void hub_queue_flush(hub_t *hub, hub_room_t *r)
{
    hub_queued_t *q = r->queue;
    size_t n = r->nqueue;
    r->queue = NULL;
    r->nqueue = r->queue_cap = 0;
    for (size_t i = 0; i < n; i++) hub_room_deliver(hub, r, &q[i].id, q[i].payload, 1);
    free(q);
}

/* A refill: the msgs after bus_last that the channel did not bring (this replica's link was
 * down, or its subscription started late) go out first, in order, then what the channel
 * brought meanwhile; hub_room_deliver drops whatever was already delivered. When some are no
 * longer kept, the stream was lost (a new epoch) or Redis cannot answer, the members get
 * history_gap first: never a silent loss. */
static void hub_fill_finish(hub_t *hub, hub_op_t *op)
{
    hub_room_t *r = hub_room_get(hub, op->room);
    if (!r || r->serial != op->room_serial) return;   /* emptied (and maybe made again) meanwhile */
    r->filling--;
    if (op->hist_status != 0) {
        hub_room_gap(hub, r);
        r->bus_known = 0;          /* take the channel as it comes from here on */
    } else {
        /* without since (the store had nothing when we last looked) every kept msg is new,
         * and they must start at 1; otherwise the first one delivered starts afresh */
        int lost = op->gap || (!op->since && op->nmsgs && op->seqs[0] != 1);
        if (lost && (op->nmsgs || op->last.epoch[0])) hub_room_gap(hub, r);
        if (lost) r->bus_known = 0;
        int was = r->filling;
        r->filling = 0;            /* deliver these now, in order */
        for (size_t i = 0; i < op->nmsgs; i++) {
            proto_id_t id = op->last;
            id.seq = op->seqs[i];
            hub_room_deliver(hub, r, &id, sbuf_ref(op->msgs[i]), 1);
        }
        r->filling += was;
    }
    if (r->filling) return;
    hub_fill_check(hub, r);
    hub_queue_flush(hub, r);
}

static void hub_op_settle(hub_op_t *op)
{
    if (--op->waiting > 0) return;
    hub_t *hub = op->hub;
    switch (op->kind) {
    case HUB_OP_SNAPSHOT:
        if (!hub_snapshot_ready(hub, op)) {
            op->parked_ms = uv_now(hub->gw->loop);
            op->park_next = hub->parked;
            hub->parked = op;
            return;                /* freed by hub_parked_check */
        }
        hub_snapshot_finish(hub, op);
        break;
    case HUB_OP_HISTORY: hub_history_finish(hub, op); break;
    case HUB_OP_FILL: hub_fill_finish(hub, op); break;
    case HUB_OP_LIST: {
        hub_room_t *r = hub_room_get(hub, op->room);
        if (r && op->list_status == 0) hub_presence_reconcile(hub, r, op);
        break;
    }
    case HUB_OP_API_ROOM:
    case HUB_OP_API_PUBLISH: hub_api_settle(hub, op); break;
    }
    hub_op_free(op);
}

static void hub_op_listed(void *arg, int status, const bus_member_t *members, size_t n)
{
    hub_op_t *op = arg;
    op->list_status = status;
    if (status) log_warn("bus: presence list failed; using local members", "{s:s, s:s}", "room", op->room,
                         "error", gw_strerror(status));
    const char *self = bus_node_id(op->hub->bus);
    op->members = xcalloc(n + 1, sizeof *op->members);
    for (size_t i = 0; !status && i < n; i++) {
        if (members[i].node && !strcmp(members[i].node, self)) continue;   /* ours: the hub knows them */
        op->members[op->nmembers++] = (hub_remote_t){xstrdup(members[i].id), xstrdup(members[i].name),
                                                     xstrdup(members[i].node ? members[i].node : ""),
                                                     members[i].muted, 0};
    }
    hub_op_settle(op);
}

static void hub_op_ranged(void *arg, int status, const bus_history_t *h)
{
    hub_op_t *op = arg;
    op->hist_status = status;
    if (status) {
        log_warn("bus: history range failed; using the local ring", "{s:s, s:s}", "room", op->room, "error",
                 gw_strerror(status));
    } else {
        op->last = h->last;
        op->gap = h->gap;
        op->msgs = xcalloc(h->n + 1, sizeof *op->msgs);
        op->seqs = xcalloc(h->n + 1, sizeof *op->seqs);
        for (size_t i = 0; i < h->n; i++) {
            op->seqs[op->nmsgs] = h->seqs[i];
            op->msgs[op->nmsgs++] = sbuf_ref(h->msgs[i]);
        }
    }
    hub_op_settle(op);
}

/* Asks the bus for the room's presence list and/or history; the op settles when both came
 * back (or at once when the bus cannot answer: then the hub's own state serves). */
static void hub_op_fetch(hub_t *hub, hub_op_t *op, int list, int hist)
{
    op->waiting = 1;               /* held until both requests are made */
    if (list) {
        op->list_seq = hub->pres_seq;
        int rc = bus_presence_list(hub->bus, op->room, hub_op_listed, op);
        if (rc == 0) op->waiting++;
        else op->list_status = rc;
    }
    if (hist) {
        proto_id_t since;
        int bad = op->since && proto_since_parse(op->since, since.epoch, sizeof since.epoch, &since.seq) < 0;
        int rc = bad ? GW_EINVAL : bus_history_range(hub->bus, op->room, op->since ? &since : NULL, hub_op_ranged, op);
        if (rc == 0) op->waiting++;
        else op->hist_status = rc;
    }
    hub_op_settle(op);
}

/* Sends `room` to cl: at once from the hub's own state on a single node; through the bus
 * (all replicas' members, the shared history) otherwise. */
void hub_snapshot_start(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since)
{
    if (!hub->remote) {
        hub_snapshot_send(hub, r, cl, since);
        return;
    }
    hub_op_t *op = hub_op_new(hub, HUB_OP_SNAPSHOT, r->name, cl->id);
    op->since = since ? xstrdup(since) : NULL;
    hub_op_fetch(hub, op, 1, 1);
}

/* Sends cl the room's msgs after since, from the shared history (hub_history_finish). */
void hub_history_start(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since)
{
    hub_op_t *op = hub_op_new(hub, HUB_OP_HISTORY, r->name, cl->id);
    op->since = since ? xstrdup(since) : NULL;
    hub_op_fetch(hub, op, 0, 1);
}

/* Frees the requests the bus will never answer (after bus_free). */
void hub_ops_free(hub_t *hub)
{
    hub->parked = NULL;            /* they are in hub->ops too */
    while (hub->ops) hub_op_free(hub->ops);
}

/* Fetches the room's msgs after bus_last (hub_fill_finish); channel msgs wait meanwhile. */
static void hub_fill_start(hub_t *hub, hub_room_t *r)
{
    hub_op_t *op = hub_op_new(hub, HUB_OP_FILL, r->name, NULL);
    char since[PROTO_EPOCH_MAX + 24] = "";
    if (r->bus_last.epoch[0]) {    /* else the store was empty: all it keeps now is new */
        proto_id_write(since, sizeof since, r->bus_last.epoch, r->bus_last.seq);
        op->since = xstrdup(since);
    }
    op->room_serial = r->serial;
    r->filling++;
    log_debug("bus: refilling a room", "{s:s, s:s}", "room", r->name, "since", since);
    hub_op_fetch(hub, op, 0, 1);
}

/* After the link came back: events and msgs were missed, so every room's mirror is listed
 * again and its msgs since the last one delivered here are fetched (hub_fill_finish). */
void hub_rooms_relist(hub_t *hub)
{
    size_t i;
    for (map_entry_t *e = map_first(&hub->rooms, &i); e; e = map_next(&hub->rooms, e, &i)) {
        hub_room_t *r = e->value;
        hub_op_fetch(hub, hub_op_new(hub, HUB_OP_LIST, r->name, NULL), 1, 0);
        if (r->bus_known) hub_fill_start(hub, r);
    }
}

static int hub_room_has_pending(const hub_room_t *r)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (hub_member_pending(&r->members[i])) return 1;
    return 0;
}

static void hub_room_queue(hub_room_t *r, const proto_id_t *id, sbuf_t *payload)
{
    if (r->nqueue == r->queue_cap) {
        r->queue_cap = r->queue_cap ? r->queue_cap * 2 : 8;
        r->queue = xrealloc(r->queue, r->queue_cap * sizeof *r->queue);
    }
    r->queue[r->nqueue++] = (hub_queued_t){*id, payload};
}

/* A msg with its final id: kept in the ring and fanned out to the local members (not to
 * pending ones, nor to one whose snapshot already held it). A msg from Redis (from_bus) goes
 * out in seq order, once: older ones are dropped, and a hole is filled first. Takes the
 * reference. */
void hub_room_deliver(hub_t *hub, hub_room_t *r, const proto_id_t *id, sbuf_t *payload, int from_bus)
{
    if (from_bus && !r->bus_init && hub_room_has_pending(r)) {
        hub_room_queue(r, id, payload);   /* the first snapshot sets where the room starts */
        return;
    }
    if (from_bus) {
        int c = r->filling ? HUB_SEQ_HOLE : hub_seq_class(r, id);
        if (c == HUB_SEQ_SEEN) {
            sbuf_unref(payload);   /* a refill or the first snapshot already had it */
            return;
        }
        if (c == HUB_SEQ_HOLE) {   /* a late subscription, a post answered before the channel
                                    * caught up, a lost link: fetch the missing ones first */
            hub_room_queue(r, id, payload);
            if (!r->filling) hub_fill_start(hub, r);
            return;
        }
        r->bus_last = *id;
        r->bus_known = r->bus_init = 1;
    }
    hub_hist_push(r, id->epoch, id->seq, payload);
    hub_room_send(hub, r, payload, NULL, id);
    if (from_bus && hub->parked) hub_parked_check(hub, r->name);
}

/* chatgw_message_latency_seconds: a client's msg from arrival to the start of its fan-out. */
void hub_latency_observe(hub_t *hub, uint64_t t0)
{
    if (t0) metrics_latency_observe(&hub->gw->metrics, (uv_hrtime() - t0) / 1000);
}

static void hub_post_ack(hub_t *hub, const hub_op_t *op, const proto_id_t *id)
{
    hub_client_t *cl = op->ack ? hub_client_find(hub, op->client) : NULL;
    if (!cl) return;
    char ids[PROTO_EPOCH_MAX + 24];
    hub_send(hub, cl, proto_ack(op->cid, proto_id_write(ids, sizeof ids, id->epoch, id->seq)));
}

/* The API's answer to a post: its id. */
static void hub_post_answer(hub_op_t *op, const proto_id_t *id)
{
    if (!op->api_cb) return;
    char ids[PROTO_EPOCH_MAX + 24];
    proto_id_write(ids, sizeof ids, id->epoch, id->seq);
    hub_op_answer(op, 200, json_pack("{s:s, s:s}", "room", op->room, "id", ids));
}

/* Redis is not there: this replica's members still get the msg, with the hub's own id (its
 * epoch is not Redis's, so a since naming it elsewhere is a history_gap, never a silent loss). */
static void hub_post_local(hub_t *hub, hub_op_t *op)
{
    hub_room_t *r = hub_room_get(hub, op->room);
    if (!r) {                      /* the sender left the room meanwhile, or none is here (API) */
        hub_op_answer(op, 503, hub_api_error("unavailable", "Redis is unreachable and the room has no member here"));
        return;
    }
    proto_id_t id = hub_room_own_id(r);
    sbuf_t *payload = proto_msg_number(op->tmpl->data, op->id_at, op->tmpl->data + op->id_at,
                                         op->tmpl->len - op->id_at, &id);
    hub_latency_observe(hub, op->t0);
    hub_room_deliver(hub, r, &id, payload, 0);
    hub_post_ack(hub, op, &id);
    hub_post_answer(op, &id);
}

/* The post's place in the room's one order (or its failure): deliver here and ack. */
static void hub_post_done(void *arg, int status, const proto_id_t *id, sbuf_t *payload)
{
    hub_op_t *op = arg;
    hub_t *hub = op->hub;
    if (status == GW_EREPLY) {     /* Redis refused it (OOM, ...): it reached no replica; say so */
        log_error("bus: redis refused a post; not delivered", "{s:s}", "room", op->room);
        hub_client_t *cl = op->ack ? hub_client_find(hub, op->client) : NULL;
        if (cl) hub_send(hub, cl, proto_error("unavailable", "the shared store refused the message (Redis is out "
                                              "of memory or read-only); it was not delivered", op->cid));
        hub_op_answer(op, 503, hub_api_error("unavailable", "Redis refused the message (out of memory or read-only)"));
    } else if (status) {
        log_warn("bus: post failed; delivering on this replica only", "{s:s, s:s}", "room", op->room, "error",
                 gw_strerror(status));
        hub_post_local(hub, op);
    } else {
        hub_room_t *r = hub_room_get(hub, op->room);
        hub_latency_observe(hub, op->t0);
        if (r) hub_room_deliver(hub, r, id, sbuf_ref(payload), 1);
        hub_post_ack(hub, op, id);
        hub_post_answer(op, id);
    }
    hub_bus_metrics(hub);
    hub_op_free(op);
}

/* A chat msg through the bus: encoded once without its id; Redis assigns the id and
 * every replica (this one included, from hub_post_done) delivers it at the same place in the
 * room's order. client (may be NULL) gets the ack with the final id. */
static void hub_room_post_op(hub_t *hub, hub_op_t *op, const char *room, const char *from_id, const char *from_name,
                             const char *text, json_t *extra, const char *client, json_t *cid)
{
    op->tmpl = proto_msg_unnumbered(room, from_id, from_name, text, hub_wall_ms(), extra, &op->id_at);
    op->cid = cid ? json_incref(cid) : NULL;
    op->ack = client != NULL;
    op->t0 = client ? hub->msg_t0 : 0;
    int rc = bus_room_post(hub->bus, room, op->tmpl->data, op->tmpl->len, op->id_at, hub_post_done, op);
    if (rc == 0) return;
    if (rc != GW_EDOWN) log_warn("bus: post refused", "{s:s, s:s}", "room", room, "error", gw_strerror(rc));
    hub_post_local(hub, op);
    hub_op_free(op);
}

void hub_room_post(hub_t *hub, const char *room, const char *from_id, const char *from_name, const char *text,
                   json_t *extra, const char *client, json_t *cid)
{
    hub_room_post_op(hub, hub_op_new(hub, HUB_OP_POST, room, client), room, from_id, from_name, text, extra, client,
                     cid);
}

/* ---- dm across replicas ---- */

static void hub_dm_sent(void *arg, int status, int delivered)
{
    hub_op_t *op = arg;
    hub_t *hub = op->hub;
    hub_client_t *cl = hub_client_find(hub, op->client);
    if (cl && delivered) {
        if (op->cid) hub_send(hub, cl, proto_ack(op->cid, NULL));
    } else if (cl) {
        METRIC_INC(hub->gw->metrics.msgs_dropped[METRICS_DROP_UNKNOWN_PEER]);
        hub_send(hub, cl, proto_error("unknown_peer", "no such connection", op->cid));
    }
    hub_bus_metrics(hub);
    hub_op_free(op);
}

int hub_dm_send(hub_t *hub, hub_client_t *cl, const char *to, sbuf_t *payload, json_t *cid)
{
    hub_op_t *op = hub_op_new(hub, HUB_OP_DM, "", cl->id);
    op->cid = cid ? json_incref(cid) : NULL;
    int rc = bus_direct_send(hub->bus, to, payload->data, payload->len, hub_dm_sent, op);
    sbuf_unref(payload);
    if (rc < 0) hub_op_free(op);
    return rc;
}

/* ---- joins under max_room_members across replicas ---- */

static void hub_join_announce(hub_t *hub, hub_room_t *r, hub_client_t *cl)
{
    hub_room_send(hub, r, proto_presence("join", r->name, cl->id, cl->name, 0), cl, NULL);
}

static void hub_joined(void *arg, int status, int admitted)
{
    hub_op_t *op = arg;
    hub_t *hub = op->hub;
    hub_room_t *r = hub_room_get(hub, op->room);
    hub_client_t *cl = hub_client_find(hub, op->client);
    if (r && cl && hub_room_member(r, cl)) {   /* else it left meanwhile */
        if (!status && !admitted) {
            log_debug("join refused: the room is full across replicas", "{s:s, s:s}", "client", cl->id, "room",
                      r->name);
            hub_room_refuse(hub, cl, r);
        } else {
            hub_join_announce(hub, r, cl);
        }
    }
    hub_op_free(op);
}

void hub_presence_join(hub_t *hub, hub_room_t *r, hub_client_t *cl)
{
    bus_member_t bm = {cl->id, cl->name, 0, NULL};
    hub_op_t *op = hub_op_new(hub, HUB_OP_JOIN, r->name, cl->id);
    int rc = bus_presence_join(hub->bus, r->name, &bm, hub->gw->cfg.max_room_members, hub_joined, op);
    if (rc == 0) return;
    hub_op_free(op);
    rc = bus_presence_add(hub->bus, r->name, &bm);   /* registered when the link is back */
    if (rc < 0) log_warn("bus: presence not published", "{s:s, s:s, s:s}", "client", cl->id, "room", r->name,
                         "error", gw_strerror(rc));
    hub_join_announce(hub, r, cl);
}

/* ---- the HTTP API across replicas ---- */

/* Whether the API asks Redis: with workers on the in-process bus the hub answers for the whole
 * process at once (hub_stats_json, hub_room_json read the shared state). */
static int hub_api_shared(const hub_t *hub) { return hub->remote && !hub->gw->inproc; }

/* This node's part of /api/stats: {online, rooms:{name: local members}}; new reference. */
static json_t *hub_report_json(hub_t *hub)
{
    json_t *rooms = json_object();
    size_t i;
    for (map_entry_t *e = map_first(&hub->rooms, &i); e; e = map_next(&hub->rooms, e, &i)) {
        hub_room_t *r = e->value;
        if (r->nmembers) json_object_set_new(rooms, r->name, json_integer((json_int_t)r->nmembers));
    }
    return json_pack("{s:I, s:o}", "online", (json_int_t)hub->clients.count, "rooms", rooms);
}

/* Writes this node's report when it changed, or before it expires. */
static void hub_report_write(hub_t *hub)
{
    uint64_t now = uv_now(hub->gw->loop);
    json_t *o = hub_report_json(hub);
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    if (!text) return;
    int same = hub->report && !strcmp(hub->report, text);
    if (same && now - hub->report_ms < (uint64_t)hub->gw->cfg.presence_ttl_ms / 3) {
        free(text);
        return;
    }
    if (bus_node_report(hub->bus, text, strlen(text)) == 0) {
        free(hub->report);
        hub->report = text;
        hub->report_ms = now;
    } else {
        free(text);
    }
}

void hub_report_tick(hub_t *hub)
{
    if (hub_api_shared(hub)) hub_report_write(hub);
}

static void hub_api_stats_merge(void *arg, int status, const char *const *items, const size_t *lens, size_t n)
{
    hub_op_t *op = arg;
    hub_t *hub = op->hub;
    if (status) {
        log_warn("bus: node reports failed; answering for this replica", "{s:s}", "error", gw_strerror(status));
        hub_op_answer(op, 200, hub_stats_json(hub));
        hub_op_free(op);
        return;
    }
    json_int_t online = 0;
    json_t *counts = json_object();
    for (size_t i = 0; i < n; i++) {
        json_t *rep = json_loadb(items[i], lens[i], 0, NULL);
        online += json_integer_value(json_object_get(rep, "online"));
        const char *name;
        json_t *v;
        json_object_foreach(json_object_get(rep, "rooms"), name, v) {
            json_int_t had = json_integer_value(json_object_get(counts, name));
            json_object_set_new(counts, name, json_integer(had + json_integer_value(v)));
        }
        json_decref(rep);
    }
    json_t *rooms = json_array();
    const char *name;
    json_t *v;
    json_object_foreach(counts, name, v) json_array_append_new(rooms, json_pack("{s:s, s:O}", "name", name, "online", v));
    json_decref(counts);
    hub_op_answer(op, 200, json_pack("{s:I, s:o}", "online", online, "rooms", rooms));
    hub_op_free(op);
}

void hub_api_stats(hub_t *hub, hub_api_cb cb, void *arg)
{
    if (!hub_api_shared(hub)) {
        cb(arg, 200, hub_stats_json(hub));
        return;
    }
    hub_op_t *op = hub_op_new(hub, HUB_OP_API_STATS, "", NULL);
    op->api_cb = cb;
    op->api_arg = arg;
    hub_report_write(hub);      /* this replica's part is fresh (written when it changed, so a flood of
                                    * requests costs Redis one read each); the others' are a second old at most */
    int rc = bus_node_reports(hub->bus, hub_api_stats_merge, op);
    if (rc < 0) {
        hub_op_answer(op, 200, hub_stats_json(hub));
        hub_op_free(op);
    }
}

/* The room's members on every replica: the local ones in join order, then the others from the
 * presence list (op->members); NULL when there are none. */
static json_t *hub_api_room_json(hub_t *hub, const hub_op_t *op)
{
    hub_room_t *r = hub_room_get(hub, op->room);
    json_t *members = json_array();
    for (size_t i = 0; r && i < r->nmembers; i++) {
        const hub_member_t *m = &r->members[i];
        json_array_append_new(members, json_pack("{s:s, s:s, s:b}", "id", m->client->id, "name", m->client->name,
                                                 "muted", m->muted));
    }
    for (size_t i = 0; i < op->nmembers; i++) {
        const hub_remote_t *m = &op->members[i];
        if (r && hub_room_has_local(hub, r, m->id)) continue;
        json_array_append_new(members, json_pack("{s:s, s:s, s:b}", "id", m->id, "name", m->name, "muted", m->muted));
    }
    if (!json_array_size(members)) {
        json_decref(members);
        return NULL;
    }
    return json_pack("{s:s, s:I, s:o}", "name", op->room, "online", (json_int_t)json_array_size(members), "members",
                     members);
}

/* The publish API's msg, once its room is known: a post op of its own takes over the answer. */
static void hub_api_post(hub_t *hub, hub_op_t *op)
{
    hub_op_t *post = hub_op_new(hub, HUB_OP_POST, op->room, NULL);
    post->api_cb = op->api_cb;
    post->api_arg = op->api_arg;
    op->api_cb = NULL;
    hub_room_post_op(hub, post, op->room, "server", op->from, op->text, NULL, NULL, NULL);
}

static void hub_api_settle(hub_t *hub, hub_op_t *op)
{
    if (op->list_status) {         /* Redis cannot answer: what this replica knows */
        if (op->kind == HUB_OP_API_ROOM) {
            json_t *r = hub_room_json(hub, op->room);
            if (r) hub_op_answer(op, 200, r);
            else hub_op_answer(op, 404, hub_api_error("not_found", "no such room"));
        } else if (hub_room_get(hub, op->room)) {
            hub_api_post(hub, op);
        } else {
            hub_op_answer(op, 503, hub_api_error("unavailable", "Redis is unreachable and the room has no member here"));
        }
        return;
    }
    json_t *room = hub_api_room_json(hub, op);
    if (!room) {
        hub_op_answer(op, 404, hub_api_error("not_found", "no such room"));
    } else if (op->kind == HUB_OP_API_ROOM) {
        hub_op_answer(op, 200, json_incref(room));
    } else {                       /* publish: the room exists somewhere */
        hub_api_post(hub, op);
    }
    json_decref(room);
}

void hub_api_room(hub_t *hub, const char *room, hub_api_cb cb, void *arg)
{
    if (!hub_api_shared(hub)) {
        json_t *r = hub_room_json(hub, room);
        if (r) cb(arg, 200, r);
        else cb(arg, 404, hub_api_error("not_found", "no such room"));
        return;
    }
    hub_op_t *op = hub_op_new(hub, HUB_OP_API_ROOM, room, NULL);
    op->api_cb = cb;
    op->api_arg = arg;
    hub_op_fetch(hub, op, 1, 0);
}

void hub_api_publish(hub_t *hub, const char *room, const char *from_name, const char *text, hub_api_cb cb,
                     void *arg)
{
    if (!hub->remote) {            /* through a bus (Redis, or the other workers) it answers with the id */
        char id[PROTO_EPOCH_MAX + 24];
        if (hub_room_announce(hub, room, from_name, text, id, sizeof id) < 0)
            cb(arg, 404, hub_api_error("not_found", "no such room"));
        else
            cb(arg, 200, json_pack("{s:s, s:s}", "room", room, "id", id));
        return;
    }
    hub_op_t *op = hub_op_new(hub, HUB_OP_API_PUBLISH, room, NULL);
    op->api_cb = cb;
    op->api_arg = arg;
    if (hub_room_get(hub, room)) { /* it exists: members here */
        op->kind = HUB_OP_POST;
        hub_room_post_op(hub, op, room, "server", from_name, text, NULL, NULL, NULL);
        return;
    }
    op->from = xstrdup(from_name);
    op->text = xstrdup(text);
    hub_op_fetch(hub, op, 1, 0);
}

