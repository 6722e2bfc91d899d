/**
 * nf_tables over nfnetlink (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_NFTABLES):
 * message types, the attribute tables of <linux/netfilter/nf_tables.h>, and
 * the batch framing every change must travel in. Wire only: what the
 * attributes mean for tsnet lives in src/nat/nftables.
 *
 * Integers inside nf_tables attributes are big-endian; the values of
 * meta/ct/fib keys inside registers are host order (see src/nat/nftables/expr).
 */
import {
  asciiz,
  be16,
  be32,
  be64,
  binary,
  list,
  nested,
  s32be,
  selectBy,
  u8,
  type AttrObject,
  type Codec,
  type Decoded,
  type Table,
} from './attrs';

export const NFNL_SUBSYS_NFTABLES = 10;
/** The batch wrapper's message types (subsystem 0). */
export const NFNL_MSG_BATCH_BEGIN = 0x10;
export const NFNL_MSG_BATCH_END = 0x11;

/** enum nf_tables_msg_types. */
export const NFT_MSG = {
  NEWTABLE: 0,
  GETTABLE: 1,
  DELTABLE: 2,
  NEWCHAIN: 3,
  GETCHAIN: 4,
  DELCHAIN: 5,
  NEWRULE: 6,
  GETRULE: 7,
  DELRULE: 8,
  NEWSET: 9,
  GETSET: 10,
  DELSET: 11,
  NEWSETELEM: 12,
  GETSETELEM: 13,
  DELSETELEM: 14,
  NEWGEN: 15,
  GETGEN: 16,
  NEWOBJ: 18,
  GETOBJ: 19,
  DELOBJ: 20,
} as const;

/** nlmsg_type of an nf_tables message: subsystem in the high byte. */
export const nftMsg = (m: number): number => (NFNL_SUBSYS_NFTABLES << 8) | m;

/** NFPROTO_*: the table family in struct nfgenmsg. */
export const NFPROTO = { UNSPEC: 0, INET: 1, IPV4: 2, IPV6: 10 } as const;
/** The NFPROTO of an ip (4) or ip6 (6) table. */
export const nfproto = (family: 4 | 6): number => (family === 6 ? NFPROTO.IPV6 : NFPROTO.IPV4);

/** nf_inet_hooks. */
export const NF_INET_HOOK = { prerouting: 0, input: 1, forward: 2, output: 3, postrouting: 4 } as const;

/** Verdict codes (netfilter.h NF_*, nf_tables.h NFT_*). */
export const VERDICT = { drop: 0, accept: 1, continue: -1, break: -2, jump: -3, goto: -4, return: -5 } as const;
export const NFT_DATA_VERDICT = 0xffffff00;

/** Registers (enum nft_registers): the verdict, the 16-byte NFT_REG_1 .. 4, and the 4-byte NFT_REG32_00 .. 15 (slot k is 8 + k). */
export const NFT_REG_VERDICT = 0;
export const NFT_REG_1 = 1;
export const NFT_REG32_00 = 8;

export const NFT_SET_F = {
  ANONYMOUS: 0x1,
  CONSTANT: 0x2,
  INTERVAL: 0x4,
  MAP: 0x8,
  TIMEOUT: 0x10,
  EVAL: 0x20,
  OBJECT: 0x40,
  CONCAT: 0x80,
  EXPR: 0x100,
} as const;
export const NFT_SET_ELEM_INTERVAL_END = 0x1;
export const NFT_PAYLOAD_BASE = { ll: 0, network: 1, transport: 2 } as const;
export const NFT_CMP_OP = { eq: 0, neq: 1, lt: 2, lte: 3, gt: 4, gte: 5 } as const;
export const NFT_META = { mark: 3, iif: 4, oif: 5, iifname: 6, oifname: 7, nfproto: 15, l4proto: 16 } as const;
export const NFT_CT = {
  state: 0,
  direction: 1,
  status: 2,
  mark: 3,
  protocol: 10,
  proto_src: 11,
  proto_dst: 12,
  src_ip: 19,
  dst_ip: 20,
  src_ip6: 21,
  dst_ip6: 22,
} as const;
export const NFT_NAT_TYPE = { snat: 0, dnat: 1 } as const;
/** NF_NAT_RANGE_* flags. */
export const NF_NAT_RANGE = {
  MAP_IPS: 0x1,
  PROTO_SPECIFIED: 0x2,
  PROTO_RANDOM: 0x4,
  PERSISTENT: 0x8,
  PROTO_RANDOM_FULLY: 0x10,
} as const;
export const NFT_FIB_RESULT = { oif: 1, oifname: 2, addrtype: 3 } as const;
export const NFT_FIB_F = { saddr: 0x1, daddr: 0x2, mark: 0x4, iif: 0x8, oif: 0x10, present: 0x20 } as const;
export const NFT_DYNSET_OP = { add: 0, update: 1, delete: 2 } as const;
export const NFT_NG = { incremental: 0, random: 1 } as const;
export const NFT_REJECT = { icmp_unreach: 0, tcp_rst: 1, icmpx_unreach: 2 } as const;
/** The ICMP code `reject` sends (linux/icmp.h ICMP_PORT_UNREACH, icmpv6.h ICMPV6_PORT_UNREACH): port unreachable, as nft's plain `reject`. */
export const ICMP_PORT_UNREACH = { 4: 3, 6: 4 } as const;
export const NFT_BYTEORDER_OP = { ntoh: 0, hton: 1 } as const;

