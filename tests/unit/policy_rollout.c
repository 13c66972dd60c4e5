/* Unit tests for policy_rollout.c: arms by a stable hash of the connection id, the hosts that
 * record (and for the candidate never perform) gw.send/broadcast/kick, the kinds of
 * disagreement between two outcomes, the canary's rollback window, and the cut of long
 * strings. The real host is a mock that counts what reaches it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "policy/policy_rollout.h"

typedef struct {
    int sends, broadcasts, kicks;
} mock_host_t;

static int mock_send(void *ud, const char *id, json_t *msg)
{
    (void)id;
    (void)msg;
    ((mock_host_t *)ud)->sends++;
    return 0;
}

static int mock_broadcast(void *ud, const char *room, json_t *msg, const char *except)
{
    (void)room;
    (void)msg;
    (void)except;
    ((mock_host_t *)ud)->broadcasts++;
    return 0;
}

static int mock_kick(void *ud, const char *id, const char *code, const char *reason)
{
    (void)id;
    (void)code;
    (void)reason;
    ((mock_host_t *)ud)->kicks++;
    return 0;
}

static config_t test_cfg(int mode_canary, double percent)
{
    (void)mode_canary;
    config_t c;
    memset(&c, 0, sizeof c);
    c.policy_candidate_percent = percent;
    c.policy_rollback_window_ms = 60000;
    c.policy_rollback_min_calls = 5;
    c.policy_rollback_error_rate = 0.5;
    c.policy_rollback_drop_rate = 0.9;
    return c;
}

static const char *V1 = "1111111111111111111111111111111111111111111111111111111111111111";
static const char *V2 = "2222222222222222222222222222222222222222222222222222222222222222";

static void test_arms(void **state)
{
    (void)state;
    config_t cfg = test_cfg(1, 50);
    policy_rollout_t *r = policy_rollout_new(POLICY_ROLLOUT_CANARY, &cfg, NULL, NULL);
    assert_int_equal(policy_rollout_arm(r, "abc"), POLICY_ARM_STABLE);   /* nothing loaded yet */
    policy_rollout_candidate_version(r, V1);
    assert_true(policy_rollout_live(r));
    int cand = 0;
    char id[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof id, "conn-%d", i);
        int a = policy_rollout_arm(r, id);
        assert_int_equal(a, policy_rollout_arm(r, id));                 /* the same id, the same arm */
        assert_true(policy_rollout_share(id) < 10000);
        cand += a == POLICY_ARM_CANDIDATE;
    }
    assert_in_range(cand, 800, 1200);                                   /* 50 % of 2000, > 8 sd wide */
    assert_int_equal(policy_rollout_arm(r, NULL), POLICY_ARM_STABLE);  /* on_tick: no connection */
    cfg.policy_candidate_percent = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "c%d", i);
        assert_int_equal(policy_rollout_arm(r, id), POLICY_ARM_STABLE);
    }
    cfg.policy_candidate_percent = 100;
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "c%d", i);
        assert_int_equal(policy_rollout_arm(r, id), POLICY_ARM_CANDIDATE);
    }
    policy_rollout_free(r);
    /* shadow mode never puts a connection on the candidate */
    r = policy_rollout_new(POLICY_ROLLOUT_SHADOW, &cfg, NULL, NULL);
    policy_rollout_candidate_version(r, V1);
    assert_int_equal(policy_rollout_arm(r, "c1"), POLICY_ARM_STABLE);
    policy_rollout_free(r);
}

