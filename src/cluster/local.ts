/**
 * What a node keeps on its own disk (`<state-dir>/cluster/node.json`): its
 * subnet and VTEP MAC, so a restart or an etcd that lost its data gets the
 * same ones back, and what tsnet-bridge needs on a cluster node (the bridge,
 * its MTU, the cluster network), so a CNI call is served from it with or
 * without the agent, and while etcd is away.
 */
import * as path from 'node:path';
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
}

export const nodeStateFile = (stateDir: string): string => path.join(stateDir, 'cluster', 'node.json');

export function readNodeState(stateDir: string): NodeState | undefined {
  return readJson<NodeState>(nodeStateFile(stateDir));
}

export function writeNodeState(stateDir: string, s: NodeState): void {
  writeJsonAtomic(nodeStateFile(stateDir), s);
}
