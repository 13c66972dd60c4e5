/* redis_slots_tool: bus/redis_slots.h from the command line, for the Redis Cluster e2e tests
 * (redis_cluster.test.mjs), which compare it with what a real cluster says.
 *   redis_slots_tool keyslot KEY...    one slot per line
 *   redis_slots_tool map HOST PORT     CLUSTER SLOTS asked of HOST:PORT, parsed by
 *                                      redis_slots_map_parse, printed as JSON:
 *                                      {"covered":N,"shards":[{"master":"h:p","replicas":[..],
 *                                      "ranges":[[lo,hi],..]}]}
 *   redis_slots_tool redirect TEXT     {"kind":"MOVED"|"ASK","slot":N,"host":..,"port":N}
 * Exit 0 on success, 1 with words on stderr otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "base/err.h"
#include "bus/redis_slots.h"

static void node_print(const redis_slots_node_t *n) { printf("\"%s:%d\"", n->host, n->port); }

static int map_print(const char *host, int port)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        fprintf(stderr, "connect %s:%d: %s\n", host, port, c ? c->errstr : "out of memory");
        redisFree(c);
        return 1;
    }
    redisReply *rep = redisCommand(c, "CLUSTER SLOTS");
    if (!rep) {
        fprintf(stderr, "CLUSTER SLOTS: %s\n", c->errstr);
        redisFree(c);
        return 1;
    }
    static redis_slots_map_t map;
    char err[160];
    int rc = redis_slots_map_parse(rep, host, &map, err, sizeof err);
    freeReplyObject(rep);
    redisFree(c);
    if (rc < 0) {
        fprintf(stderr, "%s (%s)\n", err, gw_strerror(rc));
        return 1;
    }
    printf("{\"covered\":%zu,\"shards\":[", map.covered);
    for (size_t i = 0; i < map.nshards; i++) {
        const redis_slots_shard_t *sh = &map.shards[i];
        printf("%s{\"master\":", i ? "," : "");
        node_print(&sh->master);
        printf(",\"replicas\":[");
        for (size_t j = 0; j < sh->nreplicas; j++) {
            if (j) putchar(',');
            node_print(&sh->replicas[j]);
        }
        printf("],\"ranges\":[");
        int first = 1;
        for (unsigned s = 0; s < REDIS_SLOTS_COUNT; s++) {
            if (map.slot_shard[s] != i || (s > 0 && map.slot_shard[s - 1] == i)) continue;
            unsigned e = s;
            while (e + 1 < REDIS_SLOTS_COUNT && map.slot_shard[e + 1] == i) e++;
            printf("%s[%u,%u]", first ? "" : ",", s, e);
            first = 0;
        }
        printf("]}");
    }
    printf("]}\n");
    redis_slots_map_free(&map);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "keyslot") == 0) {
        for (int i = 2; i < argc; i++) printf("%u\n", redis_slots_keyslot(argv[i], strlen(argv[i])));
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "map") == 0) return map_print(argv[2], atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "redirect") == 0) {
        redis_slots_redirect_t r;
        int rc = redis_slots_redirect_parse(argv[2], strlen(argv[2]), &r);
        if (rc < 0) {
            fprintf(stderr, "%s\n", gw_strerror(rc));
            return 1;
        }
        printf("{\"kind\":\"%s\",\"slot\":%u,\"host\":\"%s\",\"port\":%d}\n",
               r.kind == REDIS_SLOTS_MOVED ? "MOVED" : "ASK", r.slot, r.node.host, r.node.port);
        return 0;
    }
    fprintf(stderr, "usage: %s keyslot KEY... | map HOST PORT | redirect TEXT\n", argv[0]);
    return 1;
}
