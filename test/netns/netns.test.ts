import test from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as dns from 'node:dns/promises';
import * as netns from '../../src/netns';
import * as link from '../../src/link';
import * as addr from '../../src/addr';
import * as veth from '../../src/veth';
import * as sysctl from '../../src/sysctl';
import { native } from '../../src/native';
import { serve, request } from '../../src/demo/traffic';
import { Topology, ip, run } from '../harness/fixtures';
import { eventually } from '../harness/eventually';

const topo = new Topology('nst');
test.after.always(() => topo.cleanup());

const threadNs = () => fs.readlinkSync('/proc/thread-self/ns/net');
const originNs = fs.readlinkSync('/proc/self/ns/net');

test.serial('add, list, open, del; del is idempotent; add refuses an existing name unless asked', (t) => {
  const h = netns.add('nst-a');
  t.true(netns.list().includes('nst-a'));
  t.true(fs.existsSync('/run/netns/nst-a'));
  const again = netns.open('nst-a');
  t.is(again.inode, h.inode);
  const err = t.throws(() => netns.add('nst-a'));
  t.is((err as any).code, 'EEXIST');
  t.regex(err!.message, /namespace nst-a: it already exists/);
  const same = netns.add('nst-a', { existOk: true });
  t.is(same.inode, h.inode);
  [h, again, same].forEach((x) => x.close());
  t.true(netns.del('nst-a'));
  t.false(netns.del('nst-a'));
  t.false(netns.list().includes('nst-a'));
  t.regex(t.throws(() => netns.open('nst-a'))!.message, /namespace nst-a does not exist/);
});

test.serial('iproute2 compatibility both ways: ip netns exec on ours, tsnet on ip netns add', async (t) => {
  const ours = await topo.ns('ours');
  await link.add(ours, { kind: 'veth', name: 'marker0', peer: { name: 'marker0p' } });
  const seen = JSON.parse(run('ip', ['netns', 'exec', 'nst-ours', 'ip', '-j', 'link', 'show']).stdout) as {
    ifname: string;
  }[];
  t.deepEqual(seen.map((l) => l.ifname).sort(), ['lo', 'marker0', 'marker0p']);

  t.is(run('ip', ['netns', 'add', 'nst-theirs']).status, 0);
  try {
    t.is(
      run('ip', ['-n', 'nst-theirs', 'link', 'add', 'theirs0', 'type', 'veth', 'peer', 'name', 'theirs1']).status,
      0,
    );
    const h = netns.open('nst-theirs');
    t.truthy(await link.get(h, 'theirs0'));
    t.falsy(await link.get(netns.current(), 'theirs0'), 'the link is not in the caller namespace');
    h.close();
  } finally {
    run('ip', ['netns', 'del', 'nst-theirs']);
  }
});

test.serial(
  'the main thread is never left switched; threads, async fs, DNS and new sockets stay on the host side',
  async (t) => {
    const other = await topo.ns('other');
    t.is(threadNs(), originNs);
    t.is(native().gettid(), process.pid, 'tests run on the main thread');

    // Work inside the other namespace in every way the library does.
    await link.add(other, { kind: 'veth', name: 'work0', peer: { name: 'work0p' }, up: true });
    await addr.replace(other, '10.250.0.1/24', 'work0');
    sysctl.set(other, sysctl.keys.ipForward, 1);
    const child = other.spawnSync('cat', ['/proc/self/net/dev'], { encoding: 'utf8' });
    t.regex(String(child.stdout), /work0/, 'a child spawned for the namespace runs inside it');
    t.is(threadNs(), originNs);

    // Every thread of the process (libuv pool, V8 helpers) is in the origin namespace.
    for (const tid of fs.readdirSync('/proc/self/task')) {
      t.is(fs.readlinkSync(`/proc/self/task/${tid}/ns/net`), originNs, `thread ${tid}`);
    }
    // Async fs and DNS run on the pool and still work.
    t.true((await fs.promises.readFile('/proc/self/net/dev', 'utf8')).includes('lo:'));
    t.false((await fs.promises.readFile('/proc/thread-self/net/dev', 'utf8')).includes('work0'));
    t.truthy((await dns.lookup('localhost')).address);

    // A socket made now belongs to the host side: a host-side child reaches it, the other namespace does not.
    const server = net.createServer((s) => s.end('host\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const fromHost = await request(netns.current(), 'tcp', '127.0.0.1', port);
      t.deepEqual(fromHost.replies, { host: 1 });
      const fromOther = await request(other, 'tcp', '127.0.0.1', port, { timeoutMs: 500 });
      t.is(fromOther.ok, 0);
    } finally {
      server.close();
    }
    t.is(sysctl.get(netns.current(), sysctl.keys.ipForward), '0', 'the sysctl went to the other namespace only');
  },
);

test.serial('a namespace referenced by pid (as Docker names containers) gets a working veth', async (t) => {
  const node = await topo.ns('node');
  const holder = await topo.ns('holder');
  const sleeper = holder.spawn('sleep', ['120'], { stdio: 'ignore' });
  holder.close();
  netns.del('nst-holder'); // only the process keeps it alive now
  try {
    const c = netns.openPid(sleeper.pid!);
    t.is(c.label, `namespace /proc/${sleeper.pid}/ns/net`);
    await veth.add(node, 'to-pid', 'eth0', { peerNetns: c, address: '10.251.0.1/24', peerAddress: '10.251.0.2/24' });
    await link.setUp(c, 'lo');
    const srv = await serve(c, 'tcp', '10.251.0.2', 7000, 'pid-ns');
    try {
      t.deepEqual((await request(node, 'tcp', '10.251.0.2', 7000, { count: 3 })).replies, { 'pid-ns': 3 });
    } finally {
      await srv.stop();
    }
    const pairs = await veth.list(node);
    const p = pairs.find((x) => x.name === 'to-pid')!;
    t.is(p.peer.name, 'eth0');
    t.is(p.peer.netns.pid, sleeper.pid, 'an unnamed namespace is shown by a pid inside it');
    t.regex(ip(node, 'link', 'show'), /to-pid/);
    c.close();
  } finally {
    sleeper.kill();
  }
  // When the last process leaves, the kernel tears the namespace down (asynchronously) and the pair with it.
  await eventually(() => !/to-pid/.test(ip(node, 'link', 'show')), {
    ms: 10_000,
    every: 100,
    what: 'to-pid going with the namespace of its peer',
  });
  t.notRegex(ip(node, 'link', 'show'), /to-pid/);
});
