/* hub: rooms, members, presence, the per-room history ring, identity, rate limits and fan-out
 * for the chat endpoint (/ws?room=R, /ROOM). It owns one hub_client_t per chat connection and
 * one hub_room_t per non-empty room. A broadcast is encoded once into a shared buffer, framed
 * once per variant (plain / deflated) and queued to every member: no per-recipient copy. It
 * never touches sockets (server.c does) or Lua (policy.c does). With redis_url, rooms span
 * replicas through the bus (bus.h): msgs get Redis's ids and one order, snapshots list every
 * replica's members and read the shared history; while Redis is down, local rooms go on with
 * the hub's own ids and ring. With workers > 1 there is one hub per worker thread and the
 * in-process bus (bus_inproc.h) plays Redis's part between them. */
#ifndef CHATGW_HUB_H
#define CHATGW_HUB_H

#include <jansson.h>

#include "base/gw.h"
#include "policy/policy.h"
#include "net/server.h"

extern const server_endpoint_t hub_endpoint;

hub_t *hub_new(gw_t *gw);
/* Fills host with the hub's side of the policy's gw.* API (send, broadcast, kick, ...). */
void hub_policy_host(hub_t *hub, policy_host_t *host);
void hub_free(hub_t *hub);         /* after every connection detached */
/* Opens the bus that config asks for (Redis with redis_url, else single node) in place of the
 * single-node one hub_new starts with. 0, or -1 with a one-line error naming the key. */
int hub_bus_open(hub_t *hub, char *err, size_t errlen);
/* Says goodbye to Redis or to the other workers (this node's members leave, its heartbeat
 * goes) and falls back to the single-node bus; the link closes while the loop runs on. For
 * shutdown. */
void hub_bus_close(hub_t *hub);
/* -1 without Redis (single node or in-process bus), else 1 while the link is up and 0 while down. */
int hub_bus_state(hub_t *hub);

/* {online, rooms:[{name, online}]}; new reference. */
json_t *hub_stats_json(hub_t *hub);
/* {name, online, members:[{id,name,muted}]}, or NULL when the room does not exist. */
json_t *hub_room_json(hub_t *hub, const char *room);
/* Publishes a server-originated msg into an existing room (HTTP API). Returns 0 and writes the
 * message id to id_out, or -1 when the room does not exist. */
int hub_room_announce(hub_t *hub, const char *room, const char *from_name, const char *text,
                      char *id_out, size_t id_len);

#endif
