/**
 * The simulator floor of eslint.config.mjs, through ESLint's Node API on snippets linted as if they were
 * files of the repository: production code (activities/, serve/, policies/, fleet/, workers/, cli/) may not import
 * sim/, at any depth and through a lazy require too; the composition root and the simulation commands
 * import exactly the sim/ modules they wire, and never what moved out of sim/ (pseudonyms, assignment,
 * manifests, seeded draws, the vehicle count); activities/ imports no sim/ module at all.
 */
import assert from 'node:assert/strict';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { ESLint } from 'eslint';

const ROOT = resolve(__dirname, '..', '..');
// The snippets' files do not exist: the type-aware parser gets them from its default project.
const eslint = new ESLint({
  cwd: ROOT,
  overrideConfig: {
    languageOptions: { parserOptions: { projectService: { allowDefaultProject: ['*/x.ts', '*/*/x.ts'] } } },
  },
});

const FLOOR_RULES = new Set(['no-restricted-imports', 'no-restricted-syntax']);

/** The floor's errors on `code` linted as the file `file`: line and message. */
async function floorErrors(file: string, code: string): Promise<{ line: number; message: string }[]> {
  const [result] = await eslint.lintText(code, { filePath: join(ROOT, file) });
  const fatal = result!.messages.filter((m) => m.fatal);
  assert.deepEqual(fatal, [], `${file} does not parse`);
  return result!.messages
    .filter((m) => FLOOR_RULES.has(m.ruleId ?? ''))
    .map((m) => ({ line: m.line, message: m.message }));
}

describe('the simulator floor', () => {
  it('refuses sim/ in the gateway, as an import, nested, and as a lazy require', async () => {
    const direct = await floorErrors(
      'serve/x.ts',
      "import { pseudonym } from '../sim/fleet';\nexport const p = pseudonym;\n",
    );
    assert.equal(direct.length, 1);
    assert.equal(direct[0]!.line, 1);
    assert.match(direct[0]!.message, /'\.\.\/sim\/fleet' import is restricted/);
    assert.match(direct[0]!.message, /does not import the simulator \(sim\/\).*fleet\//);

    const nested = await floorErrors(
      'serve/sub/x.ts',
      "import { simVehicles } from '../../sim/fleet';\nexport const s = simVehicles;\n",
    );
    assert.deepEqual(
      nested.map((e) => e.line),
      [1],
    );

    const lazy = await floorErrors(
      'serve/x.ts',
      "export const fleet = require('../sim/fleet') as unknown;\nexport const sim = require('../sim') as unknown;\n",
    );
    assert.deepEqual(
      lazy.map((e) => e.line),
      [1, 2],
    );
  });

  it('lets the gateway import the keyed pseudonym from fleet/', async () => {
    const errors = await floorErrors(
      'serve/x.ts',
      "import { pseudonym } from '../fleet/pseudonym';\nexport const p = pseudonym;\n",
    );
    assert.deepEqual(errors, []);
  });

  it('refuses sim/ in policies/, fleet/, workers/ and the CLI', async () => {
    for (const file of ['policies/x.ts', 'fleet/x.ts', 'workers/x.ts', 'cli/x.ts', 'cli/demo.ts']) {
      const errors = await floorErrors(
        file,
        "import { makeRng } from '../sim/frames';\nexport const r = makeRng;\n",
      );
      assert.equal(errors.length, 1, `${file}: ${JSON.stringify(errors)}`);
    }
  });

  it('keeps fleet/ below activities and the gateway', async () => {
    const errors = await floorErrors(
      'fleet/x.ts',
      "import { exec } from '../activities/db';\nimport { chooseArm } from '../serve/router';\nexport const a = [exec, chooseArm];\n",
    );
    assert.deepEqual(
      errors.map((e) => e.line),
      [1, 2],
    );
  });

  it('lets the composition root import exactly the sim/ modules it wires', async () => {
    const worker = await floorErrors(
      'workers/worker.ts',
      "import { SimulatedOta } from '../sim/ota';\nimport { openSimWorld } from '../sim/world';\n" +
        "import { simulatedFeatures } from '../sim/features';\nimport { simulatedCallers } from '../sim/users';\n" +
        "import { countVehicles } from '../sim/ota';\n" +
        'export const a = [SimulatedOta, openSimWorld, simulatedFeatures, simulatedCallers, countVehicles];\n',
    );
    assert.deepEqual(
      worker.map((e) => e.line),
      [2, 5],
    );
    assert.match(
      worker[1]!.message,
      /'countVehicles' import from '\.\.\/sim\/ota' is restricted.*Moved out of sim\//,
    );
    const main = await floorErrors(
      'cli/main.ts',
      "import type * as A from '../sim/iot-agent';\nexport const a = require('../sim/iot-agent') as typeof A;\nexport const f = require('../sim/fleet') as unknown;\n",
    );
    assert.deepEqual(
      main.map((e) => e.line),
      [3],
    );
  });

  it('refuses every sim/ module in activities/, as an import and as a lazy require', async () => {
    const refused = await floorErrors(
      'activities/x.ts',
      "import { generateFrames } from '../sim/frames';\nimport { edgeFilter } from '../sim/edge';\n" +
        "import { SimulatedOta } from '../sim/ota';\nimport { send } from '../sim/users';\n" +
        "import { simulatedFeatures } from '../sim/features';\n" +
        'export const a = [generateFrames, edgeFilter, SimulatedOta, send, simulatedFeatures];\n' +
        "export const lazy = require('../sim/ota') as unknown;\n",
    );
    assert.deepEqual(
      refused.map((e) => e.line),
      [1, 2, 3, 4, 5, 7],
    );
    assert.match(refused[0]!.message, /does not import the simulator \(sim\/\)/);
    assert.match(refused[0]!.message, /activities take the simulated sources from the composition root/);
  });

  it('lets activities import what moved out of sim/: frames, install outcomes, the vehicle count', async () => {
    const errors = await floorErrors(
      'activities/x.ts',
      "import { generateFrames } from '../policies/frames';\nimport { INSTALL } from './deps';\n" +
        "import { countVehicles } from './db';\nexport const a = [generateFrames, INSTALL, countVehicles];\n",
    );
    assert.deepEqual(errors, []);
  });
});
