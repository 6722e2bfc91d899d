import type { Family } from '../../addr/cidr';
import { isObject } from '../../json';
import type { DesiredState, Service } from '../model';
import type { NatState, ServiceDelta } from '../changes';

/** The backends: kube-proxy's iptables layout, or tsnet's nftables table written by `nft -f` or over netlink. */
export type BackendName = 'iptables' | 'nft' | 'netlink';

/** What a backend's rules live in: backends that write the same tables take over from each other without a teardown. */
export type TableKind = 'iptables' | 'nftables';

/** What an nftables backend remembers of one family's table: enough for the next sync to write only what changed. */
export interface NftablesRecord {
  /** The layout's shape (nftables/plan LAYOUT): a record of another forces a full sync. */
  layout: number;
  /** The chains that belong to no service: the chain's digest, and its rules' digests in order (a chain that only grew gets its new rules appended). */
  chains: Record<string, { digest: string; rules: string[] }>;
  /** Each shared lb chain and how many services use it (few chains: every sync carries them). */
  lb: Record<string, number>;
}

/** What the iptables backend remembers of one family: per table, chain -> digest. */
export interface IptablesRecord {
  nat: Record<string, string>;
  filter: Record<string, string>;
}

/** What the last successful sync wrote, per family. Lets the next sync write only what changed. */
export type Applied = (
  | { backend: 'iptables'; mode?: string; families: Partial<Record<Family, IptablesRecord>> }
  | { backend: 'nft' | 'netlink'; mode?: undefined; families: Partial<Record<Family, NftablesRecord>> }
) & {
  /** false while a sync is under way: a crash mid-sync leaves it false, and the next sync is a full one. */
  clean: boolean;
};

type Loose = Record<string, unknown>;
const strings = (x: unknown): Record<string, string> =>
  isObject(x)
    ? Object.fromEntries(Object.entries(x).filter((e): e is [string, string] => typeof e[1] === 'string'))
    : {};

/**
 * A record as any release wrote it, in today's shape. Until 0.1.0's
 * restructure an nftables record was strings only (`{layout: {version:
 * "3"}, chain: {NAME: DIGEST}, rules: {NAME: "D1 D2"}, lb: {NAME: "1"}}`);
 * older ones had no layout at all (read as layout 0: the next sync is full).
 */
export function readApplied(x: unknown): Applied | undefined {
  if (!isObject(x) || typeof x.backend !== 'string' || !isObject(x.families)) return undefined;
  const clean = x.clean === true;
  const fams = Object.entries(x.families).filter(([k, v]) => (k === '4' || k === '6') && isObject(v)) as [
    string,
    Loose,
  ][];
  if (x.backend === 'iptables')
    return {
      backend: 'iptables',
      ...(typeof x.mode === 'string' ? { mode: x.mode } : {}),
      clean,
      families: Object.fromEntries(fams.map(([k, v]) => [k, { nat: strings(v.nat), filter: strings(v.filter) }])),
    };
  if (x.backend !== 'nft' && x.backend !== 'netlink') return undefined;
  return { backend: x.backend, clean, families: Object.fromEntries(fams.map(([k, v]) => [k, readNftablesRecord(v)])) };
}

function readNftablesRecord(v: Loose): NftablesRecord {
  if (typeof v.layout === 'number' && isObject(v.chains) && isObject(v.lb)) return v as unknown as NftablesRecord;
  const layout = isObject(v.layout) ? Number(v.layout.version) || 0 : 0;
  const rules = strings(v.rules);
  const chains = Object.fromEntries(
    Object.entries(strings(v.chain)).map(([name, digest]) => [
      name,
      { digest, rules: (rules[name] ?? '').split(' ').filter(Boolean) },
    ]),
  );
  const lb = Object.fromEntries(Object.entries(strings(v.lb)).map(([k, n]) => [k, Number(n)]));
  return { layout, chains, lb };
}

