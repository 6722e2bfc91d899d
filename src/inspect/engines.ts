/** The NAT engines of a node: the state directory's own, and those its CNI attachments wrote rules to (port mappings, masquerade). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NetNs } from '../netns';
import { NatEngine, type BackendChoice } from '../nat/engine';
import { stateDir as defaultStateDir } from '../state';

export function natEngines(ns: NetNs, stateDir?: string, backend?: BackendChoice): NatEngine[] {
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
  return [
    NatEngine.shared({ ns, stateDir: base, ...opts }),
    ...[...dirs].map((d) => NatEngine.shared({ ns, stateDir: d, exactDir: true, ...opts })),
  ];
}
