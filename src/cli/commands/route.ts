/** `tsnet route add|del|ls`: routes in the main table (ip route). */
import type { Command } from 'commander';
import * as link from '../../link';
import * as route from '../../route';
import type { Cli } from '../context';
import { int } from '../options';
import { printRows } from '../output';
import { target } from '../target';

interface RouteOpts {
  via?: string;
  dev?: string;
  metric?: number;
  onlink?: boolean;
  proto?: number;
  blackhole?: boolean;
  nhid?: number;
}

/** `--proto N` or one of iproute2's names for it (and tsnet's own, 74). */
const PROTO_NAMES: Record<string, number> = { boot: 3, static: 4, tsnet: 74 };
const parseProto = (v: string): number => PROTO_NAMES[v] ?? int('--proto', { max: 255 })(v);

function routeSpec(dst: string, o: RouteOpts): route.RouteSpec {
  const r: route.RouteSpec = { dst };
  if (o.via) r.via = o.via;
  if (o.dev) r.dev = o.dev;
  if (o.metric !== undefined) r.metric = o.metric;
  if (o.onlink) r.onlink = true;
  if (o.proto !== undefined) r.protocol = o.proto;
  if (o.blackhole) r.type = 'blackhole';
  if (o.nhid !== undefined) r.nhid = o.nhid;
  return r;
}

export function register(program: Command, cli: Cli): void {
  const routeCmd = program.command('route').description('routes in the main table (ip route)');
  const spec = (c: Command) =>
    c
      .option('--via <gw>')
      .option('--dev <if>')
      .option('--metric <n>', 'metric', int('--metric'))
      .option('--onlink', 'the gateway is on --dev even without a covering prefix')
      .option('--proto <n>', 'route protocol: a number or boot, static, tsnet', parseProto)
      .option('--blackhole', 'drop what matches (no gateway, no device)')
      .option('--nhid <id>', 'through a nexthop object', int('--nhid', { min: 1, max: 0xffffffff }));
  spec(routeCmd.command('add <dst>').description('add or replace a route; DST is a CIDR or "default"')).action(
    async (dst: string, o: RouteOpts) => {
      await route.replace(target(cli), routeSpec(dst, o));
    },
  );
  spec(routeCmd.command('del <dst>').description('delete a route (missing: no-op)')).action(
    async (dst: string, o: RouteOpts) => {
      await route.del(target(cli), routeSpec(dst, o));
    },
  );
  routeCmd
    .command('ls')
    .alias('list')
    .description('routes of the main table')
    .option('-4', 'IPv4 only')
    .option('-6', 'IPv6 only')
    .action(async (o: { 4?: boolean; 6?: boolean }) => {
      const list = await route.list(target(cli), o[4] ? { family: 4 } : o[6] ? { family: 6 } : {});
      await printRows(
        list,
        cli.json(),
        ['type', 'dst', 'gateway', 'dev', 'nhid', 'metric', 'protocol', 'scope'],
        (r) => r,
      );
    });

  const nh = program.command('nexthop').description('nexthop objects, which routes name by id (ip nexthop)');
  nh.command('replace <id>')
    .alias('add')
    .description('add or replace a nexthop object (ip nexthop replace id ID via GW dev DEV [onlink])')
    .option('--via <gw>')
    .option('--dev <if>')
    .option('--onlink')
    .option('--blackhole')
    .option('--proto <n>', 'protocol: a number or boot, static, tsnet', parseProto)
    .action(
      async (id: string, o: { via?: string; dev?: string; onlink?: boolean; blackhole?: boolean; proto?: number }) => {
        const h = target(cli);
        await route.nexthop.replace(h, {
          id: int('id', { min: 1, max: 0xffffffff })(id),
          ...(o.via ? { via: o.via } : {}),
          ...(o.dev ? { dev: (await link.mustGet(h, o.dev)).index } : {}),
          onlink: !!o.onlink,
          blackhole: !!o.blackhole,
          ...(o.proto !== undefined ? { protocol: o.proto } : {}),
        });
      },
    );
  nh.command('del <id>')
    .description('delete a nexthop object (missing: no-op)')
    .action(async (id: string) => {
      await route.nexthop.del(target(cli), int('id', { min: 1, max: 0xffffffff })(id));
    });
  nh.command('ls')
    .alias('list')
    .description('nexthop objects')
    .action(async () => {
      const h = target(cli);
      const names = new Map((await link.list(h)).map((l) => [l.index, l.name]));
      const rows = (await route.nexthop.list(h)).map(({ dev, ...n }) => ({
        ...n,
        ...(dev === undefined ? {} : { index: dev, dev: names.get(dev) }),
      }));
      await printRows(rows, cli.json(), ['id', 'gateway', 'dev', 'onlink', 'protocol'], (n) => n);
    });
}
