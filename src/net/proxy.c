/* proxy: the PROXY protocol header; see proxy.h. Bytes are taken one at a time into a small
 * buffer until the header's shape is known (v1: up to the CRLF, at most 107 bytes; v2: the
 * 16 fixed bytes, then the address block), so the result cannot depend on how the input was
 * split. A v2 header's TLVs (up to 64 KiB by its length field) are counted off, never stored. */
#include "net/proxy.h"

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#include "base/err.h"

static const uint8_t proxy_v2_sig[12] = { '\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n' };
static const char proxy_v1_sig[6] = "PROXY ";

static int proxy_fail(proxy_parser_t *p, const char *why)
{
    p->error = why;
    return GW_EINVAL;
}

void proxy_parser_init(proxy_parser_t *p) { memset(p, 0, sizeof *p); }

/* A v1 port: 1 to 5 digits, at most 65535. */
static int proxy_v1_port(const char *s, unsigned *out)
{
    size_t n = strlen(s);
    unsigned v = 0;
    if (n == 0 || n > 5) return GW_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return GW_EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535) return GW_EINVAL;
    *out = v;
    return 0;
}

/* Splits line at single spaces into at most max fields; empty fields (two spaces) fail. */
static int proxy_v1_fields(char *line, char **field, int max)
{
    int n = 0;
    for (char *s = line;;) {
        char *sp = strchr(s, ' ');
        if (n == max) return GW_EINVAL;
        field[n++] = s;
        if (!sp) break;
        *sp = '\0';
        s = sp + 1;
    }
    for (int i = 0; i < n; i++)
        if (!field[i][0]) return GW_EINVAL;
    return n;
}

/* "PROXY TCP4|TCP6 src dst sport dport\r\n" or "PROXY UNKNOWN ...\r\n", whole in buf. */
static int proxy_v1_parse(proxy_parser_t *p)
{
    char line[PROXY_V1_MAX + 1];
    size_t n = p->len - 2;   /* without the CRLF */
    if (memchr(p->buf, '\0', n) || memchr(p->buf, '\r', n)) return proxy_fail(p, "v1: stray control byte");
    memcpy(line, p->buf + sizeof proxy_v1_sig, n - sizeof proxy_v1_sig);
    line[n - sizeof proxy_v1_sig] = '\0';
    if (!strcmp(line, "UNKNOWN") || !strncmp(line, "UNKNOWN ", 8)) {
        p->addr.local = 1;   /* the spec: ignore whatever follows */
        return PROXY_DONE;
    }
    char *f[5];
    if (proxy_v1_fields(line, f, 5) != 5) return proxy_fail(p, "v1: wrong field count");
    int family = !strcmp(f[0], "TCP4") ? AF_INET : !strcmp(f[0], "TCP6") ? AF_INET6 : 0;
    if (!family) return proxy_fail(p, "v1: unknown protocol");
    uint8_t src[16], dst[16];
    unsigned dport;
    if (inet_pton(family, f[1], src) != 1 || inet_pton(family, f[2], dst) != 1)
        return proxy_fail(p, "v1: bad address");
    if (proxy_v1_port(f[3], &p->addr.src_port) < 0 || proxy_v1_port(f[4], &dport) < 0)
        return proxy_fail(p, "v1: bad port");
    inet_ntop(family, src, p->addr.src, sizeof p->addr.src);   /* canonical text */
    return PROXY_DONE;
}

static int proxy_v1_step(proxy_parser_t *p)
{
    if (p->buf[p->len - 1] == '\n') {
        if (p->len < 2 || p->buf[p->len - 2] != '\r') return proxy_fail(p, "v1: LF without CR");
        return proxy_v1_parse(p);
    }
    if (p->len == PROXY_V1_MAX) return proxy_fail(p, "v1: line too long");
    return PROXY_MORE;
}

/* The fixed part is whole: checks version, command and family, and sets how much of the
 * address block to buffer (want) and how much to skip. */
static int proxy_v2_fixed(proxy_parser_t *p)
{
    uint8_t ver_cmd = p->buf[12], fam = p->buf[13];
    size_t total = (size_t)p->buf[14] << 8 | p->buf[15], need = 0;
    if (ver_cmd >> 4 != 2) return proxy_fail(p, "v2: unknown version");
    if ((ver_cmd & 0xf) > 1) return proxy_fail(p, "v2: unknown command");
    if ((ver_cmd & 0xf) == 0) {
        p->addr.local = 1;   /* LOCAL: the proxy's own connection (a health check) */
    } else if (fam == 0x11) {
        need = 12;
    } else if (fam == 0x21) {
        need = 36;
    } else if (fam == 0x00 || fam == 0x31) {
        p->addr.local = 1;   /* UNSPEC or a unix socket: nothing to use, the spec allows keeping the real one */
    } else {
        return proxy_fail(p, "v2: unsupported family or transport");
    }
    if (total < need) return proxy_fail(p, "v2: address block too short");
    p->addr_known = 1;
    p->want = PROXY_V2_FIXED + need;
    p->rest = total - need;
    return PROXY_MORE;
}

static void proxy_v2_addresses(proxy_parser_t *p)
{
    const uint8_t *a = p->buf + PROXY_V2_FIXED;
    if (p->addr.local) return;
    if (p->buf[13] == 0x11) {
        inet_ntop(AF_INET, a, p->addr.src, sizeof p->addr.src);
        p->addr.src_port = (unsigned)a[8] << 8 | a[9];
    } else {
        inet_ntop(AF_INET6, a, p->addr.src, sizeof p->addr.src);
        p->addr.src_port = (unsigned)a[32] << 8 | a[33];
    }
}

static int proxy_v2_step(proxy_parser_t *p)
{
    if (p->len < p->want) return PROXY_MORE;
    if (!p->addr_known) {
        int rc = proxy_v2_fixed(p);
        if (rc < 0 || p->len < p->want) return rc;
    }
    proxy_v2_addresses(p);
    p->skip = p->rest;
    return p->skip ? PROXY_MORE : PROXY_DONE;
}

/* Which signature the bytes so far can still start. */
static int proxy_sig_step(proxy_parser_t *p)
{
    int v1 = p->len <= sizeof proxy_v1_sig && !memcmp(p->buf, proxy_v1_sig, p->len);
    int v2 = p->len <= sizeof proxy_v2_sig && !memcmp(p->buf, proxy_v2_sig, p->len);
    if (!v1 && !v2) return proxy_fail(p, "no PROXY protocol signature");
    if (v1 && p->len == sizeof proxy_v1_sig) p->version = 1;
    if (v2 && p->len == sizeof proxy_v2_sig) {
        p->version = 2;
        p->want = PROXY_V2_FIXED;
    }
    return PROXY_MORE;
}

int proxy_parser_feed(proxy_parser_t *p, const uint8_t *data, size_t len, size_t *used)
{
    *used = 0;
    if (p->error) return GW_EINVAL;
    while (*used < len) {
        if (p->skip) {
            size_t n = len - *used < p->skip ? len - *used : p->skip;
            p->skip -= n;
            *used += n;
            if (!p->skip) return PROXY_DONE;
            continue;
        }
        p->buf[p->len++] = data[(*used)++];
        int rc = !p->version ? proxy_sig_step(p) : p->version == 1 ? proxy_v1_step(p) : proxy_v2_step(p);
        if (rc != PROXY_MORE) return rc;
    }
    return PROXY_MORE;
}
