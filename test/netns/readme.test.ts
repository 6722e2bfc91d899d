/**
 * The README cannot drift from tsnet. Every fenced block of it that holds
 * commands is one of:
 *   ```sh       run line by line by bash, each line must succeed;
 *   ```console  `$ ` / `# ` lines run, their output compared with the lines
 *               that follow (numbers, veth names and pids aside);
 *   ```text     usage: every `tsnet ...` line names commands and options
 *               that exist (checked against the command table).
 * An sh or console block is preceded by `<!-- test: NAME -->`, NAME one of
 * SCENARIOS below: what the block needs prepared (a topology, files, the
 * machine's paths replaced by the sandbox's). A block no scenario runs, a
 * scenario with no block, or a block of commands left untagged fails. Each
 * scenario runs in a sandbox of its own (`unshare --net --mount`, its own
 * /run/netns), with `tsnet` on the PATH as `npm link` puts it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/program';
import { builtScript } from '../../src/native';
import { CLI, assertSandbox, run } from '../harness/fixtures';

const ROOT = path.join(__dirname, '..', '..', '..');
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const PEER = builtScript('demo/peer.js');

interface Block {
  lang: string;
  /** 1-based line of the block's first content line. */
  line: number;
  lines: string[];
  scenario?: string;
}

function blocks(): Block[] {
  const out: Block[] = [];
  const all = README.split('\n');
  for (let i = 0; i < all.length; i++) {
    const m = /^```(\w*)\s*$/.exec(all[i]!);
    if (!m) continue;
    const start = i + 1;
    let j = start;
    while (j < all.length && !/^```\s*$/.test(all[j]!)) j++;
    const tag = /^<!-- test: ([\w-]+) -->$/.exec(all[i - 1] ?? '');
    out.push({ lang: m[1]!, line: start + 1, lines: all.slice(start, j), ...(tag ? { scenario: tag[1] } : {}) });
    i = j;
  }
  return out;
}

interface Scenario {
  /** bash run first, in the same sandbox (not part of the README). */
  setup?: string;
  /** Files written in the working directory first. */
  files?: Record<string, string>;
  /** The machine's paths in the README's lines, and what the sandbox uses instead (DIR: the scenario's directory). */
  paths?: Record<string, string>;
  /**
   * bash run right after the block's command number N (0-based), in the same sandbox (not part of the README):
   * what a check needs to see while the state that line made is in place. Its output goes to DIR/.after.N.
   */
  after?: Record<number, string>;
  /** Checks over each line's output, after the block ran. */
  check?: (t: ExecutionContext, out: string[], dir: string) => void;
}

/**
 * A server inside `ns` (the demo's peer), in the background; returns once it listens. Its stdin is the
 * script's fd 3 (a FIFO held open read-write): the peer exits when its stdin closes, i.e. with the script.
 */
const SERVE = (ns: string, proto: 'tcp' | 'http', ip: string, port: number, name: string) =>
  `[ -p .hold ] || { mkfifo .hold && exec 3<>.hold; }\n` +
  `ip netns exec ${ns} ${process.execPath} ${PEER} serve ${proto} ${ip} ${port} ${name} > .serve-${ns}-${port} <&3 &\n` +
  `for i in $(seq 100); do [ -s .serve-${ns}-${port} ] && break; sleep 0.05; done`;

/** COUNT TCP requests to IP:PORT from the sandbox itself (the demo's peer): one JSON line, {"ok", "replies": {NAME: N}, ...}. */
const REQUEST = (ip: string, port: number, count: number) =>
  `${process.execPath} ${PEER} request tcp ${ip} ${port} ${count} 2000 1`;

/** The JSON lines a scenario's `after` hook printed (REQUEST's results). */
const afterResults = (dir: string, n: number) =>
  fs
    .readFileSync(path.join(dir, `.after.${n}`), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { ok: number; replies: Record<string, number>; errors: string[] });

