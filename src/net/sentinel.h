/* sentinel: a thread with a loop of its own that does what a stuck event loop cannot do for
 * itself. Nothing in chatgw should block a loop for long (the policy runs under its time
 * guard), so this is the net under a bug in some C path.
 *
 *   - Each server registers a slot and beats it from a timer on its own loop. A slot not beaten
 *     for SENTINEL_STALL_MS is stuck: the sentinel logs it (once per episode, and again when it
 *     beats) and hands every new connection waiting on the slot's plain listeners to the slot's
 *     answer callback (the server answers 503 there), so probes and clients get an answer
 *     instead of a hang, until the loop beats again.
 *   - SIGTERM and SIGINT reach the sentinel's loop too. If the process is still there
 *     drain_timeout_ms + SENTINEL_EXIT_GRACE_MS after the first one, it exits with status 1;
 *     a second one exits at once, as the main loop would.
 *
 * Slots may be created before the sentinel starts (or without it, in tests); all calls are
 * thread-safe. After sentinel_slot_forget or _free returns, the answer callback no longer
 * runs for that slot's listeners. */
#ifndef CHATGW_SENTINEL_H
#define CHATGW_SENTINEL_H

#include <stdint.h>

#define SENTINEL_STALL_MS 2000         /* a loop this late is stuck: no healthy iteration takes this long */
#define SENTINEL_BEAT_MS 250           /* how often a loop beats (and the sentinel looks) */
#define SENTINEL_EXIT_GRACE_MS 5000    /* past drain_timeout_ms, before a stuck drain is cut short */

typedef struct sentinel_slot_s sentinel_slot_t;

/* Runs on the sentinel's thread for a connection-ready listener of a stuck slot: accept and
 * answer what is waiting, without blocking for long. */
typedef void (*sentinel_answer_cb)(int listen_fd, int worker, uint64_t stuck_ms);

/* Starts the thread (once per process; 0, or libuv's UV_E* code when it could not start,
 * logged). */
int sentinel_start(long drain_timeout_ms);
/* Stops and joins it (a no-op when not started). */
void sentinel_stop(void);

sentinel_slot_t *sentinel_slot_new(int worker, sentinel_answer_cb answer);
/* The loop is alive now (called from its timer). */
void sentinel_slot_beat(sentinel_slot_t *s);
/* A plain listener the sentinel may answer on while the slot is stuck (at most 2). */
void sentinel_slot_listen(sentinel_slot_t *s, int fd);
/* The listeners are about to close: the sentinel lets go of them first. */
void sentinel_slot_forget(sentinel_slot_t *s);
void sentinel_slot_free(sentinel_slot_t *s);

#endif
