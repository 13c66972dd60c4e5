/* policy_store: gw.store entries and gw.limit token buckets, kept in C so they outlive any one
 * Lua VM (see policy_store.h). Two string maps own their values: store entries hold a JSON value
 * (one reference) and an expiry time, buckets hold their token count. Time is whatever monotonic
 * seconds the caller passes; nothing here reads a clock or touches Lua. Expiry is lazy: a read
 * that finds an expired entry deletes it, and policy_store_tick drops the rest, a slice a tick. A full store
 * makes room by sweeping, then by evicting the entries nearest to expiry (logged as a warning). */
#include "policy/policy_store.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "base/map.h"

typedef struct {
    json_t *value;
    double expires;                /* 0 = never */
    size_t cost;                   /* bytes charged to the store for this entry, key included */
} policy_entry_t;

typedef struct {
    double tokens, last, rate, burst;
    size_t cost;                   /* bytes charged to the store, key included */
} policy_bucket_t;

struct policy_store_s {
    map_t entries;                 /* key -> policy_entry_t* */
    map_t buckets;                 /* key -> policy_bucket_t* */
    size_t evicted;                /* entries dropped by a full store, since creation */
    size_t bytes, max_bytes;       /* charged to entries and buckets, and the cap */
    double room_retry;             /* a full store sweeps and evicts again only from then on */
    size_t entries_cursor, buckets_cursor;   /* where policy_store_tick goes on in each map */
};

/* What a key costs in a map beside its value: the copy, the map entry, malloc's headers. */
#define POLICY_STORE_KEY_COST(klen) ((klen) + 1 + 64)
#define POLICY_STORE_BUCKET_COST(klen) (POLICY_STORE_KEY_COST(klen) + sizeof(policy_bucket_t) + 16)

static void policy_bucket_drop(policy_store_t *s, void *value)
{
    policy_bucket_t *b = value;
    s->bytes -= b->cost;
    free(b);
}

policy_store_t *policy_store_new(size_t max_bytes)
{
    policy_store_t *s = xcalloc(1, sizeof *s);
    map_init(&s->entries);
    map_init(&s->buckets);
    s->max_bytes = max_bytes;
    return s;
}

/* Frees e (a policy_entry_t taken out of the map by the caller) and gives its bytes back. */
static void policy_entry_drop(policy_store_t *s, void *value)
{
    policy_entry_t *e = value;
    if (!e) return;
    s->bytes -= e->cost;
    json_decref(e->value);
    free(e);
}

/* The heap a JSON value holds, as jansson lays it out (struct, malloc header, hash table
 * slots): an estimate that grows with every byte and element the value has. Values are at
 * most POLICY_STORE_MAX_VALUE bytes of JSON, so the walk is bounded. */
static size_t policy_value_cost(json_t *v)
{
    size_t cost = 48, i;
    const char *key;
    json_t *item;
    switch (json_typeof(v)) {
    case JSON_STRING: return cost + json_string_length(v) + 1;
    case JSON_ARRAY:
        json_array_foreach(v, i, item) cost += sizeof(json_t *) + policy_value_cost(item);
        return cost;
    case JSON_OBJECT:
        json_object_foreach(v, key, item) cost += 64 + strlen(key) + policy_value_cost(item);
        return cost;
    case JSON_TRUE: case JSON_FALSE: case JSON_NULL: return 0;   /* jansson's singletons */
    default: return cost;
    }
}

void policy_store_free(policy_store_t *s)
{
    if (!s) return;
    size_t i;
    for (map_entry_t *e = map_first(&s->entries, &i); e; e = map_next(&s->entries, e, &i))
        policy_entry_drop(s, e->value);
    for (map_entry_t *e = map_first(&s->buckets, &i); e; e = map_next(&s->buckets, e, &i))
        free(e->value);
    map_free(&s->entries);
    map_free(&s->buckets);
    free(s);
}

static int policy_entry_expired(const policy_entry_t *e, double now)
{
    return e->expires > 0 && now >= e->expires;
}

/* The live entry at key; an expired one is deleted on the way (lazy expiry). */
static policy_entry_t *policy_entry_find(policy_store_t *s, const char *key, double now)
{
    policy_entry_t *e = map_get(&s->entries, key);
    if (e && policy_entry_expired(e, now)) {
        policy_entry_drop(s, map_del(&s->entries, key));
        return NULL;
    }
    return e;
}

static int policy_key_check(const char *key, const char **err)
{
    if (!*key) {
        *err = "key is empty";
        return GW_EINVAL;
    }
    if (strlen(key) > POLICY_STORE_MAX_KEY) {
        *err = "key is longer than 1024 bytes";
        return GW_ETOOBIG;
    }
    return 0;
}

