/**
 * `tsnet topology`: a node's network as a graph (namespaces, bridges, veth
 * pairs, addresses, gateways, services -> endpoints, forwards), printed as
 * JSON, as Graphviz dot, or as SVG laid out by ELK (elkjs: the layered
 * algorithm places the boxes and routes the edges; this file only draws
 * what it computed).
 */
import { formatHostPort } from '../addr/cidr';
import { hostEndOf, nodeOf, ownerOf, type NamespaceView, type NodeView } from './node';
import type { ClusterView } from './cluster';

export type TopoKind = 'node' | 'namespace' | 'bridge' | 'service' | 'forward' | 'address';

export interface TopoNode {
  id: string;
  kind: TopoKind;
  /** The first line, in bold: a namespace's id, a bridge's name, a service's name. */
  label: string;
  /** The lines under it: interfaces with their addresses, the VIP, the gateway. */
  lines: string[];
}

export interface TopoEdge {
  id: string;
  /**
   * veth: a pair (from the bridge or node end to the container); member: a bridge of the node; endpoint, forward:
   * where NAT sends; tunnel, route: to another node of the cluster (vxlan, host-gw).
   */
  kind: 'veth' | 'member' | 'endpoint' | 'forward' | 'tunnel' | 'route';
  from: string;
  to: string;
  label: string;
}

export interface Topology {
  nodes: TopoNode[];
  edges: TopoEdge[];
}

/** The parts of the picture, drawn in this order (the order of the JSON's nodes and edges). */
const PARTS: readonly ((d: Drawing) => void)[] = [theNode, bridges, namespaces, services, forwards, peers];

/** The graph of a node view (and, on a cluster node, its peers: src/inspect/cluster.ts). */
export function topology(view: NodeView, cluster?: ClusterView): Topology {
  const d: Drawing = {
    view,
    ...(cluster ? { cluster } : {}),
    node: nodeOf(view),
    bridgeNames: new Set(view.bridges.map((b) => b.name)),
    nodes: [],
    edges: [],
  };
  for (const draw of PARTS) draw(d);
  return { nodes: d.nodes, edges: d.edges };
}

/** A topology being drawn: the view, and the nodes and edges so far. */
interface Drawing {
  view: NodeView;
  cluster?: ClusterView;
  /** The node's own namespace. */
  node: NamespaceView;
  bridgeNames: Set<string>;
  nodes: TopoNode[];
  edges: TopoEdge[];
}

const nsId = (id: string) => `ns:${id}`;

/** The other nodes of the cluster, each with its subnet, reached by a tunnel (vxlan) or a route (host-gw). */
function peers({ cluster, node, nodes, edges }: Drawing) {
  if (!cluster) return;
  const self = nodes.find((n) => n.id === nsId(node.id));
  self?.lines.unshift(`cluster node ${cluster.node.node}: ${cluster.node.subnet}`);
  for (const p of cluster.peers) {
    const id = `peer:${p.name}`;
    nodes.push({
      id,
      kind: 'node',
      label: `${p.name} (peer)`,
      lines: [
        p.subnet,
        `public IP ${p.publicIp}`,
        ...(p.missing.length ? [`not programmed: ${p.missing.join(', ')}`] : []),
      ],
    });
    const tunnel = p.path === 'vxlan';
    edges.push({
      id: `${tunnel ? 'tunnel' : 'route'}:${p.name}`,
      kind: tunnel ? 'tunnel' : 'route',
      from: nsId(node.id),
      to: id,
      label: tunnel ? `${cluster.vxlan?.name ?? 'vxlan'} to ${p.publicIp}` : `via ${p.publicIp}`,
    });
  }
}

/** The node: its own interfaces that are neither bridges nor bridge ports (lo, uplinks, unbridged veths). */
function theNode({ node, bridgeNames, nodes }: Drawing) {
  nodes.push({
    id: nsId(node.id),
    kind: 'node',
    label: `${node.id} (node)`,
    lines: [
      ...node.interfaces
        .filter(
          (i) =>
            !bridgeNames.has(i.name) &&
            !i.master &&
            i.name !== 'lo' &&
            !(i.kind === 'veth' && i.peer && i.peer.ns !== node.id),
        )
        .map((i) => `${i.name} ${i.addresses.join(' ') || (i.up ? 'up' : 'down')}`),
      ...node.gateways.map((g) => `default via ${g}`),
    ],
  });
}

function bridges({ view, node, nodes, edges }: Drawing) {
  for (const b of view.bridges) {
    nodes.push({
      id: `br:${b.name}`,
      kind: 'bridge',
      label: `bridge ${b.name}`,
      lines: [...b.addresses, `${b.ports.length} ports, stp ${b.stp ? 'on' : 'off'}`],
    });
    edges.push({ id: `member:${b.name}`, kind: 'member', from: nsId(node.id), to: `br:${b.name}`, label: '' });
  }
}

