/* workers: the gateway's event loops; see workers.h.
 *
 * Threads (workers > 1): the main thread owns the pool, the signals and the watch; worker i's
 * thread owns gws[i] and everything hanging from it. They meet in two places only: the
 * bus_inproc state (its own mutex) and the control requests (pool.mu guards each worker's
 * pending requests and whether its async handle is still open, so no uv_async_send can reach
 * a closed handle). Metrics are per worker and summed by /metrics. One worker runs on the main
 * thread's loop instead, beside the signals and the watch, and logs without a "worker" field,
 * as a one-loop process: the boot, the requests and the teardown are the same. */
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
#include "policy/policy_rollout.h"
#include "net/sentinel.h"
#include "net/server.h"
#include "http/static.h"
#include "base/watch.h"
#include "app/routes.h"
#include "app/crash.h"
#include "app/reports.h"
#include "base/report.h"

enum { WORKER_DRAIN = 1, WORKER_RELOAD = 2, WORKER_RELOAD_CANDIDATE = 4 };

typedef struct pool_s pool_t;

typedef struct {
    pool_t *pool;
    gw_t *gw;
    uv_loop_t loop;                /* workers > 1: the worker's own; one worker uses the main loop */
    uv_thread_t thread;
    uv_async_t ctl;
    int ctl_closed;                /* under pool.mu; 1 until the handle is made */
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
    reports_t *reports;            /* error reports (sentry_dsn), NULL when off */
    uv_loop_t *loop;               /* the main thread's */
    uv_signal_t sig_term, sig_int, sig_hup;
    watch_t *watch;
    watch_t *watch_candidate;      /* policy_candidate_dir's, when a candidate is configured */
    uv_async_t done;               /* a worker thread finished */
    uv_mutex_t mu;
    int ndone, done_closed;        /* under mu */
    int draining;
};

/* ---- on the worker's loop ---- */

/* The worker's index for policy_reload_logged: -1 (no "worker" field) when it is the only one. */
static int worker_log_index(const gw_t *gw) { return gw->nworkers > 1 ? gw->worker : -1; }

static void worker_on_ctl(uv_async_t *a)
{
    worker_t *w = a->data;
    uv_mutex_lock(&w->pool->mu);
    int req = w->requests;
    const char *why = w->why;
    w->requests = 0;
    uv_mutex_unlock(&w->pool->mu);
    if (req & WORKER_RELOAD) {
        policy_reload_logged(w->gw->policy, w->gw->cfg.scripts_dir, why ? why : "reload", worker_log_index(w->gw));
        crash_policy_note(policy_version(w->gw->policy));
    }
    if ((req & WORKER_RELOAD_CANDIDATE) && w->gw->policy)
        policy_candidate_reload_logged(w->gw->policy, w->gw->cfg.policy_candidate_dir, why ? why : "reload",
                                       worker_log_index(w->gw));
    if (req & WORKER_DRAIN) server_drain(w->gw);
}

/* Each worker_*_open below makes one stage of a worker, or frees what it made of it and
 * returns an exit code; worker_*_close frees a whole stage. */

/* The loop (its own, or the main thread's for a lone worker) and the control handle. */
static int worker_loop_open(worker_t *w)
{
    gw_t *gw = w->gw;
    int rc;
    gw->loop = w->pool->loop;
    if (w->pool->n > 1) {
        if ((rc = uv_loop_init(&w->loop)) < 0) goto fail;
        gw->loop = &w->loop;
    }
    if ((rc = uv_async_init(gw->loop, &w->ctl, worker_on_ctl)) < 0) goto fail_loop;
    w->ctl.data = w;
    uv_unref((uv_handle_t *)&w->ctl);
    uv_mutex_lock(&w->pool->mu);
    w->ctl_closed = 0;             /* requests may reach it now */
    uv_mutex_unlock(&w->pool->mu);
    gw->started_ms = uv_now(gw->loop);
    return 0;

fail_loop:
    if (gw->loop == &w->loop) uv_loop_close(gw->loop);
fail:
    log_error("worker loop failed", "{s:s, s:i}", "error", uv_strerror(rc), "worker", gw->worker);
    return 1;
}

