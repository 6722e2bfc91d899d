/**
 * Every agent programs every cluster service (./services.ts) into its node's
 * NAT engine, as kube-proxy programs the API server's Services: list at
 * revision R and apply the difference (nothing flushed), then watch from R+1
 * and apply each change as one O(change) round. A compacted watch lists
 * again. While etcd is away nothing changes. The services it programs are
 * marked `origin: "cluster"` in the node's NAT state: a service deleted in
 * etcd while the agent was down is removed at the next list, a local
 * command may not change one (nor the agent a local one: src/nat/changes.ts).
 *
 * As kube-proxy does, traffic to a cluster service is masqueraded from
 * outside the cluster's Network (unless the service says otherwise); hairpin
 * is the engine's own.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NatEngine } from '../nat/engine';
import type { NatChange } from '../nat/changes';
import { sameService, vipKey, type Service } from '../nat/model';
import { crossesOrigin, isCluster } from '../nat/origin';
import { readJson } from '../state';
import { RETRY_MS } from './claim';
import { asProgrammed, type ServiceStore } from './services';

/** How often a node that could not program every cluster service tries again. */
const LAG_RETRY_MS = 10_000;

export interface ServiceSyncOptions {
  services: ServiceStore;
  engine: NatEngine;
  stateDir: string;
  /** A list already under way (the agent starts it as it dials etcd): the first pass uses it. */
  first?: ReturnType<ServiceStore['list']>;
  /** The cluster's Network, once its config is known: clients outside it are masqueraded. Listing does not wait for it. */
  network: Promise<string>;
  log: (line: string) => void;
}

export class ServiceSync {
  /** Where the release before the origin marker kept the names it programmed (read once, then removed). */
  private readonly legacyFile: string;
  private watcher?: { cancel(): Promise<void> };
  private stopped = false;
  /** The cluster's Network (set before the first diff). */
  private network = '';
  private queue: Promise<unknown> = Promise.resolve();
  /** A service the node refused or failed to program: the whole set is listed and diffed again every 10 s until none is. */
  private lagging = false;
  /** Watch events not applied yet, by service name. */
  private pending = new Map<string, NatChange>();
  private retry?: NodeJS.Timeout;

  private first: ServiceSyncOptions['first'];

  constructor(private readonly o: ServiceSyncOptions) {
    this.first = o.first;
    this.legacyFile = path.join(o.stateDir, 'cluster', 'services.json');
  }

