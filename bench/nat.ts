/**
 * The NAT engine at kube-proxy scale, side by side in one run (each
 * measurement in a namespace of its own, created empty):
 *
 *   layouts       the same 10,000 services x 5 endpoints as raw `nft -f` of four layouts:
 *                   A kube-proxy's nftables layout (a chain per service with an anonymous
 *                     `numgen ... vmap { }`, a chain per endpoint)
 *                   B the same chains, each service's endpoint choice a named verdict map
 *                   C no endpoint chains: a named map per service, `dnat to numgen ... map @m`,
 *                     hairpin by a set of (endpoint, endpoint) pairs
 *                   D tsnet's layout (services as elements of shared maps, lb chains shared per
 *                     endpoint count), i.e. what `tsnet rules` prints
 *                 each capped at BENCH_LAYOUT_TIMEOUT seconds (default 150)
 *   full sync     10,000 x 5 and 44,000 x 1 from an empty table on the default backend
 *                 (netlink): the CLI (`tsnet service apply`), the library, and the kernel's
 *                 own share (the same nf_tables batch sent alone: the floor)
 *   one change    one service's endpoints replaced in the 10,000-service table: the library
 *                 (median of 50) and the CLI (median of 15, beside `node -e 0`)
 *   listing       `tsnet -j service ls` of 44,000 services (streamed)
 *   memory        peak RSS of a process holding 10,000 x 5 (a full sync, then 50 changes)
 *   connect       TCP connect+reply latency to a VIP with 10 and with 10,000 services present
 *   iptables      the iptables backend's full sync of 10,000 x 5 (CLI) against raw
 *                 iptables-restore of the same payload (chains in sorted order), nft and legacy
 *
 * Run with `npm run bench:nat` (inside the sandbox). BENCH_SERVICES overrides 10,000;
 * BENCH_SKIP=layouts,iptables leaves parts out.
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
import { normalizeState, type Service } from '../src/nat/model';
import { render } from '../src/nat/nftables/layout';
import { fullPlan } from '../src/nat/nftables/plan';
import { encodePlan } from '../src/nat/nftables/batch';
import { script } from '../src/nat/nftables/text';
import { renderIptables as iptablesRender } from '../src/nat/iptables/ruleset';
import { restorePayload } from '../src/nat/iptables/restore';
import { request, serve } from '../src/demo/traffic';
import { CLI, assertSandbox } from '../test/harness/fixtures';
import { withAgent } from './agent';

const N = Number(process.env.BENCH_SERVICES ?? 10_000);
const BIG = 44_000;
const EPS = 5;
const CONNECTS = 300;
const LAYOUT_TIMEOUT_S = Number(process.env.BENCH_LAYOUT_TIMEOUT ?? 150);
const skip = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean));

const vipOf = (i: number) => `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
const epOf = (i: number, e: number) => `10.${200 + e}.${(i >> 8) & 255}.${i & 255}`;

function services(n: number, eps: number): Service[] {
  const out: Service[] = [];
  for (let i = 0; i < n - 1; i++) {
    out.push({
      name: `bench/svc${i}`,
      vip: vipOf(i),
      port: 80,
      proto: 'tcp',
      endpoints: Array.from({ length: eps }, (_, e) => ({ ip: epOf(i, e), port: 8080, weight: 1 })),
    });
  }
  // The one that answers, last in the table.
  out.push({
    name: 'bench/real',
    vip: '10.95.0.1',
    port: 80,
    proto: 'tcp',
    endpoints: [{ ip: '10.99.0.2', port: 8080, weight: 1 }],
  });
  return out;
}

interface Timed {
  ms: number;
  ok: boolean;
  out: string;
}

function run(
  cmd: string,
  args: string[],
  o: { input?: string; timeoutS?: number; env?: NodeJS.ProcessEnv } = {},
): Timed {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, {
    input: o.input,
    encoding: 'utf8',
    maxBuffer: 1 << 30,
    timeout: (o.timeoutS ?? 0) * 1000,
    killSignal: 'SIGKILL',
    env: { ...process.env, ...o.env },
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0 && !r.signal) throw new Error(`${cmd} ${args.join(' ')}: ${(r.stderr ?? '').slice(0, 500)}`);
  return { ms, ok: r.status === 0, out: r.stdout ?? '' };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const ms = (x: number) => `${x >= 100 ? x.toFixed(0) : x.toFixed(1)} ms`.padStart(10);
const line = (what: string, value: string, note = '') =>
  console.log(`  ${what.padEnd(58)} ${value}${note ? `   ${note}` : ''}`);

/** A fresh namespace for one measurement, deleted afterwards. */
async function inFresh<T>(name: string, fn: (ns: netns.NetNs) => Promise<T> | T): Promise<T> {
  netns.del(name);
  const ns = netns.add(name);
  try {
    return await fn(ns);
  } finally {
    ns.close();
    netns.del(name);
  }
}

