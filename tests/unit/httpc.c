/* httpc: real libcurl transfers on a libuv loop against a small HTTP server on loopback that
 * runs on the same loop: answers with status and body, a timeout, a refused port, a body over
 * the cap, the in-flight limit, cancel and free without callbacks, and a request made from a
 * callback. Every test ends with uv_loop_close succeeding, so no handle is left behind. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/buf.h"
#include "base/err.h"
#include "net/httpc.h"

/* --- the server: one request per connection, "Connection: close" ---------------------- */

typedef struct {
    uv_tcp_t tcp;
    buf_t in;
    int answered;
} srv_conn_t;

typedef struct {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int requests;
    srv_conn_t *conns[64];
    int nconns;
} srv_t;

static void srv_conn_closed(uv_handle_t *h)
{
    srv_conn_t *c = h->data;
    buf_free(&c->in);
    free(c);
}

static void srv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(hint);
    b->len = hint;
}

static void srv_written(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void srv_send(srv_conn_t *c, int status, const char *body, size_t len)
{
    buf_t out;
    buf_init(&out);
    buf_printf(&out, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status, len);
    buf_append(&out, body, len);
    uv_write_t *w = malloc(sizeof *w);
    w->data = out.data;
    uv_buf_t b = uv_buf_init(out.data, (unsigned)out.len);
    uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, srv_written);
    c->answered = 1;
}

/* Answers once the head and the Content-Length body are in. */
static void srv_try_answer(srv_t *s, srv_conn_t *c)
{
    const char *in = buf_cstr(&c->in);
    const char *end = strstr(in, "\r\n\r\n");
    if (!end || c->answered) return;
    size_t head = (size_t)(end - in) + 4, clen = 0;
    const char *cl = strcasestr(in, "\r\nContent-Length:");
    if (cl && cl < end) clen = strtoul(cl + 17, NULL, 10);
    if (c->in.len < head + clen) return;
    s->requests++;
    char path[64] = "";
    sscanf(in, "%*s %63s", path);
    if (!strcmp(path, "/slow")) return; /* never answers */
    if (!strcmp(path, "/big")) {
        size_t n = HTTPC_BODY_MAX + 1000;
        char *big = calloc(1, n);
        memset(big, 'x', n);
        srv_send(c, 200, big, n);
        free(big);
        return;
    }
    if (!strcmp(path, "/missing")) {
        srv_send(c, 404, "no", 2);
        return;
    }
    /* /echo: method, the X-Test header and the body back */
    char method[16] = "";
    sscanf(in, "%15s", method);
    char xt[64] = "";
    const char *x = strcasestr(in, "\r\nX-Test: ");
    if (x && x < end) sscanf(x + 10, "%63[^\r]", xt);
    buf_t out;
    buf_init(&out);
    buf_printf(&out, "%s|%s|", method, xt);
    buf_append(&out, in + head, clen);
    srv_send(c, 201, out.data, out.len);
    buf_free(&out);
}

static void srv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    srv_conn_t *c = st->data;
    srv_t *s = st->loop->data;
    if (n > 0) {
        buf_append(&c->in, b->base, (size_t)n);
        srv_try_answer(s, c);
    } else if (n < 0 && !uv_is_closing((uv_handle_t *)st)) {
        uv_close((uv_handle_t *)st, srv_conn_closed);
        for (int i = 0; i < s->nconns; i++)
            if (s->conns[i] == c) s->conns[i] = NULL;
    }
    free(b->base);
}

static void srv_accept(uv_stream_t *l, int status)
{
    srv_t *s = l->loop->data;
    assert_int_equal(status, 0);
    srv_conn_t *c = calloc(1, sizeof *c);
    buf_init(&c->in);
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    assert_true(s->nconns < 64);
    s->conns[s->nconns++] = c;
    uv_read_start((uv_stream_t *)&c->tcp, srv_alloc, srv_read);
}

