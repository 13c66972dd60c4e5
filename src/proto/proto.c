/* proto: the v1 JSON protocol; see proto.h. Decoding parses one client frame with jansson
 * (strict: no trailing bytes, no NUL in strings, valid UTF-8 only; flat objects of plain strings
 * and small integers, nearly every frame, take a fast path that builds the same tree), maps its
 * type, and checks the fields that type uses against a small table, so hub.c gets borrowed
 * pointers it can trust. Encoding writes the hot messages (msg, ack, dm, presence, error)
 * straight into a buffer, byte for byte what jansson would dump; the others are built as
 * jansson objects and dumped compactly into a shared buffer; room snapshots and history
 * replies splice already-encoded msg buffers in as raw bytes, so history is never parsed
 * again. No I/O, no room state, and no string reaches the wire without being valid UTF-8. */
#define _GNU_SOURCE 1 /* memmem */
#include "proto/proto.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/utf8.h"

/* ---- UTF-8 ---- */

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
        if (utf8_next(&p, end, &c) < 0) return 0;
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
        if (utf8_next(&p, end, &c) < 0 || proto_cp_control(c)) return 0;
        if (++count > PROTO_MAX_NAME) return 0;
        if (!proto_cp_space(c)) visible = 1;
    }
    return count > 0 && visible;
}

