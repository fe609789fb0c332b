/**
 * The bench on real onnxruntime sessions, each in a child process of its own, against a real
 * LocalObjectStore: a generous budget passes and a tiny one fails with the numbers; a model with another
 * input contract fails its contract test; a record's golden set passes, and fails when its expected outputs
 * are off by more than its tolerance; the pack's memory ceiling and stricter latency budget apply; a SKU the
 * pack leaves out is refused without a run; the report is stored once beside the record and a retry (or a
 * concurrent attempt) returns it; the child is another process and the SKU's threads reach its session;
 * missing or tampered blobs throw their error types; and without a store the bench runs in-process.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { LocalObjectStore, sha256 } from '../../activities/store';
import {
  benchReportKey,
  benchReports,
  createInferenceActivities,
  type BenchReport,
} from '../../activities/inference';
import type { BenchInput, BenchResult, ModelRecord } from '../../activities/contracts';
import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ErrorType } from '../../errors';
import { generateFrames } from '../../sim/frames';
import { makeRng } from '../../policies/rng';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import type { Sku } from '../../policies/schema';

const MODELS = resolve(__dirname, '../../models');
const ROWS = 16;
let dir: string;
let store: LocalObjectStore;
let runner: OnnxModelRunner;
const digests: Record<string, string> = {};
/** Blob digests of the golden set: inputs, the outputs production gives, and those outputs perturbed. */
const golden = { inputs: '', outputs: '', perturbed: '' };

function f32(values: Float32Array): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}
async function putBlob(bytes: Buffer): Promise<string> {
  const digest = sha256(bytes);
  await store.putIfAbsent(blobKey(digest), bytes);
  return digest;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-test-'));
  store = new LocalObjectStore(dir, { durable: false });
  runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  for (const pack of ['production', 'candidate-badcontract']) {
    digests[pack] = await putBlob(readFileSync(join(MODELS, pack, 'model.onnx')));
  }
  // 16 rows of 8 float32 features, and the probabilities production gives them (computed here, in-process).
  const inputs = generateFrames(makeRng('bench-test-golden'), ROWS, 0.5).features;
  const { probs } = await runner.run(digests.production!, inputs, ROWS, { intraOpThreads: 1 });
  golden.inputs = await putBlob(f32(inputs));
  golden.outputs = await putBlob(f32(probs));
  const off = Float32Array.from(probs);
  off[5 * 2] = off[5 * 2]! + 0.01;
  off[5 * 2 + 1] = off[5 * 2 + 1]! - 0.01;
  golden.perturbed = await putBlob(f32(off));
});

after(async () => {
  await runner.close();
  rmSync(dir, { recursive: true, force: true });
});

const sku = (latencyBudgetMs: number, speedFactor = 1, intraOpThreads = 1): Sku => ({
  name: 'hw3',
  speedFactor,
  latencyBudgetMs,
  intraOpThreads,
  graphOptimization: 'all',
  installFailureRate: 0,
  slowdown: [],
});

/** Writes a registry record of production under its own version; returns its key. */
async function record(version: string, extra: Partial<ModelRecord> = {}): Promise<string> {
  const recordKey = `registry/hazard-detector/${version}.json`;
  const rec: ModelRecord = {
    name: 'hazard-detector',
    version,
    digest: digests.production!,
    manifestDigest: '0'.repeat(64),
    recordKey,
    contract: { inputs: [], outputs: [] },
    ...extra,
  };
  await store.putIfAbsent(recordKey, Buffer.from(JSON.stringify(rec)));
  return recordKey;
}

const goldenSet = (outputs: string, tolerance: number) => ({
  inputs: golden.inputs,
  outputs,
  rows: ROWS,
  tolerance,
});

function benchInput(over: Partial<BenchInput> = {}): BenchInput {
  return {
    rolloutId: 'r',
    digest: digests.production!,
    sku: sku(1000),
    goldenInputs: 32,
    repeats: 2,
    ...over,
  };
}

