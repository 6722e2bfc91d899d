/**
 * Services, masquerade and forwards carried by real IPv6 traffic, per
 * nftables backend (nat-ipv6-netlink.test.ts, nat-ipv6-nft.test.ts):
 *
 *   client fd81::2 --br1-- router (rules; fd81::1, fd80::1) --br0-- b1 fd80::11
 *                                                                -- b2 fd80::12
 *
 * Everything through the CLI; conntrack(8) and nft are the observers.
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
import { eventually } from '../harness/eventually';

export function natIpv6Suite(backend: BackendName): void {
  const topo = new Topology(`v6${backendLetter(backend)}`);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-v6-${backend}-`));
  const VIP = 'fd96::10';
  let router: NetNs, client: NetNs;
  const b: NetNs[] = [];
  const servers: Server[] = [];
  const { ok, inNs } = natView(() => router.name!, backend, stateDir);

  test.before(async () => {
    router = await topo.ns('router');
    client = await topo.ns('client');
    await bridge.ensure(router, 'br0', { addresses: ['fd80::1/64'] });
    await bridge.ensure(router, 'br1', { addresses: ['fd81::1/64'] });
    sysctl.set(router, sysctl.keys.ipv6Forwarding, 1);
    await route.add(router, { dst: 'fd96::/64', dev: 'br0' }); // a route for the VIPs, so OUTPUT DNAT happens
    await attach(router, client, { bridge: 'br1', address: 'fd81::2/64' });
    for (const i of [1, 2]) {
      const ns = await topo.ns(`b${i}`);
      b.push(ns);
      await attach(router, ns, { bridge: 'br0', address: `fd80::1${i}/64`, hairpin: true });
      servers.push(await serve(ns, 'http', '::', 8080, `b${i}`));
      servers.push(await serve(ns, 'tcp', '::', 3309, `b${i}-db`));
    }
    // IPv6 is ready once duplicate address detection is over everywhere (a tentative address sends nothing).
    await eventually(
      () =>
        [router, client, ...b].every(
          (ns) => !run('ip', ['-n', ns.name!, '-6', 'addr', 'show', 'tentative']).stdout.trim(),
        ),
      { ms: 10_000, every: 100, what: 'duplicate address detection ending in the router, the client and the backends' },
    );
  });

  test.after.always(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    topo.cleanup();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  test.serial(
    'an IPv6 service spreads connections over its endpoints, from a client and from the router itself',
    async (t) => {
      ok(
        'service',
        'add',
        'web6',
        '--vip',
        `[${VIP}]:80`,
        '--endpoint',
        '[fd80::11]:8080',
        '--endpoint',
        '[fd80::12]:8080',
      );
      const r = await request(client, 'http', VIP, 80, { count: 60, concurrency: 6 });
      t.is(r.ok, 60, r.errors.join('; '));
      t.true((r.replies.b1 ?? 0) > 10 && (r.replies.b2 ?? 0) > 10, JSON.stringify(r.replies));
      const local = await request(router, 'http', VIP, 80, { count: 10 });
      t.is(local.ok, 10, `nat OUTPUT: ${local.errors.join('; ')}`);
      t.regex(
        inNs('nft', 'list', 'table', 'ip6', 'tsnet').stdout,
        /fd96::10 \. tcp \. 80 counter packets 70 bytes \d+ comment "web6"/,
      );
    },
  );

  test.serial('IPv6 hairpin: an endpoint reaching its own service through the VIP is answered', async (t) => {
    ok('service', 'add', 'solo6', '--vip', `[${VIP}]:81`, '--endpoint', '[fd80::11]:8080');
    t.deepEqual((await request(b[0]!, 'http', VIP, 81, { count: 10 })).replies, { b1: 10 });
    ok('service', 'del', 'solo6');
  });

  test.serial("IPv6 masquerade: the endpoint sees the router's address, not the client's", async (t) => {
    ok('nat', 'masquerade', 'add', '--source', 'fd81::/64', '--out-not', 'br1');
    t.is((await request(client, 'http', VIP, 80, { count: 4 })).ok, 4);
    const flows = inNs('conntrack', '-L', '-f', 'ipv6', '-p', 'tcp', '--orig-dst', VIP).stdout;
    t.regex(flows, /src=fd81::2 dst=fd96::10 .*dport=80 .*src=fd80::1[12] dst=fd80::1 /, flows);
    ok('nat', 'masquerade', 'del', '--source', 'fd81::/64', '--out-not', 'br1');
  });

  test.serial(
    "an IPv6 forward: the router's port 3308 reaches [fd80::12]:3309, and only its own flows are source-NATed",
    async (t) => {
      ok('forward', 'fd80::12', '3308', '3309', '--name', 'db6');
      const r = await request(client, 'tcp', 'fd81::1', 3308, { count: 10, concurrency: 5 });
      t.deepEqual(r.replies, { 'b2-db': 10 }, r.errors.join('; '));
      const flows = inNs('conntrack', '-L', '-f', 'ipv6', '-p', 'tcp', '--orig-port-dst', '3308').stdout;
      t.regex(flows, /src=fd81::2 dst=fd81::1 .*dport=3308 .*src=fd80::12 dst=fd80::1 sport=3309/, flows);
      // A direct connection to the target is not the forward's: not source-NATed.
      t.deepEqual((await request(client, 'tcp', 'fd80::12', 3309, { count: 1 })).replies, { 'b2-db': 1 });
      const direct = inNs(
        'conntrack',
        '-L',
        '-f',
        'ipv6',
        '-p',
        'tcp',
        '--orig-dst',
        'fd80::12',
        '--orig-port-dst',
        '3309',
      ).stdout;
      t.regex(direct, /src=fd81::2 dst=fd80::12 .*src=fd80::12 dst=fd81::2 /, direct);
      ok('forward', 'rm', 'db6');
      t.is((await request(client, 'tcp', 'fd81::1', 3308, { count: 1, timeoutMs: 500 })).ok, 0);
    },
  );
}
