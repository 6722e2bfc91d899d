/**
 * Prometheus text exposition (format 0.0.4) for the agent's counters and
 * histograms: the few types it needs, rendered by hand rather than pulling a
 * client library into a plugin's dependency tree.
 */
export type Labels = Record<string, string>;

const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
const labelText = (l: Labels) => {
  const keys = Object.keys(l).sort();
  return keys.length ? `{${keys.map((k) => `${k}="${escape(l[k]!)}"`).join(',')}}` : '';
};
const withLabel = (l: Labels, k: string, v: string) => labelText({ ...l, [k]: v });
const num = (n: number) => (Number.isInteger(n) ? String(n) : String(Number(n.toPrecision(12))));

interface Metric {
  render(): string[];
}

export class Counter implements Metric {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    const v = this.values.get(key) ?? { labels, value: 0 };
    v.value += by;
    this.values.set(key, v);
  }

  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (!this.values.size) out.push(`${this.name} 0`);
    for (const v of this.values.values()) out.push(`${this.name}${labelText(v.labels)} ${num(v.value)}`);
    return out;
  }
}

export class Gauge implements Metric {
  private value = 0;
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}
  set(v: number): void {
    this.value = v;
  }
  add(by: number): void {
    this.value += by;
  }
  render(): string[] {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`, `${this.name} ${num(this.value)}`];
  }
}

/** Exponential buckets as prometheus.ExponentialBuckets (kube-proxy's sync histograms use 0.001 × 2^n). */
export function exponentialBuckets(start: number, factor: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => start * factor ** i);
}

export class Histogram implements Metric {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {}

  observe(seconds: number, labels: Labels = {}): void {
    const key = labelText(labels);
    const s = this.series.get(key) ?? { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
    this.buckets.forEach((b, i) => {
      if (seconds <= b) s.counts[i]!++;
    });
    s.sum += seconds;
    s.count++;
    this.series.set(key, s);
  }

  count(labels: Labels = {}): number {
    return this.series.get(labelText(labels))?.count ?? 0;
  }

  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    const all = this.series.size ? [...this.series.values()] : [{ labels: {}, counts: this.buckets.map(() => 0), sum: 0, count: 0 }];
    for (const s of all) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${withLabel(s.labels, 'le', num(b))} ${s.counts[i]}`));
      out.push(`${this.name}_bucket${withLabel(s.labels, 'le', '+Inf')} ${s.count}`);
      out.push(`${this.name}_sum${labelText(s.labels)} ${num(s.sum)}`);
      out.push(`${this.name}_count${labelText(s.labels)} ${s.count}`);
    }
    return out;
  }
}

export class Registry {
  private readonly metrics: Metric[] = [];
  add<M extends Metric>(m: M): M {
    this.metrics.push(m);
    return m;
  }
  render(): string {
    return `${this.metrics.flatMap((m) => m.render()).join('\n')}\n`;
  }
}

/** The agent's metrics, named in kube-proxy's style. */
export function agentMetrics() {
  const r = new Registry();
  const syncBuckets = exponentialBuckets(0.001, 2, 15);
  return {
    registry: r,
    cniRequests: r.add(new Counter('tsnet_cni_requests_total', 'CNI calls served by the agent, by plugin, command and result (ok or the CNI error code).')),
    cniDuration: r.add(
      new Histogram('tsnet_cni_request_duration_seconds', 'Time the agent took to serve a CNI call, by command.', exponentialBuckets(0.001, 2, 14)),
    ),
    inflight: r.add(new Gauge('tsnet_cni_requests_in_flight', 'CNI calls being served right now.')),
    natRequests: r.add(new Counter('tsnet_nat_requests_total', 'NAT changes served for the CLI (tsnet service/nat ...), by result (ok or error).')),
    rejected: r.add(
      new Counter('tsnet_agent_rejected_connections_total', 'Connections refused before serving: peer not root, or in another network namespace.'),
    ),
    syncDuration: r.add(new Histogram('tsnet_sync_proxy_rules_duration_seconds', 'NAT rule sync latency (any sync: CNI changes and resyncs).', syncBuckets)),
    syncFull: r.add(new Histogram('tsnet_sync_full_proxy_rules_duration_seconds', 'Latency of NAT syncs that rewrote every rule.', syncBuckets)),
    syncPartial: r.add(new Histogram('tsnet_sync_partial_proxy_rules_duration_seconds', 'Latency of NAT syncs that rewrote only what changed.', syncBuckets)),
    syncLast: r.add(new Gauge('tsnet_sync_proxy_rules_last_timestamp_seconds', 'When the last NAT sync finished (unix time).')),
    resyncAfterFlush: r.add(
      new Counter(
        'tsnet_sync_proxy_rules_resync_after_flush_total',
        'Full re-applies by the resync loop because the canary was gone (rules flushed by someone else).',
      ),
    ),
    resyncErrors: r.add(new Counter('tsnet_sync_proxy_rules_resync_failures_total', 'Resync loop passes that failed for a state directory.')),
  };
}

export type AgentMetrics = ReturnType<typeof agentMetrics>;
