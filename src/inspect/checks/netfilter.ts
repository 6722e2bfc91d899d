/** Doctor checks on netfilter: tsnet's rules gone, or another table's verdict that overrides them. */
import { NFPROTO, NFTA_CHAIN, NFT_MSG, NF_INET_HOOK, VERDICT, nftMsg } from '../../netlink/nftables';
import { decodeAttrs } from '../../netlink/attrs';
import { nfgenmsg } from '../../netlink/nfnetlink';
import { NFT_TABLE } from '../../nat/constants';
import type { NetNs } from '../../netns';
import type { Check, Finding } from './check';

/** Rules tsnet applied that someone flushed: each backend keeps a canary it can look for. */
export const natCanary: Check = {
  name: 'nat-canary',
  async run(v) {
    const out: Finding[] = [];
    for (const e of v.engines) {
      const families = e.appliedFamilies();
      if (!families.length) continue;
      const backend = await e.backend();
      for (const f of families) {
        if (await backend.canaryPresent(f)) continue;
        // The engine of a namespace NS keeps its state in DIR/netns/NS: its sync is `tsnet -n NS --state-dir DIR`.
        const m = /^(.*)\/netns\/([^/]+)$/.exec(e.dir);
        const cmd = m ? `tsnet -n ${m[2]} --state-dir ${m[1]} sync` : `tsnet --state-dir ${e.dir} sync`;
        out.push({
          where: e.dir,
          problem: `tsnet's IPv${f} NAT rules (${backend.name}) are gone: someone flushed them (iptables -t nat -F, nft flush ruleset); services and forwards do not work`,
          fix: `${cmd} (the agent does it within its resync interval)`,
        });
      }
    }
    return out;
  },
};

/** Another nftables table's forward hook with policy drop: an accept in tsnet's table cannot override it. */
export const forwardDrop: Check = {
  name: 'forward-drop',
  async run(v) {
    if (!v.nat.forwards.length && !v.gatewayBridges.length) return [];
    return (await dropForwardChains(v.host)).map((c) => ({
      where: `table ${c.family} ${c.table} chain ${c.chain}`,
      problem: `chain ${c.chain} of table ${c.family} ${c.table} (hook forward, policy drop) drops forwarded flows: tsnet's accept in its own table cannot override a drop in another (nftables semantics)`,
      fix: `add "ct status dnat accept" (and your containers' traffic) to ${c.table} ${c.chain}, or use --backend iptables with iptables-nft`,
    }));
  },
};

/** Base chains on the forward hook with policy drop, in tables other than tsnet's (nf_tables over netlink: iptables-nft's too). */
async function dropForwardChains(h: NetNs): Promise<{ family: string; table: string; chain: string }[]> {
  const out: { family: string; table: string; chain: string }[] = [];
  const fams: Record<number, string> = { [NFPROTO.IPV4]: 'ip', [NFPROTO.IPV6]: 'ip6', [NFPROTO.INET]: 'inet' };
  const msgs = await h.netfilter.dump(nftMsg(NFT_MSG.GETCHAIN), nfgenmsg(NFPROTO.UNSPEC));
  for (const m of msgs) {
    if (m.type !== nftMsg(NFT_MSG.NEWCHAIN)) continue;
    const fam = m.payload[0]!;
    const c = decodeAttrs(NFTA_CHAIN, m.payload.subarray(4));
    if (c.table === NFT_TABLE || c.hook?.hooknum !== NF_INET_HOOK.forward || c.policy !== VERDICT.drop) continue;
    out.push({ family: fams[fam] ?? String(fam), table: String(c.table), chain: String(c.name) });
  }
  return out;
}
