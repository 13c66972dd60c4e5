/* Unit tests for config.c: defaults, the file / environment / flag layers and their order, flag
 * syntax, one error line per bad value naming key and source, redaction, and that the shipped
 * config/chatgw.json holds exactly the defaults. The tests run inside a fresh temporary
 * directory (config_load looks for config/chatgw.json in the cwd) and clear every CHATGW_<KEY>
 * variable around each test so the host environment cannot leak in. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/config.h"
#include "base/err.h"
#include "base/log.h"

/* The contract: every key of DESIGN.md's table, in its order. */
static const char *const keys[] = {
    "listen", "admin_listen", "workers", "log_level", "scripts_dir", "web_dir", "echo",
    "drain_timeout_ms", "ping_interval_ms", "idle_timeout_ms", "header_timeout_ms",
    "max_header_bytes", "max_frame_bytes", "max_message_bytes", "permessage_deflate",
    "write_queue_bytes", "slow_grace_ms", "max_connections", "max_connections_per_ip", "accept_rate_per_ip",
    "max_text_bytes", "rate_msgs_per_sec", "rate_burst", "max_rooms_per_conn",
    "max_room_members", "history_size", "api_token", "allowed_origins", "redis_url",
    "redis_password_file", "redis_connect_timeout_ms", "redis_command_timeout_ms", "redis_backoff_min_ms",
    "redis_backoff_max_ms", "redis_required", "janus_url", "janus_timeout_ms", "janus_keepalive_ms", "presence_ttl_ms",
    "redis_room_ttl_ms", "redis_sentinels", "redis_sentinel_master", "redis_sentinel_password_file", "redis_cluster_nodes", "node_id",
    "policy_timeout_ms", "policy_budget", "policy_memory_mb", "policy_store_mb", "policy_fail", "policy_boot", "reload_poll_ms", "tls_cert",
    "tls_key", "trusted_proxies", "proxy_protocol", "ipv6_prefix_bits", "ice_servers",
    "policy_candidate_dir", "policy_candidate_mode", "policy_candidate_percent", "policy_rollback_window_ms",
    "policy_rollback_min_calls", "policy_rollback_error_rate", "policy_rollback_drop_rate", "policy_record_file",
    "policy_record_sample", "policy_record_redact",
    "sentry_dsn", "sentry_dsn_file", "environment", "crash_dir",
};
#define NKEYS (sizeof keys / sizeof keys[0])

static char tmpdir[] = "/tmp/chatgw-config-test-XXXXXX";
static char start_dir[PATH_MAX];
static char work_dir[PATH_MAX];  /* tmpdir as getcwd spells it */
static char repo_file[PATH_MAX]; /* config/chatgw.json of the source tree, "" if not found */

static void env_clear(void)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char var[64] = "CHATGW_";
        size_t n = strlen(var);
        for (const char *p = keys[i]; *p; p++) var[n++] = (char)toupper((unsigned char)*p);
        var[n] = '\0';
        unsetenv(var);
    }
}

static void file_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int test_setup(void **state)
{
    char cwd[PATH_MAX];
    env_clear();
    /* only ever delete inside our own temporary directory, never the source tree's file */
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, work_dir) != 0) return -1;
    unlink("config/chatgw.json");
    rmdir("config");
    unlink("c.json");
    return 0;
}

static int test_teardown(void **state) { return test_setup(state); }

static int group_setup(void **state)
{
    if (!getcwd(start_dir, sizeof start_dir)) return -1;
    /* The source tree: $CHATGW_SRC, else where this file was compiled from (CMake passes
     * absolute paths), else the parent of the build directory. */
    const char *src = getenv("CHATGW_SRC");
    const char *self = __FILE__, *tail = strstr(self, "tests/unit/config.c");
    char guess[PATH_MAX + 32];
    if (src && *src)
        snprintf(guess, sizeof guess, "%s/config/chatgw.json", src);
    else if (self[0] == '/' && tail)
        snprintf(guess, sizeof guess, "%.*sconfig/chatgw.json", (int)(tail - self), self);
    else
        snprintf(guess, sizeof guess, "%s/../config/chatgw.json", start_dir);
    if (!realpath(guess, repo_file)) repo_file[0] = '\0';
    if (!mkdtemp(tmpdir) || chdir(tmpdir) != 0 || !getcwd(work_dir, sizeof work_dir)) return -1;
    return 0;
}

