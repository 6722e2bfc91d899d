/**
 * The global options mean the same before the command word (as in ip(8)) and
 * after it (as in kubectl, podman, gh): every listing is run both ways and
 * must print the same, and each global option (-n/--netns, -j/--json,
 * --state-dir, --backend) is shown to take effect from either place,
 * `tsnet agent --state-dir DIR` included (a unit file written that way).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { AgentProcess } from '../harness/cni';
import { run, scratch, tsnet, type Run } from '../harness/fixtures';
import { eventually } from '../harness/eventually';

const { topo, tmp, cleanup } = scratch('glob');
test.after.always(cleanup);

let state = '';
const NODE = 'glob-node';
/** The namespaces test.before makes: the only rows of `netns ls` that are this listing test's own. */
const MINE = [NODE, 'glob-c1'];

test.before(async () => {
  await topo.ns('node');
  await topo.ns('c1');
  state = tmp('glob');
  const ok = (...args: string[]) => {
    const r = tsnet('-n', NODE, '--state-dir', state, ...args);
    if (r.status !== 0) throw new Error(`tsnet ${args.join(' ')}: ${r.stderr}`);
  };
  ok('bridge', 'add', 'br0', '--address', '10.97.0.1/24');
  ok('attach', 'glob-c1', '--bridge', 'br0', '--address', '10.97.0.2/24');
  ok('service', 'add', 'web', '--vip', '10.96.9.1:80', '--endpoint', '10.97.0.2:8080');
  ok('nat', 'masquerade', 'add', '--source', '10.97.0.0/24', '--out-not', 'br0');
  ok('forward', '10.97.0.2', '13308', '13309', '--no-check', '--name', 'db');
  // The links' IPv6 link-local addresses leave DAD (tentative) a moment later: two listings must not straddle that.
  await eventually(() => !run('ip', ['-n', NODE, 'addr', 'show', 'tentative']).stdout.trim(), {
    ms: 10_000,
    every: 100,
    what: `duplicate address detection ending in ${NODE} (no tentative address)`,
  });
});

/** JSON printed by a run, with what changes between two runs (timings, counters) left out. */
function parsed(r: Run): unknown {
  if (r.stdout === '') throw new Error(`no output: ${r.stderr}`);
  return JSON.parse(r.stdout, (k, v: unknown) => (k === 'ms' ? undefined : v));
}

/**
 * What of a listing is this test's own. `netns ls` lists the whole sandbox's /run/netns, where other test files
 * (and this file's agent test) add and delete namespaces while the three runs are made: only the rows of the
 * namespaces test.before made are compared.
 */
function own(cmd: string[], listing: unknown): unknown {
  if (cmd.join(' ') !== 'netns ls') return listing;
  return (listing as { name: string }[]).filter((row) => MINE.includes(row.name));
}

const LISTINGS: string[][] = [
  ['netns', 'ls'],
  ['link', 'ls'],
  ['bridge', 'ls'],
  ['veth', 'ls'],
  ['addr', 'ls'],
  ['route', 'ls'],
  ['service', 'ls'],
  ['nat', 'ls'],
  ['forward', 'ls'],
  ['trace', '10.96.9.1:80'],
  ['doctor'],
  ['topology'],
  ['sync'],
];

for (const cmd of LISTINGS) {
  test(`tsnet ${cmd.join(' ')}: the same with the global options before the command and after it`, (t) => {
    const before = tsnet('-n', NODE, '--state-dir', state, '--backend', 'netlink', '-j', ...cmd);
    const after = tsnet(...cmd, '--json', '--netns', NODE, '--backend', 'netlink', '--state-dir', state);
    const mixed = tsnet('-j', ...cmd, `--netns=${NODE}`, `--state-dir=${state}`);
    for (const r of [before, after, mixed])
      t.true(r.status === 0 || (cmd[0] === 'doctor' && r.status === 1), `exit ${r.status}: ${r.stderr}`);
    t.deepEqual(own(cmd, parsed(after)), own(cmd, parsed(before)));
    t.deepEqual(own(cmd, parsed(mixed)), own(cmd, parsed(before)));
    if (cmd.join(' ') === 'netns ls')
      for (const r of [before, after, mixed])
        t.deepEqual(
          (own(cmd, parsed(r)) as { name: string; inode?: number }[]).map((x) => [x.name, typeof x.inode]).sort(),
          MINE.map((name) => [name, 'number']).sort(),
          "this test's namespaces are listed, each with its inode",
        );
    t.notThrows(() => JSON.parse(before.stdout), 'JSON, not a table');
  });
}

