/* Unit tests for bus.h: bus_local, the redis_url parser, and bus_redis against a real
 * redis-server that the test starts itself on a free loopback port (--save '' --appendonly no)
 * and kills at the end. Two buses (two node ids) share one uv loop; a third runs on its own
 * loop so that it can "freeze" like a stalled or killed process. Checked: cross-node delivery
 * exactly once and in one order, no self-delivery, subscribe/unsubscribe, presence events,
 * lists and heartbeat expiry, history ids, ranges and gaps (trimmed, lost keys -> new epoch),
 * the shared token bucket (and EVALSHA's NOSCRIPT fallback), AUTH with a password file and a
 * database number, and an outage: redis-server stopped mid-test, the bus reports down, local
 * calls fail fast, then redis-server restarts on the same port and the bus reconnects,
 * resubscribes and re-registers presence. Every wait is bounded. Without redis-server the
 * Redis tests are skipped with a message. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "bus/bus.h"
#include "base/log.h"

/* ---- redis-server ---- */

static char redis_bin[PATH_MAX];

typedef struct {
    pid_t pid;
    int port;
    const char *password;          /* --requirepass, or NULL */
} redis_t;

static int redis_find(void)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/bin:/usr/sbin:/usr/local/bin", path ? path : "");
    for (char *save, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(redis_bin, sizeof redis_bin, "%s/redis-server", d);
        if (access(redis_bin, X_OK) == 0) return 1;
    }
    return 0;
}

static int port_free(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *admin_connect(const redis_t *rs)
{
    struct timeval tv = {0, 300000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", rs->port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){2, 0});
    if (rs->password) {
        redisReply *r = redisCommand(c, "AUTH %s", rs->password);
        if (r) freeReplyObject(r);
    }
    return c;
}

static int redis_start(redis_t *rs)
{
    char port[16];
    snprintf(port, sizeof port, "%d", rs->port);
    rs->pid = fork();
    if (rs->pid < 0) return -1;
    if (rs->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (rs->password)
            execl(redis_bin, redis_bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--daemonize", "no", "--dir", "/tmp", "--loglevel", "warning", "--requirepass", rs->password,
                  (char *)NULL);
        else
            execl(redis_bin, redis_bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--daemonize", "no", "--dir", "/tmp", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        int st;
        if (waitpid(rs->pid, &st, WNOHANG) == rs->pid) {
            rs->pid = 0;
            return -1;
        }
        redisContext *c = admin_connect(rs);
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) freeReplyObject(r);
            redisFree(c);
            if (ok) return 0;
        }
        usleep(10000);
    }
    return -1;
}

static void redis_stop(redis_t *rs)
{
    if (rs->pid <= 0) return;
    kill(rs->pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(rs->pid, NULL, WNOHANG) == rs->pid) {
            rs->pid = 0;
            return;
        }
        usleep(10000);
    }
    kill(rs->pid, SIGKILL);
    waitpid(rs->pid, NULL, 0);
    rs->pid = 0;
}

