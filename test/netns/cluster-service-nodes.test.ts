/**
 * Cluster services on the nodes (issue 26): one desired state in etcd that
 * every node's agent programs. A real 3-member etcd, nodes as namespaces on
 * an underlay bridge with an agent each, pods on every node, real TCP
 * through the VIPs from every node. `nft -a` (rule handles) observes that
 * what did not change is not rewritten; ip and nft are observers only.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import type * as netns from '../../src/netns';
import { eventually } from '../harness/eventually';
import { run, tsnet } from '../harness/fixtures';
import { request, serve } from '../../src/demo/traffic';
import { addPod, clusterFile, whoAmI, whoAmIServer, type TestCluster } from '../harness/cluster';

const { s, etcd, rig } = clusterFile(test, 'csn', 24100);

interface Pod {
  ns: netns.NetNs;
  ip: string;
}

/** A cluster of three host-gw nodes under /t/NAME, a pod on each answering with its name (pod1..pod3). */
async function nodesWithPods(
  t: ExecutionContext,
  name: string,
  net: number,
  agentArgs: string[] = [],
): Promise<{ c: TestCluster; pods: Pod[] }> {
  const c = await rig.cluster(t, name, net, 3, ['--network', `10.${net}.0.0/16`, '--backend', 'host-gw'], agentArgs);
  await rig.converged(c);
  const pods: Pod[] = [];
  for (const [i, n] of c.nodes.entries()) pods.push(await addPod(s.topo, n, `${name}-p${i + 1}`, 10));
  for (const [i, p] of pods.entries()) s.servers.push(await serve(p.ns, 'tcp', p.ip, 8080, `pod${i + 1}`));
  return { c, pods };
}

/** `tsnet --etcd URLS service ...` under the cluster's prefix. */
function store(c: TestCluster, ...args: string[]) {
  return tsnet('--etcd', etcd.urls, 'service', ...args, '--prefix', c.prefix);
}

function storeOk(c: TestCluster, ...args: string[]): void {
  const r = store(c, ...args);
  if (r.status !== 0) throw new Error(`service ${args.join(' ')}: ${r.stderr}`);
}

/** The CLI acting on node i (its namespace and its agent's state directory). */
const on = (c: TestCluster, i: number, ...args: string[]) =>
  tsnet('-n', c.nodes[i]!.ns.name!, '--state-dir', c.stateDirs[i]!, ...args);

/** Who answers `count` connections to VIP:80 from each pod: one record of replies per pod. */
const repliesFrom = (pods: Pod[], vip: string, count = 20) =>
  Promise.all(pods.map(async (p) => (await request(p.ns, 'tcp', vip, 80, { count, timeoutMs: 1000 })).replies));

/** Until every pod's connections to VIP:80 are answered as `ok` says. */
async function everyPod(pods: Pod[], vip: string, ok: (r: Record<string, number>) => boolean, what: string) {
  return eventually(async () => ((await repliesFrom(pods, vip)).every(ok) ? true : undefined), {
    ms: 10_000,
    what,
    every: 100,
  });
}

interface TraceJson {
  hit: { kind: string; name?: string; origin?: string; masqueradeNotFrom?: string };
  cluster?: { ip: string; node: string; publicIp: string; path: string }[];
  store?: { service: string; state: string };
  steps: string[];
}

/** `tsnet -j trace DEST` on node i, asking etcd too with `withEtcd`, from `from` when given. */
const traceOn = (c: TestCluster, i: number, dest: string, withEtcd = false, from?: string): TraceJson =>
  JSON.parse(
    on(c, i, '-j', ...(withEtcd ? ['--etcd', etcd.urls] : []), 'trace', dest, ...(from ? ['--from', from] : [])).stdout,
  ) as TraceJson;

