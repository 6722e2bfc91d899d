/**
 * `tsnet doctor`: each check breaks exactly its thing in a node of its own,
 * sees doctor report it (with its fix, exit status 1), fixes it, and sees
 * the report go. Other checks may report other things about the same node:
 * each test looks at its own check only.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as addr from '../../src/addr';
import * as bridge from '../../src/bridge';
import * as link from '../../src/link';
import { attach } from '../../src/attach';
import * as sysctl from '../../src/sysctl';
import { NatEngine } from '../../src/nat/engine';
import { doctor, type Problem } from '../../src/inspect/doctor';
import { request, serve } from '../../src/demo/traffic';
import { natView, run, scratch, tsnet } from '../harness/fixtures';
import { eventually } from '../harness/eventually';
import { EtcdCluster } from '../harness/cluster';

const { topo, servers, tmp, cleanup } = scratch('doc');
test.after.always(cleanup);

let seq = 0;
/** A node with br0 (10.66.N.1/24) and two containers on it (.2 and .3), ip_forward on, the masquerade rule in place. */
async function node(o: { hairpin?: boolean; masquerade?: boolean } = {}) {
  const n = ++seq;
  const nd = await topo.ns(`n${n}`);
  await bridge.ensure(nd, 'br0', { addresses: [`10.66.${n}.1/24`] });
  const cs = [];
  for (const i of [2, 3]) {
    const c = await topo.ns(`n${n}c${i}`);
    await attach(nd, c, { bridge: 'br0', address: `10.66.${n}.${i}/24`, hairpin: o.hairpin ?? true });
    cs.push(c);
  }
  sysctl.set(nd, 'net.ipv4.ip_forward', 1);
  const stateDir = tmp('doctor');
  const view = natView(() => nd.name!, 'netlink', stateDir);
  if (o.masquerade ?? true) view.ok('nat', 'masquerade', 'add', '--source', `10.66.${n}.0/24`, '--out-not', 'br0');
  /** doctor's findings of one check, through the CLI; also checks the exit status agrees. */
  const findings = (check: string): Problem[] => {
    const r = view.cli('--json', 'doctor');
    const all = JSON.parse(r.stdout) as Problem[];
    if ((r.status === 0) !== (all.length === 0)) throw new Error(`doctor exit ${r.status} with ${all.length} problems`);
    return all.filter((p) => p.check === check);
  };
  return { n, nd, cs, stateDir, ...view, findings, ip: (i: number) => `10.66.${n}.${i}` };
}

/** The host end (bridge port) of container `c` of node `nd`. */
async function portOf(nd: Awaited<ReturnType<typeof node>>, index: number): Promise<string> {
  const pairs = await (await import('../../src/veth')).list(nd.nd);
  return pairs.find((p) => p.peer.netns.name === nd.cs[index]!.name)!.name;
}

test('ip-forward: a gateway bridge with containers and ip_forward off', async (t) => {
  const nd = await node();
  t.deepEqual(nd.findings('ip-forward'), []);
  sysctl.set(nd.nd, 'net.ipv4.ip_forward', 0);
  const [p] = nd.findings('ip-forward');
  t.regex(p?.problem ?? '', /net\.ipv4\.ip_forward is off but bridge br0/);
  t.regex(p?.fix ?? '', /sysctl -w net\.ipv4\.ip_forward=1/);
  sysctl.set(nd.nd, 'net.ipv4.ip_forward', 1);
  t.deepEqual(nd.findings('ip-forward'), []);
});

test('br-netfilter: a service endpoint on a bridge while bridged packets skip netfilter', async (t) => {
  const nd = await node();
  nd.ok('service', 'add', 'web', '--vip', `10.96.${nd.n}.1:80`, '--endpoint', `${nd.ip(3)}:8080`);
  t.deepEqual(nd.findings('br-netfilter'), []);
  sysctl.set(nd.nd, 'net.bridge.bridge-nf-call-iptables', 0);
  t.regex(nd.findings('br-netfilter')[0]?.problem ?? '', /services web have endpoints on br0/);
  sysctl.set(nd.nd, 'net.bridge.bridge-nf-call-iptables', 1);
  t.deepEqual(nd.findings('br-netfilter'), []);
});

