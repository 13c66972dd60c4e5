/* libFuzzer target for policy_match.c and policy_pattern.c: a differential test against Lua
 * 5.4.4's own string.find/match/gmatch/gsub in the same lua_State. The input is
 *   byte 0: bits 0-1 the function (find, match, gmatch, gsub); bits 2-4 the init argument
 *           (gsub: max n) among absent, nil, 0, small, negative, past the end, below -len, a
 *           string or a float; bits 5-7 find's plain argument or gsub's replacement kind
 *           (string, number, table, five functions)
 *   byte 1: small numbers for those arguments; bit 3 a tiny step budget, bit 4 a tiny gsub
 *           output cap (tests the limits at arbitrary points)
 *   byte 2: pattern length (at most 24), byte 3: replacement string length (at most 8)
 *   then the pattern, the replacement string and the subject (at most 64 bytes).
 * Ours runs first; when it stops on its step budget the original is not run at all (it would
 * take as long, or exponentially long: that is the point of ours), except gmatch's iterations
 * before the one that stopped. Otherwise both must return the same values (types included),
 * or both raise the same message (a "bad argument" message without the function's name, which
 * Lua finds only for its own functions); ours may also refuse a gsub result over the cap that
 * the original builds. Any other difference aborts with both transcripts (FUZZ_VERBOSE=1 prints
 * every case). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "policy/policy_pattern.h"

#define FUZZ_MAX_PAT 24
#define FUZZ_MAX_REPL 8
#define FUZZ_MAX_SUBJECT 64
#define FUZZ_STEPS 20000UL
#define FUZZ_OUT (1u << 20)

static const char *const fuzz_ops[] = { "find", "match", "gmatch", "gsub" };

/* Replacements shared by both libraries: each answers from its arguments alone. */
static const char fuzz_setup[] =
    "fuzz_repl = {\n"
    "  { a = '<A>', b = 7, ab = '%1', [1] = 'one', [2] = false, [3] = 2.5, x = {}, [''] = 'E' },\n"
    "  function(...) return (...) end,\n"
    "  function() end,\n"
    "  function(...) local t = table.pack(...) local o = {}\n"
    "    for i = 1, t.n do o[i] = math.type(t[i]) or tostring(t[i]) end\n"
    "    return table.concat(o, '|') .. '#' .. t.n end,\n"
    "  function() return {} end,\n"
    "  function(a) if type(a) == 'string' and #a > 1 then return false end return 1 end,\n"
    "}\n";

static lua_State *fuzz_L;
static int fuzz_verbose;               /* FUZZ_VERBOSE=1: print every case */

typedef struct {
    char *data;
    size_t len, cap;
    size_t first_len;                  /* the length of the last first value that was a string */
} fuzz_out_t;

static void fuzz_put(fuzz_out_t *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->data = realloc(o->data, o->cap);
        if (!o->data) abort();
    }
    memcpy(o->data + o->len, s, n);
    o->len += n;
    o->data[o->len] = '\0';
}

static void fuzz_puts(fuzz_out_t *o, const char *s) { fuzz_put(o, s, strlen(s)); }

/* Appends a readable, unambiguous form of s. */
static void fuzz_put_escaped(fuzz_out_t *o, const char *s, size_t n)
{
    char tmp[8];
    fuzz_puts(o, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 32 && c < 127 && c != '"' && c != '\\') {
            fuzz_put(o, (const char *)&c, 1);
        } else {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
            fuzz_puts(o, tmp);
        }
    }
    fuzz_puts(o, "\"");
}

/* Appends the values from index base to the top. */
static void fuzz_put_values(lua_State *L, int base, fuzz_out_t *o)
{
    char tmp[64];
    int top = lua_gettop(L);
    snprintf(tmp, sizeof tmp, "%d:", top - base + 1);
    fuzz_puts(o, tmp);
    for (int i = base; i <= top; i++) {
        size_t n;
        const char *s;
        switch (lua_type(L, i)) {
        case LUA_TNIL: fuzz_puts(o, " nil"); break;
        case LUA_TBOOLEAN: fuzz_puts(o, lua_toboolean(L, i) ? " true" : " false"); break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, i))
                snprintf(tmp, sizeof tmp, " i%lld", (long long)lua_tointeger(L, i));
            else
                snprintf(tmp, sizeof tmp, " f%.17g", (double)lua_tonumber(L, i));
            fuzz_puts(o, tmp);
            break;
        case LUA_TSTRING:
            s = lua_tolstring(L, i, &n);
            if (i == base) o->first_len = n;
            fuzz_puts(o, " ");
            fuzz_put_escaped(o, s, n);
            break;
        default:
            snprintf(tmp, sizeof tmp, " <%s>", luaL_typename(L, i));
            fuzz_puts(o, tmp);
        }
    }
    fuzz_puts(o, "\n");
}

