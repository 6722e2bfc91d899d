import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IndexedState, type NatChange } from '../../src/nat/changes';
import { NatStore, storedServices } from '../../src/nat/store';
import { SnapshotIndex, hash32, type RowMeta } from '../../src/nat/snapshot-index';
import { normalizeState, parseEndpoint, type DesiredState, type Service } from '../../src/nat/model';

const svc = (name: string, vip: string, eps: string[] = ['10.0.0.2:80']): Service => ({
  name,
  vip,
  port: 80,
  proto: 'tcp',
  endpoints: eps.map(parseEndpoint),
});
const base = (): DesiredState =>
  normalizeState({ services: [svc('a', '10.96.0.1'), svc('b', '10.96.0.2'), svc('c', '10.96.0.3')], rules: [] });

test('changes apply in place; the round says which services changed; undo restores the state exactly', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const snapshot = JSON.stringify(x.desired());
  const r = x.apply([
    { kind: 'set-endpoints', name: 'a', endpoints: [parseEndpoint('10.0.0.9:80')] },
    { kind: 'delete-service', name: 'b' },
    { kind: 'add-service', service: svc('d', '10.96.0.4') },
    { kind: 'add-rule', rule: { kind: 'masquerade', source: '10.88.0.0/16' } },
  ]);
  t.deepEqual(
    x.services().map((s) => s.name),
    ['a', 'c', 'd'],
  );
  t.deepEqual(
    r.services.map((d) => [d.old?.name, d.new?.name]),
    [
      ['a', 'a'],
      ['b', undefined],
      [undefined, 'd'],
    ],
  );
  t.true(r.global);
  const byName = (x: DesiredState) => ({
    ...x,
    services: [...x.services].sort((p, q) => p.name.localeCompare(q.name)),
  });
  t.deepEqual(byName(r.before()), byName(JSON.parse(snapshot)), 'the state before, rebuilt (order aside)');
  t.is(x.service('d')!.vip, '10.96.0.4');
  r.undo();
  t.is(JSON.stringify(x.desired()), snapshot);
  t.is(x.service('d'), undefined);
  t.is(x.service('b')!.vip, '10.96.0.2', 'the index is back too');
});

test('a refused change undoes the whole round: VIP claimed twice, other settings under one name, unknown service', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const snapshot = JSON.stringify(x.desired());
  const refused: [NatChange[], RegExp][] = [
    [
      [
        { kind: 'delete-service', name: 'a' },
        { kind: 'add-service', service: svc('e', '10.96.0.2') },
      ],
      /services b and e both claim 10\.96\.0\.2:80\/tcp/,
    ],
    [
      [{ kind: 'add-service', service: svc('a', '10.96.0.1', ['10.0.0.3:80']) }],
      /service a already exists with other settings/,
    ],
    [[{ kind: 'set-endpoints', name: 'nope', endpoints: [] }], /no service named nope/],
    [
      [{ kind: 'replace-services', services: [svc('x', '10.96.0.9'), svc('x', '10.96.0.8')] }],
      /duplicate service name x/,
    ],
  ];
  for (const [changes, re] of refused) {
    t.throws(() => x.apply(changes), { message: re });
    t.is(JSON.stringify(x.desired()), snapshot, `nothing changed by ${re}`);
  }
  t.deepEqual(
    x.apply([{ kind: 'add-service', service: svc('a', '10.96.0.1') }]).services,
    [],
    'the same add twice changes nothing',
  );
  // A VIP freed and claimed in one round is fine.
  x.apply([
    { kind: 'delete-service', name: 'a' },
    { kind: 'add-service', service: svc('e', '10.96.0.1') },
  ]);
  t.is(x.service('e')!.vip, '10.96.0.1');
});

