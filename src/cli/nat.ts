/**
 * CLI for the NAT engine: `tsnet service ...`, `tsnet nat ...`, `tsnet sync`,
 * `tsnet rules`. Parsing only; the engine does the work.
 */
import * as fs from 'node:fs';
import { Command, Option } from 'commander';
import { invalid } from '../errors';
import type { NetNs } from '../netns';
import { NatEngine, type BackendChoice, type SyncReport } from '../nat/engine';
import { BACKEND_CHOICES } from '../nat/backends';
import { normalizeService, parseEndpoint, parseHostPort, parseProto, type NatRule, type Service } from '../nat/model';
import { print, table } from './output';

export interface NatContext {
  ns(): NetNs;
  json(): boolean;
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

/** `services.json`: a JSON array of services, as `service ls --json` prints them. */
export function parseServicesFile(text: string, file: string): Service[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw invalid(`${file}: not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(data)) throw invalid(`${file}: expected a JSON array of services`);
  return data.map((s, i) => {
    if (!s || typeof s !== 'object' || typeof (s as { name?: unknown }).name !== 'string') throw invalid(`${file}: entry ${i} is not a service object with a "name"`);
    return normalizeService(s as Service);
  });
}

export function registerNat(program: Command, ctx: NatContext): () => NatEngine {
  program
    .addOption(new Option('--backend <name>', 'NAT backend (auto: netlink, or iptables when the state was written with it)').choices(BACKEND_CHOICES))
    .option('--state-dir <dir>', 'where desired NAT state is kept (default $TSNET_STATE_DIR or /var/lib/tsnet)');

  const engine = (backend?: BackendChoice) => {
    const o = program.opts<{ backend?: BackendChoice; stateDir?: string }>();
    return new NatEngine({ ns: ctx.ns(), stateDir: o.stateDir, backend: backend ?? o.backend });
  };
  const verbose = (r: SyncReport) => {
    if (process.env.TSNET_VERBOSE) process.stderr.write(`tsnet: ${summary(r)}\n`);
  };

  // --- service -----------------------------------------------------------------
  const svc = program.command('service').alias('svc').description('kube-proxy-style services: a VIP:port balanced over endpoints');
  svc.command('add <name>').description('add a service (the same one again: no-op)')
    .requiredOption('--vip <ip:port>', 'virtual IP and port')
    .option('--proto <proto>', 'tcp or udp', 'tcp')
    .option('--endpoint <ip:port[@weight]>', 'an endpoint, repeatable (none: connections are rejected)', collect, [])
    .option('--affinity <seconds>', 'pin each client IP to one endpoint for this long', positiveInt('--affinity'))
    .option('--masquerade-not-from <cidr>', 'masquerade traffic to the VIP from outside this CIDR')
    .action(async (name: string, o: { vip: string; proto: string; endpoint: string[]; affinity?: number; masqueradeNotFrom?: string }) => {
      const vip = parseHostPort(o.vip, '--vip');
      const want = normalizeService({
        name, vip: vip.ip, port: vip.port, proto: parseProto(o.proto), endpoints: o.endpoint.map(parseEndpoint),
        ...(o.affinity !== undefined ? { affinitySeconds: o.affinity } : {}),
        ...(o.masqueradeNotFrom !== undefined ? { masqueradeNotFrom: o.masqueradeNotFrom } : {}),
      });
      verbose(await engine().change([{ op: 'add-service', service: want }]));
    });
  svc.command('set-endpoints <name>').description('replace the endpoints of a service')
    .option('--endpoint <ip:port[@weight]>', 'an endpoint, repeatable', collect, [])
    .option('--none', 'no endpoints: new connections are rejected')
    .action(async (name: string, o: { endpoint: string[]; none?: boolean }) => {
      if (!o.endpoint.length && !o.none) throw invalid('give at least one --endpoint, or --none to reject new connections');
      if (o.endpoint.length && o.none) throw invalid('--none and --endpoint exclude each other');
      const endpoints = o.endpoint.map(parseEndpoint);
      verbose(await engine().change([{ op: 'set-endpoints', name, endpoints }]));
    });
  svc.command('del <name>').description('delete a service (missing: no-op)').action(async (name: string) => {
    verbose(await engine().change([{ op: 'delete-service', name }]));
  });
  svc.command('ls').alias('list').description('services as stored, with the kernel\'s counters (connections: first packets)').option('--json', 'print as JSON').action(async (o: { json?: boolean }) => {
    const e = engine();
    const services = e.read().services;
    const counters = await e.counters();
    const hp = (ip: string, port: number) => `${ip.includes(':') ? `[${ip}]` : ip}:${port}`;
    const rows = services.map((s) => ({ ...s, counters: counters.get(s.name) }));
    print(rows, ctx.json() || o.json === true, () => table(rows.map((s) => ({
      name: s.name,
      vip: hp(s.vip, s.port),
      proto: s.proto,
      conns: s.counters?.service.packets,
      endpoints: s.endpoints.map((x) => `${hp(x.ip, x.port)}${x.weight !== 1 ? `@${x.weight}` : ''}${s.counters ? `=${s.counters.endpoints[hp(x.ip, x.port)]?.packets ?? 0}` : ''}`),
      affinity: s.affinitySeconds,
      'masq-not-from': s.masqueradeNotFrom,
    })), ['name', 'vip', 'proto', 'conns', 'endpoints', 'affinity', 'masq-not-from']));
  });
  svc.command('apply').description('replace the whole set of services with a JSON array, in one sync')
    .requiredOption('-f, --file <file>', 'services.json, or - for stdin')
    .action(async (o: { file: string }) => {
      const text = o.file === '-' ? fs.readFileSync(0, 'utf8') : readFile(o.file);
      const services = parseServicesFile(text, o.file);
      verbose(await engine().change([{ op: 'replace-services', services }]));
    });

  // --- nat ---------------------------------------------------------------------
  const nat = program.command('nat').description('standalone MASQUERADE, SNAT and DNAT rules');
  const ruleCommands = (kind: string, describe: string, build: (o: Record<string, string>) => NatRule, opts: (c: Command) => Command) => {
    const group = nat.command(kind).description(describe);
    opts(group.command('add').description(`add a ${kind} rule (the same again: no-op)`)).action(async (o: Record<string, string>) => {
      verbose(await engine().change([{ op: 'add-rule', rule: build(o) }]));
    });
    opts(group.command('del').description(`delete a ${kind} rule (missing: no-op)`)).action(async (o: Record<string, string>) => {
      verbose(await engine().change([{ op: 'delete-rule', rule: build(o) }]));
    });
  };
  ruleCommands('masquerade', 'masquerade traffic from a source CIDR (iptables -t nat -A POSTROUTING -s CIDR ! -o IF -j MASQUERADE)',
    (o) => ({ kind: 'masquerade', source: o.source!, ...(o.outNot ? { outNot: o.outNot } : {}) }),
    (c) => c.requiredOption('--source <cidr>').option('--out-not <if>', 'except when leaving through this interface'));
  ruleCommands('snat', 'rewrite the source of traffic from a CIDR (iptables -t nat -A POSTROUTING -s CIDR -j SNAT --to-source IP)',
    (o) => ({ kind: 'snat', source: o.source!, toSource: o.to!, ...(o.destination ? { destination: o.destination } : {}), ...(o.out ? { out: o.out } : {}) }),
    (c) => c.requiredOption('--source <cidr>').requiredOption('--to <ip>').option('--destination <cidr>').option('--out <if>'));
  ruleCommands('dnat', 'rewrite the destination of IP:PORT (iptables -t nat -A PREROUTING/OUTPUT -d IP --dport PORT -j DNAT)',
    (o) => {
      const d = parseHostPort(o.destination!, '--destination');
      const t = parseHostPort(o.to!, '--to');
      return { kind: 'dnat', destination: d.ip, port: d.port, proto: parseProto(o.proto ?? 'tcp'), toIp: t.ip, toPort: t.port };
    },
    (c) => c.requiredOption('--destination <ip:port>').requiredOption('--to <ip:port>').option('--proto <proto>', 'tcp or udp', 'tcp'));
  nat.command('ls').alias('list').description('standalone rules as stored').option('--json', 'print as JSON').action((o: { json?: boolean }) => {
    const rules = engine().read().rules;
    print(rules, ctx.json() || o.json === true, () => rules.map((r) => JSON.stringify(r)).join('\n'));
  });

  // --- sync / rules ------------------------------------------------------------
  program.command('sync').description('re-apply the stored desired NAT state (after a reboot, a flush or a crash)')
    .option('--force', 'rewrite everything even if nothing looks changed')
    .option('--json', 'print the report as JSON')
    .action(async (o: { force?: boolean; json?: boolean }) => {
      const r = await engine().sync({ force: o.force ?? false });
      print(r, ctx.json() || o.json === true, () => summary(r));
    });
  program.command('rules').description('print exactly what a full sync would apply (dry run)')
    .addOption(new Option('--backend <name>', 'render for this backend').choices(BACKEND_CHOICES))
    .action(async (o: { backend?: BackendChoice }) => {
      process.stdout.write(await engine(o.backend).rules());
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
