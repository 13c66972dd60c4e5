/* policy_pattern: Lua 5.4.4's find/match/gmatch/gsub on policy_match; see policy_pattern.h.
 * Argument handling, the order of checks, returns and the gsub loop follow lstrlib.c's
 * behaviour step by step, so scripts cannot tell the difference until a budget runs out. The
 * subject and pattern stay on the Lua stack (or in the gmatch closure) while the matcher,
 * which borrows them, is in use. */
#define _GNU_SOURCE  /* memmem */
#include "policy/policy_pattern.h"

#include <stdint.h>
#include <string.h>

#include <lauxlib.h>

#include "policy/policy_match.h"

/* Upvalue 1 of every function here. */
typedef struct {
    const volatile sig_atomic_t *stop;
    unsigned long max_steps;
    size_t max_out;
} pattern_conf_t;

/* gmatch's iterator state (its upvalue 4). */
typedef struct {
    size_t next;                       /* where the next search starts */
    size_t last;                       /* end of the last match; SIZE_MAX before the first */
} pattern_gmatch_t;

static const pattern_conf_t *pattern_conf(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* Raises m's error: Lua's message as is, ours after the function's name. */
static int pattern_raise(lua_State *L, const policy_match_t *m, const char *name)
{
    if (m->code == POLICY_MATCH_EPATTERN) return luaL_error(L, "%s", m->err);
    return luaL_error(L, "string.%s: %s", name, m->err);
}

/* lstrlib's posrelatI: a 1-based start from a relative one, clipped at 1. */
static size_t pattern_start(lua_Integer pos, size_t len)
{
    if (pos > 0) return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len) return 1;
    return len + (size_t)pos + 1;
}

/* Pushes capture i of the match [start, end). */
static void pattern_push_capture(lua_State *L, policy_match_t *m, int i, size_t start, size_t end)
{
    size_t off, len;
    int rc = policy_match_capture(m, i, start, end, &off, &len);
    if (rc < 0) pattern_raise(L, m, "");
    if (rc == 1)
        lua_pushinteger(L, (lua_Integer)off + 1);
    else
        lua_pushlstring(L, m->src + off, len);
}

/* Pushes the captures, or with none the whole match when whole is set; returns the count. */
static int pattern_push_captures(lua_State *L, policy_match_t *m, size_t start, size_t end, int whole)
{
    int n = m->level == 0 && whole ? 1 : m->level;
    luaL_checkstack(L, n, "too many captures");
    for (int i = 0; i < n; i++) pattern_push_capture(L, m, i, start, end);
    return n;
}

/* luaL_optinteger(L, arg, 1), reading an integer argument (the common case) directly. */
static lua_Integer pattern_opt_init(lua_State *L, int arg)
{
    int isint;
    lua_Integer v = lua_tointegerx(L, arg, &isint);
    return isint ? v : luaL_optinteger(L, arg, 1);   /* nil/none: 1; anything else as Lua says */
}

/* memmem, with needles of one or two bytes found by memchr (glibc's memmem compares those
 * byte by byte); longer needles keep memmem's linear-time search. */
static const char *pattern_memmem(const char *s, size_t ls, const char *p, size_t lp)
{
    if (lp == 0) return s;
    if (lp > 2) return memmem(s, ls, p, lp);
    if (lp > ls) return NULL;
    const char *end = s + ls - lp + 1;   /* a match starts before end */
    for (const char *at = s; at < end; at++) {
        at = memchr(at, p[0], (size_t)(end - at));
        if (!at || lp == 1 || at[1] == p[1]) return at;
    }
    return NULL;
}

static int pattern_find_aux(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = pattern_start(pattern_opt_init(L, 3), ls) - 1;
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || policy_match_plain(p, lp))) {
        const char *hit = pattern_memmem(s + init, ls - init, p, lp);
        if (!hit) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
        lua_pushinteger(L, (lua_Integer)(hit - s + lp));
        return 2;
    }
    const pattern_conf_t *conf = pattern_conf(L);
    policy_match_t m;
    policy_match_init(&m, s, ls, p, lp, conf->max_steps, conf->stop);
    size_t start, end;
    int rc = policy_match_find(&m, init, &start, &end);
    if (rc < 0) return pattern_raise(L, &m, find ? "find" : "match");
    if (rc == POLICY_MATCH_NONE) {
        luaL_pushfail(L);
        return 1;
    }
    if (!find) return pattern_push_captures(L, &m, start, end, 1);
    lua_pushinteger(L, (lua_Integer)start + 1);
    lua_pushinteger(L, (lua_Integer)end);
    return pattern_push_captures(L, &m, 0, 0, 0) + 2;
}

static int pattern_find(lua_State *L) { return pattern_find_aux(L, 1); }

static int pattern_match(lua_State *L) { return pattern_find_aux(L, 0); }

/* The iterator: upvalues conf, subject, pattern, state. A match may not end where the last
 * one did (no empty match right after a match). */
static int pattern_gmatch_next(lua_State *L)
{
    const pattern_conf_t *conf = pattern_conf(L);
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
    pattern_gmatch_t *g = lua_touserdata(L, lua_upvalueindex(4));
    policy_match_t m;
    policy_match_init(&m, s, ls, p, lp, conf->max_steps, conf->stop);
    for (size_t at = g->next; at <= ls; at++) {
        size_t end;
        int rc = policy_match_at(&m, at, &end);
        if (rc < 0) return pattern_raise(L, &m, "gmatch");
        if (rc == POLICY_MATCH_FOUND && end != g->last) {
            g->next = g->last = end;
            return pattern_push_captures(L, &m, at, end, 1);
        }
    }
    return 0;
}

