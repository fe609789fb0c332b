/**
 * The bench's child process: runs one model under one SKU's runtime settings, alone in a process of its
 * own so that the memory the model takes is attributable to it, and reports what it measured to its
 * parent (`benchModel` in activities/inference.ts) over IPC.
 *
 * The parent starts it with the path of a work directory holding `plan.json`, the model bytes and the
 * inputs (and, for a golden set, the expected outputs) as little-endian float32. The child first warms
 * onnxruntime up on a tiny built-in model, so that the runtime's own start-up (its environment, allocator
 * and libraries) is not charged to the model, and notes its peak resident memory as the baseline. Then it
 * checks the model bytes against their sha256, builds the session with the SKU's settings, runs the checks
 * of `runChecks` and sends one `result` message with the numbers, and exits.
 *
 * It judges nothing against budgets or ceilings (the parent does), writes nothing, and reports an error of
 * its own (bytes that do not match their digest, a file it cannot read) as an `error` message rather than
 * as a result. `runChecks` is also what the worker's process runs when the bench has no object store to
 * hand a child the model bytes (no isolation and no memory numbers then).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { quantile } from 'simple-statistics';
import type { RunnerSettings } from '../activities/deps';
import { INPUT_NAME, OUTPUT_NAME } from './model-runner';

/** Files of the work directory. */
export const PLAN_FILE = 'plan.json';
export const MODEL_FILE = 'model.onnx';
export const INPUTS_FILE = 'inputs.f32';
export const EXPECTED_FILE = 'expected.f32';

export const CLASSES = 2;
const ROW_SUM_TOLERANCE = 1e-4;

/** What the parent asks of the child (`plan.json`). */
export interface ChildPlan {
  /** sha256 the model bytes must hash to. */
  digest: string;
  rows: number;
  features: number;
  repeats: number;
  /** Batch-1 runs per repeat for the latency, cycling through the input rows. */
  latencyRuns: number;
  /** Largest absolute difference allowed per output value; present when `expected.f32` is. */
  tolerance?: number;
  settings: Required<RunnerSettings>;
}

/** The session options the child passed to onnxruntime. */
export interface SessionSettings {
  intraOpThreads: number;
  interOpThreads: number;
  executionMode: 'sequential' | 'parallel';
  graphOptimization: NonNullable<RunnerSettings['graphOptimization']>;
}

export type Progress = { phase: 'session' } | { phase: 'batch' | 'latency'; repeat: number };

/** Messages from the child to its parent, in order: ready, progress..., then result or error. */
export type ChildMessage =
  | { type: 'ready'; pid: number }
  | ({ type: 'progress' } & Progress)
  | { type: 'result'; result: ChildResult }
  | { type: 'error'; errorType: 'DigestMismatch' | 'Unavailable'; message: string };

export interface GoldenCheck {
  /** Largest |actual - expected| over every output value (Infinity when one is not a number). */
  maxAbsDiff: number;
  /** Output values further from the expected than the tolerance. */
  offending: number;
  /** The first row with an offending value. */
  first?: { row: number; expected: number[]; actual: number[] };
}

/** The checks on one model: contract, golden values, determinism and batch-1 latency (unscaled). */
export interface Checks {
  contractOk: boolean;
  /** Why the model could not run on the inputs (an exception of onnxruntime). */
  runError?: string;
  /** Why its output is not an [n, 2] probability table. */
  contractProblem?: string;
  /** Output values of the first run. */
  values: number;
  /** For every repeat after the first: how many values differ bitwise from the first run's. */
  differing: number[];
  golden?: GoldenCheck;
  /** Measured only when the contract holds. */
  latency?: { p50Ms: number; p95Ms: number; p99Ms: number; runs: number };
}

export interface ChildResult {
  pid: number;
  settings: SessionSettings;
  /** Threads the process started while building the session (Linux; the calling thread is not one of them). */
  threadsStarted?: number;
  onnxruntime: string;
  node: string;
  /** Why onnxruntime could not build a session from the bytes; no checks ran then. */
  loadError?: string;
  checks?: Checks;
  /** Peak resident set in KiB before the model was read, and at the end. */
  memory: { baselineKb: number; peakKb: number };
}

export type RunFn = (
  features: Float32Array,
  rows: number,
) => Promise<{ probs: Float32Array; elapsedMs: number }>;

export interface CheckPlan {
  inputs: Float32Array;
  rows: number;
  features: number;
  repeats: number;
  latencyRuns: number;
  expected?: Float32Array;
  tolerance?: number;
}

