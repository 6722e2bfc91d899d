/**
 * Netlink attributes (struct nlattr), encoded and decoded generically over
 * declarative tables, in the manner of pyroute2's `nla_map`: one table per
 * attribute family says number, name and type. Adding a family (IFLA_VXLAN_*,
 * say) is a new table, not a new codec.
 *
 * Decoded attributes land in a plain object keyed by the table's names;
 * attributes the table does not know are kept by number under `unknown`,
 * so nothing the kernel sent is silently lost.
 */

import type { NlWriter } from './writer';

export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;
const NLA_HDRLEN = 4;

export const align4 = (n: number): number => (n + 3) & ~3;

/** Decoding context: the attributes already decoded at this level (siblings). */
export type Siblings = Record<string, unknown>;

export interface Codec<T = unknown> {
  encode(value: T, siblings: Siblings): Buffer;
  decode(buf: Buffer, siblings: Siblings): T;
  /** Set NLA_F_NESTED on the attribute header (the kernel requires it for some families). */
  readonly nested?: boolean;
  /** Appends the payload straight into a writer (big messages: no buffer per attribute); default: encode(). */
  write?(w: NlWriter, value: T, siblings: Siblings): void;
}

export interface AttrSpec {
  readonly type: number;
  readonly name: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a table mixes codecs of every value type
  readonly codec: Codec<any>;
}

export type Table = readonly AttrSpec[];

/**
 * What decodeAttrs makes of `T`: each attribute under its name, typed by its
 * codec, absent when the kernel did not send it. A table declared
 * `as const satisfies Table` gives exact types; any other, AttrObject's.
 */
export type Decoded<T extends Table> = {
  -readonly [S in T[number] as S['name']]?: S['codec'] extends Codec<infer V> ? V : never;
} & { unknown?: Record<number, Buffer> };

/** The attribute number `name` has in `table`: the one place fast-path writers take their numbers from. */
export function attrType<T extends Table>(table: T, name: T[number]['name']): number {
  const spec = table.find((s) => s.name === name);
  if (!spec) throw new Error(`no attribute ${name} in this table`);
  return spec.type;
}

export interface AttrObject {
  [name: string]: unknown;
  unknown?: Record<number, Buffer>;
}

function int(size: 1 | 2 | 4, signed = false): Codec<number> {
  return {
    encode(v) {
      const b = Buffer.alloc(size);
      if (size === 1) {
        if (signed) b.writeInt8(v);
        else b.writeUInt8(v);
      } else if (size === 2) {
        if (signed) b.writeInt16LE(v);
        else b.writeUInt16LE(v);
      } else if (signed) b.writeInt32LE(v);
      else b.writeUInt32LE(v);
      return b;
    },
    decode(b) {
      if (size === 1) return signed ? b.readInt8(0) : b.readUInt8(0);
      if (size === 2) return signed ? b.readInt16LE(0) : b.readUInt16LE(0);
      return signed ? b.readInt32LE(0) : b.readUInt32LE(0);
    },
  };
}

export const u8 = int(1);
export const u16 = int(2);
export const u32 = int(4);
export const s32 = int(4, true);

/** Integers in network byte order, as nf_tables and ctnetlink carry them. */
export const be16: Codec<number> = {
  encode: (v) => {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    return b;
  },
  decode: (b) => b.readUInt16BE(0),
  write: (w, v) => w.u16be(v),
};
export const be32: Codec<number> = {
  encode: (v) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    return b;
  },
  decode: (b) => b.readUInt32BE(0),
  write: (w, v) => w.u32be(v),
};
/** A signed 32-bit number sent as big-endian (verdict codes, chain priorities). */
export const s32be: Codec<number> = {
  encode: (v) => {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    return b;
  },
  decode: (b) => b.readInt32BE(0),
  write: (w, v) => w.u32be(v >>> 0),
};
export const be64: Codec<bigint> = {
  encode: (v) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    return b;
  },
  decode: (b) => b.readBigUInt64BE(0),
  write: (w, v) => w.u64be(v),
};

/** NUL-terminated string (IFLA_IFNAME, IFLA_INFO_KIND, ...). */
export const asciiz: Codec<string> = {
  encode: (v) => Buffer.concat([Buffer.from(v, 'utf8'), Buffer.alloc(1)]),
  decode(b) {
    const end = b.indexOf(0);
    return b.toString('utf8', 0, end < 0 ? b.length : end);
  },
  write: (w, v) => w.asciiz(v),
};

