/**
 * From the typed rule items of ./ruleset to kernel expressions, exactly as
 * nft 1.0.6 compiles the same text (so `nft list` shows tsnet's rules as if
 * nft had written them, and switching between the text and netlink backends
 * changes nothing in the kernel). Each item is spelled out once, in
 * lowerItem; the field table says how each key field is loaded and encoded.
 */
import { bufferToIp, ipToBuffer } from '../../netlink/attrs';
import { type NlWriter } from '../../netlink/writer';
import {
  ICMP_PORT_UNREACH,
  NFT_FIB_F,
  NFT_REG32_00,
  NFT_REG_1,
  NFT_REG_VERDICT,
  NFT_REJECT,
  NF_NAT_RANGE,
} from '../../netlink/nftables';
import { parseCidr } from '../../addr/cidr';
import type { Expr } from './expr';
import type { Family, Field, Item, KeyExpr, Value } from './ruleset';

/** How one key field is loaded into a register and how its values are encoded. */
interface FieldSpec {
  len(family: Family): number;
  /** Host byte order in the register (meta, numgen): interval sets need it converted to network order. */
  host?: { size: number };
  load(family: Family, dreg: number, mod?: number): Expr;
  encode(v: Value, family: Family): Buffer;
}

const u32le = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const be16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const PROTO: Record<string, number> = { tcp: 6, udp: 17 };
const addrLen = (f: Family) => (f === 6 ? 16 : 4);
const ADDR_OFFSET = { 4: { saddr: 12, daddr: 16 }, 6: { saddr: 8, daddr: 24 } } as const;

const FIELDS: Record<Field, FieldSpec> = {
  saddr: {
    len: addrLen,
    load: (f, dreg) => ({ kind: 'payload', base: 'network', offset: ADDR_OFFSET[f].saddr, len: addrLen(f), dreg }),
    encode: (v) => ipToBuffer(String(v)),
  },
  daddr: {
    len: addrLen,
    load: (f, dreg) => ({ kind: 'payload', base: 'network', offset: ADDR_OFFSET[f].daddr, len: addrLen(f), dreg }),
    encode: (v) => ipToBuffer(String(v)),
  },
  l4proto: {
    len: () => 1,
    host: { size: 2 },
    load: (_f, dreg) => ({ kind: 'meta', key: 'l4proto', dreg }),
    encode: (v) => Buffer.from([PROTO[String(v)] ?? Number(v)]),
  },
  sport: {
    len: () => 2,
    load: (_f, dreg) => ({ kind: 'payload', base: 'transport', offset: 0, len: 2, dreg }),
    encode: (v) => be16(Number(v)),
  },
  dport: {
    len: () => 2,
    load: (_f, dreg) => ({ kind: 'payload', base: 'transport', offset: 2, len: 2, dreg }),
    encode: (v) => be16(Number(v)),
  },
  mark: {
    len: () => 4,
    host: { size: 4 },
    load: (_f, dreg) => ({ kind: 'meta', key: 'mark', dreg }),
    encode: (v) => u32le(Number(v)),
  },
  numgen: {
    len: () => 4,
    host: { size: 4 },
    load: (_f, dreg, mod) => ({ kind: 'numgen', dreg, mod: mod ?? 1 }),
    encode: (v) => u32le(Number(v)),
  },
};

/** The wire register of 4-byte slot k (nft's rule: a 16-byte NFT_REG_n when aligned, else NFT_REG32_k). */
const regOf = (slot: number): number => (slot % 4 === 0 ? NFT_REG_1 + slot / 4 : NFT_REG32_00 + slot);

const slots = (len: number) => Math.ceil(len / 4);

/** A key's length in bytes: natural for one field, each field padded to 4 in a concatenation. */
export function keyLen(key: KeyExpr, family: Family): number {
  const lens = key.fields.map((f) => FIELDS[f].len(family));
  return lens.length === 1 ? lens[0]! : lens.reduce((n, l) => n + slots(l) * 4, 0);
}

/** Loads a key into consecutive registers from reg 1; interval sets compare in network order, so host-order fields are converted. */
function loadKey(key: KeyExpr, family: Family, interval: boolean): Expr[] {
  const out: Expr[] = [];
  let slot = 0;
  for (const f of key.fields) {
    const spec = FIELDS[f];
    const reg = regOf(slot);
    out.push(spec.load(family, reg, key.mod));
    if (interval && spec.host)
      out.push({ kind: 'byteorder', op: 'hton', sreg: reg, dreg: reg, size: spec.host.size, len: spec.len(family) });
    slot += slots(spec.len(family));
  }
  return out;
}

