/**
 * NAT changes from the CLI (tsnet-nat/1: `tsnet service set-endpoints ...`),
 * applied by the engine this agent keeps in memory: a diff of what it
 * already holds, not a fresh process loading the state. Refused (the CLI
 * then applies the change itself) when the target namespace does not
 * resolve here to what the caller saw, and for what no CLI sends.
 *
 * A namespace named by `--netns` is kept open per identity and name while a
 * change uses it or the name still points at it: its engine (and the state
 * it holds) is the same from one request to the next. The resync loop calls
 * release() to let go of the others (an open handle keeps a deleted
 * namespace alive).
 */
import { resolve as netnsResolve, type NetNs } from '../netns';
import { nsIdentity, refIdentity } from '../netns/ref';
import { NAT_OPS } from '../nat/change-json';
import { speaksForCluster } from '../nat/origin';
import { parseBackend, type BackendChoice } from '../nat/backends';
import type { NatChange, SyncReport } from '../nat/engine';
import { WHOLE_STATE, decodeNatRequest, encodeNatFailure, type NatRequest } from './protocol';
import type { AgentEngines } from './engines';
import type { AgentMetrics } from './metrics';
import type { Call } from './transport';

/** Most changes one NAT request may carry: the CLI sends one; more is a client gone wrong. */
const MAX_NAT_CHANGES = 1000;

/** A namespace kept for NAT requests: the handle, its identity when opened, and how many changes are using it. */
interface KeptNamespace {
  id: string;
  handle: NetNs;
  users: number;
}

/** Why a NAT request's changes are refused before anything is done, or undefined. */
function changesProblem(changes: readonly { kind: string }[]): string | undefined {
  if (changes.length > MAX_NAT_CHANGES) return `${changes.length} changes in one request (at most ${MAX_NAT_CHANGES})`;
  const unknown = changes.find((x) => !(NAT_OPS as readonly string[]).includes(x.kind));
  if (unknown) return `unknown change ${JSON.stringify(unknown.kind)}: this agent knows ${NAT_OPS.join(', ')}`;
  // The CLI applies these itself (src/agent/client.ts): the whole set is not worth sending, nor checking twice.
  const whole = changes.find((x) => WHOLE_STATE.includes(x.kind));
  if (whole) return `${whole.kind} is applied by the caller, not the agent`;
  // Cluster services change through etcd; the agent's own sync is the only writer of them.
  const cluster = changes.find(speaksForCluster);
  if (cluster) return `${cluster.kind} of a cluster service: those change through etcd (tsnet --etcd service ...)`;
  return undefined;
}

/** "2 changes (add-service, set-endpoints) in DIR for namespace r1", for the log. */
function describe(req: NatRequest, ns: NetNs | undefined): string {
  const n = req.changes.length;
  const ops = [...new Set(req.changes.map((x) => x.kind))].join(', ');
  return `${n} change${n === 1 ? '' : 's'} (${ops}) in ${req.target.stateDir}${ns ? ` for ${ns.label}` : ''}`;
}

export interface NatServiceOptions {
  /** The agent's network namespace identity ("DEV INO"). */
  netns: string;
  engines: AgentEngines;
  metrics: AgentMetrics;
  log: (line: string) => void;
  stopping: () => boolean;
  /** Work the agent waits for when it stops. */
  track: (work: Promise<unknown>) => void;
  /** A NAT state directory of the agent's namespace: the resync loop watches it from now on. */
  remember: (dir: string) => void;
}

/** A request accepted: what to change, where, with which backend. */
interface Accepted {
  req: NatRequest;
  backend?: BackendChoice;
  kept?: KeptNamespace;
}

export class NatService {
  /** Namespaces other than the agent's named by NAT requests, by identity ("DEV INO") and name. */
  private readonly namespaces = new Map<string, KeptNamespace>();

  constructor(private readonly o: NatServiceOptions) {}

