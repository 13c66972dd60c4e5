#!/bin/sh
# Runs a command inside a private network namespace for the Janus voice tests: `unshare -n`,
# loopback up, and a veth pair (jveth0 <-> jveth1, both ends inside the namespace) with an
# address on jveth0. Janus never gathers ICE candidates on a loopback interface, so the tests
# set its ice_enforce_list to jveth0; the browsers reach it there. Nothing leaves the machine.
# Needs root (make test runs as root); the test itself skips with a message when it cannot run.
set -eu
if [ "${CHATGW_NETNS:-}" = 1 ]; then exec "$@"; fi
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "voice/netns.sh: needs root, unshare (util-linux) and ip (iproute2); running without a namespace" >&2
  CHATGW_NETNS_MISSING=1 exec "$@"
fi
exec unshare -n -- sh -c '
  ip link set lo up &&
  ip link add jveth0 type veth peer name jveth1 &&
  ip addr add 10.213.0.1/24 dev jveth0 &&
  ip addr add 10.213.0.2/24 dev jveth1 &&
  ip link set jveth0 up && ip link set jveth1 up &&
  CHATGW_NETNS=1 CHATGW_VOICE_ADDR=10.213.0.1 exec "$@"' netns.sh "$@"
