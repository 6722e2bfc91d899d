/** Doctor checks on the kernel's knobs: a sysctl that silently drops what tsnet set up. */
import { neededSysctls } from '../../nat/sysctls';
import { familyOf } from '../../nat/model';
import { keys } from '../../sysctl';
import type { Check, Finding } from './check';

/** A key as sysctl(8) names it: segments joined by '.', a '.' within one (an interface's, eth0.100) written '/'. */
const sysctlName = (key: readonly string[]): string => key.map((p) => p.replace(/\./g, '/')).join('.');

/** Forwards and routed containers need forwarding on, per family. */
export const ipForward: Check = {
  name: 'ip-forward',
  run(v) {
    const out: Finding[] = [];
    for (const [fam, key] of [
      [4, keys.ipForward],
      [6, keys.ipv6Forwarding],
    ] as const) {
      const name = sysctlName(key);
      const why = [
        ...v.nat.forwards.filter((f) => familyOf(f.targetIp) === fam).map((f) => `forward ${f.name}`),
        ...v.gatewayBridges
          .filter((b) => b.addresses.some((a) => familyOf(a.split('/')[0]!) === fam))
          .map((b) => `bridge ${b.name} (gateway for its containers)`),
      ];
      if (why.length && v.sysctl(key) !== '1') {
        out.push({
          where: v.host.label,
          problem: `${name} is off but ${why.join(', ')} needs forwarding: packets between interfaces are dropped`,
          fix: `tsnet sync (forwards set it), or sysctl -w ${name}=1 in ${v.host.label}`,
        });
      }
    }
    return out;
  },
};

/** A service whose endpoint sits on a bridge, reached by its neighbours through the VIP. */
export const brNetfilter: Check = {
  name: 'br-netfilter',
  run(v) {
    if (!v.bridgedEndpoints.length || v.sysctl('net.bridge.bridge-nf-call-iptables') === '1') return [];
    const bridges = [...new Set(v.bridgedEndpoints.map((x) => x.br))];
    const services = [...new Set(v.bridgedEndpoints.map((x) => x.s.name))];
    return [
      {
        where: bridges.map((b) => `bridge ${b}`).join(', '),
        problem: `services ${services.join(', ')} have endpoints on ${bridges.join(', ')}, but bridged packets skip netfilter (net.bridge.bridge-nf-call-iptables is not 1): a container reaching a service whose endpoint is on its own bridge gets the reply straight from the endpoint, un-NATed, and the connection fails`,
        fix: `modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1 in ${v.host.label}`,
      },
    ];
  },
};

/** Forwards that leave the return path to the target's own routing. */
export const rpFilter: Check = {
  name: 'rp-filter',
  run(v) {
    const asymmetric = v.nat.forwards.filter((f) => f.snat === 'none');
    if (!asymmetric.length) return [];
    const all = Number(v.sysctl('net.ipv4.conf.all.rp_filter') ?? 0);
    // The kernel uses the larger of conf.all and conf.IF.
    const strict = v.node.interfaces.filter(
      (i) => i.name !== 'lo' && Math.max(all, Number(v.sysctl(keys.rpFilter(i.name)) ?? 0)) === 1,
    );
    if (!strict.length) return [];
    const names = strict.map((i) => i.name).join(', ');
    return [
      {
        where: names,
        problem: `forward ${asymmetric.map((f) => f.name).join(', ')} uses --snat none (replies come back by the target's own route), but strict reverse-path filtering (rp_filter=1) on ${names} drops packets that arrive on another interface than the route back`,
        fix: `sysctl -w net.ipv4.conf.all.rp_filter=2 (loose) and net.ipv4.conf.IF.rp_filter=2 in ${v.host.label}`,
      },
    ];
  },
};

/** route_localnet on the way to a forward's target, against the value forwards need (ip_forward: see ipForward). */
export const routeLocalnet: Check = {
  name: 'route-localnet',
  async run(v) {
    const out: Finding[] = [];
    for (const [joined, value] of await neededSysctls(v.host, v.nat)) {
      const key = joined.split('/'); // neededSysctls joins a key's segments with '/', which no segment contains
      if (key.at(-1) !== 'route_localnet') continue;
      const now = v.sysctl(key);
      const name = sysctlName(key);
      if (now !== value)
        out.push({
          where: key[3] ?? joined,
          problem: `${name} is ${now ?? 'missing'}: 127.0.0.1 clients of a forward are dropped on the way out`,
          fix: `tsnet sync (it sets it), or sysctl -w ${name}=${value}`,
        });
    }
    return out;
  },
};

/** A full conntrack table drops new connections. */
export const conntrackFull: Check = {
  name: 'conntrack',
  run(v) {
    const count = Number(v.sysctl('net.netfilter.nf_conntrack_count') ?? 0);
    const max = v.options.conntrackMax ?? Number(v.sysctl('net.netfilter.nf_conntrack_max') ?? 0);
    if (!(max > 0 && count >= 0.9 * max)) return [];
    return [
      {
        where: v.host.label,
        problem: `the conntrack table holds ${count} of at most ${max} entries (${Math.round((100 * count) / max)}%): at the limit new connections are dropped`,
        fix: 'raise net.netfilter.nf_conntrack_max (on the host), or find what opens so many connections (conntrack -L)',
      },
    ];
  },
};
