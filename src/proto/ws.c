/* ws: the RFC 6455 frame codec and RFC 7692 permessage-deflate; see ws.h.
 *
 * The parser is a small state machine (header bytes, then payload bytes) that accepts input
 * split anywhere. A whole unfragmented frame found inside one fed buffer is unmasked in place
 * and handed to the callback without a copy; everything else is gathered in the parser's own
 * buffers. Limits are enforced from the frame header, before a byte of payload is stored, and
 * inflation stops as soon as a message passes max_message. This file never does I/O and keeps
 * no global state. */
#include "proto/ws.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>

#include <openssl/evp.h>
#include <zlib.h>

#include "base/err.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEEP_MAX (64 * 1024)    /* larger message buffers are released after each message;
                                    * memory kept, not a limit anyone sees: not a config key */
#define WS_ZCHUNK (16 * 1024)      /* inflate output step: a bomb is cut within one step; the
                                    * limit itself is max_message_bytes (config) */

enum { WS_ST_HEADER, WS_ST_PAYLOAD, WS_ST_DEAD };

/* ---- handshake ---- */

static int ws_b64_char(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

int ws_accept_key(const char *key, size_t len, char out[WS_ACCEPT_SIZE])
{
    /* 16 bytes encode to 22 characters and "==", nothing else. */
    if (len != 24 || key[22] != '=' || key[23] != '=') return GW_EINVAL;
    for (size_t i = 0; i < 22; i++)
        if (!ws_b64_char((unsigned char)key[i])) return GW_EINVAL;

    char src[24 + sizeof WS_GUID];
    memcpy(src, key, 24);
    memcpy(src + 24, WS_GUID, sizeof WS_GUID - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (EVP_Digest(src, 24 + sizeof WS_GUID - 1, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return -EIO;
    EVP_EncodeBlock((unsigned char *)out, md, 20);
    out[28] = '\0';
    return 0;
}

int ws_close_code_valid(unsigned code)
{
    if (code >= 3000 && code <= 4999) return 1;
    if (code < 1000 || code > 1014) return 0;
    return code != 1004 && code != 1005 && code != 1006;
}

/* ---- UTF-8 ----
 * The state packs what the open sequence still needs: the count of continuation bytes left
 * and the range allowed for the next one (narrowed after E0, ED, F0 and F4, which is how
 * overlongs, surrogates and code points above U+10FFFF fail at their second byte). */

#define WS_UTF8_BAD 0xFFFFFFFFu

static uint32_t ws_utf8_pack(uint32_t need, uint32_t lo, uint32_t hi)
{
    return need | lo << 8 | hi << 16;
}

static uint32_t ws_utf8_lead(uint8_t c)
{
    if (c < 0x80) return 0;
    if (c < 0xC2) return WS_UTF8_BAD;
    if (c < 0xE0) return ws_utf8_pack(1, 0x80, 0xBF);
    if (c == 0xE0) return ws_utf8_pack(2, 0xA0, 0xBF);
    if (c == 0xED) return ws_utf8_pack(2, 0x80, 0x9F);
    if (c < 0xF0) return ws_utf8_pack(2, 0x80, 0xBF);
    if (c == 0xF0) return ws_utf8_pack(3, 0x90, 0xBF);
    if (c < 0xF4) return ws_utf8_pack(3, 0x80, 0xBF);
    if (c == 0xF4) return ws_utf8_pack(3, 0x80, 0x8F);
    return WS_UTF8_BAD;
}

static uint32_t ws_utf8_step(uint32_t s, uint8_t c)
{
    if (s == 0) return ws_utf8_lead(c);
    uint32_t need = s & 0xFF, lo = (s >> 8) & 0xFF, hi = (s >> 16) & 0xFF;
    if (c < lo || c > hi) return WS_UTF8_BAD;
    return need == 1 ? 0 : ws_utf8_pack(need - 1, 0x80, 0xBF);
}

void ws_utf8_init(ws_utf8_t *u) { u->state = 0; }

/* The length of the ASCII run at the start of p, in whole 8-byte words (a word at a time:
 * ASCII runs dominate chat traffic). */
static size_t ws_ascii_words(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; n - i >= 16; i += 16) {
        uint64_t a, b;
        memcpy(&a, p + i, 8);
        memcpy(&b, p + i + 8, 8);
        if ((a | b) & 0x8080808080808080ull) break;
    }
    for (; n - i >= 8; i += 8) {
        uint64_t a;
        memcpy(&a, p + i, 8);
        if (a & 0x8080808080808080ull) break;
    }
    return i;
}

int ws_utf8_feed(ws_utf8_t *u, const uint8_t *p, size_t n)
{
    uint32_t s = u->state;
    size_t i = 0;
    if (s == WS_UTF8_BAD) return GW_EINVAL;
    while (i < n) {
        if (s == 0) {
            i += ws_ascii_words(p + i, n - i);
            if (i == n) break;
        }
        s = ws_utf8_step(s, p[i++]);
        if (s == WS_UTF8_BAD) break;
    }
    u->state = s;
    return s == WS_UTF8_BAD ? GW_EINVAL : 0;
}

int ws_utf8_complete(const ws_utf8_t *u) { return u->state == 0; }

int ws_utf8_valid(const uint8_t *p, size_t n)
{
    ws_utf8_t u;
    ws_utf8_init(&u);
    return ws_utf8_feed(&u, p, n) == 0 && ws_utf8_complete(&u);
}

void ws_mask(uint8_t *p, size_t n, const uint8_t key[4], size_t off)
{
    uint8_t k[8];
    memcpy(k, key + (off & 3), 4 - (off & 3));   /* the key from phase off, twice */
    memcpy(k + 4 - (off & 3), key, off & 3);
    memcpy(k + 4, k, 4);
    size_t i = 0;
    if (n >= 8) {
        uint64_t k64, v;
        memcpy(&k64, k, 8);
        for (; i + 8 <= n; i += 8) {
            memcpy(&v, p + i, 8);
            v ^= k64;
            memcpy(p + i, &v, 8);
        }
    }
    for (; i < n; i++) p[i] ^= k[i & 7];       /* i & 7 keeps the phase: 8 is a multiple of 4 */
}

/* ---- permessage-deflate negotiation ---- */

typedef struct {
    int server_nct, client_nct;    /* 0 or 1 */
    int server_bits;               /* 0 when absent */
    int client_bits;               /* -1 absent, 0 offered without a value */
} ws_pmd_offer_t;

static int ws_pmd_tchar(int c)
{
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?={}", c);
}

static size_t ws_pmd_token(const char *s)
{
    size_t n = 0;
    while (ws_pmd_tchar((unsigned char)s[n])) n++;
    return n;
}

static const char *ws_pmd_space(const char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    return s;
}

/* Moves to the next top-level ',' (or the end); a comma inside quotes does not count. */
static const char *ws_pmd_skip(const char *s)
{
    while (*s && *s != ',') {
        if (*s++ != '"') continue;
        while (*s && *s != '"') s += (*s == '\\' && s[1]) ? 2 : 1;
        if (*s) s++;
    }
    return s;
}

/* Reads a token or quoted-string value into v; clears *ok when it is malformed or long. */
static const char *ws_pmd_value(const char *s, char *v, size_t vlen, int *ok)
{
    size_t i = 0;
    if (*s == '"') {
        for (s++; *s && *s != '"'; s++) {
            if (*s == '\\' && s[1]) s++;
            if (i + 1 < vlen) v[i++] = *s;
            else *ok = 0;
        }
        if (*s == '"') s++;
        else *ok = 0;
    } else {
        size_t n = ws_pmd_token(s);
        if (n < vlen) memcpy(v, s, i = n);
        else *ok = 0;
        s += n;
    }
    v[i] = '\0';
    return s;
}

/* "8".."15" without leading zeros, at least lo: the number, or GW_EINVAL. */
static int ws_pmd_bits(const char *v, int lo)
{
    size_t n = strlen(v);
    if (n < 1 || n > 2 || v[0] < '1' || v[0] > '9' || (n == 2 && (v[1] < '0' || v[1] > '9')))
        return GW_EINVAL;
    int bits = n == 1 ? v[0] - '0' : (v[0] - '0') * 10 + v[1] - '0';
    return bits >= lo && bits <= 15 ? bits : GW_EINVAL;
}

static int ws_pmd_name_is(const char *name, size_t n, const char *want)
{
    return n == strlen(want) && !strncasecmp(name, want, n);
}

/* Applies one parameter; 0 when it is unknown, repeated or has a bad value. */
static int ws_pmd_param_apply(ws_pmd_offer_t *o, const char *name, size_t n, const char *v)
{
    if (ws_pmd_name_is(name, n, "server_no_context_takeover")) {
        if (v || o->server_nct) return 0;
        return o->server_nct = 1;
    }
    if (ws_pmd_name_is(name, n, "client_no_context_takeover")) {
        if (v || o->client_nct) return 0;
        return o->client_nct = 1;
    }
    if (ws_pmd_name_is(name, n, "server_max_window_bits")) {
        /* 8 is legal but zlib cannot deflate raw with a 256-byte window: decline the offer */
        if (!v || o->server_bits) return 0;
        return (o->server_bits = ws_pmd_bits(v, 9)) > 0;
    }
    if (ws_pmd_name_is(name, n, "client_max_window_bits")) {
        if (o->client_bits != -1) return 0;
        o->client_bits = v ? ws_pmd_bits(v, 8) : 0;
        return o->client_bits >= 0;
    }
    return 0;
}

/* Parses one offer and moves *sp past it; 1 when it is a permessage-deflate offer we take. */
static int ws_pmd_offer_parse(const char **sp, ws_pmd_offer_t *o)
{
    memset(o, 0, sizeof *o);
    o->client_bits = -1;
    const char *s = ws_pmd_space(*sp);
    size_t n = ws_pmd_token(s);
    int ok = ws_pmd_name_is(s, n, "permessage-deflate");
    s = ws_pmd_space(s + n);
    while (ok && *s == ';') {
        const char *name = ws_pmd_space(s + 1);
        size_t nlen = ws_pmd_token(name);
        char v[8];
        int has_value = 0;
        s = ws_pmd_space(name + nlen);
        if (*s == '=') {
            has_value = 1;
            s = ws_pmd_space(ws_pmd_value(ws_pmd_space(s + 1), v, sizeof v, &ok));
        }
        if (ok) ok = nlen && ws_pmd_param_apply(o, name, nlen, has_value ? v : NULL);
    }
    if (*s != ',' && *s != '\0') ok = 0;
    s = ws_pmd_skip(s);
    *sp = *s == ',' ? s + 1 : s;
    return ok;
}

int ws_pmd_negotiate(const char *offer, ws_pmd_params_t *params, char *out, size_t outlen)
{
    const char *s = offer ? offer : "";
    ws_pmd_offer_t o;
    if (outlen) out[0] = '\0';
    while (*s) {
        if (!ws_pmd_offer_parse(&s, &o)) continue;
        char sbits[40] = "", cbits[40] = "";
        if (o.server_bits)
            snprintf(sbits, sizeof sbits, "; server_max_window_bits=%d", o.server_bits);
        if (o.client_bits >= 0)
            snprintf(cbits, sizeof cbits, "; client_max_window_bits=%d",
                     o.client_bits ? o.client_bits : 15);
        int n = snprintf(out, outlen, "permessage-deflate; server_no_context_takeover%s%s%s",
                         o.client_nct ? "; client_no_context_takeover" : "", sbits, cbits);
        if (n < 0 || (size_t)n >= outlen) {
            if (outlen) out[0] = '\0';
            return 0;
        }
        params->client_no_context_takeover = o.client_nct;
        params->server_max_window_bits = o.server_bits ? o.server_bits : 15;
        params->client_max_window_bits = o.client_bits > 0 ? o.client_bits : 15;
        return 1;
    }
    return 0;
}

/* ---- inflate / deflate ---- */

struct ws_inflater_s {
    z_stream zs;
    int reset_each;                /* client_no_context_takeover */
    int ended;                     /* the last inflate call met a final block */
};

struct ws_deflater_s {
    z_stream zs;
};

ws_inflater_t *ws_inflater_new(const ws_pmd_params_t *p)
{
    ws_inflater_t *z = xcalloc(1, sizeof *z);
    /* a 15-bit window decodes a stream made with any smaller one */
    if (inflateInit2(&z->zs, -15) != Z_OK) {
        free(z);
        return NULL;
    }
    z->reset_each = p ? p->client_no_context_takeover : 0;
    return z;
}

void ws_inflater_free(ws_inflater_t *z)
{
    if (!z) return;
    inflateEnd(&z->zs);
    free(z);
}

/* Inflates in[0..n) appending to out, never letting out pass start + max + 1 bytes. */
static int ws_inflater_step(ws_inflater_t *z, const uint8_t *in, size_t n, size_t max,
                            size_t start, buf_t *out)
{
    z->zs.next_in = (Bytef *)in;
    z->zs.avail_in = (uInt)n;
    for (;;) {
        size_t produced = out->len - start;
        if (produced > max) return WS_CLOSE_TOO_BIG;
        size_t left = max - produced;
        size_t room = left >= WS_ZCHUNK ? WS_ZCHUNK : left + 1;
        buf_reserve(out, room);
        z->zs.next_out = (Bytef *)out->data + out->len;
        z->zs.avail_out = (uInt)room;
        uInt before_in = z->zs.avail_in;
        int rc = inflate(&z->zs, Z_SYNC_FLUSH);
        out->len += room - z->zs.avail_out;
        z->ended = rc == Z_STREAM_END;
        if (rc == Z_STREAM_END) {
            /* a final block ends the stream; what follows starts a new one */
            if (inflateReset(&z->zs) != Z_OK) return WS_CLOSE_INVALID_DATA;
        } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
            return WS_CLOSE_INVALID_DATA;
        }
        if (out->len - start > max) return WS_CLOSE_TOO_BIG;
        if (z->zs.avail_in == 0 && z->zs.avail_out > 0) return 0;
        if (rc == Z_BUF_ERROR && z->zs.avail_in == before_in && z->zs.avail_out == room)
            return WS_CLOSE_INVALID_DATA;   /* no progress possible */
    }
}

int ws_inflater_run(ws_inflater_t *z, const uint8_t *in, size_t n, size_t max, buf_t *out)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    size_t start = out->len;
    /* an empty payload is an empty message; inflating the bare tail would leave the stream
     * inside a stored-block header */
    if (n == 0) return 0;
    int rc = n > UINT_MAX ? WS_CLOSE_TOO_BIG : ws_inflater_step(z, in, n, max, start, out);
    /* after a final block (BFINAL) the stream is complete: the tail would start a new one */
    if (!rc && !z->ended) rc = ws_inflater_step(z, tail, sizeof tail, max, start, out);
    /* a reset fails only on a stream that inflateInit2 never set up: say so if it ever does */
    if ((rc || z->reset_each) && inflateReset(&z->zs) != Z_OK && !rc) rc = WS_CLOSE_INTERNAL;
    return rc;
}

ws_deflater_t *ws_deflater_new(int window_bits)
{
    if (window_bits < 9) window_bits = 9;
    if (window_bits > 15) window_bits = 15;
    ws_deflater_t *z = xcalloc(1, sizeof *z);
    /* level 3: chat messages are small, speed matters more than the last few bytes */
    if (deflateInit2(&z->zs, 3, Z_DEFLATED, -window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(z);
        return NULL;
    }
    return z;
}

void ws_deflater_free(ws_deflater_t *z)
{
    if (!z) return;
    deflateEnd(&z->zs);
    free(z);
}

int ws_deflater_run(ws_deflater_t *z, const uint8_t *in, size_t n, buf_t *out)
{
    size_t start = out->len;
    if (n > UINT_MAX) return GW_ETOOBIG;
    z->zs.next_in = (Bytef *)in;
    z->zs.avail_in = (uInt)n;
    /* room for the whole result at once in the usual case; later rounds add chunks */
    size_t room = deflateBound(&z->zs, (uLong)n) + 16;
    if (room > 16 * WS_ZCHUNK) room = 16 * WS_ZCHUNK;
    int rc;
    do {
        buf_reserve(out, room);
        z->zs.next_out = (Bytef *)out->data + out->len;
        z->zs.avail_out = (uInt)room;
        rc = deflate(&z->zs, Z_SYNC_FLUSH);
        out->len += room - z->zs.avail_out;
        room = WS_ZCHUNK;
    } while ((rc == Z_OK || rc == Z_BUF_ERROR) && (z->zs.avail_in || !z->zs.avail_out));

    /* a sync flush ends in an empty stored block, 00 00 ff ff, which RFC 7692 drops */
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    int ok = (rc == Z_OK || rc == Z_BUF_ERROR) && out->len - start >= 4 &&
             !memcmp(out->data + out->len - 4, tail, 4);
    if (deflateReset(&z->zs) != Z_OK) ok = 0;
    out->len = ok ? out->len - 4 : start;
    return ok ? 0 : -EIO;
}

/* ---- frame parser ---- */

void ws_parser_init(ws_parser_t *p, size_t max_frame, size_t max_message)
{
    memset(p, 0, sizeof *p);
    p->max_frame = max_frame;
    p->max_message = max_message;
    p->state = WS_ST_HEADER;
    p->hdr_need = 2;
    buf_init(&p->msg);
    buf_init(&p->ctl);
    buf_init(&p->inflated);
}

void ws_parser_free(ws_parser_t *p)
{
    buf_free(&p->msg);
    buf_free(&p->ctl);
    buf_free(&p->inflated);
}

int ws_parser_idle(const ws_parser_t *p)
{
    return p->state == WS_ST_HEADER && p->hdr_len == 0 && p->msg_opcode == 0;
}

static int ws_parser_fail(ws_parser_t *p, int code, const char *reason)
{
    p->state = WS_ST_DEAD;
    p->close_code = code;
    p->reason = reason;
    return GW_EINVAL;
}

static void ws_buf_recycle(buf_t *b)
{
    if (b->cap > WS_KEEP_MAX) buf_free(b);
    else buf_reset(b);
}

static void ws_message_reset(ws_parser_t *p)
{
    p->msg_opcode = 0;
    p->msg_compressed = 0;
    ws_buf_recycle(&p->msg);
    ws_buf_recycle(&p->inflated);
}

/* A compressed payload may be slightly larger than its inflated form (stored blocks), so
 * its wire size gets a little slack; the inflated size is held to the exact limit. */
static uint64_t ws_limit(size_t lim, int compressed)
{
    if (!compressed || lim > SIZE_MAX / 2) return lim;
    return (uint64_t)lim + lim / 1024 + 64;
}

/* Checks the first two header bytes, so that a bad frame fails before its length arrives. */
static int ws_header_check(ws_parser_t *p)
{
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    unsigned len7 = b1 & 0x7F;
    p->fin = b0 >> 7;
    p->rsv1 = (b0 >> 6) & 1;
    p->opcode = b0 & 0x0F;
    p->masked = b1 >> 7;
    if (b0 & 0x30) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "reserved bits set");
    if (!p->masked) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "unmasked frame");
    if (p->opcode & 0x08) {
        if (p->opcode > WS_OP_PONG) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "unknown opcode");
        if (!p->fin) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "fragmented control frame");
        if (len7 > WS_MAX_CONTROL)
            return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "control frame too long");
        if (p->rsv1) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "reserved bits set");
    } else if (p->opcode > WS_OP_BINARY) {
        return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "unknown opcode");
    } else if (p->opcode == WS_OP_CONT) {
        if (!p->msg_opcode) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "unexpected continuation");
        if (p->rsv1) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "reserved bits set");
    } else {
        if (p->msg_opcode) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "expected continuation");
        if (p->rsv1 && !p->inflater)
            return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "reserved bits set");
    }
    p->hdr_need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
    return 0;
}

