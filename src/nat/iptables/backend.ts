/**
 * The iptables applier: one `iptables-restore -w --noflush` per table set and
 * family per sync, with the binaries of the mode the node uses (legacy or nft,
 * detected as kubernetes-sigs/iptables-wrappers does, never mixed).
 */
import * as fs from 'node:fs';
import { formatHostPort, type Family } from '../../addr/cidr';
import { hasCode } from '../../errors';
import type { NetNs } from '../../netns';
import { APPLY_TIMEOUT_MS, execIn, mustExec, type HeldLock, type Input } from '../exec';
import { IPT_PREFIX, CANARY_COMMENT } from '../constants';
import { familiesUsed, familyOf, type DesiredState, type Service } from '../model';
import type { NatState } from '../changes';
import { IPT_CANARY, SERVICES, kubeSepChain, kubeSvcChain, renderIptables, type IptTable } from './ruleset';
import { chainDigest, hookKey, hookKeyOf, restoreChunks, restorePayload, type Live } from './restore';
import {
  mayHoldRules,
  type AffinityEntry,
  type Applied,
  type Backend,
  type Counter,
  type ServiceCounters,
  type SyncResult,
  type SyncRound,
} from '../backends/types';

export type IptablesMode = 'legacy' | 'nft';

const bin = (mode: IptablesMode, family: Family, tool: '' | '-save' | '-restore') =>
  `${family === 6 ? 'ip6tables' : 'iptables'}-${mode}${tool}`;

/**
 * Which iptables the node's other users (kubelet, Docker, a CNI plugin) write
 * with: count the rules each mode holds and take the busier one (as
 * iptables-wrappers does); when both are empty, what `iptables` itself is.
 */
export async function detectMode(ns: NetNs): Promise<IptablesMode> {
  const count = async (mode: IptablesMode) => {
    let n = 0;
    for (const family of [4, 6] as const) {
      const r = await execIn(ns, bin(mode, family, '-save'), []).catch(() => undefined);
      if (r?.code === 0) n += r.stdout.split('\n').filter((l) => l.startsWith('-')).length;
    }
    return n;
  };
  const [legacy, nft] = [await count('legacy'), await count('nft')];
  if (legacy > nft) return 'legacy';
  if (nft > legacy) return 'nft';
  const v = await execIn(ns, 'iptables', ['--version']).catch(() => undefined);
  return v?.stdout.includes('legacy') ? 'legacy' : 'nft';
}

/** Parses iptables-save output into what restorePayload needs to know about the live tables. */
export function parseLive(save: string): Live {
  const live: Live = { chains: { nat: new Map(), filter: new Map() }, hooks: new Map() };
  let table: IptTable | undefined;
  for (const line of save.split('\n')) {
    if (line.startsWith('*')) table = line === '*nat' ? 'nat' : line === '*filter' ? 'filter' : undefined;
    if (!table) continue;
    const decl = /^:(\S+) /.exec(line);
    if (decl && decl[1]!.startsWith(IPT_PREFIX)) live.chains[table].set(decl[1]!, undefined);
    const hook = /^-A (PREROUTING|OUTPUT|POSTROUTING|INPUT|FORWARD) .*-j (TSNET-\S+)$/.exec(line);
    if (hook) {
      const key = hookKey(table, hook[1]!, hook[2]!);
      live.hooks.set(key, [...(live.hooks.get(key) ?? []), line]);
    }
  }
  return live;
}

export class IptablesBackend implements Backend {
  readonly name = 'iptables' as const;
  readonly tables = 'iptables' as const;
  /** `lock`: the engine's, kept by every iptables-restore while it runs (see ExecOptions). */
  constructor(
    readonly ns: NetNs,
    readonly mode: IptablesMode,
    private readonly lock: HeldLock = {},
  ) {}

