/**
 * Reads an nf_tables batch (what tsnet sends, or what `nft -f` sent, captured
 * with strace) into comparable text: one line per message with its decoded
 * attributes, rules as `nft --debug=netlink` prints their expressions.
 * Sequence numbers and set ids are left out (they differ between writers and
 * mean nothing once applied).
 */
import { decodeAttrs, type Table } from '../../src/netlink/attrs';
import {
  NFTA_CHAIN,
  NFTA_RULE,
  NFTA_SET,
  NFTA_SET_ELEM_LIST,
  NFTA_TABLE,
  NFT_MSG,
  NFNL_SUBSYS_NFTABLES,
  type ExprAttrs,
} from '../../src/netlink/nftables';
import { decodeExpr, formatExpr } from '../../src/nat/nftables/expr';

const NAMES = new Map<number, string>(Object.entries(NFT_MSG).map(([k, v]) => [v, k]));
const TABLES: Partial<Record<string, Table>> = {
  NEWTABLE: NFTA_TABLE,
  DELTABLE: NFTA_TABLE,
  NEWCHAIN: NFTA_CHAIN,
  DELCHAIN: NFTA_CHAIN,
  NEWRULE: NFTA_RULE,
  DELRULE: NFTA_RULE,
  NEWSET: NFTA_SET,
  DELSET: NFTA_SET,
  NEWSETELEM: NFTA_SET_ELEM_LIST,
  DELSETELEM: NFTA_SET_ELEM_LIST,
};

function show(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return v.toString('hex');
  if (typeof v === 'bigint') return `${v}n`;
  if (Array.isArray(v)) return v.map(show);
  // Keys sorted: attribute order on the wire means nothing to the kernel.
  if (v && typeof v === 'object')
    return Object.fromEntries(
      Object.entries(v)
        .filter(([k]) => k !== 'id' && k !== 'setId')
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, x]) => [k, show(x)]),
    );
  return v;
}

export function decodeBatch(buf: Buffer): string[] {
  const out: string[] = [];
  let off = 0;
  while (off + 16 <= buf.length) {
    const len = buf.readUInt32LE(off);
    const type = buf.readUInt16LE(off + 4);
    const flags = buf.readUInt16LE(off + 6);
    const payload = buf.subarray(off + 20, off + len);
    const family = buf.readUInt8(off + 16);
    off += (len + 3) & ~3;
    if (type >> 8 !== NFNL_SUBSYS_NFTABLES) {
      out.push(type === 0x10 ? 'BATCH_BEGIN' : type === 0x11 ? 'BATCH_END' : `type ${type}`);
      continue;
    }
    const name = NAMES.get(type & 0xff) ?? String(type & 0xff);
    const a = TABLES[name] ? decodeAttrs(TABLES[name]!, payload) : {};
    if (name === 'NEWRULE') {
      const exprs = ((a.expressions ?? []) as ExprAttrs[]).map((e) => {
        const d = decodeExpr(e);
        return d ? formatExpr(d) : `[ ${String(e.name)} ${JSON.stringify(show(e.data))} ]`;
      });
      delete a.expressions;
      out.push(
        `${name} flags=0x${flags.toString(16)} family=${family} ${JSON.stringify(show(a))}\n  ${exprs.join('\n  ')}`,
      );
    } else {
      out.push(`${name} flags=0x${flags.toString(16)} family=${family} ${JSON.stringify(show(a))}`);
    }
  }
  return out;
}
