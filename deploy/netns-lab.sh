#!/usr/bin/env bash
# Build by hand the lab that `faultlab lab up` makes: N hosts as network
# namespaces, each with eth0 on a management bridge (agent gRPC) and eth1 on
# a test bridge (traffic under test), addresses in 198.18.0.0/15 only, and an
# agent in each. Needs root, iproute2 and nftables.
#
#   deploy/netns-lab.sh up [HOSTS] [AGENT]   # default 3 hosts, faultlab-agent on PATH
#   deploy/netns-lab.sh down
#
# Then: faultlab run --suite seed --inventory /run/faultlab-hand-lab/inventory.toml
set -euo pipefail

PREFIX=flh                  # namespaces flhh0.., bridges flhmb/flhtb
MGMT=198.18.200             # management /24
TEST=198.18.201             # test /24
STATE=/run/faultlab-hand-lab

down() {
  if [ -f "$STATE/agents.pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$STATE/agents.pids"
    sleep 1
  fi
  for ns in $(ip netns list | awk '{print $1}' | grep "^${PREFIX}h" || true); do
    # Orphaned sockets would keep the namespace (and its links) alive.
    ip netns exec "$ns" ss -K -t state all >/dev/null 2>&1 || true
    ip netns del "$ns"
  done
  ip link del "${PREFIX}mb" 2>/dev/null || true
  ip link del "${PREFIX}tb" 2>/dev/null || true
  rm -rf "$STATE"
}

up() {
  local hosts=${1:-3} agent=${2:-faultlab-agent}
  down
  mkdir -p "$STATE"
  for bridge in mb tb; do ip link add "${PREFIX}${bridge}" type bridge; done
  ip addr add "$MGMT.1/24" dev "${PREFIX}mb"
  ip addr add "$TEST.1/24" dev "${PREFIX}tb"
  ip link set "${PREFIX}mb" up
  ip link set "${PREFIX}tb" up
  echo "# Written by deploy/netns-lab.sh" > "$STATE/inventory.toml"
  for i in $(seq 0 $((hosts - 1))); do
    local ns="${PREFIX}h$i" m="$MGMT.$((10 + i))" t="$TEST.$((10 + i))"
    ip netns add "$ns"
    ip link add "${PREFIX}m$i" type veth peer name eth0 netns "$ns"
    ip link add "${PREFIX}t$i" type veth peer name eth1 netns "$ns"
    ip link set "${PREFIX}m$i" master "${PREFIX}mb" up
    ip link set "${PREFIX}t$i" master "${PREFIX}tb" up
    ip -n "$ns" addr add "$m/24" dev eth0
    ip -n "$ns" addr add "$t/24" dev eth1
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set eth1 up
    ip -n "$ns" link set lo up
    setsid ip netns exec "$ns" "$agent" --listen "$m:7420" --insecure --allow isolate,link \
      > /dev/null 2> "$STATE/host-$((i + 1)).log" < /dev/null &
    echo $! >> "$STATE/agents.pids"
    printf '\n[[agent]]\nname = "host-%d"\naddress = "%s:7420"\ntest_ip = "%s"\n' \
      $((i + 1)) "$m" "$t" >> "$STATE/inventory.toml"
  done
  echo "lab up: $hosts hosts; inventory $STATE/inventory.toml"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down; echo "lab down" ;;
  *) echo "usage: $0 up [HOSTS] [AGENT] | down" >&2; exit 2 ;;
esac
