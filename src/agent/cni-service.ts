/**
 * CNI calls for the shim (tsnet-bridge, tsnet-ipam): the same invoke() the
 * standalone plugin runs, in the order a runtime expects, within the shim's
 * deadline.
 *
 * - Calls for one attachment (network/container/ifname) run one after
 *   another: an ADD whose shim died may still be running when its DEL comes.
 * - GC of a network waits for the calls under way on it: an ADD must not be
 *   half torn down.
 * - A call past its deadline is answered "try again later" (CNI 11); its
 *   work goes on in the agent, and the DEL that follows cleans up.
 */
import { errorInvocation, invoke, PLUGINS, type Invocation, type PluginName } from '../cni/plugin';
import { CniError, CNI_ERR } from '../cni/errors';
import { decodeRequest, type Request } from './protocol';
import type { Call } from './transport';
import type { AgentMetrics } from './metrics';
import type { AgentEngines } from './engines';

/** setTimeout's limit: larger delays fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** What the agent keeps of the shim's deadline for the answer to travel back. */
const REPLY_MARGIN_MS = 250;
/** Commands for one attachment (the others are about a network, or about nothing). */
const PER_ATTACHMENT = ['ADD', 'DEL', 'CHECK'];

export interface CniServiceOptions {
  /** State directory for calls whose config and environment name none (--state-dir). */
  stateDir: string;
  engines: AgentEngines;
  metrics: AgentMetrics;
  log: (line: string) => void;
  /** Work the agent waits for when it stops. */
  track: (work: Promise<unknown>) => void;
  /** A NAT state directory a call may have written rules in: the resync loop watches it from now on. */
  remember: (dir: string) => void;
}

/** The parts of a network config the agent looks at before invoke() reads all of it. */
interface ConfHead {
  name?: unknown;
  stateDir?: unknown;
}

function confHead(stdin: string): ConfHead {
  try {
    const parsed = JSON.parse(stdin) as unknown;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) return parsed as ConfHead;
  } catch {
    // invoke reports it
  }
  return {};
}

/** How long after the last CNI call the agent counts as calm (see calm()). */
const CALM_MS = 2000;

export class CniService {
  /** The last call under way for each attachment ("network/container/ifname"). */
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Calls being served (a NAT rebuild in pieces lets them go first). */
  inflight = 0;
  /** When the last call ended (ms since the epoch). */
  private lastEnded = 0;

  /** No call under way, nor for CALM_MS: a NAT rebuild may go in bigger pieces. */
  calm(): boolean {
    return this.inflight === 0 && Date.now() - this.lastEnded > CALM_MS;
  }

  constructor(private readonly o: CniServiceOptions) {}

  serve(call: Call): void {
    const req = call.decode(decodeRequest);
    if (!req) return;
    if (!(PLUGINS as readonly string[]).includes(req.plugin))
      return call.deny('protocol', `unknown plugin ${JSON.stringify(req.plugin)}`);
    this.answer(req)
      .then((r) => call.reply(r.exitCode, r.stdout))
      .catch((err: unknown) => {
        // a bug here must cost one call, not the agent and every call under way
        this.o.log(`agent: serving a call failed: ${(err as Error).stack ?? String(err)}`);
        call.drop();
      });
  }

  /** One call: queued behind earlier calls for the same attachment, bounded by the shim's deadline. */
  private async answer(req: Request): Promise<Invocation> {
    const command = req.env.CNI_COMMAND ?? '';
    const conf = confHead(req.stdin);
    const t0 = process.hrtime.bigint();
    this.o.metrics.inflight.inc();
    this.inflight++;
    const work = this.queued(req, command, conf, () =>
      invoke(req.plugin as PluginName, req.env, req.stdin, { stateDir: this.o.stateDir, engines: this.o.engines }),
    );
    const r = await this.withinDeadline(req, command, work);
    this.o.metrics.inflight.dec();
    this.inflight--;
    this.lastEnded = Date.now();
    this.record(req, command, conf, r, Number(process.hrtime.bigint() - t0) / 1e9);
    if (command !== 'VERSION')
      this.o.remember(typeof conf.stateDir === 'string' ? conf.stateDir : req.env.TSNET_STATE_DIR || this.o.stateDir);
    return r;
  }

  /** `run` once the calls it must follow have settled: earlier calls for its attachment, or for a GC every call under way on its network. */
  private queued(req: Request, command: string, conf: ConfHead, run: () => Promise<Invocation>): Promise<Invocation> {
    const key = PER_ATTACHMENT.includes(command)
      ? `${String(conf.name)}/${req.env.CNI_CONTAINERID}/${req.env.CNI_IFNAME}`
      : undefined;
    const network = `${String(conf.name)}/`;
    const before = key
      ? [this.queues.get(key)]
      : command === 'GC'
        ? [...this.queues].filter(([k]) => k.startsWith(network)).map(([, p]) => p)
        : [];
    const work = (async () => {
      await Promise.allSettled(before);
      return run();
    })();
    this.o.track(work);
    if (key) {
      this.queues.set(key, work);
      void work
        .catch(() => undefined)
        .finally(() => {
          if (this.queues.get(key) === work) this.queues.delete(key);
        });
    }
    return work;
  }

  /** What `work` gives, or "try again later" once the shim's deadline is near (the work goes on). */
  private async withinDeadline(req: Request, command: string, work: Promise<Invocation>): Promise<Invocation> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<Invocation>((resolve) => {
      const late = new CniError(
        CNI_ERR.tryAgainLater,
        `${req.plugin} ${command}: not finished within the ${req.deadlineMs} ms deadline (still running in the agent; DEL cleans up): try again later`,
      );
      timer = setTimeout(
        () => resolve(errorInvocation(late, req.stdin)),
        Math.min(MAX_TIMER_MS, Math.max(1, req.deadlineMs - REPLY_MARGIN_MS)),
      );
    });
    const r = await Promise.race([work.catch((err: unknown) => errorInvocation(err, req.stdin)), deadline]);
    clearTimeout(timer);
    return r;
  }

  private record(req: Request, command: string, conf: ConfHead, r: Invocation, secs: number): void {
    const result = r.exitCode === 0 ? 'ok' : `error_${r.code ?? 'unknown'}`;
    this.o.metrics.cniRequests.inc({ plugin: req.plugin, command, result });
    this.o.metrics.cniDuration.observe({ command }, secs);
    this.o.log(
      `cni: ${req.plugin} ${command} ${String(conf.name ?? '-')} ${req.env.CNI_CONTAINERID ?? '-'} ${req.env.CNI_IFNAME ?? '-'}: ${result} in ${(secs * 1000).toFixed(1)} ms`,
    );
  }
}