// --- raw layouts -------------------------------------------------------------

/** What layouts A and B begin with: the table, the dispatch map and its hook. */
const kubeProxyHead = () => [
  'add table ip kp',
  'add chain ip kp nat-prerouting { type nat hook prerouting priority dstnat ; }',
  'add chain ip kp services',
  'add map ip kp service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }',
  'add rule ip kp nat-prerouting jump services',
  'add rule ip kp services ip daddr . meta l4proto . th dport vmap @service-ips',
];

/** The endpoint chains A and B share: mark for masquerade (hairpin), then DNAT. */
function endpointChains(out: string[], s: Service, i: number): void {
  s.endpoints.forEach((e, k) => {
    out.push(
      `add chain ip kp ep-${i}-${k}`,
      `add rule ip kp ep-${i}-${k} ip saddr ${e.ip} mark set mark or 0x4000`,
      `add rule ip kp ep-${i}-${k} meta l4proto tcp dnat to ${e.ip}:${e.port}`,
    );
  });
}

function layoutA(svcs: Service[]): string {
  const out = kubeProxyHead();
  svcs.forEach((s, i) => {
    endpointChains(out, s, i);
    out.push(
      `add chain ip kp svc-${i}`,
      `add rule ip kp svc-${i} numgen random mod ${s.endpoints.length} vmap { ${s.endpoints.map((_, k) => `${k} : goto ep-${i}-${k}`).join(', ')} }`,
    );
    out.push(`add element ip kp service-ips { ${s.vip} . tcp . ${s.port} : goto svc-${i} }`);
  });
  return `${out.join('\n')}\n`;
}

function layoutB(svcs: Service[]): string {
  const out = kubeProxyHead();
  svcs.forEach((s, i) => {
    const n = s.endpoints.length;
    endpointChains(out, s, i);
    out.push(
      `add map ip kp svc-${i}-eps { typeof numgen random mod ${n} : verdict ; }`,
      `add element ip kp svc-${i}-eps { ${s.endpoints.map((_, k) => `${k} : goto ep-${i}-${k}`).join(', ')} }`,
      `add chain ip kp svc-${i}`,
      `add rule ip kp svc-${i} numgen random mod ${n} vmap @svc-${i}-eps`,
      `add element ip kp service-ips { ${s.vip} . tcp . ${s.port} : goto svc-${i} }`,
    );
  });
  return `${out.join('\n')}\n`;
}

function layoutC(svcs: Service[]): string {
  const out = [
    'add table ip kp',
    'add chain ip kp nat-prerouting { type nat hook prerouting priority dstnat ; }',
    'add chain ip kp services',
    'add chain ip kp nat-postrouting { type nat hook postrouting priority srcnat ; }',
    'add map ip kp service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }',
    'add set ip kp hairpin { type ipv4_addr . ipv4_addr ; }',
    'add rule ip kp nat-prerouting jump services',
    'add rule ip kp services ip daddr . meta l4proto . th dport vmap @service-ips',
    'add rule ip kp nat-postrouting ct status dnat ip saddr . ip daddr @hairpin masquerade',
  ];
  const pairs = new Set<string>();
  svcs.forEach((s, i) => {
    const n = s.endpoints.length;
    out.push(
      `add map ip kp svc-${i}-eps { typeof numgen random mod ${n} : ip daddr . tcp dport ; }`,
      `add element ip kp svc-${i}-eps { ${s.endpoints.map((e, k) => `${k} : ${e.ip} . ${e.port}`).join(', ')} }`,
      `add chain ip kp svc-${i}`,
      `add rule ip kp svc-${i} meta l4proto tcp dnat ip to numgen random mod ${n} map @svc-${i}-eps`,
      `add element ip kp service-ips { ${s.vip} . tcp . ${s.port} : goto svc-${i} }`,
    );
    for (const e of s.endpoints) pairs.add(`${e.ip} . ${e.ip}`);
  });
  const all = [...pairs];
  for (let k = 0; k < all.length; k += 1000)
    out.push(`add element ip kp hairpin { ${all.slice(k, k + 1000).join(', ')} }`);
  return `${out.join('\n')}\n`;
}

