/** The NAT engines of a node: the state directory's own, and those its CNI attachments wrote rules to (port mappings, masquerade). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NetNs } from '../netns';
import { NatEngine, type BackendChoice, type EnginePool } from '../nat/engine';
import { stateDir as defaultStateDir } from '../state';

/** `pool`: a long-lived process's engines (the agent's); without one, engines made for this call. */
export function natEngines(ns: NetNs, stateDir?: string, backend?: BackendChoice, pool?: EnginePool): NatEngine[] {
  const base = defaultStateDir(stateDir);
  const dirs = new Set<string>();
  const cni = path.join(base, 'cni');
  for (const network of fs.existsSync(cni) ? fs.readdirSync(cni) : []) {
    for (const f of fs.readdirSync(path.join(cni, network)).filter((x) => x.endsWith('.json'))) {
      try {
        const r = JSON.parse(fs.readFileSync(path.join(cni, network, f), 'utf8')) as { nat?: { stateDir?: string } };
        if (r.nat?.stateDir) dirs.add(r.nat.stateDir);
      } catch {
        // a record torn by a power loss: the CNI code reports it; nothing to add here
      }
    }
  }
  dirs.delete(base);
  const opts = backend ? { backend } : {};
  const engine = (o: { stateDir: string; exactDir?: boolean }) =>
    pool ? pool.get({ ns, ...o, ...opts }) : new NatEngine({ ns, ...o, ...opts });
  return [engine({ stateDir: base }), ...[...dirs].map((d) => engine({ stateDir: d, exactDir: true }))];
}
