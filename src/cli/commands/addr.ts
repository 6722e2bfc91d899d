/** `tsnet addr add|del|ls`: IPv4 and IPv6 addresses (ip addr). */
import type { Command } from 'commander';
import * as addr from '../../addr';
import type { Cli } from '../context';
import { printRows } from '../output';
import { target } from '../target';

export function register(program: Command, cli: Cli): void {
  const addrCmd = program.command('addr').description('IPv4 and IPv6 addresses (ip addr)');
  addrCmd
    .command('add <cidr>')
    .description('add (or refresh) an address')
    .requiredOption('--dev <if>')
    .action(async (cidr: string, o: { dev: string }) => {
      await addr.replace(target(cli), cidr, o.dev, { noDad: true });
    });
  addrCmd
    .command('del <cidr>')
    .description('delete an address (missing: no-op)')
    .requiredOption('--dev <if>')
    .action(async (cidr: string, o: { dev: string }) => {
      await addr.del(target(cli), cidr, o.dev);
    });
  addrCmd
    .command('ls')
    .alias('list')
    .description('addresses, of one device or all')
    .option('--dev <if>')
    .option('-4', 'IPv4 only')
    .option('-6', 'IPv6 only')
    .action(async (o: { dev?: string; 4?: boolean; 6?: boolean }) => {
      const filter: { dev?: string; family?: 4 | 6 } = {};
      if (o.dev) filter.dev = o.dev;
      if (o[4]) filter.family = 4;
      if (o[6]) filter.family = 6;
      const list = await addr.list(target(cli), filter);
      await printRows(list, cli.json(), ['dev', 'cidr', 'scope'], (a) => a);
    });
}
