/**
 * CNI ADD and DEL latency per container, side by side in one run:
 *   ref         Debian's /usr/lib/cni/bridge + host-local
 *   standalone  tsnet-bridge + tsnet-ipam as installed by `tsnet cni install`, no agent (the shim runs node)
 *   agent       the same executables with `tsnet agent` serving the node namespace
 * Same config (isGateway, ipMasq on, one /16 each), same count, calls
 * interleaved so machine load hits both alike; plugins run as a runtime runs
 * them (env + stdin), inside a private node namespace.
 * Run with `npm run bench:cni` (inside the sandbox). BENCH_N containers (default 40).
 */
import * as path from 'node:path';
import * as netns from '../src/netns';
import * as link from '../src/link';

import { assertSandbox } from '../test/harness/fixtures';
import { CniInstall, type CniCall } from '../test/harness/cni';
import { pct } from './stats';
import { loaded, release } from './cni-loaded';

type Kind = 'ref' | 'standalone' | 'agent';
const KINDS: Kind[] = ['ref', 'standalone', 'agent'];

const N = Number(process.env.BENCH_N ?? 40);

async function main(): Promise<void> {
  assertSandbox();
  const cni = new CniInstall('bench');
  netns.del('bench-node');
  const node = netns.add('bench-node');
  await link.setUp(node, 'lo');
  const conf = (kind: Kind) => ({
    cniVersion: '1.0.0',
    name: `bench-${kind}`,
    type: kind === 'ref' ? 'bridge' : 'tsnet-bridge',
    bridge: `br-${kind}`,
    isGateway: true,
    ipMasq: true,
    ...(kind === 'ref' ? {} : { stateDir: path.join(cni.dir, `state-${kind}`) }),
    ipam: {
      type: kind === 'ref' ? 'host-local' : 'tsnet-ipam',
      subnet: `10.${201 + KINDS.indexOf(kind)}.0.0/16`,
      dataDir: path.join(cni.dir, `ipam-${kind}`),
    },
  });
  const made: netns.NetNs[] = [];
  const times: Record<string, number[]> = {};
  const record = (k: Kind, op: string, ms: number) => (times[`${k} ${op}`] ??= []).push(ms);
  const must = (r: CniCall, what: string) => {
    if (r.status !== 0) throw new Error(`${what}: ${r.stdout}${r.stderr}`);
    return r;
  };
  const agent = await cni.startAgent(node, ['--resync-interval', '10s']);
  const call = (k: Kind, command: string, c: unknown, e: { containerId?: string; netns?: string } = {}) =>
    cni.call(node, k === 'ref' ? 'bridge' : 'tsnet-bridge', command, c, {
      ...e,
      ifname: 'eth0',
      env: k === 'standalone' ? { TSNET_AGENT_SOCKET: '' } : {},
    });
  const order = (i: number) => KINDS.map((_, j) => KINDS[(i + j) % KINDS.length]!);
  try {
    for (let i = 0; i < N; i++) {
      for (const k of order(i)) {
        const c = netns.add(`bench-${k}-${i}`);
        made.push(c);
        record(
          k,
          'ADD',
          must(await call(k, 'ADD', conf(k), { containerId: `${k}-${i}`, netns: c.path }), `${k} ADD ${i}`).ms,
        );
        record(k, 'VERSION', must(await call(k, 'VERSION', { cniVersion: '1.0.0' }), `${k} VERSION`).ms);
      }
    }
    for (let i = 0; i < N; i++) {
      for (const k of order(i)) {
        record(
          k,
          'DEL',
          must(
            await call(k, 'DEL', conf(k), { containerId: `${k}-${i}`, netns: `/run/netns/bench-${k}-${i}` }),
            `${k} DEL ${i}`,
          ).ms,
        );
      }
    }
    const left = node.spawnSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' }).stdout as string;
    if (/10\.20[123]\./.test(left)) throw new Error('rules left after DEL');
    if (!/tsnet-bridge ADD bench-agent/.test(agent.log)) throw new Error('the agent served no ADD');
    // The agent's own view: time from a complete request to its reply.
    for (const m of agent.log.matchAll(/cni: tsnet-bridge (ADD|DEL) bench-agent .*: ok in ([\d.]+) ms/g))
      record('agent', `${m[1]} (inside)`, Number(m[2]));
  } finally {
    await agent.stop();
    await release(cni, node, made);
  }
  console.log(`CNI plugin latency, ${N} containers each, ipMasq on, calls interleaved (ms)`);
  console.log(`${'call'.padEnd(20)} ${'p50'.padStart(8)} ${'p90'.padStart(8)}`);
  for (const op of ['ADD', 'DEL', 'VERSION']) {
    for (const key of [...KINDS.map((k) => `${k} ${op}`), `agent ${op} (inside)`].filter((k) => times[k])) {
      console.log(
        `${key.padEnd(20)} ${pct(times[key]!, 50).toFixed(1).padStart(8)} ${pct(times[key]!, 90).toFixed(1).padStart(8)}`,
      );
    }
  }
  for (const op of ['ADD', 'DEL', 'VERSION']) {
    for (const k of ['standalone', 'agent'] as const) {
      const r50 = pct(times[`${k} ${op}`]!, 50) / pct(times[`ref ${op}`]!, 50);
      const r90 = pct(times[`${k} ${op}`]!, 90) / pct(times[`ref ${op}`]!, 90);
      console.log(`ratio ${k}/ref ${op.padEnd(8)} p50 ${r50.toFixed(2)}  p90 ${r90.toFixed(2)}`);
    }
  }
}

const main2 = async () => {
  if (process.env.BENCH_SKIP?.split(',').includes('compare') !== true) await main();
  if (process.env.BENCH_SKIP?.split(',').includes('loaded') !== true) await loaded(N, 'cli');
  if (process.env.BENCH_SKIP?.split(',').includes('controller') !== true) await loaded(N, 'controller');
};

main2().catch((err) => {
  console.error((err as Error).message);
  process.exitCode = 1;
});
