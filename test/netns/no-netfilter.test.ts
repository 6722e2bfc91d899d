/**
 * No netfilter binary on the node: the demo, a service, a forward, and a CNI
 * ADD/DEL with ipMasq and a port mapping all work on the default backend.
 * Run in a sandbox of its own whose /usr/sbin is an empty tmpfs (iptables,
 * iptables-save, nft... and ip are gone).
 */
import test from 'ava';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { assertSandbox } from '../harness/fixtures';

const ROOT = path.join(__dirname, '..', '..');
const SANDBOX = path.join(ROOT, 'src', 'sandbox', 'run.js');
const SCRIPT = path.join(ROOT, 'test', 'harness', 'no-netfilter.js');

test('with iptables, iptables-save and nft absent: the demo, a service, a forward and a CNI ADD/DEL work', (t) => {
  assertSandbox();
  const r = spawnSync(
    process.execPath,
    [SANDBOX, 'sh', '-c', 'mount -t tmpfs tsnet-no-sbin /usr/sbin && exec "$0" "$@"', process.execPath, SCRIPT],
    {
      encoding: 'utf8',
      timeout: 120_000,
    },
  );
  t.is(r.status, 0, r.stderr + r.stdout);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.deepEqual(out.toolsPresent, [], 'no netfilter binary anywhere');
  t.true(out.demo > 10, 'the demo ran to the end');
  t.is(out.serviceAdd, 'ok');
  t.deepEqual(out.serviceTraffic, { ep: 5 });
  t.is(out.forward, 'ok');
  t.deepEqual(out.forwardTraffic, { ep: 5 });
  t.is(out.counters, 5);
  t.deepEqual(out.cleanup, [0, 0]);
  t.is(out.cniAdd, 'ok');
  t.deepEqual(out.cniPortMapping, { container: 3 });
  t.is(out.cniDel, 'ok');
});
