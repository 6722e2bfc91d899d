/**
 * tsnet-ipam: host-local's allocation, as library calls. One address per
 * range set; a requested address (runtimeConfig `ips`, CNI_ARGS `IP=`) is
 * honoured when it lies in a set and is free; otherwise allocation continues
 * after the last address reserved in that set, wrapping, skipping the
 * gateway. Every change happens under the network's lock.
 */
import * as fs from 'node:fs';
import { parseIp } from '../../addr/cidr';
import { CniError, CNI_ERR, invalidConfig } from '../errors';
import {
  bigToIp,
  inAnySet,
  inRange,
  ipToBig,
  parseIpamConfig,
  rangeOf,
  rangeSetText,
  type IpamConfig,
  type Range,
  type RangeSet,
} from './config';
import { IpamStore } from './store';
import type { Attachment, CniEnv, Dns, NetConf, Result } from '../types';

export { parseIpamConfig } from './config';
export { IpamStore } from './store';

const storeOf = (c: IpamConfig) => new IpamStore(c.dataDir, c.network);

/** Addresses the runtime asked for: runtimeConfig.ips (capability "ips"), else CNI_ARGS IP=a,b. */
function requestedIps(conf: NetConf, env: CniEnv): string[] {
  const raw = conf.runtimeConfig?.ips ?? (env.args.IP ? env.args.IP.split(',') : []);
  if (!Array.isArray(raw)) throw invalidConfig('runtimeConfig.ips must be a list of addresses');
  return raw.map((t) => {
    try {
      return parseIp(String(t).split('/')[0]!).address;
    } catch {
      throw invalidConfig(`requested IP ${JSON.stringify(t)} is not an IP address`);
    }
  });
}

/** Allocation order: just after the last reserved address to the end of its range, the other ranges, then round to where it started. */
function* candidates(set: RangeSet, after: bigint | undefined): Generator<{ ip: bigint; range: Range }> {
  let ri = after === undefined ? -1 : set.findIndex((r) => after >= r.start && after <= r.end);
  let from: bigint;
  if (ri < 0) {
    ri = 0;
    from = set[0]!.start;
  } else {
    from = after! + 1n;
  }
  const first = set[ri]!;
  for (let ip = from; ip <= first.end; ip++) yield { ip, range: first };
  for (let n = 1; n < set.length; n++) {
    const r = set[(ri + n) % set.length]!;
    for (let ip = r.start; ip <= r.end; ip++) yield { ip, range: r };
  }
  for (let ip = first.start; ip < from; ip++) yield { ip, range: first };
}

function allocateIn(
  store: IpamStore,
  set: RangeSet,
  idx: number,
  taken: Set<string>,
  env: CniEnv,
  requested: string[],
): { ip: string; range: Range } {
  const cid = env.containerId!;
  const ifname = env.ifname!;
  const fam = set[0]!.family;
  const want = requested.find((ip) => rangeOf(set, ip) !== undefined);
  if (want !== undefined) {
    const range = rangeOf(set, want)!;
    if (range.gateway === want)
      throw new CniError(CNI_ERR.invalidConfig, `requested IP ${want} is the gateway of ${range.subnet}`);
    if (!store.reserve(want, cid, ifname, idx))
      throw new CniError(CNI_ERR.internal, `requested IP ${want} is already reserved in network ${store.dir}`);
    return { ip: want, range };
  }
  const last = store.lastReserved(idx);
  for (const { ip, range } of candidates(
    set,
    last === undefined || parseIp(last).family !== fam ? undefined : ipToBig(last),
  )) {
    const text = bigToIp(ip, fam);
    if (text === range.gateway || taken.has(text)) continue;
    if (store.reserve(text, cid, ifname, idx)) return { ip: text, range };
  }
  throw new CniError(CNI_ERR.internal, `no IP addresses available in range set ${rangeSetText(set)}`);
}

