/* replay: the offline comparison of two policies over recorded hook inputs (see replay.h).
 * The stable holder is a server's policy holder with the candidate opened beside it in shadow
 * mode, so the replay compares exactly what a shadowing server compares. A line that is not a
 * record (a cut last line after a crash, say) is counted and named, never fatal. */
#define _GNU_SOURCE 1 /* getline */
#include "app/replay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/buf.h"
#include "base/config.h"
#include "base/log.h"
#include "base/map.h"
#include "base/metrics.h"
#include "policy/policy.h"
#include "policy/policy_rollout.h"

#define REPLAY_LINE_MAX (8u << 20)         /* bytes of one record: a message is at most 1 MiB */
#define REPLAY_QUERY_MAX 64                /* query pairs of one recorded connection */
#define REPLAY_EXAMPLE_TEXT 64             /* bytes of a string an example shows */

typedef struct {
    const char *stable_dir, *candidate_dir, *file;
    double max_rate;
    long examples;
    /* results */
    long records, skipped, compared, differing, stable_changed, stable_changed_line;
    long lineno;                   /* the line being replayed */
    long calls[POLICY_HOOKS];
    json_t *shown;                 /* the first examples */
    unsigned last_kinds;           /* kinds of the call being replayed */
    json_t *rooms;                 /* room -> [{id, name, muted}]: the members the records imply */
    map_t conns;                   /* id -> replay_conn_t: each recorded conn's policy cache */
} replay_t;

/* A recorded connection, as the hub keeps it for the policy: hooks get the same conn table
 * for the same id while its fields stay (a script may key state by the table). */
typedef struct {
    policy_conn_slot_t *slot;
    unsigned gen;                  /* counts renames */
    char *name;                    /* owned; NULL when the records give none */
} replay_conn_t;

/* The cache slot and generation for a recorded conn id with this name. */
static replay_conn_t *replay_conn(replay_t *r, const char *id, const char *name)
{
    replay_conn_t *c = map_get(&r->conns, id);
    if (!c) {
        c = xcalloc(1, sizeof *c);
        c->name = name ? xstrdup(name) : NULL;
        map_set(&r->conns, id, c);
    } else if (name ? !c->name || strcmp(c->name, name) : c->name != NULL) {
        free(c->name);
        c->name = name ? xstrdup(name) : NULL;
        c->gen++;
    }
    return c;
}

static void replay_conns_free(replay_t *r, policy_t *p)
{
    size_t i;
    for (map_entry_t *e = map_first(&r->conns, &i); e; e = map_next(&r->conns, e, &i)) {
        replay_conn_t *c = e->value;
        policy_conn_forget(p, &c->slot);
        free(c->name);
        free(c);
    }
    map_free(&r->conns);
}

/* ---- the host: members and rooms as the recorded joins and leaves left them; gw.send,
 * gw.broadcast and gw.kick reach nobody (the rollout records them for the comparison) ---- */

static json_t *replay_members(void *ud, const char *room)
{
    json_t *m = json_object_get(((replay_t *)ud)->rooms, room);
    return m ? json_deep_copy(m) : NULL;
}

static json_t *replay_rooms(void *ud)
{
    json_t *out = json_array();
    const char *name;
    json_t *m;
    json_object_foreach(((replay_t *)ud)->rooms, name, m)
        json_array_append_new(out, json_pack("{s:s, s:I}", "name", name, "online", (json_int_t)json_array_size(m)));
    return out;
}

static int replay_member_index(json_t *members, const char *id)
{
    size_t i;
    json_t *m;
    json_array_foreach(members, i, m) {
        const char *mid = json_string_value(json_object_get(m, "id"));
        if (mid && !strcmp(mid, id)) return (int)i;
    }
    return -1;
}