/** A key's value as the kernel stores it (the same layout loadKey produces). */
export function encodeKey(key: KeyExpr, values: readonly Value[], family: Family, interval: boolean): Buffer {
  const parts = key.fields.map((f, i) => {
    const spec = FIELDS[f];
    let b = spec.encode(values[i]!, family);
    if (interval && spec.host?.size === 4) b = Buffer.from(b).reverse();
    return b;
  });
  if (parts.length === 1) return parts[0]!;
  return Buffer.concat(parts.map((p) => Buffer.concat([p, Buffer.alloc(slots(p.length) * 4 - p.length)])));
}

/** An address's bytes straight into a writer: a dotted quad parsed in place (the hot path of a big sync), IPv6 through ipToBuffer, once per address of a batch (`v6`). */
function writeIp(w: NlWriter, ip: string, v6?: Map<string, Buffer>): void {
  if (!ip.includes(':')) {
    let addr = 0;
    let n = 0;
    let parts = 0;
    for (let i = 0; i < ip.length; i++) {
      const c = ip.charCodeAt(i);
      if (c === 46) {
        if (n > 255) break;
        addr = addr * 256 + n;
        n = 0;
        parts++;
      } else n = n * 10 + (c - 48);
    }
    if (parts !== 3 || n > 255) throw new Error(`not a dotted quad: ${ip}`);
    w.u32be(addr * 256 + n);
    return;
  }
  let b = v6?.get(ip);
  if (!b) {
    b = ipToBuffer(ip);
    v6?.set(ip, b);
  }
  w.bytes(b);
}

/** encodeKey, written straight into `w` (no buffer per field): what a sync of tens of thousands of elements uses. */
export function writeKey(
  w: NlWriter,
  key: KeyExpr,
  values: readonly Value[],
  family: Family,
  interval: boolean,
  v6?: Map<string, Buffer>,
): void {
  const fields = key.fields;
  const concat = fields.length > 1;
  for (let i = 0; i < fields.length; i++) {
    const v = values[i]!;
    switch (fields[i]!) {
      case 'saddr':
      case 'daddr':
        writeIp(w, v as string, v6);
        break;
      case 'l4proto':
        w.u8(PROTO[v as string] ?? Number(v));
        if (concat) w.zeros(3);
        break;
      case 'sport':
      case 'dport':
        w.u16be(v as number);
        if (concat) w.zeros(2);
        break;
      case 'mark':
      case 'numgen':
        if (interval) w.u32be(v as number);
        else w.u32(v as number);
        break;
    }
  }
}

/** The inverse of encodeKey: a key read back from the kernel (element dumps). */
export function decodeKey(key: KeyExpr, buf: Buffer, family: Family, interval: boolean): Value[] {
  const out: Value[] = [];
  let off = 0;
  for (const f of key.fields) {
    const len = FIELDS[f].len(family);
    const b = buf.subarray(off, off + len);
    switch (f) {
      case 'saddr':
      case 'daddr':
        out.push(bufferToIp(b));
        break;
      case 'l4proto':
        out.push(Object.entries(PROTO).find(([, n]) => n === b[0])?.[0] ?? b[0]!);
        break;
      case 'sport':
      case 'dport':
        out.push(b.readUInt16BE(0));
        break;
      case 'mark':
      case 'numgen':
        out.push(interval ? b.readUInt32BE(0) : b.readUInt32LE(0));
        break;
    }
    off += key.fields.length === 1 ? len : slots(len) * 4;
  }
  return out;
}

/** What lowering needs to know about the sets rules refer to. */
export interface SetInfo {
  interval: boolean;
  /** The transaction id, when the set is created in the same batch (the kernel then finds it by id). */
  id?: number;
}

export interface LowerContext {
  family: Family;
  set(name: string): SetInfo;
}

