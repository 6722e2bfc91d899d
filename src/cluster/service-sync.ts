/**
 * Every agent programs every cluster service (./services.ts) into its node's
 * NAT engine, as kube-proxy programs the API server's Services: list at
 * revision R and apply the difference (nothing flushed), then watch from R+1
 * and apply each change as one O(change) round. A compacted watch lists
 * again. While etcd is away nothing changes. Which services came from the
 * cluster is kept in `STATE/cluster/services.json`, so a service deleted in
 * etcd while the agent was down is removed at the next list.
 *
 * As kube-proxy does, traffic to a cluster service is masqueraded from
 * outside the cluster's Network (unless the service says otherwise); hairpin
 * is the engine's own.
 */
import * as path from 'node:path';
import type { NatEngine } from '../nat/engine';
import type { NatChange } from '../nat/changes';
import { sameService, type Service } from '../nat/model';
import { readJson, writeJsonAtomic } from '../state';
import { RETRY_MS } from './claim';
import type { ServiceStore } from './services';

export interface ServiceSyncOptions {
  services: ServiceStore;
  engine: NatEngine;
  stateDir: string;
  /** The cluster's Network: clients outside it are masqueraded. */
  network: string;
  log: (line: string) => void;
}

export class ServiceSync {
  private readonly ownedFile: string;
  private watcher?: { cancel(): Promise<void> };
  private stopped = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: ServiceSyncOptions) {
    this.ownedFile = path.join(o.stateDir, 'cluster', 'services.json');
  }

  /** The service as this node programs it. */
  private programmed(s: Service): Service {
    return { ...s, masqueradeNotFrom: s.masqueradeNotFrom ?? this.o.network };
  }

  async start(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      try {
        const { revision, services } = await this.o.services.list();
        await this.serialized(() => this.diff(services));
        await this.watch(revision);
        return;
      } catch (err) {
        this.o.log(`cluster services: ${(err as Error).message}; retrying every second`);
        await new Promise((r) => setTimeout(r, RETRY_MS).unref());
      }
    }
  }

  /** Rounds one at a time, in the order etcd reported them. */
  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The whole set: puts for what differs, deletes for owned services etcd no longer has. */
  private async diff(services: Service[]): Promise<void> {
    const have = new Map(this.o.engine.read().services.map((s) => [s.name, s]));
    const owned = new Set(readJson<string[]>(this.ownedFile) ?? []);
    const want = services.map((s) => this.programmed(s));
    const changes: NatChange[] = [
      ...want
        .filter((s) => !have.has(s.name) || !sameService(have.get(s.name)!, s))
        .map((service): NatChange => ({ kind: 'put-service', service })),
      ...[...owned]
        .filter((n) => !want.some((s) => s.name === n))
        .map((name): NatChange => ({ kind: 'delete-service', name })),
    ];
    if (changes.length) await this.o.engine.change(changes);
    writeJsonAtomic(
      this.ownedFile,
      want.map((s) => s.name),
    );
    this.o.log(`cluster services: ${want.length} programmed (${changes.length} changed)`);
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
      void this.serialized(() => this.apply({ kind: 'put-service', service: this.programmed(s) }, s.name, true));
    });
    w.on('delete', (kv) => {
      const name = kv.key.toString().slice(this.o.services.servicesPrefix.length);
      void this.serialized(() => this.apply({ kind: 'delete-service', name }, name, false));
    });
    w.on('error', (err: Error) => {
      if (this.stopped || this.watcher !== w) return;
      this.o.log(`cluster services: watch ended (${err.message.split('\n')[0]}): listing again`);
      this.watcher = undefined;
      void w.cancel().catch(() => undefined);
      void this.start();
    });
  }

  private async apply(c: NatChange, name: string, own: boolean): Promise<void> {
    try {
      const owned = new Set(readJson<string[]>(this.ownedFile) ?? []);
      // Only what the cluster put here is the cluster's to take away.
      if (!own && !owned.has(name)) return;
      await this.o.engine.change([c]);
      if (own) owned.add(name);
      else owned.delete(name);
      writeJsonAtomic(this.ownedFile, [...owned]);
    } catch (err) {
      this.o.log(`cluster services: ${name}: ${(err as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher?.cancel().catch(() => undefined);
    await this.queue;
  }
}
