/**
 * The NAT model as one nftables table per family, laid out for scale: a
 * service is a handful of map elements, not chains.
 *
 *   nat-prerouting / nat-output -> services:
 *       ip daddr . meta l4proto . th dport vmap @service-ips          (one element per service)
 *   service-ips element -> lb-PROTO-N (shared by every service with N endpoints):
 *       dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map @endpoints
 *                                                                      (one element per endpoint)
 *   weighted services: lbw-PROTO-W and @endpoints-weighted (each endpoint owns a range of [0, W))
 *   a service with affinity or masquerade-not-from: its own svc-* chain (and, for affinity,
 *       a sep-* chain and a timeout set per endpoint, as kube-proxy does)
 *   nat-postrouting -> masquerading: hairpin pairs (ip saddr . ip daddr @hairpin), marked packets
 *   filter-input/forward/output -> filter-services: vmap @no-endpoint-services -> reject
 *   canary: one rule; when it is gone, the table was flushed
 *
 * Looking a VIP up costs one hash lookup whatever the number of services,
 * and a sync of N services writes O(N) elements and a constant number of
 * rules. Maps count per element: the counters of service-ips are per
 * service, those of the endpoint maps per endpoint.
 */
import { formatHostPort } from '../../addr/cidr';
import { CANARY_COMMENT, HAIRPIN_COMMENT, MASQ_COMMENT, MASQ_MARK, PRIORITY } from '../constants';
import { familyOf, ruleFamily, servesLoopback, type DesiredState, type Proto, type Service } from '../model';
import { LOCALNET_GUARD, forwardRules, natRuleItems } from './rules';
import {
  CANARY,
  ENDPOINTS,
  ENDPOINTS_WEIGHTED,
  ENDPOINT_KEY,
  HAIRPIN,
  MARK_MASQ,
  NO_ENDPOINTS,
  REJECT_CHAIN,
  SERVICE_IPS,
  SERVICE_KEY,
  staticSets,
  affinitySet,
  lbChain,
  ownChain,
  sepChain,
  svcChain,
  totalWeight,
  weighted,
} from './table-names';
import {
  keyId,
  type Chain,
  type Element,
  type ElementList,
  type Family,
  type NamedSet,
  type Rule,
  type Ruleset,
} from './ruleset';

function lbRules(proto: Proto, mod: number, map: string): Rule[] {
  // nft wants a protocol match before a port mapping; it also keeps the chain per protocol honest.
  return [
    {
      items: [
        { kind: 'l4proto', proto },
        { kind: 'dnat-map', key: { ...ENDPOINT_KEY, mod }, map },
      ],
    },
  ];
}

/** The shared chain that picks among the endpoints of services like `s` (same protocol and endpoint count, or total weight). */
function lbChainFor(s: Service): Chain {
  return {
    name: lbChain(s),
    rules: weighted(s)
      ? lbRules(s.proto, totalWeight(s), ENDPOINTS_WEIGHTED)
      : lbRules(s.proto, s.endpoints.length, ENDPOINTS),
  };
}

/** Endpoint i's range of [0, total weight), alone (an element is made per endpoint). */
function rangeOf(s: Service, i: number): [number, number] {
  let from = 0;
  for (let j = 0; j < i; j++) from += s.endpoints[j]!.weight;
  return [from, from + s.endpoints[i]!.weight - 1];
}

/** Each endpoint's range of [0, total weight). */
function ranges(s: Service): [number, number][] {
  let from = 0;
  return s.endpoints.map((e) => {
    const r: [number, number] = [from, from + e.weight - 1];
    from += e.weight;
    return r;
  });
}

/**
 * Everything one service contributes to the table: its elements (by map), the
 * chains and sets of its own, and what it shares with others (the lb chain it
 * goes to, the endpoint addresses it needs hairpin pairs for). A change of
 * one service is the difference between two of these.
 */
export interface ServiceParts {
  elements: Map<string, Element[]>;
  chains: Chain[];
  sets: NamedSet[];
  /** The shared chain its element goes to (or its own chain does): undefined with affinity or without endpoints. */
  lb?: Chain;
  /** Endpoint addresses, each once. */
  hairpin: string[];
}

/**
 * What a service puts in each map, one entry per map: how many elements, and
 * the i-th. A whole table's render (element lists made when read) and one
 * service's parts (arrays) use the same entries, so a sync writes what a
 * change would.
 */
interface MapShare {
  set: string;
  count(s: Service): number;
  element(s: Service, i: number): Element;
  /** A verdict map's: the chain a service's elements go to. */
  target?(s: Service): string;
}

