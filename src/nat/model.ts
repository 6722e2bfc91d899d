/**
 * The NAT model: what the user wants, as data. Services (a VIP:port load
 * balanced over weighted endpoints, kube-proxy style) and standalone
 * masquerade / SNAT / DNAT rules. Nothing here knows iptables or nftables
 * syntax: the backends in ./backends render this.
 */
import { TsnetError, invalid } from '../errors';
import { formatHostPort, parseCidr, parseIp, type Family } from '../addr/cidr';
import { validateIfname } from '../link/ifname';

export type Proto = 'tcp' | 'udp';

export interface Endpoint {
  ip: string;
  port: number;
  /** Relative share of new connections (default 1). */
  weight: number;
}

export interface Service {
  /** Letters, digits, '.', '_', '-', '/' (e.g. "default/redis"); shown in every rule's comment. */
  name: string;
  vip: string;
  port: number;
  proto: Proto;
  endpoints: Endpoint[];
  /** Session affinity by client IP, for this many seconds. */
  affinitySeconds?: number;
  /** Masquerade traffic to the VIP whose source is outside this CIDR (kube-proxy's clusterCIDR rule). */
  masqueradeNotFrom?: string;
  /**
   * "cluster": programmed by the node's agent from etcd (src/cluster/service-sync.ts). Only the agent's
   * cluster changes touch it; a local command may neither change it nor take its VIP.
   */
  origin?: 'cluster';
}

/** `iptables -t nat -A POSTROUTING -s SOURCE [-d DEST] ! -o OUT_NOT -j MASQUERADE`. */
export interface MasqueradeRule {
  kind: 'masquerade';
  source: string;
  /** Only traffic to this CIDR (e.g. a container reaching itself through a port mapping: hairpin). */
  destination?: string;
  /** Only traffic to anywhere but this CIDR (`! -d`: a pod leaving the cluster network, as flannel masquerades). */
  destinationNot?: string;
  /** Leaving through any interface except this one (e.g. the bridge itself). */
  outNot?: string;
}

/** A masquerade rule's comment: its identity in the ruleset (what a delete finds it by). */
export const masqueradeComment = (r: { source: string; destination?: string; destinationNot?: string }): string =>
  `tsnet masquerade ${r.source}${r.destination ? ` to ${r.destination}` : ''}${r.destinationNot ? ` not to ${r.destinationNot}` : ''}`;

/** `iptables -t nat -A POSTROUTING -s SOURCE [-d DEST] [-o OUT] -j SNAT --to-source TO`. */
export interface SnatRule {
  kind: 'snat';
  source: string;
  destination?: string;
  out?: string;
  toSource: string;
}

/** `iptables -t nat -A PREROUTING/OUTPUT -d DEST -p PROTO --dport PORT -j DNAT --to-destination TO:TOPORT`. */
export interface DnatRule {
  kind: 'dnat';
  destination: string;
  proto: Proto;
  port: number;
  toIp: string;
  toPort: number;
}

export type NatRule = MasqueradeRule | SnatRule | DnatRule;

/**
 * How a forward's return path is made: 'auto' and 'masquerade' source-NAT
 * only the flows this forward DNATed (conntrack original-destination match)
 * to the outgoing address, with no fixed port; an IP does the same to that
 * address; 'none' leaves the source alone (the target routes replies back).
 */
export type SnatMode = 'auto' | 'masquerade' | 'none' | string;

/**
 * `tsnet forward TARGET LISTEN_PORT TARGET_PORT`: connections to this host's
 * LISTEN_PORT (any local address, or `listen`) go to TARGET:TARGET_PORT.
 */
export interface Forward {
  name: string;
  /** As the user gave it (a host name or an address). */
  target: string;
  /** What it resolved to when the forward was made. */
  targetIp: string;
  listenPort: number;
  targetPort: number;
  listen?: string;
  proto: Proto;
  snat: SnatMode;
}

/** Everything the engine keeps converged. */
export interface DesiredState {
  services: Service[];
  rules: NatRule[];
  forwards: Forward[];
}

export const emptyState = (): DesiredState => ({ services: [], rules: [], forwards: [] });

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

export function validateName(name: string, what = 'service name'): void {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw invalid(
      `invalid ${what} ${JSON.stringify(name)}: use letters, digits, '.', '_', '-' and '/', at most 63, starting with a letter or digit`,
    );
  }
}

export function parsePort(text: string | number, what = 'port'): number {
  if (typeof text === 'number' && Number.isInteger(text) && text >= 1 && text <= 65535) return text;
  const s = String(text);
  if (!/^\d{1,5}$/.test(s) || Number(s) < 1 || Number(s) > 65535)
    throw invalid(`invalid ${what} ${JSON.stringify(s)}: must be 1-65535`);
  return Number(s);
}

