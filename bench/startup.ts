/**
 * CLI start-up, side by side in one run: `node -e 0` (the floor: Node
 * itself), `tsnet --version`, `tsnet link ls` (one netlink dump) and `tsnet
 * -j service ls` of an empty state, and where link ls's time goes: loading
 * commander alone, and the same dump and table through the library with no
 * argument parser. Runs are interleaved (one of each per
 * round), so a busy machine slows all of them alike; medians and ratios to
 * the floor are printed. Run with `npm run bench:startup` (inside the
 * sandbox: `link ls` lists the sandbox's links).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { assertSandbox } from '../test/harness/fixtures';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
/** The CLI as installed (`bin` in package.json). */
const CLI = path.join(__dirname, '..', 'src', 'cli', 'main.js');

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

function once(args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, { encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`node ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function main(): void {
  assertSandbox();
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-startup-'));
  const cases: [string, string[]][] = [
    ['node -e 0', ['-e', '0']],
    ['tsnet --version', [CLI, '--version']],
    ['tsnet link ls', [CLI, 'link', 'ls']],
    ['tsnet -j service ls (empty)', [CLI, '--state-dir', state, '--json', 'service', 'ls']],
    // Where link ls's time goes: the CLI's parser alone, and the same dump and table without it.
    ['  commander alone (require)', ['-e', `require(${JSON.stringify(require.resolve('commander'))})`]],
    ['  link ls without the CLI layer', ['-e', LINK_LS_LIBRARY]],
  ];
  const times = cases.map(() => [] as number[]);
  for (const [, args] of cases) once(args); // warm the page cache
  for (let r = 0; r < ROUNDS; r++) cases.forEach(([, args], i) => times[i]!.push(once(args)));
  const floor = median(times[0]!);
  console.log(`CLI start-up, ${ROUNDS} interleaved rounds, median (Node ${process.version}, ${os.cpus().length} CPUs)`);
  cases.forEach(([name], i) => {
    const m = median(times[i]!);
    console.log(`${name.padEnd(30)} ${m.toFixed(1).padStart(7)} ms  ${(m / floor).toFixed(2)}x node -e 0`);
  });
  fs.rmSync(state, { recursive: true, force: true });
}

main();
