/**
 * Shell completion, generated from the registered command tree (the same
 * table help and the option hoisting read): `tsnet completion bash|zsh`.
 * Completes command words (aliases too), each command's options and the
 * global options wherever they may go, option values with a fixed set
 * (`--backend`, `--proto`, `--hairpin`), namespace names (under /run/netns)
 * where a namespace is asked for, and file names for file options. zsh runs
 * the same function through bashcompinit.
 */
import type { Command, Option } from 'commander';
import { commandTree, defaultSubName, takesValue } from './globals';

/** A namespace, a file, or a directory: what an option's or an argument's value is completed from. */
type Source = 'netns' | 'file' | 'dir';

const NAMESPACE_VALUES = /^(ns|netns|peer-netns|from-netns)$/;
const FILE_VALUES = /^(file|svg|socket)$/;
const DIR_VALUES = /^(dir|bin-dir|conf-dir|state-dir)$/;

interface Node {
  path: string;
  subs: Map<string, string>; // word (name or alias) -> name
  defaultSub?: string;
  options: Option[];
  /** The first argument's value source, when it names a namespace (`netns del NAME`, `attach NS`). */
  arg?: Source;
}

/** Whether a command's first argument is an existing namespace: `attach NS`, `netns del|exec NAME` (not `netns add NAME`, a new one). */
const namesNamespace = (path: string, arg: string | undefined) =>
  arg === 'ns' || (path.startsWith('netns ') && path !== 'netns add' && arg === 'name');

function valueSource(o: Option): Source | undefined {
  const name = (o.long ?? '').replace(/^--/, '');
  if (NAMESPACE_VALUES.test(name)) return 'netns';
  if (FILE_VALUES.test(name)) return 'file';
  if (DIR_VALUES.test(name)) return 'dir';
  return undefined;
}

/** Every command of the tree, as the completer asks about it. */
const commandNodes = (program: Command): Node[] =>
  [...commandTree(program)].map(({ command: c, path }) => {
    const subs = new Map<string, string>();
    for (const s of c.commands) for (const w of [s.name(), ...s.aliases()]) subs.set(w, s.name());
    const dflt = defaultSubName(c);
    return {
      path,
      subs,
      ...(dflt ? { defaultSub: dflt } : {}),
      options: [...c.options],
      ...(namesNamespace(path, c.registeredArguments[0]?.name()) ? { arg: 'netns' as const } : {}),
    };
  });

const flagsOf = (os: readonly Option[]) => os.flatMap((o) => [o.long, o.short].filter((x): x is string => !!x));
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The case arms the script's functions are made of, one table per question the completer asks. */
interface Tables {
  /** `PATH|WORD) echo NAME`: the subcommand a word names under a path. */
  subs: string;
  defaults: string;
  /** Global flags that take a value (`-n|--netns|...`), and each command's. */
  globalValued: string;
  valued: string;
  /** `PATH|FLAG) COMPREPLY=...`: what an option's value is completed from. */
  values: string;
  options: string;
  words: string;
  top: string;
  args: string;
  globalFlags: string;
}

function tables(program: Command): Tables {
  const nodes = commandNodes(program);
  const globals = program.options.filter((o) => o.long !== '--version');
  const arms = (body: (n: Node) => string | undefined) =>
    nodes
      .map((n) => [n.path, body(n)] as const)
      .filter(([, b]) => b !== undefined)
      .map(([p, b]) => `    ${q(p)}) ${b} ;;`)
      .join('\n');
  const valueArm = (o: Option) => {
    const src = valueSource(o);
    if (o.argChoices) return `COMPREPLY=($(compgen -W ${q(o.argChoices.join(' '))} -- "$cur"))`;
    return src ? `_tsnet_from ${src}` : 'COMPREPLY=()';
  };
  return {
    subs: nodes
      .flatMap((n) => [...n.subs].map(([w, name]) => `    ${q(`${n.path}|${w}`)}) echo ${q(name)} ;;`))
      .join('\n'),
    defaults: arms((n) => (n.defaultSub ? `echo ${q(n.defaultSub)}` : undefined)),
    globalValued:
      flagsOf(globals.filter(takesValue))
        .map((f) => q(f))
        .join('|') || "''",
    valued: nodes
      .flatMap((n) => flagsOf(n.options.filter(takesValue)).map((f) => `    ${q(`${n.path}|${f}`)}) return 0 ;;`))
      .join('\n'),
    values: nodes
      .flatMap((n) =>
        [...n.options, ...globals]
          .filter(takesValue)
          .flatMap((o) => flagsOf([o]).map((f) => `    ${q(`${n.path}|${f}`)}) ${valueArm(o)}; return ;;`)),
      )
      .join('\n'),
    options: arms((n) => `opts=${q(flagsOf(n.options).join(' '))}`),
    words: arms((n) =>
      n.subs.size && n.path !== '' ? `words=${q([...new Set(n.subs.values())].join(' '))}` : undefined,
    ),
    top: q([...new Set(nodes[0]!.subs.values())].join(' ')),
    args: arms((n) => (n.arg ? `((operands == 0)) && _tsnet_from ${n.arg}; return` : undefined)),
    globalFlags: flagsOf(globals).join(' '),
  };
}

