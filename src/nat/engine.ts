/**
 * The NAT engine: desired state on disk, changed under a lock, applied by one
 * backend, then recorded. The data flow of every mutating call:
 *
 *   lock -> load (from memory when nothing changed on disk) -> apply the
 *   changes to a copy (validating what changed) -> backend.sync (only what
 *   changed, when the table is as last left) -> conntrack cleanup for removed
 *   UDP endpoints -> record (a journal line) -> unlock
 *
 * If the sync fails nothing is recorded (and every backend's transaction is
 * atomic), so a rejected change leaves both the rules and the state as they were.
 * An agent's table rebuilt in pieces (nftables/rebuild) takes changes made
 * meanwhile in between its pieces (./joining) rather than behind the lock.
 */
import * as path from 'node:path';
import * as netns from '../netns';
import { stateDir as defaultStateDir, withLock } from '../state';
import { normalizeState, type DesiredState } from './model';
import { createBackend, resolveChoice, type BackendChoice } from './backends';
import {
  tableKind,
  type AffinityEntry,
  type Applied,
  type Backend,
  type BackendName,
  type ServiceCounters,
  type SyncChunks,
  type SyncResult,
} from './backends/types';
import { IndexedState, type NatChange, type ServiceDelta } from './changes';
import { NatStore, type StateRecord } from './store';
import type { HeldLock } from './exec';
import { convergeSysctls } from './sysctls';
import { deleteUdpFlows, removedUdpEndpoints } from './udp-flows';
import { clearDirty, markDirty, withDirtyMark } from './dirty';
import { syncPieces, unclean, type Joining } from './joining';

export type { BackendChoice } from './backends';
export type { NatChange } from './changes';

/** A round that re-applies the whole stored state; `line`: recorded as a journal line (an agent's repair), not a snapshot in today's format (`tsnet sync`). */
const whole = (next: IndexedState, line = false): Round => ({
  next,
  services: [],
  before: () => next.desired(),
  ...(line ? { changes: [] } : {}),
});

export interface EngineOptions {
  /** Namespace whose netfilter rules are managed (default: the current one). */
  ns?: netns.NetNs;
  stateDir?: string;
  backend?: BackendChoice;
  /** `stateDir` is the engine's directory itself, even for another namespace (what a process running inside that namespace used: a CNI record names it so). */
  exactDir?: boolean;
  /**
   * A process that lives on and applies many changes (the agent): the state
   * it loads is parsed and indexed once, and the index of what services
   * share is kept. A one-shot process (the CLI, a standalone CNI plugin)
   * reads only what its change needs.
   */
  resident?: boolean;
  /** Called after every sync this engine makes (the agent's metrics and log). */
  onSync?: (e: SyncEvent) => void;
  /** Called when a sync fails after its caller was answered (a rebuild in pieces: see change()). */
  onLateError?: (err: Error, dir: string) => void;
  /** Whether the process serves calls that go before a rebuild's next piece (the agent's CNI calls in flight). */
  busy?: () => boolean;
  /** Whether no such call came for a while: a rebuild may then go in bigger pieces (a node joining a cluster). */
  calm?: () => boolean;
}

export interface SyncReport extends Omit<SyncResult, 'applied'> {
  backend: string;
  ms: number;
  conntrackDeleted: number;
  /** Answered from a sync in pieces once the piece carrying the change was live (its objects are that sync's). */
  joined?: boolean;
}

/** A sync that happened, for observers (the agent's log and metrics). */
export interface SyncEvent extends SyncReport {
  /** The engine's state directory. */
  dir: string;
  /** What asked for it: a change of the desired state, an explicit sync, or the resync loop after a flush. */
  trigger: 'update' | 'sync' | 'resync';
}

/** What one round changed, for the backend (what to rewrite) and the journal (what to record). */
interface Round {
  /** The state after the round (changed in place: see ./changes). */
  next: IndexedState;
  /** Services that changed. */
  services: ServiceDelta[];
  /** The state before the round, rebuilt on demand. */
  before: () => DesiredState;
  /** The changes, to journal (undefined: record a snapshot). */
  changes?: readonly NatChange[];
}

