/**
 * The pod network across machines, measured on this machine in one run
 * (`npm run bench:cluster`, inside the sandbox):
 *
 *   program   1,000 and 10,000 peers written into a fresh node namespace by
 *             tsnet's reconcile (one diff, batched sendmsg) against `ip -batch`
 *             (+ `bridge -batch` for the FDB) of the same entries; host-gw
 *             and vxlan; at 10,000 tsnet uses nexthop objects, and ip -batch
 *             is shown both ways (a gateway per route, and nexthop objects)
 *   join      a real 3-member etcd and 3 real agents: leases written straight
 *             into etcd, one at a time (100: p50/p99 from the write to the
 *             route on every node, seen by a netlink monitor in each node)
 *             and 1,000 at once
 *   outage    every etcd member stopped past the lease TTL, then started:
 *             from quorum to a new lease's route on every node
 *   RSS       an agent's resident memory before and after 1,000 peers
 *   traffic   bulk TCP between pods on two nodes, vxlan against host-gw
 *
 *   services  cluster services: 10,000 x 5 on an agent joining, and one
 *             endpoint change live on 3 nodes (./cluster-services.ts)
 *
 * BENCH_SKIP=program,join,outage,rss,services,traffic leaves parts out.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as netns from '../src/netns';
import * as link from '../src/link';
import * as addr from '../src/addr';
import { NETLINK_ROUTE } from '../src/netlink/socket';
import { RTM, RTNLGRP, RTA, rtmsg } from '../src/netlink/rtnl';
import { decodeAttrs } from '../src/netlink/attrs';
import { buildConfig, parseSubnet, subnetKey, type Peer, type ClusterConfig } from '../src/cluster/config';
import { desiredState } from '../src/cluster/desired';
import { ensureNode, reconcile } from '../src/cluster/kernel';
import { ClusterStore } from '../src/cluster/store';
import { assertSandbox } from '../test/harness/fixtures';
import {
  ClusterAgent,
  EtcdCluster,
  addNode,
  addPod,
  nodeSubnet,
  putLeases,
  syntheticLease,
  underlay,
  type ClusterNodeNs,
} from '../test/harness/cluster';
import { Topology } from '../test/harness/fixtures';
import { servicesBench } from './cluster-services';
import { pct, sleep } from './stats';

const SKIP = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean));
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

function run(cmd: string, args: string[], input?: string): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 4).join(' ')}: ${r.stderr.slice(0, 500)}`);
}

/** Peer i: subnet 10.(i>>8).(i&255).0/24 in 10.0.0.0/8, public IP 172.16.x.y on the /12 underlay. */
const peerOf = (i: number, vxlan: boolean): Peer => ({
  subnet: parseSubnet(`10.${(i >> 8) & 255}.${i & 255}.0/24`),
  publicIp: `172.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255 || 1}`,
  backend: vxlan ? 'vxlan' : 'host-gw',
  ...(vxlan
    ? {
        vtepMac: `02:${[(i >> 16) & 255, (i >> 8) & 255, i & 255, 1, 2].map((x) => x.toString(16).padStart(2, '0')).join(':')}`,
      }
    : {}),
  name: `p${i}`,
  lease: '0',
});

/** A fresh node namespace: eth0 (a veth to nowhere, up) holding the public IP on a /12, devices made by ensureNode. */
async function freshNode(name: string, config: ClusterConfig) {
  netns.del(name);
  const h = netns.add(name);
  await link.add(h, { kind: 'veth', name: 'eth0', peer: { name: 'eth0p' }, up: true });
  await link.setUp(h, 'eth0p');
  await addr.add(h, '172.31.255.254/12', 'eth0');
  const setup = {
    config,
    subnet: parseSubnet('10.255.255.0/24'),
    publicIp: '172.31.255.254',
    bridge: 'tsnet0',
    vtepMac: '02:aa:00:00:00:01',
  };
  const devs = await ensureNode(h, setup);
  return { h, devs, setup };
}

