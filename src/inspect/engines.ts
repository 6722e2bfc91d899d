/** The NAT engines of a node: the state directory's own, and those its CNI attachments wrote rules to (port mappings, masquerade). */
import type { NetNs } from '../netns';
import { recordsByNetwork } from '../cni/records';
import { NatEngine, type BackendChoice } from '../nat/engine';
import { stateDir as defaultStateDir } from '../state';

/** Engines made for this call (a long-lived process keeps its own: the agent's EnginePool). */
export function natEngines(ns: NetNs, stateDir?: string, backend?: BackendChoice): NatEngine[] {
  const base = defaultStateDir(stateDir);
  const dirs = new Set(
    recordsByNetwork(base).flatMap(({ records }) => records.flatMap((r) => (r.nat?.stateDir ? [r.nat.stateDir] : []))),
  );
  dirs.delete(base);
  const opts = backend ? { backend } : {};
  return [
    new NatEngine({ ns, stateDir: base, ...opts }),
    ...[...dirs].map((d) => new NatEngine({ ns, stateDir: d, exactDir: true, ...opts })),
  ];
}
