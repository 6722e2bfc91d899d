import test from 'ava';
import { printRows, table } from '../../src/cli/output';

/** What printRows writes to stdout, in the pieces it wrote. */
async function captured(fn: () => Promise<void>): Promise<string[]> {
  const pieces: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string) => {
    pieces.push(chunk);
    return true;
  }) as typeof process.stdout.write;
  try {
    await fn();
  } finally {
    process.stdout.write = write;
  }
  return pieces;
}

test.serial(
  'a streamed JSON listing is exactly JSON.stringify(rows, null, 2), written in pieces, not one string',
  async (t) => {
    const rows = Array.from({ length: 3000 }, (_, i) => ({
      name: `s${i}`,
      endpoints: [{ ip: `10.0.${i >> 8}.${i & 255}`, port: 80 }],
      nested: { a: [1, 2] },
    }));
    const pieces = await captured(() => printRows(rows, true, [], (r) => r));
    t.is(pieces.join(''), `${JSON.stringify(rows, null, 2)}\n`);
    t.true(pieces.length > 1, 'more than one write');
    t.is((await captured(() => printRows([], true, [], (r) => r))).join(''), '[]\n');
  },
);

test.serial('a streamed table is the table', async (t) => {
  const rows = [
    { name: 'a', n: 1 },
    { name: 'bbbb', n: undefined },
  ];
  const pieces = await captured(() => printRows(rows, false, ['name', 'n'], (r) => r));
  t.is(pieces.join(''), `${table(rows, ['name', 'n'])}\n`);
});
