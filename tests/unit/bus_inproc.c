/* Unit tests for bus_inproc (bus.h with options .inproc): two or three handles on one loop for
 * the exact semantics, then two loops on two threads for the one order under concurrency.
 * Checked: posts get epoch:seq in one order on every subscribed handle, the poster through its
 * callback and never through room_message; callbacks never run inside the call; room_publish,
 * presence and direct frames skip their sender; unsubscribe drops queued room events but not
 * post answers; presence add/update/remove/list and the leave events of a freed handle;
 * history ranges and gaps (other epoch, trimmed, newer than the last, none kept); the shared
 * token bucket; duplicate node ids; and no leak (the suite runs under ASan with SANITIZE=ON). */
#define _GNU_SOURCE 1 /* memmem */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "bus/bus.h"
#include "bus/bus_inproc.h"
#include "base/log.h"

#define MAXREC 4096

/* What one handle saw. */
typedef struct {
    char name[16];
    bus_t *bus;
    int nmsg, nplain, ndirect, npres, nposted;
    char msgs[MAXREC][48];         /* "epoch:seq" in arrival order (room msgs and own posts) */
    char last_payload[256];
    char last_origin[BUS_NODE_MAX];
    int last_event;
    char last_member[32], last_node[BUS_NODE_MAX];
    int last_muted;
} rec_t;

static void rec_id(rec_t *r, const proto_id_t *id)
{
    if (r->nmsg + r->nposted < MAXREC)
        snprintf(r->msgs[r->nmsg + r->nposted], sizeof r->msgs[0], "%s:%" PRIu64, id->epoch, id->seq);
}

static void on_message(void *arg, const char *room, sbuf_t *p, const char *origin, const proto_id_t *id)
{
    rec_t *r = arg;
    snprintf(r->last_payload, sizeof r->last_payload, "%.*s", (int)p->len, p->data);
    snprintf(r->last_origin, sizeof r->last_origin, "%s", origin);
    if (id) {
        rec_id(r, id);
        r->nmsg++;
    } else {
        r->nplain++;
    }
    (void)room;
}

static void on_presence(void *arg, const char *room, int event, const bus_member_t *m)
{
    rec_t *r = arg;
    r->npres++;
    r->last_event = event;
    r->last_muted = m->muted;
    snprintf(r->last_member, sizeof r->last_member, "%s", m->id);
    snprintf(r->last_node, sizeof r->last_node, "%s", m->node);
    (void)room;
}

static void on_direct(void *arg, const char *to, sbuf_t *p, const char *origin)
{
    rec_t *r = arg;
    r->ndirect++;
    snprintf(r->last_payload, sizeof r->last_payload, "%s|%.*s", to, (int)p->len, p->data);
    (void)origin;
}

static const bus_handlers_t handlers = {.room_message = on_message, .presence = on_presence, .direct = on_direct};

static void on_posted(void *arg, int status, const proto_id_t *id, sbuf_t *payload)
{
    rec_t *r = arg;
    assert_int_equal(status, 0);
    assert_non_null(memmem(payload->data, payload->len, "\"id\":\"", 6));
    rec_id(r, id);
    r->nposted++;
}

static void open_bus(uv_loop_t *loop, bus_inproc_t *sh, const char *node, rec_t *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", node);
    bus_options_t o = {.node_id = node, .inproc = sh, .history_size = 4};
    char err[128];
    assert_int_equal(bus_open(loop, &o, &handlers, r, &r->bus, err, sizeof err), 0);
    assert_string_equal(bus_kind(r->bus), "inproc");
}

/* The buses' async handles do not keep a loop alive (as in the server, where listeners do):
 * a long timer does, so that uv_run polls them. */
static void keepalive_fired(uv_timer_t *t)
{
    (void)t;
    fail_msg("a test ran for 10 minutes");
}

static uv_timer_t *keepalive(uv_loop_t *loop)
{
    uv_timer_t *t = calloc(1, sizeof *t);
    uv_timer_init(loop, t);
    uv_timer_start(t, keepalive_fired, 600000, 0);
    return t;
}

