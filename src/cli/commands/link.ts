/** `tsnet link ls|set|del`: links of any kind (ip link). */
import type { Command } from 'commander';
import * as link from '../../link';
import type { Cli } from '../context';
import { int } from '../options';
import { printRows } from '../output';
import { target } from '../target';

export function register(program: Command, cli: Cli): void {
  const linkCmd = program.command('link').description('links of any kind (ip link)');
  linkCmd
    .command('ls')
    .alias('list')
    .description('list links with kind, master and peer')
    .action(async () => {
      const links = await link.list(target(cli));
      const names = new Map(links.map((l) => [l.index, l.name]));
      await printRows(links, cli.json(), ['index', 'name', 'kind', 'state', 'mtu', 'mac', 'masterName'], (l) => ({
        ...l,
        state: l.up ? 'up' : 'down',
        masterName: l.master === undefined ? undefined : names.get(l.master),
      }));
    });
  linkCmd
    .command('set <dev>')
    .description('set state, name, mtu, mac, master')
    .option('--up')
    .option('--down')
    .option('--name <name>')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--mac <mac>')
    .option('--master <bridge>')
    .option('--nomaster')
    .action(
      async (
        dev: string,
        o: {
          up?: boolean;
          down?: boolean;
          name?: string;
          mtu?: number;
          mac?: string;
          master?: string;
          nomaster?: boolean;
        },
      ) => {
        const h = target(cli);
        const change: link.LinkChange = {};
        if (o.up || o.down) change.up = !!o.up;
        if (o.name) change.name = o.name;
        if (o.mtu !== undefined) change.mtu = o.mtu;
        if (o.mac) change.mac = o.mac;
        if (o.master) change.master = (await link.mustGet(h, o.master)).index;
        if (o.nomaster) change.master = null;
        await link.set(h, dev, change);
      },
    );
  linkCmd
    .command('del <dev>')
    .description('delete a link (missing: no-op)')
    .action(async (dev: string) => {
      await link.del(target(cli), dev);
    });
}
