/**
 * A sync that costs O(change): the plan that takes a table from what was
 * last applied to the next desired state, computed from the services that
 * changed alone. Each service's contribution is deterministic
 * (layout.serviceParts), so the old one is rebuilt from the old service
 * rather than remembered, and the two are compared. What services share (an
 * lb chain, a hairpin pair) is added when its first user comes and deleted
 * when its last goes: whether other services use it is asked of SharedUsers,
 * counted (a SharedIndex, for a resident process or a big round) or looked
 * up (a few changes: the first other user found ends the search). The
 * chains that belong to no service (dispatch, rules, forwards) are compared
 * by digest with the record of the last sync, as the full plan does.
 */
import { hash } from 'node:crypto';
import { familyOf, sameService, type DesiredState, type Service } from '../model';
import type { StateView } from '../changes';
import { HAIRPIN, staticSets } from './table-names';
import { globalChains, hairpinElement, lbOf, serviceParts, sharedOf, type ServiceParts } from './layout';
import { LAYOUT, PlanBuilder, type Plan } from './plan';
import type { NftablesRecord } from '../backends/types';
import { keyId, sameElement, type Chain, type Element, type Family, type NamedSet, type Rule } from './ruleset';

/** One service before and after (absent: added or removed). */
export interface ServiceChange {
  old?: Service;
  new?: Service;
}

/** Which shared objects services outside a round's changes use (those stay, whatever the changed ones do). */
export interface SharedUsers {
  /** Of these lb chains, those another service uses. */
  lb(names: readonly string[]): Set<string>;
  /** Of these endpoint addresses (hairpin pairs), those another service uses. */
  hairpin(ips: readonly string[]): Set<string>;
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

  add(p: { lb?: string; hairpin: readonly string[] }, delta: 1 | -1): void {
    if (p.lb) bump(this.lb, p.lb, delta);
    for (const ip of p.hairpin) bump(this.hairpin, ip, delta);
  }

  /** Counts `changes` in: the index then describes the state after them. */
  update(changes: readonly ServiceChange[]): void {
    for (const ch of changes) {
      if (ch.old) this.add(sharedOf(ch.old), -1);
      if (ch.new) this.add(sharedOf(ch.new), 1);
    }
  }

  /** The users outside `changes`, from this index of the state before them. */
  others(changes: readonly ServiceChange[]): SharedUsers {
    const mine = SharedIndex.of(changes, 'old');
    const more = (all: Map<string, number>, own: Map<string, number>) => (keys: readonly string[]) =>
      new Set(keys.filter((k) => (all.get(k) ?? 0) > (own.get(k) ?? 0)));
    return { lb: more(this.lb, mine.lb), hairpin: more(this.hairpin, mine.hairpin) };
  }

  /** What the old (or new) versions of `changes` use. */
  static of(changes: readonly ServiceChange[], side: 'old' | 'new'): SharedIndex {
    const x = new SharedIndex();
    for (const ch of changes) {
      const s = ch[side];
      if (s) x.add(sharedOf(s), 1);
    }
    return x;
  }
}

/** The lb chains' users as the record keeps them (chain -> count). */
type LbRecord = NftablesRecord['lb'];

/** The record's lb users after `changes`. */
export function lbRecordAfter(prev: LbRecord | undefined, changes: readonly ServiceChange[]): LbRecord {
  const m = new Map(Object.entries(prev ?? {}));
  for (const ch of changes) {
    const was = ch.old && lbOf(ch.old);
    const is = ch.new && lbOf(ch.new);
    if (was) bump(m, was, -1);
    if (is) bump(m, is, 1);
  }
  return Object.fromEntries(m);
}

/** The lb users of a whole state, for the record of a full sync (chain names only: no hairpin index is built). */
export function lbRecordOf(services: readonly Service[], family: Family): LbRecord {
  const m = new Map<string, number>();
  for (const s of services) {
    const lb = familyOf(s.vip) === family ? lbOf(s) : undefined;
    if (lb) bump(m, lb, 1);
  }
  return Object.fromEntries(m);
}

function bump(m: Map<string, number>, key: string, delta: number): void {
  const n = (m.get(key) ?? 0) + delta;
  if (n > 0) m.set(key, n);
  else m.delete(key);
}

/**
 * The users outside `changes` without an index: lb chains from the record's
 * counts, hairpin addresses looked up in the state itself (one pass for all
 * of them; stored services that cannot match stay unparsed).
 */
