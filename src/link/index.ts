/**
 * Links: `ip link add|set|del|show`, over RTM_NEWLINK / RTM_DELLINK /
 * RTM_GETLINK in the namespace of a handle. Kinds are a discriminated union;
 * IFLA_LINKINFO is encoded and decoded through the tables in src/netlink/rtnl.
 */
import { validateIfname } from './ifname';
import { decodeAttrs, encodeAttrs, type AttrObject } from '../netlink/attrs';
import { NLM_F } from '../netlink/socket';
import { AF_BRIDGE, AF_UNSPEC, BR_STATE, IFF, IFLA, RTM, ifinfomsg, type IfInfoMsg } from '../netlink/rtnl';
import { TsnetError, contextualize, hasCode, invalid, withContext } from '../errors';
import { parseIp } from '../addr/cidr';
import type { NetNs } from '../netns';
import { kernelRef, rtnl, labelOf } from '../netns/internal';

/** What one link looks like, decoded from RTM_NEWLINK. */
export interface Link {
  index: number;
  name: string;
  /** IFLA_INFO_KIND: 'veth', 'bridge', 'dummy' ...; undefined for physical devices and lo. */
  kind?: string;
  flags: number;
  up: boolean;
  promisc: boolean;
  /** IFF_LOWER_UP: carrier. */
  lowerUp: boolean;
  operstate: string;
  mtu: number;
  mac?: string;
  /** ifindex of the master (the bridge this link is a port of). */
  master?: number;
  /** IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace). */
  peerIndex?: number;
  /** IFLA_LINK_NETNSID: the peer's namespace, as an nsid of this namespace; undefined when same namespace. */
  linkNetnsId?: number;
  /** Present on bridges. */
  bridge?: BridgeInfo;
  /** Present on bridge ports. */
  port?: BridgePortInfo;
  /** Present on vxlan devices. */
  vxlan?: VxlanInfo;
}

export interface VxlanInfo {
  vni: number;
  /** UDP destination port. */
  port: number;
  local?: string;
  /** ifindex of the underlay device. */
  link?: number;
  learning: boolean;
}

export interface BridgeInfo {
  stp: boolean;
  vlanFiltering: boolean;
  ageingTime?: number;
  forwardDelay?: number;
}

export interface BridgePortInfo {
  hairpin: boolean;
  state?: string;
  learning?: boolean;
}

interface LinkCommon {
  name: string;
  mtu?: number;
  mac?: string;
  /** Bridge to enslave the new link to (ifindex in the same namespace). */
  master?: number;
  up?: boolean;
}

/** What can be created: `ip link add NAME type KIND ...`. */
export type LinkSpec =
  | (LinkCommon & { kind: 'veth'; peer: { name: string; netns?: NetNs; mtu?: number; mac?: string } })
  | (LinkCommon & { kind: 'bridge'; stp?: boolean; vlanFiltering?: boolean })
  | (LinkCommon & { kind: 'dummy' })
  | (LinkCommon & VxlanSpec);

/** `ip link add NAME type vxlan id VNI [dstport PORT] [local IP] [dev DEV] [nolearning]`. */
export interface VxlanSpec {
  kind: 'vxlan';
  vni: number;
  /** UDP port (the kernel's default is 8472, as flannel's). */
  port?: number;
  /** The source address of encapsulated packets (the node's public IP). */
  local?: string;
  /** ifindex of the underlay device. */
  dev?: number;
  /** Learn remote MACs from received packets (default off: the FDB is programmed). */
  learning?: boolean;
}

/** A link named or numbered. */
export type LinkRef = string | number;

const OPERSTATE = ['unknown', 'notpresent', 'down', 'lowerlayerdown', 'testing', 'dormant', 'up'];
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

export function validateMac(mac: string): void {
  if (!MAC_RE.test(mac))
    throw invalid(`invalid MAC address ${JSON.stringify(mac)}: expected six hex octets like 02:42:ac:11:00:02`);
  if (parseInt(mac.slice(0, 2), 16) & 1)
    throw invalid(`invalid MAC address ${mac}: multicast bit set in the first octet`);
}

export function validateMtu(mtu: number): void {
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535)
    throw invalid(`invalid MTU ${mtu}: must be an integer from 68 to 65535`);
}

