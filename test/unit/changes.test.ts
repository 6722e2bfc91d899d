import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IndexedState, type NatChange } from '../../src/nat/changes';
import { NatStore } from '../../src/nat/store';
import { normalizeState, parseEndpoint, type DesiredState, type Service } from '../../src/nat/model';

const svc = (name: string, vip: string, eps: string[] = ['10.0.0.2:80']): Service => ({ name, vip, port: 80, proto: 'tcp', endpoints: eps.map(parseEndpoint) });
const base = (): DesiredState => normalizeState({ services: [svc('a', '10.96.0.1'), svc('b', '10.96.0.2'), svc('c', '10.96.0.3')], rules: [] });

test('changes apply in place; the round says which services changed; undo restores the state exactly', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const snapshot = JSON.stringify(st);
  const r = x.apply([
    { op: 'set-endpoints', name: 'a', endpoints: [parseEndpoint('10.0.0.9:80')] },
    { op: 'delete-service', name: 'b' },
    { op: 'add-service', service: svc('d', '10.96.0.4') },
    { op: 'add-rule', rule: { kind: 'masquerade', source: '10.88.0.0/16' } },
  ]);
  t.deepEqual(
    st.services.map((s) => s.name),
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
  const byName = (x: DesiredState) => ({ ...x, services: [...x.services].sort((p, q) => p.name.localeCompare(q.name)) });
  t.deepEqual(byName(r.before()), byName(JSON.parse(snapshot)), 'the state before, rebuilt (order aside)');
  t.is(x.service('d')!.vip, '10.96.0.4');
  r.undo();
  t.is(JSON.stringify(st), snapshot);
  t.is(x.service('d'), undefined);
  t.is(x.service('b')!.vip, '10.96.0.2', 'the index is back too');
});

test('a refused change undoes the whole round: VIP claimed twice, other settings under one name, unknown service', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const snapshot = JSON.stringify(st);
  const refused: [NatChange[], RegExp][] = [
    [
      [
        { op: 'delete-service', name: 'a' },
        { op: 'add-service', service: svc('e', '10.96.0.2') },
      ],
      /services b and e both claim 10\.96\.0\.2:80\/tcp/,
    ],
    [[{ op: 'add-service', service: svc('a', '10.96.0.1', ['10.0.0.3:80']) }], /service a already exists with other settings/],
    [[{ op: 'set-endpoints', name: 'nope', endpoints: [] }], /no service named nope/],
    [[{ op: 'replace-services', services: [svc('x', '10.96.0.9'), svc('x', '10.96.0.8')] }], /duplicate service name x/],
  ];
  for (const [changes, re] of refused) {
    t.throws(() => x.apply(changes), { message: re });
    t.is(JSON.stringify(st), snapshot, `nothing changed by ${re}`);
  }
  t.deepEqual(x.apply([{ op: 'add-service', service: svc('a', '10.96.0.1') }]).services, [], 'the same add twice changes nothing');
  // A VIP freed and claimed in one round is fine.
  x.apply([
    { op: 'delete-service', name: 'a' },
    { op: 'add-service', service: svc('e', '10.96.0.1') },
  ]);
  t.is(x.service('e')!.vip, '10.96.0.1');
});

test('replace-services: one round, only differing services reported', (t) => {
  const st = base();
  const x = IndexedState.of(st);
  const r = x.apply([{ op: 'replace-services', services: [svc('a', '10.96.0.1'), svc('c', '10.96.0.3', ['10.0.0.7:80']), svc('z', '10.96.0.26')] }]);
  t.deepEqual(r.services.map((d) => `${d.old?.name ?? '-'}>${d.new?.name ?? '-'}`).sort(), ['->z', 'b>-', 'c>c']);
  t.deepEqual(
    x.state.services.map((s) => s.name),
    ['a', 'c', 'z'],
  );
});

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-store-'));

test('store: rounds are journal lines; a fresh reader replays them; a torn last line is a round that never happened', (t) => {
  const dir = tmp();
  const w = new NatStore(dir);
  const x = IndexedState.of(base());
  w.save(x, { backend: 'netlink' }); // the first record: a snapshot
  for (const [i, name] of ['a', 'b'].entries()) {
    const changes: NatChange[] = [{ op: 'set-endpoints', name, endpoints: [parseEndpoint(`10.0.0.${20 + i}:80`)] }];
    x.apply(changes);
    w.save(x, { backend: 'netlink', applied: { backend: 'netlink', clean: true, families: {} } }, changes);
  }
  t.is(fs.readFileSync(path.join(dir, 'nat.journal'), 'utf8').trim().split('\n').length, 2);
  const r = new NatStore(dir).load();
  t.deepEqual(r.f.desired, x.state);
  t.is(r.f.applied?.backend, 'netlink');
  fs.appendFileSync(path.join(dir, 'nat.journal'), '{"seq":4,"changes":[{"op":"delete-ser');
  t.deepEqual(new NatStore(dir).load().f.desired, x.state, 'the torn line is ignored');
  fs.rmSync(dir, { recursive: true });
});

test('store: a snapshot folds the journal; lines it already holds are not replayed again', (t) => {
  const dir = tmp();
  const w = new NatStore(dir);
  const x = IndexedState.of(base());
  w.save(x, { backend: 'netlink' });
  const changes: NatChange[] = [{ op: 'delete-service', name: 'c' }];
  x.apply(changes);
  w.save(x, { backend: 'netlink' }, changes);
  const journal = fs.readFileSync(path.join(dir, 'nat.journal'), 'utf8');
  w.save(x, { backend: 'netlink' }); // no changes given: a snapshot
  t.false(fs.existsSync(path.join(dir, 'nat.journal')));
  // A crash between writing the snapshot and removing the journal leaves both: the old line is skipped.
  fs.writeFileSync(path.join(dir, 'nat.journal'), journal);
  t.deepEqual(
    new NatStore(dir).load().f.desired.services.map((s) => s.name),
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
  const many = normalizeState({ services: Array.from({ length: 200 }, (_, i) => svc(`s${i}`, `10.96.1.${i}`, [`10.0.1.${i}:80`])), rules: [] });
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
    const r = indexed.apply([{ op: 'set-endpoints', name: 's150', endpoints: [parseEndpoint('10.0.9.9:80')] }]);
    t.is(parsed, 1, 'one change, one service parsed');
    t.deepEqual(
      r.services.map((d) => [d.old?.endpoints[0]?.ip, d.new?.endpoints[0]?.ip]),
      [['10.0.1.150', '10.0.9.9']],
    );
    const uses = (ip: string) => ({ hint: { endpointIp: ip }, test: (s: Service) => s.endpoints.some((e) => e.ip === ip) });
    t.deepEqual(indexed.anyOther(new Set(['s150']), [uses('10.0.1.7'), uses('10.0.1.150'), uses('10.0.9.9')]), [true, false, false]);
    t.is(parsed, 2, 'a lookup parses only the rows whose text can match (s7; s150 is the changed one, already parsed)');
    t.throws(() => indexed.apply([{ op: 'add-service', service: svc('new', '10.96.1.3') }]), { message: /services s3 and new both claim/ });
  } finally {
    JSON.parse = parse;
  }
  t.deepEqual(new NatStore(dir).load().f.desired, many, 'the rows read back are the services written');
  fs.rmSync(dir, { recursive: true });
});
