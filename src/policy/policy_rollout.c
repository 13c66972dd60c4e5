/* policy_rollout: arms, recorded effects, shadow diffs and the canary's rollback (see
 * policy_rollout.h). The effects of one hook call are kept as JSON lists, one per arm, of at
 * most POLICY_ROLLOUT_EFFECTS_MAX entries (past that only counted), so a script that sends in a
 * loop costs a bounded amount here. The rollback window is a tumbling one: its counts start
 * over when it ends, and a rollback needs policy_rollback_min_calls in one window, so a handful
 * of unlucky calls never trips it. Diff samples are logged at most POLICY_ROLLOUT_LOGS_PER_MIN
 * times a minute, with the number left out since the last one. */
#include "policy/policy_rollout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/log.h"

#define POLICY_ROLLOUT_EFFECTS_MAX 32      /* effects recorded per arm and call */
#define POLICY_ROLLOUT_LOGS_PER_MIN 10     /* diff samples logged per minute and worker */
#define POLICY_ROLLOUT_TEXT_MAX 64         /* bytes of a string a diff sample shows */
#define POLICY_ROLLOUT_ITEMS_MAX 16        /* members of an object or array a cut copy keeps */
#define POLICY_ROLLOUT_DEPTH_MAX 8         /* levels a cut copy keeps */

typedef struct {
    policy_rollout_t *r;
    int arm;
} policy_rollout_side_t;

struct policy_rollout_s {
    int mode;
    const config_t *cfg;
    metrics_t *metrics;
    policy_host_t real;
    policy_rollout_side_t side[2];
    int effects[2];                /* POLICY_EFFECTS_* bits per arm */
    json_t *recorded[2];           /* per arm: [{op, ...}] since the last clear */
    size_t more[2];                /* effects past POLICY_ROLLOUT_EFFECTS_MAX */
    char version[POLICY_VERSION_SIZE];           /* the candidate's; "" = none loaded */
    char rolled_back[POLICY_VERSION_SIZE];       /* the version rolled back; "" = none */
    char reason[160];              /* why it was rolled back */
    unsigned long rollbacks;
    double win_start;              /* the rollback window (monotonic s); 0 = none yet */
    unsigned long win_calls, win_errors, win_drops;
    double log_start;              /* the minute diff samples are counted in */
    unsigned log_n;
    unsigned long log_skipped;
    policy_rollout_diff_cb diff_cb;
    void *diff_ud;
};

int policy_rollout_mode_parse(const char *s)
{
    if (!s) return -1;
    if (!strcmp(s, "off")) return POLICY_ROLLOUT_OFF;
    if (!strcmp(s, "shadow")) return POLICY_ROLLOUT_SHADOW;
    if (!strcmp(s, "canary")) return POLICY_ROLLOUT_CANARY;
    return -1;
}

static const char *policy_rollout_mode_name(int mode)
{
    return mode == POLICY_ROLLOUT_SHADOW ? "shadow" : mode == POLICY_ROLLOUT_CANARY ? "canary" : "off";
}

static void policy_rollout_gauge(policy_rollout_t *r)
{
    if (r->metrics)
        __atomic_store_n(&r->metrics->policy_candidate_active, (uint64_t)policy_rollout_live(r), __ATOMIC_RELAXED);
}

policy_rollout_t *policy_rollout_new(int mode, const config_t *cfg, metrics_t *metrics, const policy_host_t *real)
{
    policy_rollout_t *r = xcalloc(1, sizeof *r);
    r->mode = mode;
    r->cfg = cfg;
    r->metrics = metrics;
    if (real) r->real = *real;
    for (int a = 0; a < 2; a++) {
        r->side[a] = (policy_rollout_side_t){ r, a };
        r->recorded[a] = json_array();
    }
    r->effects[POLICY_ARM_STABLE] = POLICY_EFFECTS_LIVE;
    r->effects[POLICY_ARM_CANDIDATE] = POLICY_EFFECTS_RECORD;
    return r;
}

void policy_rollout_free(policy_rollout_t *r)
{
    if (!r) return;
    if (r->metrics) __atomic_store_n(&r->metrics->policy_candidate_active, 0, __ATOMIC_RELAXED);
    for (int a = 0; a < 2; a++) json_decref(r->recorded[a]);
    free(r);
}

int policy_rollout_mode(const policy_rollout_t *r) { return r ? r->mode : POLICY_ROLLOUT_OFF; }

