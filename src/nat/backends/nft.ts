/**
 * The nftables applier: one `nft -f -` transaction per family and sync,
 * touching only `table ip tsnet` / `table ip6 tsnet`. Everything else in the
 * ruleset (iptables-nft's tables, firewalld's, Docker's) is never named.
 */
import type { Family } from '../../addr/cidr';
import type { NetNs } from '../../netns';
import { APPLY_TIMEOUT_MS, execIn, mustExec } from '../exec';
import { familiesUsed, type DesiredState } from '../model';
import { CANARY_COMMENT } from './iptables-render';
import { CANARY, TABLE, digests, render, script } from './nft-render';
import { mayHoldRules, type Applied, type Backend, type SyncResult } from './types';

const fam = (f: Family) => (f === 6 ? 'ip6' : 'ip');

export class NftBackend implements Backend {
  readonly name = 'nft' as const;
  /** `holdFd`: the engine's lock, kept by every `nft -f` while it runs (see ExecOptions). */
  constructor(readonly ns: NetNs, readonly holdFd?: number) {}

  render(st: DesiredState): string {
    return (familiesUsed(st).length ? familiesUsed(st) : [4 as const]).map((f) => `# nft -f -\n${script(render(st, f)).text}`).join('\n');
  }

  /** Whether the table exists with its canary rule (`nft flush ruleset` or `flush table` remove it). */
  async canaryPresent(family: Family): Promise<boolean> {
    const r = await execIn(this.ns, 'nft', ['list', 'chain', fam(family), TABLE, CANARY]);
    return r.code === 0 && r.stdout.includes(CANARY_COMMENT);
  }

  private async apply(text: string): Promise<void> {
    await mustExec(this.ns, 'applying NAT rules', 'nft', ['-f', '-'], text, { timeoutMs: APPLY_TIMEOUT_MS, holdFd: this.holdFd });
  }

  async sync(st: DesiredState, applied: Applied | undefined, force: boolean): Promise<SyncResult> {
    const result: SyncResult = { full: false, written: 0, deleted: 0, applied: { backend: this.name, clean: true, families: {} } };
    for (const family of [4, 6] as const) {
      const used = familiesUsed(st).includes(family);
      const prev = applied?.backend === this.name && applied.clean ? applied.families[family] : undefined;
      if (!used) {
        if (force || mayHoldRules(applied, this.name, family)) await this.teardownFamily(family);
        continue;
      }
      const partial = prev && !force && (await this.canaryPresent(family)) ? prev : undefined;
      if (!partial) result.full = true;
      const rs = render(st, family);
      const { text, written, deleted } = script(rs, partial);
      await this.apply(text);
      result.written += written;
      result.deleted += deleted;
      result.applied.families[family] = digests(rs);
    }
    return result;
  }

  async teardownFamily(family: Family): Promise<void> {
    await this.apply(`add table ${fam(family)} ${TABLE}\ndelete table ${fam(family)} ${TABLE}\n`);
  }

  async teardown(): Promise<void> {
    for (const family of [4, 6] as const) await this.teardownFamily(family);
  }
}
