/* bus_redis: the bus on Redis, through hiredis's async API and its libuv adapter.
 *
 * The link reaches one server (redis_url, or the master the sentinels name) or a Redis
 * Cluster's masters (the slot map from a seed's CLUSTER SLOTS): one rb_shard_t each. A shard is
 * two connections: `cmd` (hiredis async) carries commands and server-side scripts (in order,
 * so the oldest unanswered one tells whether Redis still answers), `sub` (redis_sub.h: plain
 * or sharded pub/sub) carries the subscriptions and the messages. A request goes to the shard
 * of its first key's hash slot; MOVED and ASK are followed. The link is up when every shard is
 * connected and authenticated, its scripts are loaded and its subscriber answered a PING. Any
 * failure (connect error or timeout, a lost connection, an AUTH error, a command older than
 * command_timeout_ms, a subscriber that no longer answers its PING) drops the link and retries
 * after an exponential backoff with jitter; on the way up again the bus resubscribes its rooms,
 * writes its heartbeat and re-registers its members. In a cluster that is up, a failure takes
 * only its shard down (rb_shard_fail): its rooms fall back, and the slot map is read again
 * until a live master serves them. Nothing here blocks: names are resolved with
 * uv_getaddrinfo and hiredis only ever sees numeric addresses.
 *
 * Redis layout (R = room name, N = node id):
 *   channel chatgw:room:R      every message of R, as an envelope "kind\norigin\ntoken\nid\npayload"
 *                              (kind m = msg with id, p = plain, j/l/u = presence); in a
 *                              cluster the sharded channel chatgw:{R}:ch, on R's slot
 *   channel chatgw:direct      kind d, id = the target connection; in a cluster the sharded
 *                              chatgw:{nodes}:direct
 *   key chatgw:{R}:seq / :epoch / :hist   the id counter, the epoch, the history stream
 *   hash chatgw:{R}:presence   member id -> "N\n{id,name,muted}"
 *   hash chatgw:{R}:alive      node -> until when it holds members (ms, Redis's clock)
 *                              (the five expire room_ttl_ms after the room's last activity)
 *   key chatgw:node:N          heartbeat, PX presence_ttl_ms (says whether ours expired)
 *   hash chatgw:limit:K        token bucket {tokens, ts}
 *   zset chatgw:{nodes}        node -> when its report expires (ms, Redis's clock)
 *   key chatgw:{nodes}:report:N   the node's report (clients, rooms) for the API, PX ttl
 *   hash chatgw:{nodes}:conns:N    the node's connection ids (dm targets), PX ttl
 * Every multi-step change is one Lua script (loaded once per connection, run by EVALSHA, and
 * sent again as EVAL after NOSCRIPT), so replicas never see half of one.
 *
 * Ownership: the bus owns its rooms (interest, members mirror), requests (argv copies kept
 * for the EVAL fallback) and handles. A request is freed when Redis answered it (or its
 * connection went) and, for a post, when its own message came back. The struct is freed from
 * the last close callback. */
#include "bus/bus.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "base/hex.h"
#include "base/log.h"
#include "base/map.h"
#include "base/report.h"
#include "bus/redis_slots.h"
#include "bus/redis_sub.h"

#define RB_CHAN_ROOM "chatgw:room:"
#define RB_CHAN_DIRECT "chatgw:direct"
#define RB_CHAN_DIRECT_SHARDED "chatgw:{nodes}:direct"   /* a cluster: on the node keys' slot */
#define RB_KEY_NODE "chatgw:node:"
#define RB_KEY_LIMIT "chatgw:limit:"
#define RB_KEY_NODES "chatgw:{nodes}"                 /* node-level keys share one hash tag */
#define RB_KEY_REPORT "chatgw:{nodes}:report:"
#define RB_KEY_CONNS "chatgw:{nodes}:conns:"

#define RB_STAT_ADD(r, field, n) __atomic_add_fetch(&(r)->base.stats.field, (uint64_t)(n), __ATOMIC_RELAXED)
#define RB_STAT_SET(r, field, v) __atomic_store_n(&(r)->base.stats.field, (uint64_t)(v), __ATOMIC_RELAXED)

/* ---- server-side scripts ---- */

enum {
    RB_POST, RB_RANGE, RB_PADD, RB_PREMOVE, RB_PLIST, RB_PSYNC, RB_LIMIT, RB_REPORT, RB_REPORTS, RB_ALIVE, RB_DIRECT,
    RB_FENCE, RB_SCRIPTS
};

/* Every script that changes a room is activity: it gives all of the room's keys (its KEYS) a
 * fresh TTL of ttl ms (0 = none), so a room expires as a whole, after its last activity.
 * Called after a script's writes: once a script wrote (PEXPIRE is a write Redis allows when
 * full), Redis lets its later writes pass maxmemory, which would hide an OOM. */
#define RB_LUA_TOUCH                                                                               \
    "local function touch(ttl)\n"                                                                  \
    "  ttl = tonumber(ttl)\n"                                                                      \
    "  if ttl and ttl > 0 then for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end end\n" \
    "end\n"

/* KEYS seq, epoch, hist, presence. ARGV channel, node, token, head, tail, maxlen, new epoch,
 * ttl. A missing seq or epoch means the room's keys were lost (expired, evicted, flushed): a
 * new epoch starts, so an old since can never match a new id. Returns {epoch, seq}. */
static const char rb_lua_post[] =
    RB_LUA_TOUCH
    "local epoch = redis.call('GET', KEYS[2])\n"
    "local seq = redis.call('GET', KEYS[1])\n"
    "if not epoch or not seq then\n"
    "  epoch = ARGV[7]\n"
    "  redis.call('SET', KEYS[2], epoch)\n"
    "  redis.call('SET', KEYS[1], 0)\n"
    "  redis.call('DEL', KEYS[3])\n"
    "end\n"
    "seq = redis.call('INCR', KEYS[1])\n"
    "local id = epoch .. ':' .. seq\n"
    "local payload = ARGV[4] .. id .. ARGV[5]\n"
    "if tonumber(ARGV[6]) > 0 then\n"
    "  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], seq .. '-0', 'p', payload)\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[1], 'm\\n' .. ARGV[2] .. '\\n' .. ARGV[3] .. '\\n' .. id .. '\\n' .. payload)\n"
    "touch(ARGV[8])\n"
    "return {epoch, seq}\n";

/* KEYS seq, epoch, hist. ARGV since epoch ('' = none), since seq, count.
 * Returns {epoch, last, gap, seq1, payload1, ...}. */
static const char rb_lua_range[] =
    "local epoch = redis.call('GET', KEYS[2]) or ''\n"
    "local last = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "local count = tonumber(ARGV[3])\n"
    "local gap = 0\n"
    "local entries\n"
    "if ARGV[1] ~= '' then\n"
    "  local since = tonumber(ARGV[2])\n"
    "  if ARGV[1] ~= epoch or since == nil or since > last then\n"
    "    gap = 1\n"
    "  elseif since < last then\n"
    "    local first = (since + 1) .. '-0'\n"
    "    entries = redis.call('XRANGE', KEYS[3], first, '+')\n"
    "    if #entries == 0 or entries[1][1] ~= first then gap = 1; entries = nil end\n"
    "  else\n"
    "    entries = {}\n"
    "  end\n"
    "end\n"
    "if not entries then\n"
    "  if count > 0 then\n"
    "    entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', count)\n"
    "    local n = #entries\n"
    "    for i = 1, math.floor(n / 2) do entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i] end\n"
    "  else\n"
    "    entries = {}\n"
    "  end\n"
    "end\n"
    "local out = {epoch, last, gap}\n"
    "for i = 1, #entries do\n"
    "  out[#out + 1] = string.match(entries[i][1], '^(%d+)')\n"
    "  out[#out + 1] = entries[i][2][2]\n"
    "end\n"
    "return out\n";

/* A node's liveness, in the room's own slot (a cluster refuses a script keys of two slots):
 * KEYS[5], the room's alive hash, maps node -> until when (ms, Redis's clock) it holds
 * members; every presence change and every reaper pass of a node with members renews it. */
#define RB_LUA_ALIVE                                                                               \
    "local function alive(node, ttl)\n"                                                            \
    "  ttl = tonumber(ttl)\n"                                                                      \
    "  if not ttl or ttl <= 0 then return end\n"                                                   \
    "  local t = redis.call('TIME')\n"                                                             \
    "  redis.call('HSET', KEYS[5], node, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl)\n" \
    "end\n"

/* The presence scripts' KEYS: presence, the room's seq, epoch, hist (for touch), alive.
 * KEYS presence.... ARGV channel, node, member id, member json, ttl, max members (0 = none),
 * node ttl. Returns -1 when a new member would pass max (nothing written), else 0 or 1
 * (changed). */
static const char rb_lua_padd[] =
    RB_LUA_TOUCH
    RB_LUA_ALIVE
    "local v = ARGV[2] .. '\\n' .. ARGV[4]\n"
    "local old = redis.call('HGET', KEYS[1], ARGV[3])\n"
    "local max = tonumber(ARGV[6] or '0') or 0\n"
    "if max > 0 and not old and redis.call('HLEN', KEYS[1]) >= max then return -1 end\n"
    "alive(ARGV[2], ARGV[7])\n"
    "if old == v then touch(ARGV[5]); return 0 end\n"
    "redis.call('HSET', KEYS[1], ARGV[3], v)\n"
    "redis.call('PUBLISH', ARGV[1], (old and 'u' or 'j') .. '\\n' .. ARGV[2] .. '\\n\\n\\n' .. ARGV[4])\n"
    "touch(ARGV[5])\n"
    "return 1\n";

/* KEYS presence.... ARGV channel, node, member id, ttl. The leave names the owner node. */
static const char rb_lua_premove[] =
    RB_LUA_TOUCH
    "touch(ARGV[4])\n"
    "local old = redis.call('HGET', KEYS[1], ARGV[3])\n"
    "if not old then return 0 end\n"
    "redis.call('HDEL', KEYS[1], ARGV[3])\n"
    "local nl = string.find(old, '\\n', 1, true)\n"
    "if nl then\n"
    "  redis.call('PUBLISH', ARGV[1], 'l\\n' .. string.sub(old, 1, nl - 1) .. '\\n\\n\\n' .. string.sub(old, nl + 1))\n"
    "end\n"
    "return 1\n";

/* KEYS presence.... ARGV channel, node, ttl, node ttl. Members whose node is not alive in
 * the room are removed, each with a leave event in the dead node's name. Returns the live
 * "node\njson". ttl: the caller holds members of the room (its reaper), or joins it; node
 * ttl: the caller holds members (renews its own liveness), else 0. */
static const char rb_lua_plist[] =
    RB_LUA_TOUCH
    RB_LUA_ALIVE
    "alive(ARGV[2], ARGV[4])\n"
    "touch(ARGV[3])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local live = {}\n"
    "local out = {}\n"
    "for i = 1, #all, 2 do\n"
    "  local v = all[i + 1]\n"
    "  local nl = string.find(v, '\\n', 1, true)\n"
    "  local ok = false\n"
    "  local node\n"
    "  if nl then\n"
    "    node = string.sub(v, 1, nl - 1)\n"
    "    ok = live[node]\n"
    "    if ok == nil then ok = (tonumber(redis.call('HGET', KEYS[5], node)) or 0) >= now; live[node] = ok end\n"
    "  end\n"
    "  if ok then\n"
    "    out[#out + 1] = v\n"
    "  else\n"
    "    redis.call('HDEL', KEYS[1], all[i])\n"
    "    if nl then\n"
    "      redis.call('PUBLISH', ARGV[1], 'l\\n' .. node .. '\\n\\n\\n' .. string.sub(v, nl + 1))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for n, ok in pairs(live) do if not ok then redis.call('HDEL', KEYS[5], n) end end\n"
    "return out\n";

/* KEYS presence.... ARGV channel, node, ttl, node ttl (0: the node leaves), then id, json
 * pairs: the node's complete member list. Writes missing or changed entries (join/update),
 * then removes the node's others (leave): the writes a full Redis refuses come first, so an
 * OOM is not hidden. */
static const char rb_lua_psync[] =
    RB_LUA_TOUCH
    RB_LUA_ALIVE
    "local prefix = ARGV[2] .. '\\n'\n"
    "local want = {}\n"
    "for i = 5, #ARGV, 2 do want[ARGV[i]] = prefix .. ARGV[i + 1] end\n"
    "local have, gone = {}, {}\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "for i = 1, #all, 2 do\n"
    "  local id, v = all[i], all[i + 1]\n"
    "  if string.sub(v, 1, #prefix) == prefix then\n"
    "    if want[id] then have[id] = v else gone[#gone + 1] = {id, v} end\n"
    "  end\n"
    "end\n"
    "for i = 5, #ARGV, 2 do\n"
    "  local id = ARGV[i]\n"
    "  if have[id] ~= want[id] then\n"
    "    redis.call('HSET', KEYS[1], id, want[id])\n"
    "    redis.call('PUBLISH', ARGV[1], (have[id] and 'u' or 'j') .. '\\n' .. ARGV[2] .. '\\n\\n\\n' .. ARGV[i + 1])\n"
    "    have[id] = want[id]\n"
    "  end\n"
    "end\n"
    "for _, g in ipairs(gone) do\n"
    "  redis.call('HDEL', KEYS[1], g[1])\n"
    "  redis.call('PUBLISH', ARGV[1], 'l\\n' .. ARGV[2] .. '\\n\\n\\n' .. string.sub(g[2], #prefix + 1))\n"
    "end\n"
    "if tonumber(ARGV[4]) > 0 then alive(ARGV[2], ARGV[4]) else redis.call('HDEL', KEYS[5], ARGV[2]) end\n"
    "touch(ARGV[3])\n"
    "return 1\n";

/* KEYS bucket. ARGV rate per second, burst, cost. Redis's clock, so replicas agree.
 * Returns {allowed, tokens as a string}. */
static const char rb_lua_limit[] =
    "local rate = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local cost = tonumber(ARGV[3])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens = tonumber(b[1]) or burst\n"
    "local ts = tonumber(b[2]) or now\n"
    "if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end\n"
    "local allowed = 0\n"
    "if tokens >= cost then tokens = tokens - cost; allowed = 1 end\n"
    "redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)\n"
    "return {allowed, tostring(tokens)}\n";

/* KEYS nodes (zset node -> expiry, Redis's clock), report key. ARGV node, report, ttl. Also
 * drops the nodes whose time ran out. The writes Redis refuses when full come first: a
 * script that wrote once may write on past maxmemory, which would hide an OOM. */
