/**
 * Waiting in tests for something that happens asynchronously (the kernel
 * tearing a namespace down, DAD finishing, an agent's log line crossing a
 * pipe): one helper instead of a poll loop per test, so every wait has a
 * bound and says what did not happen when it runs out.
 */
import { inspect } from 'node:util';

export interface EventuallyOptions {
  /** How long to keep trying, in ms: it fails only if a check begun at or after this still does not hold. */
  ms: number;
  /** What did not happen in time, for the failure ("the veth pair to go with its namespace"). */
  what: string;
  /** The pause between two checks, in ms (default 20): more for a check that runs a process. */
  every?: number;
}

/** What eventually throws when the time is up: its message says what, and how the last check went. */
export class NotInTime extends Error {
  constructor(
    message: string,
    /** The last check's result (falsy), or what it threw. */
    readonly last: { value: unknown } | { error: unknown },
  ) {
    super(message);
    this.name = 'NotInTime';
  }
}

/** What a truthy result of a condition can be (TypeScript cannot express "a number other than 0"). */
export type Truthy<T> = Exclude<T, false | 0 | 0n | '' | null | undefined>;

const brief = (x: unknown) => inspect(x, { depth: 2, breakLength: Infinity, maxStringLength: 500 });

/**
 * Checks `condition` (sync or async) until it returns something truthy, and
 * returns that; the first check is immediate. A check that throws counts as
 * "not yet" (what it threw is reported if it is the last). After `ms`, throws
 * NotInTime: "WHAT: not within MS ms (N checks; the last returned X | threw Y)".
 * To wait while something still holds, negate it: `eventually(() => !still(), ...)`.
 */
export async function eventually<T>(condition: () => T | Promise<T>, o: EventuallyOptions): Promise<Truthy<T>> {
  const every = o.every ?? 20;
  const end = Date.now() + o.ms;
  let checks = 0;
  for (;;) {
    const late = Date.now() >= end; // this check is begun after the time is up: it is the last
    let last: { value: unknown } | { error: unknown };
    checks++;
    try {
      const value = await condition();
      if (value) return value as Truthy<T>;
      last = { value };
    } catch (error) {
      last = { error };
    }
    if (late) {
      const how =
        'error' in last
          ? `threw ${last.error instanceof Error ? String(last.error) : brief(last.error)}`
          : `returned ${brief(last.value)}`;
      throw new NotInTime(`${o.what}: not within ${o.ms} ms (${checks} checks; the last ${how})`, last);
    }
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(every, end - Date.now()))));
  }
}

/**
 * For a wait whose caller decides what a timeout means (a query such as "did the agent log it?"):
 * `await eventually(...).catch(orElse(false))` turns NotInTime into `fallback`; anything else is rethrown.
 */
export function orElse<U>(fallback: U): (err: unknown) => U {
  return (err) => {
    if (err instanceof NotInTime) return fallback;
    throw err;
  };
}
