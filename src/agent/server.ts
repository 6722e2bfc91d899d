/**
 * `tsnet agent`: the resident side of the CNI plugins and of the CLI's NAT
 * changes. The shim installed as tsnet-bridge / tsnet-ipam hands each call
 * to this process over a unix socket; the agent runs the same library call
 * as the standalone plugin (cni/plugin.invoke), without paying for a Node
 * start per call. State stays where the standalone plugin keeps it
 * (attachment records, host-local IPAM files, NAT desired state, all under
 * their flock locks), so the agent and standalone plugins can run side by
 * side and either can take over after the other dies.
 *
 * One file per job, composed here:
 *
 *   transport.ts     the socket: peer credentials, namespace identity, frames, deny
 *     -> cni-service.ts  tsnet-cni/1: invoke() per call, in order per attachment, within the shim's deadline
 *     -> nat-service.ts  tsnet-nat/1: the CLI's changes, applied by the engine kept in memory
 *   resync.ts        the NAT canary check every interval, a full sync every hour, nat-dirs.json
 *   engines.ts       the NAT engines kept in memory, and their syncs (log, metrics)
 *   http.ts          /metrics, /healthz, /topology
 *
 * Everything an agent holds is its own: two agents in one process share
 * nothing but the NAT engine's process-wide hooks (see engines.ts).
 */
import * as path from 'node:path';
import { formatHostPort } from '../addr/cidr';
import { invalid } from '../errors';
import { stateDir as defaultStateDir } from '../state';
import { parseHostPort } from '../nat/model';
import { nsIdentity } from '../netns/ref';
import type { NetNs } from '../netns';
import type { BackendChoice, NatEngine } from '../nat/engine';
import { DEFAULT_METRICS, DEFAULT_SOCKET } from './protocol';
import { agentMetrics, type AgentMetrics } from './metrics';
import { Transport, type Call } from './transport';
import { CniService } from './cni-service';
import { NatService } from './nat-service';
import { ResyncLoop } from './resync';
import { residentEngines, syncObserver, type AgentEngines } from './engines';
import { listenHttp, type HttpListener } from './http';

export { nsIdentity } from '../netns/ref';

export const DEFAULT_RESYNC_MS = 10_000;
/** How often the resync loop rewrites everything regardless of the canary (kube-proxy: hourly). */
export const DEFAULT_FULL_SYNC_MS = 3_600_000;

export interface AgentOptions {
  socket?: string;
  /** Default state directory for calls whose config and environment name none. */
  stateDir?: string;
  resyncIntervalMs?: number;
  /** How often a resync pass is a forced full sync instead of a canary check. */
  fullSyncIntervalMs?: number;
  /** host:port for Prometheus metrics; '' turns them off. Port 0 picks a free one. */
  metrics?: string;
  log?: (line: string) => void;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses "10s", "500ms", "2m", "1h" (or plain seconds) into milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw invalid(`invalid duration ${JSON.stringify(text)}: expected e.g. 10s, 500ms, 1m, 1h`);
  const ms = Number(m[1]) * UNIT_MS[m[2] ?? 's']!;
  if (ms < 100) throw invalid(`duration ${text} is too short (at least 100ms)`);
  return ms;
}

export class Agent {
  readonly socket: string;
  readonly stateDir: string;
  readonly resyncIntervalMs: number;
  readonly fullSyncIntervalMs: number;
  readonly metrics: AgentMetrics = agentMetrics();
  /** Cluster mode (tsnet agent --etcd): the node it runs, set by the CLI once started. */
  cluster?: { summary(): unknown };
  /** The agent's network namespace identity, sent in every hello. */
  readonly netns = nsIdentity('/proc/self/ns/net');
  metricsAddress?: { host: string; port: number };

  private readonly log: (line: string) => void;
  private readonly metricsListen?: { host: string; port: number };
  private stopping = false;
  /** Every call's work, also one whose shim got a deadline error: stop() waits for all of it. */
  private readonly running = new Set<Promise<unknown>>();
  private readonly engines: AgentEngines;
  private readonly transport: Transport;
  private readonly cni: CniService;
  private readonly nat: NatService;
  private readonly loop: ResyncLoop;
  private http?: HttpListener;