static int group_teardown(void **state)
{
    if (test_setup(state) != 0 || chdir(start_dir) != 0) return -1;
    rmdir(tmpdir);
    return 0;
}

/* config_load over a NULL-terminated list of flags. */
static int load_args(config_t *cfg, char *err, size_t errlen, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, errlen);
    for (char *a; (a = va_arg(ap, char *)) && argc < 31;) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return config_load(cfg, argc, argv, err, errlen);
}

#define LOAD(cfg, err, ...) load_args(cfg, err, sizeof err, ##__VA_ARGS__, (char *)NULL)

static void assert_defaults(const config_t *c)
{
    assert_string_equal(c->listen, "0.0.0.0:8888");
    assert_string_equal(c->admin_listen, "");
    assert_int_equal(c->workers, 1);
    assert_int_equal(c->log_level, LOG_INFO);
    assert_string_equal(c->scripts_dir, "scripts");
    assert_string_equal(c->web_dir, "web");
    assert_int_equal(c->echo, 0);
    assert_int_equal(c->drain_timeout_ms, 10000);
    assert_int_equal(c->ping_interval_ms, 25000);
    assert_int_equal(c->idle_timeout_ms, 60000);
    assert_int_equal(c->header_timeout_ms, 10000);
    assert_int_equal(c->max_header_bytes, 16384);
    assert_int_equal(c->max_frame_bytes, 1048576);
    assert_int_equal(c->max_message_bytes, 1048576);
    assert_int_equal(c->permessage_deflate, 1);
    assert_int_equal(c->write_queue_bytes, 1048576);
    assert_int_equal(c->slow_grace_ms, 5000);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->max_connections_per_ip, 256);
    assert_int_equal(c->max_text_bytes, 4096);
    assert_true(c->rate_msgs_per_sec == 20.0);
    assert_int_equal(c->rate_burst, 40);
    assert_int_equal(c->max_rooms_per_conn, 16);
    assert_int_equal(c->max_room_members, 1000);
    assert_int_equal(c->history_size, 100);
    assert_string_equal(c->api_token, "");
    assert_string_equal(c->allowed_origins, "");
    assert_string_equal(c->redis_url, "");
    assert_int_equal(c->policy_timeout_ms, 50);
    assert_int_equal(c->policy_budget, 0);
    assert_int_equal(c->policy_memory_mb, 64);
    assert_int_equal(c->policy_store_mb, 16);
    assert_string_equal(c->policy_fail, "closed");
    assert_string_equal(c->policy_boot, "exit");
    assert_string_equal(c->policy_candidate_dir, "");
    assert_string_equal(c->policy_candidate_mode, "off");
    assert_true(c->policy_candidate_percent == 5);
    assert_string_equal(c->policy_record_file, "");
    assert_int_equal(c->policy_record_redact, 1);
    assert_int_equal(c->reload_poll_ms, 0);
    assert_string_equal(c->tls_cert, "");
    assert_string_equal(c->tls_key, "");
    assert_string_equal(c->trusted_proxies, "");
    assert_int_equal(c->proxy_protocol, 0);
    assert_int_equal(c->ipv6_prefix_bits, 64);
    assert_string_equal(c->ice_servers, "[]");
}

static void test_defaults(void **state)
{
    config_t c;
    char err[256];
    assert_int_equal(LOAD(&c, err), 0);
    assert_defaults(&c);
    config_free(&c);
}

static void test_repo_file_is_defaults(void **state)
{
    if (!repo_file[0]) {
        print_message("skipped: config/chatgw.json not found; set CHATGW_SRC to the source tree\n");
        skip();
    }
    config_t c;
    char err[256];
    assert_int_equal(LOAD(&c, err, "--config", repo_file), 0);
    assert_defaults(&c);
    config_free(&c);

    /* and it names every key, so it documents them all */
    json_t *root = json_load_file(repo_file, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_object_size(root), NKEYS);
    for (size_t i = 0; i < NKEYS; i++) assert_non_null(json_object_get(root, keys[i]));
    json_decref(root);
}