async function program(n: number, vxlan: boolean): Promise<void> {
  const config = buildConfig({ network: '10.0.0.0/8', backend: vxlan ? 'vxlan' : 'host-gw' });
  const peers = Array.from({ length: n }, (_, i) => peerOf(i + 1, vxlan));
  const mode = vxlan ? 'vxlan' : 'host-gw';
  // tsnet
  const a = await freshNode(`bcl-t${n}${mode}`, config);
  const want = desiredState(config, { subnet: a.setup.subnet, publicIp: a.setup.publicIp }, peers);
  let t0 = process.hrtime.bigint();
  const r = await reconcile(a.h, want, a.devs);
  const tsnetMs = ms(t0);
  if (r.errors.length) throw new Error(`tsnet reconcile: ${r.errors.slice(0, 3).join('; ')}`);
  t0 = process.hrtime.bigint();
  const again = await reconcile(a.h, want, a.devs);
  const steadyMs = ms(t0);
  // ip -batch, the same entries (per-peer gateways)
  const b = await freshNode(`bcl-i${n}${mode}`, config);
  const vx = vxlan ? `dev tsnet.1 ` : '';
  const lines: string[] = [];
  const fdb: string[] = [];
  for (const p of peers) {
    const base = p.subnet.base;
    const dst = `${(base >>> 24) & 255}.${(base >>> 16) & 255}.${(base >>> 8) & 255}.0`;
    if (vxlan) {
      lines.push(`neigh replace ${dst} lladdr ${p.vtepMac} dev tsnet.1 nud permanent`);
      fdb.push(`fdb append ${p.vtepMac} dev tsnet.1 dst ${p.publicIp} self permanent`);
      lines.push(`route replace ${dst}/24 via ${dst} ${vx}onlink proto 74`);
    } else lines.push(`route replace ${dst}/24 via ${p.publicIp} proto 74`);
  }
  t0 = process.hrtime.bigint();
  if (vxlan) run('bridge', ['-n', b.h.name!, '-batch', '-'], fdb.join('\n') + '\n');
  run('ip', ['-n', b.h.name!, '-batch', '-'], lines.join('\n') + '\n');
  const ipMs = ms(t0);
  let nhMs: number | undefined;
  if (n > 2000) {
    const c = await freshNode(`bcl-n${n}${mode}`, config);
    const nh: string[] = [];
    const rt: string[] = [];
    for (const [i, p] of peers.entries()) {
      const base = p.subnet.base;
      const dst = `${(base >>> 24) & 255}.${(base >>> 16) & 255}.${(base >>> 8) & 255}.0`;
      if (vxlan) {
        nh.push(`neigh replace ${dst} lladdr ${p.vtepMac} dev tsnet.1 nud permanent`);
        nh.push(`nexthop replace id ${i + 1} via ${dst} dev tsnet.1 onlink`);
      } else nh.push(`nexthop replace id ${i + 1} via ${p.publicIp} dev eth0`);
      rt.push(`route replace ${dst}/24 nhid ${i + 1} proto 74`);
    }
    t0 = process.hrtime.bigint();
    if (vxlan) run('bridge', ['-n', c.h.name!, '-batch', '-'], fdb.join('\n') + '\n');
    run('ip', ['-n', c.h.name!, '-batch', '-'], [...nh, ...rt].join('\n') + '\n');
    nhMs = ms(t0);
    c.h.close();
    netns.del(c.h.name!);
  }
  console.log(
    `program ${String(n).padStart(6)} ${mode.padEnd(8)} tsnet ${tsnetMs.toFixed(0).padStart(5)} ms (${r.writes} writes; again: ${again.writes} writes, ${steadyMs.toFixed(0)} ms)` +
      `  ip -batch ${ipMs.toFixed(0).padStart(5)} ms  ratio ${(tsnetMs / ipMs).toFixed(2)}` +
      (nhMs !== undefined
        ? `  ip -batch with nexthop objects ${nhMs.toFixed(0)} ms (ratio ${(tsnetMs / nhMs).toFixed(2)})`
        : ''),
  );
  for (const x of [a, b]) {
    x.h.close();
    netns.del(x.h.name!);
  }
}

/** Route additions seen in `node` (a monitor socket), by destination, with their time. */
function routeWatcher(node: ClusterNodeNs): { seen: Map<string, bigint>; close(): void } {
  const sock = node.ns.openNetlink(NETLINK_ROUTE);
  const seen = new Map<string, bigint>();
  sock.subscribe(
    [RTNLGRP.IPV4_ROUTE],
    (m) => {
      if (m.type !== RTM.NEWROUTE) return;
      const hdr = rtmsg.decode(m.payload);
      const a = decodeAttrs(RTA, m.payload.subarray(rtmsg.size));
      if (hdr.protocol === 74 && typeof a.dst === 'string')
        seen.set(`${a.dst}/${hdr.dst_len}`, process.hrtime.bigint());
    },
    () => console.log('  (monitor overrun)'),
  );
  return { seen, close: () => sock.close() };
}