function decodeLink(payload: Buffer): Link {
  const hdr = ifinfomsg.decode(payload);
  const a = decodeAttrs(IFLA, payload.subarray(ifinfomsg.size));
  const info = a.linkinfo as AttrObject | undefined;
  const link: Link = {
    index: hdr.index,
    name: a.ifname as string,
    flags: hdr.flags,
    up: (hdr.flags & IFF.UP) !== 0,
    promisc: (hdr.flags & IFF.PROMISC) !== 0,
    lowerUp: (hdr.flags & IFF.LOWER_UP) !== 0,
    operstate: OPERSTATE[(a.operstate as number) ?? 0] ?? 'unknown',
    mtu: a.mtu as number,
  };
  if (info?.kind !== undefined) link.kind = info.kind as string;
  if (a.address !== undefined) link.mac = a.address as string;
  if (a.master) link.master = a.master as number;
  // IFLA_LINK equal to the own index means "no lower link", unless it names an index in another namespace.
  if (a.link !== undefined && (a.link !== hdr.index || a.link_netnsid !== undefined)) link.peerIndex = a.link as number;
  if (a.link_netnsid !== undefined && (a.link_netnsid as number) >= 0) link.linkNetnsId = a.link_netnsid as number;
  if (info?.kind === 'bridge' && info.data) {
    const d = info.data as AttrObject;
    link.bridge = {
      stp: ((d.stp_state as number | undefined) ?? 0) !== 0,
      vlanFiltering: ((d.vlan_filtering as number | undefined) ?? 0) !== 0,
    };
    if (d.ageing_time !== undefined) link.bridge.ageingTime = d.ageing_time as number;
    if (d.forward_delay !== undefined) link.bridge.forwardDelay = d.forward_delay as number;
  }
  if (info?.slave_kind === 'bridge' && info.slave_data) {
    const d = info.slave_data as AttrObject;
    link.port = { hairpin: ((d.mode as number | undefined) ?? 0) !== 0 };
    if (d.state !== undefined) link.port.state = BR_STATE[d.state as number] ?? String(d.state);
    if (d.learning !== undefined) link.port.learning = d.learning !== 0;
  }
  if (info?.kind === 'vxlan' && info.data) {
    const d = info.data as AttrObject;
    link.vxlan = { vni: d.id as number, port: d.port as number, learning: d.learning !== 0 };
    if (d.local !== undefined) link.vxlan.local = d.local as string;
    if (d.link) link.vxlan.link = d.link as number;
  }
  return link;
}

function refAttrs(ref: LinkRef): { hdr: Partial<IfInfoMsg>; attrs: AttrObject } {
  if (typeof ref === 'number') return { hdr: { index: ref }, attrs: {} };
  validateIfname(ref);
  return { hdr: { index: 0 }, attrs: { ifname: ref } };
}

function linkMsg(hdr: Partial<IfInfoMsg>, attrs: AttrObject): Buffer {
  return Buffer.concat([ifinfomsg.encode({ family: AF_UNSPEC, ...hdr }), encodeAttrs(IFLA, attrs)]);
}

/**
 * IFLA_NET_NS_FD (or IFLA_NET_NS_PID for the current namespace) naming `ns`;
 * nothing when absent. The fd is a checked duplicate: its release goes on
 * `held`, to be called once the request is sent.
 */
function nsAttr(ns: NetNs | undefined, doing: string, held: (() => void)[]): AttrObject {
  if (!ns) return {};
  const { ref, release } = kernelRef(ns, doing);
  held.push(release);
  return 'fd' in ref ? { net_ns_fd: ref.fd } : { net_ns_pid: ref.pid };
}

/** Builds attributes that may hold nsAttr duplicates: closes them if building fails. */
function building<T>(held: (() => void)[], build: () => T): T {
  try {
    return build();
  } catch (err) {
    for (const release of held) release();
    throw err;
  }
}

/** Sends a request whose attributes hold nsAttr duplicates, and closes them whatever happens. */
async function sending<T>(held: (() => void)[], send: () => Promise<T>): Promise<T> {
  try {
    return await send();
  } finally {
    for (const release of held) release();
  }
}

const show = (ref: LinkRef) => (typeof ref === 'number' ? `ifindex ${ref}` : ref);

/** All links of the namespace: `ip -d link show`. */
export async function list(h: NetNs): Promise<Link[]> {
  return withContext(`listing links in ${labelOf(h)}`, async () => {
    const msgs = await rtnl(h).dump(RTM.GETLINK, linkMsg({}, {}));
    return msgs.filter((m) => m.type === RTM.NEWLINK).map((m) => decodeLink(m.payload));
  });
}

