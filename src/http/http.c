/* http: the llhttp glue (request parsing), response encoding and the WebSocket opening
 * handshake; see http.h. It never touches a socket: the server feeds bytes in and writes the
 * bytes this module appends to a buf_t. llhttp hands each string over in pieces that may be
 * split across feeds, so every piece is appended to one store per request and remembered by
 * offset (the store moves when it grows); pointers are made only once the request is complete.
 * The parser pauses after every request, so pipelined requests come back one at a time. While
 * the header section arrives llhttp is never handed more bytes than max_header_bytes leaves, so
 * an oversized header is refused while it is still arriving, and at the same byte however the
 * input is split (a malformed byte past the limit gets 431, one before it 400). After an error
 * the parser is dead: feed keeps returning HTTP_PARSE_ERROR. */
#include "http/http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <uv.h>

#include "base/err.h"
#include "base/hex.h"

/* A store that grew past this (a large body) is released between requests rather than kept:
 * memory kept per connection, not a limit anyone sees, so not a config key. */
#define HTTP_STORE_KEEP 65536

#define HTTP_WS_SUBPROTOCOL "chatgw.v1"

/* ---- small string helpers ---- */

static int http_is_ows(int c) { return c == ' ' || c == '\t'; }

/* RFC 9110 5.6.2 token characters, the only ones a field name may hold. */
static int http_is_tchar(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Percent-decodes n bytes of s into out (cap bytes, no NUL added). A decoded NUL would cut
 * the C string short, so %00 is refused like a malformed escape. Returns the decoded length,
 * GW_EINVAL for a bad escape, GW_ETOOBIG when it does not fit in cap. */
static long http_pct_decode(const char *s, size_t n, char *out, size_t cap, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (n - i < 3) return GW_EINVAL;
            int hi = hex_digit((unsigned char)s[i + 1]), lo = hex_digit((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0 || (hi | lo) == 0) return GW_EINVAL;
            c = hi << 4 | lo;
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        }
        if (o == cap) return GW_ETOOBIG;
        out[o++] = (char)c;
    }
    return (long)o;
}

/* Finds token in a comma-separated list, trimming OWS around each element. */
static int http_list_has(const char *list, const char *token, int icase)
{
    if (!list || !token) return 0;
    size_t tlen = strlen(token);
    const char *s = list;
    for (;;) {
        while (http_is_ows(*s)) s++;
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        while (n && http_is_ows(s[n - 1])) n--;
        if (n == tlen && (icase ? !strncasecmp(s, token, n) : !memcmp(s, token, n))) return 1;
        if (!end) return 0;
        s = end + 1;
    }
}

/* ---- request parsing: llhttp callbacks ---- */

static int http_parser_fail(http_parser_t *p, int status)
{
    if (!p->status) p->status = status;
    return HPE_USER;
}

/* Ends the string now arriving in the store with a NUL; returns where it started. */
static size_t http_parser_span_end(http_parser_t *p)
{
    size_t off = p->span_off;
    buf_append(&p->store, "", 1);
    p->span_off = p->store.len;
    return off;
}

static int http_on_message_begin(llhttp_t *l)
{
    http_parser_t *p = l->data;
    p->in_message = 1;
    return 0;
}

static int http_on_url(llhttp_t *l, const char *at, size_t n)
{
    http_parser_t *p = l->data;
    buf_append(&p->store, at, n);
    return 0;
}

static int http_on_url_complete(llhttp_t *l)
{
    http_parser_t *p = l->data;
    p->url_off = http_parser_span_end(p);
    return 0;
}

/* Trailers of a chunked body come through the header callbacks after headers_done; nothing
 * uses them, so they are dropped rather than mixed into the body. */
static int http_on_header_field(llhttp_t *l, const char *at, size_t n)
{
    http_parser_t *p = l->data;
    if (p->headers_done) return 0;
    /* llhttp 8 lets "Name : v" and "Bad Name: v" through; RFC 9112 5.1 says reject them */
    for (size_t i = 0; i < n; i++)
        if (!http_is_tchar((unsigned char)at[i])) return http_parser_fail(p, 400);
    buf_append(&p->store, at, n);
    return 0;
}