/* Appends an error: "bad argument #k to 'name' (...)" loses its name. */
static void fuzz_put_error(lua_State *L, fuzz_out_t *o)
{
    size_t n;
    const char *msg = lua_tolstring(L, -1, &n);
    if (!msg) {
        fuzz_puts(o, "error: (not a string)\n");
        return;
    }
    fuzz_puts(o, "error: ");
    const char *to = strstr(msg, " to '");
    const char *close = to ? strstr(to + 5, "' (") : NULL;
    if (!strncmp(msg, "bad argument #", 14) && to && close) {
        fuzz_put(o, msg, (size_t)(to - msg));
        fuzz_puts(o, " to ? ");
        fuzz_puts(o, close + 2);
    } else {
        fuzz_put(o, msg, n);
    }
    fuzz_puts(o, "\n");
}

typedef struct {
    int op, init_kind, extra, small, tiny_steps, tiny_out;
    const char *pat, *repl, *subject;
    size_t plen, rlen, slen;
} fuzz_case_t;

/* Pushes the optional third (init / repl's max n goes fourth for gsub) argument; returns how
 * many values it pushed. */
static int fuzz_push_number_arg(lua_State *L, const fuzz_case_t *c)
{
    switch (c->init_kind) {
    case 0: return 0;
    case 1: lua_pushnil(L); return 1;
    case 2: lua_pushinteger(L, 0); return 1;
    case 3: lua_pushinteger(L, 1 + c->small); return 1;
    case 4: lua_pushinteger(L, -1 - c->small); return 1;
    case 5: lua_pushinteger(L, (lua_Integer)c->slen + 1 + (c->small & 1)); return 1;
    case 6: lua_pushinteger(L, -1000); return 1;
    default:
        if (c->small & 1)
            lua_pushnumber(L, 2.5);
        else
            lua_pushliteral(L, "2");
        return 1;
    }
}

/* Pushes gsub's replacement. */
static void fuzz_push_repl(lua_State *L, const fuzz_case_t *c)
{
    if (c->extra == 0) {
        lua_pushlstring(L, c->repl, c->rlen);
    } else if (c->extra == 1) {
        if (c->small & 1)
            lua_pushnumber(L, 1.5);
        else
            lua_pushinteger(L, 42);
    } else {
        lua_getglobal(L, "fuzz_repl");
        lua_rawgeti(L, -1, c->extra - 1);
        lua_remove(L, -2);
    }
}

/* Runs the case on lib (the table at index lib); gmatch runs at most max_iter iterations.
 * Appends the transcript to o; returns the number of gmatch iterations that returned. */
static int fuzz_run(lua_State *L, int lib, const fuzz_case_t *c, fuzz_out_t *o, int max_iter)
{
    int base = lua_gettop(L) + 1;
    lua_getfield(L, lib, fuzz_ops[c->op]);
    lua_pushlstring(L, c->subject, c->slen);
    lua_pushlstring(L, c->pat, c->plen);
    int nargs = 2;
    if (c->op == 3) {
        fuzz_push_repl(L, c);
        nargs += 1 + fuzz_push_number_arg(L, c);
    } else {
        nargs += fuzz_push_number_arg(L, c);
        if (c->op == 0 && c->extra) {
            if (c->init_kind == 0) {
                lua_pushnil(L);
                nargs++;
            }
            switch (c->extra) {
            case 1: lua_pushboolean(L, 1); break;
            case 2: lua_pushboolean(L, 0); break;
            case 3: lua_pushnil(L); break;
            default: lua_pushinteger(L, 0); break;
            }
            nargs++;
        }
    }
    if (lua_pcall(L, nargs, LUA_MULTRET, 0) != LUA_OK) {
        fuzz_put_error(L, o);
        lua_settop(L, base - 1);
        return 0;
    }
    if (c->op != 2) {
        fuzz_put_values(L, base, o);
        lua_settop(L, base - 1);
        return 0;
    }
    int iter = 0;
    for (; iter < max_iter; iter++) {
        lua_settop(L, base);                               /* [it] */
        lua_pushvalue(L, base);
        if (lua_pcall(L, 0, LUA_MULTRET, 0) != LUA_OK) {
            fuzz_put_error(L, o);
            break;
        }
        fuzz_put_values(L, base + 1, o);
        if (lua_gettop(L) == base || lua_isnil(L, base + 1)) break;
    }
    lua_settop(L, base - 1);
    return iter;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_verbose = getenv("FUZZ_VERBOSE") != NULL;
    fuzz_L = luaL_newstate();
    if (!fuzz_L) abort();
    luaL_openlibs(fuzz_L);
    if (luaL_dostring(fuzz_L, fuzz_setup) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(fuzz_L, -1));
        abort();
    }
    return 0;
}

