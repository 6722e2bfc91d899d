/**
 * The iptables ruleset as iptables-restore text: each rule formatted (the
 * only place that knows iptables syntax), each chain's lines and digest made
 * once, and the payload of a full or partial sync in sorted chain order
 * (with iptables-nft, any other order is many times slower at scale: bench/nat.ts), streamed in chunks.
 */
import { hash } from 'node:crypto';
import { formatProbability } from '../model';
import {
  IPT_CANARY,
  SERVICES,
  canaryChain,
  type IptChain,
  type IptHook,
  type IptRule,
  type IptRuleset,
  type IptTable,
} from './ruleset';

const hex = (n: number) => `0x${n.toString(16)}`;

/** One rule as iptables-restore / iptables-save text, without the leading `-A CHAIN`. */
export function formatRule(r: IptRule): string {
  const p: string[] = [];
  if (r.comment !== undefined) p.push('-m comment --comment', JSON.stringify(r.comment));
  if (r.src !== undefined) p.push(r.srcNot ? '!' : '', '-s', r.src);
  if (r.dst !== undefined) p.push(r.dstNot ? '!' : '', '-d', r.dst);
  if (r.dstLocal) p.push('-m addrtype --dst-type LOCAL');
  if (r.out !== undefined) p.push('-o', r.out);
  if (r.outNot !== undefined) p.push('!', '-o', r.outNot);
  if (r.proto !== undefined) p.push('-p', r.proto);
  if (r.dport !== undefined) p.push(`-m ${r.proto} --dport`, String(r.dport));
  if (r.ct) {
    p.push('-m conntrack');
    if (r.ct.state) p.push(r.ct.stateNot ? '!' : '', '--ctstate', r.ct.state.join(','));
    if (r.ct.origDstPort !== undefined) p.push('--ctorigdstport', String(r.ct.origDstPort));
    if (r.ct.replSrc !== undefined) p.push('--ctreplsrc', r.ct.replSrc);
    if (r.ct.replSrcPort !== undefined) p.push('--ctreplsrcport', String(r.ct.replSrcPort));
  }
  if (r.mark) p.push('-m mark', r.mark.not ? '!' : '', '--mark', `${hex(r.mark.mark)}/${hex(r.mark.mark)}`);
  if (r.recent) {
    p.push('-m recent --name', r.recent.name);
    p.push(r.recent.op === 'set' ? '--set' : `--rcheck --seconds ${r.recent.seconds} --reap`);
  }
  if (r.probability !== undefined) p.push('-m statistic --mode random --probability', formatProbability(r.probability));
  const t = r.target;
  switch (t.kind) {
    case 'jump':
      p.push('-j', t.chain);
      break;
    case 'DNAT':
      p.push('-j DNAT --to-destination', t.to);
      break;
    case 'SNAT':
      p.push('-j SNAT --to-source', t.to, t.randomFully ? '--random-fully' : '');
      break;
    case 'MASQUERADE':
      p.push('-j MASQUERADE', t.randomFully ? '--random-fully' : '');
      break;
    case 'MARK':
      p.push(`-j MARK --${t.op}-mark`, hex(t.mark));
      break;
    default:
      p.push('-j', t.kind);
  }
  return p.filter((x) => x !== '').join(' ');
}

/**
 * A chain's rendered lines, and a digest of them (what partial sync
 * compares). Both are kept per chain object: a sync asks for each several
 * times (is it changed, its payload, the record), and 60,000 chains
 * formatted three times cost seconds.
 */
const linesOf = new WeakMap<IptChain, string[]>();
const digestOf = new WeakMap<IptChain, string>();
export function chainLines(c: IptChain): string[] {
  let lines = linesOf.get(c);
  if (!lines) linesOf.set(c, (lines = c.rules.map((r) => `-A ${c.name} ${formatRule(r)}`)));
  return lines;
}
export function chainDigest(c: IptChain): string {
  let d = digestOf.get(c);
  // crypto.hash (one call, no Hash object): three times faster for 60,000 small chains.
  if (!d) digestOf.set(c, (d = hash('sha256', chainLines(c).join('\n'), 'base64url').slice(0, 22)));
  return d;
}

/** What the applier knows about the live tables: which of our chains exist, which hooks are present. */
export interface Live {
  /** table -> chain -> digest of what was last written (undefined: exists, content unknown). */
  chains: Record<IptTable, Map<string, string | undefined>>;
  /** Hooks already present: hookKey -> their lines as iptables-save prints them. */
  hooks: Map<string, string[]>;
}

/**
 * A hook's identity: table, built-in chain, and our chain it jumps to (OUTPUT
 * exists in both nat and filter). Matching on this rather than on the whole
 * line keeps us independent of how iptables-save orders match options.
 */
export const hookKey = (table: IptTable, chain: string, target: string): string => `${table}:${chain}->${target}`;
export const hookKeyOf = (h: IptHook): string => hookKey(h.table, h.chain, h.rule.target.chain);

/**
 * The rules `c` adds at the end of what `old` (the chain as last written,
 * when its digest confirms that) already holds; undefined when the chain
 * must be rewritten. Appending spares the kernel deleting and re-adding the
 * chain's rules, which iptables-nft pays for in every transaction (see bench/nat.ts).
 */
