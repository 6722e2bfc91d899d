/**
 * A cluster node's kernel side: its own devices (the node bridge, the vxlan
 * device) and the peer table, reconciled against desired.ts. Reconcile
 * reads what the kernel has (routes of protocol tsnet, the vxlan device's
 * permanent neighbour and FDB entries, tsnet's nexthop objects), writes only
 * the difference, in one batch, and a steady state writes nothing. Routes of
 * protocol tsnet that no lease explains are stale and removed, whoever left
 * them.
 */
import * as addr from '../addr';
import * as bridge from '../bridge';
import * as link from '../link';
import * as route from '../route';
import * as neigh from '../neigh';
import * as sysctl from '../sysctl';
import { sendBatch, type BatchMessage } from '../netlink/batch';
import { RTM, RTNLGRP, RTPROT, ndmsg } from '../netlink/rtnl';
import { TsnetError, hasCode } from '../errors';
import type { NetNs } from '../netns';
import { labelOf, rtnl } from '../netns/internal';
import { ipToNum, nthAddress, subnetText, type ClusterConfig, type Subnet } from './config';
import type { Desired } from './desired';

/** VXLAN over IPv4 adds 50 bytes: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14. */
export const VXLAN_OVERHEAD = 50;
/** Messages per sendmsg: their error replies, should all fail, still fit the receive buffer. */
const BATCH = 1000;
const DELETES = new Set<number>([RTM.DELROUTE, RTM.DELNEIGH, RTM.DELNEXTHOP]);

export const vxlanName = (vni: number): string => `tsnet.${vni}`;

export interface NodeDevices {
  bridge: { index: number; name: string };
  underlay: { index: number; name: string; mtu: number; subnet: Subnet };
  vxlan?: { index: number; name: string; mtu: number };
}

/** The interface holding `publicIp`: the underlay, whose MTU and subnet the node derives from. */
export async function findUnderlay(h: NetNs, publicIp: string): Promise<NodeDevices['underlay']> {
  const a = (await addr.list(h, { family: 4 })).find((x) => x.address === publicIp);
  if (!a)
    throw new TsnetError(`public IP ${publicIp} is on no interface in ${labelOf(h)}: give the node's own address`, {
      code: 'EADDRNOTAVAIL',
    });
  const l = await link.mustGet(h, a.index);
  const mask = a.prefix === 0 ? 0 : (~0 << (32 - a.prefix)) >>> 0;
  return {
    index: l.index,
    name: l.name,
    mtu: l.mtu,
    subnet: { base: (ipToNum(a.address) & mask) >>> 0, prefix: a.prefix },
  };
}

export interface NodeSetup {
  config: ClusterConfig;
  subnet: Subnet;
  publicIp: string;
  bridge: string;
  vtepMac: string;
}

/** The vxlan device as flannel makes it: no learning, the VTEP MAC fixed, MTU underlay - 50, the subnet's .0/32. */
async function ensureVxlan(h: NetNs, s: NodeSetup, underlay: NodeDevices['underlay']): Promise<NodeDevices['vxlan']> {
  const vni = s.config.Backend.VNI ?? 1;
  const port = s.config.Backend.Port ?? 8472;
  const name = vxlanName(vni);
  const mtu = underlay.mtu - VXLAN_OVERHEAD;
  let l = await link.get(h, name);
  const fits =
    l?.kind === 'vxlan' &&
    l.vxlan?.vni === vni &&
    l.vxlan.port === port &&
    l.vxlan.local === s.publicIp &&
    l.vxlan.link === underlay.index &&
    !l.vxlan.learning;
  if (l && !fits) {
    await link.del(h, l.index);
    l = undefined;
  }
  if (!l) {
    await link.add(h, { kind: 'vxlan', name, vni, port, local: s.publicIp, dev: underlay.index, mtu, mac: s.vtepMac });
    l = await link.mustGet(h, name);
  }
  if (l.mtu !== mtu || l.mac !== s.vtepMac || !l.up) await link.set(h, l.index, { mtu, mac: s.vtepMac, up: true });
  const own = `${nthAddress(s.subnet, 0)}/32`;
  const addrs = await addr.list(h, { dev: l.index, family: 4 });
  if (!addrs.some((a) => a.cidr === own)) await addr.replace(h, own, l.index);
  for (const a of addrs) if (a.cidr !== own) await addr.del(h, a.cidr, l.index);
  return { index: l.index, name, mtu };
}

/**
 * The node's own devices: the bridge with the subnet's first address, the
 * vxlan device in vxlan mode, forwarding on. Idempotent: what is right is left alone.
 */
