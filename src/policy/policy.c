/* policy: the Lua 5.4 policy bridge (see policy.h). A load reads every *.lua file of the scripts
 * directory into memory, hashes the snapshot (the version), and boots a fresh VM from that
 * snapshot: a sandbox of base/string/table/math/utf8 plus os.time/clock/date, our own require,
 * load (text only) and setmetatable (no __gc: finalizers run with hooks off, beyond any budget),
 * and the gw host table, with the bounded library (policy_lib, policy_pattern). Every entry
 * into Lua goes through policy_vm_run: one lua_pcall with a traceback handler, the time guard
 * (policy_guard: a signal sets the timeout hook), the optional instruction budget (count hook)
 * and the VM's memory cap (custom allocator), then the stack top restored. Code that runs
 * under that pcall may raise; code outside it must not touch the VM except to push a C
 * function or light userdata. C memory is never held across a call that may raise: Lua -> JSON
 * conversion reports errors instead of raising, and JSON that Lua code is about to see is held
 * by a __gc box. gw.store and gw.limit live in policy_store (C, outside the VM), so they survive
 * reloads. Single-threaded: one holder per worker, and a VM is only closed when none of its
 * calls is in flight (the guard's watchdog thread only sends a signal). */
#include "policy/policy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/hex.h"
#include "base/log.h"
#include "base/map.h"
#include "base/report.h"
#include "base/utf8.h"
#include "policy/policy_guard.h"
#include "policy/policy_lib.h"
#include "policy/policy_pattern.h"
#include "policy/policy_record.h"
#include "policy/policy_rollout.h"
#include "policy/policy_store.h"

/* Bounds on what a script can make the gateway do. Not config keys: they guard the gateway
 * against a script, not tune it; operators size the sandbox with policy_timeout_ms,
 * policy_budget, policy_memory_mb and policy_store_mb. */
#define POLICY_HOOK_STEP 1000              /* instructions between count-hook calls */
#define POLICY_DEPTH_MAX 32                /* nesting limit of converted values (also catches cycles) */
#define POLICY_SOURCES_MAX (16u << 20)     /* bytes of all *.lua files together */
#define POLICY_FILES_MAX 1024              /* *.lua files in the scripts directory */
#define POLICY_MODULE_NAME_MAX 64          /* bytes of a require() name */
#define POLICY_JWT_MAX 16384               /* bytes of a token gw.jwt_verify takes */
#define POLICY_STACK_FLOOR 256           /* Lua stack slots kept through GC shrinking */
#define POLICY_BUDGET_MSG "policy budget exceeded"
#define POLICY_TIMEOUT_MSG "policy timeout"
#define POLICY_CONN_KEYS 4                 /* id, ip, name, query: the conn table's cached keys */
#define POLICY_MSG_TYPES_MAX 64            /* message_types entries: a linear scan per message */
#define POLICY_LOG_TEXT_MAX 1024           /* bytes of a logged message or error before the cut */
#define POLICY_LOG_FIELDS_MAX 4096         /* bytes of gw.log fields (as charged by conversion) */
#define POLICY_LOAD_MAX (1u << 20)         /* bytes of a chunk given to load(): parsing is one C call */
#define POLICY_PATTERN_STEPS 10000000UL    /* matcher steps per call: a linear scan of a 4 MiB string
                                            * (~2 steps a byte) fits; ~40 ms of backtracking does not */
#define POLICY_TRIP_FACTOR 20              /* after a timeout, that address's calls of the hook fail at
                                            * once for 20 timeouts (1 s at 50 ms): at most 5 % of a
                                            * loop's time per address goes to a hook that keeps timing out */
#define POLICY_TRIPS 1024                  /* trip entries (addresses); 48 KiB per holder */

#define POLICY_POOL_GRAIN 16               /* the VM's small blocks come in sizes of 16, 32, .. */
#define POLICY_POOL_CLASSES 16             /* .. 256 bytes; larger ones are plain malloc/realloc */
#define POLICY_POOL_SMALL (POLICY_POOL_GRAIN * POLICY_POOL_CLASSES)
#define POLICY_POOL_KEEP (256u << 10)      /* bytes of freed small blocks a VM may keep, at least */
#define POLICY_POOL_TRIM 65536             /* pooled blocks on_tick gives back at most, per VM */
#define POLICY_STRS 256                    /* slots of the VM's short-string cache */
#define POLICY_STR_MAX 24                  /* bytes of a string the cache keeps */

#define POLICY_ARRAY_MT "chatgw.array"     /* marks tables that convert to JSON arrays */
#define POLICY_JBOX_MT "chatgw.jbox"       /* userdata holding a json_t until Lua collects it */
#define POLICY_CONFIG_MT "chatgw.config"   /* the read-only gw.config proxy */
#define POLICY_LOADED "chatgw.loaded"      /* require's cache, like package.loaded */

/* Call slots: the hooks, then self_test (its metrics index), then loading policy.lua. */
enum { POLICY_SLOT_SELF_TEST = METRICS_POLICY_HOOKS - 1, POLICY_SLOT_LOAD, POLICY_SLOTS };
_Static_assert((int)POLICY_HOOKS == (int)POLICY_SLOT_SELF_TEST, "policy hooks and metrics hooks disagree");

static const char *const policy_slot_names[POLICY_SLOTS] = {
    "on_connect", "on_join", "on_message", "on_leave", "on_tick", "self_test", "load",
};

/* The conn table's keys policy_conn_build sets, in the order of policy_vm_t.conn_keys. */
static const char *const policy_conn_keys[POLICY_CONN_KEYS] = { "id", "ip", "name", "query" };

typedef struct {
    char *name;                    /* "policy.lua" */
    char *text;
    size_t len;
} policy_src_t;

/* A short string kept alive by a registry ref, so pushing it again is a registry read instead of
 * hashing and interning its bytes (Lua interns short strings: a script cannot tell the two
 * apart). Direct-mapped: a new string takes over its slot's ref. */
typedef struct {
    int ref;                       /* registry ref; 0 = empty slot (refs are >= 1) */
    unsigned char len;
    char s[POLICY_STR_MAX];
} policy_str_t;

/* A freed small block, on its size class's list. */
typedef struct policy_block_s {
    struct policy_block_s *next;
} policy_block_t;

typedef struct {
    lua_State *L;
    policy_t *p;                   /* back pointer: host, store, metrics */
    size_t mem_used, mem_limit;    /* allocator: what Lua holds (as it asked), and the cap */
    policy_block_t *pool[POLICY_POOL_CLASSES];   /* freed small blocks by size class */
    size_t pool_bytes;             /* bytes on those lists (policy_pool_keep) */
    long steps, budget;            /* count hook; budget 0 = none */
    int over_budget;
    volatile sig_atomic_t timed_out;  /* set by the guard's signal handler on this VM's thread */
    int depth;                     /* runs in flight: a gw.* callback may re-enter a hook */
    policy_src_t *srcs;            /* the snapshot this version was built from */
    size_t nsrcs;
    json_t *config;                /* config_to_json() parsed, behind gw.config */
    int array_mt, config_mt;       /* registry refs */
    uint64_t serial;               /* unique among VMs: a conn entry names the VM of its refs */
    const char *conn_keys[POLICY_CONN_KEYS];  /* "id", "ip", "name", "query" as interned by this
                                      VM (pinned by the registry): a key is one of them when its
                                      bytes are at the same address */
    json_t **jbox;                 /* the spare JSON box's slot (the box: registry ref jbox_ref) */
    int jbox_ref;
    int refs[METRICS_POLICY_HOOKS];/* hook functions by slot; LUA_NOREF when absent */
    policy_str_t strs[POLICY_STRS];/* short strings hooks get often (keys, types, rooms, ids) */
    char **msg_types;              /* on_message's types (message_types); NULL = every type */
    size_t n_msg_types;
    char version[POLICY_VERSION_SIZE];
} policy_vm_t;

/* Hooks tripped for one client address (or, for on_tick, the holder): until when each fails
 * at once. Direct-mapped by a hash of the address: a collision replaces the older entry. */
typedef struct {
    unsigned who;
    double until[POLICY_HOOKS];
} policy_trip_t;

struct policy_s {
    const config_t *cfg;
    metrics_t *metrics;            /* may be NULL (policy_check) */
    policy_host_t host;            /* all NULL when none was given */
    policy_vm_t *vm;               /* live VM; NULL before the first good load */
    policy_vm_t *volatile running; /* the VM with a run in flight (a candidate's during a load) */
    policy_guard_t *guard;         /* policy_timeout_ms over every run */
    policy_trip_t *trips;          /* POLICY_TRIPS entries, by client address */
    double trips_until;            /* the latest trip's end (monotonic s); 0 = none active */
    int last_kind;                 /* METRICS_POLICY_* of the last failed run */
    policy_store_t *store;
    char last_error[512];
    /* staged rollout (policy_rollout.h) and recording (policy_record.h); see "rollout" below */
    struct policy_s *cand;         /* the candidate holder beside this live one; NULL = none */
    policy_rollout_t *rollout;     /* with cand: arms, recorded effects, diffs, rollback */
    policy_record_t *rec;          /* policy_record_file; NULL = off */
    int dispatching;               /* a rollout call is in flight: nested calls go straight */
    int store_shared;              /* store is the stable holder's (a canary candidate) */
    int role;                      /* 0: a live holder; 1: a candidate (its conn entries' index) */
    double clock_fixed;            /* replay: gw.now and the store's clock; 0 = the real clocks */
};

/* One hook call: its inputs and, after the run, its verdict. */
typedef struct {
    policy_vm_t *vm;
    int slot;
    const policy_conn_t *conn;
    const char *room;
    json_t *msg;
    double now;
    int verdict;                   /* POLICY_PASS or POLICY_DROP */
    int deliver;                   /* on_message: deliver msg unchanged */
    json_t *out;                   /* on_message: the rewritten message (new reference) */
    char *code;
    size_t codelen;
} policy_call_t;

static double policy_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The clocks hooks see: the real ones, or a replay's recorded time for both. */
static double policy_now_real(const policy_t *p) { return p->clock_fixed ? p->clock_fixed : policy_clock(CLOCK_REALTIME); }
static double policy_now_mono(const policy_t *p) { return p->clock_fixed ? p->clock_fixed : policy_clock(CLOCK_MONOTONIC); }

/* Bytes of s (longer than max) to keep: max, less a UTF-8 character the cut would split. */
static size_t policy_cut_len(const char *s, size_t max)
{
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

/* s as log text, a new heap string: at most POLICY_LOG_TEXT_MAX bytes of it (cut on a
 * character boundary and marked), so that no script turns one log line into megabytes. */
static char *policy_log_text(const char *s)
{
    size_t n = strlen(s);
    if (n <= POLICY_LOG_TEXT_MAX) return xstrdup(s);
    size_t keep = policy_cut_len(s, POLICY_LOG_TEXT_MAX);
    buf_t b;
    buf_init(&b);
    buf_append(&b, s, keep);
    buf_printf(&b, " [cut: %zu bytes more]", n - keep);
    buf_cstr(&b);
    return b.data;                 /* buf_t storage is xmalloc'd: the caller frees it */
}

/* Log text from Lua may be anything: cut (policy_log_text), then scrubbed to valid UTF-8. */
static json_t *policy_json_text(const char *s)
{
    char *copy = policy_log_text(s);
    json_t *v = utf8_json_new(copy, NULL);
    free(copy);
    return v;
}

/* Logs through the host when it has a logger, else straight to log.c: msg cut as log text,
 * fields borrowed. */
static void policy_log(const policy_t *p, int level, const char *msg, json_t *fields)
{
    char *text = policy_log_text(msg);
    if (p->host.log)
        p->host.log(p->host.ud, level, text, fields);
    else
        log_write(level, text, "O", fields);
    free(text);
}

/* ---- sources: the snapshot of the scripts directory and its version ---- */

static void policy_srcs_free(policy_src_t *srcs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(srcs[i].name);
        free(srcs[i].text);
    }
    free(srcs);
}

static int policy_src_cmp(const void *a, const void *b)
{
    return strcmp(((const policy_src_t *)a)->name, ((const policy_src_t *)b)->name);
}

/* "x.lua", not hidden: kubelet's ..data, ..2026_... and editor files start with '.'. */
static int policy_src_name_ok(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

/* Reads path when it is (or links to) a regular file: 1 read (*text taken by the caller), 0
 * not a regular file or gone (a ConfigMap swap in progress; the next event reloads), or a
 * negative errno (-EFBIG past room bytes). O_NONBLOCK keeps a FIFO named x.lua from blocking
 * the open; fstat then skips it. */
static int policy_file_read(const char *path, size_t room, char **text, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return errno == ENOENT ? 0 : -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return 0;
    }
    buf_t b;
    buf_init(&b);
    for (;;) {
        buf_reserve(&b, 65536);
        ssize_t n = read(fd, b.data + b.len, b.cap - b.len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 || b.len + (size_t)n > room) {
            int rc = n < 0 ? -errno : -EFBIG;
            buf_free(&b);
            close(fd);
            return rc;
        }
        if (n == 0) break;
        b.len += (size_t)n;
    }
    close(fd);
    *len = b.len;
    *text = b.data;                /* buf_t storage is xmalloc'd: the caller frees it */
    return 1;
}

/* Reads every source of dir, sorted by name. 0 with the snapshot (*out taken by the caller),
 * or with err a negative errno (UV_E*) when dir cannot be listed or a file read, GW_ELIMIT
 * for too many files, GW_ETOOBIG for too many bytes. */
