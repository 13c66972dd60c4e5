/* Unit tests for policy.c and policy_store.c: loading and reloading (version, unchanged, every
 * kind of rejected policy with the old one still serving), the sandbox (no io/os/debug/
 * coroutine, text-only load, flat require, collectgarbage("count") only), the instruction
 * budget and memory cap (the next call still works), hook verdicts, the gw.* host API (store
 * surviving reloads, token buckets, HS256 JWTs made here with OpenSSL, read-only config) and the
 * JSON <-> Lua conversion. Fixture policies live in tests/unit/policy_fixtures/<case>/, found
 * through CHATGW_SRC or, failing that, next to this file. Most sandbox checks go through the
 * fixture "good" policy's on_message op "eval", which runs a snippet and reports
 * {ok, result, err}. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "base/config.h"
#include "base/err.h"
#include "base/log.h"
#include "base/metrics.h"
#include "policy/policy.h"
#include "policy/policy_rollout.h"
#include "policy/policy_store.h"

#define THIS_FILE __FILE__

static config_t cfg;
static metrics_t *metrics;
static char fixtures[PATH_MAX];
static const policy_conn_t conn = { "c1", "10.0.0.1", "alice", NULL, NULL, NULL, 0 };
static const policy_conn_t conn2 = { "c2", "10.0.0.2", "bob", NULL, NULL, NULL, 0 };

/* ---- helpers ---- */

