/* policy_match: a Lua 5.4 pattern matcher (manual section 6.4.1) that counts its work, so the
 * policy's string.find/match/gmatch/gsub cannot backtrack for seconds inside one C call where
 * no Lua hook can stop them. It accepts exactly what Lua 5.4.4 accepts, finds the same matches
 * and captures, and fails on the same malformed patterns with the same messages; on top of
 * that it stops with an error after max_steps steps or when *stop becomes nonzero (polled every
 * 1024 steps). Pure C: no Lua, no allocation, no globals; it never reads outside the subject
 * and pattern it is given (neither needs a NUL terminator; an embedded NUL is an ordinary
 * byte). Recursion is bounded by POLICY_MATCH_MAXDEPTH frames, as Lua's MAXCCALLS. */
#ifndef CHATGW_POLICY_MATCH_H
#define CHATGW_POLICY_MATCH_H

#include <signal.h>
#include <stddef.h>

/* Lua's own limits, kept so that patterns behave as in stock Lua: not config keys. */
#define POLICY_MATCH_MAXCAPTURES 32    /* LUA_MAXCAPTURES */
#define POLICY_MATCH_MAXDEPTH 200      /* MAXCCALLS in lstrlib.c: "pattern too complex" */
#define POLICY_MATCH_STOP_EVERY 1024   /* steps between two reads of *stop (a pace, not a limit) */

/* Results. The errors leave a message in policy_match_t.err. */
enum {
    POLICY_MATCH_FOUND = 1,
    POLICY_MATCH_NONE = 0,
    POLICY_MATCH_EPATTERN = -1,        /* an error Lua raises too, with Lua's wording */
    POLICY_MATCH_ESTEPS = -2,          /* "pattern too complex (over N steps)" */
    POLICY_MATCH_ESTOP = -3,           /* "interrupted": *stop was set */
};

/* Capture lengths that are not lengths (Lua's CAP_UNFINISHED and CAP_POSITION). */
#define POLICY_MATCH_CAP_UNFINISHED ((ptrdiff_t)-1)
#define POLICY_MATCH_CAP_POSITION ((ptrdiff_t)-2)

typedef struct {
    size_t init;                       /* offset in the subject where the capture starts */
    ptrdiff_t len;                     /* bytes, or one of the two values above */
} policy_match_cap_t;

/* One subject and pattern, matched any number of times. Callers allocate it (the stack is
 * fine), fill it with policy_match_init and read level, cap, steps and err; the rest is the
 * matcher's. Subject and pattern are borrowed and must outlive every call on it. */
typedef struct {
    const char *src;
    size_t src_len;
    const char *pat;
    size_t pat_len;
    unsigned long max_steps;           /* 0: no limit */
    unsigned long steps;               /* counted over every call since policy_match_init */
    unsigned long tick;                /* steps until the next look at budget and stop flag */
    const volatile sig_atomic_t *stop; /* NULL: never interrupted */
    int depth;                         /* match frames now active */
    int code;                          /* the first error, sticky until policy_match_init */
    int level;                         /* captures opened by the last successful match */
    policy_match_cap_t cap[POLICY_MATCH_MAXCAPTURES];
    const char *err;                   /* the error message, NULL while none */
    char errbuf[64];
} policy_match_t;

/* Readies m for subject s (slen bytes) and pattern p (plen bytes), with a step budget and an
 * optional stop flag that another context (a signal handler, a timer) may set at any time. */
void policy_match_init(policy_match_t *m, const char *s, size_t slen, const char *p, size_t plen,
                       unsigned long max_steps, const volatile sig_atomic_t *stop);

/* string.find/string.match's search: a leading '^' anchors the pattern at init, otherwise the
 * pattern is tried at init, init + 1, ... up to and including src_len. init must be at most
 * src_len. On POLICY_MATCH_FOUND, [*start, *end) is the match and level/cap its captures.
 * Returns POLICY_MATCH_FOUND, POLICY_MATCH_NONE or an error (the search stops at once). */
int policy_match_find(policy_match_t *m, size_t init, size_t *start, size_t *end);

/* One attempt at offset at (at most src_len), with '^' an ordinary character, as gmatch and
 * (after stripping the anchor itself) gsub use it. On POLICY_MATCH_FOUND the match is
 * [at, *end). Same returns as policy_match_find. */
int policy_match_at(policy_match_t *m, size_t at, size_t *end);

/* Capture i (0-based) of the match [start, end), by Lua's rules: with no captures, index 0 is
 * the whole match. Returns 0 with the capture's bytes at *off, *len; 1 for a position capture,
 * *off being its offset (Lua shows *off + 1); POLICY_MATCH_EPATTERN for an unfinished capture or an index
 * past the captures ("invalid capture index %N"). */
int policy_match_capture(policy_match_t *m, int i, size_t start, size_t end, size_t *off, size_t *len);

/* 1 when none of Lua's pattern specials (^$*+?.([%-) occurs in p: string.find may then do a
 * plain search. */
int policy_match_plain(const char *p, size_t plen);

#endif
