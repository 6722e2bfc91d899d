/** `tsnet link ls|set|del`: links of any kind (ip link). */
import type { Command } from 'commander';
import { invalid } from '../../errors';
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
  registerAdd(linkCmd, cli);
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

/** `tsnet link add NAME --type vxlan ...`: the kinds with no command of their own. */
function registerAdd(linkCmd: Command, cli: Cli): void {
  linkCmd
    .command('add <name>')
    .description('create a vxlan device (ip link add NAME type vxlan id VNI dstport PORT local IP dev DEV nolearning)')
    .requiredOption('--type <kind>', 'vxlan (bridges and veth pairs have their own commands)')
    .requiredOption('--vni <n>', 'VXLAN network identifier', int('--vni', { min: 1, max: 0xffffff }))
    .option('--port <n>', 'UDP port (default 8472)', int('--port', { min: 1, max: 65535 }))
    .option('--local <ip>', 'source address of encapsulated packets')
    .option('--dev <if>', 'underlay device')
    .option('--learning', 'learn remote MACs from traffic (default: off, the FDB is programmed)')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--mac <mac>')
    .action(
      async (
        name: string,
        o: {
          type: string;
          vni: number;
          port?: number;
          local?: string;
          dev?: string;
          learning?: boolean;
          mtu?: number;
          mac?: string;
        },
      ) => {
        if (o.type !== 'vxlan')
          throw invalid(`link add --type ${o.type}: only vxlan here (see tsnet bridge, tsnet veth)`);
        const h = target(cli);
        const spec: link.LinkSpec = { kind: 'vxlan', name, vni: o.vni, learning: !!o.learning, up: true };
        if (o.port !== undefined) spec.port = o.port;
        if (o.local) spec.local = o.local;
        if (o.dev) spec.dev = (await link.mustGet(h, o.dev)).index;
        if (o.mtu !== undefined) spec.mtu = o.mtu;
        if (o.mac) spec.mac = o.mac;
        await link.add(h, spec);
      },
    );
}
