/* Unit tests for ws.c: handshake key, close codes, UTF-8, masking, permessage-deflate, the
 * encoders, and the frame parser. The parser is fed the same client frames under every split
 * point (and one byte at a time) and must report the same callbacks each time; each protocol
 * violation must close with the right code, limits with 1009, before the payload arrives. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "base/err.h"
#include "proto/ws.h"

static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

/* ---- helpers ---- */

/* The callback log: per call, the opcode byte, an 8-byte length, then the payload. */
typedef struct {
    buf_t log;
    int calls;
    int stop_at;                   /* return nonzero on this call (1-based); 0 never */
} rec_t;

static void log_add(buf_t *log, int op, const void *d, size_t n)
{
    uint8_t h[9];
    uint64_t n64 = n;
    h[0] = (uint8_t)op;
    memcpy(h + 1, &n64, 8);
    buf_append(log, h, 9);
    buf_append(log, d, n);
}

static int rec_cb(void *ctx, int op, uint8_t *d, size_t n)
{
    rec_t *r = ctx;
    assert_non_null(d);
    log_add(&r->log, op, d, n);
    r->calls++;
    return r->stop_at && r->calls == r->stop_at;
}

typedef struct {
    size_t max_frame, max_message;
    int inflate;                   /* give the parser an inflater */
} cfg_t;

static const cfg_t CFG = {1 << 20, 1 << 20, 0};
static const cfg_t CFG_Z = {1 << 20, 1 << 20, 1};

/* Feeds a fresh copy of src in pieces: either `step` bytes at a time, or pieces ending at
 * cuts[] (ascending) and the rest. Returns the last result; *code gets the close code. */
static int feed_pieces(const cfg_t *c, const void *src, size_t len, const size_t *cuts,
                       size_t ncuts, size_t step, rec_t *r, int *code)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, src, len);
    ws_parser_t p;
    ws_parser_init(&p, c->max_frame, c->max_message);
    ws_pmd_params_t pp = {0, 15, 15};
    ws_inflater_t *z = c->inflate ? ws_inflater_new(&pp) : NULL;
    p.inflater = z;
    size_t at = 0, i = 0;
    int rc = 0;
    while (at < len && rc == 0) {
        size_t end = step ? (len - at > step ? at + step : len) : (i < ncuts ? cuts[i++] : len);
        rc = ws_parser_feed(&p, copy + at, end - at, rec_cb, r);
        at = end;
    }
    if (rc == 0) rc = ws_parser_feed(&p, NULL, 0, rec_cb, r);
    *code = rc < 0 ? p.close_code : 0;
    if (rc < 0) {
        assert_non_null(p.reason);
        assert_int_equal(ws_parser_feed(&p, copy, len, rec_cb, r), GW_EINVAL);
    }
    ws_parser_free(&p);
    ws_inflater_free(z);
    free(copy);
    return rc;
}

static int feed_whole(const cfg_t *c, const buf_t *b, rec_t *r, int *code)
{
    return feed_pieces(c, b->data, b->len, NULL, 0, 0, r, code);
}

/* A frame with a chosen length encoding (0: 7-bit, 2: 16-bit, 8: 64-bit), not minimal. */
static void frame_raw(buf_t *b, uint8_t b0, int lenbytes, const void *d, size_t n)
{
    uint8_t h[14];
    size_t hl = 2;
    h[0] = b0;
    if (lenbytes == 0) {
        h[1] = 0x80 | (uint8_t)n;
    } else {
        h[1] = 0x80 | (lenbytes == 2 ? 126 : 127);
        for (int i = 0; i < lenbytes; i++)
            h[hl++] = (uint8_t)((uint64_t)n >> (8 * (lenbytes - 1 - i)));
    }
    memcpy(h + hl, MASK, 4);
    hl += 4;
    buf_append(b, h, hl);
    size_t at = b->len;
    buf_append(b, d, n);
    ws_mask((uint8_t *)b->data + at, n, MASK, 0);
}

/* A masked client frame with the shortest length encoding, as a browser sends it. */
static void frame(buf_t *b, int op, int fin, int rsv1, const void *d, size_t n)
{
    uint8_t b0 = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | op);
    frame_raw(b, b0, n < 126 ? 0 : n <= 0xFFFF ? 2 : 8, d, n);
}

static void frame_str(buf_t *b, int op, int fin, const char *s)
{
    frame(b, op, fin, 0, s, strlen(s));
}

/* Raw deflate of in on zs; with Z_SYNC_FLUSH the 00 00 ff ff tail is removed (RFC 7692). */
static void z_deflate(z_stream *zs, buf_t *out, const void *in, size_t n, int flush)
{
    zs->next_in = (Bytef *)in;
    zs->avail_in = (uInt)n;
    int rc;
    do {
        buf_reserve(out, 4096);
        zs->next_out = (Bytef *)out->data + out->len;
        zs->avail_out = 4096;
        rc = deflate(zs, flush);
        assert_true(rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR);
        out->len += 4096 - zs->avail_out;
    } while (zs->avail_out == 0 || zs->avail_in);
    if (flush == Z_SYNC_FLUSH) {
        assert_true(out->len >= 4);
        assert_memory_equal(out->data + out->len - 4, "\x00\x00\xff\xff", 4);
        out->len -= 4;
    }
}

