/**
 * Announcing a namespace's addresses from inside it, when they may have
 * belonged to another MAC a moment ago (a container's address reused by the
 * next container): the host's neighbour entry for the address would otherwise
 * keep the old MAC until the kernel re-probes, 5-10 s and more, and a silent
 * container (a server waiting for clients) stays unreachable meanwhile
 * (containernetworking/plugins#858, moby#36069; Docker's fix, moby#48808, is
 * the same announcement).
 */
import { parseCidr } from '../addr';
import { contextualize } from '../errors';
import { mustGet, type LinkRef } from '../link';
import { native } from '../native';
import type { NetNs } from '../netns';
import { labelOf, packetSocket } from '../netns/internal';
import { ALL_NODES_MAC, BROADCAST_MAC, ETH_P_ARP, ETH_P_IPV6, garp, unsolicitedNa } from './frames';

/**
 * Sends, from `dev` inside `h`, a gratuitous ARP for each IPv4 address and an
 * unsolicited neighbour advertisement for each IPv6 one (addresses as CIDRs
 * or plain). Once: callers send when the bridge port already forwards, so
 * nothing waits on a retry (the kernel re-probes if a frame is lost).
 */
export async function announce(h: NetNs, dev: LinkRef, addresses: readonly string[]): Promise<void> {
  const ips = addresses.map((a) => parseCidr(a.includes('/') ? a : `${a}/${a.includes(':') ? 128 : 32}`));
  if (!ips.length) return;
  const where = `announcing ${ips.map((c) => c.address).join(', ')} on ${String(dev)} in ${labelOf(h)}`;
  let fd: number | undefined;
  try {
    const l = await mustGet(h, dev);
    if (!l.mac) return; // no link-layer address: nothing to announce
    const n = native();
    fd = packetSocket(h);
    for (const c of ips) {
      if (c.family === 4) n.packetSend(fd, l.index, ETH_P_ARP, BROADCAST_MAC, garp(l.mac, c.address));
      else n.packetSend(fd, l.index, ETH_P_IPV6, ALL_NODES_MAC, unsolicitedNa(l.mac, c.address));
    }
  } catch (err) {
    throw contextualize(where, err);
  } finally {
    if (fd !== undefined) native().closeAsync(fd); // a packet socket's close waits for an RCU grace period (~10 ms)
  }
}
