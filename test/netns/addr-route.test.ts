import test from 'ava';
import * as addr from '../../src/addr';
import * as route from '../../src/route';
import * as link from '../../src/link';
import * as veth from '../../src/veth';
import * as sysctl from '../../src/sysctl';
import * as netns from '../../src/netns';
import { serve, request } from '../../src/demo/traffic';
import { Topology, ipJson, run } from '../harness/fixtures';

const topo = new Topology('art');
test.after.always(() => topo.cleanup());

test('addresses: add, replace, list, delete for IPv4 and IPv6', async (t) => {
  const h = await topo.ns('a');
  await link.add(h, { kind: 'veth', name: 'd0', peer: { name: 'd0p' }, up: true });
  await addr.add(h, '10.80.0.1/24', 'd0');
  await addr.add(h, 'fd80::1/64', 'd0', { noDad: true });
  const err = await t.throwsAsync(addr.add(h, '10.80.0.1/24', 'd0'));
  t.is(
    err!.message,
    'adding address 10.80.0.1/24 on d0 in namespace art-a: EEXIST (File exists: ipv4: Address already assigned)',
    "the kernel's own explanation (extended ack) is kept",
  );
  await addr.replace(h, '10.80.0.1/24', 'd0');
  const seen = ipJson(h, 'addr', 'show', 'd0')[0]
    .addr_info.filter((a: any) => a.scope === 'global')
    .map((a: any) => `${a.local}/${a.prefixlen}`);
  t.deepEqual(seen.sort(), ['10.80.0.1/24', 'fd80::1/64']);
  const ours = (await addr.list(h, { dev: 'd0' })).filter((a) => a.scope === 'global').map((a) => a.cidr);
  t.deepEqual(ours.sort(), seen.sort());
  t.deepEqual(
    (await addr.list(h, { dev: 'd0', family: 6 })).filter((a) => a.scope === 'global').map((a) => a.tentative),
    [false],
    'nodad',
  );
  t.true(await addr.del(h, 'fd80::1/64', 'd0'));
  t.false(await addr.del(h, 'fd80::1/64', 'd0'));
  await t.throwsAsync(addr.add(h, '10.80.0.1/24', 'nope0'), {
    message: 'interface nope0 not found in namespace art-a',
  });
});

test('routes: via a gateway, on a device, default; list; delete is idempotent', async (t) => {
  const h = await topo.ns('b');
  await link.add(h, { kind: 'veth', name: 'd1', peer: { name: 'd1p' }, up: true });
  await addr.add(h, '10.81.0.1/24', 'd1');
  await route.add(h, { dst: '10.99.0.0/16', via: '10.81.0.254' });
  await route.add(h, { dst: '10.98.1.1', dev: 'd1' });
  await route.replace(h, { dst: 'default', via: '10.81.0.254', metric: 50 });
  await route.replace(h, { dst: 'default', via: '10.81.0.254', metric: 50 });
  const seen = ipJson(h, 'route', 'show').map((r: any) => `${r.dst} ${r.gateway ?? '-'} ${r.dev} ${r.metric ?? 0}`);
  t.deepEqual(
    seen.sort(),
    ['10.81.0.0/24 - d1 0', '10.98.1.1 - d1 0', '10.99.0.0/16 10.81.0.254 d1 0', 'default 10.81.0.254 d1 50'].sort(),
  );
  const ours = await route.list(h, { family: 4 });
  t.deepEqual(
    ours.find((r) => r.dst === 'default'),
    {
      family: 4,
      dst: 'default',
      gateway: '10.81.0.254',
      dev: 'd1',
      metric: 50,
      table: 254,
      protocol: 'boot',
      scope: 'global',
      type: 'unicast',
    },
  );
  t.truthy(ours.find((r) => r.dst === '10.98.1.1/32' && r.scope === 'link'));
  t.true(await route.del(h, { dst: '10.99.0.0/16', via: '10.81.0.254' }));
  t.false(await route.del(h, { dst: '10.99.0.0/16', via: '10.81.0.254' }));
  await t.throwsAsync(route.add(h, { dst: '10.97.0.0/16' }), {
    message: /needs --via GATEWAY, --dev DEVICE or --nhid ID/,
  });
  await t.throwsAsync(route.add(h, { dst: '10.97.0.0/16', via: 'fd00::1' }), { message: /mixed IPv4 and IPv6/ });
});

test('a router namespace forwards only once ip_forward is set inside it; the caller namespace is unchanged', async (t) => {
  const a = await topo.ns('ra');
  const r = await topo.ns('rr');
  const b = await topo.ns('rb');
  await veth.add(r, 'to-a', 'eth0', { peerNetns: a, address: '10.82.1.1/24', peerAddress: '10.82.1.2/24' });
  await veth.add(r, 'to-b', 'eth0', { peerNetns: b, address: '10.82.2.1/24', peerAddress: '10.82.2.2/24' });
  await route.replace(a, { dst: 'default', via: '10.82.1.1' });
  await route.replace(b, { dst: 'default', via: '10.82.2.1' });
  const before = sysctl.get(netns.current(), sysctl.keys.ipForward);
  const srv = await serve(b, 'tcp', '10.82.2.2', 9000, 'b');
  try {
    sysctl.set(r, sysctl.keys.ipForward, 0);
    t.is((await request(a, 'tcp', '10.82.2.2', 9000, { timeoutMs: 500 })).ok, 0, 'no forwarding yet');
    t.is(sysctl.set(r, sysctl.keys.ipForward, 1), '0', 'set returns the previous value');
    t.is(sysctl.get(r, 'net.ipv4.ip_forward'), '1');
    t.deepEqual((await request(a, 'tcp', '10.82.2.2', 9000, { count: 20, concurrency: 5 })).replies, { b: 20 });
  } finally {
    await srv.stop();
  }
  t.is(sysctl.get(netns.current(), sysctl.keys.ipForward), before);
  sysctl.set(r, sysctl.keys.rpFilter('to-a'), 2);
  t.is(
    run('ip', ['netns', 'exec', 'art-rr', 'cat', '/proc/sys/net/ipv4/conf/to-a/rp_filter']).stdout.trim(),
    '2',
    'seen from inside by another tool',
  );
});

test('sysctl refuses keys that are not per namespace', (t) => {
  t.throws(() => sysctl.set(netns.current(), 'kernel.hostname', 'x'), { message: /only net\.\* keys/ });
  t.throws(() => sysctl.set(netns.current(), 'net.ipv4.../../../kernel/hostname', 'x'));
});
