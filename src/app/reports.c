/* reports: see reports.h. The worker tag is thread-local: each worker thread sets its own, so
 * the policy and bus layers report without knowing which worker they serve. */
#include "app/reports.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/crash.h"
#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"
#include "base/report.h"
#include "net/sentry.h"

struct reports {
    sentry_t *sentry;
};

static _Thread_local int reports_worker = -1;

void reports_worker_set(int worker) { reports_worker = worker; }

static void reports_sink(void *ud, const report_t *r)
{
    reports_t *rep = ud;
    sentry_capture(rep->sentry, r, r->worker >= 0 ? r->worker : reports_worker);
}

/* The first line of path, trimmed, into a new string; NULL with err. */
static char *reports_dsn_read(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "config: sentry_dsn_file: cannot read %s", path);
        return NULL;
    }
    char line[2048];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got) line[0] = '\0';
    size_t n = strcspn(line, "\r\n");
    while (n && (line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
    line[n] = '\0';
    char *s = line;
    while (*s == ' ' || *s == '\t') s++;
    if (!*s) {
        snprintf(err, errlen, "config: sentry_dsn_file: %s is empty", path);
        return NULL;
    }
    return xstrdup(s);
}

static void reports_crash_send(void *ud, const char *path, json_t *event)
{
    reports_t *rep = ud;
    log_warn("crash record of an earlier run: reporting it", "{s:s, s:O?}", "file", path,
             "message", json_object_get(json_object_get(event, "message"), "formatted"));
    sentry_capture_event(rep->sentry, event, NULL, path);   /* the file goes once the DSN took it */
}

static void reports_crash_log(void *ud, const char *path, json_t *event)
{
    (void)ud;
    log_error("crash record of an earlier run (no sentry_dsn: logged here only)", "{s:s, s:O?, s:O?}", "file", path,
              "message", json_object_get(json_object_get(event, "message"), "formatted"), "backtrace",
              json_object_get(json_object_get(event, "extra"), "backtrace"));
    json_decref(event);
    unlink(path);
}

int reports_start(uv_loop_t *loop, const config_t *cfg, metrics_t *metrics, reports_t **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    char *dsn = NULL;
    if (cfg->sentry_dsn_file && cfg->sentry_dsn_file[0]) {
        if (!(dsn = reports_dsn_read(cfg->sentry_dsn_file, err, errlen))) return GW_EINVAL;
    } else if (cfg->sentry_dsn && cfg->sentry_dsn[0]) {
        dsn = xstrdup(cfg->sentry_dsn);
    }
    if (!dsn) {
        crash_records_each(cfg->crash_dir, reports_crash_log, NULL);
        return 0;
    }
    char host[256] = "", why[256];
    const char *server = cfg->node_id && cfg->node_id[0] ? cfg->node_id : (gethostname(host, sizeof host - 1), host);
    sentry_opts_t o = {.dsn = dsn, .release = "chatgw@" CHATGW_VERSION, .environment = cfg->environment,
                       .server_name = server[0] ? server : "chatgw", .metrics = metrics};
    sentry_t *s = sentry_new(loop, &o, why, sizeof why);
    free(dsn);
    if (!s) {
        snprintf(err, errlen, "config: %s: %s", cfg->sentry_dsn_file && cfg->sentry_dsn_file[0] ? "sentry_dsn_file" : "sentry_dsn",
                 why);
        return GW_EINVAL;
    }
    reports_t *rep = xcalloc(1, sizeof *rep);
    rep->sentry = s;
    report_sink_set(reports_sink, rep);
    log_info("error reports on", "{s:s, s:s}", "environment", cfg->environment, "server_name", o.server_name);
    crash_records_each(cfg->crash_dir, reports_crash_send, rep);
    *out = rep;
    return 0;
}

void reports_stop(reports_t *r)
{
    if (!r) return;
    report_sink_set(NULL, NULL);
    sentry_free(r->sentry);
    free(r);
}
