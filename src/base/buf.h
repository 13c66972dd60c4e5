/* buf: byte buffers, no I/O.
 *
 * buf_t is a growable byte buffer with one owner. sbuf_t is an immutable, refcounted block
 * that several write queues share during fan-out: the producer fills it once, then every
 * queue takes a reference, and the last sbuf_unref frees it. Refcounts are atomic so a block
 * may cross worker threads. Allocation failure aborts (a gateway out of memory cannot answer). */
#ifndef CHATGW_BUF_H
#define CHATGW_BUF_H

#include <stddef.h>
#include <stdarg.h>

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);                          /* releases storage; b may be reused after buf_init */
void buf_reserve(buf_t *b, size_t extra);         /* ensures cap >= len + extra */
void buf_append(buf_t *b, const void *p, size_t n);
void buf_append_str(buf_t *b, const char *s);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_reset(buf_t *b);                         /* len = 0, keeps storage */
const char *buf_cstr(buf_t *b);                   /* NUL-terminated view (not counted in len) */

typedef struct {
    unsigned refs;
    size_t len;
    char data[];
} sbuf_t;

sbuf_t *sbuf_new(size_t len);                     /* refs = 1, data uninitialised */
sbuf_t *sbuf_from(const void *p, size_t len);     /* copy of p, refs = 1 */
sbuf_t *sbuf_ref(sbuf_t *s);
void sbuf_unref(sbuf_t *s);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
