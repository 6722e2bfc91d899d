/** `tsnet completion bash|zsh`: a completion script generated from the command table. */
import type { Command } from 'commander';
import { invalid } from '../../errors';
import { bashCompletion, zshCompletion } from '../completion';

/** Registered on the program of every command module: a run of `completion` loads them all (table.ts, bundleFor). */
export function register(program: Command): void {
  program
    .command('completion <shell>')
    .description('print a completion script for bash or zsh: source <(tsnet completion bash)')
    .action((shell: string) => {
      const make = { bash: bashCompletion, zsh: zshCompletion }[shell];
      if (!make) throw invalid(`completion for ${JSON.stringify(shell)}: bash or zsh`);
      process.stdout.write(make(program));
    });
}
