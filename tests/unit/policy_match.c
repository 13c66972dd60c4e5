/* policy_match: every pattern item of Lua 5.4 (classes, sets, quantifiers, anchors, captures,
 * back-references, %b, %f), Lua's error messages for malformed patterns, and our limits: the
 * step budget, the stop flag and the recursion depth. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "policy/policy_match.h"

/* string.find over NUL-terminated strings from init (0-based); the result code. */
static int find(policy_match_t *m, const char *s, const char *p, size_t init, size_t *start, size_t *end)
{
    policy_match_init(m, s, strlen(s), p, strlen(p), 100000, NULL);
    return policy_match_find(m, init, start, end);
}

/* The text string.match would return first: capture 0 or the whole match; NULL when none. */
static const char *match(const char *s, const char *p)
{
    static char out[256];
    policy_match_t m;
    size_t start, end, off, len;
    if (find(&m, s, p, 0, &start, &end) != POLICY_MATCH_FOUND) return NULL;
    int rc = policy_match_capture(&m, 0, start, end, &off, &len);
    if (rc == 1) {
        snprintf(out, sizeof out, "@%zu", off + 1);
        return out;
    }
    assert_int_equal(rc, 0);
    snprintf(out, sizeof out, "%.*s", (int)len, s + off);
    return out;
}

/* The error message for s and p; fails the test when there is none. */
static const char *error_of(const char *s, const char *p)
{
    static policy_match_t m;
    size_t start, end;
    assert_int_equal(find(&m, s, p, 0, &start, &end), POLICY_MATCH_EPATTERN);
    return m.err;
}

static void test_classes(void **state)
{
    (void)state;
    assert_string_equal(match("..x7", "%a"), "x");
    assert_string_equal(match("ab\x01", "%c"), "\x01");
    assert_string_equal(match("ab\x7f", "%c"), "\x7f");
    assert_string_equal(match("ab42", "%d+"), "42");
    assert_string_equal(match(" \t~x", "%g"), "~");
    assert_string_equal(match("ABc", "%l"), "c");
    assert_string_equal(match("ab,c", "%p"), ",");
    assert_string_equal(match("a\v\fb", "%s+"), "\v\f");
    assert_string_equal(match("abC", "%u"), "C");
    assert_string_equal(match(" _a1", "%w+"), "a1");
    assert_string_equal(match("zzfF09g", "%x+"), "fF09");
    /* upper case: the complement */
    assert_string_equal(match("abc1", "%A"), "1");
    assert_string_equal(match("123x", "%D"), "x");
    assert_string_equal(match("   x ", "%S+"), "x");
    assert_string_equal(match("ab_c", "%W"), "_");
    assert_string_equal(match("abc", "%U+"), "abc");
    /* bytes past ASCII are in no class, as in the C locale */
    assert_null(match("\xe9", "%a"));
    assert_string_equal(match("\xe9", "%A"), "\xe9");
    assert_null(match("\xe9", "%g"));
    /* escaped non-letters and letters that are not classes stand for themselves */
    assert_string_equal(match("a.b", "%."), ".");
    assert_string_equal(match("50%", "%d%%"), "0%");
    assert_string_equal(match("aB", "%B"), "B");
    assert_string_equal(match("x.y", "."), "x");
}

static void test_sets(void **state)
{
    (void)state;
    assert_string_equal(match("zzdeadbeef99", "[a-f0-9]+"), "deadbeef99");
    assert_string_equal(match("abc-", "[-c]+"), "c-");
    assert_string_equal(match("ab-", "[a-]+"), "a");
    assert_string_equal(match("]]x", "[]]+"), "]]");
    assert_string_equal(match("]]x", "[^]]"), "x");
    assert_string_equal(match("a]b", "[%]]"), "]");
    assert_string_equal(match("  x1_ ", "[%w_]+"), "x1_");
    assert_string_equal(match("abc  d", "[^%s]+"), "abc");
    assert_string_equal(match("a^b", "[b^]+"), "^b");
    assert_string_equal(match("x%y", "[%%]"), "%");
    assert_string_equal(match("\xe0\xe9", "[\xe0-\xef]+"), "\xe0\xe9");
    assert_null(match("abc", "[^abc]"));
}