// ---------------------------------------------------------------------------
// Attribute tables.

export const NFTA_TABLE = [
  { type: 1, name: 'name', codec: asciiz },
  { type: 2, name: 'flags', codec: be32 },
  { type: 3, name: 'use', codec: be32 },
  { type: 4, name: 'handle', codec: be64 },
  { type: 6, name: 'userdata', codec: binary },
] as const satisfies Table;

export const NFTA_HOOK = [
  { type: 1, name: 'hooknum', codec: be32 },
  { type: 2, name: 'priority', codec: s32be },
] as const satisfies Table;

export const NFTA_COUNTER = [
  { type: 1, name: 'bytes', codec: be64 },
  { type: 2, name: 'packets', codec: be64 },
] as const satisfies Table;

export const NFTA_CHAIN = [
  { type: 1, name: 'table', codec: asciiz },
  { type: 2, name: 'handle', codec: be64 },
  { type: 3, name: 'name', codec: asciiz },
  { type: 4, name: 'hook', codec: nested(NFTA_HOOK, { setNestedFlag: true }) },
  { type: 5, name: 'policy', codec: be32 },
  { type: 6, name: 'use', codec: be32 },
  { type: 7, name: 'type', codec: asciiz },
  { type: 8, name: 'counters', codec: nested(NFTA_COUNTER, { setNestedFlag: true }) },
  { type: 10, name: 'flags', codec: be32 },
  { type: 12, name: 'userdata', codec: binary },
] as const satisfies Table;

/** NFTA_VERDICT_*: a verdict code and, for jump/goto, the chain. */
export const NFTA_VERDICT = [
  { type: 1, name: 'code', codec: s32be },
  { type: 2, name: 'chain', codec: asciiz },
] as const satisfies Table;

/** NFTA_DATA_*: a value, or a verdict. */
export const NFTA_DATA = [
  { type: 1, name: 'value', codec: binary },
  { type: 2, name: 'verdict', codec: nested(NFTA_VERDICT, { setNestedFlag: true }) },
] as const satisfies Table;
const data = nested(NFTA_DATA, { setNestedFlag: true });

// One table per expression (NFTA_<NAME>_*), chosen by the expression's name.
const EXPR_TABLES = {
  payload: [
    { type: 1, name: 'dreg', codec: be32 },
    { type: 2, name: 'base', codec: be32 },
    { type: 3, name: 'offset', codec: be32 },
    { type: 4, name: 'len', codec: be32 },
  ],
  cmp: [
    { type: 1, name: 'sreg', codec: be32 },
    { type: 2, name: 'op', codec: be32 },
    { type: 3, name: 'data', codec: data },
  ],
  bitwise: [
    { type: 1, name: 'sreg', codec: be32 },
    { type: 2, name: 'dreg', codec: be32 },
    { type: 3, name: 'len', codec: be32 },
    { type: 4, name: 'mask', codec: data },
    { type: 5, name: 'xor', codec: data },
    { type: 6, name: 'op', codec: be32 },
  ],
  byteorder: [
    { type: 1, name: 'sreg', codec: be32 },
    { type: 2, name: 'dreg', codec: be32 },
    { type: 3, name: 'op', codec: be32 },
    { type: 4, name: 'len', codec: be32 },
    { type: 5, name: 'size', codec: be32 },
  ],
  meta: [
    { type: 1, name: 'dreg', codec: be32 },
    { type: 2, name: 'key', codec: be32 },
    { type: 3, name: 'sreg', codec: be32 },
  ],
  ct: [
    { type: 1, name: 'dreg', codec: be32 },
    { type: 2, name: 'key', codec: be32 },
    { type: 3, name: 'direction', codec: u8 },
    { type: 4, name: 'sreg', codec: be32 },
  ],
  lookup: [
    { type: 1, name: 'set', codec: asciiz },
    { type: 2, name: 'sreg', codec: be32 },
    { type: 3, name: 'dreg', codec: be32 },
    { type: 4, name: 'setId', codec: be32 },
    { type: 5, name: 'flags', codec: be32 },
  ],
  dynset: [
    { type: 1, name: 'set', codec: asciiz },
    { type: 2, name: 'setId', codec: be32 },
    { type: 3, name: 'op', codec: be32 },
    { type: 4, name: 'sregKey', codec: be32 },
    { type: 5, name: 'sregData', codec: be32 },
    { type: 6, name: 'timeout', codec: be64 },
    { type: 9, name: 'flags', codec: be32 },
  ],
  immediate: [
    { type: 1, name: 'dreg', codec: be32 },
    { type: 2, name: 'data', codec: data },
  ],
  numgen: [
    { type: 1, name: 'dreg', codec: be32 },
    { type: 2, name: 'modulus', codec: be32 },
    { type: 3, name: 'type', codec: be32 },
    { type: 4, name: 'offset', codec: be32 },
  ],
  nat: [
    { type: 1, name: 'type', codec: be32 },
    { type: 2, name: 'family', codec: be32 },
    { type: 3, name: 'regAddrMin', codec: be32 },
    { type: 4, name: 'regAddrMax', codec: be32 },
    { type: 5, name: 'regProtoMin', codec: be32 },
    { type: 6, name: 'regProtoMax', codec: be32 },
    { type: 7, name: 'flags', codec: be32 },
  ],
  masq: [
    { type: 1, name: 'flags', codec: be32 },
    { type: 2, name: 'regProtoMin', codec: be32 },
    { type: 3, name: 'regProtoMax', codec: be32 },
  ],
  fib: [
    { type: 1, name: 'dreg', codec: be32 },
    { type: 2, name: 'result', codec: be32 },
    { type: 3, name: 'flags', codec: be32 },
  ],
  counter: NFTA_COUNTER,
  reject: [
    { type: 1, name: 'type', codec: be32 },
    { type: 2, name: 'icmpCode', codec: u8 },
  ],
} as const satisfies Record<string, Table>;