json_t *policy_store_get(policy_store_t *s, const char *key, double now)
{
    policy_entry_t *e = policy_entry_find(s, key, now);
    return e ? e->value : NULL;
}

typedef struct {
    double expires;
    const char *key;               /* the map's own copy: valid until that entry is deleted */
} policy_victim_t;

static int policy_victim_cmp(const void *a, const void *b)
{
    const policy_victim_t *x = a, *y = b;
    if (x->expires != y->expires) return x->expires < y->expires ? -1 : 1;
    return strcmp(x->key, y->key);  /* a total order: the same store evicts the same keys */
}

/* Drops up to max entries that have a ttl, those that expire first. Returns how many. */
static size_t policy_entries_evict(policy_store_t *s, size_t max)
{
    policy_victim_t *v = xmalloc(s->entries.count * sizeof *v);
    size_t n = 0, i;
    for (map_entry_t *e = map_first(&s->entries, &i); e; e = map_next(&s->entries, e, &i)) {
        const policy_entry_t *pe = e->value;
        if (pe->expires > 0) v[n++] = (policy_victim_t){ pe->expires, e->key };
    }
    if (n > max) {
        qsort(v, n, sizeof *v, policy_victim_cmp);
        n = max;
    }
    for (size_t k = 0; k < n; k++) policy_entry_drop(s, map_del(&s->entries, v[k].key));
    free(v);
    s->evicted += n;
    return n;
}

/* What an entry of key holding value is charged. */
static size_t policy_entry_cost(const char *key, json_t *value)
{
    return POLICY_STORE_KEY_COST(strlen(key)) + sizeof(policy_entry_t) + policy_value_cost(value);
}

/* Whether keys more entries and bytes more bytes fit. */
static int policy_store_fits(const policy_store_t *s, size_t keys, size_t bytes)
{
    return s->entries.count + keys <= POLICY_STORE_MAX_KEYS && bytes <= s->max_bytes - s->bytes;
}

/* Room for keys (0 or 1) more entries and bytes more bytes. A full store first drops its
 * expired entries, then evicts batches of the POLICY_STORE_EVICT_BATCH entries nearest to
 * expiry (keys set with a ttl; a key without one is never evicted), and fails only when what
 * is left cannot be evicted. */
static int policy_entries_room(policy_store_t *s, size_t keys, size_t bytes, double now, const char **err)
{
    if (policy_store_fits(s, keys, bytes)) return 0;
    if (now < s->room_retry) goto full;            /* what is left is permanent: only deletes help */
    policy_store_sweep(s, now);
    size_t n = 0, batch;
    while (!policy_store_fits(s, keys, bytes) && (batch = policy_entries_evict(s, POLICY_STORE_EVICT_BATCH))) n += batch;
    if (n) {
        log_warn("policy store full: evicted the entries nearest to expiry", "{s:I, s:I, s:I, s:I}",
                 "evicted", (json_int_t)n, "keys", (json_int_t)s->entries.count, "bytes", (json_int_t)s->bytes,
                 "evicted_total", (json_int_t)s->evicted);
    }
    if (policy_store_fits(s, keys, bytes)) return 0;
    s->room_retry = now + 1;       /* a sweep costs O(entries): not on every refused write */
full:
    *err = s->entries.count + keys > POLICY_STORE_MAX_KEYS ? "store is full (100000 keys, none with a ttl)"
                                                          : "store is full (policy_store_mb, no entry with a ttl left)";
    return GW_EUNAVAIL;
}

/* 1 when the value is over POLICY_STORE_MAX_VALUE bytes as compact JSON. A string (the common
 * value) is dumped only when its length leaves that open: its JSON is its bytes quoted, each
 * byte at most 6 once escaped. */
static int policy_value_too_large(const json_t *value)
{
    if (json_is_string(value)) {
        size_t n = json_string_length(value);
        if (6 * n + 2 <= POLICY_STORE_MAX_VALUE) return 0;
        if (n + 2 > POLICY_STORE_MAX_VALUE) return 1;
    }
    return json_dumpb(value, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY) > POLICY_STORE_MAX_VALUE;
}

/* Gives the entry e (in the map, its cost counted) value (stolen), its expiry and its cost. */
static void policy_entry_put(policy_store_t *s, policy_entry_t *e, json_t *value, double ttl, double now,
                             size_t cost)
{
    json_decref(e->value);         /* NULL in a new entry */
    e->value = value;              /* the entry owns the caller's reference now */
    e->expires = ttl > 0 ? now + ttl : 0;
    s->bytes = s->bytes - e->cost + cost;
    e->cost = cost;
}

