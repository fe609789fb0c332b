// Lint of fleetgate. The workflow sandbox override forbids anything with side effects in workflows/:
// Node built-ins, native and I/O packages, and the Temporal packages that only workers and clients use.
// The simulator floor keeps production code from depending on sim/, one producer of events among others.
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
    group: ['../workers/*', '../cli/*'],
    message: 'Workflows import only workflows/, policies/, errors.ts and types.',
  },
];

/*
 * The simulator floor. sim/ is one producer of events among others; production code must not depend on
 * it. `simFloor(allowed, why)` is a no-restricted-imports pattern matching an import of sim/ or any module
 * under it, from any depth (`../sim`, `../../sim/fleet`), but the sim/ modules named in `allowed`; and a
 * no-restricted-syntax selector doing the same for a lazy `require('../sim/...')`.
 */
const SIM_MESSAGE =
  'Production code does not import the simulator (sim/): pseudonyms, assignment and manifests are in fleet/, ' +
  'seeded draws, the model contract and the input frames in policies/; activities take the simulated sources ' +
  'from the composition root.';
function simRegex(allowed) {
  const except = allowed.length > 0 ? `(?!(${allowed.join('|')})$)` : '';
  return `^(\\.\\./)+sim(/${except}|$)`;
}
function simFloor(allowed = [], why = '') {
  const message = allowed.length > 0 ? `${SIM_MESSAGE} ${why}` : SIM_MESSAGE;
  return {
    pattern: { regex: simRegex(allowed), message },
    require: {
      // A selector's regular expression cannot hold a slash, even escaped: \x2F stands for it.
      selector: `CallExpression[callee.name='require'] > Literal.arguments[value=/${simRegex(allowed).replaceAll('/', '\\x2F')}/]`,
      message,
    },
  };
}
const simAlways = simFloor();
// Modules that moved out of sim/ never come back from it, whatever sim/ module an exemption allows.
const movedOutOfSim = {
  group: ['**/sim', '**/sim/*'],
  importNames: [
    'pseudonym',
    'pseudonymSql',
    'PSEUDONYM_CHARS',
    'assignmentRank',
    'assignmentRanks',
    'saltedSql',
    'keyedUniforms',
    'rankOrder',
    'targetCount',
    'waveTargets',
    'shadowTargets',
    'waveShare',
    'canarySalt',
    'MAX_COHORT_VEHICLES',
    'readManifestFile',
    'loadFleetManifest',
    'loadServiceManifest',
    'manifestKind',
    'makeRng',
    'gaussian',
    'poisson',
    'hash32',
    'FEATURES',
    'CLASSES',
    'CRITICAL_CLASS',
    'EdgeCounters',
    'countVehicles',
    'INSTALL',
    'installsAlways',
  ],
  message:
    'Moved out of sim/: import it from fleet/ (pseudonym, assignment, manifest) or policies/ (rng, model-contract, ' +
    'frames), its contract from activities/contracts.ts or activities/deps.ts (install outcomes), or countVehicles ' +
    'from activities/db.ts.',
};
/**
 * The floor for files that may import exactly the sim/ modules `allowed`, for the reason `why`. With
 * `names` (the default), what moved out of sim/ is also refused from those modules by name; a file that
 * imports an allowed module as a namespace (`import type * as M`, for a lazy require) cannot have it.
 */
function simRules(allowed = [], why = '', { names = true, extraPatterns = [] } = {}) {
  const floor = allowed.length > 0 ? simFloor(allowed, why) : simAlways;
  const moved = allowed.length > 0 && names ? [movedOutOfSim] : [];
  return {
    'no-restricted-imports': ['error', { patterns: [floor.pattern, ...moved, ...extraPatterns] }],
    'no-restricted-syntax': ['error', floor.require],
  };
}
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
      'no-restricted-imports': [
        'error',
        { paths: nodeBuiltins, patterns: [...forbiddenInWorkflows, simAlways.pattern] },
      ],
      'no-restricted-syntax': ['error', simAlways.require],
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
  // Production code and the simulator: no file below imports sim/ but the exemptions that follow.
  {
    files: ['activities/**/*.ts', 'serve/**/*.ts', 'workers/**/*.ts', 'cli/**/*.ts', 'events/**/*.ts'],
    rules: simRules(),
  },
  // fleet/ is a lower layer: pseudonyms, assignment and manifests, for activities, the gateway and the CLI.
  {
    files: ['fleet/**/*.ts'],
    rules: simRules([], '', {
      extraPatterns: [
        {
          regex: '^(\\.\\./)+(activities|serve|workers|cli|workflows)(/|$)',
          message:
            'fleet/ sits below activities, the gateway, the workers and the CLI: it imports only policies/ and errors.ts.',
        },
      ],
    }),
  },
  // The composition root chooses the simulated sources the activities are handed: OTA, feed, features, callers.
  {
    files: ['workers/worker.ts'],
    rules: simRules(
      ['ota', 'producer', 'features', 'users'],
      "workers/worker.ts wires the simulated OTA channel (sim/ota), the simulated fleet's feed (sim/producer), " +
        "the drift checks' simulated features (sim/features) and a service's simulated callers (sim/users) only.",
    ),
  },
  {
    files: ['workers/main.ts'],
    rules: simRules(
      ['iot-agent'],
      'workers/main.ts runs the simulated IoT device agent (sim/iot-agent) only.',
    ),
  },
  // The simulation commands: `fleetgate simulate`, and the IoT agent of `fleet init` with AWS IoT.
  {
    files: ['cli/simulate.ts'],
    rules: simRules(['truth', 'world'], 'cli/simulate.ts runs the simulated world against its truth only.'),
  },
  {
    files: ['cli/main.ts'],
    rules: simRules(
      ['iot-agent', 'simulator-process'],
      'cli/main.ts loads the simulated IoT device agent (sim/iot-agent) for `fleet init` and the simulated ' +
        'fleet as a process of its own (sim/simulator-process) for `fleet simulate` only.',
      { names: false },
    ),
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