static void test_default_file_used_when_present(void **state)
{
    config_t c;
    char err[256];
    mkdir("config", 0700);
    file_write("config/chatgw.json", "{\"workers\": 3, \"echo\": true}");
    assert_int_equal(LOAD(&c, err), 0);
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.echo, 1);
    config_free(&c);

    /* an explicit --config replaces it */
    file_write("c.json", "{\"history_size\": 5}");
    assert_int_equal(LOAD(&c, err, "--config=c.json"), 0);
    assert_int_equal(c.workers, 1);
    assert_int_equal(c.history_size, 5);
    config_free(&c);
}

static void test_file_values(void **state)
{
    config_t c;
    char err[256];
    file_write("c.json",
               "{\"listen\": \"[::1]:0\", \"admin_listen\": \"127.0.0.1:9090\", \"workers\": \"2\","
               " \"log_level\": \"warning\", \"max_frame_bytes\": \"2048\", \"echo\": \"yes\","
               " \"permessage_deflate\": false, \"rate_msgs_per_sec\": 2.5, \"rate_burst\": 1e3,"
               " \"ice_servers\": [{\"urls\": \"stun:stun.example.org\"}],"
               " \"trusted_proxies\": \"10.0.0.0/8, 192.168.1.1,fd00::/8\","
               " \"proxy_protocol\": true, \"ipv6_prefix_bits\": 56,"
               " \"redis_url\": \"redis://redis:6379/0\", \"policy_fail\": \"open\","
               " \"policy_boot\": \"wait\", \"api_token\": \"t0k\", \"ping_interval_ms\": 0}");
    assert_int_equal(LOAD(&c, err, "--config", "c.json"), 0);
    assert_string_equal(c.listen, "[::1]:0");
    assert_string_equal(c.admin_listen, "127.0.0.1:9090");
    assert_int_equal(c.workers, 2);
    assert_int_equal(c.log_level, LOG_WARN);
    assert_int_equal(c.max_frame_bytes, 2048);
    assert_int_equal(c.echo, 1);
    assert_int_equal(c.permessage_deflate, 0);
    assert_true(c.rate_msgs_per_sec == 2.5);
    assert_int_equal(c.rate_burst, 1000);
    assert_string_equal(c.ice_servers, "[{\"urls\":\"stun:stun.example.org\"}]");
    assert_string_equal(c.trusted_proxies, "10.0.0.0/8, 192.168.1.1,fd00::/8");
    assert_int_equal(c.proxy_protocol, 1);
    assert_int_equal(c.ipv6_prefix_bits, 56);
    assert_string_equal(c.redis_url, "redis://redis:6379/0");
    assert_string_equal(c.policy_fail, "open");
    assert_string_equal(c.policy_boot, "wait");
    assert_string_equal(c.api_token, "t0k");
    assert_int_equal(c.ping_interval_ms, 0);
    config_free(&c);
}

static void test_env_beats_file(void **state)
{
    config_t c;
    char err[256];
    file_write("c.json", "{\"max_text_bytes\": 100, \"history_size\": 7}");
    setenv("CHATGW_MAX_TEXT_BYTES", "200", 1);
    setenv("CHATGW_ICE_SERVERS", "[ {\"urls\": \"turn:t\"} ]", 1);
    setenv("CHATGW_ECHO", "on", 1);
    assert_int_equal(LOAD(&c, err, "--config", "c.json"), 0);
    assert_int_equal(c.max_text_bytes, 200);
    assert_int_equal(c.history_size, 7);
    assert_string_equal(c.ice_servers, "[{\"urls\":\"turn:t\"}]");
    assert_int_equal(c.echo, 1);
    config_free(&c);
}

static void test_flag_beats_env(void **state)
{
    config_t c;
    char err[256];
    file_write("c.json", "{\"max_text_bytes\": 100}");
    setenv("CHATGW_MAX_TEXT_BYTES", "200", 1);
    setenv("CHATGW_LOG_LEVEL", "error", 1);
    assert_int_equal(LOAD(&c, err, "--max-text-bytes", "300", "--config", "c.json"), 0);
    assert_int_equal(c.max_text_bytes, 300);
    assert_int_equal(c.log_level, LOG_ERROR);
    config_free(&c);
}

