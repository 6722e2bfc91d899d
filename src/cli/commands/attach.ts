/** `tsnet attach`, `tsnet detach`: a namespace on a bridge, as Docker puts a container on docker0. */
import type { Command } from 'commander';
import { attach, detach, type AttachOptions } from '../../attach';
import * as netns from '../../netns';
import type { Cli } from '../context';
import { int } from '../options';
import { print } from '../output';
import { target } from '../target';

export function register(program: Command, cli: Cli): void {
  program
    .command('attach <ns>')
    .description('put a namespace on a bridge as Docker does: veth, eth0 inside, address, lo up, default route')
    .requiredOption('--bridge <br>')
    .requiredOption('--address <cidr>')
    .option('--gateway <ip>', 'default: the bridge address in the same subnet')
    .option('--ifname <name>', 'name inside', 'eth0')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--hairpin', 'hairpin mode on the bridge port')
    .action(
      async (
        ref: string,
        o: { bridge: string; address: string; gateway?: string; ifname: string; mtu?: number; hairpin?: boolean },
      ) => {
        const c = netns.resolve(ref);
        try {
          const opts: AttachOptions = { bridge: o.bridge, address: o.address, ifname: o.ifname };
          if (o.gateway) opts.gateway = o.gateway;
          if (o.mtu !== undefined) opts.mtu = o.mtu;
          if (o.hairpin) opts.hairpin = true;
          const a = await attach(target(cli), c, opts);
          print(
            a,
            cli.json(),
            () =>
              `${ref}: ${a.ifname} ${a.address}${a.gateway ? ` via ${a.gateway}` : ''}, host end ${a.hostIfname} on ${o.bridge}`,
          );
        } finally {
          c.close();
        }
      },
    );
  program
    .command('detach <ns>')
    .description('remove what attach made (missing: no-op)')
    .option('--ifname <name>', 'name inside', 'eth0')
    .action(async (ref: string, o: { ifname: string }) => {
      const c = netns.resolve(ref);
      try {
        await detach(c, o.ifname, target(cli));
      } finally {
        c.close();
      }
    });
}
