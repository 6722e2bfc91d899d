/**
 * An nftables table as typed data: what src/nat/nftables/layout.ts builds
 * from the NAT model, and what the two serialisers turn into `nft -f` text
 * (./text.ts) or nf_tables netlink messages (./batch.ts). Nothing here
 * knows either syntax.
 *
 * A rule is an ordered list of items, each a match or a statement, as nft
 * reads them left to right. Keys of sets and maps, and the keys rules look
 * up, are lists of fields (a concatenation when there are several).
 */
import type { Proto } from '../model';

export type Family = 4 | 6;

/** What a set key, a map value or a lookup is made of: nft's `typeof` expressions. */
export type Field =
  | 'saddr'
  | 'daddr' // ip/ip6 saddr, daddr (the table's family)
  | 'l4proto' // meta l4proto
  | 'sport'
  | 'dport' // th sport, th dport
  | 'mark' // meta mark
  | 'numgen'; // numgen random mod N (the modulus is the rule's, see KeyExpr)

/** A key as a rule computes it: fields, with the modulus of a numgen field. */
export interface KeyExpr {
  fields: Field[];
  /** The modulus of the numgen field, when there is one. */
  mod?: number;
}

/** One value of an element key or map value: an address, a protocol, a port or index, or (last field of an interval set) a range. */
export type Value = string | number | readonly [number, number];

export type Item =
  // --- matches
  | { kind: 'addr'; field: 'saddr' | 'daddr'; cidr: string; not?: boolean } // ip saddr [!=] 10.0.0.0/8
  | { kind: 'local-daddr' } // fib daddr type local
  | { kind: 'l4proto'; proto: Proto } // meta l4proto tcp
  | { kind: 'dport'; port: number } // th dport 80
  | { kind: 'oifname'; name: string; not?: boolean } // oifname [!=] "br0"
  | { kind: 'ct-new' } // ct state new
  | { kind: 'ct-not-established' } // ct state & (established | related) == 0
  | { kind: 'ct-dnat'; not?: boolean } // ct status dnat | ct status & dnat == 0
  | { kind: 'ct-orig-dport'; port: number } // ct original proto-dst 3308
  | { kind: 'ct-reply-saddr'; ip: string } // ct reply ip saddr 10.0.0.9
  | { kind: 'ct-reply-sport'; port: number } // ct reply proto-src 3309
  | { kind: 'mark-clear'; bits: number } // meta mark & 0x40000 == 0
  | { kind: 'in-set'; key: KeyExpr; set: string } // ip saddr . ip daddr @hairpin
  // --- statements
  | { kind: 'counter' }
  | { kind: 'verdict'; verdict: 'accept' | 'drop' | 'return' }
  | { kind: 'jump' | 'goto'; chain: string }
  | { kind: 'vmap'; key: KeyExpr; map: string | AnonymousVmap } // KEY vmap @map, KEY vmap { ... }
  | { kind: 'dnat'; ip: string; port: number } // dnat to 10.0.0.2:8080
  | { kind: 'dnat-map'; key: KeyExpr; map: string } // dnat ip to KEY map @map
  | { kind: 'snat'; ip: string } // snat to 1.2.3.4 fully-random
  | { kind: 'masquerade' } // masquerade fully-random
  | { kind: 'mark-set'; op: 'or' | 'xor'; bits: number } // meta mark set meta mark | 0x40000
  | { kind: 'set-update'; key: KeyExpr; set: string } // update @aff { ip saddr }
  | { kind: 'reject' };

/** An anonymous verdict map written inside its rule (`vmap { 0 : goto a, 1-2 : goto b }`): a first-class set of its own on the wire. */
export interface AnonymousVmap {
  interval: boolean;
  elements: Element[];
}

export interface Rule {
  items: Item[];
  comment?: string;
}

export interface BaseHook {
  type: 'nat' | 'filter';
  hook: 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting';
  priority: number;
}

export interface Chain {
  name: string;
  hook?: BaseHook;
  rules: Rule[];
}

/** Where a verdict map element sends the packet. */
export interface Target {
  verdict: 'goto' | 'jump';
  chain: string;
}

export interface Element {
  key: Value[];
  /** A map's value: fields (data map), or a chain to go to (verdict map). */
  data?: Value[] | Target;
  comment?: string;
}

export interface NamedSet {
  name: string;
  key: KeyExpr;
  /** For maps: the value's fields, or 'verdict'. */
  data?: KeyExpr | 'verdict';
  /** Ranges in the last key field (weights). */
  interval?: boolean;
  /** A dynamic set whose elements expire after this many seconds (affinity). */
  timeout?: number;
  /** Every element counts the packets and bytes that matched it. */
  counter?: boolean;
  comment?: string;
}

/**
 * Elements read by position: an array, or a list that makes each element when
 * it is read (a whole table's elements then never live at once: the
 * encoder writes each and drops it).
 */
export interface ElementList {
  readonly length: number;
  at(i: number): Element | undefined;
  /** The chains its elements' verdicts name, each once, when the list can say without making its elements. */
  targets?(): Iterable<string>;
}

/** Elements `from` to `to` (exclusive) of a list, as an array. */
export function elementsOf(list: ElementList, from = 0, to = list.length): Element[] {
  const out: Element[] = [];
  for (let i = from; i < Math.min(to, list.length); i++) out.push(list.at(i)!);
  return out;
}

/** One table (`table ip tsnet` / `table ip6 tsnet`). Order is declaration order. */
export interface Ruleset {
  family: Family;
  sets: NamedSet[];
  chains: Chain[];
  /** Elements of the named sets and maps, by set name. */
  elements: Map<string, ElementList>;
}

export const isTarget = (d: Element['data']): d is Target => d !== undefined && !Array.isArray(d);

// A range of one (`3-3`) is the value itself, as nft writes and dumps it.
const valueText = (v: Value) => (!Array.isArray(v) ? String(v) : v[0] === v[1] ? String(v[0]) : `${v[0]}-${v[1]}`);

/**
 * A key's identity, as nft writes it (`10.96.0.1 . tcp . 80 . 0-1`; `3`, not
 * `3-3`): what the kernel indexes an element by. The one spelling diffs,
 * counter joins, both backends' read-backs and the nft text compare or write.
 */
export const keyId = (values: readonly Value[]): string => values.map(valueText).join(' . ');

/** Same key, same value, same comment: an element that needs no rewrite. */
export function sameElement(a: Element, b: Element): boolean {
  if (keyId(a.key) !== keyId(b.key) || a.comment !== b.comment) return false;
  if (a.data === undefined || b.data === undefined) return a.data === b.data;
  if (isTarget(a.data) || isTarget(b.data))
    return isTarget(a.data) && isTarget(b.data) && a.data.verdict === b.data.verdict && a.data.chain === b.data.chain;
  return keyId(a.data) === keyId(b.data);
}
