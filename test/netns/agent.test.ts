/**
 * `tsnet agent` and the CNI shim: what the CNI suite (run through the agent
 * in cni-agent.test.ts) does not cover. Namespace safety, access control,
 * faults (agent killed mid-ADD, restarted, past the deadline), NAT
 * convergence after a flush, and standalone vs agent giving the same result.
 * Each test has its own node namespace with its own agent.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as link from '../../src/link';
import type * as netns from '../../src/netns';
import { native } from '../../src/native';
import { serve, request } from '../../src/demo/traffic';
import { CLI, Topology, run, tsnet } from '../harness/fixtures';
import {
  AgentProcess,
  CniInstall,
  leftovers,
  masqueradeRule,
  natRules,
  nodeWithUplink,
  type CniCall,
} from '../harness/cni';
import { eventually, orElse } from '../harness/eventually';

const topo = new Topology('agt');
const cni = new CniInstall('agt');
test.after.always(async () => {
  await cni.cleanup();
  topo.cleanup();
  if (readableClient)
    fs.rmSync(path.dirname(path.dirname(path.dirname(readableClient))), { recursive: true, force: true });
});

const CLIENT = path.join(__dirname, '..', 'harness', 'agent-client.js');
let seq = 0;

/** A node namespace (with an uplink to "ext") and a network config for it. */
async function node(extra: Record<string, unknown> = {}) {
  const n = ++seq;
  const { host, ext, dir, nodeIp } = await nodeWithUplink(topo, cni, n, '10.251');
  const network = `anet${n}`;
  const conf = {
    cniVersion: '1.1.0',
    name: network,
    type: 'tsnet-bridge',
    bridge: `abr${n}`,
    isGateway: true,
    isDefaultGateway: true,
    ipMasq: true,
    stateDir: path.join(dir, 'state'),
    ipam: { type: 'tsnet-ipam', subnet: `10.${150 + n}.0.0/24`, dataDir: path.join(dir, 'ipam') },
    ...extra,
  } as Record<string, any>;
  const container = (name: string) => topo.ns(`n${n}${name}`);
  const call = (
    command: string,
    c: netns.NetNs | undefined,
    cid: string,
    o: { conf?: unknown; env?: Record<string, string | undefined>; on?: netns.NetNs } = {},
  ) =>
    cni.call(o.on ?? host, 'tsnet-bridge', command, o.conf ?? conf, {
      containerId: cid,
      ...(c ? { netns: c.path } : {}),
      ifname: 'eth0',
      env: o.env ?? {},
    });
  const left = () =>
    leftovers(host, { ipamDir: conf.ipam.dataDir, stateDir: conf.stateDir, network, match: `10.${150 + n}.` });
  /** Holds the network's IPAM lock (host-local's `lock` file), so an ADD stops half-way; returns the release. */
  const holdIpamLock = () => {
    const file = path.join(conf.ipam.dataDir, network, 'lock');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    if (!native().tryLock(fd)) throw new Error(`${file} is locked already`);
    return () => fs.closeSync(fd);
  };
  return { n, host, ext, conf, network, container, call, left, holdIpamLock, nodeIp };
}

function ok(t: ExecutionContext, r: CniCall, what: string) {
  t.is(r.status, 0, `${what}: ${r.stdout}${r.stderr}`);
}

const ipOf = (result: any) => (result.ips as { address: string }[]).map((i) => i.address.split('/')[0]!);
const nothingLeft = (l: ReturnType<typeof leftovers>) => [
  l.veths.filter((v) => !v.includes('uplink')).length,
  l.reservations,
  l.records,
  l.rules,
];

/** GET /metrics from inside `ns` (the listener is on the node's loopback). */
function metrics(ns: netns.NetNs, address: string): string {
  const r = ns.spawnSync(
    process.execPath,
    ['-e', `fetch('http://${address}/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))`],
    {
      encoding: 'utf8',
    },
  );
  if (r.status !== 0) throw new Error(`metrics from ${address}: ${String(r.stderr)}`);
  return String(r.stdout);
}
/** A series' value in an exposition text; labels in any order (`name{a="1",b="2"}`). */
const sample = (text: string, series: string) => {
  const canonical = (s: string) => s.replace(/\{(.*)\}/, (_, l: string) => `{${l.split(',').sort().join(',')}}`);
  const want = canonical(series);
  const line = text.split('\n').find((l) => !l.startsWith('#') && canonical(l.slice(0, l.lastIndexOf(' '))) === want);
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
};

