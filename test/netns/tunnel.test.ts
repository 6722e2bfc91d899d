/**
 * The netlink pieces a pod network is made of, through the CLI verbs an
 * operator types (iproute2's names): a vxlan device, permanent neighbour and
 * FDB entries, onlink routes of a protocol of one's own, nexthop objects and
 * blackhole routes. Two "nodes" on a veth underlay, a tunnel between them
 * built by hand with tsnet, real TCP through it, and iproute2 as observer.
 */
import test from 'ava';
import * as addr from '../../src/addr';
import * as link from '../../src/link';
import * as route from '../../src/route';
import { sendBatch } from '../../src/netlink/batch';
import type * as netns from '../../src/netns';
import { request, serve } from '../../src/demo/traffic';
import { Topology, ipJson, run, tsnet } from '../harness/fixtures';

const topo = new Topology('tun');
const servers: { stop(): Promise<void> }[] = [];
test.after.always(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  topo.cleanup();
});

const MAC = { a: '02:00:00:aa:00:01', b: '02:00:00:bb:00:02' };
const UL = { a: '192.168.90.1', b: '192.168.90.2' };
/** Each side's "pod subnet": its .0 is the VTEP address, its .1 the service on lo. */
const NET = { a: '10.90.1', b: '10.90.2' };

