/* Unit tests for proto.c: every client type decodes with valid input and fills the borrowed
 * fields; each failure class (invalid JSON, non-object, missing or malformed type, wrong field
 * types, missing fields, bad room names and display names, oversized text, bad cid and since)
 * gets the right error code and a message naming the field; the validators and since parser
 * hold at their edges; and every encoder's output parses back with the right fields, including
 * the spliced room/history replies and the extra-merge of msg. Run under ASan for leaks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <inttypes.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "proto/proto.h"

/* cmocka hands every test a state it does not use (the build passes -Wno-unused-parameter). */
#pragma GCC diagnostic ignored "-Wunused-parameter"

/* ---- helpers ---- */

#define MAX_TEXT 4096

static void decode_ok(const char *json, size_t max_text, proto_in_t *in)
{
    proto_err_t err = {0};
    int rc = proto_decode(json, strlen(json), max_text, in, &err);
    if (rc != 0) print_error("decode failed for %s: %s %s\n", json, err.code, err.message);
    assert_int_equal(rc, 0);
    assert_non_null(in->root);
}

/* Decodes n bytes expecting code, and that the message contains needle (NULL: anything). */
static void decode_err_n(const char *json, size_t n, size_t max_text, const char *code, const char *needle)
{
    proto_in_t in;
    proto_err_t err = {0};
    int rc = proto_decode(json, n, max_text, &in, &err);
    int want = !strcmp(code, "too_large") || !strcmp(code, "too_complex") ? GW_ETOOBIG : GW_EINVAL;
    if (rc != want) print_error("decode of %.*s gave %d, want %d\n", (int)n, json, rc, want);
    assert_int_equal(rc, want);
    assert_null(in.root);
    assert_non_null(err.code);
    if (strcmp(err.code, code)) print_error("%.*s: got %s (%s), want %s\n", (int)n, json, err.code, err.message, code);
    assert_string_equal(err.code, code);
    if (needle && !strstr(err.message, needle)) print_error("message '%s' lacks '%s'\n", err.message, needle);
    if (needle) assert_non_null(strstr(err.message, needle));
}

static void decode_err(const char *json, const char *code, const char *needle)
{
    decode_err_n(json, strlen(json), MAX_TEXT, code, needle);
}

/* Parses an encoder's output, which must be exactly one JSON object; takes the buffer. */
static json_t *parse(sbuf_t *s)
{
    assert_non_null(s);
    assert_int_equal(s->refs, 1);
    json_error_t jerr;
    json_t *v = json_loadb(s->data, s->len, 0, &jerr);
    if (!v) print_error("bad output %.*s: %s\n", (int)s->len, s->data, jerr.text);
    assert_non_null(v);
    assert_true(json_is_object(v));
    sbuf_unref(s);
    return v;
}

static void assert_str_field(json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) print_error("field %s is not a string\n", key);
    assert_true(json_is_string(v));
    assert_string_equal(json_string_value(v), want);
}

static void assert_int_field(json_t *o, const char *key, json_int_t want)
{
    json_t *v = json_object_get(o, key);
    assert_true(json_is_integer(v));
    assert_true(json_integer_value(v) == want);
}

/* The first key of the raw text is "type" (insertion order is kept). */
static void assert_type_first(const sbuf_t *s, const char *type)
{
    char want[64];
    snprintf(want, sizeof want, "{\"type\":\"%s\"", type);
    assert_true(s->len > strlen(want));
    assert_memory_equal(s->data, want, strlen(want));
}

static char *repeat(const char *unit, size_t n)
{
    size_t u = strlen(unit);
    char *s = xmalloc(u * n + 1);
    for (size_t i = 0; i < n; i++) memcpy(s + i * u, unit, u);
    s[u * n] = '\0';
    return s;
}

/* ---- decoding: valid input ---- */

static void test_decode_join(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"join\",\"room\":\"lobby\",\"name\":\"Ann\",\"since\":\"ab_C-1:42\"}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_JOIN);
    assert_string_equal(in.type_name, "join");
    assert_string_equal(in.room, "lobby");
    assert_string_equal(in.name, "Ann");
    assert_string_equal(in.since, "ab_C-1:42");
    assert_null(in.text);
    assert_null(in.cid);
    proto_in_free(&in);
    assert_null(in.root);

    decode_ok("{\"room\":\"r\",\"type\":\"join\"}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_JOIN);
    assert_string_equal(in.room, "r");
    assert_null(in.name);
    assert_null(in.since);
    proto_in_free(&in);
}

static void test_decode_room_only(void **state)
{
    static const struct { const char *json; proto_type_t type; } cases[] = {
        {"{\"type\":\"leave\",\"room\":\"a\"}", PROTO_LEAVE},
        {"{\"type\":\"mute\",\"room\":\"a\"}", PROTO_MUTE},
        {"{\"type\":\"unmute\",\"room\":\"a\"}", PROTO_UNMUTE},
        {"{\"type\":\"history\",\"room\":\"a\"}", PROTO_HISTORY},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        proto_in_t in;
        decode_ok(cases[i].json, MAX_TEXT, &in);
        assert_int_equal(in.type, cases[i].type);
        assert_string_equal(in.room, "a");
        assert_null(in.since);
        proto_in_free(&in);
    }
}

static void test_decode_history_since(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"history\",\"room\":\"a\",\"since\":\"e1:0\"}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_HISTORY);
    assert_string_equal(in.since, "e1:0");
    proto_in_free(&in);
}

static void test_decode_msg(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"hi \\u00e9\\n\",\"cid\":\"c-1\"}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_MSG);
    assert_string_equal(in.room, "a");
    assert_string_equal(in.text, "hi \xc3\xa9\n");
    assert_int_equal(in.text_len, 6);
    assert_true(json_is_string(in.cid));
    assert_string_equal(json_string_value(in.cid), "c-1");
    proto_in_free(&in);

    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"cid\":-7}", MAX_TEXT, &in);
    assert_true(json_is_integer(in.cid));
    assert_true(json_integer_value(in.cid) == -7);
    proto_in_free(&in);

    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\"}", MAX_TEXT, &in);
    assert_null(in.cid);
    proto_in_free(&in);

    /* duplicate keys are allowed; the last one wins */
    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"text\":\"y\"}", MAX_TEXT, &in);
    assert_string_equal(in.text, "y");
    proto_in_free(&in);
}

static void test_decode_dm(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"dm\",\"to\":\"abc\",\"text\":\"psst\",\"cid\":5}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_DM);
    assert_string_equal(in.to, "abc");
    assert_string_equal(in.text, "psst");
    assert_int_equal(in.text_len, 4);
    assert_true(json_integer_value(in.cid) == 5);
    assert_null(in.room);
    proto_in_free(&in);
}

static void test_decode_signal(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"signal\",\"room\":\"v\",\"to\":\"p2\",\"data\":{\"sdp\":\"x\",\"kind\":\"offer\"}}", MAX_TEXT,
              &in);
    assert_int_equal(in.type, PROTO_SIGNAL);
    assert_string_equal(in.room, "v");
    assert_string_equal(in.to, "p2");
    assert_true(json_is_object(in.data));
    assert_string_equal(json_string_value(json_object_get(in.data, "kind")), "offer");
    proto_in_free(&in);

    decode_ok("{\"type\":\"signal\",\"room\":\"v\",\"to\":\"p2\",\"data\":null}", MAX_TEXT, &in);
    assert_true(json_is_null(in.data));
    proto_in_free(&in);
}

