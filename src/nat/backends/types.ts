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

/** One renderer + one applier. */
export interface Backend {
  readonly name: 'iptables' | 'nft';
  /** The full payload(s) a first sync would apply: what `tsnet rules` prints. */
  render(st: DesiredState): string;
  sync(st: DesiredState, applied: Applied | undefined, force: boolean): Promise<SyncResult>;
  /** Removes everything of tsnet's that this backend put in place. */
  teardown(): Promise<void>;
}
