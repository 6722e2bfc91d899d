/**
 * `tsnet trace DEST:PORT`: what happens to a connection to DEST:PORT from a
 * source, hop by hop, from tsnet's desired state and the kernel's live state
 * (counters, affinity entries, conntrack, routes): the service or forward it
 * hits, each endpoint's weight and probability, where each leaves the node
 * and which namespace answers there, source NAT on the way out, and the
 * endpoint the kernel holds the source to (an existing flow, or affinity).
 *
 * The node's view is gathered once; what tsnet does with the packet (a
 * service, a forward, a DNAT rule, or nothing) is decided once; then the
 * STEPS below run in order, each for its kind of match, each adding its
 * lines to the story.
 */
import { contains, formatHostPort, parseCidr, parseIp } from '../addr/cidr';
import * as conntrack from '../conntrack';
import * as route from '../route';
import type { NetNs } from '../netns';
import type { ClusterView } from './cluster';
import type { NatEngine } from '../nat/engine';
import { programmedAs } from '../cluster/services';
import { isCluster } from '../nat/origin';
import { familyOf, type DnatRule, type Forward, type NatRule, type Proto, type Service } from '../nat/model';
import type { AffinityEntry, Counter } from '../nat/backends/types';
import { inspectNode, ownerOf, type NodeView } from './node';

export interface TraceRequest {
  dest: string;
  port: number;
  proto: Proto;
  /** The client's address (default: the node itself, i.e. a local connection). */
  from?: string;
  /** A client source port: the flow (from, sport) is looked up in conntrack. */
  sport?: number;
  /** On a cluster node: its peers (src/inspect/cluster.ts), to name the node an address lives on and the path to it. */
  cluster?: ClusterView;
}

/** An address on another node of the cluster: which node, and how a packet gets there. */
export interface ClusterHop {
  ip: string;
  node: string;
  subnet: string;
  publicIp: string;
  path: 'vxlan' | 'host-gw';
  /** The tunnel device (vxlan). */
  dev?: string;
}

export interface EndpointTrace {
  ip: string;
  port: number;
  weight: number;
  /** The share of new connections (weight / total), absent under affinity for a pinned client. */
  probability: number;
  counter: Counter;
  /** Where a packet to it leaves the node, and who holds the address there. */
  via: { dev?: string; gateway?: string; namespace?: string };
  /** Clients pinned here by affinity. */
  affinity: AffinityEntry[];
  /** Live conntrack entries of connections to the VIP answered by this endpoint (from the source, when one was given). */
  flows: { count: number; samples: string[] };
  /** The client is the endpoint itself: the reply is masqueraded back to it (hairpin). */
  hairpin: boolean;
}

export type Hit =
  | {
      kind: 'service';
      name: string;
      affinitySeconds?: number;
      masqueradeNotFrom?: string;
      counter?: Counter;
      /** "cluster": the agent programs it from etcd; absent: this node's own. */
      origin?: 'cluster';
    }
  | { kind: 'forward'; name: string; snat: string }
  | { kind: 'dnat-rule'; to: string }
  | { kind: 'none' };

export interface TraceResult {
  destination: string;
  from: string;
  hit: Hit;
  verdict: 'dnat' | 'reject' | 'pass';
  endpoints: EndpointTrace[];
  /** The endpoint the kernel holds this source to, and why. */
  chosen?: { endpoint: string; reason: 'flow' | 'affinity' };
  /** Source NAT on the way out, for this source. */
  snat: string[];
  /** Where the packet leaves when nothing rewrites it. */
  route?: { dev?: string; gateway?: string; namespace?: string };
  /** Addresses of the trace (the destination, or its endpoints) on other nodes of the cluster. */
  cluster?: ClusterHop[];
  /**
   * With --etcd, for a cluster service's VIP: "programmed" when this node holds it as etcd does; "lagging" when
   * it holds another version or none (the packet then meets what the node holds).
   */
  store?: { service: string; state: 'programmed' | 'lagging' };
  /** The story, one line per step. */
  steps: string[];
}