static void test_flag_syntax(void **state)
{
    config_t c;
    char err[256];
    assert_int_equal(LOAD(&c, err, "--max-frame-bytes=4096", "--max_message_bytes", "8192",
                          "--listen=127.0.0.1:0", "--scripts-dir", "/etc/chatgw/scripts",
                          "--api_token=a=b", "--allowed-origins", "*", "--workers", "2",
                          "--workers=4"), 0);
    assert_int_equal(c.max_frame_bytes, 4096);
    assert_int_equal(c.max_message_bytes, 8192);
    assert_string_equal(c.listen, "127.0.0.1:0");
    assert_string_equal(c.scripts_dir, "/etc/chatgw/scripts");
    assert_string_equal(c.api_token, "a=b");
    assert_string_equal(c.allowed_origins, "*");
    assert_int_equal(c.workers, 4); /* the last flag wins */
    config_free(&c);
}

static void test_bool_flags(void **state)
{
    config_t c;
    char err[256];
    assert_int_equal(LOAD(&c, err, "--echo"), 0);
    assert_int_equal(c.echo, 1);
    config_free(&c);

    assert_int_equal(LOAD(&c, err, "--echo", "--permessage-deflate", "false", "--history-size", "3"), 0);
    assert_int_equal(c.echo, 1);
    assert_int_equal(c.permessage_deflate, 0);
    assert_int_equal(c.history_size, 3);
    config_free(&c);

    assert_int_equal(LOAD(&c, err, "--echo=off", "--permessage-deflate", "0"), 0);
    assert_int_equal(c.echo, 0);
    assert_int_equal(c.permessage_deflate, 0);
    config_free(&c);

    /* a boolean flag followed by a non-flag takes it as its value */
    assert_int_equal(LOAD(&c, err, "--echo", "maybe"), GW_EINVAL);
    assert_string_equal(err, "config: echo: expected a boolean (true/false, 1/0, yes/no, on/off), "
                             "got \"maybe\" (from --echo)");

    /* arguments that are not flags are refused */
    assert_int_equal(LOAD(&c, err, "--echo", "yes", "scripts"), GW_EINVAL);
    assert_string_equal(err, "config: unexpected argument \"scripts\"");
}

static void test_workers_auto(void **state)
{
    config_t c;
    char err[256];
    setenv("CHATGW_WORKERS", "auto", 1);
    assert_int_equal(LOAD(&c, err), 0);
    assert_true(c.workers >= 1);
    config_free(&c);
}

static void test_valid_addresses(void **state)
{
    static const char *const ok[] = { "0.0.0.0:8888", "[::]:443", "[::1]:0", "localhost:8080",
                                      "127.0.0.1:65535", ":8888", "*:80" };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        config_t c;
        char err[256];
        setenv("CHATGW_LISTEN", ok[i], 1);
        assert_int_equal(LOAD(&c, err), 0);
        assert_string_equal(c.listen, ok[i]);
        config_free(&c);
    }
}

/* One bad value: the load fails, err is exactly one line, and it holds every needle. */
typedef struct {
    const char *env, *env_value;   /* optional */
    const char *file;              /* optional c.json content, passed with --config */
    const char *args[4];
    const char *needles[3];
} error_case_t;