/** The endpoint addresses a service needs hairpin pairs for, each once. */
const hairpinOf = (s: Service): string[] => [...new Set(s.endpoints.map((e) => e.ip))];

const goesToLb = (s: Service) => s.endpoints.length > 0 && s.affinitySeconds === undefined;

/** Where a service's element in service-ips sends its packets: its own chain, or the shared lb chain. */
const serviceTarget = (s: Service) => (ownChain(s) ? svcChain(s) : lbChain(s));

const SHARES: readonly MapShare[] = [
  {
    set: SERVICE_IPS,
    count: (s) => (s.endpoints.length ? 1 : 0),
    element: (s) => ({
      key: [s.vip, s.proto, s.port],
      data: { verdict: 'goto', chain: serviceTarget(s) },
      comment: s.name,
    }),
    target: (s) => serviceTarget(s),
  },
  {
    set: NO_ENDPOINTS,
    count: (s) => (s.endpoints.length ? 0 : 1),
    element: (s) => ({
      key: [s.vip, s.proto, s.port],
      data: { verdict: 'goto', chain: REJECT_CHAIN },
      comment: `${s.name} has no endpoints`,
    }),
    target: () => REJECT_CHAIN,
  },
  {
    set: ENDPOINTS,
    count: (s) => (goesToLb(s) && !weighted(s) ? s.endpoints.length : 0),
    element: (s, i) => ({ key: [s.vip, s.proto, s.port, i], data: [s.endpoints[i]!.ip, s.endpoints[i]!.port] }),
  },
  {
    set: ENDPOINTS_WEIGHTED,
    count: (s) => (goesToLb(s) && weighted(s) ? s.endpoints.length : 0),
    element: (s, i) => ({
      key: [s.vip, s.proto, s.port, rangeOf(s, i)],
      data: [s.endpoints[i]!.ip, s.endpoints[i]!.port],
    }),
  },
];

/** The elements the services put in one map, each made when it is read (in order, each costs O(1); a weighted endpoint's range, O(its position)). */
class ServiceElements implements ElementList {
  readonly length: number;
  /** starts[k]: the position of services[k]'s first element; starts[services.length]: the length. */
  private readonly starts: Uint32Array;
  /** The service of the last read. */
  private k = 0;

  constructor(
    private readonly services: readonly Service[],
    private readonly share: MapShare,
  ) {
    const starts = new Uint32Array(services.length + 1);
    let n = 0;
    for (let k = 0; k < services.length; k++) {
      starts[k] = n;
      n += share.count(services[k]!);
    }
    starts[services.length] = n;
    this.starts = starts;
    this.length = n;
  }

  at(i: number): Element | undefined {
    if (!(i >= 0 && i < this.length)) return undefined;
    const starts = this.starts;
    let k = this.k;
    if (i < starts[k]! || i >= starts[k + 1]!) {
      // The last service starting at or before i (services with no element here start where the next one does).
      let lo = 0;
      let hi = this.services.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (starts[mid]! <= i) lo = mid;
        else hi = mid - 1;
      }
      this.k = k = lo;
    }
    return this.share.element(this.services[k]!, i - starts[k]!);
  }

  targets(): Iterable<string> {
    const target = this.share.target;
    if (!target) return [];
    const out = new Set<string>();
    this.services.forEach((s, k) => {
      if (this.starts[k + 1]! > this.starts[k]!) out.add(target(s)); // it has elements here
    });
    return out;
  }
}

/** Where the kernel counts: an element of one of the table's maps (by keyId), or the counted rule of a chain. */
export type CounterPlace = { set: string; key: string } | { chain: string };

/**
 * Where a service's connections are counted (its element in service-ips or
 * no-endpoint-services), and each endpoint's (its element in an endpoint
 * map, or with affinity the counted rule of its own chain): the same
 * shares its elements are made from, so the join cannot drift from the layout.
 */
export function counterPlaces(s: Service): { service: CounterPlace; endpoints: CounterPlace[] } {
  const at = (set: string, i: number): CounterPlace => ({ set, key: keyId(shareOf(set).element(s, i).key) });
  const endpointMap = [ENDPOINTS, ENDPOINTS_WEIGHTED].find((set) => shareOf(set).count(s) > 0);
  return {
    service: at(s.endpoints.length ? SERVICE_IPS : NO_ENDPOINTS, 0),
    endpoints: s.endpoints.map(
      (e, i) => (endpointMap ? at(endpointMap, i) : { chain: sepChain(s, e.ip, e.port) }), // with affinity: no endpoint map
    ),
  };
}

