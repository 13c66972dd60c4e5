/* tls: TLS termination with OpenSSL as a codec over memory BIOs: ciphertext in, plaintext out,
 * and the reverse. No socket I/O (server.c moves the bytes). A tls_ctx_t holds the current
 * certificate; tls_ctx_reload swaps in a new one for later handshakes while established
 * connections keep the one they started with (each SSL holds a reference on its SSL_CTX).
 * TLS 1.2 and later, ALPN http/1.1. */
#ifndef CHATGW_TLS_H
#define CHATGW_TLS_H

#include <stddef.h>

#include "base/buf.h"

typedef struct tls_ctx_s tls_ctx_t;
typedef struct tls_conn_s tls_conn_t;

/* Loads cert (PEM chain) and key. NULL with err on failure. */
tls_ctx_t *tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen);
/* Re-reads the files: 1 when a different certificate went live, 0 when unchanged, GW_EINVAL
 * with err when the files do not load (the current certificate keeps serving). */
int tls_ctx_reload(tls_ctx_t *t, char *err, size_t errlen);
/* SHA-256 fingerprint of the live certificate, hex (65 bytes with the NUL). */
const char *tls_ctx_fingerprint(const tls_ctx_t *t);
void tls_ctx_free(tls_ctx_t *t);

tls_conn_t *tls_conn_new(tls_ctx_t *t);
void tls_conn_free(tls_conn_t *c);
/* Feeds ciphertext from the peer. Appends decrypted bytes to plain and bytes for the peer
 * (handshake, alerts, tickets) to wire. 0, or GW_EINVAL with a reason on a fatal TLS error
 * (wire may still hold an alert worth sending). */
int tls_conn_feed(tls_conn_t *c, const void *in, size_t len, buf_t *plain, buf_t *wire, const char **why);
/* Encrypts plaintext into records appended to wire. 0, or GW_EUNAVAIL when the session has
 * failed and takes no more data. */
int tls_conn_write(tls_conn_t *c, const void *data, size_t len, buf_t *wire);

#endif
