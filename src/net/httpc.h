/* httpc: outgoing HTTP(S) requests on a libuv loop, through libcurl's multi interface, for
 * the services chatgw itself calls (an error tracker, a media server). It is not for client
 * traffic.
 *
 * Contract:
 * - One httpc_t per loop, used only from that loop's thread. No call blocks the loop: name
 *   resolution, connect, TLS and transfer all run inside libcurl's multi state machine driven
 *   by uv_poll/uv_timer handles.
 * - At most max_inflight requests at once; httpc_request answers GW_ELIMIT beyond that (the
 *   caller decides whether to queue or drop). Each request has its own total timeout.
 * - A request that httpc_request accepted (returned an id > 0) completes exactly once through
 *   its callback, on the loop thread, unless it is cancelled first (httpc_cancel, httpc_free):
 *   a cancelled request never calls back.
 * - The callback gets the HTTP status (>= 100) and the response body, or a negative GW_E* /
 *   UV_E* code (GW_ETIMEDOUT, GW_EDOWN for a refused or failed transfer) and an empty body.
 *   The body is borrowed for the callback's duration only. Bodies are capped at
 *   HTTPC_BODY_MAX bytes (a longer one completes with GW_ETOOBIG).
 * - The request body and the header lines are copied; the caller's buffers may go at once. */
#ifndef CHATGW_HTTPC_H
#define CHATGW_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define HTTPC_BODY_MAX (1024 * 1024)

typedef struct httpc httpc_t;

typedef void (*httpc_done_cb)(void *ud, int status, const char *body, size_t len);

/* NULL on allocation failure. */
httpc_t *httpc_new(uv_loop_t *loop, unsigned max_inflight);

/* method "GET" or "POST" (others as libcurl allows); headers: NULL-terminated "Name: value"
 * lines, or NULL. Returns a request id > 0, or a negative GW_E* code (GW_ELIMIT, GW_EINVAL,
 * GW_ENOMEM) without calling back. */
int64_t httpc_request(httpc_t *h, const char *method, const char *url, const char *const *headers,
                      const char *body, size_t body_len, unsigned timeout_ms, httpc_done_cb cb,
                      void *ud);

/* Abandons one request: its callback is not run. Unknown or finished ids are ignored. */
void httpc_cancel(httpc_t *h, int64_t id);

size_t httpc_inflight(const httpc_t *h);

/* Abandons every pending request (no callbacks) and releases the handles; the memory goes
 * when libuv has closed them, so the loop must run once more. NULL is ignored. */
void httpc_free(httpc_t *h);

#endif