export function lookedUp(
  view: StateView,
  lbUsers: LbRecord | undefined,
  changes: readonly ServiceChange[],
): SharedUsers {
  const except = new Set(changes.map((c) => (c.new ?? c.old)!.name));
  const mine = SharedIndex.of(changes, 'old');
  return {
    lb: (names) => new Set(names.filter((n) => (lbUsers?.[n] ?? 0) > (mine.lb.get(n) ?? 0))),
    hairpin: (ips) => {
      const found = view.endpointUsed(except, ips);
      return new Set(ips.filter((_, i) => found[i]));
    },
  };
}

const digest = (x: unknown) => hash('sha256', JSON.stringify(x), 'base64url').slice(0, 22);
const ruleDigest = (r: Rule) => digest(r).slice(0, 11);
const EMPTY: ServiceParts = { elements: new Map(), chains: [], sets: [], hairpin: [] };

/** What a sync remembers: the chains that belong to no service (by digest), and who uses each lb chain. */
export function globalRecord(
  st: Pick<DesiredState, 'rules' | 'forwards'>,
  family: Family,
  lb: LbRecord,
): NftablesRecord {
  const chains: NftablesRecord['chains'] = {};
  for (const c of globalChains(st, family)) chains[c.name] = { digest: digest(c), rules: c.rules.map(ruleDigest) };
  return { layout: LAYOUT, chains, lb };
}

/** The rules a chain gains at its end, when its old rules (by digest) are unchanged before them. */
function appended(c: Chain, old: readonly string[] | undefined): Rule[] | undefined {
  if (old === undefined) return undefined;
  const now = c.rules.map(ruleDigest);
  if (now.length <= old.length || old.some((d, i) => d !== now[i])) return undefined;
  return c.rules.slice(old.length);
}

/**
 * The plan for `changes` (this family's services only) from a table whose
 * record is `prev`; `others` says which shared objects services outside
 * the changes use. Undefined when only a full sync can get there (another
 * layout). `globals`: false when the caller knows the chains that belong
 * to no service are as the record says (they are not compared).
 */
export function changePlan(
  next: Pick<DesiredState, 'rules' | 'forwards'>,
  family: Family,
  changes: readonly ServiceChange[],
  prev: NftablesRecord,
  others: SharedUsers,
  globals = true,
): Plan | undefined {
  if (prev.layout !== LAYOUT) return undefined;
  const d = new Delta();
  for (const ch of changes) d.service(ch.old ? serviceParts(ch.old) : EMPTY, ch.new ? serviceParts(ch.new) : EMPTY);
  d.shared(others);
  if (globals) d.global(globalChains(next, family), prev);
  return d.plan(prev);
}

/** What a change round does to the table, gathered service by service, then written as one plan. */
class Delta {
  private readonly newSets: NamedSet[] = [];
  private readonly staleSets = new Set<string>();
  private readonly oldSets: NamedSet[] = [];
  private readonly oldOwnChains: string[] = [];
  private readonly newChains: Chain[] = [];
  private readonly changedChains: { chain: Chain; tail?: Rule[] }[] = [];
  private readonly staleChains = new Set<string>();
  private readonly del = new Map<string, Element[]>();
  private readonly add = new Map<string, Element[]>();
  // Shared objects the changed services used before and use after (by name; lb chains with their rules).
  private readonly mineBefore = new SharedIndex();
  private readonly mineAfter = new SharedIndex();
  private readonly lbChains = new Map<string, Chain>();

  /** One service's old and new parts. */
  service(o: ServiceParts, n: ServiceParts): void {
    for (const [p, m] of [
      [o, this.mineBefore],
      [n, this.mineAfter],
    ] as const) {
      if (p.lb) this.lbChains.set(p.lb.name, p.lb);
      m.add({ lb: p.lb?.name, hairpin: p.hairpin }, 1);
    }
    // Elements, set by set: gone or changed ones deleted, new or changed ones added.
    for (const set of new Set([...o.elements.keys(), ...n.elements.keys()])) {
      const before = new Map((o.elements.get(set) ?? []).map((e) => [keyId(e.key), e]));
      const after = new Map((n.elements.get(set) ?? []).map((e) => [keyId(e.key), e]));
      for (const [k, e] of before) if (!after.has(k) || !sameElement(after.get(k)!, e)) push(this.del, set, e);
      for (const [k, e] of after) if (!before.has(k) || !sameElement(before.get(k)!, e)) push(this.add, set, e);
    }
    // The service's own chains and sets, by name.
    const oldChains = new Map(o.chains.map((c) => [c.name, c]));
    const newChainNames = new Set(n.chains.map((c) => c.name));
    for (const c of n.chains) {
      const was = oldChains.get(c.name);
      if (!was) this.newChains.push(c);
      else if (digest(was) !== digest(c)) this.changedChains.push({ chain: c });
    }
    for (const name of oldChains.keys()) if (!newChainNames.has(name)) this.staleChains.add(name);
    const oldSetNames = new Set(o.sets.map((x) => x.name));
    const newSetNames = new Set(n.sets.map((x) => x.name));
    for (const x of n.sets) if (!oldSetNames.has(x.name)) this.newSets.push(x);
    for (const name of oldSetNames) if (!newSetNames.has(name)) this.staleSets.add(name);
    this.oldSets.push(...o.sets);
    this.oldOwnChains.push(...o.chains.map((c) => c.name));
  }

