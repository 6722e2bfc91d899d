/**
 * A table rebuilt in pieces, for a process that must keep serving while it
 * works (the agent): after `nft flush ruleset`, or on a node's first sync,
 * ten thousand services are about 110,000 objects, which the kernel takes
 * a few hundred milliseconds to apply as one transaction, holding its
 * nf_tables commit mutex the whole time. Rebuilt as a skeleton (the table,
 * its sets and the chains that belong to no service) and then a few hundred
 * services per transaction, each one an ordinary change round
 * (./incremental), a CNI call's rule waits for one piece, not the whole.
 *
 * Only a table that is not there is rebuilt so: nothing live is taken
 * away, and each piece adds to what traffic can already use. A table in
 * place is still replaced in one transaction.
 *
 * Changes made meanwhile join the rebuild (SyncChunks.interleave) and go
 * in the next piece, as diffs of what the table holds so far; each is
 * settled when that piece is committed. While the process has urgent work
 * (a CNI call creating a veth, which waits in the kernel for the same
 * commit mutex: see SyncChunks.pause), a piece carries the joined changes
 * and nothing else.
 */
import { hasCode } from '../../errors';
import { familyOf, type Service } from '../model';
import type { NatState } from '../changes';
import type { ChunkJoin, NftablesRecord, SyncChunks } from '../backends/types';
import { lbOf, render } from './layout';
import { fullPlan, type Plan } from './plan';
import { SharedIndex, changePlan, globalRecord, lbRecordAfter, type ServiceChange } from './incremental';
import type { Family } from './ruleset';

/** Services per transaction: about 2,750 objects, a few ms of kernel time (the bench measured 100 to 500 alike). */
export const CHUNK_SERVICES = 250;
/**
 * Services per transaction while no urgent work came for a while (a node joining a cluster, a resync at
 * night): each transaction costs a few ms of its own, so 10,000 services go live sooner than in pieces of 250.
 * A CNI call arriving meanwhile waits for one such piece (about 100 ms); calls that keep coming keep them small.
 */
export const IDLE_CHUNK_SERVICES = 1000;
/** A rebuild the table's deletion interrupts (a flush mid-way) starts over, this many times at most. */
const RESTARTS = 3;

/** What one family's table has been given so far. */
interface FamilyProgress {
  /** Services still to write, in order (the round's own first). */
  todo: Map<string, Service>;
  /** Services written, as written. */
  written: Map<string, Service>;
  /** Changes to services already written, for the next piece. */
  extra: ServiceChange[];
  index: SharedIndex;
  /** Users of each lb chain written (the record's lb, kept as a map: a piece touches few). */
  lb: Map<string, number>;
  /** The record of what the table holds; undefined until its skeleton is written. */
  record?: NftablesRecord;
}

export interface RebuildResult {
  written: number;
  deleted: number;
  families: Map<Family, { record: NftablesRecord; index: SharedIndex }>;
}

export class ChunkedRebuild {
  private fams = new Map<Family, FamilyProgress>();
  private written = 0;
  private deleted = 0;
  /** Joined changes waiting for the piece that carries them. */
  private joined: ChunkJoin[] = [];

  constructor(
    private readonly apply: (plan: Plan, family: Family) => Promise<void>,
    private readonly st: NatState,
    private readonly chunks: SyncChunks,
    private readonly first: readonly Service[],
  ) {}

