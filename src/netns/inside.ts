/**
 * The one place where tsnet acts inside another network namespace.
 *
 * Threading model (read this before touching namespaces anywhere else):
 *
 * - setns(2) moves only the calling thread, and what a thread creates while
 *   switched (a socket, a child process, a thread, an open /proc/sys file)
 *   belongs to the namespace it was switched into, for good. Node's main
 *   thread runs much more than tsnet: async_hooks init hooks (tracing agents),
 *   timers, microtasks, libraries that create sockets or Workers lazily.
 *   `/proc/self` and `/proc/net` follow the main thread too, so a switched
 *   main thread would also change what every other thread reads there.
 * - So no JavaScript thread of the process ever changes namespace. The
 *   native addon runs one helper thread ("tsnet-netns", started on first
 *   use, signals blocked) which is the only thread that ever calls setns: it
 *   enters the namespace, creates the socket or opens the file, returns,
 *   checks it is back home, and hands the fd over. A netlink socket or an
 *   open proc file keeps acting in the namespace it was created in, whichever
 *   thread uses it later. If the helper cannot return home, the process
 *   aborts: a thread in an unknown namespace must not run another line.
 * - The caller waits for the helper synchronously (microseconds), so nothing
 *   else runs in between and nothing is left switched across an await.
 * - A child process in a namespace is started by `tsnet-nsexec`
 *   (native/nsexec.c): it inherits the namespace fd, enters, closes the fd
 *   and execs the program. Node's spawn itself runs on the main thread, at home.
 * - Every namespace fd is checked against the identity (st_dev, st_ino) it
 *   had when its handle was opened, right where it is used: a number closed
 *   and reused behind tsnet's back is refused with EBADF, never acted on.
 *
 * Failure modes this prevents: a switched main thread across an await or a
 * callback; an async_hooks init hook or a lazily created socket landing in a
 * container; threadpool or Worker reads of /proc/net seeing a container's
 * data; a Worker or the threadpool born inside a namespace; a bracket that
 * "returns" into the wrong namespace because its home fd was reused.
 */
import type * as ChildProcesses from 'node:child_process';
import type { ChildProcess, SpawnOptions, SpawnSyncOptions, SpawnSyncReturns, StdioOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NSEXEC_PATH, native } from '../native';
import { TsnetError } from '../errors';

let cp: typeof ChildProcesses | undefined;
/** node:child_process, loaded when a process is first started: most commands start none, and loading it is a measurable share of every start-up (bench:startup). */
export function childProcesses(): typeof ChildProcesses {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a synchronous lazy load: spawning is synchronous
  return (cp ??= require('node:child_process') as typeof ChildProcesses);
}

/** A namespace fd together with the identity it must still have (see the module comment). */
export interface NsFd {
  fd: number;
  dev: number;
  ino: number;
}

/** socket(2) inside the namespace (close-on-exec). */
export function socketIn(ns: NsFd, domain: number, type: number, protocol: number): number {
  return native().socketIn(ns.fd, ns.dev, ns.ino, domain, type, protocol);
}

/** socket(2) on the calling thread, i.e. in the process's own namespace, where every JavaScript thread stays (close-on-exec). */
export function socketHere(domain: number, type: number, protocol: number): number {
  return native().socketIn(-1, 0, 0, domain, type, protocol);
}

/** open(2) inside the namespace (close-on-exec): what /proc/sys/net and /proc/thread-self/net resolve to depends on it. */
export function openIn(ns: NsFd, file: string, flags: number): number {
  return native().openIn(ns.fd, ns.dev, ns.ino, file, flags);
}

/** A new network namespace, bound at `bindAt` (an existing empty file) like `ip netns add`; returns an fd to it. */
export function createNetns(bindAt: string): number {
  return native().createNetns(bindAt);
}

/** The tid of the namespace helper thread (0 before its first job): the one thread allowed to be away. */
export function helperTid(): number {
  return native().helperTid();
}

/**
 * The executable `cmd` would run as, found the way execvp does (PATH from the
 * child's environment), so a missing program is one clear error instead of
 * an exit status from the exec helper.
 */
export function findProgram(cmd: string, env: NodeJS.ProcessEnv | undefined): string | undefined {
  const ok = (p: string) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (cmd.includes('/')) return ok(cmd) ? cmd : undefined;
  const dirs = ((env ?? process.env).PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':');
  for (const d of dirs) {
    const p = path.join(d || '.', cmd);
    if (ok(p)) return p;
  }
  return undefined;
}

