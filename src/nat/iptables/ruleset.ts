/**
 * The iptables renderer: the NAT model as kube-proxy-shaped chains of typed
 * rules, and those rules as iptables-restore text. `formatRule` is the only
 * place that knows iptables syntax.
 *
 * Chains (TSNET- prefix, so a real kube-proxy's KUBE- chains are never touched):
 *   nat    TSNET-SERVICES     dispatch: VIP:port -> TSNET-SVC-*   (from PREROUTING and OUTPUT)
 *          TSNET-SVC-<hash>   one per service: masquerade-not-from, affinity, statistic -> TSNET-SEP-*
 *          TSNET-SEP-<hash>   one per endpoint: hairpin mark, DNAT
 *          TSNET-MARK-MASQ    sets the masquerade mark
 *          TSNET-POSTROUTING  masquerades marked packets            (from POSTROUTING)
 *          TSNET-DNAT / TSNET-SNAT   standalone DNAT and MASQUERADE/SNAT rules
 *          TSNET-CANARY       one rule; when it is gone, someone flushed the table
 *   filter TSNET-SERVICES     REJECT for services without endpoints (from INPUT, FORWARD, OUTPUT, new connections)
 *          TSNET-CANARY
 */
import { formatHostPort, type Family } from '../../addr/cidr';
import {
  familyOf,
  masqueradeComment,
  ruleFamily,
  probabilities,
  servesLoopback,
  type DesiredState,
  type Forward,
  type NatRule,
  type Proto,
  type Service,
} from '../model';
import { CANARY_COMMENT, IPT_PREFIX as PREFIX, LOCALNET_COMMENT, MASQ_COMMENT, MASQ_MARK } from '../constants';
import { endpointHash, portProtoHash } from '../names';

export type IptTable = 'nat' | 'filter';

export type IptTarget =
  | { kind: 'jump'; chain: string }
  | { kind: 'DNAT'; to: string }
  | { kind: 'SNAT'; to: string; randomFully?: boolean }
  | { kind: 'MASQUERADE'; randomFully?: boolean }
  | { kind: 'MARK'; op: 'or' | 'xor'; mark: number }
  | { kind: 'RETURN' | 'ACCEPT' | 'REJECT' | 'DROP' };

/** One iptables rule as data; fields render in this order. */
export interface IptRule {
  comment?: string;
  proto?: Proto;
  src?: string;
  srcNot?: boolean;
  dstNot?: boolean;
  dst?: string;
  /** `-m addrtype --dst-type LOCAL`: any address of this host. */
  dstLocal?: boolean;
  outNot?: string;
  out?: string;
  dport?: number;
  /** `-m conntrack`: state, and the original/reply tuple of the connection the packet belongs to. */
  ct?: { state?: string[]; stateNot?: boolean; origDstPort?: number; replSrc?: string; replSrcPort?: number };
  mark?: { mark: number; not?: boolean };
  recent?: { name: string; op: 'set' } | { name: string; op: 'rcheck'; seconds: number };
  probability?: number;
  target: IptTarget;
}

export interface IptChain {
  table: IptTable;
  name: string;
  rules: IptRule[];
}

/** A rule tsnet keeps in a built-in chain (always a jump into one of ours). */
export interface IptHook {
  table: IptTable;
  chain: 'PREROUTING' | 'OUTPUT' | 'POSTROUTING' | 'INPUT' | 'FORWARD';
  rule: IptRule & { target: { kind: 'jump'; chain: string } };
}

export interface IptRuleset {
  family: Family;
  chains: IptChain[];
  hooks: IptHook[];
}

export const SERVICES = 'TSNET-SERVICES';
export const MARK_MASQ = 'TSNET-MARK-MASQ';
export const POSTROUTING = 'TSNET-POSTROUTING';
export const DNAT_CHAIN = 'TSNET-DNAT';
export const SNAT_CHAIN = 'TSNET-SNAT';
export const IPT_CANARY = 'TSNET-CANARY';
export const FORWARD_CHAIN = 'TSNET-FORWARD';
export const FIREWALL = 'TSNET-FIREWALL';

