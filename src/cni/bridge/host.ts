/**
 * ADD on the host: the bridge (made when missing), the veth pair whose
 * container end is created inside the container as CNI_IFNAME, the gateway
 * addresses on the bridge with forwarding on, and the wait for the new
 * bridge port to forward.
 */
import * as addr from '../../addr';
import * as bridge from '../../bridge';
import * as spoofcheck from '../../bridge/spoofcheck';
import * as link from '../../link';
import * as sysctl from '../../sysctl';
import type { NetNs } from '../../netns';
import { CniError, CNI_ERR } from '../errors';
import type { IpConfig } from '../types';
import type { BridgeConf } from './config';

/** The bridge, then the veth pair on it: `hostIfname` on the host, `peer.name` inside `peer.netns`; returns the bridge. */
export async function plugVeth(
  host: NetNs,
  c: BridgeConf,
  hostIfname: string,
  peer: { name: string; netns: NetNs; mtu: number | undefined; mac: string | undefined },
): Promise<link.Link> {
  const br = await bridge.ensure(host, c.bridge, c.mtu === undefined ? {} : { mtu: c.mtu });
  if (c.promiscMode && !br.promisc) await link.set(host, br.index, { promisc: true });
  await link.add(host, {
    kind: 'veth',
    name: hostIfname,
    master: br.index,
    mtu: peer.mtu,
    up: true,
    peer,
  });
  if (c.hairpinMode) await link.setBridgePort(host, hostIfname, { hairpin: true });
  return br;
}

/** The gateway addresses IPAM handed out, with their subnets' prefixes: what the bridge carries (isGateway). */
export const gatewayCidrs = (ips: IpConfig[]): string[] =>
  ips.filter((a) => a.gateway).map((a) => `${a.gateway}/${addr.parseCidr(a.address).prefix}`);

/** Gateway addresses on the bridge (isGateway); forceAddress replaces a different address of the same subnet. */
export async function ensureGateway(host: NetNs, c: BridgeConf, brIndex: number, cidrs: string[]): Promise<void> {
  for (const cidr of cidrs) {
    const want = addr.parseCidr(cidr);
    const have = await addr.list(host, { dev: brIndex, family: want.family });
    const others = have.filter(
      (a) => a.address !== want.address && addr.contains(want, a.address) && a.scope !== 'link',
    );
    for (const o of others) {
      if (!c.forceAddress)
        throw new CniError(
          CNI_ERR.internal,
          `bridge ${c.bridge} already has address ${o.cidr} in ${want.network}/${want.prefix}, not gateway ${want.address}: set "forceAddress": true to replace it`,
        );
      await addr.del(host, o.cidr, brIndex);
    }
    if (!have.some((a) => a.address === want.address && a.prefix === want.prefix))
      await addr.replace(host, cidr, brIndex, { noDad: true });
    const key = want.family === 4 ? sysctl.keys.ipForward : sysctl.keys.ipv6Forwarding;
    if (sysctl.get(host, key).trim() !== '1') sysctl.set(host, key, 1);
  }
}

/** Waits until the bridge port `port` forwards (the container's first packet is not lost to the learning state); returns the port. */
export async function waitForwarding(host: NetNs, port: string, timeoutMs = 5000): Promise<link.Link> {
  try {
    return await bridge.waitForwarding(host, port, timeoutMs);
  } catch (err) {
    throw new CniError(CNI_ERR.internal, (err as Error).message);
  }
}

/** macspoofchk: frames from the container's port must carry the MAC its end was given. */
export async function guardPort(host: NetNs, ns: NetNs, ifname: string, hostIfname: string): Promise<void> {
  const mac = (await link.mustGet(ns, ifname)).mac;
  if (!mac) throw new CniError(CNI_ERR.internal, `macspoofchk: ${ifname} has no MAC to allow`);
  await spoofcheck.guard(host, hostIfname, mac);
}