static int policy_srcs_read(const char *dir, policy_src_t **out, size_t *nout, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        int rc = -errno;
        snprintf(err, errlen, "%s: cannot open: %s", dir, strerror(-rc));
        return rc;
    }
    policy_src_t *srcs = NULL;
    size_t n = 0, total = 0;
    int rc;
    for (;;) {
        errno = 0;                 /* readdir's NULL means the end only while errno stays 0 */
        struct dirent *de = readdir(d);
        if (!de && errno) {        /* a partial listing would load a partial policy */
            rc = -errno;
            snprintf(err, errlen, "%s: cannot list: %s", dir, strerror(-rc));
            goto fail;
        }
        if (!de) break;
        if (!policy_src_name_ok(de->d_name)) continue;
        if (n == POLICY_FILES_MAX) {
            rc = GW_ELIMIT;
            snprintf(err, errlen, "%s: more than %d .lua files", dir, POLICY_FILES_MAX);
            goto fail;
        }
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        char *text = NULL;
        size_t len = 0;
        rc = policy_file_read(path, POLICY_SOURCES_MAX - total, &text, &len);
        if (rc < 0) {
            snprintf(err, errlen, "%s: cannot read: %s", de->d_name,
                     rc == -EFBIG ? "sources larger than 16 MiB" : strerror(-rc));
            if (rc == -EFBIG) rc = GW_ETOOBIG;
            goto fail;
        }
        if (rc == 0) continue;
        srcs = xrealloc(srcs, (n + 1) * sizeof *srcs);
        srcs[n++] = (policy_src_t){ xstrdup(de->d_name), text, len };
        total += len;
    }
    closedir(d);
    if (n) qsort(srcs, n, sizeof *srcs, policy_src_cmp);
    *out = srcs;
    *nout = n;
    return 0;
fail:
    closedir(d);
    policy_srcs_free(srcs, n);
    return rc;
}

static const policy_src_t *policy_src_find(const policy_src_t *srcs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(srcs[i].name, name) == 0) return &srcs[i];
    return NULL;
}

/* sha256 over "name\0contents\0" of each source in name order, as 64 hex digits. 0, or
 * -EIO (UV_EIO) when OpenSSL fails: a version that is not the sources' hash would make a
 * changed policy look unchanged, so the load fails instead. */
static int policy_srcs_hash(const policy_src_t *srcs, size_t n, char version[POLICY_VERSION_SIZE])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) abort();             /* out of memory: the gateway cannot answer (buf.h policy) */
    int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = EVP_DigestUpdate(ctx, srcs[i].name, strlen(srcs[i].name) + 1) == 1 &&
             EVP_DigestUpdate(ctx, srcs[i].text, srcs[i].len) == 1 && EVP_DigestUpdate(ctx, "", 1) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok) return -EIO;
    hex_encode(md, 32, version);
    return 0;
}

/* ---- the VM: allocator, budget, protected runs ---- */

static policy_vm_t *policy_vm_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* Small blocks: Lua tells the size of every block it frees or resizes, so blocks of up to
 * POLICY_POOL_SMALL bytes come from per-class free lists without a header (a message's tables
 * and strings are allocated and freed by the dozen). A small block is always allocated at its
 * class's full size, so any request of the class fits it. */
static size_t policy_pool_class(size_t n) { return (n - 1) / POLICY_POOL_GRAIN; }

/* A block of n bytes (n > 0), or NULL. */
static void *policy_block_get(policy_vm_t *vm, size_t n)
{
    if (n > POLICY_POOL_SMALL) return malloc(n);
    size_t c = policy_pool_class(n);
    policy_block_t *b = vm->pool[c];
    if (!b) return malloc((c + 1) * POLICY_POOL_GRAIN);
    vm->pool[c] = b->next;
    vm->pool_bytes -= (c + 1) * POLICY_POOL_GRAIN;
    return b;
}

/* What the pool may hold: as much as the VM holds live (a GC cycle frees about that much, and
 * the VM allocates it again during the next one), at least POLICY_POOL_KEEP. Blocks the GC
 * frees then stay the VM's instead of going back to malloc by the megabyte and coming back
 * one by one, which left malloc's free lists long and fragmented for the server's own
 * allocations (a tenth of a worker's time in malloc and free, measured, at 10,000 chatting
 * connections). So the VM's memory is at most twice policy_memory_mb. */
static size_t policy_pool_keep(const policy_vm_t *vm)
{
    return vm->mem_used > POLICY_POOL_KEEP ? vm->mem_used : POLICY_POOL_KEEP;
}

/* Frees p, a block of n bytes (n > 0): onto its list while the pool keeps less than
 * policy_pool_keep, else back to malloc. */
static void policy_block_put(policy_vm_t *vm, void *p, size_t n)
{
    size_t c = policy_pool_class(n), size = (c + 1) * POLICY_POOL_GRAIN;
    if (n > POLICY_POOL_SMALL || vm->pool_bytes + size > policy_pool_keep(vm)) {
        free(p);
        return;
    }
    policy_block_t *b = p;
    b->next = vm->pool[c];
    vm->pool[c] = b;
    vm->pool_bytes += size;
}

/* Returns pooled blocks to malloc until the pool holds at most keep bytes or max blocks went. */
static void policy_pool_trim(policy_vm_t *vm, size_t keep, size_t max)
{
    for (size_t c = POLICY_POOL_CLASSES; c-- > 0 && vm->pool_bytes > keep && max;) {
        while (vm->pool[c] && vm->pool_bytes > keep && max--) {
            policy_block_t *b = vm->pool[c];
            vm->pool[c] = b->next;
            vm->pool_bytes -= (c + 1) * POLICY_POOL_GRAIN;
            free(b);
        }
    }
}

/* Once a second: what the pool holds past policy_pool_keep (the VM shrank), a slice at a time. */
static void policy_pool_shrink(policy_vm_t *vm)
{
    if (vm) policy_pool_trim(vm, policy_pool_keep(vm), POLICY_POOL_TRIM);
}

/* ptr (old bytes, > 0) resized to nsize (> 0), or NULL with ptr still valid. */
static void *policy_block_resize(policy_vm_t *vm, void *ptr, size_t old, size_t nsize)
{
    if (old > POLICY_POOL_SMALL && nsize > POLICY_POOL_SMALL) return realloc(ptr, nsize);
    if (old <= POLICY_POOL_SMALL && nsize <= POLICY_POOL_SMALL && policy_pool_class(old) == policy_pool_class(nsize))
        return ptr;
    void *q = policy_block_get(vm, nsize);
    if (!q) return nsize < old ? ptr : NULL;              /* a shrink keeps the larger block */
    memcpy(q, ptr, old < nsize ? old : nsize);
    policy_block_put(vm, ptr, old);
    return q;
}

/* Counts live bytes and refuses growth past the cap; Lua then raises LUA_ERRMEM (after an
 * emergency collection). Shrinking never fails, as Lua requires. No single block grows past
 * POLICY_LIB_BYTES_MAX: one VM instruction (a concatenation, a table resize) copies at most
 * that much, so it ends soon enough for the time guard to stop the next one. */
static void *policy_vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    policy_vm_t *vm = ud;
    size_t old = ptr ? osize : 0;  /* with ptr NULL, osize is a type tag, not a size */
    if (nsize == 0) {
        if (ptr) policy_block_put(vm, ptr, old);
        vm->mem_used -= old;
        return NULL;
    }
    if (nsize > old && (nsize - old > vm->mem_limit - vm->mem_used || nsize > POLICY_LIB_BYTES_MAX + 4096))
        return NULL;                                      /* 4096: a string's header, a buffer's box */
    void *q = ptr ? policy_block_resize(vm, ptr, old, nsize) : policy_block_get(vm, nsize);
    if (!q) return NULL;
    vm->mem_used = vm->mem_used - old + nsize;
    return q;
}

/* Raises what, prefixed with the innermost Lua position ("policy.lua:12: ") when there is one:
 * a hook may run at the return of a C function, which has no line of its own. */
static void policy_hook_raise(lua_State *L, const char *what)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, what);
            lua_error(L);
        }
    }
    lua_pushstring(L, what);
    lua_error(L);
}

/* Runs every POLICY_HOOK_STEP instructions. Past the budget it switches to every instruction,
 * so a pcall inside the policy cannot catch the error and keep looping: the next instruction
 * of its caller fails too. The message carries the position (luaL_error's level is wrong
 * inside a hook, which has no frame of its own). */
static void policy_count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    policy_vm_t *vm = policy_vm_of(L);
    if (!vm->over_budget) {
        vm->steps += POLICY_HOOK_STEP;
        if (vm->steps <= vm->budget) return;
        vm->over_budget = 1;
        lua_sethook(L, policy_count_hook, LUA_MASKCOUNT, 1);
    }
    policy_hook_raise(L, POLICY_BUDGET_MSG);
}

/* Set by the guard when the run overran: raises at every instruction, call and return, so
 * that nothing the script does (pcall, a loop around it, a __close handler) gets further than
 * one instruction. */
static void policy_timeout_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    policy_vm_t *vm = policy_vm_of(L);
    char what[64];
    snprintf(what, sizeof what, POLICY_TIMEOUT_MSG " (over %ld ms)", vm->p->guard ? policy_guard_timeout_ms(vm->p->guard) : 0);
    policy_hook_raise(L, what);
}

/* The guard's callback, in its signal handler on this holder's thread: lua.c's way to stop a
 * running chunk (lua_sethook is safe there). */
