/**
 * One node's network as data: what `ip -d link`, `ip addr`, `ip route`,
 * `bridge link` and the veth iflink hunt show, in the node and in every
 * namespace its veths lead to, plus the NAT engine's services and forwards
 * with the kernel's counters. Trace, doctor and topology all read this one
 * picture, gathered over netlink (no `ip` is run).
 */
import * as addr from '../addr';
import * as bridge from '../bridge';
import * as link from '../link';
import * as netns from '../netns';
import * as route from '../route';
import * as veth from '../veth';
import type { NatEngine } from '../nat/engine';
import type { DesiredState } from '../nat/model';
import type { ServiceCounters } from '../nat/backends/types';

export interface InterfaceView {
  name: string;
  index: number;
  kind?: string;
  mac?: string;
  mtu: number;
  up: boolean;
  /** CIDRs, global and host scope. */
  addresses: string[];
  /** The bridge it is a port of (a name in the same namespace). */
  master?: string;
  /** A veth's other end: its namespace (by id, see NamespaceView.id) and name. */
  peer?: { ns: string; name?: string };
  /** As a bridge port: hairpin mode and STP state. */
  port?: { hairpin: boolean; state?: string };
}

export interface NamespaceView {
  /** Stable id within one view: the name under /run/netns, else "pid N", else "inode N". */
  id: string;
  /** The node itself (the namespace inspected). */
  node: boolean;
  inode: number;
  interfaces: InterfaceView[];
  /** Default routes' gateways (IPv4 and IPv6). */
  gateways: string[];
}

export interface NodeView {
  namespaces: NamespaceView[];
  bridges: bridge.BridgeSummary[];
  nat: DesiredState;
  /** Per service, when rules were applied. */
  counters: Record<string, ServiceCounters>;
}

function idOf(p: veth.PeerNamespace, inode?: number): string {
  if (p.name) return p.name;
  if (p.pid !== undefined) return `pid ${p.pid}`;
  return `inode ${inode ?? p.nsid ?? '?'}`;
}

async function namespaceView(h: netns.NetNs, id: string, node: boolean): Promise<NamespaceView> {
  const [links, addrs, routes] = await Promise.all([link.list(h), addr.list(h), route.list(h)]);
  const byIndex = new Map(links.map((l) => [l.index, l]));
  const interfaces = links.map((l): InterfaceView => {
    const v: InterfaceView = {
      name: l.name,
      index: l.index,
      mtu: l.mtu,
      up: l.up,
      addresses: addrs.filter((a) => a.index === l.index && a.scope !== 'link').map((a) => a.cidr),
    };
    if (l.kind) v.kind = l.kind;
    if (l.mac) v.mac = l.mac;
    if (l.master !== undefined) v.master = byIndex.get(l.master)?.name ?? String(l.master);
    if (l.port) v.port = { hairpin: l.port.hairpin, ...(l.port.state ? { state: l.port.state } : {}) };
    return v;
  });
  const gateways = routes.filter((r) => r.dst === 'default' && r.gateway).map((r) => r.gateway!);
  return { id, node, inode: h.inode, interfaces, gateways };
}

/**
 * The node `host` and every namespace its veths lead to. `engines` add their
 * NAT state and counters (engines of `host`: one per state directory).
 */
export async function inspectNode(host: netns.NetNs, engines: readonly NatEngine[] = []): Promise<NodeView> {
  const nodeView = await namespaceView(host, host.name ?? (host.isCurrent ? 'node' : `inode ${host.inode}`), true);
  const [pairs, bridges] = await Promise.all([veth.list(host), bridge.list(host)]);
  const namespaces = [nodeView];
  const seen = new Map<string, NamespaceView>();
  for (const p of pairs) {
    const me = nodeView.interfaces.find((i) => i.index === p.index);
    if (p.peer.netns.same) {
      if (me && p.peer.name) me.peer = { ns: nodeView.id, name: p.peer.name };
      continue;
    }
    let h: netns.NetNs | undefined;
    try {
      h = p.peer.netns.name
        ? netns.open(p.peer.netns.name)
        : p.peer.netns.pid !== undefined
          ? netns.openPid(p.peer.netns.pid)
          : undefined;
    } catch {
      h = undefined; // gone meanwhile
    }
    const id = idOf(p.peer.netns, h?.inode);
    if (me) me.peer = { ns: id, ...(p.peer.name ? { name: p.peer.name } : {}) };
    if (!h) continue;
    try {
      let view = seen.get(id);
      if (!view) {
        view = await namespaceView(h, id, false);
        seen.set(id, view);
        namespaces.push(view);
      }
      const other = view.interfaces.find((i) => i.index === p.peer.index);
      if (other) other.peer = { ns: nodeView.id, name: p.name };
    } finally {
      h.close();
    }
  }
  const nat: DesiredState = { services: [], rules: [], forwards: [] };
  const counters: Record<string, ServiceCounters> = {};
  for (const e of engines) {
    const st = e.read();
    nat.services.push(...st.services);
    nat.rules.push(...st.rules);
    nat.forwards.push(...st.forwards);
    for (const [name, c] of await e.counters()) counters[name] = c;
  }
  return { namespaces, bridges, nat, counters };
}

/** The namespace (and interface) holding `ip` in the view, if any: the node when it holds it too (it comes first). */
export function ownerOf(view: NodeView, ip: string): { ns: NamespaceView; iface: InterfaceView } | undefined {
  for (const ns of view.namespaces) {
    for (const iface of ns.interfaces) if (iface.addresses.some((c) => c.split('/')[0] === ip)) return { ns, iface };
  }
  return undefined;
}

/** The node's own namespace in the view (the namespace inspected). */
export function nodeOf(view: NodeView): NamespaceView {
  return view.namespaces.find((n) => n.node)!;
}

/** The node's end of an interface's veth pair, if the pair leads to the node (`node`: nodeOf the view). */
export function hostEndOf(node: NamespaceView, i: InterfaceView): InterfaceView | undefined {
  return i.peer?.ns === node.id ? node.interfaces.find((x) => x.name === i.peer!.name) : undefined;
}
