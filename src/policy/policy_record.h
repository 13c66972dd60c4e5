/* policy_record: appends the policy's hook inputs and the stable decision to a JSON-lines file
 * (policy_record_file), for `chatgw replay`. One line per call:
 *   {"ts":S, "hook":"on_message", "conn":{id, ip, name, query}, "room":R, "msg":{...},
 *    "stable":{"verdict":"pass"|"drop"|"error", "code"?, "out"?}}
 * Connections are sampled whole (a hash of the id against policy_record_sample), so a replay
 * sees each recorded connection's connect, joins, messages and leaves in order. Headers are
 * never recorded. With redaction, message strings (but type, room, cid and to), names and
 * query values become same-length runs of 'x', and addresses a pseudonym that is stable within
 * one file. This is personal data (SECURITY.md): the file is created 0600, and a process stops
 * recording at POLICY_RECORD_MAX_BYTES. Lines are written whole with O_APPEND, so workers may
 * share one file. Blocking writes: buffered, written at 64 KiB and by policy_record_flush. */
#ifndef CHATGW_POLICY_RECORD_H
#define CHATGW_POLICY_RECORD_H

#include <jansson.h>

#include "policy/policy_types.h"

#define POLICY_RECORD_MAX_BYTES (1024LL << 20)   /* per holder: a full disk helps nobody */

typedef struct policy_record_s policy_record_t;

/* Opens file for appending (created 0600). NULL with err when it cannot be opened. */
policy_record_t *policy_record_open(const char *file, double sample, int redact, char *err, size_t errlen);
/* Flushes and closes; NULL is fine. */
void policy_record_free(policy_record_t *r);
/* 1 when the connection with this id is recorded. */
int policy_record_wants(const policy_record_t *r, const char *conn_id);
/* Appends one call (everything borrowed). verdict is POLICY_PASS/DROP/ERROR; code the drop's
 * code; out what on_message delivers (NULL = handled). */
void policy_record_add(policy_record_t *r, double ts, int hook, const policy_conn_t *conn, const char *room,
                       json_t *msg, int verdict, const char *code, json_t *out);
/* Writes what is buffered. */
void policy_record_flush(policy_record_t *r);

#endif
