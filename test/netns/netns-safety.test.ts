/**
 * Namespace handles can never act in the wrong namespace, and no thread of
 * the process but tsnet's own helper is ever anywhere but at home.
 *
 * "Home" is the namespace this test process runs in (the sandbox); every
 * foreign namespace carries a marker link (tsfmark*) whose name shows up in
 * its /proc/net/dev, so an observer that reads a foreign namespace's data is
 * caught by content, not only by the namespace link.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createHook } from 'node:async_hooks';
import { Worker } from 'node:worker_threads';
import type { ExecutionContext } from 'ava';
import * as netns from '../../src/netns';
import * as link from '../../src/link';
import * as addr from '../../src/addr';
import * as route from '../../src/route';
import * as veth from '../../src/veth';
import * as bridge from '../../src/bridge';
import * as attach from '../../src/attach';
import * as sysctl from '../../src/sysctl';
import * as conntrack from '../../src/conntrack';
import { NatEngine } from '../../src/nat/engine';
import { helperTid } from '../../src/netns/inside';
import { NETLINK_NETFILTER } from '../../src/netlink/socket';
import { request } from '../../src/demo/traffic';
import { Topology, fdsOf, ip, ipJson } from '../harness/fixtures';

const topo = new Topology('tsf');
test.after.always(() => topo.cleanup());

const HOME = fs.readlinkSync('/proc/self/ns/net');
const MARK = 'tsfmark'; // links are bridges: this kernel has no dummy module

/** A namespace with lo up and a marker link that shows in its /proc/net/dev. */
async function marked(name: string): Promise<netns.NetNs> {
  const h = await topo.ns(name);
  await link.add(h, { kind: 'bridge', name: `${MARK}${name}`.slice(0, 15), up: true });
  return h;
}

/** Threads of this process that are not at home, the helper thread excepted. */
function threadsAway(): string[] {
  const helper = String(helperTid());
  const away: string[] = [];
  for (const tid of fs.readdirSync('/proc/self/task')) {
    if (tid === helper) continue;
    try {
      const ns = fs.readlinkSync(`/proc/self/task/${tid}/ns/net`);
      if (ns !== HOME) away.push(`${tid} (${fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()}): ${ns}`);
    } catch {
      // the thread ended meanwhile
    }
  }
  return away;
}

const linksIn = (h: netns.NetNs): string[] =>
  ipJson<{ ifname: string }[]>(h, 'link', 'show')
    .map((l) => l.ifname)
    .sort();

async function rejectsEbadf(t: ExecutionContext, what: string, label: string, fn: () => unknown): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  t.is((err as { code?: string } | undefined)?.code, 'EBADF', `${what}: EBADF`);
  t.true(
    String((err as Error | undefined)?.message).includes(label),
    `${what}: the error names the handle (${String((err as Error | undefined)?.message)})`,
  );
}

test.serial(
  'a closed handle is refused with EBADF naming it, and never acts on the namespace that got its fd number',
  async (t) => {
    const x1 = await marked('x1');
    x1.close();
    const x2 = await marked('x2'); // the lowest free fd: very likely x1's old number
    const before = linksIn(x2);
    await rejectsEbadf(t, 'sysctl.set', 'namespace tsf-x1', () => sysctl.set(x1, sysctl.keys.ipForward, 1));
    await rejectsEbadf(t, 'spawnSync', 'namespace tsf-x1', () => x1.spawnSync('true'));
    await rejectsEbadf(t, 'inode', 'namespace tsf-x1', () => x1.inode);
    await rejectsEbadf(t, 'link.add', 'namespace tsf-x1', () => link.add(x1, { kind: 'bridge', name: 'wrong0' }));
    t.is(sysctl.get(x2, sysctl.keys.ipForward), '0', 'the sysctl did not land in x2');
    t.deepEqual(linksIn(x2), before, 'no link landed in x2');
    x1.close(); // twice: a no-op
  },
);

