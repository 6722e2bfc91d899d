/**
 * Cluster services in etcd (`tsnet --etcd URLS service ...`): one key per
 * service in `tsnet -j service ls`'s shape, a create-only claim per VIP, the
 * one-machine engine's validation and messages, a whole-set apply in several
 * transactions that never drops a service kept, and a one-line error naming
 * etcd when it does not answer. A real 3-member etcd; etcdctl observes.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, run, scratch, tsnet } from '../harness/fixtures';
import { EtcdCluster } from '../harness/cluster';

const s = scratch('cs');
const etcd = new EtcdCluster(s.tmp('etcd'), 23900);
test.before(async () => {
  await etcd.start();
});
test.after.always(async () => {
  await etcd.stopAll();
  await s.cleanup();
});

let seq = 0;
/** The CLI against the cluster, under a prefix of the test's own. */
function svc() {
  const prefix = `/cs/t${++seq}`;
  const cli = (...args: string[]) => tsnet('--etcd', etcd.urls, 'service', ...args, '--prefix', prefix);
  const ok = (...args: string[]) => {
    const r = cli(...args);
    if (r.status !== 0) throw new Error(`service ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const value = (key: string) => etcd.ctl('get', `${prefix}/${key}`, '--print-value-only').trim();
  return { prefix, cli, ok, value };
}

test('add, ls, set-endpoints, del: one key per service in `service ls` shape, a claim per VIP, messages as on one machine', (t) => {
  const c = svc();
  // prettier-ignore
  const web = ['add', 'web', '--vip', '10.96.0.10:80', '--endpoint', '10.0.1.2:8080', '--endpoint', '10.0.2.2:8080@3', '--affinity', '30'];
  c.ok(...web);
  const want = {
    name: 'default/web',
    vip: '10.96.0.10',
    port: 80,
    proto: 'tcp',
    endpoints: [
      { ip: '10.0.1.2', port: 8080, weight: 1 },
      { ip: '10.0.2.2', port: 8080, weight: 3 },
    ],
    affinitySeconds: 30,
  };
  t.deepEqual(JSON.parse(c.value('services/default/web')), want, 'the stored value');
  t.is(c.value('vips/10.96.0.10:80/tcp'), 'default/web', 'the claim');
  t.deepEqual(
    JSON.parse(tsnet('-j', '--etcd', etcd.urls, 'service', 'ls', '--prefix', c.prefix).stdout),
    [want],
    'ls -j prints what is stored',
  );
  t.regex(c.ok('ls'), /^default\/web\s+10\.96\.0\.10:80\s+tcp\s+-\s+10\.0\.1\.2:8080,10\.0\.2\.2:8080@3\s+30\s+-$/m);

  c.ok(...web); // the same again: a no-op
  const other = c.cli('add', 'default/web', '--vip', '10.96.0.10:80');
  t.is(other.status, 1);
  t.is(
    other.stderr,
    'tsnet: service default/web already exists with other settings: use "service set-endpoints", or "service del" first\n',
  );
  const claimed = c.cli('add', 'ns2/api', '--vip', '10.96.0.10:80');
  t.is(claimed.status, 1);
  t.is(claimed.stderr, 'tsnet: services default/web and ns2/api both claim 10.96.0.10:80/tcp\n');
  t.is(c.cli('add', 'ns2/api', '--vip', '10.96.0.10:80', '--proto', 'udp').status, 0, 'another proto is another claim');
  const bad = c.cli('add', 'x', '--vip', '10.96.0.11:80', '--endpoint', '[fd00::1]:80');
  t.is(bad.status, 1);
  t.regex(bad.stderr, /^tsnet: service x: "endpoints\[0\]": fd00::1 is not IPv4 like the VIP 10\.96\.0\.11\n$/);
  t.is(etcd.ctl('get', '--prefix', `${c.prefix}/services/default/x`, '--keys-only').trim(), '', 'nothing written');

  c.ok('set-endpoints', 'web', '--endpoint', '10.0.3.2:8080');
  t.deepEqual(JSON.parse(c.value('services/default/web')).endpoints, [{ ip: '10.0.3.2', port: 8080, weight: 1 }]);
  t.is(c.cli('set-endpoints', 'nope', '--none').stderr, 'tsnet: no service named default/nope\n');

  c.ok('del', 'web');
  c.ok('del', 'web');
  t.is(etcd.ctl('get', '--prefix', `${c.prefix}/vips/10.96.0.10:80/tcp`, '--keys-only').trim(), '', 'the claim freed');
  c.ok('add', 'ns3/new', '--vip', '10.96.0.10:80');
  t.is(c.value('vips/10.96.0.10:80/tcp'), 'ns3/new');
});

test('two adds racing for one VIP: exactly one wins, every time', async (t) => {
  for (let round = 0; round < 8; round++) {
    const c = svc();
    const add = (name: string) =>
      new Promise<number | null>((resolve) => {
        const child = spawn(
          process.execPath,
          [CLI, '--etcd', etcd.urls, 'service', 'add', name, '--vip', '10.96.1.1:443', '--prefix', c.prefix],
          { stdio: 'ignore' },
        );
        child.once('exit', (code) => resolve(code));
      });
    const codes = await Promise.all([add('a/one'), add('b/two')]);
    t.deepEqual([...codes].sort(), [0, 1], `round ${round}: ${codes.join(', ')}`);
    const winner = c.value('vips/10.96.1.1:443/tcp');
    t.true(['a/one', 'b/two'].includes(winner));
    t.is(etcd.ctl('get', '--prefix', `${c.prefix}/services/`, '--keys-only').split('\n').filter(Boolean).length, 1);
  }
});

test('apply: the whole set in several transactions; a service in both sets is never deleted, VIPs may swap', async (t) => {
  const c = svc();
  const svcs = (n: number, from = 0) =>
    Array.from({ length: n }, (_, i) => ({
      name: `ns/s${from + i}`,
      vip: `10.97.${(from + i) >> 8}.${(from + i) & 255}:80`,
      endpoints: [`10.1.${(from + i) >> 8}.${(from + i) & 255}:8080`],
    }));
  const file = path.join(s.tmp('apply'), 'services.json');
  fs.writeFileSync(file, JSON.stringify(svcs(300)));
  c.ok('apply', '-f', file);
  t.is(etcd.ctl('get', '--prefix', `${c.prefix}/services/`, '--keys-only').split('\n').filter(Boolean).length, 300);
  // Watch every delete while a second apply keeps s100..s299, drops s0..s99, adds s300..s399, and swaps two VIPs.
  const deleted: string[] = [];
  const watcher = spawn('etcdctl', ['--endpoints', etcd.urls, 'watch', '--prefix', `${c.prefix}/services/`], {
    env: { ...process.env, ETCDCTL_API: '3' },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  let out = '';
  watcher.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((r) => setTimeout(r, 500));
  const next = [...svcs(200, 100), ...svcs(100, 300)];
  const a = next.find((x) => x.name === 'ns/s100')!;
  const b = next.find((x) => x.name === 'ns/s101')!;
  [a.vip, b.vip] = [b.vip, a.vip];
  fs.writeFileSync(file, JSON.stringify(next));
  c.ok('apply', '-f', file);
  await new Promise((r) => setTimeout(r, 500));
  watcher.kill('SIGTERM');
  const lines = out.split('\n');
  lines.forEach((l, i) => {
    if (l === 'DELETE') deleted.push(lines[i + 1]!.slice(`${c.prefix}/services/`.length));
  });
  t.is(deleted.length, 100);
  t.true(
    deleted.every((n) => Number(n.replace('ns/s', '')) < 100),
    'only the dropped ones were deleted',
  );
  const stored = JSON.parse(tsnet('-j', '--etcd', etcd.urls, 'service', 'ls', '--prefix', c.prefix).stdout) as {
    name: string;
    vip: string;
  }[];
  t.is(stored.length, 300);
  t.is(c.value('vips/10.97.0.101:80/tcp'), 'ns/s100', 'the swapped claims follow their services');
  t.is(c.value('vips/10.97.0.100:80/tcp'), 'ns/s101');
  t.is(
    etcd.ctl('get', '--prefix', `${c.prefix}/vips/`, '--keys-only').split('\n').filter(Boolean).length,
    300,
    'one claim per service, none left over',
  );
  // Two wanted services claiming one VIP: refused as a whole, nothing written.
  fs.writeFileSync(file, JSON.stringify([...next, { name: 'ns/dup', vip: a.vip, endpoints: [] }]));
  const dup = c.cli('apply', '-f', file);
  t.is(dup.status, 1);
  t.regex(dup.stderr, /both claim 10\.97\.0\.101:80\/tcp/);
  t.is(etcd.ctl('get', '--prefix', `${c.prefix}/services/`, '--keys-only').split('\n').filter(Boolean).length, 300);
});

test('with etcd not answering, every --etcd command fails within 5 s with one line naming etcd', (t) => {
  for (const args of [['ls'], ['add', 'web', '--vip', '10.96.0.10:80'], ['del', 'web']]) {
    const t0 = Date.now();
    const r = tsnet('--etcd', 'http://127.0.0.1:9', 'service', ...args);
    const ms = Date.now() - t0;
    t.is(r.status, 1, args.join(' '));
    t.regex(r.stderr, /^tsnet: etcd at http:\/\/127\.0\.0\.1:9[^\n]*\n$/);
    t.true(ms < 6000, `${args.join(' ')}: ${ms} ms (5 s for etcd, plus the CLI's start)`);
  }
  // $TSNET_ETCD is the same as --etcd.
  const r = run(process.execPath, [CLI, 'service', 'ls'], { env: { TSNET_ETCD: 'http://127.0.0.1:9' } });
  t.is(r.status, 1);
  t.regex(r.stderr, /^tsnet: etcd at http:\/\/127\.0\.0\.1:9/);
});
