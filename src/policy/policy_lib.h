/* policy_lib: bounded versions of the standard library functions the policy sandbox exposes.
 * The time guard (policy_guard.h) stops a script at its next VM instruction, so a single C
 * call must not run for long on its own: every function here either does work proportional to
 * what it returns (which the memory cap bounds) or checks a cap before the work starts and
 * raises a Lua error past it. Part of the policy module (only the policy files touch Lua).
 *
 *   string.rep        result <= POLICY_LIB_BYTES_MAX; an empty result returns at once
 *   string.format, upper, lower, reverse, utf8.len, utf8.codepoint, utf8.offset
 *                     every string argument <= POLICY_LIB_BYTES_MAX
 *   table.concat, unpack, move
 *                     at most POLICY_LIB_ITEMS_MAX elements; the length (and __len) read once
 *   table.insert, remove, sort
 *                     a table of at most POLICY_LIB_ITEMS_MAX elements, without __len (these
 *                     read the length themselves, and a __len could answer differently)
 *   os.date           a format of at most POLICY_LIB_DATE_FORMAT_MAX bytes
 *   string.pack, unpack, packsize
 *                     removed: a format like "c2000000000" pads byte by byte
 * The pattern functions (find, match, gmatch, gsub) come from policy_pattern.h. gw.fold and
 * gw.byte_runs, text helpers of the gw table, live here with lower. */
#ifndef CHATGW_POLICY_LIB_H
#define CHATGW_POLICY_LIB_H

#include <stddef.h>

#include <lua.h>

/* Per-call bounds of the library, so one call ends soon enough for the time guard; not config
 * keys: policy_timeout_ms and policy_memory_mb (config) are the operator's limits. */
#define POLICY_LIB_BYTES_MAX (4u << 20)      /* a string one library call may build or scan; also
                                                the VM's largest single allocation (policy.c) */
#define POLICY_LIB_ITEMS_MAX (1u << 16)      /* table elements one library call may touch */
#define POLICY_LIB_DATE_FORMAT_MAX 256       /* each conversion is a strftime call */

/* Whether the n bytes at s are all ASCII (below 0x80): valid UTF-8 without decoding it. */
int policy_lib_ascii(const char *s, size_t n);

/* gw.fold(text): the form of text that moderation compares for sameness, in one pass:
 * string.lower's ASCII lower case, every run of whitespace (%s) one space, none at either end;
 * what lower, gsub("%s+", " ") and a trim answer, without the intermediate strings. Text of at
 * most POLICY_LIB_BYTES_MAX bytes; O(length). */
int policy_lib_fold(lua_State *L);

/* gw.byte_runs(text, max): text with every run of more than max equal bytes cut to max bytes
 * (the argument itself when there is none); max >= 1. For ASCII text that is every run of
 * one character; in UTF-8 text a character is several bytes, so policies cut those runs
 * themselves. At most POLICY_LIB_BYTES_MAX bytes; O(length). */
int policy_lib_byte_runs(lua_State *L);

/* Replaces the functions above in the global string, table, utf8 and os tables (which must
 * be open). Runs inside a protected call: may raise on memory errors. */
void policy_lib_bound(lua_State *L);

#endif
