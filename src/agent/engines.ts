/**
 * The NAT engines the agent works with, and what their syncs show (its log
 * and the sync metrics). One engine per namespace and state directory stays
 * in memory (NatEngine.shared), so CNI calls, the CLI's changes and resyncs
 * apply diffs to what it already holds.
 */
import { EnginePool, type SyncEvent } from '../nat/engine';
import type { AgentMetrics } from './metrics';

/** The agent's NAT engines: resident, every sync observed. */
export type AgentEngines = EnginePool;

export function residentEngines(observe: (e: SyncEvent) => void): AgentEngines {
  return new EnginePool({ resident: true, onSync: observe });
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