/* The whole header is in: reads the length and mask, applies the limits, opens a message. */
static int ws_header_finish(ws_parser_t *p)
{
    unsigned len7 = p->hdr[1] & 0x7F;
    const uint8_t *h = p->hdr + 2;
    uint64_t n = len7;
    if (len7 == 126) {
        n = (uint64_t)h[0] << 8 | h[1];
        h += 2;
    } else if (len7 == 127) {
        n = 0;
        for (int i = 0; i < 8; i++) n = n << 8 | h[i];
        h += 8;
        if (n >> 63) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "invalid frame length");
    }
    memcpy(p->mask, h, 4);
    p->payload_len = n;
    p->payload_got = 0;
    p->state = WS_ST_PAYLOAD;
    if (p->opcode & 0x08) return 0;

    int compressed = p->opcode == WS_OP_CONT ? p->msg_compressed : p->rsv1;
    if (n > ws_limit(p->max_frame, compressed))
        return ws_parser_fail(p, WS_CLOSE_TOO_BIG, "frame too big");
    if (p->msg.len + n > ws_limit(p->max_message, compressed))
        return ws_parser_fail(p, WS_CLOSE_TOO_BIG, "message too big");
    if (p->opcode != WS_OP_CONT) {
        p->msg_opcode = p->opcode;
        p->msg_compressed = p->rsv1;
        ws_utf8_init(&p->utf8);
    }
    return 0;
}

