/**
 * A sync that costs O(change): the plan that takes a table from what was
 * last applied to the next desired state, computed from the services that
 * changed alone. Each service's contribution is deterministic
 * (layout.serviceParts), so the old one is rebuilt from the old service
 * rather than remembered, and the two are compared. What services share (an
 * lb chain, a hairpin pair) is reference-counted in a SharedIndex; the
 * chains that belong to no service (dispatch, rules, forwards) are compared
 * by digest with the record of the last sync, as the full plan does.
 */
import { createHash } from 'node:crypto';
import { familyOf, type DesiredState, type Service } from '../model';
import { elementKeyId, elementValueId } from './ids';
import { HAIRPIN, globalChains, hairpinElement, serviceParts, sharedOf, type ServiceParts } from './layout';
import { LAYOUT, type Digests, type Op, type Plan } from './plan';
import type { Chain, Element, Family, NamedSet, Rule } from './ruleset';

/** One service before and after (absent: added or removed). */
export interface ServiceChange {
  old?: Service;
  new?: Service;
}

/** Who uses each object services share, in one family's table: lb chains by name, hairpin pairs by address. */
export class SharedIndex {
  readonly lb = new Map<string, number>();
  readonly hairpin = new Map<string, number>();

  /** O(services), but light: names and addresses only, no rendering. */
  static build(services: readonly Service[], family: Family): SharedIndex {
    const x = new SharedIndex();
    for (const s of services) if (familyOf(s.vip) === family) x.add(sharedOf(s), 1);
    return x;
  }

  add(p: { lb?: string | Chain; hairpin: readonly string[] }, delta: 1 | -1): void {
    if (p.lb) {
      const name = typeof p.lb === 'string' ? p.lb : p.lb.name;
      const n = (this.lb.get(name) ?? 0) + delta;
      if (n > 0) this.lb.set(name, n);
      else this.lb.delete(name);
    }
    for (const ip of p.hairpin) {
      const n = (this.hairpin.get(ip) ?? 0) + delta;
      if (n > 0) this.hairpin.set(ip, n);
      else this.hairpin.delete(ip);
    }
  }
}

const digest = (x: unknown) => createHash('sha256').update(JSON.stringify(x)).digest('base64url').slice(0, 22);
const ruleDigest = (r: Rule) => digest(r).slice(0, 11);
const EMPTY: ServiceParts = { elements: new Map(), chains: [], sets: [], hairpin: [] };

/** What a sync remembers of the chains that belong to no service. */
export function globalRecord(st: Pick<DesiredState, 'rules' | 'forwards'>, family: Family): Digests {
  const out: Digests = { layout: { version: LAYOUT }, chain: {}, rules: {} };
  for (const c of globalChains(st, family)) {
    out.chain![c.name] = digest(c);
    out.rules![c.name] = c.rules.map(ruleDigest).join(' ');
  }
  return out;
}

/** The rules a chain gains at its end, when its old rules (by digest) are unchanged before them. */
function appended(c: Chain, oldRules: string | undefined): Rule[] | undefined {
  if (oldRules === undefined) return undefined;
  const old = oldRules ? oldRules.split(' ') : [];
  const now = c.rules.map(ruleDigest);
  if (now.length <= old.length || old.some((d, i) => d !== now[i])) return undefined;
  return c.rules.slice(old.length);
}

/**
 * The plan for `changes` (this family's services only) from a table whose
 * record is `prev`; `index` describes the table before and is updated to
 * after. Undefined when only a full sync can get there (another layout).
 */