static void fixture(char *out, size_t len, const char *name)
{
    int n = snprintf(out, len, "%s/%s", fixtures, name);
    assert_true(n > 0 && (size_t)n < len);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int load_fixture(policy_t *p, const char *name, char *err, size_t errlen)
{
    char dir[PATH_MAX];
    fixture(dir, sizeof dir, name);
    return policy_load(p, dir, err, errlen);
}

static policy_t *good_new(const policy_host_t *host)
{
    char err[512];
    policy_t *p = policy_new(&cfg, metrics, host);
    assert_non_null(p);
    int rc = load_fixture(p, "good", err, sizeof err);
    if (rc != 1) fail_msg("good policy: %s", err);
    return p;
}

/* Runs code through the good policy's on_message "eval"; returns {ok, result, err}. */
static json_t *eval(policy_t *p, const char *code)
{
    json_t *msg = json_pack("{s:s, s:s}", "op", "eval", "code", code);
    json_t *out = NULL;
    char drop[64] = "";
    int rc = policy_on_message(p, &conn, "lobby", msg, &out, drop, sizeof drop);
    json_decref(msg);
    if (rc != POLICY_PASS || !out) fail_msg("eval \"%s\": rc %d", code, rc);
    return out;
}

static void eval_true(policy_t *p, const char *code)
{
    json_t *out = eval(p, code);
    if (!json_is_true(json_object_get(out, "ok")) || !json_is_true(json_object_get(out, "result"))) {
        char *text = json_dumps(out, JSON_COMPACT);
        print_error("eval \"%s\" -> %s\n", code, text);
        free(text);
        json_decref(out);
        fail();
    }
    json_decref(out);
}

static void eval_fails(policy_t *p, const char *code, const char *want)
{
    json_t *out = eval(p, code);
    const char *err = json_string_value(json_object_get(out, "err"));
    if (!json_is_false(json_object_get(out, "ok")) || !err || !strstr(err, want)) {
        char *text = json_dumps(out, JSON_COMPACT);
        print_error("eval \"%s\" -> %s, wanted an error with \"%s\"\n", code, text, want);
        free(text);
        json_decref(out);
        fail();
    }
    json_decref(out);
}

/* on_message with {op = op}: rc, and *out (caller decrefs). */
static int message_op(policy_t *p, const char *op, json_t **out, char *code, size_t len)
{
    json_t *msg = json_pack("{s:s, s:s}", "op", op, "text", "hi");
    int rc = policy_on_message(p, &conn, "lobby", msg, out, code, len);
    json_decref(msg);
    return rc;
}

static void assert_pass_works(policy_t *p)
{
    json_t *out = NULL;
    char code[64] = "";
    assert_int_equal(message_op(p, "pass", &out, code, sizeof code), POLICY_PASS);
    assert_non_null(out);
    json_decref(out);
}

static void file_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void tmpdir_make(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/chatgw-policy-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void tmpdir_remove(const char *dir)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- loading ---- */

static void test_load_good(void **state)
{
    policy_t *p = good_new(NULL);
    const char *v = policy_version(p);
    assert_int_equal(strlen(v), 64);
    assert_int_equal(strspn(v, "0123456789abcdef"), 64);
    assert_string_equal(policy_last_error(p), "");
    for (int h = 0; h < POLICY_HOOKS; h++) assert_int_equal(policy_has(p, h), 1);
    char err[256];
    assert_int_equal(load_fixture(p, "good", err, sizeof err), 0);
    assert_int_equal(metrics->policy_reloads[METRICS_RELOAD_OK], 1);
    assert_int_equal(metrics->policy_reloads[METRICS_RELOAD_UNCHANGED], 1);
    /* gw.version is the live version */
    json_t *out = eval(p, "return gw.version");
    assert_string_equal(json_string_value(json_object_get(out, "result")), v);
    json_decref(out);
    policy_free(p);
}

/* name -> expected piece of the error; each rejected with the good policy still serving. */
static void test_load_rejected(void **state)
{
    static const struct {
        const char *dir, *want;
    } cases[] = {
        { "syntax", "policy.lua:2:" },
        { "self_test_fails", "policy.lua:4: self test says no" },
        { "load_loop", "policy.lua:1: policy budget exceeded" },
        { "unknown_hook", "unknown hook \"on_mesage\"" },
        { "bad_hook_type", "policy.lua: on_join must be a function" },
        { "not_a_table", "policy.lua: must return a table of hooks" },
        { "missing", "policy.lua: missing" },
        { "no_such_dir", "cannot open" },
    };
    policy_t *p = good_new(NULL);
    char good[65];
    snprintf(good, sizeof good, "%s", policy_version(p));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        double t0 = mono_now();
        int rc = load_fixture(p, cases[i].dir, err, sizeof err);
        int want_rc = strcmp(cases[i].dir, "no_such_dir") ? GW_EINVAL : -ENOENT;
        if (rc != want_rc || !strstr(err, cases[i].want))
            fail_msg("%s: rc %d err \"%s\", wanted \"%s\"", cases[i].dir, rc, err, cases[i].want);
        assert_true(mono_now() - t0 < 10);
        assert_null(strchr(err, '\n'));        /* one line, no traceback */
        assert_string_equal(policy_last_error(p), err);
        assert_string_equal(policy_version(p), good);
        assert_pass_works(p);
    }
    assert_int_equal(metrics->policy_reloads[METRICS_RELOAD_FAILED], sizeof cases / sizeof cases[0]);
    assert_int_equal(metrics->policy_errors[METRICS_POLICY_HOOKS - 1][METRICS_POLICY_ERROR], 1);
    /* a good load clears the error */
    char err[256];
    assert_int_equal(load_fixture(p, "reload_v2", err, sizeof err), 1);
    assert_string_equal(policy_last_error(p), "");
    policy_free(p);
}

static void test_policy_check(void **state)
{
    char dir[PATH_MAX], version[65], err[512];
    fixture(dir, sizeof dir, "good");
    assert_int_equal(policy_check(&cfg, dir, version, err, sizeof err), 0);
    policy_t *p = good_new(NULL);
    assert_string_equal(version, policy_version(p));
    policy_free(p);
    fixture(dir, sizeof dir, "syntax");
    assert_int_equal(policy_check(&cfg, dir, version, err, sizeof err), GW_EINVAL);
    assert_non_null(strstr(err, "policy.lua:2:"));
    assert_string_equal(version, "");
}

/* Only *.lua regular files (or links to them) count; dot names and directories do not. */
static void test_sources_listing(void **state)
{
    char dir[PATH_MAX], path[PATH_MAX + 32], err[256];
    tmpdir_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/policy.lua", dir);
    file_write(path, "return {}\n");
    policy_t *p = policy_new(&cfg, metrics, NULL);
    assert_int_equal(policy_load(p, dir, err, sizeof err), 1);
    for (int h = 0; h < POLICY_HOOKS; h++) assert_int_equal(policy_has(p, h), 0);
    snprintf(path, sizeof path, "%s/.hidden.lua", dir);
    file_write(path, "x");
    snprintf(path, sizeof path, "%s/..data", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/sub.lua", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    file_write(path, "x");
    assert_int_equal(policy_load(p, dir, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/extra.lua", dir);
    file_write(path, "return 1\n");
    assert_int_equal(policy_load(p, dir, err, sizeof err), 1);
    char target[PATH_MAX + 32];
    snprintf(target, sizeof target, "%s/extra.lua", dir);
    snprintf(path, sizeof path, "%s/link.lua", dir);
    assert_int_equal(symlink(target, path), 0);
    assert_int_equal(policy_load(p, dir, err, sizeof err), 1);
    policy_free(p);
    tmpdir_remove(dir);
}

/* ---- budget and memory ---- */

static void test_budget(void **state)
{
    policy_t *p = good_new(NULL);
    json_t *out = NULL;
    char code[64];
    double t0 = mono_now();
    assert_int_equal(message_op(p, "loop", &out, code, sizeof code), POLICY_ERROR);
    assert_null(out);
    assert_int_equal(metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_BUDGET], 1);
    assert_pass_works(p);
    /* a pcall inside the policy cannot swallow the budget error */
    assert_int_equal(message_op(p, "pcall_loop", &out, code, sizeof code), POLICY_ERROR);
    assert_int_equal(metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_BUDGET], 2);
    assert_true(mono_now() - t0 < 10);
    assert_pass_works(p);
    policy_free(p);
}

/* The bounded library (policy_lib.h): every call that could run long in C raises at once
 * past its cap, and the same calls within the caps give Lua's own results. */
static void test_bounded_lib(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "return #string.rep('', math.maxinteger) == 0 and string.rep('', 5, ',') == ',,,,'");
    eval_true(p, "return string.rep('ab', 3, '-') == 'ab-ab-ab' and string.rep('x', 0) == '' and string.rep('x', -1, 'y') == ''");
    eval_true(p, "return #string.rep('abc', 1398101) == 4194303");                  /* just under 4 MiB */
    eval_fails(p, "return string.rep('abc', 1398102)", "longer than 4 MiB");
    eval_fails(p, "return string.rep('x', 1 << 40)", "longer than 4 MiB");
    eval_fails(p, "return string.rep('x', 3, string.rep('y', 3 << 20))", "longer than 4 MiB");
    eval_true(p, "local s = string.rep('x', 2, string.rep('y', 3 << 20)) return #s == (3 << 20) + 2 and s:sub(-2) == 'yx'");
    eval_fails(p, "table.move({}, 1, math.maxinteger - 1, 1)", "over the policy sandbox's limit");
    eval_fails(p, "table.move({}, math.mininteger, -1, 1)", "over the policy sandbox's limit");
    eval_fails(p, "return table.unpack({}, 1, 1e8)", "over the policy sandbox's limit");
    eval_fails(p, "return table.concat({}, '', 1, 1 << 20)", "over the policy sandbox's limit");
    eval_true(p, "local t = setmetatable({}, { __len = function() return math.maxinteger end }) "
                 "local a = pcall(table.concat, t) local b = pcall(table.unpack, t) local c = pcall(table.insert, t, 1, 1) "
                 "local d = pcall(table.remove, t, 1) local e = pcall(table.sort, t) return not (a or b or c or d or e)");
    eval_fails(p, "local t = {} for i = 1, 70000 do t[i] = i end table.sort(t)", "over the policy sandbox's limit");
    eval_true(p, "local t = { 3, 1, 2 } table.sort(t) table.insert(t, 4) table.insert(t, 1, 0) "
                 "return table.concat(t, ',') == '0,1,2,3,4' and table.remove(t, 1) == 0 and select('#', table.unpack(t)) == 4 "
                 "and table.concat(t, '', 2, 3) == '23' and table.unpack({ 1, 2, 3 }, 3) == 3 "
                 "and table.move({ 1, 2 }, 1, 2, 2)[3] == 2");
    eval_fails(p, "return os.date(string.rep('%c', 200))", "format longer than 256");
    eval_true(p, "return os.date('!%Y-%m-%d', 0) == '1970-01-01'");
    eval_true(p, "return string.pack == nil and string.unpack == nil and string.packsize == nil");
    eval_fails(p, "local s = string.rep('x', 4 << 20) return s .. s", "not enough memory");   /* one block <= 4 MiB */
    eval_true(p, "return utf8.len('h\\u{e9}llo') == 5 and string.upper('abc') == 'ABC' and string.format('%d-%s', 1, 'x') == '1-x'");
    /* type answers from names kept as upvalues, as Lua's own does */
    eval_true(p, "return type(nil) == 'nil' and type(false) == 'boolean' and type(1) == 'number' "
                 "and type(1.5) == 'number' and type('') == 'string' and type({}) == 'table' and type(print) == 'function' "
                 "and type(type) == 'function' and type(gw.fold) == 'function' and select('#', type(1, 2)) == 1 "
                 "and type(gw.null) == 'userdata' and not pcall(type) and select(2, pcall(type)):find('value expected') ~= nil");
    /* fast paths: lower and utf8.len answer as Lua's own */
    eval_true(p, "return string.lower('AbC\\0\\xc9x') == 'abc\\0\\xc9x' and string.lower('abc') == 'abc' and string.lower(12) == '12' "
                 "and string.lower('') == '' and string.lower(string.rep('Ab', 400)) == string.rep('ab', 400) "
                 "and select('#', string.lower('a', 'B')) == 1 and not pcall(string.lower) and not pcall(string.lower, {})");
    eval_true(p, "return utf8.len('hello') == 5 and utf8.len('') == 0 and utf8.len(string.rep('a', 100)) == 100 "
                 "and utf8.len(123) == 3 and utf8.len('abc', 2) == 2 and utf8.len('ab\\xffcd') == nil "
                 "and select(2, utf8.len('ab\\xffcd')) == 3 and not pcall(utf8.len) and not pcall(utf8.len, {})");
    eval_fails(p, "return utf8.len(string.rep('a', (4 << 20) + 1))", "longer than 4 MiB");
    /* gw.fold answers as lower, gsub("%s+", " ") and a trim, on random texts of every length
     * class (the stack and the buffer paths) over whitespace, case and non-ASCII bytes */
    eval_true(p, "local alpha = { ' ', '  ', '\\t', '\\n', '\\r', '\\v', '\\f', 'a', 'B', 'Z', '\\0', '\\xc9', '\\xa0', '1', '.' } "
                 "local seed = 7 local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end "
                 "for i = 1, 3000 do local parts = {} "
                 "  for j = 1, rnd(i % 10 == 0 and 400 or 40) - 1 do parts[j] = alpha[rnd(#alpha)] end "
                 "  local t = table.concat(parts) "
                 "  local want = string.match(string.gsub(string.lower(t), '%s+', ' '), '^ ?(.-) ?$') "
                 "  if gw.fold(t) ~= want then error(string.format('%q', t)) end end "
                 "return gw.fold(string.rep(' A\\t', 300)) == string.rep('a', 300, ' ') and gw.fold(12) == '12' and gw.fold('') == '' and gw.fold(' \\t ') == '' and not pcall(gw.fold) "
                 "and not pcall(gw.fold, {})");
    /* the same on texts mostly without whitespace (eight bytes at a time), with the bytes
     * around 'A'..'Z', around the space and with the high bit set */
    eval_true(p, "local alpha = { 'a', 'B', 'Z', 'A', 'z', '@', '[', '`', '{', '!', ' ', '\\t', '\\x1f', '\\x20', '\\xc1', '\\xda', '\\x80', '\\xff', '\\0' } "
                 "local seed = 11 local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end "
                 "for i = 1, 1200 do local parts = {} "
                 "  for j = 1, rnd(i % 10 == 0 and 120 or 40) - 1 do local r = rnd(40) parts[j] = alpha[r <= 10 and r or rnd(#alpha)] end "
                 "  local t = table.concat(parts) "
                 "  local want = string.match(string.gsub(string.lower(t), '%s+', ' '), '^ ?(.-) ?$') "
                 "  if gw.fold(t) ~= want then error(string.format('%q', t)) end end "
                 "return gw.fold('ABCDEFGHIJKLMNOPQRSTUVWXYZ@[`{') == 'abcdefghijklmnopqrstuvwxyz@[`{' and gw.fold('  ABCDEFGH  IJKLMNOP  ') == 'abcdefgh ijklmnop'");
    eval_fails(p, "return gw.fold(string.rep('a', (4 << 20) + 1))", "longer than 4 MiB");
    /* gw.byte_runs cuts what the byte pattern "(.)%1{max}" and its extension loop cut, for every
     * max from 1 to 6, on random texts over few symbols (long runs) */
    eval_true(p, "local function ref(text, max) local pat = '(.)' .. string.rep('%1', max) "
                 "  local s, e, c = string.find(text, pat) if not s then return text end "
                 "  local parts, n, pos = {}, 0, 1 "
                 "  repeat while string.sub(text, e + 1, e + 1) == c do e = e + 1 end "
                 "    n = n + 1 parts[n] = string.sub(text, pos, s - 1) .. string.rep(c, max) pos = e + 1 "
                 "    s, e, c = string.find(text, pat, pos) until not s "
                 "  parts[n + 1] = string.sub(text, pos) return table.concat(parts) end "
                 "local alpha = { 'a', 'a', 'b', ' ', '!', '\\0', '\\xe9', 'aaaa' } "
                 "local seed = 11 local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end "
                 "for i = 1, 3000 do local parts = {} "
                 "  for j = 1, rnd(i % 10 == 0 and 300 or 30) - 1 do parts[j] = alpha[rnd(#alpha)] end "
                 "  local t, max = table.concat(parts), rnd(6) "
                 "  if gw.byte_runs(t, max) ~= ref(t, max) then error(string.format('%q %d', t, max)) end end "
                 "local filler = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP' "
                 "for at = 1, 24 do for len = 1, 7 do for max = 1, 3 do "   /* one run among distinct neighbours */
                 "  local t = string.sub(filler, 1, at - 1) .. string.rep('z', len) .. string.sub(filler, at, at + 30) "
                 "  if gw.byte_runs(t, max) ~= ref(t, max) then error(string.format('%q %d', t, max)) end end end end "
                 "return gw.byte_runs('', 1) == '' and gw.byte_runs(string.rep('x', 1000), 3) == 'xxx' "
                 "and gw.byte_runs(string.rep('ab', 600) .. 'ccc', 2) == string.rep('ab', 600) .. 'cc' "
                 "and not pcall(gw.byte_runs, 'aa', 0) and not pcall(gw.byte_runs, 'aa', 1.5) and not pcall(gw.byte_runs, {}, 1)");
    eval_fails(p, "return gw.byte_runs(string.rep('a', (4 << 20) + 1), 2)", "longer than 4 MiB");
    eval_true(p, "gw.store.set('u', 'a\\0b') local ok = pcall(gw.store.set, 'v', 'a\\xffb') "
                 "return gw.store.get('u') == 'a\\0b' and not ok and gw.store.get('v') == nil");
    eval_fails(p, "return load(string.rep(' ', (1 << 20) + 1))", "load: a chunk longer than 1024 KiB");
    policy_free(p);
}

/* Runs code through "eval" on p, which must fail by the time guard (within a second or two of
 * its 10 ms, not at some later budget); the timeout count goes up by one. */
static void eval_times_out(policy_t *p, const char *code)
{
    uint64_t before = metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_TIMEOUT];
    json_t *msg = json_pack("{s:s, s:s}", "op", "eval", "code", code);
    json_t *out = NULL;
    char drop[64] = "";
    double t0 = mono_now();
    int rc = policy_on_message(p, &conn, "lobby", msg, &out, drop, sizeof drop);
    double took = mono_now() - t0;
    json_decref(msg);
    if (rc != POLICY_ERROR || out || took > 3 ||
        metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_TIMEOUT] != before + 1)
        fail_msg("eval \"%s\": rc %d, out %p, %.3f s, timeouts %llu -> %llu", code, rc, (void *)out, took,
                 (unsigned long long)before,
                 (unsigned long long)metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_TIMEOUT]);
}

/* The time guard (policy_timeout_ms, no instruction budget): it stops a hook however the
 * script tries to catch, resume or outlast the interrupt, and the next call works. */
