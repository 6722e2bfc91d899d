/**
 * The CLI's command table as data: the global options and which module
 * (commands/FAMILY.ts) each command word belongs to. program.ts builds
 * commander's options and loaders from it; main.ts reads it before anything
 * else loads (which module's compiled code to ready), and answers --version
 * and reports errors as program.ts does. No imports but node:fs and node:path.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

interface GlobalOptionSpec {
  /** As commander writes them: '-n, --netns <ns>'. */
  flags: string;
  description: string;
}

export const GLOBAL_OPTIONS: readonly GlobalOptionSpec[] = [
  {
    flags: '-n, --netns <ns>',
    description: 'run the command inside this namespace (name under /run/netns, pid, or path)',
  },
  { flags: '-j, --json', description: 'print listings and reports as JSON' },
  {
    flags: '--state-dir <dir>',
    description:
      "tsnet's state: NAT desired state, IPAM leases, CNI records (default $TSNET_STATE_DIR, else /var/lib/tsnet)",
  },
  { flags: '--backend <name>', description: 'NAT backend (auto: netlink, or the one the state was written with)' },
  { flags: '--etcd <urls>', description: "the cluster's etcd endpoints, comma-separated (default $TSNET_ETCD)" },
];

/** Each command word, aliases included, and its module under commands/. */
export const COMMAND_FAMILIES = {
  netns: 'netns',
  link: 'link',
  bridge: 'bridge',
  veth: 'veth',
  addr: 'addr',
  route: 'route',
  attach: 'attach',
  detach: 'attach',
  service: 'service',
  svc: 'service',
  nat: 'nat',
  sync: 'nat',
  rules: 'nat',
  forward: 'forward',
  cni: 'cni',
  agent: 'agent',
  cluster: 'cluster',
  neigh: 'neigh',
  fdb: 'neigh',
  nexthop: 'route',
  trace: 'inspect',
  doctor: 'inspect',
  topology: 'inspect',
  demo: 'demo',
  completion: 'completion',
} as const;

export type Family = (typeof COMMAND_FAMILIES)[keyof typeof COMMAND_FAMILIES];

/** The flags of a global option and whether it takes a value. */
function parseFlags(flags: string): { short?: string; long?: string; value: boolean } {
  const short = /(?:^|[ ,])(-[A-Za-z0-9])\b/.exec(flags)?.[1];
  const long = /(--[a-z][a-z0-9-]*)/.exec(flags)?.[1];
  return { ...(short ? { short } : {}), ...(long ? { long } : {}), value: /[<[]/.test(flags) };
}

const GLOBAL_FLAGS = GLOBAL_OPTIONS.map((g) => parseFlags(g.flags));

/**
 * The command word of `argv` (after node and the script): the first word
 * that is not a global option or its value. undefined when there is none,
 * '' for --version and --help, which need no command.
 */
export function commandWord(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const g = GLOBAL_FLAGS.find((f) => a === f.long || a === f.short);
    if (g) {
      if (g.value) i++;
    } else if (a === '-V' || a === '--version' || a === '-h' || a === '--help') return '';
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

/** The module a command word belongs to, if it is one. */
export const familyOf = (word: string | undefined): Family | undefined =>
  word !== undefined && Object.hasOwn(COMMAND_FAMILIES, word)
    ? COMMAND_FAMILIES[word as keyof typeof COMMAND_FAMILIES]
    : undefined;

/**
 * What a run of `word` loads: the command module it belongs to, or 'all' of
 * them: for no word, help, a word that is not a command (commander suggests
 * one) and completion (it walks every command). main.ts loads the bundle of
 * that name, scripts/bundle.mjs makes one per answer, program.ts registers
 * those modules.
 */
export function bundleFor(word: string | undefined): Family | 'all' {
  const family = familyOf(word);
  return family && family !== 'completion' ? family : 'all';
}

/** The version in the package.json of the package at `root`. */
export const packageVersion = (root: string): string =>
  (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;

/** A failed command as the CLI reports it: one line on stderr; the exit code (1). */
export function reportError(err: unknown): number {
  process.stderr.write(`tsnet: ${(err as { message?: string } | undefined)?.message ?? String(err)}\n`);
  return 1;
}
