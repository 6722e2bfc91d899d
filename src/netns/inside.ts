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
 * - Every namespace fd is checked, at the moment of use and after entering,
 *   against the cookie (SO_NETNS_COOKIE) its namespace had when the handle
 *   was opened: a number closed and reused behind tsnet's back is refused
 *   with EBADF, never acted on. A cookie is never given to another namespace;
 *   the nsfs inode number is, once its namespace dies. The helper checks
 *   after setns, tsnet-nsexec after entering (the fd a child inherits may be
 *   swapped between any check in this process and the fork), and an fd put
 *   in a netlink attribute is a private duplicate checked after the dup.
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
  /** SO_NETNS_COOKIE of the namespace when the handle was opened. */
  cookie: bigint;
}

/**
 * Runs an addon call on the handle's fd, with its refusals said in words: the
 * fd is not the handle's namespace any more, or the file is not one to open
 * in a namespace (the addon's own text is lost when callers add context).
 */
function checked<T>(ns: NsFd, call: () => T): T {
  try {
    return call();
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === 'EBADF')
      throw new TsnetError(
        `its namespace fd ${ns.fd} was closed behind its back (or closed and its number reused): open the namespace again`,
        { code: 'EBADF' },
      );
    if (e.code === 'ENOPROTOOPT')
      throw new TsnetError(
        "this kernel cannot tell a namespace's cookie (SO_NETNS_COOKIE, Linux 5.14 or later): tsnet needs it to act in other namespaces",
        { code: 'ENOPROTOOPT' },
      );
    if (e.code === 'EINVAL' && e.message?.includes('not a regular file'))
      throw new TsnetError('not a regular file (inside a namespace only /proc/sys and /proc/net files are opened)', {
        code: 'EINVAL',
      });
    throw err;
  }
}

/** socket(2) inside the namespace (close-on-exec). */
export function socketIn(ns: NsFd, domain: number, type: number, protocol: number): number {
  return checked(ns, () => native().socketIn(ns.fd, ns.cookie, domain, type, protocol));
}

/** socket(2) on the calling thread, i.e. in the process's own namespace, where every JavaScript thread stays (close-on-exec). */
export function socketHere(domain: number, type: number, protocol: number): number {
  return native().socketIn(-1, 0n, domain, type, protocol);
}

/**
 * open(2) of a regular file inside the namespace (close-on-exec): what
 * /proc/sys/net and /proc/thread-self/net resolve to depends on it. The fd
 * is reopened through /proc/self/fd by Node's fs (it stays in the namespace's
 * file), so fs.closeSync closes it quietly in a Worker too.
 */
export function openIn(ns: NsFd, file: string, flags: number, mode: number): number {
  const fd = checked(ns, () => native().openIn(ns.fd, ns.cookie, file, flags, mode));
  return adoptFd(fd, flags);
}

/** An fd the addon made, as one Node's fs opened (Workers track those, and warn when closing others). */
export function adoptFd(fd: number, flags = fs.constants.O_RDONLY): number {
  // What the first open already did (create, truncate) or what would refuse the magic link itself (O_NOFOLLOW,
  // O_TMPFILE's O_DIRECTORY) is not asked again.
  const { O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW, O_DIRECTORY } = fs.constants;
  const O_TMPFILE = 0o20000000 | O_DIRECTORY;
  try {
    return fs.openSync(`/proc/self/fd/${fd}`, flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOFOLLOW | O_TMPFILE));
  } finally {
    native().close(fd);
  }
}

/** A new network namespace, bound at `bindAt` (an existing empty file) like `ip netns add`; returns an fd to it. */
export function createNetns(bindAt: string): number {
  return adoptFd(native().createNetns(bindAt));
}

/** The cookie of the network namespace behind `fd` (entered by the helper: EINVAL when it is no network namespace). */
export function cookieOf(fd: number): bigint {
  return native().nsCookie(fd, 0n);
}

/** The cookie of the process's own network namespace. */
export function homeCookie(): bigint {
  return native().nsCookie(-1, 0n);
}

/**
 * Whether ns.fd still refers to the namespace it was opened on (not a number
 * closed and reused). Only EBADF says no; a check that could not be made
 * (EMFILE, ENOMEM) falls back to the fd's (st_dev, st_ino), so a handle is
 * still closed when the process is short of fds.
 */
export function stillOurs(ns: NsFd, dev: number, ino: number): boolean {
  try {
    native().nsCookie(ns.fd, ns.cookie);
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === 'EBADF') return false;
    try {
      const st = fs.fstatSync(ns.fd);
      return st.dev === dev && st.ino === ino;
    } catch {
      return false;
    }
  }
}

/** The error for a namespace fd that is not its handle's any more. */
function reused(where: string, ns: NsFd): TsnetError {
  return new TsnetError(
    `${where}: its namespace fd ${ns.fd} no longer refers to its namespace (closed, and the number reused behind its back)`,
    { code: 'EBADF' },
  );
}

/**
 * A private duplicate of the handle's fd, checked after the dup to be its
 * namespace: for the kernel, in a netlink attribute (IFLA_NET_NS_FD,
 * NETNSA_FD). The caller closes it with closeFd once the request is sent.
 */
export function checkedDup(ns: NsFd, where: string): number {
  try {
    return native().dupChecked(ns.fd, ns.cookie);
  } catch (err) {
    if ((err as { code?: string }).code === 'EBADF') throw reused(where, ns);
    throw err;
  }
}

/** close(2) of an fd the addon made. */
export function closeFd(fd: number): void {
  native().close(fd);
}

