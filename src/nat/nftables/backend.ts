/**
 * What the two nftables backends share: the layout (src/nat/nftables/layout),
 * the plan between what was last written and what is wanted, and the record
 * of it. They differ only in how a plan reaches the kernel and how the table
 * is read back: `nft -f` and `nft list` (./backend-nft), or nf_tables messages over
 * netlink (./backend-netlink). Both write the same `table ip tsnet` / `ip6 tsnet`,
 * byte for byte, so either takes over from the other without a teardown.
 */
import { hasCode } from '../../errors';
import { formatHostPort, type Family } from '../../addr/cidr';
import type { NetNs } from '../../netns';
import { familiesUsed, familyOf, type DesiredState, type Service } from '../model';
import { counterPlaces, render, type CounterPlace } from './layout';
import { affinitySet, sepChain } from './table-names';
import { PlanBuilder, fullPlan, type Plan } from './plan';
import { SharedIndex, changePlan, globalRecord, lbRecordAfter, lbRecordOf, lookedUp } from './incremental';
import type { NatState, StateView } from '../changes';
import { script } from './text';
import { CHUNK_SERVICES, ChunkedRebuild } from './rebuild';
import {
  mayHoldRules,
  type Applied,
  type Backend,
  type BackendName,
  type AffinityEntry,
  type Counter,
  type ServiceCounters,
  type SyncResult,
  type SyncRound,
  type SyncChunks,
  type NftablesRecord,
} from '../backends/types';

/** Counters read from the kernel: set -> element key -> counter, and chain -> the counter of its counted rule. */
export interface TableCounters {
  elements: Map<string, Map<string, Counter>>;
  chains: Map<string, Counter>;
}

/** Rounds up to this many changed services look other users up instead of counting them all (unless the caller keeps the state: then the count is made once and kept). */
const LOOKUP_MAX = 16;

/** The whole table; a resident process counts what services share once: the record's lb users are those counts. */
function wholeTable(desired: DesiredState, family: Family, resident?: boolean) {
  const index = resident ? SharedIndex.build(desired.services, family) : undefined;
  const lb = index ? Object.fromEntries(index.lb) : lbRecordOf(desired.services, family);
  return { plan: fullPlan(render(desired, family)), index, lb };
}

export abstract class NftablesBackend implements Backend {
  abstract readonly name: BackendName;
  readonly tables = 'nftables' as const;
  /**
   * The shared-object index of the table last written from a state: kept
   * across syncs by a process that syncs the same state again (the agent),
   * built when a round changes many services. Taken out while a sync uses it:
   * a failed sync leaves it changed halfway, and it is dropped.
   */
  private readonly indexes = new WeakMap<StateView, Map<Family, SharedIndex>>();

  constructor(readonly ns: NetNs) {}

  /** Takes the table of `family` through the plan's operations in one transaction. */
  protected abstract apply(plan: Pick<Plan, 'ops' | 'existing'>, family: Family): Promise<void>;
  abstract canaryPresent(family: Family): Promise<boolean>;
  /** Every counter of the table of `family` (element counters of the maps, rule counters of the chains). */
  protected abstract readCounters(family: Family): Promise<TableCounters | undefined>;
  /** The elements (addresses) of an affinity set, with the ms before each expires. */
  protected abstract readAffinitySet(family: Family, set: string): Promise<AffinityEntry[]>;

  async affinity(s: Service): Promise<Record<string, AffinityEntry[]>> {
    const out: Record<string, AffinityEntry[]> = {};
    if (s.affinitySeconds === undefined) return out;
    for (const e of s.endpoints)
      out[formatHostPort(e.ip, e.port)] = await this.readAffinitySet(
        familyOf(s.vip),
        affinitySet(sepChain(s, e.ip, e.port), s.affinitySeconds),
      );
    return out;
  }
  /** Whether a table that is gone may be rebuilt in pieces (each piece a transaction of its own: too dear for `nft -f`). */
  protected readonly chunkable: boolean = false;
  /** Whether this applier can carry out a partial plan (else the sync is a full one). */
  protected partialOk(_plan: Plan): boolean {
    return true;
  }

  render(st: DesiredState): string {
    return (familiesUsed(st).length ? familiesUsed(st) : [4 as const])
      .map((f) => `# nft -f -\n${script(fullPlan(render(st, f)).ops, f)}`)
      .join('\n');
  }

