/* Unit tests for hub.c: the chat endpoint driven through routes_chat_endpoint (the hub behind
 * its HTTP edge in routes.c: admit, attach, message, detach) with fake http_request_t values, a real libuv loop and config defaults. The server
 * side is faked here: every server_* function of server.h is defined in this file, so the
 * linker never pulls server.o out of chatgw_core. A fake conn_t keeps a reference on every
 * payload queued to it, which lets the tests check what each connection received and that a
 * broadcast reached every recipient as the same shared buffer (serialised once).
 *
 * Covered: welcome, joins by URL (?room= and /ROOM) and by message, the room snapshot (members
 * in join order, history), presence to others only (join, leave, mute, unmute), msg fan-out
 * with acks and increasing epoch:seq ids, dm, signal, history since/history_gap (old since,
 * other epoch, ring overflow), rate limits, room_full, protocol errors with the connection still
 * usable, room reclaim, hub_stats_json / hub_room_json / hub_room_announce and the chat metrics.
 * With the fixture policy in tests/unit/hub_fixtures/chat/: on_join refusal and failure modes,
 * on_message rewrite / drop / budget, custom types, gw.send / broadcast / kick / members /
 * rooms, and on_leave. With redis_url set and Redis unreachable: the local fallback (own ids,
 * ring history, unknown_peer for a dm). Runs clean under ASan (everything is freed in the
 * teardown). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "app/routes.h"
#include "base/config.h"
#include "base/err.h"
#include "base/gw.h"
#include "http/http.h"
#include "hub/hub.h"
#include "base/log.h"
#include "base/metrics.h"
#include "policy/policy.h"
#include "proto/proto.h"
#include "net/server.h"
#include "proto/ws.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

#define THIS_FILE __FILE__
#define MAX_CONNS 32
#define B64URL "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

static char fixtures[PATH_MAX];

/* ---- the fake server ---- */

struct conn_s {
    int open;                      /* 0 once server_conn_close ran */
    int attached;                  /* 1 between attach and detach */
    void *data;
    char ip[64];
    uint64_t serial;
    unsigned close_code;
    char close_reason[128];
    sbuf_t **sent;                 /* every payload queued, each with our reference */
    size_t nsent, cap;
    size_t next;                   /* read cursor for expect() */
    size_t dropped;                /* sends after close */
    char id[32];                   /* from the welcome */
    char name[160];
};

static void conn_record(conn_t *c, sbuf_t *payload)
{
    if (!c->open) {
        c->dropped++;
        sbuf_unref(payload);
        return;
    }
    if (c->nsent == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->sent = realloc(c->sent, c->cap * sizeof *c->sent);
        assert_non_null(c->sent);
    }
    c->sent[c->nsent++] = payload;
}

void server_msg_init(server_msg_t *m, sbuf_t *payload)
{
    memset(m, 0, sizeof *m);
    m->payload = payload;
}

void server_msg_release(server_msg_t *m)
{
    sbuf_unref(m->payload);
    sbuf_unref(m->plain);
    sbuf_unref(m->deflated);
    memset(m, 0, sizeof *m);
}

int server_start(gw_t *gw, const server_router_t *router) { return -1; }
void server_drain(gw_t *gw) {}
void server_free(gw_t *gw) {}
server_later_t *server_later_take(gw_t *gw) { return NULL; }
void server_later_answer(server_later_t *l, const buf_t *out, int keep_alive) {}

void server_conn_send_msg(conn_t *c, server_msg_t *m)
{
    assert_non_null(c);
    assert_non_null(m->payload);
    conn_record(c, sbuf_ref(m->payload));
}

void server_conn_send(conn_t *c, int opcode, const void *data, size_t len)
{
    conn_record(c, sbuf_from(data, len));
}

void server_conn_close(conn_t *c, unsigned code, const char *reason)
{
    if (!c->open) return;
    c->open = 0;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason ? reason : "");
}

uint64_t server_conn_serial(const conn_t *c) { return c->serial; }
void *server_conn_data(const conn_t *c) { return c->data; }
void server_conn_data_set(conn_t *c, void *data) { c->data = data; }
int server_conn_is_open(const conn_t *c) { return c->open; }

/* ---- the test environment: one gw per test, torn down by env_down ---- */

static struct {
    int up;
    gw_t gw;
    uv_loop_t loop;
    policy_host_t host;
    conn_t *conns[MAX_CONNS];
    size_t nconns;
    uint64_t serial;
    json_t *garbage;               /* every parsed frame, freed in the teardown */
} T;

#define GW (&T.gw)
#define M (T.gw.metrics)

/* Config defaults plus argv, a fresh loop and a hub. */
static void env_start(int argc, char **argv)
{
    memset(&T, 0, sizeof T);
    char err[256];
    if (config_load(&T.gw.cfg, argc, argv, err, sizeof err) < 0) fail_msg("config: %s", err);
    assert_int_equal(uv_loop_init(&T.loop), 0);
    T.gw.loop = &T.loop;
    T.garbage = json_array();
    T.up = 1;
    T.gw.hub = hub_new(&T.gw);
    assert_non_null(T.gw.hub);
}

/* Collects the NULL-terminated flags after first into argv (room left for 2 more). */
#define ENV_FLAGS(first, argv, argc)                                        \
    do {                                                                    \
        va_list ap;                                                         \
        va_start(ap, first);                                                \
        for (const char *f = first; f; f = va_arg(ap, const char *)) {      \
            assert_true(argc < 30);                                         \
            argv[argc++] = (char *)f;                                       \
        }                                                                   \
        va_end(ap);                                                         \
    } while (0)

/* Config defaults plus the given flags (NULL-terminated). */
static void env_up(const char *flag, ...)
{
    char *argv[32];
    int argc = 0;
    ENV_FLAGS(flag, argv, argc);
    env_start(argc, argv);
}

/* env_up, then the fixture policy with the hub as its host. */
static void env_up_policy(const char *flag, ...)
{
    char *argv[32];
    int argc = 0;
    ENV_FLAGS(flag, argv, argc);
    argv[argc++] = "--policy-budget";
    argv[argc++] = "200000";
    env_start(argc, argv);
    char err[512];
    hub_policy_host(T.gw.hub, &T.host);
    T.gw.policy = policy_new(&T.gw.cfg, &T.gw.metrics, &T.host);
    char dir[PATH_MAX + 8];
    snprintf(dir, sizeof dir, "%s/chat", fixtures);
    int rc = policy_load(T.gw.policy, dir, err, sizeof err);
    if (rc != 1) fail_msg("policy_load %s: %d %s", dir, rc, err);
}

static void conn_free(conn_t *c)
{
    for (size_t i = 0; i < c->nsent; i++) sbuf_unref(c->sent[i]);
    free(c->sent);
    free(c);
}

static int env_down(void **state)
{
    if (!T.up) return 0;
    for (size_t i = 0; i < T.nconns; i++)
        if (T.conns[i]->attached) {
            routes_chat_endpoint.detach(GW, T.conns[i]);
            T.conns[i]->attached = 0;
        }
    int rc = 0;
    if (T.gw.hub) {
        json_t *stats = hub_stats_json(T.gw.hub);
        if (json_integer_value(json_object_get(stats, "online")) != 0 ||
            json_array_size(json_object_get(stats, "rooms")) != 0)
            rc = -1;               /* every detach must have emptied the hub */
        json_decref(stats);
    }
    if (T.gw.metrics.rooms || T.gw.metrics.room_members) rc = -1;
    for (size_t i = 0; i < T.nconns; i++) conn_free(T.conns[i]);
    policy_free(T.gw.policy);
    hub_free(T.gw.hub);
    uv_run(&T.loop, UV_RUN_DEFAULT);   /* the tick timer's close callback */
    if (uv_loop_close(&T.loop) != 0) rc = -1;
    config_free(&T.gw.cfg);
    json_decref(T.garbage);
    memset(&T, 0, sizeof T);
    return rc;
}

/* ---- frames ---- */

static json_t *keep(json_t *v)
{
    json_array_append_new(T.garbage, v);
    return v;
}

static json_t *frame_json(const conn_t *c, size_t i)
{
    json_error_t jerr;
    json_t *v = json_loadb(c->sent[i]->data, c->sent[i]->len, 0, &jerr);
    if (!v) fail_msg("frame %zu is not JSON: %s: %.*s", i, jerr.text, (int)c->sent[i]->len, c->sent[i]->data);
    return keep(v);
}

/* The value at a dotted path ("from.id"), or NULL. */
static json_t *jget(json_t *v, const char *path)
{
    char key[64];
    while (v && *path) {
        size_t n = strcspn(path, ".");
        assert_true(n < sizeof key);
        memcpy(key, path, n);
        key[n] = '\0';
        v = json_object_get(v, key);
        path += n + (path[n] == '.');
    }
    return v;
}

