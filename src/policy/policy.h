/* policy: the operators' Lua 5.4 policy. One VM per worker loads scripts/policy.lua (which
 * returns a table of optional hooks) in a sandbox: no io, debug, os except time/clock/date,
 * no binary chunks, require only from the scripts directory, and a bounded standard library
 * (policy_lib.h, policy_pattern.h). Every hook call runs under a wall-clock limit
 * (policy_timeout_ms, policy_guard.h), optionally an instruction budget, and the VM under a
 * memory cap (custom lua_Alloc); a hook that errors or runs over is aborted, counted, and
 * reported as POLICY_ERROR so the caller applies the failure mode. After a timeout the hook is
 * tripped for that client address for a while: its calls return POLICY_ERROR at once. A reload builds a fresh VM, runs self_test, and swaps only on success;
 * the last good policy keeps serving otherwise. gw.store and gw.limit live in C and survive
 * reloads. This is the only module that touches Lua. Values cross the boundary by direct
 * conversion between jansson values and Lua tables (no JSON text). */
#ifndef CHATGW_POLICY_H
#define CHATGW_POLICY_H

#include <stddef.h>

#include <jansson.h>

#include "base/config.h"
#include "base/metrics.h"

typedef struct policy_s policy_t;

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

/* One key and its value, both NUL-terminated: a URL's query parameter as hooks see it in
 * conn.query. An array of pairs ends with a NULL key. */
typedef struct {
    const char *key;
    const char *value;
} policy_pair_t;

/* The connection as hooks see it: conn = {id, ip, name, query, headers}. query is the URL's
 * parameters as pairs (distinct, non-empty keys, UTF-8 values; a NULL key ends them), headers
 * an object. Both borrowed; NULL when absent (headers are only given to on_connect). */
typedef struct {
    const char *id;
    const char *ip;
    const char *name;
    const policy_pair_t *query;
    json_t *headers;
} policy_conn_t;

/* The value of key (klen bytes) among pairs (ended by a NULL key), or NULL. */
const char *policy_query_find(const policy_pair_t *pairs, const char *key, size_t klen);

enum {
    POLICY_PASS = 0,               /* allowed / deliver */
    POLICY_DROP = 1,               /* refused or dropped by the policy, with a code */
    POLICY_ERROR = -1,             /* the hook failed or ran over budget: apply the failure mode */
};

enum { POLICY_HOOK_CONNECT, POLICY_HOOK_JOIN, POLICY_HOOK_MESSAGE, POLICY_HOOK_LEAVE, POLICY_HOOK_TICK, POLICY_HOOKS };

/* Creates the policy holder (no VM yet). cfg and metrics must outlive it. */
policy_t *policy_new(const config_t *cfg, metrics_t *metrics, const policy_host_t *host);
void policy_free(policy_t *p);

/* Loads dir/policy.lua into a fresh sandboxed VM, runs self_test, and swaps it in.
 * Returns 1 when a new version went live, 0 when the sources are unchanged (same sha256),
 * or a negative code (base/err.h) with "file:line: message" in err, and the previous policy
 * keeps serving: GW_EINVAL when the scripts fail to load or their self_test, a negative
 * errno (UV_E*) when dir cannot be read, GW_ELIMIT or GW_ETOOBIG past the file or byte
 * bounds, GW_EUNAVAIL when called from inside a hook. */
int policy_load(policy_t *p, const char *dir, char *err, size_t errlen);
/* policy_load for a reload (watch, SIGHUP), with its outcome logged: reloaded, unchanged or
 * failed (the previous policy keeps serving). worker >= 0 adds a "worker" field. */
void policy_reload_logged(policy_t *p, const char *dir, const char *why, int worker);
/* Loads and self-tests dir without touching any live policy (chatgw check). Writes the
 * version to version (POLICY_VERSION_SIZE bytes). 0, or policy_load's negative code with err. */
int policy_check(const config_t *cfg, const char *dir, char *version, char *err, size_t errlen);

const char *policy_version(const policy_t *p);     /* sha256 hex of the sources, "" when none */
const char *policy_last_error(const policy_t *p);  /* last failed load, "" when none */
int policy_has(const policy_t *p, int hook);       /* 1 when the live policy defines it */
/* 1 when on_message is to see messages of this type: the policy defines on_message and either
 * declares no message_types or lists type there. Others never enter Lua. */
int policy_wants(const policy_t *p, const char *type);

/* Hooks. code/reason buffers receive the policy's reason on POLICY_DROP. */
int policy_on_connect(policy_t *p, const policy_conn_t *conn, char *reason, size_t len);
int policy_on_join(policy_t *p, const policy_conn_t *conn, const char *room, char *code, size_t len);
/* msg is the decoded client message (borrowed). The hook's return decides:
 *   a table          -> POLICY_PASS, *out = that table converted (new reference): deliver it;
 *   true / nothing   -> POLICY_PASS, *out = msg with a new reference: deliver unchanged;
 *   false            -> POLICY_PASS, *out = NULL: the hook handled it (e.g. with gw.send);
 *   nil|false, "code"-> POLICY_DROP with code: the sender gets an error frame with it.
 * With no on_message hook it returns POLICY_PASS with *out = msg (new reference). */
int policy_on_message(policy_t *p, const policy_conn_t *conn, const char *room, json_t *msg, json_t **out,
                      char *code, size_t len);
void policy_on_leave(policy_t *p, const policy_conn_t *conn, const char *room);
void policy_on_tick(policy_t *p, double now);
/* The conn with this id went away: drops the conn table the VM keeps for its hooks (see
 * policy_conn_push in policy.c). Optional: the cache is bounded without it, and a stale entry
 * is never handed out for a different conn; it only frees the memory sooner. */
void policy_conn_forget(policy_t *p, const char *id);

#endif