static void test_timeout(void **state)
{
    config_t quick = cfg;
    quick.policy_timeout_ms = 10;      /* and 200 ms of failing at once after each timeout */
    quick.policy_budget = 0;
    char err[512];
    policy_t *p = policy_new(&quick, metrics, NULL);
    assert_int_equal(load_fixture(p, "good", err, sizeof err), 1);
    static const char *const escapes[] = {
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "local function spin() while true do end end xpcall(spin, spin)",
        "local function h() return xpcall(function() while true do end end, h) end h()",
        "local x <close> = setmetatable({}, { __close = function() while true do end end }) while true do end",
        "error(setmetatable({}, { __tostring = function() while true do end end }))",
        "while true do load(function() while true do end end) end",
        "table.sort({ 3, 2, 1 }, function(a, b) while true do end end)",
        "string.gsub('abc', '%w', function() while true do end end)",
        "local t = setmetatable({}, { __index = function(t, k) while true do end end }) return t.x",
        "while true do local ok = pcall(error, 'x') end",
    };
    json_t *out = NULL;
    char code[64];
    for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
        eval_times_out(p, escapes[i]);
        /* the hook is tripped for that address: its next calls fail at once, without entering
         * Lua; another address notices nothing */
        uint64_t tripped = metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_TRIPPED];
        assert_int_equal(message_op(p, "pass", &out, code, sizeof code), POLICY_ERROR);
        assert_int_equal(metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_TRIPPED], tripped + 1);
        json_t *msg = json_pack("{s:s}", "op", "pass");
        assert_int_equal(policy_on_message(p, &conn2, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
        json_decref(out);
        json_decref(msg);
        usleep(250 * 1000);
        assert_pass_works(p);
    }
    for (int i = 0; i < 200; i++) eval_true(p, "return #string.rep('x', 100) == 100");   /* short calls: never fired */
    assert_int_equal(metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_TIMEOUT], sizeof escapes / sizeof escapes[0]);
    /* self_test runs under the same guard: a looping one is refused, the good policy stays */
    char dir[PATH_MAX];
    fixture(dir, sizeof dir, "load_loop");
    double t0 = mono_now();
    assert_int_equal(policy_load(p, dir, err, sizeof err), GW_EINVAL);
    assert_true(mono_now() - t0 < 3);
    assert_non_null(strstr(err, "timeout"));
    assert_pass_works(p);
    policy_free(p);
}

/* Finalizers run with hooks off, where no budget could stop them: the sandbox refuses __gc.
 * Closing a VM (a reload) must stay prompt. */
static void test_no_finalizers(void **state)
{
    policy_t *p = good_new(NULL);
    eval_fails(p, "setmetatable({}, { __gc = function() while true do end end })", "__gc is not allowed");
    eval_fails(p, "setmetatable({}, { __gc = false })", "__gc is not allowed");
    eval_true(p, "local mt = {} local t = setmetatable({}, mt) mt.__gc = function() while true do end end "
                 "trap = t return getmetatable(t) == mt");  /* added later: never a finalizer */
    eval_true(p, "local t = setmetatable({}, { __index = { x = 1 } }) return t.x == 1");
    eval_fails(p, "setmetatable(gw.config, {})", "protected metatable");
    double t0 = mono_now();
    char err[256];
    assert_int_equal(load_fixture(p, "reload_v2", err, sizeof err), 1);
    assert_true(mono_now() - t0 < 10);
    policy_free(p);
}

static void test_memory(void **state)
{
    policy_t *p = good_new(NULL);
    json_t *out = NULL;
    char code[64];
    assert_int_equal(message_op(p, "membomb", &out, code, sizeof code), POLICY_ERROR);
    assert_null(out);
    assert_int_equal(metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_MEMORY], 1);
    assert_pass_works(p);
    /* one long C call: string.rep refuses a result over its cap before any work */
    assert_int_equal(message_op(p, "rep", &out, code, sizeof code), POLICY_ERROR);
    assert_int_equal(metrics->policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_ERROR], 1);
    assert_pass_works(p);
    eval_fails(p, "return #string.rep('ab', 2^40)", "");   /* caught inside: no crash */
    assert_pass_works(p);
    policy_free(p);
}

/* Running out of memory inside gw.store.get, while the VM's spare JSON box holds the value:
 * caught inside, later gets in the same run and in the next one work, and the store's value
 * stays intact (ASan: no double release between the run's end and the box's __gc). */
static void test_store_get_out_of_memory(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "gw.store.set('edge', string.rep('x', 65534)) return true");
    eval_true(p, "local t = {} local ok, e = pcall(function() for i = 1, 1000 do t[i] = gw.store.get('edge') end end) "
                 "t = nil "
                 "return not ok and tostring(e):find('not enough memory') ~= nil and #gw.store.get('edge') == 65534");
    eval_true(p, "return #gw.store.get('edge') == 65534");
    eval_true(p, "gw.store.del('edge') return gw.store.get('edge') == nil");
    assert_pass_works(p);
    policy_free(p);
}

/* ---- sandbox ---- */

static void test_sandbox(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "return io == nil and debug == nil and coroutine == nil and package == nil");
    eval_true(p, "return dofile == nil and loadfile == nil and string.dump == nil");
    eval_true(p, "return getmetatable('').__index.dump == nil");
    eval_true(p, "return os.execute == nil and os.getenv == nil and os.exit == nil and os.remove == nil");
    eval_true(p, "return type(os.time()) == 'number' and type(os.clock()) == 'number' "
                 "and type(os.date('!%Y')) == 'string'");
    eval_fails(p, "return io.open('/etc/passwd')", "io");
    eval_fails(p, "return os.execute('true')", "execute");
    eval_fails(p, "debug.sethook()", "debug");
    eval_fails(p, "return coroutine.create(print)", "coroutine");
    /* binary chunks: no string.dump, and load refuses crafted bytecode whatever the mode */
    eval_true(p, "local f, e = load('\\27LuaT\\0\\25\\147\\r\\n\\26\\n\\4\\8\\8xV') "
                 "return f == nil and e:find('binary') ~= nil");
    eval_true(p, "local f, e = load('\\27Lua', 'x', 'b') return f == nil and e:find('binary') ~= nil");
    eval_true(p, "return load('return 1 + 1')() == 2");
    eval_true(p, "return load('return gw ~= nil and x == nil')()");
    eval_true(p, "return load('return x', 'c', 't', { x = 5 })() == 5");
    eval_true(p, "local n = 0 return load(function() n = n + 1 if n == 1 then return 'return 7' end end)() == 7");
    eval_fails(p, "collectgarbage('stop')", "not allowed");
    eval_fails(p, "collectgarbage()", "not allowed");
    eval_true(p, "return collectgarbage('count') > 0");
    eval_true(p, "print('hello from the policy', 1, nil) return true");
    eval_true(p, "return string.format('%d', 3) == '3' and math.max(1, 2) == 2 and utf8.char(233) == '\\u{e9}' "
                 "and table.concat({ 'a', 'b' }) == 'ab'");
    policy_free(p);
}

static void test_require(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "return require('helper').shout('x') == 'X!'");
    eval_true(p, "return require('helper') == require('helper')");
    eval_fails(p, "return require('../x')", "letters, digits and _");
    eval_fails(p, "return require('a.b')", "letters, digits and _");
    eval_fails(p, "return require('/etc/passwd')", "letters, digits and _");
    eval_fails(p, "return require('')", "letters, digits and _");
    eval_fails(p, "return require('nope')", "no file nope.lua");
    policy_free(p);
}

/* ---- hooks ---- */

static void test_on_message(void **state)
{
    policy_t *p = good_new(NULL);
    char code[64] = "";
    json_t *out = NULL;
    json_t *msg = json_pack("{s:s, s:s}", "op", "rewrite", "text", "hi");
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    json_t *want = json_pack("{s:s, s:s, s:s, s:s}", "op", "rewrite", "text", "HI!", "by", "alice", "room", "lobby");
    assert_true(json_equal(out, want));
    assert_true(out != msg);
    assert_string_equal(json_string_value(json_object_get(msg, "text")), "hi");   /* input untouched */
    json_decref(want);
    json_decref(out);
    json_decref(msg);

    assert_int_equal(message_op(p, "drop", &out, code, sizeof code), POLICY_DROP);
    assert_null(out);
    assert_string_equal(code, "no_spam");
    assert_int_equal(message_op(p, "drop_false", &out, code, sizeof code), POLICY_DROP);
    assert_string_equal(code, "muted");
    assert_int_equal(message_op(p, "handled", &out, code, sizeof code), POLICY_PASS);
    assert_null(out);

    msg = json_pack("{s:s}", "op", "pass");
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    assert_ptr_equal(out, msg);                  /* unchanged: the same message, a new reference */
    json_decref(out);
    json_object_set_new(msg, "op", json_string("nothing"));
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    assert_ptr_equal(out, msg);
    json_decref(out);
    json_decref(msg);

    assert_int_equal(message_op(p, "number", &out, code, sizeof code), POLICY_ERROR);
    assert_int_equal(message_op(p, "array", &out, code, sizeof code), POLICY_ERROR);
    assert_null(out);
    policy_free(p);

    /* no policy at all, and a policy without on_message: deliver unchanged */
    p = policy_new(&cfg, metrics, NULL);
    msg = json_pack("{s:s}", "type", "chat");
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    assert_ptr_equal(out, msg);
    json_decref(out);
    assert_int_equal(policy_on_connect(p, &conn, code, sizeof code), POLICY_PASS);
    json_decref(msg);
    policy_free(p);
}