function ok(...args: string[]): string {
  const r = tsnet(...args);
  if (r.status !== 0) throw new Error(`tsnet ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function tunnelPair(tag: string): Promise<{ a: netns.NetNs; b: netns.NetNs }> {
  const a = await topo.ns(`${tag}a`);
  const b = await topo.ns(`${tag}b`);
  await link.add(a, { kind: 'veth', name: 'eth0', peer: { name: 'eth0', netns: b } });
  for (const [h, side] of [
    [a, 'a'],
    [b, 'b'],
  ] as const) {
    await addr.add(h, `${UL[side]}/24`, 'eth0');
    await link.setUp(h, 'eth0');
    await addr.add(h, `${NET[side]}.1/32`, 'lo');
    const n = h.name!;
    ok(
      '-n',
      n,
      'link',
      'add',
      'vx0',
      '--type',
      'vxlan',
      '--vni',
      '42',
      '--local',
      UL[side],
      '--dev',
      'eth0',
      '--mac',
      MAC[side],
      '--mtu',
      '1450',
    );
    ok('-n', n, 'addr', 'add', `${NET[side]}.0/32`, '--dev', 'vx0');
  }
  return { a, b };
}

/** Programs `from`'s side toward `to`, as flannel's vxlan backend does per peer. */
function peer(h: netns.NetNs, to: 'a' | 'b', route = true): void {
  const n = h.name!;
  ok('-n', n, 'neigh', 'replace', `${NET[to]}.0`, '--lladdr', MAC[to], '--dev', 'vx0');
  ok('-n', n, 'fdb', 'replace', MAC[to], '--dev', 'vx0', '--dst', UL[to]);
  if (route)
    ok(
      '-n',
      n,
      'route',
      'add',
      `${NET[to]}.0/24`,
      '--via',
      `${NET[to]}.0`,
      '--dev',
      'vx0',
      '--onlink',
      '--proto',
      'tsnet',
    );
}

const reaches = async (from: netns.NetNs, ip: string) =>
  (await request(from, 'tcp', ip, 7000, { count: 1, timeoutMs: 500 })).ok === 1;

test('vxlan by hand: link add, neigh, fdb and onlink routes carry TCP; each entry is what iproute2 shows; deleting the FDB entry cuts it', async (t) => {
  const { a, b } = await tunnelPair('v');
  servers.push(await serve(b, 'tcp', `${NET.b}.1`, 7000, 'b'));
  t.false(await reaches(a, `${NET.b}.1`), 'nothing before the peer entries');
  peer(a, 'b');
  peer(b, 'a');
  peer(a, 'b'); // again: replace is idempotent
  t.true(await reaches(a, `${NET.b}.1`), 'TCP through the tunnel');

  const d = ipJson(a, '-d', 'link', 'show', 'vx0')[0];
  t.like(d, {
    mtu: 1450,
    address: MAC.a,
    linkinfo: { info_kind: 'vxlan', info_data: { id: 42, port: 8472, local: UL.a, learning: false } },
  });
  t.deepEqual(
    ipJson(a, 'neigh', 'show', 'dev', 'vx0').map((x: any) => [x.dst, x.lladdr, x.state]),
    [[`${NET.b}.0`, MAC.b, ['PERMANENT']]],
  );
  const fdb = JSON.parse(run('bridge', ['-j', '-n', a.name!, 'fdb', 'show', 'dev', 'vx0']).stdout) as any[];
  t.deepEqual(
    fdb.filter((e) => e.dst).map((e) => [e.mac, e.dst, e.flags, e.state]),
    [[MAC.b, UL.b, ['self'], 'permanent']],
  );
  t.deepEqual(
    ipJson(a, 'route', 'show', 'proto', '74').map((r: any) => [r.dst, r.gateway, r.dev, r.flags]),
    [[`${NET.b}.0/24`, `${NET.b}.0`, 'vx0', ['onlink']]],
  );
  // tsnet's own listings say the same.
  t.like(JSON.parse(ok('-j', '-n', a.name!, 'neigh', 'ls', '--dev', 'vx0')), [
    { address: `${NET.b}.0`, lladdr: MAC.b, dev: 'vx0', state: ['permanent'] },
  ]);
  t.like(JSON.parse(ok('-j', '-n', a.name!, 'fdb', 'ls', '--dev', 'vx0')), [
    { mac: MAC.b, dst: UL.b, self: true, permanent: true },
  ]);
  t.like(
    (JSON.parse(ok('-j', '-n', a.name!, 'route', 'ls')) as any[]).find((r) => r.protocol === 'tsnet'),
    { dst: `${NET.b}.0/24`, gateway: `${NET.b}.0`, dev: 'vx0', onlink: true },
  );

  ok('-n', a.name!, 'fdb', 'del', MAC.b, '--dev', 'vx0', '--dst', UL.b);
  ok('-n', a.name!, 'fdb', 'del', MAC.b, '--dev', 'vx0', '--dst', UL.b); // twice: no-op
  t.false(await reaches(a, `${NET.b}.1`), 'no FDB entry, no tunnel');
  ok('-n', a.name!, 'fdb', 'replace', MAC.b, '--dev', 'vx0', '--dst', UL.b);
  t.true(await reaches(a, `${NET.b}.1`));
  ok('-n', a.name!, 'neigh', 'del', `${NET.b}.0`, '--dev', 'vx0');
  t.is(ipJson(a, 'neigh', 'show', 'dev', 'vx0', 'nud', 'permanent').length, 0);
});

test('nexthop objects: a route through one carries TCP; replacing the object moves it; blackhole routes drop', async (t) => {
  const { a, b } = await tunnelPair('n');
  servers.push(await serve(b, 'tcp', `${NET.b}.1`, 7000, 'b'));
  peer(a, 'b', false);
  peer(b, 'a');
  ok('-n', a.name!, 'nexthop', 'replace', '7', '--via', `${NET.b}.0`, '--dev', 'vx0', '--onlink', '--proto', 'tsnet');
  ok('-n', a.name!, 'route', 'add', `${NET.b}.0/24`, '--nhid', '7', '--proto', 'tsnet');
  t.true(await reaches(a, `${NET.b}.1`), 'TCP through a nexthop object');
  t.like(ipJson(a, 'nexthop', 'show')[0], {
    id: 7,
    gateway: `${NET.b}.0`,
    dev: 'vx0',
    flags: ['onlink'],
    protocol: '74',
  });
  t.like(ipJson(a, 'route', 'show', 'proto', '74')[0], { dst: `${NET.b}.0/24`, nhid: 7 });
  t.like(JSON.parse(ok('-j', '-n', a.name!, 'nexthop', 'ls')), [
    { id: 7, gateway: `${NET.b}.0`, dev: 'vx0', onlink: true, protocol: 74 },
  ]);

  // The same object, pointed to the underlay (no tunnel, no route back): the route follows it at once.
  ok('-n', a.name!, 'nexthop', 'replace', '7', '--via', UL.b, '--dev', 'eth0', '--proto', 'tsnet');
  t.like(ipJson(a, 'route', 'get', `${NET.b}.1`)[0], { gateway: UL.b, dev: 'eth0' });
  ok('-n', a.name!, 'nexthop', 'del', '7');
  ok('-n', a.name!, 'nexthop', 'del', '7');
  t.is(ipJson(a, 'route', 'show', 'proto', '74').length, 0, 'deleting the object takes its routes');

  ok('-n', a.name!, 'route', 'add', `${NET.b}.0/24`, '--blackhole', '--proto', 'tsnet');
  t.like(ipJson(a, 'route', 'show', 'proto', '74')[0], { type: 'blackhole', dst: `${NET.b}.0/24` });
  t.false(await reaches(a, `${NET.b}.1`), 'a blackhole route drops');
  const bad = tsnet('-n', a.name!, 'route', 'add', '10.90.9.0/24', '--blackhole', '--via', UL.b);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /a blackhole route takes no gateway/);
});

test('link add --type vxlan refuses bad input in one line and creates nothing', async (t) => {
  const h = await topo.ns('bad');
  for (const args of [
    ['--type', 'vxlan', '--vni', '0'],
    ['--type', 'vxlan', '--vni', '16777216'],
    ['--type', 'geneve', '--vni', '1'],
    ['--type', 'vxlan', '--vni', '1', '--local', 'fd00::1'],
  ]) {
    const r = tsnet('-n', h.name!, 'link', 'add', 'vx9', ...args);
    t.is(r.status, 1, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  t.is(await link.get(h, 'vx9'), undefined);
});

test("a batch whose error replies overflow the socket's receive buffer: the overrun is reported and the socket keeps working", async (t) => {
  const h = await topo.ns('ovr');
  await link.add(h, { kind: 'veth', name: 'eth0', peer: { name: 'eth0p' }, up: true });
  await addr.add(h, '192.0.2.7/24', 'eth0');
  // 20,000 routes through a gateway no interface reaches: every one refused, with extended-ack text.
  const msgs = Array.from({ length: 20_000 }, (_, i) =>
    route.routeBatchMessage({ dst: `10.${i >> 8}.${i & 255}.0/24`, via: '172.16.0.1' }, undefined, 'replace'),
  );
  const rtnl = h.nl;
  const r = await sendBatch(rtnl, msgs);
  t.true(r.overrun || r.errors.size === msgs.length, `overrun ${r.overrun}, ${r.errors.size} errors`);
  // The same socket still answers (libuv reports the overflow as POLLERR; the socket must not stop polling).
  t.truthy(await link.get(h, 'eth0'));
  t.is((await route.list(h, { family: 4 })).filter((x) => x.dst.startsWith('10.')).length, 0);
});