static void test_decode_custom(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"poll.vote-2_x\",\"room\":\"a\",\"choice\":3}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_CUSTOM);
    assert_string_equal(in.type_name, "poll.vote-2_x");
    assert_string_equal(in.room, "a");
    assert_true(json_integer_value(json_object_get(in.root, "choice")) == 3);
    proto_in_free(&in);

    /* no fields needed; empty text is the policy's business */
    decode_ok("{\"type\":\"ping\",\"text\":\"\"}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_CUSTOM);
    assert_null(in.room);
    assert_string_equal(in.text, "");
    proto_in_free(&in);

    char json[128];
    char *t32 = repeat("a", 32);
    snprintf(json, sizeof json, "{\"type\":\"%s\"}", t32);
    decode_ok(json, MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_CUSTOM);
    proto_in_free(&in);
    free(t32);

    /* server-only names are just custom types to the decoder */
    decode_ok("{\"type\":\"welcome\"}", MAX_TEXT, &in);
    assert_int_equal(in.type, PROTO_CUSTOM);
    proto_in_free(&in);

    decode_err("{\"type\":\"ping\",\"room\":\"a b\"}", "bad_field", "'room'");
    decode_err("{\"type\":\"ping\",\"text\":5}", "bad_field", "'text'");
    decode_err("{\"type\":\"ping\",\"cid\":[]}", "bad_field", "'cid'");
}

/* ---- decoding: failures ---- */

static void test_decode_bad_json(void **state)
{
    decode_err("{", "bad_json", "line 1");
    decode_err("{\"type\":\"msg\"", "bad_json", "column");
    decode_err("{\"type\":\"msg\",}", "bad_json", NULL);
    decode_err("{\"type\":\"msg\"} x", "bad_json", NULL);
    decode_err("{\"type\":'msg'}", "bad_json", NULL);
    decode_err("", "bad_json", NULL);
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\\u0000y\"}", "bad_json", "NUL");
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"\\ud800\"}", "bad_json", NULL);
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"\xff\"}", "bad_json", NULL);
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"\xc0\x80\"}", "bad_json", NULL);
    decode_err("{\"type\":\"msg\",\"n\":99999999999999999999999}", "bad_json", NULL);
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"a\tb\"}", "bad_json", NULL);
    /* a raw NUL byte, and bytes after the stated length are not read */
    static const char nul[] = "{\"type\":\"msg\",\"text\":\"a\0b\"}";
    decode_err_n(nul, sizeof nul - 1, MAX_TEXT, "bad_json", NULL);
    decode_err_n("{\"type\":\"leave\",\"room\":\"a\"}", 10, MAX_TEXT, "bad_json", NULL);
    proto_in_t in;
    proto_err_t err;
    const char *json = "{\"type\":\"leave\",\"room\":\"a\"}";
    assert_int_equal(proto_decode(json, strlen(json) - 1, MAX_TEXT, &in, &err), GW_EINVAL);
}

/* Error messages are valid UTF-8 even when jansson quotes broken input, so they can be sent. */
/* The shape check on the text: 4096 values and 32 levels pass, one more is too_complex before
 * any tree is built; strings that hold brackets and commas do not count. */
static void test_decode_too_complex(void **state)
{
    buf_t b;
    buf_init(&b);
    /* {"type":"signal","room":"r","to":"x","data":[0,0,...]}: 4 values, then the array and its items */
    for (int items = PROTO_VALUES_MAX - 5; items <= PROTO_VALUES_MAX - 4; items++) {
        b.len = 0;
        buf_append_str(&b, "{\"type\":\"signal\",\"room\":\"r\",\"to\":\"x\",\"data\":[");
        for (int i = 0; i < items; i++) buf_append_str(&b, i ? ",[]" : "[]");
        buf_append_str(&b, "]}");
        proto_in_t in;
        proto_err_t err;
        int rc = proto_decode(b.data, b.len, 4096, &in, &err);
        if (items == PROTO_VALUES_MAX - 5) {
            assert_int_equal(rc, 0);
            proto_in_free(&in);
        } else {
            assert_int_equal(rc, GW_ETOOBIG);
            assert_string_equal(err.code, "too_complex");
        }
    }
    b.len = 0;                     /* 32 levels of data pass, 33 do not */
    for (int depth = 31; depth <= 32; depth++) {
        b.len = 0;
        buf_append_str(&b, "{\"type\":\"signal\",\"room\":\"r\",\"to\":\"x\",\"data\":");
        for (int i = 0; i < depth; i++) buf_append_str(&b, "[");
        for (int i = 0; i < depth; i++) buf_append_str(&b, "]");
        buf_append_str(&b, "}");
        proto_in_t in;
        proto_err_t err;
        int rc = proto_decode(b.data, b.len, 4096, &in, &err);
        if (depth == 31) {
            assert_int_equal(rc, 0);
            proto_in_free(&in);
        } else {
            assert_int_equal(rc, GW_ETOOBIG);
            assert_string_equal(err.code, "too_complex");
        }
    }
    b.len = 0;                     /* brackets and commas inside strings are text */
    buf_append_str(&b, "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"");
    for (int i = 0; i < 1000; i++) buf_append_str(&b, "[,{\\\"");
    buf_append_str(&b, "\",\"cid\":\"c\\u0041\"}");
    proto_in_t in;
    proto_err_t err;
    assert_int_equal(proto_decode(b.data, b.len, 1 << 20, &in, &err), 0);
    proto_in_free(&in);
    buf_free(&b);
}

static void test_decode_error_message_sendable(void **state)
{
    static const char *inputs[] = {
        "{\"a\":\"\xc3\"}", "{\"a\":\"\xe2\x82\"}", "{\"\xf0\x9f\x98\":1}", "{\"a\":\xc3\xa9\xc3\xa9\xc3}",
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        proto_in_t in;
        proto_err_t err;
        assert_int_equal(proto_decode(inputs[i], strlen(inputs[i]), MAX_TEXT, &in, &err), GW_EINVAL);
        json_t *v = json_string(err.message);
        assert_non_null(v);
        json_decref(v);
        json_t *o = parse(proto_error(err.code, err.message, NULL));
        json_decref(o);
    }
}

static void test_decode_not_object(void **state)
{
    decode_err("[]", "bad_json", "object");
    decode_err("[{\"type\":\"msg\"}]", "bad_json", "object");
    decode_err("42", "bad_json", "object");
    decode_err("\"msg\"", "bad_json", "object");
    decode_err("null", "bad_json", "object");
    decode_err("true", "bad_json", "object");
}

static void test_decode_missing_type(void **state)
{
    decode_err("{}", "bad_type", "'type'");
    decode_err("{\"room\":\"a\"}", "bad_type", "'type'");
    decode_err("{\"type\":1}", "bad_type", "'type'");
    decode_err("{\"type\":null}", "bad_type", "'type'");
    decode_err("{\"type\":[\"msg\"]}", "bad_type", "'type'");
    decode_err("{\"type\":{}}", "bad_type", "'type'");
}

static void test_decode_bad_type(void **state)
{
    static const char *types[] = {
        "", "Msg", "MSG", "1abc", "_x", ".x", "-x", "a b", "a/b", "a:b", "a\\u00e9", "\\u00e9", "a\\n", "a!",
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char json[128];
        snprintf(json, sizeof json, "{\"type\":\"%s\",\"room\":\"a\"}", types[i]);
        decode_err(json, "bad_type", "'type'");
    }
    char json[128];
    char *t33 = repeat("a", 33);
    snprintf(json, sizeof json, "{\"type\":\"%s\"}", t33);
    decode_err(json, "bad_type", NULL);
    free(t33);
}

static void test_decode_wrong_field_types(void **state)
{
    decode_err("{\"type\":\"join\",\"room\":1}", "bad_field", "field 'room'");
    decode_err("{\"type\":\"join\",\"room\":null}", "bad_field", "field 'room'");
    decode_err("{\"type\":\"join\",\"room\":\"a\",\"name\":true}", "bad_field", "field 'name'");
    decode_err("{\"type\":\"join\",\"room\":\"a\",\"since\":5}", "bad_field", "field 'since'");
    decode_err("{\"type\":\"join\",\"room\":\"a\",\"since\":\"nope\"}", "bad_field", "field 'since'");
    decode_err("{\"type\":\"history\",\"room\":\"a\",\"since\":\"e:-1\"}", "bad_field", "field 'since'");
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":1}", "bad_field", "field 'text'");
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":[\"x\"]}", "bad_field", "field 'text'");
    decode_err("{\"type\":\"dm\",\"to\":[],\"text\":\"x\"}", "bad_field", "field 'to'");
    decode_err("{\"type\":\"dm\",\"to\":\"\",\"text\":\"x\"}", "bad_field", "field 'to'");
    decode_err("{\"type\":\"signal\",\"room\":\"a\",\"to\":7,\"data\":{}}", "bad_field", "field 'to'");
    /* room is checked before text, whatever the key order */
    decode_err("{\"type\":\"msg\",\"text\":1,\"room\":2}", "bad_field", "field 'room'");

    char json[256];
    char *to64 = repeat("t", 64), *to65 = repeat("t", 65);
    proto_in_t in;
    snprintf(json, sizeof json, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"x\"}", to64);
    decode_ok(json, MAX_TEXT, &in);
    assert_string_equal(in.to, to64);
    proto_in_free(&in);
    snprintf(json, sizeof json, "{\"type\":\"dm\",\"to\":\"%s\",\"text\":\"x\"}", to65);
    decode_err(json, "bad_field", "field 'to'");
    free(to64);
    free(to65);
}