  /**
   * A partial sync when the table is as last left (a clean record, the
   * canary in place) and the caller says what was there before: only the
   * changed services' objects are written (./incremental). Otherwise
   * the table is rebuilt in one transaction.
   */
  async sync(st: NatState, applied: Applied | undefined, force: boolean, round?: SyncRound): Promise<SyncResult> {
    // The whole state, read only by a full sync (a partial one asks `st` what it needs).
    let whole: DesiredState | undefined;
    const desired = () => (whole ??= { services: st.services(), rules: st.rules, forwards: st.forwards });
    const result: SyncResult = {
      full: false,
      written: 0,
      deleted: 0,
      applied: { backend: this.name, clean: true, families: {} },
    };
    const usable = applied && applied.backend !== 'iptables' && applied.clean ? applied : undefined;
    const families = st.families();
    if (
      round?.chunks &&
      this.chunkable &&
      (await this.rebuildAbsent(st, families, applied, force, round, round.chunks, result))
    )
      return result;
    // The table went after the check above (`nft flush ruleset` at that moment): rebuilt in pieces all the same.
    const rebuildGone = async (): Promise<boolean> => {
      if (!round?.chunks || !this.chunkable) return false;
      result.written = result.deleted = 0;
      result.applied.families = {};
      return this.rebuildAbsent(st, families, applied, force, round, round.chunks, result, true);
    };
    for (const family of [4, 6] as const) {
      // Taken out now: put back below only by a sync it describes (a full sync, a teardown or a failure drops it).
      const kept = round && this.indexes.get(st)?.get(family);
      if (round) this.indexes.get(st)?.delete(family);
      if (!families.includes(family)) {
        if (force || mayHoldRules(applied, 'nftables', family)) await this.teardownFamily(family);
        continue;
      }
      const prev = usable?.families[family];
      let plan: Plan | undefined;
      let index: SharedIndex | undefined;
      let lb: NftablesRecord['lb'] | undefined;
      const partial = prev && round && !force;
      const present = partial && (await this.canaryPresent(family));
      if (partial && !present && (await rebuildGone())) return result;
      if (present) {
        const changes = round.services.filter((c) => familyOf((c.new ?? c.old)!.vip) === family);
        index =
          kept ||
          (changes.length > LOOKUP_MAX || round.resident
            ? SharedIndex.build(round.before().services, family)
            : undefined);
        plan = changePlan(st, family, changes, prev, index ? index.others(changes) : lookedUp(st, prev.lb, changes));
        if (plan && !this.partialOk(plan)) plan = undefined;
        if (plan) lb = lbRecordAfter(prev.lb, changes);
        if (plan && index) index.update(changes);
      }
      if (!plan) ({ plan, index, lb } = wholeTable(desired(), family, round?.resident));
      try {
        await this.apply(plan, family);
      } catch (err) {
        // The table went between the canary check and the partial batch (`nft flush ruleset` at that moment): the
        // batch named what no longer exists, and nothing of it was applied. Rebuild it whole.
        if (plan.full || !hasCode(err, 'ENOENT')) throw err;
        if (await rebuildGone()) return result;
        ({ plan, index, lb } = wholeTable(desired(), family, round?.resident));
        await this.apply(plan, family);
      }
      if (round && index) {
        let m = this.indexes.get(st);
        if (!m) this.indexes.set(st, (m = new Map()));
        m.set(family, index);
      }
      result.full ||= plan.full;
      result.written += plan.written;
      result.deleted += plan.deleted;
      result.applied.families[family] = globalRecord(st, family, lb!);
    }
    return result;
  }

  /**
   * The table rebuilt in pieces when none is there to take over from (no
   * family's canary present, or `gone`: a batch found it deleted) and the
   * state is large: see ./rebuild. False when it is not the case (the
   * caller syncs as usual).
   */
  private async rebuildAbsent(
    st: NatState,
    families: Family[],
    applied: Applied | undefined,
    force: boolean,
    round: SyncRound,
    chunks: SyncChunks,
    result: SyncResult,
    gone = false,
  ): Promise<boolean> {
    if (st.services().length < 2 * CHUNK_SERVICES) return false;
    if (!gone) for (const family of families) if (await this.canaryPresent(family)) return false;
    for (const family of [4, 6] as const)
      if (!families.includes(family) && (force || mayHoldRules(applied, 'nftables', family)))
        await this.teardownFamily(family);
    this.indexes.delete(st);
    const own = round.services.flatMap((d) => (d.new ? [d.new] : []));
    const r = await new ChunkedRebuild((plan, family) => this.apply(plan, family), st, chunks, own).run();
    result.full = true;
    result.written = r.written;
    result.deleted = r.deleted;
    for (const [family, { record, index }] of r.families) {
      result.applied.families[family] = record;
      if (round.resident) {
        let m = this.indexes.get(st);
        if (!m) this.indexes.set(st, (m = new Map()));
        m.set(family, index);
      }
    }
    return true;
  }

  async teardownFamily(family: Family): Promise<void> {
    await this.apply(
      new PlanBuilder()
        .add({ kind: 'add-table' }, { kind: 'delete-table' })
        .plan({ full: true, written: 0, deleted: 0 }),
      family,
    );
  }

  async teardown(): Promise<void> {
    for (const family of [4, 6] as const) await this.teardownFamily(family);
  }

  async counters(st: DesiredState): Promise<Map<string, ServiceCounters>> {
    const out = new Map<string, ServiceCounters>();
    const tables = new Map<Family, TableCounters | undefined>();
    for (const family of familiesUsed(st)) tables.set(family, await this.readCounters(family));
    const zero = (): Counter => ({ packets: 0, bytes: 0 });
    for (const s of st.services) {
      const t = tables.get(familyOf(s.vip));
      const places = counterPlaces(s);
      const get = (p: CounterPlace) =>
        ('chain' in p ? t?.chains.get(p.chain) : t?.elements.get(p.set)?.get(p.key)) ?? zero();
      out.set(s.name, {
        service: get(places.service),
        endpoints: Object.fromEntries(
          s.endpoints.map((e, i) => [formatHostPort(e.ip, e.port), get(places.endpoints[i]!)]),
        ),
      });
    }
    return out;
  }
}