test('rp-filter: strict reverse-path filtering with a --snat none forward', async (t) => {
  const nd = await node();
  servers.push(await serve(nd.cs[1]!, 'tcp', nd.ip(3), 3309, 'db'));
  nd.ok('forward', nd.ip(3), '3308', '3309', '--name', 'db', '--snat', 'none');
  sysctl.set(nd.nd, 'net.ipv4.conf.all.rp_filter', 0);
  t.deepEqual(nd.findings('rp-filter'), []);
  sysctl.set(nd.nd, 'net.ipv4.conf.all.rp_filter', 1);
  t.regex(nd.findings('rp-filter')[0]?.problem ?? '', /forward db uses --snat none/);
  sysctl.set(nd.nd, 'net.ipv4.conf.all.rp_filter', 2);
  t.deepEqual(nd.findings('rp-filter'), []);
});

test('bridge-port: a port that does not forward (its link down)', async (t) => {
  const nd = await node();
  const port = await portOf(nd, 0);
  t.deepEqual(nd.findings('bridge-port'), []);
  await link.set(nd.nd, port, { up: false });
  const [p] = nd.findings('bridge-port');
  t.is(p?.where, `br0 port ${port}`);
  t.regex(p?.problem ?? '', /is disabled: its container is cut off/);
  await link.set(nd.nd, port, { up: true });
  await eventually(() => nd.findings('bridge-port').length === 0, {
    ms: 5000,
    every: 100,
    what: `doctor's bridge-port finding going once ${port} is up again`,
  });
  t.deepEqual(nd.findings('bridge-port'), []);
});

test('hairpin: a service endpoint whose bridge port has hairpin off', async (t) => {
  const nd = await node({ hairpin: false });
  nd.ok('service', 'add', 'web', '--vip', `10.96.${nd.n}.1:80`, '--endpoint', `${nd.ip(2)}:8080`);
  const port = await portOf(nd, 0);
  const [p] = nd.findings('hairpin');
  t.regex(
    p?.problem ?? '',
    new RegExp(`endpoint ${nd.ip(2).replace(/\./g, '\\.')}:8080 of service web cannot reach its own service`),
  );
  t.is(p?.fix, `tsnet -n ${nd.nd.name} bridge port br0 ${port} --hairpin on`);
  nd.ok('bridge', 'port', 'br0', port, '--hairpin', 'on');
  t.deepEqual(nd.findings('hairpin'), []);
});

test('masquerade: containers behind a gateway bridge with no masquerade rule', async (t) => {
  const nd = await node({ masquerade: false });
  const [p] = nd.findings('masquerade');
  t.regex(
    p?.problem ?? '',
    new RegExp(`containers on br0 \\(10\\.66\\.${nd.n}\\.0/24: 10\\.66\\.${nd.n}\\.2, 10\\.66\\.${nd.n}\\.3\\)`),
  );
  nd.ok(...p!.fix.replace(`tsnet -n ${nd.nd.name} `, '').split(' '));
  t.deepEqual(nd.findings('masquerade'), []);
});

test('route-localnet: a forward serving 127.0.0.1 with route_localnet off on the way to its target', async (t) => {
  const nd = await node();
  servers.push(await serve(nd.cs[0]!, 'tcp', nd.ip(2), 3309, 'db'));
  nd.ok('forward', nd.ip(2), '3308', '3309', '--name', 'db');
  t.deepEqual(nd.findings('route-localnet'), []);
  sysctl.set(nd.nd, 'net.ipv4.conf.br0.route_localnet', 0);
  t.regex(
    nd.findings('route-localnet')[0]?.problem ?? '',
    /net\.ipv4\.conf\.br0\.route_localnet is 0: 127\.0\.0\.1 clients of a forward are dropped/,
  );
  nd.ok('sync', '--force');
  t.deepEqual(nd.findings('route-localnet'), []);
});

