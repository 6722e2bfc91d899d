/**
 * `tsnet doctor`: the mistakes that break container networking without an
 * error anywhere, each found from the kernel's live state and tsnet's
 * desired state, reported with what to run. One Problem per finding;
 * nothing is changed.
 *
 * The checks are a list (CHECKS), run in its order by one loop over one view
 * of the node; each lives in src/inspect/checks/ by what it looks at, and
 * test/netns/doctor.test.ts has a test per check that breaks exactly that.
 */
import type { NatEngine } from '../nat/engine';
import type { NetNs } from '../netns';
import { brNetfilter, conntrackFull, ipForward, routeLocalnet, rpFilter } from './checks/sysctls';
import { bridgePort, hairpin, masquerade, mtu } from './checks/bridges';
import { cniState } from './checks/cni-state';
import { forwardDrop, natCanary } from './checks/netfilter';
import { doctorView, type Check } from './checks/check';
import { inspectNode } from './node';
import { clusterLease, clusterMtu, clusterPeers, clusterServices, clusterVxlan } from './checks/cluster';
import type { ClusterView } from './cluster';

/** Every check, in the order doctor reports: each one's `name` is the `check` of its problems. */
export const CHECKS: readonly Check[] = [
  ipForward, // ip_forward off where forwards or gateway bridges need it
  brNetfilter, // bridged endpoints while bridge-nf-call-iptables is off
  rpFilter, // strict rp_filter with a --snat none forward
  bridgePort, // bridge ports that do not forward
  hairpin, // hairpin off on an endpoint's port
  masquerade, // containers behind a gateway bridge without a masquerade rule
  routeLocalnet, // route_localnet off for a forward serving 127.0.0.1
  conntrackFull, // the conntrack table above 90%
  mtu, // a veth whose MTU differs from its bridge
  cniState, // attachments whose namespace is gone, reservations without an attachment
  natCanary, // tsnet's rules flushed
  forwardDrop, // another nftables table's forward hook with policy drop
  clusterVxlan, // a cluster node's vxlan device missing, down, on another port, learning
  clusterMtu, // the MTU chain underlay -> tunnel -> node bridge
  clusterPeers, // peers without their entries, routes of protocol tsnet no peer explains
  clusterLease, // (with --etcd) the node's own lease gone, or etcd unreachable
  clusterServices, // (with --etcd) cluster services missing, stale or left over on this node
];

export interface Problem {
  /** The name of the check that found it (see CHECKS: ip-forward, br-netfilter, rp-filter, bridge-port, hairpin, masquerade, route-localnet, conntrack, mtu, cni-state, nat-canary, forward-drop, cluster-vxlan, cluster-mtu, cluster-peers, cluster-lease, cluster-services). */
  check: string;
  /** The object concerned: an interface, a service, a state directory. */
  where: string;
  problem: string;
  fix: string;
}

/** doctor's report as text: one line per problem with its fix, or that there is none. */
export const formatProblems = (problems: readonly Problem[]): string =>
  problems.length
    ? problems.map((p) => `${p.check}: ${p.where}: ${p.problem}. Fix: ${p.fix}`).join('\n')
    : 'no problems found';

export interface DoctorOptions {
  /** NAT engines of the node (one per state directory). */
  engines?: readonly NatEngine[];
  /** State directories whose CNI attachment records to check (default: the default state directory). */
  stateDirs?: readonly string[];
  /** The conntrack limit to compare the table with (default: net.netfilter.nf_conntrack_max). */
  conntrackMax?: number;
  /** A cluster node's view (src/inspect/cluster.ts), when the node is one. */
  cluster?: ClusterView;
  /** With --etcd: the TTL left on the node's own lease (-1: none), or why etcd could not tell. */
  clusterLease?: { ttl?: number; error?: string };
}

/** Everything wrong that tsnet can see in the namespace `host` (the node). */
export async function doctor(host: NetNs, o: DoctorOptions = {}): Promise<Problem[]> {
  const engines = o.engines ?? [];
  const v = doctorView(host, await inspectNode(host, engines), engines, o);
  const out: Problem[] = [];
  for (const c of CHECKS) for (const f of await c.run(v)) out.push({ check: c.name, ...f });
  return out;
}
