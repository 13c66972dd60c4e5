/* redis_sub: the bus's own subscriber connection (redis_sub.h). Commands go out as RESP from
 * redisFormatCommandArgv, coalesced into one buffer with at most one uv_write in flight; replies
 * come in through a hiredis redisReader fed from one 64 KiB read buffer and are dispatched by
 * their kind. Every failure ends in fail(): the socket closes at once and `closed` runs once.
 * It never retries, and it never runs a callback after redis_sub_close; the memory goes when
 * both the socket's close callback ran and the caller closed. */
#include "bus/redis_sub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include "base/err.h"

/* Unparsed input kept at most: a reply larger than this is a protocol error. */
#define REDIS_SUB_MAX_INPUT ((size_t)512 << 20)
/* Our replies are arrays of 2 or 3; a longer one is refused before hiredis allocates it. */
#define REDIS_SUB_MAX_ELEMENTS 16
/* Commands queued and not yet written at most (the server is not reading). */
#define REDIS_SUB_MAX_OUTPUT ((size_t)64 << 20)
#define REDIS_SUB_READ_BUF (64 * 1024)

struct redis_sub_s {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    redis_sub_handlers_t on;
    void *arg;
    redisReader *reader;
    redisReplyObjectFunctions fns; /* hiredis's defaults with a bounded createArray */
    void *(*create_array)(const redisReadTask *, int);
    char *out; /* commands not yet handed to uv_write */
    size_t out_len, out_cap;
    char *writing; /* the buffer of the write in flight, freed by its callback */
    unsigned connected : 1, auth_pending : 1, failed : 1, user_closed : 1, tcp_closed : 1, too_long : 1;
    char rbuf[REDIS_SUB_READ_BUF];
};

static void sub_free(redis_sub_t *s)
{
    redisReaderFree(s->reader);
    free(s->out);
    free(s->writing);
    free(s);
}

static void sub_on_close(uv_handle_t *h)
{
    redis_sub_t *s = (redis_sub_t *)h;
    s->tcp_closed = 1;
    if (s->user_closed) sub_free(s);
}

static void sub_tcp_close(redis_sub_t *s)
{
    if (!uv_is_closing((uv_handle_t *)&s->tcp)) uv_close((uv_handle_t *)&s->tcp, sub_on_close);
}

/* The one failure path: close the socket, tell the caller once (unless they closed). */
static void sub_fail(redis_sub_t *s, const char *why)
{
    if (s->failed || s->user_closed) return;
    s->failed = 1;
    sub_tcp_close(s);
    if (s->on.closed) s->on.closed(s->arg, why);
}

static void sub_fail_code(redis_sub_t *s, const char *what, int code)
{
    char why[160];
    snprintf(why, sizeof why, "%s: %s", what, uv_strerror(code));
    sub_fail(s, why);
}

static void *sub_create_array(const redisReadTask *task, int elements)
{
    redis_sub_t *s = task->privdata;
    if (elements > REDIS_SUB_MAX_ELEMENTS) {
        s->too_long = 1;
        return NULL;
    }
    return s->create_array(task, elements);
}

/* ---- output ---- */

static void sub_flush(redis_sub_t *s);

static void sub_on_write(uv_write_t *req, int status)
{
    redis_sub_t *s = req->data;
    free(s->writing);
    s->writing = NULL;
    if (status < 0) {
        if (status != UV_ECANCELED) sub_fail_code(s, "write", status);
        return;
    }
    sub_flush(s);
}

/* Hands everything queued to one uv_write, unless one is in flight (its callback flushes). */
static void sub_flush(redis_sub_t *s)
{
    if (!s->connected || s->failed || s->user_closed || s->writing || !s->out_len) return;
    uv_buf_t b = uv_buf_init(s->out, (unsigned)s->out_len);
    s->writing = s->out;
    s->out = NULL;
    s->out_len = s->out_cap = 0;
    s->write_req.data = s;
    int rc = uv_write(&s->write_req, (uv_stream_t *)&s->tcp, &b, 1, sub_on_write);
    if (rc < 0) {
        free(s->writing);
        s->writing = NULL;
        sub_fail_code(s, "write", rc);
    }
}

