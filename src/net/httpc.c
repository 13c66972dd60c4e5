/* httpc: libcurl's multi interface driven by libuv, as in curl's multi-uv example. libcurl
 * tells us which sockets to watch (httpc_sock_cb) and when to wake it (httpc_timer_cb); a
 * uv_poll per socket and one uv_timer hand readiness back through curl_multi_socket_action,
 * and finished transfers are collected from curl_multi_info_read. Nothing here blocks: the
 * resolver is libcurl's threaded one, and libcurl never sleeps inside socket_action.
 *
 * A callback may call back into httpc (a new request, a cancel, even httpc_free): the
 * collection loop re-reads the state after every callback, and a free during a callback is
 * finished when the loop unwinds. */
#include "net/httpc.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"

typedef struct httpc_req {
    struct httpc_req *prev, *next;
    httpc_t *h;
    CURL *easy;
    struct curl_slist *headers;
    int64_t id;
    httpc_done_cb cb;
    void *ud;
    buf_t body;
    int toobig;
} httpc_req_t;

/* One watched socket; lives until its uv_poll is closed. */
typedef struct httpc_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    httpc_t *h;
    struct httpc_sock *prev, *next;
} httpc_sock_t;

struct httpc {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    unsigned max_inflight;
    size_t inflight;
    int64_t next_id;
    httpc_req_t *reqs;
    httpc_sock_t *socks; /* polls not yet closed */
    int dispatching;    /* inside httpc_collect: a free waits for it */
    int freed;          /* httpc_free was called */
};

static pthread_once_t httpc_once = PTHREAD_ONCE_INIT;
static int httpc_global_ok;

static void httpc_global_init(void)
{
    httpc_global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

static void httpc_req_unlink(httpc_t *h, httpc_req_t *r)
{
    if (r->prev) r->prev->next = r->next;
    else h->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    h->inflight--;
}

/* Detaches r from libcurl and frees it; no callback. */
static void httpc_req_drop(httpc_t *h, httpc_req_t *r)
{
    httpc_req_unlink(h, r);
    curl_multi_remove_handle(h->multi, r->easy);
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    buf_free(&r->body);
    free(r);
}

static size_t httpc_write_cb(char *p, size_t size, size_t n, void *userdata)
{
    httpc_req_t *r = userdata;
    size_t len = size * n;
    if (r->body.len + len > HTTPC_BODY_MAX) {
        r->toobig = 1;
        return 0; /* libcurl ends the transfer with CURLE_WRITE_ERROR */
    }
    buf_append(&r->body, p, len);
    return len;
}

static int httpc_status_of(httpc_req_t *r, CURLcode rc)
{
    long code = 0;
    switch (rc) {
    case CURLE_OK:
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        return code >= 100 ? (int)code : GW_EDOWN;
    case CURLE_OPERATION_TIMEDOUT: return GW_ETIMEDOUT;
    case CURLE_WRITE_ERROR: return r->toobig ? GW_ETOOBIG : GW_EDOWN;
    case CURLE_FILESIZE_EXCEEDED: return GW_ETOOBIG;
    case CURLE_OUT_OF_MEMORY: return GW_ENOMEM;
    default: return GW_EDOWN;
    }
}

static void httpc_teardown(httpc_t *h);

/* Runs the callbacks of finished transfers. */
static void httpc_collect(httpc_t *h)
{
    CURLMsg *msg;
    int left;
    h->dispatching++;
    while (!h->freed && (msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        httpc_req_t *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        if (!r) continue;
        int status = httpc_status_of(r, msg->data.result);
        /* Unlink before the callback so that a cancel or free inside it cannot reach r. */
        httpc_req_unlink(h, r);
        curl_multi_remove_handle(h->multi, r->easy);
        curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->headers);
        if (status < 0) r->body.len = 0;
        r->cb(r->ud, status, status < 0 ? "" : buf_cstr(&r->body), status < 0 ? 0 : r->body.len);
        buf_free(&r->body);
        free(r);
    }
    h->dispatching--;
    if (h->freed && !h->dispatching) httpc_teardown(h);
}

static void httpc_sock_close_cb(uv_handle_t *hd)
{
    free(hd->data);
}

static void httpc_sock_close(httpc_t *h, httpc_sock_t *s)
{
    if (s->prev) s->prev->next = s->next;
    else h->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, httpc_sock_close_cb);
}

static void httpc_poll_cb(uv_poll_t *p, int status, int events)
{
    httpc_sock_t *s = p->data;
    httpc_t *h = s->h;
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(h->multi, s->fd, flags, &running);
    httpc_collect(h);
}

