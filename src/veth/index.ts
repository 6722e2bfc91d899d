/**
 * veth pairs: `ip link add NAME type veth peer name PEER netns NS`, and the
 * listing operators otherwise script from /sys/class/net/DEV/iflink: for each
 * veth here, which interface in which namespace is its other end.
 */
import * as fs from 'node:fs';
import * as link from '../link';
import * as addr from '../addr';
import * as netns from '../netns';
import { TsnetError } from '../errors';
import type { NetNs } from '../netns';
import { labelOf } from '../netns/internal';

export interface VethOptions {
  /** Namespace for the peer; it is created there directly, under its final name. Default: same namespace. */
  peerNetns?: NetNs;
  mtu?: number;
  mac?: string;
  peerMac?: string;
  /** Bridge (in this namespace) to attach this end to. */
  master?: string;
  /** Address for this end / the peer end (CIDR). */
  address?: string;
  peerAddress?: string;
  /** Bring both ends up (default true). */
  up?: boolean;
  /** A veth of that name already here: leave it as it is (`veth add` twice). */
  existOk?: boolean;
}

/**
 * Creates a veth pair and, optionally, enslaves this end to a bridge and
 * gives either end an address. Leaves nothing behind on failure.
 */
export async function add(h: NetNs, name: string, peer: string, o: VethOptions = {}): Promise<void> {
  link.validateIfname(name);
  link.validateIfname(peer);
  if (o.address) addr.parseCidr(o.address);
  if (o.peerAddress) addr.parseCidr(o.peerAddress);
  if (o.existOk && (await link.get(h, name))?.kind === 'veth') return;
  const peerNs = o.peerNetns ?? h;
  const up = o.up ?? true;
  let master: number | undefined;
  if (o.master !== undefined) {
    const br = await link.mustGet(h, o.master);
    if (br.kind !== 'bridge')
      throw new TsnetError(`${o.master} in ${labelOf(h)} is a ${br.kind ?? 'device'}, not a bridge`, {
        code: 'EINVAL',
      });
    master = br.index;
  }
  await link.add(h, {
    kind: 'veth',
    name,
    mtu: o.mtu,
    mac: o.mac,
    master,
    up,
    peer: { name: peer, netns: o.peerNetns, mac: o.peerMac },
  });
  try {
    if (up) await link.setUp(peerNs, peer);
    if (o.address) await addr.replace(h, o.address, name, { noDad: true });
    if (o.peerAddress) await addr.replace(peerNs, o.peerAddress, peer, { noDad: true });
  } catch (err) {
    await link.del(h, name);
    throw err;
  }
}

/** Deletes a veth pair by either end: `ip link del NAME`. Idempotent. */
export async function del(h: NetNs, name: string): Promise<boolean> {
  const l = await link.get(h, name);
  if (!l) return false;
  if (l.kind !== 'veth')
    throw new TsnetError(`${name} in ${labelOf(h)} is a ${l.kind ?? 'device'}, not a veth`, { code: 'EINVAL' });
  return link.del(h, l.index);
}

/** Where a veth's other end lives. */
export interface PeerNamespace {
  /** Name under /run/netns, when it has one. */
  name?: string;
  /** A process inside it, when it has no name (how Docker and podman containers appear). */
  pid?: number;
  /** Its nsid as seen from this namespace. */
  nsid?: number;
  /** Same namespace as this end. */
  same?: boolean;
}

export interface VethPair {
  name: string;
  index: number;
  mac?: string;
  up: boolean;
  master?: string;
  peer: { index: number; name?: string; netns: PeerNamespace };
}

/**
 * Every veth in the namespace with its peer: `ip -d link show type veth`
 * plus the iflink -> ifindex hunt across namespaces, done once.
 */
export async function list(h: NetNs): Promise<VethPair[]> {
  const links = await link.list(h);
  const byIndex = new Map(links.map((l) => [l.index, l]));
  const veths = links.filter((l) => l.kind === 'veth');
  const wanted = new Set(veths.map((v) => v.linkNetnsId).filter((x): x is number => x !== undefined));
  const where = await resolveNsids(h, wanted);
  const out: VethPair[] = [];
  for (const v of veths) {
    const pair: VethPair = { name: v.name, index: v.index, up: v.up, peer: { index: v.peerIndex ?? 0, netns: {} } };
    if (v.mac) pair.mac = v.mac;
    if (v.master !== undefined) pair.master = byIndex.get(v.master)?.name ?? String(v.master);
    if (v.linkNetnsId === undefined) {
      pair.peer.netns = { same: true };
      const p = v.peerIndex === undefined ? undefined : byIndex.get(v.peerIndex);
      if (p) pair.peer.name = p.name;
    } else {
      const found = where.get(v.linkNetnsId);
      pair.peer.netns = { nsid: v.linkNetnsId, ...(found?.info ?? {}) };
      if (found && v.peerIndex !== undefined) {
        const p = await link.get(found.handle, v.peerIndex);
        if (p) pair.peer.name = p.name;
      }
    }
    out.push(pair);
  }
  for (const f of where.values()) f.handle.close();
  return out;
}

/**
 * Maps nsids (as seen from `h`) to namespaces: named ones first, then the
 * namespaces of running processes for the rest (deduplicated by inode).
 * Handles in the result are open; the caller closes them.
 */
async function resolveNsids(
  h: NetNs,
  wanted: Set<number>,
): Promise<Map<number, { handle: NetNs; info: PeerNamespace }>> {
  const found = new Map<number, { handle: NetNs; info: PeerNamespace }>();
  if (wanted.size === 0) return found;
  const seen = new Set<number>([h.inode]);
  const consider = async (open: () => NetNs, info: PeerNamespace) => {
    let ns: NetNs;
    try {
      ns = open();
    } catch {
      return; // gone meanwhile, or not a namespace
    }
    const ino = ns.inode;
    const id = seen.has(ino) ? undefined : await netns.nsid(h, ns).catch(() => undefined);
    seen.add(ino);
    if (id !== undefined && wanted.has(id) && !found.has(id)) found.set(id, { handle: ns, info });
    else ns.close();
  };
  for (const name of netns.list()) {
    if (found.size === wanted.size) break;
    await consider(() => netns.open(name), { name });
  }
  if (found.size < wanted.size) {
    const pids = fs
      .readdirSync('/proc')
      .filter((d) => /^\d+$/.test(d))
      .map(Number)
      .sort((a, b) => a - b);
    for (const pid of pids) {
      if (found.size === wanted.size) break;
      let ino: number;
      try {
        ino = fs.statSync(`/proc/${pid}/ns/net`).ino;
      } catch {
        continue;
      }
      if (seen.has(ino)) continue;
      await consider(() => netns.openPid(pid), { pid });
    }
  }
  return found;
}
