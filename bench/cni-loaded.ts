/**
 * CNI ADD through the agent while it works, against the same agent idle
 * (part `loaded` of `npm run bench:cni`): the agent holds a NAT state of
 * LOADED_SERVICES x 5 for its own namespace; under load, `nft flush
 * ruleset` every 1.5 s makes its resync loop re-apply the whole table,
 * while NAT changes go through it from the CLI without pause.
 *
 * The kernel's share is measured apart: a veth registered in a namespace
 * waits for that namespace's nf_tables commit mutex (kernels since 6.16
 * watch every device registered, for netdev hooks by name), which a flush
 * of 110,000 objects holds for tens of ms. An ADD that met a flush waited
 * for it as any plugin would: iproute2's `ip link add` is timed beside a
 * flush of the same table, with no tsnet process running.
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import * as netns from '../src/netns';
import * as link from '../src/link';
import type { Service } from '../src/nat/model';
import { CLI } from '../test/harness/fixtures';
import { CniInstall, type AgentProcess } from '../test/harness/cni';
import { pct, sleep } from './stats';

const LOADED_SERVICES = Number(process.env.BENCH_LOADED_SERVICES ?? 10_000);

/** A span of time (performance.now(), ms). */
interface Span {
  start: number;
  end: number;
}
const ms = (s: Span) => s.end - s.start;
const overlaps = (a: Span, b: Span) => a.start < b.end && b.start < a.end;

function loadedServices(n: number): Service[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `s${i}`,
    vip: `10.96.${i >> 8}.${i & 255}`,
    port: 80,
    proto: 'tcp' as const,
    endpoints: [1, 2, 3, 4, 5].map((k) => ({ ip: `10.${210 + k}.${i >> 8}.${i & 255}`, port: 8080, weight: 1 })),
  }));
}

/** Starts `cmd` in `node`: the process, and when it has exited. */
function start(node: netns.NetNs, cmd: string, args: string[], opts: Parameters<netns.NetNs['spawn']>[2] = {}) {
  const child = node.spawn(cmd, args, { stdio: 'ignore', ...opts });
  return { child, exited: new Promise<void>((resolve) => child.on('exit', () => resolve())) };
}

/** Runs `cmd` in `node` and resolves when it exits. */
const run = (node: netns.NetNs, cmd: string, args: string[], env?: NodeJS.ProcessEnv) =>
  start(node, cmd, args, env ? { env } : {}).exited;

/** CPU used meanwhile, in cores: the whole machine's, and one process's. */
function cpuMeter(pid: number): () => { machine: number; process: number } {
  const read = () => {
    const all = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.split(/\s+/).slice(1).map(Number);
    const own = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ').map(Number);
    return { busy: all.reduce((a, b) => a + b, 0) - all[3]! - all[4]!, own: own[11]! + own[12]!, t: performance.now() };
  };
  const a = read();
  return () => {
    const b = read();
    const ticks = (b.t - a.t) / 10; // clock ticks of 10 ms (USER_HZ 100)
    return { machine: (b.busy - a.busy) / ticks, process: (b.own - a.own) / ticks };
  };
}

/**
 * Where the load's NAT changes come from: `tsnet service set-endpoints` run again and again (a Node start
 * each, about 80 ms of CPU), or one controller process sending one every 50 ms through the agent socket.
 */
export type ChangesFrom = 'cli' | 'controller';

