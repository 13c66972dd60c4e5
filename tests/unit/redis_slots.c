/* Unit tests for bus/redis_slots.h: CRC16-XMODEM and hash slots against Redis's documented
 * vectors and hash-tag rules, the CLUSTER SLOTS map from hand-built hiredis replies (shards,
 * replicas, the seed host for empty hosts, gaps, overlaps and malformed replies), and MOVED/ASK
 * parsing with its edge cases. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "bus/redis_slots.h"

/* ---- hand-built replies ---- */

static redisReply *rp_new(int type)
{
    redisReply *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->type = type;
    return r;
}

static redisReply *rp_int(long long v)
{
    redisReply *r = rp_new(REDIS_REPLY_INTEGER);
    r->integer = v;
    return r;
}

static redisReply *rp_str(const char *s)
{
    redisReply *r = rp_new(REDIS_REPLY_STRING);
    r->len = (int)strlen(s);
    r->str = strdup(s);
    assert_non_null(r->str);
    return r;
}

/* An array of n replies (taken over). */
static redisReply *rp_arr(size_t n, ...)
{
    redisReply *r = rp_new(REDIS_REPLY_ARRAY);
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    assert_non_null(r->element);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) r->element[i] = va_arg(ap, redisReply *);
    va_end(ap);
    return r;
}

static void rp_free(redisReply *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->elements; i++) rp_free(r->element[i]);
    free(r->element);
    free(r->str);
    free(r);
}

static redisReply *rp_node(const char *host, long long port)
{
    return rp_arr(3, rp_str(host), rp_int(port), rp_str("0123456789abcdef0123456789abcdef01234567"));
}

static size_t slot_of(const char *key) { return redis_slots_keyslot(key, strlen(key)); }

/* ---- CRC16 and key slots ---- */

static void test_crc16(void **state)
{
    (void)state;
    /* The check value of CRC16-XMODEM, as in Redis's cluster spec. */
    assert_int_equal(redis_slots_crc16("123456789", 9), 0x31C3);
    assert_int_equal(redis_slots_crc16("", 0), 0);
    assert_int_equal(slot_of("123456789"), 12739);
    /* Values CLUSTER KEYSLOT answers. */
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    assert_int_equal(slot_of(""), 0);
}

