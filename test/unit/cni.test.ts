import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseResolvConf } from '../../src/cni/ipam';
import { convertResult, parseResult, compare, requireSupported } from '../../src/cni/version';
import { parseEnv, parseCniArgs } from '../../src/cni/env';
import { parseIpamConfig, bigToIp, rangeText } from '../../src/cni/ipam/config';
import { parseBridgeConf, portForwards, hostVethName } from '../../src/cni/bridge';
import { CniError } from '../../src/cni/errors';
import { shimConf } from '../../src/cni/install';
import { RecordStore } from '../../src/cni/records';
import { spawnSync } from 'node:child_process';

const result = {
  cniVersion: '1.1.0',
  interfaces: [{ name: 'eth0', mac: '02:00:00:00:00:01', mtu: 1400, sandbox: '/run/netns/x' }],
  ips: [
    { address: '10.0.0.2/24', gateway: '10.0.0.1', interface: 0 },
    { address: 'fd00::2/64', interface: 0 },
  ],
  routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1', mtu: 1300 }],
};

test('results convert to the 0.3/0.4 shape (ips[].version) and back; 1.1-only fields are dropped for older versions', (t) => {
  const old = convertResult(result, '0.4.0') as any;
  t.deepEqual(
    old.ips.map((i: any) => i.version),
    ['4', '6'],
  );
  t.false('mtu' in old.routes[0]);
  t.false('mtu' in old.interfaces[0]);
  const back = parseResult(old);
  t.deepEqual(back.ips, result.ips);
  const v1 = convertResult(result, '1.0.0') as any;
  t.false('version' in v1.ips[0]);
  t.false('mtu' in v1.routes[0]);
  t.is((convertResult(result, '1.1.0') as any).routes[0].mtu, 1300);
  t.deepEqual((convertResult(result, '1.0.0') as any).dns, {});
});

test('versions: comparison and the supported list', (t) => {
  t.is(compare('0.4.0', '1.0.0'), -1);
  t.is(compare('1.1.0', '1.0.0'), 1);
  t.is(requireSupported('0.3.1'), '0.3.1');
  const e = t.throws(() => requireSupported('0.2.0')) as CniError;
  t.is(e.code, 1);
});

test('env: required variables per command (error 4 naming them), container id and ifname checks, CNI_ARGS', (t) => {
  const e = t.throws(() => parseEnv({ CNI_COMMAND: 'ADD', CNI_PATH: '/x' })) as CniError;
  t.is(e.code, 4);
  t.regex(e.message, /CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME/);
  t.is(
    (
      t.throws(() =>
        parseEnv({ CNI_COMMAND: 'DEL', CNI_PATH: '/x', CNI_CONTAINERID: 'a/../b', CNI_IFNAME: 'eth0' }),
      ) as CniError
    ).code,
    4,
  );
  t.is(
    (
      t.throws(() =>
        parseEnv({ CNI_COMMAND: 'DEL', CNI_PATH: '/x', CNI_CONTAINERID: 'a', CNI_IFNAME: 'x'.repeat(16) }),
      ) as CniError
    ).code,
    4,
  );
  t.is((t.throws(() => parseEnv({ CNI_COMMAND: 'FOO' })) as CniError).code, 4);
  t.deepEqual(parseEnv({ CNI_COMMAND: 'GC', CNI_PATH: '/a:/b' }).path, ['/a', '/b']);
  t.deepEqual(parseCniArgs('IgnoreUnknown=1;IP=10.0.0.5'), { IgnoreUnknown: '1', IP: '10.0.0.5' });
  t.is((t.throws(() => parseCniArgs('novalue')) as CniError).code, 4);
});

test('IPAM config: host-local defaults (first usable to broadcast-1, gateway .1), ranges, and clear errors', (t) => {
  const c = parseIpamConfig({
    cniVersion: '1.0.0',
    name: 'n',
    type: 'x',
    ipam: { type: 'tsnet-ipam', subnet: '10.1.0.0/24' },
  });
  t.is(rangeText(c.rangeSets[0]![0]!), '10.1.0.1-10.1.0.254');
  t.is(c.rangeSets[0]![0]!.gateway, '10.1.0.1');
  t.is(c.dataDir, '/var/lib/cni/networks');
  const v6 = parseIpamConfig({
    cniVersion: '1.0.0',
    name: 'n',
    type: 'x',
    ipam: { type: 't', ranges: [[{ subnet: 'fd00::/120', rangeStart: 'fd00::10' }]] },
  });
  t.is(bigToIp(v6.rangeSets[0]![0]!.end, 6), 'fd00::ff');
  const bad = (ipam: Record<string, unknown>, re: RegExp, name = 'n') => {
    const e = t.throws(() =>
      parseIpamConfig({ cniVersion: '1.0.0', name, type: 'x', ipam: { type: 't', ...ipam } }),
    ) as CniError;
    t.is(e.code, 7);
    t.regex(e.message, re);
  };
  bad({ subnet: '10.1.0.5/24' }, /host bits set.*10\.1\.0\.0/);
  bad({ subnet: '10.1.0.0/31' }, /too small/);
  bad({ subnet: '10.1.0.0/24', rangeStart: '10.2.0.1' }, /not in 10\.1\.0\.0\/24/);
  bad({ ranges: [[{ subnet: '10.1.0.0/24' }], [{ subnet: '10.1.0.0/25' }]] }, /overlap/);
  bad({}, /needs "subnet" or "ranges"/);
  bad({ subnet: '10.1.0.0/24', dataDir: 'relative' }, /absolute/);
  bad({ subnet: '10.1.0.0/24' }, /invalid network name/, '../etc');
});