static const char *jstr(json_t *v, const char *path)
{
    const char *s = json_string_value(jget(v, path));
    if (!s) {
        char *text = json_dumps(v, JSON_COMPACT);
        print_error("no string at \"%s\" in %s\n", path, text ? text : "?");
        free(text);
        fail();
    }
    return s;
}

static size_t unread(const conn_t *c) { return c->nsent - c->next; }

/* The next unread frame of c, which must have the given type. */
static json_t *expect(conn_t *c, const char *type)
{
    if (c->next >= c->nsent) fail_msg("%s: expected a \"%s\" frame, got nothing", c->name, type);
    json_t *v = frame_json(c, c->next++);
    const char *t = json_string_value(json_object_get(v, "type"));
    if (!t || strcmp(t, type)) {
        char *text = json_dumps(v, JSON_COMPACT);
        print_error("%s: expected a \"%s\" frame, got %s\n", c->name, type, text ? text : "?");
        free(text);
        fail();
    }
    return v;
}

/* The shared buffer of the frame expect() returned last. */
static sbuf_t *last_payload(const conn_t *c)
{
    assert_true(c->next > 0);
    return c->sent[c->next - 1];
}

/* The next frame: an error with code (and ref, when not NULL: a string compared as such). */
static json_t *expect_error(conn_t *c, const char *code, const char *ref)
{
    json_t *e = expect(c, "error");
    assert_string_equal(jstr(e, "code"), code);
    assert_non_null(json_string_value(json_object_get(e, "message")));
    if (ref) assert_string_equal(jstr(e, "ref"), ref);
    return e;
}

static void assert_quiet(conn_t *c)
{
    if (unread(c)) {
        json_t *v = frame_json(c, c->next);
        char *text = json_dumps(v, JSON_COMPACT);
        print_error("%s: %zu unexpected frame(s), first %s\n", c->name, unread(c), text ? text : "?");
        free(text);
        fail();
    }
}

static void drain(conn_t *c) { c->next = c->nsent; }

static void assert_member(json_t *m, const conn_t *c, int muted)
{
    assert_string_equal(jstr(m, "id"), c->id);
    assert_string_equal(jstr(m, "name"), c->name);
    assert_true(json_is_boolean(json_object_get(m, "muted")));
    assert_int_equal(json_is_true(json_object_get(m, "muted")), muted);
}

/* arr is [{id,name,muted}] for exactly the n conns, in order, none muted. */
static void assert_members(json_t *arr, conn_t *const *want, size_t n)
{
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), n);
    for (size_t i = 0; i < n; i++) assert_member(json_array_get(arr, i), want[i], 0);
}

/* ---- clients ---- */

static void request_fill(http_request_t *req, char *url, size_t urllen, char *path, const char *query)
{
    memset(req, 0, sizeof *req);
    snprintf(url, urllen, "%s%s%s", path, *query ? "?" : "", query);
    req->method = HTTP_GET;
    req->http_major = req->http_minor = 1;
    req->url = url;
    req->path = path;
    req->query = (char *)query;
    req->upgrade = 1;
}

/* Admission only, for requests the hub must refuse: the HTTP status (the hub frees what it made). */
static int client_refused(const char *path, const char *query, char *reason, size_t len)
{
    char p[256], url[1024];
    snprintf(p, sizeof p, "%s", path);
    http_request_t req;
    request_fill(&req, url, sizeof url, p, query);
    void *data = NULL;
    reason[0] = '\0';
    int status = routes_chat_endpoint.admit(GW, &req, "10.0.0.9", &data, reason, len);
    if (status) assert_null(data);
    return status;
}

/* Admits and attaches a client, then reads its welcome. */
static conn_t *client_open(const char *path, const char *query)
{
    assert_true(T.nconns < MAX_CONNS);
    char p[256], url[1024], reason[128] = "";
    snprintf(p, sizeof p, "%s", path);
    http_request_t req;
    request_fill(&req, url, sizeof url, p, query);
    conn_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    T.conns[T.nconns++] = c;
    c->open = 1;
    c->serial = ++T.serial;
    snprintf(c->ip, sizeof c->ip, "10.0.0.%u", (unsigned)c->serial);
    snprintf(c->name, sizeof c->name, "conn%u", (unsigned)c->serial);
    void *data = NULL;
    int status = routes_chat_endpoint.admit(GW, &req, c->ip, &data, reason, sizeof reason);
    if (status) fail_msg("admit %s?%s: %d %s", path, query, status, reason);
    assert_non_null(data);
    server_conn_data_set(c, data);
    c->attached = 1;
    routes_chat_endpoint.attach(GW, c, &req);
    json_t *w = expect(c, "welcome");
    snprintf(c->id, sizeof c->id, "%s", jstr(w, "id"));
    snprintf(c->name, sizeof c->name, "%s", jstr(w, "name"));
    return c;
}

static void client_close(conn_t *c)
{
    assert_true(c->attached);
    routes_chat_endpoint.detach(GW, c);
    assert_null(c->data);
    c->attached = 0;
    c->open = 0;
}

static void client_send_raw(conn_t *c, int opcode, const char *data, size_t len)
{
    uint8_t *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, data, len);
    routes_chat_endpoint.message(GW, c, opcode, copy, len);
    free(copy);
}

static void client_send(conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void client_send(conn_t *c, const char *fmt, ...)
{
    char buf[16384];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof buf);
    client_send_raw(c, WS_OP_TEXT, buf, (size_t)n);
}

/* Splits a msg id "epoch:seq". */
static uint64_t id_seq(const char *id, char *epoch, size_t len)
{
    uint64_t seq;
    assert_int_equal(proto_since_parse(id, epoch, len, &seq), 0);
    return seq;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Three clients alice, bob, carol in room, every frame so far read. */
static void trio(const char *room, conn_t **a, conn_t **b, conn_t **c)
{
    char q[256];
    snprintf(q, sizeof q, "room=%s&name=alice", room);
    *a = client_open("/ws", q);
    snprintf(q, sizeof q, "room=%s&name=bob", room);
    *b = client_open("/ws", q);
    snprintf(q, sizeof q, "room=%s&name=carol", room);
    *c = client_open("/ws", q);
    drain(*a);
    drain(*b);
    drain(*c);
}

/* A sends msg text to room; every one of the n members gets the same buffer; returns the id. */
static const char *say(conn_t *from, const char *room, const char *text, conn_t *const *members, size_t n)
{
    client_send(from, "{\"type\":\"msg\",\"room\":\"%s\",\"text\":\"%s\",\"cid\":\"c-%s\"}", room, text, text);
    sbuf_t *shared = NULL;
    const char *id = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *m = expect(members[i], "msg");
        assert_string_equal(jstr(m, "text"), text);
        if (!shared) {
            shared = last_payload(members[i]);
            id = jstr(m, "id");
        }
        assert_ptr_equal(last_payload(members[i]), shared);
    }
    json_t *ack = expect(from, "ack");
    assert_string_equal(jstr(ack, "id"), id);
    for (size_t i = 0; i < n; i++) assert_quiet(members[i]);
    return id;
}

/* ---- tests: connection and rooms ---- */

static void test_welcome(void **state)
{
    env_up(NULL);
    conn_t *a = client_open("/ws", "name=alice");
    json_t *w = frame_json(a, 0);
    assert_string_equal(a->name, "alice");
    assert_int_equal(strlen(a->id), 16);
    assert_int_equal(strspn(a->id, B64URL), 16);
    assert_string_equal(jstr(w, "server"), "chatgw/" CHATGW_VERSION);
    assert_string_equal(jstr(w, "policy"), "");
    assert_quiet(a);               /* no room in the URL: nothing joined */

    conn_t *b = client_open("/ws", "");
    assert_true(proto_name_valid(b->name));   /* a generated name */
    assert_string_not_equal(a->id, b->id);
    assert_quiet(b);

    conn_t *c = client_open("/ws", "name=caf%C3%A9%20au%20lait");
    assert_string_equal(c->name, "caf\xc3\xa9 au lait");

    char reason[128];
    assert_int_equal(client_refused("/ws", "room=a%2Fb", reason, sizeof reason), 400);
    assert_string_equal(reason, "invalid room name");
    assert_int_equal(client_refused("/a/b", "", reason, sizeof reason), 400);
    assert_int_equal(client_refused("/.hidden", "", reason, sizeof reason), 400);
    assert_int_equal(client_refused("/ws", "room=lobby&name=%01x", reason, sizeof reason), 400);
    assert_string_equal(reason, "invalid name");
    assert_int_equal(client_refused("/ws", "name=%20%20", reason, sizeof reason), 400);
    assert_int_equal(client_refused("/ws", "name=123456789012345678901234567890123", reason, sizeof reason), 400);

    json_t *stats = keep(hub_stats_json(GW->hub));
    assert_int_equal(json_integer_value(json_object_get(stats, "online")), 3);
    assert_int_equal(json_array_size(json_object_get(stats, "rooms")), 0);
    assert_int_equal(M.rooms, 0);
}

