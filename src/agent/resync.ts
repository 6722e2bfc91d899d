/**
 * The NAT resync loop (kube-proxy's canary monitor): every interval, each
 * NAT state directory the agent has served is checked, and rules someone
 * flushed (`iptables -t nat -F`, `nft flush ruleset`) are re-applied from
 * the stored desired state. Every fullSyncIntervalMs (an hour) the pass is a
 * forced full sync instead (kube-proxy's periodic full sync), which also
 * repairs a single chain edited by hand under an intact canary: partial
 * syncs only write what tsnet itself changed. A table in place is replaced
 * in one transaction, which holds the namespace's nf_tables commit mutex
 * (and every veth being created there) for up to a few hundred ms at
 * 10,000 services: the forced sync waits for a calm moment (no CNI call
 * for a while), FULL_DEFER_MS at most.
 *
 * The directories served are recorded in STATE/agent/nat-dirs.json, so a
 * restarted agent watches them too.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readJson, writeJsonAtomic } from '../state';
import type { NatEngine } from '../nat/engine';
import type { AgentEngines } from './engines';
import type { AgentMetrics } from './metrics';

export interface ResyncOptions {
  /** The agent's state directory: watched, and where nat-dirs.json is kept. */
  stateDir: string;
  intervalMs: number;
  fullSyncIntervalMs: number;
  engines: AgentEngines;
  metrics: AgentMetrics;
  log: (line: string) => void;
  /** Runs first in every pass (the NAT service lets go of deleted namespaces). */
  beforePass: () => void;
  /** Whether no CNI call came for a while (the agent's); without it, every pass is calm. */
  calm?: () => boolean;
}

/** How long a forced full sync that is due waits for a calm moment, at most (its interval, if shorter). */
export const FULL_DEFER_MS = 5 * 60_000;

/** Whether `dir` holds NAT state (a snapshot or a journal). */
const hasNatState = (dir: string): boolean =>
  fs.existsSync(path.join(dir, 'nat.json')) || fs.existsSync(path.join(dir, 'nat.journal'));

export class ResyncLoop {
  /** NAT state directories this agent has served. */
  private readonly dirs = new Set<string>();
  /** Engines of other namespaces the agent keeps converged too (a cluster node's: the agent acts on it with -n). */
  private readonly others = new Set<NatEngine>();
  private timer?: NodeJS.Timeout;
  private pending?: Promise<void>;
  private stopped = false;
  private passes = 0;
  /** When the forced full sync fell due (it waits for a calm moment). */
  private fullDue?: number;

  constructor(private readonly o: ResyncOptions) {}

  private get recordFile(): string {
    return path.join(this.o.stateDir, 'agent', 'nat-dirs.json');
  }

  /** Reads the directories an earlier agent served: before any call is served, so the record keeps them. */
  load(): void {
    for (const d of readJson<string[]>(this.recordFile) ?? []) this.dirs.add(d);
    this.dirs.add(this.o.stateDir);
  }

  /** Runs a pass every interval until stop(). */
  start(): void {
    this.schedule();
  }

  /** Adds a NAT state directory to the list (saved, so a restarted agent watches it too). */
  remember(dir: string): void {
    if (this.dirs.has(dir)) return;
    this.dirs.add(dir);
    try {
      writeJsonAtomic(this.recordFile, [...this.dirs]);
    } catch (err) {
      this.o.log(`agent: cannot save ${this.recordFile}: ${(err as Error).message}`);
    }
  }

  /** An engine of another namespace, checked in every pass from now on (its directory is not one of this namespace's). */
  watch(engine: NatEngine): void {
    this.others.add(engine);
  }

  /** The directories served that hold NAT state (yet). */
  natStates(): string[] {
    return [...this.dirs].filter(hasNatState);
  }

  /** One pass: a canary check of each state (a full sync every fullSyncIntervalMs); a failure costs that state's pass only. */
  async pass(): Promise<void> {
    this.o.beforePass();
    const every = Math.max(1, Math.round(this.o.fullSyncIntervalMs / this.o.intervalMs));
    if (++this.passes % every === 0) this.fullDue ??= Date.now();
    const full =
      this.fullDue !== undefined &&
      ((this.o.calm?.() ?? true) || Date.now() - this.fullDue >= Math.min(FULL_DEFER_MS, this.o.fullSyncIntervalMs));
    if (full) this.fullDue = undefined;
    const engines = [
      ...this.natStates().map((dir) => this.o.engines.get({ stateDir: dir })),
      ...[...this.others].filter((e) => !e.ns.closed && hasNatState(e.dir)),
    ];
    for (const engine of engines) {
      try {
        await (full ? engine.sync({ force: true }) : engine.converge());
      } catch (err) {
        this.o.metrics.resyncErrors.inc();
        this.o.log(`nat: resync of ${engine.dir} failed: ${(err as Error).message}`);
      }
    }
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.pending = this.pass().finally(() => {
        this.pending = undefined;
        if (!this.stopped) this.schedule();
      });
    }, this.o.intervalMs);
    this.timer.unref();
  }

  /** No pass starts from now on; resolves when the one under way (if any) is done. */
  stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    return this.pending ?? Promise.resolve();
  }
}
