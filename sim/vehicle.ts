/**
 * The simulated on-vehicle runtime: what a vehicle does with each sensor frame while a candidate model
 * runs in shadow beside production.
 *
 * The critical path is production's: a frame arrives, the production model runs on it and its result is
 * delivered. The candidate never stands on that path. A frame is offered to the candidate only after its
 * production result has been delivered, into a bounded queue: when `shadowQueue` frames are already held
 * for the candidate (waiting or being run), the frame is dropped for the candidate and counted, never
 * held back, and production never waits for the candidate of any frame. The candidate takes its frames
 * in batches (`shadowBatch`, a partial one after `shadowFlushMs`), so that handing them over costs the
 * production thread one message per batch, not one per frame. A candidate that fails is counted too;
 * its errors never reach production.
 *
 * Models are handed in (`FrameModel`): `runnerModel` runs one through a ModelRunner on this thread, and
 * `ThreadModel` gives a model its own onnxruntime session in its own worker thread, so that a candidate
 * uses neither production's thread nor its session. `driveAtRate` feeds a runtime frames at a fixed rate
 * from a sensor thread and measures production's latency from each frame's arrival to its result.
 *
 * Simulation and bench code: it must never be imported by workflows, nor decide anything about a
 * rollout (the shadow phase's verdicts come from activities/fleet.ts and the analysis).
 */
import { Worker } from 'node:worker_threads';
import type { ModelRunner, RunnerSettings } from '../activities/deps';
import { FEATURES } from '../policies/model-contract';

/** A model on the vehicle: class probabilities [rows, 2] of frames' features [rows, FEATURES]. */
export interface FrameModel {
  run(features: Float32Array): Promise<Float32Array>;
}

/** A model run by `runner` on this thread, in the runner's session for (digest, settings). */
export function runnerModel(runner: ModelRunner, digest: string, settings?: RunnerSettings): FrameModel {
  return {
    run: async (features) => (await runner.run(digest, features, features.length / FEATURES, settings)).probs,
  };
}

export interface VehicleOptions {
  production: FrameModel;
  /** The candidate in shadow; absent, the vehicle runs production alone. */
  candidate?: FrameModel;
  /**
   * Most frames held for the candidate at once, waiting or being run; a frame offered beyond it is
   * dropped and counted. At least `shadowBatch`; default 256.
   */
  shadowQueue?: number;
  /** Frames the candidate runs in one call (a partial batch goes after `shadowFlushMs`); default 32. */
  shadowBatch?: number;
  /** Longest a partial batch waits for more frames while the candidate is idle; default 50 ms. */
  shadowFlushMs?: number;
  /** Called with each production result as it is delivered. */
  onResult?: (result: ProductionResult) => void;
  /** Called with each candidate output [1, 2], always after the production result of the same frame. */
  onShadow?: (frame: number, probs: Float32Array) => void;
}

export interface ProductionResult {
  frame: number;
  probs: Float32Array;
  /** Milliseconds from the frame's arrival to the delivery of this result. */
  latencyMs: number;
}

export interface VehicleStats {
  /** Frames whose production result was delivered. */
  delivered: number;
  /** Frames the candidate ran on, failed on, or never got because the queue was full. */
  shadowCompleted: number;
  shadowFailed: number;
  shadowDropped: number;
  /** Frames held for the candidate now (waiting or being run), and the most ever held at once. */
  shadowHeld: number;
  shadowPeakHeld: number;
}

interface Held {
  frame: number;
  features: Float32Array;
}

export class VehicleRuntime {
  private readonly production: FrameModel;
  private readonly candidate: FrameModel | undefined;
  private readonly capacity: number;
  private readonly batch: number;
  private readonly flushMs: number;
  private readonly onResult: VehicleOptions['onResult'];
  private readonly onShadow: VehicleOptions['onShadow'];
  private readonly waiting: Held[] = [];
  /** Frames of the batch the candidate is running; 0 when it is idle. */
  private inFlight = 0;
  private flushTimer: NodeJS.Timeout | undefined;
  /** Set by shadowIdle: partial batches go at once until nothing is held. */
  private flushing = false;
  private idleWaiters: (() => void)[] = [];
  private readonly counts = { delivered: 0, completed: 0, failed: 0, dropped: 0, peak: 0 };