static void test_decode_cid(void **state)
{
    proto_in_t in;
    char json[256];
    char *c64 = repeat("c", 64), *c65 = repeat("c", 65);
    snprintf(json, sizeof json, "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"cid\":\"%s\"}", c64);
    decode_ok(json, MAX_TEXT, &in);
    assert_string_equal(json_string_value(in.cid), c64);
    proto_in_free(&in);
    snprintf(json, sizeof json, "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"cid\":\"%s\"}", c65);
    decode_err(json, "bad_field", "field 'cid'");
    free(c64);
    free(c65);

    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"cid\":9007199254740993}", MAX_TEXT, &in);
    assert_true(json_integer_value(in.cid) == 9007199254740993LL);
    proto_in_free(&in);
    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"cid\":\"\"}", MAX_TEXT, &in);
    proto_in_free(&in);

    static const char *bad[] = {"1.5", "1e3", "true", "null", "{}", "[1]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"x\",\"cid\":%s}", bad[i]);
        decode_err(json, "bad_field", "field 'cid'");
    }
    /* cid is read (and checked) on every type, so errors about any message can echo it */
    decode_ok("{\"type\":\"join\",\"room\":\"a\",\"cid\":3}", MAX_TEXT, &in);
    assert_true(json_integer_value(in.cid) == 3);
    proto_in_free(&in);
    decode_err("{\"type\":\"leave\",\"room\":\"a\",\"cid\":false}", "bad_field", "field 'cid'");
}

static void test_decode_missing_fields(void **state)
{
    static const struct { const char *json, *field; } cases[] = {
        {"{\"type\":\"join\"}", "'room'"},
        {"{\"type\":\"join\",\"name\":\"x\"}", "'room'"},
        {"{\"type\":\"leave\"}", "'room'"},
        {"{\"type\":\"mute\"}", "'room'"},
        {"{\"type\":\"unmute\"}", "'room'"},
        {"{\"type\":\"history\"}", "'room'"},
        {"{\"type\":\"msg\",\"text\":\"x\"}", "'room'"},
        {"{\"type\":\"msg\",\"room\":\"a\"}", "'text'"},
        {"{\"type\":\"dm\",\"text\":\"x\"}", "'to'"},
        {"{\"type\":\"dm\",\"to\":\"p\"}", "'text'"},
        {"{\"type\":\"signal\",\"to\":\"p\",\"data\":{}}", "'room'"},
        {"{\"type\":\"signal\",\"room\":\"a\",\"data\":{}}", "'to'"},
        {"{\"type\":\"signal\",\"room\":\"a\",\"to\":\"p\"}", "'data'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        decode_err(cases[i].json, "bad_field", cases[i].field);
        decode_err(cases[i].json, "bad_field", "required");
    }
}

static void test_decode_text_limits(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"0123456789\"}", 10, &in);
    assert_int_equal(in.text_len, 10);
    proto_in_free(&in);
    const char *msg11 = "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"0123456789A\"}";
    const char *dm11 = "{\"type\":\"dm\",\"to\":\"p\",\"text\":\"0123456789A\"}";
    decode_err_n(msg11, strlen(msg11), 10, "too_large", "'text'");
    decode_err_n(dm11, strlen(dm11), 10, "too_large", "'text'");
    /* bytes, not code points: 5 x e-acute = 10 bytes ok, 6 = 12 bytes too large */
    decode_ok("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}", 10, &in);
    assert_int_equal(in.text_len, 10);
    proto_in_free(&in);
    const char *six = "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"}";
    decode_err_n(six, strlen(six), 10, "too_large", NULL);
    decode_err("{\"type\":\"msg\",\"room\":\"a\",\"text\":\"\"}", "bad_field", "'text'");
    decode_err("{\"type\":\"dm\",\"to\":\"p\",\"text\":\"\"}", "bad_field", "'text'");
    /* custom types share the size limit */
    const char *custom = "{\"type\":\"shout\",\"text\":\"0123456789A\"}";
    decode_err_n(custom, strlen(custom), 10, "too_large", NULL);

    /* a realistic limit, exactly at and one over */
    char *body = repeat("x", MAX_TEXT + 1);
    size_t cap = MAX_TEXT + 128;
    char *json = xmalloc(cap);
    snprintf(json, cap, "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"%.*s\"}", MAX_TEXT, body);
    decode_ok(json, MAX_TEXT, &in);
    assert_int_equal(in.text_len, MAX_TEXT);
    proto_in_free(&in);
    snprintf(json, cap, "{\"type\":\"msg\",\"room\":\"a\",\"text\":\"%s\"}", body);
    decode_err(json, "too_large", NULL);
    free(json);
    free(body);
}

static void test_decode_room_names(void **state)
{
    static const char *bad[] = {
        "", "a/b", "a b", "a\\tb", "a\\u0001", "a\\u007f", "a\\u0085", ".hidden", "a?b", "a#b", "a%20", "a\\\\b",
        "a\\\"b", "<b>", "a\\u00a0b", "a\\u3000b",
    };
    char json[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, "{\"type\":\"join\",\"room\":\"%s\"}", bad[i]);
        decode_err(json, "bad_field", "field 'room'");
    }
    char *r64 = repeat("r", 64), *r65 = repeat("r", 65);
    proto_in_t in;
    snprintf(json, sizeof json, "{\"type\":\"join\",\"room\":\"%s\"}", r64);
    decode_ok(json, MAX_TEXT, &in);
    proto_in_free(&in);
    snprintf(json, sizeof json, "{\"type\":\"join\",\"room\":\"%s\"}", r65);
    decode_err(json, "bad_field", "field 'room'");
    free(r64);
    free(r65);

    decode_ok("{\"type\":\"join\",\"room\":\"caf\\u00e9-\\u65e5\\u672c.v2\"}", MAX_TEXT, &in);
    assert_string_equal(in.room, "caf\xc3\xa9-\xe6\x97\xa5\xe6\x9c\xac.v2");
    proto_in_free(&in);
}

static void test_room_valid(void **state)
{
    assert_true(proto_room_valid("lobby"));
    assert_true(proto_room_valid("a.b_c-d~e!"));
    assert_true(proto_room_valid("x"));
    assert_true(proto_room_valid("\xf0\x9f\x8e\x89party"));      /* U+1F389 */
    assert_true(proto_room_valid("\xe6\x97\xa5\xe6\x9c\xac"));   /* 日本 */
    assert_false(proto_room_valid(NULL));
    assert_false(proto_room_valid(""));
    assert_false(proto_room_valid(".a"));
    assert_false(proto_room_valid("a/b"));
    assert_false(proto_room_valid("a b"));
    assert_false(proto_room_valid("a\tb"));
    assert_false(proto_room_valid("a\nb"));
    assert_false(proto_room_valid("a\x7f"));
    assert_false(proto_room_valid("a\xc2\x85"));        /* NEL, C1 */
    assert_false(proto_room_valid("a\xe2\x80\x83"));    /* EM SPACE */
    for (const char *p = "/?#%\\\"<>"; *p; p++) {
        char s[4] = {'a', *p, 'b', 0};
        assert_false(proto_room_valid(s));
    }
    /* malformed UTF-8 */
    assert_false(proto_room_valid("\xc0\xaf"));           /* overlong '/' */
    assert_false(proto_room_valid("\xe0\x80\xaf"));
    assert_false(proto_room_valid("\xed\xa0\x80"));       /* surrogate */
    assert_false(proto_room_valid("\xf4\x90\x80\x80"));   /* > U+10FFFF */
    assert_false(proto_room_valid("\xf5\x80\x80\x80"));
    assert_false(proto_room_valid("a\xc3"));              /* truncated */
    assert_false(proto_room_valid("\x80"));
    assert_false(proto_room_valid("\xfe"));
    /* 64 bytes of multibyte: ok; 66: not */
    char *e32 = repeat("\xc3\xa9", 32), *e33 = repeat("\xc3\xa9", 33);
    assert_true(proto_room_valid(e32));
    assert_false(proto_room_valid(e33));
    free(e32);
    free(e33);
}

