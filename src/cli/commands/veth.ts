/** `tsnet veth add|del|ls`: veth pairs, the peer created directly in its namespace. */
import type { Command } from 'commander';
import * as netns from '../../netns';
import * as veth from '../../veth';
import type { Cli } from '../context';
import { int } from '../options';
import { printRows } from '../output';
import { target } from '../target';

/** A peer's namespace as `veth ls` shows it: its name, else a pid inside it, else its nsid. */
const where = (n: veth.PeerNamespace) =>
  n.same
    ? '(same)'
    : (n.name ?? (n.pid !== undefined ? `pid ${n.pid}` : n.nsid !== undefined ? `nsid ${n.nsid}` : '?'));

export function register(program: Command, cli: Cli): void {
  const vethCmd = program.command('veth').description('veth pairs');
  vethCmd
    .command('add <name> <peer>')
    .description('create a veth pair, the peer directly inside --peer-netns')
    .option('--peer-netns <ns>', 'namespace for the peer (name, pid or path)')
    .option('--master <bridge>', 'attach this end to a bridge')
    .option('--address <cidr>')
    .option('--peer-address <cidr>')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .action(
      async (
        name: string,
        peer: string,
        o: { peerNetns?: string; master?: string; address?: string; peerAddress?: string; mtu?: number },
      ) => {
        const h = target(cli);
        const peerNs = o.peerNetns ? netns.resolve(o.peerNetns) : undefined;
        try {
          const opts: veth.VethOptions = { existOk: true };
          if (peerNs) opts.peerNetns = peerNs;
          if (o.master) opts.master = o.master;
          if (o.address) opts.address = o.address;
          if (o.peerAddress) opts.peerAddress = o.peerAddress;
          if (o.mtu !== undefined) opts.mtu = o.mtu;
          await veth.add(h, name, peer, opts);
        } finally {
          peerNs?.close();
        }
      },
    );
  vethCmd
    .command('del <name>')
    .description('delete a veth pair by either end (missing: no-op)')
    .action(async (name: string) => {
      await veth.del(target(cli), name);
    });
  vethCmd
    .command('ls')
    .alias('list')
    .description('each veth with its peer: name, ifindex and namespace')
    .action(async () => {
      const pairs = await veth.list(target(cli));
      await printRows(pairs, cli.json(), ['name', 'state', 'master', 'peer', 'peer-ifindex', 'peer-netns'], (p) => ({
        name: p.name,
        state: p.up ? 'up' : 'down',
        master: p.master,
        peer: p.peer.name,
        'peer-ifindex': p.peer.index,
        'peer-netns': where(p.peer.netns),
      }));
    });
}
