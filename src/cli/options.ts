/** Option-value parsers every command shares (commander calls them as it reads the option). */
import { invalid } from '../errors';

/** A whole number, optionally within [min, max]: `--mtu 1400`, `--affinity 30`. */
export function int(flag: string, range: { min?: number; max?: number } = {}): (v: string) => number {
  const { min = 0, max = Number.MAX_SAFE_INTEGER } = range;
  return (v: string) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) {
      const bounds =
        range.min !== undefined || range.max !== undefined
          ? ` from ${min}${range.max !== undefined ? ` to ${max}` : ' up'}`
          : '';
      throw invalid(`${flag} must be a whole number${bounds}, got ${JSON.stringify(v)}`);
    }
    return n;
  };
}

/** A repeatable option's values, in order: `--endpoint A --endpoint B`. */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v];
