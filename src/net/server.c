/* server: listeners, accept, the connection lifecycle, timeouts, write queues and drain.
 *
 * Every connection starts as HTTP (llhttp through http.c) and may upgrade to WebSocket (ws.c).
 * Reads land in one per-server buffer; the codecs copy only what spans reads. Writes go through
 * a per-connection queue of shared frames: sends never write synchronously, they queue and put
 * the connection on a flush list that a check handle drains once per loop iteration, so a
 * fan-out to many members costs one writev per member. Sends therefore never close a
 * connection under the caller's feet: teardown only starts from read, write, flush-check and
 * timer callbacks (a TLS write that fails inside a send marks the conn doomed; the next flush
 * tears it down, as Redis's freeClientAsync), and a conn_t is freed only in its close
 * callbacks. A plain-HTTP connection is not read while its unsent responses exceed
 * write_queue_bytes, so pipelining cannot grow its memory. This is the only module that
 * touches client sockets. */
#define _GNU_SOURCE            /* accept4 */
#include "net/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/cidr.h"
#include "base/err.h"
#include "net/dheap.h"
#include "net/proxy.h"
#include "base/gw_sum.h"
#include "base/log.h"
#include "base/map.h"
#include "net/sentinel.h"
#include "net/tls.h"
#include "base/watch.h"
#include "proto/ws.h"

#define READ_BUF_SIZE 65536
#define COMPRESS_MIN 256           /* smaller messages gain nothing from deflate */
#define CLOSE_LINGER_MS 2000       /* wait for the peer's close frame or FIN */
/* Plain-HTTP request bodies: only the publish API takes one (a chat text in JSON). A fixed
 * bound, not a config key: the body is buffered whole, before the route checks the bearer
 * token, so it is what any client can make a connection hold. */
#define MAX_BODY_BYTES 65536
#define WQ_IOV 64                  /* buffers per writev */
#define WQ_SMALL 16                /* a write queue's first size (a handshake's frames fit); pooled */
#define POOL_MAX 1024              /* spare items a pool keeps */
#define IPTAB_SIZE 1024            /* per-IP entries' hash buckets */
#define SWEEP_MS 1000              /* how often idle per-IP entries are looked at */
#define LISTEN_BACKLOG 1024
#define LISTENERS_MAX 2            /* public, admin */
#define WQ_KEEP_MAX 64             /* a busy conn keeps an emptied queue above WQ_SMALL up to this */
/* Connections beyond max_connections that may carry one plain-HTTP request each (then close),
 * so probes answer from a full pod; an upgrade on them gets 503. Fixed, not a config key: it
 * only has to outlast a probe period, and a larger one would just move the limit. */
#define PROBE_RESERVE 16
/* The admin-only listener's own cap, instead of max_connections: kubelet and Prometheus use a
 * handful of connections, and a full public side must not refuse them. */
#define ADMIN_CONNS_MAX 64

enum { CONN_HTTP, CONN_WS, CONN_CLOSING };

typedef struct {
    sbuf_t *b;
    size_t off;
} wq_item_t;

/* Spare blocks of one size: what only a busy connection holds (a write request, a small write
 * queue, a frame parser) comes from here and goes back when it is done, so an idle connection
 * holds none. */
typedef struct pool_item_s {
    struct pool_item_s *next;
} pool_item_t;

typedef struct {
    pool_item_t *head;
    size_t n, size;
} pool_t;

typedef struct ip_entry_s {
    struct ip_entry_s *next;
    unsigned count;                /* open connections */
    double tokens;                 /* accept_rate_per_ip bucket */
    uint64_t tokens_ms;
    char ip[CIDR_KEY_MAX];         /* the key: the address, or an IPv6 address's prefix (cidr_limit_key) */
} ip_entry_t;

typedef struct {
    uv_tcp_t tcp;
    server_t *srv;
    int roles;                     /* SERVER_ROLE_* */
    int tls;                       /* terminates TLS */
} listener_t;

struct conn_s {
    uv_tcp_t tcp;                  /* first: the handle's address is the conn's */
    dheap_node_t timer;            /* in srv->timers while open */
    server_t *srv;
    conn_t *prev, *next;           /* all connections */
    conn_t *flush_next;            /* pending-output list */
    uint8_t state;
    uint8_t roles;
    uint8_t deflate_bits;
    unsigned closing : 1;          /* uv_close called; freed by its callback */
    unsigned in_flush : 1, writing : 1, close_after_flush : 1, shutdown : 1;
    unsigned close_sent : 1, close_received : 1, deflate : 1, websocket : 1;
    unsigned read_paused : 1;      /* HTTP output over write_queue_bytes: not read until it drains */
    unsigned reserve : 1;          /* admitted on PROBE_RESERVE: plain HTTP, one request */
    unsigned admin_slot : 1;       /* counted in srv->nadmin */
    unsigned doomed : 1;           /* TLS write failed: torn down by the next flush, sends dropped */
    uint64_t serial;
    uint64_t deadline_ms;          /* HTTP header deadline, or the close linger deadline */
    uint64_t last_rx_ms, last_ping_ms, over_since_ms;
    const server_endpoint_t *ep;
    void *data;
    http_parser_t *http;
    ws_parser_t *ws;               /* from srv->parsers while a frame or message is in progress */
    ws_inflater_t *inflater;
    tls_conn_t *tls;               /* NULL on plain connections */
    proxy_parser_t *proxy;         /* while the PROXY header is expected (proxy_protocol) */
    ip_entry_t *ipent;
    wq_item_t *wq;
    size_t wq_head, wq_tail, wq_cap;
    size_t queued, writing_bytes;
    buf_t *held;                   /* while read_paused: requests read but not yet parsed */
    server_later_t *later;         /* the answer to the last request comes later: not read until */
    const char *ip;                /* the client: peer, or client (X-Forwarded-For from a trusted proxy) */
    char peer[INET6_ADDRSTRLEN];   /* the TCP peer, or the PROXY header's source */
    char client[INET6_ADDRSTRLEN]; /* the X-Forwarded-For client */
};

struct server_later_s {
    conn_t *c;                     /* NULL once the conn went */
    int keep_alive;                /* the request's */
};

#define DEFLATERS 16               /* by window bits: 9..15 used */

struct server_s {
    gw_t *gw;
    const server_router_t *router; /* borrowed */
    listener_t *listeners[LISTENERS_MAX];
    int nlisteners;
    int freeing;                 /* server_free runs the loop to finish closes: no uv_stop */
    conn_t *conns;
    conn_t *handling;              /* the conn whose request the router handles now */
    size_t nconns, nws, nadmin;
    conn_t *flush_head;
    uv_check_t flush_check;
    uv_idle_t flush_idle;
    dheap_t timers;                /* the conns' deadlines, under one uv timer */
    uv_timer_t timer;
    uint64_t timer_due;            /* what timer is started for; 0 when stopped */
    uv_timer_t drain_timer;
    uv_timer_t sweep_timer;        /* frees per-IP entries whose bucket refilled */
    uv_timer_t beat_timer;         /* tells the sentinel this loop turns */
    sentinel_slot_t *slot;
    int drain_timer_on;
    uint64_t serial;
    uint64_t proxy_warned_ms;      /* the last "PROXY header refused" warning */
    ws_deflater_t *deflaters[DEFLATERS];   /* shared, by window bits */
    ip_entry_t *iptab[IPTAB_SIZE];
    tls_ctx_t *tls;                /* the public listener's certificate, or NULL */
    watch_t *tls_watch[2];         /* the certificate's and the key's directories */
    buf_t tls_plain;               /* scratch: decrypted input of one read */
    pool_t wreqs, wqs, parsers;    /* uv_write_t; write queues of WQ_SMALL items; ws_parser_t */
    char readbuf[READ_BUF_SIZE];
};

