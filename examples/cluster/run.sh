#!/usr/bin/env bash
# A pod network across three "machines", inside a private network + mount
# namespace (nothing touches this machine's network or its etcd):
#
#   apt-get install -y etcd-server etcd-client     # once
#   npm ci && bash examples/cluster/run.sh          # as root: vxlan
#   bash examples/cluster/run.sh host-gw            # the same over host-gw
#
# What it does, as an operator would on three real nodes:
#   - a 3-member etcd on loopback ports (the cluster's store);
#   - `tsnet cluster init` writes flannel's config under /tsnet/network;
#   - three nodes (namespaces on an underlay bridge), each with its own
#     `tsnet agent --etcd ... --node-name nI --public-ip 192.168.50.1I`; the
#     agent claims the node's subnet, makes its bridge tsnet0 (and the vxlan
#     device tsnet.1) and routes every peer;
#   - a pod on each node through tsnet-bridge with "cluster": true (the lease
#     is its IPAM range), then TCP from every pod to every other;
#   - `tsnet cluster ls`, and `tsnet cluster leave n3 --teardown`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BACKEND="${1:-vxlan}"

if [[ "${TSNET_CLUSTER_INSIDE:-}" != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "run as root (it creates namespaces)" >&2; exit 1; }
  for t in etcd etcdctl unshare ip; do command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y etcd-server etcd-client iproute2" >&2; exit 1; }; done
  exec env TSNET_CLUSTER_INSIDE=1 unshare --net --mount --propagation private "$0" "$@"
fi

# --- inside the private namespaces -------------------------------------------
W="$(mktemp -d /tmp/tsnet-cluster.XXXXXX)"
echo "== working in $W"
mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }
mount -t sysfs sysfs /sys
ip link set lo up
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
tsnet() { node "$ROOT/dist/src/cli/main.js" "$@"; }

echo "== etcd: 3 members on 127.0.0.1:2379-2381"
CL=m1=http://127.0.0.1:2390,m2=http://127.0.0.1:2391,m3=http://127.0.0.1:2392
for i in 1 2 3; do
  etcd --name "m$i" --data-dir "$W/etcd/m$i" --listen-client-urls "http://127.0.0.1:$((2378 + i))" \
    --advertise-client-urls "http://127.0.0.1:$((2378 + i))" --listen-peer-urls "http://127.0.0.1:$((2389 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((2389 + i))" --initial-cluster "$CL" \
    --initial-cluster-token example --initial-cluster-state new --log-level error >"$W/etcd-m$i.log" 2>&1 &
  PIDS+=($!)
done
export TSNET_ETCD=http://127.0.0.1:2379,http://127.0.0.1:2380,http://127.0.0.1:2381
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints "$TSNET_ETCD" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

echo "== tsnet cluster init --network 10.244.0.0/16 --backend $BACKEND"
tsnet cluster init --network 10.244.0.0/16 --backend "$BACKEND"

echo "== three nodes on an underlay bridge, an agent each"
ip netns add underlay
ip -n underlay link add ul0 type bridge && ip -n underlay link set ul0 up
for i in 1 2 3; do
  ip netns add "n$i"
  ip -n underlay link add "ul-n$i" master ul0 type veth peer name eth0 netns "n$i"
  ip -n underlay link set "ul-n$i" up
  ip -n "n$i" link set lo up && ip -n "n$i" link set eth0 up
  ip -n "n$i" addr add "192.168.50.1$i/24" dev eth0
  # The agent runs here and manages its node from outside (-n): the node's namespace cannot reach this loopback.
  # node itself in the background (not the tsnet function, whose $! would be a subshell): cleanup kills this pid.
  node "$ROOT/dist/src/cli/main.js" --state-dir "$W/state-n$i" -n "n$i" agent --socket "$W/run-n$i/agent.sock" --metrics '' \
    --node-name "n$i" --public-ip "192.168.50.1$i" >"$W/agent-n$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 200); do
  n=0; for i in 1 2 3; do [[ $(ip -n "n$i" route show proto 74 | wc -l) == 2 ]] && n=$((n + 1)); done
  [[ $n == 3 ]] && break; sleep 0.05
done
tsnet cluster ls
echo "== n1's peer routes (protocol 74 is tsnet's)"
ip -n n1 route show proto 74
if [[ $BACKEND == vxlan ]]; then
  ip -n n1 neigh show dev tsnet.1 nud permanent
  bridge -n n1 fdb show dev tsnet.1 | grep dst
fi

echo "== a pod on each node through tsnet-bridge with \"cluster\": true"
tsnet cni install --bin-dir "$W/bin" --socket "$W/none.sock" >/dev/null
for i in 1 2 3; do
  ip netns add "pod$i"
  out=$(ip netns exec "n$i" env CNI_COMMAND=ADD CNI_CONTAINERID="pod$i" CNI_NETNS="/run/netns/pod$i" CNI_IFNAME=eth0 \
    CNI_PATH="$W/bin" TSNET_STATE_DIR="$W/state-n$i" "$W/bin/tsnet-bridge" <<JSON
{"cniVersion": "1.0.0", "name": "podnet", "type": "tsnet-bridge", "cluster": true, "ipMasq": true, "ipam": {"type": "tsnet-ipam"}}
JSON
  )
  ip=$(echo "$out" | sed -n 's/.*"address": *"\([0-9.]*\)\/.*/\1/p' | head -1)
  echo "pod$i on n$i: $ip"
  eval "POD$i=$ip"
  ip netns exec "pod$i" node -e "require('net').createServer((c) => c.end('pod$i\n')).listen(8080)" &
  PIDS+=($!)
done
sleep 0.3
for i in 1 2 3; do
  for j in 1 2 3; do
    [[ $i == "$j" ]] && continue
    eval "dst=\$POD$j"
    got=$(ip netns exec "pod$i" node -e "const c = require('net').connect(8080, '$dst'); c.setTimeout(2000, () => process.exit(1)); c.on('data', (d) => process.stdout.write(d));")
    echo "pod$i -> $dst: $got"
  done
done

echo "== tsnet cluster leave n3 --teardown"
tsnet -n n3 cluster leave n3 --teardown
sleep 1
tsnet cluster ls
ip -n n1 route show proto 74
echo ok
