/**
 * Operations on a table as data (knftables' Transaction): add/delete/flush of
 * sets and chains, rules added to a chain, elements added and deleted.
 * Planning knows no syntax: ./text and ./batch serialise the same plan. A
 * plan is built operation by operation, each checked as it joins (a set or
 * chain it names must exist or be added first), so a plan that reaches an
 * encoder is one the kernel can apply. The full plan lives here; the plan of
 * a change, in ./incremental.
 */
import { TsnetError } from '../../errors';
import {
  isTarget,
  type Chain,
  type Element,
  type ElementList,
  type NamedSet,
  type Rule,
  type Ruleset,
} from './ruleset';

export type Op =
  | { kind: 'add-table' }
  | { kind: 'delete-table' }
  | { kind: 'add-set'; set: NamedSet }
  | { kind: 'delete-set'; name: string }
  | { kind: 'add-chain'; chain: Chain }
  | { kind: 'flush-chain'; name: string }
  | { kind: 'delete-chain'; name: string }
  | { kind: 'add-rules'; chain: string; rules: Rule[] }
  | { kind: 'add-elements'; set: string; elements: ElementList }
  | { kind: 'delete-elements'; set: string; elements: ElementList };

/** Bumped when the layout changes shape: a record of another layout forces a full sync. */
export const LAYOUT = 3;

export interface Plan {
  ops: Op[];
  /** The sets the plan takes the table to have before it runs (their key types are needed to write their elements). */
  existing: NamedSet[];
  full: boolean;
  written: number;
  deleted: number;
}

/** The sets and chains a rule names: what must exist when it is added. */
function ruleRefs(r: Rule): { sets: string[]; chains: string[] } {
  const sets: string[] = [];
  const chains: string[] = [];
  for (const it of r.items) {
    if (it.kind === 'in-set' || it.kind === 'set-update') sets.push(it.set);
    else if (it.kind === 'dnat-map') sets.push(it.map);
    else if (it.kind === 'vmap') {
      if (typeof it.map === 'string') sets.push(it.map);
      else chains.push(...it.map.elements.flatMap(targetOf));
    } else if (it.kind === 'jump' || it.kind === 'goto') chains.push(it.chain);
  }
  return { sets, chains };
}

const targetOf = (e: Element): string[] => (isTarget(e.data) ? [e.data.chain] : []);

/**
 * A plan in the making. `existing`: what the table has when the plan runs
 * (nothing, for a plan that rebuilds it). The first operation that names a
 * set or chain neither existing nor added before it is refused when it is
 * added, and the plan with it.
 */
export class PlanBuilder {
  readonly ops: Op[] = [];
  private readonly sets = new Map<string, NamedSet>();
  private readonly chains = new Set<string>();
  private readonly existing: NamedSet[];

  constructor(existing: { sets?: readonly NamedSet[]; chains?: Iterable<string> } = {}) {
    this.existing = [...(existing.sets ?? [])];
    for (const s of this.existing) this.sets.set(s.name, s);
    for (const c of existing.chains ?? []) this.chains.add(c);
  }

  add(...ops: Op[]): this {
    for (const op of ops) {
      this.check(op);
      this.ops.push(op);
    }
    return this;
  }

  private refuse(op: Op, what: string): never {
    throw new TsnetError(`a NAT plan refused a ${op.kind} operation: ${what} (a bug in tsnet's planner)`, {
      code: 'EINTERNAL',
    });
  }

  private needSet(op: Op, name: string): void {
    if (!this.sets.has(name)) this.refuse(op, `set ${name} is neither in the table nor added before`);
  }

  private needChain(op: Op, name: string): void {
    if (!this.chains.has(name)) this.refuse(op, `chain ${name} is neither in the table nor added before`);
  }

  private check(op: Op): void {
    switch (op.kind) {
      case 'add-table':
        return;
      case 'delete-table':
        this.sets.clear();
        this.chains.clear();
        return;
      case 'add-set':
        this.sets.set(op.set.name, op.set);
        return;
      case 'delete-set':
        this.needSet(op, op.name);
        this.sets.delete(op.name);
        return;
      case 'add-chain':
        this.chains.add(op.chain.name);
        return;
      case 'flush-chain':
        return this.needChain(op, op.name);
      case 'delete-chain':
        this.needChain(op, op.name);
        this.chains.delete(op.name);
        return;
      case 'add-rules': {
        this.needChain(op, op.chain);
        for (const r of op.rules) {
          const refs = ruleRefs(r);
          for (const s of refs.sets) this.needSet(op, s);
          for (const c of refs.chains) this.needChain(op, c);
        }
        return;
      }
      case 'add-elements': {
        this.needSet(op, op.set);
        // A verdict map's elements send packets to chains (service-ips: a service's lb chain or its own).
        if (this.sets.get(op.set)!.data !== 'verdict') return;
        if (op.elements.targets) for (const c of op.elements.targets()) this.needChain(op, c);
        else
          for (let i = 0; i < op.elements.length; i++)
            for (const c of targetOf(op.elements.at(i)!)) this.needChain(op, c);
        return;
      }
      case 'delete-elements':
        return this.needSet(op, op.set);
    }
  }

  plan(counts: { full: boolean; written: number; deleted: number }): Plan {
    return { ops: this.ops, existing: this.existing, ...counts };
  }
}

/** Everything, from nothing: the table is deleted and rebuilt in the same transaction, so there is no moment without rules. */
export function fullPlan(rs: Ruleset): Plan {
  const b = new PlanBuilder().add({ kind: 'add-table' }, { kind: 'delete-table' }, { kind: 'add-table' });
  for (const s of rs.sets) b.add({ kind: 'add-set', set: s });
  for (const c of rs.chains) b.add({ kind: 'add-chain', chain: c });
  for (const c of rs.chains) if (c.rules.length) b.add({ kind: 'add-rules', chain: c.name, rules: c.rules });
  let elements = 0;
  for (const [set, es] of rs.elements) {
    if (es.length) b.add({ kind: 'add-elements', set, elements: es });
    elements += es.length;
  }
  return b.plan({ full: true, written: rs.chains.length + elements, deleted: 0 });
}
