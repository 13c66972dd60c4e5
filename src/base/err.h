/* err: the one error convention. Internal functions that can fail return 0 (or a count, or a
 * pointer) on success and a negative GW_E* code from the table below on failure, as libuv
 * does; a libuv result (UV_E*, a negative errno) passes through unchanged, so both share one
 * space and gw_strerror names either. Where a caller needs words for a log or a client, the
 * function also fills a caller's buffer (char *err, size_t errlen), but the code still says
 * what happened. HTTP statuses are chosen only at the HTTP edge (http_status_of in
 * http/http.h); the layers below never return one. Policy verdicts (POLICY_PASS/DROP) and
 * match results are answers, not errors, and keep their own enums. */
#ifndef CHATGW_ERR_H
#define CHATGW_ERR_H

/* XX(name, code, words). Codes stay clear of errno's range. */
#define GW_ERR_MAP(XX)                                                                    \
    XX(EINVAL, -30001, "invalid argument")                                               \
    XX(ENOMEM, -30002, "out of memory")                                                  \
    XX(EDOWN, -30003, "the shared store is unreachable")                                 \
    XX(ENOTSUP, -30004, "not supported by this bus")                                     \
    XX(ETIMEDOUT, -30005, "timed out")                                                   \
    XX(EREPLY, -30006, "error reply from the shared store")                              \
    XX(EREFUSED, -30007, "refused by the policy")                                        \
    XX(EUNAVAIL, -30008, "not available now (draining, policy failing, store full)")     \
    XX(ELIMIT, -30009, "over a limit (connections, rate)")                               \
    XX(ENOTFOUND, -30010, "not found")                                                   \
    XX(ETOOBIG, -30011, "too large")

enum {
#define GW_ERR_ENUM(name, code, words) GW_##name = code,
    GW_ERR_MAP(GW_ERR_ENUM)
#undef GW_ERR_ENUM
};

/* Words for a GW_E* or UV_E* code; "ok" for 0 and non-negative values. */
const char *gw_strerror(int code);

#endif