export const kubeSvcChain = (s: Pick<Service, 'name' | 'proto'>): string =>
  `${PREFIX}SVC-${portProtoHash(s.name, s.proto)}`;
export const kubeSepChain = (s: Pick<Service, 'name' | 'proto'>, ip: string, port: number): string =>
  `${PREFIX}SEP-${endpointHash(s.name, s.proto, formatHostPort(ip, port))}`;

const host = (ip: string) => (ip.includes(':') ? `${ip}/128` : `${ip}/32`);

function serviceChains(s: Service): IptChain[] {
  const svc = kubeSvcChain(s);
  const base: Omit<IptRule, 'target'> = {
    comment: `${s.name} cluster IP`,
    proto: s.proto,
    dst: host(s.vip),
    dport: s.port,
  };
  const chain: IptChain = { table: 'nat', name: svc, rules: [] };
  const seps: IptChain[] = [];
  if (s.masqueradeNotFrom)
    chain.rules.push({ ...base, src: s.masqueradeNotFrom, srcNot: true, target: { kind: 'jump', chain: MARK_MASQ } });
  const names = s.endpoints.map((e) => kubeSepChain(s, e.ip, e.port));
  if (s.affinitySeconds) {
    s.endpoints.forEach((e, i) =>
      chain.rules.push({
        comment: `${s.name} -> ${formatHostPort(e.ip, e.port)}`,
        recent: { name: names[i]!, op: 'rcheck', seconds: s.affinitySeconds! },
        target: { kind: 'jump', chain: names[i]! },
      }),
    );
  }
  const probs = probabilities(s.endpoints.map((e) => e.weight));
  s.endpoints.forEach((e, i) => {
    const r: IptRule = {
      comment: `${s.name} -> ${formatHostPort(e.ip, e.port)}`,
      target: { kind: 'jump', chain: names[i]! },
    };
    if (probs[i] !== undefined) r.probability = probs[i]!;
    chain.rules.push(r);
    const dnat: IptRule = {
      comment: s.name,
      proto: s.proto,
      target: { kind: 'DNAT', to: formatHostPort(e.ip, e.port) },
    };
    if (s.affinitySeconds) dnat.recent = { name: names[i]!, op: 'set' };
    seps.push({
      table: 'nat',
      name: names[i]!,
      rules: [
        // Hairpin: an endpoint reaching its own service must be masqueraded, or it would answer itself directly.
        { comment: s.name, src: host(e.ip), target: { kind: 'jump', chain: MARK_MASQ } },
        dnat,
      ],
    });
  });
  return [chain, ...seps];
}

function natRuleFor(r: NatRule): { chain: string; rule: IptRule } {
  switch (r.kind) {
    case 'masquerade': {
      const rule: IptRule = {
        comment: masqueradeComment(r),
        src: r.source,
        target: { kind: 'MASQUERADE', randomFully: true },
      };
      if (r.destination) rule.dst = r.destination;
      if (r.destinationNot) Object.assign(rule, { dst: r.destinationNot, dstNot: true });
      if (r.outNot) rule.outNot = r.outNot;
      return { chain: SNAT_CHAIN, rule };
    }
    case 'snat': {
      const rule: IptRule = {
        comment: `tsnet snat ${r.source}`,
        src: r.source,
        target: { kind: 'SNAT', to: r.toSource, randomFully: true },
      };
      if (r.destination) rule.dst = r.destination;
      if (r.out) rule.out = r.out;
      return { chain: SNAT_CHAIN, rule };
    }
    case 'dnat':
      return {
        chain: DNAT_CHAIN,
        rule: {
          comment: `tsnet dnat ${formatHostPort(r.destination, r.port)}`,
          proto: r.proto,
          dst: host(r.destination),
          dport: r.port,
          target: { kind: 'DNAT', to: formatHostPort(r.toIp, r.toPort) },
        },
      };
  }
}