/**
 * The raw client where any uid can read it: the checkout may be a directory
 * only root can enter (a clone in /root, a mktemp -d), and the uid-65534
 * client must fail at the socket, not at reading its own script.
 */
let readableClient: string | undefined;
function clientScript(): string {
  if (!readableClient) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-agent-client-'));
    fs.chmodSync(dir, 0o755);
    // The script and the modules it takes, in the same relative places as under dist/.
    const dist = path.join(__dirname, '..', '..');
    for (const rel of [
      'test/harness/agent-client.js',
      'src/agent/protocol.js',
      'src/cni/defaults.js',
      'src/json.js',
      'src/nat/change-json.js',
    ]) {
      fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true, mode: 0o755 });
      fs.copyFileSync(path.join(dist, rel), path.join(dir, rel));
      fs.chmodSync(path.join(dir, rel), 0o644);
    }
    for (const d of ['test', 'test/harness', 'src', 'src/agent', 'src/cni', 'src/nat'])
      fs.chmodSync(path.join(dir, d), 0o755);
    readableClient = path.join(dir, 'test/harness/agent-client.js');
  }
  return readableClient;
}

/** Runs the raw client inside `ns` (optionally as another uid). */
function client(
  ns: netns.NetNs,
  socket: string,
  req?: object,
  uid?: number,
): { error?: string; hello?: string; reply?: any } {
  const script = uid === undefined ? CLIENT : clientScript();
  const r = ns.spawnSync(process.execPath, [script, socket, ...(req ? [JSON.stringify(req)] : [])], {
    encoding: 'utf8',
    cwd: path.dirname(script),
    ...(uid !== undefined ? { uid, gid: uid } : {}),
    timeout: 20_000,
  });
  const out = String(r.stdout);
  if (!out)
    throw new Error(
      `the raw client${uid !== undefined ? ` (uid ${uid})` : ''} printed nothing: exit ${r.status}, ${String(r.stderr).trim()}`,
    );
  return JSON.parse(out) as { error?: string; hello?: string; reply?: any };
}

test('the socket is root-only (0600 in a 0700 directory); a non-root peer is refused by SO_PEERCRED even with loosened modes', async (t) => {
  const nd = await node();
  const agent = await cni.startAgent(nd.host, ['--metrics', '127.0.0.1:0']);
  const { metrics: address } = await agent.ready;
  t.is(fs.statSync(agent.socket).mode & 0o777, 0o600);
  t.is(fs.statSync(path.dirname(agent.socket)).mode & 0o777, 0o700);
  t.true(fs.statSync(agent.socket).isSocket());

  t.regex(
    client(nd.host, agent.socket).hello ?? '',
    /^tsnet-agent\/1 \d+ \d+$/,
    'root in the same namespace is greeted',
  );
  t.is(client(nd.host, agent.socket, undefined, 65534).error, 'EACCES', 'uid 65534 cannot reach the socket');

  // Loosen every mode on the way (a misconfiguration): the agent's own check still refuses.
  const opened: [string, number][] = [];
  for (let p = path.dirname(agent.socket); p !== path.dirname(p) && p.startsWith(cni.dir); p = path.dirname(p))
    opened.push([p, fs.statSync(p).mode & 0o777]);
  opened.push([cni.dir, fs.statSync(cni.dir).mode & 0o777]);
  try {
    for (const [p] of opened) fs.chmodSync(p, 0o755);
    fs.chmodSync(agent.socket, 0o666);
    const req = { plugin: 'tsnet-bridge', netns: 'x', deadlineMs: 1000, env: { CNI_COMMAND: 'VERSION' }, stdin: '{}' };
    const r = client(nd.host, agent.socket, req, 65534);
    t.regex(r.hello ?? '', /^deny peer uid 65534 \(pid \d+\) is not root$/);
    t.is(r.reply, undefined, 'nothing served');
    t.is(sample(metrics(nd.host, address!), 'tsnet_agent_rejected_connections_total{reason="uid"}'), 1);
  } finally {
    for (const [p, mode] of opened) fs.chmodSync(p, mode);
    fs.chmodSync(agent.socket, 0o600);
  }

  // Refusals at start: a directory others can enter, and a socket a live agent serves.
  const loose = fs.mkdtempSync(path.join(cni.dir, 'loose-'));
  fs.chmodSync(loose, 0o755);
  const bad = nd.host.spawnSync(
    process.execPath,
    [CLI, 'agent', '--socket', path.join(loose, 'a.sock'), '--metrics', ''],
    { encoding: 'utf8' },
  );
  t.is(bad.status, 1);
  t.regex(String(bad.stderr), /^tsnet: socket directory .* must be owned by 0 with mode 0700 \(it is 755, uid 0\)/);
  t.is(String(bad.stderr).trim().split('\n').length, 1);
  const twice = nd.host.spawnSync(process.execPath, [CLI, 'agent', '--socket', agent.socket, '--metrics', ''], {
    encoding: 'utf8',
  });
  t.is(twice.status, 1);
  t.regex(String(twice.stderr), /another agent is serving/);
  t.regex(client(nd.host, agent.socket).hello ?? '', /^tsnet-agent\/1 /, 'the running agent is untouched');
});