static void test_name_valid(void **state)
{
    assert_true(proto_name_valid("Ann"));
    assert_true(proto_name_valid(" a "));
    assert_true(proto_name_valid("Zo\xc3\xab / #1 <x>"));
    assert_true(proto_name_valid("\xf0\x9f\x98\x80"));
    assert_false(proto_name_valid(NULL));
    assert_false(proto_name_valid(""));
    assert_false(proto_name_valid(" "));
    assert_false(proto_name_valid("    "));
    assert_false(proto_name_valid(" \xc2\xa0\xe3\x80\x80"));   /* only spaces of other kinds */
    assert_false(proto_name_valid("a\tb"));
    assert_false(proto_name_valid("a\nb"));
    assert_false(proto_name_valid("\x1b[31m"));
    assert_false(proto_name_valid("a\x7f"));
    assert_false(proto_name_valid("a\xc2\x80"));
    assert_false(proto_name_valid("a\xc2\x9f"));
    assert_true(proto_name_valid("a\xc2\xa0z"));
    assert_false(proto_name_valid("\xc0\x80"));
    assert_false(proto_name_valid("\xed\xbf\xbf"));
    assert_false(proto_name_valid("ab\xe2\x82"));

    /* 32 code points of 2, 3 and 4 bytes pass; 33 fail */
    static const char *units[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        char *ok = repeat(units[i], 32), *over = repeat(units[i], 33);
        assert_true(proto_name_valid(ok));
        assert_false(proto_name_valid(over));
        free(ok);
        free(over);
    }
}

static void test_decode_names(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"join\",\"room\":\"a\",\"name\":\"J\\u00f6rg \\ud83d\\ude00\"}", MAX_TEXT, &in);
    assert_string_equal(in.name, "J\xc3\xb6rg \xf0\x9f\x98\x80");
    proto_in_free(&in);

    char json[512];
    char *n32 = repeat("\\u00e9", 32), *n33 = repeat("\\u00e9", 33);
    snprintf(json, sizeof json, "{\"type\":\"join\",\"room\":\"a\",\"name\":\"%s\"}", n32);
    decode_ok(json, MAX_TEXT, &in);
    assert_int_equal(strlen(in.name), 64);
    proto_in_free(&in);
    snprintf(json, sizeof json, "{\"type\":\"join\",\"room\":\"a\",\"name\":\"%s\"}", n33);
    decode_err(json, "bad_field", "field 'name'");
    free(n32);
    free(n33);

    static const char *bad[] = {"", "   ", "a\\u0007", "a\\u001f", "\\u007f", "x\\u0090", "a\\nb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, "{\"type\":\"join\",\"room\":\"a\",\"name\":\"%s\"}", bad[i]);
        decode_err(json, "bad_field", "field 'name'");
    }
}

/* ---- since ---- */

static void test_since_parse(void **state)
{
    char epoch[33];
    uint64_t seq = 99;
    assert_int_equal(proto_since_parse("abc:0", epoch, sizeof epoch, &seq), 0);
    assert_string_equal(epoch, "abc");
    assert_true(seq == 0);
    assert_int_equal(proto_since_parse("Az09_-:42", epoch, sizeof epoch, &seq), 0);
    assert_string_equal(epoch, "Az09_-");
    assert_true(seq == 42);
    assert_int_equal(proto_since_parse("e:007", epoch, sizeof epoch, &seq), 0);
    assert_true(seq == 7);
    assert_int_equal(proto_since_parse("e:18446744073709551615", epoch, sizeof epoch, &seq), 0);
    assert_true(seq == UINT64_MAX);
    assert_int_equal(proto_since_parse("e:00000000000000000001", epoch, sizeof epoch, &seq), 0);
    assert_true(seq == 1);

    char *e32 = repeat("e", 32), *e33 = repeat("e", 33);
    char s[64];
    snprintf(s, sizeof s, "%s:1", e32);
    assert_int_equal(proto_since_parse(s, epoch, sizeof epoch, &seq), 0);
    assert_string_equal(epoch, e32);
    assert_int_equal(proto_since_parse(s, epoch, 32, &seq), GW_ETOOBIG);   /* no room for the NUL */
    snprintf(s, sizeof s, "%s:1", e33);
    assert_int_equal(proto_since_parse(s, epoch, sizeof epoch, &seq), GW_EINVAL);
    free(e32);
    free(e33);

    static const char *bad[] = {
        "", ":", ":1", "e:", "e", "e1", "e:+1", "e:-1", "e: 1", "e:1 ", " e:1", "e:1:2", "e:1a", "e:0x1",
        "e.x:1", "e/x:1", "\xc3\xa9:1", "e:18446744073709551616", "e:99999999999999999999",
        "e:000000000000000000001",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        seq = 5;
        strcpy(epoch, "keep");
        if (proto_since_parse(bad[i], epoch, sizeof epoch, &seq) != GW_EINVAL) print_error("accepted '%s'\n", bad[i]);
        assert_int_equal(proto_since_parse(bad[i], epoch, sizeof epoch, &seq), GW_EINVAL);
        assert_true(seq == 5);
        assert_string_equal(epoch, "keep");
    }
    assert_int_equal(proto_since_parse(NULL, epoch, sizeof epoch, &seq), GW_EINVAL);
}

/* ---- encoders ---- */

static void test_encode_welcome(void **state)
{
    sbuf_t *s = proto_welcome("id1", "Ann", "chatgw/1.0", "abc123");
    assert_type_first(s, "welcome");
    json_t *o = parse(s);
    assert_str_field(o, "type", "welcome");
    assert_str_field(o, "id", "id1");
    assert_str_field(o, "name", "Ann");
    assert_str_field(o, "server", "chatgw/1.0");
    assert_str_field(o, "policy", "abc123");
    assert_int_equal(json_object_size(o), 5);
    json_decref(o);
}

static void test_encode_presence(void **state)
{
    static const char *types[] = {"join", "leave", "mute", "unmute"};
    for (size_t i = 0; i < 4; i++) {
        sbuf_t *s = proto_presence(types[i], "room \"q\"", "p1", "N\xc3\xa4me\\", (int)(i == 2));
        assert_type_first(s, types[i]);
        json_t *o = parse(s);
        assert_str_field(o, "type", types[i]);
        assert_str_field(o, "room", "room \"q\"");
        json_t *m = json_object_get(o, "member");
        assert_true(json_is_object(m));
        assert_str_field(m, "id", "p1");
        assert_str_field(m, "name", "N\xc3\xa4me\\");
        assert_true(json_is_boolean(json_object_get(m, "muted")));
        assert_int_equal(json_is_true(json_object_get(m, "muted")), i == 2);
        json_decref(o);
    }
}

static void test_encode_msg(void **state)
{
    sbuf_t *s = proto_msg("lobby", "ep1", 18446744073709551615ULL, "u1", "Ann", "hi\n\"there\"",
                          1700000000123LL, NULL);
    assert_type_first(s, "msg");
    json_t *o = parse(s);
    assert_str_field(o, "type", "msg");
    assert_str_field(o, "room", "lobby");
    assert_str_field(o, "id", "ep1:18446744073709551615");
    assert_str_field(o, "text", "hi\n\"there\"");
    assert_int_field(o, "ts", 1700000000123LL);
    json_t *from = json_object_get(o, "from");
    assert_str_field(from, "id", "u1");
    assert_str_field(from, "name", "Ann");
    assert_int_equal(json_object_size(o), 6);
    json_decref(o);
}

/* proto_id_write is what snprintf("%s:%llu") would make, cut short the same way. */
static void test_msg_id(void **state)
{
    (void)state;
    static const char *const epochs[] = { "", "k3f9", "0123456789abcdef0123456789abcdef0123" };
    static const uint64_t seqs[] = { 0, 7, 1234567890, UINT64_MAX };
    for (size_t e = 0; e < sizeof epochs / sizeof *epochs; e++)
        for (size_t q = 0; q < sizeof seqs / sizeof *seqs; q++)
            for (size_t len = 1; len <= 64; len++) {
                char want[64], got[64];
                memset(got, 'x', sizeof got);
                snprintf(want, len, "%s:%" PRIu64, epochs[e], seqs[q]);
                assert_ptr_equal(proto_id_write(got, len, epochs[e], seqs[q]), got);
                assert_string_equal(got, want);
            }
    char got[8] = "x";
    proto_id_write(got, 0, "e", 1);             /* len 0 writes nothing */
    assert_int_equal(got[0], 'x');
    proto_id_write(got, sizeof got, NULL, 42);   /* no epoch: ":42" */
    assert_string_equal(got, ":42");
}