const shareOf = (set: string): MapShare => SHARES.find((x) => x.set === set)!;

export function serviceParts(s: Service): ServiceParts {
  const elements = new Map<string, Element[]>();
  for (const share of SHARES) {
    const n = share.count(s);
    if (n)
      elements.set(
        share.set,
        Array.from({ length: n }, (_, i) => share.element(s, i)),
      );
  }
  const parts: ServiceParts = { elements, chains: [], sets: [], hairpin: hairpinOf(s) };
  if (goesToLb(s)) parts.lb = lbChainFor(s);
  ownParts(s, parts);
  return parts;
}

/** The chains and sets of a service's own (affinity, masquerade-not-from), if it needs them. */
function ownParts(s: Service, out: { chains: Chain[]; sets: NamedSet[] }): void {
  if (!s.endpoints.length || !ownChain(s)) return;
  const svc: Chain = { name: svcChain(s), rules: [] };
  if (s.masqueradeNotFrom) {
    svc.rules.push({
      items: [
        { kind: 'addr', field: 'saddr', cidr: s.masqueradeNotFrom, not: true },
        { kind: 'jump', chain: MARK_MASQ },
      ],
      comment: `${s.name} cluster IP`,
    });
  }
  if (s.affinitySeconds === undefined) {
    svc.rules.push({ items: [{ kind: 'goto', chain: lbChain(s) }], comment: s.name });
    out.chains.push(svc);
    return;
  }
  const seps = s.endpoints.map((e) => sepChain(s, e.ip, e.port));
  const sets = seps.map((n) => affinitySet(n, s.affinitySeconds!));
  s.endpoints.forEach((e, i) => {
    svc.rules.push({
      items: [
        { kind: 'in-set', key: { fields: ['saddr'] }, set: sets[i]! },
        { kind: 'goto', chain: seps[i]! },
      ],
      comment: `${s.name} -> ${formatHostPort(e.ip, e.port)}`,
    });
    out.sets.push({ name: sets[i]!, key: { fields: ['saddr'] }, timeout: s.affinitySeconds });
  });
  // The choice among endpoints, remembered per client by the set its sep chain updates.
  if (s.endpoints.length === 1) {
    svc.rules.push({ items: [{ kind: 'goto', chain: seps[0]! }], comment: s.name });
  } else {
    const total = totalWeight(s);
    const vmap: Element[] = ranges(s).map((r, i) => ({
      key: [r[0] === r[1] ? r[0] : r],
      data: { verdict: 'goto', chain: seps[i]! },
    }));
    svc.rules.push({
      items: [{ kind: 'vmap', key: { fields: ['numgen'], mod: total }, map: { interval: true, elements: vmap } }],
      comment: s.name,
    });
  }
  out.chains.push(svc);
  s.endpoints.forEach((e, i) =>
    out.chains.push({
      name: seps[i]!,
      rules: [
        { items: [{ kind: 'set-update', key: { fields: ['saddr'] }, set: sets[i]! }] },
        {
          items: [{ kind: 'l4proto', proto: s.proto }, { kind: 'counter' }, { kind: 'dnat', ip: e.ip, port: e.port }],
          comment: s.name,
        },
      ],
    }),
  );
}

export const hairpinElement = (ip: string): Element => ({ key: [ip, ip] });

/** What serviceParts says a service shares, without rendering it: the lb chain's name and the endpoint addresses. */
export function sharedOf(s: Service): { lb?: string; hairpin: string[] } {
  const hairpin = hairpinOf(s);
  const lb = lbOf(s);
  return lb ? { lb, hairpin } : { hairpin };
}

/** The shared lb chain a service goes to, if any (with affinity or without endpoints, none). */
export const lbOf = (s: Service): string | undefined => (goesToLb(s) ? lbChain(s) : undefined);

