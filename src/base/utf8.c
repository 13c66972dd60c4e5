/* utf8: lossy text to JSON strings; see utf8.h. */
#include "base/utf8.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"

int utf8_next(const unsigned char **p, const unsigned char *end, uint32_t *cp)
{
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    const unsigned char *s = *p;
    unsigned char b = s[0];
    size_t n;
    uint32_t c;
    if (b < 0x80) { n = 1; c = b; }
    else if ((b & 0xE0) == 0xC0) { n = 2; c = b & 0x1F; }
    else if ((b & 0xF0) == 0xE0) { n = 3; c = b & 0x0F; }
    else if ((b & 0xF8) == 0xF0) { n = 4; c = b & 0x07; }
    else return GW_EINVAL;
    if ((size_t)(end - s) < n) return GW_EINVAL;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return GW_EINVAL;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return GW_EINVAL;
    *p = s + n;
    *cp = c;
    return 0;
}

void utf8_scrub(char *s)
{
    unsigned char *u = (unsigned char *)s;
    const unsigned char *p = u, *end = u + strlen(s);
    while (p < end) {
        uint32_t c;
        if (utf8_next(&p, end, &c) == 0) continue;
        u[p - u] = '?';
        p++;
    }
}

json_t *utf8_json_new(const char *s, int *lossy)
{
    json_t *v = json_string(s);
    if (v) return v;
    char *copy = xstrdup(s);
    utf8_scrub(copy);
    v = json_string(copy);
    free(copy);
    if (lossy) *lossy = 1;
    return v;
}