test.serial('a handle whose fd was closed behind its back and reused is refused, not acted on', async (t) => {
  const victim = await marked('v1');
  const [fd] = fdsOf(victim.inode);
  t.truthy(fd, 'the handle holds an fd to its namespace');
  fs.closeSync(fd!);
  const reuser = await marked('r1');
  t.true(fdsOf(reuser.inode).includes(fd!), 'the number now refers to another namespace');
  const host = netns.current();
  const before = linksIn(reuser);
  await rejectsEbadf(t, 'sysctl.set', 'namespace tsf-v1', () => sysctl.set(victim, sysctl.keys.ipForward, 1));
  await rejectsEbadf(t, 'spawnSync', 'namespace tsf-v1', () => victim.spawnSync('true'));
  await rejectsEbadf(t, 'spawn', 'namespace tsf-v1', () => victim.spawn('true'));
  await rejectsEbadf(t, 'a new netlink socket', 'namespace tsf-v1', () => victim.openNetlink(NETLINK_NETFILTER));
  await rejectsEbadf(t, 'a veth peer into it', 'namespace tsf-v1', () =>
    veth.add(host, 'tsfv0', 'tsfv0p', { peerNetns: victim }),
  );
  await rejectsEbadf(t, 'its nsid', 'namespace tsf-v1', () => netns.nsid(host, victim));
  t.is(sysctl.get(reuser, sysctl.keys.ipForward), '0');
  t.deepEqual(linksIn(reuser), before);
  t.false(linksIn(host).includes('tsfv0'), 'the failed veth left nothing on the host side');
});

test.serial('netns.current() cannot be closed: close() is a no-op and the handle keeps working', async (t) => {
  const host = netns.current();
  host.close();
  host.close();
  t.false(host.closed);
  t.true((await link.list(host)).some((l) => l.name === 'lo'));
  t.is(sysctl.get(host, sysctl.keys.ipForward), '0');
  t.is(netns.current(), host, 'one shared handle');
  t.is(host.inode, fs.statSync('/proc/self/ns/net').ino);
});

test.serial(
  'no API runs caller code inside a namespace: run() and inNetns are gone; explicit operations replace them',
  async (t) => {
    const h = await marked('e1');
    t.false('run' in h, 'NetNs has no run()');
    t.false('inNetns' in netns, 'netns exports no inNetns');
    t.false('openPath_' in netns, 'openPath_ is not public');
    // What run() was used for, as explicit operations: a proc file opened inside and read later from the threadpool ...
    const fd = h.openFile('/proc/net/dev');
    try {
      const buf = Buffer.alloc(65536);
      const { bytesRead } = await new Promise<{ bytesRead: number }>((resolve, reject) =>
        fs.read(fd, buf, 0, buf.length, 0, (err, n) => (err ? reject(err) : resolve({ bytesRead: n }))),
      );
      t.true(
        buf.toString('utf8', 0, bytesRead).includes(`${MARK}e1`),
        '/proc/net/dev opened inside shows the namespace, read from any thread',
      );
    } finally {
      fs.closeSync(fd);
    }
    // ... and a child process inside, which is inside by the time spawn() returns.
    const child = h.spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      t.is(fs.readlinkSync(`/proc/${child.pid}/ns/net`), `net:[${h.inode}]`);
    } finally {
      child.kill();
    }
  },
);

test.serial('async work around namespace operations stays at home: fs, both listen() forms, Workers', async (t) => {
  const h = await marked('a1');
  // Interleave namespace operations with async work that used to be able to land inside.
  const op = link.add(h, { kind: 'bridge', name: 'async0' });
  sysctl.set(h, sysctl.keys.ipForward, 1);
  const read = fs.promises.readFile('/proc/net/dev', 'utf8');
  const worker = new Worker(
    "const fs = require('fs'); const { parentPort } = require('worker_threads'); parentPort.postMessage([fs.readlinkSync('/proc/thread-self/ns/net'), fs.readFileSync('/proc/thread-self/net/dev', 'utf8')]);",
    { eval: true },
  );
  h.spawnSync('true');
  const servers = [net.createServer((s) => s.end('home\n')), net.createServer((s) => s.end('home\n'))];
  await Promise.all([
    new Promise<void>((r) => servers[0]!.listen(0, '127.0.0.1', r)),
    new Promise<void>((r) => servers[1]!.listen(0, r)),
  ]);
  await op;
  const [wns, wdev] = await new Promise<[string, string]>((r) => worker.once('message', r));
  await worker.terminate();
  t.is(wns, HOME, 'a Worker created around namespace operations lives at home');
  t.false(wdev.includes(MARK));
  t.false((await read).includes(MARK), 'async fs reads at home');
  try {
    for (const s of servers) {
      const port = (s.address() as net.AddressInfo).port;
      t.deepEqual(
        (await request(netns.current(), 'tcp', '127.0.0.1', port)).replies,
        { home: 1 },
        `listen on ${JSON.stringify(s.address())} is at home`,
      );
      t.is((await request(h, 'tcp', '127.0.0.1', port, { timeoutMs: 500 })).ok, 0, 'and not inside');
    }
  } finally {
    servers.forEach((s) => s.close());
  }
  t.deepEqual(threadsAway(), []);
});

