/**
 * The `nft -f` serialiser: a plan of operations (./plan) as nft commands, and
 * rule items as nft syntax. formatItem is the only place that knows nft's
 * rule syntax; ./lowering compiles the same items the way nft compiles this text.
 */
import { formatHostPort, parseCidr } from '../../addr/cidr';
import { NFT_TABLE } from '../constants';
import type { Op } from './plan';
import {
  elementsOf,
  isTarget,
  type Element,
  type Family,
  type Field,
  type Item,
  type KeyExpr,
  type NamedSet,
  type Rule,
  keyId,
} from './ruleset';

const ipf = (f: Family) => (f === 6 ? 'ip6' : 'ip');
const quote = (s: string) => JSON.stringify(s);
const hex = (n: number) => `0x${n.toString(16)}`;

function fieldText(f: Field, family: Family, mod?: number): string {
  switch (f) {
    case 'saddr':
    case 'daddr':
      return `${ipf(family)} ${f}`;
    case 'l4proto':
      return 'meta l4proto';
    case 'sport':
    case 'dport':
      return `th ${f}`;
    case 'mark':
      return 'meta mark';
    case 'numgen':
      return `numgen random mod ${mod ?? 1}`;
  }
}

export const keyText = (k: KeyExpr, family: Family): string =>
  k.fields.map((f) => fieldText(f, family, k.mod)).join(' . ');

/** A CIDR as nft prints it: a host prefix is the bare address. */
function cidrText(cidr: string): string {
  const c = parseCidr(cidr, { defaultPrefix: true });
  return c.prefix === (c.family === 6 ? 128 : 32) ? c.address : `${c.network}/${c.prefix}`;
}

/** An element as nft writes it inside `{ }`: key, comment, then `: value`. */
export function elementText(e: Element): string {
  const key = keyId(e.key);
  const comment = e.comment === undefined ? '' : ` comment ${quote(e.comment)}`;
  if (e.data === undefined) return `${key}${comment}`;
  const data = isTarget(e.data) ? `${e.data.verdict} ${e.data.chain}` : keyId(e.data);
  return `${key}${comment} : ${data}`;
}

/** One rule item in nft syntax. */
export function formatItem(it: Item, family: Family): string {
  const ip = ipf(family);
  switch (it.kind) {
    case 'addr':
      return `${ip} ${it.field} ${it.not ? '!= ' : ''}${cidrText(it.cidr)}`;
    case 'local-daddr':
      return 'fib daddr type local';
    case 'l4proto':
      return `meta l4proto ${it.proto}`;
    case 'dport':
      return `th dport ${it.port}`;
    case 'oifname':
      return `oifname ${it.not ? '!= ' : ''}${quote(it.name)}`;
    case 'ct-new':
      return 'ct state new';
    case 'ct-not-established':
      return 'ct state & (established | related) == 0';
    case 'ct-dnat':
      return it.not ? 'ct status & dnat == 0' : 'ct status dnat';
    case 'ct-orig-dport':
      return `ct original proto-dst ${it.port}`;
    case 'ct-reply-saddr':
      return `ct reply ${ip} saddr ${it.ip}`;
    case 'ct-reply-sport':
      return `ct reply proto-src ${it.port}`;
    case 'mark-clear':
      return `meta mark & ${hex(it.bits)} == 0`;
    case 'in-set':
      return `${keyText(it.key, family)} @${it.set}`;
    case 'counter':
      return 'counter';
    case 'verdict':
      return it.verdict;
    case 'jump':
    case 'goto':
      return `${it.kind} ${it.chain}`;
    case 'vmap':
      return typeof it.map === 'string'
        ? `${keyText(it.key, family)} vmap @${it.map}`
        : `${keyText(it.key, family)} vmap { ${it.map.elements.map(elementText).join(', ')} }`;
    case 'dnat':
      return `dnat to ${formatHostPort(it.ip, it.port)}`;
    case 'dnat-map':
      return `dnat ${ip} to ${keyText(it.key, family)} map @${it.map}`;
    case 'snat':
      return `snat to ${it.ip} fully-random`;
    case 'masquerade':
      return 'masquerade fully-random';
    case 'mark-set':
      return `meta mark set meta mark ${it.op === 'or' ? '|' : '^'} ${hex(it.bits)}`;
    case 'set-update':
      return `update @${it.set} { ${keyText(it.key, family)} }`;
    case 'reject':
      return 'reject';
  }
}

/** A rule as it follows `add rule ip tsnet CHAIN`. */
export function formatRule(r: Rule, family: Family): string {
  const body = r.items.map((i) => formatItem(i, family)).join(' ');
  return r.comment === undefined ? body : `${body} comment ${quote(r.comment)}`;
}

/** A set or map declaration body (what goes inside `{ }`). */
export function setBody(s: NamedSet, family: Family): string {
  const parts: string[] = [
    `typeof ${keyText(s.key, family)}${s.data === undefined ? '' : ` : ${s.data === 'verdict' ? 'verdict' : keyText(s.data, family)}`}`,
  ];
  const flags = [...(s.interval ? ['interval'] : []), ...(s.timeout !== undefined ? ['dynamic', 'timeout'] : [])];
  if (flags.length) parts.push(`flags ${flags.join(',')}`);
  if (s.timeout !== undefined) parts.push(`timeout ${s.timeout}s`);
  if (s.counter) parts.push('counter');
  if (s.comment !== undefined) parts.push(`comment ${quote(s.comment)}`);
  return `{ ${parts.join(' ; ')} ; }`;
}

/** nft accepts any length, but a few thousand elements per command keeps error messages and memory modest. */
const ELEMENTS_PER_COMMAND = 2000;

/** A plan as one `nft -f` script: one transaction. */
export function script(ops: readonly Op[], family: Family): string {
  const t = `${ipf(family)} ${NFT_TABLE}`;
  const lines: string[] = [];
  for (const op of ops) {
    switch (op.kind) {
      case 'add-table':
        lines.push(`add table ${t}`);
        break;
      case 'delete-table':
        lines.push(`delete table ${t}`);
        break;
      case 'add-set':
        lines.push(`add ${op.set.data === undefined ? 'set' : 'map'} ${t} ${op.set.name} ${setBody(op.set, family)}`);
        break;
      case 'delete-set':
        lines.push(`delete set ${t} ${op.name}`);
        break;
      case 'add-chain':
        lines.push(
          op.chain.hook
            ? `add chain ${t} ${op.chain.name} { type ${op.chain.hook.type} hook ${op.chain.hook.hook} priority ${op.chain.hook.priority} ; policy accept ; }`
            : `add chain ${t} ${op.chain.name}`,
        );
        break;
      case 'flush-chain':
        lines.push(`flush chain ${t} ${op.name}`);
        break;
      case 'delete-chain':
        lines.push(`delete chain ${t} ${op.name}`);
        break;
      case 'add-rules':
        for (const r of op.rules) lines.push(`add rule ${t} ${op.chain} ${formatRule(r, family)}`);
        break;
      case 'add-elements':
      case 'delete-elements':
        for (let i = 0; i < op.elements.length; i += ELEMENTS_PER_COMMAND) {
          const chunk = elementsOf(op.elements, i, i + ELEMENTS_PER_COMMAND);
          const text = op.kind === 'add-elements' ? chunk.map(elementText) : chunk.map((e) => keyId(e.key));
          lines.push(`${op.kind === 'add-elements' ? 'add' : 'delete'} element ${t} ${op.set} { ${text.join(', ')} }`);
        }
        break;
    }
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}