static redisReply *admin(const redis_t *rs, const char *fmt, ...)
{
    redisContext *c = admin_connect(rs);
    if (!c) return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* ---- the loop and the recorders ---- */

static uv_loop_t loop, loop2;
static uv_timer_t pulse, pulse2;   /* keep UV_RUN_ONCE from sleeping past a deadline */
static int use_loop2;              /* WAIT also turns loop2 */
static redis_t srv;
static int have_redis;

static void on_pulse(uv_timer_t *t) {}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void turn(void)
{
    if (use_loop2) uv_run(&loop2, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_ONCE);
}

#define WAIT(cond, ms)                                              \
    ({                                                              \
        uint64_t dl_ = now_ms() + (ms);                             \
        while (!(cond) && now_ms() < dl_) turn();                   \
        (cond);                                                     \
    })

static void run_for(unsigned ms)
{
    uint64_t dl = now_ms() + ms;
    while (now_ms() < dl) turn();
}

typedef struct {
    char room[64];
    char origin[BUS_NODE_MAX];
    int has_id;
    proto_id_t id;
    char payload[256];
} rmsg_t;

typedef struct {
    char room[64];
    int ev;
    char id[64], name[64], node[BUS_NODE_MAX];
    int muted;
} rpres_t;

typedef struct {
    const char *label;
    bus_t *bus;
    int up, ups, downs;
    rmsg_t msgs[1024];
    size_t nmsgs;
    rpres_t pres[256];
    size_t npres;
    char direct_to[64], direct_payload[64], direct_origin[BUS_NODE_MAX];
    int ndirect;
    char tl_room[64];              /* the timeline: msg seqs shown to this node's members, in order */
    uint64_t tl[256];
    size_t ntl;
} node_t;

static node_t A = {.label = "A"}, B = {.label = "B"}, C = {.label = "C"};

static void rec_reset(node_t *n)
{
    n->nmsgs = n->npres = n->ntl = 0;
    n->ndirect = 0;
}

static void h_room(void *arg, const char *room, sbuf_t *p, const char *origin, const proto_id_t *id)
{
    node_t *n = arg;
    assert_true(n->nmsgs < 1024);
    rmsg_t *m = &n->msgs[n->nmsgs++];
    snprintf(m->room, sizeof m->room, "%s", room);
    snprintf(m->origin, sizeof m->origin, "%s", origin);
    m->has_id = id != NULL;
    if (id) m->id = *id;
    snprintf(m->payload, sizeof m->payload, "%.*s", (int)p->len, p->data);
    if (id && !strcmp(room, n->tl_room) && n->ntl < 256) n->tl[n->ntl++] = id->seq;
}

static void h_presence(void *arg, const char *room, int ev, const bus_member_t *m)
{
    node_t *n = arg;
    assert_true(n->npres < 256);
    rpres_t *e = &n->pres[n->npres++];
    snprintf(e->room, sizeof e->room, "%s", room);
    e->ev = ev;
    snprintf(e->id, sizeof e->id, "%s", m->id);
    snprintf(e->name, sizeof e->name, "%s", m->name);
    snprintf(e->node, sizeof e->node, "%s", m->node);
    e->muted = m->muted;
}

static void h_direct(void *arg, const char *to, sbuf_t *p, const char *origin)
{
    node_t *n = arg;
    n->ndirect++;
    snprintf(n->direct_to, sizeof n->direct_to, "%s", to);
    snprintf(n->direct_payload, sizeof n->direct_payload, "%.*s", (int)p->len, p->data);
    snprintf(n->direct_origin, sizeof n->direct_origin, "%s", origin);
}

static void h_status(void *arg, int up)
{
    node_t *n = arg;
    n->up = up;
    if (up) n->ups++;
    else n->downs++;
}

static const bus_handlers_t handlers = {h_room, h_presence, h_direct, h_status};

static void node_open(node_t *n, uv_loop_t *lp, const char *url, const char *node_id, long ttl_ms, long history)
{
    bus_options_t o = {
        .redis_url = url,
        .node_id = node_id,
        .connect_timeout_ms = 500,
        .command_timeout_ms = 1000,
        .backoff_min_ms = 50,
        .backoff_max_ms = 400,
        .presence_ttl_ms = ttl_ms,
        .history_size = history,
    };
    char err[256] = "";
    n->up = n->ups = n->downs = 0;
    rec_reset(n);
    int rc = bus_open(lp, &o, &handlers, n, &n->bus, err, sizeof err);
    if (rc) fprintf(stderr, "bus_open: %s\n", err);
    assert_int_equal(rc, 0);
    assert_string_equal(bus_kind(n->bus), "redis");
}

static int has_msg(const node_t *n, const char *room, const char *payload)
{
    for (size_t i = 0; i < n->nmsgs; i++)
        if (!strcmp(n->msgs[i].room, room) && !strcmp(n->msgs[i].payload, payload)) return 1;
    return 0;
}

static int has_pres(const node_t *n, const char *room, int ev, const char *id)
{
    for (size_t i = 0; i < n->npres; i++)
        if (!strcmp(n->pres[i].room, room) && n->pres[i].ev == ev && !strcmp(n->pres[i].id, id)) return 1;
    return 0;
}

/* Returns once `to` demonstrably hears `from` on room (its SUBSCRIBE took effect). */
static void sub_barrier(node_t *from, node_t *to, const char *room)
{
    static int seq;
    for (int i = 0; i < 100; i++) {
        char probe[64];
        snprintf(probe, sizeof probe, "probe-%d", ++seq);
        if (bus_room_publish(from->bus, room, probe, strlen(probe)) != 0) {
            run_for(20);
            continue;
        }
        if (WAIT(has_msg(to, room, probe), 100)) return;
    }
    fail_msg("node %s never heard %s on %s", to->label, from->label, room);
}

/* ---- callbacks of requests ---- */

typedef struct {
    node_t *n;
    char room[64];
    int done, status;
    proto_id_t id;
    char payload[256];
} post_t;

static void on_post(void *arg, int status, const proto_id_t *id, sbuf_t *p)
{
    post_t *c = arg;
    assert_false(c->done);
    c->done = 1;
    c->status = status;
    if (status) return;
    c->id = *id;
    snprintf(c->payload, sizeof c->payload, "%.*s", (int)p->len, p->data);
    node_t *n = c->n;
    if (!strcmp(c->room, n->tl_room) && n->ntl < 256) n->tl[n->ntl++] = id->seq;
}

static int post(node_t *n, post_t *c, const char *room, const char *text)
{
    char payload[256];
    int at = snprintf(payload, sizeof payload, "{\"type\":\"msg\",\"room\":\"%s\",\"id\":\"", room);
    snprintf(payload + at, sizeof payload - (size_t)at, "\",\"text\":\"%s\"}", text);
    memset(c, 0, sizeof *c);
    c->n = n;
    snprintf(c->room, sizeof c->room, "%s", room);
    return bus_room_post(n->bus, room, payload, strlen(payload), (size_t)at, on_post, c);
}

static int posts_done(const post_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!c[i].done) return 0;
    return 1;
}

typedef struct {
    int done, status;
    size_t n;
    bus_member_t m[16];
    char ids[16][64], nodes[16][BUS_NODE_MAX];
    int muted[16];
} list_t;

static void on_list(void *arg, int status, const bus_member_t *ms, size_t n)
{
    list_t *l = arg;
    l->done = 1;
    l->status = status;
    l->n = n;
    for (size_t i = 0; i < n && i < 16; i++) {
        snprintf(l->ids[i], sizeof l->ids[i], "%s", ms[i].id);
        snprintf(l->nodes[i], sizeof l->nodes[i], "%s", ms[i].node);
        l->muted[i] = ms[i].muted;
    }
}

static list_t list_of(node_t *n, const char *room)
{
    list_t l = {0};
    assert_int_equal(bus_presence_list(n->bus, room, on_list, &l), 0);
    assert_true(WAIT(l.done, 2000));
    assert_int_equal(l.status, 0);
    return l;
}