static void policy_vm_interrupt(void *arg)
{
    policy_t *p = arg;
    policy_vm_t *vm = p->running;
    if (!vm || vm->timed_out) return;
    vm->timed_out = 1;
    lua_sethook(vm->L, policy_timeout_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

/* Whether an error now unwinding was raised by one of our hooks. Lua runs message handlers of
 * such an error with hooks off, so no script code may run in one: it could loop unguarded. */
static int policy_vm_stopping(const policy_vm_t *vm) { return vm->timed_out || vm->over_budget; }

/* Message handler: the error plus a traceback, for the log. */
static int policy_msgh(lua_State *L)
{
    size_t len;
    const char *msg = lua_tolstring(L, 1, &len);
    if (!msg && !policy_vm_stopping(policy_vm_of(L)) && luaL_callmeta(L, 1, "__tostring") &&
        lua_type(L, -1) == LUA_TSTRING)
        msg = lua_tolstring(L, -1, &len);                 /* [err s] */
    if (!msg) {
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        len = strlen(msg);
    }
    if (len > POLICY_LOG_TEXT_MAX) {                      /* it only goes to the log: cut it now, */
        size_t keep = policy_cut_len(msg, POLICY_LOG_TEXT_MAX - 48);   /* with room for the mark */
        lua_pushlstring(L, msg, keep);                    /* [.. head] */
        lua_pushfstring(L, " [cut: %I bytes more]", (lua_Integer)(len - keep));  /* [.. head mark] */
        lua_concat(L, 2);                                 /* [.. msg] */
        msg = lua_tostring(L, -1);
    }
    luaL_traceback(L, L, msg, 1);                         /* [.. msg traceback] */
    return 1;
}

static void policy_metric_inc(policy_t *p, int slot, int kind)
{
    if (p->metrics && slot < METRICS_POLICY_HOOKS) METRIC_INC(p->metrics->policy_errors[slot][kind]);
}

/* How long a client's calls of a hook fail at once after one timed out (see policy_trip). */
static long policy_trip_ms(const policy_t *p)
{
    return p->guard ? policy_guard_timeout_ms(p->guard) * POLICY_TRIP_FACTOR : 0;
}

/* A hook's failure to the error tracker (base/report.h); a load's or self_test's is reported
 * once as a rejected reload instead. */
static void policy_report(policy_vm_t *vm, int slot, int kind, const char *msg, size_t first)
{
    char kind_word[32], where[128], *line = xstrndup(msg, first);
    snprintf(kind_word, sizeof kind_word, "policy_%s", metrics_policy_kinds[kind]);
    int has_where = report_where(msg, where, sizeof where) == 0;
    report_t r = {.kind = kind_word, .level = "error", .message = line, .hook = policy_slot_names[slot],
                  .where = has_where ? where : NULL, .traceback = msg[first] ? msg + first + 1 : NULL,
                  .policy_version = vm->version, .worker = -1};
    report_emit(&r);
    free(line);
}

/* Classifies, counts and logs a failed run; err gets the first line of the message. Returns
 * the kind as a negative code (policy_vm_run's). */
static int policy_vm_fail(policy_vm_t *vm, int slot, int status, const char *msg, char *err, size_t errlen)
{
    int kind = vm->timed_out ? METRICS_POLICY_TIMEOUT
             : status == LUA_ERRMEM ? METRICS_POLICY_MEMORY
             : vm->over_budget ? METRICS_POLICY_BUDGET : METRICS_POLICY_ERROR;
    if (!msg) msg = "(no error message)";
    size_t first = strcspn(msg, "\n");
    snprintf(err, errlen, "%.*s", (int)first, msg);
    policy_metric_inc(vm->p, slot, kind);
    vm->p->last_kind = kind;
    long trip_ms = kind == METRICS_POLICY_TIMEOUT && slot < POLICY_HOOKS ? policy_trip_ms(vm->p) : 0;
    json_t *fields = json_object();
    json_object_set_new(fields, "hook", json_string(policy_slot_names[slot]));
    json_object_set_new(fields, "kind", json_string(metrics_policy_kinds[kind]));
    char *line = xmalloc(first + 1);              /* the log's copy: cut at 1 KiB, and marked */
    memcpy(line, msg, first);
    line[first] = '\0';
    json_object_set_new(fields, "error", policy_json_text(line));
    free(line);
    if (msg[first] && strstr(msg + first, ".lua:"))   /* only when it shows a Lua frame: the lines after it */
        json_object_set_new(fields, "traceback", policy_json_text(msg + first + 1));
    json_object_set_new(fields, "version", json_string(vm->version));
    if (trip_ms) json_object_set_new(fields, "tripped_ms", json_integer(trip_ms));   /* later calls fail at once */
    policy_log(vm->p, LOG_WARN, slot == POLICY_SLOT_LOAD ? "policy load failed" : "policy hook failed", fields);
    json_decref(fields);
    if (slot < POLICY_HOOKS) policy_report(vm, slot, kind, msg, first);
    return kind == METRICS_POLICY_TIMEOUT ? GW_ETIMEDOUT : kind == METRICS_POLICY_MEMORY ? GW_ENOMEM
         : kind == METRICS_POLICY_BUDGET ? GW_ELIMIT : GW_EINVAL;
}

/* The outermost run starts: the guard watches it, the budget (when set) counts it. */
static void policy_vm_enter(policy_vm_t *vm)
{
    vm->steps = 0;
    vm->over_budget = 0;
    vm->timed_out = 0;
    vm->p->running = vm;
    if (vm->p->guard) policy_guard_begin(vm->p->guard);
    if (vm->budget) lua_sethook(vm->L, policy_count_hook, LUA_MASKCOUNT, POLICY_HOOK_STEP);
}

/* The outermost run ended: no interrupt can arrive for it after policy_guard_end. */
static void policy_vm_leave(policy_vm_t *vm)
{
    if (vm->p->guard) policy_guard_end(vm->p->guard);
    vm->p->running = NULL;
    if (vm->budget || vm->timed_out) lua_sethook(vm->L, NULL, 0, 0);
    if (vm->jbox && *vm->jbox) {              /* a push raised while the spare box held JSON */
        json_decref(*vm->jbox);
        *vm->jbox = NULL;
    }
}

/* The one way into Lua: body(ctx) under lua_pcall with the traceback handler, the time guard,
 * the budget and the memory cap. A nested run (a gw.* callback re-entering a hook) shares the
 * outer run's time and budget. 0, or with err (already counted and logged) GW_ETIMEDOUT,
 * GW_ENOMEM (the memory cap), GW_ELIMIT (the budget) or GW_EINVAL (the script raised). The
 * stack top is restored either way. */
static int policy_vm_run(policy_vm_t *vm, int slot, lua_CFunction body, void *ctx, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    int top = lua_gettop(L);
    if (vm->depth++ == 0) policy_vm_enter(vm);
    lua_pushcfunction(L, policy_msgh);         /* [msgh] */
    lua_pushcfunction(L, body);                /* [msgh body] */
    lua_pushlightuserdata(L, ctx);             /* [msgh body ctx] */
    int status = lua_pcall(L, 1, 0, top + 1);  /* [msgh] or [msgh error] */
    int outermost = --vm->depth == 0;
    if (outermost) policy_vm_leave(vm);
    int rc = 0;
    if (status != LUA_OK) {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        rc = policy_vm_fail(vm, slot, status, msg, err, errlen);
    }
    if (outermost) vm->timed_out = 0;
    lua_settop(L, top);
    return rc;
}

/* Panics cannot happen when everything runs under policy_vm_run; if one does, say so before
 * Lua aborts. */
static int policy_vm_panic(lua_State *L)
{
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    log_write(LOG_ERROR, "lua panic", "{s:s}", "error", msg);
    return 0;
}

static void policy_vm_free(policy_vm_t *vm)
{
    if (!vm) return;
    if (vm->L) lua_close(vm->L);  /* policy code has no finalizers: setmetatable refuses __gc */
    policy_pool_trim(vm, 0, SIZE_MAX);   /* lua_close freed every block: some are on the lists */
    json_decref(vm->config);
    policy_srcs_free(vm->srcs, vm->nsrcs);
    for (size_t i = 0; i < vm->n_msg_types; i++) free(vm->msg_types[i]);
    free(vm->msg_types);
    free(vm);
}

/* ---- conversion: JSON -> Lua (may raise; the JSON is borrowed) ---- */

static unsigned policy_str_slot(const char *s, size_t len)
{
    unsigned h = (unsigned)len * 0x9E3779B1u;
    h ^= (unsigned char)s[0] | (unsigned char)s[len / 2] << 8 | (unsigned char)s[len - 1] << 16;
    h ^= h >> 15;
    h *= 0x85EBCA6Bu;
    return (h ^ h >> 13) % POLICY_STRS;
}

/* Pushes the len bytes at s as a Lua string, like lua_pushlstring, from the VM's cache when it
 * holds them. May raise (memory), with the cache unchanged. */
static void policy_str_push(lua_State *L, policy_vm_t *vm, const char *s, size_t len)
{
    if (len == 0 || len > POLICY_STR_MAX) {
        lua_pushlstring(L, s, len);
        return;
    }
    policy_str_t *e = &vm->strs[policy_str_slot(s, len)];
    if (e->ref && e->len == len && memcmp(e->s, s, len) == 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);        /* [s] */
        return;
    }
    s = lua_pushlstring(L, s, len);       /* [s]: from here on the Lua string's own bytes */
    lua_pushvalue(L, -1);                                 /* [s s] */
    if (e->ref)
        lua_rawseti(L, LUA_REGISTRYINDEX, e->ref);        /* [s]: an existing key, no allocation */
    else
        e->ref = luaL_ref(L, LUA_REGISTRYINDEX);          /* [s] */
    e->len = (unsigned char)len;
    memcpy(e->s, s, len);
}

/* policy_str_push of a C string. */
static void policy_cstr_push(lua_State *L, policy_vm_t *vm, const char *s)
{
    policy_str_push(L, vm, s, strlen(s));
}

/* A leaf pushes one value, in the room its caller has; a container checks for its own. */
static void policy_json_push(lua_State *L, json_t *v, int depth)
{
    if (depth > POLICY_DEPTH_MAX) luaL_error(L, "cannot convert: nested deeper than %d levels", POLICY_DEPTH_MAX);
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        size_t keylen;
        json_t *member;
        size_t n = json_object_size(v);
        policy_vm_t *vm = policy_vm_of(L);
        luaL_checkstack(L, 4, "cannot convert: nested too deeply");
        lua_createtable(L, 0, n > INT_MAX ? INT_MAX : (int)n);  /* [t] */
        json_object_keylen_foreach(v, key, keylen, member) {
            if (json_is_null(member)) continue;                 /* null members are absent in Lua */
            policy_str_push(L, vm, key, keylen);                /* [t k] */
            if (json_is_string(member))                         /* the common leaves without the recursion */
                policy_str_push(L, vm, json_string_value(member), json_string_length(member));
            else if (json_is_integer(member))
                lua_pushinteger(L, (lua_Integer)json_integer_value(member));
            else
                policy_json_push(L, member, depth + 1);         /* [t k v] */
            lua_rawset(L, -3);                                  /* [t] */
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        luaL_checkstack(L, 4, "cannot convert: nested too deeply");
        lua_createtable(L, n > INT_MAX ? INT_MAX : (int)n, 0);  /* [t] */
        lua_rawgeti(L, LUA_REGISTRYINDEX, policy_vm_of(L)->array_mt);  /* [t mt] */
        lua_setmetatable(L, -2);                                /* [t]: stays [] even when empty */
        for (size_t i = 0; i < n; i++) {
            json_t *item = json_array_get(v, i);
            if (json_is_null(item))
                lua_pushlightuserdata(L, NULL);                 /* [t gw.null]: keeps the index */
            else
                policy_json_push(L, item, depth + 1);           /* [t v] */
            lua_rawseti(L, -2, (lua_Integer)i + 1);             /* [t] */
        }
        break;
    }
    case JSON_STRING: policy_str_push(L, policy_vm_of(L), json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushnil(L); break;
    }
}

/* A box for JSON that Lua code may see before C is done with it: if a push raises, or a
 * finalizer run by the GC changes the store, the box still owns one reference and __gc drops
 * it. Returns the slot to fill; the box is on the stack. The VM's spare box serves whenever it
 * is empty (a push raised: the run's end empties it), so a gw.store.get allocates no box. */
static json_t **policy_jbox_new(lua_State *L)
{
    policy_vm_t *vm = policy_vm_of(L);
    if (vm->jbox && !*vm->jbox) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->jbox_ref);  /* [box] */
        return vm->jbox;
    }
    json_t **slot = lua_newuserdatauv(L, sizeof *slot, 0);  /* [box] */
    *slot = NULL;
    luaL_setmetatable(L, POLICY_JBOX_MT);
    return slot;
}

static int policy_jbox_gc(lua_State *L)
{
    json_t **slot = luaL_checkudata(L, 1, POLICY_JBOX_MT);
    json_decref(*slot);
    *slot = NULL;
    return 0;
}

/* Pushes v (borrowed, may be NULL -> nil) while holding a reference of our own: a finalizer run
 * by the GC during the push may change whatever owns v. */
static void policy_json_push_held(lua_State *L, json_t *v)
{
    json_t **slot = policy_jbox_new(L);        /* [box]: may raise, nothing held yet */
    *slot = json_incref(v);
    if (v)
        policy_json_push(L, v, 1);             /* [box value] */
    else
        lua_pushnil(L);                        /* [box nil] */
    json_decref(*slot);
    *slot = NULL;
    lua_remove(L, -2);                         /* [value] */
}

/* ---- conversion: Lua -> JSON (never raises; C owns the result) ---- */

typedef struct {
    lua_State *L;
    policy_vm_t *vm;
    size_t left;                   /* bytes the result may still take, as charged */
    char *err;
    size_t errlen;
} policy_conv_t;

/* Charges n bytes (a value's slot, a string's bytes) to the conversion; 0 past its bound. */
static int policy_conv_charge(policy_conv_t *c, size_t n)
{
    if (n > c->left) return 0;
    c->left -= n;
    return 1;
}

static json_t *policy_conv_fail(policy_conv_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *policy_conv_fail(policy_conv_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return NULL;
}

static json_t *policy_lua_value(policy_conv_t *c, int idx, int depth);

/* Whether the table at idx has the metatable at registry ref. No allocation, no metamethods. */
static int policy_mt_is(lua_State *L, int idx, int ref)
{
    if (!lua_getmetatable(L, idx)) return 0;   /* [mt] */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);    /* [mt ref] */
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);                             /* [] */
    return same;
}

static json_t *policy_lua_array(policy_conv_t *c, int idx, size_t n, int depth)
{
    json_t *arr = json_array();
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(c->L, idx, (lua_Integer)i);           /* [v] */
        json_t *v = policy_lua_value(c, lua_gettop(c->L), depth + 1);
        lua_pop(c->L, 1);                                 /* [] */
        if (!v) {
            json_decref(arr);
            return NULL;
        }
        json_array_append_new(arr, v);
    }
    return arr;
}

static json_t *policy_lua_object(policy_conv_t *c, int idx, int depth)
{
    lua_State *L = c->L;
    json_t *obj = json_object();
    lua_pushnil(L);                                       /* [nil] */
    while (lua_next(L, idx)) {                            /* [k v] */
        json_t *v = NULL;
        if (lua_type(L, -2) != LUA_TSTRING) {
            policy_conv_fail(c, "cannot convert: a table with a %s key (objects need string keys, arrays keys 1..n)",
                             luaL_typename(L, -2));
        } else if ((v = policy_lua_value(c, lua_gettop(L), depth + 1))) {
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);  /* a string already: no conversion */
            if (!policy_conv_charge(c, klen)) {
                json_decref(v);
                v = policy_conv_fail(c, "cannot convert: larger than the bound of this call");
            } else if (json_object_setn_new(obj, k, klen, v) < 0) {
                v = NULL;
                policy_conv_fail(c, "cannot convert: a key is not valid UTF-8");
            }
        }
        if (!v) {
            lua_pop(L, 2);                                /* [] */
            json_decref(obj);
            return NULL;
        }
        lua_pop(L, 1);                                    /* [k] */
    }
    return obj;
}

/* keys 1..n contiguous -> array; no keys -> [] when marked, else {}; anything else -> object. */
static json_t *policy_lua_table(policy_conv_t *c, int idx, int depth)
{
    lua_State *L = c->L;
    if (depth > POLICY_DEPTH_MAX)
        return policy_conv_fail(c, "cannot convert: nested deeper than %d levels (or a cycle)", POLICY_DEPTH_MAX);
    if (policy_mt_is(L, idx, c->vm->config_mt)) return json_deep_copy(c->vm->config);
    size_t n = 0;
    lua_Integer max = 0;
    int seq = 1;
    lua_pushnil(L);                                       /* [nil] */
    while (lua_next(L, idx)) {                            /* [k v] */
        n++;
        if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            lua_Integer k = lua_tointeger(L, -2);
            if (k > max) max = k;
        } else {
            seq = 0;
        }
        lua_pop(L, 1);                                    /* [k] */
    }
    if (n == 0) return policy_mt_is(L, idx, c->vm->array_mt) ? json_array() : json_object();
    if (seq && (lua_Unsigned)max == n) return policy_lua_array(c, idx, n, depth);
    return policy_lua_object(c, idx, depth);
}

static json_t *policy_lua_value(policy_conv_t *c, int idx, int depth)
{
    lua_State *L = c->L;
    int t = lua_type(L, idx);
    if (!policy_conv_charge(c, 8 + (t == LUA_TSTRING ? lua_rawlen(L, idx) : 0)))
        return policy_conv_fail(c, "cannot convert: larger than the bound of this call");
    switch (t) {
    case LUA_TNIL: return json_null();
    case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER: {
        if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
        double d = lua_tonumber(L, idx);
        if (!isfinite(d)) return policy_conv_fail(c, "cannot convert: NaN or infinity");
        return json_real(d);
    }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        json_t *v = policy_lib_ascii(s, n) ? json_stringn_nocheck(s, n) : json_stringn(s, n);  /* ASCII is UTF-8 */
        return v ? v : policy_conv_fail(c, "cannot convert: a string is not valid UTF-8");
    }
    case LUA_TLIGHTUSERDATA:
        if (!lua_touserdata(L, idx)) return json_null();  /* gw.null */
        break;
    case LUA_TTABLE: return policy_lua_table(c, idx, depth);
    default: break;
    }
    return policy_conv_fail(c, "cannot convert a %s value", luaL_typename(L, idx));
}

/* The value at idx as JSON (new reference), or NULL with err. Never raises, so a caller may
 * hold C memory around it. max bounds the result (each value 8 bytes plus its string's or
 * key's bytes), so a host function's work follows what it is asked to send, store or log. */
static json_t *policy_json_from_lua(lua_State *L, int idx, size_t max, char *err, size_t errlen)
{
    policy_conv_t c = { L, policy_vm_of(L), max, err, errlen };
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, POLICY_DEPTH_MAX * 4 + 8))     /* returns 0 rather than raising */
        return policy_conv_fail(&c, "cannot convert: out of stack");
    return policy_lua_value(&c, idx, 1);
}

