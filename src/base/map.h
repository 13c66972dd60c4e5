/* map: a string-keyed hash map of borrowed values (chained, power-of-two buckets, grows at
 * load 1). Keys are copied and owned by the map; values are the caller's. No I/O. */
#ifndef CHATGW_MAP_H
#define CHATGW_MAP_H

#include <stddef.h>

typedef struct map_entry_s {
    struct map_entry_s *next;
    unsigned hash;
    void *value;
    char key[];
} map_entry_t;

typedef struct {
    map_entry_t **buckets;
    size_t nbuckets, count;
} map_t;

/* The map's hash of a string (FNV-1a, 32 bits), for tables keyed the same way. */
unsigned map_hash(const char *s);

void map_init(map_t *m);
void map_free(map_t *m);                         /* frees entries, not values */
void *map_get(const map_t *m, const char *key);
void map_set(map_t *m, const char *key, void *value);   /* inserts or replaces */
void *map_del(map_t *m, const char *key);        /* returns the removed value or NULL */

/* Removes every entry whose value take(value, ctx) claims (returns 1: the value is the
 * caller's from then on), among the entries of up to n buckets from *cursor on. *cursor is left
 * where the next call goes on, wrapping at the end, so calls with a small n spread one pass
 * over the map across calls; n >= nbuckets visits every bucket once. A map that grew between
 * calls is still covered (the cursor is taken modulo its size). Returns how many it removed. */
size_t map_sweep(map_t *m, size_t *cursor, size_t n, int (*take)(void *value, void *ctx), void *ctx);

/* Iteration: for (map_entry_t *e = map_first(m, &i); e; e = map_next(m, e, &i)).
 * The map must not change during iteration. */
map_entry_t *map_first(const map_t *m, size_t *i);
map_entry_t *map_next(const map_t *m, map_entry_t *e, size_t *i);

#endif
