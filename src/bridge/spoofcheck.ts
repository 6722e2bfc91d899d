/**
 * MAC spoof check on bridge ports (the reference bridge plugin's
 * `macspoofchk`): a frame entering the bridge from a guarded port must carry
 * the MAC that port's container was given, or it is dropped. nf_tables over
 * netlink, in a table of tsnet's own:
 *
 *   table bridge tsnet-spoofchk {
 *     set ports   { type ifname; }                 # guarded host-side ports
 *     set allowed { type ifname . ether_addr; }    # each port's one source MAC
 *     chain prerouting {
 *       type filter hook prerouting priority -300; policy accept;
 *       iifname @ports iifname . ether saddr != @allowed counter drop
 *     }
 *   }
 *
 * The reference makes two chains and a jump rule per container (found again
 * by its comment to delete it). Here one rule serves every port and a
 * container is two set elements, added and removed by value: O(1) and atomic
 * per container, with no rule handle to look up.
 */
import { hasCode, withContext } from '../errors';
import { validateMac, validateIfname } from '../link';
import {
  NFNL_MSG_BATCH_BEGIN,
  NFNL_MSG_BATCH_END,
  NFNL_SUBSYS_NFTABLES,
  NFPROTO,
  NFTA_CHAIN,
  NFTA_RULE,
  NFTA_SET,
  NFTA_SET_ELEM_LIST,
  NFTA_TABLE,
  NFT_MSG,
  NF_INET_HOOK,
  NFT_REG32_00,
  VERDICT,
  nftMsg,
} from '../netlink/nftables';
import { nfgenmsg } from '../netlink/nfnetlink';
import { NLM_F, type NetlinkSocket } from '../netlink/socket';
import { NlWriter } from '../netlink/writer';
import { decodeAttrs, type AttrObject, type Table } from '../netlink/attrs';
import type { NetNs } from '../netns';
import { exprAttrs, type Expr } from '../nat/nftables/expr';
import { labelOf, nfnl } from '../netns/internal';

export const SPOOFCHK_TABLE = 'tsnet-spoofchk';
const NFPROTO_BRIDGE = 7;
const IFNAMSIZ = 16;
/** nft's datatype ids (include/datatype.h) and the concatenation's packing, 6 bits per field, first field highest. */
const TYPE_ETHERADDR = 9;
const TYPE_IFNAME = 41;

/** The ifname key: the name, zero-padded to IFNAMSIZ, as `meta iifname` loads it. */
function ifnameKey(port: string): Buffer {
  const b = Buffer.alloc(IFNAMSIZ);
  b.write(port, 'ascii');
  return b;
}

/** The ifname . ether_addr key: 16 bytes of name, 6 of MAC, 2 of padding (registers are 4 bytes). */
function pairKey(port: string, mac: string): Buffer {
  return Buffer.concat([ifnameKey(port), Buffer.from(mac.replace(/:/g, ''), 'hex'), Buffer.alloc(2)]);
}

type Message = { type: number; flags: number; table: Table; attrs: AttrObject };

/** One nf_tables batch of the bridge family. */
function batch(messages: Message[], firstSeq: number): { bytes: Buffer; lastSeq: number } {
  const w = new NlWriter(4096);
  let seq = firstSeq;
  const frame = (type: number) => {
    const at = w.beginMessage(type, NLM_F.REQUEST, seq++);
    w.bytes(nfgenmsg(NFPROTO.UNSPEC, NFNL_SUBSYS_NFTABLES));
    w.endMessage(at);
  };
  frame(NFNL_MSG_BATCH_BEGIN);
  for (const m of messages) {
    const at = w.beginMessage(nftMsg(m.type), NLM_F.REQUEST | m.flags, seq++);
    w.bytes(nfgenmsg(NFPROTO_BRIDGE));
    w.attrs(m.table, m.attrs);
    w.endMessage(at);
  }
  const lastSeq = seq;
  frame(NFNL_MSG_BATCH_END);
  return { bytes: Buffer.from(w.view()), lastSeq };
}

/** Sends one batch; the first error the kernel reported (the batch was then not applied), or undefined. */
function apply(sock: NetlinkSocket, messages: Message[]): Error | undefined {
  const { errors } = sock.transact((first) => batch(messages, first));
  return [...errors.values()][0];
}

