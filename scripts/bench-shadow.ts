/**
 * The shadow benches of `npm run bench` (scripts/bench.ts), on real onnxruntime sessions over the
 * fixture models (production and candidate-good, the same contract):
 *
 *   1. shadow inference throughput: the candidate's run over one cohort's shadow batch as the shadow
 *      phase makes it (`infer` of activities/fleet.ts with every frame: the model's frame cost, chunks
 *      of INFERENCE_CHUNK rows as views, `OnnxModelRunner.run` under the SKU's settings, argmax and
 *      confidence written per event) against `InferenceSession.run` called directly on the identical
 *      Float32 chunks with the same session options. Goal: at least 0.85x the frames per second.
 *      Measured twice: on candidate-good, a logistic regression of about 50 ns a frame, where the
 *      per-frame decode (two reads, two writes) is a fixed share of the work that no batching removes;
 *      and on models/bench/mlp-8x64x64x2.onnx (scripts/make_bench_model.py), the same contract with two
 *      hidden layers, where inference is the bulk of the work as it is for a real perception model.
 *   2. the vehicle's critical path (sim/vehicle.ts): production p50 and p99 from a frame's arrival to
 *      its result, frames arriving at a fixed rate, with the candidate in shadow (its own session on its
 *      own thread, a bounded queue) against production alone; the same frames in both, runs alternated
 *      and repeated, medians over the repetitions. Goal: p99 at most 1.05x. A second arm of production
 *      alone, in the same rotation, shows how far two identical arms differ on this host (A/A).
 *
 * Prints one line per bench with the measured values and returns rows for the table of bench.ts.
 * FLEETGATE_BENCH_VEHICLE_FRAMES, _RATE and _REPS size the second bench (defaults 1500, 1000 Hz, 11).
 * The host's load average is printed with it: other work on the host shows in a p99 first.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { RunnerSettings } from '../activities/deps';
import { ArmColumns, INFERENCE_CHUNK, infer } from '../activities/fleet';
import { Sku } from '../policies/schema';
import { LocalObjectStore, sha256 } from '../activities/store';
import { FEATURES } from '../policies/model-contract';
import { generateFrames } from '../sim/frames';
import { makeRng } from '../policies/rng';
import { ThreadModel, VehicleRuntime, driveAtRate, runnerModel } from '../sim/vehicle';
import { OnnxModelRunner, blobKey } from '../workers/model-runner';

/** A row of the bench table (the shape of `Result` in scripts/bench.ts). */
export interface BenchRow {
  name: string;
  subject: string;
  baseline: string;
  subjectMs: number;
  baselineMs: number;
  speedup: number;
}

/** One cohort's shadow batch of the demo fleet: 400 vehicles x 30 events per hour x a 4-hour window. */
const BATCH_FRAMES = 48_000;
/** The runtime settings of a SKU that sets none (the defaults of policies/schema.ts). */
const SKU_SETTINGS: Required<RunnerSettings> = { intraOpThreads: 1, graphOptimization: 'all' };

