// Lint of fleetgate. The workflow sandbox override forbids anything with side effects in workflows/:
// Node built-ins, native and I/O packages, and the Temporal packages that only workers and clients use.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const forbiddenInWorkflows = [
  { group: ['node:*'], message: 'Workflow code is deterministic: no Node built-ins.' },
  {
    group: ['onnxruntime-node', '@duckdb/*', '@aws-sdk/*', 'yaml', 'simple-statistics'],
    message: 'Workflow code does no I/O.',
  },
  {
    group: ['@temporalio/activity', '@temporalio/worker', '@temporalio/client', '@temporalio/testing'],
    message: 'Only @temporalio/workflow and @temporalio/common belong in workflows.',
  },
  {
    group: ['../workers/*', '../sim/*', '../cli/*'],
    message: 'Workflows import only workflows/, policies/, errors.ts and types.',
  },
];
const nodeBuiltins = [
  'assert',
  'buffer',
  'child_process',
  'crypto',
  'fs',
  'fs/promises',
  'http',
  'https',
  'net',
  'os',
  'path',
  'process',
  'stream',
  'timers',
  'url',
  'util',
  'worker_threads',
  'zlib',
];

export default tseslint.config(
  { ignores: ['node_modules/**', '.tools/**', '.fleetgate/**', 'models/**', 'dist/**', 'eslint.config.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            {
              from: 'package',
              name: ['test', 'describe', 'it', 'suite', 'before', 'after'],
              package: 'node:test',
            },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      // A promise returned from inside try/finally must be awaited there, or it rejects unhandled.
      '@typescript-eslint/return-await': ['error', 'in-try-catch'],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-require-imports': 'off',
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  {
    files: ['workflows/**/*.ts', 'policies/**/*.ts', 'errors.ts'],
    rules: {
      'no-restricted-imports': ['error', { paths: nodeBuiltins, patterns: forbiddenInWorkflows }],
      // Activities cross into workflows as types only.
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['../activities/*'],
              message: 'Import activities as types only.',
              allowTypeImports: true,
            },
          ],
        },
      ],
    },
  },
  {
    files: ['bin/**/*.js', 'scripts/**/*.js'],
    languageOptions: {
      globals: {
        require: 'readonly',
        process: 'readonly',
        module: 'readonly',
        __dirname: 'readonly',
        console: 'readonly',
      },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
