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
import * as fs from 'node:fs';

import type { Service } from '../src/nat/model';
import { CLI, assertSandbox } from '../test/harness/fixtures';
import { CniInstall, type CniCall } from '../test/harness/cni';
import { pct } from './stats';

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
    for (const c of made) {
      c.close();
      if (c.name) netns.del(c.name);
    }
    node.close();
    netns.del('bench-node');
    await cni.cleanup();
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

/**
 * CNI ADD through the agent while it works, against the same agent idle: the
 * agent holds a NAT state of LOADED_SERVICES x 5 for its own namespace; under
 * load, `nft flush ruleset` every 1.5 s makes its resync loop re-apply the
 * whole table (a full sync: a batch of megabytes), while a burst of NAT
 * changes goes through it from the CLI.
 */
const LOADED_SERVICES = Number(process.env.BENCH_LOADED_SERVICES ?? 10_000);

function loadedServices(n: number): Service[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `s${i}`,
    vip: `10.96.${i >> 8}.${i & 255}`,
    port: 80,
    proto: 'tcp' as const,
    endpoints: [1, 2, 3, 4, 5].map((k) => ({ ip: `10.${210 + k}.${i >> 8}.${i & 255}`, port: 8080, weight: 1 })),
  }));
}

async function loaded(): Promise<void> {
  const cni = new CniInstall('bench-load');
  netns.del('bench-lnode');
  const node = netns.add('bench-lnode');
  await link.setUp(node, 'lo');
  const stateDir = fs.mkdtempSync(path.join(cni.dir, 'agent-state-'));
  // Written from inside the node, as the agent (running there) names its namespace: the current one.
  const file = path.join(stateDir, 'services.json');
  fs.writeFileSync(file, JSON.stringify(loadedServices(LOADED_SERVICES)));
  const applied = node.spawnSync(process.execPath, [CLI, '--state-dir', stateDir, 'service', 'apply', '-f', file], {
    encoding: 'utf8',
  });
  if (applied.status !== 0) throw new Error(`service apply: ${applied.stderr}`);
  const agent = await cni.startAgent(node, [], stateDir);
  const conf = {
    cniVersion: '1.0.0',
    name: 'bench-load',
    type: 'tsnet-bridge',
    bridge: 'br-load',
    isGateway: true,
    ipMasq: true,
    stateDir, // one desired state per namespace: the network's rules beside the services
    ipam: { type: 'tsnet-ipam', subnet: '10.209.0.0/16', dataDir: path.join(cni.dir, 'ipam-load') },
  };
  const made: netns.NetNs[] = [];
  let seq = 0;
  const adds = async (n: number): Promise<number[]> => {
    const ms: number[] = [];
    for (let i = 0; i < n; i++) {
      const c = netns.add(`bench-l-${seq}`);
      made.push(c);
      const r = await cni.call(node, 'tsnet-bridge', 'ADD', conf, {
        containerId: `l-${seq++}`,
        netns: c.path,
        ifname: 'eth0',
      });
      if (r.status !== 0) throw new Error(`loaded ADD: ${r.stdout}${r.stderr}`);
      ms.push(r.ms);
    }
    return ms;
  };
  let stop = false;
  let changes = 0;
  let flusher: ReturnType<typeof node.spawn> | undefined;
  let burst: Promise<void> | undefined;
  /** Ends the load: the flusher (a process this benchmark started, by its pid) and the CLI loop. */
  const unload = async () => {
    stop = true;
    if (flusher && flusher.exitCode === null && flusher.signalCode === null) process.kill(flusher.pid!, 'SIGKILL');
    await burst;
  };
  try {
    await adds(5); // warm: the network's bridge and NAT engine
    const idle = await adds(N);
    // The load: `nft flush ruleset` every 1.5 s, by a process of its own (this one's event loop times the CNI calls),
    // each followed by a full re-application; and NAT changes from the CLI without pause.
    flusher = node.spawn('sh', ['-c', 'while :; do nft flush ruleset; sleep 1.5; done'], { stdio: 'ignore' });
    burst = (async () => {
      while (!stop) {
        await new Promise<void>((resolve) => {
          const k = changes++;
          const child = node.spawn(
            process.execPath,
            [
              CLI,
              '--state-dir',
              stateDir,
              'service',
              'set-endpoints',
              `s${(k * 37) % LOADED_SERVICES}`,
              '--endpoint',
              `10.220.${(k >> 8) & 255}.${k & 255}:8080`,
            ],
            { stdio: 'ignore', env: { ...process.env, TSNET_AGENT_SOCKET: agent.socket } },
          );
          child.on('exit', () => resolve());
        });
      }
    })();
    const busy: number[] = [];
    // At least N ADDs and five full re-applications; at most 4 N ADDs (a resync loop that never repairs ends it too).
    const fullSyncs = () => (agent.log.match(/: full netlink, \d+ written/g) ?? []).length;
    const before = fullSyncs();
    while ((busy.length < N || fullSyncs() - before < 5) && busy.length < 4 * N) busy.push(...(await adds(1)));
    await unload();
    const repairs = fullSyncs() - before;
    // The repairs were the whole table: every service's VIP is back in the kernel (after the last flush's repair).
    const vipsNow = () =>
      (
        String(node.spawnSync('nft', ['list', 'ruleset'], { encoding: 'utf8', maxBuffer: 1 << 30 }).stdout).match(
          /10\.96\.\d+\.\d+/g,
        ) ?? []
      ).length;
    let vips = vipsNow();
    for (let i = 0; i < 50 && vips < LOADED_SERVICES; i++) {
      await new Promise((r) => setTimeout(r, 100));
      vips = vipsNow();
    }
    if (vips < LOADED_SERVICES) throw new Error(`after the load, ${vips} VIPs in the kernel, not ${LOADED_SERVICES}`);
    if (process.env.BENCH_AGENT_LOG) console.log(agent.log);
    console.log(
      `\nCNI ADD through the agent, idle (${idle.length} ADDs) and while it works (${busy.length} ADDs): it holds ${LOADED_SERVICES} x 5 NAT services; ${repairs} full re-applications after \`nft flush ruleset\` (every 1.5 s), ${changes} NAT changes from the CLI meanwhile (ms)`,
    );
    console.log(`${'agent ADD'.padEnd(20)} ${'p50'.padStart(8)} ${'p99'.padStart(8)} ${'max'.padStart(8)}`);
    for (const [what, xs] of [
      ['idle', idle],
      ['loaded', busy],
    ] as const)
      console.log(
        `${what.padEnd(20)} ${pct(xs, 50).toFixed(1).padStart(8)} ${pct(xs, 99).toFixed(1).padStart(8)} ${Math.max(
          ...xs,
        )
          .toFixed(1)
          .padStart(8)}`,
      );
    console.log(
      `ratio loaded/idle p99 ${(pct(busy, 99) / pct(idle, 99)).toFixed(2)} (goal <= 2), max ${Math.max(...busy).toFixed(0)} ms (goal <= 250)`,
    );
  } finally {
    await unload();
    await agent.stop();
    for (const c of made) {
      c.close();
      if (c.name) netns.del(c.name);
    }
    node.close();
    netns.del('bench-lnode');
    await cni.cleanup();
  }
}

const main2 = async () => {
  if (process.env.BENCH_SKIP?.split(',').includes('compare') !== true) await main();
  if (process.env.BENCH_SKIP?.split(',').includes('loaded') !== true) await loaded();
};

main2().catch((err) => {
  console.error((err as Error).message);
  process.exitCode = 1;
});