static void conn_flush(conn_t *c);
static void on_flush_idle(uv_idle_t *h);
static void conn_abort(conn_t *c);
static void flush_schedule(conn_t *c);
static void conn_timer_arm(conn_t *c);
static void conn_read_resume(conn_t *c);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void server_drain_check(server_t *srv);
static int conn_forwarded_ip(conn_t *c, const http_request_t *req);
static int conn_proxy_feed(conn_t *c, uint8_t **data, size_t *len);

/* ---- per-IP connection counts ---- */

static unsigned iptab_hash(const char *s) { return map_hash(s) % IPTAB_SIZE; }

static double iptab_burst(const server_t *srv) { return 2.0 * srv->gw->cfg.accept_rate_per_ip; }

/* Refills e's accept bucket up to now. */
static void iptab_refill(server_t *srv, ip_entry_t *e)
{
    uint64_t now = gw_now_ms(srv->gw);
    e->tokens += (double)(now - e->tokens_ms) * srv->gw->cfg.accept_rate_per_ip / 1000.0;
    if (e->tokens > iptab_burst(srv)) e->tokens = iptab_burst(srv);
    e->tokens_ms = now;
}

/* Counts one more connection from ip (under its key: an IPv6 client by its prefix). */
static ip_entry_t *iptab_acquire(server_t *srv, const char *ip)
{
    char key[CIDR_KEY_MAX];
    cidr_limit_key(ip, (int)srv->gw->cfg.ipv6_prefix_bits, key, sizeof key);
    ip_entry_t **slot = &srv->iptab[iptab_hash(key)];
    for (ip_entry_t *e = *slot; e; e = e->next)
        if (!strcmp(e->ip, key)) {
            e->count++;
            return e;
        }
    ip_entry_t *e = xcalloc(1, sizeof *e);
    snprintf(e->ip, sizeof e->ip, "%s", key);
    e->count = 1;
    e->tokens = iptab_burst(srv);
    e->tokens_ms = gw_now_ms(srv->gw);
    e->next = *slot;
    *slot = e;
    return e;
}

/* Takes one accept token: 0, or GW_ELIMIT when the address opens connections too fast. */
static int iptab_charge(server_t *srv, ip_entry_t *e)
{
    if (srv->gw->cfg.accept_rate_per_ip <= 0) return 0;
    iptab_refill(srv, e);
    if (e->tokens < 1.0) return GW_ELIMIT;
    e->tokens -= 1.0;
    return 0;
}

static void iptab_unlink(server_t *srv, ip_entry_t *ent)
{
    ip_entry_t **p = &srv->iptab[iptab_hash(ent->ip)];
    while (*p != ent) p = &(*p)->next;
    *p = ent->next;
    free(ent);
}

/* An entry without connections lingers until its bucket refills, or reconnecting would reset
 * the accept rate; the sweep frees it then. */
static void iptab_release(server_t *srv, ip_entry_t *ent)
{
    if (--ent->count) return;
    iptab_refill(srv, ent);
    if (ent->tokens >= iptab_burst(srv)) iptab_unlink(srv, ent);
}

/* Frees the per-IP entries without connections whose bucket refilled. */
static void on_sweep(uv_timer_t *t)
{
    server_t *srv = t->data;
    for (size_t i = 0; i < IPTAB_SIZE; i++)
        for (ip_entry_t *e = srv->iptab[i], *next; e; e = next) {
            next = e->next;
            if (e->count) continue;
            iptab_refill(srv, e);
            if (e->tokens >= iptab_burst(srv)) iptab_unlink(srv, e);
        }
}

/* ---- answers from outside a stuck loop (sentinel.h) ---- */

#define STALL_ANSWERS_MAX 64           /* connections answered per sentinel tick and listener */
#define STALL_WAIT_MS 20               /* for the request to arrive, and for the peer to close */

static void on_beat(uv_timer_t *t)
{
    server_t *srv = t->data;
    sentinel_slot_beat(srv->slot);
}

/* Reads and drops what fd has within STALL_WAIT_MS: a close with unread input would reset
 * the connection and lose the answer. */
static void stall_drain(int fd)
{
    char scratch[4096];
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, STALL_WAIT_MS) > 0)
        while (read(fd, scratch, sizeof scratch) > 0) {}
}

/* On the sentinel's thread while this listener's loop is stuck: every connection waiting on
 * listen_fd (non-blocking, as libuv made it) gets 503 {"status":"stuck"} and is closed. Plain
 * listeners only: a TLS handshake needs the loop's certificate state. */
static void server_stall_answer(int listen_fd, int worker, uint64_t stuck_ms)
{
    char body[96], resp[256];
    int blen = snprintf(body, sizeof body, "{\"status\":\"stuck\",\"worker\":%d,\"stuck_ms\":%llu}", worker,
                        (unsigned long long)stuck_ms);
    int rlen = snprintf(resp, sizeof resp,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s", blen, body);
    for (int n = 0; n < STALL_ANSWERS_MAX; n++) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        stall_drain(fd);
        if (send(fd, resp, (size_t)rlen, MSG_NOSIGNAL) == rlen) {
            shutdown(fd, SHUT_WR);
            stall_drain(fd);
        }
        close(fd);
    }
}

/* ---- pools ---- */

static void *pool_get(pool_t *p)
{
    pool_item_t *it = p->head;
    if (!it) return xmalloc(p->size);
    p->head = it->next;
    p->n--;
    return it;
}

static void pool_put(pool_t *p, void *block)
{
    if (p->n >= POOL_MAX) {
        free(block);
        return;
    }
    pool_item_t *it = block;
    it->next = p->head;
    p->head = it;
    p->n++;
}

static void pool_free(pool_t *p)
{
    while (p->head) free(pool_get(p));
}

static void conn_ws_parser_release(conn_t *c)
{
    if (!c->ws) return;
    ws_parser_free(c->ws);
    pool_put(&c->srv->parsers, c->ws);
    c->ws = NULL;
}

/* ---- write queue ---- */

static void wq_push(conn_t *c, sbuf_t *b)
{
    if (c->wq_tail == c->wq_cap) {
        if (c->wq_head > 0) {
            memmove(c->wq, c->wq + c->wq_head, (c->wq_tail - c->wq_head) * sizeof *c->wq);
            c->wq_tail -= c->wq_head;
            c->wq_head = 0;
        }
        if (c->wq_tail == c->wq_cap) {
            c->wq = c->wq_cap ? xrealloc(c->wq, 2 * c->wq_cap * sizeof *c->wq) : pool_get(&c->srv->wqs);
            c->wq_cap = c->wq_cap ? 2 * c->wq_cap : WQ_SMALL;
        }
    }
    c->wq[c->wq_tail++] = (wq_item_t){b, 0};
    c->queued += b->len;
}

/* Gives back the empty queue's storage. */
static void wq_release(conn_t *c)
{
    if (c->wq_cap == WQ_SMALL) pool_put(&c->srv->wqs, c->wq);
    else free(c->wq);
    c->wq = NULL;
    c->wq_cap = 0;
}

/* Drops n written bytes from the head of the queue. */
static void wq_consume(conn_t *c, size_t n)
{
    METRIC_ADD(c->srv->gw->metrics.bytes_out, n);
    c->queued -= n;
    while (n) {
        wq_item_t *it = &c->wq[c->wq_head];
        size_t rem = it->b->len - it->off;
        if (n < rem) {
            it->off += n;
            break;
        }
        n -= rem;
        sbuf_unref(it->b);
        c->wq_head++;
    }
    if (c->wq_head == c->wq_tail) {
        c->wq_head = c->wq_tail = 0;
        if (c->wq_cap == WQ_SMALL || c->wq_cap > WQ_KEEP_MAX) wq_release(c);
    }
}

/* Releases queued items from index from on (those not in flight). */
static void wq_truncate(conn_t *c, size_t from)
{
    for (size_t i = from; i < c->wq_tail; i++) {
        c->queued -= c->wq[i].b->len - c->wq[i].off;
        sbuf_unref(c->wq[i].b);
    }
    c->wq_tail = from;
}