test('an interface named with a dot (v.10, as a VLAN eth0.100): rp_filter and route_localnet are read from its own keys', async (t) => {
  const nd = await node();
  const c = await topo.ns(`n${nd.n}v`);
  const [mine, theirs] = [`10.69.${nd.n}.1`, `10.69.${nd.n}.2`];
  await link.add(nd.nd, { kind: 'veth', name: 'v.10', up: true, peer: { name: 'eth0', netns: c } });
  await addr.replace(nd.nd, `${mine}/24`, 'v.10', { noDad: true });
  await addr.replace(c, `${theirs}/24`, 'eth0', { noDad: true });
  await link.setUp(c, 'eth0');
  servers.push(await serve(c, 'tcp', theirs, 3311, 'db'));
  // Serves 127.0.0.1 (route_localnet on v.10, the way to the target) and leaves replies to the target (rp_filter).
  nd.ok('forward', theirs, '3310', '3311', '--name', 'dotted', '--snat', 'none');
  /** sysctl(8) run in the node, which names the key as the kernel's /proc/sys path has it (v.10 -> v/10). */
  const sysctlW = (setting: string) => t.is(nd.inNs('sysctl', '-w', setting).status, 0, setting);

  t.deepEqual(nd.findings('route-localnet'), [], 'set on v.10 by the forward, and seen as set');
  sysctlW('net.ipv4.conf.v/10.route_localnet=0');
  const [p] = nd.findings('route-localnet');
  t.is(p?.where, 'v.10');
  t.regex(p?.problem ?? '', /^net\.ipv4\.conf\.v\/10\.route_localnet is 0: /);
  t.is(p?.fix, 'tsnet sync (it sets it), or sysctl -w net.ipv4.conf.v/10.route_localnet=1');
  sysctlW(p!.fix.replace(/^.* or sysctl -w /, '')); // the fix as printed
  t.deepEqual(nd.findings('route-localnet'), []);

  const strict = () => (nd.findings('rp-filter')[0]?.where.split(', ') ?? []).includes('v.10');
  sysctlW('net.ipv4.conf.all.rp_filter=0');
  sysctlW('net.ipv4.conf.v/10.rp_filter=0');
  t.false(strict());
  sysctlW('net.ipv4.conf.v/10.rp_filter=1');
  t.true(strict(), 'strict rp_filter on v.10 reported');
  sysctlW('net.ipv4.conf.v/10.rp_filter=2');
  t.false(strict());
});

test('conntrack: the table above 90% of its limit (the limit given: net.netfilter.nf_conntrack_max is global, not settable in a namespace)', async (t) => {
  const nd = await node();
  servers.push(await serve(nd.cs[1]!, 'udp', nd.ip(3), 5353, 'dns'));
  const flows = await request(nd.cs[0]!, 'udp', nd.ip(3), 5353, { count: 30, concurrency: 10 });
  t.is(flows.ok, 30);
  const count = Number(sysctl.get(nd.nd, 'net.netfilter.nf_conntrack_count'));
  // One entry per flow; two of the 30 may pick the same ephemeral source port and share one.
  t.true(count >= 25, `${count} entries`);
  const only = async (max: number) =>
    (await doctor(nd.nd, { conntrackMax: max, stateDirs: [] })).filter((p) => p.check === 'conntrack');
  t.regex((await only(count + 1))[0]?.problem ?? '', new RegExp(`holds ${count} of at most ${count + 1} entries`));
  t.deepEqual(await only(count * 2), []);
});

test('mtu: a veth whose MTU differs from its bridge (the container end: a host end would drag the bridge down with it)', async (t) => {
  const nd = await node();
  t.deepEqual(nd.findings('mtu'), []);
  await link.set(nd.cs[1]!, 'eth0', { mtu: 1400 });
  const [p] = nd.findings('mtu');
  t.is(p?.where, `${nd.cs[1]!.name} eth0`);
  t.regex(p?.problem ?? '', /eth0 in .* has MTU 1400, the bridge br0 1500/);
  await link.set(nd.cs[1]!, 'eth0', { mtu: 1500 });
  t.deepEqual(nd.findings('mtu'), []);
});

