/** Routes: `ip route add|replace|del|show`, over RTM_NEWROUTE / RTM_DELROUTE / RTM_GETROUTE. */
import { decodeAttrs, encodeAttrs, type AttrObject } from '../netlink/attrs';
import { NLM_F } from '../netlink/socket';
import type { BatchMessage } from '../netlink/batch';
import {
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  RTA,
  RTM,
  RTN,
  RTPROT,
  RTNH_F,
  RT_SCOPE,
  RT_TABLE,
  rtmsg,
} from '../netlink/rtnl';
import { hasCode, invalid, withContext } from '../errors';
import { list as listLinks, mustGet, type LinkRef } from '../link';
import { parseCidr, parseIp, type Family } from '../addr/cidr';
import type { NetNs } from '../netns';
import { rtnl, labelOf } from '../netns/internal';

/** A route to add or delete: `ip route add DST [via GW] [dev DEV] [metric N] [src IP] [table N]`. */
export interface RouteSpec {
  /** 'default', or a destination CIDR (a bare address means a host route). */
  dst: string;
  via?: string;
  dev?: LinkRef;
  metric?: number;
  /** Preferred source address (RTA_PREFSRC). */
  src?: string;
  table?: number;
  /** `proto N`: who owns the route (RTPROT_*; default boot, as `ip route add`). */
  protocol?: number;
  /** `onlink`: the gateway is on `dev` even without a covering prefix (flannel's vxlan routes). */
  onlink?: boolean;
  /** `blackhole`: drop silently (no gateway, no device). */
  type?: 'unicast' | 'blackhole';
  /** `nhid N`: through a nexthop object instead of via/dev. */
  nhid?: number;
}

export interface Route {
  family: Family;
  /** 'default' or "10.88.0.0/16" */
  dst: string;
  gateway?: string;
  dev?: string;
  metric?: number;
  prefsrc?: string;
  table: number;
  protocol: 'kernel' | 'boot' | 'static' | 'tsnet' | number;
  scope: 'global' | 'link' | 'host' | number;
  type: 'unicast' | 'local' | 'broadcast' | 'blackhole' | 'unreachable' | number;
  onlink?: boolean;
  nhid?: number;
}

const PROTOS: Record<number, Route['protocol']> = { 2: 'kernel', 3: 'boot', 4: 'static', 74: 'tsnet' };
const SCOPES: Record<number, Route['scope']> = { 0: 'global', 253: 'link', 254: 'host' };
const TYPES: Record<number, Route['type']> = {
  1: 'unicast',
  2: 'local',
  3: 'broadcast',
  6: 'blackhole',
  7: 'unreachable',
};

async function routeMsg(h: NetNs, r: RouteSpec, forDelete: boolean): Promise<{ msg: Buffer; text: string }> {
  const oif = r.dev === undefined ? undefined : typeof r.dev === 'number' ? r.dev : (await mustGet(h, r.dev)).index;
  return encodeRoute(r, oif, forDelete);
}