static int ws_header_feed(ws_parser_t *p, const uint8_t *data, size_t len, size_t *pos)
{
    size_t take = p->hdr_need - p->hdr_len;
    if (take > len - *pos) take = len - *pos;
    memcpy(p->hdr + p->hdr_len, data + *pos, take);
    p->hdr_len += take;
    *pos += take;
    if (p->hdr_len < p->hdr_need) return 0;
    if (p->hdr_need == 2) return ws_header_check(p);   /* a masked header needs 6 or more */
    return ws_header_finish(p);
}

static int ws_deliver(ws_parser_t *p, int opcode, uint8_t *d, size_t n, ws_frame_cb cb, void *ctx)
{
    /* never hand out NULL, even for an empty payload */
    return cb(ctx, opcode, d ? d : p->hdr, n) ? 1 : 0;
}

static int ws_control_end(ws_parser_t *p, uint8_t *d, size_t n, ws_frame_cb cb, void *ctx)
{
    if (p->opcode == WS_OP_CLOSE && n) {
        if (n == 1) return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "invalid close payload");
        if (!ws_close_code_valid((unsigned)d[0] << 8 | d[1]))
            return ws_parser_fail(p, WS_CLOSE_PROTOCOL, "invalid close code");
        if (!ws_utf8_valid(d + 2, n - 2))
            return ws_parser_fail(p, WS_CLOSE_INVALID_DATA, "invalid utf-8 in close reason");
    }
    return ws_deliver(p, p->opcode, d, n, cb, ctx);
}

