/**
 * Forwarding database entries of a device itself (NTF_SELF): `bridge fdb
 * replace|del|show MAC dev DEV dst IP self permanent`, over RTM_*NEIGH with
 * family AF_BRIDGE. On a vxlan device an entry says which remote VTEP (the
 * peer's public IP) a MAC lives behind: flannel's vxlan peers, one per node.
 */
import { decodeAttrs, encodeAttrs } from '../netlink/attrs';
import { AF_BRIDGE, NDA, NTF, NUD, RTM, ndmsg } from '../netlink/rtnl';
import { NLM_F } from '../netlink/socket';
import type { BatchMessage } from '../netlink/batch';
import { hasCode, withContext } from '../errors';
import { mustGet, validateMac, type LinkRef } from '../link';
import { parseIp } from '../addr';
import type { NetNs } from '../netns';
import { labelOf, rtnl } from '../netns/internal';

export interface FdbEntry {
  /** ifindex of the device the entry is on. */
  index: number;
  mac: string;
  /** The remote VTEP (vxlan). */
  dst?: string;
  /** NTF_SELF: the device's own table, not its bridge master's. */
  self: boolean;
  permanent: boolean;
}

export interface FdbSpec {
  dev: LinkRef;
  mac: string;
  dst: string;
}

/** The entries of one device, or all: `bridge fdb show [dev DEV]`. */
export async function list(h: NetNs, opts: { dev?: LinkRef } = {}): Promise<FdbEntry[]> {
  return withContext(`listing FDB entries in ${labelOf(h)}`, async () => {
    const index = opts.dev === undefined ? undefined : (await mustGet(h, opts.dev)).index;
    const msgs = await rtnl(h).dump(RTM.GETNEIGH, ndmsg.encode({ family: AF_BRIDGE }));
    const out: FdbEntry[] = [];
    for (const m of msgs) {
      if (m.type !== RTM.NEWNEIGH) continue;
      const hdr = ndmsg.decode(m.payload);
      if (hdr.family !== AF_BRIDGE || (index !== undefined && hdr.ifindex !== index)) continue;
      const a = decodeAttrs(NDA, m.payload.subarray(ndmsg.size));
      if (typeof a.lladdr !== 'string') continue;
      const e: FdbEntry = {
        index: hdr.ifindex,
        mac: a.lladdr,
        self: (hdr.flags & NTF.SELF) !== 0,
        permanent: (hdr.state & NUD.PERMANENT) !== 0,
      };
      if (typeof a.dst === 'string') e.dst = a.dst;
      out.push(e);
    }
    return out;
  });
}

/** The RTM_NEWNEIGH (replace, self, permanent) or RTM_DELNEIGH payload for an entry on ifindex `index`. */
export function fdbBatchMessage(e: FdbSpec, index: number, op: 'replace' | 'del'): BatchMessage {
  validateMac(e.mac);
  const payload = Buffer.concat([
    ndmsg.encode({ family: AF_BRIDGE, ifindex: index, state: NUD.PERMANENT, flags: NTF.SELF }),
    encodeAttrs(NDA, { lladdr: e.mac, dst: parseIp(e.dst).address }),
  ]);
  return op === 'del'
    ? { type: RTM.DELNEIGH, flags: 0, payload }
    : { type: RTM.NEWNEIGH, flags: NLM_F.CREATE | NLM_F.REPLACE, payload };
}

/** `bridge fdb replace MAC dev DEV dst IP self permanent`: idempotent. */
export async function replace(h: NetNs, e: FdbSpec): Promise<void> {
  await withContext(`replacing the FDB entry ${e.mac} dst ${e.dst} on ${String(e.dev)} in ${labelOf(h)}`, async () => {
    const m = fdbBatchMessage(e, (await mustGet(h, e.dev)).index, 'replace');
    await rtnl(h).request(m.type, m.flags, m.payload);
  });
}

/** `bridge fdb del MAC dev DEV dst IP self`: false when there was none. */
export async function del(h: NetNs, e: FdbSpec): Promise<boolean> {
  return withContext(`deleting the FDB entry ${e.mac} dst ${e.dst} on ${String(e.dev)} in ${labelOf(h)}`, async () => {
    const link = await mustGet(h, e.dev).catch((err: unknown) => {
      if (hasCode(err, 'ENODEV')) return undefined;
      throw err;
    });
    if (!link) return false;
    const m = fdbBatchMessage(e, link.index, 'del');
    try {
      await rtnl(h).request(m.type, m.flags, m.payload);
      return true;
    } catch (err) {
      if (hasCode(err, 'ENOENT', 'ESRCH')) return false;
      throw err;
    }
  });
}
