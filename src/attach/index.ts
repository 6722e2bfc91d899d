/**
 * Putting a namespace on a bridge the way Docker's bridge driver does (and
 * the operator's hand-typed sequence in CONTEXT.md section 1): a veth whose
 * host end joins the bridge and whose other end is created inside the
 * namespace as `eth0`, an address, `lo` up, a default route via the gateway.
 */
import { createHash } from 'node:crypto';
import * as link from '../link';
import * as addr from '../addr';
import * as route from '../route';
import * as bridge from '../bridge';
import * as neigh from '../neigh';
import * as netns from '../netns';
import { TsnetError, hasCode } from '../errors';
import { labelOf } from '../netns/internal';

export interface AttachOptions {
  bridge: string;
  /** Address inside the namespace, CIDR (10.88.0.2/16). */
  address: string;
  /** Default gateway. Default: the bridge's own address in the same subnet, if it has one. */
  gateway?: string;
  /** Interface name inside the namespace (default eth0). */
  ifname?: string;
  /** Host-side name (default: derived from the namespace and ifname, so a repeat attach finds it). */
  hostIfname?: string;
  /** Default: the bridge's MTU. */
  mtu?: number;
  mac?: string;
  hairpin?: boolean;
}

export interface Attachment {
  hostIfname: string;
  ifname: string;
  address: string;
  gateway?: string;
  mac?: string;
}

/** A host-side name that is the same for the same namespace + ifname, and unlikely to collide. */
export function hostIfnameFor(ns: netns.NetNs, ifname: string): string {
  return `vt${createHash('sha256').update(`${ns.inode}/${ifname}`).digest('hex').slice(0, 11)}`;
}

/**
 * `tsnet attach NS --bridge BR --address CIDR`. Idempotent: attaching the same
 * namespace interface to the same bridge again only re-asserts address and
 * route. On failure nothing it created is left behind.
 */
export async function attach(host: netns.NetNs, ns: netns.NetNs, o: AttachOptions): Promise<Attachment> {
  const ifname = o.ifname ?? 'eth0';
  link.validateIfname(ifname);
  const cidr = addr.parseCidr(o.address);
  const hostIfname = o.hostIfname ?? hostIfnameFor(ns, ifname);
  link.validateIfname(hostIfname);

  const br = await link.mustGet(host, o.bridge);
  if (br.kind !== 'bridge')
    throw new TsnetError(`${o.bridge} in ${labelOf(host)} is a ${br.kind ?? 'device'}, not a bridge`, {
      code: 'EINVAL',
    });
  let gateway = o.gateway === undefined ? undefined : addr.parseIp(o.gateway).address;
  if (o.gateway === undefined) {
    const own = (await addr.list(host, { dev: br.index, family: cidr.family })).find((a) =>
      addr.contains(cidr, a.address),
    );
    gateway = own?.address;
  }

  const inside = await link.get(ns, ifname);
  let created = false;
  if (inside) {
    const hostEnd = await link.get(host, hostIfname);
    if (inside.kind !== 'veth' || !hostEnd || hostEnd.master !== br.index) {
      throw new TsnetError(
        `attaching ${labelOf(ns)} to ${o.bridge}: ${ifname} already exists in ${labelOf(ns)} and is not this attachment (detach it first)`,
        {
          code: 'EEXIST',
        },
      );
    }
  } else {
    await link.add(host, {
      kind: 'veth',
      name: hostIfname,
      master: br.index,
      mtu: o.mtu ?? br.mtu,
      up: true,
      peer: { name: ifname, netns: ns, mac: o.mac },
    });
    created = true;
  }
  try {
    if (o.hairpin !== undefined) await link.setBridgePort(host, hostIfname, { hairpin: o.hairpin });
    await link.setUp(ns, 'lo');
    await addr.replace(ns, o.address, ifname, { noDad: true });
    await link.setUp(ns, ifname);
    if (gateway) await route.replace(ns, { dst: 'default', via: gateway, dev: ifname });
    await announceWhenForwarding(host, hostIfname, ns, ifname, o.address);
  } catch (err) {
    if (created) await link.del(host, hostIfname);
    throw err;
  }
  const result: Attachment = { hostIfname, ifname, address: addr.formatCidr(cidr) };
  if (gateway) result.gateway = gateway;
  const mac = (await link.get(ns, ifname))?.mac;
  if (mac) result.mac = mac;
  return result;
}

/**
 * The address may have been another namespace's a moment ago: it is announced
 * once the port forwards. A bridge that is down, or runs STP (a port listens
 * and learns for ~30 s), does not hold the attach up: nothing is announced,
 * and the kernel's own probes settle the neighbours' entries.
 */
async function announceWhenForwarding(
  host: netns.NetNs,
  port: string,
  ns: netns.NetNs,
  ifname: string,
  address: string,
): Promise<void> {
  try {
    await bridge.waitForwarding(host, port, 1000);
  } catch (err) {
    if (hasCode(err, 'ETIMEDOUT')) return;
    throw err;
  }
  await neigh.announce(ns, ifname, [address]);
}

/**
 * `tsnet detach NS`: deletes the namespace's end, which takes the host end
 * with it, and the host's neighbour entries for its addresses at its MAC (the
 * next namespace to get one has another MAC). Idempotent.
 */
export async function detach(ns: netns.NetNs, ifname = 'eth0', host: netns.NetNs = netns.current()): Promise<boolean> {
  link.validateIfname(ifname);
  const l = await link.get(ns, ifname);
  if (!l) return false;
  if (l.kind !== 'veth')
    throw new TsnetError(`${ifname} in ${labelOf(ns)} is a ${l.kind ?? 'device'}, not a veth made by attach`, {
      code: 'EINVAL',
    });
  const mine = new Set((await addr.list(ns, { dev: l.index })).map((a) => a.address));
  const deleted = await link.del(ns, l.index);
  for (const n of await neigh.list(host))
    if (n.lladdr === l.mac && mine.has(n.address)) await neigh.del(host, n.index, n.address);
  return deleted;
}