/** The other namespaces, each linked by its veths to the bridge (or the node) its host end is on. */
function namespaces({ view, node, bridgeNames, nodes, edges }: Drawing) {
  for (const ns of view.namespaces.filter((n) => !n.node)) {
    nodes.push({
      id: nsId(ns.id),
      kind: 'namespace',
      label: ns.id,
      lines: [
        ...ns.interfaces.filter((i) => i.name !== 'lo').map((i) => `${i.name} ${i.addresses.join(' ')}`.trim()),
        ...ns.gateways.map((g) => `default via ${g}`),
      ],
    });
    for (const i of ns.interfaces) {
      if (i.peer?.ns !== node.id) continue;
      const hostEnd = hostEndOf(node, i);
      const from = hostEnd?.master && bridgeNames.has(hostEnd.master) ? `br:${hostEnd.master}` : nsId(node.id);
      edges.push({
        id: `veth:${ns.id}:${i.name}`,
        kind: 'veth',
        from,
        to: nsId(ns.id),
        label: `${i.peer.name ?? '?'} ⇄ ${i.name}`,
      });
    }
  }
}

function services(d: Drawing) {
  for (const s of d.view.nat.services) {
    const c = d.view.counters[s.name];
    const id = `svc:${s.name}`;
    d.nodes.push({
      id,
      kind: 'service',
      label: `service ${s.name}`,
      lines: [
        `${formatHostPort(s.vip, s.port)}/${s.proto}`,
        s.endpoints.length
          ? `${s.endpoints.length} endpoints${c ? `, ${c.service.packets} connections` : ''}`
          : 'no endpoints: REJECT',
      ],
    });
    for (const e of s.endpoints) {
      const ep = formatHostPort(e.ip, e.port);
      const n = c?.endpoints[ep]?.packets;
      d.edges.push({
        id: `ep:${s.name}:${ep}`,
        kind: 'endpoint',
        from: id,
        to: target(d, e.ip),
        label: `${ep}${e.weight !== 1 ? ` w${e.weight}` : ''}${n !== undefined ? ` (${n})` : ''}`,
      });
    }
  }
}

function forwards(d: Drawing) {
  for (const f of d.view.nat.forwards) {
    const id = `fwd:${f.name}`;
    d.nodes.push({
      id,
      kind: 'forward',
      label: `forward ${f.name}`,
      lines: [`${f.proto} ${f.listen ?? '*'}:${f.listenPort}`],
    });
    d.edges.push({
      id: `fwd:${f.name}:t`,
      kind: 'forward',
      from: id,
      to: target(d, f.targetIp),
      label: formatHostPort(f.targetIp, f.targetPort),
    });
  }
}

/** Where NAT sends `ip`: the namespace (or node bridge) holding it, else a box of its own, added on first use. */
function target({ view, nodes }: Drawing, ip: string): string {
  const o = ownerOf(view, ip);
  if (o) return o.ns.node ? (o.iface.kind === 'bridge' ? `br:${o.iface.name}` : nsId(o.ns.id)) : nsId(o.ns.id);
  const id = `addr:${ip}`;
  if (!nodes.some((n) => n.id === id)) nodes.push({ id, kind: 'address', label: ip, lines: ['not on this node'] });
  return id;
}

const quote = (s: string) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

