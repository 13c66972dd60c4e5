/* Unit tests for static.c: loading a web directory (limits, hidden files, missing directory),
 * content types, ETag and If-None-Match 304, gzip by Accept-Encoding (checked by inflating),
 * HEAD, the SPA fallback, path traversal refusals, the security headers, and /api/config.
 * Each test builds its own directory under /tmp and parses real request bytes with http.c. */
#define _GNU_SOURCE             /* memmem */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>
#include <zlib.h>

#include "base/config.h"
#include "http/http.h"
#include "http/static.h"

#define INDEX_HTML "<!doctype html><html><head><title>chat</title></head><body>" \
                   "<main id=app>the app the app the app the app the app the app the app</main></body></html>\n"
#define APP_JS "export const x = 1; export const y = 'the same words again and again and again';\n"

typedef struct {
    char dir[64];
} fixture_t;

static void write_file(const char *dir, const char *rel, const char *text, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void make_dir(const char *dir, const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    assert_int_equal(mkdir(path, 0755), 0);
}

static void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/chatgw-static-XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    write_file(fx->dir, "index.html", INDEX_HTML, strlen(INDEX_HTML));
    write_file(fx->dir, "app.js", APP_JS, strlen(APP_JS));
    write_file(fx->dir, "tiny.css", "a{}", 3);
    write_file(fx->dir, "logo.png", "\x89PNG\r\n\x1a\n", 8);
    write_file(fx->dir, "noext", "x", 1);
    write_file(fx->dir, ".env", "SECRET=1", 8);
    make_dir(fx->dir, ".git");
    write_file(fx->dir, ".git/config", "[core]", 6);
    make_dir(fx->dir, "docs");
    write_file(fx->dir, "docs/index.html", "<p>docs</p>", 11);
    write_file(fx->dir, "docs/a.svg", "<svg/>", 6);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    remove_tree(fx->dir);
    free(fx);
    return 0;
}

/* ---- helpers ---- */

typedef struct {
    int status;
    char head[4096];               /* the header block, NUL-terminated */
    char *body;                    /* owned */
    size_t body_len;
} resp_t;

/* Parses raw request bytes into p (must be one complete request). */
static void parse_req(http_parser_t *p, const char *raw)
{
    size_t used = 0;
    http_parser_init(p, 16384, 1024);
    assert_int_equal(http_parser_feed(p, raw, strlen(raw), &used), HTTP_PARSE_DONE);
}

static void resp_split(const buf_t *out, resp_t *r)
{
    memset(r, 0, sizeof *r);
    const char *end = memmem(out->data, out->len, "\r\n\r\n", 4);
    assert_non_null(end);
    size_t hl = (size_t)(end - out->data);
    assert_true(hl < sizeof r->head);
    memcpy(r->head, out->data, hl);
    r->head[hl] = '\0';
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1);
    r->body_len = out->len - hl - 4;
    r->body = malloc(r->body_len + 1);
    memcpy(r->body, end + 4, r->body_len);
    r->body[r->body_len] = '\0';
}