export class NatEngine {
  readonly ns: netns.NetNs;
  readonly dir: string;
  private readonly choice: BackendChoice;
  private readonly store: NatStore;
  private readonly resident: boolean;
  /** The resident process's hooks. */
  private readonly hooks: Pick<EngineOptions, 'onSync' | 'onLateError' | 'busy' | 'calm'>;
  /** Changes made while a sync goes in pieces (a resident engine only): they join it instead of waiting for the lock. */
  private joinable?: Joining[];
  /** This process's callers of the lock, in order: each is started as soon as the one before ends (the flock is for other processes). */
  private turn: Promise<unknown> = Promise.resolve();
  /** The backend of the last sync, kept while the choice stays the same (it keeps indexes of what it wrote). */
  private kept?: { name: BackendName; mode?: string; backend: Backend };
  private readonly lock: HeldLock = {};

  constructor(opts: EngineOptions = {}) {
    this.ns = opts.ns ?? netns.current();
    const base = defaultStateDir(opts.stateDir);
    // One desired state per namespace: the rules of c1 are not those of the host.
    this.dir =
      this.ns.isCurrent || opts.exactDir ? base : path.join(base, 'netns', this.ns.name ?? `inode-${this.ns.inode}`);
    this.choice = opts.backend ?? 'auto';
    this.store = new NatStore(this.dir);
    this.resident = opts.resident ?? false;
    this.hooks = opts;
  }

  /** Where the desired state is kept (the snapshot; see ./store for the journal beside it). */
  get file(): string {
    return this.store.file;
  }

  /** The stored state, with what a dead sync means for it: what is live is unknown until a full sync, and may be rules no record names. */
  private load(): { f: StateRecord; indexed: IndexedState } {
    const { f, indexed } = this.store.load();
    if (this.resident) indexed.warm();
    return { f: withDirtyMark(this.dir, f), indexed };
  }

  /** The desired state as stored (every service parsed: O(services)). */
  read(): DesiredState {
    return this.load().indexed.desired();
  }

  /** The stored rules and forwards, no service parsed. */
  globals(): Pick<DesiredState, 'rules' | 'forwards'> {
    const { rules, forwards } = this.store.globals();
    return { rules, forwards };
  }

  /**
   * The backend for state `f`, kept while the state names the same one (what it remembers of the table it last
   * wrote serves the next sync). The tools it runs hold the engine's lock while the engine holds it (a killed
   * tsnet's last restore keeps the lock till it is done).
   */
  private async backendFor(f: StateRecord): Promise<Backend> {
    const name = resolveChoice(this.choice, f.backend);
    const mode = f.applied?.backend === 'iptables' ? f.applied.mode : undefined;
    // No mode on record: the kept backend's, which it detected, will do.
    if (this.kept?.name === name && (mode === undefined || this.kept.mode === mode)) return this.kept.backend;
    const backend = await createBackend(name, this.ns, { lock: this.lock, iptablesMode: mode });
    this.kept = { name, mode: (backend as { mode?: string }).mode, backend };
    return backend;
  }

