/**
 * The simulated vehicle runtime (sim/vehicle.ts) on real onnxruntime sessions of the fixture models:
 * every frame's production result is delivered and is what production gives alone; the shadow queue is
 * bounded and drops (and counts) instead of growing; the candidate's outputs for the frames it got are
 * what it gives alone; production never waits for the candidate of a frame, even one that never ends or
 * fails. No timing is asserted (the bench measures it).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { sha256 } from '../../activities/store';
import { FEATURES } from '../../policies/model-contract';
import { generateFrames } from '../../sim/frames';
import { makeRng } from '../../policies/rng';
import { ThreadModel, VehicleRuntime, driveAtRate, runnerModel, type FrameModel } from '../../sim/vehicle';
import { OnnxModelRunner } from '../../workers/model-runner';

const MODELS = resolve(__dirname, '../../models');
const N = 120;
const frames = generateFrames(makeRng('vehicle-runtime'), N, 0.3);
const bytes: Record<string, Buffer> = {};
const digest: Record<string, string> = {};
/** The models run alone, one frame at a time, in a runner of their own: [frame] -> probs [1, 2]. */
const alone: Record<string, Float32Array[]> = {};
/** The runner the vehicles use (production and, for most tests, the candidate). */
let runner: OnnxModelRunner;

const frame = (k: number) => frames.features.slice(k * FEATURES, (k + 1) * FEATURES);

before(async () => {
  const byDigest = new Map<string, Buffer>();
  for (const pack of ['production', 'candidate-good']) {
    bytes[pack] = readFileSync(join(MODELS, pack, 'model.onnx'));
    digest[pack] = sha256(bytes[pack]);
    byDigest.set(digest[pack], bytes[pack]);
  }
  const load = async (d: string) => byDigest.get(d);
  const reference = new OnnxModelRunner(load);
  try {
    for (const pack of ['production', 'candidate-good']) {
      alone[pack] = [];
      for (let k = 0; k < N; k++) alone[pack].push((await reference.run(digest[pack]!, frame(k), 1)).probs);
    }
  } finally {
    await reference.close();
  }
  runner = new OnnxModelRunner(load);
});

after(async () => {
  await runner.close();
});

const production = () => runnerModel(runner, digest.production!);
const candidate = () => runnerModel(runner, digest['candidate-good']!);

/** A model whose runs all wait until `open()` is called. */
function gated(model: FrameModel): FrameModel & { open(): void; calls: number } {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const g = {
    calls: 0,
    open,
    run: async (features: Float32Array) => {
      g.calls++;
      await gate;
      return model.run(features);
    },
  };
  return g;
}

/** Runs frames 0..n-1 one after another and records, in order, each result and candidate output. */
async function runFrames(
  vehicle: { candidate?: FrameModel; shadowQueue?: number; shadowBatch?: number },
  n = N,
) {
  const log: string[] = [];
  const results = new Map<number, Float32Array>();
  const shadow = new Map<number, Float32Array>();
  const runtime = new VehicleRuntime({
    production: production(),
    ...vehicle,
    onResult: (r) => {
      assert.equal(results.has(r.frame), false, `frame ${r.frame} delivered twice`);
      results.set(r.frame, r.probs);
      log.push(`result ${r.frame}`);
    },
    onShadow: (k, probs) => {
      assert.equal(shadow.has(k), false, `candidate output of frame ${k} twice`);
      shadow.set(k, probs);
      log.push(`shadow ${k}`);
    },
  });
  for (let k = 0; k < n; k++) {
    const r = await runtime.frame(k, frame(k));
    assert.deepEqual(r.probs, results.get(k), `frame ${k} resolved with what was delivered`);
  }
  return { runtime, log, results, shadow };
}

function assertProductionAlone(results: Map<number, Float32Array>, n = N): void {
  assert.equal(results.size, n);
  for (let k = 0; k < n; k++)
    assert.deepEqual(results.get(k), alone.production![k], `production, frame ${k}`);
}

function assertCandidateAlone(shadow: Map<number, Float32Array>): void {
  for (const [k, probs] of shadow)
    assert.deepEqual(probs, alone['candidate-good']![k], `candidate, frame ${k}`);
}

void test('production alone: every frame gets its result, the one production gives alone', async () => {
  const { runtime, results, shadow } = await runFrames({});
  assertProductionAlone(results);
  assert.equal(shadow.size, 0);
  assert.deepEqual(runtime.stats(), {
    delivered: N,
    shadowCompleted: 0,
    shadowFailed: 0,
    shadowDropped: 0,
    shadowHeld: 0,
    shadowPeakHeld: 0,
  });
});

