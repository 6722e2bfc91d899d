/**
 * The CLI's command table: every word a module registers is in the word ->
 * module table (so a run loads the module that defines it), no subcommand
 * defines an option under a global's name, and the hoisting of global
 * options tells a global from a subcommand option's value.
 */
import test from 'ava';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/program';
import { hoistGlobals, shadowedGlobals } from '../../src/cli/globals';
import { COMMAND_FAMILIES, commandWord, familyOf } from '../../src/cli/table';

test('every command word (aliases too) is in the table, under the module that registers it, and nothing else is', async (t) => {
  const seen: Record<string, string> = {};
  for (const family of new Set(Object.values(COMMAND_FAMILIES))) {
    const { program } = await buildProgram(Object.keys(COMMAND_FAMILIES).find((w) => familyOf(w) === family));
    for (const c of program.commands) for (const w of [c.name(), ...c.aliases()]) seen[w] = family;
  }
  t.deepEqual(seen, { ...COMMAND_FAMILIES });
});

test("no subcommand defines an option under a global option's name", async (t) => {
  const { program } = await buildProgram();
  t.true(program.commands.length > 15);
  t.deepEqual(shadowedGlobals(program), []);
});

test('global options are moved before the command word; subcommand options keep their values', async (t) => {
  const { program } = await buildProgram();
  const h = (...argv: string[]) => hoistGlobals(program, argv);
  t.deepEqual(h('link', 'ls', '-j', '-n', 'c1'), ['--json', '--netns', 'c1', 'link', 'ls']);
  t.deepEqual(h('-j', 'link', 'ls'), ['--json', 'link', 'ls']);
  t.deepEqual(h('service', 'ls', '--state-dir=/s', '--backend', 'nft'), [
    '--state-dir',
    '/s',
    '--backend',
    'nft',
    'service',
    'ls',
  ]);
  t.deepEqual(h('link', 'ls', '-nc1'), ['--netns', 'c1', 'link', 'ls']);
  // A value of the subcommand's own option stays with it, whatever it looks like.
  t.deepEqual(h('forward', '10.0.0.1', '1', '2', '--name', '-j', '-j'), [
    '--json',
    'forward',
    '10.0.0.1',
    '1',
    '2',
    '--name',
    '-j',
  ]);
  t.deepEqual(h('link', 'set', 'eth0', '--name', '--json'), ['link', 'set', 'eth0', '--name', '--json']);
  // What follows `netns exec NS CMD` is the program's; `--` ends tsnet's options.
  t.deepEqual(h('netns', 'exec', 'c1', 'ip', '-j', '-n', 'x', 'link'), [
    'netns',
    'exec',
    'c1',
    'ip',
    '-j',
    '-n',
    'x',
    'link',
  ]);
  t.deepEqual(h('-j', 'netns', 'exec', 'c1', '--', 'ip', '-j'), ['--json', 'netns', 'exec', 'c1', '--', 'ip', '-j']);
  t.deepEqual(h('netns', 'exec', '-j', 'c1', 'ls'), ['--json', 'netns', 'exec', 'c1', 'ls']);
  t.throws(() => h('link', 'ls', '--state-dir'), { message: "option '--state-dir <dir>' argument missing" });
});

test('the command word is found past global options and their values', (t) => {
  t.is(commandWord(['-n', 'link', 'service', 'ls']), 'service');
  t.is(commandWord(['--state-dir', '/x', '-j', 'link']), 'link');
  t.is(commandWord(['--version']), '');
  t.is(commandWord(['-j']), undefined);
  t.is(familyOf('svc'), 'service');
  t.is(familyOf('toString'), undefined, 'not an inherited property');
});

test('help lists the global options in every command', async (t) => {
  const { program } = await buildProgram('service');
  const add = (program.commands.find((c) => c.name() === 'service') as Command).commands.find(
    (c) => c.name() === 'add',
  )!;
  const help = add.helpInformation();
  t.regex(
    help,
    /Global Options:[\s\S]*-n, --netns <ns>[\s\S]*-j, --json[\s\S]*--state-dir <dir>[\s\S]*--backend <name>/,
  );
});

test("a command's own option under a global's name stays with it after its word: cluster init --backend vxlan", async (t) => {
  const { program } = await buildProgram();
  const h = (...argv: string[]) => hoistGlobals(program, argv);
  t.deepEqual(h('cluster', 'init', '--backend', 'vxlan', '--etcd', 'http://e:1'), [
    '--etcd',
    'http://e:1',
    'cluster',
    'init',
    '--backend',
    'vxlan',
  ]);
  // Elsewhere --backend is still the global NAT backend, before or after the word.
  t.deepEqual(h('cluster', 'ls', '--backend', 'nft'), ['--backend', 'nft', 'cluster', 'ls']);
  t.deepEqual(h('--backend', 'nft', 'service', 'ls'), ['--backend', 'nft', 'service', 'ls']);
});