export const binary: Codec<Buffer> = {
  encode: (v) => Buffer.from(v),
  decode: (b) => Buffer.from(b),
  write: (w, v) => w.bytes(v),
};

/** Link-layer address as "aa:bb:cc:dd:ee:ff". */
export const mac: Codec<string> = {
  encode: (v) => Buffer.from(v.split(':').map((h) => parseInt(h, 16))),
  decode: (b) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':'),
};

/** An IPv4 or IPv6 address in network byte order; the length tells which. */
export const ipaddr: Codec<string> = {
  encode: (v) => ipToBuffer(v),
  decode: (b) => bufferToIp(b),
};

/** A flag attribute: present means true. */
export const flag: Codec<boolean> = {
  encode: () => Buffer.alloc(0),
  decode: () => true,
};

/** Attributes nested inside one attribute, described by their own table. */
export function nested<T extends Table>(
  table: T | (() => T),
  opts: { setNestedFlag?: boolean } = {},
): Codec<Decoded<T>> {
  const t = () => (typeof table === 'function' ? table() : table);
  return {
    nested: opts.setNestedFlag ?? false,
    encode: (v) => encodeAttrs(t(), v as AttrObject),
    decode: (b) => decodeAttrs(t(), b),
    write: (w, v) => w.attrs(t(), v as AttrObject),
  };
}

/**
 * A list carried as repeated attributes of one type inside a nest
 * (nf_tables' NFTA_LIST_ELEM), each decoded by `item`. `anyType` reads
 * every attribute of the nest (nft numbers set elements 1..n; the kernel
 * ignores the number).
 */
export function list<T>(elemType: number, item: Codec<T>, o: { anyType?: boolean } = {}): Codec<T[]> {
  return {
    nested: true,
    encode(v, s) {
      return Buffer.concat(v.map((x) => encodeAttr(elemType, item.encode(x, s), item.nested)));
    },
    decode(b, s) {
      const out: T[] = [];
      forEachAttr(b, (type, payload) => {
        if (type === elemType || o.anyType) out.push(item.decode(payload, s));
      });
      return out;
    },
    write(w, v, s) {
      for (const x of v) w.attr(elemType, item, x, s);
    },
  };
}

/** Calls `fn` for every attribute in `buf` (type without the flag bits). */
export function forEachAttr(buf: Buffer, fn: (type: number, payload: Buffer) => void): void {
  let off = 0;
  while (off + NLA_HDRLEN <= buf.length) {
    const len = buf.readUInt16LE(off);
    if (len < NLA_HDRLEN || off + len > buf.length) break;
    fn(buf.readUInt16LE(off + 2) & NLA_TYPE_MASK, buf.subarray(off + NLA_HDRLEN, off + len));
    off += align4(len);
  }
}

/**
 * An attribute whose layout depends on a sibling decoded before it: the
 * canonical case is IFLA_INFO_DATA, whose table is chosen by IFLA_INFO_KIND.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the choices are codecs of different value types
export function selectBy(sibling: string, choices: Record<string, Codec<any>>): Codec<unknown> {
  const pick = (s: Siblings) => choices[String(s[sibling])];
  return {
    encode(v, s) {
      const c = pick(s);
      if (!c) throw new Error(`no encoding for ${sibling}=${String(s[sibling])}`);
      return c.encode(v, s);
    },
    decode(b, s) {
      const c = pick(s);
      return c ? c.decode(b, s) : Buffer.from(b);
    },
  };
}

/** A fixed C struct in front of attributes (ifinfomsg + IFLA_*, as in VETH_INFO_PEER). */
export function withHeader<H extends object>(
  header: Struct<H>,
  table: Table | (() => Table),
): Codec<{ header: H; attrs: AttrObject }> {
  const t = () => (typeof table === 'function' ? table() : table);
  return {
    encode: (v) => Buffer.concat([header.encode(v.header), encodeAttrs(t(), v.attrs)]),
    decode: (b) => ({ header: header.decode(b), attrs: decodeAttrs(t(), b.subarray(header.size)) }),
  };
}

