/**
 * nfnetlink's common header, struct nfgenmsg: the address family, the
 * version (NFNETLINK_V0) and a resource id (big-endian; the subsystem, in a
 * batch's BEGIN and END). Every NETLINK_NETFILTER message starts with one:
 * nf_tables, ctnetlink. The one place it is written (google/nftables'
 * extraHeader).
 */
const NFNETLINK_V0 = 0;

/** The 4 bytes of struct nfgenmsg. */
export const nfgenmsg = (family: number, resId = 0): Buffer =>
  Buffer.from([family, NFNETLINK_V0, (resId >> 8) & 0xff, resId & 0xff]);