/* ---- sandbox: base library replacements ---- */

/* load(chunk, name, mode, env): text chunks only, and the sandbox globals unless env is given. */
static int policy_lua_load(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING && lua_rawlen(L, 1) > POLICY_LOAD_MAX)
        return luaL_error(L, "load: a chunk longer than %d KiB (the policy sandbox's limit)", (int)(POLICY_LOAD_MAX >> 10));
    int has_env = !lua_isnone(L, 4);
    lua_settop(L, 4);                                     /* [chunk name mode env] */
    lua_pushvalue(L, lua_upvalueindex(1));                /* [.. load] */
    lua_pushvalue(L, 1);                                  /* [.. load chunk] */
    lua_pushvalue(L, 2);                                  /* [.. load chunk name] */
    lua_pushliteral(L, "t");                              /* [.. load chunk name "t"] */
    if (has_env)
        lua_pushvalue(L, 4);                              /* [.. load chunk name "t" env] */
    else
        lua_pushglobaltable(L);                           /* [.. load chunk name "t" _G] */
    lua_call(L, 4, LUA_MULTRET);  /* inside the run's lua_pcall: errors reach its handler */
    return lua_gettop(L) - 4;                             /* [.. results] */
}

static int policy_lua_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "collect");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage(\"%s\") is not allowed in the policy sandbox (only \"count\")", opt);
    int kb = lua_gc(L, LUA_GCCOUNT), b = lua_gc(L, LUA_GCCOUNTB);
    lua_pushnumber(L, (lua_Number)kb + (lua_Number)b / 1024);
    return 1;
}

/* setmetatable(t, mt) without __gc: Lua runs finalizers with hooks off (GCTM), so a looping
 * __gc could never be stopped by the budget. Lua marks an object for finalization only when
 * its metatable has the __gc field at setmetatable time, so checking here (raw, any value)
 * is enough: adding __gc to mt later has no effect. */
static int policy_lua_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");                       /* [t mt "__gc"] */
        int has_gc = lua_rawget(L, 2) != LUA_TNIL;        /* [t mt gc] */
        lua_pop(L, 1);                                    /* [t mt] */
        if (has_gc) return luaL_error(L, "setmetatable: __gc is not allowed in the policy sandbox");
    }
    lua_settop(L, 2);                                     /* [t mt] */
    lua_pushvalue(L, lua_upvalueindex(1));                /* [t mt setmetatable] */
    lua_insert(L, 1);                                     /* [setmetatable t mt] */
    lua_call(L, 2, 1);            /* inside the run's lua_pcall; [t] */
    return 1;
}

/* The script's xpcall handler, behind a guard: Lua runs a handler with hooks off when the
 * error was raised by a hook, so after a timeout or an exhausted budget the handler is skipped
 * and the error passes through unchanged. [err] -> [handled err]. */
static int policy_lua_xpcall_handler(lua_State *L)
{
    lua_settop(L, 1);                                     /* [err] */
    if (policy_vm_stopping(policy_vm_of(L))) return 1;
    lua_pushvalue(L, lua_upvalueindex(1));                /* [err h] */
    lua_insert(L, 1);                                     /* [h err] */
    lua_call(L, 1, 1);            /* inside the run's lua_pcall; [result] */
    return 1;
}

/* xpcall(f, msgh, ...): Lua's own, with msgh wrapped by policy_lua_xpcall_handler. */
static int policy_lua_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);                                  /* [f msgh args.. msgh] */
    lua_pushcclosure(L, policy_lua_xpcall_handler, 1);    /* [f msgh args.. guarded] */
    lua_replace(L, 2);                                    /* [f guarded args..] */
    lua_pushvalue(L, lua_upvalueindex(1));                /* [f guarded args.. xpcall] */
    lua_insert(L, 1);                                     /* [xpcall f guarded args..] */
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);          /* [results..] */
    return lua_gettop(L);
}

/* type(v): Lua's own answer, with the names kept as upvalues: luaB_type pushes its name with
 * lua_pushstring, a string-cache lookup and a strcmp on every call, and the default policy
 * asks a few times per message. */
static int policy_lua_type(lua_State *L)
{
    int t = lua_type(L, 1);
    luaL_argcheck(L, t != LUA_TNONE, 1, "value expected");
    lua_pushvalue(L, lua_upvalueindex(t + 1));
    return 1;
}

/* print(...) -> gw.log("info", args joined by tabs). */
static int policy_lua_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);                                 /* [args.. buf?] */
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);                       /* [.. s] */
        luaL_addvalue(&b);                                /* [..] */
    }
    luaL_pushresult(&b);                                  /* [args.. line] */
    json_t *fields = json_pack("{s:s}", "source", "print");
    policy_log(policy_vm_of(L)->p, LOG_INFO, lua_tostring(L, -1), fields);
    json_decref(fields);
    return 0;
}

static int policy_module_name_ok(const char *name, size_t len)
{
    if (len == 0 || len > POLICY_MODULE_NAME_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!(ch == '_' || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
            return 0;
    }
    return 1;
}

/* require(name): name.lua from this version's snapshot of the scripts directory, run once and
 * cached in the registry (like package.loaded). Flat names only: no paths, no dots. */
static int policy_lua_require(lua_State *L)
{
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!policy_module_name_ok(name, len))
        return luaL_error(L, "require \"%s\": module names are letters, digits and _ (a file NAME.lua "
                             "in the scripts directory)", name);
    lua_settop(L, 1);                                     /* [name] */
    lua_getfield(L, LUA_REGISTRYINDEX, POLICY_LOADED);    /* [name loaded] */
    if (lua_getfield(L, 2, name) != LUA_TNIL) return 1;   /* [name loaded mod] */
    lua_pop(L, 1);                                        /* [name loaded] */
    policy_vm_t *vm = policy_vm_of(L);
    char file[POLICY_MODULE_NAME_MAX + 8], chunkname[POLICY_MODULE_NAME_MAX + 9];
    snprintf(file, sizeof file, "%s.lua", name);
    snprintf(chunkname, sizeof chunkname, "@%s", file);  /* errors read "name.lua:LINE: msg" */
    const policy_src_t *src = policy_src_find(vm->srcs, vm->nsrcs, file);
    if (!src) return luaL_error(L, "require \"%s\": no file %s in the scripts directory", name, file);
    if (luaL_loadbufferx(L, src->text, src->len, chunkname, "t") != LUA_OK)  /* [name loaded chunk] */
        return lua_error(L);
    lua_pushvalue(L, 1);                                  /* [name loaded chunk name] */
    lua_call(L, 1, 1);            /* inside the run's lua_pcall; [name loaded result] */
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);                            /* [name loaded true], as Lua's require */
    }
    lua_pushvalue(L, -1);                                 /* [name loaded result result] */
    lua_setfield(L, 2, name);                             /* [name loaded result] */
    return 1;
}

static void policy_libs_open(lua_State *L)
{
    static const luaL_Reg libs[] = {
        { LUA_GNAME, luaopen_base }, { LUA_STRLIBNAME, luaopen_string }, { LUA_TABLIBNAME, luaopen_table },
        { LUA_MATHLIBNAME, luaopen_math }, { LUA_UTF8LIBNAME, luaopen_utf8 },
    };
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);  /* [lib] */
        lua_pop(L, 1);                                    /* [] */
    }
    lua_getglobal(L, LUA_STRLIBNAME);                     /* [string] */
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");                          /* [string]: no binary chunks out */
    lua_pop(L, 1);                                        /* [] */
}

static void policy_base_patch(lua_State *L)
{
    static const luaL_Reg repl[] = {
        { "collectgarbage", policy_lua_collectgarbage },
        { "print", policy_lua_print },
        { "require", policy_lua_require },
        { NULL, NULL },
    };
    lua_pushglobaltable(L);                               /* [G] */
    luaL_setfuncs(L, repl, 0);
    lua_pushnil(L);
    lua_setfield(L, -2, "dofile");
    lua_pushnil(L);
    lua_setfield(L, -2, "loadfile");                      /* [G] */
    lua_getfield(L, -1, "load");                          /* [G load] */
    lua_pushcclosure(L, policy_lua_load, 1);              /* [G wrapper] */
    lua_setfield(L, -2, "load");                          /* [G] */
    lua_getfield(L, -1, "setmetatable");                  /* [G setmetatable] */
    lua_pushcclosure(L, policy_lua_setmetatable, 1);      /* [G wrapper] */
    lua_setfield(L, -2, "setmetatable");                  /* [G] */
    lua_getfield(L, -1, "xpcall");                        /* [G xpcall] */
    lua_pushcclosure(L, policy_lua_xpcall, 1);            /* [G wrapper] */
    lua_setfield(L, -2, "xpcall");                        /* [G] */
    for (int t = LUA_TNIL; t < LUA_NUMTYPES; t++) lua_pushstring(L, lua_typename(L, t));
    lua_pushcclosure(L, policy_lua_type, LUA_NUMTYPES);   /* [G type] */
    lua_setfield(L, -2, "type");                          /* [G] */
    lua_pop(L, 1);                                        /* [] */
    lua_newtable(L);                                      /* [loaded] */
    lua_setfield(L, LUA_REGISTRYINDEX, POLICY_LOADED);    /* [] */
}

/* os = {time, clock, date}, copied out of a temporary full os library. */
static void policy_os_open(lua_State *L)
{
    static const char *const keep[] = { "time", "clock", "date" };
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);       /* [os_full] */
    lua_createtable(L, 0, 3);                             /* [os_full os] */
    for (size_t i = 0; i < 3; i++) {
        lua_getfield(L, -2, keep[i]);                     /* [os_full os f] */
        lua_setfield(L, -2, keep[i]);                     /* [os_full os] */
    }
    lua_setglobal(L, LUA_OSLIBNAME);                      /* [os_full] */
    lua_pop(L, 1);                                        /* [] */
    /* requiref also cached the full library in the registry; unreachable, but drop it. */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* [_LOADED] */
    lua_pushnil(L);
    lua_setfield(L, -2, LUA_OSLIBNAME);
    lua_pop(L, 1);                                        /* [] */
}

/* ---- the gw table ---- */

static const policy_host_t *policy_host_of(lua_State *L) { return &policy_vm_of(L)->p->host; }

/* The bound of a message the policy sends or returns: what a client may send. */
static size_t policy_msg_max(lua_State *L)
{
    const config_t *cfg = policy_vm_of(L)->p->cfg;
    return cfg ? (size_t)cfg->max_message_bytes : 1u << 20;
}

static int policy_gw_send(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    const policy_host_t *h = policy_host_of(L);
    char err[200];
    json_t *msg = policy_json_from_lua(L, 2, policy_msg_max(L), err, sizeof err);
    if (!msg) return luaL_error(L, "gw.send: %s", err);
    int ok = h->send && h->send(h->ud, id, msg) == 0;
    json_decref(msg);
    lua_pushboolean(L, ok);
    return 1;
}

static int policy_gw_broadcast(lua_State *L)
{
    const char *room = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *except = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);                                 /* [room msg opts] */
        lua_getfield(L, 3, "except");                     /* [room msg opts except] */
        except = lua_isnil(L, 4) ? NULL : luaL_checkstring(L, 4);
    }
    const policy_host_t *h = policy_host_of(L);
    char err[200];
    json_t *msg = policy_json_from_lua(L, 2, policy_msg_max(L), err, sizeof err);
    if (!msg) return luaL_error(L, "gw.broadcast: %s", err);
    int ok = h->broadcast && h->broadcast(h->ud, room, msg, except) == 0;
    json_decref(msg);
    lua_pushboolean(L, ok);
    return 1;
}

static int policy_gw_kick(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    const char *code = luaL_optstring(L, 2, "kicked");
    const char *reason = luaL_optstring(L, 3, "");
    const policy_host_t *h = policy_host_of(L);
    lua_pushboolean(L, h->kick && h->kick(h->ud, id, code, reason) == 0);
    return 1;
}

static int policy_gw_mute(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    const char *room = luaL_checkstring(L, 2);
    int muted = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3);
    const policy_host_t *h = policy_host_of(L);
    lua_pushboolean(L, h->mute && h->mute(h->ud, id, room, muted) == 0);
    return 1;
}

static int policy_gw_members(lua_State *L)
{
    const char *room = luaL_checkstring(L, 1);
    const policy_host_t *h = policy_host_of(L);
    json_t **slot = policy_jbox_new(L);                   /* [room box] */
    *slot = h->members ? h->members(h->ud, room) : NULL;
    if (!*slot) return 0;                                 /* nil: no such room */
    policy_json_push(L, *slot, 1);                        /* [room box members] */
    json_decref(*slot);
    *slot = NULL;
    return 1;
}

static int policy_gw_rooms(lua_State *L)
{
    const policy_host_t *h = policy_host_of(L);
    json_t **slot = policy_jbox_new(L);                   /* [box] */
    *slot = h->rooms ? h->rooms(h->ud) : NULL;
    if (!*slot) *slot = json_array();
    policy_json_push(L, *slot, 1);                        /* [box rooms] */
    json_decref(*slot);
    *slot = NULL;
    return 1;
}

static int policy_gw_now(lua_State *L)
{
    lua_pushnumber(L, policy_now_real(policy_vm_of(L)->p));
    return 1;
}

static int policy_gw_log(lua_State *L)
{
    static const char *const levels[] = { "debug", "info", "warn", "error", NULL };
    int level = luaL_checkoption(L, 1, NULL, levels);     /* index = LOG_* */
    const char *msg = luaL_checkstring(L, 2);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    json_t *fields;
    char err[200];
    if (lua_isnoneornil(L, 3)) {
        fields = json_object();
    } else if (!(fields = policy_json_from_lua(L, 3, POLICY_LOG_FIELDS_MAX, err, sizeof err))) {
        fields = json_pack("{s:s}", "fields_cut", err);   /* the line still goes out, without them */
    }
    if (!json_is_object(fields)) {
        json_decref(fields);
        return luaL_error(L, "gw.log: fields must be a table with string keys");
    }
    policy_log(policy_vm_of(L)->p, level, msg, fields);
    json_decref(fields);
    return 0;
}