/** One link by name or index, or undefined: `ip -d link show dev NAME`. */
export async function get(h: NetNs, ref: LinkRef): Promise<Link | undefined> {
  const { hdr, attrs } = refAttrs(ref);
  try {
    const msgs = await rtnl(h).request(RTM.GETLINK, 0, linkMsg(hdr, attrs));
    const m = msgs.find((x) => x.type === RTM.NEWLINK);
    return m ? decodeLink(m.payload) : undefined;
  } catch (err) {
    if (hasCode(err, 'ENODEV')) return undefined;
    throw contextualize(`looking up ${show(ref)} in ${labelOf(h)}`, err);
  }
}

/** One link that must exist; the error names it and the namespace. */
export async function mustGet(h: NetNs, ref: LinkRef): Promise<Link> {
  const link = await get(h, ref);
  if (!link) throw new TsnetError(`interface ${show(ref)} not found in ${labelOf(h)}`, { code: 'ENODEV' });
  return link;
}

const optNum = (b: boolean | undefined) => (b === undefined ? undefined : Number(b));
const bridgeData = (o: { stp?: boolean; vlanFiltering?: boolean }): AttrObject => ({
  stp_state: optNum(o.stp),
  vlan_filtering: optNum(o.vlanFiltering),
});

function vxlanData(spec: VxlanSpec): AttrObject {
  if (!Number.isInteger(spec.vni) || spec.vni < 1 || spec.vni > 0xffffff)
    throw invalid(`invalid VNI ${spec.vni}: must be an integer from 1 to 16777215`);
  if (spec.port !== undefined && (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65535))
    throw invalid(`invalid vxlan port ${spec.port}: must be an integer from 1 to 65535`);
  if (spec.local !== undefined && parseIp(spec.local).family !== 4)
    throw invalid(`invalid vxlan local address ${spec.local}: tsnet's vxlan devices are IPv4 underlay only`);
  return {
    id: spec.vni,
    port: spec.port ?? 8472,
    local: spec.local,
    link: spec.dev,
    learning: Number(spec.learning ?? false),
  };
}

function specAttrs(spec: LinkSpec, held: (() => void)[]): AttrObject {
  validateIfname(spec.name);
  if (spec.mtu !== undefined) validateMtu(spec.mtu);
  if (spec.mac !== undefined) validateMac(spec.mac);
  const attrs: AttrObject = { ifname: spec.name, mtu: spec.mtu, address: spec.mac, master: spec.master };
  switch (spec.kind) {
    case 'veth': {
      const p = spec.peer;
      validateIfname(p.name);
      if (p.mtu !== undefined) validateMtu(p.mtu);
      if (p.mac !== undefined) validateMac(p.mac);
      // The peer is created directly inside its namespace, under its final name:
      // moving a link later would bring it down and drop its addresses.
      const peerAttrs: AttrObject = {
        ifname: p.name,
        mtu: p.mtu ?? spec.mtu,
        address: p.mac,
        ...nsAttr(p.netns, `creating the peer ${p.name}`, held),
      };
      // No IFF_UP for the peer here: veth_open() refuses (ENOTCONN) until the pair is joined; bring it up afterwards.
      attrs.linkinfo = { kind: 'veth', data: { peer: { header: { family: AF_UNSPEC }, attrs: peerAttrs } } };
      break;
    }
    case 'bridge':
      attrs.linkinfo = { kind: 'bridge', data: bridgeData(spec) };
      break;
    case 'dummy':
      attrs.linkinfo = { kind: 'dummy' };
      break;
    case 'vxlan':
      attrs.linkinfo = { kind: 'vxlan', data: vxlanData(spec) };
      break;
  }
  return attrs;
}

/** Creates a link: `ip link add NAME [mtu N] [address MAC] [master BR] type KIND ...`. Fails with EEXIST if the name is taken. */
export async function add(h: NetNs, spec: LinkSpec): Promise<void> {
  const sock = rtnl(h);
  const held: (() => void)[] = [];
  const attrs = building(held, () => specAttrs(spec, held));
  const up = spec.up ? { flags: IFF.UP, change: IFF.UP } : {};
  const where =
    spec.kind === 'veth' && spec.peer.netns ? ` (peer ${spec.peer.name} in ${labelOf(spec.peer.netns)})` : '';
  await withContext(`creating ${spec.kind} ${spec.name}${where} in ${labelOf(h)}`, () =>
    sending(held, () => sock.request(RTM.NEWLINK, NLM_F.CREATE | NLM_F.EXCL, linkMsg(up, attrs))),
  );
}

