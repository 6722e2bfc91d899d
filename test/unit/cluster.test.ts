/** The pod network's pure logic: flannel's config schema, subnet arithmetic, lease parsing, and the desired peer table. */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { clusterConf } from '../../src/cni/bridge/cluster';
import { writeNodeState } from '../../src/cluster/local';
import {
  buildConfig,
  candidateSubnets,
  claimable,
  parseConfig,
  parsePeer,
  parseSubnet,
  subnetKey,
  subnetText,
  type Peer,
} from '../../src/cluster/config';
import { NEXTHOP_THRESHOLD, desiredState } from '../../src/cluster/desired';
import { parseEndpoints, parsePrefix } from '../../src/cluster/store';
import { asProgrammed, programmedAs, qualifiedName, serviceLag, storedService } from '../../src/cluster/services';
import type { Endpoint } from '../../src/nat/model';

const vx = buildConfig({ network: '10.5.0.0/16', backend: 'vxlan' });
const hg = buildConfig({ network: '10.5.0.0/16', backend: 'host-gw' });

test("cluster init's config: flannel's schema and defaults; the first subnet is never leased", (t) => {
  t.deepEqual(vx, {
    Network: '10.5.0.0/16',
    SubnetLen: 24,
    SubnetMin: '10.5.1.0',
    SubnetMax: '10.5.255.0',
    Backend: { Type: 'vxlan', VNI: 1, Port: 8472, DirectRouting: false },
  });
  t.deepEqual(buildConfig({ network: '10.9.0.0/24', subnetLen: 26, backend: 'host-gw' }), {
    Network: '10.9.0.0/24',
    SubnetLen: 26,
    SubnetMin: '10.9.0.64',
    SubnetMax: '10.9.0.192',
    Backend: { Type: 'host-gw' },
  });
  t.deepEqual(
    [...candidateSubnets(buildConfig({ network: '10.9.0.0/24', subnetLen: 26, backend: 'host-gw' }))].map(subnetText),
    ['10.9.0.64/26', '10.9.0.128/26', '10.9.0.192/26'],
  );
});

test('cluster init refuses bad input with one line each', (t) => {
  const bad: [Parameters<typeof buildConfig>[0], RegExp][] = [
    [{ network: '10.5.0.0/33', backend: 'vxlan' }, /invalid network "10\.5\.0\.0\/33"/],
    [{ network: 'fd00::/64', backend: 'vxlan' }, /IPv4/],
    [{ network: '10.5.0.1/16', backend: 'vxlan' }, /host bits set \(did you mean 10\.5\.0\.0\/16\?\)/],
    [{ network: '10.5.0.0/16', subnetLen: 16, backend: 'vxlan' }, /--subnet-len 16/],
    [{ network: '10.5.0.0/16', subnetLen: 31, backend: 'vxlan' }, /--subnet-len 31/],
    [{ network: '10.5.0.0/16', backend: 'udp' }, /unknown backend "udp": expected host-gw or vxlan/],
    [{ network: '10.5.0.0/16', backend: 'vxlan', vni: 1 << 24 }, /--vni/],
    [{ network: '10.5.0.0/16', backend: 'host-gw', port: 4789 }, /vxlan backend only/],
  ];
  for (const [o, re] of bad) {
    const err = t.throws(() => buildConfig(o), undefined, JSON.stringify(o));
    t.regex(err!.message, re);
    t.false(err!.message.includes('\n'));
  }
});

test("a config written by flannel's etcdctl recipe is read with flannel's defaults", (t) => {
  const c = parseConfig('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}', '/k/config');
  t.deepEqual(c, vx);
  t.throws(() => parseConfig('{', '/k/config'), { message: /\/k\/config is not JSON/ });
  t.throws(() => parseConfig('{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}', '/k/config'), {
    message: /SubnetMin 10\.6\.0\.0 is outside the network/,
  });
});

test("subnet keys are flannel's (10.5.52.0-24); only subnets of the pool are claimable", (t) => {
  const s = parseSubnet('10.5.52.0/24');
  t.is(subnetKey(s), '10.5.52.0-24');
  t.true(claimable(vx, s));
  t.false(claimable(vx, parseSubnet('10.5.0.0/24')), 'the first subnet');
  t.false(claimable(vx, parseSubnet('10.6.1.0/24')), 'outside');
  t.false(claimable(vx, parseSubnet('10.5.1.0/25')), 'another length');
});

const lease = (ip: string, mac?: string, name = ip) =>
  JSON.stringify({
    PublicIP: ip,
    BackendType: mac ? 'vxlan' : 'host-gw',
    BackendData: mac ? { VNI: 1, VtepMAC: mac } : {},
    NodeName: name,
  });

