/**
 * The agent's resync loop defers its forced full sync (one transaction of the
 * whole table, which holds the namespace's nf_tables commit mutex) to a calm
 * moment, and no longer than the cap (src/agent/resync.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { ResyncLoop, type ResyncOptions } from '../../src/agent/resync';

function loop(calm: () => boolean, fullSyncIntervalMs: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-resync-'));
  fs.writeFileSync(path.join(dir, 'nat.json'), '{}');
  const passes: string[] = [];
  const engine = {
    sync: async (o: { force?: boolean }) => void passes.push(o.force ? 'full' : 'sync'),
    converge: async () => void passes.push('check'),
  };
  const l = new ResyncLoop({
    stateDir: dir,
    intervalMs: 100,
    fullSyncIntervalMs,
    engines: { get: () => engine } as unknown as ResyncOptions['engines'],
    metrics: { resyncErrors: { inc: () => undefined } } as unknown as ResyncOptions['metrics'],
    log: () => undefined,
    beforePass: () => undefined,
    calm,
  });
  l.load();
  return { l, passes, dir };
}

test('the forced full sync waits while CNI calls come, and goes at the first calm pass', async (t) => {
  let calm = false;
  const { l, passes, dir } = loop(() => calm, 200); // due every second pass; deferred 200 ms at most
  try {
    await l.pass();
    await l.pass(); // due, not calm
    t.deepEqual(passes, ['check', 'check']);
    calm = true;
    await l.pass();
    t.deepEqual(passes, ['check', 'check', 'full'], 'the first calm pass after it fell due');
    await l.pass(); // due again, calm: at once
    t.deepEqual(passes.slice(3), ['full']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('calls that never stop defer it once by its cap, not for ever', async (t) => {
  const { l, passes, dir } = loop(() => false, 200);
  try {
    await l.pass();
    await l.pass(); // due
    await l.pass();
    t.deepEqual(passes, ['check', 'check', 'check']);
    await new Promise((r) => setTimeout(r, 220));
    await l.pass();
    t.deepEqual(passes.slice(3), ['full'], 'past the cap it goes, calm or not');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
