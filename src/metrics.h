/* metrics: process-wide counters and gauges, rendered in the Prometheus text format 0.0.4.
 * Updates are relaxed atomic adds so any worker thread may count. Modules own the meaning of
 * their counters; this module owns their names, help texts and rendering. */
#ifndef CHATGW_METRICS_H
#define CHATGW_METRICS_H

#include <stdint.h>

#include "buf.h"

#define METRICS_CLOSE_CODES 5000   /* close codes 0..4999 counted individually */

typedef struct {
    uint64_t conns_open;           /* gauge: TCP connections open */
    uint64_t conns_total;
    uint64_t ws_open;              /* gauge: WebSocket connections open */
    uint64_t ws_total;
    uint64_t http_responses[600];  /* by status code */
    uint64_t frames_in[16], frames_out[16];  /* by opcode */
    uint64_t bytes_in, bytes_out;
    uint64_t close_sent[METRICS_CLOSE_CODES], close_received[METRICS_CLOSE_CODES];
    uint64_t conns_rejected_limit; /* refused by max_connections / per-IP */
    uint64_t header_timeouts;
    uint64_t idle_timeouts;
    uint64_t slow_consumers;
} metrics_t;

#define METRIC_ADD(field, n) __atomic_add_fetch(&(field), (uint64_t)(n), __ATOMIC_RELAXED)
#define METRIC_SUB(field, n) __atomic_sub_fetch(&(field), (uint64_t)(n), __ATOMIC_RELAXED)
#define METRIC_INC(field) METRIC_ADD(field, 1)

/* Appends every metric of m to out, plus chatgw_build_info{version}. */
void metrics_render(const metrics_t *m, const char *version, buf_t *out);

#endif