static size_t wq_iov(conn_t *c, uv_buf_t *iov, size_t *bytes)
{
    size_t n = 0;
    *bytes = 0;
    for (size_t i = c->wq_head; i < c->wq_tail && n < WQ_IOV; i++, n++) {
        iov[n] = uv_buf_init(c->wq[i].b->data + c->wq[i].off, (unsigned)(c->wq[i].b->len - c->wq[i].off));
        *bytes += iov[n].len;
    }
    return n;
}

static void flush_schedule(conn_t *c)
{
    server_t *srv = c->srv;
    if (c->in_flush || c->closing) return;
    c->in_flush = 1;
    c->flush_next = srv->flush_head;
    if (!srv->flush_head) uv_idle_start(&srv->flush_idle, on_flush_idle);
    srv->flush_head = c;
}

/* TLS: the frame's bytes as records (takes over the reference). Records are sealed in queue
 * order, so the TLS stream order is the queue order. NULL when the session failed. */
static sbuf_t *conn_seal(conn_t *c, sbuf_t *frame)
{
    buf_t wire;
    buf_init(&wire);
    int rc = tls_conn_write(c->tls, frame->data, frame->len, &wire);
    sbuf_unref(frame);
    sbuf_t *sealed = rc == 0 ? sbuf_from(wire.data, wire.len) : NULL;
    buf_free(&wire);
    if (!sealed) {
        /* not conn_abort: this may run inside a fan-out that iterates the conn's room */
        c->doomed = 1;
        flush_schedule(c);
    }
    return sealed;
}

/* Queues bytes that are already TLS records (handshake, alerts, tickets). */
static void conn_queue_wire(conn_t *c, const buf_t *wire)
{
    if (!wire->len) return;
    wq_push(c, sbuf_from(wire->data, wire->len));
    flush_schedule(c);
}

/* Queues a whole frame (takes over the reference) and counts it. */
static void conn_queue(conn_t *c, sbuf_t *frame, int opcode)
{
    gw_t *gw = c->srv->gw;
    long limit = gw->cfg.write_queue_bytes;
    if (c->doomed) {
        sbuf_unref(frame);
        return;
    }
    if (c->state == CONN_WS && opcode != WS_OP_CLOSE && c->queued > (size_t)limit * 2) {
        /* over twice the limit: memory stays bounded, the slow-consumer timer closes it */
        METRIC_INC(gw->metrics.msgs_dropped[METRICS_DROP_SLOW]);
        sbuf_unref(frame);
        return;
    }
    if (c->tls && !(frame = conn_seal(c, frame))) return;
    wq_push(c, frame);
    if (opcode >= 0) METRIC_INC(gw->metrics.frames_out[opcode & (METRICS_WS_OPCODES - 1)]);
    if (c->state == CONN_WS && c->queued > (size_t)limit && !c->over_since_ms) {
        c->over_since_ms = gw_now_ms(gw);
        conn_timer_arm(c);
    }
    flush_schedule(c);
}

static void conn_queue_bytes(conn_t *c, const buf_t *b)
{
    conn_queue(c, sbuf_from(b->data, b->len), -1);
}

/* ---- teardown ---- */

static void conn_free(conn_t *c)
{
    wq_truncate(c, c->wq_head);
    wq_release(c);
    if (c->held) buf_free(c->held);
    free(c->held);
    if (c->http) {
        http_parser_free(c->http);
        free(c->http);
    }
    conn_ws_parser_release(c);
    ws_inflater_free(c->inflater);
    tls_conn_free(c->tls);
    free(c->proxy);
    free(c);
}

static void on_handle_closed(uv_handle_t *h) { conn_free(h->data); }

/* The single teardown path: detach the endpoint, unlink, close the handle. */
static void conn_abort(conn_t *c)
{
    if (c->closing) return;
    server_t *srv = c->srv;
    gw_t *gw = srv->gw;
    c->closing = 1;
    if (c->later) {                /* its answer will find the conn gone */
        c->later->c = NULL;
        c->later = NULL;
    }
    if (c->ep) {
        if (!c->close_received) METRIC_INC(gw->metrics.close_received[WS_CLOSE_ABNORMAL]);
        if (c->ep->detach) c->ep->detach(gw, c);
        c->ep = NULL;
    }
    if (c->websocket) {
        srv->nws--;
        METRIC_SUB(gw->metrics.ws_open, 1);
    }
    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->nconns--;
    if (c->admin_slot) srv->nadmin--;
    METRIC_SUB(gw->metrics.conns_open, 1);
    if (c->ipent) iptab_release(srv, c->ipent);
    c->ipent = NULL;
    c->ip = c->peer;
    dheap_remove(&srv->timers, &c->timer);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    server_drain_check(srv);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    free(req);                     /* always called, with UV_ECANCELED when the handle closes first */
    if (status < 0) conn_abort(c);
    /* otherwise wait for the peer's FIN (on_read) or the linger deadline */
}

/* Called when the queue is empty and the connection should end: half-close, then linger. */
static void conn_finish(conn_t *c)
{
    if (c->closing || c->shutdown) return;
    c->shutdown = 1;
    c->state = CONN_CLOSING;
    c->deadline_ms = gw_now_ms(c->srv->gw) + CLOSE_LINGER_MS;
    uv_shutdown_t *req = xmalloc(sizeof *req);
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        conn_abort(c);
        return;
    }
    conn_timer_arm(c);
}

/* ---- writing ---- */

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    pool_put(&c->srv->wreqs, req);   /* always called, with UV_ECANCELED when the handle closes first */
    c->writing = 0;
    if (status < 0) {
        if (status != UV_ECANCELED) conn_abort(c);
        return;
    }
    wq_consume(c, c->writing_bytes);
    conn_flush(c);
    conn_read_resume(c);
}

static void conn_flush(conn_t *c)
{
    if (c->doomed) {
        conn_abort(c);             /* a safe point: no send loop is running */
        return;
    }
    if (c->closing || c->writing || c->shutdown) return;
    uv_buf_t iov[WQ_IOV];
    size_t bytes;
    while (c->wq_head < c->wq_tail) {
        size_t n = wq_iov(c, iov, &bytes);
        int w = uv_try_write((uv_stream_t *)&c->tcp, iov, (unsigned)n);
        if (w == UV_EAGAIN || w == UV_ENOSYS) w = 0;
        if (w < 0) {
            conn_abort(c);
            return;
        }
        wq_consume(c, (size_t)w);
        if ((size_t)w < bytes) break;
    }
    if (c->wq_head < c->wq_tail) {
        size_t n = wq_iov(c, iov, &c->writing_bytes);
        uv_write_t *req = pool_get(&c->srv->wreqs);
        req->data = c;
        if (uv_write(req, (uv_stream_t *)&c->tcp, iov, (unsigned)n, on_write) < 0) {
            pool_put(&c->srv->wreqs, req);
            conn_abort(c);
            return;
        }
        c->writing = 1;
        return;
    }
    if (c->over_since_ms) c->over_since_ms = 0;
    if (c->close_after_flush) conn_finish(c);
}

static void on_flush_check(uv_check_t *h)
{
    server_t *srv = h->data;
    uv_idle_stop(&srv->flush_idle);
    while (srv->flush_head) {
        conn_t *c = srv->flush_head;
        srv->flush_head = c->flush_next;
        c->in_flush = 0;
        conn_flush(c);
        conn_read_resume(c);
    }
}

static void on_flush_idle(uv_idle_t *h) { (void)h; /* keeps poll from blocking while output waits */ }

/* ---- WebSocket side ---- */

static ws_deflater_t *server_deflater(server_t *srv, int bits)
{
    if (bits < 9 || bits >= DEFLATERS) return NULL;
    if (!srv->deflaters[bits]) srv->deflaters[bits] = ws_deflater_new(bits);
    return srv->deflaters[bits];
}

