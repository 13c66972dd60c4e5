/* redis_slots: hash slots, the CLUSTER SLOTS map and MOVED/ASK parsing (see redis_slots.h).
 * Pure functions over bytes and parsed replies: no I/O, no logging, no globals written. */
#include "bus/redis_slots.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

uint16_t redis_slots_crc16(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(b[i] << 8);
        for (int k = 0; k < 8; k++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned redis_slots_keyslot(const void *key, size_t n)
{
    const char *k = key;
    const char *open = memchr(k, '{', n);
    if (open) {
        size_t rest = n - (size_t)(open - k) - 1;
        const char *close = memchr(open + 1, '}', rest);
        /* Redis hashes the whole key when the tag is empty ("{}") or never closed. */
        if (close && close > open + 1) return redis_slots_crc16(open + 1, (size_t)(close - open - 1)) & 16383u;
    }
    return redis_slots_crc16(k, n) & 16383u;
}

/* ---- the slot map ---- */

static void rs_err(char *err, size_t errlen, const char *fmt, size_t i)
{
    if (err && errlen) snprintf(err, errlen, fmt, i);
}

/* [host, port, ...] -> node; a host "" or "?" is the seed's. */
static int rs_node_parse(const redisReply *n, const char *seed_host, redis_slots_node_t *out)
{
    if (n->type != REDIS_REPLY_ARRAY || n->elements < 2) return GW_EINVAL;
    const redisReply *h = n->element[0], *p = n->element[1];
    if (h->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_INTEGER) return GW_EINVAL;
    if (p->integer < 1 || p->integer > 65535) return GW_EINVAL;
    const char *host = h->str;
    size_t len = h->len;
    if (len == 0 || (len == 1 && host[0] == '?')) {
        if (!seed_host) return GW_EINVAL;
        host = seed_host;
        len = strlen(seed_host);
    }
    if (len == 0 || len >= sizeof out->host || memchr(host, '\0', len)) return GW_EINVAL;
    memcpy(out->host, host, len);
    out->host[len] = '\0';
    out->port = (int)p->integer;
    return 0;
}

static int rs_node_same(const redis_slots_node_t *a, const redis_slots_node_t *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

void redis_slots_map_free(redis_slots_map_t *map)
{
    for (size_t i = 0; i < map->nshards; i++) free(map->shards[i].replicas);
    free(map->shards);
    map->shards = NULL;
    map->nshards = 0;
    map->covered = 0;
    for (size_t s = 0; s < REDIS_SLOTS_COUNT; s++) map->slot_shard[s] = REDIS_SLOTS_NONE;
}

/* The shard whose master is m, added (with the range's replicas) when new. */
static int rs_shard_find_add(redis_slots_map_t *map, const redisReply *range, const char *seed_host,
                             const redis_slots_node_t *m, size_t *idx)
{
    for (size_t i = 0; i < map->nshards; i++)
        if (rs_node_same(&map->shards[i].master, m)) {
            *idx = i;
            return 0;
        }
    /* More shards than slots cannot be: every new shard brings at least one slot. */
    if (map->nshards >= REDIS_SLOTS_COUNT) return GW_EINVAL;
    redis_slots_shard_t *grown = realloc(map->shards, (map->nshards + 1) * sizeof *grown);
    if (!grown) return GW_ENOMEM;
    map->shards = grown;
    redis_slots_shard_t *sh = &map->shards[map->nshards];
    memset(sh, 0, sizeof *sh);
    sh->master = *m;
    size_t nrep = range->elements - 3;
    if (nrep) {
        sh->replicas = calloc(nrep, sizeof *sh->replicas);
        if (!sh->replicas) return GW_ENOMEM;
        for (size_t j = 0; j < nrep; j++) {
            int rc = rs_node_parse(range->element[3 + j], seed_host, &sh->replicas[j]);
            if (rc < 0) {
                free(sh->replicas);
                return rc;
            }
        }
        sh->nreplicas = nrep;
    }
    *idx = map->nshards++;
    return 0;
}

int redis_slots_map_parse(const redisReply *rep, const char *seed_host, redis_slots_map_t *map, char *err,
                          size_t errlen)
{
    map->shards = NULL;
    map->nshards = 0;
    redis_slots_map_free(map);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (err && errlen) snprintf(err, errlen, "CLUSTER SLOTS: the reply is not an array");
        return GW_EINVAL;
    }
    int rc = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *r = rep->element[i];
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_INTEGER ||
            r->element[1]->type != REDIS_REPLY_INTEGER) {
            rs_err(err, errlen, "CLUSTER SLOTS: range %zu is not [start, end, master, replicas...]", i);
            rc = GW_EINVAL;
            goto fail;
        }
        long long lo = r->element[0]->integer, hi = r->element[1]->integer;
        if (lo < 0 || hi < lo || hi >= REDIS_SLOTS_COUNT) {
            rs_err(err, errlen, "CLUSTER SLOTS: range %zu has slots out of 0..16383", i);
            rc = GW_EINVAL;
            goto fail;
        }
        redis_slots_node_t m;
        if (rs_node_parse(r->element[2], seed_host, &m) < 0) {
            rs_err(err, errlen, "CLUSTER SLOTS: range %zu has a bad master [host, port]", i);
            rc = GW_EINVAL;
            goto fail;
        }
        size_t idx;
        rc = rs_shard_find_add(map, r, seed_host, &m, &idx);
        if (rc < 0) {
            rs_err(err, errlen, rc == GW_ENOMEM ? "CLUSTER SLOTS: out of memory at range %zu"
                                                : "CLUSTER SLOTS: range %zu has a bad replica [host, port]", i);
            goto fail;
        }
        for (long long s = lo; s <= hi; s++) {
            if (map->slot_shard[s] != REDIS_SLOTS_NONE) {
                rs_err(err, errlen, "CLUSTER SLOTS: range %zu overlaps an earlier one", i);
                rc = GW_EINVAL;
                goto fail;
            }
            map->slot_shard[s] = (uint16_t)idx;
            map->covered++;
        }
    }
    return 0;
fail:
    redis_slots_map_free(map);
    return rc;
}

