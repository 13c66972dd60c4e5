/* bus: what one chatgw node shares with the other replicas: room fan-out (publish/subscribe),
 * presence, history ids and streams, and rate-limit buckets. Three implementations sit behind
 * one table of operations, chosen by bus_open (bus.c): bus_local.c (single node: nothing is
 * remote, and the stores answer GW_ENOTSUP so the hub keeps its own ring, ids and buckets),
 * bus_inproc.c (the worker threads of one process, see bus_inproc.h) and bus_redis.c (Redis
 * through hiredis's async API on the libuv loop). A bus lives on one loop and is not
 * thread-safe.
 * It never blocks the loop: every answer from Redis comes back through a callback, and a call
 * that cannot be served at once fails at once (GW_EDOWN) so the hub can fall back to local
 * delivery. It never sees sockets of clients and never encodes, parses or edits protocol
 * frames: it carries ids (proto/proto_id.h) and opaque payloads, and gets the same bytes back on the
 * other replicas; a chat msg's id goes in at the slot the caller names (bus_room_post).
 *
 * Calls that take a callback return 0 when the request is queued, and then the callback runs
 * exactly once, later, from the loop; or they return a negative GW_E* code (base/err.h) and
 * the callback never runs. Strings passed in are copied; pointers handed to callbacks are
 * borrowed for the duration of the call (sbuf_ref a payload to keep it). After bus_free no
 * callback runs.
 * bus_redis needs Redis 6.2 or later (SET ... GET, Streams, EVALSHA). */
#ifndef CHATGW_BUS_H
#define CHATGW_BUS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "base/buf.h"
#include "base/config.h"
#include "base/err.h"
#include "base/metrics.h"
#include "proto/proto_id.h"

/* Error codes: 0, or a negative GW_E* code (base/err.h):
 *   GW_EDOWN      the shared store is unreachable now; nothing was done
 *   GW_ENOTSUP    this bus keeps no such state (bus_local): use the hub's own
 *   GW_EINVAL     bad argument (id slot past the payload, rate <= 0, bad URL, ...)
 *   GW_ETIMEDOUT  no answer within command_timeout_ms; the link was reset
 *   GW_EREPLY     Redis answered an error (logged, counted in errors[op]; an OOM is logged as
 *                 an error and sets refusing) */

#define BUS_NODE_MAX (CONFIG_NODE_ID_MAX + 1)   /* node ids: config_load checks them */

/* A room member. In events and lists, node is the replica that holds the connection. */
typedef struct {
    const char *id;
    const char *name;
    int muted;
    const char *node;          /* ignored by bus_presence_add */
} bus_member_t;

enum { BUS_PRESENCE_JOIN, BUS_PRESENCE_LEAVE, BUS_PRESENCE_UPDATE };

/* What other replicas did; every handler is optional. Own messages are never handed back
 * (node id guard). Per room, handlers run in the one order Redis gave the room's channel. */
typedef struct {
    /* A payload another node sent to room: from bus_room_post (id set: the msg id, also kept
     * in history) or bus_room_publish (id NULL). */
    void (*room_message)(void *arg, const char *room, sbuf_t *payload, const char *origin, const proto_id_t *id);
    /* A member of another node joined, left (also when its node died: member->node is the
     * dead node) or changed (muted). */
    void (*presence)(void *arg, const char *room, int event, const bus_member_t *member);
    /* bus_direct_publish from another node; deliver when the connection `to` is local. */
    void (*direct)(void *arg, const char *to, sbuf_t *payload, const char *origin);
    /* The link went up (1) or down (0): /readyz "redis". */
    void (*status)(void *arg, int up);
} bus_handlers_t;

