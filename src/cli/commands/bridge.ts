/** `tsnet bridge add|del|ls|port`: Linux bridges (ip link type bridge, brctl). */
import type { Command } from 'commander';
import * as bridge from '../../bridge';
import { invalid } from '../../errors';
import type { Cli } from '../context';
import { collect, int } from '../options';
import { printRows } from '../output';
import { target } from '../target';

export function register(program: Command, cli: Cli): void {
  const brCmd = program.command('bridge').description('Linux bridges (ip link type bridge, brctl)');
  brCmd
    .command('add <name>')
    .description('create the bridge, or bring an existing one to these options')
    .option('--address <cidr>', 'gateway address on the bridge (repeatable)', collect)
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--vlan-filtering', 'enable VLAN filtering')
    .option('--stp', 'enable spanning tree (off by default)')
    .action(async (name: string, o: { address?: string[]; mtu?: number; vlanFiltering?: boolean; stp?: boolean }) => {
      const opts: bridge.BridgeOptions = { stp: !!o.stp };
      if (o.address) opts.addresses = o.address;
      if (o.mtu !== undefined) opts.mtu = o.mtu;
      if (o.vlanFiltering) opts.vlanFiltering = true;
      await bridge.ensure(target(cli), name, opts);
    });
  brCmd
    .command('del <name>')
    .description('delete the bridge (missing: no-op)')
    .action(async (name: string) => {
      await bridge.del(target(cli), name);
    });
  brCmd
    .command('ls')
    .alias('list')
    .description('bridges with their ports')
    .action(async () => {
      const brs = await bridge.list(target(cli));
      await printRows(brs, cli.json(), ['name', 'state', 'mac', 'mtu', 'stp', 'addresses', 'ports'], (b) => ({
        ...b,
        state: b.up ? 'up' : 'down',
        stp: b.stp ? 'on' : 'off',
        ports: b.ports.map((p) => p.name),
      }));
    });
  brCmd
    .command('port <bridge> <port>')
    .description('attach PORT to BRIDGE (ip link set PORT master BRIDGE)')
    .option('--hairpin <on|off>')
    .action(async (br: string, port: string, o: { hairpin?: string }) => {
      if (o.hairpin !== undefined && !['on', 'off'].includes(o.hairpin)) throw invalid('--hairpin takes on or off');
      await bridge.addPort(target(cli), br, port, o.hairpin === undefined ? {} : { hairpin: o.hairpin === 'on' });
    });
}
