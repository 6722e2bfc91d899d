/**
 * `tsnet completion bash`, loaded in bash: what it offers for partial command
 * lines (command words and aliases, each command's options and the global
 * options, option values with a fixed set, namespace names where a namespace
 * is asked for). Generated from the same command table as help.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { run, scratch, tsnet } from '../harness/fixtures';

const { topo, tmp, cleanup } = scratch('compl');
test.after.always(cleanup);

let script = '';
test.before(async () => {
  await topo.ns('ns1');
  const r = tsnet('completion', 'bash');
  if (r.status !== 0) throw new Error(r.stderr);
  script = path.join(tmp('compl'), 'tsnet.bash');
  fs.writeFileSync(script, r.stdout);
});

/**
 * What bash completes for `line` (the cursor at its end). A script that does not define `_tsnet` (or cannot be
 * sourced) fails here, not as an empty list: printf's status would otherwise be the script's.
 */
function complete(line: string): string[] {
  const words = line.split(' ');
  const program = `source ${JSON.stringify(script)} || exit 1; declare -F _tsnet >/dev/null || { echo "no function _tsnet" >&2; exit 1; }; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; COMP_LINE=${JSON.stringify(line)}; _tsnet; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = run('bash', ['-c', program]);
  if (r.status !== 0) throw new Error(`bash: ${r.stderr}`);
  return r.stdout.split('\n').filter(Boolean).sort();
}

test('command words, subcommands and aliases', (t) => {
  const top = complete('tsnet ');
  for (const w of [
    'netns',
    'link',
    'bridge',
    'veth',
    'addr',
    'route',
    'attach',
    'detach',
    'service',
    'nat',
    'sync',
    'rules',
    'forward',
    'cni',
    'agent',
    'trace',
    'doctor',
    'topology',
    'demo',
    'completion',
  ])
    t.true(top.includes(w), w);
  t.deepEqual(complete('tsnet se'), ['service']);
  t.deepEqual(complete('tsnet service '), ['add', 'apply', 'del', 'ls', 'set-endpoints']);
  t.deepEqual(complete('tsnet svc a'), ['add', 'apply'], 'an alias leads where its command does');
  t.deepEqual(complete('tsnet nat m'), ['masquerade']);
  t.deepEqual(complete('tsnet -j -n compl-ns1 link s'), ['set'], 'global options and their values are skipped');
  t.deepEqual(complete('tsnet link ls --state-dir /tmp ls'), [], 'no subcommand after the command is complete');
});

test("options: the command's own and the global ones, wherever they go", (t) => {
  t.deepEqual(complete('tsnet link ls --j'), ['--json']);
  t.deepEqual(complete('tsnet service add web --e'), ['--endpoint', '--etcd']);
  t.deepEqual(complete('tsnet bridge add br0 --'), [
    '--address',
    '--backend',
    '--etcd',
    '--help',
    '--json',
    '--mtu',
    '--netns',
    '--state-dir',
    '--stp',
    '--vlan-filtering',
  ]);
  t.true(
    complete('tsnet forward mysql 3308 3309 --').includes('--cut-over'),
    "forward's default subcommand (add) is the one completed",
  );
});

test('values: fixed sets, namespaces where one is asked for', (t) => {
  t.deepEqual(complete('tsnet --backend '), ['auto', 'iptables', 'netlink', 'nft']);
  t.deepEqual(complete('tsnet service ls --backend n'), ['netlink', 'nft']);
  t.deepEqual(complete('tsnet trace 10.0.0.1:80 --proto '), ['tcp', 'udp']);
  t.true(complete('tsnet -n ').includes('compl-ns1'));
  t.true(complete('tsnet link ls --netns compl-').includes('compl-ns1'));
  t.deepEqual(complete('tsnet netns exec compl-n'), ['compl-ns1']);
  t.deepEqual(complete('tsnet attach compl-n'), ['compl-ns1']);
  t.deepEqual(complete('tsnet veth add a b --peer-netns compl-n'), ['compl-ns1']);
  t.deepEqual(complete('tsnet netns add compl-n'), [], 'a new name is not completed from the existing ones');
  t.deepEqual(complete('tsnet bridge add br0 --mtu '), [], 'a free value: nothing to offer');
});

test('zsh gets the same function through bashcompinit; an unknown shell is a one-line error', (t) => {
  const z = tsnet('completion', 'zsh');
  t.is(z.status, 0);
  t.regex(z.stdout, /^#compdef tsnet\n/);
  t.regex(z.stdout, /bashcompinit/);
  t.regex(z.stdout, /^complete -F _tsnet tsnet$/m);
  const bad = tsnet('completion', 'fish');
  t.is(bad.status, 1);
  t.is(bad.stderr, 'tsnet: completion for "fish": bash or zsh\n');
});
