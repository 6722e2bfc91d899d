/**
 * The netlink serialiser: a plan of operations (./plan) as one nf_tables
 * batch (NFNL_MSG_BATCH_BEGIN .. END), which the kernel applies as one
 * transaction. Messages carry the flags nft gives the same commands; rules
 * are the expressions ./lowering compiles; sets carry nft's userdata (./udata).
 * Each message's sequence number maps back to the operation it came from,
 * and its label ("adding rule ... to chain ...") is made from that only when
 * the kernel refuses the message (google/nftables keeps each message's rule
 * and formats it in handleReceiveError): a sync of a big table formats no
 * rule.
 */
import { attrType, type AttrObject } from '../../netlink/attrs';
import { nfgenmsg } from '../../netlink/nfnetlink';
import { NlWriter } from '../../netlink/writer';
import {
  NFNL_MSG_BATCH_BEGIN,
  NFNL_MSG_BATCH_END,
  NFNL_SUBSYS_NFTABLES,
  NFPROTO,
  NFTA_CHAIN,
  NFTA_DATA,
  NFTA_RULE,
  NFTA_SET,
  NFTA_SET_ELEM,
  NFTA_SET_ELEM_LIST,
  NFTA_TABLE,
  NFTA_VERDICT,
  NFT_DATA_VERDICT,
  NFT_MSG,
  NFT_SET_F,
  NFT_SET_ELEM_INTERVAL_END,
  NF_INET_HOOK,
  NFTA_LIST_ELEM,
  VERDICT,
  nfproto,
  nftMsg,
} from '../../netlink/nftables';
import { NLM_F } from '../../netlink/socket';
import { NFT_TABLE } from '../constants';
import { exprAttrs } from './expr';
import { ANON_MAP, encodeKey, keyLen, lowerItem, writeKey, type LowerContext, type SetInfo } from './lowering';
import type { Op, Plan } from './plan';
import {
  isTarget,
  type AnonymousVmap,
  type Element,
  type Family,
  type KeyExpr,
  type NamedSet,
  type Rule,
  type Target,
  type Value,
} from './ruleset';
import { elementText, formatRule } from './text';
import { commentUdata, datatype, setUdata, writeCommentUdata } from './udata';

/** One batch, ready to send: the bytes, and what the message of a sequence number was doing (for an error). */
export interface Batch {
  bytes: Buffer;
  firstSeq: number;
  lastSeq: number;
  /** "adding rule ... to chain ...": made when asked (the kernel refused that message). */
  describe(seq: number): string | undefined;
}

/** What a message came from: its operation, and which of its rules or elements. */
interface MessageRef {
  op: Op;
  rule?: Rule;
  /** Elements [first, first + count) of the operation's list. */
  first?: number;
  count?: number;
  /** The anonymous map (and its elements) of a rule in this chain. */
  anonIn?: string;
}

function describe(ref: MessageRef, family: Family): string {
  const { op } = ref;
  if (ref.anonIn !== undefined) return `creating the anonymous map of a rule in chain ${ref.anonIn}`;
  switch (op.kind) {
    case 'add-table':
      return `adding table ${NFT_TABLE}`;
    case 'delete-table':
      return `deleting table ${NFT_TABLE}`;
    case 'add-set':
      return `adding ${op.set.data === undefined ? 'set' : 'map'} ${op.set.name}`;
    case 'delete-set':
      return `deleting set ${op.name}`;
    case 'add-chain':
      return `adding chain ${op.chain.name}`;
    case 'flush-chain':
      return `flushing chain ${op.name}`;
    case 'delete-chain':
      return `deleting chain ${op.name}`;
    case 'add-rules':
      return `adding rule "${formatRule(ref.rule!, family)}" to chain ${op.chain}`;
    case 'add-elements':
    case 'delete-elements': {
      const adding = op.kind === 'add-elements';
      const n = ref.count ?? 0;
      return `${adding ? 'adding' : 'deleting'} ${n === 1 ? 'element' : `${n} elements`} ${adding ? 'to' : 'of'} ${op.set}, from ${elementText(op.elements.at(ref.first ?? 0)!)}`;
    }
  }
}

