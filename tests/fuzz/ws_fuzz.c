/* libFuzzer target for ws.c. The input's first two bytes pick the settings (inflater or not,
 * limits, the callback that stops the parser) and a split seed; the rest is fed to the frame
 * parser once whole and once in random pieces, and both runs must give the same callbacks and
 * the same verdict. The same bytes also
 * go through the UTF-8 validator in pieces, the extension negotiator, and a deflate round trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/ws.h"

typedef struct {
    buf_t *log;
    int calls, stop_at;            /* the stop_at-th callback returns nonzero; 0 never */
} fuzz_rec_t;

static int fuzz_log_cb(void *ctx, int op, uint8_t *d, size_t n)
{
    fuzz_rec_t *rec = ctx;
    buf_t *log = rec->log;
    uint8_t h[9];
    uint64_t n64 = n;
    h[0] = (uint8_t)op;
    memcpy(h + 1, &n64, 8);
    buf_append(log, h, 9);
    if (!d) abort();                              /* never NULL, even when empty */
    buf_append(log, d, n);
    if ((op == WS_OP_PING || op == WS_OP_PONG || op == WS_OP_CLOSE) && n > WS_MAX_CONTROL) abort();
    return ++rec->calls == rec->stop_at;
}

/* Runs the parser over a copy of data; seed 0 feeds it whole. Returns rc, or the close code. */
static int fuzz_parse(const uint8_t *data, size_t len, int flags, uint32_t seed, buf_t *log)
{
    static const size_t limits[4] = {125, 1000, 65536, 1 << 20};
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    ws_parser_t p;
    ws_parser_init(&p, limits[(flags >> 2) & 3], limits[(flags >> 4) & 3]);
    ws_pmd_params_t pp = {(flags >> 1) & 1, 15, 15};
    ws_inflater_t *z = (flags & 1) ? ws_inflater_new(&pp) : NULL;
    p.inflater = z;
    fuzz_rec_t rec = {log, 0, flags >> 6};
    size_t at = 0;
    int rc = 0;
    while (at < len && rc == 0) {
        size_t n = len - at;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t pick = (seed >> 16) % 17;
            if (pick < n) n = pick;
        }
        rc = ws_parser_feed(&p, copy + at, n, fuzz_log_cb, &rec);
        at += n;
    }
    if (rc < 0) {
        if (p.close_code != 1002 && p.close_code != 1007 && p.close_code != 1009) abort();
        if (!p.reason) abort();
        rc = p.close_code;
    }
    ws_parser_free(&p);
    ws_inflater_free(z);
    free(copy);
    return rc;
}

static void fuzz_utf8(const uint8_t *data, size_t len, uint32_t seed)
{
    ws_utf8_t u;
    ws_utf8_init(&u);
    size_t at = 0;
    int bad = 0;
    while (at < len && !bad) {
        seed = seed * 1103515245u + 12345u;
        size_t n = (seed >> 16) % 9;
        if (n > len - at) n = len - at;
        bad = ws_utf8_feed(&u, data + at, n) < 0;
        at += n;
    }
    int ok = !bad && ws_utf8_complete(&u);
    if (ok != ws_utf8_valid(data, len)) abort();
}

static void fuzz_negotiate(const uint8_t *data, size_t len)
{
    char *s = malloc(len + 1);
    memcpy(s, data, len);
    s[len] = '\0';
    ws_pmd_params_t p, q;
    char out[256], again[256];
    if (ws_pmd_negotiate(s, &p, out, sizeof out)) {
        /* our answer is itself an acceptable offer */
        if (!ws_pmd_negotiate(out, &q, again, sizeof again)) abort();
        if (p.server_max_window_bits < 9 || p.server_max_window_bits > 15) abort();
        if (p.client_max_window_bits < 8 || p.client_max_window_bits > 15) abort();
    }
    free(s);
}

static void fuzz_round_trip(const uint8_t *data, size_t len, int bits)
{
    ws_deflater_t *d = ws_deflater_new(bits);
    ws_inflater_t *z = ws_inflater_new(NULL);
    buf_t c, out;
    buf_init(&c);
    buf_init(&out);
    if (ws_deflater_run(d, data, len, &c)) abort();
    if (ws_inflater_run(z, (uint8_t *)c.data, c.len, len, &out)) abort();
    if (out.len != len || (len && memcmp(out.data, data, len))) abort();
    buf_free(&c);
    buf_free(&out);
    ws_deflater_free(d);
    ws_inflater_free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int flags = data[0];
    uint32_t seed = data[1] | 0x100u;
    data += 2;
    size -= 2;

    buf_t a, b;
    buf_init(&a);
    buf_init(&b);
    int ra = fuzz_parse(data, size, flags, 0, &a);
    int rb = fuzz_parse(data, size, flags, seed, &b);
    if (ra != rb || a.len != b.len || (a.len && memcmp(a.data, b.data, a.len))) abort();
    buf_free(&a);
    buf_free(&b);

    fuzz_utf8(data, size, seed);
    fuzz_negotiate(data, size);
    if (size < 4096) fuzz_round_trip(data, size, 9 + (flags & 7) % 7);
    return 0;
}
