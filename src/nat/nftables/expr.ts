/**
 * nf_tables kernel expressions as small typed values (google/nftables'
 * expr/ package, in TypeScript): each knows its wire attributes and how
 * libnftnl prints it (`nft --debug=netlink`), which is how the encoder is
 * tested against nft's own output. Registers are wire numbers: 0 is the
 * verdict, 1-4 the 16-byte registers, 8-23 the 4-byte NFT_REG32_00..15.
 */
import type { AttrObject } from '../../netlink/attrs';
import {
  NFT_BYTEORDER_OP,
  NFT_CMP_OP,
  NFT_CT,
  NFT_DYNSET_OP,
  NFT_FIB_RESULT,
  NFT_META,
  NFT_NAT_TYPE,
  NFT_NG,
  NFT_PAYLOAD_BASE,
  NFPROTO,
  VERDICT,
  NFT_REG_VERDICT,
  nfproto,
  type ExprAttrs,
} from '../../netlink/nftables';

export type Verdict = { code: keyof typeof VERDICT; chain?: string };

export type Expr =
  | { kind: 'payload'; base: keyof typeof NFT_PAYLOAD_BASE; offset: number; len: number; dreg: number }
  | { kind: 'cmp'; sreg: number; op: keyof typeof NFT_CMP_OP; data: Buffer }
  | {
      kind: 'bitwise';
      sreg: number;
      dreg: number;
      mask: Buffer;
      xor: Buffer;
      /** NFTA_BITWISE_OP MASK_XOR, sent by nft for an explicit `&`/`|`/`^` (not for flag tests) */ explicitOp?: true;
    }
  | { kind: 'byteorder'; sreg: number; dreg: number; op: keyof typeof NFT_BYTEORDER_OP; len: number; size: number }
  | { kind: 'meta'; key: keyof typeof NFT_META; dreg: number }
  | { kind: 'meta-set'; key: keyof typeof NFT_META; sreg: number }
  | { kind: 'ct'; key: keyof typeof NFT_CT; dir?: 'original' | 'reply'; dreg: number }
  | {
      kind: 'lookup';
      set: string;
      setId?: number;
      sreg: number;
      dreg?: number;
      /** NFT_LOOKUP_F_INV: matches when absent */ invert?: true;
    }
  | { kind: 'dynset'; op: keyof typeof NFT_DYNSET_OP; set: string; setId?: number; sregKey: number }
  | { kind: 'immediate'; dreg: number; data: Buffer }
  | { kind: 'verdict'; verdict: Verdict }
  | { kind: 'numgen'; dreg: number; mod: number }
  | {
      kind: 'nat';
      type: keyof typeof NFT_NAT_TYPE;
      family: 4 | 6;
      regAddrMin: number;
      regProtoMin?: number;
      flags?: number;
    }
  | { kind: 'masq'; flags?: number }
  | { kind: 'fib'; dreg: number; result: keyof typeof NFT_FIB_RESULT; flags: number }
  | { kind: 'counter'; packets?: bigint; bytes?: bigint }
  | { kind: 'reject'; type: number; code: number };

/** NFTA_LOOKUP_FLAGS' one flag: the lookup matches when the key is absent (`!= @set`). */
const NFT_LOOKUP_F_INV = 1;

const verdictAttrs = (v: Verdict): AttrObject => ({ verdict: { code: VERDICT[v.code], chain: v.chain } });

/** The NFTA_EXPR_* attributes of an expression: its kernel name and data. */
export function exprAttrs(e: Expr): AttrObject {
  switch (e.kind) {
    case 'payload':
      return { name: 'payload', data: { dreg: e.dreg, base: NFT_PAYLOAD_BASE[e.base], offset: e.offset, len: e.len } };
    case 'cmp':
      return { name: 'cmp', data: { sreg: e.sreg, op: NFT_CMP_OP[e.op], data: { value: e.data } } };
    case 'bitwise':
      return {
        name: 'bitwise',
        data: {
          sreg: e.sreg,
          dreg: e.dreg,
          len: e.mask.length,
          mask: { value: e.mask },
          xor: { value: e.xor },
          op: e.explicitOp ? 0 : undefined,
        },
      };
    case 'byteorder':
      return {
        name: 'byteorder',
        data: { sreg: e.sreg, dreg: e.dreg, op: NFT_BYTEORDER_OP[e.op], len: e.len, size: e.size },
      };
    case 'meta':
      return { name: 'meta', data: { dreg: e.dreg, key: NFT_META[e.key] } };
    case 'meta-set':
      return { name: 'meta', data: { key: NFT_META[e.key], sreg: e.sreg } };
    case 'ct':
      return {
        name: 'ct',
        data: {
          dreg: e.dreg,
          key: NFT_CT[e.key],
          direction: e.dir === undefined ? undefined : e.dir === 'original' ? 0 : 1,
        },
      };
    case 'lookup':
      return {
        name: 'lookup',
        data: {
          set: e.set,
          sreg: e.sreg,
          dreg: e.dreg,
          setId: e.setId,
          flags: e.invert ? NFT_LOOKUP_F_INV : undefined,
        },
      };
    case 'dynset':
      return { name: 'dynset', data: { set: e.set, setId: e.setId, op: NFT_DYNSET_OP[e.op], sregKey: e.sregKey } };
    case 'immediate':
      return { name: 'immediate', data: { dreg: e.dreg, data: { value: e.data } } };
    case 'verdict':
      return { name: 'immediate', data: { dreg: NFT_REG_VERDICT, data: verdictAttrs(e.verdict) } };
    case 'numgen':
      return { name: 'numgen', data: { dreg: e.dreg, modulus: e.mod, type: NFT_NG.random, offset: 0 } };
    case 'nat':
      return {
        name: 'nat',
        data: {
          type: NFT_NAT_TYPE[e.type],
          family: nfproto(e.family),
          regAddrMin: e.regAddrMin,
          regProtoMin: e.regProtoMin,
          flags: e.flags,
        },
      };
    case 'masq':
      return { name: 'masq', data: { flags: e.flags } };
    case 'fib':
      return { name: 'fib', data: { dreg: e.dreg, result: NFT_FIB_RESULT[e.result], flags: e.flags } };
    case 'counter':
      return { name: 'counter', data: { bytes: e.bytes, packets: e.packets } };
    case 'reject':
      return { name: 'reject', data: { type: e.type, icmpCode: e.code } };
  }
}

