/**
 * CNI errors: the spec's error JSON (`{"cniVersion", "code", "msg", "details"}`)
 * with its well-known codes. Everything a plugin operation throws ends up as
 * one of these on stdout with a non-zero exit.
 */
import { TsnetError } from '../errors';

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
  constructor(readonly code: number, msg: string, readonly details = '') {
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

/** Maps any failure to a CniError: lock timeouts are "try again later", bad input is invalid config, the rest internal. */
export function toCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  const msg = (err as Error)?.message ?? String(err);
  if (err instanceof TsnetError) {
    if (err.code === 'EAGAIN') return new CniError(CNI_ERR.tryAgainLater, msg);
    if (err.code === 'EINVAL' && err.errno === undefined) return new CniError(CNI_ERR.invalidConfig, msg);
    if (['EIO', 'ENOSPC', 'EROFS', 'EACCES'].includes(err.code)) return new CniError(CNI_ERR.io, msg);
  }
  return new CniError(CNI_ERR.internal, msg);
}
