/* bus_inproc: the bus between the worker threads of one process; see bus_inproc.h.
 *
 * Locking: one mutex (sh->mu) guards everything shared: the handles list, the rooms (epoch,
 * seq, ring, subscribers, members), the buckets and every handle's event queue. A call takes
 * the lock, changes the shared state and appends the events it causes to the queues of the
 * handles concerned, in that one order, and wakes each queue's loop with uv_async_send (under
 * the lock, so a handle that is being freed is never woken after it left the list). A handle's
 * loop pops its events one at a time (the lock is not held while a handler runs: handlers call
 * back into the bus) and dispatches them on its own thread.
 *
 * Ownership: the shared struct owns rooms (freed when no handle subscribes and no member is
 * listed), buckets and the history payloads (one reference each). An event owns its strings,
 * its payload reference and its answer arrays; the queue owns its events. A handle is freed
 * from its async handle's close callback. */
#include "bus/bus_inproc.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hex.h"
#include "base/map.h"
#include "bus/bus.h"

#define IB_DRAIN_MAX 256           /* events per loop wake-up, so one busy worker cannot starve a loop */
#define IB_LIMITS_SWEEP 1024       /* buckets kept before full ones are swept */
#define IB_LIMITS_SWEEP_SLICE 8    /* hash buckets looked at per new bucket from then on */

typedef struct {
    char *id, *name, *node;
    int muted;
} ib_member_t;

typedef struct ib_bus_s ib_bus_t;

typedef struct {
    uint64_t seq;
    sbuf_t *payload;
} ib_hist_t;

typedef struct {
    char *name;
    char epoch[13];                /* "" until the first post */
    uint64_t seq;
    ib_hist_t *ring;
    size_t cap, len, head;
    ib_bus_t **subs;
    size_t nsubs, subs_cap;
    ib_member_t *members;
    size_t nmembers, members_cap;
} ib_room_t;

typedef struct {
    double tokens;
    uint64_t ts_ms;
    double rate, burst;
} ib_bucket_t;

struct bus_inproc_s {
    uv_mutex_t mu;
    long history_size;
    ib_bus_t **handles;
    size_t nhandles, handles_cap;
    map_t rooms;                   /* name -> ib_room_t */
    map_t limits;                  /* key -> ib_bucket_t */
    size_t limits_cursor;          /* where ib_limits_sweep goes on */
};

enum { IB_MSG, IB_PLAIN, IB_PRESENCE, IB_DIRECT, IB_POSTED, IB_LIST, IB_RANGE, IB_LIMIT };

typedef struct ib_event_s {
    struct ib_event_s *next;
    int kind;
    char *room;                    /* the room, or the direct frame's target */
    char origin[BUS_NODE_MAX];
    sbuf_t *payload;
    proto_id_t id;
    int presence;                  /* BUS_PRESENCE_* */
    ib_member_t member;
    bus_cb_t cb;
    void *arg;
    ib_member_t *list;             /* presence_list answer */
    size_t nlist;
    bus_history_t hist;            /* history_range answer (msgs and seqs owned) */
    int allowed;
    double tokens;
} ib_event_t;

struct ib_bus_s {
    bus_t base;
    bus_inproc_t *sh;
    uv_async_t async;
    ib_event_t *head, *tail;       /* under sh->mu */
};

#define IB_STAT_ADD(b, field, n) __atomic_add_fetch(&(b)->base.stats.field, (uint64_t)(n), __ATOMIC_RELAXED)

/* ---- small helpers ---- */

static void ib_member_free(ib_member_t *m)
{
    free(m->id);
    free(m->name);
    free(m->node);
}

static ib_member_t ib_member_copy(const char *id, const char *name, const char *node, int muted)
{
    return (ib_member_t){xstrdup(id), xstrdup(name), xstrdup(node ? node : ""), muted};
}

