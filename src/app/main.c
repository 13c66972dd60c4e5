/* main: the command line (serve, check, replay, version, --help). serve loads the configuration and
 * hands it to workers.c, which boots, runs and frees the gateway for any worker count. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/config.h"
#include "base/log.h"
#include "policy/policy.h"
#include "app/workers.h"
#include "app/replay.h"
#include "app/probe.h"
#include "app/crash.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chatgw [serve] [--config FILE] [--key value ...]\n"
            "       chatgw check DIR\n"
            "       chatgw replay --stable DIR --candidate DIR [--max-diff-rate X] [--examples N] FILE\n"
            "       chatgw probe ws[s]://HOST[:PORT][/PATH] [--timeout-ms N] [--token T] ...\n"
            "       chatgw version\n"
            "\n"
            "serve    run the gateway (default)\n"
            "check    load a policy directory as the server would, run self_test, print its version\n"
            "replay   run recorded hook inputs (policy_record_file) through two policies, print the disagreements\n"
            "probe    connect, join a probe room, send and receive a message, read /readyz; one JSON line\n"
            "version  print the version\n"
            "\n"
            "Every config key can be set in the JSON file, as CHATGW_<KEY>, or as a flag:\n");
}

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
    config_t cfg;
    char err[512];
    if (config_load(&cfg, argc, argv, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    log_level_set(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    if (crash_install(cfg.crash_dir, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        config_free(&cfg);
        return 2;
    }
    serve_nofile_raise(&cfg);
    int code = workers_serve(&cfg);
    config_free(&cfg);
    return code;
}

/* chatgw check DIR [--key value ...]: the server's own load path, then self_test. */
static int cmd_check(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-') {
        fprintf(stderr, "usage: chatgw check DIR [--key value ...]\n");
        return 2;
    }
    config_t cfg;
    char err[512], version[POLICY_VERSION_SIZE];
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
    if (!strcmp(cmd, "replay")) return replay_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "probe")) return probe_main(argc - 2, argv + 2);
    if (!strncmp(cmd, "--", 2)) return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "chatgw: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