/* One header too many is refused once its name is whole: llhttp hands a name over in pieces
 * only when it is split across feeds, so checking a piece would let the split decide between
 * this 431 and the 400 for a bad byte later in the same name. */
static int http_on_header_field_complete(llhttp_t *l)
{
    http_parser_t *p = l->data;
    if (p->headers_done) return 0;
    if (p->req.nheaders == HTTP_MAX_HEADERS) return http_parser_fail(p, 431);
    size_t len = p->store.len - p->span_off;
    size_t off = p->name_off[p->req.nheaders] = http_parser_span_end(p);
    const char *name = p->store.data + off;
    /* counted here, once per line, so a request without repeats pays no pass over its headers */
    if (len == sizeof "Host" - 1) p->host_lines += !strcasecmp(name, "Host");
    else if (len == sizeof "X-Forwarded-For" - 1) p->xff_lines += !strcasecmp(name, "X-Forwarded-For");
    return 0;
}

static int http_on_header_value(llhttp_t *l, const char *at, size_t n)
{
    http_parser_t *p = l->data;
    if (p->headers_done) return 0;
    buf_append(&p->store, at, n);
    return 0;
}

/* llhttp skips leading OWS but hands trailing OWS over with the value. */
static int http_on_header_value_complete(llhttp_t *l)
{
    http_parser_t *p = l->data;
    if (p->headers_done) return 0;
    while (p->store.len > p->span_off && http_is_ows(p->store.data[p->store.len - 1])) p->store.len--;
    while (p->span_off < p->store.len && http_is_ows(p->store.data[p->span_off])) p->span_off++;
    p->value_off[p->req.nheaders++] = http_parser_span_end(p);
    return 0;
}

/* Repeated lines of a list header become one line, "a, b" in order with empty lines dropped, as
 * RFC 9110 5.3 lets a recipient do; the later lines leave the header array. Every reader then
 * sees every line: X-Forwarded-For's first line may be the client's, its last the proxy's.
 * Called only for a name with two lines or more. */
static void http_parser_join(http_parser_t *p, const char *name)
{
    http_request_t *r = &p->req;
    size_t total = 1;
    int out = 0, first = -1;
    for (int i = 0; i < r->nheaders; i++)
        if (!strcasecmp(p->store.data + p->name_off[i], name)) total += strlen(p->store.data + p->value_off[i]) + 2;
    buf_reserve(&p->store, total);   /* no move while values are copied from the store into it */
    size_t joined = p->store.len;
    for (int i = 0; i < r->nheaders; i++) {
        const char *v = p->store.data + p->value_off[i];
        if (strcasecmp(p->store.data + p->name_off[i], name)) {
            p->name_off[out] = p->name_off[i];
            p->value_off[out++] = p->value_off[i];
            continue;
        }
        if (first < 0) {
            first = out;
            p->name_off[out] = p->name_off[i];
            p->value_off[out++] = joined;
        }
        if (!*v) continue;
        if (p->store.len > joined) buf_append(&p->store, ", ", 2);
        buf_append_str(&p->store, v);
    }
    buf_append(&p->store, "", 1);
    r->nheaders = out;
}

/* RFC 9112 3.2: an HTTP/1.1 request names exactly one Host; no request may name two, as two
 * let the proxy in front and this server each route or check the origin by a different one. */
static int http_parser_host_bad(const http_parser_t *p, int http_minor)
{
    return p->host_lines > 1 || (p->host_lines == 0 && http_minor >= 1);
}

