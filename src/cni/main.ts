#!/usr/bin/env node
/**
 * The plugin executables: `tsnet-bridge` and `tsnet-ipam` (installed by
 * `tsnet cni install` as wrappers that run this file with the plugin name).
 * Reads the CNI environment and stdin, prints the result or the error JSON.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PLUGINS, invoke, type PluginName } from './plugin';

function readStdin(): string {
  try {
    return fs.readFileSync(0, 'utf8');
  } catch {
    return ''; // no stdin (a VERSION call from a shell)
  }
}

async function main(): Promise<void> {
  const name = (process.argv[2] ?? path.basename(process.argv[1] ?? '')) as PluginName;
  if (!PLUGINS.includes(name)) {
    process.stderr.write(
      `usage: main.js ${PLUGINS.join('|')} (a CNI plugin: run by a container runtime with CNI_COMMAND set)\n`,
    );
    process.exitCode = 2;
    return;
  }
  const r = await invoke(name, process.env, readStdin());
  process.stdout.write(r.stdout);
  process.exitCode = r.exitCode;
}

void main();
