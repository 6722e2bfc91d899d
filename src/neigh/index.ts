/**
 * Neighbour entries (the ARP and NDP caches): `ip neigh show|del`, over
 * RTM_GETNEIGH / RTM_DELNEIGH, and the announcements a host sends when an
 * address moves to a new MAC (./announce.ts).
 */
import { decodeAttrs, encodeAttrs } from '../netlink/attrs';
import { AF_INET, AF_INET6, AF_UNSPEC, NDA, NUD, RTM, ndmsg } from '../netlink/rtnl';
import { hasCode, withContext } from '../errors';
import { mustGet, validateMac, type LinkRef } from '../link';
import { NLM_F } from '../netlink/socket';
import type { BatchMessage } from '../netlink/batch';
import { parseIp } from '../addr';
import type { NetNs } from '../netns';
import { labelOf, rtnl } from '../netns/internal';

export { announce } from './announce';
export * as fdb from './fdb';

export type NeighState = Lowercase<keyof typeof NUD>;

export interface Neigh {
  /** ifindex of the interface the entry is on. */
  index: number;
  address: string;
  /** Absent while the entry is incomplete or failed. */
  lladdr?: string;
  /** The entry's states, as `ip neigh` names them (lower case): ['reachable'], ['stale'], ['permanent'] ... */
  state: NeighState[];
}

const STATE_NAMES = Object.entries(NUD) as [keyof typeof NUD, number][];

function decodeNeigh(payload: Buffer): Neigh | undefined {
  const hdr = ndmsg.decode(payload);
  // An AF_UNSPEC dump carries the bridge FDB too (./fdb.ts): its NDA_DST is a remote VTEP, not a neighbour.
  if (hdr.family !== AF_INET && hdr.family !== AF_INET6) return undefined;
  const a = decodeAttrs(NDA, payload.subarray(ndmsg.size));
  if (typeof a.dst !== 'string') return undefined;
  const n: Neigh = {
    index: hdr.ifindex,
    address: a.dst,
    state: STATE_NAMES.filter(([, bit]) => hdr.state & bit).map(([name]) => name.toLowerCase() as NeighState),
  };
  if (typeof a.lladdr === 'string') n.lladdr = a.lladdr;
  return n;
}

/** The neighbour entries of the namespace (both families), or of one interface: `ip neigh show [dev DEV]`. */
export async function list(h: NetNs, opts: { dev?: LinkRef } = {}): Promise<Neigh[]> {
  return withContext(`listing neighbour entries in ${labelOf(h)}`, async () => {
    const index = opts.dev === undefined ? undefined : (await mustGet(h, opts.dev)).index;
    const msgs = await rtnl(h).dump(RTM.GETNEIGH, ndmsg.encode({ family: AF_UNSPEC }));
    return msgs
      .filter((m) => m.type === RTM.NEWNEIGH)
      .map((m) => decodeNeigh(m.payload))
      .filter((n): n is Neigh => n !== undefined && (index === undefined || n.index === index));
  });
}

function neighMsg(index: number, ip: string): Buffer {
  const p = parseIp(ip);
  return Buffer.concat([
    ndmsg.encode({ family: p.family === 4 ? AF_INET : AF_INET6, ifindex: index }),
    encodeAttrs(NDA, { dst: p.address }),
  ]);
}

/** A static entry: `ip neigh replace IP lladdr MAC dev DEV nud permanent` (flannel's vxlan peers). */
export interface NeighSpec {
  dev: LinkRef;
  address: string;
  lladdr: string;
}

/** The RTM_NEWNEIGH (replace, permanent) or RTM_DELNEIGH payload for an entry on ifindex `index`: for batches. */
export function neighBatchMessage(n: NeighSpec, index: number, op: 'replace' | 'del'): BatchMessage {
  const p = parseIp(n.address);
  validateMac(n.lladdr);
  const payload = Buffer.concat([
    ndmsg.encode({ family: p.family === 4 ? AF_INET : AF_INET6, ifindex: index, state: NUD.PERMANENT }),
    encodeAttrs(NDA, { dst: p.address, lladdr: op === 'del' ? undefined : n.lladdr }),
  ]);
  return op === 'del'
    ? { type: RTM.DELNEIGH, flags: 0, payload }
    : { type: RTM.NEWNEIGH, flags: NLM_F.CREATE | NLM_F.REPLACE, payload };
}

/** Adds or replaces a permanent entry: `ip neigh replace IP lladdr MAC dev DEV nud permanent`. Idempotent. */
export async function replace(h: NetNs, n: NeighSpec): Promise<void> {
  await withContext(`replacing the neighbour entry ${n.address} on ${String(n.dev)} in ${labelOf(h)}`, async () => {
    const m = neighBatchMessage(n, (await mustGet(h, n.dev)).index, 'replace');
    await rtnl(h).request(m.type, m.flags, m.payload);
  });
}

/**
 * Deletes the entry for `ip` on `dev`: `ip neigh del IP dev DEV`. Idempotent:
 * false when there was none (or the interface is gone).
 */
export async function del(h: NetNs, dev: LinkRef, ip: string): Promise<boolean> {
  parseIp(ip);
  return withContext(`deleting the neighbour entry ${ip} on ${String(dev)} in ${labelOf(h)}`, async () => {
    let index: number;
    try {
      index = (await mustGet(h, dev)).index;
    } catch (err) {
      if (hasCode(err, 'ENODEV')) return false;
      throw err;
    }
    try {
      await rtnl(h).request(RTM.DELNEIGH, 0, neighMsg(index, ip));
      return true;
    } catch (err) {
      if (hasCode(err, 'ENOENT', 'ESRCH')) return false;
      throw err;
    }
  });
}