static int pattern_gmatch(lua_State *L)
{
    size_t ls;
    luaL_checklstring(L, 1, &ls);
    luaL_checkstring(L, 2);
    size_t init = pattern_start(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls) init = ls + 1;
    lua_settop(L, 2);                                      /* [s p] */
    pattern_gmatch_t *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->next = init;
    g->last = SIZE_MAX;                                    /* [s p g] */
    lua_pushvalue(L, lua_upvalueindex(1));                 /* [s p g conf] */
    lua_rotate(L, 1, 1);                                   /* [conf s p g] */
    lua_pushcclosure(L, pattern_gmatch_next, 4);           /* [iter] */
    return 1;
}

/* gsub's output: a buffer that refuses to grow past cap bytes. */
typedef struct {
    luaL_Buffer b;
    size_t cap;
    policy_match_t m;
} pattern_gsub_t;

static void pattern_out_check(lua_State *L, pattern_gsub_t *g, size_t n)
{
    if (n > g->cap - luaL_bufflen(&g->b))
        luaL_error(L, "string.gsub: resulting string too large (over %I bytes)", (lua_Integer)g->cap);
}

static void pattern_out_add(lua_State *L, pattern_gsub_t *g, const char *s, size_t n)
{
    pattern_out_check(L, g, n);
    luaL_addlstring(&g->b, s, n);
}

/* Adds the value on top of the stack (a string or a number). */
static void pattern_out_add_value(lua_State *L, pattern_gsub_t *g)
{
    size_t n;
    lua_tolstring(L, -1, &n);
    pattern_out_check(L, g, n);
    luaL_addvalue(&g->b);
}

/* The replacement string (argument 3) for the match [start, end), with %0-%9 and %%. */
static void pattern_add_string(lua_State *L, pattern_gsub_t *g, size_t start, size_t end)
{
    size_t l;
    const char *r = lua_tolstring(L, 3, &l);
    const char *esc;
    while ((esc = memchr(r, '%', l)) != NULL) {
        pattern_out_add(L, g, r, (size_t)(esc - r));
        size_t i = (size_t)(esc - r) + 1;
        int c = i < l ? (unsigned char)r[i] : 0;
        if (c == '%') {
            pattern_out_add(L, g, "%", 1);
        } else if (c == '0') {
            pattern_out_add(L, g, g->m.src + start, end - start);
        } else if (c >= '1' && c <= '9') {
            size_t off, len;
            int rc = policy_match_capture(&g->m, c - '1', start, end, &off, &len);
            if (rc < 0) pattern_raise(L, &g->m, "gsub");
            if (rc == 1) {
                lua_pushinteger(L, (lua_Integer)off + 1);
                pattern_out_add_value(L, g);
            } else {
                pattern_out_add(L, g, g->m.src + off, len);
            }
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        r += i + 1;
        l -= i + 1;
    }
    pattern_out_add(L, g, r, l);
}

/* Adds the replacement for the match [start, end) as repl (type tr) gives it; returns whether
 * it differs from the match (a function or table answering nil or false keeps it). */
static int pattern_add_value(lua_State *L, pattern_gsub_t *g, size_t start, size_t end, int tr)
{
    if (tr == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);                               /* [.. f] */
        int n = pattern_push_captures(L, &g->m, start, end, 1);
        lua_call(L, n, 1);                                 /* [.. v] */
    } else if (tr == LUA_TTABLE) {
        pattern_push_capture(L, &g->m, 0, start, end);     /* [.. k] */
        lua_gettable(L, 3);                                /* [.. v] */
    } else {
        pattern_add_string(L, g, start, end);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        pattern_out_add(L, g, g->m.src + start, end - start);
        return 0;
    }
    if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    pattern_out_add_value(L, g);
    return 1;
}

static int pattern_gsub(lua_State *L)
{
    const pattern_conf_t *conf = pattern_conf(L);
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int tr = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                     "string/function/table");
    int anchor = lp > 0 && p[0] == '^';
    if (anchor) {
        p++;
        lp--;
    }
    pattern_gsub_t g;
    g.cap = conf->max_out > ls ? conf->max_out : ls;  /* a subject left alone never fails */
    luaL_buffinit(L, &g.b);
    /* one matcher for the whole call: its budget and stop polling span every attempt */
    policy_match_init(&g.m, s, ls, p, lp, conf->max_steps, conf->stop);
    size_t at = 0, last = SIZE_MAX;
    lua_Integer n = 0;
    int changed = 0;
    while (n < max_n) {
        size_t end;
        int rc = policy_match_at(&g.m, at, &end);
        if (rc < 0) return pattern_raise(L, &g.m, "gsub");
        if (rc == POLICY_MATCH_FOUND && end != last) {
            n++;
            changed = pattern_add_value(L, &g, at, end, tr) | changed;
            at = last = end;
        } else if (at < ls) {
            pattern_out_add(L, &g, s + at, 1);
            at++;
        } else {
            break;
        }
        if (anchor) break;
    }
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        pattern_out_add(L, &g, s + at, ls - at);
        luaL_pushresult(&g.b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void policy_pattern_open(lua_State *L, int idx, const volatile sig_atomic_t *stop, unsigned long max_steps,
                         size_t max_out)
{
    static const luaL_Reg fns[] = {
        { "find", pattern_find }, { "match", pattern_match }, { "gmatch", pattern_gmatch },
        { "gsub", pattern_gsub }, { NULL, NULL },
    };
    idx = lua_absindex(L, idx);
    lua_pushvalue(L, idx);                                 /* [t] */
    pattern_conf_t *conf = lua_newuserdatauv(L, sizeof *conf, 0);
    conf->stop = stop;
    conf->max_steps = max_steps;
    conf->max_out = max_out;                               /* [t conf] */
    luaL_setfuncs(L, fns, 1);                              /* [t] */
    lua_pop(L, 1);                                         /* [] */
}