/* A msg without its id, numbered at its slot, is byte for byte proto_msg's: on the direct
 * path and on the tree path (an extra key with a NUL byte), with quotes and an "id" in the
 * text and the extra that must not be taken for the slot. */
static void test_msg_unnumbered(void **state)
{
    (void)state;
    json_t *plain = json_pack("{s:s, s:s}", "note", ",\"id\":\"\"", "id", "x:1");
    json_t *nul = json_object();
    json_object_setn_new(nul, "a\0b", 3, json_string(",\"id\":\"\""));
    json_t *extras[] = { NULL, plain, nul };
    for (size_t i = 0; i < sizeof extras / sizeof *extras; i++) {
        size_t at = 0;
        sbuf_t *t = proto_msg_unnumbered("r", "u1", "A \"b\"", ",\"id\":\"\"", 42, extras[i], &at);
        sbuf_t *want = proto_msg("r", "k3f9", 17, "u1", "A \"b\"", ",\"id\":\"\"", 42, extras[i]);
        assert_non_null(t);
        assert_int_equal(t->len + strlen("k3f9:17"), want->len);
        assert_memory_equal(t->data, want->data, at);
        assert_memory_equal(want->data + at, "k3f9:17", 7);
        assert_memory_equal(t->data + at, want->data + at + 7, t->len - at);
        sbuf_unref(t);
        sbuf_unref(want);
        json_decref(extras[i]);
    }
}

static void test_encode_msg_extra(void **state)
{
    json_t *extra = json_pack("{s:s, s:s, s:s, s:i, s:s, s:i, s:{s:b}, s:[i,i], s:n}", "type", "evil", "room", "other",
                              "id", "x:1", "ts", 1, "text", "spoofed", "color", 7, "from", "admin", 1, "tags",
                              1, 2, "nothing");
    assert_non_null(extra);
    sbuf_t *s = proto_msg("r", "e", 3, "u1", "Ann", "real", 42, extra);
    json_t *o = parse(s);
    assert_str_field(o, "type", "msg");
    assert_str_field(o, "room", "r");
    assert_str_field(o, "id", "e:3");
    assert_str_field(o, "text", "real");
    assert_int_field(o, "ts", 42);
    assert_str_field(json_object_get(o, "from"), "id", "u1");
    assert_null(json_object_get(json_object_get(o, "from"), "admin"));
    assert_int_field(o, "color", 7);
    assert_true(json_is_array(json_object_get(o, "tags")));
    assert_int_equal(json_array_size(json_object_get(o, "tags")), 2);
    assert_true(json_is_null(json_object_get(o, "nothing")));
    assert_int_equal(json_object_size(o), 9);
    json_decref(o);
    /* extra is borrowed: still whole and still ours */
    assert_int_equal(extra->refcount, 1);
    assert_int_equal(json_object_size(extra), 9);
    json_decref(extra);

    /* a non-object extra is ignored */
    json_t *arr = json_array();
    o = parse(proto_msg("r", "e", 1, "u", "n", "t", 0, arr));
    assert_int_equal(json_object_size(o), 6);
    json_decref(o);
    json_decref(arr);
}

static void test_encode_ack(void **state)
{
    json_t *cid = json_string("c-9");
    json_t *o = parse(proto_ack(cid, "e:5"));
    assert_str_field(o, "type", "ack");
    assert_str_field(o, "cid", "c-9");
    assert_str_field(o, "id", "e:5");
    json_decref(o);
    assert_int_equal(cid->refcount, 1);
    json_decref(cid);

    cid = json_integer(77);
    o = parse(proto_ack(cid, NULL));
    assert_int_field(o, "cid", 77);
    assert_null(json_object_get(o, "id"));
    json_decref(o);
    json_decref(cid);

    sbuf_t *s = proto_ack(NULL, "e:6");
    assert_type_first(s, "ack");
    o = parse(s);
    assert_null(json_object_get(o, "cid"));
    assert_str_field(o, "id", "e:6");
    assert_int_equal(json_object_size(o), 2);
    json_decref(o);
}

static void test_encode_dm(void **state)
{
    sbuf_t *s = proto_dm("u2", "Bo", "secret \xe2\x9c\x93", -5);
    assert_type_first(s, "dm");
    json_t *o = parse(s);
    assert_str_field(o, "type", "dm");
    assert_str_field(json_object_get(o, "from"), "id", "u2");
    assert_str_field(json_object_get(o, "from"), "name", "Bo");
    assert_str_field(o, "text", "secret \xe2\x9c\x93");
    assert_int_field(o, "ts", -5);
    assert_int_equal(json_object_size(o), 4);
    json_decref(o);
}

static void test_encode_signal(void **state)
{
    json_t *data = json_pack("{s:s, s:[s]}", "type", "offer", "c", "cand");
    sbuf_t *s = proto_signal("voice", "u3", data);
    assert_type_first(s, "signal");
    json_t *o = parse(s);
    assert_str_field(o, "room", "voice");
    assert_str_field(o, "from", "u3");
    assert_true(json_equal(json_object_get(o, "data"), data));
    json_decref(o);
    assert_int_equal(data->refcount, 1);
    json_decref(data);

    data = json_string("raw");
    o = parse(proto_signal("v", "u", data));
    assert_str_field(o, "data", "raw");
    json_decref(o);
    json_decref(data);
}

static void test_encode_error(void **state)
{
    json_t *ref = json_string("c1");
    sbuf_t *s = proto_error("not_in_room", "join the room first", ref);
    assert_type_first(s, "error");
    json_t *o = parse(s);
    assert_str_field(o, "code", "not_in_room");
    assert_str_field(o, "message", "join the room first");
    assert_str_field(o, "ref", "c1");
    json_decref(o);
    assert_int_equal(ref->refcount, 1);
    json_decref(ref);

    o = parse(proto_error("bad_json", "x", NULL));
    assert_null(json_object_get(o, "ref"));
    assert_int_equal(json_object_size(o), 3);
    json_decref(o);

    /* text that is not valid UTF-8 still makes a valid frame */
    o = parse(proto_error("bad_json", "near '\xc3' and \xff", NULL));
    assert_str_field(o, "message", "near '?' and ?");
    json_decref(o);
}

static void test_encode_bad_utf8_args(void **state)
{
    json_t *o = parse(proto_presence("join", "r", "id", "cut\xe2\x82", 0));
    assert_str_field(json_object_get(o, "member"), "name", "cut??");
    json_decref(o);
    o = parse(proto_dm("u", "n", "\xc0\x80x", 1));
    assert_str_field(o, "text", "??x");
    json_decref(o);
}

static void test_encode_any(void **state)
{
    assert_null(proto_encode(NULL));
    json_t *v = json_pack("{s:s, s:i}", "type", "announce", "n", 1);
    sbuf_t *s = proto_encode(v);
    assert_non_null(s);
    assert_int_equal(s->len, strlen("{\"type\":\"announce\",\"n\":1}"));
    assert_memory_equal(s->data, "{\"type\":\"announce\",\"n\":1}", s->len);
    sbuf_unref(s);
    json_decref(v);
    v = json_integer(5);
    s = proto_encode(v);
    assert_non_null(s);
    assert_memory_equal(s->data, "5", 1);
    assert_int_equal(s->len, 1);
    sbuf_unref(s);
    json_decref(v);
}

/* Builds n msg buffers for the splice tests. */
static void make_history(sbuf_t **h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof text, "m%zu", i);
        h[i] = proto_msg("r", "ep", i + 1, "u", "n", text, (int64_t)i, NULL);
    }
}

static void check_history_array(json_t *arr, size_t n)
{
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), n);
    for (size_t i = 0; i < n; i++) {
        char text[32], id[32];
        snprintf(text, sizeof text, "m%zu", i);
        snprintf(id, sizeof id, "ep:%zu", i + 1);
        json_t *m = json_array_get(arr, i);
        assert_str_field(m, "type", "msg");
        assert_str_field(m, "text", text);
        assert_str_field(m, "id", id);
    }
}