static sbuf_t *frame_deflated(server_t *srv, int bits, int opcode, const void *data, size_t len)
{
    ws_deflater_t *z = server_deflater(srv, bits);
    if (!z) return NULL;
    buf_t out;
    buf_init(&out);
    sbuf_t *f = NULL;
    if (ws_deflater_run(z, data, len, &out) == 0) f = ws_frame_build(opcode, 1, out.data, out.len);
    buf_free(&out);
    return f;
}

int server_conn_is_open(const conn_t *c)
{
    return !c->closing && c->state == CONN_WS && !c->close_sent && !c->doomed;
}

void server_conn_send(conn_t *c, int opcode, const void *data, size_t len)
{
    if (!server_conn_is_open(c)) return;
    sbuf_t *f = NULL;
    if (c->deflate && len >= COMPRESS_MIN) f = frame_deflated(c->srv, c->deflate_bits, opcode, data, len);
    if (!f) f = ws_frame_build(opcode, 0, data, len);
    conn_queue(c, f, opcode);
}

void server_msg_init(server_msg_t *m, sbuf_t *payload)
{
    memset(m, 0, sizeof *m);
    m->payload = payload;
}

void server_msg_release(server_msg_t *m)
{
    sbuf_unref(m->payload);
    sbuf_unref(m->plain);
    sbuf_unref(m->deflated);
    memset(m, 0, sizeof *m);
}

void server_conn_send_msg(conn_t *c, server_msg_t *m)
{
    if (!server_conn_is_open(c)) return;
    size_t len = m->payload->len;
    if (c->deflate && len >= COMPRESS_MIN) {
        if (c->deflate_bits != 15) {
            server_conn_send(c, WS_OP_TEXT, m->payload->data, len);
            return;
        }
        if (!m->deflated && !m->deflate_failed) {
            m->deflated = frame_deflated(c->srv, 15, WS_OP_TEXT, m->payload->data, len);
            m->deflate_failed = !m->deflated;
        }
        if (m->deflated) {
            conn_queue(c, sbuf_ref(m->deflated), WS_OP_TEXT);
            return;
        }
    }
    if (!m->plain) m->plain = ws_frame_build(WS_OP_TEXT, 0, m->payload->data, len);
    conn_queue(c, sbuf_ref(m->plain), WS_OP_TEXT);
}

static void conn_send_close(conn_t *c, unsigned code, const char *reason)
{
    gw_t *gw = c->srv->gw;
    conn_queue(c, ws_close_build(code, reason), WS_OP_CLOSE);
    c->close_sent = 1;
    if (code < METRICS_CLOSE_CODES) METRIC_INC(gw->metrics.close_sent[code]);
}

void server_conn_close(conn_t *c, unsigned code, const char *reason)
{
    if (c->closing || c->state != CONN_WS || c->close_sent) return;
    conn_send_close(c, code, reason);
    c->deadline_ms = gw_now_ms(c->srv->gw) + CLOSE_LINGER_MS;
    conn_timer_arm(c);
}

/* _Fail the WebSocket Connection_: close frame, then TCP, without waiting for a reply. */
static void conn_fail(conn_t *c, unsigned code, const char *reason)
{
    log_debug("websocket failed", "{s:I, s:s, s:i, s:s}", "conn", (json_int_t)c->serial, "ip", c->ip,
              "code", (int)code, "reason", reason);
    if (!c->close_sent) conn_send_close(c, code, reason);
    c->close_after_flush = 1;
    flush_schedule(c);
}

static int on_ws_frame(void *ctx, int opcode, uint8_t *data, size_t len)
{
    conn_t *c = ctx;
    gw_t *gw = c->srv->gw;
    METRIC_INC(gw->metrics.frames_in[opcode & (METRICS_WS_OPCODES - 1)]);
    switch (opcode) {
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (c->close_sent) return 0;
        if (c->ep && c->ep->message) c->ep->message(gw, c, opcode, data, len);
        return c->closing || c->doomed;
    case WS_OP_PING:
        if (!c->close_sent) conn_queue(c, ws_frame_build(WS_OP_PONG, 0, data, len), WS_OP_PONG);
        return 0;
    case WS_OP_PONG:
        return 0;
    case WS_OP_CLOSE: {
        unsigned code = len >= 2 ? (unsigned)(data[0] << 8 | data[1]) : WS_CLOSE_NO_STATUS;
        c->close_received = 1;
        if (code < METRICS_CLOSE_CODES) METRIC_INC(gw->metrics.close_received[code]);
        if (!c->close_sent) {
            /* echo the peer's code (RFC 6455 5.5.1) */
            conn_queue(c, ws_frame_build(WS_OP_CLOSE, 0, data, len >= 2 ? 2 : 0), WS_OP_CLOSE);
            c->close_sent = 1;
            if (code < METRICS_CLOSE_CODES && len >= 2) METRIC_INC(gw->metrics.close_sent[code]);
        }
        c->close_after_flush = 1;
        flush_schedule(c);
        return 1;
    }
    }
    return 0;
}

/* The frame parser lives only while a frame or a fragmented message is in progress: an idle
 * connection (most of them, most of the time) holds none. */
static void conn_ws_feed(conn_t *c, uint8_t *data, size_t len)
{
    if (!len || c->close_received) return;
    if (!c->ws) {
        const config_t *cfg = &c->srv->gw->cfg;
        c->ws = pool_get(&c->srv->parsers);
        ws_parser_init(c->ws, (size_t)cfg->max_frame_bytes, (size_t)cfg->max_message_bytes);
        c->ws->inflater = c->inflater;
    }
    if (ws_parser_feed(c->ws, data, len, on_ws_frame, c) < 0)
        conn_fail(c, (unsigned)c->ws->close_code, c->ws->reason);
    else if (ws_parser_idle(c->ws))
        conn_ws_parser_release(c);
}

/* ---- HTTP side ---- */

static void conn_count_response(conn_t *c, const buf_t *out)
{
    if (out->len < 12) return;
    int status = atoi(out->data + 9);
    if (status > 0 && status < METRICS_HTTP_STATUSES) METRIC_INC(c->srv->gw->metrics.http_responses[status]);
}

/* Queues a complete HTTP response; closes after it unless keep_alive. */
static void conn_respond(conn_t *c, const buf_t *out, int keep_alive)
{
    conn_count_response(c, out);
    conn_queue_bytes(c, out);
    if (!keep_alive) {
        c->close_after_flush = 1;
        c->state = CONN_CLOSING;
        c->deadline_ms = gw_now_ms(c->srv->gw) + CLOSE_LINGER_MS;
        conn_timer_arm(c);
    }
}

static void conn_http_error(conn_t *c, int status, const char *code, const char *msg)
{
    buf_t out;
    buf_init(&out);
    http_response_error(&out, status, code, msg, 0);
    conn_respond(c, &out, 0);
    buf_free(&out);
}

/* Answers an admission error (conn_admit, conn_forwarded_ip) and closes: GW_ELIMIT, the
 * address is over its limits; GW_EUNAVAIL, the process is full. */
static void conn_refuse(conn_t *c, int err)
{
    METRIC_INC(c->srv->gw->metrics.conns_rejected_limit);
    if (err == GW_ELIMIT)
        conn_http_error(c, http_status_of(err), "too_many_connections_per_ip", "too many connections from this address");
    else
        conn_http_error(c, http_status_of(err), "server_full", "connection limit reached");
}

