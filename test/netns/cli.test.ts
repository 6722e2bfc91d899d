import test from 'ava';
import * as netns from '../../src/netns';
import { CLI, ipJson, run, scratch, tsnet } from '../harness/fixtures';

const { topo, tmp, cleanup } = scratch('cli');
test.after.always(cleanup);

/** A failed command: non-zero exit and exactly one line on stderr, starting with "tsnet:". */
function fails(t: any, r: { status: number | null; stderr: string }, re: RegExp): void {
  t.not(r.status, 0);
  const lines = r.stderr.trim().split('\n');
  t.is(lines.length, 1, r.stderr);
  t.regex(lines[0]!, /^tsnet: /);
  t.regex(lines[0]!, re);
}

test.serial('netns add/ls/del from the CLI, idempotent, and exec runs inside', (t) => {
  t.is(tsnet('netns', 'add', 'cli-x').status, 0);
  t.is(tsnet('netns', 'add', 'cli-x').status, 0, 'add twice');
  const ls = JSON.parse(tsnet('--json', 'netns', 'ls').stdout) as { name: string; inode: number }[];
  t.truthy(ls.find((n) => n.name === 'cli-x' && n.inode > 0));
  const ex = tsnet('netns', 'exec', 'cli-x', 'ip', '-j', 'link', 'show');
  t.is(ex.status, 0);
  t.deepEqual(
    JSON.parse(ex.stdout).map((l: any) => l.ifname),
    ['lo'],
  );
  t.is(tsnet('netns', 'exec', 'cli-x', 'sh', '-c', 'exit 7').status, 7, 'the exit code is passed on');
  t.is(tsnet('netns', 'del', 'cli-x').status, 0);
  t.is(tsnet('netns', 'del', 'cli-x').status, 0, 'del twice');
  t.false(netns.list().includes('cli-x'));
});

test.serial('bridge, attach, veth ls --json maps every veth to the right namespace', async (t) => {
  await topo.ns('node');
  const names = ['c1', 'c2', 'c3'];
  for (const n of names) await topo.ns(n);
  t.is(tsnet('--netns', 'cli-node', 'bridge', 'add', 'br0', '--address', '10.90.0.1/24').status, 0);
  names.forEach((n, i) => {
    const r = tsnet('--netns', 'cli-node', 'attach', `cli-${n}`, '--bridge', 'br0', '--address', `10.90.0.${i + 2}/24`);
    t.is(r.status, 0, r.stderr);
  });
  // One more, referenced by pid and without a name.
  const holder = await topo.ns('pidonly');
  const sleeper = holder.spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    t.is(
      tsnet('--netns', 'cli-node', 'attach', String(sleeper.pid), '--bridge', 'br0', '--address', '10.90.0.9/24')
        .status,
      0,
    );
    holder.close();
    netns.del('cli-pidonly');

    const r = tsnet('--netns', 'cli-node', '--json', 'veth', 'ls');
    t.is(r.status, 0, r.stderr);
    const pairs = JSON.parse(r.stdout) as any[];
    t.is(pairs.length, 4);
    // The independent view: ip's link_netnsid + link_index for each host veth, and each namespace's eth0 ifindex.
    const seen = ipJson(undefined, '-n', 'cli-node', 'link', 'show', 'type', 'veth') as any[];
    for (const n of names) {
      const [eth0] = ipJson(undefined, '-n', `cli-${n}`, 'link', 'show', 'eth0');
      const pair = pairs.find((p) => p.peer.netns.name === `cli-${n}`);
      t.truthy(pair, `a veth for cli-${n}`);
      t.is(pair.peer.name, 'eth0');
      t.is(pair.peer.index, eth0.ifindex);
      t.is(pair.master, 'br0');
      const ipView = seen.find((l) => l.ifname === pair.name);
      t.is(ipView.link_index, eth0.ifindex);
    }
    const byPid = pairs.find((p) => p.peer.netns.pid !== undefined);
    t.is(byPid.peer.netns.pid, sleeper.pid);
    t.is(byPid.peer.name, 'eth0');
    const table = tsnet('--netns', 'cli-node', 'veth', 'ls').stdout;
    t.regex(table, /PEER-NETNS/);
    t.regex(table, /cli-c1/);
    t.regex(table, new RegExp(`pid ${sleeper.pid}`));

    // detach twice is fine; the host end goes away with it.
    t.is(tsnet('--netns', 'cli-node', 'detach', 'cli-c3').status, 0);
    t.is(tsnet('--netns', 'cli-node', 'detach', 'cli-c3').status, 0);
    t.is(JSON.parse(tsnet('--netns', 'cli-node', '--json', 'veth', 'ls').stdout).length, 3);
  } finally {
    sleeper.kill();
  }
  const br = JSON.parse(tsnet('--netns', 'cli-node', '--json', 'bridge', 'ls').stdout);
  t.deepEqual(
    br.map((b: any) => [b.name, b.addresses]),
    [['br0', ['10.90.0.1/24']]],
  );
});