/* ---- the hosts: effects performed, recorded, or both ---- */

/* Records one effect (obj stolen) for arm when its calls record. */
static void policy_rollout_note(policy_rollout_t *r, int arm, json_t *obj)
{
    if (!(r->effects[arm] & POLICY_EFFECTS_RECORD) || json_array_size(r->recorded[arm]) >= POLICY_ROLLOUT_EFFECTS_MAX) {
        if (r->effects[arm] & POLICY_EFFECTS_RECORD) r->more[arm]++;
        json_decref(obj);
        return;
    }
    json_array_append_new(r->recorded[arm], obj);
}

static int policy_rollout_send(void *ud, const char *conn_id, json_t *msg)
{
    policy_rollout_side_t *s = ud;
    policy_rollout_t *r = s->r;
    policy_rollout_note(r, s->arm, json_pack("{s:s, s:s, s:O}", "op", "send", "to", conn_id, "msg", msg));
    if (!(r->effects[s->arm] & POLICY_EFFECTS_LIVE)) return 0;
    return r->real.send ? r->real.send(r->real.ud, conn_id, msg) : GW_ENOTSUP;
}

static int policy_rollout_broadcast(void *ud, const char *room, json_t *msg, const char *except)
{
    policy_rollout_side_t *s = ud;
    policy_rollout_t *r = s->r;
    policy_rollout_note(r, s->arm, json_pack("{s:s, s:s, s:O, s:s?}", "op", "broadcast", "room", room, "msg", msg,
                                             "except", except));
    if (!(r->effects[s->arm] & POLICY_EFFECTS_LIVE)) return 0;
    return r->real.broadcast ? r->real.broadcast(r->real.ud, room, msg, except) : GW_ENOTSUP;
}

static int policy_rollout_kick(void *ud, const char *conn_id, const char *code, const char *reason)
{
    policy_rollout_side_t *s = ud;
    policy_rollout_t *r = s->r;
    policy_rollout_note(r, s->arm, json_pack("{s:s, s:s, s:s, s:s}", "op", "kick", "to", conn_id, "code", code,
                                             "reason", reason));
    if (!(r->effects[s->arm] & POLICY_EFFECTS_LIVE)) return 0;
    return r->real.kick ? r->real.kick(r->real.ud, conn_id, code, reason) : GW_ENOTSUP;
}

static int policy_rollout_mute(void *ud, const char *conn_id, const char *room, int muted)
{
    policy_rollout_side_t *s = ud;
    policy_rollout_t *r = s->r;
    policy_rollout_note(r, s->arm, json_pack("{s:s, s:s, s:s, s:b}", "op", "mute", "to", conn_id, "room", room,
                                             "muted", muted));
    if (!(r->effects[s->arm] & POLICY_EFFECTS_LIVE)) return 0;
    return r->real.mute ? r->real.mute(r->real.ud, conn_id, room, muted) : GW_ENOTSUP;
}

static json_t *policy_rollout_members(void *ud, const char *room)
{
    policy_rollout_t *r = ((policy_rollout_side_t *)ud)->r;
    return r->real.members ? r->real.members(r->real.ud, room) : NULL;
}

static json_t *policy_rollout_rooms(void *ud)
{
    policy_rollout_t *r = ((policy_rollout_side_t *)ud)->r;
    return r->real.rooms ? r->real.rooms(r->real.ud) : json_array();
}

static void policy_rollout_log(void *ud, int level, const char *msg, json_t *fields)
{
    policy_rollout_side_t *s = ud;
    policy_rollout_t *r = s->r;
    json_t *f = fields ? json_copy(fields) : json_object();
    if (s->arm == POLICY_ARM_CANDIDATE) json_object_set_new(f, "policy", json_string("candidate"));
    if (r->real.log)
        r->real.log(r->real.ud, level, msg, f);
    else
        log_write(level, msg, "O", f);
    json_decref(f);
}

static int policy_rollout_limit_take(void *ud, const char *key, double rate, double burst,
                                     void (*done)(void *, const char *, double, double, double), void *arg)
{
    policy_rollout_side_t *s = ud;
    policy_rollout_t *r = s->r;
    if (!r->real.limit_take || !(r->effects[s->arm] & POLICY_EFFECTS_LIVE)) return GW_ENOTSUP;
    return r->real.limit_take(r->real.ud, key, rate, burst, done, arg);
}

