import test from 'ava';
import { decodeAttrs, encodeAttrs, ipToBuffer, bufferToIp, struct, NLA_F_NESTED } from '../../src/netlink/attrs';
import { IFLA, ifinfomsg } from '../../src/netlink/rtnl';

test('ifinfomsg is 16 bytes and round-trips, with a signed index', (t) => {
  t.is(ifinfomsg.size, 16);
  const b = ifinfomsg.encode({ family: 7, index: -1, flags: 0x10043, change: 1 });
  t.is(b.length, 16);
  t.deepEqual(ifinfomsg.decode(b), { family: 7, type: 0, index: -1, flags: 0x10043, change: 1 });
});

test('struct pads to 4 bytes', (t) => {
  t.is(struct<{ a: number }>([['a', 'u8']]).size, 4);
});

test('attributes are 4-byte aligned with a length that excludes padding', (t) => {
  const b = encodeAttrs(IFLA, { ifname: 'eth0' });
  // nla_len = 4 + "eth0\0" = 9, padded to 12
  t.is(b.length, 12);
  t.is(b.readUInt16LE(0), 9);
  t.is(b.readUInt16LE(2), 3);
  t.is(b.toString('utf8', 4, 8), 'eth0');
});

test('veth linkinfo encodes the peer as ifinfomsg + IFLA attrs and decodes back', (t) => {
  const obj = {
    ifname: 'vh1',
    mtu: 1400,
    linkinfo: {
      kind: 'veth',
      data: {
        peer: {
          header: { family: 0, type: 0, index: 0, flags: 0, change: 0 },
          attrs: { ifname: 'eth0', net_ns_fd: 7 },
        },
      },
    },
  };
  const round = decodeAttrs(IFLA, encodeAttrs(IFLA, obj));
  t.like(round, { ifname: 'vh1', mtu: 1400 });
  t.deepEqual((round.linkinfo as any).data.peer.attrs, { ifname: 'eth0', net_ns_fd: 7 });
});

test('bridge linkinfo data is chosen by kind; unknown attrs are kept by number', (t) => {
  const enc = encodeAttrs(IFLA, { linkinfo: { kind: 'bridge', data: { stp_state: 0, vlan_filtering: 1 } } });
  const dec = decodeAttrs(IFLA, Buffer.concat([enc, Buffer.from([8, 0, 99, 0, 1, 2, 3, 4])]));
  t.deepEqual(dec.linkinfo, { kind: 'bridge', data: { stp_state: 0, vlan_filtering: 1 } });
  t.deepEqual(dec.unknown?.[99], Buffer.from([1, 2, 3, 4]));
});

test('IFLA_PROTINFO carries NLA_F_NESTED, as the bridge code requires', (t) => {
  const b = encodeAttrs(IFLA, { protinfo: { mode: 1 } });
  t.is(b.readUInt16LE(2), 12 | NLA_F_NESTED);
});

test('a truncated attribute stops decoding instead of misreading', (t) => {
  const b = encodeAttrs(IFLA, { mtu: 1500, ifname: 'x' });
  t.deepEqual(decodeAttrs(IFLA, b), { ifname: 'x', mtu: 1500 });
  t.deepEqual(decodeAttrs(IFLA, b.subarray(0, b.length - 2)), { ifname: 'x' });
});

test('IPv4 and IPv6 addresses round-trip, IPv6 compressed as RFC 5952 says', (t) => {
  t.deepEqual([...ipToBuffer('10.88.0.2')], [10, 88, 0, 2]);
  t.is(bufferToIp(ipToBuffer('fd00:0:0:0:0:0:0:1')), 'fd00::1');
  t.is(bufferToIp(ipToBuffer('2001:db8::')), '2001:db8::');
  t.is(bufferToIp(ipToBuffer('::')), '::');
  t.is(bufferToIp(ipToBuffer('1:0:0:2:0:0:0:3')), '1:0:0:2::3');
  t.is(bufferToIp(ipToBuffer('1:0:2:3:4:5:6:7')), '1:0:2:3:4:5:6:7');
  t.is(bufferToIp(ipToBuffer('::ffff:10.0.0.1')), '::ffff:a00:1');
});
