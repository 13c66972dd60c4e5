/* reports: the app's side of error reporting. It reads sentry_dsn (or sentry_dsn_file), starts
 * the Sentry client on the main loop, installs it as the base/report.h sink (tagging each
 * report with the calling worker), and hands the crash records of crash_dir to it (or, without
 * a DSN, logs and removes them).
 *
 * Contract: reports_start runs on the main thread before any worker thread starts;
 * reports_stop after they all stopped, before the main loop's last run (which finishes the
 * closes). Without a DSN nothing is sent and no handle is made. */
#ifndef CHATGW_REPORTS_H
#define CHATGW_REPORTS_H

#include <stddef.h>
#include <uv.h>

#include "base/config.h"
#include "base/metrics.h"

typedef struct reports reports_t;

/* *out NULL when there is no DSN. 0, or GW_EINVAL with a one-line error naming the key (a
 * configuration error: exit 2). */
int reports_start(uv_loop_t *loop, const config_t *cfg, metrics_t *metrics, reports_t **out, char *err,
                  size_t errlen);

/* The worker the calling thread runs (tags its reports). */
void reports_worker_set(int worker);

void reports_stop(reports_t *r);

#endif