/** A trace under way: what every step reads (the node's view, gathered once) and the result it adds to. */
interface Tracing {
  engine: NatEngine;
  node: NetNs;
  view: NodeView;
  req: TraceRequest;
  dest: string;
  from?: string;
  /** Live flows to DEST:PORT (from FROM, when given): the reply tuple names the endpoint that answered. */
  flows: conntrack.Flow[];
  /** FROM:SPORT's own flow, when both were given and the kernel has it. */
  mine?: conntrack.Flow;
  result: TraceResult;
}

/** What tsnet does with a packet to DEST:PORT: the first of a service VIP, a forward, a DNAT rule; else nothing. */
type Match =
  | { kind: 'service'; service: Service }
  | { kind: 'forward'; forward: Forward }
  | { kind: 'dnat-rule'; rule: DnatRule }
  | { kind: 'none' };

/** A step adds lines (and facts) to the trace; 'stop' ends it there (the packet goes no further). */
type Step = (t: Tracing, m: Match) => void | 'stop' | Promise<void | 'stop'>;

/** A step for one kind of match only. */
function on<K extends Match['kind']>(
  kind: K,
  run: (t: Tracing, m: Extract<Match, { kind: K }>) => void | 'stop' | Promise<void | 'stop'>,
): Step {
  return (t, m) => (m.kind === kind ? run(t, m as Extract<Match, { kind: K }>) : undefined);
}

/** The story of a packet, in the order it happens to it. */
const STEPS: readonly Step[] = [
  (t) => say(t, `${t.result.destination} from ${t.from ?? 'this node (nat OUTPUT)'}`),
  on('service', serviceHit),
  on('service', rejectEmpty),
  on('service', serviceEndpoints),
  on('service', heldEndpoint),
  on('service', endpointChoice),
  on('service', serviceSnat),
  on('forward', forwardHit),
  on('dnat-rule', dnatRuleHit),
  on('none', routed),
  wayOut,
  acrossNodes,
  againstStore,
];

/** Traces a connection to `req.dest:req.port` through the NAT state `engine` keeps in its namespace. */
export async function trace(engine: NatEngine, req: TraceRequest): Promise<TraceResult> {
  const t = await tracing(engine, req);
  const m = match(t);
  for (const step of STEPS) if ((await step(t, m)) === 'stop') break;
  return t.result;
}

async function tracing(engine: NatEngine, req: TraceRequest): Promise<Tracing> {
  const node = engine.ns;
  const dest = parseIp(req.dest).address;
  const from = req.from ? parseIp(req.from).address : undefined;
  const view = await inspectNode(node, [engine]);
  const result: TraceResult = {
    destination: `${formatHostPort(dest, req.port)}/${req.proto}`,
    from: from ?? 'this node',
    hit: { kind: 'none' },
    verdict: 'pass',
    endpoints: [],
    snat: [],
    steps: [],
  };
  const flows = (await conntrack.list(node, familyOf(dest))).filter(
    (f) =>
      f.proto === conntrack.IPPROTO[req.proto] &&
      f.orig.dst === dest &&
      f.orig.dport === req.port &&
      (!from || f.orig.src === from),
  );
  const mine = from && req.sport !== undefined ? flows.find((f) => f.orig.sport === req.sport) : undefined;
  return { engine, node, view, req, dest, ...(from ? { from } : {}), flows, ...(mine ? { mine } : {}), result };
}

function match(t: Tracing): Match {
  const { dest, req } = t;
  const st = t.view.nat;
  const service = st.services.find((x) => x.vip === dest && x.port === req.port && x.proto === req.proto);
  if (service) return { kind: 'service', service };
  // A forward without --listen serves every local address (and loopback).
  const local = ownerOf(t.view, dest)?.ns.node || /^127\./.test(dest) || dest === '::1';
  const forward = st.forwards.find(
    (f) => f.proto === req.proto && f.listenPort === req.port && (f.listen ? f.listen === dest : local),
  );
  if (forward) return { kind: 'forward', forward };
  const rule = st.rules.find(
    (r): r is DnatRule => r.kind === 'dnat' && r.destination === dest && r.port === req.port && r.proto === req.proto,
  );
  return rule ? { kind: 'dnat-rule', rule } : { kind: 'none' };
}

