#!/bin/sh
# Runs a command inside a private network namespace that has only loopback: `unshare -n`, then
# `ip link set lo up`. The browser tests need root for it (they run as root under make test).
# Nothing in the namespace can reach another host, so WebRTC gathers only 127.0.0.1 candidates.
set -eu
if [ "${CHATGW_NETNS:-}" = 1 ]; then exec "$@"; fi
if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "netns.sh: needs unshare (util-linux) and ip (iproute2)" >&2
  exit 1
fi
exec unshare -n -- sh -c 'ip link set lo up && CHATGW_NETNS=1 exec "$@"' netns.sh "$@"