static void test_hash_tags(void **state)
{
    (void)state;
    assert_int_equal(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    /* Only the first '{' and the first '}' after it count. */
    assert_int_equal(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_int_equal(slot_of("foo{{bar}}zap"), 4015);
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    /* An empty tag, or an unclosed one, hashes the whole key. */
    assert_int_equal(slot_of("foo{}{bar}"), redis_slots_crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(slot_of("foo{}{bar}"), 8363);
    assert_int_not_equal(slot_of("foo{}{bar}"), slot_of("bar"));
    assert_int_equal(slot_of("foo{bar"), redis_slots_crc16("foo{bar", 7) & 16383);
    assert_int_equal(slot_of("}foo{"), redis_slots_crc16("}foo{", 5) & 16383);
    /* A room's keys share its tag; chatgw's node-level keys share {nodes}. */
    assert_int_equal(slot_of("chatgw:{lobby}:seq"), slot_of("chatgw:{lobby}:hist"));
    assert_int_equal(slot_of("chatgw:{lobby}:presence"), slot_of("lobby"));
    assert_int_equal(slot_of("chatgw:{lobby}:seq"), 10294);
    assert_int_equal(slot_of("chatgw:{nodes}:conns:n1"), slot_of("chatgw:{nodes}"));
    /* Bytes, not C strings: a NUL inside a key is hashed. */
    assert_int_equal(redis_slots_keyslot("a\0b", 3), redis_slots_crc16("a\0b", 3) & 16383);
    assert_int_not_equal(redis_slots_keyslot("a\0b", 3), slot_of("a"));
}

/* ---- the slot map ---- */

static redis_slots_map_t *map_new(void)
{
    redis_slots_map_t *m = calloc(1, sizeof *m);
    assert_non_null(m);
    return m;
}

static void test_map_three_shards(void **state)
{
    (void)state;
    /* Three masters with one replica each; the second master also owns a second range, and
     * one node reports its host as "" (the address the client reached it at). */
    redisReply *rep = rp_arr(4,
        rp_arr(4, rp_int(0), rp_int(5460), rp_node("127.0.0.1", 7000), rp_node("127.0.0.1", 7003)),
        rp_arr(4, rp_int(5461), rp_int(10921), rp_node("127.0.0.1", 7001), rp_node("127.0.0.1", 7004)),
        rp_arr(3, rp_int(10922), rp_int(10922), rp_node("127.0.0.1", 7001)),
        rp_arr(5, rp_int(10923), rp_int(16383), rp_node("", 7002), rp_node("?", 7005), rp_node("::1", 7006)));
    redis_slots_map_t *m = map_new();
    char err[128] = "";
    assert_int_equal(redis_slots_map_parse(rep, "seed.example", m, err, sizeof err), 0);
    assert_int_equal(m->nshards, 3);
    assert_int_equal(m->covered, REDIS_SLOTS_COUNT);

    const redis_slots_shard_t *s = redis_slots_map_shard(m, 0);
    assert_non_null(s);
    assert_string_equal(s->master.host, "127.0.0.1");
    assert_int_equal(s->master.port, 7000);
    assert_int_equal(s->nreplicas, 1);
    assert_int_equal(s->replicas[0].port, 7003);
    assert_ptr_equal(redis_slots_map_shard(m, 5460), s);

    s = redis_slots_map_shard(m, 10922);
    assert_non_null(s);
    assert_int_equal(s->master.port, 7001);
    assert_ptr_equal(redis_slots_map_shard(m, 5461), s);
    assert_int_equal(s->nreplicas, 1);

    s = redis_slots_map_shard(m, 12739);
    assert_non_null(s);
    assert_string_equal(s->master.host, "seed.example");
    assert_int_equal(s->master.port, 7002);
    assert_int_equal(s->nreplicas, 2);
    assert_string_equal(s->replicas[0].host, "seed.example");
    assert_string_equal(s->replicas[1].host, "::1");
    assert_int_equal(s->replicas[1].port, 7006);
    assert_ptr_equal(redis_slots_map_shard(m, 16383), s);
    assert_null(redis_slots_map_shard(m, 16384));

    redis_slots_map_free(m);
    assert_int_equal(m->nshards, 0);
    assert_null(redis_slots_map_shard(m, 0));
    redis_slots_map_free(m);   /* twice is harmless */
    free(m);
    rp_free(rep);
}

static void test_map_gaps(void **state)
{
    (void)state;
    /* A cluster still being set up: only part of the slots served; an empty reply serves none. */
    redisReply *rep = rp_arr(1, rp_arr(3, rp_int(100), rp_int(199), rp_node("10.0.0.1", 6379)));
    redis_slots_map_t *m = map_new();
    assert_int_equal(redis_slots_map_parse(rep, NULL, m, NULL, 0), 0);
    assert_int_equal(m->covered, 100);
    assert_null(redis_slots_map_shard(m, 99));
    assert_non_null(redis_slots_map_shard(m, 100));
    assert_null(redis_slots_map_shard(m, 200));
    rp_free(rep);
    redis_slots_map_free(m);

    rep = rp_arr(0);
    assert_int_equal(redis_slots_map_parse(rep, NULL, m, NULL, 0), 0);
    assert_int_equal(m->nshards, 0);
    assert_int_equal(m->covered, 0);
    redis_slots_map_free(m);
    free(m);
    rp_free(rep);
}

static void expect_bad(redisReply *rep, const char *seed, const char *words)
{
    redis_slots_map_t *m = map_new();
    char err[128] = "";
    assert_int_equal(redis_slots_map_parse(rep, seed, m, err, sizeof err), GW_EINVAL);
    assert_non_null(strstr(err, words));
    assert_int_equal(m->nshards, 0);
    assert_null(m->shards);
    assert_int_equal(m->covered, 0);
    assert_null(redis_slots_map_shard(m, 0));
    redis_slots_map_free(m);
    free(m);
    rp_free(rep);
}

static void test_map_bad(void **state)
{
    (void)state;
    expect_bad(rp_str("nope"), NULL, "not an array");
    expect_bad(rp_new(REDIS_REPLY_NIL), NULL, "not an array");
    expect_bad(rp_arr(1, rp_int(1)), NULL, "range 0 is not");
    expect_bad(rp_arr(1, rp_arr(2, rp_int(0), rp_int(1))), NULL, "range 0 is not");
    expect_bad(rp_arr(1, rp_arr(3, rp_str("0"), rp_int(1), rp_node("h", 1))), NULL, "range 0 is not");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(16384), rp_node("h", 1))), NULL, "out of 0..16383");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(-1), rp_int(3), rp_node("h", 1))), NULL, "out of 0..16383");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(9), rp_int(3), rp_node("h", 1))), NULL, "out of 0..16383");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), rp_node("h", 0))), NULL, "bad master");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), rp_node("h", 65536))), NULL, "bad master");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), rp_arr(1, rp_str("h")))), NULL, "bad master");
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), rp_arr(2, rp_int(1), rp_int(2)))), NULL, "bad master");
    /* An empty host with no seed to stand for it. */
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), rp_node("", 7000))), NULL, "bad master");
    char longhost[REDIS_SLOTS_HOST_MAX + 1];
    memset(longhost, 'a', sizeof longhost - 1);
    longhost[sizeof longhost - 1] = '\0';
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), rp_node(longhost, 7000))), NULL, "bad master");
    redisReply *nul = rp_node("ab", 7000);
    nul->element[0]->str[1] = '\0';   /* a NUL inside the host */
    expect_bad(rp_arr(1, rp_arr(3, rp_int(0), rp_int(3), nul)), NULL, "bad master");
    /* A bad replica after a good shard was added: everything is undone. */
    expect_bad(rp_arr(2, rp_arr(3, rp_int(0), rp_int(3), rp_node("h", 1)),
                      rp_arr(4, rp_int(4), rp_int(9), rp_node("h", 2), rp_node("r", -5))),
               NULL, "range 1 has a bad replica");
    /* Overlapping ranges, by one master or two. */
    expect_bad(rp_arr(2, rp_arr(3, rp_int(0), rp_int(10), rp_node("h", 1)),
                      rp_arr(3, rp_int(10), rp_int(20), rp_node("h", 2))),
               NULL, "range 1 overlaps");
    expect_bad(rp_arr(2, rp_arr(3, rp_int(0), rp_int(10), rp_node("h", 1)),
                      rp_arr(3, rp_int(5), rp_int(6), rp_node("h", 1))),
               NULL, "range 1 overlaps");
}

