import { constants } from 'node:os';

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, num]) => [num, name]),
);

/** The symbolic name of an errno value (`17` -> `EEXIST`). */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/**
 * Every failure tsnet reports: a one-line message that says what failed and
 * where ("creating veth vh1 in namespace c1: EEXIST (File exists)"), plus the
 * errno `code` when the kernel refused, so callers can branch on it.
 */
export class TsnetError extends Error {
  override name = 'TsnetError';
  readonly code: string;
  readonly errno?: number;

  constructor(message: string, opts: { code?: string; errno?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = opts.code ?? 'EINVAL';
    if (opts.errno !== undefined) this.errno = opts.errno;
  }
}

/** A kernel refusal carried back on a netlink socket (NLMSG_ERROR with a negative errno). */
export class NetlinkError extends TsnetError {
  override name = 'NetlinkError';
  constructor(errno: number, detail: string) {
    super(`${errnoName(errno)} (${detail})`, { code: errnoName(errno), errno });
  }
}

/** Bad input, caught before anything was asked of the kernel. */
export function invalid(message: string): TsnetError {
  return new TsnetError(message, { code: 'EINVAL' });
}

/** Whether `err` carries one of the errno codes given. */
export function hasCode(err: unknown, ...codes: string[]): boolean {
  return typeof err === 'object' && err !== null && codes.includes((err as { code?: string }).code ?? '');
}

/**
 * Runs `fn`, prefixing any failure with `what` (e.g. "creating bridge br0 in
 * namespace c1"). The errno code survives so callers can still test it.
 */
export async function withContext<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw contextualize(what, err);
  }
}

export function contextualize(what: string, err: unknown): TsnetError {
  const e = err as { message?: string; code?: string; errno?: number };
  const msg = e?.message ?? String(err);
  const opts: { code?: string; errno?: number; cause?: unknown } = { cause: err };
  if (e?.code !== undefined) opts.code = e.code;
  if (e?.errno !== undefined) opts.errno = e.errno;
  return new TsnetError(`${what}: ${msg}`, opts);
}