static const char *list_node(const list_t *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->ids[i], id)) return l->nodes[i];
    return NULL;
}

typedef struct {
    int done, status, gap;
    proto_id_t last;
    size_t n;
    uint64_t seqs[512];
    char first[256];
} range_t;

static void on_range(void *arg, int status, const bus_history_t *h)
{
    range_t *r = arg;
    r->done = 1;
    r->status = status;
    if (status) return;
    r->gap = h->gap;
    r->last = h->last;
    r->n = h->n;
    for (size_t i = 0; i < h->n && i < 512; i++) r->seqs[i] = h->seqs[i];
    if (h->n) snprintf(r->first, sizeof r->first, "%.*s", (int)h->msgs[0]->len, h->msgs[0]->data);
}

static range_t range_of(node_t *n, const char *room, const char *since)
{
    range_t r = {0};
    proto_id_t id;
    if (since) assert_int_equal(proto_id_parse(since, strlen(since), &id), 0);
    assert_int_equal(bus_history_range(n->bus, room, since ? &id : NULL, on_range, &r), 0);
    assert_true(WAIT(r.done, 2000));
    assert_int_equal(r.status, 0);
    return r;
}

typedef struct {
    int done, status, allowed;
    double tokens;
} limit_t;

static void on_limit(void *arg, int status, int allowed, double tokens)
{
    limit_t *l = arg;
    l->done = 1;
    l->status = status;
    l->allowed = allowed;
    l->tokens = tokens;
}

static int take(node_t *n, const char *key, double rate, double burst)
{
    limit_t l = {0};
    assert_int_equal(bus_limit_take(n->bus, key, rate, burst, on_limit, &l), 0);
    assert_true(WAIT(l.done, 2000));
    assert_int_equal(l.status, 0);
    return l.allowed;
}

/* ---- tests without Redis ---- */

