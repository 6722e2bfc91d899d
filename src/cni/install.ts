/**
 * `tsnet cni install`: puts the plugin executables where runtimes look
 * (/opt/cni/bin) and, optionally, an example network into /etc/cni/net.d.
 * The executables are small sh wrappers naming node and the plugin by
 * absolute path: a runtime executes them with its own environment, so they
 * must not depend on PATH or the working directory. Each is written under a
 * temporary name and renamed, so a runtime never runs half a file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PLUGINS } from './plugin';
import { invalid } from '../errors';
import { writeFileAtomic } from '../state';

export const DEFAULT_BIN_DIR = '/opt/cni/bin';
export const DEFAULT_CONF_DIR = '/etc/cni/net.d';
export const EXAMPLE_CONFLIST = '10-tsnet.conflist';

const sq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export function wrapperScript(plugin: string, node = process.execPath, entry = path.join(__dirname, 'main.js')): string {
  return `#!/bin/sh\n# ${plugin}: tsnet's CNI plugin, installed by \`tsnet cni install\`.\nexec ${sq(node)} ${sq(entry)} ${plugin} "$@"\n`;
}

/** An example network: a bridge with gateway, masquerade, port mappings, tsnet-ipam. */
export function exampleConflist(o: { name?: string; bridge?: string; subnet?: string } = {}): object {
  return {
    cniVersion: '1.1.0',
    name: o.name ?? 'tsnet',
    plugins: [{
      type: 'tsnet-bridge',
      bridge: o.bridge ?? 'tsnet0',
      isGateway: true,
      isDefaultGateway: true,
      ipMasq: true,
      hairpinMode: true,
      capabilities: { portMappings: true, ips: true, mac: true, mtu: true },
      ipam: { type: 'tsnet-ipam', ranges: [[{ subnet: o.subnet ?? '10.89.0.0/24' }]], routes: [{ dst: '0.0.0.0/0' }] },
    }],
  };
}

export interface InstallResult {
  binaries: string[];
  conflist?: string;
}

export function install(o: { binDir?: string; confDir?: string; force?: boolean } = {}): InstallResult {
  const binDir = path.resolve(o.binDir ?? DEFAULT_BIN_DIR);
  const entry = path.join(__dirname, 'main.js');
  if (!fs.existsSync(entry)) throw invalid(`${entry} is missing: build tsnet first (npm run build)`);
  fs.mkdirSync(binDir, { recursive: true, mode: 0o755 });
  const binaries = PLUGINS.map((p) => {
    const file = path.join(binDir, p);
    writeFileAtomic(file, wrapperScript(p, process.execPath, entry), 0o755);
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
