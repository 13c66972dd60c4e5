/* policy_lib: the bounded standard library of the policy sandbox (see policy_lib.h). A checked
 * function is a C closure over Lua's own: it checks its arguments, pins down every length it
 * needs (so a __len metamethod answers once), then calls Lua's function directly on the same
 * stack. string.rep is our own: Lua's copies one repetition at a time and loops even when
 * every repetition is empty. */
#include "policy/policy_lib.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>

/* The original C function of a checked closure. */
static lua_CFunction policy_lib_orig(lua_State *L) { return lua_tocfunction(L, lua_upvalueindex(1)); }

static int policy_lib_too_long(lua_State *L, int arg)
{
    return luaL_error(L, "bad argument #%d: a string longer than %d MiB (the policy sandbox's limit)", arg,
                      (int)(POLICY_LIB_BYTES_MAX >> 20));
}

/* Raises unless every string argument is at most POLICY_LIB_BYTES_MAX. */
static void policy_lib_strings_check(lua_State *L)
{
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++)
        if (lua_type(L, i) == LUA_TSTRING && lua_rawlen(L, i) > POLICY_LIB_BYTES_MAX) policy_lib_too_long(L, i);
}

/* Every string argument at most POLICY_LIB_BYTES_MAX, then Lua's function. */
static int policy_lib_strings_checked(lua_State *L)
{
    policy_lib_strings_check(L);
    return policy_lib_orig(L)(L);
}

int policy_lib_ascii(const char *s, size_t n)
{
    uint64_t any = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        any |= w;
    }
    for (; i < n; i++) any |= (unsigned char)s[i];
    return (any & 0x8080808080808080ull) == 0;
}

/* utf8.len: a lone ASCII string argument has as many characters as bytes (what Lua's utf8.len
 * answers after decoding each one); anything else goes to Lua's function, checked. */
static int policy_lib_utf8_len(lua_State *L)
{
    size_t n;
    if (lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, 1, &n);
        if (n <= POLICY_LIB_BYTES_MAX && policy_lib_ascii(s, n)) {
            lua_pushinteger(L, (lua_Integer)n);
            return 1;
        }
    }
    return policy_lib_strings_checked(L);
}

#define POLICY_LIB_LOWER_STACK 512         /* lower builds a result this long on the C stack */

/* string.lower: Lua's result (tolower on each byte), without a luaL_Buffer for short strings,
 * and the argument itself when no byte changes (strings are values: an equal string is the
 * same to a script). Long strings go to Lua's function. */
static int policy_lib_lower(lua_State *L)
{
    policy_lib_strings_check(L);
    size_t l, i = 0;
    const char *s = luaL_checklstring(L, 1, &l);
    if (l > POLICY_LIB_LOWER_STACK) return policy_lib_orig(L)(L);
    while (i < l && tolower((unsigned char)s[i]) == (unsigned char)s[i]) i++;
    if (i == l) {
        lua_pushvalue(L, 1);                              /* [.. s]: a number became this string */
        return 1;
    }
    char out[POLICY_LIB_LOWER_STACK];
    memcpy(out, s, i);
    for (; i < l; i++) out[i] = (char)tolower((unsigned char)s[i]);
    lua_pushlstring(L, out, l);
    return 1;
}

/* Lua's %s class in the C locale: space, \t, \n, \v, \f, \r. */
static int policy_lib_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

#define POLICY_LIB_ONES 0x0101010101010101ull
/* Whether any of the eight bytes of x is below n (n <= 128). */
static int policy_lib_has_below(uint64_t x, unsigned n)
{
    return ((x - POLICY_LIB_ONES * n) & ~x & POLICY_LIB_ONES * 0x80) != 0;
}

/* The eight bytes of x with 'A'..'Z' lowered, others unchanged (bytes >= 0x80 included). */
static uint64_t policy_lib_lower8(uint64_t x)
{
    uint64_t low7 = x & POLICY_LIB_ONES * 0x7f;
    uint64_t ge_a = low7 + POLICY_LIB_ONES * (0x80 - 'A');   /* bit 7 set where low7 >= 'A' */
    uint64_t gt_z = low7 + POLICY_LIB_ONES * (0x7f - 'Z');   /* bit 7 set where low7 > 'Z' */
    uint64_t upper = (ge_a ^ gt_z) & ~x & POLICY_LIB_ONES * 0x80;
    return x | upper >> 2;
}

