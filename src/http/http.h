/* http: HTTP/1.1 request parsing over llhttp, response encoding and the WebSocket upgrade check.
 * No I/O: the server feeds bytes in and writes the bytes this module produces.
 *
 * One http_parser_t lives per connection while it speaks HTTP. Requests are returned one at a
 * time (the parser pauses after each), so pipelined requests are answered in order.
 * This is the HTTP edge: statuses are chosen here (http_status_of maps the negative codes of
 * base/err.h that the layers below return). */
#ifndef CHATGW_HTTP_H
#define CHATGW_HTTP_H

#include <stddef.h>

#include <llhttp.h>

#include "base/buf.h"
#include "proto/ws.h"

#define HTTP_MAX_HEADERS 64        /* sizes the header array; max_header_bytes (config) bounds the bytes */

typedef struct {
    char *name;                    /* as received, NUL-terminated */
    char *value;                   /* trimmed, NUL-terminated */
} http_header_t;

typedef struct {
    int method;                    /* llhttp_method_t: HTTP_GET, HTTP_POST, ... */
    int http_major, http_minor;
    char *url;                     /* raw request target */
    char *path;                    /* target up to '?', percent-decoded */
    char *query;                   /* after '?', raw ("" when none) */
    http_header_t headers[HTTP_MAX_HEADERS];
    int nheaders;
    char *body;                    /* NUL-terminated; body_len bytes */
    size_t body_len;
    int keep_alive;                /* 1 when the connection may serve another request */
    int upgrade;                   /* 1 when the request asks for a protocol upgrade */
} http_request_t;

enum {
    HTTP_PARSE_MORE = 0,           /* every byte used, no complete request yet */
    HTTP_PARSE_DONE = 1,           /* p->req is complete; *used bytes were consumed */
    HTTP_PARSE_ERROR = -1,         /* p->status holds the answer: 400, 405, 413, 431, 505 */
};

typedef struct {
    llhttp_t llhttp;
    llhttp_settings_t settings;
    size_t max_header_bytes, max_body_bytes;
    size_t header_bytes;           /* bytes of request line + headers seen so far */
    buf_t store;                   /* strings of the current request */
    http_request_t req;
    int status;                    /* error status when feed returned HTTP_PARSE_ERROR */
    int in_message;                /* a request has started (for the header timeout's 408) */
    /* private: offsets into store while the request is being read */
    size_t url_off, body_off;
    size_t name_off[HTTP_MAX_HEADERS], value_off[HTTP_MAX_HEADERS];
    size_t span_off;               /* where the string now arriving starts in store */
    int headers_done;              /* on_headers_complete has run for this request */
    int host_lines, xff_lines;     /* Host and X-Forwarded-For lines, counted as their names end */
    int complete;                  /* req was returned; the next feed starts a new one */
} http_parser_t;

void http_parser_init(http_parser_t *p, size_t max_header_bytes, size_t max_body_bytes);
void http_parser_free(http_parser_t *p);
/* Parses from data. After HTTP_PARSE_DONE, p->req is valid until the next feed; for an upgrade
 * request, *used stops right after the headers and the rest belongs to the new protocol.
 * RFC 9112 strictness: an HTTP/1.1 request without Host, or any request with two Host lines,
 * is an error (400); an HTTP/1.0 request with Transfer-Encoding comes back with keep_alive 0. */
int http_parser_feed(http_parser_t *p, const char *data, size_t len, size_t *used);

/* First header named name (case-insensitive), or NULL. Repeated X-Forwarded-For lines arrive
 * joined into one ("a, b", in order). */
const char *http_request_header(const http_request_t *req, const char *name);
/* 1 when the comma-separated header value contains token (case-insensitive, trimmed). */
int http_header_has_token(const char *value, const char *token);
/* Copies the percent-decoded value of key from a query string into out (NUL-terminated).
 * Returns its length; GW_ENOTFOUND when absent (or key is NULL), GW_EINVAL when it is badly
 * encoded (a malformed escape or %00), GW_ETOOBIG when it does not fit; out is "" on the last
 * two when outlen > 0. */
int http_query_get(const char *query, const char *key, char *out, size_t outlen);
/* Steps through a query string's parameters: with *cursor at the query (NULL: none), each call
 * sets the next parameter's raw key (*key, *klen; not NUL-terminated), decodes its value into
 * out as http_query_get does, and moves *cursor past it. Returns the value's length,
 * GW_EINVAL or GW_ETOOBIG as http_query_get does, and GW_ENOTFOUND after the last parameter. */
int http_query_next(const char **cursor, const char **key, size_t *klen, char *out, size_t outlen);

const char *http_status_text(int status);
/* The HTTP status for a GW_E* or UV_E* code (base/err.h): the one place a failure below the
 * HTTP edge becomes a status. 500 for a code with no closer status. */
int http_status_of(int err);
/* Appends a complete response. extra_headers is "Name: value\r\n"... or NULL. Adds Date-less
 * Content-Length, Content-Type (when body or ctype given) and Connection: close unless keep_alive. */
void http_response_write(buf_t *out, int status, const char *ctype, const char *extra_headers,
                         const void *body, size_t len, int keep_alive);
/* A JSON error body {"error":code,"message":msg} with the given status. */
void http_response_error(buf_t *out, int status, const char *code, const char *msg, int keep_alive);
/* 405 for a GET/HEAD-only resource; extra_headers (may be NULL) precede "Allow". */
void http_response_method_not_allowed(buf_t *out, const char *extra_headers, int keep_alive);

typedef struct {
    int deflate;                   /* permessage-deflate negotiated */
    ws_pmd_params_t pmd;
    int subprotocol;               /* chatgw.v1 negotiated */
} http_ws_accept_t;

/* Checks req as a WebSocket opening handshake (RFC 6455 4.2.1): GET, HTTP/1.1 or later,
 * Upgrade: websocket and Connection: upgrade (as list tokens), Sec-WebSocket-Version: 13,
 * a 16-byte base64 key, and the Origin against allowed_origins (comma list; empty = the
 * request's Host; "*" = any; a request without Origin passes, as non-browser clients send none).
 * On success writes the 101 response to out and returns 101. Otherwise writes the error
 * response (400; 426 with Sec-WebSocket-Version: 13; 403 for the origin) and returns it. */
int http_ws_handshake(const http_request_t *req, const char *allowed_origins, int allow_deflate,
                      buf_t *out, http_ws_accept_t *acc);

#endif
