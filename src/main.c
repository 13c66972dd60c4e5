/* main: the command line (serve, check, version, --help), wiring of the modules, and signals:
 * SIGTERM/SIGINT drain (a second one exits at once), SIGHUP reloads the policy. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "config.h"
#include "gw.h"
#include "hub.h"
#include "log.h"
#include "server.h"

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
    (void)h;
    log_info("SIGHUP received", "{s:i}", "signal", signum);
}

static void on_close_noop(uv_handle_t *h) { (void)h; }

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
    int rc = server_start(&gw);
    if (rc == 0) {
        log_info("started", "{s:s, s:s}", "version", CHATGW_VERSION, "listen", gw.cfg.listen);
        uv_run(gw.loop, UV_RUN_DEFAULT);
        log_info("stopped", NULL);
    }
    server_free(&gw);
    hub_free(gw.hub);
    uv_close((uv_handle_t *)&sig_term, on_close_noop);
    uv_close((uv_handle_t *)&sig_int, on_close_noop);
    uv_close((uv_handle_t *)&sig_hup, on_close_noop);
    uv_run(gw.loop, UV_RUN_DEFAULT);
    uv_loop_close(gw.loop);
    config_free(&gw.cfg);
    return rc == 0 ? 0 : 1;
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
    if (!strncmp(cmd, "--", 2)) return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "chatgw: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
