/* hub_int: the hub's internals shared by hub.c (rooms, members, local history, client
 * messages, the policy host API) and hub_sync.c (the hub's side of the bus: requests in flight,
 * the mirror of other replicas' members, snapshots, history and refills through the bus, and
 * posts in Redis's order). Not for other modules: they use hub.h. */
#ifndef CHATGW_HUB_INT_H
#define CHATGW_HUB_INT_H

#include <jansson.h>

#include "bus/bus.h"
#include "hub/hub.h"
#include "base/map.h"
#include "proto/proto.h"

#define HUB_ID_BYTES 12            /* 96 random bits, 16 base64url characters */
#define HUB_EPOCH_BYTES 6

typedef struct hub_room_s hub_room_t;

typedef struct hub_queued_s {
    bus_id_t id;
    sbuf_t *payload;
} hub_queued_t;

typedef struct {
    char epoch[BUS_EPOCH_MAX];     /* the hub's own epoch, or the bus's (Redis) */
    uint64_t seq;
    sbuf_t *payload;
} hub_hist_t;

/* A member's join through the bus (Redis): allocated while it matters, so a member of a room
 * without Redis costs a pointer. */
typedef struct {
    int pending;                   /* joined; its room snapshot waits for the bus: no fan-out yet */
    bus_id_t floor;                /* seq 0, or the newest msg its snapshot held: the room's
                                    * channel may still bring older ones, which it must not get twice */
    hub_queued_t *held;            /* msgs delivered here while pending, sent when the snapshot came */
    size_t nheld, held_cap;
    int held_lost;                 /* more than HUB_HELD_MAX came: the oldest were dropped */
} hub_joining_t;

typedef struct {
    struct hub_client_s *client;
    int muted;
    hub_joining_t *join;           /* NULL once the join is settled (always without Redis) */
} hub_member_t;

static inline int hub_member_pending(const hub_member_t *m) { return m->join && m->join->pending; }

#define HUB_HELD_MAX 4096          /* msgs held for one pending member */

/* A member held by another replica (the bus's presence), mirrored for snapshots and the API. */
typedef struct {
    char *id, *name, *node;
    int muted;
    uint64_t touched;              /* hub->pres_seq when an event last changed it */
} hub_remote_t;

struct hub_room_s {
    char *name;
    uint64_t serial;               /* tells a room from a later one of the same name */
    char epoch[HUB_EPOCH_BYTES * 2 + 1];   /* ids the hub assigns itself (no bus, or bus down) */
    uint64_t seq;
    char last_epoch[BUS_EPOCH_MAX];        /* the newest id delivered here, whoever assigned it */
    uint64_t last_seq;
    hub_member_t *members;
    size_t nmembers, cap;
    hub_remote_t *remote;          /* other replicas' members */
    size_t nremote, remote_cap;
    bus_id_t bus_last;             /* the newest Redis id delivered here ("" = the store had none) */
    int bus_known;                 /* bus_last is a position: the next msg must follow it */
    int bus_init;                  /* bus_last was set once (by a delivery or the first snapshot) */
    int filling;                   /* refills in flight after a reconnect: channel msgs wait */
    hub_queued_t *queue;
    size_t nqueue, queue_cap;
    hub_hist_t *hist;              /* ring of up to hist_max (history_size) entries */
    size_t hist_max, hist_cap, hist_len, hist_head;
};

typedef struct hub_client_s {
    conn_t *conn;                  /* NULL between admit and attach */
    char id[24];
    char *name;                    /* owned */
    const char *ip;                /* the conn's, which outlives the client */
    char *query;                   /* the upgrade URL's query parameters for hooks, or NULL */
    hub_room_t **rooms;
    size_t nrooms;
    double tokens;
    uint64_t tokens_ms;
} hub_client_t;

typedef struct hub_op_s hub_op_t;

#define HUB_TOMBSTONES 128         /* recent remote leaves, so a stale list cannot revive them */

typedef struct {
    char room[PROTO_MAX_ROOM + 1];
    char id[32];
    uint64_t seq;
} hub_tombstone_t;

struct hub_s {
    gw_t *gw;
    map_t rooms;                   /* name -> hub_room_t */
    map_t clients;                 /* id -> hub_client_t */
    uv_timer_t *tick;              /* on_tick, once a second; freed by its close callback */
    bus_t *bus;                    /* bus_local until hub_bus_open */
    int remote;                    /* the bus reaches other replicas (Redis) */
    hub_op_t *ops;                 /* bus requests in flight (their callbacks point here) */
    hub_op_t *parked;              /* answered snapshots waiting for their room's channel */
    struct hub_limit_s *limits;    /* gw.limit takes mirrored to the bus, in flight */
    uint64_t pres_seq;             /* counts remote presence changes applied */
    uint64_t room_serial;
    hub_tombstone_t tombs[HUB_TOMBSTONES];
    size_t tomb_next;
    uint64_t msg_t0;               /* uv_hrtime() when the frame being handled arrived */
};

#define HUB_CODE_LEN 64            /* error codes from the policy */

/* hub.c */
int64_t hub_wall_ms(void);
void hub_send(hub_t *hub, hub_client_t *cl, sbuf_t *payload);
void hub_room_fanout(hub_t *hub, hub_room_t *room, sbuf_t *payload, const hub_client_t *skip);
hub_room_t *hub_room_get(hub_t *hub, const char *name);
void hub_remote_free(hub_remote_t *m);
hub_member_t *hub_room_member(hub_room_t *r, const hub_client_t *cl);
json_t *hub_room_members_json(const hub_room_t *r);
void hub_hist_push(hub_room_t *r, const char *epoch, uint64_t seq, sbuf_t *payload);
const hub_hist_t *hub_hist_at(const hub_room_t *r, size_t i);
void hub_send_gap(hub_t *hub, hub_room_t *r, hub_client_t *cl);
sbuf_t **hub_hist_recover(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since, size_t *n);
void hub_history_send(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
void hub_room_snapshot(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
hub_client_t *hub_client_find(hub_t *hub, const char *id);

/* hub_sync.c */
void hub_history_start(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
void hub_ops_free(hub_t *hub);
void hub_member_release(hub_member_t *m);
void hub_parked_check(hub_t *hub, const char *room);
void hub_room_deliver(hub_t *hub, hub_room_t *r, const bus_id_t *id, sbuf_t *payload, int from_bus);
void hub_bus_metrics(hub_t *hub);
hub_remote_t *hub_remote_find(hub_room_t *r, const char *id);
void hub_bus_on_presence(void *arg, const char *room, int event, const bus_member_t *bm);
void hub_snapshot_start(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
void hub_rooms_relist(hub_t *hub);
void hub_latency_observe(hub_t *hub, uint64_t t0);
void hub_room_post(hub_t *hub, const char *room, const char *from_id, const char *from_name, const char *text,
                   json_t *extra, const char *client, json_t *cid);

#endif
