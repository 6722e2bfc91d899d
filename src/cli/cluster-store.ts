/** The cluster's etcd for commands that use it (cluster, doctor, trace, topology): opened once, closed with the run. */
import { invalid } from '../errors';
import type { ClusterStore } from '../cluster/store';
import type { Service } from '../nat/model';
import type { Cli } from './context';

/** The store for this run (etcd3 loads only here), closed when the command ends. */
export async function openStore(cli: Cli, prefix: string | undefined): Promise<ClusterStore> {
  const urls = cli.etcd();
  if (!urls) throw invalid('this command needs the cluster store: --etcd URLS (or $TSNET_ETCD)');
  const { ClusterStore, parseEndpoints, parsePrefix } = await import('../cluster/store');
  const store = await ClusterStore.open(parseEndpoints(urls), parsePrefix(prefix));
  cli.onExit(() => store.close());
  return store;
}

/**
 * On a cluster node (STATE/cluster/node.json exists): its cluster view for
 * doctor, trace and topology. With --etcd the peers are the store's and the
 * node's own lease is looked at; without, they are the agent's last
 * programmed set. An etcd that does not answer is reported, not fatal.
 */
export async function clusterInspection(
  cli: Cli,
  stateDir: string,
  /** With --etcd, the cluster services to read: every one (doctor), the one of a VIP (trace), or none. */
  services: 'all' | Pick<Service, 'vip' | 'port' | 'proto'> | 'none' = 'none',
) {
  const { readNodeState } = await import('../cluster/local');
  const node = readNodeState(stateDir);
  if (!node) return {};
  const { clusterView } = await import('../inspect/cluster');
  const { target } = await import('./target');
  if (!cli.etcd()) return { view: await clusterView(target(cli), stateDir) };
  const { parsePeer } = await import('../cluster/config');
  try {
    const store = await openStore(cli, node.prefix);
    const config = await store.readConfig();
    if (!config) throw invalid(`no cluster config at ${store.configKey}`);
    const { leases } = await store.listLeases();
    const peers = leases.flatMap((l) => {
      const r = parsePeer(config, l.key, l.value, l.lease);
      return 'peer' in r ? [r.peer] : [];
    });
    const own = peers.find((p) => p.name === node.node);
    const ttl = own ? await store.ttlLeft(own.lease) : -1;
    const view = await clusterView(target(cli), stateDir, peers);
    if (!view || services === 'none') return { view, lease: { ttl } };
    const { ServiceStore } = await import('../cluster/services');
    const s = new ServiceStore(store);
    const stored = services === 'all' ? (await s.list()).services : await s.atVip(services);
    return { view: { ...view, services: stored }, lease: { ttl } };
  } catch (err) {
    return { view: await clusterView(target(cli), stateDir), lease: { error: (err as Error).message } };
  }
}
