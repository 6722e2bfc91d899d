/**
 * A resident engine (the agent's) rebuilds a table that is gone in pieces,
 * and changes made meanwhile join the rebuild instead of waiting for it
 * (src/nat/nftables/rebuild.ts, src/nat/joining.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { NatEngine } from '../../src/nat/engine';
import type { Service } from '../../src/nat/model';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import { attach } from '../../src/attach';
import { serve, request, type Server } from '../../src/demo/traffic';
import { Topology, nftObserved, run } from '../harness/fixtures';

const topo = new Topology('natrb');
const dirs: string[] = [];
test.after.always(() => {
  topo.cleanup();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const SERVICES = 1200;
const svc = (name: string, i: number, ip: string): Service => ({
  name,
  vip: `10.96.${i >> 8}.${i & 255}`,
  port: 80,
  proto: 'tcp',
  endpoints: [{ ip, port: 8080, weight: 1 }],
});

/**
 * The rebuild, as under load (pieces of 250, one at a time) or calm (pieces of 1,000, each planned and encoded
 * while the kernel applies the one before).
 */
const rebuilt = test.macro(async (t, calm: boolean) => {
  const tag = calm ? 'c' : '';
  const router = await topo.ns(`r${tag}`);
  await bridge.ensure(router, 'br0', { addresses: ['10.84.0.1/24'] });
  await route.add(router, { dst: '10.96.0.0/16', dev: 'br0' });
  const servers: Server[] = [];
  for (const i of [1, 2]) {
    const b = await topo.ns(`b${i}${tag}`);
    await attach(router, b, { bridge: 'br0', address: `10.84.0.1${i}/24` });
    servers.push(await serve(b, 'http', '0.0.0.0', 8080, `b${i}`));
  }
  try {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-natrb-'));
    dirs.push(dir);
    const engine = new NatEngine({
      ns: router,
      stateDir: dir,
      backend: 'netlink',
      resident: true,
      ...(calm ? { calm: () => true } : {}),
    });
    const services = Array.from({ length: SERVICES }, (_, i) => svc(i ? `s${i}` : 'web', i + 1, '10.84.0.11'));
    await engine.update((st) => {
      st.services = services;
    });
    t.deepEqual((await request(router, 'http', '10.96.0.1', 80, { count: 2 })).replies, { b1: 2 });

    // Transactions counted where the backend sends them; the changes go in once the first piece is live.
    const backend = (await engine.backend()) as unknown as { apply: (...a: unknown[]) => Promise<void> };
    const apply = backend.apply.bind(backend);
    let transactions = 0;
    let joining: Promise<unknown>[] = [];
    const order: string[] = [];
    backend.apply = async (...a: unknown[]) => {
      await apply(...a);
      if (++transactions !== 2) return;
      const track = (what: string, p: Promise<unknown>) =>
        p.then(
          (r) => {
            order.push(what);
            return r;
          },
          (err: unknown) => {
            order.push(what);
            throw err;
          },
        );
      joining = [
        track(
          'set-endpoints',
          engine.change([
            { kind: 'set-endpoints', name: 'web', endpoints: [{ ip: '10.84.0.12', port: 8080, weight: 1 }] },
          ]),
        ),
        track('add', engine.change([{ kind: 'add-service', service: svc('late', 3000, '10.84.0.12') }])),
        track('delete', engine.change([{ kind: 'delete-service', name: 's5' }])),
        track(
          'refused',
          engine.change([
            { kind: 'set-endpoints', name: 'nothing', endpoints: [{ ip: '10.84.0.12', port: 1, weight: 1 }] },
          ]),
        ),
      ];
    };
    t.is(run('ip', ['netns', 'exec', router.name!, 'nft', 'flush', 'ruleset']).status, 0);
    const rebuild = engine.converge().then((r) => {
      order.push('rebuild');
      return r;
    });
    const report = await rebuild;
    const [moved, added, deleted, refused] = await Promise.allSettled(joining);

    t.truthy(report?.full, 'the resync re-applied the whole state');
    const per = calm ? 1000 : 250;
    t.true(transactions >= Math.ceil(SERVICES / per) + 1, `${transactions} transactions: a skeleton, then pieces`);
    for (const x of [moved, added, deleted]) {
      t.is(x?.status, 'fulfilled');
      if (x?.status === 'fulfilled') t.true((x.value as { joined?: boolean }).joined, 'answered from the rebuild');
    }
    t.is(refused?.status, 'rejected', 'a change that cannot apply is refused, and the rebuild goes on');
    t.true(order.indexOf('rebuild') > order.indexOf('set-endpoints'), `answered before the rebuild ended: ${order}`);

    // What the pieces left is what one transaction writes for the same state.
    const pieces = nftObserved(router);
    const whole = await engine.sync({ force: true });
    t.true(whole.full);
    t.deepEqual(pieces, nftObserved(router));

    // Recorded: another process reading the state sees the changes.
    const stored = new NatEngine({ ns: router, stateDir: dir, backend: 'netlink' }).read();
    t.deepEqual(stored.services.find((s) => s.name === 'web')?.endpoints, [
      { ip: '10.84.0.12', port: 8080, weight: 1 },
    ]);
    t.truthy(stored.services.find((s) => s.name === 'late'));
    t.falsy(stored.services.find((s) => s.name === 's5'));
    t.is(stored.services.length, SERVICES);

    // Traffic follows: web moved to b2, the late service reaches b2, s1 still b1.
    t.deepEqual((await request(router, 'http', '10.96.0.1', 80, { count: 2 })).replies, { b2: 2 });
    t.deepEqual((await request(router, 'http', '10.96.11.184', 80, { count: 2 })).replies, { b2: 2 });
    t.deepEqual((await request(router, 'http', '10.96.0.2', 80, { count: 2 })).replies, { b1: 2 });
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
});

test.serial(
  'a flushed table of 1,200 services is rebuilt in pieces; changes made meanwhile join it, are answered before it ends and recorded; the table ends as one written whole, and traffic follows the changes',
  rebuilt,
  false,
);

test.serial(
  'calm, the same rebuild in pieces of 1,000, each planned while the kernel applies the one before: the same joins, answers, table and traffic',
  rebuilt,
  true,
);
