/** CNI CHECK: the container interface, its addresses and routes, and the host side, against prevResult; then IPAM's CHECK. */
import * as addr from '../../addr';
import * as link from '../../link';
import * as netns from '../../netns';
import * as route from '../../route';
import { CniError, CNI_ERR } from '../errors';
import type { CniEnv, NetConf, Result } from '../types';
import { hostVethName, openContainer } from './attachment';
import { parseBridgeConf, type BridgeConf } from './config';
import { ipam } from './ipam-step';

const fail = (msg: string) => new CniError(CNI_ERR.internal, msg);

/** CNI CHECK: the container interface, its addresses and routes, and the host side, against prevResult. */
export async function bridgeCheck(conf: NetConf, env: CniEnv, prev: Result | undefined): Promise<void> {
  const c = parseBridgeConf(conf, env);
  if (!prev) throw new CniError(CNI_ERR.invalidConfig, 'CHECK needs prevResult in the network config');
  const ns = openContainer(env.netns!);
  try {
    const inside = await checkInside(ns, env, prev);
    await checkHostEnd(c, env, prev, inside);
  } finally {
    ns.close();
  }
  await ipam(conf, env).check(prev);
}

/** The container end: a veth named CNI_IFNAME with prevResult's MAC, addresses and routes; returns it. */
async function checkInside(ns: netns.NetNs, env: CniEnv, prev: Result): Promise<link.Link> {
  const ifname = env.ifname!;
  const inside = await link.get(ns, ifname);
  if (!inside) throw fail(`interface ${ifname} is missing in ${env.netns}`);
  if (inside.kind !== 'veth') throw fail(`${ifname} in ${env.netns} is a ${inside.kind ?? 'device'}, not a veth`);
  const idx = (prev.interfaces ?? []).findIndex((i) => i.name === ifname && i.sandbox !== undefined);
  if (idx < 0) throw fail(`prevResult has no interface ${ifname} with a sandbox`);
  const want = prev.interfaces![idx]!;
  if (want.mac && inside.mac && want.mac.toLowerCase() !== inside.mac.toLowerCase())
    throw fail(`${ifname} has MAC ${inside.mac}, prevResult says ${want.mac}`);
  const have = await addr.list(ns, { dev: inside.index });
  for (const a of (prev.ips ?? []).filter((x) => x.interface === idx)) {
    const w = addr.parseCidr(a.address);
    if (!have.some((h) => h.address === w.address && h.prefix === w.prefix))
      throw fail(`address ${a.address} is missing on ${ifname} in ${env.netns}`);
  }
  const rts = await route.list(ns, { table: 'all' });
  for (const r of prev.routes ?? []) {
    const d = r.dst === '0.0.0.0/0' || r.dst === '::/0' ? 'default' : networkOf(r.dst);
    const fam = addr.parseCidr(r.dst).family;
    if (
      !rts.some(
        (x) => x.family === fam && x.dst === d && (r.gw === undefined || x.gateway === addr.parseIp(r.gw).address),
      )
    )
      throw fail(`route ${r.dst}${r.gw ? ` via ${r.gw}` : ''} is missing in ${env.netns}`);
  }
  return inside;
}

/** A route destination as the kernel lists it: the network address and prefix. */
function networkOf(dst: string): string {
  const x = addr.parseCidr(dst);
  return `${x.network}/${x.prefix}`;
}

/** The host end: the container end's peer, on the bridge. */
async function checkHostEnd(c: BridgeConf, env: CniEnv, prev: Result, inside: link.Link): Promise<void> {
  const ifname = env.ifname!;
  const host = netns.current();
  if (inside.peerIndex === undefined) throw fail(`${ifname} in ${env.netns} has no peer`);
  const hostName =
    (prev.interfaces ?? []).find((i) => i.sandbox === undefined && i.name !== c.bridge)?.name ??
    hostVethName(c.name, env.containerId!, ifname);
  const hostEnd = await link.get(host, hostName);
  const br = await link.get(host, c.bridge);
  if (!br || br.kind !== 'bridge') throw fail(`bridge ${c.bridge} is missing`);
  if (!hostEnd || hostEnd.index !== inside.peerIndex || hostEnd.master !== br.index)
    throw fail(`host end ${hostName} of ${ifname} is missing or not on bridge ${c.bridge}`);
}
