import test from 'ava';
import { parseServicesFile } from '../../src/nat/services-file';
import { base32, endpointHash, portProtoHash } from '../../src/nat/names';
import {
  formatProbability,
  normalizeService,
  normalizeState,
  parseEndpoint,
  parseHostPort,
  probabilities,
  type DesiredState,
} from '../../src/nat/model';
import {
  kubeSepChain as sepChain,
  kubeSvcChain as svcChain,
  renderIptables as render,
} from '../../src/nat/iptables/ruleset';
import { chainDigest, restorePayload, type Live } from '../../src/nat/iptables/restore';
import { parseLive } from '../../src/nat/iptables/backend';
import { render as nftRender } from '../../src/nat/nftables/layout';
import { fullPlan } from '../../src/nat/nftables/plan';
import { script as nftScript } from '../../src/nat/nftables/text';
import { removedUdpEndpoints } from '../../src/nat/udp-flows';
import { serviceChanges } from '../../src/nat/nftables/incremental';

test("chain names match kube-proxy's own test vectors (proxier_test.go: ns1/svc1:p80)", (t) => {
  t.is(portProtoHash('ns1/svc1:p80', 'tcp'), 'XPGD46QRK7WJZT7O');
  t.is(endpointHash('ns1/svc1:p80', 'tcp', '10.180.0.1:80'), 'SXIVWICOYRO3J4NJ');
  t.is(base32(Buffer.from('foobar')), 'MZXW6YTBOI'); // RFC 4648 section 10, padding dropped
  t.is(svcChain({ name: 'default/web', proto: 'tcp' }).length <= 28, true, 'fits iptables chain names');
});

test('probabilities: 1/(n-i) for equal weights, cumulative for weights, the last one open; formatted as kube-proxy does', (t) => {
  t.deepEqual(
    probabilities([1, 1, 1]).map((p) => p && formatProbability(p)),
    ['0.3333333333', '0.5000000000', undefined],
  );
  t.deepEqual(
    probabilities([1, 1, 8]).map((p) => p && formatProbability(p)),
    ['0.1000000000', '0.1111111111', undefined],
  );
  t.deepEqual(probabilities([5]), [undefined]);
  // Each endpoint's overall share is its weight over the sum.
  const w = [3, 1, 2, 4];
  const p = probabilities(w);
  let rest = 1;
  const share = w.map((_, i) => {
    const s = rest * (p[i] ?? 1);
    rest -= s;
    return s;
  });
  share.forEach((s, i) => t.true(Math.abs(s - w[i]! / 10) < 1e-12));
});

const web: DesiredState = normalizeState({
  services: [
    {
      name: 'default/web',
      vip: '10.96.0.10',
      port: 80,
      proto: 'tcp',
      endpoints: [parseEndpoint('10.0.0.2:8080'), parseEndpoint('10.0.0.3:8080@3')],
    },
  ],
  rules: [{ kind: 'masquerade', source: '10.88.0.0/16', outNot: 'br0' }],
});

test('iptables renderer: kube-proxy-shaped chains, a comment on every service rule, hooks inserted at the top', (t) => {
  const { payload } = restorePayload(render(web, 4), undefined);
  const svc = svcChain(web.services[0]!);
  const sep = sepChain(web.services[0]!, '10.0.0.2', 8080);
  const lines = payload.split('\n');
  t.true(
    lines.includes(
      `-A TSNET-SERVICES -m comment --comment "default/web cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j ${svc}`,
    ),
  );
  t.true(
    lines.includes(
      `-A ${svc} -m comment --comment "default/web -> 10.0.0.2:8080" -m statistic --mode random --probability 0.2500000000 -j ${sep}`,
    ),
  );
  t.true(lines.includes(`-A ${sep} -m comment --comment "default/web" -s 10.0.0.2/32 -j TSNET-MARK-MASQ`));
  t.true(lines.includes(`-A ${sep} -m comment --comment "default/web" -p tcp -j DNAT --to-destination 10.0.0.2:8080`));
  t.true(
    lines.includes(
      '-A TSNET-SNAT -m comment --comment "tsnet masquerade 10.88.0.0/16" -s 10.88.0.0/16 ! -o br0 -j MASQUERADE --random-fully',
    ),
  );
  t.true(lines.includes('-A TSNET-MARK-MASQ -j MARK --or-mark 0x40000'));
  t.true(lines.includes('-I PREROUTING 1 -m comment --comment "tsnet service portals" -j TSNET-SERVICES'));
  t.true(
    lines.includes(
      '-I INPUT 1 -m comment --comment "tsnet service portals" -m conntrack --ctstate NEW -j TSNET-SERVICES',
    ),
  );
  t.false(payload.includes('KUBE-'), "never touches kube-proxy's chains");
  t.false(
    /^-[FXZ]( |$)|^-[AI] (PREROUTING|OUTPUT|POSTROUTING|INPUT|FORWARD) (?!.*TSNET-)/m.test(payload),
    'no flush of anything, only jumps into our own chains',
  );
  for (const table of ['*nat', '*filter']) t.is(lines.filter((l) => l === table).length, 1);
});