void test('shadow on: production results unchanged; the candidate runs every frame, as it does alone', async () => {
  const { runtime, log, results, shadow } = await runFrames({ candidate: candidate(), shadowBatch: 8 });
  await runtime.shadowIdle();
  assertProductionAlone(results);
  assert.equal(shadow.size, N);
  assertCandidateAlone(shadow);
  const s = runtime.stats();
  assert.equal(s.shadowCompleted, N);
  assert.equal(s.shadowDropped, 0);
  assert.equal(s.shadowHeld, 0);
  // Each frame's production result is delivered before its candidate output.
  for (let k = 0; k < N; k++) {
    assert.ok(log.indexOf(`result ${k}`) < log.indexOf(`shadow ${k}`), `frame ${k}: ${log.join(', ')}`);
  }
});

void test('a full shadow queue drops and counts frames; production never waits for the candidate', async () => {
  const slow = gated(candidate());
  // Batches of 4, at most 8 frames held: frames 0-3 go to the candidate, which does not return until
  // the gate opens; 4-7 wait; every later frame is dropped.
  const { runtime, results, shadow } = await runFrames(
    { candidate: slow, shadowQueue: 8, shadowBatch: 4 },
    40,
  );
  // Every production result was delivered while the candidate had not finished a single frame.
  assertProductionAlone(results, 40);
  assert.equal(shadow.size, 0);
  assert.equal(slow.calls, 1);
  assert.deepEqual(runtime.stats(), {
    delivered: 40,
    shadowCompleted: 0,
    shadowFailed: 0,
    shadowDropped: 32,
    shadowHeld: 8,
    shadowPeakHeld: 8,
  });
  slow.open();
  await runtime.shadowIdle();
  assert.deepEqual(
    [...shadow.keys()].sort((a, b) => a - b),
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  assertCandidateAlone(shadow);
  const s = runtime.stats();
  assert.equal(s.shadowCompleted, 8);
  assert.equal(s.shadowDropped, 32);
  assert.equal(s.shadowHeld, 0);
  // The queue has room again: later frames reach the candidate.
  await runtime.frame(40, frame(40));
  await runtime.shadowIdle();
  assert.equal(runtime.stats().shadowCompleted, 9);
  assert.deepEqual(shadow.get(40), alone['candidate-good']![40]);
});

void test('a failing candidate is counted; production results are unaffected', async () => {
  const broken: FrameModel = { run: () => Promise.reject(new Error('candidate crashed')) };
  const { runtime, results, shadow } = await runFrames({ candidate: broken, shadowBatch: 5 }, 20);
  await runtime.shadowIdle();
  assertProductionAlone(results, 20);
  assert.equal(shadow.size, 0);
  const s = runtime.stats();
  assert.equal(s.shadowFailed, 20);
  assert.equal(s.shadowCompleted, 0);
});

void test('at a fixed rate, with the candidate on its own thread: every result delivered, outputs as alone', async () => {
  const thread = await ThreadModel.open(new Uint8Array(bytes['candidate-good']!), { intraOpThreads: 1 });
  try {
    const results = new Map<number, Float32Array>();
    const shadow = new Map<number, Float32Array>();
    const runtime = new VehicleRuntime({
      production: production(),
      candidate: thread,
      shadowQueue: 16,
      shadowBatch: 8,
      onResult: (r) => results.set(r.frame, r.probs),
      onShadow: (k, probs) => {
        assert.ok(results.has(k), `candidate output of frame ${k} before its production result`);
        shadow.set(k, probs);
      },
    });
    const drive = await driveAtRate(runtime, frames.features, N, 2000);
    await runtime.shadowIdle();
    assertProductionAlone(results);
    assert.equal(drive.latencyMs.length, N);
    assert.ok(drive.latencyMs.every((ms) => Number.isFinite(ms) && ms >= 0));
    const s = runtime.stats();
    // However the host schedules the threads, every frame is either run by the candidate or dropped.
    assert.equal(s.shadowCompleted + s.shadowDropped, N);
    assert.equal(s.shadowFailed, 0);
    assert.ok(s.shadowPeakHeld <= 16);
    assert.equal(shadow.size, s.shadowCompleted);
    assertCandidateAlone(shadow);
  } finally {
    await thread.close();
  }
});

void test('the shadow queue must hold at least one batch', () => {
  assert.throws(
    () => new VehicleRuntime({ production: production(), shadowQueue: 4, shadowBatch: 8 }),
    RangeError,
  );
  assert.throws(() => new VehicleRuntime({ production: production(), shadowBatch: 0 }), RangeError);
});
