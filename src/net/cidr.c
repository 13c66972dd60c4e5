/* cidr: address-in-CIDR-list matching; see cidr.h. */
#include "net/cidr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

/* Parses ip into 16 bytes (IPv4 as ::ffff:a.b.c.d); returns the family's bit offset (96 for
 * IPv4, 0 for IPv6), or GW_EINVAL when ip is not an address. */
static int cidr_addr_parse(const char *ip, unsigned char out[16])
{
    unsigned char v4[4];
    if (inet_pton(AF_INET, ip, v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, v4, 4);
        return 96;
    }
    if (inet_pton(AF_INET6, ip, out) == 1) {
        static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        return memcmp(out, mapped, 12) ? 0 : 96;
    }
    return GW_EINVAL;
}

static int cidr_prefix_equal(const unsigned char *a, const unsigned char *b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)bytes)) return 0;
    if (!rest) return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

/* One "addr[/len]" entry of at most n bytes. */
static int cidr_entry_match(const char *entry, size_t n, const unsigned char ip[16])
{
    char text[64];
    if (n == 0 || n >= sizeof text) return 0;
    memcpy(text, entry, n);
    text[n] = '\0';
    char *slash = strchr(text, '/');
    long len = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        len = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1) return 0;
    }
    unsigned char net[16];
    int offset = cidr_addr_parse(text, net);
    if (offset < 0) return 0;
    long max = 128 - offset;
    if (len < 0) len = max;
    if (len > max) return 0;
    return cidr_prefix_equal(net, ip, (int)(offset + len));
}

int cidr_list_match(const char *list, const char *ip)
{
    unsigned char addr[16];
    if (!list || !ip || cidr_addr_parse(ip, addr) < 0) return 0;
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',') p++;
        size_t n = strcspn(p, ", ");
        if (n && cidr_entry_match(p, n, addr)) return 1;
        p += n;
    }
    return 0;
}

int cidr_forwarded_client(const char *xff, const char *trusted, char *out, size_t outlen)
{
    if (!xff) return GW_ENOTFOUND;
    const char *end = xff + strlen(xff);
    while (end > xff) {
        const char *start = end;
        while (start > xff && start[-1] != ',') start--;
        const char *a = start, *b = end;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        char ip[64];
        unsigned char bin[16];
        size_t n = (size_t)(b - a);
        if (n == 0 || n >= sizeof ip) return GW_EINVAL;
        memcpy(ip, a, n);
        ip[n] = '\0';
        if (cidr_addr_parse(ip, bin) < 0) return GW_EINVAL;   /* garbage: believe nothing further left */
        if (!cidr_list_match(trusted, ip)) {
            snprintf(out, outlen, "%s", ip);
            return 0;
        }
        end = start > xff ? start - 1 : xff;
    }
    return GW_ENOTFOUND;
}

void cidr_limit_key(const char *ip, int v6_bits, char *out, size_t outlen)
{
    unsigned char addr[16];
    char text[INET6_ADDRSTRLEN];
    int offset = cidr_addr_parse(ip, addr);
    if (offset < 0) {
        snprintf(out, outlen, "%s", ip);
    } else if (offset == 96) {
        inet_ntop(AF_INET, addr + 12, text, sizeof text);
        snprintf(out, outlen, "%s", text);
    } else if (v6_bits >= 128 || v6_bits < 0) {
        inet_ntop(AF_INET6, addr, text, sizeof text);
        snprintf(out, outlen, "%s", text);
    } else {
        int bytes = v6_bits / 8, rest = v6_bits % 8;
        if (rest) addr[bytes++] &= (unsigned char)(0xff << (8 - rest));
        memset(addr + bytes, 0, (size_t)(16 - bytes));
        inet_ntop(AF_INET6, addr, text, sizeof text);
        snprintf(out, outlen, "%s/%d", text, v6_bits);
    }
}