export function encodeAttr(type: number, payload: Buffer, nestedFlag = false): Buffer {
  const len = NLA_HDRLEN + payload.length;
  const out = Buffer.alloc(align4(len));
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type | (nestedFlag ? NLA_F_NESTED : 0), 2);
  payload.copy(out, NLA_HDRLEN);
  return out;
}

/** Encodes the named values of `obj` present in `table`, in table order. Undefined means absent. */
export function encodeAttrs(table: Table, obj: AttrObject): Buffer {
  const parts: Buffer[] = [];
  for (const spec of table) {
    const v = obj[spec.name];
    if (v === undefined || (v === false && spec.codec === flag)) continue;
    parts.push(encodeAttr(spec.type, spec.codec.encode(v, obj), spec.codec.nested));
  }
  return Buffer.concat(parts);
}

export function decodeAttrs<T extends Table>(table: T, buf: Buffer): Decoded<T> {
  const byType = new Map<number, AttrSpec>(table.map((s) => [s.type, s]));
  const out: AttrObject = {};
  let off = 0;
  while (off + NLA_HDRLEN <= buf.length) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & NLA_TYPE_MASK;
    if (len < NLA_HDRLEN || off + len > buf.length) break; // truncated: stop rather than misread
    const payload = buf.subarray(off + NLA_HDRLEN, off + len);
    const spec = byType.get(type);
    if (spec) out[spec.name] = spec.codec.decode(payload, out);
    else (out.unknown ??= {})[type] = Buffer.from(payload);
    off += align4(len);
  }
  return out as Decoded<T>;
}

/** A fixed-layout C struct of integers (little-endian host order, as the kernel uses). */
export interface Struct<T> {
  readonly size: number;
  encode(v: Partial<T>): Buffer;
  decode(b: Buffer): T;
}

type FieldType = 'u8' | 'u16' | 'u32' | 's32' | 'pad8' | 'pad16';
const fieldSize: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, pad8: 1, pad16: 2 };

export function struct<T extends object>(fields: ReadonlyArray<readonly [keyof T | '', FieldType]>): Struct<T> {
  const size = align4(fields.reduce((n, [, t]) => n + fieldSize[t], 0));
  return {
    size,
    encode(v) {
      const b = Buffer.alloc(size);
      let off = 0;
      for (const [name, t] of fields) {
        const x = name === '' ? 0 : Number((v as Record<string, unknown>)[name as string] ?? 0);
        if (t === 'u8') b.writeUInt8(x, off);
        else if (t === 'u16') b.writeUInt16LE(x, off);
        else if (t === 'u32') b.writeUInt32LE(x >>> 0, off);
        else if (t === 's32') b.writeInt32LE(x, off);
        off += fieldSize[t];
      }
      return b;
    },
    decode(b) {
      const v: Record<string, number> = {};
      let off = 0;
      for (const [name, t] of fields) {
        if (name !== '') {
          if (t === 'u8') v[name as string] = b.readUInt8(off);
          else if (t === 'u16') v[name as string] = b.readUInt16LE(off);
          else if (t === 'u32') v[name as string] = b.readUInt32LE(off);
          else if (t === 's32') v[name as string] = b.readInt32LE(off);
        }
        off += fieldSize[t];
      }
      return v as T;
    },
  };
}

export function ipToBuffer(ip: string): Buffer {
  if (ip.includes(':')) {
    const [head, tail] = ip.split('::') as [string, string | undefined];
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    // An embedded IPv4 tail (::ffff:1.2.3.4) counts as two groups.
    const expand = (groups: string[]) =>
      groups.flatMap((g) =>
        g.includes('.')
          ? (() => {
              const b = ipToBuffer(g);
              return [b.readUInt16BE(0).toString(16), b.readUInt16BE(2).toString(16)];
            })()
          : [g],
      );
    const hh = expand(h);
    const tt = expand(t);
    const zeros = ip.includes('::') ? 8 - hh.length - tt.length : 0;
    const groups = [...hh, ...Array<string>(zeros).fill('0'), ...tt];
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
    return b;
  }
  return Buffer.from(ip.split('.').map((x) => Number(x)));
}

export function bufferToIp(b: Buffer): string {
  if (b.length === 4) return [...b].join('.');
  if (b.length !== 16) return b.toString('hex');
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  // RFC 5952: compress the longest run (>= 2) of zero groups.
  let best = -1,
    bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}
