/**
 * Names and numbers every NAT backend shares: the table and chain names an
 * operator sees, tsnet's own mark bit, the canary's text.
 */

/** The nftables table of each family: `table ip tsnet`, `table ip6 tsnet`. */
export const NFT_TABLE = 'tsnet';

/** The prefix of tsnet's iptables chains (kube-proxy's are KUBE-: never touched). */
export const IPT_PREFIX = 'TSNET-';

/** tsnet's masquerade mark: its own bit (kube-proxy uses 0x4000), so the two never act on each other's packets. */
export const MASQ_MARK = 0x40000;

/** The canary rule's comment: when it is gone, someone flushed the rules. */
export const CANARY_COMMENT = 'tsnet canary: if this rule is gone, the table was flushed';

/** What an endpoint reaching its own service gets (its reply must come back through the node). */
export const HAIRPIN_COMMENT = 'tsnet hairpin: an endpoint reaching itself through its service';
export const MASQ_COMMENT = 'tsnet service traffic requiring SNAT';
export const LOCALNET_COMMENT = 'tsnet: block incoming localnet connections (CVE-2020-8558)';

/** Base chain priorities: NAT where the kernel's dstnat/srcnat are; filter just before the default 0. */
export const PRIORITY = { dstnat: -100, srcnat: 100, filter: -10 } as const;
