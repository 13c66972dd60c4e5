/* utf8: the one lossy conversion of text to a JSON string. jansson refuses text that is not
 * valid UTF-8; logs, policy log text and protocol frames keep such text readable instead of
 * dropping it, by turning each byte that does not start a valid sequence into '?'. No I/O. */
#ifndef CHATGW_UTF8_H
#define CHATGW_UTF8_H

#include <stdint.h>

#include <jansson.h>

/* Replaces, in place, every byte of s that does not start a valid UTF-8 sequence (truncated,
 * overlong, surrogate, above U+10FFFF) with '?'; valid sequences are kept. */
void utf8_scrub(char *s);
/* Decodes the code point at *p (p < end) into *cp and advances *p: 0, or GW_EINVAL with *p
 * unchanged for a truncated sequence, an overlong form, a surrogate or a value above
 * U+10FFFF. The one decoder (ws.c's streaming validator answers only valid or not). */
int utf8_next(const unsigned char **p, const unsigned char *end, uint32_t *cp);
/* A new JSON string for s (borrowed): s itself when it is valid UTF-8, else a scrubbed copy,
 * and then *lossy = 1 when lossy is not NULL (left alone otherwise). */
json_t *utf8_json_new(const char *s, int *lossy);

#endif