static const error_case_t error_cases[] = {
    { "CHATGW_MAX_FRAME_BYTES", "abc", NULL, { NULL },
      { "config: max_frame_bytes: expected an integer between 125 and 1073741824, got \"abc\" "
        "(from CHATGW_MAX_FRAME_BYTES)" } },
    { NULL, NULL, NULL, { "--max-frame-bytes", "100" },
      { "config: max_frame_bytes: expected an integer between 125", "got \"100\"", "(from --max-frame-bytes)" } },
    { NULL, NULL, NULL, { "--history_size=100001" }, { "history_size:", "(from --history_size)" } },
    { NULL, NULL, NULL, { "--permessage-deflate=maybe" },
      { "config: permessage_deflate: expected a boolean", "got \"maybe\"" } },
    { "CHATGW_ECHO", "2", NULL, { NULL }, { "config: echo:", "(from CHATGW_ECHO)" } },
    { NULL, NULL, "{\"listen\": \"0.0.0.0:1\", \"nope\": 1}", { NULL },
      { "config: nope: unknown key (from c.json)" } },
    { NULL, NULL, "{\"echo\": 1}", { NULL }, { "config: echo: expected a boolean", "got 1 (from c.json)" } },
    { NULL, NULL, "{\"max_text_bytes\": 2.5}", { NULL }, { "config: max_text_bytes:", "got 2.5" } },
    { NULL, NULL, "{\"listen\": 8888}", { NULL }, { "config: listen:", "got 8888" } },
    { NULL, NULL, "{\"workers\": \"many\"}", { NULL }, { "config: workers:", "\"auto\"", "got \"many\"" } },
    { NULL, NULL, "{\"workers\": 0}", { NULL }, { "config: workers:" } },
    { NULL, NULL, "{\"echo\": true, \"echo\": false}", { NULL }, { "config: c.json:", "duplicate" } },
    { NULL, NULL, "{\"echo\": tru", { NULL }, { "config: c.json:1:" } },
    { NULL, NULL, "[1]", { NULL }, { "config: c.json: the top level must be a JSON object" } },
    { NULL, NULL, NULL, { "--nope", "1" }, { "config: unknown option --nope" } },
    { NULL, NULL, NULL, { "--no-such=1" }, { "config: unknown option --no-such" } },
    { NULL, NULL, NULL, { "-x" }, { "config: unknown option -x" } },
    { NULL, NULL, NULL, { "--listen" }, { "config: listen: missing value (from --listen)" } },
    { NULL, NULL, NULL, { "--listen", "--echo" }, { "config: listen: missing value" } },
    { "CHATGW_LISTEN", "1.2.3.4", NULL, { NULL }, { "config: listen: expected host:port", "(from CHATGW_LISTEN)" } },
    { NULL, NULL, NULL, { "--listen", "[::1]:70000" }, { "config: listen:", "got \"[::1]:70000\"" } },
    { NULL, NULL, NULL, { "--listen", "::1:80" }, { "config: listen:" } },
    { NULL, NULL, NULL, { "--listen", "" }, { "config: listen:" } },
    { NULL, NULL, NULL, { "--listen", "300.1.1.1:80" }, { "config: listen:" } },
    { NULL, NULL, NULL, { "--listen", "chatgw.example.org:80" }, { "config: listen:" } },
    { NULL, NULL, NULL, { "--listen", "127.0.0.1:http" }, { "config: listen:" } },
    { NULL, NULL, NULL, { "--admin-listen", "host:port" }, { "config: admin_listen:", ", or empty" } },
    { "CHATGW_ICE_SERVERS", "{}", NULL, { NULL }, { "config: ice_servers: expected a JSON array", "got \"{}\"" } },
    { NULL, NULL, NULL, { "--ice-servers", "[oops" }, { "config: ice_servers:", "(from --ice-servers)" } },
    { NULL, NULL, "{\"ice_servers\": {\"urls\": 1}}", { NULL }, { "config: ice_servers:", "got {\"urls\":1}" } },
    { NULL, NULL, NULL, { "--config", "/nonexistent/chatgw.json" },
      { "config: --config: cannot read \"/nonexistent/chatgw.json\"", "No such file" } },
    { NULL, NULL, NULL, { "--config" }, { "config: --config: missing FILE" } },
    { NULL, NULL, NULL, { "--trusted-proxies", "10.0.0.0/33" }, { "config: trusted_proxies:" } },
    { NULL, NULL, NULL, { "--trusted-proxies", "10.0.0.0/8,,fd00::/8" }, { "config: trusted_proxies:" } },
    { NULL, NULL, NULL, { "--trusted-proxies", "fd00::/129" }, { "config: trusted_proxies:" } },
    { NULL, NULL, NULL, { "--trusted-proxies", "example.com" }, { "config: trusted_proxies:" } },
    /* a PROXY header believed from nobody would refuse every connection */
    { NULL, NULL, NULL, { "--proxy-protocol" }, { "config: proxy_protocol: needs trusted_proxies" } },
    { NULL, NULL, NULL, { "--ipv6-prefix-bits", "129" }, { "config: ipv6_prefix_bits:" } },
    { NULL, NULL, NULL, { "--ipv6-prefix-bits", "8" }, { "config: ipv6_prefix_bits:" } },
    { NULL, NULL, NULL, { "--policy-fail", "maybe" }, { "config: policy_fail: expected \"closed\" or \"open\"" } },
    { NULL, NULL, NULL, { "--policy-boot", "maybe" }, { "config: policy_boot: expected \"exit\" or \"wait\"" } },
    { NULL, NULL, NULL, { "--policy-candidate-mode", "live" }, { "config: policy_candidate_mode: expected \"off\", \"shadow\" or \"canary\"" } },
    { NULL, NULL, NULL, { "--policy-candidate-percent", "101" }, { "config: policy_candidate_percent:" } },
    { NULL, NULL, NULL, { "--policy-rollback-error-rate", "-0.1" }, { "config: policy_rollback_error_rate:" } },
    { NULL, NULL, NULL, { "--policy-record-sample", "2" }, { "config: policy_record_sample:" } },
    { NULL, NULL, NULL, { "--log-level", "loud" }, { "config: log_level: expected one of debug" } },
    { NULL, NULL, NULL, { "--rate-msgs-per-sec", "0" }, { "config: rate_msgs_per_sec: expected a number" } },
    { NULL, NULL, NULL, { "--rate-msgs-per-sec", "nan" }, { "config: rate_msgs_per_sec:" } },
    { NULL, NULL, NULL, { "--idle-timeout-ms", "0" }, { "config: idle_timeout_ms:" } },
    { NULL, NULL, NULL, { "--max-connections", " 5" }, { "config: max_connections:" } },
    { NULL, NULL, NULL, { "--scripts-dir=" }, { "config: scripts_dir: expected a non-empty string" } },
    { NULL, NULL, NULL, { "--redis-url", "http://x" }, { "config: redis_url:", "got \"http://x\"" } },
    /* a password in a bad URL is never echoed */
    { NULL, NULL, NULL, { "--redis-url", "http://u:hunter2@x" }, { "config: redis_url:", "(hidden)" } },
    /* node ids: the bus's limits, checked once, here */
    { NULL, NULL, NULL, { "--node-id", "a\nb" },
      { "config: node_id: expected 1 to 63 bytes without a newline, or empty", "got \"a\\x0ab\"" } },
    { NULL, NULL, NULL, { "--node-id", "0123456789012345678901234567890123456789012345678901234567890123" },
      { "config: node_id:", "(from --node-id)" } },
};

