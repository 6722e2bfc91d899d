/**
 * A `tsnet agent` for a benchmark, serving the sandbox's own namespace on a
 * socket of its own: what the CLI's changes are handed to when one runs.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CLI } from '../test/harness/fixtures';

/** How long the agent may take to say it is ready. */
const READY_MS = 15_000;

/**
 * Runs `fn` with an agent on `stateDir`; returns what `fn` returned and how
 * many NAT changes the agent's log says it served (a CLI that fell back is
 * not counted), with the time each took inside the agent (the first, which
 * loads the table, left out).
 */
export async function withAgent<T>(
  stateDir: string,
  fn: (socket: string) => T,
): Promise<{ result: T; served: number; inside: number[]; log: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-agent-'));
  const socket = path.join(dir, 'agent.sock');
  const log = path.join(dir, 'log');
  const logFd = fs.openSync(log, 'w');
  const child = spawn(process.execPath, [CLI, '--state-dir', stateDir, 'agent', '--socket', socket, '--metrics', ''], {
    stdio: ['ignore', 'pipe', logFd],
  });
  fs.closeSync(logFd);
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      // An agent that never says it is ready is killed (by its pid) and the benchmark fails, rather than waiting forever.
      const timer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
        reject(
          new Error(`agent (pid ${child.pid}) not ready within ${READY_MS} ms: ${fs.readFileSync(log, 'utf8').trim()}`),
        );
      }, READY_MS);
      child.stdout!.on('data', (d) => {
        out += d;
        if (/^ready /m.test(out)) {
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`agent exited before it was ready: ${fs.readFileSync(log, 'utf8')}`));
      });
    });
    const result = fn(socket);
    const text = fs.readFileSync(log, 'utf8');
    const inside = [...text.matchAll(/^\S+ nat: served .*: ok in ([\d.]+) ms$/gm)].map((m) => Number(m[1]));
    return { result, served: inside.length, inside: inside.slice(1), log: text };
  } finally {
    child.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
