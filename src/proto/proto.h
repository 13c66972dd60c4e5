/* proto: the v1 JSON protocol (DESIGN.md, "Wire protocol v1"). It decodes and validates client
 * messages and encodes server messages, with jansson. No I/O and no room state: hub.c decides
 * what a valid message means. Encoders return a new shared buffer (refs = 1) holding one JSON
 * object, ready to be framed once and fanned out. */
#ifndef CHATGW_PROTO_H
#define CHATGW_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/buf.h"
#include "proto/proto_id.h"

typedef enum {
    PROTO_JOIN,
    PROTO_LEAVE,
    PROTO_MSG,
    PROTO_DM,
    PROTO_SIGNAL,
    PROTO_MUTE,
    PROTO_UNMUTE,
    PROTO_HISTORY,
    PROTO_VOICE_JOIN,              /* voice through the media server (janus_url): {room, data: offer} */
    PROTO_VOICE_LEAVE,
    PROTO_VOICE_TRICKLE,           /* {room, data: ICE candidate or null} */
    PROTO_CUSTOM,                  /* any other well-formed type: the policy may claim it */
} proto_type_t;

#define PROTO_MAX_ROOM 64          /* bytes */
#define PROTO_MAX_NAME 32          /* code points */
#define PROTO_MAX_TYPE 32
#define PROTO_MAX_CID 64

typedef struct {
    proto_type_t type;
    const char *type_name;         /* borrowed from root */
    json_t *root;                  /* owned: the whole object */
    const char *room;              /* borrowed fields, NULL when absent */
    const char *name;
    const char *text;
    size_t text_len;
    const char *to;
    const char *since;             /* "epoch:seq" */
    json_t *cid;                   /* borrowed: string or integer, echoed in ack/error */
    json_t *data;                  /* borrowed: signal payload (any JSON value) */
} proto_in_t;

/* The shape of one client message, checked on its text before any tree is built: jansson's
 * tree, the hub's checks and the policy's Lua tables all cost per value, and no message of the
 * protocol needs more (a signal's SDP is one string). Constants, not config keys: they bound
 * work per message, which max_message_bytes and the rate limits already make an operator's
 * choice. Beyond: error too_complex. */
#define PROTO_VALUES_MAX 4096
#define PROTO_DEPTH_MAX 32

typedef struct {
    const char *code;              /* bad_json, bad_type, bad_field, too_large, too_complex */
    char message[160];
} proto_err_t;

/* Decodes one client text frame. max_text is the limit on msg/dm text in bytes. Returns 0 and
 * fills in (free it with proto_in_free), or a negative code and fills err (GW_ETOOBIG when
 * err->code is too_large or too_complex, GW_EINVAL for the rest); on error *in needs no free.
 * Checks per type: join {room, name?, since?}; leave/mute/unmute {room}; msg {room, text, cid?};
 * dm {to, text, cid?}; signal {room, to, data}; history {room, since?}; voice_join {room, data};
 * voice_leave {room}; voice_trickle {room, data}. Custom types must match
 * [a-z][a-z0-9_.-]{0,31}. A field of the wrong JSON type or an invalid room or name is
 * bad_field; text over max_text is too_large. */
int proto_decode(const char *text, size_t len, size_t max_text, proto_in_t *in, proto_err_t *err);
/* The same checks on an already-built value (a message the policy rewrote). Takes over the
 * reference to root whatever the result. Returns as proto_decode does. */
int proto_decode_value(json_t *root, size_t max_text, proto_in_t *in, proto_err_t *err);
void proto_in_free(proto_in_t *in);

/* 1 when s is a valid room name: 1..64 bytes of UTF-8, no control characters, whitespace,
 * or any of / ? # % \ " < > and no leading '.'. */
int proto_room_valid(const char *s);
/* 1 when s is a valid display name: 1..32 code points of UTF-8, no C0/C1 control characters
 * or DEL, not only spaces. */
int proto_name_valid(const char *s);
/* Parses a msg id, "epoch:seq" (a client's since): epoch 1..32 of [A-Za-z0-9_-], seq 1..20
 * digits within uint64. Returns 0 and fills epoch (NUL-terminated) and seq; GW_ETOOBIG when the
 * epoch and its NUL do not fit epoch_len, GW_EINVAL for any other bad text (NULL too). The hub
 * parses a since here before it asks the bus; the id's text itself is proto_id.h's. */
int proto_since_parse(const char *since, char *epoch, size_t epoch_len, uint64_t *seq);

/* Server messages. ts is milliseconds since the Unix epoch. member objects are
 * {"id","name","muted"}. */
sbuf_t *proto_welcome(const char *id, const char *name, const char *server, const char *policy);
sbuf_t *proto_presence(const char *type, const char *room, const char *id, const char *name, int muted);
/* msg: {type,room,id:"epoch:seq",from:{id,name},text,ts} plus every member of extra (an object
 * from the policy, may be NULL) that does not clash with those keys. */
sbuf_t *proto_msg(const char *room, const char *epoch, uint64_t seq, const char *from_id,
                  const char *from_name, const char *text, int64_t ts, json_t *extra);
/* The same msg without its id ("id":""), for the bus to number (bus_room_post): *id_at is
 * the byte offset of the id's slot, between those two quotes. NULL as proto_msg. */
sbuf_t *proto_msg_unnumbered(const char *room, const char *from_id, const char *from_name, const char *text,
                             int64_t ts, json_t *extra, size_t *id_at);
sbuf_t *proto_ack(json_t *cid, const char *id);
sbuf_t *proto_dm(const char *from_id, const char *from_name, const char *text, int64_t ts);
sbuf_t *proto_signal(const char *room, const char *from, json_t *data);
sbuf_t *proto_error(const char *code, const char *message, json_t *ref);
/* room: {type:"room",room,members:[...],history:[...]}: members is a JSON array (borrowed);
 * history items are already-encoded msg objects, spliced in without re-parsing. */
sbuf_t *proto_room(const char *room, json_t *members, sbuf_t *const *history, size_t nhistory);
/* history: {type:"history",room,messages:[...]} spliced the same way. */
sbuf_t *proto_history(const char *room, sbuf_t *const *history, size_t nhistory);
/* Any JSON value as a new buffer (for policy-built messages). NULL when it cannot be encoded. */
sbuf_t *proto_encode(json_t *value);

#endif
