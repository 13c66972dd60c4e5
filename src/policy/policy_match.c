/* policy_match: Lua 5.4 patterns with a step budget; see policy_match.h. The matcher walks the
 * pattern the way the manual's semantics require (greedy expansion backs off one byte at a
 * time, lazy expansion grows one byte at a time, captures and optional items recurse), so it
 * finds the same match and raises the same errors at the same points as Lua. Offsets, not
 * pointers, so nothing is ever read past either string: where Lua reads the terminating NUL,
 * the helpers below return 0. Errors are sticky in m->code and unwind through PM_FAIL. */
#include "policy/policy_match.h"

#include <stdio.h>
#include <string.h>

#define PM_FAIL ((size_t)-1)
#define PM_ESC '%'

/* The pattern byte at i, 0 past the end (where Lua sees its NUL terminator). */
static int pm_pat(const policy_match_t *m, size_t i)
{
    return i < m->pat_len ? (unsigned char)m->pat[i] : 0;
}

/* The subject byte at i, 0 at the end, as %f and %b see it. */
static int pm_src(const policy_match_t *m, size_t i)
{
    return i < m->src_len ? (unsigned char)m->src[i] : 0;
}

static size_t pm_error(policy_match_t *m, int code, const char *msg)
{
    if (!m->code) {
        m->code = code;
        m->err = msg;
    }
    return PM_FAIL;
}

static size_t pm_error_index(policy_match_t *m, int index)
{
    snprintf(m->errbuf, sizeof m->errbuf, "invalid capture index %%%d", index);
    return pm_error(m, POLICY_MATCH_EPATTERN, m->errbuf);
}

/* Steps until the next look at the budget and the stop flag: every POLICY_MATCH_STOP_EVERY
 * steps, and exactly at the step past the budget. */
static unsigned long pm_tick(const policy_match_t *m)
{
    unsigned long left = m->max_steps ? m->max_steps + 1 - m->steps : POLICY_MATCH_STOP_EVERY;
    return left < POLICY_MATCH_STOP_EVERY ? left : POLICY_MATCH_STOP_EVERY;
}

/* The look: nonzero (with the error set) once over budget or stopped. */
static int pm_step_check(policy_match_t *m)
{
    if (m->max_steps && m->steps > m->max_steps) {
        snprintf(m->errbuf, sizeof m->errbuf, "pattern too complex (over %lu steps)", m->max_steps);
        pm_error(m, POLICY_MATCH_ESTEPS, m->errbuf);
        return 1;
    }
    if (m->stop && *m->stop) {
        pm_error(m, POLICY_MATCH_ESTOP, "interrupted");
        return 1;
    }
    m->tick = pm_tick(m);
    return 0;
}

/* Counts one step: a count and a countdown on the way, the look only when it runs out. */
static inline int pm_step(policy_match_t *m)
{
    m->steps++;
    return --m->tick == 0 ? pm_step_check(m) : 0;
}

/* ---- character classes: the C locale's <ctype.h>, whatever locale the process runs in ---- */

static int pm_is_upper(int c) { return c >= 'A' && c <= 'Z'; }
static int pm_is_lower(int c) { return c >= 'a' && c <= 'z'; }
static int pm_is_alpha(int c) { return pm_is_upper(c) || pm_is_lower(c); }
static int pm_is_digit(int c) { return c >= '0' && c <= '9'; }
static int pm_is_alnum(int c) { return pm_is_alpha(c) || pm_is_digit(c); }
static int pm_is_graph(int c) { return c > ' ' && c < 127; }

/* %cl against byte c: a class letter (its upper case is the complement), else cl itself. */
static int pm_class_match(int c, int cl)
{
    int res;
    switch (pm_is_upper(cl) ? cl + ('a' - 'A') : cl) {
    case 'a': res = pm_is_alpha(c); break;
    case 'c': res = c < ' ' || c == 127; break;
    case 'd': res = pm_is_digit(c); break;
    case 'g': res = pm_is_graph(c); break;
    case 'l': res = pm_is_lower(c); break;
    case 'p': res = pm_is_graph(c) && !pm_is_alnum(c); break;
    case 's': res = c == ' ' || (c >= '\t' && c <= '\r'); break;
    case 'u': res = pm_is_upper(c); break;
    case 'w': res = pm_is_alnum(c); break;
    case 'x': res = pm_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); break;
    case 'z': res = c == 0; break;  /* undocumented since 5.2, still in 5.4's lstrlib */
    default: return cl == c;
    }
    return pm_is_upper(cl) ? !res : res;
}

