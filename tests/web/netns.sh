#!/bin/sh
# Runs a command inside a private network namespace that has only loopback: `unshare -n`, then
# `ip link set lo up`. As root (make test) that is all; as another user it adds a user
# namespace (`unshare -r`) where the kernel allows one. Nothing in the namespace can reach
# another host, so the browser's WebRTC gathers only 127.0.0.1 candidates.
set -eu
if [ "${CHATGW_NETNS:-}" = 1 ]; then exec "$@"; fi
if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "netns.sh: needs unshare (util-linux) and ip (iproute2)" >&2
  exit 1
fi
user=""
[ "$(id -u)" = 0 ] || user="-r"
exec unshare $user -n -- sh -c 'ip link set lo up && CHATGW_NETNS=1 exec "$@"' netns.sh "$@"