static void conn_upgrade(conn_t *c, const server_endpoint_t *ep, const http_request_t *req)
{
    server_t *srv = c->srv;
    gw_t *gw = srv->gw;
    buf_t out;
    buf_init(&out);
    http_ws_accept_t acc;
    int status = http_ws_handshake(req, gw->cfg.allowed_origins, gw->cfg.permessage_deflate, &out, &acc);
    char reason[256] = "";
    void *data = NULL;
    if (status == 101 && gw->draining) {
        status = 503;
        buf_reset(&out);
        http_response_error(&out, 503, "draining", "server is shutting down", 0);
    } else if (status == 101 && ep->admit && (status = ep->admit(gw, req, c->ip, &data, reason, sizeof reason)) != 0) {
        buf_reset(&out);
        http_response_error(&out, status, status == 403 ? "forbidden" : status == 503 ? "unavailable" : "refused",
                            reason[0] ? reason : http_status_text(status), 0);
    } else if (status == 101) {
        status = 0;
    }
    if (status) {
        conn_respond(c, &out, 0);
        buf_free(&out);
        return;
    }
    conn_respond(c, &out, 1);
    buf_free(&out);

    /* req lives in the HTTP parser: keep it until attach has run */
    http_parser_t *http = c->http;
    c->http = NULL;
    if (acc.deflate) {
        c->inflater = ws_inflater_new(&acc.pmd);
        c->deflate = 1;
        c->deflate_bits = acc.pmd.server_max_window_bits;
    }
    c->state = CONN_WS;
    c->websocket = 1;
    c->ep = ep;
    c->data = data;
    srv->nws++;
    METRIC_INC(gw->metrics.ws_open);
    METRIC_INC(gw->metrics.ws_total);
    c->last_rx_ms = c->last_ping_ms = gw_now_ms(gw);
    conn_timer_arm(c);
    if (ep->attach) ep->attach(gw, c, req);
    http_parser_free(http);
    free(http);
}

static void conn_http_request(conn_t *c, const http_request_t *req)
{
    gw_t *gw = c->srv->gw;
    int rc = conn_forwarded_ip(c, req);
    if (rc < 0) {
        conn_refuse(c, rc);
        return;
    }
    const server_endpoint_t *ep = c->srv->router->endpoint(gw, req, c->roles);
    if (ep && c->reserve) {
        conn_refuse(c, GW_EUNAVAIL);
        return;
    }
    if (ep) {
        conn_upgrade(c, ep, req);
        return;
    }
    /* an upgrade we do not take leaves llhttp past the headers: answer, then close */
    int keep_alive = req->keep_alive && !req->upgrade && !gw->draining && !c->reserve;
    buf_t out;
    buf_init(&out);
    c->srv->handling = c;
    c->srv->router->handle(gw, req, c->roles, keep_alive, &out);
    c->srv->handling = NULL;
    if (c->later) c->later->keep_alive = keep_alive;
    else conn_respond(c, &out, keep_alive);
    buf_free(&out);
    c->deadline_ms = gw_now_ms(gw) + (uint64_t)gw->cfg.header_timeout_ms;
    conn_timer_arm(c);
}

server_later_t *server_later_take(gw_t *gw)
{
    conn_t *c = gw->server ? gw->server->handling : NULL;
    if (!c || c->later) return NULL;
    server_later_t *l = xcalloc(1, sizeof *l);
    l->c = c;
    c->later = l;
    return l;
}

void server_later_answer(server_later_t *l, const buf_t *out, int keep_alive)
{
    conn_t *c = l->c;
    keep_alive = keep_alive && l->keep_alive;
    free(l);
    if (!c) return;
    c->later = NULL;
    if (c->srv->gw->draining) keep_alive = 0;
    conn_respond(c, out, keep_alive);
    flush_schedule(c);
    c->deadline_ms = gw_now_ms(c->srv->gw) + (uint64_t)c->srv->gw->cfg.header_timeout_ms;
    conn_timer_arm(c);
    if (keep_alive) conn_read_resume(c);
}

/* Stops reading a connection whose responses wait unsent (nginx and h2o do the same): the rest
 * of this read is held, unparsed, until conn_read_resume. So a plain-HTTP connection holds at
 * most write_queue_bytes of output plus the response that crossed it, and one read. */
static void conn_read_pause(conn_t *c, const uint8_t *data, size_t len)
{
    if (len) {
        if (!c->held) {
            c->held = xmalloc(sizeof *c->held);
            buf_init(c->held);
        }
        buf_append(c->held, data, len);
    }
    if (c->read_paused) return;
    c->read_paused = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
}

static int conn_http_over(const conn_t *c)
{
    return c->queued > (size_t)c->srv->gw->cfg.write_queue_bytes;
}

static void conn_http_feed(conn_t *c, uint8_t *data, size_t len)
{
    while (len && c->state == CONN_HTTP && !c->closing && !c->doomed) {
        if (conn_http_over(c)) {
            conn_read_pause(c, data, len);
            return;
        }
        size_t used = 0;
        int rc = http_parser_feed(c->http, (const char *)data, len, &used);
        if (rc == HTTP_PARSE_ERROR) {
            int st = c->http->status;
            conn_http_error(c, st, st == 431 ? "headers_too_large" : st == 413 ? "body_too_large" : "bad_request",
                            http_status_text(st));
            return;
        }
        if (rc == HTTP_PARSE_MORE) return;
        data += used;
        len -= used;
        conn_http_request(c, &c->http->req);
        if (c->later) {            /* the rest waits for that answer */
            conn_read_pause(c, data, len);
            return;
        }
    }
    if (c->state == CONN_WS) conn_ws_feed(c, data, len);
    else if (c->state == CONN_HTTP && conn_http_over(c)) conn_read_pause(c, NULL, 0);
}

/* Once the output of a paused connection is down to half the limit: parses what was held,
 * then reads again unless that filled the queue once more. From write and check callbacks. */
static void conn_read_resume(conn_t *c)
{
    if (!c->read_paused || c->closing || c->doomed || c->later) return;
    if (c->queued > (size_t)c->srv->gw->cfg.write_queue_bytes / 2) return;
    c->read_paused = 0;
    buf_t *held = c->held;
    c->held = NULL;
    if (held) {
        conn_http_feed(c, (uint8_t *)held->data, held->len);
        buf_free(held);
        free(held);
    }
    if (c->read_paused || c->closing || c->doomed) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) conn_abort(c);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn_t *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

/* Decrypts one read, pointing data and len at the plaintext (the server scratch buffer), queueing what the
 * TLS engine answers. 0, or tls_conn_feed's GW_EINVAL when the session failed and the
 * connection is gone. */
static int conn_tls_open(conn_t *c, uint8_t **data, size_t *len)
{
    buf_t *plain = &c->srv->tls_plain, wire;
    buf_reset(plain);
    buf_init(&wire);
    const char *why = NULL;
    int rc = tls_conn_feed(c->tls, *data, *len, plain, &wire, &why);
    conn_queue_wire(c, &wire);
    buf_free(&wire);
    if (rc < 0) {
        log_debug("tls failed", "{s:I, s:s, s:s}", "conn", (json_int_t)c->serial, "ip", c->ip, "error", why);
        conn_abort(c);
        return rc;
    }
    *data = (uint8_t *)plain->data;
    *len = plain->len;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (n < 0) {
        conn_abort(c);
        return;
    }
    if (n == 0 || c->closing || c->doomed) return;
    gw_t *gw = c->srv->gw;
    METRIC_ADD(gw->metrics.bytes_in, n);
    c->last_rx_ms = gw_now_ms(gw);
    uint8_t *data = (uint8_t *)buf->base;
    size_t len = (size_t)n;
    if (c->proxy && (c->state != CONN_HTTP || conn_proxy_feed(c, &data, &len) < 0)) return;
    if (c->tls && conn_tls_open(c, &data, &len) < 0) return;
    if (c->read_paused) conn_read_pause(c, data, len);   /* behind what is held */
    else if (c->state == CONN_HTTP) conn_http_feed(c, data, len);
    else if (c->state == CONN_WS) conn_ws_feed(c, data, len);
    /* CONN_CLOSING: discard until FIN */
}

