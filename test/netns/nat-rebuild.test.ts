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
import { HOLD_MS } from '../../src/nat/joining';
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
 * The rebuild, as under load (pieces of 250, one at a time), calm (pieces of 1,000, each planned and encoded
 * while the kernel applies the one before), or while a call is served throughout (busy: the services wait).
 */
const rebuilt = test.macro(async (t, mode: 'loaded' | 'calm' | 'busy') => {
  const calm = mode === 'calm';
  const tag = { loaded: '', calm: 'c', busy: 'x' }[mode];
  let busy = mode === 'busy';
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
      ...(mode === 'busy' ? { busy: () => busy } : {}),
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
    let joined!: (all: Promise<unknown>) => void;
    const answered = new Promise<unknown>((resolve) => (joined = resolve));
    const order: string[] = [];
    /** Each transaction: when it was handed over, and how many objects it wrote. */
    const sent: { at: number; written: number }[] = [];
    /** The ruleset at the moment the added service's change was answered (the loop held while nft lists it). */
    let atAnswer = '';
    backend.apply = async (...a: unknown[]) => {
      sent.push({ at: performance.now(), written: (a[0] as { written: number }).written });
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
        track(
          'add',
          engine.change([{ kind: 'add-service', service: svc('late', 3000, '10.84.0.12') }]).then((r) => {
            atAnswer = run('ip', ['netns', 'exec', router.name!, 'nft', 'list', 'ruleset']).stdout;
            return r;
          }),
        ),
        track('delete', engine.change([{ kind: 'delete-service', name: 's5' }])),
        track(
          'refused',
          engine.change([
            { kind: 'set-endpoints', name: 'nothing', endpoints: [{ ip: '10.84.0.12', port: 1, weight: 1 }] },
          ]),
        ),
      ];
      joined(Promise.allSettled(joining));
    };
    t.is(run('ip', ['netns', 'exec', router.name!, 'nft', 'flush', 'ruleset']).status, 0);
    const rebuild = engine.converge().then((r) => {
      order.push('rebuild');
      return r;
    });
    const joinedAt = await Promise.race([answered.then(() => performance.now()), rebuild.then(() => undefined)]);
    if (busy) await new Promise((r) => setTimeout(r, 4 * HOLD_MS)); // the call goes on a while
    const callEnded = performance.now();
    busy = false;
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
    // Answered means live: the service added mid-way was in the kernel when its change was answered.
    t.regex(atAnswer, /10\.96\.11\.184/, 'the added service is live when its change is answered');
    if (mode === 'busy') {
      // While the call is served the joined changes go alone, not behind services (a piece of 250 writes
      // about 500 objects), and the services wait HOLD_MS between pieces.
      t.truthy(joinedAt, 'the changes were answered while the call was served');
      t.notRegex(atAnswer, /10\.96\.4\.176/, 'the last service is not written yet when the changes are answered');
      const carrier = sent.slice(2).find((x) => x.written > 0);
      t.true(carrier && carrier.written < 50, `the changes went alone: ${carrier?.written} objects in their piece`);
      const pieces = sent.filter((x) => x.at < callEnded && x.written >= 200);
      t.true(pieces.length >= 2, `${pieces.length} pieces of services while the call was served: held, not stopped`);
      for (let i = 1; i < pieces.length; i++)
        t.true(
          pieces[i]!.at - pieces[i - 1]!.at >= HOLD_MS * 0.8,
          `services piece ${i} went ${(pieces[i]!.at - pieces[i - 1]!.at).toFixed(1)} ms after the one before, while a call was served`,
        );
    }

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
  'loaded',
);

test.serial(
  'calm, the same rebuild in pieces of 1,000, each planned while the kernel applies the one before: the same joins, answers, table and traffic',
  rebuilt,
  'calm',
);

test.serial(
  'while a call is served, the rebuild holds its services back and the changes that join go alone: answered live before the last services are written',
  rebuilt,
  'busy',
);

/**
 * `nft flush ruleset` racing a change's round on a large state: after the first canary check (the table is
 * there, so no rebuild), before the family's own check or before its partial batch. Either way the change is
 * applied by a rebuild in pieces, not by one transaction of the whole table (which holds the commit mutex, and
 * every veth being created in the namespace with it, for hundreds of ms at 10,000 services).
 */
const raced = test.macro(async (t, flushAfterCheck: number) => {
  const router = await topo.ns(`race${flushAfterCheck}`);
  await bridge.ensure(router, 'br0', { addresses: ['10.84.0.1/24'] });
  await route.add(router, { dst: '10.96.0.0/16', dev: 'br0' });
  const b = await topo.ns(`race${flushAfterCheck}-b`);
  await attach(router, b, { bridge: 'br0', address: '10.84.0.12/24' });
  const server = await serve(b, 'http', '0.0.0.0', 8080, 'b2');
  try {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-natrb-'));
    dirs.push(dir);
    const engine = new NatEngine({ ns: router, stateDir: dir, backend: 'netlink', resident: true });
    await engine.update((st) => {
      st.services = Array.from({ length: SERVICES }, (_, i) => svc(i ? `s${i}` : 'web', i + 1, '10.84.0.11'));
    });
    const backend = (await engine.backend()) as unknown as {
      apply: (...a: unknown[]) => Promise<void>;
      canaryPresent: (family: number) => Promise<boolean>;
    };
    const [apply, canaryPresent] = [backend.apply.bind(backend), backend.canaryPresent.bind(backend)];
    let transactions = 0;
    backend.apply = (...a: unknown[]) => (transactions++, apply(...a));
    let checks = 0;
    backend.canaryPresent = async (family: number) => {
      const present = await canaryPresent(family);
      if (++checks === flushAfterCheck)
        t.is(run('ip', ['netns', 'exec', router.name!, 'nft', 'flush', 'ruleset']).status, 0);
      return present;
    };
    const r = await engine.change([
      { kind: 'set-endpoints', name: 'web', endpoints: [{ ip: '10.84.0.12', port: 8080, weight: 1 }] },
    ]);
    t.true(checks >= flushAfterCheck, 'the ruleset was flushed after the canary check');
    t.true(r.full, 'the whole table was written again');
    t.true(r.joined, 'answered from the rebuild, once its first piece was live');
    await engine.converge(); // after the rest of the rebuild
    t.true(transactions >= 6, `${transactions} transactions: rebuilt in pieces, not in one`);
    t.deepEqual((await request(router, 'http', '10.96.0.1', 80, { count: 2 })).replies, { b2: 2 });
    const pieces = nftObserved(router);
    await engine.sync({ force: true });
    t.deepEqual(pieces, nftObserved(router), 'the pieces wrote what one transaction writes');
  } finally {
    await server.stop();
  }
});

test.serial(
  'a flush after the first canary check, before the family is checked again: the change is applied by a rebuild in pieces',
  raced,
  1,
);

test.serial(
  'a flush after the family is checked, before its partial batch (which finds the table gone): a rebuild in pieces too',
  raced,
  2,
);
