/* static: the web client served from memory, and /api/config; see static.h.
 *
 * Load: a depth-first walk of web_dir reads each regular file once, hashes it (sha256 -> ETag)
 * and gzips it when that saves bytes. Serve: one map lookup, then the headers and the stored
 * bytes. Nothing here may touch the disk after the load or write to a socket. */
#include "http/static.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <uv.h>
#include <zlib.h>

#include "base/hex.h"
#include "base/log.h"
#include "base/map.h"

typedef struct {
    const char *ctype;
    char *body;
    size_t len;
    char *gz;                      /* gzip copy, NULL when it would not be smaller */
    size_t gz_len;
    char etag[40];                 /* "<32 hex>" with the quotes */
    char etag_gz[44];              /* "<32 hex>-gz" */
} static_file_t;

struct static_site_s {
    map_t files;                   /* "/path" -> static_file_t (owned) */
    size_t nfiles, bytes;
};

/* ---- content types ---- */

static const struct {
    const char *ext, *ctype;
    int compress;
} static_types[] = {
    {"html", "text/html; charset=utf-8", 1},
    {"htm", "text/html; charset=utf-8", 1},
    {"css", "text/css; charset=utf-8", 1},
    {"js", "text/javascript; charset=utf-8", 1},
    {"mjs", "text/javascript; charset=utf-8", 1},
    {"json", "application/json", 1},
    {"map", "application/json", 1},
    {"webmanifest", "application/manifest+json", 1},
    {"svg", "image/svg+xml", 1},
    {"txt", "text/plain; charset=utf-8", 1},
    {"md", "text/markdown; charset=utf-8", 1},
    {"xml", "application/xml", 1},
    {"wasm", "application/wasm", 1},
    {"ico", "image/x-icon", 1},
    {"png", "image/png", 0},
    {"jpg", "image/jpeg", 0},
    {"jpeg", "image/jpeg", 0},
    {"gif", "image/gif", 0},
    {"webp", "image/webp", 0},
    {"avif", "image/avif", 0},
    {"woff2", "font/woff2", 0},
    {"woff", "font/woff", 0},
    {"mp3", "audio/mpeg", 0},
    {"ogg", "audio/ogg", 0},
    {"wav", "audio/wav", 1},
};

static const char *static_type_of(const char *name, int *compress)
{
    const char *dot = strrchr(name, '.');
    const char *slash = strrchr(name, '/');
    *compress = 0;
    if (!dot || (slash && dot < slash)) return "application/octet-stream";
    for (size_t i = 0; i < sizeof static_types / sizeof static_types[0]; i++)
        if (!strcasecmp(dot + 1, static_types[i].ext)) {
            *compress = static_types[i].compress;
            return static_types[i].ctype;
        }
    return "application/octet-stream";
}

/* ---- load ---- */

static void static_file_free(static_file_t *f)
{
    if (!f) return;
    free(f->body);
    free(f->gz);
    free(f);
}

/* A strong validator: the first 16 bytes of the sha256 of the content, in hex. */
static int static_etag_make(static_file_t *f)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(f->body, f->len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 16) return UV_EIO;
    char hex[33];
    hex_encode(md, 16, hex);
    snprintf(f->etag, sizeof f->etag, "\"%s\"", hex);
    snprintf(f->etag_gz, sizeof f->etag_gz, "\"%s-gz\"", hex);
    return 0;
}

/* Sets f->gz to a gzip copy of the body when it is smaller. 0, or UV_EIO on a zlib error. */
static int static_gzip_make(static_file_t *f)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* 15 window bits + 16: a gzip header and trailer instead of zlib's */
    if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return UV_EIO;
    uLong cap = deflateBound(&z, (uLong)f->len);
    char *gz = xmalloc(cap ? cap : 1);
    z.next_in = (Bytef *)f->body;
    z.avail_in = (uInt)f->len;
    z.next_out = (Bytef *)gz;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    size_t n = z.total_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(gz);
        return UV_EIO;
    }
    if (n >= f->len) {
        free(gz);                  /* not worth it: serve the identity bytes */
        return 0;
    }
    f->gz = gz;
    f->gz_len = n;
    return 0;
}

