/**
 * Executing another plugin (an IPAM plugin that is not tsnet-ipam), as the
 * reference bridge does through libcni's invoke: found by its type in
 * CNI_PATH, given the same environment with CNI_COMMAND set, the network
 * config on stdin; its stdout is the result or a CNI error.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CniError, CNI_ERR, invalidConfig } from './errors';
import { parseResult } from './version';
import type { CniCommand, CniEnv, Result } from './types';

/** How long a delegated plugin may take before the call fails (the runtime has its own deadline too). */
export const DELEGATE_TIMEOUT_MS = 60_000;

export function findPlugin(type: string, dirs: readonly string[]): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(type))
    throw invalidConfig(`invalid plugin type ${JSON.stringify(type)}: a file name in CNI_PATH`);
  for (const d of dirs) {
    const p = path.join(d, type);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next directory
    }
  }
  throw invalidConfig(`failed to find plugin "${type}" in path [${dirs.join(' ')}]`);
}

/** The environment a delegated plugin gets: the caller's (the runtime's, also when an agent serves the call), with the CNI variables of this call. */
function delegateEnv(env: CniEnv, command: CniCommand): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env.vars, CNI_COMMAND: command, CNI_PATH: env.path.join(':') };
  const set = (k: string, v: string | undefined) => {
    if (v === undefined) delete out[k];
    else out[k] = v;
  };
  set('CNI_CONTAINERID', env.containerId);
  set('CNI_NETNS', env.netns);
  set('CNI_IFNAME', env.ifname);
  set(
    'CNI_ARGS',
    Object.entries(env.args)
      .map(([k, v]) => `${k}=${v}`)
      .join(';') || undefined,
  );
  return out;
}

/** Runs plugin `type` with `command`; returns its parsed result for ADD, undefined otherwise. */
export function execPlugin(type: string, command: CniCommand, env: CniEnv, stdin: string): Promise<Result | undefined> {
  const file = findPlugin(type, env.path);
  return new Promise((resolve, reject) => {
    const child = spawn(file, [], { env: delegateEnv(env, command), stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), DELEGATE_TIMEOUT_MS);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new CniError(CNI_ERR.internal, `running ${file}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const text = Buffer.concat(out).toString('utf8');
      if (code !== 0) {
        let e: { code?: number; msg?: string; details?: string } = {};
        try {
          e = JSON.parse(text) as typeof e;
        } catch {
          // not a CNI error document
        }
        const why =
          e.msg ??
          (signal ? `killed by ${signal}` : Buffer.concat(err).toString('utf8').trim() || `exit status ${code}`);
        reject(
          new CniError(
            typeof e.code === 'number' ? e.code : CNI_ERR.internal,
            `${type} ${command}: ${why}`,
            e.details ?? '',
          ),
        );
        return;
      }
      if (command !== 'ADD') return resolve(undefined);
      try {
        resolve(parseResult(JSON.parse(text), `${type}'s result`));
      } catch (e) {
        reject(
          e instanceof CniError
            ? e
            : new CniError(CNI_ERR.decode, `${type} ADD printed an invalid result: ${(e as Error).message}`),
        );
      }
    });
    child.stdin.on('error', () => {
      /* the plugin may exit without reading */
    });
    child.stdin.end(stdin);
  });
}