export async function ensureNode(h: NetNs, s: NodeSetup): Promise<NodeDevices> {
  const underlay = await findUnderlay(h, s.publicIp);
  const vxlan = s.config.Backend.Type === 'vxlan' ? await ensureVxlan(h, s, underlay) : undefined;
  const gw = `${nthAddress(s.subnet, 1)}/${s.subnet.prefix}`;
  let br = await link.get(h, s.bridge);
  const addrs = br?.kind === 'bridge' ? await addr.list(h, { dev: br.index, family: 4 }) : [];
  // Read first: a node in its steady state writes nothing (bridge.ensure would replace the address every time).
  const fine =
    br?.kind === 'bridge' && br.up && addrs.length === 1 && addrs[0]!.cidr === gw && (!vxlan || br.mtu === vxlan.mtu);
  if (!br || !fine) {
    br = await bridge.ensure(h, s.bridge, { addresses: [gw], ...(vxlan ? { mtu: vxlan.mtu } : {}) });
    // The agent owns the node bridge: an address of a subnet the node no longer holds would keep routing pods there.
    for (const a of addrs) if (a.cidr !== gw) await addr.del(h, a.cidr, br.index);
  }
  if (sysctl.get(h, sysctl.keys.ipForward) !== '1') sysctl.set(h, sysctl.keys.ipForward, 1);
  return { bridge: { index: br.index, name: br.name }, underlay, ...(vxlan ? { vxlan } : {}) };
}

/** What the kernel holds of tsnet's peer table. */
export interface Current {
  routes: Map<string, route.Route>;
  neighs: Map<string, string>;
  fdb: Map<string, string>;
  nexthops: Map<number, route.nexthop.Nexthop>;
}

export async function readCurrent(h: NetNs, vxlanIndex: number | undefined): Promise<Current> {
  const routes = (await route.list(h, { family: 4 })).filter((r) => r.protocol === 'tsnet');
  const nexthops = (await route.nexthop.list(h)).filter((n) => n.protocol === RTPROT.TSNET);
  const cur: Current = {
    routes: new Map(routes.map((r) => [r.dst, r])),
    neighs: new Map(),
    fdb: new Map(),
    nexthops: new Map(nexthops.map((n) => [n.id, n])),
  };
  if (vxlanIndex !== undefined) {
    for (const n of await neigh.list(h, { dev: vxlanIndex }))
      if (n.state.includes('permanent') && n.lladdr) cur.neighs.set(n.address, n.lladdr);
    for (const e of await neigh.fdb.list(h, { dev: vxlanIndex }))
      if (e.self && e.permanent && e.dst && e.mac !== '00:00:00:00:00:00') cur.fdb.set(e.mac, e.dst);
  }
  return cur;
}

export interface ReconcileResult {
  /** Netlink writes made (0 in a steady state). */
  writes: number;
  /** Entries the kernel refused, one line each. */
  errors: string[];
  /** Replies were lost: the caller reconciles again. */
  overrun: boolean;
}

