/**
 * The CLI's side of the agent socket: a NAT change handed to the resident
 * `tsnet agent`, which holds the state in memory and applies it as a diff
 * (milliseconds), instead of this process loading the engine and the stored
 * state (a Node start's worth of modules and a 3 MB snapshot at 10,000
 * services). As with the CNI shim: no agent, or one that refuses (another
 * namespace, another mount namespace's /run/netns), and the caller applies
 * the change itself; an agent that answered has applied the change or said
 * why not. Unlike a CNI call, a change whose agent died after taking it (the
 * connection closed without a reply) is applied here too: every change is
 * idempotent (the same again is a no-op) and a dead agent applies nothing
 * later. An agent that is alive but silent past REPLY_MS may still apply it:
 * that is reported, not redone here.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { TsnetError, isTsnetCode } from '../errors';
import { stateDir as defaultStateDir } from '../state';
import type { NetNs } from '../netns';
import { nsIdentity, refIdentity } from '../netns/ref';
import type { NatChange } from '../nat/changes';
import type { SyncReport } from '../nat/engine';
import type { BackendChoice } from '../nat/backends';
import { DEFAULT_SOCKET } from '../cni/defaults';
import {
  FrameReader,
  HELLO,
  WHOLE_STATE,
  decodeNatFailure,
  decodeReply,
  encodeNatRequest,
  type NatRequest,
} from './protocol';

/** How long to wait for the agent's hello before doing the work here (an agent that does not greet in time is busy or hung): $TSNET_AGENT_HELLO_MS, default 2 s as the CNI shim. */
function helloMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.TSNET_AGENT_HELLO_MS);
  return Number.isSafeInteger(v) && v > 0 ? v : 2000;
}

/** The socket the CLI tries: $TSNET_AGENT_SOCKET (set but empty: never use an agent), else the default. */
export function agentSocket(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const s = env.TSNET_AGENT_SOCKET;
  return s === undefined ? DEFAULT_SOCKET : s || undefined;
}

/** How long a change may take inside the agent before this process applies it itself (a 44,000-service round takes seconds). */
const REPLY_MS = 120_000;

/** The error the agent at `socket` reported, as this process would have raised it (errno and syscall too: a kernel EINVAL is not bad input). */
function agentError(socket: string, body: unknown): TsnetError {
  const f = decodeNatFailure(body);
  return new TsnetError(f.error ?? `the agent at ${socket} failed the change`, {
    code: isTsnetCode(f.code) ? f.code : 'EAGENT',
    ...(f.errno !== undefined ? { errno: f.errno } : {}),
    ...(f.syscall !== undefined ? { syscall: f.syscall } : {}),
  });
}

export type Served<T> = { served: true; result: T } | { served: false; why: string };

/**
 * Sends `req` to the agent at `socket`. `served: false` (with the reason)
 * when there is no agent or it refused before acting: do the work here.
 * Throws what the agent reported when the change itself failed.
 */
export function natChangeThroughAgent<T>(socket: string, req: NatRequest): Promise<Served<T>> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(socket);
    const reader = new FrameReader();
    let greeted = false;
    let done = false;
    const finish = (r: Served<T> | Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      if (r instanceof Error) reject(r);
      else resolve(r);
    };
    const wait = helloMs();
    let timer = setTimeout(() => finish({ served: false, why: `no hello from ${socket} within ${wait} ms` }), wait);
    c.on('error', (err) => finish({ served: false, why: `${socket}: ${err.message}` }));
    c.on('close', () =>
      finish({
        served: false,
        why: `${socket} closed the connection ${greeted ? 'without a reply' : 'before its hello'}`,
      }),
    );
    c.on('data', (chunk: Buffer) => {
      let frames: Buffer[];
      try {
        frames = reader.push(chunk);
      } catch (err) {
        return finish({ served: false, why: `${socket}: ${(err as Error).message}` });
      }
      for (const f of frames) {
        if (!greeted) {
          const hello = f.toString('utf8');
          if (!hello.startsWith(`${HELLO} `)) return finish({ served: false, why: `${socket}: ${hello}` });
          greeted = true;
          clearTimeout(timer);
          timer = setTimeout(
            () =>
              finish(
                new TsnetError(
                  `the agent at ${socket} took the change but has not answered in ${REPLY_MS / 1000} s: it may still apply it; see its log, then run the command again`,
                  {
                    code: 'ETIMEDOUT',
                  },
                ),
              ),
            REPLY_MS,
          );
          c.write(encodeNatRequest(req));
          continue;
        }
        let reply: ReturnType<typeof decodeReply>;
        let body: unknown;
        try {
          reply = decodeReply(f);
          if ('deny' in reply) return finish({ served: false, why: `${socket}: ${reply.deny}` });
          body = JSON.parse(reply.stdout);
        } catch {
          return finish(
            new TsnetError(`the agent at ${socket} sent a reply that is not one: ${f.toString('utf8').slice(0, 80)}`, {
              code: 'EPROTO',
            }),
          );
        }
        if (reply.exitCode === 0) return finish({ served: true, result: body as T });
        return finish(agentError(socket, body));
      }
    });
  });
}

export interface NatChangeOptions {
  /** The namespace whose rules change (default: this process's): as the user named it (`--netns`: the agent resolves the same name), and how to open it here if the agent does not serve. */
  netns?: { ref: string; open: () => NetNs | Promise<NetNs> };
  stateDir?: string;
  backend?: BackendChoice;
  /** The agent's socket; undefined: apply here without asking. Default: agentSocket(). */
  socket?: string | undefined;
}

/**
 * `changes` applied by the agent when one serves this namespace, else by an
 * engine in this process (the same NatEngine.change either way). Says which
 * did it, and why not the agent.
 */
export async function changeNat(
  changes: NatChange[],
  opts: NatChangeOptions = {},
): Promise<{ report: SyncReport; by: 'agent' | 'self'; why?: string }> {
  const r = await throughAgent(changes, opts);
  if (r.served) return { report: r.result, by: 'agent' };
  const why = r.why;
  const { NatEngine } = await import('../nat/engine');
  const engine = new NatEngine({
    ...(opts.netns ? { ns: await opts.netns.open() } : {}),
    stateDir: opts.stateDir,
    backend: opts.backend,
  });
  return { report: await engine.change(changes), by: 'self', why };
}

/** `changes` sent to the agent, if there is one to send them to. */
async function throughAgent(changes: NatChange[], opts: NatChangeOptions): Promise<Served<SyncReport>> {
  if (changes.some((c) => WHOLE_STATE.includes(c.kind)))
    return { served: false, why: 'a change of the whole state is applied here' };
  const socket = 'socket' in opts ? opts.socket : agentSocket();
  if (!socket) return { served: false, why: 'no agent socket' };
  if (!fs.existsSync(socket)) return { served: false, why: `no agent at ${socket}` };
  // The target as seen here (the agent checks that the reference resolves to the same there); one that does not resolve is reported by the caller's open.
  let target: string | undefined;
  if (opts.netns) {
    try {
      target = refIdentity(opts.netns.ref);
    } catch (err) {
      return { served: false, why: (err as Error).message };
    }
  }
  return natChangeThroughAgent<SyncReport>(socket, {
    netns: nsIdentity('/proc/self/ns/net'),
    target: {
      stateDir: path.resolve(defaultStateDir(opts.stateDir)),
      ...(target ? { netns: { ref: opts.netns!.ref, id: target } } : {}),
      ...(opts.backend ? { backend: opts.backend } : {}),
    },
    changes,
  });
}
