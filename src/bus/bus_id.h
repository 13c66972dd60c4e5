/* bus_id: the ids the bus gives chat msgs, and the one place that writes an id into a msg.
 * An id is a room's epoch and a seq; its text is "epoch:seq" (seq in decimal), the form the
 * Redis scripts write and the channel envelopes carry. A msg is posted with an id slot: a
 * byte offset into its payload where the id's text goes (the protocol layer encodes the msg
 * with an empty id and tells where; the bus knows nothing of the format). Numbering a msg
 * inserts the text there, in C here and in Redis's post script, byte for byte alike. No I/O. */
#ifndef CHATGW_BUS_ID_H
#define CHATGW_BUS_ID_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define BUS_EPOCH_MAX 40
#define BUS_ID_TEXT_MAX (BUS_EPOCH_MAX + 21)   /* "epoch:" + 20 digits of a uint64 */

typedef struct {
    char epoch[BUS_EPOCH_MAX]; /* "" when the room has no history in the store */
    uint64_t seq;
} bus_id_t;

/* The text of id into out (BUS_ID_TEXT_MAX bytes); returns its length. */
size_t bus_id_text(const bus_id_t *id, char out[BUS_ID_TEXT_MAX]);
/* "epoch:seq" of n bytes (an envelope's id field) into id. 0, or GW_EINVAL. */
int bus_id_parse(const char *s, size_t n, bus_id_t *id);
/* A numbered payload, refs = 1: head, id's text, tail (both borrowed), as the Redis post
 * script joins them. For a payload p with its slot at id_at: head p, id_at bytes; tail
 * p + id_at, the rest. */
sbuf_t *bus_payload_number(const void *head, size_t head_len, const void *tail, size_t tail_len,
                           const bus_id_t *id);

#endif