/* A join the policy let pass adds the member, as the hub does; a leave removes it. */
static void replay_membership(replay_t *r, int hook, int rc, const policy_conn_t *pc, const char *room)
{
    json_t *members = json_object_get(r->rooms, room);
    if (hook == POLICY_HOOK_JOIN && rc == POLICY_PASS) {
        if (!members) {
            members = json_array();
            json_object_set_new(r->rooms, room, members);
        }
        if (replay_member_index(members, pc->id) < 0)
            json_array_append_new(members, json_pack("{s:s, s:s, s:b}", "id", pc->id, "name", pc->name ? pc->name : "",
                                                     "muted", 0));
    } else if (hook == POLICY_HOOK_LEAVE && members) {
        int i = replay_member_index(members, pc->id);
        if (i >= 0) json_array_remove(members, (size_t)i);
        if (!json_array_size(members)) json_object_del(r->rooms, room);
    }
}

static void replay_usage(void)
{
    fprintf(stderr, "usage: chatgw replay --stable DIR --candidate DIR [--max-diff-rate X] [--examples N] "
                    "[--key value ...] FILE\n");
}

static void replay_on_diff(void *ud, int hook, unsigned kinds, json_t *example)
{
    (void)hook;
    replay_t *r = ud;
    r->last_kinds |= kinds;
    if ((long)json_array_size(r->shown) < r->examples) json_array_append_new(r->shown, json_deep_copy(example));
}

static int replay_hook_of(const char *name)
{
    for (int h = 0; name && h < POLICY_HOOKS; h++)
        if (!strcmp(name, metrics_policy_hooks[h])) return h;
    return -1;
}

static const char *replay_verdict(int rc) { return rc == POLICY_PASS ? "pass" : rc == POLICY_DROP ? "drop" : "error"; }

/* Runs one record through the holder. 0, or -1 when it is not a record. */
static int replay_record(replay_t *r, policy_t *p, json_t *rec)
{
    int hook = replay_hook_of(json_string_value(json_object_get(rec, "hook")));
    json_t *conn = json_object_get(rec, "conn"), *ts = json_object_get(rec, "ts");
    json_t *msg = json_object_get(rec, "msg");
    const char *room = json_string_value(json_object_get(rec, "room"));
    if (hook < 0 || hook == POLICY_HOOK_TICK || !json_is_object(conn) || !json_is_number(ts) ||
        (hook == POLICY_HOOK_MESSAGE && !json_is_object(msg)) || ((hook == POLICY_HOOK_JOIN || hook == POLICY_HOOK_LEAVE) && !room))
        return -1;
    policy_pair_t query[REPLAY_QUERY_MAX + 1];
    size_t nq = 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(conn, "query"), k, v) {
        if (nq == REPLAY_QUERY_MAX || !json_is_string(v)) return -1;
        query[nq++] = (policy_pair_t){ k, json_string_value(v) };
    }
    query[nq] = (policy_pair_t){ NULL, NULL };
    policy_conn_t pc = { json_string_value(json_object_get(conn, "id")), json_string_value(json_object_get(conn, "ip")),
                         json_string_value(json_object_get(conn, "name")), query, NULL, NULL, 0 };
    if (!pc.id) return -1;
    replay_conn_t *rc_conn = replay_conn(r, pc.id, pc.name);
    pc.slot = &rc_conn->slot;
    pc.gen = rc_conn->gen;
    policy_clock_set(p, json_number_value(ts));
    char code[128] = "";
    int rc = POLICY_PASS;
    r->last_kinds = 0;
    switch (hook) {
    case POLICY_HOOK_CONNECT: rc = policy_on_connect(p, &pc, code, sizeof code); break;
    case POLICY_HOOK_JOIN: rc = policy_on_join(p, &pc, room, code, sizeof code); break;
    case POLICY_HOOK_MESSAGE: {
        json_t *out = NULL;
        rc = policy_on_message(p, &pc, room, msg, &out, code, sizeof code);
        json_decref(out);
        break;
    }
    case POLICY_HOOK_LEAVE: policy_on_leave(p, &pc, room); break;
    default: break;
    }
    if (room) replay_membership(r, hook, rc, &pc, room);
    r->records++;
    r->compared++;
    r->calls[hook]++;
    if (r->last_kinds) r->differing++;
    json_t *was = json_object_get(rec, "stable");
    const char *verdict = json_string_value(json_object_get(was, "verdict"));
    const char *was_code = json_string_value(json_object_get(was, "code"));
    if (hook != POLICY_HOOK_LEAVE && verdict &&
        (strcmp(verdict, replay_verdict(rc)) || (rc == POLICY_DROP && strcmp(was_code ? was_code : "", code))))
        if (r->stable_changed++ == 0) r->stable_changed_line = r->lineno;
    return 0;
}

