/* metrics: process-wide counters and gauges, rendered in the Prometheus text format 0.0.4.
 * Updates are relaxed atomic adds so any worker thread may count. Modules own the meaning of
 * their counters; this module owns their names, help texts and rendering. */
#ifndef CHATGW_METRICS_H
#define CHATGW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define METRICS_HTTP_STATUSES 600  /* HTTP statuses 0..599 counted individually */
#define METRICS_WS_OPCODES 16      /* WebSocket opcodes: 4 bits */
#define METRICS_CLOSE_CODES 5000   /* close codes 0..4999 counted individually */
#define METRICS_LATENCY_BUCKETS 12 /* finite upper bounds of chatgw_message_latency_seconds */

enum {
    METRICS_DROP_RATE_LIMITED,
    METRICS_DROP_TOO_LARGE,
    METRICS_DROP_INVALID,          /* bad_json, bad_type, bad_field */
    METRICS_DROP_NOT_IN_ROOM,
    METRICS_DROP_UNKNOWN_PEER,
    METRICS_DROP_POLICY,           /* refused or failed in the Lua policy */
    METRICS_DROP_SLOW,             /* recipient's write queue over its bound */
    METRICS_DROP_ROOM_FULL,        /* join refused: room or per-connection room limit */
    METRICS_DROP_REASONS
};

#define METRICS_POLICY_HOOKS 6     /* on_connect, on_join, on_message, on_leave, on_tick, self_test */
enum { METRICS_POLICY_ERROR, METRICS_POLICY_BUDGET, METRICS_POLICY_MEMORY, METRICS_POLICY_TIMEOUT, METRICS_POLICY_TRIPPED,
       METRICS_POLICY_KINDS };
enum { METRICS_RELOAD_OK, METRICS_RELOAD_FAILED, METRICS_RELOAD_UNCHANGED, METRICS_RELOAD_RESULTS };
/* Policy rollout (policy_rollout.c): arm 0 is the stable policy, arm 1 the candidate. */
#define METRICS_ARMS 2
enum { METRICS_SHADOW_VERDICT, METRICS_SHADOW_CODE, METRICS_SHADOW_REWRITE, METRICS_SHADOW_EFFECTS,
       METRICS_SHADOW_ERROR, METRICS_SHADOW_KINDS };
#define METRICS_ARM_CODES 7        /* drop codes counted by name; the last is "other" */
#define METRICS_ARM_LATENCY_BUCKETS 8
/* chatgw_sentry_events_total{result}: accepted by the DSN, refused or unreachable there, not
 * queued (queue full), not sent (the fingerprint's rate limit) */
enum { METRICS_SENTRY_SENT, METRICS_SENTRY_FAILED, METRICS_SENTRY_DROPPED, METRICS_SENTRY_RATE_LIMITED,
       METRICS_SENTRY_RESULTS };
/* chatgw_bus_errors_total{op}: what the bus asked Redis for when Redis refused or dropped it */
enum {
    METRICS_BUS_OP_POST, METRICS_BUS_OP_PUBLISH, METRICS_BUS_OP_PRESENCE, METRICS_BUS_OP_READ, METRICS_BUS_OP_LIMIT,
    METRICS_BUS_OP_HEARTBEAT, METRICS_BUS_OP_LINK, METRICS_BUS_OPS
};

