/**
 * Claiming a node's subnet: a lease granted, then a create-only transaction
 * on the subnet's key under it. The subnet the node had (its local state)
 * first, then one held under its name (an agent that lost its state file),
 * then a free one, picked at random among the first free ones so that many
 * nodes starting at once rarely race for one key. A node whose own subnet
 * another holds, or a full pool, is an error, not a loop.
 */
import type { Lease } from 'etcd3';
import { TsnetError } from '../errors';
import {
  candidateSubnets,
  claimable,
  leaseNodeName,
  subnetKey,
  subnetText,
  type ClusterConfig,
  type LeaseValue,
  type Subnet,
} from './config';
import type { ClusterStore, StoredLease } from './store';

export const RETRY_MS = 1000;

export interface ClaimRequest {
  store: ClusterStore;
  config: ClusterConfig;
  nodeName: string;
  value: LeaseValue;
  /** The subnet the node had: only this one, or an error. */
  prefer?: Subnet;
  ttl: number;
  stateDir: string;
  log: (line: string) => void;
  stopped: () => boolean;
}

/** The subnet claimed and the lease that holds it (kept alive by the client); undefined if stopped first. */
export async function claimSubnet(r: ClaimRequest): Promise<{ subnet: Subnet; lease: Lease } | undefined> {
  const { store, config, nodeName } = r;
  for (;;) {
    try {
      await store.clearLeave(nodeName);
      const lease = store.client.lease(r.ttl, { autoKeepAlive: true });
      const id = await store.bounded('granting a lease', lease.grant());
      const { leases } = await store.listLeases();
      const ours = leases.find((l) => leaseNodeName(l.value) === nodeName);
      const tries: Subnet[] = [];
      if (r.prefer) tries.push(r.prefer);
      else if (ours && claimable(config, ours.subnet)) tries.push(ours.subnet);
      if (tries.length === 0) tries.push(...freeSubnets(config, leases));
      for (const s of tries) {
        if (await store.claim(s, r.value, id)) return { subnet: s, lease };
        if (r.prefer) {
          lease.release();
          throw new TsnetError(
            `${subnetText(s)} (this node's, from ${r.stateDir}/cluster/node.json) is held by another node: tsnet never renumbers a node with pods; remove that lease or this file`,
            { code: 'EEXIST' },
          );
        }
      }
      lease.release();
      if (tries.length === 0) {
        throw new TsnetError(
          `the subnet pool of ${config.Network} is exhausted: every /${config.SubnetLen} from ${config.SubnetMin} to ${config.SubnetMax} is leased; widen the network or remove dead nodes (tsnet cluster leave)`,
          { code: 'ENOSPC' },
        );
      }
    } catch (err) {
      if (err instanceof TsnetError && (err.code === 'ENOSPC' || err.code === 'EEXIST')) throw err;
      r.log(`cluster: ${(err as Error).message}; retrying every second`);
      await new Promise((res) => setTimeout(res, RETRY_MS).unref());
      if (r.stopped()) return undefined;
    }
  }
}

/** Free subnets, a random few of the first ones. */
export function freeSubnets(config: ClusterConfig, leases: readonly StoredLease[]): Subnet[] {
  const taken = new Set(leases.map((l) => subnetKey(l.subnet)));
  const out: Subnet[] = [];
  for (const s of candidateSubnets(config)) {
    if (!taken.has(subnetKey(s))) out.push(s);
    if (out.length >= 64) break;
  }
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