  /** Runs `fn` under the engine's lock, which the backend's tools then hold too. */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.turn.then(() =>
      withLock(this.dir, 'nat', async (fd) => {
        this.lock.fd = fd;
        try {
          return await fn();
        } finally {
          this.lock.fd = undefined;
        }
      }),
    );
    this.turn = run.catch(() => undefined);
    return run;
  }

  /** The backend that applies this engine's rules (what `auto` resolves to for its state). */
  async backend(): Promise<Backend> {
    return this.backendFor(this.load().f);
  }

  /**
   * Applies `changes` (see ./changes): each validated as it is applied, the
   * rules rewritten only where they change, the round recorded as one
   * journal line. Bad input changes nothing. Changing nothing (the same
   * `add` twice) syncs nothing.
   */
  async change(changes: readonly NatChange[], opts: { force?: boolean } = {}): Promise<SyncReport> {
    // A table being rebuilt in pieces (an agent's, after a flush) takes the change in with its next piece.
    const joinable = this.joinable;
    if (joinable && !opts.force) return new Promise((resolve, reject) => joinable.push({ changes, resolve, reject }));
    return new Promise((resolve, reject) => {
      let answered = false;
      const answer = (r: SyncReport) => {
        answered = true;
        resolve(r);
      };
      this.locked(async () => {
        const { f, indexed } = this.load();
        return this.changeRound(f, indexed, changes, opts.force ?? false, true, answer);
      }).then(resolve, (err: unknown) => {
        if (!answered) reject(err);
        else this.hooks.onLateError?.(err as Error, this.dir);
      });
    });
  }

  /**
   * The changes `decide` makes of the stored rules and forwards, decided
   * and applied under the lock, so no other process's round slips between
   * reading the state and changing it (a forward's add or remove).
   * Undefined when `decide` asks for nothing.
   */
  async changeWith(
    decide: (st: Pick<DesiredState, 'rules' | 'forwards'>) => readonly NatChange[],
    opts: { force?: boolean } = {},
  ): Promise<SyncReport | undefined> {
    return this.locked(async () => {
      const { f, indexed } = this.load();
      const changes = decide({ rules: indexed.rules, forwards: indexed.forwards });
      if (!changes.length && !opts.force) return undefined;
      return this.changeRound(f, indexed, changes, opts.force ?? false, true);
    });
  }

  /**
   * Changes the desired state with `change` (any edit of the whole state) and
   * applies it. `change` may throw (bad input): nothing is applied or saved
   * then. Costs O(state); `change()` costs O(changes).
   */
  async update(change: (st: DesiredState) => DesiredState | void, opts: { force?: boolean } = {}): Promise<SyncReport> {
    return this.locked(async () => {
      const { f, indexed } = this.load();
      const draft = structuredClone(indexed.desired());
      const wanted = normalizeState(change(draft) ?? draft);
      return this.changeRound(f, indexed, [{ kind: 'set-state', state: wanted }], opts.force ?? false, false);
    });
  }

  /**
   * Applies `changes` to the loaded state and syncs what they changed (nothing, when the rules are as last left);
   * a failed sync undoes them. `journal`: the changes are small enough to record as a journal line.
   */
  private async changeRound(
    f: StateRecord,
    indexed: IndexedState,
    changes: readonly NatChange[],
    force: boolean,
    journal: boolean,
    answer?: (r: SyncReport) => void,
  ): Promise<SyncReport> {
    const round = indexed.apply(changes);
    if (!force && !round.global && !round.services.length && this.upToDate(f)) return this.unchanged(f);
    try {
      return await this.apply(
        f,
        { next: indexed, services: round.services, before: round.before, ...(journal ? { changes } : {}) },
        force,
        'update',
        answer,
      );
    } catch (err) {
      round.undo();
      throw err;
    }
  }

  private upToDate(f: StateRecord): boolean {
    return f.applied?.clean === true && resolveChoice(this.choice, f.backend) === f.backend;
  }

  private unchanged(f: StateRecord): SyncReport {
    return {
      full: false,
      written: 0,
      deleted: 0,
      backend: f.backend + (f.applied?.mode ? `/${f.applied.mode}` : ''),
      ms: 0,
      conntrackDeleted: 0,
    };
  }

  /** Re-applies the stored desired state (after a reboot, a flush, or a crash). */
  async sync(opts: { force?: boolean } = {}): Promise<SyncReport> {
    return this.locked(async () => {
      const { f, indexed } = this.load();
      return this.apply(f, whole(indexed), opts.force ?? false, 'sync');
    });
  }

  /**
   * What a resident process runs every interval (kube-proxy's canary
   * monitor): when the rules this engine applied are intact, nothing; when
   * someone flushed them (the canary is gone), a full re-apply of the stored
   * desired state. Returns the sync's report, or undefined when none was needed.
   */
  async converge(): Promise<SyncReport | undefined> {
    return this.locked(async () => {
      const { f, indexed } = this.load();
      const applied = f.applied;
      if (!applied) return undefined; // nothing was ever applied here (or it was torn down)
      const families = Object.keys(applied.families).map(Number) as (4 | 6)[];
      const backend = await this.backendFor(f);
      let intact = applied.clean && backend.tables === tableKind(applied.backend);
      for (const fam of families) if (intact && !(await backend.canaryPresent(fam))) intact = false;
      if (intact) return undefined;
      return this.apply(f, whole(indexed, true), true, 'resync');
    });
  }

  /** The address families whose rules the last sync applied here (none: nothing applied, or torn down). */
  appliedFamilies(): (4 | 6)[] {
    const { f } = this.load();
    return f.applied ? (Object.keys(f.applied.families).map(Number) as (4 | 6)[]) : [];
  }

  /** The kernel's per-service and per-endpoint counters (packets and bytes of the first packet of each connection). */
  async counters(): Promise<Map<string, ServiceCounters>> {
    const { f, indexed } = this.load();
    if (!f.applied) return new Map();
    return (await this.backendFor(f)).counters(indexed.desired());
  }

  /** Clients pinned to each endpoint of service `name` by affinity, as the kernel holds them (empty without affinity). */
  async affinity(name: string): Promise<Record<string, AffinityEntry[]>> {
    const { f, indexed } = this.load();
    const s = indexed.service(name);
    if (!s || !f.applied) return {};
    return (await this.backendFor(f)).affinity(s);
  }

  /** What a full sync of the stored (or given) state would apply, for review. */
  async rules(st?: DesiredState): Promise<string> {
    const { f, indexed } = this.load();
    return (await this.backendFor(f)).render(st ? normalizeState(st) : indexed.desired());
  }

  private async apply(
    f: StateRecord,
    round: Round,
    force: boolean,
    trigger: SyncEvent['trigger'],
    answer?: (r: SyncReport) => void,
  ): Promise<SyncReport> {
    const t0 = process.hrtime.bigint();
    const backend = await this.backendFor(f);
    let applied = f.applied;
    if (f.backend && tableKind(f.backend) !== backend.tables) {
      // Switching between iptables and nftables: the old rules go first, so traffic is never handled twice.
      // (The nft and netlink backends write the same table: one simply carries on from the other.)
      const old = await createBackend(f.backend, this.ns, { lock: this.lock, iptablesMode: f.applied?.mode });
      await old.teardown();
      applied = undefined;
    }
    // Mark the record dirty first: a crash between apply and save then forces a full sync next time, and a
    // first sync's crash a teardown by the same backend. (Not synced to disk: a power loss takes the rules
    // with it, and the canary then forces a full sync anyway.)
    markDirty(this.dir, backend.name, (backend as { mode?: string }).mode);
    const next = round.next;
    const record = {
      backend: backend.name,
      applied: unclean(backend.name),
      ...(f.sysctls ? { sysctls: f.sysctls } : {}),
    };
    const pieces = this.resident
      ? syncPieces({
          queue: () => this.joinable,
          next,
          backend: backend.name,
          t0,
          ...(round.changes ? { changes: round.changes } : {}),
          ...(answer ? { answer } : {}),
          save: (changes) => void this.store.save(next, record, changes),
          flows: (services) => deleteUdpFlows(this.ns, removedUdpEndpoints(services)),
          ...(this.hooks.busy ? { busy: this.hooks.busy } : {}),
          ...(this.hooks.calm ? { calm: this.hooks.calm } : {}),
        })
      : undefined;
    let result: SyncResult;
    let conntrackDeleted: number;
    try {
      result = await this.syncJoined(backend, next, applied, force, round, pieces?.chunks);
      conntrackDeleted = await deleteUdpFlows(this.ns, removedUdpEndpoints(round.services));
      const sysctls = await convergeSysctls(this.ns, next, f.sysctls ?? {});
      // A whole round changed no state, and an answered one is journaled already: a line records the sync.
      const journal = pieces?.answered() ? [] : round.changes?.length === 0 || !result.full ? round.changes : undefined;
      this.store.save(round.next, { backend: backend.name, applied: result.applied, sysctls }, journal);
    } catch (err) {
      // Applied halfway or not recorded (the dirty mark stays: the next sync is a full one): what this process holds is not the record.
      this.store.forget();
      this.kept = undefined;
      throw err;
    }
    clearDirty(this.dir);
    const { applied: _a, ...rest } = result;
    const report: SyncReport = {
      ...rest,
      backend: backend.name + (result.applied.mode ? `/${result.applied.mode}` : ''),
      ms: Number(process.hrtime.bigint() - t0) / 1e6,
      conntrackDeleted,
    };
    this.hooks.onSync?.({ ...report, dir: this.dir, trigger });
    return report;
  }

  /** backend.sync, with changes made meanwhile joining it when it goes in pieces; those left over when it ends take the lock after it. */
  private async syncJoined(
    backend: Backend,
    next: IndexedState,
    applied: Applied | undefined,
    force: boolean,
    round: Round,
    chunks: SyncChunks | undefined,
  ): Promise<SyncResult> {
    if (chunks) this.joinable = [];
    try {
      return await backend.sync(next, applied, force, {
        services: round.services,
        before: round.before,
        resident: this.resident,
        ...(chunks ? { chunks } : {}),
      });
    } finally {
      const left = this.joinable ?? [];
      this.joinable = undefined;
      for (const j of left) this.change(j.changes).then(j.resolve, j.reject);
    }
  }
}