function layoutD(svcs: Service[]): string {
  return script(fullPlan(render(normalizeState({ services: svcs, rules: [] }), 4)).ops, 4);
}

async function layouts(): Promise<void> {
  console.log(
    `\nlayouts: raw nft -f of ${N} services x ${EPS} endpoints into an empty namespace (cap ${LAYOUT_TIMEOUT_S} s)`,
  );
  const svcs = services(N, EPS);
  const rows: [string, (s: Service[]) => string][] = [
    ['A kube-proxy: chain per service (anonymous vmap) + per endpoint', layoutA],
    ['B chains per service and endpoint, named verdict maps', layoutB],
    ['C named endpoint map per service, no endpoint chains', layoutC],
    ['D tsnet: services as elements of shared maps (tsnet rules)', layoutD],
  ];
  const results: number[] = [];
  for (const [name, make] of rows) {
    const file = path.join(os.tmpdir(), `tsnet-bench-layout-${process.pid}.nft`);
    fs.writeFileSync(file, make(svcs));
    const r = await inFresh('bn-layout', (ns) =>
      run(systemTool('ip'), ['netns', 'exec', ns.name!, systemTool('nft'), '-f', file], { timeoutS: LAYOUT_TIMEOUT_S }),
    );
    fs.rmSync(file);
    results.push(r.ok ? r.ms : Infinity);
    line(name, r.ok ? ms(r.ms) : `> ${LAYOUT_TIMEOUT_S} s`.padStart(10));
  }
  const d = results[3]!;
  console.log(
    `  ratios to D: ${results
      .slice(0, 3)
      .map(
        (x, i) =>
          `${'ABC'[i]} ${Number.isFinite(x) ? (x / d).toFixed(1) : `> ${((LAYOUT_TIMEOUT_S * 1000) / d).toFixed(0)}`}x`,
      )
      .join(', ')}`,
  );
}

// --- netlink backend ---------------------------------------------------------

/** The kernel's share of a full sync: the exact batch a full sync of `svcs` sends, sent alone into an empty namespace. */
function kernelFloor(ns: netns.NetNs, svcs: Service[]): { build: number; kernel: number } {
  const t0 = process.hrtime.bigint();
  const st = normalizeState({ services: svcs, rules: [] });
  const plan = fullPlan(render(st, 4));
  const t1 = process.hrtime.bigint();
  const { errors } = ns.netfilter.transact((seq) => encodePlan(plan, 4, seq));
  const t2 = process.hrtime.bigint();
  if (errors.size) throw new Error(`floor batch refused: ${[...errors.values()][0]!.message}`);
  // transact's time includes encoding: take it out.
  const enc0 = process.hrtime.bigint();
  encodePlan(plan, 4, 1);
  const enc = Number(process.hrtime.bigint() - enc0) / 1e6;
  return { build: Number(t1 - t0) / 1e6 + enc, kernel: Number(t2 - t1) / 1e6 - enc };
}

