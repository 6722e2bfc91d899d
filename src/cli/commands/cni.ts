/** `tsnet cni install`: the CNI executables tsnet-bridge and tsnet-ipam. */
import type { Command } from 'commander';
import { DEFAULT_BIN_DIR, DEFAULT_SOCKET, DEFAULT_TIMEOUT_MS } from '../../cni/defaults';
import { install } from '../../cni/install';
import type { Cli } from '../context';
import { int } from '../options';

export function register(program: Command, cli: Cli): void {
  const cni = program.command('cni').description('the CNI plugins tsnet-bridge and tsnet-ipam');
  cni
    .command('install')
    .description(
      `install tsnet-bridge and tsnet-ipam into the CNI bin dir (default ${DEFAULT_BIN_DIR}); with --conf-dir also an example conflist`,
    )
    .option('--bin-dir <dir>', 'where runtimes look for plugins', DEFAULT_BIN_DIR)
    .option('--conf-dir <dir>', 'also write 10-tsnet.conflist here (e.g. /etc/cni/net.d)')
    .option('--force', 'overwrite an existing example conflist')
    .option('--socket <path>', 'the agent socket the plugins try first ("" = always standalone)', DEFAULT_SOCKET)
    .option(
      '--timeout <ms>',
      'how long a call through the agent may take before it fails with code 11',
      int('--timeout', { min: 1 }),
      DEFAULT_TIMEOUT_MS,
    )
    .action((o: { binDir: string; confDir?: string; force?: boolean; socket: string; timeout: number }) => {
      // The global --state-dir, written into the shim's settings: every call, standalone or through the agent, uses it.
      const stateDir = cli.stateDir();
      const r = install({ ...o, timeoutMs: o.timeout, ...(stateDir !== undefined ? { stateDir } : {}) });
      for (const b of r.binaries) process.stdout.write(`installed ${b}\n`);
      if (r.conflist) process.stdout.write(`wrote ${r.conflist}\n`);
    });
}
