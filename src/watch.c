/* watch: debounced policy reload on directory events, a poll timer and SIGHUP; see watch.h. */
#include "watch.h"

#include <stdlib.h>

#include "buf.h"
#include "log.h"
#include "policy.h"

struct watch_s {
    gw_t *gw;
    uv_fs_event_t event;
    uv_timer_t debounce;
    uv_timer_t poll;
    int handles;                   /* open handles; the struct is freed when it drops to 0 */
    const char *why;               /* the trigger of the pending reload */
};

/* Loads the directory into a fresh VM; logs the outcome. */
static void watch_reload(watch_t *w, const char *why)
{
    gw_t *gw = w->gw;
    char err[512];
    const char *before = policy_version(gw->policy);
    char old[65];
    snprintf(old, sizeof old, "%s", before);
    int rc = policy_load(gw->policy, gw->cfg.scripts_dir, err, sizeof err);
    if (rc > 0)
        log_info("policy reloaded", "{s:s, s:s, s:s}", "version", policy_version(gw->policy), "previous", old,
                 "trigger", why);
    else if (rc == 0)
        log_debug("policy unchanged", "{s:s, s:s}", "version", old, "trigger", why);
    else
        log_error("policy reload failed; the previous policy keeps serving", "{s:s, s:s, s:s}", "error", err,
                  "version", old, "trigger", why);
}

static void watch_on_debounce(uv_timer_t *t)
{
    watch_t *w = t->data;
    watch_reload(w, w->why ? w->why : "event");
    w->why = NULL;
}

static void watch_on_poll(uv_timer_t *t) { watch_reload(t->data, "poll"); }

static void watch_on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    watch_t *w = h->data;
    if (status < 0) {
        log_warn("watching the scripts directory failed", "{s:s, s:s}", "dir", w->gw->cfg.scripts_dir, "error",
                 uv_strerror(status));
        return;
    }
    (void)filename;
    (void)events;
    watch_trigger(w, "fs_event");
}

void watch_trigger(watch_t *w, const char *why)
{
    if (!w) return;
    if (!w->why) w->why = why;     /* the first trigger of a burst names it */
    uv_timer_start(&w->debounce, watch_on_debounce, WATCH_DEBOUNCE_MS, 0);
}

watch_t *watch_start(gw_t *gw)
{
    watch_t *w = xcalloc(1, sizeof *w);
    w->gw = gw;
    uv_loop_t *loop = gw->loop;
    uv_fs_event_init(loop, &w->event);
    uv_timer_init(loop, &w->debounce);
    uv_timer_init(loop, &w->poll);
    w->handles = 3;
    w->event.data = w->debounce.data = w->poll.data = w;
    int rc = uv_fs_event_start(&w->event, watch_on_event, gw->cfg.scripts_dir, 0);
    if (rc < 0)
        log_warn("cannot watch the scripts directory; reload with SIGHUP or reload_poll_ms", "{s:s, s:s}", "dir",
                 gw->cfg.scripts_dir, "error", uv_strerror(rc));
    if (gw->cfg.reload_poll_ms > 0)
        uv_timer_start(&w->poll, watch_on_poll, (uint64_t)gw->cfg.reload_poll_ms, (uint64_t)gw->cfg.reload_poll_ms);
    uv_unref((uv_handle_t *)&w->event);
    uv_unref((uv_handle_t *)&w->debounce);
    uv_unref((uv_handle_t *)&w->poll);
    return w;
}

static void watch_on_closed(uv_handle_t *h)
{
    watch_t *w = h->data;
    if (--w->handles == 0) free(w);
}

void watch_stop(watch_t *w)
{
    if (!w) return;
    uv_close((uv_handle_t *)&w->event, watch_on_closed);
    uv_close((uv_handle_t *)&w->debounce, watch_on_closed);
    uv_close((uv_handle_t *)&w->poll, watch_on_closed);
}
