/* proto: the v1 JSON protocol; see proto.h. Decoding parses one client frame with jansson
 * (strict: no trailing bytes, no NUL in strings, valid UTF-8 only), maps its type, and checks
 * the fields that type uses against a small table, so hub.c gets borrowed pointers it can
 * trust. Encoding builds each server message as a jansson object and dumps it compactly into
 * a shared buffer; room snapshots and history replies splice already-encoded msg buffers in
 * as raw bytes, so history is never parsed again. No I/O, no room state, and no string
 * reaches the wire without being valid UTF-8. */
#include "proto.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ---- */

/* Decodes one code point at *p (p < end) and advances *p. Rejects truncated sequences,
 * overlong forms, surrogates and values above U+10FFFF. Returns 0, or -1 with *p unchanged. */
static int proto_utf8_next(const unsigned char **p, const unsigned char *end, uint32_t *cp)
{
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    const unsigned char *s = *p;
    unsigned char b = s[0];
    size_t n;
    uint32_t c;
    if (b < 0x80) { n = 1; c = b; }
    else if ((b & 0xE0) == 0xC0) { n = 2; c = b & 0x1F; }
    else if ((b & 0xF0) == 0xE0) { n = 3; c = b & 0x0F; }
    else if ((b & 0xF8) == 0xF0) { n = 4; c = b & 0x07; }
    else return -1;
    if ((size_t)(end - s) < n) return -1;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return -1;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return -1;
    *p = s + n;
    *cp = c;
    return 0;
}

/* Replaces every byte that does not start a valid sequence with '?', in place, so that text
 * from elsewhere (jansson's error text, a name cut short) can always become a JSON string. */
static void proto_utf8_scrub(char *s)
{
    unsigned char *u = (unsigned char *)s;
    const unsigned char *p = u, *end = u + strlen(s);
    uint32_t cp;
    while (p < end) {
        if (proto_utf8_next(&p, end, &cp) == 0) continue;
        u[p - u] = '?';
        p++;
    }
}

/* C0 controls, DEL and C1 controls. */
static int proto_cp_control(uint32_t c) { return c < 0x20 || (c >= 0x7F && c <= 0x9F); }

/* Unicode White_Space that is not a control character (the controls are caught above). */
static int proto_cp_space(uint32_t c)
{
    return c == 0x20 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- validators ---- */

int proto_room_valid(const char *s)
{
    if (!s) return 0;
    size_t len = strlen(s);
    if (len < 1 || len > PROTO_MAX_ROOM || s[0] == '.') return 0;
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        uint32_t c;
        if (proto_utf8_next(&p, end, &c) < 0) return 0;
        if (proto_cp_control(c) || proto_cp_space(c)) return 0;
        if (c < 0x80 && strchr("/?#%\\\"<>", (int)c)) return 0;
    }
    return 1;
}

int proto_name_valid(const char *s)
{
    if (!s) return 0;
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    size_t count = 0;
    int visible = 0;
    while (p < end) {
        uint32_t c;
        if (proto_utf8_next(&p, end, &c) < 0 || proto_cp_control(c)) return 0;
        if (++count > PROTO_MAX_NAME) return 0;
        if (!proto_cp_space(c)) visible = 1;
    }
    return count > 0 && visible;
}