test('-n/--netns after the command acts in that namespace (the node has br0, this namespace does not)', (t) => {
  const there = JSON.parse(tsnet('bridge', 'ls', '-n', NODE, '-j').stdout) as { name: string }[];
  t.deepEqual(
    there.map((b) => b.name),
    ['br0'],
  );
  t.deepEqual(JSON.parse(tsnet('bridge', 'ls', '-j').stdout), []);
  t.regex(tsnet('link', 'ls', '-n', NODE).stdout, /^INDEX\s+NAME/, 'without -j: a table');
});

test('--state-dir after the command reads and writes that directory', (t) => {
  const other = tmp('glob-other');
  t.is(tsnet('service', 'add', 'solo', '--vip', '10.96.9.9:80', '-n', NODE, '--state-dir', other).status, 0);
  const ls = (dir: string) =>
    (JSON.parse(tsnet('service', 'ls', '-j', '-n', NODE, '--state-dir', dir).stdout) as { name: string }[]).map(
      (s) => s.name,
    );
  t.deepEqual(ls(other), ['solo']);
  t.deepEqual(ls(state), ['web']);
  t.true(fs.existsSync(path.join(other, 'netns', NODE, 'nat.json')));
  t.is(tsnet('service', 'del', 'solo', '-n', NODE, '--state-dir', other).status, 0);
});

test('--backend after the command picks the backend `rules` renders for', (t) => {
  const rules = (...args: string[]) => {
    const r = tsnet(...args);
    t.is(r.status, 0, r.stderr);
    return r.stdout;
  };
  const iptBefore = rules('-n', NODE, '--state-dir', state, '--backend', 'iptables', 'rules');
  const iptAfter = rules('rules', '-n', NODE, '--state-dir', state, '--backend', 'iptables');
  const nftAfter = rules('rules', '--backend', 'nft', '-n', NODE, '--state-dir', state);
  t.regex(iptAfter, /^\*nat$/m);
  t.is(iptAfter, iptBefore);
  t.regex(nftAfter, /table ip tsnet/);
  t.notRegex(nftAfter, /^\*nat$/m);
  const bad = tsnet('rules', '--backend', 'pf');
  t.not(bad.status, 0);
  t.regex(bad.stderr, /Allowed choices are auto, netlink, nft, iptables/);
});

test("a subcommand keeps its own arguments: what follows `netns exec NS CMD` is the program's (-j, -n are ip's here)", (t) => {
  const r = tsnet('netns', 'exec', NODE, 'ip', '-j', '-n', NODE, 'link', 'show', 'br0');
  t.is(r.status, 0, r.stderr);
  t.is((JSON.parse(r.stdout) as { ifname: string }[])[0]!.ifname, 'br0');
  // A value of a subcommand's option that looks like a global is that option's value.
  const v = tsnet(
    '-n',
    NODE,
    '--state-dir',
    state,
    'forward',
    '10.97.0.2',
    '13400',
    '13401',
    '--no-check',
    '--name',
    '-j',
  );
  t.not(v.status, 0);
  t.regex(v.stderr, /invalid forward name "-j"/);
});

test('a global option without its value is an error that names it, wherever it is', (t) => {
  for (const args of [['link', 'ls', '-n'], ['--state-dir']]) {
    const r = tsnet(...args);
    t.not(r.status, 0);
    t.regex(r.stderr, /option '(-n, --netns <ns>|--state-dir <dir>)' argument missing/);
  }
});

test('tsnet agent --state-dir DIR (the global after the command, as unit files have it) starts and uses DIR', async (t) => {
  const node = await topo.ns('agent');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-glob-agent-'));
  fs.chmodSync(dir, 0o700);
  const stateDir = path.join(dir, 'state');
  const agent = new AgentProcess(node, path.join(dir, 'agent.sock'), ['--state-dir', stateDir, '--metrics', '']);
  try {
    await agent.ready;
    t.regex(agent.log, new RegExp(`\\(state ${stateDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')},`));
  } finally {
    t.is(await agent.stop(), 0);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
