/**
 * CNI errors: the spec's error JSON (`{"cniVersion", "code", "msg", "details"}`)
 * with its well-known codes. Everything a plugin operation throws ends up as
 * one of these on stdout with a non-zero exit.
 */
import { TsnetError, isInvalidInput } from '../errors';

/** The spec's well-known error codes (SPEC.md "Error"), plus 999 for internal errors as libcni's skel uses. */
export const CNI_ERR = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnv: 4,
  io: 5,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  /** STATUS: the plugin cannot service ADD requests (1.1). */
  notAvailable: 50,
  /** STATUS: not available, and existing containers may have limited connectivity (1.1). */
  limitedConnectivity: 51,
  internal: 999,
} as const;

export class CniError extends Error {
  override name = 'CniError';
  constructor(
    readonly code: number,
    msg: string,
    readonly details = '',
  ) {
    super(msg);
  }

  toJSON(cniVersion: string): Record<string, unknown> {
    const out: Record<string, unknown> = { cniVersion, code: this.code, msg: this.message };
    if (this.details) out.details = this.details;
    return out;
  }
}

export const invalidConfig = (msg: string, details = '') => new CniError(CNI_ERR.invalidConfig, msg, details);
export const invalidEnv = (msg: string, details = '') => new CniError(CNI_ERR.invalidEnv, msg, details);

/**
 * A validator's bad-input error reported as CNI error `code` (7 invalid
 * config, 4 invalid environment), prefixed with where it was found; anything
 * else (a bug, a system error) is rethrown unchanged, so it keeps its meaning.
 */
export function reportInput(code: number, prefix: string, err: unknown): never {
  if (isInvalidInput(err)) throw new CniError(code, `${prefix}: ${(err as Error).message}`);
  throw err;
}

/**
 * Maps any failure to a CniError: lock timeouts are "try again later", bad
 * input (and only bad input) is "invalid network config", I/O failures are
 * I/O errors, and the rest, kernel refusals, a missing native addon
 * (ENOADDON) and bugs alike, is internal (999) with a message that says
 * which (and for the addon, what to run).
 */
export function toCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  if (err instanceof TsnetError) {
    if (err.code === 'EAGAIN') return new CniError(CNI_ERR.tryAgainLater, err.message);
    if (isInvalidInput(err)) return new CniError(CNI_ERR.invalidConfig, err.message);
    if (['EIO', 'ENOSPC', 'EROFS', 'EACCES'].includes(err.code)) return new CniError(CNI_ERR.io, err.message);
    return new CniError(CNI_ERR.internal, err.message);
  }
  const e = err as { name?: string; message?: string } | null;
  return new CniError(
    CNI_ERR.internal,
    `internal error (a bug in tsnet, please report it): ${e?.name ?? 'Error'}: ${e?.message ?? String(err)}`,
  );
}
