import test from 'ava';
import * as link from '../../src/link';
import * as veth from '../../src/veth';
import { Topology, ipJson } from '../harness/fixtures';

const topo = new Topology('lnk');
test.after.always(() => topo.cleanup());

test('veth with the peer created inside the target namespace under its final name, MTU and MACs', async (t) => {
  const a = await topo.ns('a');
  const b = await topo.ns('b');
  await link.add(a, {
    kind: 'veth',
    name: 'va',
    mtu: 1400,
    mac: '02:00:00:00:0a:01',
    up: true,
    peer: { name: 'eth0', netns: b, mac: '02:00:00:00:0b:01' },
  });
  await link.setUp(b, 'eth0');
  const [seenA] = ipJson(a, '-d', 'link', 'show', 'va');
  const [seenB] = ipJson(b, '-d', 'link', 'show', 'eth0');
  t.is(seenA.linkinfo.info_kind, 'veth');
  t.is(seenA.mtu, 1400);
  t.is(seenB.mtu, 1400, 'the peer inherits the MTU');
  t.is(seenA.address, '02:00:00:00:0a:01');
  t.is(seenB.address, '02:00:00:00:0b:01');
  t.true(seenB.flags.includes('UP'));
  t.is(seenA.link_index, seenB.ifindex, 'iflink points at the peer');

  const ours = await link.mustGet(a, 'va');
  t.is(ours.kind, 'veth');
  t.is(ours.peerIndex, seenB.ifindex);
  t.is(ours.linkNetnsId, seenA.link_netnsid);
  t.true(ours.up);
  t.is((await link.list(a)).filter((l) => l.kind === 'veth').length, 1);
});

test('set: down/up, rename, MTU, MAC, as ip sees them; delete is idempotent', async (t) => {
  const c = await topo.ns('c');
  await link.add(c, { kind: 'veth', name: 'd0', peer: { name: 'd0peer' } });
  await link.set(c, 'd0', { name: 'renamed0', mtu: 9000, mac: '02:11:22:33:44:55', up: true });
  let [s] = ipJson(c, 'link', 'show', 'renamed0');
  t.is(s.mtu, 9000);
  t.is(s.address, '02:11:22:33:44:55');
  t.true(s.flags.includes('UP'));
  await link.setDown(c, 'renamed0');
  [s] = ipJson(c, 'link', 'show', 'renamed0');
  t.false(s.flags.includes('UP'));
  t.true(await link.del(c, 'renamed0'));
  t.false(await link.del(c, 'renamed0'));
  t.is(await link.get(c, 'renamed0'), undefined);
  t.is(await link.get(c, 'd0peer'), undefined, 'deleting one end of a veth deletes both');
});

test('errors name the object and the namespace; bad names fail before the kernel is asked', async (t) => {
  const d = await topo.ns('d');
  await veth.add(d, 'dup0', 'dup0p');
  const err = await t.throwsAsync(link.add(d, { kind: 'veth', name: 'dup0', peer: { name: 'other0' } }));
  t.is((err as any).code, 'EEXIST');
  t.is(err!.message, 'creating veth dup0 in namespace lnk-d: EEXIST (File exists)');
  const long = await t.throwsAsync(veth.add(d, 'ok0', 'peer-name-too-long'));
  t.regex(long!.message, /interface name "peer-name-too-long" is 18 bytes; Linux allows at most 15/);
  t.is(await link.get(d, 'ok0'), undefined, 'nothing half-created');
  t.regex((await t.throwsAsync(link.mustGet(d, 'nope0')))!.message, /interface nope0 not found in namespace lnk-d/);
});

test('a dump of hundreds of links is complete (multi-part netlink replies)', async (t) => {
  const e = await topo.ns('e');
  await Promise.all(
    Array.from({ length: 150 }, (_, i) => link.add(e, { kind: 'veth', name: `va${i}`, peer: { name: `vb${i}` } })),
  );
  const names = new Set((await link.list(e)).map((l) => l.name));
  t.is(names.size, 301);
  t.is(ipJson(e, 'link', 'show').length, 301);
});
