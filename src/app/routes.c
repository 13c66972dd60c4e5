/* routes: the plain-HTTP router and the WebSocket path choice; see routes.h.
 * Probes are cheap and allocation-light: the kubelet calls them every few seconds. */
#include "app/routes.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "app/echo.h"
#include "base/err.h"
#include "base/gw_sum.h"
#include "hub/hub.h"
#include "policy/policy.h"
#include "proto/proto.h"
#include "http/static.h"
#include "proto/ws.h"

static int path_is(const http_request_t *req, const char *path) { return !strcmp(req->path, path); }

/* ---- the chat endpoint: the hub behind its HTTP edge ----
 * The upgrade request is parsed here, once, into a hub_connect_t (the client the hub makes
 * keeps what attach needs), and a refusal's GW_E* code becomes a status (http_status_of). */

#define ROUTES_QUERY_KEY_MAX 63    /* longer query keys are left out of conn.query */

/* A parsed request and the storage its strings point into. */
typedef struct {
    hub_connect_t hc;
    char room[PROTO_MAX_ROOM * 2], name[PROTO_MAX_NAME * 4 + 1], since[128];
    policy_pair_t headers[HTTP_MAX_HEADERS + 1];
    policy_pair_t *query;          /* owned: routes_query_pairs */
} routes_connect_t;

/* The room named by the URL: ?room=R, or the single path segment of /R; "" for none. 0, or
 * GW_EINVAL when it is badly encoded, too long or not a room name. */
static int routes_chat_room(const http_request_t *req, char *room, size_t len)
{
    room[0] = '\0';
    int n = http_query_get(req->query, "room", room, len);
    if (n < 0 && n != GW_ENOTFOUND) return GW_EINVAL;
    if (n < 0 && strcmp(req->path, "/ws")) snprintf(room, len, "%s", req->path + 1);
    return room[0] && !proto_room_valid(room) ? GW_EINVAL : 0;
}

/* The query parameters hooks see (conn.query): keys of 1 to ROUTES_QUERY_KEY_MAX bytes as
 * sent, values percent-decoded and valid UTF-8 (others are left out), the first of a repeated
 * key. One block the caller frees (the pairs, a NULL key last, then their strings), or NULL
 * when there are none. */
static policy_pair_t *routes_query_pairs(const char *query)
{
    size_t max = 1, n = 0, used = 0, kn;
    for (const char *c = query; *c; c++) max += *c == '&';
    size_t cap = strlen(query) + 2 * max;   /* each value and key with its NUL; decoding only shrinks */
    policy_pair_t *pairs = xmalloc((max + 1) * sizeof *pairs + cap);
    char *text = (char *)(pairs + max + 1);
    const char *cur = query, *key;
    int vn;
    pairs[0] = (policy_pair_t){NULL, NULL};
    while ((vn = http_query_next(&cur, &key, &kn, text + used, cap - used)) != GW_ENOTFOUND) {
        char *value = text + used;
        if (vn < 0 || !kn || kn > ROUTES_QUERY_KEY_MAX || !ws_utf8_valid((const uint8_t *)value, (size_t)vn) ||
            policy_query_find(pairs, key, kn))
            continue;
        char *k = value + vn + 1;  /* the key after its value: the value's length was known first */
        memcpy(k, key, kn);
        k[kn] = '\0';
        pairs[n++] = (policy_pair_t){k, value};
        pairs[n] = (policy_pair_t){NULL, NULL};
        used += (size_t)vn + kn + 2;
    }
    if (n) return pairs;
    free(pairs);
    return NULL;
}

/* Parses and checks req for hub_admit into rc. 0, or GW_EINVAL with the reason. */
static int routes_chat_parse(const http_request_t *req, const char *ip, routes_connect_t *rc, char *reason,
                             size_t len)
{
    if (routes_chat_room(req, rc->room, sizeof rc->room) < 0) {
        snprintf(reason, len, "invalid room name");
        return GW_EINVAL;
    }
    int n = http_query_get(req->query, "name", rc->name, sizeof rc->name);
    if ((n < 0 && n != GW_ENOTFOUND) || (n >= 0 && !proto_name_valid(rc->name))) {
        snprintf(reason, len, "invalid name");
        return GW_EINVAL;
    }
    int has_since = http_query_get(req->query, "since", rc->since, sizeof rc->since) >= 0;
    for (int i = 0; i < req->nheaders; i++)
        rc->headers[i] = (policy_pair_t){req->headers[i].name, req->headers[i].value};
    rc->headers[req->nheaders] = (policy_pair_t){NULL, NULL};
    rc->query = routes_query_pairs(req->query);
    rc->hc = (hub_connect_t){
        .ip = ip,
        .room = rc->room[0] ? rc->room : NULL,
        .name = n >= 0 ? rc->name : NULL,
        .since = has_since ? rc->since : NULL,
        .query = rc->query,
        .headers = rc->headers,
    };
    return 0;
}