typedef struct {
    const char *redis_url;     /* "" or NULL: bus_local. redis://[[user]:password@]host[:port][/db] */
    const char *password_file; /* "" or NULL: none; else its content (trailing newline cut)
                                * replaces the URL's password (Kubernetes Secret) */
    const char *node_id;       /* "" or NULL: 16 random hex digits. Else taken as valid (1..63
                                * bytes, no '\n': config_load checks node_id) */
    /* Redis timings, all > 0: config's values (redis_*, presence_ttl_ms; the defaults live
     * there) */
    long connect_timeout_ms;   /* resolve + connect + AUTH + script load */
    long command_timeout_ms;   /* oldest unanswered command; the link is reset after */
    long backoff_min_ms;       /* first reconnect delay, doubled per failed try */
    long backoff_max_ms;       /* cap (raised to backoff_min_ms); each delay is jittered to [d/2, d] */
    long presence_ttl_ms;      /* node heartbeat TTL; heartbeat every ttl/3 */
    long history_size;         /* stream MAXLEN ~ and the newest-N answer on a gap; 0 = none */
    const char *sentinels;     /* "" or NULL: none. Else "host:port,host:port": the master of
                                * sentinel_master comes from them (redis_url then gives only the
                                * user, password and db) */
    const char *sentinel_master;
    const char *sentinel_password_file;   /* "" or NULL: the sentinels take no AUTH */
    const char *cluster_nodes; /* "" or NULL: none. Else "host:port,...": seeds of a Redis Cluster
                                * (redis_url then gives only the user and password; db must be 0) */
    long room_ttl_ms;          /* a room's keys expire this long after its last activity (a post,
                                * a presence change, a live node's reaper pass); 0 = never */
    struct bus_inproc_s *inproc; /* without redis_url: the workers' shared state (bus_inproc.h);
                                * NULL = bus_local */
} bus_options_t;

/* Counters for /metrics (report as chatgw_bus_up, chatgw_bus_reconnects_total,
 * chatgw_bus_published_total, chatgw_bus_received_total, chatgw_bus_errors_total{op},
 * chatgw_bus_refusing, chatgw_bus_shards_down). */
typedef struct {
    uint64_t up;               /* gauge: 1 while the link works; always 1 for bus_local */
    uint64_t reconnects;       /* links re-established after the first */
    uint64_t published;        /* room_publish, room_post and direct_publish accepted by Redis */
    uint64_t received;         /* messages and presence events from other nodes, handed to handlers */
    uint64_t errors[METRICS_BUS_OPS];   /* requests Redis refused (error reply: OOM, ...) or never
                                * answered, by METRICS_BUS_OP_*; LINK: links lost or refused */
    uint64_t refusing;         /* gauge: 1 while Redis answers writes with errors (OOM, READONLY);
                                * 0 again after a write it took */
    uint64_t shards_down;      /* gauge: a Redis Cluster's masters this node cannot reach while the
                                * others serve (up stays 1; rooms on them fall back) */
} bus_stats_t;

typedef struct bus_s bus_t;

typedef void (*bus_post_cb)(void *arg, int status, const proto_id_t *id, sbuf_t *payload);
typedef void (*bus_members_cb)(void *arg, int status, const bus_member_t *members, size_t n);
typedef struct {
    proto_id_t last;             /* the room's current epoch and newest seq */
    int gap;                   /* since is not kept (other epoch, trimmed, lost): send
                                * history_gap; msgs are then the newest history_size kept */
    size_t n;
    sbuf_t *const *msgs;       /* numbered payloads, oldest first */
    const uint64_t *seqs;
} bus_history_t;
typedef void (*bus_history_cb)(void *arg, int status, const bus_history_t *h);
typedef void (*bus_limit_cb)(void *arg, int status, int allowed, double tokens);
typedef void (*bus_join_cb)(void *arg, int status, int admitted);
typedef void (*bus_sent_cb)(void *arg, int status, int delivered);
/* n byte strings (not NUL-terminated: lens), borrowed for the call. */
typedef void (*bus_strings_cb)(void *arg, int status, const char *const *items, const size_t *lens, size_t n);
/* A request's callback, whichever kind it is (the implementations keep one per request). */
typedef union {
    bus_post_cb post;
    bus_members_cb members;
    bus_history_cb history;
    bus_limit_cb limit;
    bus_strings_cb strings;
    bus_join_cb join;
    bus_sent_cb sent;
} bus_cb_t;

