/* workers: several event-loop threads in one process; see workers.h.
 *
 * Threads: the main thread owns the pool, the signals and the watch; worker i's thread owns
 * gws[i] and everything hanging from it. They meet in two places only: the bus_inproc state
 * (its own mutex) and the control requests (pool.mu guards each worker's pending requests and
 * whether its async handle is still open, so no uv_async_send can reach a closed handle).
 * Metrics are per worker and summed by /metrics. */
#define _GNU_SOURCE            /* pthread_setname_np */
#include "app/workers.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "bus/bus_inproc.h"
#include "base/gw.h"
#include "hub/hub.h"
#include "base/log.h"
#include "policy/policy.h"
#include "net/sentinel.h"
#include "net/server.h"
#include "http/static.h"
#include "base/watch.h"
#include "app/routes.h"

enum { WORKER_DRAIN = 1, WORKER_RELOAD = 2 };

typedef struct pool_s pool_t;

typedef struct {
    pool_t *pool;
    gw_t *gw;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t ctl;
    int ctl_closed;                /* under pool.mu */
    int requests;                  /* WORKER_* bits, under pool.mu */
    const char *why;               /* the reload's trigger (a string literal), under pool.mu */
} worker_t;

struct pool_s {
    config_t cfg;                  /* a shallow copy: the caller owns the strings */
    int n;
    gw_t *gws;
    worker_t *ws;
    char listen[80];               /* the address worker 0 bound: the others bind it too */
    bus_inproc_t *inproc;
    uv_loop_t *loop;               /* the main thread's */
    uv_signal_t sig_term, sig_int, sig_hup;
    watch_t *watch;
    uv_async_t done;               /* a worker finished */
    uv_mutex_t mu;
    int ndone, done_closed;        /* under mu */
    int draining;
};

/* ---- on a worker's thread ---- */

static void worker_on_ctl(uv_async_t *a)
{
    worker_t *w = a->data;
    uv_mutex_lock(&w->pool->mu);
    int req = w->requests;
    const char *why = w->why;
    w->requests = 0;
    uv_mutex_unlock(&w->pool->mu);
    if (req & WORKER_RELOAD) policy_reload_logged(w->gw->policy, w->gw->cfg.scripts_dir, why ? why : "reload", w->gw->worker);
    if (req & WORKER_DRAIN) server_drain(w->gw);
}

/* Frees what worker_boot made (whatever of it was made); runs the worker's loop to finish
 * the closes. On the worker's thread, or on the main thread when it never started. */
static void worker_teardown(worker_t *w)
{
    gw_t *gw = w->gw;
    if (gw->hub) hub_bus_close(gw->hub);   /* leaves the shared presence; before server_free runs the loop */
    server_free(gw);
    uv_mutex_lock(&w->pool->mu);
    w->ctl_closed = 1;
    uv_mutex_unlock(&w->pool->mu);
    uv_close((uv_handle_t *)&w->ctl, NULL);
    hub_free(gw->hub);
    uv_run(gw->loop, UV_RUN_DEFAULT);
    policy_free(gw->policy);
    static_site_free(gw->web);
    if (uv_loop_close(gw->loop) != 0) log_warn("worker loop closed with handles open", "{s:i}", "worker", gw->worker);
}

static void worker_run(void *arg)
{
    worker_t *w = arg;
    pool_t *p = w->pool;
    char name[16];                 /* for top -H, gdb and the stall test */
    snprintf(name, sizeof name, "worker-%d", w->gw->worker);
    pthread_setname_np(pthread_self(), name);
    uv_run(w->gw->loop, UV_RUN_DEFAULT);
    log_info("stopped", "{s:i}", "worker", w->gw->worker);
    worker_teardown(w);
    uv_mutex_lock(&p->mu);
    p->ndone++;
    if (!p->done_closed) uv_async_send(&p->done);
    uv_mutex_unlock(&p->mu);
}

/* ---- on the main thread ---- */