  /** Shared objects the changed services took up or gave up: added or deleted unless another service uses them. */
  shared(others: SharedUsers): void {
    const flipped = (before: Map<string, number>, after: Map<string, number>) =>
      [...new Set([...before.keys(), ...after.keys()])].filter((k) => before.has(k) !== after.has(k));
    const lbFlipped = flipped(this.mineBefore.lb, this.mineAfter.lb);
    const lbKept = lbFlipped.length ? others.lb(lbFlipped) : new Set<string>();
    for (const name of lbFlipped) {
      if (lbKept.has(name)) continue;
      if (this.mineBefore.lb.has(name)) this.staleChains.add(name);
      else this.newChains.push(this.lbChains.get(name)!);
    }
    const ipFlipped = flipped(this.mineBefore.hairpin, this.mineAfter.hairpin);
    const ipKept = ipFlipped.length ? others.hairpin(ipFlipped) : new Set<string>();
    for (const ip of ipFlipped)
      if (!ipKept.has(ip)) push(this.mineBefore.hairpin.has(ip) ? this.del : this.add, HAIRPIN, hairpinElement(ip));
  }

  /** The chains that belong to no service, against the record. */
  global(chains: readonly Chain[], prev: NftablesRecord): void {
    for (const c of chains) {
      const was = prev.chains[c.name];
      if (was === undefined) this.newChains.push(c);
      else if (was.digest !== digest(c)) this.changedChains.push({ chain: c, tail: appended(c, was.rules) });
    }
  }

  plan(prev: NftablesRecord): Plan {
    // A chain both stale (one service) and new (another): it stays, refilled.
    for (const c of this.newChains) this.staleChains.delete(c.name);
    // What the table has before the plan: the static sets, the record's chains, the changed services' own old objects.
    const b = new PlanBuilder({
      sets: [...staticSets(), ...this.oldSets],
      chains: [...Object.keys(prev.chains), ...Object.keys(prev.lb), ...this.oldOwnChains],
    }).add({ kind: 'add-table' });
    for (const x of this.newSets) b.add({ kind: 'add-set', set: x });
    for (const c of this.newChains) b.add({ kind: 'add-chain', chain: c });
    for (const [set, es] of this.del) b.add({ kind: 'delete-elements', set, elements: es });
    for (const { chain, tail } of this.changedChains) {
      if (!tail) b.add({ kind: 'flush-chain', name: chain.name });
      const rules = tail ?? chain.rules;
      if (rules.length) b.add({ kind: 'add-rules', chain: chain.name, rules });
    }
    for (const c of this.newChains) if (c.rules.length) b.add({ kind: 'add-rules', chain: c.name, rules: c.rules });
    for (const [set, es] of this.add) b.add({ kind: 'add-elements', set, elements: es });
    for (const name of this.staleChains) b.add({ kind: 'flush-chain', name });
    for (const name of this.staleChains) b.add({ kind: 'delete-chain', name });
    for (const name of this.staleSets) b.add({ kind: 'delete-set', name });
    const count = (m: Map<string, Element[]>) => [...m.values()].reduce((n, l) => n + l.length, 0);
    return b.plan({
      full: false,
      written: this.newChains.length + this.changedChains.length + count(this.add),
      deleted: this.staleChains.size + this.staleSets.size + count(this.del),
    });
  }
}

function push(m: Map<string, Element[]>, set: string, e: Element): void {
  const l = m.get(set);
  if (l) l.push(e);
  else m.set(set, [e]);
}

/** Which services differ between two states, by name (the slow path, when the caller does not say). */
export function serviceChanges(prev: readonly Service[], next: readonly Service[]): ServiceChange[] {
  const before = new Map(prev.map((s) => [s.name, s]));
  const out: ServiceChange[] = [];
  for (const s of next) {
    const o = before.get(s.name);
    before.delete(s.name);
    if (!o) out.push({ new: s });
    else if (o !== s && !sameService(o, s)) out.push({ old: o, new: s });
  }
  for (const o of before.values()) out.push({ old: o });
  return out;
}
