/* watch: debounced directory events, a poll timer and manual triggers; see watch.h. */
#include "base/watch.h"

#include <stdlib.h>

#include "base/buf.h"
#include "base/log.h"

struct watch_s {
    uv_fs_event_t event;
    uv_timer_t debounce;
    uv_timer_t poll;
    int handles;                   /* open handles; the struct is freed when it drops to 0 */
    char *dir;
    const char *why;               /* the first trigger of the pending burst */
    watch_cb cb;
    void *ud;
};

static void watch_on_debounce(uv_timer_t *t)
{
    watch_t *w = t->data;
    const char *why = w->why ? w->why : "fs_event";
    w->why = NULL;
    w->cb(w->ud, why);
}

static void watch_on_poll(uv_timer_t *t)
{
    watch_t *w = t->data;
    w->cb(w->ud, "poll");
}

static void watch_on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    watch_t *w = h->data;
    (void)filename;
    (void)events;
    if (status < 0) {
        log_warn("watching a directory failed", "{s:s, s:s}", "dir", w->dir, "error", uv_strerror(status));
        return;
    }
    watch_trigger(w, "fs_event");
}

void watch_trigger(watch_t *w, const char *why)
{
    if (!w) return;
    if (!w->why) w->why = why;
    uv_timer_start(&w->debounce, watch_on_debounce, WATCH_DEBOUNCE_MS, 0);
}

watch_t *watch_start(uv_loop_t *loop, const char *dir, long poll_ms, watch_cb cb, void *ud)
{
    watch_t *w = xcalloc(1, sizeof *w);
    w->dir = xstrdup(dir);
    w->cb = cb;
    w->ud = ud;
    uv_fs_event_init(loop, &w->event);
    uv_timer_init(loop, &w->debounce);
    uv_timer_init(loop, &w->poll);
    w->handles = 3;
    w->event.data = w->debounce.data = w->poll.data = w;
    int rc = uv_fs_event_start(&w->event, watch_on_event, dir, 0);
    if (rc < 0)
        log_warn("cannot watch a directory; changes need SIGHUP or polling", "{s:s, s:s}", "dir", dir, "error",
                 uv_strerror(rc));
    if (poll_ms > 0) uv_timer_start(&w->poll, watch_on_poll, (uint64_t)poll_ms, (uint64_t)poll_ms);
    uv_unref((uv_handle_t *)&w->event);
    uv_unref((uv_handle_t *)&w->debounce);
    uv_unref((uv_handle_t *)&w->poll);
    return w;
}

static void watch_on_closed(uv_handle_t *h)
{
    watch_t *w = h->data;
    if (--w->handles) return;
    free(w->dir);
    free(w);
}

void watch_stop(watch_t *w)
{
    if (!w) return;
    uv_close((uv_handle_t *)&w->event, watch_on_closed);
    uv_close((uv_handle_t *)&w->debounce, watch_on_closed);
    uv_close((uv_handle_t *)&w->poll, watch_on_closed);
}
