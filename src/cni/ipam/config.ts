/**
 * host-local's IPAM configuration, accepted as is: the legacy single range
 * (`subnet`, `rangeStart`, `rangeEnd`, `gateway`) or `ranges` (a list of
 * range sets; one address is allocated from each set), `routes`, `dataDir`,
 * `resolvConf`. Parsed into ranges with bigint bounds, canonicalized and
 * checked the way host-local's Range.Canonicalize does.
 */
import { Address4, Address6 } from 'ip-address';
import { parseCidr, parseIp, type Family } from '../../addr/cidr';
import { CNI_ERR, invalidConfig, reportInput } from '../errors';
import { CNI_NAME_RE } from '../env';
import type { NetConf } from '../types';

export const DEFAULT_DATA_DIR = '/var/lib/cni/networks';

export interface Range {
  family: Family;
  /** "10.22.0.0/16" */
  subnet: string;
  prefix: number;
  start: bigint;
  end: bigint;
  gateway?: string;
}

export type RangeSet = Range[];

export interface IpamConfig {
  type: string;
  /** The network name: the store's directory under dataDir. */
  network: string;
  rangeSets: RangeSet[];
  routes: { dst: string; gw?: string }[];
  dataDir: string;
  resolvConf?: string;
}

export const ipToBig = (ip: string): bigint => {
  const p = parseIp(ip);
  return p.family === 4 ? new Address4(p.address).bigInt() : new Address6(p.address).bigInt();
};

export const bigToIp = (n: bigint, family: Family): string =>
  family === 4 ? Address4.fromBigInt(n).correctForm() : Address6.fromBigInt(n).correctForm();

/** Whether `ip` lies inside range `r` (same family, between start and end). */
export function inRange(r: Range, ip: string): boolean {
  const p = parseIp(ip);
  if (p.family !== r.family) return false;
  const n = ipToBig(p.address);
  return n >= r.start && n <= r.end;
}

/** The range of a set (or of any set) holding `ip`. */
export const rangeOf = (set: RangeSet, ip: string): Range | undefined => set.find((r) => inRange(r, ip));
export const inAnySet = (sets: RangeSet[], ip: string): boolean => sets.some((s) => rangeOf(s, ip) !== undefined);

export const rangeText = (r: Range) => `${bigToIp(r.start, r.family)}-${bigToIp(r.end, r.family)}`;

export const rangeSetText = (s: RangeSet) => s.map(rangeText).join(',');

/** The network name as a directory name: the spec's grammar, so never '..' or a path. */
export function validateNetworkName(name: unknown): string {
  if (typeof name !== 'string' || !CNI_NAME_RE.test(name) || name.length > 200) {
    throw invalidConfig(
      `invalid network name ${JSON.stringify(name)}: letters, digits, '_', '.' and '-', starting with a letter or digit`,
    );
  }
  return name;
}

interface RawRange {
  subnet?: unknown;
  rangeStart?: unknown;
  rangeEnd?: unknown;
  gateway?: unknown;
}

function parseRange(raw: RawRange, where: string): Range {
  if (typeof raw !== 'object' || raw === null) throw invalidConfig(`${where}: a range must be an object with "subnet"`);
  if (typeof raw.subnet !== 'string') throw invalidConfig(`${where}: "subnet" is required (e.g. "10.22.0.0/16")`);
  let c;
  try {
    c = parseCidr(raw.subnet);
  } catch (err) {
    reportInput(CNI_ERR.invalidConfig, where, err);
  }
  const bits = c.family === 4 ? 32 : 128;
  if (c.prefix > bits - 2) throw invalidConfig(`${where}: network ${raw.subnet} is too small to allocate from`);
  if (c.address !== c.network)
    throw invalidConfig(
      `${where}: network ${raw.subnet} has host bits set; for a /${c.prefix} the network address is ${c.network}`,
    );
  const first = ipToBig(c.network);
  const size = 1n << BigInt(bits - c.prefix);
  const last = first + size - 1n;
  const inSubnet = (key: 'rangeStart' | 'rangeEnd' | 'gateway'): bigint | undefined => {
    const v = raw[key];
    if (v === undefined || v === '') return undefined;
    let ip;
    try {
      ip = parseIp(v as string);
    } catch {
      throw invalidConfig(`${where}: ${key} ${JSON.stringify(v)} is not an IP address`);
    }
    const n = ipToBig(ip.address);
    if (ip.family !== c.family || n < first || n > last)
      throw invalidConfig(`${where}: ${key} ${ip.address} is not in ${raw.subnet}`);
    return n;
  };
  const start = inSubnet('rangeStart') ?? first + 1n;
  // IPv4 never hands out the broadcast address; IPv6 has none.
  const end = inSubnet('rangeEnd') ?? (c.family === 4 ? last - 1n : last);
  if (start > end)
    throw invalidConfig(`${where}: rangeStart ${bigToIp(start, c.family)} is after rangeEnd ${bigToIp(end, c.family)}`);
  const gw = inSubnet('gateway');
  return {
    family: c.family,
    subnet: `${c.network}/${c.prefix}`,
    prefix: c.prefix,
    start,
    end,
    gateway: bigToIp(gw ?? first + 1n, c.family),
  };
}