static void test_on_connect_join_leave_tick(void **state)
{
    policy_t *p = good_new(NULL);
    char reason[64] = "";
    assert_int_equal(policy_on_connect(p, &conn, reason, sizeof reason), POLICY_PASS);
    policy_conn_t banned = { "c2", "10.0.0.2", "banned", NULL, NULL, NULL, 0 };
    assert_int_equal(policy_on_connect(p, &banned, reason, sizeof reason), POLICY_DROP);
    assert_string_equal(reason, "banned user");
    policy_conn_t boom = { "c3", "10.0.0.3", "err", NULL, NULL, NULL, 0 };
    assert_int_equal(policy_on_connect(p, &boom, reason, sizeof reason), POLICY_ERROR);
    assert_int_equal(metrics->policy_errors[POLICY_HOOK_CONNECT][METRICS_POLICY_ERROR], 1);
    const policy_pair_t query[] = { { "deny", "x" }, { NULL, NULL } };
    json_t *headers = json_pack("{s:s}", "x-block", "1");
    policy_conn_t q = { "c4", "10.0.0.4", "bob", query, NULL, NULL, 0 };
    assert_int_equal(policy_on_connect(p, &q, reason, sizeof reason), POLICY_DROP);
    assert_string_equal(reason, "denied:x");
    policy_conn_t h = { "c5", "10.0.0.5", "bob", NULL, headers, NULL, 0 };
    assert_int_equal(policy_on_connect(p, &h, reason, sizeof reason), POLICY_DROP);
    assert_string_equal(reason, "blocked_header");
    json_decref(headers);

    char code[64] = "";
    assert_int_equal(policy_on_join(p, &conn, "lobby", code, sizeof code), POLICY_PASS);
    assert_int_equal(policy_on_join(p, &conn, "secret", code, sizeof code), POLICY_DROP);
    assert_string_equal(code, "forbidden");
    assert_int_equal(policy_on_join(p, &conn, "vip", code, sizeof code), POLICY_DROP);
    assert_string_equal(code, "vip_only");

    policy_on_leave(p, &conn, "lobby");
    policy_on_leave(p, &conn, "lobby");
    eval_true(p, "return gw.store.get('leaves:lobby') == 2");
    assert_int_equal(metrics->policy_store_keys, 0);
    policy_on_tick(p, 123.5);
    eval_true(p, "return gw.store.get('tick') == 123.5");
    assert_int_equal(metrics->policy_store_keys, 1);   /* leaves:lobby, counted before the hook set 'tick' */
    assert_int_equal(metrics->policy_store_buckets, 0);
    policy_free(p);
}

/* ---- gw.* ---- */

static void test_store_survives_reload(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "gw.store.set('greeting', { hello = 'world', n = { 1, 2 } }) return true");
    char err[256];
    assert_int_equal(load_fixture(p, "reload_v2", err, sizeof err), 1);
    json_t *msg = json_pack("{s:s}", "key", "greeting"), *out = NULL;
    char code[64];
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    json_t *want = json_pack("{s:{s:s, s:[i,i]}, s:s}", "value", "hello", "world", "n", 1, 2, "version",
                             policy_version(p));
    assert_true(json_equal(out, want));
    json_decref(want);
    json_decref(out);
    json_decref(msg);
    policy_free(p);
}

static void test_store_lua(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "return gw.store.get('absent') == nil");
    eval_true(p, "gw.store.set('k', 'v') local a = gw.store.get('k') gw.store.del('k') "
                 "return a == 'v' and gw.store.get('k') == nil");
    eval_true(p, "gw.store.set('k', 1) gw.store.set('k', nil) return gw.store.get('k') == nil");
    eval_true(p, "return gw.store.incr('n') == 1 and gw.store.incr('n', 5) == 6 "
                 "and math.type(gw.store.incr('n', 0)) == 'integer' and gw.store.incr('n', 0.5) == 6.5");
    eval_true(p, "gw.store.set('short', true, 0.001) local t = os.clock() + 0.01 "
                 "repeat local x = 1 until os.clock() > t or gw.store.get('short') == nil "
                 "return gw.store.get('short') == nil");
    eval_fails(p, "gw.store.set('big', string.rep('x', 70000))", "64 KiB");
    /* the limit is on the JSON: quotes and escapes count */
    eval_true(p, "gw.store.set('edge', string.rep('x', 65534)); return #gw.store.get('edge') == 65534");
    eval_fails(p, "gw.store.set('edge', string.rep('x', 65535))", "64 KiB");
    eval_fails(p, "gw.store.set('esc', string.rep('\\1', 20000))", "64 KiB");
    eval_true(p, "gw.store.set('esc', string.rep('\\1', 10000)); return #gw.store.get('esc') == 10000");
    eval_fails(p, "gw.store.set('f', print)", "cannot convert a function");
    eval_fails(p, "gw.store.set('k', 1, -1)", "ttl");
    eval_fails(p, "gw.store.set('a\\0b', 1)", "NUL");
    eval_fails(p, "gw.store.set('s', 'x') gw.store.incr('s')", "not a number");
    policy_free(p);
}

static void test_store_c(void **state)
{
    policy_store_t *s = policy_store_new((size_t)16 << 20);
    const char *err = NULL;
    assert_int_equal(policy_store_set(s, "a", json_integer(1), 10, 100, &err), 0);
    assert_int_equal(json_integer_value(policy_store_get(s, "a", 105)), 1);
    assert_null(policy_store_get(s, "a", 110));  /* expired: absent, and gone */
    assert_int_equal(policy_store_count(s), 0);
    assert_int_equal(policy_store_set(s, "b", json_string("x"), 0, 100, &err), 0);
    assert_int_equal(policy_store_set(s, "c", json_true(), 1, 100, &err), 0);
    assert_int_equal(policy_store_sweep(s, 200), 1);
    assert_non_null(policy_store_get(s, "b", 1e9));
    json_t *two = json_integer(2);
    assert_int_equal(json_integer_value(policy_store_incr(s, "w", two, 5, 100, &err)), 2);
    assert_int_equal(json_integer_value(policy_store_incr(s, "w", two, 5, 103, &err)), 4);
    assert_null(policy_store_get(s, "w", 105.5));  /* the ttl from creation, not from each incr */
    assert_int_equal(json_integer_value(policy_store_incr(s, "w", two, 5, 106, &err)), 2);
    json_decref(two);
    json_t *big = json_integer(INT64_MAX);
    assert_null(policy_store_incr(s, "w", big, 0, 106, &err));
    assert_string_equal(err, "integer overflow");
    json_decref(big);
    assert_int_equal(policy_store_set(s, "", json_true(), 0, 0, &err), GW_EINVAL);
    assert_int_equal(policy_store_del(s, "b"), 1);
    assert_int_equal(policy_store_del(s, "b"), 0);

    /* token buckets: start full, refill at rate, cap at burst */
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 0, &err), 1);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 0, &err), 1);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 0.5, &err), 0);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 1.0, &err), 1);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 1.0, &err), 0);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 100, &err), 1);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 100, &err), 1);
    assert_int_equal(policy_store_limit(s, "ip", 1, 2, 100, &err), 0);
    assert_int_equal(policy_store_limit(s, "ip", 0, 2, 100, &err), GW_EINVAL);
    assert_int_equal(policy_store_buckets(s), 1);
    assert_int_equal(policy_store_sweep(s, 1000), 2);   /* "w" expired, "ip" refilled (= absent) */
    assert_int_equal(policy_store_count(s), 0);
    assert_int_equal(policy_store_buckets(s), 0);
    policy_store_free(s);
}

/* policy_store_tick sweeps a slice of the hash buckets per tick, not the whole store: with
 * 20,000 expired keys (32,768 buckets) one tick drops some and not all, a few more ticks drop
 * the rest, live keys stay, and keys added between ticks (the map grows) are covered too. */
static void test_store_tick_slice(void **state)
{
    policy_store_t *s = policy_store_new((size_t)64 << 20);
    const char *err = NULL;
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(policy_store_set(s, key, json_integer(i), i % 2 ? 10 : 0, 100, &err), 0);
    }
    size_t first = policy_store_tick(s, 200);
    assert_true(first > 0 && first < 10000);
    size_t dropped = first;
    int ticks = 1;
    for (; dropped < 10000 && ticks < 100; ticks++) {
        if (ticks == 3) {                          /* growth between ticks */
            for (int i = 20000; i < 50000; i++) {
                snprintf(key, sizeof key, "k%d", i);
                assert_int_equal(policy_store_set(s, key, json_true(), 1, 150, &err), 0);
            }
        }
        dropped += policy_store_tick(s, 200);
    }
    assert_true(ticks <= 40);                      /* 65,536 buckets at most: 32 slices */
    while (policy_store_count(s) > 10000 && ticks++ < 100) policy_store_tick(s, 200);
    assert_int_equal(policy_store_count(s), 10000);  /* the permanent half */
    assert_non_null(policy_store_get(s, "k0", 200));
    assert_null(policy_store_get(s, "k1", 200));
    policy_store_free(s);
    (void)state;
}

/* The byte cap (policy_store_mb): permanent values fill it and the next write is refused with
 * nothing changed; the charge follows what is held (a replaced or deleted value gives its bytes
 * back); values with a ttl are evicted to make room; buckets share the cap. */
static void test_store_bytes(void **state)
{
    size_t cap = (size_t)1 << 20;
    policy_store_t *s = policy_store_new(cap);
    const char *err = NULL;
    char key[32], *big = malloc(60000);
    memset(big, 'v', 59999);
    big[59999] = '\0';
    int n = 0;
    for (; n < 100; n++) {
        snprintf(key, sizeof key, "p%d", n);
        if (policy_store_set(s, key, json_string(big), 0, 0, &err) < 0) break;
        assert_true(policy_store_bytes(s) <= cap);
    }
    assert_true(n >= 15 && n < 18);                   /* about 1 MiB of 60 kB values */
    assert_non_null(strstr(err, "policy_store_mb"));
    assert_int_equal(policy_store_count(s), (size_t)n);
    size_t full = policy_store_bytes(s);
    /* refused: a bigger value for an existing key leaves it as it was */
    json_t *arr = json_array();
    for (int i = 0; i < 4000; i++) json_array_append_new(arr, json_string("0123456789"));
    assert_int_equal(policy_store_set(s, "p0", arr, 0, 0, &err), GW_EUNAVAIL);
    assert_int_equal(json_string_length(policy_store_get(s, "p0", 0)), 59999);
    assert_int_equal(policy_store_bytes(s), full);
    /* a smaller value gives bytes back; a delete gives them all */
    assert_int_equal(policy_store_set(s, "p0", json_integer(1), 0, 0, &err), 0);
    assert_true(policy_store_bytes(s) < full - 59000);
    assert_int_equal(policy_store_del(s, "p1"), 1);
    assert_true(policy_store_bytes(s) < full - 2 * 59000);
    /* a replacement takes the new value's bytes and ttl, and keeps one entry */
    size_t before = policy_store_bytes(s), count = policy_store_count(s);
    assert_int_equal(policy_store_set(s, "p0", json_integer(2), 5, 0, &err), 0);
    assert_int_equal(policy_store_bytes(s), before);
    assert_int_equal(policy_store_set(s, "p0", json_string("abc"), 0, 0, &err), 0);
    assert_int_equal(policy_store_count(s), count);
    assert_string_equal(json_string_value(policy_store_get(s, "p0", 100)), "abc");   /* no ttl any more */
    assert_int_equal(policy_store_set(s, "p0", json_integer(1), 5, 0, &err), 0);
    assert_null(policy_store_get(s, "p0", 6));
    assert_int_equal(policy_store_set(s, "p0", json_integer(1), 0, 0, &err), 0);
    /* buckets are charged too, and refused when the cap is reached */
    int b = 0;
    for (; b < 100000; b++) {
        snprintf(key, sizeof key, "bucket-%d", b);
        if (policy_store_limit(s, key, 1, 5, 0, &err) < 0) break;
    }
    assert_true(b > 100 && b < 100000);
    assert_non_null(strstr(err, "policy_store_mb"));
    assert_true(policy_store_bytes(s) <= cap);
    policy_store_free(s);
    /* entries with a ttl make room for a new one */
    s = policy_store_new(cap);
    for (n = 0; n < 16; n++) {
        snprintf(key, sizeof key, "t%d", n);
        assert_int_equal(policy_store_set(s, key, json_string(big), 10 + n, 0, &err), 0);
    }
    for (n = 0; n < 8; n++) {
        snprintf(key, sizeof key, "more%d", n);
        assert_int_equal(policy_store_set(s, key, json_string(big), 0, 0, &err), 0);
        assert_true(policy_store_bytes(s) <= cap);
    }
    assert_null(policy_store_get(s, "t0", 0));        /* the soonest to expire went first */
    assert_true(policy_store_evicted(s) > 0);
    policy_store_free(s);
    free(big);
}

