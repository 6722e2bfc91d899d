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
import { decodeAttrs, encodeAttrs, type AttrObject } from '../../netlink/attrs';
import { NFPROTO, NFTA_RULE, NFTA_SET_ELEM_LIST, NFT_MSG, nftMsg } from '../../netlink/nftables';
import { CANARY_COMMENT, NFT_TABLE } from '../constants';
import { decodeExpr } from './expr';
import { CANARY, ENDPOINTS, ENDPOINTS_WEIGHTED, ENDPOINT_KEY, NO_ENDPOINTS, SERVICE_IPS, SERVICE_KEY } from './layout';
import { decodeKey } from './lowering';
import { elementKeyId } from './ids';
import { encodePlan } from './batch';
import type { Op } from './plan';
import type { NamedSet } from './ruleset';
import { NftablesBackend, type TableCounters } from './backend';
import type { AffinityEntry, Counter } from '../backends/types';

const nfgen = (family: Family) => Buffer.from([family === 6 ? NFPROTO.IPV6 : NFPROTO.IPV4, 0, 0, 0]);

export class NetlinkBackend extends NftablesBackend {
  readonly name = 'netlink' as const;

  constructor(ns: NetNs) {
    super(ns);
  }

  /** The namespace's nf_tables socket, kept open (see NetNs.netfilter: closing one costs an RCU grace period). */
  private async withSocket<T>(fn: (s: NetlinkSocket) => Promise<T>): Promise<T> {
    return fn(this.ns.netfilter);
  }

  protected async apply(ops: readonly Op[], family: Family, declared: readonly NamedSet[]): Promise<void> {
    if (!ops.length) return;
    await this.withSocket(async (s) => {
      let what = new Map<number, string>();
      const { errors, overrun } = s.transact((seq) => {
        const batch = encodePlan(ops, family, declared, seq);
        what = batch.what;
        return batch;
      });
      if (errors.size) {
        // The kernel reports every failing message; the first is the cause (later ones may only echo it).
        const [seq, err] = [...errors].sort(([a], [b]) => a - b)[0]!;
        throw new TsnetError(
          `applying NAT rules in ${this.ns.label}: ${what.get(seq) ?? 'the nf_tables batch'} in table ${family === 6 ? 'ip6' : 'ip'} ${NFT_TABLE}: ${err.message}`,
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

  private async dump(
    s: NetlinkSocket,
    family: Family,
    msg: number,
    attrs: AttrObject,
    table: typeof NFTA_RULE,
  ): Promise<AttrObject[] | undefined> {
    try {
      const msgs = await s.dump(nftMsg(msg), Buffer.concat([nfgen(family), encodeAttrs(table, attrs)]));
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
      return (rules ?? []).some(
        (r) => r.chain === CANARY && (r.userdata as Buffer | undefined)?.includes(CANARY_COMMENT),
      );
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
          for (const e of (l.elements ?? []) as AttrObject[]) {
            const c = counterOf(e);
            if (c && e.key) m.set(elementKey(set, family, e), c);
          }
        }
        out.elements.set(set, m);
      }
      for (const r of (await this.dump(s, family, NFT_MSG.GETRULE, { table: NFT_TABLE }, NFTA_RULE)) ?? []) {
        const chain = r.chain as string;
        if (!chain.startsWith('sep-')) continue;
        for (const x of (r.expressions ?? []) as AttrObject[]) {
          const e = decodeExpr(x);
          if (e?.kind === 'counter')
            out.chains.set(chain, { packets: Number(e.packets ?? 0n), bytes: Number(e.bytes ?? 0n) });
        }
      }
      return out;
    });
  }
}

/** The addresses in a set keyed by `ip saddr` (an affinity set), with the ms each has left. */
function affinityEntries(lists: AttrObject[], family: Family): AffinityEntry[] {
  const out: AffinityEntry[] = [];
  for (const l of lists) {
    for (const e of (l.elements ?? []) as AttrObject[]) {
      const key = (e.key as AttrObject | undefined)?.value as Buffer | undefined;
      if (!key) continue;
      const [client] = decodeKey({ fields: ['saddr'] }, key, family, false) as [string];
      const expires = e.expiration as bigint | undefined;
      out.push(expires === undefined ? { client } : { client, expiresMs: Number(expires) });
    }
  }
  return out;
}

/** An element's key as nft writes it (`10.96.0.1 . tcp . 80 . 0-1`), from what the kernel dumped. */
function elementKey(set: string, family: Family, e: AttrObject): string {
  const key = set === SERVICE_IPS || set === NO_ENDPOINTS ? SERVICE_KEY : ENDPOINT_KEY;
  const interval = set === ENDPOINTS_WEIGHTED;
  const start = decodeKey(key, (e.key as AttrObject).value as Buffer, family, interval);
  if (interval && e.keyEnd) {
    const end = decodeKey(key, (e.keyEnd as AttrObject).value as Buffer, family, interval);
    const [a, b] = [start[start.length - 1], end[end.length - 1]];
    if (a !== b) start[start.length - 1] = [a as number, b as number];
  }
  return elementKeyId({ key: start });
}

/** An element's counter (NFTA_SET_ELEM_EXPR, or the first of NFTA_SET_ELEM_EXPRESSIONS). */
function counterOf(e: AttrObject): Counter | undefined {
  const exprs = [e.expr, ...((e.expressions ?? []) as AttrObject[])].filter(Boolean) as AttrObject[];
  for (const x of exprs) {
    const d = decodeExpr(x);
    if (d?.kind === 'counter') return { packets: Number(d.packets ?? 0n), bytes: Number(d.bytes ?? 0n) };
  }
  return undefined;
}
