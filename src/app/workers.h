/* workers: `chatgw serve`, the one boot and teardown path for any worker count. Each worker
 * has its own libuv loop, listener socket (SO_REUSEPORT on the same address with workers > 1;
 * worker 0 also holds admin_listen), hub and Lua VM; a worker's server, hub and policy are
 * touched by its loop's thread only. With workers > 1 each worker is a thread and rooms span
 * the workers through the bus: in-process (bus_inproc.h) without redis_url, else one Redis
 * link per worker with node id NODE-w<i>; one worker runs on the main thread's loop. The main
 * thread boots every worker (a failure frees them all before any runs), handles the signals
 * and the policy directory watch on its own loop, and tells the workers through a uv_async_t
 * each: SIGTERM/SIGINT drain every worker (a second signal exits at once), SIGHUP or a change
 * reloads every worker's policy. It returns once every worker stopped and was freed. */
#ifndef CHATGW_WORKERS_H
#define CHATGW_WORKERS_H

#include "base/config.h"

/* Runs the gateway on cfg->workers threads; cfg is read-only meanwhile and stays the
 * caller's. Returns the process exit code: 0 after a drain, 1 when a worker could not start,
 * 2 for a bus configuration error. */
int workers_serve(const config_t *cfg);

#endif
