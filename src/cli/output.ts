/** Printing for the CLI: aligned tables for people, --json for scripts. */
import { table, tableLines } from '../format/table';

export { table };

export function print(data: unknown, json: boolean, render: () => string): void {
  process.stdout.write(`${json ? JSON.stringify(data, null, 2) : render()}\n`);
}

/**
 * A long listing, streamed: a JSON array written element by element (the
 * same text JSON.stringify(rows, null, 2) makes), or a table; in chunks,
 * waiting for stdout to drain, so a big listing never becomes one string.
 */
export async function printRows<T extends object>(
  rows: readonly T[],
  json: boolean,
  columns: string[],
  toRow: (x: T) => object,
): Promise<void> {
  const out = new Chunked();
  if (json) {
    if (!rows.length) await out.write('[]\n');
    for (let i = 0; i < rows.length; i++) {
      const item = JSON.stringify(rows[i], null, 2).replace(/\n/g, '\n  ');
      await out.write(`${i ? ',\n' : '[\n'}  ${item}${i === rows.length - 1 ? '\n]\n' : ''}`);
    }
  } else {
    for (const l of tableLines(rows.map(toRow), columns)) await out.write(`${l}\n`);
  }
  await out.flush();
}

/** Writes to stdout in ~64 KiB pieces, respecting backpressure. */
class Chunked {
  private buf: string[] = [];
  private size = 0;

  async write(text: string): Promise<void> {
    this.buf.push(text);
    this.size += text.length;
    if (this.size >= 64 * 1024) await this.flush();
  }

  async flush(): Promise<void> {
    if (!this.buf.length) return;
    const text = this.buf.join('');
    this.buf = [];
    this.size = 0;
    if (!process.stdout.write(text)) await new Promise<void>((resolve) => process.stdout.once('drain', resolve));
  }
}