test('replace-services: one round, only differing services reported', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const r = x.apply([
    {
      kind: 'replace-services',
      services: [svc('a', '10.96.0.1'), svc('c', '10.96.0.3', ['10.0.0.7:80']), svc('z', '10.96.0.26')],
    },
  ]);
  t.deepEqual(r.services.map((d) => `${d.old?.name ?? '-'}>${d.new?.name ?? '-'}`).sort(), ['->z', 'b>-', 'c>c']);
  t.deepEqual(
    x.services().map((s) => s.name),
    ['a', 'c', 'z'],
  );
});

test('replace-services is judged as a whole: two services may swap VIPs in one set; two wanted services claiming one VIP are refused, nothing changed', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const before = JSON.stringify(x.desired());
  // b takes a's VIP while a moves away: a check per service in order would refuse b.
  const r = x.apply([
    { kind: 'replace-services', services: [svc('b', '10.96.0.1'), svc('a', '10.96.0.9'), svc('c', '10.96.0.3')] },
  ]);
  t.deepEqual(r.services.map((d) => `${d.old?.vip}>${d.new?.vip}`).sort(), [
    '10.96.0.1>10.96.0.9',
    '10.96.0.2>10.96.0.1',
  ]);
  t.deepEqual(
    x.services().map((s) => `${s.name}=${s.vip}`),
    ['a=10.96.0.9', 'b=10.96.0.1', 'c=10.96.0.3'],
    'kept services keep their places',
  );
  r.undo();
  t.is(JSON.stringify(x.desired()), before);
  const err = t.throws(() =>
    x.apply([{ kind: 'replace-services', services: [svc('a', '10.96.0.1'), svc('z', '10.96.0.1')] }]),
  );
  t.is(err?.message, 'services a and z both claim 10.96.0.1:80/tcp');
  t.is(JSON.stringify(x.desired()), before, 'a refused set changes nothing');
});

/** What the index should keep of a service's line, derived here apart from the index's own builder. */
const metaOf = (s: Service): RowMeta => ({
  nameHash: hash32(s.name),
  vipHash: hash32(`${s.vip}:${s.port}/${s.proto}`),
  family: s.vip.includes(':') ? 6 : 4,
  proto: s.proto,
  endpoints: s.endpoints.length,
  ips: [...new Set(s.endpoints.map((e) => e.ip))].map(hash32),
});

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-store-'));

test('store: rounds are journal lines; a fresh reader replays them; a torn last line is a round that never happened', (t) => {
  const dir = tmp();
  const w = new NatStore(dir);
  const x = IndexedState.of(base());
  w.save(x, { backend: 'netlink' }); // the first record: a snapshot
  for (const [i, name] of ['a', 'b'].entries()) {
    const changes: NatChange[] = [{ kind: 'set-endpoints', name, endpoints: [parseEndpoint(`10.0.0.${20 + i}:80`)] }];
    x.apply(changes);
    w.save(x, { backend: 'netlink', applied: { backend: 'netlink', clean: true, families: {} } }, changes);
  }
  t.is(fs.readFileSync(path.join(dir, 'nat.journal'), 'utf8').trim().split('\n').length, 2);
  const r = new NatStore(dir).load();
  t.deepEqual(r.indexed.desired(), x.desired());
  t.is(r.f.applied?.backend, 'netlink');
  fs.appendFileSync(path.join(dir, 'nat.journal'), '{"seq":4,"changes":[{"op":"delete-ser');
  t.deepEqual(new NatStore(dir).load().indexed.desired(), x.desired(), 'the torn line is ignored');
  fs.rmSync(dir, { recursive: true });
});