/** Changes to an existing link, applied in one RTM_NEWLINK: `ip link set dev NAME ...`. */
export interface LinkChange {
  up?: boolean;
  /** `ip link set dev NAME promisc on|off`. */
  promisc?: boolean;
  name?: string;
  mtu?: number;
  mac?: string;
  /** ifindex of the new master; null removes it (`nomaster`). */
  master?: number | null;
  /** Move the link into this namespace (`netns NS`); it goes down and loses its addresses. */
  netns?: NetNs;
  /** Bridge options on a bridge (`ip link set dev BR type bridge stp_state 0 vlan_filtering 1`). */
  bridge?: { stp?: boolean; vlanFiltering?: boolean };
}

/** `ip link set dev REF [up|down] [name N] [mtu N] [address MAC] [master BR|nomaster] [netns NS]`. */
export async function set(h: NetNs, ref: LinkRef, change: LinkChange): Promise<void> {
  if (change.name !== undefined) validateIfname(change.name);
  if (change.mtu !== undefined) validateMtu(change.mtu);
  if (change.mac !== undefined) validateMac(change.mac);
  const { hdr, attrs } = refAttrs(ref);
  const mask = (change.up === undefined ? 0 : IFF.UP) | (change.promisc === undefined ? 0 : IFF.PROMISC);
  const flags =
    mask === 0 ? {} : { flags: (change.up ? IFF.UP : 0) | (change.promisc ? IFF.PROMISC : 0), change: mask };
  // Renaming by name: the old name selects (ifname) only when there is no new one; otherwise look up the index.
  if (change.name !== undefined && typeof ref === 'string') {
    hdr.index = (await mustGet(h, ref)).index;
    delete attrs.ifname;
  }
  const what = Object.entries(change)
    .map(([k, v]) => `${k} ${typeof v === 'object' && v !== null ? labelOf(v as NetNs) : String(v)}`)
    .join(', ');
  const sock = rtnl(h);
  const held: (() => void)[] = [];
  Object.assign(attrs, {
    ifname: change.name ?? attrs.ifname,
    mtu: change.mtu,
    address: change.mac,
    master: change.master === null ? 0 : change.master,
    ...building(held, () => nsAttr(change.netns, `moving ${show(ref)}`, held)),
    linkinfo: change.bridge && { kind: 'bridge', data: bridgeData(change.bridge) },
  });
  await withContext(`setting ${what} on ${show(ref)} in ${labelOf(h)}`, () =>
    sending(held, () => sock.request(RTM.NEWLINK, 0, linkMsg({ ...hdr, ...flags }, attrs))),
  );
}

export const setUp = (h: NetNs, ref: LinkRef) => set(h, ref, { up: true });
export const setDown = (h: NetNs, ref: LinkRef) => set(h, ref, { up: false });

/**
 * Deletes a link: `ip link del dev REF`. Deleting one end of a veth pair
 * deletes both. A link that does not exist is not an error (returns false).
 */
export async function del(h: NetNs, ref: LinkRef): Promise<boolean> {
  const { hdr, attrs } = refAttrs(ref);
  try {
    await rtnl(h).request(RTM.DELLINK, 0, linkMsg(hdr, attrs));
    return true;
  } catch (err) {
    if (hasCode(err, 'ENODEV')) return false;
    throw contextualize(`deleting ${show(ref)} in ${labelOf(h)}`, err);
  }
}

/** Per-port bridge options, sent as AF_BRIDGE IFLA_PROTINFO: `bridge link set dev PORT hairpin on`. */
export async function setBridgePort(
  h: NetNs,
  port: LinkRef,
  opts: { hairpin?: boolean; learning?: boolean },
): Promise<void> {
  const index = typeof port === 'number' ? port : (await mustGet(h, port)).index;
  const protinfo: AttrObject = { mode: optNum(opts.hairpin), learning: optNum(opts.learning) };
  await withContext(`setting bridge port options on ${show(port)} in ${labelOf(h)}`, () =>
    rtnl(h).request(
      RTM.SETLINK,
      0,
      Buffer.concat([ifinfomsg.encode({ family: AF_BRIDGE, index }), encodeAttrs(IFLA, { protinfo })]),
    ),
  );
}

export { validateIfname };
