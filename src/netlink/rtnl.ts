/**
 * rtnetlink message families as data: the fixed headers (ifinfomsg, ifaddrmsg,
 * rtmsg, rtgenmsg) and the attribute tables of <linux/if_link.h>,
 * <linux/if_addr.h>, <linux/rtnetlink.h> and <linux/net_namespace.h>.
 * Only wire layout lives here; meaning lives in src/link, src/addr, src/route.
 */
import {
  asciiz,
  be16,
  binary,
  flag,
  ipaddr,
  mac,
  nested,
  s32,
  selectBy,
  struct,
  u16,
  u32,
  u8,
  withHeader,
  type Table,
} from './attrs';

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;

export const RTM = {
  NEWLINK: 16,
  DELLINK: 17,
  GETLINK: 18,
  SETLINK: 19,
  NEWADDR: 20,
  DELADDR: 21,
  GETADDR: 22,
  NEWROUTE: 24,
  DELROUTE: 25,
  GETROUTE: 26,
  NEWNEIGH: 28,
  DELNEIGH: 29,
  GETNEIGH: 30,
  NEWNSID: 88,
  DELNSID: 89,
  GETNSID: 90,
  NEWNEXTHOP: 104,
  DELNEXTHOP: 105,
  GETNEXTHOP: 106,
} as const;

/** rtnetlink multicast groups (RTNLGRP_*), for a monitor: `ip monitor link route neigh`. */
export const RTNLGRP = { LINK: 1, NEIGH: 3, IPV4_ROUTE: 7, NEXTHOP: 32 } as const;

export const IFF = {
  UP: 0x1,
  BROADCAST: 0x2,
  LOOPBACK: 0x8,
  POINTOPOINT: 0x10,
  RUNNING: 0x40,
  NOARP: 0x80,
  PROMISC: 0x100,
  MULTICAST: 0x1000,
  LOWER_UP: 0x10000,
} as const;

export const IFA_F = {
  SECONDARY: 0x01,
  NODAD: 0x02,
  OPTIMISTIC: 0x04,
  DADFAILED: 0x08,
  DEPRECATED: 0x20,
  TENTATIVE: 0x40,
  PERMANENT: 0x80,
  NOPREFIXROUTE: 0x200,
} as const;

export const RT_TABLE = { UNSPEC: 0, DEFAULT: 253, MAIN: 254, LOCAL: 255 } as const;
/** Route protocols; TSNET (74, unassigned in <linux/rtnetlink.h>) marks the routes tsnet's cluster agent owns. */
export const RTPROT = { UNSPEC: 0, KERNEL: 2, BOOT: 3, STATIC: 4, TSNET: 74 } as const;
/** RTNH_F_* route flags (rtm_flags): ONLINK, the gateway is on the link even without a covering prefix. */
export const RTNH_F = { ONLINK: 4 } as const;
export const RT_SCOPE = { UNIVERSE: 0, SITE: 200, LINK: 253, HOST: 254, NOWHERE: 255 } as const;
export const RTN = {
  UNICAST: 1,
  LOCAL: 2,
  BROADCAST: 3,
  ANYCAST: 4,
  MULTICAST: 5,
  BLACKHOLE: 6,
  UNREACHABLE: 7,
  PROHIBIT: 8,
} as const;

/** BR_STATE_* from <linux/if_bridge.h>. */
export const BR_STATE = ['disabled', 'listening', 'learning', 'forwarding', 'blocking'] as const;

export interface IfInfoMsg {
  family: number;
  type: number;
  index: number;
  flags: number;
  change: number;
}
export const ifinfomsg = struct<IfInfoMsg>([
  ['family', 'u8'],
  ['', 'pad8'],
  ['type', 'u16'],
  ['index', 's32'],
  ['flags', 'u32'],
  ['change', 'u32'],
]);

export interface IfAddrMsg {
  family: number;
  prefixlen: number;
  flags: number;
  scope: number;
  index: number;
}
export const ifaddrmsg = struct<IfAddrMsg>([
  ['family', 'u8'],
  ['prefixlen', 'u8'],
  ['flags', 'u8'],
  ['scope', 'u8'],
  ['index', 'u32'],
]);