test.serial('addr and route from the CLI', async (t) => {
  await topo.ns('ar');
  const n = ['--netns', 'cli-ar'];
  t.is(tsnet(...n, 'veth', 'add', 've0', 've1').status, 0);
  t.is(tsnet(...n, 'veth', 'add', 've0', 've1').status, 0, 'veth add twice');
  t.is(tsnet(...n, 'addr', 'add', '10.91.0.1/24', '--dev', 've0').status, 0);
  t.is(tsnet(...n, 'addr', 'add', '10.91.0.1/24', '--dev', 've0').status, 0, 'addr add twice');
  t.is(tsnet(...n, 'route', 'add', '10.92.0.0/16', '--via', '10.91.0.254').status, 0);
  t.is(tsnet(...n, 'route', 'add', 'default', '--via', '10.91.0.254').status, 0);
  t.is(tsnet(...n, 'route', 'add', 'default', '--via', '10.91.0.254').status, 0, 'route add twice');
  const routes = JSON.parse(tsnet(...n, '--json', 'route', 'ls', '-4').stdout) as any[];
  t.deepEqual(routes.map((r) => r.dst).sort(), ['10.91.0.0/24', '10.92.0.0/16', 'default']);
  t.deepEqual(
    ipJson(undefined, '-n', 'cli-ar', 'route', 'show', 'default').map((r: any) => r.gateway),
    ['10.91.0.254'],
  );
  const addrs = JSON.parse(tsnet(...n, '--json', 'addr', 'ls', '--dev', 've0', '-4').stdout) as any[];
  t.deepEqual(
    addrs.map((a) => a.cidr),
    ['10.91.0.1/24'],
  );
  t.is(tsnet(...n, 'route', 'del', 'default', '--via', '10.91.0.254').status, 0);
  t.is(tsnet(...n, 'route', 'del', 'default', '--via', '10.91.0.254').status, 0, 'route del twice');
  t.is(tsnet(...n, 'addr', 'del', '10.91.0.1/24', '--dev', 've0').status, 0);
  t.is(tsnet(...n, 'veth', 'del', 've1').status, 0);
  t.is(tsnet(...n, 'veth', 'del', 've1').status, 0, 'veth del twice');
  t.deepEqual(ipJson(undefined, '-n', 'cli-ar', 'link', 'show', 'type', 'veth'), []);
});

