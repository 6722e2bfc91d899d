/**
 * The announcements of an address on a new MAC, as bytes (pure: no socket):
 * a gratuitous ARP request (RFC 5227 "ARP Announcement": sender and target
 * protocol address both the address) and an unsolicited neighbour
 * advertisement (RFC 4861 7.2.6: to all nodes, Override set, Solicited not,
 * with the target link-layer address option). A receiver with an entry for
 * the address replaces its MAC (Linux: arp_process's is_garp override,
 * ndisc_recv_na's NEIGH_UPDATE_F_OVERRIDE), so a host that talked to the
 * address's previous owner reaches the new one at once.
 */
import { ipToBuffer } from '../netlink/attrs';

export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;
export const BROADCAST_MAC = Buffer.from('ffffffffffff', 'hex');
/** ff02::1 (all nodes) on Ethernet: 33:33 and the group's last 32 bits (RFC 2464). */
export const ALL_NODES_MAC = Buffer.from('333300000001', 'hex');
const ALL_NODES = ipToBuffer('ff02::1');

function macBytes(mac: string): Buffer {
  const b = Buffer.from(mac.replace(/:/g, ''), 'hex');
  if (b.length !== 6) throw new Error(`not a MAC: ${mac}`);
  return b;
}

/** The ARP payload (after the Ethernet header) announcing `ip` at `mac`: an ARP request for itself. */
export function garp(mac: string, ip: string): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16BE(1, 0); // hardware type: Ethernet
  b.writeUInt16BE(0x0800, 2); // protocol type: IPv4
  b.writeUInt8(6, 4);
  b.writeUInt8(4, 5);
  b.writeUInt16BE(1, 6); // ARPOP_REQUEST, as the kernel's own (arp_notify) and arping -U send
  macBytes(mac).copy(b, 8); // sender hardware address
  ipToBuffer(ip).copy(b, 14); // sender protocol address
  // target hardware address: zero (18..23)
  ipToBuffer(ip).copy(b, 24); // target protocol address: the same address
  return b;
}

/** The Internet checksum of `parts` (RFC 1071). */
function checksum(parts: Buffer[]): number {
  let sum = 0;
  for (const p of parts) {
    for (let i = 0; i + 1 < p.length; i += 2) sum += p.readUInt16BE(i);
    if (p.length % 2) sum += p[p.length - 1]! << 8;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** The IPv6 packet (after the Ethernet header) advertising `ip` at `mac` to all nodes, from `ip` itself, hop limit 255. */
export function unsolicitedNa(mac: string, ip: string): Buffer {
  const src = ipToBuffer(ip);
  const icmp = Buffer.alloc(32);
  icmp.writeUInt8(136, 0); // neighbour advertisement
  icmp.writeUInt32BE(0x20000000, 4); // R=0, S=0, O=1
  src.copy(icmp, 8); // target address
  icmp.writeUInt8(2, 24); // option: target link-layer address
  icmp.writeUInt8(1, 25); // length in units of 8 octets
  macBytes(mac).copy(icmp, 26);
  const pseudo = Buffer.alloc(40);
  src.copy(pseudo, 0);
  ALL_NODES.copy(pseudo, 16);
  pseudo.writeUInt32BE(icmp.length, 32);
  pseudo.writeUInt8(58, 39);
  icmp.writeUInt16BE(checksum([pseudo, icmp]), 2);
  const ip6 = Buffer.alloc(40);
  ip6.writeUInt32BE(0x60000000, 0); // version 6
  ip6.writeUInt16BE(icmp.length, 4); // payload length
  ip6.writeUInt8(58, 6); // next header: ICMPv6
  ip6.writeUInt8(255, 7); // hop limit: 255, or receivers drop it (RFC 4861 7.1.2)
  src.copy(ip6, 8);
  ALL_NODES.copy(ip6, 24);
  return Buffer.concat([ip6, icmp]);
}
