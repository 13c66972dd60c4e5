/* sentinel: the watcher thread (see sentinel.h). Slots live in one list under a mutex; a beat
 * is one atomic store. The thread runs a libuv loop of its own: a timer checks the slots every
 * SENTINEL_BEAT_MS, and signal handles for SIGTERM and SIGINT (libuv tells every loop that
 * watches a signal) arm the exit deadline. Answering runs under the mutex, so a server that
 * forgets its listeners waits for an answer in progress and never has a descriptor used after
 * it closed it. */
#define _GNU_SOURCE            /* pthread_setname_np */
#include "net/sentinel.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <uv.h>

#include "base/buf.h"
#include "base/log.h"

#define SENTINEL_SLOT_FDS 2            /* a server's plain listeners: public, admin */

struct sentinel_slot_s {
    _Atomic uint64_t beat_ms;
    int worker;
    sentinel_answer_cb answer;
    int fds[SENTINEL_SLOT_FDS];    /* under sentinel_lock */
    int nfds;
    int stuck;                     /* the sentinel's own: logged as stuck */
    sentinel_slot_t *prev, *next;
};

static pthread_mutex_t sentinel_lock = PTHREAD_MUTEX_INITIALIZER;
static sentinel_slot_t *sentinel_slots;

static struct {
    int running;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_timer_t tick, deadline;
    uv_signal_t sig_term, sig_int;
    uv_async_t stop;
    long drain_timeout_ms;
    int signals;                   /* stop signals seen */
} sentinel;

static uint64_t sentinel_now_ms(void) { return uv_hrtime() / 1000000u; }

static void sentinel_slot_check(sentinel_slot_t *s, uint64_t now)
{
    uint64_t beat = atomic_load_explicit(&s->beat_ms, memory_order_relaxed);
    uint64_t late = now > beat ? now - beat : 0;
    if (late < SENTINEL_STALL_MS) {
        if (s->stuck) log_warn("event loop beats again", "{s:i, s:I}", "worker", s->worker, "late_ms", (json_int_t)late);
        s->stuck = 0;
        return;
    }
    if (!s->stuck)
        log_error("event loop stuck: new connections get 503 from the sentinel", "{s:i, s:I}", "worker", s->worker,
                  "late_ms", (json_int_t)late);
    s->stuck = 1;
    for (int i = 0; i < s->nfds; i++) s->answer(s->fds[i], s->worker, late);
}

static void sentinel_on_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = sentinel_now_ms();
    pthread_mutex_lock(&sentinel_lock);
    for (sentinel_slot_t *s = sentinel_slots; s; s = s->next) sentinel_slot_check(s, now);
    pthread_mutex_unlock(&sentinel_lock);
}

static void sentinel_on_deadline(uv_timer_t *t)
{
    (void)t;
    log_error("drain did not end in time (an event loop is stuck?): exiting", "{s:I, s:i}", "drain_timeout_ms",
              (json_int_t)sentinel.drain_timeout_ms, "grace_ms", SENTINEL_EXIT_GRACE_MS);
    _exit(1);
}

static void sentinel_on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    if (sentinel.signals++) _exit(1);   /* the second one: as the main loop does, in case it cannot */
    uv_timer_start(&sentinel.deadline, sentinel_on_deadline,
                   (uint64_t)sentinel.drain_timeout_ms + SENTINEL_EXIT_GRACE_MS, 0);
    (void)signum;
}

static void sentinel_on_stop(uv_async_t *a)
{
    (void)a;
    uv_close((uv_handle_t *)&sentinel.tick, NULL);
    uv_close((uv_handle_t *)&sentinel.deadline, NULL);
    uv_close((uv_handle_t *)&sentinel.sig_term, NULL);
    uv_close((uv_handle_t *)&sentinel.sig_int, NULL);
    uv_close((uv_handle_t *)&sentinel.stop, NULL);
}

static void sentinel_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "sentinel");
    uv_run(&sentinel.loop, UV_RUN_DEFAULT);
}

int sentinel_start(long drain_timeout_ms)
{
    if (sentinel.running) return 0;
    sentinel.drain_timeout_ms = drain_timeout_ms;
    sentinel.signals = 0;
    int rc = uv_loop_init(&sentinel.loop);
    if (rc < 0) goto fail;
    uv_timer_init(&sentinel.loop, &sentinel.tick);
    uv_timer_init(&sentinel.loop, &sentinel.deadline);
    uv_signal_init(&sentinel.loop, &sentinel.sig_term);
    uv_signal_init(&sentinel.loop, &sentinel.sig_int);
    uv_async_init(&sentinel.loop, &sentinel.stop, sentinel_on_stop);
    uv_timer_start(&sentinel.tick, sentinel_on_tick, SENTINEL_BEAT_MS, SENTINEL_BEAT_MS);
    uv_signal_start(&sentinel.sig_term, sentinel_on_signal, SIGTERM);
    uv_signal_start(&sentinel.sig_int, sentinel_on_signal, SIGINT);
    rc = uv_thread_create(&sentinel.thread, sentinel_main, NULL);
    if (rc < 0) {
        sentinel_on_stop(NULL);
        uv_run(&sentinel.loop, UV_RUN_DEFAULT);
        uv_loop_close(&sentinel.loop);
        goto fail;
    }
    sentinel.running = 1;
    return 0;
fail:
    log_error("sentinel: cannot start", "{s:s}", "error", uv_strerror(rc));
    return rc;
}

void sentinel_stop(void)
{
    if (!sentinel.running) return;
    uv_async_send(&sentinel.stop);
    uv_thread_join(&sentinel.thread);
    uv_loop_close(&sentinel.loop);
    sentinel.running = 0;
}

sentinel_slot_t *sentinel_slot_new(int worker, sentinel_answer_cb answer)
{
    sentinel_slot_t *s = xcalloc(1, sizeof *s);
    s->worker = worker;
    s->answer = answer;
    atomic_store_explicit(&s->beat_ms, sentinel_now_ms(), memory_order_relaxed);
    pthread_mutex_lock(&sentinel_lock);
    s->next = sentinel_slots;
    if (s->next) s->next->prev = s;
    sentinel_slots = s;
    pthread_mutex_unlock(&sentinel_lock);
    return s;
}

void sentinel_slot_beat(sentinel_slot_t *s)
{
    atomic_store_explicit(&s->beat_ms, sentinel_now_ms(), memory_order_relaxed);
}

void sentinel_slot_listen(sentinel_slot_t *s, int fd)
{
    pthread_mutex_lock(&sentinel_lock);
    if (s->nfds < SENTINEL_SLOT_FDS) s->fds[s->nfds++] = fd;
    pthread_mutex_unlock(&sentinel_lock);
}

void sentinel_slot_forget(sentinel_slot_t *s)
{
    pthread_mutex_lock(&sentinel_lock);
    s->nfds = 0;
    pthread_mutex_unlock(&sentinel_lock);
}

void sentinel_slot_free(sentinel_slot_t *s)
{
    if (!s) return;
    pthread_mutex_lock(&sentinel_lock);
    if (s->prev) s->prev->next = s->next;
    else sentinel_slots = s->next;
    if (s->next) s->next->prev = s->prev;
    pthread_mutex_unlock(&sentinel_lock);
    free(s);
}