static void test_join_url_and_message(void **state)
{
    env_up(NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    json_t *r = expect(a, "room");
    assert_string_equal(jstr(r, "room"), "lobby");
    assert_members(jget(r, "members"), (conn_t *[]){ a }, 1);
    assert_true(json_is_array(jget(r, "history")));
    assert_int_equal(json_array_size(jget(r, "history")), 0);
    assert_quiet(a);

    conn_t *b = client_open("/lobby", "name=bob");   /* free4chat-style path */
    r = expect(b, "room");
    assert_string_equal(jstr(r, "room"), "lobby");
    assert_members(jget(r, "members"), (conn_t *[]){ a, b }, 2);
    json_t *j = expect(a, "join");
    assert_string_equal(jstr(j, "room"), "lobby");
    assert_member(jget(j, "member"), b, 0);
    assert_quiet(a);
    assert_quiet(b);

    conn_t *c = client_open("/ws", "name=carol");
    assert_quiet(c);
    client_send(c, "{\"type\":\"join\",\"room\":\"lobby\",\"name\":\"caroline\"}");
    snprintf(c->name, sizeof c->name, "caroline");
    r = expect(c, "room");
    assert_members(jget(r, "members"), (conn_t *[]){ a, b, c }, 3);
    assert_member(jget(expect(a, "join"), "member"), c, 0);
    assert_member(jget(expect(b, "join"), "member"), c, 0);
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);
    assert_int_equal(M.rooms, 1);
    assert_int_equal(M.room_members, 3);

    /* a second room, then a join of a room already joined: snapshot again, no presence */
    client_send(c, "{\"type\":\"join\",\"room\":\"second\"}");
    r = expect(c, "room");
    assert_string_equal(jstr(r, "room"), "second");
    assert_members(jget(r, "members"), (conn_t *[]){ c }, 1);
    client_send(c, "{\"type\":\"join\",\"room\":\"lobby\"}");
    r = expect(c, "room");
    assert_members(jget(r, "members"), (conn_t *[]){ a, b, c }, 3);
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);
    assert_int_equal(M.rooms, 2);
    assert_int_equal(M.room_members, 4);

    /* a room URL parameter wins over the path; an empty one joins nothing */
    conn_t *d = client_open("/elsewhere", "room=lobby&name=dave");
    assert_string_equal(jstr(expect(d, "room"), "room"), "lobby");
    conn_t *e = client_open("/ws", "room=&name=eve");
    assert_quiet(e);
    assert_int_equal(M.rooms, 2);
}

static void test_presence(void **state)
{
    env_up(NULL);
    conn_t *a, *b, *c;
    trio("lobby", &a, &b, &c);

    client_send(a, "{\"type\":\"mute\",\"room\":\"lobby\"}");
    for (conn_t *o = b; o; o = o == b ? c : NULL) {
        json_t *p = expect(o, "mute");
        assert_string_equal(jstr(p, "room"), "lobby");
        assert_member(jget(p, "member"), a, 1);
    }
    assert_quiet(a);

    /* a newcomer sees the mute in the snapshot */
    conn_t *d = client_open("/ws", "room=lobby&name=dave");
    json_t *r = expect(d, "room");
    json_t *members = jget(r, "members");
    assert_int_equal(json_array_size(members), 4);
    assert_member(json_array_get(members, 0), a, 1);
    assert_member(json_array_get(members, 3), d, 0);
    drain(a);
    drain(b);
    drain(c);

    client_send(a, "{\"type\":\"unmute\",\"room\":\"lobby\"}");
    assert_member(jget(expect(b, "unmute"), "member"), a, 0);
    assert_member(jget(expect(c, "unmute"), "member"), a, 0);
    assert_member(jget(expect(d, "unmute"), "member"), a, 0);
    assert_quiet(a);

    /* leave by message: the others are told, the leaver is not a member any more */
    client_send(b, "{\"type\":\"leave\",\"room\":\"lobby\"}");
    for (conn_t *o = a; o; o = o == a ? c : o == c ? d : NULL) {
        json_t *p = expect(o, "leave");
        assert_string_equal(jstr(p, "room"), "lobby");
        assert_member(jget(p, "member"), b, 0);
        assert_quiet(o);
    }
    assert_quiet(b);
    client_send(b, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"hi\",\"cid\":1}");
    json_t *e = expect_error(b, "not_in_room", NULL);
    assert_int_equal(json_integer_value(json_object_get(e, "ref")), 1);
    client_send(b, "{\"type\":\"leave\",\"room\":\"lobby\"}");
    expect_error(b, "not_in_room", NULL);
    assert_int_equal(M.room_members, 3);

    /* leave by disconnect */
    client_close(c);
    assert_member(jget(expect(a, "leave"), "member"), c, 0);
    assert_member(jget(expect(d, "leave"), "member"), c, 0);
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(d);
    assert_int_equal(M.room_members, 2);

    /* join order survives removals */
    client_send(b, "{\"type\":\"join\",\"room\":\"lobby\"}");
    assert_members(jget(expect(b, "room"), "members"), (conn_t *[]){ a, d, b }, 3);
    json_t *room = keep(hub_room_json(GW->hub, "lobby"));
    assert_members(jget(room, "members"), (conn_t *[]){ a, d, b }, 3);
}

static void test_msg_fanout(void **state)
{
    env_up(NULL);
    conn_t *a, *b, *c;
    trio("lobby", &a, &b, &c);
    conn_t *outsider = client_open("/ws", "room=other&name=olga");
    drain(outsider);
    uint64_t delivered = M.msgs_delivered;

    int64_t t0 = wall_ms();
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"hello\",\"cid\":\"c1\"}");
    json_t *ma = expect(a, "msg");
    sbuf_t *shared = last_payload(a);
    json_t *mb = expect(b, "msg");
    assert_ptr_equal(last_payload(b), shared);   /* serialised once, one buffer for all */
    json_t *mc = expect(c, "msg");
    assert_ptr_equal(last_payload(c), shared);
    assert_true(json_equal(ma, mb) && json_equal(mb, mc));
    assert_string_equal(jstr(ma, "room"), "lobby");
    assert_string_equal(jstr(ma, "text"), "hello");
    assert_string_equal(jstr(ma, "from.id"), a->id);
    assert_string_equal(jstr(ma, "from.name"), "alice");
    assert_null(json_object_get(ma, "cid"));     /* the sender's own correlation id stays private */
    json_int_t ts = json_integer_value(json_object_get(ma, "ts"));
    assert_true(ts >= t0 - 1000 && ts <= wall_ms() + 1000);
    json_t *ack = expect(a, "ack");              /* after the msg */
    assert_string_equal(jstr(ack, "cid"), "c1");
    assert_string_equal(jstr(ack, "id"), jstr(ma, "id"));
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);
    assert_quiet(outsider);
    assert_int_equal(M.msgs_delivered - delivered, 3);

    char epoch[40], epoch2[40];
    uint64_t s1 = id_seq(jstr(ma, "id"), epoch, sizeof epoch);
    assert_int_equal(strlen(epoch), 12);
    assert_int_equal(strspn(epoch, "0123456789abcdef"), 12);
    assert_int_equal(s1, 1);

    /* integer cid, no cid, another sender: ids keep increasing in the same epoch */
    client_send(b, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"two\",\"cid\":42}");
    json_t *m2 = expect(a, "msg");
    drain(c);
    expect(b, "msg");
    ack = expect(b, "ack");
    assert_int_equal(json_integer_value(json_object_get(ack, "cid")), 42);
    assert_string_equal(jstr(ack, "id"), jstr(m2, "id"));
    assert_string_equal(jstr(m2, "from.name"), "bob");
    assert_int_equal(id_seq(jstr(m2, "id"), epoch2, sizeof epoch2), 2);
    assert_string_equal(epoch, epoch2);

    client_send(c, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"three\"}");
    json_t *m3 = expect(c, "msg");
    drain(a);
    drain(b);
    ack = expect(c, "ack");
    assert_null(json_object_get(ack, "cid"));
    assert_string_equal(jstr(ack, "id"), jstr(m3, "id"));
    assert_int_equal(id_seq(jstr(m3, "id"), epoch2, sizeof epoch2), 3);

    const char *id4 = say(a, "lobby", "four", (conn_t *[]){ a, b, c }, 3);
    assert_int_equal(id_seq(id4, epoch2, sizeof epoch2), 4);

    /* another room has its own epoch and sequence */
    client_send(outsider, "{\"type\":\"msg\",\"room\":\"other\",\"text\":\"x\"}");
    json_t *mo = expect(outsider, "msg");
    expect(outsider, "ack");
    assert_int_equal(id_seq(jstr(mo, "id"), epoch2, sizeof epoch2), 1);
    assert_string_not_equal(epoch, epoch2);
    assert_quiet(a);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_INVALID], 0);
}

