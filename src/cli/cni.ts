/** CLI for `tsnet cni`: installing the plugin executables. */
import { Command } from 'commander';
import { DEFAULT_BIN_DIR, install } from '../cni/install';

export function registerCni(program: Command): void {
  const cni = program.command('cni').description('the CNI plugins tsnet-bridge and tsnet-ipam');
  cni.command('install')
    .description(`install tsnet-bridge and tsnet-ipam into the CNI bin dir (default ${DEFAULT_BIN_DIR}); with --conf-dir also an example conflist`)
    .option('--bin-dir <dir>', 'where runtimes look for plugins', DEFAULT_BIN_DIR)
    .option('--conf-dir <dir>', 'also write 10-tsnet.conflist here (e.g. /etc/cni/net.d)')
    .option('--force', 'overwrite an existing example conflist')
    .action((o: { binDir: string; confDir?: string; force?: boolean }) => {
      const r = install(o);
      for (const b of r.binaries) process.stdout.write(`installed ${b}\n`);
      if (r.conflist) process.stdout.write(`wrote ${r.conflist}\n`);
    });
}
