/**
 * CNI ADD and DEL latency per container, side by side in one run:
 *   reference  Debian's /usr/lib/cni/bridge + host-local
 *   tsnet      tsnet-bridge + tsnet-ipam (standalone executables, as installed by `tsnet cni install`)
 * Same config (isGateway, ipMasq on, one /16 each), same count, calls
 * interleaved so machine load hits both alike; plugins run as a runtime runs
 * them (env + stdin), inside a private node namespace.
 * Run with `npm run bench:cni` (inside the sandbox). BENCH_N containers (default 40).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as netns from '../src/netns';
import * as link from '../src/link';
import { assertSandbox } from '../test/harness/fixtures';
import { CniInstall, type CniCall } from '../test/harness/cni';

const N = Number(process.env.BENCH_N ?? 40);

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function main(): Promise<void> {
  assertSandbox();
  const cni = new CniInstall('bench');
  netns.del('bench-node');
  const node = netns.add('bench-node');
  await link.setUp(node, 'lo');
  const conf = (kind: 'ref' | 'tsnet') => ({
    cniVersion: '1.0.0', name: `bench-${kind}`,
    type: kind === 'ref' ? 'bridge' : 'tsnet-bridge', bridge: kind === 'ref' ? 'br-ref' : 'br-tsnet',
    isGateway: true, ipMasq: true,
    ...(kind === 'tsnet' ? { stateDir: path.join(cni.dir, 'state') } : {}),
    ipam: { type: kind === 'ref' ? 'host-local' : 'tsnet-ipam', subnet: kind === 'ref' ? '10.201.0.0/16' : '10.202.0.0/16', dataDir: path.join(cni.dir, `ipam-${kind}`) },
  });
  const made: netns.NetNs[] = [];
  const times: Record<string, number[]> = { 'ref ADD': [], 'tsnet ADD': [], 'ref DEL': [], 'tsnet DEL': [], 'ref VERSION': [], 'tsnet VERSION': [] };
  const must = (r: CniCall, what: string) => {
    if (r.status !== 0) throw new Error(`${what}: ${r.stdout}${r.stderr}`);
    return r;
  };
  const plugin = (k: 'ref' | 'tsnet') => (k === 'ref' ? 'bridge' : 'tsnet-bridge');
  try {
    for (let i = 0; i < N; i++) {
      for (const k of (i % 2 ? ['ref', 'tsnet'] : ['tsnet', 'ref']) as ('ref' | 'tsnet')[]) {
        const c = netns.add(`bench-${k}-${i}`);
        made.push(c);
        const r = must(await cni.call(node, plugin(k), 'ADD', conf(k), { containerId: `${k}-${i}`, netns: c.path, ifname: 'eth0' }), `${k} ADD ${i}`);
        times[`${k} ADD`]!.push(r.ms);
        times[`${k} VERSION`]!.push(must(await cni.call(node, plugin(k), 'VERSION', { cniVersion: '1.0.0' }), `${k} VERSION`).ms);
      }
    }
    for (let i = 0; i < N; i++) {
      for (const k of (i % 2 ? ['ref', 'tsnet'] : ['tsnet', 'ref']) as ('ref' | 'tsnet')[]) {
        const r = must(await cni.call(node, plugin(k), 'DEL', conf(k), { containerId: `${k}-${i}`, netns: `/run/netns/bench-${k}-${i}`, ifname: 'eth0' }), `${k} DEL ${i}`);
        times[`${k} DEL`]!.push(r.ms);
      }
    }
    const left = node.spawnSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' }).stdout as string;
    if (/10\.20[12]\./.test(left)) throw new Error('rules left after DEL');
  } finally {
    for (const c of made) {
      c.close();
      if (c.name) netns.del(c.name);
    }
    node.close();
    netns.del('bench-node');
    fs.rmSync(cni.dir, { recursive: true, force: true });
  }
  console.log(`CNI plugin latency, ${N} containers each, ipMasq on (ms)`);
  console.log(`${'call'.padEnd(16)} ${'p50'.padStart(8)} ${'p90'.padStart(8)}`);
  for (const [k, v] of Object.entries(times)) console.log(`${k.padEnd(16)} ${pct(v, 50).toFixed(1).padStart(8)} ${pct(v, 90).toFixed(1).padStart(8)}`);
  for (const op of ['ADD', 'DEL', 'VERSION']) {
    const r50 = pct(times[`tsnet ${op}`]!, 50) / pct(times[`ref ${op}`]!, 50);
    const r90 = pct(times[`tsnet ${op}`]!, 90) / pct(times[`ref ${op}`]!, 90);
    console.log(`ratio tsnet/reference ${op.padEnd(7)} p50 ${r50.toFixed(2)}  p90 ${r90.toFixed(2)}`);
  }
}

main().catch((err) => {
  console.error((err as Error).message);
  process.exitCode = 1;
});