static const char rb_lua_report[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "return 1\n";

/* KEYS nodes. ARGV report key prefix (same hash tag). Returns the live nodes' reports. */
static const char rb_lua_reports[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local out = {}\n"
    "for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
    "  local v = redis.call('GET', ARGV[1] .. n)\n"
    "  if v then out[#out + 1] = v end\n"
    "end\n"
    "return out\n";

/* KEYS nodes, this node's conns hash. ARGV node, ttl. With the heartbeat: the node is live
 * for ttl more, and so are its connections. */
static const char rb_lua_alive[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[2])\n"
    "return 1\n";

/* KEYS nodes. ARGV conns key prefix (same hash tag), target id, channel, envelope. Publishes
 * to the channel when a live node holds the id. Returns 1, or 0 when none does. */
static const char rb_lua_direct[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do\n"
    "  if redis.call('HEXISTS', ARGV[1] .. n, ARGV[2]) == 1 then\n"
    "    redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
    "    return 1\n"
    "  end\n"
    "end\n"
    "return 0\n";

/* KEYS seq, epoch, hist. ARGV the newest id this node saw (epoch, seq), a new epoch, ttl. After a
 * failover the new master may lack the last writes it had not yet copied: a seq behind what
 * was seen would hand out ids already used. A new epoch instead makes every since before it a
 * gap (history_gap), never a silent repeat. Returns 1 when it started one. */
static const char rb_lua_fence[] =
    RB_LUA_TOUCH
    "local epoch = redis.call('GET', KEYS[2])\n"
    "local seq = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if epoch ~= ARGV[1] or seq >= tonumber(ARGV[2]) then return 0 end\n"
    "redis.call('SET', KEYS[2], ARGV[3])\n"
    "redis.call('SET', KEYS[1], 0)\n"
    "redis.call('DEL', KEYS[3])\n"
    "touch(ARGV[4])\n"
    "return 1\n";

static const char *const rb_scripts[RB_SCRIPTS] = {
    [RB_POST] = rb_lua_post,     [RB_RANGE] = rb_lua_range, [RB_PADD] = rb_lua_padd,   [RB_PREMOVE] = rb_lua_premove,
    [RB_PLIST] = rb_lua_plist,   [RB_PSYNC] = rb_lua_psync, [RB_LIMIT] = rb_lua_limit,
    [RB_REPORT] = rb_lua_report, [RB_REPORTS] = rb_lua_reports, [RB_ALIVE] = rb_lua_alive,
    [RB_DIRECT] = rb_lua_direct, [RB_FENCE] = rb_lua_fence,
};

/* ---- types ---- */

typedef struct rb_list_s {
    struct rb_list_s *prev, *next;
} rb_list_t;

static void rb_list_init(rb_list_t *h) { h->prev = h->next = h; }
static int rb_list_empty(const rb_list_t *h) { return h->next == h; }
static int rb_list_linked(const rb_list_t *n) { return n->next != NULL; }
static void rb_list_push(rb_list_t *h, rb_list_t *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}
static void rb_list_del(rb_list_t *n)
{
    if (!n->next) return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

#define rb_container_of(p, type, field) ((type *)((char *)(p) - offsetof(type, field)))

typedef struct {
    char *id;
    char *json;                    /* {"id","name","muted"} */
} rb_member_t;

typedef struct rb_shard_s rb_shard_t;

typedef struct {
    rb_list_t link;                /* r->rooms */
    char *name;
    char *chan;                    /* chatgw:room:NAME; in a cluster chatgw:{NAME}:ch (sharded) */
    int wanted;                    /* the hub subscribed */
    int subs_pending;              /* SUBSCRIBEs sent on this link, not yet confirmed */
    rb_shard_t *on;                /* where they went (a cluster's shards change with the map) */
    int mark;                      /* rb_shard_drop's and rb_shards_remap's: its channel moved */
    proto_id_t seen;               /* the newest msg id seen on the channel or in a post's answer */
    int fence;                     /* its store may have lost writes (a failover, a restart):
                                    * checked against seen (rb_lua_fence) before it is used again */
    int confirmed;                 /* Redis sends us the channel now */
    int dirty;                     /* the presence hash may differ from the mirror: sync when up */
    rb_member_t *members;          /* this node's members: the mirror re-registered on reconnect */
    size_t nmembers, cap;
} rb_room_t;

enum { RB_IDLE, RB_CONNECTING, RB_UP, RB_CLOSING };

typedef struct bus_redis_s bus_redis_t;
typedef struct rb_req_s rb_req_t;
typedef void (*rb_done_fn)(rb_req_t *q, redisReply *reply, int status);

/* One server: a master of the cluster, or the one Redis. */
struct rb_shard_s {
    bus_redis_t *r;
    char ip[REDIS_SLOTS_HOST_MAX];   /* numeric */
    int port;
    redisAsyncContext *cmd;
    redis_sub_t *sub;
    int cmd_ready;                 /* the prelude (AUTH, SELECT, SCRIPT LOAD, PING) answered */
    int sub_ready;                 /* the subscriber answered its first PING (after AUTH and the
                                    * base subscriptions) */
    uint64_t ping_sent_ms;         /* the subscriber's liveness probe in flight, or 0 */
    int down;                      /* a cluster's shard that failed while the bus stayed up: its
                                    * connections go (need_drop), the next map replaces it */
    int need_drop;
};

struct rb_req_s {
    bus_redis_t *r;
    rb_list_t pending;             /* r->pending while Redis owes the answer, oldest first */
    rb_list_t echo;                /* r->echo: a post waiting for its own message */
    rb_list_t wait;                /* r->waiting: a read held until its room's channel is on */
    uint64_t sent_ms;
    uint64_t born_ms;              /* TRYAGAIN is retried for command_timeout_ms from here */
    int script;                    /* RB_* or -1 */
    int op;                        /* METRICS_BUS_OP_*: what an error counts as */
    int evaled;                    /* already resent as EVAL */
    rb_shard_t *to;                /* where it goes: NULL = by its key's slot */
    rb_shard_t *sent_to;           /* where it went (the watchdog's culprit) */
    int redirects;                 /* MOVED/ASK followed */
    int argc, argcap;
    char **argv;
    size_t *argvlen;
    rb_done_fn done;
    bus_cb_t cb;
    void *arg;
    char *room;                    /* presence and posts */
    uint64_t token;                /* posts */
    int completed;
    proto_id_t id;
    sbuf_t *payload;
};

struct bus_redis_s {
    bus_t base;                    /* first: a bus_t * is a bus_redis_t * */
    uv_loop_t *loop;
    bus_url_t url;
    char *password;                /* from password_file, else the URL's; NULL = no AUTH */
    long connect_timeout_ms, command_timeout_ms, backoff_min_ms, backoff_max_ms, ttl_ms, history_size;
    long room_ttl_ms;
    int state;                     /* RB_* */
    int fail_status;               /* what requests lost with the link report */
    int need_teardown;
    rb_shard_t **shards;           /* this try's servers: one, or a cluster's masters (the map's order) */
    size_t nshards;
    int cluster;                   /* redis_cluster_nodes: seeds in sentinels[], sharded pub/sub */
    uint16_t *slot_shard;          /* a cluster: slot -> index in shards */
    size_t home;                   /* the shard of the node keys ({nodes}) and direct frames */
    int degraded;                  /* up, but a shard failed or a slot moved since: when every
                                    * shard is up again, the rooms are listed and filled again */
    int refreshing;                /* CLUSTER SLOTS asked while up */
    rb_shard_t *direct_on;         /* the shard whose subscriber has the direct channel */
    rb_shard_t *refresh_from;      /* the next CLUSTER SLOTS goes here first, when still up */
    uint64_t last_refresh_ms;
    rb_shard_t **retired;          /* shards a new map let go, dropped and freed from the kick */
    size_t nretired;
    char *scripts[RB_SCRIPTS];     /* rb_scripts, with SPUBLISH in a cluster */
    int ever_up;
    unsigned attempt;              /* failed tries since the last up */
    uv_getaddrinfo_t gai;
    int gai_busy;
    uv_timer_t tick;               /* heartbeat, reaper and watchdogs */
    uv_timer_t retry;              /* backoff, connect timeout, close timeout */
    uv_timer_t kick;               /* runs teardown and close outside hiredis's stack */
    int handles;                   /* open uv handles; the struct goes with the last */
    int close_started, close_up, handles_closing;
    map_t room_map;                /* name -> rb_room_t */
    rb_list_t rooms;
    rb_list_t pending, echo;
    rb_list_t waiting;             /* reads held until their room's SUBSCRIBE is confirmed, oldest
                                    * first (a wanted room is never freed, so they name it) */
    rb_list_t again;               /* requests a cluster answered TRYAGAIN: sent again next tick */
    uint64_t next_token;
    uint64_t last_hb_ms, last_load_ms, last_tick_ms;
    int hb_first;
    long tick_ms, hb_ms;
    char sha[RB_SCRIPTS][41];
    char *key_node, *key_conns;
    map_t conns;                   /* this node's connection ids: the mirror of key_conns */
    /* Sentinel: the master's address comes from the first sentinel that names it; a cluster:
     * the slot map from the first seed that answers CLUSTER SLOTS */
    bus_url_t *sentinels;          /* host, port of each sentinel or seed; NULL without either */
    size_t nsentinels, sentinel_i, sentinel_tries;
    char *sentinel_master, *sentinel_password;
    redisAsyncContext *sent;       /* the sentinel being asked, during a try */
    redisAsyncContext *watch;      /* while up: SUBSCRIBE +switch-master on the sentinel that answered */
    char sentinel_ip[64];          /* that sentinel's address */
    int asking;                    /* this try still looks for the master */
    char *target_host;             /* what this try connects to: the URL's, or the named master */
    int target_port;
};

static void rb_link_fail(bus_redis_t *r, int status, const char *why);
static void rb_shard_fail(rb_shard_t *sh, int status, const char *why);
static void rb_refresh_later(bus_redis_t *r);
static void rb_refresh_soon(bus_redis_t *r);
static void rb_link_start(bus_redis_t *r);
static void rb_close_maybe_finish(bus_redis_t *r);
static void rb_presence_sync(bus_redis_t *r, rb_room_t *room, int leave_all);

/* ---- small helpers ---- */

static char *rb_strcat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = xmalloc(la + lb + 1);
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

static int rb_is_self(const bus_redis_t *r, const char *origin, size_t len)
{
    return len == strlen(r->base.node) && !memcmp(origin, r->base.node, len);
}

static int rb_alive(const bus_redis_t *r) { return r->state != RB_CLOSING; }

/* ---- rooms ---- */

/* A room's channel: plain pub/sub on one Redis; in a cluster a sharded channel that carries the
 * room's hash tag, so it lives on the shard of the room's keys and their scripts may publish
 * to it. */
#define RB_CHAN_SHARDED_HEAD "chatgw:{"
#define RB_CHAN_SHARDED_TAIL "}:ch"

static char *rb_chan(const bus_redis_t *r, const char *name)
{
    if (!r->cluster) return rb_strcat(RB_CHAN_ROOM, name);
    size_t n = strlen(RB_CHAN_SHARDED_HEAD) + strlen(name) + strlen(RB_CHAN_SHARDED_TAIL) + 1;
    char *c = xmalloc(n);
    snprintf(c, n, RB_CHAN_SHARDED_HEAD "%s" RB_CHAN_SHARDED_TAIL, name);
    return c;
}

/* The room a channel names, copied into out; 0, or GW_EINVAL for another channel. */
#define RB_ROOM_NAME_MAX 512         /* rooms are shorter (proto_room_valid); longer are not ours */

static int rb_chan_room(const bus_redis_t *r, const char *chan, size_t n, char *out, size_t outlen)
{
    const char *head = r->cluster ? RB_CHAN_SHARDED_HEAD : RB_CHAN_ROOM;
    size_t hl = strlen(head), tl = r->cluster ? strlen(RB_CHAN_SHARDED_TAIL) : 0;
    if (n <= hl + tl || memcmp(chan, head, hl) || (tl && memcmp(chan + n - tl, RB_CHAN_SHARDED_TAIL, tl)))
        return GW_EINVAL;
    size_t len = n - hl - tl;
    if (len >= outlen || memchr(chan + hl, '\0', len)) return GW_EINVAL;
    memcpy(out, chan + hl, len);
    out[len] = '\0';
    return 0;
}

static const char *rb_chan_direct(const bus_redis_t *r)
{
    return r->cluster ? RB_CHAN_DIRECT_SHARDED : RB_CHAN_DIRECT;
}

/* The shard serving key's slot (the one shard of a single Redis). */
static size_t rb_shard_of(const bus_redis_t *r, const char *key, size_t n)
{
    if (!r->cluster || !r->slot_shard) return 0;
    return r->slot_shard[redis_slots_keyslot(key, n)];
}

static rb_room_t *rb_room_get(bus_redis_t *r, const char *name) { return map_get(&r->room_map, name); }

static rb_room_t *rb_room_open(bus_redis_t *r, const char *name)
{
    rb_room_t *room = rb_room_get(r, name);
    if (room) return room;
    room = xcalloc(1, sizeof *room);
    room->name = xstrdup(name);
    room->chan = rb_chan(r, name);
    map_set(&r->room_map, name, room);
    rb_list_push(&r->rooms, &room->link);
    return room;
}

static void rb_room_destroy(bus_redis_t *r, rb_room_t *room)
{
    map_del(&r->room_map, room->name);
    rb_list_del(&room->link);
    for (size_t i = 0; i < room->nmembers; i++) {
        free(room->members[i].id);
        free(room->members[i].json);
    }
    free(room->members);
    free(room->chan);
    free(room->name);
    free(room);
}

/* Frees room once nothing needs it: not wanted, no members, nothing to sync. */
static void rb_room_release(bus_redis_t *r, rb_room_t *room)
{
    if (!room->wanted && !room->nmembers && !room->dirty && !room->subs_pending) rb_room_destroy(r, room);
}

static rb_member_t *rb_room_member(rb_room_t *room, const char *id)
{
    for (size_t i = 0; i < room->nmembers; i++)
        if (!strcmp(room->members[i].id, id)) return &room->members[i];
    return NULL;
}

static void rb_key(buf_t *b, const char *room, const char *suffix)
{
    buf_reset(b);
    buf_printf(b, "chatgw:{%s}:%s", room, suffix);
}

/* ---- requests on the cmd connection ---- */

/* What a request counts as in errors[]; plain commands are the link's unless the caller says. */
static int rb_script_op(int script)
{
    switch (script) {
    case RB_POST: case RB_FENCE: return METRICS_BUS_OP_POST;
    case RB_RANGE: case RB_PLIST: case RB_REPORTS: return METRICS_BUS_OP_READ;
    case RB_REPORT: case RB_ALIVE: return METRICS_BUS_OP_HEARTBEAT;
    case RB_DIRECT: return METRICS_BUS_OP_PUBLISH;
    case RB_PADD: case RB_PREMOVE: case RB_PSYNC: return METRICS_BUS_OP_PRESENCE;
    case RB_LIMIT: return METRICS_BUS_OP_LIMIT;
    default: return METRICS_BUS_OP_LINK;
    }
}

/* Ops that store data: an error reply to one means Redis refuses writes (OOM, READONLY), and
 * only one of them taken says it stopped (PUBLISH is allowed even when Redis is full). */
static int rb_op_writes(int op)
{
    return op == METRICS_BUS_OP_POST || op == METRICS_BUS_OP_PRESENCE || op == METRICS_BUS_OP_HEARTBEAT ||
           op == METRICS_BUS_OP_LIMIT;
}

static rb_req_t *rb_req_new(bus_redis_t *r, int script, rb_done_fn done)
{
    rb_req_t *q = xcalloc(1, sizeof *q);
    q->r = r;
    q->born_ms = uv_now(r->loop);
    q->script = script;
    q->done = done;
    q->op = rb_script_op(script);
    return q;
}

static void rb_req_arg(rb_req_t *q, const void *p, size_t n)
{
    if (q->argc == q->argcap) {
        q->argcap = q->argcap ? q->argcap * 2 : 8;
        q->argv = xrealloc(q->argv, (size_t)q->argcap * sizeof *q->argv);
        q->argvlen = xrealloc(q->argvlen, (size_t)q->argcap * sizeof *q->argvlen);
    }
    char *c = xmalloc(n + 1);
    memcpy(c, p, n);
    c[n] = '\0';
    q->argv[q->argc] = c;
    q->argvlen[q->argc++] = n;
}

/* The three keys of room's history (the post and range scripts' KEYS): seq, epoch, hist. */
static void rb_req_history_keys(rb_req_t *q, const char *room)
{
    static const char *const suffix[] = {"seq", "epoch", "hist"};
    buf_t key;
    buf_init(&key);
    for (size_t i = 0; i < 3; i++) {
        rb_key(&key, room, suffix[i]);
        rb_req_arg(q, key.data, key.len);
    }
    buf_free(&key);
}

static void rb_req_str(rb_req_t *q, const char *s) { rb_req_arg(q, s, strlen(s)); }

static void rb_req_key(rb_req_t *q, const char *room, const char *suffix)
{
    buf_t key;
    buf_init(&key);
    rb_key(&key, room, suffix);
    rb_req_arg(q, key.data, key.len);
    buf_free(&key);
}

/* The presence scripts' KEYS (RB_PRESENCE_KEYS): presence, then seq, epoch, hist to touch,
 * then alive (RB_LUA_ALIVE). */
#define RB_PRESENCE_KEYS 5
static void rb_req_presence_keys(rb_req_t *q, const char *room)
{
    rb_req_key(q, room, "presence");
    rb_req_history_keys(q, room);
    rb_req_key(q, room, "alive");
}

static void rb_req_fmt(rb_req_t *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rb_req_fmt(rb_req_t *q, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    rb_req_str(q, tmp);
}

/* EVALSHA sha nkeys: the caller appends the keys, then the arguments. */
static rb_req_t *rb_req_script(bus_redis_t *r, int script, int nkeys, rb_done_fn done)
{
    rb_req_t *q = rb_req_new(r, script, done);
    rb_req_str(q, "EVALSHA");
    rb_req_str(q, r->sha[script]);
    rb_req_fmt(q, "%d", nkeys);
    return q;
}

static void rb_req_free(rb_req_t *q)
{
    rb_list_del(&q->pending);
    rb_list_del(&q->echo);
    rb_list_del(&q->wait);
    for (int i = 0; i < q->argc; i++) free(q->argv[i]);
    free(q->argv);
    free(q->argvlen);
    free(q->room);
    if (q->payload) sbuf_unref(q->payload);
    free(q);
}

static void rb_on_reply(redisAsyncContext *c, void *reply, void *privdata);

/* The shard q goes to: its own, or its key's (a script's first key, else a command's first
 * argument). NULL while there is none. */
static rb_shard_t *rb_req_shard(const rb_req_t *q)
{
    const bus_redis_t *r = q->r;
    if (q->to) return q->to;
    int k = q->script >= 0 ? (q->argc > 3 && strcmp(q->argv[2], "0") ? 3 : -1) : (q->argc > 1 ? 1 : -1);
    size_t i = k < 0 ? r->home : rb_shard_of(r, q->argv[k], q->argvlen[k]);
    return i < r->nshards ? r->shards[i] : NULL;
}

/* Queues q on sh's cmd, after ASKING when asking (a slot being migrated). 0, or GW_EDOWN (q
 * untouched: the caller frees it). */
static int rb_req_send_to(rb_req_t *q, rb_shard_t *sh, int asking)
{
    bus_redis_t *r = q->r;
    redisAsyncContext *c = sh ? sh->cmd : NULL;
    if (!c) return GW_EDOWN;
    if (asking && redisAsyncCommand(c, NULL, NULL, "ASKING") != REDIS_OK) return GW_EDOWN;
    if (redisAsyncCommandArgv(c, rb_on_reply, q, q->argc, (const char **)q->argv, q->argvlen) != REDIS_OK)
        return GW_EDOWN;
    q->sent_ms = uv_now(r->loop);
    q->sent_to = sh;
    rb_list_push(&r->pending, &q->pending);
    return 0;
}

static int rb_req_send(rb_req_t *q) { return rb_req_send_to(q, rb_req_shard(q), 0); }

/* Sends q, or frees it and answers GW_EDOWN (q is the callee's either way). */
static int rb_req_submit(rb_req_t *q)
{
    if (rb_req_send(q) == 0) return 0;
    rb_req_free(q);
    return GW_EDOWN;
}

static void rb_done_free(rb_req_t *q, redisReply *rep, int status) { rb_req_free(q); }

/* A snapshot's or a refill's read of a room this node is subscribing to waits until Redis
 * confirmed the SUBSCRIBE: every msg after the read's newest id then comes on the channel, so a
 * first joiner cannot miss one posted between the read and the subscription. Otherwise (not
 * wanted, already on, or no SUBSCRIBE in flight) it goes at once. 0, or GW_EDOWN (q freed). */
static int rb_req_submit_read(rb_req_t *q, const char *name)
{
    bus_redis_t *r = q->r;
    rb_room_t *room = map_get(&r->room_map, name);
    if (!room || !room->wanted || room->confirmed || !room->subs_pending || r->state != RB_UP)
        return rb_req_submit(q);   /* nothing to wait for (no SUBSCRIBE in flight: its shard is down) */
    q->sent_ms = uv_now(r->loop);
    free(q->room);
    q->room = xstrdup(name);
    rb_list_push(&r->waiting, &q->wait);
    return 0;
}

/* Sends the requests held on list (their `wait` links) for room (NULL: every one), or with
 * status fails them (the link went). Each is unlinked before it goes or its callback runs. */
static void rb_held_flush(rb_list_t *list, const char *room, int status)
{
    rb_list_t todo;
    rb_list_init(&todo);
    for (rb_list_t *l = list->next, *next; l != list; l = next) {
        next = l->next;
        rb_req_t *q = rb_container_of(l, rb_req_t, wait);
        if (room && strcmp(q->room, room)) continue;
        rb_list_del(&q->wait);
        rb_list_push(&todo, &q->wait);
    }
    while (!rb_list_empty(&todo)) {
        rb_req_t *q = rb_container_of(todo.next, rb_req_t, wait);
        rb_list_del(&q->wait);
        if (status || rb_req_send(q) < 0) q->done(q, NULL, status ? status : GW_EDOWN);
    }
}

/* The reads held for room (NULL: every room), now that its channel is on or no longer wanted. */
static void rb_waiting_flush(bus_redis_t *r, const char *room, int status) { rb_held_flush(&r->waiting, room, status); }

/* What a cluster answered TRYAGAIN (or redirected too often) goes again. */
static void rb_again_flush(bus_redis_t *r, int status) { rb_held_flush(&r->again, NULL, status); }

/* SCRIPT LOAD of every script on sh. */
static void rb_scripts_load(bus_redis_t *r, rb_shard_t *sh)
{
    r->last_load_ms = uv_now(r->loop);
    for (int i = 0; i < RB_SCRIPTS; i++) {
        rb_req_t *q = rb_req_new(r, -1, rb_done_free);
        q->to = sh;
        rb_req_str(q, "SCRIPT");
        rb_req_str(q, "LOAD");
        rb_req_str(q, r->scripts[i]);
        (void)rb_req_submit(q);
    }
}

/* An error reply: counted by op; one to a write means Redis refuses writes until one succeeds.
 * An OOM (maxmemory reached with nothing it may evict) is an error, not a warning: messages
 * and presence stop crossing replicas while Redis stays full. */
static void rb_link_fail(bus_redis_t *r, int status, const char *why);

/* Hands a bus error to the error tracker's sink (base/report.h), after it was logged and counted. */
static void rb_report(const char *level, const char *hook, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rb_report(const char *level, const char *hook, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    report_t rep = {.kind = "bus_error", .level = level, .message = msg, .hook = hook, .worker = -1};
    report_emit(&rep);
}

/* A cluster's answer that its shard cannot serve now (no master, a failover under way, a slot
 * migrating): the request failed GW_EDOWN, as on a lost link, so the hub falls back. */
static int rb_reply_unavailable(const bus_redis_t *r, const char *err)
{
    return r->cluster && (!strncmp(err, "CLUSTERDOWN", 11) || !strncmp(err, "TRYAGAIN", 8) ||
                          !strncmp(err, "READONLY", 8) || !strncmp(err, "MASTERDOWN", 10));
}

static void rb_reply_error(bus_redis_t *r, const rb_req_t *q, const redisReply *rep)
{
    const char *err = rep->str ? rep->str : "";
    int oom = !strncmp(err, "OOM", 3) || strstr(err, "OOM command not allowed");
    RB_STAT_ADD(r, errors[q->op], 1);
    log_write(oom ? LOG_ERROR : LOG_WARN, oom ? "bus: redis is out of memory; writes are refused" : "bus: redis error",
              "{s:s, s:s, s:s}", "command", q->script >= 0 ? "script" : q->argv[0], "op", metrics_bus_ops[q->op],
              "error", err);
    if (rb_op_writes(q->op) && !rb_reply_unavailable(r, err)) RB_STAT_SET(r, refusing, 1);
    /* hook = the op, so the tracker groups by what failed; its rate limit keeps a flood small */
    rb_report(oom ? "error" : "warning", metrics_bus_ops[q->op], "redis error on %s: %.400s", metrics_bus_ops[q->op],
              err);
    if (rb_reply_unavailable(r, err) && q->sent_to && strncmp(err, "TRYAGAIN", 8))
        rb_shard_fail(q->sent_to, GW_EREPLY, "the shard cannot serve; reading the slot map again");
    else if (r->nsentinels && !r->cluster && !strncmp(err, "READONLY", 8))   /* a failover made our master a replica */
        rb_link_fail(r, GW_EREPLY, "the master became a replica; asking the sentinels again");
}

#define RB_REDIRECTS_MAX 5

/* A cluster's MOVED or ASK: 1 when q went again to the shard Redis named (a MOVED also
 * points the slot there) or waits for the next tick (a master not in the map yet, or more
 * than RB_REDIRECTS_MAX in a row); 0 when rep is no redirection; GW_EDOWN when
 * command_timeout_ms is spent. */
static int rb_req_redirect(rb_req_t *q, const rb_shard_t *from, const redisReply *rep)
{
    bus_redis_t *r = q->r;
    redis_slots_redirect_t rd;
    if (!r->cluster || !rep->str || redis_slots_redirect_parse(rep->str, rep->len, &rd) < 0) return 0;
    const char *host = rd.node.host[0] ? rd.node.host : from->ip;
    size_t i = 0;
    while (i < r->nshards && (r->shards[i]->port != rd.node.port || strcmp(r->shards[i]->ip, host))) i++;
    /* a master not in the map (a failover promoted a replica), or masters that disagree for
     * a moment: the map is read again, q waits for a tick */
    if (i == r->nshards || ++q->redirects > RB_REDIRECTS_MAX) {
        if (i == r->nshards) {     /* asked of the master that redirected: it knows the new one */
            r->degraded = 1;
            r->refresh_from = (rb_shard_t *)from;
            rb_refresh_soon(r);
        }
        if (uv_now(r->loop) - q->born_ms >= (uint64_t)r->command_timeout_ms) return GW_EDOWN;
        q->redirects = 0;
        rb_list_push(&r->again, &q->wait);
        return 1;
    }
    if (rd.kind == REDIS_SLOTS_MOVED) {   /* the slot's channels move too: the map is read again */
        r->slot_shard[rd.slot] = (uint16_t)i;
        r->degraded = 1;
        rb_refresh_later(r);
    }
    return rb_req_send_to(q, r->shards[i], rd.kind == REDIS_SLOTS_ASK) == 0 ? 1 : GW_EDOWN;
}

static void rb_on_reply(redisAsyncContext *c, void *reply, void *privdata)
{
    rb_req_t *q = privdata;
    bus_redis_t *r = q->r;
    redisReply *rep = reply;
    rb_list_del(&q->pending);
    if (rep && rep->type == REDIS_REPLY_ERROR && q->script >= 0 && !q->evaled && !strncmp(rep->str, "NOSCRIPT", 8)) {
        /* The script cache was flushed: run this one as EVAL, and load them all again. */
        q->evaled = 1;
        free(q->argv[0]);
        free(q->argv[1]);
        q->argv[0] = xstrdup("EVAL");
        q->argvlen[0] = 4;
        q->argv[1] = xstrdup(r->scripts[q->script]);
        q->argvlen[1] = strlen(q->argv[1]);
        if (r->state == RB_UP && uv_now(r->loop) - r->last_load_ms > 1000) rb_scripts_load(r, c->data);
        if (rb_req_send(q) == 0) return;
        rep = NULL;
    }
    int moved = rep && rep->type == REDIS_REPLY_ERROR ? rb_req_redirect(q, c->data, rep) : 0;
    if (moved > 0) return;
    if (rep && rep->type == REDIS_REPLY_ERROR && r->cluster && rep->str && !strncmp(rep->str, "TRYAGAIN", 8) &&
        uv_now(r->loop) - q->born_ms < (uint64_t)r->command_timeout_ms) {   /* a slot half migrated: next tick */
        q->redirects = 0;          /* ASK, TRYAGAIN, ASK...: bounded by the time instead */
        rb_list_push(&r->again, &q->wait);
        return;
    }
    int status = 0;
    if (moved < 0) {               /* redirected for command_timeout_ms */
        status = GW_EDOWN;
        rep = NULL;
    } else if (!rep) {
        status = r->state == RB_UP || r->state == RB_CONNECTING ? GW_EDOWN : r->fail_status;
        rb_shard_fail(c->data, GW_EDOWN, "connection lost");
    } else if (rep->type == REDIS_REPLY_ERROR) {
        status = rb_reply_unavailable(r, rep->str ? rep->str : "") ? GW_EDOWN : GW_EREPLY;
        rb_reply_error(r, q, rep);
    } else if (rb_op_writes(q->op) && __atomic_load_n(&r->base.stats.refusing, __ATOMIC_RELAXED)) {
        log_info("bus: redis takes writes again", NULL);
        RB_STAT_SET(r, refusing, 0);
    }
    q->done(q, rep, status);
}

/* ---- link: connect, up, fail, teardown ---- */

static void rb_on_kick(uv_timer_t *t);
static void rb_on_retry(uv_timer_t *t);

static void rb_kick(bus_redis_t *r) { uv_timer_start(&r->kick, rb_on_kick, 0, 0); }

static void rb_done_prelude(rb_req_t *q, redisReply *rep, int status)
{
    if (rep && status) rb_shard_fail(q->to, GW_EREPLY, rep->str ? rep->str : "prelude refused");
    rb_req_free(q);
}

static void rb_maybe_up(bus_redis_t *r);

static void rb_done_ready(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    rb_shard_t *sh = q->to;
    rb_req_free(q);
    if (status) return;            /* sh may be gone */
    sh->cmd_ready = 1;
    rb_maybe_up(r);
}

/* The shard of room's keys and channel, or NULL while there is none. */
static rb_shard_t *rb_room_shard(const bus_redis_t *r, const rb_room_t *room)
{
    size_t i = rb_shard_of(r, room->chan, strlen(room->chan));
    return i < r->nshards ? r->shards[i] : NULL;
}

static void rb_done_fence(rb_req_t *q, redisReply *rep, int status)
{
    if (!status && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1)
        log_warn("bus: the room's store lost writes (a failover?): new epoch; clients get history_gap", "{s:s}", "room",
                 q->room);
    rb_req_free(q);
}

/* Before a room is used again after its store may have lost writes: ids behind the newest
 * seen start a new epoch (rb_lua_fence). Queued ahead of this node's next requests on the shard. */
static void rb_room_fence(bus_redis_t *r, rb_room_t *room)
{
    if (!room->fence || !room->seen.epoch[0]) return;
    room->fence = 0;
    rb_req_t *q = rb_req_script(r, RB_FENCE, 3, rb_done_fence);
    rb_req_history_keys(q, room->name);
    rb_req_str(q, room->seen.epoch);
    rb_req_fmt(q, "%" PRIu64, room->seen.seq);
    char epoch[13];
    rb_req_str(q, hex_random(epoch, 6));
    rb_req_fmt(q, "%ld", r->room_ttl_ms);
    q->room = xstrdup(room->name);
    if (rb_req_submit(q) < 0) room->fence = 1;
}

/* SUBSCRIBE (a cluster: SSUBSCRIBE on the room's shard) of a wanted room, after its fence. */
static void rb_room_sub_send(bus_redis_t *r, rb_room_t *room)
{
    rb_shard_t *sh = rb_room_shard(r, room);
    rb_room_fence(r, room);
    if (sh && sh->sub && redis_sub_subscribe(sh->sub, r->cluster, room->chan, strlen(room->chan)) == 0) {
        room->subs_pending++;
        room->on = sh;
    }
}

static void rb_sentinel_next(bus_redis_t *r, const char *why);

static void rb_on_ctx_connect(const redisAsyncContext *c, int status)
{
    bus_redis_t *r = c->data;
    if (status == REDIS_OK) return;
    /* hiredis frees c after this returns */
    if (c == r->watch) {           /* only a hint: the link goes on without it */
        r->watch = NULL;
        return;
    }
    if (c == r->sent) {
        r->sent = NULL;
        rb_sentinel_next(r, c->errstr ? c->errstr : "connect failed");
    }
}

static void rb_on_ctx_disconnect(const redisAsyncContext *c, int status)
{
    bus_redis_t *r = c->data;
    if (c == r->watch) {
        r->watch = NULL;
        if (r->state == RB_CLOSING) rb_close_maybe_finish(r);
        return;
    }
    if (c == r->sent) {
        r->sent = NULL;
        if (r->state == RB_CLOSING) rb_close_maybe_finish(r);
        else rb_sentinel_next(r, "connection lost");
    }
}

/* A shard's command connection (c->data is the shard). */
static void rb_on_cmd_connect(const redisAsyncContext *c, int status)
{
    rb_shard_t *sh = c->data;
    if (status == REDIS_OK || sh->cmd != c) return;
    sh->cmd = NULL;                /* hiredis frees c after this returns */
    log_debug("bus: redis connect failed", "{s:s}", "error", c->errstr ? c->errstr : "");
    rb_shard_fail(sh, GW_EDOWN, "connect failed");
}

static void rb_on_cmd_disconnect(const redisAsyncContext *c, int status)
{
    rb_shard_t *sh = c->data;
    if (sh->cmd != c) return;      /* we let go of it ourselves */
    bus_redis_t *r = sh->r;
    sh->cmd = NULL;
    if (r->state == RB_CLOSING) {
        rb_close_maybe_finish(r);
        return;
    }
    rb_shard_fail(sh, GW_EDOWN, status == REDIS_OK ? "disconnected" : (c->errstr ? c->errstr : "connection lost"));
}

/* hiredis 0.14's libuv adapter drops a poll error, so a refused connect went unnoticed until
 * the connect timeout. These replace its event functions (same redisLibuvEvents) with a poll
 * callback that hands an error to hiredis: a write while connecting (it then reads the
 * socket's error and fails the connect), a read once connected (EOF or the error). */
static void rb_uv_poll(uv_poll_t *h, int status, int events)
{
    redisLibuvEvents *p = h->data;
    if (status < 0 && p->context) events = p->context->c.flags & REDIS_CONNECTED ? UV_READABLE : UV_WRITABLE;
    if (p->context && (events & UV_READABLE)) redisAsyncHandleRead(p->context);
    if (p->context && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
}

static void rb_uv_events(redisLibuvEvents *p, int add, int del)
{
    p->events = (p->events | add) & ~del;
    if (p->events) uv_poll_start(&p->handle, p->events, rb_uv_poll);
    else uv_poll_stop(&p->handle);
}

static void rb_uv_add_read(void *d) { rb_uv_events(d, UV_READABLE, 0); }
static void rb_uv_del_read(void *d) { rb_uv_events(d, 0, UV_READABLE); }
static void rb_uv_add_write(void *d) { rb_uv_events(d, UV_WRITABLE, 0); }
static void rb_uv_del_write(void *d) { rb_uv_events(d, 0, UV_WRITABLE); }

static int rb_uv_attach(redisAsyncContext *c, uv_loop_t *loop)
{
    if (redisLibuvAttach(c, loop) != REDIS_OK) return REDIS_ERR;
    c->ev.addRead = rb_uv_add_read;
    c->ev.delRead = rb_uv_del_read;
    c->ev.addWrite = rb_uv_add_write;
    c->ev.delWrite = rb_uv_del_write;
    return REDIS_OK;
}

static redisAsyncContext *rb_ctx_open(bus_redis_t *r, const char *ip, int port, void *data,
                                      redisConnectCallback *on_connect, redisDisconnectCallback *on_disconnect)
{
    redisAsyncContext *c = redisAsyncConnect(ip, port);
    if (!c) return NULL;
    if (c->err) {
        log_debug("bus: redis connect failed", "{s:s}", "error", c->errstr ? c->errstr : "");
        redisAsyncFree(c);
        return NULL;
    }
    if (rb_uv_attach(c, r->loop) != REDIS_OK) {
        redisAsyncFree(c);
        return NULL;
    }
    c->data = data;
    redisAsyncSetConnectCallback(c, on_connect);
    redisAsyncSetDisconnectCallback(c, on_disconnect);
    return c;
}

static void rb_req_auth(rb_req_t *q, const bus_redis_t *r)
{
    rb_req_str(q, "AUTH");
    if (r->url.user && *r->url.user) rb_req_str(q, r->url.user);
    rb_req_str(q, r->password);
}

static void rb_done_role(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    int master = !status && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                 rep->element[0]->type == REDIS_REPLY_STRING && !strcmp(rep->element[0]->str, "master");
    rb_req_free(q);
    if (!master && !status) rb_link_fail(r, GW_EREPLY, "the server the sentinel named is not a master (yet)");
}

static void rb_sub_dispatch(bus_redis_t *r, const char *chan, size_t chan_len, const char *msg, size_t len);
static void rb_sub_subscription(bus_redis_t *r, rb_shard_t *sh, int on, const char *chan, size_t chan_len);

/* redis_sub's handlers (no `ready`: the first pong says more); the argument is the shard. */
static void rb_on_sub_message(void *arg, int sharded, const char *chan, size_t chan_len, const char *msg, size_t len)
{
    rb_shard_t *sh = arg;
    (void)sharded;
    if (rb_alive(sh->r)) rb_sub_dispatch(sh->r, chan, chan_len, msg, len);
}

static void rb_on_sub_subscription(void *arg, int sharded, int on, const char *chan, size_t chan_len)
{
    rb_shard_t *sh = arg;
    (void)sharded;
    if (rb_alive(sh->r)) rb_sub_subscription(sh->r, sh, on, chan, chan_len);
}

/* The subscriber's probe came back; the first one also says its subscriptions went through. */
static void rb_on_sub_pong(void *arg)
{
    rb_shard_t *sh = arg;
    sh->ping_sent_ms = 0;
    if (sh->sub_ready) return;
    sh->sub_ready = 1;
    rb_maybe_up(sh->r);
}

static void rb_on_sub_closed(void *arg, const char *why)
{
    rb_shard_t *sh = arg;
    redis_sub_close(sh->sub);
    sh->sub = NULL;
    if (sh->r->direct_on == sh) sh->r->direct_on = NULL;
    if (rb_alive(sh->r)) rb_shard_fail(sh, GW_EDOWN, why);
}

static const redis_sub_handlers_t rb_sub_handlers = {
    .message = rb_on_sub_message,
    .subscription = rb_on_sub_subscription,
    .pong = rb_on_sub_pong,
    .closed = rb_on_sub_closed,
};

/* A shard at ip:port, not connected. */
static rb_shard_t *rb_shard_new(bus_redis_t *r, const char *ip, int port)
{
    rb_shard_t *sh = xcalloc(1, sizeof *sh);
    sh->r = r;
    snprintf(sh->ip, sizeof sh->ip, "%s", ip);
    sh->port = port;
    return sh;
}

/* The direct channel on the home shard's subscriber, unless it is there already. */
static void rb_direct_subscribe(bus_redis_t *r)
{
    rb_shard_t *home = r->home < r->nshards ? r->shards[r->home] : NULL;
    if (!home || !home->sub || r->direct_on == home) return;
    const char *direct = rb_chan_direct(r);
    if (redis_sub_subscribe(home->sub, r->cluster, direct, strlen(direct)) == 0) r->direct_on = home;
}

/* Opens sh's two connections; the command prelude is pipelined, its PING answers last; the
 * subscriber gets the direct channel when sh is home, then a PING (its pong means that all
 * before it went through). */
static int rb_shard_open(bus_redis_t *r, rb_shard_t *sh)
{
    sh->cmd_ready = sh->sub_ready = 0;
    sh->ping_sent_ms = 0;
    sh->cmd = rb_ctx_open(r, sh->ip, sh->port, sh, rb_on_cmd_connect, rb_on_cmd_disconnect);
    const char *user = r->url.user && *r->url.user ? r->url.user : NULL;   /* as rb_req_auth */
    if (!sh->cmd || redis_sub_open(r->loop, sh->ip, sh->port, user, r->password, &rb_sub_handlers, sh, &sh->sub) < 0)
        return GW_EDOWN;
    if (r->password) {
        rb_req_t *q = rb_req_new(r, -1, rb_done_prelude);
        q->to = sh;
        rb_req_auth(q, r);
        (void)rb_req_submit(q);
    }
    if (r->url.db) {
        rb_req_t *q = rb_req_new(r, -1, rb_done_prelude);
        q->to = sh;
        rb_req_str(q, "SELECT");
        rb_req_fmt(q, "%d", r->url.db);
        (void)rb_req_submit(q);
    }
    if (r->nsentinels && !r->cluster) {   /* a sentinel's answer may be stale: only a master will do */
        rb_req_t *q = rb_req_new(r, -1, rb_done_role);
        q->to = sh;
        rb_req_str(q, "ROLE");
        (void)rb_req_submit(q);
    }
    rb_scripts_load(r, sh);
    rb_req_t *ping = rb_req_new(r, -1, rb_done_ready);
    ping->to = sh;
    rb_req_str(ping, "PING");
    if (rb_req_submit(ping) < 0) return GW_EDOWN;
    rb_direct_subscribe(r);
    for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) {
        rb_room_t *room = rb_container_of(l, rb_room_t, link);
        if (room->wanted && rb_room_shard(r, room) == sh) rb_room_sub_send(r, room);
    }
    return redis_sub_ping(sh->sub);
}

/* Connects every shard without connections (a new try's, or a new map's); one that cannot
 * fails as a shard (rb_shard_fail: before the link is up, the whole try). */
static void rb_shards_open(bus_redis_t *r)
{
    r->home = rb_shard_of(r, RB_KEY_NODES, strlen(RB_KEY_NODES));
    for (size_t i = 0; i < r->nshards && (r->state == RB_CONNECTING || r->state == RB_UP); i++)
        if (!r->shards[i]->cmd && rb_shard_open(r, r->shards[i]) < 0)
            rb_shard_fail(r->shards[i], GW_EDOWN, "connect failed");
}

/* This try's servers: the one at ip (the URL's or the sentinels' master) ... */
static void rb_link_connect(bus_redis_t *r, const char *ip)
{
    r->shards = xcalloc(1, sizeof *r->shards);
    r->nshards = 1;
    r->shards[0] = rb_shard_new(r, ip, r->target_port);
    rb_shards_open(r);
}

/* ... or a cluster's masters, from its slot map: whether it serves every slot from masters at
 * numeric addresses (as Redis announces them unless told otherwise). 0, or GW_EINVAL with why. */
static int rb_map_check(const redis_slots_map_t *map, const char **why)
{
    unsigned char addr[16];
    if (map->covered < REDIS_SLOTS_COUNT) {
        *why = "the cluster does not serve every slot";
        return GW_EINVAL;
    }
    for (size_t i = 0; i < map->nshards; i++) {
        const char *h = map->shards[i].master.host;
        if (uv_inet_pton(AF_INET, h, addr) && uv_inet_pton(AF_INET6, h, addr)) {
            *why = "a master's address is not numeric";
            return GW_EINVAL;
        }
    }
    return 0;
}

static void rb_shards_remap(bus_redis_t *r, const redis_slots_map_t *map);

static int rb_cluster_connect(bus_redis_t *r, const redis_slots_map_t *map, const char **why)
{
    if (rb_map_check(map, why) < 0) return GW_EINVAL;
    if (!r->slot_shard) r->slot_shard = xcalloc(REDIS_SLOTS_COUNT, sizeof *r->slot_shard);
    rb_shards_remap(r, map);       /* from no shards: every one new */
    return 0;
}

static void rb_resolved(bus_redis_t *r, const char *ip);

static void rb_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    bus_redis_t *r = req->data;
    r->gai_busy = 0;
    char ip[64] = "";
    /* IPv4 first: "localhost" often lists ::1 first while Redis binds 127.0.0.1 */
    for (int pass = 0; status == 0 && pass < 2 && !*ip; pass++)
        for (const struct addrinfo *a = res; a && !*ip; a = a->ai_next) {
            if (pass == 0 && a->ai_family == AF_INET)
                uv_ip4_name((const struct sockaddr_in *)a->ai_addr, ip, sizeof ip);
            else if (pass == 1 && a->ai_family == AF_INET6)
                uv_ip6_name((const struct sockaddr_in6 *)a->ai_addr, ip, sizeof ip);
        }
    if (res) uv_freeaddrinfo(res);
    if (r->state == RB_CLOSING) {
        rb_close_maybe_finish(r);
        return;
    }
    if (r->state != RB_CONNECTING || r->nshards || r->sent) return;   /* this try already timed out */
    if (status < 0 || !*ip) {
        log_warn("bus: cannot resolve redis host", "{s:s, s:s}", "host", r->target_host, "error",
                 status < 0 ? uv_strerror(status) : "no address");
        if (r->asking) rb_sentinel_next(r, "resolve failed");
        else rb_link_fail(r, GW_EDOWN, "resolve failed");
        return;
    }
    rb_resolved(r, ip);
}

/* Resolves host (r->target_host or a sentinel's), then rb_resolved. */
static void rb_resolve(bus_redis_t *r, const char *host)
{
    unsigned char addr[16];
    if (uv_inet_pton(AF_INET, host, addr) == 0 || uv_inet_pton(AF_INET6, host, addr) == 0) {
        rb_resolved(r, host);
        return;
    }
    if (r->gai_busy) {             /* an earlier lookup is still out: this try fails, the next goes */
        rb_link_fail(r, GW_EDOWN, "resolve busy");
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    r->gai.data = r;
    int rc = uv_getaddrinfo(r->loop, &r->gai, rb_on_resolved, host, NULL, &hints);
    if (rc < 0) {
        log_warn("bus: cannot resolve redis host", "{s:s, s:s}", "host", host, "error", uv_strerror(rc));
        if (r->asking) rb_sentinel_next(r, "resolve failed");
        else rb_link_fail(r, GW_EDOWN, "resolve failed");
        return;
    }
    r->gai_busy = 1;
}

static void rb_sentinel_ask(bus_redis_t *r);

static void rb_link_start(bus_redis_t *r)
{
    r->state = RB_CONNECTING;
    r->fail_status = GW_EDOWN;
    uv_timer_start(&r->retry, rb_on_retry, (uint64_t)r->connect_timeout_ms, 0);
    if (r->nsentinels) {
        r->asking = 1;
        r->sentinel_tries = 0;
        rb_sentinel_ask(r);
        return;
    }
    r->asking = 0;
    free(r->target_host);
    r->target_host = xstrdup(r->url.host);
    r->target_port = r->url.port;
    rb_resolve(r, r->target_host);
}

/* ---- Sentinel: which server is the master ---- */

static void rb_sentinel_ask(bus_redis_t *r)
{
    const bus_url_t *s = &r->sentinels[r->sentinel_i % r->nsentinels];
    rb_resolve(r, s->host);
}

/* This sentinel cannot say: ask the next one, or fail this try when each was asked. */
static void rb_sentinel_next(bus_redis_t *r, const char *why)
{
    if (r->state != RB_CONNECTING || !r->asking) return;
    const bus_url_t *s = &r->sentinels[r->sentinel_i % r->nsentinels];
    log_debug(r->cluster ? "bus: cluster seed gave no slot map" : "bus: sentinel did not name the master",
              "{s:s, s:i, s:s}", "host", s->host, "port", s->port, "reason", why);
    if (r->sent) {
        redisAsyncContext *c = r->sent;
        r->sent = NULL;
        redisAsyncFree(c);
    }
    r->sentinel_i++;
    if (++r->sentinel_tries >= r->nsentinels) {
        rb_link_fail(r, GW_EDOWN, r->cluster ? "no seed node gave the slot map" : "no sentinel named the master");
        return;
    }
    rb_sentinel_ask(r);
}

static void rb_on_sentinel_auth(redisAsyncContext *c, void *reply, void *privdata)
{
    bus_redis_t *r = privdata;
    redisReply *rep = reply;
    if (c != r->sent || !rep || rep->type != REDIS_REPLY_ERROR) return;
    log_warn(r->cluster ? "bus: cluster seed refused AUTH" : "bus: sentinel refused AUTH", "{s:s}", "error",
             rep->str ? rep->str : "");
    rb_sentinel_next(r, "AUTH refused");
}

static void rb_on_sentinel_master(redisAsyncContext *c, void *reply, void *privdata)
{
    bus_redis_t *r = privdata;
    redisReply *rep = reply;
    if (c != r->sent || r->state != RB_CONNECTING) return;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING) {
        rb_sentinel_next(r, rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "unknown master name");
        return;
    }
    char *end;
    long port = strtol(rep->element[1]->str, &end, 10);
    if (*end || port < 1 || port > 65535) {
        rb_sentinel_next(r, "bad port");
        return;
    }
    free(r->target_host);
    r->target_host = xstrdup(rep->element[0]->str);
    r->target_port = (int)port;
    r->asking = 0;
    r->sent = NULL;
    redisAsyncFree(c);             /* freed by hiredis once this callback returns */
    log_debug("bus: sentinel named the master", "{s:s, s:s, s:i}", "master", r->sentinel_master, "host",
              r->target_host, "port", r->target_port);
    rb_resolve(r, r->target_host);
}

/* ---- Cluster: the slot map from a seed ---- */

static void rb_on_cluster_slots(redisAsyncContext *c, void *reply, void *privdata)
{
    bus_redis_t *r = privdata;
    redisReply *rep = reply;
    if (c != r->sent || r->state != RB_CONNECTING) return;
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        rb_sentinel_next(r, rep && rep->str ? rep->str : "no answer to CLUSTER SLOTS");
        return;
    }
    redis_slots_map_t map = {0};
    char why[256] = "";
    const char *bad = NULL;
    if (redis_slots_map_parse(rep, r->sentinel_ip, &map, why, sizeof why) < 0) bad = why;
    r->sent = NULL;
    redisAsyncFree(c);             /* freed by hiredis once this callback returns */
    if (!bad) {
        log_debug("bus: cluster slot map", "{s:i}", "masters", (int)map.nshards);
        if (rb_cluster_connect(r, &map, &bad) == 0) bad = NULL;
    }
    redis_slots_map_free(&map);
    if (bad) rb_link_fail(r, GW_EDOWN, bad);
}

/* AUTH (the nodes' password, as every node of a cluster shares it) and CLUSTER SLOTS on the seed. */
static void rb_cluster_ask(bus_redis_t *r)
{
    if (r->password) {
        rb_req_t *q = rb_req_new(r, -1, NULL);   /* only to build argv */
        rb_req_auth(q, r);
        redisAsyncCommandArgv(r->sent, rb_on_sentinel_auth, r, q->argc, (const char **)q->argv, q->argvlen);
        rb_req_free(q);
    }
    if (redisAsyncCommand(r->sent, rb_on_cluster_slots, r, "CLUSTER SLOTS") != REDIS_OK)
        rb_sentinel_next(r, "send failed");
}

/* The address of this try's next step is known: a sentinel to ask, or the server. */
static void rb_resolved(bus_redis_t *r, const char *ip)
{
    if (!r->asking) {
        rb_link_connect(r, ip);
        return;
    }
    const bus_url_t *s = &r->sentinels[r->sentinel_i % r->nsentinels];
    snprintf(r->sentinel_ip, sizeof r->sentinel_ip, "%s", ip);
    r->sent = rb_ctx_open(r, ip, s->port, r, rb_on_ctx_connect, rb_on_ctx_disconnect);
    if (!r->sent) {
        rb_sentinel_next(r, "connect failed");
        return;
    }
    if (r->cluster) {
        rb_cluster_ask(r);
        return;
    }
    if (r->sentinel_password) {
        const char *argv[2] = {"AUTH", r->sentinel_password};
        size_t len[2] = {4, strlen(r->sentinel_password)};
        redisAsyncCommandArgv(r->sent, rb_on_sentinel_auth, r, 2, argv, len);
    }
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", r->sentinel_master};
    size_t len[3] = {8, 23, strlen(r->sentinel_master)};
    if (redisAsyncCommandArgv(r->sent, rb_on_sentinel_master, r, 3, argv, len) != REDIS_OK)
        rb_sentinel_next(r, "send failed");
}

static void rb_heartbeat(bus_redis_t *r);
static void rb_presence_sync_all(bus_redis_t *r);
static void rb_conns_sync(bus_redis_t *r);

/* Writes the connection mirror again (the hash may be gone: expired, or Redis restarted). */
static void rb_conns_sync(bus_redis_t *r)
{
    rb_req_t *q = rb_req_new(r, -1, rb_done_free);
    q->op = METRICS_BUS_OP_HEARTBEAT;
    rb_req_str(q, "DEL");
    rb_req_str(q, r->key_conns);
    (void)rb_req_submit(q);
    size_t i;
    q = NULL;
    for (map_entry_t *e = map_first(&r->conns, &i); e; e = map_next(&r->conns, e, &i)) {
        if (!q) {
            q = rb_req_new(r, -1, rb_done_free);
            q->op = METRICS_BUS_OP_HEARTBEAT;
            rb_req_str(q, "HSET");
            rb_req_str(q, r->key_conns);
        }
        rb_req_str(q, e->key);
        rb_req_str(q, "1");
        if (q->argc >= 2 + 2 * 512) {   /* bounded commands */
            (void)rb_req_submit(q);
            q = NULL;
        }
    }
    if (q) (void)rb_req_submit(q);
}

/* +switch-master from the sentinel: a failover chose another master; go there now rather
 * than at the old one's first READONLY. "name oldip oldport newip newport". */
static void rb_on_switch(redisAsyncContext *c, void *reply, void *privdata)
{
    bus_redis_t *r = privdata;
    redisReply *rep = reply;
    if (!rep || c != r->watch || r->state != RB_UP || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING || strcmp(rep->element[0]->str, "message") ||
        rep->element[2]->type != REDIS_REPLY_STRING)
        return;
    const char *msg = rep->element[2]->str;
    size_t n = strlen(r->sentinel_master);
    if (strncmp(msg, r->sentinel_master, n) || msg[n] != ' ') return;
    char newhost[256] = "";
    int newport = 0;
    if (sscanf(msg + n, " %*s %*d %255s %d", newhost, &newport) != 2) return;
    if (newport == r->target_port && !strcmp(newhost, r->target_host)) return;
    log_info("bus: sentinel switched the master", "{s:s, s:s, s:i}", "master", r->sentinel_master, "host", newhost,
             "port", newport);
    rb_link_fail(r, GW_EDOWN, "failover (+switch-master)");
}

static void rb_sentinel_watch(bus_redis_t *r)
{
    if (r->watch || !r->sentinel_ip[0]) return;
    const bus_url_t *s = &r->sentinels[r->sentinel_i % r->nsentinels];
    r->watch = rb_ctx_open(r, r->sentinel_ip, s->port, r, rb_on_ctx_connect, rb_on_ctx_disconnect);
    if (!r->watch) return;
    if (r->sentinel_password) {
        const char *argv[2] = {"AUTH", r->sentinel_password};
        size_t len[2] = {4, strlen(r->sentinel_password)};
        redisAsyncCommandArgv(r->watch, NULL, NULL, 2, argv, len);
    }
    const char *argv[2] = {"SUBSCRIBE", "+switch-master"};
    size_t len[2] = {9, 14};
    redisAsyncCommandArgv(r->watch, rb_on_switch, r, 2, argv, len);
}

static void rb_maybe_up(bus_redis_t *r)
{
    if ((r->state != RB_CONNECTING && !(r->state == RB_UP && r->degraded)) || !r->nshards) return;
    for (size_t i = 0; i < r->nshards; i++)
        if (!r->shards[i]->cmd_ready || !r->shards[i]->sub_ready) return;
    if (r->state == RB_UP) {       /* a cluster whole again: what its rooms missed is fetched */
        r->degraded = 0;
        r->attempt = 0;
        RB_STAT_SET(r, shards_down, 0);
        log_info("bus: every redis cluster master up", "{s:i}", "masters", (int)r->nshards);
        rb_conns_sync(r);
        rb_heartbeat(r);
        rb_presence_sync_all(r);
        if (r->base.on.status) r->base.on.status(r->base.arg, 1);
        return;
    }
    r->state = RB_UP;
    uv_timer_stop(&r->retry);
    r->attempt = 0;
    if (r->ever_up) RB_STAT_ADD(r, reconnects, 1);
    r->ever_up = 1;
    RB_STAT_SET(r, up, 1);
    log_info("bus: redis link up", "{s:s, s:i, s:i, s:s}", "host", r->shards[0]->ip, "port", r->shards[0]->port,
             "masters", (int)r->nshards, "node", r->base.node);
    r->hb_first = 1;
    if (r->nsentinels && !r->cluster) rb_sentinel_watch(r);
    rb_conns_sync(r);
    rb_heartbeat(r);
    rb_presence_sync_all(r);
    if (r->base.on.status) r->base.on.status(r->base.arg, 1);
}

static uint64_t rb_backoff_ms(bus_redis_t *r);

static void rb_link_fail(bus_redis_t *r, int status, const char *why)
{
    if (r->state != RB_CONNECTING && r->state != RB_UP) return;
    int was_up = r->state == RB_UP;
    RB_STAT_ADD(r, errors[METRICS_BUS_OP_LINK], 1);
    const char *host = r->target_host ? r->target_host : r->url.host;
    int port = r->target_port;
    if (r->cluster) {              /* the seed this try asked */
        host = r->sentinels[r->sentinel_i % r->nsentinels].host;
        port = r->sentinels[r->sentinel_i % r->nsentinels].port;
    }
    log_write(was_up || r->attempt == 0 ? LOG_WARN : LOG_DEBUG, "bus: redis link down", "{s:s, s:s, s:i}", "reason",
              why, "host", host, "port", port);
    if (was_up || r->attempt == 0)     /* as the warning: a link's first failure, not each retry */
        rb_report("error", "redis", "redis link down (%s:%d): %s", host, port, why);
    r->state = RB_IDLE;
    r->fail_status = status;
    r->need_teardown = 1;
    uv_timer_stop(&r->retry);
    rb_kick(r);
    if (was_up) {
        RB_STAT_SET(r, up, 0);
        if (r->base.on.status) r->base.on.status(r->base.arg, 0);
    }
}

static void rb_post_finish(rb_req_t *q, int status);

/* The room's posts can no longer come back on the channel this node subscribed (it left, or
 * the room's slot moved): answered ones are done, the others finish with their answer. */
static void rb_echo_release(bus_redis_t *r, const char *name)
{
    for (rb_list_t *l = r->echo.next, *next; l != &r->echo; l = next) {
        next = l->next;
        rb_req_t *q = rb_container_of(l, rb_req_t, echo);
        if (strcmp(q->room, name)) continue;
        rb_list_del(&q->echo);
        if (q->payload) rb_post_finish(q, 0);
    }
}

/* rb_echo_release for every marked room, unmarked on the way; callbacks may change the rooms,
 * so it starts over after each. */
static void rb_marked_echo_release(bus_redis_t *r)
{
    for (int again = 1; again;) {
        again = 0;
        for (rb_list_t *l = r->rooms.next; l != &r->rooms && !again; l = l->next) {
            rb_room_t *room = rb_container_of(l, rb_room_t, link);
            if (!room->mark) continue;
            room->mark = 0;
            rb_echo_release(r, room->name);
            again = 1;
        }
    }
}

/* Closes sh's connections; the requests it owed fail with fail_status (GW_EDOWN while up). */
static void rb_shard_disconnect(rb_shard_t *sh)
{
    if (sh->r->direct_on == sh) sh->r->direct_on = NULL;
    redis_sub_close(sh->sub);
    sh->sub = NULL;
    sh->cmd_ready = sh->sub_ready = 0;
    sh->ping_sent_ms = 0;
    redisAsyncContext *c = sh->cmd;
    sh->cmd = NULL;
    if (c) redisAsyncFree(c);
}

/* Closes every shard's connections and forgets the shards. */
static void rb_shards_close(bus_redis_t *r)
{
    for (size_t i = 0; i < r->nshards; i++) rb_shard_disconnect(r->shards[i]);
    for (size_t i = 0; i < r->nshards; i++) free(r->shards[i]);
    free(r->shards);
    r->shards = NULL;
    r->nshards = 0;
    for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) rb_container_of(l, rb_room_t, link)->on = NULL;
}

/* While the rest of a cluster serves: the channels of the rooms on sh are off (reads held for
 * them fail, posts waiting for their echo are released), sh's connections go. */
static void rb_shard_drop(bus_redis_t *r, rb_shard_t *sh)
{
    sh->down = 1;                  /* its requests failing now is no news */
    for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) {
        rb_room_t *room = rb_container_of(l, rb_room_t, link);
        room->mark = room->on == sh || rb_room_shard(r, room) == sh;
        room->fence |= room->mark;
        if (room->on != sh) continue;
        room->on = NULL;
        room->subs_pending = 0;
        room->confirmed = 0;
    }
    rb_shard_disconnect(sh);
    for (int again = 1; again;) {  /* callbacks may change both lists: start over after each */
        again = 0;
        for (rb_list_t *l = r->waiting.next; l != &r->waiting && !again; l = l->next) {
            rb_room_t *room = rb_room_get(r, rb_container_of(l, rb_req_t, wait)->room);
            if (room && room->mark && !room->confirmed) {
                rb_waiting_flush(r, room->name, GW_EDOWN);
                again = 1;
            }
        }
    }
    rb_marked_echo_release(r);
}

static void rb_retired_free(bus_redis_t *r)
{
    for (size_t i = 0; i < r->nretired; i++) {
        rb_shard_drop(r, r->retired[i]);
        free(r->retired[i]);
    }
    free(r->retired);
    r->retired = NULL;
    r->nretired = 0;
}

/* A shard failed. On one Redis, or before the link was up, or with every shard gone, the link
 * starts over; in a cluster that is up, only sh goes: its rooms fall back (posts answer
 * GW_EDOWN) and the slot map is read again until it names a live master for its slots. */
static void rb_shard_fail(rb_shard_t *sh, int status, const char *why)
{
    bus_redis_t *r = sh->r;
    if (!r->cluster || r->state != RB_UP) {
        rb_link_fail(r, status, why);
        return;
    }
    if (sh->down) return;
    int was_up = sh->cmd_ready && sh->sub_ready;   /* else a retry that failed again: no news */
    sh->down = sh->need_drop = 1;
    r->degraded = 1;
    size_t down = 0;
    for (size_t i = 0; i < r->nshards; i++) down += r->shards[i]->down != 0;
    RB_STAT_SET(r, shards_down, down);
    RB_STAT_ADD(r, errors[METRICS_BUS_OP_LINK], 1);
    log_write(was_up ? LOG_WARN : LOG_DEBUG, "bus: redis cluster master down", "{s:s, s:s, s:i, s:i}", "reason", why,
              "host", sh->ip, "port", sh->port, "down", (int)down);
    if (was_up) rb_report("error", "redis", "redis cluster master down (%s:%d): %s", sh->ip, sh->port, why);
    if (down == r->nshards) {
        rb_link_fail(r, status, "every cluster master is down");
        return;
    }
    rb_kick(r);                    /* dropped outside hiredis's stack */
    rb_refresh_later(r);
}

/* ---- Cluster: a new slot map while up ---- */

static void rb_refresh_later(bus_redis_t *r)
{
    if (r->state == RB_UP && !r->refreshing && !uv_is_active((uv_handle_t *)&r->retry))
        uv_timer_start(&r->retry, rb_on_retry, rb_backoff_ms(r), 0);
}

/* A redirection to a master not in the map: the requests wait for it, so no backoff (but one
 * read a tick at most while the masters' views converge). */
static void rb_refresh_soon(bus_redis_t *r)
{
    if (r->state != RB_UP || r->refreshing) return;
    uint64_t since = uv_now(r->loop) - r->last_refresh_ms;
    uv_timer_start(&r->retry, rb_on_retry, since >= (uint64_t)r->tick_ms ? 0 : (uint64_t)r->tick_ms - since, 0);
}

/* Moves the bus onto map (from none, on a new try): masters it has up keep their connections,
 * the others are dropped, new ones connect; rooms whose shard changed subscribe on the new one. */
static void rb_shards_remap(bus_redis_t *r, const redis_slots_map_t *map)
{
    rb_shard_t **now = xcalloc(map->nshards, sizeof *now);
    for (size_t i = 0; i < map->nshards; i++) {
        const redis_slots_node_t *m = &map->shards[i].master;
        for (size_t k = 0; k < r->nshards && !now[i]; k++) {
            rb_shard_t *sh = r->shards[k];
            if (sh && !sh->down && sh->port == m->port && !strcmp(sh->ip, m->host)) {
                now[i] = sh;
                r->shards[k] = NULL;
            }
        }
        if (!now[i]) now[i] = rb_shard_new(r, m->host, m->port);
    }
    rb_shard_t **old = r->shards;
    size_t nold = r->nshards;
    r->shards = now;
    r->nshards = map->nshards;
    memcpy(r->slot_shard, map->slot_shard, sizeof map->slot_shard);
    r->home = rb_shard_of(r, RB_KEY_NODES, strlen(RB_KEY_NODES));
    for (size_t k = 0; k < nold; k++) {   /* dropped from the kick: we may be in a reply of theirs */
        if (!old[k]) continue;
        old[k]->down = old[k]->need_drop = 1;
        r->retired = xrealloc(r->retired, (r->nretired + 1) * sizeof *r->retired);
        r->retired[r->nretired++] = old[k];
    }
    free(old);
    if (r->nretired) rb_kick(r);
    for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) {
        rb_room_t *room = rb_container_of(l, rb_room_t, link);
        rb_shard_t *sh = rb_room_shard(r, room);
        if (!room->wanted || room->on == sh || !sh) continue;
        if (room->on && room->on->sub)
            (void)redis_sub_unsubscribe(room->on->sub, r->cluster, room->chan, strlen(room->chan));
        room->on = NULL;
        room->subs_pending = 0;
        room->confirmed = 0;
        room->mark = 1;
        if (sh->cmd) rb_room_sub_send(r, room);   /* a new shard subscribes when it opens */
    }
    rb_marked_echo_release(r);
    rb_direct_subscribe(r);        /* a new home subscribes when it opens */
    rb_shards_open(r);
    rb_maybe_up(r);
}

static void rb_done_refresh(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    r->refreshing = 0;
    redis_slots_map_t map = {0};
    char why[256] = "";
    const char *bad = status ? "no answer" : NULL;
    if (!bad && redis_slots_map_parse(rep, q->sent_to->ip, &map, why, sizeof why) < 0) bad = why;
    if (!bad) (void)rb_map_check(&map, &bad);
    rb_req_free(q);
    if (r->state == RB_UP) {
        if (bad) {
            log_debug("bus: cluster slot map not usable yet", "{s:s}", "reason", bad);
            rb_refresh_later(r);
        } else {
            rb_shards_remap(r, &map);
        }
    }
    redis_slots_map_free(&map);
}

/* CLUSTER SLOTS on sh when it is a master of the map that is up. 0, or GW_EDOWN. */
static int rb_refresh_ask(bus_redis_t *r, rb_shard_t *sh)
{
    size_t i = 0;
    while (i < r->nshards && r->shards[i] != sh) i++;
    if (i == r->nshards || sh->down || !sh->cmd_ready) return GW_EDOWN;
    rb_req_t *q = rb_req_new(r, -1, rb_done_refresh);
    q->to = sh;
    rb_req_str(q, "CLUSTER");
    rb_req_str(q, "SLOTS");
    if (rb_req_submit(q) < 0) return GW_EDOWN;
    r->refreshing = 1;
    r->last_refresh_ms = uv_now(r->loop);
    return 0;
}

/* The slot map again, from the master that last redirected to one not in the map (it knows the
 * new one), else from any that is up; none: the link starts over from the seeds. */
static void rb_cluster_refresh(bus_redis_t *r)
{
    rb_shard_t *first = r->refresh_from;
    r->refresh_from = NULL;
    if (first && rb_refresh_ask(r, first) == 0) return;
    for (size_t i = 0; i < r->nshards; i++)
        if (rb_refresh_ask(r, r->shards[i]) == 0) return;
    rb_link_fail(r, GW_EDOWN, "no cluster master answers");
}

/* Drops every connection; every request they owed fails with fail_status. */
static void rb_link_teardown(bus_redis_t *r)
{
    redisAsyncContext *sent = r->sent, *watch = r->watch;
    r->sent = r->watch = NULL;
    if (sent) redisAsyncFree(sent);
    if (watch) redisAsyncFree(watch);
    rb_shards_close(r);
    rb_retired_free(r);
    for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) {
        rb_room_t *room = rb_container_of(l, rb_room_t, link);
        room->fence = 1;
        room->subs_pending = 0;
        room->confirmed = 0;
    }
    rb_waiting_flush(r, NULL, r->fail_status ? r->fail_status : GW_EDOWN);
    rb_again_flush(r, r->fail_status ? r->fail_status : GW_EDOWN);
    /* posts that Redis did take but whose own message never came back: they happened */
    while (!rb_list_empty(&r->echo)) rb_post_finish(rb_container_of(r->echo.next, rb_req_t, echo), 0);
    for (rb_list_t *l = r->rooms.next, *next; l != &r->rooms; l = next) {
        next = l->next;
        rb_room_release(r, rb_container_of(l, rb_room_t, link));
    }
}