/* A store or bucket key: a string without NUL bytes (the C maps use C strings). */
static const char *policy_key_arg(lua_State *L, int arg)
{
    size_t len;
    const char *key = luaL_checklstring(L, arg, &len);
    luaL_argcheck(L, strlen(key) == len, arg, "key contains a NUL byte");
    return key;
}

/* luaL_optnumber(L, arg, def), reading a number argument (the common case) directly. */
static lua_Number policy_optnumber(lua_State *L, int arg, lua_Number def)
{
    int isnum;
    lua_Number v = lua_tonumberx(L, arg, &isnum);
    return isnum ? v : luaL_optnumber(L, arg, def);      /* nil/none: def; anything else as Lua says */
}

/* luaL_checknumber(L, arg), the same way. */
static lua_Number policy_checknumber(lua_State *L, int arg)
{
    int isnum;
    lua_Number v = lua_tonumberx(L, arg, &isnum);
    return isnum ? v : luaL_checknumber(L, arg);
}

static double policy_ttl_arg(lua_State *L, int arg)
{
    double ttl = policy_optnumber(L, arg, 0);
    luaL_argcheck(L, ttl >= 0 && isfinite(ttl), arg, "ttl must be a number of seconds >= 0");
    return ttl;
}

/* The cluster's shared bucket answered a mirrored take: lower the local one to what is left.
 * arg is the policy_t (it outlives the host's bus: see policy_host_t.limit_take). */
static void policy_limit_synced(void *arg, const char *key, double rate, double burst, double tokens)
{
    policy_t *p = arg;
    const char *err = NULL;
    if (policy_store_limit_sync(p->store, key, rate, burst, tokens, policy_now_mono(p), &err) < 0)
        log_debug("gw.limit: shared bucket not applied", "{s:s, s:s}", "key", key, "error", err);
}

/* gw.limit decides at once with the local bucket (hooks cannot wait). With a shared store
 * (Redis), every take it allowed is also taken from the cluster's bucket, and the answer lowers
 * the local bucket to what the cluster has left: replicas agree within one round trip. Only the
 * live VM mirrors: self_test and load-time calls of a candidate VM stay local, and so do calls
 * with {shared = false} (a per-connection key: the connection lives on one replica). */
static int policy_gw_limit(lua_State *L)
{
    const char *key = policy_key_arg(L, 1);
    double rate = policy_checknumber(L, 2);
    double burst = policy_optnumber(L, 3, rate < 1 ? 1 : ceil(rate));
    int shared = 1;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_getfield(L, 4, "shared");                     /* [.. shared] */
        shared = lua_isnil(L, -1) || lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    const char *err = NULL;
    policy_vm_t *vm = policy_vm_of(L);
    policy_t *p = vm->p;
    int rc = policy_store_limit(p->store, key, rate, burst, policy_now_mono(p), &err);
    if (rc < 0) return luaL_error(L, "gw.limit: %s", err);
    if (rc == 1 && shared && vm == p->vm && p->host.limit_take)
        (void)p->host.limit_take(p->host.ud, key, rate, burst, policy_limit_synced, p);
    lua_pushboolean(L, rc);
    return 1;
}

/* gw.array([t]): marks t (or a new table) so it converts to a JSON array even when empty. */
static int policy_gw_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);                                  /* [t] */
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);                                 /* [t] */
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, policy_vm_of(L)->array_mt);  /* [t mt] */
    lua_setmetatable(L, 1);                               /* [t] */
    return 1;
}

static int policy_store_get_l(lua_State *L)
{
    const char *key = policy_key_arg(L, 1);
    json_t *v = policy_store_get(policy_vm_of(L)->p->store, key, policy_now_mono(policy_vm_of(L)->p));
    if (json_is_object(v) || json_is_array(v))
        policy_json_push_held(L, v);           /* tables: GC steps run between the pushes */
    else if (v)
        policy_json_push(L, v, 1);             /* one push that copies v before the GC can run */
    else
        lua_pushnil(L);
    return 1;
}

static int policy_store_set_l(lua_State *L)
{
    const char *key = policy_key_arg(L, 1);
    double ttl = policy_ttl_arg(L, 3);
    policy_store_t *s = policy_vm_of(L)->p->store;
    if (lua_isnoneornil(L, 2)) {
        policy_store_del(s, key);
        return 0;
    }
    char cerr[200];
    /* twice the store's bound: the store measures the JSON exactly and says so past it */
    json_t *v = policy_json_from_lua(L, 2, 2 * POLICY_STORE_MAX_VALUE, cerr, sizeof cerr);
    if (!v) return luaL_error(L, "gw.store.set: %s", cerr);
    const char *err = NULL;
    if (policy_store_set(s, key, v, ttl, policy_now_mono(policy_vm_of(L)->p), &err) < 0)  /* v is stolen */
        return luaL_error(L, "gw.store.set: %s", err);
    return 0;
}

static int policy_store_del_l(lua_State *L)
{
    lua_pushboolean(L, policy_store_del(policy_vm_of(L)->p->store, policy_key_arg(L, 1)));
    return 1;
}

static int policy_store_incr_l(lua_State *L)
{
    const char *key = policy_key_arg(L, 1);
    json_int_t ni = 1;
    double nd = 0;
    int is_int = lua_isnoneornil(L, 2) || lua_isinteger(L, 2);
    if (!lua_isnoneornil(L, 2)) {
        if (is_int)
            ni = (json_int_t)lua_tointeger(L, 2);
        else
            nd = luaL_checknumber(L, 2);
    }
    double ttl = policy_ttl_arg(L, 3);
    json_t *n = is_int ? json_integer(ni) : json_real(nd);
    const char *err = NULL;
    json_t *r = policy_store_incr(policy_vm_of(L)->p->store, key, n, ttl, policy_now_mono(policy_vm_of(L)->p), &err);
    json_decref(n);
    if (!r) return luaL_error(L, "gw.store.incr: %s", err);
    if (json_is_integer(r))
        lua_pushinteger(L, (lua_Integer)json_integer_value(r));
    else
        lua_pushnumber(L, json_real_value(r));
    return 1;
}

/* ---- gw.jwt_verify ---- */

static int policy_b64url_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '-') return 62;
    if (ch == '_') return 63;
    return -1;
}

/* Unpadded base64url (RFC 7515 section 2). The result is xmalloc'd, NUL-terminated; NULL when
 * the input is not base64url. */
static unsigned char *policy_b64url_decode(const char *in, size_t n, size_t *outlen)
{
    if (n % 4 == 1) return NULL;
    unsigned char *out = xmalloc(n / 4 * 3 + 3);
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = policy_b64url_value((unsigned char)in[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* A base64url JSON object segment, or NULL. */
static json_t *policy_jwt_part(const char *in, size_t n)
{
    size_t len;
    unsigned char *raw = policy_b64url_decode(in, n, &len);
    if (!raw) return NULL;
    json_t *v = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (v && !json_is_object(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

static int policy_jwt_mac_ok(const char *signing, size_t signlen, const char *sig, size_t siglen,
                             const char *secret, size_t secretlen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    size_t rawlen;
    unsigned char *raw = policy_b64url_decode(sig, siglen, &rawlen);
    if (!raw) return 0;
    int ok = HMAC(EVP_sha256(), secret, (int)secretlen, (const unsigned char *)signing, signlen, mac, &maclen)
          && rawlen == maclen && CRYPTO_memcmp(raw, mac, maclen) == 0;   /* constant time */
    free(raw);
    return ok;
}

/* exp / nbf, when present, must be numbers. */
static const char *policy_jwt_times(json_t *claims, double now)
{
    json_t *exp = json_object_get(claims, "exp"), *nbf = json_object_get(claims, "nbf");
    if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf))) return "malformed";
    if (exp && now >= json_number_value(exp)) return "expired";
    if (nbf && now < json_number_value(nbf)) return "not_yet_valid";
    return NULL;
}

/* HS256 only. NULL with *claims (new reference) when valid, else the reason. */
static const char *policy_jwt_check(const char *tok, size_t len, const char *secret, size_t secretlen,
                                    double now, json_t **claims)
{
    *claims = NULL;
    const char *end = tok + len;
    const char *d1 = len <= POLICY_JWT_MAX ? memchr(tok, '.', len) : NULL;
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1))) return "malformed";
    json_t *header = policy_jwt_part(tok, (size_t)(d1 - tok));
    const char *alg = json_string_value(json_object_get(header, "alg"));
    const char *reason = !alg ? "malformed" : strcmp(alg, "HS256") ? "unsupported_alg" : NULL;
    json_decref(header);
    if (reason) return reason;
    if (!policy_jwt_mac_ok(tok, (size_t)(d2 - tok), d2 + 1, (size_t)(end - d2 - 1), secret, secretlen))
        return "bad_signature";
    json_t *payload = policy_jwt_part(d1 + 1, (size_t)(d2 - d1 - 1));
    if (!payload) return "malformed";
    if ((reason = policy_jwt_times(payload, now))) {
        json_decref(payload);
        return reason;
    }
    *claims = payload;
    return NULL;
}

static int policy_gw_jwt_verify(lua_State *L)
{
    size_t toklen, secretlen;
    const char *tok = luaL_checklstring(L, 1, &toklen);
    const char *secret = luaL_checklstring(L, 2, &secretlen);
    luaL_argcheck(L, secretlen > 0, 2, "the secret is empty");
    json_t **slot = policy_jbox_new(L);                   /* [tok secret box] */
    const char *reason = policy_jwt_check(tok, toklen, secret, secretlen, policy_now_real(policy_vm_of(L)->p), slot);
    if (reason) {
        lua_pushnil(L);                                   /* [.. box nil] */
        lua_pushstring(L, reason);                        /* [.. box nil reason] */
        return 2;
    }
    policy_json_push(L, *slot, 1);                        /* [.. box claims] */
    json_decref(*slot);
    *slot = NULL;
    return 1;
}

/* ---- gw.config: a read-only proxy over the config JSON ---- */

static int policy_config_index(lua_State *L)
{
    json_t *v = lua_type(L, 2) == LUA_TSTRING ? json_object_get(policy_vm_of(L)->config, lua_tostring(L, 2)) : NULL;
    if (!v) return 0;
    policy_json_push(L, v, 1);     /* a fresh copy each time: nested tables cannot change config */
    return 1;
}

static int policy_config_newindex(lua_State *L) { return luaL_error(L, "gw.config is read-only"); }

static int policy_config_pairs(lua_State *L)
{
    lua_getglobal(L, "next");                             /* [proxy next] */
    policy_json_push(L, policy_vm_of(L)->config, 1);      /* [proxy next copy] */
    lua_pushnil(L);                                       /* [proxy next copy nil] */
    return 3;
}

/* Registers the metatables: array mark, JSON box, config proxy. */
static void policy_metatables_open(lua_State *L, policy_vm_t *vm)
{
    static const luaL_Reg jbox[] = { { "__gc", policy_jbox_gc }, { NULL, NULL } };
    static const luaL_Reg config[] = {
        { "__index", policy_config_index }, { "__newindex", policy_config_newindex },
        { "__pairs", policy_config_pairs }, { NULL, NULL },
    };
    luaL_newmetatable(L, POLICY_ARRAY_MT);                /* [amt] */
    vm->array_mt = luaL_ref(L, LUA_REGISTRYINDEX);        /* [] */
    luaL_newmetatable(L, POLICY_JBOX_MT);                 /* [jmt] */
    luaL_setfuncs(L, jbox, 0);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);                                        /* [] */
    json_t **spare = policy_jbox_new(L);                  /* [box] */
    vm->jbox_ref = luaL_ref(L, LUA_REGISTRYINDEX);        /* [] */
    vm->jbox = spare;
    luaL_newmetatable(L, POLICY_CONFIG_MT);               /* [cmt] */
    luaL_setfuncs(L, config, 0);
    lua_pushliteral(L, "gw.config is read-only");
    lua_setfield(L, -2, "__metatable");                   /* setmetatable(gw.config, x) fails */
    vm->config_mt = luaL_ref(L, LUA_REGISTRYINDEX);       /* [] */
}

static void policy_gw_open(lua_State *L, policy_vm_t *vm)
{
    static const luaL_Reg gw[] = {
        { "send", policy_gw_send }, { "broadcast", policy_gw_broadcast }, { "kick", policy_gw_kick },
        { "mute", policy_gw_mute },
        { "members", policy_gw_members }, { "rooms", policy_gw_rooms }, { "now", policy_gw_now },
        { "log", policy_gw_log }, { "limit", policy_gw_limit }, { "jwt_verify", policy_gw_jwt_verify },
        { "array", policy_gw_array }, { "fold", policy_lib_fold },
        { "byte_runs", policy_lib_byte_runs }, { NULL, NULL },
    };
    static const luaL_Reg store[] = {
        { "get", policy_store_get_l }, { "set", policy_store_set_l }, { "del", policy_store_del_l },
        { "incr", policy_store_incr_l }, { NULL, NULL },
    };
    policy_metatables_open(L, vm);
    for (int i = 0; i < POLICY_CONN_KEYS; i++) {
        vm->conn_keys[i] = lua_pushstring(L, policy_conn_keys[i]);  /* [k]: short, so interned */
        luaL_ref(L, LUA_REGISTRYINDEX);                   /* []: pinned for the VM's life */
    }
    lua_createtable(L, 0, 16);                            /* [gw] */
    luaL_setfuncs(L, gw, 0);
    lua_createtable(L, 0, 4);                             /* [gw store] */
    luaL_setfuncs(L, store, 0);
    lua_setfield(L, -2, "store");                         /* [gw] */
    lua_newtable(L);                                      /* [gw proxy] */
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->config_mt);     /* [gw proxy cmt] */
    lua_setmetatable(L, -2);                              /* [gw proxy] */
    lua_setfield(L, -2, "config");                        /* [gw] */
    lua_pushstring(L, vm->version);
    lua_setfield(L, -2, "version");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");                          /* JSON null inside arrays */
    lua_setglobal(L, "gw");                               /* [] */
}

