/**
 * Namespace handles at their edges (issue 28): Workers that end while they
 * hold netlink sockets, an identity the kernel never reuses (an nsfs inode
 * number is recycled once its namespace dies; the namespace cookie is not),
 * checks made at the moment of use (a racing thread swapping what a handle's
 * fd number refers to), files opened inside a namespace, and bad arguments.
 *
 * Every foreign namespace carries a marker link (tsgmark*) that shows in its
 * /proc/net/dev, so what was read or changed is told by content.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import * as netns from '../../src/netns';
import * as link from '../../src/link';
import * as veth from '../../src/veth';
import * as sysctl from '../../src/sysctl';
import { NETLINK_NETFILTER } from '../../src/netlink/socket';
import { PACKAGE_ROOT } from '../../src/native';
import { Topology, fdsOf, ipJson } from '../harness/fixtures';

const topo = new Topology('tsg');
test.after.always(() => topo.cleanup());

const MARK = 'tsgmark';
const SRC = path.resolve(__dirname, '../../src');

async function marked(name: string): Promise<netns.NetNs> {
  const h = await topo.ns(name);
  await link.add(h, { kind: 'bridge', name: `${MARK}${name}`.slice(0, 15), up: true });
  return h;
}

const linksIn = (h: netns.NetNs): string[] =>
  ipJson<{ ifname: string }[]>(h, 'link', 'show')
    .map((l) => l.ifname)
    .sort();

async function failure(fn: () => unknown): Promise<{ code?: string; message: string } | undefined> {
  try {
    await fn();
    return undefined;
  } catch (e) {
    return { code: (e as { code?: string }).code, message: String((e as Error).message) };
  }
}

async function refused(t: ExecutionContext, code: string, what: string, fn: () => unknown, says?: string) {
  const err = await failure(fn);
  t.is(err?.code, code, `${what}: ${code} (${err?.message ?? 'it succeeded'})`);
  if (says) t.true(err?.message.includes(says), `${what}: the error says "${says}" (${err?.message})`);
  t.false(err?.message.includes('internal error') ?? false, `${what}: not an internal error`);
  t.false((err?.message.match(/\n/g) ?? []).length > 0, `${what}: one line`);
}

// --- 1. Workers ------------------------------------------------------------

/** A script for a child node process: a Worker that keeps using netlink sockets (here and in NS), sysctls, files and spawn, then ends as `how` says. */
function workerScript(ns: string, how: 'terminate' | 'exit' | 'exit-inside'): string {
  return `
const { Worker } = require('node:worker_threads');
const w = new Worker(${JSON.stringify(`
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const netns = require(${JSON.stringify(`${SRC}/netns`)});
const link = require(${JSON.stringify(`${SRC}/link`)});
const sysctl = require(${JSON.stringify(`${SRC}/sysctl`)});
const h = netns.open(${JSON.stringify(ns)});
setInterval(() => {}, 1000);
let n = 0;
(async () => {
  for (;;) {
    const p = link.list(h); // a request in flight on every loop turn
    await link.list(netns.current());
    await p;
    sysctl.get(h, sysctl.keys.ipForward);
    fs.closeSync(h.openFile('/proc/net/dev'));
    h.spawnSync('true');
    h.nl; h.netfilter;
    if (++n === 25) parentPort.postMessage(n);
    if (n === 50 && ${JSON.stringify(how)} === 'exit-inside') process.exit(7);
  }
})();
`)}, { eval: true });
w.on('message', async () => {
  if (${JSON.stringify(how)} === 'terminate') {
    const code = await w.terminate();
    console.log('terminated ' + code);
  } else if (${JSON.stringify(how)} === 'exit') {
    console.log('exiting');
    process.exit(0);
  }
});
w.on('exit', (code) => { if (${JSON.stringify(how)} === 'exit-inside') console.log('worker exited ' + code); });
`;
}