static void test_dm(void **state)
{
    env_up(NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    conn_t *b = client_open("/ws", "name=bob");      /* no room in common: a dm needs none */
    conn_t *c = client_open("/ws", "room=lobby&name=carol");
    drain(a);
    drain(c);

    client_send(a, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"psst\",\"cid\":\"d1\"}", b->id);
    json_t *dm = expect(b, "dm");
    assert_string_equal(jstr(dm, "from.id"), a->id);
    assert_string_equal(jstr(dm, "from.name"), "alice");
    assert_string_equal(jstr(dm, "text"), "psst");
    assert_true(json_integer_value(json_object_get(dm, "ts")) > 0);
    json_t *ack = expect(a, "ack");
    assert_string_equal(jstr(ack, "cid"), "d1");
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);

    client_send(b, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"back\"}", a->id);
    assert_string_equal(jstr(expect(a, "dm"), "from.id"), b->id);
    assert_quiet(b);               /* no cid, no ack */
    assert_quiet(c);

    client_send(a, "{\"type\":\"dm\",\"to\":\"AAAAAAAAAAAAAAAA\",\"text\":\"x\",\"cid\":\"d2\"}");
    expect_error(a, "unknown_peer", "d2");
    assert_quiet(a);
    assert_quiet(b);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_UNKNOWN_PEER], 1);

    client_close(b);               /* gone: unknown now */
    client_send(a, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"x\"}", b->id);
    expect_error(a, "unknown_peer", NULL);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_UNKNOWN_PEER], 2);
}

static void test_signal(void **state)
{
    env_up(NULL);
    conn_t *a, *b, *c;
    trio("voice", &a, &b, &c);
    conn_t *d = client_open("/ws", "room=other&name=dave");
    drain(d);

    client_send(a, "{\"type\":\"signal\",\"room\":\"voice\",\"to\":\"%s\",\"data\":{\"sdp\":\"v=0\",\"n\":[1,2]}}",
                b->id);
    json_t *s = expect(b, "signal");
    assert_string_equal(jstr(s, "room"), "voice");
    assert_string_equal(jstr(s, "from"), a->id);
    json_t *want = keep(json_pack("{s:s, s:[i,i]}", "sdp", "v=0", "n", 1, 2));
    assert_true(json_equal(jget(s, "data"), want));
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);
    assert_quiet(d);

    /* to self, to a connection outside the room, to nobody */
    client_send(a, "{\"type\":\"signal\",\"room\":\"voice\",\"to\":\"%s\",\"data\":1,\"cid\":\"s1\"}", a->id);
    expect_error(a, "unknown_peer", NULL);
    client_send(a, "{\"type\":\"signal\",\"room\":\"voice\",\"to\":\"%s\",\"data\":1}", d->id);
    expect_error(a, "unknown_peer", NULL);
    client_send(a, "{\"type\":\"signal\",\"room\":\"voice\",\"to\":\"nobody\",\"data\":null}");
    expect_error(a, "unknown_peer", NULL);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_UNKNOWN_PEER], 3);
    /* in a room the sender is not in */
    client_send(a, "{\"type\":\"signal\",\"room\":\"other\",\"to\":\"%s\",\"data\":1}", d->id);
    expect_error(a, "not_in_room", NULL);
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);
    assert_quiet(d);
}

static void test_history(void **state)
{
    env_up("--history-size", "3", NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    drain(a);
    conn_t *m[1] = { a };
    char id1[64], id2[64], epoch[40];
    snprintf(id1, sizeof id1, "%s", say(a, "lobby", "m1", m, 1));
    snprintf(id2, sizeof id2, "%s", say(a, "lobby", "m2", m, 1));
    json_t *msg1 = frame_json(a, a->next - 4), *msg2 = frame_json(a, a->next - 2);
    id_seq(id1, epoch, sizeof epoch);

    /* everything kept */
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\"}");
    json_t *h = expect(a, "history");
    assert_string_equal(jstr(h, "room"), "lobby");
    assert_int_equal(json_array_size(jget(h, "messages")), 2);
    assert_true(json_equal(json_array_get(jget(h, "messages"), 0), msg1));   /* the stored bytes */
    assert_true(json_equal(json_array_get(jget(h, "messages"), 1), msg2));

    /* since is exclusive: no duplicates */
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", id1);
    h = expect(a, "history");
    assert_int_equal(json_array_size(jget(h, "messages")), 1);
    assert_string_equal(jstr(json_array_get(jget(h, "messages"), 0), "id"), id2);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", id2);
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 0);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s:0\"}", epoch);
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 2);   /* nothing lost yet */
    assert_quiet(a);
    assert_int_equal(M.history_gaps, 0);

    /* a reconnect with ?since= gets exactly what it missed in the snapshot */
    char q[256];
    snprintf(q, sizeof q, "room=lobby&name=bob&since=%s", id1);
    conn_t *b = client_open("/ws", q);
    h = expect(b, "room");
    assert_int_equal(json_array_size(jget(h, "history")), 1);
    assert_string_equal(jstr(json_array_get(jget(h, "history"), 0), "id"), id2);
    assert_quiet(b);
    drain(a);

    /* another epoch, a future seq: history_gap, then everything kept */
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"ffffffffffff:1\"}");
    expect_error(a, "history_gap", "lobby");
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 2);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s:99\"}", epoch);
    expect_error(a, "history_gap", "lobby");
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 2);
    assert_quiet(a);
    assert_quiet(b);
    assert_int_equal(M.history_gaps, 2);

    /* the ring overflows: seq 3, 4, 5 kept */
    conn_t *ab[2] = { a, b };
    say(a, "lobby", "m3", ab, 2);
    say(a, "lobby", "m4", ab, 2);
    const char *id5 = say(a, "lobby", "m5", ab, 2);
    assert_int_equal(id_seq(id5, epoch, sizeof epoch), 5);
    client_send(b, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", id1);   /* seq 2 lost */
    expect_error(b, "history_gap", "lobby");
    h = jget(expect(b, "history"), "messages");
    assert_int_equal(json_array_size(h), 3);
    for (size_t i = 0; i < 3; i++) assert_int_equal(id_seq(jstr(json_array_get(h, i), "id"), epoch, sizeof epoch), i + 3);
    client_send(b, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", id2);   /* nothing lost */
    assert_int_equal(json_array_size(jget(expect(b, "history"), "messages")), 3);
    assert_quiet(b);
    assert_int_equal(M.history_gaps, 3);

    /* a join of a room already joined, with since: the snapshot, no gap, no presence */
    char id4[64];
    snprintf(id4, sizeof id4, "%s:4", epoch);
    client_send(b, "{\"type\":\"join\",\"room\":\"lobby\",\"since\":\"%s\"}", id4);
    h = expect(b, "room");
    assert_int_equal(json_array_size(jget(h, "history")), 1);
    assert_string_equal(jstr(json_array_get(jget(h, "history"), 0), "id"), id5);
    assert_quiet(b);
    assert_quiet(a);

    /* a late joiner whose since fell off the ring: history_gap first, then the snapshot */
    snprintf(q, sizeof q, "room=lobby&name=carol&since=%s", id1);
    conn_t *c = client_open("/ws", q);
    expect_error(c, "history_gap", "lobby");
    assert_int_equal(json_array_size(jget(expect(c, "room"), "history")), 3);
    assert_quiet(c);
    assert_int_equal(M.history_gaps, 4);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_INVALID], 0);
}

static void test_history_disabled(void **state)
{
    env_up("--history-size", "0", NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    drain(a);
    const char *id = say(a, "lobby", "m1", (conn_t *[]){ a }, 1);
    char since[64];
    snprintf(since, sizeof since, "%s", id);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", since);
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 0);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\"}");
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 0);
    say(a, "lobby", "m2", (conn_t *[]){ a }, 1);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", since);   /* m2 is lost */
    expect_error(a, "history_gap", "lobby");
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 0);
    assert_quiet(a);
}