static void srv_start(srv_t *s, uv_loop_t *loop)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    loop->data = s;
    uv_tcp_init(loop, &s->listener);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&s->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 64, srv_accept), 0);
    struct sockaddr_in got;
    int len = sizeof got;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
    s->port = ntohs(got.sin_port);
}

static void srv_stop(srv_t *s)
{
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i] && !uv_is_closing((uv_handle_t *)&s->conns[i]->tcp))
            uv_close((uv_handle_t *)&s->conns[i]->tcp, srv_conn_closed);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* --- the client side ---------------------------------------------------------------- */

typedef struct {
    int calls, status;
    char body[256];
    size_t len;
} result_t;

static void on_done(void *ud, int status, const char *body, size_t len)
{
    result_t *r = ud;
    r->calls++;
    r->status = status;
    r->len = len;
    size_t n = len < sizeof r->body - 1 ? len : sizeof r->body - 1;
    memcpy(r->body, body, n);
    r->body[n] = 0;
}

static char *url_of(const srv_t *s, const char *path)
{
    static char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%d%s", s->port, path);
    return u;
}

/* Runs the loop until every result has been called or a bounded number of turns passed. */
static void run_until(uv_loop_t *loop, result_t **rs, int n)
{
    for (int turns = 0; turns < 100000; turns++) {
        int all = 1;
        for (int i = 0; i < n; i++) all &= rs[i]->calls > 0;
        if (all) return;
        uv_run(loop, UV_RUN_ONCE);
    }
}

static void finish(uv_loop_t *loop, srv_t *s, httpc_t *h)
{
    httpc_free(h);
    srv_stop(s);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_post_and_status(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_t s;
    srv_start(&s, &loop);
    httpc_t *h = httpc_new(&loop, 4);
    assert_non_null(h);

    char body[] = "a\0b";
    const char *hdrs[] = {"X-Test: yes", "Content-Type: text/plain", NULL};
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    assert_true(httpc_request(h, "POST", url_of(&s, "/echo"), hdrs, body, 3, 5000, on_done, &r1) > 0);
    assert_true(httpc_request(h, "GET", url_of(&s, "/missing"), NULL, NULL, 0, 5000, on_done, &r2) > 0);
    assert_true(httpc_request(h, "PUT", url_of(&s, "/echo"), NULL, "z", 1, 5000, on_done, &r3) > 0);
    assert_int_equal(httpc_inflight(h), 3);
    result_t *rs[] = {&r1, &r2, &r3};
    run_until(&loop, rs, 3);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r1.status, 201);
    assert_int_equal(r1.len, 12);
    assert_memory_equal(r1.body, "POST|yes|a\0b", 12);
    assert_int_equal(r2.status, 404);
    assert_string_equal(r2.body, "no");
    assert_int_equal(r3.status, 201);
    assert_string_equal(r3.body, "PUT||z");
    assert_int_equal(httpc_inflight(h), 0);
    finish(&loop, &s, h);
}

static void test_failures(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_t s;
    srv_start(&s, &loop);
    httpc_t *h = httpc_new(&loop, 8);

    /* A port with nothing listening: bind one, note it, close it. */
    uv_tcp_t tmp;
    uv_tcp_init(&loop, &tmp);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&tmp, (struct sockaddr *)&a, 0);
    struct sockaddr_in got;
    int len = sizeof got;
    uv_tcp_getsockname(&tmp, (struct sockaddr *)&got, &len);
    char refused[64];
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/", ntohs(got.sin_port));
    uv_close((uv_handle_t *)&tmp, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);

    result_t slow = {0}, down = {0}, big = {0};
    assert_true(httpc_request(h, "GET", url_of(&s, "/slow"), NULL, NULL, 0, 300, on_done, &slow) > 0);
    assert_true(httpc_request(h, "GET", refused, NULL, NULL, 0, 5000, on_done, &down) > 0);
    assert_true(httpc_request(h, "GET", url_of(&s, "/big"), NULL, NULL, 0, 5000, on_done, &big) > 0);
    result_t *rs[] = {&slow, &down, &big};
    run_until(&loop, rs, 3);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(slow.status, GW_ETIMEDOUT);
    assert_int_equal(slow.len, 0);
    assert_int_equal(down.status, GW_EDOWN);
    assert_int_equal(big.status, GW_ETOOBIG);
    assert_int_equal(big.len, 0);

    /* Refused up front, without a callback. */
    result_t never = {0};
    assert_int_equal(httpc_request(h, "GET", "ftp://127.0.0.1/", NULL, NULL, 0, 100, on_done, &never), GW_EINVAL);
    assert_int_equal(httpc_request(h, "GET", "file:///etc/passwd", NULL, NULL, 0, 100, on_done, &never), GW_EINVAL);
    assert_int_equal(httpc_request(h, "GET", url_of(&s, "/"), NULL, NULL, 0, 0, on_done, &never), GW_EINVAL);
    assert_int_equal(httpc_request(h, "GET", url_of(&s, "/"), NULL, NULL, 0, 100, NULL, &never), GW_EINVAL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(never.calls, 0);
    finish(&loop, &s, h);
}

