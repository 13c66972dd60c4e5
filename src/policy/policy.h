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
#include "policy/policy_types.h"

typedef struct policy_s policy_t;

/* The value of key (klen bytes) among pairs (ended by a NULL key), or NULL. */
const char *policy_query_find(const policy_pair_t *pairs, const char *key, size_t klen);

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
 * declares no message_types or lists type there. Others never enter Lua. With a candidate,
 * policy_has also counts the live candidate's hooks (the live policy's missing hook passes);
 * policy_wants is the live policy's alone. */
int policy_wants(const policy_t *p, const char *type);

/* Staged rollout (policy_rollout.h). Opens a candidate holder beside the live holder p and
 * loads dir into it: mode POLICY_ROLLOUT_SHADOW (every hook runs in both; p's decision is
 * applied, the candidate's compared and counted; its gw.send/broadcast/kick recorded, never
 * performed; its gw.store/gw.limit its own) or POLICY_ROLLOUT_CANARY (policy_candidate_percent
 * of connections run on it, chosen by a hash of the connection id; it shares p's store; it is
 * rolled back when its error or drop rate passes the bounds, until its version changes). The
 * candidate has its own VM, version, self_test and last-good rules. Returns policy_load's
 * code: a failed first load leaves the candidate out of every decision until a reload loads
 * it. GW_EINVAL when one is open already or mode is neither. */
int policy_candidate_open(policy_t *p, const char *dir, int mode, char *err, size_t errlen);
/* policy_reload_logged for the candidate (nothing without one). */
void policy_candidate_reload_logged(policy_t *p, const char *dir, const char *why, int worker);
const char *policy_candidate_version(const policy_t *p);   /* "" when none is loaded */
/* {mode, state, version, last_error, rollbacks, ...} (policy_rollout_status), new reference;
 * NULL without a candidate. */
json_t *policy_candidate_status(const policy_t *p);
/* Calls cb with every shadow disagreement (the replay tool). */
void policy_candidate_on_diff(policy_t *p, void (*cb)(void *ud, int hook, unsigned kinds, json_t *example), void *ud);
/* Starts recording hook inputs and decisions to file (policy_record.h). 0, or GW_EINVAL with
 * err when the file cannot be opened. */
int policy_record_start(policy_t *p, const char *file, double sample, int redact, char *err, size_t errlen);
/* Replay: gw.now, JWT expiry and the gw.store/gw.limit clock read now (seconds) from here on,
 * for p and its candidate. */
void policy_clock_set(policy_t *p, double now);

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
/* The conn whose policy_conn_t.slot this is went away: frees what the policy cached for it (see
 * policy_conn_push in policy.c) and sets *slot to NULL. Safe inside a hook (a kick). */
void policy_conn_forget(policy_t *p, policy_conn_slot_t **slot);

#endif
