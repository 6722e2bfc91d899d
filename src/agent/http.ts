/**
 * The agent's HTTP listener (--metrics, loopback by default):
 *
 *   /metrics         Prometheus exposition (prom-client: Node's process metrics and tsnet's)
 *   /healthz         "ok"
 *   /topology        this node's network as a live page; .json the node view, .svg the picture (src/inspect),
 *                    with the NAT state of every directory the agent has served
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import { contextualize } from '../errors';
import type { AgentEngines } from './engines';
import type { AgentMetrics } from './metrics';

export interface HttpOptions {
  metrics: AgentMetrics;
  engines: AgentEngines;
  /** The state directories served that hold NAT state. */
  natStates: () => string[];
}

export interface HttpListener {
  /** Where it listens (the port chosen when 0 was asked for). */
  address: { host: string; port: number };
  close(): Promise<void>;
}

/** /topology (the page), /topology.json (the node view), /topology.svg (the picture). */
async function topology(url: string, res: http.ServerResponse, o: HttpOptions): Promise<void> {
  try {
    const { TOPOLOGY_PAGE } = await import('../inspect/page');
    if (url === '/topology' || url === '/topology/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(TOPOLOGY_PAGE);
      return;
    }
    const { inspectNode } = await import('../inspect/node');
    const engines = o.natStates().map((d) => o.engines.get({ stateDir: d }));
    const view = await inspectNode((await import('../netns')).current(), engines);
    if (url === '/topology.json') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(view));
    } else if (url === '/topology.svg') {
      const { topology: graph, toSvg } = await import('../inspect/topology');
      res.writeHead(200, { 'content-type': 'image/svg+xml' }).end(await toSvg(graph(view)));
    } else {
      res.writeHead(404).end('not found: /topology, /topology.json, /topology.svg\n');
    }
  } catch (err) {
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`topology: ${(err as Error).message}\n`);
  }
}

function route(req: http.IncomingMessage, res: http.ServerResponse, o: HttpOptions): void {
  const { registry } = o.metrics;
  if (req.method === 'GET' && (req.url === '/metrics' || req.url?.startsWith('/metrics?'))) {
    void registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`metrics: ${err.message}\n`),
    );
  } else if (req.method === 'GET' && req.url === '/healthz') {
    res.writeHead(200).end('ok\n');
  } else if (req.method === 'GET' && req.url?.startsWith('/topology')) {
    void topology(req.url.replace(/\?.*$/, ''), res, o);
  } else {
    res.writeHead(404).end('not found: try /metrics or /topology\n');
  }
}

export async function listenHttp(at: { host: string; port: number }, o: HttpOptions): Promise<HttpListener> {
  const h = http.createServer((req, res) => route(req, res, o));
  await new Promise<void>((resolve, reject) => {
    h.once('error', (err) => reject(contextualize(`metrics listener on ${at.host}:${at.port}`, err)));
    h.listen(at.port, at.host, () => resolve());
  });
  const addr = h.address() as net.AddressInfo;
  return {
    address: { host: addr.address, port: addr.port },
    close: async () => {
      h.closeAllConnections();
      await new Promise<void>((r) => h.close(() => r()));
    },
  };
}