/** Synthetic leases on the join bench's underlay (192.168.90.0/24). */
const leaseValue = (i: number) => syntheticLease(i, 90);

async function clusterParts(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-cluster-'));
  const topo = new Topology('bcl');
  const etcd = new EtcdCluster(path.join(tmp, 'etcd'), 24700);
  const agents: ClusterAgent[] = [];
  try {
    await etcd.start();
    const prefix = '/bench/net';
    etcd.init(prefix, '--network', '10.0.0.0/8', '--subnet-len', '24', '--backend', 'host-gw');
    const { ul, nodes } = await underlay(topo, 3, 90, 'j');
    for (const n of nodes) agents.push(new ClusterAgent(n, etcd.urls, path.join(tmp, n.name), ['--prefix', prefix]));
    await Promise.all(nodes.map((n) => nodeSubnet(n, 'tsnet0', 30_000)));
    const store = await ClusterStore.open(etcd.urls.split(','), prefix);
    const watchers = nodes.map(routeWatcher);
    const key = (i: number) =>
      `${store.subnetsPrefix}${subnetKey(parseSubnet(`10.${200 + (i >> 8)}.${i & 255}.0/24`))}`;
    const dst = (i: number) => `10.${200 + (i >> 8)}.${i & 255}.0/24`;
    const everywhere = async (ids: number[], limitMs: number) => {
      const t0 = Date.now();
      while (!ids.every((i) => watchers.every((w) => w.seen.has(dst(i))))) {
        if (Date.now() - t0 > limitMs) throw new Error(`not on every node within ${limitMs} ms`);
        await sleep(2);
      }
    };
    if (!SKIP.has('join')) {
      const lat: number[] = [];
      for (let i = 1; i <= 100; i++) {
        const t0 = process.hrtime.bigint();
        await store.client.put(key(i)).value(leaseValue(i)).exec();
        await everywhere([i], 5000);
        lat.push(Math.max(...watchers.map((w) => Number(w.seen.get(dst(i))! - t0) / 1e6)));
      }
      console.log(
        `join: a lease written -> its route on all 3 nodes, 100 leases one by one: p50 ${pct(lat, 50).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms, max ${Math.max(...lat).toFixed(1)} ms (goal p99 <= 200 ms)`,
      );
      const ids = Array.from({ length: 1000 }, (_, k) => 101 + k);
      const t0 = process.hrtime.bigint();
      await putLeases(
        store,
        ids.map((i) => [key(i), leaseValue(i)]),
      );
      await everywhere(ids, 30_000);
      console.log(
        `join: 1,000 leases written at once (10 transactions) -> every route on all 3 nodes: ${ms(t0).toFixed(0)} ms (goal <= 1 s)`,
      );
    }
    if (!SKIP.has('rss')) {
      const rss = (pid: number) =>
        Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
      const n4 = await addNode(topo, ul, 4);
      const fresh = new ClusterAgent(n4, etcd.urls, path.join(tmp, 'n4'), ['--prefix', `${prefix}-rss`]);
      agents.push(fresh);
      etcd.init(`${prefix}-rss`, '--network', '10.0.0.0/8', '--backend', 'host-gw');
      await nodeSubnet(n4, 'tsnet0', 30_000);
      await sleep(1000);
      const before = rss(fresh.pid);
      await putLeases(
        store,
        Array.from({ length: 1000 }, (_, k) => [
          `${prefix}-rss/subnets/${subnetKey(parseSubnet(`10.${100 + (k >> 8)}.${k & 255}.0/24`))}`,
          leaseValue(k + 1),
        ]),
      );
      const t0 = Date.now();
      while (run4Routes(n4) < 1000 && Date.now() - t0 < 20_000) await sleep(50);
      await sleep(1500);
      const after = rss(fresh.pid);
      console.log(
        `rss: agent ${before.toFixed(1)} MB with no peers, ${after.toFixed(1)} MB with 1,000: +${(after - before).toFixed(1)} MB (goal < 30 MB)`,
      );
      await fresh.stop();
    }
    if (!SKIP.has('outage')) {
      await etcd.stopAll();
      await sleep(4000);
      for (const m of etcd.members) etcd.restart(m);
      await etcd.healthy();
      const t0 = process.hrtime.bigint();
      const i = 1500;
      for (;;) {
        try {
          await store.client.put(key(i)).value(leaseValue(i)).exec();
          break;
        } catch {
          await sleep(20);
        }
      }
      await everywhere([i], 10_000);
      console.log(
        `outage: all members down 4 s; from quorum back to a new lease's route on all 3 nodes: ${ms(t0).toFixed(0)} ms (goal <= 2 s)`,
      );
    }
    for (const w of watchers) w.close();
    store.close();
  } finally {
    await Promise.all(agents.map((a) => a.stop('SIGKILL')));
    await etcd.stopAll();
    topo.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function run4Routes(n: ClusterNodeNs): number {
  const r = spawnSync('ip', ['-n', n.ns.name!, 'route', 'show', 'proto', '74'], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  return r.stdout.split('\n').filter(Boolean).length;
}

/** MB/s of a 256 MB TCP transfer between pods on two nodes of a fresh cluster of `backend`. */
async function throughput(backend: 'host-gw' | 'vxlan', etcd: EtcdCluster, tmp: string, net: number): Promise<number> {
  const topo = new Topology(`bt${backend === 'vxlan' ? 'v' : 'h'}`);
  const agents: ClusterAgent[] = [];
  try {
    const prefix = `/bench/tp-${backend}-${net}`;
    etcd.init(prefix, '--network', `10.${net}.0.0/16`, '--backend', backend);
    const { nodes } = await underlay(topo, 2, net, 't');
    for (const n of nodes)
      agents.push(new ClusterAgent(n, etcd.urls, path.join(tmp, `${backend}-${net}-${n.name}`), ['--prefix', prefix]));
    const t0 = Date.now();
    while (!nodes.every((n) => run4Routes(n) === 1) && Date.now() - t0 < 20_000) await sleep(50);
    const a = await addPod(topo, nodes[0]!, 'tpa', 10);
    const b = await addPod(topo, nodes[1]!, 'tpb', 10);
    const size = 256 << 20;
    const server = b.ns.spawn(
      process.execPath,
      [
        '-e',
        `const buf = Buffer.alloc(1 << 20); require('net').createServer((c) => { let left = ${size}; const pump = () => { while (left > 0) { left -= buf.length; if (!c.write(buf)) return c.once('drain', pump); } c.end(); }; pump(); }).listen(9300, '${b.ip}', () => console.log('ready'))`,
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    await new Promise((r) => server.stdout!.once('data', r));
    const client = a.ns.spawn(
      process.execPath,
      [
        '-e',
        `const t0 = process.hrtime.bigint(); let n = 0; const c = require('net').connect(9300, '${b.ip}'); c.on('data', (d) => (n += d.length)); c.on('end', () => console.log(JSON.stringify({ n, ms: Number(process.hrtime.bigint() - t0) / 1e6 })));`,
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    let out = '';
    client.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise((r) => client.once('close', r));
    server.kill('SIGKILL');
    const { n, ms: took } = JSON.parse(out) as { n: number; ms: number };
    if (n !== size) throw new Error(`${backend}: got ${n} of ${size} bytes`);
    return size / (1 << 20) / (took / 1000);
  } finally {
    await Promise.all(agents.map((x) => x.stop('SIGKILL')));
    topo.cleanup();
  }
}

async function main(): Promise<void> {
  assertSandbox();
  console.log(`cluster bench on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'})`);
  if (!SKIP.has('program')) {
    const sizes = (process.env.BENCH_PEERS ?? '1000,10000').split(',').map(Number);
    const modes = (process.env.BENCH_MODES ?? 'host-gw,vxlan').split(',');
    for (const n of sizes) for (const m of modes) await program(n, m === 'vxlan');
  }
  if (!SKIP.has('join') || !SKIP.has('outage') || !SKIP.has('rss')) await clusterParts();
  if (!SKIP.has('services')) await servicesBench();
  if (!SKIP.has('traffic')) {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-tp-'));
    const etcd = new EtcdCluster(path.join(tmp, 'etcd'), 24800, 1);
    try {
      await etcd.start();
      const rounds = 3;
      const hg: number[] = [];
      const vx: number[] = [];
      for (let r = 0; r < rounds; r++) {
        hg.push(await throughput('host-gw', etcd, tmp, 91 + 2 * r));
        vx.push(await throughput('vxlan', etcd, tmp, 92 + 2 * r));
      }
      const med = (xs: number[]) => pct(xs, 50);
      console.log(
        `traffic: 256 MB pod to pod across nodes, median of ${rounds}: host-gw ${med(hg).toFixed(0)} MB/s, vxlan ${med(vx).toFixed(0)} MB/s: ratio ${(med(vx) / med(hg)).toFixed(2)} (goal >= 0.9)`,
      );
    } finally {
      await etcd.stopAll();
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
