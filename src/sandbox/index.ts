/**
 * A private network + mount namespace for tests, the demo and benchmarks:
 * `unshare --net --mount --propagation private`, then, inside, a tmpfs on
 * /run/netns (so named namespaces never reach the machine's own) and a fresh
 * sysfs (so /sys/class/net shows the sandbox). Nothing done inside can touch
 * the machine's interfaces, routes, sysctls or firewall; everything goes away
 * with the last process.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { exitStatus } from '../errno';
import { contextualize, TsnetError } from '../errors';
import { builtScript } from '../native';

export const SANDBOX_ENV = 'TSNET_SANDBOX';

export function inSandbox(): boolean {
  return process.env[SANDBOX_ENV] === '1';
}

export function requireRoot(what: string, uid: number | undefined = process.getuid?.()): void {
  if (uid !== undefined && uid !== 0) {
    throw new TsnetError(`${what} needs root (network namespaces, bind mounts): run it with sudo or as root`, {
      code: 'EPERM',
    });
  }
}

/** Runs `cmd args` inside a fresh sandbox and resolves with its exit code. */
export async function runInSandbox(
  cmd: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv } = {},
): Promise<number> {
  requireRoot('the tsnet sandbox');
  const inner = builtScript('sandbox/inner.js');
  const child = spawn(
    'unshare',
    ['--net', '--mount', '--propagation', 'private', '--', process.execPath, inner, cmd, ...args],
    {
      stdio: 'inherit',
      env: { ...process.env, ...opts.env },
    },
  );
  return new Promise((resolve, reject) => {
    child.on('error', (err) =>
      reject(contextualize('starting the sandbox with unshare(1) (is util-linux installed?)', err)),
    );
    child.on('exit', (code, signal) => resolve(exitStatus(code, signal)));
  });
}

/** Inside the fresh namespaces: private /run/netns and /sys, loopback up. */
export async function prepareInside(): Promise<void> {
  const { native } = await import('../native');
  const n = native();
  fs.mkdirSync('/run/netns', { recursive: true });
  n.mount('tmpfs', '/run/netns', 'tmpfs', 0, 'mode=755');
  n.mount('sysfs', '/sys', 'sysfs', 0);
  const { current } = await import('../netns');
  const link = await import('../link');
  await link.setUp(current(), 'lo');
  process.env[SANDBOX_ENV] = '1';
}
