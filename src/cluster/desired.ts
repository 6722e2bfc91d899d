/**
 * The kernel state a node needs, as a function of the leases: pure, so the
 * agent reconciles (diffs it against what the kernel has) instead of
 * replaying events. Per peer, as flannel programs them:
 *   host-gw: `PEER_SUBNET via PUBLIC_IP`
 *   vxlan:   neighbour `PEER.0 lladdr VTEP_MAC nud permanent`,
 *            FDB `VTEP_MAC dst PUBLIC_IP self permanent`,
 *            route `PEER_SUBNET via PEER.0 dev tsnet.VNI onlink`
 *   DirectRouting: host-gw to peers on the node's own underlay subnet, even in vxlan mode.
 * Beyond NEXTHOP_THRESHOLD peers the routes go through nexthop objects (one
 * per gateway, its id the gateway's address as a number): the kernel hashes
 * a route's fib_info without its gateway, and thousands of per-peer gateways
 * in one bucket make programming quadratic.
 */
import {
  containsIp,
  ipToNum,
  nthAddress,
  sameSubnet,
  subnetText,
  type ClusterConfig,
  type Peer,
  type Subnet,
} from './config';

export const NEXTHOP_THRESHOLD = 2000;

export interface DesiredRoute {
  dst: string;
  via: string;
  /** On the vxlan device, onlink; otherwise the kernel picks the device by the gateway. */
  vxlan: boolean;
  nhid?: number;
}

export interface DesiredNexthop {
  id: number;
  via: string;
  vxlan: boolean;
}

export interface Desired {
  routes: Map<string, DesiredRoute>;
  /** peer .0 -> VTEP MAC, on the vxlan device. */
  neighs: Map<string, string>;
  /** VTEP MAC -> public IP, on the vxlan device. */
  fdb: Map<string, string>;
  nexthops: Map<number, DesiredNexthop>;
}

export interface Self {
  subnet: Subnet;
  publicIp: string;
  /** The underlay's connected subnet (DirectRouting: peers inside it are reached host-gw). */
  underlay?: Subnet;
}

export function desiredState(config: ClusterConfig, self: Self, peers: Iterable<Peer>): Desired {
  const d: Desired = { routes: new Map(), neighs: new Map(), fdb: new Map(), nexthops: new Map() };
  const others = [...peers].filter((p) => !sameSubnet(p.subnet, self.subnet) && p.publicIp !== self.publicIp);
  const useNexthops = others.length > NEXTHOP_THRESHOLD;
  const vxlanMode = config.Backend.Type === 'vxlan';
  for (const p of others) {
    const direct =
      !vxlanMode ||
      p.backend !== 'vxlan' ||
      (!!config.Backend.DirectRouting && !!self.underlay && containsIp(self.underlay, p.publicIp));
    const dst = subnetText(p.subnet);
    if (direct) {
      const r: DesiredRoute = { dst, via: p.publicIp, vxlan: false };
      if (useNexthops) {
        r.nhid = ipToNum(p.publicIp);
        d.nexthops.set(r.nhid, { id: r.nhid, via: p.publicIp, vxlan: false });
      }
      d.routes.set(dst, r);
      continue;
    }
    const vtep = nthAddress(p.subnet, 0);
    d.neighs.set(vtep, p.vtepMac!);
    d.fdb.set(p.vtepMac!, p.publicIp);
    const r: DesiredRoute = { dst, via: vtep, vxlan: true };
    if (useNexthops) {
      r.nhid = ipToNum(vtep);
      d.nexthops.set(r.nhid, { id: r.nhid, via: vtep, vxlan: true });
    }
    d.routes.set(dst, r);
  }
  return d;
}
