/* watch: live policy reload. It watches the scripts directory itself with uv_fs_event (kubelet's
 * AtomicWriter swaps a ..data symlink there and never touches the per-key symlinks), debounces
 * bursts of events, optionally polls every reload_poll_ms, and reloads on demand (SIGHUP).
 * policy_load's sha256 turns no-op events into "unchanged". Its handles never keep the loop
 * alive. */
#ifndef CHATGW_WATCH_H
#define CHATGW_WATCH_H

#include "gw.h"

typedef struct watch_s watch_t;

#define WATCH_DEBOUNCE_MS 200

/* Starts watching gw->cfg.scripts_dir for gw->policy. A directory that cannot be watched is
 * logged; polling and watch_trigger still work. */
watch_t *watch_start(gw_t *gw);
/* Schedules a reload after the debounce delay; why names the trigger in the log. */
void watch_trigger(watch_t *w, const char *why);
/* Closes the handles; the memory goes with the last close callback. NULL is fine. */
void watch_stop(watch_t *w);

#endif