/* Runs the loop to finish every close; then closes it when it is the worker's own. */
static void worker_loop_close(worker_t *w)
{
    gw_t *gw = w->gw;
    uv_mutex_lock(&w->pool->mu);
    w->ctl_closed = 1;
    uv_mutex_unlock(&w->pool->mu);
    uv_close((uv_handle_t *)&w->ctl, NULL);
    uv_run(gw->loop, UV_RUN_DEFAULT);
    if (gw->loop == &w->loop && uv_loop_close(gw->loop) != 0)
        log_warn("worker loop closed with handles open", "{s:i}", "worker", gw->worker);
}

/* The hub and its bus; a bad redis_url or password file is a configuration error (2). */
static int worker_hub_open(worker_t *w)
{
    gw_t *gw = w->gw;
    char err[512];
    gw->hub = hub_new(gw);
    if (hub_bus_open(gw->hub, err, sizeof err) == 0) return 0;
    fprintf(stderr, "%s\n", err);
    log_error("bus open failed", gw->nworkers > 1 ? "{s:s, s:i}" : "{s:s}", "error", err, "worker", gw->worker);
    hub_free(gw->hub);
    gw->hub = NULL;
    return 2;
}

static void worker_hub_close(worker_t *w)
{
    hub_free(w->gw->hub);
    w->gw->hub = NULL;
}

static void worker_policy_close(worker_t *w)
{
    gw_t *gw = w->gw;
    policy_free(gw->policy);
    gw->policy = NULL;
    static_site_free(gw->web);
    gw->web = NULL;
}

/* The candidate policy and the recorder, beside a loaded policy. A candidate that fails to
 * load is logged and stays out of every decision until a reload loads it (the live policy
 * serves either way); a record file that cannot be opened stops the boot (1). */
static int worker_rollout_open(worker_t *w)
{
    gw_t *gw = w->gw;
    char err[512];
    int mode = policy_rollout_mode_parse(gw->cfg.policy_candidate_mode);
    if (mode > POLICY_ROLLOUT_OFF && !gw->cfg.policy_candidate_dir[0]) {
        if (gw->worker == 0) log_warn("policy_candidate_mode is set but policy_candidate_dir is empty: no candidate", NULL);
    } else if (mode > POLICY_ROLLOUT_OFF) {
        int rc = policy_candidate_open(gw->policy, gw->cfg.policy_candidate_dir, mode, err, sizeof err);
        if (rc < 0)
            log_error("policy candidate load failed; it takes no part until a reload loads it", "{s:s, s:s}", "dir",
                      gw->cfg.policy_candidate_dir, "error", err);
        else if (gw->worker == 0)
            log_info("policy candidate loaded", "{s:s, s:s, s:s}", "dir", gw->cfg.policy_candidate_dir, "mode",
                     gw->cfg.policy_candidate_mode, "version", policy_candidate_version(gw->policy));
    }
    if (!gw->cfg.policy_record_file[0]) return 0;
    if (policy_record_start(gw->policy, gw->cfg.policy_record_file, gw->cfg.policy_record_sample,
                            gw->cfg.policy_record_redact, err, sizeof err) == 0)
        return 0;
    fprintf(stderr, "chatgw: %s\n", err);
    log_error("policy recording failed to start", "{s:s}", "error", err);
    worker_policy_close(w);
    return 1;
}

/* The web client and the policy: the first load decides whether the process can serve. When it
 * fails, policy_boot = exit stops the boot (1); wait keeps the empty holder: the worker serves
 * unready and refuses every chat connection (hub_policy_connect) until a reload loads one. */
static int worker_policy_open(worker_t *w)
{
    gw_t *gw = w->gw;
    policy_host_t host;
    char err[512];
    gw->web = static_site_boot(gw->cfg.web_dir);
    hub_policy_host(gw->hub, &host);
    gw->policy = policy_new(&gw->cfg, &gw->metrics, &host);
    if (policy_load(gw->policy, gw->cfg.scripts_dir, err, sizeof err) < 0) {
        int wait = !strcmp(gw->cfg.policy_boot, "wait");
        log_error(wait ? "policy load failed; serving unready, refusing chat, until a reload loads one"
                       : "policy load failed",
                  gw->nworkers > 1 ? "{s:s, s:s, s:i}" : "{s:s, s:s}", "dir", gw->cfg.scripts_dir, "error", err,
                  "worker", gw->worker);
        fprintf(stderr, "chatgw: %s\n", err);
        if (gw->worker == 0) {     /* every worker loads the same files: one report */
            report_t r = {.kind = "policy_load_failed", .level = "error", .message = err, .hook = "load",
                          .worker = gw->worker};
            report_emit(&r);
        }
        if (wait) return worker_rollout_open(w);   /* the candidate waits beside it */
        worker_policy_close(w);
        return 1;
    }
    if (gw->worker == 0)
        log_info("policy loaded", "{s:s, s:s}", "dir", gw->cfg.scripts_dir, "version", policy_version(gw->policy));
    crash_policy_note(policy_version(gw->policy));
    return worker_rollout_open(w);
}

