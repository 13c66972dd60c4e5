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
    proto_id_t id;
    sbuf_t *payload;
} hub_queued_t;

typedef struct {
    char epoch[PROTO_EPOCH_MAX];     /* the hub's own epoch, or the bus's (Redis) */
    uint64_t seq;
    sbuf_t *payload;
} hub_hist_t;

/* A member's join through the bus (Redis): allocated while it matters, so a member of a room
 * without Redis costs a pointer. */
typedef struct {
    int pending;                   /* joined; its room snapshot waits for the bus: no fan-out yet */
    proto_id_t floor;                /* seq 0, or the newest msg its snapshot held: the room's
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
    char last_epoch[PROTO_EPOCH_MAX];        /* the newest id delivered here, whoever assigned it */
    uint64_t last_seq;
    hub_member_t *members;
    size_t nmembers, cap;
    hub_remote_t *remote;          /* other replicas' members */
    size_t nremote, remote_cap;
    proto_id_t bus_last;             /* the newest Redis id delivered here ("" = the store had none) */
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
    policy_pair_t *query;          /* owned, one block: the URL's pairs for hooks, or NULL */
    policy_conn_slot_t *pslot;     /* the policy's cache for this conn (policy_conn_forget) */
    unsigned pgen;                 /* policy_conn_t.gen: counts renames */
    char *join_room, *join_since;  /* owned: the URL's join, from admit until attach; or NULL */
    hub_room_t **rooms;
    size_t nrooms;
    double tokens;
    uint64_t tokens_ms;
} hub_client_t;

typedef struct hub_op_s hub_op_t;
typedef struct hub_voice_s hub_voice_t;

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
    hub_voice_t *voice;            /* voice through Janus (janus_url), or NULL */
    uint64_t msg_t0;               /* uv_hrtime() when the frame being handled arrived */
    char *report;                  /* the last node report written to the bus (hub_report_tick) */
    uint64_t report_ms;
};

#define HUB_CODE_LEN 64            /* error codes from the policy */

/* Ownership: a function that "takes" an sbuf_t payload owns the caller's reference from then
 * on (the caller passes a new one, e.g. from proto_*, or sbuf_ref); one that "borrows" it
 * takes its own references where it keeps the buffer. JSON arguments are borrowed. */

/* hub.c */
int64_t hub_wall_ms(void);         /* the wall clock in ms, for a msg's ts */
/* One frame to one client, queued by server_conn_send_msg (which borrows). Takes payload. */
void hub_send(hub_t *hub, hub_client_t *cl, sbuf_t *payload);
/* The room send loop: payload, framed once, to every member of r but skip (may be NULL). A frame
 * without an id (presence, errors, custom types) skips pending joiners; a msg (id set) is held
 * for them and skipped by one whose snapshot held it (hub_member_takes). Counts
 * msgs_delivered. Takes payload. */
void hub_room_send(hub_t *hub, hub_room_t *r, sbuf_t *payload, const hub_client_t *skip, const proto_id_t *id);
hub_room_t *hub_room_get(hub_t *hub, const char *name);   /* this hub's room, or NULL */
void hub_remote_free(hub_remote_t *m);                     /* frees m's strings, not m */
/* cl's member entry in r, or NULL when cl is not in r. */
hub_member_t *hub_room_member(hub_room_t *r, const hub_client_t *cl);
/* [{id,name,muted}]: local members in join order, then the mirrored ones; new reference. */
json_t *hub_room_members_json(const hub_room_t *r);
/* Keeps payload in r's ring as its newest msg, id epoch:seq. Borrows payload (the ring takes
 * its own reference). */
void hub_hist_push(hub_room_t *r, const char *epoch, uint64_t seq, sbuf_t *payload);
/* The i-th oldest entry of r's ring (i < r->hist_len); borrowed. */
const hub_hist_t *hub_hist_at(const hub_room_t *r, size_t i);
/* Sends cl history_gap for r: msgs after its since are lost. */
void hub_send_gap(hub_t *hub, hub_room_t *r, hub_client_t *cl);
/* The ring's msgs after since (NULL: all kept), after history_gap to cl when since is lost: a
 * new array (the caller frees it, not its entries) of borrowed payloads, its count in *n. */
