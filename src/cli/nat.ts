/**
 * CLI for the NAT engine: `tsnet service ...`, `tsnet nat ...`, `tsnet sync`,
 * `tsnet rules`. Parsing only; the engine does the work.
 */
import * as fs from 'node:fs';
import { Command } from 'commander';
import { formatHostPort } from '../addr/cidr';
import { invalid } from '../errors';
import type { NetNs } from '../netns';
import type { NatChange, NatEngine, SyncReport } from '../nat/engine';
import type { BackendChoice } from '../nat/backends';
import type { NatRule } from '../nat/model';
import { print, printRows } from './output';

export interface NatContext {
  ns(): Promise<NetNs>;
  /** `--netns` as given (the agent resolves the same name), or undefined. */
  netnsRef(): string | undefined;
  json(): boolean;
  stateDir(): string | undefined;
  backend(): BackendChoice | undefined;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function positiveInt(name: string) {
  return (v: string) => {
    if (!/^\d+$/.test(v)) throw invalid(`${name} must be a whole number, got ${JSON.stringify(v)}`);
    return Number(v);
  };
}

function summary(r: SyncReport): string {
  return `synced with ${r.backend}: ${r.full ? 'full' : 'partial'}, ${r.written} written, ${r.deleted} deleted${r.conntrackDeleted ? `, ${r.conntrackDeleted} conntrack entries cleared` : ''}, ${r.ms.toFixed(1)} ms`;
}

export function registerNat(program: Command, ctx: NatContext): () => Promise<NatEngine> {
  const engine = async () => {
    const { NatEngine } = await import('../nat/engine');
    return new NatEngine({ ns: await ctx.ns(), stateDir: ctx.stateDir(), backend: ctx.backend() });
  };
  const model = () => import('../nat/model');
  /** A change, applied by the agent when one serves this namespace (it holds the state in memory), else here. */
  const change = async (changes: NatChange[]) => {
    const ref = ctx.netnsRef();
    const { report, by, why } = await (
      await import('../agent/client')
    ).changeNat(changes, { ...(ref ? { netns: { ref, open: ctx.ns } } : {}), stateDir: ctx.stateDir(), backend: ctx.backend() });
    if (process.env.TSNET_VERBOSE) process.stderr.write(`tsnet: ${summary(report)} (${by === 'agent' ? 'by the agent' : `here: ${why}`})\n`);
  };

  // --- service -----------------------------------------------------------------
  const svc = program.command('service').alias('svc').description('kube-proxy-style services: a VIP:port balanced over endpoints');
  svc
    .command('add <name>')
    .description('add a service (the same one again: no-op)')
    .requiredOption('--vip <ip:port>', 'virtual IP and port')
    .option('--proto <proto>', 'tcp or udp', 'tcp')
    .option('--endpoint <ip:port[@weight]>', 'an endpoint, repeatable (none: connections are rejected)', collect, [])
    .option('--affinity <seconds>', 'pin each client IP to one endpoint for this long', positiveInt('--affinity'))
    .option('--masquerade-not-from <cidr>', 'masquerade traffic to the VIP from outside this CIDR')
    .action(async (name: string, o: { vip: string; proto: string; endpoint: string[]; affinity?: number; masqueradeNotFrom?: string }) => {
      const { normalizeService, parseEndpoint, parseHostPort, parseProto } = await model();
      const vip = parseHostPort(o.vip, '--vip');
      const want = normalizeService({
        name,
        vip: vip.ip,
        port: vip.port,
        proto: parseProto(o.proto),
        endpoints: o.endpoint.map(parseEndpoint),
        ...(o.affinity !== undefined ? { affinitySeconds: o.affinity } : {}),
        ...(o.masqueradeNotFrom !== undefined ? { masqueradeNotFrom: o.masqueradeNotFrom } : {}),
      });
      await change([{ op: 'add-service', service: want }]);
    });
  svc
    .command('set-endpoints <name>')
    .description('replace the endpoints of a service')
    .option('--endpoint <ip:port[@weight]>', 'an endpoint, repeatable', collect, [])
    .option('--none', 'no endpoints: new connections are rejected')
    .action(async (name: string, o: { endpoint: string[]; none?: boolean }) => {
      if (!o.endpoint.length && !o.none) throw invalid('give at least one --endpoint, or --none to reject new connections');
      if (o.endpoint.length && o.none) throw invalid('--none and --endpoint exclude each other');
      const endpoints = o.endpoint.map((await model()).parseEndpoint);
      await change([{ op: 'set-endpoints', name, endpoints }]);
    });
  svc
    .command('del <name>')
    .description('delete a service (missing: no-op)')
    .action(async (name: string) => {
      await change([{ op: 'delete-service', name }]);
    });
  svc
    .command('ls')
    .alias('list')
    .description("services as stored, with the kernel's counters (connections: first packets)")
    .action(async () => {
      const e = await engine();
      const services = e.read().services;
      const counters = await e.counters();
      const rows = services.map((s) => ({ ...s, counters: counters.get(s.name) }));
      await printRows(rows, ctx.json(), ['name', 'vip', 'proto', 'conns', 'endpoints', 'affinity', 'masq-not-from'], (s) => ({
        name: s.name,
        vip: formatHostPort(s.vip, s.port),
        proto: s.proto,
        conns: s.counters?.service.packets,
        endpoints: s.endpoints.map(
          (x) =>
            `${formatHostPort(x.ip, x.port)}${x.weight !== 1 ? `@${x.weight}` : ''}${s.counters ? `=${s.counters.endpoints[formatHostPort(x.ip, x.port)]?.packets ?? 0}` : ''}`,
        ),
        affinity: s.affinitySeconds,
        'masq-not-from': s.masqueradeNotFrom,
      }));
    });
  svc
    .command('apply')
    .description('replace the whole set of services with a JSON array, in one sync')
    .requiredOption('-f, --file <file>', 'services.json, or - for stdin')
    .action(async (o: { file: string }) => {
      const text = o.file === '-' ? fs.readFileSync(0, 'utf8') : readFile(o.file);
      const services = (await model()).parseServicesFile(text, o.file);
      await change([{ op: 'replace-services', services }]);
    });

  // --- nat ---------------------------------------------------------------------
  const nat = program.command('nat').description('standalone MASQUERADE, SNAT and DNAT rules');
  type Model = Awaited<ReturnType<typeof model>>;
  const ruleCommands = (kind: string, describe: string, build: (o: Record<string, string>, m: Model) => NatRule, opts: (c: Command) => Command) => {
    const group = nat.command(kind).description(describe);
    opts(group.command('add').description(`add a ${kind} rule (the same again: no-op)`)).action(async (o: Record<string, string>) => {
      const rule = build(o, await model());
      await change([{ op: 'add-rule', rule }]);
    });
    opts(group.command('del').description(`delete a ${kind} rule (missing: no-op)`)).action(async (o: Record<string, string>) => {
      const rule = build(o, await model());
      await change([{ op: 'delete-rule', rule }]);
    });
  };
  ruleCommands(
    'masquerade',
    'masquerade traffic from a source CIDR (iptables -t nat -A POSTROUTING -s CIDR ! -o IF -j MASQUERADE)',
    (o) => ({ kind: 'masquerade', source: o.source!, ...(o.outNot ? { outNot: o.outNot } : {}) }),
    (c) => c.requiredOption('--source <cidr>').option('--out-not <if>', 'except when leaving through this interface'),
  );
  ruleCommands(
    'snat',
    'rewrite the source of traffic from a CIDR (iptables -t nat -A POSTROUTING -s CIDR -j SNAT --to-source IP)',
    (o) => ({ kind: 'snat', source: o.source!, toSource: o.to!, ...(o.destination ? { destination: o.destination } : {}), ...(o.out ? { out: o.out } : {}) }),
    (c) => c.requiredOption('--source <cidr>').requiredOption('--to <ip>').option('--destination <cidr>').option('--out <if>'),
  );
  ruleCommands(
    'dnat',
    'rewrite the destination of IP:PORT (iptables -t nat -A PREROUTING/OUTPUT -d IP --dport PORT -j DNAT)',
    (o, m) => {
      const d = m.parseHostPort(o.destination!, '--destination');
      const t = m.parseHostPort(o.to!, '--to');
      return { kind: 'dnat', destination: d.ip, port: d.port, proto: m.parseProto(o.proto ?? 'tcp'), toIp: t.ip, toPort: t.port };
    },
    (c) => c.requiredOption('--destination <ip:port>').requiredOption('--to <ip:port>').option('--proto <proto>', 'tcp or udp', 'tcp'),
  );
  nat
    .command('ls')
    .alias('list')
    .description('standalone rules as stored')
    .action(async () => {
      const rules = (await engine()).read().rules;
      print(rules, ctx.json(), () => rules.map((r) => JSON.stringify(r)).join('\n'));
    });

  // --- sync / rules ------------------------------------------------------------
  program
    .command('sync')
    .description('re-apply the stored desired NAT state (after a reboot, a flush or a crash)')
    .option('--force', 'rewrite everything even if nothing looks changed')
    .action(async (o: { force?: boolean }) => {
      const r = await (await engine()).sync({ force: o.force ?? false });
      print(r, ctx.json(), () => summary(r));
    });
  program
    .command('rules')
    .description('print exactly what a full sync would apply, for the --backend given (dry run)')
    .action(async () => {
      process.stdout.write(await (await engine()).rules());
    });
  return () => engine();
}

function readFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw invalid(`cannot read ${file}: ${(err as Error).message}`);
  }
}