static void z_compress(buf_t *out, const void *in, size_t n, int level, int flush)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit2(&zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z_deflate(&zs, out, in, n, flush);
    deflateEnd(&zs);
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* ---- handshake, close codes ---- */

static void test_accept_key(void **st)
{
    char out[29];
    const char *k = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_int_equal(ws_accept_key(k, strlen(k), out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    /* the length argument counts, not the NUL */
    char padded[40];
    snprintf(padded, sizeof padded, "%s  trailing", k);
    assert_int_equal(ws_accept_key(padded, 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    const char *bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",        /* 23 chars */
        "dGhlIHNhbXBsZSBub25jZQ",         /* no padding */
        "dGhlIHNhbXBsZSBub25jZQ!=",       /* bad char, one '=' */
        "dGhlIHNhbXBsZSBub25j!Q==",       /* bad char */
        "dGhlIHNhbXBsZSBub25jZ===",       /* too much padding */
        "AAAAAAAAAAAAAAAAAAAA",           /* 15 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAA=",       /* 17 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",   /* 21 bytes */
        "dGhlIHNhbXBsZSBub25jZQ== ",      /* trailing space */
        "dGhlIHNhbXBs ZSBub25jZQ==",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(ws_accept_key(bad[i], strlen(bad[i]), out), GW_EINVAL);
}

static int ref_close_valid(unsigned c)
{
    if (c >= 3000 && c <= 4999) return 1;
    switch (c) {
    case 1000: case 1001: case 1002: case 1003: case 1007: case 1008: case 1009: case 1010:
    case 1011: case 1012: case 1013: case 1014:
        return 1;
    }
    return 0;
}

static void test_close_codes(void **st)
{
    for (unsigned c = 0; c < 70000; c++)
        assert_int_equal(ws_close_code_valid(c), ref_close_valid(c));
    assert_false(ws_close_code_valid(1005));
    assert_false(ws_close_code_valid(1006));
    assert_false(ws_close_code_valid(1015));
    assert_true(ws_close_code_valid(4999));
    assert_false(ws_close_code_valid(5000));
}

/* ---- UTF-8 ---- */

/* Reference: decode each sequence and check the code point's range. */
static int ref_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, c &= 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, c &= 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, c &= 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i - 1 < k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            c = c << 6 | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

static void test_utf8_exhaustive(void **st)
{
    uint8_t s[4];
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        assert_int_equal(ws_utf8_valid(s, 1), ref_utf8_valid(s, 1));
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            assert_int_equal(ws_utf8_valid(s, 2), ref_utf8_valid(s, 2));
            if (a < 0xC0) continue;        /* ASCII and stray continuation leads: covered */
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                assert_int_equal(ws_utf8_valid(s, 3), ref_utf8_valid(s, 3));
            }
        }
    }
    static const uint8_t tails[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xFF};
    for (unsigned a = 0xF0; a < 0x100; a++)
        for (unsigned b = 0; b < 256; b++)
            for (size_t i = 0; i < sizeof tails; i++)
                for (size_t j = 0; j < sizeof tails; j++) {
                    s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = tails[i], s[3] = tails[j];
                    assert_int_equal(ws_utf8_valid(s, 4), ref_utf8_valid(s, 4));
                }
}

/* Fed one byte at a time, feed must fail exactly at byte `fail` (-1: never) and
 * ws_utf8_complete must match `complete` at the end. */
static void utf8_case(const char *s, size_t n, int fail, int complete)
{
    ws_utf8_t u;
    ws_utf8_init(&u);
    int failed_at = -1;
    for (size_t i = 0; i < n; i++) {
        if (ws_utf8_feed(&u, (const uint8_t *)s + i, 1) < 0) {
            failed_at = (int)i;
            break;
        }
    }
    assert_int_equal(failed_at, fail);
    if (fail < 0) {
        assert_int_equal(ws_utf8_complete(&u), complete);
        assert_int_equal(ws_utf8_valid((const uint8_t *)s, n), complete);
    } else {
        /* stays failed */
        assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)"a", 1), GW_EINVAL);
        assert_int_equal(ws_utf8_valid((const uint8_t *)s, n), 0);
    }
    /* the same verdict fed whole */
    ws_utf8_init(&u);
    assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)s, n), fail < 0 ? 0 : GW_EINVAL);
}

#define UTF8(lit, fail, complete) utf8_case(lit, sizeof lit - 1, fail, complete)

static void test_utf8_cases(void **st)
{
    UTF8("", -1, 1);
    UTF8("hello, world", -1, 1);
    UTF8("\xc2\x80\xdf\xbf", -1, 1);              /* U+0080, U+07FF */
    UTF8("\xe0\xa0\x80\xef\xbf\xbf", -1, 1);      /* U+0800, U+FFFF */
    UTF8("\xf0\x90\x80\x80", -1, 1);              /* U+10000 */
    UTF8("\xf4\x8f\xbf\xbf", -1, 1);              /* U+10FFFF */
    UTF8("\xed\x9f\xbf\xee\x80\x80", -1, 1);      /* U+D7FF, U+E000 */
    UTF8("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", -1, 1);
    UTF8("\xe2\x82", -1, 0);                       /* truncated */
    UTF8("ab\xf0\x9f\x98", -1, 0);
    UTF8("\xc0\x80", 0, 0);                        /* overlong 2-byte */
    UTF8("\xc1\xbf", 0, 0);
    UTF8("a\xe0\x80\x80", 2, 0);                   /* overlong 3-byte */
    UTF8("\xe0\x9f\xbf", 1, 0);
    UTF8("\xf0\x80\x80\x80", 1, 0);                /* overlong 4-byte */
    UTF8("\xf0\x8f\xbf\xbf", 1, 0);
    UTF8("\xed\xa0\x80", 1, 0);                    /* U+D800 */
    UTF8("\xed\xbf\xbf", 1, 0);                    /* U+DFFF */
    UTF8("\xf4\x90\x80\x80", 1, 0);                /* U+110000 */
    UTF8("\xf5\x80\x80\x80", 0, 0);
    UTF8("\xff", 0, 0);
    UTF8("\x80", 0, 0);                            /* stray continuation */
    UTF8("\xe2\x82\x41", 2, 0);                    /* sequence cut by ASCII */
    UTF8("abcdefghijklmnop\xe2\x28\xa1", 17, 0);
    UTF8("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", 12, 0);

    /* a sequence split across feeds */
    ws_utf8_t u;
    ws_utf8_init(&u);
    assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)"12345678\xf0", 9), 0);
    assert_false(ws_utf8_complete(&u));
    assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)"\x9f", 1), 0);
    assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)"\x98\x80", 2), 0);
    assert_true(ws_utf8_complete(&u));
    assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)"\xed", 1), 0);
    assert_int_equal(ws_utf8_feed(&u, (const uint8_t *)"\xa0", 1), GW_EINVAL);
}

/* Long texts (where whole words are checked at once) built from ASCII runs, valid sequences and
 * bad bytes at every alignment: the validator agrees with the byte-wise reference, whole and
 * fed in two pieces split anywhere. */