int proto_since_parse(const char *since, char *epoch, size_t epoch_len, uint64_t *seq)
{
    if (!since) return GW_EINVAL;
    size_t n = strspn(since, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
    if (n < 1 || n > 32 || since[n] != ':') return GW_EINVAL;
    if (n >= epoch_len) return GW_ETOOBIG;
    const char *digits = since + n + 1;
    size_t nd = strspn(digits, "0123456789");
    if (nd < 1 || nd > 20 || digits[nd] != '\0') return GW_EINVAL;
    uint64_t v = 0;   /* 20 digits can pass 2^64-1: proto_id_parse would wrap, so count here */
    for (size_t i = 0; i < nd; i++) {
        unsigned d = (unsigned)(digits[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return GW_EINVAL;
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
    {"voice_join", PROTO_VOICE_JOIN, F_ROOM | F_DATA, F_ROOM | F_DATA},
    {"voice_leave", PROTO_VOICE_LEAVE, F_ROOM, F_ROOM},
    {"voice_trickle", PROTO_VOICE_TRICKLE, F_ROOM | F_DATA, F_ROOM | F_DATA},
};
static const proto_kind_t proto_kind_custom = {NULL, PROTO_CUSTOM, 0, F_ROOM | F_TEXT};

/* Fills err and returns the code for it: GW_ETOOBIG for too_large and too_complex, GW_EINVAL
 * for the rest. */
__attribute__((format(printf, 3, 4)))
static int proto_err_set(proto_err_t *err, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    utf8_scrub(err->message);   /* truncation may cut a sequence in half */
    err->code = code;
    return !strcmp(code, "too_large") || !strcmp(code, "too_complex") ? GW_ETOOBIG : GW_EINVAL;
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
        if (rc < 0) return rc;
    }
    return 0;
}

/* ---- decoding: a fast path for flat messages ----
 *
 * Almost every client frame is one flat object of plain strings and small integers
 * ({"type":"msg","room":..,"text":..,"cid":7}). For those, proto_fast_load builds the very
 * tree json_loadb would (same jansson calls in the same order: keys kept in order, a repeated
 * key replaces the earlier value) without jansson's lexer. Anything it does not fully
 * understand (escapes, control characters, text that is not UTF-8, reals, big or
 * zero-padded integers, nested values, trailing bytes, any syntax error) makes it give up and
 * json_loadb decides, errors included, so what is accepted and how errors read is unchanged. */

static const char *proto_fast_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* The body of a string that starts at p (just past the quote): no escape, no control
 * character, valid UTF-8. Returns the closing quote, or NULL. */
static const char *proto_fast_str(const char *p, const char *end)
{
    const unsigned char *u = (const unsigned char *)p, *e = (const unsigned char *)end;
    while (u < e) {
        unsigned char c = *u;
        if (c == '"') return (const char *)u;
        if (c < 0x20 || c == '\\') return NULL;
        if (c < 0x80) {
            u++;
            continue;
        }
        uint32_t cp;
        if (utf8_next(&u, e, &cp) < 0) return NULL;
    }
    return NULL;
}

/* One value at p (not at end); *v gets it. Returns the byte after it, or NULL. */
static const char *proto_fast_value(const char *p, const char *end, json_t **v)
{
    if (*p == '"') {
        const char *s = p + 1, *close = proto_fast_str(s, end);
        if (!close) return NULL;
        *v = json_stringn_nocheck(s, (size_t)(close - s));
        return close + 1;
    }
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        const char *q = p + (*p == '-'), *digits = q;
        uint64_t n = 0;            /* wraps past 19 digits, harmlessly: those give up below */
        while (q < end && *q >= '0' && *q <= '9') n = n * 10 + (uint64_t)(*q++ - '0');
        size_t nd = (size_t)(q - digits);
        if (nd == 0 || nd > 18 || (nd > 1 && *digits == '0')) return NULL;
        if (q < end && (*q == '.' || *q == 'e' || *q == 'E')) return NULL;
        *v = json_integer(*p == '-' ? -(json_int_t)n : (json_int_t)n);   /* n < 10^18 */
        return q;
    }
    if (end - p >= 4 && !memcmp(p, "true", 4)) return *v = json_true(), p + 4;
    if (end - p >= 5 && !memcmp(p, "false", 5)) return *v = json_false(), p + 5;
    if (end - p >= 4 && !memcmp(p, "null", 4)) return *v = json_null(), p + 4;
    return NULL;
}

/* The object text holds, or NULL when json_loadb has to decide. */
static json_t *proto_fast_load(const char *text, size_t len)
{
    const char *p = proto_fast_ws(text, text + len), *end = text + len;
    if (p == end || *p != '{') return NULL;
    json_t *obj = json_object();
    if (!obj) return NULL;
    p = proto_fast_ws(p + 1, end);
    if (p == end) goto fail;
    if (*p != '}') {
        for (;;) {
            if (p == end || *p != '"') goto fail;
            const char *key = p + 1, *kend = proto_fast_str(key, end);
            if (!kend) goto fail;
            p = proto_fast_ws(kend + 1, end);
            if (p == end || *p != ':') goto fail;
            p = proto_fast_ws(p + 1, end);
            json_t *v = NULL;
            if (p == end || !(p = proto_fast_value(p, end, &v))) goto fail;
            if (!v || json_object_setn_new_nocheck(obj, key, (size_t)(kend - key), v)) goto fail;   /* v is taken */
            p = proto_fast_ws(p, end);
            if (p == end) goto fail;
            if (*p == '}') break;
            if (*p != ',') goto fail;
            p = proto_fast_ws(p + 1, end);
        }
    }
    if (proto_fast_ws(p + 1, end) != end) goto fail;
    return obj;
fail:
    json_decref(obj);
    return NULL;
}

/* Whether the JSON text has at most PROTO_VALUES_MAX values nested at most PROTO_DEPTH_MAX
 * deep, by one pass over its structural bytes (strings skipped). Values are the root, each
 * object member (one per ':') and each array element (one per ',' in an array, and one for a
 * non-empty array). Malformed text may pass; json_loadb judges it then. */
static int proto_shape_ok(const char *text, size_t len)
{
    char open[PROTO_DEPTH_MAX];    /* '[' or '{' per level */
    size_t values = 1, depth = 0;
    for (const char *p = text, *end = text + len; p < end && values <= PROTO_VALUES_MAX; p++) {
        switch (*p) {
        case '"':
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\') p++;
            break;
        case '{':
        case '[':
            if (depth == PROTO_DEPTH_MAX) return 0;
            open[depth++] = *p;
            if (*p == '[') {
                const char *q = proto_fast_ws(p + 1, end);
                values += q < end && *q != ']';
            }
            break;
        case '}':
        case ']':
            if (depth) depth--;
            break;
        case ':': values++; break;
        case ',': values += depth && open[depth - 1] == '['; break;
        default: break;
        }
    }
    return values <= PROTO_VALUES_MAX;
}

int proto_decode(const char *text, size_t len, size_t max_text, proto_in_t *in, proto_err_t *err)
{
    json_error_t jerr;
    json_t *root = proto_fast_load(text, len);
    if (!root && !proto_shape_ok(text, len)) {
        memset(in, 0, sizeof *in);
        return proto_err_set(err, "too_complex", "more than %d JSON values or nested deeper than %d", PROTO_VALUES_MAX,
                             PROTO_DEPTH_MAX);
    }
    /* DECODE_ANY only so that a scalar gets the same "must be an object" answer as an array. */
    if (!root) root = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
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
    int rc = k ? proto_fields_check(k, max_text, in, err) : GW_EINVAL;   /* no kind: bad_type */
    if (rc < 0) {
        json_decref(root);
        memset(in, 0, sizeof *in);
        return rc;
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
    return s ? utf8_json_new(s, NULL) : json_null();
}

static json_t *proto_obj_new(const char *type)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", proto_str(type));
    return o;
}

static json_t *proto_from_new(const char *id, const char *name)
{
    json_t *f = json_object();
    json_object_set_new(f, "id", proto_str(id));
    json_object_set_new(f, "name", proto_str(name));
    return f;
}

/* ---- direct writing: the hot encoders (msg, ack, dm, presence, error) ----
 *
 * These write their JSON straight into a buffer instead of building a jansson tree and dumping
 * it, and produce exactly the bytes the tree would have (same key order, jansson's compact
 * form and escapes: \" \\ \b \f \n \r \t, other C0 controls as \u00XX, everything else, DEL and
 * U+2028 included, as it is). A byte that does not start a valid UTF-8 sequence becomes '?',
 * as utf8_scrub does, so the output is always valid UTF-8. */

typedef struct {
    char *p;                       /* stack or heap */
    size_t len, cap;
    char *heap;                    /* owned when non-NULL */
    char stack[768];
} proto_w_t;

static void pw_init(proto_w_t *w)
{
    w->p = w->stack;
    w->len = 0;
    w->cap = sizeof w->stack;
    w->heap = NULL;
}

static void pw_grow(proto_w_t *w, size_t extra)
{
    size_t cap = w->cap * 2;
    while (cap - w->len < extra) cap *= 2;
    char *n = xmalloc(cap);
    memcpy(n, w->p, w->len);
    free(w->heap);
    w->p = w->heap = n;
    w->cap = cap;
}

static inline void pw_reserve(proto_w_t *w, size_t extra)
{
    if (w->cap - w->len < extra) pw_grow(w, extra);
}

static inline void pw_put(proto_w_t *w, const char *s, size_t n)
{
    pw_reserve(w, n);
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

#define PW_LIT(w, lit) pw_put((w), (lit), sizeof(lit) - 1)

/* The buffer as a new shared buffer; releases the writer. */
static sbuf_t *pw_finish(proto_w_t *w)
{
    sbuf_t *s = sbuf_from(w->p, w->len);
    free(w->heap);
    return s;
}

static void pw_free(proto_w_t *w) { free(w->heap); }

/* 1 for the ASCII bytes a JSON string must escape (controls, '"' and '\\'). */
static const unsigned char pw_esc[128] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* A JSON string of the n bytes at s (NUL bytes included, as \u0000). */
static void pw_strn(proto_w_t *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    pw_reserve(w, n + 2);
    w->p[w->len++] = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p < 0x80 && !pw_esc[*p]) p++;
        if (p > run) pw_put(w, (const char *)run, (size_t)(p - run));
        if (p == end) break;
        unsigned char c = *p;
        if (c >= 0x80) {
            const unsigned char *q = p;
            uint32_t cp;
            if (utf8_next(&q, end, &cp) == 0) {
                pw_put(w, (const char *)p, (size_t)(q - p));
                p = q;
            } else {
                pw_put(w, "?", 1);   /* as utf8_scrub: this byte only */
                p++;
            }
            continue;
        }
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        size_t el = 2;
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            e[1] = 'u', e[2] = '0', e[3] = '0', e[4] = hex[c >> 4], e[5] = hex[c & 15];
            el = 6;
        }
        pw_put(w, e, el);
        p++;
    }
    pw_put(w, "\"", 1);
}

