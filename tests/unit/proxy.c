/* proxy: PROXY protocol v1 and v2 headers, whole and split at every byte, and hostile input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/err.h"
#include "net/proxy.h"

static const uint8_t SIG[12] = { '\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n' };

/* Feeds data whole (step 0) or in pieces of step bytes; returns the verdict and the bytes the
 * header took in *taken. */
static int feed_split(proxy_parser_t *p, const void *data, size_t len, size_t step, size_t *taken)
{
    proxy_parser_init(p);
    size_t at = 0;
    int rc = PROXY_MORE;
    *taken = 0;
    while (at < len) {
        size_t n = step && len - at > step ? step : len - at, used = 0;
        rc = proxy_parser_feed(p, (const uint8_t *)data + at, n, &used);
        at += used;
        assert_true(used <= n);
        if (rc != PROXY_MORE) break;
        assert_int_equal(used, n);
    }
    *taken = at;
    return rc;
}

/* Every split gives the same verdict, the same length and the same address. */
static int feed_all_splits(const void *data, size_t len, proxy_addr_t *addr, size_t *taken)
{
    proxy_parser_t p;
    int rc = feed_split(&p, data, len, 0, taken);
    *addr = p.addr;
    for (size_t step = 1; step < len; step++) {
        size_t t;
        assert_int_equal(feed_split(&p, data, len, step, &t), rc);
        if (rc == PROXY_DONE) {
            assert_int_equal(t, *taken);
            assert_string_equal(p.addr.src, addr->src);
            assert_int_equal(p.addr.src_port, addr->src_port);
            assert_int_equal(p.addr.local, addr->local);
        }
    }
    return rc;
}

static void test_v1(void **state)
{
    (void)state;
    proxy_addr_t a;
    size_t taken;
    const char *h4 = "PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
    assert_int_equal(feed_all_splits(h4, strlen(h4), &a, &taken), PROXY_DONE);
    assert_int_equal(taken, strlen("PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"));
    assert_string_equal(a.src, "203.0.113.7");
    assert_int_equal(a.src_port, 56324);
    assert_false(a.local);

    const char *h6 = "PROXY TCP6 2001:0db8:0:0::7 2001:db8::1 65535 0\r\n";
    assert_int_equal(feed_all_splits(h6, strlen(h6), &a, &taken), PROXY_DONE);
    assert_string_equal(a.src, "2001:db8::7");
    assert_int_equal(a.src_port, 65535);

    const char *unk = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\nx";
    assert_int_equal(feed_all_splits(unk, strlen(unk), &a, &taken), PROXY_DONE);
    assert_true(a.local);
    assert_int_equal(taken, strlen(unk) - 1);
    const char *unk2 = "PROXY UNKNOWN\r\n";
    assert_int_equal(feed_all_splits(unk2, strlen(unk2), &a, &taken), PROXY_DONE);
    assert_true(a.local);

    /* the longest line the spec allows */
    const char *maxv6 = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(maxv6), PROXY_V1_MAX - 3);
    assert_int_equal(feed_all_splits(maxv6, strlen(maxv6), &a, &taken), PROXY_DONE);
}

static void test_v1_bad(void **state)
{
    (void)state;
    static const char *bad[] = {
        "GET / HTTP/1.1\r\n\r\n",
        "PROXY\r\n",
        "PROXY \r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",                  /* LF without CR */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",               /* two spaces */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 ::1 ::1 1 2\r\n",                        /* family mismatch */
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY UNKNOWNX\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proxy_addr_t a;
        size_t taken;
        if (feed_all_splits(bad[i], strlen(bad[i]), &a, &taken) != GW_EINVAL) fail_msg("accepted: %s", bad[i]);
    }
    /* a NUL inside the line */
    const char nul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
    proxy_addr_t a;
    size_t taken;
    assert_int_equal(feed_all_splits(nul, sizeof nul - 1, &a, &taken), GW_EINVAL);
}

/* No CRLF within 107 bytes fails at byte 107, however it arrives; a dead parser stays dead. */
static void test_v1_too_long(void **state)
{
    (void)state;
    char line[300];
    memcpy(line, "PROXY UNKNOWN ", 14);
    memset(line + 14, 'a', sizeof line - 14);
    proxy_parser_t p;
    size_t taken;
    assert_int_equal(feed_split(&p, line, sizeof line, 0, &taken), GW_EINVAL);
    assert_int_equal(taken, PROXY_V1_MAX);
    assert_int_equal(feed_split(&p, line, sizeof line, 1, &taken), GW_EINVAL);
    assert_int_equal(taken, PROXY_V1_MAX);
    size_t used;
    assert_int_equal(proxy_parser_feed(&p, (const uint8_t *)"\r\n", 2, &used), GW_EINVAL);
    assert_non_null(p.error);
    /* 106 bytes of line and its CRLF's LF as byte 107... the CR is byte 106: still a line */
    memset(line + 14, 'a', 91);
    memcpy(line + 105, "\r\n", 2);
    assert_int_equal(feed_split(&p, line, PROXY_V1_MAX, 0, &taken), PROXY_DONE);
    assert_int_equal(taken, PROXY_V1_MAX);
}