/* The set [..] from p (its '[') to close (its ']') against byte c. */
static int pm_set_match(const policy_match_t *m, int c, size_t p, size_t close)
{
    int in = 1;
    if (pm_pat(m, p + 1) == '^') {
        in = 0;
        p++;
    }
    while (++p < close) {
        int pc = pm_pat(m, p);
        if (pc == PM_ESC) {
            p++;
            if (pm_class_match(c, pm_pat(m, p))) return in;
        } else if (pm_pat(m, p + 1) == '-' && p + 2 < close) {
            p += 2;
            if (pc <= c && c <= pm_pat(m, p)) return in;
        } else if (pc == c) {
            return in;
        }
    }
    return !in;
}

/* The end of the single-character class at p (one past it), or PM_FAIL when malformed. */
static size_t pm_class_end(policy_match_t *m, size_t p)
{
    int c = pm_pat(m, p++);
    if (c == PM_ESC) {
        if (p >= m->pat_len) return pm_error(m, POLICY_MATCH_EPATTERN, "malformed pattern (ends with '%')");
        return p + 1;
    }
    if (c != '[') return p;
    if (pm_pat(m, p) == '^') p++;
    do {  /* the first byte is always a member: "[]]" and "[^]]" hold ']' */
        if (p >= m->pat_len) return pm_error(m, POLICY_MATCH_EPATTERN, "malformed pattern (missing ']')");
        if (pm_pat(m, p++) == PM_ESC && p < m->pat_len) p++;
    } while (p >= m->pat_len || m->pat[p] != ']');
    return p + 1;
}

/* Whether the class [p, ep) matches the subject byte at s (never the end of the subject). */
static int pm_single(const policy_match_t *m, size_t s, size_t p, size_t ep)
{
    if (s >= m->src_len) return 0;
    int c = (unsigned char)m->src[s];
    switch (pm_pat(m, p)) {
    case '.': return 1;
    case PM_ESC: return pm_class_match(c, pm_pat(m, p + 1));
    case '[': return pm_set_match(m, c, p, ep - 1);
    default: return pm_pat(m, p) == c;
    }
}

static size_t pm_match(policy_match_t *m, size_t s, size_t p);

/* x* and x+: take as many as match, then give them back one at a time. */
static size_t pm_expand_max(policy_match_t *m, size_t s, size_t p, size_t ep)
{
    size_t i = 0;
    while (pm_single(m, s + i, p, ep)) {
        i++;
        if (pm_step(m)) return PM_FAIL;
    }
    for (;;) {
        size_t r = pm_match(m, s + i, ep + 1);
        if (r != PM_FAIL || m->code) return r;
        if (i-- == 0) return PM_FAIL;
    }
}

/* x-: take as few as the rest of the pattern allows. */
static size_t pm_expand_min(policy_match_t *m, size_t s, size_t p, size_t ep)
{
    for (;;) {
        size_t r = pm_match(m, s, ep + 1);
        if (r != PM_FAIL || m->code) return r;
        if (!pm_single(m, s, p, ep)) return PM_FAIL;
        s++;
    }
}

/* '(' or '()' at p: opens a capture at s and matches the rest. */
static size_t pm_capture_open(policy_match_t *m, size_t s, size_t p)
{
    ptrdiff_t len = POLICY_MATCH_CAP_UNFINISHED;
    if (pm_pat(m, p + 1) == ')') {
        len = POLICY_MATCH_CAP_POSITION;
        p++;
    }
    if (m->level >= POLICY_MATCH_MAXCAPTURES) return pm_error(m, POLICY_MATCH_EPATTERN, "too many captures");
    m->cap[m->level].init = s;
    m->cap[m->level].len = len;
    m->level++;
    size_t r = pm_match(m, s, p + 1);
    if (r == PM_FAIL) m->level--;
    return r;
}