/** The nft rule handles of lines naming `name` in node i (a rewritten rule gets a new handle). */
function handles(c: TestCluster, i: number, name: string): string[] {
  const r = run('ip', ['netns', 'exec', c.nodes[i]!.ns.name!, 'nft', '-a', 'list', 'ruleset']);
  return r.stdout
    .split('\n')
    .filter((l) => l.includes(`"${name}`) || l.includes(` ${name} `))
    .map((l) => /# handle (\d+)/.exec(l)?.[1])
    .filter((h): h is string => !!h);
}

test.serial(
  'a service defined once is reached from pods on all three nodes; weights and affinity hold everywhere; a change moves new connections on every node; trace and ls --etcd name the nodes and counters',
  async (t) => {
    t.timeout(180_000);
    const { c, pods } = await nodesWithPods(t, 'reach', 81);
    storeOk(
      c,
      'add',
      'shop/web',
      '--vip',
      '10.96.81.10:80',
      '--endpoint',
      `${pods[1]!.ip}:8080@1`,
      '--endpoint',
      `${pods[2]!.ip}:8080@3`,
    );
    storeOk(
      c,
      'add',
      'shop/sticky',
      '--vip',
      '10.96.81.11:80',
      '--affinity',
      '60',
      '--endpoint',
      `${pods[1]!.ip}:8080`,
      '--endpoint',
      `${pods[2]!.ip}:8080`,
    );
    await everyPod(pods, '10.96.81.10', (r) => (r.pod2 ?? 0) + (r.pod3 ?? 0) === 20, 'every node to program shop/web');

    // Weights 1:3, from every node's pod: pod3's share of 200 connections is 0.75 (0.6-0.9 is five deviations).
    for (const [i, r] of (await repliesFrom(pods, '10.96.81.10', 200)).entries()) {
      const share = (r.pod3 ?? 0) / 200;
      t.true((r.pod2 ?? 0) > 0 && share > 0.6 && share < 0.9, `from node ${i + 1}: ${JSON.stringify(r)}`);
    }
    // Affinity: every client is held to one endpoint, on every node.
    await everyPod(
      pods,
      '10.96.81.11',
      (r) => (r.pod2 ?? 0) + (r.pod3 ?? 0) === 20,
      'every node to program shop/sticky',
    );
    for (const [i, r] of (await repliesFrom(pods, '10.96.81.11', 30)).entries())
      t.is(Object.keys(r).length, 1, `node ${i + 1}'s pod pinned to one endpoint: ${JSON.stringify(r)}`);

    // trace on node 1 (with --etcd): the cluster service, programmed as stored, each endpoint's node and path.
    const tr = traceOn(c, 0, '10.96.81.10:80', true, pods[0]!.ip);
    t.like(tr.hit, { kind: 'service', name: 'shop/web', origin: 'cluster', masqueradeNotFrom: '10.81.0.0/16' });
    t.deepEqual(tr.store, { service: 'shop/web', state: 'programmed' });
    t.deepEqual(
      tr.cluster?.map((h) => [h.ip, h.node, h.publicIp, h.path]),
      [1, 2].map((i) => [pods[i]!.ip, c.nodes[i]!.name, c.nodes[i]!.publicIp, 'host-gw']),
    );
    t.true(
      tr.steps.some((l) => l.startsWith('cluster service shop/web (from etcd')),
      tr.steps.join('\n'),
    );
    // ls --etcd on node 1: the store's services with this node's counters.
    const ls = JSON.parse(on(c, 0, '-j', '--etcd', etcd.urls, 'service', 'ls', '--prefix', c.prefix).stdout) as {
      name: string;
      counters?: { service: { packets: number } };
    }[];
    t.true((ls.find((x) => x.name === 'shop/web')?.counters?.service.packets ?? 0) >= 220, JSON.stringify(ls));

    // Pod to VIP to a pod on another node: the endpoint sees the client's pod address (no masquerade inside the Network).
    await whoAmIServer(s, pods[2]!.ns, pods[2]!.ip, 9090);
    storeOk(c, 'add', 'shop/who', '--vip', '10.96.81.12:80', '--endpoint', `${pods[2]!.ip}:9090`);
    const who = await eventually(
      async () => {
        const seen = await whoAmI(pods[0]!.ns, '10.96.81.12', 80);
        return seen.startsWith('10.') ? seen : undefined;
      },
      { ms: 5000, what: 'shop/who answering on node 1', every: 100 },
    );
    t.is(who, pods[0]!.ip);

    storeOk(c, 'set-endpoints', 'shop/web', '--endpoint', `${pods[0]!.ip}:8080`);
    await everyPod(pods, '10.96.81.10', (r) => r.pod1 === 20, 'every node to send new connections to pod1');

    // Two writers racing for one VIP: one wins, and every node programs the winner only.
    const racers = ['shop/a', 'shop/b'].map((name, i) =>
      tsnet(
        '--etcd',
        etcd.urls,
        'service',
        'add',
        name,
        '--vip',
        '10.96.81.20:80',
        '--endpoint',
        `${pods[i]!.ip}:8080`,
        '--prefix',
        c.prefix,
      ),
    );
    t.is(racers.filter((r) => r.status === 0).length, 1, racers.map((r) => r.stderr).join('\n'));
    const winner = racers[0]!.status === 0 ? 'pod1' : 'pod2';
    await everyPod(pods, '10.96.81.20', (r) => r[winner] === 20, `every node to program the winner (${winner})`);
  },
);

test.serial(
  'local and cluster services side by side: no local command changes a cluster service or takes its VIP; service ls lists local ones only; etcd down, no rule changes, no connection loses a byte, and changes on its return converge',
  async (t) => {
    t.timeout(180_000);
    const { c, pods } = await nodesWithPods(t, 'side', 82);
    storeOk(c, 'add', 'shop/web', '--vip', '10.96.82.10:80', '--endpoint', `${pods[1]!.ip}:8080`);
    await everyPod(pods, '10.96.82.10', (r) => r.pod2 === 20, 'every node to program shop/web');

    const add = on(c, 0, 'service', 'add', 'mine', '--vip', '10.96.82.10:80', '--endpoint', `${pods[0]!.ip}:8080`);
    t.is(add.status, 1);
    t.regex(
      add.stderr.trim(),
      /^tsnet: service mine: 10\.96\.82\.10:80\/tcp is held by cluster service shop\/web \(from etcd\)/,
    );
    for (const args of [
      ['del', 'shop/web'],
      ['set-endpoints', 'shop/web', '--none'],
      ['add', 'shop/web', '--vip', '10.96.82.99:80'],
    ]) {
      const r = on(c, 0, 'service', ...args);
      t.is(r.status, 1, args.join(' '));
      t.regex(
        r.stderr.trim(),
        /^tsnet: service shop\/web is a cluster service \(from etcd\): (change|delete) it with "tsnet --etcd service \.\.\."/,
      );
    }
    // A local service on another VIP works beside it, and a local apply replaces local services only.
    t.is(on(c, 0, 'service', 'add', 'mine', '--vip', '10.96.82.99:80', '--endpoint', `${pods[0]!.ip}:8080`).status, 0);
    t.deepEqual((await repliesFrom([pods[0]!], '10.96.82.99'))[0], { pod1: 20 });
    const file = s.tmp('side-apply') + '/services.json';
    fs.writeFileSync(
      file,
      JSON.stringify([{ name: 'other', vip: '10.96.82.98:80', endpoints: [`${pods[0]!.ip}:8080`] }]),
    );
    t.is(on(c, 0, 'service', 'apply', '-f', file).status, 0);
    const local = JSON.parse(on(c, 0, '-j', 'service', 'ls').stdout) as { name: string }[];
    t.deepEqual(
      local.map((x) => x.name),
      ['other'],
      'service ls: the local set, without the cluster service',
    );
    t.deepEqual((await repliesFrom([pods[0]!], '10.96.82.10'))[0], { pod2: 20 }, 'the cluster service untouched');

    // etcd down for 4 s: no rule changes on any node, a connection through a VIP loses nothing, new ones flow;
    // on its return a change reaches every node.
    const echo = `require('net').createServer((c) => c.pipe(c)).listen(9191, '${pods[1]!.ip}', () => console.log('ready'))`;
    const server = pods[1]!.ns.spawn(process.execPath, ['-e', echo], { stdio: ['ignore', 'pipe', 'ignore'] });
    s.servers.push({ stop: async () => void server.kill('SIGKILL') });
    await new Promise((resolve) => server.stdout!.once('data', resolve));
    storeOk(c, 'add', 'shop/echo', '--vip', '10.96.82.11:80', '--endpoint', `${pods[1]!.ip}:9191`);
    await eventually(() => c.nodes.every((_, i) => traceOn(c, i, '10.96.82.11:80').hit.kind === 'service'), {
      ms: 5000,
      what: 'shop/echo on every node',
      every: 100,
    });
    // One connection, a line every 100 ms for 8 s: how many came back, and any error.
    const chatter = `const c = require('net').connect(80, '10.96.82.11'); let back = 0, err = ''; c.on('data', (d) => (back += String(d).split('\\n').length - 1)); c.on('error', (e) => (err = e.message)); let n = 0; const iv = setInterval(() => { if (++n > 80) { clearInterval(iv); setTimeout(() => { console.log(JSON.stringify({ back, err })); process.exit(0); }, 300); } else c.write('x\\n'); }, 100);`;
    const client = pods[0]!.ns.spawn(process.execPath, ['-e', chatter], { stdio: ['ignore', 'pipe', 'ignore'] });
    let said = '';
    client.stdout!.on('data', (d: Buffer) => (said += d.toString()));
    const talked = new Promise((resolve) => client.once('close', resolve));
    await new Promise((r) => setTimeout(r, 1000));
    const rules = c.nodes.map((_, i) => handles(c, i, 'shop/'));
    t.true(
      rules.every((h) => h.length > 0),
      "the observer sees every node's rules",
    );
    await etcd.stopAll();
    try {
      await new Promise((r) => setTimeout(r, 4000));
      t.true(
        (await repliesFrom(pods, '10.96.82.10')).every((r) => r.pod2 === 20),
        'etcd down: new connections flow',
      );
      t.deepEqual(
        c.nodes.map((_, i) => handles(c, i, 'shop/')),
        rules,
        'etcd down: no rule changed on any node',
      );
    } finally {
      for (const m of etcd.members) etcd.restart(m);
      await etcd.healthy();
    }
    await talked;
    t.deepEqual(JSON.parse(said), { back: 80, err: '' }, 'the connection through the VIP lost nothing');
    storeOk(c, 'set-endpoints', 'shop/web', '--endpoint', `${pods[2]!.ip}:8080`);
    await everyPod(pods, '10.96.82.10', (r) => r.pod3 === 20, 'every node to take the change made on return');
    storeOk(c, 'del', 'shop/web');
    await eventually(() => c.nodes.every((_, i) => traceOn(c, i, '10.96.82.10:80').hit.kind === 'none'), {
      ms: 5000,
      what: 'the service gone from every node',
      every: 200,
    });
    t.deepEqual((await repliesFrom([pods[0]!], '10.96.82.98'))[0], { pod1: 20 }, 'the local one stays');
  },
);

test.serial(
  'an agent restarted or paused converges without a flush: the changes made meanwhile are applied, the rules of unchanged services keep their handles; doctor and trace show the paused node lagging; a flush by someone else is repaired',
  async (t) => {
    t.timeout(180_000);
    const { c, pods } = await nodesWithPods(t, 'again', 83, ['--resync-interval', '500ms']);
    for (const [name, n] of [
      ['keep', 10],
      ['moved', 11],
      ['gone', 12],
    ] as const)
      storeOk(c, 'add', `shop/${name}`, '--vip', `10.96.83.${n}:80`, '--endpoint', `${pods[1]!.ip}:8080`);
    await everyPod(pods, '10.96.83.12', (r) => r.pod2 === 20, 'every node to program the three');
    const kept = handles(c, 0, 'shop/keep');
    t.true(kept.length > 0, 'the observer sees the rules of shop/keep');

    // Node 1's agent killed; the store changes; the agent restarted on the same state.
    await c.agents[0]!.stop('SIGKILL');
    storeOk(c, 'set-endpoints', 'shop/moved', '--endpoint', `${pods[2]!.ip}:8080`);
    storeOk(c, 'del', 'shop/gone');
    storeOk(c, 'add', 'shop/new', '--vip', '10.96.83.13:80', '--endpoint', `${pods[2]!.ip}:8080`);
    const again = rig.startAgent(c, c.nodes[0]!, c.stateDirs[0]!);
    await everyPod([pods[0]!], '10.96.83.13', (r) => r.pod3 === 20, 'the restarted agent to program shop/new');
    await everyPod([pods[0]!], '10.96.83.11', (r) => r.pod3 === 20, 'and shop/moved');
    t.is(traceOn(c, 0, '10.96.83.12:80').hit.kind, 'none', 'shop/gone removed');
    t.regex(again.log, /cluster services: 3 programmed \(3 changed;/, 'a diff, not a reload');
    t.deepEqual(handles(c, 0, 'shop/keep'), kept, "shop/keep's rules untouched");

    // Node 2's agent paused while the store changes: doctor and trace see it lag; resumed, it catches up.
    const moved = handles(c, 1, 'shop/moved');
    process.kill(c.agents[1]!.pid, 'SIGSTOP');
    try {
      storeOk(c, 'set-endpoints', 'shop/keep', '--endpoint', `${pods[2]!.ip}:8080`);
      const lag = JSON.parse(on(c, 1, '-j', '--etcd', etcd.urls, 'doctor').stdout) as {
        check: string;
        problem: string;
      }[];
      t.true(
        lag.some((p) => p.check === 'cluster-services' && /shop\/keep .* is not as in etcd/.test(p.problem)),
        JSON.stringify(lag),
      );
      t.like(traceOn(c, 1, '10.96.83.10:80', true).store, { state: 'lagging' });
    } finally {
      process.kill(c.agents[1]!.pid, 'SIGCONT');
    }
    await everyPod(pods, '10.96.83.10', (r) => r.pod3 === 20, 'every node, the resumed one too, to move shop/keep');
    const after = JSON.parse(on(c, 1, '-j', '--etcd', etcd.urls, 'doctor').stdout) as { check: string }[];
    t.deepEqual(
      after.filter((p) => p.check === 'cluster-services'),
      [],
    );
    t.deepEqual(handles(c, 1, 'shop/moved'), moved, "node 2: shop/moved's rules untouched");

    // Someone flushes node 3's ruleset: the agent's resync loop puts its cluster services back.
    const unflushed = handles(c, 2, 'shop/keep');
    run('ip', ['netns', 'exec', c.nodes[2]!.ns.name!, 'nft', 'flush', 'ruleset']);
    await eventually(() => /nat: resync after flush/.test(c.agents[2]!.log), {
      ms: 5000,
      what: "node 3's agent to resync after the flush",
      every: 100,
    });
    await everyPod([pods[2]!], '10.96.83.10', (r) => r.pod3 === 20, "node 3's pod to reach shop/keep again");
    const repaired = handles(c, 2, 'shop/keep');
    t.true(repaired.length > 0 && repaired.join() !== unflushed.join(), `${unflushed} -> ${repaired}: written anew`);
  },
);

test.serial('10,000 services x 5 endpoints in etcd are programmed on every node when its agent starts', async (t) => {
  t.timeout(240_000);
  const { c, pods } = await nodesWithPods(t, 'big', 84);
  await Promise.all(c.agents.map((a) => a.stop())); // SIGTERM keeps the leases
  const services = Array.from({ length: 10_000 }, (_, i) => ({
    name: `big/s${i}`,
    vip: `10.97.${i >> 8}.${i & 255}:80`,
    endpoints: Array.from({ length: 5 }, (_, k) => `10.84.${200 + k}.${(i % 250) + 1}:8080`),
  }));
  // Three of them lead to the pods: each pod answers on 8080, pods 1 and 2 on 8081 too.
  for (const [i, p] of pods.slice(0, 2).entries()) s.servers.push(await serve(p.ns, 'tcp', p.ip, 8081, `pod${i + 1}`));
  const real = [...pods.map((p) => `${p.ip}:8080`), `${pods[0]!.ip}:8081`, `${pods[1]!.ip}:8081`];
  for (const i of [0, 5_000, 9_999]) services[i]!.endpoints = real;
  const file = s.tmp('big-apply') + '/services.json';
  fs.writeFileSync(file, JSON.stringify(services));
  storeOk(c, 'apply', '-f', file);
  const t0 = Date.now();
  c.agents = c.nodes.map((n, i) => rig.startAgent(c, n, c.stateDirs[i]!));
  for (const i of [0, 5_000, 9_999]) {
    const vip = services[i]!.vip.replace(/:80$/, '');
    await eventually(
      async () =>
        (await repliesFrom(pods, vip, 12)).every((r) => (r.pod1 ?? 0) + (r.pod2 ?? 0) + (r.pod3 ?? 0) === 12)
          ? true
          : undefined,
      { ms: 60_000, what: `every node to serve ${services[i]!.name}`, every: 200 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${c.agents.map((a) => `--- ${a.node.name}\n${a.log.slice(-3000)}`).join('\n')}`);
    });
  }
  t.log(`10,000 x 5 live on 3 nodes ${Date.now() - t0} ms after the agents started (bench:cluster measures the join)`);
  for (const [i, a] of c.agents.entries()) {
    t.regex(a.log, /cluster services: 10000 programmed \(10000 changed;/, `node ${i + 1}`);
    const problems = JSON.parse(on(c, i, '-j', '--etcd', etcd.urls, 'doctor').stdout) as { check: string }[];
    t.deepEqual(
      problems.filter((p) => p.check === 'cluster-services'),
      [],
      `node ${i + 1} as the store`,
    );
  }

  // 2,000 of them changed by one apply: a burst of watch events, applied in a few rounds per node, not 2,000.
  const before = c.agents.map((a) => a.log.length);
  for (let i = 0; i < 10_000; i += 5)
    services[i]!.endpoints = i === 5_000 ? [`${pods[0]!.ip}:8080`] : services[i]!.endpoints.slice(0, 4);
  fs.writeFileSync(file, JSON.stringify(services));
  storeOk(c, 'apply', '-f', file);
  await everyPod(pods, '10.97.19.136', (r) => r.pod1 === 20, 'every node to take the burst (big/s5000 to pod1)');
  for (const [i, a] of c.agents.entries()) {
    const rounds = a.log.slice(before[i]).match(/nat: update /g)?.length ?? 0;
    t.true(rounds >= 1 && rounds <= 50, `node ${i + 1}: 2,000 changes in ${rounds} rounds`);
  }
});
