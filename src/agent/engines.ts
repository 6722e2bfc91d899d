/**
 * The NAT engines the agent works with, and what their syncs show (its log
 * and the sync metrics). One engine per namespace and state directory stays
 * in memory (NatEngine.shared), so CNI calls, the CLI's changes and resyncs
 * apply diffs to what it already holds.
 */
import { NatEngine, onSync, type EngineOptions, type SyncEvent } from '../nat/engine';
import type { AgentMetrics } from './metrics';

/** The agent's engines (the shape of an engine pool: one engine per namespace, state directory and backend). */
export interface AgentEngines {
  /** The engine kept for these options. */
  get(opts: EngineOptions): NatEngine;
  /** Stops observing syncs. */
  close(): void;
}

/**
 * The one place the agent touches the NAT engine's process-wide hooks
 * (NatEngine.residentProcess, onSync). While they are process-wide, two
 * agents in one process each see every sync of the process; when engines
 * are made resident and report their syncs per pool, this body is the pool.
 */
export function residentEngines(observe: (e: SyncEvent) => void): AgentEngines {
  // This process lives on: the NAT state it loads is worth parsing and indexing once.
  NatEngine.residentProcess = true;
  return { get: (opts) => NatEngine.shared(opts), close: onSync(observe) };
}

/** A sync as the agent reports it: kube-proxy's sync histograms, and a log line. */
export function syncObserver(metrics: AgentMetrics, log: (line: string) => void): (e: SyncEvent) => void {
  return (e) => {
    const secs = e.ms / 1000;
    metrics.syncDuration.observe(secs);
    (e.full ? metrics.syncFull : metrics.syncPartial).observe(secs);
    metrics.syncLast.setToCurrentTime();
    if (e.trigger === 'resync') metrics.resyncAfterFlush.inc();
    log(
      `nat: ${e.trigger}${e.trigger === 'resync' ? ' after flush' : ''} ${e.dir}: ${e.full ? 'full' : 'partial'} ${e.backend}, ${e.written} written, ${e.deleted} deleted in ${e.ms.toFixed(1)} ms`,
    );
  };
}