const overlaps = (a: Range, b: Range) => a.family === b.family && a.start <= b.end && b.start <= a.end;

/** Reads `ipam` of a network config (name from the network config). */
export function parseIpamConfig(conf: NetConf): IpamConfig {
  const network = validateNetworkName(conf.name);
  const ipam = conf.ipam as Record<string, unknown> | undefined;
  if (!ipam || typeof ipam !== 'object') throw invalidConfig(`network ${network}: "ipam" is missing`);
  let rawSets: RawRange[][];
  if (ipam.ranges !== undefined) {
    if (!Array.isArray(ipam.ranges) || ipam.ranges.some((s) => !Array.isArray(s) || s.length === 0)) {
      throw invalidConfig(
        `network ${network}: ipam.ranges must be a list of non-empty lists of ranges, e.g. [[{"subnet": "10.22.0.0/16"}]]`,
      );
    }
    if (ipam.subnet !== undefined)
      throw invalidConfig(`network ${network}: ipam has both "subnet" and "ranges"; use one`);
    rawSets = ipam.ranges as RawRange[][];
  } else if (ipam.subnet !== undefined) {
    rawSets = [[{ subnet: ipam.subnet, rangeStart: ipam.rangeStart, rangeEnd: ipam.rangeEnd, gateway: ipam.gateway }]];
  } else {
    throw invalidConfig(`network ${network}: ipam needs "subnet" or "ranges"`);
  }
  const rangeSets = rawSets.map((set, i) =>
    set.map((r, j) => parseRange(r, `network ${network}: ipam range ${i}.${j}`)),
  );
  const all = rangeSets.flatMap((s, i) => s.map((r) => ({ r, i })));
  for (const [k, a] of all.entries()) {
    for (const b of all.slice(k + 1)) {
      if (overlaps(a.r, b.r))
        throw invalidConfig(`network ${network}: ipam ranges ${rangeText(a.r)} and ${rangeText(b.r)} overlap`);
    }
  }
  for (const [i, s] of rangeSets.entries()) {
    if (new Set(s.map((r) => r.family)).size > 1)
      throw invalidConfig(`network ${network}: ipam range set ${i} mixes IPv4 and IPv6 (one family per set)`);
  }
  const routes = (ipam.routes ?? []) as { dst?: unknown; gw?: unknown }[];
  if (!Array.isArray(routes))
    throw invalidConfig(`network ${network}: ipam.routes must be a list of {"dst": CIDR, "gw": IP}`);
  const parsedRoutes = routes.map((rt) => {
    try {
      const dst = parseCidr(rt.dst as string);
      const out: { dst: string; gw?: string } = { dst: `${dst.network}/${dst.prefix}` };
      if (rt.gw !== undefined && rt.gw !== '') out.gw = parseIp(rt.gw as string).address;
      return out;
    } catch (err) {
      reportInput(CNI_ERR.invalidConfig, `network ${network}: ipam route ${JSON.stringify(rt)}`, err);
    }
  });
  const dataDir = ipam.dataDir ?? DEFAULT_DATA_DIR;
  if (typeof dataDir !== 'string' || !dataDir.startsWith('/'))
    throw invalidConfig(`network ${network}: ipam.dataDir must be an absolute path`);
  const out: IpamConfig = { type: String(ipam.type), network, rangeSets, routes: parsedRoutes, dataDir };
  if (typeof ipam.resolvConf === 'string') out.resolvConf = ipam.resolvConf;
  return out;
}
