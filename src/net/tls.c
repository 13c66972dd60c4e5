/* tls: OpenSSL over memory BIOs; see tls.h. */
#ifdef CHATGW_FAULTS
#define _GNU_SOURCE            /* memmem */
#endif
#include "net/tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "base/err.h"
#include "base/hex.h"
#ifdef CHATGW_FAULTS
#include <stdlib.h>

#include "base/log.h"
#endif

#define FINGERPRINT_BYTES 32           /* SHA-256 */
/* TLS 1.2: forward-secret AEAD suites only; 1.3 keeps OpenSSL's defaults (all AEAD) */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

struct tls_ctx_s {
    SSL_CTX *ctx;
    char *cert, *key;
    char fingerprint[2 * FINGERPRINT_BYTES + 1];
};

struct tls_conn_s {
    SSL *ssl;
    BIO *rbio, *wbio;              /* owned by ssl */
};

static void tls_err(char *err, size_t errlen, const char *what, const char *path)
{
    unsigned long e = ERR_get_error();
    char detail[200] = "";
    if (e) ERR_error_string_n(e, detail, sizeof detail);
    ERR_clear_error();
    snprintf(err, errlen, "%s %s: %s", what, path, detail[0] ? detail : "failed");
}

static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                           unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, http11, sizeof http11 - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;   /* no ALPN match: carry on without one */
    return SSL_TLSEXT_ERR_OK;
}

/* The fingerprint of ctx's certificate: 0, or GW_EINVAL with err. */
static int tls_fingerprint(SSL_CTX *ctx, const char *cert, char fingerprint[2 * FINGERPRINT_BYTES + 1], char *err,
                           size_t errlen)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (!x || X509_digest(x, EVP_sha256(), md, &mdlen) != 1 || mdlen != FINGERPRINT_BYTES) {
        tls_err(err, errlen, "certificate digest", cert);
        return GW_EINVAL;
    }
    hex_encode(md, FINGERPRINT_BYTES, fingerprint);
    return 0;
}

static SSL_CTX *tls_ctx_build(const char *cert, const char *key, char fingerprint[2 * FINGERPRINT_BYTES + 1],
                              char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_err(err, errlen, "SSL_CTX_new", "");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        tls_err(err, errlen, "minimum protocol", "TLS 1.2");
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        tls_err(err, errlen, "cipher list", TLS12_CIPHERS);
        goto fail;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        tls_err(err, errlen, "certificate", cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        tls_err(err, errlen, "private key", key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_err(err, errlen, "key does not match certificate", cert);
        goto fail;
    }
    if (tls_fingerprint(ctx, cert, fingerprint, err, errlen) < 0) goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

tls_ctx_t *tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    tls_ctx_t *t = xcalloc(1, sizeof *t);
    t->ctx = tls_ctx_build(cert, key, t->fingerprint, err, errlen);
#ifdef CHATGW_FAULTS
    if (getenv("CHATGW_FAULT_TLS_WRITE"))
        log_warn("fault injection armed", "{s:s}", "tls_write_marker", getenv("CHATGW_FAULT_TLS_WRITE"));
#endif
    if (!t->ctx) {
        free(t);
        return NULL;
    }
    t->cert = xstrdup(cert);
    t->key = xstrdup(key);
    return t;
}

int tls_ctx_reload(tls_ctx_t *t, char *err, size_t errlen)
{
    char fp[2 * FINGERPRINT_BYTES + 1];
    SSL_CTX *ctx = tls_ctx_build(t->cert, t->key, fp, err, errlen);
    if (!ctx) return GW_EINVAL;
    if (!strcmp(fp, t->fingerprint)) {
        SSL_CTX_free(ctx);
        return 0;
    }
    SSL_CTX_free(t->ctx);          /* live connections hold their own references */
    t->ctx = ctx;
    memcpy(t->fingerprint, fp, sizeof fp);
    return 1;
}

const char *tls_ctx_fingerprint(const tls_ctx_t *t) { return t->fingerprint; }

void tls_ctx_free(tls_ctx_t *t)
{
    if (!t) return;
    SSL_CTX_free(t->ctx);
    free(t->cert);
    free(t->key);
    free(t);
}

tls_conn_t *tls_conn_new(tls_ctx_t *t)
{
    tls_conn_t *c = xcalloc(1, sizeof *c);
    c->ssl = SSL_new(t->ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) abort();   /* out of memory, like xmalloc */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_accept_state(c->ssl);
    return c;
}

void tls_conn_free(tls_conn_t *c)
{
    if (!c) return;
    SSL_free(c->ssl);              /* frees both BIOs */
    free(c);
}

static void tls_drain(tls_conn_t *c, buf_t *wire)
{
    char *p;
    long n = BIO_get_mem_data(c->wbio, &p);
    if (n > 0) buf_append(wire, p, (size_t)n);
    (void)BIO_reset(c->wbio);
}

int tls_conn_feed(tls_conn_t *c, const void *in, size_t len, buf_t *plain, buf_t *wire, const char **why)
{
    if (len && BIO_write(c->rbio, in, (int)len) != (int)len) abort();
    int rc = 0;
    for (;;) {
        char tmp[16384];
        int n = SSL_read(c->ssl, tmp, sizeof tmp);
        if (n > 0) {
            buf_append(plain, tmp, (size_t)n);
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        if (e == SSL_ERROR_ZERO_RETURN) break;         /* close_notify: the TCP FIN follows */
        unsigned long ee = ERR_peek_last_error();
        *why = ee ? ERR_reason_error_string(ee) : "tls error";
        if (!*why) *why = "tls error";
        ERR_clear_error();
        rc = GW_EINVAL;
        break;
    }
    tls_drain(c, wire);
    return rc;
}

#ifdef CHATGW_FAULTS
/* Test builds only (cmake -DFAULT_INJECTION=ON): CHATGW_FAULT_TLS_WRITE=MARKER makes every
 * write whose plaintext contains MARKER fail, as a broken session would. */
static int tls_fault_write(const void *data, size_t len)
{
    const char *marker = getenv("CHATGW_FAULT_TLS_WRITE");
    return marker && marker[0] && memmem(data, len, marker, strlen(marker)) != NULL;
}
#endif

int tls_conn_write(tls_conn_t *c, const void *data, size_t len, buf_t *wire)
{
#ifdef CHATGW_FAULTS
    if (tls_fault_write(data, len)) return -1;
#endif
    if (len && SSL_write(c->ssl, data, (int)len) != (int)len) {
        ERR_clear_error();
        return GW_EUNAVAIL;
    }
    tls_drain(c, wire);
    return 0;
}
