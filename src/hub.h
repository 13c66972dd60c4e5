/* hub: rooms, members, presence, the per-room history ring, identity, rate limits and fan-out
 * for the chat endpoint (/ws?room=R, /ROOM). It owns one hub_client_t per chat connection and
 * one hub_room_t per non-empty room. A broadcast is encoded once into a shared buffer, framed
 * once per variant (plain / deflated) and queued to every member: no per-recipient copy. It
 * never touches sockets (server.c does) or Lua (policy.c does). */
#ifndef CHATGW_HUB_H
#define CHATGW_HUB_H

#include <jansson.h>

#include "gw.h"
#include "policy.h"
#include "server.h"

extern const server_endpoint_t hub_endpoint;

hub_t *hub_new(gw_t *gw);
/* Fills host with the hub's side of the policy's gw.* API (send, broadcast, kick, ...). */
void hub_policy_host(hub_t *hub, policy_host_t *host);
void hub_free(hub_t *hub);         /* after every connection detached */

/* {online, rooms:[{name, online}]}; new reference. */
json_t *hub_stats_json(hub_t *hub);
/* {name, online, members:[{id,name,muted}]}, or NULL when the room does not exist. */
json_t *hub_room_json(hub_t *hub, const char *room);
/* Publishes a server-originated msg into an existing room (HTTP API). Returns 0 and writes the
 * message id to id_out, or -1 when the room does not exist. */
int hub_room_announce(hub_t *hub, const char *room, const char *from_name, const char *text,
                      char *id_out, size_t id_len);

#endif
