/**
 * `tsnet trace DEST:PORT`: what happens to a connection to DEST:PORT from a
 * source, hop by hop, from tsnet's desired state and the kernel's live state
 * (counters, affinity entries, conntrack, routes): the service or forward it
 * hits, each endpoint's weight and probability, where each leaves the node
 * and which namespace answers there, source NAT on the way out, and the
 * endpoint the kernel holds the source to (an existing flow, or affinity).
 */
import { contains, formatHostPort, parseCidr, parseIp } from '../addr/cidr';
import * as conntrack from '../conntrack';
import * as route from '../route';
import type { NetNs } from '../netns';
import type { NatEngine } from '../nat/engine';
import { familyOf, type Forward, type NatRule, type Proto, type Service } from '../nat/model';
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
  | { kind: 'service'; name: string; affinitySeconds?: number; masqueradeNotFrom?: string; counter?: Counter }
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
  /** The story, one line per step. */
  steps: string[];
}

async function via(node: NetNs, view: NodeView, ip: string): Promise<EndpointTrace['via']> {
  const r = await route.get(node, ip).catch(() => undefined);
  const owner = ownerOf(view, ip);
  const out: EndpointTrace['via'] = {};
  if (r?.dev) out.dev = r.dev;
  if (r?.gateway) out.gateway = r.gateway;
  if (owner) out.namespace = owner.ns.id;
  return out;
}

