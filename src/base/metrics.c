/* metrics: renders metrics_t in the Prometheus text exposition format 0.0.4. Every family gets
 * its # HELP and # TYPE lines once, before its samples, even when a labelled family has no
 * sample yet, so a scraper always sees the whole schema. Values are read with relaxed atomic
 * loads: a scrape may race with worker threads and needs no more than that. This module never
 * changes a counter; it only names and prints them. */
#include "base/metrics.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* Families with one unlabelled sample, read from a uint64_t at offset in metrics_t. */
typedef struct {
    const char *name, *type, *help;
    size_t offset;
} metrics_scalar_t;

static const metrics_scalar_t metrics_scalars[] = {
    { "chatgw_connections_open", "gauge", "TCP connections open.",
      offsetof(metrics_t, conns_open) },
    { "chatgw_connections_total", "counter", "TCP connections accepted.",
      offsetof(metrics_t, conns_total) },
    { "chatgw_websockets_open", "gauge", "WebSocket connections open.",
      offsetof(metrics_t, ws_open) },
    { "chatgw_websockets_total", "counter", "WebSocket upgrades completed.",
      offsetof(metrics_t, ws_total) },
    { "chatgw_bytes_in_total", "counter", "Bytes read from client sockets.",
      offsetof(metrics_t, bytes_in) },
    { "chatgw_bytes_out_total", "counter", "Bytes written to client sockets.",
      offsetof(metrics_t, bytes_out) },
    { "chatgw_connections_rejected_total", "counter",
      "Connections refused by max_connections or max_connections_per_ip.",
      offsetof(metrics_t, conns_rejected_limit) },
    { "chatgw_header_timeouts_total", "counter",
      "Connections closed because request headers did not arrive within header_timeout_ms.",
      offsetof(metrics_t, header_timeouts) },
    { "chatgw_idle_timeouts_total", "counter",
      "Connections closed after idle_timeout_ms without traffic.",
      offsetof(metrics_t, idle_timeouts) },
    { "chatgw_slow_consumers_total", "counter",
      "Connections closed because their write queue stayed over write_queue_bytes.",
      offsetof(metrics_t, slow_consumers) },
    { "chatgw_rooms", "gauge", "Rooms with at least one member.", offsetof(metrics_t, rooms) },
    { "chatgw_room_members", "gauge", "Room memberships (a connection in two rooms counts twice).",
      offsetof(metrics_t, room_members) },
    { "chatgw_messages_received_total", "counter", "Protocol messages received from clients.",
      offsetof(metrics_t, msgs_received) },
    { "chatgw_messages_delivered_total", "counter", "Frames queued to recipients by room fan-out.",
      offsetof(metrics_t, msgs_delivered) },
    { "chatgw_history_gaps_total", "counter",
      "Recoveries that could not be served whole from the history ring (history_gap sent).",
      offsetof(metrics_t, history_gaps) },
    { "chatgw_janus_up", "gauge", "1 while the Janus session is up (0 without janus_url).",
      offsetof(metrics_t, janus_up) },
    { "chatgw_voice_sfu_members", "gauge", "Members in voice through Janus.", offsetof(metrics_t, voice_sfu_members) },
    { "chatgw_voice_refused_total", "counter", "Voice joins refused at once because Janus was unreachable.",
      offsetof(metrics_t, voice_refused) },
    { "chatgw_voice_lost_total", "counter", "Voices ended by Janus (failed or timed-out joins, lost sessions).",
      offsetof(metrics_t, voice_lost) },
    { "chatgw_bus_up", "gauge",
      "1 while the bus to the other replicas works (always 1 without redis_url).",
      offsetof(metrics_t, bus_up) },
    { "chatgw_bus_reconnects_total", "counter", "Redis links re-established after the first.",
      offsetof(metrics_t, bus_reconnects) },
    { "chatgw_bus_published_total", "counter", "Messages and events Redis accepted from this replica.",
      offsetof(metrics_t, bus_published) },
    { "chatgw_bus_received_total", "counter", "Messages and presence events received from other replicas.",
      offsetof(metrics_t, bus_received) },
    { "chatgw_bus_refusing", "gauge",
      "1 while Redis answers this replica's writes with errors (out of memory, read-only replica).",
      offsetof(metrics_t, bus_refusing) },
    { "chatgw_bus_shards_down", "gauge",
      "Redis Cluster masters this replica cannot reach while the others serve; rooms on them fall back "
      "to local delivery until the slot map names a live master.",
      offsetof(metrics_t, bus_shards_down) },
    { "chatgw_policy_loaded", "gauge",
      "1 while a policy is loaded; 0 while the process waits for a loadable one (policy_boot = wait) "
      "and refuses every chat connection.",
      offsetof(metrics_t, policy_loaded) },
    { "chatgw_policy_store_keys", "gauge", "Entries in the policy's gw.store (updated once a second).",
      offsetof(metrics_t, policy_store_keys) },
    { "chatgw_policy_store_buckets", "gauge", "gw.limit token buckets held (updated once a second).",
      offsetof(metrics_t, policy_store_buckets) },
    { "chatgw_policy_store_bytes", "gauge",
      "Bytes gw.store and gw.limit hold, as charged against policy_store_mb (updated once a second).",
      offsetof(metrics_t, policy_store_bytes) },
    { "chatgw_policy_store_evicted_total", "counter",
      "gw.store entries evicted because the store was full (soonest to expire first).",
      offsetof(metrics_t, policy_store_evicted) },
    { "chatgw_policy_rollbacks_total", "counter",
      "Automatic rollbacks of the candidate policy (its error or drop rate over the bound).",
      offsetof(metrics_t, policy_rollbacks) },
    { "chatgw_policy_candidate_active", "gauge",
      "Workers whose candidate policy is loaded and shadowing or serving its canary share (0 when off or rolled back).",
      offsetof(metrics_t, policy_candidate_active) },
};