void test('bench passes on a generous budget in a child process of its own, with its memory and quantiles', async () => {
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ goldenInputs: 64, repeats: 3 }));
  assert.equal(r.sku, 'hw3');
  assert.equal(r.contractOk, true);
  assert.equal(r.deterministic, true);
  assert.equal(r.passed, true, r.reason);
  assert.equal(r.reason, undefined);
  assert.equal(r.budgetMs, 1000);
  assert.equal(r.runs, 192);
  assert.ok(r.p50Ms! > 0 && r.p50Ms! <= r.p95Ms && r.p95Ms <= r.p99Ms && r.p99Ms < 1000, JSON.stringify(r));
  // Another process: not this one, and gone by now.
  assert.equal(r.isolated, true);
  assert.ok(r.pid! > 0 && r.pid !== process.pid, `bench pid ${r.pid}, test pid ${process.pid}`);
  assert.throws(() => process.kill(r.pid!, 0), /ESRCH/);
  assert.ok(r.baselineRssMb! > 0 && r.peakRssMb! >= r.baselineRssMb!, JSON.stringify(r));
  assert.equal(r.modelRssMb, r.peakRssMb! - r.baselineRssMb!);
  assert.equal(r.reportKey, undefined, 'no record, no report');
});

void test("the SKU's thread count and settings reach the child's session", async () => {
  const { benchModel } = createInferenceActivities({ store });
  const one = await benchModel(benchInput({ goldenInputs: 8 }));
  const three = await benchModel(
    benchInput({ goldenInputs: 8, sku: { ...sku(1000, 1, 3), graphOptimization: 'basic' } }),
  );
  assert.deepEqual(
    { ...three.session, threadsStarted: undefined },
    {
      intraOpThreads: 3,
      interOpThreads: 1,
      executionMode: 'sequential',
      graphOptimization: 'basic',
      threadsStarted: undefined,
    },
  );
  assert.equal(one.session?.intraOpThreads, 1);
  if (process.platform === 'linux') {
    // onnxruntime's intra-op pool: the calling thread and intraOpThreads - 1 threads of its own.
    assert.equal(one.session?.threadsStarted, 0);
    assert.equal(three.session?.threadsStarted, 2);
  }
});

void test('bench fails on a tiny budget and says why, with the numbers', async () => {
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ sku: sku(0.0001, 4) }));
  assert.equal(r.passed, false);
  assert.equal(r.contractOk, true);
  assert.equal(r.deterministic, true);
  assert.ok(r.p95Ms > 0.0001);
  assert.match(
    r.reason ?? '',
    /^latency: p95 [\d.]+ ms exceeds the budget of 0\.0001 ms on hw3 \(speed factor 4, p99 [\d.]+ ms, 64 runs\)$/,
  );
});

void test('a model with another input contract fails its contract test', async () => {
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ digest: digests['candidate-badcontract']!, goldenInputs: 16 }));
  assert.equal(r.passed, false);
  assert.equal(r.contractOk, false);
  assert.match(r.reason ?? '', /contract: the model does not run on golden inputs \[16, 8\]/);
  assert.match(r.reason ?? '', /latency: not measured because the contract test failed/);
});

void test("the record's golden set passes within its tolerance; a looser pack budget does not loosen the SKU's", async () => {
  const recordKey = await record('2.0.0', {
    golden: goldenSet(golden.outputs, 1e-5),
    skuBudgets: { hw3: { latencyP95Ms: 5000, memoryMb: 1024 } },
    compatibleSkus: ['hw3', 'hw4'],
  });
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ recordKey, rolloutId: 'golden-pass' }));
  assert.equal(r.passed, true, r.reason);
  assert.equal(r.compatible, true);
  assert.equal(r.goldenRows, ROWS);
  assert.equal(r.goldenTolerance, 1e-5);
  assert.ok(r.goldenMaxAbsDiff! <= 1e-5, `max abs diff ${r.goldenMaxAbsDiff}`);
  assert.equal(r.budgetMs, 1000);
  assert.equal(r.memoryCeilingMb, 1024);
  // Latency cycles through the 16 golden rows: goldenInputs runs per repeat.
  assert.equal(r.runs, 64);
});

void test('golden outputs off by more than the tolerance fail, naming the largest difference and the first row', async () => {
  const recordKey = await record('2.0.1', { golden: goldenSet(golden.perturbed, 1e-4) });
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ recordKey, rolloutId: 'golden-fail' }));
  assert.equal(r.passed, false);
  assert.equal(r.contractOk, true, 'the outputs are still a probability table');
  assert.equal(r.deterministic, true);
  assert.ok(Math.abs(r.goldenMaxAbsDiff! - 0.01) < 1e-4, `max abs diff ${r.goldenMaxAbsDiff}`);
  assert.match(
    r.reason ?? '',
    /^golden: 2 of 32 output values differ from the expected by more than the tolerance 0\.0001 \(max abs diff 0\.0(09|1)\d*\); first at row 5: expected \[[\d.e-]+, [\d.e-]+\], got \[[\d.e-]+, [\d.e-]+\]$/,
  );
});

