/* libFuzzer target for http.c: the request path as server.c drives it. The input's first byte
 * picks the settings (header and body limits, allowed_origins, permessage-deflate, the query
 * buffer size) and the second a split seed; the rest is the byte stream of one connection. It
 * is fed to the parser once whole and once in random pieces, the way reads arrive. Each request
 * it returns goes through the header and query helpers and, on a WebSocket path, through the
 * opening handshake; a 101 hands the rest of the stream to the frame parser with the
 * negotiated inflater, as conn_upgrade does. Both runs must give the same transcript, every
 * request must keep the contract in http.h, and every response must be well formed. */
#define _GNU_SOURCE                /* memmem */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "base/err.h"
#include "http/http.h"
#include "proto/ws.h"

static const char *const fuzz_origins[4] = {
    "", "*", "https://chat.example.com, example.org:8080", " null , http://localhost:8888/ ,",
};
static const char *const fuzz_query_keys[5] = {"room", "name", "since", "token", ""};

static void fuzz_log(buf_t *log, const char *tag, const void *d, size_t n)
{
    uint64_t n64 = n;
    buf_append_str(log, tag);
    buf_append(log, &n64, sizeof n64);
    if (n) buf_append(log, d, n);
}

static void fuzz_log_str(buf_t *log, const char *tag, const char *s)
{
    fuzz_log(log, tag, s, strlen(s));
}

static void fuzz_log_int(buf_t *log, const char *tag, long v) { fuzz_log(log, tag, &v, sizeof v); }

static int fuzz_ws_cb(void *ctx, int op, uint8_t *d, size_t n)
{
    fuzz_log_int(ctx, "F", op);
    fuzz_log(ctx, "P", d, n);
    return 0;
}

static int fuzz_is_ows(char c) { return c == ' ' || c == '\t'; }

/* A response must be a status line, headers, a blank line, and exactly Content-Length bytes;
 * a JSON error body must parse. */
static void fuzz_response_check(const buf_t *out, int json_body)
{
    if (out->len < 12 || memcmp(out->data, "HTTP/1.1 ", 9)) abort();
    const char *end = memmem(out->data, out->len, "\r\n\r\n", 4);
    if (!end) abort();
    size_t head = (size_t)(end - out->data) + 4, body = out->len - head;
    const char *cl = memmem(out->data, head, "Content-Length: ", 16);
    if (cl && strtoul(cl + 16, NULL, 10) != body) abort();
    if (!cl && body) abort();
    if (json_body && body) {
        json_t *v = json_loadb(out->data + head, body, 0, NULL);
        if (!json_is_object(v)) abort();
        json_decref(v);
    }
}

/* The contract in http.h: pointers set, values trimmed, the body NUL-terminated. */
static void fuzz_request_check(const http_request_t *r)
{
    if (!r->url || !r->path || !r->query || !r->body) abort();
    if (!r->path[0]) abort();
    if (r->nheaders < 0 || r->nheaders > HTTP_MAX_HEADERS) abort();
    for (int i = 0; i < r->nheaders; i++) {
        const char *v = r->headers[i].value;
        size_t n = strlen(v);
        if (!r->headers[i].name || (n && (fuzz_is_ows(v[0]) || fuzz_is_ows(v[n - 1])))) abort();
    }
    if (r->body[r->body_len] != '\0') abort();
    /* RFC 9112 3.2 and 6.1, as http.h promises */
    int hosts = 0, te = 0;
    for (int i = 0; i < r->nheaders; i++) {
        hosts += !strcasecmp(r->headers[i].name, "Host");
        te |= !strcasecmp(r->headers[i].name, "Transfer-Encoding");
    }
    if (hosts > 1 || (hosts == 0 && r->http_minor >= 1)) abort();
    if (te && r->http_minor == 0 && r->keep_alive) abort();
}

