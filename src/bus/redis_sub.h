/* redis_sub: one Redis connection in subscriber mode, of the bus's own, on the libuv loop.
 * hiredis 0.14's async layer cannot carry sharded pub/sub (an `smessage` aborts it), so this
 * connection writes commands with redisFormatCommandArgv and reads replies with hiredis's
 * redisReader over a uv_tcp_t, and dispatches every push by its kind. It speaks RESP2.
 *
 * Plain (SUBSCRIBE/"message") and sharded (SSUBSCRIBE/"smessage") channels may be mixed on one
 * connection. The connection only connects to a numeric address (the caller resolves names).
 * It never retries: on any failure it reports `closed` once and does nothing more; the caller
 * opens a new one. PING is answered by a `pong` push in subscriber mode: the caller's liveness
 * probe. Everything is pipelined: commands given before the connection is up are sent once it
 * is (after AUTH).
 *
 * Ownership: the caller owns the handle until redis_sub_close; after that no callback runs and
 * the memory goes from the uv close callback (keep running the loop). Strings handed to
 * callbacks are borrowed for the call. */
#ifndef CHATGW_REDIS_SUB_H
#define CHATGW_REDIS_SUB_H

#include <stddef.h>
#include <uv.h>

typedef struct redis_sub_s redis_sub_t;

enum { REDIS_SUB_PLAIN = 0, REDIS_SUB_SHARDED = 1 };

typedef struct {
    /* Connected and, with a password, authenticated: commands flow. Every handler is optional. */
    void (*ready)(void *arg);
    /* A message on a channel we subscribe to (sharded: 1 for smessage). */
    void (*message)(void *arg, int sharded, const char *chan, size_t chan_len, const char *msg, size_t len);
    /* A subscription confirmed (subscribe/ssubscribe) or ended (unsubscribe/sunsubscribe: ours,
     * or Redis's own when a slot moved away or the shard failed over); on is 1 or 0. */
    void (*subscription)(void *arg, int sharded, int on, const char *chan, size_t chan_len);
    /* The answer to redis_sub_ping. */
    void (*pong)(void *arg);
    /* The connection failed or was lost (connect error, AUTH refused, an error reply, a
     * protocol error, EOF): why says which. Called at most once, never after redis_sub_close. */
    void (*closed)(void *arg, const char *why);
} redis_sub_handlers_t;

/* Starts connecting to ip:port (numeric IPv4 or IPv6). user may be NULL; password NULL means
 * no AUTH. 0 and *out, or a negative GW_E* code (GW_EINVAL: not a numeric address). */
int redis_sub_open(uv_loop_t *loop, const char *ip, int port, const char *user, const char *password,
                   const redis_sub_handlers_t *on, void *arg, redis_sub_t **out);
/* Queue (S)SUBSCRIBE / (S)UNSUBSCRIBE of one channel, or PING. 0, or GW_EDOWN once closed
 * (GW_ENOMEM; GW_ETOOBIG when 64 MiB of commands already wait unwritten). */
int redis_sub_subscribe(redis_sub_t *s, int sharded, const char *chan, size_t len);
int redis_sub_unsubscribe(redis_sub_t *s, int sharded, const char *chan, size_t len);
int redis_sub_ping(redis_sub_t *s);
/* Closes; no callback runs after this returns. NULL is a no-op. */
void redis_sub_close(redis_sub_t *s);

#endif