for (const how of ['terminate', 'exit', 'exit-inside'] as const) {
  test.serial(`a Worker using netlink sockets ends cleanly (${how}), with no fd warnings`, async (t) => {
    const h = await marked(`w${how.length}`);
    const want = { terminate: 'terminated 1', exit: 'exiting', 'exit-inside': 'worker exited 7' }[how];
    for (let i = 0; i < 3; i++) {
      const r = spawnSync(process.execPath, ['-e', workerScript(h.name!, how)], { encoding: 'utf8', timeout: 60_000 });
      t.is(r.signal, null, `run ${i}: not killed by a signal (${r.signal}): ${r.stderr}`);
      t.is(r.status, 0, `run ${i}: exit 0: ${r.stderr}`);
      t.is(r.stdout.trim(), want, `run ${i}: the main thread saw the Worker end`);
      t.false(/closed but not opened|FATAL|Warning/.test(r.stderr), `run ${i}: nothing on stderr: ${r.stderr}`);
    }
  });
}

// --- 2. An identity the kernel never reuses ----------------------------------

/** Closes h's fd behind its back, and lets its namespace die (no name, no other fd). */
function orphan(h: netns.NetNs): number {
  const [fd] = fdsOf(h.inode);
  fs.closeSync(fd!);
  netns.del(h.name!);
  return fd!;
}

test.serial(
  'an nsfs inode recycled for a new namespace under the same fd number: the stale handle is refused with EBADF',
  async (t) => {
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    let reused: { stale: netns.NetNs; fresh: netns.NetNs } | undefined;
    for (let round = 0; round < 20 && !reused; round++) {
      const stale = netns.add(`tsg-old${round}`);
      const ino = stale.inode;
      const fd = orphan(stale);
      // The kernel frees a dead namespace's inode number from a workqueue: wait for it to come back.
      for (let i = 0; i < 40 && !reused; i++) {
        const fresh = await marked(`new${round}-${i}`);
        if (fresh.inode === ino && fdsOf(ino).includes(fd)) reused = { stale, fresh };
        else {
          fresh.close();
          netns.del(fresh.name!);
          await sleep(25);
        }
      }
    }
    if (!reused) return t.fail('no inode came back in 20 rounds: the kernel did not recycle one');
    const { stale, fresh } = reused;
    t.is(stale.inode, fresh.inode, 'same inode number');
    const before = linksIn(fresh);
    const host = netns.current();
    await refused(t, 'EBADF', 'sysctl.set', () => sysctl.set(stale, sysctl.keys.ipForward, 1), stale.label);
    await refused(t, 'EBADF', 'link.add', () => link.add(stale, { kind: 'bridge', name: 'wrong0' }), stale.label);
    await refused(t, 'EBADF', 'spawnSync', () => stale.spawnSync('true'), stale.label);
    await refused(t, 'EBADF', 'spawn', () => stale.spawn('true'), stale.label);
    await refused(t, 'EBADF', 'openFile', () => stale.openFile('/proc/net/dev'), stale.label);
    await refused(t, 'EBADF', 'a netfilter socket', () => stale.openNetlink(NETLINK_NETFILTER), stale.label);
    await refused(t, 'EBADF', 'a veth peer into it', () => veth.add(host, 'tsgv0', 'tsgv0p', { peerNetns: stale }));
    await refused(t, 'EBADF', 'moving a link into it', async () => {
      await link.add(host, { kind: 'bridge', name: 'tsgmv0' });
      try {
        await link.set(host, 'tsgmv0', { netns: stale });
      } finally {
        await link.del(host, 'tsgmv0');
      }
    });
    await refused(t, 'EBADF', 'its nsid', () => netns.nsid(host, stale));
    t.is(sysctl.get(fresh, sysctl.keys.ipForward), '0', 'the sysctl did not land in the new namespace');
    t.deepEqual(linksIn(fresh), before, 'no link landed in the new namespace');
    t.false(linksIn(host).includes('tsgv0'), 'the refused veth left nothing behind');
    stale.close();
    t.true(fdsOf(fresh.inode).length > 0, "closing the stale handle did not close the new namespace's fd");
    t.is(sysctl.get(fresh, sysctl.keys.ipForward), '0', 'the new handle still works');
  },
);

