/* hub: rooms, members, presence, the per-room history ring, identity, rate limits and fan-out
 * for the chat endpoint (/ws?room=R, /ROOM). It owns one hub_client_t per chat connection and
 * one hub_room_t per non-empty room. A broadcast is encoded once into a shared buffer, framed
 * once per variant (plain / deflated) and queued to every member: no per-recipient copy. It
 * never touches sockets (server.c does), Lua (policy.c does) or HTTP: the HTTP edge
 * (app/routes.c) parses the upgrade request once into a hub_connect_t. With redis_url, rooms
 * span replicas through the bus (bus.h): msgs get Redis's ids and one order, snapshots list
 * every replica's members and read the shared history; while Redis is down, local rooms go on
 * with the hub's own ids and ring. With workers > 1 there is one hub per worker thread and the
 * in-process bus (bus_inproc.h) plays Redis's part between them.
 *
 * The path of a client's message, one verb per step (hub.c, hub_sync.c):
 *   hub_message       a frame arrives: rate limit, then decode (proto_decode)
 *   hub_dispatch      join and leave are the hub's own; the rest goes on to
 *   hub_filter        the policy's on_message: drop, rewrite (checked again) or pass
 *   hub_handle        carry it out by type: hub_handle_msg, _dm, _signal, _mute, _history, _custom,
 *                     and hub_voice_handle (hub_voice.c) for voice_*
 *   post              a msg gets its id, its place in the room's one order: hub_room_post through
 *                     the bus (Redis assigns it; this replica delivers from the answer, the
 *                     others from the room's channel), or hub_room_post_own with the hub's own
 *                     id on a single node; the sender gets its ack with the id
 *   hub_room_deliver  a msg with its id goes into the room's ring, then to the room
 *   hub_room_send     one shared frame to every member that takes it (a joiner whose snapshot
 *                     is on its way holds a msg until then)
 *   hub_send          one frame to one client (server_conn_send_msg)
 * hub_room_announce (the HTTP API) posts a server msg the same way. "Send" is to this
 * process's connections; "publish" is to the other replicas, through the bus. */
#ifndef CHATGW_HUB_H
#define CHATGW_HUB_H

#include <jansson.h>

#include "base/gw.h"
#include "policy/policy.h"
#include "net/server.h"

/* A chat connection's upgrade request, parsed and checked by the HTTP edge. Borrowed for the
 * hub_admit call: the hub copies what it keeps. */
typedef struct {
    const char *ip;                /* the client's address: the conn's, valid until detach */
    const char *room;              /* to join on attach (proto_room_valid), or NULL */
    const char *name;              /* proto_name_valid, or NULL: the hub picks one */
    const char *since;             /* the join's history after this msg id, or NULL */
    const policy_pair_t *query;    /* conn.query for the hooks (see policy_conn_t), or NULL */
    const policy_pair_t *headers;  /* the request headers as sent (NULL key last), for on_connect */
} hub_connect_t;

/* The chat endpoint's steps (server_endpoint_t; app/routes.c adds the HTTP edge).
 * hub_admit: a new client for req, or a refusal. 0 with *data the client (the conn's data
 * from then on: hub_attach takes it up, hub_detach frees it), or GW_EREFUSED (on_connect
 * refused) or GW_EUNAVAIL (on_connect failed and policy_fail is closed) with reason filled;
 * on refusal nothing is left to free. */
int hub_admit(gw_t *gw, const hub_connect_t *req, void **data, char *reason, size_t len);
/* After the 101: welcome, then the join that admit kept (room, since). */
void hub_attach(gw_t *gw, conn_t *c);
/* One whole frame from the client; data is borrowed for the call. */
void hub_message(gw_t *gw, conn_t *c, int opcode, uint8_t *data, size_t len);
/* The conn goes: its rooms are left and its client freed. */
void hub_detach(gw_t *gw, conn_t *c);

hub_t *hub_new(gw_t *gw);
/* Fills host with the hub's side of the policy's gw.* API (send, broadcast, kick, ...). */
void hub_policy_host(hub_t *hub, policy_host_t *host);
void hub_free(hub_t *hub);         /* after every connection detached */
/* Opens the bus that config asks for (Redis with redis_url, else single node) in place of the
 * single-node one hub_new starts with. 0, or bus_open's negative code with a one-line error
 * naming the key in err. */
int hub_bus_open(hub_t *hub, char *err, size_t errlen);
/* Says goodbye to Redis or to the other workers (this node's members leave, its heartbeat
 * goes) and falls back to the single-node bus; the link closes while the loop runs on. The
 * Janus client (janus_url) goes too: voice ends. For shutdown. */
void hub_bus_close(hub_t *hub);
/* -1 without Redis (single node or in-process bus), else 1 while the link is up and 0 while down.
 * A tri-state answer, not an error: -1 is no GW_E* code. */
int hub_bus_state(hub_t *hub);
/* 1 while Redis answers this replica's writes with errors (out of memory, read-only), else 0. */
int hub_bus_refusing(hub_t *hub);

/* The HTTP API through the bus: every replica answers the same (with redis_url, from every
 * node's report, the shared presence and a post's Redis id). cb gets an HTTP status and a
 * JSON body (a new reference it takes); it runs exactly once, maybe before the call returns
 * (single node, Redis down), at the latest at hub_free (503). Strings are copied.
 *   hub_api_stats    200 {online, rooms:[{name, online}]} (counts across replicas)
 *   hub_api_room     200 {name, online, members:[{id,name,muted}]} (local members first), or 404
 *   hub_api_publish  200 {room, id} (the id Redis assigned), 404 (no member anywhere), 503
 *                    (Redis refused it, or is down and the room has no member here) */
typedef void (*hub_api_cb)(void *arg, int status, json_t *body);
void hub_api_stats(hub_t *hub, hub_api_cb cb, void *arg);
void hub_api_room(hub_t *hub, const char *room, hub_api_cb cb, void *arg);
void hub_api_publish(hub_t *hub, const char *room, const char *from_name, const char *text, hub_api_cb cb,
                     void *arg);

/* Voice through Janus: -1 without janus_url, else 1 while its session is up and 0 while not. */
int hub_voice_state(hub_t *hub);

/* {online, rooms:[{name, online}]}; new reference. */
json_t *hub_stats_json(hub_t *hub);
/* {name, online, members:[{id,name,muted}]}, or NULL when the room does not exist. */
json_t *hub_room_json(hub_t *hub, const char *room);
/* Posts a server-originated msg into an existing room (HTTP API). Returns 0 and writes the
 * message id to id_out ("" when it comes later, from the bus), or GW_ENOTFOUND when the room
 * does not exist. */
int hub_room_announce(hub_t *hub, const char *room, const char *from_name, const char *text,
                      char *id_out, size_t id_len);

#endif