int policy_store_set(policy_store_t *s, const char *key, json_t *value, double ttl, double now,
                     const char **err)
{
    int rc = policy_key_check(key, err);
    if (rc < 0) goto fail;
    if (!value) {
        *err = "value is missing";
        return GW_EINVAL;
    }
    rc = GW_ETOOBIG;
    if (policy_value_too_large(value)) {
        *err = "value is larger than 64 KiB as JSON";
        goto fail;
    }
    rc = GW_EINVAL;
    if (!isfinite(ttl)) {
        *err = "ttl must be a finite number";
        goto fail;
    }
    size_t cost = policy_entry_cost(key, value);
    policy_entry_t *old = policy_entry_find(s, key, now);
    if (old && cost <= s->max_bytes - (s->bytes - old->cost)) {   /* a replacement that fits: in place */
        policy_entry_put(s, old, value, ttl, now, cost);
        return 0;
    }
    if (old) {                     /* out of the map while room is made: its bytes count as free */
        map_del(&s->entries, key);
        s->bytes -= old->cost;
    }
    if ((rc = policy_entries_room(s, 1, cost, now, err)) < 0) {
        if (old) {                 /* refused: the key keeps its value */
            map_set(&s->entries, key, old);
            s->bytes += old->cost;
        }
        goto fail;
    }
    policy_entry_t *e = old ? old : xcalloc(1, sizeof *e);
    map_set(&s->entries, key, e);
    s->bytes += e->cost;           /* 0 in a new entry; old's, taken off above */
    policy_entry_put(s, e, value, ttl, now, cost);
    return 0;
fail:
    json_decref(value);
    return rc;
}

int policy_store_del(policy_store_t *s, const char *key)
{
    policy_entry_t *e = map_del(&s->entries, key);
    policy_entry_drop(s, e);
    return e != NULL;
}

/* a + b as JSON: integer when both are integers and the sum fits, else real. */
static json_t *policy_number_add(json_t *a, json_t *b, const char **err)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t r;
        if (__builtin_add_overflow(json_integer_value(a), json_integer_value(b), &r)) {
            *err = "integer overflow";
            return NULL;
        }
        return json_integer(r);
    }
    double r = json_number_value(a) + json_number_value(b);
    if (!isfinite(r)) {
        *err = "result is not finite";
        return NULL;
    }
    return json_real(r);
}

json_t *policy_store_incr(policy_store_t *s, const char *key, json_t *n, double ttl, double now,
                          const char **err)
{
    if (policy_key_check(key, err) < 0) return NULL;
    if (!json_is_number(n) || !isfinite(ttl)) {
        *err = "increment and ttl must be finite numbers";
        return NULL;
    }
    policy_entry_t *e = policy_entry_find(s, key, now);
    if (e && !json_is_number(e->value)) {
        *err = "value is not a number";
        return NULL;
    }
    json_t *zero = e ? NULL : json_integer(0);   /* an absent key counts from 0 */
    json_t *sum = policy_number_add(e ? e->value : zero, n, err);
    json_decref(zero);
    if (!sum) return NULL;
    if (!e) {
        size_t cost = policy_entry_cost(key, sum);
        if (policy_entries_room(s, 1, cost, now, err) < 0) {
            json_decref(sum);
            return NULL;
        }
        e = xcalloc(1, sizeof *e);
        e->expires = ttl > 0 ? now + ttl : 0;  /* only a new key gets the ttl: fixed windows */
        e->cost = cost;
        s->bytes += cost;
        map_set(&s->entries, key, e);
    }
    json_decref(e->value);         /* a number for a number: the cost stays */
    e->value = sum;
    return sum;
}

/* Room for one more bucket at key: refilled buckets are swept first. Buckets share the byte
 * cap with the entries but never evict them. */
static int policy_bucket_room(policy_store_t *s, const char *key, double now, const char **err)
{
    size_t cost = POLICY_STORE_BUCKET_COST(strlen(key));
    if (s->buckets.count < POLICY_STORE_MAX_KEYS && cost <= s->max_bytes - s->bytes) return 0;
    if (now >= s->room_retry) policy_store_sweep(s, now);
    int fits = cost <= s->max_bytes - s->bytes;
    if (s->buckets.count < POLICY_STORE_MAX_KEYS && fits) return 0;
    if (now >= s->room_retry) s->room_retry = now + 1;   /* as policy_entries_room */
    *err = fits ? "too many buckets (100000)" : "store is full (policy_store_mb)";
    return fits ? GW_ELIMIT : GW_EUNAVAIL;
}

static policy_bucket_t *policy_bucket_add(policy_store_t *s, const char *key, policy_bucket_t init)
{
    policy_bucket_t *b = xmalloc(sizeof *b);
    *b = init;
    b->cost = POLICY_STORE_BUCKET_COST(strlen(key));
    map_set(&s->buckets, key, b);
    s->bytes += b->cost;
    return b;
}

