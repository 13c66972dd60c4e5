/* policy_pattern: the replacements answer exactly as Lua 5.4's own string.find/match/gmatch/
 * gsub over a table of cases (arguments, defaults, returns, errors), and add the step budget,
 * the stop flag and gsub's output cap. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lualib.h>

#include "policy/policy_pattern.h"

#define POLICY_PATTERN_MAX_STEPS 1000000UL       /* a budget: some ms of matching */
#define POLICY_PATTERN_MAX_OUT (16u << 20)       /* a cap on gsub's result, bytes */

/* Compares string (the original) with mine (ours) over every case; returns the differences,
 * one per line, or "". "bad argument" messages lose the function's name: Lua finds it only
 * for functions in package.loaded. */
static const char compare_lua[] =
    "local orig, mine = string, ...\n"
    "local function show(ok, ...)\n"
    "  local t = table.pack(...)\n"
    "  local o = { tostring(ok), tostring(t.n) }\n"
    "  for i = 1, t.n do\n"
    "    local v = t[i]\n"
    "    o[#o + 1] = math.type(v) and (math.type(v) .. ':' .. tostring(v)) or type(v) .. ':' .. tostring(v)\n"
    "  end\n"
    "  return (orig.gsub(table.concat(o, ' '), \"to '[^']*' %(\", 'to ? ('))\n"
    "end\n"
    "local function run(lib, c)\n"
    "  if c[1] ~= 'gmatch' then return show(pcall(lib[c[1]], table.unpack(c, 2, c.n))) end\n"
    "  local ok, it = pcall(lib.gmatch, table.unpack(c, 2, c.n))\n"
    "  if not ok then return show(ok, it) end\n"
    "  local out = {}\n"
    "  for _ = 1, 100 do\n"
    "    local r = table.pack(pcall(it))\n"
    "    out[#out + 1] = show(table.unpack(r, 1, r.n))\n"
    "    if not r[1] or r[2] == nil then break end\n"
    "  end\n"
    "  return table.concat(out, ' / ')\n"
    "end\n"
    "local T, F = { a = 'A', b = 2, c = false, d = {}, [1] = 'one', ['1'] = 1.5 }, function(...) return select('#', ...) .. (...) end\n"
    "local function P(...) return table.pack(...) end\n"
    "local cases = {\n"
    "  P('find', 'hello world', 'o'), P('find', 'hello world', 'o', 6), P('find', 'hello world', 'o', -3),\n"
    "  P('find', 'hello world', 'o', 0), P('find', 'hello world', 'o', -100), P('find', 'hello', 'o', 100),\n"
    "  P('find', 'hello', '', 6), P('find', 'hello', '', 7), P('find', 'hello', '', -1), P('find', '', ''),\n"
    "  P('find', 'a.b', '.', 1, true), P('find', 'a.b', '.', 1, false), P('find', 'a.b', '.', nil, 1),\n"
    "  P('find', 'a+b', '+'), P('find', 'a)b]', ')b]'), P('find', 12345, 34), P('find', 'x2y', 2.0),\n"
    "  P('find', 'hello', 'l', 3.0), P('find', 'hello', 'l', '3'), P('find', 'hello', 'l', 2.5),\n"
    "  P('find', 'hello', 'l', 'x'), P('find', nil, 'l'), P('find', 'hello', {}),\n"
    "  P('find', 'hello', '()ll()'), P('find', 'hello', '(h)(e)'), P('find', 'hello', '^e'),\n"
    "  P('find', 'hello', '^h'), P('find', 'hello', 'o$'), P('find', 'he\\0llo', '%z'), P('find', 'a\\0b', '\\0'),\n"
    "  P('find', 'a  b  c', '  ', 1, true), P('find', 'a  b  c', '  ', 3, true), P('find', 'a  b  c', '  ', 5, true),\n"
    "  P('find', 'aab', 'ab', 1, true), P('find', 'ab', 'b', 2, true), P('find', 'ab', 'ab', 2, true), P('find', 'a', 'ab', 1, true),\n"
    "  P('find', 'a\\0b', '\\0b', 1, true), P('find', 'abc', 'bc', -2, true), P('find', 'abc', 'c', '2', true), P('find', 'aaa', 'aa', 2, 1),\n"
    "  P('match', 'key = value', '(%w+)%s*=%s*(%w+)'), P('match', 'hello', '()ll()'), P('match', 'hello', 'x'),\n"
    "  P('match', 'hello', '.-', 3), P('match', 'hello', '(', 1), P('match', 'hello', 'l', -2),\n"
    "  P('match', 'hello', '%'), P('match', 'hello', '[a'), P('match', 'hello', '%b'), P('match', 'hello', '%fx'),\n"
    "  P('match', 'hello', '(h)%2'), P('match', 'hello', 'h)'), P('match', 'hello', '(h'),\n"
    "  P('match', 'THE (quick) fox', '%f[%a]%a+%f[%A]'), P('match', 'f(a(b)c)d', '%b()'),\n"
    "  P('match', string.rep('a', 300), string.rep('a?', 300)), P('match', string.rep('a', 300), string.rep('a?', 199)),\n"
    "  P('match', string.rep('a', 300), string.rep('a?', 200)), P('find', 'a', string.rep('()', 33)),\n"
    "  P('match', string.rep('a', 40), string.rep('(a)', 32)), P('match', string.rep('a', 40), string.rep('(a)', 33)),\n"
    "  P('gmatch', 'one two  three', '%a+'), P('gmatch', 'baaac', 'a*'), P('gmatch', 'ab cd', '%a*'),\n"
    "  P('gmatch', '^a^a', '^a'), P('gmatch', 'abcdef', '(%w)(%w)', 2), P('gmatch', 'abcdef', '()', -2),\n"
    "  P('gmatch', 'abc', '.', 10), P('gmatch', 'abc', '', 0), P('gmatch', 'k=v, a=b', '(%w+)=(%w+)'),\n"
    "  P('gmatch', 'abc', 'b%'), P('gmatch', 'abc', 'c('),\n"
    "  P('gsub', 'hello world', '(%w+)', '%1 %1'), P('gsub', 'hello world', '%w+', '%0 %0', 1),\n"
    "  P('gsub', 'abc', '%w', '[%0%%]'), P('gsub', 'abc', 'a', '%x'), P('gsub', 'abc', 'a', 'x%'),\n"
    "  P('gsub', 'abcb', '()b', '%1'), P('gsub', 'abc', '', '-'), P('gsub', 'aaa', '^a', 'b'),\n"
    "  P('gsub', 'aaa', '^', 'b'), P('gsub', 'abc', 'a', '%2'), P('gsub', 'abc', '(a)', '%2'),\n"
    "  P('gsub', 'aaaa', 'a', 'b', 0), P('gsub', 'aaaa', 'a', 'b', -1), P('gsub', 'aaaa', 'a', 'b', 2.0),\n"
    "  P('gsub', 'aaaa', 'a', 'b', 2.5), P('gsub', 'aaaa', 'a', 'b', nil), P('gsub', 'aaaa', 'a', 'b', '3'),\n"
    "  P('gsub', 'banana', 'a', 42), P('gsub', 'banana', 'a', 1.5), P('gsub', 'abcd', '%w', T),\n"
    "  P('gsub', 'xdx', 'd', T), P('gsub', 'x1x', '%d', T), P('gsub', 'abc', '()', T),\n"
    "  P('gsub', 'abcd', '(%w)(%w)', F), P('gsub', 'abcd', '()(%w)', F), P('gsub', 'abc', 'b', function() end),\n"
    "  P('gsub', 'abc', 'b', function() return {} end), P('gsub', 'abc', 'b', function() return false end),\n"
    "  P('gsub', 'abc', 'b', function() error('boom', 0) end), P('gsub', 'abc', '(b', F),\n"
    "  P('gsub', 'abc', 'b', true), P('gsub', 'abc', 'b'), P('gsub', 'abc', 'x', 'y'),\n"
    "  P('gsub', 12345, 3, 9), P('gsub', 'a b c', '%s', '%%'), P('gsub', 'abc', '.', { a = 1, b = true }),\n"
    "  P('gsub', 'hello', '', 'x', 3), P('gsub', 'ab', '.-', '<%0>'), P('gsub', 'ab', 'x*', '-'),\n"
    "}\n"
    "local bad = {}\n"
    "for i, c in ipairs(cases) do\n"
    "  local a, b = run(orig, c), run(mine, c)\n"
    "  if a ~= b then bad[#bad + 1] = ('case %d (%s): original %s, ours %s'):format(i, c[1], a, b) end\n"
    "end\n"
    "return table.concat(bad, '\\n')\n";