static void test_rate_limited(void **state)
{
    env_up("--rate-burst", "3", "--rate-msgs-per-sec", "20", NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    conn_t *b = client_open("/ws", "room=lobby&name=bob");
    drain(a);
    drain(b);
    uv_update_time(&T.loop);
    uint64_t t0 = uv_now(&T.loop);
    /* welcome and the URL join cost nothing; any frame costs a token, even a bad one */
    client_send(a, "{");
    expect_error(a, "bad_json", NULL);
    say(a, "lobby", "one", (conn_t *[]){ a, b }, 2);
    say(a, "lobby", "two", (conn_t *[]){ a, b }, 2);
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"three\"}");
    expect_error(a, "rate_limited", NULL);
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"four\"}");
    expect_error(a, "rate_limited", NULL);
    assert_quiet(a);
    assert_quiet(b);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_RATE_LIMITED], 2);
    /* the bucket is per connection */
    say(b, "lobby", "bob", (conn_t *[]){ a, b }, 2);

    /* it refills at rate_msgs_per_sec, up to the burst */
    usleep(120 * 1000);
    uv_update_time(&T.loop);
    double tokens = (double)(uv_now(&T.loop) - t0) * 20 / 1000.0;
    if (tokens > 3) tokens = 3;
    int allowed = 0;
    for (int i = 0; i < 5; i++) {
        client_send(a, "{\"type\":\"history\",\"room\":\"lobby\"}");
        json_t *v = frame_json(a, a->next++);
        if (!strcmp(jstr(v, "type"), "history")) {
            assert_int_equal(allowed, i);
            allowed++;
        } else {
            assert_string_equal(jstr(v, "code"), "rate_limited");
        }
    }
    assert_int_equal(allowed, (int)tokens);
    assert_true(allowed >= 2);
    assert_quiet(a);
}

static void test_room_full(void **state)
{
    env_up("--max-room-members", "2", "--max-rooms-per-conn", "2", NULL);
    conn_t *a = client_open("/ws", "room=r1&name=alice");
    conn_t *b = client_open("/ws", "room=r1&name=bob");
    drain(a);
    drain(b);

    /* members per room */
    conn_t *c = client_open("/ws", "room=r1&name=carol");
    expect_error(c, "room_full", "r1");
    assert_quiet(c);
    assert_quiet(a);
    client_send(c, "{\"type\":\"join\",\"room\":\"r1\",\"name\":\"mallory\"}");
    expect_error(c, "room_full", "r1");
    assert_int_equal(M.msgs_dropped[METRICS_DROP_ROOM_FULL], 2);
    client_send(c, "{\"type\":\"msg\",\"room\":\"r1\",\"text\":\"x\"}");
    expect_error(c, "not_in_room", NULL);
    client_send(c, "{\"type\":\"join\",\"room\":\"r2\"}");   /* still usable */
    json_t *snap = expect(c, "room");
    assert_string_equal(jstr(snap, "room"), "r2");
    /* the refused join did not rename carol */
    assert_string_equal(jstr(json_array_get(jget(snap, "members"), 0), "name"), "carol");
    assert_quiet(c);
    assert_quiet(a);
    assert_quiet(b);

    /* rooms per connection */
    client_send(a, "{\"type\":\"join\",\"room\":\"r2\"}");
    expect(a, "room");
    drain(c);
    client_send(a, "{\"type\":\"join\",\"room\":\"r3\"}");
    expect_error(a, "room_full", "r3");
    client_send(a, "{\"type\":\"join\",\"room\":\"r1\"}");   /* a room already joined is no new room */
    expect(a, "room");
    assert_quiet(a);
    assert_null(hub_room_json(GW->hub, "r3"));
    assert_int_equal(M.rooms, 2);
    assert_int_equal(M.room_members, 4);

    /* a freed slot can be taken */
    client_send(a, "{\"type\":\"leave\",\"room\":\"r2\"}");
    drain(c);
    client_send(a, "{\"type\":\"join\",\"room\":\"r3\"}");
    assert_string_equal(jstr(expect(a, "room"), "room"), "r3");
    client_close(b);
    drain(a);
    client_send(c, "{\"type\":\"join\",\"room\":\"r1\"}");
    expect(c, "room");
    assert_quiet(c);
}

static void test_bad_input(void **state)
{
    env_up("--max-text-bytes", "16", "--rate-burst", "1000", NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    conn_t *b = client_open("/ws", "room=lobby&name=bob");
    drain(a);
    drain(b);
    uint64_t received = M.msgs_received;

    static const struct {
        const char *frame, *code;
    } cases[] = {
        { "{", "bad_json" },
        { "[1,2]", "bad_json" },
        { "\"msg\"", "bad_json" },
        { "", "bad_json" },
        { "{\"room\":\"lobby\",\"text\":\"x\"}", "bad_type" },
        { "{\"type\":7}", "bad_type" },
        { "{\"type\":\"Not A Type\"}", "bad_type" },
        { "{\"type\":\"poke\",\"room\":\"lobby\"}", "bad_type" },   /* custom, but no policy claims it */
        { "{\"type\":\"poke\"}", "bad_type" },
        { "{\"type\":\"msg\",\"room\":\"lobby\"}", "bad_field" },
        { "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":5}", "bad_field" },
        { "{\"type\":\"join\",\"room\":\"a/b\"}", "bad_field" },
        { "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"12345678901234567\"}", "too_large" },
        { "{\"type\":\"dm\",\"to\":\"x\",\"text\":\"12345678901234567\"}", "too_large" },
    };
    size_t n = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n; i++) {
        client_send_raw(a, WS_OP_TEXT, cases[i].frame, strlen(cases[i].frame));
        json_t *e = expect(a, "error");
        if (strcmp(jstr(e, "code"), cases[i].code))
            fail_msg("%s: code %s, wanted %s", cases[i].frame, jstr(e, "code"), cases[i].code);
        assert_quiet(a);
        /* still usable */
        say(a, "lobby", "1234567890123456", (conn_t *[]){ a, b }, 2);   /* exactly max_text_bytes */
    }
    client_send_raw(a, WS_OP_BINARY, "{\"type\":\"msg\"}", 14);
    expect_error(a, "bad_type", NULL);
    client_send(a, "{\"type\":\"msg\",\"room\":\"nowhere\",\"text\":\"x\",\"cid\":\"n1\"}");
    expect_error(a, "not_in_room", "n1");
    client_send(a, "{\"type\":\"history\",\"room\":\"nowhere\"}");
    expect_error(a, "not_in_room", NULL);
    client_send(a, "{\"type\":\"mute\",\"room\":\"nowhere\"}");
    expect_error(a, "not_in_room", NULL);
    say(a, "lobby", "ok", (conn_t *[]){ a, b }, 2);
    assert_quiet(a);
    assert_quiet(b);
    assert_true(a->open);

    assert_int_equal(M.msgs_dropped[METRICS_DROP_TOO_LARGE], 2);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_INVALID], n - 2 + 1);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_NOT_IN_ROOM], 3);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_RATE_LIMITED], 0);
    assert_int_equal(M.msgs_received - received, 2 * n + 5);
}

