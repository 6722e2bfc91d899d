/**
 * The agent's unix socket: who may connect, and how a request is read.
 *
 *   connect -> SO_PEERCRED uid 0?  the peer's /proc/PID/ns/net == ours?    no -> "deny REASON"
 *           -> hello "tsnet-agent/1 DEV INO" -> three frames within REQUEST_READ_MS -> a service (Call)
 *
 * The socket is 0600 in a directory that is root's alone (both checked); a
 * socket file left by a dead agent is taken over, one a live agent answers
 * on is not.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../native';
import { TsnetError, invalid, isNotFound } from '../errors';
import { nsIdentity } from '../netns/ref';
import { FrameReader, HELLO, encodeReply, frame, requestKind } from './protocol';
import type { AgentMetrics } from './metrics';

/** A shim that connects but sends no complete request within this is dropped. */
const REQUEST_READ_MS = 10_000;
/** Every request is three frames (protocol.ts). */
const REQUEST_FRAMES = 3;

/** Why a connection was refused: the `reason` of tsnet_agent_rejected_connections_total. */
export type DenyReason = 'credentials' | 'uid' | 'netns' | 'protocol' | 'stopping';

/** One request, as a service sees it: its frames, and the ways to answer. */
export interface Call {
  readonly kind: 'cni' | 'nat' | undefined;
  readonly frames: readonly Buffer[];
  /** Refused before anything was done (the client then does the work itself). */
  deny(reason: DenyReason, why: string): void;
  /** The request decoded, its caller's own view of its namespace agreeing with the kernel's; undefined once refused. */
  decode<R extends { netns: string }>(decode: (frames: readonly Buffer[]) => R): R | undefined;
  /** The answer, unless the client has gone. */
  reply(exitCode: number, stdout: string): void;
  /** Closed without an answer. */
  drop(): void;
}

export interface TransportOptions {
  socket: string;
  /** The agent's network namespace identity ("DEV INO"): callers in any other are refused. */
  netns: string;
  metrics: AgentMetrics;
  log: (line: string) => void;
  stopping: () => boolean;
  serve: (call: Call) => void;
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
    if (isNotFound(err)) return;
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

export class Transport {
  private server?: net.Server;
  /** The socket file this agent bound (its inode), so removeSocket() never removes a successor's. */
  private ino?: number;
  /** Connections open: a call on its way in counts from the moment it connects (a NAT rebuild lets calls go first). */
  open = 0;

  constructor(private readonly o: TransportOptions) {}

  async listen(): Promise<void> {
    const { socket } = this.o;
    prepareSocketDir(socket);
    await claimSocket(socket);
    const server = net.createServer({ allowHalfOpen: true }, (c) => this.accept(c));
    const bound = new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        resolve();
      });
    });
    // The socket is born 0600: no window where others could connect. listen() binds before it returns, so the
    // process-wide umask is back before any other code (another agent in this process) runs.
    const old = process.umask(0o177);
    try {
      server.listen(socket);
    } finally {
      process.umask(old);
    }
    await bound;
    fs.chmodSync(socket, 0o600);
    this.ino = fs.lstatSync(socket).ino;
    this.server = server;
  }

  /** Stops accepting; resolves once the listener is closed. */
  stopAccepting(): Promise<void> {
    return this.server ? new Promise<void>((r) => this.server!.close(() => r())) : Promise.resolve();
  }

  /** Removes the socket file, if it is still the one this agent bound. */
  removeSocket(): void {
    try {
      if (this.server && fs.lstatSync(this.o.socket).ino === this.ino) fs.rmSync(this.o.socket, { force: true });
    } catch {
      // already gone
    }
  }

  private deny(c: net.Socket, reason: DenyReason, why: string): void {
    this.o.metrics.rejected.inc({ reason });
    this.o.log(`agent: refused a connection: ${why}`);
    c.end(frame(`deny ${why}`));
  }

  /** Why the peer on `c` may not be served (the kernel's word on who it is and where), or undefined. */
  private peerProblem(c: net.Socket): [DenyReason, string] | undefined {
    let cred: { pid: number; uid: number };
    try {
      cred = native().peerCred((c as unknown as { _handle: { fd: number } })._handle.fd);
    } catch (err) {
      return ['credentials', `cannot read the peer's credentials: ${(err as Error).message}`];
    }
    if (cred.uid !== 0) return ['uid', `peer uid ${cred.uid} (pid ${cred.pid}) is not root`];
    let peerNs: string;
    try {
      peerNs = nsIdentity(`/proc/${cred.pid}/ns/net`);
    } catch {
      return ['netns', `cannot read the network namespace of pid ${cred.pid}`];
    }
    if (peerNs !== this.o.netns)
      return ['netns', `pid ${cred.pid} is in network namespace ${peerNs}, the agent in ${this.o.netns}`];
    return undefined;
  }

  private accept(c: net.Socket): void {
    c.on('error', () => {
      /* the client went away; its call (if any) finishes and the reply is dropped */
    });
    this.open++;
    c.once('close', () => this.open--);
    const problem = this.peerProblem(c);
    if (problem) return this.deny(c, ...problem);
    if (this.o.stopping()) return void c.destroy();
    c.write(frame(`${HELLO} ${this.o.netns}`));
    this.read(c);
  }

  /** Reads one request's frames and hands it to the services; drops a client that sends too little, too late, or garbage. */
  private read(c: net.Socket): void {
    const reader = new FrameReader();
    const frames: Buffer[] = [];
    const timer = setTimeout(() => c.destroy(), REQUEST_READ_MS);
    c.on('data', (chunk: Buffer) => {
      if (frames.length >= REQUEST_FRAMES) return;
      try {
        frames.push(...reader.push(chunk));
      } catch {
        clearTimeout(timer);
        return void c.destroy();
      }
      if (frames.length < REQUEST_FRAMES) return;
      clearTimeout(timer);
      this.o.serve(this.call(c, frames));
    });
    c.on('end', () => {
      if (frames.length < REQUEST_FRAMES) {
        clearTimeout(timer);
        c.destroy();
      }
    });
  }

  private call(c: net.Socket, frames: readonly Buffer[]): Call {
    const deny = (reason: DenyReason, why: string) => this.deny(c, reason, why);
    return {
      kind: requestKind(frames[0]!),
      frames,
      deny,
      decode: (decode) => {
        let req;
        try {
          req = decode(frames);
        } catch (err) {
          return void deny('protocol', (err as Error).message);
        }
        if (req.netns !== this.o.netns)
          return void deny('netns', `request from network namespace ${req.netns}, the agent is in ${this.o.netns}`);
        return req;
      },
      reply: (exitCode, stdout) => {
        if (!c.destroyed) c.end(encodeReply(exitCode, stdout));
      },
      drop: () => c.destroy(),
    };
  }
}