/** The RTM_NEWROUTE/DELROUTE payload of `r`, its device given by ifindex: pure, for batches (src/netlink/batch). */
export function encodeRoute(r: RouteSpec, oif: number | undefined, forDelete: boolean): { msg: Buffer; text: string } {
  const dst = r.dst === 'default' ? undefined : parseCidr(r.dst, { defaultPrefix: true });
  const gw = r.via === undefined ? undefined : parseIp(r.via);
  const src = r.src === undefined ? undefined : parseIp(r.src);
  const family = dst?.family ?? gw?.family ?? src?.family ?? 4;
  if ((gw && gw.family !== family) || (src && src.family !== family)) {
    throw invalid(`route ${r.dst}: mixed IPv4 and IPv6 (dst, via and src must be one family)`);
  }
  const blackhole = r.type === 'blackhole';
  if (blackhole && (gw || r.dev !== undefined || r.nhid !== undefined))
    throw invalid(`route ${r.dst}: a blackhole route takes no gateway, device or nexthop`);
  if (!gw && r.dev === undefined && r.nhid === undefined && !blackhole && !forDelete)
    throw invalid(`route ${r.dst}: needs --via GATEWAY, --dev DEVICE or --nhid ID`);
  if (r.onlink && (!gw || r.dev === undefined)) throw invalid(`route ${r.dst}: onlink needs --via and --dev`);
  if (r.protocol !== undefined && (!Number.isInteger(r.protocol) || r.protocol < 0 || r.protocol > 255))
    throw invalid(`invalid route protocol ${r.protocol}: must be 0-255`);
  if (r.metric !== undefined && (!Number.isInteger(r.metric) || r.metric < 0 || r.metric > 0xffffffff))
    throw invalid(`invalid metric ${r.metric}`);
  const table = r.table ?? RT_TABLE.MAIN;
  const hdr = rtmsg.encode({
    family: family === 4 ? AF_INET : AF_INET6,
    dst_len: dst ? dst.prefix : 0,
    table: table < 256 ? table : RT_TABLE.UNSPEC,
    protocol: forDelete ? (r.protocol ?? 0) : (r.protocol ?? RTPROT.BOOT),
    // Without a gateway the destination is directly on the link (`scope link`), as iproute2 infers.
    scope: forDelete ? RT_SCOPE.NOWHERE : gw || blackhole || r.nhid !== undefined ? RT_SCOPE.UNIVERSE : RT_SCOPE.LINK,
    type: forDelete ? 0 : blackhole ? RTN.BLACKHOLE : RTN.UNICAST,
    flags: r.onlink ? RTNH_F.ONLINK : 0,
  });
  const attrs: AttrObject = {
    dst: dst?.network,
    gateway: gw?.address,
    oif,
    priority: r.metric,
    prefsrc: src?.address,
    table: table >= 256 ? table : undefined,
    nh_id: r.nhid,
  };
  const text = [
    blackhole && 'blackhole',
    r.dst === 'default' ? 'default' : `${dst!.network}/${dst!.prefix}`,
    r.nhid !== undefined && `nhid ${r.nhid}`,
    gw && `via ${gw.address}`,
    r.dev !== undefined && `dev ${r.dev}`,
    r.metric !== undefined && `metric ${r.metric}`,
    r.onlink && 'onlink',
  ]
    .filter(Boolean)
    .join(' ');
  return { msg: Buffer.concat([hdr, encodeAttrs(RTA, attrs)]), text };
}

async function change(h: NetNs, verb: string, type: number, flags: number, r: RouteSpec): Promise<void> {
  const { msg, text } = await routeMsg(h, r, type === RTM.DELROUTE);
  await withContext(`${verb} route ${text} in ${labelOf(h)}`, () => rtnl(h).request(type, flags, msg));
}

/** One route as a batch message: replace (create or change), or delete. */
export function routeBatchMessage(r: RouteSpec, oif: number | undefined, op: 'replace' | 'del'): BatchMessage {
  const { msg } = encodeRoute(r, oif, op === 'del');
  return op === 'del'
    ? { type: RTM.DELROUTE, flags: 0, payload: msg }
    : { type: RTM.NEWROUTE, flags: NLM_F.CREATE | NLM_F.REPLACE, payload: msg };
}

/** `ip route add ...`: fails with EEXIST when an equal route exists. */
export const add = (h: NetNs, r: RouteSpec) => change(h, 'adding', RTM.NEWROUTE, NLM_F.CREATE | NLM_F.EXCL, r);

/** `ip route replace ...`: adds or replaces (idempotent). */
export const replace = (h: NetNs, r: RouteSpec) =>
  change(h, 'replacing', RTM.NEWROUTE, NLM_F.CREATE | NLM_F.REPLACE, r);