function appendedLines(c: IptChain, old: IptChain | undefined, liveDigest: string | undefined): string[] | undefined {
  if (!old || c.name === SERVICES || liveDigest !== chainDigest(old)) return undefined;
  const before = chainLines(old);
  const after = chainLines(c);
  if (after.length <= before.length || before.some((l, i) => l !== after[i])) return undefined;
  return after.slice(before.length);
}

const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * The iptables-restore --noflush payload taking the live tables to `rs`:
 * declaring a chain (`:NAME - [0:0]`) flushes it, so only chains whose digest
 * changed are declared and rewritten (MinimizeIPTablesRestore; or only
 * appended to, when `o.prev`, the ruleset last written, shows they only
 * grew); the dispatch chains are always rewritten; stale chains of ours are
 * flushed and deleted in the same transaction; missing hooks are inserted at
 * the top of their built-in chain. Nothing else in the tables is touched.
 * Without `live` everything is written (a full sync).
 *
 * `o.guardCanary` puts a check of the canary in front of each table's
 * changes (both tables, changed or not): `-C` fails the table's transaction
 * when the rule is gone (the table was flushed), so a partial sync and its
 * flush check cost one iptables-restore instead of three processes. (`-C` is
 * also the cheap test: with iptables-nft a `-D`/`-R` of the canary loads
 * the whole cache, `-C` does not.)
 */
export function restorePayload(
  rs: IptRuleset,
  live: Live | undefined,
  o: { prev?: IptRuleset; guardCanary?: boolean } = {},
): { payload: string; written: number; deleted: number } {
  const r = restoreChunks(rs, live, o);
  return { payload: [...r.chunks].join(''), written: r.written, deleted: r.deleted };
}

/**
 * restorePayload as pieces of ~64 KiB, formatted as they are taken: a full
 * sync feeds iptables-restore while the rest is still being written, so the
 * tool parses on one core while tsnet formats on the other.
 */
export function restoreChunks(
  rs: IptRuleset,
  live: Live | undefined,
  o: { prev?: IptRuleset; guardCanary?: boolean } = {},
): { chunks: Iterable<string>; written: number; deleted: number } {
  const plans: {
    table: IptTable;
    changed: IptChain[];
    stale: string[];
    hooks: IptHook[];
    appends: Map<string, string[] | undefined>;
  }[] = [];
  let written = 0,
    deleted = 0;
  for (const table of ['nat', 'filter'] as const) {
    const want = rs.chains.filter((c) => c.table === table);
    const have = live?.chains[table] ?? new Map<string, string | undefined>();
    // Declared and filled in sorted order: iptables-nft-restore is many times slower at scale when a payload's
    // chains come in any other order (kube-proxy sorts them too; bench/nat.ts).
    // A chain with no recorded digest is rewritten without computing its own (a full sync formats each once, when written).
    const changed = want
      .filter(
        (c) => c.name === SERVICES || !live || have.get(c.name) === undefined || have.get(c.name) !== chainDigest(c),
      )
      .sort(byName);
    const wanted = new Set(want.map((c) => c.name));
    const stale = [...have.keys()].filter((n) => !wanted.has(n)).sort();
    const hooks = rs.hooks.filter((h) => h.table === table && !live?.hooks.has(hookKeyOf(h)));
    if (!changed.length && !stale.length && !hooks.length && !o.guardCanary) continue;
    const before = new Map((o.prev?.chains ?? []).filter((c) => c.table === table).map((c) => [c.name, c]));
    const appends = new Map(
      changed.map((c) => [
        c.name,
        live && before.size ? appendedLines(c, before.get(c.name), have.get(c.name)) : undefined,
      ]),
    );
    plans.push({ table, changed, stale, hooks, appends });
    written += changed.length;
    deleted += stale.length;
  }
  function* lines(): Generator<string> {
    for (const { table, changed, stale, hooks, appends } of plans) {
      yield `*${table}`;
      if (o.guardCanary) yield `-C ${IPT_CANARY} ${formatRule(canaryChain(table).rules[0]!)}`;
      for (const c of changed) if (!appends.get(c.name)) yield `:${c.name} - [0:0]`;
      for (const n of stale) yield `:${n} - [0:0]`;
      for (const c of changed) {
        yield* appends.get(c.name) ?? chainLines(c);
        chainDigest(c); // the sync records every chain's digest: hashed here, while the tool parses, not after it
      }
      for (const n of stale) yield `-X ${n}`;
      for (const h of hooks) yield `-I ${h.chain} 1 ${formatRule(h.rule)}`;
      yield 'COMMIT';
    }
  }
  function* chunks(): Generator<string> {
    let buf: string[] = [];
    let size = 0;
    for (const l of lines()) {
      buf.push(l);
      size += l.length + 1;
      if (size >= 64 * 1024) {
        yield `${buf.join('\n')}\n`;
        buf = [];
        size = 0;
      }
    }
    if (buf.length) yield `${buf.join('\n')}\n`;
  }
  return { chunks: { [Symbol.iterator]: chunks }, written, deleted };
}
