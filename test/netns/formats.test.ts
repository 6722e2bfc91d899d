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
import { FORMATS, NAT_STATES, SERVICES, copySample } from '../harness/formats';
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

for (const { dir: sample, backend } of NAT_STATES) {
  test(`NAT state ${sample}: tsnet sync applies it as stored (traffic to the VIP reaches its endpoints) and rewrites it in today's format`, async (t) => {
    const short = sample.replace(/^nat-v(\d)-(\w{3})\w*-(\w+)$/, '$1$2$3').slice(0, 8);
    const n = await node(short);
    const dir = copySample(sample);
    try {
      const cli = (...args: string[]) => onNode(n.name!, '--state-dir', dir, ...args);
      const sync = cli('-j', 'sync');
      t.is(sync.status, 0, sync.stderr);
      // Applied to its backend's tables: iptables stays iptables; nft's and netlink's are one nftables table
      // (`auto` writes it through netlink).
      t.regex(
        (JSON.parse(sync.stdout) as { backend: string }).backend,
        backend === 'iptables' ? /^iptables\b/ : /^(netlink|nft)\b/,
        "its backend's tables",
      );
      // The VIP is in those tables, as their own tool lists them.
      const listed =
        backend === 'iptables'
          ? run('ip', ['netns', 'exec', n.name!, 'iptables-save', '-t', 'nat']).stdout
          : run('ip', ['netns', 'exec', n.name!, 'nft', 'list', 'table', 'ip', 'tsnet']).stdout;
      t.regex(listed, /\b10\.96\.0\.10\b/, `the sample's services in ${backend}'s tables`);
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
    const short = `cni${release.slice(0, 3)}`;
    const n = await topo.ns(short);
    const dir = copySample(`cni-${release}`);
    try {
      // The node as the release left it: its bridge with the container 10.89.0.2 (HTTP on 80, the mapping's
      // containerPort), a client beside the node (10.78.0.2), and the sample's NAT state in its netfilter tables.
      await bridge.ensure(n, 'tsbr4', { addresses: ['10.89.0.1/24'] });
      const ctr = await topo.ns(`${short}-ctr4`);
      await attach(n, ctr, { bridge: 'tsbr4', address: '10.89.0.2/24' });
      servers.push(await serve(ctr, 'http', '0.0.0.0', 80, 'ctr4'));
      const client = await topo.ns(`${short}-cl`);
      await veth.add(n, 'vcl', 'eth0', { peerNetns: client, address: '10.78.0.1/24', peerAddress: '10.78.0.2/24' });
      await route.add(client, { dst: 'default', via: '10.78.0.1' });
      const sync = onNode(n.name!, '--state-dir', dir, 'sync');
      t.is(sync.status, 0, sync.stderr);
      /** The hostPort mapping (18080 -> 10.89.0.2:80) from the client and from the node itself. */
      const throughMapping = async () =>
        Promise.all([
          request(client, 'http', '10.78.0.1', 18080, { count: 3, timeoutMs: 1000 }),
          request(n, 'http', '10.89.0.1', 18080, { count: 3, timeoutMs: 1000 }),
        ]);
      /** The node's netfilter rules as the tools show them (iptables, legacy and nft flavours, and nft itself). */
      const kernelRules = () =>
        ['iptables-save', 'ip6tables-save', 'iptables-legacy-save', 'ip6tables-legacy-save', 'nft list ruleset']
          .map((cmd) => run('ip', ['netns', 'exec', n.name!, ...cmd.split(' ')]).stdout)
          .join('\n');
      for (const r of await throughMapping())
        t.deepEqual(r.replies, { ctr4: 3 }, `before DEL, through the mapping: ${r.errors.join('; ')}`);
      t.regex(kernelRules(), /\b18080\b/, "before DEL the mapping's rules are in the kernel");
      t.regex(kernelRules(), /\b10\.89\.0\.2\b/);

      /** Today's DEL of an attachment the release made (its network config as the release was given it). */
      const delAttachment = async (network: string, containerId: string, input: string) => {
        const conf = JSON.parse(
          fs.readFileSync(path.join(FORMATS, 'cni-5e5a506', 'cni-input', input), 'utf8'),
        ) as Record<string, any>;
        conf.stateDir = dir;
        delete conf.runtimeConfig;
        // The release ran with host-local's default data directory; here it is the copy's (in the record's conf too).
        conf.ipam.dataDir = path.join(dir, 'ipam', 'networks');
        const recordFile = path.join(dir, 'cni', network, `${containerId}:eth0.json`);
        const record = JSON.parse(fs.readFileSync(recordFile, 'utf8')) as Record<string, any>;
        record.conf.ipam.dataDir = conf.ipam.dataDir;
        fs.writeFileSync(recordFile, JSON.stringify(record, null, 1));
        return cni.call(n, 'tsnet-bridge', 'DEL', conf, {
          containerId,
          netns: '/run/netns/fmt-gone',
          ifname: 'eth0',
        });
      };
      const del = await delAttachment('fmtnet4', 'ctr4', 'v4.json');
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
      // ... from the kernel too: requests through the mapping fail while the container itself still answers.
      for (const r of await throughMapping()) t.is(r.ok, 0, 'after DEL, nothing answers through the mapping');
      const direct = await request(n, 'http', '10.89.0.2', 80, { count: 1 });
      t.deepEqual(direct.replies, { ctr4: 1 }, `the container still answers directly: ${direct.errors.join('; ')}`);
      t.notRegex(kernelRules(), /\b18080\b|\b10\.89\.0\.2\b/, "none of the attachment's rules is left in the kernel");
      t.regex(kernelRules(), /\b10\.90\.0\.2\b/, "the other attachment's rules are");
      // The other attachment's DEL leaves nothing of tsnet in the kernel.
      const del46 = await delAttachment('fmtnet46', 'ctr46', 'dual.json');
      t.is(del46.status, 0, del46.stderr + del46.stdout);
      t.notRegex(kernelRules(), /tsnet/i, 'after the last DEL, no rule, chain or table of tsnet is left');
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