static void test_utf8_long(void **st)
{
    (void)st;
    static const char *const parts[] = { "a", "abcdefg", "0123456789abcdef", "\xc3\xa9", "\xe2\x82\xac",
                                         "\xf0\x9f\x98\x80", "\x80", "\xc3", "\xed\xa0\x80", "\xff" };
    uint8_t buf[128];
    srand(11);
    for (int t = 0; t < 20000; t++) {
        size_t n = 0;
        int k = rand() % 12;
        for (int j = 0; j < k; j++) {
            const char *part = parts[rand() % (t % 3 ? 6 : 10)];   /* two in three texts are valid */
            size_t m = strlen(part);
            if (n + m > sizeof buf) break;
            memcpy(buf + n, part, m);
            n += m;
        }
        int want = ref_utf8_valid(buf, n);
        assert_int_equal(ws_utf8_valid(buf, n), want);
        size_t cut = n ? (size_t)rand() % (n + 1) : 0;
        ws_utf8_t u;
        ws_utf8_init(&u);
        int ok = ws_utf8_feed(&u, buf, cut) == 0 && ws_utf8_feed(&u, buf + cut, n - cut) == 0 && ws_utf8_complete(&u);
        assert_int_equal(ok, want);
    }
}

/* ---- masking ---- */

static void test_mask(void **st)
{
    uint8_t src[100], a[100], b[100];
    fill_pattern(src, sizeof src, 7);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n <= 40; n++) {
            memcpy(a, src, n);
            ws_mask(a, n, MASK, off);
            for (size_t i = 0; i < n; i++) assert_int_equal(a[i], src[i] ^ MASK[(off + i) % 4]);
        }
    /* any split, with the offset carried, equals masking at once */
    memcpy(a, src, sizeof a);
    ws_mask(a, sizeof a, MASK, 0);
    for (size_t cut = 0; cut <= sizeof b; cut++) {
        memcpy(b, src, sizeof b);
        ws_mask(b, cut, MASK, 0);
        ws_mask(b + cut, sizeof b - cut, MASK, cut);
        assert_memory_equal(a, b, sizeof a);
        ws_mask(b, sizeof b, MASK, 0);           /* involution */
        assert_memory_equal(b, src, sizeof b);
    }
}

/* ---- encoders ---- */

/* The frame's first bytes are want (n bytes) and the payload follows them. */
static void assert_frame(int op, int rsv1, const uint8_t *pl, size_t len, const char *want, size_t n)
{
    sbuf_t *s = ws_frame_build(op, rsv1, pl, len);
    assert_int_equal(s->refs, 1);
    assert_int_equal(s->len, n + len);
    assert_memory_equal(s->data, want, n);
    if (len) assert_memory_equal(s->data + n, pl, len);
    sbuf_unref(s);
}

static void test_frame_build(void **st)
{
    uint8_t *pl = malloc(70000);
    for (size_t i = 0; i < 70000; i++) pl[i] = (uint8_t)(i * 7);
    assert_frame(WS_OP_TEXT, 0, (const uint8_t *)"hi", 2, "\x81\x02", 2);
    assert_frame(WS_OP_PING, 0, NULL, 0, "\x89\x00", 2);
    assert_frame(WS_OP_BINARY, 1, pl, 125, "\xc2\x7d", 2);
    /* at each length-form boundary */
    assert_frame(WS_OP_TEXT, 1, pl, 126, "\xc1\x7e\x00\x7e", 4);
    assert_frame(WS_OP_BINARY, 1, pl, 300, "\xc2\x7e\x01\x2c", 4);
    assert_frame(WS_OP_BINARY, 0, pl, 65535, "\x82\x7e\xff\xff", 4);
    assert_frame(WS_OP_BINARY, 0, pl, 65536, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    assert_frame(WS_OP_TEXT, 1, pl, 70000, "\xc1\x7f\x00\x00\x00\x00\x00\x01\x11\x70", 10);
    free(pl);
}

static void test_close_build(void **st)
{
    sbuf_t *s = ws_close_build(1000, "bye");
    assert_int_equal(s->len, 7);
    assert_memory_equal(s->data, "\x88\x05\x03\xe8" "bye", 7);
    sbuf_unref(s);
    s = ws_close_build(0, "ignored");
    assert_int_equal(s->len, 2);
    assert_memory_equal(s->data, "\x88\x00", 2);
    sbuf_unref(s);
    s = ws_close_build(1009, NULL);
    assert_int_equal(s->len, 4);
    assert_memory_equal(s->data, "\x88\x02\x03\xf1", 4);
    sbuf_unref(s);

    char r[400];
    memset(r, 'a', 200);
    r[200] = '\0';
    s = ws_close_build(1001, r);
    assert_int_equal(s->len, 2 + 125);
    assert_int_equal((uint8_t)s->data[1], 125);
    sbuf_unref(s);

    /* multi-byte characters are never cut: 2-, 3- and 4-byte ones at every alignment */
    static const char *chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t c = 0; c < 3; c++)
        for (size_t lead = 0; lead < 4; lead++) {
            size_t n = lead;
            memset(r, 'a', lead);
            while (n + strlen(chars[c]) < sizeof r) {
                memcpy(r + n, chars[c], strlen(chars[c]));
                n += strlen(chars[c]);
            }
            r[n] = '\0';
            s = ws_close_build(1000, r);
            size_t plen = (uint8_t)s->data[1];
            assert_true(plen <= 125 && plen >= 125 - 3);
            assert_int_equal(s->len, 2 + plen);
            assert_true(ws_utf8_valid((uint8_t *)s->data + 4, plen - 2));
            assert_memory_equal(s->data + 4, r, plen - 2);
            sbuf_unref(s);
        }
}

/* ---- parser: the same frames under every split ---- */

