import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { normalizeState, parseEndpoint, type DesiredState } from '../../src/nat/model';
import { render, serviceParts } from '../../src/nat/nftables/layout';
import {
  ENDPOINTS,
  ENDPOINTS_WEIGHTED,
  HAIRPIN,
  SERVICE_IPS,
  lbChain,
  sepChain,
  svcChain,
} from '../../src/nat/nftables/table-names';
import { PlanBuilder, fullPlan, type Op, type Plan } from '../../src/nat/nftables/plan';
import {
  SharedIndex,
  changePlan,
  globalRecord,
  lbRecordAfter,
  lbRecordOf,
  lookedUp,
  serviceChanges,
} from '../../src/nat/nftables/incremental';
import { IndexedState } from '../../src/nat/changes';
import { storedServices } from '../../src/nat/store';
import { NftablesBackend } from '../../src/nat/nftables/backend';
import type { NetNs } from '../../src/netns';
import { script } from '../../src/nat/nftables/text';
import { ANON_MAP, lowerItem, encodeKey, decodeKey, type LowerContext } from '../../src/nat/nftables/lowering';
import { formatExpr } from '../../src/nat/nftables/expr';
import { setUdata, datatype } from '../../src/nat/nftables/udata';
import { encodePlan } from '../../src/nat/nftables/batch';
import { elementsOf, type Element, type NamedSet, type Rule, type Ruleset } from '../../src/nat/nftables/ruleset';
import { sampleState } from '../harness/nat-sample';
import { decodeBatch } from '../harness/nft-batch';

const FIXTURES = path.join(__dirname, '..', '..', '..', 'test', 'fixtures');

