/** CLI for `tsnet forward`: parsing and printing only; src/forward does the work. */
import { Command } from 'commander';
import type { ForwardRequest } from '../forward';
import type { NatEngine } from '../nat/engine';
import { print, table } from './output';

export interface ForwardContext {
  engine(): Promise<NatEngine>;
  json(): boolean;
}

export function registerForward(program: Command, ctx: ForwardContext): void {
  const fwd = program.command('forward').description("named, reversible port forwards: connections to this host's LISTEN_PORT go to TARGET:TARGET_PORT");

  fwd
    .command('add <target> <listen-port> <target-port>', { isDefault: true })
    .description('forward LISTEN_PORT to TARGET:TARGET_PORT (tsnet forward mysql 3308 3309); the same again: no-op')
    .option('--name <name>', "the forward's name (default: TARGET)")
    .option('--listen <ip>', 'only connections to this local address (default: any local address, 127.0.0.1 included)')
    .option('--proto <proto>', 'tcp or udp', 'tcp')
    .option('--snat <mode>', "return path: auto (masquerade this forward's flows), masquerade, none, or a source IP", 'auto')
    .option('--no-check', 'do not check that TARGET:TARGET_PORT accepts a TCP connection first')
    .option('--cut-over', 'also move existing connections still going to an earlier target (delete their conntrack entries)')
    .option('--dry-run', 'print the rules and sysctls that would be applied, change nothing')
    .action(
      async (
        target: string,
        listenPort: string,
        targetPort: string,
        o: { name?: string; listen?: string; proto: string; snat: string; check: boolean; cutOver?: boolean; dryRun?: boolean },
      ) => {
        const forward = await import('../forward');
        const engine = await ctx.engine();
        const req: ForwardRequest = {
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
        const r = await forward.add(engine, req);
        const f = r.forward;
        const where = f.listen ? `${f.listen}:${f.listenPort}` : `port ${f.listenPort}`;
        // Entries, not live connections: closed ones still in TIME_WAIT are counted too.
        const cut = o.cutOver ? ` (${r.cutOver} conntrack entries of earlier targets cleared)` : '';
        const line = r.changed ? `forward ${f.name}: ${f.proto} ${where} -> ${f.targetIp}:${f.targetPort}${cut}` : `forward ${f.name}: already in place${cut}`;
        print(r, ctx.json(), () => line);
      },
    );

  fwd
    .command('ls')
    .alias('list')
    .description('forwards as stored')
    .action(async () => {
      const rows = (await import('../forward')).list(await ctx.engine());
      print(rows, ctx.json(), () =>
        table(
          rows.map((f) => ({
            name: f.name,
            proto: f.proto,
            listen: `${f.listen ?? '*'}:${f.listenPort}`,
            target: f.target === f.targetIp ? `${f.targetIp}:${f.targetPort}` : `${f.target} (${f.targetIp}):${f.targetPort}`,
            snat: f.snat,
          })),
          ['name', 'proto', 'listen', 'target', 'snat'],
        ),
      );
    });

  fwd
    .command('rm <name>')
    .alias('del')
    .description('remove a forward: its rules and the sysctl changes made for it (missing: no-op)')
    .option('--cut', 'also cut its existing connections (delete their conntrack entries)')
    .action(async (name: string, o: { cut?: boolean }) => {
      await (await import('../forward')).remove(await ctx.engine(), name, { cut: o.cut === true });
    });

  fwd
    .command('restore')
    .description('re-apply every stored forward (after a reboot or a flush); same as `tsnet sync`')
    .action(async () => {
      const r = await (await ctx.engine()).sync();
      print(r, ctx.json(), () => `restored with ${r.backend}: ${r.full ? 'full' : 'partial'} sync, ${r.ms.toFixed(1)} ms`);
    });
}
