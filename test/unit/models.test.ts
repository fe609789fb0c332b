/**
 * The premise of the model fixtures, checked with onnxruntime on frames from sim/frames.ts:
 * candidate-good beats production by day and by night; candidate-regress is no worse by day and clearly
 * worse at night; every manifest's digests match its files.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { sha256 } from '../../activities/store';
import { OnnxModelRunner } from '../../workers/model-runner';
import { generateFrames, type Frames } from '../../sim/frames';
import { makeRng } from '../../policies/rng';
import { loadTrust, verifyPackDir } from '../../activities/pack';

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

void test('every fixture pack verifies: signed by the fixture signer, every file listed and matching', async () => {
  const trust = await loadTrust([join(MODELS, 'keys', 'fixture-signer.pub')]);
  const packs = readdirSync(MODELS, { withFileTypes: true }).filter(
    (e) => e.isDirectory() && existsSync(join(MODELS, e.name, 'manifest.json')),
  );
  assert.equal(packs.length, 6);
  const releases = new Map<string, number>();
  for (const p of packs) {
    const pack = await verifyPackDir(join(MODELS, p.name), p.name, trust);
    assert.equal(pack.manifest.name, 'hazard-detector');
    assert.equal(pack.config.golden.rows, 64);
    releases.set(pack.manifest.version, pack.manifest.release);
  }
  // Release counters increase with the versions.
  const ordered = [...releases].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }));
  ordered.forEach(([, r], i) => i > 0 && assert.ok(r > ordered[i - 1]![1], `release order at ${i}`));
});