test('bridge config: defaults, types checked, port mappings become forwards per address family', (t) => {
  const c = parseBridgeConf({ cniVersion: '1.0.0', name: 'n', type: 'tsnet-bridge', ipam: { type: 'tsnet-ipam' } });
  t.is(c.bridge, 'cni0');
  t.false(c.ipMasq);
  t.true(
    parseBridgeConf({ cniVersion: '1.0.0', name: 'n', type: 't', isDefaultGateway: true, ipam: { type: 'x' } })
      .isGateway,
    'isDefaultGateway implies isGateway',
  );
  t.is(
    (
      t.throws(() =>
        parseBridgeConf({ cniVersion: '1.0.0', name: 'n', type: 't', ipMasq: 'true', ipam: { type: 'x' } }),
      ) as CniError
    ).code,
    7,
  );
  t.is((t.throws(() => parseBridgeConf({ cniVersion: '1.0.0', name: 'n', type: 't' })) as CniError).code, 7);
  const f = portForwards(
    'n',
    'cid',
    'eth0',
    [
      { hostPort: 8080, containerPort: 80 },
      { hostPort: 53, containerPort: 53, protocol: 'UDP', hostIP: '10.0.0.1' },
    ],
    ['10.88.0.2', 'fd00::2'],
  );
  t.deepEqual(
    f.map((x) => `${x.proto} ${x.listen ?? '*'}:${x.listenPort} -> ${x.targetIp}:${x.targetPort}`),
    ['tcp *:8080 -> 10.88.0.2:80', 'tcp *:8080 -> fd00::2:80', 'udp 10.0.0.1:53 -> 10.88.0.2:53'],
  );
  t.is(
    (
      t.throws(() =>
        portForwards('n', 'c', 'e', [{ hostPort: 1, containerPort: 1, protocol: 'sctp' }], ['10.0.0.2']),
      ) as CniError
    ).code,
    2,
  );
  t.is(hostVethName('n', 'a', 'eth0'), hostVethName('n', 'a', 'eth0'));
  t.not(hostVethName('n', 'a', 'eth0'), hostVethName('n', 'b', 'eth0'));
  t.true(hostVethName('n', 'a', 'eth0').length <= 15);
});

test("the shim's settings name node, the plugin and the socket by absolute path; bad values are refused", (t) => {
  const s = shimConf({
    socket: '/run/tsnet/agent.sock',
    stateDir: '/var/lib/x',
    node: '/opt/no de/node',
    entry: '/x/main.js',
    timeoutMs: 5000,
  });
  t.true(s.split('\n').includes('socket=/run/tsnet/agent.sock'));
  t.true(s.split('\n').includes('node=/opt/no de/node'));
  t.true(s.split('\n').includes('timeout_ms=5000'));
  t.true(s.split('\n').includes('state_dir=/var/lib/x'));
  t.true(shimConf({ socket: '', stateDir: '', node: '/n', entry: '/e', timeoutMs: 1 }).includes('socket=\n'));
  t.regex(
    t.throws(() => shimConf({ socket: 'rel.sock', stateDir: '', node: '/n', entry: '/e', timeoutMs: 1 }))!.message,
    /must be absolute/,
  );
  t.regex(
    t.throws(() => shimConf({ socket: `/${'x'.repeat(120)}`, stateDir: '', node: '/n', entry: '/e', timeoutMs: 1 }))!
      .message,
    /107 bytes/,
  );
  t.regex(
    t.throws(() => shimConf({ socket: '/s', stateDir: '', node: '/n\nsocket=/evil', entry: '/e', timeoutMs: 1 }))!
      .message,
    /line break/,
  );
  t.regex(
    t.throws(() => shimConf({ socket: '/s', stateDir: '', node: '/n', entry: '/e', timeoutMs: 9_999_999_999 }))!
      .message,
    /a day/,
  );
});

test("resolvConf: nameservers, domain, search and options become the result's dns", (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-resolv-'));
  const file = path.join(dir, 'resolv.conf');
  fs.writeFileSync(
    file,
    '# comment\nnameserver 10.0.0.53\nnameserver 10.0.0.54 ; trailing\ndomain example.test\nsearch a.test b.test\noptions ndots:2 rotate\n',
  );
  t.deepEqual(parseResolvConf(file), {
    nameservers: ['10.0.0.53', '10.0.0.54'],
    domain: 'example.test',
    search: ['a.test', 'b.test'],
    options: ['ndots:2', 'rotate'],
  });
  t.is((t.throws(() => parseResolvConf(path.join(dir, 'missing'))) as CniError).code, 5);
  fs.rmSync(dir, { recursive: true });
});

test("GC's sweep of records' temporary files: a dead writer's, of an attachment GC releases, goes; a live writer's or a kept attachment's stays", (t) => {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-records-'));
  const store = new RecordStore(state, 'net1');
  fs.mkdirSync(store.dir, { recursive: true });
  const dead = spawnSync('true').pid!; // exited: its pid runs nothing now
  const names = [
    `.gone:eth0.json.${dead}.tmp`,
    `.busy:eth0.json.${process.pid}.tmp`,
    `.kept:eth0.json.${dead}.tmp`,
    'other:eth0.json',
  ];
  for (const n of names) fs.writeFileSync(path.join(store.dir, n), '{');
  store.removeDeadTemps((containerId) => containerId === 'kept');
  t.deepEqual(fs.readdirSync(store.dir).sort(), [names[1]!, names[2]!, names[3]!].sort());
  fs.rmSync(state, { recursive: true, force: true });
});
