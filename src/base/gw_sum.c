/* gw_sum: sums over the workers; see gw_sum.h. */
#include "base/gw_sum.h"

#include <stdlib.h>

#include "base/buf.h"

/* The process's gws: every worker's, or gw alone when it is the only one. */
static const gw_t *gw_sum_all(const gw_t *gw, size_t *n)
{
    if (gw->nworkers <= 1) {
        *n = 1;
        return gw;
    }
    *n = (size_t)gw->nworkers;
    return gw->workers;
}

uint64_t gw_sum_field(const gw_t *gw, size_t offset)
{
    size_t n;
    const gw_t *all = gw_sum_all(gw, &n);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += __atomic_load_n((const uint64_t *)((const char *)&all[i] + offset), __ATOMIC_RELAXED);
    return sum;
}

void gw_sum_metrics(const gw_t *gw, metrics_t *out)
{
    size_t n;
    const gw_t *all = gw_sum_all(gw, &n);
    const metrics_t **ms = xcalloc(n, sizeof *ms);
    for (size_t i = 0; i < n; i++) ms[i] = &all[i].metrics;
    metrics_sum(out, ms, n);
    free(ms);
}