/* A v2 header: command, family, address block of len bytes (addr), then tlv bytes of TLVs. */
static size_t v2_build(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *addr, size_t alen, size_t tlv)
{
    memcpy(out, SIG, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    size_t total = alen + tlv;
    out[14] = (uint8_t)(total >> 8);
    out[15] = (uint8_t)total;
    memcpy(out + 16, addr, alen);
    for (size_t i = 0; i < tlv; i++) out[16 + alen + i] = (uint8_t)(i * 7);
    return 16 + total;
}

static void test_v2(void **state)
{
    (void)state;
    uint8_t buf[70000];
    proxy_addr_t a;
    size_t taken;
    const uint8_t v4[12] = { 198, 51, 100, 9, 10, 0, 0, 1, 0xdb, 0x04, 0x01, 0xbb };
    size_t n = v2_build(buf, 0x21, 0x11, v4, sizeof v4, 0);
    memcpy(buf + n, "GET", 3);
    assert_int_equal(feed_all_splits(buf, n + 3, &a, &taken), PROXY_DONE);
    assert_int_equal(taken, n);
    assert_string_equal(a.src, "198.51.100.9");
    assert_int_equal(a.src_port, 0xdb04);

    uint8_t v6[36] = { 0x20, 0x01, 0x0d, 0xb8 };
    v6[15] = 0x42;
    v6[32] = 0x12;
    v6[33] = 0x34;
    n = v2_build(buf, 0x21, 0x21, v6, sizeof v6, 23);   /* with TLVs: skipped */
    assert_int_equal(feed_all_splits(buf, n, &a, &taken), PROXY_DONE);
    assert_int_equal(taken, n);
    assert_string_equal(a.src, "2001:db8::42");
    assert_int_equal(a.src_port, 0x1234);

    /* the largest header the length field allows: TLVs are counted off, not stored */
    n = v2_build(buf, 0x21, 0x11, v4, sizeof v4, 65535 - sizeof v4);
    proxy_parser_t p;
    assert_int_equal(feed_split(&p, buf, n, 0, &taken), PROXY_DONE);
    assert_int_equal(taken, n);
    assert_int_equal(feed_split(&p, buf, n, 1000, &taken), PROXY_DONE);
    assert_string_equal(p.addr.src, "198.51.100.9");

    /* LOCAL keeps the socket's address, whatever the block says */
    n = v2_build(buf, 0x20, 0x11, v4, sizeof v4, 0);
    assert_int_equal(feed_all_splits(buf, n, &a, &taken), PROXY_DONE);
    assert_true(a.local);
    assert_int_equal(taken, n);
    n = v2_build(buf, 0x20, 0x00, v4, 0, 0);
    assert_int_equal(feed_all_splits(buf, n, &a, &taken), PROXY_DONE);
    assert_true(a.local);
    assert_int_equal(taken, 16);
    /* PROXY with UNSPEC or a unix socket: kept too */
    uint8_t unixaddr[216] = { '/' };
    n = v2_build(buf, 0x21, 0x31, unixaddr, sizeof unixaddr, 0);
    assert_int_equal(feed_all_splits(buf, n, &a, &taken), PROXY_DONE);
    assert_true(a.local);
    assert_int_equal(taken, n);
}

static void test_v2_bad(void **state)
{
    (void)state;
    uint8_t buf[300];
    proxy_addr_t a;
    size_t taken;
    const uint8_t v4[12] = { 198, 51, 100, 9 };
    struct { uint8_t ver_cmd, fam; size_t alen; } bad[] = {
        { 0x11, 0x11, 12 },    /* version 1 in binary */
        { 0x31, 0x11, 12 },    /* version 3 */
        { 0x22, 0x11, 12 },    /* command 2 */
        { 0x2f, 0x11, 12 },
        { 0x21, 0x12, 12 },    /* UDP */
        { 0x21, 0x22, 12 },
        { 0x21, 0x41, 12 },    /* unknown family */
        { 0x21, 0x13, 12 },    /* unknown transport */
        { 0x21, 0x11, 11 },    /* block shorter than the addresses */
        { 0x21, 0x21, 35 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t block[36] = { 0 };
        memcpy(block, v4, sizeof v4);
        size_t n = v2_build(buf, bad[i].ver_cmd, bad[i].fam, block, bad[i].alen, 0);
        if (feed_all_splits(buf, n, &a, &taken) != GW_EINVAL) fail_msg("accepted case %zu", i);
    }
    /* a broken signature fails at its first wrong byte */
    memcpy(buf, SIG, 12);
    buf[7] = 'q';
    proxy_parser_t p;
    assert_int_equal(feed_split(&p, buf, 16, 0, &taken), GW_EINVAL);
    assert_int_equal(taken, 8);
    /* TLS's ClientHello and HTTP are not a header */
    const uint8_t hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01 };
    assert_int_equal(feed_split(&p, hello, sizeof hello, 0, &taken), GW_EINVAL);
    assert_int_equal(taken, 1);
}

/* Partial headers stay PROXY_MORE with every byte used. */
static void test_partial(void **state)
{
    (void)state;
    proxy_parser_t p;
    size_t used;
    proxy_parser_init(&p);
    assert_int_equal(proxy_parser_feed(&p, (const uint8_t *)"PROX", 4, &used), PROXY_MORE);
    assert_int_equal(used, 4);
    assert_int_equal(proxy_parser_feed(&p, (const uint8_t *)"Y TCP4 1.2.3.4", 14, &used), PROXY_MORE);
    assert_int_equal(proxy_parser_feed(&p, (const uint8_t *)"", 0, &used), PROXY_MORE);
    assert_int_equal(used, 0);
    assert_int_equal(proxy_parser_feed(&p, (const uint8_t *)" 4.3.2.1 1 2\r\nrest", 18, &used), PROXY_DONE);
    assert_int_equal(used, 14);
    assert_string_equal(p.addr.src, "1.2.3.4");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v1_bad),
        cmocka_unit_test(test_v1_too_long),
        cmocka_unit_test(test_v2),
        cmocka_unit_test(test_v2_bad),
        cmocka_unit_test(test_partial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
