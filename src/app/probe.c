/* probe: the synthetic user; see probe.h. One connection, blocking I/O on a non-blocking
 * socket: every wait is a poll() bounded by the probe's one deadline. Name resolution cannot
 * be bounded that way (getaddrinfo blocks), so an alarm a second past the deadline prints the
 * failure line with async-signal-safe calls and exits. Server frames arrive unmasked and are
 * read here; the frames sent are masked with the codec's ws_mask. */
#define _GNU_SOURCE
#include "app/probe.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "proto/ws.h"

enum { STEP_CONNECT, STEP_TLS, STEP_UPGRADE, STEP_JOIN, STEP_ECHO, STEP_READYZ, STEPS };
static const char *const probe_step_names[STEPS] = {"connect", "tls", "upgrade", "join", "echo", "readyz"};

#define PROBE_FRAME_MAX (1 << 20)   /* a server frame larger than this fails the step */

typedef struct {
    /* options */
    const char *url, *token, *name, *cacert, *readyz_url;
    int insecure, no_readyz;
    long timeout_ms;
    /* the URL's parts */
    int tls;
    char host[256], port[8], target[2048], hosthdr[300];
    /* the connection */
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    buf_t in;                 /* bytes read and not yet parsed */
    uint64_t start_ms, deadline_ms;
    char room[32], nonce[40];
    /* the result */
    double ms[STEPS];
    int done[STEPS];
    const char *readyz;       /* "ok", "skipped" */
    long readyz_status;
    char err[512];
} probe_t;

static volatile sig_atomic_t probe_cur_step;