static void test_room_reclaimed(void **state)
{
    env_up(NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    drain(a);
    const char *id = say(a, "lobby", "old", (conn_t *[]){ a }, 1);
    char epoch1[40], epoch2[40];
    id_seq(id, epoch1, sizeof epoch1);
    json_t *stats = keep(hub_stats_json(GW->hub));
    json_t *want = keep(json_pack("{s:i, s:[{s:s, s:i}]}", "online", 1, "rooms", "name", "lobby", "online", 1));
    assert_true(json_equal(stats, want));
    assert_int_equal(M.rooms, 1);
    assert_int_equal(M.room_members, 1);

    client_send(a, "{\"type\":\"leave\",\"room\":\"lobby\"}");
    assert_quiet(a);               /* nobody left to tell */
    stats = keep(hub_stats_json(GW->hub));
    want = keep(json_pack("{s:i, s:[]}", "online", 1, "rooms"));
    assert_true(json_equal(stats, want));
    assert_null(hub_room_json(GW->hub, "lobby"));
    assert_int_equal(M.rooms, 0);
    assert_int_equal(M.room_members, 0);

    /* the same name again is a new room: a new epoch, no history */
    client_send(a, "{\"type\":\"join\",\"room\":\"lobby\",\"since\":\"%s\"}", id);
    expect_error(a, "history_gap", "lobby");
    assert_int_equal(json_array_size(jget(expect(a, "room"), "history")), 0);
    id = say(a, "lobby", "new", (conn_t *[]){ a }, 1);
    assert_int_equal(id_seq(id, epoch2, sizeof epoch2), 1);
    assert_string_not_equal(epoch1, epoch2);

    /* a disconnect empties it too */
    conn_t *b = client_open("/ws", "room=second&name=bob");
    assert_int_equal(M.rooms, 2);
    client_close(a);
    client_close(b);
    stats = keep(hub_stats_json(GW->hub));
    want = keep(json_pack("{s:i, s:[]}", "online", 0, "rooms"));
    assert_true(json_equal(stats, want));
    assert_int_equal(M.rooms, 0);
    assert_int_equal(M.room_members, 0);
}

static void test_room_json_announce(void **state)
{
    env_up(NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    conn_t *b = client_open("/ws", "room=lobby&name=bob");
    drain(a);
    drain(b);
    client_send(b, "{\"type\":\"mute\",\"room\":\"lobby\"}");
    drain(a);

    assert_null(hub_room_json(GW->hub, "nope"));
    json_t *r = keep(hub_room_json(GW->hub, "lobby"));
    assert_string_equal(jstr(r, "name"), "lobby");
    assert_int_equal(json_integer_value(json_object_get(r, "online")), 2);
    assert_int_equal(json_array_size(jget(r, "members")), 2);
    assert_member(json_array_get(jget(r, "members"), 0), a, 0);
    assert_member(json_array_get(jget(r, "members"), 1), b, 1);

    const char *first = say(a, "lobby", "hi", (conn_t *[]){ a, b }, 2);
    char epoch[40], epoch2[40];
    id_seq(first, epoch, sizeof epoch);

    char id[64] = "untouched";
    assert_int_equal(hub_room_announce(GW->hub, "nope", "ops", "x", id, sizeof id), GW_ENOTFOUND);
    assert_string_equal(id, "untouched");
    assert_int_equal(M.rooms, 1);  /* announcing creates no room */

    uint64_t delivered = M.msgs_delivered;
    assert_int_equal(hub_room_announce(GW->hub, "lobby", "ops", "maintenance at 5", id, sizeof id), 0);
    assert_int_equal(id_seq(id, epoch2, sizeof epoch2), 2);
    assert_string_equal(epoch, epoch2);
    json_t *ma = expect(a, "msg");
    sbuf_t *shared = last_payload(a);
    json_t *mb = expect(b, "msg");
    assert_ptr_equal(last_payload(b), shared);
    assert_true(json_equal(ma, mb));
    assert_string_equal(jstr(ma, "id"), id);
    assert_string_equal(jstr(ma, "from.id"), "server");
    assert_string_equal(jstr(ma, "from.name"), "ops");
    assert_string_equal(jstr(ma, "text"), "maintenance at 5");
    assert_quiet(a);               /* no ack for a server message */
    assert_quiet(b);
    assert_int_equal(M.msgs_delivered - delivered, 2);

    assert_int_equal(hub_room_announce(GW->hub, "lobby", "ops", "again", NULL, 0), 0);   /* id_out optional */
    drain(a);
    drain(b);

    /* in history like any msg */
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", first);
    json_t *h = jget(expect(a, "history"), "messages");
    assert_int_equal(json_array_size(h), 2);
    assert_true(json_equal(json_array_get(h, 0), ma));
}

/* The chat gauges and drop counters over a whole session. */
static void test_metrics(void **state)
{
    env_up("--max-rooms-per-conn", "3", NULL);
    assert_int_equal(M.rooms, 0);
    conn_t *a = client_open("/ws", "room=r1&name=alice");
    conn_t *b = client_open("/ws", "room=r1&name=bob");
    client_send(a, "{\"type\":\"join\",\"room\":\"r2\"}");
    client_send(a, "{\"type\":\"join\",\"room\":\"r3\"}");
    client_send(b, "{\"type\":\"join\",\"room\":\"r3\"}");
    assert_int_equal(M.rooms, 3);
    assert_int_equal(M.room_members, 5);
    client_send(a, "{\"type\":\"join\",\"room\":\"r4\"}");   /* refused: no gauge moves */
    assert_int_equal(M.rooms, 3);
    assert_int_equal(M.room_members, 5);
    client_send(a, "{\"type\":\"leave\",\"room\":\"r2\"}");
    assert_int_equal(M.rooms, 2);
    assert_int_equal(M.room_members, 4);
    client_send(a, "{\"type\":\"msg\",\"room\":\"r2\",\"text\":\"x\"}");
    client_send(a, "{\"type\":\"msg\",\"room\":\"r1\",\"text\":\"x\"}");
    client_send(a, "nonsense");
    assert_int_equal(M.msgs_dropped[METRICS_DROP_NOT_IN_ROOM], 1);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_INVALID], 1);
    assert_int_equal(M.msgs_received, 8);
    uint64_t timed = 0;   /* only the msg that was fanned out has a latency */
    for (int i = 0; i <= METRICS_LATENCY_BUCKETS; i++) timed += M.msg_latency[i];
    assert_int_equal(timed, 1);
    client_close(a);
    assert_int_equal(M.rooms, 2);
    assert_int_equal(M.room_members, 2);
    client_close(b);
    assert_int_equal(M.rooms, 0);
    assert_int_equal(M.room_members, 0);
}

/* ---- tests: with the fixture policy ---- */

/* With redis_url set and Redis unreachable, every bus call answers BUS_EDOWN at once: the hub
 * serves its own members with its own ids and ring, exactly like a single node. */
static void test_bus_down_fallback(void **state)
{
    env_up("--redis-url", "redis://127.0.0.1:1/0", "--redis-connect-timeout-ms", "100", "--history-size", "5",
           "--node-id", "unit-node", NULL);
    char err[256];
    assert_int_equal(hub_bus_open(T.gw.hub, err, sizeof err), 0);
    assert_int_equal(hub_bus_state(T.gw.hub), 0);
    assert_int_equal(M.bus_up, 0);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    json_t *snap = expect(a, "room");
    assert_int_equal(json_array_size(jget(snap, "members")), 1);
    conn_t *b = client_open("/ws", "room=lobby&name=bob");
    snap = expect(b, "room");
    assert_int_equal(json_array_size(jget(snap, "members")), 2);
    expect(a, "join");

    char id1[64], epoch[40];
    snprintf(id1, sizeof id1, "%s", say(a, "lobby", "local only", (conn_t *[]){ a, b }, 2));
    assert_int_equal(id_seq(id1, epoch, sizeof epoch), 1);
    say(b, "lobby", "two", (conn_t *[]){ a, b }, 2);
    client_send(a, "{\"type\":\"history\",\"room\":\"lobby\",\"since\":\"%s\"}", id1);
    assert_int_equal(json_array_size(jget(expect(a, "history"), "messages")), 1);

    /* nobody to relay a dm to: unknown_peer, as on a single node */
    client_send(a, "{\"type\":\"dm\",\"to\":\"nobody\",\"text\":\"hi\"}");
    expect_error(a, "unknown_peer", NULL);
    json_t *room = hub_room_json(T.gw.hub, "lobby");
    assert_int_equal(json_integer_value(json_object_get(room, "online")), 2);
    json_decref(room);
    assert_quiet(a);
    assert_quiet(b);
}

static void test_policy_join(void **state)
{
    env_up_policy(NULL);
    conn_t *a = client_open("/ws", "room=lobby&name=alice");
    json_t *w = frame_json(a, 0);
    assert_string_equal(jstr(w, "policy"), policy_version(GW->policy));
    assert_int_equal(strlen(jstr(w, "policy")), 64);
    drain(a);

    /* refused with the policy's code, by URL and by message; the conn stays usable */
    conn_t *b = client_open("/ws", "room=vip&name=bob");
    expect_error(b, "vip_only", "vip");
    assert_quiet(b);
    client_send(a, "{\"type\":\"join\",\"room\":\"vip\"}");
    expect_error(a, "vip_only", "vip");
    assert_null(hub_room_json(GW->hub, "vip"));
    assert_int_equal(M.msgs_dropped[METRICS_DROP_POLICY], 2);

    /* a failing hook with policy_fail=closed refuses */
    client_send(a, "{\"type\":\"join\",\"room\":\"boom\"}");
    expect_error(a, "policy_error", "boom");
    assert_null(hub_room_json(GW->hub, "boom"));
    assert_int_equal(M.policy_errors[POLICY_HOOK_JOIN][METRICS_POLICY_ERROR], 1);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_POLICY], 3);

    client_send(b, "{\"type\":\"join\",\"room\":\"lobby\"}");
    assert_members(jget(expect(b, "room"), "members"), (conn_t *[]){ a, b }, 2);
    assert_member(jget(expect(a, "join"), "member"), b, 0);
    assert_quiet(a);
    assert_quiet(b);
}

