/**
 * tsnet's global options, in one table: what they mean and where they may
 * go. They mean the same before the command word (as in ip(8): `tsnet -j -n
 * c1 link ls`) and after it (as in kubectl, podman, gh: `tsnet link ls -n c1
 * --json`). Commander reads options positionally (a subcommand's options are
 * its own), so `hoistGlobals` moves every global it finds to the front,
 * walking the registered command tree to tell a global from the value of a
 * subcommand's option, and stopping where a command passes the rest through
 * (`netns exec NAME CMD ARGS...`: the program's own -j and -n are its own).
 * No subcommand defines an option under a global's name (a unit test walks
 * the tree).
 */
import { Option, type Command } from 'commander';
import { invalid } from '../errors';
import { BACKEND_CHOICES, type BackendChoice } from '../nat/backends';
import { GLOBAL_OPTIONS } from './table';

export interface Globals {
  netns?: string;
  json?: boolean;
  stateDir?: string;
  backend?: BackendChoice;
  etcd?: string;
}

/** The global options (src/cli/table.ts), as commander options: help, choices and parsing come from these. */
export function globalOptions(): Option[] {
  return GLOBAL_OPTIONS.map((g) => {
    const o = new Option(g.flags, g.description);
    return o.long === '--backend' ? o.choices(BACKEND_CHOICES) : o;
  });
}

/** Whether an option takes a value (`<value>` or `[value]`). */
export const takesValue = (o: Option): boolean => o.required || o.optional;

/** The name of a command's default subcommand (`forward` -> `add`), which commander keeps private. */
export const defaultSubName = (c: Command): string | undefined =>
  (c as unknown as { _defaultCommandName: string | null })._defaultCommandName ?? undefined;

/** Every command of the tree under `root`, each before its subcommands, with its path of names ('' for `root`). */
export function* commandTree(root: Command, path = ''): Generator<{ command: Command; path: string }> {
  yield { command: root, path };
  for (const s of root.commands) yield* commandTree(s, `${path} ${s.name()}`.trim());
}

/**
 * The global option `arg` names, with its value when written in the same
 * word (`--state-dir=DIR`, `-nc1`).
 */
function matchGlobal(globals: readonly Option[], arg: string): { option: Option; inline?: string } | undefined {
  for (const o of globals) {
    if (arg === o.long || arg === o.short) return { option: o };
    if (!takesValue(o)) continue;
    if (o.long && arg.startsWith(`${o.long}=`)) return { option: o, inline: arg.slice(o.long.length + 1) };
    if (o.short && arg.length > 2 && arg.startsWith(o.short) && !arg.startsWith('--'))
      return { option: o, inline: arg.slice(2) };
  }
  return undefined;
}

// Commander keeps this setting and the default subcommand private; the walk must see what its parser will do.
const passesThrough = (c: Command) => (c as unknown as { _passThroughOptions: boolean })._passThroughOptions;
const defaultSub = (c: Command) => {
  const name = defaultSubName(c);
  return name ? c.commands.find((s) => s.name() === name) : undefined;
};
const findSub = (c: Command, word: string) => c.commands.find((s) => s.name() === word || s.aliases().includes(word));

/**
 * `argv` (after node and the script) with every global option moved before
 * the command word, in the order given; everything else in place. A global
 * given twice: the later one wins, as commander does before the command.
 */
export function hoistGlobals(program: Command, argv: readonly string[]): string[] {
  const globals = program.options.filter((o) => !o.long || !['--version', '--help'].includes(o.long));
  const front: string[] = [];
  const rest: string[] = [];
  let cmd = program;
  let operands = 0;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      rest.push(...argv.slice(i));
      break;
    }
    const g = matchGlobal(globals, a);
    // A command that defines an option under a global's long name (SHADOWING) keeps it after its word.
    if (g && !(cmd !== program && g.option.long && cmd.options.some((o) => o.long === g.option.long))) {
      front.push(g.option.long ?? g.option.short!);
      if (takesValue(g.option)) {
        const value = g.inline ?? argv[++i];
        if (value === undefined) throw invalid(`option '${g.option.flags}' argument missing`);
        front.push(value);
      }
      continue;
    }
    rest.push(a);
    if (a.startsWith('-') && a !== '-') {
      // A subcommand's option: its value (the next word) is not a global, whatever it looks like.
      const own = cmd.options.find((o) => o.long === a || o.short === a);
      if (own && takesValue(own) && i + 1 < argv.length && (own.required || !argv[i + 1]!.startsWith('-')))
        rest.push(argv[++i]!);
      continue;
    }
    const sub = operands === 0 ? findSub(cmd, a) : undefined;
    if (sub) {
      cmd = sub;
      continue;
    }
    if (operands === 0) cmd = defaultSub(cmd) ?? cmd;
    operands++;
    if (passesThrough(cmd)) {
      rest.push(...argv.slice(i + 1));
      break;
    }
  }
  return [...front, ...rest];
}

/**
 * Where a subcommand's own option takes a global's name on purpose: after
 * that command's word it is the command's. `cluster init --backend
 * host-gw|vxlan` is flannel's word for the tunnel type (the NAT --backend
 * means nothing to it).
 */
export const SHADOWING: readonly string[] = ['cluster init --backend'];

/** Every option a subcommand defines under a global's name ("link set --json") beyond SHADOWING: none, or the globals mean two things. */
export function shadowedGlobals(program: Command): string[] {
  const names = new Set(program.options.flatMap((o) => [o.long, o.short].filter((x): x is string => !!x)));
  return [...commandTree(program)]
    .slice(1) // the program's own: the globals themselves
    .flatMap(({ command, path }) =>
      command.options
        .flatMap((o) => [o.long, o.short])
        .filter((f) => f && names.has(f))
        .map((f) => `${path} ${f}`)
        .filter((x) => !SHADOWING.includes(x)),
    );
}