static void test_url_parse(void **state)
{
    bus_url_t u;
    char err[256];
    assert_int_equal(bus_url_parse("redis://localhost", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_null(u.password);
    bus_url_free(&u);

    assert_int_equal(bus_url_parse("redis://:p%40ss@10.0.0.1:6380/3", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "10.0.0.1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    assert_null(u.user);
    assert_string_equal(u.password, "p@ss");
    bus_url_free(&u);

    assert_int_equal(bus_url_parse("redis://app:secret@[::1]:7000/", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "secret");
    assert_int_equal(u.port, 7000);
    bus_url_free(&u);

    const char *bad[] = {"", "localhost:6379", "http://x", "rediss://x", "redis://", "redis://h:0",
                         "redis://h:99999", "redis://h:12x", "redis://h/db", "redis://[::1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(bus_url_parse(bad[i], &u, err, sizeof err), GW_EINVAL);
        assert_non_null(strstr(err, "redis_url"));
    }
}

static void test_local(void **state)
{
    uv_loop_t lp;
    uv_loop_init(&lp);
    bus_t *b;
    char err[128];
    bus_options_t o = {.redis_url = "", .node_id = "solo"};
    assert_int_equal(bus_open(&lp, &o, &handlers, &A, &b, err, sizeof err), 0);
    assert_string_equal(bus_kind(b), "local");
    assert_string_equal(bus_node_id(b), "solo");
    assert_int_equal(bus_room_subscribe(b, "r"), 0);
    assert_int_equal(bus_room_publish(b, "r", "x", 1), 0);
    assert_int_equal(bus_direct_publish(b, "c", "x", 1), 0);
    bus_member_t m = {"id1", "Ann", 0, NULL};
    assert_int_equal(bus_presence_add(b, "r", &m), 0);
    assert_int_equal(bus_presence_remove(b, "r", "id1"), 0);
    assert_int_equal(bus_room_post(b, "r", "\"id\":\"\"", 7, 6, on_post, NULL), GW_ENOTSUP);
    assert_int_equal(bus_presence_list(b, "r", on_list, NULL), GW_ENOTSUP);
    assert_int_equal(bus_history_range(b, "r", NULL, on_range, NULL), GW_ENOTSUP);
    assert_int_equal(bus_limit_take(b, "k", 1, 1, on_limit, NULL), GW_ENOTSUP);
    assert_int_equal(bus_room_unsubscribe(b, "r"), 0);
    bus_stats_t st;
    bus_stats_get(b, &st);
    assert_int_equal(st.up, 1);
    bus_free(b);
    assert_int_equal(uv_run(&lp, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&lp), 0);

    assert_int_equal(bus_open(&lp, &(bus_options_t){.redis_url = "rediss://x"}, NULL, NULL, &b, err, sizeof err),
                     GW_EINVAL);
    assert_non_null(strstr(err, "redis_url"));
    assert_string_equal(gw_strerror(GW_EDOWN), "the shared store is unreachable");

    /* redis_sentinels: a list of host[:port]; anything else is refused at open */
    static const char *const bad_sentinels[] = {",", "a:1,,b:2", "a:0", "redis://a:1", "a:1/3", ":pw@a:1", "a:x"};
    for (size_t i = 0; i < sizeof bad_sentinels / sizeof *bad_sentinels; i++) {
        err[0] = '\0';
        bus_options_t so = {.redis_url = "redis://x/0", .node_id = "s", .sentinels = bad_sentinels[i],
                            .sentinel_master = "m"};
        assert_int_equal(bus_open(&lp, &so, NULL, NULL, &b, err, sizeof err), GW_EINVAL);
        assert_non_null(strstr(err, "redis_sentinels"));
    }
    bus_options_t so = {.redis_url = "redis://x/0", .node_id = "s", .sentinels = "127.0.0.1:1,[::1]",
                        .sentinel_master = "m", .sentinel_password_file = "/nonexistent/pw"};
    assert_int_equal(bus_open(&lp, &so, NULL, NULL, &b, err, sizeof err), GW_EINVAL);
    assert_non_null(strstr(err, "/nonexistent/pw"));

    /* numbering: the id's text between head and tail, nothing else touched */
    const char *tmpl = "{\"type\":\"msg\",\"room\":\"r\",\"id\":\"\",\"text\":\"\\\"id\\\":\\\"\\\"\"}";
    size_t at = strlen("{\"type\":\"msg\",\"room\":\"r\",\"id\":\"");
    sbuf_t *s = proto_msg_number(tmpl, at, tmpl + at, strlen(tmpl) - at, &(proto_id_t){"abc", 42});
    assert_int_equal(s->len, strlen(tmpl) + strlen("abc:42"));
    assert_memory_equal(s->data, "{\"type\":\"msg\",\"room\":\"r\",\"id\":\"abc:42\",\"text\":\"\\\"id\\\":\\\"\\\"\"}", s->len);
    sbuf_unref(s);
    char text[PROTO_ID_TEXT_MAX];
    proto_id_t big = {"", UINT64_MAX}, back;
    memset(big.epoch, 'e', sizeof big.epoch - 1);
    big.epoch[sizeof big.epoch - 1] = '\0';
    size_t n = proto_id_text(&big, text);
    assert_int_equal(n, sizeof big.epoch - 1 + 1 + 20);   /* the longest id fits */
    assert_int_equal(proto_id_parse(text, n, &back), 0);   /* and comes back */
    assert_string_equal(back.epoch, big.epoch);
    assert_true(back.seq == UINT64_MAX);
    assert_int_equal(proto_id_parse("abc:42", 6, &back), 0);
    assert_string_equal(back.epoch, "abc");
    assert_int_equal(back.seq, 42);
}

/* ---- tests against redis-server ---- */

#define NEED_REDIS()                                                       \
    do {                                                                   \
        if (!have_redis) skip();                                           \
    } while (0)

static char url[64];

static int group_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    log_level_set(LOG_ERROR);
    have_redis = redis_find();
    if (!have_redis) {
        fprintf(stderr, "SKIP: redis-server not found in PATH; the bus_redis tests are skipped\n");
        return 0;
    }
    srv.port = port_free();
    if (srv.port <= 0 || redis_start(&srv) < 0) {
        fprintf(stderr, "cannot start %s on port %d\n", redis_bin, srv.port);
        return -1;
    }
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", srv.port);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &pulse);
    uv_timer_start(&pulse, on_pulse, 5, 5);
    node_open(&A, &loop, url, "node-a", 900, 50);
    node_open(&B, &loop, url, "node-b", 900, 50);
    if (!WAIT(A.up && B.up, 3000)) {
        fprintf(stderr, "buses did not come up\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    if (!have_redis) return 0;
    if (A.bus) bus_free(A.bus);
    if (B.bus) bus_free(B.bus);
    A.bus = B.bus = NULL;
    uv_close((uv_handle_t *)&pulse, NULL);
    uint64_t dl = now_ms() + 5000;
    while (uv_loop_alive(&loop) && now_ms() < dl) uv_run(&loop, UV_RUN_ONCE);
    int rc = uv_loop_close(&loop);
    redis_stop(&srv);
    if (rc) fprintf(stderr, "loop still has handles after bus_free\n");
    return rc ? -1 : 0;
}

static void test_connect(void **state)
{
    NEED_REDIS();
    assert_string_equal(bus_node_id(A.bus), "node-a");
    bus_stats_t st;
    bus_stats_get(A.bus, &st);
    assert_int_equal(st.up, 1);
    assert_int_equal(st.reconnects, 0);
    assert_int_equal(A.ups, 1);
    /* the heartbeat key exists with a TTL (the SET leaves with the next loop turn) */
    run_for(50);
    redisReply *r = admin(&srv, "PTTL chatgw:node:node-a");
    assert_non_null(r);
    assert_true(r->type == REDIS_REPLY_INTEGER && r->integer > 0 && r->integer <= 900);
    freeReplyObject(r);
}

static void test_fanout(void **state)
{
    NEED_REDIS();
    bus_room_subscribe(A.bus, "r1");
    bus_room_subscribe(B.bus, "r1");
    sub_barrier(&A, &B, "r1");
    sub_barrier(&B, &A, "r1");
    rec_reset(&A);
    rec_reset(&B);
    snprintf(A.tl_room, sizeof A.tl_room, "r1");
    snprintf(B.tl_room, sizeof B.tl_room, "r1");

    enum { N = 60 };
    static post_t p[N];
    for (int i = 0; i < N; i++) {
        char text[16];
        snprintf(text, sizeof text, "m%d", i);
        assert_int_equal(post(i % 2 ? &B : &A, &p[i], "r1", text), 0);
        if (i % 7 == 0) uv_run(&loop, UV_RUN_NOWAIT);   /* let replies interleave with sends */
    }
    assert_true(WAIT(posts_done(p, N) && A.nmsgs >= N / 2 && B.nmsgs >= N / 2, 5000));
    run_for(100);                  /* nothing more may arrive */

    /* ids: one epoch, seqs 1..N each once; the final payload carries the id */
    int seen[N + 1] = {0};
    for (int i = 0; i < N; i++) {
        assert_int_equal(p[i].status, 0);
        assert_string_equal(p[i].id.epoch, p[0].id.epoch);
        assert_true(p[i].id.seq >= 1 && p[i].id.seq <= N);
        assert_false(seen[p[i].id.seq]);
        seen[p[i].id.seq] = 1;
        char want[96];
        snprintf(want, sizeof want, "\"id\":\"%s:%" PRIu64 "\"", p[i].id.epoch, p[i].id.seq);
        assert_non_null(strstr(p[i].payload, want));
        assert_null(strstr(p[i].payload, "\"id\":\"\""));
    }
    /* exactly once, only the other node's, in its order, with the same bytes */
    assert_int_equal(A.nmsgs, N / 2);
    assert_int_equal(B.nmsgs, N / 2);
    for (int k = 0; k < N / 2; k++) {
        const rmsg_t *a = &A.msgs[k], *b = &B.msgs[k];
        assert_string_equal(a->origin, "node-b");
        assert_string_equal(b->origin, "node-a");
        assert_true(a->has_id && b->has_id);
        assert_string_equal(a->payload, p[2 * k + 1].payload);
        assert_string_equal(b->payload, p[2 * k].payload);
    }
    /* one order: both nodes show their members the same sequence, and it is 1..N */
    assert_int_equal(A.ntl, N);
    assert_int_equal(B.ntl, N);
    for (int k = 0; k < N; k++) {
        assert_int_equal(A.tl[k], (uint64_t)k + 1);
        assert_int_equal(B.tl[k], (uint64_t)k + 1);
    }
    A.tl_room[0] = B.tl_room[0] = '\0';

    /* plain publish and direct: the other node only */
    rec_reset(&A);
    rec_reset(&B);
    assert_int_equal(bus_room_publish(A.bus, "r1", "plain", 5), 0);
    assert_int_equal(bus_direct_publish(A.bus, "conn-x", "hello", 5), 0);
    assert_true(WAIT(has_msg(&B, "r1", "plain") && B.ndirect == 1, 2000));
    run_for(50);
    assert_int_equal(B.nmsgs, 1);
    assert_false(B.msgs[0].has_id);
    assert_string_equal(B.direct_to, "conn-x");
    assert_string_equal(B.direct_payload, "hello");
    assert_string_equal(B.direct_origin, "node-a");
    assert_int_equal(A.nmsgs, 0);
    assert_int_equal(A.ndirect, 0);

    post_t bad;
    memset(&bad, 0, sizeof bad);
    assert_int_equal(bus_room_post(A.bus, "r1", "{\"id\":\"x\"}", 10, 11, on_post, &bad), GW_EINVAL);

    bus_stats_t sa, sb;
    bus_stats_get(A.bus, &sa);
    bus_stats_get(B.bus, &sb);
    assert_true(sa.published >= N / 2 + 2);
    assert_true(sb.received >= N / 2 + 2);
}

static void test_unsubscribe(void **state)
{
    NEED_REDIS();
    assert_int_equal(bus_room_unsubscribe(B.bus, "r1"), 0);
    assert_int_equal(bus_room_subscribe(B.bus, "r2"), 0);
    sub_barrier(&A, &B, "r2");     /* B's UNSUBSCRIBE r1 went before its SUBSCRIBE r2 */
    rec_reset(&B);
    post_t p;
    assert_int_equal(post(&A, &p, "r1", "unheard"), 0);
    assert_int_equal(bus_room_publish(A.bus, "r1", "unheard-plain", 13), 0);
    assert_int_equal(bus_room_publish(A.bus, "r2", "after", 5), 0);
    assert_true(WAIT(p.done && has_msg(&B, "r2", "after"), 2000));
    assert_int_equal(p.status, 0);
    assert_int_equal(B.nmsgs, 1);

    assert_int_equal(bus_room_subscribe(B.bus, "r1"), 0);
    sub_barrier(&A, &B, "r1");
    rec_reset(&B);
    assert_int_equal(post(&A, &p, "r1", "heard"), 0);
    assert_true(WAIT(p.done && B.nmsgs == 1, 2000));
    assert_string_equal(B.msgs[0].payload, p.payload);
    bus_room_unsubscribe(B.bus, "r2");
}

static void test_presence(void **state)
{
    NEED_REDIS();
    bus_room_subscribe(A.bus, "p1");
    bus_room_subscribe(B.bus, "p1");
    sub_barrier(&A, &B, "p1");
    sub_barrier(&B, &A, "p1");
    rec_reset(&A);
    rec_reset(&B);

    assert_int_equal(bus_presence_add(A.bus, "p1", &(bus_member_t){"a1", "Alice", 0, NULL}), 0);
    assert_int_equal(bus_presence_add(B.bus, "p1", &(bus_member_t){"b1", "Bob", 0, NULL}), 0);
    assert_true(WAIT(has_pres(&B, "p1", BUS_PRESENCE_JOIN, "a1") && has_pres(&A, "p1", BUS_PRESENCE_JOIN, "b1"), 2000));
    run_for(50);
    assert_int_equal(A.npres, 1);  /* no event for its own member */
    assert_int_equal(B.npres, 1);
    assert_string_equal(B.pres[0].node, "node-a");
    assert_string_equal(B.pres[0].name, "Alice");
    assert_int_equal(B.pres[0].muted, 0);

    list_t l = list_of(&A, "p1");
    assert_int_equal(l.n, 2);
    assert_string_equal(list_node(&l, "a1"), "node-a");
    assert_string_equal(list_node(&l, "b1"), "node-b");

    assert_int_equal(bus_presence_add(A.bus, "p1", &(bus_member_t){"a1", "Alice", 1, NULL}), 0);
    assert_true(WAIT(has_pres(&B, "p1", BUS_PRESENCE_UPDATE, "a1"), 2000));
    assert_int_equal(B.pres[B.npres - 1].muted, 1);

    assert_int_equal(bus_presence_remove(A.bus, "p1", "a1"), 0);
    assert_true(WAIT(has_pres(&B, "p1", BUS_PRESENCE_LEAVE, "a1"), 2000));
    assert_string_equal(B.pres[B.npres - 1].node, "node-a");
    l = list_of(&B, "p1");
    assert_int_equal(l.n, 1);
    assert_string_equal(l.ids[0], "b1");

    assert_int_equal(bus_presence_remove(B.bus, "p1", "b1"), 0);
    assert_true(WAIT(has_pres(&A, "p1", BUS_PRESENCE_LEAVE, "b1"), 2000));
    l = list_of(&A, "p1");
    assert_int_equal(l.n, 0);
}

static void test_presence_expiry(void **state)
{
    NEED_REDIS();
    bus_room_subscribe(A.bus, "p2");
    uv_loop_init(&loop2);
    uv_timer_init(&loop2, &pulse2);
    uv_timer_start(&pulse2, on_pulse, 5, 5);
    use_loop2 = 1;
    node_open(&C, &loop2, url, "node-c", 400, 50);
    assert_true(WAIT(C.up, 3000));
    bus_room_subscribe(C.bus, "p2");
    sub_barrier(&C, &A, "p2");
    rec_reset(&A);
    bus_presence_add(C.bus, "p2", &(bus_member_t){"c1", "Carol", 0, NULL});
    assert_true(WAIT(has_pres(&A, "p2", BUS_PRESENCE_JOIN, "c1"), 2000));
    list_t l = list_of(&A, "p2");
    assert_int_equal(l.n, 1);
    assert_string_equal(list_node(&l, "c1"), "node-c");

    /* C freezes: no more heartbeats. Its key expires within 400 ms, A's reaper (every
     * 300 ms) then removes c1 and announces the leave in C's name. */
    use_loop2 = 0;
    uint64_t t0 = now_ms();
    assert_true(WAIT(has_pres(&A, "p2", BUS_PRESENCE_LEAVE, "c1"), 3000));
    uint64_t took = now_ms() - t0;
    assert_true(took < 400 + 2 * 300 + 300);
    assert_string_equal(A.pres[A.npres - 1].node, "node-c");
    l = list_of(&A, "p2");
    assert_int_equal(l.n, 0);

    /* C wakes up and closes (graceful: its goodbye must not crash on its stale link) */
    bus_free(C.bus);
    C.bus = NULL;
    uv_close((uv_handle_t *)&pulse2, NULL);
    uint64_t dl = now_ms() + 5000;
    while (uv_loop_alive(&loop2) && now_ms() < dl) uv_run(&loop2, UV_RUN_ONCE);
    assert_int_equal(uv_loop_close(&loop2), 0);
    redisReply *r = admin(&srv, "EXISTS chatgw:node:node-c");
    assert_non_null(r);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    bus_room_unsubscribe(A.bus, "p2");
}

static void test_history(void **state)
{
    NEED_REDIS();
    post_t p[3];
    for (int i = 0; i < 3; i++) {
        char t[8];
        snprintf(t, sizeof t, "h%d", i);
        assert_int_equal(post(&A, &p[i], "h1", t), 0);
    }
    assert_true(WAIT(posts_done(p, 3), 2000));
    const char *E = p[0].id.epoch;
    assert_true(strlen(E) > 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p[i].status, 0);
        assert_int_equal(p[i].id.seq, (uint64_t)i + 1);
    }
    char since[96];

    range_t r = range_of(&B, "h1", NULL);
    assert_int_equal(r.gap, 0);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.last.epoch, E);
    assert_int_equal(r.last.seq, 3);
    assert_string_equal(r.first, p[0].payload);

    snprintf(since, sizeof since, "%s:1", E);
    r = range_of(&B, "h1", since);
    assert_int_equal(r.gap, 0);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.seqs[0], 2);
    assert_int_equal(r.seqs[1], 3);
    assert_string_equal(r.first, p[1].payload);

    snprintf(since, sizeof since, "%s:3", E);
    r = range_of(&B, "h1", since);
    assert_int_equal(r.gap, 0);
    assert_int_equal(r.n, 0);

    r = range_of(&B, "h1", "0123456789ab:2");
    assert_int_equal(r.gap, 1);
    assert_int_equal(r.n, 3);
    snprintf(since, sizeof since, "%s:99", E);
    r = range_of(&B, "h1", since);
    assert_int_equal(r.gap, 1);

    /* the stream and its keys are lost: a gap, and the next msg starts a new epoch */
    redisReply *x = admin(&srv, "DEL chatgw:{h1}:seq chatgw:{h1}:epoch chatgw:{h1}:hist");
    assert_non_null(x);
    assert_int_equal(x->integer, 3);
    freeReplyObject(x);
    snprintf(since, sizeof since, "%s:3", E);
    r = range_of(&B, "h1", since);
    assert_int_equal(r.gap, 1);
    assert_int_equal(r.n, 0);
    assert_string_equal(r.last.epoch, "");
    post_t q;
    assert_int_equal(post(&B, &q, "h1", "fresh"), 0);
    assert_true(WAIT(q.done, 2000));
    assert_int_equal(q.status, 0);
    assert_string_not_equal(q.id.epoch, E);
    assert_int_equal(q.id.seq, 1);
    r = range_of(&A, "h1", since);
    assert_int_equal(r.gap, 1);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.first, q.payload);

    /* trimmed: MAXLEN ~ 50 after 400 msgs; an old since is a gap with the newest 50 */
    enum { M = 400 };
    static post_t many[M];
    for (int i = 0; i < M; i++) assert_int_equal(post(i % 2 ? &A : &B, &many[i], "h2", "x"), 0);
    assert_true(WAIT(posts_done(many, M), 5000));
    const char *E2 = many[0].id.epoch;
    snprintf(since, sizeof since, "%s:1", E2);
    r = range_of(&A, "h2", since);
    assert_int_equal(r.gap, 1);
    assert_int_equal(r.n, 50);
    assert_int_equal(r.seqs[0], M - 49);
    assert_int_equal(r.seqs[49], M);
    snprintf(since, sizeof since, "%s:%d", E2, M - 10);
    r = range_of(&B, "h2", since);
    assert_int_equal(r.gap, 0);
    assert_int_equal(r.n, 10);
    assert_int_equal(r.seqs[0], M - 9);
    x = admin(&srv, "XLEN chatgw:{h2}:hist");
    assert_true(x->integer >= 50 && x->integer < M);
    freeReplyObject(x);
}

static void test_limit(void **state)
{
    NEED_REDIS();
    /* one bucket for both nodes: burst 3, practically no refill */
    assert_int_equal(take(&A, "lk", 0.001, 3), 1);
    assert_int_equal(take(&B, "lk", 0.001, 3), 1);
    assert_int_equal(take(&A, "lk", 0.001, 3), 1);
    assert_int_equal(take(&B, "lk", 0.001, 3), 0);
    assert_int_equal(take(&A, "lk", 0.001, 3), 0);
    /* refill with Redis's clock */
    assert_int_equal(take(&A, "lk-fast", 20, 1), 1);
    assert_int_equal(take(&B, "lk-fast", 20, 1), 0);
    run_for(120);
    assert_int_equal(take(&B, "lk-fast", 20, 1), 1);
    assert_int_equal(bus_limit_take(A.bus, "k", 0, 1, on_limit, NULL), GW_EINVAL);
    assert_int_equal(bus_limit_take(A.bus, "k", 1, 0.5, on_limit, NULL), GW_EINVAL);

    /* the script cache is flushed: EVALSHA gets NOSCRIPT and the bus falls back to EVAL */
    redisReply *x = admin(&srv, "SCRIPT FLUSH");
    assert_non_null(x);
    freeReplyObject(x);
    assert_int_equal(take(&A, "lk2", 0.001, 1), 1);
    assert_int_equal(take(&B, "lk2", 0.001, 1), 0);
    run_for(50);                   /* the reload that followed the fallback */
    post_t p;
    assert_int_equal(post(&A, &p, "lk-room", "after flush"), 0);
    assert_true(WAIT(p.done, 2000));
    assert_int_equal(p.status, 0);
}

static void test_auth_db(void **state)
{
    NEED_REDIS();
    redis_t sec = {.port = port_free(), .password = "s3cret"};
    assert_int_equal(redis_start(&sec), 0);
    char pwfile[] = "/tmp/chatgw-bus-pw-XXXXXX";
    int fd = mkstemp(pwfile);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "s3cret\n", 7), 7);
    close(fd);

    uv_loop_t lp;
    uv_loop_init(&lp);
    char u[96], err[256];
    snprintf(u, sizeof u, "redis://127.0.0.1:%d/3", sec.port);
    node_t D = {.label = "D"}, E = {.label = "E"}, F = {.label = "F"};
    bus_options_t o = {.redis_url = u, .password_file = pwfile, .node_id = "node-d", .connect_timeout_ms = 2000,
                       .command_timeout_ms = 2000, .backoff_min_ms = 50, .backoff_max_ms = 200,
                       .presence_ttl_ms = 5000};
    assert_int_equal(bus_open(&lp, &o, &handlers, &D, &D.bus, err, sizeof err), 0);
    char bad[96];
    snprintf(bad, sizeof bad, "redis://:wrong@127.0.0.1:%d", sec.port);
    bus_options_t o2 = o;
    o2.redis_url = bad;
    o2.password_file = NULL;
    o2.node_id = "node-e";
    assert_int_equal(bus_open(&lp, &o2, &handlers, &E, &E.bus, err, sizeof err), 0);
    char good[96];
    snprintf(good, sizeof good, "redis://:s3cret@localhost:%d/3", sec.port);   /* resolved by uv_getaddrinfo */
    bus_options_t o3 = {.redis_url = good, .node_id = "node-f", .connect_timeout_ms = 2000, .command_timeout_ms = 2000,
                        .backoff_min_ms = 100, .backoff_max_ms = 5000, .presence_ttl_ms = 15000};
    assert_int_equal(bus_open(&lp, &o3, &handlers, &F, &F.bus, err, sizeof err), 0);

    uint64_t dl = now_ms() + 1500;
    while (now_ms() < dl) uv_run(&lp, UV_RUN_NOWAIT), usleep(2000);
    assert_int_equal(D.up, 1);
    assert_int_equal(F.up, 1);
    assert_int_equal(E.ups, 0);    /* wrong password: never up, keeps retrying */
    redisContext *c = admin_connect(&sec);
    redisReply *x;
    x = redisCommand(c, "SELECT 3");
    freeReplyObject(x);
    x = redisCommand(c, "EXISTS chatgw:node:node-d chatgw:node:node-f");
    assert_int_equal(x->integer, 2);
    freeReplyObject(x);
    redisFree(c);

    bus_options_t o4 = {.redis_url = u, .password_file = "/nonexistent/pw"};
    bus_t *nb = NULL;
    assert_int_equal(bus_open(&lp, &o4, &handlers, NULL, &nb, err, sizeof err), GW_EINVAL);
    assert_non_null(strstr(err, "/nonexistent/pw"));

    bus_free(D.bus);
    bus_free(E.bus);
    bus_free(F.bus);
    dl = now_ms() + 3000;
    while (uv_loop_alive(&lp) && now_ms() < dl) uv_run(&lp, UV_RUN_ONCE);
    assert_int_equal(uv_loop_close(&lp), 0);
    unlink(pwfile);
    redis_stop(&sec);
}

