/**
 * The NAT engine's behavioural tests, run once per backend (nat-iptables.test.ts,
 * nat-nft.test.ts, nat-netlink.test.ts). Real packets through a real router namespace:
 *
 *   client 10.81.0.2 --br1-- router (rules; 10.81.0.1, 10.80.0.1) --br0-- b1 10.80.0.11
 *                                                                      -- b2 10.80.0.12
 *                                                                      -- b3 10.80.0.13
 *
 * Everything goes through the CLI, as an operator would; iptables-save and
 * nft are the independent observers.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import * as sysctl from '../../src/sysctl';
import { attach } from '../../src/attach';
import type { NetNs } from '../../src/netns';
import type { BackendName } from '../../src/nat/backends/types';
import { serve, request, type Server } from '../../src/demo/traffic';
import { Topology, backendLetter, natView, run } from '../harness/fixtures';

export function natSuite(backend: BackendName): void {
  const topo = new Topology(`nat${backendLetter(backend)}`);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-nat-${backend}-`));
  const VIP = '10.96.0.10';
  let router: NetNs, client: NetNs;
  const backends: NetNs[] = [];
  const servers: Server[] = [];

  const { cli, ok, inNs: inRouter, rules: observe } = natView(() => router.name!, backend, stateDir);
  /** Everything in the router's tables that is not tsnet's, with packet counters removed. */
  const foreign = () =>
    [
      inRouter('iptables-save')
        .stdout.split('\n')
        .filter((l) => !l.startsWith('#') && !l.includes('TSNET'))
        .map((l) => l.replace(/\[\d+:\d+\]/, ''))
        .join('\n'),
      inRouter('nft', 'list', 'table', 'inet', 'foreign').stdout,
    ].join('\n---\n');
  const spread = (from: NetNs, n: number, proto: 'http' | 'udp' | 'tcp' = 'http', port = 80) =>
    request(from, proto, VIP, port, { count: n, concurrency: 10 });
  let foreignBefore = '';

  test.before(async () => {
    router = await topo.ns('router');
    client = await topo.ns('client');
    await bridge.ensure(router, 'br0', { addresses: ['10.80.0.1/24'] });
    await bridge.ensure(router, 'br1', { addresses: ['10.81.0.1/24'] });
    sysctl.set(router, 'net.ipv4.ip_forward', '1');
    // The service CIDR is routed like a cluster's, so locally generated traffic has a route before OUTPUT DNAT.
    await route.add(router, { dst: '10.96.0.0/16', dev: 'br0' });
    await attach(router, client, { bridge: 'br1', address: '10.81.0.2/24' });
    for (const i of [1, 2, 3]) {
      const b = await topo.ns(`b${i}`);
      backends.push(b);
      // Hairpin on the ports, as CNI's hairpinMode sets it: where br_netfilter DNATs on the bridge, the hairpin
      // packet leaves through the port it came in by.
      await attach(router, b, { bridge: 'br0', address: `10.80.0.1${i}/24`, hairpin: true });
      servers.push(await serve(b, 'http', '0.0.0.0', 8080, `b${i}`));
      servers.push(await serve(b, 'udp', '0.0.0.0', 5353, `b${i}-udp`));
    }
    // Another tool's rules, present before tsnet: they must survive every tsnet operation byte for byte.
    const rules = [
      ['-t', 'nat', '-N', 'DOCKER'],
      [
        '-t',
        'nat',
        '-A',
        'DOCKER',
        '-p',
        'tcp',
        '--dport',
        '9999',
        '-j',
        'DNAT',
        '--to-destination',
        '10.80.0.11:8080',
      ],
      ['-t', 'nat', '-A', 'PREROUTING', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', 'DOCKER'],
      ['-t', 'nat', '-A', 'POSTROUTING', '-s', '172.17.0.0/16', '!', '-o', 'docker0', '-j', 'MASQUERADE'],
      ['-t', 'filter', '-A', 'FORWARD', '-s', '192.0.2.0/24', '-j', 'DROP'],
    ];
    for (const r of rules) {
      const x = inRouter('iptables', ...r);
      if (x.status !== 0) throw new Error(`iptables ${r.join(' ')}: ${x.stderr}`);
    }
    const x = run('ip', ['netns', 'exec', router.name!, 'nft', '-f', '-'], {
      input:
        'table inet foreign {\n chain input {\n type filter hook input priority 0; policy accept;\n tcp dport 7777 counter accept\n }\n}\n',
    });
    if (x.status !== 0) throw new Error(`nft: ${x.stderr}`);
    foreignBefore = foreign();
  });

  test.after.always(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    topo.cleanup();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  /** default/web over the three endpoints, as the first test makes it (a no-op when so): each test builds what it needs and runs alone with --match. */
  const web = (...extra: string[]) =>
    ok(
      'service',
      'add',
      'default/web',
      '--vip',
      `${VIP}:80`,
      '--endpoint',
      '10.80.0.11:8080',
      '--endpoint',
      '10.80.0.12:8080',
      '--endpoint',
      '10.80.0.13:8080',
      ...extra,
    );

  test.serial(
    'a service spreads hundreds of requests evenly over three endpoints, from outside and from the router itself',
    async (t) => {
      web();
      const r = await spread(client, 300);
      t.is(r.ok, 300, r.errors.join('; '));
      for (const b of ['b1', 'b2', 'b3'])
        t.true((r.replies[b] ?? 0) > 60, `${b} got ${r.replies[b]} of 300: ${JSON.stringify(r.replies)}`);
      const local = await spread(router, 60);
      t.is(local.ok, 60, `locally generated traffic (nat OUTPUT): ${local.errors.join('; ')}`);
      t.is(Object.keys(local.replies).length, 3);
      // The same command again changes nothing; a different one under the same name is refused.
      const before = observe();
      web();
      t.is(observe(), before);
      const clash = cli('service', 'add', 'default/web', '--vip', `${VIP}:81`, '--endpoint', '10.80.0.11:8080');
      t.is(clash.status, 1);
      t.regex(clash.stderr, /^tsnet: service default\/web already exists/);
      t.is(foreign(), foreignBefore);
    },
  );

  test.serial(
    "service ls shows the kernel's counters: one per new connection, per service and per endpoint",
    async (t) => {
      ok(
        'service',
        'add',
        'default/count',
        '--vip',
        `${VIP}:85`,
        '--endpoint',
        '10.80.0.11:8080',
        '--endpoint',
        '10.80.0.12:8080@3',
      );
      const before = JSON.parse(ok('--json', 'service', 'ls').stdout).find(
        (s: { name: string }) => s.name === 'default/count',
      );
      t.deepEqual(
        [before.counters.service.packets, Object.values(before.counters.endpoints).map((c: any) => c.packets)],
        [0, [0, 0]],
      );
      const r = await request(client, 'http', VIP, 85, { count: 40, concurrency: 8 });
      t.is(r.ok, 40, r.errors.join('; '));
      const after = JSON.parse(ok('--json', 'service', 'ls').stdout).find(
        (s: { name: string }) => s.name === 'default/count',
      );
      t.is(after.counters.service.packets, 40, 'one count per connection (NAT sees its first packet)');
      t.true(after.counters.service.bytes > 40 * 40, 'bytes counted too');
      const per = after.counters.endpoints as Record<string, { packets: number }>;
      t.deepEqual(Object.keys(per), ['10.80.0.11:8080', '10.80.0.12:8080']);
      t.is(per['10.80.0.11:8080']!.packets, r.replies.b1 ?? 0, 'each endpoint counts the connections it served');
      t.is(per['10.80.0.12:8080']!.packets, r.replies.b2 ?? 0);
      const table = ok('service', 'ls').stdout;
      t.regex(
        table,
        new RegExp(
          `default/count +${VIP.replace(/\./g, '\\.')}:85 +tcp +40 +10\\.80\\.0\\.11:8080=${r.replies.b1 ?? 0},10\\.80\\.0\\.12:8080@3=${r.replies.b2 ?? 0}`,
        ),
      );
      ok('service', 'del', 'default/count');
    },
  );

  test.serial('rules read naturally: chains and comments name the service', (t) => {
    web();
    const text = observe();
    if (backend === 'iptables') {
      t.regex(
        text,
        /-A TSNET-SERVICES -d 10\.96\.0\.10\/32 -p tcp -m comment --comment "default\/web cluster IP" -m tcp --dport 80 -j TSNET-SVC-[A-Z2-7]{16}/,
      );
      t.regex(text, /-m statistic --mode random --probability 0\.3333/);
      t.regex(text, /-j DNAT --to-destination 10\.80\.0\.13:8080/);
      t.notRegex(text, /table ip tsnet/);
    } else {
      t.regex(text, /10\.96\.0\.10 \. tcp \. 80 +comment "default\/web" : goto lb-tcp-3/);
      t.regex(text, /typeof ip daddr \. meta l4proto \. th dport : verdict/);
      t.regex(text, /dnat ip to ip daddr \. meta l4proto \. tcp dport \. numgen random mod 3 map @endpoints/);
      t.regex(text, /10\.96\.0\.10 \. tcp \. 80 \. 2 + : 10\.80\.0\.13 \. 8080/);
      t.notRegex(text, /TSNET-/);
    }
  });

  test.serial('weights shift the spread; removing an endpoint takes effect for new connections', async (t) => {
    web();
    ok(
      'service',
      'set-endpoints',
      'default/web',
      '--endpoint',
      '10.80.0.11:8080@1',
      '--endpoint',
      '10.80.0.12:8080@1',
      '--endpoint',
      '10.80.0.13:8080@8',
    );
    const w = await spread(client, 300);
    t.is(w.ok, 300);
    t.true((w.replies.b3 ?? 0) > 200, `b3 (weight 8 of 10) got ${w.replies.b3} of 300`);
    t.true((w.replies.b1 ?? 0) > 5 && (w.replies.b2 ?? 0) > 5, JSON.stringify(w.replies));
    ok('service', 'set-endpoints', 'default/web', '--endpoint', '10.80.0.11:8080', '--endpoint', '10.80.0.12:8080');
    const r = await spread(client, 100);
    t.is(r.ok, 100);
    t.false('b3' in r.replies, JSON.stringify(r.replies));
    t.is(foreign(), foreignBefore);
  });

  test.serial('session affinity pins a client to one endpoint', async (t) => {
    ok('service', 'del', 'default/web');
    web('--affinity', '60');
    const r = await spread(client, 40);
    t.is(r.ok, 40);
    t.is(Object.keys(r.replies).length, 1, `one endpoint for one client: ${JSON.stringify(r.replies)}`);
  });

  test.serial(
    'hairpin: an endpoint reaching its own service through the VIP is answered (masqueraded back to itself)',
    async (t) => {
      ok('service', 'add', 'default/solo', '--vip', `${VIP}:83`, '--endpoint', '10.80.0.11:8080');
      const r = await request(backends[0]!, 'http', VIP, 83, { count: 20 });
      t.deepEqual(r.replies, { b1: 20 }, r.errors.join('; '));
      ok('service', 'del', 'default/solo');
    },
  );

  test.serial(
    "--masquerade-not-from: clients outside the CIDR reach endpoints with the router's address, clients inside keep theirs",
    async (t) => {
      ok(
        'service',
        'add',
        'default/masq',
        '--vip',
        `${VIP}:84`,
        '--endpoint',
        '10.80.0.12:8080',
        '--masquerade-not-from',
        '10.80.0.0/24',
      );
      t.deepEqual((await request(client, 'http', VIP, 84, { count: 3 })).replies, { b2: 3 });
      await request(backends[2]!, 'http', VIP, 84, { count: 1, timeoutMs: 1000 });
      // conntrack(8) as the observer: the reply tuple shows which source the endpoint saw.
      const flows = inRouter('conntrack', '-L', '-p', 'tcp', '--orig-dst', VIP, '--orig-port-dst', '84').stdout;
      t.regex(
        flows,
        /src=10\.81\.0\.2 dst=10\.96\.0\.10 .*dport=84 .*src=10\.80\.0\.12 dst=10\.80\.0\.1 /,
        `client outside: masqueraded\n${flows}`,
      );
      t.regex(
        flows,
        /src=10\.80\.0\.13 dst=10\.96\.0\.10 .*dport=84 .*src=10\.80\.0\.12 dst=10\.80\.0\.13 /,
        `b3 inside: its own address\n${flows}`,
      );
      ok('service', 'del', 'default/masq');
    },
  );

  test.serial('a service without endpoints rejects at once instead of blackholing', async (t) => {
    ok('service', 'add', 'default/empty', '--vip', `${VIP}:81`);
    const started = Date.now();
    const r = await request(client, 'tcp', VIP, 81, { count: 1, timeoutMs: 5000 });
    t.is(r.ok, 0);
    t.regex(r.errors[0] ?? '', /ECONNREFUSED/);
    t.true(Date.now() - started < 3000);
  });

  test.serial(
    'a UDP service answers; removing an endpoint clears its conntrack flows so the same flow moves',
    async (t) => {
      ok(
        'service',
        'add',
        'dns',
        '--vip',
        `${VIP}:53`,
        '--proto',
        'udp',
        '--endpoint',
        '10.80.0.11:5353',
        '--endpoint',
        '10.80.0.12:5353',
        '--endpoint',
        '10.80.0.13:5353',
      );
      const r = await spread(client, 60, 'udp', 53);
      t.is(r.ok, 60, r.errors.join('; '));
      t.is(Object.keys(r.replies).length, 3, JSON.stringify(r.replies));
      // One flow (fixed source port): all its packets go to one endpoint...
      const flow = await request(client, 'udp', VIP, 53, { count: 5, sourcePort: 40000 });
      const [pinned] = Object.keys(flow.replies);
      t.is(flow.replies[pinned!], 5);
      const keep = ['11', '12', '13']
        .filter((n) => `b${Number(n) - 10}-udp` !== pinned)
        .map((n) => `10.80.0.${n}:5353`);
      // ...until that endpoint leaves the service (its server keeps running: only conntrack cleanup moves the flow).
      ok('service', 'set-endpoints', 'dns', ...keep.flatMap((e) => ['--endpoint', e]));
      const after = await request(client, 'udp', VIP, 53, { count: 5, sourcePort: 40000 });
      t.is(after.ok, 5);
      t.false(pinned! in after.replies, `flow still reaches the removed endpoint: ${JSON.stringify(after.replies)}`);
    },
  );

  test.serial('standalone masquerade and DNAT rules', async (t) => {
    // DNAT 10.81.0.1:8081 (the router's own address) to b2; masquerade the client subnet towards br0.
    ok('nat', 'dnat', 'add', '--destination', '10.81.0.1:8081', '--to', '10.80.0.12:8080');
    ok('nat', 'masquerade', 'add', '--source', '10.81.0.0/24', '--out-not', 'br1');
    ok('nat', 'masquerade', 'add', '--source', '10.81.0.0/24', '--out-not', 'br1');
    t.is(JSON.parse(cli('--json', 'nat', 'ls').stdout).length, 2, 'adding the same rule twice keeps one');
    const sniff = await request(client, 'http', '10.81.0.1', 8081, { count: 5 });
    t.deepEqual(sniff.replies, { b2: 5 });
    // conntrack(8) observes the source b2 saw: the router's br0 address (masqueraded), not the client's.
    const flows = () => inRouter('conntrack', '-L', '-p', 'tcp', '--orig-port-dst', '8081').stdout;
    t.regex(flows(), /src=10\.81\.0\.2 dst=10\.81\.0\.1 .*dport=8081 .*src=10\.80\.0\.12 dst=10\.80\.0\.1 /, flows());
    // SNAT to a chosen address instead (the router's other one; b2 routes it back through the router).
    ok('nat', 'masquerade', 'del', '--source', '10.81.0.0/24', '--out-not', 'br1');
    ok('nat', 'snat', 'add', '--source', '10.81.0.0/24', '--to', '10.81.0.1', '--out', 'br0');
    t.deepEqual((await request(client, 'http', '10.81.0.1', 8081, { count: 5 })).replies, { b2: 5 });
    t.regex(flows(), /src=10\.81\.0\.2 dst=10\.81\.0\.1 .*dport=8081 .*src=10\.80\.0\.12 dst=10\.81\.0\.1 /, flows());
    ok('nat', 'snat', 'del', '--source', '10.81.0.0/24', '--to', '10.81.0.1', '--out', 'br0');
    ok('nat', 'masquerade', 'add', '--source', '10.81.0.0/24', '--out-not', 'br1');
    ok('nat', 'dnat', 'del', '--destination', '10.81.0.1:8081', '--to', '10.80.0.12:8080');
    ok('nat', 'dnat', 'del', '--destination', '10.81.0.1:8081', '--to', '10.80.0.12:8080');
    const gone = await request(client, 'tcp', '10.81.0.1', 8081, { count: 1 });
    t.is(gone.ok, 0);
    t.is(foreign(), foreignBefore);
  });

  test.serial(
    'after someone flushes the rules, traffic stops and `tsnet sync` brings it back with a full rebuild',
    async (t) => {
      ok('service', 'del', 'default/web');
      web();
      ok(
        'service',
        'set-endpoints',
        'default/web',
        '--endpoint',
        '10.80.0.11:8080',
        '--endpoint',
        '10.80.0.12:8080',
        '--endpoint',
        '10.80.0.13:8080',
      );
      t.is((await spread(client, 10)).ok, 10);
      const partial = JSON.parse(ok('--json', 'sync').stdout);
      t.false(partial.full, 'nothing flushed: partial');
      if (backend === 'iptables') inRouter('iptables', '-t', 'nat', '-F');
      else inRouter('nft', 'flush', 'ruleset');
      t.is(
        (await request(client, 'http', VIP, 80, { count: 3, timeoutMs: 500 })).ok,
        0,
        'the flush really broke the service',
      );
      const report = JSON.parse(ok('--json', 'sync').stdout);
      t.true(report.full, 'a flush is detected through the canary');
      const r = await spread(client, 30);
      t.is(r.ok, 30, r.errors.join('; '));
      if (backend === 'iptables') {
        // The flush took the other tool's nat rules too; its filter rules must be untouched.
        t.regex(inRouter('iptables-save', '-t', 'filter').stdout, /-A FORWARD -s 192\.0\.2\.0\/24 -j DROP/);
      }
    },
  );

  test.serial('bad input: one-line errors, nothing changed', (t) => {
    const before = observe();
    const bad: [string[], RegExp][] = [
      [['service', 'add', 'x', '--vip', '10.96.0.20'], /expected IP:PORT/],
      [['service', 'add', 'x', '--vip', '10.96.0.20:0'], /must be 1-65535/],
      [['service', 'add', 'x', '--vip', '10.96.0.20:70000'], /must be 1-65535/],
      [['service', 'add', 'x;rm -rf /', '--vip', '10.96.0.20:80'], /invalid service name/],
      [['service', 'add', 'x"y', '--vip', '10.96.0.20:80'], /invalid service name/],
      [['service', 'add', 'x', '--vip', '10.96.0.20:80', '--endpoint', '10.80.0.11:8080@0'], /weight/],
      [['service', 'add', 'x', '--vip', '10.96.0.20:80', '--proto', 'sctp'], /tcp or udp/],
      [
        ['service', 'add', 'x', '--vip', '10.96.0.20:80', '--endpoint', 'fd00::1:80'],
        /IPv4 like the VIP|expected IP:PORT/,
      ],
      [['service', 'set-endpoints', 'nope', '--endpoint', '10.80.0.11:8080'], /no service named nope/],
      [['nat', 'masquerade', 'add', '--source', '10.81.0.0/33'], /invalid/],
    ];
    for (const [args, re] of bad) {
      const r = cli(...args);
      t.is(r.status, 1, args.join(' '));
      t.regex(r.stderr, re, args.join(' '));
      t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    }
    const file = path.join(stateDir, 'bad.json');
    for (const [content, re] of [
      ['[{"name": "a", "vip": "10.96.0.30", "port": 80}, ', /not valid JSON/],
      ['{"name": "a"}', /expected a JSON array/],
      [
        '[{"name": "a", "vip": "10.96.0.30", "port": 80}, {"name": "a", "vip": "10.96.0.31", "port": 80}]',
        /duplicate service name a/,
      ],
      [
        '[{"name": "a", "vip": "10.96.0.30", "port": 80}, {"name": "b", "vip": "10.96.0.30", "port": 80}]',
        /both claim/,
      ],
    ] as [string, RegExp][]) {
      fs.writeFileSync(file, content);
      const r = cli('service', 'apply', '--file', file);
      t.is(r.status, 1, content);
      t.regex(r.stderr, re);
    }
    t.is(observe(), before, 'no rule changed');
  });

  test.serial(
    "service apply replaces the whole set in one sync; deleting everything leaves only the other tool's rules",
    async (t) => {
      const file = path.join(stateDir, 'services.json');
      fs.writeFileSync(
        file,
        JSON.stringify([
          { name: 'a', vip: VIP, port: 80, endpoints: [{ ip: '10.80.0.11', port: 8080 }] },
          { name: 'b', vip: VIP, port: 82, endpoints: ['10.80.0.12:8080', '10.80.0.13:8080@3'] },
        ]),
      );
      ok('service', 'apply', '--file', file);
      t.deepEqual(
        JSON.parse(cli('--json', 'service', 'ls').stdout).map((s: { name: string }) => s.name),
        ['a', 'b'],
      );
      t.deepEqual((await spread(client, 10)).replies, { b1: 10 });
      const b = await request(client, 'http', VIP, 82, { count: 20 });
      t.is(b.ok, 20);
      t.false('b1' in b.replies, JSON.stringify(b.replies));
      fs.writeFileSync(file, '[]');
      ok('service', 'apply', '--file', file);
      ok('nat', 'masquerade', 'del', '--source', '10.81.0.0/24', '--out-not', 'br1');
      t.is((await request(client, 'http', VIP, 80, { count: 1, timeoutMs: 500 })).ok, 0);
      if (backend === 'iptables') t.notRegex(inRouter('iptables-save').stdout, /TSNET/);
      else t.not(inRouter('nft', 'list', 'table', 'ip', 'tsnet').status, 0, 'the table is gone');
    },
  );
  test.serial(
    '2,000 services in one sync (iptables: a payload of many pieces streamed to iptables-restore): the first and the last answer',
    async (t) => {
      const file = path.join(stateDir, 'many.json');
      const vipOf = (i: number) => `10.96.${100 + (i >> 8)}.${i & 255}`;
      const many = Array.from({ length: 2000 }, (_, i) => ({
        name: `many/s${i}`,
        vip: vipOf(i),
        port: 80,
        endpoints: [{ ip: i === 1999 ? '10.80.0.13' : '10.80.0.11', port: 8080 }],
      }));
      fs.writeFileSync(file, JSON.stringify(many));
      ok('service', 'apply', '--file', file);
      if (backend === 'iptables')
        t.true(
          inRouter('iptables-save', '-t', 'nat').stdout.length > 256 * 1024,
          'a payload larger than the pipe, several pieces',
        );
      t.deepEqual((await request(client, 'http', vipOf(0), 80, { count: 5 })).replies, { b1: 5 });
      t.deepEqual((await request(client, 'http', vipOf(1999), 80, { count: 5 })).replies, { b3: 5 });
      fs.writeFileSync(file, '[]');
      ok('service', 'apply', '--file', file);
      t.is((await request(client, 'http', vipOf(1999), 80, { count: 1, timeoutMs: 500 })).ok, 0);
    },
  );
}