test('a lease that is not JSON, outside the network, or a vxlan lease without a MAC is skipped, with the reason', (t) => {
  t.like(parsePeer(vx, '10.5.2.0-24', lease('192.168.1.2', '02:00:00:00:00:02', 'n2'), '7'), {
    peer: { publicIp: '192.168.1.2', vtepMac: '02:00:00:00:00:02', name: 'n2', lease: '7' },
  });
  const skip = (key: string, value: string) => {
    const r = parsePeer(vx, key, value, '0');
    return 'skip' in r ? r.skip : 'programmed';
  };
  t.regex(skip('10.5.2.0-24', 'nope'), /not JSON/);
  t.regex(skip('10.9.2.0-24', lease('192.168.1.2', '02:00:00:00:00:02')), /outside the network/);
  t.regex(
    skip('10.5.2.0-24', lease('192.168.1.2')),
    /programmed/,
    'a host-gw peer in a vxlan cluster is routed directly',
  );
  t.regex(
    skip('10.5.2.0-24', JSON.stringify({ PublicIP: '192.168.1.2', BackendType: 'vxlan', BackendData: {} })),
    /without a valid VtepMAC/,
  );
  t.regex(skip('10.5.2.0-24', JSON.stringify({ PublicIP: 'x' })), /not an address/);
  t.regex(skip('garbage', lease('192.168.1.2')), /not a subnet key/);
});

const peer = (i: number, backend: 'vxlan' | 'host-gw' = 'vxlan'): Peer => ({
  subnet: parseSubnet(`10.${5 + (i >> 8)}.${i & 255}.0/24`),
  publicIp: `192.168.${Math.floor(i / 250)}.${(i % 250) + 1}`,
  backend,
  ...(backend === 'vxlan'
    ? { vtepMac: `02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}` }
    : {}),
  name: `n${i}`,
  lease: '0',
});

test('the desired peer table: host-gw routes via public IPs; vxlan neighbour, FDB and onlink route per peer; never the node itself', (t) => {
  const self = { subnet: parseSubnet('10.5.1.0/24'), publicIp: '192.168.0.2' };
  const h = desiredState(hg, self, [peer(1, 'host-gw'), peer(2, 'host-gw'), peer(3, 'host-gw')]);
  t.deepEqual(
    [...h.routes.values()],
    [
      { dst: '10.5.2.0/24', via: '192.168.0.3', vxlan: false },
      { dst: '10.5.3.0/24', via: '192.168.0.4', vxlan: false },
    ],
  );
  t.is(h.neighs.size + h.fdb.size + h.nexthops.size, 0);
  const v = desiredState(vx, self, [peer(1), peer(2)]);
  t.deepEqual([...v.routes.values()], [{ dst: '10.5.2.0/24', via: '10.5.2.0', vxlan: true }]);
  t.deepEqual([...v.neighs], [['10.5.2.0', '02:00:00:00:00:02']]);
  t.deepEqual([...v.fdb], [['02:00:00:00:00:02', '192.168.0.3']]);
});

test('DirectRouting: peers on the underlay subnet are routed host-gw even in vxlan mode', (t) => {
  const direct = { ...vx, Backend: { ...vx.Backend, DirectRouting: true } };
  const self = { subnet: parseSubnet('10.5.1.0/24'), publicIp: '192.168.0.2', underlay: parseSubnet('192.168.0.0/24') };
  const far: Peer = { ...peer(3), publicIp: '172.16.0.9' };
  const d = desiredState(direct, self, [peer(2), far]);
  t.deepEqual(
    [...d.routes.values()],
    [
      { dst: '10.5.2.0/24', via: '192.168.0.3', vxlan: false },
      { dst: '10.5.3.0/24', via: '10.5.3.0', vxlan: true },
    ],
  );
  t.deepEqual([...d.fdb.values()], ['172.16.0.9']);
});

test(`beyond ${NEXTHOP_THRESHOLD} peers, routes go through one nexthop object per gateway`, (t) => {
  const self = { subnet: parseSubnet('10.5.0.0/24'), publicIp: '192.168.200.200' };
  const big = buildConfig({ network: '10.0.0.0/8', backend: 'host-gw' });
  const many = Array.from({ length: NEXTHOP_THRESHOLD + 1 }, (_, i) => peer(i + 1, 'host-gw'));
  const d = desiredState(big, self, many);
  t.is(d.routes.size, NEXTHOP_THRESHOLD + 1);
  t.is(d.nexthops.size, NEXTHOP_THRESHOLD + 1);
  for (const r of d.routes.values()) t.is(d.nexthops.get(r.nhid!)?.via, r.via);
  t.is(desiredState(big, self, many.slice(0, NEXTHOP_THRESHOLD)).nexthops.size, 0);
});

test('--etcd and --prefix are checked', (t) => {
  t.deepEqual(parseEndpoints('http://127.0.0.1:2379, http://127.0.0.1:2380'), [
    'http://127.0.0.1:2379',
    'http://127.0.0.1:2380',
  ]);
  t.throws(() => parseEndpoints(''), { message: /--etcd needs at least one URL/ });
  t.throws(() => parseEndpoints('127.0.0.1:2379'), { message: /invalid etcd URL/ });
  t.is(parsePrefix(undefined), '/tsnet/network');
  t.is(parsePrefix('/coreos.com/network/'), '/coreos.com/network');
  t.throws(() => parsePrefix('tsnet'), { message: /invalid --prefix/ });
});