/* A JSON string for s, or null when s is NULL (proto_str's rules). */
static void pw_str(proto_w_t *w, const char *s)
{
    if (!s) PW_LIT(w, "null");
    else pw_strn(w, s, strlen(s));
}

static void pw_u64(proto_w_t *w, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do tmp[--i] = (char)('0' + v % 10), v /= 10;
    while (v);
    pw_put(w, tmp + i, sizeof tmp - i);
}

static void pw_i64(proto_w_t *w, int64_t v)
{
    if (v < 0) {
        pw_put(w, "-", 1);
        pw_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        pw_u64(w, (uint64_t)v);
    }
}

static int pw_dump_cb(const char *buffer, size_t size, void *data)
{
    pw_put(data, buffer, size);
    return 0;
}

/* Any JSON value, compact, as json_dumps writes it. 0, or GW_EINVAL when jansson refuses it. */
static int pw_json(proto_w_t *w, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING: pw_strn(w, json_string_value(v), json_string_length(v)); return 0;
    case JSON_INTEGER: pw_i64(w, (int64_t)json_integer_value(v)); return 0;
    case JSON_TRUE: PW_LIT(w, "true"); return 0;
    case JSON_FALSE: PW_LIT(w, "false"); return 0;
    case JSON_NULL: PW_LIT(w, "null"); return 0;
    default:
        if (json_dump_callback(v, pw_dump_cb, w, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER)) return GW_EINVAL;
        return 0;
    }
}

