/* watch: calls back when a directory changes. It watches the directory itself with
 * uv_fs_event, because kubelet's AtomicWriter (ConfigMaps, Secrets) swaps a ..data symlink
 * there and never touches the per-key symlinks; it debounces bursts of events, can also poll,
 * and can be triggered by hand (SIGHUP). The callback decides whether anything changed (the
 * policy and the certificates hash what they load). Its handles never keep the loop alive. */
#ifndef CHATGW_WATCH_H
#define CHATGW_WATCH_H

#include <uv.h>

typedef struct watch_s watch_t;

#define WATCH_DEBOUNCE_MS 200      /* a ConfigMap swap's burst of events settles well within; not tuned */

/* why names the trigger: "fs_event", "poll", or what watch_trigger was given. */
typedef void (*watch_cb)(void *ud, const char *why);

/* Starts watching dir; poll_ms > 0 also calls back every poll_ms. A directory that cannot be
 * watched is logged; polling and watch_trigger still work. */
watch_t *watch_start(uv_loop_t *loop, const char *dir, long poll_ms, watch_cb cb, void *ud);
/* Schedules a callback after the debounce delay. NULL is fine. */
void watch_trigger(watch_t *w, const char *why);
/* Closes the handles; the memory goes with the last close callback. NULL is fine. */
void watch_stop(watch_t *w);

#endif
