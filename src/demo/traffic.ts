/** Sending real traffic between namespaces, through peer.js children started inside them. */
import type { ChildProcess } from 'node:child_process';
import type { NetNs } from '../netns';
import { builtScript } from '../native';

const PEER = builtScript('demo/peer.js');

export type Proto = 'tcp' | 'udp' | 'http';

export interface Server {
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts a server inside `ns` answering `name`; resolves once it listens. */
export function serve(ns: NetNs, proto: Proto, host: string, port: number, name: string): Promise<Server> {
  const child = ns.spawn(process.execPath, [PEER, 'serve', proto, host, String(port), name], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.stdin?.end();
      child.kill('SIGTERM');
    });
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (d) => (err += d));
    child.stdout?.once('data', () => resolve({ child, stop }));
    child.once('exit', (code) =>
      reject(new Error(`${proto} server ${host}:${port} in ${ns.label} exited (${code}): ${err.trim()}`)),
    );
  });
}

export interface RequestResult {
  ok: number;
  fail: number;
  replies: Record<string, number>;
  errors: string[];
  /** How long the requests took, measured by the client (its own start-up left out). */
  ms: number;
}

/** Makes `count` requests from inside `ns`; never rejects for network failures (they are counted). */
export function request(
  ns: NetNs,
  proto: Proto,
  host: string,
  port: number,
  opts: { count?: number; timeoutMs?: number; concurrency?: number; sourcePort?: number } = {},
): Promise<RequestResult> {
  const args = [
    PEER,
    'request',
    proto,
    host,
    String(port),
    String(opts.count ?? 1),
    String(opts.timeoutMs ?? 2000),
    String(opts.concurrency ?? 1),
  ];
  if (opts.sourcePort) args.push(String(opts.sourcePort));
  const child = ns.spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout?.on('data', (d) => (out += d));
    child.stderr?.on('data', (d) => (err += d));
    child.once('close', (code) => {
      // 'close', not 'exit': stdout may still be unread at exit
      try {
        resolve(JSON.parse(out) as RequestResult);
      } catch {
        reject(new Error(`request client in ${ns.label} exited (${code}): ${err.trim() || out.trim()}`));
      }
    });
  });
}
