/**
 * The agent's metrics, through prom-client: Node's default process metrics
 * (CPU, RSS, heap, event-loop lag, GC, handles) and tsnet's own, named as
 * kube-proxy names the same things (`sync_proxy_rules_duration_seconds`,
 * ...) under `tsnet_`. One registry per agent: two agents in one process
 * never count into each other's. prom-client loads when the first agent
 * makes its metrics, not when this module loads: the CLI's help and
 * completion, and the package's root, import the agent without running one.
 */
import type * as prom from 'prom-client';

export function agentMetrics() {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily on purpose (see above)
  const p = require('prom-client') as typeof prom;
  const { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, exponentialBuckets } = p;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  // kube-proxy's sync histograms: metrics.ExponentialBuckets(0.001, 2, 15).
  const syncBuckets = exponentialBuckets(0.001, 2, 15);
  const histogram = (name: string, help: string) => new Histogram({ name, help, buckets: syncBuckets, registers });
  const cluster = clusterMetrics(p, registers);
  return {
    registry,
    cluster,
    cniRequests: new Counter({
      name: 'tsnet_cni_requests_total',
      help: 'CNI calls served by the agent, by plugin, command and result (ok or the CNI error code).',
      labelNames: ['plugin', 'command', 'result'] as const,
      registers,
    }),
    cniDuration: new Histogram({
      name: 'tsnet_cni_request_duration_seconds',
      help: 'Time the agent took to serve a CNI call, by command.',
      labelNames: ['command'] as const,
      buckets: exponentialBuckets(0.001, 2, 14),
      registers,
    }),
    inflight: new Gauge({ name: 'tsnet_cni_requests_in_flight', help: 'CNI calls being served right now.', registers }),
    natRequests: new Counter({
      name: 'tsnet_nat_requests_total',
      help: 'NAT changes served for the CLI (tsnet service/nat ...), by result (ok or error).',
      labelNames: ['result'] as const,
      registers,
    }),
    rejected: new Counter({
      name: 'tsnet_agent_rejected_connections_total',
      help: 'Connections refused before serving: peer not root, or in another network namespace.',
      labelNames: ['reason'] as const,
      registers,
    }),
    syncDuration: histogram(
      'tsnet_sync_proxy_rules_duration_seconds',
      'NAT rule sync latency (any sync: CNI changes and resyncs).',
    ),
    syncFull: histogram(
      'tsnet_sync_full_proxy_rules_duration_seconds',
      'Latency of NAT syncs that rewrote every rule.',
    ),
    syncPartial: histogram(
      'tsnet_sync_partial_proxy_rules_duration_seconds',
      'Latency of NAT syncs that rewrote only what changed.',
    ),
    syncLast: new Gauge({
      name: 'tsnet_sync_proxy_rules_last_timestamp_seconds',
      help: 'When the last NAT sync finished (unix time).',
      registers,
    }),
    resyncAfterFlush: new Counter({
      name: 'tsnet_sync_proxy_rules_resync_after_flush_total',
      help: 'Full re-applies by the resync loop because the canary was gone (rules flushed by someone else).',
      registers,
    }),
    resyncErrors: new Counter({
      name: 'tsnet_sync_proxy_rules_resync_failures_total',
      help: 'Resync loop passes that failed for a state directory.',
      registers,
    }),
  };
}

export type AgentMetrics = ReturnType<typeof agentMetrics>;

/** What a cluster node counts, for its metrics. */
export interface ClusterCounts {
  peers: number;
  reconciles: number;
  writes: number;
  skippedLeases: number;
}

/** Cluster mode's metrics, read from the node at each scrape through `source` (set once the node starts). */
function clusterMetrics(p: typeof prom, registers: prom.Registry[]): { source?: () => ClusterCounts } {
  const { Counter, Gauge } = p;
  const cluster: { source?: () => ClusterCounts } = {};
  /** A counter whose value the cluster node keeps (set at each scrape from its count). */
  const clusterCounter = (name: string, help: string, key: keyof ClusterCounts) =>
    new Counter({
      name,
      help,
      registers,
      collect() {
        const v = cluster.source?.()[key];
        if (v === undefined) return;
        this.reset();
        this.inc(v);
      },
    });
  clusterCounter(
    'tsnet_cluster_reconciles_total',
    'Peer table reconciles (each a diff against the kernel).',
    'reconciles',
  );
  clusterCounter(
    'tsnet_cluster_netlink_writes_total',
    'Netlink writes made by reconciles (none in a steady state).',
    'writes',
  );
  clusterCounter(
    'tsnet_cluster_leases_skipped_total',
    'Leases skipped, never programmed: not JSON, outside the network, a vxlan lease without a MAC.',
    'skippedLeases',
  );
  new Gauge({
    name: 'tsnet_cluster_peers',
    help: 'Peers (other nodes with a lease) this node knows.',
    registers,
    collect() {
      const v = cluster.source?.().peers;
      if (v !== undefined) this.set(v);
    },
  });
  return cluster;
}