test('tsnet-bridge with "cluster": true takes the range, gateway, bridge and MTU from the node state; without it, nothing yet (error 11)', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-clconf-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const conf = {
    cniVersion: '1.0.0',
    name: 'podnet',
    type: 'tsnet-bridge',
    cluster: true,
    ipMasq: true,
    ipam: { type: 'tsnet-ipam' },
  };
  const none = t.throws(() => clusterConf(conf, { stateDir: dir }));
  t.like(none, { code: 11 });
  t.regex(none!.message, /no pod subnet yet .*start tsnet agent --etcd/);
  writeNodeState(dir, {
    node: 'n1',
    subnet: '10.72.5.0/24',
    vtepMac: '02:00:00:00:00:05',
    network: '10.72.0.0/16',
    bridge: 'tsnet0',
    mtu: 1450,
  });
  t.like(clusterConf(conf, { stateDir: dir }), {
    bridge: 'tsnet0',
    isGateway: true,
    isDefaultGateway: true,
    mtu: 1450,
    clusterNetwork: '10.72.0.0/16',
    ipam: { type: 'tsnet-ipam', ranges: [[{ subnet: '10.72.5.0/24', gateway: '10.72.5.1' }]] },
  });
  t.like(clusterConf({ ...conf, mtu: 1400 }, { stateDir: dir }), { mtu: 1400 }, 'a configured MTU wins');
  t.throws(() => clusterConf({ ...conf, ipam: { type: 'tsnet-ipam', subnet: '10.9.0.0/16' } }, { stateDir: dir }), {
    message: /the node's lease \(10\.72\.5\.0\/24\) is the IPAM range/,
  });
  t.throws(() => clusterConf({ ...conf, bridge: 'cni0' }, { stateDir: dir }), {
    message: /not the node bridge tsnet0/,
  });
  const plain = { ...conf, cluster: undefined };
  t.is(clusterConf(plain, { stateDir: dir }), plain, 'not a cluster network: unchanged');
  t.throws(() => clusterConf({ ...plain, clusterNetwork: '10.0.0.0/8' }, { stateDir: dir }), {
    message: /set by "cluster": true/,
  });
});

test("cluster services are stored qualified, normalized and in `service ls`'s field order", (t) => {
  t.is(qualifiedName('web'), 'default/web');
  t.is(qualifiedName('shop/web'), 'shop/web');
  const s = storedService({
    masqueradeNotFrom: '10.0.0.0/8',
    endpoints: ['10.0.0.2:80@2' as unknown as Endpoint],
    proto: 'tcp',
    port: 80,
    vip: '10.96.0.10',
    name: 'web',
  });
  t.deepEqual(Object.keys(s), ['name', 'vip', 'port', 'proto', 'endpoints', 'masqueradeNotFrom']);
  t.deepEqual(s.endpoints, [{ ip: '10.0.0.2', port: 80, weight: 2 }]);
  t.is(s.name, 'default/web');
  t.throws(() => storedService({ name: 'bad name', vip: '10.96.0.10', port: 80, proto: 'tcp', endpoints: [] }), {
    message: /invalid service name "default\/bad name"/,
  });
});

test("a cluster service as a node programs it: the cluster's, masqueraded from outside the (IPv4) Network unless it says otherwise; a node's lag against the store", (t) => {
  const v4 = storedService({ name: 'web', vip: '10.96.0.10', port: 80, proto: 'tcp', endpoints: [] });
  const v6 = storedService({ name: 'web6', vip: 'fd00::10', port: 80, proto: 'tcp', endpoints: [] });
  const own = storedService({ ...v4, name: 'own', vip: '10.96.0.11', masqueradeNotFrom: '10.0.0.0/8' });
  t.like(asProgrammed(v4, '10.244.0.0/16'), { origin: 'cluster', masqueradeNotFrom: '10.244.0.0/16' });
  t.is(asProgrammed(v6, '10.244.0.0/16').masqueradeNotFrom, undefined, 'an IPv6 VIP is not given an IPv4 CIDR');
  t.is(asProgrammed(own, '10.244.0.0/16').masqueradeNotFrom, '10.0.0.0/8');
  const here = [v4, v6, own].map((s) => asProgrammed(s, '10.244.0.0/16'));
  t.true(here.every((h, i) => programmedAs(h, [v4, v6, own][i]!, '10.244.0.0/16')));
  t.false(programmedAs(here[0]!, { ...v4, port: 81 }, '10.244.0.0/16'));
  const gone = asProgrammed(storedService({ ...v4, name: 'gone', vip: '10.96.0.12' }), '10.244.0.0/16');
  const lag = serviceLag(
    [v4, { ...v6, port: 8080 }, own, storedService({ ...v4, name: 'new', vip: '10.96.0.13' })],
    [...here, gone],
    '10.244.0.0/16',
  );
  t.deepEqual(
    [lag.missing, lag.stale, lag.extra].map((xs) => xs.map((s) => s.name)),
    [['default/new'], ['default/web6'], ['default/gone']],
  );
});