/* Reads file line by line into the holder. 0, or -1 when it cannot be read (said on stderr). */
static int replay_file(replay_t *r, policy_t *p)
{
    FILE *f = fopen(r->file, "r");
    if (!f) {
        fprintf(stderr, "chatgw replay: %s: %s\n", r->file, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        r->lineno = ++lineno;
        if (n == 0 || (n == 1 && line[0] == '\n')) continue;
        json_error_t jerr;
        json_t *rec = (size_t)n <= REPLAY_LINE_MAX ? json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &jerr) : NULL;
        if (!rec || !json_is_object(rec) || replay_record(r, p, rec) < 0) {
            if (r->skipped++ < 5)
                fprintf(stderr, "chatgw replay: %s:%ld: not a record (%s); skipped\n", r->file, lineno,
                        (size_t)n > REPLAY_LINE_MAX ? "longer than 8 MiB" : !rec ? jerr.text : "missing or bad fields");
        }
        json_decref(rec);
    }
    int bad = ferror(f);
    free(line);
    fclose(f);
    if (bad) {
        fprintf(stderr, "chatgw replay: %s: read error\n", r->file);
        return -1;
    }
    return 0;
}

static void replay_summary(const replay_t *r, const policy_t *p, const metrics_t *m)
{
    double rate = r->compared ? (double)r->differing / (double)r->compared : 0;
    printf("replay %s\n", r->file);
    printf("stable    %s (%s)\n", r->stable_dir, policy_version(p));
    printf("candidate %s (%s)\n", r->candidate_dir, policy_candidate_version(p));
    printf("records   %ld (skipped lines: %ld)\n", r->records, r->skipped);
    printf("calls     ");
    for (int h = 0; h < POLICY_HOOKS; h++)
        if (r->calls[h]) printf("%s %ld  ", metrics_policy_hooks[h], r->calls[h]);
    printf("\n");
    printf("differing %ld of %ld calls (%.2f%%; max %.2f%%)\n", r->differing, r->compared, rate * 100, r->max_rate * 100);
    for (int h = 0; h < POLICY_HOOKS; h++) {
        uint64_t any = 0;
        for (int k = 0; k < METRICS_SHADOW_KINDS; k++) any += m->policy_shadow_diffs[h][k];
        if (!any) continue;
        printf("  %-11s", metrics_policy_hooks[h]);
        for (int k = 0; k < METRICS_SHADOW_KINDS; k++)
            printf(" %s %llu", metrics_shadow_kinds[k], (unsigned long long)m->policy_shadow_diffs[h][k]);
        printf("\n");
    }
    uint64_t errs[2] = { 0, 0 };
    for (int a = 0; a < 2; a++)
        for (int h = 0; h < POLICY_HOOKS; h++)
            for (int k = 0; k < METRICS_POLICY_KINDS; k++) errs[a] += m->policy_arm_errors[a][h][k];
    printf("hook errors: stable %llu, candidate %llu\n", (unsigned long long)errs[0], (unsigned long long)errs[1]);
    if (r->stable_changed)
        printf("note: the stable policy decided %ld calls differently than when they were recorded (the first on line %ld)\n",
               r->stable_changed, r->stable_changed_line);
    size_t i;
    json_t *ex;
    if (json_array_size(r->shown)) printf("examples:\n");
    json_array_foreach(r->shown, i, ex) {
        char *text = json_dumps(ex, JSON_COMPACT);
        printf("  %s\n", text ? text : "?");
        free(text);
    }
    printf("result    %s\n", rate > r->max_rate ? "FAIL: over the bound" : "OK");
}

