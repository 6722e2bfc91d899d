/**
 * NAT engine behaviour that is not about packets: iptables mode detection,
 * the lock under concurrent CLI calls, the state directory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import test from 'ava';
import { NatEngine } from '../../src/nat/engine';
import * as bridge from '../../src/bridge';
import * as route from '../../src/route';
import { attach } from '../../src/attach';
import { serve, request, type Server } from '../../src/demo/traffic';
import { Topology, run, CLI } from '../harness/fixtures';

const topo = new Topology('nate');
const dirs: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-nate-'));
  dirs.push(d);
  return d;
};
test.after.always(() => {
  topo.cleanup();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

test.serial(
  "a node whose rules are in iptables-legacy gets tsnet's rules there too, never split across both",
  async (t) => {
    const ns = await topo.ns('legacy');
    const pre = run('ip', [
      'netns',
      'exec',
      ns.name!,
      'iptables-legacy',
      '-t',
      'nat',
      '-A',
      'POSTROUTING',
      '-s',
      '172.17.0.0/16',
      '-j',
      'MASQUERADE',
    ]);
    // iptables-legacy comes with Debian's iptables package (.ci/run installs it): not being able to use it is a failure, not a skip.
    t.is(pre.status, 0, `iptables-legacy in a test namespace: ${pre.stderr.trim()}`);
    const engine = new NatEngine({ ns, stateDir: tmp(), backend: 'iptables' });
    const r = await engine.update((st) => {
      st.services.push({
        name: 'web',
        vip: '10.96.0.1',
        port: 80,
        proto: 'tcp',
        endpoints: [{ ip: '10.0.0.2', port: 80, weight: 1 }],
      });
    });
    t.is(r.backend, 'iptables/legacy');
    t.regex(run('ip', ['netns', 'exec', ns.name!, 'iptables-legacy-save']).stdout, /-A TSNET-SERVICES .*10\.96\.0\.1/);
    t.notRegex(run('ip', ['netns', 'exec', ns.name!, 'iptables-nft-save']).stdout, /TSNET/);
    await engine.update((st) => {
      st.services = [];
    });
    t.notRegex(run('ip', ['netns', 'exec', ns.name!, 'iptables-legacy-save']).stdout, /TSNET/);
    t.regex(
      run('ip', ['netns', 'exec', ns.name!, 'iptables-legacy-save']).stdout,
      /-A POSTROUTING -s 172\.17\.0\.0\/16 -j MASQUERADE/,
    );
  },
);

for (const backend of ['iptables', 'nft', 'netlink'] as const) {
  test.serial(
    `${backend}: 12 concurrent CLI calls lose nothing (the state lock), and the rules hold all 12`,
    async (t) => {
      const ns = await topo.ns(`conc-${backend}`);
      const dir = tmp();
      const codes = await Promise.all(
        Array.from(
          { length: 12 },
          (_, i) =>
            new Promise<number>((resolve) => {
              const c = spawn(
                process.execPath,
                [
                  CLI,
                  '--netns',
                  ns.name!,
                  '--backend',
                  backend,
                  '--state-dir',
                  dir,
                  'service',
                  'add',
                  `svc${i}`,
                  '--vip',
                  `10.96.1.${i + 1}:80`,
                  '--endpoint',
                  `10.0.0.${i + 2}:8080`,
                ],
                { stdio: 'ignore' },
              );
              c.on('exit', (code) => resolve(code ?? 1));
            }),
        ),
      );
      t.deepEqual(codes, Array(12).fill(0));
      t.is(
        new NatEngine({ ns, stateDir: dir, backend }).read().services.length,
        12,
        'all 12 stored (snapshot and journal)',
      );
      const rules =
        backend === 'iptables'
          ? run('ip', ['netns', 'exec', ns.name!, 'iptables-save', '-t', 'nat'])
              .stdout.split('\n')
              .filter((l) => l.startsWith('-A TSNET-SERVICES')).length
          : (
              run('ip', ['netns', 'exec', ns.name!, 'nft', 'list', 'map', 'ip', 'tsnet', 'service-ips']).stdout.match(
                / : goto lb-/g,
              ) ?? []
            ).length;
      t.is(rules, 12);
      t.deepEqual(
        fs.readdirSync(path.join(dir, 'netns', ns.name!)).filter((f) => f.endsWith('.tmp')),
        [],
        'no temp files left',
      );
    },
  );
}

test.serial('a corrupt state file is a clear error, not a silent reset', async (t) => {
  const ns = await topo.ns('corrupt');
  const dir = tmp();
  fs.mkdirSync(path.join(dir, 'netns', ns.name!), { recursive: true });
  fs.writeFileSync(path.join(dir, 'netns', ns.name!, 'nat.json'), '{"version":1,"desired":{"services":[{"name":"x y"');
  const r = run(process.execPath, [CLI, '--netns', ns.name!, '--state-dir', dir, 'sync']);
  t.is(r.status, 1);
  t.regex(r.stderr, /^tsnet: .*nat\.json is not valid JSON .*restore it from a backup or remove it\n$/);
});

for (const backend of ['iptables', 'nft', 'netlink'] as const) {
  test.serial(
    `${backend}: a sync that died half-way (dirty record) is undone even when the desired state is now empty`,
    async (t) => {
      // The state a tsnet killed between applying and saving leaves: rules live, the record still the old
      // desired state (here: empty) and marked dirty.
      const ns = await topo.ns(`dirty-${backend}`);
      const dir = tmp();
      const engine = new NatEngine({ ns, stateDir: dir, backend });
      await engine.update((st) => {
        st.rules.push({ kind: 'masquerade', source: '10.77.0.0/24', outNot: 'br0' });
      });
      await engine.update((st) => {
        st.rules.push({ kind: 'masquerade', source: '10.78.0.5/32', outNot: 'br0' });
      });
      const file = path.join(dir, 'netns', ns.name!, 'nat.json');
      const f = JSON.parse(fs.readFileSync(file, 'utf8'));
      // The snapshot says: nothing desired, a sync of it under way; the journal (the second rule's round) is gone.
      fs.writeFileSync(
        file,
        JSON.stringify({
          ...f,
          seq: 99,
          digest: undefined,
          desired: { services: [], rules: [], forwards: [] },
          applied: { ...f.applied, clean: false },
        }),
      );
      fs.rmSync(path.join(dir, 'netns', ns.name!, 'nat.journal'), { force: true });
      const live = () =>
        backend === 'iptables'
          ? run('ip', ['netns', 'exec', ns.name!, 'iptables-save', '-t', 'nat']).stdout
          : run('ip', ['netns', 'exec', ns.name!, 'nft', 'list', 'ruleset']).stdout;
      t.regex(live(), /10\.78\.0\.5/, 'the orphaned rule is live');
      await engine.update(() => {
        /* a DEL removing rules the record no longer has: no change to the desired state */
      });
      t.notRegex(live(), /10\.7[78]\./, 'nothing of the dead sync is left');
      t.false(
        JSON.parse(fs.readFileSync(file, 'utf8')).applied.clean === false,
        'the record is clean again (a full sync writes a snapshot)',
      );
    },
  );
}

