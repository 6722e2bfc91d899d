/**
 * Element identity for diffs: the key (what the kernel indexes by) and a
 * value id (equal ids, equal elements).
 */
import type { Element, Value } from './ruleset';

const valueText = (v: Value) => (Array.isArray(v) ? `${v[0]}-${v[1]}` : String(v));

/** The element's key, as nft writes it (`10.96.0.1 . tcp . 80`). */
export const elementKeyId = (e: Element): string => e.key.map(valueText).join(' . ');

/** Key, value and comment: equal ids, equal elements. */
export const elementValueId = (e: Element): string => JSON.stringify([e.key, e.data ?? null, e.comment ?? null]);
