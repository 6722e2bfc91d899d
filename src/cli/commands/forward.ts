/** `tsnet forward TARGET LISTEN_PORT TARGET_PORT`, `forward ls|rm|restore`: named, reversible port forwards. */
import type { Command } from 'commander';
import { formatHostPort } from '../../addr/cidr';
import * as forward from '../../forward';
import type { Forward } from '../../nat/model';
import type { Cli } from '../context';
import { natChange, natEngine } from '../nat-engine';
import { print, printRows } from '../output';

/** Where a forward listens, as ls prints it: `*:3308`, `10.0.0.1:3308`, `[fd00::1]:3308`. */
const listenOf = (f: Forward) => formatHostPort(f.listen ?? '*', f.listenPort);
/** Its target: `10.0.0.9:3309`, or the name as given with what it resolved to: `mysql (10.0.0.9):3309`, `db ([fd00::9]):3309`. */
const targetOf = (f: Forward) =>
  f.target === f.targetIp
    ? formatHostPort(f.targetIp, f.targetPort)
    : `${f.target} (${f.targetIp.includes(':') ? `[${f.targetIp}]` : f.targetIp}):${f.targetPort}`;

export function register(program: Command, cli: Cli): void {
  const fwd = program
    .command('forward')
    .description("named, reversible port forwards: connections to this host's LISTEN_PORT go to TARGET:TARGET_PORT");
  addCommand(fwd, cli);
  lsCommand(fwd, cli);
  rmCommand(fwd, cli);
  restoreCommand(fwd, cli);
}

function addCommand(fwd: Command, cli: Cli): void {
  fwd
    .command('add <target> <listen-port> <target-port>', { isDefault: true })
    .description('forward LISTEN_PORT to TARGET:TARGET_PORT (tsnet forward mysql 3308 3309); the same again: no-op')
    .option('--name <name>', "the forward's name (default: TARGET)")
    .option('--listen <ip>', 'only connections to this local address (default: any local address, 127.0.0.1 included)')
    .option('--proto <proto>', 'tcp or udp', 'tcp')
    .option(
      '--snat <mode>',
      "return path: auto (masquerade this forward's flows), masquerade, none, or a source IP",
      'auto',
    )
    .option('--no-check', 'do not check that TARGET:TARGET_PORT accepts a TCP connection first')
    .option(
      '--cut-over',
      'also move existing connections still going to an earlier target (delete their conntrack entries)',
    )
    .option('--dry-run', 'print the rules and sysctls that would be applied, change nothing')
    .action(
      async (
        target: string,
        listenPort: string,
        targetPort: string,
        o: {
          name?: string;
          listen?: string;
          proto: string;
          snat: string;
          check: boolean;
          cutOver?: boolean;
          dryRun?: boolean;
        },
      ) => {
        const engine = natEngine(cli);
        const req: forward.ForwardRequest = {
          target,
          listenPort,
          targetPort,
          proto: o.proto,
          snat: o.snat,
          check: o.check,
          cutOver: o.cutOver === true,
          ...(o.name ? { name: o.name } : {}),
          ...(o.listen ? { listen: o.listen } : {}),
        };
        if (o.dryRun) {
          process.stdout.write(await forward.dryRun(engine, req));
          return;
        }
        const r = await forward.add(engine, req, (changes) => natChange(cli, changes));
        const f = r.forward;
        const where = f.listen ? formatHostPort(f.listen, f.listenPort) : `port ${f.listenPort}`;
        // Entries, not live connections: closed ones still in TIME_WAIT are counted too.
        const cut = o.cutOver ? ` (${r.cutOver} conntrack entries of earlier targets cleared)` : '';
        const line = r.changed
          ? `forward ${f.name}: ${f.proto} ${where} -> ${formatHostPort(f.targetIp, f.targetPort)}${cut}`
          : `forward ${f.name}: already in place${cut}`;
        print(r, cli.json(), () => line);
      },
    );
}

function lsCommand(fwd: Command, cli: Cli): void {
  fwd
    .command('ls')
    .alias('list')
    .description('forwards as stored')
    .action(async () => {
      await printRows(forward.list(natEngine(cli)), cli.json(), ['name', 'proto', 'listen', 'target', 'snat'], (f) => ({
        name: f.name,
        proto: f.proto,
        listen: listenOf(f),
        target: targetOf(f),
        snat: f.snat,
      }));
    });
}

function rmCommand(fwd: Command, cli: Cli): void {
  fwd
    .command('rm <name>')
    .alias('del')
    .description('remove a forward: its rules and the sysctl changes made for it (missing: no-op)')
    .option('--cut', 'also cut its existing connections (delete their conntrack entries)')
    .action(async (name: string, o: { cut?: boolean }) => {
      await forward.remove(natEngine(cli), name, { cut: o.cut === true, apply: (changes) => natChange(cli, changes) });
    });
}

function restoreCommand(fwd: Command, cli: Cli): void {
  fwd
    .command('restore')
    .description('re-apply every stored forward (after a reboot or a flush); same as `tsnet sync`')
    .action(async () => {
      const r = await natEngine(cli).sync();
      print(
        r,
        cli.json(),
        () => `restored with ${r.backend}: ${r.full ? 'full' : 'partial'} sync, ${r.ms.toFixed(1)} ms`,
      );
    });
}
