/* libFuzzer target for proxy.c, the PROXY protocol header codec. Byte 0 is a split seed; the
 * rest is a connection's first bytes, fed once whole and once in random pieces: both runs must
 * give the same verdict, the same header length and the same address, a header never takes
 * more than the v1 line or the v2 length field allows, and an address is always text that
 * inet_pton reads back. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "net/proxy.h"

/* Returns the verdict; *taken the bytes the header used. */
static int fuzz_feed(proxy_parser_t *p, const uint8_t *data, size_t len, uint32_t seed, size_t *taken)
{
    proxy_parser_init(p);
    size_t at = 0;
    int rc = PROXY_MORE;
    while (at < len) {
        size_t n = len - at, used = 0;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t pick = (seed >> 16) % 9;
            if (pick < n) n = pick;
        }
        rc = proxy_parser_feed(p, data + at, n, &used);
        if (used > n) abort();
        at += used;
        if (rc != PROXY_MORE) break;
        if (used != n) abort();
    }
    *taken = at;
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint32_t seed = data[0] | 1u;
    data++;
    size--;
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    proxy_parser_t whole, split;
    size_t t1, t2;
    int r1 = fuzz_feed(&whole, copy, size, 0, &t1);
    int r2 = fuzz_feed(&split, copy, size, seed, &t2);
    if (r1 != r2) abort();
    if (r1 != PROXY_MORE && r1 != PROXY_DONE && r1 != GW_EINVAL) abort();
    if (r1 == GW_EINVAL && (!whole.error || !split.error)) abort();
    if (r1 == PROXY_DONE) {
        if (t1 != t2 || memcmp(&whole.addr, &split.addr, sizeof whole.addr)) abort();
        if (copy[0] == 'P' && t1 > PROXY_V1_MAX) abort();
        if (copy[0] == '\r' && t1 > PROXY_V2_FIXED + 65535) abort();
        if (!whole.addr.local) {
            uint8_t bin[16];
            if (inet_pton(AF_INET, whole.addr.src, bin) != 1 && inet_pton(AF_INET6, whole.addr.src, bin) != 1) abort();
            if (whole.addr.src_port > 65535) abort();
        } else if (whole.addr.src[0]) {
            abort();
        }
    }
    free(copy);
    return 0;
}