/* ---- loading: boot a VM from a snapshot ---- */

static int policy_slot_find(const char *key)
{
    for (int i = 0; i < METRICS_POLICY_HOOKS; i++)
        if (strcmp(key, policy_slot_names[i]) == 0) return i;
    return -1;
}

/* message_types = {"msg", ...} (the value at the top): the types on_message is called for.
 * C keeps a copy, so a script cannot change the list after the load. */
static void policy_msg_types_collect(lua_State *L, policy_vm_t *vm)
{
    if (!lua_istable(L, -1)) luaL_error(L, "policy.lua: message_types must be a list of type names");
    lua_Unsigned n = lua_rawlen(L, -1);
    if (n > POLICY_MSG_TYPES_MAX) luaL_error(L, "policy.lua: message_types lists more than %d types", POLICY_MSG_TYPES_MAX);
    vm->msg_types = xcalloc(n ? n : 1, sizeof *vm->msg_types);
    for (lua_Unsigned i = 1; i <= n; i++) {
        size_t len;
        const char *type = lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!type || len == 0 || len > 64 || strlen(type) != len)
            luaL_error(L, "policy.lua: message_types[%d] must be a type name", (int)i);
        vm->msg_types[vm->n_msg_types++] = xstrdup(type);
        lua_pop(L, 1);
    }
}

/* Keeps a registry ref to each hook of the table at t; rejects unknown keys (typos). */
static void policy_hooks_collect(lua_State *L, policy_vm_t *vm, int t)
{
    lua_pushnil(L);                                       /* [hooks nil] */
    while (lua_next(L, t)) {                              /* [hooks key value] */
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "policy.lua: the returned table has a non-string key");
        const char *key = lua_tostring(L, -2);
        if (strcmp(key, "message_types") == 0) {
            policy_msg_types_collect(L, vm);
            lua_pop(L, 1);                                /* [hooks key] */
            continue;
        }
        int slot = policy_slot_find(key);
        if (slot < 0)
            luaL_error(L, "policy.lua: unknown hook \"%s\" (hooks are on_connect, on_join, on_message, "
                          "on_leave, on_tick, self_test; and message_types)", key);
        if (!lua_isfunction(L, -1))
            luaL_error(L, "policy.lua: %s must be a function, not a %s", key, luaL_typename(L, -1));
        vm->refs[slot] = luaL_ref(L, LUA_REGISTRYINDEX);  /* [hooks key] */
    }
}

/* Body of the load run: sandbox, gw, then policy.lua itself. */
static int policy_vm_boot(lua_State *L)
{
    policy_vm_t *vm = policy_vm_of(L);
    policy_libs_open(L);
    policy_base_patch(L);
    policy_os_open(L);
    policy_lib_bound(L);
    lua_getglobal(L, LUA_STRLIBNAME);                     /* [string] */
    policy_pattern_open(L, lua_gettop(L), &vm->timed_out, POLICY_PATTERN_STEPS, POLICY_LIB_BYTES_MAX);
    lua_pop(L, 1);                                        /* [] */
    policy_gw_open(L, vm);
    const policy_src_t *src = policy_src_find(vm->srcs, vm->nsrcs, "policy.lua");
    if (!src) return luaL_error(L, "policy.lua: missing");
    lua_settop(L, 0);                                     /* [] */
    if (luaL_loadbufferx(L, src->text, src->len, "@policy.lua", "t") != LUA_OK)  /* [chunk] */
        return lua_error(L);
    lua_call(L, 0, 1);            /* inside the run's lua_pcall; [hooks] */
    if (!lua_istable(L, 1)) return luaL_error(L, "policy.lua: must return a table of hooks");
    policy_hooks_collect(L, vm, 1);
    return 0;
}

/* ---- hook calls ---- */

static void policy_field_str(lua_State *L, const char *key, const char *value)
{
    if (!value) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

const char *policy_query_find(const policy_pair_t *pairs, const char *key, size_t klen)
{
    for (const policy_pair_t *p = pairs; p->key; p++)
        if (strlen(p->key) == klen && !memcmp(p->key, key, klen)) return p->value;
    return NULL;
}

/* The query pairs as a table of strings. */
static void policy_query_push(lua_State *L, const policy_pair_t *pairs)
{
    int n = 0;
    for (const policy_pair_t *p = pairs; p->key; p++) n++;
    lua_createtable(L, 0, n);                             /* [q] */
    for (const policy_pair_t *p = pairs; p->key; p++) {
        lua_pushstring(L, p->value);                      /* [q v] */
        lua_setfield(L, -2, p->key);                      /* [q] */
    }
}

/* A fresh conn table: {id, ip, name, query, headers}, absent fields left out. */
static void policy_conn_build(lua_State *L, const policy_conn_t *conn)
{
    if (!conn) {
        lua_createtable(L, 0, 0);                         /* [conn] */
        return;
    }
    int n = (conn->id != NULL) + (conn->ip != NULL) + (conn->name != NULL) + (conn->query != NULL) +
            (conn->headers != NULL);
    lua_createtable(L, 0, n);                             /* [conn]: no spare slots (cached ones live long) */
    policy_field_str(L, "id", conn->id);
    policy_field_str(L, "ip", conn->ip);
    policy_field_str(L, "name", conn->name);
    if (conn->query) {
        policy_query_push(L, conn->query);                /* [conn query] */
        lua_setfield(L, -2, "query");                     /* [conn] */
    }
    if (conn->headers) {
        policy_json_push(L, conn->headers, 2);            /* [conn headers] */
        lua_setfield(L, -2, "headers");                   /* [conn] */
    }
}

/* Pushing the conn table. Building it (strings, the query table) on every call was a large
 * part of a cheap hook, so the VM hands out again the table it last built for a connection
 * while that table still holds exactly what a fresh build would. The host keeps, in its
 * connection, a slot with one entry per holder (live, candidate): the VM's refs to the table
 * and to a pin table, and the identity (lua_topointer) of every value the table was built with.
 * The check is one pass over the table and its query table comparing identities, without
 * reading a string's bytes: the pin table keeps every original value alive, so no other object
 * can sit at one of those addresses. A hook that changed the table (a field, a new key, the
 * query, a metatable), or a host whose fields changed (policy_conn_t.gen), gets a fresh table,
 * which replaces the entry's. The only difference a policy can see is identity: two calls for
 * the same conn may get the same table. Not cached: on_connect (it has headers), conns without
 * a slot, and nested calls (a gw.* callback re-entering a hook), which must not be handed a
 * table an outer call of the same conn is using. Only on_message fills an entry: a conn that
 * only joins and idles costs no memory in the VM; none is filled while the VM holds more than
 * half its memory cap. policy_conn_forget drops a conn's entries. */
typedef struct {
    uint64_t serial;               /* the VM whose registry holds the refs; 0 = none */
    int conn_ref, pin_ref;
    int ready;                     /* filled: the refs and identities describe a table */
    unsigned gen;                  /* policy_conn_t.gen the table was built from */
    const void *val[POLICY_CONN_KEYS];   /* id, ip, name, query as handed out */
    size_t nquery;
    const void **qpairs;           /* the query table's keys and values, 2 * nquery; owned */
} policy_conn_entry_t;

struct policy_conn_slot_s {
    policy_conn_entry_t holder[2]; /* by policy_t.role: the live holder's VM, a candidate's */
};

/* Which of vm->conn_keys the string key at idx is, or -1. By address: the keys are interned. */
static int policy_conn_key(lua_State *L, const policy_vm_t *vm, int idx)
{
    if (lua_type(L, idx) != LUA_TSTRING) return -1;
    const char *k = lua_tostring(L, idx);               /* a string key: no conversion in place */
    for (int i = 0; i < POLICY_CONN_KEYS; i++)
        if (k == vm->conn_keys[i]) return i;
    return -1;
}

/* 1 when the query table at q (absolute) has no metatable and holds e's pairs, nothing else. */
static int policy_entry_query_same(lua_State *L, const policy_conn_entry_t *e, int q)
{
    if (lua_getmetatable(L, q)) {
        lua_pop(L, 1);
        return 0;
    }
    size_t have = 0;
    lua_pushnil(L);                                       /* [.. nil] */
    while (lua_next(L, q)) {                              /* [.. k v] */
        const void *k = lua_topointer(L, -2), *v = lua_topointer(L, -1);
        size_t j = 0;
        while (j < e->nquery && e->qpairs[2 * j] != k) j++;
        if (++have > e->nquery || j == e->nquery || e->qpairs[2 * j + 1] != v) {
            lua_pop(L, 2);
            return 0;
        }
        lua_pop(L, 1);                                    /* [.. k] */
    }
    return have == e->nquery;
}

/* 1 when the conn table at t (absolute) is still the one e describes: no metatable, each key
 * one of id, ip, name, query holding the very value it was built with, nothing added. */
static int policy_entry_same(lua_State *L, policy_vm_t *vm, const policy_conn_entry_t *e, int t)
{
    if (lua_getmetatable(L, t)) {
        lua_pop(L, 1);
        return 0;
    }
    size_t want = 0, have = 0;
    for (int i = 0; i < POLICY_CONN_KEYS; i++) want += e->val[i] != NULL;
    lua_pushnil(L);                                       /* [.. nil] */
    while (lua_next(L, t)) {                              /* [.. k v] */
        int i = policy_conn_key(L, vm, -2);
        int same = ++have <= want && i >= 0 && e->val[i] && lua_topointer(L, -1) == e->val[i];
        if (same && i == POLICY_CONN_KEYS - 1) same = policy_entry_query_same(L, e, lua_absindex(L, -1));
        if (!same) {
            lua_pop(L, 2);
            return 0;
        }
        lua_pop(L, 1);                                    /* [.. k] */
    }
    return have == want;
}

/* Points e at the fresh conn table at t (absolute) for conn: refs to it and to a new pin
 * table holding every value in it, and their identities. May raise (memory): e is then not
 * ready, and whatever refs it took are still its own, dropped by the next fill or the forget. */
static void policy_entry_fill(lua_State *L, policy_vm_t *vm, policy_conn_entry_t *e, int t, const policy_conn_t *conn)
{
    if (e->serial == vm->serial) {                        /* the old table's refs are this VM's */
        luaL_unref(L, LUA_REGISTRYINDEX, e->conn_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, e->pin_ref);
    }
    e->ready = 0;
    e->serial = vm->serial;
    e->conn_ref = e->pin_ref = LUA_NOREF;
    e->nquery = 0;
    size_t nq = 0;
    for (const policy_pair_t *q = conn->query; q && q->key; q++) nq++;
    e->qpairs = xrealloc(e->qpairs, (nq ? 2 * nq : 1) * sizeof *e->qpairs);
    lua_createtable(L, (int)(POLICY_CONN_KEYS + 2 * nq), 0);  /* [.. pin] */
    int pin = lua_gettop(L), n = 0;
    for (int i = 0; i < POLICY_CONN_KEYS; i++) {
        lua_getfield(L, t, policy_conn_keys[i]);          /* [.. pin v] */
        e->val[i] = lua_topointer(L, -1);                 /* NULL for nil */
        lua_rawseti(L, pin, ++n);                         /* [.. pin] */
    }
    if (e->val[POLICY_CONN_KEYS - 1]) {
        lua_getfield(L, t, policy_conn_keys[POLICY_CONN_KEYS - 1]);   /* [.. pin q] */
        lua_pushnil(L);                                   /* [.. pin q nil] */
        while (lua_next(L, -2)) {                         /* [.. pin q k v]: at most nq pairs */
            e->qpairs[2 * e->nquery] = lua_topointer(L, -2);
            e->qpairs[2 * e->nquery + 1] = lua_topointer(L, -1);
            e->nquery++;
            lua_pushvalue(L, -2);                         /* [.. pin q k v k] */
            lua_rawseti(L, pin, ++n);                     /* [.. pin q k v] */
            lua_rawseti(L, pin, ++n);                     /* [.. pin q k] */
        }
        lua_pop(L, 1);                                    /* [.. pin] */
    }
    e->pin_ref = luaL_ref(L, LUA_REGISTRYINDEX);          /* [..] */
    lua_pushvalue(L, t);                                  /* [.. conn] */
    e->conn_ref = luaL_ref(L, LUA_REGISTRYINDEX);         /* [..] */
    e->gen = conn->gen;
    e->ready = 1;
}

/* Pushes the conn table for a hook (see above). */
static void policy_conn_push(lua_State *L, policy_vm_t *vm, const policy_conn_t *conn, int slot)
{
    if (!conn || !conn->slot || conn->headers || vm->depth != 1) {
        policy_conn_build(L, conn);                       /* [conn] */
        return;
    }
    policy_conn_entry_t *e = *conn->slot ? &(*conn->slot)->holder[vm->p->role] : NULL;
    if (e && e->ready && e->serial == vm->serial && e->gen == conn->gen) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, e->conn_ref);   /* [conn] */
        if (policy_entry_same(L, vm, e, lua_gettop(L))) return;
        lua_pop(L, 1);                                    /* [] */
    }
    policy_conn_build(L, conn);                           /* [conn] */
    if (slot != POLICY_HOOK_MESSAGE || vm->mem_used > vm->mem_limit / 2) return;
    if (!e) {
        *conn->slot = xcalloc(1, sizeof **conn->slot);
        e = &(*conn->slot)->holder[vm->p->role];
    }
    policy_entry_fill(L, vm, e, lua_gettop(L), conn);
}

/* The room argument: lua_pushstring's nil for NULL, else the string. */
static void policy_room_push(lua_State *L, policy_vm_t *vm, const char *room)
{
    if (room)
        policy_cstr_push(L, vm, room);
    else
        lua_pushnil(L);
}

