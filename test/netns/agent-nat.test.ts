/**
 * The CLI's NAT changes served by a running `tsnet agent` (it holds the
 * state in memory and applies a diff), and applied by the CLI itself when no
 * agent can serve them. Real packets through a router namespace:
 *
 *   node (the agent; the CLI runs here)      router (--netns: the rules) --br0-- b1 10.82.0.11
 *                                                                          -- b2 10.82.0.12
 *
 * The router itself is the client (OUTPUT DNAT, as for a node's own
 * traffic); `tsnet -j service ls` of the stored state and the agent's log
 * are the observers of who applied what.
 */
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import { attach } from '../../src/attach';
import type { NetNs } from '../../src/netns';
import { native } from '../../src/native';
import { serve, request, type Server } from '../../src/demo/traffic';
import { CLI, Topology, run, tsnet } from '../harness/fixtures';
import { CniInstall, type AgentProcess } from '../harness/cni';
import { eventually, orElse } from '../harness/eventually';

const topo = new Topology('agn');
const cni = new CniInstall('agn');
const servers: Server[] = [];
test.after.always(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  await cni.cleanup();
  topo.cleanup();
});

let seq = 0;
/** A node with an agent, and a router namespace (the NAT target) with two HTTP backends answering "b1" and "b2". */
async function setup() {
  const n = ++seq;
  const node = await topo.ns(`node${n}`);
  const router = await topo.ns(`r${n}`);
  await bridge.ensure(router, 'br0', { addresses: ['10.82.0.1/24'] });
  await route.add(router, { dst: '10.96.0.0/16', dev: 'br0' });
  for (const i of [1, 2]) {
    const b = await topo.ns(`r${n}b${i}`);
    await attach(router, b, { bridge: 'br0', address: `10.82.0.1${i}/24` });
    servers.push(await serve(b, 'http', '0.0.0.0', 8080, `b${i}`));
  }
  const agent = await cni.startAgent(node);
  const stateDir = fs.mkdtempSync(path.join(cni.dir, 'nat-'));
  /** The CLI run in the node (beside the agent), on the router's rules; `socket: ''` never asks the agent. */
  const cli = (args: string[], o: { socket?: string; from?: NetNs; ref?: string } = {}) => {
    const r = (o.from ?? node).spawnSync(
      process.execPath,
      [CLI, '--netns', o.ref ?? router.name!, '--state-dir', stateDir, ...args],
      {
        encoding: 'utf8',
        env: {
          ...process.env,
          TSNET_AGENT_SOCKET: o.socket ?? agent.socket,
          TSNET_AGENT_HELLO_MS: '10000',
          TSNET_VERBOSE: '1',
        },
        timeout: 60_000,
      },
    );
    return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
  const services = (ref = router.name!) => {
    const r = tsnet('--netns', ref, '--state-dir', stateDir, '-j', 'service', 'ls');
    if (r.status !== 0) throw new Error(`service ls: ${r.stderr}`);
    return Object.fromEntries(
      (JSON.parse(r.stdout) as { name: string; endpoints: { ip: string }[] }[]).map((s) => [
        s.name,
        s.endpoints.map((e) => e.ip),
      ]),
    );
  };
  const replies = async (vip: string) => (await request(router, 'http', vip, 80, { count: 6 })).replies;
  return { node, router, agent, cli, services, replies, stateDir };
}

/** Asserts the CLI succeeded and says who applied the change ("by the agent", or "here: WHY"). */
function applied(
  t: ExecutionContext,
  r: { status: number | null; stderr: string },
  by: 'agent' | 'here',
  what: string,
) {
  t.is(r.status, 0, `${what}: ${r.stderr}`);
  t.regex(r.stderr, by === 'agent' ? /\(by the agent\)$/m : /\(here: .+\)$/m, `${what}: ${r.stderr}`);
}

/**
 * How many lines of the agent's log match `re`, once `want` of them are there
 * or 15 s have passed: its log reaches this process through a pipe that the
 * CLI runs (spawnSync) keep this event loop from reading.
 */
async function logged(agent: AgentProcess, re: RegExp, want: number): Promise<number> {
  const count = () => (agent.log.match(new RegExp(re.source, 'g')) ?? []).length;
  // The caller asserts the count (with the log in its message): a timeout returns what there is.
  await eventually(() => count() >= want, {
    ms: 15_000,
    what: `${want} lines matching ${re} in the agent's log`,
  }).catch(orElse(false));
  return count();
}
const SERVED = / nat: served .*: ok in /;

test('the CLI hands NAT changes to the running agent: add, set-endpoints, del, with traffic after each; a change made without the agent is not undone by it', async (t) => {
  const { agent, router, cli, services, replies } = await setup();
  applied(t, cli(['service', 'add', 'web', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.11:8080']), 'agent', 'add');
  t.deepEqual(await replies('10.96.0.10'), { b1: 6 });
  applied(t, cli(['service', 'set-endpoints', 'web', '--endpoint', '10.82.0.12:8080']), 'agent', 'set-endpoints');
  t.deepEqual(await replies('10.96.0.10'), { b2: 6 });

  // Another tsnet (no agent) changes the state under the agent, which holds it in memory.
  applied(
    t,
    cli(['service', 'set-endpoints', 'web', '--endpoint', '10.82.0.11:8080'], { socket: '' }),
    'here',
    'set-endpoints without the agent',
  );
  applied(
    t,
    cli(['service', 'add', 'api', '--vip', '10.96.0.11:80', '--endpoint', '10.82.0.12:8080']),
    'agent',
    'add api',
  );
  t.deepEqual(
    services(),
    { web: ['10.82.0.11'], api: ['10.82.0.12'] },
    'the agent read the change it did not make before applying its own',
  );
  t.deepEqual(await replies('10.96.0.10'), { b1: 6 });
  t.deepEqual(await replies('10.96.0.11'), { b2: 6 });

  applied(t, cli(['service', 'del', 'web']), 'agent', 'del');
  t.deepEqual(services(), { api: ['10.82.0.12'] });
  t.is(
    (await request(router, 'http', '10.96.0.10', 80, { count: 1, timeoutMs: 500 })).ok,
    0,
    'the deleted VIP answers no more',
  );
  t.is(await logged(agent, SERVED, 4), 4, `the agent's log names the four changes it served:\n${agent.log}`);
});

test('a change the agent refuses reads exactly as without the agent: same one-line error, same exit status, nothing changed; requests no CLI sends are refused unread', async (t) => {
  const { agent, node, cli, services, stateDir } = await setup();
  applied(t, cli(['service', 'add', 'web', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.11:8080']), 'agent', 'add');
  const bad = [
    ['service', 'set-endpoints', 'nosuch', '--endpoint', '10.82.0.11:8080'],
    ['service', 'add', 'web', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.12:8080'],
    ['service', 'add', 'other', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.12:8080'],
  ];
  for (const args of bad) {
    const via = cli(args);
    const here = cli(args, { socket: '' });
    t.is(via.status, 1, `${args.join(' ')}: ${via.stderr}`);
    t.deepEqual([via.status, via.stderr], [here.status, here.stderr], args.join(' '));
    t.is(via.stderr.trim().split('\n').length, 1, `one line: ${via.stderr}`);
  }
  t.deepEqual(services(), { web: ['10.82.0.11'] });
  t.is(
    await logged(
      agent,
      / nat: served .*: (no service named|service web already exists|services web and other both claim)/,
      3,
    ),
    3,
    agent.log,
  );

  // What no CLI sends is refused before anything is done: the whole set, a thousand and one changes, an unknown op.
  const src = path.join(__dirname, '..', '..', 'src');
  const raw = (changes: unknown[]) => {
    const script = `const { natChangeThroughAgent } = require(${JSON.stringify(path.join(src, 'agent', 'client.js'))});
      const { nsIdentity } = require(${JSON.stringify(path.join(src, 'netns', 'ref.js'))});
      const req = { netns: nsIdentity('/proc/self/ns/net'), target: { stateDir: ${JSON.stringify(stateDir)} }, changes: JSON.parse(process.argv[2]) };
      natChangeThroughAgent(process.argv[1], req).then((r) => process.stdout.write(JSON.stringify(r)), (e) => process.stdout.write(JSON.stringify({ error: e.message })));`;
    const r = node.spawnSync(process.execPath, ['-e', script, agent.socket, JSON.stringify(changes)], {
      encoding: 'utf8',
    });
    return JSON.parse(String(r.stdout) || 'null') as { served?: boolean; why?: string; error?: string } | null;
  };
  t.regex(raw([{ kind: 'replace-services', services: [] }])?.why ?? '', /replace-services is applied by the caller/);
  t.regex(
    raw(Array.from({ length: 1001 }, () => ({ kind: 'delete-service', name: 'web' })))?.why ?? '',
    /1001 changes in one request \(at most 1000\)/,
  );
  t.regex(raw([{ op: 'flush-everything' }])?.why ?? '', /unknown change "flush-everything"/);
  t.deepEqual(services(), { web: ['10.82.0.11'] }, 'nothing done');
  t.is(await logged(agent, SERVED, 1), 1);
});

test('a CLI no agent can serve applies the change itself: from another network namespace (refused), the whole set, with TSNET_AGENT_SOCKET empty, with the agent gone', async (t) => {
  const { agent, cli, services, replies } = await setup();
  // The test's own namespace is not the agent's: it says so before acting, and the CLI does the work.
  const other = cli(['service', 'add', 'web', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.11:8080'], {
    from: (await import('../../src/netns')).current(),
  });
  applied(t, other, 'here', 'from another namespace');
  t.regex(other.stderr, /here: .*network namespace/);
  t.is(await logged(agent, /refused a connection: .*network namespace/, 1), 1, agent.log);
  t.deepEqual(await replies('10.96.0.10'), { b1: 6 });

  // The whole set (`service apply`) is applied by the CLI even with the agent there (the agent would validate it again).
  const file = path.join(os.tmpdir(), `tsnet-agn-apply-${process.pid}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify([
      { name: 'web', vip: '10.96.0.10', port: 80, proto: 'tcp', endpoints: [{ ip: '10.82.0.11', port: 8080 }] },
    ]),
  );
  const whole = cli(['service', 'apply', '--file', file]);
  fs.rmSync(file);
  applied(t, whole, 'here', 'apply');
  t.regex(whole.stderr, /here: a change of the whole state is applied here/);

  const off = cli(['service', 'set-endpoints', 'web', '--endpoint', '10.82.0.12:8080'], { socket: '' });
  applied(t, off, 'here', 'TSNET_AGENT_SOCKET empty');
  t.regex(off.stderr, /here: no agent socket/);

  await agent.stop();
  const gone = cli(['service', 'add', 'api', '--vip', '10.96.0.11:80', '--endpoint', '10.82.0.12:8080']);
  applied(t, gone, 'here', 'agent stopped');
  t.regex(gone.stderr, /here: (no agent at .*agent\.sock|.*ECONNREFUSED)/);
  t.deepEqual(services(), { web: ['10.82.0.12'], api: ['10.82.0.12'] });
  t.deepEqual(await replies('10.96.0.11'), { b2: 6 });
  t.is(await logged(agent, SERVED, 0), 0, 'the agent served none of them');
});

/** The inodes of what the process `pid` holds open (an fd opened from /run/netns/NAME reads as that path, not as net:[INODE]: stat it). */
const heldInodes = (pid: number) =>
  fs.readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return fs.statSync(`/proc/${pid}/fd/${fd}`).ino;
    } catch {
      return -1;
    }
  });

test('the agent holds a namespace named by a NAT request only while the name still points at it: deleted, it is let go', async (t) => {
  const { agent, router, cli } = await setup();
  applied(t, cli(['service', 'add', 'web', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.11:8080']), 'agent', 'add');
  const ino = router.inode;
  t.true(heldInodes(agent.pid).includes(ino), 'the agent keeps the handle (its engine holds the state)');
  const r = run('ip', ['netns', 'del', router.name!]);
  t.is(r.status, 0, r.stderr);
  await eventually(() => !heldInodes(agent.pid).includes(ino), {
    ms: 10_000,
    every: 100,
    what: `the agent (pid ${agent.pid}) letting go of the deleted namespace (inode ${ino})`,
  });
  t.false(
    heldInodes(agent.pid).includes(ino),
    'after a resync pass (1 s here) the agent no longer holds the deleted namespace',
  );
});

test('an agent that dies after taking a change (SIGKILL while it waits for the state lock): the CLI applies the change itself, once', async (t) => {
  const { agent, router, node, services, replies, stateDir } = await setup();
  const lockFile = path.join(stateDir, 'netns', router.name!, 'nat.lock');
  fs.mkdirSync(path.dirname(lockFile), { recursive: true });
  const fd = fs.openSync(lockFile, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  t.true(native().tryLock(fd), 'the test holds the NAT state lock');
  const child = node.spawn(
    process.execPath,
    [
      CLI,
      '--netns',
      router.name!,
      '--state-dir',
      stateDir,
      'service',
      'add',
      'web',
      '--vip',
      '10.96.0.10:80',
      '--endpoint',
      '10.82.0.12:8080',
    ],
    {
      env: { ...process.env, TSNET_AGENT_SOCKET: agent.socket, TSNET_AGENT_HELLO_MS: '10000', TSNET_VERBOSE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  let running = true;
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      running = false;
      resolve(code);
    }),
  );
  let locked = true;
  const unlock = () => {
    if (locked) fs.closeSync(fd);
    locked = false;
  };
  try {
    // The agent took the request when it holds the lock file open, waiting for the lock.
    const waiting = () =>
      fs
        .readdirSync(`/proc/${agent.pid}/fd`)
        .some((f) => fs.readlinkSync(`/proc/${agent.pid}/fd/${f}`, { encoding: 'utf8' }) === lockFile);
    await eventually(waiting, { ms: 15_000, what: `the agent (pid ${agent.pid}) holding ${lockFile} open` });
    t.true(waiting(), 'the agent is waiting for the lock with the change in hand');
    await agent.stop('SIGKILL');
    unlock();
    t.is(await exited, 0, stderr);
    t.regex(stderr, /\(here: .* closed the connection without a reply\)$/m);
    t.deepEqual(services(), { web: ['10.82.0.12'] });
    t.deepEqual(await replies('10.96.0.10'), { b2: 6 });
  } finally {
    // Whatever failed above: the CLI child this test started is killed (by its pid) and the lock is let go.
    if (running) {
      process.kill(child.pid!, 'SIGKILL');
      await exited;
    }
    unlock();
  }
});

test('one namespace named two ways (by path, by name) is two desired states through the agent exactly as without it', async (t) => {
  const { router, cli, services } = await setup();
  const byPath = `/run/netns/${router.name!}`;
  applied(
    t,
    cli(['service', 'add', 'a', '--vip', '10.96.0.10:80', '--endpoint', '10.82.0.11:8080'], { ref: byPath }),
    'agent',
    'add a by path',
  );
  applied(
    t,
    cli(['service', 'add', 'b', '--vip', '10.96.0.11:80', '--endpoint', '10.82.0.12:8080']),
    'agent',
    'add b by name',
  );
  applied(
    t,
    cli(['service', 'add', 'c', '--vip', '10.96.0.12:80', '--endpoint', '10.82.0.12:8080'], {
      ref: byPath,
      socket: '',
    }),
    'here',
    'add c by path',
  );
  t.deepEqual(services(byPath), { a: ['10.82.0.11'], c: ['10.82.0.12'] }, 'by path: netns/inode-N');
  t.deepEqual(services(), { b: ['10.82.0.12'] }, 'by name: netns/NAME');
});

test('tsnet forward goes through the agent as service changes do: add, traffic, ls, rm; errors and output as without it', async (t) => {
  const { agent, router, cli } = await setup();
  const before = (await logged(agent, SERVED, 0)) ?? 0;
  const add = cli(['forward', '10.82.0.11', '3308', '8080', '--name', 'web']);
  applied(t, add, 'agent', 'forward add');
  t.regex(add.stdout, /^forward web: tcp port 3308 -> 10\.82\.0\.11:8080$/m);
  t.deepEqual(
    (await request(router, 'http', '10.82.0.1', 3308, { count: 4 })).replies,
    { b1: 4 },
    'through the forward',
  );
  // Retarget, then the same again: a no-op that never reaches the agent.
  applied(t, cli(['forward', '10.82.0.12', '3308', '8080', '--name', 'web']), 'agent', 'forward retarget');
  t.deepEqual((await request(router, 'http', '10.82.0.1', 3308, { count: 4 })).replies, { b2: 4 }, 'retargeted');
  const again = cli(['forward', '10.82.0.12', '3308', '8080', '--name', 'web']);
  t.is(again.status, 0, again.stderr);
  t.regex(again.stdout, /already in place/);
  const ls = cli(['-j', 'forward', 'ls'], {});
  const lsHere = cli(['-j', 'forward', 'ls'], { socket: '' });
  t.is(ls.stdout, lsHere.stdout, 'ls reads the same with and without the agent');
  t.deepEqual(
    (JSON.parse(ls.stdout) as { name: string; targetIp: string }[]).map((f) => [f.name, f.targetIp]),
    [['web', '10.82.0.12']],
  );
  // Errors: the same line and status with and without the agent, nothing changed.
  for (const bad of [
    ['forward', '10.82.0.11', '3308', '99999', '--name', 'web'],
    ['forward', '10.82.0.99', '3309', '8080', '--name', 'nobody'],
  ]) {
    const a = cli(bad);
    const b = cli(bad, { socket: '' });
    t.is(a.status, b.status, `${bad.join(' ')}: same status`);
    t.not(a.status, 0);
    t.is(
      a.stderr.replace(/^tsnet: synced.*\n/gm, ''),
      b.stderr.replace(/^tsnet: synced.*\n/gm, ''),
      `${bad.join(' ')}: same error`,
    );
  }
  applied(t, cli(['forward', 'rm', 'web']), 'agent', 'forward rm');
  t.is((await request(router, 'http', '10.82.0.1', 3308, { count: 1, timeoutMs: 500 })).ok, 0, 'the forward is gone');
  const rmAgain = cli(['forward', 'rm', 'web']);
  t.is(rmAgain.status, 0, 'rm twice: a no-op');
  t.is(JSON.parse(cli(['-j', 'forward', 'ls']).stdout).length, 0);
  t.is(
    await logged(agent, SERVED, before + 3),
    before + 3,
    `the agent served the three forward changes:\n${agent.log}`,
  );
});
