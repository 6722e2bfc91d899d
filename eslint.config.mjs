// Lint: typescript-eslint's recommended rules, no floating promises, and the
// architecture the folders promise (see README, "Layout"), as import rules.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/build/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  prettier,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Tests and harnesses read JSON the kernel tools print: `any` is the honest type there (see the override below).
      '@typescript-eslint/no-explicit-any': 'error',
      'no-empty': ['error', { allowEmptyCatch: true }],
    },
  },
  {
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off', '@typescript-eslint/no-non-null-assertion': 'off' },
  },
  {
    // The library never reaches into the CLI (the CLI is a layer over it, not under it).
    files: ['src/**/*.ts'],
    ignores: ['src/cli/**'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['**/cli', '**/cli/*'], message: 'src/cli is the layer over the library: the library must not import it.' }] }],
    },
  },
  {
    // A CNI plugin does not know who serves it: nothing in src/cni imports the agent.
    files: ['src/cni/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['**/cli', '**/cli/*'], message: 'src/cli is the layer over the library: the library must not import it.' },
        { group: ['**/agent', '**/agent/*'], message: 'the CNI plugins must not depend on the agent that may serve them (shared constants live in src/cni/defaults).' },
      ] }],
    },
  },
  {
    // The library reads like a map: one module per object family, functions that each do one named step.
    // (A longer one says it does several; a longer file, that it holds several families.)
    files: ['src/**/*.ts'],
    rules: { 'max-lines-per-function': ['error', { max: 80 }], 'max-lines': ['error', { max: 450 }] },
  },
  {
    // Only src/netns/inside.ts acts inside a namespace (the addon's helper thread, tsnet-nsexec).
    files: ['src/**/*.ts', 'bench/**/*.ts', 'examples/**/*.ts'],
    ignores: ['src/netns/inside.ts', 'src/native.ts'],
    rules: {
      'no-restricted-syntax': ['error',
        { selector: 'MemberExpression[property.name=/^(socketIn|openIn|createNetns)$/]', message: 'only src/netns/inside.ts acts inside namespaces: use a NetNs handle.' },
        { selector: 'Identifier[name="NSEXEC_PATH"]', message: 'only src/netns/inside.ts starts programs inside namespaces: use NetNs.spawn.' },
      ],
    },
  },
);
