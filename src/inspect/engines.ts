/** The NAT engines of a node: the state directory's own, and those its CNI attachments wrote rules to (port mappings, masquerade). */
import type { NetNs } from '../netns';
import { recordsByNetwork } from '../cni/records';
import { NatEngine, type BackendChoice, type EnginePool } from '../nat/engine';
import { stateDir as defaultStateDir } from '../state';

/** `pool`: a long-lived process's engines (the agent's); without one, engines made for this call. */
export function natEngines(ns: NetNs, stateDir?: string, backend?: BackendChoice, pool?: EnginePool): NatEngine[] {
  const base = defaultStateDir(stateDir);
  const dirs = new Set(
    recordsByNetwork(base).flatMap(({ records }) => records.flatMap((r) => (r.nat?.stateDir ? [r.nat.stateDir] : []))),
  );
  dirs.delete(base);
  const opts = backend ? { backend } : {};
  const engine = (o: { stateDir: string; exactDir?: boolean }) =>
    pool ? pool.get({ ns, ...o, ...opts }) : new NatEngine({ ns, ...o, ...opts });
  return [engine({ stateDir: base }), ...[...dirs].map((d) => engine({ stateDir: d, exactDir: true }))];
}
