/**
 * Userdata as nft writes it (libnftnl's TLVs: type u8, length u8, value,
 * no padding; integers in host order). The kernel never reads it: nft does,
 * to print `typeof ip daddr . meta l4proto . th dport`, keys in the right
 * byte order, and comments. With it, `nft list table ip tsnet` shows tsnet's
 * rules as readably as if nft had written them.
 */
import type { NlWriter } from '../../netlink/writer';
import type { Family, Field, KeyExpr, NamedSet } from './ruleset';

const UDATA_COMMENT = 0;
const SET_UDATA = {
  KEYBYTEORDER: 0,
  DATABYTEORDER: 1,
  KEY_TYPEOF: 3,
  DATA_TYPEOF: 4,
  DATA_INTERVAL: 6,
  COMMENT: 7,
} as const;
const TYPEOF = { EXPR: 0, DATA: 1 } as const;
/** nft's expression type ids (enum expr_types). */
const EXPR = { verdict: 1, payload: 7, meta: 9, concat: 13, numgen: 23 } as const;
/** nft's protocol description ids and header field indices. */
const PROTO_DESC = { th: 11, ip: 12, ip6: 13 } as const;
const FIELD_INDEX = { ip: { saddr: 11, daddr: 12 }, ip6: { saddr: 8, daddr: 9 }, th: { sport: 1, dport: 2 } } as const;
const META_KEY = { l4proto: 16, mark: 3 } as const;
/** nft's byte order names: 0 for a concatenation, host order for meta/numgen values, network order for addresses and ports. */
const BYTEORDER = { concat: 0, host: 1, big: 2 } as const;
/** nft's datatype ids (include/datatype.h): what NFTA_SET_KEY_TYPE and DATA_TYPE carry. */
const DATATYPE: Record<Field, (f: Family) => number> = {
  saddr: (f) => (f === 6 ? 8 : 7),
  daddr: (f) => (f === 6 ? 8 : 7),
  l4proto: () => 12,
  sport: () => 13,
  dport: () => 13,
  mark: () => 19,
  numgen: () => 4,
};

function tlv(type: number, value: Buffer): Buffer {
  if (value.length > 255) throw new Error(`userdata attribute ${type} is ${value.length} bytes (at most 255)`);
  return Buffer.concat([Buffer.from([type, value.length]), value]);
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const asciiz = (s: string) => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]);

/** A rule's, or an element's, comment. */
export const commentUdata = (comment: string): Buffer => tlv(UDATA_COMMENT, asciiz(comment));

/** commentUdata's bytes, written straight into a batch (an element per service carries one). */
export function writeCommentUdata(w: NlWriter, comment: string): void {
  const n = Buffer.byteLength(comment) + 1;
  if (n > 255) throw new Error(`userdata attribute ${UDATA_COMMENT} is ${n} bytes (at most 255)`);
  w.u8(UDATA_COMMENT);
  w.u8(n);
  w.asciiz(comment);
}

function fieldTypeof(f: Field, family: Family, mod: number | undefined): { expr: number; data: Buffer } {
  const ip = family === 6 ? 'ip6' : 'ip';
  switch (f) {
    case 'saddr':
    case 'daddr':
      return {
        expr: EXPR.payload,
        data: Buffer.concat([tlv(0, u32(PROTO_DESC[ip])), tlv(1, u32(FIELD_INDEX[ip][f]))]),
      };
    case 'sport':
    case 'dport':
      return { expr: EXPR.payload, data: Buffer.concat([tlv(0, u32(PROTO_DESC.th)), tlv(1, u32(FIELD_INDEX.th[f]))]) };
    case 'l4proto':
    case 'mark':
      return { expr: EXPR.meta, data: tlv(0, u32(META_KEY[f])) };
    case 'numgen':
      return { expr: EXPR.numgen, data: Buffer.concat([tlv(0, u32(1)), tlv(1, u32(mod ?? 1)), tlv(2, u32(0))]) };
  }
}

/** `typeof KEY`: one expression, or a concatenation of them. */
function typeofUdata(k: KeyExpr, family: Family): Buffer {
  if (k.fields.length === 1) {
    const t = fieldTypeof(k.fields[0]!, family, k.mod);
    return Buffer.concat([tlv(TYPEOF.EXPR, u32(t.expr)), tlv(TYPEOF.DATA, t.data)]);
  }
  const fields = k.fields.map((f, i) => {
    const t = fieldTypeof(f, family, k.mod);
    return tlv(i, Buffer.concat([tlv(0, u32(t.expr)), tlv(1, t.data)]));
  });
  return Buffer.concat([tlv(TYPEOF.EXPR, u32(EXPR.concat)), tlv(TYPEOF.DATA, Buffer.concat(fields))]);
}

function byteorder(k: KeyExpr): number {
  if (k.fields.length > 1) return BYTEORDER.concat;
  return ['l4proto', 'mark', 'numgen'].includes(k.fields[0]!) ? BYTEORDER.host : BYTEORDER.big;
}

/** A set's or map's userdata: byte orders, typeof of key and value (an anonymous set written in a rule has no typeof key), comment. */
export function setUdata(
  s: Pick<NamedSet, 'key' | 'data' | 'comment'>,
  family: Family,
  o: { anonymous?: boolean } = {},
): Buffer {
  const parts = [tlv(SET_UDATA.KEYBYTEORDER, u32(byteorder(s.key)))];
  if (s.data !== undefined)
    parts.push(tlv(SET_UDATA.DATABYTEORDER, u32(s.data === 'verdict' ? BYTEORDER.concat : byteorder(s.data))));
  if (!o.anonymous) parts.push(tlv(SET_UDATA.KEY_TYPEOF, typeofUdata(s.key, family)));
  if (s.data !== undefined) {
    parts.push(
      tlv(
        SET_UDATA.DATA_TYPEOF,
        s.data === 'verdict'
          ? Buffer.concat([tlv(TYPEOF.EXPR, u32(EXPR.verdict)), tlv(TYPEOF.DATA, Buffer.alloc(0))])
          : typeofUdata(s.data, family),
      ),
    );
    parts.push(tlv(SET_UDATA.DATA_INTERVAL, u32(0)));
  }
  if (s.comment !== undefined) parts.push(tlv(SET_UDATA.COMMENT, asciiz(s.comment)));
  return Buffer.concat(parts);
}

/** NFTA_SET_KEY_TYPE / DATA_TYPE: nft's datatype ids, a concatenation packed 6 bits per field, first field highest. */
export function datatype(k: KeyExpr, family: Family): number {
  return k.fields.reduce((id, f) => ((id << 6) | DATATYPE[f](family)) >>> 0, 0);
}
