/**
 * A real runtime: podman (CNI backend) runs containers on tsnet-bridge +
 * tsnet-ipam through examples/podman/run.sh, which makes its own private
 * network + mount namespaces inside the test sandbox. The script asserts each
 * step (address from tsnet-ipam, node/container/published-port traffic,
 * nothing left after `podman rm`); this test requires it to succeed, once with
 * the shims running the standalone plugin and once with `tsnet agent` serving them.
 */
import test from 'ava';
import * as path from 'node:path';
import { assertSandbox, run } from '../harness/fixtures';

const SCRIPT = path.join(__dirname, '..', '..', '..', 'examples', 'podman', 'run.sh');

for (const mode of ['standalone', 'agent'] as const) {
  test(`podman runs a container attached through tsnet-bridge (${mode}), with a published port, and cleans up on rm`, (t) => {
    assertSandbox();
    t.timeout(240_000);
    const r = run('bash', [SCRIPT, ...(mode === 'agent' ? ['--agent'] : [])], { timeoutMs: 220_000 });
    t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
    t.regex(r.stdout, /container address \(from tsnet-ipam\): 10\.89\.0\.\d+/);
    t.is(
      r.stdout.match(/hello from a podman container on tsnet/g)?.length,
      4,
      'node, container, gateway:port and 127.0.0.1:port all reached it',
    );
    t.regex(r.stdout, /reservations left: none; NAT rules naming \S+: 0; attachment records: 0/);
    if (mode === 'agent') t.regex(r.stdout, /served by the agent: ADD [2-9], DEL [2-9]/);
    else t.notRegex(r.stdout, /served by the agent/);
  });
}