test('cni-state: an attachment whose namespace is gone, a reservation with no attachment', async (t) => {
  const nd = await node();
  const data = path.join(nd.stateDir, 'ipam');
  const rec = (cid: string, netns: string) => ({
    version: 1,
    network: 'cnet',
    containerId: cid,
    ifname: 'eth0',
    netns,
    bridge: 'br0',
    hostIfname: 'vtx',
    conf: { cniVersion: '1.0.0', name: 'cnet', type: 'tsnet-bridge', ipam: { type: 'tsnet-ipam', dataDir: data } },
    nat: { stateDir: nd.stateDir, backend: 'auto', rules: [], forwards: [] },
    complete: true,
  });
  fs.mkdirSync(path.join(nd.stateDir, 'cni', 'cnet'), { recursive: true });
  fs.mkdirSync(path.join(data, 'cnet'), { recursive: true });
  fs.writeFileSync(
    path.join(nd.stateDir, 'cni', 'cnet', 'alive:eth0.json'),
    JSON.stringify(rec('alive', nd.cs[0]!.path)),
  );
  fs.writeFileSync(path.join(data, 'cnet', '10.67.0.2'), 'alive\r\neth0');
  t.deepEqual(nd.findings('cni-state'), [], 'a live attachment and its reservation');
  // A reservation's writer killed mid-write leaves its temporary file (createExclusive's): no reservation.
  fs.writeFileSync(path.join(data, 'cnet', '.10.67.0.8.4242.tmp'), 'killed\r\neth0');
  t.deepEqual(nd.findings('cni-state'), [], "a dead writer's temporary file");
  fs.writeFileSync(
    path.join(nd.stateDir, 'cni', 'cnet', 'gone:eth0.json'),
    JSON.stringify(rec('gone', '/run/netns/no-such-namespace')),
  );
  fs.writeFileSync(path.join(data, 'cnet', '10.67.0.9'), 'leaked\r\neth0');
  const found = nd
    .findings('cni-state')
    .map((p) => p.where)
    .sort();
  t.deepEqual(found, ['cnet 10.67.0.9', 'cnet gone:eth0']);
  fs.rmSync(path.join(nd.stateDir, 'cni', 'cnet', 'gone:eth0.json'));
  fs.rmSync(path.join(data, 'cnet', '10.67.0.9'));
  t.deepEqual(nd.findings('cni-state'), []);
});

test("nat-canary: tsnet's rules flushed by someone else", async (t) => {
  const nd = await node();
  nd.ok('service', 'add', 'web', '--vip', `10.96.${nd.n}.1:80`, '--endpoint', `${nd.ip(3)}:8080`);
  t.deepEqual(nd.findings('nat-canary'), []);
  nd.inNs('nft', 'flush', 'ruleset');
  const [p] = nd.findings('nat-canary');
  t.regex(p?.problem ?? '', /NAT rules \(netlink\) are gone: someone flushed them/);
  t.regex(p?.fix ?? '', /sync/);
  nd.ok('sync');
  t.deepEqual(nd.findings('nat-canary'), []);
});

test('forward-drop: another nftables table drops forwarded traffic (tsnet cannot override it)', async (t) => {
  const nd = await node();
  t.deepEqual(nd.findings('forward-drop'), []);
  const r = run('ip', ['netns', 'exec', nd.nd.name!, 'nft', '-f', '-'], {
    input: 'table inet other {\n chain fw {\n type filter hook forward priority 0; policy drop;\n }\n}\n',
  });
  t.is(r.status, 0, r.stderr);
  const [p] = nd.findings('forward-drop');
  t.is(p?.where, 'table inet other chain fw');
  nd.inNs('nft', 'delete', 'table', 'inet', 'other');
  t.deepEqual(nd.findings('forward-drop'), []);
});

/**
 * A cluster node made as its agent makes one, without the agent (nothing repairs what a test breaks) and without
 * etcd: eth0 on an underlay, the node state, the vxlan device and bridge (ensureNode), and one peer programmed
 * (reconcile), as peers.json records it.
 */
