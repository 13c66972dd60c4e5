/* policy_rollout: the bookkeeping of a staged policy rollout, without Lua. It picks each
 * connection's arm (a stable hash of its id against policy_candidate_percent), stands between
 * each policy holder and the real host so that gw.send, gw.broadcast, gw.kick and gw.mute can be
 * recorded (and, for the candidate in shadow mode, never performed), compares what the stable
 * and the candidate holder decided in one hook call and counts each disagreement, counts every
 * arm's calls, errors, drops and latency, and rolls the candidate back when its error or drop
 * rate over a window passes the configured bound. It never runs a hook: policy.c does, and
 * hands it the outcomes. One per worker, single-threaded; logs go through log.c. */
#ifndef CHATGW_POLICY_ROLLOUT_H
#define CHATGW_POLICY_ROLLOUT_H

#include <stdint.h>

#include <jansson.h>

#include "base/config.h"
#include "base/metrics.h"
#include "policy/policy_types.h"

typedef struct policy_rollout_s policy_rollout_t;

enum { POLICY_ROLLOUT_OFF, POLICY_ROLLOUT_SHADOW, POLICY_ROLLOUT_CANARY };
enum { POLICY_ARM_STABLE, POLICY_ARM_CANDIDATE };

/* What a holder's host calls do with gw.send/broadcast/kick: perform them, record them, or
 * both. A recorded-only call answers success to the script. */
enum { POLICY_EFFECTS_LIVE = 1, POLICY_EFFECTS_RECORD = 2 };

/* What one holder decided in one hook call (everything borrowed). */
typedef struct {
    int rc;                        /* POLICY_PASS, POLICY_DROP or POLICY_ERROR */
    int kind;                      /* POLICY_ERROR: METRICS_POLICY_* */
    const char *code;              /* POLICY_DROP: the code */
    json_t *out;                   /* on_message POLICY_PASS: what is delivered; NULL = handled */
} policy_outcome_t;

/* Called for every disagreement with a description (borrowed) of both outcomes: the replay
 * tool's examples. */
typedef void (*policy_rollout_diff_cb)(void *ud, int hook, unsigned kinds, json_t *example);

/* mode is POLICY_ROLLOUT_SHADOW or _CANARY; cfg (the bounds), metrics (may be NULL) and real
 * (copied) must outlive it. */
policy_rollout_t *policy_rollout_new(int mode, const config_t *cfg, metrics_t *metrics, const policy_host_t *real);
void policy_rollout_free(policy_rollout_t *r);
/* "off", "shadow", "canary" -> POLICY_ROLLOUT_*; -1 for anything else. */
int policy_rollout_mode_parse(const char *s);
int policy_rollout_mode(const policy_rollout_t *r);

/* The host for the holder of arm: members, rooms and log go to the real host (the candidate's
 * log lines carry "policy":"candidate"), send/broadcast/kick as policy_rollout_effects says,
 * and the candidate mirrors gw.limit to the cluster only while its effects are live. */
void policy_rollout_host(policy_rollout_t *r, int arm, policy_host_t *out);
/* Sets what arm's effects do from now on (POLICY_EFFECTS_* bits; 0 = dropped). The stable
 * arm starts LIVE, the candidate RECORD. */
void policy_rollout_effects(policy_rollout_t *r, int arm, int bits);
/* Forgets the effects recorded so far (a new call). */
void policy_rollout_effects_clear(policy_rollout_t *r);

/* The candidate holder's version after a (re)load ("" = none loaded): a version other than
 * the one that was rolled back arms the candidate again. */
void policy_rollout_candidate_version(policy_rollout_t *r, const char *version);
/* 1 while the candidate takes part: a version loaded and not rolled back. */
int policy_rollout_live(const policy_rollout_t *r);
/* The arm of the connection with this id: the candidate in canary mode while it is live and
 * the id's hash falls within policy_candidate_percent; the same id always gets the same arm
 * while the candidate stays live. */
int policy_rollout_arm(const policy_rollout_t *r, const char *conn_id);
/* The hash policy_rollout_arm uses, as a share in [0, 10000): also the recorder's sampling. */
unsigned policy_rollout_share(const char *conn_id);

/* Counts one call of hook by arm that took usec microseconds. In canary mode a candidate call
 * of a connection also enters the rollback window; returns 1 when this call rolled the
 * candidate back (logged and counted here). now is monotonic seconds. */
int policy_rollout_observe(policy_rollout_t *r, int arm, int hook, const policy_outcome_t *o, uint64_t usec,
                           double now);
/* Compares the two outcomes of one hook call and the effects recorded since the last clear;
 * counts each kind of disagreement (chatgw_policy_shadow_diff_total), logs a sample of them
 * (text cut short) and calls the diff callback. Returns the kinds as bits (1 << METRICS_SHADOW_*). */
unsigned policy_rollout_compare(policy_rollout_t *r, int hook, const char *conn_id, const policy_outcome_t *stable,
                                const policy_outcome_t *cand, double now);
void policy_rollout_on_diff(policy_rollout_t *r, policy_rollout_diff_cb cb, void *ud);

/* {mode, state, version, rolled_back_version?, rollbacks, reason?}: new reference. state is
 * "not_loaded", "active" or "rolled_back". */
json_t *policy_rollout_status(const policy_rollout_t *r);

/* A copy of v with every string longer than max bytes cut (on a character boundary) and marked,
 * objects and arrays cut to their first 16 members and 8 levels: what the logs and the replay
 * summary show of a message, a few KiB at most whatever the script made. New reference. */
json_t *policy_rollout_cut(json_t *v, size_t max);

#endif
