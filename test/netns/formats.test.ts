/**
 * State an earlier release left on a node keeps working after an upgrade,
 * with real packets: its NAT state is applied by `tsnet sync` and rewritten
 * in today's format, an attachment it made is torn down by today's DEL, and
 * the CNI shim reads the settings file it installed. The samples were written
 * by those releases (test/fixtures/formats).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import * as sysctl from '../../src/sysctl';
import * as veth from '../../src/veth';
import { attach } from '../../src/attach';
import { serve, request } from '../../src/demo/traffic';
import { CNI_ENTRY, SHIM_PATH } from '../../src/native';
import { SHIM_CONF } from '../../src/cni/defaults';
import { CniInstall } from '../harness/cni';
import { FORMATS, SERVICES, copySample } from '../harness/formats';
import { CLI, run, scratch } from '../harness/fixtures';

const { topo, servers, cleanup } = scratch('fmt');
test.after.always(cleanup);

/** tsnet as run on the node itself: its state at the top of the state directory, where the release left it (`-n NODE` keeps a namespace's under netns/NODE/). */
const onNode = (node: string, ...args: string[]) => run('ip', ['netns', 'exec', node, process.execPath, CLI, ...args]);

/**
 * A node as the samples' commands assumed it: web's endpoints 10.88.0.2, .3, .6 on br0 serving HTTP on 8080,
 * and the forward's target 10.77.0.2 behind vdb.
 */
async function node(name: string) {
  const n = await topo.ns(name);
  await bridge.ensure(n, 'br0', { addresses: ['10.88.0.1/16'] });
  sysctl.set(n, 'net.ipv4.ip_forward', '1');
  await route.add(n, { dst: '10.96.0.0/16', dev: 'br0' });
  for (const i of [2, 3, 6]) {
    const e = await topo.ns(`${name}-e${i}`);
    await attach(n, e, { bridge: 'br0', address: `10.88.0.${i}/16` });
    servers.push(await serve(e, 'http', '0.0.0.0', 8080, `e${i}`));
  }
  const db = await topo.ns(`${name}-db`);
  await veth.add(n, 'vdb', 'eth0', { peerNetns: db, address: '10.77.0.1/24', peerAddress: '10.77.0.2/24' });
  return n;
}

for (const sample of ['nat-v1-291a2be-iptables', 'nat-v1-291a2be-nft', 'nat-v3-098353f-netlink']) {
  test(`NAT state ${sample}: tsnet sync applies it as stored (traffic to the VIP reaches its endpoints) and rewrites it in today's format`, async (t) => {
    const short = sample.replace(/^nat-v(\d)-(\w{3})\w*-(\w+)$/, '$1$2$3').slice(0, 8);
    const n = await node(short);
    const dir = copySample(sample);
    try {
      const cli = (...args: string[]) => onNode(n.name!, '--state-dir', dir, ...args);
      const sync = cli('sync');
      t.is(sync.status, 0, sync.stderr);
      const r = await request(n, 'http', '10.96.0.10', 80, { count: 30, concurrency: 5 });
      t.is(r.ok, 30, JSON.stringify(r.errors));
      t.deepEqual(Object.keys(r.replies).sort(), ['e2', 'e3', 'e6'], 'every endpoint of web answered');
      const written = fs.readFileSync(path.join(dir, 'nat.json'), 'utf8');
      t.regex(written, /^\{"version":3,"digest":"[\w-]{43}",.*"families":\{"4":2,"6":1\}/);
      const ls = cli('-j', 'service', 'ls');
      t.is(ls.status, 0, ls.stderr);
      t.deepEqual(
        (JSON.parse(ls.stdout) as { counters?: unknown }[]).map(({ counters: _, ...s }) => s),
        SERVICES,
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

for (const release of ['291a2be', '5e5a506']) {
  test(`CNI: an attachment ${release} made is torn down by today's DEL: its leases, record, rules and port mapping go`, async (t) => {
    const cni = new CniInstall(`fmt-cni-${release}`);
    const n = await topo.ns(`cni${release.slice(0, 3)}`);
    const dir = copySample(`cni-${release}`);
    try {
      const conf = JSON.parse(
        fs.readFileSync(path.join(FORMATS, 'cni-5e5a506', 'cni-input', 'v4.json'), 'utf8'),
      ) as Record<string, any>;
      conf.stateDir = dir;
      delete conf.runtimeConfig;
      // The release ran with host-local's default data directory; here it is the copy's (in the record's conf too).
      conf.ipam.dataDir = path.join(dir, 'ipam', 'networks');
      const recordFile = path.join(dir, 'cni', 'fmtnet4', 'ctr4:eth0.json');
      const record = JSON.parse(fs.readFileSync(recordFile, 'utf8')) as Record<string, any>;
      record.conf.ipam.dataDir = conf.ipam.dataDir;
      fs.writeFileSync(recordFile, JSON.stringify(record, null, 1));
      const del = await cni.call(n, 'tsnet-bridge', 'DEL', conf, {
        containerId: 'ctr4',
        netns: '/run/netns/fmt-gone',
        ifname: 'eth0',
      });
      t.is(del.status, 0, del.stderr + del.stdout);
      t.false(fs.existsSync(path.join(dir, 'ipam', 'networks', 'fmtnet4', '10.89.0.2')), 'lease released');
      t.false(fs.existsSync(path.join(dir, 'cni', 'fmtnet4', 'ctr4:eth0.json')), 'record removed');
      t.true(
        fs.existsSync(path.join(dir, 'ipam', 'networks', 'fmtnet46', '10.90.0.2')),
        "the other attachment's lease stays",
      );
      const nat = onNode(n.name!, '--state-dir', dir, '-j', 'nat', 'ls');
      t.is(nat.status, 0, nat.stderr);
      const rules = JSON.parse(nat.stdout) as { source?: string }[];
      t.deepEqual(
        rules.map((r) => r.source).sort(),
        ['10.90.0.2/32', 'fd00:90::2/128'],
        "only the other attachment's masquerade rules are left",
      );
      const fwd = onNode(n.name!, '--state-dir', dir, '-j', 'forward', 'ls');
      t.deepEqual(JSON.parse(fwd.stdout), [], 'the port mapping is gone');
    } finally {
      await cni.cleanup();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('CNI: the shim reads the settings file `tsnet cni install` wrote at 5e5a506', (t) => {
  const dir = copySample('cni-5e5a506');
  try {
    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin);
    fs.copyFileSync(SHIM_PATH, path.join(bin, 'tsnet-bridge'));
    fs.chmodSync(path.join(bin, 'tsnet-bridge'), 0o755);
    const old = fs.readFileSync(path.join(dir, 'cni-install', SHIM_CONF), 'utf8');
    // Only what moved with the install is filled in: this checkout's node and plugin entry.
    fs.writeFileSync(
      path.join(bin, SHIM_CONF),
      old.replace(/^node=.*$/m, `node=${process.execPath}`).replace(/^entry=.*$/m, `entry=${CNI_ENTRY}`),
    );
    const r = run(path.join(bin, 'tsnet-bridge'), [], {
      input: '{"cniVersion":"1.1.0"}',
      env: { CNI_COMMAND: 'VERSION' },
    });
    t.is(r.status, 0, r.stderr);
    t.true((JSON.parse(r.stdout) as { supportedVersions: string[] }).supportedVersions.includes('1.1.0'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