export interface RtMsg {
  family: number;
  dst_len: number;
  src_len: number;
  tos: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
  flags: number;
}
export const rtmsg = struct<RtMsg>([
  ['family', 'u8'],
  ['dst_len', 'u8'],
  ['src_len', 'u8'],
  ['tos', 'u8'],
  ['table', 'u8'],
  ['protocol', 'u8'],
  ['scope', 'u8'],
  ['type', 'u8'],
  ['flags', 'u32'],
]);

export interface RtGenMsg {
  family: number;
}
export const rtgenmsg = struct<RtGenMsg>([['family', 'u8']]);

/** IFLA_BR_* (bridge options inside IFLA_INFO_DATA). */
export const IFLA_BR: Table = [
  { type: 1, name: 'forward_delay', codec: u32 },
  { type: 2, name: 'hello_time', codec: u32 },
  { type: 3, name: 'max_age', codec: u32 },
  { type: 4, name: 'ageing_time', codec: u32 },
  { type: 5, name: 'stp_state', codec: u32 },
  { type: 6, name: 'priority', codec: u16 },
  { type: 7, name: 'vlan_filtering', codec: u8 },
  { type: 9, name: 'group_fwd_mask', codec: u16 },
  { type: 23, name: 'mcast_snooping', codec: u8 },
  { type: 39, name: 'vlan_default_pvid', codec: u16 },
];

/** IFLA_BRPORT_* (a bridge port's options: IFLA_INFO_SLAVE_DATA and AF_BRIDGE IFLA_PROTINFO). */
export const IFLA_BRPORT: Table = [
  { type: 1, name: 'state', codec: u8 },
  { type: 2, name: 'priority', codec: u16 },
  { type: 3, name: 'cost', codec: u32 },
  { type: 4, name: 'mode', codec: u8 }, // hairpin
  { type: 5, name: 'guard', codec: u8 },
  { type: 6, name: 'protect', codec: u8 },
  { type: 7, name: 'fast_leave', codec: u8 },
  { type: 8, name: 'learning', codec: u8 },
  { type: 9, name: 'unicast_flood', codec: u8 },
  { type: 10, name: 'proxyarp', codec: u8 },
];

/** VETH_INFO_* : the peer is a whole ifinfomsg + IFLA_* message of its own. */
export const VETH_INFO: Table = [{ type: 1, name: 'peer', codec: withHeader(ifinfomsg, () => IFLA) }];

/** IFLA_VXLAN_* (<linux/if_link.h>): a vxlan device's options inside IFLA_INFO_DATA. */
export const IFLA_VXLAN: Table = [
  { type: 1, name: 'id', codec: u32 },
  { type: 2, name: 'group', codec: ipaddr },
  { type: 3, name: 'link', codec: u32 },
  { type: 4, name: 'local', codec: ipaddr },
  { type: 5, name: 'ttl', codec: u8 },
  { type: 7, name: 'learning', codec: u8 },
  { type: 8, name: 'ageing', codec: u32 },
  { type: 15, name: 'port', codec: be16 },
];

/** IFLA_INFO_* : kind, and kind-specific data chosen by that kind. */
export const IFLA_INFO: Table = [
  { type: 1, name: 'kind', codec: asciiz },
  {
    type: 2,
    name: 'data',
    codec: selectBy('kind', { veth: nested(VETH_INFO), bridge: nested(IFLA_BR), vxlan: nested(IFLA_VXLAN) }),
  },
  { type: 4, name: 'slave_kind', codec: asciiz },
  { type: 5, name: 'slave_data', codec: selectBy('slave_kind', { bridge: nested(IFLA_BRPORT) }) },
];

/** IFLA_* : link attributes. */
export const IFLA: Table = [
  { type: 1, name: 'address', codec: mac },
  { type: 2, name: 'broadcast', codec: mac },
  { type: 3, name: 'ifname', codec: asciiz },
  { type: 4, name: 'mtu', codec: u32 },
  { type: 5, name: 'link', codec: u32 },
  { type: 10, name: 'master', codec: u32 },
  { type: 12, name: 'protinfo', codec: nested(IFLA_BRPORT, { setNestedFlag: true }) },
  { type: 13, name: 'txqlen', codec: u32 },
  { type: 16, name: 'operstate', codec: u8 },
  { type: 18, name: 'linkinfo', codec: nested(IFLA_INFO) },
  { type: 19, name: 'net_ns_pid', codec: u32 },
  { type: 20, name: 'ifalias', codec: asciiz },
  { type: 28, name: 'net_ns_fd', codec: u32 },
  { type: 29, name: 'ext_mask', codec: u32 },
  { type: 30, name: 'promiscuity', codec: u32 },
  { type: 33, name: 'carrier', codec: u8 },
  { type: 37, name: 'link_netnsid', codec: s32 },
  { type: 54, name: 'perm_address', codec: mac },
];