int policy_lib_fold(lua_State *L)
{
    size_t l, o = 0;
    const char *s = luaL_checklstring(L, 1, &l);
    if (l > POLICY_LIB_BYTES_MAX) return policy_lib_too_long(L, 1);
    char stack[POLICY_LIB_LOWER_STACK];
    luaL_Buffer b;
    char *out = l <= sizeof stack ? stack : luaL_buffinitsize(L, &b, l);
    int gap = 0;                                          /* whitespace seen since the last byte out */
    for (size_t i = 0; i < l; i++) {
        if (l - i >= 8) {                                 /* eight bytes at a time while none is <= ' ' */
            uint64_t x;
            memcpy(&x, s + i, 8);
            if (!policy_lib_has_below(x, 0x21)) {
                if (gap && o > 0) out[o++] = ' ';
                gap = 0;
                x = policy_lib_lower8(x);
                memcpy(out + o, &x, 8);
                o += 8;
                i += 7;
                continue;
            }
        }
        unsigned char c = (unsigned char)s[i];
        if (policy_lib_space(c)) {
            gap = 1;
            continue;
        }
        if (gap && o > 0) out[o++] = ' ';
        gap = 0;
        out[o++] = (char)((unsigned)(c - 'A') < 26u ? c + 32 : c);   /* tolower in the C locale chatgw runs in */
    }
    if (out == stack) {
        lua_pushlstring(L, out, o);
    } else {
        luaL_pushresultsize(&b, o);
    }
    return 1;
}

int policy_lib_byte_runs(lua_State *L)
{
    size_t l;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer max = luaL_checkinteger(L, 2);
    luaL_argcheck(L, max >= 1, 2, "must be at least 1");
    if (l > POLICY_LIB_BYTES_MAX) return policy_lib_too_long(L, 1);
    size_t i = 1, run = 1;                                /* run: equal bytes ending at s[i - 1] */
    while (i + 8 <= l) {          /* eight neighbour pairs at a time while none is equal: no run */
        uint64_t x, y;
        memcpy(&x, s + i - 1, 8);
        memcpy(&y, s + i, 8);
        if (policy_lib_has_below(x ^ y, 1)) break;        /* some s[k] == s[k - 1]: byte by byte */
        i += 8;                   /* s[i - 2] != s[i - 1], so run = 1 holds at i */
    }
    for (; i < l; i++) {                                  /* to the first byte past max in a run */
        run = s[i] == s[i - 1] ? run + 1 : 1;
        if (run > (lua_Unsigned)max) break;
    }
    if (i >= l) {
        lua_pushvalue(L, 1);                              /* nothing to cut: the argument itself */
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, s, i);                            /* s[i] is cut: the loop goes on past it */
    for (i++; i < l; i++) {
        run = s[i] == s[i - 1] ? run + 1 : 1;
        if (run <= (lua_Unsigned)max) luaL_addchar(&b, s[i]);
    }
    luaL_pushresult(&b);
    return 1;
}

static int policy_lib_too_many(lua_State *L, const char *fn, lua_Unsigned n)
{
    return luaL_error(L, "%s: %I elements is over the policy sandbox's limit of %d", fn, (lua_Integer)n,
                      (int)POLICY_LIB_ITEMS_MAX);
}

/* Elements i..j (none when j < i), without overflow. */
static lua_Unsigned policy_lib_span(lua_Integer i, lua_Integer j)
{
    return j < i ? 0 : (lua_Unsigned)j - (lua_Unsigned)i + 1;
}

/* list, [..], i at iarg (default 1), j at iarg + 1 (default #list, read once): both made explicit
 * for Lua's function, which then never reads the length itself. */
static int policy_lib_range_checked(lua_State *L, int iarg, const char *fn)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer i = luaL_optinteger(L, iarg, 1);
    lua_Integer j = lua_isnoneornil(L, iarg + 1) ? luaL_len(L, 1) : luaL_checkinteger(L, iarg + 1);
    lua_Unsigned n = policy_lib_span(i, j);
    if (n > POLICY_LIB_ITEMS_MAX) return policy_lib_too_many(L, fn, n);
    lua_settop(L, iarg + 1);
    lua_pushinteger(L, i);
    lua_replace(L, iarg);
    lua_pushinteger(L, j);
    lua_replace(L, iarg + 1);
    return policy_lib_orig(L)(L);
}

static int policy_lib_concat(lua_State *L) { return policy_lib_range_checked(L, 3, "table.concat"); }
static int policy_lib_unpack(lua_State *L) { return policy_lib_range_checked(L, 2, "table.unpack"); }