/* Lowering a bucket to the cluster's count (gw.limit with Redis): never raises, refills first,
 * creates an absent bucket only when there is something to lower. */
static void test_store_limit_sync(void **state)
{
    policy_store_t *s = policy_store_new((size_t)16 << 20);
    const char *err = NULL;
    /* absent and the cluster full: nothing to do, no bucket */
    assert_int_equal(policy_store_limit_sync(s, "k", 1, 3, 3, 0, &err), 0);
    assert_int_equal(policy_store_buckets(s), 0);
    /* absent and the cluster has 1 left: created with 1 token */
    assert_int_equal(policy_store_limit_sync(s, "k", 1, 3, 1, 0, &err), 1);
    assert_int_equal(policy_store_buckets(s), 1);
    assert_int_equal(policy_store_limit(s, "k", 1, 3, 0, &err), 1);
    assert_int_equal(policy_store_limit(s, "k", 1, 3, 0, &err), 0);
    /* never raised: in-flight takes of this replica are not in the cluster's count yet */
    assert_int_equal(policy_store_limit_sync(s, "k", 1, 3, 2.5, 0, &err), 0);
    assert_int_equal(policy_store_limit(s, "k", 1, 3, 0, &err), 0);
    /* refilled to now first: 2 tokens at t=2, the cluster has 2.5, so unchanged */
    assert_int_equal(policy_store_limit_sync(s, "k", 1, 3, 2.5, 2, &err), 0);
    assert_int_equal(policy_store_limit(s, "k", 1, 3, 2, &err), 1);
    assert_int_equal(policy_store_limit(s, "k", 1, 3, 2, &err), 1);
    assert_int_equal(policy_store_limit(s, "k", 1, 3, 2, &err), 0);
    /* a full local bucket lowered to what the cluster has left; negative counts as 0 */
    assert_int_equal(policy_store_limit(s, "b", 0.001, 5, 10, &err), 1);   /* 4 left locally */
    assert_int_equal(policy_store_limit_sync(s, "b", 0.001, 5, 0.5, 10, &err), 1);
    assert_int_equal(policy_store_limit(s, "b", 0.001, 5, 10, &err), 0);
    assert_int_equal(policy_store_limit_sync(s, "b", 0.001, 5, -3, 10, &err), 1);
    assert_int_equal(policy_store_limit(s, "b", 0.001, 5, 600, &err), 0);  /* 0.59 tokens */
    assert_int_equal(policy_store_limit(s, "b", 0.001, 5, 1500, &err), 1); /* refilled from 0 */
    /* an existing bucket keeps its rate and burst */
    assert_int_equal(policy_store_limit(s, "c", 1, 2, 0, &err), 1);
    assert_int_equal(policy_store_limit_sync(s, "c", 100, 50, 1, 0, &err), 0);
    assert_int_equal(policy_store_limit_sync(s, "c", 100, 50, 0, 0, &err), 1);
    assert_int_equal(policy_store_limit(s, "c", 1, 2, 0.5, &err), 0);
    assert_int_equal(policy_store_limit(s, "c", 1, 2, 1, &err), 1);
    /* bad arguments change nothing */
    assert_int_equal(policy_store_limit_sync(s, "c", 0, 2, 0, 1, &err), GW_EINVAL);
    assert_string_equal(err, "rate must be > 0 and burst >= 1");
    assert_int_equal(policy_store_limit_sync(s, "c", 1, 0.5, 0, 1, &err), GW_EINVAL);
    assert_int_equal(policy_store_limit_sync(s, "c", 1, 2, NAN, 1, &err), GW_EINVAL);
    assert_int_equal(policy_store_limit_sync(s, "", 1, 2, 0, 1, &err), GW_EINVAL);
    assert_int_equal(policy_store_buckets(s), 3);
    policy_store_free(s);
}

/* A full store makes room: expired entries first, then the POLICY_STORE_EVICT_BATCH entries
 * nearest to expiry among those with a ttl; permanent entries are never evicted, and only a
 * store of permanent entries refuses a new key. Replacing an existing key never needs room. */
static void test_store_eviction(void **state)
{
    (void)state;
    policy_store_t *s = policy_store_new((size_t)16 << 20);
    const char *err = NULL;
    char key[32];
    const size_t half = POLICY_STORE_MAX_KEYS / 2;
    /* half permanent, half with ttls 1000 + i (so "t0" expires first), all at now = 0 */
    for (size_t i = 0; i < half; i++) {
        snprintf(key, sizeof key, "p%zu", i);
        assert_int_equal(policy_store_set(s, key, json_integer((json_int_t)i), 0, 0, &err), 0);
        snprintf(key, sizeof key, "t%zu", i);
        assert_int_equal(policy_store_set(s, key, json_integer((json_int_t)i), 1000.0 + (double)i, 0, &err), 0);
    }
    assert_int_equal(policy_store_count(s), POLICY_STORE_MAX_KEYS);
    /* full: replacing a key works and evicts nothing */
    assert_int_equal(policy_store_set(s, "t7", json_integer(7), 5000, 0, &err), 0);
    assert_int_equal(policy_store_evicted(s), 0);

    /* 1. expired entries go first: at now = 1009.5, t0..t9 (expiring 1000..1009) but t7 */
    assert_int_equal(policy_store_set(s, "new1", json_true(), 0, 1009.5, &err), 0);
    assert_int_equal(policy_store_evicted(s), 0);
    assert_int_equal(policy_store_count(s), POLICY_STORE_MAX_KEYS - 9 + 1);
    for (size_t i = 0; policy_store_count(s) < POLICY_STORE_MAX_KEYS; i++) {
        snprintf(key, sizeof key, "fill%zu", i);
        assert_int_equal(policy_store_set(s, key, json_true(), 0, 1009.5, &err), 0);
    }

    /* 2. nothing expired: the batch nearest to expiry goes (t10, t11, ... but not t7, which
     * now expires at 5000, nor any permanent key), and the new key gets in */
    json_t *one = json_integer(1);
    assert_non_null(policy_store_incr(s, "new2", one, 0, 1009.5, &err));
    assert_int_equal(policy_store_evicted(s), POLICY_STORE_EVICT_BATCH);
    assert_int_equal(policy_store_count(s), POLICY_STORE_MAX_KEYS - POLICY_STORE_EVICT_BATCH + 1);
    assert_null(policy_store_get(s, "t10", 1009.5));
    snprintf(key, sizeof key, "t%zu", (size_t)10 + POLICY_STORE_EVICT_BATCH - 1);
    assert_null(policy_store_get(s, key, 1009.5));
    snprintf(key, sizeof key, "t%zu", (size_t)10 + POLICY_STORE_EVICT_BATCH);
    assert_non_null(policy_store_get(s, key, 1009.5));
    assert_non_null(policy_store_get(s, "t7", 1009.5));
    assert_non_null(policy_store_get(s, "p0", 1009.5));
    assert_non_null(policy_store_get(s, "new1", 1009.5));

    /* 3. only permanent keys left and full: a new key is refused, and nothing changes */
    for (size_t i = 0; i < half; i++) {
        snprintf(key, sizeof key, "t%zu", i);
        policy_store_del(s, key);
    }
    for (size_t i = 0; policy_store_count(s) < POLICY_STORE_MAX_KEYS; i++) {
        snprintf(key, sizeof key, "perm%zu", i);
        assert_int_equal(policy_store_set(s, key, json_true(), 0, 1009.5, &err), 0);
    }
    size_t evicted = policy_store_evicted(s);
    err = NULL;
    assert_int_equal(policy_store_set(s, "one-more", json_true(), 60, 1009.5, &err), GW_EUNAVAIL);
    assert_non_null(err);
    assert_non_null(strstr(err, "store is full"));
    err = NULL;
    assert_null(policy_store_incr(s, "one-more", one, 60, 1009.5, &err));
    assert_non_null(strstr(err, "store is full"));
    assert_int_equal(policy_store_evicted(s), evicted);
    assert_int_equal(policy_store_count(s), POLICY_STORE_MAX_KEYS);
    assert_null(policy_store_get(s, "one-more", 1009.5));
    assert_int_equal(policy_store_set(s, "p1", json_false(), 0, 1009.5, &err), 0);  /* replace: fine */
    json_decref(one);
    policy_store_free(s);
}

static void test_limit_lua(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "local r = {} for i = 1, 5 do r[i] = gw.limit('k', 0.001, 3) end "
                 "return r[1] and r[2] and r[3] and not r[4] and not r[5]");
    eval_true(p, "return gw.limit('other', 0.001, 1) and not gw.limit('other', 0.001, 1)");
    eval_fails(p, "gw.limit('k', 0, 1)", "rate");
    eval_fails(p, "gw.limit('k', 1, 0.5)", "burst");
    policy_free(p);
}

