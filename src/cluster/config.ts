/**
 * The cluster's configuration and leases as etcd holds them, in flannel's
 * schema so its etcdctl recipes carry over: `<prefix>/config` is
 * {"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend": {"Type",
 * "VNI", "Port", "DirectRouting"}}, and each node's lease is
 * `<prefix>/subnets/10.5.52.0-24` = {"PublicIP", "BackendType",
 * "BackendData": {"VNI", "VtepMAC"}, "NodeName"}. Pure: parsing, checking
 * and subnet arithmetic (IPv4, as flannel's Network).
 */
import { invalid } from '../errors';
import { parseCidr, parseIp } from '../addr/cidr';

export const DEFAULT_PREFIX = '/tsnet/network';
export const DEFAULT_VXLAN_PORT = 8472;
export const BACKENDS = ['host-gw', 'vxlan'] as const;
export type BackendType = (typeof BACKENDS)[number];

export interface ClusterConfig {
  Network: string;
  SubnetLen: number;
  SubnetMin: string;
  SubnetMax: string;
  Backend: { Type: BackendType; VNI?: number; Port?: number; DirectRouting?: boolean };
}

/** What a node writes under its subnet's key. */
export interface LeaseValue {
  PublicIP: string;
  BackendType: BackendType;
  BackendData: { VNI?: number; VtepMAC?: string };
  NodeName: string;
}

/** A node as read from the store: its subnet and its lease's value. */
export interface Peer {
  subnet: Subnet;
  publicIp: string;
  backend: BackendType;
  vtepMac?: string;
  vni?: number;
  name: string;
  /** etcd lease id, as a decimal string ('0' when none). */
  lease: string;
}

/** An IPv4 subnet as numbers. */
export interface Subnet {
  /** Network address as an unsigned 32-bit number. */
  base: number;
  prefix: number;
}

export const ipToNum = (ip: string): number =>
  parseIp(ip)
    .address.split('.')
    .reduce((n, o) => n * 256 + Number(o), 0);
export const numToIp = (n: number): string => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
const size = (prefix: number) => 2 ** (32 - prefix);

export const subnetText = (s: Subnet): string => `${numToIp(s.base)}/${s.prefix}`;
/** flannel's key form: 10.5.52.0-24. */
export const subnetKey = (s: Subnet): string => `${numToIp(s.base)}-${s.prefix}`;
/** The address `n` into the subnet (0: the network address, flannel's VTEP address; 1: the node bridge's). */
export const nthAddress = (s: Subnet, n: number): string => numToIp(s.base + n);
export const containsIp = (s: Subnet, ip: string): boolean => {
  const n = ipToNum(ip);
  return n >= s.base && n < s.base + size(s.prefix);
};
export const sameSubnet = (a: Subnet, b: Subnet): boolean => a.base === b.base && a.prefix === b.prefix;

/** A CIDR as a Subnet; IPv4 only, host bits must be zero. */
export function parseSubnet(text: string, what = 'network'): Subnet {
  let c;
  try {
    c = parseCidr(text);
  } catch {
    throw invalid(`invalid ${what} ${JSON.stringify(text)}: expected an IPv4 CIDR like 10.244.0.0/16`);
  }
  if (c.family !== 4) throw invalid(`invalid ${what} ${text}: the cluster network is IPv4 (as flannel's)`);
  const base = ipToNum(c.address);
  if (base % size(c.prefix) !== 0)
    throw invalid(`invalid ${what} ${text}: host bits set (did you mean ${c.network}/${c.prefix}?)`);
  return { base, prefix: c.prefix };
}

/** `10.5.52.0-24` back to a Subnet, or undefined for a key that is not one. */
export function parseSubnetKey(key: string): Subnet | undefined {
  const m = /^(\d+\.\d+\.\d+\.\d+)-(\d+)$/.exec(key);
  if (!m) return undefined;
  try {
    return parseSubnet(`${m[1]}/${m[2]}`);
  } catch {
    return undefined;
  }
}

export interface InitOptions {
  network: string;
  subnetLen?: number;
  backend: string;
  vni?: number;
  port?: number;
  directRouting?: boolean;
}