export function parseProto(text: string): Proto {
  if (text !== 'tcp' && text !== 'udp') throw invalid(`invalid protocol ${JSON.stringify(text)}: tcp or udp`);
  return text;
}

/** "10.0.0.1:80", "[fd00::1]:80" -> address and port; the port is required. */
/** "IP:PORT" or "[IPv6]:PORT"; `listen` also takes port 0 (a listener's "pick a free one"). */
export function parseHostPort(
  text: string,
  what = 'address',
  o: { listen?: boolean } = {},
): { ip: string; family: Family; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):([^:]+)$/.exec(text);
  if (!m) throw invalid(`invalid ${what} ${JSON.stringify(text)}: expected IP:PORT (or [IPv6]:PORT)`);
  const { address, family } = parseIp(m[1]!);
  return {
    ip: address,
    family,
    port: o.listen && m[2] === '0' ? 0 : parsePort(m[2]!, `port in ${what} ${JSON.stringify(text)}`),
  };
}

/** "10.0.0.2:8080" or "10.0.0.2:8080@3" (weight 3). */
export function parseEndpoint(text: string): Endpoint {
  const [hp, w, extra] = text.split('@');
  if (extra !== undefined) throw invalid(`invalid endpoint ${JSON.stringify(text)}: expected IP:PORT[@WEIGHT]`);
  const { ip, port } = parseHostPort(hp!, 'endpoint');
  let weight = 1;
  if (w !== undefined) {
    if (!/^\d{1,6}$/.test(w) || Number(w) < 1)
      throw invalid(`invalid weight in endpoint ${JSON.stringify(text)}: a whole number from 1 to 999999`);
    weight = Number(w);
  }
  return { ip, port, weight };
}

/** The family of an address already parsed (normalized state): a colon means IPv6. */
export const familyOf = (ip: string): Family => (ip.includes(':') ? 6 : 4);

/** Checks a service completely; returns it normalized (canonical addresses, defaults filled in). Errors name the service and the field. */
export function normalizeService(s: Partial<Service> & { name: string }): Service {
  validateName(s.name);
  const field = <T>(name: string, f: () => T): T => {
    try {
      return f();
    } catch (err) {
      throw err instanceof TsnetError && err.code === 'EINVAL'
        ? invalid(`service ${s.name}: "${name}": ${err.message}`)
        : err;
    }
  };
  if (s.vip === undefined) throw invalid(`service ${s.name}: "vip": missing (an IP address)`);
  if (s.port === undefined) throw invalid(`service ${s.name}: "port": missing (1-65535)`);
  const vip = field('vip', () => parseIp(s.vip!));
  const port = field('port', () => parsePort(s.port!));
  const proto = field('proto', () => parseProto(s.proto ?? 'tcp'));
  const endpoints = (s.endpoints ?? []).map((e, i) =>
    field(`endpoints[${i}]`, () => {
      const ep =
        typeof e === 'string'
          ? parseEndpoint(e)
          : { ip: parseIp(e.ip).address, port: parsePort(e.port, 'endpoint port'), weight: e.weight ?? 1 };
      if (!Number.isInteger(ep.weight) || ep.weight < 1 || ep.weight > 999999)
        throw invalid(`weight ${ep.weight} must be a whole number from 1 to 999999`);
      if (familyOf(ep.ip) !== vip.family) throw invalid(`${ep.ip} is not IPv${vip.family} like the VIP ${vip.address}`);
      return ep;
    }),
  );
  const seen = new Set<string>();
  for (const e of endpoints) {
    const key = formatHostPort(e.ip, e.port);
    if (seen.has(key)) throw invalid(`service ${s.name}: "endpoints": ${key} listed twice`);
    seen.add(key);
  }
  const out: Service = { name: s.name, vip: vip.address, port, proto, endpoints };
  if (s.affinitySeconds !== undefined) {
    if (!Number.isInteger(s.affinitySeconds) || s.affinitySeconds < 1 || s.affinitySeconds > 86400)
      throw invalid(
        `service ${s.name}: "affinitySeconds": must be 1-86400 seconds, got ${JSON.stringify(s.affinitySeconds)}`,
      );
    out.affinitySeconds = s.affinitySeconds;
  }
  if (s.masqueradeNotFrom !== undefined) {
    const c = field('masqueradeNotFrom', () => parseCidr(s.masqueradeNotFrom!));
    if (c.family !== vip.family)
      throw invalid(
        `service ${s.name}: "masqueradeNotFrom": ${s.masqueradeNotFrom} is not IPv${vip.family} like the VIP`,
      );
    out.masqueradeNotFrom = `${c.network}/${c.prefix}`;
  }
  if (s.origin !== undefined) {
    if (s.origin !== 'cluster')
      throw invalid(`service ${s.name}: "origin": only "cluster" (set by the agent), got ${JSON.stringify(s.origin)}`);
    out.origin = 'cluster';
  }
  return out;
}