static int policy_call_args(lua_State *L, policy_call_t *c)
{
    switch (c->slot) {
    case POLICY_HOOK_CONNECT: policy_conn_push(L, c->vm, c->conn, c->slot); return 1;
    case POLICY_HOOK_JOIN:
    case POLICY_HOOK_LEAVE:
        policy_conn_push(L, c->vm, c->conn, c->slot);
        policy_room_push(L, c->vm, c->room);
        return 2;
    case POLICY_HOOK_MESSAGE:
        policy_conn_push(L, c->vm, c->conn, c->slot);
        policy_room_push(L, c->vm, c->room);
        if (c->msg)
            policy_json_push(L, c->msg, 1);
        else
            lua_pushnil(L);
        return 3;
    case POLICY_HOOK_TICK: lua_pushnumber(L, c->now); return 1;
    default: return 0;
    }
}

static void policy_call_drop(policy_call_t *c, const char *code, const char *fallback)
{
    c->verdict = POLICY_DROP;
    if (c->code && c->codelen) snprintf(c->code, c->codelen, "%s", code ? code : fallback);
}

/* on_message's return value (policy.h). The conversion is the last step: nothing raises once
 * c->out holds C memory. */
static void policy_message_verdict(lua_State *L, policy_call_t *c, const char *code)
{
    int t = lua_type(L, 2);
    if (t == LUA_TTABLE) {
        char err[200];
        json_t *out = policy_json_from_lua(L, 2, policy_msg_max(L), err, sizeof err);
        if (!out) luaL_error(L, "on_message: the returned message: %s", err);
        if (!json_is_object(out)) {
            json_decref(out);
            luaL_error(L, "on_message: the returned message must be a table with string keys");
        }
        c->out = out;
    } else if ((t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, 2))) && code) {
        policy_call_drop(c, code, code);
    } else if (t == LUA_TNIL || (t == LUA_TBOOLEAN && lua_toboolean(L, 2))) {
        c->deliver = 1;
    } else if (t != LUA_TBOOLEAN) {
        luaL_error(L, "on_message: returned a %s (expected a table, true, false or nil)", luaL_typename(L, 2));
    }                              /* false: handled by the policy, deliver nothing */
}

/* Reads the hook's two results at 2 and 3 into c. */
static void policy_call_verdict(lua_State *L, policy_call_t *c)
{
    int t = lua_type(L, 2);
    const char *code = lua_type(L, 3) == LUA_TSTRING ? lua_tostring(L, 3) : NULL;
    int refused = (t == LUA_TBOOLEAN && !lua_toboolean(L, 2)) || (t == LUA_TNIL && code);
    switch (c->slot) {
    case POLICY_HOOK_CONNECT:
    case POLICY_HOOK_JOIN:
        if (refused) policy_call_drop(c, code, "forbidden");
        break;
    case POLICY_HOOK_MESSAGE: policy_message_verdict(L, c, code); break;
    case POLICY_SLOT_SELF_TEST:
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, 2))
            luaL_error(L, "policy.lua: self_test returned false%s%s", code ? ": " : "", code ? code : "");
        break;
    default: break;
    }
}

/* Body of a hook run: [c] -> hook(args...) -> verdict. */
static int policy_call_body(lua_State *L)
{
    policy_call_t *c = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->vm->refs[c->slot]);  /* [c fn] */
    int nargs = policy_call_args(L, c);                   /* [c fn args..] */
    lua_call(L, nargs, 2);        /* inside the run's lua_pcall; [c r1 r2] */
    policy_call_verdict(L, c);
    return 0;
}

/* ---- trips: after a timeout, that client's calls of that hook fail at once for a while ----
 * The time guard bounds one call; this bounds a burst of calls that would each run to the
 * timeout (16 clients sending 40 messages each would otherwise hold the loop 32 s). Keyed by
 * client address, so the clients of other addresses notice nothing; on_tick, which has no
 * client, trips for the holder. */

static unsigned policy_trip_who(const policy_call_t *c)
{
    if (!c->conn || !c->conn->ip) return 0;
    return map_hash(c->conn->ip) | 1;              /* never 0: that is the holder's */
}

static void policy_trip(policy_t *p, const policy_call_t *c)
{
    unsigned who = policy_trip_who(c);
    policy_trip_t *t = &p->trips[who % POLICY_TRIPS];
    if (t->who != who) *t = (policy_trip_t){ .who = who };
    double until = policy_clock(CLOCK_MONOTONIC_COARSE) + (double)policy_trip_ms(p) / 1000.0;
    t->until[c->slot] = until;
    if (until > p->trips_until) p->trips_until = until;
}

/* Whether this call fails at once (counted as tripped). Only reads the clock while some trip
 * is active. */
static int policy_tripped(policy_t *p, const policy_call_t *c)
{
    double now = policy_clock(CLOCK_MONOTONIC_COARSE);
    if (now >= p->trips_until) {
        p->trips_until = 0;
        return 0;
    }
    unsigned who = policy_trip_who(c);
    const policy_trip_t *t = &p->trips[who % POLICY_TRIPS];
    if (t->who != who || now >= t->until[c->slot]) return 0;
    policy_metric_inc(p, c->slot, METRICS_POLICY_TRIPPED);
    return 1;
}

/* Runs c->slot on the live VM. POLICY_PASS when the hook is missing. */
static int policy_call(policy_t *p, policy_call_t *c)
{
    c->verdict = POLICY_PASS;
    if (!p->vm || p->vm->refs[c->slot] == LUA_NOREF) {
        c->deliver = 1;
        return POLICY_PASS;
    }
    if (p->trips_until && policy_tripped(p, c)) {
        p->last_kind = METRICS_POLICY_TRIPPED;
        return POLICY_ERROR;
    }
    c->vm = p->vm;
    char err[256];
    if (policy_vm_run(c->vm, c->slot, policy_call_body, c, err, sizeof err) < 0) {
        if (p->last_kind == METRICS_POLICY_TIMEOUT) policy_trip(p, c);
        return POLICY_ERROR;
    }
    return c->verdict;
}

/* ---- the holder ---- */

/* Errors that lack a position get the file they came from. */
static void policy_err_locate(char *err, size_t errlen)
{
    if (strstr(err, ".lua:") || !errlen) return;
    char copy[512];
    snprintf(copy, sizeof copy, "%s", err);
    snprintf(err, errlen, "policy.lua: %s", copy);
}

/* A VM booted from srcs (taken over on every path), self_test passed; NULL with err. */
static policy_vm_t *policy_vm_new(policy_t *p, policy_src_t *srcs, size_t nsrcs, const char *version,
                                  char *err, size_t errlen)
{
    policy_vm_t *vm = xcalloc(1, sizeof *vm);
    vm->p = p;
    vm->srcs = srcs;
    vm->nsrcs = nsrcs;
    long mb = p->cfg ? p->cfg->policy_memory_mb : 64;
    long budget = p->cfg ? p->cfg->policy_budget : 0;
    vm->mem_limit = mb > 0 && (unsigned long)mb < SIZE_MAX >> 20 ? (size_t)mb << 20 : SIZE_MAX;
    vm->budget = budget > 0 ? budget : 0;
    vm->array_mt = vm->config_mt = vm->jbox_ref = LUA_NOREF;
    static uint64_t serials;
    vm->serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < METRICS_POLICY_HOOKS; i++) vm->refs[i] = LUA_NOREF;
    snprintf(vm->version, sizeof vm->version, "%s", version);
    char *text = p->cfg ? config_to_json(p->cfg) : NULL;
    vm->config = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (!vm->config) vm->config = json_object();
    if (!policy_src_find(srcs, nsrcs, "policy.lua")) {
        snprintf(err, errlen, "policy.lua: missing");
        goto fail;
    }
    vm->L = lua_newstate(policy_vm_alloc, vm);
    if (!vm->L) {
        snprintf(err, errlen, "policy.lua: not enough memory");
        goto fail;
    }
    lua_atpanic(vm->L, policy_vm_panic);
    /* The GC shrinks the stack to twice what is in use when it looks, and the next deep call
     * grows it again: a realloc that made malloc consolidate its free lists (hundreds of us,
     * measured). A floor on the base frame keeps a stack of up to 3x the floor as it is. */
    if (!lua_checkstack(vm->L, POLICY_STACK_FLOOR)) {
        snprintf(err, errlen, "policy.lua: not enough memory");
        goto fail;
    }
    if (policy_vm_run(vm, POLICY_SLOT_LOAD, policy_vm_boot, NULL, err, errlen) < 0) goto fail;
    if (vm->refs[POLICY_SLOT_SELF_TEST] != LUA_NOREF) {
        policy_call_t c = { .vm = vm, .slot = POLICY_SLOT_SELF_TEST };
        if (policy_vm_run(vm, POLICY_SLOT_SELF_TEST, policy_call_body, &c, err, errlen) < 0) goto fail;
    }
    return vm;
fail:
    policy_err_locate(err, errlen);
    policy_vm_free(vm);
    return NULL;
}

policy_t *policy_new(const config_t *cfg, metrics_t *metrics, const policy_host_t *host)
{
    policy_t *p = xcalloc(1, sizeof *p);
    p->cfg = cfg;
    p->metrics = metrics;
    if (host) p->host = *host;
    long store_mb = cfg ? cfg->policy_store_mb : 16;
    p->store = policy_store_new((size_t)store_mb << 20);
    p->guard = policy_guard_new(cfg ? cfg->policy_timeout_ms : 50, policy_vm_interrupt, p);
    p->trips = xcalloc(POLICY_TRIPS, sizeof *p->trips);
    return p;
}

void policy_free(policy_t *p)
{
    if (!p) return;
    policy_free(p->cand);          /* before the store a canary candidate shares */
    policy_rollout_free(p->rollout);
    policy_record_free(p->rec);
    policy_vm_free(p->vm);         /* first: its finalizers may still reach the store */
    if (!p->store_shared) policy_store_free(p->store);
    policy_guard_free(p->guard);
    free(p->trips);
    free(p);
}

static void policy_reload_count(policy_t *p, int result)
{
    if (p->metrics) METRIC_INC(p->metrics->policy_reloads[result]);
}

void policy_reload_logged(policy_t *p, const char *dir, const char *why, int worker)
{
    char err[512], old[POLICY_VERSION_SIZE];
    json_t *w = worker >= 0 ? json_integer(worker) : NULL;   /* "O*" leaves "worker" out when NULL */
    snprintf(old, sizeof old, "%s", policy_version(p));
    int rc = policy_load(p, dir, err, sizeof err);
    if (rc > 0)
        log_info("policy reloaded", "{s:s, s:s, s:s, s:O*}", "version", policy_version(p), "previous", old,
                 "trigger", why, "worker", w);
    else if (rc == 0)
        log_debug("policy unchanged", "{s:s, s:s, s:O*}", "version", old, "trigger", why, "worker", w);
    else
        log_error("policy reload failed; the previous policy keeps serving", "{s:s, s:s, s:s, s:O*}", "error", err,
                  "version", old, "trigger", why, "worker", w);
    if (rc < 0 && worker <= 0) {   /* every worker reloads the same files: one report */
        char where[128];
        int has_where = report_where(err, where, sizeof where) == 0;
        report_t r = {.kind = "reload_rejected", .level = "error", .message = err, .hook = "reload",
                      .where = has_where ? where : NULL, .policy_version = old, .worker = worker};
        report_emit(&r);
    }
    json_decref(w);
}

int policy_load(policy_t *p, const char *dir, char *err, size_t errlen)
{
    char scratch[512];
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    policy_src_t *srcs = NULL;
    size_t nsrcs = 0;
    char version[POLICY_VERSION_SIZE];
    int rc = GW_EUNAVAIL;          /* not now: a hook of the live VM is running */
    if (p->vm && p->vm->depth) {
        snprintf(err, errlen, "policy.lua: reload requested during a hook call");
        goto fail;
    }
    rc = policy_srcs_read(dir, &srcs, &nsrcs, err, errlen);
    if (rc < 0) goto fail;
    rc = policy_srcs_hash(srcs, nsrcs, version);
    if (rc < 0) {
        snprintf(err, errlen, "%s: cannot hash the sources: sha256 failed", dir);
        policy_srcs_free(srcs, nsrcs);
        goto fail;
    }
    if (p->vm && strcmp(version, p->vm->version) == 0) {
        policy_srcs_free(srcs, nsrcs);
        p->last_error[0] = '\0';    /* the directory again matches what serves */
        policy_reload_count(p, METRICS_RELOAD_UNCHANGED);
        return 0;
    }
    policy_vm_t *vm = policy_vm_new(p, srcs, nsrcs, version, err, errlen);
    if (!vm) {
        rc = GW_EINVAL;            /* the scripts do not load or fail their self_test */
        goto fail;
    }
    /* Swap. One thread owns this holder and no call of the old VM is in flight (checked
     * above), so the old VM can close at once. */
    policy_vm_free(p->vm);
    p->vm = vm;
    memset(p->trips, 0, POLICY_TRIPS * sizeof *p->trips);   /* a new version gets a fresh chance */
    p->trips_until = 0;
    p->last_error[0] = '\0';
    policy_reload_count(p, METRICS_RELOAD_OK);
    if (p->metrics) __atomic_store_n(&p->metrics->policy_loaded, 1, __ATOMIC_RELAXED);
    return 1;
fail:
    snprintf(p->last_error, sizeof p->last_error, "%s", err);
    policy_reload_count(p, METRICS_RELOAD_FAILED);
    return rc;
}

int policy_check(const config_t *cfg, const char *dir, char *version, char *err, size_t errlen)
{
    policy_t *p = policy_new(cfg, NULL, NULL);
    int rc = policy_load(p, dir, err, errlen);
    if (version) snprintf(version, POLICY_VERSION_SIZE, "%s", rc == 1 ? policy_version(p) : "");
    policy_free(p);
    return rc < 0 ? rc : 0;        /* a fresh holder has no version to match: rc is 1 */
}

const char *policy_version(const policy_t *p) { return p->vm ? p->vm->version : ""; }
const char *policy_last_error(const policy_t *p) { return p->last_error; }