/** An element list must fit a 16-bit attribute length: split well before. */
const ELEMENTS_NEST_LIMIT = 60_000;

// The attribute numbers the element fast path writes, from the tables that define them.
const ELEM = {
  KEY: attrType(NFTA_SET_ELEM, 'key'),
  DATA: attrType(NFTA_SET_ELEM, 'data'),
  USERDATA: attrType(NFTA_SET_ELEM, 'userdata'),
  KEY_END: attrType(NFTA_SET_ELEM, 'keyEnd'),
};
const LIST_ELEMENTS = attrType(NFTA_SET_ELEM_LIST, 'elements');
const DATA_VALUE = attrType(NFTA_DATA, 'value');
const DATA_VERDICT = attrType(NFTA_DATA, 'verdict');
const VERDICT_CODE = attrType(NFTA_VERDICT, 'code');
const VERDICT_CHAIN = attrType(NFTA_VERDICT, 'chain');

class BatchWriter {
  readonly w: NlWriter;
  readonly refs = new Map<number, MessageRef>();
  /** IPv6 key bytes, made once per address in this batch. */
  readonly v6 = new Map<string, Buffer>();
  private nextId = 1;
  /** Sets created in this batch, by name: lookups find them by id (the kernel resolves names only at commit). */
  readonly created = new Map<string, SetInfo>();
  readonly firstSeq: number;
  private seq: number;
  /** Every message's nfgenmsg: the family is the batch's. */
  private readonly header: Buffer;

  /** `size`: the batch's expected size, so the buffer is allocated once instead of doubling through garbage. */
  constructor(
    readonly family: Family,
    seq: number,
    size: number,
  ) {
    this.w = new NlWriter(size);
    this.firstSeq = seq;
    this.seq = seq;
    this.header = nfgenmsg(nfproto(family));
    this.frame(NFNL_MSG_BATCH_BEGIN);
  }

  private frame(type: number): void {
    const at = this.w.beginMessage(type, NLM_F.REQUEST, this.seq++);
    this.w.bytes(nfgenmsg(NFPROTO.UNSPEC, NFNL_SUBSYS_NFTABLES));
    this.w.endMessage(at);
  }

  /** One nf_tables message of this table's family, from `ref`; `fill` writes its attributes. */
  message(type: number, flags: number, ref: MessageRef, fill: () => void): void {
    const seq = this.seq++;
    const at = this.w.beginMessage(nftMsg(type), NLM_F.REQUEST | flags, seq);
    this.w.bytes(this.header);
    fill();
    this.w.endMessage(at);
    this.refs.set(seq, ref);
  }

  newId(): number {
    return this.nextId++;
  }

  finish(): Batch {
    const lastSeq = this.seq;
    this.frame(NFNL_MSG_BATCH_END);
    const { refs, family } = this;
    // The writer's own buffer, not a copy: nothing writes to it after this (a 10,000-service batch is megabytes).
    return {
      bytes: this.w.view(),
      firstSeq: this.firstSeq,
      lastSeq,
      describe: (seq) => {
        const ref = refs.get(seq);
        return ref && describe(ref, family);
      },
    };
  }
}

/** The set a field list needs: its key type and length, as nft declares them. */
function keyAttrs(k: KeyExpr, family: Family): AttrObject {
  return { keyType: datatype(k, family), keyLen: keyLen(k, family) };
}