const char *const metrics_bus_ops[METRICS_BUS_OPS] = {
    "post", "publish", "presence", "read", "limit", "heartbeat", "link",
};

const char *const metrics_drop_reasons[METRICS_DROP_REASONS] = {
    "rate_limited", "too_large", "invalid", "not_in_room", "unknown_peer", "policy", "slow",
    "room_full",
};
const char *const metrics_policy_hooks[METRICS_POLICY_HOOKS] = {
    "on_connect", "on_join", "on_message", "on_leave", "on_tick", "self_test",
};
const char *const metrics_policy_kinds[METRICS_POLICY_KINDS] = { "error", "budget", "memory", "timeout", "tripped" };
const char *const metrics_reload_results[METRICS_RELOAD_RESULTS] = { "ok", "failed", "unchanged" };
const char *const metrics_arms[METRICS_ARMS] = { "stable", "candidate" };
const char *const metrics_shadow_kinds[METRICS_SHADOW_KINDS] = { "verdict", "code", "rewrite", "effects", "error" };
const char *const metrics_arm_codes[METRICS_ARM_CODES] = {
    "forbidden", "room_full", "rate_limited", "banned", "bad_field", "bad_type", "other",
};
const char *const metrics_sentry_results[METRICS_SENTRY_RESULTS] = { "sent", "failed", "dropped", "rate_limited" };

static uint64_t metrics_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static void metrics_family_head(buf_t *out, const char *name, const char *type, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Upper bounds in microseconds: 0.5 ms to 2.5 s, the range where a chat delay matters. */
static const uint64_t metrics_latency_le_us[METRICS_LATENCY_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};

void metrics_latency_observe(metrics_t *m, uint64_t usec)
{
    unsigned i = 0;
    while (i < METRICS_LATENCY_BUCKETS && usec > metrics_latency_le_us[i]) i++;
    METRIC_INC(m->msg_latency[i]);
    METRIC_ADD(m->msg_latency_sum_us, usec);
}

static void metrics_latency_render(const metrics_t *m, buf_t *out)
{
    const char *name = "chatgw_message_latency_seconds";
    metrics_family_head(out, name, "histogram",
                        "Chat messages from arrival to the start of their fan-out (through Redis when used).");
    uint64_t cum = 0;
    for (unsigned i = 0; i <= METRICS_LATENCY_BUCKETS; i++) {
        cum += metrics_load(&m->msg_latency[i]);
        if (i < METRICS_LATENCY_BUCKETS)
            buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, (double)metrics_latency_le_us[i] / 1e6,
                       (unsigned long long)cum);
        else
            buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    buf_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)metrics_load(&m->msg_latency_sum_us) / 1e6, name,
               (unsigned long long)cum);
}

