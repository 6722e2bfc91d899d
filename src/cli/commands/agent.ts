/** `tsnet agent`: the resident process the CNI shim and the CLI's NAT changes talk to. */
import type { Command } from 'commander';
import { DEFAULT_METRICS, DEFAULT_SOCKET } from '../../agent/protocol';
import { Agent, DEFAULT_FULL_SYNC_MS, DEFAULT_RESYNC_MS, parseDuration } from '../../agent/server';
import { formatHostPort } from '../../addr/cidr';
import type { Cli } from '../context';
import { invalid } from '../../errors';
import { parseIp } from '../../addr/cidr';
import { stateDir } from '../../state';
import { int } from '../options';
import { target } from '../target';

export function register(program: Command, cli: Cli): void {
  program
    .command('agent')
    .description(
      'serve CNI calls from the tsnet-bridge/tsnet-ipam shim over a unix socket and keep NAT rules converged (runs until SIGTERM)',
    )
    .option('--socket <path>', 'unix socket the shim connects to (its directory: mode 0700)', DEFAULT_SOCKET)
    .option(
      '--resync-interval <duration>',
      'how often NAT rules are checked for flushes and re-applied (e.g. 10s, 500ms)',
      parseDuration,
      DEFAULT_RESYNC_MS,
    )
    .option(
      '--full-sync-interval <duration>',
      'how often a resync rewrites every rule, repairing hand edits the canary cannot see',
      parseDuration,
      DEFAULT_FULL_SYNC_MS,
    )
    .option('--metrics <host:port>', 'Prometheus metrics listener ("" to turn off)', DEFAULT_METRICS)
    .option('--node-name <name>', "cluster mode (with --etcd): this node's name in the cluster")
    .option('--public-ip <ip>', "cluster mode: this node's underlay address, which peers route and tunnel to")
    .option('--bridge <name>', 'cluster mode: the node bridge pods join', 'tsnet0')
    .option('--prefix <key>', 'cluster mode: etcd key prefix (default /tsnet/network)')
    .option('--lease-ttl <seconds>', 'cluster mode: subnet lease TTL', int('--lease-ttl', { min: 2, max: 3600 }), 10)
    .action(async (o: AgentOpts) => {
      const cluster = clusterWanted(cli, o);
      // The signal handlers first: a handler registered in the same tick as the ready line is not in place yet when
      // a supervisor's SIGTERM follows at once (Node installs it asynchronously), and the agent would die mid-way.
      let signalled: string | undefined;
      let wake = () => {};
      const stop = (sig: string) => {
        process.stderr.write(`${new Date().toISOString()} agent: ${sig}: finishing calls under way\n`);
        signalled = sig;
        wake();
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      // etcd is dialled while the agent starts: a joining node's services are listed that much sooner.
      const opening = cluster && openStore(o, cluster);
      const agent = await Agent.start({
        socket: o.socket,
        stateDir: cli.stateDir(),
        metrics: o.metrics,
        resyncIntervalMs: o.resyncInterval,
        fullSyncIntervalMs: o.fullSyncInterval,
      }).catch(async (err: unknown) => {
        if (opening) (await opening.catch(() => undefined))?.store.close();
        throw err;
      });
      const node =
        opening && (await startCluster(cli, o, await opening, agent, (code) => ((process.exitCode = code), wake())));
      // One line on stdout once serving: what supervisors and tests wait for.
      const m = agent.metricsAddress;
      process.stdout.write(`ready ${agent.socket}${m ? ` metrics=${formatHostPort(m.host, m.port)}` : ''}\n`);
      if (!signalled && process.exitCode === 0) await new Promise<void>((resolve) => (wake = resolve));
      await node?.stop();
      await agent.stop();
    });
}

/**
 * Every cluster service programmed into the node's NAT engine, kept in step with etcd: listed at once, beside the
 * node's join (a joining node's rules do not wait for its lease), diffed once the cluster's config is known.
 */
async function startServices(
  node: import('../../cluster/node').ClusterNode,
  opened: Awaited<ReturnType<typeof openStore>>,
  cli: Cli,
  agent: Agent,
  log: (line: string) => void,
): Promise<{ stop(): Promise<void> }> {
  const { ServiceSync } = await import('../../cluster/service-sync');
  const dir = stateDir(cli.stateDir());
  const sync = new ServiceSync({
    services: opened.services,
    first: opened.first,
    engine: agent.natEngine(target(cli), cli.globals().backend),
    stateDir: dir,
    network: node.configured.then((c) => c.Network),
    log,
  });
  // In the background: it lists until etcd answers, and stop() ends it wherever it is.
  void sync.start();
  return sync;
}

interface AgentOpts {
  socket: string;
  resyncInterval: number;
  fullSyncInterval: number;
  metrics: string;
  nodeName?: string;
  publicIp?: string;
  bridge: string;
  prefix?: string;
  leaseTtl: number;
}

/** The cluster options, checked before anything starts; undefined without --etcd. */
function clusterWanted(cli: Cli, o: AgentOpts): { urls: string } | undefined {
  const urls = cli.etcd();
  if (!urls) {
    if (o.nodeName || o.publicIp) throw invalid('--node-name and --public-ip need --etcd URLS (or $TSNET_ETCD)');
    return undefined;
  }
  if (!o.nodeName || !o.publicIp) throw invalid('cluster mode (--etcd) needs --node-name NAME and --public-ip IP');
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(o.nodeName))
    throw invalid(`invalid --node-name ${JSON.stringify(o.nodeName)}: letters, digits, '.', '_' and '-', at most 63`);
  if (parseIp(o.publicIp).family !== 4) throw invalid(`--public-ip ${o.publicIp}: the underlay is IPv4`);
  return { urls };
}

