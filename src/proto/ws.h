/* ws: the RFC 6455 WebSocket codec and RFC 7692 permessage-deflate, no I/O.
 *
 * It computes the handshake accept key, parses client frames incrementally (any split of the
 * bytes gives the same result, down to one byte per feed), validates UTF-8 across fragments,
 * reassembles and inflates messages under size limits, and encodes server frames. It never
 * touches a socket: the caller feeds bytes and writes what it gets back. Failures are negative
 * codes from base/err.h; close codes (WS_CLOSE_*) are answers for the peer, not errors. */
#ifndef CHATGW_WS_H
#define CHATGW_WS_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005,     /* never on the wire */
    WS_CLOSE_ABNORMAL = 1006,      /* never on the wire */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
};

#define WS_MAX_HEADER 14           /* 2 + 8 length + 4 mask (RFC 6455 5.2: fixed) */
#define WS_MAX_CONTROL 125         /* control payload bytes (RFC 6455 5.5: fixed) */
#define WS_ACCEPT_SIZE 29          /* Sec-WebSocket-Accept: base64 of a sha1 (28) and a NUL */

/* Writes the Sec-WebSocket-Accept value for key into out (NUL-terminated, 28 chars).
 * Returns 0, GW_EINVAL when key is not the base64 encoding of exactly 16 bytes, or -EIO
 * (UV_EIO) when OpenSSL's sha1 fails. */
int ws_accept_key(const char *key, size_t len, char out[WS_ACCEPT_SIZE]);

/* 1 when code may appear in a close frame on the wire (1000-1003, 1007-1014 less the
 * unassigned ones, 3000-4999), else 0. 1005, 1006 and 1015 are never valid. */
int ws_close_code_valid(unsigned code);

/* Incremental UTF-8 validation (RFC 3629: no overlongs, surrogates, or code points above
 * U+10FFFF). Feed fails at the first byte that can never become valid. */
typedef struct {
    uint32_t state;
} ws_utf8_t;

void ws_utf8_init(ws_utf8_t *u);
int ws_utf8_feed(ws_utf8_t *u, const uint8_t *p, size_t n);   /* 0 valid so far, GW_EINVAL invalid */
int ws_utf8_complete(const ws_utf8_t *u);                     /* 1 when no sequence is open */
int ws_utf8_valid(const uint8_t *p, size_t n);                /* 1 when p is complete, valid UTF-8 */

/* XORs p with the 4-byte mask, starting at mask offset off (for split payloads). */
void ws_mask(uint8_t *p, size_t n, const uint8_t key[4], size_t off);

/* permessage-deflate (RFC 7692). The server always answers server_no_context_takeover, so an
 * outgoing compressed message depends on no earlier one and can be shared by every recipient
 * that negotiated the same server window. */
typedef struct {
    int client_no_context_takeover;
    int server_max_window_bits;    /* 9..15: the window our deflater may use */
    int client_max_window_bits;    /* 8..15: the window the client's deflater uses */
} ws_pmd_params_t;

/* Reads a Sec-WebSocket-Extensions request header, accepts the first permessage-deflate offer
 * it can honour, fills params and writes the response header value (NUL-terminated) to out.
 * Returns 1 when accepted, 0 when no offer is acceptable (send no extension header). */
int ws_pmd_negotiate(const char *offer, ws_pmd_params_t *params, char *out, size_t outlen);

/* Per-connection inflater; allocated by the caller once deflate is negotiated. */
typedef struct ws_inflater_s ws_inflater_t;
ws_inflater_t *ws_inflater_new(const ws_pmd_params_t *p);
void ws_inflater_free(ws_inflater_t *z);
/* Inflates one whole message (without the trailing 00 00 ff ff, which it appends) into out.
 * Returns 0 or the close code to answer with (an answer to the peer, not an error code):
 * WS_CLOSE_TOO_BIG when the output would pass max bytes (a compression bomb stops there, not
 * after inflating everything), WS_CLOSE_INVALID_DATA for a corrupt stream. */
int ws_inflater_run(ws_inflater_t *z, const uint8_t *in, size_t n, size_t max, buf_t *out);

/* Deflater for outgoing messages, reset after every message (no context takeover). */
typedef struct ws_deflater_s ws_deflater_t;
ws_deflater_t *ws_deflater_new(int window_bits);
void ws_deflater_free(ws_deflater_t *z);
/* Appends the compressed message, trailing 00 00 ff ff removed, to out. Returns 0, GW_ETOOBIG
 * past 4 GiB (zlib's counts), or -EIO (UV_EIO) when zlib fails, with out as it was. */
int ws_deflater_run(ws_deflater_t *z, const uint8_t *in, size_t n, buf_t *out);

/* Incremental frame parser for the server side (client frames must be masked).
 *
 * The callback sees whole messages and control frames:
 *   WS_OP_TEXT / WS_OP_BINARY: a complete message, reassembled from fragments, inflated when it
 *     was compressed, and (TEXT) validated as UTF-8;
 *   WS_OP_PING / WS_OP_PONG: the control payload (<= 125 bytes);
 *   WS_OP_CLOSE: the raw close payload, already checked: empty, or a valid code + UTF-8 reason.
 * Control frames may arrive between the fragments of a message. data points into the caller's
 * buffer (unmasked in place) or the parser's own; it is valid only during the callback. The
 * callback returns 0 to go on, nonzero to stop parsing (the rest of the input is ignored). */
typedef int (*ws_frame_cb)(void *ctx, int opcode, uint8_t *data, size_t len);

typedef struct {
    /* settings: set by ws_parser_init, may be changed before the first feed */
    size_t max_frame, max_message;
    ws_inflater_t *inflater;       /* not owned; non-NULL allows RSV1 on a message's first frame */

    /* error, valid after feed returns GW_EINVAL */
    int close_code;                /* 1002, 1007 or 1009 */
    const char *reason;            /* static string, for the close frame and the log */

    /* private state (bytes: a parser per connection) */
    uint8_t state;
    uint8_t hdr[WS_MAX_HEADER];
    uint8_t hdr_len, hdr_need;
    uint8_t fin, opcode, rsv1, masked;
    uint8_t mask[4];
    uint8_t msg_opcode;            /* opcode of the message being assembled, 0 when none */
    uint8_t msg_compressed;
    uint64_t payload_len, payload_got;
    buf_t msg;                     /* message being assembled across frames */
    buf_t ctl;                     /* control payload split across feeds */
    ws_utf8_t utf8;
    buf_t inflated;
} ws_parser_t;

void ws_parser_init(ws_parser_t *p, size_t max_frame, size_t max_message);
void ws_parser_free(ws_parser_t *p);
/* 1 when the parser is between frames with no message in assembly: it holds nothing that the
 * next feed needs beyond its settings, so it may be freed and a fresh one used then. */
int ws_parser_idle(const ws_parser_t *p);
/* Returns 0 when every byte was consumed, 1 when the callback stopped it, or GW_EINVAL on a
 * protocol violation (p->close_code and p->reason tell how to close; the parser is then dead). */
int ws_parser_feed(ws_parser_t *p, uint8_t *data, size_t len, ws_frame_cb cb, void *ctx);

/* One complete unfragmented server frame in a new shared buffer (refs = 1). */
sbuf_t *ws_frame_build(int opcode, int rsv1, const void *payload, size_t len);
/* A close frame: code (omitted when 0) and a reason truncated to fit 125 bytes. */
sbuf_t *ws_close_build(unsigned code, const char *reason);

#endif
