/* main: the command line (serve, check, version, --help), wiring of the modules, and signals:
 * SIGTERM/SIGINT drain (a second one exits at once), SIGHUP reloads the policy. workers > 1
 * hands over to workers.c; one worker runs on this thread's loop. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <uv.h>

#include "base/config.h"
#include "base/gw.h"
#include "hub/hub.h"
#include "base/log.h"
#include "policy/policy.h"
#include "net/sentinel.h"
#include "net/server.h"
#include "http/static.h"
#include "base/watch.h"
#include "app/routes.h"
#include "app/workers.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chatgw [serve] [--config FILE] [--key value ...]\n"
            "       chatgw check DIR\n"
            "       chatgw version\n"
            "\n"
            "serve    run the gateway (default)\n"
            "check    load a policy directory as the server would, run self_test, print its version\n"
            "version  print the version\n"
            "\n"
            "Every config key can be set in the JSON file, as CHATGW_<KEY>, or as a flag:\n");
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    gw_t *gw = h->data;
    if (gw->draining) {
        log_warn("second signal, exiting now", "{s:i}", "signal", signum);
        _exit(1);
    }
    log_info("signal received, draining", "{s:i}", "signal", signum);
    server_drain(gw);
}

static void on_hup(uv_signal_t *h, int signum)
{
    gw_t *gw = h->data;
    log_info("SIGHUP received, reloading the policy", "{s:i}", "signal", signum);
    watch_trigger(gw->watch, "SIGHUP");
}

/* A reload: a fresh VM, self_test, swap; the outcome is logged (watch callback). */
static void policy_reload(void *ud, const char *why)
{
    gw_t *gw = ud;
    policy_reload_logged(gw->policy, gw->cfg.scripts_dir, why, -1);
}

/* The first load decides whether the process can serve at all: no policy, no start. */
static int policy_boot(gw_t *gw)
{
    policy_host_t host;
    hub_policy_host(gw->hub, &host);
    gw->policy = policy_new(&gw->cfg, &gw->metrics, &host);
    char err[512];
    if (policy_load(gw->policy, gw->cfg.scripts_dir, err, sizeof err) < 0) {
        log_error("policy load failed", "{s:s, s:s}", "dir", gw->cfg.scripts_dir, "error", err);
        fprintf(stderr, "chatgw: %s\n", err);
        return -1;
    }
    log_info("policy loaded", "{s:s, s:s}", "dir", gw->cfg.scripts_dir, "version", policy_version(gw->policy));
    gw->watch = watch_start(gw->loop, gw->cfg.scripts_dir, gw->cfg.reload_poll_ms, policy_reload, gw);
    return 0;
}

static void on_close_noop(uv_handle_t *h) { (void)h; }

#define NOFILE_RESERVE 256          /* listeners, loops, Redis, script reads, logs */

/* Raises the soft open-files limit to what max_connections needs, as far as the hard limit
 * allows (as Redis does for maxclients): a soft limit of 1024, common outside containers,
 * would refuse connections long before max_connections. Says so when it falls short. */
static void serve_nofile_raise(const config_t *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)cfg->max_connections + NOFILE_RESERVE, have = rl.rlim_cur;
    if (have == RLIM_INFINITY || have >= want) return;
    rlim_t to = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
    if (to > have) {
        struct rlimit raised = { .rlim_cur = to, .rlim_max = rl.rlim_max };
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            log_info("open-files limit raised", "{s:I, s:I}", "from", (json_int_t)have, "to", (json_int_t)to);
            have = to;
        }
    }
    if (have < want)
        log_warn("open-files limit is below what max_connections needs", "{s:I, s:I, s:I}", "limit",
                 (json_int_t)have, "max_connections", (json_int_t)cfg->max_connections, "needs", (json_int_t)want);
}

static int cmd_serve(int argc, char **argv)
{
    gw_t gw;
    memset(&gw, 0, sizeof gw);
    char err[512];
    if (config_load(&gw.cfg, argc, argv, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    log_level_set(gw.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    serve_nofile_raise(&gw.cfg);
    if (gw.cfg.workers > 1) {      /* several loops: workers.c; one loop runs right here */
        int code = workers_serve(&gw.cfg);
        config_free(&gw.cfg);
        return code;
    }
    gw.loop = uv_default_loop();
    gw.started_ms = uv_now(gw.loop);

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_signal_init(gw.loop, &sig_term);
    uv_signal_init(gw.loop, &sig_int);
    uv_signal_init(gw.loop, &sig_hup);
    sig_term.data = sig_int.data = sig_hup.data = &gw;
    uv_signal_start(&sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&sig_hup, on_hup, SIGHUP);
    /* signals alone must not keep the loop alive once the server has closed its handles */
    uv_unref((uv_handle_t *)&sig_term);
    uv_unref((uv_handle_t *)&sig_int);
    uv_unref((uv_handle_t *)&sig_hup);

    gw.hub = hub_new(&gw);
    if (hub_bus_open(gw.hub, err, sizeof err) < 0) {   /* a bad redis_url or password file: a config error */
        fprintf(stderr, "%s\n", err);
        log_error("bus open failed", "{s:s}", "error", err);
        hub_free(gw.hub);
        uv_close((uv_handle_t *)&sig_term, on_close_noop);
        uv_close((uv_handle_t *)&sig_int, on_close_noop);
        uv_close((uv_handle_t *)&sig_hup, on_close_noop);
        uv_run(gw.loop, UV_RUN_DEFAULT);
        uv_loop_close(gw.loop);
        config_free(&gw.cfg);
        return 2;
    }
    gw.web = static_site_boot(gw.cfg.web_dir);
    int rc = policy_boot(&gw);
    if (rc == 0) rc = server_start(&gw, &routes_router);
    if (rc == 0) sentinel_start(gw.cfg.drain_timeout_ms);
    if (rc == 0) {
        log_info("started", "{s:s, s:s}", "version", CHATGW_VERSION, "listen", gw.cfg.listen);
        uv_run(gw.loop, UV_RUN_DEFAULT);
        log_info("stopped", NULL);
    }
    sentinel_stop();
    hub_bus_close(gw.hub);         /* before server_free runs the loop: the Redis link would keep it alive */
    server_free(&gw);
    watch_stop(gw.watch);
    hub_free(gw.hub);
    uv_close((uv_handle_t *)&sig_term, on_close_noop);
    uv_close((uv_handle_t *)&sig_int, on_close_noop);
    uv_close((uv_handle_t *)&sig_hup, on_close_noop);
    uv_run(gw.loop, UV_RUN_DEFAULT);
    policy_free(gw.policy);
    static_site_free(gw.web);
    uv_loop_close(gw.loop);
    config_free(&gw.cfg);
    return rc == 0 ? 0 : 1;
}

/* chatgw check DIR [--key value ...]: the server's own load path, then self_test. */
static int cmd_check(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-') {
        fprintf(stderr, "usage: chatgw check DIR [--key value ...]\n");
        return 2;
    }
    config_t cfg;
    char err[512], version[65];
    if (config_load(&cfg, argc - 1, argv + 1, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    log_level_set(LOG_WARN);       /* the policy's own gw.log lines stay quiet unless they warn */
    int rc = policy_check(&cfg, argv[0], version, err, sizeof err);
    config_free(&cfg);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("ok %s\n", version);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return cmd_serve(0, argv + 1);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("chatgw %s\n", CHATGW_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        config_print_help();
        return 0;
    }
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(cmd, "check")) return cmd_check(argc - 2, argv + 2);
    if (!strncmp(cmd, "--", 2)) return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "chatgw: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