static int http_on_headers_complete(llhttp_t *l)
{
    http_parser_t *p = l->data;
    http_request_t *r = &p->req;
    p->headers_done = 1;
    r->method = l->method;
    r->http_major = l->http_major;
    r->http_minor = l->http_minor;
    r->keep_alive = llhttp_should_keep_alive(l);
    /* llhttp takes HTTP/0.9 and HTTP/2.0 request lines; only 1.x is spoken here */
    if (r->http_major != 1) {
        http_parser_fail(p, 505);
        return -1;                 /* llhttp's callback contract: -1 stops the parser, HPE_USER */
    }
    if (http_parser_host_bad(p, r->http_minor)) {
        http_parser_fail(p, 400);
        return -1;
    }
    /* RFC 9112 6.1: Transfer-Encoding on HTTP/1.0 means the framing cannot be trusted, so
     * whatever follows this request may be smuggled: answer it, then close */
    if (r->http_minor == 0 && (l->flags & F_TRANSFER_ENCODING)) r->keep_alive = 0;
    /* refuse a declared body before any of it is read */
    if ((l->flags & F_CONTENT_LENGTH) && l->content_length > p->max_body_bytes) {
        http_parser_fail(p, 413);
        return -1;                 /* as above: llhttp's error answer, not a GW_E* code */
    }
    if (p->xff_lines > 1) http_parser_join(p, "X-Forwarded-For");
    p->body_off = p->store.len;
    return 0;
}

static int http_on_body(llhttp_t *l, const char *at, size_t n)
{
    http_parser_t *p = l->data;
    /* a chunked body has no declared length: stop it as it grows */
    if (p->req.body_len + n > p->max_body_bytes) return http_parser_fail(p, 413);
    buf_append(&p->store, at, n);
    p->req.body_len += n;
    return 0;
}

/* Pausing here returns each request on its own. An upgrade is not paused: llhttp goes on to
 * stop with HPE_PAUSED_UPGRADE right after it, which tells feed where the headers ended. */
static int http_on_message_complete(llhttp_t *l)
{
    http_parser_t *p = l->data;
    p->in_message = 0;
    buf_append(&p->store, "", 1);
    return l->upgrade ? 0 : HPE_PAUSED;
}

/* ---- request parsing: the feed loop ---- */

void http_parser_init(http_parser_t *p, size_t max_header_bytes, size_t max_body_bytes)
{
    memset(p, 0, sizeof *p);
    p->max_header_bytes = max_header_bytes;
    p->max_body_bytes = max_body_bytes;
    buf_init(&p->store);
    llhttp_settings_init(&p->settings);
    p->settings.on_message_begin = http_on_message_begin;
    p->settings.on_url = http_on_url;
    p->settings.on_url_complete = http_on_url_complete;
    p->settings.on_header_field = http_on_header_field;
    p->settings.on_header_field_complete = http_on_header_field_complete;
    p->settings.on_header_value = http_on_header_value;
    p->settings.on_header_value_complete = http_on_header_value_complete;
    p->settings.on_headers_complete = http_on_headers_complete;
    p->settings.on_body = http_on_body;
    p->settings.on_message_complete = http_on_message_complete;
    llhttp_init(&p->llhttp, HTTP_REQUEST, &p->settings);
    p->llhttp.data = p;
}

void http_parser_free(http_parser_t *p) { buf_free(&p->store); }

/* Forgets the returned request and lets llhttp go on after its pause. */
static void http_parser_next(http_parser_t *p)
{
    if (p->req.upgrade) llhttp_resume_after_upgrade(&p->llhttp);
    else llhttp_resume(&p->llhttp);
    if (p->store.cap > HTTP_STORE_KEEP) buf_free(&p->store);
    else buf_reset(&p->store);
    memset(&p->req, 0, sizeof p->req);
    p->header_bytes = 0;
    p->url_off = p->body_off = p->span_off = 0;
    p->headers_done = 0;
    p->host_lines = p->xff_lines = 0;
    p->complete = 0;
}

/* Splits the target into path and query and decodes the path into the store. The absolute
 * form (proxies) is cut down to its path, so routing sees the same thing either way. 0, or
 * GW_EINVAL for a bad escape in the path. */
