/**
 * Per-namespace sysctls: `ip netns exec NS sysctl -w net.…=V`.
 *
 * /proc/sys/net resolves to the network namespace of the thread that opens
 * the file, and an open file keeps acting there: the handle opens it inside
 * its namespace (src/netns/inside.ts), then it is read and written from here.
 * Only net.* keys are accepted: everything else is machine-wide, and tsnet
 * must never change the machine by accident.
 */
import * as fs from 'node:fs';
import { contextualize, invalid } from '../errors';
import { validateIfname } from '../link/ifname';
import type { NetNs } from '../netns';
import { openInside, labelOf } from '../netns/internal';

const SEGMENT = /^[A-Za-z0-9_-]+$/;

/**
 * A key as path segments under /proc/sys, e.g. ['net', 'ipv4', 'conf', 'eth0.100', 'rp_filter'].
 * The dotted form 'net.ipv4.ip_forward' is accepted for keys without an interface name in them.
 */
export type SysctlKey = string | readonly string[];

function toPath(key: SysctlKey): { path: string; name: string } {
  const parts = typeof key === 'string' ? key.split(/[./]/) : [...key];
  if (parts[0] !== 'net') throw invalid(`sysctl ${JSON.stringify(key)} refused: only net.* keys are per namespace`);
  parts.forEach((p, i) => {
    // Interface names (conf.<dev>, neigh.<dev>) may contain '.', which the array form allows.
    if (i === 3 && (parts[2] === 'conf' || parts[2] === 'neigh')) validateIfname(p);
    else if (!SEGMENT.test(p)) throw invalid(`invalid sysctl key ${JSON.stringify(key)}`);
  });
  return { path: `/proc/sys/${parts.join('/')}`, name: parts.join('.') };
}

function readAt0(fd: number): string {
  const buf = Buffer.alloc(4096);
  const n = fs.readSync(fd, buf, 0, buf.length, 0);
  return buf.toString('utf8', 0, n).trim();
}

/** Reads a net.* sysctl inside the namespace: `ip netns exec NS sysctl net.…`. */
export function get(h: NetNs, key: SysctlKey): string {
  const { path, name } = toPath(key);
  try {
    const fd = openInside(h, path, fs.constants.O_RDONLY);
    try {
      return readAt0(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    throw contextualize(`reading sysctl ${name} in ${labelOf(h)}`, err);
  }
}

/** Writes a net.* sysctl inside the namespace (`ip netns exec NS sysctl -w net.…=V`) and returns the value it had before. */
export function set(h: NetNs, key: SysctlKey, value: string | number): string {
  const { path, name } = toPath(key);
  if (!/^[\w.:\t -]*$/.test(String(value))) throw invalid(`invalid value ${JSON.stringify(value)} for sysctl ${name}`);
  try {
    const fd = openInside(h, path, fs.constants.O_RDWR);
    try {
      const old = readAt0(fd);
      if (old !== String(value)) fs.writeSync(fd, `${value}\n`, 0);
      return old;
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    throw contextualize(`setting sysctl ${name}=${value} in ${labelOf(h)}`, err);
  }
}

/** Common keys, named as operators know them. */
export const keys = {
  ipForward: ['net', 'ipv4', 'ip_forward'],
  ipv6Forwarding: ['net', 'ipv6', 'conf', 'all', 'forwarding'],
  routeLocalnet: (dev: string) => ['net', 'ipv4', 'conf', dev, 'route_localnet'],
  rpFilter: (dev: string) => ['net', 'ipv4', 'conf', dev, 'rp_filter'],
  acceptRa: (dev: string) => ['net', 'ipv6', 'conf', dev, 'accept_ra'],
  disableIpv6: (dev: string) => ['net', 'ipv6', 'conf', dev, 'disable_ipv6'],
} as const;