/** The config `cluster init` writes; every check made before anything is written. */
export function buildConfig(o: InitOptions): ClusterConfig {
  const net = parseSubnet(o.network);
  if (!(BACKENDS as readonly string[]).includes(o.backend))
    throw invalid(`unknown backend ${JSON.stringify(o.backend)}: expected host-gw or vxlan`);
  // flannel's default: /24 subnets, or two bits below a network too small for that.
  const len = o.subnetLen ?? (net.prefix <= 22 ? 24 : net.prefix + 2);
  if (!Number.isInteger(len) || len <= net.prefix || len > 30)
    throw invalid(`invalid --subnet-len ${len}: must be longer than the network's /${net.prefix} and at most 30`);
  const backend: ClusterConfig['Backend'] = { Type: o.backend as BackendType };
  if (o.backend === 'vxlan') {
    const vni = o.vni ?? 1;
    if (!Number.isInteger(vni) || vni < 1 || vni > 0xffffff) throw invalid(`invalid --vni ${vni}: 1 to 16777215`);
    const port = o.port ?? DEFAULT_VXLAN_PORT;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid(`invalid --port ${port}: 1 to 65535`);
    Object.assign(backend, { VNI: vni, Port: port, DirectRouting: !!o.directRouting });
  } else if (o.vni !== undefined || o.port !== undefined) {
    throw invalid('--vni and --port apply to the vxlan backend only');
  }
  return {
    Network: subnetText(net),
    SubnetLen: len,
    // Never the network's first subnet (flannel's rule: its .0 would be the network address).
    SubnetMin: numToIp(net.base + size(len)),
    SubnetMax: numToIp(net.base + size(net.prefix) - size(len)),
    Backend: backend,
  };
}

/** A config read from the store, checked; the error names the key. */
export function parseConfig(text: string, key: string): ClusterConfig {
  let raw: Partial<ClusterConfig>;
  try {
    raw = JSON.parse(text) as Partial<ClusterConfig>;
  } catch {
    throw invalid(`${key} is not JSON: fix it with tsnet cluster init --force`);
  }
  if (typeof raw.Network !== 'string') throw invalid(`${key} has no "Network"`);
  const net = parseSubnet(raw.Network);
  const defaults = buildConfig({
    network: raw.Network,
    subnetLen: raw.SubnetLen,
    backend: raw.Backend?.Type ?? 'host-gw',
    vni: raw.Backend?.Type === 'vxlan' ? raw.Backend?.VNI || 1 : undefined,
    port: raw.Backend?.Type === 'vxlan' ? raw.Backend?.Port || DEFAULT_VXLAN_PORT : undefined,
    directRouting: raw.Backend?.DirectRouting,
  });
  const min = raw.SubnetMin ?? defaults.SubnetMin;
  const max = raw.SubnetMax ?? defaults.SubnetMax;
  for (const [name, ip] of [
    ['SubnetMin', min],
    ['SubnetMax', max],
  ] as const) {
    if (!containsIp(net, ip)) throw invalid(`${key}: ${name} ${ip} is outside the network ${raw.Network}`);
  }
  return { ...defaults, SubnetMin: min, SubnetMax: max };
}

/** The subnets a node may claim, in order. */
export function* candidateSubnets(c: ClusterConfig): Generator<Subnet> {
  const step = size(c.SubnetLen);
  for (let b = ipToNum(c.SubnetMin); b <= ipToNum(c.SubnetMax); b += step) yield { base: b, prefix: c.SubnetLen };
}

/** Whether `s` is a subnet this config lets a node hold. */
export function claimable(c: ClusterConfig, s: Subnet): boolean {
  return (
    s.prefix === c.SubnetLen &&
    s.base >= ipToNum(c.SubnetMin) &&
    s.base <= ipToNum(c.SubnetMax) &&
    s.base % size(c.SubnetLen) === 0
  );
}

/** A lease read from the store, or the reason it must be skipped (never programmed). */
export function parsePeer(
  c: ClusterConfig,
  key: string,
  value: string,
  lease: string,
): { peer: Peer } | { skip: string } {
  const subnet = parseSubnetKey(key);
  if (!subnet) return { skip: `${key}: not a subnet key` };
  if (!claimable(c, subnet)) return { skip: `${key}: ${subnetText(subnet)} is outside the network ${c.Network}` };
  let v: Partial<LeaseValue>;
  try {
    v = JSON.parse(value) as Partial<LeaseValue>;
  } catch {
    return { skip: `${key}: the lease value is not JSON` };
  }
  if (typeof v !== 'object' || v === null || typeof v.PublicIP !== 'string')
    return { skip: `${key}: the lease value has no PublicIP` };
  try {
    if (parseIp(v.PublicIP).family !== 4) return { skip: `${key}: PublicIP ${v.PublicIP} is not IPv4` };
  } catch {
    return { skip: `${key}: PublicIP ${JSON.stringify(v.PublicIP)} is not an address` };
  }
  const backend = v.BackendType === 'vxlan' ? 'vxlan' : 'host-gw';
  const peer: Peer = { subnet, publicIp: v.PublicIP, backend, name: v.NodeName ?? v.PublicIP, lease };
  const mac = v.BackendData?.VtepMAC;
  if (backend === 'vxlan') {
    if (typeof mac !== 'string' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac))
      return { skip: `${key}: a vxlan lease without a valid VtepMAC` };
    peer.vtepMac = mac.toLowerCase();
    if (typeof v.BackendData?.VNI === 'number') peer.vni = v.BackendData.VNI;
  }
  return { peer };
}

/** The NodeName a lease value names, or undefined (not JSON, none). */
export function leaseNodeName(value: string): string | undefined {
  try {
    return (JSON.parse(value) as Partial<LeaseValue>).NodeName;
  } catch {
    return undefined;
  }
}