/**
 * Runs the inputs as one batch `repeats` times (contract, golden values, determinism), then, when the
 * contract holds, `latencyRuns` single rows per repeat after one unmeasured warm-up run.
 */
export async function runChecks(
  run: RunFn,
  plan: CheckPlan,
  progress: (p: Progress) => void = () => undefined,
): Promise<Checks> {
  const { inputs, rows, features, repeats } = plan;
  const outputs: Float32Array[] = [];
  const checks: Checks = { contractOk: false, values: 0, differing: [] };
  try {
    for (let r = 0; r < repeats; r++) {
      outputs.push((await run(inputs, rows)).probs);
      progress({ phase: 'batch', repeat: r });
    }
  } catch (err) {
    checks.runError = message(err);
  }
  const first = outputs[0];
  if (!first) return checks;
  checks.values = first.length;
  const problem = contractProblem(first, rows);
  if (problem !== null) checks.contractProblem = problem;
  checks.contractOk = problem === null && checks.runError === undefined;
  checks.differing = outputs.slice(1).map((o) => differingValues(first, o));
  if (plan.expected && first.length === plan.expected.length) {
    checks.golden = compareGolden(first, plan.expected, plan.tolerance ?? 0);
  }
  if (!checks.contractOk) return checks;

  const single = Array.from({ length: rows }, (_, i) => inputs.slice(i * features, (i + 1) * features));
  await run(single[0]!, 1); // warm-up, not measured
  const samples: number[] = [];
  for (let r = 0; r < repeats; r++) {
    for (let i = 0; i < plan.latencyRuns; i++) samples.push((await run(single[i % rows]!, 1)).elapsedMs);
    progress({ phase: 'latency', repeat: r });
  }
  checks.latency = {
    p50Ms: quantile(samples, 0.5),
    p95Ms: quantile(samples, 0.95),
    p99Ms: quantile(samples, 0.99),
    runs: samples.length,
  };
  return checks;
}

/** Why probs is not a valid [n, 2] probability table, or null when it is. */
export function contractProblem(probs: Float32Array, n: number): string | null {
  if (probs.length !== n * CLASSES) {
    return `probs has ${probs.length} values, expected [${n}, ${CLASSES}] = ${n * CLASSES}`;
  }
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let c = 0; c < CLASSES; c++) {
      const v = probs[i * CLASSES + c]!;
      if (!Number.isFinite(v)) return `probs[${i}][${c}] is ${v}, not a finite number`;
      sum += v;
    }
    if (Math.abs(sum - 1) > ROW_SUM_TOLERANCE) {
      return `probs row ${i} sums to ${sum}, not 1 within ${ROW_SUM_TOLERANCE}`;
    }
  }
  return null;
}

/** Number of positions whose bit patterns differ (NaN-safe, -0 != 0). */
export function differingValues(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.max(a.length, b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let d = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) d++;
  return d;
}

/** Every output value against the expected one, rows of `CLASSES` values. */
export function compareGolden(actual: Float32Array, expected: Float32Array, tolerance: number): GoldenCheck {
  const check: GoldenCheck = { maxAbsDiff: 0, offending: 0 };
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    const diff = Number.isNaN(d) ? Infinity : d;
    if (diff > check.maxAbsDiff) check.maxAbsDiff = diff;
    if (diff <= tolerance) continue;
    check.offending++;
    if (!check.first) {
      const row = Math.floor(i / CLASSES);
      const cut = (a: Float32Array) => Array.from(a.subarray(row * CLASSES, (row + 1) * CLASSES));
      check.first = { row, expected: cut(expected), actual: cut(actual) };
    }
  }
  return check;
}

/** little-endian float32 file as a Float32Array (a copy, aligned). */
export function readFloats(file: string): Float32Array {
  return floatsOf(readFileSync(file));
}
export function floatsOf(bytes: Buffer): Float32Array {
  const out = new Float32Array(Math.floor(bytes.length / 4));
  for (let i = 0; i < out.length; i++) out[i] = bytes.readFloatLE(i * 4);
  return out;
}

