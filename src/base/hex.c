#include "base/hex.h"

#include <stdlib.h>

#include <openssl/rand.h>

char *hex_encode(const void *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}

char *hex_random(char *out, size_t nbytes)
{
    unsigned char raw[64];
    if (nbytes > sizeof raw || RAND_bytes(raw, (int)nbytes) != 1) abort();
    return hex_encode(raw, nbytes, out);
}

int hex_digit(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
