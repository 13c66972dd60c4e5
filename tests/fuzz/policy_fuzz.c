/* libFuzzer target for the policy message path: a client text frame goes through proto_decode
 * and, when it decodes, through policy_on_message exactly as hub_filter calls it (the message's
 * room, which may be NULL). Two policies see every message: the fixture in tests/fuzz/policy/,
 * whose on_message ops drive the JSON <-> Lua conversion, every verdict, the gw.* host API,
 * errors and the budget and memory cap from fields of the message; and the default policy in
 * scripts/ when it loads. The host functions are stubs that check what crosses back. Every
 * verdict must be one policy.h allows, and whatever the policy hands back must encode. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/config.h"
#include "base/log.h"
#include "base/metrics.h"
#include "policy/policy.h"
#include "proto/proto.h"
#include "proto/ws.h"

/* tests/fuzz and the default policy; CHATGW_SRC, when set, names the source tree instead */
#ifndef FUZZ_DIR
#define FUZZ_DIR "tests/fuzz"
#endif
#ifndef FUZZ_SCRIPTS_DIR
#define FUZZ_SCRIPTS_DIR "scripts"
#endif

static config_t fuzz_cfg;
static metrics_t fuzz_metrics;
static policy_t *fuzz_policies[2];

/* A message from the policy must be an object that proto_encode can send. */
static void fuzz_sendable(json_t *msg)
{
    if (!json_is_object(msg)) abort();
    sbuf_t *s = proto_encode(msg);
    if (!s || !ws_utf8_valid((const uint8_t *)s->data, s->len)) abort();
    sbuf_unref(s);
}

static int fuzz_host_send(void *ud, const char *conn_id, json_t *msg)
{
    if (!conn_id) abort();
    fuzz_sendable(msg);
    return strcmp(conn_id, "c1") ? -1 : 0;
}

static int fuzz_host_broadcast(void *ud, const char *room, json_t *msg, const char *except)
{
    if (!room) abort();
    fuzz_sendable(msg);
    return strcmp(room, "lobby") ? -1 : 0;
}

static int fuzz_host_kick(void *ud, const char *conn_id, const char *code, const char *reason)
{
    if (!conn_id || !code || !reason) abort();
    return strcmp(conn_id, "c1") ? -1 : 0;
}

static json_t *fuzz_host_members(void *ud, const char *room)
{
    if (!room) abort();
    if (strcmp(room, "lobby")) return NULL;
    return json_pack("[{s:s, s:s, s:b}, {s:s, s:s, s:b}]", "id", "c1", "name", "alice", "muted", 0, "id", "c2",
                     "name", "bob", "muted", 1);
}

static json_t *fuzz_host_rooms(void *ud) { return json_pack("[{s:s, s:i}]", "name", "lobby", "online", 2); }

static void fuzz_host_log(void *ud, int level, const char *msg, json_t *fields)
{
    if (!msg || level < LOG_DEBUG || level > LOG_ERROR) abort();
    if (fields && !json_is_object(fields)) abort();
}

static const policy_host_t fuzz_host = {
    NULL, fuzz_host_send, fuzz_host_broadcast, fuzz_host_kick, fuzz_host_members, fuzz_host_rooms, fuzz_host_log,
    NULL,                          /* gw.limit stays local */
    NULL,                          /* gw.mute answers false */
};

static policy_t *fuzz_policy_load(const char *dir, int required)
{
    char err[512];
    policy_t *p = policy_new(&fuzz_cfg, &fuzz_metrics, &fuzz_host);
    if (policy_load(p, dir, err, sizeof err) == 1) return p;
    fprintf(stderr, "policy_fuzz: %s: %s\n", dir, err);
    if (required) abort();
    policy_free(p);
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *src = getenv("CHATGW_SRC");
    char fuzz_dir[4096], scripts_dir[4096], config[4200], policy_dir[4200];
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s%s", src ? src : FUZZ_DIR, src ? "/tests/fuzz" : "");
    snprintf(scripts_dir, sizeof scripts_dir, "%s%s", src ? src : FUZZ_SCRIPTS_DIR, src ? "/scripts" : "");
    snprintf(config, sizeof config, "%s/config.json", fuzz_dir);
    snprintf(policy_dir, sizeof policy_dir, "%s/policy", fuzz_dir);

    /* built-in defaults only (an empty config file, not config/chatgw.json), and a small
     * budget so the loop and membomb ops stay quick */
    char *args[] = {"--config", config, "--policy_budget", "200000", "--policy_memory_mb", "16"};
    char err[256];
    if (config_load(&fuzz_cfg, 6, args, err, sizeof err) < 0) {
        fprintf(stderr, "policy_fuzz: %s\n", err);
        abort();
    }
    log_level_set(LOG_ERROR);
    /* gw.log and hook failures write JSON lines to stdout; the fuzzer reports on stderr */
    if (!getenv("FUZZ_VERBOSE") && !freopen("/dev/null", "w", stdout)) abort();
    fuzz_policies[0] = fuzz_policy_load(policy_dir, 1);
    fuzz_policies[1] = fuzz_policy_load(scripts_dir, 0);
    return 0;
}

static void fuzz_message(policy_t *p, const proto_in_t *in)
{
    static const policy_conn_t conn = {"c1", "10.0.0.1", "alice", NULL, NULL, NULL, 0};
    json_t *before = json_deep_copy(in->root);
    json_t *out = (json_t *)0x1;
    char code[64];
    memset(code, 'x', sizeof code);
    int rc = policy_on_message(p, &conn, in->room, in->root, &out, code, sizeof code);
    switch (rc) {
    case POLICY_PASS:
        if (out) {
            if (out != in->root) fuzz_sendable(out);
            json_decref(out);
        }
        break;
    case POLICY_DROP:
    case POLICY_ERROR:
        if (out) abort();
        if (rc == POLICY_DROP && !memchr(code, '\0', sizeof code)) abort();
        break;
    default:
        abort();
    }
    /* the message is borrowed: the policy works on a Lua copy */
    if (!json_equal(before, in->root)) abort();
    json_decref(before);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fuzz_policies[0]) LLVMFuzzerInitialize(NULL, NULL);
    proto_in_t in;
    proto_err_t err;
    if (proto_decode((const char *)data, size, 4096, &in, &err) < 0) return 0;
    for (int i = 0; i < 2; i++)
        if (fuzz_policies[i]) fuzz_message(fuzz_policies[i], &in);
    proto_in_free(&in);
    return 0;
}