/* gw.limit mirrors allowed takes through the host's limit_take, and the answer lowers the
 * local bucket. */
typedef struct {
    int takes, refuse;
    char key[64];
    double rate, burst;
    void (*done)(void *arg, const char *key, double rate, double burst, double tokens);
    void *arg;
} fake_limit_t;

static int fake_limit_take(void *ud, const char *key, double rate, double burst,
                           void (*done)(void *arg, const char *key, double rate, double burst, double tokens),
                           void *arg)
{
    fake_limit_t *f = ud;
    f->takes++;
    if (f->refuse) return GW_EDOWN;
    snprintf(f->key, sizeof f->key, "%s", key);
    f->rate = rate;
    f->burst = burst;
    f->done = done;
    f->arg = arg;
    return 0;
}

static void test_limit_shared(void **state)
{
    fake_limit_t f = { 0 };
    policy_host_t host = { .ud = &f, .limit_take = fake_limit_take };
    policy_t *p = good_new(&host);
    eval_true(p, "return gw.limit('g', 0.001, 5)");
    assert_int_equal(f.takes, 1);
    assert_string_equal(f.key, "g");
    assert_true(f.rate == 0.001 && f.burst == 5);
    assert_non_null(f.done);
    /* the cluster has 1 token left: one more take locally, then limited, and no mirror for it */
    f.done(f.arg, f.key, f.rate, f.burst, 1);
    eval_true(p, "return gw.limit('g', 0.001, 5)");
    assert_int_equal(f.takes, 2);
    eval_true(p, "return not gw.limit('g', 0.001, 5)");
    assert_int_equal(f.takes, 2);
    /* the default burst is passed on too */
    eval_true(p, "return gw.limit('d', 2)");
    assert_true(f.rate == 2 && f.burst == 2);
    /* {shared = false} stays local; {shared = true} mirrors; a non-table is an error */
    eval_true(p, "return gw.limit('c', 1, 1, {shared = false}) and not gw.limit('c', 1, 1, {shared = false})");
    assert_int_equal(f.takes, 3);
    eval_true(p, "return gw.limit('e', 1, 1, {shared = true})");
    assert_int_equal(f.takes, 4);
    eval_true(p, "return not pcall(gw.limit, 'e', 1, 1, 'local')");
    /* nothing shared (Redis down): the local bucket alone decides */
    f.refuse = 1;
    eval_true(p, "local n = 0 for i = 1, 4 do if gw.limit('local', 0.001, 3) then n = n + 1 end end return n == 3");
    assert_int_equal(f.takes, 7);   /* asked, refused: the 3 allowed takes stayed local */
    policy_free(p);
}

/* base64url without padding */
static void b64url(const unsigned char *in, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    char *w = out;
    for (char *r = out; *r; r++) {
        if (*r == '=') break;
        *w++ = *r == '+' ? '-' : *r == '/' ? '_' : *r;
    }
    *w = '\0';
}

static void jwt_make(const char *header, const char *payload, const char *secret, char *out)
{
    char h[512], pl[512], sig[128];
    b64url((const unsigned char *)header, strlen(header), h);
    b64url((const unsigned char *)payload, strlen(payload), pl);
    sprintf(out, "%s.%s", h, pl);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out, strlen(out), mac, &maclen);
    b64url(mac, maclen, sig);
    strcat(out, ".");
    strcat(out, sig);
}

/* gw.jwt_verify(token, secret) through eval: "ok:<sub>" or the reason. */
static void jwt_expect(policy_t *p, const char *token, const char *secret, const char *want)
{
    char code[2048];
    snprintf(code, sizeof code,
             "local c, r = gw.jwt_verify('%s', '%s') "
             "if c then return 'ok:' .. tostring(c.sub) end return r", token, secret);
    json_t *out = eval(p, code);
    const char *got = json_string_value(json_object_get(out, "result"));
    if (!got || strcmp(got, want)) fail_msg("jwt: got %s, want %s", got ? got : "(none)", want);
    json_decref(out);
}