function addrMatch(field: 'saddr' | 'daddr', cidr: string, not: boolean, family: Family): Expr[] {
  const c = parseCidr(cidr, { defaultPrefix: true });
  const full = addrLen(family);
  const net = ipToBuffer(c.network);
  const op = not ? 'neq' : 'eq';
  const offset = ADDR_OFFSET[family][field];
  if (c.prefix === full * 8)
    return [
      { kind: 'payload', base: 'network', offset, len: full, dreg: NFT_REG_1 },
      { kind: 'cmp', sreg: NFT_REG_1, op, data: ipToBuffer(c.address) },
    ];
  if (c.prefix % 8 === 0) {
    // A byte-aligned prefix: nft loads only the prefix's bytes.
    const n = c.prefix / 8;
    return [
      { kind: 'payload', base: 'network', offset, len: n, dreg: NFT_REG_1 },
      { kind: 'cmp', sreg: NFT_REG_1, op, data: net.subarray(0, n) },
    ];
  }
  const mask = Buffer.alloc(full);
  for (let i = 0; i < c.prefix; i++) mask[i >> 3]! |= 0x80 >> (i & 7);
  return [
    { kind: 'payload', base: 'network', offset, len: full, dreg: NFT_REG_1 },
    { kind: 'bitwise', sreg: NFT_REG_1, dreg: NFT_REG_1, mask, xor: Buffer.alloc(full) },
    { kind: 'cmp', sreg: NFT_REG_1, op, data: net },
  ];
}

/** ct state / ct status bits, tested the way nft does: `& BITS` then `!= 0` (any set) or `== 0` (none set). */
function ctBits(key: 'state' | 'status', bits: number, any: boolean): Expr[] {
  return [
    { kind: 'ct', key, dreg: NFT_REG_1 },
    { kind: 'bitwise', sreg: NFT_REG_1, dreg: NFT_REG_1, mask: u32le(bits), xor: u32le(0) },
    { kind: 'cmp', sreg: NFT_REG_1, op: any ? 'neq' : 'eq', data: u32le(0) },
  ];
}
const CT_STATE = { established: 0x2, related: 0x4, new: 0x8 };
const IPS_DST_NAT = 0x20;

function ifname(name: string): Buffer {
  const b = Buffer.alloc(16);
  b.write(name);
  return b;
}

/** The name nft gives an anonymous set (the kernel numbers it). */
export const ANON_MAP = '__map%d';

/** How one kind of rule item lowers. */
type ItemOf<K extends Item['kind']> = Item extends infer I
  ? I extends { kind: infer KK }
    ? K extends KK
      ? I
      : never
    : never
  : never;
type Lowerer<K extends Item['kind']> = (item: ItemOf<K>, cx: LowerContext) => Expr[];

/** The key loaded, then looked up in a set of the table (a map's value to `dreg`; none: a match). */
function lookupIn(cx: LowerContext, key: KeyExpr, set: string, dreg?: number): Expr[] {
  const s = cx.set(set);
  return [
    ...loadKey(key, cx.family, s.interval),
    {
      kind: 'lookup',
      sreg: NFT_REG_1,
      set,
      ...(dreg === undefined ? {} : { dreg }),
      ...(s.id === undefined ? {} : { setId: s.id }),
    },
  ];
}

