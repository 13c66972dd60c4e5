/* echo: the /echo endpoint; see echo.h. */
#include "app/echo.h"

static void echo_message(gw_t *gw, conn_t *c, int opcode, uint8_t *data, size_t len)
{
    (void)gw;
    server_conn_send(c, opcode, data, len);
}

const server_endpoint_t echo_endpoint = {
    .name = "echo",
    .message = echo_message,
};
