/**
 * Two NAT engines in one process never see each other's (issue 24, item 7: no process-wide mutable state).
 * Two resident engines, each from its own EnginePool (as two agents in one process would hold them), on two
 * namespaces whose services have the same names, VIPs and endpoint counts, so the same lb chain names, and
 * different endpoints:
 *
 *   twe-a: br0 10.83.0.1/24 -- a1 10.83.0.11, a2 .12, a3 .13 (TCP :8080, each answering its name)
 *   twe-b: br0 10.84.0.1/24 -- b1 10.84.0.11, b2 .12, b3 .13
 *   both: web 10.96.0.10:80 over two (then three) of their own endpoints, web6 [fd00:96::10]:80 likewise
 *
 * Each change through one engine leaves the other namespace's tables exactly as they were (`nft -j list
 * table`, nft as the independent observer), and real TCP through each VIP (each namespace its own client,
 * OUTPUT DNAT) reaches that namespace's own endpoints only. Each pool hears only its own engine's syncs.
 */
import test, { type ExecutionContext } from 'ava';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import { attach } from '../../src/attach';
import type { NatEngine, SyncEvent } from '../../src/nat/engine';
import { EnginePool } from '../../src/nat/pool';
import { parseEndpoint, type Service } from '../../src/nat/model';
import type { NetNs } from '../../src/netns';
import { request, serve } from '../../src/demo/traffic';
import { nftObserved as observed, scratch } from '../harness/fixtures';

const { topo, servers, tmp, cleanup } = scratch('twe');
test.after.always(cleanup);

/** The names of the shared lb chains in the ip and ip6 tables of `ns`. */
const lbChains = (ns: NetNs): string[] =>
  observed(ns)
    .filter((l) => l.startsWith('{'))
    .map((l) => (JSON.parse(l) as { chain?: { family: string; name: string } }).chain)
    .filter((c) => c !== undefined && /^lbw?-/.test(c.name))
    .map((c) => `${c!.family} ${c!.name}`)
    .sort();

interface Side {
  name: 'a' | 'b';
  ns: NetNs;
  engine: NatEngine;
  /** Endpoint i of this side: 10.83.0.1i (a) or 10.84.0.1i (b), fd00:83::1i or fd00:84::1i. */
  ip: (i: number, family?: 4 | 6) => string;
}

const services = (side: Side, endpoints: number[]): Service[] => [
  {
    name: 'web',
    vip: '10.96.0.10',
    port: 80,
    proto: 'tcp',
    endpoints: endpoints.map((i) => parseEndpoint(`${side.ip(i)}:8080`)),
  },
  {
    name: 'web6',
    vip: 'fd00:96::10',
    port: 80,
    proto: 'tcp',
    endpoints: endpoints.map((i) => parseEndpoint(`[${side.ip(i, 6)}]:8080`)),
  },
];

/** Sets both services of `side` to `endpoints` (by number), through its engine, as the agent would (a change). */
async function setEndpoints(side: Side, endpoints: number[]): Promise<void> {
  await side.engine.change(
    services(side, endpoints).map((s) => ({ kind: 'set-endpoints', name: s.name, endpoints: s.endpoints })),
  );
}

/** 30 connections to the VIP from inside `side`'s namespace: exactly its endpoints `want` answer. */
async function reaches(t: ExecutionContext, side: Side, want: number[], when: string): Promise<void> {
  const r = await request(side.ns, 'tcp', '10.96.0.10', 80, { count: 30, concurrency: 5 });
  t.is(r.ok, 30, `${when}: ${r.errors.join('; ')}`);
  t.deepEqual(
    Object.keys(r.replies).sort(),
    want.map((i) => `${side.name}${i}`),
    `${when}: the VIP in ${side.ns.name} reaches its own endpoints ${want.join(', ')}`,
  );
}

/** One namespace with its bridge, three endpoints serving TCP on 8080, and its engine from `pool`. */
async function side(name: 'a' | 'b', pool: EnginePool, stateDir: string): Promise<Side> {
  const net = name === 'a' ? 83 : 84;
  const ns = await topo.ns(name);
  await bridge.ensure(ns, 'br0', { addresses: [`10.${net}.0.1/24`] });
  await route.add(ns, { dst: '10.96.0.0/16', dev: 'br0' });
  for (const i of [1, 2, 3]) {
    const e = await topo.ns(`${name}${i}`);
    await attach(ns, e, { bridge: 'br0', address: `10.${net}.0.1${i}/24` });
    servers.push(await serve(e, 'tcp', '0.0.0.0', 8080, `${name}${i}`));
  }
  const engine = pool.get({ ns, stateDir, backend: 'netlink' });
  const ip = (i: number, family: 4 | 6 = 4) => (family === 4 ? `10.${net}.0.1${i}` : `fd00:${net}::1${i}`);
  return { name, ns, engine, ip };
}

test('two resident engines of two pools in one process: a change through one never touches the other namespace, traffic through each VIP stays its own', async (t) => {
  const stateDir = tmp('twe');
  const eventsA: SyncEvent[] = [];
  const eventsB: SyncEvent[] = [];
  const a = await side('a', new EnginePool({ resident: true, onSync: (e) => eventsA.push(e) }), stateDir);
  const b = await side('b', new EnginePool({ resident: true, onSync: (e) => eventsB.push(e) }), stateDir);
  t.not(a.engine.dir, b.engine.dir, 'one state per namespace');

  for (const s of [a, b]) await s.engine.change(services(s, [1, 2]).map((x) => ({ kind: 'add-service', service: x })));
  t.deepEqual(lbChains(a.ns), ['ip lb-tcp-2', 'ip6 lb-tcp-2'], 'the shared chains of two endpoints');
  t.deepEqual(lbChains(b.ns), lbChains(a.ns), 'the same lb chain names in both namespaces');
  t.notDeepEqual(observed(a.ns), observed(b.ns), 'different endpoints: different tables');
  await reaches(t, a, [1, 2], 'both added');
  await reaches(t, b, [1, 2], 'both added');

  // Each step changes one side (the lb chain of its new endpoint count made in its namespace, the old one
  // dropped there) while the other side's namespace must stay exactly as it was.
  const steps: [Side, Side, number[], number[]][] = [
    [a, b, [1, 2, 3], [1, 2]],
    [b, a, [1, 2, 3], [1, 2, 3]],
    [a, b, [2, 3], [1, 2, 3]],
    [b, a, [1, 3], [2, 3]],
  ];
  for (const [changed, other, now, otherHas] of steps) {
    const when = `${changed.name} set to ${now.join(', ')}`;
    const before = observed(other.ns);
    await setEndpoints(changed, now);
    t.deepEqual(observed(other.ns), before, `${when}: ${other.ns.name}'s tables are as they were`);
    t.deepEqual(
      lbChains(changed.ns),
      [`ip lb-tcp-${now.length}`, `ip6 lb-tcp-${now.length}`],
      `${when}: the lb chains of ${changed.ns.name}`,
    );
    await reaches(t, changed, now, when);
    await reaches(t, other, otherHas, when);
  }

  // Observers are the pool's: each heard its own engine's three syncs, never the other's: the add (a full sync of
  // an empty namespace), then two changes written as diffs (the resident path, where what an engine keeps of the
  // table it wrote decides what a change writes).
  for (const [s, events] of [
    [a, eventsA],
    [b, eventsB],
  ] as const)
    t.deepEqual(
      events.map((e) => [e.dir, e.full]),
      [
        [s.engine.dir, true],
        [s.engine.dir, false],
        [s.engine.dir, false],
      ],
      `the syncs ${s.ns.name}'s pool heard`,
    );
});