static void keepalive_closed(uv_handle_t *h) { free(h); }

static void spin(uv_loop_t *loop)
{
    for (int i = 0; i < 20; i++) uv_run(loop, UV_RUN_NOWAIT);
}

static void close_all(uv_loop_t *loop, bus_inproc_t *sh, uv_timer_t *ka)
{
    spin(loop);
    uv_close((uv_handle_t *)ka, keepalive_closed);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
    bus_inproc_free(sh);
}

/* A loop kept alive, one shared state and n buses on it named "a", "b", ... in r[]. */
static bus_inproc_t *nodes_open(uv_loop_t *loop, uv_timer_t **ka, rec_t **r, int n)
{
    uv_loop_init(loop);
    *ka = keepalive(loop);
    bus_inproc_t *sh = bus_inproc_new(4);
    for (int i = 0; i < n; i++) {
        char name[2] = {(char)('a' + i), '\0'};
        r[i] = calloc(1, sizeof *r[i]);
        open_bus(loop, sh, name, r[i]);
    }
    return sh;
}

/* Frees the buses still open (a test that freed one sets it to NULL), the loop and r[]. */
static void nodes_close(uv_loop_t *loop, bus_inproc_t *sh, uv_timer_t *ka, rec_t **r, int n)
{
    for (int i = 0; i < n; i++)
        if (r[i]->bus) bus_free(r[i]->bus);
    close_all(loop, sh, ka);
    for (int i = 0; i < n; i++) free(r[i]);
}

/* A msg without its id, as proto_msg_unnumbered makes it; returns where the id goes. */
static size_t tmpl(char *out, size_t len, const char *text)
{
    static const char head[] = "{\"type\":\"msg\",\"room\":\"r\",\"id\":\"";
    snprintf(out, len, "%s\",\"text\":\"%s\"}", head, text);
    return sizeof head - 1;
}

static int post(rec_t *r, const char *room, const char *text)
{
    char t[200];
    size_t at = tmpl(t, sizeof t, text);
    return bus_room_post(r->bus, room, t, strlen(t), at, on_posted, r);
}

/* ---- one loop ---- */

static void test_post_order(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_timer_t *ka;
    rec_t *r[3];
    bus_inproc_t *sh = nodes_open(&loop, &ka, r, 3);
    rec_t *a = r[0], *b = r[1], *c = r[2];
    bus_room_subscribe(a->bus, "r");
    bus_room_subscribe(b->bus, "r");           /* c does not hear r */
    assert_int_equal(bus_room_post(a->bus, "r", "no slot", 7, 8, on_posted, a), GW_EINVAL);   /* past the end */
    for (int i = 0; i < 6; i++) assert_int_equal(post(i % 2 ? b : a, "r", "hi"), 0);
    assert_int_equal(a->nposted + a->nmsg + b->nposted + b->nmsg, 0);   /* never inside the call */
    spin(&loop);
    assert_int_equal(a->nposted, 3);
    assert_int_equal(a->nmsg, 3);              /* b's posts; its own come back only as posts */
    assert_int_equal(b->nposted, 3);
    assert_int_equal(b->nmsg, 3);
    assert_int_equal(c->nmsg, 0);
    for (int i = 0; i < 6; i++) assert_string_equal(a->msgs[i], b->msgs[i]);   /* one order */
    for (int i = 1; i < 6; i++) {
        const char *x = strrchr(a->msgs[i], ':'), *y = strrchr(a->msgs[i - 1], ':');
        assert_int_equal(strtoull(x + 1, NULL, 10), strtoull(y + 1, NULL, 10) + 1);
    }
    assert_string_equal(b->last_origin, "a");
    assert_non_null(strstr(b->last_payload, a->msgs[4]));   /* the id is written into the payload */

    /* a post into a room its poster does not hear still answers, later */
    assert_int_equal(post(c, "r", "from c"), 0);
    assert_int_equal(c->nposted, 0);
    spin(&loop);
    assert_int_equal(c->nposted, 1);
    assert_int_equal(a->nmsg, 4);
    nodes_close(&loop, sh, ka, r, 3);
}