test('a malformed call costs that call, not the agent: null config, unknown plugin, garbage frames', async (t) => {
  const nd = await node();
  const agent = await cni.startAgent(nd.host);
  const id = client(nd.host, agent.socket).hello!.split(' ').slice(1).join(' ');
  const base = { plugin: 'tsnet-bridge', netns: id, deadlineMs: 5000 };
  const nul = client(nd.host, agent.socket, {
    ...base,
    env: {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'x',
      CNI_NETNS: '/proc/self/ns/net',
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/x',
    },
    stdin: 'null',
  });
  t.is(nul.reply?.exitCode, 1);
  t.is(JSON.parse(nul.reply?.stdout ?? '{}').code, 6, nul.reply?.stdout);
  t.regex(
    client(nd.host, agent.socket, { ...base, plugin: 'tsnet-other', env: {}, stdin: '{}' }).reply?.deny ?? '',
    /unknown plugin/,
  );
  const version = client(nd.host, agent.socket, {
    ...base,
    env: { CNI_COMMAND: 'VERSION' },
    stdin: '{"cniVersion":"1.0.0"}',
  });
  t.is(version.reply?.exitCode, 0, 'still serving');
  t.is(JSON.parse(version.reply!.stdout).cniVersion, '1.0.0');
  t.is(agent.child.exitCode, null);
});

test("a shim called in another network namespace does not use the agent: it falls back, and nothing is made in the agent's namespace", async (t) => {
  const nd = await node();
  const agent = await cni.startAgent(nd.host, ['--metrics', '127.0.0.1:0']);
  const { metrics: address } = await agent.ready;
  const nested = await topo.ns(`nested${nd.n}`);
  const c = await nd.container('x');
  const env = { TSNET_AGENT_SOCKET: agent.socket };
  const add = await nd.call('ADD', c, 'x1', { on: nested, env });
  ok(t, add, 'ADD from the nested namespace');
  t.regex(
    add.stderr,
    /not using the agent at .* \(deny pid \d+ is in network namespace \d+ \d+, the agent in \d+ \d+\): running standalone/,
  );
  t.truthy(await link.get(nested, nd.conf.bridge), "the bridge is in the caller's namespace");
  t.falsy(await link.get(nd.host, nd.conf.bridge), "and not in the agent's");
  t.deepEqual(
    run('ip', ['-n', nd.host.name!, '-o', 'link', 'show', 'type', 'veth'])
      .stdout.trim()
      .split('\n')
      .filter((l) => !l.includes('uplink')),
    [],
  );
  t.deepEqual(natRules(nd.host), [], "no rule in the agent's namespace");
  t.regex(
    natRules(nested).join('\n'),
    masqueradeRule(ipOf(add.json)[0]!, nd.conf.bridge),
    "the masquerade rule is in the caller's",
  );
  t.is(
    sample(metrics(nd.host, address!), 'tsnet_cni_requests_total{command="ADD",plugin="tsnet-bridge",result="ok"}'),
    undefined,
    'the agent served nothing',
  );

  // A client that lies about its namespace is refused too: the agent asks the kernel (SO_PEERCRED pid -> /proc/PID/ns/net).
  const hello = client(nd.host, agent.socket).hello!;
  const lie = client(nested, agent.socket, {
    plugin: 'tsnet-bridge',
    netns: hello.split(' ').slice(1).join(' '),
    deadlineMs: 5000,
    env: { CNI_COMMAND: 'VERSION' },
    stdin: '{}',
  });
  t.regex(lie.hello ?? '', /^deny pid \d+ is in network namespace/);
  t.true((sample(metrics(nd.host, address!), 'tsnet_agent_rejected_connections_total{reason="netns"}') ?? 0) >= 2);

  ok(t, await nd.call('DEL', c, 'x1', { on: nested, env }), 'DEL from the nested namespace');
  t.falsy(run('ip', ['-n', nested.name!, '-o', 'link', 'show', 'type', 'veth']).stdout.trim());
});