/* Builds a stream of client frames into b and the callbacks it must produce into want. */
static void stream_small(buf_t *b, buf_t *want, int compressed)
{
    uint8_t bin[126];
    fill_pattern(bin, sizeof bin, 3);

    frame_str(b, WS_OP_TEXT, 1, "hello");
    log_add(want, WS_OP_TEXT, "hello", 5);
    frame(b, WS_OP_BINARY, 1, 0, NULL, 0);
    log_add(want, WS_OP_BINARY, NULL, 0);
    frame(b, WS_OP_BINARY, 1, 0, bin, 125);
    log_add(want, WS_OP_BINARY, bin, 125);
    frame(b, WS_OP_BINARY, 1, 0, bin, 126);
    log_add(want, WS_OP_BINARY, bin, 126);

    /* fragmented text, a ping and a pong in the middle, the euro sign split across frames */
    frame_str(b, WS_OP_TEXT, 0, "fra\xe2\x82");
    frame_str(b, WS_OP_PING, 1, "p");
    log_add(want, WS_OP_PING, "p", 1);
    frame_str(b, WS_OP_CONT, 0, "\xac" "men");
    frame(b, WS_OP_PONG, 1, 0, NULL, 0);
    log_add(want, WS_OP_PONG, NULL, 0);
    frame(b, WS_OP_CONT, 0, 0, NULL, 0);
    frame_str(b, WS_OP_CONT, 1, "ted");
    log_add(want, WS_OP_TEXT, "fra\xe2\x82\xac" "mented", 12);

    /* non-minimal lengths are accepted */
    frame_raw(b, 0x81, 2, "short", 5);
    log_add(want, WS_OP_TEXT, "short", 5);
    frame_raw(b, 0x82, 8, "long", 4);
    log_add(want, WS_OP_BINARY, "long", 4);
    frame_raw(b, 0x89, 0, "", 0);
    log_add(want, WS_OP_PING, NULL, 0);

    if (compressed) {
        const char *t = "compressed compressed compressed text \xe2\x82\xac";
        buf_t z;
        buf_init(&z);
        z_compress(&z, t, strlen(t), 6, Z_SYNC_FLUSH);
        frame(b, WS_OP_TEXT, 1, 1, z.data, z.len);
        log_add(want, WS_OP_TEXT, t, strlen(t));

        /* the same, fragmented, with a ping in between */
        size_t h = z.len / 2;
        frame(b, WS_OP_BINARY, 0, 1, z.data, h);
        frame_str(b, WS_OP_PING, 1, "mid");
        log_add(want, WS_OP_PING, "mid", 3);
        frame(b, WS_OP_CONT, 0, 0, z.data + h, 1);
        frame(b, WS_OP_CONT, 1, 0, z.data + h + 1, z.len - h - 1);
        log_add(want, WS_OP_BINARY, t, strlen(t));

        /* a stream that ends with a final block (BFINAL): no tail is needed */
        buf_reset(&z);
        z_compress(&z, "final", 5, 6, Z_FINISH);
        frame(b, WS_OP_TEXT, 1, 1, z.data, z.len);
        log_add(want, WS_OP_TEXT, "final", 5);

        /* an empty compressed message: one 00 byte, and also nothing at all */
        frame(b, WS_OP_TEXT, 1, 1, "", 1);
        log_add(want, WS_OP_TEXT, NULL, 0);
        frame(b, WS_OP_BINARY, 1, 1, NULL, 0);
        log_add(want, WS_OP_BINARY, NULL, 0);
        /* two messages sharing one deflate context (client context takeover) */
        z_stream zs;
        memset(&zs, 0, sizeof zs);
        assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
        const char *m = "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"takeover\"}";
        for (int i = 0; i < 2; i++) {
            buf_reset(&z);
            z_deflate(&zs, &z, m, strlen(m), Z_SYNC_FLUSH);
            frame(b, WS_OP_TEXT, 1, 1, z.data, z.len);
            log_add(want, WS_OP_TEXT, m, strlen(m));
        }
        deflateEnd(&zs);
        buf_free(&z);
    }

    frame(b, WS_OP_CLOSE, 1, 0, "\x03\xe8" "bye", 5);
    log_add(want, WS_OP_CLOSE, "\x03\xe8" "bye", 5);
    frame(b, WS_OP_CLOSE, 1, 0, NULL, 0);
    log_add(want, WS_OP_CLOSE, NULL, 0);
}

static void check_run(const cfg_t *c, const buf_t *b, const buf_t *want, const size_t *cuts,
                      size_t ncuts, size_t step)
{
    rec_t r = {0};
    int code;
    assert_int_equal(feed_pieces(c, b->data, b->len, cuts, ncuts, step, &r, &code), 0);
    assert_int_equal(r.log.len, want->len);
    assert_memory_equal(r.log.data, want->data, want->len);
    buf_free(&r.log);
}

static void splits_check(const cfg_t *c, int compressed)
{
    buf_t b, want;
    buf_init(&b);
    buf_init(&want);
    stream_small(&b, &want, compressed);

    check_run(c, &b, &want, NULL, 0, 0);
    check_run(c, &b, &want, NULL, 0, 1);
    check_run(c, &b, &want, NULL, 0, 7);
    for (size_t i = 0; i <= b.len; i++) check_run(c, &b, &want, &i, 1, 0);

    /* random splits into several pieces */
    uint32_t seed = 99;
    for (int run = 0; run < 500; run++) {
        size_t cuts[6];
        for (int k = 0; k < 6; k++) {
            seed = seed * 1103515245u + 12345u;
            cuts[k] = (seed >> 8) % (b.len + 1);
        }
        for (int k = 1; k < 6; k++)   /* insertion sort */
            for (int j = k; j > 0 && cuts[j - 1] > cuts[j]; j--) {
                size_t t = cuts[j];
                cuts[j] = cuts[j - 1];
                cuts[j - 1] = t;
            }
        check_run(c, &b, &want, cuts, 6, 0);
    }
    buf_free(&b);
    buf_free(&want);
}

static void test_parser_splits(void **st) { splits_check(&CFG, 0); }
static void test_parser_splits_deflate(void **st) { splits_check(&CFG_Z, 1); }