/* ---- MOVED / ASK ---- */

static int redir(const char *s, redis_slots_redirect_t *r)
{
    memset(r, 0x5a, sizeof *r);
    return redis_slots_redirect_parse(s, strlen(s), r);
}

static void test_redirect(void **state)
{
    (void)state;
    redis_slots_redirect_t r;
    assert_int_equal(redir("MOVED 3999 127.0.0.1:6381", &r), 0);
    assert_int_equal(r.kind, REDIS_SLOTS_MOVED);
    assert_int_equal(r.slot, 3999);
    assert_string_equal(r.node.host, "127.0.0.1");
    assert_int_equal(r.node.port, 6381);

    assert_int_equal(redir("ASK 0 redis-2.example:7000", &r), 0);
    assert_int_equal(r.kind, REDIS_SLOTS_ASK);
    assert_int_equal(r.slot, 0);
    assert_string_equal(r.node.host, "redis-2.example");
    assert_int_equal(r.node.port, 7000);

    /* IPv6: the port follows the last ':'. */
    assert_int_equal(redir("MOVED 16383 ::1:7002", &r), 0);
    assert_int_equal(r.slot, 16383);
    assert_string_equal(r.node.host, "::1");
    assert_int_equal(r.node.port, 7002);

    /* ":port" means "the host you asked" (unknown endpoint). */
    assert_int_equal(redir("MOVED 12 :7001", &r), 0);
    assert_string_equal(r.node.host, "");
    assert_int_equal(r.node.port, 7001);

    /* Bytes, not a C string: only n bytes are read. */
    assert_int_equal(redis_slots_redirect_parse("ASK 5 h:7000trailing", 12, &r), 0);
    assert_int_equal(r.node.port, 7000);

    /* Other errors are no redirection. */
    assert_int_equal(redir("ERR unknown command", &r), GW_ENOTFOUND);
    assert_int_equal(redir("CLUSTERDOWN Hash slot not served", &r), GW_ENOTFOUND);
    assert_int_equal(redir("TRYAGAIN Multiple keys request during rehashing of slot", &r), GW_ENOTFOUND);
    assert_int_equal(redir("moved 1 h:1", &r), GW_ENOTFOUND);
    assert_int_equal(redir("MOVED", &r), GW_ENOTFOUND);
    assert_int_equal(redir("ASKING", &r), GW_ENOTFOUND);
    assert_int_equal(redir("", &r), GW_ENOTFOUND);

    /* Redirections that are malformed. */
    const char *bad[] = {
        "MOVED ",                     "MOVED 1",             "MOVED 1 ",              "MOVED 16384 h:1",
        "MOVED -1 h:1",               "MOVED +1 h:1",        "MOVED 1x h:1",          "MOVED  1 h:1",
        "MOVED 99999999999 h:1",      "MOVED 1 h",           "MOVED 1 h:",            "MOVED 1 h:0",
        "MOVED 1 h:65536",            "MOVED 1 h:70x",       "MOVED 1 h:1 ",          "MOVED 1 h: 1",
        "MOVED 1 h h:1",              "MOVED 1 h\t:1",       "ASK 1 h:-1",            "ASK x h:1",
        "ASK 1 h:99999999999999999",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (redir(bad[i], &r) != GW_EINVAL) fail_msg("accepted or misread: \"%s\"", bad[i]);
    }
    /* A NUL inside the host. */
    assert_int_equal(redis_slots_redirect_parse("MOVED 1 a\0b:1", 13, &r), GW_EINVAL);
    /* The longest host that fits, and one byte more. */
    char big[8 + REDIS_SLOTS_HOST_MAX + 8];
    strcpy(big, "ASK 1 ");
    memset(big + 6, 'h', REDIS_SLOTS_HOST_MAX - 1);
    strcpy(big + 6 + REDIS_SLOTS_HOST_MAX - 1, ":7000");
    assert_int_equal(redir(big, &r), 0);
    assert_int_equal(strlen(r.node.host), REDIS_SLOTS_HOST_MAX - 1);
    memset(big + 6, 'h', REDIS_SLOTS_HOST_MAX);
    strcpy(big + 6 + REDIS_SLOTS_HOST_MAX, ":7000");
    assert_int_equal(redir(big, &r), GW_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_map_three_shards),
        cmocka_unit_test(test_map_gaps),
        cmocka_unit_test(test_map_bad),
        cmocka_unit_test(test_redirect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