static void fuzz_request_log(buf_t *log, const http_request_t *r)
{
    fuzz_log_int(log, "M", r->method * 10000L + r->http_major * 100 + r->http_minor);
    fuzz_log_str(log, "U", r->url);
    fuzz_log_str(log, "p", r->path);
    fuzz_log_str(log, "q", r->query);
    for (int i = 0; i < r->nheaders; i++) {
        fuzz_log_str(log, "H", r->headers[i].name);
        fuzz_log_str(log, "V", r->headers[i].value);
    }
    fuzz_log(log, "B", r->body, r->body_len);
    fuzz_log_int(log, "K", r->keep_alive * 2 + r->upgrade);
}

static void fuzz_helpers(buf_t *log, const http_request_t *r, size_t outlen)
{
    char out[300];
    for (size_t i = 0; i < sizeof fuzz_query_keys / sizeof fuzz_query_keys[0]; i++) {
        memset(out, 'x', sizeof out);
        int n = http_query_get(r->query, fuzz_query_keys[i], out, outlen);
        if (n >= 0 && (size_t)n != strlen(out)) abort();
        if (n >= 0 && (size_t)n >= outlen) abort();
        if (n < 0 && n != GW_ENOTFOUND && outlen && out[0]) abort();
        if (n < 0 && n != GW_ENOTFOUND && n != GW_EINVAL && n != GW_ETOOBIG) abort();
        fuzz_log_int(log, "Q", n);
        if (n >= 0) fuzz_log(log, "q", out, (size_t)n);
    }
    const char *names[] = {"Host", "Upgrade", "Connection", "Origin", "Sec-WebSocket-Key"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = http_request_header(r, names[i]);
        fuzz_log_int(log, "h", v ? (long)strlen(v) : -1);
        if (v) fuzz_log_int(log, "t", http_header_has_token(v, "upgrade") * 2 + http_header_has_token(v, "websocket"));
    }
}

/* routes_ws_endpoint's choice, without a gateway. */
static int fuzz_ws_path(const http_request_t *r)
{
    if (!strcmp(r->path, "/ws") || !strcmp(r->path, "/echo")) return 1;
    return r->upgrade && r->path[0] == '/' && r->path[1] && !strchr(r->path + 1, '/');
}

typedef struct {
    int flags;
    http_parser_t http;
    ws_parser_t ws;
    ws_inflater_t *inflater;
    int in_ws;
    int done;                      /* the connection would be closed now */
    buf_t *log;
} fuzz_conn_t;

/* One complete request, answered as the server would. */
static void fuzz_request(fuzz_conn_t *c, const http_request_t *r)
{
    static const size_t outlens[4] = {0, 1, 8, 300};
    fuzz_request_check(r);
    fuzz_request_log(c->log, r);
    fuzz_helpers(c->log, r, outlens[(c->flags >> 5) & 3]);

    buf_t out;
    buf_init(&out);
    if (!fuzz_ws_path(r)) {
        int keep_alive = r->keep_alive && !r->upgrade;
        http_response_error(&out, 404, "not_found", r->path, keep_alive);
        fuzz_response_check(&out, 1);
        if (!keep_alive) c->done = 1;
        buf_free(&out);
        return;
    }
    http_ws_accept_t acc;
    int status = http_ws_handshake(r, fuzz_origins[(c->flags >> 2) & 3], (c->flags >> 4) & 1, &out, &acc);
    fuzz_log_int(c->log, "S", status);
    fuzz_log(c->log, "R", out.data, out.len);
    if (status != 101 && status != 400 && status != 403 && status != 426) abort();
    fuzz_response_check(&out, status != 101);
    buf_free(&out);
    if (status != 101) {
        c->done = 1;
        return;
    }
    if (acc.deflate) {
        if (!((c->flags >> 4) & 1)) abort();
        if (acc.pmd.server_max_window_bits < 9 || acc.pmd.server_max_window_bits > 15) abort();
        if (acc.pmd.client_max_window_bits < 8 || acc.pmd.client_max_window_bits > 15) abort();
    }
    ws_parser_init(&c->ws, (c->flags & 2) ? 200 : 65536, (c->flags & 2) ? 1000 : 1 << 20);
    if (acc.deflate) {
        c->inflater = ws_inflater_new(&acc.pmd);
        c->ws.inflater = c->inflater;
    }
    c->in_ws = 1;
}