/**
 * The cluster's store (etcd3 loads here; etcd need not answer yet), and the
 * cluster services' first list, under way from then on.
 */
async function openStore(o: AgentOpts, c: { urls: string }) {
  const { ClusterStore, parseEndpoints, parsePrefix } = await import('../../cluster/store');
  const { ServiceStore } = await import('../../cluster/services');
  const store = await ClusterStore.open(parseEndpoints(c.urls), parsePrefix(o.prefix));
  const services = new ServiceStore(store);
  const first = services.list();
  first.catch(() => undefined); // the sync lists again when this one failed
  return { store, services, first };
}

/**
 * Starts the cluster node in the background (etcd may not answer yet).
 * `end(code)`: 0 once a leave was recorded and the peers are removed, 1 on a
 * fatal claim (pool exhausted, this node's subnet held by another).
 */
async function startCluster(
  cli: Cli,
  o: AgentOpts,
  opened: Awaited<ReturnType<typeof openStore>>,
  agent: Agent,
  end: (code: number) => void,
) {
  const { store } = opened;
  const { ClusterNode } = await import('../../cluster/node');
  const log = (line: string) => process.stderr.write(`${new Date().toISOString()} agent: ${line}\n`);
  const node = new ClusterNode({
    store,
    ns: target(cli),
    nodeName: o.nodeName!,
    publicIp: o.publicIp!,
    bridge: o.bridge,
    stateDir: stateDir(cli.stateDir()),
    ttl: o.leaseTtl,
    log,
  });
  agent.cluster = node;
  agent.metrics.cluster.source = () => {
    const s = node.summary();
    return {
      peers: s.peers,
      reconciles: s.stats.reconciles,
      writes: s.stats.writes,
      skippedLeases: s.stats.skippedLeases,
    };
  };
  cli.onExit(() => store.close());
  const services = startServices(node, opened, cli, agent, log);
  node.start().catch((err: Error) => {
    log(`cluster: ${err.message}`);
    end(1);
  });
  void node.left.then(() => {
    log(`cluster: left the cluster`);
    end(0);
  });
  return {
    stop: async () => {
      await (await services).stop();
      await node.stop();
    },
  };
}
