/** `tsnet completion bash|zsh`: a completion script generated from the command table. */
import type { Command } from 'commander';
import { invalid } from '../../errors';
import { bashCompletion, zshCompletion } from '../completion';
import type { Cli } from '../context';

export function register(program: Command, cli: Cli): void {
  program
    .command('completion <shell>')
    .description('print a completion script for bash or zsh: source <(tsnet completion bash)')
    .action(async (shell: string) => {
      const make = { bash: bashCompletion, zsh: zshCompletion }[shell];
      if (!make) throw invalid(`completion for ${JSON.stringify(shell)}: bash or zsh`);
      process.stdout.write(make(await cli.allCommands()));
    });
}