/* Upper bounds of one policy hook call in microseconds: 10 us to 50 ms (policy_timeout_ms). */
static const uint64_t metrics_arm_le_us[METRICS_ARM_LATENCY_BUCKETS] = { 10, 25, 50, 100, 250, 1000, 10000, 50000 };

void metrics_arm_latency_observe(metrics_t *m, int arm, uint64_t usec)
{
    unsigned i = 0;
    while (i < METRICS_ARM_LATENCY_BUCKETS && usec > metrics_arm_le_us[i]) i++;
    METRIC_INC(m->policy_arm_latency[arm][i]);
    METRIC_ADD(m->policy_arm_latency_sum_us[arm], usec);
}

static void metrics_enum_render(buf_t *out, const char *name, const char *help, const char *label,
                                const uint64_t *values, const char *const *names, unsigned n);

/* The rollout families: shadow diffs, and per arm calls, errors, drops and latency. */
static void metrics_rollout_render(const metrics_t *m, buf_t *out)
{
    const char *name = "chatgw_policy_shadow_diff_total";
    metrics_family_head(out, name, "counter",
                        "Shadow mode: hook calls where the candidate disagreed with the stable policy, by hook and kind.");
    for (unsigned h = 0; h < METRICS_POLICY_HOOKS - 1; h++)
        for (unsigned k = 0; k < METRICS_SHADOW_KINDS; k++)
            buf_printf(out, "%s{hook=\"%s\",kind=\"%s\"} %llu\n", name, metrics_policy_hooks[h],
                       metrics_shadow_kinds[k], (unsigned long long)metrics_load(&m->policy_shadow_diffs[h][k]));
    name = "chatgw_policy_arm_calls_total";
    metrics_family_head(out, name, "counter", "Policy hook calls by rollout arm (stable, candidate) and hook.");
    for (unsigned a = 0; a < METRICS_ARMS; a++)
        for (unsigned h = 0; h < METRICS_POLICY_HOOKS - 1; h++)
            buf_printf(out, "%s{arm=\"%s\",hook=\"%s\"} %llu\n", name, metrics_arms[a], metrics_policy_hooks[h],
                       (unsigned long long)metrics_load(&m->policy_arm_calls[a][h]));
    name = "chatgw_policy_arm_errors_total";
    metrics_family_head(out, name, "counter", "Policy hook calls aborted, by rollout arm, hook and kind.");
    for (unsigned a = 0; a < METRICS_ARMS; a++)
        for (unsigned h = 0; h < METRICS_POLICY_HOOKS - 1; h++)
            for (unsigned k = 0; k < METRICS_POLICY_KINDS; k++)
                buf_printf(out, "%s{arm=\"%s\",hook=\"%s\",kind=\"%s\"} %llu\n", name, metrics_arms[a],
                           metrics_policy_hooks[h], metrics_policy_kinds[k],
                           (unsigned long long)metrics_load(&m->policy_arm_errors[a][h][k]));
    name = "chatgw_policy_arm_drops_total";
    metrics_family_head(out, name, "counter",
                        "Refusals and drops by the policy, by rollout arm, hook (on_join: join refusals) and code.");
    for (unsigned a = 0; a < METRICS_ARMS; a++)
        for (unsigned h = 0; h <= 2; h++)          /* on_connect, on_join, on_message refuse */
            for (unsigned c = 0; c < METRICS_ARM_CODES; c++)
                buf_printf(out, "%s{arm=\"%s\",hook=\"%s\",code=\"%s\"} %llu\n", name, metrics_arms[a],
                           metrics_policy_hooks[h], metrics_arm_codes[c],
                           (unsigned long long)metrics_load(&m->policy_arm_drops[a][h][c]));
    name = "chatgw_policy_arm_latency_seconds";
    metrics_family_head(out, name, "histogram", "Policy hook call time by rollout arm.");
    for (unsigned a = 0; a < METRICS_ARMS; a++) {
        uint64_t cum = 0;
        for (unsigned i = 0; i <= METRICS_ARM_LATENCY_BUCKETS; i++) {
            cum += metrics_load(&m->policy_arm_latency[a][i]);
            if (i < METRICS_ARM_LATENCY_BUCKETS)
                buf_printf(out, "%s_bucket{arm=\"%s\",le=\"%g\"} %llu\n", name, metrics_arms[a],
                           (double)metrics_arm_le_us[i] / 1e6, (unsigned long long)cum);
            else
                buf_printf(out, "%s_bucket{arm=\"%s\",le=\"+Inf\"} %llu\n", name, metrics_arms[a],
                           (unsigned long long)cum);
        }
        buf_printf(out, "%s_sum{arm=\"%s\"} %.6f\n%s_count{arm=\"%s\"} %llu\n", name, metrics_arms[a],
                   (double)metrics_load(&m->policy_arm_latency_sum_us[a]) / 1e6, name, metrics_arms[a],
                   (unsigned long long)cum);
    }
    metrics_enum_render(out, "chatgw_policy_candidate_reloads_total", "Candidate policy reload attempts, by result.",
                        "result", m->policy_candidate_reloads, metrics_reload_results, METRICS_RELOAD_RESULTS);
}

