/**
 * tsnet-bridge + tsnet-ipam, invoked as a runtime invokes them (installed
 * executables, CNI_* env, config on stdin), inside a "node" namespace per
 * test. The same suite runs with the shim falling back to the standalone
 * plugin (cni.test.ts), with a `tsnet agent` serving each node namespace
 * (cni-agent.test.ts), and standalone on the other NAT backends
 * (cni-iptables.test.ts, cni-nft.test.ts); the assertions are the same.
 * Containers are named namespaces; an "ext" namespace beyond the node
 * has no route back to the container subnets, so only masquerade or a port
 * mapping makes traffic across work.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as link from '../../src/link';
import * as netns from '../../src/netns';
import { serve, request } from '../../src/demo/traffic';
import { SUPPORTED_VERSIONS } from '../../src/cni/version';
import { Topology, backendLetter, ip, ipJson, run } from '../harness/fixtures';
import {
  CniInstall,
  leftovers,
  masqueradeRule,
  natRules,
  nodeWithUplink,
  REFERENCE_DIR,
  type CniMode,
} from '../harness/cni';
import { eventually } from '../harness/eventually';
import type { BackendName } from '../../src/nat/backends/types';

/** Registers the suite; `mode` decides who serves the installed shims, `natBackend` which NAT backend the network config names (default: auto). */
export function cniSuite(mode: CniMode, natBackend?: BackendName): void {
  const prefix = `cni${mode === 'agent' ? 'a' : ''}${natBackend ? backendLetter(natBackend) : ''}`;
  const topo = new Topology(prefix);
  const cni = new CniInstall(prefix, mode);
  test.after.always(async () => {
    await cni.cleanup();
    topo.cleanup();
  });
  if (mode === 'agent') {
    // Through the agent means through the agent: a shim that fell back to the standalone plugin fails the run.
    test.afterEach.always((t) => {
      const fell = cni.served.fellBack.splice(0);
      t.deepEqual(fell, [], 'calls the agent did not serve (the shim fell back to the standalone plugin)');
    });
    test.after((t) => {
      // Every call fell back would show in afterEach; this is the count itself working (a test run alone with --match serves a few).
      t.true(cni.served.agent > 0, `calls served by the agent: ${cni.served.agent}`);
    });
  }

  let seq = 0;

  /** A node namespace with an uplink to an "ext" namespace (10.250.N.0/24), and a network config for it. */
  async function node(opts: { subnet?: string; extra?: Record<string, unknown>; ipam?: Record<string, unknown> } = {}) {
    const n = ++seq;
    const { host, ext, dir, nodeIp, extIp } = await nodeWithUplink(topo, cni, n, '10.250');
    await cni.serve(host);
    const network = `net${n}`;
    const conf = {
      cniVersion: '1.1.0',
      name: network,
      type: 'tsnet-bridge',
      bridge: `br${n}`,
      isGateway: true,
      isDefaultGateway: true,
      ipMasq: true,
      stateDir: path.join(dir, 'state'),
      ...(natBackend ? { natBackend } : {}),
      ipam: {
        type: 'tsnet-ipam',
        subnet: opts.subnet ?? `10.${100 + n}.0.0/24`,
        dataDir: path.join(dir, 'ipam'),
        ...(opts.ipam ?? {}),
      },
      ...(opts.extra ?? {}),
    } as Record<string, any>;
    const containers: netns.NetNs[] = [];
    const container = async (name: string) => {
      const c = await topo.ns(`n${n}${name}`);
      containers.push(c);
      return c;
    };
    const call = (
      command: string,
      c: netns.NetNs | undefined,
      cid: string,
      conf2: unknown = conf,
      extra: Record<string, string | undefined> = {},
    ) =>
      cni.call(host, 'tsnet-bridge', command, conf2, {
        containerId: cid,
        ...(c ? { netns: c.path } : {}),
        ifname: 'eth0',
        env: extra,
      });
    const left = () =>
      leftovers(host, {
        ipamDir: conf.ipam.dataDir,
        stateDir: conf.stateDir,
        network,
        match: `${(conf.ipam.subnet ?? conf.ipam.ranges[0][0].subnet).split('.').slice(0, 2).join('.')}.`,
      });
    return { n, host, ext, conf, network, container, call, left, extIp, nodeIp };
  }

  function ok(t: ExecutionContext, r: { status: number | null; stdout: string; stderr: string }, what: string) {
    t.is(r.status, 0, `${what}: ${r.stdout}${r.stderr}`);
  }

  const ipOf = (result: any) => (result.ips as { address: string }[]).map((i) => i.address.split('/')[0]!);

  test("every cniVersion: ADD gives a working attachment in that version's shape, CHECK verifies it, DEL removes it all", async (t) => {
    const nd = await node();
    const server = await nd.container('srv');
    const srvAdd = await nd.call('ADD', server, 'srv');
    ok(t, srvAdd, 'server ADD');
    const srvIp = ipOf(srvAdd.json)[0]!;
    const http = await serve(server, 'http', srvIp, 8080, 'srv');
    const gw = await serve(nd.host, 'tcp', `10.${100 + nd.n}.0.1`, 9000, 'gateway');
    const ext = await serve(nd.ext, 'tcp', nd.extIp, 9001, 'ext');
    try {
      for (const v of SUPPORTED_VERSIONS) {
        const conf = { ...nd.conf, cniVersion: v };
        const c = await nd.container(`v${v.replace(/\./g, '')}`);
        const cid = `c-${v}`;
        const add = await nd.call('ADD', c, cid, conf);
        ok(t, add, `ADD ${v}`);
        const res = add.json;
        t.is(res.cniVersion, v);
        t.deepEqual(res.interfaces.map((i: any) => i.name).slice(0, 1), [nd.conf.bridge]);
        t.is(res.interfaces[2].name, 'eth0');
        t.is(res.interfaces[2].sandbox, c.path);
        t.is(res.ips.length, 1);
        t.is(res.ips[0].interface, 2);
        t.is(res.ips[0].gateway, `10.${100 + nd.n}.0.1`);
        if (v.startsWith('0.')) t.is(res.ips[0].version, '4', `${v} results carry ips[].version`);
        else t.false('version' in res.ips[0], `${v} results have no ips[].version`);
        // Observed with ip: the address inside, the default route, the host end on the bridge, MAC as reported.
        const [eth0] = ipJson(c, 'addr', 'show', 'eth0');
        t.true(eth0.addr_info.some((a: any) => `${a.local}/${a.prefixlen}` === res.ips[0].address));
        t.is(eth0.address, res.interfaces[2].mac);
        t.deepEqual(
          ipJson(c, 'route', 'show', 'default').map((r: any) => r.gateway),
          [res.ips[0].gateway],
        );
        t.is(ipJson(nd.host, 'link', 'show', res.interfaces[1].name)[0].master, nd.conf.bridge);
        // Real traffic: another container on the bridge, the gateway, and (masqueraded) beyond the node.
        t.deepEqual(
          (await request(c, 'http', srvIp, 8080, { count: 5 })).replies,
          { srv: 5 },
          `${v}: container to container`,
        );
        t.deepEqual(
          (await request(c, 'tcp', `10.${100 + nd.n}.0.1`, 9000)).replies,
          { gateway: 1 },
          `${v}: the gateway`,
        );
        t.deepEqual(
          (await request(c, 'tcp', nd.extIp, 9001)).replies,
          { ext: 1 },
          `${v}: beyond the node, masqueraded`,
        );
        // CHECK needs 0.4.0 or later.
        const check = await nd.call('CHECK', c, cid, { ...conf, prevResult: res });
        if (v.startsWith('0.3')) {
          t.is(check.status, 1);
          t.is(check.json.code, 1, `${v}: CHECK is not allowed`);
        } else {
          ok(t, check, `CHECK ${v}`);
        }
        ok(t, await nd.call('DEL', c, cid, { ...conf, prevResult: res }), `DEL ${v}`);
        t.deepEqual(
          (await link.list(c)).map((l) => l.name),
          ['lo'],
          `${v}: DEL removed the container interface`,
        );
      }
    } finally {
      await Promise.all([http.stop(), gw.stop(), ext.stop()]);
    }
    ok(t, await nd.call('DEL', server, 'srv'), 'server DEL');
    const left = nd.left();
    t.deepEqual(
      [left.veths.length, left.reservations, left.records, left.rules],
      [1, [], [], []],
      'only the uplink is left',
    );
  });

  test('masquerade rules appear with ADD and go with DEL; without them traffic beyond the node fails', async (t) => {
    const nd = await node();
    const c = await nd.container('a');
    const ext = await serve(nd.ext, 'tcp', nd.extIp, 9001, 'ext');
    try {
      const add = await nd.call('ADD', c, 'a');
      ok(t, add, 'ADD');
      const ip = ipOf(add.json)[0]!;
      const rules = nd.left().rules.join('\n');
      t.regex(rules, masqueradeRule(ip, nd.conf.bridge));
      t.deepEqual((await request(c, 'tcp', nd.extIp, 9001)).replies, { ext: 1 });
      // The same container without ipMasq: ext has no route back, so the connection fails.
      ok(t, await nd.call('DEL', c, 'a'), 'DEL');
      t.deepEqual(nd.left().rules, []);
      const noMasq = { ...nd.conf, ipMasq: false };
      ok(t, await nd.call('ADD', c, 'a', noMasq), 'ADD without ipMasq');
      t.deepEqual(nd.left().rules, []);
      t.is((await request(c, 'tcp', nd.extIp, 9001, { timeoutMs: 1000 })).ok, 0);
      ok(t, await nd.call('DEL', c, 'a', noMasq), 'DEL');
    } finally {
      await ext.stop();
    }
  });

  test('DEL is idempotent: twice, without ADD, and after the namespace is gone it still releases the IP and the rules', async (t) => {
    const nd = await node();
    ok(t, await nd.call('DEL', undefined, 'never-added'), 'DEL without ADD');
    const c = await nd.container('gone');
    const add = await nd.call('ADD', c, 'gone');
    ok(t, add, 'ADD');
    t.is(nd.left().reservations.length, 1);
    t.is(nd.left().rules.length, 1);
    netns.del(c.name!); // the runtime removed the namespace first (and the kernel the veth pair with it)
    c.close();
    await eventually(() => nd.left().veths.length === 1, {
      ms: 5000,
      what: "the container's veth pair going with its namespace (only the node's uplink left)",
    });
    const del = await nd.call('DEL', undefined, 'gone', nd.conf, { CNI_NETNS: undefined });
    ok(t, del, 'DEL with the namespace gone');
    ok(t, await nd.call('DEL', undefined, 'gone'), 'DEL again');
    const left = nd.left();
    t.deepEqual([left.reservations, left.records, left.rules], [[], [], []]);
  });

  test('the same ADD twice returns the same result and creates nothing new', async (t) => {
    const nd = await node();
    const c = await nd.container('twice');
    const a = await nd.call('ADD', c, 'twice');
    const b = await nd.call('ADD', c, 'twice');
    ok(t, a, 'ADD');
    ok(t, b, 'ADD again');
    t.deepEqual(b.json, a.json);
    t.is(nd.left().reservations.length, 1);
    ok(t, await nd.call('DEL', c, 'twice'), 'DEL');
  });

  test('dozens of concurrent ADDs get distinct addresses and distinct host veths; concurrent DELs leave nothing', async (t) => {
    const nd = await node();
    const N = 24;
    const cs = await Promise.all(Array.from({ length: N }, (_, i) => nd.container(`p${i}`)));
    const adds = await Promise.all(cs.map((c, i) => nd.call('ADD', c, `par-${i}`)));
    for (const [i, a] of adds.entries()) ok(t, a, `ADD ${i}`);
    const ips = adds.map((a) => ipOf(a.json)[0]);
    t.is(new Set(ips).size, N, 'distinct addresses');
    t.is(new Set(adds.map((a) => a.json.interfaces[1].name)).size, N, 'distinct host veths');
    t.is(nd.left().reservations.length, N);
    t.is(nd.left().rules.length, N);
    // Every one of them is really on the bridge: the last reaches the first.
    const srv = await serve(cs[0]!, 'tcp', ips[0]!, 7000, 'first');
    t.deepEqual((await request(cs[N - 1]!, 'tcp', ips[0]!, 7000)).replies, { first: 1 });
    await srv.stop();
    const dels = await Promise.all(cs.map((c, i) => nd.call('DEL', c, `par-${i}`)));
    for (const [i, d] of dels.entries()) ok(t, d, `DEL ${i}`);
    const left = nd.left();
    t.deepEqual([left.veths.length, left.reservations, left.records, left.rules], [1, [], [], []]);
  });

  test('a plugin killed (SIGKILL) in the middle of ADD: DEL, or GC, leaves no veth, no reservation, no rule', async (t) => {
    const nd = await node();
    // Kills spread over the time a whole ADD takes here, so they land in every phase. The estimate starts
    // from a measured ADD (on a node already set up: the first also makes the bridge) and follows the ADDs
    // that finished before their kill (a loaded machine makes durations vary): such a kill is tried again.
    const probe = await nd.container('kprobe');
    let estimate = 0;
    for (const k of [0, 1]) {
      const whole = await nd.call('ADD', probe, `kill-probe${k}`);
      ok(t, whole, 'a whole ADD');
      ok(t, await nd.call('DEL', probe, `kill-probe${k}`), 'its DEL');
      estimate = whole.ms;
    }
    let landed = 0;
    let attempt = 0;
    for (const [i, share] of [0.1, 0.25, 0.4, 0.55, 0.7, 0.85].entries()) {
      for (let tries = 0; tries < 3; tries++) {
        const delay = Math.round(estimate * share);
        const c = await nd.container(`k${attempt}`);
        const cid = `killed-${attempt++}`;
        const p = cni.start(nd.host, 'tsnet-bridge', 'ADD', nd.conf, {
          containerId: cid,
          netns: c.path,
          ifname: 'eth0',
        });
        await new Promise((r) => setTimeout(r, delay));
        // Standalone, the shim execs node, so this pid is the plugin itself. Through an agent it is the
        // shim (which may be done already): the agent finishes the ADD, and the DEL or GC after it must still clean up.
        let hit = false;
        try {
          process.kill(p.pid, 'SIGKILL');
          hit = true;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // done already: the DEL after it must clean up all the same
        }
        const r = await p.done;
        if (i % 2 === 0) {
          ok(t, await nd.call('DEL', c, cid), `DEL after kill at ${delay} ms`);
        } else {
          ok(
            t,
            await nd.call(
              'GC',
              undefined,
              '',
              { ...nd.conf, 'cni.dev/valid-attachments': [] },
              { CNI_CONTAINERID: undefined, CNI_IFNAME: undefined },
            ),
            `GC after kill at ${delay} ms`,
          );
        }
        const left = nd.left();
        t.deepEqual(
          [left.veths.length, left.reservations, left.records, left.rules],
          [1, [], [], []],
          `after a kill at ${delay} ms`,
        );
        t.deepEqual(
          (await link.list(c)).map((l) => l.name),
          ['lo'],
        );
        if (hit || mode === 'agent') {
          landed += hit ? 1 : 0;
          break;
        }
        estimate = r.ms;
      }
    }
    if (mode === 'standalone') t.true(landed >= 5, `kills that landed while the plugin ran: ${landed} of 6`);
  });

  test('GC releases every attachment not in cni.dev/valid-attachments (and the older cni.dev/attachments key)', async (t) => {
    const nd = await node();
    const cs = await Promise.all(['g0', 'g1', 'g2'].map((n) => nd.container(n)));
    const adds = await Promise.all(cs.map((c, i) => nd.call('ADD', c, `gc-${i}`)));
    for (const a of adds) ok(t, a, 'ADD');
    const gc = (valid: unknown, key = 'cni.dev/valid-attachments') =>
      nd.call('GC', undefined, '', { ...nd.conf, [key]: valid }, { CNI_CONTAINERID: undefined, CNI_IFNAME: undefined });
    ok(
      t,
      await gc([
        { containerID: 'gc-0', ifname: 'eth0' },
        { containerID: 'gc-1', ifname: 'eth0' },
      ]),
      'GC keeping two',
    );
    t.deepEqual(
      (await link.list(cs[2]!)).map((l) => l.name),
      ['lo'],
      'the third is gone',
    );
    t.is(nd.left().reservations.length, 2);
    ok(t, await nd.call('CHECK', cs[0]!, 'gc-0', { ...nd.conf, prevResult: adds[0]!.json }), 'a kept one still checks');
    // What an ADD killed before its first record was in place leaves: a temporary of that record only (the kill test hits it by chance).
    const recordsDir = path.join(nd.conf.stateDir, 'cni', nd.network);
    const dead = spawnSync('true').pid!;
    const orphan = `.gc-killed:eth0.json.${dead}.tmp`;
    const keptTemp = `.gc-0:eth0.json.${dead}.tmp`;
    for (const n of [orphan, keptTemp]) fs.writeFileSync(path.join(recordsDir, n), '{"version":1');
    ok(t, await gc([{ containerID: 'gc-0', ifname: 'eth0' }], 'cni.dev/attachments'), 'GC with the older key');
    const temps = fs.readdirSync(recordsDir).filter((n) => n.endsWith('.tmp'));
    t.deepEqual(
      temps,
      [keptTemp],
      "the dead writer's temporary of a released attachment is gone; a kept attachment's stays",
    );
    fs.rmSync(path.join(recordsDir, keptTemp));
    t.is(nd.left().reservations.length, 1);
    t.is(nd.left().rules.length, 1);
    const bad = await gc(undefined);
    t.is(bad.json?.code, 7, 'GC without a list of attachments is an invalid config');
    const old = await nd.call(
      'GC',
      undefined,
      '',
      { ...nd.conf, cniVersion: '1.0.0', 'cni.dev/valid-attachments': [] },
      { CNI_CONTAINERID: undefined, CNI_IFNAME: undefined },
    );
    t.is(old.json?.code, 1, 'GC needs 1.1.0');
    ok(t, await gc([]), 'GC of everything');
    const left = nd.left();
    t.deepEqual([left.veths.length, left.reservations, left.records, left.rules], [1, [], [], []]);
  });

  test('STATUS reports an exhausted range (50) and readiness again after a DEL', async (t) => {
    const nd = await node({ subnet: '10.99.0.0/30' }); // one usable address: .2 (.1 is the gateway, .3 broadcast)
    const status = () =>
      nd.call('STATUS', undefined, '', nd.conf, { CNI_CONTAINERID: undefined, CNI_IFNAME: undefined });
    ok(t, await status(), 'STATUS with room');
    const c = await nd.container('only');
    ok(t, await nd.call('ADD', c, 'only'), 'ADD');
    const full = await status();
    t.is(full.status, 1);
    t.is(full.json.code, 50);
    t.regex(full.json.msg, /no free address/);
    const c2 = await nd.container('second');
    const add2 = await nd.call('ADD', c2, 'second');
    t.is(add2.status, 1);
    t.regex(add2.json.msg, /no IP addresses available/);
    t.deepEqual(
      (await link.list(c2)).map((l) => l.name),
      ['lo'],
      'the failed ADD left nothing in the container',
    );
    t.is(nd.left().veths.length, 2, "and only the first container's veth on the node");
    ok(t, await nd.call('DEL', c, 'only'), 'DEL');
    ok(t, await status(), 'STATUS ready again');
  });

  test('bad input: the right error code, one line, nothing created', async (t) => {
    const nd = await node();
    const c = await nd.container('bad');
    const cases: [string, unknown, Record<string, string | undefined>, number][] = [
      ['malformed JSON', '{"cniVersion": "1.0.0", ', {}, 6],
      ['unknown cniVersion', { ...nd.conf, cniVersion: '0.9.9' }, {}, 1],
      ['missing CNI_NETNS', nd.conf, { CNI_NETNS: undefined }, 4],
      ['missing CNI_COMMAND', nd.conf, { CNI_COMMAND: undefined }, 4],
      ['interface name too long', nd.conf, { CNI_IFNAME: 'a-very-long-ifname0' }, 4],
      ['container id with ../', nd.conf, { CNI_CONTAINERID: '../../etc' }, 4],
      ['invalid subnet', { ...nd.conf, ipam: { ...nd.conf.ipam, subnet: '10.1.2.300/24' } }, {}, 7],
      ['subnet with host bits', { ...nd.conf, ipam: { ...nd.conf.ipam, subnet: '10.1.2.3/24' } }, {}, 7],
      ['network name with ../', { ...nd.conf, name: '../x' }, {}, 7],
      ['bridge name too long', { ...nd.conf, bridge: 'bridge-name-too-long' }, {}, 7],
      ['isGateway not a boolean', { ...nd.conf, isGateway: 'yes' }, {}, 7],
      ['unsupported vlan', { ...nd.conf, vlan: 100 }, {}, 2],
      ['unknown IPAM type', { ...nd.conf, ipam: { type: 'no-such-ipam' } }, {}, 7],
      ['netns that does not exist', nd.conf, { CNI_NETNS: '/run/netns/does-not-exist' }, 3],
    ];
    for (const [what, conf, env, code] of cases) {
      const r = await nd.call('ADD', c, 'bad-input', conf, env);
      t.is(r.status, 1, what);
      t.is(r.json?.code, code, `${what}: ${r.stdout}`);
      t.is(typeof r.json?.msg, 'string', what);
      t.false(r.stdout.trim().includes('\n'), `${what}: one line`);
    }
    t.false(fs.existsSync(path.join(nd.conf.ipam.dataDir, '..', 'etc')), 'no path traversal');
    const left = nd.left();
    t.deepEqual([left.veths.length, left.reservations, left.records, left.rules], [1, [], [], []]);
    t.deepEqual(
      (await link.list(c)).map((l) => l.name),
      ['lo'],
    );
    t.deepEqual(
      ipJson(nd.host, 'link', 'show', 'type', 'bridge')
        .map((l: any) => l.ifname)
        .filter((n: string) => n !== nd.conf.bridge),
      [],
    );
  });

  test('bridge options: hairpinMode, promiscMode, mtu, runtimeConfig mac/mtu/ips, forceAddress, enabledad off', async (t) => {
    const nd = await node({ extra: { hairpinMode: true, promiscMode: true, mtu: 1400 } });
    const c = await nd.container('opts');
    const conf = {
      ...nd.conf,
      capabilities: { mac: true, ips: true, mtu: true },
      runtimeConfig: { mac: '02:11:22:33:44:55', ips: [`10.${100 + nd.n}.0.77/24`], mtu: 1300 },
    };
    const add = await nd.call('ADD', c, 'opts', conf);
    ok(t, add, 'ADD');
    t.deepEqual(ipOf(add.json), [`10.${100 + nd.n}.0.77`]);
    const [eth0] = ipJson(c, 'link', 'show', 'eth0');
    t.is(eth0.address, '02:11:22:33:44:55');
    t.is(eth0.mtu, 1300);
    const [br] = ipJson(nd.host, '-d', 'link', 'show', nd.conf.bridge);
    t.true(br.flags.includes('PROMISC') || br.promiscuity > 0, 'bridge promiscuous');
    const [port] = ipJson(nd.host, '-d', 'link', 'show', add.json.interfaces[1].name);
    t.true(port.linkinfo.info_slave_data.hairpin, 'hairpin on the host port');
    // A different address of the gateway's subnet on the bridge: refused unless forceAddress.
    ok(t, await nd.call('DEL', c, 'opts', conf), 'DEL');
    run('ip', ['-n', nd.host.name!, 'addr', 'flush', 'dev', nd.conf.bridge]);
    run('ip', ['-n', nd.host.name!, 'addr', 'add', `10.${100 + nd.n}.0.254/24`, 'dev', nd.conf.bridge]);
    const refused = await nd.call('ADD', c, 'opts');
    t.is(refused.status, 1);
    t.regex(refused.json.msg, /forceAddress/);
    t.is(nd.left().reservations.length, 0, 'the refused ADD released its address');
    t.deepEqual(nd.left().rules, [], 'and removed its masquerade rule, which went in while the veth was made');
    t.deepEqual(nd.left().records, [], 'and its record');
    ok(t, await nd.call('ADD', c, 'opts', { ...nd.conf, forceAddress: true }), 'ADD with forceAddress');
    t.deepEqual(
      ipJson(nd.host, '-4', 'addr', 'show', nd.conf.bridge)[0].addr_info.map((a: any) => a.local),
      [`10.${100 + nd.n}.0.1`],
    );
    ok(t, await nd.call('DEL', c, 'opts'), 'DEL');
  });

  test('dual stack: an IPv4 and an IPv6 range set, TCP over both, IPv6 masquerade', async (t) => {
    const nd = await node({
      ipam: { subnet: undefined, ranges: [[{ subnet: `10.${180 + seq}.0.0/24` }], [{ subnet: `fd00:${seq}::/64` }]] },
    });
    const [a, b] = await Promise.all([nd.container('6a'), nd.container('6b')]);
    const ra = await nd.call('ADD', a, 'v6a');
    const rb = await nd.call('ADD', b, 'v6b');
    ok(t, ra, 'ADD a');
    ok(t, rb, 'ADD b');
    t.is(ra.json.ips.length, 2);
    const [v4b, v6b] = ipOf(rb.json);
    t.regex(v6b!, /^fd00:/);
    const s6 = await serve(b, 'tcp', v6b!, 7100, 'b6');
    const s4 = await serve(b, 'tcp', v4b!, 7101, 'b4');
    try {
      t.deepEqual((await request(a, 'tcp', v6b!, 7100, { count: 3 })).replies, { b6: 3 });
      t.deepEqual((await request(a, 'tcp', v4b!, 7101, { count: 3 })).replies, { b4: 3 });
    } finally {
      await Promise.all([s6.stop(), s4.stop()]);
    }
    t.deepEqual(
      ipJson(a, '-6', 'route', 'show', 'default').map((r: any) => r.gateway),
      [ra.json.ips[1].gateway],
    );
    t.regex(ra.json.ips[1].gateway, /^fd00:\d+::1$/);
    t.regex(natRules(nd.host).join('\n'), masqueradeRule(ipOf(ra.json)[1]!, nd.conf.bridge), 'IPv6 masquerade rule');
    ok(t, await nd.call('DEL', a, 'v6a'), 'DEL a');
    ok(t, await nd.call('DEL', b, 'v6b'), 'DEL b');
    t.false(
      natRules(nd.host).some((l) => l.includes('fd00:')),
      'no IPv6 rule left',
    );
    t.deepEqual(nd.left().reservations, []);
  });

  test('another IPAM type is delegated through CNI_PATH: the reference host-local', async (t) => {
    const nd = await node();
    const dataDir = path.join(cni.dir, `hl-${nd.n}`);
    const conf = {
      ...nd.conf,
      cniVersion: '1.0.0',
      ipam: { type: 'host-local', subnet: `10.${100 + nd.n}.0.0/24`, dataDir },
    };
    const c = await nd.container('hl');
    const add = await nd.call('ADD', c, 'hl', conf);
    ok(t, add, 'ADD with host-local');
    const ip = ipOf(add.json)[0]!;
    t.true(fs.existsSync(path.join(dataDir, nd.network, ip)), 'host-local reserved it');
    t.true(ipJson(c, 'addr', 'show', 'eth0')[0].addr_info.some((a: any) => a.local === ip));
    ok(t, await nd.call('CHECK', c, 'hl', { ...conf, prevResult: add.json }), 'CHECK');
    ok(t, await nd.call('DEL', c, 'hl', conf), 'DEL');
    t.false(fs.existsSync(path.join(dataDir, nd.network, ip)), 'host-local released it');
    const missing = await nd.call('ADD', c, 'hl', { ...conf, ipam: { type: 'no-such-plugin' } });
    t.regex(missing.json.msg, /failed to find plugin "no-such-plugin"/);
  });

  test("port mappings: tsnet's own (runtimeConfig.portMappings), and the reference portmap chained after tsnet-bridge", async (t) => {
    const nd = await node();
    const c = await nd.container('pm');
    // 1. tsnet-bridge maps the port itself.
    const conf = {
      ...nd.conf,
      hairpinMode: true,
      capabilities: { portMappings: true },
      runtimeConfig: { portMappings: [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }] },
    };
    const add = await nd.call('ADD', c, 'pm', conf);
    ok(t, add, 'ADD with portMappings');
    const ip = ipOf(add.json)[0]!;
    const srv = await serve(c, 'http', ip, 80, 'web');
    try {
      t.deepEqual(
        (await request(nd.ext, 'http', nd.nodeIp, 18080, { count: 5 })).replies,
        { web: 5 },
        'from beyond the node',
      );
      t.deepEqual(
        (await request(nd.host, 'http', '127.0.0.1', 18080)).replies,
        { web: 1 },
        'from the node via localhost',
      );
      t.deepEqual(
        (await request(c, 'http', nd.nodeIp, 18080)).replies,
        { web: 1 },
        'hairpin: the container via the node',
      );
      ok(t, await nd.call('DEL', c, 'pm', conf), 'DEL');
      t.is((await request(nd.ext, 'http', nd.nodeIp, 18080, { timeoutMs: 500 })).ok, 0, 'the mapping is gone');
      t.deepEqual(nd.left().rules, []);
      // 2. A conflist: tsnet-bridge, then the reference portmap with prevResult.
      const portmap = path.join(REFERENCE_DIR, 'portmap');
      t.true(fs.existsSync(portmap), `${portmap} is installed (containernetworking-plugins)`);
      const bridgeConf = { ...nd.conf };
      const r1 = await nd.call('ADD', c, 'pm2', bridgeConf);
      ok(t, r1, 'tsnet-bridge ADD');
      const ip2 = ipOf(r1.json)[0]!;
      const srv2 = await serve(c, 'http', ip2, 81, 'web2');
      const pmConf = {
        cniVersion: '1.0.0',
        name: nd.network,
        type: 'portmap',
        capabilities: { portMappings: true },
        runtimeConfig: { portMappings: [{ hostPort: 18081, containerPort: 81, protocol: 'tcp' }] },
        prevResult: { ...r1.json, cniVersion: '1.0.0' },
      };
      const r2 = await cni.call(nd.host, 'portmap', 'ADD', pmConf, {
        containerId: 'pm2',
        netns: c.path,
        ifname: 'eth0',
      });
      ok(t, r2, 'portmap ADD');
      t.deepEqual(r2.json.ips, r1.json.ips, "portmap passed tsnet-bridge's result on");
      t.deepEqual((await request(nd.ext, 'http', nd.nodeIp, 18081, { count: 3 })).replies, { web2: 3 });
      ok(
        t,
        await cni.call(nd.host, 'portmap', 'DEL', pmConf, { containerId: 'pm2', netns: c.path, ifname: 'eth0' }),
        'portmap DEL',
      );
      ok(t, await nd.call('DEL', c, 'pm2', { ...bridgeConf, prevResult: r1.json }), 'tsnet-bridge DEL');
      await srv2.stop();
    } finally {
      await srv.stop();
    }
    t.deepEqual(nd.left().reservations, []);
  });

  test("tsnet-ipam as a standalone IPAM binary: host-local's config and layout, allocation continues after the last reserved", async (t) => {
    const nd = await node();
    const conf = {
      cniVersion: '1.0.0',
      name: 'ipamonly',
      type: 'some-main-plugin',
      ipam: {
        type: 'tsnet-ipam',
        subnet: '10.66.0.0/29',
        rangeStart: '10.66.0.3',
        dataDir: path.join(cni.dir, `ipam-${nd.n}`),
        routes: [{ dst: '0.0.0.0/0' }],
      },
    };
    const call = (cmd: string, cid: string) =>
      cni.call(nd.host, 'tsnet-ipam', cmd, conf, { containerId: cid, netns: '/proc/self/ns/net', ifname: 'eth0' });
    const a = await call('ADD', 'i1');
    ok(t, a, 'ADD');
    t.deepEqual(a.json.ips, [{ address: '10.66.0.3/29', gateway: '10.66.0.1' }]);
    t.deepEqual(a.json.routes, [{ dst: '0.0.0.0/0' }]);
    t.is(
      fs.readFileSync(path.join(conf.ipam.dataDir, 'ipamonly', '10.66.0.3'), 'utf8'),
      'i1\r\neth0',
      "host-local's file format",
    );
    ok(t, await call('DEL', 'i1'), 'DEL');
    const b = await call('ADD', 'i2');
    t.deepEqual(ipOf(b.json), ['10.66.0.4'], 'continues after the last reserved address, not the freed one');
    const got = [ipOf(b.json)[0]];
    for (const id of ['i3', 'i4', 'i5']) got.push(ipOf((await call('ADD', id)).json)[0]);
    t.deepEqual(got, ['10.66.0.4', '10.66.0.5', '10.66.0.6', '10.66.0.3'], 'wraps round to the start');
    const full = await call('ADD', 'i6');
    t.is(full.status, 1);
    for (const id of ['i2', 'i3', 'i4', 'i5']) ok(t, await call('DEL', id), 'DEL');
    t.deepEqual(
      fs.readdirSync(path.join(conf.ipam.dataDir, 'ipamonly')).filter((f) => f.startsWith('10.')),
      [],
    );
  });

  test('an address reused by a silent container: DEL drops the host neighbour entries, ADD announces it; the host entries hold the new MAC within 100 ms and traffic reaches the new container at once (1 s, not the 5-10 s re-probe of the kernel), IPv4 and IPv6', async (t) => {
    const nd = await node();
    const v4 = `10.${100 + nd.n}.0.9`;
    const v6 = `fd${nd.n}::9`;
    // One address per family, so the next container gets the same ones.
    const conf = {
      ...nd.conf,
      ipam: {
        type: 'tsnet-ipam',
        dataDir: nd.conf.ipam.dataDir,
        ranges: [
          [{ subnet: `10.${100 + nd.n}.0.0/24`, rangeStart: v4, rangeEnd: v4 }],
          [{ subnet: `fd${nd.n}::/64`, rangeStart: v6, rangeEnd: v6 }],
        ],
      },
    };
    const bridgeName = nd.conf.bridge as string;
    const entries = () =>
      ipJson<{ dst: string; lladdr?: string }[]>(nd.host, 'neigh', 'show', 'dev', bridgeName).filter(
        (e) => e.dst === v4 || e.dst === v6,
      );
    const macOf = (c: netns.NetNs) => ipJson<{ address: string }[]>(c, 'link', 'show', 'eth0')[0]!.address;
    const reach = async (ip: string, want: string, timeoutMs: number) =>
      (await request(nd.host, 'tcp', ip, 8000, { timeoutMs })).replies[want] === 1;

    // A bystander keeps a port on the bridge: with none, the bridge loses its carrier and the kernel flushes its entries itself.
    const by = await nd.container('by');
    ok(t, await nd.call('ADD', by, 'by'), 'ADD bystander');
    const c1 = await nd.container('old');
    ok(t, await nd.call('ADD', c1, 'old', conf), 'ADD old');
    const s1 = await Promise.all([serve(c1, 'tcp', v4, 8000, 'old'), serve(c1, 'tcp', v6, 8000, 'old')]);
    t.true(await reach(v4, 'old', 2000), 'the host talks to the old container over IPv4');
    t.true(await reach(v6, 'old', 2000), '... and IPv6');
    await Promise.all(s1.map((s) => s.stop()));
    const oldMac = macOf(c1);
    t.deepEqual(
      entries().map((e) => e.lladdr),
      [oldMac, oldMac],
      "the host's entries hold the old container's MAC",
    );
    ok(t, await nd.call('DEL', c1, 'old', conf), 'DEL old');
    t.deepEqual(entries(), [], "DEL removed the host's entries for the released addresses");

    // A host that kept them anyway (a DEL that never came, another plugin's): entries to the old MAC, as reachable.
    for (const ip of [v4, v6]) {
      const r = run('ip', [
        '-n',
        nd.host.name!,
        'neigh',
        'replace',
        ip,
        'lladdr',
        oldMac,
        'dev',
        bridgeName,
        'nud',
        'reachable',
      ]);
      t.is(r.status, 0, r.stderr);
    }
    t.deepEqual(
      entries().map((e) => e.lladdr),
      [oldMac, oldMac],
      'stale entries in place',
    );
    const c2 = await nd.container('new');
    ok(t, await nd.call('ADD', c2, 'new', conf), 'ADD new');
    const s2 = await Promise.all([serve(c2, 'tcp', v4, 8000, 'new'), serve(c2, 'tcp', v6, 8000, 'new')]);
    try {
      // The new container has sent nothing of its own: only ADD's announcement can have moved the entries.
      const newMac = macOf(c2);
      const moved = () => entries().filter((e) => e.lladdr === newMac).length === 2;
      const t0 = Date.now();
      while (!moved() && Date.now() - t0 < 100) await new Promise((r) => setTimeout(r, 5));
      t.deepEqual(
        entries().map((e) => e.lladdr),
        [newMac, newMac],
        "the host's entries hold the new MAC within 100 ms of ADD",
      );
      // Without the announcement the host sends to the old MAC until the kernel re-probes (5-10 s); 1 s tells them apart under load.
      t.true(await reach(v4, 'new', 1000), 'the host reaches the silent new container over IPv4');
      t.true(await reach(v6, 'new', 1000), '... and IPv6');
    } finally {
      await Promise.all(s2.map((s) => s.stop()));
    }
    ok(t, await nd.call('DEL', c2, 'new', conf), 'DEL new');
    ok(t, await nd.call('DEL', by, 'by'), 'DEL bystander');
  });

  test('macspoofchk: frames from the container with a forged source MAC are dropped, its own pass; DEL removes the guard', async (t) => {
    const nd = await node();
    const conf = { ...nd.conf, macspoofchk: true };
    const c = await nd.container('spoof');
    const add = await nd.call('ADD', c, 'spoof', conf);
    ok(t, add, 'ADD');
    const gw = `10.${100 + nd.n}.0.1`;
    const server = await serve(nd.host, 'tcp', gw, 9100, 'gw');
    const table = () => {
      const r = run('ip', ['netns', 'exec', nd.host.name!, 'nft', '-j', 'list', 'table', 'bridge', 'tsnet-spoofchk']);
      return r.status === 0 ? (JSON.parse(r.stdout).nftables as any[]) : [];
    };
    const drops = () =>
      table()
        .filter((x) => x.rule)
        .flatMap((x) => x.rule.expr)
        .find((e: any) => e.counter)?.counter.packets ?? 0;
    const hostIfname = add.json.interfaces[1].name;
    const own = add.json.interfaces[2].mac;
    try {
      t.deepEqual((await request(c, 'tcp', gw, 9100, { timeoutMs: 2000 })).replies, { gw: 1 }, 'its own MAC passes');
      const elems = table().find((x) => x.set?.name === 'allowed')?.set.elem;
      t.deepEqual(
        elems?.map((e: any) => e.concat),
        [[hostIfname, own]],
        'nft shows the port and its one MAC',
      );
      const before = drops();
      ip(c, 'link', 'set', 'eth0', 'address', '02:00:00:00:be:ef');
      const forged = await request(c, 'tcp', gw, 9100, { timeoutMs: 500 });
      t.is(forged.ok, 0, 'a forged source MAC does not get through');
      t.true(drops() > before, 'the drops are counted by the guard');
      ip(c, 'link', 'set', 'eth0', 'address', own);
      t.deepEqual((await request(c, 'tcp', gw, 9100, { timeoutMs: 2000 })).replies, { gw: 1 }, 'its own MAC again');
    } finally {
      await server.stop();
    }
    ok(t, await nd.call('DEL', c, 'spoof', conf), 'DEL');
    t.is(table().find((x) => x.set?.name === 'allowed')?.set.elem, undefined, 'DEL removed the MAC');
    t.is(table().find((x) => x.set?.name === 'ports')?.set.elem, undefined, 'DEL removed the port');
    ok(t, await nd.call('DEL', c, 'spoof', conf), 'DEL twice');
  });
}