static void test_parser_large(void **st)
{
    buf_t b, want;
    buf_init(&b);
    buf_init(&want);
    size_t n = 70000;
    uint8_t *d = malloc(n);
    fill_pattern(d, n, 11);
    frame(&b, WS_OP_BINARY, 1, 0, d, 65535);
    log_add(&want, WS_OP_BINARY, d, 65535);
    size_t edge1 = b.len;
    frame(&b, WS_OP_BINARY, 1, 0, d, 65536);
    log_add(&want, WS_OP_BINARY, d, 65536);
    size_t edge2 = b.len;

    /* a long multi-byte text in three fragments cut inside characters */
    char *t = malloc(n);
    for (size_t i = 0; i + 3 <= n; i += 3) memcpy(t + i, i % 2 ? "\xe2\x82\xac" : "a\xc3\xa9", 3);
    size_t tn = n / 3 * 3;
    frame(&b, WS_OP_TEXT, 0, 0, t, 1001);
    frame(&b, WS_OP_CONT, 0, 0, t + 1001, 30001);
    frame(&b, WS_OP_CONT, 1, 0, t + 31002, tn - 31002);
    log_add(&want, WS_OP_TEXT, t, tn);
    size_t edge3 = b.len;
    frame(&b, WS_OP_BINARY, 1, 0, d, 70000);
    log_add(&want, WS_OP_BINARY, d, 70000);

    check_run(&CFG, &b, &want, NULL, 0, 0);
    check_run(&CFG, &b, &want, NULL, 0, 1);
    check_run(&CFG, &b, &want, NULL, 0, 4093);
    size_t edges[] = {0, edge1, edge2, edge3, b.len};
    for (size_t e = 0; e < 5; e++)
        for (size_t k = 0; k < 40; k++) {
            size_t cut = edges[e] + k >= 20 ? edges[e] + k - 20 : 0;
            if (cut > b.len) cut = b.len;
            check_run(&CFG, &b, &want, &cut, 1, 0);
        }
    free(d);
    free(t);
    buf_free(&b);
    buf_free(&want);
}

