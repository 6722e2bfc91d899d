/**
 * The netlink serialiser: a plan of operations (./plan) as one nf_tables
 * batch (NFNL_MSG_BATCH_BEGIN .. END), which the kernel applies as one
 * transaction. Messages carry the flags nft gives the same commands; rules
 * are the expressions ./lower compiles; sets carry nft's userdata (./udata).
 * Each message's sequence number maps back to what it does, so an error
 * names the rule, set or element it came from.
 */
import { type AttrObject } from '../../netlink/attrs';
import { NlWriter } from '../../netlink/writer';
import {
  NFNL_MSG_BATCH_BEGIN,
  NFNL_MSG_BATCH_END,
  NFNL_SUBSYS_NFTABLES,
  NFPROTO,
  NFTA_CHAIN,
  NFTA_RULE,
  NFTA_SET,
  NFTA_SET_ELEM,
  NFTA_SET_ELEM_LIST,
  NFTA_TABLE,
  NFT_DATA_VERDICT,
  NFT_MSG,
  NFT_SET_F,
  NFT_SET_ELEM_INTERVAL_END,
  NF_INET_HOOK,
  NFTA_LIST_ELEM,
  VERDICT,
  nftMsg,
} from '../../netlink/nftables';
import { NLM_F } from '../../netlink/socket';
import { NFT_TABLE } from '../constants';
import { exprAttrs } from './expr';
import { encodeKey, keyLen, lowerItem, writeKey, type LowerContext, type SetInfo } from './lowering';
import type { Op } from './plan';
import {
  isTarget,
  type AnonymousVmap,
  type Element,
  type Family,
  type KeyExpr,
  type NamedSet,
  type Rule,
  type Value,
} from './ruleset';
import { elementText, formatRule } from './text';
import { commentUdata, datatype, setUdata, writeCommentUdata } from './udata';

/** One batch, ready to send: the bytes, and what each sequence number was doing (for error messages). */
export interface Batch {
  bytes: Buffer;
  /** seq -> "adding rule ... to chain ...": every message but BEGIN and END. */
  what: Map<number, string>;
  firstSeq: number;
  lastSeq: number;
}

const nfproto = (f: Family) => (f === 6 ? NFPROTO.IPV6 : NFPROTO.IPV4);
/** An element list must fit a 16-bit attribute length: split well before. */
const ELEMENTS_NEST_LIMIT = 60_000;
const ANON_MAP = '__map%d';

class BatchWriter {
  readonly w: NlWriter;
  readonly what = new Map<number, string>();
  private nextId = 1;
  /** Sets created in this batch, by name: lookups find them by id (the kernel resolves names only at commit). */
  readonly created = new Map<string, SetInfo>();
  readonly firstSeq: number;
  private seq: number;

  /** `size`: the batch's expected size, so the buffer is allocated once instead of doubling through garbage. */
  constructor(
    readonly family: Family,
    seq: number,
    size: number,
  ) {
    this.w = new NlWriter(size);
    this.firstSeq = seq;
    this.seq = seq;
    this.frame(NFNL_MSG_BATCH_BEGIN);
  }

  private frame(type: number): void {
    const at = this.w.beginMessage(type, NLM_F.REQUEST, this.seq++);
    this.nfgen(0, NFNL_SUBSYS_NFTABLES);
    this.w.endMessage(at);
  }

  private nfgen(family: number, resId = 0): void {
    this.w.u8(family);
    this.w.u8(0);
    this.w.u16be(resId);
  }

  /** One nf_tables message of this table's family; `fill` writes its attributes. */
  message(type: number, flags: number, what: string, fill: () => void): number {
    const seq = this.seq++;
    const at = this.w.beginMessage(nftMsg(type), NLM_F.REQUEST | flags, seq);
    this.nfgen(nfproto(this.family));
    fill();
    this.w.endMessage(at);
    this.what.set(seq, what);
    return seq;
  }

  newId(): number {
    return this.nextId++;
  }

