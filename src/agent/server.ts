/**
 * `tsnet agent`: the resident side of the CNI plugins. The shim installed as
 * tsnet-bridge / tsnet-ipam hands each call to this process over a unix
 * socket; it runs the same library call as the standalone plugin
 * (cni/plugin.invoke), without paying for a Node start per call. State stays
 * where the standalone plugin keeps it (attachment records, host-local IPAM
 * files, NAT desired state, all under their flock locks), so the agent and
 * standalone plugins can run side by side and either can take over after the
 * other dies.
 *
 * Per connection:
 *   SO_PEERCRED uid 0? peer's /proc/PID/ns/net == ours?  no -> "deny ..."
 *   -> hello (our namespace identity) -> request -> invoke -> reply
 *
 * The agent also owns the NAT resync loop (kube-proxy's canary monitor):
 * every interval each NAT state directory it has served is checked, and rules
 * someone flushed are re-applied from the stored desired state.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../native';
import { TsnetError, contextualize, hasCode, invalid } from '../errors';
import { readJson, stateDir as defaultStateDir, writeJsonAtomic } from '../state';
import { errorInvocation, invoke, PLUGINS, type Invocation, type PluginName } from '../cni/plugin';
import { CniError, CNI_ERR } from '../cni/errors';
import { EnginePool, type NatChange, type SyncEvent } from '../nat/engine';
import { NAT_OPS } from '../nat/changes';
import { parseBackend, type BackendChoice } from '../nat/backends';
import { resolve as netnsResolve, type NetNs } from '../netns';
import { nsIdentity, refIdentity } from '../netns/ref';
import { parseHostPort } from '../nat/model';
import {
  DEFAULT_METRICS,
  DEFAULT_SOCKET,
  FrameReader,
  HELLO,
  decodeNatRequest,
  decodeRequest,
  encodeReply,
  WHOLE_STATE,
  frame,
  requestKind,
  type Request,
} from './protocol';
import { agentMetrics, type AgentMetrics } from './metrics';

export { nsIdentity } from '../netns/ref';

/** A namespace kept for NAT requests: the handle, its identity when opened, and how many changes are using it. */
interface KeptNamespace {
  id: string;
  handle: NetNs;
  users: number;
}

/** Most changes one NAT request may carry: the CLI sends one; more is a client gone wrong. */
const MAX_NAT_CHANGES = 1000;

/** Why a NAT request's changes are refused before anything is done, or undefined. */
function natRequestProblem(changes: readonly { kind: string }[]): string | undefined {
  if (changes.length > MAX_NAT_CHANGES) return `${changes.length} changes in one request (at most ${MAX_NAT_CHANGES})`;
  const unknown = changes.find((x) => !(NAT_OPS as readonly string[]).includes(x.kind));
  if (unknown) return `unknown change ${JSON.stringify(unknown.kind)}: this agent knows ${NAT_OPS.join(', ')}`;
  // The CLI applies these itself (src/agent/client.ts): the whole set is not worth sending, nor checking twice.
  const whole = changes.find((x) => WHOLE_STATE.includes(x.kind));
  if (whole) return `${whole.kind} is applied by the caller, not the agent`;
  return undefined;
}

export const DEFAULT_RESYNC_MS = 10_000;
/** How often the resync loop rewrites everything regardless of the canary (kube-proxy: hourly). */
export const DEFAULT_FULL_SYNC_MS = 3_600_000;
/** setTimeout's limit: larger delays fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A shim that connects but sends no complete request within this is dropped. */
const REQUEST_READ_MS = 10_000;

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

/** The socket's directory must be root's alone: a socket's mode is not checked by every kernel path, a directory's is. */
function prepareSocketDir(socket: string): void {
  const dir = path.dirname(socket);
  if (!fs.existsSync(dir)) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir); // not through a symlink someone else could repoint
  if (st.isSymbolicLink())
    throw invalid(`socket directory ${dir} is a symlink: give the socket a real directory of its own, e.g. /run/tsnet`);
  if (st.uid !== process.getuid!() || (st.mode & 0o077) !== 0) {
    throw invalid(
      `socket directory ${dir} must be owned by ${process.getuid!()} with mode 0700 (it is ${(st.mode & 0o777).toString(8)}, uid ${st.uid}): give the socket a directory of its own, e.g. /run/tsnet`,
    );
  }
}

