/* gw_sum: the process's value of what every worker counts in its own gw (gw.h): a counter or
 * gauge summed over the workers with relaxed atomic loads, so they may go on counting. With
 * one worker it is that worker's own. The one place that walks gw->workers for a sum. */
#ifndef CHATGW_GW_SUM_H
#define CHATGW_GW_SUM_H

#include <stddef.h>
#include <stdint.h>

#include "base/gw.h"
#include "base/metrics.h"

/* The sum of the uint64_t at offset in every worker's gw_t. */
uint64_t gw_sum_field(const gw_t *gw, size_t offset);
/* The sum of one uint64_t field of gw_t, e.g. GW_SUM(gw, metrics.ws_open). */
#define GW_SUM(gw, field) gw_sum_field((gw), offsetof(gw_t, field))
/* out = every worker's metrics summed (metrics_sum); out is the caller's. */
void gw_sum_metrics(const gw_t *gw, metrics_t *out);

#endif