const say = (t: Tracing, line: string) => {
  t.result.steps.push(line);
};

// --- a service VIP ---------------------------------------------------------

function serviceHit(t: Tracing, { service: s }: { service: Service }) {
  const c = t.view.counters[s.name];
  t.result.hit = {
    kind: 'service',
    name: s.name,
    ...(s.affinitySeconds !== undefined ? { affinitySeconds: s.affinitySeconds } : {}),
    ...(s.masqueradeNotFrom ? { masqueradeNotFrom: s.masqueradeNotFrom } : {}),
    ...(c ? { counter: c.service } : {}),
    ...(isCluster(s) ? { origin: 'cluster' as const } : {}),
  };
  const n = s.endpoints.length;
  say(
    t,
    `${isCluster(s) ? 'cluster service' : 'service'} ${s.name}${isCluster(s) ? " (from etcd, programmed by this node's agent)" : ''}: ${n} endpoint${n === 1 ? '' : 's'}${c ? `, ${c.service.packets} connections so far` : ''}`,
  );
}

function rejectEmpty(t: Tracing, { service: s }: { service: Service }): 'stop' | void {
  if (s.endpoints.length) return;
  t.result.verdict = 'reject';
  say(t, 'no endpoints: rejected at once (filter: tcp reset / icmp port unreachable)');
  return 'stop';
}

async function serviceEndpoints(t: Tracing, { service: s }: { service: Service }) {
  t.result.verdict = 'dnat';
  const c = t.view.counters[s.name];
  const total = s.endpoints.reduce((n, e) => n + e.weight, 0);
  const pins = s.affinitySeconds !== undefined ? await t.engine.affinity(s.name) : {};
  for (const e of s.endpoints) {
    const id = formatHostPort(e.ip, e.port);
    t.result.endpoints.push({
      ip: e.ip,
      port: e.port,
      weight: e.weight,
      probability: e.weight / total,
      counter: c?.endpoints[id] ?? { packets: 0, bytes: 0 },
      via: await via(t, e.ip),
      affinity: pins[id] ?? [],
      flows: answeredBy(t, e.ip, e.port),
      hairpin: t.from === e.ip,
    });
  }
}

/** The endpoint the kernel holds the client to: its live flow first, else its affinity entry. */
function heldEndpoint(t: Tracing) {
  const { from, mine, result } = t;
  const pinned = from ? result.endpoints.find((e) => e.affinity.some((a) => a.client === from)) : undefined;
  if (mine) result.chosen = { endpoint: formatHostPort(mine.reply.src, mine.reply.sport ?? 0), reason: 'flow' };
  else if (pinned) result.chosen = { endpoint: formatHostPort(pinned.ip, pinned.port), reason: 'affinity' };
}

function endpointChoice(t: Tracing, { service: s }: { service: Service }) {
  const { from, result } = t;
  say(
    t,
    s.affinitySeconds !== undefined
      ? `endpoint: the one ${from ?? 'the client'} is pinned to (affinity ${s.affinitySeconds} s), else at random by weight:`
      : 'endpoint: at random by weight (numgen random mod total weight):',
  );
  for (const e of result.endpoints) say(t, endpointLine(e, from));
  if (result.chosen) {
    const by = result.chosen.reason === 'flow' ? 'its conntrack entry' : 'its affinity entry';
    say(t, `the kernel holds ${from}${t.mine ? `:${t.req.sport}` : ''} to ${result.chosen.endpoint} (${by})`);
  }
}

function endpointLine(e: EndpointTrace, from: string | undefined): string {
  const pin = e.affinity.find((a) => a.client === from);
  return (
    `  ${formatHostPort(e.ip, e.port).padEnd(21)} weight ${e.weight}  p=${e.probability.toFixed(2)}  ${e.counter.packets} connections` +
    `  ${leaves(e.via)}` +
    `${e.flows.count ? `  ${e.flows.count} live flow${e.flows.count === 1 ? '' : 's'}` : ''}` +
    `${pin ? `  pinned (${pin.expiresMs !== undefined ? `${Math.round(pin.expiresMs / 1000)} s left` : 'affinity'})` : ''}` +
    `${e.hairpin ? '  hairpin: masqueraded back to itself' : ''}`
  );
}

