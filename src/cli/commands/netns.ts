/** `tsnet netns add|del|ls|exec`: named network namespaces, as `ip netns` keeps them. */
import type { Command } from 'commander';
import { exitStatus } from '../../errno';
import { hasCode } from '../../errors';
import * as netns from '../../netns';
import type { Cli } from '../context';
import { printRows } from '../output';

export function register(program: Command, cli: Cli): void {
  const nsCmd = program.command('netns').description('named network namespaces (ip netns)');
  nsCmd
    .command('add <name>')
    .description('create /run/netns/NAME (existing: no-op)')
    .action((name: string) => {
      netns.add(name, { existOk: true }).close();
    });
  nsCmd
    .command('del <name>')
    .description('delete /run/netns/NAME (missing: no-op)')
    .action((name: string) => {
      netns.del(name);
    });
  nsCmd
    .command('ls')
    .alias('list')
    .description('list named namespaces')
    .action(async () => {
      const rows = netns.list().map((name) => {
        let inode: number | undefined;
        try {
          const h = netns.open(name);
          inode = h.inode;
          h.close();
        } catch {
          /* a stale file: listed without an inode */
        }
        return { name, inode };
      });
      await printRows(rows, cli.json(), ['name', 'inode'], (r) => r);
    });
  nsCmd.enablePositionalOptions();
  nsCmd
    .command('exec <name> <cmd> [args...]')
    .description(
      'run CMD inside the namespace (ip netns exec); its exit status is ours, 128+N when it dies of signal N',
    )
    .passThroughOptions()
    .action(async (name: string, cmd: string, args: string[]) => {
      const h = netns.resolve(name);
      let child: ReturnType<typeof h.spawn>;
      try {
        child = h.spawn(cmd, args, { stdio: 'inherit' });
      } catch (err) {
        // As shells report a program they cannot run: 127 not found, 126 found but not runnable.
        if (!hasCode(err, 'ENOENT') && !hasCode(err, 'EACCES')) throw err;
        process.stderr.write(`tsnet: ${(err as Error).message}\n`);
        process.exitCode = hasCode(err, 'ENOENT') ? 127 : 126;
        return;
      } finally {
        h.close();
      }
      process.exitCode = await new Promise<number>((resolve) => {
        child.on('error', (err) => {
          process.stderr.write(`tsnet: cannot run ${cmd} in namespace ${name}: ${err.message}\n`);
          resolve(127);
        });
        child.on('exit', (code, sig) => resolve(exitStatus(code, sig)));
      });
    });
}
