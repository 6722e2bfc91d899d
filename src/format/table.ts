/** Aligned text tables, as `ip` and `brctl show` print them: for the CLI and the demo alike. */

/** The table's lines, header first (widths from every row: the rows are read twice, the text is never whole). */
export function* tableLines<T extends object>(rows: readonly T[], columns: string[]): Generator<string> {
  const widths = columns.map((c) => c.length);
  for (const r of rows)
    columns.forEach((c, i) => {
      widths[i] = Math.max(widths[i]!, cell((r as Record<string, unknown>)[c]).length);
    });
  const line = (vals: string[]) =>
    vals
      .map((v, i) => v.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  yield line(columns.map((c) => c.toUpperCase()));
  for (const r of rows) yield line(columns.map((c) => cell((r as Record<string, unknown>)[c])));
}

export function table<T extends object>(rows: T[], columns: string[]): string {
  return [...tableLines(rows, columns)].join('\n');
}

/** A value as a cell: '-' for nothing, lists comma-separated. */
function cell(v: unknown): string {
  if (v === undefined || v === null) return '-';
  if (Array.isArray(v)) return v.length ? v.join(',') : '-';
  return String(v);
}
