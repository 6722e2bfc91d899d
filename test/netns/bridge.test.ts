import test from 'ava';
import * as bridge from '../../src/bridge';
import * as link from '../../src/link';
import * as veth from '../../src/veth';
import { Topology, ipJson, run } from '../harness/fixtures';

const topo = new Topology('brt');
test.after.always(() => topo.cleanup());

test('ensure creates an up bridge with STP off, a stable MAC and its address, and is idempotent', async (t) => {
  const h = await topo.ns('a');
  const br = await bridge.ensure(h, 'br0', { addresses: ['10.60.0.1/24'] });
  const [seen] = ipJson(h, '-d', 'link', 'show', 'br0');
  t.is(seen.linkinfo.info_kind, 'bridge');
  t.is(seen.linkinfo.info_data.stp_state, 0);
  t.is(seen.address, bridge.stableMac('br0'));
  t.true(seen.flags.includes('UP'));
  t.deepEqual(
    ipJson(h, 'addr', 'show', 'br0')[0].addr_info.map((a: any) => `${a.local}/${a.prefixlen}`),
    ['10.60.0.1/24'],
  );

  const again = await bridge.ensure(h, 'br0', { addresses: ['10.60.0.1/24'] });
  t.is(again.index, br.index);
  t.is(ipJson(h, 'link', 'show', 'type', 'bridge').length, 1);
  t.is(ipJson(h, 'addr', 'show', 'br0')[0].addr_info.length, 1);
});

test('vlan_filtering on create and on an existing bridge (or a clear refusal where the kernel lacks it)', async (t) => {
  const h = await topo.ns('b');
  const kernelHasIt =
    run('ip', ['-n', 'brt-b', 'link', 'add', 'probe0', 'type', 'bridge', 'vlan_filtering', '1']).status === 0;
  run('ip', ['-n', 'brt-b', 'link', 'del', 'probe0']);
  if (!kernelHasIt) {
    const err = await t.throwsAsync(bridge.ensure(h, 'brv', { vlanFiltering: true }));
    t.is((err as any).code, 'EOPNOTSUPP');
    t.regex(err!.message, /creating bridge brv in namespace brt-b: EOPNOTSUPP .*no bridge VLAN filtering/);
    t.is(await link.get(h, 'brv'), undefined, 'nothing half-created');
    return;
  }
  await bridge.ensure(h, 'brv', { vlanFiltering: true });
  t.is(ipJson(h, '-d', 'link', 'show', 'brv')[0].linkinfo.info_data.vlan_filtering, 1);
  const l = await bridge.ensure(h, 'brv', { vlanFiltering: false });
  t.false(l.bridge!.vlanFiltering);
  t.is(ipJson(h, '-d', 'link', 'show', 'brv')[0].linkinfo.info_data.vlan_filtering, 0);
});

test('a name taken by a non-bridge link is refused and left untouched', async (t) => {
  const h = await topo.ns('c');
  await link.add(h, { kind: 'veth', name: 'taken0', peer: { name: 'taken0p' }, mtu: 1300 });
  const err = await t.throwsAsync(bridge.ensure(h, 'taken0', { addresses: ['10.61.0.1/24'], mtu: 1500 }));
  t.is(err!.message, 'taken0 in namespace brt-c is a veth link, not a bridge: pick another bridge name or delete it');
  const [seen] = ipJson(h, '-d', 'link', 'show', 'taken0');
  t.is(seen.linkinfo.info_kind, 'veth');
  t.is(seen.mtu, 1300);
  t.is(ipJson(h, 'addr', 'show', 'taken0')[0].addr_info.length, 0);
  await t.throwsAsync(bridge.del(h, 'taken0'), { message: /not a bridge/ });
});

test('ports: attach, hairpin, detach; the bridge MAC does not follow its ports', async (t) => {
  const h = await topo.ns('d');
  const br = await bridge.ensure(h, 'brp');
  // A port with a MAC lower than the bridge's would become the bridge MAC if it were not pinned.
  await veth.add(h, 'p0', 'p0peer', { mac: '02:00:00:00:00:01' });
  await bridge.addPort(h, 'brp', 'p0', { hairpin: true });
  const [port] = JSON.parse(run('bridge', ['-n', 'brt-d', '-j', '-d', 'link', 'show', 'dev', 'p0']).stdout);
  t.is(port.master, 'brp');
  t.true(port.hairpin);
  const decoded = await link.mustGet(h, 'p0');
  t.is(decoded.master, br.index);
  t.true(decoded.port!.hairpin);
  t.is((await link.mustGet(h, 'brp')).mac, bridge.stableMac('brp'));

  await bridge.setHairpin(h, 'p0', false);
  t.false(JSON.parse(run('bridge', ['-n', 'brt-d', '-j', '-d', 'link', 'show', 'dev', 'p0']).stdout)[0].hairpin);
  const [summary] = await bridge.list(h);
  t.deepEqual(
    summary!.ports.map((p) => p.name),
    ['p0'],
  );
  await bridge.removePort(h, 'p0');
  t.is((await link.mustGet(h, 'p0')).master, undefined);
  t.true(await bridge.del(h, 'brp'));
  t.false(await bridge.del(h, 'brp'));
});
