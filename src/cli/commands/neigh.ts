/** `tsnet neigh ...` (ip neigh) and `tsnet fdb ...` (bridge fdb ... self): static entries, as a vxlan peer needs. */
import type { Command } from 'commander';
import * as link from '../../link';
import * as neigh from '../../neigh';
import type { Cli } from '../context';
import { printRows } from '../output';
import { target } from '../target';

async function names(cli: Cli): Promise<Map<number, string>> {
  return new Map((await link.list(target(cli))).map((l) => [l.index, l.name]));
}

export function register(program: Command, cli: Cli): void {
  const n = program.command('neigh').description('neighbour entries, the ARP and NDP caches (ip neigh)');
  n.command('ls')
    .alias('list')
    .description('neighbour entries')
    .option('--dev <if>')
    .action(async (o: { dev?: string }) => {
      const dev = await names(cli);
      const rows = (await neigh.list(target(cli), o.dev ? { dev: o.dev } : {})).map((e) => ({
        ...e,
        dev: dev.get(e.index),
      }));
      await printRows(rows, cli.json(), ['address', 'lladdr', 'dev', 'state'], (e) => ({
        ...e,
        state: e.state.join(','),
      }));
    });
  n.command('replace <ip>')
    .alias('add')
    .description('add or replace a permanent entry (ip neigh replace IP lladdr MAC dev DEV nud permanent)')
    .requiredOption('--lladdr <mac>')
    .requiredOption('--dev <if>')
    .action(async (ip: string, o: { lladdr: string; dev: string }) => {
      await neigh.replace(target(cli), { dev: o.dev, address: ip, lladdr: o.lladdr });
    });
  n.command('del <ip>')
    .description('delete an entry (missing: no-op)')
    .requiredOption('--dev <if>')
    .action(async (ip: string, o: { dev: string }) => {
      await neigh.del(target(cli), o.dev, ip);
    });

  const f = program
    .command('fdb')
    .description("a device's own forwarding entries: MAC -> remote VTEP (bridge fdb ... self)");
  f.command('ls')
    .alias('list')
    .description('FDB entries')
    .option('--dev <if>')
    .action(async (o: { dev?: string }) => {
      const dev = await names(cli);
      const rows = (await neigh.fdb.list(target(cli), o.dev ? { dev: o.dev } : {})).map((e) => ({
        ...e,
        dev: dev.get(e.index),
      }));
      await printRows(rows, cli.json(), ['mac', 'dst', 'dev', 'self', 'permanent'], (e) => e);
    });
  f.command('replace <mac>')
    .alias('add')
    .description('add or replace an entry (bridge fdb replace MAC dev DEV dst IP self permanent)')
    .requiredOption('--dev <if>')
    .requiredOption('--dst <ip>', 'the remote VTEP')
    .action(async (mac: string, o: { dev: string; dst: string }) => {
      await neigh.fdb.replace(target(cli), { dev: o.dev, mac, dst: o.dst });
    });
  f.command('del <mac>')
    .description('delete an entry (missing: no-op)')
    .requiredOption('--dev <if>')
    .requiredOption('--dst <ip>')
    .action(async (mac: string, o: { dev: string; dst: string }) => {
      await neigh.fdb.del(target(cli), { dev: o.dev, mac, dst: o.dst });
    });
}