/* Opens the bus that opts asks for (NULL: bus_local with a random node id): bus_redis when
 * redis_url is set, else bus_inproc when inproc is set, else bus_local. The Redis link starts
 * connecting at once (status handler fires when it is up). Returns 0 and *out, or GW_EINVAL
 * with a one-line message naming the option in err. */
int bus_open(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
             char *err, size_t errlen);
/* Stops the bus: removes this node's members from the shared presence and its heartbeat
 * (best effort, bounded by command_timeout_ms), then closes. No callback runs after this
 * returns. bus_redis frees its memory from close callbacks: keep running the loop. */
void bus_free(bus_t *bus);

/* Parsed redis_url (for validation at config load as well). */
typedef struct {
    char *host;                /* without [] for IPv6 */
    int port;                  /* default 6379 */
    int db;                    /* default 0 */
    char *user, *password;     /* NULL when absent; percent-decoded */
} bus_url_t;
int bus_url_parse(const char *url, bus_url_t *out, char *err, size_t errlen);
void bus_url_free(bus_url_t *u);

/* ---- the implementation side: one table per kind ---- */
typedef struct {
    int (*room_subscribe)(bus_t *, const char *room);
    int (*room_unsubscribe)(bus_t *, const char *room);
    int (*room_publish)(bus_t *, const char *room, const void *payload, size_t len);
    int (*room_post)(bus_t *, const char *room, const void *payload, size_t len, size_t id_at, bus_post_cb cb,
                     void *arg);
    int (*direct_publish)(bus_t *, const char *to, const void *payload, size_t len);
    int (*presence_add)(bus_t *, const char *room, const bus_member_t *m);
    int (*presence_remove)(bus_t *, const char *room, const char *member_id);
    int (*presence_list)(bus_t *, const char *room, bus_members_cb cb, void *arg);
    int (*history_range)(bus_t *, const char *room, const proto_id_t *since, bus_history_cb cb, void *arg);
    int (*limit_take)(bus_t *, const char *key, double rate, double burst, bus_limit_cb cb, void *arg);
    /* optional (NULL: GW_ENOTSUP) */
    int (*node_report)(bus_t *, const char *report, size_t len);
    int (*node_reports)(bus_t *, bus_strings_cb cb, void *arg);
    int (*presence_join)(bus_t *, const char *room, const bus_member_t *m, long max, bus_join_cb cb, void *arg);
    int (*conn_add)(bus_t *, const char *id);
    int (*conn_remove)(bus_t *, const char *id);
    int (*direct_send)(bus_t *, const char *to, const void *payload, size_t len, bus_sent_cb cb, void *arg);
    void (*free)(bus_t *);
} bus_ops_t;

struct bus_s {
    const bus_ops_t *ops;
    const char *kind;          /* "local", "inproc" or "redis" */
    bus_handlers_t on;
    void *arg;
    char node[BUS_NODE_MAX];
    bus_stats_t stats;         /* relaxed atomics; read with bus_stats_get */
};

/* The backends' constructors, for bus_open only: opts->node_id is set. */
int bus_local_new(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
                  char *err, size_t errlen);
int bus_inproc_open(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
                    char *err, size_t errlen);
int bus_redis_new(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
                  char *err, size_t errlen);

/* ---- the interface ---- */