/** The load: flushes every 1.5 s and NAT changes without pause, each a process of its own, until stop(). */
function startLoad(node: netns.NetNs, stateDir: string, agent: AgentProcess, from: ChangesFrom) {
  let stop = false;
  let changes = 0;
  const flushes: Span[] = [];
  const flushing = (async () => {
    while (!stop) {
      const began = performance.now();
      await run(node, 'nft', ['flush', 'ruleset']);
      flushes.push({ start: began, end: performance.now() });
      for (let t = 0; t < 15 && !stop; t++) await sleep(100);
    }
  })();
  const env = { ...process.env, TSNET_AGENT_SOCKET: agent.socket };
  const controller =
    from === 'controller'
      ? start(
          node,
          process.execPath,
          [path.join(__dirname, 'nat-changes.js'), agent.socket, stateDir, String(LOADED_SERVICES), '50'],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        )
      : undefined;
  let sent = '';
  controller?.child.stdout!.on('data', (d) => (sent += d));
  const cli = (async () => {
    while (!stop && !controller) {
      const k = changes++;
      const [name, endpoint] = [`s${(k * 37) % LOADED_SERVICES}`, `10.220.${(k >> 8) & 255}.${k & 255}:8080`];
      const args = [CLI, '--state-dir', stateDir, 'service', 'set-endpoints', name, '--endpoint', endpoint];
      await run(node, process.execPath, args, env);
    }
  })();
  return {
    flushes,
    changes: () => (controller ? Number(sent.trim()) : changes),
    stop: async () => {
      stop = true;
      // A process this benchmark started, by its handle: it prints how many changes it sent as it ends.
      if (controller?.child.exitCode === null) controller.child.kill('SIGTERM');
      await Promise.all([flushing, cli, controller?.exited]);
    },
  };
}

/** `ip link add` of a veth pair in `node`, timed; deleted again. */
async function vethAdd(node: netns.NetNs, k: number): Promise<number> {
  const start = performance.now();
  await run(node, 'ip', ['link', 'add', `vfl${k}`, 'type', 'veth', 'peer', 'name', `vfl${k}p`]);
  const took = performance.now() - start;
  await run(node, 'ip', ['link', 'del', `vfl${k}`]);
  return took;
}

/**
 * The kernel's share (no tsnet process running): iproute2 creating veths one after another while
 * `nft flush ruleset` deletes the whole table, the table restored by `tsnet sync --force` before each round;
 * and the same without a flush.
 */
async function kernelFloor(node: netns.NetNs, stateDir: string): Promise<{ idle: number[]; flush: number[] }> {
  const idle: number[] = [];
  const flush: number[] = [];
  for (let k = 0; k < 20; k++) idle.push(await vethAdd(node, k));
  for (let round = 0; round < 5; round++) {
    await run(node, process.execPath, [CLI, '--state-dir', stateDir, 'sync', '--force']);
    let done = false;
    const flushed = run(node, 'nft', ['flush', 'ruleset']).then(() => (done = true));
    let worst = 0;
    for (let k = 0; !done; k++) worst = Math.max(worst, await vethAdd(node, 100 + k));
    await flushed;
    flush.push(worst);
  }
  return { idle, flush };
}

const row = (what: string, xs: number[]) =>
  `${what.padEnd(28)} ${String(xs.length).padStart(5)} ${[pct(xs, 50), pct(xs, 99), Math.max(...xs)]
    .map((x) => x.toFixed(1).padStart(8))
    .join(' ')}`;