static void worker_server_close(worker_t *w)
{
    hub_bus_close(w->gw->hub);     /* leaves the shared presence; the Redis link would keep server_free's loop run alive */
    server_free(w->gw);
}

/* The listeners; worker 0 notes the address it bound for the others. */
static int worker_server_open(worker_t *w)
{
    gw_t *gw = w->gw;
    pool_t *p = w->pool;
    if (server_start(gw, &routes_router) == 0 &&
        (gw->worker > 0 || server_listen_addr(gw, p->listen, sizeof p->listen) == 0))
        return 0;
    worker_server_close(w);
    return 1;
}

/* Frees a booted worker, stage by stage in reverse, and runs its loop to finish the closes.
 * On the worker's thread, or on the main thread when it never started or runs there. */
static void worker_teardown(worker_t *w)
{
    worker_server_close(w);
    worker_policy_close(w);
    worker_hub_close(w);
    worker_loop_close(w);
}

/* Boots worker i (its loop not running yet). 0, or an exit code (1: could not start, 2: bus
 * configuration) once what it made is freed. */
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
    gw->workers = p->n > 1 ? p->gws : NULL;
    gw->inproc = p->inproc;
    int rc = worker_loop_open(w);
    if (rc != 0) return rc;
    if ((rc = worker_hub_open(w)) != 0) goto fail_loop;
    if ((rc = worker_policy_open(w)) != 0) goto fail_hub;
    if ((rc = worker_server_open(w)) != 0) goto fail_policy;
    return 0;

fail_policy:
    worker_policy_close(w);
fail_hub:
    worker_hub_close(w);
fail_loop:
    worker_loop_close(w);
    return rc;
}

/* Runs the worker's loop on the calling thread until it drained, then frees the worker. */
static void worker_run(worker_t *w)
{
    pool_t *p = w->pool;
    uv_run(w->gw->loop, UV_RUN_DEFAULT);
    log_info("stopped", p->n > 1 ? "{s:i}" : NULL, "worker", w->gw->worker);
    worker_teardown(w);
    uv_mutex_lock(&p->mu);
    p->ndone++;
    if (!p->done_closed) uv_async_send(&p->done);
    uv_mutex_unlock(&p->mu);
}

static void worker_thread(void *arg)
{
    worker_t *w = arg;
    char name[16];                 /* for top -H, gdb and the stall test */
    snprintf(name, sizeof name, "worker-%d", w->gw->worker);
    pthread_setname_np(pthread_self(), name);
    reports_worker_set(w->gw->worker);
    worker_run(w);
}

/* ---- on the main thread ---- */

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
    log_info("signal received, draining", p->n > 1 ? "{s:i, s:i}" : "{s:i}", "signal", signum, "workers", p->n);
    pool_request(p, WORKER_DRAIN, NULL);
}

