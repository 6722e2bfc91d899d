/**
 * What a namespace handle holds, kept out of the public API: the handle's fd
 * and identity are never handed out, only used here and in ./index.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NotAHandle, TsnetError } from '../errors';
import type { NetlinkSocket } from '../netlink/socket';
import { checkedDup, closeFd, helperTid, openIn, socketHere, socketIn, type NsFd } from './inside';
import { native } from '../native';
import type { NetNs } from './index';

export interface HandleState {
  closed: boolean;
  /** The namespace fd and its identity; absent for current() (the process's own namespace). */
  fd?: NsFd;
  dev: number;
  ino: number;
  label: string;
}

export const handles = new WeakMap<NetNs, HandleState>();

/** What a value that is not a handle looks like, for an error message. */
function shown(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object')
    return `an object (${Object.keys(v as object).length ? `{${Object.keys(v as object).join(', ')}}` : '{}'})`;
  return `${typeof v} ${JSON.stringify(v) ?? String(v)}`;
}

/** The state of an open handle; a closed one is refused with EBADF, naming it, and something that is not a handle with EINVAL. */
export function live(h: NetNs, doing?: string): HandleState {
  const pre = doing ? `${doing}: ` : '';
  const st = typeof h === 'object' && h !== null ? handles.get(h) : undefined;
  if (!st)
    throw new NotAHandle(`${pre}expected a namespace handle (netns.open, add, current make one), got ${shown(h)}`);
  if (st.closed)
    throw new TsnetError(`${pre}the handle for ${h.label} is closed (EBADF): open the namespace again`, {
      code: 'EBADF',
    });
  return st;
}

/** A handle's label for messages; never throws, whatever the value (live() reports a value that is no handle). */
export function labelOf(h: NetNs | null | undefined): string {
  return typeof h === 'object' && h !== null && handles.has(h) ? h.label : 'a value that is not a namespace handle';
}

/** The rtnetlink socket of `h`, which must be a handle (a library call's argument: anything else is EINVAL, not a TypeError). */
export function rtnl(h: NetNs): NetlinkSocket {
  live(h);
  return h.nl;
}

/** The nf_tables socket of `h`, checked as rtnl's. */
export function nfnl(h: NetNs): NetlinkSocket {
  live(h);
  return h.netfilter;
}

/**
 * How the kernel is told "this namespace" in a netlink attribute
 * (IFLA_NET_NS_FD / IFLA_NET_NS_PID, NETNSA_FD / NETNSA_PID): a private
 * duplicate of the handle's fd, checked after the dup (another thread may
 * swap what the handle's own number refers to at any moment), or, for the
 * current namespace, this process's pid. `release` closes the duplicate once
 * the request is sent.
 */
export function kernelRef(h: NetNs, doing: string): { ref: { fd: number } | { pid: number }; release(): void } {
  const st = live(h, doing);
  if (!st.fd) return { ref: { pid: process.pid }, release: () => undefined };
  const fd = checkedDup(st.fd, `${doing}: the handle for ${h.label}`);
  let open = true;
  return {
    ref: { fd },
    release: () => {
      if (open) closeFd(fd);
      open = false;
    },
  };
}

/**
 * The file to open inside a namespace, normalised (`/proc//net`, `/proc/./net`,
 * `/proc/self/../self/net` would otherwise slip past), with /proc/net and
 * /proc/self/net mapped to the opener's own thread: they follow the process's
 * main thread, which is never inside the namespace. /proc/PID/net (and a
 * task's) names another process's namespace, not the handle's: refused.
 */
export function threadPath(file: string): string {
  if (typeof file !== 'string' || !file.startsWith('/') || file.includes('\0'))
    throw new TsnetError(`invalid file ${JSON.stringify(file)}: must be an absolute path`, { code: 'EINVAL' });
  const p = path.posix.normalize(file);
  if (/^\/proc\/(\d+|self|thread-self)\/task\/\d+\/net(\/|$)/.test(p) || /^\/proc\/\d+\/net(\/|$)/.test(p))
    throw new TsnetError(
      `${file} is the network data of a process's own namespace, not the handle's: open /proc/net/... instead`,
      { code: 'EINVAL' },
    );
  return p.replace(/^\/proc\/(self\/)?net(\/|$)/, '/proc/thread-self/net$2');
}

/** open(2) of `file` inside the namespace of `h`; failures are the system's own errors (callers add context). */
export function openInside(h: NetNs, file: string, flags: number, mode = 0o666): number {
  const st = live(h);
  if (!Number.isInteger(flags) || !Number.isInteger(mode))
    throw new TsnetError(`opening ${String(file)}: flags and mode must be integers`, { code: 'EINVAL' });
  const p = threadPath(file);
  if (!st.fd) return fs.openSync(p, flags, mode);
  const fd = openIn(st.fd, p, flags, mode);
  // A symlink on the way (/proc/self/root/proc/net/..., a link of one's own) can still reach a process's own
  // network files: what was opened must be the helper thread's, or not under /proc/PID/net at all.
  const where = fs.readlinkSync(`/proc/self/fd/${fd}`);
  const net = /^\/proc\/\d+\/(?:task\/(\d+)\/)?net(?:\/|$)/.exec(where);
  if (net && net[1] !== String(helperTid())) {
    fs.closeSync(fd);
    throw new TsnetError(
      `${file} leads to ${where}, the network data of a process's own namespace, not the handle's: open /proc/net/... instead`,
      { code: 'EINVAL' },
    );
  }
  return fd;
}

/** An AF_PACKET SOCK_DGRAM socket inside the namespace of `h`, for sending only (protocol 0: it receives nothing); closed with closeFd. */
export function packetSocket(h: NetNs): number {
  const st = live(h);
  const c = native().constants;
  return st.fd ? socketIn(st.fd, c.AF_PACKET, c.SOCK_DGRAM, 0) : socketHere(c.AF_PACKET, c.SOCK_DGRAM, 0);
}