/** Hairpin, the service's own masquerade, then the standalone rules on the way to the endpoint. */
function serviceSnat(t: Tracing, { service: s }: { service: Service }) {
  const { from, result } = t;
  if (!from) return;
  if (result.endpoints.some((e) => e.hairpin)) result.snat.push('masquerade (hairpin: the client is the endpoint)');
  if (s.masqueradeNotFrom && !contains(parseCidr(s.masqueradeNotFrom), from))
    result.snat.push(`masquerade (--masquerade-not-from ${s.masqueradeNotFrom})`);
  const ep =
    result.endpoints.find((e) => formatHostPort(e.ip, e.port) === result.chosen?.endpoint) ?? result.endpoints[0]!;
  result.snat.push(...snatRules(t.view.nat.rules, from, ep.ip, ep.via.dev));
}

// --- a forward, a DNAT rule, or nothing -----------------------------------------

async function forwardHit(t: Tracing, { forward: f }: { forward: Forward }) {
  const { result } = t;
  result.hit = { kind: 'forward', name: f.name, snat: f.snat };
  result.verdict = 'dnat';
  const flows = answeredBy(t, f.targetIp, f.targetPort);
  const target: EndpointTrace = {
    ip: f.targetIp,
    port: f.targetPort,
    weight: 1,
    probability: 1,
    counter: { packets: 0, bytes: 0 },
    via: await via(t, f.targetIp),
    affinity: [],
    flows,
    hairpin: false,
  };
  result.endpoints.push(target);
  const listen = f.listen ? ` on ${f.listen}` : ' on any local address';
  say(
    t,
    `forward ${f.name}: ${f.proto} port ${f.listenPort}${listen} -> ${formatHostPort(f.targetIp, f.targetPort)} (${f.target})`,
  );
  say(t, `  ${leaves(target.via)}${flows.count ? `  ${flows.count} live flows` : ''}`);
  result.snat.push(
    f.snat === 'none'
      ? 'none (--snat none: the target must route replies back)'
      : f.snat === 'auto' || f.snat === 'masquerade'
        ? "masquerade (this forward's flows only)"
        : `snat to ${f.snat}`,
  );
}

async function dnatRuleHit(t: Tracing, { rule: d }: { rule: DnatRule }) {
  const { from, result } = t;
  result.hit = { kind: 'dnat-rule', to: formatHostPort(d.toIp, d.toPort) };
  result.verdict = 'dnat';
  say(t, `dnat rule: -> ${formatHostPort(d.toIp, d.toPort)}`);
  if (from) result.snat.push(...snatRules(t.view.nat.rules, from, d.toIp, (await via(t, d.toIp)).dev));
}

async function routed(t: Tracing) {
  const { from, result } = t;
  const r = (result.route = await via(t, t.dest));
  say(
    t,
    `no service, forward or DNAT rule of tsnet: routed as is, leaves by ${r.dev ?? '?'}${r.gateway ? ` via ${r.gateway}` : ''}${r.namespace ? ` to ${r.namespace}` : ''}`,
  );
  if (from) result.snat.push(...snatRules(t.view.nat.rules, from, t.dest, r.dev));
}

function wayOut(t: Tracing) {
  if (!t.from) return;
  const snat = t.result.snat.length
    ? t.result.snat.join('; ')
    : "no source NAT (the endpoint sees the client's address)";
  say(t, `on the way out: ${snat}`);
}