/* Reads a whole file of size bytes into a new buffer. 0 or a negative uv error. */
static int static_file_read(const char *full, size_t size, char **out)
{
    FILE *fp = fopen(full, "rb");
    if (!fp) return uv_translate_sys_error(errno);
    char *data = xmalloc(size ? size : 1);
    size_t got = size ? fread(data, 1, size, fp) : 0;
    int err = ferror(fp);
    int extra = fgetc(fp) != EOF;  /* grew since stat: refuse a torn read */
    fclose(fp);
    if (got != size || err || extra) {
        free(data);
        return UV_EIO;
    }
    *out = data;
    return 0;
}

/* Adds one file under its URL path. A file that breaks a limit or cannot be read is skipped
 * with a warning (returns 0); a hashing or zlib failure returns UV_EIO and stops the load. */
static int static_file_add(static_site_t *site, const char *url, const char *full, size_t size)
{
    if (site->nfiles >= STATIC_MAX_FILES) {
        log_warn("web file skipped: too many files", "{s:s, s:i}", "path", full, "max", STATIC_MAX_FILES);
        return 0;
    }
    if (size > STATIC_MAX_FILE_BYTES || site->bytes + size > STATIC_MAX_TOTAL_BYTES) {
        log_warn("web file skipped: too large", "{s:s, s:I}", "path", full, "bytes", (json_int_t)size);
        return 0;
    }
    char *body = NULL;
    int rc = static_file_read(full, size, &body);
    if (rc < 0) {
        log_warn("web file skipped: cannot read it", "{s:s, s:s}", "path", full, "error", uv_strerror(rc));
        return 0;
    }
    static_file_t *f = xcalloc(1, sizeof *f);
    f->body = body;
    f->len = size;
    int compress;
    f->ctype = static_type_of(url, &compress);
    if ((rc = static_etag_make(f)) < 0 || (compress && (rc = static_gzip_make(f)) < 0)) {
        log_error("web file: hashing or compressing failed", "{s:s}", "path", full);
        static_file_free(f);
        return rc;
    }
    map_set(&site->files, url, f);
    site->nfiles++;
    site->bytes += size;
    return 0;
}

/* Walks full (whose URL prefix is url, "" for the root). 0 or a negative uv error. */
static int static_dir_walk(static_site_t *site, const char *full, const char *url, int depth)
{
    DIR *d = opendir(full);
    if (!d) {
        int rc = uv_translate_sys_error(errno);
        if (depth == 0) return rc;
        log_warn("web directory skipped: cannot list it", "{s:s, s:s}", "path", full, "error", uv_strerror(rc));
        return 0;
    }
    int rc = 0;
    buf_t fpath, upath;
    buf_init(&fpath);
    buf_init(&upath);
    struct dirent *e;
    while (rc == 0 && (errno = 0, e = readdir(d))) {
        if (e->d_name[0] == '.') continue;      /* ., .., and hidden files (.git, .env) */
        buf_reset(&fpath);
        buf_reset(&upath);
        buf_printf(&fpath, "%s/%s", full, e->d_name);
        buf_printf(&upath, "%s/%s", url, e->d_name);
        buf_cstr(&fpath);
        buf_cstr(&upath);
        struct stat st;
        if (stat(fpath.data, &st) < 0) {
            log_warn("web file skipped: cannot stat it", "{s:s, s:s}", "path", fpath.data, "error",
                     uv_strerror(uv_translate_sys_error(errno)));
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (depth + 1 >= STATIC_MAX_DEPTH)
                log_warn("web directory skipped: too deep", "{s:s, s:i}", "path", fpath.data, "max", STATIC_MAX_DEPTH);
            else
                rc = static_dir_walk(site, fpath.data, upath.data, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            rc = static_file_add(site, upath.data, fpath.data, (size_t)st.st_size);
        }
    }
    if (rc == 0 && errno) {
        log_warn("web directory listing cut short", "{s:s, s:s}", "path", full, "error",
                 uv_strerror(uv_translate_sys_error(errno)));
    }
    closedir(d);
    buf_free(&fpath);
    buf_free(&upath);
    return rc;
}

int static_site_load(const char *dir, static_site_t **out)
{
    *out = NULL;
    struct stat st;
    if (!dir || !dir[0]) return UV_ENOENT;
    if (stat(dir, &st) < 0) return uv_translate_sys_error(errno);
    if (!S_ISDIR(st.st_mode)) return UV_ENOTDIR;
    static_site_t *site = xcalloc(1, sizeof *site);
    map_init(&site->files);
    /* strip trailing slashes so that URLs come out as "/a/b", never "//a/b" */
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    char *root = xstrndup(dir, n);
    int rc = static_dir_walk(site, root, "", 0);
    free(root);
    if (rc < 0) {
        static_site_free(site);
        return rc;
    }
    *out = site;
    return 0;
}

void static_site_free(static_site_t *site)
{
    if (!site) return;
    size_t i;
    for (map_entry_t *e = map_first(&site->files, &i); e; e = map_next(&site->files, e, &i))
        static_file_free(e->value);
    map_free(&site->files);
    free(site);
}

size_t static_site_files(const static_site_t *site) { return site ? site->nfiles : 0; }
size_t static_site_bytes(const static_site_t *site) { return site ? site->bytes : 0; }

/* ---- serve ---- */

/* 1 when a path must never be looked up: a backslash, or a segment that is empty-dotted
 * (".", "..") or hidden (".git"). The lookup is exact anyway; this keeps intent obvious. */
static int static_path_unsafe(const char *path)
{
    if (path[0] != '/' || strchr(path, '\\')) return 1;
    for (const char *p = path; (p = strchr(p, '/')); p++)
        if (p[1] == '.') return 1;
    return 0;
}

/* The q value of one Accept-Encoding entry whose parameters start at params (its first ';',
 * or NULL) and end at end; 1 when it has none. */
static double static_qvalue(const char *params, const char *end)
{
    const char *p = params;
    while (p && p < end) {
        p++;                                        /* past ';' */
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (end - p >= 2 && (*p == 'q' || *p == 'Q') && p[1] == '=') return strtod(p + 2, NULL);
        p = memchr(p, ';', (size_t)(end - p));
    }
    return 1.0;
}

/* 1 when the Accept-Encoding value admits gzip: gzip (or x-gzip) with q > 0, or else "*"
 * with q > 0. */
static int static_accepts_gzip(const char *ae)
{
    double gzip_q = -1, star_q = -1;
    const char *p = ae;
    while (p && *p) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *tok_end = p;
        while (tok_end < end && *tok_end != ';' && *tok_end != ' ' && *tok_end != '\t') tok_end++;
        size_t tl = (size_t)(tok_end - p);
        const char *params = memchr(p, ';', (size_t)(end - p));
        double q = static_qvalue(params, end);
        if ((tl == 4 && !strncasecmp(p, "gzip", 4)) || (tl == 6 && !strncasecmp(p, "x-gzip", 6))) gzip_q = q;
        else if (tl == 1 && *p == '*') star_q = q;
        p = *end ? end + 1 : end;
    }
    return gzip_q >= 0 ? gzip_q > 0 : star_q > 0;
}