test('store: the rules and forwards alone (globals) read as a full load reads them, journal included, without the services', (t) => {
  const dir = tmp();
  const w = new NatStore(dir);
  const x = IndexedState.of(base());
  const fwd = (name: string, ip: string, listenPort = 3308) => ({
    name,
    target: ip,
    targetIp: ip,
    listenPort,
    targetPort: 3306,
    proto: 'tcp' as const,
    snat: 'auto' as const,
  });
  x.apply([{ kind: 'put-forward', forward: fwd('db', '10.0.0.7') }]);
  w.save(x, { backend: 'netlink' });
  const rounds: NatChange[][] = [
    [{ kind: 'put-forward', forward: fwd('db', '10.0.0.8') }],
    [{ kind: 'add-rule', rule: { kind: 'masquerade', source: '10.88.0.0/16' } }],
    [
      { kind: 'put-forward', forward: fwd('cache', '10.0.0.9', 6380) },
      { kind: 'set-endpoints', name: 'a', endpoints: [parseEndpoint('10.0.0.30:80')] },
    ],
    [{ kind: 'delete-forward', name: 'cache' }],
  ];
  for (const changes of rounds) {
    x.apply(changes);
    w.save(x, { backend: 'netlink' }, changes);
    const full = new NatStore(dir).load().indexed;
    const g = new NatStore(dir).globals();
    t.deepEqual({ rules: g.rules, forwards: g.forwards }, { rules: full.rules, forwards: full.forwards });
  }
  t.deepEqual(
    new NatStore(dir).globals().forwards.map((f) => [f.name, f.targetIp]),
    [['db', '10.0.0.8']],
  );
  // A snapshot rewritten on one line (jq -c): not tsnet's head line, read in full.
  const one = path.join(dir, 'nat.json');
  const saved = fs.readFileSync(one, 'utf8');
  fs.writeFileSync(one, JSON.stringify(JSON.parse(saved)));
  t.deepEqual(new NatStore(dir).globals().forwards, new NatStore(dir).load().indexed.forwards);
  fs.writeFileSync(one, saved);
  // Services that would not parse are never read.
  const file = path.join(dir, 'nat.json');
  const text = fs.readFileSync(file, 'utf8');
  const nl = text.indexOf('\n');
  fs.writeFileSync(file, `${text.slice(0, nl + 1)}garbage\n${text.slice(nl + 1)}`);
  t.deepEqual(new NatStore(dir).globals().rules, [{ kind: 'masquerade', source: '10.88.0.0/16' }]);
  fs.rmSync(dir, { recursive: true });
});

test('store: a snapshot folds the journal; lines it already holds are not replayed again', (t) => {
  const dir = tmp();
  const w = new NatStore(dir);
  const x = IndexedState.of(base());
  w.save(x, { backend: 'netlink' });
  const changes: NatChange[] = [{ kind: 'delete-service', name: 'c' }];
  x.apply(changes);
  w.save(x, { backend: 'netlink' }, changes);
  const journal = fs.readFileSync(path.join(dir, 'nat.journal'), 'utf8');
  w.save(x, { backend: 'netlink' }); // no changes given: a snapshot
  t.false(fs.existsSync(path.join(dir, 'nat.journal')));
  // A crash between writing the snapshot and removing the journal leaves both: the old line is skipped.
  fs.writeFileSync(path.join(dir, 'nat.journal'), journal);
  t.deepEqual(
    new NatStore(dir)
      .load()
      .indexed.services()
      .map((s) => s.name),
    ['a', 'b'],
  );
  fs.rmSync(dir, { recursive: true });
});

test('store: a snapshot tsnet wrote is trusted (digest), a hand-edited one is validated in full', (t) => {
  const dir = tmp();
  new NatStore(dir).save(IndexedState.of(base()), { backend: 'netlink' });
  const file = path.join(dir, 'nat.json');
  const f = JSON.parse(fs.readFileSync(file, 'utf8'));
  t.truthy(f.digest);
  f.desired.services[0].endpoints[0].ip = '10.0.0.300';
  fs.writeFileSync(file, JSON.stringify(f));
  t.throws(() => new NatStore(dir).load(), { message: /holds an invalid desired state .*10\.0\.0\.300/ });
  fs.rmSync(dir, { recursive: true });
});

