#!/bin/bash
# tests/bench/scale.sh: how chatgw's throughput and latency scale with workers (issue 7,
# "Multi-core").
#
#   tests/bench/scale.sh [DIR]      DIR holds chatgw and chatgw-bench: a build directory
#                                   (default build-bench) or a folder made by pack.sh
#   WORKERS="1 2 4"  GENS=N  ROUNDS=3  SECS=3  CONNS=10000      (environment, defaults shown;
#                                   GENS defaults to half the CPUs, at least 1)
#
# One generator process is one libuv loop, and on a machine with many cores it, not the
# server, is the limit. So GENS generators run at once against one chatgw, started together
# (--start-at) and measuring the same windows, in two configurations:
#   rooms: 1000 rooms of 10 over CONNS connections, one publisher per room, flat out; each
#          generator has its own rooms (--room-prefix g<k>-r)
#   room:  one room of 1000 members split over the generators, its 10 publishers in the first
#          (the others receive only, --publishers 0, and recognise the shared --marker): flat
#          out, then half of that peak (scenario 2 of make bench); p50/p99 from the merged
#          histograms of all generators
# 64-byte messages, the default policy (scripts/ plus tests/bench/secrets.lua). The worker
# counts alternate within each round (1 2 4, 1 2 4, ...); each figure is the median over ROUNDS.
# Deliveries/s is the sum over the generators; server CPU (cores) is the median of what each
# generator read over its window. Loopback only. On a 2-core machine the generators and the
# server share the cores and the figures say little; the point is a machine with cores to
# spare (pack.sh carries the binaries there).
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
PER=$(( CONNS / GENS / 10 * 10 ))      # rooms: connections per generator
MEMB=$(( 1000 / GENS ))                 # room: members per generator
[ "$PER" -ge 10 ] && [ "$MEMB" -ge 10 ] || { echo "scale.sh: too many generators (GENS=$GENS)" >&2; exit 2; }

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

mono_ns() { python3 -c 'import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC))'; }

# one run: config workers round -> $W/<config>-<workers>-<round>-<k>.json for each generator k
run() {
  local cfg=$1 workers=$2 round=$3 port=$((20000 + RANDOM % 20000)) k
  "${RUN[@]}" "$GW" serve --listen 127.0.0.1:$port --log-level warn --scripts-dir "$W/pol" \
    --workers "$workers" --max-connections "$CONNS" --max-connections-per-ip "$CONNS" \
    --rate-msgs-per-sec 1000000 --rate-burst 1000000 --max-room-members 100000 --max-rooms-per-conn 16 \
    --accept-rate-per-ip 0 >"$W/server.log" 2>&1 &
  SRV=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  # all generators start measuring at once, after time enough to connect
  local start=$(( $(mono_ns) + 3000000000 + CONNS * 200000 / GENS )) gens=() args
  for ((k = 0; k < GENS; k++)); do
    if [ "$cfg" = rooms ]; then
      args=(--mode rooms --conns "$PER" --members 10 --publishers 1 --room-prefix "g$k-r" --phases "flat:$SECS")
    else
      args=(--mode room --conns "$MEMB" --members "$MEMB" --publishers $(( k ? 0 : 10 )) --room-prefix "big"
            --phases "flat:$SECS,frac=0.5:$SECS")
    fi
    "${RUN[@]}" "$GEN" "${args[@]}" --window 8 --src-addrs 8 --warmup 1 --port "$port" --pid "$SRV" \
      --path "/ws?room={room}&name=g${k}b{conn}" --marker $((round * 100 + workers)) --start-at "$start" \
      --hist --label "scale/$cfg/w$workers/g$k" >"$W/$cfg-$workers-$round-$k.json" 2>"$W/gen-$k.err" &
    gens+=($!)
  done
  for g in "${gens[@]}"; do wait "$g" || true; done
  kill -TERM "$SRV"
  wait "$SRV" || true
  SRV=
}

echo "scale.sh: $CPUS CPUs, workers $WORKERS, $GENS generator(s), $ROUNDS round(s) of $SECS s per phase"
for ((r = 1; r <= ROUNDS; r++)); do
  for w in $WORKERS; do run rooms "$w" "$r"; run room "$w" "$r"; done
done

python3 - "$W" "$ROUNDS" "$GENS" $WORKERS <<'PY'
import json, statistics, sys
d, rounds, gens, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def bucket_mid(i, sub_bits=4):          # hist.h: 16 linear sub-buckets per power of two
    sub = 1 << sub_bits
    if i < sub:
        return i + 0.5
    e, s = i // sub + sub_bits - 1, i % sub
    width = (1 << e) / sub
    return (1 << e) + s * width + width / 2

def quantile(hist, q):                  # hist: {bucket: count}, as hist_quantile does
    n = sum(hist.values())
    if not n:
        return 0.0
    rank, seen = min(int(q * n), n - 1), 0
    for i in sorted(hist):
        seen += hist[i]
        if seen > rank:
            return bucket_mid(i)
    return 0.0

def phase(cfg, w, r, i):
    """The generators' phase i merged: deliveries/s, server CPU, merged histogram, lost; None if a run failed."""
    ph = []
    for k in range(gens):
        try:
            x = json.load(open(f"{d}/{cfg}-{w}-{r}-{k}.json"))
            ph.append(x["phases"][i])
        except (OSError, ValueError, KeyError, IndexError):
            return None
    hist = {}
    for p in ph:
        for b, c in p.get("hist", []):
            hist[b] = hist.get(b, 0) + c
    return {"dps": sum(p["deliveries_per_s"] for p in ph),
            "cpu": statistics.median(p.get("srv_cpu", 0) for p in ph),
            "p50": quantile(hist, 0.5) / 1e6, "p99": quantile(hist, 0.99) / 1e6,
            "lost": sum(p["lost"] for p in ph)}

def table(title, cfg, i):
    print(f"\n{title}\n")
    print("| workers | deliveries/s | vs first | server CPU (cores) | deliveries per CPU-s | p50 ms | p99 ms | lost | failed rounds |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for w in workers:
        runs = [phase(cfg, w, r, i) for r in range(1, rounds + 1)]
        ok = [x for x in runs if x]
        bad = len(runs) - len(ok)
        if not ok:
            print(f"| {w} | n/a | | | | | | | {bad} |")
            continue
        med = {k: statistics.median(x[k] for x in ok) for k in ("dps", "cpu", "p50", "p99")}
        base = base or med["dps"]
        per = med["dps"] / med["cpu"] / 1e3 if med["cpu"] else 0
        print(f"| {w} | {med['dps'] / 1e3:.0f}k | {med['dps'] / base:.2f}× | {med['cpu']:.2f} | {per:.0f}k "
              f"| {med['p50']:.1f} | {med['p99']:.1f} | {sum(x['lost'] for x in ok)} | {bad} |")

table("1000 rooms of 10, flat out", "rooms", 0)
table("one room of 1000 members, 10 publishers, flat out", "room", 0)
table("the same room at half of that peak (its own, per worker count)", "room", 1)
PY
