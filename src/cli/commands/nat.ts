/** `tsnet nat masquerade|snat|dnat add|del`, `nat ls`, `tsnet sync`, `tsnet rules`: standalone NAT rules and the whole state's upkeep. */
import type { Command } from 'commander';
import type { NatRule } from '../../nat/model';
import { parseHostPort, parseProto } from '../../nat/model';
import type { Cli } from '../context';
import { natChange, natEngine, summary } from '../nat-engine';
import { print } from '../output';

type RuleOpts = Record<string, string | undefined>;

/** Each rule kind: what it does, its options, and the rule its options make. */
const KINDS: { kind: NatRule['kind']; describe: string; options(c: Command): Command; build(o: RuleOpts): NatRule }[] =
  [
    {
      kind: 'masquerade',
      describe: 'masquerade traffic from a source CIDR (iptables -t nat -A POSTROUTING -s CIDR ! -o IF -j MASQUERADE)',
      options: (c) =>
        c
          .requiredOption('--source <cidr>')
          .option('--out-not <if>', 'except when leaving through this interface')
          .option('--destination-not <cidr>', 'except traffic to this CIDR (! -d: a pod network kept unmasqueraded)'),
      build: (o) => ({
        kind: 'masquerade',
        source: o.source!,
        ...(o.outNot ? { outNot: o.outNot } : {}),
        ...(o.destinationNot ? { destinationNot: o.destinationNot } : {}),
      }),
    },
    {
      kind: 'snat',
      describe:
        'rewrite the source of traffic from a CIDR (iptables -t nat -A POSTROUTING -s CIDR -j SNAT --to-source IP)',
      options: (c) =>
        c
          .requiredOption('--source <cidr>')
          .requiredOption('--to <ip>')
          .option('--destination <cidr>')
          .option('--out <if>'),
      build: (o) => ({
        kind: 'snat',
        source: o.source!,
        toSource: o.to!,
        ...(o.destination ? { destination: o.destination } : {}),
        ...(o.out ? { out: o.out } : {}),
      }),
    },
    {
      kind: 'dnat',
      describe: 'rewrite the destination of IP:PORT (iptables -t nat -A PREROUTING/OUTPUT -d IP --dport PORT -j DNAT)',
      options: (c) =>
        c
          .requiredOption('--destination <ip:port>')
          .requiredOption('--to <ip:port>')
          .option('--proto <proto>', 'tcp or udp', 'tcp'),
      build: (o) => {
        const d = parseHostPort(o.destination!, '--destination');
        const t = parseHostPort(o.to!, '--to');
        return {
          kind: 'dnat',
          destination: d.ip,
          port: d.port,
          proto: parseProto(o.proto ?? 'tcp'),
          toIp: t.ip,
          toPort: t.port,
        };
      },
    },
  ];

export function register(program: Command, cli: Cli): void {
  const nat = program.command('nat').description('standalone MASQUERADE, SNAT and DNAT rules');
  for (const k of KINDS) {
    const group = nat.command(k.kind).description(k.describe);
    k.options(group.command('add').description(`add a ${k.kind} rule (the same again: no-op)`)).action(
      async (o: RuleOpts) => {
        await natChange(cli, [{ kind: 'add-rule', rule: k.build(o) }]);
      },
    );
    k.options(group.command('del').description(`delete a ${k.kind} rule (missing: no-op)`)).action(
      async (o: RuleOpts) => {
        await natChange(cli, [{ kind: 'delete-rule', rule: k.build(o) }]);
      },
    );
  }
  nat
    .command('ls')
    .alias('list')
    .description('standalone rules as stored')
    .action(() => {
      const rules = natEngine(cli).globals().rules;
      print(rules, cli.json(), () => rules.map((r) => JSON.stringify(r)).join('\n'));
    });

  program
    .command('sync')
    .description('re-apply the stored desired NAT state (after a reboot, a flush or a crash)')
    .option('--force', 'rewrite everything even if nothing looks changed')
    .action(async (o: { force?: boolean }) => {
      const r = await natEngine(cli).sync({ force: o.force ?? false });
      print(r, cli.json(), () => summary(r));
    });
  program
    .command('rules')
    .description('print exactly what a full sync would apply, for the --backend given (dry run)')
    .action(async () => {
      process.stdout.write(await natEngine(cli).rules());
    });
}
