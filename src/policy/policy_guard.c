/* policy_guard: the watchdog thread and the SIGURG handler (see policy_guard.h). Guards live in
 * one list under a mutex, touched only when a guard is created or freed and by the watchdog's
 * tick; a call's begin/end touch the guard's own atomics alone. The watchdog takes the time
 * when it first sees a call id and interrupts the call once the same id has been in flight for
 * the timeout, so it fires between timeout and timeout plus one tick after the call started.
 * SIGURG (ignored by default, never sent by anything else here) is delivered with tgkill to the
 * call's thread, found by its kernel thread id: a thread that is gone yields ESRCH, not a
 * signal to some other thread. */
#define _GNU_SOURCE
#include "policy/policy_guard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/log.h"

#define POLICY_GUARD_SIGNAL SIGURG
/* The watchdog's pace: derived from policy_timeout_ms (config), so these are not keys. */
#define POLICY_GUARD_TICK_MIN_NS 1000000ull     /* 1 ms: finer ticks cost wakeups, not accuracy */
#define POLICY_GUARD_TICK_MAX_NS 25000000ull    /* 25 ms: a timeout of 100 ms or more fires within 25 % */
#define POLICY_GUARD_QUIET_NS 1000000000ull     /* no call seen in flight this long: sleep until one begins */
#define POLICY_GUARD_STUCK_NS 5000000000ull     /* interrupted but still running: say so after 5 s */

struct policy_guard_s {
    _Atomic uint64_t run;          /* id of the call in flight, 0 = none (written by the call's thread) */
    _Atomic uint64_t fire;         /* the call the watchdog interrupted */
    _Atomic pid_t tid;             /* kernel id of the thread running the call */
    uint64_t next_run;             /* owned by the call's thread */
    uint64_t timeout_ns;
    policy_guard_fire_cb cb;
    void *arg;
    /* the watchdog's own, under policy_guard_lock */
    uint64_t seen_run, seen_at;
    int stuck_logged;
    policy_guard_t *prev, *next;
};

static pthread_mutex_t policy_guard_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t policy_guard_cond;
static policy_guard_t *policy_guard_list;
static pthread_once_t policy_guard_once = PTHREAD_ONCE_INIT;
static atomic_int policy_guard_asleep;   /* the watchdog waits for policy_guard_begin to wake it */
static __thread policy_guard_t *policy_guard_current;   /* the guard of this thread's call */
static __thread pid_t policy_guard_tid;

static uint64_t policy_guard_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Runs on the interrupted thread. Only atomics and the callback (async-signal-safe by contract). */
static void policy_guard_on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    policy_guard_t *g = policy_guard_current;
    if (g) {
        uint64_t run = atomic_load_explicit(&g->run, memory_order_acquire);
        if (run && atomic_load_explicit(&g->fire, memory_order_acquire) == run) g->cb(g->arg);
    }
    errno = saved;
}

/* One look at g at now; sends the signal when its call overran. Under the lock. */
static void policy_guard_check(policy_guard_t *g, uint64_t now)
{
    uint64_t run = atomic_load_explicit(&g->run, memory_order_acquire);
    if (!run) {
        g->seen_run = 0;
        return;
    }
    if (run != g->seen_run) {
        g->seen_run = run;
        g->seen_at = now;
        g->stuck_logged = 0;
        return;
    }
    uint64_t ran = now - g->seen_at;
    if (ran < g->timeout_ns) return;
    atomic_store_explicit(&g->fire, run, memory_order_release);
    syscall(SYS_tgkill, getpid(), atomic_load_explicit(&g->tid, memory_order_acquire), POLICY_GUARD_SIGNAL);
    if (ran >= g->timeout_ns + POLICY_GUARD_STUCK_NS && !g->stuck_logged) {
        g->stuck_logged = 1;
        log_error("policy call still running long after its timeout (stuck outside Lua)", "{s:I, s:I}", "ran_ms",
                  (json_int_t)(ran / 1000000), "timeout_ms", (json_int_t)(g->timeout_ns / 1000000));
    }
}

/* The tick: a quarter of the shortest timeout, within the bounds. Under the lock. */
static uint64_t policy_guard_tick(void)
{
    uint64_t tick = POLICY_GUARD_TICK_MAX_NS;
    for (policy_guard_t *g = policy_guard_list; g; g = g->next)
        if (g->timeout_ns / 4 < tick) tick = g->timeout_ns / 4;
    return tick < POLICY_GUARD_TICK_MIN_NS ? POLICY_GUARD_TICK_MIN_NS : tick;
}