test.serial(
  'a handle fd reused by a file that is not a namespace: EBADF, as documented (not EINVAL from setns)',
  async (t) => {
    const h = await marked('nf');
    const [fd] = fdsOf(h.inode);
    fs.closeSync(fd!);
    const file = fs.openSync('/proc/self/status', 'r');
    t.is(file, fd, 'the number went to a plain file');
    try {
      await refused(t, 'EBADF', 'sysctl.get', () => sysctl.get(h, sysctl.keys.ipForward), h.label);
      const names = (await link.list(h)).map((l) => l.name);
      t.true(names.includes(`${MARK}nf`), 'its open netlink socket (which pins the namespace) still acts in it');
      await refused(t, 'EBADF', 'spawnSync', () => h.spawnSync('true'), h.label);
    } finally {
      h.close(); // must not close the file that took the number
      t.notThrows(() => fs.fstatSync(file), "close() left the file's fd alone");
      fs.closeSync(file);
    }
  },
);

// --- 3. Checks at the moment of use ------------------------------------------

interface Swapping {
  startSwapper(target: number, a: number, b: number): void;
  stopSwapper(): number;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports -- the test-only addon built beside tsnet's (native/testing.cc)
const swapper = require(path.join(PACKAGE_ROOT, 'native/build/Release/tsnet_testing.node')) as Swapping;

/** Runs `body` while another thread keeps swapping h's fd between its namespace and `other`'s. */
async function racing<T>(
  h: netns.NetNs,
  other: netns.NetNs,
  body: () => Promise<T>,
): Promise<{ out: T; swaps: number }> {
  const [target] = fdsOf(h.inode);
  const a = fs.openSync(`/proc/self/fd/${target}`, 'r');
  const b = fs.openSync(`/proc/self/fd/${fdsOf(other.inode)[0]}`, 'r');
  swapper.startSwapper(target!, a, b);
  let swaps = 0;
  let out: T;
  try {
    out = await body();
  } finally {
    swaps = swapper.stopSwapper(); // leaves the handle's fd a copy of its own namespace again
    fs.closeSync(a);
    fs.closeSync(b);
  }
  return { out, swaps };
}

test.serial(
  "racing fd swaps: 10,000 spawns never run in the other namespace (each runs in the handle's or is refused)",
  async (t) => {
    const a = await marked('ra');
    const b = await marked('rb');
    const nsA = String(a.inode);
    const counts = { inA: 0, refused: 0, elsewhere: 0 };
    const tries = 10_000;
    const r = await racing(a, b, async () => {
      for (let i = 0; i < tries; i++) {
        let out: string;
        try {
          const c = a.spawnSync('stat', ['-L', '-c', '%i', '/proc/self/ns/net'], { encoding: 'utf8' });
          out = String(c.stdout).trim();
        } catch (err) {
          if ((err as { code?: string }).code === 'EBADF') counts.refused++;
          else throw err;
          continue;
        }
        if (out === nsA) counts.inA++;
        else counts.elsewhere++;
      }
    });
    t.log(`${r.swaps} swaps; ${counts.inA} in the handle's namespace, ${counts.refused} refused`);
    t.true(r.swaps > tries, 'the racing thread swapped throughout');
    t.is(counts.elsewhere, 0, 'no program ran anywhere but in the handle namespace');
    t.is(counts.inA + counts.refused, tries);
    t.true(counts.inA > 0 && counts.refused > 0, 'both outcomes happened: the race was real');
  },
);

test.serial('racing fd swaps: 10,000 veth peers created into a handle never land in the other namespace', async (t) => {
  const a = await marked('va');
  const b = await marked('vb');
  const counts = { made: 0, refused: 0 };
  const unexpected: string[] = [];
  const peersIn = async (h: netns.NetNs) => (await link.list(h)).filter((l) => l.name.startsWith('tsgp')).length;
  let inA = 0;
  let inB = 0;
  const rounds = 10;
  const perRound = 1_000;
  let swaps = 0;
  for (let round = 0; round < rounds; round++) {
    // The host ends live in a scratch namespace: removing it removes a thousand pairs at once.
    const scratch = await topo.ns(`vs${round}`);
    const r = await racing(a, b, async () => {
      for (let i = 0; i < perRound; i++) {
        try {
          await veth.add(scratch, `tsgr${i}`, `tsgp${i}`, { peerNetns: a });
          counts.made++;
        } catch (err) {
          if ((err as { code?: string }).code === 'EBADF') counts.refused++;
          else unexpected.push(String((err as Error).message)); // e.g. EEXIST: a peer of that name already in the wrong namespace
        }
      }
    });
    swaps += r.swaps;
    inA += await peersIn(a);
    inB += await peersIn(b);
    scratch.close();
    netns.del(scratch.name!);
    for (let i = 0; i < 200 && (await peersIn(a)) > 0; i++) await new Promise((res) => setTimeout(res, 25));
  }
  t.log(`${swaps} swaps; ${inA} peers in the handle's namespace, ${counts.refused} refused`);
  t.true(swaps > rounds * perRound, 'the racing thread swapped throughout');
  t.is(inB, 0, 'no peer landed in the other namespace');
  t.deepEqual(unexpected.slice(0, 3), [], 'every try was made or refused');
  t.is(inA, counts.made, "every peer made is in the handle's namespace");
  t.is(counts.made + counts.refused, rounds * perRound);
  t.true(counts.made > 0 && counts.refused > 0, 'both outcomes happened: the race was real');
});

// --- 4, 5. Files inside a namespace -------------------------------------------

test.serial(
  "openFile with O_CREAT: the mode given (fs.openSync's 0o666 by default, less the umask), never setuid/setgid bits",
  async (t) => {
    const h = await marked('of');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsg-'));
    try {
      const { O_CREAT, O_WRONLY } = fs.constants;
      const umask = process.umask();
      fs.closeSync(h.openFile(path.join(dir, 'default'), O_CREAT | O_WRONLY));
      fs.closeSync(h.openFile(path.join(dir, 'private'), O_CREAT | O_WRONLY, 0o600));
      t.is(fs.statSync(path.join(dir, 'default')).mode & 0o7777, 0o666 & ~umask);
      t.is(fs.statSync(path.join(dir, 'private')).mode & 0o7777, 0o600 & ~umask);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test.serial("path spellings of /proc/net read the handle's namespace; /proc/PID/net is refused", async (t) => {
  const h = await marked('ps');
  const read = (p: string, flags = fs.constants.O_RDONLY) => {
    const fd = h.openFile(p, flags);
    try {
      return fs.readFileSync(fd, 'utf8');
    } finally {
      fs.closeSync(fd);
    }
  };
  for (const p of [
    '/proc/net/dev',
    '/proc//net/dev',
    '/proc/./net/dev',
    '/proc/self/../self/net/dev',
    '/proc/self/net/dev',
    '/proc/thread-self/net/dev',
  ]) {
    t.true(read(p).includes(`${MARK}ps`), `${p}: the handle's namespace (its marker link)`);
  }
  for (const p of [
    `/proc/${process.pid}/net/dev`,
    `/proc/self/task/${process.pid}/net/dev`,
    `/proc/1/net/dev`,
    `/proc/${process.pid}/./net/dev`,
  ]) {
    await refused(t, 'EINVAL', p, () => h.openFile(p), 'not the handle');
  }
  await refused(t, 'EINVAL', 'a relative path', () => h.openFile('proc/net/dev'), 'absolute');
  // Symlinks on the way still lead to a process's own files: refused once opened, by where the fd points.
  await refused(
    t,
    'EINVAL',
    '/proc/self/root/proc/net/dev',
    () => h.openFile('/proc/self/root/proc/net/dev'),
    'not the handle',
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsg-'));
  try {
    fs.symlinkSync('/proc/net/dev', path.join(dir, 'dev'));
    await refused(t, 'EINVAL', 'a symlink to /proc/net/dev', () => h.openFile(path.join(dir, 'dev')), 'not the handle');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  t.true(
    read('/proc/net/dev', fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW).includes(`${MARK}ps`),
    'O_NOFOLLOW on a path without symlinks opens as it does here',
  );
});

test.serial(
  'openFile of a FIFO is refused at once: it never stalls the helper thread (and every other call)',
  async (t) => {
    const h = await marked('ff');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsg-'));
    try {
      const fifo = path.join(dir, 'fifo');
      t.is(spawnSync('mkfifo', [fifo]).status, 0);
      const start = process.hrtime.bigint();
      await refused(t, 'EINVAL', 'a FIFO', () => h.openFile(fifo), 'not a regular file');
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      t.true(ms < 500, `refused in ${ms.toFixed(1)} ms`);
      t.true((await link.list(h)).length > 0, 'the handle works on');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

// --- 6. Smaller ones -------------------------------------------------------------

test.serial('a request the kernel applied before close() is reported applied, not ECANCELED', async (t) => {
  const h = await marked('cc');
  // The kernel processes the request inside sendmsg: it is applied by the time link.add returns its promise.
  const added = link.add(h, { kind: 'bridge', name: 'tsgcc0' });
  h.close();
  await t.notThrowsAsync(added, 'the add resolves');
  const again = netns.open(h.name!);
  try {
    t.truthy(await link.get(again, 'tsgcc0'), 'the bridge exists');
  } finally {
    again.close();
  }
});

test.serial('wrong-typed arguments: one-line EINVAL naming what was expected, never an internal error', async (t) => {
  const h = await marked('wt');
  const bad = {} as netns.NetNs;
  await refused(t, 'EINVAL', 'link.list({})', () => link.list(bad), 'expected a namespace handle');
  await refused(t, 'EINVAL', 'link.get(null)', () => link.get(null as never, 'lo'), 'expected a namespace handle');
  await refused(
    t,
    'EINVAL',
    'sysctl.get("x")',
    () => sysctl.get('x' as never, sysctl.keys.ipForward),
    'expected a namespace handle',
  );
  await refused(
    t,
    'EINVAL',
    'veth into {}',
    () => veth.add(h, 'tsgw0', 'tsgw0p', { peerNetns: bad }),
    'expected a namespace handle',
  );
  await refused(t, 'EINVAL', 'openFile(42)', () => h.openFile(42 as never), 'absolute path');
  await refused(t, 'EINVAL', 'openFile with string flags', () => h.openFile('/proc/net/dev', 'r' as never), 'integers');
  await refused(
    t,
    'EINVAL',
    'spawnSync with string args',
    () => h.spawnSync('echo', 'abc' as never),
    'array of strings',
  );
  await refused(t, 'EINVAL', 'spawn with string args', () => h.spawn('echo', 'abc' as never), 'array of strings');
  await refused(
    t,
    'EINVAL',
    'spawnSync in the current namespace with string args',
    () => netns.current().spawnSync('echo', 'abc' as never),
    'array of strings',
  );
  t.false(linksIn(h).includes('tsgw0'), 'nothing was created');
});

test.serial(
  'spawn errors as child_process reports them: relative program with cwd runs, non-executable is EACCES, a bad cwd names the cwd',
  async (t) => {
    const h = await marked('se');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsg-'));
    try {
      const prog = path.join(dir, 'prog');
      fs.writeFileSync(prog, '#!/bin/sh\ncat /proc/net/dev\n', { mode: 0o755 });
      fs.writeFileSync(path.join(dir, 'plain'), 'not a program\n', { mode: 0o644 });
      const r = h.spawnSync('./prog', [], { cwd: dir, encoding: 'utf8' });
      t.is(r.status, 0, String(r.stderr));
      t.true(String(r.stdout).includes(`${MARK}se`), './prog ran from cwd, in the namespace');
      const viaChild = spawnSync('./plain', [], { cwd: dir });
      t.is((viaChild.error as { code?: string } | undefined)?.code, 'EACCES', 'child_process says EACCES');
      await refused(t, 'EACCES', 'a non-executable file', () => h.spawnSync('./plain', [], { cwd: dir }));
      await refused(t, 'ENOENT', 'a missing program', () => h.spawnSync('./missing', [], { cwd: dir }), 'not found');
      await refused(
        t,
        'ENOENT',
        'a bad cwd',
        () => h.spawnSync('true', [], { cwd: path.join(dir, 'nope') }),
        path.join(dir, 'nope'),
      );
      const err = await failure(() => h.spawn('true', [], { cwd: path.join(dir, 'nope') }));
      t.false(err?.message.includes('tsnet-nsexec') ?? true, `the error does not blame tsnet-nsexec: ${err?.message}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