static void ib_event_free(ib_event_t *e)
{
    free(e->room);
    if (e->payload) sbuf_unref(e->payload);
    ib_member_free(&e->member);
    for (size_t i = 0; i < e->nlist; i++) ib_member_free(&e->list[i]);
    free(e->list);
    for (size_t i = 0; i < e->hist.n; i++) sbuf_unref(e->hist.msgs[i]);
    free((void *)e->hist.msgs);
    free((void *)e->hist.seqs);
    free(e);
}

static ib_event_t *ib_event_new(int kind, const char *room, const ib_bus_t *origin)
{
    ib_event_t *e = xcalloc(1, sizeof *e);
    e->kind = kind;
    e->room = xstrdup(room);
    snprintf(e->origin, sizeof e->origin, "%s", origin->base.node);
    return e;
}

/* Appends e to b's queue and wakes b's loop when the queue was empty. Under sh->mu. */
static void ib_queue_push(ib_bus_t *b, ib_event_t *e)
{
    int wake = b->head == NULL;
    if (b->tail) b->tail->next = e;
    else b->head = e;
    b->tail = e;
    if (wake) uv_async_send(&b->async);
}

static ib_event_t *ib_queue_pop(ib_bus_t *b)
{
    ib_event_t *e = b->head;
    if (!e) return NULL;
    b->head = e->next;
    if (!b->head) b->tail = NULL;
    e->next = NULL;
    return e;
}

/* ---- rooms (under sh->mu) ---- */

static ib_room_t *ib_room_open(bus_inproc_t *sh, const char *name)
{
    ib_room_t *r = map_get(&sh->rooms, name);
    if (r) return r;
    r = xcalloc(1, sizeof *r);
    r->name = xstrdup(name);
    r->cap = sh->history_size > 0 ? (size_t)sh->history_size : 0;
    if (r->cap) r->ring = xcalloc(r->cap, sizeof *r->ring);
    map_set(&sh->rooms, name, r);
    return r;
}

static void ib_room_free(ib_room_t *r)
{
    for (size_t i = 0; i < r->len; i++) sbuf_unref(r->ring[(r->head + i) % r->cap].payload);
    for (size_t i = 0; i < r->nmembers; i++) ib_member_free(&r->members[i]);
    free(r->ring);
    free(r->subs);
    free(r->members);
    free(r->name);
    free(r);
}

/* Frees r once no handle hears it and nobody is listed in it. */
static void ib_room_release(bus_inproc_t *sh, ib_room_t *r)
{
    if (r->nsubs || r->nmembers) return;
    map_del(&sh->rooms, r->name);
    ib_room_free(r);
}

/* b's index in r's subscribers, or -1 when b is not one: a "no index" answer, not an error. */
static int ib_room_sub_index(const ib_room_t *r, const ib_bus_t *b)
{
    for (size_t i = 0; i < r->nsubs; i++)
        if (r->subs[i] == b) return (int)i;
    return -1;
}

static ib_member_t *ib_room_member(ib_room_t *r, const char *id)
{
    for (size_t i = 0; i < r->nmembers; i++)
        if (!strcmp(r->members[i].id, id)) return &r->members[i];
    return NULL;
}

static void ib_hist_push(ib_room_t *r, uint64_t seq, sbuf_t *payload)
{
    if (!r->cap) return;
    size_t slot;
    if (r->len < r->cap) {
        slot = (r->head + r->len++) % r->cap;
    } else {
        slot = r->head;
        sbuf_unref(r->ring[slot].payload);
        r->head = (r->head + 1) % r->cap;
    }
    r->ring[slot] = (ib_hist_t){seq, sbuf_ref(payload)};
}

/* A presence event to every subscriber of r but from. */
static void ib_presence_emit(ib_room_t *r, const ib_bus_t *from, int event, const ib_member_t *m)
{
    for (size_t i = 0; i < r->nsubs; i++) {
        if (r->subs[i] == from) continue;
        ib_event_t *e = ib_event_new(IB_PRESENCE, r->name, from);
        snprintf(e->origin, sizeof e->origin, "%s", m->node);
        e->presence = event;
        e->member = ib_member_copy(m->id, m->name, m->node, m->muted);
        ib_queue_push(r->subs[i], e);
    }
}