static uint64_t rb_backoff_ms(bus_redis_t *r)
{
    unsigned shift = r->attempt < 20 ? r->attempt : 20;
    uint64_t d = (uint64_t)r->backoff_min_ms << shift;
    if (d > (uint64_t)r->backoff_max_ms) d = (uint64_t)r->backoff_max_ms;
    uint32_t rnd;
    if (RAND_bytes((unsigned char *)&rnd, sizeof rnd) != 1) rnd = 0;
    r->attempt++;
    return d / 2 + (d / 2 ? rnd % (d / 2 + 1) : 0);
}

static void rb_close_step(bus_redis_t *r);

static void rb_on_kick(uv_timer_t *t)
{
    bus_redis_t *r = t->data;
    if (r->state == RB_CLOSING) {
        rb_close_step(r);
        return;
    }
    if (r->state == RB_UP) {       /* a cluster's failed shards, and those a new map let go */
        for (size_t i = 0; i < r->nshards; i++)
            if (r->shards[i]->need_drop) {
                r->shards[i]->need_drop = 0;
                rb_shard_drop(r, r->shards[i]);
            }
        rb_retired_free(r);
        return;
    }
    if (r->state != RB_IDLE || !r->need_teardown) return;
    r->need_teardown = 0;
    rb_link_teardown(r);
    if (r->state == RB_CLOSING) {  /* bus_free from a callback during teardown */
        rb_close_step(r);
        return;
    }
    if (r->state == RB_IDLE) uv_timer_start(&r->retry, rb_on_retry, rb_backoff_ms(r), 0);
}

