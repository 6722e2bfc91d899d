import test from 'ava';
import * as bridge from '../../src/bridge';
import * as link from '../../src/link';
import * as addr from '../../src/addr';
import * as route from '../../src/route';
import { attach, detach, hostIfnameFor } from '../../src/attach';
import { serve, request } from '../../src/demo/traffic';
import * as netns from '../../src/netns';
import { Topology, ipJson } from '../harness/fixtures';
import { eventually } from '../harness/eventually';

const topo = new Topology('att');
test.after.always(() => topo.cleanup());

test.serial(
  'two namespaces on one bridge exchange TCP, UDP and HTTP, over IPv4 and IPv6, and reach the gateway',
  async (t) => {
    const node = await topo.ns('node');
    const c1 = await topo.ns('c1');
    const c2 = await topo.ns('c2');
    await bridge.ensure(node, 'br0', { addresses: ['10.70.0.1/24', 'fd70::1/64'] });
    const a1 = await attach(node, c1, { bridge: 'br0', address: '10.70.0.2/24' });
    const a2 = await attach(node, c2, { bridge: 'br0', address: '10.70.0.3/24' });
    t.is(a1.gateway, '10.70.0.1', 'the gateway defaults to the bridge address in the subnet');
    t.is(a1.hostIfname, hostIfnameFor(c1, 'eth0'));
    await addr.replace(c1, 'fd70::2/64', 'eth0', { noDad: true });
    await addr.replace(c2, 'fd70::3/64', 'eth0', { noDad: true });

    // Observed with ip: eth0 inside with the address, lo up, default route, host end on the bridge.
    const [eth0] = ipJson(c1, 'addr', 'show', 'eth0');
    t.true(eth0.addr_info.some((a: any) => a.local === '10.70.0.2' && a.prefixlen === 24));
    t.true(ipJson(c1, 'link', 'show', 'lo')[0].flags.includes('UP'));
    t.deepEqual(
      ipJson(c1, 'route', 'show', 'default').map((r: any) => [r.gateway, r.dev]),
      [['10.70.0.1', 'eth0']],
    );
    t.is(ipJson(node, 'link', 'show', a1.hostIfname)[0].master, 'br0');

    const servers = await Promise.all([
      serve(c2, 'tcp', '10.70.0.3', 8000, 'c2-tcp'),
      serve(c2, 'udp', '10.70.0.3', 8001, 'c2-udp'),
      serve(c2, 'http', '10.70.0.3', 8002, 'c2-http'),
      serve(c1, 'tcp', 'fd70::2', 8003, 'c1-tcp6'),
      serve(node, 'tcp', '10.70.0.1', 8004, 'gateway'),
    ]);
    try {
      t.deepEqual((await request(c1, 'tcp', '10.70.0.3', 8000, { count: 50, concurrency: 10 })).replies, {
        'c2-tcp': 50,
      });
      t.deepEqual((await request(c1, 'udp', '10.70.0.3', 8001, { count: 10 })).replies, { 'c2-udp': 10 });
      t.deepEqual((await request(c1, 'http', '10.70.0.3', 8002, { count: 10 })).replies, { 'c2-http': 10 });
      t.deepEqual((await request(c2, 'tcp', 'fd70::2', 8003, { count: 5 })).replies, { 'c1-tcp6': 5 });
      t.deepEqual((await request(c2, 'tcp', '10.70.0.1', 8004)).replies, { gateway: 1 });
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
    t.truthy(a2.mac);
  },
);

test.serial('attach is idempotent; detach removes both ends and is idempotent', async (t) => {
  const node = await topo.ns('node2');
  const c = await topo.ns('c3');
  await bridge.ensure(node, 'br1', { addresses: ['10.71.0.1/24'] });
  const first = await attach(node, c, { bridge: 'br1', address: '10.71.0.5/24' });
  const second = await attach(node, c, { bridge: 'br1', address: '10.71.0.5/24' });
  t.deepEqual(second, first);
  t.is(ipJson(node, 'link', 'show', 'type', 'veth').length, 1);
  t.is(ipJson(c, 'addr', 'show', 'eth0')[0].addr_info.filter((a: any) => a.family === 'inet').length, 1);

  t.true(await detach(c));
  t.false(await detach(c));
  t.is(ipJson(node, 'link', 'show', 'type', 'veth').length, 0);
  t.is(await link.get(c, 'eth0'), undefined);
});

test.serial('a failed attach leaves nothing behind', async (t) => {
  const node = await topo.ns('node3');
  const c = await topo.ns('c4');
  await bridge.ensure(node, 'br2', { addresses: ['10.72.0.1/24'] });
  // A gateway outside the container's subnet: the route cannot be added.
  const err = await t.throwsAsync(attach(node, c, { bridge: 'br2', address: '10.72.0.5/24', gateway: '192.0.2.1' }));
  t.regex(err!.message, /route default via 192\.0\.2\.1 dev eth0 in namespace att-c4: ENETUNREACH/);
  t.is(ipJson(node, 'link', 'show', 'type', 'veth').length, 0);
  t.is(await link.get(c, 'eth0'), undefined);
  t.deepEqual(await route.list(c), []);
  // Not a bridge: refused before anything is made.
  await link.add(node, { kind: 'veth', name: 'notbr', peer: { name: 'notbrp' } });
  await t.throwsAsync(attach(node, c, { bridge: 'notbr', address: '10.72.0.5/24' }), {
    message: /notbr in namespace att-node3 is a veth, not a bridge/,
  });
  t.is(await link.get(c, 'eth0'), undefined);
});

test.serial(
  'an address reused after a crash (no detach): attach announces it, and the host reaches the silent namespace within 100 ms, IPv4 and IPv6; detach drops the host entries',
  async (t) => {
    const node = await topo.ns('node4');
    await bridge.ensure(node, 'br4', { addresses: ['10.74.0.1/24', 'fd74::1/64'] });
    // A bystander keeps a port on the bridge: with none, the bridge loses its carrier and the kernel flushes its entries itself.
    await attach(node, await topo.ns('by4'), { bridge: 'br4', address: '10.74.0.50/24' });
    const entry = (ip: string) =>
      ipJson<{ dst: string; lladdr?: string }[]>(node, 'neigh', 'show', 'dev', 'br4').find((e) => e.dst === ip);
    const reach = async (ip: string, want: string, timeoutMs: number) =>
      (await request(node, 'tcp', ip, 8000, { timeoutMs })).replies[want] === 1;
    for (const [ip, cidr] of [
      ['10.74.0.9', '10.74.0.9/24'],
      ['fd74::9', 'fd74::9/64'],
    ] as const) {
      const fam = ip.includes(':') ? 6 : 4;
      const old = await topo.ns(`old${fam}`);
      const a = await attach(node, old, { bridge: 'br4', address: cidr });
      const s = await serve(old, 'tcp', ip, 8000, 'old');
      t.true(await reach(ip, 'old', 2000), `IPv${fam}: the host talks to the first namespace`);
      await s.stop();
      t.is(entry(ip)?.lladdr, a.mac, `IPv${fam}: the host's entry holds its MAC`);
      // The namespace goes without a detach (its runtime crashed): the veth goes with it, the host's entry stays.
      old.close();
      netns.del(old.name!);
      await eventually(async () => !(await link.get(node, a.hostIfname)), {
        ms: 10_000,
        what: 'the host end to go with its namespace',
      });
      t.is(entry(ip)?.lladdr, a.mac, `IPv${fam}: the host's entry still holds the old MAC`);

      const fresh = await topo.ns(`new${fam}`);
      const b = await attach(node, fresh, { bridge: 'br4', address: cidr });
      t.not(b.mac, a.mac);
      const s2 = await serve(fresh, 'tcp', ip, 8000, 'new');
      try {
        t.true(await reach(ip, 'new', 100), `IPv${fam}: the host reaches the silent new namespace within 100 ms`);
        t.is(entry(ip)?.lladdr, b.mac, `IPv${fam}: the host's entry holds the new MAC`);
      } finally {
        await s2.stop();
      }
      t.true(await detach(fresh, 'eth0', node));
      t.is(entry(ip), undefined, `IPv${fam}: detach removed the host's entry`);
    }
  },
);

test.serial('attach to a bridge that is down: done at once, nothing announced (no port forwards there)', async (t) => {
  const node = await topo.ns('node5');
  const c = await topo.ns('c5');
  await bridge.ensure(node, 'br5', { addresses: ['10.75.0.1/24'] });
  await link.setDown(node, 'br5');
  const start = Date.now();
  const a = await attach(node, c, { bridge: 'br5', address: '10.75.0.5/24' });
  t.true(Date.now() - start < 3000, `attach took ${Date.now() - start} ms`);
  t.is(ipJson(node, 'link', 'show', a.hostIfname)[0].master, 'br5');
});