type ExprName = keyof typeof EXPR_TABLES;
/** An NFTA_EXPR as decoded: its name, and its data decoded by that name's table. */
export type ExprAttrs = { [N in ExprName]: { name: N; data?: Decoded<(typeof EXPR_TABLES)[N]> } }[ExprName];

/** NFTA_EXPR_*: an expression is its name plus the attributes of that name's table. */
export const NFTA_EXPR = [
  { type: 1, name: 'name', codec: asciiz },
  {
    type: 2,
    name: 'data',
    codec: selectBy(
      'name',
      Object.fromEntries(Object.entries(EXPR_TABLES).map(([k, t]) => [k, nested(t, { setNestedFlag: true })])),
    ) as Codec<AttrObject>,
  },
] as const satisfies Table;
export const NFTA_LIST_ELEM = 1;
// NFTA_EXPR_DATA's table is the one its sibling NFTA_EXPR_NAME names (selectBy): what decodes is an ExprAttrs.
const expr = nested(NFTA_EXPR, { setNestedFlag: true }) as unknown as Codec<ExprAttrs>;
const exprs = list(NFTA_LIST_ELEM, expr);

export const NFTA_RULE = [
  { type: 1, name: 'table', codec: asciiz },
  { type: 2, name: 'chain', codec: asciiz },
  { type: 3, name: 'handle', codec: be64 },
  { type: 4, name: 'expressions', codec: exprs },
  { type: 6, name: 'position', codec: be64 },
  { type: 7, name: 'userdata', codec: binary },
] as const satisfies Table;

export const NFTA_SET_FIELD = [{ type: 1, name: 'len', codec: be32 }] as const satisfies Table;
export const NFTA_SET_DESC = [
  { type: 1, name: 'size', codec: be32 },
  { type: 2, name: 'concat', codec: list(NFTA_LIST_ELEM, nested(NFTA_SET_FIELD, { setNestedFlag: true })) },
] as const satisfies Table;

export const NFTA_SET = [
  { type: 1, name: 'table', codec: asciiz },
  { type: 2, name: 'name', codec: asciiz },
  { type: 3, name: 'flags', codec: be32 },
  { type: 4, name: 'keyType', codec: be32 },
  { type: 5, name: 'keyLen', codec: be32 },
  { type: 6, name: 'dataType', codec: be32 },
  { type: 7, name: 'dataLen', codec: be32 },
  { type: 9, name: 'desc', codec: nested(NFTA_SET_DESC, { setNestedFlag: true }) },
  { type: 10, name: 'id', codec: be32 },
  { type: 11, name: 'timeout', codec: be64 },
  { type: 12, name: 'gcInterval', codec: be32 },
  { type: 13, name: 'userdata', codec: binary },
  { type: 17, name: 'expr', codec: expr },
] as const satisfies Table;

export const NFTA_SET_ELEM = [
  { type: 1, name: 'key', codec: data },
  { type: 2, name: 'data', codec: data },
  { type: 3, name: 'flags', codec: be32 },
  { type: 4, name: 'timeout', codec: be64 },
  { type: 5, name: 'expiration', codec: be64 },
  { type: 6, name: 'userdata', codec: binary },
  { type: 7, name: 'expr', codec: expr },
  { type: 10, name: 'keyEnd', codec: data },
  { type: 11, name: 'expressions', codec: exprs },
] as const satisfies Table;

export const NFTA_SET_ELEM_LIST = [
  { type: 1, name: 'table', codec: asciiz },
  { type: 2, name: 'set', codec: asciiz },
  {
    type: 3,
    name: 'elements',
    codec: list(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM, { setNestedFlag: true }), { anyType: true }),
  },
  { type: 4, name: 'setId', codec: be32 },
] as const satisfies Table;

export { be16 };