/** A forward's rules: DNAT in, source NAT of its own flows out, a FORWARD accept for them. */
function forwardRules(f: Forward): { dnat: IptRule; snat: IptRule[]; accept: IptRule } {
  const comment = `tsnet forward ${f.name}`;
  const dnat: IptRule = {
    comment,
    proto: f.proto,
    dport: f.listenPort,
    target: { kind: 'DNAT', to: formatHostPort(f.targetIp, f.targetPort) },
  };
  if (f.listen) dnat.dst = host(f.listen);
  else dnat.dstLocal = true;
  const mine = { state: ['DNAT'], origDstPort: f.listenPort };
  const snat: IptRule[] = [];
  const toTarget = { comment, dst: host(f.targetIp), proto: f.proto, dport: f.targetPort, ct: mine };
  if (f.snat === 'auto' || f.snat === 'masquerade')
    snat.push({ ...toTarget, target: { kind: 'MASQUERADE', randomFully: true } });
  else if (f.snat !== 'none') snat.push({ ...toTarget, target: { kind: 'SNAT', to: f.snat, randomFully: true } });
  // Clients of 127.0.0.1 cannot keep that source on the wire, whatever --snat says.
  if (f.snat === 'none' && servesLoopback(f))
    snat.push({
      comment,
      src: '127.0.0.0/8',
      proto: f.proto,
      ct: mine,
      target: { kind: 'MASQUERADE', randomFully: true },
    });
  const accept: IptRule = {
    comment,
    ct: { state: ['DNAT'], origDstPort: f.listenPort, replSrc: f.targetIp, replSrcPort: f.targetPort },
    proto: f.proto,
    target: { kind: 'ACCEPT' },
  };
  return { dnat, snat, accept };
}

/** kube-proxy's guard for route_localnet (CVE-2020-8558): nothing from outside reaches 127.0.0.0/8 unless it was DNATed. */
export const LOCALNET_GUARD: IptRule = {
  comment: LOCALNET_COMMENT,
  dst: '127.0.0.0/8',
  src: '127.0.0.0/8',
  srcNot: true,
  ct: { state: ['RELATED', 'ESTABLISHED', 'DNAT'], stateNot: true },
  target: { kind: 'DROP' },
};

/** The whole desired ruleset of one address family. */
export function renderIptables(st: DesiredState, family: Family): IptRuleset {
  const { dispatch, rejects, perService } = serviceChainsOf(st.services.filter((s) => familyOf(s.vip) === family));
  const dnat: IptChain = { table: 'nat', name: DNAT_CHAIN, rules: [] };
  const snat: IptChain = { table: 'nat', name: SNAT_CHAIN, rules: [] };
  for (const r of st.rules.filter((r) => ruleFamily(r) === family)) {
    const { chain, rule } = natRuleFor(r);
    (chain === DNAT_CHAIN ? dnat : snat).rules.push(rule);
  }
  const forward: IptChain = { table: 'filter', name: FORWARD_CHAIN, rules: [] };
  const firewall: IptChain = { table: 'filter', name: FIREWALL, rules: [] };
  const forwards = st.forwards.filter((f) => familyOf(f.targetIp) === family);
  for (const f of forwards) {
    const r = forwardRules(f);
    dnat.rules.push(r.dnat);
    snat.rules.push(...r.snat);
    forward.rules.push(r.accept);
  }
  if (forwards.some(servesLoopback)) firewall.rules.push(LOCALNET_GUARD);
  const chains: IptChain[] = [
    canaryChain('nat'),
    canaryChain('filter'),
    dispatch,
    rejects,
    dnat,
    snat,
    forward,
    firewall,
    ...MASQ_CHAINS,
    ...perService,
  ];
  return { family, chains, hooks: [...HOOKS] };
}

