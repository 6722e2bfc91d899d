/** Printing for the CLI: aligned tables for people, --json for scripts. */

export function table<T extends object>(rows: T[], columns: string[]): string {
  const cells = rows.map((r) => columns.map((c) => fmt((r as Record<string, unknown>)[c])));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i]!.length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n');
}

function fmt(v: unknown): string {
  if (v === undefined || v === null) return '-';
  if (Array.isArray(v)) return v.length ? v.join(',') : '-';
  return String(v);
}

export function print(data: unknown, json: boolean, render: () => string): void {
  process.stdout.write(`${json ? JSON.stringify(data, null, 2) : render()}\n`);
}