/** On a cluster node: the node each address of the trace lives on, and the tunnel or route that reaches it. */
function acrossNodes(t: Tracing) {
  const c = t.req.cluster;
  if (!c) return;
  const ips = t.result.endpoints.length ? t.result.endpoints.map((e) => e.ip) : [t.dest];
  for (const ip of ips) {
    if (contains(parseCidr(c.node.subnet), ip)) {
      say(t, `cluster: ${ip} is on this node, ${c.node.node} (${c.node.subnet}): bridged on ${c.node.bridge}`);
      continue;
    }
    const p = c.peers.find((x) => contains(parseCidr(x.subnet), ip));
    if (!p) continue;
    const dev = p.path === 'vxlan' ? c.vxlan?.name : undefined;
    (t.result.cluster ??= []).push({
      ip,
      node: p.name,
      subnet: p.subnet,
      publicIp: p.publicIp,
      path: p.path,
      ...(dev ? { dev } : {}),
    });
    const how =
      p.path === 'vxlan'
        ? `VXLAN tunnel ${dev ?? '(device missing)'} to ${p.publicIp} (VTEP ${p.vtepMac})`
        : `routed via ${p.publicIp} (host-gw)`;
    say(
      t,
      `cluster: ${ip} is on node ${p.name} (${p.subnet}, public IP ${p.publicIp}): ${how}${p.missing.length ? `; NOT programmed here: missing ${p.missing.join(', ')}` : ''}`,
    );
  }
}

/** With --etcd: whether this node holds the cluster service of the VIP as etcd does. */
function againstStore(t: Tracing, m: Match) {
  const c = t.req.cluster;
  const stored = c?.services?.find((s) => s.vip === t.dest && s.port === t.req.port && s.proto === t.req.proto);
  if (!c || !stored) return;
  const here = m.kind === 'service' && isCluster(m.service) ? m.service : undefined;
  const state = here && programmedAs(here, stored, c.node.network) ? 'programmed' : 'lagging';
  t.result.store = { service: stored.name, state };
  say(
    t,
    state === 'programmed'
      ? `etcd: ${stored.name} is programmed here as stored`
      : `etcd: cluster service ${stored.name} holds this VIP, but this node ${here ? 'holds another version of it' : 'has not programmed it'}: its agent lags the store (tsnet doctor --etcd)`,
  );
}

// --- helpers ---------------------------------------------------------------

/** Where a packet to `ip` leaves the node (the kernel's route), and which namespace of the view holds `ip`. */
async function via(t: Tracing, ip: string): Promise<EndpointTrace['via']> {
  const r = await route.get(t.node, ip).catch(() => undefined);
  const owner = ownerOf(t.view, ip);
  const out: EndpointTrace['via'] = {};
  if (r?.dev) out.dev = r.dev;
  if (r?.gateway) out.gateway = r.gateway;
  if (owner) out.namespace = owner.ns.id;
  return out;
}

const leaves = (v: EndpointTrace['via']) => `leaves by ${v.dev ?? '?'}${v.namespace ? ` to ${v.namespace}` : ''}`;

/** The live flows `ip:port` answered (the reply's source), with up to three as samples. */
function answeredBy(t: Tracing, ip: string, port: number): EndpointTrace['flows'] {
  const answered = t.flows.filter((f) => f.reply.src === ip && f.reply.sport === port);
  const text = (f: conntrack.Flow) =>
    `${formatHostPort(f.orig.src, f.orig.sport ?? 0)} -> ${formatHostPort(f.reply.src, f.reply.sport ?? 0)}`;
  return { count: answered.length, samples: answered.slice(0, 3).map(text) };
}

/** The standalone SNAT/MASQUERADE rules that would rewrite a packet from `src` to `dst` leaving by `dev`. */
function snatRules(rules: readonly NatRule[], src: string, dst: string, dev: string | undefined): string[] {
  const out: string[] = [];
  for (const r of rules) {
    if (r.kind === 'dnat' || !contains(parseCidr(r.source, { defaultPrefix: true }), src)) continue;
    if (r.destination && !contains(parseCidr(r.destination, { defaultPrefix: true }), dst)) continue;
    if (r.kind === 'masquerade' && r.destinationNot && contains(parseCidr(r.destinationNot), dst)) continue;
    if (r.kind === 'masquerade') {
      if (r.outNot && dev === r.outNot) continue;
      out.push(`masquerade (rule: from ${r.source}${r.outNot ? ` not out ${r.outNot}` : ''})`);
    } else {
      if (r.out && dev !== r.out) continue;
      out.push(`snat to ${r.toSource} (rule: from ${r.source})`);
    }
  }
  return out;
}