const invert = <T extends Record<string, number>>(o: T) =>
  new Map<number, keyof T>(Object.entries(o).map(([k, v]) => [v, k as keyof T]));
const BASES = invert(NFT_PAYLOAD_BASE);
const CMP_OPS = invert(NFT_CMP_OP);
const META_KEYS = invert(NFT_META);
const CT_KEYS = invert(NFT_CT);
const VERDICTS = invert(VERDICT);
const NAT_TYPES = invert(NFT_NAT_TYPE);
const FIB_RESULTS = invert(NFT_FIB_RESULT);
const DYNSET_OPS = invert(NFT_DYNSET_OP);
const BYTEORDER_OPS = invert(NFT_BYTEORDER_OP);

/** A value or verdict nest's bytes (empty when absent). */
const value = (d: { value?: Buffer } | undefined): Buffer => d?.value ?? Buffer.alloc(0);

/** An expression read back from the kernel (a rule dump); undefined for kinds tsnet never writes. Absent numbers read as 0. */
export function decodeExpr(a: ExprAttrs): Expr | undefined {
  switch (a.name) {
    case 'counter':
      return { kind: 'counter', packets: a.data?.packets ?? 0n, bytes: a.data?.bytes ?? 0n };
    case 'payload': {
      const d = a.data ?? {};
      return {
        kind: 'payload',
        base: BASES.get(d.base ?? 1) ?? 'network',
        offset: d.offset ?? 0,
        len: d.len ?? 0,
        dreg: d.dreg ?? 0,
      };
    }
    case 'cmp': {
      const d = a.data ?? {};
      return { kind: 'cmp', sreg: d.sreg ?? 0, op: CMP_OPS.get(d.op ?? 0) ?? 'eq', data: value(d.data) };
    }
    case 'meta': {
      const d = a.data ?? {};
      const key = META_KEYS.get(d.key ?? 0) ?? 'mark';
      return d.sreg !== undefined ? { kind: 'meta-set', key, sreg: d.sreg } : { kind: 'meta', key, dreg: d.dreg ?? 0 };
    }
    case 'ct': {
      const d = a.data ?? {};
      return {
        kind: 'ct',
        key: CT_KEYS.get(d.key ?? 0) ?? 'state',
        dreg: d.dreg ?? 0,
        ...(d.direction === undefined ? {} : { dir: d.direction === 0 ? ('original' as const) : ('reply' as const) }),
      };
    }
    case 'immediate':
      return immediate(a.data ?? {});
    case 'lookup':
      return lookup(a.data ?? {});
    case 'bitwise': {
      const d = a.data ?? {};
      return {
        kind: 'bitwise',
        sreg: d.sreg ?? 0,
        dreg: d.dreg ?? 0,
        mask: value(d.mask),
        xor: value(d.xor),
        ...(d.op === 0 ? { explicitOp: true as const } : {}),
      };
    }
    case 'byteorder': {
      const d = a.data ?? {};
      const op = BYTEORDER_OPS.get(d.op ?? 1) ?? 'hton';
      return { kind: 'byteorder', sreg: d.sreg ?? 0, dreg: d.dreg ?? 0, op, len: d.len ?? 0, size: d.size ?? 0 };
    }
    case 'numgen':
      return { kind: 'numgen', dreg: a.data?.dreg ?? 0, mod: a.data?.modulus ?? 0 };
    case 'nat':
      return nat(a.data ?? {});
    case 'masq':
      return a.data?.flags === undefined ? { kind: 'masq' } : { kind: 'masq', flags: a.data.flags };
    case 'fib': {
      const d = a.data ?? {};
      return {
        kind: 'fib',
        dreg: d.dreg ?? 0,
        result: FIB_RESULTS.get(d.result ?? 0) ?? 'addrtype',
        flags: d.flags ?? 0,
      };
    }
    case 'dynset': {
      const d = a.data ?? {};
      return { kind: 'dynset', op: DYNSET_OPS.get(d.op ?? 0) ?? 'add', set: d.set ?? '', sregKey: d.sregKey ?? 0 };
    }
    case 'reject':
      return { kind: 'reject', type: a.data?.type ?? 0, code: a.data?.icmpCode ?? 0 };
    default:
      return undefined;
  }
}

