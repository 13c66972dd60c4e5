/* proto_id: message ids, the one place that writes, reads and inserts them. An id is a
 * room's epoch and a seq; its text is "epoch:seq" (seq in decimal): the msg's "id" field, a
 * client's since, and the form the bus's Redis scripts write and its envelopes carry. A msg
 * is encoded once with an empty id and an id slot (proto_msg_unnumbered): numbering it
 * inserts the id's text there, here in C and in Redis's post script, byte for byte alike, so
 * the bus carries ids and opaque payloads and never encodes. No I/O. */
#ifndef CHATGW_PROTO_ID_H
#define CHATGW_PROTO_ID_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define PROTO_EPOCH_MAX 40
#define PROTO_ID_TEXT_MAX (PROTO_EPOCH_MAX + 21)   /* "epoch:" + 20 digits of a uint64 */

typedef struct {
    char epoch[PROTO_EPOCH_MAX]; /* "" when the room has no history in the store */
    uint64_t seq;
} proto_id_t;

/* "epoch:seq" into out, cut to len as snprintf would (epoch NULL: ""). Returns out. */
char *proto_id_write(char *out, size_t len, const char *epoch, uint64_t seq);
/* The text of id into out (PROTO_ID_TEXT_MAX bytes); returns its length. */
size_t proto_id_text(const proto_id_t *id, char out[PROTO_ID_TEXT_MAX]);
/* "epoch:seq" of n bytes as the bus's envelopes carry it (epoch: any bytes up to the last
 * ':'), into id. 0, or GW_EINVAL. A client's since is stricter: proto_since_parse. */
int proto_id_parse(const char *s, size_t n, proto_id_t *id);
/* A numbered msg, refs = 1: head, id's text, tail (both borrowed), as the Redis post script
 * joins them. For a msg m with its slot at id_at: head m, id_at bytes; tail m + id_at, the
 * rest. */
sbuf_t *proto_msg_number(const void *head, size_t head_len, const void *tail, size_t tail_len,
                         const proto_id_t *id);

#endif