/** Checks a standalone NAT rule; returns it normalized. */
export function normalizeRule(r: NatRule): NatRule {
  const cidr = (t: string) => {
    const c = parseCidr(t, { defaultPrefix: true });
    return `${c.network}/${c.prefix}`;
  };
  switch (r.kind) {
    case 'masquerade': {
      const out: MasqueradeRule = { kind: 'masquerade', source: cidr(r.source) };
      if (r.destination !== undefined) out.destination = cidr(r.destination);
      if (r.destinationNot !== undefined) {
        out.destinationNot = cidr(r.destinationNot);
        if (parseCidr(out.destinationNot).family !== parseCidr(out.source).family)
          throw invalid(`masquerade: ${out.source} and not-to ${out.destinationNot} are different families`);
      }
      if (r.outNot !== undefined) {
        validateIfname(r.outNot);
        out.outNot = r.outNot;
      }
      return out;
    }
    case 'snat': {
      const out: SnatRule = { kind: 'snat', source: cidr(r.source), toSource: parseIp(r.toSource).address };
      if (r.destination !== undefined) out.destination = cidr(r.destination);
      if (r.out !== undefined) {
        validateIfname(r.out);
        out.out = r.out;
      }
      if (familyOf(out.toSource) !== parseCidr(out.source).family)
        throw invalid(`snat: --to ${out.toSource} and --source ${out.source} are different families`);
      return out;
    }
    case 'dnat': {
      const to = parseIp(r.toIp);
      const dest = parseIp(r.destination);
      if (to.family !== dest.family) throw invalid(`dnat: ${dest.address} and ${to.address} are different families`);
      return {
        kind: 'dnat',
        destination: dest.address,
        proto: parseProto(r.proto),
        port: parsePort(r.port),
        toIp: to.address,
        toPort: parsePort(r.toPort),
      };
    }
    default:
      throw invalid(`unknown NAT rule kind ${JSON.stringify((r as { kind?: unknown }).kind)}`);
  }
}

export const ruleKey = (r: NatRule): string => JSON.stringify(normalizeRule(r), Object.keys(r).sort());

/** Checks a forward; returns it normalized. */
export function normalizeForward(f: Forward): Forward {
  validateName(f.name, 'forward name');
  const targetIp = parseIp(f.targetIp);
  const out: Forward = {
    name: f.name,
    target: f.target,
    targetIp: targetIp.address,
    listenPort: parsePort(f.listenPort, 'listen port'),
    targetPort: parsePort(f.targetPort, 'target port'),
    proto: parseProto(f.proto ?? 'tcp'),
    snat: f.snat ?? 'auto',
  };
  if (typeof f.target !== 'string' || !/^[A-Za-z0-9._:-]{1,253}$/.test(f.target))
    throw invalid(`invalid forward target ${JSON.stringify(f.target)}: a host name or an IP address`);
  if (f.listen !== undefined) {
    const l = parseIp(f.listen);
    if (l.family !== targetIp.family)
      throw invalid(
        `forward ${f.name}: listen address ${l.address} and target ${targetIp.address} are different families`,
      );
    out.listen = l.address;
  }
  if (!['auto', 'masquerade', 'none'].includes(out.snat)) {
    const ip = parseIp(out.snat);
    if (ip.family !== targetIp.family)
      throw invalid(`forward ${f.name}: --snat ${ip.address} is not IPv${targetIp.family} like the target`);
    out.snat = ip.address;
  }
  return out;
}

/** Whether clients of this host itself using 127.0.0.1 are forwarded (needs route_localnet on the way out). */
export const servesLoopback = (f: Forward): boolean =>
  familyOf(f.targetIp) === 4 && (f.listen === undefined || f.listen.startsWith('127.'));

/** What a service claims on a node: its VIP, port and protocol (one service each). */
export const vipKey = (s: Pick<Service, 'vip' | 'port' | 'proto'>): string => `${s.vip}:${s.port}/${s.proto}`;

/** The refusal of a second claim on one VIP:port/proto. */
export const vipClaimed = (key: string, owner: string, name: string): TsnetError =>
  invalid(`services ${owner} and ${name} both claim ${key}`);

/**
 * A set of services checked as one: each normalized, names unique, one
 * service per VIP:port/proto. By name, in order; and the name of each VIP key.
 */