static void test_effects_and_diffs(void **state)
{
    (void)state;
    config_t cfg = test_cfg(0, 0);
    mock_host_t mh = { 0 };
    policy_host_t real = { .ud = &mh, .send = mock_send, .broadcast = mock_broadcast, .kick = mock_kick };
    metrics_t *m = xcalloc(1, sizeof *m);
    policy_rollout_t *r = policy_rollout_new(POLICY_ROLLOUT_SHADOW, &cfg, m, &real);
    policy_rollout_candidate_version(r, V1);
    policy_host_t hs, hc;
    policy_rollout_host(r, POLICY_ARM_STABLE, &hs);
    policy_rollout_host(r, POLICY_ARM_CANDIDATE, &hc);
    json_t *msg = json_pack("{s:s}", "text", "hi");

    /* the same effects on both sides, the stable's performed, the candidate's not: no diff */
    policy_rollout_effects(r, POLICY_ARM_STABLE, POLICY_EFFECTS_LIVE | POLICY_EFFECTS_RECORD);
    assert_int_equal(hs.send(hs.ud, "a", msg), 0);
    assert_int_equal(hc.send(hc.ud, "a", msg), 0);
    assert_int_equal(mh.sends, 1);
    policy_outcome_t pass = { POLICY_PASS, 0, NULL, msg };
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &pass, &pass, 1.0), 0u);

    /* the candidate kicks and broadcasts: recorded, never performed; an effects diff */
    policy_rollout_effects_clear(r);
    assert_int_equal(hc.kick(hc.ud, "a", "kicked", "x"), 0);
    assert_int_equal(hc.broadcast(hc.ud, "lobby", msg, NULL), 0);
    assert_int_equal(mh.kicks + mh.broadcasts, 0);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &pass, &pass, 1.0),
                     1u << METRICS_SHADOW_EFFECTS);
    policy_rollout_effects_clear(r);

    /* verdict, code, rewrite, error */
    policy_outcome_t drop_a = { POLICY_DROP, 0, "spam", NULL }, drop_b = { POLICY_DROP, 0, "forbidden", NULL };
    policy_outcome_t err = { POLICY_ERROR, METRICS_POLICY_TIMEOUT, NULL, NULL };
    json_t *other = json_pack("{s:s}", "text", "HI");
    policy_outcome_t rewritten = { POLICY_PASS, 0, NULL, other }, handled = { POLICY_PASS, 0, NULL, NULL };
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &pass, &drop_a, 1.0), 1u << METRICS_SHADOW_VERDICT);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_JOIN, "a", &drop_a, &drop_b, 1.0), 1u << METRICS_SHADOW_CODE);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_JOIN, "a", &drop_a, &drop_a, 1.0), 0u);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &pass, &rewritten, 1.0), 1u << METRICS_SHADOW_REWRITE);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &pass, &handled, 1.0), 1u << METRICS_SHADOW_REWRITE);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &pass, &err, 1.0), 1u << METRICS_SHADOW_ERROR);
    assert_int_equal(policy_rollout_compare(r, POLICY_HOOK_MESSAGE, "a", &err, &err, 1.0), 0u);
    assert_int_equal(m->policy_shadow_diffs[POLICY_HOOK_MESSAGE][METRICS_SHADOW_VERDICT], 1);
    assert_int_equal(m->policy_shadow_diffs[POLICY_HOOK_MESSAGE][METRICS_SHADOW_REWRITE], 2);
    assert_int_equal(m->policy_shadow_diffs[POLICY_HOOK_JOIN][METRICS_SHADOW_CODE], 1);
    assert_int_equal(m->policy_shadow_diffs[POLICY_HOOK_MESSAGE][METRICS_SHADOW_EFFECTS], 1);

    /* a candidate that sends in a loop is recorded up to a bound, the rest only counted */
    for (int i = 0; i < 1000; i++) hc.send(hc.ud, "a", msg);
    assert_int_equal(mh.sends, 1);
    json_t *st = policy_rollout_status(r);
    assert_string_equal(json_string_value(json_object_get(st, "state")), "active");
    json_decref(st);
    policy_rollout_effects_clear(r);
    json_decref(msg);
    json_decref(other);
    policy_rollout_free(r);
    free(m);
}

