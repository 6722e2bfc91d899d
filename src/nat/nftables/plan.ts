/**
 * Operations on a table as data (knftables' Transaction): add/delete/flush of
 * sets and chains, rules added to a chain, elements added and deleted.
 * Planning knows no syntax: ./text and ./netlink serialise the same plan.
 * The full plan lives here; the plan of a change, in ./incremental.
 */
import type { Chain, ElementList, NamedSet, Rule, Ruleset } from './ruleset';

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
  full: boolean;
  written: number;
  deleted: number;
}

/** Everything, from nothing: the table is deleted and rebuilt in the same transaction, so there is no moment without rules. */
export function fullPlan(rs: Ruleset): Plan {
  const ops: Op[] = [{ kind: 'add-table' }, { kind: 'delete-table' }, { kind: 'add-table' }];
  for (const s of rs.sets) ops.push({ kind: 'add-set', set: s });
  for (const c of rs.chains) ops.push({ kind: 'add-chain', chain: c });
  for (const c of rs.chains) if (c.rules.length) ops.push({ kind: 'add-rules', chain: c.name, rules: c.rules });
  let elements = 0;
  for (const [set, es] of rs.elements) {
    if (es.length) ops.push({ kind: 'add-elements', set, elements: es });
    elements += es.length;
  }
  return { ops, full: true, written: rs.chains.length + elements, deleted: 0 };
}