export async function shadowBench(root: string): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-shadow-'));
  const store = new LocalObjectStore(dir, { durable: false });
  const load = (digest: string) => store.get(blobKey(digest));
  const bytes = (pack: string) => readFileSync(join(root, 'models', pack, 'model.onnx'));
  const production = bytes('production');
  const candidate = bytes('candidate-good');
  const prodDigest = sha256(production);
  const candDigest = sha256(candidate);
  await store.putIfAbsent(blobKey(prodDigest), production);
  await store.putIfAbsent(blobKey(candDigest), candidate);
  const mlp = readFileSync(join(root, 'models', 'bench', 'mlp-8x64x64x2.onnx'));
  const mlpDigest = sha256(mlp);
  await store.putIfAbsent(blobKey(mlpDigest), mlp);
  try {
    return [
      await throughput(new OnnxModelRunner(load), candDigest, candidate, 'logistic regression'),
      await throughput(new OnnxModelRunner(load), mlpDigest, mlp, 'MLP 8x64x64x2'),
      await vehicle(load, prodDigest, candidate),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function throughput(
  runner: OnnxModelRunner,
  digest: string,
  model: Buffer,
  label: string,
): Promise<BenchRow> {
  const frames = generateFrames(makeRng('bench-shadow'), BATCH_FRAMES, 0.3);
  const session = await ort.InferenceSession.create(new Uint8Array(model), {
    intraOpNumThreads: SKU_SETTINGS.intraOpThreads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: SKU_SETTINGS.graphOptimization,
  });
  const [input, output] = [session.inputNames[0]!, session.outputNames[0]!];
  const chunks: Float32Array[] = [];
  for (let start = 0; start < frames.count; start += INFERENCE_CHUNK) {
    const end = Math.min(frames.count, start + INFERENCE_CHUNK);
    chunks.push(frames.features.slice(start * FEATURES, end * FEATURES));
  }
  // The shadow phase's path for the candidate: `infer` over the whole batch (idx null), as runShadow
  // calls it.
  const sku = Sku.parse({ name: 'bench', speedFactor: 1, latencyBudgetMs: 10, ...SKU_SETTINGS });
  let cols = new ArmColumns(frames.count);
  const subject = async () => {
    cols = new ArmColumns(frames.count);
    await infer(runner, digest, frames, null, sku, cols);
  };
  const out: Float32Array[] = [];
  const baseline = async () => {
    out.length = 0;
    for (const chunk of chunks) {
      const result = await session.run({
        [input]: new ort.Tensor('float32', chunk, [chunk.length / FEATURES, FEATURES]),
      });
      out.push(result[output]!.data as Float32Array);
    }
  };
  try {
    await subject();
    await baseline();
    // Both must give the same outputs before their speeds mean anything.
    let row = 0;
    for (const probs of out) {
      for (let r = 0; r < probs.length / 2; r++, row++) {
        if (cols.conf[row] !== Math.max(probs[2 * r]!, probs[2 * r + 1]!)) {
          throw new Error(`shadow path and onnxruntime disagree at frame ${row}`);
        }
      }
    }
    const reps = 31;
    const subjectMs: number[] = [];
    const baselineMs: number[] = [];
    for (let i = 0; i < reps; i++) {
      // Alternated, so that drift of the host falls on both.
      for (const [fn, into] of i % 2 === 0
        ? ([
            [subject, subjectMs],
            [baseline, baselineMs],
          ] as const)
        : ([
            [baseline, baselineMs],
            [subject, subjectMs],
          ] as const)) {
        const t0 = process.hrtime.bigint();
        await fn();
        into.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }
    const s = median(subjectMs);
    const b = median(baselineMs);
    const fps = (t: number) => Math.round((frames.count * 1000) / t).toLocaleString('en-US');
    console.log(
      `shadow inference, ${label} (${frames.count} frames, chunks of ${INFERENCE_CHUNK}, medians of ${reps}): ` +
        `shadow path ${fps(s)} frames/s, InferenceSession.run ${fps(b)} frames/s, ratio ${(b / s).toFixed(2)}x ` +
        `(goal >= 0.85x); ms per batch: shadow path ${s.toFixed(2)}, InferenceSession.run ${b.toFixed(2)}`,
    );
    return {
      name: `shadow inference, ${label} (${(frames.count / 1000).toFixed(0)}k frames)`,
      subject: 'infer (the shadow path)',
      baseline: 'InferenceSession.run',
      subjectMs: s,
      baselineMs: b,
      speedup: b / s,
    };
  } finally {
    await session.release();
    await runner.close();
  }
}

async function vehicle(
  load: (digest: string) => Promise<Buffer | undefined>,
  prodDigest: string,
  candidateModel: Buffer,
): Promise<BenchRow> {
  const count = Number(process.env.FLEETGATE_BENCH_VEHICLE_FRAMES ?? 1500);
  const rateHz = Number(process.env.FLEETGATE_BENCH_VEHICLE_RATE ?? 1000);
  const reps = Number(process.env.FLEETGATE_BENCH_VEHICLE_REPS ?? 11);
  const queue = 256;
  const batch = 32;
  const frames = generateFrames(makeRng('bench-vehicle'), count, 0.3);
  const runner = new OnnxModelRunner(load);
  const production = runnerModel(runner, prodDigest, { intraOpThreads: 1 });
  const candidate = await ThreadModel.open(new Uint8Array(candidateModel), { intraOpThreads: 1 });
  const run = async (shadow: boolean) => {
    const runtime = new VehicleRuntime({
      production,
      candidate: shadow ? candidate : undefined,
      shadowQueue: queue,
      shadowBatch: batch,
    });
    const r = await driveAtRate(runtime, frames.features, count, rateHz);
    await runtime.shadowIdle();
    const sorted = Float64Array.from(r.latencyMs).sort();
    return {
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      cores: r.cores,
      stats: runtime.stats(),
    };
  };
  const load0 = loadavg()[0]!;
  try {
    // Warm-up: sessions built, code paths compiled.
    await run(true);
    await run(false);
    // Three arms in rotating order: shadow off, shadow on, and shadow off again (an A/A control: how far
    // two arms that do the same thing differ on this host, the noise floor of the on/off ratio).
    type Run = Awaited<ReturnType<typeof run>>;
    const arms: { shadow: boolean; runs: Run[] }[] = [
      { shadow: false, runs: [] },
      { shadow: true, runs: [] },
      { shadow: false, runs: [] },
    ];
    for (let i = 0; i < reps; i++) {
      for (let j = 0; j < arms.length; j++) {
        const arm = arms[(i + j) % arms.length]!;
        arm.runs.push(await run(arm.shadow));
      }
    }
    const [off, on, control] = arms.map((a) => a.runs) as [Run[], Run[], Run[]];
    const m = (rs: Run[], f: (r: Run) => number) => median(rs.map(f));
    const [p50Off, p99Off, p50On, p99On] = [
      m(off, (r) => r.p50),
      m(off, (r) => r.p99),
      m(on, (r) => r.p50),
      m(on, (r) => r.p99),
    ];
    const completed = on.reduce((a, r) => a + r.stats.shadowCompleted, 0);
    const dropped = on.reduce((a, r) => a + r.stats.shadowDropped, 0);
    const failed = on.reduce((a, r) => a + r.stats.shadowFailed, 0);
    const us = (x: number) => `${(x * 1000).toFixed(0)} us`;
    // Ratios within each rotation, whose runs met about the same state of the host.
    const spread = (a: Run[], b: Run[]) => {
      const ratios = Float64Array.from(a.map((r, i) => r.p99 / b[i]!.p99)).sort();
      const q = (x: number) => quantile(ratios, x).toFixed(2);
      return `${q(0.5)}x (quartiles ${q(0.25)}-${q(0.75)})`;
    };
    console.log(
      `vehicle (${count} frames at ${rateHz} Hz, ${reps} rotations of off/on/off, medians): production ` +
        `p50/p99 shadow off ${us(p50Off)}/${us(p99Off)}, on ${us(p50On)}/${us(p99On)}, ` +
        `p99 ratio on/off ${(p99On / p99Off).toFixed(2)}x (goal <= 1.05x); paired p99 ratios on/off ` +
        `${spread(on, off)}, A/A off/off ${spread(control, off)}, A/A of the medians ` +
        `${(m(control, (r) => r.p99) / p99Off).toFixed(2)}x; shadow frames ${completed} completed, ` +
        `${dropped} dropped, ${failed} failed (queue ${queue}, batches of ${batch}); CPU ` +
        `${m(off, (r) => r.cores).toFixed(2)} cores shadow off, ${m(on, (r) => r.cores).toFixed(2)} on; ` +
        `host load average ${load0.toFixed(1)} -> ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores`,
    );
    return {
      name: `vehicle p99 (${rateHz} fps)`,
      subject: 'shadow on',
      baseline: 'shadow off',
      subjectMs: p99On,
      baselineMs: p99Off,
      speedup: p99Off / p99On,
    };
  } finally {
    await candidate.close();
    await runner.close();
  }
}

function median(xs: readonly number[]): number {
  return quantile(Float64Array.from(xs).sort(), 0.5);
}

/** Quantile of sorted values, linear between order statistics. */
function quantile(sorted: Float64Array, q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}