/** The table, its two sets and the one rule: created together, or not at all. */
function skeleton(): Message[] {
  const CREATE = NLM_F.CREATE;
  const R = NFT_REG32_00; // the name in registers 8-11, the MAC in 12-13
  return [
    { type: NFT_MSG.NEWTABLE, flags: CREATE | NLM_F.EXCL, table: NFTA_TABLE, attrs: { name: SPOOFCHK_TABLE } },
    {
      type: NFT_MSG.NEWSET,
      flags: CREATE,
      table: NFTA_SET,
      attrs: { table: SPOOFCHK_TABLE, name: 'ports', flags: 0, keyType: TYPE_IFNAME, keyLen: IFNAMSIZ, id: 1 },
    },
    {
      type: NFT_MSG.NEWSET,
      flags: CREATE,
      table: NFTA_SET,
      attrs: {
        table: SPOOFCHK_TABLE,
        name: 'allowed',
        flags: 0,
        keyType: (TYPE_IFNAME << 6) | TYPE_ETHERADDR,
        keyLen: IFNAMSIZ + 8,
        id: 2,
      },
    },
    {
      type: NFT_MSG.NEWCHAIN,
      flags: CREATE,
      table: NFTA_CHAIN,
      attrs: {
        table: SPOOFCHK_TABLE,
        name: 'prerouting',
        hook: { hooknum: NF_INET_HOOK.prerouting, priority: -300 },
        policy: VERDICT.accept,
        type: 'filter',
      },
    },
    {
      type: NFT_MSG.NEWRULE,
      flags: CREATE | NLM_F.APPEND,
      table: NFTA_RULE,
      attrs: {
        table: SPOOFCHK_TABLE,
        chain: 'prerouting',
        expressions: (
          [
            { kind: 'meta', key: 'iifname', dreg: R },
            { kind: 'lookup', set: 'ports', setId: 1, sreg: R },
            { kind: 'payload', base: 'll', offset: 6, len: 6, dreg: R + 4 }, // ether saddr
            { kind: 'lookup', set: 'allowed', setId: 2, sreg: R, invert: true },
            { kind: 'counter' },
            { kind: 'verdict', verdict: { code: 'drop' } },
          ] satisfies Expr[]
        ).map(exprAttrs),
      },
    },
  ];
}

function elements(type: number, set: 'ports' | 'allowed', key: Buffer): Message {
  return {
    type,
    flags: type === NFT_MSG.NEWSETELEM ? NLM_F.CREATE : 0,
    table: NFTA_SET_ELEM_LIST,
    attrs: { table: SPOOFCHK_TABLE, set, elements: [{ key: { value: key } }] },
  };
}

/**
 * Guards bridge port `port` in `h`: frames entering from it must come from
 * `mac`. Idempotent. Two set elements, nothing read first (an ADD pays no
 * dump of every port's MAC); another MAC for the same port is allowed beside
 * the first: unguard() first to replace it.
 */
export async function guard(h: NetNs, port: string, mac: string): Promise<void> {
  validateIfname(port);
  validateMac(mac);
  await withContext(`guarding bridge port ${port} against MAC spoofing in ${labelOf(h)}`, async () => {
    const sock = nfnl(h);
    const made = apply(sock, skeleton());
    if (made && !hasCode(made, 'EEXIST')) throw made;
    const err = apply(sock, [
      elements(NFT_MSG.NEWSETELEM, 'allowed', pairKey(port, mac.toLowerCase())),
      elements(NFT_MSG.NEWSETELEM, 'ports', ifnameKey(port)),
    ]);
    if (err) throw err;
  });
}

/** Removes port `port`'s guard (its ports element and every allowed MAC of it). Idempotent: false when there was none. */
export async function unguard(h: NetNs, port: string): Promise<boolean> {
  validateIfname(port);
  return withContext(`removing the MAC spoof guard of bridge port ${port} in ${labelOf(h)}`, async () => {
    const sock = nfnl(h);
    let removed = false;
    for (const mac of await allowedMacs(sock, port)) {
      const err = apply(sock, [elements(NFT_MSG.DELSETELEM, 'allowed', pairKey(port, mac))]);
      if (err && !hasCode(err, 'ENOENT')) throw err;
      removed ||= !err;
    }
    const err = apply(sock, [elements(NFT_MSG.DELSETELEM, 'ports', ifnameKey(port))]);
    if (err && !hasCode(err, 'ENOENT')) throw err;
    return removed || !err;
  });
}

async function allowedMacs(sock: NetlinkSocket, port: string): Promise<string[]> {
  return (await pairs(sock)).filter(([p]) => p === port).map(([, mac]) => mac);
}

/** The allowed set's elements as [port, mac]; none when the table is absent. */
async function pairs(sock: NetlinkSocket): Promise<[string, string][]> {
  let msgs;
  try {
    const w = new NlWriter(256);
    w.bytes(nfgenmsg(NFPROTO_BRIDGE));
    w.attrs(NFTA_SET_ELEM_LIST, { table: SPOOFCHK_TABLE, set: 'allowed' });
    msgs = await sock.dump(nftMsg(NFT_MSG.GETSETELEM), Buffer.from(w.view()));
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return [];
    throw err;
  }
  const out: [string, string][] = [];
  for (const m of msgs) {
    const a = decodeAttrs(NFTA_SET_ELEM_LIST, m.payload.subarray(4)) as { elements?: { key?: { value?: Buffer } }[] };
    for (const e of a.elements ?? []) {
      const k = e.key?.value;
      if (!k || k.length < IFNAMSIZ + 6) continue;
      const port = k.subarray(0, IFNAMSIZ).toString('ascii').replace(/\0.*$/s, '');
      const mac = [...k.subarray(IFNAMSIZ, IFNAMSIZ + 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
      out.push([port, mac]);
    }
  }
  return out;
}
