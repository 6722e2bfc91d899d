/**
 * The tsnet CLI (run by main.ts): the global options and a word -> module
 * table, as npm's CLI has. A run loads the one module its command word
 * names (commands/*.ts, each a family with static imports); help, an
 * unknown word and completion load them all. Errors are one line on stderr
 * and a non-zero exit.
 */
import { Command } from 'commander';
import { PACKAGE_ROOT } from '../native';
import type { Cli, CommandModule } from './context';
import { globalOptions, hoistGlobals, type Globals } from './globals';
import { bundleFor, familyOf, packageVersion, reportError, type Family } from './table';

/** Each command module (table.ts says which words are whose): a run loads only the one its word names. */
const MODULES: Record<Family, () => Promise<CommandModule>> = {
  netns: () => import('./commands/netns'),
  link: () => import('./commands/link'),
  bridge: () => import('./commands/bridge'),
  veth: () => import('./commands/veth'),
  addr: () => import('./commands/addr'),
  route: () => import('./commands/route'),
  attach: () => import('./commands/attach'),
  service: () => import('./commands/service'),
  nat: () => import('./commands/nat'),
  forward: () => import('./commands/forward'),
  cni: () => import('./commands/cni'),
  agent: () => import('./commands/agent'),
  inspect: () => import('./commands/inspect'),
  demo: () => import('./commands/demo'),
  completion: () => import('./commands/completion'),
  cluster: () => import('./commands/cluster'),
  neigh: () => import('./commands/neigh'),
};

/**
 * The program with the module `word` belongs to; every module (in the
 * table's order, which is the order help lists them) for no word, help, or
 * a word that is not a command (so commander can suggest one).
 */
export async function buildProgram(word?: string): Promise<{ program: Command; cli: Cli; close(): void }> {
  const program = new Command('tsnet')
    .description(
      'Network plumbing for Linux containers: namespaces, veth pairs, bridges, addresses and routes over rtnetlink; kube-proxy-style NAT',
    )
    .version(packageVersion(PACKAGE_ROOT))
    .enablePositionalOptions() // what is after the command word is the command's: hoistGlobals puts the globals first
    .showHelpAfterError()
    .configureHelp({ showGlobalOptions: true })
    .exitOverride();
  for (const o of globalOptions()) program.addOption(o);
  const exits: (() => void)[] = [];
  const cli: Cli = {
    program,
    globals: () => program.opts<Globals>(),
    json: () => program.opts<Globals>().json === true,
    stateDir: () => program.opts<Globals>().stateDir,
    etcd: () => program.opts<Globals>().etcd ?? (process.env.TSNET_ETCD || undefined),
    onExit: (fn) => exits.push(fn),
  };
  const family = familyOf(word);
  for (const load of family ? [MODULES[family]] : Object.values(MODULES)) (await load()).register(program, cli);
  return {
    program,
    cli,
    close: () => {
      for (const fn of exits.splice(0)) fn();
    },
  };
}

/**
 * Runs one command line (argv after node and the script; `word`, its command
 * word: commandWord(argv), as main.ts found it); resolves with the exit code.
 */
export async function run(argv: readonly string[], word: string | undefined): Promise<number> {
  let close = () => {};
  try {
    // Every module when the run needs them all (completion walks every command), as its bundle has them.
    const built = await buildProgram(bundleFor(word) === 'all' ? undefined : word);
    close = built.close;
    process.exitCode = 0;
    await built.program.parseAsync(hoistGlobals(built.program, argv), { from: 'user' });
    return Number(process.exitCode ?? 0);
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    // Commander has already printed usage, help or the version.
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return e.exitCode ?? 2;
    return reportError(err);
  } finally {
    close();
  }
}