export function message(err: unknown): string {
  const text = (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').trim();
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

/**
 * ONNX model `y = Identity(x)`, x and y float32 [1], IR version 7, opset 13: run once before the baseline so
 * that onnxruntime's environment is built and paid for before the model is read.
 */
const WARM_UP_MODEL =
  'CAdCBAoAEA06PAoQCgF4EgF5IghJZGVudGl0eRIGd2FybXVwWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAQ==';

/** Threads of this process (Linux), or undefined where /proc is missing. */
function threadCount(): number | undefined {
  try {
    const m = /^Threads:\s+(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function runOn(session: ort.InferenceSession): RunFn {
  const inputName = session.inputNames[0] ?? INPUT_NAME;
  const outputName = session.outputNames[0] ?? OUTPUT_NAME;
  return async (features, rows) => {
    const cols = rows === 0 ? 0 : features.length / rows;
    const input = new ort.Tensor('float32', features, [rows, cols]);
    const started = process.hrtime.bigint();
    const out = await session.run({ [inputName]: input });
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    input.dispose();
    const tensor = out[outputName];
    if (!tensor) throw new Error(`the model produced no output ${outputName}`);
    if (!(tensor.data instanceof Float32Array)) {
      throw new Error(`output ${outputName} is ${tensor.type}, not float32`);
    }
    return { probs: tensor.data, elapsedMs };
  };
}

class ChildError extends Error {
  constructor(
    readonly errorType: 'DigestMismatch' | 'Unavailable',
    message: string,
  ) {
    super(message);
  }
}

function send(m: ChildMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!process.send) return reject(new Error('bench child: started without an IPC channel'));
    process.send(m, undefined, {}, (err) => (err ? reject(err) : resolve()));
  });
}

/** Progress for the parent's heartbeats; a lost one is harmless. */
function notify(p: Progress): void {
  send({ type: 'progress', ...p }).catch(() => undefined);
}

async function main(dir: string): Promise<void> {
  const warm = await ort.InferenceSession.create(Buffer.from(WARM_UP_MODEL, 'base64'), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  await warm.run({ x: new ort.Tensor('float32', new Float32Array([1]), [1]) });
  // The warm-up session stays open: memory it would free could be reused by the model and hide its share.
  const baselineKb = process.resourceUsage().maxRSS;
  await send({ type: 'ready', pid: process.pid });

  let plan: ChildPlan;
  let bytes: Buffer;
  let inputs: Float32Array;
  let expected: Float32Array | undefined;
  try {
    plan = JSON.parse(readFileSync(join(dir, PLAN_FILE), 'utf8')) as ChildPlan;
    bytes = readFileSync(join(dir, MODEL_FILE));
    inputs = readFloats(join(dir, INPUTS_FILE));
    if (plan.tolerance !== undefined) expected = readFloats(join(dir, EXPECTED_FILE));
  } catch (err) {
    throw new ChildError(
      'Unavailable',
      `bench child: cannot read its work directory ${dir}: ${message(err)}`,
    );
  }
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== plan.digest) {
    throw new ChildError(
      'DigestMismatch',
      `the model handed to the bench process hashes to ${actual.slice(0, 12)}, not ${plan.digest.slice(0, 12)}`,
    );
  }

  const settings: SessionSettings = {
    intraOpThreads: plan.settings.intraOpThreads,
    interOpThreads: 1,
    executionMode: 'sequential',
    graphOptimization: plan.settings.graphOptimization,
  };
  const result: ChildResult = {
    pid: process.pid,
    settings,
    onnxruntime: ort.env.versions.node ?? ort.env.versions.common,
    node: process.version,
    memory: { baselineKb, peakKb: baselineKb },
  };
  const threadsBefore = threadCount();
  let session: ort.InferenceSession | undefined;
  try {
    session = await ort.InferenceSession.create(new Uint8Array(bytes), {
      intraOpNumThreads: settings.intraOpThreads,
      interOpNumThreads: settings.interOpThreads,
      executionMode: settings.executionMode,
      graphOptimizationLevel: settings.graphOptimization,
    });
  } catch (err) {
    result.loadError = message(err);
  }
  const threadsAfter = threadCount();
  if (session) {
    if (threadsBefore !== undefined && threadsAfter !== undefined) {
      result.threadsStarted = threadsAfter - threadsBefore;
    }
    notify({ phase: 'session' });
    result.checks = await runChecks(
      runOn(session),
      {
        inputs,
        rows: plan.rows,
        features: plan.features,
        repeats: plan.repeats,
        latencyRuns: plan.latencyRuns,
        expected,
        tolerance: plan.tolerance,
      },
      notify,
    );
  }
  result.memory.peakKb = process.resourceUsage().maxRSS;
  await send({ type: 'result', result });
  await session?.release();
  await warm.release();
}

if (require.main === module) {
  main(process.argv[2] ?? '.').then(
    () => process.exit(0),
    async (err: unknown) => {
      const errorType = err instanceof ChildError ? err.errorType : 'Unavailable';
      await send({ type: 'error', errorType, message: message(err) }).catch(() => undefined);
      process.exit(1);
    },
  );
}