for (const backend of ['iptables', 'nft', 'netlink'] as const) {
  test.serial(
    `${backend}: a first sync killed before it saved anything (a dirty mark, no record) is torn down by the next one`,
    async (t) => {
      // What a plugin SIGKILLed between applying its first rules and saving leaves: live rules, no nat.json, nat.dirty.
      const ns = await topo.ns(`first-${backend}`);
      const dir = tmp();
      const engine = new NatEngine({ ns, stateDir: dir, backend });
      await engine.update((st) => {
        st.rules.push({ kind: 'masquerade', source: '10.79.0.5/32', outNot: 'br0' });
      });
      const state = path.join(dir, 'netns', ns.name!);
      const mark =
        (await engine.backend()).name +
        (backend === 'iptables'
          ? ` ${JSON.parse(fs.readFileSync(path.join(state, 'nat.json'), 'utf8')).applied.mode}`
          : '');
      fs.rmSync(path.join(state, 'nat.json'));
      fs.rmSync(path.join(state, 'nat.journal'), { force: true });
      fs.writeFileSync(path.join(state, 'nat.dirty'), `12345 ${mark}\n`);
      const live = () =>
        run('ip', ['netns', 'exec', ns.name!, 'iptables-save', '-t', 'nat']).stdout +
        run('ip', ['netns', 'exec', ns.name!, 'nft', 'list', 'ruleset']).stdout;
      t.regex(live(), /10\.79\.0\.5/, 'the orphaned rule is live');
      await new NatEngine({ ns, stateDir: dir, backend }).update(() => {
        /* a DEL of a rule no record names */
      });
      t.notRegex(live(), /10\.79\.0\.5/, 'nothing of the killed sync is left');
      t.false(fs.existsSync(path.join(state, 'nat.dirty')));
    },
  );
}

test.serial(
  'the table flushed between the canary check and a partial batch (`nft flush ruleset` at that moment): the change is applied by a full sync, not refused; traffic follows it',
  async (t) => {
    const router = await topo.ns('race');
    await bridge.ensure(router, 'br0', { addresses: ['10.84.0.1/24'] });
    await route.add(router, { dst: '10.96.0.0/16', dev: 'br0' });
    const servers: Server[] = [];
    for (const i of [1, 2]) {
      const b = await topo.ns(`race-b${i}`);
      await attach(router, b, { bridge: 'br0', address: `10.84.0.1${i}/24` });
      servers.push(await serve(b, 'http', '0.0.0.0', 8080, `b${i}`));
    }
    try {
      const engine = new NatEngine({ ns: router, stateDir: tmp(), backend: 'netlink', resident: true });
      const web = (ip: string) => ({
        name: 'web',
        vip: '10.96.0.10',
        port: 80,
        proto: 'tcp' as const,
        endpoints: [{ ip, port: 8080, weight: 1 }],
      });
      await engine.change([{ kind: 'add-service', service: web('10.84.0.11') }]);
      t.deepEqual((await request(router, 'http', '10.96.0.10', 80, { count: 3 })).replies, { b1: 3 });
      // The race, made certain: the canary is found, then the ruleset is flushed before the partial batch goes.
      const backend = await engine.backend();
      const canaryPresent = backend.canaryPresent.bind(backend);
      let raced = 0;
      backend.canaryPresent = async (family) => {
        const present = await canaryPresent(family);
        if (present && raced++ === 0)
          t.is(run('ip', ['netns', 'exec', router.name!, 'nft', 'flush', 'ruleset']).status, 0);
        return present;
      };
      const r = await engine.change([
        { kind: 'set-endpoints', name: 'web', endpoints: [{ ip: '10.84.0.12', port: 8080, weight: 1 }] },
      ]);
      t.is(raced, 1, 'the ruleset was flushed after the canary check');
      t.true(r.full, 'the partial batch found nothing to change: a full sync rebuilt the table');
      t.deepEqual((await request(router, 'http', '10.96.0.10', 80, { count: 3 })).replies, { b2: 3 });
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
  },
);
