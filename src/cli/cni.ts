/** CLI for `tsnet cni`: installing the plugin executables. */
import { Command } from 'commander';
import { DEFAULT_BIN_DIR, DEFAULT_SOCKET, DEFAULT_TIMEOUT_MS } from '../cni/defaults';
import { invalid } from '../errors';

export function registerCni(program: Command, ctx: { stateDir(): string | undefined }): void {
  const cni = program.command('cni').description('the CNI plugins tsnet-bridge and tsnet-ipam');
  cni
    .command('install')
    .description(`install tsnet-bridge and tsnet-ipam into the CNI bin dir (default ${DEFAULT_BIN_DIR}); with --conf-dir also an example conflist`)
    .option('--bin-dir <dir>', 'where runtimes look for plugins', DEFAULT_BIN_DIR)
    .option('--conf-dir <dir>', 'also write 10-tsnet.conflist here (e.g. /etc/cni/net.d)')
    .option('--force', 'overwrite an existing example conflist')
    .option('--socket <path>', 'the agent socket the plugins try first ("" = always standalone)', DEFAULT_SOCKET)
    .option('--timeout <ms>', 'how long a call through the agent may take before it fails with code 11', String(DEFAULT_TIMEOUT_MS))
    .action(async (o: { binDir: string; confDir?: string; force?: boolean; socket: string; timeout: string }) => {
      if (!/^[1-9]\d*$/.test(o.timeout)) throw invalid(`--timeout must be a positive number of milliseconds, got ${JSON.stringify(o.timeout)}`);
      // The global --state-dir, written into the shim's settings: every call, standalone or through the agent, uses it.
      const stateDir = ctx.stateDir();
      const r = (await import('../cni/install')).install({ ...o, timeoutMs: Number(o.timeout), ...(stateDir !== undefined ? { stateDir } : {}) });
      for (const b of r.binaries) process.stdout.write(`installed ${b}\n`);
      if (r.conflist) process.stdout.write(`wrote ${r.conflist}\n`);
    });
}