/* Tokens the bucket holds at now (refilled since last, capped at burst). */
static double policy_bucket_level(const policy_bucket_t *b, double now)
{
    double elapsed = now > b->last ? now - b->last : 0;
    double t = b->tokens + elapsed * b->rate;
    return t < b->burst ? t : b->burst;
}

/* A bucket's key, rate and burst: 0, or policy_key_check's codes, or GW_EINVAL. */
static int policy_limit_check(const char *key, double rate, double burst, const char **err)
{
    int rc = policy_key_check(key, err);
    if (rc < 0) return rc;
    if (!(rate > 0) || !isfinite(rate) || !(burst >= 1) || !isfinite(burst)) {
        *err = "rate must be > 0 and burst >= 1";
        return GW_EINVAL;
    }
    return 0;
}

int policy_store_limit(policy_store_t *s, const char *key, double rate, double burst, double now,
                       const char **err)
{
    int rc = policy_limit_check(key, rate, burst, err);
    if (rc < 0) return rc;
    policy_bucket_t *b = map_get(&s->buckets, key);
    if (!b) {
        if ((rc = policy_bucket_room(s, key, now, err)) < 0) return rc;
        b = policy_bucket_add(s, key, (policy_bucket_t){ .tokens = burst, .last = now, .rate = rate, .burst = burst });
    }
    /* A changed rate or burst applies from now on; tokens already earned stay, capped. */
    b->tokens = policy_bucket_level(b, now);
    b->last = now > b->last ? now : b->last;
    b->rate = rate;
    b->burst = burst;
    if (b->tokens > burst) b->tokens = burst;
    if (b->tokens < 1) return 0;
    b->tokens -= 1;
    return 1;
}

int policy_store_limit_sync(policy_store_t *s, const char *key, double rate, double burst, double tokens,
                            double now, const char **err)
{
    int rc = policy_limit_check(key, rate, burst, err);
    if (rc < 0) return rc;
    if (isnan(tokens)) {
        *err = "tokens must be a number";
        return GW_EINVAL;
    }
    if (tokens < 0) tokens = 0;
    policy_bucket_t *b = map_get(&s->buckets, key);
    if (!b) {
        if (tokens >= burst) return 0;             /* absent = full: nothing to lower */
        if ((rc = policy_bucket_room(s, key, now, err)) < 0) return rc;
        policy_bucket_add(s, key, (policy_bucket_t){ .tokens = tokens, .last = now, .rate = rate, .burst = burst });
        return 1;
    }
    double level = policy_bucket_level(b, now);
    b->last = now > b->last ? now : b->last;
    if (tokens < level) {
        b->tokens = tokens;
        return 1;
    }
    b->tokens = level;
    return 0;
}

/* map_sweep's take for the store's maps: drops a dead value (its bytes given back). */
typedef struct {
    policy_store_t *s;
    double now;
    int (*dead)(const void *value, double now);
    void (*drop)(policy_store_t *, void *);
} policy_sweep_t;

static int policy_sweep_take(void *value, void *ctx)
{
    policy_sweep_t *w = ctx;
    if (!w->dead(value, w->now)) return 0;
    w->drop(w->s, value);
    return 1;
}

static int policy_entry_dead(const void *value, double now) { return policy_entry_expired(value, now); }

static int policy_bucket_dead(const void *value, double now)
{
    const policy_bucket_t *b = value;
    return policy_bucket_level(b, now) >= b->burst;
}

/* Sweeps up to n buckets of each map from its cursor on. */
static size_t policy_store_sweep_n(policy_store_t *s, double now, size_t n)
{
    policy_sweep_t e = { s, now, policy_entry_dead, policy_entry_drop };
    policy_sweep_t b = { s, now, policy_bucket_dead, policy_bucket_drop };
    return map_sweep(&s->entries, &s->entries_cursor, n, policy_sweep_take, &e)
        + map_sweep(&s->buckets, &s->buckets_cursor, n, policy_sweep_take, &b);
}

size_t policy_store_sweep(policy_store_t *s, double now) { return policy_store_sweep_n(s, now, SIZE_MAX); }

size_t policy_store_tick(policy_store_t *s, double now)
{
    return policy_store_sweep_n(s, now, POLICY_STORE_TICK_BUCKETS);
}

size_t policy_store_count(const policy_store_t *s) { return s->entries.count; }
size_t policy_store_buckets(const policy_store_t *s) { return s->buckets.count; }
size_t policy_store_evicted(const policy_store_t *s) { return s->evicted; }
size_t policy_store_bytes(const policy_store_t *s) { return s->bytes; }