/* ')' before p: closes the innermost open capture at s and matches the rest. */
static size_t pm_capture_close(policy_match_t *m, size_t s, size_t p)
{
    int l = m->level - 1;
    while (l >= 0 && m->cap[l].len != POLICY_MATCH_CAP_UNFINISHED) l--;
    if (l < 0) return pm_error(m, POLICY_MATCH_EPATTERN, "invalid pattern capture");
    m->cap[l].len = (ptrdiff_t)(s - m->cap[l].init);
    size_t r = pm_match(m, s, p);
    if (r == PM_FAIL) m->cap[l].len = POLICY_MATCH_CAP_UNFINISHED;
    return r;
}

/* %bxy with x at p: the end of the balanced run starting at s, or PM_FAIL. */
static size_t pm_balance(policy_match_t *m, size_t s, size_t p)
{
    if (p + 1 >= m->pat_len)
        return pm_error(m, POLICY_MATCH_EPATTERN, "malformed pattern (missing arguments to '%b')");
    int open = pm_pat(m, p), close = pm_pat(m, p + 1);
    if (s >= m->src_len || pm_src(m, s) != open) return PM_FAIL;
    size_t depth = 1;
    while (++s < m->src_len) {
        if (pm_step(m)) return PM_FAIL;
        int c = pm_src(m, s);
        if (c == close) {
            if (--depth == 0) return s + 1;
        } else if (c == open) {
            depth++;
        }
    }
    return PM_FAIL;
}

/* %N (digit: N as a character): the end of a copy of capture N at s, or PM_FAIL. A position
 * capture never matches (Lua compares its negative length as a huge size). */
static size_t pm_backref(policy_match_t *m, size_t s, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= m->level || m->cap[l].len == POLICY_MATCH_CAP_UNFINISHED) return pm_error_index(m, l + 1);
    if (m->cap[l].len < 0) return PM_FAIL;
    size_t len = (size_t)m->cap[l].len;
    /* memcmp is cheap: one step per 32 bytes */
    for (size_t k = 0; k < len / 32; k++)
        if (pm_step(m)) return PM_FAIL;
    if (m->src_len - s < len || memcmp(m->src + m->cap[l].init, m->src + s, len)) return PM_FAIL;
    return s + len;
}

/* %f[set] with '[' at p: whether s is a frontier (the byte before it not in the set, the byte
 * at it in the set, both 0 at the ends). Returns the end of the set, or PM_FAIL. */
static size_t pm_frontier(policy_match_t *m, size_t s, size_t p)
{
    if (pm_pat(m, p) != '[') return pm_error(m, POLICY_MATCH_EPATTERN, "missing '[' after '%f' in pattern");
    size_t ep = pm_class_end(m, p);
    if (ep == PM_FAIL) return PM_FAIL;
    int prev = s == 0 ? 0 : pm_src(m, s - 1);
    if (!pm_set_match(m, prev, p, ep - 1) && pm_set_match(m, pm_src(m, s), p, ep - 1)) return ep;
    return PM_FAIL;
}

/* The items from p on, in one frame: single characters loop here, anything that may have to
 * be undone recurses. Returns the end of the match or PM_FAIL. */
