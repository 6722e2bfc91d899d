/**
 * ctnetlink (NETLINK_NETFILTER, subsystem CTNETLINK): the conntrack table's
 * wire format, what `conntrack -L` / `conntrack -D` speak. Values inside
 * these attributes are in network byte order.
 */
import { be16, ipaddr, nested, u8, type Table } from './attrs';

export const NFNL_SUBSYS_CTNETLINK = 1;
export const IPCTNL_MSG = { NEW: 0, GET: 1, DELETE: 2 } as const;
/** nlmsg_type of a ctnetlink message: subsystem in the high byte. */
export const ctMsg = (m: number): number => (NFNL_SUBSYS_CTNETLINK << 8) | m;

export const CTA_IP: Table = [
  { type: 1, name: 'v4src', codec: ipaddr },
  { type: 2, name: 'v4dst', codec: ipaddr },
  { type: 3, name: 'v6src', codec: ipaddr },
  { type: 4, name: 'v6dst', codec: ipaddr },
];

export const CTA_PROTO: Table = [
  { type: 1, name: 'num', codec: u8 },
  { type: 2, name: 'sport', codec: be16 },
  { type: 3, name: 'dport', codec: be16 },
];

export const CTA_TUPLE: Table = [
  { type: 1, name: 'ip', codec: nested(CTA_IP, { setNestedFlag: true }) },
  { type: 2, name: 'proto', codec: nested(CTA_PROTO, { setNestedFlag: true }) },
];

/** The top-level conntrack attributes tsnet reads; the original tuple is also kept raw to address a delete. */
export const CTA: Table = [
  { type: 1, name: 'orig', codec: nested(CTA_TUPLE, { setNestedFlag: true }) },
  { type: 2, name: 'reply', codec: nested(CTA_TUPLE, { setNestedFlag: true }) },
];

export const CTA_TUPLE_ORIG = 1;
export const CTA_ZONE = 18;
