/**
 * The nftables backend over netlink (the default): every sync one nf_tables
 * batch on NETLINK_NETFILTER, applied by the kernel as one transaction; the
 * canary and the counters read back with nf_tables dumps. No netfilter
 * binary is needed on the node; `nft list table ip tsnet` and `nft monitor`
 * show what it did as if nft had done it (see src/nat/nftables).
 */
import type { Family } from '../../addr/cidr';
import { TsnetError } from '../../errors';
import type { NetNs } from '../../netns';
import type { NetlinkSocket } from '../../netlink/socket';
import { decodeAttrs, encodeAttrs, type AttrObject, type Decoded, type Table } from '../../netlink/attrs';
import { NFTA_RULE, NFTA_SET_ELEM, NFTA_SET_ELEM_LIST, NFT_MSG, nfproto, nftMsg } from '../../netlink/nftables';
import { nfgenmsg } from '../../netlink/nfnetlink';
import { CANARY_COMMENT, NFT_TABLE } from '../constants';
import { decodeExpr } from './expr';
import {
  CANARY,
  ENDPOINTS,
  ENDPOINTS_WEIGHTED,
  ENDPOINT_KEY,
  NO_ENDPOINTS,
  SERVICE_IPS,
  SERVICE_KEY,
} from './table-names';
import { decodeKey } from './lowering';
import { keyId } from './ruleset';
import { encodePlan, type Batch } from './batch';
import type { Plan } from './plan';
import { NftablesBackend, type TableCounters } from './backend';
import type { AffinityEntry, Counter } from '../backends/types';

export class NetlinkBackend extends NftablesBackend {
  readonly name = 'netlink' as const;
  protected override readonly chunkable = true;

  constructor(ns: NetNs) {
    super(ns);
  }

  /** The namespace's nf_tables socket, kept open (see NetNs.netfilter: closing one costs an RCU grace period). */
  private async withSocket<T>(fn: (s: NetlinkSocket) => Promise<T>): Promise<T> {
    return fn(this.ns.netfilter);
  }

  protected async apply(plan: Pick<Plan, 'ops' | 'existing'>, family: Family): Promise<void> {
    if (!plan.ops.length) return;
    await this.withSocket(async (s) => {
      let batch: Batch | undefined;
      const { errors, overrun } = await s.transactAsync((seq) => (batch = encodePlan(plan, family, seq)));
      if (errors.size) {
        // The kernel reports every failing message; the first is the cause (later ones may only echo it).
        const [seq, err] = [...errors].sort(([a], [b]) => a - b)[0]!;
        throw new TsnetError(
          `applying NAT rules in ${this.ns.label}: ${batch?.describe(seq) ?? 'the nf_tables batch'} in table ${family === 6 ? 'ip6' : 'ip'} ${NFT_TABLE}: ${err.message}`,
          { code: err.code, errno: err.errno!, cause: err },
        );
      }
      if (overrun)
        throw new TsnetError(
          `applying NAT rules in ${this.ns.label}: the kernel's replies overflowed the receive buffer; the outcome is unknown (the next sync is a full one)`,
          { code: 'ENOBUFS' },
        );
    });
  }

  /** A dump of `msg` objects of `table`'s kind matching `attrs`, decoded; undefined when the table or set is not there. */
  private async dump<T extends Table>(
    s: NetlinkSocket,
    family: Family,
    msg: number,
    attrs: AttrObject,
    table: T,
  ): Promise<Decoded<T>[] | undefined> {
    try {
      const msgs = await s.dump(nftMsg(msg), Buffer.concat([nfgenmsg(nfproto(family)), encodeAttrs(table, attrs)]));
      return msgs.filter((m) => m.type === nftMsg(msg - 1)).map((m) => decodeAttrs(table, m.payload.subarray(4)));
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return undefined; // no such table or set
      throw err;
    }
  }