/** The services' portals (nat), their rejects when they have no endpoints (filter), and each one's chains. */
function serviceChainsOf(services: readonly Service[]): {
  dispatch: IptChain;
  rejects: IptChain;
  perService: IptChain[];
} {
  const dispatch: IptChain = { table: 'nat', name: SERVICES, rules: [] };
  const rejects: IptChain = { table: 'filter', name: SERVICES, rules: [] };
  const perService: IptChain[] = [];
  for (const s of services) {
    if (s.endpoints.length === 0) {
      rejects.rules.push({
        comment: `${s.name} has no endpoints`,
        proto: s.proto,
        dst: host(s.vip),
        dport: s.port,
        target: { kind: 'REJECT' },
      });
      continue;
    }
    dispatch.rules.push({
      comment: `${s.name} cluster IP`,
      proto: s.proto,
      dst: host(s.vip),
      dport: s.port,
      target: { kind: 'jump', chain: kubeSvcChain(s) },
    });
    perService.push(...serviceChains(s));
  }
  return { dispatch, rejects, perService };
}

/** kube-proxy's masquerade by mark: MARK_MASQ sets it, POSTROUTING masquerades what carries it. */
const MASQ_CHAINS: readonly IptChain[] = [
  { table: 'nat', name: MARK_MASQ, rules: [{ target: { kind: 'MARK', op: 'or', mark: MASQ_MARK } }] },
  {
    table: 'nat',
    name: POSTROUTING,
    rules: [
      { mark: { mark: MASQ_MARK, not: true }, target: { kind: 'RETURN' } },
      // Clear the mark so a packet that passes this chain again (re-entering via another tool's rules) is not masqueraded twice.
      { target: { kind: 'MARK', op: 'xor', mark: MASQ_MARK } },
      { comment: MASQ_COMMENT, target: { kind: 'MASQUERADE', randomFully: true } },
    ],
  },
];

const jump = (chain: string, comment: string): IptHook['rule'] => ({ comment, target: { kind: 'jump', chain } });
const newOnly = (chain: string, comment: string): IptHook['rule'] => ({
  comment,
  ct: { state: ['NEW'] },
  target: { kind: 'jump', chain },
});

/** Where the built-in chains jump into ours. */
const HOOKS: readonly IptHook[] = [
  { table: 'nat', chain: 'PREROUTING', rule: jump(SERVICES, 'tsnet service portals') },
  { table: 'nat', chain: 'OUTPUT', rule: jump(SERVICES, 'tsnet service portals') },
  { table: 'nat', chain: 'PREROUTING', rule: jump(DNAT_CHAIN, 'tsnet dnat rules') },
  { table: 'nat', chain: 'OUTPUT', rule: jump(DNAT_CHAIN, 'tsnet dnat rules') },
  { table: 'nat', chain: 'POSTROUTING', rule: jump(POSTROUTING, 'tsnet postrouting rules') },
  { table: 'nat', chain: 'POSTROUTING', rule: jump(SNAT_CHAIN, 'tsnet snat and masquerade rules') },
  { table: 'filter', chain: 'INPUT', rule: newOnly(SERVICES, 'tsnet service portals') },
  { table: 'filter', chain: 'FORWARD', rule: newOnly(SERVICES, 'tsnet service portals') },
  { table: 'filter', chain: 'OUTPUT', rule: newOnly(SERVICES, 'tsnet service portals') },
  { table: 'filter', chain: 'FORWARD', rule: jump(FORWARD_CHAIN, 'tsnet forwards') },
  { table: 'filter', chain: 'INPUT', rule: jump(FIREWALL, 'tsnet firewall') },
];

/** The canary chain of `table`: one rule; when it is gone, someone flushed the table. */
export const canaryChain = (table: IptTable): IptChain => ({
  table,
  name: IPT_CANARY,
  rules: [{ comment: CANARY_COMMENT, target: { kind: 'RETURN' } }],
});
