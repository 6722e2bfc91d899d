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
import { parseIpamConfig, rangeOf, rangeText } from '../../src/cni/ipam/config';
import { parseBridgeConf, portForwards, hostVethName } from '../../src/cni/bridge';
import { containerRoutes } from '../../src/cni/bridge/container';
import { exampleConflist } from '../../src/cni/install';
import { PLUGINS } from '../../src/cni/plugin';
import { convertResult, parseResult, requireSupported } from '../../src/cni/version';
import type { NetConf } from '../../src/cni/types';
import { FORMATS, FORWARDS, NAT_STATES, RULES, SERVICES, copySample } from '../harness/formats';
import { tsnet } from '../harness/fixtures';

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
  const listing = (file: string) => fs.readFileSync(path.join(FORMATS, 'listings', file), 'utf8');
  t.deepEqual(JSON.parse(listing('nat-ls.json')), RULES);
  t.deepEqual(JSON.parse(listing('forward-ls.json')), FORWARDS);
  // Through today's code: each NAT sample as today's reader loads it, and as today's CLI lists it (no namespace,
  // no root: `nat ls` and `forward ls` only read the state directory).
  for (const s of NAT_STATES) {
    const dir = copySample(s.dir);
    try {
      const stored = new NatStore(dir).load().indexed.desired();
      for (const [cmd, file, kept] of [
        ['nat', 'nat-ls.json', stored.rules],
        ['forward', 'forward-ls.json', stored.forwards],
      ] as const) {
        t.deepEqual(JSON.parse(listing(file)), kept, `${file} parses back to what ${s.dir} stores`);
        const r = tsnet('--state-dir', dir, '-j', cmd, 'ls');
        t.is(r.status, 0, `${cmd} ls of ${s.dir}: ${r.stderr}`);
        t.is(r.stdout, listing(file), `today's \`-j ${cmd} ls\` of ${s.dir} prints the bytes every release printed`);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

const CNI_5E5A506 = path.join(FORMATS, 'cni-5e5a506');
const sample = <T = Record<string, any>>(rel: string): T =>
  JSON.parse(fs.readFileSync(path.join(CNI_5E5A506, rel), 'utf8')) as T;

test("CNI input: the network configs 5e5a506 was given (v4 with a port mapping, dual stack) are read by today's bridge and IPAM config parsers", (t) => {
  const v4 = sample<NetConf>('cni-input/v4.json');
  const dual = sample<NetConf>('cni-input/dual.json');
  for (const conf of [v4, dual]) t.is(requireSupported(conf.cniVersion), '1.1.0');
  const stateDir = '/tmp/formats-work/5e5a506/scratch/cni-state';
  const flags = {
    forceAddress: false,
    promiscMode: false,
    enabledad: false,
    macspoofchk: false,
    natBackend: 'auto',
    stateDir,
  };
  t.deepEqual(parseBridgeConf(v4), {
    name: 'fmtnet4',
    bridge: 'tsbr4',
    isGateway: true,
    isDefaultGateway: true,
    ipMasq: true,
    hairpinMode: true,
    ipamType: 'tsnet-ipam',
    ...flags,
  });
  t.deepEqual(parseBridgeConf(dual), {
    name: 'fmtnet46',
    bridge: 'tsbr46',
    isGateway: true,
    isDefaultGateway: true,
    ipMasq: true,
    hairpinMode: false,
    ipamType: 'tsnet-ipam',
    ...flags,
  });
  const ipam4 = parseIpamConfig(v4);
  t.deepEqual(
    ipam4.rangeSets.map((set) => set.map((r) => [r.subnet, rangeText(r), r.gateway])),
    [[['10.89.0.0/24', '10.89.0.1-10.89.0.254', '10.89.0.1']]],
    'the legacy single range ("subnet")',
  );
  t.deepEqual(ipam4.routes, [{ dst: '0.0.0.0/0' }]);
  const ipam46 = parseIpamConfig(dual);
  t.deepEqual(
    ipam46.rangeSets.map((set) => set.map((r) => [r.family, r.subnet, rangeText(r), r.gateway])),
    [
      [[4, '10.90.0.0/24', '10.90.0.1-10.90.0.254', '10.90.0.1']],
      [[6, 'fd00:90::/64', 'fd00:90::1-fd00:90::ffff:ffff:ffff:ffff', 'fd00:90::1']],
    ],
    'one range set per family ("ranges")',
  );
  t.deepEqual(ipam46.routes, []);
  // The port mapping, as today's ADD turns it into a forward: the one the release recorded for this attachment.
  const [fwd, ...more] = portForwards('fmtnet4', 'ctr4', 'eth0', v4.runtimeConfig!.portMappings!, ['10.89.0.2']);
  t.deepEqual(more, []);
  t.like(fwd, { listenPort: 18080, targetIp: '10.89.0.2', targetPort: 80, proto: 'tcp', snat: 'none' });
  t.deepEqual(
    [fwd!.name],
    sample<{ nat: { forwards: string[] } }>('cni/fmtnet4/ctr4:eth0.json').nat.forwards,
    "the forward's name, derived from the attachment, is the one 5e5a506's record names",
  );
});

for (const [which, input, cid] of [
  ['v4', 'v4.json', 'ctr4'],
  ['dual', 'dual.json', 'ctr46'],
] as const) {
  test(`CNI result: the ADD result 5e5a506 printed (${which}) is read and written back unchanged by today's result conversion, and says what today's config and naming say`, (t) => {
    const raw = sample(`cni-result/${input}`);
    const conf = sample<NetConf>(`cni-input/${input}`);
    const r = parseResult(raw, 'result');
    t.deepEqual(convertResult(r, '1.1.0'), raw, 'read and written again in its own version: the same document');
    const old = convertResult(r, '0.4.0') as { ips: { version: string; address: string }[] };
    t.deepEqual(
      old.ips.map((ip) => [ip.version, ip.address]),
      r.ips!.map((ip) => [ip.address.includes(':') ? '6' : '4', ip.address]),
      'written for a 0.4.0 runtime: each address with its version',
    );
    t.deepEqual(parseResult(old), { ...r, cniVersion: '0.4.0' }, 'and read back from 0.4.0');
    // What the result says, against today's reading of the config it answered.
    const c = parseBridgeConf(conf);
    const ipam = parseIpamConfig(conf);
    t.deepEqual(
      r.interfaces!.map((i) => [i.name, i.sandbox]),
      [
        [c.bridge, undefined],
        [hostVethName(c.name, cid, 'eth0'), undefined],
        ['eth0', `/run/netns/${cid}`],
      ],
      'the bridge, the host end under the name DEL derives without a record, the container end',
    );
    t.is(r.ips!.length, ipam.rangeSets.length, 'one address per range set');
    r.ips!.forEach((ip, i) => {
      const range = rangeOf(ipam.rangeSets[i]!, ip.address.split('/')[0]!);
      t.truthy(range, `${ip.address} is in range set ${i}`);
      t.is(ip.address.split('/')[1], String(range!.prefix));
      t.is(ip.gateway, range!.gateway);
      t.is(r.interfaces![ip.interface!]!.name, 'eth0');
    });
    t.deepEqual(
      containerRoutes(c, { cniVersion: conf.cniVersion, ips: r.ips!, routes: ipam.routes }),
      r.routes,
      "the routes: IPAM's, plus a default route per family via its gateway (isDefaultGateway)",
    );
  });
}

test("CNI install: the example conflist `tsnet cni install` wrote at 5e5a506 is what today writes, and its plugin config is read by today's parsers", (t) => {
  const list = sample<{ cniVersion: string; name: string; plugins: Record<string, unknown>[] }>(
    'cni-install/10-tsnet.conflist',
  );
  t.deepEqual(list, exampleConflist());
  t.is(requireSupported(list.cniVersion), '1.1.0');
  t.deepEqual(
    list.plugins.map((p) => p.type),
    ['tsnet-bridge'],
  );
  t.true((PLUGINS as readonly unknown[]).includes(list.plugins[0]!.type));
  // A runtime hands each plugin its entry with the list's cniVersion and name (libcni's ConfFromBytes of a list).
  const conf = { cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] } as NetConf;
  t.like(parseBridgeConf(conf), {
    name: 'tsnet',
    bridge: 'tsnet0',
    isGateway: true,
    isDefaultGateway: true,
    ipMasq: true,
    hairpinMode: true,
    natBackend: 'auto',
    ipamType: 'tsnet-ipam',
  });
  const ipam = parseIpamConfig(conf);
  t.deepEqual(
    ipam.rangeSets.map((set) => set.map((r) => [r.subnet, rangeText(r), r.gateway])),
    [[['10.89.0.0/24', '10.89.0.1-10.89.0.254', '10.89.0.1']]],
  );
  t.deepEqual(ipam.routes, [{ dst: '0.0.0.0/0' }]);
  t.is(ipam.dataDir, '/var/lib/cni/networks');
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
