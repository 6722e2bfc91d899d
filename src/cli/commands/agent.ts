/** `tsnet agent`: the resident process the CNI shim and the CLI's NAT changes talk to. */
import type { Command } from 'commander';
import { DEFAULT_METRICS, DEFAULT_SOCKET } from '../../agent/protocol';
import { Agent, DEFAULT_FULL_SYNC_MS, DEFAULT_RESYNC_MS, parseDuration } from '../../agent/server';
import { formatHostPort } from '../../addr/cidr';
import type { Cli } from '../context';

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
    .action(async (o: { socket: string; resyncInterval: number; fullSyncInterval: number; metrics: string }) => {
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
      const agent = await Agent.start({
        socket: o.socket,
        stateDir: cli.stateDir(),
        metrics: o.metrics,
        resyncIntervalMs: o.resyncInterval,
        fullSyncIntervalMs: o.fullSyncInterval,
      });
      // One line on stdout once serving: what supervisors and tests wait for.
      const m = agent.metricsAddress;
      process.stdout.write(`ready ${agent.socket}${m ? ` metrics=${formatHostPort(m.host, m.port)}` : ''}\n`);
      if (!signalled) await new Promise<void>((resolve) => (wake = resolve));
      await agent.stop();
    });
}
