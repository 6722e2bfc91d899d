/**
 * The netlink backend and the nft (text) backend write the same table: for
 * the same desired state, `nft --json list table` (nft as the independent
 * observer) is the same in a namespace synced by one as in a namespace
 * synced by the other, across add / update / delete sequences and after a
 * flush and resync; and one backend takes over from the other with a
 * partial sync, no teardown.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NatEngine } from '../../src/nat/engine';
import { normalizeState, parseEndpoint, type DesiredState } from '../../src/nat/model';
import type { NetNs } from '../../src/netns';
import * as bridge from '../../src/bridge';
import { Topology, nftObserved as observed, run } from '../harness/fixtures';
import { sampleState } from '../harness/nat-sample';

const topo = new Topology('eqv');
const dirs: string[] = [];
test.after.always(() => {
  topo.cleanup();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A namespace where the sample's forward targets have a route (a forward to them needs one, for route_localnet). */
async function space(name: string): Promise<NetNs> {
  const ns = await topo.ns(name);
  await bridge.ensure(ns, 'eqbr', { addresses: ['10.255.255.1/8'] });
  return ns;
}

const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-eqv-'));
  dirs.push(d);
  return d;
};

/** A sequence of desired states: the sample (both families), then changes of every kind, then nothing. */
function sequence(): [string, DesiredState][] {
  const both = (f: (st: DesiredState) => void): DesiredState => {
    const st = normalizeState({
      services: [...sampleState(4).services, ...sampleState(6).services.map((s) => ({ ...s, name: `${s.name}-v6` }))],
      rules: [...sampleState(4).rules, ...sampleState(6).rules],
      forwards: sampleState(4).forwards,
    });
    f(st);
    return normalizeState(st);
  };
  return [
    ['the sample state, both families', both(() => undefined)],
    [
      'an endpoint replaced, a weight changed',
      both((st) => {
        st.services[0]!.endpoints = [parseEndpoint('10.0.0.2:8080'), parseEndpoint('10.0.0.9:8080')];
        st.services[1]!.endpoints[0]!.weight = 5;
      }),
    ],
    [
      'a service added, one removed, affinity off, masquerade-not-from off',
      both((st) => {
        st.services.push({
          name: 'new',
          vip: '10.96.0.99',
          port: 443,
          proto: 'tcp',
          endpoints: [parseEndpoint('10.0.0.7:443'), parseEndpoint('10.0.0.8:443'), parseEndpoint('10.0.0.6:443')],
        });
        st.services = st.services.filter((s) => s.name !== 'default/web');
        delete st.services.find((s) => s.name === 'default/aff')!.affinitySeconds;
        delete st.services.find((s) => s.name === 'default/mnf')!.masqueradeNotFrom;
      }),
    ],
    [
      'rules and forwards gone, IPv6 gone',
      normalizeState({ services: sampleState(4).services.slice(0, 2), rules: [], forwards: [] }),
    ],
    ['nothing', normalizeState({ services: [], rules: [] })],
  ];
}

test.serial(
  'for the same desired state, netlink and nft write the same table: every step of a sequence, and after a flush and resync',
  async (t) => {
    const [a, b] = [await space('netlink'), await space('nft')];
    const engines = [
      new NatEngine({ ns: a, stateDir: tmp(), backend: 'netlink' }),
      new NatEngine({ ns: b, stateDir: tmp(), backend: 'nft' }),
    ];
    for (const [what, st] of sequence()) {
      await Promise.all(
        engines.map((e) =>
          e.update((s) => {
            Object.assign(s, structuredClone(st));
          }),
        ),
      );
      t.deepEqual(observed(a), observed(b), what);
    }
    const last = sequence()[2]![1];
    await Promise.all(
      engines.map((e) =>
        e.update((s) => {
          Object.assign(s, structuredClone(last));
        }),
      ),
    );
    for (const ns of [a, b]) t.is(run('ip', ['netns', 'exec', ns.name!, 'nft', 'flush', 'ruleset']).status, 0);
    const resync = await Promise.all(engines.map((e) => e.sync()));
    t.deepEqual(
      resync.map((r) => r.full),
      [true, true],
      'a flush is seen by both canaries',
    );
    t.deepEqual(observed(a), observed(b), 'after the resync');
    t.not(JSON.stringify(observed(a)), JSON.stringify(['ip: no table', 'ip6: no table']));
  },
);

test.serial(
  'switching between netlink and nft needs no teardown: the other carries on with a partial sync',
  async (t) => {
    const ns = await space('switch');
    const dir = tmp();
    // Steps whose changes are elements only (nft 1.0.6 makes the text backend rebuild when a new lb chain appears).
    const first = sequence()[0]![1];
    const second = structuredClone(first);
    second.services[0]!.endpoints = [parseEndpoint('10.0.0.2:8080'), parseEndpoint('10.0.0.9:8080')];
    await new NatEngine({ ns, stateDir: dir, backend: 'netlink' }).update((s) => {
      Object.assign(s, structuredClone(first));
    });
    const viaNft = await new NatEngine({ ns, stateDir: dir, backend: 'nft' }).update((s) => {
      Object.assign(s, structuredClone(second));
    });
    t.false(viaNft.full, 'nft carried on from what netlink wrote');
    const back = await new NatEngine({ ns, stateDir: dir, backend: 'netlink' }).update((s) => {
      Object.assign(s, structuredClone(first));
    });
    t.false(back.full, 'and netlink from what nft wrote');
    const ref = await space('switchref');
    await new NatEngine({ ns: ref, stateDir: tmp(), backend: 'nft' }).update((s) => {
      Object.assign(s, structuredClone(first));
    });
    t.deepEqual(observed(ns), observed(ref), 'the result is what a fresh sync would write');
  },
);

test.serial(
  "nft list shows the netlink backend's table as if nft had written it: typeof, comments, counters",
  async (t) => {
    const ns = await space('read');
    await new NatEngine({ ns, stateDir: tmp(), backend: 'netlink' }).update((s) => {
      Object.assign(s, sampleState(4));
    });
    const text = run('ip', ['netns', 'exec', ns.name!, 'nft', 'list', 'table', 'ip', 'tsnet']).stdout;
    t.regex(text, /map service-ips \{\n\t\ttypeof ip daddr \. meta l4proto \. th dport : verdict\n\t\tcounter\n/);
    t.regex(text, /typeof ip daddr \. meta l4proto \. th dport \. numgen random mod 65536 : ip daddr \. th dport/);
    t.regex(text, /10\.96\.0\.1 \. tcp \. 80 counter packets 0 bytes 0 comment "default\/web" : goto lb-tcp-2\b/);
    t.regex(text, /set hairpin \{\n\t\ttypeof ip saddr \. ip daddr\n/);
    t.regex(text, /comment "tsnet forward mysql"/);
    t.notRegex(
      text,
      /type (ipv4_addr|integer|inet_proto)/,
      'no set falls back to `type` (the typeof userdata is there)',
    );
  },
);
