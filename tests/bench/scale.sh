#!/bin/bash
# tests/bench/scale.sh: how chatgw's throughput scales with workers (issue 7, "Multi-core").
#
#   tests/bench/scale.sh [DIR]      DIR holds chatgw and chatgw-bench: a build directory
#                                   (default build-bench) or a folder made by pack.sh
#   WORKERS="1 2 4"  GENS=N  ROUNDS=3  SECS=3  CONNS=10000      (environment, defaults shown;
#                                   GENS defaults to half the CPUs, at least 1)
#
# One generator process is one libuv loop, and on a machine with many cores it, not the
# server, is the limit. So GENS generators run at once against one chatgw, each with its own
# rooms (names prefixed g<k>-): 1000 rooms of 10 over CONNS connections in all, one publisher
# per room, flat out, 64-byte messages, the default policy (scripts/ plus tests/bench/secrets.lua).
# The worker counts alternate within each round (1 2 4, 1 2 4, ...) and each figure is the
# median over ROUNDS. Deliveries/s is the sum over the generators, whose measurement windows
# overlap but are not cut to the same instant; server CPU (cores) is read by each generator
# over its own window, and the median of those is shown. Loopback only. On a 2-core machine
# the generators and the server share the cores and the figures say little; the point is a
# machine with cores to spare (pack.sh carries the binaries there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$(cd "${1:-$ROOT/build-bench}" && pwd)
GW=$B/chatgw GEN=$B/tests/bench/chatgw-bench
[ -x "$GEN" ] || GEN=$B/chatgw-bench
[ -x "$GW" ] && [ -x "$GEN" ] || { echo "scale.sh: no chatgw and chatgw-bench in $B (build, or pack.sh)" >&2; exit 2; }
RUN=()   # a packed folder brings its own loader and libraries (pack.sh)
[ -x "$B/lib/ld-linux-x86-64.so.2" ] && RUN=("$B/lib/ld-linux-x86-64.so.2" --library-path "$B/lib")
CPUS=$(nproc)
WORKERS=${WORKERS:-1 2 4}
GENS=${GENS:-$(( CPUS / 2 > 0 ? CPUS / 2 : 1 ))}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-3}
CONNS=${CONNS:-10000}
PER=$(( CONNS / GENS / 10 * 10 ))
[ "$PER" -ge 10 ] || { echo "scale.sh: CONNS=$CONNS is too few for GENS=$GENS" >&2; exit 2; }

# one descriptor per connection for the generators, and some to spare (chatgw raises its own
# limit towards max_connections, but only as far as the hard limit this shell may raise)
need=$(( CONNS + 1024 ))
ulimit -Sn "$need" 2>/dev/null || ulimit -n "$need" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"
[ "$(ulimit -Sn)" = unlimited ] || [ "$(ulimit -Sn)" -ge "$need" ] ||
  echo "scale.sh: ulimit -n is $(ulimit -Sn), under the $need that $CONNS connections need" >&2

W=$(mktemp -d /tmp/chatgw-scale.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/pol"
cp "$ROOT"/scripts/*.lua "$ROOT/tests/bench/secrets.lua" "$W/pol/"

# one run: workers round -> $W/r-<workers>-<round>-<k>.json for each generator k
run() {
  local workers=$1 round=$2 port=$((20000 + RANDOM % 20000)) k
  "${RUN[@]}" "$GW" serve --listen 127.0.0.1:$port --log-level warn --scripts-dir "$W/pol" \
    --workers "$workers" --max-connections 1000000 --max-connections-per-ip 1000000 \
    --rate-msgs-per-sec 1000000 --rate-burst 1000000 --max-room-members 100000 --max-rooms-per-conn 16 \
    --accept-rate-per-ip 0 >"$W/server.log" 2>&1 &
  SRV=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  local gens=()
  for ((k = 0; k < GENS; k++)); do
    "${RUN[@]}" "$GEN" --mode rooms --conns "$PER" --members 10 --publishers 1 --window 8 --src-addrs 8 \
      --phases "flat:$SECS" --warmup 1 --port "$port" --pid "$SRV" --label "scale/w$workers/g$k" \
      --path "/ws?room=g$k-{room}&name=g${k}b{conn}" \
      --msg "{\"type\":\"msg\",\"room\":\"g$k-{room}\",\"text\":\"{text}\",\"cid\":{cid}}" \
      >"$W/r-$workers-$round-$k.json" 2>"$W/gen-$k.err" &
    gens+=($!)
  done
  for g in "${gens[@]}"; do wait "$g" || true; done
  kill -TERM "$SRV"
  wait "$SRV" || true
  SRV=
}

echo "scale.sh: $CPUS CPUs, workers $WORKERS, $GENS generator(s) × $PER connections, $ROUNDS round(s) of $SECS s"
for ((r = 1; r <= ROUNDS; r++)); do
  for w in $WORKERS; do run "$w" "$r"; done
done

python3 - "$W" "$ROUNDS" "$GENS" $WORKERS <<'PY'
import json, statistics, sys
d, rounds, gens, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def load(w, r, k):
    try:
        return json.load(open(f"{d}/r-{w}-{r}-{k}.json"))
    except (OSError, ValueError):
        return None
rows, base = [], None
for w in workers:
    dps, cpu, p99, lost, bad = [], [], [], 0, 0
    for r in range(1, rounds + 1):
        runs = [load(w, r, k) for k in range(gens)]
        if any(x is None or x.get("error") or not x.get("phases") for x in runs):
            bad += 1
            continue
        ph = [x["phases"][0] for x in runs]
        dps.append(sum(p["deliveries_per_s"] for p in ph))
        cpu.append(statistics.median(p.get("srv_cpu", 0) for p in ph))
        p99.append(max(p["lat_us"]["p99"] for p in ph))
        lost += sum(p["lost"] for p in ph)
    if not dps:
        rows.append((w, None, None, None, lost, bad))
        continue
    m = statistics.median(dps)
    base = base or m
    rows.append((w, m, statistics.median(cpu), statistics.median(p99), lost, bad))
print("| workers | deliveries/s | vs first | server CPU (cores) | deliveries per CPU-s | p99 (ms, worst generator) | lost | failed rounds |")
print("|---|---|---|---|---|---|---|---|")
for w, m, c, p, lost, bad in rows:
    if m is None:
        print(f"| {w} | n/a | | | | | {lost} | {bad} |")
    else:
        print(f"| {w} | {m / 1e3:.0f}k | {m / base:.2f}× | {c:.2f} | {m / c / 1e3 if c else 0:.0f}k | {p / 1e3:.1f} | {lost} | {bad} |")
PY
