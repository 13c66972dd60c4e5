/* policy_store: the C side of the policy's gw.store (a key -> JSON value map with optional TTL)
 * and gw.limit (token buckets by key). It lives in policy_t, not in a Lua VM, so its data
 * survives policy reloads. It knows nothing about Lua: callers pass the current time (monotonic
 * seconds) so tests can drive the clock. Expired entries behave as absent (lazy expiry, plus
 * policy_store_tick from on_tick). Sizes are capped so a policy cannot grow it without bound;
 * a refused operation returns a negative code (base/err.h) with a static message in *err and
 * changes nothing.
 *
 * A full store (POLICY_STORE_MAX_KEYS entries) that must create a key (set or incr of an absent
 * key; replacing an existing key always works) makes room in this order:
 *   1. it drops every expired entry (a sweep, buckets included);
 *   2. if still full, it evicts the POLICY_STORE_EVICT_BATCH entries that expire first, among
 *      those set with a ttl (ties by key, so the choice is deterministic), and logs a warning
 *      with the count; entries without a ttl are never evicted;
 *   3. only when every entry is permanent does the operation fail ("store is full").
 * So a policy that gives its transient keys a ttl degrades by losing the state closest to
 * expiring anyway, instead of failing every later write.
 *
 * Bytes: every entry and bucket is charged what it holds on the heap (key, value as jansson
 * lays it out, bookkeeping; an estimate that grows with every byte and element), and the total
 * stays under the cap given to policy_store_new (policy_store_mb). A write past it makes room
 * as above; buckets never evict entries. So the process never grows past the cap through the
 * store, whatever the policy writes. */
#ifndef CHATGW_POLICY_STORE_H
#define CHATGW_POLICY_STORE_H

#include <stddef.h>

#include <jansson.h>

/* Per-entry bounds of gw.store and gw.limit; not config keys: policy_store_mb (config) is the
 * operator's limit, these only keep one entry or one eviction small. */
#define POLICY_STORE_MAX_KEYS 100000       /* store entries, and separately limit buckets */
#define POLICY_STORE_MAX_VALUE 65536       /* bytes of a value as compact JSON */
#define POLICY_STORE_MAX_KEY 1024          /* bytes of a key */
#define POLICY_STORE_EVICT_BATCH (POLICY_STORE_MAX_KEYS / 64)   /* entries one eviction drops */

typedef struct policy_store_s policy_store_t;

policy_store_t *policy_store_new(size_t max_bytes);
void policy_store_free(policy_store_t *s);

/* The value at key (borrowed: valid until the next change of that key), or NULL. */
json_t *policy_store_get(policy_store_t *s, const char *key, double now);
/* Sets key to value (stolen, also on failure). ttl > 0 expires it ttl seconds after now;
 * ttl <= 0 keeps it until deleted (and exempt from eviction). 0, or with *err GW_EINVAL (bad
 * key, value or ttl), GW_ETOOBIG (key or value too long) or GW_EUNAVAIL (store full). */
int policy_store_set(policy_store_t *s, const char *key, json_t *value, double ttl, double now,
                     const char **err);
int policy_store_del(policy_store_t *s, const char *key);   /* 1 when it existed */
/* Adds n (an integer or real JSON number, borrowed) to the number at key (absent = 0). The
 * result is an integer when both are, else a real. ttl > 0 applies only when the key is created
 * (fixed-window counters). Returns the new value (borrowed) or NULL with *err. */
json_t *policy_store_incr(policy_store_t *s, const char *key, json_t *n, double ttl, double now,
                          const char **err);
/* Token bucket: starts full with burst tokens and refills at rate per second. 1 when a token was
 * taken, 0 when limited, or with *err GW_EINVAL or GW_ETOOBIG (bad arguments), GW_ELIMIT (too
 * many buckets) or GW_EUNAVAIL (store full). */
int policy_store_limit(policy_store_t *s, const char *key, double rate, double burst, double now,
                       const char **err);
/* Lowers the bucket at key to tokens (what the cluster's shared bucket has left, see gw.limit
 * with Redis) after refilling it to now; never raises it, since this replica's takes still in
 * flight are not counted in tokens yet. An absent bucket is created with rate and burst when
 * tokens < burst (an existing one keeps its own). 1 when lowered, 0 when unchanged, or
 * policy_store_limit's negative codes with *err. */
int policy_store_limit_sync(policy_store_t *s, const char *key, double rate, double burst, double tokens,
                            double now, const char **err);
/* Drops expired entries and buckets that have refilled (they equal absent ones). Returns how
 * many were dropped. policy_store_sweep looks at all of them (a full store does, and costs
 * O(entries)); policy_store_tick, once a second, at the next POLICY_STORE_TICK_BUCKETS hash
 * buckets of each map only, so that a tick stays short however many keys there are (100,000
 * keys, 131,072 buckets: one pass in 64 ticks). Expired entries read as absent meanwhile. */
#define POLICY_STORE_TICK_BUCKETS 2048
size_t policy_store_sweep(policy_store_t *s, double now);
size_t policy_store_tick(policy_store_t *s, double now);
size_t policy_store_count(const policy_store_t *s);        /* live entries incl. not yet swept */
size_t policy_store_buckets(const policy_store_t *s);
size_t policy_store_evicted(const policy_store_t *s);      /* entries evicted since creation */
size_t policy_store_bytes(const policy_store_t *s);        /* charged to entries and buckets */

#endif