/* on_connect sees the name, the decoded query and the headers (lower-case names). */
static void test_policy_connect(void **state)
{
    env_up_policy(NULL);
    char reason[128];
    assert_int_equal(client_refused("/ws", "room=lobby&name=banned", reason, sizeof reason), 403);
    assert_string_equal(reason, "banned user");
    assert_int_equal(client_refused("/ws", "name=bob&deny=for%20a%20reason", reason, sizeof reason), 403);
    assert_string_equal(reason, "denied:for a reason");
    assert_int_equal(client_refused("/ws", "name=crash", reason, sizeof reason), 503);   /* fail closed */
    assert_string_equal(reason, "policy_error");
    assert_int_equal(M.policy_errors[POLICY_HOOK_CONNECT][METRICS_POLICY_ERROR], 1);

    char path[] = "/ws", url[] = "/ws?name=bob", query[] = "name=bob", hname[] = "X-Block", hvalue[] = "yes";
    http_request_t req;
    request_fill(&req, url, sizeof url, path, query);
    req.headers[0] = (http_header_t){ hname, hvalue };
    req.nheaders = 1;
    void *data = NULL;
    assert_int_equal(routes_chat_endpoint.admit(GW, &req, "10.0.0.9", &data, reason, sizeof reason), 403);
    assert_string_equal(reason, "blocked:yes");
    assert_null(data);

    /* the URL's query reaches on_join too, decoded */
    conn_t *a = client_open("/ws", "room=ticketed&name=alice&ticket=y%65s");
    assert_string_equal(jstr(expect(a, "room"), "room"), "ticketed");
    conn_t *b = client_open("/ws", "room=ticketed&name=bob&ticket=no");
    expect_error(b, "no_ticket", "ticketed");
    assert_quiet(b);
    drain(a);
    /* of a repeated key the first counts; a value that does not decode to UTF-8 is left out */
    static const struct { const char *query; int admitted; } q[] = {
        { "room=ticketed&ticket=yes&ticket=no", 1 }, { "room=ticketed&ticket=no&ticket=yes", 0 },
        { "room=ticketed&ticket=%ff&ticket=yes", 1 }, { "room=ticketed&ticket=%zz&ticket=yes", 1 },
        { "room=ticketed&ticket=yes%ff", 0 }, { "room=ticketed&ticket", 0 },
        { "room=ticketed&&=no&ticket=yes&", 1 } };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        conn_t *c = client_open("/ws", q[i].query);
        if (q[i].admitted) assert_string_equal(jstr(expect(c, "room"), "room"), "ticketed");
        else expect_error(c, "no_ticket", "ticketed");
        assert_quiet(c);
    }
    /* many pairs, a key past 63 bytes among them */
    char many[8192] = "room=ticketed";
    for (int i = 0; i < 500; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "&k%d=%%41%d", i, i);
    snprintf(many + strlen(many), sizeof many - strlen(many), "&%064d=no&ticket=yes", 0);
    conn_t *d = client_open("/ws", many);
    assert_string_equal(jstr(expect(d, "room"), "room"), "ticketed");
    json_t *stats = keep(hub_stats_json(GW->hub));
    assert_int_equal(json_integer_value(json_object_get(stats, "online")), 10);
}

static void test_policy_fail_open(void **state)
{
    env_up_policy("--policy-fail", "open", NULL);
    conn_t *a = client_open("/ws", "room=boom&name=alice");
    assert_string_equal(jstr(expect(a, "room"), "room"), "boom");
    assert_int_equal(M.policy_errors[POLICY_HOOK_JOIN][METRICS_POLICY_ERROR], 1);
    client_send(a, "{\"type\":\"join\",\"room\":\"vip\"}");   /* a refusal is still a refusal */
    expect_error(a, "vip_only", "vip");
    assert_quiet(a);
}

static void test_policy_message(void **state)
{
    env_up_policy(NULL);
    conn_t *a, *b, *c;
    trio("lobby", &a, &b, &c);
    conn_t *all[3] = { a, b, c };

    /* unchanged */
    const char *id1 = say(a, "lobby", "plain", all, 3);
    char epoch[40];
    assert_int_equal(id_seq(id1, epoch, sizeof epoch), 1);

    /* rewritten: the extra field rides on the msg, the cid stays with the ack */
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"color\",\"cid\":\"k1\"}");
    sbuf_t *shared = NULL;
    for (size_t i = 0; i < 3; i++) {
        json_t *m = expect(all[i], "msg");
        assert_string_equal(jstr(m, "text"), "colored");
        assert_string_equal(jstr(m, "color"), "red");
        assert_string_equal(jstr(m, "from.id"), a->id);
        assert_string_equal(jstr(m, "room"), "lobby");
        assert_null(json_object_get(m, "cid"));
        assert_int_equal(id_seq(jstr(m, "id"), epoch, sizeof epoch), 2);
        if (!shared) shared = last_payload(all[i]);
        assert_ptr_equal(last_payload(all[i]), shared);
    }
    json_t *ack = expect(a, "ack");
    assert_string_equal(jstr(ack, "cid"), "k1");
    assert_int_equal(id_seq(jstr(ack, "id"), epoch, sizeof epoch), 2);
    for (size_t i = 0; i < 3; i++) assert_quiet(all[i]);

    /* dropped with the policy's code */
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"spam\",\"cid\":\"k2\"}");
    expect_error(a, "no_spam", "k2");
    for (size_t i = 0; i < 3; i++) assert_quiet(all[i]);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_POLICY], 1);

    /* a runaway hook: policy_error, and the connection (and the policy) still work */
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"loop\",\"cid\":\"k3\"}");
    expect_error(a, "policy_error", "k3");
    for (size_t i = 0; i < 3; i++) assert_quiet(all[i]);
    assert_int_equal(M.policy_errors[POLICY_HOOK_MESSAGE][METRICS_POLICY_BUDGET], 1);
    assert_int_equal(M.msgs_dropped[METRICS_DROP_POLICY], 2);
    const char *id3 = say(a, "lobby", "after", all, 3);
    assert_int_equal(id_seq(id3, epoch, sizeof epoch), 3);   /* dropped messages take no seq */

    /* fields a client forges cannot override the hub's own, even when the policy rewrites */
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"color\",\"cid\":\"k6\","
                   "\"from\":{\"id\":\"server\",\"name\":\"ops\"},\"id\":\"x:1\",\"ts\":1,\"type2\":\"t\"}");
    for (size_t i = 0; i < 3; i++) {
        json_t *m = expect(all[i], "msg");
        assert_string_equal(jstr(m, "from.id"), a->id);
        assert_string_equal(jstr(m, "from.name"), "alice");
        assert_int_equal(id_seq(jstr(m, "id"), epoch, sizeof epoch), 4);
        assert_true(json_integer_value(json_object_get(m, "ts")) > 1000);
        assert_string_equal(jstr(m, "color"), "red");
        assert_null(json_object_get(m, "type2"));   /* only fields the policy set ride along */
    }
    assert_string_equal(jstr(expect(a, "ack"), "cid"), "k6");
    for (size_t i = 0; i < 3; i++) assert_quiet(all[i]);
    /* the same without a cid: a forged field still does not ride along */
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"color\",\"type2\":\"t\"}");
    for (size_t i = 0; i < 3; i++) {
        json_t *m = expect(all[i], "msg");
        assert_string_equal(jstr(m, "color"), "red");
        assert_null(json_object_get(m, "type2"));
    }
    for (size_t i = 1; i < 3; i++) assert_quiet(all[i]);
    expect(a, "ack");

    /* rewrites the hub refuses */
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"elsewhere\",\"cid\":\"k4\"}");
    expect_error(a, "not_in_room", "k4");
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"tojoin\"}");
    expect_error(a, "policy_error", NULL);
    client_send(a, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"badtext\"}");
    expect_error(a, "policy_error", NULL);
    for (size_t i = 0; i < 3; i++) assert_quiet(all[i]);
    assert_null(hub_room_json(GW->hub, "elsewhere"));

    /* a policy-claimed error code for a custom type */
    client_send(a, "{\"type\":\"nope\",\"room\":\"lobby\"}");
    expect_error(a, "bad_type", NULL);

    /* dm and signal pass the hook too */
    client_send(a, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"spam\",\"cid\":\"k5\"}", b->id);
    expect_error(a, "no_spam", "k5");
    client_send(a, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"fine\"}", b->id);
    assert_string_equal(jstr(expect(b, "dm"), "text"), "fine");
    client_send(a, "{\"type\":\"signal\",\"room\":\"lobby\",\"to\":\"%s\",\"data\":{\"x\":1}}", c->id);
    assert_string_equal(jstr(expect(c, "signal"), "from"), a->id);
    for (size_t i = 0; i < 3; i++) assert_quiet(all[i]);
}

