/** CLI for looking at a node: `tsnet trace`, `tsnet doctor`, `tsnet topology`. Parsing and printing only; src/inspect does the work. */
import * as fs from 'node:fs';
import { Command, Option } from 'commander';
import { invalid } from '../errors';
import type { NetNs } from '../netns';
import type { NatEngine } from '../nat/engine';
import { print } from './output';

export interface InspectContext {
  ns(): Promise<NetNs>;
  json(): boolean;
  /** The node's NAT engines: the state directory's, and those its CNI attachments wrote to. */
  engines(): Promise<NatEngine[]>;
  stateDir(): string | undefined;
}

export function registerInspect(program: Command, ctx: InspectContext): void {
  program
    .command('trace <dest>')
    .description('what happens to a new connection to DEST:PORT: service or forward, endpoints with weights and counters, live flows, source NAT, the way out')
    .addOption(new Option('--proto <proto>', 'tcp or udp').choices(['tcp', 'udp']).default('tcp'))
    .option('--from <ip>', "the client's address (default: this node itself)")
    .option('--from-netns <ns>', 'the client: the first address of this namespace')
    .option('--sport <port>', "the client's source port: its live flow, if any, names the endpoint that serves it")
    .action(async (dest: string, o: { proto: 'tcp' | 'udp'; from?: string; fromNetns?: string; sport?: string }) => {
      const { parseHostPort, parsePort } = await import('../nat/model');
      const d = parseHostPort(dest, 'destination');
      let from = o.from;
      if (o.fromNetns) {
        if (from) throw invalid('--from and --from-netns exclude each other');
        const netns = await import('../netns');
        const h = netns.resolve(o.fromNetns);
        try {
          const a = (await (await import('../addr')).list(h, { family: d.family })).find((x) => x.scope === 'global');
          if (!a) throw invalid(`${h.label} has no IPv${d.family} address to trace from`);
          from = a.address;
        } finally {
          h.close();
        }
      }
      const [engine] = await ctx.engines();
      const { trace } = await import('../inspect/trace');
      const r = await trace(engine!, {
        dest: d.ip,
        port: d.port,
        proto: o.proto,
        ...(from ? { from } : {}),
        ...(o.sport !== undefined ? { sport: parsePort(o.sport, '--sport') } : {}),
      });
      print(r, ctx.json(), () => r.steps.join('\n'));
    });

  program
    .command('doctor')
    .description("what is wrong with this node's container networking, one line per problem with its fix (exit 1 when there is one)")
    .action(async () => {
      const { doctor, formatProblems } = await import('../inspect/doctor');
      const { stateDir } = await import('../state');
      const problems = await doctor(await ctx.ns(), { engines: await ctx.engines(), stateDirs: [stateDir(ctx.stateDir())] });
      print(problems, ctx.json(), () => formatProblems(problems));
      if (problems.length) process.exitCode = 1;
    });

  program
    .command('topology')
    .description("this node's network as a picture: namespaces, bridges, veth pairs, addresses, services -> endpoints, forwards (JSON by default)")
    .option('--svg <file>', 'write an SVG (laid out by ELK) to FILE ("-": stdout)')
    .option('--dot', 'print Graphviz dot')
    .action(async (o: { svg?: string; dot?: boolean }) => {
      const { inspectNode } = await import('../inspect/node');
      const { topology, toDot, toSvg } = await import('../inspect/topology');
      const view = await inspectNode(await ctx.ns(), await ctx.engines());
      const t = topology(view);
      if (o.svg) {
        const svg = await toSvg(t);
        if (o.svg === '-') process.stdout.write(svg);
        else fs.writeFileSync(o.svg, svg);
      } else if (o.dot) {
        process.stdout.write(toDot(t));
      } else {
        print({ ...t, view }, true, () => '');
      }
    });
}