const redis_slots_shard_t *redis_slots_map_shard(const redis_slots_map_t *map, unsigned slot)
{
    if (slot >= REDIS_SLOTS_COUNT || map->slot_shard[slot] == REDIS_SLOTS_NONE) return NULL;
    return &map->shards[map->slot_shard[slot]];
}

/* ---- MOVED / ASK ---- */

/* Decimal digits only (no sign, no spaces), value <= max. */
static int rs_uint_parse(const char *s, size_t n, unsigned long max, unsigned long *out)
{
    if (n == 0 || n > 10) return GW_EINVAL;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return GW_EINVAL;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max) return GW_EINVAL;
    *out = v;
    return 0;
}

int redis_slots_redirect_parse(const char *s, size_t n, redis_slots_redirect_t *out)
{
    const char *p;
    size_t rest;
    if (n >= 6 && memcmp(s, "MOVED ", 6) == 0) {
        out->kind = REDIS_SLOTS_MOVED;
        p = s + 6;
        rest = n - 6;
    } else if (n >= 4 && memcmp(s, "ASK ", 4) == 0) {
        out->kind = REDIS_SLOTS_ASK;
        p = s + 4;
        rest = n - 4;
    } else {
        return GW_ENOTFOUND;
    }
    const char *sp = memchr(p, ' ', rest);
    if (!sp) return GW_EINVAL;
    unsigned long v;
    if (rs_uint_parse(p, (size_t)(sp - p), REDIS_SLOTS_COUNT - 1, &v) < 0) return GW_EINVAL;
    out->slot = (unsigned)v;
    const char *addr = sp + 1;
    size_t alen = rest - (size_t)(addr - p);
    const char *colon = NULL;
    for (size_t i = alen; i > 0; i--)
        if (addr[i - 1] == ':') {
            colon = addr + i - 1;
            break;
        }
    if (!colon) return GW_EINVAL;
    size_t hlen = (size_t)(colon - addr);
    if (hlen >= sizeof out->node.host) return GW_EINVAL;
    for (size_t i = 0; i < hlen; i++)
        if ((unsigned char)addr[i] <= ' ' || addr[i] == 0x7f) return GW_EINVAL;
    if (rs_uint_parse(colon + 1, alen - hlen - 1, 65535, &v) < 0 || v == 0) return GW_EINVAL;
    memcpy(out->node.host, addr, hlen);
    out->node.host[hlen] = '\0';
    out->node.port = (int)v;
    return 0;
}