test('store: services of a trusted snapshot stay unparsed until read; changing one parses that one', (t) => {
  const dir = tmp();
  const many = normalizeState({
    services: Array.from({ length: 200 }, (_, i) => svc(`s${i}`, `10.96.1.${i}`, [`10.0.1.${i}:80`])),
    rules: [],
  });
  new NatStore(dir).save(IndexedState.of(many), { backend: 'netlink' });
  const parse = JSON.parse;
  let parsed = 0;
  JSON.parse = ((text: string, ...rest: []) => {
    if (text.startsWith('{"name":')) parsed++;
    return parse(text, ...rest);
  }) as typeof JSON.parse;
  try {
    const { indexed } = new NatStore(dir).load();
    t.is(parsed, 0, 'loading parses no service');
    const r = indexed.apply([{ kind: 'set-endpoints', name: 's150', endpoints: [parseEndpoint('10.0.9.9:80')] }]);
    t.is(parsed, 1, 'one change, one service parsed');
    t.deepEqual(
      r.services.map((d) => [d.old?.endpoints[0]?.ip, d.new?.endpoints[0]?.ip]),
      [['10.0.1.150', '10.0.9.9']],
    );
    t.deepEqual(indexed.endpointUsed(new Set(['s150']), ['10.0.1.7', '10.0.1.150', '10.0.9.9']), [true, false, false]);
    t.is(parsed, 2, 'a lookup parses only the rows whose text can match (s7; s150 is the changed one, already parsed)');
    t.throws(() => indexed.apply([{ kind: 'add-service', service: svc('new', '10.96.1.3') }]), {
      message: /services s3 and new both claim/,
    });
  } finally {
    JSON.parse = parse;
  }
  t.deepEqual(new NatStore(dir).load().indexed.desired(), many, 'the rows read back are the services written');
  fs.rmSync(dir, { recursive: true });
});

test('the snapshot index: names, VIP keys and addresses found through it (a name that prefixes another, one with a slash, any key order in the line), families counted unparsed, a deletion in place', (t) => {
  const names = ['s1', 's10', 'ns/web', 'a.b_c-d', 'ns/web2', 'v6'];
  const services = names.map((n, i) =>
    svc(n, n === 'v6' ? 'fd96::1' : `10.96.2.${i}`, [`${n === 'v6' ? '[fd00::2]' : `10.0.2.${i}`}:80`]),
  );
  // Lines with their keys in another order than tsnet writes them: the index does not read key order.
  const { bytes, index } = storedServices(services, ({ endpoints, ...rest }) => JSON.stringify({ endpoints, ...rest }));
  t.is(index.count, names.length);
  const nameOf = (k: number) => (JSON.parse(bytes.toString('utf8', ...index.span(k))) as { name: string }).name;
  t.deepEqual(
    names.map((n) => index.byName(n).filter((k) => nameOf(k) === n)),
    names.map((_, i) => [i]),
  );
  t.deepEqual(index.byName('s'), []);
  t.deepEqual(index.byVip('10.96.2.2:80/tcp'), [2]);
  t.deepEqual(index.byIp('10.0.2.1'), [1]);
  t.deepEqual(
    names.map((_, k) => index.family(k)),
    names.map((n) => (n === 'v6' ? 6 : 4)),
  );
  t.deepEqual(index.meta(5), { ...metaOf(services[5]!) }, 'what the index keeps of a line is what the service says');
  const again = SnapshotIndex.decode(index.encode(), index.digest)!;
  t.deepEqual(
    names.map((n) => again.byName(n)),
    names.map((n) => index.byName(n)),
    'an index survives its file',
  );
  t.is(SnapshotIndex.decode(index.encode(), 'another digest'), undefined, 'an index of another snapshot is not used');

  const x = IndexedState.stored({ bytes, index }, [], []);
  t.deepEqual(x.families(), [4, 6]);
  t.is(x.service('ns/web2')?.vip, '10.96.2.4');
  x.apply([{ kind: 'delete-service', name: 's10' }]);
  t.is(x.service('ns/web')?.vip, '10.96.2.2');
  t.is(x.service('s10'), undefined);
  x.apply([{ kind: 'set-endpoints', name: 'a.b_c-d', endpoints: [parseEndpoint('10.0.9.9:80')] }]);
  t.deepEqual(
    x.services().map((s) => [s.name, s.endpoints[0]!.ip]),
    [
      ['s1', '10.0.2.0'],
      ['ns/web', '10.0.2.2'],
      ['a.b_c-d', '10.0.9.9'],
      ['ns/web2', '10.0.2.4'],
      ['v6', 'fd00::2'],
    ],
  );
  x.apply([{ kind: 'delete-service', name: 'v6' }]);
  t.deepEqual(x.families(), [4]);
  t.throws(() => x.apply([{ kind: 'add-service', service: svc('z', '10.96.2.4') }]), {
    message: 'services ns/web2 and z both claim 10.96.2.4:80/tcp',
  });
});