/** `ip route del ...`. A route that is not there is not an error (returns false). */
export async function del(h: NetNs, r: RouteSpec): Promise<boolean> {
  try {
    await change(h, 'deleting', RTM.DELROUTE, 0, r);
    return true;
  } catch (err) {
    if (hasCode(err, 'ESRCH')) return false;
    throw err;
  }
}

/** `ip route show [table N]` for one or both families (main table by default). */
export async function list(h: NetNs, filter: { family?: Family; table?: number | 'all' } = {}): Promise<Route[]> {
  const links = await listLinks(h);
  const names = new Map(links.map((l) => [l.index, l.name]));
  const family = filter.family === 4 ? AF_INET : filter.family === 6 ? AF_INET6 : AF_UNSPEC;
  const wantTable = filter.table ?? RT_TABLE.MAIN;
  return withContext(`listing routes in ${labelOf(h)}`, async () => {
    const msgs = await rtnl(h).dump(RTM.GETROUTE, rtmsg.encode({ family }));
    const out: Route[] = [];
    for (const m of msgs) {
      if (m.type !== RTM.NEWROUTE) continue;
      const hdr = rtmsg.decode(m.payload);
      const a = decodeAttrs(RTA, m.payload.subarray(rtmsg.size));
      const table = (a.table as number | undefined) ?? hdr.table;
      if (wantTable !== 'all' && table !== wantTable) continue;
      const fam: Family = hdr.family === AF_INET ? 4 : 6;
      const route: Route = {
        family: fam,
        dst: hdr.dst_len === 0 && a.dst === undefined ? 'default' : `${a.dst as string}/${hdr.dst_len}`,
        table,
        protocol: PROTOS[hdr.protocol] ?? hdr.protocol,
        scope: SCOPES[hdr.scope] ?? hdr.scope,
        type: TYPES[hdr.type] ?? hdr.type,
      };
      if (a.gateway !== undefined) route.gateway = a.gateway as string;
      if (a.oif !== undefined) route.dev = names.get(a.oif as number) ?? String(a.oif);
      if (a.priority !== undefined) route.metric = a.priority as number;
      if (a.prefsrc !== undefined) route.prefsrc = a.prefsrc as string;
      if (hdr.flags & RTNH_F.ONLINK) route.onlink = true;
      if (a.nh_id !== undefined) route.nhid = a.nh_id as number;
      out.push(route);
    }
    return out;
  });
}

/** What the kernel would do with a packet to `dst`: `ip route get DST` (the egress device, gateway, and source it would pick). */
export async function get(
  h: NetNs,
  dst: string,
): Promise<{ dev?: string; gateway?: string; prefsrc?: string; type: Route['type'] }> {
  const ip = parseIp(dst);
  const hdr = rtmsg.encode({ family: ip.family === 4 ? AF_INET : AF_INET6, dst_len: ip.family === 4 ? 32 : 128 });
  const replies = await withContext(`looking up the route to ${ip.address} in ${labelOf(h)}`, () =>
    rtnl(h).request(RTM.GETROUTE, 0, Buffer.concat([hdr, encodeAttrs(RTA, { dst: ip.address })])),
  );
  const m = replies.find((r) => r.type === RTM.NEWROUTE);
  if (!m) throw invalid(`no route to ${ip.address} in ${labelOf(h)}`);
  const rh = rtmsg.decode(m.payload);
  const a = decodeAttrs(RTA, m.payload.subarray(rtmsg.size));
  const out: { dev?: string; gateway?: string; prefsrc?: string; type: Route['type'] } = {
    type: TYPES[rh.type] ?? rh.type,
  };
  if (a.oif !== undefined) out.dev = (await listLinks(h)).find((l) => l.index === a.oif)?.name ?? String(a.oif);
  if (a.gateway !== undefined) out.gateway = a.gateway as string;
  if (a.prefsrc !== undefined) out.prefsrc = a.prefsrc as string;
  return out;
}
export * as nexthop from './nexthop';