  /** Whether the table exists with its canary rule: `nft flush ruleset` deletes the table, `flush table` the rule. */
  async canaryPresent(family: Family): Promise<boolean> {
    return this.withSocket(async (s) => {
      const rules = await this.dump(s, family, NFT_MSG.GETRULE, { table: NFT_TABLE, chain: CANARY }, NFTA_RULE);
      return (rules ?? []).some((r) => r.chain === CANARY && r.userdata?.includes(CANARY_COMMENT));
    });
  }

  protected async readAffinitySet(family: Family, set: string): Promise<AffinityEntry[]> {
    return this.withSocket(async (s) =>
      affinityEntries(
        (await this.dump(s, family, NFT_MSG.GETSETELEM, { table: NFT_TABLE, set }, NFTA_SET_ELEM_LIST)) ?? [],
        family,
      ),
    );
  }

  protected async readCounters(family: Family): Promise<TableCounters | undefined> {
    return this.withSocket(async (s) => {
      const out: TableCounters = { elements: new Map(), chains: new Map() };
      for (const set of [SERVICE_IPS, NO_ENDPOINTS, ENDPOINTS, ENDPOINTS_WEIGHTED]) {
        const lists = await this.dump(s, family, NFT_MSG.GETSETELEM, { table: NFT_TABLE, set }, NFTA_SET_ELEM_LIST);
        if (!lists) return undefined;
        const m = new Map<string, Counter>();
        for (const l of lists) {
          for (const e of l.elements ?? []) {
            const c = counterOf(e);
            if (c && e.key?.value) m.set(elementKey(set, family, e), c);
          }
        }
        out.elements.set(set, m);
      }
      for (const r of (await this.dump(s, family, NFT_MSG.GETRULE, { table: NFT_TABLE }, NFTA_RULE)) ?? []) {
        if (!r.chain?.startsWith('sep-')) continue;
        const c = counterOf({ expressions: r.expressions });
        if (c) out.chains.set(r.chain, c);
      }
      return out;
    });
  }
}

type ElementAttrs = Decoded<typeof NFTA_SET_ELEM>;

/** The addresses in a set keyed by `ip saddr` (an affinity set), with the ms each has left. */
function affinityEntries(lists: Decoded<typeof NFTA_SET_ELEM_LIST>[], family: Family): AffinityEntry[] {
  const out: AffinityEntry[] = [];
  for (const l of lists) {
    for (const e of l.elements ?? []) {
      if (!e.key?.value) continue;
      const [client] = decodeKey({ fields: ['saddr'] }, e.key.value, family, false) as [string];
      out.push(e.expiration === undefined ? { client } : { client, expiresMs: Number(e.expiration) });
    }
  }
  return out;
}

/** An element's keyId, from what the kernel dumped (an interval's end joined to its start: `... . 0-1`). */
function elementKey(set: string, family: Family, e: ElementAttrs): string {
  const key = set === SERVICE_IPS || set === NO_ENDPOINTS ? SERVICE_KEY : ENDPOINT_KEY;
  const interval = set === ENDPOINTS_WEIGHTED;
  const start = decodeKey(key, e.key!.value!, family, interval);
  if (interval && e.keyEnd?.value) {
    const end = decodeKey(key, e.keyEnd.value, family, interval);
    const [a, b] = [start[start.length - 1], end[end.length - 1]];
    if (a !== b) start[start.length - 1] = [a as number, b as number];
  }
  return keyId(start);
}

/** The counter among an element's or a rule's expressions (NFTA_SET_ELEM_EXPR, or one of ..._EXPRESSIONS). */
function counterOf(e: Pick<ElementAttrs, 'expr' | 'expressions'>): Counter | undefined {
  for (const x of [...(e.expr ? [e.expr] : []), ...(e.expressions ?? [])]) {
    const d = decodeExpr(x);
    if (d?.kind === 'counter') return { packets: Number(d.packets ?? 0n), bytes: Number(d.bytes ?? 0n) };
  }
  return undefined;
}