export function changePlan(next: Pick<DesiredState, 'rules' | 'forwards'>, family: Family, changes: readonly ServiceChange[], prev: Digests, index: SharedIndex): Plan | undefined {
  if (prev.layout?.version !== LAYOUT) return undefined;
  const newSets: NamedSet[] = [];
  const staleSets = new Set<string>();
  const newChains: Chain[] = [];
  const changedChains: { chain: Chain; tail?: Rule[] }[] = [];
  const staleChains = new Set<string>();
  const del = new Map<string, Element[]>();
  const add = new Map<string, Element[]>();
  const push = (m: Map<string, Element[]>, set: string, e: Element) => { const l = m.get(set); if (l) l.push(e); else m.set(set, [e]); };
  const lbBefore = new Map<string, boolean>();
  const lbChains = new Map<string, Chain>();
  const hairpinBefore = new Map<string, boolean>();

  for (const ch of changes) {
    const o = ch.old ? serviceParts(ch.old) : EMPTY;
    const n = ch.new ? serviceParts(ch.new) : EMPTY;
    for (const ip of [...o.hairpin, ...n.hairpin]) if (!hairpinBefore.has(ip)) hairpinBefore.set(ip, index.hairpin.has(ip));
    for (const lb of [o.lb, n.lb]) {
      if (!lb) continue;
      if (!lbBefore.has(lb.name)) lbBefore.set(lb.name, index.lb.has(lb.name));
      lbChains.set(lb.name, lb);
    }
    index.add(o, -1);
    index.add(n, 1);
    // Elements, set by set: gone or changed ones deleted, new or changed ones added.
    for (const set of new Set([...o.elements.keys(), ...n.elements.keys()])) {
      const before = new Map((o.elements.get(set) ?? []).map((e) => [elementKeyId(e), e]));
      const after = new Map((n.elements.get(set) ?? []).map((e) => [elementKeyId(e), e]));
      for (const [k, e] of before) if (!after.has(k) || elementValueId(after.get(k)!) !== elementValueId(e)) push(del, set, e);
      for (const [k, e] of after) if (!before.has(k) || elementValueId(before.get(k)!) !== elementValueId(e)) push(add, set, e);
    }
    // The service's own chains and sets, by name.
    const oldChains = new Map(o.chains.map((c) => [c.name, c]));
    const newChainNames = new Set(n.chains.map((c) => c.name));
    for (const c of n.chains) {
      const was = oldChains.get(c.name);
      if (!was) newChains.push(c);
      else if (digest(was) !== digest(c)) changedChains.push({ chain: c });
    }
    for (const name of oldChains.keys()) if (!newChainNames.has(name)) staleChains.add(name);
    const oldSets = new Set(o.sets.map((x) => x.name));
    const newSetNames = new Set(n.sets.map((x) => x.name));
    for (const x of n.sets) if (!oldSets.has(x.name)) newSets.push(x);
    for (const name of oldSets) if (!newSetNames.has(name)) staleSets.add(name);
  }
  // Shared objects whose users went from none to some, or from some to none.
  for (const [name, had] of lbBefore) {
    const has = index.lb.has(name);
    if (!had && has) newChains.push(lbChains.get(name)!);
    if (had && !has) staleChains.add(name);
  }
  for (const [ip, had] of hairpinBefore) {
    const has = index.hairpin.has(ip);
    if (had && !has) push(del, HAIRPIN, hairpinElement(ip));
    if (!had && has) push(add, HAIRPIN, hairpinElement(ip));
  }
  // The chains that belong to no service, against the record.
  for (const c of globalChains(next, family)) {
    const was = prev.chain?.[c.name];
    if (was === undefined) newChains.push(c);
    else if (was !== digest(c)) changedChains.push({ chain: c, tail: appended(c, prev.rules?.[c.name]) });
  }
  // A chain both stale (one service) and new (another): it stays, refilled.
  for (const c of newChains) staleChains.delete(c.name);

  const ops: Op[] = [{ op: 'add-table' }];
  for (const x of newSets) ops.push({ op: 'add-set', set: x });
  for (const c of newChains) ops.push({ op: 'add-chain', chain: c });
  for (const [set, es] of del) ops.push({ op: 'delete-elements', set, elements: es });
  for (const { chain, tail } of changedChains) {
    if (!tail) ops.push({ op: 'flush-chain', name: chain.name });
    const rules = tail ?? chain.rules;
    if (rules.length) ops.push({ op: 'add-rules', chain: chain.name, rules });
  }
  for (const c of newChains) if (c.rules.length) ops.push({ op: 'add-rules', chain: c.name, rules: c.rules });
  for (const [set, es] of add) ops.push({ op: 'add-elements', set, elements: es });
  for (const name of staleChains) ops.push({ op: 'flush-chain', name });
  for (const name of staleChains) ops.push({ op: 'delete-chain', name });
  for (const name of staleSets) ops.push({ op: 'delete-set', name });
  const count = (m: Map<string, Element[]>) => [...m.values()].reduce((n, l) => n + l.length, 0);
  return {
    ops,
    full: false,
    written: newChains.length + changedChains.length + count(add),
    deleted: staleChains.size + staleSets.size + count(del),
  };
}

/** Which services differ between two states, by name (the slow path, when the caller does not say). */
export function serviceChanges(prev: readonly Service[], next: readonly Service[]): ServiceChange[] {
  const before = new Map(prev.map((s) => [s.name, s]));
  const out: ServiceChange[] = [];
  for (const s of next) {
    const o = before.get(s.name);
    before.delete(s.name);
    if (!o) out.push({ new: s });
    else if (o !== s && JSON.stringify(o) !== JSON.stringify(s)) out.push({ old: o, new: s });
  }
  for (const o of before.values()) out.push({ old: o });
  return out;
}