void test("a model whose own golden set runs, but not on the fleet's frames, fails its contract", async () => {
  const inputs = generateFrames(makeRng('bench-test-six'), ROWS, 0.5).features.subarray(0, ROWS * 6);
  const bad = digests['candidate-badcontract']!;
  const { probs } = await runner.run(bad, inputs, ROWS, { intraOpThreads: 1 });
  const recordKey = await record('2.0.5', {
    digest: bad,
    golden: {
      inputs: await putBlob(f32(inputs)),
      outputs: await putBlob(f32(probs)),
      rows: ROWS,
      tolerance: 1e-5,
    },
  });
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ digest: bad, recordKey, rolloutId: 'six-features' }));
  assert.equal(r.passed, false);
  assert.equal(r.contractOk, false);
  assert.equal(r.goldenMaxAbsDiff, 0);
  assert.equal(r.reason, "contract: the pack's golden inputs have 6 features a row, the fleet's frames 8");
});

void test("the pack's memory ceiling is held against the model's share of the child's peak memory", async () => {
  const recordKey = await record('2.0.2', { skuBudgets: { hw3: { memoryMb: 0.001 } } });
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ recordKey, rolloutId: 'memory' }));
  assert.equal(r.passed, false);
  assert.equal(r.memoryCeilingMb, 0.001);
  assert.ok(r.modelRssMb! > 0.001, `model share ${r.modelRssMb} MiB`);
  const fmt = (x: number) => String(Number(x.toPrecision(4)));
  assert.equal(
    r.reason,
    `memory: the model's peak resident memory of ${fmt(r.modelRssMb!)} MiB exceeds the ceiling of 0.001 MiB on hw3 ` +
      `(bench process peak ${fmt(r.peakRssMb!)} MiB, ${fmt(r.baselineRssMb!)} MiB of it before the model was loaded)`,
  );
});

void test('a SKU the pack does not list as compatible is refused at once, without a child', async () => {
  const recordKey = await record('2.0.3', { compatibleSkus: ['hw4'] });
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ recordKey, rolloutId: 'incompatible' }));
  assert.equal(r.passed, false);
  assert.equal(r.compatible, false);
  assert.equal(r.pid, undefined);
  assert.equal(
    r.reason,
    'compatibility: hazard-detector@2.0.3 declares it runs on hw4, not on hw3; nothing was run',
  );
});

void test("the pack's latency budget applies when it is stricter than the SKU's", async () => {
  const recordKey = await record('2.0.4', { skuBudgets: { hw3: { latencyP95Ms: 0.00001 } } });
  const { benchModel } = createInferenceActivities({ store });
  const r = await benchModel(benchInput({ recordKey, rolloutId: 'pack-budget' }));
  assert.equal(r.passed, false);
  assert.equal(r.budgetMs, 0.00001);
  assert.match(
    r.reason ?? '',
    /^latency: p95 [\d.]+ ms exceeds the budget of 0\.00001 ms on hw3 \(speed factor 1, p99 [\d.]+ ms, 64 runs; the pack's budget for hw3, stricter than the fleet's 1000 ms\)$/,
  );
});

void test('the report is stored once beside the record; a retry and a concurrent attempt return it', async () => {
  const recordKey = await record('2.1.0', { golden: goldenSet(golden.outputs, 1e-5) });
  const key = benchReportKey(recordKey, 'hw3', 'stored');
  assert.equal(key, 'registry/hazard-detector/2.1.0.bench/hw3/stored.json');
  const { benchModel } = createInferenceActivities({ store });
  const first = await benchModel(benchInput({ recordKey, rolloutId: 'stored' }));
  assert.equal(first.passed, true, first.reason);
  assert.equal(first.reportKey, key);
  const report = JSON.parse((await store.get(key))!.toString('utf8')) as BenchReport;
  assert.deepEqual(report.result, first);
  assert.equal(report.kind, 'BenchReport');
  assert.equal(report.recordKey, recordKey);
  assert.deepEqual(report.model, { name: 'hazard-detector', version: '2.1.0', digest: digests.production });
  assert.deepEqual(report.inputs, {
    source: 'golden set',
    rows: ROWS,
    features: 8,
    repeats: 2,
    latencyRuns: 32,
  });
  assert.equal(report.host.cpus, cpus().length);
  assert.equal(report.host.node, process.version);
  assert.match(report.host.onnxruntime, /^\d+\.\d+\.\d+/);
  assert.ok(!Number.isNaN(Date.parse(report.at)));

  // A retry after the report was written measures nothing and returns the stored verdict.
  const retry = await benchModel(benchInput({ recordKey, rolloutId: 'stored' }));
  assert.deepEqual(retry, first);
  assert.deepEqual(await benchReports(store, recordKey), [report]);

  // Two attempts racing: one report is written, and both return it.
  const racing = await Promise.all(
    [1, 2].map(() => benchModel(benchInput({ recordKey, rolloutId: 'race' }))),
  );
  assert.deepEqual(racing[0], racing[1]);
  const all = await benchReports(store, recordKey);
  assert.deepEqual(all.map((r) => r.rolloutId).sort(), ['race', 'stored']);
  assert.deepEqual(all.find((r) => r.rolloutId === 'race')!.result, racing[0]);
});