/** IFA_* : address attributes. */
export const IFA: Table = [
  { type: 1, name: 'address', codec: ipaddr },
  { type: 2, name: 'local', codec: ipaddr },
  { type: 3, name: 'label', codec: asciiz },
  { type: 4, name: 'broadcast', codec: ipaddr },
  { type: 6, name: 'cacheinfo', codec: binary },
  { type: 8, name: 'flags', codec: u32 },
];

/** RTA_* : route attributes. */
export const RTA: Table = [
  { type: 1, name: 'dst', codec: ipaddr },
  { type: 2, name: 'src', codec: ipaddr },
  { type: 3, name: 'iif', codec: u32 },
  { type: 4, name: 'oif', codec: u32 },
  { type: 5, name: 'gateway', codec: ipaddr },
  { type: 6, name: 'priority', codec: u32 },
  { type: 7, name: 'prefsrc', codec: ipaddr },
  { type: 15, name: 'table', codec: u32 },
  { type: 20, name: 'pref', codec: u8 },
  { type: 30, name: 'nh_id', codec: u32 },
];

export interface NdMsg {
  family: number;
  ifindex: number;
  state: number;
  flags: number;
  type: number;
}
/** struct ndmsg (<linux/neighbour.h>): a neighbour entry's header. */
export const ndmsg = struct<NdMsg>([
  ['family', 'u8'],
  ['', 'pad8'],
  ['', 'pad16'],
  ['ifindex', 's32'],
  ['state', 'u16'],
  ['flags', 'u8'],
  ['type', 'u8'],
]);

/** NUD_* : neighbour states (`ip neigh` prints them in capitals). */
export const NUD = {
  INCOMPLETE: 0x01,
  REACHABLE: 0x02,
  STALE: 0x04,
  DELAY: 0x08,
  PROBE: 0x10,
  FAILED: 0x20,
  NOARP: 0x40,
  PERMANENT: 0x80,
} as const;

/** NTF_* : neighbour flags. SELF: an FDB entry of the device itself (vxlan), not of its bridge master. */
export const NTF = { SELF: 0x02, MASTER: 0x04, ROUTER: 0x80 } as const;

/** NDA_* : neighbour attributes (an FDB entry's dst is the remote VTEP's address). */
export const NDA: Table = [
  { type: 1, name: 'dst', codec: ipaddr },
  { type: 2, name: 'lladdr', codec: mac },
  { type: 6, name: 'port', codec: be16 },
  { type: 7, name: 'vni', codec: u32 },
  { type: 8, name: 'ifindex', codec: u32 },
  { type: 9, name: 'master', codec: u32 },
];

export interface NhMsg {
  family: number;
  scope: number;
  protocol: number;
  flags: number;
}
/** struct nhmsg (<linux/nexthop.h>): a nexthop object's header. */
export const nhmsg = struct<NhMsg>([
  ['family', 'u8'],
  ['scope', 'u8'],
  ['protocol', 'u8'],
  ['', 'pad8'],
  ['flags', 'u32'],
]);

/** NHA_* : nexthop object attributes. */
export const NHA: Table = [
  { type: 1, name: 'id', codec: u32 },
  { type: 4, name: 'blackhole', codec: flag },
  { type: 5, name: 'oif', codec: u32 },
  { type: 6, name: 'gateway', codec: ipaddr },
];

/** NETNSA_* : namespace ids (RTM_GETNSID). */
export const NETNSA: Table = [
  { type: 1, name: 'nsid', codec: s32 },
  { type: 2, name: 'pid', codec: u32 },
  { type: 3, name: 'fd', codec: u32 },
];