static volatile sig_atomic_t stop_flag;

/* A state with the standard libraries and `mine`, a table holding our four functions. */
static lua_State *state_new(unsigned long max_steps, size_t max_out)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    lua_newtable(L);
    lua_pushinteger(L, 7);  /* the stack must come back as it was */
    policy_pattern_open(L, -2, &stop_flag, max_steps, max_out);
    assert_int_equal(lua_gettop(L), 2);
    assert_int_equal(lua_tointeger(L, -1), 7);
    lua_pop(L, 1);
    lua_setglobal(L, "mine");
    return L;
}

/* Runs chunk; returns its first result or error as a string (static copy). */
static const char *run(lua_State *L, const char *chunk)
{
    static char out[512];
    int rc = luaL_loadstring(L, chunk);
    if (rc == LUA_OK) rc = lua_pcall(L, 0, 1, 0);
    const char *s = lua_tostring(L, -1);
    snprintf(out, sizeof out, "%s%s", rc == LUA_OK ? "" : "error: ", s ? s : "(nil)");
    lua_pop(L, 1);
    return out;
}

static void test_same_as_lua(void **state)
{
    (void)state;
    lua_State *L = state_new(POLICY_PATTERN_MAX_STEPS, POLICY_PATTERN_MAX_OUT);
    assert_int_equal(luaL_loadstring(L, compare_lua), LUA_OK);
    lua_getglobal(L, "mine");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
    const char *bad = lua_tostring(L, -1);
    if (bad[0]) fail_msg("%s", bad);
    /* and it does notice a difference */
    assert_int_equal(luaL_loadstring(L, compare_lua), LUA_OK);
    assert_int_equal(luaL_dostring(L, "return { find = string.find, match = string.match, gmatch = string.gmatch,"
                                      " gsub = function(s, p, r, n) return string.gsub(s, p, r, n or 1) end }"), LUA_OK);
    assert_int_equal(lua_pcall(L, 1, 1, 0), LUA_OK);
    assert_non_null(strstr(lua_tostring(L, -1), "(gsub): original"));
    lua_close(L);
}