/* Big messages leave no big buffer behind. */
static void test_parser_buffers_released(void **st)
{
    ws_parser_t p;
    ws_parser_init(&p, 1 << 20, 1 << 20);
    buf_t b;
    buf_init(&b);
    uint8_t *d = calloc(1, 200000);
    frame(&b, WS_OP_BINARY, 0, 0, d, 100000);
    frame(&b, WS_OP_CONT, 1, 0, d, 100000);
    rec_t r = {0};
    assert_int_equal(ws_parser_feed(&p, (uint8_t *)b.data, b.len, rec_cb, &r), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(p.msg.cap, 0);
    /* small ones keep theirs */
    buf_reset(&b);
    frame(&b, WS_OP_BINARY, 0, 0, d, 100);
    frame(&b, WS_OP_CONT, 1, 0, d, 100);
    assert_int_equal(ws_parser_feed(&p, (uint8_t *)b.data, b.len, rec_cb, &r), 0);
    assert_int_equal(r.calls, 2);
    assert_true(p.msg.cap > 0);
    assert_int_equal(p.msg.len, 0);
    assert_int_equal(p.msg_opcode, 0);
    ws_parser_free(&p);
    free(d);
    buf_free(&b);
    buf_free(&r.log);
}

/* Whole frames in the fed buffer come back as pointers into it, unmasked in place. */
static const uint8_t *zc_base;
static size_t zc_len;
static int zc_cb(void *ctx, int op, uint8_t *d, size_t n)
{
    int *inside = ctx;
    if (n) *inside += d >= zc_base && d + n <= zc_base + zc_len;
    return 0;
}

static void test_parser_zero_copy(void **st)
{
    buf_t b;
    buf_init(&b);
    frame_str(&b, WS_OP_TEXT, 1, "zero copy");
    frame_str(&b, WS_OP_PING, 1, "ping");
    frame(&b, WS_OP_BINARY, 1, 0, "\x00\x01\x02", 3);
    ws_parser_t p;
    ws_parser_init(&p, 1000, 1000);
    int inside = 0;
    zc_base = (uint8_t *)b.data;
    zc_len = b.len;
    assert_int_equal(ws_parser_feed(&p, (uint8_t *)b.data, b.len, zc_cb, &inside), 0);
    assert_int_equal(inside, 3);
    assert_memory_equal(b.data + 6, "zero copy", 9);
    ws_parser_free(&p);
    buf_free(&b);
}

static void test_parser_stop(void **st)
{
    buf_t b;
    buf_init(&b);
    frame_str(&b, WS_OP_TEXT, 1, "one");
    frame_str(&b, WS_OP_TEXT, 1, "two");
    frame_str(&b, WS_OP_TEXT, 1, "three");
    for (int step = 0; step < 2; step++) {
        rec_t r = {.stop_at = 2};
        int code;
        assert_int_equal(feed_pieces(&CFG, b.data, b.len, NULL, 0, (size_t)step, &r, &code), 1);
        assert_int_equal(r.calls, 2);
        buf_free(&r.log);
    }
    buf_free(&b);
}

/* ---- parser: violations ---- */

/* Every way of feeding b must end in -1 with code, after the callbacks in `calls`. */
static void expect_fail(const cfg_t *c, const buf_t *b, int code, int calls)
{
    for (size_t step = 0; step < 3; step++) {
        rec_t r = {0};
        int got;
        assert_int_equal(feed_pieces(c, b->data, b->len, NULL, 0, step, &r, &got), GW_EINVAL);
        assert_int_equal(got, code);
        assert_int_equal(r.calls, calls);
        buf_free(&r.log);
    }
    if (b->len > 600) return;
    for (size_t i = 0; i <= b->len; i++) {
        rec_t r = {0};
        int got;
        assert_int_equal(feed_pieces(c, b->data, b->len, &i, 1, 0, &r, &got), GW_EINVAL);
        assert_int_equal(got, code);
        buf_free(&r.log);
    }
}

/* Feeding only the first `n` bytes of b must already fail with code (fail fast). */
static void expect_fail_prefix(const cfg_t *c, const buf_t *b, size_t n, int code)
{
    rec_t r = {0};
    int got;
    assert_int_equal(feed_pieces(c, b->data, n, NULL, 0, 0, &r, &got), GW_EINVAL);
    assert_int_equal(got, code);
    buf_free(&r.log);
    if (n) {
        assert_int_equal(feed_pieces(c, b->data, n - 1, NULL, 0, 0, &r, &got), 0);
        buf_free(&r.log);
    }
}

static void test_parser_violations(void **st)
{
    buf_t b;
    buf_init(&b);
#define CASE(cfg, code, calls, build)                                                          \
    do {                                                                                       \
        buf_reset(&b);                                                                         \
        build;                                                                                 \
        expect_fail(cfg, &b, code, calls);                                                     \
    } while (0)

    /* unmasked */
    CASE(&CFG, 1002, 0, buf_append(&b, "\x81\x05hello", 7));
    buf_reset(&b);
    buf_append(&b, "\x81\x05hello", 7);
    expect_fail_prefix(&CFG, &b, 2, 1002);
    /* reserved bits */
    CASE(&CFG, 1002, 0, frame_raw(&b, 0xA1, 0, "x", 1));
    CASE(&CFG, 1002, 0, frame_raw(&b, 0x91, 0, "x", 1));
    CASE(&CFG, 1002, 0, frame(&b, WS_OP_TEXT, 1, 1, "x", 1));          /* RSV1, no inflater */
    CASE(&CFG_Z, 1002, 0, frame(&b, WS_OP_TEXT, 0, 1, "", 1);
         frame(&b, WS_OP_CONT, 1, 1, "", 1));                          /* RSV1 on continuation */
    CASE(&CFG_Z, 1002, 0, frame(&b, WS_OP_PING, 1, 1, "", 1));         /* RSV1 on control */
    /* unknown opcodes */
    for (int op = 3; op < 16; op++) {
        if (op >= WS_OP_CLOSE && op <= WS_OP_PONG) continue;
        CASE(&CFG, 1002, 0, frame_str(&b, op, 1, "x"));
        expect_fail_prefix(&CFG, &b, 2, 1002);
    }
    /* control frames: too long, fragmented */
    uint8_t big[200] = {0};
    CASE(&CFG, 1002, 0, frame(&b, WS_OP_PING, 1, 0, big, 126));
    CASE(&CFG, 1002, 0, frame(&b, WS_OP_PONG, 1, 0, big, 200));
    CASE(&CFG, 1002, 0, frame_raw(&b, 0x89, 8, big, 5));
    CASE(&CFG, 1002, 0, frame_str(&b, WS_OP_PING, 0, "x"));
    CASE(&CFG, 1002, 0, frame(&b, WS_OP_CLOSE, 0, 0, "\x03\xe8", 2));
    /* fragmentation errors */
    CASE(&CFG, 1002, 0, frame_str(&b, WS_OP_CONT, 1, "x"));
    CASE(&CFG, 1002, 1, frame_str(&b, WS_OP_TEXT, 1, "a"); frame_str(&b, WS_OP_CONT, 1, "x"));
    CASE(&CFG, 1002, 0, frame_str(&b, WS_OP_TEXT, 0, "a"); frame_str(&b, WS_OP_TEXT, 1, "x"));
    CASE(&CFG, 1002, 1, frame_str(&b, WS_OP_BINARY, 0, "a"); frame_str(&b, WS_OP_PING, 1, "");
         frame_str(&b, WS_OP_BINARY, 1, "x"));
    /* 64-bit length with the high bit set: fails as soon as the length is read */
    CASE(&CFG, 1002, 0, buf_append(&b, "\x82\xff\x80\x00\x00\x00\x00\x00\x00\x05", 10);
         buf_append(&b, MASK, 4); buf_append(&b, "hello", 5));
    expect_fail_prefix(&CFG, &b, 14, 1002);
    /* close payloads */
    CASE(&CFG, 1002, 0, frame(&b, WS_OP_CLOSE, 1, 0, "\x03", 1));
    static const unsigned bad_codes[] = {0,    999,  1004, 1005, 1006, 1015,
                                         1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof bad_codes / sizeof *bad_codes; i++) {
        uint8_t cl[4] = {(uint8_t)(bad_codes[i] >> 8), (uint8_t)bad_codes[i], 'o', 'k'};
        CASE(&CFG, 1002, 0, frame(&b, WS_OP_CLOSE, 1, 0, cl, 4));
    }
    CASE(&CFG, 1007, 0, frame(&b, WS_OP_CLOSE, 1, 0, "\x03\xe8\xc0\x80", 4));
    CASE(&CFG, 1007, 0, frame(&b, WS_OP_CLOSE, 1, 0, "\x03\xe8\xe2\x82", 4));
    /* invalid UTF-8 in text */
    CASE(&CFG, 1007, 0, frame_str(&b, WS_OP_TEXT, 1, "bad \xed\xa0\x80 surrogate"));
    CASE(&CFG, 1007, 0, frame_str(&b, WS_OP_TEXT, 1, "cut \xe2\x82"));
    CASE(&CFG, 1007, 1, frame_str(&b, WS_OP_TEXT, 0, "cut \xe2"); frame_str(&b, WS_OP_PING, 1, "");
         frame_str(&b, WS_OP_CONT, 1, "\x82"));
    CASE(&CFG, 1007, 0, frame_str(&b, WS_OP_TEXT, 0, "a"); frame_str(&b, WS_OP_CONT, 0, "\xf4\x90");
         frame_str(&b, WS_OP_CONT, 1, "\x80\x80"));

    /* fail fast: a fragment without FIN, and a frame cut right after the bad byte */
    buf_reset(&b);
    frame_str(&b, WS_OP_TEXT, 0, "valid \xce\xba then \xc0");
    expect_fail_prefix(&CFG, &b, b.len, 1007);
    buf_reset(&b);
    frame_str(&b, WS_OP_TEXT, 1, "0123456789\xf5 and much more text after the bad byte");
    expect_fail_prefix(&CFG, &b, 6 + 11, 1007);

    /* compressed: bad UTF-8 after inflating, corrupt stream */
    buf_t z;
    buf_init(&z);
    z_compress(&z, "\xc0\xaf", 2, 6, Z_SYNC_FLUSH);
    CASE(&CFG_Z, 1007, 0, frame(&b, WS_OP_TEXT, 1, 1, z.data, z.len));
    CASE(&CFG_Z, 1007, 0, frame(&b, WS_OP_BINARY, 1, 1, "\xff\xff\xff\xff", 4));
    CASE(&CFG_Z, 1007, 1, frame(&b, WS_OP_BINARY, 1, 1, "", 1);
         frame(&b, WS_OP_BINARY, 0, 1, "\x07", 1); frame(&b, WS_OP_CONT, 1, 0, "\xff", 1));
    buf_free(&z);
    buf_free(&b);
#undef CASE
}

/* ---- parser: limits ---- */

static void test_parser_limits(void **st)
{
    cfg_t c = {100, 250, 0};
    buf_t b, want;
    buf_init(&b);
    buf_init(&want);
    uint8_t d[300] = {0};

    frame(&b, WS_OP_BINARY, 1, 0, d, 100);
    log_add(&want, WS_OP_BINARY, d, 100);
    frame(&b, WS_OP_BINARY, 0, 0, d, 100);
    frame(&b, WS_OP_CONT, 0, 0, d, 100);
    frame(&b, WS_OP_CONT, 1, 0, d, 50);
    log_add(&want, WS_OP_BINARY, d, 250);
    check_run(&c, &b, &want, NULL, 0, 0);
    check_run(&c, &b, &want, NULL, 0, 1);

    /* one byte over the frame limit: 1009 from the header alone */
    buf_reset(&b);
    frame(&b, WS_OP_BINARY, 1, 0, d, 101);
    expect_fail(&c, &b, 1009, 0);
    expect_fail_prefix(&c, &b, 6, 1009);
    /* one byte over the message limit, found at the last fragment's header */
    buf_reset(&b);
    frame(&b, WS_OP_TEXT, 0, 0, d, 100);
    frame(&b, WS_OP_CONT, 0, 0, d, 100);
    size_t hdr3 = b.len + 6;
    frame(&b, WS_OP_CONT, 1, 0, d, 51);
    expect_fail(&c, &b, 1009, 0);
    expect_fail_prefix(&c, &b, hdr3, 1009);
    /* a huge 64-bit length */
    buf_reset(&b);
    buf_append(&b, "\x82\xff\x00\x00\x01\x00\x00\x00\x00\x00", 10);
    buf_append(&b, MASK, 4);
    expect_fail_prefix(&c, &b, 14, 1009);

    /* compressed: the inflated size counts */
    cfg_t cz = {1 << 20, 1000, 1};
    buf_t z;
    buf_init(&z);
    uint8_t a[1001];
    memset(a, 'a', sizeof a);
    z_compress(&z, a, 1000, 6, Z_SYNC_FLUSH);
    buf_reset(&b);
    buf_reset(&want);
    frame(&b, WS_OP_BINARY, 1, 1, z.data, z.len);
    log_add(&want, WS_OP_BINARY, a, 1000);
    check_run(&cz, &b, &want, NULL, 0, 0);
    check_run(&cz, &b, &want, NULL, 0, 1);
    buf_reset(&z);
    z_compress(&z, a, 1001, 6, Z_SYNC_FLUSH);
    buf_reset(&b);
    frame(&b, WS_OP_BINARY, 1, 1, z.data, z.len);
    expect_fail(&cz, &b, 1009, 0);

    buf_free(&z);
    buf_free(&b);
    buf_free(&want);
}

static void test_deflate_bomb(void **st)
{
    size_t n = 10 << 20, max = 1 << 20;
    uint8_t *zero = calloc(1, n);
    buf_t z, b, out;
    buf_init(&z);
    buf_init(&b);
    buf_init(&out);
    z_compress(&z, zero, n, 9, Z_SYNC_FLUSH);
    free(zero);
    assert_true(z.len < 64 * 1024);

    /* the inflater stops at the limit: it never holds the whole bomb */
    ws_inflater_t *zi = ws_inflater_new(NULL);
    assert_int_equal(ws_inflater_run(zi, (uint8_t *)z.data, z.len, max, &out), WS_CLOSE_TOO_BIG);
    assert_true(out.len <= max + 1);
    assert_true(out.cap <= 2 * max);
    ws_inflater_free(zi);

    frame(&b, WS_OP_BINARY, 1, 1, z.data, z.len);
    cfg_t c = {max, max, 1};
    rec_t r = {0};
    int code;
    assert_int_equal(feed_whole(&c, &b, &r, &code), GW_EINVAL);
    assert_int_equal(code, 1009);
    assert_int_equal(r.calls, 0);
    assert_int_equal(feed_pieces(&c, b.data, b.len, NULL, 0, 1, &r, &code), GW_EINVAL);
    assert_int_equal(code, 1009);
    buf_free(&z);
    buf_free(&b);
    buf_free(&out);
}

/* ---- permessage-deflate ---- */

typedef struct {
    const char *offer;
    const char *response;          /* NULL: declined */
    int cnct, sbits, cbits;
} pmd_case_t;

static void test_pmd_negotiate(void **st)
{
    static const pmd_case_t cases[] = {
        {"permessage-deflate", "permessage-deflate; server_no_context_takeover", 0, 15, 15},
        {"permessage-deflate; client_max_window_bits",
         "permessage-deflate; server_no_context_takeover; client_max_window_bits=15", 0, 15, 15},
        {"permessage-deflate; client_max_window_bits=10; server_max_window_bits=12; "
         "client_no_context_takeover; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=12; client_max_window_bits=10", 1, 12, 10},
        {"  PerMessage-Deflate ;client_max_window_bits = \"8\" ",
         "permessage-deflate; server_no_context_takeover; client_max_window_bits=8", 0, 15, 8},
        {"x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9",
         "permessage-deflate; server_no_context_takeover; server_max_window_bits=9", 0, 9, 15},
        /* offers we skip, then one we take */
        {"permessage-deflate; server_max_window_bits=8, permessage-deflate",
         "permessage-deflate; server_no_context_takeover", 0, 15, 15},
        {"permessage-deflate; foo=\"a,b\", permessage-deflate; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 1, 15, 15},
        {"permessage-deflate; client_max_window_bits; client_max_window_bits, permessage-deflate",
         "permessage-deflate; server_no_context_takeover", 0, 15, 15},
        {",, permessage-deflate ,", "permessage-deflate; server_no_context_takeover", 0, 15, 15},
        /* declined */
        {"", NULL, 0, 0, 0},
        {"deflate-frame", NULL, 0, 0, 0},
        {"permessage-deflate; unknown", NULL, 0, 0, 0},
        {"permessage-deflate; server_no_context_takeover; server_no_context_takeover", NULL,
         0, 0, 0},
        {"permessage-deflate; server_no_context_takeover=1", NULL, 0, 0, 0},
        {"permessage-deflate; client_no_context_takeover=\"\"", NULL, 0, 0, 0},
        {"permessage-deflate; server_max_window_bits", NULL, 0, 0, 0},
        {"permessage-deflate; server_max_window_bits=16", NULL, 0, 0, 0},
        {"permessage-deflate; server_max_window_bits=08", NULL, 0, 0, 0},
        {"permessage-deflate; client_max_window_bits=7", NULL, 0, 0, 0},
        {"permessage-deflate; client_max_window_bits=abc", NULL, 0, 0, 0},
        {"permessage-deflate; client_max_window_bits=\"10", NULL, 0, 0, 0},
        {"permessage-deflate; client_max_window_bits=1000000000000", NULL, 0, 0, 0},
        {"permessage-deflate;", NULL, 0, 0, 0},
        {"permessage-deflate junk", NULL, 0, 0, 0},
        {"permessage-deflatex", NULL, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const pmd_case_t *c = &cases[i];
        ws_pmd_params_t p = {-1, -1, -1};
        char out[256];
        int ok = ws_pmd_negotiate(c->offer, &p, out, sizeof out);
        if (!c->response) {
            assert_int_equal(ok, 0);
            assert_string_equal(out, "");
            continue;
        }
        assert_int_equal(ok, 1);
        assert_string_equal(out, c->response);
        assert_int_equal(p.client_no_context_takeover, c->cnct);
        assert_int_equal(p.server_max_window_bits, c->sbits);
        assert_int_equal(p.client_max_window_bits, c->cbits);
    }
    ws_pmd_params_t p;
    char small[10];
    assert_int_equal(ws_pmd_negotiate("permessage-deflate", &p, small, sizeof small), 0);
    assert_string_equal(small, "");
    assert_int_equal(ws_pmd_negotiate(NULL, &p, small, sizeof small), 0);
}

static void test_deflate_round_trip(void **st)
{
    size_t big = 200000;
    uint8_t *rnd = malloc(big);
    fill_pattern(rnd, big, 5);
    char *txt = malloc(big);
    for (size_t i = 0; i < big; i++) txt[i] = "chat gateway "[i % 13];
    struct { const void *d; size_t n; } msgs[] = {
        {"", 0}, {"a", 1}, {"hello hello hello", 17}, {txt, big}, {rnd, big}, {txt, 1000},
    };
    int bits[] = {9, 12, 15};
    for (size_t bi = 0; bi < 3; bi++)
        for (int nct = 0; nct < 2; nct++) {
            ws_deflater_t *d = ws_deflater_new(bits[bi]);
            ws_pmd_params_t pp = {nct, bits[bi], 15};
            ws_inflater_t *zi = ws_inflater_new(&pp);
            assert_non_null(d);
            assert_non_null(zi);
            for (int round = 0; round < 2; round++)
                for (size_t m = 0; m < sizeof msgs / sizeof *msgs; m++) {
                    buf_t c, out;
                    buf_init(&c);
                    buf_init(&out);
                    buf_append(&c, "pre", 3);      /* appends, keeping what is there */
                    assert_int_equal(ws_deflater_run(d, msgs[m].d, msgs[m].n, &c), 0);
                    assert_memory_equal(c.data, "pre", 3);
                    assert_true(c.len - 3 < 4 || memcmp(c.data + c.len - 4, "\x00\x00\xff\xff", 4));
                    uint8_t *cd = (uint8_t *)c.data + 3;
                    assert_int_equal(ws_inflater_run(zi, cd, c.len - 3, big, &out), 0);
                    assert_int_equal(out.len, msgs[m].n);
                    if (out.len) assert_memory_equal(out.data, msgs[m].d, out.len);
                    buf_free(&c);
                    buf_free(&out);
                }
            ws_deflater_free(d);
            ws_inflater_free(zi);
        }

    /* a deflated message through the parser */
    ws_deflater_t *d = ws_deflater_new(15);
    buf_t c, b, want;
    buf_init(&c);
    buf_init(&b);
    buf_init(&want);
    assert_int_equal(ws_deflater_run(d, (uint8_t *)txt, 5000, &c), 0);
    frame(&b, WS_OP_TEXT, 1, 1, c.data, c.len);
    log_add(&want, WS_OP_TEXT, txt, 5000);
    check_run(&CFG_Z, &b, &want, NULL, 0, 0);
    check_run(&CFG_Z, &b, &want, NULL, 0, 1);
    ws_deflater_free(d);
    ws_deflater_free(NULL);
    ws_inflater_free(NULL);
    buf_free(&c);
    buf_free(&b);
    buf_free(&want);
    free(rnd);
    free(txt);
}

/* With client_no_context_takeover the inflater forgets each message, so a stream that
 * refers back to the previous message no longer decodes. */
static void test_inflate_context(void **st)
{
    const char *m = "the quick brown fox jumps over the lazy dog, the quick brown fox";
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    buf_t m1, m2, out;
    buf_init(&m1);
    buf_init(&m2);
    buf_init(&out);
    z_deflate(&zs, &m1, m, strlen(m), Z_SYNC_FLUSH);
    z_deflate(&zs, &m2, m, strlen(m), Z_SYNC_FLUSH);
    deflateEnd(&zs);
    assert_true(m2.len < m1.len);

    for (int nct = 0; nct < 2; nct++) {
        ws_pmd_params_t pp = {nct, 15, 15};
        ws_inflater_t *zi = ws_inflater_new(&pp);
        buf_reset(&out);
        assert_int_equal(ws_inflater_run(zi, (uint8_t *)m1.data, m1.len, 1000, &out), 0);
        assert_int_equal(out.len, strlen(m));
        buf_reset(&out);
        int rc = ws_inflater_run(zi, (uint8_t *)m2.data, m2.len, 1000, &out);
        if (!nct) {
            assert_int_equal(rc, 0);
            assert_int_equal(out.len, strlen(m));
            assert_memory_equal(out.data, m, out.len);
        } else {
            assert_int_equal(rc, WS_CLOSE_INVALID_DATA);
        }
        ws_inflater_free(zi);
    }
    buf_free(&m1);
    buf_free(&m2);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_utf8_cases),
        cmocka_unit_test(test_utf8_long),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_frame_build),
        cmocka_unit_test(test_close_build),
        cmocka_unit_test(test_parser_splits),
        cmocka_unit_test(test_parser_splits_deflate),
        cmocka_unit_test(test_parser_large),
        cmocka_unit_test(test_parser_buffers_released),
        cmocka_unit_test(test_parser_zero_copy),
        cmocka_unit_test(test_parser_stop),
        cmocka_unit_test(test_parser_violations),
        cmocka_unit_test(test_parser_limits),
        cmocka_unit_test(test_deflate_bomb),
        cmocka_unit_test(test_pmd_negotiate),
        cmocka_unit_test(test_deflate_round_trip),
        cmocka_unit_test(test_inflate_context),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