  render(st: DesiredState): string {
    return (familiesUsed(st).length ? familiesUsed(st) : [4 as const])
      .map((f) => {
        const rs = renderIptables(st, f);
        return `# ${bin(this.mode, f, '-restore')} -w 5 --noflush\n${restorePayload(rs, undefined).payload}`;
      })
      .join('\n');
  }

  /** Whether the canary rule is still in both tables of `family`. */
  async canaryPresent(family: Family): Promise<boolean> {
    for (const table of ['nat', 'filter']) {
      const r = await execIn(this.ns, bin(this.mode, family, ''), ['-w', '5', '-t', table, '-S', IPT_CANARY]);
      if (r.code !== 0 || !r.stdout.includes(CANARY_COMMENT)) return false;
    }
    return true;
  }

  private async readLive(family: Family): Promise<Live> {
    const save = await mustExec(this.ns, 'reading the live rules', bin(this.mode, family, '-save'), []);
    return parseLive(save);
  }

  private async restore(family: Family, payload: Input): Promise<void> {
    if (payload !== '')
      await mustExec(
        this.ns,
        'applying NAT rules',
        bin(this.mode, family, '-restore'),
        ['-w', '5', '--noflush'],
        payload,
        {
          timeoutMs: APPLY_TIMEOUT_MS,
          holdFd: this.lock.fd,
        },
      );
  }

  async sync(state: NatState, applied: Applied | undefined, force: boolean, round?: SyncRound): Promise<SyncResult> {
    // Every sync renders the whole ruleset (then writes only the chains that differ).
    const st: DesiredState = { services: state.services(), rules: state.rules, forwards: state.forwards };
    const prevState = round?.before();
    const result: SyncResult = {
      full: false,
      written: 0,
      deleted: 0,
      applied: { backend: this.name, mode: this.mode, clean: true, families: {} },
    };
    for (const family of [4, 6] as const) {
      const rs = renderIptables(st, family);
      const used = familiesUsed(st).includes(family);
      const prev =
        applied?.backend === this.name && applied.mode === this.mode && applied.clean
          ? applied.families[family]
          : undefined;
      if (!used) {
        if (force || mayHoldRules(applied, 'iptables', family)) await this.teardownFamily(family);
        continue;
      }
      let done = false;
      if (prev && !force) {
        // Partial: only what changed since the last sync, guarded by the canary in the same transaction.
        const live: Live = {
          chains: { nat: new Map(Object.entries(prev.nat ?? {})), filter: new Map(Object.entries(prev.filter ?? {})) },
          hooks: new Map(rs.hooks.map((h) => [hookKeyOf(h), []])),
        };
        const { payload, written, deleted } = restorePayload(rs, live, {
          prev: prevState && renderIptables(prevState, family),
          guardCanary: true,
        });
        try {
          await this.restore(family, payload);
          result.written += written;
          result.deleted += deleted;
          done = true;
        } catch {
          // The canary is gone (someone flushed the rules) or the live rules are not what we wrote: full sync.
        }
      }
      if (!done) {
        result.full = true;
        // Streamed: iptables-restore parses the first chains while the rest are formatted.
        const { chunks, written, deleted } = restoreChunks(rs, await this.readLive(family));
        await this.restore(family, chunks);
        result.written += written;
        result.deleted += deleted;
      }
      const digests = (t: IptTable) =>
        Object.fromEntries(rs.chains.filter((c) => c.table === t).map((c) => [c.name, chainDigest(c)]));
      result.applied.families[family] = { nat: digests('nat'), filter: digests('filter') };
    }
    return result;
  }

