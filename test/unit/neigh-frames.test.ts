import test from 'ava';
import { garp, unsolicitedNa } from '../../src/neigh/frames';

/** The Internet checksum over `b`, as a receiver checks it: 0 when the packet's own checksum is right. */
function verify(parts: Buffer[]): number {
  let sum = 0;
  const all = Buffer.concat(parts);
  for (let i = 0; i + 1 < all.length; i += 2) sum += all.readUInt16BE(i);
  if (all.length % 2) sum += all[all.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

test('gratuitous ARP: an Ethernet/IPv4 request with sender and target address both the announced one', (t) => {
  const b = garp('02:42:ac:11:00:02', '10.88.0.7');
  t.is(
    b.toString('hex'),
    '0001' + '0800' + '06' + '04' + '0001' + '0242ac110002' + '0a580007' + '000000000000' + '0a580007',
  );
});

test('unsolicited NA: IPv6 to ff02::1, hop limit 255, Override set and Solicited not, target and its link-layer option, a checksum that verifies', (t) => {
  const p = unsolicitedNa('02:42:ac:11:00:02', 'fd00::7');
  t.is(p.length, 72);
  t.is(p[0]! >> 4, 6, 'IPv6');
  t.is(p.readUInt16BE(4), 32, 'payload length');
  t.is(p[6], 58, 'ICMPv6');
  t.is(p[7], 255, 'hop limit 255');
  t.is(p.subarray(8, 24).toString('hex'), 'fd000000000000000000000000000007', 'from the address itself');
  t.is(p.subarray(24, 40).toString('hex'), 'ff020000000000000000000000000001', 'to all nodes');
  const icmp = p.subarray(40);
  t.is(icmp[0], 136, 'neighbour advertisement');
  t.is(icmp.readUInt32BE(4), 0x20000000, 'R=0 S=0 O=1');
  t.is(icmp.subarray(8, 24).toString('hex'), 'fd000000000000000000000000000007', 'target');
  t.is(icmp.subarray(24).toString('hex'), '02010242ac110002', 'target link-layer address option');
  const pseudo = Buffer.alloc(40);
  p.copy(pseudo, 0, 8, 40);
  pseudo.writeUInt32BE(icmp.length, 32);
  pseudo[39] = 58;
  t.is(verify([pseudo, icmp]), 0, 'the checksum verifies over the pseudo-header');
});