/** Node's stdio option as an array, so the namespace fd can go after the caller's own entries. */
function stdioArray(stdio: StdioOptions | undefined): unknown[] {
  if (stdio === undefined) return ['pipe', 'pipe', 'pipe'];
  if (typeof stdio === 'string') return [stdio, stdio, stdio];
  const a = [...(stdio as unknown[])];
  while (a.length < 3) a.push('pipe');
  return a;
}

function nsexecArgs(
  ns: NsFd,
  cmd: string,
  args: readonly string[],
  opts: SpawnOptions | SpawnSyncOptions,
  ready?: number,
): { args: string[]; opts: SpawnOptions } {
  if (opts.shell)
    throw new TsnetError('spawning in a namespace: the shell option is refused (argument arrays only)', {
      code: 'EINVAL',
    });
  const stdio = stdioArray(opts.stdio);
  const nsIndex = stdio.length;
  stdio.push(ns.fd);
  let readyIndex = '-';
  if (ready !== undefined) {
    readyIndex = String(stdio.length);
    stdio.push(ready);
  }
  const argv0 = opts.argv0 ?? cmd;
  // uid/gid are applied by the helper after it entered the namespace (an unprivileged process could not enter).
  const id = (v: number | undefined) => (v === undefined ? '-' : String(v));
  const { uid, gid, ...rest } = opts;
  return {
    args: [String(nsIndex), readyIndex, id(uid), id(gid), cmd, argv0, ...args],
    opts: { ...rest, stdio: stdio as StdioOptions, argv0: 'tsnet-nsexec' },
  };
}

function checkIdentity(ns: NsFd, where: string): void {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(ns.fd);
  } catch {
    throw new TsnetError(`${where}: its namespace fd ${ns.fd} was closed behind its back`, { code: 'EBADF' });
  }
  if (st.dev !== ns.dev || st.ino !== ns.ino) {
    throw new TsnetError(
      `${where}: its namespace fd ${ns.fd} now refers to something else (closed and reused behind its back)`,
      { code: 'EBADF' },
    );
  }
}

function requireProgram(cmd: string, opts: SpawnOptions | SpawnSyncOptions, label: string): void {
  if (!findProgram(cmd, opts.env))
    throw new TsnetError(`cannot run ${cmd} in ${label}: not found (PATH ${(opts.env ?? process.env).PATH ?? ''})`, {
      code: 'ENOENT',
    });
}

/**
 * Starts `cmd args` inside the namespace through tsnet-nsexec, and returns
 * once the child is inside (so /proc/PID/ns/net is already the namespace:
 * a caller may open it by pid at once).
 */
export function spawnIn(
  ns: NsFd,
  label: string,
  cmd: string,
  args: readonly string[],
  opts: SpawnOptions,
): ChildProcess {
  requireProgram(cmd, opts, label);
  const [r, w] = native().pipe();
  let writerOpen = true;
  try {
    const x = nsexecArgs(ns, cmd, args, opts, w);
    checkIdentity(ns, `spawning ${cmd} in ${label}`);
    const child = childProcesses().spawn(NSEXEC_PATH, x.args, x.opts);
    fs.closeSync(w);
    writerOpen = false;
    // Blocks for the helper's start (well under a millisecond): one byte once it is inside, EOF if it died first.
    if (child.pid !== undefined) fs.readSync(r, Buffer.alloc(1), 0, 1, null);
    return child;
  } finally {
    if (writerOpen) fs.closeSync(w);
    fs.closeSync(r);
  }
}

/** Runs `cmd args` inside the namespace to completion through tsnet-nsexec. */
export function spawnSyncIn(
  ns: NsFd,
  label: string,
  cmd: string,
  args: readonly string[],
  opts: SpawnSyncOptions,
): SpawnSyncReturns<Buffer | string> {
  requireProgram(cmd, opts, label);
  const x = nsexecArgs(ns, cmd, args, opts);
  checkIdentity(ns, `running ${cmd} in ${label}`);
  return childProcesses().spawnSync(NSEXEC_PATH, x.args, x.opts as SpawnSyncOptions);
}

/** Refuses an fd whose identity changed (closed and reused): for fds handed to the kernel in a netlink attribute. */
export { checkIdentity };