/* The retry timer: a reconnect when idle, the connect timeout while connecting, the
 * goodbye's bound while closing. */
static void rb_on_retry(uv_timer_t *t)
{
    bus_redis_t *r = t->data;
    switch (r->state) {
    case RB_IDLE:
        if (r->gai_busy) {         /* the last try's lookup is still running */
            uv_timer_start(&r->retry, rb_on_retry, 50, 0);
            return;
        }
        rb_link_start(r);
        break;
    case RB_CONNECTING:
        if (r->asking) r->sentinel_i++;   /* this sentinel or seed never answered: the next try asks another */
        rb_link_fail(r, GW_ETIMEDOUT, "connect timeout");
        break;
    case RB_UP:                    /* a cluster: read the slot map again */
        rb_cluster_refresh(r);
        break;
    case RB_CLOSING:
        rb_shards_close(r);
        rb_close_maybe_finish(r);
        break;
    }
}

/* ---- heartbeat, reaper, watchdogs ---- */

static void rb_done_heartbeat(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    rb_req_free(q);
    if (status || r->state != RB_UP) return;
    /* nil: our key had expired (a stall longer than the TTL, or Redis lost it), so other
     * nodes may have reaped our members: register them again */
    if (rep->type == REDIS_REPLY_NIL && !r->hb_first) {
        log_warn("bus: heartbeat had expired; re-registering presence", NULL);
        rb_presence_sync_all(r);
    }
    r->hb_first = 0;
}