static uint64_t probe_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double probe_now_msf(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* The backstop for a getaddrinfo that outlives the deadline: async-signal-safe calls only. */
static void probe_on_alarm(int sig)
{
    (void)sig;
    static const char a[] = "{\"ok\":false,\"failed\":\"", b[] = "\",\"error\":\"probe timeout\"}\n";
    int step = probe_cur_step;
    const char *name = probe_step_names[step >= 0 && step < STEPS ? step : 0];
    ssize_t w = write(1, a, sizeof a - 1);
    w = write(1, name, strlen(name));
    w = write(1, b, sizeof b - 1);
    (void)w;
    _exit(PROBE_EXIT_BASE + step);
}

static int probe_fail(probe_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int probe_fail(probe_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- the URL ---- */

static int probe_url_parse(probe_t *p)
{
    const char *u = p->url, *rest;
    if (!strncasecmp(u, "ws://", 5)) p->tls = 0, rest = u + 5;
    else if (!strncasecmp(u, "wss://", 6)) p->tls = 1, rest = u + 6;
    else return probe_fail(p, "the URL must start with ws:// or wss://");
    size_t auth = strcspn(rest, "/?#");
    const char *path = rest + auth;
    const char *hp = rest;
    size_t hlen = auth;
    if (memchr(hp, '@', hlen)) return probe_fail(p, "user info in the URL is not supported");
    const char *port = NULL;
    if (hlen && hp[0] == '[') {                               /* [v6]:port */
        const char *close = memchr(hp, ']', hlen);
        if (!close) return probe_fail(p, "bad IPv6 host in the URL");
        snprintf(p->host, sizeof p->host, "%.*s", (int)(close - hp - 1), hp + 1);
        if (close + 1 < hp + hlen && close[1] == ':') port = close + 2;
    } else {
        const char *colon = memchr(hp, ':', hlen);
        size_t n = colon ? (size_t)(colon - hp) : hlen;
        if (n >= sizeof p->host) return probe_fail(p, "host name too long");
        snprintf(p->host, sizeof p->host, "%.*s", (int)n, hp);
        if (colon) port = colon + 1;
    }
    if (!p->host[0]) return probe_fail(p, "no host in the URL");
    if (port) {
        size_t n = (size_t)(hp + hlen - port);
        if (!n || n > 5 || strspn(port, "0123456789") < n) return probe_fail(p, "bad port in the URL");
        snprintf(p->port, sizeof p->port, "%.*s", (int)n, port);
    } else {
        snprintf(p->port, sizeof p->port, "%s", p->tls ? "443" : "80");
    }
    snprintf(p->hosthdr, sizeof p->hosthdr, "%.*s", (int)hlen, hp);
    size_t plen = strcspn(path, "?#");
    const char *query = path[plen] == '?' ? path + plen + 1 : "";
    size_t qlen = strcspn(query, "#");
    /* The chat endpoint is /ws; a URL that names the site only means it. */
    const char *tpath = plen > 1 ? path : "/ws";
    int tn = plen > 1 ? (int)plen : 3;
    char *enc = NULL;
    if (p->token) {
        CURL *c = curl_easy_init();
        char *e = c ? curl_easy_escape(c, p->token, 0) : NULL;
        enc = e ? strdup(e) : NULL;
        curl_free(e);
        if (c) curl_easy_cleanup(c);
        if (!enc) return probe_fail(p, "out of memory");
    }
    int n = snprintf(p->target, sizeof p->target, "%.*s?%.*s%sname=%s%s%s", tn, tpath, (int)qlen, query,
                     qlen ? "&" : "", p->name, enc ? "&token=" : "", enc ? enc : "");
    free(enc);
    if (n < 0 || (size_t)n >= sizeof p->target) return probe_fail(p, "URL too long");
    return 0;
}

/* ---- I/O bounded by the deadline ---- */

static int probe_wait(probe_t *p, short events)
{
    for (;;) {
        uint64_t now = probe_now_ms();
        if (now >= p->deadline_ms) return probe_fail(p, "timed out after %ld ms", p->timeout_ms);
        struct pollfd pfd = {.fd = p->fd, .events = events};
        int rc = poll(&pfd, 1, (int)(p->deadline_ms - now));
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return probe_fail(p, "poll: %s", strerror(errno));
    }
}

static const char *probe_ssl_error(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (!e) return "connection closed";
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

static int probe_write(probe_t *p, const void *data, size_t len)
{
    const char *d = data;
    while (len) {
        ssize_t n;
        if (p->ssl) {
            int r = SSL_write(p->ssl, d, (int)len);
            if (r > 0) n = r;
            else {
                int e = SSL_get_error(p->ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    return probe_fail(p, "TLS write: %s", probe_ssl_error());
                if (probe_wait(p, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) < 0) return -1;
                continue;
            }
        } else {
            n = send(p->fd, d, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN && errno != EINTR) return probe_fail(p, "send: %s", strerror(errno));
                if (probe_wait(p, POLLOUT) < 0) return -1;
                continue;
            }
        }
        d += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Appends what arrives to p->in. 0, or -1 with p->err (the peer's close included). */
static int probe_read_more(probe_t *p)
{
    char tmp[16384];
    for (;;) {
        ssize_t n;
        if (p->ssl) {
            int r = SSL_read(p->ssl, tmp, sizeof tmp);
            if (r > 0) n = r;
            else {
                int e = SSL_get_error(p->ssl, r);
                if (e == SSL_ERROR_ZERO_RETURN) return probe_fail(p, "connection closed by the server");
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    return probe_fail(p, "TLS read: %s", probe_ssl_error());
                if (probe_wait(p, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) < 0) return -1;
                continue;
            }
        } else {
            n = recv(p->fd, tmp, sizeof tmp, 0);
            if (n == 0) return probe_fail(p, "connection closed by the server");
            if (n < 0) {
                if (errno != EAGAIN && errno != EINTR) return probe_fail(p, "recv: %s", strerror(errno));
                if (probe_wait(p, POLLIN) < 0) return -1;
                continue;
            }
        }
        buf_append(&p->in, tmp, (size_t)n);
        buf_cstr(&p->in);   /* the response head is read as a string */
        return 0;
    }
}

static void probe_consume(probe_t *p, size_t n)
{
    memmove(p->in.data, p->in.data + n, p->in.len - n);
    p->in.len -= n;
    buf_cstr(&p->in);
}

/* ---- the steps ---- */

static int probe_connect(probe_t *p)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(p->host, p->port, &hints, &res);
    if (rc != 0) return probe_fail(p, "resolving %s: %s", p->host, gai_strerror(rc));
    char why[600] = "no address";
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        p->fd = fd;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
            (errno == EINPROGRESS && probe_wait(p, POLLOUT) == 0)) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (!soerr) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                freeaddrinfo(res);
                return 0;
            }
            snprintf(why, sizeof why, "%s", strerror(soerr));
        } else {
            snprintf(why, sizeof why, "%s", p->err[0] ? p->err : strerror(errno));
        }
        close(fd);
        p->fd = -1;
        if (probe_now_ms() >= p->deadline_ms) break;
    }
    freeaddrinfo(res);
    return probe_fail(p, "connecting to %s:%s: %s", p->host, p->port, why);
}

static int probe_tls(probe_t *p)
{
    p->ctx = SSL_CTX_new(TLS_client_method());
    if (!p->ctx) return probe_fail(p, "TLS: %s", probe_ssl_error());
    SSL_CTX_set_min_proto_version(p->ctx, TLS1_2_VERSION);
    if (!p->insecure) {
        SSL_CTX_set_verify(p->ctx, SSL_VERIFY_PEER, NULL);
        int ok = p->cacert ? SSL_CTX_load_verify_locations(p->ctx, p->cacert, NULL)
                           : SSL_CTX_set_default_verify_paths(p->ctx);
        if (ok != 1) return probe_fail(p, "TLS: cannot load the CA certificates: %s", probe_ssl_error());
    }
    p->ssl = SSL_new(p->ctx);
    if (!p->ssl) return probe_fail(p, "TLS: %s", probe_ssl_error());
    SSL_set_fd(p->ssl, p->fd);
    SSL_set_tlsext_host_name(p->ssl, p->host);
    if (!p->insecure) SSL_set1_host(p->ssl, p->host);
    for (;;) {
        int r = SSL_connect(p->ssl);
        if (r == 1) return 0;
        int e = SSL_get_error(p->ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            long v = SSL_get_verify_result(p->ssl);
            if (v != X509_V_OK) return probe_fail(p, "TLS: certificate: %s", X509_verify_cert_error_string(v));
            return probe_fail(p, "TLS handshake: %s", probe_ssl_error());
        }
        if (probe_wait(p, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) < 0) return -1;
    }
}

static int probe_upgrade(probe_t *p)
{
    unsigned char raw[16];
    char key[32], accept[WS_ACCEPT_SIZE];
    RAND_bytes(raw, sizeof raw);
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof raw);
    if (ws_accept_key(key, strlen(key), accept) < 0) return probe_fail(p, "cannot compute the accept key");
    buf_t req;
    buf_init(&req);
    buf_printf(&req,
               "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: chatgw-probe/%s\r\n\r\n",
               p->target, p->hosthdr, key, CHATGW_VERSION);
    int rc = probe_write(p, req.data, req.len);
    buf_free(&req);
    if (rc < 0) return -1;
    char *end;
    while (!(end = memmem(p->in.data ? p->in.data : "", p->in.len, "\r\n\r\n", 4))) {
        if (p->in.len > 16384) return probe_fail(p, "response head too large");
        if (probe_read_more(p) < 0) return -1;
    }
    size_t head = (size_t)(end - p->in.data) + 4;
    int status = 0;
    if (sscanf(p->in.data, "HTTP/1.%*c %d", &status) != 1) return probe_fail(p, "not an HTTP response");
    if (status != 101) {
        /* chatgw's refusals carry a JSON body with the reason; show its first line */
        const char *body = p->in.data + head;
        size_t blen = p->in.len - head;
        size_t line = strcspn(body, "\r\n");
        return probe_fail(p, "HTTP %d instead of 101%s%.*s", status, blen ? ": " : "", (int)(line < blen ? line : blen),
                          body);
    }
    char want[64];
    snprintf(want, sizeof want, "Sec-WebSocket-Accept: %s\r\n", accept);
    char *h = strndup(p->in.data, head);
    int ok = h && strcasestr(h, want);
    free(h);
    probe_consume(p, head);
    if (!ok) return probe_fail(p, "bad Sec-WebSocket-Accept in the 101 response");
    return 0;
}

/* Sends one masked client frame. */
static int probe_send_frame(probe_t *p, int op, const char *data, size_t len)
{
    uint8_t hdr[WS_MAX_HEADER], key[4];
    size_t h = 0;
    hdr[h++] = (uint8_t)(0x80 | op);
    if (len < 126) {
        hdr[h++] = (uint8_t)(0x80 | len);
    } else if (len <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (uint8_t)(len >> 8);
        hdr[h++] = (uint8_t)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) hdr[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    RAND_bytes(key, 4);
    memcpy(hdr + h, key, 4);
    h += 4;
    uint8_t *frame = xmalloc(h + len);     /* one write: no Nagle wait between header and payload */
    memcpy(frame, hdr, h);
    memcpy(frame + h, data, len);
    ws_mask(frame + h, len, key, 0);
    int rc = probe_write(p, frame, h + len);
    free(frame);
    return rc;
}

/* Reads the next text message as JSON (pings answered, other frames skipped). NULL on failure. */
static json_t *probe_next_json(probe_t *p)
{
    buf_t msg;
    buf_init(&msg);
    for (;;) {
        uint8_t *d = (uint8_t *)p->in.data;
        size_t have = p->in.len, need = 2;
        uint64_t plen = 0;
        if (have >= 2) {
            plen = d[1] & 0x7f;
            if (d[1] & 0x80) {
                buf_free(&msg);
                return probe_fail(p, "the server sent a masked frame"), NULL;
            }
            if (plen == 126) need = 4;
            else if (plen == 127) need = 10;
            if (have >= need) {
                if (need == 4) plen = (uint64_t)d[2] << 8 | d[3];
                if (need == 10) {
                    plen = 0;
                    for (int i = 2; i < 10; i++) plen = plen << 8 | d[i];
                }
                if (plen > PROBE_FRAME_MAX || msg.len + plen > PROBE_FRAME_MAX) {
                    buf_free(&msg);
                    return probe_fail(p, "frame too large"), NULL;
                }
            }
        }
        if (have < need || have < need + plen) {
            if (probe_read_more(p) < 0) {
                buf_free(&msg);
                return NULL;
            }
            continue;
        }
        int fin = d[0] & 0x80, op = d[0] & 0x0f;
        const char *payload = (const char *)d + need;
        if (op == WS_OP_CLOSE) {
            unsigned code = plen >= 2 ? (unsigned)((uint8_t)payload[0] << 8 | (uint8_t)payload[1]) : 1005;
            probe_fail(p, "the server closed the WebSocket: %u %.*s", code, plen > 2 ? (int)(plen - 2) : 0,
                       payload + 2);
            buf_free(&msg);
            return NULL;
        }
        if (op == WS_OP_PING) {
            char ping[WS_MAX_CONTROL];
            size_t n = plen < sizeof ping ? (size_t)plen : sizeof ping;
            memcpy(ping, payload, n);
            probe_consume(p, need + (size_t)plen);
            if (probe_send_frame(p, WS_OP_PONG, ping, n) < 0) {
                buf_free(&msg);
                return NULL;
            }
            continue;
        }
        if (op == WS_OP_TEXT || op == WS_OP_CONT) buf_append(&msg, payload, (size_t)plen);
        probe_consume(p, need + (size_t)plen);
        if (!fin || (op != WS_OP_TEXT && op != WS_OP_CONT)) continue;
        json_error_t je;
        json_t *j = json_loadb(msg.data ? msg.data : "", msg.len, 0, &je);
        buf_free(&msg);
        if (!j) return probe_fail(p, "the server sent a message that is not JSON"), NULL;
        return j;
    }
}

static int probe_send_json(probe_t *p, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return probe_fail(p, "out of memory");
    int rc = probe_send_frame(p, WS_OP_TEXT, s, strlen(s));
    free(s);
    return rc;
}

static const char *probe_str(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return s ? s : "";
}

/* Waits for a frame of type want in the probe room; an error frame fails the step. */
static int probe_expect(probe_t *p, const char *want, const char *text)
{
    for (;;) {
        json_t *j = probe_next_json(p);
        if (!j) return -1;
        const char *type = probe_str(j, "type");
        if (!strcmp(type, "error")) {
            probe_fail(p, "error frame: %s: %s", probe_str(j, "code"), probe_str(j, "message"));
            json_decref(j);
            return -1;
        }
        int hit = !strcmp(type, want) && !strcmp(probe_str(j, "room"), p->room) &&
                  (!text || !strcmp(probe_str(j, "text"), text));
        json_decref(j);
        if (hit) return 0;
    }
}

static int probe_welcome_and_join(probe_t *p)
{
    for (;;) {   /* the welcome comes first */
        json_t *j = probe_next_json(p);
        if (!j) return -1;
        const char *type = probe_str(j, "type");
        int welcome = !strcmp(type, "welcome"), error = !strcmp(type, "error");
        if (error) probe_fail(p, "error frame: %s: %s", probe_str(j, "code"), probe_str(j, "message"));
        json_decref(j);
        if (error) return -1;
        if (welcome) break;
    }
    if (probe_send_json(p, json_pack("{s:s, s:s}", "type", "join", "room", p->room)) < 0) return -1;
    return probe_expect(p, "room", NULL);
}

static int probe_echo(probe_t *p)
{
    char text[64];
    snprintf(text, sizeof text, "probe %s", p->nonce);
    if (probe_send_json(p, json_pack("{s:s, s:s, s:s, s:s}", "type", "msg", "room", p->room, "text", text, "cid",
                                     p->nonce)) < 0)
        return -1;
    return probe_expect(p, "msg", text);
}

static size_t probe_discard(char *ptr, size_t size, size_t n, void *ud)
{
    (void)ptr;
    (void)ud;
    return size * n;
}

/* /readyz on the same host: 200 passes, 503 fails, anything else (a 404 behind an ingress
 * that does not route it, no answer) is skipped. */
static int probe_readyz(probe_t *p)
{
    char url[600];
    if (p->readyz_url) snprintf(url, sizeof url, "%s", p->readyz_url);
    else snprintf(url, sizeof url, "%s://%s/readyz", p->tls ? "https" : "http", p->hosthdr);
    uint64_t now = probe_now_ms();
    if (now >= p->deadline_ms) return probe_fail(p, "timed out after %ld ms", p->timeout_ms);
    CURL *c = curl_easy_init();
    if (!c) return probe_fail(p, "out of memory");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(p->deadline_ms - now));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, probe_discard);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "chatgw-probe/" CHATGW_VERSION);
    if (p->cacert) curl_easy_setopt(c, CURLOPT_CAINFO, p->cacert);
    if (p->insecure) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    p->readyz_status = status;
    if (rc == CURLE_OPERATION_TIMEDOUT) return probe_fail(p, "timed out after %ld ms", p->timeout_ms);
    if (status == 200) p->readyz = "ok";
    else if (status == 503) return probe_fail(p, "/readyz answered 503: the gateway is not ready");
    else p->readyz = "skipped";
    return 0;
}