/* ---- timers ---- */

static uint64_t deadline_min(uint64_t a, uint64_t b) { return !a ? b : !b ? a : a < b ? a : b; }

static uint64_t conn_next_deadline(conn_t *c)
{
    const config_t *cfg = &c->srv->gw->cfg;
    if (c->state != CONN_WS || c->close_sent) return c->deadline_ms;
    uint64_t d = c->last_rx_ms + (uint64_t)cfg->idle_timeout_ms;
    if (cfg->ping_interval_ms > 0) d = deadline_min(d, c->last_ping_ms + (uint64_t)cfg->ping_interval_ms);
    if (c->over_since_ms) d = deadline_min(d, c->over_since_ms + (uint64_t)cfg->slow_grace_ms);
    return d;
}

static void on_timer(uv_timer_t *t);

/* Starts the server's timer for the earliest deadline, unless it already is. */
static void server_timer_arm(server_t *srv)
{
    dheap_node_t *first = dheap_min(&srv->timers);
    if (!first) {
        uv_timer_stop(&srv->timer);
        srv->timer_due = 0;
        return;
    }
    if (first->due == srv->timer_due) return;
    uint64_t now = gw_now_ms(srv->gw);
    uv_timer_start(&srv->timer, on_timer, first->due > now ? first->due - now : 0, 0);
    srv->timer_due = first->due;
}

static void conn_timer_arm(conn_t *c)
{
    if (c->closing) return;
    dheap_set(&c->srv->timers, &c->timer, conn_next_deadline(c));
    server_timer_arm(c->srv);
}

static void conn_slow_close(conn_t *c)
{
    gw_t *gw = c->srv->gw;
    METRIC_INC(gw->metrics.slow_consumers);
    log_warn("slow consumer closed", "{s:I, s:s, s:I}", "conn", (json_int_t)c->serial, "ip", c->ip,
             "queued", (json_int_t)c->queued);
    /* drop what is not yet in flight so the close frame is next on the wire */
    size_t keep = c->wq_head;
    if (c->writing) {
        size_t b = 0;
        for (; keep < c->wq_tail && b < c->writing_bytes; keep++) b += c->wq[keep].b->len - c->wq[keep].off;
    }
    if (!c->tls) wq_truncate(c, keep);   /* dropping sealed records would break the TLS stream */
    c->over_since_ms = 0;
    conn_send_close(c, WS_CLOSE_POLICY, "slow consumer");
    c->close_after_flush = 1;
    c->deadline_ms = gw_now_ms(gw) + CLOSE_LINGER_MS;
    flush_schedule(c);
}

static void conn_on_deadline(conn_t *c)
{
    gw_t *gw = c->srv->gw;
    const config_t *cfg = &gw->cfg;
    uint64_t now = gw_now_ms(gw);
    if (c->state == CONN_HTTP && now >= c->deadline_ms) {
        if (c->http && c->http->in_message) {
            METRIC_INC(gw->metrics.header_timeouts);
            conn_http_error(c, 408, "request_timeout", "request headers not received in time");
            return;
        } else {
            conn_abort(c);
            return;
        }
    } else if (c->state != CONN_WS || c->close_sent) {
        if (now >= c->deadline_ms) {
            conn_abort(c);
            return;
        }
    } else if (c->over_since_ms && now >= c->over_since_ms + (uint64_t)cfg->slow_grace_ms) {
        conn_slow_close(c);
    } else if (now >= c->last_rx_ms + (uint64_t)cfg->idle_timeout_ms) {
        METRIC_INC(gw->metrics.idle_timeouts);
        server_conn_close(c, WS_CLOSE_GOING_AWAY, "idle timeout");
        return;
    } else if (cfg->ping_interval_ms > 0 && now >= c->last_ping_ms + (uint64_t)cfg->ping_interval_ms) {
        conn_queue(c, ws_frame_build(WS_OP_PING, 0, NULL, 0), WS_OP_PING);
        c->last_ping_ms = now;
    }
    if (c->wq && c->wq_head == c->wq_tail) wq_release(c);   /* a quiet conn keeps no queue */
    conn_timer_arm(c);
}

/* Runs the deadlines that are due. A conn whose deadline moves to now again runs again, at
 * most as many times as there were conns (each run makes progress: a ping, a close). */
static void on_timer(uv_timer_t *t)
{
    server_t *srv = t->data;
    uint64_t now = gw_now_ms(srv->gw);
    srv->timer_due = 0;
    dheap_node_t *first;
    for (size_t budget = srv->timers.n + 1; budget && (first = dheap_min(&srv->timers)) && first->due <= now; budget--) {
        conn_t *c = (conn_t *)((char *)first - offsetof(conn_t, timer));
        dheap_remove(&srv->timers, first);
        conn_on_deadline(c);
    }
    server_timer_arm(srv);
}

/* ---- accepting ---- */

static void conn_peer_ip(conn_t *c)
{
    struct sockaddr_storage sa;
    int len = sizeof sa;
    c->ip = c->peer;
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &len) != 0) return;
    if (sa.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&sa, c->peer, sizeof c->peer);
    else if (sa.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&sa, c->peer, sizeof c->peer);
}

static int conn_behind_proxy(const conn_t *c)
{
    const char *trusted = c->srv->gw->cfg.trusted_proxies;
    return trusted && trusted[0] && cidr_list_match(trusted, c->peer);
}

/* Counts c under ip's entry instead of the one it had (if any), and takes one of ip's accept
 * tokens when charge. 0, or GW_ELIMIT when ip is over max_connections_per_ip or its accept
 * rate. */
static int conn_ipent_move(conn_t *c, const char *ip, int charge)
{
    if (c->ipent) iptab_release(c->srv, c->ipent);
    c->ipent = iptab_acquire(c->srv, ip);
    if (c->ipent->count > (unsigned)c->srv->gw->cfg.max_connections_per_ip) return GW_ELIMIT;
    return charge ? iptab_charge(c->srv, c->ipent) : 0;
}

/* Behind a trusted proxy the client is the X-Forwarded-For address (every line of it, joined
 * by http.c): per-IP limits and logs use it. 0, or GW_ELIMIT when that address is over
 * max_connections_per_ip or its accept rate. */
static int conn_forwarded_ip(conn_t *c, const http_request_t *req)
{
    const config_t *cfg = &c->srv->gw->cfg;
    char ip[INET6_ADDRSTRLEN];
    if (!conn_behind_proxy(c)) return 0;
    if (cidr_forwarded_client(http_request_header(req, "X-Forwarded-For"), cfg->trusted_proxies, ip, sizeof ip) < 0)
        snprintf(ip, sizeof ip, "%s", c->peer);
    if (!strcmp(ip, c->ip)) return 0;
    snprintf(c->client, sizeof c->client, "%s", ip);
    c->ip = c->client;
    return conn_ipent_move(c, c->ip, 1);
}

/* Closes a connection whose PROXY header is missing, malformed or untrusted, unanswered: it
 * may not speak HTTP, and a proxy that sends none is misconfigured. Warns at most every 10 s,
 * or anyone could fill the log. */
static void conn_proxy_refuse(conn_t *c, const char *why)
{
    server_t *srv = c->srv;
    uint64_t now = gw_now_ms(srv->gw);
    if (!srv->proxy_warned_ms || now - srv->proxy_warned_ms >= 10000) {
        srv->proxy_warned_ms = now;
        log_warn("proxy_protocol: connection refused", "{s:I, s:s, s:s}", "conn", (json_int_t)c->serial, "peer", c->peer,
                 "error", why);
    }
    conn_abort(c);
}

/* With proxy_protocol the public listener reads a PROXY header first, and takes it only from
 * trusted_proxies. -1 when c was refused (closed). */