async function clusterNode() {
  const n = ++seq;
  const nd = await topo.ns(`cl${n}`);
  await link.add(nd, { kind: 'veth', name: 'eth0', peer: { name: 'eth0p' }, up: true });
  await link.setUp(nd, 'eth0p');
  await addr.add(nd, `192.168.${n}.1/24`, 'eth0');
  const stateDir = tmp('doctor-cluster');
  const { buildConfig, parseSubnet } = await import('../../src/cluster/config');
  const { ensureNode, reconcile } = await import('../../src/cluster/kernel');
  const { desiredState } = await import('../../src/cluster/desired');
  const { nodeStateFor, peerRecords, writeNodeState, writePeers } = await import('../../src/cluster/local');
  const config = buildConfig({ network: '10.80.0.0/16', backend: 'vxlan' });
  const setup = {
    config,
    subnet: parseSubnet('10.80.1.0/24'),
    publicIp: `192.168.${n}.1`,
    bridge: 'tsnet0',
    vtepMac: '02:00:00:00:01:01',
  };
  const peer = {
    subnet: parseSubnet('10.80.2.0/24'),
    publicIp: `192.168.${n}.2`,
    backend: 'vxlan' as const,
    vtepMac: '02:00:00:00:02:02',
    name: 'peer2',
    lease: '0',
  };
  const program = async () => {
    const devices = await ensureNode(nd, setup);
    await reconcile(nd, desiredState(config, { subnet: setup.subnet, publicIp: setup.publicIp }, [peer]), devices);
    writeNodeState(
      stateDir,
      nodeStateFor({
        node: 'n1',
        subnet: setup.subnet,
        vtepMac: setup.vtepMac,
        config,
        bridge: 'tsnet0',
        prefix: '/tsnet/network',
        devices,
      }),
    );
  };
  await program();
  writePeers(stateDir, peerRecords([peer], setup.subnet));
  const findings = (check: string, ...global: string[]): Problem[] => {
    const r = tsnet('--netns', nd.name!, '--state-dir', stateDir, ...global, '--json', 'doctor');
    return (JSON.parse(r.stdout) as Problem[]).filter((p) => p.check === check);
  };
  return { nd, stateDir, program, findings, peer };
}

