/**
 * Doctor checks of a cluster node (tsnet agent --etcd): the vxlan device and
 * its port, the MTU chain (underlay -> tunnel -> bridge -> pods), peers the
 * kernel lacks entries for, routes no peer explains, and (with --etcd) the
 * health of the node's own lease and how its cluster services stand
 * against the store.
 */
import { formatHostPort } from '../../addr/cidr';
import { serviceLag } from '../../cluster/services';
import type { Check, Finding } from './check';

const on = (v: { on: string }) => v.on;

export const clusterVxlan: Check = {
  name: 'cluster-vxlan',
  run(v) {
    const c = v.options.cluster;
    if (!c || c.node.backend?.type !== 'vxlan') return [];
    const name = `tsnet.${c.node.backend.vni ?? 1}`;
    const restart = `restart the node's agent (tsnet${on(v)} agent --etcd ...): it recreates ${name}`;
    if (!c.vxlan)
      return [
        {
          where: name,
          problem: `the vxlan device ${name} is missing: no pod on another node is reachable`,
          fix: restart,
        },
      ];
    const out: Finding[] = [];
    if (!c.vxlan.up)
      out.push({
        where: name,
        problem: `${name} is down: the tunnel carries nothing`,
        fix: `tsnet${on(v)} link set ${name} --up`,
      });
    const port = c.node.backend.port ?? 8472;
    if (c.vxlan.port !== port)
      out.push({
        where: name,
        problem: `${name} uses UDP port ${c.vxlan.port}, the cluster ${port}: peers' packets are not decapsulated`,
        fix: restart,
      });
    if (c.vxlan.learning)
      out.push({
        where: name,
        problem: `${name} learns remote MACs: entries can go stale behind the programmed FDB`,
        fix: restart,
      });
    return out;
  },
};

export const clusterMtu: Check = {
  name: 'cluster-mtu',
  run(v) {
    const c = v.options.cluster;
    if (!c) return [];
    const out: Finding[] = [];
    if (c.vxlan && c.wantVxlanMtu !== undefined && c.vxlan.mtu !== c.wantVxlanMtu)
      out.push({
        where: c.vxlan.name,
        problem: `${c.vxlan.name} has MTU ${c.vxlan.mtu}, its underlay ${c.underlay?.name} ${c.underlay?.mtu}: it must be ${c.wantVxlanMtu} (50 bytes of VXLAN over IPv4), or large packets are lost`,
        fix: `tsnet${on(v)} link set ${c.vxlan.name} --mtu ${c.wantVxlanMtu}`,
      });
    const limit = c.vxlan?.mtu ?? c.underlay?.mtu;
    if (c.bridge && limit !== undefined && c.bridge.mtu > limit)
      out.push({
        where: c.bridge.name,
        problem: `the node bridge ${c.bridge.name} has MTU ${c.bridge.mtu}, above the tunnel's ${limit}: pods send frames the tunnel cannot carry and large responses hang`,
        fix: `tsnet${on(v)} link set ${c.bridge.name} --mtu ${limit}`,
      });
    return out;
  },
};

export const clusterPeers: Check = {
  name: 'cluster-peers',
  run(v) {
    const c = v.options.cluster;
    if (!c) return [];
    const fix = `the agent repairs this within a second; if it stays, the agent is not running: tsnet${on(v)} agent --etcd ...`;
    return [
      ...c.peers
        .filter((p) => p.missing.length)
        .map((p) => ({
          where: `${p.name} ${p.subnet}`,
          problem: `peer ${p.name} (${p.subnet} at ${p.publicIp}) is not programmed: missing ${p.missing.join(', ')}`,
          fix,
        })),
      ...c.stale.map((dst) => ({
        where: dst,
        problem: `route ${dst} of protocol tsnet names no peer ${c.peersFrom === 'etcd' ? 'in etcd' : 'the agent knows'}: traffic to it goes to a node that left`,
        fix,
      })),
    ];
  },
};

export const clusterServices: Check = {
  name: 'cluster-services',
  run(v) {
    const c = v.options.cluster;
    if (!c?.services) return [];
    const { missing, stale, extra } = serviceLag(c.services, v.nat.services, c.node.network);
    const vip = (s: { vip: string; port: number; proto: string }) => `${formatHostPort(s.vip, s.port)}/${s.proto}`;
    const fix = `the agent programs a change within milliseconds; if this stays, a local service is in its way (tsnet${on(v)} service ls) or the agent is not running (tsnet${on(v)} agent --etcd ...)`;
    return [
      ...missing.map((s) => ({
        where: s.name,
        problem: `cluster service ${s.name} (${vip(s)}) is in etcd but not programmed on ${c.node.node}: its VIP goes nowhere here`,
        fix,
      })),
      ...stale.map((s) => ({
        where: s.name,
        problem: `cluster service ${s.name} (${vip(s)}) on ${c.node.node} is not as in etcd: the node lags the store`,
        fix,
      })),
      ...extra.map((s) => ({
        where: s.name,
        problem: `cluster service ${s.name} (${vip(s)}) was deleted from etcd but is still programmed on ${c.node.node}`,
        fix,
      })),
    ];
  },
};

export const clusterLease: Check = {
  name: 'cluster-lease',
  run(v) {
    const l = v.options.clusterLease;
    const c = v.options.cluster;
    if (!l || !c) return [];
    if (l.error)
      return [{ where: 'etcd', problem: l.error, fix: 'check etcd; the data plane stays as it is meanwhile' }];
    if (l.ttl === undefined || l.ttl < 0)
      return [
        {
          where: c.node.subnet,
          problem: `${c.node.node} holds no lease on ${c.node.subnet} in etcd: every peer has dropped its routes`,
          fix: `start (or restart) its agent: tsnet${on(v)} agent --etcd ... --node-name ${c.node.node}`,
        },
      ];
    return [];
  },
};
