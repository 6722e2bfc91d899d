/**
 * CLI start-up, side by side in one run: `node -e 0` (the floor: Node
 * itself), `tsnet --version`, `tsnet link ls` (one netlink dump; also as a
 * first run, before the command's code cache exists), `tsnet -j service ls`
 * of an empty state, and one endpoint change (`tsnet service set-endpoints`
 * in a 10-service state) done by the CLI itself and handed to a running
 * agent; and where link ls's time goes: loading commander alone, and the
 * same dump and table through the library with no argument parser. Runs are
 * interleaved (one of each per round), so a busy machine slows all of them
 * alike; medians and ratios to the floor are printed. Run with `npm run
 * bench:startup` (inside the sandbox: `link ls` lists the sandbox's links).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as netns from '../src/netns';
import { NatEngine } from '../src/nat/engine';
import { assertSandbox } from '../test/harness/fixtures';
import { withAgent } from './agent';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
/** The CLI as installed (`bin` in package.json). */
const CLI = path.join(__dirname, '..', 'src', 'cli', 'main.js');
const LINK_CACHE = path.join(__dirname, '..', 'bundle', 'cache', 'link.v8');

/** `tsnet link ls`'s work through the library, no argument parser: the modules, the dump, the table. */
const LINK_LS_LIBRARY = `
const src = ${JSON.stringify(path.join(__dirname, '..', 'src'))};
const netns = require(src + '/netns');
const link = require(src + '/link');
const { table } = require(src + '/format/table');
link.list(netns.current()).then((links) => {
  process.stdout.write(table(links.map((l) => ({ index: l.index, name: l.name, kind: l.kind ?? '-', mtu: l.mtu })), ['index', 'name', 'kind', 'mtu']) + '\\n');
  process.exit(0);
});`;

interface Case {
  name: string;
  /** The node arguments of round `r`. */
  args: (r: number) => string[];
  env?: NodeJS.ProcessEnv;
  /** Run before each timed run, untimed. */
  before?: () => void;
}

function once(c: Case, r: number): number {
  c.before?.();
  const args = c.args(r);
  const t0 = process.hrtime.bigint();
  const out = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, ...c.env } });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (out.status !== 0) throw new Error(`node ${args.join(' ')}: exit ${out.status}: ${out.stderr}`);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

async function main(): Promise<void> {
  assertSandbox();
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-startup-'));
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-startup-'));
  const services = Array.from({ length: 10 }, (_, i) => ({
    name: `svc${i}`,
    vip: `10.96.7.${i + 1}`,
    port: 80,
    proto: 'tcp' as const,
    endpoints: [{ ip: `10.88.7.${i + 1}`, port: 8080, weight: 1 }],
  }));
  await new NatEngine({ ns: netns.current(), stateDir: state }).change([{ kind: 'replace-services', services }]);
  // One endpoint change: each round moves svc3 to another endpoint, so every run changes a rule.
  const change = (r: number) => [
    CLI,
    '--state-dir',
    state,
    'service',
    'set-endpoints',
    'svc3',
    '--endpoint',
    `10.88.8.${r % 250}:8080`,
  ];

  const cases: Case[] = [
    { name: 'node -e 0', args: () => ['-e', '0'] },
    { name: 'tsnet --version', args: () => [CLI, '--version'] },
    { name: 'tsnet link ls', args: () => [CLI, 'link', 'ls'] },
    {
      name: 'tsnet link ls (first run: no code cache)',
      args: () => [CLI, 'link', 'ls'],
      before: () => fs.rmSync(LINK_CACHE, { force: true }),
    },
    { name: 'tsnet -j service ls (empty)', args: () => [CLI, '--state-dir', empty, '--json', 'service', 'ls'] },
    { name: 'one endpoint change, no agent', args: change, env: { TSNET_AGENT_SOCKET: '' } },
    // Where link ls's time goes: the CLI's parser alone, and the same dump and table without it.
    {
      name: '  commander alone (require)',
      args: () => ['-e', `require(${JSON.stringify(require.resolve('commander'))})`],
    },
    { name: '  link ls without the CLI layer', args: () => ['-e', LINK_LS_LIBRARY] },
  ];
  const agentCase: Case = { name: 'one endpoint change, through the agent', args: (r) => change(r + 1000) };
  const times = [...cases, agentCase].map(() => [] as number[]);
  const { served } = await withAgent(state, (socket) => {
    agentCase.env = { TSNET_AGENT_SOCKET: socket };
    const all = [...cases, agentCase];
    all.forEach((c) => once(c, 0)); // warm the page cache; the agent loads the state
    for (let r = 1; r <= ROUNDS; r++) all.forEach((c, i) => times[i]!.push(once(c, r)));
  });
  const floor = median(times[0]!);
  console.log(`CLI start-up, ${ROUNDS} interleaved rounds, median (Node ${process.version}, ${os.cpus().length} CPUs)`);
  [...cases, agentCase].forEach((c, i) => {
    const m = median(times[i]!);
    console.log(
      `${c.name.padEnd(42)} ${m.toFixed(1).padStart(7)} ms  ${(m / floor).toFixed(2)}x node -e 0  (node + ${(m - floor).toFixed(0)} ms)`,
    );
  });
  console.log(`(the agent served ${served} of ${ROUNDS + 1} changes)`);
  fs.rmSync(empty, { recursive: true, force: true });
  fs.rmSync(state, { recursive: true, force: true });
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    console.error(err);
    process.exit(1);
  },
);