static void test_limit_cancel_free(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_t s;
    srv_start(&s, &loop);
    httpc_t *h = httpc_new(&loop, 2);

    result_t a = {0}, b = {0}, c = {0}, d = {0};
    int64_t ia = httpc_request(h, "GET", url_of(&s, "/slow"), NULL, NULL, 0, 60000, on_done, &a);
    int64_t ib = httpc_request(h, "GET", url_of(&s, "/slow"), NULL, NULL, 0, 60000, on_done, &b);
    assert_true(ia > 0 && ib > ia);
    assert_int_equal(httpc_request(h, "GET", url_of(&s, "/echo"), NULL, NULL, 0, 5000, on_done, &c), GW_ELIMIT);
    /* Let both reach the server, then cancel one: its slot frees, it never calls back. */
    for (int i = 0; i < 100000 && s.requests < 2; i++) uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(s.requests, 2);
    httpc_cancel(h, ia);
    httpc_cancel(h, ia);       /* twice: nothing */
    httpc_cancel(h, 999999);   /* unknown: nothing */
    assert_int_equal(httpc_inflight(h), 1);
    assert_true(httpc_request(h, "GET", url_of(&s, "/echo"), NULL, NULL, 0, 5000, on_done, &c) > 0);
    result_t *rs[] = {&c};
    run_until(&loop, rs, 1);
    assert_int_equal(c.status, 201);
    assert_string_equal(c.body, "GET||");
    assert_int_equal(a.calls, 0);
    /* b is still pending: freeing drops it without a callback. */
    assert_true(httpc_request(h, "GET", url_of(&s, "/slow"), NULL, NULL, 0, 60000, on_done, &d) > 0);
    finish(&loop, &s, h);
    assert_int_equal(b.calls, 0);
    assert_int_equal(d.calls, 0);
}

/* A callback that chains a request and, on the last one, frees the client. */
typedef struct {
    httpc_t *h;
    srv_t *s;
    int left, done, last_status;
} chain_t;

static void on_chain(void *ud, int status, const char *body, size_t len)
{
    chain_t *c = ud;
    c->done++;
    c->last_status = status;
    if (--c->left > 0) {
        assert_true(httpc_request(c->h, "GET", url_of(c->s, "/echo"), NULL, NULL, 0, 5000, on_chain, c) > 0);
    } else {
        httpc_free(c->h);
    }
}

static void test_reentry(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_t s;
    srv_start(&s, &loop);
    httpc_t *h = httpc_new(&loop, 1);
    chain_t c = {h, &s, 5, 0, 0};
    assert_true(httpc_request(h, "GET", url_of(&s, "/echo"), NULL, NULL, 0, 5000, on_chain, &c) > 0);
    for (int i = 0; i < 100000 && c.done < 5; i++) uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(c.done, 5);
    assert_int_equal(c.last_status, 201);
    srv_stop(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post_and_status),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_limit_cancel_free),
        cmocka_unit_test(test_reentry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
