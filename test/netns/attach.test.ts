import test from 'ava';
import * as bridge from '../../src/bridge';
import * as link from '../../src/link';
import * as addr from '../../src/addr';
import * as route from '../../src/route';
import { attach, detach, hostIfnameFor } from '../../src/attach';
import { serve, request } from '../../src/demo/traffic';
import { Topology, ipJson } from '../harness/fixtures';

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