/** Parses resolv.conf into the result's dns (host-local's resolvConf option). */
export function parseResolvConf(file: string): Dns {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new CniError(CNI_ERR.io, `reading resolvConf ${file}: ${(err as Error).message}`);
  }
  const dns: Dns = {};
  for (const line of text.split('\n')) {
    const [key, ...vals] = line
      .replace(/[#;].*/, '')
      .trim()
      .split(/\s+/);
    if (!key || vals.length === 0) continue;
    if (key === 'nameserver') (dns.nameservers ??= []).push(vals[0]!);
    else if (key === 'domain') dns.domain = vals[0]!;
    else if (key === 'search') dns.search = vals;
    else if (key === 'options') (dns.options ??= []).push(...vals);
  }
  return dns;
}

/** IPAM ADD: one address per range set, plus routes and DNS. Idempotent for the same container + ifname. */
export async function ipamAdd(conf: NetConf, env: CniEnv): Promise<Result> {
  const c = parseIpamConfig(conf);
  const requested = requestedIps(conf, env);
  for (const ip of requested) {
    if (!inAnySet(c.rangeSets, ip)) {
      throw invalidConfig(`requested IP ${ip} is in none of network ${c.network}'s ranges`);
    }
  }
  const store = storeOf(c);
  const ips = await store.locked(() => {
    store.removeStaleTemps();
    const all = store.list();
    const existing = all.filter((r) => r.containerId === env.containerId && r.ifname === env.ifname);
    const taken = new Set(all.map((r) => r.ip));
    const got: { ip: string; range: Range }[] = [];
    try {
      c.rangeSets.forEach((set, idx) => {
        // A repeated ADD gets what it already has.
        const mine = existing.find((r) => rangeOf(set, r.ip) !== undefined);
        if (mine) {
          got.push({ ip: mine.ip, range: rangeOf(set, mine.ip)! });
          return;
        }
        const a = allocateIn(store, set, idx, taken, env, requested);
        taken.add(a.ip);
        got.push(a);
      });
    } catch (err) {
      store.releaseAttachment(env.containerId!, env.ifname!); // all or nothing
      throw err;
    }
    return got;
  });
  const result: Result = {
    cniVersion: conf.cniVersion,
    ips: ips.map(({ ip, range }) => ({
      address: `${ip}/${range.prefix}`,
      ...(range.gateway ? { gateway: range.gateway } : {}),
    })),
    routes: c.routes.map((r) => ({ ...r })),
  };
  if (c.resolvConf) result.dns = parseResolvConf(c.resolvConf);
  return result;
}

/** IPAM DEL: releases what containerId + ifname holds. Idempotent. */
export async function ipamDel(conf: NetConf, env: CniEnv): Promise<void> {
  const c = parseIpamConfig(conf);
  const store = storeOf(c);
  if (!fs.existsSync(store.dir)) return;
  await store.locked(() => {
    store.removeStaleTemps();
    store.releaseAttachment(env.containerId!, env.ifname!);
  });
}

/** IPAM CHECK: every address of the attachment in prevResult is still reserved for it. */
export async function ipamCheck(conf: NetConf, env: CniEnv, prev: Result | undefined): Promise<void> {
  const c = parseIpamConfig(conf);
  const mine = storeOf(c).byAttachment(env.containerId!, env.ifname!);
  if (mine.length === 0)
    throw new CniError(
      CNI_ERR.internal,
      `tsnet-ipam: no address is reserved for container ${env.containerId} ${env.ifname} in network ${c.network}`,
    );
  for (const ip of prev?.ips ?? []) {
    const a = ip.address.split('/')[0]!;
    if (inAnySet(c.rangeSets, a) && !mine.some((m) => m.ip === parseIp(a).address)) {
      throw new CniError(
        CNI_ERR.internal,
        `tsnet-ipam: ${a} is not reserved for container ${env.containerId} ${env.ifname} in network ${c.network}`,
      );
    }
  }
}

export const attachmentKey = (a: { containerID?: string; containerId?: string; ifname: string }) =>
  `${a.containerID ?? a.containerId}\n${a.ifname}`;

/** The attachments GC must keep: `cni.dev/valid-attachments`, or the pre-1.1 `cni.dev/attachments`. */
export function validAttachments(conf: NetConf): Set<string> {
  const list = conf['cni.dev/valid-attachments'] ?? conf['cni.dev/attachments'];
  if (list === undefined) throw invalidConfig('GC needs "cni.dev/valid-attachments" in the network config');
  if (
    !Array.isArray(list) ||
    list.some((a: Attachment) => typeof a?.containerID !== 'string' || typeof a?.ifname !== 'string')
  ) {
    throw invalidConfig('"cni.dev/valid-attachments" must be a list of {"containerID", "ifname"}');
  }
  return new Set(list.map(attachmentKey));
}

/** IPAM GC: releases every reservation not held by a valid attachment; returns the addresses released. */
export async function ipamGc(conf: NetConf, valid: Set<string>): Promise<string[]> {
  const c = parseIpamConfig(conf);
  const store = storeOf(c);
  if (!fs.existsSync(store.dir)) return [];
  const validIds = new Set([...valid].map((k) => k.split('\n')[0]));
  return store.locked(() => {
    store.removeStaleTemps();
    const gone = store.list().filter((r) => (r.ifname ? !valid.has(attachmentKey(r)) : !validIds.has(r.containerId)));
    for (const r of gone) store.release(r.ip);
    return gone.map((r) => r.ip);
  });
}

/** IPAM STATUS: ready unless a range set has no free address left (error 50). */
export async function ipamStatus(conf: NetConf): Promise<void> {
  const c = parseIpamConfig(conf);
  const taken = storeOf(c)
    .list()
    .map((r) => r.ip);
  for (const set of c.rangeSets) {
    let free = 0n;
    for (const r of set) {
      const gwIn = r.gateway !== undefined && inRange(r, r.gateway) ? 1n : 0n;
      free += r.end - r.start + 1n - gwIn - BigInt(taken.filter((ip) => inRange(r, ip)).length);
    }
    if (free <= 0n)
      throw new CniError(
        CNI_ERR.notAvailable,
        `network ${c.network}: no free address left in range set ${rangeSetText(set)}`,
      );
  }
}