/* ---- the command ---- */

static void probe_close(probe_t *p)
{
    if (p->ssl) {
        SSL_shutdown(p->ssl);
        SSL_free(p->ssl);
    }
    if (p->ctx) SSL_CTX_free(p->ctx);
    if (p->fd >= 0) close(p->fd);
    buf_free(&p->in);
}

static int probe_usage(void)
{
    fprintf(stderr, "usage: chatgw probe ws[s]://HOST[:PORT][/PATH][?QUERY] [--timeout-ms N] [--token T] [--name N]\n"
                    "                    [--cacert FILE] [--insecure] [--readyz-url URL] [--no-readyz]\n");
    return 2;
}

static int probe_args(probe_t *p, int argc, char **argv)
{
    p->timeout_ms = 10000;
    p->name = "probe";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--insecure")) p->insecure = 1;
        else if (!strcmp(a, "--no-readyz")) p->no_readyz = 1;
        else if (a[0] == '-' && a[1] == '-' && !v) return -1;
        else if (!strcmp(a, "--timeout-ms")) {
            char *end;
            p->timeout_ms = strtol(v, &end, 10);
            if (*end || p->timeout_ms < 1 || p->timeout_ms > 600000) return -1;
            i++;
        } else if (!strcmp(a, "--token")) p->token = v, i++;
        else if (!strcmp(a, "--name")) p->name = v, i++;
        else if (!strcmp(a, "--cacert")) p->cacert = v, i++;
        else if (!strcmp(a, "--readyz-url")) p->readyz_url = v, i++;
        else if (a[0] == '-') return -1;
        else if (!p->url) p->url = a;
        else return -1;
    }
    if (!p->url || !p->name[0] || strspn(p->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
                                      strlen(p->name))
        return -1;
    return 0;
}