sbuf_t **hub_hist_recover(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since, size_t *n);
/* Sends cl `history` after since from the ring (single node, or the bus failed). */
void hub_history_send(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
/* Sends cl `room` (members and the ring's history after since) from the hub's own state. */
void hub_snapshot_send(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
hub_client_t *hub_client_find(hub_t *hub, const char *id);   /* an attached client, or NULL */
/* cl may not stay in r after all (the room is full across replicas): it leaves r without a
 * leave event (none saw it join) and gets room_full. */
void hub_room_refuse(hub_t *hub, hub_client_t *cl, hub_room_t *r);

/* hub_sync.c */
/* Sends cl `history` after since: from the shared history through the bus, answered later
 * (the ring when the bus fails). */
void hub_history_start(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
/* Frees the bus requests in flight, which the bus will never answer (after bus_free). */
void hub_ops_free(hub_t *hub);
/* Ends m's join through the bus: frees its held msgs (their references) and m->join. */
void hub_member_release(hub_member_t *m);
/* For hub_room_send, on a member with a join in progress (m->join): 1 when m gets the frame
 * now. A pending joiner holds a msg (id set) for after its snapshot (a reference of its own:
 * payload is borrowed); one whose snapshot held the msg skips it, and past that the join is
 * settled. */
int hub_member_takes(hub_member_t *m, const proto_id_t *id, sbuf_t *payload);
/* Finishes the parked snapshots of room (NULL: every room) whose channel caught up or that
 * waited too long. */
void hub_parked_check(hub_t *hub, const char *room);
/* A msg with its final id: into r's ring, then to the room (hub_room_send). From the bus
 * (from_bus) it goes out in the room's order, once: old ones are dropped, a hole is refilled
 * first. Takes payload. */
void hub_room_deliver(hub_t *hub, hub_room_t *r, const proto_id_t *id, sbuf_t *payload, int from_bus);
/* The next id the hub assigns itself in r (no bus, or the bus down): its epoch, ++seq. */
proto_id_t hub_room_own_id(hub_room_t *r);
void hub_bus_metrics(hub_t *hub);  /* copies the bus's counters into the metrics */
/* Once a second: writes this node's report (clients, rooms' local members) to the bus when it
 * changed or is a third of presence_ttl_ms old, for the cluster-wide API. */
void hub_report_tick(hub_t *hub);
/* The mirrored member id of r (another replica's), or NULL; borrowed. */
hub_remote_t *hub_remote_find(hub_room_t *r, const char *id);
/* The bus's presence handler (bus_handlers_t.presence): another replica's member joined, left
 * or (un)muted; bm is borrowed. */
void hub_bus_on_presence(void *arg, const char *room, int event, const bus_member_t *bm);
/* Sends cl `room`: now from the hub's own state on a single node, else through the bus (every
 * replica's members, the shared history) once it answers. */
void hub_snapshot_start(hub_t *hub, hub_room_t *r, hub_client_t *cl, const char *since);
/* After the link came back: lists every room's members again and refills its msgs. */
void hub_rooms_relist(hub_t *hub);
/* Records cl's join of r in the shared presence under max_room_members across replicas; the
 * room's local members get the join event once Redis admitted it, and a refused cl leaves
 * again (hub_room_refuse). Without an answer (Redis down) the local cap alone holds. */
void hub_presence_join(hub_t *hub, hub_room_t *r, hub_client_t *cl);
/* A dm to a connection this replica does not hold: sent to the node that holds it; cl gets the
 * ack (cid) once Redis found one, else unknown_peer. Takes payload. 0 (answered later), or
 * GW_ENOTSUP / GW_EDOWN (nothing sent: the caller answers as without Redis). */
int hub_dm_send(hub_t *hub, hub_client_t *cl, const char *to, sbuf_t *payload, json_t *cid);
/* Observes the latency of a client's msg that arrived at t0 (uv_hrtime; 0: not a client's). */
void hub_latency_observe(hub_t *hub, uint64_t t0);
/* Posts a msg through the bus: Redis assigns its id and order, and every replica delivers it
 * (this one from the answer; with the hub's own id when Redis cannot). client (may be NULL)
 * gets the ack with cid. Strings and JSON borrowed. */
void hub_room_post(hub_t *hub, const char *room, const char *from_id, const char *from_name, const char *text,
                   json_t *extra, const char *client, json_t *cid);

/* hub_voice.c: voice through Janus. Without janus_url, voice_* messages answer
 * voice_unavailable and the calls below do nothing. */
void hub_voice_open(hub_t *hub);   /* starts the Janus client when janus_url is set */
void hub_voice_close(hub_t *hub);
/* voice_join, voice_leave, voice_trickle of member cl of r. */
void hub_voice_handle(hub_t *hub, hub_client_t *cl, hub_room_t *r, const proto_in_t *in);
void hub_voice_mute(hub_t *hub, hub_client_t *cl, hub_room_t *r, int muted);   /* in the mixer */
void hub_voice_left(hub_t *hub, hub_client_t *cl, hub_room_t *r);              /* cl left r */
/* Sets voice_members on a voice_join for the policy (whatever the client put there): the
 * members of r in voice through this hub, cl not counted. */
void hub_voice_annotate(hub_t *hub, hub_client_t *cl, hub_room_t *r, json_t *root);

#endif
