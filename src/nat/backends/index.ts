/**
 * The NAT backends, in one registry: what a name stands for, what it needs
 * on the node, and how to make one. Everything else (CLI choices, CNI
 * config, the engine) asks here.
 */
import { invalid } from '../../errors';
import type { NetNs } from '../../netns';
import type { HeldLock } from '../exec';
import type { Backend, BackendName, TableKind } from './types';

export interface BackendInfo {
  /** What its rules live in: backends of the same kind take over from each other without a teardown. */
  tables: TableKind;
  /** Binaries it runs (none: it speaks netlink). */
  binaries: readonly string[];
  description: string;
}

export const BACKENDS: Record<BackendName, BackendInfo> = {
  netlink: {
    tables: 'nftables',
    binaries: [],
    description: 'table ip/ip6 tsnet written over netlink (nf_tables), no binary needed',
  },
  nft: { tables: 'nftables', binaries: ['nft'], description: 'the same table, written with nft -f' },
  iptables: {
    tables: 'iptables',
    binaries: ['iptables-restore', 'iptables-save'],
    description: "kube-proxy's iptables layout (legacy or nft mode, detected)",
  },
};

export const BACKEND_NAMES = Object.keys(BACKENDS) as BackendName[];
export type BackendChoice = 'auto' | BackendName;
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', ...BACKEND_NAMES];

/** A backend name as a user wrote it (CLI, CNI config). */
export function parseBackend(text: unknown, where = 'NAT backend'): BackendChoice {
  if (typeof text === 'string' && (BACKEND_CHOICES as readonly string[]).includes(text)) return text as BackendChoice;
  throw invalid(
    `${where} must be one of ${BACKEND_CHOICES.map((b) => `"${b}"`).join(', ')}, got ${JSON.stringify(text)}`,
  );
}

/**
 * What `auto` means: the backend the state was last written with when that
 * was iptables (changing layout needs a teardown the user did not ask for),
 * otherwise netlink, which every supported kernel has and which needs no binary.
 */
export const resolveChoice = (choice: BackendChoice, stored?: BackendName): BackendName =>
  choice !== 'auto' ? choice : stored === 'iptables' ? 'iptables' : 'netlink';

/** Makes a backend (its module is loaded only now: a CLI call pays for the one it uses). */
export async function createBackend(
  name: BackendName,
  ns: NetNs,
  o: { lock?: HeldLock; iptablesMode?: string } = {},
): Promise<Backend> {
  switch (name) {
    case 'netlink':
      return new (await import('../nftables/backend-netlink')).NetlinkBackend(ns);
    case 'nft':
      return new (await import('../nftables/backend-nft')).NftBackend(ns, o.lock);
    case 'iptables': {
      const { IptablesBackend, detectMode } = await import('../iptables/backend');
      const mode = o.iptablesMode === 'legacy' || o.iptablesMode === 'nft' ? o.iptablesMode : await detectMode(ns);
      return new IptablesBackend(ns, mode, o.lock);
    }
  }
}