test.serial('async_hooks init hooks (tracing agents) never run inside a namespace, whatever tsnet does', async (t) => {
  const h = await marked('h1');
  const seen: string[] = [];
  const hook = createHook({
    init() {
      seen.push(fs.readlinkSync('/proc/thread-self/ns/net'));
    },
  });
  hook.enable();
  try {
    const tmp = netns.add('tsf-hooktmp');
    await link.add(tmp, { kind: 'bridge', name: 'hk0', up: true });
    tmp.close();
    netns.del('tsf-hooktmp');
    await link.add(h, { kind: 'bridge', name: 'hk1', up: true });
    await addr.replace(h, '10.252.0.1/24', 'hk1');
    await route.replace(h, { dst: '10.253.0.0/16', via: '10.252.0.2' });
    sysctl.set(h, sysctl.keys.ipForward, 1);
    sysctl.get(h, sysctl.keys.ipForward);
    h.spawnSync('true');
    await new Promise((r) => h.spawn('true').once('exit', r));
    await conntrack.list(h, 4);
    h.openNetlink(NETLINK_NETFILTER).close();
    await veth.list(h);
  } finally {
    hook.disable();
  }
  t.true(seen.length > 20, `the hook ran (${seen.length} times)`);
  t.deepEqual(
    seen.filter((s) => s !== HOME),
    [],
    'every init hook ran at home',
  );
});

test.serial(
  'closing and reusing every fd of the process that refers to the home namespace changes nothing',
  async (t) => {
    const home = fs.statSync('/proc/self/ns/net').ino;
    const closed = fdsOf(home);
    closed.forEach((fd) => fs.closeSync(fd));
    // Occupy the freed numbers (and more) with foreign namespaces.
    const squatters = [await marked('s1'), await marked('s2'), await marked('s3')];
    const target = await marked('s4');
    await link.add(target, { kind: 'bridge', name: 'landed0' });
    sysctl.set(target, sysctl.keys.ipForward, 1);
    const child = target.spawnSync('cat', ['/proc/thread-self/net/dev'], { encoding: 'utf8' });
    t.true(String(child.stdout).includes('landed0'));
    t.true(linksIn(target).includes('landed0'));
    for (const s of squatters) t.false(linksIn(s).includes('landed0'));
    t.is(sysctl.get(netns.current(), sysctl.keys.ipForward), '0');
    t.is(fs.readlinkSync('/proc/thread-self/ns/net'), HOME);
    t.deepEqual(threadsAway(), []);
    t.log(`${closed.length} fd(s) to the home namespace closed and reused`);
  },
);

