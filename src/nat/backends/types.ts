import type { DesiredState } from '../model';

/** What the last successful sync wrote, per family: chain (or object) name -> digest. Lets the next sync rewrite only what changed. */
export interface Applied {
  backend: 'iptables' | 'nft';
  mode?: string;
  /** false while a sync is under way: a crash mid-sync leaves it false, and the next sync is a full one. */
  clean: boolean;
  /** family -> table -> object name -> digest. */
  families: Partial<Record<4 | 6, Record<string, Record<string, string>>>>;
}

export interface SyncResult {
  /** Whether everything was rewritten (first sync, after a flush, or forced). */
  full: boolean;
  /** Chains (or objects) written and deleted. */
  written: number;
  deleted: number;
  applied: Applied;
}

/**
 * Whether `family` may hold rules `backend` wrote, per the last record: when
 * the last sync wrote that family, and always when a sync died half-way (a
 * dirty record: what is live is unknown). A family that may hold rules but
 * is no longer used must be torn down, not skipped.
 */
export function mayHoldRules(applied: Applied | undefined, backend: string, family: 4 | 6): boolean {
  if (!applied || applied.backend !== backend) return false;
  return !applied.clean || applied.families[family] !== undefined;
}

/** One renderer + one applier. */
export interface Backend {
  readonly name: 'iptables' | 'nft';
  /** The full payload(s) a first sync would apply: what `tsnet rules` prints. */
  render(st: DesiredState): string;
  /** Takes the rules to `st`; `before` is the state `applied` was written from (lets a partial sync append rather than rewrite). */
  sync(st: DesiredState, applied: Applied | undefined, force: boolean, before?: DesiredState): Promise<SyncResult>;
  /** Whether tsnet's canary (chain rule, or table) of `family` is still there: gone means someone flushed the rules. */
  canaryPresent(family: 4 | 6): Promise<boolean>;
  /** Removes everything of tsnet's that this backend put in place. */
  teardown(): Promise<void>;
}