/* Boots worker i on its loop (not running yet). 0, 1 (could not start) or 2 (bus config). */
static int worker_boot(pool_t *p, int i)
{
    worker_t *w = &p->ws[i];
    gw_t *gw = &p->gws[i];
    w->pool = p;
    w->gw = gw;
    gw->cfg = p->cfg;
    if (i > 0) gw->cfg.listen = p->listen;   /* the port worker 0 got, when listen asked for 0 */
    gw->worker = i;
    gw->nworkers = p->n;
    gw->workers = p->gws;
    gw->inproc = p->inproc;
    uv_loop_init(&w->loop);
    gw->loop = &w->loop;
    gw->started_ms = uv_now(gw->loop);
    uv_async_init(gw->loop, &w->ctl, worker_on_ctl);
    w->ctl.data = w;
    uv_unref((uv_handle_t *)&w->ctl);
    gw->hub = hub_new(gw);
    char err[512];
    if (hub_bus_open(gw->hub, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        log_error("bus open failed", "{s:s, s:i}", "error", err, "worker", i);
        return 2;
    }
    gw->web = static_site_boot(gw->cfg.web_dir);
    policy_host_t host;
    hub_policy_host(gw->hub, &host);
    gw->policy = policy_new(&gw->cfg, &gw->metrics, &host);
    if (policy_load(gw->policy, gw->cfg.scripts_dir, err, sizeof err) < 0) {
        log_error("policy load failed", "{s:s, s:s, s:i}", "dir", gw->cfg.scripts_dir, "error", err, "worker", i);
        fprintf(stderr, "chatgw: %s\n", err);
        return 1;
    }
    if (i == 0)
        log_info("policy loaded", "{s:s, s:s}", "dir", gw->cfg.scripts_dir, "version", policy_version(gw->policy));
    if (server_start(gw, &routes_router) < 0) return 1;
    if (i == 0 && server_listen_addr(gw, p->listen, sizeof p->listen) < 0) return 1;
    return 0;
}

/* Queues requests for every worker still listening to them and wakes it. */
static void pool_request(pool_t *p, int req, const char *why)
{
    uv_mutex_lock(&p->mu);
    for (int i = 0; i < p->n; i++) {
        worker_t *w = &p->ws[i];
        if (w->ctl_closed) continue;
        w->requests |= req;
        if (why) w->why = why;
        uv_async_send(&w->ctl);
    }
    uv_mutex_unlock(&p->mu);
}

static void pool_on_stop_signal(uv_signal_t *h, int signum)
{
    pool_t *p = h->data;
    if (p->draining) {
        log_warn("second signal, exiting now", "{s:i}", "signal", signum);
        _exit(1);
    }
    p->draining = 1;
    log_info("signal received, draining", "{s:i, s:i}", "signal", signum, "workers", p->n);
    pool_request(p, WORKER_DRAIN, NULL);
}

static void pool_on_hup(uv_signal_t *h, int signum)
{
    pool_t *p = h->data;
    log_info("SIGHUP received, reloading the policy", "{s:i}", "signal", signum);
    watch_trigger(p->watch, "SIGHUP");
}

/* The watch's trigger names are literals that outlive any request; anything else is "reload". */
static const char *pool_why(const char *why)
{
    static const char *const known[] = {"fs_event", "poll", "SIGHUP"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(why, known[i])) return known[i];
    return "reload";
}

static void pool_on_watch(void *ud, const char *why)
{
    pool_request(ud, WORKER_RELOAD, pool_why(why));
}

static void pool_on_done(uv_async_t *a)
{
    pool_t *p = a->data;
    uv_mutex_lock(&p->mu);
    int all = p->ndone == p->n;
    if (all) p->done_closed = 1;
    uv_mutex_unlock(&p->mu);
    if (!all) return;
    uv_close((uv_handle_t *)&p->done, NULL);
    watch_stop(p->watch);
    p->watch = NULL;
    uv_close((uv_handle_t *)&p->sig_term, NULL);
    uv_close((uv_handle_t *)&p->sig_int, NULL);
    uv_close((uv_handle_t *)&p->sig_hup, NULL);
}

static void pool_signals_start(pool_t *p)
{
    uv_signal_t *sigs[3] = {&p->sig_term, &p->sig_int, &p->sig_hup};
    int nums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(p->loop, sigs[i]);
        sigs[i]->data = p;
        uv_signal_start(sigs[i], i == 2 ? pool_on_hup : pool_on_stop_signal, nums[i]);
        uv_unref((uv_handle_t *)sigs[i]);
    }
}

/* Boots every worker; on a failure frees the ones made (none runs yet). 0 or an exit code. */
static int pool_boot(pool_t *p)
{
    for (int i = 0; i < p->n; i++) {
        int rc = worker_boot(p, i);
        if (rc == 0) continue;
        for (int k = 0; k <= i; k++) worker_teardown(&p->ws[k]);
        return rc;
    }
    return 0;
}

static void pool_run(pool_t *p)
{
    uv_async_init(p->loop, &p->done, pool_on_done);
    p->done.data = p;
    pool_signals_start(p);
    p->watch = watch_start(p->loop, p->cfg.scripts_dir, p->cfg.reload_poll_ms, pool_on_watch, p);
    sentinel_start(p->cfg.drain_timeout_ms);
    for (int i = 0; i < p->n; i++)
        if (uv_thread_create(&p->ws[i].thread, worker_run, &p->ws[i]) != 0) abort();
    log_info("started", "{s:s, s:s, s:i}", "version", CHATGW_VERSION, "listen", p->cfg.listen, "workers", p->n);
    uv_run(p->loop, UV_RUN_DEFAULT);   /* until the last worker is done (pool_on_done) */
    for (int i = 0; i < p->n; i++) uv_thread_join(&p->ws[i].thread);
    sentinel_stop();
    log_info("stopped", "{s:i}", "workers", p->n);
}

int workers_serve(const config_t *cfg)
{
    pool_t *p = xcalloc(1, sizeof *p);
    p->cfg = *cfg;
    p->n = cfg->workers;
    p->gws = xcalloc((size_t)p->n, sizeof *p->gws);
    p->ws = xcalloc((size_t)p->n, sizeof *p->ws);
    if (!cfg->redis_url || !cfg->redis_url[0]) p->inproc = bus_inproc_new(cfg->history_size);
    if (uv_mutex_init(&p->mu) != 0) abort();
    p->loop = uv_default_loop();
    int rc = pool_boot(p);
    if (rc == 0) pool_run(p);
    uv_run(p->loop, UV_RUN_DEFAULT);   /* the closes */
    uv_loop_close(p->loop);
    bus_inproc_free(p->inproc);
    uv_mutex_destroy(&p->mu);
    free(p->gws);
    free(p->ws);
    free(p);
    return rc;
}