/* node_id: empty (a random one at start) or up to 63 bytes, as the bus holds them. */
static void test_node_id(void **state)
{
    (void)state;
    config_t c;
    char err[256];
    char id[CONFIG_NODE_ID_MAX + 1];
    memset(id, 'n', CONFIG_NODE_ID_MAX);
    id[CONFIG_NODE_ID_MAX] = '\0';
    assert_int_equal(LOAD(&c, err, "--node-id", id), 0);
    assert_string_equal(c.node_id, id);
    config_free(&c);
    assert_int_equal(LOAD(&c, err, "--node-id="), 0);
    assert_string_equal(c.node_id, "");
    config_free(&c);
}

static void test_errors(void **state)
{
    for (size_t i = 0; i < sizeof error_cases / sizeof error_cases[0]; i++) {
        const error_case_t *ec = &error_cases[i];
        char *argv[8];
        int argc = 0;
        env_clear();
        if (ec->env) setenv(ec->env, ec->env_value, 1);
        if (ec->file) {
            file_write("c.json", ec->file);
            argv[argc++] = "--config";
            argv[argc++] = "c.json";
        }
        for (size_t j = 0; j < 4 && ec->args[j]; j++) argv[argc++] = (char *)ec->args[j];
        argv[argc] = NULL;

        config_t c;
        char err[512];
        int rc = config_load(&c, argc, argv, err, sizeof err);
        /* an unreadable file is GW_ENOTFOUND, every other failure GW_EINVAL */
        int want = strstr(ec->needles[0], "cannot read") ? GW_ENOTFOUND : GW_EINVAL;
        if (rc != want) print_error("case %zu: expected %s, got %d\n", i, gw_strerror(want), rc);
        assert_int_equal(rc, want);
        assert_null(strchr(err, '\n'));
        assert_null(strstr(err, "hunter2"));
        for (size_t j = 0; j < 3 && ec->needles[j]; j++) {
            if (!strstr(err, ec->needles[j]))
                print_error("case %zu: \"%s\" lacks \"%s\"\n", i, err, ec->needles[j]);
            assert_non_null(strstr(err, ec->needles[j]));
        }
        /* nothing stays allocated after a failure, and config_free stays harmless */
        assert_null(c.listen);
        assert_null(c.ice_servers);
        config_free(&c);
    }
}