static void test_policy_custom(void **state)
{
    env_up_policy(NULL);
    conn_t *a, *b, *c;
    trio("lobby", &a, &b, &c);

    /* a custom type the policy passes: to the others, with from, without cid */
    client_send(a, "{\"type\":\"typing\",\"room\":\"lobby\",\"cid\":\"t1\",\"state\":true,\"from\":\"forged\"}");
    json_t *tb = expect(b, "typing");
    sbuf_t *shared = last_payload(b);
    json_t *tc = expect(c, "typing");
    assert_ptr_equal(last_payload(c), shared);
    assert_true(json_equal(tb, tc));
    assert_string_equal(jstr(tb, "room"), "lobby");
    assert_true(json_is_true(json_object_get(tb, "state")));
    assert_string_equal(jstr(tb, "from.id"), a->id);
    assert_string_equal(jstr(tb, "from.name"), "alice");
    assert_null(json_object_get(tb, "cid"));
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);

    /* a custom type in a room the sender is not in */
    client_send(a, "{\"type\":\"typing\",\"room\":\"other\"}");
    expect_error(a, "not_in_room", NULL);

    /* gw.members: join order, after a member in the middle left */
    client_send(b, "{\"type\":\"leave\",\"room\":\"lobby\"}");
    conn_t *d = client_open("/ws", "room=lobby&name=dave");
    drain(a);
    drain(c);
    drain(d);
    client_send(a, "{\"type\":\"who\",\"room\":\"lobby\"}");
    json_t *who = expect(a, "who");
    assert_string_equal(jstr(who, "room"), "lobby");
    assert_members(jget(who, "members"), (conn_t *[]){ a, c, d }, 3);
    assert_quiet(a);
    assert_quiet(c);
    assert_quiet(d);

    /* gw.rooms */
    client_send(b, "{\"type\":\"join\",\"room\":\"side\"}");
    drain(b);
    client_send(a, "{\"type\":\"rooms\"}");
    json_t *rooms = jget(expect(a, "rooms"), "rooms");
    assert_int_equal(json_array_size(rooms), 2);
    int seen = 0;
    for (size_t i = 0; i < 2; i++) {
        json_t *r = json_array_get(rooms, i);
        json_int_t online = json_integer_value(json_object_get(r, "online"));
        if (!strcmp(jstr(r, "name"), "lobby")) {
            seen |= 1;
            assert_int_equal(online, 3);
        } else if (!strcmp(jstr(r, "name"), "side")) {
            seen |= 2;
            assert_int_equal(online, 1);
        }
    }
    assert_int_equal(seen, 3);

    /* gw.broadcast with except */
    client_send(a, "{\"type\":\"shout\",\"room\":\"lobby\",\"text\":\"HEY\"}");
    json_t *sc = expect(c, "shout");
    assert_string_equal(jstr(sc, "text"), "HEY");
    shared = last_payload(c);
    expect(d, "shout");
    assert_ptr_equal(last_payload(d), shared);
    assert_quiet(a);
    assert_quiet(b);
    assert_quiet(c);
    assert_quiet(d);
}

/* The policy's {type="kicked", ok} answer: 1 for true, 0 for false. */
static int kicked_ok(conn_t *c)
{
    json_t *ok = jget(expect(c, "kicked"), "ok");   /* json_is_true() evaluates its argument twice */
    assert_true(json_is_boolean(ok));
    return json_is_true(ok);
}

static void test_policy_kick(void **state)
{
    env_up_policy(NULL);
    conn_t *a, *b, *c;
    trio("lobby", &a, &b, &c);

    client_send(a, "{\"type\":\"kick\",\"room\":\"lobby\",\"target\":\"%s\"}", b->id);
    json_t *e = expect_error(b, "kicked_by_policy", NULL);
    assert_string_equal(jstr(e, "message"), "go away");
    assert_int_equal(b->open, 0);
    assert_int_equal(b->close_code, WS_CLOSE_POLICY);
    assert_string_equal(b->close_reason, "go away");
    assert_true(kicked_ok(a));
    assert_quiet(a);
    assert_quiet(c);

    /* kicking one already closing, or nobody */
    client_send(a, "{\"type\":\"kick\",\"room\":\"lobby\",\"target\":\"%s\"}", b->id);
    assert_false(kicked_ok(a));
    client_send(a, "{\"type\":\"kick\",\"room\":\"lobby\",\"target\":\"nobody\"}");
    assert_false(kicked_ok(a));

    /* the server detaches the closed conn: presence, then on_leave's broadcast */
    client_close(b);
    for (conn_t *o = a; o; o = o == a ? c : NULL) {
        assert_member(jget(expect(o, "leave"), "member"), b, 0);
        json_t *left = expect(o, "left");
        assert_string_equal(jstr(left, "id"), b->id);
        assert_string_equal(jstr(left, "room"), "lobby");
        assert_quiet(o);
    }

    /* a sender that gets itself kicked: its message is not delivered */
    client_send(c, "{\"type\":\"msg\",\"room\":\"lobby\",\"text\":\"kickme\",\"cid\":\"x\"}");
    expect_error(c, "bye", NULL);
    assert_int_equal(c->open, 0);
    assert_quiet(c);
    assert_quiet(a);
    assert_int_equal(c->dropped, 0);
    client_close(c);
    expect(a, "leave");
    expect(a, "left");
    assert_quiet(a);
    json_t *r = keep(hub_room_json(GW->hub, "lobby"));
    assert_members(jget(r, "members"), (conn_t *[]){ a }, 1);
}

static void test_policy_on_leave(void **state)
{
    env_up_policy(NULL);
    conn_t *a, *b, *c;
    trio("lobby", &a, &b, &c);
    client_send(c, "{\"type\":\"join\",\"room\":\"side\"}");
    drain(c);

    /* leave by message: the leaver is gone before on_leave broadcasts */
    client_send(b, "{\"type\":\"leave\",\"room\":\"lobby\"}");
    for (conn_t *o = a; o; o = o == a ? c : NULL) {
        expect(o, "leave");
        assert_string_equal(jstr(expect(o, "left"), "id"), b->id);
        assert_quiet(o);
    }
    assert_quiet(b);

    /* disconnect: on_leave once per room */
    conn_t *d = client_open("/ws", "room=side&name=dave");
    drain(c);
    drain(d);
    client_close(c);
    assert_string_equal(jstr(expect(a, "leave"), "room"), "lobby");
    assert_string_equal(jstr(expect(a, "left"), "room"), "lobby");
    assert_quiet(a);
    assert_string_equal(jstr(expect(d, "leave"), "room"), "side");
    assert_string_equal(jstr(expect(d, "left"), "room"), "side");
    assert_quiet(d);
    assert_int_equal(M.rooms, 2);

    /* the last member: the room goes away after on_leave (its broadcast reaches nobody) */
    client_close(d);
    assert_null(hub_room_json(GW->hub, "side"));
    assert_int_equal(M.policy_errors[POLICY_HOOK_LEAVE][METRICS_POLICY_ERROR], 0);
    assert_int_equal(M.rooms, 1);
}

int main(void)
{
    const char *src = getenv("CHATGW_SRC");
    if (src && *src) {
        snprintf(fixtures, sizeof fixtures, "%s/tests/unit/hub_fixtures", src);
    } else {
        const char *file = THIS_FILE;
        const char *slash = strrchr(file, '/');
        snprintf(fixtures, sizeof fixtures, "%.*s/hub_fixtures", slash ? (int)(slash - file) : 1,
                 slash ? file : ".");
    }
    if (!getenv("CHATGW_TEST_VERBOSE")) log_level_set(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_welcome, env_down),
        cmocka_unit_test_teardown(test_join_url_and_message, env_down),
        cmocka_unit_test_teardown(test_presence, env_down),
        cmocka_unit_test_teardown(test_msg_fanout, env_down),
        cmocka_unit_test_teardown(test_dm, env_down),
        cmocka_unit_test_teardown(test_signal, env_down),
        cmocka_unit_test_teardown(test_history, env_down),
        cmocka_unit_test_teardown(test_history_disabled, env_down),
        cmocka_unit_test_teardown(test_rate_limited, env_down),
        cmocka_unit_test_teardown(test_room_full, env_down),
        cmocka_unit_test_teardown(test_bad_input, env_down),
        cmocka_unit_test_teardown(test_room_reclaimed, env_down),
        cmocka_unit_test_teardown(test_room_json_announce, env_down),
        cmocka_unit_test_teardown(test_metrics, env_down),
        cmocka_unit_test_teardown(test_bus_down_fallback, env_down),
        cmocka_unit_test_teardown(test_policy_join, env_down),
        cmocka_unit_test_teardown(test_policy_connect, env_down),
        cmocka_unit_test_teardown(test_policy_fail_open, env_down),
        cmocka_unit_test_teardown(test_policy_message, env_down),
        cmocka_unit_test_teardown(test_policy_custom, env_down),
        cmocka_unit_test_teardown(test_policy_kick, env_down),
        cmocka_unit_test_teardown(test_policy_on_leave, env_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