static void metrics_scalars_render(const metrics_t *m, buf_t *out)
{
    for (size_t i = 0; i < sizeof metrics_scalars / sizeof metrics_scalars[0]; i++) {
        const metrics_scalar_t *s = &metrics_scalars[i];
        const uint64_t *p = (const uint64_t *)((const char *)m + s->offset);
        metrics_family_head(out, s->name, s->type, s->help);
        buf_printf(out, "%s %llu\n", s->name, (unsigned long long)metrics_load(p));
    }
}

/* RFC 6455 opcode names; reserved opcodes keep their number. */
static void metrics_opcode_name(unsigned op, char *out, size_t outlen)
{
    static const char *const names[METRICS_WS_OPCODES] = {
        [0] = "continuation", [1] = "text", [2] = "binary",
        [8] = "close", [9] = "ping", [10] = "pong",
    };
    if (op < METRICS_WS_OPCODES && names[op])
        snprintf(out, outlen, "%s", names[op]);
    else
        snprintf(out, outlen, "%u", op);
}

static void metrics_number_name(unsigned i, char *out, size_t outlen) { snprintf(out, outlen, "%u", i); }

/* Label values printed even at zero, so dashboards and rate() see the series from the start. */
static int metrics_opcode_known(unsigned op) { return op <= 2 || (op >= 8 && op <= 10); }
static int metrics_close_known(unsigned code)
{
    return code == 1000 || code == 1001 || code == 1002 || code == 1003 || code == 1007 ||
           code == 1008 || code == 1009 || code == 1011;
}
static int metrics_status_known(unsigned code) { return code == 200 || code == 404 || code == 503; }

/* A counter family with one label: one sample per nonzero slot of values[0..n), and per slot
 * that known() names. */
static void metrics_labelled_render(buf_t *out, const char *name, const char *help,
                                    const char *label, const uint64_t *values, unsigned n,
                                    void (*label_value)(unsigned, char *, size_t),
                                    int (*known)(unsigned))
{
    metrics_family_head(out, name, "counter", help);
    for (unsigned i = 0; i < n; i++) {
        uint64_t v = metrics_load(&values[i]);
        if (!v && !known(i)) continue;
        char lv[16];
        label_value(i, lv, sizeof lv);
        buf_printf(out, "%s{%s=\"%s\"} %llu\n", name, label, lv, (unsigned long long)v);
    }
}

/* Label values escape backslash, double quote and newline (text format 0.0.4). */
static void metrics_label_escape(buf_t *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') buf_append_str(out, "\\\\");
        else if (*s == '"') buf_append_str(out, "\\\"");
        else if (*s == '\n') buf_append_str(out, "\\n");
        else buf_append(out, s, 1);
    }
}

void metrics_info_render(buf_t *out, const char *name, const char *help, const char *label, const char *value)
{
    metrics_family_head(out, name, "gauge", help);
    buf_printf(out, "%s{%s=\"", name, label);
    metrics_label_escape(out, value);
    buf_append_str(out, "\"} 1\n");
}

/* A counter family over fixed label values, every value printed. */
static void metrics_enum_render(buf_t *out, const char *name, const char *help, const char *label,
                                const uint64_t *values, const char *const *names, unsigned n)
{
    metrics_family_head(out, name, "counter", help);
    for (unsigned i = 0; i < n; i++)
        buf_printf(out, "%s{%s=\"%s\"} %llu\n", name, label, names[i],
                   (unsigned long long)metrics_load(&values[i]));
}