void test('missing or tampered model and golden blobs throw their error types', async () => {
  const { benchModel } = createInferenceActivities({ store });
  const failsWith = (type: string, pattern: RegExp) => (err: { type?: string; message: string }) => {
    assert.equal(err.type, type);
    assert.match(err.message, pattern);
    return true;
  };
  const tamperedDigest = sha256(Buffer.from('not the model'));
  await store.putIfAbsent(blobKey(tamperedDigest), Buffer.from('another model'));
  await assert.rejects(
    benchModel(benchInput({ digest: tamperedDigest })),
    failsWith(ErrorType.DigestMismatch, /stored model [0-9a-f]{12} hashes to/),
  );
  await assert.rejects(
    benchModel(benchInput({ digest: 'e'.repeat(64) })),
    failsWith(ErrorType.NotFound, /model eeeeeeeeeeee is not in the object store/),
  );
  const missing = await record('2.2.0', { golden: goldenSet('f'.repeat(64), 1e-5) });
  await assert.rejects(
    benchModel(benchInput({ recordKey: missing })),
    failsWith(ErrorType.NotFound, /golden outputs ffffffffffff is not in the object store/),
  );
  await assert.rejects(
    benchModel(benchInput({ recordKey: 'registry/hazard-detector/9.9.9.json' })),
    failsWith(ErrorType.NotFound, /registry record registry\/hazard-detector\/9\.9\.9\.json does not exist/),
  );
});

void test('a bench process that does not start in time is an infrastructure failure, retried', async () => {
  const { benchModel } = createInferenceActivities({ store, benchTimeoutMs: 1 });
  await assert.rejects(benchModel(benchInput()), (err: { type?: string; message: string }) => {
    assert.equal(err.type, ErrorType.Unavailable);
    assert.match(err.message, /the bench process was killed after 1 ms before it was ready/);
    return true;
  });
});

void test("the bench heartbeats with the child's progress, and cancelling it kills the child", async () => {
  const { benchModel } = createInferenceActivities({ store });
  const env = new MockActivityEnvironment();
  const beats: { phase?: string; pid?: number }[] = [];
  env.on('heartbeat', (d: { phase?: string; pid?: number }) => {
    beats.push(d);
    if (d.phase === 'latency') env.cancel();
  });
  // Enough latency runs to be cancelled in the middle of them.
  const running = env.run(benchModel, benchInput({ goldenInputs: 20_000, repeats: 5 }));
  await assert.rejects(running, (err) => err instanceof CancelledFailure);
  const pid = beats.find((b) => b.pid !== undefined)?.pid;
  assert.ok(pid !== undefined && pid !== process.pid, JSON.stringify(beats));
  // The child's progress, in order (the 5-second keep-alive beats name their phase in words).
  assert.deepEqual(
    beats.map((b) => b.phase).filter((p) => p === 'session' || p === 'batch' || p === 'latency'),
    ['session', 'batch', 'batch', 'batch', 'batch', 'batch', 'latency'],
  );
  // Killed, not left running: give the kernel a moment to reap it.
  for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(alive(pid), false);
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

void test('without a store the bench runs in the worker process on its runner', async () => {
  const { benchModel } = createInferenceActivities({ runner });
  const r: BenchResult = await benchModel(benchInput());
  assert.equal(r.passed, true, r.reason);
  assert.equal(r.isolated, false);
  assert.equal(r.pid, process.pid);
  assert.equal(r.peakRssMb, undefined);
});