export interface SyncResult {
  /** Whether everything was rewritten (first sync, after a flush, or forced). */
  full: boolean;
  /** Objects (chains, elements) written and deleted. */
  written: number;
  deleted: number;
  applied: Applied;
}

/** Packets and bytes a service or endpoint has seen: in NAT chains, the first packet of each connection. */
export interface Counter {
  packets: number;
  bytes: number;
}

/** A client pinned to an endpoint by session affinity; `expiresMs` when the kernel says (nftables' set timeouts). */
export interface AffinityEntry {
  client: string;
  expiresMs?: number;
}

/** Counters per service (by name) and per endpoint (`ip:port`) of each. */
export interface ServiceCounters {
  service: Counter;
  endpoints: Record<string, Counter>;
}

/**
 * Whether `family` may hold rules of `kind`, per the last record: when the
 * last sync wrote that family, and always when a sync died half-way (a
 * dirty record: what is live is unknown). A family that may hold rules but
 * is no longer used must be torn down, not skipped.
 */
export function mayHoldRules(applied: Applied | undefined, kind: TableKind, family: Family): boolean {
  if (!applied || tableKind(applied.backend) !== kind) return false;
  return !applied.clean || applied.families[family] !== undefined;
}

export const tableKind = (b: BackendName): TableKind => (b === 'iptables' ? 'iptables' : 'nftables');

/** What changed since the state `applied` was written from. */
export interface SyncRound {
  /** The services that differ from it. */
  services: readonly ServiceDelta[];
  /** That state, rebuilt (O(state): for what needs it whole). */
  before: () => DesiredState;
  /** The caller keeps this state for more rounds (the agent): an index of what services share is worth building now, once. */
  resident?: boolean;
  /** The caller keeps serving while it syncs: a table that is gone may be rebuilt in pieces (nftables/rebuild). */
  chunks?: SyncChunks;
}

/** Changes the caller accepted while a sync was under way, already applied to the state being synced. */
export interface ChunkJoin {
  services: readonly ServiceDelta[];
  /** Whether rules or forwards changed. */
  global: boolean;
  /** Called once the piece carrying them is committed (or with the error that ended the sync). */
  settle(err?: Error): Promise<void>;
}

/** How a sync in pieces talks to its caller. */
export interface SyncChunks {
  /** The changes accepted since the last call, if any. */
  interleave(): ChunkJoin | undefined;
  /** The round's own changes are live (the first piece is committed): its caller may be answered. */
  committed(): Promise<void>;
  /**
   * Between two pieces: resolves when the next may go, with whether it may take services (true) or only
   * the changes that joined (false: the caller's urgent work is under way, and one of its changes waits).
   */
  pause(): Promise<boolean>;
  /** Whether no urgent work (the agent's CNI calls) came for a while: the pieces may then be bigger. */
  calm?(): boolean;
  /** Whether urgent work is under way now (a call being served). */
  busy?(): boolean;
}

/** One renderer + one applier. */
export interface Backend {
  readonly name: BackendName;
  readonly tables: TableKind;
  /** The full payload(s) a first sync would apply: what `tsnet rules` prints. */
  render(st: DesiredState): string;
  /**
   * Takes the rules to `st`. Without `round`, or when the rules are not as
   * last left, everything is rewritten; with it, only what the changed
   * services change (a partial sync).
   */
  sync(st: NatState, applied: Applied | undefined, force: boolean, round?: SyncRound): Promise<SyncResult>;
  /** Whether tsnet's canary (chain rule, or table) of `family` is still there: gone means someone flushed the rules. */
  canaryPresent(family: Family): Promise<boolean>;
  /** Removes everything of tsnet's that this backend put in place. */
  teardown(): Promise<void>;
  /** The kernel's counters per service and endpoint of `st`. */
  counters(st: DesiredState): Promise<Map<string, ServiceCounters>>;
  /** Clients pinned to each endpoint (`ip:port`) of a service with affinity, as the kernel holds them now. */
  affinity(s: Service): Promise<Record<string, AffinityEntry[]>>;
}
