/** `tsnet demo`: the main job end to end, in a private sandbox it makes itself. */
import * as path from 'node:path';
import type { Command } from 'commander';
import { demo } from '../../demo';
import { builtScript } from '../../native';
import { inSandbox, runInSandbox } from '../../sandbox';

export function register(program: Command): void {
  program
    .command('demo')
    .description(
      'build a bridged network in a private sandbox, send traffic through it, look at it (trace, doctor), clean up',
    )
    .option('--svg <file>', "also write the demo's topology picture here")
    .action(async (o: { svg?: string }) => {
      const svg = o.svg ? path.resolve(o.svg) : undefined;
      if (!inSandbox()) {
        process.exitCode = await runInSandbox(process.execPath, [
          builtScript('cli/main.js'),
          'demo',
          ...(svg ? ['--svg', svg] : []),
        ]);
        return;
      }
      await demo(undefined, svg ? { svg } : {});
    });
}