static int conn_proxy_expect(conn_t *c)
{
    if (!c->srv->gw->cfg.proxy_protocol || !(c->roles & SERVER_ROLE_PUBLIC)) return 0;
    if (!conn_behind_proxy(c)) {
        conn_proxy_refuse(c, "not from trusted_proxies");
        return -1;
    }
    c->proxy = xmalloc(sizeof *c->proxy);
    proxy_parser_init(c->proxy);
    return 0;
}

/* The header's source becomes the peer: logs, X-Forwarded-For trust and the per-IP limits see
 * it from here on. LOCAL (the proxy's own health check) keeps the socket's. 0, or GW_ELIMIT. */
static int conn_proxy_peer(conn_t *c, const proxy_addr_t *a)
{
    if (a->local) return 0;
    log_debug("proxy header", "{s:I, s:s, s:s}", "conn", (json_int_t)c->serial, "proxy", c->peer, "client", a->src);
    snprintf(c->peer, sizeof c->peer, "%s", a->src);
    c->ip = c->peer;
    return conn_ipent_move(c, c->peer, !conn_behind_proxy(c));
}

/* Takes the PROXY header off the front of a read (before TLS and HTTP), leaving data and len
 * at what follows. -1 when nothing is left to go on with: the header is not whole yet, or c
 * was refused. */
static int conn_proxy_feed(conn_t *c, uint8_t **data, size_t *len)
{
    size_t used;
    int rc = proxy_parser_feed(c->proxy, *data, *len, &used);
    if (rc == PROXY_MORE) return -1;
    if (rc < 0) {
        conn_proxy_refuse(c, c->proxy->error);
        return -1;
    }
    proxy_addr_t addr = c->proxy->addr;
    free(c->proxy);
    c->proxy = NULL;
    *data += used;
    *len -= used;
    if ((rc = conn_proxy_peer(c, &addr)) < 0) {
        conn_refuse(c, rc);
        return -1;
    }
    return *len ? 0 : -1;
}

/* 0 when the connection may proceed; GW_EUNAVAIL when the process is past max_connections
 * (every worker's open connections) and PROBE_RESERVE, or the admin listener past its own
 * ADMIN_CONNS_MAX; GW_ELIMIT when the address is over its own limits. */
static int conn_admit(conn_t *c)
{
    server_t *srv = c->srv;
    const config_t *cfg = &srv->gw->cfg;
    uint64_t open = GW_SUM(srv->gw, metrics.conns_open);
    if (c->roles == SERVER_ROLE_ADMIN) {
        c->admin_slot = 1;
        if (++srv->nadmin > ADMIN_CONNS_MAX) return GW_EUNAVAIL;
    } else if (open > (uint64_t)cfg->max_connections + PROBE_RESERVE) {
        return GW_EUNAVAIL;
    } else if (open > (uint64_t)cfg->max_connections) {
        c->reserve = 1;
    }
    /* a trusted proxy carries many clients: their own addresses are charged per request */
    return conn_ipent_move(c, c->ip, !conn_behind_proxy(c));
}

/* Links an accepted connection, reads it as HTTP and admits it, or answers why not. */
static void conn_start(conn_t *c)
{
    server_t *srv = c->srv;
    gw_t *gw = srv->gw;
    uv_tcp_nodelay(&c->tcp, 1);
    c->serial = ++srv->serial;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    METRIC_INC(gw->metrics.conns_open);
    METRIC_INC(gw->metrics.conns_total);
    conn_peer_ip(c);
    c->http = xcalloc(1, sizeof *c->http);
    http_parser_init(c->http, (size_t)gw->cfg.max_header_bytes, MAX_BODY_BYTES);
    c->state = CONN_HTTP;
    c->deadline_ms = gw_now_ms(gw) + (uint64_t)gw->cfg.header_timeout_ms;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc < 0) {
        log_warn("read start failed", "{s:I, s:s, s:s}", "conn", (json_int_t)c->serial, "ip", c->ip, "error",
                 uv_strerror(rc));
        conn_abort(c);
        return;
    }
    if (conn_proxy_expect(c) < 0) return;
    rc = conn_admit(c);
    if (rc < 0) conn_refuse(c, rc);
    conn_timer_arm(c);
}

static void on_connection(uv_stream_t *ls, int status)
{
    listener_t *l = ls->data;
    server_t *srv = l->srv;
    if (status < 0) {
        log_warn("accept failed", "{s:s}", "error", uv_strerror(status));
        return;
    }
    conn_t *c = xcalloc(1, sizeof *c);
    int rc = uv_tcp_init(srv->gw->loop, &c->tcp);
    if (rc < 0) {
        /* no handle to accept into: libuv keeps the connection pending */
        log_error("connection handle failed", "{s:s}", "error", uv_strerror(rc));
        free(c);
        return;
    }
    c->tcp.data = c;
    c->srv = srv;
    c->roles = l->roles;
    if (l->tls) c->tls = tls_conn_new(srv->tls);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    conn_start(c);
}

/* Parses "host:port" or "[v6]:port". */
static int addr_parse(const char *s, struct sockaddr_storage *sa)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon) return UV_EINVAL;
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof host) return UV_EINVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    int port = atoi(colon + 1);
    if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        return uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)sa);
    }
    if (!strcmp(host, "") || !strcmp(host, "*")) snprintf(host, sizeof host, "0.0.0.0");
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    return uv_ip4_addr(host, port, (struct sockaddr_in *)sa);
}

static void addr_name(const struct sockaddr_storage *sa, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof ip);
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        snprintf(out, len, "[%s]:%d", ip, port);
        return;
    }
    uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof ip);
    port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    snprintf(out, len, "%s:%d", ip, port);
}

static void on_listener_closed(uv_handle_t *h) { free(h->data); }

/* Workers > 1: every worker binds its own socket to the same address with SO_REUSEPORT and
 * the kernel spreads the connections (libuv 1.44 has no flag for it). 0 or a uv error. */
static int listener_bind_reuseport(uv_tcp_t *tcp, const struct sockaddr_storage *sa)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int on = 1;
    socklen_t len = sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 || bind(fd, (const struct sockaddr *)sa, len) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int rc = uv_tcp_open(tcp, fd);
    if (rc < 0) close(fd);
    return rc;
}

static int listener_open(server_t *srv, const char *addr, int roles, int tls)
{
    struct sockaddr_storage sa;
    int rc = addr_parse(addr, &sa);
    if (rc < 0) {
        log_error("bad listen address", "{s:s}", "addr", addr);
        return rc;
    }
    listener_t *l = xcalloc(1, sizeof *l);
    if ((rc = uv_tcp_init(srv->gw->loop, &l->tcp)) < 0) {
        log_error("listen failed", "{s:s, s:s}", "addr", addr, "error", uv_strerror(rc));
        free(l);
        return rc;
    }
    l->srv = srv;
    l->roles = roles;
    l->tls = tls;
    l->tcp.data = l;
    rc = srv->gw->nworkers > 1 ? listener_bind_reuseport(&l->tcp, &sa) : uv_tcp_bind(&l->tcp, (struct sockaddr *)&sa, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, on_connection);
    if (rc < 0) {
        log_error("listen failed", "{s:s, s:s}", "addr", addr, "error", uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
        return rc;
    }
    int len = sizeof sa;
    uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&sa, &len);
    char name[80];
    addr_name(&sa, name, sizeof name);
    const char *role = roles == SERVER_ROLE_ADMIN ? "admin" : roles == SERVER_ROLE_PUBLIC ? "public" : "public+admin";
    if (srv->gw->nworkers > 1)
        log_info("listening", "{s:s, s:s, s:b, s:i}", "addr", name, "role", role, "tls", tls, "worker", srv->gw->worker);
    else
        log_info("listening", "{s:s, s:s, s:b}", "addr", name, "role", role, "tls", tls);
    srv->listeners[srv->nlisteners++] = l;
    uv_os_fd_t fd;
    if (!tls && uv_fileno((uv_handle_t *)&l->tcp, &fd) == 0) sentinel_slot_listen(srv->slot, fd);
    return 0;
}