static void probe_print(probe_t *p, int failed)
{
    json_t *steps = json_object();
    for (int i = 0; i < STEPS; i++)
        if (p->done[i]) json_object_set_new(steps, probe_step_names[i], json_real((double)(long)(p->ms[i] * 100) / 100));
    json_t *o = json_pack("{s:b, s:s, s:s, s:o}", "ok", failed < 0, "url", p->url, "room", p->room, "steps_ms", steps);
    if (failed >= 0) {
        json_object_set_new(o, "failed", json_string(probe_step_names[failed]));
        json_object_set_new(o, "error", json_string(p->err));
    }
    if (p->readyz) json_object_set_new(o, "readyz", json_string(p->readyz));
    if (p->readyz_status) json_object_set_new(o, "readyz_status", json_integer(p->readyz_status));
    json_object_set_new(o, "total_ms", json_integer((json_int_t)(probe_now_ms() - p->start_ms)));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    if (s) printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(o);
}

int probe_main(int argc, char **argv)
{
    probe_t p = {.fd = -1};
    buf_init(&p.in);
    if (probe_args(&p, argc, argv) < 0) return probe_usage();
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    unsigned char r[12];
    char hex[25];
    RAND_bytes(r, sizeof r);
    for (int i = 0; i < 12; i++) snprintf(hex + 2 * i, 3, "%02x", r[i]);
    snprintf(p.room, sizeof p.room, "probe-%.12s", hex);
    snprintf(p.nonce, sizeof p.nonce, "%s", hex);
    p.start_ms = probe_now_ms();
    p.deadline_ms = p.start_ms + (uint64_t)p.timeout_ms;
    if (probe_url_parse(&p) < 0) {
        fprintf(stderr, "chatgw probe: %s\n", p.err);
        buf_free(&p.in);
        return probe_usage();
    }
    signal(SIGALRM, probe_on_alarm);
    alarm((unsigned)(p.timeout_ms / 1000) + 2);

    int failed = -1;
    for (int s = 0; s < STEPS && failed < 0; s++) {
        if (s == STEP_TLS && !p.tls) continue;
        if (s == STEP_READYZ && p.no_readyz) continue;
        probe_cur_step = s;
        double t0 = probe_now_msf();
        int rc = s == STEP_CONNECT ? probe_connect(&p)
               : s == STEP_TLS     ? probe_tls(&p)
               : s == STEP_UPGRADE ? probe_upgrade(&p)
               : s == STEP_JOIN    ? probe_welcome_and_join(&p)
               : s == STEP_ECHO    ? probe_echo(&p)
                                   : probe_readyz(&p);
        if (rc < 0) {
            failed = s;
            break;
        }
        p.ms[s] = probe_now_msf() - t0;
        p.done[s] = 1;
        if (s == STEP_ECHO) {   /* a polite close; the answer is not awaited */
            uint8_t bye[2] = {WS_CLOSE_NORMAL >> 8, WS_CLOSE_NORMAL & 0xff};
            probe_send_frame(&p, WS_OP_CLOSE, (const char *)bye, 2);
            p.err[0] = '\0';
        }
    }
    alarm(0);
    probe_print(&p, failed);
    if (failed >= 0) fprintf(stderr, "chatgw probe: %s failed: %s\n", probe_step_names[failed], p.err);
    probe_close(&p);
    curl_global_cleanup();
    return failed < 0 ? 0 : PROBE_EXIT_BASE + failed;
}
