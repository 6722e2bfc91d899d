/**
 * The wire format between the agent's clients (the CNI shim,
 * native/cni_shim.c, and the tsnet CLI) and the agent: frames of a
 * little-endian u32 length + bytes.
 *
 *   agent -> client  hello    "tsnet-agent/1 DEV INO"  (its network namespace) | "deny REASON"
 *   shim  -> agent   request  "tsnet-cni/1\0PLUGIN\0DEV INO\0DEADLINE_MS\0"
 *                             then the environment ("KEY=VALUE\0" ...), then stdin
 *   CLI   -> agent   request  "tsnet-nat/1\0DEV INO\0"
 *                             then the target (JSON NatTarget), then the changes (JSON NatChange[])
 *   agent -> client  reply    u32 exit status + stdout  | "deny REASON" (refused before acting)
 *                             (NAT: stdout is the SyncReport as JSON, or NatFailure when status is 1)
 *
 * DEV INO is (st_dev, st_ino) of /proc/self/ns/net: the identity of a network
 * namespace, equal for two processes exactly when they share it.
 */
import { isObject } from '../json';
import { readChange } from '../nat/change-json';

/** Where the agent listens and the shim connects unless told otherwise. */
export { DEFAULT_SOCKET } from '../cni/defaults';
/** Where the agent serves Prometheus metrics unless told otherwise (loopback only). */
export const DEFAULT_METRICS = '127.0.0.1:9470';
export const HELLO = 'tsnet-agent/1';
export const REQUEST = 'tsnet-cni/1';
export const NAT_REQUEST = 'tsnet-nat/1';
/** Larger frames are refused: a network config is kilobytes. */
export const MAX_FRAME = 64 << 20;

export function frame(payload: Buffer | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length);
  return Buffer.concat([head, body]);
}

/** Collects frames from a byte stream. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  /** Adds bytes; returns the frames now complete. Throws on an oversized frame. */
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Buffer[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len > MAX_FRAME) throw new Error(`frame of ${len} bytes is larger than ${MAX_FRAME}`);
      if (this.buf.length < 4 + len) break;
      out.push(this.buf.subarray(4, 4 + len));
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}

export interface Request {
  plugin: string;
  /** The caller's network namespace as the shim saw it ("DEV INO"). */
  netns: string;
  deadlineMs: number;
  env: Record<string, string>;
  stdin: string;
}

/** Which request the first frame opens. */
export function requestKind(head: Buffer): 'cni' | 'nat' | undefined {
  const proto = head.subarray(0, head.indexOf(0)).toString('utf8');
  return proto === REQUEST ? 'cni' : proto === NAT_REQUEST ? 'nat' : undefined;
}

