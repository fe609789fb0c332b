/**
 * The premise of the model fixtures, checked with onnxruntime on frames from sim/frames.ts:
 * candidate-good beats production by day and by night; candidate-regress is no worse by day and clearly
 * worse at night; every manifest's digests match its files.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { sha256 } from '../../activities/store';
import { OnnxModelRunner } from '../../workers/model-runner';
import { generateFrames, makeRng, type Frames } from '../../sim/frames';
import { ModelManifest } from '../../policies/schema';

const MODELS = resolve(__dirname, '../../models');
const PACKS = ['production', 'candidate-good', 'candidate-regress'] as const;
const FRAMES = 20_000;
const bytesByDigest = new Map<string, Buffer>();
const digestOf: Record<string, string> = {};
let runner: OnnxModelRunner;

before(() => {
  for (const pack of PACKS) {
    const bytes = readFileSync(join(MODELS, pack, 'model.onnx'));
    digestOf[pack] = sha256(bytes);
    bytesByDigest.set(sha256(bytes), bytes);
  }
  runner = new OnnxModelRunner(async (digest) => bytesByDigest.get(digest));
});

after(async () => {
  await runner.close();
});

async function errorRate(pack: string, frames: Frames): Promise<number> {
  const { probs } = await runner.run(digestOf[pack]!, frames.features, frames.count);
  let wrong = 0;
  for (let i = 0; i < frames.count; i++) {
    const predicted = probs[2 * i + 1]! > probs[2 * i]! ? 1 : 0;
    if (predicted !== frames.labels[i]) wrong++;
  }
  return wrong / frames.count;
}

void test('candidate-good beats production by day and night; candidate-regress regresses only at night', async (t) => {
  const day = generateFrames(makeRng('models-test-day'), FRAMES, 0);
  const night = generateFrames(makeRng('models-test-night'), FRAMES, 1);
  const rates: Record<string, { day: number; night: number }> = {};
  for (const pack of PACKS)
    rates[pack] = { day: await errorRate(pack, day), night: await errorRate(pack, night) };
  for (const pack of PACKS) {
    t.diagnostic(
      `${pack.padEnd(18)} day ${(100 * rates[pack]!.day).toFixed(2)}%  night ${(100 * rates[pack]!.night).toFixed(2)}%`,
    );
  }
  const prod = rates.production!;
  const good = rates['candidate-good']!;
  const regress = rates['candidate-regress']!;
  assert.ok(good.day < prod.day, `good by day ${good.day} vs production ${prod.day}`);
  assert.ok(good.night < prod.night, `good at night ${good.night} vs production ${prod.night}`);
  assert.ok(regress.day <= prod.day, `regress by day ${regress.day} vs production ${prod.day}`);
  assert.ok(
    regress.night >= prod.night + 0.08,
    `regress at night ${regress.night} vs production ${prod.night}`,
  );
});

void test('every fixture manifest is valid and its digests match the files', () => {
  const packs = readdirSync(MODELS, { withFileTypes: true }).filter((e) => e.isDirectory());
  assert.ok(packs.length >= 4);
  for (const p of packs) {
    const manifest = ModelManifest.parse(
      JSON.parse(readFileSync(join(MODELS, p.name, 'manifest.json'), 'utf8')),
    );
    assert.equal(manifest.name, 'hazard-detector');
    assert.deepEqual(
      readdirSync(join(MODELS, p.name)).sort(),
      ['manifest.json', ...Object.keys(manifest.files)].sort(),
      `${p.name}: files`,
    );
    for (const [file, digest] of Object.entries(manifest.files)) {
      assert.equal(sha256(readFileSync(join(MODELS, p.name, file))), digest, `${p.name}/${file}`);
    }
  }
});
