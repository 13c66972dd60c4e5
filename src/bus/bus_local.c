/* bus_local: the in-process bus for a single node, and the interface's shared entry points
 * (bus_open, bus_free, bus_strerror). With one node nothing is remote: publishing and
 * presence have no one to tell, so they succeed and do nothing; the stores (ids and history,
 * presence lists, shared buckets) answer BUS_ENOTSUP so the hub keeps using its own ring,
 * members and token buckets. It allocates one struct and owns no handles. */
#define _GNU_SOURCE 1 /* memmem */
#include "bus/bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "proto/proto.h"

const char *bus_strerror(int status)
{
    switch (status) {
    case 0: return "ok";
    case BUS_EDOWN: return "the bus is down";
    case BUS_ENOTSUP: return "not supported by this bus";
    case BUS_EINVAL: return "invalid argument";
    case BUS_ETIMEDOUT: return "timed out";
    case BUS_EREPLY: return "error reply from the bus";
    default: return "unknown bus error";
    }
}

int bus_open(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
             char *err, size_t errlen)
{
    if (opts && opts->redis_url && *opts->redis_url) return bus_redis_new(loop, opts, on, arg, out, err, errlen);
    if (opts && opts->inproc) return bus_inproc_open(loop, opts, on, arg, out, err, errlen);
    return bus_local_new(loop, opts, on, arg, out, err, errlen);
}

void bus_free(bus_t *bus)
{
    if (bus) bus->ops->free(bus);
}

sbuf_t *bus_payload_set_id(const void *payload, size_t len, const bus_id_t *id)
{
    const char *mark = memmem(payload, len, BUS_ID_FIELD, strlen(BUS_ID_FIELD));
    if (!mark) return NULL;
    size_t head = (size_t)(mark - (const char *)payload) + strlen("\"id\":\"");
    size_t tail = (size_t)(mark - (const char *)payload) + strlen(BUS_ID_FIELD) - 1;   /* the closing quote */
    char ids[BUS_EPOCH_MAX + 24];
    size_t n = strlen(proto_msg_id(ids, sizeof ids, id->epoch, id->seq));
    sbuf_t *s = sbuf_new(head + n + len - tail);
    memcpy(s->data, payload, head);
    memcpy(s->data + head, ids, n);
    memcpy(s->data + head + n, (const char *)payload + tail, len - tail);
    return s;
}

/* ---- the single-node implementation ---- */

static int local_nop_room(bus_t *b, const char *room) { return 0; }
static int local_publish(bus_t *b, const char *room, const void *p, size_t len) { return 0; }
static int local_direct(bus_t *b, const char *to, const void *p, size_t len) { return 0; }
static int local_presence_add(bus_t *b, const char *room, const bus_member_t *m) { return 0; }
static int local_presence_remove(bus_t *b, const char *room, const char *id) { return 0; }

static int local_post(bus_t *b, const char *room, const void *p, size_t len, bus_post_cb cb, void *arg)
{
    return BUS_ENOTSUP;
}

static int local_list(bus_t *b, const char *room, bus_members_cb cb, void *arg) { return BUS_ENOTSUP; }

static int local_range(bus_t *b, const char *room, const char *since, bus_history_cb cb, void *arg)
{
    return BUS_ENOTSUP;
}

static int local_limit(bus_t *b, const char *key, double rate, double burst, bus_limit_cb cb, void *arg)
{
    return BUS_ENOTSUP;
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
    const char *node = opts && opts->node_id ? opts->node_id : "";
    if (strlen(node) >= BUS_NODE_MAX || strchr(node, '\n')) {
        snprintf(err, errlen, "node id: at most %d bytes and no newline", BUS_NODE_MAX - 1);
        return BUS_EINVAL;
    }
    bus_t *b = xcalloc(1, sizeof *b);
    b->ops = &local_ops;
    b->kind = "local";
    if (on) b->on = *on;
    b->arg = arg;
    if (*node) {
        snprintf(b->node, sizeof b->node, "%s", node);
    } else {
        unsigned char raw[8];
        if (RAND_bytes(raw, sizeof raw) != 1) abort();
        for (size_t i = 0; i < sizeof raw; i++) sprintf(b->node + 2 * i, "%02x", raw[i]);
    }
    b->stats.up = 1;
    *out = b;
    return 0;
}
