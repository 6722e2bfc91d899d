/**
 * Cluster services across 3 nodes (issue 26), part of `npm run bench:cluster`:
 *
 *   join     10,000 services x 5 endpoints in etcd; one agent starts on a
 *            node that has none: from its start to a connection through
 *            the first and the last service's VIP being answered in a pod
 *            of that node (probers connect every 5 ms)
 *   change   with those 10,000 present on all 3 nodes, 200 endpoint
 *            changes (ServiceStore.setEndpoints, what `tsnet --etcd service
 *            set-endpoints` runs): from its return to the new endpoint
 *            answering a prober's next connection on every node; p50, p99.
 *            Beside it, the store's own floor: a put to its watch event on
 *            3 watchers (what any etcd-fed proxy pays before its work)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { ClusterStore } from '../src/cluster/store';
import { ServiceStore } from '../src/cluster/services';
import { parseEndpoint, type Service } from '../src/nat/model';
import { serve } from '../src/demo/traffic';
import type { NetNs } from '../src/netns';
import { ClusterAgent, EtcdCluster, addPod, nodeSubnet, underlay } from '../test/harness/cluster';
import { Topology } from '../test/harness/fixtures';
import { eventually } from '../test/harness/eventually';
import { pct, sleep } from './stats';

/** A wall clock in ms with sub-ms precision, the same in every process. */
const now = () => performance.timeOrigin + performance.now();

/**
 * A prober in `ns`: connects to vip:port every `everyMs` and prints "<time> <name>" whenever the name that answers
 * (the demo server's reply) changes; "<time> -" while nothing answers.
 */
class Prober {
  readonly events: { at: number; name: string }[] = [];
  private readonly child: ChildProcess;

  constructor(ns: NetNs, vip: string, port: number, everyMs = 2) {
    const script = `
      const net = require('net'); let last = '';
      const now = () => performance.timeOrigin + performance.now();
      const report = (name) => { if (name !== last) { last = name; console.log(now() + ' ' + name); } };
      const once = () => { const c = net.connect(${port}, '${vip}'); let got = ''; c.setTimeout(20, () => c.destroy());
        c.on('data', (d) => (got += d)); c.on('error', () => {}); c.on('close', () => { report(got.trim().split(/\\s+/)[0] || '-'); setTimeout(once, ${everyMs}); });
        c.on('connect', () => c.end('x\\n')); };
      once();`;
    this.child = ns.spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    let buf = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const [at, name] = buf.slice(0, nl).split(' ');
        buf = buf.slice(nl + 1);
        this.events.push({ at: Number(at), name: name! });
      }
    });
  }

  /** When `name` first answered after `since` (undefined: not yet). */
  seen(name: string, since: number): number | undefined {
    return this.events.find((e) => e.at >= since && e.name === name)?.at;
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}

const bigSet = (pods: string[]): Service[] =>
  Array.from({ length: 10_000 }, (_, i) => ({
    name: `bench/s${i}`,
    vip: `10.97.${i >> 8}.${i & 255}`,
    port: 80,
    proto: 'tcp' as const,
    endpoints: (i === 0 || i === 9_999
      ? pods
      : Array.from({ length: 5 }, (_, k) => `10.250.${k}.${(i % 250) + 1}:8080`)
    ).map(parseEndpoint),
  }));

/** Polls `ok` every 5 ms (what is timed comes from the probers' own clocks, not from this). */
const until = (ok: () => boolean, ms: number, what: string) => eventually(ok, { ms, what, every: 5 });