type ExprData<N extends ExprAttrs['name']> = NonNullable<Extract<ExprAttrs, { name: N }>['data']>;

function lookup(d: ExprData<'lookup'>): Expr {
  return {
    kind: 'lookup',
    set: d.set ?? '',
    sreg: d.sreg ?? 0,
    ...(d.dreg === undefined ? {} : { dreg: d.dreg }),
    ...(d.flags !== undefined && (d.flags & NFT_LOOKUP_F_INV) !== 0 ? { invert: true as const } : {}),
  };
}

function immediate(d: ExprData<'immediate'>): Expr {
  const v = d.data?.verdict;
  if (v)
    return {
      kind: 'verdict',
      verdict: { code: VERDICTS.get(v.code ?? 0) ?? 'continue', ...(v.chain ? { chain: v.chain } : {}) },
    };
  return { kind: 'immediate', dreg: d.dreg ?? 0, data: value(d.data) };
}

function nat(d: ExprData<'nat'>): Expr {
  const e: Expr = {
    kind: 'nat',
    type: NAT_TYPES.get(d.type ?? 1) ?? 'dnat',
    family: d.family === NFPROTO.IPV6 ? 6 : 4,
    regAddrMin: d.regAddrMin ?? 0,
  };
  if (d.regProtoMin !== undefined) e.regProtoMin = d.regProtoMin;
  if (d.flags !== undefined) e.flags = d.flags;
  return e;
}

// --- libnftnl's text (nft --debug=netlink) ---------------------------------

/** Data as libnftnl prints it: 4-byte words read in host order. */
export function words(b: Buffer): string {
  const out: string[] = [];
  for (let i = 0; i < b.length; i += 4) {
    const w = Buffer.alloc(4);
    b.copy(w, 0, i, Math.min(i + 4, b.length));
    out.push(`0x${w.readUInt32LE(0).toString(16).padStart(8, '0')}`);
  }
  return out.join(' ');
}

const CT_NAMES: Partial<Record<keyof typeof NFT_CT, string>> = {
  src_ip: 'src_ip',
  dst_ip: 'dst_ip',
  src_ip6: 'src_ip6',
  dst_ip6: 'dst_ip6',
};

/** One expression as `nft --debug=netlink` prints it. */
export function formatExpr(e: Expr): string {
  const body = ((): string => {
    switch (e.kind) {
      case 'payload':
        return `payload load ${e.len}b @ ${e.base} header + ${e.offset} => reg ${e.dreg}`;
      case 'cmp':
        return `cmp ${e.op} reg ${e.sreg} ${words(e.data)}`;
      case 'bitwise':
        return `bitwise reg ${e.dreg} = ( reg ${e.sreg} & ${words(e.mask)} ) ^ ${words(e.xor)}`;
      case 'byteorder':
        return `byteorder reg ${e.dreg} = ${e.op}(reg ${e.sreg}, ${e.size}, ${e.len})`;
      case 'meta':
        return `meta load ${e.key} => reg ${e.dreg}`;
      case 'meta-set':
        return `meta set ${e.key} with reg ${e.sreg}`;
      case 'ct':
        return `ct load ${CT_NAMES[e.key] ?? e.key} => reg ${e.dreg}${e.dir ? ` , dir ${e.dir}` : ''}`;
      case 'lookup':
        return `lookup reg ${e.sreg} set ${e.set}${e.dreg === undefined ? '' : ` dreg ${e.dreg}`}${e.invert ? ' 0x1' : ''}`;
      case 'dynset':
        return `dynset ${e.op} reg_key ${e.sregKey} set ${e.set}`;
      case 'immediate':
        return `immediate reg ${e.dreg} ${words(e.data)}`;
      case 'verdict':
        return `immediate reg 0 ${e.verdict.chain ? `${e.verdict.code} -> ${e.verdict.chain}` : e.verdict.code}`;
      case 'numgen':
        return `numgen reg ${e.dreg} = random mod ${e.mod}`;
      case 'nat':
        return `nat ${e.type} ${e.family === 6 ? 'ip6' : 'ip'} addr_min reg ${e.regAddrMin}${e.regProtoMin === undefined ? '' : ` proto_min reg ${e.regProtoMin}`}${e.flags ? ` flags 0x${e.flags.toString(16)}` : ''}`;
      case 'masq':
        return `masq${e.flags ? ` flags 0x${e.flags.toString(16)}` : ''}`;
      case 'fib':
        return `fib daddr type => reg ${e.dreg}`;
      case 'counter':
        return `counter pkts ${e.packets ?? 0n} bytes ${e.bytes ?? 0n}`;
      case 'reject':
        return `reject type ${e.type} code ${e.code}`;
    }
  })();
  return `[ ${body} ]`;
}
