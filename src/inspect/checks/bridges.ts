/** Doctor checks on bridges and their ports: what cuts a container off, or its packets short. */
import { contains, parseCidr } from '../../addr/cidr';
import { familyOf } from '../../nat/model';
import { hostEndOf, ownerOf } from '../node';
import type { Check, Finding } from './check';

/** A port that does not forward cuts its container off. */
export const bridgePort: Check = {
  name: 'bridge-port',
  run(v) {
    return v.bridges.flatMap((b) =>
      b.ports
        .filter((p) => p.state && p.state !== 'forwarding')
        .map((p) => ({
          where: `${b.name} port ${p.name}`,
          problem: `port ${p.name} of bridge ${b.name} is ${p.state}: its container is cut off`,
          fix:
            p.state === 'disabled'
              ? `tsnet${v.on} link set ${p.name} --up`
              : `check STP on ${b.name} (tsnet bridge add ${b.name} without --stp turns it off)`,
        })),
    );
  },
};

/** An endpoint reaching its own service goes back out of the port it came in by. */
export const hairpin: Check = {
  name: 'hairpin',
  run(v) {
    const out: Finding[] = [];
    for (const { s, e, br } of v.bridgedEndpoints) {
      const hostEnd = hostEndOf(v.node, ownerOf(v, e.ip)!.iface);
      if (hostEnd?.port && !hostEnd.port.hairpin) {
        out.push({
          where: `${br} port ${hostEnd.name}`,
          problem: `endpoint ${e.ip}:${e.port} of service ${s.name} cannot reach its own service through the VIP: hairpin is off on its bridge port ${hostEnd.name}`,
          fix: `tsnet${v.on} bridge port ${br} ${hostEnd.name} --hairpin on`,
        });
      }
    }
    return out;
  },
};

/** Containers behind a gateway bridge with no source NAT out of the node. */
export const masquerade: Check = {
  name: 'masquerade',
  run(v) {
    const out: Finding[] = [];
    const snatSources = v.nat.rules
      .filter((r) => r.kind !== 'dnat')
      .map((r) => parseCidr(r.source, { defaultPrefix: true }));
    const containerIps = v.namespaces
      .filter((n) => !n.node)
      .flatMap((n) => n.interfaces.flatMap((i) => i.addresses.map((c) => c.split('/')[0]!)));
    for (const b of v.gatewayBridges) {
      for (const a of b.addresses.filter((x) => familyOf(x.split('/')[0]!) === 4)) {
        const subnet = parseCidr(a);
        const cidr = `${subnet.network}/${subnet.prefix}`;
        const bare = containerIps.filter((ip) => contains(subnet, ip) && !snatSources.some((src) => contains(src, ip)));
        if (bare.length) {
          out.push({
            where: `bridge ${b.name}`,
            problem: `containers on ${b.name} (${cidr}: ${bare.join(', ')}) have no masquerade rule: their packets leave the node with addresses nobody routes back`,
            fix: `tsnet${v.on} nat masquerade add --source ${cidr} --out-not ${b.name}`,
          });
        }
      }
    }
    return out;
  },
};

/** A veth whose MTU differs from its bridge's: the host end as a port, then the container end. */
export const mtu: Check = {
  name: 'mtu',
  run(v) {
    const out: Finding[] = [];
    for (const b of v.bridges) {
      const br = v.iface(b.name);
      if (!br) continue;
      for (const p of b.ports) {
        const port = v.iface(p.name);
        if (port && port.kind === 'veth' && port.mtu !== br.mtu) {
          out.push({
            where: `${b.name} port ${p.name}`,
            problem: `veth ${p.name} has MTU ${port.mtu}, its bridge ${b.name} ${br.mtu}: large packets are dropped or fragmented on the way`,
            fix: `tsnet${v.on} link set ${p.name} --mtu ${br.mtu} (and the container's end)`,
          });
        }
      }
      for (const n of v.namespaces.filter((x) => !x.node)) {
        for (const i of n.interfaces) {
          if (hostEndOf(v.node, i)?.master === b.name && i.mtu !== br.mtu) {
            out.push({
              where: `${n.id} ${i.name}`,
              problem: `${i.name} in ${n.id} has MTU ${i.mtu}, the bridge ${b.name} ${br.mtu}`,
              fix: `tsnet -n ${n.id} link set ${i.name} --mtu ${br.mtu}`,
            });
          }
        }
      }
    }
    return out;
  },
};
