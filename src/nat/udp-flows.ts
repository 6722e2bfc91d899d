/**
 * UDP has no end of flow: conntrack keeps translating a client's datagrams
 * to an endpoint that left its service until the entry times out. A sync
 * deletes those entries, as kube-proxy does.
 */
import type * as netns from '../netns';
import { familyOf, type Service } from './model';
import type { ServiceDelta } from './changes';

/**
 * UDP flows that were going to endpoints no longer in their service: (vip,
 * port, endpoint ip, endpoint port), from the services that changed.
 */
export function removedUdpEndpoints(
  changed: readonly ServiceDelta[],
): { vip: string; port: number; ip: string; epPort: number }[] {
  const out: { vip: string; port: number; ip: string; epPort: number }[] = [];
  const key = (s: Service) => `${s.name} ${s.vip} ${s.port} ${s.proto}`;
  for (const { old, new: now0 } of changed) {
    if (!old || old.proto !== 'udp') continue;
    const now = now0 && key(now0) === key(old) ? now0 : undefined;
    for (const e of old.endpoints) {
      if (!now?.endpoints.some((n) => n.ip === e.ip && n.port === e.port))
        out.push({ vip: old.vip, port: old.port, ip: e.ip, epPort: e.port });
    }
  }
  return out;
}

/** Deletes the conntrack entries of UDP flows still translated to endpoints that left their service. */
export async function deleteUdpFlows(ns: netns.NetNs, gone: ReturnType<typeof removedUdpEndpoints>): Promise<number> {
  if (!gone.length) return 0;
  const conntrack = await import('../conntrack');
  let n = 0;
  for (const family of [4, 6] as const) {
    const mine = gone.filter((g) => familyOf(g.vip) === family);
    if (!mine.length) continue;
    n += await conntrack.deleteFlows(
      ns,
      family,
      (f) =>
        f.proto === conntrack.IPPROTO.udp &&
        mine.some(
          (g) => f.orig.dst === g.vip && f.orig.dport === g.port && f.reply.src === g.ip && f.reply.sport === g.epPort,
        ),
    );
  }
  return n;
}
