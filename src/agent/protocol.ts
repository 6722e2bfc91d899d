/**
 * The wire format between the CNI shim (native/cni_shim.c) and the agent:
 * frames of a little-endian u32 length + bytes.
 *
 *   agent -> shim   hello    "tsnet-agent/1 DEV INO"  (its network namespace) | "deny REASON"
 *   shim  -> agent  request  "tsnet-cni/1\0PLUGIN\0DEV INO\0DEADLINE_MS\0"
 *                            then the environment ("KEY=VALUE\0" ...), then stdin
 *   agent -> shim   reply    u32 exit status + stdout  | "deny REASON" (refused before acting)
 *
 * DEV INO is (st_dev, st_ino) of /proc/self/ns/net: the identity of a network
 * namespace, equal for two processes exactly when they share it.
 */
/** Where the agent listens and the shim connects unless told otherwise. */
export { DEFAULT_SOCKET } from '../cni/defaults';
/** Where the agent serves Prometheus metrics unless told otherwise (loopback only). */
export const DEFAULT_METRICS = '127.0.0.1:9470';
export const HELLO = 'tsnet-agent/1';
export const REQUEST = 'tsnet-cni/1';
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
