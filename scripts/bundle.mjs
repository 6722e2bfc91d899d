// The CLI as one file per command module (npm run build, after tsc): dist/bundle/FAMILY.js holds
// program.js with that module alone (the others resolve to an empty stub), dist/bundle/all.js
// holds every module (help, completion, an unknown word). main.js loads the one its word names:
// one bundle per answer of table.js's bundleFor.
// charset=ascii: main.js reads the bundle as latin1, the cheapest decode.
import * as esbuild from 'esbuild';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';

const { COMMAND_FAMILIES, bundleFor } = createRequire(import.meta.url)('../dist/src/cli/table.js');
const bundles = new Set([bundleFor(undefined), ...Object.keys(COMMAND_FAMILIES).map(bundleFor)]);

const only = (family) => ({
  name: 'only-one-command-module',
  setup(build) {
    build.onResolve({ filter: /^\.\/commands\// }, (args) =>
      args.path === `./commands/${family}` ? undefined : { path: args.path, namespace: 'stub' },
    );
    build.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({ contents: 'module.exports = {}', loader: 'js' }));
  },
});

// commander requires node:child_process when it loads (for executable subcommands, which tsnet has none of):
// ~4 ms of every command. Its require is given a stand-in that loads the module on first use.
const lazyChildProcess = {
  name: 'lazy-child-process-for-commander',
  setup(build) {
    build.onResolve({ filter: /^node:child_process$/ }, (args) =>
      args.importer.includes('/node_modules/commander/')
        ? { path: 'lazy-child-process', namespace: 'lazy' }
        : undefined,
    );
    build.onLoad({ filter: /.*/, namespace: 'lazy' }, () => ({
      contents: "let cp; module.exports = new Proxy({}, { get: (_, k) => (cp ??= require('node:child_process'))[k] });",
      loader: 'js',
    }));
  },
};

const common = {
  entryPoints: ['dist/src/cli/program.js'],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  charset: 'ascii',
  // etcd3 (gRPC, protobuf) loads its .proto files from its own directory: required from node_modules when cluster code runs.
  external: ['elkjs', 'playwright-core', 'etcd3', 'cockatiel'],
  logLevel: 'error',
};
await Promise.all(
  [...bundles].map((b) =>
    esbuild.build({
      ...common,
      outfile: `dist/bundle/${b}.js`,
      plugins: b === 'all' ? [lazyChildProcess] : [lazyChildProcess, only(b)],
    }),
  ),
);
// V8 checks a code cache against the length of the source only: one made from earlier bundles could run their code.
// New bundles, no cache: main.js makes it again on each command's first run.
rmSync('dist/bundle/cache', { recursive: true, force: true });