int proto_since_parse(const char *since, char *epoch, size_t epoch_len, uint64_t *seq)
{
    if (!since) return -1;
    size_t n = strspn(since, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
    if (n < 1 || n > 32 || since[n] != ':' || n >= epoch_len) return -1;
    const char *digits = since + n + 1;
    size_t nd = strspn(digits, "0123456789");
    if (nd < 1 || nd > 20 || digits[nd] != '\0') return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < nd; i++) {
        unsigned d = (unsigned)(digits[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;   /* 20 digits can still pass 2^64-1 */
        v = v * 10 + d;
    }
    memcpy(epoch, since, n);
    epoch[n] = '\0';
    *seq = v;
    return 0;
}

/* ---- decoding ---- */

enum {
    F_ROOM = 1 << 0,
    F_NAME = 1 << 1,
    F_TEXT = 1 << 2,
    F_TO = 1 << 3,
    F_SINCE = 1 << 4,
    F_CID = 1 << 5,
    F_DATA = 1 << 6,
};

/* Which fields each type reads (allow) and which it must have (need). cid is read on every
 * type so that an error about any message can name it. Custom types get the common fields
 * checked when present; the policy reads the rest from root. */
typedef struct {
    const char *name;
    proto_type_t type;
    unsigned need, allow;
} proto_kind_t;

static const proto_kind_t proto_kinds[] = {
    {"join", PROTO_JOIN, F_ROOM, F_ROOM | F_NAME | F_SINCE},
    {"leave", PROTO_LEAVE, F_ROOM, F_ROOM},
    {"msg", PROTO_MSG, F_ROOM | F_TEXT, F_ROOM | F_TEXT},
    {"dm", PROTO_DM, F_TO | F_TEXT, F_TO | F_TEXT},
    {"signal", PROTO_SIGNAL, F_ROOM | F_TO | F_DATA, F_ROOM | F_TO | F_DATA},
    {"mute", PROTO_MUTE, F_ROOM, F_ROOM},
    {"unmute", PROTO_UNMUTE, F_ROOM, F_ROOM},
    {"history", PROTO_HISTORY, F_ROOM, F_ROOM | F_SINCE},
};
static const proto_kind_t proto_kind_custom = {NULL, PROTO_CUSTOM, 0, F_ROOM | F_TEXT};

__attribute__((format(printf, 3, 4)))
static int proto_err_set(proto_err_t *err, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    proto_utf8_scrub(err->message);   /* truncation may cut a sequence in half */
    err->code = code;
    return -1;
}

/* [a-z][a-z0-9_.-]{0,31} */
static int proto_type_name_valid(const char *s, size_t len)
{
    if (len < 1 || len > PROTO_MAX_TYPE || s[0] < 'a' || s[0] > 'z') return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_.-") == len;
}

static const proto_kind_t *proto_kind_find(json_t *type, proto_err_t *err)
{
    if (!json_is_string(type)) {
        proto_err_set(err, "bad_type", "field 'type' is required and must be a string");
        return NULL;
    }
    const char *s = json_string_value(type);
    for (size_t i = 0; i < sizeof proto_kinds / sizeof proto_kinds[0]; i++)
        if (!strcmp(s, proto_kinds[i].name)) return &proto_kinds[i];
    if (proto_type_name_valid(s, json_string_length(type))) return &proto_kind_custom;
    proto_err_set(err, "bad_type", "field 'type' must match [a-z][a-z0-9_.-]{0,31}");
    return NULL;
}

static int proto_field_room(json_t *v, proto_in_t *in, proto_err_t *err)
{
    if (!json_is_string(v) || !proto_room_valid(json_string_value(v)))
        return proto_err_set(err, "bad_field", "field 'room' must be a string of 1-64 bytes with no "
                                               "whitespace, control characters, / ? # %% \\ \" < > or leading '.'");
    in->room = json_string_value(v);
    return 0;
}

static int proto_field_name(json_t *v, proto_in_t *in, proto_err_t *err)
{
    if (!json_is_string(v) || !proto_name_valid(json_string_value(v)))
        return proto_err_set(err, "bad_field", "field 'name' must be a string of 1-32 characters, "
                                               "not only spaces, with no control characters");
    in->name = json_string_value(v);
    return 0;
}

static int proto_field_text(json_t *v, size_t max_text, int need, proto_in_t *in, proto_err_t *err)
{
    if (!json_is_string(v)) return proto_err_set(err, "bad_field", "field 'text' must be a string");
    size_t len = json_string_length(v);
    if (len > max_text) return proto_err_set(err, "too_large", "field 'text' is over the %zu-byte limit", max_text);
    if (need && len == 0) return proto_err_set(err, "bad_field", "field 'text' must not be empty");
    in->text = json_string_value(v);
    in->text_len = len;
    return 0;
}

static int proto_field_to(json_t *v, proto_in_t *in, proto_err_t *err)
{
    if (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > 64)
        return proto_err_set(err, "bad_field", "field 'to' must be a string of 1-64 bytes");
    in->to = json_string_value(v);
    return 0;
}

static int proto_field_since(json_t *v, proto_in_t *in, proto_err_t *err)
{
    char epoch[33];
    uint64_t seq;
    if (!json_is_string(v) || proto_since_parse(json_string_value(v), epoch, sizeof epoch, &seq) < 0)
        return proto_err_set(err, "bad_field", "field 'since' must be a message id \"epoch:seq\"");
    in->since = json_string_value(v);
    return 0;
}

static int proto_field_cid(json_t *v, proto_in_t *in, proto_err_t *err)
{
    if (!json_is_integer(v) && !(json_is_string(v) && json_string_length(v) <= PROTO_MAX_CID))
        return proto_err_set(err, "bad_field", "field 'cid' must be an integer or a string of up to 64 bytes");
    in->cid = v;
    return 0;
}

/* Checks every field the kind reads, in a fixed order so the first error is predictable. */
static int proto_fields_check(const proto_kind_t *k, size_t max_text, proto_in_t *in, proto_err_t *err)
{
    static const struct { unsigned flag; const char *key; } keys[] = {
        {F_ROOM, "room"}, {F_TO, "to"}, {F_NAME, "name"}, {F_TEXT, "text"},
        {F_SINCE, "since"}, {F_DATA, "data"}, {F_CID, "cid"},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        unsigned f = keys[i].flag;
        if (!((k->allow | F_CID) & f)) continue;
        json_t *v = json_object_get(in->root, keys[i].key);
        if (!v) {
            if (k->need & f) return proto_err_set(err, "bad_field", "field '%s' is required", keys[i].key);
            continue;
        }
        int rc = 0;
        switch (f) {
        case F_ROOM: rc = proto_field_room(v, in, err); break;
        case F_NAME: rc = proto_field_name(v, in, err); break;
        case F_TEXT: rc = proto_field_text(v, max_text, (k->need & F_TEXT) != 0, in, err); break;
        case F_TO: rc = proto_field_to(v, in, err); break;
        case F_SINCE: rc = proto_field_since(v, in, err); break;
        case F_CID: rc = proto_field_cid(v, in, err); break;
        case F_DATA: in->data = v; break;   /* any JSON value, null included */
        }
        if (rc < 0) return -1;
    }
    return 0;
}

int proto_decode(const char *text, size_t len, size_t max_text, proto_in_t *in, proto_err_t *err)
{
    json_error_t jerr;
    /* DECODE_ANY only so that a scalar gets the same "must be an object" answer as an array. */
    json_t *root = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!root) {
        memset(in, 0, sizeof *in);
        return proto_err_set(err, "bad_json", "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
                             jerr.text);
    }
    return proto_decode_value(root, max_text, in, err);
}

int proto_decode_value(json_t *root, size_t max_text, proto_in_t *in, proto_err_t *err)
{
    memset(in, 0, sizeof *in);
    if (!json_is_object(root)) {
        json_decref(root);
        return proto_err_set(err, "bad_json", "a message must be a JSON object");
    }
    in->root = root;
    const proto_kind_t *k = proto_kind_find(json_object_get(root, "type"), err);
    if (!k || proto_fields_check(k, max_text, in, err) < 0) {
        json_decref(root);
        memset(in, 0, sizeof *in);
        return -1;
    }
    in->type = k->type;
    in->type_name = json_string_value(json_object_get(root, "type"));
    return 0;
}

void proto_in_free(proto_in_t *in)
{
    json_decref(in->root);
    memset(in, 0, sizeof *in);
}

/* ---- encoding ---- */

/* A JSON string for s: null when s is NULL, and a scrubbed copy when s is not valid UTF-8
 * (json_string would return NULL and the key would silently vanish). */
static json_t *proto_str(const char *s)
{
    if (!s) return json_null();
    json_t *v = json_string(s);
    if (v) return v;
    char *copy = xstrdup(s);
    proto_utf8_scrub(copy);
    v = json_string(copy);
    free(copy);
    return v;
}

static json_t *proto_obj_new(const char *type)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", proto_str(type));
    return o;
}