static void test_step_limit(void **state)
{
    (void)state;
    lua_State *L = state_new(1000, POLICY_PATTERN_MAX_OUT);
    assert_string_equal(run(L, "return select(2, pcall(mine.find, ('a'):rep(300), '(.-)(.-)(.-)x'))"),
                        "string.find: pattern too complex (over 1000 steps)");
    assert_string_equal(run(L, "return select(2, pcall(mine.match, ('a'):rep(300), '(.-)(.-)(.-)x'))"),
                        "string.match: pattern too complex (over 1000 steps)");
    assert_string_equal(run(L, "return select(2, pcall(mine.gsub, ('a'):rep(300), '(.-)(.-)(.-)x', ''))"),
                        "string.gsub: pattern too complex (over 1000 steps)");
    assert_string_equal(run(L, "return select(2, pcall(mine.gmatch(('a'):rep(300), '(.-)(.-)(.-)x')))"),
                        "string.gmatch: pattern too complex (over 1000 steps)");
    /* gmatch's budget is per iteration: many cheap ones are fine */
    assert_string_equal(run(L, "local n = 0 for _ in mine.gmatch(('ab '):rep(2000), '%a+') do n = n + 1 end return n"),
                        "2000");
    /* plain find costs no steps */
    assert_string_equal(run(L, "return mine.find(('a'):rep(100000) .. 'b', 'ab')"), "100000");
    /* a Lua chunk's call gets its position, as Lua's own errors do */
    const char *r = run(L, "string.find = mine.find return select(2, pcall(function() return ('a'):rep(300):find('(.-)(.-)x') end))");
    assert_non_null(strstr(r, "\"]:1: string.find: pattern too complex (over 1000 steps)"));
    lua_close(L);
}