test('agent SIGKILLed in the middle of ADD: the shim answers code 11, and DEL or GC afterwards leave nothing', async (t) => {
  const nd = await node({
    capabilities: { portMappings: true },
    runtimeConfig: { portMappings: [{ hostPort: 19080, containerPort: 80, protocol: 'tcp' }] },
  });
  for (const cleanup of ['DEL', 'GC'] as const) {
    const agent = await cni.startAgent(nd.host);
    const c = await nd.container(`k${cleanup}`);
    const cid = `kill-${cleanup}`;
    const release = nd.holdIpamLock();
    try {
      const p = cni.start(nd.host, 'tsnet-bridge', 'ADD', nd.conf, { containerId: cid, netns: c.path, ifname: 'eth0' });
      // The ADD is under way in the agent once the host veth exists (it is made before IPAM).
      const underWay = () =>
        run('ip', ['-n', nd.host.name!, '-o', 'link', 'show', 'type', 'veth']).stdout.includes('veth');
      await eventually(underWay, {
        ms: 5000,
        every: 50,
        what: 'the ADD reaching the agent (a host veth): the kill below would test nothing',
      });
      await agent.stop('SIGKILL');
      const r = await p.done;
      t.is(r.status, 1);
      t.is(r.json?.code, 11, r.stdout);
      t.regex(r.json?.msg ?? '', /went away in the middle of the request/);
    } finally {
      release();
    }
    // The agent is gone: these calls fall back to the standalone plugin.
    if (cleanup === 'DEL') ok(t, await nd.call('DEL', c, cid), 'DEL after the kill');
    else
      ok(
        t,
        await nd.call('GC', undefined, '', {
          conf: { ...nd.conf, 'cni.dev/valid-attachments': [] },
          env: { CNI_CONTAINERID: undefined, CNI_IFNAME: undefined },
        }),
        'GC after the kill',
      );
    t.deepEqual(nothingLeft(nd.left()), [0, [], [], []], `after ${cleanup}`);
  }
  // And at arbitrary points of an ADD: the shim reports success or 11, never hangs; DEL cleans up either way.
  // Each kill is told by where it landed (`landed`); one at least must land while the agent has the call in hand.
  const seen: Record<Landed, number[]> = { before: [], 'in flight': [], answered: [] };
  let kills = 0;
  const killAt = async (delay: number) => {
    const cid = `r${kills++}`;
    const agent = await cni.startAgent(nd.host);
    const c = await nd.container(cid);
    const p = cni.start(nd.host, 'tsnet-bridge', 'ADD', nd.conf, { containerId: cid, netns: c.path, ifname: 'eth0' });
    await new Promise((r) => setTimeout(r, delay));
    await agent.stop('SIGKILL');
    const r = await p.done;
    t.true(r.status === 0 || r.json?.code === 11, `kill at ${delay} ms: ${r.stdout}`);
    await agent.closed; // all of its log: whether it answered
    const where = landed(r, agent, cid);
    if (where) seen[where].push(delay);
    const del = await nd.call('DEL', c, cid);
    ok(t, del, `DEL after a kill at ${delay} ms`);
    const natFile = path.join(nd.conf.stateDir, 'nat.json');
    t.deepEqual(
      nothingLeft(nd.left()),
      [0, [], [], []],
      `after a kill at ${delay} ms (ADD: ${r.stdout.trim()}; agent: ${agent.log.trim().split('\n').slice(-3).join(' | ')}; DEL: ${del.stderr}; nat.json: ${fs.existsSync(natFile) ? fs.readFileSync(natFile, 'utf8').replace(/\s+/g, ' ').slice(0, 1500) : 'none'})`,
    );
  };
  for (const delay of [5, 15, 30, 60]) await killAt(delay);
  // Where a delay lands depends on the machine (an ADD here takes tens of ms, more under load). Should none of
  // them have caught the call in flight, aim between the latest kill that came too early and the earliest that
  // came after the answer (doubling the latest when all came too early), a few times.
  for (let extra = 0; extra < 4 && seen['in flight'].length === 0; extra++) {
    const early = Math.max(0, ...seen.before);
    const late = seen.answered.length ? Math.min(...seen.answered) : 2 * early;
    await killAt(Math.round((early + late) / 2));
  }
  const summary = Object.entries(seen)
    .map(([where, at]) => `${where}: ${at.length ? at.map((ms) => `${ms} ms`).join(', ') : 'none'}`)
    .join('; ');
  t.log(`where the kills landed: ${summary}`);
  t.true(seen['in flight'].length >= 1, `a kill while the agent had the ADD in hand (${summary})`);
});