static int http_request_split(http_parser_t *p, size_t *path_off, size_t *query_off)
{
    const char *url = p->store.data + p->url_off;
    size_t ulen = strlen(url);
    const char *q = memchr(url, '?', ulen);
    size_t plen = q ? (size_t)(q - url) : ulen;
    size_t start = 0;
    *query_off = p->url_off + (q ? plen + 1 : ulen);

    const char *scheme = !strncasecmp(url, "http://", 7) ? url + 7 : !strncasecmp(url, "https://", 8) ? url + 8 : NULL;
    if (scheme && (size_t)(scheme - url) <= plen) {
        const char *slash = memchr(scheme, '/', plen - (size_t)(scheme - url));
        start = slash ? (size_t)(slash - url) : plen;
    }
    size_t src = p->url_off + start, n = plen - start;
    buf_reserve(&p->store, n + 2);   /* url may move: use offsets from here on */
    *path_off = p->store.len;
    char *out = p->store.data + p->store.len;
    long dlen = http_pct_decode(p->store.data + src, n, out, n, 0);
    if (dlen < 0) return GW_EINVAL;   /* out holds n bytes: the path always fits */
    if (dlen == 0) out[dlen++] = '/';   /* "http://host" means "/" */
    out[dlen] = '\0';
    p->store.len += (size_t)dlen + 1;
    return 0;
}

/* Turns the offsets of a complete request into pointers; the store does not grow after this. */
static int http_parser_finish(http_parser_t *p, int upgrade)
{
    http_request_t *r = &p->req;
    size_t path_off, query_off;
    p->complete = 1;
    p->in_message = 0;
    r->upgrade = upgrade;
    if (http_request_split(p, &path_off, &query_off) < 0) {
        p->status = 400;
        return HTTP_PARSE_ERROR;
    }
    char *base = p->store.data;
    r->url = base + p->url_off;
    r->path = base + path_off;
    r->query = base + query_off;
    for (int i = 0; i < r->nheaders; i++) {
        r->headers[i].name = base + p->name_off[i];
        r->headers[i].value = base + p->value_off[i];
    }
    r->body = base + p->body_off;
    return HTTP_PARSE_DONE;
}

static int http_status_of_errno(llhttp_errno_t err)
{
    switch (err) {
    case HPE_INVALID_VERSION:
    case HPE_PAUSED_H2_UPGRADE:   /* the HTTP/2 connection preface */
        return 505;
    default:
        return 400;
    }
}

int http_parser_feed(http_parser_t *p, const char *data, size_t len, size_t *used)
{
    *used = 0;
    if (p->status) return HTTP_PARSE_ERROR;
    if (p->complete) {
        /* after a request without keep-alive llhttp ignores the rest; so do we */
        if (!p->req.keep_alive && !p->req.upgrade) {
            *used = len;
            return HTTP_PARSE_MORE;
        }
        http_parser_next(p);
    }

    /* At most two rounds: the header section up to its limit, then, once it is complete,
     * the rest of the feed (body, or the bytes an upgrade leaves for the new protocol). */
    size_t off = 0;
    while (off < len) {
        size_t n = len - off;
        int capped = 0;
        if (!p->headers_done && n > p->max_header_bytes - p->header_bytes) {
            n = p->max_header_bytes - p->header_bytes;
            capped = 1;
        }
        const char *chunk = data + off;
        llhttp_errno_t err = n ? llhttp_execute(&p->llhttp, chunk, n) : HPE_OK;
        const char *pos = llhttp_get_error_pos(&p->llhttp);
        switch (err) {
        case HPE_OK:
            off += n;
            if (p->headers_done) continue;
            p->header_bytes += n;
            if (capped) {
                /* the limit is reached and the section still goes on */
                *used = off;
                p->status = 431;
                return HTTP_PARSE_ERROR;
            }
            continue;
        case HPE_PAUSED:
        case HPE_PAUSED_UPGRADE:
            *used = off + (size_t)(pos - chunk);
            return http_parser_finish(p, err == HPE_PAUSED_UPGRADE);
        default:
            *used = off + (pos && pos >= chunk && pos <= chunk + n ? (size_t)(pos - chunk) : n);
            if (!p->status) p->status = http_status_of_errno(err);
            return HTTP_PARSE_ERROR;
        }
    }
    *used = len;
    return HTTP_PARSE_MORE;
}

/* ---- request helpers ---- */

const char *http_request_header(const http_request_t *req, const char *name)
{
    for (int i = 0; i < req->nheaders; i++)
        if (!strcasecmp(req->headers[i].name, name)) return req->headers[i].value;
    return NULL;
}

int http_header_has_token(const char *value, const char *token) { return http_list_has(value, token, 1); }

