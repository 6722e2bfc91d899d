/**
 * ADD inside the container: the checks made before anything exists (the
 * interface name is free, runtimeConfig.mac is a MAC), the routes the result
 * lists, and the interface's addresses and routes.
 */
import * as addr from '../../addr';
import * as link from '../../link';
import * as neigh from '../../neigh';
import * as route from '../../route';
import type { NetNs } from '../../netns';
import { CniError, CNI_ERR, reportInput } from '../errors';
import type { IpConfig, Result, RouteResult, RuntimeConfig } from '../types';
import type { BridgeConf } from './config';

/** Refuses an ADD whose interface already exists in the container or whose runtimeConfig.mac is not a MAC. */
export async function checkContainer(ns: NetNs, ifname: string, netnsPath: string, rc: RuntimeConfig): Promise<void> {
  if (await link.get(ns, ifname))
    throw new CniError(CNI_ERR.internal, `container interface ${ifname} already exists in ${netnsPath}`);
  if (rc.mac !== undefined) {
    try {
      link.validateMac(rc.mac);
    } catch (err) {
      reportInput(CNI_ERR.invalidConfig, 'runtimeConfig.mac', err);
    }
  }
}

/** The gateway IPAM gave for the first address of family `fam` that has one. */
const gatewayOf = (ips: IpConfig[], fam: 4 | 6): string | undefined =>
  ips.find((a) => addr.parseCidr(a.address).family === fam && a.gateway)?.gateway;

/** IPAM's routes, plus a default route per family via its gateway when the bridge is the default gateway (isDefaultGateway). */
export function containerRoutes(c: BridgeConf, ip: Result): RouteResult[] {
  const routes = [...(ip.routes ?? [])];
  if (c.isDefaultGateway) {
    for (const fam of [4, 6] as const) {
      const gw = gatewayOf(ip.ips!, fam);
      const dst = fam === 4 ? '0.0.0.0/0' : '::/0';
      if (gw && !routes.some((r) => r.dst === dst)) routes.push({ dst, gw });
    }
  }
  return routes;
}

/** Addresses, link up, routes (a route without a gateway goes via its family's gateway). */
export async function configureContainer(
  ns: NetNs,
  ifname: string,
  ips: IpConfig[],
  routes: RouteResult[],
  c: Pick<BridgeConf, 'enabledad'>,
): Promise<void> {
  await link.setUp(ns, 'lo');
  for (const a of ips) await addr.replace(ns, a.address, ifname, { noDad: !c.enabledad });
  await link.setUp(ns, ifname);
  for (const r of routes) {
    const fam = addr.parseCidr(r.dst).family;
    const via = r.gw ?? gatewayOf(ips, fam);
    await route.replace(ns, {
      dst: r.dst === '0.0.0.0/0' || r.dst === '::/0' ? 'default' : r.dst,
      dev: ifname,
      ...(via ? { via } : {}),
    });
  }
}

/**
 * Announces the container's addresses from inside it (a gratuitous ARP, an
 * unsolicited NA), so the host's neighbour entries follow an address reused
 * by a new container at once. Not an IPv6 address whose duplicate address
 * detection still runs (enabledad): a tentative address must not be
 * advertised (RFC 4862 5.4).
 */
export async function announceAddresses(
  ns: NetNs,
  ifname: string,
  ips: IpConfig[],
  c: Pick<BridgeConf, 'enabledad'>,
): Promise<void> {
  const ready = ips.map((a) => a.address).filter((a) => !(c.enabledad && a.includes(':')));
  await neigh.announce(ns, ifname, ready);
}
