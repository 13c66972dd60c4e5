/* redis_slots: the Redis Cluster codec, no I/O. It computes a key's hash slot (CRC16-XMODEM
 * mod 16384 of the key, or of its hash tag: the bytes between the first '{' and the first '}'
 * after it, when that span is not empty), builds a slot map (each of the 16384 slots -> the
 * shard that serves it, a master and its replicas as host:port) from a CLUSTER SLOTS reply
 * handed over as a parsed hiredis redisReply, and parses the MOVED/ASK redirections Redis
 * answers with. It never connects, sends or logs; bus_redis does that. Every failure is a
 * GW_E* code plus words in the caller's buffer, and leaves nothing allocated. */
#ifndef CHATGW_REDIS_SLOTS_H
#define CHATGW_REDIS_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define REDIS_SLOTS_COUNT 16384
#define REDIS_SLOTS_NONE 0xFFFF      /* slot_shard value of a slot no shard serves */
#define REDIS_SLOTS_HOST_MAX 256     /* host bytes + NUL, as hostnames and IPv6 literals need */

/* CRC16-CCITT (XMODEM: poly 0x1021, init 0, no reflection), the one Redis Cluster uses. */
uint16_t redis_slots_crc16(const void *p, size_t n);
/* The hash slot (0..16383) of the key's n bytes, hash tags honoured as Redis does. */
unsigned redis_slots_keyslot(const void *key, size_t n);

typedef struct {
    char host[REDIS_SLOTS_HOST_MAX];
    int port;
} redis_slots_node_t;

typedef struct {
    redis_slots_node_t master;
    redis_slots_node_t *replicas;   /* owned by the map */
    size_t nreplicas;
} redis_slots_shard_t;

typedef struct {
    redis_slots_shard_t *shards;    /* one per distinct master, in the reply's order */
    size_t nshards;
    uint16_t slot_shard[REDIS_SLOTS_COUNT];   /* index into shards, or REDIS_SLOTS_NONE */
    size_t covered;                 /* slots with a shard; < REDIS_SLOTS_COUNT = cluster incomplete */
} redis_slots_map_t;

/* Fill *map (caller's storage, overwritten: free a parsed map first) from a CLUSTER SLOTS reply: an array of
 * [start, end, [host, port, id?, meta?], [replica host, port, ...]...]. A node's empty host
 * (Redis's "the address you reached me at") or "?" (unknown endpoint) becomes seed_host. A
 * master named by several ranges is one shard. Ranges that overlap, slots out of range, ports
 * outside 1..65535, hosts too long or of the wrong type: GW_EINVAL, err filled, *map left
 * empty (safe to free). GW_ENOMEM on allocation failure. */
int redis_slots_map_parse(const redisReply *rep, const char *seed_host, redis_slots_map_t *map, char *err,
                          size_t errlen);
/* Frees what map_parse allocated and empties the map; safe on an empty or freed map. */
void redis_slots_map_free(redis_slots_map_t *map);
/* The shard that serves slot, or NULL when none does (or slot is out of range). */
const redis_slots_shard_t *redis_slots_map_shard(const redis_slots_map_t *map, unsigned slot);

typedef enum { REDIS_SLOTS_MOVED = 1, REDIS_SLOTS_ASK = 2 } redis_slots_redirect_kind_t;

typedef struct {
    redis_slots_redirect_kind_t kind;
    unsigned slot;
    redis_slots_node_t node;        /* host "" when Redis sent ":port" (the same host) */
} redis_slots_redirect_t;

/* Parse an error reply's n bytes as "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>"
 * (the port after the last ':', so "::1:7000" is host "::1"). GW_ENOTFOUND when the error is
 * no redirection (any other error text); GW_EINVAL when it starts like one but is malformed
 * (slot out of range, bad port, missing fields, trailing bytes, host too long). */
int redis_slots_redirect_parse(const char *s, size_t n, redis_slots_redirect_t *out);

#endif
