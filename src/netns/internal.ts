/**
 * What a namespace handle holds, kept out of the public API: the handle's fd
 * and identity are never handed out, only used here and in ./index.ts.
 */
import * as fs from 'node:fs';
import { TsnetError } from '../errors';
import { checkIdentity, openIn, type NsFd } from './inside';
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

/** The state of an open handle; a closed one (or something that is not a handle) is refused with EBADF, naming it. */
export function live(h: NetNs, doing?: string): HandleState {
  const pre = doing ? `${doing}: ` : '';
  const st = handles.get(h);
  if (!st)
    throw new TsnetError(`${pre}${String(h)} is not a namespace handle (netns.open, add, current make them)`, {
      code: 'EINVAL',
    });
  if (st.closed)
    throw new TsnetError(`${pre}the handle for ${h.label} is closed (EBADF): open the namespace again`, {
      code: 'EBADF',
    });
  return st;
}

/**
 * How the kernel is told "this namespace" in a netlink attribute
 * (IFLA_NET_NS_FD / IFLA_NET_NS_PID, NETNSA_FD / NETNSA_PID): the handle's fd,
 * checked right now against its identity so a reused number is never sent,
 * or, for the current namespace, this process's pid.
 */
export function kernelRef(h: NetNs, doing: string): { fd: number } | { pid: number } {
  const st = live(h, doing);
  if (!st.fd) return { pid: process.pid };
  checkIdentity(st.fd, `${doing}: the handle for ${h.label}`);
  return { fd: st.fd.fd };
}

/** /proc/net and /proc/self/net follow the process's main thread; inside a namespace the file must be reached through the opener's own thread. */
function threadPath(file: string): string {
  return file.replace(/^\/proc\/(self\/)?net(\/|$)/, '/proc/thread-self/net$2');
}

/** open(2) of `file` inside the namespace of `h`; failures are the system's own errors (callers add context). */
export function openInside(h: NetNs, file: string, flags: number): number {
  const st = live(h);
  const p = threadPath(file);
  return st.fd ? openIn(st.fd, p, flags) : fs.openSync(p, flags);
}