/* ,"key": */
static void pw_key(proto_w_t *w, const char *key)
{
    pw_put(w, ",", 1);
    pw_str(w, key);
    pw_put(w, ":", 1);
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
    proto_w_t w;
    pw_init(&w);
    PW_LIT(&w, "{\"type\":");
    pw_str(&w, type);
    PW_LIT(&w, ",\"room\":");
    pw_str(&w, room);
    PW_LIT(&w, ",\"member\":{\"id\":");
    pw_str(&w, id);
    PW_LIT(&w, ",\"name\":");
    pw_str(&w, name);
    if (muted) PW_LIT(&w, ",\"muted\":true}}");
    else PW_LIT(&w, ",\"muted\":false}}");
    return pw_finish(&w);
}

static const char *const proto_msg_reserved[] = {"type", "room", "id", "from", "text", "ts"};

static int proto_msg_is_reserved(const char *key)
{
    for (size_t i = 0; i < sizeof proto_msg_reserved / sizeof proto_msg_reserved[0]; i++)
        if (!strcmp(key, proto_msg_reserved[i])) return 1;
    return 0;
}

/* The tree-built msg: for an extra with a key that holds a NUL byte, which json_object_set
 * cuts short (two such keys may then collapse into one). */
static sbuf_t *proto_msg_tree(const char *room, const char *id, const char *from_id, const char *from_name,
                              const char *text, int64_t ts, json_t *extra)
{
    static const char *const *reserved = proto_msg_reserved;
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
            while (i < sizeof proto_msg_reserved / sizeof proto_msg_reserved[0] && strcmp(key, reserved[i])) i++;
            if (i == sizeof proto_msg_reserved / sizeof proto_msg_reserved[0]) json_object_set(o, key, v);
        }
    }
    return proto_finish(o);
}