static void test_jwt(void **state)
{
    policy_t *p = good_new(NULL);
    char tok[1024], payload[256];
    const char *hs = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    long now = (long)time(NULL);
    snprintf(payload, sizeof payload, "{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":%ld}", now + 600, now - 10);
    jwt_make(hs, payload, "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "ok:alice");
    jwt_expect(p, tok, "other", "bad_signature");
    char tampered[1024];
    snprintf(tampered, sizeof tampered, "%s", tok);
    char *dot = strchr(tampered, '.');
    dot[1] = dot[1] == 'e' ? 'f' : 'e';            /* change the payload, keep the signature */
    jwt_expect(p, tampered, "s3cret", "bad_signature");
    snprintf(payload, sizeof payload, "{\"sub\":\"alice\",\"exp\":%ld}", now - 1);
    jwt_make(hs, payload, "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "expired");
    snprintf(payload, sizeof payload, "{\"sub\":\"alice\",\"nbf\":%ld}", now + 600);
    jwt_make(hs, payload, "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "not_yet_valid");
    jwt_make("{\"alg\":\"none\"}", "{\"sub\":\"alice\"}", "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "unsupported_alg");
    tok[strrchr(tok, '.') - tok + 1] = '\0';        /* "none" tokens carry no signature */
    jwt_expect(p, tok, "s3cret", "unsupported_alg");
    jwt_make("{\"alg\":\"HS512\"}", "{\"sub\":\"alice\"}", "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "unsupported_alg");
    jwt_make("{\"typ\":\"JWT\"}", "{\"sub\":\"alice\"}", "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "malformed");
    jwt_make(hs, "[1]", "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "malformed");
    jwt_make(hs, "{\"exp\":\"soon\"}", "s3cret", tok);
    jwt_expect(p, tok, "s3cret", "malformed");
    jwt_expect(p, "not-a-token", "s3cret", "malformed");
    jwt_expect(p, "a.b", "s3cret", "malformed");
    jwt_expect(p, "a.b.c.d", "s3cret", "malformed");
    jwt_expect(p, "!!.??.**", "s3cret", "malformed");
    eval_fails(p, "gw.jwt_verify('a.b.c', '')", "secret is empty");
    policy_free(p);
}

static void test_config_readonly(void **state)
{
    policy_t *p = good_new(NULL);
    eval_true(p, "return gw.config.policy_budget == 2000000 and gw.config.policy_fail == 'closed'");
    eval_true(p, "return gw.config.api_token ~= 'hunter2'");       /* redacted by config_to_json */
    eval_fails(p, "gw.config.policy_budget = 1", "gw.config is read-only");
    eval_fails(p, "gw.config.new_key = 1", "gw.config is read-only");
    eval_fails(p, "setmetatable(gw.config, nil)", "protected metatable");
    eval_true(p, "local t = gw.config.ice_servers t[1] = 'x' return #gw.config.ice_servers == 0");
    eval_true(p, "local n = 0 for k, v in pairs(gw.config) do n = n + 1 end return n > 30");
    eval_true(p, "return getmetatable(gw.config) == 'gw.config is read-only'");
    policy_free(p);
}

/* ---- conversion ---- */

static void test_conversion_roundtrip(void **state)
{
    policy_t *p = good_new(NULL);
    const char *text =
        "{\"op\":\"echo\",\"nested\":{\"a\":{\"b\":[1,2,{\"c\":[],\"d\":{}}]}},\"empty\":[],\"obj\":{},"
        "\"uni\":\"h\\u00e9llo \\u2713 \\ud83d\\ude00\",\"int\":42,\"neg\":-7,\"real\":1.5,\"realint\":2.0,"
        "\"big\":9007199254740993,\"t\":true,\"f\":false,\"holes\":[1,null,3],\"nul\":\"a\\u0000b\"}";
    json_t *msg = json_loads(text, JSON_ALLOW_NUL, NULL), *out = NULL;
    assert_non_null(msg);
    char code[64];
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    assert_non_null(out);
    assert_true(out != msg);
    if (!json_equal(out, msg)) {
        char *got = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS);
        fail_msg("round trip: %s", got);
    }
    assert_true(json_is_integer(json_object_get(out, "int")));
    assert_true(json_is_real(json_object_get(out, "realint")));
    json_decref(out);
    json_decref(msg);

    /* null members vanish (absent in Lua) */
    msg = json_pack("{s:s, s:n, s:i}", "op", "echo", "gone", "kept", 1);
    assert_int_equal(policy_on_message(p, &conn, "lobby", msg, &out, code, sizeof code), POLICY_PASS);
    assert_null(json_object_get(out, "gone"));
    assert_int_equal(json_integer_value(json_object_get(out, "kept")), 1);
    json_decref(out);
    json_decref(msg);

    /* deeper than 32 levels does not convert */
    json_t *deep = json_pack("{s:s}", "op", "echo"), *cur = deep;
    for (int i = 0; i < 40; i++) {
        json_t *next = json_object();
        json_object_set_new(cur, "x", next);
        cur = next;
    }
    assert_int_equal(policy_on_message(p, &conn, "lobby", deep, &out, code, sizeof code), POLICY_ERROR);
    json_decref(deep);

    /* Lua -> JSON */
    eval_true(p, "return true");
    json_t *r = eval(p, "return { arr = gw.array(), obj = {}, list = { 'a', gw.null, 'c' }, n = 3, f = 0.25 }");
    json_t *want = json_pack("{s:b, s:{s:[], s:{}, s:[s,n,s], s:i, s:f}}", "ok", 1, "result", "arr", "obj", "list",
                             "a", "c", "n", 3, "f", 0.25);
    assert_true(json_equal(r, want));
    json_decref(want);
    json_decref(r);
    static const char *const bad[] = {
        "return { result = (function() local t = {} t.t = t return t end)() }",  /* cycle */
        "return { result = '\\xff\\xfe' }",                                         /* not UTF-8 */
        "return { result = 0/0 }",
        "return { result = math.huge }",
        "return { result = { [1] = 'a', [3] = 'c' } }",                             /* holes */
        "return { result = { 1, 2, x = 3 } }",                                      /* mixed */
        "return { result = { [true] = 1 } }",
        "return { result = print }",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *m = json_pack("{s:s, s:s}", "op", "eval", "code", bad[i]);
        out = NULL;
        if (policy_on_message(p, &conn, "lobby", m, &out, code, sizeof code) != POLICY_ERROR)
            fail_msg("converted: %s", bad[i]);
        assert_null(out);
        json_decref(m);
    }
    eval_fails(p, "gw.send('c1', { f = print })", "cannot convert");
    policy_free(p);
}

/* ---- host callbacks ---- */

typedef struct {
    int sends, broadcasts, kicks, logs, mutes, muted;
    char last_to[64], except[64], code[64], reason[64], log_msg[128], log_hook[32];
    json_t *last;
    policy_t *p;                   /* for callbacks that re-enter the policy */
    int reload_rc;
    char reload_err[256];
} fake_host_t;

static int fake_send(void *ud, const char *id, json_t *msg)
{
    fake_host_t *h = ud;
    if (strcmp(id, "c1")) return GW_ENOTFOUND;
    h->sends++;
    snprintf(h->last_to, sizeof h->last_to, "%s", id);
    json_decref(h->last);
    h->last = json_incref(msg);
    return 0;
}

static int fake_broadcast(void *ud, const char *room, json_t *msg, const char *except)
{
    fake_host_t *h = ud;
    h->broadcasts++;
    snprintf(h->except, sizeof h->except, "%s", except ? except : "(none)");
    return strcmp(room, "lobby") ? -1 : 0;
}

static int fake_mute(void *ud, const char *id, const char *room, int muted)
{
    fake_host_t *h = ud;
    if (strcmp(id, "c1") || strcmp(room, "lobby")) return GW_ENOTFOUND;
    h->mutes++;
    h->muted = muted;
    return 0;
}

static int fake_kick(void *ud, const char *id, const char *code, const char *reason)
{
    fake_host_t *h = ud;
    h->kicks++;
    if (h->p && !strcmp(code, "reenter")) policy_on_leave(h->p, &conn, "kicked");  /* like a close */
    if (h->p && !strcmp(code, "reload")) {
        char dir[PATH_MAX];
        fixture(dir, sizeof dir, "reload_v2");
        h->reload_rc = policy_load(h->p, dir, h->reload_err, sizeof h->reload_err);
    }
    snprintf(h->code, sizeof h->code, "%s", code);
    snprintf(h->reason, sizeof h->reason, "%s", reason);
    return 0;
}

static json_t *fake_members(void *ud, const char *room)
{
    if (strcmp(room, "lobby")) return NULL;
    return json_pack("[{s:s, s:s, s:b}]", "id", "c1", "name", "alice", "muted", 0);
}

static json_t *fake_rooms(void *ud) { return json_pack("[{s:s, s:i}]", "name", "lobby", "online", 1); }

static void fake_log(void *ud, int level, const char *msg, json_t *fields)
{
    fake_host_t *h = ud;
    h->logs++;
    snprintf(h->log_msg, sizeof h->log_msg, "%s", msg);
    const char *hook = json_string_value(json_object_get(fields, "hook"));
    snprintf(h->log_hook, sizeof h->log_hook, "%s", hook ? hook : "");
}

static void test_host(void **state)
{
    fake_host_t fh = { 0 };
    policy_host_t host = { &fh, fake_send, fake_broadcast, fake_kick, fake_members, fake_rooms, fake_log, NULL, fake_mute };
    policy_t *p = good_new(&host);
    eval_true(p, "return gw.send('c1', { type = 'hi', n = 1 }) and not gw.send('zz', {})");
    assert_int_equal(fh.sends, 1);
    json_t *want = json_pack("{s:s, s:i}", "type", "hi", "n", 1);
    assert_true(json_equal(fh.last, want));
    json_decref(want);
    eval_true(p, "return gw.broadcast('lobby', { type = 'x' }, { except = 'c1' }) "
                 "and not gw.broadcast('nope', { type = 'x' })");
    assert_int_equal(fh.broadcasts, 2);
    assert_string_equal(fh.except, "(none)");
    eval_true(p, "return gw.kick('c1', 'bye', 'spam')");
    assert_string_equal(fh.code, "bye");
    assert_string_equal(fh.reason, "spam");
    eval_true(p, "return gw.mute('c1', 'lobby') and not gw.mute('c9', 'lobby')");
    assert_int_equal(fh.mutes, 1);
    assert_int_equal(fh.muted, 1);
    eval_true(p, "return gw.mute('c1', 'lobby', false)");
    assert_int_equal(fh.muted, 0);
    eval_true(p, "local m = gw.members('lobby') return #m == 1 and m[1].name == 'alice' "
                 "and m[1].muted == false and gw.members('nope') == nil");
    eval_true(p, "local r = gw.rooms() return r[1].name == 'lobby' and r[1].online == 1");
    eval_true(p, "local t = gw.now() return math.type(t) == 'float' and t > 1.6e9");
    int logs = fh.logs;
    eval_true(p, "gw.log('warn', 'from lua', { a = 1 }) return true");
    assert_int_equal(fh.logs, logs + 1);
    assert_string_equal(fh.log_msg, "from lua");
    eval_fails(p, "gw.log('loud', 'x')", "invalid option");
    /* the handled op sends through the host, then delivers nothing */
    json_t *out = NULL;
    char code[64];
    assert_int_equal(message_op(p, "handled", &out, code, sizeof code), POLICY_PASS);
    assert_null(out);
    assert_int_equal(fh.sends, 2);
    /* hook failures are logged through the host with the hook's name */
    policy_conn_t boom = { "c3", "10.0.0.3", "err", NULL, NULL, NULL, 0 };
    assert_int_equal(policy_on_connect(p, &boom, code, sizeof code), POLICY_ERROR);
    assert_string_equal(fh.log_msg, "policy hook failed");
    assert_string_equal(fh.log_hook, "on_connect");
    /* a callback may re-enter a hook (a kick closes the conn: on_leave); a reload from inside a
     * hook is refused, since the running VM cannot close under its own call */
    fh.p = p;
    eval_true(p, "return gw.kick('c1', 'reenter', '') and gw.store.get('leaves:kicked') == 1");
    eval_true(p, "return gw.kick('c1', 'reload', '')");
    assert_int_equal(fh.reload_rc, GW_EUNAVAIL);
    assert_non_null(strstr(fh.reload_err, "during a hook call"));
    fh.p = NULL;
    policy_free(p);
    json_decref(fh.last);

    /* without a host, gw.send and friends answer false / nil / {} */
    p = good_new(NULL);
    eval_true(p, "return gw.send('c1', {}) == false and gw.broadcast('lobby', {}) == false "
                 "and gw.kick('c1') == false and gw.members('lobby') == nil and #gw.rooms() == 0");
    policy_free(p);
}

static int setup(void **state)
{
    /* a generous time guard: these tests fill memory on purpose, slow under sanitizers */
    char *argv[] = { "--policy_budget", "2000000", "--policy_memory_mb", "32", "--api_token", "hunter2",
                     "--policy_timeout_ms", "10000" };
    char err[256];
    if (config_load(&cfg, 8, argv, err, sizeof err) < 0) {
        fprintf(stderr, "config: %s\n", err);
        return -1;
    }
    metrics = calloc(1, sizeof *metrics);
    return metrics ? 0 : -1;
}

static int teardown(void **state)
{
    config_free(&cfg);
    free(metrics);
    return 0;
}

/* Each test starts from zeroed counters. */
/* ---- the conn table cache (policy_conn_push) ---- */

static policy_t *cc_policy;
static const policy_conn_t *cc_conn;

static int cc_kick(void *ud, const char *id, const char *code, const char *reason)
{
    if (!strcmp(code, "reenter")) policy_on_leave(cc_policy, cc_conn, "lobby");
    return 0;
}

/* on_message {op} for c; the table the op returned (NULL when it returned none). */
static json_t *cc_op(policy_t *p, const policy_conn_t *c, const char *op)
{
    json_t *msg = json_pack("{s:s}", "op", op);
    json_t *out = NULL;
    char code[64] = "";
    int rc = policy_on_message(p, c, "lobby", msg, &out, code, sizeof code);
    if (rc != POLICY_PASS) fail_msg("op %s: rc %d", op, rc);
    if (out == msg) {
        json_decref(out);
        out = NULL;
    }
    json_decref(msg);
    return out;
}

static void cc_show(policy_t *p, const policy_conn_t *c, const char *keys, const char *name, const char *query)
{
    json_t *o = cc_op(p, c, "show");
    assert_non_null(o);
    const char *k = json_string_value(json_object_get(o, "keys"));
    const char *n = json_string_value(json_object_get(o, "name"));
    const char *q = json_string_value(json_object_get(o, "query"));
    if (!k || strcmp(k, keys) || (name && (!n || strcmp(n, name))) || (!name && n) || !q || strcmp(q, query) ||
        !json_is_false(json_object_get(o, "mt"))) {
        char *text = json_dumps(o, JSON_COMPACT);
        print_error("show -> %s, wanted keys %s name %s query %s\n", text, keys, name ? name : "(none)", query);
        free(text);
        fail();
    }
    if (c->id) assert_string_equal(json_string_value(json_object_get(o, "id")), c->id);
    if (c->ip) assert_string_equal(json_string_value(json_object_get(o, "ip")), c->ip);
    json_decref(o);
}

/* Hooks get the same conn table again only while it holds exactly what a fresh one would:
 * whatever a hook (or code holding on to the table) changed, the next call sees the real
 * conn; host-side changes (a new name, with gen bumped) show; nested calls get their own table;
 * a conn without a slot gets a fresh table each time; forget and reloads keep working. */
static void test_conn_cache(void **state)
{
    char err[512];
    policy_host_t host = { .kick = cc_kick };
    policy_t *p = policy_new(&cfg, metrics, &host);
    if (load_fixture(p, "conn_cache", err, sizeof err) != 1) fail_msg("conn_cache policy: %s", err);
    const policy_pair_t query[] = { { "room", "lobby" }, { "name", "alice" }, { NULL, NULL } };
    policy_conn_slot_t *cslot = NULL, *oslot = NULL, *nslot = NULL, *jslot = NULL;
    policy_conn_t c = { "c1", "10.0.0.1", "alice", query, NULL, &cslot, 0 };
    const char *all = "id,ip,name,query", *q = "name=alice&room=lobby";
    cc_policy = p;
    cc_conn = &c;

    cc_show(p, &c, all, "alice", q);
    static const char *const changes[] = { "add", "rename", "set_id", "set_ip", "query", "query_del", "query_set",
                                           "query_swap", "query_meta", "drop_query", "meta", "rawset" };
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        json_decref(cc_op(p, &c, changes[i]));
        cc_show(p, &c, all, "alice", q);
        cc_show(p, &c, all, "alice", q);
    }

    /* a table is handed out again while unchanged (that is the point of the cache) */
    json_decref(cc_op(p, &c, "keep"));
    json_t *o = cc_op(p, &c, "same");
    assert_true(json_is_true(json_object_get(o, "same")));
    json_decref(o);
    /* a kept table changed outside any call of its conn is not handed out again */
    policy_conn_t other = { "c2", "10.0.0.2", "bob", NULL, NULL, &oslot, 0 };
    json_decref(cc_op(p, &other, "late"));
    o = cc_op(p, &c, "same");
    assert_true(json_is_false(json_object_get(o, "same")));
    json_decref(o);
    cc_show(p, &c, all, "alice", q);
    /* a field set away and back to the same (interned) string: the table is as a fresh one would
     * be, so it is handed out again */
    json_decref(cc_op(p, &c, "keep"));
    json_decref(cc_op(p, &c, "long_name"));
    o = cc_op(p, &c, "same");
    assert_true(json_is_true(json_object_get(o, "same")));
    json_decref(o);
    cc_show(p, &c, all, "alice", q);

    /* the host renames (and says so with gen): the hook sees the new name, a kept table the old */
    json_decref(cc_op(p, &c, "keep"));
    c.name = "carol";
    c.gen++;
    o = cc_op(p, &c, "same");
    assert_true(json_is_false(json_object_get(o, "same")));
    assert_string_equal(json_string_value(json_object_get(o, "last_name")), "alice");
    json_decref(o);
    cc_show(p, &c, all, "carol", q);
    c.name = "alice";
    c.gen++;
    cc_show(p, &c, all, "alice", q);
    /* a query with the same keys and other values */
    const policy_pair_t hall[] = { { "room", "hall" }, { "name", "alice" }, { NULL, NULL } };
    const policy_pair_t lobby[] = { { "room", "lobby" }, { NULL, NULL } };
    c.query = hall;
    c.gen++;
    cc_show(p, &c, all, "alice", "name=alice&room=hall");
    c.query = lobby;
    c.gen++;
    cc_show(p, &c, all, "alice", "room=lobby");
    c.query = query;
    c.gen++;
    cc_show(p, &c, all, "alice", q);
    /* no slot: a fresh table every call */
    policy_conn_t bare = { "c1", NULL, NULL, NULL, NULL, NULL, 0 };
    cc_show(p, &bare, "id", NULL, "nil");
    json_decref(cc_op(p, &bare, "keep"));
    o = cc_op(p, &bare, "same");
    assert_true(json_is_false(json_object_get(o, "same")));
    json_decref(o);
    cc_show(p, &c, all, "alice", q);
    policy_conn_t noid = { NULL, "10.0.0.9", "dan", NULL, NULL, &nslot, 0 };
    cc_show(p, &noid, "ip,name", "dan", "nil");
    cc_show(p, &noid, "ip,name", "dan", "nil");

    /* only on_message fills an entry (a conn that joins and idles costs nothing); on_join uses one */
    policy_conn_t j = { "j1", "10.0.0.5", "joe", NULL, NULL, &jslot, 0 };
    char jc[64];
    assert_int_equal(policy_on_join(p, &j, "lobby", jc, sizeof jc), POLICY_PASS);
    assert_null(jslot);
    o = cc_op(p, &j, "same_joined");
    assert_true(json_is_false(json_object_get(o, "same")));
    json_decref(o);
    assert_int_equal(policy_on_join(p, &j, "lobby", jc, sizeof jc), POLICY_PASS);
    o = cc_op(p, &j, "same_joined");
    assert_true(json_is_true(json_object_get(o, "same")));
    json_decref(o);

    /* nested: the inner call gets its own table; the outer one keeps its change */
    o = cc_op(p, &c, "nested");
    assert_true(json_is_false(json_object_get(o, "inner_same")));
    assert_string_equal(json_string_value(json_object_get(o, "name_after")), "outer");
    assert_string_equal(json_string_value(json_object_get(o, "inner_name")), "alice");
    json_decref(o);
    cc_show(p, &c, all, "alice", q);

    /* forget: a cached conn, again, an empty slot, no slot */
    json_decref(cc_op(p, &c, "keep"));
    policy_conn_forget(p, &cslot);
    assert_null(cslot);
    policy_conn_forget(p, &cslot);
    policy_conn_forget(p, NULL);
    o = cc_op(p, &c, "same");
    assert_true(json_is_false(json_object_get(o, "same")));
    json_decref(o);
    cc_show(p, &c, all, "alice", q);
    json_decref(cc_op(p, &c, "keep"));
    o = cc_op(p, &c, "same");                      /* cached again */
    assert_true(json_is_true(json_object_get(o, "same")));
    json_decref(o);

    /* a reload: the new VM builds its own table, then caches it */
    char dir[PATH_MAX], cmd[2 * PATH_MAX + 64], tmp[] = "/tmp/chatgw-cc-XXXXXX";
    fixture(dir, sizeof dir, "conn_cache");
    assert_non_null(mkdtemp(tmp));
    snprintf(cmd, sizeof cmd, "cp %s/policy.lua %s/ && echo '-- v2' >> %s/policy.lua", dir, tmp, tmp);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(policy_load(p, tmp, err, sizeof err), 1);
    o = cc_op(p, &c, "same");                      /* the new VM's seen.last is empty */
    assert_true(json_is_false(json_object_get(o, "same")));
    json_decref(o);
    cc_show(p, &c, all, "alice", q);
    json_decref(cc_op(p, &c, "keep"));
    o = cc_op(p, &c, "same");
    assert_true(json_is_true(json_object_get(o, "same")));
    json_decref(o);
    snprintf(cmd, sizeof cmd, "rm -r %s", tmp);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(policy_has(p, POLICY_HOOK_MESSAGE), 1);

    policy_conn_forget(p, &cslot);
    policy_conn_forget(p, &oslot);
    policy_conn_forget(p, &jslot);
    policy_free(p);
    policy_conn_forget(NULL, &nslot);              /* after the policy: the slot is only freed */
    assert_null(nslot);
    (void)state;
}

/* A slot under shadow mode: the live and the candidate VM each keep their own entry; both see
 * the real conn whatever the other's hook did to its table, and forget drops both. */
static void test_conn_cache_shadow(void **state)
{
    char err[512], dir[PATH_MAX];
    policy_host_t host = { .kick = cc_kick };
    policy_t *p = policy_new(&cfg, metrics, &host);
    if (load_fixture(p, "conn_cache", err, sizeof err) != 1) fail_msg("conn_cache policy: %s", err);
    fixture(dir, sizeof dir, "conn_cache");
    assert_int_equal(policy_candidate_open(p, dir, POLICY_ROLLOUT_SHADOW, err, sizeof err), 1);
    const policy_pair_t query[] = { { "room", "lobby" }, { NULL, NULL } };
    policy_conn_slot_t *slot = NULL;
    policy_conn_t c = { "c1", "10.0.0.1", "alice", query, NULL, &slot, 0 };
    cc_policy = p;
    cc_conn = &c;
    for (int i = 0; i < 3; i++) {
        cc_show(p, &c, "id,ip,name,query", "alice", "room=lobby");
        json_decref(cc_op(p, &c, "rename"));
        json_decref(cc_op(p, &c, "keep"));
        json_t *o = cc_op(p, &c, "same");
        assert_true(json_is_true(json_object_get(o, "same")));
        json_decref(o);
    }
    assert_non_null(slot);
    policy_conn_forget(p, &slot);
    assert_null(slot);
    policy_free(p);
    (void)state;
}

static int metrics_reset(void **state)
{
    memset(metrics, 0, sizeof *metrics);
    return 0;
}

int main(void)
{
    const char *src = getenv("CHATGW_SRC");
    if (src && *src) {
        snprintf(fixtures, sizeof fixtures, "%s/tests/unit/policy_fixtures", src);
    } else {
        const char *file = THIS_FILE;
        const char *slash = strrchr(file, '/');
        snprintf(fixtures, sizeof fixtures, "%.*s/policy_fixtures", slash ? (int)(slash - file) : 1,
                 slash ? file : ".");
    }
    if (!getenv("CHATGW_TEST_VERBOSE")) log_level_set(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_load_good, metrics_reset),
        cmocka_unit_test_setup(test_conn_cache, metrics_reset),
        cmocka_unit_test_setup(test_conn_cache_shadow, metrics_reset),
        cmocka_unit_test_setup(test_load_rejected, metrics_reset),
        cmocka_unit_test_setup(test_policy_check, metrics_reset),
        cmocka_unit_test_setup(test_sources_listing, metrics_reset),
        cmocka_unit_test_setup(test_budget, metrics_reset),
        cmocka_unit_test_setup(test_memory, metrics_reset),
        cmocka_unit_test_setup(test_store_get_out_of_memory, metrics_reset),
        cmocka_unit_test_setup(test_timeout, metrics_reset),
        cmocka_unit_test_setup(test_bounded_lib, metrics_reset),
        cmocka_unit_test_setup(test_store_bytes, metrics_reset),
        cmocka_unit_test_setup(test_no_finalizers, metrics_reset),
        cmocka_unit_test_setup(test_sandbox, metrics_reset),
        cmocka_unit_test_setup(test_require, metrics_reset),
        cmocka_unit_test_setup(test_on_message, metrics_reset),
        cmocka_unit_test_setup(test_on_connect_join_leave_tick, metrics_reset),
        cmocka_unit_test_setup(test_store_survives_reload, metrics_reset),
        cmocka_unit_test_setup(test_store_lua, metrics_reset),
        cmocka_unit_test_setup(test_store_c, metrics_reset),
        cmocka_unit_test(test_store_tick_slice),
        cmocka_unit_test_setup(test_store_eviction, metrics_reset),
        cmocka_unit_test_setup(test_limit_lua, metrics_reset),
        cmocka_unit_test_setup(test_store_limit_sync, metrics_reset),
        cmocka_unit_test_setup(test_limit_shared, metrics_reset),
        cmocka_unit_test_setup(test_jwt, metrics_reset),
        cmocka_unit_test_setup(test_config_readonly, metrics_reset),
        cmocka_unit_test_setup(test_conversion_roundtrip, metrics_reset),
        cmocka_unit_test_setup(test_host, metrics_reset),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
