/* redis_sub_tool: bus/redis_sub.h driven from stdin, for redis_sub.test.mjs, which checks it
 * against a real redis-server and a real Redis Cluster.
 *   redis_sub_tool IP PORT [PASSWORD [USER]]
 * Opens one redis_sub, then reads commands, one a line:
 *   sub C | ssub C | unsub C | sunsub C    (S)SUBSCRIBE / (S)UNSUBSCRIBE channel C
 *   ping                                   PING
 *   close                                  redis_sub_close now
 *   close-in KIND                          redis_sub_close from inside the next KIND callback
 *                                          (ready, message, subscription, pong, closed)
 *   open-close                             open a second one to the same address and close
 *                                          it at once, while it connects
 * and prints each callback as a line:
 *   ready | pong | closed WHY | message SHARDED CHANHEX LEN PAYLOADHEX
 *   subscription SHARDED ON CHANHEX | closed-in KIND | rc COMMAND WORDS (a call that failed)
 * CLOSE_IN=KIND in the environment does close-in KIND before the open (for ready).
 * At the end of stdin it closes what is open, runs the loop dry, prints "bye" and exits 0.
 * Exit 1 with words on stderr when the open fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "base/err.h"
#include "bus/redis_sub.h"

static uv_loop_t *loop;
static redis_sub_t *sub;
static const char *ip;
static int port;
static char close_in[32];
static uv_pipe_t in;
static char line[4096];
static size_t line_len;

static void hex_print(const char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        putchar(digits[(unsigned char)p[i] >> 4]);
        putchar(digits[(unsigned char)p[i] & 15]);
    }
    if (!n) putchar('-');
}

static void close_in_set(const char *kind)
{
    size_t n = strlen(kind);
    if (n >= sizeof close_in) n = sizeof close_in - 1;
    memcpy(close_in, kind, n);
    close_in[n] = 0;
}

/* Closes from inside a callback of kind when asked to. */
static void maybe_close(const char *kind)
{
    if (!sub || strcmp(close_in, kind) != 0) return;
    redis_sub_close(sub);
    sub = NULL;
    close_in[0] = 0;
    printf("closed-in %s\n", kind);
}

static void on_ready(void *arg)
{
    printf("ready\n");
    maybe_close("ready");
    fflush(stdout);
}

static void on_message(void *arg, int sharded, const char *chan, size_t chan_len, const char *msg, size_t len)
{
    printf("message %d ", sharded);
    hex_print(chan, chan_len);
    printf(" %zu ", len);
    hex_print(msg, len);
    putchar('\n');
    maybe_close("message");
    fflush(stdout);
}

static void on_subscription(void *arg, int sharded, int on, const char *chan, size_t chan_len)
{
    printf("subscription %d %d ", sharded, on);
    hex_print(chan, chan_len);
    putchar('\n');
    maybe_close("subscription");
    fflush(stdout);
}

static void on_pong(void *arg)
{
    printf("pong\n");
    maybe_close("pong");
    fflush(stdout);
}

static void on_closed(void *arg, const char *why)
{
    printf("closed %s\n", why);
    maybe_close("closed");
    fflush(stdout);
}

static const redis_sub_handlers_t handlers = {on_ready, on_message, on_subscription, on_pong, on_closed};

static void rc_print(const char *cmd, int rc)
{
    if (rc < 0) printf("rc %s %s\n", cmd, gw_strerror(rc));
}

static void open_close(void)
{
    static const redis_sub_handlers_t loud = {on_ready, on_message, on_subscription, on_pong, on_closed};
    redis_sub_t *other = NULL;
    int rc = redis_sub_open(loop, ip, port, NULL, NULL, &loud, NULL, &other);
    if (rc < 0) {
        rc_print("open-close", rc);
        return;
    }
    redis_sub_ping(other);
    redis_sub_close(other);
    printf("ok open-close\n");
}

static void command_run(char *cmd)
{
    char *arg = strchr(cmd, ' ');
    if (arg) *arg++ = 0;
    size_t alen = arg ? strlen(arg) : 0;
    if (!*cmd) return;
    if (strcmp(cmd, "close-in") == 0 && arg) close_in_set(arg);
    else if (strcmp(cmd, "open-close") == 0) open_close();
    else if (!sub) printf("rc %s no connection\n", cmd);
    else if (strcmp(cmd, "sub") == 0) rc_print(cmd, redis_sub_subscribe(sub, REDIS_SUB_PLAIN, arg, alen));
    else if (strcmp(cmd, "ssub") == 0) rc_print(cmd, redis_sub_subscribe(sub, REDIS_SUB_SHARDED, arg, alen));
    else if (strcmp(cmd, "unsub") == 0) rc_print(cmd, redis_sub_unsubscribe(sub, REDIS_SUB_PLAIN, arg, alen));
    else if (strcmp(cmd, "sunsub") == 0) rc_print(cmd, redis_sub_unsubscribe(sub, REDIS_SUB_SHARDED, arg, alen));
    else if (strcmp(cmd, "ping") == 0) rc_print(cmd, redis_sub_ping(sub));
    else if (strcmp(cmd, "close") == 0) {
        redis_sub_close(sub);
        sub = NULL;
    } else printf("rc %s unknown command\n", cmd);
    fflush(stdout);
}

static void in_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char b[4096];
    *buf = uv_buf_init(b, sizeof b);
}

static void in_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    if (n < 0) {
        redis_sub_close(sub);
        sub = NULL;
        uv_close((uv_handle_t *)st, NULL);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        char c = buf->base[i];
        if (c == '\n') {
            line[line_len] = 0;
            line_len = 0;
            command_run(line);
        } else if (line_len + 1 < sizeof line) {
            line[line_len++] = c;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: redis_sub_tool IP PORT [PASSWORD [USER]]\n");
        return 1;
    }
    ip = argv[1];
    port = atoi(argv[2]);
    loop = uv_default_loop();
    if (getenv("CLOSE_IN")) close_in_set(getenv("CLOSE_IN"));
    int rc = redis_sub_open(loop, ip, port, argc > 4 ? argv[4] : NULL, argc > 3 ? argv[3] : NULL, &handlers, NULL, &sub);
    if (rc < 0) {
        fprintf(stderr, "open: %s\n", gw_strerror(rc));
        uv_run(loop, UV_RUN_DEFAULT);
        uv_loop_close(loop);
        return 1;
    }
    uv_pipe_init(loop, &in, 0);
    uv_pipe_open(&in, 0);
    uv_read_start((uv_stream_t *)&in, in_alloc, in_read);
    uv_run(loop, UV_RUN_DEFAULT);
    printf("bye\n");
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