/* The next parameter of a query string from *cursor: its raw key and value. 0 after the last. */
static int http_query_split(const char **cursor, const char **key, size_t *klen, const char **val, size_t *vlen)
{
    const char *s = *cursor;
    if (!s || !*s) return 0;
    const char *end = strchr(s, '&');
    size_t n = end ? (size_t)(end - s) : strlen(s);
    const char *eq = memchr(s, '=', n);
    *key = s;
    *klen = eq ? (size_t)(eq - s) : n;
    *val = eq ? eq + 1 : s + n;
    *vlen = (size_t)(s + n - *val);
    *cursor = end ? end + 1 : s + n;
    return 1;
}

/* A raw value decoded into out as http_query_get answers: its length, GW_EINVAL or GW_ETOOBIG. */
static int http_query_decode(const char *v, size_t vlen, char *out, size_t outlen)
{
    if (!outlen) return GW_ETOOBIG;
    long dlen = http_pct_decode(v, vlen, out, outlen - 1, 1);
    if (dlen < 0 || dlen > 0x7fffffff) {
        out[0] = '\0';
        return dlen < 0 ? (int)dlen : GW_ETOOBIG;
    }
    out[dlen] = '\0';
    return (int)dlen;
}

int http_query_get(const char *query, const char *key, char *out, size_t outlen)
{
    if (!key) return GW_ENOTFOUND;
    size_t want = strlen(key), klen, vlen;
    const char *k, *v;
    while (http_query_split(&query, &k, &klen, &v, &vlen))
        if (klen == want && !memcmp(k, key, klen)) return http_query_decode(v, vlen, out, outlen);
    return GW_ENOTFOUND;
}

int http_query_next(const char **cursor, const char **key, size_t *klen, char *out, size_t outlen)
{
    const char *v;
    size_t vlen;
    if (!http_query_split(cursor, key, klen, &v, &vlen)) return GW_ENOTFOUND;
    return http_query_decode(v, vlen, out, outlen);
}

/* ---- responses ---- */

int http_status_of(int err)
{
    switch (err) {
    case GW_EINVAL: return 400;
    case GW_EREFUSED: return 403;
    case GW_ENOTFOUND: return 404;
    case GW_ETOOBIG: return 413;
    case GW_ELIMIT: return 429;
    case GW_EDOWN: case GW_EUNAVAIL: case GW_ENOMEM: case UV_ENOMEM: return 503;
    case GW_ETIMEDOUT: return 504;
    default: return 500;
    }
}

const char *http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

void http_response_write(buf_t *out, int status, const char *ctype, const char *extra_headers,
                         const void *body, size_t len, int keep_alive)
{
    /* RFC 9110: 1xx, 204 and 304 carry no content and no Content-Length */
    int bodiless = status / 100 == 1 || status == 204 || status == 304;
    buf_printf(out, "HTTP/1.1 %d %s\r\nServer: chatgw\r\n", status, http_status_text(status));
    if (!bodiless) {
        if (ctype || len) buf_printf(out, "Content-Type: %s\r\n", ctype ? ctype : "text/plain; charset=utf-8");
        buf_printf(out, "Content-Length: %zu\r\n", len);
    }
    /* a 101 names its own Connection: Upgrade */
    if (!keep_alive && status != 101) buf_append_str(out, "Connection: close\r\n");
    if (extra_headers) buf_append_str(out, extra_headers);
    buf_append_str(out, "\r\n");
    if (!bodiless && len) buf_append(out, body, len);
}

/* Encodes {"error":code,"message":msg} into body; jansson refuses strings that are not UTF-8,
 * so a message that is not falls back to a fixed one rather than to an empty body. */