/* 1 when the If-None-Match list names either representation's ETag (weak comparison), or "*". */
static int static_etag_matches(const char *inm, const static_file_t *f)
{
    const char *p = inm;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *e = end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e - p >= 2 && p[0] == 'W' && p[1] == '/') p += 2;
        size_t n = (size_t)(e - p);
        if ((n == 1 && *p == '*') || (n == strlen(f->etag) && !memcmp(p, f->etag, n)) ||
            (n == strlen(f->etag_gz) && !memcmp(p, f->etag_gz, n)))
            return 1;
        p = end;
    }
    return 0;
}

/* 1 when host is a plain host[:port] (letters, digits, '.', '-', ':', '[', ']'), safe to
 * repeat inside a header. */
static int static_host_ok(const char *host)
{
    size_t n = host ? strlen(host) : 0;
    if (n == 0 || n > 255) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
              c == ':' || c == '[' || c == ']'))
            return 0;
    }
    return 1;
}

/* The security headers of every page: CSP with connect-src 'self' plus the ws:// and wss://
 * origin of the Host the browser used (where the client opens its WebSocket). */
static void static_security_headers(const http_request_t *req, buf_t *hdr)
{
    const char *host = http_request_header(req, "Host");
    buf_append_str(hdr, "Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self'; "
                        "img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self'");
    if (static_host_ok(host)) buf_printf(hdr, " ws://%s wss://%s", host, host);
    buf_append_str(hdr, "; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "Referrer-Policy: same-origin\r\n"
                        "Permissions-Policy: microphone=(self), camera=(), geolocation=()\r\n");
}

static const static_file_t *static_file_get(const static_site_t *site, const char *path)
{
    return map_get(&site->files, path);
}

