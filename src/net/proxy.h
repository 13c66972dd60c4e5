/* proxy: the PROXY protocol header (HAProxy's proxy-protocol.txt, v1 text and v2 binary) that
 * an L4 load balancer sends before the client's first byte, carrying the client's address.
 * A codec: no I/O, no allocation. The server feeds it the first bytes of a connection from a
 * trusted proxy, before TLS and HTTP, and goes on with what it leaves unused. Any split of the
 * input gives the same result. Only the source address and port are kept: TLVs and the
 * destination are checked for shape and dropped. */
#ifndef CHATGW_PROXY_H
#define CHATGW_PROXY_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define PROXY_V1_MAX 107           /* the longest v1 line the spec allows, CRLF included */
#define PROXY_V2_FIXED 16          /* signature, version/command, family, length */
#define PROXY_V2_ADDR_MAX 36       /* two IPv6 addresses and two ports: all that is buffered */

enum {
    PROXY_MORE = 0,                /* every byte used, the header goes on */
    PROXY_DONE = 1,                /* the header is whole; *used bytes were its end */
};

typedef struct {
    int local;                     /* LOCAL, UNKNOWN, UNSPEC or AF_UNIX: keep the socket's address */
    char src[INET6_ADDRSTRLEN];    /* the client, textual ("" when local) */
    unsigned src_port;
} proxy_addr_t;

typedef struct {
    uint8_t buf[PROXY_V1_MAX + 1];
    size_t len;                    /* bytes in buf */
    size_t want;                   /* v2: bytes to buffer (fixed part, then the addresses too) */
    size_t rest;                   /* v2: bytes past the addresses (TLVs), from the length field */
    size_t skip;                   /* v2: of those, left to drop unbuffered once the addresses are read */
    int version;                   /* 0 until the signature is whole, then 1 or 2 */
    int addr_known;                /* v2: the fixed part was read; want covers the addresses */
    const char *error;             /* why, once feed failed; the parser is then dead */
    proxy_addr_t addr;             /* valid after PROXY_DONE */
} proxy_parser_t;

void proxy_parser_init(proxy_parser_t *p);
/* Reads header bytes from data. PROXY_MORE: all len bytes were header and more is needed.
 * PROXY_DONE: the header ended after *used bytes (the rest is the client's stream) and p->addr
 * holds the client; do not feed again. GW_EINVAL: not a valid PROXY header (p->error says
 * why; a stream that does not start with one fails at its first wrong byte), and every later
 * feed fails too. */
int proxy_parser_feed(proxy_parser_t *p, const uint8_t *data, size_t len, size_t *used);

#endif
