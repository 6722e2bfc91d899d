/**
 * A cluster node as inspection sees it: its local state (subnet, bridge,
 * backend), its peers (from etcd when the command was given --etcd, else as
 * the agent last programmed them, STATE/cluster/peers.json), its devices,
 * and for each peer whether the kernel holds every entry the agent would
 * write for it (the same desired.ts the agent reconciles with).
 */
import * as link from '../link';
import type { Service } from '../nat/model';
import type { NetNs } from '../netns';
import { buildConfig, parseSubnet, type Peer } from '../cluster/config';
import { desiredState } from '../cluster/desired';
import { readCurrent, vxlanName, VXLAN_OVERHEAD } from '../cluster/kernel';
import { readNodeState, readPeers, type NodeState, type PeerRecord } from '../cluster/local';

export interface ClusterPeerView extends PeerRecord {
  /** How a packet reaches it from here. */
  path: 'vxlan' | 'host-gw';
  /** What the kernel lacks of this peer's entries ([] when all are there). */
  missing: string[];
}

export interface DeviceView {
  name: string;
  mtu: number;
  up: boolean;
}

export interface ClusterView {
  node: NodeState;
  /** Where the peer list came from. */
  peersFrom: 'etcd' | 'agent';
  peers: ClusterPeerView[];
  underlay?: DeviceView;
  bridge?: DeviceView;
  /** vxlan mode: the device, or undefined when it is missing. */
  vxlan?: DeviceView & { port: number; learning: boolean; vni: number };
  /** Routes of protocol tsnet that no peer explains. */
  stale: string[];
  /** MTU the vxlan device should have: underlay - 50. */
  wantVxlanMtu?: number;
  /** With --etcd: the cluster's services as stored, which the node's agent should have programmed. */
  services?: Service[];
}

const recordOf = (p: Peer): PeerRecord => ({
  name: p.name,
  subnet: `${[24, 16, 8, 0].map((s) => (p.subnet.base >>> s) & 255).join('.')}/${p.subnet.prefix}`,
  publicIp: p.publicIp,
  ...(p.vtepMac ? { vtepMac: p.vtepMac } : {}),
});

/** The cluster side of the node in `h` whose state lives in `stateDir`; undefined when it is no cluster node. */
export async function clusterView(h: NetNs, stateDir: string, leases?: Peer[]): Promise<ClusterView | undefined> {
  const node = readNodeState(stateDir);
  if (!node) return undefined;
  const records = leases ? leases.map(recordOf).filter((p) => p.subnet !== node.subnet) : (readPeers(stateDir) ?? []);
  const b = node.backend ?? { type: 'host-gw' as const };
  const config = buildConfig({
    network: node.network,
    subnetLen: parseSubnet(node.subnet).prefix,
    backend: b.type,
    ...(b.type === 'vxlan' ? { vni: b.vni ?? 1, port: b.port ?? 8472, directRouting: !!b.directRouting } : {}),
  });
  const links = await link.list(h);
  const dev = (l: link.Link | undefined): DeviceView | undefined => l && { name: l.name, mtu: l.mtu, up: l.up };
  const v: ClusterView = { node, peersFrom: leases ? 'etcd' : 'agent', peers: [], stale: [] };
  const br = links.find((l) => l.name === node.bridge);
  if (br) v.bridge = dev(br)!;
  const vx = b.type === 'vxlan' ? links.find((l) => l.name === vxlanName(b.vni ?? 1)) : undefined;
  if (vx?.vxlan) v.vxlan = { ...dev(vx)!, port: vx.vxlan.port, learning: vx.vxlan.learning, vni: vx.vxlan.vni };
  const ul = vx?.vxlan?.link !== undefined ? links.find((l) => l.index === vx.vxlan!.link) : undefined;
  if (ul) {
    v.underlay = dev(ul)!;
    v.wantVxlanMtu = ul.mtu - VXLAN_OVERHEAD;
  }
  const peers: Peer[] = records.map((r) => ({
    subnet: parseSubnet(r.subnet),
    publicIp: r.publicIp,
    backend: r.vtepMac ? 'vxlan' : 'host-gw',
    ...(r.vtepMac ? { vtepMac: r.vtepMac } : {}),
    name: r.name,
    lease: '0',
  }));
  const want = desiredState(config, { subnet: parseSubnet(node.subnet), publicIp: '' }, peers);
  const cur = await readCurrent(h, vx?.index);
  for (const r of records) {
    const route = want.routes.get(r.subnet);
    const missing: string[] = [];
    const have = cur.routes.get(r.subnet);
    if (!have) missing.push(`route ${r.subnet}`);
    if (route?.vxlan) {
      if (cur.neighs.get(route.via) !== r.vtepMac) missing.push(`neighbour ${route.via} -> ${r.vtepMac}`);
      if (cur.fdb.get(r.vtepMac!) !== r.publicIp) missing.push(`FDB ${r.vtepMac} -> ${r.publicIp}`);
    }
    v.peers.push({ ...r, path: route?.vxlan ? 'vxlan' : 'host-gw', missing });
  }
  v.stale = [...cur.routes.keys()].filter((dst) => !want.routes.has(dst));
  return v;
}
