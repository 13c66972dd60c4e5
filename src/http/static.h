/* static: the browser client in web_dir, loaded into memory once and served from there, plus
 * GET /api/config (the ICE servers the client hands to RTCPeerConnection).
 *
 * A site is every regular file under one directory (dot-names skipped, bounded in count, size
 * and depth), each with its content type, a strong ETag (sha256) and, when smaller, a gzip copy
 * made once with zlib. Answers carry Cache-Control: no-cache (revalidate with If-None-Match:
 * 304), Vary: Accept-Encoding, X-Content-Type-Options: nosniff and a Content-Security-Policy of
 * 'self' plus the page's own ws:// and wss:// origin. /r/<room> (and, for a browser navigation,
 * a bare /<room>) serves index.html: the app routes on the client. A request path is only ever
 * looked up among the loaded names, so no path can reach a file outside web_dir; paths with
 * "..", "." or dot-named segments or a backslash are refused before the lookup anyway.
 * It never touches a socket and never reads the disk after the load. */
#ifndef CHATGW_STATIC_H
#define CHATGW_STATIC_H

#include <stddef.h>

#include "base/buf.h"
#include "base/config.h"
#include "base/gw.h"
#include "http/http.h"

/* Bounds on the web client kept in memory. Not config keys: they only stop a wrong web_dir (a
 * home directory) from filling memory; the bundled client is far below each. */
#define STATIC_MAX_FILES 1024               /* files kept; more are skipped with a warning */
#define STATIC_MAX_FILE_BYTES (8u << 20)    /* a larger file is skipped with a warning */
#define STATIC_MAX_TOTAL_BYTES (64u << 20)  /* bytes kept over all files */
#define STATIC_MAX_DEPTH 8                  /* directory levels below web_dir */

typedef struct static_site_s static_site_t;

/* Loads every file under dir into a new site (*out, owned by the caller: static_site_free).
 * Files that cannot be read or break a limit are skipped, each with a warning in the log.
 * Returns 0, or a negative libuv code (base/err.h) with *out = NULL: UV_ENOENT or UV_ENOTDIR
 * when dir is missing or not a directory, UV_EACCES (or another open error) when it cannot be
 * listed, UV_EIO when hashing or compressing failed. */
int static_site_load(const char *dir, static_site_t **out);
void static_site_free(static_site_t *site);     /* NULL is fine */
size_t static_site_files(const static_site_t *site);
size_t static_site_bytes(const static_site_t *site);   /* uncompressed bytes kept */

/* Answers req from site when it names a loaded file, a directory's index.html or an SPA route
 * (GET/HEAD; another method on such a path gets 405). Writes a whole response to out and
 * returns 1; returns 0 and writes nothing when the path is not the site's (the caller goes on,
 * usually to its 404). site may be NULL (web_dir missing): always 0. */
int static_site_serve(const static_site_t *site, const http_request_t *req, int keep_alive, buf_t *out);

/* GET /api/config: {"ice_servers": <the ice_servers key>, "max_text_bytes": n, "voice": "sfu"
 * with janus_url (voice_join through the media server) or "mesh" (signal between browsers)}. Returns 1 with
 * a response in out when req->path is /api/config (405 for other methods; 500, logged, if
 * ice_servers is not a JSON array), else 0. */
int static_config_serve(const config_t *cfg, const http_request_t *req, int keep_alive, buf_t *out);

/* Loads web_dir at start and logs the outcome; NULL (logged) when it cannot be loaded, and then
 * / answers the router's 404. */
static_site_t *static_site_boot(const char *dir);
/* The router's hook: static_site_serve over gw->web. */
int static_route_handle(gw_t *gw, const http_request_t *req, int keep_alive, buf_t *out);

#endif
