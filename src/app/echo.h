/* echo: the /echo WebSocket endpoint (config echo=true): every message comes back unchanged,
 * with its opcode. It exists for conformance tests and benchmarks. */
#ifndef CHATGW_ECHO_H
#define CHATGW_ECHO_H

#include "net/server.h"

extern const server_endpoint_t echo_endpoint;

#endif