static int sub_queue(redis_sub_t *s, int argc, const char **argv, const size_t *argvlen)
{
    if (s->failed || s->user_closed) return GW_EDOWN;
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (n < 0) return GW_ENOMEM;
    if (s->out_len + (size_t)n > REDIS_SUB_MAX_OUTPUT) {
        redisFreeCommand(cmd);
        return GW_ETOOBIG;
    }
    if (s->out_len + (size_t)n > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 256;
        while (cap < s->out_len + (size_t)n) cap *= 2;
        char *p = realloc(s->out, cap);
        if (!p) {
            redisFreeCommand(cmd);
            return GW_ENOMEM;
        }
        s->out = p;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, cmd, (size_t)n);
    s->out_len += (size_t)n;
    redisFreeCommand(cmd);
    sub_flush(s);
    return 0;
}

/* ---- input ---- */

static int str_is(const redisReply *r, const char *word)
{
    size_t n = strlen(word);
    return r->type == REDIS_REPLY_STRING && (size_t)r->len == n && memcmp(r->str, word, n) == 0;
}

/* Fails s on r, a reply it did not expect: Redis's error after refused, else r's type after
 * other. */
static void sub_fail_reply(redis_sub_t *s, const redisReply *r, const char *refused, const char *other)
{
    char why[256];
    if (r->type == REDIS_REPLY_ERROR) snprintf(why, sizeof why, "%s%s", refused, r->str);
    else snprintf(why, sizeof why, "%sunexpected reply of type %d", other, r->type);
    sub_fail(s, why);
}

static void sub_on_auth(redis_sub_t *s, const redisReply *r)
{
    s->auth_pending = 0;
    if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) {
        if (s->on.ready) s->on.ready(s->arg);
        return;
    }
    sub_fail_reply(s, r, "AUTH refused: ", "AUTH: ");
}

/* (s)message / (s)subscribe / (s)unsubscribe / pong pushes; 0 when r is none of them. */
static int sub_on_push(redis_sub_t *s, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING) return 0;
    const redisReply *kind = r->element[0];
    if (r->elements == 2 && str_is(kind, "pong")) {
        if (s->on.pong) s->on.pong(s->arg);
        return 1;
    }
    if (r->elements != 3) return 0;
    const redisReply *chan = r->element[1], *third = r->element[2];
    if (chan->type != REDIS_REPLY_STRING && chan->type != REDIS_REPLY_NIL) return 0;
    const char *cs = chan->type == REDIS_REPLY_STRING ? chan->str : "";
    size_t cl = chan->type == REDIS_REPLY_STRING ? (size_t)chan->len : 0;
    int sharded = str_is(kind, "smessage");
    if ((sharded || str_is(kind, "message")) && third->type == REDIS_REPLY_STRING) {
        if (s->on.message) s->on.message(s->arg, sharded, cs, cl, third->str, (size_t)third->len);
        return 1;
    }
    int on = -1;
    sharded = str_is(kind, "ssubscribe") || str_is(kind, "sunsubscribe");
    if (sharded || str_is(kind, "subscribe") || str_is(kind, "unsubscribe"))
        on = str_is(kind, "subscribe") || str_is(kind, "ssubscribe");
    if (on < 0 || third->type != REDIS_REPLY_INTEGER) return 0;
    if (s->on.subscription) s->on.subscription(s->arg, sharded, on, cs, cl);
    return 1;
}

static void sub_dispatch(redis_sub_t *s, const redisReply *r)
{
    if (s->auth_pending) {
        sub_on_auth(s, r);
        return;
    }
    if (sub_on_push(s, r)) return;
    if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0) {
        if (s->on.pong) s->on.pong(s->arg);
        return;
    }
    sub_fail_reply(s, r, "", "");
}

/* Parses and dispatches every complete reply; stops when a callback closed or failed us. */
static void sub_drain(redis_sub_t *s)
{
    while (!s->failed && !s->user_closed) {
        void *reply = NULL;
        if (redisReaderGetReply(s->reader, &reply) != REDIS_OK) {
            char why[200];
            if (s->too_long)
                snprintf(why, sizeof why, "protocol error: an array over %d elements", REDIS_SUB_MAX_ELEMENTS);
            else snprintf(why, sizeof why, "protocol error: %s", s->reader->errstr);
            sub_fail(s, why);
            return;
        }
        if (!reply) return;
        sub_dispatch(s, reply);
        freeReplyObject(reply);
    }
}

static void sub_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    redis_sub_t *s = (redis_sub_t *)h;
    *buf = uv_buf_init(s->rbuf, sizeof s->rbuf);
}

static void sub_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    redis_sub_t *s = (redis_sub_t *)st;
    if (n == UV_EOF) {
        sub_fail(s, "connection closed by the server");
        return;
    }
    if (n < 0) {
        sub_fail_code(s, "read", (int)n);
        return;
    }
    if (n == 0 || s->failed || s->user_closed) return;
    if (s->reader->len - s->reader->pos + (size_t)n > REDIS_SUB_MAX_INPUT) {
        sub_fail(s, "protocol error: a reply over 512 MiB");
        return;
    }
    if (redisReaderFeed(s->reader, buf->base, (size_t)n) != REDIS_OK) {
        sub_fail(s, "protocol error: out of memory");
        return;
    }
    sub_drain(s);
}