/* "from":{"id":..,"name":..},"text":..,"ts":.. as msg and dm carry them. */
static void pw_from_text(proto_w_t *w, const char *from_id, const char *from_name, const char *text, int64_t ts)
{
    PW_LIT(w, "\"from\":{\"id\":");
    pw_str(w, from_id);
    PW_LIT(w, ",\"name\":");
    pw_str(w, from_name);
    PW_LIT(w, "},\"text\":");
    pw_str(w, text);
    PW_LIT(w, ",\"ts\":");
    pw_i64(w, ts);
}

/* The msg with id as its "id" text. */
static sbuf_t *proto_msg_encode(const char *room, const char *id, const char *from_id, const char *from_name,
                                const char *text, int64_t ts, json_t *extra)
{
    const char *key;
    size_t keylen;
    json_t *v;
    if (json_is_object(extra)) {
        json_object_keylen_foreach(extra, key, keylen, v) {
            if (strlen(key) != keylen) return proto_msg_tree(room, id, from_id, from_name, text, ts, extra);
        }
    }
    proto_w_t w;
    pw_init(&w);
    PW_LIT(&w, "{\"type\":\"msg\",\"room\":");
    pw_str(&w, room);
    PW_LIT(&w, ",\"id\":");
    pw_str(&w, id);
    PW_LIT(&w, ",");
    pw_from_text(&w, from_id, from_name, text, ts);
    if (json_is_object(extra)) {
        json_object_foreach(extra, key, v) {
            if (proto_msg_is_reserved(key)) continue;
            pw_key(&w, key);
            if (pw_json(&w, v) < 0) {
                pw_free(&w);
                return NULL;
            }
        }
    }
    PW_LIT(&w, "}");
    return pw_finish(&w);
}

sbuf_t *proto_msg(const char *room, const char *epoch, uint64_t seq, const char *from_id,
                  const char *from_name, const char *text, int64_t ts, json_t *extra)
{
    char id[96];
    proto_id_write(id, sizeof id, epoch, seq);
    return proto_msg_encode(room, id, from_id, from_name, text, ts, extra);
}

sbuf_t *proto_msg_unnumbered(const char *room, const char *from_id, const char *from_name, const char *text,
                             int64_t ts, json_t *extra, size_t *id_at)
{
    static const char slot[] = ",\"id\":\"\"";
    sbuf_t *s = proto_msg_encode(room, "", from_id, from_name, text, ts, extra);
    if (!s) return NULL;
    /* the first match is the slot: "id" follows "room", and inside a JSON string every '"'
     * follows a backslash, never a comma */
    const char *at = memmem(s->data, s->len, slot, sizeof slot - 1);
    *id_at = (size_t)(at - s->data) + sizeof slot - 2;
    return s;
}

sbuf_t *proto_ack(json_t *cid, const char *id)
{
    proto_w_t w;
    pw_init(&w);
    PW_LIT(&w, "{\"type\":\"ack\"");
    if (cid) {
        PW_LIT(&w, ",\"cid\":");
        if (pw_json(&w, cid) < 0) {
            pw_free(&w);
            return NULL;
        }
    }
    if (id) {
        PW_LIT(&w, ",\"id\":");
        pw_str(&w, id);
    }
    PW_LIT(&w, "}");
    return pw_finish(&w);
}

sbuf_t *proto_dm(const char *from_id, const char *from_name, const char *text, int64_t ts)
{
    proto_w_t w;
    pw_init(&w);
    PW_LIT(&w, "{\"type\":\"dm\",");
    pw_from_text(&w, from_id, from_name, text, ts);
    PW_LIT(&w, "}");
    return pw_finish(&w);
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
    proto_w_t w;
    pw_init(&w);
    PW_LIT(&w, "{\"type\":\"error\",\"code\":");
    pw_str(&w, code);
    PW_LIT(&w, ",\"message\":");
    pw_str(&w, message);
    if (ref) {
        PW_LIT(&w, ",\"ref\":");
        if (pw_json(&w, ref) < 0) {
            pw_free(&w);
            return NULL;
        }
    }
    PW_LIT(&w, "}");
    return pw_finish(&w);
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
