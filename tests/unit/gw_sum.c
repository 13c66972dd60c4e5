/* Unit tests for gw_sum.c: one worker reads its own gw; several sum every worker's field and
 * metrics (bus_up the least of them, as metrics_sum does). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base/gw_sum.h"

static void test_one_worker(void **state)
{
    (void)state;
    gw_t *gw = calloc(1, sizeof *gw);
    gw->nworkers = 1;
    gw->metrics.conns_open = 7;
    gw->chat_clients = 3;
    assert_int_equal(GW_SUM(gw, metrics.conns_open), 7);
    assert_int_equal(GW_SUM(gw, chat_clients), 3);
    metrics_t *sum = malloc(sizeof *sum);
    gw_sum_metrics(gw, sum);
    assert_int_equal(sum->conns_open, 7);
    free(sum);
    gw->nworkers = 0;              /* a gw that no pool made counts as one worker */
    assert_int_equal(GW_SUM(gw, metrics.conns_open), 7);
    free(gw);
}

static void test_workers(void **state)
{
    (void)state;
    enum { N = 3 };
    gw_t *gws = calloc(N, sizeof *gws);
    for (int i = 0; i < N; i++) {
        gws[i].nworkers = N;
        gws[i].worker = i;
        gws[i].workers = gws;
        gws[i].metrics.ws_open = (uint64_t)(i + 1);
        gws[i].metrics.http_responses[200] = 10;
        gws[i].metrics.bus_up = i != 1;
        gws[i].metrics.policy_loaded = i != 2;
    }
    for (int i = 0; i < N; i++) assert_int_equal(GW_SUM(&gws[i], metrics.ws_open), 6);
    metrics_t *sum = malloc(sizeof *sum);
    gw_sum_metrics(&gws[2], sum);
    assert_int_equal(sum->ws_open, 6);
    assert_int_equal(sum->http_responses[200], 30);
    assert_int_equal(sum->bus_up, 0);
    assert_int_equal(sum->policy_loaded, 0);
    free(sum);
    free(gws);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_worker),
        cmocka_unit_test(test_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
