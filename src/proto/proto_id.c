#include "proto/proto_id.h"

#include <stdio.h>
#include <string.h>

#include "base/err.h"

char *proto_id_write(char *out, size_t len, const char *epoch, uint64_t seq)
{
    char digits[24];
    size_t i = sizeof digits;
    do digits[--i] = (char)('0' + seq % 10), seq /= 10;
    while (seq);
    size_t elen = epoch ? strlen(epoch) : 0, dlen = sizeof digits - i;
    if (elen + 1 + dlen < len) {   /* on every message: no snprintf */
        if (elen) memcpy(out, epoch, elen);
        out[elen] = ':';
        memcpy(out + elen + 1, digits + i, dlen);
        out[elen + 1 + dlen] = '\0';
    } else if (len) {
        snprintf(out, len, "%s:%.*s", epoch ? epoch : "", (int)dlen, digits + i);
    }
    return out;
}

size_t proto_id_text(const proto_id_t *id, char out[PROTO_ID_TEXT_MAX])
{
    return strlen(proto_id_write(out, PROTO_ID_TEXT_MAX, id->epoch, id->seq));
}

int proto_id_parse(const char *s, size_t n, proto_id_t *id)
{
    const char *colon = NULL;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ':') colon = s + i;
    if (!colon || (size_t)(colon - s) >= sizeof id->epoch || colon + 1 == s + n) return GW_EINVAL;
    uint64_t v = 0;
    for (const char *p = colon + 1; p < s + n; p++) {
        if (*p < '0' || *p > '9') return GW_EINVAL;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    memcpy(id->epoch, s, (size_t)(colon - s));
    id->epoch[colon - s] = '\0';
    id->seq = v;
    return 0;
}

sbuf_t *proto_msg_number(const void *head, size_t head_len, const void *tail, size_t tail_len,
                         const proto_id_t *id)
{
    char text[PROTO_ID_TEXT_MAX];
    size_t n = proto_id_text(id, text);
    sbuf_t *s = sbuf_new(head_len + n + tail_len);
    memcpy(s->data, head, head_len);
    memcpy(s->data + head_len, text, n);
    memcpy(s->data + head_len + n, tail, tail_len);
    return s;
}