static void rb_heartbeat(bus_redis_t *r)
{
    uint64_t now = uv_now(r->loop);
    r->last_hb_ms = now;
    rb_req_t *q = rb_req_new(r, -1, rb_done_heartbeat);
    q->op = METRICS_BUS_OP_HEARTBEAT;
    rb_req_str(q, "SET");
    rb_req_str(q, r->key_node);
    rb_req_fmt(q, "%" PRIu64, now);
    rb_req_str(q, "PX");
    rb_req_fmt(q, "%ld", r->ttl_ms);
    rb_req_str(q, "GET");
    (void)rb_req_submit(q);
    q = rb_req_script(r, RB_ALIVE, 2, rb_done_free);
    rb_req_str(q, RB_KEY_NODES);
    rb_req_str(q, r->key_conns);
    rb_req_str(q, r->base.node);
    rb_req_fmt(q, "%ld", r->ttl_ms);
    (void)rb_req_submit(q);
    for (size_t i = 0; i < r->nshards; i++) {   /* the subscribers' probes */
        rb_shard_t *sh = r->shards[i];
        if (!sh->ping_sent_ms && sh->sub && redis_sub_ping(sh->sub) == 0) sh->ping_sent_ms = now ? now : 1;
    }
}

/* Lists (and so reaps) every wanted room: dead nodes' members leave within the TTL plus
 * one heartbeat period. */
