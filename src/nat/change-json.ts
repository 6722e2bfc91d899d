/**
 * NAT changes as JSON, as journals and the agent's requests carry them:
 * the kinds there are, and a change as any release wrote it. No runtime
 * dependency but json.ts: the agent's wire protocol uses it too.
 */
import { isObject } from '../json';
import type { NatChange } from './changes';

/** Every kind of change (what a request from another process may ask for). */
export const NAT_OPS = [
  'add-service',
  'put-service',
  'set-endpoints',
  'delete-service',
  'replace-services',
  'add-rule',
  'delete-rule',
  'put-forward',
  'delete-forward',
  'set-state',
] as const satisfies readonly NatChange['kind'][];
// Every kind of NatChange is listed above (a new one that is not fails to compile here).
const allOpsListed: Exclude<NatChange['kind'], (typeof NAT_OPS)[number]> extends never ? true : never = true;
void allOpsListed;

/**
 * A change as any release wrote it: until 0.1.0's restructure its
 * discriminant was `op` (journal lines, an older CLI's request to the
 * agent); today it is `kind`, as everywhere else. Contents are checked
 * where the change is applied. Undefined: not a change (the caller says
 * what was wrong where).
 */
export function readChange(x: unknown): NatChange | undefined {
  if (!isObject(x)) return undefined;
  if (typeof x.kind === 'string') return x as unknown as NatChange;
  if (typeof x.op !== 'string') return undefined;
  const { op, ...rest } = x;
  return { kind: op, ...rest } as unknown as NatChange;
}