static size_t pm_match_items(policy_match_t *m, size_t s, size_t p)
{
    while (p < m->pat_len) {
        if (pm_step(m)) return PM_FAIL;
        int c = pm_pat(m, p);
        if (c == '(') return pm_capture_open(m, s, p);
        if (c == ')') return pm_capture_close(m, s, p + 1);
        if (c == '$' && p + 1 == m->pat_len) return s == m->src_len ? s : PM_FAIL;
        if (c == PM_ESC) {
            int next = pm_pat(m, p + 1);
            if (next == 'b') {
                s = pm_balance(m, s, p + 2);
                if (s == PM_FAIL) return PM_FAIL;
                p += 4;
                continue;
            }
            if (next == 'f') {
                size_t ep = pm_frontier(m, s, p + 2);
                if (ep == PM_FAIL) return PM_FAIL;
                p = ep;
                continue;
            }
            if (pm_is_digit(next)) {
                s = pm_backref(m, s, next);
                if (s == PM_FAIL) return PM_FAIL;
                p += 2;
                continue;
            }
        }
        size_t ep = pm_class_end(m, p);
        if (ep == PM_FAIL) return PM_FAIL;
        int q = pm_pat(m, ep);
        if (!pm_single(m, s, p, ep)) {
            if (q != '*' && q != '?' && q != '-') return PM_FAIL;
            p = ep + 1;  /* zero of them will do */
            continue;
        }
        if (q == '?') {
            size_t r = pm_match(m, s + 1, ep + 1);
            if (r != PM_FAIL || m->code) return r;
            p = ep + 1;
            continue;
        }
        if (q == '+') return pm_expand_max(m, s + 1, p, ep);
        if (q == '*') return pm_expand_max(m, s, p, ep);
        if (q == '-') return pm_expand_min(m, s, p, ep);
        s++;
        p = ep;
    }
    return s;
}

/* A new frame: counts the depth, as Lua's matchdepth does, so "pattern too complex" comes at
 * the same nesting. */
static size_t pm_match(policy_match_t *m, size_t s, size_t p)
{
    if (m->depth >= POLICY_MATCH_MAXDEPTH) return pm_error(m, POLICY_MATCH_EPATTERN, "pattern too complex");
    if (pm_step(m)) return PM_FAIL;
    m->depth++;
    size_t r = pm_match_items(m, s, p);
    m->depth--;
    return r;
}

void policy_match_init(policy_match_t *m, const char *s, size_t slen, const char *p, size_t plen,
                       unsigned long max_steps, const volatile sig_atomic_t *stop)
{
    memset(m, 0, sizeof *m);
    m->src = s;
    m->src_len = slen;
    m->pat = p;
    m->pat_len = plen;
    m->max_steps = max_steps;
    m->stop = stop;
    m->tick = pm_tick(m);
}

/* One attempt at s with the pattern from p0; the result code. */
static int pm_attempt(policy_match_t *m, size_t s, size_t p0, size_t *end)
{
    if (m->code) return m->code;
    m->level = 0;
    m->depth = 0;
    size_t e = pm_match(m, s, p0);
    if (e != PM_FAIL) {
        *end = e;
        return POLICY_MATCH_FOUND;
    }
    return m->code ? m->code : POLICY_MATCH_NONE;
}

int policy_match_at(policy_match_t *m, size_t at, size_t *end)
{
    return pm_attempt(m, at, 0, end);
}

int policy_match_find(policy_match_t *m, size_t init, size_t *start, size_t *end)
{
    int anchor = pm_pat(m, 0) == '^';
    for (size_t s = init;; s++) {
        int rc = pm_attempt(m, s, anchor ? 1 : 0, end);
        if (rc == POLICY_MATCH_FOUND) *start = s;
        if (rc != POLICY_MATCH_NONE || anchor || s >= m->src_len) return rc;
    }
}

int policy_match_capture(policy_match_t *m, int i, size_t start, size_t end, size_t *off, size_t *len)
{
    if (i < 0 || i >= m->level) {
        if (i != 0) {
            pm_error_index(m, i + 1);
            return POLICY_MATCH_EPATTERN;
        }
        *off = start;
        *len = end - start;
        return 0;
    }
    const policy_match_cap_t *c = &m->cap[i];
    if (c->len == POLICY_MATCH_CAP_UNFINISHED) {
        pm_error(m, POLICY_MATCH_EPATTERN, "unfinished capture");
        return POLICY_MATCH_EPATTERN;
    }
    *off = c->init;
    *len = 0;
    if (c->len == POLICY_MATCH_CAP_POSITION) return 1;
    *len = (size_t)c->len;
    return 0;
}

int policy_match_plain(const char *p, size_t plen)
{
    for (size_t i = 0; i < plen; i++)
        if (p[i] && strchr("^$*+?.([%-", p[i])) return 0;
    return 1;
}
