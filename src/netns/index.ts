/**
 * Network namespace handles, and the named namespaces of iproute2
 * (`ip netns add|del|list|exec`), compatible both ways: `ip netns exec NAME`
 * works on a namespace tsnet made, and tsnet opens namespaces `ip netns add`
 * made.
 *
 * A handle owns an fd to its namespace (which also keeps the namespace
 * alive) and a netlink socket created inside it; both are closed by
 * `close()`. Every operation in src/link, src/addr, src/route ... takes a
 * handle and acts in that namespace, whatever namespace the caller is in.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, type ChildProcess, type SpawnOptions, type SpawnSyncOptions, type SpawnSyncReturns } from 'node:child_process';
import { NetlinkSocket } from '../netlink/socket';
import { RTM, rtgenmsg, NETNSA, AF_UNSPEC } from '../netlink/rtnl';
import { decodeAttrs, encodeAttrs } from '../netlink/attrs';
import { native } from '../native';
import { TsnetError, contextualize, hasCode, invalid } from '../errors';
import { createNetnsAt, inNetns, originFd } from './switch';

export { inNetns } from './switch';

/** Where iproute2 keeps named namespaces (NETNS_RUN_DIR). */
export const NETNS_RUN_DIR = '/run/netns';

export class NetNs {
  private sock?: NetlinkSocket;
  private closed = false;

  private constructor(
    /** The name under /run/netns, when it has one. */
    readonly name: string | undefined,
    /** The path the handle was opened from (/run/netns/NAME, /proc/PID/ns/net, ...). */
    readonly path: string,
    /** An open fd to the namespace; keeps it alive while the handle is open. */
    readonly fd: number,
    /** Whether this is the namespace tsnet was loaded in (no switch needed). */
    readonly isOrigin: boolean,
  ) {}

  /** @internal */
  static fromFd(name: string | undefined, p: string, fd: number, isOrigin = false): NetNs {
    return new NetNs(name, p, fd, isOrigin);
  }

  /** "namespace c1", "namespace /proc/42/ns/net", or "the current namespace": for error messages. */
  get label(): string {
    if (this.isOrigin) return 'the current namespace';
    return `namespace ${this.name ?? this.path}`;
  }

  /** The namespace's identity: the nsfs inode (what `ls -i /run/netns/NAME` and `lsns` show). */
  get inode(): number {
    return fs.fstatSync(this.fd).ino;
  }

  /** The rtnetlink socket of this namespace, created inside it on first use. */
  get nl(): NetlinkSocket {
    if (this.closed) throw new TsnetError(`handle for ${this.label} is closed`, { code: 'EBADF' });
    if (!this.sock) this.sock = this.isOrigin ? new NetlinkSocket() : inNetns(this.fd, () => new NetlinkSocket());
    return this.sock;
  }

  /** A new netlink socket of another `protocol` (e.g. NETLINK_NETFILTER), created inside this namespace; the caller closes it. */
  openNetlink(protocol: number): NetlinkSocket {
    if (this.closed) throw new TsnetError(`handle for ${this.label} is closed`, { code: 'EBADF' });
    return this.run(() => new NetlinkSocket(protocol));
  }

  /**
   * Runs a synchronous `fn` with the calling thread inside this namespace
   * (see src/netns/switch.ts for why it must be synchronous).
   */
  run<T>(fn: () => T): T {
    return this.isOrigin ? fn() : inNetns(this.fd, fn);
  }

  /** Starts a child process inside this namespace (`ip netns exec NAME CMD ...`). */
  spawn(cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    return this.run(() => spawn(cmd, args, opts));
  }

  /** Runs a child process inside this namespace to completion. */
  spawnSync(cmd: string, args: readonly string[] = [], opts: SpawnSyncOptions = {}): SpawnSyncReturns<Buffer | string> {
    return this.run(() => spawnSync(cmd, args, opts));
  }

  /** Closes the netlink socket and the namespace fd. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sock?.close();
    if (this.fd !== originFd) fs.closeSync(this.fd);
  }
}

let originHandle: NetNs | undefined;

/** The namespace this process runs in (the default handle); never closed by close(). */
export function current(): NetNs {
  return (originHandle ??= NetNs.fromFd(undefined, '/proc/thread-self/ns/net', originFd, true));
}

/** Checks a namespace name the way a file name under /run/netns must be. */
export function validateName(name: string): void {
  if (!name || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || Buffer.byteLength(name) > 255) {
    throw invalid(`invalid namespace name ${JSON.stringify(name)}: must be a plain file name (no '/'), at most 255 bytes`);
  }
}

function openPath(p: string, name: string | undefined, what: string): NetNs {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY);
  } catch (err) {
    if (hasCode(err, 'ENOENT')) throw new TsnetError(`${what} does not exist (${p})`, { code: 'ENOENT' });
    throw contextualize(`opening ${what}`, err);
  }
  // A plain file at /run/netns/NAME (left by a crashed `ip netns add`) is not a namespace.
  const st = fs.fstatSync(fd);
  const nsfs = fs.fstatSync(originFd);
  if (st.dev !== nsfs.dev) {
    fs.closeSync(fd);
    throw new TsnetError(`${what} is not a network namespace (${p})`, { code: 'EINVAL' });
  }
  return NetNs.fromFd(name, p, fd);
}

