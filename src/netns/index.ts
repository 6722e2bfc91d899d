/**
 * Network namespace handles, and the named namespaces of iproute2
 * (`ip netns add|del|list|exec`), compatible both ways: `ip netns exec NAME`
 * works on a namespace tsnet made, and tsnet opens namespaces `ip netns add`
 * made.
 *
 * A handle owns an fd to its namespace (which also keeps the namespace
 * alive) and a netlink socket created inside it; both are closed by
 * `close()`, after which every operation on the handle fails with EBADF.
 * Every operation in src/link, src/addr, src/route ... takes a handle and
 * acts in that namespace, whatever namespace the caller is in. No thread of
 * the process is ever switched to do it: see ./inside.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ChildProcess, SpawnOptions, SpawnSyncOptions, SpawnSyncReturns } from 'node:child_process';
import { NetlinkSocket, NETLINK_NETFILTER, NETLINK_ROUTE, nativeTransport } from '../netlink/socket';
import { RTM, rtgenmsg, NETNSA, AF_UNSPEC } from '../netlink/rtnl';
import { decodeAttrs, encodeAttrs } from '../netlink/attrs';
import { native } from '../native';
import { TsnetError, contextualize, hasCode, invalid, isExists, isNotFound, withContextSync } from '../errors';
import {
  childProcesses,
  cookieOf,
  createNetns,
  socketHere,
  socketIn,
  spawnIn,
  spawnSyncIn,
  stillOurs,
  type NsFd,
} from './inside';
import { handles, kernelRef, live, openInside, type HandleState } from './internal';
import { NETNS_RUN_DIR, parseRef } from './ref';

/** Where iproute2 keeps named namespaces (NETNS_RUN_DIR). */
export { NETNS_RUN_DIR };

/** Receive room of the nf_tables socket: a dump of a big table, or a batch's error replies. */
const NETFILTER_BUFFER = 8 << 20;

export class NetNs {
  private sock?: NetlinkSocket;
  private nfsock?: NetlinkSocket;

  private constructor(
    /** The name under /run/netns, when it has one. */
    readonly name: string | undefined,
    /** The path the handle was opened from (/run/netns/NAME, /proc/PID/ns/net, ...). */
    readonly path: string,
    /** Whether this is the namespace the process runs in (the default handle, `current()`). */
    readonly isCurrent: boolean,
    st: HandleState,
  ) {
    handles.set(this, st);
  }

  /** @internal */
  static of(name: string | undefined, p: string, isCurrent: boolean, st: HandleState): NetNs {
    return new NetNs(name, p, isCurrent, st);
  }

  /** "namespace c1", "namespace /proc/42/ns/net", or "the current namespace": for error messages. */
  get label(): string {
    if (this.isCurrent) return 'the current namespace';
    return `namespace ${this.name ?? this.path}`;
  }

  /** Whether close() was called. */
  get closed(): boolean {
    return handles.get(this)!.closed;
  }

  private state(doing?: string): HandleState {
    return live(this, doing);
  }

  /** The namespace's identity: the nsfs inode (what `ls -i /run/netns/NAME` and `lsns` show). */
  get inode(): number {
    return this.state().ino;
  }

  /** The rtnetlink socket of this namespace, created inside it on first use. */
  get nl(): NetlinkSocket {
    this.state();
    this.sock ??= this.openNetlink(NETLINK_ROUTE);
    return this.sock;
  }

  /**
   * The NETLINK_NETFILTER socket of this namespace (nf_tables batches and
   * dumps), created inside it on first use and kept: closing one makes the
   * kernel wait for the RCU grace period of the last deletion.
   */
  get netfilter(): NetlinkSocket {
    this.state();
    this.nfsock ??= this.openNetlink(NETLINK_NETFILTER, NETFILTER_BUFFER);
    return this.nfsock;
  }

  /** A new netlink socket of `protocol` (e.g. NETLINK_NETFILTER), created inside this namespace; the caller closes it. */
  openNetlink(protocol: number, buffer?: number): NetlinkSocket {
    const st = this.state(`opening a netlink socket in ${this.label}`);
    const c = native().constants;
    const fd = withContextSync(`opening a netlink socket in ${this.label}`, () =>
      st.fd ? socketIn(st.fd, c.AF_NETLINK, c.SOCK_RAW, protocol) : socketHere(c.AF_NETLINK, c.SOCK_RAW, protocol),
    );
    return new NetlinkSocket(nativeTransport(fd, buffer));
  }

