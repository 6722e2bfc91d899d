/** The NAT engine a command acts on (the target namespace, --state-dir, --backend), and changes handed to a running agent first. */
import { changeNat } from '../agent/client';
import { NatEngine, type NatChange, type SyncReport } from '../nat/engine';
import type { Cli } from './context';
import { target } from './target';

export const natEngine = (cli: Cli): NatEngine =>
  new NatEngine({ ns: target(cli), stateDir: cli.stateDir(), backend: cli.globals().backend });

export function summary(r: SyncReport): string {
  return `synced with ${r.backend}: ${r.full ? 'full' : 'partial'}, ${r.written} written, ${r.deleted} deleted${r.conntrackDeleted ? `, ${r.conntrackDeleted} conntrack entries cleared` : ''}, ${r.ms.toFixed(1)} ms`;
}

/** A change, applied by the agent when one serves this namespace (it holds the state in memory), else here. */
export async function natChange(cli: Cli, changes: NatChange[]): Promise<SyncReport> {
  const ref = cli.globals().netns;
  const { report, by, why } = await changeNat(changes, {
    ...(ref ? { netns: { ref, open: () => target(cli) } } : {}),
    stateDir: cli.stateDir(),
    backend: cli.globals().backend,
  });
  if (process.env.TSNET_VERBOSE)
    process.stderr.write(`tsnet: ${summary(report)} (${by === 'agent' ? 'by the agent' : `here: ${why}`})\n`);
  return report;
}
