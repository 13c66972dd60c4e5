/* server: listeners, accept, the connection lifecycle (HTTP, then maybe WebSocket), timeouts
 * (header, idle, ping/pong, close), bounded write queues (backpressure and slow consumers),
 * connection limits and graceful drain. It is the only module that touches client sockets.
 *
 * The application plugs in through the router it hands to server_start: plain requests go to
 * its handler, upgrades to the WebSocket endpoint it picks (echo, chat). A conn_t is owned by the server:
 * endpoints get a borrowed pointer that is valid until their detach callback returns. Frames
 * sent to a conn are shared buffers; the queue takes its own reference. */
#ifndef CHATGW_SERVER_H
#define CHATGW_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/gw.h"
#include "http/http.h"

typedef struct conn_s conn_t;

typedef struct {
    const char *name;
    /* Before the 101: 0 admits, otherwise an HTTP status (403, 429, 503) with reason. On
     * admission *data may hold the endpoint's per-connection data, set on the conn before
     * attach; on refusal the endpoint has freed whatever it made. ip is the conn's client
     * address, valid until detach returns. */
    int (*admit)(gw_t *gw, const http_request_t *req, const char *ip, void **data, char *reason, size_t len);
    /* After the 101 was queued; req is still valid. */
    void (*attach)(gw_t *gw, conn_t *c, const http_request_t *req);
    /* A whole text or binary message; data is valid only during the call. */
    void (*message)(gw_t *gw, conn_t *c, int opcode, uint8_t *data, size_t len);
    /* The connection is going away; no more sends are delivered after this. */
    void (*detach)(gw_t *gw, conn_t *c);
} server_endpoint_t;

/* A message shared by many recipients: its frames are encoded once, on first use. */
typedef struct {
    sbuf_t *payload;               /* the text payload; owned (one reference) */
    sbuf_t *plain;                 /* uncompressed frame, built lazily */
    sbuf_t *deflated;              /* compressed frame (15-bit window), built lazily */
    int deflate_failed;
} server_msg_t;

void server_msg_init(server_msg_t *m, sbuf_t *payload);   /* takes over the reference */
void server_msg_release(server_msg_t *m);

/* What a listener serves (a bit set): the public routes, the admin routes (/metrics), or both
 * when no admin_listen is configured. */
enum { SERVER_ROLE_PUBLIC = 1, SERVER_ROLE_ADMIN = 2 };

/* The application's side of every request, handed to server_start: the server knows no
 * endpoint and no route. roles is the listener's (SERVER_ROLE_*); req is borrowed for the
 * call. */
typedef struct {
    /* The WebSocket endpoint for req (an upgrade path), or NULL: then handle answers it. */
    const server_endpoint_t *(*endpoint)(gw_t *gw, const http_request_t *req, int roles);
    /* Appends a complete response to a plain request to out (borrowed). */
    void (*handle)(gw_t *gw, const http_request_t *req, int roles, int keep_alive, buf_t *out);
} server_router_t;

/* A plain request answered after handle returned (its answer needs Redis): handle calls
 * server_later_take during its call and leaves out empty. The connection then parses no
 * further request until server_later_answer queues the response (exactly once per ticket,
 * from the loop; it frees the ticket, and drops the answer when the conn went meanwhile). */
typedef struct server_later_s server_later_t;
server_later_t *server_later_take(gw_t *gw);   /* NULL outside handle */
void server_later_answer(server_later_t *l, const buf_t *out, int keep_alive);

/* Binds the listeners from gw->cfg (listen, admin_listen) and serves them through router
 * (borrowed: it outlives the server). 0 or a negative error code (base/err.h); the error is
 * logged with the address. Whatever it made is freed by server_free, failed or not. With
 * gw->nworkers > 1 each worker's public listener is its own socket on the same address
 * (SO_REUSEPORT); worker 0 alone opens admin_listen. */
int server_start(gw_t *gw, const server_router_t *router);
/* The public listener's bound address ("127.0.0.1:PORT", "[::1]:PORT"): what the other
 * workers bind when listen asked for port 0. 0, GW_ENOTFOUND when not listening, or libuv's
 * UV_E* code when the socket has no name. */
int server_listen_addr(const gw_t *gw, char *out, size_t len);
/* Stops accepting, makes /readyz fail, sends close 1001 to every WebSocket and exits the loop
 * once they are closed or drain_timeout_ms passed. A second call closes everything now. */
void server_drain(gw_t *gw);
/* Frees what server_start made; call after the loop ended. */
void server_free(gw_t *gw);

void server_conn_send_msg(conn_t *c, server_msg_t *m);
/* One message (WS_OP_TEXT or WS_OP_BINARY), copied, compressed when worth it. */
void server_conn_send(conn_t *c, int opcode, const void *data, size_t len);
/* Starts the close handshake with code and reason; later sends are dropped. */
void server_conn_close(conn_t *c, unsigned code, const char *reason);
uint64_t server_conn_serial(const conn_t *c);   /* a per-process sequence number for logs */
/* A slot for the endpoint's own per-connection data. */
void *server_conn_data(const conn_t *c);
void server_conn_data_set(conn_t *c, void *data);
int server_conn_is_open(const conn_t *c);       /* 0 once closing */

#endif