/** The helpers: value sources, and the command table's answers (subcommand of a word, default subcommand, flags with values). */
const helpers = (t: Tables) => `_tsnet_from() {
  case $1 in
    netns) COMPREPLY=($(compgen -W "$(ls -1 /run/netns 2>/dev/null)" -- "$cur")) ;;
    file) COMPREPLY=($(compgen -f -- "$cur")) ;;
    dir) COMPREPLY=($(compgen -d -- "$cur")) ;;
  esac
}
_tsnet_sub() { # PATH WORD: the subcommand WORD names under PATH (an alias gives its name)
  case "$1|$2" in
${t.subs}
    *) return 1 ;;
  esac
}
_tsnet_default() { # PATH: its default subcommand, if any
  case "$1" in
${t.defaults}
    *) return 1 ;;
  esac
}
_tsnet_takes_value() { # PATH FLAG
  case "$2" in ${t.globalValued}) return 0 ;; esac
  case "$1|$2" in
${t.valued}
  esac
  return 1
}
`;

/** The completer: walks the words typed so far (global options and their values skipped), then offers what fits. */
const completer = (t: Tables) => `_tsnet() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev= path= w i sub operands=0
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    if [[ $w == -* ]]; then
      prev=$w
      [[ $w != *=* ]] && _tsnet_takes_value "$path" "$w" && ((i + 1 < COMP_CWORD)) && { i=$((i + 1)); prev=; }
      continue
    fi
    prev=
    if ((operands == 0)) && sub=$(_tsnet_sub "$path" "$w"); then
      path=\${path:+$path }$sub
    else
      ((operands == 0)) && sub=$(_tsnet_default "$path") && path="$path $sub"
      operands=$((operands + 1))
    fi
  done
  if [[ -n $prev ]] && _tsnet_takes_value "$path" "$prev"; then
    case "$path|$prev" in
${t.values}
    esac
    COMPREPLY=()
    return
  fi
  if [[ $cur == -* ]]; then
    local opts
    case "$path" in
${t.options}
    esac
    COMPREPLY=($(compgen -W "$opts ${t.globalFlags} --help" -- "$cur"))
    return
  fi
  local words=
  case "$path" in
${t.words}
    '') words=${t.top} ;;
  esac
  if [[ -n $words ]] && ((operands == 0)); then
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    return
  fi
  case "$path" in
${t.args}
  esac
  COMPREPLY=()
}
`;

/** The bash completion script for this command tree. */
export function bashCompletion(program: Command): string {
  const t = tables(program);
  return `# bash completion for tsnet, generated by \`tsnet completion bash\` from tsnet's command table.
# Load it: source <(tsnet completion bash), or save it as /etc/bash_completion.d/tsnet.
${helpers(t)}${completer(t)}complete -F _tsnet tsnet
`;
}

/** zsh: the bash function through zsh's bashcompinit (the same table, one script to keep right). */
export function zshCompletion(program: Command): string {
  return `#compdef tsnet
# zsh completion for tsnet, generated by \`tsnet completion zsh\`. Load it: source <(tsnet completion zsh)
autoload -U +X bashcompinit && bashcompinit
${bashCompletion(program)}`;
}