function setAttrs(b: BatchWriter, s: NamedSet, id: number): AttrObject {
  const fam = b.family;
  let flags = 0;
  if (s.data !== undefined) flags |= NFT_SET_F.MAP;
  if (s.interval) flags |= NFT_SET_F.INTERVAL | (s.key.fields.length > 1 ? NFT_SET_F.CONCAT : 0);
  if (s.timeout !== undefined) flags |= NFT_SET_F.TIMEOUT | NFT_SET_F.EVAL;
  const a: AttrObject = {
    table: NFT_TABLE,
    name: s.name,
    flags,
    ...keyAttrs(s.key, fam),
    id,
    userdata: setUdata(s, fam),
  };
  if (s.data === 'verdict') Object.assign(a, { dataType: NFT_DATA_VERDICT, dataLen: 0 });
  else if (s.data !== undefined) Object.assign(a, { dataType: datatype(s.data, fam), dataLen: keyLen(s.data, fam) });
  if (s.interval && s.key.fields.length > 1) {
    a.desc = { concat: s.key.fields.map((f) => ({ len: keyLen({ fields: [f] }, fam) })) };
  }
  if (s.timeout !== undefined) a.timeout = BigInt(s.timeout) * 1000n;
  if (s.counter) a.expr = { name: 'counter', data: {} };
  return a;
}

function dataAttrs(e: Element, s: Pick<NamedSet, 'data'>, family: Family): AttrObject | undefined {
  if (e.data === undefined) return undefined;
  if (isTarget(e.data)) return { verdict: { code: VERDICT[e.data.verdict], chain: e.data.chain } };
  return { value: encodeKey(s.data as KeyExpr, e.data as Value[], family, false) };
}

/** A `{ value }` data nest holding one key's bytes. */
function valueNest(b: BatchWriter, type: number, key: KeyExpr, values: readonly Value[], interval: boolean): void {
  const outer = b.w.begin(type, true);
  const inner = b.w.begin(DATA_VALUE);
  writeKey(b.w, key, values, b.family, interval, b.v6);
  b.w.end(inner);
  b.w.end(outer);
}

/** NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE (s32be), CHAIN } }: the element of a verdict map. */
function verdictNest(w: NlWriter, t: Target): void {
  const outer = w.begin(ELEM.DATA, true);
  const verdict = w.begin(DATA_VERDICT, true);
  const code = w.begin(VERDICT_CODE);
  w.u32be(VERDICT[t.verdict]);
  w.end(code);
  if (t.chain !== undefined) {
    const chain = w.begin(VERDICT_CHAIN);
    w.asciiz(t.chain);
    w.end(chain);
  }
  w.end(verdict);
  w.end(outer);
}

/**
 * One model element as the kernel's element, written straight into the batch
 * (the hot path: a big sync writes one per endpoint and service). An interval
 * of a concatenation is key + key end (pipapo).
 */
function writeElement(
  b: BatchWriter,
  e: Element,
  s: Pick<NamedSet, 'key' | 'data' | 'interval'>,
  withData: boolean,
): void {
  const interval = s.interval ?? false;
  const pipapo = interval && s.key.fields.length > 1;
  const last = e.key[e.key.length - 1]!;
  if (Array.isArray(last)) {
    const [from, to] = last as readonly [number, number];
    const head = e.key.slice(0, -1);
    valueNest(b, ELEM.KEY, s.key, [...head, from], interval);
    if (pipapo) valueNest(b, ELEM.KEY_END, s.key, [...head, to], interval);
  } else {
    valueNest(b, ELEM.KEY, s.key, e.key, interval);
    if (pipapo) valueNest(b, ELEM.KEY_END, s.key, e.key, interval);
  }
  if (!withData) return;
  if (e.data !== undefined) {
    if (isTarget(e.data)) verdictNest(b.w, e.data);
    else valueNest(b, ELEM.DATA, s.data as KeyExpr, e.data as Value[], false);
  }
  if (e.comment !== undefined) {
    const at = b.w.begin(ELEM.USERDATA);
    writeCommentUdata(b.w, e.comment);
    b.w.end(at);
  }
}

