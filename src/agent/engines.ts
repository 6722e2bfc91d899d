/**
 * The NAT engines the agent works with, and what their syncs show (its log
 * and the sync metrics). One engine per namespace and state directory stays
 * in memory (NatEngine.shared), so CNI calls, the CLI's changes and resyncs
 * apply diffs to what it already holds.
 */
import type { SyncEvent } from '../nat/engine';
import { EnginePool } from '../nat/pool';
import type { AgentMetrics } from './metrics';

/** The agent's NAT engines: resident, every sync observed. */
export type AgentEngines = EnginePool;

export function residentEngines(
  observe: (e: SyncEvent) => void,
  log: (line: string) => void,
  busy: () => boolean,
  calm: () => boolean,
): AgentEngines {
  return new EnginePool({
    resident: true,
    busy,
    calm,
    onSync: observe,
    // A change answered from a rebuild in pieces is recorded; the rebuild failing later leaves the dirty mark, and the resync loop's next pass a full sync.
    onLateError: (err, dir) =>
      log(`nat: rebuild in pieces of ${dir} failed after changes were answered: ${err.message}`),
  });
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