static int policy_has_own(const policy_t *p, int hook)
{
    return p->vm && hook >= 0 && hook < POLICY_HOOKS && p->vm->refs[hook] != LUA_NOREF;
}

static int policy_wants_own(const policy_t *p, const char *type)
{
    if (!policy_has_own(p, POLICY_HOOK_MESSAGE)) return 0;
    if (!p->vm->msg_types) return 1;
    for (size_t i = 0; i < p->vm->n_msg_types; i++)
        if (strcmp(p->vm->msg_types[i], type) == 0) return 1;
    return 0;
}

/* ---- rollout: a candidate holder beside the live one, and the recorder ----
 * The candidate is a second holder (its own VM, version, self_test and last-good rules, guard
 * and trips) whose host, like the live holder's, is policy_rollout's. Shadow: both run every
 * hook, the live decision is applied, the candidate's compared, its gw.send/broadcast/kick
 * only recorded, its gw.store/gw.limit state its own. Canary: a connection's calls go to its
 * arm's holder, and both share the live holder's gw.store/gw.limit state (one set of rooms).
 * The candidate only sees the message types the live policy takes (policy_wants). */

static uint64_t policy_usec(double from, double to) { return to > from ? (uint64_t)((to - from) * 1e6) : 0; }

static policy_outcome_t policy_outcome_of(const policy_t *h, const policy_call_t *c, int rc)
{
    policy_outcome_t o = { rc, h->last_kind, NULL, NULL };
    if (rc == POLICY_DROP && c->code && c->codelen) o.code = c->code;
    if (rc == POLICY_PASS && c->slot == POLICY_HOOK_MESSAGE) o.out = c->out ? c->out : c->deliver ? c->msg : NULL;
    return o;
}

/* Runs c on holder h as h alone would: a message type h does not take passes unchanged. */
static int policy_holder_call(policy_t *h, policy_call_t *c)
{
    if (c->slot == POLICY_HOOK_MESSAGE && c->msg) {
        const char *type = json_string_value(json_object_get(c->msg, "type"));
        if (!policy_wants_own(h, type ? type : "")) {
            c->verdict = POLICY_PASS;
            c->deliver = 1;
            return POLICY_PASS;
        }
    }
    return policy_call(h, c);
}

/* Shadow: the live holder decides (its effects performed and recorded), then the candidate
 * runs on the same inputs (its effects recorded only) and the two are compared. The candidate
 * adds at most its own time guard to the call. */
static int policy_shadow(policy_t *p, policy_call_t *c)
{
    policy_rollout_t *r = p->rollout;
    int live = policy_rollout_live(r);
    policy_rollout_effects_clear(r);
    if (live) policy_rollout_effects(r, POLICY_ARM_STABLE, POLICY_EFFECTS_LIVE | POLICY_EFFECTS_RECORD);
    double t0 = policy_clock(CLOCK_MONOTONIC);
    int rc = policy_call(p, c);
    double t1 = policy_clock(CLOCK_MONOTONIC);
    policy_rollout_effects(r, POLICY_ARM_STABLE, POLICY_EFFECTS_LIVE);
    policy_outcome_t so = policy_outcome_of(p, c, rc);
    policy_rollout_observe(r, POLICY_ARM_STABLE, c->slot, &so, policy_usec(t0, t1), t1);
    if (!live) return rc;
    char code[128] = "";
    policy_call_t cc = { .slot = c->slot, .conn = c->conn, .room = c->room, .msg = c->msg, .now = c->now,
                         .code = code, .codelen = sizeof code };
    int crc = policy_holder_call(p->cand, &cc);
    double t2 = policy_clock(CLOCK_MONOTONIC);
    policy_outcome_t co = policy_outcome_of(p->cand, &cc, crc);
    policy_rollout_observe(r, POLICY_ARM_CANDIDATE, c->slot, &co, policy_usec(t1, t2), t2);
    policy_rollout_compare(r, c->slot, c->conn ? c->conn->id : NULL, &so, &co, t2);
    policy_rollout_effects_clear(r);
    json_decref(cc.out);
    return rc;
}

/* Canary: the call goes to the connection's arm. on_tick has no connection: the live holder's
 * speaks for the rooms, and the candidate's runs for its own timers with its effects dropped. */
static int policy_canary(policy_t *p, policy_call_t *c)
{
    policy_rollout_t *r = p->rollout;
    if (c->slot == POLICY_HOOK_TICK) {
        int rc = policy_call(p, c);
        if (policy_rollout_live(r)) {
            policy_rollout_effects(r, POLICY_ARM_CANDIDATE, 0);
            policy_call_t cc = { .slot = c->slot, .now = c->now };
            policy_call(p->cand, &cc);
            policy_rollout_effects(r, POLICY_ARM_CANDIDATE, POLICY_EFFECTS_RECORD);
        }
        return rc;
    }
    int arm = policy_rollout_arm(r, c->conn ? c->conn->id : NULL);
    policy_t *h = arm == POLICY_ARM_CANDIDATE ? p->cand : p;
    if (arm == POLICY_ARM_CANDIDATE) policy_rollout_effects(r, arm, POLICY_EFFECTS_LIVE);
    double t0 = policy_clock(CLOCK_MONOTONIC);
    int rc = policy_holder_call(h, c);
    double t1 = policy_clock(CLOCK_MONOTONIC);
    if (arm == POLICY_ARM_CANDIDATE) policy_rollout_effects(r, arm, POLICY_EFFECTS_RECORD);
    policy_rollout_effects_clear(r);
    policy_outcome_t o = policy_outcome_of(h, c, rc);
    policy_rollout_observe(r, arm, c->slot, &o, policy_usec(t0, t1), t1);
    return rc;
}

/* Every hook call goes through here: straight to the live holder, or through the rollout and
 * the recorder. A call made while one is in flight (a gw.kick ending in on_leave) goes
 * straight to its arm's holder, unobserved. */
static int policy_dispatch(policy_t *p, policy_call_t *c)
{
    if (!p->rollout && !p->rec) return policy_call(p, c);
    if (p->dispatching) {
        int arm = policy_rollout_arm(p->rollout, c->conn ? c->conn->id : NULL);
        return policy_holder_call(arm == POLICY_ARM_CANDIDATE ? p->cand : p, c);
    }
    p->dispatching = 1;
    int rc = !p->rollout ? policy_call(p, c)
           : policy_rollout_mode(p->rollout) == POLICY_ROLLOUT_SHADOW ? policy_shadow(p, c) : policy_canary(p, c);
    p->dispatching = 0;
    if (p->rec && c->slot != POLICY_HOOK_TICK && c->conn && policy_record_wants(p->rec, c->conn->id)) {
        policy_outcome_t o = policy_outcome_of(p, c, rc);
        policy_record_add(p->rec, policy_now_real(p), c->slot, c->conn, c->room, c->msg, rc, o.code, o.out);
    }
    return rc;
}

/* Loads the candidate's directory, counts the result, and tells the rollout its version. */
static int policy_candidate_load(policy_t *p, const char *dir, char *err, size_t errlen)
{
    int rc = policy_load(p->cand, dir, err, errlen);
    int result = rc > 0 ? METRICS_RELOAD_OK : rc == 0 ? METRICS_RELOAD_UNCHANGED : METRICS_RELOAD_FAILED;
    if (p->metrics) METRIC_INC(p->metrics->policy_candidate_reloads[result]);
    policy_rollout_candidate_version(p->rollout, policy_version(p->cand));
    return rc;
}

int policy_candidate_open(policy_t *p, const char *dir, int mode, char *err, size_t errlen)
{
    if (p->cand || (mode != POLICY_ROLLOUT_SHADOW && mode != POLICY_ROLLOUT_CANARY)) {
        snprintf(err, errlen, "%s", p->cand ? "a candidate policy is already open" : "candidate mode must be shadow or canary");
        return GW_EINVAL;
    }
    policy_host_t stable, cand;
    p->rollout = policy_rollout_new(mode, p->cfg, p->metrics, &p->host);
    policy_rollout_host(p->rollout, POLICY_ARM_STABLE, &stable);
    policy_rollout_host(p->rollout, POLICY_ARM_CANDIDATE, &cand);
    p->host = stable;
    p->cand = policy_new(p->cfg, NULL, &cand);
    p->cand->role = 1;
    p->cand->clock_fixed = p->clock_fixed;
    if (mode == POLICY_ROLLOUT_CANARY) {
        policy_store_free(p->cand->store);
        p->cand->store = p->store;
        p->cand->store_shared = 1;
    }
    return policy_candidate_load(p, dir, err, errlen);
}

void policy_candidate_reload_logged(policy_t *p, const char *dir, const char *why, int worker)
{
    if (!p->cand) return;
    char err[512], old[POLICY_VERSION_SIZE];
    json_t *w = worker >= 0 ? json_integer(worker) : NULL;   /* "O*" leaves "worker" out when NULL */
    snprintf(old, sizeof old, "%s", policy_version(p->cand));
    int rc = policy_candidate_load(p, dir, err, sizeof err);
    if (rc > 0)
        log_info("policy candidate reloaded", "{s:s, s:s, s:s, s:O*}", "version", policy_version(p->cand), "previous",
                 old, "trigger", why, "worker", w);
    else if (rc == 0)
        log_debug("policy candidate unchanged", "{s:s, s:s, s:O*}", "version", old, "trigger", why, "worker", w);
    else
        log_error("policy candidate reload failed; its previous version keeps its place", "{s:s, s:s, s:s, s:O*}",
                  "error", err, "version", old, "trigger", why, "worker", w);
    json_decref(w);
}

const char *policy_candidate_version(const policy_t *p) { return p->cand ? policy_version(p->cand) : ""; }

json_t *policy_candidate_status(const policy_t *p)
{
    if (!p->cand) return NULL;
    json_t *j = policy_rollout_status(p->rollout);
    json_object_set_new(j, "last_error", json_string(p->cand->last_error));
    return j;
}

void policy_candidate_on_diff(policy_t *p, void (*cb)(void *ud, int hook, unsigned kinds, json_t *example), void *ud)
{
    if (p->rollout) policy_rollout_on_diff(p->rollout, cb, ud);
}

int policy_record_start(policy_t *p, const char *file, double sample, int redact, char *err, size_t errlen)
{
    if (p->rec) return 0;
    p->rec = policy_record_open(file, sample, redact, err, errlen);
    return p->rec ? 0 : GW_EINVAL;
}

void policy_clock_set(policy_t *p, double now)
{
    p->clock_fixed = now;
    if (p->cand) p->cand->clock_fixed = now;
}

/* ---- the hooks ---- */

int policy_has(const policy_t *p, int hook)
{
    return policy_has_own(p, hook) || (p->cand && policy_rollout_live(p->rollout) && policy_has_own(p->cand, hook));
}

int policy_wants(const policy_t *p, const char *type) { return policy_wants_own(p, type); }

int policy_on_connect(policy_t *p, const policy_conn_t *conn, char *reason, size_t len)
{
    policy_call_t c = { .slot = POLICY_HOOK_CONNECT, .conn = conn, .code = reason, .codelen = len };
    return policy_dispatch(p, &c);
}

int policy_on_join(policy_t *p, const policy_conn_t *conn, const char *room, char *code, size_t len)
{
    policy_call_t c = { .slot = POLICY_HOOK_JOIN, .conn = conn, .room = room, .code = code, .codelen = len };
    return policy_dispatch(p, &c);
}

int policy_on_message(policy_t *p, const policy_conn_t *conn, const char *room, json_t *msg, json_t **out,
                      char *code, size_t len)
{
    policy_call_t c = { .slot = POLICY_HOOK_MESSAGE, .conn = conn, .room = room, .msg = msg,
                        .code = code, .codelen = len };
    *out = NULL;
    int rc = policy_dispatch(p, &c);
    if (rc == POLICY_PASS) *out = c.out ? c.out : c.deliver ? json_incref(msg) : NULL;
    else json_decref(c.out);
    return rc;
}

void policy_on_leave(policy_t *p, const policy_conn_t *conn, const char *room)
{
    policy_call_t c = { .slot = POLICY_HOOK_LEAVE, .conn = conn, .room = room };
    policy_dispatch(p, &c);
}

/* Drops holder h's entry of a slot: its refs go when h's VM holds them. */
static void policy_entry_drop(policy_t *h, policy_conn_entry_t *e)
{
    if (h && h->vm && e->serial == h->vm->serial) {
        luaL_unref(h->vm->L, LUA_REGISTRYINDEX, e->conn_ref);   /* no Lua code runs: safe in a hook */
        luaL_unref(h->vm->L, LUA_REGISTRYINDEX, e->pin_ref);
    }
    free(e->qpairs);
}

void policy_conn_forget(policy_t *p, policy_conn_slot_t **slot)
{
    if (!slot || !*slot) return;
    policy_entry_drop(p, &(*slot)->holder[0]);
    policy_entry_drop(p ? p->cand : NULL, &(*slot)->holder[1]);
    free(*slot);
    *slot = NULL;
}

void policy_on_tick(policy_t *p, double now)
{
    policy_store_tick(p->store, policy_now_mono(p));
    policy_pool_shrink(p->vm);
    if (p->metrics) {
        __atomic_store_n(&p->metrics->policy_store_keys, (uint64_t)policy_store_count(p->store), __ATOMIC_RELAXED);
        __atomic_store_n(&p->metrics->policy_store_buckets, (uint64_t)policy_store_buckets(p->store),
                         __ATOMIC_RELAXED);
        __atomic_store_n(&p->metrics->policy_store_evicted, (uint64_t)policy_store_evicted(p->store),
                         __ATOMIC_RELAXED);
        __atomic_store_n(&p->metrics->policy_store_bytes, (uint64_t)policy_store_bytes(p->store), __ATOMIC_RELAXED);
    }
    policy_call_t c = { .slot = POLICY_HOOK_TICK, .now = now };
    policy_dispatch(p, &c);
    if (p->cand && !p->cand->store_shared) policy_store_tick(p->cand->store, policy_now_mono(p->cand));
    if (p->cand) policy_pool_shrink(p->cand->vm);
    policy_record_flush(p->rec);
}