/** The tid of the namespace helper thread (0 before its first job): the one thread allowed to be away. */
export function helperTid(): number {
  return native().helperTid();
}

/**
 * What `cmd` would run as, found the way execvp does (PATH from the child's
 * environment; a name with a slash from the child's cwd): the file, or why
 * not, as child_process reports it (ENOENT, EACCES when only files that
 * cannot be executed were found).
 */
export function findProgram(
  cmd: string,
  env: NodeJS.ProcessEnv | undefined,
  cwd?: string | URL,
): { file: string } | { code: 'ENOENT' | 'EACCES' } {
  let denied = false;
  const ok = (p: string) => {
    try {
      if (!fs.statSync(p).isFile()) return false;
      fs.accessSync(p, fs.constants.X_OK);
      return true;
    } catch (err) {
      if ((err as { code?: string }).code === 'EACCES') denied = true;
      return false;
    }
  };
  const base = cwd === undefined ? process.cwd() : String(cwd instanceof URL ? cwd.pathname : cwd);
  if (cmd.includes('/')) {
    const p = path.resolve(base, cmd);
    return ok(p) ? { file: p } : { code: denied ? 'EACCES' : 'ENOENT' };
  }
  const dirs = ((env ?? process.env).PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':');
  for (const d of dirs) {
    const p = path.resolve(base, d || '.', cmd);
    if (ok(p)) return { file: p };
  }
  return { code: denied ? 'EACCES' : 'ENOENT' };
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
  ready: number,
): { args: string[]; opts: SpawnOptions } {
  const stdio = stdioArray(opts.stdio);
  const nsIndex = stdio.length;
  stdio.push(ns.fd);
  const readyIndex = String(stdio.length);
  stdio.push(ready);
  const argv0 = opts.argv0 ?? cmd;
  // uid/gid are applied by the helper after it entered the namespace (an unprivileged process could not enter).
  const id = (v: number | undefined) => (v === undefined ? '-' : String(v));
  const { uid, gid, ...rest } = opts;
  return {
    args: [String(nsIndex), String(ns.cookie), readyIndex, id(uid), id(gid), cmd, argv0, ...args],
    opts: { ...rest, stdio: stdio as StdioOptions, argv0: 'tsnet-nsexec' },
  };
}

/**
 * What child_process would refuse before starting anything, refused the same
 * way here (not as a failure of tsnet-nsexec): bad arguments, the shell
 * option, a working directory that is not one, a program that is not found
 * or cannot be executed.
 */
function preflight(cmd: string, args: readonly string[], opts: SpawnOptions | SpawnSyncOptions, label: string): void {
  if (typeof cmd !== 'string' || !cmd)
    throw new TsnetError(`spawning in ${label}: the program must be a non-empty string`, { code: 'EINVAL' });
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string'))
    throw new TsnetError(`spawning ${cmd} in ${label}: args must be an array of strings`, { code: 'EINVAL' });
  if (opts.shell)
    throw new TsnetError('spawning in a namespace: the shell option is refused (argument arrays only)', {
      code: 'EINVAL',
    });
  if (opts.cwd !== undefined) {
    let dir = false;
    try {
      dir = fs.statSync(opts.cwd).isDirectory();
    } catch {
      // reported below
    }
    if (!dir)
      throw new TsnetError(`cannot run ${cmd} in ${label}: its working directory ${String(opts.cwd)} does not exist`, {
        code: 'ENOENT',
        syscall: 'chdir',
      });
  }
  const found = findProgram(cmd, opts.env, opts.cwd);
  if ('code' in found) {
    const why = found.code === 'EACCES' ? 'not executable (EACCES)' : 'not found';
    throw new TsnetError(`cannot run ${cmd} in ${label}: ${why} (PATH ${(opts.env ?? process.env).PATH ?? ''})`, {
      code: found.code,
    });
  }
}

/**
 * Runs `start` with a pipe tsnet-nsexec reports on: "1" once inside the
 * namespace, "B" when the fd it inherited was not the handle's namespace any
 * more (the program never ran: EBADF), nothing when it failed before (or
 * spawn failed, which Node reports itself).
 */
function withReport<T>(ns: NsFd, where: string, start: (ready: number) => T): T {
  const [r, w] = native().pipe();
  let writer = true;
  try {
    const out = start(w);
    closeFd(w);
    writer = false;
    const b = Buffer.alloc(1);
    if (fs.readSync(r, b, 0, 1, null) === 1 && b[0] === 0x42) throw reused(where, ns);
    return out;
  } finally {
    if (writer) closeFd(w);
    closeFd(r);
  }
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
  preflight(cmd, args, opts, label);
  return withReport(ns, `spawning ${cmd} in ${label}`, (ready) => {
    const x = nsexecArgs(ns, cmd, args, opts, ready);
    return childProcesses().spawn(NSEXEC_PATH, x.args, x.opts);
  });
}

/** Runs `cmd args` inside the namespace to completion through tsnet-nsexec. */
export function spawnSyncIn(
  ns: NsFd,
  label: string,
  cmd: string,
  args: readonly string[],
  opts: SpawnSyncOptions,
): SpawnSyncReturns<Buffer | string> {
  preflight(cmd, args, opts, label);
  return withReport(ns, `running ${cmd} in ${label}`, (ready) => {
    const x = nsexecArgs(ns, cmd, args, opts, ready);
    return childProcesses().spawnSync(NSEXEC_PATH, x.args, x.opts as SpawnSyncOptions);
  });
}
