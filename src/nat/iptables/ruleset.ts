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
import { hash } from 'node:crypto';
import { formatHostPort, type Family } from '../../addr/cidr';
import {
  familyOf,
  ruleFamily,
  formatProbability,
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

export type Target =
  | { kind: 'jump'; chain: string }
  | { kind: 'DNAT'; to: string }
  | { kind: 'SNAT'; to: string; randomFully?: boolean }
  | { kind: 'MASQUERADE'; randomFully?: boolean }
  | { kind: 'MARK'; op: 'or' | 'xor'; mark: number }
  | { kind: 'RETURN' | 'ACCEPT' | 'REJECT' | 'DROP' };

/** One iptables rule as data; fields render in this order. */
export interface Rule {
  comment?: string;
  proto?: Proto;
  src?: string;
  srcNot?: boolean;
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
  target: Target;
}

export interface Chain {
  table: IptTable;
  name: string;
  rules: Rule[];
}

/** A rule tsnet keeps in a built-in chain (always a jump into one of ours). */
export interface Hook {
  table: IptTable;
  chain: 'PREROUTING' | 'OUTPUT' | 'POSTROUTING' | 'INPUT' | 'FORWARD';
  rule: Rule & { target: { kind: 'jump'; chain: string } };
}

export interface Ruleset {
  family: Family;
  chains: Chain[];
  hooks: Hook[];
}

export const SERVICES = 'TSNET-SERVICES';
export const MARK_MASQ = 'TSNET-MARK-MASQ';
export const POSTROUTING = 'TSNET-POSTROUTING';
export const DNAT_CHAIN = 'TSNET-DNAT';
export const SNAT_CHAIN = 'TSNET-SNAT';
export const CANARY = 'TSNET-CANARY';
export const FORWARD_CHAIN = 'TSNET-FORWARD';
export const FIREWALL = 'TSNET-FIREWALL';

export const svcChain = (s: Pick<Service, 'name' | 'proto'>): string =>
  `${PREFIX}SVC-${portProtoHash(s.name, s.proto)}`;
export const sepChain = (s: Pick<Service, 'name' | 'proto'>, ip: string, port: number): string =>
  `${PREFIX}SEP-${endpointHash(s.name, s.proto, formatHostPort(ip, port))}`;

const host = (ip: string) => (ip.includes(':') ? `${ip}/128` : `${ip}/32`);

function serviceChains(s: Service): Chain[] {
  const svc = svcChain(s);
  const base: Omit<Rule, 'target'> = {
    comment: `${s.name} cluster IP`,
    proto: s.proto,
    dst: host(s.vip),
    dport: s.port,
  };
  const chain: Chain = { table: 'nat', name: svc, rules: [] };
  const seps: Chain[] = [];
  if (s.masqueradeNotFrom)
    chain.rules.push({ ...base, src: s.masqueradeNotFrom, srcNot: true, target: { kind: 'jump', chain: MARK_MASQ } });
  const names = s.endpoints.map((e) => sepChain(s, e.ip, e.port));
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
    const r: Rule = {
      comment: `${s.name} -> ${formatHostPort(e.ip, e.port)}`,
      target: { kind: 'jump', chain: names[i]! },
    };
    if (probs[i] !== undefined) r.probability = probs[i]!;
    chain.rules.push(r);
    const dnat: Rule = { comment: s.name, proto: s.proto, target: { kind: 'DNAT', to: formatHostPort(e.ip, e.port) } };
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

function natRuleFor(r: NatRule): { chain: string; rule: Rule } {
  switch (r.kind) {
    case 'masquerade': {
      const rule: Rule = {
        comment: `tsnet masquerade ${r.source}${r.destination ? ` to ${r.destination}` : ''}`,
        src: r.source,
        target: { kind: 'MASQUERADE', randomFully: true },
      };
      if (r.destination) rule.dst = r.destination;
      if (r.outNot) rule.outNot = r.outNot;
      return { chain: SNAT_CHAIN, rule };
    }
    case 'snat': {
      const rule: Rule = {
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
function forwardRules(f: Forward): { dnat: Rule; snat: Rule[]; accept: Rule } {
  const comment = `tsnet forward ${f.name}`;
  const dnat: Rule = {
    comment,
    proto: f.proto,
    dport: f.listenPort,
    target: { kind: 'DNAT', to: formatHostPort(f.targetIp, f.targetPort) },
  };
  if (f.listen) dnat.dst = host(f.listen);
  else dnat.dstLocal = true;
  const mine = { state: ['DNAT'], origDstPort: f.listenPort };
  const snat: Rule[] = [];
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
  const accept: Rule = {
    comment,
    ct: { state: ['DNAT'], origDstPort: f.listenPort, replSrc: f.targetIp, replSrcPort: f.targetPort },
    proto: f.proto,
    target: { kind: 'ACCEPT' },
  };
  return { dnat, snat, accept };
}

/** kube-proxy's guard for route_localnet (CVE-2020-8558): nothing from outside reaches 127.0.0.0/8 unless it was DNATed. */
export const LOCALNET_GUARD: Rule = {
  comment: LOCALNET_COMMENT,
  dst: '127.0.0.0/8',
  src: '127.0.0.0/8',
  srcNot: true,
  ct: { state: ['RELATED', 'ESTABLISHED', 'DNAT'], stateNot: true },
  target: { kind: 'DROP' },
};

/** The whole desired ruleset of one address family. */
export function render(st: DesiredState, family: Family): Ruleset {
  const services = st.services.filter((s) => familyOf(s.vip) === family);
  const rules = st.rules.filter((r) => ruleFamily(r) === family);
  const dispatch: Chain = { table: 'nat', name: SERVICES, rules: [] };
  const rejects: Chain = { table: 'filter', name: SERVICES, rules: [] };
  const perService: Chain[] = [];
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
      target: { kind: 'jump', chain: svcChain(s) },
    });
    perService.push(...serviceChains(s));
  }
  const dnat: Chain = { table: 'nat', name: DNAT_CHAIN, rules: [] };
  const snat: Chain = { table: 'nat', name: SNAT_CHAIN, rules: [] };
  for (const r of rules) {
    const { chain, rule } = natRuleFor(r);
    (chain === DNAT_CHAIN ? dnat : snat).rules.push(rule);
  }
  const forward: Chain = { table: 'filter', name: FORWARD_CHAIN, rules: [] };
  const firewall: Chain = { table: 'filter', name: FIREWALL, rules: [] };
  const forwards = st.forwards.filter((f) => familyOf(f.targetIp) === family);
  for (const f of forwards) {
    const r = forwardRules(f);
    dnat.rules.push(r.dnat);
    snat.rules.push(...r.snat);
    forward.rules.push(r.accept);
  }
  if (forwards.some(servesLoopback)) firewall.rules.push(LOCALNET_GUARD);
  const chains: Chain[] = [
    canary('nat'),
    canary('filter'),
    dispatch,
    rejects,
    dnat,
    snat,
    forward,
    firewall,
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
    ...perService,
  ];
  const jump = (chain: string, comment: string) => ({ comment, target: { kind: 'jump' as const, chain } });
  const newOnly = (chain: string, comment: string) => ({
    comment,
    ct: { state: ['NEW'] },
    target: { kind: 'jump' as const, chain },
  });
  const hooks: Hook[] = [
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
  return { family, chains, hooks };
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** One rule as iptables-restore / iptables-save text, without the leading `-A CHAIN`. */
const canary = (table: IptTable): Chain => ({
  table,
  name: CANARY,
  rules: [{ comment: CANARY_COMMENT, target: { kind: 'RETURN' } }],
});

export function formatRule(r: Rule): string {
  const p: string[] = [];
  if (r.comment !== undefined) p.push('-m comment --comment', JSON.stringify(r.comment));
  if (r.src !== undefined) p.push(r.srcNot ? '!' : '', '-s', r.src);
  if (r.dst !== undefined) p.push('-d', r.dst);
  if (r.dstLocal) p.push('-m addrtype --dst-type LOCAL');
  if (r.out !== undefined) p.push('-o', r.out);
  if (r.outNot !== undefined) p.push('!', '-o', r.outNot);
  if (r.proto !== undefined) p.push('-p', r.proto);
  if (r.dport !== undefined) p.push(`-m ${r.proto} --dport`, String(r.dport));
  if (r.ct) {
    p.push('-m conntrack');
    if (r.ct.state) p.push(r.ct.stateNot ? '!' : '', '--ctstate', r.ct.state.join(','));
    if (r.ct.origDstPort !== undefined) p.push('--ctorigdstport', String(r.ct.origDstPort));
    if (r.ct.replSrc !== undefined) p.push('--ctreplsrc', r.ct.replSrc);
    if (r.ct.replSrcPort !== undefined) p.push('--ctreplsrcport', String(r.ct.replSrcPort));
  }
  if (r.mark) p.push('-m mark', r.mark.not ? '!' : '', '--mark', `${hex(r.mark.mark)}/${hex(r.mark.mark)}`);
  if (r.recent) {
    p.push('-m recent --name', r.recent.name);
    p.push(r.recent.op === 'set' ? '--set' : `--rcheck --seconds ${r.recent.seconds} --reap`);
  }
  if (r.probability !== undefined) p.push('-m statistic --mode random --probability', formatProbability(r.probability));
  const t = r.target;
  switch (t.kind) {
    case 'jump':
      p.push('-j', t.chain);
      break;
    case 'DNAT':
      p.push('-j DNAT --to-destination', t.to);
      break;
    case 'SNAT':
      p.push('-j SNAT --to-source', t.to, t.randomFully ? '--random-fully' : '');
      break;
    case 'MASQUERADE':
      p.push('-j MASQUERADE', t.randomFully ? '--random-fully' : '');
      break;
    case 'MARK':
      p.push(`-j MARK --${t.op}-mark`, hex(t.mark));
      break;
    default:
      p.push('-j', t.kind);
  }
  return p.filter((x) => x !== '').join(' ');
}

/**
 * A chain's rendered lines, and a digest of them (what partial sync
 * compares). Both are kept per chain object: a sync asks for each several
 * times (is it changed, its payload, the record), and 60,000 chains
 * formatted three times cost seconds.
 */
const linesOf = new WeakMap<Chain, string[]>();
const digestOf = new WeakMap<Chain, string>();
export function chainLines(c: Chain): string[] {
  let lines = linesOf.get(c);
  if (!lines) linesOf.set(c, (lines = c.rules.map((r) => `-A ${c.name} ${formatRule(r)}`)));
  return lines;
}
export function chainDigest(c: Chain): string {
  let d = digestOf.get(c);
  // crypto.hash (one call, no Hash object): three times faster for 60,000 small chains.
  if (!d) digestOf.set(c, (d = hash('sha256', chainLines(c).join('\n'), 'base64url').slice(0, 22)));
  return d;
}

/** What the applier knows about the live tables: which of our chains exist, which hooks are present. */
export interface Live {
  /** table -> chain -> digest of what was last written (undefined: exists, content unknown). */
  chains: Record<IptTable, Map<string, string | undefined>>;
  /** Hooks already present: hookKey -> their lines as iptables-save prints them. */
  hooks: Map<string, string[]>;
}

/**
 * A hook's identity: table, built-in chain, and our chain it jumps to (OUTPUT
 * exists in both nat and filter). Matching on this rather than on the whole
 * line keeps us independent of how iptables-save orders match options.
 */
export const hookKey = (table: IptTable, chain: string, target: string): string => `${table}:${chain}->${target}`;
export const hookKeyOf = (h: Hook): string => hookKey(h.table, h.chain, h.rule.target.chain);

/**
 * The iptables-restore --noflush payload that turns `live` into `rs`:
 * declaring a chain (`:NAME - [0:0]`) flushes it, so only chains whose digest
 * changed are declared and rewritten (MinimizeIPTablesRestore); the dispatch
 * chains are always rewritten; chains of ours that are no longer wanted are
 * flushed and deleted in the same transaction; missing hooks are inserted at
 * the top of their built-in chain. Nothing else in the tables is touched.
 */
/**
 * The rules `c` adds at the end of what `old` (the chain as last written,
 * when its digest confirms that) already holds; undefined when the chain
 * must be rewritten. Appending spares the kernel deleting and re-adding the
 * chain's rules, which iptables-nft pays ~12 ms for per transaction.
 */
function appendedLines(c: Chain, old: Chain | undefined, liveDigest: string | undefined): string[] | undefined {
  if (!old || c.name === SERVICES || liveDigest !== chainDigest(old)) return undefined;
  const before = chainLines(old);
  const after = chainLines(c);
  if (after.length <= before.length || before.some((l, i) => l !== after[i])) return undefined;
  return after.slice(before.length);
}

/**
 * The iptables-restore --noflush payload taking the live tables to `rs`:
 * changed chains rewritten (or only appended to, when `o.prev`, the ruleset
 * last written, shows they only grew), stale chains deleted, missing hooks
 * inserted. Without `live` everything is written (a full sync).
 *
 * `o.guardCanary` puts a check of the canary in front of each table's
 * changes (both tables, changed or not): `-C` fails the table's transaction
 * when the rule is gone (the table was flushed), so a partial sync and its
 * flush check cost one iptables-restore instead of three processes. (`-C` is
 * also the cheap test: with iptables-nft a `-D`/`-R` of the canary costs
 * ~15 ms of cache loading, `-C` ~1.5.)
 */
const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

export function restorePayload(
  rs: Ruleset,
  live: Live | undefined,
  o: { prev?: Ruleset; guardCanary?: boolean } = {},
): { payload: string; written: number; deleted: number } {
  const r = restoreChunks(rs, live, o);
  return { payload: [...r.chunks].join(''), written: r.written, deleted: r.deleted };
}

/**
 * restorePayload as pieces of ~64 KiB, formatted as they are taken: a full
 * sync feeds iptables-restore while the rest is still being written, so the
 * tool parses on one core while tsnet formats on the other.
 */
export function restoreChunks(
  rs: Ruleset,
  live: Live | undefined,
  o: { prev?: Ruleset; guardCanary?: boolean } = {},
): { chunks: Iterable<string>; written: number; deleted: number } {
  const plans: {
    table: IptTable;
    changed: Chain[];
    stale: string[];
    hooks: Hook[];
    appends: Map<string, string[] | undefined>;
  }[] = [];
  let written = 0,
    deleted = 0;
  for (const table of ['nat', 'filter'] as const) {
    const want = rs.chains.filter((c) => c.table === table);
    const have = live?.chains[table] ?? new Map<string, string | undefined>();
    // Declared and filled in sorted order: iptables-nft-restore takes minutes instead of seconds for
    // 10,000 services when a payload's chains come in any other order (kube-proxy sorts them too).
    // A chain with no recorded digest is rewritten without computing its own (a full sync formats each once, when written).
    const changed = want
      .filter(
        (c) => c.name === SERVICES || !live || have.get(c.name) === undefined || have.get(c.name) !== chainDigest(c),
      )
      .sort(byName);
    const wanted = new Set(want.map((c) => c.name));
    const stale = [...have.keys()].filter((n) => !wanted.has(n)).sort();
    const hooks = rs.hooks.filter((h) => h.table === table && !live?.hooks.has(hookKeyOf(h)));
    if (!changed.length && !stale.length && !hooks.length && !o.guardCanary) continue;
    const before = new Map((o.prev?.chains ?? []).filter((c) => c.table === table).map((c) => [c.name, c]));
    const appends = new Map(
      changed.map((c) => [
        c.name,
        live && before.size ? appendedLines(c, before.get(c.name), have.get(c.name)) : undefined,
      ]),
    );
    plans.push({ table, changed, stale, hooks, appends });
    written += changed.length;
    deleted += stale.length;
  }
  function* lines(): Generator<string> {
    for (const { table, changed, stale, hooks, appends } of plans) {
      yield `*${table}`;
      if (o.guardCanary) yield `-C ${CANARY} ${formatRule(canary(table).rules[0]!)}`;
      for (const c of changed) if (!appends.get(c.name)) yield `:${c.name} - [0:0]`;
      for (const n of stale) yield `:${n} - [0:0]`;
      for (const c of changed) {
        yield* appends.get(c.name) ?? chainLines(c);
        chainDigest(c); // the sync records every chain's digest: hashed here, while the tool parses, not after it
      }
      for (const n of stale) yield `-X ${n}`;
      for (const h of hooks) yield `-I ${h.chain} 1 ${formatRule(h.rule)}`;
      yield 'COMMIT';
    }
  }
  function* chunks(): Generator<string> {
    let buf: string[] = [];
    let size = 0;
    for (const l of lines()) {
      buf.push(l);
      size += l.length + 1;
      if (size >= 64 * 1024) {
        yield `${buf.join('\n')}\n`;
        buf = [];
        size = 0;
      }
    }
    if (buf.length) yield `${buf.join('\n')}\n`;
  }
  return { chunks: { [Symbol.iterator]: chunks }, written, deleted };
}