/** The three frames of a request, decoded; throws on anything malformed. */
export function decodeRequest(frames: readonly Buffer[]): Request {
  const [head, env, stdin] = frames;
  if (!head || !env || !stdin) throw new Error('incomplete request');
  const fields = head.toString('utf8').split('\0');
  const [proto, plugin, netns, deadline] = fields;
  if (proto !== REQUEST || fields.length !== 5 || fields[4] !== '') throw new Error(`not a ${REQUEST} request`);
  if (!/^\d+ \d+$/.test(netns!)) throw new Error(`bad namespace identity ${JSON.stringify(netns)}`);
  const deadlineMs = Number(deadline);
  if (!Number.isSafeInteger(deadlineMs) || deadlineMs <= 0) throw new Error(`bad deadline ${JSON.stringify(deadline)}`);
  const vars: Record<string, string> = {};
  for (const kv of env.toString('utf8').split('\0')) {
    const eq = kv.indexOf('=');
    if (eq > 0) vars[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return { plugin: plugin!, netns: netns!, deadlineMs, env: vars, stdin: stdin.toString('utf8') };
}

/** A request as the shim writes it (the tests' and benchmarks' own client uses this). */
export function encodeRequest(r: Request): Buffer {
  const env = Object.entries(r.env)
    .map(([k, v]) => `${k}=${v}\0`)
    .join('');
  return Buffer.concat([frame(`${REQUEST}\0${r.plugin}\0${r.netns}\0${r.deadlineMs}\0`), frame(env), frame(r.stdin)]);
}

export function encodeReply(exitCode: number, stdout: string): Buffer {
  const body = Buffer.alloc(4 + Buffer.byteLength(stdout));
  body.writeUInt32LE(exitCode >>> 0);
  body.write(stdout, 4);
  return frame(body);
}

export function decodeReply(f: Buffer): { exitCode: number; stdout: string } | { deny: string } {
  const text = f.toString('utf8');
  if (text.startsWith('deny ')) return { deny: text.slice(5) };
  if (f.length < 4) throw new Error('short reply');
  return { exitCode: f.readUInt32LE(0), stdout: f.subarray(4).toString('utf8') };
}

/** Where a NAT change applies: the engine's state directory, the namespace whose rules it writes, the backend choice. */
export interface NatTarget {
  /** Absolute: the agent's working directory is not the caller's. */
  stateDir: string;
  /** `--netns` as the caller gave it (name, pid or path) and the identity ("DEV INO") it resolved to there; absent: the caller's own namespace. */
  netns?: { ref: string; id: string };
  backend?: string;
}

export interface NatRequest {
  /** The caller's network namespace as it saw it ("DEV INO"). */
  netns: string;
  target: NatTarget;
  /** Each an object with a `kind` (`op` from an older CLI); which kinds exist, and each change's content, are checked where they are applied (nat/changes). */
  changes: { kind: string }[];
}

/**
 * Changes of the whole state (`service apply`): applied by the CLI itself,
 * refused by the agent. Sending them costs the set's bytes over the socket
 * and its validation twice, and what the agent holds in memory does not help
 * a change that replaces all of it (measured: 1.5 s through the agent against
 * 1.1 s in the CLI for 10,000 services). The agent reads the new state when
 * it next needs it.
 */
export const WHOLE_STATE: readonly string[] = ['replace-services', 'set-state'];

export function encodeNatRequest(r: NatRequest): Buffer {
  return Buffer.concat([
    frame(`${NAT_REQUEST}\0${r.netns}\0`),
    frame(JSON.stringify(r.target)),
    frame(JSON.stringify(r.changes)),
  ]);
}

/** The three frames of a NAT request, decoded; throws on anything malformed. */
export function decodeNatRequest(frames: readonly Buffer[]): NatRequest {
  const [head, target, changes] = frames;
  if (!head || !target || !changes) throw new Error('incomplete request');
  const fields = head.toString('utf8').split('\0');
  if (fields[0] !== NAT_REQUEST || fields.length !== 3 || fields[2] !== '')
    throw new Error(`not a ${NAT_REQUEST} request`);
  const netns = fields[1]!;
  if (!/^\d+ \d+$/.test(netns)) throw new Error(`bad namespace identity ${JSON.stringify(netns)}`);
  let t: unknown;
  let c: unknown;
  try {
    t = JSON.parse(target.toString('utf8'));
    c = JSON.parse(changes.toString('utf8'));
  } catch (err) {
    throw new Error(`request is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(t) || typeof t.stateDir !== 'string' || !t.stateDir.startsWith('/'))
    throw new Error('the target needs an absolute stateDir');
  if (t.backend !== undefined && typeof t.backend !== 'string') throw new Error('the target backend must be a string');
  const ns = t.netns;
  if (
    ns !== undefined &&
    !(
      isObject(ns) &&
      typeof ns.ref === 'string' &&
      ns.ref !== '' &&
      typeof ns.id === 'string' &&
      /^\d+ \d+$/.test(ns.id)
    )
  )
    throw new Error('the target namespace needs a ref and an id "DEV INO"');
  if (!Array.isArray(c) || !c.length) throw new Error('changes must be a non-empty array');
  const parsed = c.map((x) => {
    const change = readChange(x);
    if (!change) throw new Error(`not a change: ${JSON.stringify(x).slice(0, 80)}`);
    return change;
  });
  return { netns, target: t as unknown as NatTarget, changes: parsed };
}

/** A NAT change's failure as the agent sends it (status 1): enough for the CLI to raise the error it would have raised itself. */
export interface NatFailure {
  error: string;
  code?: string;
  /** A refusal by the kernel or a system call: without them, a kernel EINVAL would read as bad input (isInvalidInput). */
  errno?: number;
  syscall?: string;
}

/** What a NAT change failed with, for the reply (Node's negative errnos made positive, as errno(3) has them). */
export function encodeNatFailure(err: unknown): string {
  const e = (err ?? {}) as { message?: unknown; code?: unknown; errno?: unknown; syscall?: unknown };
  const out: NatFailure = { error: typeof e.message === 'string' ? e.message : String(err) };
  if (typeof e.code === 'string') out.code = e.code;
  if (typeof e.errno === 'number') out.errno = Math.abs(e.errno);
  if (typeof e.syscall === 'string') out.syscall = e.syscall;
  return JSON.stringify(out);
}

/** The failure a NAT reply carries (its body parsed); a field of the wrong type is left out. */
export function decodeNatFailure(body: unknown): Partial<NatFailure> {
  const f = isObject(body) ? body : {};
  const out: Partial<NatFailure> = {};
  if (typeof f.error === 'string') out.error = f.error;
  if (typeof f.code === 'string') out.code = f.code;
  if (typeof f.errno === 'number') out.errno = f.errno;
  if (typeof f.syscall === 'string') out.syscall = f.syscall;
  return out;
}