/* server_endpoint_t.admit: 0, or the refusal's HTTP status with reason. */
static int routes_chat_admit(gw_t *gw, const http_request_t *req, const char *ip, void **data, char *reason,
                             size_t len)
{
    routes_connect_t rc;
    int err = routes_chat_parse(req, ip, &rc, reason, len);
    if (!err) {
        err = hub_admit(gw, &rc.hc, data, reason, len);
        free(rc.query);
    }
    return err < 0 ? http_status_of(err) : 0;
}

/* req was parsed at admit: the client keeps what attach needs. */
static void routes_chat_attach(gw_t *gw, conn_t *c, const http_request_t *req) { hub_attach(gw, c); }

const server_endpoint_t routes_chat_endpoint = {
    .name = "chat",
    .admit = routes_chat_admit,
    .attach = routes_chat_attach,
    .message = hub_message,
    .detach = hub_detach,
};

const server_endpoint_t *routes_ws_endpoint(gw_t *gw, const http_request_t *req, int roles)
{
    if (!(roles & ROUTE_PUBLIC)) return NULL;
    if (path_is(req, "/echo")) return gw->cfg.echo ? &echo_endpoint : NULL;
    if (path_is(req, "/ws")) return &routes_chat_endpoint;
    /* free4chat-style /ROOM: a single segment, and only when the client asks to upgrade */
    if (req->upgrade && req->path[0] == '/' && req->path[1] && !strchr(req->path + 1, '/'))
        return &routes_chat_endpoint;
    return NULL;
}

static void respond_json(buf_t *out, int status, json_t *body, int keep_alive)
{
    char *text = json_dumps(body, JSON_COMPACT);
    http_response_write(out, status, "application/json", NULL, text, text ? strlen(text) : 0, keep_alive);
    free(text);
    json_decref(body);
}

/* Ready while not draining, while a policy is loaded (and, with redis_required, while Redis is
 * up). A failed reload does not fail readiness (the last good policy serves) but shows in
 * checks.policy ("reload_failed") and policy.last_error. A worker that booted without a policy
 * (policy_boot = wait) is unready, checks.policy "not_loaded", until a reload loads one. With
 * redis_url, "redis" (top level and in checks) is "up", "down" or "refusing" (up, but it
 * answers writes with errors: out of memory): local rooms keep working meanwhile. With a
 * candidate policy, "candidate" shows its mode, state (active, rolled_back, not_loaded),
 * version and last error, and checks.candidate its state: a rolled back candidate never fails
 * readiness (the live policy serves every connection). */
static void route_readyz(gw_t *gw, buf_t *out, int keep_alive)
{
    int bus = hub_bus_state(gw->hub);
    if (bus == 1 && hub_bus_refusing(gw->hub)) bus = 2;   /* up, but Redis refuses writes (OOM) */
    const char *version = gw->policy ? policy_version(gw->policy) : "";
    const char *last_error = gw->policy ? policy_last_error(gw->policy) : "";
    int unloaded = gw->policy && !version[0];
    int ready = !gw->draining && !unloaded && !((bus == 0 || bus == 2) && gw->cfg.redis_required);
    json_t *checks = json_pack("{s:s, s:s}", "listener", gw->draining ? "draining" : "ok", "policy",
                               unloaded ? "not_loaded" : last_error[0] ? "reload_failed" : version[0] ? "ok" : "none");
    json_t *policy = json_pack("{s:s, s:o}", "version", version, "last_error",
                               last_error[0] ? json_string(last_error) : json_null());
    const char *status = ready ? "ready" : gw->draining ? "draining" : unloaded ? "policy_not_loaded"
                         : bus == 2 ? "redis_refusing" : "redis_down";
    json_t *body = json_pack("{s:s, s:o, s:o, s:s, s:I, s:I}", "status", status, "checks",
                             checks, "policy", policy, "version", CHATGW_VERSION, "websockets",
                             (json_int_t)GW_SUM(gw, metrics.ws_open), "uptime_s",
                             (json_int_t)((gw_now_ms(gw) - gw->started_ms) / 1000));
    json_t *cand = gw->policy ? policy_candidate_status(gw->policy) : NULL;
    if (cand) {
        json_object_set(checks, "candidate", json_object_get(cand, "state"));
        json_object_set_new(body, "candidate", cand);
    }
    int voice = hub_voice_state(gw->hub);   /* Janus down: voice is refused, text goes on, still ready */
    if (voice >= 0) {
        json_object_set_new(checks, "janus", json_string(voice ? "up" : "down"));
        json_object_set_new(body, "janus", json_string(voice ? "up" : "down"));
    }
    if (bus >= 0) {
        const char *rs = bus == 2 ? "refusing" : bus ? "up" : "down";
        json_object_set_new(checks, "redis", json_string(rs));
        json_object_set_new(body, "redis", json_string(rs));
    }
    respond_json(out, ready ? 200 : 503, body, keep_alive);
}

