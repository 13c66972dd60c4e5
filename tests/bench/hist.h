/* hist: a log-bucket latency histogram for chatgw-bench (HDR style, no allocation).
 *
 * Values are nanoseconds. Bucket = (power of two, 16 linear sub-buckets), so a value is kept
 * within 1/16 (6.25%) of itself from 1 ns to 2^63 ns; quantiles return the bucket midpoint.
 * Header-only; it never allocates and never fails. */
#ifndef CHATGW_BENCH_HIST_H
#define CHATGW_BENCH_HIST_H

#include <stdint.h>
#include <string.h>

#define HIST_SUB_BITS 4
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (64u * HIST_SUB)

typedef struct {
    uint64_t b[HIST_BUCKETS];
    uint64_t count, max;
    double sum;
} hist_t;

static inline void hist_init(hist_t *h)
{
    memset(h, 0, sizeof *h);
}

static inline unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned sub = (unsigned)(v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1);
    return (msb - HIST_SUB_BITS + 1) * HIST_SUB + sub;
}

/* the lowest value of bucket i and its width */
static inline void hist_bounds(unsigned i, double *lo, double *width)
{
    if (i < HIST_SUB) {
        *lo = i;
        *width = 1;
        return;
    }
    unsigned e = i / HIST_SUB + HIST_SUB_BITS - 1, sub = i % HIST_SUB;
    double base = (double)(1ull << e);
    *width = base / HIST_SUB;
    *lo = base + sub * *width;
}

static inline void hist_add(hist_t *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
}

static inline double hist_quantile(const hist_t *h, double q)
{
    if (h->count == 0) return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if (rank >= h->count) rank = h->count - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > rank) {
            double lo, w;
            hist_bounds(i, &lo, &w);
            double mid = lo + w / 2;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

static inline double hist_mean(const hist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}

#endif