static void rb_reap(bus_redis_t *r)
{
    for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) {
        rb_room_t *room = rb_container_of(l, rb_room_t, link);
        if (!room->wanted) continue;
        rb_req_t *q = rb_req_script(r, RB_PLIST, RB_PRESENCE_KEYS, rb_done_free);
        rb_req_presence_keys(q, room->name);
        rb_req_str(q, room->chan);
        rb_req_str(q, r->base.node);
        rb_req_fmt(q, "%ld", room->nmembers ? r->room_ttl_ms : 0);   /* our members keep it alive */
        rb_req_fmt(q, "%ld", room->nmembers ? r->ttl_ms : 0);
        (void)rb_req_submit(q);
    }
}

/* Whether a read has waited for its room's SUBSCRIBE longer than command_timeout_ms. */
static int rb_waiting_late(const bus_redis_t *r, uint64_t now)
{
    if (rb_list_empty(&r->waiting)) return 0;
    const rb_req_t *q = rb_container_of(r->waiting.next, rb_req_t, wait);
    return now - q->sent_ms > (uint64_t)r->command_timeout_ms;
}

static void rb_on_tick(uv_timer_t *t)
{
    bus_redis_t *r = t->data;
    uint64_t now = uv_now(r->loop), last = r->last_tick_ms;
    r->last_tick_ms = now;
    if (r->state != RB_UP && r->state != RB_CONNECTING) return;
    /* The loop itself stalled (timers run before I/O is polled): answers may be waiting in
     * the socket. Judge Redis on the next tick, after a poll. */
    if (now - last > (uint64_t)(2 * r->tick_ms + 50)) return;
    if (!rb_list_empty(&r->pending)) {
        rb_req_t *oldest = rb_container_of(r->pending.next, rb_req_t, pending);
        if (now - oldest->sent_ms > (uint64_t)r->command_timeout_ms) {
            rb_shard_fail(oldest->sent_to, GW_ETIMEDOUT, "command timeout");
            return;
        }
    }
    if (r->state != RB_UP) return;
    rb_again_flush(r, 0);
    if (rb_waiting_late(r, now)) {
        rb_link_fail(r, GW_ETIMEDOUT, "subscribe timeout");
        return;
    }
    for (size_t i = 0; i < r->nshards; i++)
        if (r->shards[i]->ping_sent_ms && now - r->shards[i]->ping_sent_ms > (uint64_t)r->command_timeout_ms) {
            rb_shard_fail(r->shards[i], GW_ETIMEDOUT, "subscriber connection silent");
            return;
        }
    if (now - r->last_hb_ms >= (uint64_t)r->hb_ms) {
        rb_heartbeat(r);
        rb_reap(r);
    }
}

/* ---- the subscriber connection ---- */

typedef struct {
    char kind;
    const char *origin, *token, *id, *payload;
    size_t origin_len, token_len, id_len, len;
} rb_env_t;

/* "kind\norigin\ntoken\nid\npayload" into e (pointing into p). 0, or GW_EINVAL when p is not
 * one. */
static int rb_env_parse(const char *p, size_t n, rb_env_t *e)
{
    if (n < 2 || p[1] != '\n') return GW_EINVAL;
    e->kind = p[0];
    const char *s = p + 2, *end = p + n;
    const char *f[3];
    size_t fl[3];
    for (int i = 0; i < 3; i++) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        if (!nl) return GW_EINVAL;
        f[i] = s;
        fl[i] = (size_t)(nl - s);
        s = nl + 1;
    }
    e->origin = f[0], e->origin_len = fl[0];
    e->token = f[1], e->token_len = fl[1];
    e->id = f[2], e->id_len = fl[2];
    e->payload = s, e->len = (size_t)(end - s);
    return 0;
}

/* Our own post came back on the channel: this is its place in the room's order. */
static void rb_post_echo(bus_redis_t *r, const rb_env_t *e, const proto_id_t *id)
{
    uint64_t token = 0;
    for (size_t i = 0; i < e->token_len; i++) token = token * 10 + (uint64_t)(e->token[i] - '0');
    for (rb_list_t *l = r->echo.next; l != &r->echo; l = l->next) {
        rb_req_t *q = rb_container_of(l, rb_req_t, echo);
        if (q->token != token) continue;
        if (!q->payload) {
            q->id = *id;
            q->payload = sbuf_from(e->payload, e->len);
        }
        rb_post_finish(q, 0);
        return;
    }
}

/* A member's JSON {"id","name","muted"?} into m (borrowing from *root, which the caller
 * frees). 0, or GW_EINVAL (and *root NULL) when id or name is missing or not a string. */
static int rb_member_parse(const char *p, size_t n, json_t **root, bus_member_t *m)
{
    *root = json_loadb(p, n, 0, NULL);
    json_t *id = json_object_get(*root, "id"), *name = json_object_get(*root, "name");
    if (!json_is_string(id) || !json_is_string(name)) {
        json_decref(*root);
        *root = NULL;
        return GW_EINVAL;
    }
    m->id = json_string_value(id);
    m->name = json_string_value(name);
    m->muted = json_is_true(json_object_get(*root, "muted"));
    return 0;
}

static void rb_sub_dispatch(bus_redis_t *r, const char *chan, size_t chan_len, const char *msg, size_t len)
{
    rb_env_t e;
    if (rb_env_parse(msg, len, &e) < 0) return;
    int self = rb_is_self(r, e.origin, e.origin_len);
    char origin[BUS_NODE_MAX];
    if (e.origin_len >= sizeof origin) return;
    memcpy(origin, e.origin, e.origin_len);
    origin[e.origin_len] = '\0';
    const bus_handlers_t *on = &r->base.on;

    const char *direct = rb_chan_direct(r);
    if (chan_len == strlen(direct) && !memcmp(chan, direct, chan_len)) {
        if (self || e.kind != 'd' || !on->direct) return;
        char *to = xstrndup(e.id, e.id_len);
        sbuf_t *p = sbuf_from(e.payload, e.len);
        RB_STAT_ADD(r, received, 1);
        on->direct(r->base.arg, to, p, origin);
        sbuf_unref(p);
        free(to);
        return;
    }
    char name[RB_ROOM_NAME_MAX];
    if (rb_chan_room(r, chan, chan_len, name, sizeof name) < 0) return;
    rb_room_t *room = rb_room_get(r, name);
    if (!room || !room->wanted) return;
    proto_id_t id;
    if (e.kind == 'm') {
        if (proto_id_parse(e.id, e.id_len, &id) < 0) return;
        room->seen = id;           /* the channel's order: newest last */
    }
    if (self) {                    /* the node id guard */
        if (e.kind == 'm') rb_post_echo(r, &e, &id);
        return;
    }
    switch (e.kind) {
    case 'm':
    case 'p': {
        RB_STAT_ADD(r, received, 1);
        if (!on->room_message) return;
        sbuf_t *p = sbuf_from(e.payload, e.len);
        on->room_message(r->base.arg, name, p, origin, e.kind == 'm' ? &id : NULL);
        sbuf_unref(p);
        break;
    }
    case 'j':
    case 'l':
    case 'u': {
        json_t *root;
        bus_member_t m;
        if (rb_member_parse(e.payload, e.len, &root, &m) < 0) return;
        m.node = origin;
        RB_STAT_ADD(r, received, 1);
        int ev = e.kind == 'j' ? BUS_PRESENCE_JOIN : e.kind == 'l' ? BUS_PRESENCE_LEAVE : BUS_PRESENCE_UPDATE;
        if (on->presence) on->presence(r->base.arg, name, ev, &m);
        json_decref(root);
        break;
    }
    default:
        break;
    }
}

/* A subscription confirmed or ended. Redis ends one by itself when the channel's slot moved
 * to another shard (a failover, a resharding): the slot map is read again, the room subscribes
 * on its new owner, and the rooms' gaps are filled as after any reconnect. */
static void rb_sub_subscription(bus_redis_t *r, rb_shard_t *sh, int on, const char *chan, size_t chan_len)
{
    char name[RB_ROOM_NAME_MAX];
    if (rb_chan_room(r, chan, chan_len, name, sizeof name) < 0) {
        const char *direct = rb_chan_direct(r);
        if (!on && r->state == RB_UP && sh == r->direct_on && chan_len == strlen(direct) &&
            !memcmp(chan, direct, chan_len)) {   /* its slot moved: on the new home after the map */
            r->direct_on = NULL;
            r->degraded = 1;
            rb_refresh_later(r);
        }
        return;
    }
    rb_room_t *room = rb_room_get(r, name);
    if (!room) return;
    if (!on) {
        int moved = room->wanted && room->confirmed && !room->subs_pending;
        room->confirmed = 0;
        if (moved && r->state == RB_UP) {   /* resubscribed on the new owner (rb_shards_remap) */
            room->on = NULL;
            r->degraded = 1;
            rb_refresh_later(r);
            rb_echo_release(r, name);
        }
        return;
    }
    if (room->subs_pending) room->subs_pending--;
    if (room->wanted && !room->subs_pending) {
        room->confirmed = 1;
        rb_waiting_flush(r, room->name, 0);
    }
    rb_room_release(r, room);
}

/* ---- operations ---- */

static int rb_room_subscribe(bus_t *b, const char *name)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (!rb_alive(r)) return GW_EDOWN;
    rb_room_t *room = rb_room_open(r, name);
    if (room->wanted) return 0;
    room->wanted = 1;
    if (r->state == RB_CONNECTING || r->state == RB_UP) rb_room_sub_send(r, room);
    return 0;
}

static int rb_room_unsubscribe(bus_t *b, const char *name)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (!rb_alive(r)) return GW_EDOWN;
    rb_room_t *room = rb_room_get(r, name);
    if (!room || !room->wanted) return 0;
    room->wanted = 0;
    room->confirmed = 0;
    rb_waiting_flush(r, name, 0);
    if (room->on && room->on->sub)
        (void)redis_sub_unsubscribe(room->on->sub, r->cluster, room->chan, strlen(room->chan));
    room->on = NULL;
    rb_echo_release(r, name);
    rb_room_release(r, room);
    return 0;
}

static void rb_done_published(rb_req_t *q, redisReply *rep, int status)
{
    if (!status) RB_STAT_ADD(q->r, published, 1);
    rb_req_free(q);
}

static int rb_envelope_publish(bus_redis_t *r, const char *chan, char kind, const char *id, const void *payload,
                               size_t len)
{
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_new(r, -1, rb_done_published);
    q->op = METRICS_BUS_OP_PUBLISH;
    rb_req_str(q, r->cluster ? "SPUBLISH" : "PUBLISH");
    rb_req_str(q, chan);
    buf_t env;
    buf_init(&env);
    buf_printf(&env, "%c\n%s\n\n%s\n", kind, r->base.node, id);
    buf_append(&env, payload, len);
    rb_req_arg(q, env.data, env.len);
    buf_free(&env);
    return rb_req_submit(q);
}