export async function servicesBench(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-svc-'));
  const topo = new Topology('bsv');
  const etcd = new EtcdCluster(path.join(tmp, 'etcd'), 24750);
  const agents: ClusterAgent[] = [];
  const probers: Prober[] = [];
  const servers: { stop(): Promise<void> }[] = [];
  const prefix = '/bench/svc';
  try {
    await etcd.start();
    etcd.init(prefix, '--network', '10.93.0.0/16', '--backend', 'host-gw');
    const { nodes } = await underlay(topo, 3, 93, 's');
    const start = (i: number) =>
      new ClusterAgent(nodes[i]!, etcd.urls, path.join(tmp, nodes[i]!.name), ['--prefix', prefix]);
    agents.push(...[0, 1, 2].map(start));
    await Promise.all(nodes.map((n) => nodeSubnet(n, 'tsnet0', 30_000)));
    const pods: { ns: NetNs; ip: string }[] = [];
    for (const [i, n] of nodes.entries()) pods.push(await addPod(topo, n, `bsv-p${i + 1}`, 10));
    for (const [i, p] of pods.entries()) servers.push(await serve(p.ns, 'tcp', p.ip, 8080, `pod${i + 1}`));
    const store = await ClusterStore.open(etcd.urls.split(','), prefix);
    const services = new ServiceStore(store);
    // Node 3's agent stops (SIGTERM keeps its lease); the set goes in; node 3's agent joins it.
    await agents[2]!.stop();
    const running = [0, 1].map((i) => new Prober(pods[i]!.ns, '10.97.39.15', 80));
    probers.push(...running);
    let t0 = now();
    await services.apply(bigSet(pods.map((p) => `${p.ip}:8080`)));
    const written = now() - t0;
    await until(() => running.every((p) => p.events.some((e) => e.name.startsWith('pod'))), 60_000, 'nodes 1 and 2');
    const onRunning = Math.max(...running.map((p) => p.events.find((e) => e.name.startsWith('pod'))!.at)) - t0;
    console.log(
      `services: 10,000 x 5 by service apply: in etcd after ${written.toFixed(0)} ms; the last one live on the 2 running nodes after ${onRunning.toFixed(0)} ms (watch events coalesced into rounds)`,
    );
    for (const p of running) p.stop();
    // Every 5 ms: two probers at 2 ms take a share of this machine's two cores from the agent they watch.
    const firstLast = ['10.97.0.0', '10.97.39.15'].map((vip) => new Prober(pods[2]!.ns, vip, 80, 5));
    probers.push(...firstLast);
    await sleep(3000); // nodes 1 and 2 settle (their syncs done)
    t0 = now();
    agents[2] = start(2);
    await until(
      () => firstLast.every((p) => p.events.some((e) => e.at > t0 && e.name.startsWith('pod'))),
      60_000,
      'join',
    );
    const live =
      Math.max(...firstLast.map((p) => p.events.find((e) => e.at > t0 && e.name.startsWith('pod'))!.at)) - t0;
    console.log(
      `services: an agent joining with 10,000 x 5 in etcd: ${live.toFixed(0)} ms from its start to the first and last VIP answering on its node (goal <= 1.5 s)`,
    );
    for (const p of firstLast) p.stop();
    if (process.env.BENCH_VERBOSE) console.log(`  start ${new Date(t0).toISOString()}\n${agents[2]!.log}`);

    // 200 changes of bench/s0 between pod1 and pod2, watched on every node.
    const watch = nodes.map((_, i) => new Prober(pods[i]!.ns, '10.97.0.0', 80));
    probers.push(...watch);
    // From one endpoint (pod3) on every node, then alternating: each change is the only way to see its endpoint.
    let before = now();
    await services.setEndpoints('bench/s0', [parseEndpoint(`${pods[2]!.ip}:8080`)]);
    await until(() => watch.every((w) => w.seen('pod3', before) !== undefined), 10_000, 'pod3 everywhere');
    await sleep(500);
    const lat: number[] = [];
    for (let k = 0; k < 200; k++) {
      const to = `pod${(k % 2) + 1}`;
      before = now();
      await services.setEndpoints('bench/s0', [parseEndpoint(`${pods[k % 2]!.ip}:8080`)]);
      const back = now();
      await until(() => watch.every((w) => w.seen(to, before) !== undefined), 5000, `change ${k}`);
      lat.push(Math.max(...watch.map((w) => w.seen(to, before)!)) - back);
      await sleep(20);
    }
    console.log(
      `services: one endpoint change live on all 3 nodes, 10,000 services present, 200 changes: p50 ${pct(lat, 50).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms, max ${Math.max(...lat).toFixed(1)} ms (goal p99 <= 50 ms)`,
    );
    await storeFloor(etcd, prefix);
    store.close();
  } finally {
    for (const p of probers) p.stop();
    await Promise.all(servers.map((x) => x.stop()));
    await Promise.all(agents.map((a) => a.stop('SIGKILL')));
    await etcd.stopAll();
    topo.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** etcd alone: a put to its event on 3 watchers, 200 times (the floor any watcher of etcd pays). */
async function storeFloor(etcd: EtcdCluster, prefix: string): Promise<void> {
  const stores = await Promise.all([0, 1, 2].map(() => ClusterStore.open(etcd.urls.split(','), prefix)));
  const key = `${prefix}/floor`;
  const seen = stores.map(() => new Map<string, number>());
  const watchers = await Promise.all(
    stores.map(async (s, i) => {
      const w = await s.client.watch().key(key).create();
      w.on('put', (kv) => seen[i]!.set(kv.value.toString(), now()));
      return w;
    }),
  );
  const writer = stores[0]!;
  const lat: number[] = [];
  for (let k = 0; k < 200; k++) {
    const v = String(k);
    await writer.client.put(key).value(v).exec();
    const back = now();
    await until(() => seen.every((m) => m.has(v)), 5000, 'floor');
    lat.push(Math.max(...seen.map((m) => m.get(v)!)) - back);
  }
  console.log(
    `services: the store's floor, a put returning -> its event on 3 watchers: p50 ${pct(lat, 50).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms`,
  );
  await Promise.all(watchers.map((w) => w.cancel()));
  for (const s of stores) s.close();
}