/** Each rule item's kernel expressions, kind by kind (nft's compilation of the same text). */
const LOWER: { [K in Item['kind']]: Lowerer<K> } = {
  addr: (item, { family: fam }) => addrMatch(item.field, item.cidr, item.not ?? false, fam),
  'local-daddr': () => [
    { kind: 'fib', dreg: NFT_REG_1, result: 'addrtype', flags: NFT_FIB_F.daddr },
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: u32le(2) },
  ],
  l4proto: (item, { family: fam }) => [
    FIELDS.l4proto.load(fam, 1),
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: FIELDS.l4proto.encode(item.proto, fam) },
  ],
  dport: (item, { family: fam }) => [
    FIELDS.dport.load(fam, 1),
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: be16(item.port) },
  ],
  oifname: (item) => [
    { kind: 'meta', key: 'oifname', dreg: NFT_REG_1 },
    { kind: 'cmp', sreg: NFT_REG_1, op: item.not ? 'neq' : 'eq', data: ifname(item.name) },
  ],
  'ct-new': () => ctBits('state', CT_STATE.new, true),
  'ct-not-established': () => ctBits('state', CT_STATE.established | CT_STATE.related, false),
  'ct-dnat': (item) => ctBits('status', IPS_DST_NAT, !item.not),
  'ct-orig-dport': (item) => [
    { kind: 'ct', key: 'proto_dst', dir: 'original', dreg: NFT_REG_1 },
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: be16(item.port) },
  ],
  'ct-reply-saddr': (item, { family: fam }) => [
    { kind: 'ct', key: fam === 6 ? 'src_ip6' : 'src_ip', dir: 'reply', dreg: NFT_REG_1 },
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: ipToBuffer(item.ip) },
  ],
  'ct-reply-sport': (item) => [
    { kind: 'ct', key: 'proto_src', dir: 'reply', dreg: NFT_REG_1 },
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: be16(item.port) },
  ],
  'mark-clear': (item) => [
    { kind: 'meta', key: 'mark', dreg: NFT_REG_1 },
    { kind: 'bitwise', sreg: NFT_REG_1, dreg: NFT_REG_1, mask: u32le(item.bits), xor: u32le(0), explicitOp: true },
    { kind: 'cmp', sreg: NFT_REG_1, op: 'eq', data: u32le(0) },
  ],
  'in-set': (item, cx) => lookupIn(cx, item.key, item.set),
  counter: () => [{ kind: 'counter' }],
  verdict: (item) => [{ kind: 'verdict', verdict: { code: item.verdict } }],
  jump: (item) => [{ kind: 'verdict', verdict: { code: item.kind, chain: item.chain } }],
  goto: (item) => [{ kind: 'verdict', verdict: { code: item.kind, chain: item.chain } }],
  // An anonymous vmap's set is created in the same batch, just before its rule: cx knows it as ANON_MAP.
  vmap: (item, cx) => lookupIn(cx, item.key, typeof item.map === 'string' ? item.map : ANON_MAP, NFT_REG_VERDICT),

  dnat: (item, { family: fam }) => [
    { kind: 'immediate', dreg: NFT_REG_1, data: ipToBuffer(item.ip) },
    { kind: 'immediate', dreg: NFT_REG_1 + 1, data: be16(item.port) },
    {
      kind: 'nat',
      type: 'dnat',
      family: fam,
      regAddrMin: NFT_REG_1,
      regProtoMin: NFT_REG_1 + 1,
      flags: NF_NAT_RANGE.PROTO_SPECIFIED,
    },
  ],
  'dnat-map': (item, cx) => {
    const fam = cx.family;
    // The map's value is address . port: the port starts in the slot after the address.
    return [
      ...lookupIn(cx, item.key, item.map, NFT_REG_1),
      { kind: 'nat', type: 'dnat', family: fam, regAddrMin: NFT_REG_1, regProtoMin: regOf(slots(addrLen(fam))) },
    ];
  },
  snat: (item, { family: fam }) => [
    { kind: 'immediate', dreg: NFT_REG_1, data: ipToBuffer(item.ip) },
    { kind: 'nat', type: 'snat', family: fam, regAddrMin: NFT_REG_1, flags: NF_NAT_RANGE.PROTO_RANDOM_FULLY },
  ],
  masquerade: () => [{ kind: 'masq', flags: NF_NAT_RANGE.PROTO_RANDOM_FULLY }],
  'mark-set': (item) => {
    const mask = item.op === 'or' ? ~item.bits >>> 0 : 0xffffffff;
    return [
      { kind: 'meta', key: 'mark', dreg: NFT_REG_1 },
      {
        kind: 'bitwise',
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        mask: u32le(mask),
        xor: u32le(item.bits),
        explicitOp: true,
      },
      { kind: 'meta-set', key: 'mark', sreg: NFT_REG_1 },
    ];
  },
  'set-update': (item, cx) => {
    const fam = cx.family;
    const s = cx.set(item.set);
    return [
      ...loadKey(item.key, fam, s.interval),
      {
        kind: 'dynset',
        op: 'update',
        sregKey: NFT_REG_1,
        set: item.set,
        ...(s.id === undefined ? {} : { setId: s.id }),
      },
    ];
  },
  reject: (item, cx) => {
    const fam = cx.family;
    return [{ kind: 'reject', type: NFT_REJECT.icmp_unreach, code: ICMP_PORT_UNREACH[fam] }];
  },
};

/** The kernel expressions of one rule item. */
export function lowerItem(item: Item, cx: LowerContext): Expr[] {
  // The table is indexed by the item's own kind: the lowerer it finds takes that item.
  return (LOWER[item.kind] as Lowerer<Item['kind']>)(item, cx);
}