typedef struct {
    uint64_t conns_open;           /* gauge: TCP connections open */
    uint64_t conns_total;
    uint64_t ws_open;              /* gauge: WebSocket connections open */
    uint64_t ws_total;
    uint64_t http_responses[METRICS_HTTP_STATUSES];  /* by status code */
    uint64_t frames_in[METRICS_WS_OPCODES], frames_out[METRICS_WS_OPCODES];  /* by opcode */
    uint64_t bytes_in, bytes_out;
    uint64_t close_sent[METRICS_CLOSE_CODES], close_received[METRICS_CLOSE_CODES];
    uint64_t conns_rejected_limit; /* refused by max_connections / per-IP */
    uint64_t header_timeouts;
    uint64_t idle_timeouts;
    uint64_t slow_consumers;
    /* chat (hub.c) */
    uint64_t rooms;                /* gauge */
    uint64_t room_members;         /* gauge: memberships */
    uint64_t msgs_received;        /* client protocol messages */
    uint64_t msgs_delivered;       /* frames queued to recipients by fan-out */
    uint64_t msgs_dropped[METRICS_DROP_REASONS];
    uint64_t history_gaps;
    /* chat msg arrival to fan-out (through Redis when it is used): per-bucket counts, the last
     * slot is +Inf; the sum in microseconds */
    uint64_t msg_latency[METRICS_LATENCY_BUCKETS + 1];
    uint64_t msg_latency_sum_us;
    /* bus (hub.c copies bus_stats_get here: on each bus event and once a second) */
    uint64_t janus_up;             /* gauge: 1 while the Janus session is up (0 without janus_url) */
    uint64_t voice_sfu_members;    /* gauge: members in voice through Janus */
    uint64_t voice_refused;        /* voice joins refused at once: Janus down */
    uint64_t voice_lost;           /* voice ended by Janus: failed joins, lost sessions */
    uint64_t bus_up;               /* gauge: 1 while the bus works (always 1 without redis_url) */
    uint64_t bus_reconnects;
    uint64_t bus_published;
    uint64_t bus_received;
    uint64_t bus_errors[METRICS_BUS_OPS];
    uint64_t bus_refusing;         /* gauge: 1 while Redis refuses writes (OOM, READONLY, ...) */
    uint64_t bus_shards_down;      /* gauge: Redis Cluster masters unreachable while the rest serve */
    /* policy (policy.c): hooks are POLICY_HOOK_* plus self_test at METRICS_POLICY_HOOKS - 1 */
    uint64_t policy_errors[METRICS_POLICY_HOOKS][METRICS_POLICY_KINDS];
    uint64_t policy_reloads[METRICS_RELOAD_RESULTS];
    uint64_t policy_loaded;        /* gauge: 1 once a policy version serves (policy_load) */
    uint64_t policy_store_keys, policy_store_buckets;   /* gauges, set from on_tick */
    uint64_t policy_store_bytes;
    uint64_t policy_store_evicted;
    /* policy rollout (policy_rollout.c): candidate beside the stable policy */
    uint64_t policy_shadow_diffs[METRICS_POLICY_HOOKS][METRICS_SHADOW_KINDS];
    uint64_t policy_arm_calls[METRICS_ARMS][METRICS_POLICY_HOOKS];
    uint64_t policy_arm_errors[METRICS_ARMS][METRICS_POLICY_HOOKS][METRICS_POLICY_KINDS];
    uint64_t policy_arm_drops[METRICS_ARMS][METRICS_POLICY_HOOKS][METRICS_ARM_CODES];
    uint64_t policy_arm_latency[METRICS_ARMS][METRICS_ARM_LATENCY_BUCKETS + 1];   /* last slot +Inf */
    uint64_t policy_arm_latency_sum_us[METRICS_ARMS];
    uint64_t policy_rollbacks;
    uint64_t policy_candidate_active;   /* gauge: workers whose candidate takes or shadows decisions */
    uint64_t policy_candidate_reloads[METRICS_RELOAD_RESULTS];
    /* error reports (app/sentry_app.c; counted in worker 0's metrics) */
    uint64_t sentry_events[METRICS_SENTRY_RESULTS];
} metrics_t;

/* Label values for chatgw_policy_errors_total{hook,kind} and chatgw_policy_reloads_total{result}. */
extern const char *const metrics_policy_hooks[METRICS_POLICY_HOOKS];
extern const char *const metrics_policy_kinds[METRICS_POLICY_KINDS];
extern const char *const metrics_reload_results[METRICS_RELOAD_RESULTS];
extern const char *const metrics_sentry_results[METRICS_SENTRY_RESULTS];

/* Label values of the rollout families: arms, shadow diff kinds, drop codes (the last "other"). */
extern const char *const metrics_arms[METRICS_ARMS];
extern const char *const metrics_shadow_kinds[METRICS_SHADOW_KINDS];
extern const char *const metrics_arm_codes[METRICS_ARM_CODES];
/* Counts one hook call of arm that took usec microseconds. */
void metrics_arm_latency_observe(metrics_t *m, int arm, uint64_t usec);

/* Label values of chatgw_messages_dropped_total{reason}, indexed by METRICS_DROP_*. */
extern const char *const metrics_drop_reasons[METRICS_DROP_REASONS];
/* Label values of chatgw_bus_errors_total{op}, indexed by METRICS_BUS_OP_*. */
extern const char *const metrics_bus_ops[METRICS_BUS_OPS];

#define METRIC_ADD(field, n) __atomic_add_fetch(&(field), (uint64_t)(n), __ATOMIC_RELAXED)
#define METRIC_SUB(field, n) __atomic_sub_fetch(&(field), (uint64_t)(n), __ATOMIC_RELAXED)
#define METRIC_INC(field) METRIC_ADD(field, 1)

/* Counts one msg whose fan-out began usec microseconds after it arrived. */
void metrics_latency_observe(metrics_t *m, uint64_t usec);

/* out = the sum of n workers' metrics (relaxed atomic loads, so the workers may go on
 * counting); bus_up and policy_loaded are the least of them (1 only while every worker's bus
 * is up, or every worker has a policy loaded). */
void metrics_sum(metrics_t *out, const metrics_t *const *ms, size_t n);

/* Appends every metric of m to out, plus chatgw_build_info{version}. */
void metrics_render(const metrics_t *m, const char *version, buf_t *out);
/* Appends an info gauge: name{label="value"} 1, with HELP and TYPE. */
void metrics_info_render(buf_t *out, const char *name, const char *help, const char *label, const char *value);

#endif