static void test_open_on_string_table(void **state)
{
    (void)state;
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "string");
    policy_pattern_open(L, -1, NULL, 500, POLICY_PATTERN_MAX_OUT);
    lua_pop(L, 1);
    /* methods on strings go through the string table: they get ours */
    const char *r = run(L, "return select(2, pcall(function() return ('a'):rep(200):match('(.-)(.-)x') end))");
    assert_non_null(strstr(r, "string.match: pattern too complex (over 500 steps)"));
    assert_string_equal(run(L, "return ('k=v'):gsub('(%w)=(%w)', '%2=%1')"), "v=k");
    lua_close(L);
}

static void test_stop_flag(void **state)
{
    (void)state;
    lua_State *L = state_new(0, POLICY_PATTERN_MAX_OUT);
    stop_flag = 1;
    assert_string_equal(run(L, "return select(2, pcall(mine.find, ('a'):rep(300), '(.-)(.-)(.-)x'))"),
                        "string.find: interrupted");
    assert_string_equal(run(L, "return select(2, pcall(mine.gsub, ('a'):rep(3000), 'a', 'b'))"),
                        "string.gsub: interrupted");
    assert_string_equal(run(L, "local it = mine.gmatch(('a'):rep(3000), 'b') return select(2, pcall(it))"),
                        "string.gmatch: interrupted");
    /* short calls finish before the flag is read */
    assert_string_equal(run(L, "return mine.gsub('abc', 'b', 'x')"), "axc");
    stop_flag = 0;
    assert_string_equal(run(L, "return mine.find(('a'):rep(30), '(.-)(.-)(.-)x')"), "(nil)");
    lua_close(L);
}

static void test_gsub_cap(void **state)
{
    (void)state;
    lua_State *L = state_new(POLICY_PATTERN_MAX_STEPS, 100);
    assert_string_equal(run(L, "return select(2, pcall(mine.gsub, ('x'):rep(10), 'x', ('y'):rep(20)))"),
                        "string.gsub: resulting string too large (over 100 bytes)");
    assert_string_equal(run(L, "return select(2, pcall(mine.gsub, ('x'):rep(10), 'x', function() return ('y'):rep(20) end))"),
                        "string.gsub: resulting string too large (over 100 bytes)");
    assert_string_equal(run(L, "return #mine.gsub(('x'):rep(10), 'x', ('y'):rep(10))"), "100");
    /* a longer subject may keep its length, not grow */
    assert_string_equal(run(L, "return #mine.gsub(('a'):rep(200), 'a', 'b')"), "200");
    assert_string_equal(run(L, "return #mine.gsub(('a'):rep(200), 'x', 'b')"), "200");
    assert_string_equal(run(L, "return select(2, pcall(mine.gsub, ('a'):rep(200), 'a', 'bb', 150))"),
                        "string.gsub: resulting string too large (over 200 bytes)");
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_as_lua),
        cmocka_unit_test(test_step_limit),
        cmocka_unit_test(test_open_on_string_table),
        cmocka_unit_test(test_stop_flag),
        cmocka_unit_test(test_gsub_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
