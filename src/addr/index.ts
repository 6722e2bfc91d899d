/** Addresses: `ip addr add|replace|del|show`, over RTM_NEWADDR / RTM_DELADDR / RTM_GETADDR. */
import { decodeAttrs, encodeAttrs } from '../netlink/attrs';
import { NLM_F } from '../netlink/socket';
import { AF_INET, AF_INET6, AF_UNSPEC, IFA, IFA_F, RTM, RT_SCOPE, ifaddrmsg } from '../netlink/rtnl';
import { TsnetError, hasCode, withContext } from '../errors';
import { get as getLink, mustGet, list as listLinks, type LinkRef } from '../link';
import { parseCidr, formatCidr, type Cidr, type Family } from './cidr';
import type { NetNs } from '../netns';
import { rtnl, labelOf } from '../netns/internal';

export * from './cidr';

export interface Addr {
  /** ifindex and name of the interface holding the address. */
  index: number;
  dev: string;
  family: Family;
  address: string;
  prefix: number;
  /** "10.88.0.2/16" */
  cidr: string;
  scope: 'global' | 'link' | 'host' | 'site' | number;
  flags: number;
  /** IPv6 duplicate address detection still running (IFA_F_TENTATIVE). */
  tentative: boolean;
}

export interface AddrOptions {
  /** IPv6: skip duplicate address detection (IFA_F_NODAD), so the address is usable at once. */
  noDad?: boolean;
}

const SCOPES: Record<number, Addr['scope']> = { 0: 'global', 200: 'site', 253: 'link', 254: 'host' };

function addrMsg(index: number, c: Cidr, opts: AddrOptions): Buffer {
  const flags = opts.noDad && c.family === 6 ? IFA_F.NODAD : 0;
  const hdr = ifaddrmsg.encode({
    family: c.family === 4 ? AF_INET : AF_INET6,
    prefixlen: c.prefix,
    flags,
    index,
    scope: c.address.startsWith('127.') || c.address === '::1' ? RT_SCOPE.HOST : RT_SCOPE.UNIVERSE,
  });
  // IPv4 carries both IFA_LOCAL (our address) and IFA_ADDRESS (the peer; equal on broadcast links), as iproute2 sends.
  return Buffer.concat([
    hdr,
    encodeAttrs(IFA, { local: c.family === 4 ? c.address : undefined, address: c.address, flags: flags || undefined }),
  ]);
}

async function change(
  h: NetNs,
  verb: string,
  type: number,
  flags: number,
  cidr: string,
  dev: LinkRef,
  opts: AddrOptions = {},
): Promise<void> {
  const c = parseCidr(cidr);
  const link = await mustGet(h, dev);
  await withContext(`${verb} address ${formatCidr(c)} on ${link.name} in ${labelOf(h)}`, () =>
    rtnl(h).request(type, flags, addrMsg(link.index, c, opts)),
  );
}

/** `ip addr add CIDR dev DEV`: fails with EEXIST when the address is already there. */
export const add = (h: NetNs, cidr: string, dev: LinkRef, opts?: AddrOptions) =>
  change(h, 'adding', RTM.NEWADDR, NLM_F.CREATE | NLM_F.EXCL, cidr, dev, opts);

/** `ip addr replace CIDR dev DEV`: adds, or updates in place (idempotent). */
export const replace = (h: NetNs, cidr: string, dev: LinkRef, opts?: AddrOptions) =>
  change(h, 'replacing', RTM.NEWADDR, NLM_F.CREATE | NLM_F.REPLACE, cidr, dev, opts);

/** `ip addr del CIDR dev DEV`. An address that is not there is not an error (returns false). */
export async function del(h: NetNs, cidr: string, dev: LinkRef): Promise<boolean> {
  try {
    await change(h, 'deleting', RTM.DELADDR, 0, cidr, dev);
    return true;
  } catch (err) {
    if (hasCode(err, 'EADDRNOTAVAIL')) return false;
    throw err;
  }
}

/** `ip addr show [dev DEV]`, optionally one family. */
export async function list(h: NetNs, filter: { dev?: LinkRef; family?: Family } = {}): Promise<Addr[]> {
  // One device: look it up alone (a dump of every link costs O(links) per call, felt on a node with hundreds of veths).
  const one = filter.dev === undefined ? undefined : await getLink(h, filter.dev);
  if (filter.dev !== undefined && !one)
    throw new TsnetError(`interface ${filter.dev} not found in ${labelOf(h)}`, { code: 'ENODEV' });
  const names = new Map((one ? [one] : await listLinks(h)).map((l) => [l.index, l.name]));
  const want = one?.index;
  const family = filter.family === 4 ? AF_INET : filter.family === 6 ? AF_INET6 : AF_UNSPEC;
  return withContext(`listing addresses in ${labelOf(h)}`, async () => {
    const msgs = await rtnl(h).dump(RTM.GETADDR, ifaddrmsg.encode({ family }));
    const out: Addr[] = [];
    for (const m of msgs) {
      if (m.type !== RTM.NEWADDR) continue;
      const hdr = ifaddrmsg.decode(m.payload);
      if (want !== undefined && hdr.index !== want) continue;
      const a = decodeAttrs(IFA, m.payload.subarray(ifaddrmsg.size));
      const address = (a.local ?? a.address) as string;
      const flags = (a.flags as number | undefined) ?? hdr.flags;
      out.push({
        index: hdr.index,
        dev: names.get(hdr.index) ?? String(hdr.index),
        family: hdr.family === AF_INET ? 4 : 6,
        address,
        prefix: hdr.prefixlen,
        cidr: `${address}/${hdr.prefixlen}`,
        scope: SCOPES[hdr.scope] ?? hdr.scope,
        flags,
        tentative: (flags & IFA_F.TENTATIVE) !== 0,
      });
    }
    return out;
  });
}
