#!/bin/bash
# tests/bench/pack.sh: chatgw and chatgw-bench with every shared library they load, the C
# library and its loader included, in one folder that runs on another x86-64 Linux machine
# without installing anything (scale.sh starts them through the packed loader).
#
#   tests/bench/pack.sh [BUILD_DIR [OUT_DIR]]     (defaults: build-bench, build-pack)
#
# The folder is ignored by git (build-*); a machine reached through the device tool gets it as
# a carried path: `tests/bench/scale.sh build-pack` there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$(cd "${1:-$ROOT/build-bench}" && pwd)
OUT=${2:-$ROOT/build-pack}
for f in "$B/chatgw" "$B/tests/bench/chatgw-bench"; do
  [ -x "$f" ] || { echo "pack.sh: $f missing (make bench builds it)" >&2; exit 2; }
done
rm -rf "$OUT"
mkdir -p "$OUT/lib"
cp "$B/chatgw" "$B/tests/bench/chatgw-bench" "$OUT/"
# ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader
ldd "$B/chatgw" "$B/tests/bench/chatgw-bench" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' |
  sort -u | while read -r lib; do cp -L "$lib" "$OUT/lib/"; done
[ -e "$OUT/lib/ld-linux-x86-64.so.2" ] || { echo "pack.sh: no x86-64 loader found by ldd" >&2; exit 1; }
"$OUT/lib/ld-linux-x86-64.so.2" --library-path "$OUT/lib" "$OUT/chatgw" --version >/dev/null
echo "pack.sh: $(du -sh "$OUT" | cut -f1) in $OUT"