static void test_outage(void **state)
{
    NEED_REDIS();
    bus_room_subscribe(A.bus, "o1");
    bus_room_subscribe(B.bus, "o1");
    sub_barrier(&A, &B, "o1");
    sub_barrier(&B, &A, "o1");
    int a_downs = A.downs, b_downs = B.downs;

    redis_stop(&srv);
    assert_true(WAIT(!A.up && !B.up, 3000));
    assert_int_equal(A.downs, a_downs + 1);
    assert_int_equal(B.downs, b_downs + 1);
    bus_stats_t st;
    bus_stats_get(A.bus, &st);
    assert_int_equal(st.up, 0);

    /* down: every call answers at once, nothing blocks */
    uint64_t t0 = uv_hrtime();
    post_t p;
    assert_int_equal(post(&A, &p, "o1", "lost"), GW_EDOWN);
    assert_int_equal(bus_room_publish(A.bus, "o1", "x", 1), GW_EDOWN);
    assert_int_equal(bus_direct_publish(A.bus, "c", "x", 1), GW_EDOWN);
    assert_int_equal(bus_history_range(A.bus, "o1", NULL, on_range, NULL), GW_EDOWN);
    assert_int_equal(bus_presence_list(A.bus, "o1", on_list, NULL), GW_EDOWN);
    assert_int_equal(bus_limit_take(A.bus, "k", 1, 1, on_limit, NULL), GW_EDOWN);
    assert_int_equal(bus_presence_add(A.bus, "o1", &(bus_member_t){"a9", "Ann", 0, NULL}), 0);
    assert_int_equal(bus_presence_add(A.bus, "o1", &(bus_member_t){"a8", "Abe", 0, NULL}), 0);
    assert_int_equal(bus_presence_remove(A.bus, "o1", "a8"), 0);
    assert_int_equal(bus_room_subscribe(A.bus, "o2"), 0);
    assert_int_equal(bus_room_unsubscribe(A.bus, "o2"), 0);
    assert_true(uv_hrtime() - t0 < 50 * 1000000ull);
    assert_false(p.done);

    run_for(400);                  /* a few failed tries: the backoff grows */
    assert_false(A.up);
    assert_false(p.done);
    rec_reset(&A);
    rec_reset(&B);

    assert_int_equal(redis_start(&srv), 0);   /* the same port */
    assert_true(WAIT(A.up && B.up, 3000));
    bus_stats_get(A.bus, &st);
    assert_int_equal(st.up, 1);
    assert_int_equal(st.reconnects, 1);
    bus_stats_get(B.bus, &st);
    assert_int_equal(st.reconnects, 1);

    /* resubscribed: a publish after the reconnect arrives */
    sub_barrier(&A, &B, "o1");
    rec_reset(&B);
    post_t q;
    assert_int_equal(post(&A, &q, "o1", "back"), 0);
    assert_true(WAIT(q.done && B.nmsgs == 1, 2000));
    assert_int_equal(q.status, 0);
    assert_int_equal(q.id.seq, 1);  /* a fresh Redis: a new epoch */
    assert_string_equal(B.msgs[0].payload, q.payload);

    /* presence re-registered: what A did while down is in Redis (B may have been
     * resubscribing when A's join went out: a hub re-lists after status up) */
    list_t l = list_of(&B, "o1");
    assert_int_equal(l.n, 1);
    assert_string_equal(list_node(&l, "a9"), "node-a");
    assert_false(has_pres(&B, "o1", BUS_PRESENCE_JOIN, "a8"));
    assert_int_equal(bus_presence_add(A.bus, "o1", &(bus_member_t){"a7", "Amy", 0, NULL}), 0);
    assert_true(WAIT(has_pres(&B, "o1", BUS_PRESENCE_JOIN, "a7"), 2000));
    assert_false(p.done);          /* a refused call never calls back */
}

int main(void)
{
    const struct CMUnitTest plain[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_local),
    };
    const struct CMUnitTest redis[] = {
        cmocka_unit_test(test_connect),      cmocka_unit_test(test_fanout),  cmocka_unit_test(test_unsubscribe),
        cmocka_unit_test(test_presence),     cmocka_unit_test(test_presence_expiry),
        cmocka_unit_test(test_history),      cmocka_unit_test(test_limit),   cmocka_unit_test(test_auth_db),
        cmocka_unit_test(test_outage),
    };
    int rc = cmocka_run_group_tests_name("bus_local", plain, NULL, NULL);
    rc |= cmocka_run_group_tests_name("bus_redis", redis, group_setup, group_teardown);
    return rc;
}