static void test_to_json_redacts(void **state)
{
    config_t c;
    char err[256];
    setenv("CHATGW_API_TOKEN", "s3cret", 1);
    setenv("CHATGW_REDIS_URL", "redis://user:hunter2@redis:6379/0", 1);
    assert_int_equal(LOAD(&c, err), 0);
    char *text = config_to_json(&c);
    assert_null(strstr(text, "s3cret"));
    assert_null(strstr(text, "hunter2"));
    json_t *root = json_loads(text, 0, NULL);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "api_token")), "***");
    assert_string_equal(json_string_value(json_object_get(root, "redis_url")), "redis://user:***@redis:6379/0");
    assert_int_equal(json_object_size(root), NKEYS);
    for (size_t i = 0; i < NKEYS; i++) assert_non_null(json_object_get(root, keys[i]));
    assert_string_equal(json_string_value(json_object_get(root, "log_level")), "info");
    assert_true(json_is_array(json_object_get(root, "ice_servers")));
    json_decref(root);
    free(text);
    config_free(&c);

    /* a password-only URL and an empty token */
    setenv("CHATGW_API_TOKEN", "", 1);
    setenv("CHATGW_REDIS_URL", "redis://:pw@redis:6379", 1);
    assert_int_equal(LOAD(&c, err), 0);
    text = config_to_json(&c);
    assert_non_null(strstr(text, "\"api_token\":\"\""));
    assert_non_null(strstr(text, "\"redis_url\":\"redis://:***@redis:6379\""));
    free(text);
    config_free(&c);
}

/* config_to_json output is itself a valid config file that loads back to the same config. */
static void test_to_json_round_trip(void **state)
{
    config_t c;
    char err[256];
    assert_int_equal(LOAD(&c, err, "--workers", "3", "--log-level", "debug", "--echo",
                          "--rate-msgs-per-sec", "0.5", "--ice-servers", "[{\"urls\":[\"stun:a\",\"stun:b\"]}]",
                          "--trusted-proxies", "::1"), 0);
    char *first = config_to_json(&c);
    config_free(&c);
    file_write("c.json", first);
    assert_int_equal(LOAD(&c, err, "--config", "c.json"), 0);
    char *second = config_to_json(&c);
    assert_string_equal(first, second);
    free(first);
    free(second);
    config_free(&c);
}

static void test_help_lists_every_key(void **state)
{
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    int fd = open("help.txt", O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, STDOUT_FILENO);
    config_print_help();
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    close(fd);

    char text[16384];
    FILE *f = fopen("help.txt", "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    unlink("help.txt");
    text[n] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "  --%s ", keys[i]);
        for (char *p = flag; *p; p++) if (*p == '_') *p = '-';
        if (!strstr(text, flag)) print_error("help lacks %s\n", flag);
        assert_non_null(strstr(text, flag));
    }
    assert_non_null(strstr(text, "(default: 0.0.0.0:8888)"));
    assert_non_null(strstr(text, "(default: 1048576)"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_repo_file_is_defaults, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_default_file_used_when_present, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_file_values, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_env_beats_file, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_flag_beats_env, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_flag_syntax, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_bool_flags, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_workers_auto, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_valid_addresses, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_node_id, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_errors, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_to_json_redacts, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_to_json_round_trip, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_help_lists_every_key, test_setup, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