test.serial('bad input: one line, non-zero exit, nothing half-created', async (t) => {
  await topo.ns('bad');
  const n = ['--netns', 'cli-bad'];
  const before = JSON.stringify(ipJson(undefined, '-n', 'cli-bad', '-d', 'link', 'show'));

  fails(
    t,
    tsnet(...n, 'bridge', 'add', 'br0', '--address', '10.0.0.1/33'),
    /invalid CIDR "10\.0\.0\.1\/33": prefix \/33 is longer than 32 bits/,
  );
  fails(
    t,
    tsnet(...n, 'bridge', 'add', 'br0', '--address', '10.0.0.300/24'),
    /"10\.0\.0\.300" is not an IPv4 or IPv6 address/,
  );
  fails(
    t,
    tsnet(...n, 'bridge', 'add', 'this-name-is-too-long'),
    /"this-name-is-too-long" is 21 bytes; Linux allows at most 15/,
  );
  fails(t, tsnet(...n, 'veth', 'add', 'ok0', 'peer-name-far-too-long'), /allows at most 15/);
  fails(
    t,
    tsnet(...n, 'veth', 'add', 'ok0', 'okp', '--peer-netns', 'no-such-ns'),
    /namespace no-such-ns does not exist/,
  );
  fails(t, tsnet('--netns', 'no-such-ns', 'link', 'ls'), /namespace no-such-ns does not exist/);
  fails(
    t,
    tsnet(...n, 'attach', 'no-such-ns', '--bridge', 'br0', '--address', '10.0.0.2/24'),
    /namespace no-such-ns does not exist/,
  );
  fails(
    t,
    tsnet(...n, 'addr', 'add', '10.0.0.1/24', '--dev', 'nope0'),
    /interface nope0 not found in namespace cli-bad/,
  );
  fails(t, tsnet(...n, 'route', 'add', 'default', '--via', 'nonsense'), /invalid IP address "nonsense"/);
  fails(t, tsnet(...n, 'bridge', 'add', 'br0', '--mtu', '12x'), /--mtu must be a whole number/);
  t.is(JSON.stringify(ipJson(undefined, '-n', 'cli-bad', '-d', 'link', 'show')), before, 'no link appeared or changed');

  // A bridge name taken by a non-bridge link.
  t.is(tsnet(...n, 'veth', 'add', 'taken0', 'taken1').status, 0);
  fails(
    t,
    tsnet(...n, 'bridge', 'add', 'taken0', '--address', '10.93.0.1/24'),
    /taken0 in namespace cli-bad is a veth link, not a bridge/,
  );
  t.deepEqual(ipJson(undefined, '-n', 'cli-bad', '-4', 'addr', 'show', 'taken0')[0]?.addr_info ?? [], []);
  fails(t, tsnet('netns', 'add', '../escape'), /invalid namespace name/);
  const usage = tsnet('bridge', 'add');
  t.not(usage.status, 0);
  t.regex(usage.stderr, /missing required argument 'name'/);
});

test('the CLI refuses a non-net sysctl-like misuse path: unknown command is an error', (t) => {
  const r = run(process.execPath, [CLI, 'frobnicate']);
  t.not(r.status, 0);
  t.regex(r.stderr, /unknown command 'frobnicate'/);
});

test('netns exec passes the exit status on, 128+N when the program dies of signal N (as shells do)', async (t) => {
  await topo.ns('sig');
  t.is(tsnet('netns', 'exec', 'cli-sig', 'sh', '-c', 'exit 3').status, 3);
  t.is(tsnet('netns', 'exec', 'cli-sig', 'sh', '-c', 'kill -TERM $$').status, 143);
  t.is(tsnet('netns', 'exec', 'cli-sig', 'sh', '-c', 'kill -KILL $$').status, 137);
  t.is(tsnet('netns', 'exec', 'cli-sig', 'no-such-program-here').status, 127);
});

test('IPv6 addresses are in brackets in every ip:port the CLI prints (forward add, forward ls)', async (t) => {
  await topo.ns('v6');
  const c = ['--netns', 'cli-v6', '--state-dir', tmp('cli-v6')];
  t.is(
    tsnet(...c, 'veth', 'add', 'v6a', 'v6b', '--address', 'fd00:6::1/64', '--peer-address', 'fd00:6::2/64').status,
    0,
  );
  const add = tsnet(
    ...c,
    'forward',
    'fd00:6::2',
    '13000',
    '13001',
    '--no-check',
    '--name',
    'db6',
    '--listen',
    'fd00:6::1',
  );
  t.is(add.status, 0, add.stderr);
  t.is(add.stdout, 'forward db6: tcp [fd00:6::1]:13000 -> [fd00:6::2]:13001\n');
  const ls = tsnet(...c, 'forward', 'ls');
  t.regex(ls.stdout, /^db6\s+tcp\s+\[fd00:6::1\]:13000\s+\[fd00:6::2\]:13001\s+auto$/m);
  t.is(tsnet(...c, 'forward', 'rm', 'db6').status, 0);
});
