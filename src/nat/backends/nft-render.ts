/**
 * The nftables renderer: the NAT model as one table per family (`table ip
 * tsnet`, `table ip6 tsnet`) of typed objects, and those objects as `nft -f`
 * commands. `formatRule` is the only place that knows nft rule syntax.
 *
 * Service lookup is a verdict map, O(1) whatever the number of services
 * (where iptables walks a linear TSNET-SERVICES chain):
 *   nat-prerouting / nat-output  -> services:  ip daddr . meta l4proto . th dport vmap @service-ips
 *   service-ips element          -> svc-*:     affinity sets, then numgen random mod W vmap { ranges : goto sep-* }
 *   sep-*                        -> hairpin mark, affinity update, dnat
 *   nat-postrouting              -> masquerading (marked packets), snat-rules
 *   filter-input/forward/output  -> filter-services: vmap @no-endpoint-services -> reject
 *   canary                       -> one rule; when it is gone, the table was flushed
 */
import { createHash } from 'node:crypto';
import type { Family } from '../../addr/cidr';
import { familyOf, ruleFamily, servesLoopback, type DesiredState, type Forward, type NatRule, type Proto, type Service } from '../model';
import { endpointHash, portProtoHash } from '../names';
import { CANARY_COMMENT, MASQ_MARK } from './iptables-render';

export const TABLE = 'tsnet';
export const SERVICE_IPS = 'service-ips';
export const NO_ENDPOINTS = 'no-endpoint-services';
export const CANARY = 'canary';
const MARK_MASQ = 'mark-for-masquerade';

/** One statement-level rule as data. Matches render in field order, then the verdict or action. */
export interface NftRule {
  saddr?: string;
  saddrNot?: boolean;
  daddr?: string;
  /** `fib daddr type local`: any address of this host. */
  daddrLocal?: boolean;
  proto?: Proto;
  dport?: number;
  oif?: string;
  oifNot?: boolean;
  ctNew?: boolean;
  /** `ip saddr @SET` (affinity hit). */
  saddrInSet?: string;
  /** `meta mark & M == 0`. */
  markUnset?: number;
  /** Conntrack: a DNATed connection whose original destination port / reply source is this (needs `proto`). */
  ct?: { dnat?: boolean; origDstPort?: number; replSrc?: string; replSrcPort?: number; notEstablishedOrDnat?: boolean };
  action:
    | { kind: 'jump' | 'goto'; chain: string }
    | { kind: 'lookup'; map: string }
    | { kind: 'numgen'; total: number; arms: { from: number; to: number; chain: string }[] }
    | { kind: 'dnat'; to: string; proto?: Proto }
    | { kind: 'snat'; to: string }
    | { kind: 'masquerade' }
    | { kind: 'mark'; op: '|' | '^'; mark: number }
    | { kind: 'affinity-update'; set: string }
    | { kind: 'return' | 'reject' | 'counter' | 'accept' | 'drop' };
  comment?: string;
}

export interface BaseHook {
  type: 'nat' | 'filter';
  hook: 'prerouting' | 'output' | 'postrouting' | 'input' | 'forward';
  priority: number;
}

export type NftObject =
  | { kind: 'chain'; name: string; base?: BaseHook; rules: NftRule[] }
  | { kind: 'set'; name: string; timeout: number }
  | { kind: 'map'; name: string; elements: MapElement[] };

export interface MapElement {
  key: { addr: string; proto: Proto; port: number };
  chain: string;
  comment: string;
}

export interface NftRuleset {
  family: Family;
  objects: NftObject[];
}