  /** Removes every chain and hook of ours in `family` (what is left when the last service goes, or the backend changes). */
  async teardownFamily(family: Family): Promise<void> {
    // A missing tool (no ip6tables) means nothing of ours can be there; any other failure must not pass for "nothing to remove".
    const live = await this.readLive(family).catch((err: unknown) => {
      if (hasCode(err, 'ENOENT')) return undefined;
      throw err;
    });
    if (!live) return;
    const out: string[] = [];
    for (const table of ['nat', 'filter'] as const) {
      const hooks = [...live.hooks].filter(([k]) => k.startsWith(`${table}:`)).flatMap(([, lines]) => lines);
      const chains = [...live.chains[table].keys()];
      if (!hooks.length && !chains.length) continue;
      out.push(
        `*${table}`,
        ...chains.map((c) => `:${c} - [0:0]`),
        ...hooks.map((h) => h.replace(/^-A/, '-D')),
        ...chains.map((c) => `-X ${c}`),
        'COMMIT',
      );
    }
    if (out.length) await this.restore(family, `${out.join('\n')}\n`);
  }

  async teardown(): Promise<void> {
    for (const family of [4, 6] as const) await this.teardownFamily(family);
  }

  /** Affinity pins are `-m recent` lists, one per endpoint chain: /proc/net/xt_recent/NAME in the namespace (no expiry: the kernel keeps last-seen jiffies). */
  async affinity(s: Service): Promise<Record<string, AffinityEntry[]>> {
    const out: Record<string, AffinityEntry[]> = {};
    if (s.affinitySeconds === undefined) return out;
    for (const e of s.endpoints) {
      const id = formatHostPort(e.ip, e.port);
      let text = '';
      try {
        const fd = this.ns.openFile(`/proc/thread-self/net/xt_recent/${kubeSepChain(s, e.ip, e.port)}`);
        try {
          text = fs.readFileSync(fd, 'utf8');
        } finally {
          fs.closeSync(fd);
        }
      } catch (err) {
        if (!hasCode(err, 'ENOENT')) throw err; // no list yet: nobody pinned
      }
      out[id] = [...text.matchAll(/^src=(\S+)/gm)].map((m) => ({ client: m[1]! }));
    }
    return out;
  }

  /**
   * Counters from `iptables-save -c`: a service's are those of its dispatch
   * rule (or, without endpoints, of its REJECT), an endpoint's those of the
   * DNAT rule in its TSNET-SEP chain.
   */
  async counters(st: DesiredState): Promise<Map<string, ServiceCounters>> {
    const rules = new Map<string, { counter: Counter; line: string }[]>();
    for (const family of familiesUsed(st)) {
      const r = await execIn(this.ns, bin(this.mode, family, '-save'), ['-c']);
      if (r.code !== 0) continue;
      let table = '';
      for (const line of r.stdout.split('\n')) {
        if (line.startsWith('*')) table = line.slice(1);
        const m = /^\[(\d+):(\d+)\] -A (\S+) (.*)$/.exec(line);
        if (!m || !m[3]!.startsWith(IPT_PREFIX)) continue;
        const key = `${family}/${table}/${m[3]}`;
        rules.set(key, [
          ...(rules.get(key) ?? []),
          { counter: { packets: Number(m[1]), bytes: Number(m[2]) }, line: m[4]! },
        ]);
      }
    }
    const zero = (): Counter => ({ packets: 0, bytes: 0 });
    const out = new Map<string, ServiceCounters>();
    for (const s of st.services) {
      const f = familyOf(s.vip);
      const service = s.endpoints.length
        ? rules.get(`${f}/nat/${SERVICES}`)?.find((r) => r.line.endsWith(`-j ${kubeSvcChain(s)}`))?.counter
        : rules
            .get(`${f}/filter/${SERVICES}`)
            ?.find((r) => r.line.includes(JSON.stringify(`${s.name} has no endpoints`)))?.counter;
      const endpoints: Record<string, Counter> = {};
      for (const e of s.endpoints) {
        const id = formatHostPort(e.ip, e.port);
        endpoints[id] =
          rules.get(`${f}/nat/${kubeSepChain(s, e.ip, e.port)}`)?.find((r) => r.line.includes('-j DNAT'))?.counter ??
          zero();
      }
      out.set(s.name, { service: service ?? zero(), endpoints });
    }
    return out;
  }
}
