/** `tsnet route add|del|ls`: routes in the main table (ip route). */
import type { Command } from 'commander';
import * as route from '../../route';
import type { Cli } from '../context';
import { int } from '../options';
import { printRows } from '../output';
import { target } from '../target';

interface RouteOpts {
  via?: string;
  dev?: string;
  metric?: number;
}

function routeSpec(dst: string, o: RouteOpts): route.RouteSpec {
  const r: route.RouteSpec = { dst };
  if (o.via) r.via = o.via;
  if (o.dev) r.dev = o.dev;
  if (o.metric !== undefined) r.metric = o.metric;
  return r;
}

export function register(program: Command, cli: Cli): void {
  const routeCmd = program.command('route').description('routes in the main table (ip route)');
  const spec = (c: Command) =>
    c.option('--via <gw>').option('--dev <if>').option('--metric <n>', 'metric', int('--metric'));
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
      await printRows(list, cli.json(), ['dst', 'gateway', 'dev', 'metric', 'protocol', 'scope'], (r) => r);
    });
}
