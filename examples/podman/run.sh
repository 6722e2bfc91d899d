#!/usr/bin/env bash
# A real container runtime on tsnet's CNI plugin: Debian 12's podman 4.3 (CNI
# network backend) runs busybox containers attached through tsnet-bridge +
# tsnet-ipam, with a port mapping, inside a private network + mount namespace
# (nothing touches this machine's network, /var/lib/cni or /run/netns).
#
#   apt-get install -y podman busybox-static     # once
#   npm ci && bash examples/podman/run.sh        # as root
#   bash examples/podman/run.sh --agent          # the same, with `tsnet agent` serving the shims
#
# What it shows: `podman run --network tsnet-demo -p 18080:80` gets an address
# from tsnet-ipam; the node reaches the container, another container reaches it
# over the bridge, the published port answers on the node's addresses; and
# `podman rm` (CNI DEL) leaves no reservation, record or rule behind.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

if [[ "${TSNET_PODMAN_INSIDE:-}" != 1 ]]; then
  [[ $(id -u) == 0 ]] || { echo "run as root (it creates namespaces)" >&2; exit 1; }
  for t in podman busybox unshare; do command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y podman busybox-static" >&2; exit 1; }; done
  exec env TSNET_PODMAN_INSIDE=1 unshare --net --mount --propagation private "$0" "$@"
fi

# --- inside the private namespaces -------------------------------------------
W="$(mktemp -d /tmp/tsnet-podman.XXXXXX)"
mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }
mkdir -p /var/lib/cni && mount -t tmpfs tmpfs /var/lib/cni
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup   # crun refuses the host's hybrid v1 hierarchy
ip link set lo up
AGENT_PID=
cleanup() {
  podman_ rm -af -t 0 >/dev/null 2>&1 || true
  if [[ -n $AGENT_PID ]]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT

# --agent: the same run with `tsnet agent` serving the shims (socket in a 0700 directory of its own).
mkdir -m 700 "$W/run"
node "$ROOT/dist/src/cli/main.js" --state-dir "$W/state" cni install --bin-dir "$W/bin" --socket "$W/run/agent.sock"
if [[ "${1:-}" == --agent ]]; then
  node "$ROOT/dist/src/cli/main.js" --state-dir "$W/state" agent --socket "$W/run/agent.sock" --metrics '' >"$W/agent.out" 2>"$W/agent.log" &
  AGENT_PID=$!
  for _ in $(seq 100); do grep -q '^ready' "$W/agent.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready' "$W/agent.out" || { cat "$W/agent.log" >&2; exit 1; }
  echo "== tsnet agent serving $W/run/agent.sock (pid $AGENT_PID)"
fi
mkdir -p "$W/net.d"
cat > "$W/net.d/tsnet-demo.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "tsnet-demo",
  "plugins": [{
    "type": "tsnet-bridge",
    "bridge": "tsnet0",
    "isGateway": true,
    "isDefaultGateway": true,
    "ipMasq": true,
    "hairpinMode": true,
    "stateDir": "$W/state",
    "capabilities": { "portMappings": true },
    "ipam": { "type": "tsnet-ipam", "ranges": [[{ "subnet": "10.89.0.0/24" }]], "dataDir": "$W/ipam" }
  }]
}
JSON
cat > "$W/containers.conf" <<CONF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$W/bin", "/usr/lib/cni"]
network_config_dir = "$W/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$W/containers.conf"
podman_() { podman --root "$W/root" --runroot "$W/runroot" --storage-driver vfs "$@"; }

# An image without a registry: busybox-static with its applets, /tmp, /etc, a page to serve.
R="$W/rootfs"
mkdir -p "$R/bin" "$R/tmp" "$R/etc" "$R/www"
chmod 1777 "$R/tmp"
cp "$(command -v busybox)" "$R/bin/busybox"
for a in $(busybox --list); do [[ -e "$R/bin/$a" ]] || ln -s busybox "$R/bin/$a"; done
echo "hello from a podman container on tsnet" > "$R/www/index.html"
tar -C "$R" -cf "$W/rootfs.tar" .
podman_ import -q "$W/rootfs.tar" localhost/tsnet-bb:1 >/dev/null