/** NEWSETELEM / DELSETELEM messages for `count` elements that `write(i)` writes, split so each element list fits its attribute. */
function elementMessages(
  b: BatchWriter,
  type: number,
  flags: number,
  set: string,
  info: SetInfo,
  count: number,
  write: (i: number) => void,
  ref: (first: number, n: number) => MessageRef,
): void {
  let i = 0;
  while (i < count) {
    const start = i;
    const r = ref(start, 0);
    b.message(type, flags, r, () => {
      b.w.attrs(NFTA_SET_ELEM_LIST, { table: NFT_TABLE, set, setId: info.id });
      const nest = b.w.begin(LIST_ELEMENTS, true);
      const begun = b.w.length;
      while (i < count && b.w.length - begun < ELEMENTS_NEST_LIMIT) {
        const e = b.w.begin(NFTA_LIST_ELEM, true);
        write(i);
        b.w.end(e);
        i++;
      }
      b.w.end(nest);
    });
    r.count = i - start; // known once written: the ref says how many the message holds
  }
}

/**
 * An anonymous interval vmap (`numgen random mod W vmap { 0 : goto a, 1-2 : goto b }`):
 * its own constant set, created just before the rule, with the ranges as
 * start elements and one end element after the last (adjacent ranges share edges).
 */
function anonymousVmap(b: BatchWriter, key: KeyExpr, m: AnonymousVmap, op: Op & { kind: 'add-rules' }): SetInfo {
  const fam = b.family;
  const id = b.newId();
  const decl: NamedSet = { name: ANON_MAP, key, data: 'verdict', interval: m.interval };
  const kernel: AttrObject[] = [];
  let end: number | undefined;
  for (const e of m.elements) {
    const v = e.key[0]!;
    const [from, to] = Array.isArray(v) ? (v as readonly [number, number]) : [v as number, v as number];
    if (m.interval && end !== undefined && end !== from)
      kernel.push({ key: { value: encodeKey(key, [end], fam, true) }, flags: NFT_SET_ELEM_INTERVAL_END });
    kernel.push({ key: { value: encodeKey(key, [from], fam, m.interval) }, data: dataAttrs(e, decl, fam) });
    end = to + 1;
  }
  if (m.interval && end !== undefined)
    kernel.push({ key: { value: encodeKey(key, [end], fam, true) }, flags: NFT_SET_ELEM_INTERVAL_END });
  const attrs = setAttrs(b, decl, id);
  attrs.flags = (attrs.flags as number) | NFT_SET_F.ANONYMOUS | NFT_SET_F.CONSTANT;
  attrs.userdata = setUdata(decl, fam, { anonymous: true });
  // nft sizes an anonymous interval set at two elements per range.
  attrs.desc = { size: 2 * m.elements.length };
  const ref: MessageRef = { op, anonIn: op.chain };
  b.message(NFT_MSG.NEWSET, NLM_F.CREATE, ref, () => b.w.attrs(NFTA_SET, attrs));
  const info: SetInfo = { interval: m.interval, id };
  elementMessages(
    b,
    NFT_MSG.NEWSETELEM,
    NLM_F.CREATE,
    ANON_MAP,
    info,
    kernel.length,
    (i) => b.w.attrs(NFTA_SET_ELEM, kernel[i]!),
    () => ref,
  );
  return info;
}

function ruleMessage(b: BatchWriter, op: Op & { kind: 'add-rules' }, r: Rule, cx: LowerContext): void {
  const anon = r.items.find(
    (i): i is Extract<typeof i, { kind: 'vmap' }> => i.kind === 'vmap' && typeof i.map !== 'string',
  );
  // The rule's anonymous map, made first; its items lowered knowing it.
  const anonSet = anon && anonymousVmap(b, anon.key, anon.map as AnonymousVmap, op);
  const rcx: LowerContext = anonSet ? { ...cx, set: (n) => (n === ANON_MAP ? anonSet : cx.set(n)) } : cx;
  const exprs = r.items.flatMap((i) => lowerItem(i, rcx)).map(exprAttrs);
  const attrs: AttrObject = { table: NFT_TABLE, chain: op.chain, expressions: exprs };
  if (r.comment !== undefined) attrs.userdata = commentUdata(r.comment);
  b.message(NFT_MSG.NEWRULE, NLM_F.CREATE | NLM_F.APPEND, { op, rule: r }, () => b.w.attrs(NFTA_RULE, attrs));
}