/* Splits argv into replay's own flags and the config flags (cfg_argv, cfg_argc). 0, or -1 on
 * bad usage. */
static int replay_args(replay_t *r, int argc, char **argv, char **cfg_argv, int *cfg_argc)
{
    if (argc < 1) return -1;
    r->file = argv[argc - 1];
    if (r->file[0] == '-') return -1;
    *cfg_argc = 0;
    for (int i = 0; i < argc - 1; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc - 1 ? argv[i + 1] : NULL;
        if (!strcmp(a, "--stable") || !strcmp(a, "--candidate") || !strcmp(a, "--max-diff-rate") ||
            !strcmp(a, "--examples")) {
            if (!val) return -1;
            i++;
            char *end;
            if (!strcmp(a, "--stable")) r->stable_dir = val;
            else if (!strcmp(a, "--candidate")) r->candidate_dir = val;
            else if (!strcmp(a, "--max-diff-rate")) {
                r->max_rate = strtod(val, &end);
                if (*end || end == val || r->max_rate < 0 || r->max_rate > 1) {
                    fprintf(stderr, "chatgw replay: --max-diff-rate: a number between 0 and 1, got \"%s\"\n", val);
                    return -1;
                }
            } else {
                r->examples = strtol(val, &end, 10);
                if (*end || end == val || r->examples < 0 || r->examples > 1000) {
                    fprintf(stderr, "chatgw replay: --examples: an integer between 0 and 1000, got \"%s\"\n", val);
                    return -1;
                }
            }
            continue;
        }
        cfg_argv[(*cfg_argc)++] = argv[i];
    }
    return r->stable_dir && r->candidate_dir ? 0 : -1;
}

int replay_main(int argc, char **argv)
{
    replay_t r = { .examples = 5 };
    policy_host_t host = { .ud = &r, .members = replay_members, .rooms = replay_rooms };
    char **cfg_argv = xcalloc((size_t)argc + 1, sizeof *cfg_argv);
    int cfg_argc = 0;
    if (replay_args(&r, argc, argv, cfg_argv, &cfg_argc) < 0) {
        replay_usage();
        free(cfg_argv);
        return 2;
    }
    config_t cfg;
    char err[512];
    int rc = config_load(&cfg, cfg_argc, cfg_argv, err, sizeof err);
    free(cfg_argv);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    log_level_set(LOG_ERROR);      /* hook failures are counted in the summary, not printed */
    metrics_t *m = xcalloc(1, sizeof *m);
    r.rooms = json_object();
    map_init(&r.conns);
    policy_t *p = policy_new(&cfg, m, &host);
    int code = 2;
    if (policy_load(p, r.stable_dir, err, sizeof err) < 0) {
        fprintf(stderr, "chatgw replay: stable policy %s: %s\n", r.stable_dir, err);
        goto done;
    }
    if (policy_candidate_open(p, r.candidate_dir, POLICY_ROLLOUT_SHADOW, err, sizeof err) < 0) {
        fprintf(stderr, "chatgw replay: candidate policy %s: %s\n", r.candidate_dir, err);
        goto done;
    }
    r.shown = json_array();
    policy_candidate_on_diff(p, replay_on_diff, &r);
    if (replay_file(&r, p) == 0) {
        replay_summary(&r, p, m);
        code = r.compared && (double)r.differing / (double)r.compared > r.max_rate ? 1 : 0;
    }
    json_decref(r.shown);
done:
    replay_conns_free(&r, p);
    policy_free(p);
    json_decref(r.rooms);
    free(m);
    config_free(&cfg);
    return code;
}
