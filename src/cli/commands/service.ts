/** `tsnet service add|set-endpoints|del|ls|apply`: kube-proxy-style services, a VIP:port balanced over weighted endpoints. */
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { formatHostPort } from '../../addr/cidr';
import { invalid } from '../../errors';
import { isCluster } from '../../nat/origin';
import { normalizeService, parseEndpoint, parseHostPort, parseProto, type Service } from '../../nat/model';
import type { ServiceCounters } from '../../nat/backends/types';
import { openStore } from '../cluster-store';
import { parseServicesFile } from '../../nat/services-file';
import type { Cli } from '../context';
import { natChange, natEngine } from '../nat-engine';
import { collect, int } from '../options';
import { printRows } from '../output';
import { stateDir } from '../../state';

export function register(program: Command, cli: Cli): void {
  const svc = program
    .command('service')
    .alias('svc')
    .description('kube-proxy-style services: a VIP:port balanced over endpoints');
  addCommand(svc, cli);
  setEndpointsCommand(svc, cli);
  delCommand(svc, cli);
  lsCommand(svc, cli);
  applyCommand(svc, cli);
}

function addCommand(svc: Command, cli: Cli): void {
  svc
    .command('add <name>')
    .description('add a service (the same one again: no-op)')
    .requiredOption('--vip <ip:port>', 'virtual IP and port')
    .option('--proto <proto>', 'tcp or udp', 'tcp')
    .option('--endpoint <ip:port[@weight]>', 'an endpoint, repeatable (none: connections are rejected)', collect, [])
    .option(
      '--affinity <seconds>',
      'pin each client IP to one endpoint for this long',
      int('--affinity', { min: 1, max: 86400 }),
    )
    .option('--masquerade-not-from <cidr>', 'masquerade traffic to the VIP from outside this CIDR')
    .option(...PREFIX)
    .action(
      async (
        name: string,
        o: {
          vip: string;
          proto: string;
          endpoint: string[];
          affinity?: number;
          masqueradeNotFrom?: string;
          prefix?: string;
        },
      ) => {
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
        const cluster = await clusterServices(cli, o.prefix);
        if (cluster) await cluster.add(want);
        else await natChange(cli, [{ kind: 'add-service', service: want }]);
      },
    );
}

function setEndpointsCommand(svc: Command, cli: Cli): void {
  svc
    .command('set-endpoints <name>')
    .description('replace the endpoints of a service')
    .option('--endpoint <ip:port[@weight]>', 'an endpoint, repeatable', collect, [])
    .option('--none', 'no endpoints: new connections are rejected')
    .option(...PREFIX)
    .action(async (name: string, o: { endpoint: string[]; none?: boolean; prefix?: string }) => {
      if (!o.endpoint.length && !o.none)
        throw invalid('give at least one --endpoint, or --none to reject new connections');
      if (o.endpoint.length && o.none) throw invalid('--none and --endpoint exclude each other');
      const endpoints = o.endpoint.map(parseEndpoint);
      const cluster = await clusterServices(cli, o.prefix);
      if (cluster) await cluster.setEndpoints(name, endpoints);
      else await natChange(cli, [{ kind: 'set-endpoints', name, endpoints }]);
    });
}

function delCommand(svc: Command, cli: Cli): void {
  svc
    .command('del <name>')
    .description('delete a service (missing: no-op)')
    .option(...PREFIX)
    .action(async (name: string, o: { prefix?: string }) => {
      const cluster = await clusterServices(cli, o.prefix);
      if (cluster) await cluster.del(name);
      else await natChange(cli, [{ kind: 'delete-service', name }]);
    });
}

function lsCommand(svc: Command, cli: Cli): void {
  svc
    .command('ls')
    .alias('list')
    .description(
      "services as stored, with the kernel's counters (connections: first packets); with --etcd, the cluster's",
    )
    .option(...PREFIX)
    .action(async (o: { prefix?: string }) => {
      const cluster = await clusterServices(cli, o.prefix);
      const rows: (Service & { counters?: ServiceCounters })[] = cluster
        ? await withNodeCounters(cli, (await cluster.list()).services)
        : await localRows(cli);
      await printRows(
        rows,
        cli.json(),
        ['name', 'vip', 'proto', 'conns', 'endpoints', 'affinity', 'masq-not-from'],
        (s) => ({
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
        }),
      );
    });
}

function applyCommand(svc: Command, cli: Cli): void {
  svc
    .command('apply')
    .description(
      'replace the whole set of services with a JSON array (as `service ls` prints it, or in --vip/--endpoint shape), in one sync',
    )
    .requiredOption('-f, --file <file>', 'services.json, or - for stdin')
    .option(...PREFIX)
    .action(async (o: { file: string; prefix?: string }) => {
      const services = parseServicesFile(readInput(o.file), o.file);
      const cluster = await clusterServices(cli, o.prefix);
      if (cluster) await cluster.apply(services);
      else await natChange(cli, [{ kind: 'replace-services', services }]);
    });
}

/** This node's own services (not the cluster's its agent programs), with the kernel's counters. */
async function localRows(cli: Cli): Promise<(Service & { counters?: ServiceCounters })[]> {
  const e = natEngine(cli);
  const counters = await e.counters();
  return e
    .read()
    .services.filter((s) => !isCluster(s))
    .map((s) => ({ ...s, counters: counters.get(s.name) }));
}

/**
 * The store's services, each with this node's counters where its agent programs it as stored (a node
 * without the service, or lagging behind the store, shows none: the counters would be another rule's).
 */
async function withNodeCounters(cli: Cli, stored: Service[]): Promise<(Service & { counters?: ServiceCounters })[]> {
  const { readNodeState } = await import('../../cluster/local');
  const { programmedAs } = await import('../../cluster/services');
  // No node state: no agent programs the cluster's services here.
  const node = readNodeState(stateDir(cli.stateDir()));
  if (!node) return stored;
  const e = natEngine(cli);
  const here = new Map(
    e
      .read()
      .services.filter(isCluster)
      .map((s) => [s.name, s]),
  );
  if (!here.size) return stored;
  const counters = await e.counters().catch(() => new Map<string, ServiceCounters>());
  return stored.map((s) => {
    const h = here.get(s.name);
    const c = h && programmedAs(h, s, node.network) ? counters.get(s.name) : undefined;
    return c ? { ...s, counters: c } : s;
  });
}

/** `--prefix`, for the cluster's services (with --etcd). */
const PREFIX = ['--prefix <key>', "with --etcd: the cluster's key prefix (default /tsnet/network)"] as const;

/**
 * With --etcd (or $TSNET_ETCD): the cluster's services in etcd, which every node's agent programs; else undefined
 * (this node's own services). Validation, errors and output are the same either way.
 */
async function clusterServices(cli: Cli, prefix: string | undefined) {
  if (!cli.etcd()) return undefined;
  const { ServiceStore } = await import('../../cluster/services');
  return new ServiceStore(await openStore(cli, prefix));
}

/** A file the user named, or stdin for "-"; a missing one is bad input, not a crash. */
function readInput(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw invalid(`cannot read ${file === '-' ? 'stdin' : file}: ${(err as Error).message}`);
  }
}