async function fullSyncs(): Promise<void> {
  console.log('\nfull sync from an empty table, netlink backend (default)');
  for (const [n, eps] of [
    [N, EPS],
    [BIG, 1],
  ] as const) {
    const svcs = services(n, eps);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-full-'));
    const file = path.join(dir, 'services.json');
    fs.writeFileSync(file, JSON.stringify(svcs));
    const cli = await inFresh(
      'bn-full-cli',
      (ns) =>
        run(process.execPath, [
          CLI,
          '--netns',
          ns.name!,
          '--state-dir',
          path.join(dir, 'cli'),
          'service',
          'apply',
          '--file',
          file,
        ]).ms,
    );
    const lib = await inFresh('bn-full-lib', async (ns) => {
      const e = new NatEngine({ ns, stateDir: path.join(dir, 'lib') });
      const t0 = process.hrtime.bigint();
      await e.change([{ kind: 'replace-services', services: structuredClone(svcs) }]);
      return Number(process.hrtime.bigint() - t0) / 1e6;
    });
    const floor = await inFresh('bn-full-floor', (ns) => kernelFloor(ns, svcs));
    let listing: number | undefined;
    if (n === BIG) {
      await inFresh('bn-full-ls', (ns) => {
        run(process.execPath, [
          CLI,
          '--netns',
          ns.name!,
          '--state-dir',
          path.join(dir, 'ls'),
          'service',
          'apply',
          '--file',
          file,
        ]);
        const t = process.hrtime.bigint();
        const out = run(process.execPath, [
          CLI,
          '--netns',
          ns.name!,
          '--state-dir',
          path.join(dir, 'ls'),
          '--json',
          'service',
          'ls',
        ]).out;
        listing = Number(process.hrtime.bigint() - t) / 1e6;
        if ((JSON.parse(out) as unknown[]).length !== n)
          throw new Error('service ls listed the wrong number of services');
      });
    }
    fs.rmSync(dir, { recursive: true, force: true });
    console.log(` ${n} services x ${eps} endpoint${eps > 1 ? 's' : ''}`);
    line(
      'tsnet service apply (CLI, a process from start to exit)',
      ms(cli),
      `${(cli / floor.kernel).toFixed(2)}x kernel`,
    );
    line('library (NatEngine.change)', ms(lib), `${(lib / floor.kernel).toFixed(2)}x kernel`);
    line('  of which the kernel: the same batch sent alone (floor)', ms(floor.kernel));
    line('  building that batch (render + encode)', ms(floor.build));
    if (listing !== undefined) line(`tsnet -j service ls of ${n} (streamed, with counters)`, ms(listing));
  }
}