test('iptables partial sync: one changed service rewrites its chains and the dispatch chain, deletes the stale endpoint, nothing else', (t) => {
  const before = render(web, 4);
  const live: Live = {
    chains: {
      nat: new Map(before.chains.filter((c) => c.table === 'nat').map((c) => [c.name, chainDigest(c)])),
      filter: new Map(before.chains.filter((c) => c.table === 'filter').map((c) => [c.name, chainDigest(c)])),
    },
    hooks: parseLive(restorePayload(before, undefined).payload.replace(/^-I (\S+) 1 /gm, '-A $1 ')).hooks,
  };
  const after = structuredClone(web);
  after.services[0]!.endpoints = [
    { ip: '10.0.0.3', port: 8080, weight: 3 },
    { ip: '10.0.0.4', port: 8080, weight: 1 },
  ];
  const { payload, written, deleted } = restorePayload(render(after, 4), live);
  const declared = payload
    .split('\n')
    .filter((l) => l.startsWith(':'))
    .map((l) => l.split(' ')[0]!.slice(1));
  const svc = svcChain(web.services[0]!);
  t.deepEqual(
    declared.sort(),
    [
      'TSNET-SERVICES',
      'TSNET-SERVICES',
      svc,
      sepChain(web.services[0]!, '10.0.0.4', 8080),
      sepChain(web.services[0]!, '10.0.0.2', 8080),
    ].sort(),
  );
  t.true(payload.includes(`-X ${sepChain(web.services[0]!, '10.0.0.2', 8080)}`));
  t.false(
    payload.includes(`:${sepChain(web.services[0]!, '10.0.0.3', 8080)} `),
    'an unchanged endpoint chain is left alone',
  );
  t.false(payload.includes('-I '), 'hooks already present are not inserted twice');
  t.is(written, 4, 'nat and filter dispatch, the service chain, the new endpoint chain');
  t.is(deleted, 1);
});

test('model validation: clear messages for bad addresses, ports, names and weights', (t) => {
  t.throws(() => parseHostPort('10.0.0.1'), { message: /expected IP:PORT/ });
  t.throws(() => parseHostPort('10.0.0.1:0'), { message: /1-65535/ });
  t.throws(() => parseHostPort('10.0.0.1:70000'), { message: /1-65535/ });
  t.throws(() => parseHostPort('10.0.0.300:80'), { message: /10\.0\.0\.300/ });
  t.deepEqual(parseHostPort('[fd00::1]:443'), { ip: 'fd00::1', family: 6, port: 443 });
  for (const name of ['a b', 'x;reboot', '$(id)', 'a"b', '-j ACCEPT', '', 'x'.repeat(64)]) {
    t.throws(() => normalizeService({ name, vip: '10.96.0.1', port: 80 }), { message: /invalid service name/ }, name);
  }
  t.throws(() => parseEndpoint('10.0.0.2:80@0'), { message: /weight/ });
  t.throws(() => parseEndpoint('10.0.0.2:80@1@2'), { message: /IP:PORT\[@WEIGHT\]/ });
  t.throws(
    () => normalizeService({ name: 'a', vip: '10.96.0.1', port: 80, endpoints: [parseEndpoint('[fd00::2]:80')] }),
    { message: /not IPv4/ },
  );
  t.throws(
    () =>
      normalizeService({ name: 'a', vip: '10.96.0.1', port: 80, endpoints: ['10.0.0.2:80', '10.0.0.2:80'] as never }),
    { message: /listed twice/ },
  );
  t.throws(
    () =>
      normalizeState({
        services: [
          { name: 'a', vip: '10.96.0.1', port: 80, proto: 'tcp', endpoints: [] },
          { name: 'b', vip: '10.96.0.1', port: 80, proto: 'tcp', endpoints: [] },
        ],
        rules: [],
      }),
    { message: /both claim 10\.96\.0\.1:80\/tcp/ },
  );
});