/* ---- operations ---- */

static int ib_room_subscribe(bus_t *base, const char *name)
{
    ib_bus_t *b = (ib_bus_t *)base;
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = ib_room_open(b->sh, name);
    if (ib_room_sub_index(r, b) < 0) {
        if (r->nsubs == r->subs_cap) {
            r->subs_cap = r->subs_cap ? r->subs_cap * 2 : 4;
            r->subs = xrealloc(r->subs, r->subs_cap * sizeof *r->subs);
        }
        r->subs[r->nsubs++] = b;
    }
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

/* Drops b's queued msgs and presence events of room (not its post answers: they are owed). */
static void ib_queue_purge_room(ib_bus_t *b, const char *room)
{
    ib_event_t **pp = &b->head, *last = NULL;
    while (*pp) {
        ib_event_t *e = *pp;
        int drop = e->kind == IB_MSG || e->kind == IB_PLAIN || e->kind == IB_PRESENCE;
        if (drop && !strcmp(e->room, room)) {
            *pp = e->next;
            ib_event_free(e);
            continue;
        }
        last = e;
        pp = &e->next;
    }
    b->tail = last;
}

static int ib_room_unsubscribe(bus_t *base, const char *name)
{
    ib_bus_t *b = (ib_bus_t *)base;
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = map_get(&b->sh->rooms, name);
    int i = r ? ib_room_sub_index(r, b) : -1;
    if (i >= 0) {
        r->subs[i] = r->subs[--r->nsubs];
        ib_queue_purge_room(b, name);
        ib_room_release(b->sh, r);
    }
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

static int ib_room_publish(bus_t *base, const char *name, const void *payload, size_t len)
{
    ib_bus_t *b = (ib_bus_t *)base;
    sbuf_t *p = sbuf_from(payload, len);
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = map_get(&b->sh->rooms, name);
    for (size_t i = 0; r && i < r->nsubs; i++) {
        if (r->subs[i] == b) continue;
        ib_event_t *e = ib_event_new(IB_PLAIN, name, b);
        e->payload = sbuf_ref(p);
        ib_queue_push(r->subs[i], e);
    }
    uv_mutex_unlock(&b->sh->mu);
    sbuf_unref(p);
    IB_STAT_ADD(b, published, 1);
    return 0;
}

/* The post's event for one subscriber: the poster's carries its callback. */
static void ib_post_emit(ib_bus_t *to, ib_bus_t *from, const ib_room_t *r, const proto_id_t *id, sbuf_t *p,
                         bus_post_cb cb, void *arg)
{
    ib_event_t *e = ib_event_new(to == from ? IB_POSTED : IB_MSG, r->name, from);
    e->payload = sbuf_ref(p);
    e->id = *id;
    if (to == from) {
        e->cb.post = cb;
        e->arg = arg;
    }
    ib_queue_push(to, e);
}

static int ib_room_post(bus_t *base, const char *name, const void *payload, size_t len, size_t id_at,
                        bus_post_cb cb, void *arg)
{
    ib_bus_t *b = (ib_bus_t *)base;
    if (id_at > len) return GW_EINVAL;
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = ib_room_open(b->sh, name);
    if (!r->epoch[0]) {            /* a room without history starts an epoch, as Redis does */
        hex_random(r->epoch, 6);
        r->seq = 0;
    }
    proto_id_t id = {"", ++r->seq};
    snprintf(id.epoch, sizeof id.epoch, "%s", r->epoch);
    sbuf_t *p = proto_msg_number(payload, id_at, (const char *)payload + id_at, len - id_at, &id);
    ib_hist_push(r, id.seq, p);
    int self = 0;
    for (size_t i = 0; i < r->nsubs; i++) {
        ib_post_emit(r->subs[i], b, r, &id, p, cb, arg);
        self |= r->subs[i] == b;
    }
    if (!self) ib_post_emit(b, b, r, &id, p, cb, arg);   /* not subscribed: the answer alone */
    ib_room_release(b->sh, r);
    uv_mutex_unlock(&b->sh->mu);
    sbuf_unref(p);
    IB_STAT_ADD(b, published, 1);
    return 0;
}

static int ib_direct_publish(bus_t *base, const char *to, const void *payload, size_t len)
{
    ib_bus_t *b = (ib_bus_t *)base;
    sbuf_t *p = sbuf_from(payload, len);
    uv_mutex_lock(&b->sh->mu);
    for (size_t i = 0; i < b->sh->nhandles; i++) {
        if (b->sh->handles[i] == b) continue;
        ib_event_t *e = ib_event_new(IB_DIRECT, to, b);
        e->payload = sbuf_ref(p);
        ib_queue_push(b->sh->handles[i], e);
    }
    uv_mutex_unlock(&b->sh->mu);
    sbuf_unref(p);
    IB_STAT_ADD(b, published, 1);
    return 0;
}

static int ib_presence_add(bus_t *base, const char *name, const bus_member_t *m)
{
    ib_bus_t *b = (ib_bus_t *)base;
    if (!m || !m->id || !m->name) return GW_EINVAL;
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = ib_room_open(b->sh, name);
    ib_member_t *mm = ib_room_member(r, m->id);
    int event = mm ? BUS_PRESENCE_UPDATE : BUS_PRESENCE_JOIN;
    if (mm && (strcmp(mm->name, m->name) || mm->muted != m->muted || strcmp(mm->node, b->base.node))) {
        ib_member_free(mm);
        *mm = ib_member_copy(m->id, m->name, b->base.node, m->muted);
    } else if (mm) {
        event = -1;                /* unchanged: no event, as Redis */
    } else {
        if (r->nmembers == r->members_cap) {
            r->members_cap = r->members_cap ? r->members_cap * 2 : 4;
            r->members = xrealloc(r->members, r->members_cap * sizeof *r->members);
        }
        mm = &r->members[r->nmembers++];
        *mm = ib_member_copy(m->id, m->name, b->base.node, m->muted);
    }
    if (event >= 0) ib_presence_emit(r, b, event, mm);
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

/* Removes r's member at i with a leave event to the others. Under sh->mu. */
static void ib_member_remove(ib_room_t *r, ib_bus_t *b, size_t i)
{
    ib_member_t gone = r->members[i];
    memmove(&r->members[i], &r->members[i + 1], (r->nmembers - i - 1) * sizeof *r->members);
    r->nmembers--;
    ib_presence_emit(r, b, BUS_PRESENCE_LEAVE, &gone);
    ib_member_free(&gone);
}

static int ib_presence_remove(bus_t *base, const char *name, const char *member_id)
{
    ib_bus_t *b = (ib_bus_t *)base;
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = map_get(&b->sh->rooms, name);
    ib_member_t *mm = r ? ib_room_member(r, member_id) : NULL;
    if (mm) {
        ib_member_remove(r, b, (size_t)(mm - r->members));
        ib_room_release(b->sh, r);
    }
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

static int ib_presence_list(bus_t *base, const char *name, bus_members_cb cb, void *arg)
{
    ib_bus_t *b = (ib_bus_t *)base;
    ib_event_t *e = ib_event_new(IB_LIST, name, b);
    e->cb.members = cb;
    e->arg = arg;
    uv_mutex_lock(&b->sh->mu);
    ib_room_t *r = map_get(&b->sh->rooms, name);
    size_t n = r ? r->nmembers : 0;
    e->list = xcalloc(n + 1, sizeof *e->list);
    for (size_t i = 0; i < n; i++) {
        const ib_member_t *m = &r->members[i];
        e->list[e->nlist++] = ib_member_copy(m->id, m->name, m->node, m->muted);
    }
    ib_queue_push(b, e);
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

/* Where the answer starts in r's ring: the msg after since, or -1 for a gap (other epoch,
 * newer than the last, trimmed away). r->len when since is the newest. A gap is an answer
 * (the reply says gap), not an error, so -1 is no GW_E* code. */
static long ib_range_from(const ib_room_t *r, const proto_id_t *since)
{
    if (strcmp(since->epoch, r->epoch) || since->seq > r->seq) return -1;
    if (since->seq == r->seq) return (long)r->len;
    for (size_t i = 0; i < r->len; i++)
        if (r->ring[(r->head + i) % r->cap].seq == since->seq + 1) return (long)i;
    return -1;
}

/* The answer of history_range, as rb_lua_range gives it. Under sh->mu. */
static void ib_range_fill(ib_event_t *e, const ib_room_t *r, const proto_id_t *since)
{
    bus_history_t *h = &e->hist;
    size_t from = 0, len = r ? r->len : 0;
    if (r) {
        snprintf(h->last.epoch, sizeof h->last.epoch, "%s", r->epoch);
        h->last.seq = r->seq;
    }
    if (since) {
        long f = r ? ib_range_from(r, since) : -1;
        h->gap = f < 0;
        from = f < 0 ? 0 : (size_t)f;
    }
    sbuf_t **msgs = xcalloc(len - from + 1, sizeof *msgs);
    uint64_t *seqs = xcalloc(len - from + 1, sizeof *seqs);
    for (size_t i = from; i < len; i++) {
        const ib_hist_t *x = &r->ring[(r->head + i) % r->cap];
        seqs[h->n] = x->seq;
        msgs[h->n++] = sbuf_ref(x->payload);
    }
    h->msgs = msgs;
    h->seqs = seqs;
}

static int ib_history_range(bus_t *base, const char *name, const proto_id_t *since, bus_history_cb cb, void *arg)
{
    ib_bus_t *b = (ib_bus_t *)base;
    ib_event_t *e = ib_event_new(IB_RANGE, name, b);
    e->cb.history = cb;
    e->arg = arg;
    uv_mutex_lock(&b->sh->mu);
    ib_range_fill(e, map_get(&b->sh->rooms, name), since);
    ib_queue_push(b, e);
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

/* map_sweep's take: a bucket that has refilled equals a fresh one. */
static int ib_bucket_full(void *value, void *ctx)
{
    ib_bucket_t *k = value;
    uint64_t now = *(const uint64_t *)ctx;
    if (k->tokens + (double)(now - k->ts_ms) * k->rate / 1000.0 < k->burst) return 0;
    free(k);
    return 1;
}

/* Frees full buckets once many are kept: a few hash buckets per new bucket, so that a pass
 * over the map keeps pace with its growth and no one call scans it all. Under sh->mu. */
static void ib_limits_sweep(bus_inproc_t *sh, uint64_t now)
{
    if (sh->limits.count < IB_LIMITS_SWEEP) return;
    map_sweep(&sh->limits, &sh->limits_cursor, IB_LIMITS_SWEEP_SLICE, ib_bucket_full, &now);
}

static int ib_limit_take(bus_t *base, const char *key, double rate, double burst, bus_limit_cb cb, void *arg)
{
    ib_bus_t *b = (ib_bus_t *)base;
    if (!(rate > 0) || !(burst >= 1) || !isfinite(rate) || !isfinite(burst)) return GW_EINVAL;
    uint64_t now = uv_hrtime() / 1000000;
    ib_event_t *e = ib_event_new(IB_LIMIT, key, b);
    e->cb.limit = cb;
    e->arg = arg;
    uv_mutex_lock(&b->sh->mu);
    ib_bucket_t *k = map_get(&b->sh->limits, key);
    if (!k) {
        ib_limits_sweep(b->sh, now);
        k = xcalloc(1, sizeof *k);
        *k = (ib_bucket_t){burst, now, rate, burst};
        map_set(&b->sh->limits, key, k);
    }
    k->tokens = fmin(burst, k->tokens + (double)(now - k->ts_ms) * rate / 1000.0);
    k->ts_ms = now;
    k->rate = rate;
    k->burst = burst;
    e->allowed = k->tokens >= 1.0;
    if (e->allowed) k->tokens -= 1.0;
    e->tokens = k->tokens;
    ib_queue_push(b, e);
    uv_mutex_unlock(&b->sh->mu);
    return 0;
}

/* ---- delivery on the handle's loop ---- */

static void ib_dispatch(ib_bus_t *b, ib_event_t *e)
{
    const bus_handlers_t *on = &b->base.on;
    void *arg = b->base.arg;
    switch (e->kind) {
    case IB_MSG:
    case IB_PLAIN:
        IB_STAT_ADD(b, received, 1);
        if (on->room_message) on->room_message(arg, e->room, e->payload, e->origin, e->kind == IB_MSG ? &e->id : NULL);
        break;
    case IB_POSTED:
        if (e->cb.post) e->cb.post(e->arg, 0, &e->id, e->payload);
        break;
    case IB_PRESENCE: {
        bus_member_t m = {e->member.id, e->member.name, e->member.muted, e->member.node};
        IB_STAT_ADD(b, received, 1);
        if (on->presence) on->presence(arg, e->room, e->presence, &m);
        break;
    }
    case IB_DIRECT:
        IB_STAT_ADD(b, received, 1);
        if (on->direct) on->direct(arg, e->room, e->payload, e->origin);
        break;
    case IB_LIST: {
        bus_member_t *ms = xcalloc(e->nlist + 1, sizeof *ms);
        for (size_t i = 0; i < e->nlist; i++)
            ms[i] = (bus_member_t){e->list[i].id, e->list[i].name, e->list[i].muted, e->list[i].node};
        if (e->cb.members) e->cb.members(e->arg, 0, ms, e->nlist);
        free(ms);
        break;
    }
    case IB_RANGE:
        if (e->cb.history) e->cb.history(e->arg, 0, &e->hist);
        break;
    case IB_LIMIT:
        if (e->cb.limit) e->cb.limit(e->arg, 0, e->allowed, e->tokens);
        break;
    }
}

static void ib_on_async(uv_async_t *a)
{
    ib_bus_t *b = a->data;
    for (int n = 0; n < IB_DRAIN_MAX; n++) {
        uv_mutex_lock(&b->sh->mu);
        ib_event_t *e = ib_queue_pop(b);
        if (e && n == IB_DRAIN_MAX - 1 && b->head) uv_async_send(&b->async);   /* more: come back later */
        uv_mutex_unlock(&b->sh->mu);
        if (!e) return;
        ib_dispatch(b, e);
        ib_event_free(e);
    }
}

/* ---- lifecycle ---- */

static void ib_on_closed(uv_handle_t *h) { free(h->data); }

/* Leaves the shared state: b's members go (leave events to the others), its subscriptions
 * and queue too. Under sh->mu. */
static void ib_detach(ib_bus_t *b)
{
    bus_inproc_t *sh = b->sh;
    for (size_t i = 0; i < sh->nhandles; i++)
        if (sh->handles[i] == b) {
            sh->handles[i] = sh->handles[--sh->nhandles];
            break;
        }
    size_t it;
    for (map_entry_t *e = map_first(&sh->rooms, &it), *next; e; e = next) {
        next = map_next(&sh->rooms, e, &it);
        ib_room_t *r = e->value;
        int s = ib_room_sub_index(r, b);
        if (s >= 0) r->subs[s] = r->subs[--r->nsubs];
        for (size_t i = r->nmembers; i-- > 0;)
            if (!strcmp(r->members[i].node, b->base.node)) ib_member_remove(r, b, i);
        ib_room_release(sh, r);    /* next stays valid: only r's entry goes */
    }
    for (ib_event_t *e; (e = ib_queue_pop(b));) ib_event_free(e);
}

static void ib_free(bus_t *base)
{
    ib_bus_t *b = (ib_bus_t *)base;
    uv_mutex_lock(&b->sh->mu);
    ib_detach(b);
    uv_mutex_unlock(&b->sh->mu);
    uv_close((uv_handle_t *)&b->async, ib_on_closed);
}

static const bus_ops_t ib_ops = {
    .room_subscribe = ib_room_subscribe,
    .room_unsubscribe = ib_room_unsubscribe,
    .room_publish = ib_room_publish,
    .room_post = ib_room_post,
    .direct_publish = ib_direct_publish,
    .presence_add = ib_presence_add,
    .presence_remove = ib_presence_remove,
    .presence_list = ib_presence_list,
    .history_range = ib_history_range,
    .limit_take = ib_limit_take,
    .free = ib_free,
};

int bus_inproc_open(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
                    char *err, size_t errlen)
{
    const char *node = opts->node_id;
    bus_inproc_t *sh = opts->inproc;
    ib_bus_t *b = xcalloc(1, sizeof *b);
    b->base.ops = &ib_ops;
    b->base.kind = "inproc";
    if (on) b->base.on = *on;
    b->base.arg = arg;
    snprintf(b->base.node, sizeof b->base.node, "%s", node);
    b->base.stats.up = 1;
    b->sh = sh;
    uv_async_init(loop, &b->async, ib_on_async);
    b->async.data = b;
    uv_unref((uv_handle_t *)&b->async);   /* the bus alone does not keep a loop alive */
    uv_mutex_lock(&sh->mu);
    for (size_t i = 0; i < sh->nhandles; i++)
        if (!strcmp(sh->handles[i]->base.node, node)) {
            uv_mutex_unlock(&sh->mu);
            snprintf(err, errlen, "node id: \"%s\" is already open on this bus", node);
            uv_close((uv_handle_t *)&b->async, ib_on_closed);
            return GW_EINVAL;
        }
    if (sh->nhandles == sh->handles_cap) {
        sh->handles_cap = sh->handles_cap ? sh->handles_cap * 2 : 4;
        sh->handles = xrealloc(sh->handles, sh->handles_cap * sizeof *sh->handles);
    }
    sh->handles[sh->nhandles++] = b;
    uv_mutex_unlock(&sh->mu);
    *out = &b->base;
    return 0;
}

bus_inproc_t *bus_inproc_new(long history_size)
{
    bus_inproc_t *sh = xcalloc(1, sizeof *sh);
    if (uv_mutex_init(&sh->mu) != 0) abort();
    sh->history_size = history_size;
    map_init(&sh->rooms);
    map_init(&sh->limits);
    return sh;
}

void bus_inproc_free(bus_inproc_t *sh)
{
    if (!sh) return;
    size_t i;
    for (map_entry_t *e = map_first(&sh->rooms, &i); e; e = map_next(&sh->rooms, e, &i)) ib_room_free(e->value);
    for (map_entry_t *e = map_first(&sh->limits, &i); e; e = map_next(&sh->limits, e, &i)) free(e->value);
    map_free(&sh->rooms);
    map_free(&sh->limits);
    free(sh->handles);
    uv_mutex_destroy(&sh->mu);
    free(sh);
}

/* ---- the HTTP API's view ---- */

json_t *bus_inproc_rooms_json(bus_inproc_t *sh)
{
    json_t *rooms = json_array();
    uv_mutex_lock(&sh->mu);
    size_t i;
    for (map_entry_t *e = map_first(&sh->rooms, &i); e; e = map_next(&sh->rooms, e, &i)) {
        const ib_room_t *r = e->value;
        if (r->nmembers)
            json_array_append_new(rooms, json_pack("{s:s, s:I}", "name", r->name, "online", (json_int_t)r->nmembers));
    }
    uv_mutex_unlock(&sh->mu);
    return rooms;
}

json_t *bus_inproc_room_json(bus_inproc_t *sh, const char *room)
{
    json_t *out = NULL;
    uv_mutex_lock(&sh->mu);
    const ib_room_t *r = map_get(&sh->rooms, room);
    if (r && r->nmembers) {
        json_t *members = json_array();
        for (size_t i = 0; i < r->nmembers; i++)
            json_array_append_new(members, json_pack("{s:s, s:s, s:b}", "id", r->members[i].id, "name",
                                                     r->members[i].name, "muted", r->members[i].muted));
        out = json_pack("{s:s, s:I, s:o}", "name", r->name, "online", (json_int_t)r->nmembers, "members", members);
    }
    uv_mutex_unlock(&sh->mu);
    return out;
}