test.serial(
  'stress: hundreds of operations in other namespaces while the threadpool, a Worker and async hooks watch /proc/net: no foreign observation anywhere',
  async (t) => {
    const spaces = await Promise.all(['p0', 'p1', 'p2', 'p3'].map(marked));
    const stop = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(
      `
    const fs = require('fs');
    const { workerData, parentPort } = require('worker_threads');
    const stop = new Int32Array(workerData.stop);
    let reads = 0, foreign = [];
    while (Atomics.load(stop, 0) === 0) {
      for (const f of ['/proc/net/dev', '/proc/self/net/dev', '/proc/thread-self/net/dev']) {
        const text = fs.readFileSync(f, 'utf8');
        if (text.includes(workerData.mark)) foreign.push(f);
      }
      const ns = fs.readlinkSync('/proc/thread-self/ns/net');
      if (ns !== workerData.home) foreign.push(ns);
      reads++;
      if (reads % 16 === 0) Atomics.wait(stop, 0, 0, 1); // leave the second core to the rest of the test now and then
    }
    parentPort.postMessage({ reads, foreign: foreign.slice(0, 5), foreignCount: foreign.length });
  `,
      { eval: true, workerData: { stop: stop.buffer, mark: MARK, home: HOME } },
    );

    const hookSeen = { n: 0, foreign: 0 };
    const hook = createHook({
      init() {
        hookSeen.n++;
        if (fs.readlinkSync('/proc/thread-self/ns/net') !== HOME) hookSeen.foreign++;
        if (hookSeen.n % 25 === 0 && fs.readFileSync('/proc/net/dev', 'utf8').includes(MARK)) hookSeen.foreign++;
      },
    });

    const pool = { reads: 0, foreign: 0 };
    let running = true;
    const poolReaders = Array.from({ length: 6 }, async () => {
      while (running) {
        const [dev, ns] = await Promise.all([
          fs.promises.readFile('/proc/net/dev', 'utf8'),
          fs.promises.readlink('/proc/thread-self/ns/net'),
        ]);
        pool.reads++;
        if (dev.includes(MARK) || ns !== HOME) pool.foreign++;
      }
    });
    const away: string[] = [];
    const sampler = setInterval(() => away.push(...threadsAway()), 2);

    const OPS = 400;
    const POOL_MIN = 300; // threadpool observations wanted while operations run
    let next = 0;
    let done = 0;
    const one = async (i: number) => {
      const h = spaces[i % spaces.length]!;
      switch (i % 8) {
        case 0:
          await route.replace(h, { dst: `10.${100 + (i % 100)}.0.0/16`, dev: 'lo' });
          break;
        case 1:
          sysctl.set(h, sysctl.keys.ipForward, i % 2);
          sysctl.get(h, sysctl.keys.ipForward);
          break;
        case 2:
          h.spawnSync('true');
          break;
        case 3:
          await new Promise((r) => h.spawn('true', [], { stdio: 'ignore' }).once('exit', r));
          break;
        case 4:
          h.openNetlink(NETLINK_NETFILTER).close();
          break;
        case 5:
          await conntrack.list(h, 4);
          break;
        case 6: {
          const tmp = netns.add(`tsf-tmp${i}`);
          tmp.openNetlink(0).close();
          tmp.close();
          netns.del(`tsf-tmp${i}`);
          break;
        }
        case 7:
          await addr.replace(h, `10.254.${(i >> 3) % 250}.${1 + (i % 200)}/32`, 'lo');
          break;
      }
      done++;
    };
    hook.enable();
    try {
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < OPS || pool.reads < POOL_MIN) await one(next++);
        }),
      );
    } finally {
      hook.disable();
      clearInterval(sampler);
      running = false;
      await Promise.all(poolReaders);
      Atomics.store(stop, 0, 1);
    }
    const w = await new Promise<{ reads: number; foreign: string[]; foreignCount: number }>((r) =>
      worker.once('message', r),
    );
    await worker.terminate();
    t.true(done >= OPS);
    t.log(
      `${done} operations; observations: worker ${w.reads * 4}, threadpool ${pool.reads * 2}, init hooks ${hookSeen.n}, thread samples of every thread`,
    );
    t.true(w.reads > 50 && pool.reads >= POOL_MIN && hookSeen.n > 100, 'every observer really observed');
    t.deepEqual(
      { worker: w.foreignCount, pool: pool.foreign, hooks: hookSeen.foreign, threads: away.length },
      { worker: 0, pool: 0, hooks: 0, threads: 0 },
      `foreign observations: ${[...w.foreign, ...away.slice(0, 5)].join(', ')}`,
    );
    t.is(helperTid() > 0, true, 'the helper thread did the work');
  },
);