/* Prints the case and both transcripts; aborts when they differ. */
static void fuzz_report(const fuzz_case_t *c, const fuzz_out_t *mine, const fuzz_out_t *orig, int mismatch)
{
    fuzz_out_t d = { 0 };
    fuzz_puts(&d, mismatch ? "pattern mismatch: " : "pattern: ");
    fuzz_puts(&d, fuzz_ops[c->op]);
    fuzz_puts(&d, " pattern ");
    fuzz_put_escaped(&d, c->pat, c->plen);
    fuzz_puts(&d, " subject ");
    fuzz_put_escaped(&d, c->subject, c->slen);
    fuzz_puts(&d, " repl ");
    fuzz_put_escaped(&d, c->repl, c->rlen);
    fprintf(stderr, "%s init_kind %d extra %d small %d tiny_steps %d tiny_out %d\nours:\n%soriginal:\n%s",
            d.data, c->init_kind, c->extra, c->small, c->tiny_steps, c->tiny_out, mine->data ? mine->data : "",
            orig->data ? orig->data : "");
    free(d.data);
    if (mismatch) abort();
}

/* Whether ours stopped on its own limits (the step budget, the output cap). */
static int fuzz_limited(const fuzz_out_t *o, const char *what)
{
    return o->data && strstr(o->data, what) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fuzz_L) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 4) return 0;
    lua_State *L = fuzz_L;
    fuzz_case_t c = {
        .op = data[0] & 3,
        .init_kind = (data[0] >> 2) & 7,
        .extra = (data[0] >> 5) & 7,
        .small = data[1] & 7,
        .tiny_steps = (data[1] >> 3) & 1,
        .tiny_out = (data[1] >> 4) & 1,
    };
    const char *rest = (const char *)data + 4;
    size_t left = size - 4;
    c.plen = data[2] % (FUZZ_MAX_PAT + 1);
    if (c.plen > left) c.plen = left;
    c.pat = rest;
    rest += c.plen;
    left -= c.plen;
    c.rlen = data[3] % (FUZZ_MAX_REPL + 1);
    if (c.rlen > left) c.rlen = left;
    c.repl = rest;
    rest += c.rlen;
    left -= c.rlen;
    c.slen = left > FUZZ_MAX_SUBJECT ? FUZZ_MAX_SUBJECT : left;
    c.subject = rest;

    /* ours: a fresh table each time, with this input's limits */
    lua_settop(L, 0);
    lua_getglobal(L, "string");                            /* [string] */
    lua_newtable(L);                                       /* [string mine] */
    unsigned long steps = c.tiny_steps ? 1 + (unsigned long)data[1] * 3 : FUZZ_STEPS;
    policy_pattern_open(L, 2, NULL, steps, c.tiny_out ? 8 : FUZZ_OUT);

    fuzz_out_t mine = { 0 }, orig = { 0 };
    int iters = fuzz_run(L, 2, &c, &mine, FUZZ_MAX_SUBJECT + 2);
    int over_steps = fuzz_limited(&mine, "pattern too complex (over ");
    if (!over_steps || c.op == 2) fuzz_run(L, 1, &c, &orig, over_steps ? iters : FUZZ_MAX_SUBJECT + 2);

    int same = mine.len == orig.len && (!mine.len || !memcmp(mine.data, orig.data, mine.len));
    if (!same && over_steps && c.op == 2) {
        /* ours stopped at iteration iters + 1: the ones before must agree */
        size_t n = orig.len;
        same = mine.len > n && (!n || !memcmp(mine.data, orig.data, n));
    } else if (!same && over_steps) {
        same = 1;
    } else if (!same && c.op == 3 && fuzz_limited(&mine, "resulting string too large")) {
        /* the original built it: longer than the cap and the subject, or it failed later */
        same = !strncmp(orig.data, "error: ", 7) || (orig.first_len > 8 && orig.first_len > c.slen);
    }
    if (!same || fuzz_verbose) fuzz_report(&c, &mine, &orig, !same);
    free(mine.data);
    free(orig.data);
    lua_settop(L, 0);
    return 0;
}
