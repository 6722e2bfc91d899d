/**
 * When a NAT rebuild in pieces lets its services go (src/nat/joining.ts):
 * at once when no call is served; while one is, only the changes that joined
 * go, and the services wait HOLD_MS at most.
 */
import test from 'ava';
import { HOLD_MS, syncPieces, type Joining } from '../../src/nat/joining';
import { IndexedState } from '../../src/nat/changes';

function pieces(o: { busy?: () => boolean; queue?: Joining[] }) {
  return syncPieces({
    queue: () => o.queue,
    next: IndexedState.of({ services: [], rules: [], forwards: [] }),
    backend: 'netlink',
    t0: process.hrtime.bigint(),
    save: () => undefined,
    flows: () => Promise.resolve(0),
    ...(o.busy ? { busy: o.busy } : {}),
  }).chunks;
}

const waiting = (): Joining => ({ changes: [], resolve: () => undefined, reject: () => undefined });

test('no call served: the services go at once', async (t) => {
  const t0 = performance.now();
  t.true(await pieces({ busy: () => false }).pause());
  t.true(await pieces({}).pause(), 'nor when the caller has no notion of calls');
  t.true(performance.now() - t0 < HOLD_MS, 'without waiting');
});

test('a call served and a change waiting to join: the next piece carries the change alone, at once', async (t) => {
  const chunks = pieces({ busy: () => true, queue: [waiting()] });
  const t0 = performance.now();
  t.false(await chunks.pause());
  t.true(performance.now() - t0 < HOLD_MS);
});

test('a call served and nothing to join: the services wait until it ends', async (t) => {
  let busy = true;
  let ended = Infinity;
  const chunks = pieces({ busy: () => busy });
  setTimeout(() => {
    busy = false;
    ended = performance.now();
  }, 10);
  const t0 = performance.now();
  t.true(await chunks.pause());
  const now = performance.now();
  // (A timer very late on a loaded machine: the hold's end lets them go first.)
  t.true(now >= ended || now - t0 >= HOLD_MS - 2, 'the services went once the call had ended, not before');
});

test('calls that never end hold the services HOLD_MS at most, and join-only pieces do not restart the wait', async (t) => {
  const queue: Joining[] = [];
  const chunks = pieces({ busy: () => true, queue });
  const t0 = performance.now();
  queue.push(waiting());
  t.false(await chunks.pause(), 'a change waiting: it goes alone');
  queue.length = 0;
  t.true(await chunks.pause(), 'then the services, once HOLD_MS has passed since they last went');
  const waited = performance.now() - t0;
  t.true(waited >= HOLD_MS - 2, `held ${waited.toFixed(1)} ms`);
  const t1 = performance.now();
  t.true(await chunks.pause());
  t.true(performance.now() - t1 >= HOLD_MS - 2, 'and the next wait is counted from then');
});
