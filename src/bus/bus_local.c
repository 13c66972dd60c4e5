/* bus_local: the bus for a single node (see bus.h). With one node nothing is remote:
 * publishing and presence have no one to tell, so they succeed and do nothing; the stores
 * (ids and history, presence lists, shared buckets) answer GW_ENOTSUP so the hub keeps using
 * its own ring, members and token buckets. It allocates one struct and owns no handles. */
#include "bus/bus.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- the single-node implementation ---- */

static int local_nop_room(bus_t *b, const char *room) { return 0; }
static int local_publish(bus_t *b, const char *room, const void *p, size_t len) { return 0; }
static int local_direct(bus_t *b, const char *to, const void *p, size_t len) { return 0; }
static int local_presence_add(bus_t *b, const char *room, const bus_member_t *m) { return 0; }
static int local_presence_remove(bus_t *b, const char *room, const char *id) { return 0; }

static int local_post(bus_t *b, const char *room, const void *p, size_t len, size_t id_at, bus_post_cb cb,
                      void *arg)
{
    return GW_ENOTSUP;
}

static int local_list(bus_t *b, const char *room, bus_members_cb cb, void *arg) { return GW_ENOTSUP; }

static int local_range(bus_t *b, const char *room, const proto_id_t *since, bus_history_cb cb, void *arg)
{
    return GW_ENOTSUP;
}

static int local_limit(bus_t *b, const char *key, double rate, double burst, bus_limit_cb cb, void *arg)
{
    return GW_ENOTSUP;
}

static void local_free(bus_t *b) { free(b); }

static const bus_ops_t local_ops = {
    .room_subscribe = local_nop_room,
    .room_unsubscribe = local_nop_room,
    .room_publish = local_publish,
    .room_post = local_post,
    .direct_publish = local_direct,
    .presence_add = local_presence_add,
    .presence_remove = local_presence_remove,
    .presence_list = local_list,
    .history_range = local_range,
    .limit_take = local_limit,
    .free = local_free,
};

int bus_local_new(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
                  char *err, size_t errlen)
{
    bus_t *b = xcalloc(1, sizeof *b);
    b->ops = &local_ops;
    b->kind = "local";
    if (on) b->on = *on;
    b->arg = arg;
    snprintf(b->node, sizeof b->node, "%s", opts->node_id);
    b->stats.up = 1;
    *out = b;
    return 0;
}
