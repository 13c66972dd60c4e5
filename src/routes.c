/* routes: the plain-HTTP router and the WebSocket path choice; see routes.h.
 * Probes are cheap and allocation-light: the kubelet calls them every few seconds. */
#include "routes.h"

#include <string.h>

#include <jansson.h>

#include "echo.h"
#include "ws.h"

static int path_is(const http_request_t *req, const char *path) { return !strcmp(req->path, path); }

const server_endpoint_t *routes_ws_endpoint(gw_t *gw, const http_request_t *req, int roles)
{
    if (!(roles & ROUTE_PUBLIC)) return NULL;
    if (path_is(req, "/echo")) return gw->cfg.echo ? &echo_endpoint : NULL;
    return NULL;
}

static void respond_json(buf_t *out, int status, json_t *body, int keep_alive)
{
    char *text = json_dumps(body, JSON_COMPACT);
    http_response_write(out, status, "application/json", NULL, text, text ? strlen(text) : 0, keep_alive);
    free(text);
    json_decref(body);
}

static void route_readyz(gw_t *gw, buf_t *out, int keep_alive)
{
    int ready = !gw->draining;
    json_t *checks = json_pack("{s:s}", "listener", gw->draining ? "draining" : "ok");
    json_t *body = json_pack("{s:s, s:o, s:s, s:I, s:I}", "status", gw->draining ? "draining" : ready ? "ready" : "not_ready",
                             "checks", checks, "version", CHATGW_VERSION,
                             "websockets", (json_int_t)server_websockets_open(gw),
                             "uptime_s", (json_int_t)((gw_now_ms(gw) - gw->started_ms) / 1000));
    respond_json(out, ready ? 200 : 503, body, keep_alive);
}

static void route_metrics(gw_t *gw, buf_t *out, int keep_alive)
{
    buf_t text;
    buf_init(&text);
    metrics_render(&gw->metrics, CHATGW_VERSION, &text);
    http_response_write(out, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text.data, text.len, keep_alive);
    buf_free(&text);
}

void routes_handle(gw_t *gw, const http_request_t *req, int roles, int keep_alive, buf_t *out)
{
    int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    const char *probe = NULL;
    if ((roles & ROUTE_PUBLIC) || (roles & ROUTE_ADMIN)) {
        if (path_is(req, "/healthz")) probe = "healthz";
        else if (path_is(req, "/readyz")) probe = "readyz";
    }
    if ((roles & ROUTE_ADMIN) && path_is(req, "/metrics")) probe = "metrics";
    if (probe && !get) {
        http_response_write(out, 405, "application/json", "Allow: GET, HEAD\r\n",
                            "{\"error\":\"method_not_allowed\",\"message\":\"use GET\"}", 52, keep_alive);
        return;
    }
    if (probe && !strcmp(probe, "healthz")) {
        http_response_write(out, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15, keep_alive);
        return;
    }
    if (probe && !strcmp(probe, "readyz")) {
        route_readyz(gw, out, keep_alive);
        return;
    }
    if (probe) {
        route_metrics(gw, out, keep_alive);
        return;
    }
    http_response_error(out, 404, "not_found", "no such route", keep_alive);
}