/** Where a kill of the agent landed in a call through it: before it took the call, with the call in hand, after it answered. */
type Landed = 'before' | 'in flight' | 'answered';

/**
 * Where a SIGKILL of `agent` landed in the shim's call `r` (container `cid`), from the shim's answer and the
 * agent's whole log (read after `closed`); undefined for an answer that is neither success nor code 11.
 * The agent logs a call before it replies: a success the agent never logged was the standalone plugin's,
 * the shim falling back because the agent was gone before it had the whole request.
 */
function landed(r: CniCall, agent: AgentProcess, cid: string): Landed | undefined {
  if (r.status === 1 && r.json?.code === 11 && /went away in the middle of the request/.test(r.json?.msg ?? ''))
    return 'in flight';
  if (r.status !== 0) return undefined;
  return new RegExp(`cni: tsnet-bridge ADD \\S+ ${cid} eth0: ok in `).test(agent.log) ? 'answered' : 'before';
}

test('a restarted agent serves again with no lost reservation, and the standalone plugin can take over from it', async (t) => {
  const nd = await node();
  const cs = await Promise.all(['a', 'b', 'c', 'd'].map((x) => nd.container(x)));
  const first = await cni.startAgent(nd.host, ['--metrics', '127.0.0.1:0']);
  const ips: string[] = [];
  for (const [i, c] of cs.slice(0, 2).entries()) {
    const r = await nd.call('ADD', c, `r${i}`);
    ok(t, r, `ADD r${i} via the first agent`);
    ips.push(ipOf(r.json)[0]!);
  }
  const { metrics: address } = await first.ready;
  t.is(
    sample(metrics(nd.host, address!), 'tsnet_cni_requests_total{command="ADD",plugin="tsnet-bridge",result="ok"}'),
    2,
    'served by the agent',
  );
  await first.stop('SIGKILL');
  t.true(fs.existsSync(first.socket), 'a killed agent leaves its socket file');

  const second = new AgentProcess(
    nd.host,
    first.socket,
    ['--metrics', '127.0.0.1:0'],
    path.join(path.dirname(first.socket), 'state'),
  );
  cni.agents.set(nd.host.name!, second);
  const { metrics: address2 } = await second.ready;
  const r2 = await nd.call('ADD', cs[2], 'r2');
  ok(t, r2, 'ADD via the restarted agent');
  ips.push(ipOf(r2.json)[0]!);
  t.is(new Set(ips).size, 3, `distinct addresses ${ips.join(' ')}`);
  ok(t, await nd.call('DEL', cs[0], 'r0'), 'DEL of an attachment the first agent made');
  t.is(
    sample(metrics(nd.host, address2!), 'tsnet_cni_requests_total{command="DEL",plugin="tsnet-bridge",result="ok"}'),
    1,
  );
  t.deepEqual(nd.left().reservations.sort(), [ips[1], ips[2]].sort());

  await second.stop('SIGTERM');
  t.false(fs.existsSync(first.socket), 'a stopped agent removes its socket');
  const r3 = await nd.call('ADD', cs[3], 'r3');
  ok(t, r3, 'ADD standalone after the agent stopped');
  t.false(ips.includes(ipOf(r3.json)[0]!), 'standalone does not reuse a reservation the agent made');
  for (const [i, c] of cs.entries()) if (i > 0) ok(t, await nd.call('DEL', c, `r${i}`), `DEL r${i}`);
  t.deepEqual(nothingLeft(nd.left()), [0, [], [], []]);
});

