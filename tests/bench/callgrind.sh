#!/bin/bash
# tests/bench/callgrind.sh: instructions per delivered message, counted by callgrind.
#
#   tests/bench/callgrind.sh [BUILD_DIR]        (default build; needs valgrind and python3)
#   SCRIPTS=dir tests/bench/callgrind.sh ...     the default policy from dir instead of scripts/
#   CHATGW_ARGS="--policy-budget 1000000" ...   extra flags for the server (each configuration)
#
# Wall-clock rates on a shared 2-core machine swing by 2x; instruction counts repeat to within
# a few per cent. This runs BUILD_DIR/chatgw under `valgrind --tool=callgrind` and drives it
# with BUILD_DIR/tests/bench/chatgw-bench (outside valgrind) at a low, open-loop rate, so that
# every message is handled on its own (no batching that would depend on timing). Each
# configuration runs twice, with N1 and N2 messages; the difference of the two totals divided
# by the difference of the deliveries is the cost of one more message, without the start-up,
# connection and shutdown cost that both runs share.
#
#   rooms: 100 connections, 10 rooms of 10, 1 publisher per room (every message: 10
#          deliveries, the sender included, plus the ack)
#   room:  100 connections in one room, 2 publishers (every message: 100 deliveries + ack)
# each with the passthrough policy (policy.lua returning {}) and with the default policy
# (scripts/, or $SCRIPTS, plus the benchmark's secrets.lua that lifts the flood limits, as run.mjs does).
# 64-byte client messages. Prints one RESULT line per configuration. The server runs with a
# 60 s policy_timeout_ms: under valgrind everything is ~50x slower, self_test included.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$(cd "${1:-$ROOT/build}" && pwd)
GEN=$B/tests/bench/chatgw-bench
[ -x "$B/chatgw" ] && [ -x "$GEN" ] || { echo "build chatgw and chatgw-bench in $B first" >&2; exit 1; }
W=$(mktemp -d /tmp/chatgw-callgrind.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/pol-def" "$W/pol-none"
cp "${SCRIPTS:-$ROOT/scripts}"/*.lua "$W/pol-def/"
cp "$ROOT/tests/bench/secrets.lua" "$W/pol-def/"
printf 'return {}\n' > "$W/pol-none/policy.lua"

# one run: mode policy msgs rate -> "deliveries sent Ir"
run() {
  local mode=$1 pol=$2 msgs=$3 rate=$4 port=$((20000 + RANDOM % 20000)) g
  valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" "$B/chatgw" serve --listen 127.0.0.1:$port \
    --log-level warn --scripts-dir "$W/pol-$pol" --max-connections 100000 --max-connections-per-ip 100000 \
    --rate-msgs-per-sec 1000000 --rate-burst 1000000 --max-room-members 100000 --max-rooms-per-conn 16 \
    --accept-rate-per-ip 0 --policy-timeout-ms 60000 ${CHATGW_ARGS:-} >"$W/server.log" 2>&1 &
  local vp=$!
  for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
  if [ "$mode" = room ]; then g="--mode room --conns 100 --publishers 2"
  else g="--mode rooms --conns 100 --members 10 --publishers 1"; fi
  # shellcheck disable=SC2086
  "$GEN" $g --port $port --max-msgs "$msgs" --phases "rate=$rate:$((msgs / rate + 1))" --warmup 0 \
    --timeout 200 --drain-ms 3000 >"$W/gen.json" 2>"$W/gen.err"
  kill -TERM $vp
  wait $vp || true
  python3 - "$W/gen.json" "$W/cg.out" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
ir = next(int(l.split()[1]) for l in open(sys.argv[2]) if re.match(r'(summary|totals):', l))
print(sum(p["deliveries"] for p in d["phases"]), sum(p["sent"] for p in d["phases"]), ir)
PY
}

# CONFIGS (optional): the configurations to run, ';'-separated, e.g. "rooms def 200 1000 100"
IFS=';' read -r -a configs <<<"${CONFIGS:-rooms none 200 1000 100;rooms def 200 1000 100;room none 60 300 20;room def 60 300 20}"
for cfg in "${configs[@]}"; do
  set -- $cfg
  a=$(run "$1" "$2" "$3" "$5")
  b=$(run "$1" "$2" "$4" "$5")
  python3 - "$a" "$b" "$1" "$2" <<'PY'
import sys
a = [int(x) for x in sys.argv[1].split()]; b = [int(x) for x in sys.argv[2].split()]
dd, dm, di = b[0] - a[0], b[1] - a[1], b[2] - a[2]
print(f"RESULT {sys.argv[3]:5} {sys.argv[4]:4}: {di / dd:7.0f} Ir/delivery {di / dm:8.0f} Ir/message "
      f"({dm} msgs, {dd} deliveries, {di} Ir)")
PY
done