/* Ticks while calls run; after POLICY_GUARD_QUIET_NS without seeing one in flight it sleeps
 * until policy_guard_begin wakes it (under load that is one wake a second: short calls are
 * rarely seen), so an idle process costs no wakeups. */
static void *policy_guard_main(void *unused)
{
    (void)unused;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);       /* signals are the loops' business */
    pthread_setname_np(pthread_self(), "policy-guard");
    pthread_mutex_lock(&policy_guard_lock);
    uint64_t busy_at = policy_guard_now();
    for (;;) {
        uint64_t now = policy_guard_now();
        for (policy_guard_t *g = policy_guard_list; g; g = g->next) {
            policy_guard_check(g, now);
            if (g->seen_run) busy_at = now;
        }
        if (now - busy_at >= POLICY_GUARD_QUIET_NS) {
            /* Dekker with policy_guard_begin (both seq_cst): a call that began after the check
             * above either sees asleep and wakes us, or its run is seen here */
            atomic_store(&policy_guard_asleep, 1);
            for (policy_guard_t *g = policy_guard_list; g; g = g->next)
                if (atomic_load(&g->run)) atomic_store(&policy_guard_asleep, 0);
            while (atomic_load(&policy_guard_asleep)) pthread_cond_wait(&policy_guard_cond, &policy_guard_lock);
            busy_at = policy_guard_now();
            continue;
        }
        uint64_t until = now + policy_guard_tick();
        struct timespec ts = { (time_t)(until / 1000000000ull), (long)(until % 1000000000ull) };
        while (pthread_cond_timedwait(&policy_guard_cond, &policy_guard_lock, &ts) == EINTR) {}
    }
    return NULL;
}

/* Wakes the sleeping watchdog: a call begins. */
static void policy_guard_wake(void)
{
    pthread_mutex_lock(&policy_guard_lock);
    atomic_store(&policy_guard_asleep, 0);
    pthread_cond_signal(&policy_guard_cond);
    pthread_mutex_unlock(&policy_guard_lock);
}

static void policy_guard_init(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&policy_guard_cond, &ca);
    pthread_condattr_destroy(&ca);
    struct sigaction sa = { 0 };
    sa.sa_handler = policy_guard_on_signal;
    sa.sa_flags = SA_RESTART;                     /* the loop's syscalls go on as if nothing happened */
    sigemptyset(&sa.sa_mask);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (sigaction(POLICY_GUARD_SIGNAL, &sa, NULL) != 0 || pthread_create(&t, &attr, policy_guard_main, NULL) != 0) {
        log_error("policy guard: cannot start the watchdog", "{s:s}", "error", strerror(errno));
        abort();
    }
    pthread_attr_destroy(&attr);
}

policy_guard_t *policy_guard_new(long timeout_ms, policy_guard_fire_cb fire, void *arg)
{
    pthread_once(&policy_guard_once, policy_guard_init);
    policy_guard_t *g = xcalloc(1, sizeof *g);
    g->timeout_ns = (uint64_t)(timeout_ms > 0 ? timeout_ms : 1) * 1000000ull;
    g->cb = fire;
    g->arg = arg;
    pthread_mutex_lock(&policy_guard_lock);
    g->next = policy_guard_list;
    if (g->next) g->next->prev = g;
    policy_guard_list = g;
    pthread_cond_signal(&policy_guard_cond);      /* the tick may be shorter now */
    pthread_mutex_unlock(&policy_guard_lock);
    return g;
}

void policy_guard_free(policy_guard_t *g)
{
    if (!g) return;
    pthread_mutex_lock(&policy_guard_lock);
    if (g->prev) g->prev->next = g->next;
    else policy_guard_list = g->next;
    if (g->next) g->next->prev = g->prev;
    pthread_mutex_unlock(&policy_guard_lock);
    free(g);
}

void policy_guard_begin(policy_guard_t *g)
{
    if (!policy_guard_tid) policy_guard_tid = (pid_t)syscall(SYS_gettid);
    atomic_store_explicit(&g->tid, policy_guard_tid, memory_order_relaxed);
    policy_guard_current = g;
    atomic_store(&g->run, ++g->next_run);         /* seq_cst: see policy_guard_main's sleep */
    if (atomic_load(&policy_guard_asleep)) policy_guard_wake();
}

void policy_guard_end(policy_guard_t *g)
{
    atomic_store_explicit(&g->run, 0, memory_order_release);
    atomic_signal_fence(memory_order_seq_cst);    /* the handler sees run = 0 from here on */
    policy_guard_current = NULL;
}

long policy_guard_timeout_ms(const policy_guard_t *g) { return (long)(g->timeout_ns / 1000000ull); }
