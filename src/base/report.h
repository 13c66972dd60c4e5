/* report: the hand-off of errors worth tracking outside the process (an error tracker such as
 * Sentry) from any layer to the one sink the app installs. The layers that notice such errors
 * (policy: hook failures and rejected reloads; bus: a lost Redis link) stand below the code
 * that sends them and cannot call up; they call report_emit, which does nothing until
 * report_sink_set installed a sink.
 *
 * Contract:
 * - report_sink_set is called on the main thread before any worker thread starts, and again
 *   (with NULL) only after they all stopped; report_emit may then be called from any thread.
 * - report_emit never blocks and never fails the caller: the sink copies what it keeps (every
 *   string in the report is borrowed for the call only) and drops what it cannot queue.
 * - A report is an error already logged and counted where it happened; the sink only forwards
 *   it. Logging it again is the sink's business, not the caller's. */
#ifndef CHATGW_REPORT_H
#define CHATGW_REPORT_H

typedef struct {
    const char *kind;            /* stable word: "policy_error", "policy_timeout", "policy_budget",
                                  * "policy_memory", "reload_rejected", "policy_load_failed",
                                  * "bus_error" */
    const char *level;           /* "error" or "warning" */
    const char *message;         /* one line */
    const char *hook;            /* the policy hook, or NULL */
    const char *where;           /* "file.lua:12" (the error's first Lua frame), or NULL */
    const char *traceback;       /* the Lua traceback, lines of "\tfile.lua:N: in ...", or NULL */
    const char *policy_version;  /* or NULL */
    int worker;                  /* the worker's index, or -1: the calling thread's (the sink knows) */
} report_t;

typedef void (*report_sink_fn)(void *ud, const report_t *r);

void report_sink_set(report_sink_fn fn, void *ud);

/* Forwards r to the sink, if any. */
void report_emit(const report_t *r);

/* The "file.lua:N" of the first Lua frame named in msg, into out (NUL-terminated); 0, or
 * GW_ENOTFOUND when msg names none. No I/O. */
int report_where(const char *msg, char *out, unsigned outlen);

#endif
