import test from 'ava';
import { NotInTime, eventually } from '../harness/eventually';

test('eventually returns the first truthy result, checking at once and then every `every` ms', async (t) => {
  let checks = 0;
  const t0 = Date.now();
  const got = await eventually(() => ++checks >= 3 && { checks }, { ms: 5000, what: 'three checks', every: 10 });
  t.deepEqual(got, { checks: 3 });
  t.true(Date.now() - t0 < 1000);
  t.is(
    await eventually(() => 'at once', { ms: 0, what: 'nothing' }),
    'at once',
    'a condition that holds needs no time',
  );
});

test('eventually takes async conditions, and a check that throws is "not yet"', async (t) => {
  let checks = 0;
  const got = await eventually(
    async () => {
      await new Promise((r) => setTimeout(r, 1));
      if (++checks < 3) throw new Error('ENOENT');
      return checks;
    },
    { ms: 5000, what: 'a file', every: 1 },
  );
  t.is(got, 3);
});

test('a condition that never holds fails after `ms` with `what` and the last result', async (t) => {
  const t0 = Date.now();
  const e = await t.throwsAsync(
    eventually(() => 0, { ms: 200, what: 'the veth pair to go with its namespace' }),
    {
      instanceOf: NotInTime,
    },
  );
  const took = Date.now() - t0;
  t.regex(
    e!.message,
    /^the veth pair to go with its namespace: not within 200 ms \(\d+ checks; the last returned 0\)$/,
  );
  t.deepEqual(e!.last, { value: 0 });
  t.true(took >= 200, `gave up after ${took} ms`);
  t.true(took < 2000, `gave up after ${took} ms`);
});

test('a condition that keeps throwing fails with what it threw last', async (t) => {
  let n = 0;
  const e = await t.throwsAsync(
    eventually(
      () => {
        throw new Error(`ESRCH ${++n}`);
      },
      { ms: 50, what: 'the agent holding the lock', every: 5 },
    ),
    { instanceOf: NotInTime },
  );
  t.regex(
    e!.message,
    new RegExp(`^the agent holding the lock: not within 50 ms \\(${n} checks; the last threw Error: ESRCH ${n}\\)$`),
  );
  t.true(n >= 2);
});

test('the last check is one begun after the time is up: a slow check does not use up the time by itself', async (t) => {
  let checks = 0;
  // Each check takes longer than `ms`: the first says no, the second (begun late) is the one that counts.
  const got = await eventually(
    async () => {
      await new Promise((r) => setTimeout(r, 80));
      return ++checks === 2;
    },
    { ms: 50, what: 'the second check' },
  );
  t.true(got);
  t.is(checks, 2);
});

test('"wait while it still holds" is the negation', async (t) => {
  let still = 3;
  t.true(await eventually(() => !still--, { ms: 1000, what: 'the namespace to go', every: 1 }));
  const e = await t.throwsAsync(eventually(() => !true, { ms: 30, what: 'the lock to be let go' }));
  t.regex(e!.message, /^the lock to be let go: not within 30 ms \(\d+ checks; the last returned false\)$/);
});
