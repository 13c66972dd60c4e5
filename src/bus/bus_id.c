#include "bus/bus_id.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/err.h"

size_t bus_id_text(const bus_id_t *id, char out[BUS_ID_TEXT_MAX])
{
    int n = snprintf(out, BUS_ID_TEXT_MAX, "%s:%" PRIu64, id->epoch, id->seq);
    return n < 0 ? 0 : (size_t)n < BUS_ID_TEXT_MAX ? (size_t)n : BUS_ID_TEXT_MAX - 1;
}

int bus_id_parse(const char *s, size_t n, bus_id_t *id)
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

sbuf_t *bus_payload_number(const void *head, size_t head_len, const void *tail, size_t tail_len,
                           const bus_id_t *id)
{
    char text[BUS_ID_TEXT_MAX];
    size_t n = bus_id_text(id, text);
    sbuf_t *s = sbuf_new(head_len + n + tail_len);
    memcpy(s->data, head, head_len);
    memcpy(s->data + head_len, text, n);
    memcpy(s->data + head_len + n, tail, tail_len);
    return s;
}
