/**
 * What a user types to name a network namespace (`--netns`, `ip -n`): a
 * name under /run/netns, `pid:N` or a bare number for a process, or an
 * absolute path. Pure parsing, so a caller that only needs the file (to stat
 * its identity) loads no netlink code.
 */
import * as fs from 'node:fs';

export const NETNS_RUN_DIR = '/run/netns';

export type NetnsRef = { kind: 'name'; name: string } | { kind: 'pid'; pid: number } | { kind: 'path'; path: string };

export function parseRef(ref: string): NetnsRef {
  if (/^(pid:)?\d+$/.test(ref)) return { kind: 'pid', pid: Number(ref.replace(/^pid:/, '')) };
  if (ref.startsWith('/')) return { kind: 'path', path: ref };
  return { kind: 'name', name: ref };
}

/** The file a reference names (/run/netns/NAME, /proc/PID/ns/net, or the path itself); names are not validated here. */
export function refPath(r: NetnsRef): string {
  return r.kind === 'pid' ? `/proc/${r.pid}/ns/net` : r.kind === 'path' ? r.path : `${NETNS_RUN_DIR}/${r.name}`;
}

/** (st_dev, st_ino) of a namespace file, "DEV INO": equal for two processes exactly when they share the namespace. */
export function nsIdentity(file: string): string {
  const st = fs.statSync(file, { bigint: true });
  return `${st.dev} ${st.ino}`;
}

/** The identity ("DEV INO") of the namespace a reference names, as this process sees it; throws when it names nothing. */
export function refIdentity(ref: string): string {
  return nsIdentity(refPath(parseRef(ref)));
}