static void metrics_policy_errors_render(const metrics_t *m, buf_t *out)
{
    const char *name = "chatgw_policy_errors_total";
    metrics_family_head(out, name, "counter",
                        "Policy hook calls aborted, by hook and kind (error, budget, memory).");
    for (unsigned h = 0; h < METRICS_POLICY_HOOKS; h++)
        for (unsigned k = 0; k < METRICS_POLICY_KINDS; k++)
            buf_printf(out, "%s{hook=\"%s\",kind=\"%s\"} %llu\n", name, metrics_policy_hooks[h],
                       metrics_policy_kinds[k], (unsigned long long)metrics_load(&m->policy_errors[h][k]));
}

void metrics_render(const metrics_t *m, const char *version, buf_t *out)
{
    metrics_scalars_render(m, out);
    metrics_labelled_render(out, "chatgw_http_responses_total", "HTTP responses sent, by status code.",
                            "code", m->http_responses, METRICS_HTTP_STATUSES, metrics_number_name, metrics_status_known);
    metrics_labelled_render(out, "chatgw_ws_frames_in_total", "WebSocket frames received, by opcode.",
                            "opcode", m->frames_in, METRICS_WS_OPCODES, metrics_opcode_name, metrics_opcode_known);
    metrics_labelled_render(out, "chatgw_ws_frames_out_total", "WebSocket frames sent, by opcode.",
                            "opcode", m->frames_out, METRICS_WS_OPCODES, metrics_opcode_name, metrics_opcode_known);
    metrics_labelled_render(out, "chatgw_ws_close_sent_total", "WebSocket close frames sent, by close code.",
                            "code", m->close_sent, METRICS_CLOSE_CODES, metrics_number_name,
                            metrics_close_known);
    metrics_labelled_render(out, "chatgw_ws_close_received_total",
                            "WebSocket close frames received, by close code.",
                            "code", m->close_received, METRICS_CLOSE_CODES, metrics_number_name,
                            metrics_close_known);
    metrics_enum_render(out, "chatgw_messages_dropped_total",
                        "Client messages refused or frames not delivered, by reason.", "reason",
                        m->msgs_dropped, metrics_drop_reasons, METRICS_DROP_REASONS);
    metrics_enum_render(out, "chatgw_bus_errors_total",
                        "Redis requests that failed (an error reply such as OOM, or no answer), by operation; "
                        "op=link counts lost or refused links.", "op", m->bus_errors, metrics_bus_ops,
                        METRICS_BUS_OPS);
    metrics_latency_render(m, out);
    metrics_policy_errors_render(m, out);
    metrics_enum_render(out, "chatgw_policy_reloads_total", "Policy reload attempts, by result.", "result",
                        m->policy_reloads, metrics_reload_results, METRICS_RELOAD_RESULTS);
    metrics_rollout_render(m, out);
    metrics_enum_render(out, "chatgw_sentry_events_total",
                        "Error reports for sentry_dsn, by result (sent, failed, dropped, rate_limited).", "result",
                        m->sentry_events, metrics_sentry_results, METRICS_SENTRY_RESULTS);
    metrics_info_render(out, "chatgw_build_info", "Build information; always 1.", "version",
                        version ? version : "unknown");
}

/* metrics_t is nothing but uint64_t fields: it sums as an array. */
_Static_assert(sizeof(metrics_t) % sizeof(uint64_t) == 0, "metrics_t holds only uint64_t");

void metrics_sum(metrics_t *out, const metrics_t *const *ms, size_t n)
{
    memset(out, 0, sizeof *out);
    uint64_t *acc = (uint64_t *)out, up_min = 0, loaded_min = 0, down_max = 0;
    for (size_t k = 0; k < n; k++) {
        const uint64_t *f = (const uint64_t *)ms[k];
        for (size_t i = 0; i < sizeof *out / sizeof *acc; i++) acc[i] += __atomic_load_n(&f[i], __ATOMIC_RELAXED);
        uint64_t up = __atomic_load_n(&ms[k]->bus_up, __ATOMIC_RELAXED);
        if (k == 0 || up < up_min) up_min = up;
        uint64_t loaded = __atomic_load_n(&ms[k]->policy_loaded, __ATOMIC_RELAXED);
        if (k == 0 || loaded < loaded_min) loaded_min = loaded;
        uint64_t down = __atomic_load_n(&ms[k]->bus_shards_down, __ATOMIC_RELAXED);
        if (down > down_max) down_max = down;   /* every worker sees the same shards */
    }
    out->bus_up = up_min;
    out->bus_shards_down = down_max;
    out->policy_loaded = loaded_min;
}
