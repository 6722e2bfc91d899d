/**
 * The examples run, so they cannot rot: examples/library (the API from the
 * package root, `import ... from 'tsnet'`, for a whole job) end to end.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assertSandbox, run } from '../harness/fixtures';

test('examples/library: two containers behind a service VIP and a forward, built with the package-root API, HTTP through both, nothing left', (t) => {
  assertSandbox();
  const r = run(process.execPath, [path.join(__dirname, '..', '..', 'examples', 'library', 'main.js')]);
  t.is(r.status, 0, `${r.stdout}${r.stderr}`);
  t.regex(r.stdout, /^service example\/web 10\.96\.0\.10:80 -> c1, c2 \(netlink, /m);
  const spread = JSON.parse(/30 requests: (\{.*\})/.exec(r.stdout)?.[1] ?? '{}') as Record<string, number>;
  t.deepEqual(Object.keys(spread).sort(), ['c1', 'c2'], 'both containers answered through the VIP');
  t.regex(r.stdout, /forward example-db: c1 -> 10\.77\.0\.1:3308, 5 requests: \{"c2":5\}/);
  t.regex(r.stdout, /^ok$/m);
  // Other test files run at the same time: only the example's own namespaces (lib<pid>-node, -c1, -c2) are looked for.
  t.notRegex(run('ip', ['netns', 'list']).stdout, /^lib\d+-(node|c1|c2)\b/m, 'its namespaces are gone');
});

for (const backend of ['vxlan', 'host-gw']) {
  test(`examples/cluster (${backend}): a real etcd, three nodes with an agent each, a pod per node by CNI, every pod reaches every other, a leave`, (t) => {
    assertSandbox();
    const r = run('bash', [path.join(__dirname, '..', '..', '..', 'examples', 'cluster', 'run.sh'), backend], {
      timeoutMs: 90_000,
    });
    t.is(r.status, 0, `${r.stdout}${r.stderr}`);
    const pairs = r.stdout.match(/^pod(\d) -> [\d.]+: pod(\d)$/gm) ?? [];
    t.is(pairs.length, 6, r.stdout);
    for (const p of pairs) t.notRegex(p, /^pod(\d) .*: pod\1$/, 'a pod answered as another');
    t.regex(r.stdout, /^n3 left: 10\.244\.\d+\.0\/24 released/m);
    // Everything it started is gone: no process still names its working directory.
    const dir = /^== working in (\S+)$/m.exec(r.stdout)![1]!;
    const left = fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(dir);
        } catch {
          return false;
        }
      });
    t.deepEqual(left, [], `processes left behind by the example: ${left.join(' ')}`);
    t.regex(r.stdout, /^ok$/m);
  });
}