static inline const char *bus_node_id(const bus_t *b) { return b->node; }
static inline const char *bus_kind(const bus_t *b) { return b->kind; }
static inline void bus_stats_get(const bus_t *b, bus_stats_t *out)
{
    out->up = __atomic_load_n(&b->stats.up, __ATOMIC_RELAXED);
    out->reconnects = __atomic_load_n(&b->stats.reconnects, __ATOMIC_RELAXED);
    out->published = __atomic_load_n(&b->stats.published, __ATOMIC_RELAXED);
    out->received = __atomic_load_n(&b->stats.received, __ATOMIC_RELAXED);
    for (int i = 0; i < METRICS_BUS_OPS; i++) out->errors[i] = __atomic_load_n(&b->stats.errors[i], __ATOMIC_RELAXED);
    out->refusing = __atomic_load_n(&b->stats.refusing, __ATOMIC_RELAXED);
    out->shards_down = __atomic_load_n(&b->stats.shards_down, __ATOMIC_RELAXED);
}

/* Room interest: subscribe when the first local member joins, unsubscribe when the last
 * leaves. Idempotent flags, not counters. Always 0: the bus remembers the wish and
 * (re)subscribes whenever the link is up; messages for a room not wanted are dropped. */
static inline int bus_room_subscribe(bus_t *b, const char *room) { return b->ops->room_subscribe(b, room); }
static inline int bus_room_unsubscribe(bus_t *b, const char *room) { return b->ops->room_unsubscribe(b, room); }

/* Fire and forget: payload (any bytes) reaches room_message on the other nodes, id NULL
 * (presence-independent events: signal, mute frames, policy broadcasts). The caller delivers
 * to its own members itself. 0, or GW_EDOWN while the link is down. */
static inline int bus_room_publish(bus_t *b, const char *room, const void *payload, size_t len)
{
    return b->ops->room_publish(b, room, payload, len);
}

/* A chat msg with a shared id: atomically in Redis, takes the room's next seq (a new epoch
 * when the room's keys are lost), numbers the payload (borrowed: the msg without its id) by
 * inserting the id's text at byte id_at (proto_msg_number), appends it to the room's
 * stream and publishes it. cb gets the id and the numbered payload; for a room this node
 * subscribes to, cb runs when the msg comes back on the room's channel, i.e. at its place in
 * the one order every replica sees: deliver it to local members (and ack) from cb, not
 * before. GW_EDOWN when down (deliver locally with the hub's own id: proto_msg_number),
 * GW_EINVAL for id_at > len, GW_ENOTSUP on bus_local. A status other than 0 in cb means the
 * msg may or may not have reached Redis (the link dropped before the answer). */
static inline int bus_room_post(bus_t *b, const char *room, const void *payload, size_t len, size_t id_at,
                                bus_post_cb cb, void *arg)
{
    return b->ops->room_post(b, room, payload, len, id_at, cb, arg);
}

/* Fire and forget: payload reaches the direct handler on every other node, which delivers
 * when the connection `to` is its own (dm across replicas). 0 or GW_EDOWN. */
static inline int bus_direct_publish(bus_t *b, const char *to, const void *payload, size_t len)
{
    return b->ops->direct_publish(b, to, payload, len);
}

/* This node's members of room in the shared presence hash: add (again, to change muted),
 * remove. The other nodes get join/leave/update events. 0 even while down: the bus keeps a
 * mirror and re-registers it after every reconnect (and when its own heartbeat had expired);
 * GW_EINVAL for a member without id/name or with invalid UTF-8.
 * Events are not replayed: a node that was down or resubscribing misses what happened
 * meanwhile, so after status(1) the hub re-lists its rooms (bus_presence_list) and
 * reconciles, as it fills message gaps with bus_history_range. */
static inline int bus_presence_add(bus_t *b, const char *room, const bus_member_t *m)
{
    return b->ops->presence_add(b, room, m);
}
static inline int bus_presence_remove(bus_t *b, const char *room, const char *member_id)
{
    return b->ops->presence_remove(b, room, member_id);
}
/* bus_presence_add under max_room_members across every replica: Redis adds m only while the
 * room's shared presence holds fewer than max members (0 = no cap), in the same script that
 * records the join, so two replicas cannot both take the last place. cb: status 0 and
 * admitted 1/0; a refused m is dropped from the mirror too. A status other than 0 means the
 * link went before the answer: m stays in the mirror like any bus_presence_add. GW_EDOWN (use
 * bus_presence_add and the local cap) or GW_ENOTSUP (no cap across replicas on this bus). */
