/* crash: see crash.h. Everything the handler needs is prepared at install (the path prefix,
 * the alternate stack, the unwinder loaded by a first backtrace call), so the handler itself
 * only formats numbers into a stack buffer and writes. */
#define _GNU_SOURCE
#include "app/crash.h"

#include <dirent.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/err.h"

#define CRASH_FRAMES 64
#define CRASH_ALTSTACK (64 * 1024)

static char crash_prefix[512];           /* "DIR/crash-" */
static char crash_policy[80];            /* the last policy version noted */
static volatile sig_atomic_t crash_busy;

static const int crash_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static const char *crash_signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    default: return "signal";
    }
}

/* ---- the handler: async-signal-safe only ---- */

static size_t crash_cat(char *dst, size_t at, size_t cap, const char *s)
{
    while (*s && at + 1 < cap) dst[at++] = *s++;
    dst[at] = '\0';
    return at;
}

static size_t crash_num(char *dst, size_t at, size_t cap, unsigned long long v, int width)
{
    char tmp[24];
    int n = 0;
    do tmp[n++] = (char)('0' + v % 10), v /= 10;
    while (v && n < (int)sizeof tmp);
    while (n < width && n < (int)sizeof tmp) tmp[n++] = '0';
    while (n && at + 1 < cap) dst[at++] = tmp[--n];
    dst[at] = '\0';
    return at;
}

static void crash_write(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void crash_on_signal(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    int saved = errno;
    if (!crash_busy) {
        crash_busy = 1;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        char path[600];
        size_t n = crash_cat(path, 0, sizeof path, crash_prefix);
        n = crash_num(path, n, sizeof path, (unsigned long long)ts.tv_sec, 10);
        n = crash_cat(path, n, sizeof path, "-");
        n = crash_num(path, n, sizeof path, (unsigned long long)getpid(), 1);
        crash_cat(path, n, sizeof path, ".txt");
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char head[512], thread[17] = "";
            prctl(PR_GET_NAME, thread, 0, 0, 0);
            size_t h = crash_cat(head, 0, sizeof head, "chatgw-crash 1\nsignal ");
            h = crash_num(head, h, sizeof head, (unsigned long long)sig, 1);
            h = crash_cat(head, h, sizeof head, " ");
            h = crash_cat(head, h, sizeof head, crash_signal_name(sig));
            h = crash_cat(head, h, sizeof head, "\ncode ");
            h = crash_num(head, h, sizeof head, (unsigned long long)(info ? (unsigned)info->si_code : 0), 1);
            h = crash_cat(head, h, sizeof head, "\ntime ");
            h = crash_num(head, h, sizeof head, (unsigned long long)ts.tv_sec, 1);
            h = crash_cat(head, h, sizeof head, "\nversion " CHATGW_VERSION "\npolicy ");
            h = crash_cat(head, h, sizeof head, crash_policy);
            h = crash_cat(head, h, sizeof head, "\npid ");
            h = crash_num(head, h, sizeof head, (unsigned long long)getpid(), 1);
            h = crash_cat(head, h, sizeof head, "\nthread ");
            h = crash_cat(head, h, sizeof head, thread);
            h = crash_cat(head, h, sizeof head, "\nbacktrace\n");
            crash_write(fd, head, h);
            void *frames[CRASH_FRAMES];
            int nf = backtrace(frames, CRASH_FRAMES);
            backtrace_symbols_fd(frames, nf, fd);
            close(fd);
        }
    }
    errno = saved;
    /* SA_RESETHAND restored the default action: the process ends as the signal says. */
    raise(sig);
}

/* ---- install ---- */

int crash_install(const char *dir, char *err, size_t errlen)
{
    if (!dir || !*dir) return 0;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0) {
        snprintf(err, errlen, "config: crash_dir: %s is not a writable directory", dir);
        return GW_EINVAL;
    }
    int n = snprintf(crash_prefix, sizeof crash_prefix, "%s/crash-", dir);
    if (n < 0 || (size_t)n >= sizeof crash_prefix) {
        snprintf(err, errlen, "config: crash_dir: path too long");
        return GW_EINVAL;
    }
    void *prime[2];
    backtrace(prime, 2);   /* loads the unwinder now: the handler must not dlopen */
    static char *altstack;
    if (!altstack) {
        altstack = xmalloc(CRASH_ALTSTACK);
        stack_t ss = {.ss_sp = altstack, .ss_size = CRASH_ALTSTACK};
        sigaltstack(&ss, NULL);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = crash_on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof crash_signals / sizeof crash_signals[0]; i++) sigaction(crash_signals[i], &sa, NULL);
    return 0;
}

void crash_policy_note(const char *version)
{
    if (!version) return;
    /* a torn read is possible only in a crash racing a reload; the record says what it saw */
    size_t n = strnlen(version, sizeof crash_policy - 1);
    memcpy(crash_policy, version, n);
    crash_policy[n] = '\0';
}

/* ---- reading records ---- */

