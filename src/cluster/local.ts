/**
 * What a node keeps on its own disk (`<state-dir>/cluster/node.json`): its
 * subnet and VTEP MAC, so a restart or an etcd that lost its data gets the
 * same ones back, and what tsnet-bridge needs on a cluster node (the bridge,
 * its MTU, the cluster network), so a CNI call is served from it with or
 * without the agent, and while etcd is away.
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { sameSubnet, subnetText, type ClusterConfig, type Peer, type Subnet } from './config';
import type { NodeDevices } from './kernel';
import { readJson, writeJsonAtomic } from '../state';

export interface NodeState {
  node: string;
  /** "10.244.3.0/24" */
  subnet: string;
  vtepMac: string;
  /** The cluster's Network: pod traffic to it is not masqueraded. */
  network: string;
  bridge: string;
  /** The node bridge's MTU (the tunnel's, in vxlan mode): pods get it. */
  mtu?: number;
  /** The etcd key prefix the agent uses (doctor --etcd reads the same keys). */
  prefix?: string;
  /** The cluster's backend, as its config says (doctor, trace and topology read it). */
  backend?: { type: 'host-gw' | 'vxlan'; vni?: number; port?: number; directRouting?: boolean };
}

/** A peer as the agent last programmed it (`STATE/cluster/peers.json`): inspection without etcd. */
export interface PeerRecord {
  name: string;
  subnet: string;
  publicIp: string;
  vtepMac?: string;
}

export const nodeStateFile = (stateDir: string): string => path.join(stateDir, 'cluster', 'node.json');

export function readNodeState(stateDir: string): NodeState | undefined {
  return readJson<NodeState>(nodeStateFile(stateDir));
}

export function writeNodeState(stateDir: string, s: NodeState): void {
  writeJsonAtomic(nodeStateFile(stateDir), s);
}

export const peersFile = (stateDir: string): string => path.join(stateDir, 'cluster', 'peers.json');

export function readPeers(stateDir: string): PeerRecord[] | undefined {
  return readJson<PeerRecord[]>(peersFile(stateDir));
}

export function writePeers(stateDir: string, peers: PeerRecord[]): void {
  writeJsonAtomic(peersFile(stateDir), peers);
}

/** A locally administered unicast MAC, made once per node and kept. */
export const newMac = () => {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
};

/** The node's local state as the agent writes it. */
export function nodeStateFor(o: {
  node: string;
  subnet: Subnet;
  vtepMac: string;
  config: ClusterConfig;
  bridge: string;
  prefix: string;
  devices?: NodeDevices;
}): NodeState {
  const b = o.config.Backend;
  return {
    node: o.node,
    subnet: subnetText(o.subnet),
    vtepMac: o.vtepMac,
    network: o.config.Network,
    bridge: o.bridge,
    prefix: o.prefix,
    ...(o.devices ? { mtu: o.devices.vxlan?.mtu ?? o.devices.underlay.mtu } : {}),
    backend: {
      type: b.Type,
      ...(b.Type === 'vxlan' ? { vni: b.VNI ?? 1, port: b.Port ?? 8472, directRouting: !!b.DirectRouting } : {}),
    },
  };
}

/** The peers (all but the node itself) as peers.json holds them. */
export function peerRecords(peers: Iterable<Peer>, own: Subnet): PeerRecord[] {
  return [...peers]
    .filter((p) => !sameSubnet(p.subnet, own))
    .map((p) => ({
      name: p.name,
      subnet: subnetText(p.subnet),
      publicIp: p.publicIp,
      ...(p.vtepMac ? { vtepMac: p.vtepMac } : {}),
    }));
}
