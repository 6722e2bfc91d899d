/**
 * From two models of a table to the operations that turn one into the other
 * (knftables' Transaction, as data): add/delete/flush of sets and chains,
 * rules added to a chain, elements added and deleted. Diffing knows no
 * syntax: ./text and ./netlink serialise the same plan. What a sync
 * remembers of the table it wrote is a digest per object, taken over the
 * model, and each element's value.
 */
import { createHash } from 'node:crypto';
import { elementFromValueId, elementKeyId, elementValueId } from './ids';
import type { Chain, Element, NamedSet, Rule, Ruleset } from './ruleset';

export type Op =
  | { op: 'add-table' }
  | { op: 'delete-table' }
  | { op: 'add-set'; set: NamedSet }
  | { op: 'delete-set'; name: string }
  | { op: 'add-chain'; chain: Chain }
  | { op: 'flush-chain'; name: string }
  | { op: 'delete-chain'; name: string }
  | { op: 'add-rules'; chain: string; rules: Rule[] }
  | { op: 'add-elements'; set: string; elements: Element[] }
  | { op: 'delete-elements'; set: string; elements: Element[] };

/** Bumped when the layout changes shape: a record of another layout forces a full sync. */
export const LAYOUT = '2';

/**
 * What a sync remembers of the table it wrote (stored with the desired
 * state): the layout, a digest per set and chain, and per set each element's
 * key and value.
 */
export type Digests = Record<string, Record<string, string>>;

const digest = (x: unknown) => createHash('sha256').update(JSON.stringify(x)).digest('base64url').slice(0, 22);
const ruleDigest = (r: Rule) => digest(r).slice(0, 11);

/**
 * The rules a changed chain gains at its end, when what it held (as `prev`
 * remembers it) is unchanged before them; undefined when the chain must be
 * rewritten. Appending spares a flush: a transaction that deletes rules
 * costs the kernel an RCU grace period (10-30 ms here), one that only adds
 * them does not.
 */
function appended(c: Chain, prev: Digests): Rule[] | undefined {
  const before = prev.rules?.[c.name];
  if (before === undefined) return undefined;
  const old = before ? before.split(' ') : [];
  const now = c.rules.map(ruleDigest);
  if (now.length <= old.length || old.some((d, i) => d !== now[i])) return undefined;
  return c.rules.slice(old.length);
}
const ELEM = 'elements:';

export function digests(rs: Ruleset): Digests {
  const out: Digests = { layout: { version: LAYOUT }, set: {}, chain: {}, rules: {} };
  for (const s of rs.sets) out.set![s.name] = digest(s);
  for (const c of rs.chains) {
    out.chain![c.name] = digest(c);
    out.rules![c.name] = c.rules.map(ruleDigest).join(' ');
  }
  for (const [name, elements] of rs.elements) {
    const m: Record<string, string> = {};
    for (const e of elements) m[elementKeyId(e)] = elementValueId(e);
    out[ELEM + name] = m;
  }
  return out;
}

export interface Plan {
  ops: Op[];
  full: boolean;
  written: number;
  deleted: number;
}

/** Everything, from nothing: the table is deleted and rebuilt in the same transaction, so there is no moment without rules. */
export function fullPlan(rs: Ruleset): Plan {
  const ops: Op[] = [{ op: 'add-table' }, { op: 'delete-table' }, { op: 'add-table' }];
  for (const s of rs.sets) ops.push({ op: 'add-set', set: s });
  for (const c of rs.chains) ops.push({ op: 'add-chain', chain: c });
  for (const c of rs.chains) if (c.rules.length) ops.push({ op: 'add-rules', chain: c.name, rules: c.rules });
  let elements = 0;
  for (const [set, es] of rs.elements) {
    if (es.length) ops.push({ op: 'add-elements', set, elements: es });
    elements += es.length;
  }
  return { ops, full: true, written: rs.chains.length + elements, deleted: 0 };
}

/**
 * Only what changed since `prev` was written: new sets and chains declared,
 * changed chains flushed and refilled, elements deleted and added one by one,
 * stale chains and sets removed last (once nothing refers to them). Returns
 * undefined when only a full sync can get there (another layout, or a set
 * whose definition changed).
 */
export function partialPlan(rs: Ruleset, prev: Digests): Plan | undefined {
  const want = digests(rs);
  if (prev.layout?.version !== LAYOUT) return undefined;
  const before = { set: prev.set ?? {}, chain: prev.chain ?? {} };
  for (const s of rs.sets) if (before.set[s.name] !== undefined && before.set[s.name] !== want.set![s.name]) return undefined;

  const ops: Op[] = [{ op: 'add-table' }];
  let written = 0, deleted = 0;
  for (const s of rs.sets) if (before.set[s.name] === undefined) ops.push({ op: 'add-set', set: s });
  for (const c of rs.chains) if (before.chain[c.name] === undefined) ops.push({ op: 'add-chain', chain: c });

  const adds: Op[] = [];
  for (const [set, es] of rs.elements) {
    const old = prev[ELEM + set] ?? {};
    const now = want[ELEM + set]!;
    const gone: Element[] = [];
    for (const [k, v] of Object.entries(old)) if (now[k] !== v) gone.push(elementFromValueId(v));
    const added = es.filter((e) => old[elementKeyId(e)] !== now[elementKeyId(e)]);
    if (gone.length) ops.push({ op: 'delete-elements', set, elements: gone });
    if (added.length) adds.push({ op: 'add-elements', set, elements: added });
    written += added.length;
    deleted += gone.length;
  }
  for (const c of rs.chains) {
    if (before.chain[c.name] === want.chain![c.name]) continue;
    const tail = before.chain[c.name] === undefined ? undefined : appended(c, prev);
    if (tail) {
      ops.push({ op: 'add-rules', chain: c.name, rules: tail });
    } else {
      if (before.chain[c.name] !== undefined) ops.push({ op: 'flush-chain', name: c.name });
      if (c.rules.length) ops.push({ op: 'add-rules', chain: c.name, rules: c.rules });
    }
    written++;
  }
  ops.push(...adds);
  const staleChains = Object.keys(before.chain).filter((n) => want.chain![n] === undefined);
  const staleSets = Object.keys(before.set).filter((n) => want.set![n] === undefined);
  for (const n of staleChains) ops.push({ op: 'flush-chain', name: n });
  for (const n of staleChains) ops.push({ op: 'delete-chain', name: n });
  for (const n of staleSets) ops.push({ op: 'delete-set', name: n });
  deleted += staleChains.length + staleSets.length;
  return { ops, full: false, written, deleted };
}
