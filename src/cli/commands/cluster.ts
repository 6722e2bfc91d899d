/**
 * `tsnet cluster init|ls|leave`: the pod network's shared state in etcd
 * (flannel's schema under --prefix, default /tsnet/network). The agent
 * (`tsnet agent --etcd ... --node-name ... --public-ip ...`) does the rest.
 */
import type { Command } from 'commander';
import { invalid } from '../../errors';
import type { Cli } from '../context';
import { int } from '../options';
import { print, printRows } from '../output';
import { target } from '../target';
import { openStore } from '../cluster-store';
import type { InitOptions } from '../../cluster/config';

/** cluster init's options: the config's, and where and how to write it. */
type InitOpts = InitOptions & { force?: boolean; prefix?: string };

export function register(program: Command, cli: Cli): void {
  const c = program.command('cluster').description('the pod network across machines: its config and nodes in etcd');
  c.command('init')
    .description("write the cluster's config (flannel's schema): network, subnet length, backend")
    .requiredOption('--network <cidr>', 'the pod network, e.g. 10.244.0.0/16')
    .option(
      '--subnet-len <n>',
      "each node's subnet prefix length (default 24)",
      int('--subnet-len', { min: 1, max: 32 }),
    )
    .requiredOption('--backend <type>', 'host-gw or vxlan')
    .option('--vni <n>', 'vxlan: the VXLAN network identifier (default 1)', int('--vni'))
    .option('--port <n>', 'vxlan: the UDP port (default 8472)', int('--port'))
    .option('--direct-routing', 'vxlan: route directly (host-gw) to peers on the same L2')
    .option('--force', 'replace a different config')
    .option('--prefix <key>', 'key prefix (default /tsnet/network)')
    .action(async (o: InitOpts) => {
      const { buildConfig } = await import('../../cluster/config');
      // Every check before the store is touched: bad input writes nothing.
      const config = buildConfig(o);
      const store = await openStore(cli, o.prefix);
      const outcome = await store.writeConfig(config, !!o.force);
      print({ key: store.configKey, config, outcome }, cli.json(), () =>
        outcome === 'same'
          ? `${store.configKey} already holds this config`
          : `wrote ${store.configKey}: ${JSON.stringify(config)}`,
      );
    });
  registerLs(c, cli);
  c.command('leave <node>')
    .description(
      "remove a node's lease now (its peers drop it within a second); --teardown with -n NODE also clears that node's tunnel and peer routes",
    )
    .option(
      '--teardown',
      "also remove the node's vxlan device, peer routes, neighbour and FDB entries (in the -n namespace)",
    )
    .option('--prefix <key>', 'key prefix (default /tsnet/network)')
    .action(async (node: string, o: { teardown?: boolean; prefix?: string }) => {
      const store = await openStore(cli, o.prefix);
      const config = await store.readConfig();
      if (!config) throw invalid(`no cluster config at ${store.configKey}: run tsnet cluster init`);
      const gone = await store.leave(node);
      let removed = 0;
      if (o.teardown) {
        const { teardown } = await import('../../cluster/kernel');
        removed = await teardown(target(cli), config);
      }
      print({ node, subnet: gone?.key ?? null, removed }, cli.json(), () =>
        [
          gone ? `${node} left: ${gone.key.replace('-', '/')} released` : `${node} holds no lease`,
          o.teardown ? `, ${removed} kernel entries removed` : '',
        ].join(''),
      );
    });
}

/** `tsnet cluster ls`: every lease, with what `etcdctl get` would not show (the TTL left). */
function registerLs(c: Command, cli: Cli): void {
  c.command('ls')
    .alias('list')
    .description('the nodes: name, subnet, public IP, backend data, lease TTL left')
    .option('--prefix <key>', 'key prefix (default /tsnet/network)')
    .action(async (o: { prefix?: string }) => {
      const { parsePeer, subnetText } = await import('../../cluster/config');
      const store = await openStore(cli, o.prefix);
      const config = await store.readConfig();
      if (!config) throw invalid(`no cluster config at ${store.configKey}: run tsnet cluster init`);
      const { leases } = await store.listLeases();
      const rows = await Promise.all(
        leases.map(async (l) => {
          const r = parsePeer(config, l.key, l.value, l.lease);
          const ttl = await store.ttlLeft(l.lease);
          if ('skip' in r) return { name: '?', subnet: subnetText(l.subnet), invalid: r.skip, ttl };
          const p = r.peer;
          return {
            name: p.name,
            subnet: subnetText(p.subnet),
            publicIp: p.publicIp,
            backend: p.backend,
            ...(p.vni !== undefined ? { vni: p.vni } : {}),
            ...(p.vtepMac ? { vtepMac: p.vtepMac } : {}),
            ttl,
          };
        }),
      );
      await printRows(rows, cli.json(), ['name', 'subnet', 'publicIp', 'backend', 'vtepMac', 'ttl'], (r) => r);
    });
}
