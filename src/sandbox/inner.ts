/** Entry point run by `unshare` (see ./index.ts): prepare the sandbox, then run the command in it. */
import { spawn } from 'node:child_process';
import { prepareInside } from './index';

async function main(): Promise<void> {
  const [cmd, ...args] = process.argv.slice(2);
  if (!cmd) throw new Error('usage: inner.js CMD [ARGS...]');
  await prepareInside();
  const child = spawn(cmd, args, { stdio: 'inherit', env: process.env });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => child.kill(sig));
  child.on('error', (err) => {
    console.error(`tsnet sandbox: cannot run ${cmd}: ${err.message}`);
    process.exit(127);
  });
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}

main().catch((err: Error) => {
  console.error(`tsnet sandbox: ${err.message}`);
  process.exit(1);
});