static void test_encode_room(void **state)
{
    json_t *members = json_array();
    json_array_append_new(members, json_pack("{s:s, s:s, s:b}", "id", "u1", "name", "A \"q\"", "muted", 0));
    json_array_append_new(members, json_pack("{s:s, s:s, s:b}", "id", "u2", "name", "B", "muted", 1));
    static const size_t counts[] = {0, 1, 3};
    for (size_t c = 0; c < 3; c++) {
        sbuf_t *h[3];
        make_history(h, counts[c]);
        sbuf_t *s = proto_room("lo\xc3\xa9", members, h, counts[c]);
        assert_type_first(s, "room");
        json_t *o = parse(s);
        assert_str_field(o, "room", "lo\xc3\xa9");
        assert_true(json_equal(json_object_get(o, "members"), members));
        check_history_array(json_object_get(o, "history"), counts[c]);
        assert_int_equal(json_object_size(o), 4);
        json_decref(o);
        for (size_t i = 0; i < counts[c]; i++) {
            assert_int_equal(h[i]->refs, 1);   /* copied, not taken */
            sbuf_unref(h[i]);
        }
    }
    assert_int_equal(members->refcount, 1);
    json_decref(members);

    /* NULL members makes an empty list; NULL history with 0 items is fine */
    json_t *o = parse(proto_room("r", NULL, NULL, 0));
    assert_true(json_is_array(json_object_get(o, "members")));
    assert_int_equal(json_array_size(json_object_get(o, "members")), 0);
    assert_int_equal(json_array_size(json_object_get(o, "history")), 0);
    json_decref(o);

    /* exact bytes of the splice */
    sbuf_t *h[2];
    h[0] = sbuf_from("{\"a\":1}", 7);
    h[1] = sbuf_from("{\"b\":2}", 7);
    json_t *empty = json_array();
    sbuf_t *s = proto_room("r", empty, h, 2);
    const char *want = "{\"type\":\"room\",\"room\":\"r\",\"members\":[],\"history\":[{\"a\":1},{\"b\":2}]}";
    assert_int_equal(s->len, strlen(want));
    assert_memory_equal(s->data, want, s->len);
    sbuf_unref(s);
    json_decref(empty);
    sbuf_unref(h[0]);
    sbuf_unref(h[1]);
}

static void test_encode_history(void **state)
{
    static const size_t counts[] = {0, 1, 3};
    for (size_t c = 0; c < 3; c++) {
        sbuf_t *h[3];
        make_history(h, counts[c]);
        sbuf_t *s = proto_history("lobby", h, counts[c]);
        assert_type_first(s, "history");
        json_t *o = parse(s);
        assert_str_field(o, "type", "history");
        assert_str_field(o, "room", "lobby");
        assert_null(json_object_get(o, "history"));
        check_history_array(json_object_get(o, "messages"), counts[c]);
        assert_int_equal(json_object_size(o), 3);
        json_decref(o);
        for (size_t i = 0; i < counts[c]; i++) sbuf_unref(h[i]);
    }
    sbuf_t *s = proto_history("r", NULL, 0);
    const char *want = "{\"type\":\"history\",\"room\":\"r\",\"messages\":[]}";
    assert_int_equal(s->len, strlen(want));
    assert_memory_equal(s->data, want, s->len);
    sbuf_unref(s);
}

/* ---- the decoder's fast path against json_loadb ----
 * proto_decode builds flat objects itself and leaves everything else to json_loadb. Whatever
 * the input, the result must be what json_loadb + proto_decode_value give: the same verdict,
 * the same error, and a root with the same members in the same order. */

static void decode_same_as_jansson(const char *text, size_t len)
{
    proto_in_t in, want;
    proto_err_t err = {0}, werr = {0};
    int rc = proto_decode(text, len, MAX_TEXT, &in, &err);
    json_error_t jerr;
    json_t *j = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!j) {
        if (rc != GW_EINVAL || strcmp(err.code, "bad_json") || !strstr(err.message, "invalid JSON at line"))
            print_error("json_loadb refused %.*s (%s) but proto_decode gave %d %s\n", (int)len, text, jerr.text, rc,
                        rc ? err.message : "ok");
        assert_int_equal(rc, GW_EINVAL);
        assert_string_equal(err.code, "bad_json");
        assert_non_null(strstr(err.message, "invalid JSON at line"));
        return;
    }
    int wrc = proto_decode_value(j, MAX_TEXT, &want, &werr);
    if (rc != wrc) print_error("%.*s: proto_decode %d, jansson path %d (%s)\n", (int)len, text, rc, wrc, rc ? err.message : werr.message);
    assert_int_equal(rc, wrc);
    if (rc) {
        assert_string_equal(err.code, werr.code);
        assert_string_equal(err.message, werr.message);
        return;
    }
    char *a = json_dumps(in.root, JSON_COMPACT | JSON_ENCODE_ANY);
    char *b = json_dumps(want.root, JSON_COMPACT | JSON_ENCODE_ANY);
    if (strcmp(a, b)) print_error("%.*s:\n fast   %s\n jansson %s\n", (int)len, text, a, b);
    assert_string_equal(a, b);
    assert_true(json_equal(in.root, want.root));
    assert_int_equal(in.type, want.type);
    assert_true(in.text_len == want.text_len);
    free(a);
    free(b);
    proto_in_free(&in);
    proto_in_free(&want);
}

static void test_decode_fast_path(void **state)
{
    static const char *const cases[] = {
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"hi\",\"cid\":1}",
        " \t\r\n{ \"type\" : \"msg\" , \"room\" : \"r\" , \"text\" : \"hi\" , \"cid\" : -12 } \n",
        "{\"type\":\"join\",\"room\":\"caf\xc3\xa9\",\"name\":\"\xf0\x9f\xa6\x8a\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"a\",\"text\":\"b\",\"room\":\"s\"}",   /* repeats: last wins */
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":0}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":-0}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":00}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":01}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":999999999999999999}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":9223372036854775807}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":9223372036854775808}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":-9223372036854775808}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":1.5}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":1e3}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":1E3}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":-}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":+1}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"x\",\"cid\":1a}",
        "{\"type\":\"custom.x\",\"a\":true,\"b\":false,\"c\":null}",
        "{\"type\":\"custom.x\",\"a\":truex}", "{\"type\":\"custom.x\",\"a\":true1}", "{\"type\":\"custom.x\",\"a\":nul}",
        "{\"type\":\"custom.x\",\"a\":tru}", "{\"type\":\"custom.x\",\"a\":[1]}", "{\"type\":\"custom.x\",\"a\":{}}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"esc \\\" \\\\ \\n \\u00e9 \\ud83e\\udd8a\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"nul \\u0000\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"tab\there\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"del \x7f\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"bad \xff\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"bad \xc0\x80\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"bad \xed\xa0\x80\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"bad \xf4\x90\x80\x80\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"cut \xe2\x82\"}",
        "{\"ty\xc3\xa9pe\":\"msg\"}", "{\"\":\"\"}", "{}", " {} ", "{ }", "{", "}", "", " ", "[]", "1", "\"s\"", "null",
        "{\"type\":\"msg\"", "{\"type\":\"msg\",}", "{\"type\":\"msg\",,\"a\":1}", "{\"type\" \"msg\"}",
        "{\"type\":\"msg\"}}", "{\"type\":\"msg\"} x", "{\"type\":\"msg\"}\x00", "{'type':'msg'}", "{type:\"msg\"}",
        "\xef\xbb\xbf{\"type\":\"msg\"}", "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"unterminated}",
        "{\"type\":1}", "{\"type\":\"join\",\"room\":\"r\",\"name\":\"\"}", "{\"type\":\"leave\",\"room\":\".x\"}",
        "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"\"}", "{\"type\":\"dm\",\"to\":\"abc\",\"text\":\"t\",\"cid\":\"c\"}",
        "{\"type\":\"signal\",\"room\":\"r\",\"to\":\"a\",\"data\":null}",
        "{\"type\":\"history\",\"room\":\"r\",\"since\":\"ep:5\"}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i]);
        if (!strcmp(cases[i], "{\"type\":\"msg\"}\x00")) len++;
        decode_same_as_jansson(cases[i], len);
    }
    decode_same_as_jansson("{\"type\":\"msg\"}\0", 15);
    decode_same_as_jansson("{\"type\":\"msg\",\"room\":\"r\",\"text\":\"a\0b\"}", 38);
    decode_same_as_jansson("{\"a\0b\":1}", 9);
    /* text over the limit */
    char *big = malloc(MAX_TEXT + 100);
    int n = snprintf(big, MAX_TEXT + 100, "{\"type\":\"msg\",\"room\":\"r\",\"text\":\"");
    memset(big + n, 'x', MAX_TEXT + 1);
    memcpy(big + n + MAX_TEXT + 1, "\"}", 3);
    decode_same_as_jansson(big, strlen(big));
    free(big);

    /* random edits of valid messages */
    static const char *const seeds[] = {
        "{\"type\":\"msg\",\"room\":\"r1\",\"text\":\"caf\xc3\xa9 hi\",\"cid\":12}",
        "{ \"type\" : \"join\" , \"room\" : \"lobby\" , \"name\" : \"Ann\" , \"x\" : [1, {\"y\": null}] }",
        "{\"type\":\"custom.t\",\"a\":true,\"b\":false,\"c\":null,\"d\":-5,\"e\":\"\\n\"}",
    };
    static const char pool[] = "{}[]\":,\\ -0123456789.eEtrufalsn\x01\x7f\xc3\xa9\xe2\x82\xac\xff\x00";
    unsigned seed = 4242;
    char buf[256];
    for (int iter = 0; iter < 30000; iter++) {
        const char *src = seeds[iter % 3];
        size_t len = strlen(src);
        memcpy(buf, src, len);
        int edits = 1 + iter % 3;
        for (int e = 0; e < edits; e++) {
            seed = seed * 1103515245u + 12345u;
            size_t pos = (seed >> 8) % (len + 1);
            char c = pool[(seed >> 20) % (sizeof pool - 1)];
            switch ((seed >> 16) % 3) {
            case 0: if (pos < len) buf[pos] = c; break;
            case 1: if (len + 1 < sizeof buf) { memmove(buf + pos + 1, buf + pos, len - pos); buf[pos] = c; len++; } break;
            default: if (pos < len) { memmove(buf + pos, buf + pos + 1, len - pos - 1); len--; } break;
            }
        }
        decode_same_as_jansson(buf, len);
    }
}

