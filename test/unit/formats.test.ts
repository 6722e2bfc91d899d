/**
 * Every file shape an earlier release wrote or accepted is still read, and
 * read right: the samples under test/fixtures/formats were written by those
 * releases themselves (see its README). NAT snapshots of format 1 and 3 with
 * their journals, services files as `service ls` printed them and in the
 * CLI's own shape, attachment records and host-local leases.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NatStore } from '../../src/nat/store';
import type { IptablesRecord, NftablesRecord } from '../../src/nat/backends/types';
import { normalizeService } from '../../src/nat/model';
import { parseServicesFile } from '../../src/nat/services-file';
import { RecordStore } from '../../src/cni/records';
import { IpamStore } from '../../src/cni/ipam/store';
import { FORMATS, FORWARDS, NAT_STATES, RULES, SERVICES, copySample } from '../harness/formats';

for (const s of NAT_STATES) {
  test(`NAT state ${s.dir}: format ${s.version} as ${s.release} wrote it loads with every service, rule and forward`, (t) => {
    const dir = copySample(s.dir);
    try {
      const { f, indexed } = new NatStore(dir).load();
      t.deepEqual(indexed.services(), SERVICES);
      t.deepEqual(indexed.rules, RULES);
      t.deepEqual(indexed.forwards, FORWARDS);
      t.is(f.backend, s.backend);
      t.deepEqual(f.sysctls, { 'net/ipv4/ip_forward': '0', 'net/ipv4/conf/vdb/route_localnet': '0' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('NAT state: an old format is migrated by the next write (format 3, its journal folded in), nothing lost', (t) => {
  const dir = copySample('nat-v1-291a2be-iptables');
  try {
    const store = new NatStore(dir);
    const { f, indexed } = store.load();
    t.is(f.version, 1);
    store.save(indexed, {
      ...(f.backend ? { backend: f.backend } : {}),
      ...(f.applied ? { applied: f.applied } : {}),
      ...(f.sysctls ? { sysctls: f.sysctls } : {}),
    });
    t.regex(fs.readFileSync(path.join(dir, 'nat.json'), 'utf8'), /^\{"version":3,"digest":"/);
    const again = new NatStore(dir).load().f;
    t.deepEqual(new NatStore(dir).load().indexed.desired(), indexed.desired());
    t.is(again.backend, 'iptables');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const servicesFiles = [
  ['services/ls-291a2be.json', '`service ls --json` of 291a2be (services as stored)'],
  ['services/ls-5e5a506.json', '`-j service ls` of 5e5a506 and later (with counters)'],
  ['services/cli-shape.json', 'the CLI\'s shape ("vip": "IP:PORT", endpoints "IP:PORT@W", "affinity")'],
] as const;
for (const [file, what] of servicesFiles) {
  test(`services file: ${what} gives the same services`, (t) => {
    const parsed = parseServicesFile(fs.readFileSync(path.join(FORMATS, file), 'utf8'), file).map(normalizeService);
    t.deepEqual(parsed, SERVICES);
  });
}

test('services file: the shape of --vip IP:PORT --endpoint IP:PORT applies; wrong files name the service, the field and what was expected', (t) => {
  t.deepEqual(
    parseServicesFile('[{"name":"a","vip":"10.1.0.2:80","endpoints":["10.2.0.1:80"]}]', 'f').map(normalizeService),
    [{ name: 'a', vip: '10.1.0.2', port: 80, proto: 'tcp', endpoints: [{ ip: '10.2.0.1', port: 80, weight: 1 }] }],
  );
  const bad: [string, RegExp][] = [
    [
      '[{"name":"a","vip":"10.1.0.2"}]',
      /^f: entry 0 \(service a\): "port": expected a port number 1-65535 \(or "vip" as IP:PORT\), got nothing$/,
    ],
    [
      '[{"name":"a","vip":42,"port":80}]',
      /^f: entry 0 \(service a\): "vip": expected an IP address, or IP:PORT, got 42$/,
    ],
    [
      '[{"name":"a","vip":"10.1.0.2:80","port":81}]',
      /^f: entry 0 \(service a\): "vip" "10.1.0.2:80" and "port" 81 name different ports$/,
    ],
    ['[{"name":"a","vip":"10.1.0.2:80","proto":"sctp"}]', /"proto": expected "tcp" or "udp", got "sctp"$/],
    [
      '[{"name":"a","vip":"10.1.0.2:80","endpoints":"10.2.0.1:80"}]',
      /"endpoints": expected an array of endpoints, got "10.2.0.1:80"$/,
    ],
    [
      '[{"name":"a","vip":"10.1.0.2:80","endpoints":["10.2.0.1"]}]',
      /^f: entry 0 \(service a\): "endpoints"\[0\]: expected an endpoint "IP:PORT\[@WEIGHT\]" or \{"ip", "port", "weight"\}, got "10.2.0.1"$/,
    ],
    [
      '[{"name":"a","vip":"10.1.0.2:80","endpoints":[{"ip":"10.2.0.1","port":"x"}]}]',
      /"endpoints"\[0\]: "port": expected a port number 1-65535, got "x"$/,
    ],
    [
      '[{"name":"a","vip":"10.1.0.2:80","endpoint":["10.2.0.1:80"]}]',
      /^f: entry 0 \(service a\): unknown field "endpoint" \(a service has name, vip, port/,
    ],
    ['[{"name":"a","vip":"10.1.0.2:80","affinity":"30"}]', /"affinity": expected seconds \(1-86400\), got "30"$/],
    ['[{"vip":"10.1.0.2:80"}]', /^f: entry 0: "name": expected a string, got nothing$/],
  ];
  for (const [text, re] of bad) t.throws(() => parseServicesFile(text, 'f'), { message: re }, text);
  // What only the full check knows (the address itself) names the field too.
  t.throws(() => normalizeService(parseServicesFile('[{"name":"a","vip":"10.1.0.999","port":80}]', 'f')[0]!), {
    message: /^service a: "vip": invalid IP address "10.1.0.999"$/,
  });
  t.throws(
    () =>
      normalizeService(parseServicesFile('[{"name":"a","vip":"10.1.0.2:80","endpoints":["10.2.0.1:80@0"]}]', 'f')[0]!),
    {
      message: /^service a: "endpoints\[0\]": weight 0 must be a whole number from 1 to 999999$/,
    },
  );
});

test('listings: `nat ls` and `forward ls` JSON of every release parse back to the stored rules and forwards', (t) => {
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(FORMATS, 'listings', 'nat-ls.json'), 'utf8')), RULES);
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(FORMATS, 'listings', 'forward-ls.json'), 'utf8')), FORWARDS);
});

for (const release of ['291a2be', '5e5a506']) {
  test(`CNI: attachment records and host-local leases as ${release} wrote them are read`, (t) => {
    const dir = copySample(`cni-${release}`);
    try {
      const r4 = new RecordStore(dir, 'fmtnet4').get('ctr4', 'eth0')!;
      t.is(r4.version, 1);
      t.is(r4.network, 'fmtnet4');
      t.is(r4.bridge, 'tsbr4');
      t.regex(r4.hostIfname, /^veth[0-9a-f]{11}$/);
      t.is(r4.nat.stateDir, dir);
      t.is(r4.nat.backend, release === '291a2be' ? 'iptables' : 'auto');
      t.deepEqual(r4.nat.rules, [
        { kind: 'masquerade', source: '10.89.0.2/32', outNot: 'tsbr4' },
        { kind: 'masquerade', source: '10.89.0.2/32', destination: '10.89.0.2/32' },
      ]);
      t.is(r4.nat.forwards.length, 1);
      t.true(r4.complete);
      const r46 = new RecordStore(dir, 'fmtnet46').list();
      t.deepEqual(
        r46.map((r) => [
          r.containerId,
          r.ifname,
          r.nat.rules.map((x) => (x.kind === 'dnat' ? x.destination : x.source)),
        ]),
        [['ctr46', 'eth0', ['10.90.0.2/32', 'fd00:90::2/128']]],
      );

      const leases = (network: string) =>
        new IpamStore(path.join(dir, 'ipam', 'networks'), network)
          .list()
          .map((x) => [x.ip, x.containerId, x.ifname])
          .sort();
      t.deepEqual(leases('fmtnet4'), [['10.89.0.2', 'ctr4', 'eth0']]);
      t.deepEqual(leases('fmtnet46'), [
        ['10.90.0.2', 'ctr46', 'eth0'],
        ['fd00:90::2', 'ctr46', 'eth0'],
      ]);
      t.is(new IpamStore(path.join(dir, 'ipam', 'networks'), 'fmtnet46').lastReserved(1), 'fd00:90::2');
      // The NAT state the plugin kept beside the records.
      const nat = new NatStore(dir).load().indexed;
      t.is(nat.rules.length, 4);
      t.deepEqual(
        nat.forwards.map((f) => [f.listenPort, f.targetIp, f.targetPort, f.snat]),
        [[18080, '10.89.0.2', 80, 'none']],
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test("sync records as earlier releases wrote them are read in today's typed shape: an nftables record's strings as numbers and lists", (t) => {
  const dir = copySample('nat-v3-5e5a506-netlink');
  try {
    const applied = new NatStore(dir).load().f.applied!;
    t.is(applied.backend, 'netlink');
    const rec = applied.families[4] as NftablesRecord;
    t.is(rec.layout, 3, 'layout {version: "3"} read as 3: the next sync can stay partial');
    t.deepEqual(rec.lb, { 'lbw-tcp-5': 1 });
    t.is(rec.chains.masquerading!.rules.length, 4, 'a chain\'s rule digests, "D1 D2 D3 D4", as a list');
    t.regex(rec.chains.canary!.digest, /^[\w-]{22}$/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const v1 = copySample('nat-v1-291a2be-nft');
  try {
    const rec = new NatStore(v1).load().f.applied!.families[4] as NftablesRecord;
    t.is(rec.layout, 0, 'a record of the layout before layouts had versions: the next sync is a full one');
  } finally {
    fs.rmSync(v1, { recursive: true, force: true });
  }
  const ipt = copySample('nat-v1-291a2be-iptables');
  try {
    const a = new NatStore(ipt).load().f.applied!;
    t.is(a.backend, 'iptables');
    t.regex((a.families[4] as IptablesRecord).nat['TSNET-SERVICES']!, /^[\w-]+$/);
  } finally {
    fs.rmSync(ipt, { recursive: true, force: true });
  }
});
