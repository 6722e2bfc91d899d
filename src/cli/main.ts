#!/usr/bin/env node
/**
 * The `tsnet` executable. A bare `tsnet --version` is answered here, before
 * anything else loads (scripts ask it in loops). Every other command runs
 * program.ts: from the one-file bundle `npm run build` makes for the
 * command's module (dist/bundle/FAMILY.js, esbuild: one file read instead of
 * ~40 module resolutions, and no other command's code), compiled with V8's
 * code cache when an earlier run left one (dist/bundle/cache/FAMILY.v8: no
 * parsing or compiling of what that command ran before). Without a bundle
 * (a plain `tsc` build), program.ts itself.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Script } from 'node:vm';
import { bundleFor, commandWord, packageVersion, reportError } from './table';

type Program = typeof import('./program');

const args = process.argv.slice(2);
const BUNDLES = path.join(__dirname, '..', '..', 'bundle');

/**
 * The bundle, compiled with the code cache of `family` when there is a usable
 * one; `save` writes one (after the command ran, so it holds what the command
 * compiled) when there was none or V8 rejected it (another Node).
 */
function loadBundle(family: string): { program: Program; save(): void } | undefined {
  const bundle = path.join(BUNDLES, `${family}.js`);
  let source: string;
  try {
    source = fs.readFileSync(bundle, 'latin1'); // esbuild writes ASCII (charset=ascii)
  } catch {
    return undefined;
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- node:vm and node:module only when there is a bundle
  const vm = require('node:vm') as typeof import('node:vm');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { createRequire, wrap } = require('node:module') as {
    createRequire: (p: string) => NodeJS.Require;
    wrap: (s: string) => string;
  };
  const cacheFile = path.join(BUNDLES, 'cache', `${family}.v8`);
  let cachedData: Buffer | undefined;
  try {
    cachedData = fs.readFileSync(cacheFile);
  } catch {
    /* not made yet */
  }
  const script = new vm.Script(wrap(source), { filename: bundle, ...(cachedData ? { cachedData } : {}) });
  const module = { exports: {} as Program };
  (script.runInThisContext() as (...a: unknown[]) => void).call(
    module.exports,
    module.exports,
    createRequire(bundle),
    module,
    bundle,
    BUNDLES,
  );
  return {
    program: module.exports,
    save: () => {
      if (!cachedData || script.cachedDataRejected) saveCache(script, cacheFile);
    },
  };
}

/**
 * Writes `script`'s code cache to `file`, through a temporary file and a
 * rename. The temporary file is opened before the cache is serialised: a
 * read-only install (which runs without the cache) serialises nothing.
 */
function saveCache(script: Script, file: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  let opened = false;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const fd = fs.openSync(tmp, 'wx');
    opened = true;
    try {
      fs.writeFileSync(fd, script.createCachedData());
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch {
    // Not writable: no cache. Written in part (a full disk): no file left behind.
    try {
      if (opened) fs.rmSync(tmp, { force: true });
    } catch {
      /* the command's outcome stands */
    }
  }
}

async function main(): Promise<number> {
  const word = commandWord(args);
  const bundled = loadBundle(bundleFor(word));
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- the unbundled program, only without a bundle
  const program: Program = bundled?.program ?? (require('./program') as Program);
  const code = await program.run(args, word);
  bundled?.save();
  return code;
}

if (args.length === 1 && (args[0] === '--version' || args[0] === '-V')) {
  process.stdout.write(`${packageVersion(path.join(__dirname, '..', '..', '..'))}\n`); // dist/src/cli -> the package root
} else {
  // Exit as soon as the command is done (stdout and stderr are synchronous on Linux): a natural exit would
  // first tear the heap down, a share of a one-shot command's time (bench:startup). A long-running command (the agent) resolves when it stops.
  // A failure before the command runs (a bundle that does not load) is reported as the command's own are.
  void main().then(
    (code) => process.exit(code),
    (err: unknown) => process.exit(reportError(err)),
  );
}
