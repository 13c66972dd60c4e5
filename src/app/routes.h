/* routes: the plain-HTTP router (probes, metrics, API, static web client) and the choice of
 * WebSocket endpoint for an upgrade path. It writes whole responses into a buffer and never
 * touches a socket. */
#ifndef CHATGW_ROUTES_H
#define CHATGW_ROUTES_H

#include "base/buf.h"
#include "base/gw.h"
#include "http/http.h"
#include "net/server.h"

/* The listener roles (server.h) as the routes name them. */
enum { ROUTE_PUBLIC = SERVER_ROLE_PUBLIC, ROUTE_ADMIN = SERVER_ROLE_ADMIN };

/* The router main/workers hand to server_start: routes_ws_endpoint and routes_handle. */
extern const server_router_t routes_router;

/* The chat endpoint (/ws, /ROOM): the hub's, behind the HTTP edge that parses its upgrade
 * request (room, name, since, the query and headers for the policy) and maps a refusal to a
 * status. */
extern const server_endpoint_t routes_chat_endpoint;
/* The endpoint for a WebSocket path (/echo when enabled, /ws, /ROOM), or NULL. */
const server_endpoint_t *routes_ws_endpoint(gw_t *gw, const http_request_t *req, int roles);
/* Answers a plain request with a complete response in out. */
void routes_handle(gw_t *gw, const http_request_t *req, int roles, int keep_alive, buf_t *out);

#endif