static void http_error_body(buf_t *body, const char *code, const char *msg)
{
    json_t *obj = json_pack("{s:s, s:s}", "error", code ? code : "error", "message", msg ? msg : "");
    if (!obj) obj = json_pack("{s:s, s:s}", "error", "error", "message", "unprintable error");
    if (!obj) return;
    size_t n = json_dumpb(obj, NULL, 0, JSON_COMPACT | JSON_PRESERVE_ORDER);
    buf_reserve(body, n);
    body->len += json_dumpb(obj, body->data + body->len, n, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
}

void http_response_error(buf_t *out, int status, const char *code, const char *msg, int keep_alive)
{
    buf_t body;
    buf_init(&body);
    http_error_body(&body, code, msg);
    http_response_write(out, status, "application/json", NULL, body.data, body.len, keep_alive);
    buf_free(&body);
}

void http_response_method_not_allowed(buf_t *out, const char *extra_headers, int keep_alive)
{
    static const char body[] = "{\"error\":\"method_not_allowed\",\"message\":\"use GET\"}";
    buf_t hdr;
    buf_init(&hdr);
    if (extra_headers) buf_append_str(&hdr, extra_headers);
    buf_append_str(&hdr, "Allow: GET, HEAD\r\n");
    http_response_write(out, 405, "application/json", buf_cstr(&hdr), body, sizeof body - 1, keep_alive);
    buf_free(&hdr);
}

/* ---- the WebSocket opening handshake ---- */

/* 1 when any header called name lists token (headers may repeat: "Connection" twice). */
static int http_request_has_token(const http_request_t *req, const char *name, const char *token, int icase)
{
    for (int i = 0; i < req->nheaders; i++)
        if (!strcasecmp(req->headers[i].name, name) && http_list_has(req->headers[i].value, token, icase)) return 1;
    return 0;
}

static int http_request_header_count(const http_request_t *req, const char *name)
{
    int n = 0;
    for (int i = 0; i < req->nheaders; i++) n += !strcasecmp(req->headers[i].name, name);
    return n;
}

/* Length of host[:port] without the scheme's default port, so "h" and "h:443" match. */
static size_t http_authority_len(const char *s, size_t n, const char *default_port)
{
    size_t dp = strlen(default_port);
    if (n > dp + 1 && s[n - dp - 1] == ':' && !memcmp(s + n - dp, default_port, dp)) return n - dp - 1;
    return n;
}

/* Same host: the Origin's host[:port] against the Host header. Only http(s) origins can match;
 * "null" and other schemes never do. */
static int http_origin_same_host(const char *origin, const char *host)
{
    const char *port;
    const char *a;
    if (!strncasecmp(origin, "http://", 7)) a = origin + 7, port = "80";
    else if (!strncasecmp(origin, "https://", 8)) a = origin + 8, port = "443";
    else return 0;
    if (!host) return 0;
    size_t alen = strcspn(a, "/");
    alen = http_authority_len(a, alen, port);
    size_t hlen = http_authority_len(host, strlen(host), port);
    return alen && alen == hlen && !strncasecmp(a, host, alen);
}

/* One allowed_origins entry: "*", a full origin ("https://chat.example.com") or a bare
 * host[:port] that matches an http or https origin. */
static int http_origin_entry_matches(const char *origin, const char *e, size_t n)
{
    while (n && e[n - 1] == '/') n--;
    if (n == 1 && e[0] == '*') return 1;
    int full = n == 4 && !strncasecmp(e, "null", 4);
    for (size_t i = 0; i + 3 <= n && !full; i++) full = !memcmp(e + i, "://", 3);
    if (full)
        return strlen(origin) == n && !strncasecmp(origin, e, n);
    const char *a = !strncasecmp(origin, "http://", 7) ? origin + 7 : !strncasecmp(origin, "https://", 8) ? origin + 8 : NULL;
    return a && strcspn(a, "/") == n && !strncasecmp(a, e, n);
}

static int http_origin_allowed(const char *origin, const char *host, const char *allowed)
{
    const char *s = allowed ? allowed : "";
    while (http_is_ows(*s)) s++;
    if (!*s) return http_origin_same_host(origin, host);
    for (;;) {
        while (http_is_ows(*s)) s++;
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        while (n && http_is_ows(s[n - 1])) n--;
        if (n && http_origin_entry_matches(origin, s, n)) return 1;
        if (!end) return 0;
        s = end + 1;
    }
}

/* Every Sec-WebSocket-Extensions header joined, as one list, for the offer parser. */
static void http_extensions_join(const http_request_t *req, buf_t *joined)
{
    for (int i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, "Sec-WebSocket-Extensions") || !req->headers[i].value[0]) continue;
        if (joined->len) buf_append_str(joined, ", ");
        buf_append_str(joined, req->headers[i].value);
    }
    buf_append(joined, "", 1);
}

