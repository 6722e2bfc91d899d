/**
 * Nexthop objects: `ip nexthop replace id N via GW dev DEV [onlink]`, over
 * RTM_NEWNEXTHOP / DELNEXTHOP / GETNEXTHOP. Routes then name one by id
 * (`ip route replace DST nhid N`). The kernel hashes a route's fib_info
 * without its gateway, so thousands of routes with a gateway each land in
 * one hash bucket and programming them goes quadratic; nexthop objects are
 * hashed by id.
 */
import { decodeAttrs, encodeAttrs } from '../netlink/attrs';
import { AF_INET, AF_INET6, AF_UNSPEC, NHA, RTM, RTNH_F, RTPROT, nhmsg } from '../netlink/rtnl';
import { NLM_F } from '../netlink/socket';
import type { BatchMessage } from '../netlink/batch';
import { hasCode, invalid, withContext } from '../errors';
import { parseIp } from '../addr/cidr';
import type { NetNs } from '../netns';
import { labelOf, rtnl } from '../netns/internal';

export interface NexthopSpec {
  id: number;
  via?: string;
  /** ifindex of the device. */
  dev?: number;
  onlink?: boolean;
  blackhole?: boolean;
  /** RTPROT_* (default boot, as `ip nexthop`). */
  protocol?: number;
}

export interface Nexthop {
  id: number;
  gateway?: string;
  dev?: number;
  onlink: boolean;
  blackhole: boolean;
  protocol: number;
}

export function nexthopBatchMessage(n: NexthopSpec, op: 'replace' | 'del'): BatchMessage {
  if (!Number.isInteger(n.id) || n.id < 1 || n.id > 0xffffffff) throw invalid(`invalid nexthop id ${n.id}`);
  if (op === 'del') {
    return {
      type: RTM.DELNEXTHOP,
      flags: 0,
      payload: Buffer.concat([nhmsg.encode({}), encodeAttrs(NHA, { id: n.id })]),
    };
  }
  const gw = n.via === undefined ? undefined : parseIp(n.via);
  if (!n.blackhole && n.dev === undefined) throw invalid(`nexthop ${n.id}: needs a device`);
  const payload = Buffer.concat([
    nhmsg.encode({
      family: n.blackhole ? AF_UNSPEC : gw?.family === 6 ? AF_INET6 : AF_INET,
      protocol: n.protocol ?? RTPROT.BOOT,
      flags: n.onlink ? RTNH_F.ONLINK : 0,
    }),
    encodeAttrs(NHA, n.blackhole ? { id: n.id, blackhole: true } : { id: n.id, gateway: gw?.address, oif: n.dev }),
  ]);
  return { type: RTM.NEWNEXTHOP, flags: NLM_F.CREATE | NLM_F.REPLACE, payload };
}

/** `ip nexthop replace id N ...`: idempotent. */
export async function replace(h: NetNs, n: NexthopSpec): Promise<void> {
  const m = nexthopBatchMessage(n, 'replace');
  await withContext(`replacing nexthop ${n.id} in ${labelOf(h)}`, () => rtnl(h).request(m.type, m.flags, m.payload));
}

/** `ip nexthop del id N`: false when there was none. */
export async function del(h: NetNs, id: number): Promise<boolean> {
  const m = nexthopBatchMessage({ id }, 'del');
  try {
    await withContext(`deleting nexthop ${id} in ${labelOf(h)}`, () => rtnl(h).request(m.type, m.flags, m.payload));
    return true;
  } catch (err) {
    if (hasCode(err, 'ENOENT', 'ESRCH')) return false;
    throw err;
  }
}

/** `ip nexthop show`. */
export async function list(h: NetNs): Promise<Nexthop[]> {
  return withContext(`listing nexthops in ${labelOf(h)}`, async () => {
    const msgs = await rtnl(h).dump(RTM.GETNEXTHOP, nhmsg.encode({}));
    return msgs
      .filter((m) => m.type === RTM.NEWNEXTHOP)
      .map((m) => {
        const hdr = nhmsg.decode(m.payload);
        const a = decodeAttrs(NHA, m.payload.subarray(nhmsg.size));
        const n: Nexthop = {
          id: a.id as number,
          onlink: (hdr.flags & RTNH_F.ONLINK) !== 0,
          blackhole: a.blackhole === true,
          protocol: hdr.protocol,
        };
        if (a.gateway !== undefined) n.gateway = a.gateway as string;
        if (a.oif !== undefined) n.dev = a.oif as number;
        return n;
      });
  });
}
