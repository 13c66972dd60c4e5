/* dheap: see dheap.h. */
#include "net/dheap.h"

#include <stdlib.h>

#include "base/buf.h"

void dheap_init(dheap_t *h) { *h = (dheap_t){0}; }

void dheap_free(dheap_t *h)
{
    for (size_t i = 0; i < h->n; i++) h->v[i]->pos = 0;
    free(h->v);
    *h = (dheap_t){0};
}

static void dheap_put(dheap_t *h, size_t i, dheap_node_t *node)
{
    h->v[i] = node;
    node->pos = i + 1;
}

static void dheap_up(dheap_t *h, size_t i)
{
    dheap_node_t *node = h->v[i];
    while (i) {
        size_t parent = (i - 1) / 2;
        if (h->v[parent]->due <= node->due) break;
        dheap_put(h, i, h->v[parent]);
        i = parent;
    }
    dheap_put(h, i, node);
}

static void dheap_down(dheap_t *h, size_t i)
{
    dheap_node_t *node = h->v[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->n) break;
        if (child + 1 < h->n && h->v[child + 1]->due < h->v[child]->due) child++;
        if (node->due <= h->v[child]->due) break;
        dheap_put(h, i, h->v[child]);
        i = child;
    }
    dheap_put(h, i, node);
}

void dheap_set(dheap_t *h, dheap_node_t *node, uint64_t due)
{
    if (node->pos) {
        uint64_t old = node->due;
        node->due = due;
        if (due < old) dheap_up(h, node->pos - 1);
        else if (due > old) dheap_down(h, node->pos - 1);
        return;
    }
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 64;
        h->v = xrealloc(h->v, h->cap * sizeof *h->v);
    }
    node->due = due;
    h->v[h->n++] = node;
    dheap_up(h, h->n - 1);
}

void dheap_remove(dheap_t *h, dheap_node_t *node)
{
    if (!node->pos) return;
    size_t i = node->pos - 1;
    node->pos = 0;
    dheap_node_t *last = h->v[--h->n];
    if (i == h->n) return;
    h->v[i] = last;
    last->pos = i + 1;
    dheap_up(h, i);
    dheap_down(h, last->pos - 1);
}