static int rb_room_publish(bus_t *b, const char *room, const void *payload, size_t len)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (r->state != RB_UP) return GW_EDOWN;
    char *chan = rb_chan(r, room);
    int rc = rb_envelope_publish(r, chan, 'p', "", payload, len);
    free(chan);
    return rc;
}

static int rb_direct_publish(bus_t *b, const char *to, const void *payload, size_t len)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (strchr(to, '\n')) return GW_EINVAL;
    return rb_envelope_publish(r, rb_chan_direct(r), 'd', to, payload, len);
}

#define RB_POST_HEAD 10            /* argv index of the payload's head (see rb_room_post) */

/* Ends a post: the callback (unless closing), then the request once Redis no longer owes
 * its answer. */
static void rb_post_finish(rb_req_t *q, int status)
{
    bus_redis_t *r = q->r;
    rb_list_del(&q->echo);
    if (!q->completed) {
        q->completed = 1;
        if (rb_alive(r) && q->cb.post)
            q->cb.post(q->arg, status, status ? NULL : &q->id, status ? NULL : q->payload);
    }
    if (!rb_list_linked(&q->pending)) rb_req_free(q);
}

static void rb_done_post(rb_req_t *q, redisReply *rep, int status)
{
    if (!status) RB_STAT_ADD(q->r, published, 1);
    if (q->completed) {            /* its own message came back first */
        rb_req_free(q);
        return;
    }
    if (!status && (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
                    rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_INTEGER ||
                    rep->element[0]->len >= sizeof q->id.epoch))
        status = GW_EREPLY;
    if (status) {
        rb_post_finish(q, status);
        return;
    }
    memcpy(q->id.epoch, rep->element[0]->str, rep->element[0]->len);
    q->id.epoch[rep->element[0]->len] = '\0';
    q->id.seq = (uint64_t)rep->element[1]->integer;
    q->payload = proto_msg_number(q->argv[RB_POST_HEAD], q->argvlen[RB_POST_HEAD], q->argv[RB_POST_HEAD + 1],
                                    q->argvlen[RB_POST_HEAD + 1], &q->id);   /* as the script did */
    rb_room_t *room = rb_room_get(q->r, q->room);
    if (room && (strcmp(room->seen.epoch, q->id.epoch) || q->id.seq > room->seen.seq)) room->seen = q->id;
    if (rb_list_linked(&q->echo) && q->r->state == RB_UP) return;   /* wait for its place in the order */
    rb_post_finish(q, 0);
}

static int rb_room_post(bus_t *b, const char *name, const void *payload, size_t len, size_t id_at,
                        bus_post_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (id_at > len) return GW_EINVAL;
    if (r->state != RB_UP) return GW_EDOWN;

    rb_req_t *q = rb_req_script(r, RB_POST, 4, rb_done_post);
    rb_req_history_keys(q, name);
    rb_req_key(q, name, "presence");
    char *chan = rb_chan(r, name);
    rb_req_str(q, chan);
    free(chan);
    rb_req_str(q, r->base.node);
    q->token = ++r->next_token;
    rb_req_fmt(q, "%" PRIu64, q->token);
    rb_req_arg(q, payload, id_at);                                      /* RB_POST_HEAD */
    rb_req_arg(q, (const char *)payload + id_at, len - id_at);          /* the tail */
    rb_req_fmt(q, "%ld", r->history_size);
    char epoch[13];
    rb_req_str(q, hex_random(epoch, 6));
    rb_req_fmt(q, "%ld", r->room_ttl_ms);

    q->room = xstrdup(name);
    q->cb.post = cb;
    q->arg = arg;
    if (rb_req_submit(q) < 0) return GW_EDOWN;
    rb_room_t *room = rb_room_get(r, name);
    if (room && room->confirmed) rb_list_push(&r->echo, &q->echo);
    return 0;
}

/* presence */

static void rb_done_presence(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    if (status && rb_alive(r)) rb_room_open(r, q->room)->dirty = 1;   /* sync on the next up */
    rb_req_free(q);
}

static void rb_presence_sync(bus_redis_t *r, rb_room_t *room, int leave_all)
{
    rb_req_t *q = rb_req_script(r, RB_PSYNC, RB_PRESENCE_KEYS, rb_done_presence);
    rb_req_presence_keys(q, room->name);
    rb_req_str(q, room->chan);
    rb_req_str(q, r->base.node);
    rb_req_fmt(q, "%ld", r->room_ttl_ms);
    rb_req_fmt(q, "%ld", leave_all ? 0 : r->ttl_ms);
    for (size_t i = 0; !leave_all && i < room->nmembers; i++) {
        rb_req_str(q, room->members[i].id);
        rb_req_str(q, room->members[i].json);
    }
    q->room = xstrdup(room->name);
    room->dirty = 0;
    if (rb_req_submit(q) < 0) room->dirty = 1;
}

static void rb_presence_sync_all(bus_redis_t *r)
{
    for (rb_list_t *l = r->rooms.next, *next; l != &r->rooms; l = next) {
        next = l->next;
        rb_room_t *room = rb_container_of(l, rb_room_t, link);
        if (room->nmembers || room->dirty) rb_presence_sync(r, room, 0);
        rb_room_release(r, room);
    }
}

static void rb_done_join(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    int admitted = 1;
    if (!status && rep->type != REDIS_REPLY_INTEGER) status = GW_EREPLY;
    if (!status && rep->integer < 0) {   /* full: forget it, Redis never had it */
        admitted = 0;
        rb_room_t *room = rb_room_get(r, q->room);
        rb_member_t *mm = room ? rb_room_member(room, q->argv[q->argc - 5]) : NULL;
        if (mm) {
            free(mm->id);
            free(mm->json);
            size_t i = (size_t)(mm - room->members);
            memmove(mm, mm + 1, (room->nmembers - i - 1) * sizeof *mm);
            room->nmembers--;
        }
    } else if (status && rb_alive(r)) {
        rb_room_open(r, q->room)->dirty = 1;   /* sync on the next up */
    }
    bus_join_cb cb = q->cb.join;
    void *arg = q->arg;
    char *name = q->room;
    q->room = NULL;
    rb_req_free(q);
    if (rb_alive(r) && cb) cb(arg, status, admitted);
    rb_room_t *room = rb_alive(r) ? rb_room_get(r, name) : NULL;
    if (room) rb_room_release(r, room);
    free(name);
}

static int rb_presence_put(bus_redis_t *r, const char *name, const bus_member_t *m, long max, bus_join_cb cb,
                           void *arg);

static int rb_presence_add(bus_t *b, const char *name, const bus_member_t *m)
{
    return rb_presence_put((bus_redis_t *)b, name, m, 0, NULL, NULL);
}

static int rb_presence_join(bus_t *b, const char *name, const bus_member_t *m, long max, bus_join_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (r->state != RB_UP) return GW_EDOWN;
    return rb_presence_put(r, name, m, max > 0 ? max : 0, cb, arg);
}

/* Adds m to the mirror and, when up, to the shared presence (capped at max with cb: a join). */
static int rb_presence_put(bus_redis_t *r, const char *name, const bus_member_t *m, long max, bus_join_cb cb,
                           void *arg)
{
    if (!rb_alive(r)) return GW_EDOWN;
    if (!m || !m->id || !m->name) return GW_EINVAL;
    json_t *o = json_pack("{s:s, s:s, s:b}", "id", m->id, "name", m->name, "muted", m->muted);
    char *json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!json) return GW_EINVAL;
    rb_room_t *room = rb_room_open(r, name);
    rb_member_t *mm = rb_room_member(room, m->id);
    if (mm) {
        free(mm->json);
        mm->json = xstrdup(json);
    } else {
        if (room->nmembers == room->cap) {
            room->cap = room->cap ? room->cap * 2 : 4;
            room->members = xrealloc(room->members, room->cap * sizeof *room->members);
        }
        room->members[room->nmembers++] = (rb_member_t){xstrdup(m->id), xstrdup(json)};
    }
    if (r->state == RB_UP) {
        rb_req_t *q = rb_req_script(r, RB_PADD, RB_PRESENCE_KEYS, cb ? rb_done_join : rb_done_presence);
        rb_req_presence_keys(q, name);
        rb_req_str(q, room->chan);
        rb_req_str(q, r->base.node);
        rb_req_str(q, m->id);                     /* argc - 5: rb_done_join finds it there */
        rb_req_str(q, json);
        rb_req_fmt(q, "%ld", r->room_ttl_ms);
        rb_req_fmt(q, "%ld", max);
        rb_req_fmt(q, "%ld", r->ttl_ms);
        q->room = xstrdup(name);
        q->cb.join = cb;
        q->arg = arg;
        if (rb_req_submit(q) < 0) {
            room->dirty = 1;
            free(json);
            return cb ? GW_EDOWN : 0;    /* a join that cannot be asked: the caller falls back */
        }
    } else {
        room->dirty = 1;
    }
    free(json);
    return 0;
}

static int rb_presence_remove(bus_t *b, const char *name, const char *member_id)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (!rb_alive(r)) return GW_EDOWN;
    rb_room_t *room = rb_room_get(r, name);
    if (!room) return 0;
    rb_member_t *mm = rb_room_member(room, member_id);
    if (!mm) return 0;
    free(mm->id);
    free(mm->json);
    size_t i = (size_t)(mm - room->members);
    memmove(mm, mm + 1, (room->nmembers - i - 1) * sizeof *mm);
    room->nmembers--;
    if (r->state == RB_UP) {
        rb_req_t *q = rb_req_script(r, RB_PREMOVE, RB_PRESENCE_KEYS, rb_done_presence);
        rb_req_presence_keys(q, name);
        rb_req_str(q, room->chan);
        rb_req_str(q, r->base.node);
        rb_req_str(q, member_id);
        rb_req_fmt(q, "%ld", r->room_ttl_ms);
        q->room = xstrdup(name);
        if (rb_req_submit(q) < 0) room->dirty = 1;
    } else {
        room->dirty = 1;
    }
    rb_room_release(r, room);
    return 0;
}

static void rb_done_list(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    if (!status && rep->type != REDIS_REPLY_ARRAY) status = GW_EREPLY;
    size_t n = 0, cap = status ? 0 : rep->elements;
    bus_member_t *ms = xcalloc(cap + 1, sizeof *ms);
    json_t **roots = xcalloc(cap + 1, sizeof *roots);
    char **nodes = xcalloc(cap + 1, sizeof *nodes);
    for (size_t i = 0; i < cap; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        const char *nl = memchr(e->str, '\n', e->len);
        if (!nl) continue;
        if (rb_member_parse(nl + 1, e->len - (size_t)(nl + 1 - e->str), &roots[n], &ms[n]) < 0) continue;
        nodes[n] = xstrndup(e->str, (size_t)(nl - e->str));
        ms[n].node = nodes[n];
        n++;
    }
    if (rb_alive(r) && q->cb.members) q->cb.members(q->arg, status, status ? NULL : ms, n);
    for (size_t i = 0; i < n; i++) {
        json_decref(roots[i]);
        free(nodes[i]);
    }
    free(ms);
    free(roots);
    free(nodes);
    rb_req_free(q);
}

static int rb_presence_list(bus_t *b, const char *name, bus_members_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_script(r, RB_PLIST, RB_PRESENCE_KEYS, rb_done_list);
    rb_req_presence_keys(q, name);
    char *chan = rb_chan(r, name);
    rb_req_str(q, chan);
    free(chan);
    rb_req_str(q, r->base.node);
    rb_req_str(q, "0");            /* a look: the API's or a snapshot's; joins touch through presence */
    rb_req_str(q, "0");
    q->cb.members = cb;
    q->arg = arg;
    if (rb_req_submit_read(q, name) < 0) return GW_EDOWN;
    return 0;
}

/* history */

static void rb_done_range(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    bus_history_t h = {0};
    if (!status && (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 || rep->elements % 2 != 1 ||
                    rep->element[0]->type != REDIS_REPLY_STRING || rep->element[0]->len >= sizeof h.last.epoch ||
                    rep->element[1]->type != REDIS_REPLY_INTEGER || rep->element[2]->type != REDIS_REPLY_INTEGER))
        status = GW_EREPLY;
    size_t cap = status ? 0 : (rep->elements - 3) / 2;
    sbuf_t **msgs = xcalloc(cap + 1, sizeof *msgs);
    uint64_t *seqs = xcalloc(cap + 1, sizeof *seqs);
    if (!status) {
        memcpy(h.last.epoch, rep->element[0]->str, rep->element[0]->len);
        h.last.seq = (uint64_t)rep->element[1]->integer;
        h.gap = rep->element[2]->integer != 0;
        for (size_t i = 0; i < cap; i++) {
            const redisReply *s = rep->element[3 + 2 * i], *p = rep->element[4 + 2 * i];
            if (s->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_STRING) continue;
            seqs[h.n] = strtoull(s->str, NULL, 10);
            msgs[h.n++] = sbuf_from(p->str, p->len);
        }
        h.msgs = msgs;
        h.seqs = seqs;
    }
    if (rb_alive(r) && q->cb.history) q->cb.history(q->arg, status, status ? NULL : &h);
    for (size_t i = 0; i < h.n; i++) sbuf_unref(msgs[i]);
    free(msgs);
    free(seqs);
    rb_req_free(q);
}

static int rb_history_range(bus_t *b, const char *name, const proto_id_t *since, bus_history_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    proto_id_t sid = {"", 0};
    if (since) sid = *since;
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_script(r, RB_RANGE, 3, rb_done_range);
    rb_req_history_keys(q, name);
    rb_req_str(q, sid.epoch);
    rb_req_fmt(q, "%" PRIu64, sid.seq);
    rb_req_fmt(q, "%ld", r->history_size);
    q->cb.history = cb;
    q->arg = arg;
    if (rb_req_submit_read(q, name) < 0) return GW_EDOWN;
    return 0;
}

/* limits */

static void rb_done_limit(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    if (!status && (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
                    rep->element[0]->type != REDIS_REPLY_INTEGER || rep->element[1]->type != REDIS_REPLY_STRING))
        status = GW_EREPLY;
    int allowed = status ? 0 : rep->element[0]->integer != 0;
    double tokens = status ? 0 : strtod(rep->element[1]->str, NULL);
    if (rb_alive(r) && q->cb.limit) q->cb.limit(q->arg, status, allowed, tokens);
    rb_req_free(q);
}

static int rb_limit_take(bus_t *b, const char *key, double rate, double burst, bus_limit_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (!(rate > 0) || !(burst >= 1) || !isfinite(rate) || !isfinite(burst)) return GW_EINVAL;
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_script(r, RB_LIMIT, 1, rb_done_limit);
    char *k = rb_strcat(RB_KEY_LIMIT, key);
    rb_req_str(q, k);
    free(k);
    rb_req_fmt(q, "%.17g", rate);
    rb_req_fmt(q, "%.17g", burst);
    rb_req_str(q, "1");
    q->cb.limit = cb;
    q->arg = arg;
    if (rb_req_submit(q) < 0) return GW_EDOWN;
    return 0;
}

/* connections and direct frames */

static int rb_conn_add(bus_t *b, const char *id)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (!rb_alive(r)) return GW_EDOWN;
    if (map_get(&r->conns, id)) return 0;
    map_set(&r->conns, id, (void *)1);
    if (r->state != RB_UP) return 0;  /* rb_conns_sync on the way up */
    rb_req_t *q = rb_req_new(r, -1, rb_done_free);
    q->op = METRICS_BUS_OP_PRESENCE;
    rb_req_str(q, "HSET");
    rb_req_str(q, r->key_conns);
    rb_req_str(q, id);
    rb_req_str(q, "1");
    /* on the socket now, before the welcome the caller sends next: a dm from a client that
     * heard of this connection must find it registered */
    if (rb_req_submit(q) == 0 && r->home < r->nshards && r->shards[r->home]->cmd)
        redisAsyncHandleWrite(r->shards[r->home]->cmd);
    return 0;
}

static int rb_conn_remove(bus_t *b, const char *id)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (!rb_alive(r)) return GW_EDOWN;
    if (!map_get(&r->conns, id)) return 0;
    map_del(&r->conns, id);
    if (r->state != RB_UP) return 0;
    rb_req_t *q = rb_req_new(r, -1, rb_done_free);
    q->op = METRICS_BUS_OP_PRESENCE;
    rb_req_str(q, "HDEL");
    rb_req_str(q, r->key_conns);
    rb_req_str(q, id);
    (void)rb_req_submit(q);
    return 0;
}

static void rb_done_direct(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    if (!status && rep->type != REDIS_REPLY_INTEGER) status = GW_EREPLY;
    int delivered = !status && rep->integer == 1;
    if (delivered) RB_STAT_ADD(r, published, 1);
    if (rb_alive(r) && q->cb.sent) q->cb.sent(q->arg, status, delivered);
    rb_req_free(q);
}