/* The file for a request path: exact, a directory's index.html, or the SPA's index.html. */
static const static_file_t *static_site_find(const static_site_t *site, const http_request_t *req)
{
    const char *path = req->path;
    if (!path || static_path_unsafe(path)) return NULL;
    const static_file_t *f = static_file_get(site, path);
    if (f) return f;
    size_t n = strlen(path);
    if (path[n - 1] == '/') {
        buf_t b;
        buf_init(&b);
        buf_printf(&b, "%sindex.html", path);
        f = static_file_get(site, buf_cstr(&b));
        buf_free(&b);
        if (f) return f;
    }
    if (!strncmp(path, "/r/", 3) && path[3]) return static_file_get(site, "/index.html");
    /* free4chat's /<room>: a browser navigation (Accept: text/html) to one dotless segment */
    const char *accept = http_request_header(req, "Accept");
    if (n > 1 && !strchr(path + 1, '/') && !strchr(path + 1, '.') && accept && strstr(accept, "text/html"))
        return static_file_get(site, "/index.html");
    return NULL;
}

int static_site_serve(const static_site_t *site, const http_request_t *req, int keep_alive, buf_t *out)
{
    if (!site) return 0;
    const static_file_t *f = static_site_find(site, req);
    if (!f) return 0;
    buf_t hdr;
    buf_init(&hdr);
    static_security_headers(req, &hdr);
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        http_response_method_not_allowed(out, buf_cstr(&hdr), keep_alive);
        buf_free(&hdr);
        return 1;
    }
    const char *ae = http_request_header(req, "Accept-Encoding");
    int gz = f->gz && ae && static_accepts_gzip(ae);
    buf_printf(&hdr, "ETag: %s\r\nCache-Control: no-cache\r\n", gz ? f->etag_gz : f->etag);
    if (f->gz) buf_append_str(&hdr, "Vary: Accept-Encoding\r\n");
    const char *inm = http_request_header(req, "If-None-Match");
    if (inm && static_etag_matches(inm, f)) {
        http_response_write(out, 304, NULL, buf_cstr(&hdr), NULL, 0, keep_alive);
        buf_free(&hdr);
        return 1;
    }
    if (gz) buf_append_str(&hdr, "Content-Encoding: gzip\r\n");
    const char *body = gz ? f->gz : f->body;
    size_t len = gz ? f->gz_len : f->len;
    http_response_write(out, 200, f->ctype, buf_cstr(&hdr), body, len, keep_alive);
    if (req->method == HTTP_HEAD) out->len -= len;   /* same headers, no content */
    buf_free(&hdr);
    return 1;
}

/* ---- /api/config ---- */

int static_config_serve(const config_t *cfg, const http_request_t *req, int keep_alive, buf_t *out)
{
    if (strcmp(req->path, "/api/config")) return 0;
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        http_response_method_not_allowed(out, NULL, keep_alive);
        return 1;
    }
    json_error_t jerr;
    json_t *ice = json_loads(cfg->ice_servers && cfg->ice_servers[0] ? cfg->ice_servers : "[]", 0, &jerr);
    if (!json_is_array(ice)) {
        log_error("ice_servers is not a JSON array", "{s:s}", "error", ice ? "not an array" : jerr.text);
        json_decref(ice);
        http_response_error(out, 500, "config_error", "ice_servers is not a JSON array", keep_alive);
        return 1;
    }
    json_t *body = json_pack("{s:o, s:I, s:s}", "ice_servers", ice, "max_text_bytes", (json_int_t)cfg->max_text_bytes,
                             "voice", cfg->janus_url && cfg->janus_url[0] ? "sfu" : "mesh");
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        log_error("/api/config: cannot encode the answer", NULL);
        http_response_error(out, 500, "internal", "cannot encode the config", keep_alive);
        return 1;
    }
    size_t len = strlen(text);
    http_response_write(out, 200, "application/json", "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
                        text, len, keep_alive);
    if (req->method == HTTP_HEAD) out->len -= len;
    free(text);
    return 1;
}

/* ---- the process's site ---- */

static_site_t *static_site_boot(const char *dir)
{
    static_site_t *site = NULL;
    int rc = static_site_load(dir, &site);
    if (rc < 0)
        log_warn("web client not served: web_dir cannot be loaded", "{s:s, s:s}", "web_dir", dir ? dir : "",
                 "error", uv_strerror(rc));
    else
        log_info("web client loaded", "{s:s, s:I, s:I}", "web_dir", dir, "files", (json_int_t)site->nfiles, "bytes",
                 (json_int_t)site->bytes);
    return site;
}

int static_route_handle(gw_t *gw, const http_request_t *req, int keep_alive, buf_t *out)
{
    return static_site_serve(gw->web, req, keep_alive, out);
}
