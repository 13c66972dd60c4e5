#!/bin/sh
# CHATGW_BIN wrapper for leak checks over the e2e suites (tests/fuzz/README.md, "Leaks").
# Runs $CHATGW_REAL_BIN under $CHATGW_WRAP (a command prefix, e.g. valgrind with its options, or
# empty for an ASan build) as a child that gets SIGTERM when this wrapper dies. The e2e harness
# stops servers with SIGKILL, which would kill a leak checker before it reports; here the
# wrapper takes the SIGKILL, the server drains and exits normally, and the checker writes its
# report (to the log file its own options name). A TERM, INT or HUP is passed on.
set -u
: "${CHATGW_REAL_BIN:?set CHATGW_REAL_BIN to the chatgw binary}"
# shellcheck disable=SC2086 # CHATGW_WRAP is a word list on purpose
setpriv --pdeathsig TERM -- ${CHATGW_WRAP:-} "$CHATGW_REAL_BIN" "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' TERM
trap 'kill -INT $pid 2>/dev/null' INT
trap 'kill -HUP $pid 2>/dev/null' HUP
rc=0
while :; do
    wait $pid
    rc=$?
    kill -0 $pid 2>/dev/null || break
done
exit $rc
