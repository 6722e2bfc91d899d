/**
 * The conntrack table of a namespace over ctnetlink: list flows, delete the
 * ones that match (`conntrack -L`, `conntrack -D -p udp --orig-dst VIP
 * --reply-src ENDPOINT`). Needed when NAT targets change: an established
 * flow, UDP above all, keeps its old translation until its entry is gone.
 */
import { hasCode, contextualize } from '../errors';
import type { NetNs } from '../netns';
import { decodeAttrs, encodeAttr, encodeAttrs, type AttrObject } from '../netlink/attrs';
import { CTA, CTA_TUPLE, CTA_TUPLE_ORIG, CTA_ZONE, IPCTNL_MSG, ctMsg } from '../netlink/ctnetlink';
import { nfgenmsg } from '../netlink/nfnetlink';
import { AF_INET, AF_INET6 } from '../netlink/rtnl';
import type { NetlinkSocket } from '../netlink/socket';
import { nfnl, labelOf } from '../netns/internal';

export interface Tuple {
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
}

export interface Flow {
  family: 4 | 6;
  /** IP protocol number (6 tcp, 17 udp). */
  proto: number;
  orig: Tuple;
  reply: Tuple;
  /** @internal what a delete addresses */
  raw: { tuple: AttrObject; zone?: Buffer };
}

export const IPPROTO = { tcp: 6, udp: 17 } as const;

function tuple(t: AttrObject | undefined, family: 4 | 6): Tuple | undefined {
  const ip = t?.ip as AttrObject | undefined;
  const proto = t?.proto as AttrObject | undefined;
  const src = (family === 4 ? ip?.v4src : ip?.v6src) as string | undefined;
  const dst = (family === 4 ? ip?.v4dst : ip?.v6dst) as string | undefined;
  if (!src || !dst) return undefined;
  return { src, dst, sport: proto?.sport as number | undefined, dport: proto?.dport as number | undefined };
}

/** Every flow of `family` in the conntrack table of `ns` (`conntrack -L -f ipv4`). */
export async function list(ns: NetNs, family: 4 | 6): Promise<Flow[]> {
  return dump(ns, nfnl(ns), family);
}

async function dump(ns: NetNs, sock: NetlinkSocket, family: 4 | 6): Promise<Flow[]> {
  try {
    const msgs = await sock.dump(ctMsg(IPCTNL_MSG.GET), nfgenmsg(family === 4 ? AF_INET : AF_INET6));
    const flows: Flow[] = [];
    for (const m of msgs) {
      const a = decodeAttrs(CTA, m.payload.subarray(4));
      const orig = tuple(a.orig as AttrObject, family);
      const reply = tuple(a.reply as AttrObject, family);
      if (!orig || !reply) continue;
      const proto = (((a.orig as AttrObject).proto as AttrObject | undefined)?.num as number | undefined) ?? 0;
      flows.push({ family, proto, orig, reply, raw: { tuple: a.orig as AttrObject, zone: a.unknown?.[CTA_ZONE] } });
    }
    return flows;
  } catch (err) {
    throw contextualize(`listing conntrack entries in ${labelOf(ns)}`, err);
  }
}

/** Deletes every flow of `family` that `match` selects (`conntrack -D ...`); returns how many went. */
export async function deleteFlows(ns: NetNs, family: 4 | 6, match: (f: Flow) => boolean): Promise<number> {
  // The namespace's kept NETLINK_NETFILTER socket: closing one makes the kernel wait for nf_tables' RCU work.
  const sock = nfnl(ns);
  let n = 0;
  {
    const victims = (await dump(ns, sock, family)).filter(match);
    await Promise.all(
      victims.map(async (f) => {
        const parts = [
          nfgenmsg(family === 4 ? AF_INET : AF_INET6),
          encodeAttr(CTA_TUPLE_ORIG, encodeAttrs(CTA_TUPLE, f.raw.tuple), true),
        ];
        if (f.raw.zone) parts.push(encodeAttr(CTA_ZONE, f.raw.zone));
        try {
          await sock.request(ctMsg(IPCTNL_MSG.DELETE), 0, Buffer.concat(parts));
          n++;
        } catch (err) {
          if (!hasCode(err, 'ENOENT'))
            throw contextualize(
              `deleting conntrack entry ${f.orig.src}->${f.orig.dst}:${f.orig.dport} in ${labelOf(ns)}`,
              err,
            );
        }
      }),
    );
  }
  return n;
}