/** Opens a named namespace (/run/netns/NAME), whoever created it. */
export function open(name: string): NetNs {
  validateName(name);
  return openPath(path.join(NETNS_RUN_DIR, name), name, `namespace ${name}`);
}

/** Opens the network namespace of a process (/proc/PID/ns/net), as Docker names a container's. */
export function openPid(pid: number): NetNs {
  if (!Number.isInteger(pid) || pid <= 0) throw invalid(`invalid pid ${pid}`);
  return openPath(`/proc/${pid}/ns/net`, undefined, `network namespace of pid ${pid}`);
}

/** Opens a namespace by path (a bind mount, /proc/PID/ns/net, /proc/PID/task/TID/ns/net ...). */
export function openPath_(p: string): NetNs {
  return openPath(p, undefined, `namespace ${p}`);
}
export { openPath_ as openPath };

/**
 * Resolves what a user typed as a namespace reference: a name under
 * /run/netns, `pid:N` or a bare number for a process, or an absolute path.
 */
export function resolve(ref: string): NetNs {
  if (/^(pid:)?\d+$/.test(ref)) return openPid(Number(ref.replace(/^pid:/, '')));
  if (ref.startsWith('/')) return openPath_(ref);
  return open(ref);
}

/**
 * /run/netns must be a shared mount point, so that a namespace bound there by
 * one mount namespace shows up in the others (`ip netns add` does this; a
 * process in a private mount namespace would otherwise keep its mounts to
 * itself). Mirrors iproute2's ipnetns.c: make it shared; if it is not a mount
 * point yet (EINVAL), bind it onto itself first.
 */
function prepareRunDir(): void {
  const n = native();
  const c = n.constants;
  fs.mkdirSync(NETNS_RUN_DIR, { recursive: true, mode: 0o755 });
  try {
    n.mount('', NETNS_RUN_DIR, 'none', c.MS_SHARED | c.MS_REC);
  } catch (err) {
    if (!hasCode(err, 'EINVAL')) throw err;
    n.mount(NETNS_RUN_DIR, NETNS_RUN_DIR, 'none', c.MS_BIND | c.MS_REC);
    n.mount('', NETNS_RUN_DIR, 'none', c.MS_SHARED | c.MS_REC);
  }
}

/**
 * Creates a named namespace: `ip netns add NAME`. With `exist_ok`, an
 * existing namespace of that name is opened instead (idempotent add).
 * Leaves nothing behind on failure.
 */
export function add(name: string, opts: { existOk?: boolean } = {}): NetNs {
  validateName(name);
  const p = path.join(NETNS_RUN_DIR, name);
  try {
    prepareRunDir();
  } catch (err) {
    throw contextualize(`creating namespace ${name}: preparing ${NETNS_RUN_DIR}`, err);
  }
  try {
    fs.closeSync(fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0));
  } catch (err) {
    if (hasCode(err, 'EEXIST')) {
      if (opts.existOk) return open(name);
      throw new TsnetError(`creating namespace ${name}: it already exists (${p})`, { code: 'EEXIST' });
    }
    throw contextualize(`creating namespace ${name}`, err);
  }
  try {
    createNetnsAt(p);
  } catch (err) {
    fs.rmSync(p, { force: true });
    throw contextualize(`creating namespace ${name}`, err);
  }
  return open(name);
}

/**
 * Deletes a named namespace: `ip netns del NAME`. The namespace itself lives
 * on while a process or an open fd still holds it. Deleting a namespace that
 * does not exist succeeds (returns false).
 */
export function del(name: string): boolean {
  validateName(name);
  const p = path.join(NETNS_RUN_DIR, name);
  if (!fs.existsSync(p)) return false;
  try {
    native().umount2(p, native().constants.MNT_DETACH);
  } catch (err) {
    if (!hasCode(err, 'EINVAL', 'ENOENT')) throw contextualize(`deleting namespace ${name}`, err); // EINVAL: not mounted, only the file is left
  }
  try {
    fs.rmSync(p);
  } catch (err) {
    if (!hasCode(err, 'ENOENT')) throw contextualize(`deleting namespace ${name}`, err);
  }
  return true;
}

/** Names of the namespaces under /run/netns: `ip netns list`. */
export function list(): string[] {
  try {
    return fs.readdirSync(NETNS_RUN_DIR).sort();
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return [];
    throw contextualize(`listing ${NETNS_RUN_DIR}`, err);
  }
}

/**
 * The id by which namespace `of` is known inside namespace `h` (the
 * `link-netnsid` of `ip link`), or undefined when none is assigned:
 * RTM_GETNSID with NETNSA_FD, as `ip netns list-id` does.
 */
export async function nsid(h: NetNs, of: NetNs): Promise<number | undefined> {
  const payload = Buffer.concat([rtgenmsg.encode({ family: AF_UNSPEC }), encodeAttrs(NETNSA, { fd: of.fd })]);
  const replies = await h.nl.request(RTM.GETNSID, 0, payload);
  for (const m of replies) {
    const id = decodeAttrs(NETNSA, m.payload.subarray(rtgenmsg.size)).nsid as number | undefined;
    if (id !== undefined && id >= 0) return id;
  }
  return undefined;
}
