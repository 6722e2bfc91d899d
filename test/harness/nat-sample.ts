/**
 * A desired state that uses every kind of rule the nftables layout has
 * (plain, weighted, affinity + masquerade-not-from, masquerade-not-from only,
 * empty services; masquerade, SNAT, DNAT rules; forwards with every --snat),
 * per address family: what the encoder tests compare with nft's own output.
 */
import { normalizeState, type DesiredState } from '../../src/nat/model';

export function sampleState(family: 4 | 6): DesiredState {
  const v6 = family === 6;
  const a = (v4: string, v6a: string) => (v6 ? v6a : v4);
  return normalizeState({
    services: [
      {
        name: 'default/web',
        vip: a('10.96.0.1', 'fd96::1'),
        port: 80,
        proto: 'tcp',
        endpoints: [
          { ip: a('10.0.0.2', 'fd00::2'), port: 8080, weight: 1 },
          { ip: a('10.0.0.3', 'fd00::3'), port: 8080, weight: 1 },
        ],
      },
      {
        name: 'default/dns',
        vip: a('10.96.0.10', 'fd96::a'),
        port: 53,
        proto: 'udp',
        endpoints: [
          { ip: a('10.0.0.2', 'fd00::2'), port: 5353, weight: 2 },
          { ip: a('10.0.0.4', 'fd00::4'), port: 5353, weight: 1 },
        ],
      },
      {
        name: 'default/aff',
        vip: a('10.96.0.11', 'fd96::b'),
        port: 80,
        proto: 'tcp',
        affinitySeconds: 600,
        masqueradeNotFrom: a('10.0.0.0/16', 'fd00::/64'),
        endpoints: [
          { ip: a('10.0.0.2', 'fd00::2'), port: 81, weight: 1 },
          { ip: a('10.0.0.3', 'fd00::3'), port: 81, weight: 3 },
        ],
      },
      {
        name: 'default/mnf',
        vip: a('10.96.0.12', 'fd96::c'),
        port: 80,
        proto: 'tcp',
        masqueradeNotFrom: a('10.0.0.0/12', 'fd00::/12'),
        endpoints: [{ ip: a('10.0.0.5', 'fd00::5'), port: 80, weight: 1 }],
      },
      { name: 'default/empty', vip: a('10.96.0.13', 'fd96::d'), port: 80, proto: 'tcp', endpoints: [] },
    ],
    rules: [
      { kind: 'masquerade', source: a('10.0.0.0/24', 'fd00::/64'), outNot: 'br0' },
      { kind: 'snat', source: a('10.1.0.0/24', 'fd01::/64'), toSource: a('192.0.2.1', 'fd09::1'), out: 'eth0' },
      {
        kind: 'dnat',
        destination: a('192.0.2.2', 'fd09::2'),
        proto: 'tcp',
        port: 8443,
        toIp: a('10.0.0.2', 'fd00::2'),
        toPort: 443,
      },
    ],
    forwards: [
      {
        name: 'mysql',
        target: a('10.9.9.9', 'fd09::9'),
        targetIp: a('10.9.9.9', 'fd09::9'),
        listenPort: 3308,
        targetPort: 3309,
        proto: 'tcp',
        snat: 'auto',
      },
      {
        name: 'lo',
        target: a('10.9.9.8', 'fd09::8'),
        targetIp: a('10.9.9.8', 'fd09::8'),
        listenPort: 3310,
        targetPort: 3311,
        proto: 'tcp',
        snat: 'none',
      },
      {
        name: 'ip',
        target: a('10.9.9.7', 'fd09::7'),
        targetIp: a('10.9.9.7', 'fd09::7'),
        listenPort: 3312,
        targetPort: 3313,
        proto: 'udp',
        snat: a('192.0.2.1', 'fd09::1'),
        listen: a('192.0.2.3', 'fd09::3'),
      },
    ],
  });
}