static void test_publish_direct_unsubscribe(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_timer_t *ka;
    rec_t *r[2];
    bus_inproc_t *sh = nodes_open(&loop, &ka, r, 2);
    rec_t *a = r[0], *b = r[1];
    bus_options_t dup = {.node_id = "a", .inproc = sh};
    bus_t *x;
    char err[128];
    assert_int_equal(bus_open(&loop, &dup, &handlers, NULL, &x, err, sizeof err), GW_EINVAL);
    bus_room_subscribe(a->bus, "r");
    bus_room_subscribe(b->bus, "r");
    assert_int_equal(bus_room_publish(a->bus, "r", "sig", 3), 0);
    assert_int_equal(bus_direct_publish(a->bus, "conn1", "dm", 2), 0);
    spin(&loop);
    assert_int_equal(a->nplain + a->ndirect, 0);   /* own messages are never handed back */
    assert_int_equal(b->nplain, 1);
    assert_int_equal(b->ndirect, 1);
    assert_string_equal(b->last_payload, "conn1|dm");

    /* queued room events go with the unsubscribe; post answers stay */
    assert_int_equal(post(a, "r", "one"), 0);
    assert_int_equal(post(b, "r", "two"), 0);
    bus_room_unsubscribe(b->bus, "r");
    spin(&loop);
    assert_int_equal(b->nmsg, 0);
    assert_int_equal(b->nposted, 1);
    assert_int_equal(a->nposted, 1);
    assert_int_equal(a->nmsg, 1);

    bus_stats_t st;
    bus_stats_get(a->bus, &st);
    assert_int_equal(st.up, 1);
    assert_true(st.published >= 3);
    nodes_close(&loop, sh, ka, r, 2);
}

typedef struct {
    int calls, status;
    size_t n;
    char ids[8][32], nodes[8][BUS_NODE_MAX];
    int muted[8];
} list_t;

static void on_list(void *arg, int status, const bus_member_t *m, size_t n)
{
    list_t *l = arg;
    l->calls++;
    l->status = status;
    l->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(l->ids[i], sizeof l->ids[i], "%s", m[i].id);
        snprintf(l->nodes[i], sizeof l->nodes[i], "%s", m[i].node);
        l->muted[i] = m[i].muted;
    }
}

static void test_presence(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_timer_t *ka;
    rec_t *r[2];
    bus_inproc_t *sh = nodes_open(&loop, &ka, r, 2);
    rec_t *a = r[0], *b = r[1];
    bus_room_subscribe(a->bus, "r");
    bus_room_subscribe(b->bus, "r");
    bus_member_t m = {"m1", "alice", 0, NULL};
    bus_member_t noid = {NULL, "x", 0, NULL};
    assert_int_equal(bus_presence_add(a->bus, "r", &noid), GW_EINVAL);
    assert_int_equal(bus_presence_add(a->bus, "r", &m), 0);
    spin(&loop);
    assert_int_equal(a->npres, 0);
    assert_int_equal(b->npres, 1);
    assert_int_equal(b->last_event, BUS_PRESENCE_JOIN);
    assert_string_equal(b->last_member, "m1");
    assert_string_equal(b->last_node, "a");
    assert_int_equal(bus_presence_add(a->bus, "r", &m), 0);   /* unchanged: no event */
    m.muted = 1;
    assert_int_equal(bus_presence_add(a->bus, "r", &m), 0);
    spin(&loop);
    assert_int_equal(b->npres, 2);
    assert_int_equal(b->last_event, BUS_PRESENCE_UPDATE);
    assert_int_equal(b->last_muted, 1);

    bus_member_t m2 = {"m2", "bob", 0, NULL};
    bus_presence_add(b->bus, "r", &m2);
    list_t l = {0};
    assert_int_equal(bus_presence_list(b->bus, "r", on_list, &l), 0);
    assert_int_equal(l.calls, 0);
    spin(&loop);
    assert_int_equal(l.calls, 1);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.ids[0], "m1");
    assert_string_equal(l.nodes[0], "a");
    assert_int_equal(l.muted[0], 1);
    assert_string_equal(l.nodes[1], "b");
    assert_int_equal(a->npres, 1);             /* bob's join */

    assert_int_equal(bus_presence_remove(b->bus, "r", "m2"), 0);
    spin(&loop);
    assert_int_equal(a->last_event, BUS_PRESENCE_LEAVE);
    assert_string_equal(a->last_member, "m2");
    /* a handle that goes takes its members with it: leave events in its name */
    bus_free(a->bus);
    a->bus = NULL;
    spin(&loop);
    assert_int_equal(b->last_event, BUS_PRESENCE_LEAVE);
    assert_string_equal(b->last_member, "m1");
    assert_string_equal(b->last_node, "a");
    memset(&l, 0, sizeof l);
    bus_presence_list(b->bus, "r", on_list, &l);
    spin(&loop);
    assert_int_equal(l.n, 0);
    nodes_close(&loop, sh, ka, r, 2);
}