/** Removes a socket file left by a dead agent; refuses when a live one answers. */
async function claimSocket(socket: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socket);
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return;
    throw err;
  }
  if (!st.isSocket()) throw invalid(`${socket} exists and is not a socket: remove it or choose another --socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new TsnetError(`another agent is serving ${socket}: stop it first`, { code: 'EADDRINUSE' });
  fs.rmSync(socket, { force: true });
}

export class Agent {
  readonly socket: string;
  readonly stateDir: string;
  readonly resyncIntervalMs: number;
  readonly fullSyncIntervalMs: number;
  readonly metrics: AgentMetrics = agentMetrics();
  /** The agent's network namespace identity, sent in every hello. */
  readonly netns = nsIdentity('/proc/self/ns/net');
  metricsAddress?: { host: string; port: number };

  private server?: net.Server;
  private http?: http.Server;
  private timer?: NodeJS.Timeout;
  private stopping = false;
  /** Every call's work, also one whose shim got a deadline error: stop() waits for all of it. */
  private readonly running = new Set<Promise<unknown>>();
  /** The socket file this agent bound (its inode), so stop() never removes a successor's. */
  private socketIno?: number;
  /** Calls for one attachment run one after another (an ADD whose shim died may still be running when its DEL comes). */
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Namespaces other than the agent's named by NAT requests, by identity ("DEV INO") and name: their engines stay in memory while they exist. */
  private readonly natNamespaces = new Map<string, KeptNamespace>();
  /** NAT state directories this agent has served: what the resync loop watches (kept across restarts). */
  private readonly natDirs = new Set<string>();
  private readonly log: (line: string) => void;
  /** This agent's NAT engines: resident (the state parsed and indexed once), every sync observed for metrics and the log. */
  readonly engines: EnginePool;
  private resyncing?: Promise<void>;
  private passes = 0;

  private readonly metricsListen?: { host: string; port: number };

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
    this.log = opts.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`));
    this.engines = new EnginePool({ resident: true, onSync: (e) => this.observeSync(e) });
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

  private get natDirsFile(): string {
    return path.join(this.stateDir, 'agent', 'nat-dirs.json');
  }

  private async listen(): Promise<void> {
    // Load the code a call needs now, not during the first call.
    await Promise.all([
      import('../cni/bridge'),
      import('../nat/iptables/backend'),
      import('../nat/nftables/backend-nft'),
      import('../nat/nftables/backend-netlink'),
    ]);
    for (const d of readJson<string[]>(this.natDirsFile) ?? []) this.natDirs.add(d);
    this.natDirs.add(this.stateDir);

    prepareSocketDir(this.socket);
    await claimSocket(this.socket);
    const server = net.createServer({ allowHalfOpen: true }, (c) => this.accept(c));
    const old = process.umask(0o177); // the socket is born 0600: no window where others could connect
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(this.socket, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
    }
    fs.chmodSync(this.socket, 0o600);
    this.socketIno = fs.lstatSync(this.socket).ino;
    this.server = server;

    if (this.metricsListen) {
      const { host, port } = this.metricsListen;
      const h = http.createServer((req, res) => {
        if (req.method === 'GET' && (req.url === '/metrics' || req.url?.startsWith('/metrics?'))) {
          void this.metrics.registry.metrics().then(
            (text) => res.writeHead(200, { 'content-type': this.metrics.registry.contentType }).end(text),
            (err: Error) => res.writeHead(500).end(`metrics: ${err.message}\n`),
          );
        } else if (req.method === 'GET' && req.url === '/healthz') {
          res.writeHead(200).end('ok\n');
        } else if (req.method === 'GET' && req.url?.startsWith('/topology')) {
          void this.topology(req.url.replace(/\?.*$/, ''), res);
        } else {
          res.writeHead(404).end('not found: try /metrics or /topology\n');
        }
      });
      await new Promise<void>((resolve, reject) => {
        h.once('error', (err) => reject(contextualize(`metrics listener on ${host}:${port}`, err)));
        h.listen(port, host, () => resolve());
      });
      this.http = h;
      const addr = h.address() as net.AddressInfo;
      this.metricsAddress = { host: addr.address, port: addr.port };
    }
    this.scheduleResync();
    this.log(
      `agent: serving ${this.socket} in network namespace ${this.netns} (state ${this.stateDir}, resync every ${this.resyncIntervalMs} ms${this.metricsAddress ? `, metrics http://${this.metricsAddress.host}:${this.metricsAddress.port}/metrics` : ''})`,
    );
  }

  private deny(c: net.Socket, reason: string, why: string): void {
    this.metrics.rejected.inc({ reason });
    this.log(`agent: refused a connection: ${why}`);
    c.end(frame(`deny ${why}`));
  }

  private accept(c: net.Socket): void {
    c.on('error', () => {
      /* the shim went away; its call (if any) finishes and the reply is dropped */
    });
    let cred: { pid: number; uid: number };
    try {
      cred = native().peerCred((c as unknown as { _handle: { fd: number } })._handle.fd);
    } catch (err) {
      return this.deny(c, 'credentials', `cannot read the peer's credentials: ${(err as Error).message}`);
    }
    if (cred.uid !== 0) return this.deny(c, 'uid', `peer uid ${cred.uid} (pid ${cred.pid}) is not root`);
    let peerNs: string;
    try {
      peerNs = nsIdentity(`/proc/${cred.pid}/ns/net`);
    } catch {
      return this.deny(c, 'netns', `cannot read the network namespace of pid ${cred.pid}`);
    }
    if (peerNs !== this.netns)
      return this.deny(c, 'netns', `pid ${cred.pid} is in network namespace ${peerNs}, the agent in ${this.netns}`);
    if (this.stopping) return void c.destroy();
    c.write(frame(`${HELLO} ${this.netns}`));

    const reader = new FrameReader();
    const frames: Buffer[] = [];
    const timer = setTimeout(() => c.destroy(), REQUEST_READ_MS);
    c.on('data', (chunk: Buffer) => {
      if (frames.length >= 3) return;
      try {
        frames.push(...reader.push(chunk));
      } catch {
        clearTimeout(timer);
        return void c.destroy();
      }
      if (frames.length < 3) return;
      clearTimeout(timer);
      if (requestKind(frames[0]!) === 'nat') return this.acceptNat(c, frames);
      const req = this.decoded(c, () => decodeRequest(frames));
      if (!req) return;
      if (!(PLUGINS as readonly string[]).includes(req.plugin))
        return this.deny(c, 'protocol', `unknown plugin ${JSON.stringify(req.plugin)}`);
      this.serve(req)
        .then((r) => {
          if (!c.destroyed) c.end(encodeReply(r.exitCode, r.stdout));
        })
        .catch((err: unknown) => {
          // a bug here must cost one call, not the agent and every call under way
          this.log(`agent: serving a call failed: ${(err as Error).stack ?? String(err)}`);
          c.destroy();
        });
    });
    c.on('end', () => {
      if (frames.length < 3) {
        clearTimeout(timer);
        c.destroy();
      }
    });
  }

  /** A request decoded, its caller's own view of its namespace agreeing with what the kernel says about it; undefined once refused. */
  private decoded<R extends { netns: string }>(c: net.Socket, decode: () => R): R | undefined {
    let req: R;
    try {
      req = decode();
    } catch (err) {
      this.deny(c, 'protocol', (err as Error).message);
      return undefined;
    }
    if (req.netns !== this.netns) {
      this.deny(c, 'netns', `request from network namespace ${req.netns}, the agent is in ${this.netns}`);
      return undefined;
    }
    return req;
  }

  /**
   * A NAT change from the CLI (`tsnet service set-endpoints ...`), applied by
   * the engine this agent keeps in memory: a diff of what it already holds,
   * not a fresh process loading the state. Refused (the CLI then applies it
   * itself) when the target namespace does not resolve here to what the
   * caller saw.
   */
  private acceptNat(c: net.Socket, frames: readonly Buffer[]): void {
    if (this.stopping) return this.deny(c, 'stopping', 'the agent is stopping');
    const req = this.decoded(c, () => decodeNatRequest(frames));
    if (!req) return;
    const refused = natRequestProblem(req.changes);
    if (refused) return this.deny(c, 'protocol', refused);
    let backend: BackendChoice | undefined;
    try {
      backend = req.target.backend === undefined ? undefined : parseBackend(req.target.backend);
    } catch (err) {
      return this.deny(c, 'protocol', (err as Error).message);
    }
    let kept: KeptNamespace | undefined;
    try {
      kept = req.target.netns && this.natNamespace(req.target.netns);
    } catch (err) {
      return this.deny(c, 'netns', (err as Error).message);
    }
    const ns = kept?.handle;
    const t0 = process.hrtime.bigint();
    const what = `${req.changes.length} change${req.changes.length === 1 ? '' : 's'} (${[...new Set(req.changes.map((x) => x.kind))].join(', ')}) in ${req.target.stateDir}${ns ? ` for ${ns.label}` : ''}`;
    if (kept) kept.users++;
    const work = (async () => {
      const engine = this.engines.get({
        ...(ns ? { ns } : {}),
        stateDir: req.target.stateDir,
        ...(backend ? { backend } : {}),
      });
      const report = await engine.change(req.changes as NatChange[]);
      // The resync loop watches directories of this namespace only.
      if (!ns) this.remember(engine.dir);
      return report;
    })();
    this.running.add(work);
    void work
      .catch(() => undefined)
      .finally(() => {
        this.running.delete(work);
        if (kept) kept.users--;
      });
    work.then(
      (report) => {
        this.metrics.natRequests.inc({ result: 'ok' });
        this.log(`nat: served ${what}: ok in ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
        if (!c.destroyed) c.end(encodeReply(0, JSON.stringify(report)));
      },
      (err: unknown) => {
        const e = err as { message?: string; code?: unknown };
        this.metrics.natRequests.inc({ result: 'error' });
        this.log(`nat: served ${what}: ${e.message ?? String(err)}`);
        if (!c.destroyed)
          c.end(
            encodeReply(
              1,
              JSON.stringify({
                error: e.message ?? String(err),
                ...(typeof e.code === 'string' ? { code: e.code } : {}),
              }),
            ),
          );
      },
    );
  }

  /**
   * The namespace a NAT request names, as the caller resolved it (ref and
   * identity): the handle this agent keeps for it, so its engine (and the
   * state it holds) is the same from one request to the next. Kept per
   * identity and name: the engine's directory follows the handle's name
   * (`netns/NAME`, or `netns/inode-N` for a pid or a path), as in the CLI.
   */
  private natNamespace(target: { ref: string; id: string }): KeptNamespace {
    // Checked with stat before anything opens it: a path that is not this namespace (a FIFO, a file) is never opened.
    let seen: string | undefined;
    try {
      seen = refIdentity(target.ref);
    } catch {
      // reported below
    }
    if (seen !== target.id || seen.split(' ')[0] !== this.netns.split(' ')[0])
      throw new Error(`${target.ref} is ${seen ? `namespace ${seen}` : 'nothing'} here, ${target.id} for the caller`);
    const fresh = netnsResolve(target.ref);
    if (String(fresh.inode) !== target.id.split(' ')[1]) {
      fresh.close();
      throw new Error(`${target.ref} changed while it was opened`);
    }
    const key = `${target.id}\0${fresh.name ?? ''}`;
    const kept = this.natNamespaces.get(key);
    if (kept && !kept.handle.closed) {
      fresh.close();
      return kept;
    }
    const k = { id: target.id, handle: fresh, users: 0 };
    this.natNamespaces.set(key, k);
    return k;
  }

  /** Lets go of namespaces kept for NAT requests that no longer resolve to what they were (deleted: the handle would keep them alive), unless a change is using them. */
  private releaseNatNamespaces(): void {
    for (const [key, k] of this.natNamespaces) {
      if (k.users) continue; // next pass
      let now: string | undefined;
      try {
        now = nsIdentity(k.handle.path);
      } catch {
        // gone
      }
      if (now !== k.id) {
        k.handle.close();
        this.natNamespaces.delete(key);
      }
    }
  }

  /** One call: queued behind earlier calls for the same attachment, bounded by the shim's deadline. */
  private async serve(req: Request): Promise<Invocation> {
    const command = req.env.CNI_COMMAND ?? '';
    let conf: { name?: unknown; stateDir?: unknown } = {};
    try {
      const parsed = JSON.parse(req.stdin) as unknown;
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) conf = parsed as typeof conf;
    } catch {
      // invoke reports it
    }
    const key = ['ADD', 'DEL', 'CHECK'].includes(command)
      ? `${String(conf.name)}/${req.env.CNI_CONTAINERID}/${req.env.CNI_IFNAME}`
      : undefined;
    const t0 = process.hrtime.bigint();
    this.metrics.inflight.inc();
    // GC of a network waits for the calls under way on it (an ADD whose shim died must not be half torn down).
    const network = `${String(conf.name)}/`;
    const before = key
      ? [this.queues.get(key)]
      : command === 'GC'
        ? [...this.queues].filter(([k]) => k.startsWith(network)).map(([, p]) => p)
        : [];
    const work = (async () => {
      await Promise.allSettled(before);
      return invoke(req.plugin as PluginName, req.env, req.stdin, { stateDir: this.stateDir, engines: this.engines });
    })();
    this.running.add(work);
    void work.catch(() => undefined).finally(() => this.running.delete(work));
    if (key) {
      this.queues.set(key, work);
      void work
        .catch(() => undefined)
        .finally(() => {
          if (this.queues.get(key) === work) this.queues.delete(key);
        });
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<Invocation>((resolve) => {
      timer = setTimeout(
        () =>
          resolve(
            errorInvocation(
              new CniError(
                CNI_ERR.tryAgainLater,
                `${req.plugin} ${command}: not finished within the ${req.deadlineMs} ms deadline (still running in the agent; DEL cleans up): try again later`,
              ),
              req.stdin,
            ),
          ),
        Math.min(MAX_TIMER_MS, Math.max(1, req.deadlineMs - 250)),
      );
    });
    const r = await Promise.race([work.catch((err: unknown) => errorInvocation(err, req.stdin)), deadline]);
    clearTimeout(timer);
    this.metrics.inflight.dec();
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const result = r.exitCode === 0 ? 'ok' : `error_${r.code ?? 'unknown'}`;
    this.metrics.cniRequests.inc({ plugin: req.plugin, command, result });
    this.metrics.cniDuration.observe({ command }, secs);
    this.log(
      `cni: ${req.plugin} ${command} ${String(conf.name ?? '-')} ${req.env.CNI_CONTAINERID ?? '-'} ${req.env.CNI_IFNAME ?? '-'}: ${result} in ${(secs * 1000).toFixed(1)} ms`,
    );
    if (command !== 'VERSION')
      this.remember(typeof conf.stateDir === 'string' ? conf.stateDir : req.env.TSNET_STATE_DIR || this.stateDir);
    return r;
  }

  /** Adds a NAT state directory to the resync loop's list (saved, so a restarted agent watches it too). */
  private remember(dir: string): void {
    if (this.natDirs.has(dir)) return;
    this.natDirs.add(dir);
    try {
      writeJsonAtomic(this.natDirsFile, [...this.natDirs]);
    } catch (err) {
      this.log(`agent: cannot save ${this.natDirsFile}: ${(err as Error).message}`);
    }
  }

  private observeSync(e: SyncEvent): void {
    const secs = e.ms / 1000;
    const m = this.metrics;
    m.syncDuration.observe(secs);
    (e.full ? m.syncFull : m.syncPartial).observe(secs);
    m.syncLast.setToCurrentTime();
    if (e.trigger === 'resync') m.resyncAfterFlush.inc();
    this.log(
      `nat: ${e.trigger}${e.trigger === 'resync' ? ' after flush' : ''} ${e.dir}: ${e.full ? 'full' : 'partial'} ${e.backend}, ${e.written} written, ${e.deleted} deleted in ${e.ms.toFixed(1)} ms`,
    );
  }

  /** /topology (the page), /topology.json (the node view), /topology.svg (the picture): this node's network, with the NAT state of every directory served. */
  private async topology(url: string, res: http.ServerResponse): Promise<void> {
    try {
      const { TOPOLOGY_PAGE } = await import('../inspect/page');
      if (url === '/topology' || url === '/topology/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(TOPOLOGY_PAGE);
        return;
      }
      const { inspectNode } = await import('../inspect/node');
      const engines = [...this.natDirs]
        .filter((d) => fs.existsSync(path.join(d, 'nat.json')) || fs.existsSync(path.join(d, 'nat.journal')))
        .map((d) => this.engines.get({ stateDir: d }));
      const view = await inspectNode((await import('../netns')).current(), engines);
      if (url === '/topology.json') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(view));
      } else if (url === '/topology.svg') {
        const { topology, toSvg } = await import('../inspect/topology');
        res.writeHead(200, { 'content-type': 'image/svg+xml' }).end(await toSvg(topology(view)));
      } else {
        res.writeHead(404).end('not found: /topology, /topology.json, /topology.svg\n');
      }
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`topology: ${(err as Error).message}\n`);
    }
  }

  /**
   * One pass of the resync loop: rules flushed by someone else come back.
   * Every fullSyncIntervalMs (an hour) it is a forced full sync instead
   * (kube-proxy's periodic full sync), which also repairs a single chain
   * edited by hand under an intact canary: partial syncs only write what
   * tsnet itself changed.
   */
  async resync(): Promise<void> {
    this.releaseNatNamespaces();
    const full = ++this.passes % Math.max(1, Math.round(this.fullSyncIntervalMs / this.resyncIntervalMs)) === 0;
    for (const dir of this.natDirs) {
      if (!fs.existsSync(path.join(dir, 'nat.json')) && !fs.existsSync(path.join(dir, 'nat.journal'))) continue; // no NAT state here (yet)
      try {
        const engine = this.engines.get({ stateDir: dir });
        await (full ? engine.sync({ force: true }) : engine.converge());
      } catch (err) {
        this.metrics.resyncErrors.inc();
        this.log(`nat: resync of ${dir} failed: ${(err as Error).message}`);
      }
    }
  }

  private scheduleResync(): void {
    this.timer = setTimeout(() => {
      this.resyncing = this.resync().finally(() => {
        this.resyncing = undefined;
        if (!this.stopping) this.scheduleResync();
      });
    }, this.resyncIntervalMs);
    this.timer.unref();
  }

  /** Stops accepting, lets calls under way finish, removes the socket. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    const closed = this.server ? new Promise<void>((r) => this.server!.close(() => r())) : Promise.resolve();
    await Promise.allSettled([...this.running]);
    if (this.resyncing) await this.resyncing;
    try {
      if (this.server && fs.lstatSync(this.socket).ino === this.socketIno) fs.rmSync(this.socket, { force: true });
    } catch {
      // already gone
    }
    await closed;
    // Work accepted while the listener was closing is in `running` now too.
    await Promise.allSettled([...this.running]);
    for (const k of this.natNamespaces.values()) k.handle.close();
    this.natNamespaces.clear();
    if (this.http) {
      this.http.closeAllConnections();
      await new Promise<void>((r) => this.http!.close(() => r()));
    }
  }
}