export function normalizeServices(services: readonly Service[]): {
  byName: Map<string, Service>;
  byVip: Map<string, string>;
} {
  const out = new Map<string, Service>();
  const owners = new Map<string, string>();
  for (const raw of services) {
    const s = normalizeService(raw);
    if (out.has(s.name)) throw invalid(`duplicate service name ${s.name}`);
    const key = vipKey(s);
    const owner = owners.get(key);
    if (owner !== undefined) throw vipClaimed(key, owner, s.name);
    owners.set(key, s.name);
    out.set(s.name, s);
  }
  return { byName: out, byVip: owners };
}

/** Two normalized services are the same service (every field, endpoints in order). */
export function sameService(a: Service, b: Service): boolean {
  return (
    a.name === b.name &&
    a.vip === b.vip &&
    a.port === b.port &&
    a.proto === b.proto &&
    a.affinitySeconds === b.affinitySeconds &&
    a.masqueradeNotFrom === b.masqueradeNotFrom &&
    a.origin === b.origin &&
    a.endpoints.length === b.endpoints.length &&
    a.endpoints.every(
      (e, i) => e.ip === b.endpoints[i]!.ip && e.port === b.endpoints[i]!.port && e.weight === b.endpoints[i]!.weight,
    )
  );
}

/** Two normalized forwards are the same forward. */
export const sameForward = (a: Forward, b: Forward): boolean =>
  a.name === b.name &&
  a.target === b.target &&
  a.targetIp === b.targetIp &&
  a.listenPort === b.listenPort &&
  a.targetPort === b.targetPort &&
  a.listen === b.listen &&
  a.proto === b.proto &&
  a.snat === b.snat;

/** Two lists of normalized rules or forwards hold the same, in the same order. */
export const sameRules = (a: readonly NatRule[], b: readonly NatRule[]): boolean =>
  a.length === b.length && a.every((r, i) => ruleKey(r) === ruleKey(b[i]!));
export const sameForwards = (a: readonly Forward[], b: readonly Forward[]): boolean =>
  a.length === b.length && a.every((f, i) => sameForward(f, b[i]!));

/** Checks a whole desired state (for `service apply` and for state read back from disk). */
export function normalizeState(st: Omit<DesiredState, 'forwards'> & { forwards?: Forward[] }): DesiredState {
  const services = [...normalizeServices(st.services).byName.values()];
  const fwdNames = new Set<string>();
  const forwards = (st.forwards ?? []).map((f) => {
    const n = normalizeForward(f);
    if (fwdNames.has(n.name)) throw invalid(`duplicate forward name ${n.name}`);
    fwdNames.add(n.name);
    return n;
  });
  for (const a of forwards) {
    for (const b of forwards) {
      if (
        a !== b &&
        a.proto === b.proto &&
        a.listenPort === b.listenPort &&
        (a.listen === undefined || b.listen === undefined || a.listen === b.listen)
      ) {
        throw invalid(`forwards ${a.name} and ${b.name} both listen on ${a.proto} port ${a.listenPort}`);
      }
    }
  }
  return { services, rules: st.rules.map(normalizeRule), forwards };
}

/**
 * Per-endpoint probabilities for kube-proxy's chain of `-m statistic --mode
 * random` rules: rule i fires with w_i / (w_i + ... + w_n-1) of what reaches
 * it, so endpoint i gets w_i / sum(w) overall; with equal weights that is
 * 1/(n-i). The last endpoint takes the rest (no probability).
 */
export function probabilities(weights: readonly number[]): (number | undefined)[] {
  let rest = weights.reduce((a, b) => a + b, 0);
  return weights.map((w, i) => {
    if (i === weights.length - 1) return undefined;
    const p = w / rest;
    rest -= w;
    return p;
  });
}

/** kube-proxy's computeProbability formatting: "%0.10f". */
export const formatProbability = (p: number): string => p.toFixed(10);

/** The address family a standalone rule acts on. */
export const ruleFamily = (r: NatRule): Family => familyOf(r.kind === 'dnat' ? r.destination : r.source.split('/')[0]!);

/** Which address families the state has anything for (a backend leaves the others' tables absent). */
export function familiesUsed(st: DesiredState): Family[] {
  return familiesOf(
    ([4, 6] as const).filter((f) => st.services.some((s) => familyOf(s.vip) === f)),
    st,
  );
}

/** The families of `services` (the VIPs' families, however counted) and of the rules and forwards. */
export function familiesOf(services: readonly Family[], st: Pick<DesiredState, 'rules' | 'forwards'>): Family[] {
  return ([4, 6] as const).filter(
    (f) =>
      services.includes(f) ||
      st.rules.some((r) => ruleFamily(r) === f) ||
      st.forwards.some((x) => familyOf(x.targetIp) === f),
  );
}