typedef struct {
    int calls, status, gap;
    proto_id_t last;
    size_t n;
    uint64_t seqs[8];
} range_t;

static void on_range(void *arg, int status, const bus_history_t *h)
{
    range_t *r = arg;
    r->calls++;
    r->status = status;
    r->gap = h->gap;
    r->last = h->last;
    r->n = h->n;
    for (size_t i = 0; i < h->n && i < 8; i++) {
        r->seqs[i] = h->seqs[i];
        assert_non_null(memmem(h->msgs[i]->data, h->msgs[i]->len, "\"text\"", 6));
    }
}

static range_t range(uv_loop_t *loop, rec_t *r, const char *room, const char *since)
{
    range_t out = {0};
    proto_id_t id;
    if (since) assert_int_equal(proto_id_parse(since, strlen(since), &id), 0);
    assert_int_equal(bus_history_range(r->bus, room, since ? &id : NULL, on_range, &out), 0);
    spin(loop);
    assert_int_equal(out.calls, 1);
    return out;
}

static void test_history(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_timer_t *ka;
    rec_t *r[2];
    bus_inproc_t *sh = nodes_open(&loop, &ka, r, 2);
    rec_t *a = r[0], *b = r[1];
    bus_room_subscribe(a->bus, "r");
    range_t h = range(&loop, b, "r", NULL);    /* nothing yet */
    assert_int_equal(h.n, 0);
    assert_string_equal(h.last.epoch, "");
    h = range(&loop, b, "r", "x:1");
    assert_int_equal(h.gap, 1);
    for (int i = 0; i < 6; i++) post(a, "r", "t");
    spin(&loop);
    const char *id = a->msgs[2];               /* seq 3 */
    char epoch[PROTO_EPOCH_MAX];
    snprintf(epoch, sizeof epoch, "%.*s", (int)(strrchr(id, ':') - id), id);
    h = range(&loop, b, "r", NULL);            /* the newest history_size */
    assert_int_equal(h.n, 4);
    assert_int_equal(h.seqs[0], 3);
    assert_int_equal(h.last.seq, 6);
    assert_string_equal(h.last.epoch, epoch);
    char since[64];
    snprintf(since, sizeof since, "%s:4", epoch);
    h = range(&loop, b, "r", since);
    assert_int_equal(h.gap, 0);
    assert_int_equal(h.n, 2);
    assert_int_equal(h.seqs[0], 5);
    snprintf(since, sizeof since, "%s:6", epoch);
    h = range(&loop, b, "r", since);
    assert_int_equal(h.gap, 0);
    assert_int_equal(h.n, 0);
    snprintf(since, sizeof since, "%s:1", epoch);   /* trimmed away */
    h = range(&loop, b, "r", since);
    assert_int_equal(h.gap, 1);
    assert_int_equal(h.n, 4);
    snprintf(since, sizeof since, "%s:9", epoch);   /* newer than the last */
    assert_int_equal(range(&loop, b, "r", since).gap, 1);
    assert_int_equal(range(&loop, b, "r", "other:5").gap, 1);
    proto_id_t bad;
    assert_int_equal(proto_id_parse("nocolon", 7, &bad), GW_EINVAL);   /* envelope ids; a since is proto's */
    assert_int_equal(proto_id_parse("e:1x", 4, &bad), GW_EINVAL);
    /* the room goes with its last subscriber: a new epoch later */
    bus_room_unsubscribe(a->bus, "r");
    spin(&loop);
    h = range(&loop, b, "r", NULL);
    assert_int_equal(h.n, 0);
    nodes_close(&loop, sh, ka, r, 2);
}