static void httpc_timer_fire(uv_timer_t *t)
{
    httpc_t *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    httpc_collect(h);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching one socket. */
static int httpc_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    httpc_t *h = userp;
    httpc_sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            httpc_sock_close(h, s);
            curl_multi_assign(h->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = xcalloc(1, sizeof *s);
        s->fd = fd;
        s->h = h;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) < 0) {
            free(s);
            return -1; /* libcurl fails the transfer */
        }
        s->poll.data = s;
        s->next = h->socks;
        if (h->socks) h->socks->prev = s;
        h->socks = s;
        curl_multi_assign(h->multi, fd, s);
    }
    int events = 0;
    if (what & CURL_POLL_IN) events |= UV_READABLE;
    if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, httpc_poll_cb) < 0 ? -1 : 0;
}

/* CURLMOPT_TIMERFUNCTION: libcurl must not be re-entered from here, so even "now" goes
 * through the loop. */
static int httpc_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    httpc_t *h = userp;
    if (timeout_ms < 0) uv_timer_stop(&h->timer);
    else uv_timer_start(&h->timer, httpc_timer_fire, (uint64_t)timeout_ms, 0);
    return 0;
}

httpc_t *httpc_new(uv_loop_t *loop, unsigned max_inflight)
{
    pthread_once(&httpc_once, httpc_global_init);
    if (!httpc_global_ok || !loop || !max_inflight) return NULL;
    httpc_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->loop = loop;
    h->max_inflight = max_inflight;
    h->multi = curl_multi_init();
    if (!h->multi) goto failed_multi;
    if (uv_timer_init(loop, &h->timer) < 0) goto failed_timer;
    h->timer.data = h;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, httpc_sock_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, httpc_timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    return h;

failed_timer:
    curl_multi_cleanup(h->multi);
failed_multi:
    free(h);
    return NULL;
}

int64_t httpc_request(httpc_t *h, const char *method, const char *url, const char *const *headers,
                      const char *body, size_t body_len, unsigned timeout_ms, httpc_done_cb cb,
                      void *ud)
{
    if (!h || h->freed || !method || !*method || !url || !cb || !timeout_ms) return GW_EINVAL;
    if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) return GW_EINVAL;
    if (body_len && !body) return GW_EINVAL;
    if (h->inflight >= h->max_inflight) return GW_ELIMIT;

    httpc_req_t *r = calloc(1, sizeof *r);
    if (!r) return GW_ENOMEM;
    r->easy = curl_easy_init();
    if (!r->easy) {
        free(r);
        return GW_ENOMEM;
    }
    buf_init(&r->body);
    r->h = h;
    r->cb = cb;
    r->ud = ud;

    CURL *e = r->easy;
    int ok = curl_easy_setopt(e, CURLOPT_URL, url) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, httpc_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)HTTPC_BODY_MAX);
    if (!strcmp(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(method, "POST")) ok = ok && curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) == CURLE_OK;
        if (body || !strcmp(method, "POST")) {
            /* COPYPOSTFIELDS copies exactly POSTFIELDSIZE bytes, binary included. */
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
            ok = ok && curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "") == CURLE_OK;
        }
    }
    /* No "Expect: 100-continue" round trip before a larger body. */
    struct curl_slist *sl = curl_slist_append(NULL, "Expect:");
    for (size_t i = 0; sl && headers && headers[i]; i++) {
        struct curl_slist *n = curl_slist_append(sl, headers[i]);
        if (!n) {
            curl_slist_free_all(sl);
            sl = NULL;
        } else {
            sl = n;
        }
    }
    r->headers = sl;
    ok = ok && sl && curl_easy_setopt(e, CURLOPT_HTTPHEADER, sl) == CURLE_OK;
    if (!ok) {
        int rc = sl ? GW_EINVAL : GW_ENOMEM;
        curl_easy_cleanup(e);
        curl_slist_free_all(sl);
        free(r);
        return rc;
    }

    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        curl_slist_free_all(sl);
        free(r);
        return GW_ENOMEM;
    }
    r->id = ++h->next_id;
    r->next = h->reqs;
    if (h->reqs) h->reqs->prev = r;
    h->reqs = r;
    h->inflight++;
    return r->id;
}

void httpc_cancel(httpc_t *h, int64_t id)
{
    if (!h) return;
    for (httpc_req_t *r = h->reqs; r; r = r->next) {
        if (r->id == id) {
            httpc_req_drop(h, r);
            return;
        }
    }
}

size_t httpc_inflight(const httpc_t *h)
{
    return h ? h->inflight : 0;
}

static void httpc_timer_close_cb(uv_handle_t *hd)
{
    free(hd->data);
}

static void httpc_teardown(httpc_t *h)
{
    while (h->reqs) httpc_req_drop(h, h->reqs);
    /* Closes the cached connections; their sockets' polls are closed through httpc_sock_cb. */
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    while (h->socks) httpc_sock_close(h, h->socks);
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, httpc_timer_close_cb);
}

void httpc_free(httpc_t *h)
{
    if (!h || h->freed) return;
    h->freed = 1;
    while (h->reqs) httpc_req_drop(h, h->reqs);
    if (!h->dispatching) httpc_teardown(h);
}