static void test_quantifiers(void **state)
{
    (void)state;
    assert_string_equal(match("<a><b>", "<.*>"), "<a><b>");
    assert_string_equal(match("<a><b>", "<.->"), "<a>");
    assert_string_equal(match("caaab", "a+b"), "aaab");
    assert_null(match("cb", "a+b"));
    assert_string_equal(match("cb", "a*b"), "b");
    assert_string_equal(match("-12", "^[+-]?%d+$"), "-12");
    assert_string_equal(match("12", "^[+-]?%d+$"), "12");
    assert_string_equal(match("color colour", "colou?r"), "color");
    /* '?' backs off when the rest cannot match with it */
    assert_string_equal(match("ab", "a?ab"), "ab");
    assert_string_equal(match("aaa", "a-"), "");
    assert_string_equal(match("aaa", "a-$"), "aaa");
}

static void test_anchors(void **state)
{
    (void)state;
    policy_match_t m;
    size_t start, end;
    assert_int_equal(find(&m, "hello", "^h", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(find(&m, "ahello", "^h", 0, &start, &end), POLICY_MATCH_NONE);
    /* anchored at init, not at the subject's start */
    assert_int_equal(find(&m, "ahello", "^h", 1, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(start, 1);
    assert_string_equal(match("a$b", "a$b"), "a$b");
    assert_string_equal(match("ab", "b$"), "b");
    assert_null(match("ba", "b$"));
    assert_string_equal(match("x^y", "x^"), "x^");
    /* policy_match_at: '^' is an ordinary byte */
    policy_match_init(&m, "^a", 2, "^a", 2, 0, NULL);
    assert_int_equal(policy_match_at(&m, 0, &end), POLICY_MATCH_FOUND);
    assert_int_equal(end, 2);
    /* the empty match at the very end */
    assert_int_equal(find(&m, "abc", "$", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(start, 3);
    assert_int_equal(end, 3);
}

static void test_captures(void **state)
{
    (void)state;
    policy_match_t m;
    size_t start, end, off, len;
    assert_int_equal(find(&m, "xabc", "((a)(b(c)))", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(m.level, 4);
    const char *want[] = { "abc", "a", "bc", "c" };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(policy_match_capture(&m, i, start, end, &off, &len), 0);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(&"xabc"[off], want[i], len);
    }
    assert_int_equal(policy_match_capture(&m, 4, start, end, &off, &len), POLICY_MATCH_EPATTERN);
    assert_string_equal(m.err, "invalid capture index %5");

    assert_int_equal(find(&m, "hello", "()ll()", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(policy_match_capture(&m, 0, start, end, &off, &len), 1);
    assert_int_equal(off + 1, 3);
    assert_int_equal(policy_match_capture(&m, 1, start, end, &off, &len), 1);
    assert_int_equal(off + 1, 5);

    /* no captures: index 0 is the whole match, others are errors */
    assert_int_equal(find(&m, "abc", "b", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(policy_match_capture(&m, 0, start, end, &off, &len), 0);
    assert_int_equal(off, 1);
    assert_int_equal(len, 1);
    assert_int_equal(policy_match_capture(&m, 1, start, end, &off, &len), POLICY_MATCH_EPATTERN);
    assert_string_equal(m.err, "invalid capture index %2");

    /* a capture still open when the pattern ends matches, but cannot be read */
    assert_int_equal(find(&m, "ab", "(a", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(policy_match_capture(&m, 0, start, end, &off, &len), POLICY_MATCH_EPATTERN);
    assert_string_equal(m.err, "unfinished capture");
    assert_string_equal(error_of("a", "a)"), "invalid pattern capture");
}

static void test_backrefs(void **state)
{
    (void)state;
    assert_string_equal(match("say \"hi\" now", "([\"'])(.-)%1"), "\"");
    assert_string_equal(match("abcabc", "^(%a+)%1$"), "abc");
    assert_null(match("abcabd", "^(%a+)%1$"));
    /* a position capture never matches as a back-reference */
    assert_null(match("abc", "()%1"));
    assert_string_equal(error_of("aa", "(a)%2"), "invalid capture index %2");
    assert_string_equal(error_of("aa", "%0"), "invalid capture index %0");
    assert_string_equal(error_of("aa", "(a%1)"), "invalid capture index %1");
    /* only raised when reached */
    assert_null(match("abc", "x%1"));
}

static void test_balance(void **state)
{
    (void)state;
    assert_string_equal(match("f(a(b)c)d", "%b()"), "(a(b)c)");
    assert_null(match("f(a(b c", "%b()"));
    assert_string_equal(match("x'ab'c'", "%b''"), "'ab'");
    assert_string_equal(match("[[x]] y", "%b[]%s"), "[[x]] ");
    assert_string_equal(error_of("(", "%b("), "malformed pattern (missing arguments to '%b')");
    assert_string_equal(error_of("(", "%b"), "malformed pattern (missing arguments to '%b')");
}

static void test_frontier(void **state)
{
    (void)state;
    assert_string_equal(match("  THE (quick) fox", "%f[%a]%a+"), "THE");
    assert_string_equal(match("THE (quick) fox", "%f[%a]%a+%f[%A]"), "THE");
    /* the ends count as NUL bytes */
    assert_string_equal(match("abc", "%f[%z]"), "");
    assert_string_equal(match("abc", "%f[%w]"), "");
    policy_match_t m;
    size_t start, end;
    assert_int_equal(find(&m, "abc", "%f[%z]", 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(start, 3);
    assert_int_equal(find(&m, "ab cd", "%f[^%s]", 1, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(start, 3);
    assert_string_equal(error_of("a", "%fa"), "missing '[' after '%f' in pattern");
    assert_string_equal(error_of("a", "%f"), "missing '[' after '%f' in pattern");
    assert_string_equal(error_of("a", "%f[a"), "malformed pattern (missing ']')");
}

static void test_malformed(void **state)
{
    (void)state;
    assert_string_equal(error_of("a", "%"), "malformed pattern (ends with '%')");
    assert_string_equal(error_of("abc", "abc%"), "malformed pattern (ends with '%')");
    assert_string_equal(error_of("a", "[a"), "malformed pattern (missing ']')");
    assert_string_equal(error_of("a", "[]"), "malformed pattern (missing ']')");
    assert_string_equal(error_of("a", "[%]"), "malformed pattern (missing ']')");
    assert_string_equal(error_of("a", "[^"), "malformed pattern (missing ']')");
    /* errors come where matching reaches them, as in Lua */
    assert_null(match("abc", "x["));
    char many[2 * POLICY_MATCH_MAXCAPTURES + 3];
    for (int i = 0; i <= POLICY_MATCH_MAXCAPTURES; i++) memcpy(many + 2 * i, "()", 2);
    many[sizeof many - 1] = '\0';
    assert_string_equal(error_of("a", many), "too many captures");
    many[2 * POLICY_MATCH_MAXCAPTURES] = '\0';
    assert_string_equal(match("a", many), "@1");
}

static void test_embedded_nul(void **state)
{
    (void)state;
    /* neither string is NUL-terminated: the matcher must stay inside both */
    char *s = malloc(5), *p = malloc(4);
    memcpy(s, "x\0\0by", 5);
    memcpy(p, "\0+b%", 4);
    policy_match_t m;
    size_t start, end;
    policy_match_init(&m, s, 5, p, 3, 0, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(start, 1);
    assert_int_equal(end, 4);
    policy_match_init(&m, s, 5, p, 4, 0, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_EPATTERN);
    /* "%\0" is an escaped NUL, not the end of the pattern */
    memcpy(p, "%\0", 2);
    policy_match_init(&m, s, 5, p, 2, 0, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(start, 1);
    /* "[" runs into the end */
    memcpy(p, "[\0", 2);
    policy_match_init(&m, s, 5, p, 2, 0, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_EPATTERN);
    assert_string_equal(m.err, "malformed pattern (missing ']')");
    free(s);
    free(p);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_step_limit(void **state)
{
    (void)state;
    char s[301];
    memset(s, 'a', 300);
    s[300] = '\0';
    policy_match_t m;
    size_t start, end;
    double t0 = now_s();
    policy_match_init(&m, s, 300, "(.-)(.-)(.-)x", 13, 1000000, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_ESTEPS);
    assert_string_equal(m.err, "pattern too complex (over 1000000 steps)");
    assert_int_equal(m.steps, 1000001);
    assert_true(now_s() - t0 < 1.0);  /* Lua's own matcher takes seconds here */
    /* sticky until the next init */
    assert_int_equal(policy_match_at(&m, 0, &end), POLICY_MATCH_ESTEPS);
    /* the same pattern on a subject that has the x is cheap */
    policy_match_init(&m, "aaax", 4, "(.-)(.-)(.-)x", 13, 1000, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_FOUND);
    /* the budget spans calls on one state, as gsub uses it */
    policy_match_init(&m, s, 300, "a", 1, 50, NULL);
    int found = 0, rc;
    while ((rc = policy_match_at(&m, (size_t)found, &end)) == POLICY_MATCH_FOUND) found++;
    assert_int_equal(rc, POLICY_MATCH_ESTEPS);
    assert_true(found > 0 && found < 50);
    /* %b and back-references count too */
    char paren[2001];
    memset(paren, '(', 2000);
    paren[2000] = '\0';
    policy_match_init(&m, paren, 2000, "%b()", 4, 100000, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_ESTEPS);
}

static void test_stop_flag(void **state)
{
    (void)state;
    char s[301];
    memset(s, 'a', 300);
    volatile sig_atomic_t stop = 0;
    policy_match_t m;
    size_t start, end;
    policy_match_init(&m, s, 300, "a-b", 3, 0, &stop);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_NONE);
    unsigned long clear = m.steps;
    assert_true(clear > POLICY_MATCH_STOP_EVERY);
    stop = 1;
    policy_match_init(&m, s, 300, "(.-)(.-)(.-)x", 13, 0, &stop);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_ESTOP);
    assert_string_equal(m.err, "interrupted");
    assert_int_equal(m.steps, POLICY_MATCH_STOP_EVERY);
    /* a match shorter than one polling period is not interrupted */
    policy_match_init(&m, "ab", 2, "b", 1, 0, &stop);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_FOUND);
}

static void test_depth(void **state)
{
    (void)state;
    /* each "a?" that matches nests one frame; Lua gives up past 200 */
    char s[301], p[601];
    memset(s, 'a', 300);
    for (int i = 0; i < 300; i++) memcpy(p + 2 * i, "a?", 2);
    policy_match_t m;
    size_t start, end;
    policy_match_init(&m, s, 300, p, 600, 0, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_EPATTERN);
    assert_string_equal(m.err, "pattern too complex");
    policy_match_init(&m, s, 150, p, 300, 0, NULL);
    assert_int_equal(policy_match_find(&m, 0, &start, &end), POLICY_MATCH_FOUND);
    assert_int_equal(end, 150);
}

static void test_plain(void **state)
{
    (void)state;
    assert_true(policy_match_plain("hello world", 11));
    assert_true(policy_match_plain("a)]b", 4));
    assert_true(policy_match_plain("", 0));
    assert_false(policy_match_plain("a.b", 3));
    assert_false(policy_match_plain("a\0%", 3));
    const char *specials = "^$*+?.([%-";
    for (const char *c = specials; *c; c++) assert_false(policy_match_plain(c, 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes),    cmocka_unit_test(test_sets),
        cmocka_unit_test(test_quantifiers), cmocka_unit_test(test_anchors),
        cmocka_unit_test(test_captures),   cmocka_unit_test(test_backrefs),
        cmocka_unit_test(test_balance),    cmocka_unit_test(test_frontier),
        cmocka_unit_test(test_malformed),  cmocka_unit_test(test_embedded_nul),
        cmocka_unit_test(test_step_limit), cmocka_unit_test(test_stop_flag),
        cmocka_unit_test(test_depth),      cmocka_unit_test(test_plain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