/** Diffs `want` against the kernel and writes the difference; `devs` from ensureNode. */
export async function reconcile(h: NetNs, want: Desired, devs: NodeDevices): Promise<ReconcileResult> {
  const vx = devs.vxlan?.index;
  const cur = await readCurrent(h, vx);
  const first: BatchMessage[] = [];
  const last: BatchMessage[] = [];
  const what: string[] = [];
  const put = (into: BatchMessage[], m: BatchMessage, text: string) => (into.push(m), what.push(text));
  for (const [id, n] of want.nexthops) {
    const c = cur.nexthops.get(id);
    if (c && c.gateway === n.via && c.onlink === n.vxlan && (!n.vxlan || c.dev === vx)) continue;
    const spec = { id, via: n.via, dev: n.vxlan ? vx : devs.underlay.index, onlink: n.vxlan, protocol: RTPROT.TSNET };
    put(first, route.nexthop.nexthopBatchMessage(spec, 'replace'), `nexthop ${id} via ${n.via}`);
  }
  if (vx !== undefined) {
    for (const [mac, dst] of want.fdb)
      if (cur.fdb.get(mac) !== dst)
        put(first, neigh.fdb.fdbBatchMessage({ dev: vx, mac, dst }, vx, 'replace'), `fdb ${mac} dst ${dst}`);
    for (const [ip, mac] of want.neighs)
      if (cur.neighs.get(ip) !== mac)
        put(first, neigh.neighBatchMessage({ dev: vx, address: ip, lladdr: mac }, vx, 'replace'), `neigh ${ip}`);
  }
  for (const [dst, r] of want.routes) {
    const c = cur.routes.get(dst);
    const same =
      c &&
      (r.nhid !== undefined
        ? c.nhid === r.nhid
        : c.nhid === undefined &&
          c.gateway === r.via &&
          !!c.onlink === r.vxlan &&
          (!r.vxlan || c.dev === devs.vxlan?.name));
    if (same) continue;
    const spec: route.RouteSpec =
      r.nhid !== undefined
        ? { dst, nhid: r.nhid, protocol: RTPROT.TSNET }
        : { dst, via: r.via, onlink: r.vxlan, protocol: RTPROT.TSNET, ...(r.vxlan ? { dev: vx } : {}) };
    put(
      first,
      route.routeBatchMessage(spec, r.vxlan && r.nhid === undefined ? vx : undefined, 'replace'),
      `route ${dst}`,
    );
  }
  for (const [dst, c] of cur.routes)
    if (!want.routes.has(dst))
      put(
        last,
        route.routeBatchMessage({ dst, protocol: RTPROT.TSNET }, undefined, 'del'),
        `del route ${dst} (${c.gateway ?? ''})`,
      );
  if (vx !== undefined) {
    for (const [ip, mac] of cur.neighs)
      if (!want.neighs.has(ip))
        put(last, neigh.neighBatchMessage({ dev: vx, address: ip, lladdr: mac }, vx, 'del'), `del neigh ${ip}`);
    for (const [mac, dst] of cur.fdb)
      if (want.fdb.get(mac) !== dst)
        put(last, neigh.fdb.fdbBatchMessage({ dev: vx, mac, dst }, vx, 'del'), `del fdb ${mac} dst ${dst}`);
  }
  for (const id of cur.nexthops.keys())
    if (!want.nexthops.has(id)) put(last, route.nexthop.nexthopBatchMessage({ id }, 'del'), `del nexthop ${id}`);
  const all = [...first, ...last];
  const result: ReconcileResult = { writes: all.length, errors: [], overrun: false };
  for (let i = 0; i < all.length; i += BATCH) {
    const r = await sendBatch(rtnl(h), all.slice(i, i + BATCH));
    if (r.overrun) result.overrun = true;
    for (const [j, err] of r.errors) {
      // A delete of what is already gone is what was wanted.
      if (DELETES.has(all[i + j]!.type) && hasCode(err, 'ESRCH', 'ENOENT')) continue;
      result.errors.push(`${what[i + j]}: ${err.message}`);
    }
  }
  return result;
}

/** Removes the node's whole peer table and its vxlan device (leave --teardown). The bridge stays: pods are on it. */
export async function teardown(h: NetNs, config: ClusterConfig): Promise<number> {
  const vx = config.Backend.Type === 'vxlan' ? await link.get(h, vxlanName(config.Backend.VNI ?? 1)) : undefined;
  const empty: Desired = { routes: new Map(), neighs: new Map(), fdb: new Map(), nexthops: new Map() };
  const underlay = { index: 0, name: '', mtu: 0, subnet: { base: 0, prefix: 32 } };
  const devs: NodeDevices = {
    bridge: { index: 0, name: '' },
    underlay,
    ...(vx ? { vxlan: { index: vx.index, name: vx.name, mtu: vx.mtu } } : {}),
  };
  let r: ReconcileResult;
  try {
    r = await reconcile(h, empty, devs);
  } catch (err) {
    // The device went meanwhile (the node's own agent tears down too after a leave): its entries went with it.
    if (!hasCode(err, 'ENODEV') || !devs.vxlan) throw err;
    delete devs.vxlan;
    r = await reconcile(h, empty, devs);
  }
  const removed = vx ? await link.del(h, vx.index) : false;
  return r.writes + (removed ? 1 : 0);
}

/** The rtnetlink groups a node's monitor joins: what a hand edit of its peer table or devices shows up in. */
export const MONITOR_GROUPS = [RTNLGRP.LINK, RTNLGRP.NEIGH, RTNLGRP.IPV4_ROUTE, RTNLGRP.NEXTHOP];

/**
 * Whether a notification may mean drift: a route, nexthop or link changed or
 * went, or a neighbour or FDB entry on the vxlan device. Neighbour updates
 * elsewhere (ARP on every port, the bridge learning pod MACs) are the
 * normal hum of a node and are ignored.
 */
export function mayBeDrift(m: { type: number; payload: Buffer }, vxlanIndex: number | undefined): boolean {
  switch (m.type) {
    case RTM.NEWNEIGH:
    case RTM.DELNEIGH:
      return (
        vxlanIndex !== undefined && m.payload.length >= ndmsg.size && ndmsg.decode(m.payload).ifindex === vxlanIndex
      );
    case RTM.NEWROUTE:
    case RTM.DELROUTE:
    case RTM.DELLINK:
    case RTM.NEWLINK:
    case RTM.NEWNEXTHOP:
    case RTM.DELNEXTHOP:
      return true;
    default:
      return false;
  }
}

export { subnetText };