static void route_metrics(gw_t *gw, buf_t *out, int keep_alive)
{
    buf_t text;
    buf_init(&text);
    metrics_t *sum = xmalloc(sizeof *sum);   /* every worker counts in its own gw: the process is their sum */
    gw_sum_metrics(gw, sum);
    metrics_render(sum, CHATGW_VERSION, &text);
    free(sum);
    metrics_info_render(&text, "chatgw_policy_info", "The live policy; version is the sha256 of its sources.",
                        "version", gw->policy ? policy_version(gw->policy) : "");
    metrics_info_render(&text, "chatgw_policy_candidate_info",
                        "The candidate policy (policy_candidate_dir); version is the sha256 of its sources, empty when none.",
                        "version", gw->policy ? policy_candidate_version(gw->policy) : "");
    http_response_write(out, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text.data, text.len, keep_alive);
    buf_free(&text);
}

/* CORS: the Origin is echoed when allowed_origins admits it ("*" admits any). */
static void cors_headers(gw_t *gw, const http_request_t *req, buf_t *hdr)
{
    const char *origin = http_request_header(req, "Origin");
    const char *allowed = gw->cfg.allowed_origins;
    if (!origin || !allowed || !allowed[0]) return;
    int ok = !strcmp(allowed, "*") || http_header_has_token(allowed, origin);
    if (!ok) return;
    buf_printf(hdr, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n", !strcmp(allowed, "*") ? "*" : origin);
}

static void api_json(buf_t *out, int status, json_t *body, buf_t *hdr, int keep_alive)
{
    char *text = json_dumps(body, JSON_COMPACT);
    http_response_write(out, status, "application/json", hdr->len ? buf_cstr(hdr) : NULL, text, text ? strlen(text) : 0,
                        keep_alive);
    free(text);
    json_decref(body);
}

static void api_error(buf_t *out, int status, const char *code, const char *msg, buf_t *hdr, int keep_alive)
{
    api_json(out, status, json_pack("{s:s, s:s}", "error", code, "message", msg), hdr, keep_alive);
}

/* One API call answered by the hub: at once (into out, while route_api runs) or later (through
 * a server_later_t, when the answer needs Redis). */
typedef struct {
    buf_t *out;                    /* while answering at once */
    server_later_t *later;         /* after route_api returned */
    int keep_alive;
    int answered;
    char *hdr;                     /* the CORS headers, or NULL */
} api_call_t;

static api_call_t *api_call_new(const buf_t *hdr, int keep_alive, buf_t *out)
{
    api_call_t *a = xcalloc(1, sizeof *a);
    a->out = out;
    a->keep_alive = keep_alive;
    a->hdr = hdr->len ? xstrdup(buf_cstr((buf_t *)hdr)) : NULL;
    return a;
}

static void api_call_free(api_call_t *a)
{
    free(a->hdr);
    free(a);
}

/* The hub's answer (hub_api_cb). */
static void api_call_answered(void *arg, int status, json_t *body)
{
    api_call_t *a = arg;
    buf_t hdr, out;
    buf_init(&hdr);
    if (a->hdr) buf_append_str(&hdr, a->hdr);
    if (a->out) {                  /* still inside route_api */
        api_json(a->out, status, body, &hdr, a->keep_alive);
        a->answered = 1;
        buf_free(&hdr);
        return;
    }
    buf_init(&out);
    api_json(&out, status, body, &hdr, a->keep_alive);
    if (a->later) server_later_answer(a->later, &out, a->keep_alive);
    buf_free(&out);
    buf_free(&hdr);
    api_call_free(a);
}

/* After the hub call: done when it answered at once; else the answer comes later. */
static void api_call_wait(gw_t *gw, api_call_t *a)
{
    if (a->answered) {
        api_call_free(a);
        return;
    }
    buf_t *out = a->out;
    a->out = NULL;
    a->later = server_later_take(gw);
    if (!a->later)                 /* cannot happen inside handle; answer something anyway */
        http_response_error(out, 500, "internal", "the answer cannot be deferred", 0);
}

/* Constant-time comparison of the bearer token with api_token. */
static int api_authorized(gw_t *gw, const http_request_t *req)
{
    const char *auth = http_request_header(req, "Authorization");
    const char *token = gw->cfg.api_token;
    if (!auth || strncasecmp(auth, "Bearer ", 7)) return 0;
    auth += 7;
    size_t a = strlen(auth), t = strlen(token);
    unsigned char diff = (unsigned char)(a != t);
    for (size_t i = 0; i < t; i++) diff |= (unsigned char)(token[i] ^ (i < a ? auth[i] : 0));
    return diff == 0;
}

static void api_publish(gw_t *gw, const http_request_t *req, const char *room, buf_t *hdr, int keep_alive,
                        buf_t *out)
{
    if (!gw->cfg.api_token || !gw->cfg.api_token[0]) {
        api_error(out, 404, "not_found", "the publish API is off (no api_token configured)", hdr, keep_alive);
        return;
    }
    if (!api_authorized(gw, req)) {
        api_error(out, 401, "unauthorized", "a valid Authorization: Bearer token is required", hdr, keep_alive);
        return;
    }
    json_error_t jerr;
    json_t *body = json_loadb(req->body ? req->body : "", req->body_len, 0, &jerr);
    const char *text = NULL, *from = "server";
    if (!body || json_unpack(body, "{s:s, s?:s}", "text", &text, "from", &from) < 0 || !text[0] ||
        strlen(text) > (size_t)gw->cfg.max_text_bytes || !proto_name_valid(from)) {
        api_error(out, 400, "bad_request", "body must be {\"text\": string, \"from\"?: name} within max_text_bytes", hdr,
                  keep_alive);
        json_decref(body);
        return;
    }
    api_call_t *a = api_call_new(hdr, keep_alive, out);
    hub_api_publish(gw->hub, room, from, text, api_call_answered, a);
    api_call_wait(gw, a);
    json_decref(body);
}

/* /api/stats, /api/rooms/{id}, /api/rooms/{id}/messages. */
static void route_api(gw_t *gw, const http_request_t *req, int keep_alive, buf_t *out)
{
    buf_t hdr;
    buf_init(&hdr);
    cors_headers(gw, req, &hdr);
    int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    const char *p = req->path + 4;     /* after "/api" */
    if (req->method == HTTP_OPTIONS) {
        buf_append_str(&hdr, "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                             "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
                             "Access-Control-Max-Age: 600\r\n");
        http_response_write(out, 204, NULL, buf_cstr(&hdr), NULL, 0, keep_alive);
    } else if (!strcmp(p, "/stats")) {
        if (get) {
            api_call_t *a = api_call_new(&hdr, keep_alive, out);
            hub_api_stats(gw->hub, api_call_answered, a);
            api_call_wait(gw, a);
        } else {
            api_error(out, 405, "method_not_allowed", "use GET", &hdr, keep_alive);
        }
    } else if (!strncmp(p, "/rooms/", 7) && p[7]) {
        char room[PROTO_MAX_ROOM * 2 + 16];
        snprintf(room, sizeof room, "%s", p + 7);
        char *slash = strchr(room, '/');
        int publish = slash && !strcmp(slash, "/messages");
        if (slash) *slash = '\0';
        if (slash && !publish) {
            api_error(out, 404, "not_found", "no such route", &hdr, keep_alive);
        } else if (publish) {
            if (req->method == HTTP_POST) api_publish(gw, req, room, &hdr, keep_alive, out);
            else api_error(out, 405, "method_not_allowed", "use POST", &hdr, keep_alive);
        } else if (!get) {
            api_error(out, 405, "method_not_allowed", "use GET", &hdr, keep_alive);
        } else {
            api_call_t *a = api_call_new(&hdr, keep_alive, out);
            hub_api_room(gw->hub, room, api_call_answered, a);
            api_call_wait(gw, a);
        }
    } else {
        api_error(out, 404, "not_found", "no such route", &hdr, keep_alive);
    }
    buf_free(&hdr);
}

void routes_handle(gw_t *gw, const http_request_t *req, int roles, int keep_alive, buf_t *out)
{
    int get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    const char *probe = NULL;
    if ((roles & ROUTE_PUBLIC) && static_config_serve(&gw->cfg, req, keep_alive, out)) return;
    if ((roles & ROUTE_PUBLIC) && !strncmp(req->path, "/api/", 5)) {
        route_api(gw, req, keep_alive, out);
        return;
    }
    if ((roles & ROUTE_PUBLIC) || (roles & ROUTE_ADMIN)) {
        if (path_is(req, "/healthz")) probe = "healthz";
        else if (path_is(req, "/readyz")) probe = "readyz";
    }
    if ((roles & ROUTE_ADMIN) && path_is(req, "/metrics")) probe = "metrics";
    if (probe && !get) {
        http_response_method_not_allowed(out, NULL, keep_alive);
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
    if ((roles & ROUTE_PUBLIC) && static_route_handle(gw, req, keep_alive, out)) return;   /* web client */
    http_response_error(out, 404, "not_found", "no such route", keep_alive);
}

const server_router_t routes_router = {.endpoint = routes_ws_endpoint, .handle = routes_handle};