static int rb_direct_send(bus_t *b, const char *to, const void *payload, size_t len, bus_sent_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (strchr(to, '\n')) return GW_EINVAL;
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_script(r, RB_DIRECT, 1, rb_done_direct);
    rb_req_str(q, RB_KEY_NODES);
    rb_req_str(q, RB_KEY_CONNS);
    rb_req_str(q, to);
    rb_req_str(q, rb_chan_direct(r));
    buf_t env;
    buf_init(&env);
    buf_printf(&env, "d\n%s\n\n%s\n", r->base.node, to);
    buf_append(&env, payload, len);
    rb_req_arg(q, env.data, env.len);
    buf_free(&env);
    q->cb.sent = cb;
    q->arg = arg;
    return rb_req_submit(q);
}

/* node reports (the cluster-wide API) */

static int rb_node_report(bus_t *b, const char *report, size_t len)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_script(r, RB_REPORT, 2, rb_done_free);
    rb_req_str(q, RB_KEY_NODES);
    char *k = rb_strcat(RB_KEY_REPORT, r->base.node);
    rb_req_str(q, k);
    free(k);
    rb_req_str(q, r->base.node);
    rb_req_arg(q, report, len);
    rb_req_fmt(q, "%ld", r->ttl_ms);
    return rb_req_submit(q);
}

static void rb_done_reports(rb_req_t *q, redisReply *rep, int status)
{
    bus_redis_t *r = q->r;
    if (!status && rep->type != REDIS_REPLY_ARRAY) status = GW_EREPLY;
    size_t n = 0, cap = status ? 0 : rep->elements;
    const char **items = xcalloc(cap + 1, sizeof *items);
    size_t *lens = xcalloc(cap + 1, sizeof *lens);
    for (size_t i = 0; i < cap; i++) {
        if (rep->element[i]->type != REDIS_REPLY_STRING) continue;
        items[n] = rep->element[i]->str;
        lens[n++] = rep->element[i]->len;
    }
    if (rb_alive(r) && q->cb.strings) q->cb.strings(q->arg, status, status ? NULL : items, lens, n);
    free(items);
    free(lens);
    rb_req_free(q);
}

static int rb_node_reports(bus_t *b, bus_strings_cb cb, void *arg)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (r->state != RB_UP) return GW_EDOWN;
    rb_req_t *q = rb_req_script(r, RB_REPORTS, 1, rb_done_reports);
    rb_req_str(q, RB_KEY_NODES);
    rb_req_str(q, RB_KEY_REPORT);
    q->cb.strings = cb;
    q->arg = arg;
    return rb_req_submit(q);
}

/* ---- close ---- */

static void rb_destroy(bus_redis_t *r)
{
    while (!rb_list_empty(&r->echo)) rb_req_free(rb_container_of(r->echo.next, rb_req_t, echo));
    while (!rb_list_empty(&r->pending)) rb_req_free(rb_container_of(r->pending.next, rb_req_t, pending));
    while (!rb_list_empty(&r->waiting)) rb_req_free(rb_container_of(r->waiting.next, rb_req_t, wait));
    while (!rb_list_empty(&r->again)) rb_req_free(rb_container_of(r->again.next, rb_req_t, wait));
    while (!rb_list_empty(&r->rooms)) rb_room_destroy(r, rb_container_of(r->rooms.next, rb_room_t, link));
    map_free(&r->room_map);
    bus_url_free(&r->url);
    free(r->password);
    free(r->slot_shard);
    for (int i = 0; i < RB_SCRIPTS; i++) free(r->scripts[i]);
    free(r->key_node);
    free(r->key_conns);
    map_free(&r->conns);
    for (size_t i = 0; i < r->nsentinels; i++) bus_url_free(&r->sentinels[i]);
    free(r->sentinels);
    free(r->sentinel_master);
    free(r->sentinel_password);
    free(r->target_host);
    free(r);
}

static void rb_on_handle_closed(uv_handle_t *h)
{
    bus_redis_t *r = h->data;
    if (--r->handles == 0) rb_destroy(r);
}

static void rb_close_maybe_finish(bus_redis_t *r)
{
    if (!r->close_started || r->sent || r->watch || r->gai_busy || r->handles_closing) return;
    for (size_t i = 0; i < r->nshards; i++)
        if (r->shards[i]->cmd) return;
    rb_shards_close(r);            /* the array */
    r->handles_closing = 1;
    uv_close((uv_handle_t *)&r->tick, rb_on_handle_closed);
    uv_close((uv_handle_t *)&r->retry, rb_on_handle_closed);
    uv_close((uv_handle_t *)&r->kick, rb_on_handle_closed);
}

/* From the kick timer: say goodbye when up (our members leave, the heartbeat goes), then let
 * the connections go. */
static void rb_close_step(bus_redis_t *r)
{
    if (r->close_started) return;
    r->close_started = 1;
    rb_retired_free(r);
    if (r->sent) {
        redisAsyncContext *c = r->sent;
        r->sent = NULL;
        redisAsyncFree(c);
    }
    if (r->watch) {
        redisAsyncContext *c = r->watch;
        r->watch = NULL;
        redisAsyncFree(c);
    }
    for (size_t i = 0; i < r->nshards; i++) {
        redis_sub_close(r->shards[i]->sub);
        r->shards[i]->sub = NULL;
    }
    if (r->close_up && r->nshards) {
        for (rb_list_t *l = r->rooms.next; l != &r->rooms; l = l->next) {
            rb_room_t *room = rb_container_of(l, rb_room_t, link);
            if (room->nmembers || room->dirty) rb_presence_sync(r, room, 1);
        }
        rb_req_t *q = rb_req_new(r, -1, rb_done_free);
        rb_req_str(q, "DEL");
        rb_req_str(q, r->key_node);
        (void)rb_req_submit(q);
        q = rb_req_new(r, -1, rb_done_free);
        rb_req_str(q, "DEL");
        rb_req_str(q, r->key_conns);
        (void)rb_req_submit(q);
        q = rb_req_new(r, -1, rb_done_free);
        rb_req_str(q, "ZREM");
        rb_req_str(q, RB_KEY_NODES);
        rb_req_str(q, r->base.node);
        (void)rb_req_submit(q);
        /* after the answers; rb_on_cmd_disconnect then (the last one may free the shards) */
        for (size_t i = 0; i < r->nshards; i++)
            if (r->shards[i]->cmd) redisAsyncDisconnect(r->shards[i]->cmd);
        if (r->nshards) uv_timer_start(&r->retry, rb_on_retry, (uint64_t)r->command_timeout_ms, 0);
    } else {
        rb_shards_close(r);
    }
    if (r->gai_busy) uv_cancel((uv_req_t *)&r->gai);
    rb_close_maybe_finish(r);
}

static void rb_free(bus_t *b)
{
    bus_redis_t *r = (bus_redis_t *)b;
    if (r->state == RB_CLOSING) return;
    r->close_up = r->state == RB_UP;
    r->state = RB_CLOSING;
    memset(&r->base.on, 0, sizeof r->base.on);
    RB_STAT_SET(r, up, 0);
    uv_timer_stop(&r->tick);
    uv_timer_stop(&r->retry);
    uv_timer_start(&r->kick, rb_on_kick, 0, 0);
}

/* ---- URL, password file, construction ---- */

static char *rb_pct_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        int hi = s[i] == '%' && i + 2 < n ? hex_digit((unsigned char)s[i + 1]) : -1;
        int lo = hi >= 0 ? hex_digit((unsigned char)s[i + 2]) : -1;
        if (lo >= 0) {
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

void bus_url_free(bus_url_t *u)
{
    free(u->host);
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof *u);
}

int bus_url_parse(const char *url, bus_url_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || strncmp(url, "redis://", 8)) {
        snprintf(err, errlen, "redis_url: %s", url && !strncmp(url, "rediss://", 9)
                                                   ? "TLS (rediss://) is not supported; use redis://"
                                                   : "must look like redis://[:password@]host:port/db");
        return GW_EINVAL;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p) out->user = rb_pct_decode(p, (size_t)(colon - p));
            out->password = rb_pct_decode(colon + 1, (size_t)(at - colon - 1));
        } else if (at > p) {
            out->user = rb_pct_decode(p, (size_t)(at - p));
        }
        p = at + 1;
    }
    const char *h = p, *he;
    if (*p == '[') {
        he = strchr(p, ']');
        if (!he) goto bad;
        h = p + 1;
        p = he + 1;
    } else {
        p += strcspn(p, ":/");
        he = p;
    }
    if (he == h) {
        snprintf(err, errlen, "redis_url: no host");
        goto fail;
    }
    out->host = xstrndup(h, (size_t)(he - h));
    if (*p == ':') {
        char *end;
        errno = 0;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || errno || port < 1 || port > 65535) {
            snprintf(err, errlen, "redis_url: port must be 1-65535");
            goto fail;
        }
        p = end;
        out->port = (int)port;
    }
    if (*p == '/') {
        p++;
        if (*p) {
            char *end;
            errno = 0;
            long db = strtol(p, &end, 10);
            if (end == p || *end || errno || db < 0 || db > 1000000) {
                snprintf(err, errlen, "redis_url: the database must be a number");
                goto fail;
            }
            out->db = (int)db;
            p = end;
        }
    }
    if (*p) goto bad;
    return 0;
bad:
    snprintf(err, errlen, "redis_url: must look like redis://[:password@]host:port/db");
fail:
    bus_url_free(out);
    return GW_EINVAL;
}

static char *rb_password_read(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "redis password file %s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "redis password file %s: unreadable or over %zu bytes", path, sizeof buf - 1);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    return xstrndup(buf, n);
}

/* s with every from replaced by to (a new string). */
static char *rb_replace(const char *s, const char *from, const char *to)
{
    buf_t b;
    buf_init(&b);
    size_t fl = strlen(from);
    for (const char *p; (p = strstr(s, from)); s = p + fl) {
        buf_append(&b, s, (size_t)(p - s));
        buf_append_str(&b, to);
    }
    buf_append_str(&b, s);
    char *out = xstrndup(b.data, b.len);
    buf_free(&b);
    return out;
}

/* "host:port,host:port" (the option named key) into an array of addresses (port defport when
 * left out). */
static int rb_servers_parse(const char *key, const char *list, int defport, bus_url_t **out, size_t *n, char *err,
                            size_t errlen)
{
    *out = NULL;
    *n = 0;
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        char item[512];
        if (len == 0 || len >= sizeof item - 9) {
            snprintf(err, errlen, "%s: must be host:port,host:port", key);
            return GW_EINVAL;
        }
        snprintf(item, sizeof item, "redis://%.*s", (int)len, p);
        bus_url_t u;
        char why[256];
        if (bus_url_parse(item, &u, why, sizeof why) < 0 || u.user || u.password || u.db) {
            bus_url_free(&u);
            snprintf(err, errlen, "%s: \"%.*s\" is not host:port", key, (int)len, p);
            return GW_EINVAL;
        }
        if (!strchr(item + 8, ':') || item[strlen(item) - 1] == ']') u.port = defport;
        *out = xrealloc(*out, (*n + 1) * sizeof **out);
        (*out)[(*n)++] = u;
        p += len;
        if (*p == ',') p++;
    }
    if (!*n) {
        snprintf(err, errlen, "%s: no server given", key);
        return GW_EINVAL;
    }
    return 0;
}

static const bus_ops_t rb_ops = {
    .room_subscribe = rb_room_subscribe,
    .room_unsubscribe = rb_room_unsubscribe,
    .room_publish = rb_room_publish,
    .room_post = rb_room_post,
    .direct_publish = rb_direct_publish,
    .presence_add = rb_presence_add,
    .presence_remove = rb_presence_remove,
    .presence_list = rb_presence_list,
    .history_range = rb_history_range,
    .limit_take = rb_limit_take,
    .node_report = rb_node_report,
    .node_reports = rb_node_reports,
    .presence_join = rb_presence_join,
    .conn_add = rb_conn_add,
    .conn_remove = rb_conn_remove,
    .direct_send = rb_direct_send,
    .free = rb_free,
};

static void rb_sha1_hex(const char *s, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    if (EVP_Digest(s, strlen(s), md, &n, EVP_sha1(), NULL) != 1 || n != 20) abort();
    hex_encode(md, n, out);
}

int bus_redis_new(uv_loop_t *loop, const bus_options_t *opts, const bus_handlers_t *on, void *arg, bus_t **out,
                  char *err, size_t errlen)
{
    bus_url_t url;
    if (bus_url_parse(opts->redis_url, &url, err, errlen) < 0) return GW_EINVAL;
    char *password = NULL;
    if (opts->password_file && *opts->password_file) {
        password = rb_password_read(opts->password_file, err, errlen);
        if (!password) {
            bus_url_free(&url);
            return GW_EINVAL;
        }
    } else if (url.password) {
        password = xstrdup(url.password);
    }

    bus_url_t *sentinels = NULL;
    size_t nsentinels = 0;
    char *sentinel_password = NULL;
    int cluster = opts->cluster_nodes && *opts->cluster_nodes;
    if (cluster && url.db) {
        snprintf(err, errlen, "redis_url: a Redis Cluster has only db 0");
        free(password);
        bus_url_free(&url);
        return GW_EINVAL;
    }
    if (cluster && rb_servers_parse("redis_cluster_nodes", opts->cluster_nodes, 6379, &sentinels, &nsentinels, err,
                                    errlen) < 0) {
        for (size_t i = 0; i < nsentinels; i++) bus_url_free(&sentinels[i]);
        free(sentinels);
        free(password);
        bus_url_free(&url);
        return GW_EINVAL;
    }
    if (!cluster && opts->sentinels && *opts->sentinels &&
        (rb_servers_parse("redis_sentinels", opts->sentinels, 26379, &sentinels, &nsentinels, err, errlen) < 0 ||
         (opts->sentinel_password_file && *opts->sentinel_password_file &&
          !(sentinel_password = rb_password_read(opts->sentinel_password_file, err, errlen))))) {
        for (size_t i = 0; i < nsentinels; i++) bus_url_free(&sentinels[i]);
        free(sentinels);
        free(password);
        bus_url_free(&url);
        return GW_EINVAL;
    }

    bus_redis_t *r = xcalloc(1, sizeof *r);
    r->sentinels = sentinels;
    r->nsentinels = nsentinels;
    r->sentinel_password = sentinel_password;
    r->sentinel_master = xstrdup(opts->sentinel_master ? opts->sentinel_master : "");
    r->base.ops = &rb_ops;
    r->base.kind = "redis";
    if (on) r->base.on = *on;
    r->base.arg = arg;
    snprintf(r->base.node, sizeof r->base.node, "%s", opts->node_id);
    r->loop = loop;
    r->url = url;
    r->password = password;
    r->connect_timeout_ms = opts->connect_timeout_ms;
    r->command_timeout_ms = opts->command_timeout_ms;
    r->backoff_min_ms = opts->backoff_min_ms;
    r->backoff_max_ms = opts->backoff_max_ms;
    if (r->backoff_max_ms < r->backoff_min_ms) r->backoff_max_ms = r->backoff_min_ms;
    r->ttl_ms = opts->presence_ttl_ms;
    r->history_size = opts->history_size > 0 ? opts->history_size : 0;
    r->room_ttl_ms = opts->room_ttl_ms > 0 ? opts->room_ttl_ms : 0;
    r->hb_ms = r->ttl_ms / 3 > 0 ? r->ttl_ms / 3 : 1;
    r->tick_ms = r->hb_ms < 100 ? r->hb_ms : 100;
    r->key_node = rb_strcat(RB_KEY_NODE, r->base.node);
    r->key_conns = rb_strcat(RB_KEY_CONNS, r->base.node);
    map_init(&r->conns);
    r->cluster = cluster;
    for (int i = 0; i < RB_SCRIPTS; i++) {
        r->scripts[i] = cluster ? rb_replace(rb_scripts[i], "redis.call('PUBLISH'", "redis.call('SPUBLISH'")
                                : xstrdup(rb_scripts[i]);
        rb_sha1_hex(r->scripts[i], r->sha[i]);
    }
    map_init(&r->room_map);
    rb_list_init(&r->rooms);
    rb_list_init(&r->pending);
    rb_list_init(&r->echo);
    rb_list_init(&r->waiting);
    rb_list_init(&r->again);

    uv_timer_init(loop, &r->tick);
    uv_timer_init(loop, &r->retry);
    uv_timer_init(loop, &r->kick);
    r->tick.data = r->retry.data = r->kick.data = r;
    r->handles = 3;
    uv_timer_start(&r->tick, rb_on_tick, (uint64_t)r->tick_ms, (uint64_t)r->tick_ms);
    rb_link_start(r);
    *out = &r->base;
    return 0;
}
