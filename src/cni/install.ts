/**
 * `tsnet cni install`: puts the plugin executables where runtimes look
 * (/opt/cni/bin) and, optionally, an example network into /etc/cni/net.d.
 * Both executables are the native shim (native/cni_shim.c): it hands each
 * call to the agent (`tsnet agent`) when one serves this network namespace,
 * and otherwise runs the standalone plugin (node + dist/src/cni/main.js).
 * The shim's settings go to tsnet-cni.conf beside it, with node and the
 * plugin named by absolute path: a runtime executes plugins with its own
 * environment, so nothing may depend on PATH or the working directory. Every
 * file is written under a temporary name and renamed, so a runtime never
 * runs half a file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PLUGINS } from './plugin';
import { invalid } from '../errors';
import { CNI_ENTRY, SHIM_PATH } from '../native';
import { writeFileAtomic } from '../state';
import {
  DEFAULT_BIN_DIR,
  DEFAULT_CONF_DIR,
  DEFAULT_SOCKET,
  DEFAULT_TIMEOUT_MS,
  EXAMPLE_CONFLIST,
  MAX_TIMEOUT_MS,
  SHIM_CONF,
} from './defaults';

export { DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_TIMEOUT_MS, EXAMPLE_CONFLIST, MAX_TIMEOUT_MS, SHIM_CONF };

export interface ShimSettings {
  /** The agent's socket; '' = never use an agent. */
  socket: string;
  /** tsnet's state directory for every call (TSNET_STATE_DIR unless the runtime sets it), so standalone and agent share one; '' = the default. */
  stateDir: string;
  node: string;
  entry: string;
  timeoutMs: number;
}

/** tsnet-cni.conf: one KEY=VALUE per line, read by the shim. */
export function shimConf(s: ShimSettings): string {
  for (const [k, v] of Object.entries(s)) {
    if (/[\r\n]/.test(String(v))) throw invalid(`${k} must not contain a line break`);
  }
  if (s.socket && Buffer.byteLength(s.socket) > 107)
    throw invalid(`socket path ${s.socket} is longer than a unix socket address allows (107 bytes)`);
  if (s.socket && !path.isAbsolute(s.socket)) throw invalid(`socket path ${s.socket} must be absolute`);
  if (s.stateDir && !path.isAbsolute(s.stateDir)) throw invalid(`state directory ${s.stateDir} must be absolute`);
  if (!Number.isSafeInteger(s.timeoutMs) || s.timeoutMs <= 0 || s.timeoutMs > MAX_TIMEOUT_MS)
    throw invalid(`timeout ${s.timeoutMs} ms must be between 1 and ${MAX_TIMEOUT_MS} (a day)`);
  return `# tsnet's CNI shim settings, written by \`tsnet cni install\`.\nsocket=${s.socket}\nstate_dir=${s.stateDir}\nnode=${s.node}\nentry=${s.entry}\ntimeout_ms=${s.timeoutMs}\n`;
}

/** An example network: a bridge with gateway, masquerade, port mappings, tsnet-ipam. */
export function exampleConflist(o: { name?: string; bridge?: string; subnet?: string } = {}): object {
  return {
    cniVersion: '1.1.0',
    name: o.name ?? 'tsnet',
    plugins: [
      {
        type: 'tsnet-bridge',
        bridge: o.bridge ?? 'tsnet0',
        isGateway: true,
        isDefaultGateway: true,
        ipMasq: true,
        hairpinMode: true,
        capabilities: { portMappings: true, ips: true, mac: true, mtu: true },
        ipam: {
          type: 'tsnet-ipam',
          ranges: [[{ subnet: o.subnet ?? '10.89.0.0/24' }]],
          routes: [{ dst: '0.0.0.0/0' }],
        },
      },
    ],
  };
}

export interface InstallResult {
  binaries: string[];
  conflist?: string;
}

export function install(
  o: {
    binDir?: string;
    confDir?: string;
    force?: boolean;
    socket?: string;
    stateDir?: string;
    timeoutMs?: number;
  } = {},
): InstallResult {
  const binDir = path.resolve(o.binDir ?? DEFAULT_BIN_DIR);
  const entry = CNI_ENTRY;
  if (!fs.existsSync(entry)) throw invalid(`${entry} is missing: build tsnet first (npm run build)`);
  if (!fs.existsSync(SHIM_PATH))
    throw invalid(`${SHIM_PATH} is missing: build the native part first (npm ci, or npm rebuild)`);
  const settings = shimConf({
    socket: o.socket ?? DEFAULT_SOCKET,
    stateDir: o.stateDir ?? '',
    node: process.execPath,
    entry,
    timeoutMs: o.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  });
  fs.mkdirSync(binDir, { recursive: true, mode: 0o755 });
  // Settings first: a shim never starts without them.
  writeFileAtomic(path.join(binDir, SHIM_CONF), settings, 0o644);
  const shim = fs.readFileSync(SHIM_PATH);
  const binaries = PLUGINS.map((p) => {
    const file = path.join(binDir, p);
    writeFileAtomic(file, shim, 0o755);
    return file;
  });
  const out: InstallResult = { binaries };
  if (o.confDir !== undefined) {
    const confDir = path.resolve(o.confDir);
    fs.mkdirSync(confDir, { recursive: true, mode: 0o755 });
    const file = path.join(confDir, EXAMPLE_CONFLIST);
    if (fs.existsSync(file) && !o.force) throw invalid(`${file} exists: remove it or pass --force to overwrite`);
    writeFileAtomic(file, `${JSON.stringify(exampleConflist(), null, 2)}\n`, 0o644);
    out.conflist = file;
  }
  return out;
}