static void test_rollback(void **state)
{
    (void)state;
    config_t cfg = test_cfg(1, 100);
    metrics_t *m = xcalloc(1, sizeof *m);
    policy_rollout_t *r = policy_rollout_new(POLICY_ROLLOUT_CANARY, &cfg, m, NULL);
    policy_rollout_candidate_version(r, V1);
    assert_int_equal(m->policy_candidate_active, 1);
    policy_outcome_t ok = { POLICY_PASS, 0, NULL, NULL }, err = { POLICY_ERROR, METRICS_POLICY_ERROR, NULL, NULL };
    /* errors spread over windows never reach min_calls in one: no rollback */
    double now = 100;
    for (int i = 0; i < 20; i++, now += 30)
        assert_int_equal(policy_rollout_observe(r, POLICY_ARM_CANDIDATE, POLICY_HOOK_MESSAGE, &err, 10, now), 0);
    now += 120;
    /* a healthy window, then one that fails: the 5th call of the failing window rolls back */
    for (int i = 0; i < 10; i++) assert_int_equal(policy_rollout_observe(r, POLICY_ARM_CANDIDATE, POLICY_HOOK_MESSAGE, &ok, 10, now), 0);
    now += 61;
    for (int i = 0; i < 4; i++) assert_int_equal(policy_rollout_observe(r, POLICY_ARM_CANDIDATE, POLICY_HOOK_MESSAGE, &err, 10, now), 0);
    assert_int_equal(policy_rollout_observe(r, POLICY_ARM_CANDIDATE, POLICY_HOOK_MESSAGE, &err, 10, now), 1);
    assert_false(policy_rollout_live(r));
    assert_int_equal(policy_rollout_arm(r, "x"), POLICY_ARM_STABLE);
    assert_int_equal(m->policy_rollbacks, 1);
    assert_int_equal(m->policy_candidate_active, 0);
    assert_int_equal(m->policy_arm_errors[POLICY_ARM_CANDIDATE][POLICY_HOOK_MESSAGE][METRICS_POLICY_ERROR], 25);
    json_t *st = policy_rollout_status(r);
    assert_string_equal(json_string_value(json_object_get(st, "state")), "rolled_back");
    assert_string_equal(json_string_value(json_object_get(st, "rolled_back_version")), V1);
    assert_non_null(strstr(json_string_value(json_object_get(st, "reason")), "error rate"));
    json_decref(st);
    /* the same version again (an unchanged reload) keeps it off; a new one arms it */
    policy_rollout_candidate_version(r, V1);
    assert_false(policy_rollout_live(r));
    policy_rollout_candidate_version(r, V2);
    assert_true(policy_rollout_live(r));
    assert_int_equal(policy_rollout_arm(r, "x"), POLICY_ARM_CANDIDATE);
    /* the stable arm is counted, never rolled back */
    for (int i = 0; i < 50; i++)
        assert_int_equal(policy_rollout_observe(r, POLICY_ARM_STABLE, POLICY_HOOK_MESSAGE, &err, 10, now), 0);
    assert_true(policy_rollout_live(r));
    /* drops count against their own bound */
    policy_outcome_t drop = { POLICY_DROP, 0, "room_full", NULL };
    now += 61;
    int rolled = 0;
    for (int i = 0; i < 5; i++) rolled |= policy_rollout_observe(r, POLICY_ARM_CANDIDATE, POLICY_HOOK_JOIN, &drop, 10, now);
    assert_int_equal(rolled, 1);
    assert_int_equal(m->policy_arm_drops[POLICY_ARM_CANDIDATE][POLICY_HOOK_JOIN][1], 5);   /* room_full */
    policy_rollout_free(r);
    free(m);
}

static void test_cut(void **state)
{
    (void)state;
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    json_t *v = json_pack("{s:s, s:[s, i]}", "text", big, "list", "é long enough to be cut: ééééééééééééééééééééééééééééé", 7);
    json_t *c = policy_rollout_cut(v, 16);
    const char *t = json_string_value(json_object_get(c, "text"));
    assert_non_null(t);
    assert_true(strlen(t) < 60);
    assert_memory_equal(t, "aaaaaaaaaaaaaaaa... [cut: 283 bytes more]", strlen(t));
    const char *u = json_string_value(json_array_get(json_object_get(c, "list"), 0));
    assert_non_null(u);    /* valid UTF-8: the cut never splits a character */
    assert_int_equal(json_integer_value(json_array_get(json_object_get(c, "list"), 1)), 7);
    json_decref(c);
    json_decref(v);
    /* wide and deep values are cut too: a log line stays small whatever a script sends */
    json_t *wide = json_object(), *arr = json_array(), *deep = json_array();
    char k[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "k%d", i);
        json_object_set_new(wide, k, json_integer(i));
        json_array_append_new(arr, json_integer(i));
    }
    json_t *cur = deep;
    for (int i = 0; i < 50; i++) {
        json_t *next = json_array();
        json_array_append_new(cur, next);
        cur = next;
    }
    json_t *all = json_pack("{s:o, s:o, s:o}", "wide", wide, "arr", arr, "deep", deep);
    json_t *cut = policy_rollout_cut(all, 16);
    char *text = json_dumps(cut, JSON_COMPACT);
    assert_true(strlen(text) < 1024);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(cut, "wide"), "[cut]")), 984);
    assert_int_equal(json_array_size(json_object_get(cut, "arr")), 17);
    free(text);
    json_decref(cut);
    json_decref(all);
}

int main(void)
{
    log_level_set(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arms),
        cmocka_unit_test(test_effects_and_diffs),
        cmocka_unit_test(test_rollback),
        cmocka_unit_test(test_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