/** Graphviz dot: `tsnet topology --dot | dot -Tsvg`. */
export function toDot(t: Topology): string {
  const shape: Record<TopoKind, string> = {
    node: 'box, style="rounded,bold"',
    namespace: 'box, style=rounded',
    bridge: 'box, style="rounded,filled", fillcolor="#e8eefc"',
    service: 'box, style="rounded,filled", fillcolor="#e9f7ec"',
    forward: 'box, style="rounded,filled", fillcolor="#fdf3e1"',
    address: 'box, style=dashed',
  };
  const lines = [
    'digraph tsnet {',
    '  rankdir=LR;',
    '  node [fontname="monospace", fontsize=10];',
    '  edge [fontname="monospace", fontsize=9];',
  ];
  for (const n of t.nodes)
    lines.push(`  ${quote(n.id)} [shape=${shape[n.kind]}, label=${quote([n.label, ...n.lines].join('\n'))}];`);
  for (const e of t.edges)
    lines.push(
      `  ${quote(e.from)} -> ${quote(e.to)} [label=${quote(e.label)}${e.kind === 'veth' || e.kind === 'member' ? ', dir=none' : ''}];`,
    );
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

// --- SVG, laid out by ELK ------------------------------------------------------

const CHAR_W = 7;
const LINE_H = 15;
const PAD = 8;

interface ElkNode {
  id: string;
  width: number;
  height: number;
  x?: number;
  y?: number;
}
interface ElkEdge {
  id: string;
  sources: string[];
  targets: string[];
  labels?: { text: string; width: number; height: number; x?: number; y?: number }[];
  sections?: {
    startPoint: { x: number; y: number };
    endPoint: { x: number; y: number };
    bendPoints?: { x: number; y: number }[];
  }[];
}
interface ElkGraph {
  id: string;
  layoutOptions: Record<string, string>;
  children: ElkNode[];
  edges: ElkEdge[];
  width?: number;
  height?: number;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Box sizes from the text they hold; ELK does the rest. */
async function layout(t: Topology): Promise<ElkGraph> {
  const { default: ELK } = (await import('elkjs')) as unknown as {
    default: new () => { layout(g: ElkGraph): Promise<ElkGraph> };
  };
  const graph: ElkGraph = {
    id: 'root',
    layoutOptions: {
      'elk.algorithm': 'layered',
      'elk.direction': 'RIGHT',
      'elk.edgeRouting': 'ORTHOGONAL',
      'elk.spacing.nodeNode': '24',
      'elk.layered.spacing.nodeNodeBetweenLayers': '70',
      'elk.edgeLabels.inline': 'false',
    },
    children: t.nodes.map((n) => ({
      id: n.id,
      width: PAD * 2 + CHAR_W * Math.max(n.label.length, ...n.lines.map((l) => l.length), 6),
      height: PAD * 2 + LINE_H * (1 + n.lines.length),
    })),
    edges: t.edges.map((e) => ({
      id: e.id,
      sources: [e.from],
      targets: [e.to],
      labels: e.label ? [{ text: e.label, width: CHAR_W * e.label.length * 0.9, height: 12 }] : [],
    })),
  };
  return new ELK().layout(graph);
}

/** An SVG picture: boxes where ELK put them, edges along the routes it computed. Services carry data-service (the agent's page makes them clickable). */
export async function toSvg(t: Topology): Promise<string> {
  const g = await layout(t);
  const byId = new Map(t.nodes.map((n) => [n.id, n]));
  const out: string[] = [];
  const w = Math.ceil(g.width ?? 100);
  const h = Math.ceil(g.height ?? 100);
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="monospace" font-size="12">`,
  );
  out.push(
    '<style>.node rect{fill:#fff;stroke:#333;stroke-width:1.6}.namespace rect{fill:#fff;stroke:#555}.bridge rect{fill:#e8eefc;stroke:#3b5bdb}',
    '.service rect{fill:#e9f7ec;stroke:#2b8a3e}.forward rect{fill:#fdf3e1;stroke:#e67700}.address rect{fill:#fff;stroke:#999;stroke-dasharray:4 3}',
    '.edge path{fill:none;stroke:#555}.edge.member path{stroke:#3b5bdb;stroke-width:2}.edge.endpoint path{stroke:#2b8a3e}.edge.forward path{stroke:#e67700}.edge text{font-size:10px;fill:#333}',
    '.service{cursor:pointer}</style>',
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>',
  );
  for (const e of g.edges) {
    const te = t.edges.find((x) => x.id === e.id)!;
    const s = e.sections?.[0];
    if (!s) continue;
    const pts = [s.startPoint, ...(s.bendPoints ?? []), s.endPoint]
      .map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`)
      .join(' L');
    const marker = te.kind === 'veth' || te.kind === 'member' ? '' : ' marker-end="url(#arrow)"';
    const label = e.labels?.[0];
    out.push(`<g class="edge ${te.kind}" data-edge="${esc(te.id)}"><path d="M${pts}"${marker}/>`);
    if (label?.x !== undefined && label.y !== undefined)
      out.push(`<text x="${label.x.toFixed(1)}" y="${(label.y + 10).toFixed(1)}">${esc(label.text)}</text>`);
    out.push('</g>');
  }
  for (const c of g.children) {
    const n = byId.get(c.id)!;
    const attr = n.kind === 'service' ? ` data-service="${esc(n.label.replace(/^service /, ''))}"` : '';
    out.push(
      `<g class="${n.kind}" data-id="${esc(n.id)}"${attr} transform="translate(${(c.x ?? 0).toFixed(1)},${(c.y ?? 0).toFixed(1)})">`,
    );
    out.push(`<rect width="${c.width}" height="${c.height}" rx="6"/>`);
    out.push(`<text x="${PAD}" y="${PAD + 11}" font-weight="bold">${esc(n.label)}</text>`);
    n.lines.forEach((l, i) => out.push(`<text x="${PAD}" y="${PAD + 11 + LINE_H * (i + 1)}">${esc(l)}</text>`));
    out.push('</g>');
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
