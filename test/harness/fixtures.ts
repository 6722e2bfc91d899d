/**
 * Test fixtures. Every test file runs inside the sandbox `npm test` creates
 * (src/sandbox), and additionally builds its whole topology in namespaces
 * named after the file, so files can run in parallel without meeting.
 * iproute2 (`ip`, `bridge`) is used as the independent observer of what
 * tsnet did.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as netns from '../../src/netns';
import { inSandbox } from '../../src/sandbox';

export function assertSandbox(): void {
  if (!inSandbox()) {
    throw new Error('tests touch the kernel: run them with `npm test` (a private network + mount namespace), as root');
  }
}

/** Named namespaces for one test file, all removed by cleanup(). */
export class Topology {
  private readonly made: netns.NetNs[] = [];
  constructor(readonly prefix: string) {
    assertSandbox();
  }

  /** Creates namespace PREFIX-NAME (with lo up) and returns its handle. */
  async ns(name: string): Promise<netns.NetNs> {
    const full = `${this.prefix}-${name}`;
    netns.del(full);
    const h = netns.add(full);
    this.made.push(h);
    const link = await import('../../src/link');
    await link.setUp(h, 'lo');
    return h;
  }

  cleanup(): void {
    for (const h of this.made.splice(0)) {
      h.close();
      if (h.name) netns.del(h.name);
    }
  }
}

/**
 * What a test file makes and must remove after its last test: namespaces
 * (a Topology), traffic servers, temporary directories. Register `cleanup`
 * with test.after.always.
 */
export function scratch(prefix: string) {
  const topo = new Topology(prefix);
  const servers: { stop(): Promise<void> }[] = [];
  const dirs: string[] = [];
  const tmp = (name: string): string => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-${name}-`));
    dirs.push(d);
    return d;
  };
  const cleanup = async (): Promise<void> => {
    await Promise.all(servers.splice(0).map((s) => s.stop()));
    topo.cleanup();
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  };
  return { topo, servers, tmp, cleanup };
}

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** System directories first: under npx, node_modules/.bin holds an unrelated `nft` (@vercel/nft). */
const PATH = `/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin:${process.env.PATH ?? ''}`;

/** Runs a command (argument array, no shell). */
export function run(
  cmd: string,
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Run {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    input: opts.input,
    env: { ...process.env, PATH, ...opts.env },
    timeout: opts.timeoutMs ?? 60_000,
  });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** `ip -j [-n NS] ARGS...` parsed: iproute2 as the observer. */
export function ipJson<T = any>(ns: netns.NetNs | undefined, ...args: string[]): T {
  const r = run('ip', ['-j', ...(ns?.name ? ['-n', ns.name] : []), ...args]);
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout || '[]') as T;
}

/** `ip [-n NS] ARGS...` expecting success. */
export function ip(ns: netns.NetNs | undefined, ...args: string[]): string {
  const r = run('ip', [...(ns?.name ? ['-n', ns.name] : []), ...args]);
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The CLI as users run it (package.json's `bin`). */
export const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');

/** Runs the tsnet CLI as a user would. */
export function tsnet(...args: string[]): Run {
  return run(process.execPath, [CLI, ...args]);
}

/**
 * The NAT-engine view of one namespace for a test suite: the CLI bound to it
 * (with a backend and a state dir), a must-succeed variant, commands run
 * inside it, and its netfilter rules as comparable text (both iptables-save's
 * and nft's views, counters and timeouts removed). `nsName` is read lazily:
 * suites create their namespaces in test.before.
 */
export function natView(nsName: () => string, backend: string, stateDir: string) {
  const cli = (...args: string[]): Run =>
    tsnet('--netns', nsName(), '--backend', backend, '--state-dir', stateDir, ...args);
  const ok = (...args: string[]): Run => {
    const r = cli(...args);
    if (r.status !== 0) throw new Error(`tsnet ${args.join(' ')} failed: ${r.stderr.trim()}`);
    return r;
  };
  const inNs = (cmd: string, ...args: string[]): Run => run('ip', ['netns', 'exec', nsName(), cmd, ...args]);
  const rules = (): string =>
    (inNs('iptables-save').stdout + inNs('nft', 'list', 'ruleset').stdout)
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .join('\n')
      .replace(/(counter packets|packets) \d+ bytes \d+|\[\d+:\d+\]| expires \S+/g, '');
  return { cli, ok, inNs, rules };
}

/** One letter per NAT backend, for namespace prefixes of suites that run once per backend (nati-, natn-, natl-). */
export const backendLetter = (b: string): string =>
  (({ iptables: 'i', nft: 'n', netlink: 'l' }) as Record<string, string>)[b] ?? b;

/** The fd numbers of this process that refer to the namespace with nsfs inode `ino` (by fstat: a bind mount's path reads differently). */
export function fdsOf(ino: number): number[] {
  const nsfs = fs.statSync('/proc/self/ns/net').dev;
  return fs
    .readdirSync('/proc/self/fd')
    .map(Number)
    .filter((fd) => {
      try {
        const st = fs.fstatSync(fd);
        return st.dev === nsfs && st.ino === ino;
      } catch {
        return false;
      }
    });
}

/**
 * tsnet's nf_tables tables of `ns` as nft --json prints them, without what
 * differs between any two runs: handles, counters, expiry, and the order
 * objects were created in (a partial sync adds a new chain after the others,
 * a full one in layout order). One line per object, sorted; a set's elements
 * sorted too.
 */
export function nftObserved(ns: netns.NetNs): string[] {
  const drop = (k: string, v: unknown) => (k === 'handle' || k === 'counter' || k === 'expires' ? undefined : v);
  const out: string[] = [];
  for (const fam of ['ip', 'ip6']) {
    const r = run('ip', ['netns', 'exec', ns.name!, 'nft', '--json', 'list', 'table', fam, 'tsnet']);
    if (r.status !== 0) {
      out.push(`${fam}: no table`);
      continue;
    }
    for (const item of (JSON.parse(r.stdout) as { nftables: Record<string, any>[] }).nftables) {
      if ('metainfo' in item) continue;
      const obj = item.map ?? item.set;
      if (obj?.elem) obj.elem = (obj.elem as unknown[]).map((e) => JSON.stringify(e, drop)).sort();
      out.push(JSON.stringify(item, drop));
    }
  }
  return out.sort();
}
