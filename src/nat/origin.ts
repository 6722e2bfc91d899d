/**
 * The local/cluster boundary of a node's services: a cluster service
 * (origin "cluster") is programmed by the node's agent from etcd, and only
 * the agent's changes touch it; a local command may neither change one nor
 * take its VIP, nor the agent a local one (enforced in ./changes.ts).
 */
import { invalid, type TsnetError } from '../errors';
import { vipKey, type Service } from './model';

/** A cluster service (from etcd, programmed by the agent), as opposed to this node's own. */
export const isCluster = (s: Pick<Service, 'origin'>): boolean => s.origin === 'cluster';

/** Whether a change, as a request carries it, speaks for the cluster (an origin on it or its service): only the agent's sync may. */
export function speaksForCluster(change: object): boolean {
  const c = change as { origin?: unknown; service?: { origin?: unknown } };
  return c.origin !== undefined || c.service?.origin !== undefined;
}

/** The refusal of a change across the local/cluster boundary: what `attempt` would do to `have`. */
export function crossesOrigin(have: Service, attempt: 'change' | 'delete' | 'vip', name = have.name): TsnetError {
  if (isCluster(have))
    return attempt === 'vip'
      ? invalid(
          `service ${name}: ${vipKey(have)} is held by cluster service ${have.name} (from etcd): pick another VIP:port, or change the cluster's with "tsnet --etcd service ..."`,
        )
      : invalid(
          `service ${have.name} is a cluster service (from etcd): ${attempt} it with "tsnet --etcd service ...", not on one node`,
        );
  return invalid(
    attempt === 'vip'
      ? `cluster service ${name}: ${vipKey(have)} is held by local service ${have.name} on this node: not programmed here until it goes`
      : `cluster service ${name}: a local service of that name exists on this node: not programmed here until it goes`,
  );
}
