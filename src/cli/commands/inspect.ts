/** `tsnet trace`, `tsnet doctor`, `tsnet topology`: looking at a node. Parsing and printing only; src/inspect does the work. */
import * as fs from 'node:fs';
import { Option, type Command } from 'commander';
import * as addr from '../../addr';
import { invalid } from '../../errors';
import { doctor, formatProblems } from '../../inspect/doctor';
import { natEngines } from '../../inspect/engines';
import { inspectNode } from '../../inspect/node';
import { topology, toDot, toSvg } from '../../inspect/topology';
import { trace } from '../../inspect/trace';
import { parseHostPort, parsePort } from '../../nat/model';
import * as netns from '../../netns';
import { stateDir } from '../../state';
import type { Cli } from '../context';
import { print } from '../output';
import { target } from '../target';
import { clusterInspection } from '../cluster-store';

/** The node's NAT engines: the state directory's, and those its CNI attachments wrote to. */
const engines = (cli: Cli) => natEngines(target(cli), cli.stateDir(), cli.globals().backend);

/** The first global address of a namespace, of the family traced: `--from-netns NS`. */
async function addressIn(ref: string, family: 4 | 6): Promise<string> {
  const h = netns.resolve(ref);
  try {
    const a = (await addr.list(h, { family })).find((x) => x.scope === 'global');
    if (!a) throw invalid(`${h.label} has no IPv${family} address to trace from`);
    return a.address;
  } finally {
    h.close();
  }
}

export function register(program: Command, cli: Cli): void {
  program
    .command('trace <dest>')
    .description(
      'what happens to a new connection to DEST:PORT: service or forward, endpoints with weights and counters, live flows, source NAT, the way out',
    )
    .addOption(new Option('--proto <proto>', 'tcp or udp').choices(['tcp', 'udp']).default('tcp'))
    .option('--from <ip>', "the client's address (default: this node itself)")
    .option('--from-netns <ns>', 'the client: the first address of this namespace')
    .option('--sport <port>', "the client's source port: its live flow, if any, names the endpoint that serves it")
    .action(async (dest: string, o: { proto: 'tcp' | 'udp'; from?: string; fromNetns?: string; sport?: string }) => {
      const d = parseHostPort(dest, 'destination');
      if (o.from && o.fromNetns) throw invalid('--from and --from-netns exclude each other');
      const from = o.fromNetns ? await addressIn(o.fromNetns, d.family) : o.from;
      const [engine] = await engines(cli);
      const { view: cluster } = await clusterInspection(cli, stateDir(cli.stateDir()), {
        vip: d.ip,
        port: d.port,
        proto: o.proto,
      });
      const r = await trace(engine!, {
        ...(cluster ? { cluster } : {}),
        dest: d.ip,
        port: d.port,
        proto: o.proto,
        ...(from ? { from } : {}),
        ...(o.sport !== undefined ? { sport: parsePort(o.sport, '--sport') } : {}),
      });
      print(r, cli.json(), () => r.steps.join('\n'));
    });

  program
    .command('doctor')
    .description(
      "what is wrong with this node's container networking, one line per problem with its fix (exit 1 when there is one)",
    )
    .action(async () => {
      const dir = stateDir(cli.stateDir());
      const { view, lease } = await clusterInspection(cli, dir, 'all');
      const problems = await doctor(target(cli), {
        engines: await engines(cli),
        stateDirs: [dir],
        ...(view ? { cluster: view } : {}),
        ...(lease ? { clusterLease: lease } : {}),
      });
      print(problems, cli.json(), () => formatProblems(problems));
      if (problems.length) process.exitCode = 1;
    });

  program
    .command('topology')
    .description(
      "this node's network as a picture: namespaces, bridges, veth pairs, addresses, services -> endpoints, forwards (JSON by default)",
    )
    .option('--svg <file>', 'write an SVG (laid out by ELK) to FILE ("-": stdout)')
    .option('--dot', 'print Graphviz dot')
    .action(async (o: { svg?: string; dot?: boolean }) => {
      const view = await inspectNode(target(cli), await engines(cli));
      const { view: cluster } = await clusterInspection(cli, stateDir(cli.stateDir()));
      const t = topology(view, cluster);
      if (o.svg) {
        const svg = await toSvg(t);
        if (o.svg === '-') process.stdout.write(svg);
        else fs.writeFileSync(o.svg, svg);
      } else if (o.dot) {
        process.stdout.write(toDot(t));
      } else {
        print({ ...t, view, ...(cluster ? { cluster } : {}) }, true, () => '');
      }
    });
}
