/**
 * The standalone NAT rules (tsnet nat) and the forwards (tsnet forward) as
 * nftables rules: the items each one matches and does, for the chains the
 * layout puts them in.
 */
import { formatHostPort } from '../../addr/cidr';
import { LOCALNET_COMMENT } from '../constants';
import { masqueradeComment, servesLoopback, type Forward, type NatRule } from '../model';
import type { Item, Rule } from './ruleset';

export function natRuleItems(r: NatRule): { chain: 'dnat-rules' | 'snat-rules'; rule: Rule } {
  switch (r.kind) {
    case 'masquerade': {
      const items: Item[] = [{ kind: 'addr', field: 'saddr', cidr: r.source }];
      if (r.destination) items.push({ kind: 'addr', field: 'daddr', cidr: r.destination });
      if (r.destinationNot) items.push({ kind: 'addr', field: 'daddr', cidr: r.destinationNot, not: true });
      if (r.outNot) items.push({ kind: 'oifname', name: r.outNot, not: true });
      items.push({ kind: 'masquerade' });
      return {
        chain: 'snat-rules',
        rule: { items, comment: masqueradeComment(r) },
      };
    }
    case 'snat': {
      const items: Item[] = [{ kind: 'addr', field: 'saddr', cidr: r.source }];
      if (r.destination) items.push({ kind: 'addr', field: 'daddr', cidr: r.destination });
      if (r.out) items.push({ kind: 'oifname', name: r.out });
      items.push({ kind: 'snat', ip: r.toSource });
      return { chain: 'snat-rules', rule: { items, comment: `tsnet snat ${r.source}` } };
    }
    case 'dnat':
      return {
        chain: 'dnat-rules',
        rule: {
          items: [
            { kind: 'addr', field: 'daddr', cidr: r.destination },
            { kind: 'l4proto', proto: r.proto },
            { kind: 'dport', port: r.port },
            { kind: 'dnat', ip: r.toIp, port: r.toPort },
          ],
          comment: `tsnet dnat ${formatHostPort(r.destination, r.port)}`,
        },
      };
  }
}

/** A forward's rules: DNAT in, source NAT of its own flows out, an accept in forward (as in the iptables backend). */
export function forwardRules(f: Forward): { dnat: Rule; snat: Rule[]; accept: Rule } {
  const comment = `tsnet forward ${f.name}`;
  const dnat: Rule = {
    items: [
      f.listen ? { kind: 'addr', field: 'daddr', cidr: f.listen } : { kind: 'local-daddr' },
      { kind: 'l4proto', proto: f.proto },
      { kind: 'dport', port: f.listenPort },
      { kind: 'dnat', ip: f.targetIp, port: f.targetPort },
    ],
    comment,
  };
  const mine: Item[] = [{ kind: 'ct-dnat' }, { kind: 'ct-orig-dport', port: f.listenPort }];
  const toTarget: Item[] = [
    { kind: 'addr', field: 'daddr', cidr: f.targetIp },
    { kind: 'l4proto', proto: f.proto },
    { kind: 'dport', port: f.targetPort },
    ...mine,
  ];
  const snat: Rule[] = [];
  if (f.snat === 'auto' || f.snat === 'masquerade')
    snat.push({ items: [...toTarget, { kind: 'masquerade' }], comment });
  else if (f.snat !== 'none') snat.push({ items: [...toTarget, { kind: 'snat', ip: f.snat }], comment });
  // Clients of 127.0.0.1 cannot keep that source on the wire, whatever --snat says.
  if (f.snat === 'none' && servesLoopback(f))
    snat.push({
      items: [
        { kind: 'addr', field: 'saddr', cidr: '127.0.0.0/8' },
        { kind: 'l4proto', proto: f.proto },
        ...mine,
        { kind: 'masquerade' },
      ],
      comment,
    });
  const accept: Rule = {
    items: [
      { kind: 'l4proto', proto: f.proto },
      ...mine,
      { kind: 'ct-reply-saddr', ip: f.targetIp },
      { kind: 'ct-reply-sport', port: f.targetPort },
      { kind: 'verdict', verdict: 'accept' },
    ],
    comment,
  };
  return { dnat, snat, accept };
}

/** kube-proxy's guard for route_localnet (CVE-2020-8558): nothing from outside reaches 127.0.0.0/8 unless it was DNATed. */
export const LOCALNET_GUARD: Rule = {
  items: [
    { kind: 'addr', field: 'daddr', cidr: '127.0.0.0/8' },
    { kind: 'addr', field: 'saddr', cidr: '127.0.0.0/8', not: true },
    { kind: 'ct-not-established' },
    { kind: 'ct-dnat', not: true },
    { kind: 'verdict', verdict: 'drop' },
  ],
  comment: LOCALNET_COMMENT,
};