void policy_rollout_host(policy_rollout_t *r, int arm, policy_host_t *out)
{
    *out = (policy_host_t){
        .ud = &r->side[arm], .send = policy_rollout_send, .broadcast = policy_rollout_broadcast,
        .kick = policy_rollout_kick, .members = policy_rollout_members, .rooms = policy_rollout_rooms,
        .log = policy_rollout_log, .limit_take = policy_rollout_limit_take, .mute = policy_rollout_mute,
    };
}

void policy_rollout_effects(policy_rollout_t *r, int arm, int bits) { r->effects[arm] = bits; }

void policy_rollout_effects_clear(policy_rollout_t *r)
{
    for (int a = 0; a < 2; a++) {
        json_array_clear(r->recorded[a]);
        r->more[a] = 0;
    }
}

/* ---- arms and the rollback ---- */

void policy_rollout_candidate_version(policy_rollout_t *r, const char *version)
{
    if (strcmp(r->version, version) != 0) {
        snprintf(r->version, sizeof r->version, "%s", version);
        r->win_start = 0;
        r->win_calls = r->win_errors = r->win_drops = 0;
        if (r->rolled_back[0] && version[0] && strcmp(version, r->rolled_back)) {
            log_info("policy candidate armed again: a new version", "{s:s, s:s, s:s}", "mode",
                     policy_rollout_mode_name(r->mode), "version", version, "rolled_back", r->rolled_back);
            r->rolled_back[0] = '\0';
            r->reason[0] = '\0';
        }
    }
    policy_rollout_gauge(r);
}

int policy_rollout_live(const policy_rollout_t *r)
{
    return r && r->mode != POLICY_ROLLOUT_OFF && r->version[0] && !r->rolled_back[0];
}

/* FNV-1a over the id: the same on every replica and across restarts, so a reconnecting
 * client with the same id would get the same arm. */
unsigned policy_rollout_share(const char *conn_id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *s = (const unsigned char *)conn_id; *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    h ^= h >> 29;
    return (unsigned)(h % 10000u);
}

int policy_rollout_arm(const policy_rollout_t *r, const char *conn_id)
{
    if (!conn_id || !r || r->mode != POLICY_ROLLOUT_CANARY || !policy_rollout_live(r)) return POLICY_ARM_STABLE;
    double pct = r->cfg ? r->cfg->policy_candidate_percent : 0;
    return (double)policy_rollout_share(conn_id) < pct * 100.0 ? POLICY_ARM_CANDIDATE : POLICY_ARM_STABLE;
}

/* The metrics label slot of a drop code. */
static int policy_rollout_code_slot(const char *code)
{
    for (int i = 0; code && i < METRICS_ARM_CODES - 1; i++)
        if (!strcmp(code, metrics_arm_codes[i])) return i;
    return METRICS_ARM_CODES - 1;
}

static void policy_rollout_back(policy_rollout_t *r, double error_rate, double drop_rate)
{
    snprintf(r->rolled_back, sizeof r->rolled_back, "%s", r->version);
    snprintf(r->reason, sizeof r->reason, "%s rate %.3f over %.3f in %lu calls",
             error_rate > r->cfg->policy_rollback_error_rate ? "error" : "drop",
             error_rate > r->cfg->policy_rollback_error_rate ? error_rate : drop_rate,
             error_rate > r->cfg->policy_rollback_error_rate ? r->cfg->policy_rollback_error_rate
                                                             : r->cfg->policy_rollback_drop_rate,
             r->win_calls);
    r->rollbacks++;
    if (r->metrics) METRIC_INC(r->metrics->policy_rollbacks);
    policy_rollout_gauge(r);
    log_error("policy candidate rolled back; every connection is on the stable policy until the candidate changes",
              "{s:s, s:s, s:I, s:I, s:I}", "version", r->version, "reason", r->reason, "calls",
              (json_int_t)r->win_calls, "errors", (json_int_t)r->win_errors, "drops", (json_int_t)r->win_drops);
}