test('store: the snapshot records how many VIPs are of each family, so a partial sync asks no row', (t) => {
  const dir = tmp();
  const st = normalizeState({ services: [svc('a', '10.96.0.1'), svc('b', 'fd96::2', ['[fd00::2]:80'])], rules: [] });
  new NatStore(dir).save(IndexedState.of(st), { backend: 'netlink' });
  const head = fs.readFileSync(path.join(dir, 'nat.json'), 'utf8').split('\n')[0]!;
  t.regex(head, /"families":\{"4":1,"6":1\}/);
  const { indexed, f } = new NatStore(dir).load();
  t.deepEqual(indexed.families(), [4, 6]);
  t.false('families' in f, "the count is the rows' business, not part of the record");
  fs.rmSync(dir, { recursive: true });
});

test('the snapshot index: names whose hashes collide are both candidates, each settled by its row; a table of thousands finds every name', (t) => {
  // Two names with one 32-bit hash (found once by a search over 2^22 names).
  const [a, b] = ['ns21/svc-ti7', 'ns1/svc-3ixt'];
  t.is(hash32(a), hash32(b), 'the two names share a hash');
  const services = [svc('first', '10.96.3.1'), svc(a, '10.96.3.2'), svc('middle', '10.96.3.3'), svc(b, '10.96.3.4')];
  const { bytes, index } = storedServices(services);
  t.deepEqual(index.byName(a), [1, 3], 'both rows of the shared hash, in row order');
  t.deepEqual(index.byName(b), [1, 3]);
  const x = IndexedState.stored({ bytes, index }, [], []);
  t.is(x.service(a)?.vip, '10.96.3.2', 'the row read settles which name is which');
  t.is(x.service(b)?.vip, '10.96.3.4');

  const many = Array.from({ length: 5000 }, (_, i) => svc(`m${i}`, `10.97.${i >> 8}.${i & 255}`));
  const big = storedServices(many).index;
  t.true(
    many.every((s, i) => big.byName(s.name).includes(i) && big.byVip(`${s.vip}:80/tcp`).includes(i)),
    'every name and VIP key found in its row',
  );
  t.deepEqual(big.byName('not-there'), []);
});

test('store: a snapshot found without its index is indexed once, and the index written back for the next load', (t) => {
  const dir = tmp();
  const st = normalizeState({ services: [svc('a', '10.96.0.1'), svc('b', '10.96.0.2')], rules: [] });
  new NatStore(dir).save(IndexedState.of(st), { backend: 'netlink' });
  const indexFile = path.join(dir, 'nat.index');
  const written = fs.readFileSync(indexFile);
  fs.rmSync(indexFile);
  t.deepEqual(new NatStore(dir).load().indexed.desired(), st);
  t.deepEqual(fs.readFileSync(indexFile), written, 'the index written back is the one the snapshot was saved with');
  fs.rmSync(dir, { recursive: true });
});

