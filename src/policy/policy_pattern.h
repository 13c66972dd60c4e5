/* policy_pattern: string.find, string.match, string.gmatch and string.gsub for the policy VM,
 * on policy_match instead of Lua's own matcher, whose backtracking can run for seconds inside
 * one C call where neither the count hook nor the timeout can reach it. Same arguments,
 * defaults, returns and errors as Lua 5.4.4's; in addition each call stops with an error after
 * a step budget or when a stop flag is set, and gsub refuses to build an oversized result.
 * Part of the policy module: only the policy VM's setup calls it. */
#ifndef CHATGW_POLICY_PATTERN_H
#define CHATGW_POLICY_PATTERN_H

#include <signal.h>
#include <stddef.h>

#include <lua.h>

/* Replaces find, match, gmatch and gsub in the table at index idx (the string library table,
 * or a copy) with closures that share one configuration:
 *  - max_steps: the matching steps one call may take (0: no limit); find, match and gsub
 *    count over the whole call, gmatch over each call of its iterator. A plain scan costs
 *    about two steps per byte; find without specials (or with plain) costs none. Past it the
 *    call raises "string.<name>: pattern too complex (over <max_steps> steps)".
 *  - stop: read every POLICY_MATCH_STOP_EVERY steps; once nonzero the call raises
 *    "string.<name>: interrupted". NULL: never. Borrowed: it must outlive L.
 *  - max_out: gsub raises "string.gsub: resulting string too large (over <max_out> bytes)"
 *    when its result would be longer than max_out and than its subject.
 * Errors Lua itself raises keep Lua's wording ("malformed pattern (ends with '%')", ...).
 * The stack is left as it was; raises only on memory errors. */
void policy_pattern_open(lua_State *L, int idx, const volatile sig_atomic_t *stop, unsigned long max_steps,
                         size_t max_out);

#endif
