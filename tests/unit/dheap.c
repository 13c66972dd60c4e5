/* dheap: the minimum is always the earliest due, through inserts, moves both ways and removals
 * anywhere, checked against a plain array over many random operations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "net/dheap.h"

#define N 300

static uint64_t oracle_min(const dheap_node_t *nodes, size_t n)
{
    uint64_t m = UINT64_MAX;
    for (size_t i = 0; i < n; i++)
        if (nodes[i].pos && nodes[i].due < m) m = nodes[i].due;
    return m;
}

static void check(const dheap_t *h, const dheap_node_t *nodes)
{
    size_t in = 0;
    for (size_t i = 0; i < N; i++) in += nodes[i].pos != 0;
    assert_int_equal(h->n, in);
    for (size_t i = 0; i < h->n; i++) {
        assert_int_equal(h->v[i]->pos, i + 1);                                    /* positions kept */
        if (i) assert_true(h->v[(i - 1) / 2]->due <= h->v[i]->due);               /* heap order */
    }
    if (in) assert_int_equal(dheap_min(h)->due, oracle_min(nodes, N));
    else assert_null(dheap_min(h));
}

static void test_basic(void **state)
{
    (void)state;
    dheap_t h;
    dheap_init(&h);
    dheap_node_t a = {0}, b = {0}, c = {0};
    assert_null(dheap_min(&h));
    dheap_set(&h, &a, 30);
    dheap_set(&h, &b, 10);
    dheap_set(&h, &c, 20);
    assert_ptr_equal(dheap_min(&h), &b);
    dheap_set(&h, &b, 40);                 /* later: c comes first */
    assert_ptr_equal(dheap_min(&h), &c);
    dheap_set(&h, &a, 5);                  /* earlier */
    assert_ptr_equal(dheap_min(&h), &a);
    dheap_remove(&h, &a);
    dheap_remove(&h, &a);                  /* twice: nothing */
    assert_int_equal(a.pos, 0);
    assert_ptr_equal(dheap_min(&h), &c);
    dheap_free(&h);
    assert_int_equal(b.pos, 0);            /* nodes left in the heap are marked out */
    assert_int_equal(c.pos, 0);
}

static void test_random(void **state)
{
    (void)state;
    static dheap_node_t nodes[N];
    dheap_t h;
    dheap_init(&h);
    srand(7);
    for (int op = 0; op < 20000; op++) {
        dheap_node_t *n = &nodes[rand() % N];
        int r = rand() % 10;
        if (r < 6) dheap_set(&h, n, (uint64_t)(rand() % 1000));   /* ties on purpose */
        else if (r < 9) dheap_remove(&h, n);
        else if (h.n) dheap_remove(&h, dheap_min(&h));
        if (op % 97 == 0) check(&h, nodes);
    }
    check(&h, nodes);
    /* draining by the minimum gives the dues in order */
    uint64_t last = 0;
    while (dheap_min(&h)) {
        dheap_node_t *m = dheap_min(&h);
        assert_true(m->due >= last);
        last = m->due;
        dheap_remove(&h, m);
    }
    check(&h, nodes);
    dheap_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
