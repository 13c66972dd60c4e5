/* gw: the struct that ties the modules together. main.c owns it; every module reaches shared
 * state (config, metrics, readiness) through it. No other mutable global state exists in
 * chatgw. With workers > 1 there is one gw per worker thread (its own loop, server, hub and
 * policy, each touched only by that thread); they share the read-only config and the
 * in-process bus, and /metrics sums every worker's counters (relaxed atomic loads). */
#ifndef CHATGW_GW_H
#define CHATGW_GW_H

#include <stdint.h>

#include <uv.h>

#include "base/config.h"
#include "base/metrics.h"

#ifndef CHATGW_VERSION
#define CHATGW_VERSION "0.0.0"
#endif

typedef struct server_s server_t;
typedef struct hub_s hub_t;
typedef struct policy_s policy_t;
typedef struct watch_s watch_t;
typedef struct static_site_s static_site_t;
struct bus_inproc_s;

typedef struct gw_s {
    config_t cfg;
    metrics_t metrics;
    uv_loop_t *loop;
    server_t *server;
    hub_t *hub;
    policy_t *policy;
    static_site_t *web;            /* the web client, NULL when web_dir is missing */
    int draining;                  /* set once on SIGTERM/SIGINT; /readyz answers 503 */
    uint64_t started_ms;
    int worker, nworkers;          /* this worker's index and the count (1: no worker threads) */
    struct gw_s *workers;          /* nworkers > 1: every worker's gw (for /metrics), else NULL */
    struct bus_inproc_s *inproc;   /* nworkers > 1 without redis_url: the shared bus state */
    uint64_t chat_clients;         /* chat connections attached here (relaxed atomic: /api/stats
                                    * sums the workers) */
} gw_t;

/* Milliseconds of the loop's clock (cached per iteration). */
static inline uint64_t gw_now_ms(const gw_t *gw) { return uv_now(gw->loop); }

#endif