  /**
   * open(2) of a regular file inside this namespace; the caller closes the
   * fd (fs.closeSync). For /proc/sys/net/... and /proc/net/... (read as
   * /proc/thread-self/net/...), whose contents depend on the namespace of the
   * thread that opens them. `mode` applies with O_CREAT, as fs.openSync's.
   * /proc/PID/net is refused: it is that process's namespace, not this one.
   */
  openFile(file: string, flags: number = fs.constants.O_RDONLY, mode = 0o666): number {
    return withContextSync(`opening ${String(file)} in ${this.label}`, () => openInside(this, file, flags, mode));
  }

  /** Starts a child process inside this namespace: `ip netns exec NAME CMD ...` (argument arrays, never a shell). */
  spawn(cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    const st = this.state(`spawning ${String(cmd)} in ${this.label}`);
    return st.fd ? spawnIn(st.fd, this.label, cmd, args, opts) : childProcesses().spawn(cmd, argList(cmd, args), opts);
  }

  /** Runs a child process inside this namespace to completion. */
  spawnSync(cmd: string, args: readonly string[] = [], opts: SpawnSyncOptions = {}): SpawnSyncReturns<Buffer | string> {
    const st = this.state(`running ${String(cmd)} in ${this.label}`);
    return st.fd
      ? spawnSyncIn(st.fd, this.label, cmd, args, opts)
      : childProcesses().spawnSync(cmd, argList(cmd, args), opts);
  }

  /**
   * Closes the netlink socket and the namespace fd; every later operation on
   * this handle fails with EBADF. Closing twice is a no-op, and so is closing
   * `current()`, which is shared by the whole process.
   */
  close(): void {
    if (this.isCurrent) return;
    const st = handles.get(this)!;
    if (st.closed) return;
    st.closed = true;
    this.sock?.close();
    this.nfsock?.close();
    // An fd closed behind our back may now be someone else's: close only what is still ours.
    if (st.fd && stillOurs(st.fd, st.dev, st.ino)) fs.closeSync(st.fd.fd);
  }
}

/** Spawn arguments as child_process takes them, refused (not split into characters) when they are not an array of strings. */
function argList(cmd: string, args: readonly string[]): string[] {
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string'))
    throw invalid(`spawning ${String(cmd)}: args must be an array of strings`);
  return [...args];
}

let currentHandle: NetNs | undefined;

/**
 * The namespace this process runs in (the default handle). It holds no fd
 * (the kernel is told "the namespace of this process" where it needs one),
 * and close() on it is a no-op.
 */
export function current(): NetNs {
  if (!currentHandle) {
    const st = fs.statSync('/proc/self/ns/net');
    currentHandle = NetNs.of(undefined, '/proc/self/ns/net', true, {
      closed: false,
      dev: st.dev,
      ino: st.ino,
      label: 'the current namespace',
    });
  }
  return currentHandle;
}

/** Checks a namespace name the way a file name under /run/netns must be. */
export function validateName(name: string): void {
  if (
    typeof name !== 'string' ||
    !name ||
    name === '.' ||
    name === '..' ||
    name.includes('/') ||
    name.includes('\0') ||
    Buffer.byteLength(name) > 255
  ) {
    throw invalid(
      `invalid namespace name ${JSON.stringify(name)}: must be a plain file name (no '/'), at most 255 bytes`,
    );
  }
}

function adopt(fd: number, name: string | undefined, p: string, what: string): NetNs {
  try {
    const st = fs.fstatSync(fd);
    const type = native().nsType(fd);
    if (type !== native().constants.CLONE_NEWNET)
      throw new TsnetError(`${what} is not a network namespace (${p})`, { code: 'EINVAL' });
    const label = `namespace ${name ?? p}`;
    return NetNs.of(name, p, false, {
      closed: false,
      fd: { fd, cookie: cookieOf(fd) },
      dev: st.dev,
      ino: st.ino,
      label,
    });
  } catch (err) {
    fs.closeSync(fd);
    // A plain file at /run/netns/NAME (left by a crashed `ip netns add`) is not a namespace.
    if (hasCode(err, 'ENOTTY', 'EINVAL') && !(err instanceof TsnetError))
      throw new TsnetError(`${what} is not a network namespace (${p})`, { code: 'EINVAL' });
    throw err;
  }
}

