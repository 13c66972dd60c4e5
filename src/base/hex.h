/* hex: lowercase hexadecimal, the one encoder (ids, digests, ETags, fingerprints) and the one
 * digit decoder (percent-encoding). No I/O. */
#ifndef CHATGW_HEX_H
#define CHATGW_HEX_H

#include <stddef.h>

/* Writes 2 * n lowercase hex digits of in[0..n) and a NUL to out (2 * n + 1 bytes); returns
 * out. */
char *hex_encode(const void *in, size_t n, char *out);
/* nbytes random bytes (OpenSSL's RAND_bytes) as 2 * nbytes hex digits and a NUL. Aborts when
 * the generator fails: ids that repeat across restarts are worse than no start. */
char *hex_random(char *out, size_t nbytes);
/* The value of one hex digit (either case), or -1 for a byte that is not one: an answer,
 * not an error, so it is not a GW_E* code. */
int hex_digit(int c);

#endif
