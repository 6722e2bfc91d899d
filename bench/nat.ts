/**
 * The NAT engine at kube-proxy scale, per backend, in one run:
 *   full sync     `tsnet service apply` of 10,000 services x 5 endpoints (a CLI process, as an operator runs it)
 *   floor         the identical rendered ruleset through raw iptables-restore / nft -f in a fresh namespace
 *   partial sync  `tsnet service set-endpoints` changing one endpoint of one service in that table
 *   connect       TCP connect+reply latency to a VIP with 10 and with 10,000 services present
 *                 (the measured service is the last one: the worst case of iptables' linear dispatch chain)
 * Run with `npm run bench:nat` (inside the sandbox). BENCH_SERVICES overrides 10,000.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as netns from '../src/netns';
import { attach } from '../src/attach';
import * as bridge from '../src/bridge';
import * as route from '../src/route';
import { NatEngine } from '../src/nat/engine';
import { systemTool } from '../src/nat/exec';
import type { Service } from '../src/nat/model';
import { request, serve } from '../src/demo/traffic';
import { CLI, assertSandbox } from '../test/harness/fixtures';

const N = Number(process.env.BENCH_SERVICES ?? 10_000);
const EPS = 5;
const CONNECTS = 300;

function services(n: number): Service[] {
  const out: Service[] = [];
  for (let i = 0; i < n - 1; i++) {
    out.push({
      name: `bench/svc${i}`, vip: `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, port: 80, proto: 'tcp',
      endpoints: Array.from({ length: EPS }, (_, e) => ({ ip: `10.${200 + e}.${(i >> 8) & 255}.${i & 255}`, port: 8080, weight: 1 })),
    });
  }
  // The one that answers, last in the table.
  out.push({ name: 'bench/real', vip: '10.95.0.1', port: 80, proto: 'tcp', endpoints: [{ ip: '10.99.0.2', port: 8080, weight: 1 }] });
  return out;
}

function sh(cmd: string, args: string[], input?: string): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.slice(0, 500)}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const fmt = (ms: number) => `${ms.toFixed(0).padStart(7)} ms`;

async function connectLatency(node: netns.NetNs): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await request(node, 'tcp', '10.95.0.1', 80, { count: CONNECTS, concurrency: 1 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.ok !== CONNECTS) throw new Error(`connect bench: ${r.fail} failures (${r.errors.join('; ')})`);
  return ms / CONNECTS;
}

async function bench(backend: 'iptables' | 'nft'): Promise<Record<string, number>> {
  const names = [`bn-${backend}`, `bn-${backend}-floor`, `bn-${backend}-srv`];
  for (const n of names) netns.del(n);
  const [node, floorNs, srv] = names.map((n) => netns.add(n)) as [netns.NetNs, netns.NetNs, netns.NetNs];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-bench-nat-${backend}-`));
  const res: Record<string, number> = {};
  try {
    await bridge.ensure(node, 'br0', { addresses: ['10.99.0.1/24'] });
    await attach(node, srv, { bridge: 'br0', address: '10.99.0.2/24' });
    await route.add(node, { dst: '10.95.0.0/16', dev: 'br0' }); // a route for the VIP before OUTPUT DNAT, as a cluster's service CIDR has
    const server = await serve(srv, 'tcp', '10.99.0.2', 8080, 'real');
    try {
      const cli = (...a: string[]) => sh(process.execPath, [CLI, '--netns', node.name!, '--backend', backend, '--state-dir', dir, ...a]);
      const small = path.join(dir, 'small.json');
      fs.writeFileSync(small, JSON.stringify(services(10)));
      cli('service', 'apply', '--file', small);
      res.connect10 = await connectLatency(node);

      const big = services(N);
      const file = path.join(dir, 'services.json');
      fs.writeFileSync(file, JSON.stringify(big));
      // Full sync from an empty table: remove everything first.
      fs.writeFileSync(path.join(dir, 'none.json'), '[]');
      cli('service', 'apply', '--file', path.join(dir, 'none.json'));
      res.full = cli('service', 'apply', '--file', file);
      res.connect10k = await connectLatency(node);

      // The floor: the identical rendered ruleset, applied raw in a fresh namespace.
      const engine = new NatEngine({ ns: node, stateDir: dir, backend });
      const rendered = await engine.rules();
      const payload = rendered.replace(/^# .*\n/gm, '');
      res.floor = backend === 'iptables'
        ? sh(systemTool('ip'), ['netns', 'exec', floorNs.name!, systemTool(`iptables-${(await engine.sync()).backend.split('/')[1]}-restore`), '-w', '5', '--noflush'], payload)
        : sh(systemTool('ip'), ['netns', 'exec', floorNs.name!, systemTool('nft'), '-f', '-'], payload);

      // Partial: one endpoint of one service in the middle of the table.
      const mid = big[Math.floor(N / 2)]!;
      res.partial = cli('service', 'set-endpoints', mid.name, ...mid.endpoints.slice(1).flatMap((e) => ['--endpoint', `${e.ip}:${e.port}`]), '--endpoint', '10.250.0.1:8080');
      res.partialLib = (await engine.update((st) => { st.services.find((s) => s.name === mid.name)!.endpoints[0]!.port = 8081; })).ms;
      res.noop = sh(process.execPath, [CLI, '--version']);
    } finally {
      await server.stop();
    }
  } finally {
    for (const h of [node, floorNs, srv]) { h.close(); netns.del(h.name!); }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return res;
}

async function main(): Promise<void> {
  assertSandbox();
  console.log(`${N} services x ${EPS} endpoints (kernel ${os.release()})`);
  // BENCH_BACKENDS=nft (or iptables) runs one: iptables-nft-restore needs minutes at 10,000 services.
  const backends = (process.env.BENCH_BACKENDS ?? 'iptables,nft').split(',') as ('iptables' | 'nft')[];
  for (const backend of backends) {
    const r = await bench(backend);
    console.log(`\n${backend}`);
    console.log(`  full sync, tsnet service apply (CLI)  ${fmt(r.full!)}`);
    console.log(`  raw ${backend === 'nft' ? 'nft -f' : 'iptables-restore'} of the same ruleset ${fmt(r.floor!)}   ratio tsnet/floor = ${(r.full! / r.floor!).toFixed(2)}`);
    console.log(`  partial sync, one endpoint (CLI)      ${fmt(r.partial!)}   (of which node startup ~${r.noop!.toFixed(0)} ms)`);
    console.log(`  partial sync, one endpoint (library)  ${fmt(r.partialLib!)}`);
    console.log(`  connect latency, 10 services           ${r.connect10!.toFixed(3)} ms`);
    console.log(`  connect latency, ${N} services      ${r.connect10k!.toFixed(3)} ms   ratio = ${(r.connect10k! / r.connect10!).toFixed(2)}`);
  }
}

main().catch((err) => {
  console.error(`bench: ${(err as Error).message}`);
  process.exitCode = 1;
});
