/* dheap: a binary min-heap of deadlines, so that many timers share one uv_timer_t. Each timer
 * is a dheap_node_t embedded in its owner (16 bytes, where a uv_timer_t handle is 152); the
 * heap holds pointers to the nodes and never owns them. Ties keep no particular order. No I/O. */
#ifndef CHATGW_DHEAP_H
#define CHATGW_DHEAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t due;
    size_t pos;                    /* 0: not in the heap; else its index + 1 */
} dheap_node_t;

typedef struct {
    dheap_node_t **v;
    size_t n, cap;
} dheap_t;

void dheap_init(dheap_t *h);
void dheap_free(dheap_t *h);                                  /* the array only */
void dheap_set(dheap_t *h, dheap_node_t *node, uint64_t due);  /* inserts, or moves to the new due */
void dheap_remove(dheap_t *h, dheap_node_t *node);            /* nothing when absent */
static inline dheap_node_t *dheap_min(const dheap_t *h) { return h->n ? h->v[0] : NULL; }

#endif
