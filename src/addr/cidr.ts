/** Address and prefix parsing, validated with `ip-address` before anything reaches the kernel. */
import type * as IpAddress from 'ip-address';
import { invalid } from '../errors';

/** The library, loaded when first needed: canonical IPv4 text (the CLI's common case) never needs it. */
let lib: typeof IpAddress | undefined;
function ipAddress(): typeof IpAddress {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a synchronous lazy load: parseIp is synchronous
  return (lib ??= require('ip-address') as typeof IpAddress);
}

export type Family = 4 | 6;

/** An address with its prefix length, as `ip addr` writes it: 10.88.0.2/16, fd00::2/64. */
export interface Cidr {
  family: Family;
  /** Canonical text of the address (10.88.0.2, fd00::2). */
  address: string;
  prefix: number;
  /** The network address (10.88.0.0, fd00::). */
  network: string;
}

/** A dotted quad already in canonical form (no leading zeros): the common case, checked without the library. */
const CANONICAL_V4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

export function parseIp(text: string): { family: Family; address: string } {
  if (typeof text === 'string' && CANONICAL_V4.test(text)) return { family: 4, address: text };
  if (typeof text === 'string' && !text.includes('/')) {
    const { Address4, Address6 } = ipAddress();
    if (Address4.isValid(text)) return { family: 4, address: new Address4(text).correctForm() };
    if (Address6.isValid(text) && !text.includes('%')) return { family: 6, address: new Address6(text).correctForm() };
  }
  throw invalid(`invalid IP address ${JSON.stringify(text)}`);
}

/**
 * Parses ADDRESS/PREFIX. `defaultPrefix` allows a bare address (a host route
 * or a /32 address); without it the prefix is required, so "10.0.0.1" given
 * where a CIDR is expected is an error, not a silent /32.
 */
export function parseCidr(text: string, opts: { defaultPrefix?: boolean } = {}): Cidr {
  if (typeof text !== 'string' || text.length === 0) throw invalid('empty CIDR');
  const [ip, len, extra] = text.split('/');
  if (
    extra !== undefined ||
    (len === undefined && !opts.defaultPrefix) ||
    (len !== undefined && !/^\d{1,3}$/.test(len))
  ) {
    throw invalid(`invalid CIDR ${JSON.stringify(text)}: expected ADDRESS/PREFIX, e.g. 10.88.0.2/16 or fd00::2/64`);
  }
  let parsed: { family: Family; address: string };
  try {
    parsed = parseIp(ip ?? '');
  } catch {
    throw invalid(`invalid CIDR ${JSON.stringify(text)}: ${JSON.stringify(ip)} is not an IPv4 or IPv6 address`);
  }
  const max = parsed.family === 4 ? 32 : 128;
  const prefix = len === undefined ? max : Number(len);
  if (prefix > max) throw invalid(`invalid CIDR ${JSON.stringify(text)}: prefix /${prefix} is longer than ${max} bits`);
  const network =
    parsed.family === 4
      ? v4Network(parsed.address, prefix)
      : new (ipAddress().Address6)(`${parsed.address}/${prefix}`).startAddress().correctForm();
  return { family: parsed.family, address: parsed.address, prefix, network };
}

/** The network of a canonical IPv4 address under `prefix`, in 32-bit arithmetic (a services table parses thousands). */
function v4Network(address: string, prefix: number): string {
  const n = address.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const net = (n & mask) >>> 0;
  return [24, 16, 8, 0].map((sh) => (net >>> sh) & 255).join('.');
}

export const formatCidr = (c: { address: string; prefix: number }): string => `${c.address}/${c.prefix}`;

/** `ip:port`, the IPv6 address in brackets (`[fd00::1]:80`), as iptables, nft and URLs write it. */
export const formatHostPort = (ip: string, port: number): string =>
  ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;

/** Whether `ip` lies inside the network of `cidr`. */
export function contains(cidr: Cidr, ip: string): boolean {
  const p = parseIp(ip);
  if (p.family !== cidr.family) return false;
  const { Address4, Address6 } = ipAddress();
  return p.family === 4
    ? new Address4(p.address).isInSubnet(new Address4(`${cidr.network}/${cidr.prefix}`))
    : new Address6(p.address).isInSubnet(new Address6(`${cidr.network}/${cidr.prefix}`));
}