/** The standalone SNAT/MASQUERADE rules that would rewrite a packet from `src` to `dst` leaving by `dev`. */
function snatRules(rules: readonly NatRule[], src: string, dst: string, dev: string | undefined): string[] {
  const out: string[] = [];
  for (const r of rules) {
    if (r.kind === 'dnat' || !contains(parseCidr(r.source, { defaultPrefix: true }), src)) continue;
    if (r.destination && !contains(parseCidr(r.destination, { defaultPrefix: true }), dst)) continue;
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

function forwardFor(forwards: readonly Forward[], req: TraceRequest, local: boolean): Forward | undefined {
  return forwards.find(
    (f) => f.proto === req.proto && f.listenPort === req.port && (f.listen ? f.listen === req.dest : local),
  );
}

/** Traces a connection to `req.dest:req.port` through the NAT state `engine` keeps in its namespace. */
export async function trace(engine: NatEngine, req: TraceRequest): Promise<TraceResult> {
  const node = engine.ns;
  const dest = parseIp(req.dest).address;
  const from = req.from ? parseIp(req.from).address : undefined;
  const family = familyOf(dest);
  const view = await inspectNode(node, [engine]);
  const st = view.nat;
  const steps: string[] = [];
  const destination = `${formatHostPort(dest, req.port)}/${req.proto}`;
  const result: TraceResult = {
    destination,
    from: from ?? 'this node',
    hit: { kind: 'none' },
    verdict: 'pass',
    endpoints: [],
    snat: [],
    steps,
  };
  steps.push(`${destination} from ${from ?? 'this node (nat OUTPUT)'}`);
  // Live flows to the destination (their reply tuple names the endpoint that answered).
  const flows = (await conntrack.list(node, family)).filter(
    (f) =>
      f.proto === conntrack.IPPROTO[req.proto] &&
      f.orig.dst === dest &&
      f.orig.dport === req.port &&
      (!from || f.orig.src === from),
  );
  const flowText = (f: conntrack.Flow) =>
    `${formatHostPort(f.orig.src, f.orig.sport ?? 0)} -> ${formatHostPort(f.reply.src, f.reply.sport ?? 0)}`;
  const mine = from && req.sport !== undefined ? flows.find((f) => f.orig.sport === req.sport) : undefined;

  const s: Service | undefined = st.services.find(
    (x) => x.vip === dest && x.port === req.port && x.proto === req.proto,
  );
  if (s) {
    const c = view.counters[s.name];
    result.hit = {
      kind: 'service',
      name: s.name,
      ...(s.affinitySeconds !== undefined ? { affinitySeconds: s.affinitySeconds } : {}),
      ...(s.masqueradeNotFrom ? { masqueradeNotFrom: s.masqueradeNotFrom } : {}),
      ...(c ? { counter: c.service } : {}),
    };
    steps.push(
      `service ${s.name}: ${s.endpoints.length} endpoint${s.endpoints.length === 1 ? '' : 's'}${c ? `, ${c.service.packets} connections so far` : ''}`,
    );
    if (!s.endpoints.length) {
      result.verdict = 'reject';
      steps.push('no endpoints: rejected at once (filter: tcp reset / icmp port unreachable)');
      return result;
    }
    result.verdict = 'dnat';
    const total = s.endpoints.reduce((n, e) => n + e.weight, 0);
    const pins = s.affinitySeconds !== undefined ? await engine.affinity(s.name) : {};
    for (const e of s.endpoints) {
      const id = formatHostPort(e.ip, e.port);
      const answered = flows.filter((f) => f.reply.src === e.ip && f.reply.sport === e.port);
      result.endpoints.push({
        ip: e.ip,
        port: e.port,
        weight: e.weight,
        probability: e.weight / total,
        counter: c?.endpoints[id] ?? { packets: 0, bytes: 0 },
        via: await via(node, view, e.ip),
        affinity: pins[id] ?? [],
        flows: { count: answered.length, samples: answered.slice(0, 3).map(flowText) },
        hairpin: from === e.ip,
      });
    }
    const pinned = from ? result.endpoints.find((e) => e.affinity.some((a) => a.client === from)) : undefined;
    if (mine) result.chosen = { endpoint: formatHostPort(mine.reply.src, mine.reply.sport ?? 0), reason: 'flow' };
    else if (pinned) result.chosen = { endpoint: formatHostPort(pinned.ip, pinned.port), reason: 'affinity' };
    steps.push(
      s.affinitySeconds !== undefined
        ? `endpoint: the one ${from ?? 'the client'} is pinned to (affinity ${s.affinitySeconds} s), else at random by weight:`
        : 'endpoint: at random by weight (numgen random mod total weight):',
    );
    for (const e of result.endpoints) {
      const pin = e.affinity.find((a) => a.client === from);
      steps.push(
        `  ${formatHostPort(e.ip, e.port).padEnd(21)} weight ${e.weight}  p=${e.probability.toFixed(2)}  ${e.counter.packets} connections` +
          `  leaves by ${e.via.dev ?? '?'}${e.via.namespace ? ` to ${e.via.namespace}` : ''}` +
          `${e.flows.count ? `  ${e.flows.count} live flow${e.flows.count === 1 ? '' : 's'}` : ''}` +
          `${pin ? `  pinned (${pin.expiresMs !== undefined ? `${Math.round(pin.expiresMs / 1000)} s left` : 'affinity'})` : ''}` +
          `${e.hairpin ? '  hairpin: masqueraded back to itself' : ''}`,
      );
    }
    if (result.chosen)
      steps.push(
        `the kernel holds ${from}${mine ? `:${req.sport}` : ''} to ${result.chosen.endpoint} (${result.chosen.reason === 'flow' ? 'its conntrack entry' : 'its affinity entry'})`,
      );
    // Source NAT on the way out.
    if (from) {
      const hair = result.endpoints.some((e) => e.hairpin);
      if (hair) result.snat.push('masquerade (hairpin: the client is the endpoint)');
      if (s.masqueradeNotFrom && !contains(parseCidr(s.masqueradeNotFrom), from))
        result.snat.push(`masquerade (--masquerade-not-from ${s.masqueradeNotFrom})`);
      const ep =
        result.endpoints.find((e) => formatHostPort(e.ip, e.port) === result.chosen?.endpoint) ?? result.endpoints[0]!;
      result.snat.push(...snatRules(st.rules, from, ep.ip, ep.via.dev));
    }
  } else {
    const local =
      view.namespaces.find((n) => n.node)!.interfaces.some((i) => i.addresses.some((a) => a.split('/')[0] === dest)) ||
      /^127\./.test(dest) ||
      dest === '::1';
    const f = forwardFor(st.forwards, { ...req, dest }, local);
    const d = st.rules.find(
      (r): r is Extract<NatRule, { kind: 'dnat' }> =>
        r.kind === 'dnat' && r.destination === dest && r.port === req.port && r.proto === req.proto,
    );
    if (f) {
      result.hit = { kind: 'forward', name: f.name, snat: f.snat };
      result.verdict = 'dnat';
      const answered = flows.filter((x) => x.reply.src === f.targetIp && x.reply.sport === f.targetPort);
      result.endpoints.push({
        ip: f.targetIp,
        port: f.targetPort,
        weight: 1,
        probability: 1,
        counter: { packets: 0, bytes: 0 },
        via: await via(node, view, f.targetIp),
        affinity: [],
        flows: { count: answered.length, samples: answered.slice(0, 3).map(flowText) },
        hairpin: false,
      });
      steps.push(
        `forward ${f.name}: ${f.proto} port ${f.listenPort}${f.listen ? ` on ${f.listen}` : ' on any local address'} -> ${formatHostPort(f.targetIp, f.targetPort)} (${f.target})`,
      );
      steps.push(
        `  leaves by ${result.endpoints[0]!.via.dev ?? '?'}${result.endpoints[0]!.via.namespace ? ` to ${result.endpoints[0]!.via.namespace}` : ''}${answered.length ? `  ${answered.length} live flows` : ''}`,
      );
      result.snat.push(
        f.snat === 'none'
          ? 'none (--snat none: the target must route replies back)'
          : f.snat === 'auto' || f.snat === 'masquerade'
            ? "masquerade (this forward's flows only)"
            : `snat to ${f.snat}`,
      );
    } else if (d) {
      result.hit = { kind: 'dnat-rule', to: formatHostPort(d.toIp, d.toPort) };
      result.verdict = 'dnat';
      steps.push(`dnat rule: -> ${formatHostPort(d.toIp, d.toPort)}`);
      if (from) result.snat.push(...snatRules(st.rules, from, d.toIp, (await via(node, view, d.toIp)).dev));
    } else {
      result.route = await via(node, view, dest);
      steps.push(
        `no service, forward or DNAT rule of tsnet: routed as is, leaves by ${result.route.dev ?? '?'}${result.route.gateway ? ` via ${result.route.gateway}` : ''}${result.route.namespace ? ` to ${result.route.namespace}` : ''}`,
      );
      if (from) result.snat.push(...snatRules(st.rules, from, dest, result.route.dev));
    }
  }
  if (from)
    steps.push(
      `on the way out: ${result.snat.length ? result.snat.join('; ') : "no source NAT (the endpoint sees the client's address)"}`,
    );
  return result;
}
