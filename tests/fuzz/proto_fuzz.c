/* libFuzzer target for proto.c. The input is one client text frame. It is decoded with two
 * text limits, which must agree; a decoded message must keep every promise of proto.h (valid
 * room and name, text within the limit, the since and cid shapes), re-encode to itself, and feed
 * every encoder, whose output must parse as the JSON object it claims to be. A refused message
 * must carry a known code and a UTF-8 message that proto_error can send. The raw bytes, as a C
 * string, also go through the validators and, unchecked, through the encoders, which must scrub
 * what is not UTF-8 rather than drop a key. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/err.h"
#include "proto/proto.h"
#include "proto/ws.h"

/* Parses an encoder's output; it must be an object whose "type" is type. Frees s. */
static void fuzz_expect(sbuf_t *s, const char *type)
{
    if (!s) abort();
    if (!ws_utf8_valid((const uint8_t *)s->data, s->len)) abort();
    json_t *v = json_loadb(s->data, s->len, 0, NULL);
    if (!json_is_object(v)) abort();
    const char *t = json_string_value(json_object_get(v, "type"));
    if (!t || strcmp(t, type)) abort();
    json_decref(v);
    sbuf_unref(s);
}

static void fuzz_decoded(const proto_in_t *in, size_t max_text)
{
    if (!json_is_object(in->root) || !in->type_name) abort();
    if (in->type_name != json_string_value(json_object_get(in->root, "type"))) abort();
    if (in->room && !proto_room_valid(in->room)) abort();
    if (in->name && !proto_name_valid(in->name)) abort();
    if (in->text && (in->text_len > max_text || strlen(in->text) != in->text_len)) abort();
    if (in->to && (!in->to[0] || strlen(in->to) > 64)) abort();
    char epoch[33];
    uint64_t seq;
    if (in->since && proto_since_parse(in->since, epoch, sizeof epoch, &seq)) abort();
    if (in->cid && !json_is_integer(in->cid) && !(json_is_string(in->cid) && json_string_length(in->cid) <= PROTO_MAX_CID))
        abort();
    switch (in->type) {
    case PROTO_JOIN: case PROTO_LEAVE: case PROTO_MUTE: case PROTO_UNMUTE: case PROTO_HISTORY:
        if (!in->room) abort();
        break;
    case PROTO_MSG:
        if (!in->room || !in->text || !in->text_len) abort();
        break;
    case PROTO_DM:
        if (!in->to || !in->text || !in->text_len) abort();
        break;
    case PROTO_SIGNAL:
        if (!in->room || !in->to || !in->data) abort();
        break;
    case PROTO_CUSTOM:
        break;
    default:
        abort();
    }

    /* the message re-encodes to one that decodes the same */
    sbuf_t *again = proto_encode(in->root);
    if (!again) abort();
    proto_in_t in2;
    proto_err_t err2;
    if (proto_decode(again->data, again->len, max_text, &in2, &err2)) abort();
    if (in2.type != in->type || !json_equal(in2.root, in->root)) abort();
    proto_in_free(&in2);

    /* every encoder takes what the decoder let through */
    const char *room = in->room ? in->room : "lobby";
    const char *name = in->name ? in->name : "anon";
    const char *text = in->text ? in->text : "";
    sbuf_t *hist[3];
    hist[0] = proto_msg(room, "e1", 1, "c1", name, text, 1700000000000, in->root);
    hist[1] = NULL;
    hist[2] = again;
    json_t *members = json_pack("[{s:s, s:s, s:b}]", "id", "c1", "name", name, "muted", 0);
    fuzz_expect(proto_room(room, members, hist, 3), "room");
    fuzz_expect(proto_history(room, hist, 3), "history");
    json_decref(members);
    fuzz_expect(hist[0], "msg");
    sbuf_unref(again);
    fuzz_expect(proto_ack(in->cid, "e1:1"), "ack");
    fuzz_expect(proto_dm("c1", name, text, 1), "dm");
    fuzz_expect(proto_signal(room, "c1", in->data), "signal");
    fuzz_expect(proto_presence("join", room, "c1", name, 1), "join");
    fuzz_expect(proto_error("bad_type", in->type_name, in->cid), "error");
}

static void fuzz_refused(const proto_err_t *err)
{
    static const char *const codes[] = {"bad_json", "bad_type", "bad_field", "too_large", "too_complex"};
    size_t i = 0;
    while (i < sizeof codes / sizeof codes[0] && (!err->code || strcmp(err->code, codes[i]))) i++;
    if (i == sizeof codes / sizeof codes[0]) abort();
    size_t n = strnlen(err->message, sizeof err->message);
    if (n == sizeof err->message || !ws_utf8_valid((const uint8_t *)err->message, n)) abort();
    fuzz_expect(proto_error(err->code, err->message, NULL), "error");
}

/* The raw bytes as a C string, cut at the first NUL. */
static void fuzz_raw(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    size_t n = strlen(s);
    int utf8 = ws_utf8_valid((const uint8_t *)s, n);
    if (proto_room_valid(s) && (!utf8 || n < 1 || n > PROTO_MAX_ROOM || s[0] == '.')) abort();
    if (proto_name_valid(s) && !utf8) abort();
    char epoch[33];
    uint64_t seq;
    if (!proto_since_parse(s, epoch, sizeof epoch, &seq) && (strlen(epoch) > 32 || !epoch[0])) abort();
    /* unchecked strings: scrubbed, never lost */
    fuzz_expect(proto_presence("leave", s, s, s, 0), "leave");
    fuzz_expect(proto_msg(s, s, 2, s, s, s, 2, NULL), "msg");
    fuzz_expect(proto_welcome(s, s, s, s), "welcome");
    fuzz_expect(proto_error(s[0] ? "bad_json" : "x", s, NULL), "error");
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_in_t big, small;
    proto_err_t ebig, esmall;
    int rbig = proto_decode((const char *)data, size, 4096, &big, &ebig);
    int rsmall = proto_decode((const char *)data, size, 16, &small, &esmall);
    if (rbig != 0 && rbig != GW_EINVAL && rbig != GW_ETOOBIG) abort();
    /* a smaller text limit can only refuse more, and only with too_large */
    if (rbig && !rsmall) abort();
    if (!rbig && rsmall && (strcmp(esmall.code, "too_large") || rsmall != GW_ETOOBIG)) abort();
    if (!rbig && !rsmall && small.type != big.type) abort();
    if (!rbig) fuzz_decoded(&big, 4096), proto_in_free(&big);
    else fuzz_refused(&ebig);
    if (!rsmall) fuzz_decoded(&small, 16), proto_in_free(&small);
    else fuzz_refused(&esmall);
    fuzz_raw(data, size);
    return 0;
}