/* The value of header name in r (case-insensitive), copied into a static buffer, or NULL. */
static const char *resp_header(const resp_t *r, const char *name)
{
    static char val[2048];
    size_t n = strlen(name);
    for (const char *line = strstr(r->head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *s = line + 2;
        if (!strncasecmp(s, name, n) && s[n] == ':') {
            s += n + 1;
            while (*s == ' ') s++;
            const char *e = strstr(s, "\r\n");
            size_t l = e ? (size_t)(e - s) : strlen(s);
            if (l >= sizeof val) l = sizeof val - 1;
            memcpy(val, s, l);
            val[l] = '\0';
            return val;
        }
    }
    return NULL;
}

/* Serves raw from site; returns 1/0 as static_site_serve and fills r when 1. */
static int serve(const static_site_t *site, const char *raw, resp_t *r)
{
    http_parser_t p;
    parse_req(&p, raw);
    buf_t out;
    buf_init(&out);
    int handled = static_site_serve(site, &p.req, 1, &out);
    if (handled) resp_split(&out, r);
    else assert_int_equal(out.len, 0);
    buf_free(&out);
    http_parser_free(&p);
    return handled;
}

static void resp_free(resp_t *r) { free(r->body); r->body = NULL; }

static static_site_t *load(fixture_t *fx)
{
    static_site_t *site = NULL;
    assert_int_equal(static_site_load(fx->dir, &site), 0);
    assert_non_null(site);
    return site;
}

static char *gunzip(const char *in, size_t len, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    size_t cap = 65536;
    char *out = malloc(cap);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    *outlen = z.total_out;
    inflateEnd(&z);
    return out;
}

#define GET(path, extra) "GET " path " HTTP/1.1\r\nHost: chat.example:8888\r\n" extra "\r\n"

/* ---- tests ---- */

static void test_load_counts_and_skips_hidden(void **state)
{
    static_site_t *site = load(*state);
    /* index.html app.js tiny.css logo.png noext docs/index.html docs/a.svg; not .env, .git/ */
    assert_int_equal(static_site_files(site), 7);
    assert_true(static_site_bytes(site) > strlen(INDEX_HTML));
    resp_t r;
    assert_false(serve(site, GET("/.env", ""), &r));
    assert_false(serve(site, GET("/.git/config", ""), &r));
    static_site_free(site);
}

static void test_missing_dir(void **state)
{
    static_site_t *site = (static_site_t *)1;
    assert_int_equal(static_site_load("/nonexistent/chatgw-web-dir", &site), UV_ENOENT);
    assert_null(site);
    fixture_t *fx = *state;
    char file[128];
    snprintf(file, sizeof file, "%s/app.js", fx->dir);
    assert_int_equal(static_site_load(file, &site), UV_ENOTDIR);
    assert_null(site);
    resp_t r;
    assert_false(serve(NULL, GET("/", ""), &r));   /* no site: the router answers 404 */
    static_site_free(NULL);
}

static void test_content_types(void **state)
{
    static_site_t *site = load(*state);
    static const struct {
        const char *raw, *ctype;
    } cases[] = {
        {GET("/", ""), "text/html; charset=utf-8"},
        {GET("/index.html", ""), "text/html; charset=utf-8"},
        {GET("/app.js", ""), "text/javascript; charset=utf-8"},
        {GET("/tiny.css", ""), "text/css; charset=utf-8"},
        {GET("/logo.png", ""), "image/png"},
        {GET("/noext", ""), "application/octet-stream"},
        {GET("/docs/", ""), "text/html; charset=utf-8"},
        {GET("/docs/a.svg", ""), "image/svg+xml"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        resp_t r;
        assert_true(serve(site, cases[i].raw, &r));
        assert_int_equal(r.status, 200);
        assert_string_equal(resp_header(&r, "Content-Type"), cases[i].ctype);
        assert_null(resp_header(&r, "Content-Encoding"));
        resp_free(&r);
    }
    resp_t r;
    assert_true(serve(site, GET("/app.js", ""), &r));
    assert_int_equal(r.body_len, strlen(APP_JS));
    assert_memory_equal(r.body, APP_JS, r.body_len);
    resp_free(&r);
    static_site_free(site);
}

static void test_security_headers(void **state)
{
    static_site_t *site = load(*state);
    resp_t r;
    assert_true(serve(site, GET("/", ""), &r));
    assert_string_equal(resp_header(&r, "X-Content-Type-Options"), "nosniff");
    const char *csp = resp_header(&r, "Content-Security-Policy");
    assert_non_null(csp);
    assert_non_null(strstr(csp, "default-src 'self'"));
    assert_non_null(strstr(csp, "connect-src 'self' ws://chat.example:8888 wss://chat.example:8888;"));
    assert_non_null(strstr(csp, "frame-ancestors 'none'"));
    assert_string_equal(resp_header(&r, "Cache-Control"), "no-cache");
    resp_free(&r);
    /* a Host that could smuggle sources into the policy is left out of it */
    assert_true(serve(site, "GET / HTTP/1.1\r\nHost: evil.example; script-src *\r\n\r\n", &r));
    csp = resp_header(&r, "Content-Security-Policy");
    assert_null(strstr(csp, "evil"));
    assert_non_null(strstr(csp, "connect-src 'self';"));
    resp_free(&r);
    static_site_free(site);
}

static void test_etag_304(void **state)
{
    static_site_t *site = load(*state);
    resp_t r;
    assert_true(serve(site, GET("/app.js", ""), &r));
    char etag[64];
    snprintf(etag, sizeof etag, "%s", resp_header(&r, "ETag"));
    assert_int_equal(strlen(etag), 34);             /* quotes + 32 hex */
    assert_int_equal(etag[0], '"');
    resp_free(&r);

    char raw[512];
    snprintf(raw, sizeof raw, "GET /app.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n", etag);
    assert_true(serve(site, raw, &r));
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    assert_string_equal(resp_header(&r, "ETag"), etag);
    assert_null(resp_header(&r, "Content-Length"));
    resp_free(&r);

    /* weak form, in a list */
    snprintf(raw, sizeof raw, "GET /app.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"nope\", W/%s\r\n\r\n", etag);
    assert_true(serve(site, raw, &r));
    assert_int_equal(r.status, 304);
    resp_free(&r);

    assert_true(serve(site, GET("/app.js", "If-None-Match: *\r\n"), &r));
    assert_int_equal(r.status, 304);
    resp_free(&r);

    assert_true(serve(site, GET("/app.js", "If-None-Match: \"0123\"\r\n"), &r));
    assert_int_equal(r.status, 200);
    resp_free(&r);

    /* another file has another tag; the SPA route shares index.html's */
    assert_true(serve(site, GET("/tiny.css", ""), &r));
    assert_string_not_equal(resp_header(&r, "ETag"), etag);
    resp_free(&r);
    assert_true(serve(site, GET("/index.html", ""), &r));
    snprintf(etag, sizeof etag, "%s", resp_header(&r, "ETag"));
    resp_free(&r);
    assert_true(serve(site, GET("/r/lobby", ""), &r));
    assert_string_equal(resp_header(&r, "ETag"), etag);
    resp_free(&r);
    static_site_free(site);
}

static void test_gzip(void **state)
{
    static_site_t *site = load(*state);
    const char *accepts[] = {"gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.8", "*", "identity, *;q=0.5",
                             "x-gzip"};
    for (size_t i = 0; i < sizeof accepts / sizeof accepts[0]; i++) {
        char raw[512];
        snprintf(raw, sizeof raw, "GET /index.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: %s\r\n\r\n", accepts[i]);
        resp_t r;
        assert_true(serve(site, raw, &r));
        assert_int_equal(r.status, 200);
        assert_string_equal(resp_header(&r, "Content-Encoding"), "gzip");
        assert_string_equal(resp_header(&r, "Vary"), "Accept-Encoding");
        assert_true(r.body_len < strlen(INDEX_HTML));
        assert_int_equal(atoi(resp_header(&r, "Content-Length")), (int)r.body_len);
        size_t n;
        char *plain = gunzip(r.body, r.body_len, &n);
        assert_int_equal(n, strlen(INDEX_HTML));
        assert_memory_equal(plain, INDEX_HTML, n);
        free(plain);
        const char *etag = resp_header(&r, "ETag");
        assert_non_null(strstr(etag, "-gz\""));
        resp_free(&r);
    }
    const char *refuse[] = {"identity", "gzip;q=0", "br", "gzip; q=0, *", "*;q=0", ""};
    for (size_t i = 0; i < sizeof refuse / sizeof refuse[0]; i++) {
        char raw[512];
        snprintf(raw, sizeof raw, "GET /index.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: %s\r\n\r\n", refuse[i]);
        resp_t r;
        assert_true(serve(site, raw, &r));
        assert_null(resp_header(&r, "Content-Encoding"));
        assert_int_equal(r.body_len, strlen(INDEX_HTML));
        assert_string_equal(resp_header(&r, "Vary"), "Accept-Encoding");
        resp_free(&r);
    }
    /* a file that does not shrink and a binary type are never gzipped, and never vary */
    resp_t r;
    assert_true(serve(site, GET("/tiny.css", "Accept-Encoding: gzip\r\n"), &r));
    assert_null(resp_header(&r, "Content-Encoding"));
    assert_null(resp_header(&r, "Vary"));
    resp_free(&r);
    assert_true(serve(site, GET("/logo.png", "Accept-Encoding: gzip\r\n"), &r));
    assert_null(resp_header(&r, "Content-Encoding"));
    resp_free(&r);
    /* the gzip tag revalidates too */
    assert_true(serve(site, GET("/index.html", "Accept-Encoding: gzip\r\n"), &r));
    char raw[512];
    snprintf(raw, sizeof raw, "GET /index.html HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nIf-None-Match: %s\r\n\r\n",
             resp_header(&r, "ETag"));
    resp_free(&r);
    assert_true(serve(site, raw, &r));
    assert_int_equal(r.status, 304);
    resp_free(&r);
    static_site_free(site);
}

static void test_head(void **state)
{
    static_site_t *site = load(*state);
    resp_t r;
    assert_true(serve(site, "HEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n", &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_int_equal(atoi(resp_header(&r, "Content-Length")), (int)strlen(APP_JS));
    resp_free(&r);
    assert_true(serve(site, "POST /app.js HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &r));
    assert_int_equal(r.status, 405);
    assert_string_equal(resp_header(&r, "Allow"), "GET, HEAD");
    resp_free(&r);
    static_site_free(site);
}

static void test_spa_fallback(void **state)
{
    static_site_t *site = load(*state);
    const char *spa[] = {GET("/r/lobby", ""), GET("/r/voice-1", ""), GET("/r/a%20b", ""),
                         GET("/lobby", "Accept: text/html,application/xhtml+xml\r\n")};
    for (size_t i = 0; i < sizeof spa / sizeof spa[0]; i++) {
        resp_t r;
        assert_true(serve(site, spa[i], &r));
        assert_int_equal(r.status, 200);
        assert_string_equal(resp_header(&r, "Content-Type"), "text/html; charset=utf-8");
        assert_int_equal(r.body_len, strlen(INDEX_HTML));
        resp_free(&r);
    }
    /* not the app's: the router's 404 answers */
    const char *not[] = {GET("/r/", ""), GET("/lobby", ""), GET("/lobby", "Accept: application/json\r\n"),
                         GET("/favicon.ico", "Accept: text/html\r\n"), GET("/a/b", "Accept: text/html\r\n"),
                         GET("/nope.js", "")};
    for (size_t i = 0; i < sizeof not / sizeof not[0]; i++) {
        resp_t r;
        assert_false(serve(site, not[i], &r));
    }
    static_site_free(site);
}

static void test_traversal(void **state)
{
    static_site_t *site = load(*state);
    const char *bad[] = {
        GET("/../etc/passwd", ""),          GET("/docs/../index.html", ""), GET("/%2e%2e/etc/passwd", ""),
        GET("/docs/%2E%2E/app.js", ""),     GET("/./app.js", ""),           GET("/docs/..%2findex.html", ""),
        GET("/r/../../etc/passwd", ""),     GET("/r/..", ""),               GET("/app.js%5c..%5capp.js", ""),
        GET("//etc/passwd", ""),            GET("/.env", "Accept: text/html\r\n"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_parser_t p;
        size_t used = 0;
        http_parser_init(&p, 16384, 1024);
        int rc = http_parser_feed(&p, bad[i], strlen(bad[i]), &used);
        if (rc == HTTP_PARSE_DONE) {
            buf_t out;
            buf_init(&out);
            assert_int_equal(static_site_serve(site, &p.req, 1, &out), 0);
            assert_int_equal(out.len, 0);
            buf_free(&out);
        }
        http_parser_free(&p);
    }
    static_site_free(site);
}

static void test_limits_and_unreadable(void **state)
{
    fixture_t *fx = *state;
    /* deeper than STATIC_MAX_DEPTH: skipped with a warning, the rest still loads */
    char rel[256] = "";
    for (int i = 0; i < STATIC_MAX_DEPTH + 1; i++) {
        strcat(rel, i ? "/d" : "d");
        make_dir(fx->dir, rel);
    }
    strcat(rel, "/deep.txt");
    write_file(fx->dir, rel, "deep", 4);
    write_file(fx->dir, "d/shallow.txt", "ok", 2);
    static_site_t *site = load(fx);
    resp_t r;
    assert_true(serve(site, GET("/d/shallow.txt", ""), &r));
    assert_string_equal(r.body, "ok");
    resp_free(&r);
    assert_int_equal(static_site_files(site), 8);
    static_site_free(site);
    /* an empty directory is a site with no files */
    char empty[128];
    snprintf(empty, sizeof empty, "%s/d/d", fx->dir);
    remove_tree(empty);
    snprintf(empty, sizeof empty, "%s/d/e", fx->dir);
    assert_int_equal(mkdir(empty, 0755), 0);
    assert_int_equal(static_site_load(empty, &site), 0);
    assert_int_equal(static_site_files(site), 0);
    assert_false(serve(site, GET("/", ""), &r));
    static_site_free(site);
}

static void test_api_config(void **state)
{
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.ice_servers = "[{\"urls\":\"turn:turn.example:3478\",\"username\":\"u\",\"credential\":\"p\"}]";
    cfg.max_text_bytes = 4096;
    http_parser_t p;
    buf_t out;
    resp_t r;

    parse_req(&p, GET("/api/config", ""));
    buf_init(&out);
    assert_true(static_config_serve(&cfg, &p.req, 1, &out));
    resp_split(&out, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(resp_header(&r, "Content-Type"), "application/json");
    json_error_t jerr;
    json_t *body = json_loads(r.body, 0, &jerr);
    assert_non_null(body);
    json_t *ice = json_object_get(body, "ice_servers");
    assert_true(json_is_array(ice));
    assert_int_equal(json_array_size(ice), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ice, 0), "urls")), "turn:turn.example:3478");
    assert_int_equal(json_integer_value(json_object_get(body, "max_text_bytes")), 4096);
    json_decref(body);
    resp_free(&r);
    buf_free(&out);
    http_parser_free(&p);

    /* the default [] */
    cfg.ice_servers = "[]";
    parse_req(&p, GET("/api/config", ""));
    buf_init(&out);
    assert_true(static_config_serve(&cfg, &p.req, 1, &out));
    resp_split(&out, &r);
    assert_non_null(strstr(r.body, "\"ice_servers\":[]"));
    resp_free(&r);
    buf_free(&out);
    http_parser_free(&p);

    /* a broken value is a logged 500, never a silent empty list */
    cfg.ice_servers = "{\"urls\":1}";
    parse_req(&p, GET("/api/config", ""));
    buf_init(&out);
    assert_true(static_config_serve(&cfg, &p.req, 1, &out));
    resp_split(&out, &r);
    assert_int_equal(r.status, 500);
    resp_free(&r);
    buf_free(&out);
    http_parser_free(&p);

    /* other methods, other paths */
    parse_req(&p, "POST /api/config HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    buf_init(&out);
    assert_true(static_config_serve(&cfg, &p.req, 1, &out));
    resp_split(&out, &r);
    assert_int_equal(r.status, 405);
    resp_free(&r);
    buf_free(&out);
    http_parser_free(&p);

    parse_req(&p, GET("/api/configs", ""));
    buf_init(&out);
    assert_false(static_config_serve(&cfg, &p.req, 1, &out));
    assert_int_equal(out.len, 0);
    buf_free(&out);
    http_parser_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_counts_and_skips_hidden, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_content_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_security_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_etag_304, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gzip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spa_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_traversal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits_and_unreadable, setup, teardown),
        cmocka_unit_test(test_api_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
