/**
 * tsnet-bridge on a cluster node (`"cluster": true`): the node's agent holds
 * the pod subnet (its lease in etcd) and writes it, with the node bridge and
 * its MTU, to the node's local state; the network config then needs no
 * subnet of its own. The IPAM range is the lease, the gateway its first
 * address (the node bridge's) and the pods' default route, the MTU the bridge's (the tunnel's in vxlan
 * mode), and ipMasq masquerades only what leaves the cluster network: pod
 * to pod across nodes keeps its addresses. Read from disk, so the agent and
 * the standalone plugin do the same, and etcd being away changes nothing.
 */
import { readNodeState, nodeStateFile } from '../../cluster/local';
import { stateDir as defaultStateDir } from '../../state';
import { CniError, CNI_ERR, invalidConfig } from '../errors';
import type { CniEnv, NetConf } from '../types';

/** The config as the bridge plugin runs it: unchanged without "cluster", else filled in from the node's state. */
export function clusterConf(conf: NetConf, env: Pick<CniEnv, 'stateDir'>): NetConf {
  if (conf.clusterNetwork !== undefined && conf.cluster !== true)
    throw invalidConfig(`network ${String(conf.name)}: "clusterNetwork" is set by "cluster": true, not by hand`);
  if (conf.cluster === undefined || conf.cluster === false) return conf;
  if (conf.cluster !== true) throw invalidConfig(`network ${String(conf.name)}: "cluster" must be true or false`);
  const dir = typeof conf.stateDir === 'string' ? conf.stateDir : defaultStateDir(env.stateDir);
  const node = readNodeState(dir);
  if (!node)
    throw new CniError(
      CNI_ERR.tryAgainLater,
      `network ${String(conf.name)}: this node has no pod subnet yet (no ${nodeStateFile(dir)}): start tsnet agent --etcd URLS --node-name NAME --public-ip IP on it`,
    );
  if (conf.bridge !== undefined && conf.bridge !== node.bridge)
    throw invalidConfig(
      `network ${String(conf.name)}: "bridge" ${String(conf.bridge)} is not the node bridge ${node.bridge}`,
    );
  const ipam = conf.ipam ?? { type: 'tsnet-ipam' };
  if (ipam.subnet !== undefined || ipam.ranges !== undefined)
    throw invalidConfig(
      `network ${String(conf.name)}: with "cluster": true the node's lease (${node.subnet}) is the IPAM range; remove ipam.subnet/ranges`,
    );
  const [base, prefix] = node.subnet.split('/') as [string, string];
  const o = base.split('.').map(Number);
  const gateway = `${o[0]}.${o[1]}.${o[2]}.${o[3]! + 1}`;
  return {
    ...conf,
    bridge: node.bridge,
    isGateway: true,
    // Pods reach the other nodes' subnets and the world through their node.
    isDefaultGateway: conf.isDefaultGateway ?? true,
    ...(conf.mtu === undefined && node.mtu !== undefined ? { mtu: node.mtu } : {}),
    clusterNetwork: node.network,
    ipam: { ...ipam, ranges: [[{ subnet: `${base}/${prefix}`, gateway }]] },
  };
}
