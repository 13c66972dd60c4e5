/* bus: the interface's shared entry points (see bus.h): bus_open chooses the backend and
 * settles what every backend would otherwise repeat (the random node id), bus_free hands the
 * bus back to its backend. The backends never call in here, so the folder has no circle. */
#include "bus/bus.h"


#include "base/hex.h"

int bus_open(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
             char *err, size_t errlen)
{
    bus_options_t o = opts ? *opts : (bus_options_t){0};
    char node[BUS_NODE_MAX];
    if (!o.node_id || !*o.node_id) o.node_id = hex_random(node, 8);   /* 16 hex digits */
    if (o.redis_url && *o.redis_url) return bus_redis_new(loop, &o, on, arg, out, err, errlen);
    if (o.inproc) return bus_inproc_open(loop, &o, on, arg, out, err, errlen);
    return bus_local_new(loop, &o, on, arg, out, err, errlen);
}

void bus_free(bus_t *bus)
{
    if (bus) bus->ops->free(bus);
}