  constructor(options: VehicleOptions) {
    const batch = options.shadowBatch ?? 32;
    const capacity = options.shadowQueue ?? Math.max(256, batch);
    const flushMs = options.shadowFlushMs ?? 50;
    if (!(Number.isInteger(batch) && batch >= 1)) {
      throw new RangeError(`shadowBatch must be a whole number >= 1 (got ${batch})`);
    }
    if (!(Number.isInteger(capacity) && capacity >= batch)) {
      throw new RangeError(`shadowQueue must be a whole number >= shadowBatch ${batch} (got ${capacity})`);
    }
    if (!(flushMs >= 0)) throw new RangeError(`shadowFlushMs must be >= 0 (got ${flushMs})`);
    this.production = options.production;
    this.candidate = options.candidate;
    this.capacity = capacity;
    this.batch = batch;
    this.flushMs = flushMs;
    this.onResult = options.onResult;
    this.onShadow = options.onShadow;
  }

  /**
   * Handles one frame that arrived at `arrivedAtNs` (process.hrtime.bigint(); now by default): runs
   * production, delivers its result, then offers the frame to the candidate. Resolves with the
   * production result as soon as it is delivered, whatever the candidate does.
   */
  async frame(
    frame: number,
    features: Float32Array,
    arrivedAtNs = process.hrtime.bigint(),
  ): Promise<ProductionResult> {
    const probs = await this.production.run(features);
    const result = { frame, probs, latencyMs: Number(process.hrtime.bigint() - arrivedAtNs) / 1e6 };
    this.counts.delivered++;
    this.onResult?.(result);
    if (this.candidate) this.offer(frame, features);
    return result;
  }

  stats(): VehicleStats {
    const c = this.counts;
    return {
      delivered: c.delivered,
      shadowCompleted: c.completed,
      shadowFailed: c.failed,
      shadowDropped: c.dropped,
      shadowHeld: this.held(),
      shadowPeakHeld: c.peak,
    };
  }

  /** Sends any partial batch now; resolves once no frame is held for the candidate. */
  shadowIdle(): Promise<void> {
    if (this.held() === 0) return Promise.resolve();
    this.flushing = true;
    this.pump();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private held(): number {
    return this.waiting.length + this.inFlight;
  }

  private offer(frame: number, features: Float32Array): void {
    if (this.held() >= this.capacity) {
      this.counts.dropped++;
      return;
    }
    this.waiting.push({ frame, features });
    this.counts.peak = Math.max(this.counts.peak, this.held());
    this.pump();
  }

  /** Gives the candidate its next batch when it is idle: a full one, or a partial one when flushing. */
  private pump(): void {
    if (this.inFlight > 0 || this.waiting.length === 0) return;
    if (this.waiting.length >= this.batch || this.flushing) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
      void this.runBatch(this.waiting.splice(0, this.batch));
    } else if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        if (this.inFlight === 0 && this.waiting.length > 0)
          void this.runBatch(this.waiting.splice(0, this.batch));
      }, this.flushMs);
      this.flushTimer.unref();
    }
  }

  private async runBatch(batch: Held[]): Promise<void> {
    this.inFlight = batch.length;
    const features = new Float32Array(batch.length * FEATURES);
    batch.forEach((h, i) => features.set(h.features, i * FEATURES));
    try {
      const probs = await this.candidate!.run(features);
      this.counts.completed += batch.length;
      batch.forEach((h, i) => this.onShadow?.(h.frame, probs.slice(2 * i, 2 * i + 2)));
    } catch {
      this.counts.failed += batch.length;
    }
    this.inFlight = 0;
    this.pump();
    if (this.held() === 0) {
      this.flushing = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}

/**
 * A model in its own onnxruntime session on its own worker thread (CPU, `intraOpThreads` threads,
 * sequential execution): running it takes no time on the calling thread beyond passing the frame and
 * its result. With `background` (the default), the thread runs at the lowest scheduling priority (nice
 * 19) on Linux, where that applies to the one thread: when the cores are busy, the scheduler gives
 * them to production first. Elsewhere it is left at normal priority. Close it when done.
 */
export class ThreadModel implements FrameModel {
  private readonly pending = new Map<
    number,
    { resolve: (p: Float32Array) => void; reject: (e: Error) => void }
  >();
  private nextId = 0;
  private failure: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: { id: number; probs?: Float32Array; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.probs) p.resolve(m.probs);
      else p.reject(new Error(m.error ?? 'model thread failed'));
    });
    worker.on('error', (e) => this.fail(e));
    worker.on('exit', () => this.fail(new Error('model thread exited')));
  }

  /** Starts the thread and builds the session from the model's bytes; resolves once it can run. */
  static async open(
    model: Uint8Array,
    settings: RunnerSettings & { background?: boolean } = {},
  ): Promise<ThreadModel> {
    const worker = new Worker(MODEL_THREAD, {
      eval: true,
      workerData: {
        ort: require.resolve('onnxruntime-node'),
        model,
        threads: settings.intraOpThreads ?? 1,
        opt: settings.graphOptimization ?? 'all',
        features: FEATURES,
        nice: (settings.background ?? true) && process.platform === 'linux' ? 19 : null,
      },
    });
    try {
      await new Promise<void>((resolve, reject) => {
        worker.once('error', reject);
        worker.once('message', (m: { ready?: boolean; error?: string }) => {
          worker.off('error', reject);
          if (m.ready) resolve();
          else reject(new Error(`model thread could not load the model: ${m.error}`));
        });
      });
    } catch (e) {
      await worker.terminate();
      throw e;
    }
    return new ThreadModel(worker);
  }

  run(features: Float32Array): Promise<Float32Array> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // A view is copied out, so that only its own bytes are sent, not all of its buffer's.
      const own = features.byteLength === features.buffer.byteLength ? features : features.slice();
      this.worker.postMessage({ id, features: own });
    });
  }

  async close(): Promise<void> {
    this.failure ??= new Error('model thread closed');
    await this.worker.terminate();
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }
}