const SCENARIOS: Record<string, Scenario> = {
  'cli-session': {
    check: (t, out) => {
      t.regex(out[5]!, /1 packets received/, 'ping through the bridge');
      t.deepEqual(JSON.parse(out[7]!), JSON.parse(out[6]!), '-j before and --json after print the same');
      t.regex(out[8]!, /eth0\s+10\.88\.0\.2\/16/);
      t.regex(out[9]!, /default\s+10\.88\.0\.1\s+eth0/);
      t.regex(out[10]!, /^vt\w+\s+up\s+br0\s+eth0\s+\d+\s+c1$/m);
      t.is((JSON.parse(out[11]!) as { ifname: string }[])[0]!.ifname, 'eth0', "ip's own -j");
    },
  },
  'veth-ls': {
    setup: [
      'tsnet netns add node && tsnet netns add c1',
      'tsnet -n node bridge add br0 --address 10.89.0.1/24',
      'tsnet -n node attach c1 --bridge br0 --address 10.89.0.2/24',
      'unshare --net sleep 60 &',
      // $! is used once it is inside its own namespace (unshare has run), not after a guessed pause; 5 s at most.
      'own=$(readlink /proc/$$/ns/net)',
      'inside() { n=$(readlink /proc/$1/ns/net 2>/dev/null) && [ "$n" != "$own" ]; }',
      'for i in $(seq 250); do inside $! && break; sleep 0.02; done',
      '{ inside $! || { echo "pid $! is not in a network namespace of its own after 5 s"; false; }; } &&',
      '  tsnet -n node attach $! --bridge br0 --address 10.89.0.3/24',
    ].join('\n'),
  },
  completion: {
    check: (t, _out, dir) => t.regex(fs.readFileSync(path.join(dir, '_tsnet'), 'utf8'), /^#compdef tsnet/),
  },
  'nat-session': {
    files: {
      'cli-shape.json':
        '[{"name": "web", "vip": "10.96.0.10:80", "endpoints": ["10.88.0.3:8080@3", "10.88.0.5:8080"]}]\n',
    },
    check: (t, out, dir) => {
      t.regex(out[2]!, /^web\s+10\.96\.0\.10:80\s+tcp\s+0\s+10\.88\.0\.3:8080=0,10\.88\.0\.4:8080=0\s+30/m);
      t.is((JSON.parse(fs.readFileSync(path.join(dir, 'services.json'), 'utf8')) as unknown[]).length, 1);
      t.deepEqual(JSON.parse(out[7]!), [{ kind: 'masquerade', source: '10.88.0.0/16', outNot: 'br0' }]);
      t.regex(out[8]!, /^# iptables(-nft|-legacy)?-restore -w \d+ --noflush\n\*nat\n/);
    },
  },
  forward: {
    // `mysql` resolves (through the sandbox's own /etc/hosts) to a namespace serving on 3309.
    setup: [
      'tsnet netns add db',
      'tsnet veth add vdb eth0 --peer-netns db --address 10.77.0.1/24 --peer-address 10.77.0.2/24',
      // Whatever /etc/hosts the sandbox was made with (another test's copy, too) is unmounted first.
      'while umount /etc/hosts 2>/dev/null; do :; done',
      'echo "10.77.0.2 mysql" > hosts && mount --bind hosts /etc/hosts',
      'getent hosts mysql | grep -q "^10.77.0.2 "',
      SERVE('db', 'tcp', '10.77.0.2', 3309, 'mysql'),
    ].join('\n'),
    // Real connections to this host's port 3308: once `tsnet forward mysql 3308 3309` ran (to a local address and
    // to 127.0.0.1), and once `forward rm` ran.
    after: {
      1: `${REQUEST('10.77.0.1', 3308, 3)}\n${REQUEST('127.0.0.1', 3308, 3)}`,
      3: REQUEST('10.77.0.1', 3308, 1),
    },
    check: (t, out, dir) => {
      t.regex(out[0]!, /^# sysctl -w net\.ipv4\.ip_forward=1$/m);
      t.regex(out[0]!, /th dport 3308 dnat to 10\.77\.0\.2:3309 comment "tsnet forward mysql"/);
      t.is(out[1], 'forward mysql: tcp port 3308 -> 10.77.0.2:3309\n');
      t.regex(out[2]!, /^mysql\s+tcp\s+\*:3308\s+mysql \(10\.77\.0\.2\):3309\s+auto$/m);
      const through = afterResults(dir, 1);
      t.is(through.length, 2);
      for (const [i, r] of through.entries())
        t.deepEqual(
          r.replies,
          { mysql: 3 },
          `requests to ${i ? '127.0.0.1' : '10.77.0.1'}:3308 reach mysql:3309 through the forward: ${r.errors.join('; ')}`,
        );
      t.is(afterResults(dir, 3)[0]!.ok, 0, 'after `forward rm mysql`, port 3308 leads nowhere');
    },
  },
  'cni-install': {
    paths: { '/var/lib/tsnet': 'DIR/state', '/opt/cni/bin': 'DIR/bin', '/etc/cni/net.d': 'DIR/net.d' },
    check: (t, _out, dir) => {
      t.true(fs.existsSync(path.join(dir, 'bin', 'tsnet-bridge')));
      t.regex(
        fs.readFileSync(path.join(dir, 'bin', 'tsnet-cni.conf'), 'utf8'),
        new RegExp(`^state_dir=${dir}/state$`, 'm'),
      );
      t.true(fs.existsSync(path.join(dir, 'net.d', '10-tsnet.conflist')));
    },
  },
  agent: {
    paths: { '/var/lib/tsnet': 'DIR/state', '/run/tsnet/agent.sock': 'DIR/run/agent.sock' },
    check: (t, out) => t.is(out[1], 'tsnet_cni_requests_in_flight 0\n'),
  },
  'demo-trace': { setup: demoSetup() },
  'demo-doctor': { setup: demoSetup() },
};

/** The demo's network as `tsnet demo` has it when it traces and runs the doctor: 40 connections to the service so far, the forward in place. */
function demoSetup(): string {
  return [
    'tsnet bridge add tsnet0 --address 10.88.0.1/16',
    'for c in 1 2; do tsnet netns add demo-c$c && tsnet attach demo-c$c --bridge tsnet0 --address 10.88.0.$((c + 1))/16 --hairpin; done',
    SERVE('demo-c1', 'tcp', '10.88.0.2', 8080, 'c1'),
    SERVE('demo-c2', 'tcp', '10.88.0.3', 8080, 'c2'),
    'tsnet route add 10.96.0.0/16 --dev tsnet0',
    'tsnet service add demo/web --vip 10.96.0.10:80 --endpoint 10.88.0.2:8080 --endpoint 10.88.0.3:8080',
    `${process.execPath} ${PEER} request tcp 10.96.0.10 80 40 2000 5`,
    'tsnet forward 10.88.0.3 3308 8080 --name demo-db',
  ].join('\n');
}

/** A command line of a block: its README line number and text (the prompt of a console line taken off). */
interface Line {
  n: number;
  text: string;
  /** console: the output the README shows for it. */
  expect?: string[];
}

function commands(b: Block): Line[] {
  const out: Line[] = [];
  b.lines.forEach((text, i) => {
    if (b.lang === 'sh') {
      if (text.trim() && !text.trim().startsWith('#')) out.push({ n: b.line + i, text });
    } else if (/^[$#] /.test(text)) out.push({ n: b.line + i, text: text.slice(2), expect: [] });
    else out.at(-1)?.expect?.push(text);
  });
  return out;
}

/** What may differ between two runs of the same commands: counts, veth names, pids, ifindexes. */
const normalize = (s: string) =>
  s
    .replace(/\bvt[0-9a-f]{11}\b/g, 'VETH')
    .replace(/\d+/g, 'N')
    .replace(/ +/g, ' ')
    .trimEnd();

/** Runs a block's lines in a sandbox of its own; the output of each, and the README line that failed, if one did. */
function runBlock(b: Block, s: Scenario): { out: string[]; failed?: string; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-readme-${b.scenario}-`));
  fs.mkdirSync(path.join(dir, 'run'), { mode: 0o700 });
  const bin = path.join(dir, '.bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'tsnet'), `#!/bin/sh\nexec ${process.execPath} ${CLI} "$@"\n`, { mode: 0o755 });
  for (const [f, text] of Object.entries(s.files ?? {})) fs.writeFileSync(path.join(dir, f), text);
  const lines = commands(b);
  const local = (text: string) =>
    Object.entries(s.paths ?? {}).reduce((x, [from, to]) => x.split(from).join(to.replace('DIR', dir)), text);
  const script = [
    'set -o pipefail',
    `export PATH=${bin}:/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin TSNET_STATE_DIR=${dir}/state TSNET_AGENT_SOCKET=`,
    `cd ${dir}`,
    // What the block started in the background is stopped at the end, by its pid.
    "trap 'for p in $(jobs -p); do kill $p 2>/dev/null; done; wait' EXIT",
    s.setup ? `{\n${s.setup}\n} > .setup.log 2>&1 || { echo "setup failed: $(tail -n 3 .setup.log)"; exit 99; }` : '',
    ...lines.map(
      (l, i) =>
        (l.expect
          ? `{ ${local(l.text)}\n} > .out.${i} 2>&1`
          : `{ ${local(l.text)}\n} > .out.${i} 2>&1 || { echo "README line ${l.n} failed (exit $?): ${l.text.replace(/[`"$\\]/g, '\\$&')}"; cat .out.${i}; exit 1; }`) +
        (s.after?.[i] ? `\n{\n${s.after[i]}\n} > .after.${i} 2>&1` : ''),
    ),
    'exit 0', // a console line's own status (doctor's 1 for a problem found) is its output's business
  ].join('\n');
  fs.writeFileSync(path.join(dir, '.script.sh'), script);
  const r = run(
    'unshare',
    [
      '--net',
      '--mount',
      '--propagation',
      'private',
      '--',
      process.execPath,
      builtScript('sandbox/inner.js'),
      'bash',
      path.join(dir, '.script.sh'),
    ],
    {
      timeoutMs: 90_000,
    },
  );
  const out = lines.map((_, i) => {
    try {
      return fs.readFileSync(path.join(dir, `.out.${i}`), 'utf8');
    } catch {
      return '';
    }
  });
  return { out, dir, ...(r.status !== 0 ? { failed: `exit ${r.status}: ${r.stdout}${r.stderr}` } : {}) };
}

const all = blocks();

for (const b of all.filter((x) => x.scenario)) {
  const s = SCENARIOS[b.scenario!];
  test(`README ${b.lang} block "${b.scenario}" (line ${b.line}) runs`, (t) => {
    assertSandbox();
    if (!s && b.scenario !== 'quick-start')
      return t.fail(`no scenario "${b.scenario}" in ${path.basename(__filename)}: this block is run by no test`);
    if (b.scenario === 'quick-start') return quickStart(t, b);
    const r = runBlock(b, s!);
    try {
      t.is(r.failed, undefined);
      if (r.failed) return;
      commands(b).forEach((l, i) => {
        if (l.expect)
          t.deepEqual(
            r.out[i]!.trimEnd().split('\n').map(normalize),
            l.expect.map(normalize),
            `README line ${l.n}: ${l.text}`,
          );
      });
      s!.check?.(t, r.out, r.dir);
    } finally {
      fs.rmSync(r.dir, { recursive: true, force: true });
    }
  });
}

test('every README block with commands is run or checked by a test, and every scenario has its block', (t) => {
  const untagged = all
    .filter((b) => ['sh', 'console', 'shell', 'bash'].includes(b.lang) && !b.scenario)
    .map((b) => `${b.lang} block at line ${b.line}`);
  t.deepEqual(untagged, [], 'precede each with <!-- test: NAME --> and give NAME a scenario');
  const bare = all
    .filter((b) => b.lang === '' && b.lines.some((l) => /^(tsnet|[$#]) /.test(l)))
    .map((b) => `untagged block at line ${b.line}`);
  t.deepEqual(bare, [], 'a block of commands is sh, console (with prompts) or text (usage)');
  const used = new Set(all.map((b) => b.scenario));
  t.deepEqual(
    Object.keys(SCENARIOS).filter((k) => !used.has(k)),
    [],
    'scenarios whose README block is gone',
  );
});

/** The quick start is what CI runs: the demo (run here), `npm ci`, the packages, `npm test`. */
function quickStart(t: ExecutionContext, b: Block): void {
  const [demoLine, testLine] = commands(b);
  const ci = fs.readFileSync(path.join(ROOT, '.ci', 'run'), 'utf8');
  const scripts = (
    JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  ).scripts;
  t.regex(demoLine!.text, /^npm ci && npm run demo\b/);
  t.regex(ci, /^npm ci\b/m, '.ci/run installs with npm ci');
  t.is(scripts.demo, 'npm run build && node dist/src/cli/main.js demo');
  const demo = run(process.execPath, [CLI, 'demo'], { timeoutMs: 120_000, env: { TSNET_SANDBOX: '' } });
  t.is(demo.status, 0, `README line ${demoLine!.n}: the demo: ${demo.stdout.slice(-500)}${demo.stderr}`);
  const m = /^apt-get install -y ([\w .-]+?) && npm test\b/.exec(testLine!.text);
  t.truthy(m, `README line ${testLine!.n}: apt-get install -y PACKAGES && npm test`);
  const pkgs = /^pkgs=\(([^)]*)\)/m.exec(ci)![1]!.split(/\s+/);
  for (const p of m![1]!.split(' '))
    t.true(pkgs.includes(p), `${p}: in README's install line, not installed by .ci/run`);
  for (const p of pkgs.filter((x) => !['util-linux', 'gcc', 'g++', 'make', 'python3'].includes(x)))
    t.true(
      m![1]!.split(' ').includes(p),
      `${p}: installed by .ci/run for the tests, missing from the README's install line`,
    );
  t.regex(ci, /^npm test$/m, ".ci/run runs the README's test command");
}

test('every `tsnet ...` usage line in a text block names commands and options that exist', async (t) => {
  const { program } = await buildProgram();
  const globals = new Set(program.options.flatMap((o) => [o.long, o.short]));
  const problems: string[] = [];
  let checked = 0;
  for (const b of all.filter((x) => x.lang === 'text')) {
    b.lines.forEach((raw, i) => {
      const line = raw.replace(/\s+#.*$/, '');
      if (!line.startsWith('tsnet ')) return;
      checked++;
      let parent: Command | undefined;
      // Leading global options in brackets (`tsnet [--state-dir DIR] agent ...`) come before the command words.
      let last: Command | undefined;
      for (const alt of splitTop(line.slice('tsnet '.length)).map((x, k) =>
        k ? x : x.replace(/^(\[-[^\]]*\]\s*)+/, ''),
      )) {
        for (const words of expandWords(alt)) {
          // An alternative of options (`--endpoint ... | --none`) belongs to the command before it.
          const { cmd, parentOf } =
            alt.trim().startsWith('-') && last
              ? { cmd: last, parentOf: parent! }
              : resolve(program, parent ?? program, words);
          if (!parent) parent = parentOf;
          last = cmd;
          if (!cmd) {
            problems.push(`line ${b.line + i}: "${words.join(' ')}" is not a command`);
            continue;
          }
          for (const opt of alt.match(/(?<![\w-])--?[a-z0-9][a-z0-9-]*/g) ?? []) {
            if (
              !globals.has(opt) &&
              !cmd.options.some((o) => o.long === opt || o.short === opt) &&
              !['-h', '--help'].includes(opt)
            )
              problems.push(`line ${b.line + i}: ${opt} is not an option of "${cmdPath(cmd)}"`);
          }
        }
      }
    });
  }
  t.true(checked > 25, `usage lines found: ${checked}`);
  t.deepEqual(problems, []);
});

/** Alternatives separated by " | " outside brackets. */
function splitTop(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '[') depth++;
    if (c === ']') depth--;
    if (depth === 0 && s.startsWith(' | ', i)) {
      out.push(cur);
      cur = '';
      i += 2;
    } else cur += c;
  }
  return [...out, cur];
}

/** The command words at the start of an alternative (before options and placeholders), `add|del` expanded. */
function expandWords(alt: string): string[][] {
  const words: string[][] = [[]];
  for (const w of alt.trim().split(/\s+/)) {
    if (!/^[a-z][a-z0-9|-]*$/.test(w)) break;
    const choices = w.split('|');
    const next: string[][] = [];
    for (const prefix of words) for (const c of choices) next.push([...prefix, c]);
    words.splice(0, words.length, ...next);
  }
  return words;
}

const findSub = (c: Command, w: string) => c.commands.find((x) => x.name() === w || x.aliases().includes(w));

/**
 * The command `words` name, looked up from `start` (then from the program);
 * with no words, the program itself. `parentOf`: the parent of the last word
 * resolved, where the line's later alternatives continue (`netns add | del`).
 */
function resolve(program: Command, start: Command, words: string[]): { cmd?: Command; parentOf: Command } {
  if (!words.length) return { cmd: program, parentOf: program };
  for (const from of start === program ? [program] : [start, program]) {
    let cmd = findSub(from, words[0]!);
    if (!cmd) continue;
    let parentOf = from;
    // Words past the command are its arguments when they name no subcommand (`completion bash|zsh`).
    for (const w of words.slice(1)) {
      const sub = findSub(cmd, w);
      if (!sub) break;
      parentOf = cmd;
      cmd = sub;
    }
    const dflt = (cmd as unknown as { _defaultCommandName: string | null })._defaultCommandName;
    return { cmd: (dflt && findSub(cmd, dflt)) || cmd, parentOf };
  }
  return { parentOf: program };
}

const cmdPath = (c: Command): string =>
  c.parent && c.parent.name() !== 'tsnet' ? `${cmdPath(c.parent)} ${c.name()}` : c.name();