/* table.move(a1, f, e, t [, a2]) */
static int policy_lib_move(lua_State *L)
{
    lua_Unsigned n = policy_lib_span(luaL_checkinteger(L, 2), luaL_checkinteger(L, 3));
    if (n > POLICY_LIB_ITEMS_MAX) return policy_lib_too_many(L, "table.move", n);
    return policy_lib_orig(L)(L);
}

/* insert, remove, sort: a plain-length table of bounded size. */
static int policy_lib_length_checked(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (luaL_getmetafield(L, 1, "__len") != LUA_TNIL)
        return luaL_error(L, "table functions that read the length take no table with __len in the policy sandbox");
    lua_Unsigned n = lua_rawlen(L, 1);
    if (n > POLICY_LIB_ITEMS_MAX) return policy_lib_too_many(L, "table function", n);
    return policy_lib_orig(L)(L);
}

/* os.date(format, time): each conversion of the format is a strftime call. */
static int policy_lib_date(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING && lua_rawlen(L, 1) > POLICY_LIB_DATE_FORMAT_MAX)
        return luaL_error(L, "os.date: a format longer than %d bytes", POLICY_LIB_DATE_FORMAT_MAX);
    return policy_lib_orig(L)(L);
}

/* string.rep(s, n [, sep]): n copies of s separated by sep, built by doubling. */
static int policy_lib_rep(lua_State *L)
{
    size_t l, lsep;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    size_t unit = l + lsep;        /* both are lengths of live strings: no overflow */
    if (n <= 0 || unit == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    if ((lua_Unsigned)n > (POLICY_LIB_BYTES_MAX + lsep) / unit)
        return luaL_error(L, "string.rep: the result would be longer than %d MiB (the policy sandbox's limit)",
                          (int)(POLICY_LIB_BYTES_MAX >> 20));
    size_t total = (size_t)n * unit - lsep;   /* no separator after the last copy */
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, total);
    memcpy(out, s, l);
    size_t done = l;
    if (done < total) {
        memcpy(out + l, sep, lsep);
        done = unit;
    }
    while (done < total) {         /* the text repeats every unit bytes: copy what is done */
        size_t step = done < total - done ? done : total - done;
        memcpy(out + done, out, step);
        done += step;
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

/* Replaces t[name] (t at the top of the stack) by a closure of fn over the original. */
static void policy_lib_wrap(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getfield(L, -1, name);                            /* [t orig] */
    lua_pushcclosure(L, fn, 1);                           /* [t checked] */
    lua_setfield(L, -2, name);                            /* [t] */
}

static void policy_lib_string(lua_State *L)
{
    static const char *const scanned[] = { "format", "upper", "reverse" };
    lua_getglobal(L, "string");                           /* [string] */
    for (size_t i = 0; i < sizeof scanned / sizeof scanned[0]; i++)
        policy_lib_wrap(L, scanned[i], policy_lib_strings_checked);
    policy_lib_wrap(L, "lower", policy_lib_lower);
    lua_pushcfunction(L, policy_lib_rep);
    lua_setfield(L, -2, "rep");
    static const char *const removed[] = { "pack", "unpack", "packsize" };
    for (size_t i = 0; i < sizeof removed / sizeof removed[0]; i++) {
        lua_pushnil(L);
        lua_setfield(L, -2, removed[i]);
    }
    lua_pop(L, 1);                                        /* [] */
}

static void policy_lib_table(lua_State *L)
{
    lua_getglobal(L, "table");                            /* [table] */
    policy_lib_wrap(L, "concat", policy_lib_concat);
    policy_lib_wrap(L, "unpack", policy_lib_unpack);
    policy_lib_wrap(L, "move", policy_lib_move);
    policy_lib_wrap(L, "insert", policy_lib_length_checked);
    policy_lib_wrap(L, "remove", policy_lib_length_checked);
    policy_lib_wrap(L, "sort", policy_lib_length_checked);
    lua_pop(L, 1);                                        /* [] */
}

void policy_lib_bound(lua_State *L)
{
    policy_lib_string(L);
    policy_lib_table(L);
    lua_getglobal(L, "utf8");                             /* [utf8] */
    policy_lib_wrap(L, "len", policy_lib_utf8_len);
    policy_lib_wrap(L, "codepoint", policy_lib_strings_checked);
    policy_lib_wrap(L, "offset", policy_lib_strings_checked);
    lua_pop(L, 1);                                        /* [] */
    lua_getglobal(L, "os");                               /* [os] */
    policy_lib_wrap(L, "date", policy_lib_date);
    lua_pop(L, 1);                                        /* [] */
}