test('cluster-vxlan: the vxlan device of a cluster node gone', async (t) => {
  const c = await clusterNode();
  t.deepEqual(c.findings('cluster-vxlan'), []);
  run('ip', ['-n', c.nd.name!, 'link', 'del', 'tsnet.1']);
  const [p] = c.findings('cluster-vxlan');
  t.regex(p!.problem, /the vxlan device tsnet\.1 is missing: no pod on another node is reachable/);
  t.regex(p!.fix, /restart the node's agent/);
  await c.program();
  t.deepEqual(c.findings('cluster-vxlan'), []);
});

test("cluster-mtu: the node bridge above the tunnel's MTU", async (t) => {
  const c = await clusterNode();
  t.deepEqual(c.findings('cluster-mtu'), []);
  run('ip', ['-n', c.nd.name!, 'link', 'set', 'tsnet0', 'mtu', '1500']);
  const [p] = c.findings('cluster-mtu');
  t.regex(p!.problem, /node bridge tsnet0 has MTU 1500, above the tunnel's 1450: .* large responses hang/);
  t.is(p!.fix, `tsnet -n ${c.nd.name!} link set tsnet0 --mtu 1450`);
  t.is(tsnet('-n', c.nd.name!, 'link', 'set', 'tsnet0', '--mtu', '1450').status, 0, 'the fix as printed');
  t.deepEqual(c.findings('cluster-mtu'), []);
});

test('cluster-peers: a peer whose FDB entry is gone, a route of protocol tsnet no peer explains', async (t) => {
  const c = await clusterNode();
  t.deepEqual(c.findings('cluster-peers'), []);
  run('bridge', ['-n', c.nd.name!, 'fdb', 'del', c.peer.vtepMac, 'dev', 'tsnet.1', 'dst', c.peer.publicIp, 'self']);
  run('ip', [
    '-n',
    c.nd.name!,
    'route',
    'add',
    '10.80.9.0/24',
    'via',
    '192.168.200.1',
    'dev',
    'tsnet.1',
    'onlink',
    'proto',
    '74',
  ]);
  const found = c.findings('cluster-peers');
  t.is(found.length, 2, JSON.stringify(found));
  t.regex(
    found[0]!.problem,
    /peer peer2 \(10\.80\.2\.0\/24 at 192\.168\.\d+\.2\) is not programmed: missing FDB 02:00:00:00:02:02/,
  );
  t.regex(found[1]!.problem, /route 10\.80\.9\.0\/24 of protocol tsnet names no peer the agent knows/);
  await c.program(); // what the agent does: the FDB entry back, the stale route gone
  t.deepEqual(c.findings('cluster-peers'), []);
});

test('cluster-lease: with --etcd, an etcd that does not answer is reported (the data plane stays as it is)', async (t) => {
  const c = await clusterNode();
  t.deepEqual(c.findings('cluster-lease'), [], 'without --etcd the lease is not looked at');
  const [p] = c.findings('cluster-lease', '--etcd', 'http://127.0.0.1:9');
  t.is(p!.where, 'etcd');
  t.regex(p!.problem, /^etcd at http:\/\/127\.0\.0\.1:9/);
  t.deepEqual(
    c.findings('cluster-peers', '--etcd', 'http://127.0.0.1:9'),
    [],
    "the agent's peer list serves meanwhile",
  );
});

test('cluster-services: with --etcd, a cluster service the node has not programmed, another version of it, one deleted from etcd but still here', async (t) => {
  const c = await clusterNode();
  const etcd = new EtcdCluster(tmp('doctor-etcd'), 24200, 1);
  t.teardown(() => etcd.stopAll());
  await etcd.start();
  etcd.init('/tsnet/network', '--network', '10.80.0.0/16', '--backend', 'vxlan');
  const store = (...args: string[]) => {
    const r = tsnet('--etcd', etcd.urls, 'service', ...args);
    if (r.status !== 0) throw new Error(r.stderr);
  };
  const found = () => c.findings('cluster-services', '--etcd', etcd.urls);
  t.deepEqual(found(), []);
  store('add', 'shop/web', '--vip', '10.96.80.10:80', '--endpoint', '10.80.2.5:8080');
  t.deepEqual(c.findings('cluster-services'), [], 'without --etcd the store is not looked at');
  const [missing] = found();
  t.is(missing!.where, 'shop/web');
  t.regex(missing!.problem, /cluster service shop\/web \(10\.96\.80\.10:80\/tcp\) is in etcd but not programmed on n1/);
  t.regex(missing!.fix, /a local service is in its way .* or the agent is not running/);
  // What the agent does: the service as stored, masqueraded from outside the cluster's network, marked as the cluster's.
  const engine = new NatEngine({ ns: c.nd, stateDir: c.stateDir });
  const programmed = {
    name: 'shop/web',
    vip: '10.96.80.10',
    port: 80,
    proto: 'tcp' as const,
    endpoints: [{ ip: '10.80.2.5', port: 8080, weight: 1 }],
    masqueradeNotFrom: '10.80.0.0/16',
    origin: 'cluster' as const,
  };
  await engine.change([{ kind: 'put-service', service: programmed }]);
  t.deepEqual(found(), []);
  store('set-endpoints', 'shop/web', '--endpoint', '10.80.2.6:8080');
  t.regex(found()[0]!.problem, /shop\/web .* on n1 is not as in etcd: the node lags the store/);
  await engine.change([
    { kind: 'put-service', service: { ...programmed, endpoints: [{ ip: '10.80.2.6', port: 8080, weight: 1 }] } },
  ]);
  t.deepEqual(found(), []);
  store('del', 'shop/web');
  t.regex(found()[0]!.problem, /shop\/web .* was deleted from etcd but is still programmed on n1/);
  await engine.change([{ kind: 'delete-service', name: 'shop/web', origin: 'cluster' }]);
  t.deepEqual(found(), []);
});

test('a healthy node: no problems, exit 0, and the library agrees with the CLI', async (t) => {
  const nd = await node();
  const r = nd.cli('doctor');
  t.is(r.status, 0, r.stdout);
  t.is(r.stdout.trim(), 'no problems found');
  const engine = new NatEngine({ ns: nd.nd, stateDir: nd.stateDir });
  t.deepEqual(await doctor(nd.nd, { engines: [engine], stateDirs: [nd.stateDir] }), []);
});
