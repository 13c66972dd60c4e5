/* sentry: error reports to Sentry, or to anything that speaks its envelope protocol
 * (GlitchTip, self-hosted Sentry), over httpc.
 *
 * Contract:
 * - The DSN follows Sentry's format, {http,https}://PUBLIC_KEY[:SECRET]@HOST[:PORT][/PATH]/PROJECT;
 *   events go to POST .../[PATH/]api/PROJECT/envelope/ with an X-Sentry-Auth header
 *   (sentry_version=7), one event item per envelope.
 * - sentry_capture and sentry_capture_event may be called from any thread; they never block on
 *   the network. They rate-limit per fingerprint (kind + hook + file:line: SENTRY_BURST events
 *   at once, then one per SENTRY_REFILL_S seconds; the next event sent carries how many were
 *   held back) and queue at most SENTRY_QUEUE_MAX envelopes; beyond, the event is dropped and
 *   counted. Everything else runs on the loop given to sentry_new, with at most
 *   SENTRY_INFLIGHT requests and SENTRY_TIMEOUT_MS each.
 * - Results are counted in metrics->sentry_events[METRICS_SENTRY_*]: sent (a 2xx), failed (any
 *   other answer or none), dropped (queue full), rate_limited.
 * - An event given with a done_path (a crash record) removes that file once the DSN accepted
 *   it, and only then. */
#ifndef CHATGW_SENTRY_H
#define CHATGW_SENTRY_H

#include <jansson.h>
#include <stddef.h>
#include <uv.h>

#include "base/metrics.h"
#include "base/report.h"

#define SENTRY_QUEUE_MAX 32
#define SENTRY_INFLIGHT 2
#define SENTRY_TIMEOUT_MS 5000
#define SENTRY_BURST 5
#define SENTRY_REFILL_S 60
#define SENTRY_FINGERPRINTS 64   /* fingerprints tracked at once; the least recent goes first */

typedef struct {
    char url[1024];              /* the envelope endpoint */
    char auth[512];              /* the X-Sentry-Auth header line */
    char public_dsn[1024];       /* the DSN without its secret, for the envelope header */
} sentry_dsn_t;

/* 0, or GW_EINVAL with a one-line reason in err (which never repeats the keys). */
int sentry_dsn_parse(const char *dsn, sentry_dsn_t *out, char *err, size_t errlen);

typedef struct {
    const char *dsn;             /* required */
    const char *release;         /* "chatgw@VERSION" */
    const char *environment;
    const char *server_name;
    metrics_t *metrics;          /* may be NULL */
} sentry_opts_t;

typedef struct sentry sentry_t;

/* NULL with err on a bad DSN or when the client cannot be made. */
sentry_t *sentry_new(uv_loop_t *loop, const sentry_opts_t *o, char *err, size_t errlen);

/* A report from any layer (base/report.h); worker >= 0 tags it. Any thread. */
void sentry_capture(sentry_t *s, const report_t *r, int worker);

/* A prepared event (the caller's fields win; ids, release, environment and server_name are
 * filled when absent); the event is stolen. fingerprint NULL: not rate-limited. Any thread. */
void sentry_capture_event(sentry_t *s, json_t *event, const char *fingerprint, const char *done_path);

/* On the loop's thread, once no other thread can capture: abandons what is queued and in
 * flight; the memory goes when the loop has closed the handles. NULL is ignored. */
void sentry_free(sentry_t *s);

/* ---- the codec, no I/O (for the tests) ---- */

/* The event for r, as sentry_capture sends it. */
json_t *sentry_event_of(const report_t *r, int worker, unsigned suppressed);

/* The envelope for event (header, item header, payload, each on its line), NUL-terminated,
 * its length in *len; caller frees. */
char *sentry_envelope(const char *public_dsn, const json_t *event, size_t *len);

#endif
