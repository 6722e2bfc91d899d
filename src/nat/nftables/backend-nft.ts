/**
 * The nftables backend through the `nft` binary: one `nft -f -` transaction
 * per family and sync, read back with `nft list`. It writes exactly what the
 * netlink backend writes (see ./backend); it stays for nodes that want nft
 * itself in the loop.
 */
import type { Family } from '../../addr/cidr';
import type { NetNs } from '../../netns';
import { CANARY_COMMENT, NFT_TABLE } from '../constants';
import { APPLY_TIMEOUT_MS, execIn, mustExec, type HeldLock } from '../exec';
import { CANARY } from './table-names';
import type { Plan } from './plan';
import { keyId, type Value } from './ruleset';
import { script } from './text';
import { NftablesBackend, type TableCounters } from './backend';
import type { AffinityEntry, Counter } from '../backends/types';

const fam = (f: Family) => (f === 6 ? 'ip6' : 'ip');

/** A key of `nft -j` (`{"concat": ["10.96.0.1", "tcp", 80, {"range": [0, 1]}]}`) as the values it holds. */
function jsonValues(v: unknown): Value[] {
  if (v && typeof v === 'object') {
    const o = v as { concat?: unknown[]; range?: [number, number] };
    if (o.concat) return o.concat.flatMap(jsonValues);
    if (o.range) return [[o.range[0], o.range[1]]];
  }
  return [v as string | number];
}

export class NftBackend extends NftablesBackend {
  readonly name = 'nft' as const;
  /** `lock`: the engine's, kept by every `nft -f` while it runs (see ExecOptions). */
  constructor(
    ns: NetNs,
    private readonly lock: HeldLock = {},
  ) {
    super(ns);
  }

  /**
   * nft 1.0.6 cannot add a `dnat ... map @m` rule to a table that already
   * holds one (re-evaluating the rule it reads back fails with "conflicting
   * protocols specified: ip vs. th"), so a plan that adds such a rule (a new
   * endpoint count appears) is carried out as a full sync. Element changes,
   * the usual case, stay partial. The netlink backend has no such limit.
   */
  protected override partialOk(plan: Plan): boolean {
    return !plan.ops.some(
      (op) => op.kind === 'add-rules' && op.rules.some((r) => r.items.some((i) => i.kind === 'dnat-map')),
    );
  }

  protected async apply(plan: Pick<Plan, 'ops'>, family: Family): Promise<void> {
    const text = script(plan.ops, family);
    if (text)
      await mustExec(this.ns, 'applying NAT rules', 'nft', ['-f', '-'], text, {
        timeoutMs: APPLY_TIMEOUT_MS,
        holdFd: this.lock.fd,
      });
  }

  protected async readAffinitySet(family: Family, set: string): Promise<AffinityEntry[]> {
    const r = await execIn(this.ns, 'nft', ['-j', 'list', 'set', fam(family), NFT_TABLE, set]);
    if (r.code !== 0) return [];
    type Listed = { set?: { elem?: ({ elem: { val: string; expires?: number } } | string)[] } };
    const out: AffinityEntry[] = [];
    for (const o of (JSON.parse(r.stdout) as { nftables: Listed[] }).nftables) {
      for (const e of o.set?.elem ?? []) {
        if (typeof e === 'string') out.push({ client: e });
        else
          out.push(
            e.elem.expires === undefined
              ? { client: e.elem.val }
              : { client: e.elem.val, expiresMs: e.elem.expires * 1000 },
          );
      }
    }
    return out;
  }

  /** Whether the table exists with its canary rule (`nft flush ruleset` or `flush table` remove it). */
  async canaryPresent(family: Family): Promise<boolean> {
    const r = await execIn(this.ns, 'nft', ['list', 'chain', fam(family), NFT_TABLE, CANARY]);
    return r.code === 0 && r.stdout.includes(CANARY_COMMENT);
  }

  protected async readCounters(family: Family): Promise<TableCounters | undefined> {
    const r = await execIn(this.ns, 'nft', ['-j', 'list', 'table', fam(family), NFT_TABLE]);
    if (r.code !== 0) return undefined;
    const out: TableCounters = { elements: new Map(), chains: new Map() };
    // The parts of `nft -j list table` read here: maps' elements with their counters, rules' counters.
    type Elem = { elem?: { val: unknown; counter?: Counter } };
    type Listed = {
      map?: { name: string; elem?: [Elem, unknown][] };
      rule?: { chain: string; expr?: { counter?: Counter }[] };
    };
    for (const o of (JSON.parse(r.stdout) as { nftables: Listed[] }).nftables) {
      if (o.map?.elem) {
        const m = new Map<string, Counter>();
        for (const [k] of o.map.elem) if (k.elem?.counter) m.set(keyId(jsonValues(k.elem.val)), k.elem.counter);
        out.elements.set(o.map.name, m);
      }
      const counter = o.rule?.expr?.find((e) => e.counter)?.counter;
      if (counter) out.chains.set(o.rule!.chain, counter);
    }
    return out;
  }
}
