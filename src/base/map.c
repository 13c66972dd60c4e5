/* map: string-keyed chained hash map; see map.h. FNV-1a keeps it simple; keys here are room
 * names and connection ids, not attacker-chosen at a scale where flooding one bucket matters
 * more than the per-connection limits that bound them. */
#include "base/map.h"

#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

unsigned map_hash(const char *s)
{
    unsigned h = 2166136261u;
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

void map_init(map_t *m)
{
    m->buckets = NULL;
    m->nbuckets = m->count = 0;
}

void map_free(map_t *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        map_entry_t *e = m->buckets[i];
        while (e) {
            map_entry_t *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    map_init(m);
}

static map_entry_t **map_slot(const map_t *m, const char *key, unsigned h)
{
    map_entry_t **p = &m->buckets[h & (m->nbuckets - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->key, key))) p = &(*p)->next;
    return p;
}

void *map_get(const map_t *m, const char *key)
{
    if (!m->count) return NULL;
    map_entry_t **p = map_slot(m, key, map_hash(key));
    return *p ? (*p)->value : NULL;
}

static void map_grow(map_t *m)
{
    size_t n = m->nbuckets ? m->nbuckets * 2 : 16;
    map_entry_t **b = xcalloc(n, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        map_entry_t *e = m->buckets[i];
        while (e) {
            map_entry_t *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void map_set(map_t *m, const char *key, void *value)
{
    if (m->count >= m->nbuckets) map_grow(m);
    unsigned h = map_hash(key);
    map_entry_t **p = map_slot(m, key, h);
    if (*p) {
        (*p)->value = value;
        return;
    }
    size_t kl = strlen(key);
    map_entry_t *e = xmalloc(sizeof *e + kl + 1);
    memcpy(e->key, key, kl + 1);
    e->hash = h;
    e->value = value;
    e->next = NULL;
    *p = e;
    m->count++;
}

void *map_del(map_t *m, const char *key)
{
    if (!m->count) return NULL;
    map_entry_t **p = map_slot(m, key, map_hash(key));
    map_entry_t *e = *p;
    if (!e) return NULL;
    void *v = e->value;
    *p = e->next;
    free(e);
    m->count--;
    return v;
}

size_t map_sweep(map_t *m, size_t *cursor, size_t n, int (*take)(void *value, void *ctx), void *ctx)
{
    if (!m->nbuckets) return 0;
    size_t removed = 0, i = *cursor & (m->nbuckets - 1);
    if (n > m->nbuckets) n = m->nbuckets;
    for (; n; n--, i = (i + 1) & (m->nbuckets - 1)) {
        map_entry_t **p = &m->buckets[i];
        while (*p) {
            map_entry_t *e = *p;
            if (!take(e->value, ctx)) {
                p = &e->next;
                continue;
            }
            *p = e->next;
            free(e);
            m->count--;
            removed++;
        }
    }
    *cursor = i;
    return removed;
}

map_entry_t *map_first(const map_t *m, size_t *i)
{
    for (*i = 0; *i < m->nbuckets; (*i)++)
        if (m->buckets[*i]) return m->buckets[*i];
    return NULL;
}

map_entry_t *map_next(const map_t *m, map_entry_t *e, size_t *i)
{
    if (e->next) return e->next;
    for ((*i)++; *i < m->nbuckets; (*i)++)
        if (m->buckets[*i]) return m->buckets[*i];
    return NULL;
}
