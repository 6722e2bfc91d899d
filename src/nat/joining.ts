/**
 * Changes that join a sync under way in pieces (nftables/rebuild) instead of
 * waiting for the engine's lock: an agent rebuilding ten thousand services
 * after a flush still answers a CNI call's masquerade rule within one
 * piece. Each is applied to the state being synced when the rebuild asks
 * (between two pieces; a refused one is answered at once), then recorded
 * (a journal line, as any round) and answered once the piece that carries
 * it is committed.
 */
import { setImmediate as yieldLoop, setTimeout as sleep } from 'node:timers/promises';
import type { Applied, BackendName, ChunkJoin, SyncChunks } from './backends/types';
import type { IndexedState, NatChange, ServiceDelta } from './changes';
import type { SyncReport } from './engine';

/** A change waiting to join. */
export interface Joining {
  changes: readonly NatChange[];
  resolve(r: SyncReport): void;
  reject(err: unknown): void;
}

/**
 * The changes in `queue` (emptied), applied to `next`: undefined when none
 * changes anything. `record` journals what was taken once its piece is
 * committed, and returns the UDP flows it deleted.
 */
export function takeJoining(
  queue: Joining[],
  next: IndexedState,
  backend: string,
  record: (changes: NatChange[], services: ServiceDelta[]) => Promise<number>,
): ChunkJoin | undefined {
  const t0 = process.hrtime.bigint();
  const report = (conntrackDeleted: number): SyncReport => ({
    full: false,
    written: 0,
    deleted: 0,
    backend,
    ms: Number(process.hrtime.bigint() - t0) / 1e6,
    conntrackDeleted,
    joined: true,
  });
  const taken: Joining[] = [];
  const services: ServiceDelta[] = [];
  let global = false;
  for (const j of queue.splice(0)) {
    let r;
    try {
      r = next.apply(j.changes);
    } catch (err) {
      j.reject(err); // refused (bad input): nothing of it was applied
      continue;
    }
    if (!r.global && !r.services.length) {
      j.resolve(report(0));
      continue;
    }
    taken.push(j);
    services.push(...r.services);
    global ||= r.global;
  }
  if (!taken.length) return undefined;
  return {
    services,
    global,
    async settle(err?: Error) {
      // A failed sync: the engine forgets what it holds and reads the record again, where these never were.
      if (err) return void taken.forEach((j) => j.reject(err));
      try {
        const deleted = await record(
          taken.flatMap((j) => [...j.changes]),
          services,
        );
        for (const j of taken) j.resolve(report(deleted));
      } catch (e) {
        for (const j of taken) j.reject(e);
      }
    },
  };
}

/**
 * How long a rebuild in pieces holds its services back for the caller's calls, at most: calls that keep
 * coming (a node taking a hundred pods at once) slow it down, never stop it.
 */
export const HOLD_MS = 50;

/** The record saved while a sync in pieces is under way: what is live is not yet what it says. */
export const unclean = (backend: BackendName): Applied => ({ backend, clean: false, families: {} }) as Applied;

/**
 * How a resident engine's sync in pieces takes in the changes `queue`
 * holds, and answers its own caller once its first piece is live: the
 * round is journaled then (`save`, with a record that says nothing is
 * clean yet; the dirty mark stays too). Whole rounds and new states are
 * answered when the sync ends.
 */
export function syncPieces(o: {
  queue: () => Joining[] | undefined;
  next: IndexedState;
  backend: BackendName;
  t0: bigint;
  changes?: readonly NatChange[];
  answer?: (r: SyncReport) => void;
  save: (changes: readonly NatChange[]) => void;
  /** Deletes the conntrack flows of UDP endpoints the services lost; how many. */
  flows: (services: ServiceDelta[]) => Promise<number>;
  /** Whether the process is busy with work that should go before the next piece (the agent's CNI calls). */
  busy?: () => boolean;
  /** Whether no such work came for a while (bigger pieces). */
  calm?: () => boolean;
}): { chunks: SyncChunks; answered: () => boolean } {
  let answered = false;
  /** When services last went (or the sync started). */
  let servicesWent = Date.now();
  const chunks: SyncChunks = {
    interleave: () => {
      const queue = o.queue();
      return (
        queue &&
        takeJoining(queue, o.next, o.backend, async (changes, services) => {
          const deleted = await o.flows(services);
          o.save(changes);
          return deleted;
        })
      );
    },
    pause: async () => {
      await yieldLoop();
      // While a call is served, services wait: a piece's JavaScript would cost each of its steps a few ms, and
      // the kernel holds a namespace's nf_tables commit mutex while it applies a piece, which a veth being
      // created there waits for (nf_tables watches every device registered). The call's own rule goes
      // alone, in a piece of a few objects. The services go when no call is under way, or after HOLD_MS.
      while (o.busy?.() && Date.now() - servicesWent < HOLD_MS) {
        if (o.queue()?.length) return false;
        await sleep(1);
      }
      servicesWent = Date.now();
      return true;
    },
    ...(o.calm ? { calm: o.calm } : {}),
    ...(o.busy ? { busy: o.busy } : {}),
    committed: async () => {
      if (!o.answer || !o.changes) return;
      o.save(o.changes);
      answered = true;
      const ms = Number(process.hrtime.bigint() - o.t0) / 1e6;
      o.answer({ full: true, written: 0, deleted: 0, backend: o.backend, ms, conntrackDeleted: 0, joined: true });
    },
  };
  return { chunks, answered: () => answered };
}
