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
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hasCode } from '../errors';
import * as netns from '../netns';
import { stateDir as defaultStateDir, withLock } from '../state';
import { normalizeState, type DesiredState } from './model';
import { resolveChoice, type BackendChoice } from './backends';
import {
  tableKind,
  type AffinityEntry,
  type Applied,
  type Backend,
  type BackendName,
  type ServiceCounters,
  type SyncResult,
} from './backends/types';
import { IndexedState, type NatChange, type ServiceDelta } from './changes';
import { NatStore, type StateRecord } from './store';
import type { HeldLock } from './exec';
import { convergeSysctls } from './sysctls';
import { deleteUdpFlows, removedUdpEndpoints } from './udp-flows';

export type { BackendChoice } from './backends';
export type { NatChange } from './changes';

/** A round that re-applies the whole stored state (no service known to have changed). */
const whole = (indexed: IndexedState): Round => ({ next: indexed, services: [], before: () => indexed.desired() });

/** Makes a backend (its module is loaded only now: a CLI call pays for the one it uses). */
async function createBackend(
  name: BackendName,
  ns: netns.NetNs,
  o: { lock?: HeldLock; iptablesMode?: string } = {},
): Promise<Backend> {
  switch (name) {
    case 'netlink':
      return new (await import('./nftables/backend-netlink')).NetlinkBackend(ns);
    case 'nft':
      return new (await import('./nftables/backend-nft')).NftBackend(ns, o.lock);
    case 'iptables': {
      const { IptablesBackend, detectMode } = await import('./iptables/backend');
      const mode = o.iptablesMode === 'legacy' || o.iptablesMode === 'nft' ? o.iptablesMode : await detectMode(ns);
      return new IptablesBackend(ns, mode, o.lock);
    }
  }
}

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
}

export interface SyncReport extends Omit<SyncResult, 'applied'> {
  backend: string;
  ms: number;
  conntrackDeleted: number;
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

/**
 * The engines a long-lived process keeps (the agent's): one per namespace,
 * state directory and backend choice, made once, so what each loaded and
 * the indexes of what it wrote stay in memory and every change is applied
 * as a diff (the state is read again only when another process changed the
 * files). Engines of two pools never share anything.
 */
export class EnginePool {
  private readonly byNs = new WeakMap<netns.NetNs, Map<string, NatEngine>>();

  constructor(private readonly defaults: Pick<EngineOptions, 'resident' | 'onSync'> = {}) {}

  get(opts: EngineOptions = {}): NatEngine {
    const ns = opts.ns ?? netns.current();
    let m = this.byNs.get(ns);
    if (!m) this.byNs.set(ns, (m = new Map()));
    const key = `${defaultStateDir(opts.stateDir)}\0${opts.backend ?? 'auto'}\0${opts.exactDir ? 'exact' : ''}`;
    let e = m.get(key);
    if (!e || e.ns.closed) m.set(key, (e = new NatEngine({ ...this.defaults, ...opts, ns })));
    return e;
  }
}

export class NatEngine {
  readonly ns: netns.NetNs;
  readonly dir: string;
  private readonly choice: BackendChoice;
  private readonly store: NatStore;
  private readonly resident: boolean;
  private readonly onSync?: (e: SyncEvent) => void;
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
    if (opts.onSync) this.onSync = opts.onSync;
  }

  /** Where the desired state is kept (the snapshot; see ./store for the journal beside it). */
  get file(): string {
    return this.store.file;
  }

  /**
   * Present while a sync is under way: a tsnet killed between applying and
   * recording leaves it, and the next sync is then a full one (or, after a
   * first sync, a teardown by the backend it names). A file of its own, so it
   * needs no fsync: the durable state is never replaced by a version a power
   * loss could empty.
   */
  private get dirtyFile(): string {
    return path.join(this.dir, 'nat.dirty');
  }

  /** The dirty mark: which backend (and iptables mode) the sync that left it was applying with. */
  private readDirty(): { backend: BackendName; mode?: string } | undefined {
    let text: string;
    try {
      text = fs.readFileSync(this.dirtyFile, 'utf8');
    } catch (err) {
      if (hasCode(err, 'ENOENT')) return undefined;
      throw err;
    }
    // Older marks hold only a pid: they were written with a record, whose backend is known.
    const [, backend, mode] = text.trim().split(/\s+/);
    const b = (['iptables', 'nft', 'netlink'] as const).find((x) => x === backend) ?? 'iptables';
    return mode ? { backend: b, mode } : { backend: b };
  }

  /** The stored state, with what a dead sync means for it: what is live is unknown until a full sync, and may be rules no record names. */
  private load(): { f: StateRecord; indexed: IndexedState } {
    const { f, indexed } = this.store.load();
    if (this.resident) indexed.warm();
    const dirty = this.readDirty();
    if (!dirty) return { f, indexed };
    const applied: Applied = f.applied
      ? { ...f.applied, clean: false }
      : dirty.backend === 'iptables'
        ? { backend: 'iptables', ...(dirty.mode ? { mode: dirty.mode } : {}), clean: false, families: {} }
        : { backend: dirty.backend, clean: false, families: {} };
    return { f: { ...f, applied }, indexed };
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
    return withLock(this.dir, 'nat', async (fd) => {
      this.lock.fd = fd;
      try {
        return await fn();
      } finally {
        this.lock.fd = undefined;
      }
    });
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
    return this.locked(async () => {
      const { f, indexed } = this.load();
      return this.changeRound(f, indexed, changes, opts.force ?? false, true);
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
  ): Promise<SyncReport> {
    const round = indexed.apply(changes);
    if (!force && !round.global && !round.services.length && this.upToDate(f)) return this.unchanged(f);
    try {
      return await this.apply(
        f,
        { next: indexed, services: round.services, before: round.before, ...(journal ? { changes } : {}) },
        force,
        'update',
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
      return this.apply(f, whole(indexed), true, 'resync');
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
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const mode = (backend as { mode?: string }).mode;
    fs.writeFileSync(this.dirtyFile, `${process.pid} ${backend.name}${mode ? ` ${mode}` : ''}\n`);
    const next = round.next;
    let result: SyncResult;
    let conntrackDeleted: number;
    try {
      result = await backend.sync(next, applied, force, {
        services: round.services,
        before: round.before,
        resident: this.resident,
      });
      conntrackDeleted = await deleteUdpFlows(this.ns, removedUdpEndpoints(round.services));
      const sysctls = await convergeSysctls(this.ns, next, f.sysctls ?? {});
      this.store.save(
        round.next,
        { backend: backend.name, applied: result.applied, sysctls },
        result.full ? undefined : round.changes,
      );
    } catch (err) {
      // Applied halfway or not recorded (the dirty mark stays: the next sync is a full one): what this process holds is not the record.
      this.store.forget();
      this.kept = undefined;
      throw err;
    }
    fs.rmSync(this.dirtyFile, { force: true });
    const { applied: _a, ...rest } = result;
    const report: SyncReport = {
      ...rest,
      backend: backend.name + (result.applied.mode ? `/${result.applied.mode}` : ''),
      ms: Number(process.hrtime.bigint() - t0) / 1e6,
      conntrackDeleted,
    };
    this.onSync?.({ ...report, dir: this.dir, trigger });
    return report;
  }
}