/* ---- the direct encoders against jansson ----
 * msg, ack, dm, presence and error write their JSON directly. These references build the same
 * messages as jansson trees, the way proto.c did before, and dump them; the direct output must
 * be the same bytes for every tricky input, and random ones. */

/* The scrub proto_str applied to text that is not UTF-8: each byte that does not start a valid
 * sequence (RFC 3629) becomes '?'. */
static int ref_utf8_len(const unsigned char *s, size_t left)
{
    unsigned char b = s[0];
    size_t n;
    uint32_t c;
    if (b < 0x80) return 1;
    if ((b & 0xE0) == 0xC0) n = 2, c = b & 0x1F;
    else if ((b & 0xF0) == 0xE0) n = 3, c = b & 0x0F;
    else if ((b & 0xF8) == 0xF0) n = 4, c = b & 0x07;
    else return -1;
    if (left < n) return -1;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return -1;
        c = (c << 6) | (s[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return -1;
    return (int)n;
}

static json_t *ref_str(const char *s)
{
    if (!s) return json_null();
    json_t *v = json_string(s);
    if (v) return v;
    char *copy = strdup(s);
    size_t len = strlen(copy);
    for (size_t i = 0; i < len;) {
        int n = ref_utf8_len((unsigned char *)copy + i, len - i);
        if (n > 0) {
            i += (size_t)n;
        } else {
            copy[i++] = '?';
        }
    }
    v = json_string(copy);
    free(copy);
    assert_non_null(v);
    return v;
}

static json_t *ref_obj(const char *type)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", ref_str(type));
    return o;
}

static json_t *ref_from(const char *id, const char *name)
{
    json_t *f = json_object();
    json_object_set_new(f, "id", ref_str(id));
    json_object_set_new(f, "name", ref_str(name));
    return f;
}

/* Compares the direct output s (taken) with the dump of the tree o (taken). */
static void same_as_tree(sbuf_t *s, json_t *o)
{
    char *want = json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    json_decref(o);
    assert_non_null(want);
    assert_non_null(s);
    if (s->len != strlen(want) || memcmp(s->data, want, s->len))
        print_error("direct: %.*s\ntree:   %s\n", (int)s->len, s->data, want);
    assert_int_equal(s->len, strlen(want));
    assert_memory_equal(s->data, want, s->len);
    free(want);
    sbuf_unref(s);
}

static json_t *ref_msg(const char *room, const char *epoch, uint64_t seq, const char *from_id, const char *from_name,
                       const char *text, int64_t ts, json_t *extra)
{
    static const char *const reserved[] = {"type", "room", "id", "from", "text", "ts"};
    char id[96];
    snprintf(id, sizeof id, "%s:%llu", epoch ? epoch : "", (unsigned long long)seq);
    json_t *o = ref_obj("msg");
    json_object_set_new(o, "room", ref_str(room));
    json_object_set_new(o, "id", ref_str(id));
    json_object_set_new(o, "from", ref_from(from_id, from_name));
    json_object_set_new(o, "text", ref_str(text));
    json_object_set_new(o, "ts", json_integer((json_int_t)ts));
    const char *key;
    json_t *v;
    if (json_is_object(extra)) {
        json_object_foreach(extra, key, v) {
            size_t i = 0;
            while (i < 6 && strcmp(key, reserved[i])) i++;
            if (i == 6) json_object_set(o, key, v);
        }
    }
    return o;
}

static json_t *ref_ack(json_t *cid, const char *id)
{
    json_t *o = ref_obj("ack");
    if (cid) json_object_set(o, "cid", cid);
    if (id) json_object_set_new(o, "id", ref_str(id));
    return o;
}

static json_t *ref_dm(const char *from_id, const char *from_name, const char *text, int64_t ts)
{
    json_t *o = ref_obj("dm");
    json_object_set_new(o, "from", ref_from(from_id, from_name));
    json_object_set_new(o, "text", ref_str(text));
    json_object_set_new(o, "ts", json_integer((json_int_t)ts));
    return o;
}

static json_t *ref_presence(const char *type, const char *room, const char *id, const char *name, int muted)
{
    json_t *o = ref_obj(type);
    json_object_set_new(o, "room", ref_str(room));
    json_t *m = ref_from(id, name);
    json_object_set_new(m, "muted", json_boolean(muted));
    json_object_set_new(o, "member", m);
    return o;
}

static json_t *ref_error(const char *code, const char *message, json_t *ref)
{
    json_t *o = ref_obj("error");
    json_object_set_new(o, "code", ref_str(code));
    json_object_set_new(o, "message", ref_str(message));
    if (ref) json_object_set(o, "ref", ref);
    return o;
}

/* Every direct encoder over one string in each of its string slots. */
static void same_for_string(const char *t)
{
    same_as_tree(proto_msg(t, "ep", 7, t, t, t, 1, NULL), ref_msg(t, "ep", 7, t, t, t, 1, NULL));
    same_as_tree(proto_msg("r", t, 7, "u", "n", "x", -1, NULL), ref_msg("r", t, 7, "u", "n", "x", -1, NULL));
    same_as_tree(proto_ack(NULL, t), ref_ack(NULL, t));
    same_as_tree(proto_dm(t, t, t, 5), ref_dm(t, t, t, 5));
    same_as_tree(proto_presence(t, t, t, t, 1), ref_presence(t, t, t, t, 1));
    same_as_tree(proto_error(t, t, NULL), ref_error(t, t, NULL));
    json_t *js = json_string(t);   /* NULL when t is not UTF-8 */
    if (js) {
        same_as_tree(proto_ack(js, "e:1"), ref_ack(js, "e:1"));
        same_as_tree(proto_error("c", "m", js), ref_error("c", "m", js));
        json_t *extra = json_object();
        json_object_set(extra, t, js);
        json_object_set_new(extra, "k", json_string(t));
        same_as_tree(proto_msg("r", "e", 1, "u", "n", "x", 0, extra), ref_msg("r", "e", 1, "u", "n", "x", 0, extra));
        json_decref(extra);
        json_decref(js);
    }
}

static void test_direct_tricky_strings(void **state)
{
    static const char *const tricky[] = {
        "", "plain", "\"", "\\", "\"\\\"", "/", "</script>", "\b\f\n\r\t", "\x01\x02\x1f\x7f", "\x1b[31m",
        "tab\there", "caf\xc3\xa9", "\xe2\x98\x83 snow", "\xf0\x9f\xa6\x8a fox", "\xe2\x80\xa8\xe2\x80\xa9",
        "\xef\xbb\xbf\x62om", "\xc2\x80\xc2\x9f", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80",
        /* not UTF-8: scrubbed byte by byte */
        "\xff", "\xfe\xff", "\x80", "\xc3", "cut\xe2\x82", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80",
        "\xed\xa0\x80", "\xed\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80",
        "\xe2\x82\x41", "a\xc3\xa9\xc3", "\xf0\x9f\xa6", "\xf0\x9f", "\"\xff\\\n",
    };
    for (size_t i = 0; i < sizeof tricky / sizeof tricky[0]; i++) same_for_string(tricky[i]);
    /* NULL strings become null, as json_null() did */
    same_as_tree(proto_msg(NULL, NULL, 0, NULL, NULL, NULL, 0, NULL), ref_msg(NULL, NULL, 0, NULL, NULL, NULL, 0, NULL));
    same_as_tree(proto_dm(NULL, NULL, NULL, 0), ref_dm(NULL, NULL, NULL, 0));
    same_as_tree(proto_presence(NULL, NULL, NULL, NULL, 0), ref_presence(NULL, NULL, NULL, NULL, 0));
    same_as_tree(proto_error(NULL, NULL, NULL), ref_error(NULL, NULL, NULL));
    /* long text: past the writer's stack buffer */
    char *big = malloc(70000);
    for (size_t i = 0; i < 69999; i++) big[i] = "a\"\\\n\x01\xc3\xa9"[i % 7];
    big[69999] = '\0';
    same_for_string(big);
    /* an epoch too long for the fast id path */
    big[200] = '\0';
    same_as_tree(proto_msg("r", big, 9, "u", "n", "x", 0, NULL), ref_msg("r", big, 9, "u", "n", "x", 0, NULL));
    free(big);
}

static void test_direct_numbers_and_values(void **state)
{
    static const int64_t ts[] = {0, 1, -1, 9, 10, 1700000000123LL, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    static const uint64_t seq[] = {0, 1, 10, 99, 18446744073709551615ULL};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        same_as_tree(proto_msg("r", "e", seq[i % 5], "u", "n", "t", ts[i], NULL),
                     ref_msg("r", "e", seq[i % 5], "u", "n", "t", ts[i], NULL));
        same_as_tree(proto_dm("u", "n", "t", ts[i]), ref_dm("u", "n", "t", ts[i]));
        json_t *cid = json_integer((json_int_t)ts[i]);
        same_as_tree(proto_ack(cid, "e:1"), ref_ack(cid, "e:1"));
        same_as_tree(proto_ack(cid, NULL), ref_ack(cid, NULL));
        json_decref(cid);
    }
    same_as_tree(proto_ack(NULL, NULL), ref_ack(NULL, NULL));
    /* any JSON value as cid, ref and extra member */
    json_t *vals = json_loads("[null, true, false, 1.5, -0.25, 1e300, \"s\\u0000nul\", [], {}, [1, [2, {\"a\": null}]], "
                              "{\"z\": 1, \"a\": [\"\\u2028\", \"\\\"\"], \"m\": {\"k\": false}}]", JSON_ALLOW_NUL, NULL);
    assert_non_null(vals);
    size_t i;
    json_t *v;
    json_array_foreach(vals, i, v) {
        same_as_tree(proto_ack(v, "e:2"), ref_ack(v, "e:2"));
        same_as_tree(proto_error("c", "m", v), ref_error("c", "m", v));
        json_t *extra = json_pack("{s:s, s:O, s:s, s:O}", "text", "spoof", "v", v, "id", "x", "w", v);
        same_as_tree(proto_msg("r", "e", 1, "u", "n", "t", 2, extra), ref_msg("r", "e", 1, "u", "n", "t", 2, extra));
        json_decref(extra);
    }
    json_decref(vals);
    /* keys with a NUL byte: json_object_set cut them short, the direct path must too */
    json_t *extra = json_object();
    json_object_setn_new(extra, "a\0x", 3, json_integer(1));
    json_object_setn_new(extra, "a\0y", 3, json_integer(2));
    json_object_setn_new(extra, "text\0z", 6, json_integer(3));
    json_object_set_new(extra, "b", json_integer(4));
    same_as_tree(proto_msg("r", "e", 1, "u", "n", "t", 2, extra), ref_msg("r", "e", 1, "u", "n", "t", 2, extra));
    json_decref(extra);
}

/* Random byte strings, biased toward the bytes that matter: the direct encoders and the tree
 * agree on every one. */
static void test_direct_random(void **state)
{
    static const unsigned char pool[] = {'a', ' ', '"', '\\', '/', '\n', 0x01, 0x1f, 0x7f, 0x80, 0xbf, 0xc2,
                                         0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xed, 0xa0, 0xf0, 0x9f, 0xf4, 0x90, 0xff};
    unsigned seed = 12345;
    char s[64];
    for (int n = 0; n < 3000; n++) {
        size_t len = (size_t)(n % 40);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            s[i] = (char)pool[(seed >> 16) % sizeof pool];
        }
        s[len] = '\0';
        same_as_tree(proto_msg(s, "e", (uint64_t)n, s, s, s, n, NULL), ref_msg(s, "e", (uint64_t)n, s, s, s, n, NULL));
        same_as_tree(proto_presence("join", s, "i", s, n & 1), ref_presence("join", s, "i", s, n & 1));
        same_as_tree(proto_error("c", s, NULL), ref_error("c", s, NULL));
    }
}