int policy_rollout_observe(policy_rollout_t *r, int arm, int hook, const policy_outcome_t *o, uint64_t usec,
                           double now)
{
    if (r->metrics && hook >= 0 && hook < POLICY_HOOKS) {
        METRIC_INC(r->metrics->policy_arm_calls[arm][hook]);
        if (o->rc == POLICY_ERROR && o->kind >= 0 && o->kind < METRICS_POLICY_KINDS)
            METRIC_INC(r->metrics->policy_arm_errors[arm][hook][o->kind]);
        if (o->rc == POLICY_DROP && hook <= POLICY_HOOK_MESSAGE)
            METRIC_INC(r->metrics->policy_arm_drops[arm][hook][policy_rollout_code_slot(o->code)]);
        metrics_arm_latency_observe(r->metrics, arm, usec);
    }
    if (arm != POLICY_ARM_CANDIDATE || r->mode != POLICY_ROLLOUT_CANARY || !policy_rollout_live(r) ||
        hook > POLICY_HOOK_MESSAGE || !r->cfg)
        return 0;
    double window = (double)r->cfg->policy_rollback_window_ms / 1000.0;
    if (!r->win_start || now - r->win_start >= window) {
        r->win_start = now;
        r->win_calls = r->win_errors = r->win_drops = 0;
    }
    r->win_calls++;
    r->win_errors += o->rc == POLICY_ERROR;
    r->win_drops += o->rc == POLICY_DROP;
    if (r->win_calls < (unsigned long)r->cfg->policy_rollback_min_calls) return 0;
    double er = (double)r->win_errors / (double)r->win_calls, dr = (double)r->win_drops / (double)r->win_calls;
    if (er <= r->cfg->policy_rollback_error_rate && dr <= r->cfg->policy_rollback_drop_rate) return 0;
    policy_rollout_back(r, er, dr);
    return 1;
}

/* ---- shadow: comparing two outcomes ---- */

static size_t policy_rollout_cut_len(const char *s, size_t max)
{
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

static json_t *policy_rollout_cut_depth(json_t *v, size_t max, int depth)
{
    if (!v) return json_null();
    if (depth > POLICY_ROLLOUT_DEPTH_MAX) return json_string("[nested]");
    if (json_is_string(v) && json_string_length(v) > max) {
        const char *s = json_string_value(v);
        size_t keep = policy_rollout_cut_len(s, max);
        buf_t b;
        buf_init(&b);
        buf_append(&b, s, keep);
        buf_printf(&b, "... [cut: %zu bytes more]", json_string_length(v) - keep);
        json_t *out = json_stringn(b.data, b.len);
        buf_free(&b);
        return out ? out : json_string("[cut]");
    }
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *m;
        size_t n = 0;
        json_object_foreach(v, k, m) {
            if (n++ == POLICY_ROLLOUT_ITEMS_MAX) break;
            json_object_set_new(o, strlen(k) > max ? "[long key]" : k,
                                policy_rollout_cut_depth(m, max, depth + 1));
        }
        if (json_object_size(v) > POLICY_ROLLOUT_ITEMS_MAX)
            json_object_set_new(o, "[cut]", json_integer((json_int_t)(json_object_size(v) - POLICY_ROLLOUT_ITEMS_MAX)));
        return o;
    }
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t n = json_array_size(v);
        for (size_t i = 0; i < n && i < POLICY_ROLLOUT_ITEMS_MAX; i++)
            json_array_append_new(a, policy_rollout_cut_depth(json_array_get(v, i), max, depth + 1));
        if (n > POLICY_ROLLOUT_ITEMS_MAX) {
            char more[48];
            snprintf(more, sizeof more, "[cut: %zu items more]", n - POLICY_ROLLOUT_ITEMS_MAX);
            json_array_append_new(a, json_string(more));
        }
        return a;
    }
    return json_incref(v);
}

json_t *policy_rollout_cut(json_t *v, size_t max) { return policy_rollout_cut_depth(v, max, 0); }

static const char *policy_rollout_verdict(int rc)
{
    return rc == POLICY_PASS ? "pass" : rc == POLICY_DROP ? "drop" : "error";
}

/* One side of a diff sample: {verdict, code?, error?, out?, effects, effects_more?}. */
static json_t *policy_rollout_side_json(const policy_rollout_t *r, int arm, int hook, const policy_outcome_t *o)
{
    json_t *j = json_pack("{s:s}", "verdict", policy_rollout_verdict(o->rc));
    if (o->rc == POLICY_DROP && o->code) json_object_set_new(j, "code", json_string(o->code));
    if (o->rc == POLICY_ERROR && o->kind >= 0 && o->kind < METRICS_POLICY_KINDS)
        json_object_set_new(j, "error", json_string(metrics_policy_kinds[o->kind]));
    if (hook == POLICY_HOOK_MESSAGE && o->rc == POLICY_PASS)
        json_object_set_new(j, "out", o->out ? policy_rollout_cut(o->out, POLICY_ROLLOUT_TEXT_MAX) : json_null());
    json_object_set_new(j, "effects", policy_rollout_cut(r->recorded[arm], POLICY_ROLLOUT_TEXT_MAX));
    if (r->more[arm]) json_object_set_new(j, "effects_more", json_integer((json_int_t)r->more[arm]));
    return j;
}