/* The final frame of a message is in: d/n is the whole message when `whole` (fast path or
 * inflated), else it is p->msg and the UTF-8 state has seen it already. */
static int ws_message_end(ws_parser_t *p, uint8_t *d, size_t n, int whole, ws_frame_cb cb,
                          void *ctx)
{
    if (p->msg_compressed) {
        buf_reset(&p->inflated);
        int rc = ws_inflater_run(p->inflater, d, n, p->max_message, &p->inflated);
        if (rc)
            return ws_parser_fail(p, rc, rc == WS_CLOSE_TOO_BIG ? "message too big"
                                                                : "invalid compressed data");
        d = (uint8_t *)p->inflated.data;
        n = p->inflated.len;
        whole = 1;
    }
    if (p->msg_opcode == WS_OP_TEXT && (whole ? !ws_utf8_valid(d, n) : !ws_utf8_complete(&p->utf8)))
        return ws_parser_fail(p, WS_CLOSE_INVALID_DATA, "invalid utf-8");
    int rc = ws_deliver(p, p->msg_opcode, d, n, cb, ctx);
    ws_message_reset(p);
    return rc;
}

/* Consumes payload bytes; at the end of a frame hands it on and returns to the header. */
static int ws_payload_feed(ws_parser_t *p, uint8_t *data, size_t len, size_t *pos,
                           ws_frame_cb cb, void *ctx)
{
    int control = p->opcode & 0x08;
    uint64_t left = p->payload_len - p->payload_got;
    size_t avail = len - *pos;
    uint8_t *d = avail ? data + *pos : NULL;

    if (p->payload_got == 0 && left <= avail && (control || (p->fin && p->opcode != WS_OP_CONT))) {
        /* fast path: the whole frame is in the caller's buffer; unmask it there */
        *pos += left;
        ws_mask(d, (size_t)left, p->mask, 0);
        p->state = WS_ST_HEADER;
        p->hdr_len = 0;
        p->hdr_need = 2;
        if (control) return ws_control_end(p, d, (size_t)left, cb, ctx);
        return ws_message_end(p, d, (size_t)left, 1, cb, ctx);
    }

    size_t take = left < avail ? (size_t)left : avail;
    size_t off = (size_t)(p->payload_got & 3);
    if (take && control) {
        buf_append(&p->ctl, d, take);
        ws_mask((uint8_t *)p->ctl.data + p->payload_got, take, p->mask, off);
    } else if (take) {
        size_t at = p->msg.len;
        buf_append(&p->msg, d, take);
        uint8_t *m = (uint8_t *)p->msg.data + at;
        ws_mask(m, take, p->mask, off);
        if (p->msg_opcode == WS_OP_TEXT && !p->msg_compressed && ws_utf8_feed(&p->utf8, m, take))
            return ws_parser_fail(p, WS_CLOSE_INVALID_DATA, "invalid utf-8");
    }
    *pos += take;
    p->payload_got += take;
    if (p->payload_got < p->payload_len) return 0;

    p->state = WS_ST_HEADER;
    p->hdr_len = 0;
    p->hdr_need = 2;
    if (control) {
        int rc = ws_control_end(p, (uint8_t *)p->ctl.data, (size_t)p->payload_len, cb, ctx);
        buf_free(&p->ctl);         /* rare (a control frame split across reads): keep no buffer */
        return rc;
    }
    if (!p->fin) return 0;
    return ws_message_end(p, (uint8_t *)p->msg.data, p->msg.len, 0, cb, ctx);
}

