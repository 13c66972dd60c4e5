/* policy_types: what the policy holder (policy.h) and its helpers without Lua
 * (policy_rollout.h) share: the host interface the hub implements, hook verdicts and hook
 * numbers, the connection as hooks see it. Types only. */
#ifndef CHATGW_POLICY_TYPES_H
#define CHATGW_POLICY_TYPES_H

#include <jansson.h>

#define POLICY_VERSION_SIZE 65     /* a version: sha256 as 64 hex digits and a NUL */

/* What the policy's gw.* functions call back into (implemented by the hub). Each returns 0 on
 * success or a negative GW_E* code (base/err.h): GW_ENOTFOUND when the target does not exist,
 * GW_EINVAL when the message cannot be encoded. JSON arguments are borrowed. */
typedef struct {
    void *ud;
    int (*send)(void *ud, const char *conn_id, json_t *msg);
    int (*broadcast)(void *ud, const char *room, json_t *msg, const char *except_conn_id);
    int (*kick)(void *ud, const char *conn_id, const char *code, const char *reason);
    json_t *(*members)(void *ud, const char *room);   /* new ref: [{id,name,muted}] or NULL */
    json_t *(*rooms)(void *ud);                       /* new ref: [{name,online}] */
    void (*log)(void *ud, int level, const char *msg, json_t *fields);
    /* Optional: mirrors one gw.limit take that the local bucket allowed to the cluster's shared
     * bucket for key (rate, burst as given to gw.limit). gw.limit stays synchronous: the local
     * bucket decides, and when the shared store answers, the host calls done(arg, key, rate,
     * burst, tokens) with the tokens the cluster has left, from the loop, at most once (never
     * after the host is freed; key borrowed for the call). Returns 0 when the take was sent,
     * or a negative code when there is nothing shared (GW_ENOTSUP: single node; GW_EDOWN:
     * Redis down): done never runs and the local decision is all there is. NULL = purely local limits. */
    int (*limit_take)(void *ud, const char *key, double rate, double burst,
                      void (*done)(void *arg, const char *key, double rate, double burst, double tokens),
                      void *arg);
    /* Optional: a moderator's mute: conn_id in room muted (1) or not (0), in the voice mixer too. */
    int (*mute)(void *ud, const char *conn_id, const char *room, int muted);
} policy_host_t;

enum {
    POLICY_PASS = 0,               /* allowed / deliver */
    POLICY_DROP = 1,               /* refused or dropped by the policy, with a code */
    POLICY_ERROR = -1,             /* the hook failed or ran over budget: apply the failure mode */
};

enum { POLICY_HOOK_CONNECT, POLICY_HOOK_JOIN, POLICY_HOOK_MESSAGE, POLICY_HOOK_LEAVE, POLICY_HOOK_TICK, POLICY_HOOKS };

/* One key and its value, both NUL-terminated: a URL's query parameter as hooks see it in
 * conn.query. An array of pairs ends with a NULL key. */
typedef struct {
    const char *key;
    const char *value;
} policy_pair_t;

/* Where the host keeps what the policy caches for one connection (its conn table); opaque,
 * owned by the policy, freed by policy_conn_forget. */
typedef struct policy_conn_slot_s policy_conn_slot_t;

/* The connection as hooks see it: conn = {id, ip, name, query, headers}. query is the URL's
 * parameters as pairs (distinct, non-empty keys, UTF-8 values; a NULL key ends them), headers
 * an object. Both borrowed; NULL when absent (headers are only given to on_connect). slot,
 * when not NULL, is the connection's place for the policy's cache (NULL-initialised, kept for
 * the connection's life, handed to policy_conn_forget at its end); gen must change whenever
 * id, ip, name or query do, so that a cached conn table is rebuilt. */
typedef struct {
    const char *id;
    const char *ip;
    const char *name;
    const policy_pair_t *query;
    json_t *headers;
    policy_conn_slot_t **slot;
    unsigned gen;
} policy_conn_t;

#endif
