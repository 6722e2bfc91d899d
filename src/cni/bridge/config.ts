/** The bridge plugin's network config: the reference bridge's options, checked, plus tsnet's natBackend and stateDir. */
import * as link from '../../link';
import { parseBackend, type BackendChoice } from '../../nat/backends';
import { CniError, CNI_ERR, invalidConfig, reportInput } from '../errors';
import { validateNetworkName } from '../ipam/config';
import type { CniEnv, NetConf } from '../types';

/** The IPAM plugin run in process (any other type is executed from CNI_PATH). */
export const BUILTIN_IPAM = 'tsnet-ipam';

export interface BridgeConf {
  name: string;
  bridge: string;
  isGateway: boolean;
  isDefaultGateway: boolean;
  forceAddress: boolean;
  ipMasq: boolean;
  mtu?: number;
  hairpinMode: boolean;
  promiscMode: boolean;
  enabledad: boolean;
  /** Drop frames from the container whose source MAC is not its own (nf_tables, src/bridge/spoofcheck.ts). */
  macspoofchk: boolean;
  /** tsnet: which NAT backend ipMasq and port mappings use (default auto: netlink, no binary needed). */
  natBackend: BackendChoice;
  /** tsnet: where attachment records and NAT state live (default $TSNET_STATE_DIR, else /var/lib/tsnet). */
  stateDir?: string;
  /** tsnet, on a cluster node ("cluster": true, ./cluster.ts): the pod network, which ipMasq leaves unmasqueraded. */
  clusterNetwork?: string;
  ipamType: string;
}

function bool(conf: NetConf, key: string): boolean {
  const v = conf[key];
  if (v === undefined) return false;
  if (typeof v !== 'boolean')
    throw invalidConfig(`network ${conf.name}: "${key}" must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** The network's options; `env` supplies the state directory the caller runs with (TSNET_STATE_DIR, or the agent's) when the config names none. */
export function parseBridgeConf(conf: NetConf, env?: Pick<CniEnv, 'stateDir'>): BridgeConf {
  const name = validateNetworkName(conf.name);
  const br = conf.bridge ?? 'cni0';
  try {
    link.validateIfname(br as string);
  } catch (err) {
    reportInput(CNI_ERR.invalidConfig, `network ${name}: bridge`, err);
  }
  rejectUnsupported(conf, name);
  const c: BridgeConf = {
    name,
    bridge: br as string,
    isGateway: bool(conf, 'isGateway') || bool(conf, 'isDefaultGateway'),
    isDefaultGateway: bool(conf, 'isDefaultGateway'),
    forceAddress: bool(conf, 'forceAddress'),
    ipMasq: bool(conf, 'ipMasq'),
    hairpinMode: bool(conf, 'hairpinMode'),
    promiscMode: bool(conf, 'promiscMode'),
    enabledad: bool(conf, 'enabledad'),
    macspoofchk: bool(conf, 'macspoofchk'),
    natBackend: 'auto',
    ipamType: '',
  };
  if (conf.mtu !== undefined) {
    try {
      link.validateMtu(conf.mtu as number);
    } catch (err) {
      reportInput(CNI_ERR.invalidConfig, `network ${name}`, err);
    }
    c.mtu = conf.mtu as number;
  }
  if (conf.natBackend !== undefined) {
    c.natBackend = parseBackend(conf.natBackend, `network ${name}: natBackend`);
  }
  if (conf.stateDir !== undefined) {
    if (typeof conf.stateDir !== 'string' || !conf.stateDir.startsWith('/'))
      throw invalidConfig(`network ${name}: stateDir must be an absolute path`);
    c.stateDir = conf.stateDir;
  } else if (env?.stateDir) {
    c.stateDir = env.stateDir;
  }
  if (!conf.ipam || typeof conf.ipam.type !== 'string' || conf.ipam.type === '')
    throw invalidConfig(
      `network ${name}: "ipam" with a "type" is required (e.g. {"type": "tsnet-ipam", "subnet": "10.22.0.0/16"})`,
    );
  c.ipamType = conf.ipam.type;
  if (typeof conf.clusterNetwork === 'string') c.clusterNetwork = conf.clusterNetwork;
  return c;
}

/** The reference bridge's options tsnet-bridge does not implement: refused (error 2), never ignored. */
function rejectUnsupported(conf: NetConf, name: string): void {
  if (conf.vlan !== undefined) {
    throw new CniError(
      CNI_ERR.unsupportedField,
      `network ${name}: "vlan" is not supported by tsnet-bridge yet (needs bridge VLAN filtering, which this kernel build may lack): remove it or use the reference bridge`,
    );
  }
}