/* An encoded msg decodes back to what was sent, and the decoder's fields feed the encoders. */
static void test_round_trip(void **state)
{
    proto_in_t in;
    decode_ok("{\"type\":\"msg\",\"room\":\"r\",\"text\":\"\\u2603 \\\"q\\\" \\\\\",\"cid\":12}", MAX_TEXT, &in);
    json_t *o = parse(proto_msg(in.room, "e", 1, "u", "n", in.text, 0, NULL));
    assert_str_field(o, "text", in.text);
    json_decref(o);
    o = parse(proto_ack(in.cid, "e:1"));
    assert_int_field(o, "cid", 12);
    json_decref(o);
    proto_in_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_join),
        cmocka_unit_test(test_decode_too_complex),
        cmocka_unit_test(test_msg_id),
        cmocka_unit_test(test_msg_unnumbered),
        cmocka_unit_test(test_decode_room_only),
        cmocka_unit_test(test_decode_history_since),
        cmocka_unit_test(test_decode_msg),
        cmocka_unit_test(test_decode_dm),
        cmocka_unit_test(test_decode_signal),
        cmocka_unit_test(test_decode_custom),
        cmocka_unit_test(test_decode_bad_json),
        cmocka_unit_test(test_decode_error_message_sendable),
        cmocka_unit_test(test_decode_not_object),
        cmocka_unit_test(test_decode_missing_type),
        cmocka_unit_test(test_decode_bad_type),
        cmocka_unit_test(test_decode_wrong_field_types),
        cmocka_unit_test(test_decode_cid),
        cmocka_unit_test(test_decode_missing_fields),
        cmocka_unit_test(test_decode_text_limits),
        cmocka_unit_test(test_decode_room_names),
        cmocka_unit_test(test_room_valid),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test(test_decode_names),
        cmocka_unit_test(test_since_parse),
        cmocka_unit_test(test_encode_welcome),
        cmocka_unit_test(test_encode_presence),
        cmocka_unit_test(test_encode_msg),
        cmocka_unit_test(test_encode_msg_extra),
        cmocka_unit_test(test_encode_ack),
        cmocka_unit_test(test_encode_dm),
        cmocka_unit_test(test_encode_signal),
        cmocka_unit_test(test_encode_error),
        cmocka_unit_test(test_encode_bad_utf8_args),
        cmocka_unit_test(test_encode_any),
        cmocka_unit_test(test_encode_room),
        cmocka_unit_test(test_encode_history),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_direct_tricky_strings),
        cmocka_unit_test(test_direct_numbers_and_values),
        cmocka_unit_test(test_direct_random),
        cmocka_unit_test(test_decode_fast_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