  private constructor(opts: AgentOptions) {
    // Options are checked before anything is made.
    if (opts.metrics !== '') {
      const { ip, port } = parseHostPort(opts.metrics ?? DEFAULT_METRICS, '--metrics address', { listen: true });
      this.metricsListen = { host: ip, port };
    }
    if (opts.resyncIntervalMs !== undefined && !(opts.resyncIntervalMs >= 100))
      throw invalid(`resync interval ${opts.resyncIntervalMs} ms is too short (at least 100 ms)`);
    this.socket = path.resolve(opts.socket ?? DEFAULT_SOCKET);
    this.stateDir = defaultStateDir(opts.stateDir);
    this.resyncIntervalMs = opts.resyncIntervalMs ?? DEFAULT_RESYNC_MS;
    this.fullSyncIntervalMs = opts.fullSyncIntervalMs ?? DEFAULT_FULL_SYNC_MS;
    const log = (this.log = opts.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`)));
    const { metrics, netns } = this;
    const engines = (this.engines = residentEngines(
      syncObserver(metrics, log),
      log,
      () => this.transport.open > 0 || this.cni.inflight > 0,
      () => this.cni.calm(),
    ));
    const track = (work: Promise<unknown>) => this.track(work);
    const stopping = () => this.stopping;
    const remember = (dir: string) => this.loop.remember(dir);
    this.transport = new Transport({ socket: this.socket, netns, metrics, log, stopping, serve: (c) => this.route(c) });
    this.cni = new CniService({ stateDir: this.stateDir, engines, metrics, log, track, remember });
    this.nat = new NatService({ netns, engines, metrics, log, stopping, track, remember });
    this.loop = new ResyncLoop({
      stateDir: this.stateDir,
      intervalMs: this.resyncIntervalMs,
      fullSyncIntervalMs: this.fullSyncIntervalMs,
      engines,
      metrics,
      log,
      beforePass: () => this.nat.release(),
      calm: () => this.cni.calm(),
    });
  }

  /** Binds the socket (and the metrics listener), then serves until stop(). */
  static async start(opts: AgentOptions = {}): Promise<Agent> {
    const a = new Agent(opts); // throws on bad options, before anything exists
    try {
      await a.listen();
    } catch (err) {
      await a.stop();
      throw err;
    }
    return a;
  }

  private async listen(): Promise<void> {
    // Load the code a call needs now, not during the first call.
    await Promise.all([
      import('../cni/bridge'),
      import('../nat/iptables/backend'),
      import('../nat/nftables/backend-nft'),
      import('../nat/nftables/backend-netlink'),
    ]);
    this.loop.load();
    await this.transport.listen();
    if (this.metricsListen) {
      const { engines, metrics, loop } = this;
      this.http = await listenHttp(this.metricsListen, { metrics, engines, natStates: () => loop.natStates() });
      this.metricsAddress = this.http.address;
    }
    this.loop.start();
    const m = this.metricsAddress;
    this.log(
      `agent: serving ${this.socket} in network namespace ${this.netns} (state ${this.stateDir}, resync every ${this.resyncIntervalMs} ms${m ? `, metrics http://${formatHostPort(m.host, m.port)}/metrics` : ''})`,
    );
  }

  /**
   * The resident engine of a namespace the agent acts on (a cluster node's, with -n): the one a NAT request
   * naming it would get, kept converged by the resync loop (a flush is repaired as on the agent's own).
   */
  natEngine(ns: NetNs, backend?: BackendChoice): NatEngine {
    const engine = this.engines.get({ ns, stateDir: this.stateDir, ...(backend ? { backend } : {}) });
    if (ns.isCurrent) this.loop.remember(engine.dir);
    else this.loop.watch(engine);
    return engine;
  }

  /** A request to the service its first frame names (anything but NAT is a CNI call, or refused as garbage there). */
  private route(call: Call): void {
    if (call.kind === 'nat') this.nat.serve(call);
    else this.cni.serve(call);
  }

  private track(work: Promise<unknown>): void {
    this.running.add(work);
    void work.catch(() => undefined).finally(() => this.running.delete(work));
  }

  /** Stops accepting, lets calls under way finish, removes the socket. */
  async stop(): Promise<void> {
    this.stopping = true;
    const resynced = this.loop.stop();
    const closed = this.transport.stopAccepting();
    await Promise.allSettled([...this.running]);
    await resynced;
    this.transport.removeSocket();
    await closed;
    // Work accepted while the listener was closing is in `running` now too.
    await Promise.allSettled([...this.running]);
    this.nat.close();
    await this.http?.close();
  }
}