/** The chains that do not belong to any one service: dispatch, masquerading, standalone rules, forwards, base chains. */
export function globalChains(st: Pick<DesiredState, 'rules' | 'forwards'>, family: Family): Chain[] {
  const rules = st.rules.filter((r) => ruleFamily(r) === family).map(natRuleItems);
  const forwards = st.forwards.filter((f) => familyOf(f.targetIp) === family).map(forwardRules);
  const chain = (name: string, rs: Rule[], hook?: Chain['hook']): Chain =>
    hook ? { name, hook, rules: rs } : { name, rules: rs };
  const jump = (c: string): Rule => ({ items: [{ kind: 'jump', chain: c }] });
  const firstInFilter: Record<'input' | 'forward' | 'output', Rule[]> = {
    input:
      family === 4 && st.forwards.some((f) => familyOf(f.targetIp) === 4 && servesLoopback(f)) ? [LOCALNET_GUARD] : [],
    forward: forwards.map((f) => f.accept),
    output: [],
  };
  return [
    chain(CANARY, [{ items: [{ kind: 'counter' }], comment: CANARY_COMMENT }]),
    chain('services', [{ items: [{ kind: 'vmap', key: SERVICE_KEY, map: SERVICE_IPS }] }]),
    chain('filter-services', [{ items: [{ kind: 'vmap', key: SERVICE_KEY, map: NO_ENDPOINTS }] }]),
    chain(REJECT_CHAIN, [{ items: [{ kind: 'reject' }] }]),
    chain(MARK_MASQ, [{ items: [{ kind: 'mark-set', op: 'or', bits: MASQ_MARK }] }]),
    chain('masquerading', [
      {
        items: [
          { kind: 'ct-dnat' },
          { kind: 'in-set', key: { fields: ['saddr', 'daddr'] }, set: HAIRPIN },
          { kind: 'masquerade' },
        ],
        comment: HAIRPIN_COMMENT,
      },
      {
        items: [
          { kind: 'mark-clear', bits: MASQ_MARK },
          { kind: 'verdict', verdict: 'return' },
        ],
      },
      // Clear the mark so a packet that passes this chain again is not masqueraded twice.
      { items: [{ kind: 'mark-set', op: 'xor', bits: MASQ_MARK }] },
      { items: [{ kind: 'masquerade' }], comment: MASQ_COMMENT },
    ]),
    chain('dnat-rules', [
      ...rules.filter((r) => r.chain === 'dnat-rules').map((r) => r.rule),
      ...forwards.map((f) => f.dnat),
    ]),
    chain('snat-rules', [
      ...rules.filter((r) => r.chain === 'snat-rules').map((r) => r.rule),
      ...forwards.flatMap((f) => f.snat),
    ]),
    chain('nat-prerouting', [jump('services'), jump('dnat-rules')], {
      type: 'nat',
      hook: 'prerouting',
      priority: PRIORITY.dstnat,
    }),
    chain('nat-output', [jump('services'), jump('dnat-rules')], {
      type: 'nat',
      hook: 'output',
      priority: PRIORITY.dstnat,
    }),
    chain('nat-postrouting', [jump('masquerading'), jump('snat-rules')], {
      type: 'nat',
      hook: 'postrouting',
      priority: PRIORITY.srcnat,
    }),
    ...(['input', 'forward', 'output'] as const).map((hook) =>
      chain(
        `filter-${hook}`,
        [...firstInFilter[hook], { items: [{ kind: 'ct-new' }, { kind: 'jump', chain: 'filter-services' }] }],
        {
          type: 'filter',
          hook,
          priority: PRIORITY.filter,
        },
      ),
    ),
  ];
}

/** Chains that only jump somewhere go last, so everything they name is declared before them. */
const isBase = (c: Chain) => c.hook !== undefined;

/**
 * The whole desired table of one family. Its service elements are made when
 * read (see ServiceElements): the services must stay as they are until the
 * plan is encoded (changes replace a service object, never edit one).
 */
export function render(st: DesiredState, family: Family): Ruleset {
  const services = st.services.filter((s) => familyOf(s.vip) === family);
  const elements = new Map<string, ElementList>(
    SHARES.map((share) => [share.set, new ServiceElements(services, share)]),
  );
  const hairpin = new Set<string>();
  const lb = new Map<string, Chain>();
  const own = { chains: [] as Chain[], sets: [] as NamedSet[] };
  for (const s of services) {
    for (const e of s.endpoints) hairpin.add(e.ip);
    if (goesToLb(s) && !lb.has(lbChain(s))) lb.set(lbChain(s), lbChainFor(s));
    ownParts(s, own);
  }
  const ips = [...hairpin];
  elements.set(HAIRPIN, {
    length: ips.length,
    at: (i) => (i >= 0 && i < ips.length ? hairpinElement(ips[i]!) : undefined),
  });
  const global = globalChains(st, family);
  const chains = [
    ...global.filter((c) => !isBase(c)),
    ...[...lb.values()].sort((a, b) => a.name.localeCompare(b.name)),
    ...own.chains,
    ...global.filter(isBase),
  ];
  return { family, sets: [...staticSets(), ...own.sets], chains, elements };
}
