/* gw: the one process-level struct that ties the modules together. main.c owns it; every
 * module reaches shared state (config, metrics, readiness) through it. No other mutable
 * global state exists in chatgw. */
#ifndef CHATGW_GW_H
#define CHATGW_GW_H

#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "metrics.h"

#ifndef CHATGW_VERSION
#define CHATGW_VERSION "0.0.0"
#endif

typedef struct server_s server_t;
typedef struct hub_s hub_t;
typedef struct policy_s policy_t;
typedef struct watch_s watch_t;
typedef struct static_site_s static_site_t;

typedef struct gw_s {
    config_t cfg;
    metrics_t metrics;
    uv_loop_t *loop;
    server_t *server;
    hub_t *hub;
    policy_t *policy;
    watch_t *watch;                /* live reload of policy */
    static_site_t *web;            /* the web client, NULL when web_dir is missing */
    int draining;                  /* set once on SIGTERM/SIGINT; /readyz answers 503 */
    uint64_t started_ms;
} gw_t;

/* Milliseconds of the loop's clock (cached per iteration). */
static inline uint64_t gw_now_ms(const gw_t *gw) { return uv_now(gw->loop); }

#endif