static unsigned policy_rollout_kinds(const policy_rollout_t *r, int hook, const policy_outcome_t *s,
                                     const policy_outcome_t *c)
{
    unsigned k = 0;
    if (c->rc == POLICY_ERROR && s->rc != POLICY_ERROR)
        return 1u << METRICS_SHADOW_ERROR;         /* its effects and verdict mean nothing */
    if (s->rc != c->rc) {
        k |= 1u << METRICS_SHADOW_VERDICT;
    } else if (s->rc == POLICY_DROP) {
        if (strcmp(s->code ? s->code : "", c->code ? c->code : "")) k |= 1u << METRICS_SHADOW_CODE;
    } else if (s->rc == POLICY_PASS && hook == POLICY_HOOK_MESSAGE) {
        if (!s->out != !c->out || (s->out && !json_equal(s->out, c->out))) k |= 1u << METRICS_SHADOW_REWRITE;
    }
    if (s->rc != POLICY_ERROR &&
        (r->more[0] != r->more[1] || !json_equal(r->recorded[0], r->recorded[1])))
        k |= 1u << METRICS_SHADOW_EFFECTS;
    return k;
}

unsigned policy_rollout_compare(policy_rollout_t *r, int hook, const char *conn_id, const policy_outcome_t *stable,
                                const policy_outcome_t *cand, double now)
{
    unsigned kinds = policy_rollout_kinds(r, hook, stable, cand);
    if (!kinds) return 0;
    json_t *names = json_array();
    for (int k = 0; k < METRICS_SHADOW_KINDS; k++) {
        if (!(kinds & (1u << k))) continue;
        if (r->metrics && hook >= 0 && hook < POLICY_HOOKS) METRIC_INC(r->metrics->policy_shadow_diffs[hook][k]);
        json_array_append_new(names, json_string(metrics_shadow_kinds[k]));
    }
    int log_it = 0;
    if (now - r->log_start >= 60.0) {
        r->log_start = now;
        r->log_n = 0;
    }
    if (r->log_n < POLICY_ROLLOUT_LOGS_PER_MIN) {
        r->log_n++;
        log_it = 1;
    } else {
        r->log_skipped++;
    }
    if (!log_it && !r->diff_cb) {
        json_decref(names);
        return kinds;
    }
    json_t *ex = json_pack("{s:s, s:s?, s:o, s:o, s:o}", "hook", hook >= 0 && hook < POLICY_HOOKS ? metrics_policy_hooks[hook] : "?",
                           "conn", conn_id, "kinds", names, "stable", policy_rollout_side_json(r, 0, hook, stable),
                           "candidate", policy_rollout_side_json(r, 1, hook, cand));
    if (r->diff_cb) r->diff_cb(r->diff_ud, hook, kinds, ex);
    if (log_it) {
        json_object_set_new(ex, "version", json_string(r->version));
        if (r->log_skipped) json_object_set_new(ex, "not_logged_before", json_integer((json_int_t)r->log_skipped));
        r->log_skipped = 0;
        log_write(LOG_INFO, "policy shadow diff", "O", ex);
    }
    json_decref(ex);
    return kinds;
}

void policy_rollout_on_diff(policy_rollout_t *r, policy_rollout_diff_cb cb, void *ud)
{
    r->diff_cb = cb;
    r->diff_ud = ud;
}

json_t *policy_rollout_status(const policy_rollout_t *r)
{
    const char *state = !r->version[0] ? "not_loaded" : r->rolled_back[0] ? "rolled_back" : "active";
    json_t *j = json_pack("{s:s, s:s, s:s, s:I}", "mode", policy_rollout_mode_name(r->mode), "state", state,
                          "version", r->version, "rollbacks", (json_int_t)r->rollbacks);
    if (r->mode == POLICY_ROLLOUT_CANARY && r->cfg)
        json_object_set_new(j, "percent", json_real(r->cfg->policy_candidate_percent));
    if (r->rolled_back[0]) {
        json_object_set_new(j, "rolled_back_version", json_string(r->rolled_back));
        json_object_set_new(j, "reason", json_string(r->reason));
    }
    return j;
}