  serve(call: Call): void {
    const a = this.accept(call);
    if (!a) return;
    const what = describe(a.req, a.kept?.handle);
    const t0 = process.hrtime.bigint();
    this.apply(a).then(
      (report) => {
        this.o.metrics.natRequests.inc({ result: 'ok' });
        this.o.log(`nat: served ${what}: ok in ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
        call.reply(0, JSON.stringify(report));
      },
      (err: unknown) => {
        this.o.metrics.natRequests.inc({ result: 'error' });
        this.o.log(`nat: served ${what}: ${(err as { message?: string }).message ?? String(err)}`);
        call.reply(1, encodeNatFailure(err));
      },
    );
  }

  /** The request, once nothing in it is refused; undefined once denied. */
  private accept(call: Call): Accepted | undefined {
    if (this.o.stopping()) return void call.deny('stopping', 'the agent is stopping');
    const req = call.decode(decodeNatRequest);
    if (!req) return undefined;
    const refused = changesProblem(req.changes);
    if (refused) return void call.deny('protocol', refused);
    let backend: BackendChoice | undefined;
    try {
      backend = req.target.backend === undefined ? undefined : parseBackend(req.target.backend);
    } catch (err) {
      return void call.deny('protocol', (err as Error).message);
    }
    let kept: KeptNamespace | undefined;
    try {
      kept = req.target.netns && this.namespace(req.target.netns);
    } catch (err) {
      return void call.deny('netns', (err as Error).message);
    }
    return { req, ...(backend ? { backend } : {}), ...(kept ? { kept } : {}) };
  }

  /** The changes applied by the engine kept for their target; the namespace stays in use until they are done. */
  private apply({ req, backend, kept }: Accepted): Promise<SyncReport> {
    const ns = kept?.handle;
    if (kept) kept.users++;
    const work = (async () => {
      const engine = this.o.engines.get({
        ...(ns ? { ns } : {}),
        stateDir: req.target.stateDir,
        ...(backend ? { backend } : {}),
      });
      const report = await engine.change(req.changes as NatChange[]);
      // The resync loop watches directories of this namespace only.
      if (!ns) this.o.remember(engine.dir);
      return report;
    })();
    this.o.track(work);
    void work
      .catch(() => undefined)
      .finally(() => {
        if (kept) kept.users--;
      });
    return work;
  }

  /**
   * The namespace a NAT request names, as the caller resolved it (ref and
   * identity): the handle kept for it. Kept per identity and name: the
   * engine's directory follows the handle's name (`netns/NAME`, or
   * `netns/inode-N` for a pid or a path), as in the CLI.
   */
  private namespace(target: { ref: string; id: string }): KeptNamespace {
    // Checked with stat before anything opens it: a path that is not this namespace (a FIFO, a file) is never opened.
    let seen: string | undefined;
    try {
      seen = refIdentity(target.ref);
    } catch {
      // reported below
    }
    if (seen !== target.id || seen.split(' ')[0] !== this.o.netns.split(' ')[0])
      throw new Error(`${target.ref} is ${seen ? `namespace ${seen}` : 'nothing'} here, ${target.id} for the caller`);
    const fresh = netnsResolve(target.ref);
    if (String(fresh.inode) !== target.id.split(' ')[1]) {
      fresh.close();
      throw new Error(`${target.ref} changed while it was opened`);
    }
    const key = `${target.id}\0${fresh.name ?? ''}`;
    const kept = this.namespaces.get(key);
    if (kept && !kept.handle.closed) {
      fresh.close();
      return kept;
    }
    const k = { id: target.id, handle: fresh, users: 0 };
    this.namespaces.set(key, k);
    return k;
  }

  /** Lets go of namespaces that no longer resolve to what they were (deleted: the handle would keep them alive), unless a change is using them. */
  release(): void {
    for (const [key, k] of this.namespaces) {
      if (k.users) continue; // next pass
      let now: string | undefined;
      try {
        now = nsIdentity(k.handle.path);
      } catch {
        // gone
      }
      if (now !== k.id) {
        k.handle.close();
        this.namespaces.delete(key);
      }
    }
  }

  /** Closes every namespace kept (the agent stops: no change is under way). */
  close(): void {
    for (const k of this.namespaces.values()) k.handle.close();
    this.namespaces.clear();
  }
}