typedef struct {
    int calls, allowed;
} take_t;

static void on_take(void *arg, int status, int allowed, double tokens)
{
    take_t *t = arg;
    assert_int_equal(status, 0);
    t->calls++;
    t->allowed += allowed;
    (void)tokens;
}

static void test_limit(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_timer_t *ka;
    rec_t *r[2];
    bus_inproc_t *sh = nodes_open(&loop, &ka, r, 2);
    rec_t *a = r[0], *b = r[1];
    take_t t = {0};
    assert_int_equal(bus_limit_take(a->bus, "k", 0, 1, on_take, &t), GW_EINVAL);
    assert_int_equal(bus_limit_take(a->bus, "k", 1, 0.5, on_take, &t), GW_EINVAL);
    for (int i = 0; i < 5; i++) assert_int_equal(bus_limit_take(i % 2 ? a->bus : b->bus, "k", 0.001, 3, on_take, &t), 0);
    assert_int_equal(t.calls, 0);
    spin(&loop);
    assert_int_equal(t.calls, 5);
    assert_int_equal(t.allowed, 3);            /* one bucket for both handles */
    nodes_close(&loop, sh, ka, r, 2);
}

/* ---- two loops, two threads ---- */

#define POSTS 2000

typedef struct {
    uv_loop_t loop;
    uv_timer_t *ka;
    rec_t *rec;
    uv_barrier_t *start;
} worker_arg_t;

static void worker_run(void *p)
{
    worker_arg_t *w = p;
    uv_barrier_wait(w->start);
    for (int i = 0; i < POSTS; i++) {
        if (post(w->rec, "r", "x") != 0) abort();
        if (i % 64 == 0) uv_run(&w->loop, UV_RUN_NOWAIT);
    }
    uint64_t end = uv_hrtime() + 10ull * 1000000000ull;
    while (w->rec->nmsg + w->rec->nposted < 2 * POSTS && uv_hrtime() < end) uv_run(&w->loop, UV_RUN_ONCE);
}

static void test_threads(void **state)
{
    (void)state;
    bus_inproc_t *sh = bus_inproc_new(8);
    uv_barrier_t start;
    uv_barrier_init(&start, 2);
    worker_arg_t w[2];
    uv_thread_t th[2];
    for (int i = 0; i < 2; i++) {
        uv_loop_init(&w[i].loop);
        w[i].rec = calloc(1, sizeof *w[i].rec);
        w[i].start = &start;
        open_bus(&w[i].loop, sh, i ? "w1" : "w0", w[i].rec);
        bus_room_subscribe(w[i].rec->bus, "r");
        w[i].ka = keepalive(&w[i].loop);
    }
    for (int i = 0; i < 2; i++) assert_int_equal(uv_thread_create(&th[i], worker_run, &w[i]), 0);
    for (int i = 0; i < 2; i++) uv_thread_join(&th[i]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(w[i].rec->nposted, POSTS);
        assert_int_equal(w[i].rec->nmsg, POSTS);
    }
    for (int k = 0; k < 2 * POSTS; k++) assert_string_equal(w[0].rec->msgs[k], w[1].rec->msgs[k]);
    for (int i = 0; i < 2; i++) {
        bus_free(w[i].rec->bus);
        uv_close((uv_handle_t *)w[i].ka, keepalive_closed);
        uv_run(&w[i].loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&w[i].loop), 0);
        free(w[i].rec);
    }
    uv_barrier_destroy(&start);
    bus_inproc_free(sh);
}

int main(void)
{
    log_level_set(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post_order), cmocka_unit_test(test_publish_direct_unsubscribe),
        cmocka_unit_test(test_presence),   cmocka_unit_test(test_history),
        cmocka_unit_test(test_limit),      cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
