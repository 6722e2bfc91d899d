#!/usr/bin/env node
/**
 * The `tsnet` executable. A bare `tsnet --version` is answered here, before
 * anything else loads (scripts ask it in loops); every other command is
 * program.ts, which loads what the command uses.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === '--version' || args[0] === '-V')) {
  // dist/src/cli -> the package root
  process.stdout.write(`${(JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }).version}\n`);
} else {
  void import('./program');
}