async function oneChange(): Promise<void> {
  console.log(`\none service's endpoints replaced in a ${N}-service table (netlink)`);
  await inFresh('bn-change', async (ns) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-change-'));
    const svcs = services(N, EPS);
    const e = new NatEngine({ ns, stateDir: dir });
    await e.change([{ kind: 'replace-services', services: svcs }]);
    const lib: number[] = [];
    for (let k = 0; k < 50; k++) {
      const s = svcs[(k * 197) % (N - 1)]!;
      const t0 = process.hrtime.bigint();
      await e.change([
        {
          kind: 'set-endpoints',
          name: s.name,
          endpoints: [{ ip: `10.250.${k >> 8}.${k & 255}`, port: 8080, weight: 1 }, ...s.endpoints.slice(1)],
        },
      ]);
      lib.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    // The CLI's arguments that replace the first endpoint of `s` with `first`.
    const setFirstEndpoint = (s: Service, first: string) => [
      CLI,
      ...['--netns', ns.name!, '--state-dir', dir, 'service', 'set-endpoints', s.name, '--endpoint', first],
      ...s.endpoints.slice(1).flatMap((x) => ['--endpoint', `${x.ip}:${x.port}`]),
    ];
    const cli: number[] = [];
    const node: number[] = [];
    for (let k = 0; k < 15; k++) {
      const s = svcs[(k * 389 + 7) % (N - 1)]!;
      cli.push(run(process.execPath, setFirstEndpoint(s, `10.251.0.${k}:8080`)).ms);
      node.push(run(process.execPath, ['-e', '0']).ms);
    }
    // The same CLI with a resident agent (tsnet agent) serving this namespace: it holds the table in memory.
    // Node's start-up measured again between these runs: the machine's speed drifts between the two loops.
    const nodeBesideAgent: number[] = [];
    const forwards: number[] = [];
    await bridge.ensure(ns, 'bfw0', { addresses: ['10.253.255.1/16'] }); // a route to the forwards' targets
    const viaAgent = await withAgent(dir, (socket) => {
      const times: number[] = [];
      for (let k = 0; k < 16; k++) {
        const s = svcs[(k * 521 + 11) % (N - 1)]!;
        const t = run(process.execPath, setFirstEndpoint(s, `10.252.0.${k}:8080`), {
          env: { TSNET_AGENT_SOCKET: socket },
        }).ms;
        if (k > 0) times.push(t); // the first loads the table into the agent
        nodeBesideAgent.push(run(process.execPath, ['-e', '0']).ms);
        // A forward retargeted, interleaved: what one forward change costs beside one service change.
        const f = run(
          process.execPath,
          [
            CLI,
            '--netns',
            ns.name!,
            '--state-dir',
            dir,
            'forward',
            `10.253.0.${k}`,
            '3308',
            '3306',
            '--name',
            'db',
            '--no-check',
          ],
          { env: { TSNET_AGENT_SOCKET: socket } },
        ).ms;
        if (k > 0) forwards.push(f);
      }
      return times;
    });
    fs.rmSync(dir, { recursive: true, force: true });
    line(
      'library (NatEngine.change), median of 50',
      ms(median(lib)),
      `p90 ${ms(lib.sort((a, b) => a - b)[Math.floor(lib.length * 0.9)]!).trim()}`,
    );
    line(
      'CLI (tsnet service set-endpoints), median of 15',
      ms(median(cli)),
      `node -e 0 ${ms(median(node)).trim()}: CLI = node + ${(median(cli) - median(node)).toFixed(0)} ms`,
    );
    line(
      'CLI served by a running tsnet agent, median of 15',
      ms(median(viaAgent.result)),
      `node -e 0 ${ms(median(nodeBesideAgent)).trim()}: node + ${(median(viaAgent.result) - median(nodeBesideAgent)).toFixed(0)} ms; the agent served ${viaAgent.served} of 32, ${ms(median(viaAgent.inside)).trim()} p50 inside it`,
    );
    line(
      'CLI forward retarget served by the agent, median of 15',
      ms(median(forwards)),
      `node + ${(median(forwards) - median(nodeBesideAgent)).toFixed(0)} ms; ${ms(median(insideOf(viaAgent.log, 'put-forward'))).trim()} p50 inside the agent (set-endpoints: ${ms(median(insideOf(viaAgent.log, 'set-endpoints'))).trim()})`,
    );
  });
}

/** The times the agent's log gives for changes of one kind (the first of each left out: it loads the table). */
const insideOf = (log: string, kind: string): number[] =>
  [...log.matchAll(new RegExp(`^\\S+ nat: served .*\\(${kind}\\).*: ok in ([\\d.]+) ms$`, 'gm'))]
    .map((m) => Number(m[1]))
    .slice(1);

/** Peak RSS of a process that holds the table: a full sync of 10,000 x 5, then 50 changes. */
async function memory(): Promise<void> {
  await inFresh('bn-rss', async (ns) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-rss-'));
    const file = path.join(dir, 'services.json');
    fs.writeFileSync(file, JSON.stringify(services(N, EPS)));
    const script = path.join(__dirname, 'nat-rss.js');
    const r = run(process.execPath, [script, ns.name!, dir, file]);
    fs.rmSync(dir, { recursive: true, force: true });
    const { maxRssKiB } = JSON.parse(r.out) as { maxRssKiB: number };
    console.log('\nmemory');
    line(
      `peak RSS holding ${N} x ${EPS} (full sync, then 50 changes)`,
      `${(maxRssKiB / 1024).toFixed(0)} MiB`.padStart(10),
    );
  });
}

/** Total ms of `count` sequential connect + reply round trips to the real service's VIP, timed by the client (its process start left out). */
async function connectLatency(node: netns.NetNs, count: number): Promise<number> {
  const r = await request(node, 'tcp', '10.95.0.1', 80, { count, concurrency: 1 });
  if (r.ok !== count) throw new Error(`connect bench: ${r.fail} failures (${r.errors.join('; ')})`);
  return r.ms;
}

