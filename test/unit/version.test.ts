/** `tsnet --version` is answered by the entry file before anything loads; the same answer as commander's, which answers it among other options. */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

test('tsnet --version and -V print the package version, alone or after global options, from any working directory', (t) => {
  for (const args of [['--version'], ['-V'], ['-j', '--version'], ['--state-dir', '/nonexistent', '-V']]) {
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: '/' });
    t.is(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stdout, `${version}\n`, args.join(' '));
  }
});