/* One read's worth of bytes, through conn_http_feed's loop. */
static void fuzz_read(fuzz_conn_t *c, uint8_t *d, size_t len)
{
    while (len && !c->done && !c->in_ws) {
        size_t used = 0;
        int rc = http_parser_feed(&c->http, (const char *)d, len, &used);
        if (used > len) abort();
        if (rc == HTTP_PARSE_ERROR) {
            int st = c->http.status;
            if (st != 400 && st != 405 && st != 413 && st != 431 && st != 505) abort();
            fuzz_log_int(c->log, "E", st);
            buf_t out;
            buf_init(&out);
            http_response_error(&out, st, "bad_request", http_status_text(st), 0);
            fuzz_response_check(&out, 1);
            buf_free(&out);
            c->done = 1;
            return;
        }
        if (rc == HTTP_PARSE_MORE) {
            if (used != len) abort();
            return;
        }
        if (rc != HTTP_PARSE_DONE) abort();
        d += used;
        len -= used;
        fuzz_request(c, &c->http.req);
    }
    if (c->in_ws && len && !c->done) {
        int rc = ws_parser_feed(&c->ws, d, len, fuzz_ws_cb, c->log);
        if (rc < 0) {
            fuzz_log_int(c->log, "C", c->ws.close_code);
            c->done = 1;
        }
    }
}

/* Runs the stream through one connection; seed 0 delivers it in one read. */
static void fuzz_run(const uint8_t *data, size_t len, int flags, uint32_t seed, buf_t *log)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    fuzz_conn_t c;
    memset(&c, 0, sizeof c);
    c.flags = flags;
    c.log = log;
    http_parser_init(&c.http, (flags & 1) ? 200 : 16384, (flags & 2) ? 16 : 1 << 20);
    size_t at = 0;
    while (at < len && !c.done) {
        size_t n = len - at;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t pick = 1 + (seed >> 16) % 23;
            if (pick < n) n = pick;
        }
        fuzz_read(&c, copy + at, n);
        at += n;
    }
    fuzz_log_int(log, "D", c.done * 2 + c.in_ws);
    http_parser_free(&c.http);
    if (c.in_ws) ws_parser_free(&c.ws);
    ws_inflater_free(c.inflater);
    free(copy);
}

/* Prints both transcripts from a little before where they part, for the crash report. */
static void fuzz_diff_print(const buf_t *a, const buf_t *b)
{
    size_t i = 0;
    while (i < a->len && i < b->len && a->data[i] == b->data[i]) i++;
    size_t from = i > 64 ? i - 64 : 0;
    const buf_t *logs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        fprintf(stderr, "%s from byte %zu: ", k ? "split" : "whole", from);
        for (size_t j = from; j < logs[k]->len && j < i + 64; j++) {
            unsigned char c = (unsigned char)logs[k]->data[j];
            if (c >= 32 && c < 127) fputc(c, stderr);
            else fprintf(stderr, "\\x%02x", c);
        }
        fputc('\n', stderr);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int flags = data[0];
    uint32_t seed = data[1] | 0x100u;
    data += 2;
    size -= 2;

    buf_t a, b;
    buf_init(&a);
    buf_init(&b);
    fuzz_run(data, size, flags, 0, &a);
    fuzz_run(data, size, flags, seed, &b);
    if (a.len != b.len || memcmp(a.data, b.data, a.len)) {
        fprintf(stderr, "http_fuzz: whole and split feeds disagree\n");
        fuzz_diff_print(&a, &b);
        abort();
    }
    buf_free(&a);
    buf_free(&b);
    return 0;
}
