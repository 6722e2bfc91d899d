/** CLI for `tsnet agent`: the resident process the CNI shim talks to. */
import { Command } from 'commander';
import { DEFAULT_METRICS, DEFAULT_SOCKET } from '../agent/protocol';

export function registerAgent(program: Command, ctx: { stateDir(): string | undefined }): void {
  program
    .command('agent')
    .description('serve CNI calls from the tsnet-bridge/tsnet-ipam shim over a unix socket and keep NAT rules converged (runs until SIGTERM)')
    .option('--socket <path>', 'unix socket the shim connects to (its directory: mode 0700)', DEFAULT_SOCKET)
    .option('--resync-interval <duration>', 'how often NAT rules are checked for flushes and re-applied (e.g. 10s, 500ms)', '10s')
    .option('--full-sync-interval <duration>', 'how often a resync rewrites every rule, repairing hand edits the canary cannot see', '1h')
    .option('--metrics <host:port>', 'Prometheus metrics listener ("" to turn off)', DEFAULT_METRICS)
    .action(async (o: { socket: string; resyncInterval: string; fullSyncInterval: string; metrics: string }) => {
      const { Agent, parseDuration } = await import('../agent');
      const agent = await Agent.start({
        socket: o.socket,
        stateDir: ctx.stateDir(),
        metrics: o.metrics,
        resyncIntervalMs: parseDuration(o.resyncInterval),
        fullSyncIntervalMs: parseDuration(o.fullSyncInterval),
      });
      // One line on stdout once serving: what supervisors and tests wait for.
      process.stdout.write(`ready ${agent.socket}${agent.metricsAddress ? ` metrics=${agent.metricsAddress.host}:${agent.metricsAddress.port}` : ''}\n`);
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          process.stderr.write(`${new Date().toISOString()} agent: ${sig}: finishing calls under way\n`);
          resolve();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      await agent.stop();
    });
}