/** The model thread: one session, one run at a time, in the order the runs were posted. */
const MODEL_THREAD = `
const { parentPort, workerData } = require('node:worker_threads');
const ort = require(workerData.ort);
const { model, threads, opt, features, nice } = workerData;
// On Linux, setpriority of "the calling process" (0) sets the calling thread's priority only.
if (nice !== null) require('node:os').setPriority(0, nice);
ort.InferenceSession.create(model, {
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: opt,
}).then((session) => {
  const input = session.inputNames[0];
  const output = session.outputNames[0];
  parentPort.on('message', async ({ id, features: f }) => {
    try {
      const tensor = new ort.Tensor('float32', f, [f.length / features, features]);
      const out = await session.run({ [input]: tensor });
      parentPort.postMessage({ id, probs: new Float32Array(out[output].data) });
    } catch (e) {
      parentPort.postMessage({ id, error: String(e) });
    }
  });
  parentPort.postMessage({ ready: true });
}, (e) => parentPort.postMessage({ ready: false, error: String(e) }));
`;

/**
 * The sensor: posts frame k at start + k / rateHz (start a few milliseconds after the thread is up),
 * stamped with process.hrtime.bigint() as it posts. Waits with Atomics.wait, so it holds no core.
 */
const SENSOR_THREAD = `
const { parentPort, workerData } = require('node:worker_threads');
const { count, periodNs } = workerData;
const cell = new Int32Array(new SharedArrayBuffer(4));
const start = process.hrtime.bigint() + 20000000n;
for (let k = 0; k < count; k++) {
  const due = start + BigInt(Math.round(k * periodNs));
  for (let now = process.hrtime.bigint(); now < due; now = process.hrtime.bigint()) {
    Atomics.wait(cell, 0, 0, Number(due - now) / 1e6);
  }
  parentPort.postMessage({ k, at: process.hrtime.bigint() });
}
`;

export interface DriveResult {
  /** Production latency per frame, arrival to delivered result, in milliseconds (frame order). */
  latencyMs: Float64Array;
  /** CPU time of this process over the run, over its wall time (1 = one core busy). */
  cores: number;
  wallMs: number;
}

/**
 * Feeds `runtime` the first `count` frames of `features` (row-major [*, FEATURES]) at `rateHz` from a
 * sensor thread, each frame arriving when the sensor posts it; resolves when every production result
 * has been delivered (the candidate may still be running: see `shadowIdle`).
 */
export async function driveAtRate(
  runtime: VehicleRuntime,
  features: Float32Array,
  count: number,
  rateHz: number,
): Promise<DriveResult> {
  if (count * FEATURES > features.length) throw new RangeError(`only ${features.length / FEATURES} frames`);
  const latencyMs = new Float64Array(count).fill(NaN);
  const sensor = new Worker(SENSOR_THREAD, { eval: true, workerData: { count, periodNs: 1e9 / rateHz } });
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  try {
    await new Promise<void>((resolve, reject) => {
      let delivered = 0;
      sensor.on('error', reject);
      sensor.on('message', ({ k, at }: { k: number; at: bigint }) => {
        const frame = features.slice(k * FEATURES, (k + 1) * FEATURES);
        runtime.frame(k, frame, at).then((r) => {
          latencyMs[k] = r.latencyMs;
          if (++delivered === count) resolve();
        }, reject);
      });
    });
  } finally {
    await sensor.terminate();
  }
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const cpu = process.cpuUsage(cpu0);
  return { latencyMs, cores: (cpu.user + cpu.system) / 1000 / wallMs, wallMs };
}
