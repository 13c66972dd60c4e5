/* policy_guard: the wall-clock limit of policy hook calls. One watchdog thread per process
 * (started with the first guard) looks at every guard a few times per timeout; a call it sees
 * in flight, unchanged, for the guard's timeout is interrupted: the watchdog sends SIGURG to
 * the thread running the call, whose handler calls the guard's fire callback there (as Lua's
 * own lua.c sets its hook from a signal handler). The callback runs in signal context: it may
 * only do what is async-signal-safe (setting a Lua hook and a flag is). While the call stays
 * in flight past its timeout the watchdog fires again each tick, so one lost race costs a tick.
 *
 * The fast path is two stores and a load per call and no clock read: a call that ends before
 * the watchdog's next look is never seen. A watchdog that saw no call in flight for a second
 * sleeps until the next call begins (that call wakes it: a lock and a futex wake, once). A guard belongs to one thread at a time (the thread
 * that runs the calls); begin/end never block. The guard does not know Lua. */
#ifndef CHATGW_POLICY_GUARD_H
#define CHATGW_POLICY_GUARD_H

#include <stdint.h>

typedef struct policy_guard_s policy_guard_t;

/* Runs on the call's thread, in the signal handler, when that call overran. */
typedef void (*policy_guard_fire_cb)(void *arg);

/* A guard of timeout_ms (>= 1), registered with the watchdog. Aborts when no thread or signal
 * handler can be set up (the process cannot keep its promise without one). */
policy_guard_t *policy_guard_new(long timeout_ms, policy_guard_fire_cb fire, void *arg);
/* Unregisters and frees g; no call may be in flight. */
void policy_guard_free(policy_guard_t *g);

/* The calling thread starts a guarded call. Nested begin/end pairs are the caller's business:
 * call these once per outermost call. */
void policy_guard_begin(policy_guard_t *g);
/* The call ended: once this returns the fire callback will not run for it. */
void policy_guard_end(policy_guard_t *g);

long policy_guard_timeout_ms(const policy_guard_t *g);

#endif
