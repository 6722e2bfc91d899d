/**
 * Nothing happens at import: a pure module loads without root, without the
 * native addon and without opening a file. Checked in a fresh process that
 * requires every library module of dist/src with the addon loader and the
 * file-opening calls poisoned.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const SRC = path.join(__dirname, '..', '..', 'src');
/** Executables: running them is their job (they are not modules a library user imports). */
const ENTRY_POINTS = [
  'cli/main.js',
  'cli/program.js',
  'cni/main.js',
  'sandbox/run.js',
  'sandbox/inner.js',
  'demo/peer.js',
  'forward/probe.js',
];

function modules(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return modules(p);
    return e.name.endsWith('.js') && !ENTRY_POINTS.includes(path.relative(SRC, p)) ? [p] : [];
  });
}

const PROBE = `
const fs = require('fs');
const Module = require('module');
const seen = [];
const record = (what) => (...args) => { seen.push(what + ' ' + String(args[0])); throw new Error('at import: ' + what + ' ' + String(args[0])); };
for (const f of ['openSync', 'readFileSync', 'writeFileSync', 'readdirSync', 'statSync', 'fstatSync', 'mkdirSync', 'open', 'readFile']) {
  const orig = fs[f];
  fs[f] = (...args) => {
    // Module loading itself reads the module files: allow JavaScript and package.json of node_modules only.
    const p = String(args[0]);
    if (/\\.(c?js|json)$/.test(p) && (p.includes('/node_modules/') || p.includes('/dist/'))) return orig.apply(fs, args);
    return record('fs.' + f)(...args);
  };
}
process.dlopen = record('dlopen');
const files = JSON.parse(process.argv[1]);
const failures = [];
for (const f of files) {
  try { require(f); } catch (err) { failures.push(f + ': ' + err.message); }
}
process.stdout.write(JSON.stringify({ loaded: files.length, failures, seen }));
`;

test('every library module loads without the native addon, without root and without opening a file', (t) => {
  const files = modules(SRC);
  t.true(files.length > 40, `found the modules (${files.length})`);
  const r = spawnSync(process.execPath, ['-e', PROBE, JSON.stringify(files)], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { loaded: number; failures: string[]; seen: string[] };
  t.deepEqual(out.failures, []);
  t.deepEqual(out.seen, []);
  t.is(out.loaded, files.length);
});