test("/metrics is Prometheus exposition that promtool accepts: the CNI counters and sync histograms by kube-proxy's names, and the process metrics", async (t) => {
  const nd = await node();
  const agent = await cni.startAgent(nd.host, ['--metrics', '127.0.0.1:0']);
  const { metrics: address } = await agent.ready;
  const c = await nd.container('m');
  ok(t, await nd.call('ADD', c, 'm0'), 'ADD');
  ok(t, await nd.call('DEL', c, 'm0'), 'DEL');
  const text = metrics(nd.host, address!);
  // promtool (Prometheus' own parser and linter): a parse error exits 1; naming-convention findings are listed (exit 3).
  // prom-client's default gauges nodejs_active_{handles,requests,resources}_total carry a _total promtool flags:
  // their names are prom-client's (and the dashboards'), the only findings allowed.
  const check = run('promtool', ['check', 'metrics'], { input: text });
  const findings = (check.stdout + check.stderr)
    .split('\n')
    .filter(
      (l) =>
        l.trim() &&
        !/^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/.test(
          l,
        ),
    );
  t.deepEqual(findings, [], 'promtool found nothing in our metrics');
  t.true(check.status === 0 || check.status === 3, `promtool parsed it: exit ${check.status}`);
  t.is(sample(text, 'tsnet_cni_requests_total{command="ADD",plugin="tsnet-bridge",result="ok"}'), 1);
  t.is(sample(text, 'tsnet_cni_requests_total{command="DEL",plugin="tsnet-bridge",result="ok"}'), 1);
  t.is(sample(text, 'tsnet_cni_request_duration_seconds_count{command="ADD"}'), 1);
  t.is(sample(text, 'tsnet_cni_requests_in_flight'), 0);
  t.true(sample(text, 'tsnet_sync_proxy_rules_duration_seconds_count')! >= 2, 'the ADD and the DEL synced NAT rules');
  t.true(sample(text, 'tsnet_sync_proxy_rules_last_timestamp_seconds')! > Date.now() / 1000 - 120);
  for (const name of [
    'tsnet_sync_full_proxy_rules_duration_seconds',
    'tsnet_sync_partial_proxy_rules_duration_seconds',
  ])
    t.regex(text, new RegExp(`^# TYPE ${name} histogram$`, 'm'));
  // Node's default process metrics: CPU, RSS, event-loop lag, GC, handles.
  for (const name of [
    'process_cpu_seconds_total',
    'process_resident_memory_bytes',
    'nodejs_eventloop_lag_seconds',
    'nodejs_gc_duration_seconds',
    'nodejs_active_handles_total',
  ])
    t.regex(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
  t.true(sample(text, 'process_resident_memory_bytes')! > 10e6);
});

test('a call past its deadline returns error 11 instead of hanging the runtime; the DEL after it cleans up', async (t) => {
  const nd = await node();
  await cni.startAgent(nd.host);
  const c = await nd.container('slow');
  const release = nd.holdIpamLock();
  let r: CniCall;
  try {
    r = await nd.call('ADD', c, 'slow', { env: { TSNET_CNI_TIMEOUT_MS: '1500' } });
  } finally {
    release();
  }
  t.is(r.status, 1);
  t.is(r.json?.code, 11, r.stdout);
  t.regex(r.json?.msg ?? '', /1500 ms/);
  t.true(r.ms >= 1000 && r.ms < 6000, `answered after ${r.ms.toFixed(0)} ms: ${r.stdout} ${r.stderr}`);
  // The ADD finishes in the agent once the lock is free; the DEL is queued behind it and removes it all.
  ok(t, await nd.call('DEL', c, 'slow'), 'DEL');
  t.deepEqual(nothingLeft(nd.left()), [0, [], [], []]);
});

/**
 * A container serving HTTP behind a port mapping (hostPort -> 80) on a node
 * with its own agent (`agentArgs`): checks the mapping answers, runs `body`,
 * then DEL must leave nothing.
 */
async function behindPortMapping(
  t: ExecutionContext,
  hostPort: number,
  extra: Record<string, unknown>,
  agentArgs: string[],
  body: (x: {
    nd: Awaited<ReturnType<typeof node>>;
    agent: AgentProcess;
    answersAgain: (since: number, limitMs: number) => Promise<number | undefined>;
  }) => Promise<void>,
) {
  const nd = await node({
    ...extra,
    capabilities: { portMappings: true },
    runtimeConfig: { portMappings: [{ hostPort, containerPort: 80, protocol: 'tcp' }] },
  });
  const agent = await cni.startAgent(nd.host, agentArgs);
  const c = await nd.container('web');
  const add = await nd.call('ADD', c, 'web');
  ok(t, add, 'ADD with a port mapping');
  const srv = await serve(c, 'http', ipOf(add.json)[0]!, 80, 'web');
  /** Polls the mapping from beyond the node; the ms since `since` when it answered, undefined if not within `limitMs`. */
  const answersAgain = (since: number, limitMs: number) =>
    eventually(
      async () =>
        (await request(nd.ext, 'http', nd.nodeIp, hostPort, { timeoutMs: 200 })).ok === 1 && Date.now() - since,
      { ms: since + limitMs - Date.now(), what: `the mapping ${nd.nodeIp}:${hostPort} answering` },
    ).catch(orElse(undefined));
  try {
    t.deepEqual((await request(nd.ext, 'http', nd.nodeIp, hostPort)).replies, { web: 1 }, 'the mapping answers');
    await body({ nd, agent, answersAgain });
  } finally {
    await srv.stop();
  }
  ok(t, await nd.call('DEL', c, 'web'), 'DEL');
  t.deepEqual(nothingLeft(nd.left()), [0, [], [], []]);
}

for (const backend of ['iptables', 'nft', 'netlink'] as const) {
  test(`${backend}: rules flushed while the agent runs are back within two resync intervals, and the metric shows it`, (t) =>
    behindPortMapping(
      t,
      18090,
      { natBackend: backend },
      ['--metrics', '127.0.0.1:0', '--resync-interval', '1s'],
      async ({ nd, agent, answersAgain }) => {
        const { metrics: address } = await agent.ready;
        const before = sample(metrics(nd.host, address!), 'tsnet_sync_proxy_rules_resync_after_flush_total') ?? 0;
        const t0 = Date.now();
        const flushed =
          backend === 'iptables'
            ? run('ip', ['netns', 'exec', nd.host.name!, 'iptables', '-t', 'nat', '-F'])
            : run('ip', ['netns', 'exec', nd.host.name!, 'nft', 'flush', 'ruleset']);
        t.is(flushed.status, 0, flushed.stderr);
        // The claim is checked on the agent's log below; the client only has to see it, and under a full parallel run a fresh client process per request is slow.
        const ms = await answersAgain(t0, 15_000);
        t.truthy(ms, 'the mapping answers again');
        // The agent's log says when the rules were back; the client's polling adds its own granularity on top.
        const resync = /^(\S+) nat: resync after flush .*: full .* in [\d.]+ ms$/m.exec(agent.log);
        t.truthy(resync, agent.log);
        const restoredMs = Date.parse(resync![1]!) - t0;
        t.true(restoredMs <= 2 * 1000, `rules back ${restoredMs} ms after the flush (two intervals: 2000 ms)`);
        t.log(`answering again ${ms} ms after the flush (the client polls with a fresh process per request)`);
        const text = metrics(nd.host, address!);
        t.true(sample(text, 'tsnet_sync_proxy_rules_resync_after_flush_total')! > before, 'resync counted');
        t.true(
          sample(text, 'tsnet_sync_full_proxy_rules_duration_seconds_count')! >= 2,
          'first sync and the resync were full',
        );
      },
    ));
}

test('a chain emptied by hand under an intact canary is repaired by the periodic full sync', (t) =>
  behindPortMapping(
    t,
    18095,
    {},
    ['--resync-interval', '500ms', '--full-sync-interval', '2s'],
    async ({ nd, agent, answersAgain }) => {
      const t0 = Date.now();
      const inNode = (...args: string[]) => run('ip', ['netns', 'exec', nd.host.name!, 'nft', ...args]);
      const emptied = inNode('flush', 'chain', 'ip', 'tsnet', 'dnat-rules');
      t.is(emptied.status, 0, emptied.stderr);
      t.regex(
        inNode('list', 'chain', 'ip', 'tsnet', 'canary').stdout,
        /tsnet canary/,
        'the canary is intact: a flush check sees nothing',
      );
      t.truthy(await answersAgain(t0, 8000), 'the mapping answers again');
      const full = [...agent.log.matchAll(/^(\S+) nat: sync \S+: full /gm)]
        .map((m) => Date.parse(m[1]!))
        .filter((ts) => ts >= t0);
      t.true(full.length >= 1, `a periodic full sync after the edit: ${agent.log}`);
    },
  ));

test('standalone and agent give identical results: same addresses, routes, reservations and rules', async (t) => {
  const shape = async (useAgent: boolean) => {
    const nd = await node();
    if (useAgent) await cni.startAgent(nd.host);
    // Same network everywhere except the namespaces: the name, bridge and subnet of the first node.
    const conf = {
      ...nd.conf,
      name: 'same',
      bridge: 'samebr',
      ipam: { ...nd.conf.ipam, subnet: '10.199.0.0/24' },
      capabilities: { portMappings: true },
    };
    const env = useAgent ? {} : { TSNET_AGENT_SOCKET: '' };
    let served = 0;
    const results: unknown[] = [];
    for (const [i, pm] of [[], [{ hostPort: 18100, containerPort: 80, protocol: 'tcp' }], []].entries()) {
      const c = await nd.container(`s${i}`);
      const r = await nd.call('ADD', c, `s${i}`, { conf: { ...conf, runtimeConfig: { portMappings: pm } }, env });
      ok(t, r, `ADD s${i} (${useAgent ? 'agent' : 'standalone'})`);
      if (r.servedBy === 'agent') served++;
      results.push(JSON.parse(r.stdout.replace(/"mac":"[0-9a-f:]+"/g, '"mac":"-"').replaceAll(c.path, 'NETNS')));
    }
    const rules = natRules(nd.host).map((l) => l.replace(/\[\d+:\d+\]|counter packets \d+ bytes \d+/g, ''));
    const reservations = fs.readdirSync(path.join(conf.ipam.dataDir, 'same')).sort();
    const hostAddrs = run('ip', ['-n', nd.host.name!, '-o', '-4', 'addr', 'show', 'dev', 'samebr'])
      .stdout.replace(/^\d+: /, '')
      .trim();
    return { results, rules, reservations, hostAddrs, served };
  };
  const a = await shape(false);
  const b = await shape(true);
  t.is(a.served, 0, 'the standalone run was standalone');
  t.is(b.served, 3, 'the agent served all three ADDs (no fallback to the standalone plugin)');
  t.true(a.rules.length > 5);
  t.deepEqual(b.results, a.results);
  t.deepEqual(b.rules, a.rules);
  t.deepEqual(b.reservations, a.reservations);
  t.deepEqual(b.hostAddrs, a.hostAddrs);
});

test('a SIGTERM right after the ready line (a supervisor stopping a fresh agent) stops it cleanly: exit 0, socket removed, 20 of 20', async (t) => {
  const nd = await node();
  // The race is between the agent's ready line and its signal handler: two busy loops (ours, stopped by pid) make
  // the agent lose the CPU right after writing, as on a loaded node.
  const burners = [0, 1].map(() => spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  try {
    for (let i = 0; i < 20; i++) {
      const dir = fs.mkdtempSync(path.join(cni.dir, 'sig-'));
      fs.chmodSync(dir, 0o700);
      const a = new AgentProcess(nd.host, path.join(dir, 'agent.sock'), ['--metrics', ''], path.join(dir, 'state'));
      await a.ready;
      t.is(await a.stop(), 0, `run ${i}: ${a.log}`);
      t.false(fs.existsSync(a.socket), `run ${i}: the socket is removed`);
    }
  } finally {
    for (const b of burners) b.kill('SIGKILL');
  }
});

test('tsnet agent: bad flags are one-line errors', (t) => {
  for (const [args, re] of [
    [['--resync-interval', 'soon'], /invalid duration "soon"/],
    [['--resync-interval', '5ms'], /too short/],
    [['--metrics', 'nowhere'], /invalid --metrics address/],
  ] as const) {
    const r = tsnet('agent', '--socket', path.join(cni.dir, 'never', 'a.sock'), ...args);
    t.is(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
    t.is(r.stderr.trim().split('\n').length, 1);
  }
  t.false(fs.existsSync(path.join(cni.dir, 'never')), 'nothing created');
});