/* ---- TLS certificate ---- */

static void server_tls_reload(void *ud, const char *why)
{
    server_t *srv = ud;
    char err[512];
    int rc = tls_ctx_reload(srv->tls, err, sizeof err);
    if (rc > 0)
        log_info("tls certificate reloaded", "{s:s, s:s}", "fingerprint", tls_ctx_fingerprint(srv->tls), "trigger", why);
    else if (rc < 0)
        log_error("tls certificate reload failed; the previous one keeps serving", "{s:s, s:s}", "error", err,
                  "trigger", why);
}

/* The directory holding file (cert-manager swaps a ..data symlink there); caller frees. */
static char *path_dir(const char *file)
{
    const char *slash = strrchr(file, '/');
    if (!slash) return xstrdup(".");
    if (slash == file) return xstrdup("/");
    char *dir = xstrdup(file);
    dir[slash - file] = '\0';
    return dir;
}

/* tls_cert and tls_key together turn TLS on for the public listener. 0, or GW_EINVAL (logged). */
static int server_tls_start(server_t *srv)
{
    const config_t *cfg = &srv->gw->cfg;
    int has_cert = cfg->tls_cert && cfg->tls_cert[0], has_key = cfg->tls_key && cfg->tls_key[0];
    if (!has_cert && !has_key) return 0;
    char err[512];
    if (has_cert != has_key) {
        log_error("tls needs both tls_cert and tls_key", NULL);
        return GW_EINVAL;
    }
    srv->tls = tls_ctx_new(cfg->tls_cert, cfg->tls_key, err, sizeof err);
    if (!srv->tls) {
        log_error("tls setup failed", "{s:s}", "error", err);
        return GW_EINVAL;
    }
    log_info("tls enabled", "{s:s, s:s}", "cert", cfg->tls_cert, "fingerprint", tls_ctx_fingerprint(srv->tls));
    char *cert_dir = path_dir(cfg->tls_cert), *key_dir = path_dir(cfg->tls_key);
    srv->tls_watch[0] = watch_start(srv->gw->loop, cert_dir, cfg->reload_poll_ms, server_tls_reload, srv);
    if (strcmp(cert_dir, key_dir))
        srv->tls_watch[1] = watch_start(srv->gw->loop, key_dir, cfg->reload_poll_ms, server_tls_reload, srv);
    free(cert_dir);
    free(key_dir);
    return 0;
}

int server_start(gw_t *gw, const server_router_t *router)
{
    server_t *srv = xcalloc(1, sizeof *srv);
    srv->gw = gw;
    srv->router = router;
    gw->server = srv;
    dheap_init(&srv->timers);
    srv->wreqs.size = sizeof(uv_write_t);
    srv->wqs.size = WQ_SMALL * sizeof(wq_item_t);
    srv->parsers.size = sizeof(ws_parser_t);
    uv_check_init(gw->loop, &srv->flush_check);
    uv_idle_init(gw->loop, &srv->flush_idle);   /* flush_schedule starts it (uv_idle_start needs the callback) */
    uv_timer_init(gw->loop, &srv->timer);
    uv_timer_init(gw->loop, &srv->drain_timer);
    uv_timer_init(gw->loop, &srv->sweep_timer);
    srv->timer.data = srv->sweep_timer.data = srv;
    uv_timer_start(&srv->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&srv->sweep_timer);
    srv->slot = sentinel_slot_new(gw->worker, server_stall_answer);
    uv_timer_init(gw->loop, &srv->beat_timer);
    srv->beat_timer.data = srv;
    uv_timer_start(&srv->beat_timer, on_beat, SENTINEL_BEAT_MS, SENTINEL_BEAT_MS);
    uv_unref((uv_handle_t *)&srv->beat_timer);
    srv->flush_check.data = srv->flush_idle.data = srv->drain_timer.data = srv;
    uv_check_start(&srv->flush_check, on_flush_check);
    uv_unref((uv_handle_t *)&srv->flush_check);
    buf_init(&srv->tls_plain);
    int rc = server_tls_start(srv);
    if (rc < 0) return rc;
    int admin_separate = gw->cfg.admin_listen && gw->cfg.admin_listen[0];
    rc = listener_open(srv, gw->cfg.listen,
                       admin_separate ? SERVER_ROLE_PUBLIC : SERVER_ROLE_PUBLIC | SERVER_ROLE_ADMIN, srv->tls != NULL);
    if (rc == 0 && admin_separate && gw->worker == 0)
        rc = listener_open(srv, gw->cfg.admin_listen, SERVER_ROLE_ADMIN, 0);
    return rc;
}

static void server_listeners_close(server_t *srv)
{
    sentinel_slot_forget(srv->slot);   /* before the descriptors close */
    for (int i = 0; i < srv->nlisteners; i++) uv_close((uv_handle_t *)&srv->listeners[i]->tcp, on_listener_closed);
    srv->nlisteners = 0;
}

static void server_drain_check(server_t *srv)
{
    if (srv->gw->draining && srv->nws == 0 && !srv->freeing) uv_stop(srv->gw->loop);
}

static void on_drain_timeout(uv_timer_t *t)
{
    server_t *srv = t->data;
    log_warn("drain timeout", "{s:I}", "websockets", (json_int_t)srv->nws);
    uv_stop(srv->gw->loop);
}

void server_drain(gw_t *gw)
{
    server_t *srv = gw->server;
    if (!srv) return;
    if (gw->draining) return;
    gw->draining = 1;
    log_info("draining", "{s:I, s:i}", "websockets", (json_int_t)srv->nws, "timeout_ms", (int)gw->cfg.drain_timeout_ms);
    server_listeners_close(srv);
    for (conn_t *c = srv->conns; c; c = c->next)
        if (c->state == CONN_WS) server_conn_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
    uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)gw->cfg.drain_timeout_ms, 0);
    server_drain_check(srv);
}

static void on_server_handle_closed(uv_handle_t *h) { (void)h; }

void server_free(gw_t *gw)
{
    server_t *srv = gw->server;
    if (!srv) return;
    srv->freeing = 1;
    server_listeners_close(srv);
    while (srv->conns) conn_abort(srv->conns);
    srv->flush_head = NULL;
    uv_close((uv_handle_t *)&srv->flush_check, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->flush_idle, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->timer, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->drain_timer, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->sweep_timer, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->beat_timer, on_server_handle_closed);
    watch_stop(srv->tls_watch[0]);
    watch_stop(srv->tls_watch[1]);
    uv_run(gw->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < DEFLATERS; i++) ws_deflater_free(srv->deflaters[i]);
    for (size_t i = 0; i < IPTAB_SIZE; i++)
        while (srv->iptab[i]) iptab_unlink(srv, srv->iptab[i]);
    tls_ctx_free(srv->tls);
    buf_free(&srv->tls_plain);
    dheap_free(&srv->timers);
    pool_free(&srv->wreqs);
    pool_free(&srv->wqs);
    pool_free(&srv->parsers);
    sentinel_slot_free(srv->slot);
    free(srv);
    gw->server = NULL;
}

/* ---- accessors ---- */

int server_listen_addr(const gw_t *gw, char *out, size_t len)
{
    const server_t *srv = gw->server;
    if (!srv || !srv->nlisteners) return GW_ENOTFOUND;
    struct sockaddr_storage sa;
    int n = sizeof sa;
    int rc = uv_tcp_getsockname(&srv->listeners[0]->tcp, (struct sockaddr *)&sa, &n);
    if (rc < 0) return rc;
    addr_name(&sa, out, len);
    return 0;
}

uint64_t server_conn_serial(const conn_t *c) { return c->serial; }
void *server_conn_data(const conn_t *c) { return c->data; }
void server_conn_data_set(conn_t *c, void *data) { c->data = data; }