test('services.json: malformed JSON and wrong shapes are one-line errors', (t) => {
  t.throws(() => parseServicesFile('[{', 'f.json'), { message: /^f\.json: not valid JSON/ });
  t.throws(() => parseServicesFile('{}', 'f.json'), { message: /expected a JSON array/ });
  t.throws(() => parseServicesFile('[42]', 'f.json'), { message: /entry 0: expected a service object, got 42/ });
  t.deepEqual(
    parseServicesFile('[{"name":"a","vip":"10.96.0.1","port":80,"endpoints":["10.0.0.2:80@2"]}]', 'f').map(
      (s) => normalizeService(s).endpoints,
    ),
    [[{ ip: '10.0.0.2', port: 80, weight: 2 }]],
  );
});

test('removed UDP endpoints: what conntrack cleanup targets (TCP is left to finish on its own)', (t) => {
  const a = normalizeState({
    services: [
      {
        name: 'dns',
        vip: '10.96.0.53',
        port: 53,
        proto: 'udp',
        endpoints: [parseEndpoint('10.0.0.2:53'), parseEndpoint('10.0.0.3:53')],
      },
      { name: 'web', vip: '10.96.0.80', port: 80, proto: 'tcp', endpoints: [parseEndpoint('10.0.0.2:80')] },
    ],
    rules: [],
  });
  const b = structuredClone(a);
  b.services[0]!.endpoints = [b.services[0]!.endpoints[1]!];
  b.services[1]!.endpoints = [];
  t.deepEqual(removedUdpEndpoints(serviceChanges(a.services, b.services)), [
    { vip: '10.96.0.53', port: 53, ip: '10.0.0.2', epPort: 53 },
  ]);
  t.is(removedUdpEndpoints(serviceChanges(a.services, [])).length, 2, 'deleting the service clears all its flows');
});