run_opts=(--network tsnet-demo --cgroups disabled --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
echo "== podman run -d --network tsnet-demo -p 18080:80 (httpd)"
podman_ run -d --name web "${run_opts[@]}" -p 18080:80 localhost/tsnet-bb:1 httpd -f -p 80 -h /www >/dev/null
IP=$(podman_ inspect web --format '{{(index .NetworkSettings.Networks "tsnet-demo").IPAddress}}')
echo "   container address (from tsnet-ipam): $IP"
[[ $IP == 10.89.0.* ]]
[[ -f "$W/ipam/tsnet-demo/$IP" ]] && echo "   reserved: $W/ipam/tsnet-demo/$IP ($(tr '\r\n' '  ' < "$W/ipam/tsnet-demo/$IP"))"

fetch() { timeout 5 busybox wget -q -O - "$1"; }   # busybox wget -T crashes in this build: bounded from outside
sleep 0.5
echo "== the node -> container $IP:80";          fetch "http://$IP/"
echo "== another container -> $IP:80 over the bridge"
podman_ run --rm "${run_opts[@]}" localhost/tsnet-bb:1 wget -q -O - "http://$IP/"
echo "== published port: the node's gateway address 10.89.0.1:18080"; fetch "http://10.89.0.1:18080/"
echo "== published port: 127.0.0.1:18080";       fetch "http://127.0.0.1:18080/"
# tsnet's NAT rules, whichever backend wrote them (netlink and nft: table ip tsnet; iptables: the nat table).
nat_rules() { { iptables-save -t nat 2>/dev/null; nft list table ip tsnet 2>/dev/null; } | grep -c "$IP" || true; }
echo "   NAT rules naming the container: $(nat_rules)"
[[ $(nat_rules) -gt 0 ]]

echo "== six containers started at once (podman run -d ... &), each reached from the node"
pids=()
for i in 1 2 3 4 5 6; do
  podman_ run -d --name "par$i" "${run_opts[@]}" localhost/tsnet-bb:1 httpd -f -p 80 -h /www >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for i in 1 2 3 4 5 6; do
  PIP=$(podman_ inspect "par$i" --format '{{(index .NetworkSettings.Networks "tsnet-demo").IPAddress}}')
  ok=
  for _ in $(seq 10); do fetch "http://$PIP/" >/dev/null 2>&1 && { ok=1; break; }; sleep 0.2; done
  [[ -n $ok ]] || { echo "par$i ($PIP) unreachable from the node" >&2; exit 1; }
  echo "   par$i $PIP: reached"
done
pids=()
for i in 1 2 3 4 5 6; do podman_ rm -f -t 0 "par$i" >/dev/null & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done

echo "== podman rm -f web (CNI DEL)"
podman_ rm -f -t 0 web >/dev/null
left=$(ls "$W/ipam/tsnet-demo" | grep -v -e '^lock$' -e '^last_reserved_ip' || true)
rules=$(nat_rules)
records=$(ls "$W/state/cni/tsnet-demo" 2>/dev/null | wc -l)
echo "   reservations left: ${left:-none}; NAT rules naming $IP: $rules; attachment records: $records"
[[ -z $left && $rules == 0 && $records == 0 ]]
if [[ -n $AGENT_PID ]]; then
  adds=$(grep -c 'cni: tsnet-bridge ADD tsnet-demo .*: ok' "$W/agent.log" || true)
  dels=$(grep -c 'cni: tsnet-bridge DEL tsnet-demo .*: ok' "$W/agent.log" || true)
  echo "   served by the agent: ADD $adds, DEL $dels"
  [[ $adds -ge 8 && $dels -ge 8 ]]
fi
echo "OK: podman ran a container on tsnet-bridge + tsnet-ipam and cleaned up after it"
