/**
 * What a doctor check is given and what it gives back. Every check reads the
 * same DoctorView: the node's network (one NodeView, gathered once for all
 * checks) with the facts several checks share worked out once; sysctls and
 * kernel tables a single check needs are read by that check, when it needs them.
 */
import type { BridgeSummary } from '../../bridge';
import { isNotFound } from '../../errors';
import type { NatEngine } from '../../nat/engine';
import type { Endpoint, Service } from '../../nat/model';
import type { NetNs } from '../../netns';
import * as sysctl from '../../sysctl';
import type { SysctlKey } from '../../sysctl';
import type { DoctorOptions } from '../doctor';
import { hostEndOf, nodeOf, ownerOf, type InterfaceView, type NamespaceView, type NodeView } from '../node';

/** One thing wrong: the object concerned (an interface, a service, a state directory), what breaks, what to run. */
export interface Finding {
  where: string;
  problem: string;
  fix: string;
}

export interface Check {
  /** Stable: every problem the check reports carries it (`check` in JSON, the line's first word in text). */
  name: string;
  run(v: DoctorView): Finding[] | Promise<Finding[]>;
}

export interface DoctorView extends NodeView {
  /** The node (the namespace inspected). */
  host: NetNs;
  /** The node's own namespace in the view. */
  node: NamespaceView;
  engines: readonly NatEngine[];
  options: DoctorOptions;
  /** ` -n NAME` when the node is a named namespace: the fixes run there. */
  on: string;
  /**
   * A sysctl's live value in the node; undefined when the kernel has no such key (module not loaded, interface gone).
   * A key naming an interface is given as an array (sysctl.keys): a name may contain '.' (eth0.100).
   */
  sysctl(key: SysctlKey): string | undefined;
  /** An interface of the node, by name. */
  iface(name: string): InterfaceView | undefined;
  /** Bridges that route containers: an address (the gateway) and ports. */
  gatewayBridges: BridgeSummary[];
  /** Service endpoints held by a container whose veth is a port of a bridge of the node. */
  bridgedEndpoints: { s: Service; e: Endpoint; br: string }[];
}

export function doctorView(host: NetNs, view: NodeView, engines: readonly NatEngine[], o: DoctorOptions): DoctorView {
  const node = nodeOf(view);
  const v: DoctorView = {
    ...view,
    host,
    node,
    engines,
    options: o,
    on: host.name ? ` -n ${host.name}` : '',
    sysctl: (key) => {
      try {
        return sysctl.get(host, key);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    iface: (name) => node.interfaces.find((i) => i.name === name),
    gatewayBridges: view.bridges.filter((b) => b.addresses.length && b.ports.length),
    bridgedEndpoints: [],
  };
  v.bridgedEndpoints = view.nat.services.flatMap((s) =>
    s.endpoints.flatMap((e) => {
      const br = bridgeOf(v, e.ip);
      return br ? [{ s, e, br }] : [];
    }),
  );
  return v;
}

/** The bridge (in the node) that an address's container is attached to, if any. */
function bridgeOf(v: DoctorView, ip: string): string | undefined {
  const owner = ownerOf(v, ip);
  return owner && !owner.ns.node ? hostEndOf(v.node, owner.iface)?.master : undefined;
}