export async function loaded(n: number, from: ChangesFrom): Promise<void> {
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
  let agent: AgentProcess | undefined = await cni.startAgent(node, [], stateDir);
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
  const adds = async (count: number): Promise<Span[]> => {
    const spans: Span[] = [];
    for (let i = 0; i < count; i++) {
      const c = netns.add(`bench-l-${made.length}`);
      made.push(c);
      const start = performance.now();
      const r = await cni.call(node, 'tsnet-bridge', 'ADD', conf, {
        containerId: `l-${made.length}`,
        netns: c.path,
        ifname: 'eth0',
      });
      if (r.status !== 0) throw new Error(`loaded ADD: ${r.stdout}${r.stderr}`);
      spans.push({ start, end: start + r.ms });
    }
    return spans;
  };
  let load: ReturnType<typeof startLoad> | undefined;
  try {
    await adds(5); // warm: the network's bridge and NAT engine
    // As many idle ADDs as loaded ones at most: each p99 is read from samples of the same size.
    const idle = (await adds(4 * n)).map(ms);
    load = startLoad(node, stateDir, agent, from);
    const cpu = cpuMeter(agent.pid);
    const spans: Span[] = [];
    // At least n ADDs and five full re-applications; at most 4 n ADDs (a resync loop that never repairs ends it too).
    const fullSyncs = () => (agent!.log.match(/: full netlink, \d+ written/g) ?? []).length;
    const before = fullSyncs();
    while ((spans.length < n || fullSyncs() - before < 5) && spans.length < 4 * n) spans.push(...(await adds(1)));
    const used = cpu();
    await load.stop();
    const repairs = fullSyncs() - before;
    await allVipsBack(node);
    if (process.env.BENCH_AGENT_LOG) console.log(agent.log);
    await agent.stop();
    agent = undefined;
    const floor = await kernelFloor(node, stateDir);

    const metFlush = (s: Span) => load!.flushes.some((f) => overlaps(f, s));
    const busy = spans.map(ms);
    const apart = spans.filter((s) => !metFlush(s)).map(ms);
    const during = spans.filter(metFlush).map(ms);
    console.log(
      `\nCNI ADD through the agent, idle and while it works: it holds ${LOADED_SERVICES} x 5 NAT services; ${repairs} full re-applications after \`nft flush ruleset\` (every 1.5 s, ${load.flushes.length} flushes), ${load.changes()} NAT changes ${from === 'cli' ? 'from the CLI (a process each)' : 'from one controller process'} meanwhile; machine ${used.machine.toFixed(2)} cores busy, the agent ${used.process.toFixed(2)} (ms)`,
    );
    console.log(
      `${'agent ADD'.padEnd(28)} ${'n'.padStart(5)} ${['p50', 'p99', 'max'].map((h) => h.padStart(8)).join(' ')}`,
    );
    console.log(row('idle', idle));
    console.log(row('loaded', busy));
    console.log(row('loaded, apart from flushes', apart));
    console.log(row('loaded, met a flush', during));
    console.log(row('kernel: ip link add, idle', floor.idle));
    console.log(row('kernel: ip link add, flush', floor.flush));
    console.log(
      `ratio loaded/idle p99 ${(pct(busy, 99) / pct(idle, 99)).toFixed(2)} (goal <= 2); apart from the ADDs that met a flush ${(pct(apart, 99) / pct(idle, 99)).toFixed(2)}; max ${Math.max(...busy).toFixed(0)} ms (goal <= 250); a flush holds a veth back ${pct(floor.flush, 50).toFixed(0)} ms (median of ${floor.flush.length}, iproute2, no tsnet running)`,
    );
  } finally {
    await load?.stop();
    await agent?.stop();
    await release(cni, node, made);
  }
}

/** The namespaces a CNI bench made (the node's last) and its install, gone. */
export async function release(cni: CniInstall, node: netns.NetNs, made: netns.NetNs[]): Promise<void> {
  for (const ns of [...made, node]) {
    ns.close();
    if (ns.name) netns.del(ns.name);
  }
  await cni.cleanup();
}

/** The repairs were the whole table: every service's VIP is back in the kernel (after the last flush's repair). */
async function allVipsBack(node: netns.NetNs): Promise<void> {
  const vipsNow = () =>
    (
      String(node.spawnSync('nft', ['list', 'ruleset'], { encoding: 'utf8', maxBuffer: 1 << 30 }).stdout).match(
        /10\.96\.\d+\.\d+/g,
      ) ?? []
    ).length;
  let vips = vipsNow();
  for (let i = 0; i < 50 && vips < LOADED_SERVICES; i++) {
    await sleep(100);
    vips = vipsNow();
  }
  if (vips < LOADED_SERVICES) throw new Error(`after the load, ${vips} VIPs in the kernel, not ${LOADED_SERVICES}`);
}