test('store: a snapshot written over a loaded one keeps the unchanged rows as they were read, the changed ones in their places', (t) => {
  const dir = tmp();
  const services = Array.from({ length: 50 }, (_, i) => svc(`s${i}`, `10.96.4.${i}`, [`10.0.4.${i}:80`]));
  new NatStore(dir).save(IndexedState.of(normalizeState({ services, rules: [] })), { backend: 'netlink' });
  const { indexed } = new NatStore(dir).load();
  indexed.apply([
    { kind: 'set-endpoints', name: 's10', endpoints: [parseEndpoint('10.0.9.10:80')] },
    { kind: 'delete-service', name: 's20' },
    { kind: 'set-endpoints', name: 's49', endpoints: [parseEndpoint('10.0.9.49:80')] },
    { kind: 'add-service', service: svc('late', '10.96.5.1') },
  ]);
  const want = indexed.desired();
  new NatStore(dir).save(indexed, { backend: 'netlink' }); // no changes given: a whole snapshot
  const again = new NatStore(dir).load().indexed;
  t.deepEqual(again.desired(), want);
  t.is(again.service('s10')?.endpoints[0]?.ip, '10.0.9.10', 'a changed row found through the new index');
  t.is(again.service('s21')?.vip, '10.96.4.21', 'an unchanged row after a deleted one, found through the new index');
  t.is(again.service('s20'), undefined);
  fs.rmSync(dir, { recursive: true });
});

test('the local/cluster boundary: no local change touches a cluster service or takes its VIP; the cluster leaves a local one be; refused rounds change nothing', (t) => {
  const web: Service = { ...svc('default/web', '10.96.1.1'), origin: 'cluster' };
  const x = IndexedState.of(normalizeState({ services: [svc('a', '10.96.0.1'), web], rules: [] }));
  const before = JSON.stringify(x.desired());
  const refused = (c: NatChange, re: RegExp) => {
    t.throws(() => x.apply([c]), { message: re }, c.kind);
    t.is(JSON.stringify(x.desired()), before, `${c.kind}: nothing changed`);
  };
  const heldByCluster = /10\.96\.1\.1:80\/tcp is held by cluster service default\/web \(from etcd\)/;
  const clusterOnes = /default\/web is a cluster service \(from etcd\): (change|delete) it with "tsnet --etcd service/;
  refused({ kind: 'add-service', service: svc('mine', '10.96.1.1') }, heldByCluster);
  refused({ kind: 'put-service', service: svc('default/web', '10.96.9.9') }, clusterOnes);
  refused({ kind: 'set-endpoints', name: 'default/web', endpoints: [] }, clusterOnes);
  refused({ kind: 'delete-service', name: 'default/web' }, clusterOnes);
  refused({ kind: 'replace-services', services: [svc('b', '10.96.1.1')] }, heldByCluster);
  refused({ kind: 'replace-services', services: [svc('default/web', '10.96.2.2')] }, clusterOnes);
  refused({ kind: 'replace-services', services: [web] }, /a cluster service is not part of a local "service apply"/);
  // The cluster's side: a local service's name or VIP is not the agent's to take, nor its delete to remove.
  refused(
    { kind: 'put-service', service: { ...svc('a', '10.96.5.5'), origin: 'cluster' } },
    /cluster service a: a local service of that name exists on this node/,
  );
  refused(
    { kind: 'put-service', service: { ...svc('default/db', '10.96.0.1'), origin: 'cluster' } },
    /cluster service default\/db: 10\.96\.0\.1:80\/tcp is held by local service a on this node/,
  );
  x.apply([{ kind: 'delete-service', name: 'a', origin: 'cluster' }]);
  t.is(JSON.stringify(x.desired()), before, "the cluster's delete of a local name is a no-op");
  // A local apply replaces the local set only: the cluster's service stays, in its place.
  x.apply([{ kind: 'replace-services', services: [svc('b', '10.96.0.2')] }]);
  t.deepEqual(
    x.services().map((s) => [s.name, s.origin]),
    [
      ['default/web', 'cluster'],
      ['b', undefined],
    ],
  );
  // And the agent changes and deletes its own.
  x.apply([{ kind: 'put-service', service: { ...web, endpoints: [] } }]);
  x.apply([{ kind: 'delete-service', name: 'default/web', origin: 'cluster' }]);
  t.deepEqual(
    x.services().map((s) => s.name),
    ['b'],
  );
});