  async run(): Promise<RebuildResult> {
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          return await this.once();
        } catch (err) {
          // The table went mid-way (another flush): what was written is gone with it; start over.
          if (attempt >= RESTARTS || !hasCode(err, 'ENOENT')) throw err;
        }
      }
    } catch (err) {
      for (const j of this.joined.splice(0)) await j.settle(err as Error);
      throw err;
    }
  }

  private async once(): Promise<RebuildResult> {
    this.fams = new Map();
    // The round's own services go in the first piece whatever it takes besides, as joined changes do.
    for (const s of this.first) this.fold({ new: s });
    for (const s of this.st.services()) {
      const f = this.fam(familyOf(s.vip));
      if (!f.written.has(s.name)) f.todo.set(s.name, s);
    }
    let own = false;
    // Whether the next piece takes services besides the changes it carries: not while a call is served (the
    // skeleton and the round's own changes answer the caller first, a CNI call's rule among them).
    let services = !this.chunks.busy?.();
    // The pieces sent last (and how many joined changes they carry): when calm, the kernel applies them while
    // the next is planned and encoded; their changes are answered once they are committed.
    let inflight: { done: Promise<void>; joins: number } | undefined;
    const land = async () => {
      if (!inflight) return;
      const { done, joins } = inflight;
      inflight = undefined;
      await done;
      for (const j of this.joined.splice(0, joins)) await j.settle();
      if (!own) {
        own = true;
        await this.chunks.committed();
      }
    };
    try {
      for (;;) {
        const join = this.chunks.interleave();
        if (join) {
          this.joined.push(join);
          for (const d of join.services) this.fold(d);
        }
        const left = [...this.fams.values()].find((f) => f.todo.size || !f.record);
        const pick = services ? left : undefined;
        // A family with no skeleton yet gets it even in a piece without services: its rules are the caller's too.
        const touched = [...this.fams].filter(([, f]) => f === pick || f.extra.length || !f.record || join?.global);
        if (!touched.length && left) {
          services = await this.chunks.pause(); // nothing joined, and the services wait
          continue;
        }
        if (!touched.length) {
          await land();
          for (const j of this.joined.splice(0)) await j.settle(); // changes that needed nothing written
          break;
        }
        const done = Promise.all(
          touched.map(([family, f]) => this.piece(family, f, f === pick, join?.global ?? false)),
        ).then(() => undefined);
        done.catch(() => undefined); // awaited by land(); one that fails before its turn fails the rebuild there
        await land();
        inflight = { done, joins: this.joined.length };
        // Under load one piece at a time, each landed before the next is planned: a CNI call's change is in the
        // next piece, and the loop is the call's between pieces. Calm, the next is planned while this one lands.
        if (!this.chunks.calm?.()) await land();
        services = await this.chunks.pause(); // what the caller has to do (a CNI call's next step) goes first
      }
    } finally {
      // A failure mid-way: the piece still in the kernel settles before anything starts over.
      await inflight?.done.catch(() => undefined);
    }
    const families = new Map<Family, { record: NftablesRecord; index: SharedIndex }>();
    for (const [family, f] of this.fams)
      families.set(family, { record: { ...f.record!, lb: Object.fromEntries(f.lb) }, index: f.index });
    return { written: this.written, deleted: this.deleted, families };
  }

  private fam(family: Family): FamilyProgress {
    let f = this.fams.get(family);
    if (!f)
      this.fams.set(
        family,
        (f = { todo: new Map(), written: new Map(), extra: [], index: new SharedIndex(), lb: new Map() }),
      );
    return f;
  }

  /**
   * A change joined mid-way, in each family's terms: a diff of what the table holds, for the next piece (a
   * service not yet written is written there, as it now is, and leaves the todo list).
   */
  private fold(d: ServiceChange): void {
    const name = (d.new ?? d.old)!.name;
    if (d.new) this.fam(familyOf(d.new.vip));
    for (const [family, f] of this.fams) {
      const want = d.new && familyOf(d.new.vip) === family ? d.new : undefined;
      const was = f.written.get(name);
      f.todo.delete(name);
      if (was || want) f.extra.push({ ...(was ? { old: was } : {}), ...(want ? { new: want } : {}) });
      if (want) f.written.set(name, want);
      else f.written.delete(name);
    }
  }

  /**
   * One transaction for `family`: its skeleton first if it has none, then the diffs joined, then (`take`) the
   * next services. Planned, encoded and handed to the socket now (which sends batches in order); the promise
   * settles when the kernel has applied it. What was written is recorded as it is handed over: a failure ends
   * the rebuild (it starts over from nothing, or fails), so no record outlives a piece that did not land.
   */
  private piece(family: Family, f: FamilyProgress, take: boolean, global: boolean): Promise<void> {
    const sent: Promise<void>[] = [];
    if (!f.record) {
      const skeleton = fullPlan(render({ services: [], rules: this.st.rules, forwards: this.st.forwards }, family));
      sent.push(this.apply(skeleton, family));
      this.written += skeleton.written;
      f.record = globalRecord(this.st, family, {});
    }
    const changes = f.extra.splice(0);
    const size = this.chunks.calm?.() ? IDLE_CHUNK_SERVICES : CHUNK_SERVICES;
    if (take)
      for (const s of f.todo.values()) {
        if (changes.length >= size) break;
        f.todo.delete(s.name);
        f.written.set(s.name, s);
        changes.push({ new: s });
      }
    // The record as the plan needs it: the lb chains these changes use (the table has ten thousand).
    const lb = new Set(
      changes.flatMap((ch) => [ch.old, ch.new].map((s) => s && lbOf(s)).filter((x) => x !== undefined)),
    );
    const view = {
      ...f.record,
      lb: Object.fromEntries([...lb].filter((n) => f.lb.has(n)).map((n) => [n, f.lb.get(n)!])),
    };
    const plan = changePlan(this.st, family, changes, view, f.index.others(changes), global);
    if (!plan) throw new Error(`rebuilding ${family === 6 ? 'ip6' : 'ip'} table: no plan for a record of this layout`);
    sent.push(this.apply(plan, family));
    this.written += plan.written;
    this.deleted += plan.deleted;
    f.index.update(changes);
    const after = lbRecordAfter(view.lb, changes);
    for (const name of lb) {
      const n = after[name];
      if (n) f.lb.set(name, n);
      else f.lb.delete(name);
    }
    // The chains that belong to no service are as the state says now (the plan rewrote any that differed).
    if (global) f.record = globalRecord(this.st, family, {});
    return Promise.all(sent).then(() => undefined);
  }
}