/** About 96 bytes an element, 512 a rule or anything else: the buffer is allocated once. */
function expectedSize(ops: readonly Op[]): number {
  let size = 1 << 16;
  for (const o of ops)
    size +=
      o.kind === 'add-elements' || o.kind === 'delete-elements'
        ? o.elements.length * 96
        : o.kind === 'add-rules'
          ? o.rules.length * 512
          : 512;
  return size;
}

/** The messages of one operation. `decls`: the sets the table has at this point (the plan checked they do). */
function encodeOp(b: BatchWriter, op: Op, decls: Map<string, NamedSet>, cx: LowerContext): void {
  const t = NFT_TABLE;
  const ref = { op };
  switch (op.kind) {
    case 'add-table':
      return b.message(NFT_MSG.NEWTABLE, 0, ref, () => b.w.attrs(NFTA_TABLE, { name: t, flags: 0 }));
    case 'delete-table':
      return b.message(NFT_MSG.DELTABLE, 0, ref, () => b.w.attrs(NFTA_TABLE, { name: t }));
    case 'add-set': {
      const id = b.newId();
      decls.set(op.set.name, op.set);
      b.created.set(op.set.name, { interval: op.set.interval ?? false, id });
      return b.message(NFT_MSG.NEWSET, NLM_F.CREATE, ref, () => b.w.attrs(NFTA_SET, setAttrs(b, op.set, id)));
    }
    case 'delete-set':
      return b.message(NFT_MSG.DELSET, 0, ref, () => b.w.attrs(NFTA_SET, { table: t, name: op.name }));
    case 'add-chain': {
      const c = op.chain;
      const a: AttrObject = { table: t, name: c.name };
      if (c.hook)
        Object.assign(a, {
          hook: { hooknum: NF_INET_HOOK[c.hook.hook], priority: c.hook.priority },
          policy: VERDICT.accept,
          type: c.hook.type,
        });
      return b.message(NFT_MSG.NEWCHAIN, NLM_F.CREATE, ref, () => b.w.attrs(NFTA_CHAIN, a));
    }
    case 'flush-chain':
      return b.message(NFT_MSG.DELRULE, 0, ref, () => b.w.attrs(NFTA_RULE, { table: t, chain: op.name }));
    case 'delete-chain':
      return b.message(NFT_MSG.DELCHAIN, 0, ref, () => b.w.attrs(NFTA_CHAIN, { table: t, name: op.name }));
    case 'add-rules':
      for (const r of op.rules) ruleMessage(b, op, r, cx);
      return;
    case 'add-elements':
    case 'delete-elements': {
      const decl = decls.get(op.set)!;
      const adding = op.kind === 'add-elements';
      return elementMessages(
        b,
        adding ? NFT_MSG.NEWSETELEM : NFT_MSG.DELSETELEM,
        adding ? NLM_F.CREATE : 0,
        op.set,
        cx.set(op.set),
        op.elements.length,
        (i) => writeElement(b, op.elements.at(i)!, decl, adding),
        (first, count) => ({ op, first, count }),
      );
    }
  }
}

/** A plan as one nf_tables batch, its first message numbered `seq`. */
export function encodePlan(plan: Pick<Plan, 'ops' | 'existing'>, family: Family, seq: number): Batch {
  const b = new BatchWriter(family, seq, expectedSize(plan.ops));
  const decls = new Map(plan.existing.map((s) => [s.name, s]));
  const cx: LowerContext = {
    family,
    set: (name) => b.created.get(name) ?? { interval: decls.get(name)?.interval ?? false },
  };
  for (const op of plan.ops) encodeOp(b, op, decls, cx);
  return b.finish();
}