  async start(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      try {
        const t0 = performance.now();
        const listing = this.first ?? this.o.services.list();
        this.first = undefined;
        const [{ revision, services }, network] = await Promise.all([listing, this.o.network]);
        this.network = network;
        await this.serialized(() => this.diff(services, performance.now() - t0));
        await this.watch(revision);
        if (this.stopped) return void (await this.watcher?.cancel().catch(() => undefined));
        this.retry ??= setInterval(() => void this.relist(), LAG_RETRY_MS).unref();
        return;
      } catch (err) {
        this.o.log(`cluster services: ${(err as Error).message}; retrying once the node reads its config`);
        // The node's own join reads etcd every second meanwhile: one more caller would only add to an etcd coming back.
        await this.o.network;
        await new Promise((r) => setTimeout(r, RETRY_MS).unref());
      }
    }
  }

  /** A list and its diff in the queue: events the watch delivers meanwhile are newer, and applied after it. */
  private async relist(): Promise<void> {
    if (!this.lagging || this.stopped) return;
    await this.serialized(async () => this.diff((await this.o.services.list()).services)).catch((err: Error) =>
      this.o.log(`cluster services: ${err.message}`),
    );
  }

  /** Rounds one at a time, in the order etcd reported them. */
  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The whole set: puts for what differs, deletes for cluster services etcd no longer has. */
  private async diff(services: Service[], listMs?: number): Promise<void> {
    const t0 = performance.now();
    const have = new Map(this.o.engine.read().services.map((s) => [s.name, s]));
    const want = new Map(services.map((s) => [s.name, asProgrammed(s, this.network)]));
    const legacy = readJson<string[]>(this.legacyFile) ?? [];
    const changes: NatChange[] = [
      // Programmed by a release that kept their names aside: taken back as local services, then put as the cluster's.
      ...legacy
        .filter((n) => have.has(n) && !isCluster(have.get(n)!))
        .map((name): NatChange => (have.delete(name), { kind: 'delete-service', name })),
      ...[...have.values()]
        .filter((s) => isCluster(s) && !want.has(s.name))
        .map((s): NatChange => ({ kind: 'delete-service', name: s.name, origin: 'cluster' })),
    ];
    let refused = 0;
    const localVips = new Map([...have.values()].filter((o) => !isCluster(o)).map((o) => [vipKey(o), o]));
    for (const s of want.values()) {
      const h = have.get(s.name);
      if (h && sameService(h, s)) continue;
      // A local service in its way leaves this one out (the log says why; doctor reports the node as lagging).
      const problem = this.problem(s, have, localVips);
      if (problem) {
        refused++;
        this.o.log(`cluster services: ${problem}`);
      } else changes.push({ kind: 'put-service', service: s });
    }
    this.lagging = refused > 0;
    if (changes.length) await this.o.engine.change(changes);
    if (legacy.length) fs.rmSync(this.legacyFile, { force: true });
    this.o.log(
      `cluster services: ${want.size - refused} programmed (${changes.length} changed${refused ? `, ${refused} not programmed` : ''}${listMs !== undefined ? `; listed in ${listMs.toFixed(0)} ms` : ''}, applied in ${(performance.now() - t0).toFixed(0)} ms)`,
    );
  }

  /** Why `s` cannot be programmed over the node's local services (`localVips`: theirs, by VIP key), or undefined. */
  private problem(
    s: Service,
    have: ReadonlyMap<string, Service>,
    localVips: ReadonlyMap<string, Service>,
  ): string | undefined {
    const h = have.get(s.name);
    if (h && !isCluster(h)) return crossesOrigin(h, 'change', s.name).message;
    const o = localVips.get(vipKey(s));
    return o && o.name !== s.name ? crossesOrigin(o, 'vip', s.name).message : undefined;
  }

  private async watch(revision: string): Promise<void> {
    const w = await this.o.services.store.client
      .watch()
      .prefix(this.o.services.servicesPrefix)
      .startRevision(String(BigInt(revision) + 1n))
      .create();
    this.watcher = w;
    w.on('put', (kv) => {
      const s = this.o.services.parse(kv.key.toString(), kv.value.toString());
      if (!s) return this.o.log(`cluster services: skipping ${kv.key.toString()}: not a service`);
      this.enqueue(s.name, { kind: 'put-service', service: asProgrammed(s, this.network) });
    });
    w.on('delete', (kv) => {
      const name = kv.key.toString().slice(this.o.services.servicesPrefix.length);
      this.enqueue(name, { kind: 'delete-service', name, origin: 'cluster' });
    });
    w.on('error', (err: Error) => {
      if (this.stopped || this.watcher !== w) return;
      this.o.log(`cluster services: watch ended (${err.message.split('\n')[0]}): listing again`);
      // Not w.cancel(): already detached by etcd3 (see node.ts).
      this.watcher = undefined;
      void this.start();
    });
  }

  /**
   * A change from the watch, coalesced with those not applied yet (the last for a name wins): one event is one
   * round, and an apply of 10,000 services in etcd a few rounds, not 10,000.
   */
  private enqueue(name: string, c: NatChange): void {
    this.pending.delete(name);
    this.pending.set(name, c);
    if (this.pending.size === 1) void this.serialized(() => this.flush());
  }

  private async flush(): Promise<void> {
    const batch = [...this.pending.values()];
    this.pending = new Map();
    if (!batch.length) return;
    try {
      await this.o.engine.change(batch);
    } catch (err) {
      // A round is all or nothing: one refused change (a local service in the way) is found by applying them one by one.
      if (batch.length > 1) for (const c of batch) await this.applyOne(c);
      else this.refused(batch[0]!, err as Error);
    }
  }

  private async applyOne(c: NatChange): Promise<void> {
    await this.o.engine.change([c]).catch((err: Error) => this.refused(c, err));
  }

  /** Logged, and listed again every 10 s until the node holds the store's set. */
  private refused(c: NatChange, err: Error): void {
    this.lagging = true;
    const name = c.kind === 'put-service' ? c.service.name : 'name' in c ? c.name : c.kind;
    this.o.log(`cluster services: ${name}: ${err.message}`);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearInterval(this.retry);
    await this.watcher?.cancel().catch(() => undefined);
    await this.queue;
  }
}