/* "binary(function+0x1f) [0x55d0c0ffee]" as a Sentry frame. */
static json_t *crash_frame(const char *line, size_t len)
{
    char l[512];
    snprintf(l, sizeof l, "%.*s", (int)(len < sizeof l ? len : sizeof l - 1), line);
    json_t *f = json_object();
    char *open = strchr(l, '('), *close = open ? strchr(open, ')') : NULL, *br = strrchr(l, '[');
    if (open && close) {
        json_object_set_new(f, "package", json_stringn(l, (size_t)(open - l)));
        size_t fl = strcspn(open + 1, "+)");
        if (fl) json_object_set_new(f, "function", json_stringn(open + 1, fl));
        else json_object_set_new(f, "function", json_stringn(open + 1, (size_t)(close - open - 1)));
    } else {
        json_object_set_new(f, "function", json_string(l));
    }
    if (br) {
        size_t al = strcspn(br + 1, "]");
        json_object_set_new(f, "instruction_addr", json_stringn(br + 1, al));
    }
    return f;
}

static const char *crash_field(const char *text, const char *key, size_t *len)
{
    size_t kl = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, key, kl) && p[kl] == ' ') {
            *len = strcspn(p + kl + 1, "\n");
            return p + kl + 1;
        }
    }
    *len = 0;
    return NULL;
}

json_t *crash_record_event(const char *text, size_t len)
{
    if (len < 15 || strncmp(text, "chatgw-crash 1\n", 15) || memchr(text, '\0', len)) return NULL;
    char *t = xstrndup(text, len);
    size_t l;
    const char *v;
    int signum = 0;
    char signame[32] = "signal", version[64] = "unknown", policy[80] = "", thread[32] = "";
    long long when = 0;
    if ((v = crash_field(t, "signal", &l))) sscanf(v, "%d %31s", &signum, signame);
    if ((v = crash_field(t, "version", &l))) snprintf(version, sizeof version, "%.*s", (int)l, v);
    if ((v = crash_field(t, "policy", &l))) snprintf(policy, sizeof policy, "%.*s", (int)l, v);
    if ((v = crash_field(t, "thread", &l))) snprintf(thread, sizeof thread, "%.*s", (int)l, v);
    if ((v = crash_field(t, "time", &l))) when = atoll(v);
    if (!signum || !when) {
        free(t);
        return NULL;
    }
    const char *bt = strstr(t, "\nbacktrace\n");
    bt = bt ? bt + 11 : "";
    json_t *frames = json_array();
    const char *top = NULL;   /* the innermost frame of chatgw itself, for the fingerprint */
    for (const char *p = bt; *p;) {
        size_t n = strcspn(p, "\n");
        if (n) {
            json_t *f = crash_frame(p, n);
            const char *fn = json_string_value(json_object_get(f, "function"));
            const char *pkg = json_string_value(json_object_get(f, "package"));
            int ours = pkg && strstr(pkg, "chatgw") && fn && strncmp(fn, "crash_", 6);
            json_object_set_new(f, "in_app", json_boolean(ours));
            if (ours && !top) top = fn;
            json_array_insert_new(frames, 0, f);   /* Sentry wants the oldest first */
        }
        p += n;
        if (*p) p++;
    }
    char msg[160], release[80];
    snprintf(msg, sizeof msg, "chatgw crashed: signal %d (%s)%s%s", signum, signame, thread[0] ? " in thread " : "",
             thread);
    snprintf(release, sizeof release, "chatgw@%s", version);
    json_t *tags = json_pack("{s:s, s:s}", "kind", "crash", "signal", signame);
    if (policy[0]) json_object_set_new(tags, "policy_version", json_stringn(policy, strnlen(policy, 12)));
    if (thread[0]) json_object_set_new(tags, "thread", json_string(thread));
    json_t *exc = json_pack("{s:s, s:s, s:{s:s, s:b, s:{s:{s:i, s:s}}}, s:{s:o}}", "type", signame, "value", msg,
                            "mechanism", "type", "signalhandler", "handled", 0, "meta", "signal", "number", signum,
                            "name", signame, "stacktrace", "frames", frames);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:{s:s}, s:I, s:s, s:o, s:{s:[o]}, s:{s:s, s:s}, s:[s, s, s]}", "level",
                           "fatal", "logger", "chatgw", "platform", "native", "message", "formatted", msg, "timestamp",
                           (json_int_t)when, "release", release, "tags", tags, "exception", "values", exc, "extra",
                           "backtrace", bt, "policy_version", policy, "fingerprint", "crash", signame, top ? top : "?");
    free(t);
    return ev;
}

static int crash_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)b, *(char *const *)a);   /* newest first: the time is zero-padded */
}

int crash_records_each(const char *dir, void (*fn)(void *ud, const char *path, json_t *event), void *ud)
{
    if (!dir || !*dir) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "crash-", 6) || l < 10 || strcmp(e->d_name + l - 4, ".txt")) continue;
        if (n == cap) names = xrealloc(names, (cap = cap ? cap * 2 : 16) * sizeof *names);
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (n > 1) qsort(names, n, sizeof *names, crash_name_cmp);
    int got = 0;
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        free(names[i]);
        json_t *ev = NULL;
        if (i < CRASH_RECORDS_MAX) {
            int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd >= 0) {
                char *buf = xmalloc(CRASH_RECORD_MAX_BYTES);
                ssize_t r = read(fd, buf, CRASH_RECORD_MAX_BYTES);
                close(fd);
                if (r > 0) ev = crash_record_event(buf, (size_t)r);
                free(buf);
            }
        }
        if (!ev) {
            unlink(path);   /* over the count, unreadable or not a record: nothing to send */
            continue;
        }
        fn(ud, path, ev);
        got++;
    }
    free(names);
    return got;
}
