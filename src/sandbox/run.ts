#!/usr/bin/env node
/** `node dist/src/sandbox/run.js CMD [ARGS...]`: run a command inside a fresh tsnet sandbox (tests, benchmarks). */
import { runInSandbox } from './index';

const [cmd, ...args] = process.argv.slice(2);
if (!cmd) {
  process.stderr.write('usage: run.js CMD [ARGS...]\n');
  process.exit(2);
}
runInSandbox(cmd, args).then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`tsnet: ${err.message}\n`);
    process.exit(1);
  },
);