int ws_parser_feed(ws_parser_t *p, uint8_t *data, size_t len, ws_frame_cb cb, void *ctx)
{
    size_t pos = 0;
    while (p->state != WS_ST_DEAD) {
        int rc;
        if (p->state == WS_ST_HEADER) {
            if (pos == len) return 0;
            rc = ws_header_feed(p, data, len, &pos);
        } else {
            rc = ws_payload_feed(p, data, len, &pos, cb, ctx);
            if (!rc && pos == len && p->state == WS_ST_PAYLOAD) return 0;
        }
        if (rc) return rc;
    }
    return GW_EINVAL;
}

/* ---- encoders ---- */

/* Writes the header of an unfragmented server frame (FIN set, unmasked); returns its length. */
static size_t ws_header_write(uint8_t *out, int opcode, int rsv1, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++) out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

sbuf_t *ws_frame_build(int opcode, int rsv1, const void *payload, size_t len)
{
    /* one allocation, the header written straight into it */
    size_t hl = len < 126 ? 2 : len <= 0xFFFF ? 4 : 10;
    sbuf_t *s = sbuf_new(hl + len);
    ws_header_write((uint8_t *)s->data, opcode, rsv1, len);
    if (len) memcpy(s->data + hl, payload, len);
    return s;
}

sbuf_t *ws_close_build(unsigned code, const char *reason)
{
    uint8_t pl[WS_MAX_CONTROL];
    size_t n = 0;
    if (code) {
        size_t r = reason ? strlen(reason) : 0;
        if (r > WS_MAX_CONTROL - 2) {
            r = WS_MAX_CONTROL - 2;
            /* back off to a character boundary: reason[r] must not be a continuation byte */
            while (r && ((unsigned char)reason[r] & 0xC0) == 0x80) r--;
        }
        pl[0] = (uint8_t)(code >> 8);
        pl[1] = (uint8_t)code;
        if (r) memcpy(pl + 2, reason, r);
        n = 2 + r;
    }
    return ws_frame_build(WS_OP_CLOSE, 0, pl, n);
}
