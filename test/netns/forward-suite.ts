/**
 * `tsnet forward`, behaviour with real connections, once per backend
 * (forward-iptables.test.ts, forward-nft.test.ts):
 *
 *   clients 10.91.0.2 --br-cl-- fwd (10.91.0.1 | 10.90.0.1) --br-db-- db  10.90.0.2 (TCP :3309, UDP :5353)
 *                                                                  -- db2 10.90.0.3 (TCP :3309, UDP :5353)
 *
 * db and db2 have no route back to the clients' subnet: only the forward's
 * source NAT makes replies find their way. `mysql` resolves through
 * /etc/hosts (a copy bind-mounted inside the test sandbox's private mount namespace).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import { attach } from '../../src/attach';
import { native } from '../../src/native';
import type { NetNs } from '../../src/netns';
import { serve, request, type Server } from '../../src/demo/traffic';
import { Topology, backendLetter, natView } from '../harness/fixtures';
import type { BackendName } from '../../src/nat/backends/types';

export function forwardSuite(backend: BackendName): void {
  const topo = new Topology(`fw${backendLetter(backend)}`);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-fwd-${backend}-`));
  const hosts = path.join(stateDir, 'hosts');
  let fwd: NetNs, clients: NetNs, db: NetNs, db2: NetNs;
  const servers: Server[] = [];

  const { cli, ok, inNs: inFwd, rules } = natView(() => fwd.name!, backend, stateDir);
  const sysctl = (key: string) => inFwd('cat', `/proc/sys/${key.replace(/\./g, '/')}`).stdout.trim();
  /** The forward the first test makes, made again (a no-op when there): each test builds what it needs and runs alone with --match. */
  const mysql = () => ok('forward', 'mysql', '3308', '3309');

  test.before(async () => {
    fwd = await topo.ns('fwd');
    clients = await topo.ns('clients');
    db = await topo.ns('db');
    db2 = await topo.ns('db2');
    await bridge.ensure(fwd, 'br-db', { addresses: ['10.90.0.1/24'] });
    await bridge.ensure(fwd, 'br-cl', { addresses: ['10.91.0.1/24'] });
    await attach(fwd, clients, { bridge: 'br-cl', address: '10.91.0.2/24' });
    for (const [ns, ip, name] of [
      [db, '10.90.0.2', 'db'],
      [db2, '10.90.0.3', 'db2'],
    ] as const) {
      await attach(fwd, ns, { bridge: 'br-db', address: `${ip}/24` });
      await route.del(ns, { dst: 'default' }); // no way back to the clients but through the forward's SNAT
      servers.push(await serve(ns, 'tcp', ip, 3309, name));
      servers.push(await serve(ns, 'udp', ip, 5353, `${name}-udp`));
    }
    // Every forward suite (one per backend, possibly at once) needs the same two names: the first to get here
    // mounts them, inside the sandbox's own mount namespace only, and nobody unmounts (the sandbox's end does).
    if (!/ mysql-new\n/.test(fs.readFileSync('/etc/hosts', 'utf8'))) {
      fs.writeFileSync(hosts, `${fs.readFileSync('/etc/hosts', 'utf8')}\n10.90.0.2 mysql\n10.90.0.3 mysql-new\n`);
      native().mount(hosts, '/etc/hosts', '', native().constants.MS_BIND);
    }
  });

  test.after.always(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    topo.cleanup();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  test.serial(
    '`tsnet forward mysql 3308 3309`: remote clients (50 at once) and clients on the host itself, 127.0.0.1 included',
    async (t) => {
      t.is(sysctl('net.ipv4.ip_forward'), '0');
      const r = ok('forward', 'mysql', '3308', '3309');
      t.regex(r.stdout, /^forward mysql: tcp port 3308 -> 10\.90\.0\.2:3309/);
      const remote = await request(clients, 'tcp', '10.91.0.1', 3308, { count: 200, concurrency: 50 });
      t.deepEqual(remote.replies, { db: 200 }, remote.errors.join('; '));
      const local = await request(fwd, 'tcp', '127.0.0.1', 3308, { count: 20, concurrency: 5 });
      t.deepEqual(local.replies, { db: 20 }, `127.0.0.1 on the forwarder: ${local.errors.join('; ')}`);
      t.deepEqual((await request(fwd, 'tcp', '10.91.0.1', 3308, { count: 5 })).replies, { db: 5 });
      t.is(sysctl('net.ipv4.ip_forward'), '1');
      t.is(sysctl('net.ipv4.conf.br-db.route_localnet'), '1', 'route_localnet on the interface towards the target');
      t.is(sysctl('net.ipv4.conf.all.route_localnet'), '0', '...and not on all of them');
      t.regex(rules(), /CVE-2020-8558/, 'the localnet guard is in place');
    },
  );

  test.serial("only the forward's own flows are source-NATed: a direct connection to the target is not", async (t) => {
    mysql();
    const direct = await request(clients, 'tcp', '10.90.0.2', 3309, { count: 1, timeoutMs: 1000 });
    t.is(direct.ok, 0, 'db cannot answer 10.91.0.2 directly: it was not masqueraded');
  });

  test.serial('the same command twice changes nothing; ls shows it', (t) => {
    mysql();
    const before = rules();
    t.regex(ok('forward', 'mysql', '3308', '3309').stdout, /already in place/);
    t.is(rules(), before);
    const ls = JSON.parse(ok('--json', 'forward', 'ls').stdout);
    t.deepEqual(ls, [
      {
        name: 'mysql',
        target: 'mysql',
        targetIp: '10.90.0.2',
        listenPort: 3308,
        targetPort: 3309,
        proto: 'tcp',
        snat: 'auto',
      },
    ]);
  });

  test.serial('--dry-run prints the exact rules and sysctls and changes nothing', (t) => {
    mysql();
    const before = rules();
    const r = ok('forward', 'mysql-new', '3310', '3309', '--dry-run');
    t.regex(r.stdout, /10\.90\.0\.3:3309/);
    t.notRegex(r.stdout, /# sysctl -w net\.ipv4\.ip_forward/, 'ip_forward is already 1: only changes are listed');
    t.regex(
      r.stdout,
      backend === 'iptables'
        ? /-A TSNET-DNAT .*--dport 3310 -j DNAT --to-destination 10\.90\.0\.3:3309/
        : /th dport 3310 dnat to 10\.90\.0\.3:3309/,
    );
    t.is(rules(), before);
    t.is(JSON.parse(ok('--json', 'forward', 'ls').stdout).length, 1);
  });

  test.serial('bad input and an unreachable target: one-line errors, nothing changed', (t) => {
    mysql();
    const before = rules();
    const bad: [string[], RegExp][] = [
      [['forward', 'mysql', '0', '3309'], /listen port "0": must be 1-65535/],
      [['forward', 'mysql', '3308', '70000'], /target port "70000": must be 1-65535/],
      [['forward', 'no-such-host.invalid', '3308', '3309'], /cannot resolve target no-such-host\.invalid/],
      [['forward', 'mysql', '3311', '3309', '--name', 'a;b'], /invalid forward name/],
      [['forward', 'mysql', '3311', '3309', '--name', '-j ACCEPT'], /invalid forward name|unknown option/],
      [
        ['forward', 'mysql', '3311', '3309', '--listen', '10.91.0.99'],
        /--listen 10\.91\.0\.99 is not an address of namespace/,
      ],
      [['forward', 'mysql', '3311', '3399'], /does not accept TCP connections .*--no-check/],
      [['forward', 'mysql-new', '3308', '3309', '--name', 'other'], /both listen on tcp port 3308/],
    ];
    for (const [args, re] of bad) {
      const r = cli(...args);
      t.not(r.status, 0, args.join(' '));
      t.regex(r.stderr, re, args.join(' '));
      t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    t.is(rules(), before);
  });

  test.serial('retargeting: existing flows stay by default, move with --cut-over', async (t) => {
    ok('forward', 'mysql', '5300', '5353', '--proto', 'udp', '--name', 'dns');
    const flow = () => request(clients, 'udp', '10.91.0.1', 5300, { count: 3, sourcePort: 41000 });
    t.deepEqual((await flow()).replies, { 'db-udp': 3 });
    ok('forward', 'mysql-new', '5300', '5353', '--proto', 'udp', '--name', 'dns');
    t.deepEqual((await flow()).replies, { 'db-udp': 3 }, 'an existing flow keeps its conntrack entry (documented)');
    t.deepEqual(
      (await request(clients, 'udp', '10.91.0.1', 5300, { count: 3 })).replies,
      { 'db2-udp': 3 },
      'new flows go to the new target',
    );
    t.regex(
      ok('forward', 'mysql-new', '5300', '5353', '--proto', 'udp', '--name', 'dns', '--cut-over').stdout,
      /already in place \(1 conntrack entries of earlier targets cleared\)/,
    );
    t.deepEqual((await flow()).replies, { 'db2-udp': 3 }, 'with --cut-over the same flow moves at once');
    ok('forward', 'rm', 'dns');
  });

  test.serial(
    '--snat none: only targets that route back work (here: none do), 127.0.0.1 clients still do',
    async (t) => {
      ok('forward', 'mysql', '3320', '3309', '--name', 'nosnat', '--snat', 'none');
      t.is((await request(clients, 'tcp', '10.91.0.1', 3320, { count: 1, timeoutMs: 1000 })).ok, 0);
      t.deepEqual((await request(fwd, 'tcp', '127.0.0.1', 3320, { count: 3 })).replies, { db: 3 });
      ok('forward', 'rm', 'nosnat');
    },
  );

  test.serial('after a flush, `tsnet forward restore` brings the forward back', async (t) => {
    mysql();
    if (backend === 'iptables') inFwd('iptables', '-t', 'nat', '-F');
    else inFwd('nft', 'flush', 'ruleset');
    t.is((await request(clients, 'tcp', '10.91.0.1', 3308, { count: 1, timeoutMs: 1000 })).ok, 0);
    ok('forward', 'restore');
    t.deepEqual((await request(clients, 'tcp', '10.91.0.1', 3308, { count: 20, concurrency: 10 })).replies, { db: 20 });
  });

  if (backend === 'iptables') {
    test.serial('a FORWARD policy of DROP does not stop the forwarded flows (and only them)', async (t) => {
      mysql();
      // A flow the forward does not carry, that FORWARD would pass: clients straight to db2, which gets a route back.
      await route.add(db2, { dst: '10.91.0.0/24', via: '10.90.0.1' });
      const direct = () => request(clients, 'tcp', '10.90.0.3', 3309, { count: 1, timeoutMs: 1000 });
      try {
        t.deepEqual((await direct()).replies, { db2: 1 }, 'routed straight through while FORWARD accepts');
        inFwd('iptables', '-P', 'FORWARD', 'DROP');
        try {
          t.deepEqual((await request(clients, 'tcp', '10.91.0.1', 3308, { count: 20, concurrency: 10 })).replies, {
            db: 20,
          });
          t.is((await direct()).ok, 0, 'and only them: the direct flow is dropped by the policy');
        } finally {
          inFwd('iptables', '-P', 'FORWARD', 'ACCEPT');
        }
      } finally {
        await route.del(db2, { dst: '10.91.0.0/24', via: '10.90.0.1' });
      }
    });
  }

  test.serial('rm removes every rule and sysctl change it made, and nothing else; rm twice is a no-op', async (t) => {
    mysql();
    ok('forward', 'rm', 'mysql');
    ok('forward', 'rm', 'mysql');
    t.is((await request(clients, 'tcp', '10.91.0.1', 3308, { count: 1, timeoutMs: 1000 })).ok, 0);
    t.is(sysctl('net.ipv4.ip_forward'), '0', 'ip_forward back to what it was');
    t.is(sysctl('net.ipv4.conf.br-db.route_localnet'), '0');
    t.notRegex(rules(), /TSNET|table ip tsnet|3308/);
    t.deepEqual(JSON.parse(ok('--json', 'forward', 'ls').stdout), []);
  });
}