static int http_ws_refuse(buf_t *out, int status, const char *code, const char *msg)
{
    buf_t body;
    buf_init(&body);
    http_error_body(&body, code, msg);
    /* RFC 6455 4.4: a version we do not speak is answered with the one we do */
    const char *extra = status == 426 ? "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" : NULL;
    http_response_write(out, status, "application/json", extra, body.data, body.len, 0);
    buf_free(&body);
    return status;
}

/* Checks in RFC 6455 4.2.1 order; returns 0 or the refusal already written to out. */
static int http_ws_check(const http_request_t *req, const char *allowed_origins, buf_t *out, char accept[WS_ACCEPT_SIZE])
{
    if (req->method != HTTP_GET) return http_ws_refuse(out, 400, "bad_handshake", "WebSocket upgrade must use GET");
    if (req->http_major < 1 || (req->http_major == 1 && req->http_minor < 1))
        return http_ws_refuse(out, 400, "bad_handshake", "WebSocket upgrade needs HTTP/1.1");
    if (!http_request_header(req, "Host")) return http_ws_refuse(out, 400, "bad_handshake", "missing Host header");
    if (!http_request_has_token(req, "Upgrade", "websocket", 1))
        return http_ws_refuse(out, 400, "bad_handshake", "Upgrade header must include websocket");
    if (!http_request_has_token(req, "Connection", "upgrade", 1))
        return http_ws_refuse(out, 400, "bad_handshake", "Connection header must include upgrade");
    const char *version = http_request_header(req, "Sec-WebSocket-Version");
    if (!version || strcmp(version, "13"))
        return http_ws_refuse(out, 426, "unsupported_version", "Sec-WebSocket-Version must be 13");
    /* two keys would leave the accept value ambiguous */
    const char *key = http_request_header(req, "Sec-WebSocket-Key");
    if (http_request_header_count(req, "Sec-WebSocket-Key") != 1 || ws_accept_key(key, strlen(key), accept) != 0)
        return http_ws_refuse(out, 400, "bad_handshake", "Sec-WebSocket-Key must be 16 bytes in base64");
    const char *origin = http_request_header(req, "Origin");
    if (origin && !http_origin_allowed(origin, http_request_header(req, "Host"), allowed_origins))
        return http_ws_refuse(out, 403, "forbidden_origin", "Origin not allowed");
    return 0;
}

int http_ws_handshake(const http_request_t *req, const char *allowed_origins, int allow_deflate,
                      buf_t *out, http_ws_accept_t *acc)
{
    http_ws_accept_t local;
    if (!acc) acc = &local;
    memset(acc, 0, sizeof *acc);
    char accept[WS_ACCEPT_SIZE];
    int status = http_ws_check(req, allowed_origins, out, accept);
    if (status) return status;

    buf_t hdr;
    buf_init(&hdr);
    buf_printf(&hdr, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n", accept);
    /* subprotocol names are case-sensitive: the client checks our answer byte for byte */
    if (http_request_has_token(req, "Sec-WebSocket-Protocol", HTTP_WS_SUBPROTOCOL, 0)) {
        acc->subprotocol = 1;
        buf_append_str(&hdr, "Sec-WebSocket-Protocol: " HTTP_WS_SUBPROTOCOL "\r\n");
    }
    if (allow_deflate) {
        buf_t offer;
        buf_init(&offer);
        http_extensions_join(req, &offer);
        char answer[256];
        if (offer.data[0] && ws_pmd_negotiate(offer.data, &acc->pmd, answer, sizeof answer) == 1) {
            acc->deflate = 1;
            buf_printf(&hdr, "Sec-WebSocket-Extensions: %s\r\n", answer);
        }
        buf_free(&offer);
    }
    buf_append(&hdr, "", 1);
    http_response_write(out, 101, NULL, hdr.data, NULL, 0, 1);
    buf_free(&hdr);
    return 101;
}
