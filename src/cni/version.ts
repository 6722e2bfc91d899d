/**
 * Spec versions: which ones tsnet speaks, and the conversion of results
 * between the 0.3/0.4 shape (`ips[].version`) and the 1.x shape (no
 * `version`; 1.1 adds route and interface fields).
 */
import { CniError, CNI_ERR } from './errors';
import type { IpConfig, Result, RouteResult, Interface } from './types';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const LATEST = '1.1.0';

function parts(v: string): number[] {
  if (!/^\d+\.\d+\.\d+$/.test(v))
    throw new CniError(
      CNI_ERR.incompatibleVersion,
      `invalid cniVersion ${JSON.stringify(v)}`,
      'expected MAJOR.MINOR.PATCH',
    );
  return v.split('.').map(Number);
}

/** a < b: -1, equal: 0, a > b: 1. */
export function compare(a: string, b: string): number {
  const [x, y] = [parts(a), parts(b)];
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i]! < y[i]! ? -1 : 1;
  return 0;
}

export function requireSupported(v: unknown): string {
  if (typeof v !== 'string' || v === '')
    throw new CniError(
      CNI_ERR.incompatibleVersion,
      'network config has no cniVersion',
      `supported: ${SUPPORTED_VERSIONS.join(', ')}`,
    );
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(v)) {
    throw new CniError(
      CNI_ERR.incompatibleVersion,
      `incompatible CNI versions: config is ${v}, plugin supports ${SUPPORTED_VERSIONS.join(', ')}`,
      `supported: ${SUPPORTED_VERSIONS.join(', ')}`,
    );
  }
  return v;
}

/** The first version that allows a command (CHECK came with 0.4.0, GC and STATUS with 1.1.0). */
export const MIN_VERSION: Record<string, string> = { CHECK: '0.4.0', GC: '1.1.0', STATUS: '1.1.0' };

const isV6 = (cidr: string) => cidr.includes(':');

/** Reads a result in any supported version (a prevResult, a delegated IPAM's output) into the 1.x shape. */
export function parseResult(raw: unknown, what = 'prevResult'): Result {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new CniError(CNI_ERR.decode, `${what} is not a JSON object`);
  const r = raw as Record<string, unknown>;
  const version = typeof r.cniVersion === 'string' ? r.cniVersion : LATEST;
  requireSupported(version);
  const list = <T>(k: string): T[] | undefined => {
    if (r[k] === undefined || r[k] === null) return undefined;
    if (!Array.isArray(r[k])) throw new CniError(CNI_ERR.decode, `${what}.${k} is not an array`);
    return r[k] as T[];
  };
  const out: Result = { cniVersion: version };
  const interfaces = list<Interface>('interfaces');
  if (interfaces) out.interfaces = interfaces.map((i) => ({ ...i }));
  const ips = list<IpConfig & { version?: string }>('ips');
  if (ips) {
    out.ips = ips.map((ip) => {
      if (typeof ip?.address !== 'string') throw new CniError(CNI_ERR.decode, `${what}.ips[].address is missing`);
      const { version: _v, ...rest } = ip;
      return rest;
    });
  }
  const routes = list<RouteResult>('routes');
  if (routes) out.routes = routes.map((x) => ({ ...x }));
  if (r.dns && typeof r.dns === 'object') out.dns = { ...(r.dns as object) };
  return out;
}

const ROUTE_11 = ['mtu', 'advmss', 'priority', 'table', 'scope'] as const;

/** Writes a result in the config's version. */
export function convertResult(r: Result, to: string): Record<string, unknown> {
  requireSupported(to);
  const v1 = compare(to, '1.0.0') >= 0;
  const v11 = compare(to, '1.1.0') >= 0;
  const out: Record<string, unknown> = { cniVersion: to };
  if (r.interfaces)
    out.interfaces = r.interfaces.map((i) =>
      v11
        ? { ...i }
        : {
            name: i.name,
            ...(i.mac ? { mac: i.mac } : {}),
            ...(i.sandbox !== undefined ? { sandbox: i.sandbox } : {}),
          },
    );
  if (r.ips) out.ips = r.ips.map((ip) => (v1 ? { ...ip } : { version: isV6(ip.address) ? '6' : '4', ...ip }));
  if (r.routes) {
    out.routes = r.routes.map((rt) => {
      const c: Record<string, unknown> = { ...rt };
      if (!v11) for (const k of ROUTE_11) delete c[k];
      return c;
    });
  }
  out.dns = r.dns ?? {};
  return out;
}