/** The rule blocks of an `nft --debug=netlink` capture: chain and expression lines, in order. */
function captured(family: 4 | 6): { chain: string; exprs: string[] }[] {
  const out: { chain: string; exprs: string[] }[] = [];
  let cur: { chain: string; exprs: string[] } | undefined;
  for (const line of fs.readFileSync(path.join(FIXTURES, `nft-debug-v${family}.txt`), 'utf8').split('\n')) {
    const head = /^(ip6?) tsnet (\S+)$/.exec(line);
    if (head) {
      cur = { chain: head[2]!, exprs: [] };
      out.push(cur);
    } else if (cur && /^ {2}\[ /.test(line)) cur.exprs.push(line.trim());
    else if (!line.startsWith('  ')) cur = undefined;
  }
  return out.filter((b) => b.exprs.length);
}

function lowered(rs: Ruleset): { chain: string; exprs: string[] }[] {
  const sets = new Map(rs.sets.map((s) => [s.name, s]));
  // An anonymous map (the layout's are interval maps) as the batch knows it: made just before its rule.
  const cx: LowerContext = {
    family: rs.family,
    set: (n) => (n === ANON_MAP ? { interval: true, id: 1 } : { interval: sets.get(n)?.interval ?? false }),
  };
  return fullPlan(rs).ops.flatMap((op) =>
    op.kind === 'add-rules'
      ? op.rules.map((r: Rule) => ({
          chain: op.chain,
          exprs: r.items.flatMap((i) => lowerItem(i, cx)).map(formatExpr),
        }))
      : [],
  );
}

for (const family of [4, 6] as const) {
  test(`IPv${family}: every rule of the layout compiles to exactly the expressions nft 1.0.6 makes of its text (captured nft --debug=netlink)`, (t) => {
    const mine = lowered(render(sampleState(family), family));
    const nft = captured(family);
    t.is(mine.length, nft.length, 'as many rules');
    t.true(mine.length > 30);
    mine.forEach((m, i) => t.deepEqual(m, nft[i], `rule ${i} in ${m.chain}`));
  });
}

test('set userdata is nft\'s: byte orders and typeof of key and value, so nft list prints "typeof ..." (bytes captured from nft 1.0.6)', (t) => {
  const rs = render(sampleState(4), 4);
  const byName = new Map(rs.sets.map((s) => [s.name, s]));
  t.is(
    setUdata(byName.get(SERVICE_IPS)!, 4).toString('hex'),
    '000400000000010400000000034400040d000000013c0014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b00000001040200000004080004010000000100060400000000',
  );
  t.is(
    setUdata(byName.get('hairpin')!, 4).toString('hex'),
    '000400000000033400040d000000012c0014000407000000010c00040c00000001040b0000000114000407000000010c00040c00000001040c000000',
  );
  t.is(datatype(byName.get(SERVICE_IPS)!.key, 4), 0x730d, 'ipv4_addr . inet_proto . inet_service');
  t.is(datatype(byName.get(ENDPOINTS)!.key, 4), 0x1cc344, '... . integer');
  t.is(datatype(byName.get(SERVICE_IPS)!.key, 6), 0x830d, 'ipv6_addr . inet_proto . inet_service');
});

test('element keys: concatenations padded to 4 bytes per field, numgen in host order (network order in interval maps), and back', (t) => {
  const key = { fields: ['daddr', 'l4proto', 'dport', 'numgen'] as const };
  const k = { fields: [...key.fields] };
  t.is(encodeKey(k, ['10.96.0.1', 'tcp', 80, 1], 4, false).toString('hex'), '0a600001060000000050000001000000');
  t.is(encodeKey(k, ['10.96.0.1', 'tcp', 80, 1], 4, true).toString('hex'), '0a600001060000000050000000000001');
  t.deepEqual(decodeKey(k, Buffer.from('0a600001060000000050000001000000', 'hex'), 4, false), [
    '10.96.0.1',
    'tcp',
    80,
    1,
  ]);
  t.deepEqual(decodeKey(k, encodeKey(k, ['fd96::1', 'udp', 53, 7], 6, true), 6, true), ['fd96::1', 'udp', 53, 7]);
  t.is(
    encodeKey({ fields: ['saddr'] }, ['10.0.0.2'], 4, false).toString('hex'),
    '0a000002',
    'one field keeps its natural length',
  );
});

/** The plan of a change from `a` to `b`, as a sync whose last record is `a`'s makes it. */
const recordOf = (st: DesiredState) => globalRecord(st, 4, lbRecordOf(st.services, 4));
const planFor = (a: DesiredState, b: DesiredState, record = recordOf(a)) => {
  const changes = serviceChanges(a.services, b.services);
  const counted = changePlan(b, 4, changes, record, SharedIndex.build(a.services, 4).others(changes));
  // Looking other users up in the state itself (stored rows, ruled out unparsed by their text) must plan exactly what counting them does.
  const view = IndexedState.stored(storedServices(b.services), b.rules, b.forwards);
  const looked = changePlan(b, 4, changes, record, lookedUp(view, record.lb, changes));
  if (JSON.stringify(looked) !== JSON.stringify(counted))
    throw new Error(`looked-up plan differs:\n${JSON.stringify(looked)}\n${JSON.stringify(counted)}`);
  // The lb users a partial sync records are those a full sync of `b` would count.
  const sorted = (r: Record<string, number>) => JSON.stringify(Object.entries(r).sort());
  if (sorted(lbRecordAfter(record.lb, changes)) !== sorted(lbRecordOf(b.services, 4)))
    throw new Error('lb record after the changes differs from a full count');
  return counted;
};

const web: DesiredState = normalizeState({
  services: [
    {
      name: 'default/web',
      vip: '10.96.0.10',
      port: 80,
      proto: 'tcp',
      endpoints: [parseEndpoint('10.0.0.2:8080'), parseEndpoint('10.0.0.3:8080')],
    },
  ],
  rules: [{ kind: 'masquerade', source: '10.88.0.0/16', outNot: 'br0' }],
});

test('layout: a service is map elements, not chains; chains are shared by endpoint count; features get their own chain', (t) => {
  const text = script(fullPlan(render(web, 4)).ops, 4);
  t.true(
    text.startsWith('add table ip tsnet\ndelete table ip tsnet\nadd table ip tsnet\n'),
    'a full sync replaces the table in one transaction',
  );
  t.regex(text, /add rule ip tsnet services ip daddr \. meta l4proto \. th dport vmap @service-ips\n/);
  t.true(
    text.includes(
      'add rule ip tsnet lb-tcp-2 meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints',
    ),
  );
  t.true(
    text.includes('add element ip tsnet service-ips { 10.96.0.10 . tcp . 80 comment "default/web" : goto lb-tcp-2 }'),
  );
  t.true(
    text.includes(
      'add element ip tsnet endpoints { 10.96.0.10 . tcp . 80 . 0 : 10.0.0.2 . 8080, 10.96.0.10 . tcp . 80 . 1 : 10.0.0.3 . 8080 }',
    ),
  );
  t.true(text.includes('add element ip tsnet hairpin { 10.0.0.2 . 10.0.0.2, 10.0.0.3 . 10.0.0.3 }'));
  t.true(text.includes('add rule ip tsnet snat-rules ip saddr 10.88.0.0/16 oifname != "br0" masquerade fully-random'));
  t.false(text.includes('svc-'), 'a plain service has no chain of its own');
  t.is(lbChain(web.services[0]!), 'lb-tcp-2');

  const st = structuredClone(web);
  st.services[0]!.affinitySeconds = 30;
  st.services[0]!.endpoints[1]!.weight = 3;
  const aff = script(fullPlan(render(st, 4)).ops, 4);
  const svc = svcChain(st.services[0]!);
  const [a, b] = [sepChain(st.services[0]!, '10.0.0.2', 8080), sepChain(st.services[0]!, '10.0.0.3', 8080)];
  t.true(
    aff.includes(
      `add rule ip tsnet ${svc} numgen random mod 4 vmap { 0 : goto ${a}, 1-3 : goto ${b} } comment "default/web"`,
    ),
  );
  t.regex(aff, /add set ip tsnet aff-[A-Z2-7]{8}-30 \{ typeof ip saddr ; flags dynamic,timeout ; timeout 30s ; \}/);
  t.true(aff.includes(`add rule ip tsnet ${a} update @aff-`));

  const w = structuredClone(web);
  w.services[0]!.endpoints[0]!.weight = 2;
  const wt = script(fullPlan(render(w, 4)).ops, 4);
  t.true(
    wt.includes(
      'add element ip tsnet endpoints-weighted { 10.96.0.10 . tcp . 80 . 0-1 : 10.0.0.2 . 8080, 10.96.0.10 . tcp . 80 . 2 : 10.0.0.3 . 8080 }',
    ),
  );
  t.true(wt.includes('goto lbw-tcp-3'));
});

test("a whole table's element lists, made when read, hold exactly what each service's parts hold, read in order or not", (t) => {
  const st = normalizeState({
    services: [
      {
        name: 'p',
        vip: '10.96.0.1',
        port: 80,
        proto: 'tcp',
        endpoints: ['10.0.0.2:80', '10.0.0.3:80'].map(parseEndpoint),
      },
      { name: 'empty', vip: '10.96.0.2', port: 80, proto: 'tcp', endpoints: [] },
      {
        name: 'w',
        vip: '10.96.0.3',
        port: 53,
        proto: 'udp',
        endpoints: ['10.0.0.2:53@2', '10.0.0.4:53@5', '10.0.0.5:53'].map(parseEndpoint),
      },
      {
        name: 'aff',
        vip: '10.96.0.4',
        port: 80,
        proto: 'tcp',
        endpoints: ['10.0.0.6:80'].map(parseEndpoint),
        affinitySeconds: 10,
      },
      { name: 'six', vip: 'fd00::1', port: 80, proto: 'tcp', endpoints: ['[fd00::2]:80'].map(parseEndpoint) },
      { name: 'q', vip: '10.96.0.5', port: 80, proto: 'tcp', endpoints: ['10.0.0.3:80'].map(parseEndpoint) },
    ],
    rules: [],
  });
  const rs = render(st, 4);
  const wanted = new Map<string, Element[]>();
  for (const s of st.services.filter((x) => !x.vip.includes(':')))
    for (const [set, es] of serviceParts(s).elements) wanted.set(set, [...(wanted.get(set) ?? []), ...es]);
  for (const [set, list] of rs.elements) {
    if (set === HAIRPIN) continue;
    t.deepEqual(elementsOf(list), wanted.get(set) ?? [], `${set}, in order`);
    const backwards = Array.from({ length: list.length }, (_, i) => list.at(list.length - 1 - i)).reverse();
    t.deepEqual(backwards, wanted.get(set) ?? [], `${set}, read backwards`);
    t.is(list.at(list.length), undefined);
    t.is(list.at(-1), undefined);
  }
  t.deepEqual(
    elementsOf(rs.elements.get(ENDPOINTS_WEIGHTED)!).map((e) => e.key[3]),
    [
      [0, 1],
      [2, 6],
      [7, 7],
    ],
    'each weighted endpoint owns its range',
  );
  t.deepEqual(
    elementsOf(rs.elements.get(HAIRPIN)!).map((e) => e.key[0]),
    ['10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.6'],
    'one hairpin pair per endpoint address',
  );
});

test('partial sync: an endpoint change is element operations only; stale chains are flushed before they are deleted', (t) => {
  const after = normalizeState({
    ...web,
    services: [
      ...web.services,
      { name: 'dns', vip: '10.96.0.53', port: 53, proto: 'udp', endpoints: [parseEndpoint('10.0.0.9:53')] },
    ],
  });
  after.services[0]!.endpoints = [parseEndpoint('10.0.0.2:8080'), parseEndpoint('10.0.0.4:8080')];
  const plan = planFor(web, after)!;
  const lines = script(plan.ops, 4).trim().split('\n');
  t.false(plan.full);
  t.false(
    lines.some((l) => l.startsWith('delete table')),
    'no rebuild',
  );
  t.true(lines.includes('delete element ip tsnet endpoints { 10.96.0.10 . tcp . 80 . 1 }'));
  t.true(lines.includes('delete element ip tsnet hairpin { 10.0.0.3 . 10.0.0.3 }'));
  t.true(
    lines.some(
      (l) =>
        l.startsWith('add element ip tsnet endpoints {') &&
        l.includes('10.96.0.10 . tcp . 80 . 1 : 10.0.0.4 . 8080') &&
        l.includes('10.96.0.53 . udp . 53 . 0 : 10.0.0.9 . 53'),
    ),
  );
  t.true(lines.includes('add chain ip tsnet lb-udp-1'), 'the first one-endpoint UDP service brings its shared chain');
  t.false(
    lines.some((l) => /^(flush|add rule).*(nat-prerouting|lb-tcp-2)/.test(l)),
    'unchanged chains untouched',
  );

  // Affinity off: its chains and sets go, after the element pointing at them.
  const withAff = structuredClone(web);
  withAff.services[0]!.affinitySeconds = 30;
  const back = planFor(withAff, web)!;
  const text = script(back.ops, 4).trim().split('\n');
  const svc = svcChain(withAff.services[0]!);
  const del = text.indexOf(`delete chain ip tsnet ${svc}`);
  t.true(text.indexOf(`flush chain ip tsnet ${svc}`) < del && del > 0);
  t.true(
    text.findIndex((l) => l.startsWith('delete element ip tsnet service-ips')) < del,
    'the map element goes before the chain it points to',
  );
  t.true(text.some((l) => /^delete set ip tsnet aff-/.test(l)));
  t.is(planFor(web, after, { ...recordOf(web), layout: 1 }), undefined, 'another layout: full sync');
});

test('partial sync: a hairpin pair or lb chain another service still uses stays; the last user takes it along', (t) => {
  const svc = (name: string, vip: string, eps: string[]) => ({
    name,
    vip,
    port: 80,
    proto: 'tcp' as const,
    endpoints: eps.map(parseEndpoint),
  });
  const both = normalizeState({
    services: [
      svc('a', '10.96.0.1', ['10.0.0.2:80', '10.0.0.3:80']),
      svc('b', '10.96.0.2', ['10.0.0.2:81', '10.0.0.4:81']),
    ],
    rules: [],
  });
  const aLeaves = structuredClone(both);
  aLeaves.services[0]!.endpoints = [parseEndpoint('10.0.0.5:80')];
  const one = script(planFor(both, aLeaves)!.ops, 4);
  t.false(one.includes('delete element ip tsnet hairpin { 10.0.0.2 . 10.0.0.2 }'), 'b still sends to 10.0.0.2');
  t.true(one.includes('delete element ip tsnet hairpin { 10.0.0.3 . 10.0.0.3 }'));
  t.false(/delete chain ip tsnet lb-tcp-2/.test(one), 'b still balances over two');
  t.true(one.includes('add chain ip tsnet lb-tcp-1'));
  const bLeaves = structuredClone(aLeaves);
  bLeaves.services[1]!.endpoints = [parseEndpoint('10.0.0.6:81')];
  const two = script(planFor(aLeaves, bLeaves)!.ops, 4);
  t.true(
    two.includes('delete element ip tsnet hairpin { 10.0.0.2 . 10.0.0.2, 10.0.0.4 . 10.0.0.4 }'),
    'the last user of 10.0.0.2 is gone',
  );
  t.true(two.includes('delete chain ip tsnet lb-tcp-2'));
  t.false(two.includes('add chain ip tsnet lb-tcp-1'), 'a already brought it');
});

test('partial sync: a chain that only grew gets its new rules appended, no flush (deleting rules costs the kernel an RCU grace period)', (t) => {
  const one = normalizeState({ services: [], rules: [{ kind: 'masquerade', source: '10.88.0.2/32', outNot: 'br0' }] });
  const two = normalizeState({
    services: [],
    rules: [...one.rules, { kind: 'masquerade', source: '10.88.0.3/32', outNot: 'br0' }],
  });
  const grow = script(planFor(one, two)!.ops, 4);
  t.is(
    grow,
    'add table ip tsnet\nadd rule ip tsnet snat-rules ip saddr 10.88.0.3 oifname != "br0" masquerade fully-random comment "tsnet masquerade 10.88.0.3/32"\n',
  );
  const shrink = script(planFor(two, one)!.ops, 4);
  t.true(shrink.includes('flush chain ip tsnet snat-rules\n'), 'a removed rule needs the chain rewritten');
  const swapped = normalizeState({ services: [], rules: [two.rules[1]!, two.rules[0]!] });
  t.true(script(planFor(one, swapped)!.ops, 4).includes('flush chain'), 'not a prefix: rewritten');
});

test('netlink batch: BEGIN, one message per operation (element lists split under the 16-bit nest limit), END', (t) => {
  const many = normalizeState({
    services: Array.from({ length: 3000 }, (_, i) => ({
      name: `s${i}`,
      vip: `10.96.${i >> 8}.${i & 255}`,
      port: 80,
      proto: 'tcp' as const,
      endpoints: [parseEndpoint(`10.1.${i >> 8}.${i & 255}:80`)],
    })),
    rules: [],
  });
  const b = encodePlan(fullPlan(render(many, 4)), 4, 100);
  const msgs = decodeBatch(b.bytes);
  t.is(msgs[0], 'BATCH_BEGIN');
  t.is(msgs[msgs.length - 1], 'BATCH_END');
  const endpointMsgs = msgs.filter((m) => m.startsWith('NEWSETELEM') && m.includes('"set":"endpoints"'));
  t.true(endpointMsgs.length > 1, 'split');
  const n = endpointMsgs.reduce(
    (sum, m) => sum + (JSON.parse(m.slice(m.indexOf('{'))) as { elements: unknown[] }).elements.length,
    0,
  );
  t.is(n, 3000);
  t.is(b.firstSeq, 100);
  t.is(b.lastSeq, 100 + msgs.length - 1);
  // Labels are made when asked (the kernel refused that message): the first endpoints message's.
  const seq = b.firstSeq + msgs.findIndex((m) => m.startsWith('NEWSETELEM') && m.includes('"set":"endpoints"'));
  t.regex(
    b.describe(seq)!,
    /^adding \d+ elements to endpoints, from 10\.96\.0\.0 \. tcp \. 80 \. 0 : 10\.1\.0\.0 \. 80$/,
  );
  t.regex(
    b.describe(b.firstSeq + msgs.indexOf(msgs.find((m) => m.startsWith('NEWRULE'))!))!,
    /^adding rule ".*" to chain \S+$/,
  );
  t.is(b.describe(b.firstSeq), undefined, 'BEGIN is no operation of the plan');
});

/** An nftables backend that records the operations it would send, with the canary under the test's control. */
class RecordingBackend extends NftablesBackend {
  readonly name = 'netlink' as const;
  canary = true;
  sent: Op[][] = [];
  constructor() {
    super(undefined as unknown as NetNs);
  }
  protected async apply(plan: Pick<Plan, 'ops'>): Promise<void> {
    this.sent.push([...plan.ops]);
  }
  async canaryPresent(): Promise<boolean> {
    return this.canary;
  }
  protected async readCounters(): Promise<undefined> {
    return undefined;
  }
  protected async readAffinitySet(): Promise<[]> {
    return [];
  }
}

test('a resident process keeps the index of shared objects only from syncs it describes: after a full sync (canary gone) it is rebuilt, so a hairpin pair another service still uses stays', async (t) => {
  const svc = (name: string, vip: string) => ({
    name,
    vip,
    port: 80,
    proto: 'tcp' as const,
    endpoints: [parseEndpoint('10.80.0.11:8080')],
  });
  const st = IndexedState.of(normalizeState({ services: [svc('z', '10.96.0.1')], rules: [] }));
  const b = new RecordingBackend();
  const sync = async (
    changes: Parameters<IndexedState['apply']>[0],
    applied: Awaited<ReturnType<typeof b.sync>>['applied'] | undefined,
  ) => {
    const r = st.apply(changes);
    return b.sync(st, applied, false, { services: r.services, before: r.before, resident: true });
  };
  let last = await b.sync(st, undefined, false, {
    services: [],
    before: () => st.desired(),
    resident: true,
  });
  t.true(last.full);
  last = await sync(
    [{ kind: 'add-service', service: { ...svc('x', '10.96.0.3'), endpoints: [parseEndpoint('10.80.0.12:8080')] } }],
    last.applied,
  );
  t.false(last.full, 'a partial sync: the index of shared objects is built and kept');
  b.canary = false; // someone flushed the table
  last = await sync([{ kind: 'add-service', service: svc('y', '10.96.0.2') }], last.applied);
  t.true(last.full, 'no canary: a full sync');
  b.canary = true;
  b.sent = [];
  last = await sync([{ kind: 'delete-service', name: 'z' }], last.applied);
  t.false(last.full);
  const deletedHairpin = b.sent.flat().filter((o) => o.kind === 'delete-elements' && o.set === HAIRPIN);
  t.deepEqual(deletedHairpin, [], 'y still uses the pair (10.80.0.11, 10.80.0.11): it stays');
});

test('a plan refuses an operation on a set or chain it neither has nor added, when the operation is added (knftables Transaction)', (t) => {
  const el = {
    length: 1,
    at: () => ({ key: ['10.96.0.1', 'tcp', 80], data: { verdict: 'goto' as const, chain: 'lb-tcp-1' } }),
  };
  const refused = (f: () => unknown, re: RegExp) => t.throws(f, { message: re, code: 'EINTERNAL' } as never);
  refused(
    () => new PlanBuilder().add({ kind: 'add-elements', set: 'service-ips', elements: el }),
    /add-elements operation: set service-ips is neither in the table nor added before/,
  );
  refused(
    () => new PlanBuilder().add({ kind: 'add-rules', chain: 'c', rules: [] }),
    /add-rules operation: chain c is neither/,
  );
  const svcIps: NamedSet = { name: 'service-ips', key: { fields: ['daddr', 'l4proto', 'dport'] }, data: 'verdict' };
  refused(
    () => new PlanBuilder({ sets: [svcIps] }).add({ kind: 'add-elements', set: 'service-ips', elements: el }),
    /chain lb-tcp-1 is neither/,
  );
  refused(
    () =>
      new PlanBuilder({ chains: ['c'] }).add({
        kind: 'add-rules',
        chain: 'c',
        rules: [{ items: [{ kind: 'in-set', key: { fields: ['saddr'] }, set: 'hairpin' }] }],
      }),
    /set hairpin is neither/,
  );
  refused(
    () =>
      new PlanBuilder({ sets: [svcIps], chains: ['c'] }).add(
        { kind: 'delete-table' },
        { kind: 'flush-chain', name: 'c' },
      ),
    /chain c is neither/,
  );
  const ok = new PlanBuilder({ sets: [svcIps], chains: ['lb-tcp-1'] })
    .add({ kind: 'add-elements', set: 'service-ips', elements: el })
    .plan({ full: false, written: 1, deleted: 0 });
  t.is(ok.ops.length, 1);
  t.deepEqual(ok.existing, [svcIps], 'what the plan takes the table to have travels with it to the encoder');
});
