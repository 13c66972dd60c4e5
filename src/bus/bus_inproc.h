/* bus_inproc: the bus (bus.h) between the worker threads of one process, for workers > 1
 * without Redis. One bus_inproc_t holds what the workers share (per room: the epoch, the seq
 * counter, the history ring of history_size and the presence list; the rate-limit buckets)
 * under one mutex; each worker opens its own bus_t on its own loop with bus_open (options
 * .inproc) and a distinct node id. Semantics are bus_redis's: bus_room_post assigns epoch:seq
 * atomically and every subscribed handle, the poster included, gets the msg in one order per
 * room (the poster through its post callback, the others through room_message); presence,
 * room_publish and direct frames reach the other handles only (own messages are never handed
 * back); presence_list, history_range and limit_take answer from the shared state. Every
 * callback runs later on the handle's own loop thread (a per-handle queue drained by a
 * uv_async_t), never inside the call, and in the order the shared state changed. Closing a
 * handle removes its members (leave events to the others) and drops what it had not yet
 * handled. bus_inproc_free comes after every handle was freed and its loop ran its closes.
 * Any thread may read the shared rooms for the HTTP API (bus_inproc_rooms_json, ..._room_json). */
#ifndef CHATGW_BUS_INPROC_H
#define CHATGW_BUS_INPROC_H

#include <jansson.h>

typedef struct bus_inproc_s bus_inproc_t;

/* history_size: the per-room ring length (0 = no history kept). */
bus_inproc_t *bus_inproc_new(long history_size);
void bus_inproc_free(bus_inproc_t *sh);

/* [{name, online}] of every room someone is listed in, every worker's; new reference. */
json_t *bus_inproc_rooms_json(bus_inproc_t *sh);
/* {name, online, members:[{id,name,muted}]} in join order, or NULL when nobody is in room. */
json_t *bus_inproc_room_json(bus_inproc_t *sh, const char *room);

#endif