static void pool_on_hup(uv_signal_t *h, int signum)
{
    pool_t *p = h->data;
    log_info("SIGHUP received, reloading the policy", "{s:i}", "signal", signum);
    watch_trigger(p->watch, "SIGHUP");
    watch_trigger(p->watch_candidate, "SIGHUP");
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

static void pool_on_watch_candidate(void *ud, const char *why)
{
    pool_request(ud, WORKER_RELOAD_CANDIDATE, pool_why(why));
}

static void pool_main_close(pool_t *p)
{
    uv_mutex_lock(&p->mu);
    p->done_closed = 1;
    uv_mutex_unlock(&p->mu);
    uv_close((uv_handle_t *)&p->done, NULL);
    watch_stop(p->watch);
    p->watch = NULL;
    watch_stop(p->watch_candidate);
    p->watch_candidate = NULL;
    uv_close((uv_handle_t *)&p->sig_term, NULL);
    uv_close((uv_handle_t *)&p->sig_int, NULL);
    uv_close((uv_handle_t *)&p->sig_hup, NULL);
}

static void pool_on_done(uv_async_t *a)
{
    pool_t *p = a->data;
    uv_mutex_lock(&p->mu);
    int all = p->ndone == p->n;
    uv_mutex_unlock(&p->mu);
    if (all) pool_main_close(p);
}

/* The main loop's signals, made before the workers boot (a SIGTERM once a listener is up
 * drains instead of killing the process; its callback runs when the loop first runs), and
 * done, which keeps the loop up while worker threads run (a lone worker's own handles keep it
 * up). Signals alone must not keep it alive once the server has closed its handles. */
static void pool_main_start(pool_t *p)
{
    uv_async_init(p->loop, &p->done, pool_on_done);
    p->done.data = p;
    if (p->n == 1) uv_unref((uv_handle_t *)&p->done);
    uv_signal_t *sigs[3] = {&p->sig_term, &p->sig_int, &p->sig_hup};
    int nums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(p->loop, sigs[i]);
        sigs[i]->data = p;
        uv_signal_start(sigs[i], i == 2 ? pool_on_hup : pool_on_stop_signal, nums[i]);
        uv_unref((uv_handle_t *)sigs[i]);
    }
    /* Before the workers load the policy, as the signals: an edit once a listener is up
     * reloads (one during the boot is read by the first load or reloads after it). */
    p->watch = watch_start(p->loop, p->cfg.scripts_dir, p->cfg.reload_poll_ms, pool_on_watch, p);
    if (strcmp(p->cfg.policy_candidate_mode, "off") && p->cfg.policy_candidate_dir[0])
        p->watch_candidate = watch_start(p->loop, p->cfg.policy_candidate_dir, p->cfg.reload_poll_ms,
                                         pool_on_watch_candidate, p);
}

/* Boots every worker; on a failure frees the ones booted, last first (none runs yet). 0 or an
 * exit code. */
static int pool_boot(pool_t *p)
{
    for (int i = 0; i < p->n; i++) {
        int rc = worker_boot(p, i);
        if (rc == 0) continue;
        while (i-- > 0) worker_teardown(&p->ws[i]);
        return rc;
    }
    return 0;
}

/* Runs the workers until every one drained and was freed: on their threads, or a lone one
 * here on the main loop. */
static void pool_run(pool_t *p)
{
    sentinel_start(p->cfg.drain_timeout_ms);
    for (int i = 0; p->n > 1 && i < p->n; i++)
        if (uv_thread_create(&p->ws[i].thread, worker_thread, &p->ws[i]) != 0) abort();
    log_info("started", p->n > 1 ? "{s:s, s:s, s:i}" : "{s:s, s:s}", "version", CHATGW_VERSION, "listen",
             p->cfg.listen, "workers", p->n);
    if (p->n == 1) {
        worker_run(&p->ws[0]);
        pool_main_close(p);
    } else {
        uv_run(p->loop, UV_RUN_DEFAULT);   /* until the last worker is done (pool_on_done) */
        for (int i = 0; i < p->n; i++) uv_thread_join(&p->ws[i].thread);
    }
    sentinel_stop();
    if (p->n > 1) log_info("stopped", "{s:i}", "workers", p->n);
}

int workers_serve(const config_t *cfg)
{
    pool_t *p = xcalloc(1, sizeof *p);
    p->cfg = *cfg;
    p->n = cfg->workers;
    p->gws = xcalloc((size_t)p->n, sizeof *p->gws);
    p->ws = xcalloc((size_t)p->n, sizeof *p->ws);
    for (int i = 0; i < p->n; i++) p->ws[i].ctl_closed = 1;
    if (p->n > 1 && (!cfg->redis_url || !cfg->redis_url[0])) p->inproc = bus_inproc_new(cfg->history_size);
    if (uv_mutex_init(&p->mu) != 0) abort();
    p->loop = uv_default_loop();
    pool_main_start(p);
    char err[512];
    int rc = reports_start(p->loop, cfg, &p->gws[0].metrics, &p->reports, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        log_error("error reports not started", "{s:s}", "error", err);
        rc = 2;
    } else {
        reports_worker_set(p->n == 1 ? 0 : -1);   /* a lone worker runs here, on the main thread */
        rc = pool_boot(p);
    }
    if (rc == 0) pool_run(p);
    else pool_main_close(p);
    reports_stop(p->reports);
    uv_run(p->loop, UV_RUN_DEFAULT);   /* the closes */
    uv_loop_close(p->loop);
    bus_inproc_free(p->inproc);
    uv_mutex_destroy(&p->mu);
    free(p->gws);
    free(p->ws);
    free(p);
    return rc;
}
