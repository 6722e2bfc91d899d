/**
 * The runtime environment of a CNI call (CNI_COMMAND, CNI_CONTAINERID,
 * CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH), checked the way libcni's skel
 * checks it: what a command needs must be there (error 4 names the variable),
 * and container ids and interface names must be safe to use in a file name.
 */
import { CniError, CNI_ERR, invalidEnv, reportInput } from './errors';
import { validateIfname } from '../link/ifname';
import type { CniCommand, CniEnv } from './types';

const COMMANDS: readonly CniCommand[] = ['ADD', 'DEL', 'CHECK', 'VERSION', 'GC', 'STATUS'];

const REQUIRED: Record<CniCommand, readonly string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  GC: ['CNI_PATH'],
  STATUS: ['CNI_PATH'],
  VERSION: [],
};

/** The spec's grammar for container ids and network names; also what keeps them out of path traversal. */
export const CNI_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

export function validateContainerId(id: string): void {
  if (!CNI_NAME_RE.test(id) || id.length > 256) {
    throw invalidEnv(
      `invalid CNI_CONTAINERID ${JSON.stringify(id)}: letters, digits, '_', '.' and '-', starting with a letter or digit`,
    );
  }
}

/** The kernel's interface name rules (link.validateIfname), reported as a bad CNI_IFNAME (error 4). */
export function validateIfnameEnv(name: string): void {
  try {
    validateIfname(name);
  } catch (err) {
    reportInput(CNI_ERR.invalidEnv, 'CNI_IFNAME', err);
  }
}

export function parseCniArgs(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const pair of text.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw invalidEnv(`invalid CNI_ARGS pair ${JSON.stringify(pair)}: expected KEY=VALUE;KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** The CNI environment of a call; `defaults.stateDir` applies when the caller sets no TSNET_STATE_DIR. */
export function parseEnv(env: NodeJS.ProcessEnv, defaults: { stateDir?: string } = {}): CniEnv {
  const command = env.CNI_COMMAND as CniCommand | undefined;
  if (!command)
    throw invalidEnv(
      'CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime (ADD, DEL, CHECK, VERSION, GC, STATUS)',
    );
  if (!COMMANDS.includes(command))
    throw invalidEnv(`unknown CNI_COMMAND ${JSON.stringify(command)}: expected one of ${COMMANDS.join(', ')}`);
  const missing = REQUIRED[command].filter((k) => env[k] === undefined || env[k] === '');
  if (missing.length) throw new CniError(CNI_ERR.invalidEnv, `required env variables [${missing.join(',')}] missing`);
  const out: CniEnv = {
    command,
    args: parseCniArgs(env.CNI_ARGS),
    path: (env.CNI_PATH ?? '').split(':').filter(Boolean),
    vars: env,
  };
  const stateDir = env.TSNET_STATE_DIR || defaults.stateDir;
  if (stateDir) out.stateDir = stateDir;
  if (env.CNI_CONTAINERID) {
    validateContainerId(env.CNI_CONTAINERID);
    out.containerId = env.CNI_CONTAINERID;
  }
  if (env.CNI_IFNAME) {
    validateIfnameEnv(env.CNI_IFNAME);
    out.ifname = env.CNI_IFNAME;
  }
  if (env.CNI_NETNS) out.netns = env.CNI_NETNS;
  return out;
}
