/**
 * The format samples under test/fixtures/formats (see its README): where they
 * are, what every reader must recover from them, and copies a test may write
 * to (with the absolute paths the writing release used replaced by the copy's).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DesiredState } from '../../src/nat/model';

export const FORMATS = path.join(__dirname, '..', '..', '..', 'test', 'fixtures', 'formats');

/** Each NAT state directory sample: the release that wrote it and the backend it ran. */
export const NAT_STATES = [
  { dir: 'nat-v1-291a2be-iptables', release: '291a2be', backend: 'iptables', version: 1 },
  { dir: 'nat-v1-291a2be-nft', release: '291a2be', backend: 'nft', version: 1 },
  { dir: 'nat-v3-098353f-netlink', release: '098353f', backend: 'netlink', version: 3 },
  { dir: 'nat-v3-5e5a506-netlink', release: '5e5a506', backend: 'netlink', version: 3 },
  { dir: 'nat-v3-5e5a506-iptables', release: '5e5a506', backend: 'iptables', version: 3 },
  { dir: 'nat-v3-5e5a506-nft', release: '5e5a506', backend: 'nft', version: 3 },
] as const;

/** The services every sample holds (the same commands ran on each release). */
export const SERVICES: DesiredState['services'] = [
  {
    name: 'web',
    vip: '10.96.0.10',
    port: 80,
    proto: 'tcp',
    endpoints: [
      { ip: '10.88.0.2', port: 8080, weight: 1 },
      { ip: '10.88.0.3', port: 8080, weight: 3 },
      { ip: '10.88.0.6', port: 8080, weight: 1 },
    ],
  },
  {
    name: 'api',
    vip: '10.96.0.11',
    port: 443,
    proto: 'tcp',
    endpoints: [
      { ip: '10.88.0.4', port: 8443, weight: 1 },
      { ip: '10.88.0.5', port: 8443, weight: 1 },
    ],
    affinitySeconds: 30,
    masqueradeNotFrom: '10.0.0.0/8',
  },
  {
    name: 'web6',
    vip: 'fd00::1',
    port: 80,
    proto: 'tcp',
    endpoints: [
      { ip: 'fd00::10', port: 8080, weight: 1 },
      { ip: 'fd00::11', port: 8080, weight: 2 },
    ],
  },
];

export const RULES: DesiredState['rules'] = [
  { kind: 'masquerade', source: '10.88.0.0/16', outNot: 'br0' },
  { kind: 'dnat', destination: '10.77.0.1', proto: 'tcp', port: 8080, toIp: '10.88.0.2', toPort: 80 },
];

export const FORWARDS: DesiredState['forwards'] = [
  { name: 'db', target: 'db', targetIp: '10.77.0.2', listenPort: 13308, targetPort: 13309, proto: 'tcp', snat: 'auto' },
];

/**
 * A copy of sample `rel` (a directory under FORMATS) in a new temporary
 * directory, the writing release's scratch paths in its files
 * (/tmp/formats-work/RELEASE/scratch, and the CNI state directory under it)
 * replaced by the copy's own.
 */
export function copySample(rel: string, prefix = 'tsnet-formats-'): string {
  const into = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const copy = (from: string, to: string) => {
    fs.mkdirSync(to, { recursive: true });
    for (const e of fs.readdirSync(from, { withFileTypes: true })) {
      const src = path.join(from, e.name);
      const dst = path.join(to, e.name);
      if (e.isDirectory()) copy(src, dst);
      else
        fs.writeFileSync(
          dst,
          fs.readFileSync(src, 'latin1').replace(/\/tmp\/formats-work\/[0-9a-f]{7}\/scratch(\/cni-state)?/g, into),
          'latin1',
        );
    }
  };
  copy(path.join(FORMATS, rel), into);
  return into;
}