static json_t *proto_member_new(const char *id, const char *name, int muted)
{
    json_t *m = json_object();
    json_object_set_new(m, "id", proto_str(id));
    json_object_set_new(m, "name", proto_str(name));
    json_object_set_new(m, "muted", json_boolean(muted));
    return m;
}

static json_t *proto_from_new(const char *id, const char *name)
{
    json_t *f = json_object();
    json_object_set_new(f, "id", proto_str(id));
    json_object_set_new(f, "name", proto_str(name));
    return f;
}

/* Dumps value and takes the caller's reference to it. */
static sbuf_t *proto_finish(json_t *value)
{
    sbuf_t *s = proto_encode(value);
    json_decref(value);
    return s;
}

sbuf_t *proto_encode(json_t *value)
{
    if (!value) return NULL;
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (!text) return NULL;
    sbuf_t *s = sbuf_from(text, strlen(text));
    free(text);
    return s;
}

sbuf_t *proto_welcome(const char *id, const char *name, const char *server, const char *policy)
{
    json_t *o = proto_obj_new("welcome");
    json_object_set_new(o, "id", proto_str(id));
    json_object_set_new(o, "name", proto_str(name));
    json_object_set_new(o, "server", proto_str(server));
    json_object_set_new(o, "policy", proto_str(policy));
    return proto_finish(o);
}

sbuf_t *proto_presence(const char *type, const char *room, const char *id, const char *name, int muted)
{
    json_t *o = proto_obj_new(type);
    json_object_set_new(o, "room", proto_str(room));
    json_object_set_new(o, "member", proto_member_new(id, name, muted));
    return proto_finish(o);
}