  finish(): Batch {
    const lastSeq = this.seq;
    this.frame(NFNL_MSG_BATCH_END);
    // The writer's own buffer, not a copy: nothing writes to it after this (copying the 4 MB batch of 10,000 services cost ~30 ms).
    return { bytes: this.w.view(), what: this.what, firstSeq: this.firstSeq, lastSeq };
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

// NFTA_SET_ELEM_* and NFTA_DATA_* numbers, for the element fast path below.
const ELEM = { KEY: 1, DATA: 2, USERDATA: 6, KEY_END: 10 } as const;
const DATA_VALUE = 1;
const DATA_VERDICT = 2;
const VERDICT_CODE = 1;
const VERDICT_CHAIN = 2;

/** A `{ value }` data nest holding one key's bytes. */
function valueNest(
  w: NlWriter,
  type: number,
  key: KeyExpr,
  values: readonly Value[],
  family: Family,
  interval: boolean,
): void {
  const outer = w.begin(type, true);
  const inner = w.begin(DATA_VALUE);
  writeKey(w, key, values, family, interval);
  w.end(inner);
  w.end(outer);
}

/**
 * One model element as the kernel's element, written straight into the batch
 * (the hot path: a sync of 10,000 services writes 60,000 of them). An interval
 * of a concatenation is key + key end (pipapo).
 */
function writeElement(
  w: NlWriter,
  e: Element,
  s: Pick<NamedSet, 'key' | 'data' | 'interval'>,
  family: Family,
  withData: boolean,
): void {
  const interval = s.interval ?? false;
  const last = e.key[e.key.length - 1]!;
  if (Array.isArray(last)) {
    const [from, to] = last as readonly [number, number];
    const head = e.key.slice(0, -1);
    valueNest(w, ELEM.KEY, s.key, [...head, from], family, interval);
    if (interval && s.key.fields.length > 1) valueNest(w, ELEM.KEY_END, s.key, [...head, to], family, interval);
  } else {
    valueNest(w, ELEM.KEY, s.key, e.key, family, interval);
    if (interval && s.key.fields.length > 1) valueNest(w, ELEM.KEY_END, s.key, e.key, family, interval);
  }
  if (!withData) return;
  if (e.data !== undefined) {
    if (isTarget(e.data)) {
      // NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE (s32be), CHAIN } }: the element of a verdict map.
      const outer = w.begin(ELEM.DATA, true);
      const verdict = w.begin(DATA_VERDICT, true);
      const code = w.begin(VERDICT_CODE);
      w.u32be(VERDICT[e.data.verdict]);
      w.end(code);
      if (e.data.chain !== undefined) {
        const chain = w.begin(VERDICT_CHAIN);
        w.asciiz(e.data.chain);
        w.end(chain);
      }
      w.end(verdict);
      w.end(outer);
    } else valueNest(w, ELEM.DATA, s.data as KeyExpr, e.data as Value[], family, false);
  }
  if (e.comment !== undefined) {
    const at = w.begin(ELEM.USERDATA);
    writeCommentUdata(w, e.comment);
    w.end(at);
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
  what: (first: number, n: number) => string,
): void {
  let i = 0;
  while (i < count) {
    const start = i;
    const seq = b.message(type, flags, '', () => {
      b.w.attrs(NFTA_SET_ELEM_LIST, { table: NFT_TABLE, set, setId: info.id });
      const nest = b.w.begin(3, true); // NFTA_SET_ELEM_LIST_ELEMENTS
      const begun = b.w.length;
      while (i < count && b.w.length - begun < ELEMENTS_NEST_LIMIT) {
        const at = b.w.begin(NFTA_LIST_ELEM, true);
        write(i);
        b.w.end(at);
        i++;
      }
      b.w.end(nest);
    });
    b.what.set(seq, what(start, i - start));
  }
}

/**
 * An anonymous interval vmap (`numgen random mod W vmap { 0 : goto a, 1-2 : goto b }`):
 * its own constant set, created just before the rule, with the ranges as
 * start elements and one end element after the last (adjacent ranges share edges).
 */
function anonymousVmap(b: BatchWriter, key: KeyExpr, m: AnonymousVmap, chain: string): { name: string; id: number } {
  const fam = b.family;
  const id = b.newId();
  const decl: NamedSet = { name: ANON_MAP, key, data: 'verdict', interval: m.interval };
  const kernel: AttrObject[] = [];
  let end: number | undefined;
  for (const e of m.elements) {
    const v = e.key[0]!;
    const [from, to] = Array.isArray(v) ? (v as readonly [number, number]) : [v as number, v as number];
    if (end !== undefined && end !== from)
      kernel.push({ key: { value: encodeKey(key, [end], fam, true) }, flags: NFT_SET_ELEM_INTERVAL_END });
    kernel.push({ key: { value: encodeKey(key, [from], fam, true) }, data: dataAttrs(e, decl, fam) });
    end = to + 1;
  }
  if (end !== undefined)
    kernel.push({ key: { value: encodeKey(key, [end], fam, true) }, flags: NFT_SET_ELEM_INTERVAL_END });
  const attrs = setAttrs(b, decl, id);
  attrs.flags = (attrs.flags as number) | NFT_SET_F.ANONYMOUS | NFT_SET_F.CONSTANT;
  attrs.userdata = setUdata(decl, fam, { anonymous: true });
  // nft sizes an anonymous interval set at two elements per range.
  attrs.desc = { size: 2 * m.elements.length };
  b.message(NFT_MSG.NEWSET, NLM_F.CREATE, `creating the anonymous map of a rule in chain ${chain}`, () =>
    b.w.attrs(NFTA_SET, attrs),
  );
  const info: SetInfo = { interval: true, id };
  elementMessages(
    b,
    NFT_MSG.NEWSETELEM,
    NLM_F.CREATE,
    ANON_MAP,
    info,
    kernel.length,
    (i) => b.w.attrs(NFTA_SET_ELEM, kernel[i]!),
    () => `adding the elements of an anonymous map in chain ${chain}`,
  );
  return { name: ANON_MAP, id };
}

function ruleMessage(b: BatchWriter, chain: string, r: Rule, cx: LowerContext): void {
  const anon = r.items.find(
    (i): i is Extract<typeof i, { kind: 'vmap' }> => i.kind === 'vmap' && typeof i.map !== 'string',
  );
  const anonSet = anon ? anonymousVmap(b, anon.key, anon.map as AnonymousVmap, chain) : undefined;
  const exprs = r.items.flatMap((i) => lowerItem(i, cx, i === anon ? anonSet : undefined)).map(exprAttrs);
  const attrs: AttrObject = { table: NFT_TABLE, chain, expressions: exprs };
  if (r.comment !== undefined) attrs.userdata = commentUdata(r.comment);
  b.message(
    NFT_MSG.NEWRULE,
    NLM_F.CREATE | NLM_F.APPEND,
    `adding rule "${formatRule(r, cx.family)}" to chain ${chain}`,
    () => b.w.attrs(NFTA_RULE, attrs),
  );
}

/**
 * A plan as one nf_tables batch. `declared` describes the named sets that
 * already exist in the kernel (a partial sync's plan declares only new ones).
 */
export function encodePlan(ops: readonly Op[], family: Family, declared: readonly NamedSet[], seq: number): Batch {
  // ~96 bytes an element (a 10,000 x 5 sync: 110,000 of them), ~512 a rule or anything else.
  let size = 1 << 16;
  for (const o of ops)
    size +=
      o.kind === 'add-elements' || o.kind === 'delete-elements'
        ? o.elements.length * 96
        : o.kind === 'add-rules'
          ? o.rules.length * 512
          : 512;
  const b = new BatchWriter(family, seq, size);
  const decls = new Map(declared.map((s) => [s.name, s]));
  const cx: LowerContext = {
    family,
    set: (name) => b.created.get(name) ?? { interval: decls.get(name)?.interval ?? false },
  };
  const t = NFT_TABLE;
  for (const op of ops) {
    switch (op.kind) {
      case 'add-table':
        b.message(NFT_MSG.NEWTABLE, 0, `adding table ${t}`, () => b.w.attrs(NFTA_TABLE, { name: t, flags: 0 }));
        break;
      case 'delete-table':
        b.message(NFT_MSG.DELTABLE, 0, `deleting table ${t}`, () => b.w.attrs(NFTA_TABLE, { name: t }));
        break;
      case 'add-set': {
        const id = b.newId();
        decls.set(op.set.name, op.set);
        b.created.set(op.set.name, { interval: op.set.interval ?? false, id });
        b.message(
          NFT_MSG.NEWSET,
          NLM_F.CREATE,
          `adding ${op.set.data === undefined ? 'set' : 'map'} ${op.set.name}`,
          () => b.w.attrs(NFTA_SET, setAttrs(b, op.set, id)),
        );
        break;
      }
      case 'delete-set':
        b.message(NFT_MSG.DELSET, 0, `deleting set ${op.name}`, () => b.w.attrs(NFTA_SET, { table: t, name: op.name }));
        break;
      case 'add-chain': {
        const c = op.chain;
        const a: AttrObject = { table: t, name: c.name };
        if (c.hook)
          Object.assign(a, {
            hook: { hooknum: NF_INET_HOOK[c.hook.hook], priority: c.hook.priority },
            policy: VERDICT.accept,
            type: c.hook.type,
          });
        b.message(NFT_MSG.NEWCHAIN, NLM_F.CREATE, `adding chain ${c.name}`, () => b.w.attrs(NFTA_CHAIN, a));
        break;
      }
      case 'flush-chain':
        b.message(NFT_MSG.DELRULE, 0, `flushing chain ${op.name}`, () =>
          b.w.attrs(NFTA_RULE, { table: t, chain: op.name }),
        );
        break;
      case 'delete-chain':
        b.message(NFT_MSG.DELCHAIN, 0, `deleting chain ${op.name}`, () =>
          b.w.attrs(NFTA_CHAIN, { table: t, name: op.name }),
        );
        break;
      case 'add-rules':
        for (const r of op.rules) ruleMessage(b, op.chain, r, cx);
        break;
      case 'add-elements':
      case 'delete-elements': {
        const decl = decls.get(op.set);
        if (!decl) throw new Error(`elements of ${op.set}, a set this plan does not know`);
        const adding = op.kind === 'add-elements';
        const info = b.created.get(op.set) ?? { interval: decl.interval ?? false };
        elementMessages(
          b,
          adding ? NFT_MSG.NEWSETELEM : NFT_MSG.DELSETELEM,
          adding ? NLM_F.CREATE : 0,
          op.set,
          info,
          op.elements.length,
          (i) => writeElement(b.w, op.elements.at(i)!, decl, family, adding),
          (first, n) =>
            `${adding ? 'adding' : 'deleting'} ${n === 1 ? 'element' : `${n} elements`} ${adding ? 'to' : 'of'} ${op.set}, from ${elementText(op.elements.at(first)!)}`,
        );
        break;
      }
    }
  }
  return b.finish();
}