test('forward rendering: DNAT to local addresses, SNAT of its own flows only (no fixed port), FORWARD accept, localnet guard', (t) => {
  const st = normalizeState({
    services: [],
    rules: [],
    forwards: [
      {
        name: 'mysql',
        target: 'mysql',
        targetIp: '10.200.0.9',
        listenPort: 3308,
        targetPort: 3309,
        proto: 'tcp',
        snat: 'auto',
      },
    ],
  });
  const ipt = restorePayload(render(st, 4), undefined).payload;
  t.true(
    ipt.includes(
      '-A TSNET-DNAT -m comment --comment "tsnet forward mysql" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 3308 -j DNAT --to-destination 10.200.0.9:3309',
    ),
  );
  t.true(
    ipt.includes(
      '-A TSNET-SNAT -m comment --comment "tsnet forward mysql" -d 10.200.0.9/32 -p tcp -m tcp --dport 3309 -m conntrack --ctstate DNAT --ctorigdstport 3308 -j MASQUERADE --random-fully',
    ),
  );
  t.false(/--to-source \S+:\d+/.test(ipt), 'never a fixed source port');
  t.true(
    ipt.includes(
      '-A TSNET-FORWARD -m comment --comment "tsnet forward mysql" -p tcp -m conntrack --ctstate DNAT --ctorigdstport 3308 --ctreplsrc 10.200.0.9 --ctreplsrcport 3309 -j ACCEPT',
    ),
  );
  t.true(
    ipt.includes(
      '-A TSNET-FIREWALL -m comment --comment "tsnet: block incoming localnet connections (CVE-2020-8558)" ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
    ),
  );
  const text = nftScript(fullPlan(nftRender(st, 4)).ops, 4);
  t.true(
    text.includes(
      'add rule ip tsnet dnat-rules fib daddr type local meta l4proto tcp th dport 3308 dnat to 10.200.0.9:3309 comment "tsnet forward mysql"',
    ),
  );
  t.true(
    text.includes(
      'add rule ip tsnet snat-rules ip daddr 10.200.0.9 meta l4proto tcp th dport 3309 ct status dnat ct original proto-dst 3308 masquerade fully-random comment "tsnet forward mysql"',
    ),
  );
  // --listen on a non-loopback address: no route_localnet, so no guard.
  const scoped = normalizeState({
    services: [],
    rules: [],
    forwards: [{ ...st.forwards[0]!, listen: '192.0.2.1', snat: '192.0.2.1' }],
  });
  const p2 = restorePayload(render(scoped, 4), undefined).payload;
  t.true(p2.includes('-d 192.0.2.1/32 -p tcp -m tcp --dport 3308 -j DNAT'));
  t.true(p2.includes('-j SNAT --to-source 192.0.2.1 --random-fully'));
  t.false(p2.includes('CVE-2020-8558'));
  t.throws(
    () =>
      normalizeState({ services: [], rules: [], forwards: [st.forwards[0]!, { ...st.forwards[0]!, name: 'other' }] }),
    {
      message: /both listen on tcp port 3308/,
    },
  );
});

test('iptables partial sync is guarded by the canary in the same transaction, for both tables', (t) => {
  const rs = {
    family: 4 as const,
    chains: [{ table: 'nat' as const, name: 'TSNET-SVC-X', rules: [{ target: { kind: 'RETURN' as const } }] }],
    hooks: [],
  };
  const g = restorePayload(
    rs,
    { chains: { nat: new Map(), filter: new Map() }, hooks: new Map() },
    { guardCanary: true },
  ).payload.split('\n');
  const nat = g.indexOf('*nat');
  const filter = g.indexOf('*filter');
  t.true(nat >= 0 && filter > nat);
  t.regex(g[nat + 1]!, /^-C TSNET-CANARY .*tsnet canary.* -j RETURN$/);
  t.is(g[nat + 2], ':TSNET-SVC-X - [0:0]', 'the change follows the check');
  t.regex(g[filter + 1]!, /^-C TSNET-CANARY /);
  t.is(g[filter + 2], 'COMMIT', 'an unchanged table is still checked');
  t.false(
    g.some((l) => l.startsWith(':TSNET-CANARY')),
    'never re-declared (that would flush it and defeat the check)',
  );
});

test("a masquerade that spares a destination (a cluster's pod network) renders as ! -d in both layouts", (t) => {
  const st = normalizeState({
    services: [],
    rules: [{ kind: 'masquerade', source: '10.72.3.5/32', destinationNot: '10.72.0.0/16', outNot: 'tsnet0' }],
    forwards: [],
  });
  const ipt = restorePayload(render(st, 4), undefined).payload;
  t.true(
    ipt.includes(
      '-A TSNET-SNAT -m comment --comment "tsnet masquerade 10.72.3.5/32 not to 10.72.0.0/16" -s 10.72.3.5/32 ! -d 10.72.0.0/16 ! -o tsnet0 -j MASQUERADE --random-fully',
    ),
    ipt,
  );
  const text = nftScript(fullPlan(nftRender(st, 4)).ops, 4);
  t.regex(
    text,
    /add rule ip tsnet snat-rules ip saddr 10\.72\.3\.5 ip daddr != 10\.72\.0\.0\/16 oifname != "tsnet0" masquerade/,
  );
  t.throws(
    () =>
      normalizeState({
        services: [],
        rules: [{ kind: 'masquerade', source: '10.72.3.5/32', destinationNot: 'fd00::/8' }],
        forwards: [],
      }),
    { message: /different families/ },
  );
});