test.serial(
  'every public operation that takes a handle refuses a closed one (EBADF, naming it) and touches nothing',
  async (t) => {
    const host = netns.current();
    const other = await marked('u2');
    await bridge.ensure(other, 'tsfbr0');
    const dead = await marked('u1');
    await link.add(dead, { kind: 'bridge', name: 'd0' });
    dead.close();
    const reuser = await marked('u3'); // may hold dead's old fd number
    const before = linksIn(reuser);
    const L = 'namespace tsf-u1';
    const calls: [string, () => unknown][] = [
      ['inode', () => dead.inode],
      ['nl', () => dead.nl],
      ['openNetlink', () => dead.openNetlink(0)],
      ['openFile', () => dead.openFile('/proc/net/dev')],
      ['spawn', () => dead.spawn('true')],
      ['spawnSync', () => dead.spawnSync('true')],
      ['netns.nsid(h)', () => netns.nsid(dead, host)],
      ['netns.nsid(of)', () => netns.nsid(host, dead)],
      ['link.list', () => link.list(dead)],
      ['link.get', () => link.get(dead, 'd0')],
      ['link.mustGet', () => link.mustGet(dead, 'd0')],
      ['link.add', () => link.add(dead, { kind: 'bridge', name: 'd1' })],
      ['link.add peer', () => link.add(other, { kind: 'veth', name: 'tsfp0', peer: { name: 'tsfp0p', netns: dead } })],
      ['link.set', () => link.set(dead, 'd0', { mtu: 1400 })],
      ['link.set netns', () => link.set(other, 'tsfbr0', { netns: dead })],
      ['link.setUp', () => link.setUp(dead, 'd0')],
      ['link.setDown', () => link.setDown(dead, 'd0')],
      ['link.del', () => link.del(dead, 'd0')],
      ['link.setBridgePort', () => link.setBridgePort(dead, 'd0', { hairpin: true })],
      ['addr.add', () => addr.add(dead, '10.9.0.1/24', 'd0')],
      ['addr.replace', () => addr.replace(dead, '10.9.0.1/24', 'd0')],
      ['addr.del', () => addr.del(dead, '10.9.0.1/24', 'd0')],
      ['addr.list', () => addr.list(dead)],
      ['route.add', () => route.add(dead, { dst: '10.8.0.0/16', dev: 'd0' })],
      ['route.replace', () => route.replace(dead, { dst: '10.8.0.0/16', dev: 'd0' })],
      ['route.del', () => route.del(dead, { dst: '10.8.0.0/16', dev: 'd0' })],
      ['route.list', () => route.list(dead)],
      ['route.get', () => route.get(dead, '10.8.0.1')],
      ['veth.add', () => veth.add(dead, 'tsfv1', 'tsfv1p')],
      ['veth.add peerNetns', () => veth.add(other, 'tsfv2', 'tsfv2p', { peerNetns: dead })],
      ['veth.del', () => veth.del(dead, 'd0')],
      ['veth.list', () => veth.list(dead)],
      ['bridge.ensure', () => bridge.ensure(dead, 'br9')],
      ['bridge.del', () => bridge.del(dead, 'br9')],
      ['bridge.list', () => bridge.list(dead)],
      ['bridge.addPort', () => bridge.addPort(dead, 'br9', 'd0')],
      ['bridge.removePort', () => bridge.removePort(dead, 'd0')],
      ['bridge.setHairpin', () => bridge.setHairpin(dead, 'd0', true)],
      ['attach (namespace)', () => attach.attach(other, dead, { bridge: 'tsfbr0', address: '10.7.0.2/24' })],
      ['attach (host)', () => attach.attach(dead, other, { bridge: 'tsfbr0', address: '10.7.0.2/24' })],
      ['attach.detach', () => attach.detach(dead)],
      ['sysctl.get', () => sysctl.get(dead, sysctl.keys.ipForward)],
      ['sysctl.set', () => sysctl.set(dead, sysctl.keys.ipForward, 1)],
      ['conntrack.list', () => conntrack.list(dead, 4)],
      ['conntrack.deleteFlows', () => conntrack.deleteFlows(dead, 4, () => true)],
      [
        'NatEngine.update',
        () =>
          new NatEngine({ ns: dead, stateDir: path.join('/tmp', 'tsf-nat'), backend: 'nft' }).update((st) => {
            st.rules.push({ kind: 'masquerade', source: '10.7.0.0/24' });
          }),
      ],
    ];
    for (const [what, fn] of calls) await rejectsEbadf(t, what, L, fn);
    t.deepEqual(linksIn(reuser), before, 'nothing landed in the namespace holding the old number');
    t.is(sysctl.get(reuser, sysctl.keys.ipForward), '0');
    t.deepEqual(
      linksIn(other).filter((l) => l.startsWith('tsf') && !l.startsWith(MARK)),
      ['tsfbr0'],
      'no half-made veth in the other namespace',
    );
    t.regex(ip(host, 'link', 'show'), /^(?![\s\S]*tsfv)/, 'nor on the host');
  },
);