sbuf_t *proto_msg(const char *room, const char *epoch, uint64_t seq, const char *from_id,
                  const char *from_name, const char *text, int64_t ts, json_t *extra)
{
    static const char *const reserved[] = {"type", "room", "id", "from", "text", "ts"};
    char id[96];
    snprintf(id, sizeof id, "%s:%" PRIu64, epoch ? epoch : "", seq);
    json_t *o = proto_obj_new("msg");
    json_object_set_new(o, "room", proto_str(room));
    json_object_set_new(o, "id", proto_str(id));
    json_object_set_new(o, "from", proto_from_new(from_id, from_name));
    json_object_set_new(o, "text", proto_str(text));
    json_object_set_new(o, "ts", json_integer((json_int_t)ts));
    const char *key;
    json_t *v;
    if (json_is_object(extra)) {
        json_object_foreach(extra, key, v) {
            size_t i = 0;
            while (i < sizeof reserved / sizeof reserved[0] && strcmp(key, reserved[i])) i++;
            if (i == sizeof reserved / sizeof reserved[0]) json_object_set(o, key, v);
        }
    }
    return proto_finish(o);
}

sbuf_t *proto_ack(json_t *cid, const char *id)
{
    json_t *o = proto_obj_new("ack");
    if (cid) json_object_set(o, "cid", cid);
    if (id) json_object_set_new(o, "id", proto_str(id));
    return proto_finish(o);
}

sbuf_t *proto_dm(const char *from_id, const char *from_name, const char *text, int64_t ts)
{
    json_t *o = proto_obj_new("dm");
    json_object_set_new(o, "from", proto_from_new(from_id, from_name));
    json_object_set_new(o, "text", proto_str(text));
    json_object_set_new(o, "ts", json_integer((json_int_t)ts));
    return proto_finish(o);
}

sbuf_t *proto_signal(const char *room, const char *from, json_t *data)
{
    json_t *o = proto_obj_new("signal");
    json_object_set_new(o, "room", proto_str(room));
    json_object_set_new(o, "from", proto_str(from));
    json_object_set_new(o, "data", data ? json_incref(data) : json_null());
    return proto_finish(o);
}

sbuf_t *proto_error(const char *code, const char *message, json_t *ref)
{
    json_t *o = proto_obj_new("error");
    json_object_set_new(o, "code", proto_str(code));
    json_object_set_new(o, "message", proto_str(message));
    if (ref) json_object_set(o, "ref", ref);
    return proto_finish(o);
}

/* Dumps head (an object with at least one key), then appends ,"key":[item,item,...]} with
 * the items copied as they are. NULL or empty items are skipped so the result stays valid. */
static sbuf_t *proto_splice(json_t *head, const char *key, sbuf_t *const *items, size_t n)
{
    char *text = json_dumps(head, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(head);
    if (!text) return NULL;
    size_t head_len = strlen(text) - 1;   /* without the closing '}' */
    size_t key_len = strlen(key);
    size_t total = head_len + 2 + key_len + 3 + 2, count = 0;   /* ,"key":[ ... ]} */
    for (size_t i = 0; i < n; i++) {
        if (!items[i] || !items[i]->len) continue;
        total += items[i]->len + (count++ ? 1 : 0);
    }
    sbuf_t *s = sbuf_new(total);
    char *w = s->data;
    memcpy(w, text, head_len), w += head_len;
    memcpy(w, ",\"", 2), w += 2;
    memcpy(w, key, key_len), w += key_len;
    memcpy(w, "\":[", 3), w += 3;
    count = 0;
    for (size_t i = 0; i < n; i++) {
        if (!items[i] || !items[i]->len) continue;
        if (count++) *w++ = ',';
        memcpy(w, items[i]->data, items[i]->len), w += items[i]->len;
    }
    memcpy(w, "]}", 2);
    free(text);
    return s;
}

sbuf_t *proto_room(const char *room, json_t *members, sbuf_t *const *history, size_t nhistory)
{
    json_t *o = proto_obj_new("room");
    json_object_set_new(o, "room", proto_str(room));
    json_object_set_new(o, "members", json_is_array(members) ? json_incref(members) : json_array());
    return proto_splice(o, "history", history, nhistory);
}

sbuf_t *proto_history(const char *room, sbuf_t *const *history, size_t nhistory)
{
    json_t *o = proto_obj_new("history");
    json_object_set_new(o, "room", proto_str(room));
    return proto_splice(o, "messages", history, nhistory);
}
