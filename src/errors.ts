/**
 * Every failure tsnet reports is a TsnetError: a one-line message that says
 * what failed and where ("creating veth vh1 in namespace c1: EEXIST (File
 * exists)"), and a `code` that says what kind of failure it is:
 *
 * - bad input, caught before anything was asked of the kernel: code EINVAL
 *   and no errno (`invalid()`); the only source of EINVAL without an errno,
 *   and the only failure the CNI plugin reports as "invalid network config";
 * - the kernel or a system call refused: the errno's name as code and the
 *   errno number (positive, as errno(3) has it; Node's own fs errors carry it
 *   negative and are normalized here), e.g. EEXIST, ENODEV, EPERM;
 * - a state the caller can act on: an errno-like code chosen by tsnet
 *   (ENOENT for a missing namespace, EBADF for a closed handle, EAGAIN for a
 *   lock held too long);
 * - a bug in tsnet (a TypeError and the like): code EINTERNAL, and the
 *   message says "internal error";
 * - an install problem: code ENOADDON (the native addon is not built), and
 *   the message says what to run.
 *
 * Ask with the predicates (isNotFound, isExists, isInvalidInput), as
 * knftables has IsNotFound and IsAlreadyExists, rather than comparing codes.
 *
 * Re-wrapping (`contextualize`) keeps code, errno, syscall and the cause.
 */
import { errnoName, errnoNumber, isErrnoName, strerror, type ErrnoName } from './errno';

/** tsnet's own codes, for failures no errno names. */
const OWN_CODES = [
  'EINTERNAL', // a bug in tsnet (internal())
  'ENOADDON', // the native addon is not built or does not load: an install problem (native.ts)
  'EAGENT', // the agent failed a change and did not say how (agent/client.ts)
] as const;

/** What kind of failure a TsnetError is: an errno's name (a refusal by the kernel or a system call, or a state tsnet names with the errno that fits), or one of tsnet's own. */
export type TsnetCode = ErrnoName | (typeof OWN_CODES)[number];

/** Whether `code` is one tsnet's errors carry (a code read off the wire or another library's error may be anything). */
export function isTsnetCode(code: unknown): code is TsnetCode {
  return typeof code === 'string' && (isErrnoName(code) || (OWN_CODES as readonly string[]).includes(code));
}

export interface TsnetErrorOptions {
  code: TsnetCode;
  errno?: number;
  syscall?: string;
  cause?: unknown;
}

export class TsnetError extends Error {
  override name = 'TsnetError';
  readonly code: TsnetCode;
  readonly errno?: number;
  readonly syscall?: string;

  constructor(message: string, opts: TsnetErrorOptions) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = opts.code;
    if (opts.errno !== undefined) this.errno = Math.abs(opts.errno);
    if (opts.syscall !== undefined) this.syscall = opts.syscall;
  }
}

/** A kernel refusal carried back on a netlink socket (NLMSG_ERROR), with the kernel's own explanation when it gave one (extended ack). */
export class NetlinkError extends TsnetError {
  override name = 'NetlinkError';
  /** The kernel's extended-ack text, e.g. "Chain not found". */
  readonly detail?: string;
  constructor(errno: number, detail?: string) {
    super(`${errnoName(errno)} (${strerror(errno)}${detail ? `: ${detail}` : ''})`, { code: errnoName(errno), errno });
    if (detail) this.detail = detail;
  }
}

/**
 * A library call given something that is not a namespace handle: bad input at
 * the API's edge, reported as it is (the context would name a namespace that
 * the value does not have).
 */
export class NotAHandle extends TsnetError {
  override name = 'NotAHandle';
  constructor(message: string) {
    super(message, { code: 'EINVAL' });
  }
}

/** Bad input, caught before anything was asked of the kernel. */
export function invalid(message: string): TsnetError {
  return new TsnetError(message, { code: 'EINVAL' });
}

/** Whether `err` is bad input (EINVAL raised by tsnet itself, not by the kernel). */
export function isInvalidInput(err: unknown): boolean {
  return err instanceof TsnetError && err.code === 'EINVAL' && err.errno === undefined;
}

/** Whether `err` says the thing named is not there: no such file, namespace or nftables object (ENOENT), no such interface (ENODEV). A TsnetError or Node's own system error. */
export function isNotFound(err: unknown): boolean {
  return hasCode(err, 'ENOENT', 'ENODEV');
}

/** Whether `err` says what was to be created is there already (EEXIST). */
export function isExists(err: unknown): boolean {
  return hasCode(err, 'EEXIST');
}

/** A bug in tsnet: what it was doing and what broke. */
export function internal(what: string, err?: unknown): TsnetError {
  const e = err as { name?: string; message?: string } | undefined;
  const why = err === undefined ? '' : `: ${e?.name ?? 'Error'}: ${e?.message ?? String(err)}`;
  return new TsnetError(`${what}: internal error (a bug in tsnet, please report it)${why}`, {
    code: 'EINTERNAL',
    cause: err,
  });
}

/** Whether `err` carries one of the errno codes given. */
export function hasCode(err: unknown, ...codes: TsnetCode[]): boolean {
  return typeof err === 'object' && err !== null && (codes as string[]).includes((err as { code?: string }).code ?? '');
}

/**
 * Runs `fn`, prefixing any failure with `what` (e.g. "creating bridge br0 in
 * namespace c1"). Code, errno and cause survive so callers can still test them.
 */
export async function withContext<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw contextualize(what, err);
  }
}

/** The same for a synchronous step. */
export function withContextSync<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw contextualize(what, err);
  }
}

/**
 * `what: <reason>` as a TsnetError. A TsnetError keeps its text and meaning;
 * a system error (Node's fs, the addon) becomes `CODE (text)`; anything else
 * is a bug and says so.
 */
export function contextualize(what: string, err: unknown): TsnetError {
  if (err instanceof NotAHandle) return err;
  if (err instanceof TsnetError) {
    const opts: TsnetErrorOptions = { code: err.code, cause: err };
    if (err.errno !== undefined) opts.errno = err.errno;
    if (err.syscall !== undefined) opts.syscall = err.syscall;
    return new TsnetError(`${what}: ${err.message}`, opts);
  }
  const e = err as { code?: unknown; errno?: unknown; syscall?: unknown } | null;
  const code = typeof e?.code === 'string' && isErrnoName(e.code) ? e.code : undefined;
  const num = code === undefined ? undefined : errnoNumber(code);
  if (code !== undefined && num !== undefined) {
    const opts: TsnetErrorOptions = { code, errno: num, cause: err };
    if (typeof e?.syscall === 'string') opts.syscall = e.syscall;
    return new TsnetError(`${what}: ${code} (${strerror(num)})`, opts);
  }
  return internal(what, err);
}
