/** Running the sanctioned netfilter binaries (iptables-restore/-save, nft) inside a namespace: argument arrays and stdin, never a shell. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TsnetError, type TsnetCode } from '../errors';
import type { NetNs } from '../netns';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The system's own binary for a netfilter tool, looked up in the sbin/bin
 * directories before $PATH: under `npx`, node_modules/.bin comes first in PATH
 * and holds an unrelated `nft` (@vercel/nft), and a CNI runtime may call us
 * with no PATH at all.
 */
const SYSTEM_DIRS = ['/usr/sbin', '/sbin', '/usr/local/sbin', '/usr/bin', '/bin', '/usr/local/bin'];
const resolved = new Map<string, string>();
export function systemTool(name: string): string {
  let found = resolved.get(name);
  if (!found) {
    found = name;
    for (const dir of SYSTEM_DIRS) {
      const p = path.join(dir, name);
      try {
        fs.accessSync(p, fs.constants.X_OK);
        found = p;
        break;
      } catch {
        /* next */
      }
    }
    resolved.set(name, found);
  }
  return found;
}

export interface ExecOptions {
  timeoutMs?: number;
  /**
   * An fd the child keeps open (as its fd 3) while it runs: the caller's
   * flock. A tool still applying rules when its caller is killed then keeps
   * the lock until it is done, so the next holder sees its changes instead of
   * racing them.
   */
  holdFd?: number;
}

/** The engine's lock as it is held at the moment (no fd between rounds): what a backend's tools keep open while they run. */
export interface HeldLock {
  fd?: number;
}

/** What a tool reads on stdin: a string, or pieces written as they come (a large payload, while the tool already parses). */
export type Input = string | Iterable<string>;

/** Writes `input` to the child's stdin, piece by piece with backpressure, then closes it; stops when the child is gone. */
async function feed(
  stdin: NodeJS.WritableStream & { destroyed?: boolean },
  input: Input,
  gone: () => boolean,
): Promise<void> {
  if (typeof input === 'string') {
    stdin.end(input);
    return;
  }
  for (const piece of input) {
    if (gone()) return;
    if (!stdin.write(piece)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          stdin.off('drain', done);
          stdin.off('close', done);
          resolve();
        };
        stdin.on('drain', done);
        stdin.on('close', done);
      });
    }
  }
  if (!gone()) stdin.end();
}

/** Runs `cmd args` inside `ns`, feeding `input` on stdin; resolves with the outcome (never rejects on a non-zero exit). */
export function execIn(
  ns: NetNs,
  cmd: string,
  args: readonly string[],
  input: Input = '',
  o: ExecOptions = {},
): Promise<ExecResult> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = ns.spawn(systemTool(cmd), args, {
      stdio: ['pipe', 'pipe', 'pipe', ...(o.holdFd === undefined ? [] : [o.holdFd])],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(
        new TsnetError(`cannot run ${cmd} in ${ns.label}: ${e.message}`, {
          code: (e as { code?: TsnetCode }).code ?? 'ENOENT', // spawn's errors are errno names
        }),
      );
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
      });
    });
    child.stdin!.on('error', () => undefined); // EPIPE when the tool exits early; its exit code says why
    let closed = false;
    child.once('close', () => {
      closed = true;
    });
    void feed(child.stdin!, input, () => closed);
  });
}

/** Like execIn, but a non-zero exit becomes a one-line TsnetError naming the tool and namespace. */
export async function mustExec(
  ns: NetNs,
  what: string,
  cmd: string,
  args: readonly string[],
  input: Input = '',
  o: ExecOptions = {},
): Promise<string> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  const r = await execIn(ns, cmd, args, input, o);
  if (r.code !== 0) {
    const first =
      r.stderr.trim().split('\n').filter(Boolean).slice(0, 2).join('; ') ||
      (r.code === 128 ? `killed after ${timeoutMs / 1000} s` : `exit ${r.code}`);
    throw new TsnetError(`${what} in ${ns.label}: ${cmd} failed: ${first}`, { code: 'EIO' });
  }
  return r.stdout;
}

/** A full sync of a kube-proxy-sized table through iptables-nft-restore takes minutes (bench/nat.ts). */
export const APPLY_TIMEOUT_MS = 10 * 60_000;