static void sub_on_connect(uv_connect_t *req, int status)
{
    redis_sub_t *s = req->data;
    if (status == UV_ECANCELED || s->failed || s->user_closed) return;
    if (status < 0) {
        sub_fail_code(s, "connect", status);
        return;
    }
    s->connected = 1;
    int rc = uv_read_start((uv_stream_t *)&s->tcp, sub_on_alloc, sub_on_read);
    if (rc < 0) {
        sub_fail_code(s, "read", rc);
        return;
    }
    sub_flush(s);
    if (!s->auth_pending && !s->failed && s->on.ready) s->on.ready(s->arg);
}

/* ---- API ---- */

static int sub_addr(const char *ip, int port, struct sockaddr_storage *ss)
{
    if (!ip || port <= 0 || port > 65535) return GW_EINVAL;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0) return 0;
    if (uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss) == 0) return 0;
    return GW_EINVAL;
}

static int sub_auth_queue(redis_sub_t *s, const char *user, const char *password)
{
    const char *argv[3] = {"AUTH", user, password};
    size_t lens[3] = {4, user ? strlen(user) : 0, strlen(password)};
    if (!user) {
        argv[1] = password;
        lens[1] = lens[2];
    }
    int rc = sub_queue(s, user ? 3 : 2, argv, lens);
    if (rc == 0) s->auth_pending = 1;
    return rc;
}

static redis_sub_t *sub_new(const redis_sub_handlers_t *on, void *arg)
{
    redis_sub_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->reader = redisReaderCreate();
    if (!s->reader) {
        free(s);
        return NULL;
    }
    s->fns = *s->reader->fn;
    s->create_array = s->fns.createArray;
    s->fns.createArray = sub_create_array;
    s->reader->fn = &s->fns;
    s->reader->privdata = s;
    s->reader->maxbuf = REDIS_SUB_READ_BUF;
    s->on = *on;
    s->arg = arg;
    return s;
}

int redis_sub_open(uv_loop_t *loop, const char *ip, int port, const char *user, const char *password,
                   const redis_sub_handlers_t *on, void *arg, redis_sub_t **out)
{
    struct sockaddr_storage ss;
    if (!loop || !on || !out || sub_addr(ip, port, &ss) < 0) return GW_EINVAL;
    redis_sub_t *s = sub_new(on, arg);
    if (!s) return GW_ENOMEM;
    if (password && sub_auth_queue(s, user, password) < 0) {
        sub_free(s);
        return GW_ENOMEM;
    }
    int rc = uv_tcp_init(loop, &s->tcp);
    if (rc < 0) {
        sub_free(s);
        return rc;
    }
    s->connect_req.data = s;
    rc = uv_tcp_connect(&s->connect_req, &s->tcp, (const struct sockaddr *)&ss, sub_on_connect);
    if (rc < 0) {
        s->user_closed = 1; /* nobody holds it: free from the close callback */
        sub_tcp_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int sub_command(redis_sub_t *s, const char *verb, const char *chan, size_t len)
{
    if (!s || (!chan && len)) return GW_EINVAL;
    if (len > REDIS_SUB_MAX_OUTPUT) return GW_ETOOBIG; /* before hiredis sizes it in an int */
    const char *argv[2] = {verb, chan ? chan : ""};
    size_t lens[2] = {strlen(verb), len};
    return sub_queue(s, 2, argv, lens);
}

int redis_sub_subscribe(redis_sub_t *s, int sharded, const char *chan, size_t len)
{
    return sub_command(s, sharded ? "SSUBSCRIBE" : "SUBSCRIBE", chan, len);
}

int redis_sub_unsubscribe(redis_sub_t *s, int sharded, const char *chan, size_t len)
{
    return sub_command(s, sharded ? "SUNSUBSCRIBE" : "UNSUBSCRIBE", chan, len);
}

int redis_sub_ping(redis_sub_t *s)
{
    if (!s) return GW_EINVAL;
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    return sub_queue(s, 1, argv, lens);
}

void redis_sub_close(redis_sub_t *s)
{
    if (!s || s->user_closed) return;
    s->user_closed = 1;
    if (s->tcp_closed) {
        sub_free(s);
        return;
    }
    sub_tcp_close(s);
}
