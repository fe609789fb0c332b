/**
 * The bench on real onnxruntime sessions: a generous budget passes, a tiny one fails with the numbers,
 * outputs are bitwise deterministic, and a model with another input contract fails its contract test.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { LocalObjectStore, sha256 } from '../../activities/store';
import { createInferenceActivities } from '../../activities/inference';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import type { Sku } from '../../policies/schema';

const MODELS = resolve(__dirname, '../../models');
let dir: string;
let runner: OnnxModelRunner;
const digests: Record<string, string> = {};

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-'));
  const store = new LocalObjectStore(dir, { durable: false });
  runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  for (const pack of ['production', 'candidate-badcontract']) {
    const bytes = readFileSync(join(MODELS, pack, 'model.onnx'));
    digests[pack] = sha256(bytes);
    await store.putIfAbsent(blobKey(digests[pack]!), bytes);
  }
});

after(async () => {
  await runner.close();
  rmSync(dir, { recursive: true, force: true });
});

const sku = (latencyBudgetMs: number, speedFactor = 1): Sku => ({
  name: 'hw3',
  speedFactor,
  latencyBudgetMs,
  intraOpThreads: 1,
  graphOptimization: 'all',
  installFailureRate: 0,
  slowdown: [],
});

void test('bench passes on a generous budget, with deterministic outputs and a sound contract', async () => {
  const { benchModel } = createInferenceActivities({ runner });
  const r = await benchModel({
    rolloutId: 'r',
    digest: digests.production!,
    sku: sku(1000),
    goldenInputs: 64,
    repeats: 3,
  });
  assert.equal(r.sku, 'hw3');
  assert.equal(r.contractOk, true);
  assert.equal(r.deterministic, true);
  assert.equal(r.passed, true, r.reason);
  assert.equal(r.reason, undefined);
  assert.equal(r.budgetMs, 1000);
  assert.ok(r.p95Ms > 0 && r.p95Ms <= r.p99Ms && r.p99Ms < 1000, `p95 ${r.p95Ms}, p99 ${r.p99Ms}`);
});

void test('bench fails on a tiny budget and says why, with the numbers', async () => {
  const { benchModel } = createInferenceActivities({ runner });
  const r = await benchModel({
    rolloutId: 'r',
    digest: digests.production!,
    sku: sku(0.0001, 4),
    goldenInputs: 32,
    repeats: 2,
  });
  assert.equal(r.passed, false);
  assert.equal(r.contractOk, true);
  assert.equal(r.deterministic, true);
  assert.ok(r.p95Ms > 0.0001);
  assert.match(
    r.reason ?? '',
    /latency: p95 [\d.]+ ms exceeds the budget of 0\.0001 ms on hw3 \(speed factor 4, p99 [\d.]+ ms, 64 runs\)/,
  );
});

void test('a model with another input contract fails its contract test', async () => {
  const { benchModel } = createInferenceActivities({ runner });
  const r = await benchModel({
    rolloutId: 'r',
    digest: digests['candidate-badcontract']!,
    sku: sku(1000),
    goldenInputs: 16,
    repeats: 2,
  });
  assert.equal(r.passed, false);
  assert.equal(r.contractOk, false);
  assert.match(r.reason ?? '', /contract: the model does not run on golden inputs \[16, 8\]/);
  assert.match(r.reason ?? '', /latency: not measured because the contract test failed/);
});