function openAt(p: string, name: string | undefined, what: string): NetNs {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY);
  } catch (err) {
    if (hasCode(err, 'ENOENT')) throw new TsnetError(`${what} does not exist (${p})`, { code: 'ENOENT' });
    throw contextualize(`opening ${what}`, err);
  }
  return adopt(fd, name, p, what);
}

/** Opens a named namespace (/run/netns/NAME), whoever created it. */
export function open(name: string): NetNs {
  validateName(name);
  return openAt(path.join(NETNS_RUN_DIR, name), name, `namespace ${name}`);
}

/** Opens the network namespace of a process (/proc/PID/ns/net), as Docker names a container's. */
export function openPid(pid: number): NetNs {
  if (!Number.isInteger(pid) || pid <= 0) throw invalid(`invalid pid ${pid}`);
  return openAt(`/proc/${pid}/ns/net`, undefined, `network namespace of pid ${pid}`);
}

/** Opens a namespace by path (a bind mount, /proc/PID/ns/net, /proc/PID/task/TID/ns/net ...). */
export function openPath(p: string): NetNs {
  if (typeof p !== 'string' || !p.startsWith('/'))
    throw invalid(`invalid namespace path ${JSON.stringify(p)}: must be absolute`);
  return openAt(p, undefined, `namespace ${p}`);
}

/**
 * Resolves what a user typed as a namespace reference: a name under
 * /run/netns, `pid:N` or a bare number for a process, or an absolute path.
 */
export function resolve(ref: string): NetNs {
  const r = parseRef(ref);
  return r.kind === 'pid' ? openPid(r.pid) : r.kind === 'path' ? openPath(r.path) : open(r.name);
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
 * Creates a named namespace: `ip netns add NAME`. With `existOk`, an
 * existing namespace of that name is opened instead (idempotent add).
 * Leaves nothing behind on failure. Synchronous: while the kernel tears down
 * namespaces it holds the locks a new one needs, and the caller waits (tens
 * of milliseconds after hundreds of veth pairs went), as `ip netns add` does.
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
    if (isExists(err)) {
      if (opts.existOk) return open(name);
      throw new TsnetError(`creating namespace ${name}: it already exists (${p})`, { code: 'EEXIST' });
    }
    throw contextualize(`creating namespace ${name}`, err);
  }
  let fd: number;
  try {
    fd = createNetns(p);
  } catch (err) {
    fs.rmSync(p, { force: true });
    throw contextualize(`creating namespace ${name}`, err);
  }
  return adopt(fd, name, p, `namespace ${name}`);
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
    if (isNotFound(err)) return [];
    throw contextualize(`listing ${NETNS_RUN_DIR}`, err);
  }
}

/**
 * The id by which namespace `of` is known inside namespace `h` (the
 * `link-netnsid` of `ip link`), or undefined when none is assigned:
 * RTM_GETNSID with NETNSA_FD, as `ip netns list-id` does.
 */
export async function nsid(h: NetNs, of: NetNs): Promise<number | undefined> {
  const where = `looking up the id of ${of.label} in ${h.label}`;
  const sock = h.nl;
  const of_ = kernelRef(of, where);
  let replies;
  try {
    const payload = Buffer.concat([rtgenmsg.encode({ family: AF_UNSPEC }), encodeAttrs(NETNSA, of_.ref)]);
    replies = await sock.request(RTM.GETNSID, 0, payload);
  } finally {
    of_.release();
  }
  for (const m of replies) {
    const id = decodeAttrs(NETNSA, m.payload.subarray(rtgenmsg.size)).nsid as number | undefined;
    if (id !== undefined && id >= 0) return id;
  }
  return undefined;
}

export type { NsFd };