static inline int bus_presence_join(bus_t *b, const char *room, const bus_member_t *m, long max, bus_join_cb cb,
                                    void *arg)
{
    return b->ops->presence_join ? b->ops->presence_join(b, room, m, max, cb, arg) : GW_ENOTSUP;
}
/* All replicas' members of room (members of dead nodes are removed on the way, with leave
 * events). Order is unspecified. GW_EDOWN or GW_ENOTSUP: use the local members. */
static inline int bus_presence_list(bus_t *b, const char *room, bus_members_cb cb, void *arg)
{
    return b->ops->presence_list(b, room, cb, arg);
}

/* The room's kept msgs after since (an id the caller parsed, or NULL for the newest
 * history_size). A since from another epoch, trimmed away or newer than the room's last id
 * gives gap = 1. GW_EDOWN or GW_ENOTSUP: use the hub's ring.
 * For a room this node subscribes to, this read and bus_presence_list are taken only once the
 * subscription is on, so every msg after h->last comes on the room's channel (the first
 * joiner's race). */
static inline int bus_history_range(bus_t *b, const char *room, const proto_id_t *since, bus_history_cb cb,
                                    void *arg)
{
    return b->ops->history_range(b, room, since, cb, arg);
}

/* Takes one token from the shared bucket key (rate tokens per second, burst capacity), with
 * Redis's clock. cb: allowed 1/0 and the tokens left. GW_EINVAL for rate <= 0 or burst < 1;
 * GW_EDOWN or GW_ENOTSUP: use a local bucket. */
static inline int bus_limit_take(bus_t *b, const char *key, double rate, double burst, bus_limit_cb cb, void *arg)
{
    return b->ops->limit_take(b, key, rate, burst, cb, arg);
}

/* This node's connections, by id, so that a direct frame to an id no node holds is known as
 * such (bus_direct_send). Kept in a mirror and registered again after every reconnect, like
 * presence. 0 (also while down), or GW_ENOTSUP. */
static inline int bus_conn_add(bus_t *b, const char *id)
{
    return b->ops->conn_add ? b->ops->conn_add(b, id) : GW_ENOTSUP;
}
static inline int bus_conn_remove(bus_t *b, const char *id)
{
    return b->ops->conn_remove ? b->ops->conn_remove(b, id) : GW_ENOTSUP;
}
/* bus_direct_publish to the node that holds the connection `to`, if a live one does: cb gets
 * delivered 1 (handed to that node) or 0 (no node holds it: unknown_peer). GW_EDOWN, or
 * GW_ENOTSUP (use bus_direct_publish). */
static inline int bus_direct_send(bus_t *b, const char *to, const void *payload, size_t len, bus_sent_cb cb,
                                  void *arg)
{
    return b->ops->direct_send ? b->ops->direct_send(b, to, payload, len, cb, arg) : GW_ENOTSUP;
}

/* This node's report (opaque bytes: the hub's JSON of its clients and rooms), kept in the
 * shared store for presence_ttl_ms; a node writes it again before then while it lives.
 * 0 (queued), GW_EDOWN, or GW_ENOTSUP (no other replicas: the hub knows everything). */
static inline int bus_node_report(bus_t *b, const char *report, size_t len)
{
    return b->ops->node_report ? b->ops->node_report(b, report, len) : GW_ENOTSUP;
}
/* Every live node's last report (this one's included), in no particular order. Queued after
 * an earlier bus_node_report on the same link, so it sees that one. */
static inline int bus_node_reports(bus_t *b, bus_strings_cb cb, void *arg)
{
    return b->ops->node_reports ? b->ops->node_reports(b, cb, arg) : GW_ENOTSUP;
}

#endif
