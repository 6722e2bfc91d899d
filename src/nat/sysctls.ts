/**
 * The sysctls a NAT state needs (forwarding, route_localnet), set when it
 * needs them and put back as they were when it no longer does.
 */
import { hasCode } from '../errors';
import type * as Sysctl from '../sysctl';
import type * as netns from '../netns';
import { familyOf, servesLoopback, type DesiredState } from './model';

/**
 * The sysctls the desired state needs: forwarding for forwards, and
 * route_localnet on the interface towards each target whose forward serves
 * 127.0.0.1 clients (that interface only, not `all`: the narrowest scope the
 * kernel's check accepts).
 */
export async function neededSysctls(ns: netns.NetNs, st: Pick<DesiredState, 'forwards'>): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (!st.forwards.length) return out;
  const keys: typeof Sysctl.keys = (await import('../sysctl')).keys;
  if (st.forwards.some((f) => familyOf(f.targetIp) === 4)) out.set(keys.ipForward.join('/'), '1');
  if (st.forwards.some((f) => familyOf(f.targetIp) === 6)) out.set(keys.ipv6Forwarding.join('/'), '1');
  const route = await import('../route');
  for (const f of st.forwards.filter(servesLoopback)) {
    const r = await route.get(ns, f.targetIp);
    if (r.dev && r.type !== 'local') out.set(keys.routeLocalnet(r.dev).join('/'), '1');
  }
  return out;
}

/** Sets what is needed, remembering the old values; restores what is no longer needed. */
export async function convergeSysctls(
  ns: netns.NetNs,
  st: Pick<DesiredState, 'forwards'>,
  saved: Record<string, string>,
): Promise<Record<string, string>> {
  const want = await neededSysctls(ns, st);
  if (!want.size && !Object.keys(saved).length) return {}; // the common case: nothing to set or restore (no module to load)
  const sysctl = await import('../sysctl');
  const out = { ...saved };
  for (const [key, value] of want) {
    const old = sysctl.set(ns, key.split('/'), value);
    if (!(key in out)) out[key] = old;
  }
  for (const key of Object.keys(out)) {
    if (want.has(key)) continue;
    try {
      sysctl.set(ns, key.split('/'), out[key]!);
    } catch (err) {
      if (!hasCode(err, 'ENOENT')) throw err; // the interface is gone, and its setting with it
    }
    delete out[key];
  }
  return out;
}