const safe = (s: string) => s.replace(/:/g, '.');
export const svcChain = (s: Pick<Service, 'name' | 'proto'>) => `svc-${portProtoHash(s.name, s.proto).slice(0, 8)}-${s.name}/${s.proto}`;
export const sepChain = (s: Pick<Service, 'name' | 'proto'>, ip: string, port: number) =>
  `sep-${endpointHash(s.name, s.proto, ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`).slice(0, 8)}-${s.name}/${s.proto}__${safe(ip)}/${port}`;
const affinitySet = (sep: string, seconds: number) => `aff-${sep.slice(4, 12)}-${seconds}`;
const hostPort = (ip: string, port: number) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

function serviceObjects(s: Service): NftObject[] {
  const svc: NftObject = { kind: 'chain', name: svcChain(s), rules: [] };
  const out: NftObject[] = [svc];
  if (s.masqueradeNotFrom) {
    svc.rules.push({ daddr: s.vip, proto: s.proto, dport: s.port, saddr: s.masqueradeNotFrom, saddrNot: true, action: { kind: 'jump', chain: MARK_MASQ }, comment: `${s.name} cluster IP` });
  }
  const seps = s.endpoints.map((e) => sepChain(s, e.ip, e.port));
  const sets = seps.map((n) => (s.affinitySeconds ? affinitySet(n, s.affinitySeconds) : undefined));
  if (s.affinitySeconds) {
    seps.forEach((n, i) => {
      svc.rules.push({ saddrInSet: sets[i]!, action: { kind: 'goto', chain: n }, comment: `${s.name} -> ${hostPort(s.endpoints[i]!.ip, s.endpoints[i]!.port)}` });
      out.push({ kind: 'set', name: sets[i]!, timeout: s.affinitySeconds! });
    });
  }
  // Weighted choice: endpoint i owns a range of width w_i in [0, sum w).
  let from = 0;
  const arms = s.endpoints.map((e, i) => {
    const arm = { from, to: from + e.weight - 1, chain: seps[i]! };
    from += e.weight;
    return arm;
  });
  svc.rules.push(arms.length === 1
    ? { action: { kind: 'goto', chain: arms[0]!.chain }, comment: s.name }
    : { action: { kind: 'numgen', total: from, arms }, comment: s.name });
  s.endpoints.forEach((e, i) => {
    const rules: NftRule[] = [{ saddr: e.ip, action: { kind: 'jump', chain: MARK_MASQ }, comment: `${s.name} hairpin` }];
    if (sets[i]) rules.push({ action: { kind: 'affinity-update', set: sets[i]! } });
    rules.push({ action: { kind: 'dnat', to: hostPort(e.ip, e.port), proto: s.proto }, comment: s.name });
    out.push({ kind: 'chain', name: seps[i]!, rules });
  });
  return out;
}

function natRule(r: NatRule): { chain: 'dnat-rules' | 'snat-rules'; rule: NftRule } {
  switch (r.kind) {
    case 'masquerade':
      return { chain: 'snat-rules', rule: { saddr: r.source, ...(r.destination ? { daddr: r.destination } : {}), ...(r.outNot ? { oif: r.outNot, oifNot: true } : {}), action: { kind: 'masquerade' }, comment: `tsnet masquerade ${r.source}${r.destination ? ` to ${r.destination}` : ''}` } };
    case 'snat':
      return { chain: 'snat-rules', rule: { saddr: r.source, ...(r.destination ? { daddr: r.destination } : {}), ...(r.out ? { oif: r.out } : {}), action: { kind: 'snat', to: r.toSource }, comment: `tsnet snat ${r.source}` } };
    case 'dnat':
      return { chain: 'dnat-rules', rule: { daddr: r.destination, proto: r.proto, dport: r.port, action: { kind: 'dnat', to: hostPort(r.toIp, r.toPort), proto: r.proto }, comment: `tsnet dnat ${hostPort(r.destination, r.port)}` } };
  }
}

/** A forward's rules, as in the iptables backend: DNAT in, source NAT of its own flows out, an accept in forward. */
function forwardRules(f: Forward): { dnat: NftRule; snat: NftRule[]; accept: NftRule } {
  const comment = `tsnet forward ${f.name}`;
  const dnat: NftRule = { ...(f.listen ? { daddr: f.listen } : { daddrLocal: true }), proto: f.proto, dport: f.listenPort, action: { kind: 'dnat', to: hostPort(f.targetIp, f.targetPort) }, comment };
  const mine = { dnat: true, origDstPort: f.listenPort };
  const snat: NftRule[] = [];
  const toTarget = { daddr: f.targetIp, proto: f.proto, dport: f.targetPort, ct: mine, comment };
  if (f.snat === 'auto' || f.snat === 'masquerade') snat.push({ ...toTarget, action: { kind: 'masquerade' } });
  else if (f.snat !== 'none') snat.push({ ...toTarget, action: { kind: 'snat', to: f.snat } });
  if (f.snat === 'none' && servesLoopback(f)) snat.push({ saddr: '127.0.0.0/8', proto: f.proto, ct: mine, action: { kind: 'masquerade' }, comment });
  const accept: NftRule = { proto: f.proto, ct: { ...mine, replSrc: f.targetIp, replSrcPort: f.targetPort }, action: { kind: 'accept' }, comment };
  return { dnat, snat, accept };
}

const LOCALNET_GUARD: NftRule = {
  daddr: '127.0.0.0/8', saddr: '127.0.0.0/8', saddrNot: true, ct: { notEstablishedOrDnat: true },
  action: { kind: 'drop' }, comment: 'tsnet: block incoming localnet connections (CVE-2020-8558)',
};

/** The whole desired table of one family. */
export function render(st: DesiredState, family: Family): NftRuleset {
  const services = st.services.filter((s) => familyOf(s.vip) === family);
  const rules = st.rules.filter((r) => ruleFamily(r) === family);
  const serviceIps: MapElement[] = [];
  const noEndpoints: MapElement[] = [];
  const perService: NftObject[] = [];
  for (const s of services) {
    const key = { addr: s.vip, proto: s.proto, port: s.port };
    if (s.endpoints.length === 0) {
      noEndpoints.push({ key, chain: 'reject-no-endpoints', comment: `${s.name} has no endpoints` });
      continue;
    }
    serviceIps.push({ key, chain: svcChain(s), comment: s.name });
    perService.push(...serviceObjects(s));
  }
  const chain = (name: string, rs: NftRule[], base?: BaseHook): NftObject => ({ kind: 'chain', name, rules: rs, ...(base ? { base } : {}) });
  const jump = (c: string): NftRule => ({ action: { kind: 'jump', chain: c } });
  const split = (which: 'dnat-rules' | 'snat-rules') => rules.map(natRule).filter((x) => x.chain === which).map((x) => x.rule);
  const forwards = st.forwards.filter((f) => familyOf(f.targetIp) === family).map(forwardRules);
  const filterFirst: Record<'input' | 'forward' | 'output', NftRule[]> = {
    input: family === 4 && st.forwards.some((f) => familyOf(f.targetIp) === 4 && servesLoopback(f)) ? [LOCALNET_GUARD] : [],
    forward: forwards.map((f) => f.accept),
    output: [],
  };
  const objects: NftObject[] = [
    { kind: 'map', name: SERVICE_IPS, elements: serviceIps },
    { kind: 'map', name: NO_ENDPOINTS, elements: noEndpoints },
    chain(CANARY, [{ action: { kind: 'counter' }, comment: CANARY_COMMENT }]),
    chain('services', [{ action: { kind: 'lookup', map: SERVICE_IPS } }]),
    chain('filter-services', [{ action: { kind: 'lookup', map: NO_ENDPOINTS } }]),
    chain('reject-no-endpoints', [{ action: { kind: 'reject' } }]),
    chain(MARK_MASQ, [{ action: { kind: 'mark', op: '|', mark: MASQ_MARK } }]),
    chain('masquerading', [
      { markUnset: MASQ_MARK, action: { kind: 'return' } },
      { action: { kind: 'mark', op: '^', mark: MASQ_MARK } },
      { action: { kind: 'masquerade' }, comment: 'tsnet service traffic requiring SNAT' },
    ]),
    chain('dnat-rules', [...split('dnat-rules'), ...forwards.map((f) => f.dnat)]),
    chain('snat-rules', [...split('snat-rules'), ...forwards.flatMap((f) => f.snat)]),
    chain('nat-prerouting', [jump('services'), jump('dnat-rules')], { type: 'nat', hook: 'prerouting', priority: -100 }),
    chain('nat-output', [jump('services'), jump('dnat-rules')], { type: 'nat', hook: 'output', priority: -100 }),
    chain('nat-postrouting', [jump('masquerading'), jump('snat-rules')], { type: 'nat', hook: 'postrouting', priority: 100 }),
    ...(['input', 'forward', 'output'] as const).map((hook) =>
      chain(`filter-${hook}`, [...filterFirst[hook], { ctNew: true, action: { kind: 'jump', chain: 'filter-services' } }], { type: 'filter', hook, priority: -10 })),
    ...perService,
  ];
  return { family, objects };
}

const hex = (n: number) => `0x${n.toString(16)}`;
const quote = (s: string) => JSON.stringify(s);

/** One rule as nft syntax (what follows `add rule ip tsnet CHAIN`). */
export function formatRule(r: NftRule, family: Family): string {
  const ip = family === 6 ? 'ip6' : 'ip';
  const p: string[] = [];
  if (r.ctNew) p.push('ct state new');
  if (r.saddr !== undefined) p.push(`${ip} saddr`, r.saddrNot ? '!=' : '', r.saddr);
  if (r.saddrInSet !== undefined) p.push(`${ip} saddr @${r.saddrInSet}`);
  if (r.daddr !== undefined) p.push(`${ip} daddr`, r.daddr);
  if (r.daddrLocal) p.push('fib daddr type local');
  if (r.oif !== undefined) p.push('oifname', r.oifNot ? '!=' : '', quote(r.oif));
  if (r.proto !== undefined) p.push(`meta l4proto ${r.proto}`);
  if (r.dport !== undefined) p.push(`th dport ${r.dport}`);
  if (r.markUnset !== undefined) p.push(`meta mark & ${hex(r.markUnset)} == 0`);
  if (r.ct?.notEstablishedOrDnat) p.push('ct state & (established | related) == 0 ct status & dnat == 0');
  if (r.ct?.dnat) p.push('ct status & dnat == dnat');
  if (r.ct?.origDstPort !== undefined) p.push(`ct original proto-dst ${r.ct.origDstPort}`);
  if (r.ct?.replSrc !== undefined) p.push(`ct reply ${ip} saddr ${r.ct.replSrc}`);
  if (r.ct?.replSrcPort !== undefined) p.push(`ct reply proto-src ${r.ct.replSrcPort}`);
  const a = r.action;
  switch (a.kind) {
    case 'jump': case 'goto': p.push(a.kind, a.chain); break;
    case 'lookup': p.push(`${ip} daddr . meta l4proto . th dport vmap @${a.map}`); break;
    case 'numgen': p.push(`numgen random mod ${a.total} vmap {`, a.arms.map((x) => `${x.from === x.to ? x.from : `${x.from}-${x.to}`} : goto ${x.chain}`).join(', '), '}'); break;
    case 'dnat': p.push(a.proto ? `meta l4proto ${a.proto}` : '', 'dnat to', a.to); break;
    case 'snat': p.push('snat to', a.to, 'fully-random'); break;
    case 'masquerade': p.push('masquerade fully-random'); break;
    case 'mark': p.push(`meta mark set meta mark ${a.op} ${hex(a.mark)}`); break;
    case 'affinity-update': p.push(`update @${a.set} { ${ip} saddr }`); break;
    default: p.push(a.kind);
  }
  if (r.comment !== undefined) p.push('comment', quote(r.comment));
  return p.filter((x) => x !== '').join(' ');
}

const mapType = (family: Family) => `${family === 6 ? 'ipv6_addr' : 'ipv4_addr'} . inet_proto . inet_service : verdict`;
const elementKey = (e: MapElement) => `${e.key.addr} . ${e.key.proto} . ${e.key.port}`;
const elementText = (e: MapElement) => `${elementKey(e)} comment ${quote(e.comment)} : goto ${e.chain}`;

/** The declaration of an object (`add chain|set|map ip tsnet NAME { ... }`). */
function declare(o: NftObject, family: Family): string {
  const where = `${family === 6 ? 'ip6' : 'ip'} ${TABLE} ${o.name}`;
  switch (o.kind) {
    case 'chain':
      return o.base ? `add chain ${where} { type ${o.base.type} hook ${o.base.hook} priority ${o.base.priority} ; policy accept ; }` : `add chain ${where}`;
    case 'set':
      return `add set ${where} { type ${family === 6 ? 'ipv6_addr' : 'ipv4_addr'} ; flags dynamic,timeout ; timeout ${o.timeout}s ; }`;
    case 'map':
      return `add map ${where} { type ${mapType(family)} ; }`;
  }
}

/** What partial sync compares: a digest per chain and set, the target per map element. */
export function digests(rs: NftRuleset): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = { chain: {}, set: {}, [SERVICE_IPS]: {}, [NO_ENDPOINTS]: {} };
  for (const o of rs.objects) {
    if (o.kind === 'map') for (const e of o.elements) out[o.name]![elementKey(e)] = elementText(e);
    else if (o.kind === 'set') out.set![o.name] = String(o.timeout);
    else out.chain![o.name] = createHash('sha256').update(declare(o, rs.family) + '\n' + o.rules.map((r) => formatRule(r, rs.family)).join('\n')).digest('base64url').slice(0, 22);
  }
  return out;
}

/**
 * The `nft -f` script that turns the table last written as `prev` into `rs`,
 * in one transaction. Without `prev` (first sync, flush detected, forced) the
 * table is deleted and rebuilt in the same transaction, so there is no moment
 * without rules. With it, only changed chains are flushed and refilled, map
 * elements are added and deleted one by one, and stale chains and sets go.
 */
export function script(rs: NftRuleset, prev?: Record<string, Record<string, string>>): { text: string; written: number; deleted: number } {
  const fam = rs.family === 6 ? 'ip6' : 'ip';
  const want = digests(rs);
  const lines: string[] = [`add table ${fam} ${TABLE}`];
  if (!prev) lines.push(`delete table ${fam} ${TABLE}`, `add table ${fam} ${TABLE}`);
  const before = prev ?? { chain: {}, set: {}, [SERVICE_IPS]: {}, [NO_ENDPOINTS]: {} };
  let written = 0, deleted = 0;
  const chains = rs.objects.filter((o): o is Extract<NftObject, { kind: 'chain' }> => o.kind === 'chain');
  const fresh = (kind: string, name: string) => before[kind]?.[name] === undefined;
  for (const o of rs.objects) {
    if ((o.kind === 'map' && !prev) || (o.kind === 'set' && fresh('set', o.name))) lines.push(declare(o, rs.family));
  }
  for (const c of chains) if (fresh('chain', c.name)) lines.push(declare(c, rs.family));
  const changed = chains.filter((c) => before.chain?.[c.name] !== want.chain![c.name]);
  for (const c of changed) {
    if (!fresh('chain', c.name)) lines.push(`flush chain ${fam} ${TABLE} ${c.name}`);
    for (const r of c.rules) lines.push(`add rule ${fam} ${TABLE} ${c.name} ${formatRule(r, rs.family)}`);
  }
  written += changed.length;
  for (const map of [SERVICE_IPS, NO_ENDPOINTS]) {
    const w = want[map]!, b = before[map] ?? {};
    const gone = Object.keys(b).filter((k) => w[k] !== b[k]);
    const added = Object.keys(w).filter((k) => w[k] !== b[k]);
    if (gone.length) lines.push(`delete element ${fam} ${TABLE} ${map} { ${gone.join(', ')} }`);
    if (added.length) lines.push(`add element ${fam} ${TABLE} ${map} { ${added.map((k) => w[k]).join(', ')} }`);
    written += added.length;
  }
  const staleChains = Object.keys(before.chain ?? {}).filter((n) => want.chain![n] === undefined);
  const staleSets = Object.keys(before.set ?? {}).filter((n) => want.set![n] === undefined);
  for (const n of staleChains) lines.push(`flush chain ${fam} ${TABLE} ${n}`);
  for (const n of staleChains) lines.push(`delete chain ${fam} ${TABLE} ${n}`);
  for (const n of staleSets) lines.push(`delete set ${fam} ${TABLE} ${n}`);
  deleted += staleChains.length + staleSets.length;
  return { text: `${lines.join('\n')}\n`, written, deleted };
}