async function connect(): Promise<void> {
  const names = ['bn-conn', 'bn-conn-srv'];
  for (const n of names) netns.del(n);
  const [node, srv] = names.map((n) => netns.add(n)) as [netns.NetNs, netns.NetNs];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-conn-'));
  try {
    await bridge.ensure(node, 'br0', { addresses: ['10.99.0.1/24'] });
    await attach(node, srv, { bridge: 'br0', address: '10.99.0.2/24' });
    await route.add(node, { dst: '10.95.0.0/16', dev: 'br0' }); // a route for the VIP before OUTPUT DNAT, as a cluster's service CIDR has
    const server = await serve(srv, 'tcp', '10.99.0.2', 8080, 'real');
    try {
      const e = new NatEngine({ ns: node, stateDir: dir });
      // Three rounds of each table size, alternating, so a machine whose speed drifts slows both alike.
      const rounds = 3;
      let small = 0;
      let big = 0;
      for (let r = 0; r < rounds; r++) {
        await e.change([{ kind: 'replace-services', services: services(10, EPS) }]);
        small += await connectLatency(node, CONNECTS / rounds);
        await e.change([{ kind: 'replace-services', services: services(N, EPS) }]);
        big += await connectLatency(node, CONNECTS / rounds);
      }
      small /= CONNECTS;
      big /= CONNECTS;
      console.log(`\nconnect + reply to a VIP (netlink), mean of ${CONNECTS} in ${rounds} alternating rounds`);
      line('10 services', ms(small));
      line(`${N} services`, ms(big), `${(big / small).toFixed(2)}x`);
    } finally {
      await server.stop();
    }
  } finally {
    for (const h of [node, srv]) {
      h.close();
      netns.del(h.name!);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// --- iptables backend ----------------------------------------------------------

async function iptables(): Promise<void> {
  console.log(
    `\niptables backend, ${N} x ${EPS} from an empty table: tsnet (CLI) against raw iptables-restore of the same payload (sorted chains)`,
  );
  const svcs = services(N, EPS);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-ipt-'));
  const file = path.join(dir, 'services.json');
  fs.writeFileSync(file, JSON.stringify(svcs));
  try {
    for (const mode of ['nft', 'legacy'] as const) {
      // A rule of the mode in the namespace makes tsnet pick it (as on a node whose rules are legacy).
      const seed = (ns: netns.NetNs) =>
        run(systemTool('ip'), [
          'netns',
          'exec',
          ns.name!,
          systemTool(`iptables-${mode}`),
          '-t',
          'nat',
          '-A',
          'OUTPUT',
          '-d',
          '192.0.2.1/32',
          '-j',
          'RETURN',
        ]);
      const tsnet = await inFresh(`bn-ipt-${mode}`, (ns) => {
        seed(ns);
        return run(process.execPath, [
          CLI,
          '--netns',
          ns.name!,
          '--backend',
          'iptables',
          '--state-dir',
          path.join(dir, mode),
          'service',
          'apply',
          '--file',
          file,
        ]).ms;
      });
      // What that full sync wrote: the whole payload, from nothing.
      const payload = restorePayload(
        iptablesRender(normalizeState({ services: svcs, rules: [] }), 4),
        undefined,
      ).payload;
      const raw = await inFresh(`bn-ipt-${mode}-raw`, (ns) => {
        seed(ns);
        return run(
          systemTool('ip'),
          ['netns', 'exec', ns.name!, systemTool(`iptables-${mode}-restore`), '-w', '5', '--noflush'],
          { input: payload },
        ).ms;
      });
      line(`iptables-${mode}: tsnet service apply (CLI)`, ms(tsnet), `${(tsnet / raw).toFixed(2)}x raw`);
      line(`iptables-${mode}: raw iptables-${mode}-restore --noflush`, ms(raw));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  assertSandbox();
  console.log(`NAT at scale (kernel ${os.release()}, ${os.cpus().length} CPUs, Node ${process.version})`);
  if (!skip.has('layouts')) await layouts();
  if (!skip.has('full')) await fullSyncs();
  if (!skip.has('change')) await oneChange();
  if (!skip.has('memory')) await memory();
  if (!skip.has('connect')) await connect();
  if (!skip.has('iptables')) await iptables();
}

main().catch((err) => {
  console.error(`bench: ${(err as Error).message}`);
  process.exitCode = 1;
});
