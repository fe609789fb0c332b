/**
 * Inference activities: the bench, a hardware-in-the-loop stand-in that runs a registered model under a
 * SKU's runtime settings.
 *
 * Each `benchModel` call starts one child Node process for its SKU (workers/bench-child.ts), so that the
 * memory the model takes is its own and can be held against a ceiling. The child verifies the model bytes
 * against their digest, builds an onnxruntime session with the SKU's intra-op threads and graph
 * optimisation (one inter-op thread, sequential execution) and runs the checks; this side judges them:
 *
 * - contract: probs of shape [n, 2], finite, rows summing to 1;
 * - golden set: when the model's registry record has one, its inputs must give its outputs within its
 *   tolerance (without one, the contract is checked on deterministic frames from policies/frames.ts);
 * - determinism: `repeats` runs of the batch are bitwise identical;
 * - latency: p50/p95/p99 of batch-1 runs, scaled to the SKU (its speed factor, times the SKU's `slowdown`
 *   for the model's version), against the SKU's budget or the pack's budget for the SKU when stricter;
 * - memory: the model's share of the child's peak resident memory against the pack's ceiling for the SKU;
 * - compatibility: a SKU the pack's `compatibleSkus` leaves out fails at once, without a child.
 *
 * With a record, the report (verdict, inputs, host) is stored write-once beside it, at
 * `<record key without .json>.bench/<sku>/<rolloutId>.json`. A retried bench whose report is already
 * stored returns that report's verdict without measuring again: the stored report is the registry's
 * account of the bench, and a second measurement would give other latencies under a write-once key.
 *
 * It must never change the registry's records or pointers, and never throw for a model that merely fails
 * its bench (the workflow decides what follows): it throws only when the infrastructure fails
 * (`Unavailable`, retried) or a model or golden blob is missing or does not match its digest.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { env as ortEnv } from 'onnxruntime-node';
import type { BenchInput, BenchResult, ModelRecord, SkuBudget } from './contracts';
import type { ModelRunner, ObjectStore, RunnerSettings } from './deps';
import { parseStoredJson } from './store';
import { ErrorType, fail } from '../errors';
import type { Sku } from '../policies/schema';
import { FEATURES } from '../policies/model-contract';
import { generateFrames } from '../policies/frames';
import { makeRng } from '../policies/rng';
import {
  CLASSES,
  EXPECTED_FILE,
  INPUTS_FILE,
  MODEL_FILE,
  PLAN_FILE,
  floatsOf,
  message,
  runChecks,
  type ChildMessage,
  type ChildPlan,
  type ChildResult,
  type Checks,
  type Progress,
} from '../workers/bench-child';
import { blobKey } from '../workers/model-runner';

export interface InferenceDeps {
  /**
   * The registry's object store: model and golden blobs, records, and where bench reports are kept. With
   * it, every bench runs in a child process.
   */
  store?: ObjectStore;
  /**
   * Without a store, the bench runs in the worker's own process on this runner: no isolation, no memory
   * numbers, no record. For tests of code around the bench that hand only a runner.
   */
  runner?: ModelRunner;
  /** The bench process is killed after this long. Default 10 minutes (the bench activity allows 15). */
  benchTimeoutMs?: number;
}

/** A bench as stored beside the model's registry record. */
export interface BenchReport {
  apiVersion: 'fleetgate/v1';
  kind: 'BenchReport';
  /** Where it is stored. */
  key: string;
  recordKey: string;
  rolloutId: string;
  model: { name: string; version: string; digest: string };
  /** The SKU as benched: settings, speed factor, slowdowns, budget. */
  sku: Sku;
  /** The pack's budgets for this SKU, when its manifest sets any. */
  packBudget?: SkuBudget;
  inputs: {
    source: 'golden set' | 'generated frames';
    rows: number;
    features: number;
    repeats: number;
    /** Batch-1 latency runs per repeat. */
    latencyRuns: number;
  };
  result: BenchResult;
  host: {
    cpus: number;
    cpuModel: string;
    platform: string;
    arch: string;
    osRelease: string;
    memoryMb: number;
    loadAverage: number[];
    node: string;
    onnxruntime: string;
  };
  /** When the bench started, and how long it took. */
  at: string;
  durationMs: number;
}

/** Seed of the generated golden frames; the same for every bench, SKU and model. */
export const GOLDEN_SEED = 'golden-inputs';
const GOLDEN_NIGHT_SHARE = 0.5;
const DEFAULT_TIMEOUT_MS = 10 * 60_000;
const HEARTBEAT_MS = 5_000;

/** Where the bench reports of a registry record are kept: `<record key without .json>.bench/`. */
function reportPrefix(recordKey: string): string {
  return `${recordKey.replace(/\.json$/, '')}.bench/`;
}
export function benchReportKey(recordKey: string, sku: string, rolloutId: string): string {
  return `${reportPrefix(recordKey)}${sku}/${rolloutId}.json`;
}

/** Every bench report stored beside a registry record, by SKU, oldest first. */
export async function benchReports(store: ObjectStore, recordKey: string): Promise<BenchReport[]> {
  const reports: BenchReport[] = [];
  for (const key of await store.list(reportPrefix(recordKey))) {
    if (!key.endsWith('.json')) continue;
    const bytes = await store.get(key);
    if (bytes !== undefined) reports.push(parseStoredJson<BenchReport>(bytes, key));
  }
  return reports.sort(
    (a, b) => (a.sku.name < b.sku.name ? -1 : a.sku.name > b.sku.name ? 1 : 0) || a.at.localeCompare(b.at),
  );
}

/** What the bench runs: rows of features, and the outputs they must give when they are a golden set. */
interface BenchInputs {
  source: BenchReport['inputs']['source'];
  rows: number;
  features: number;
  /** Little-endian float32 [rows, features]. */
  inputs: Buffer;
  expected?: Buffer;
  tolerance?: number;
}

/** What a bench process gave back: its measurements, or how it died while running the model. */
type ChildOutcome = { result: ChildResult } | { died: string };

export function createInferenceActivities(deps: InferenceDeps) {
  const { store, runner } = deps;
  const timeoutMs = deps.benchTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!store && !runner) throw new Error('createInferenceActivities: pass a store (or, in tests, a runner)');

  // Benches of one worker run one at a time (the workflow benches its SKUs in parallel): two children
  // sharing the host's cores would each measure the other's load as their own latency.
  let turn: Promise<void> = Promise.resolve();
  async function oneAtATime<T>(f: () => Promise<T>): Promise<T> {
    const previous = turn;
    let release!: () => void;
    turn = new Promise((r) => (release = r));
    const pulse = setInterval(() => beat({ phase: 'waiting for another bench to finish' }), HEARTBEAT_MS);
    try {
      await previous;
    } finally {
      clearInterval(pulse);
    }
    try {
      return await f();
    } finally {
      release();
    }
  }

  async function benchModel(input: BenchInput): Promise<BenchResult> {
    const at = new Date();
    const record =
      input.recordKey === undefined ? undefined : await readRecord(input.recordKey, input.digest);
    const reportKey =
      input.recordKey === undefined
        ? undefined
        : benchReportKey(input.recordKey, input.sku.name, input.rolloutId);
    if (store && reportKey) {
      const stored = await readReport(store, reportKey, input.digest);
      if (stored) return stored.result;
    }

    const { result, inputs, onnxruntime } = await bench(input, record);
    if (!store || !record || !reportKey) return result;
    result.reportKey = reportKey;
    const report: BenchReport = {
      apiVersion: 'fleetgate/v1',
      kind: 'BenchReport',
      key: reportKey,
      recordKey: input.recordKey!,
      rolloutId: input.rolloutId,
      model: { name: record.name, version: record.version, digest: record.digest },
      sku: input.sku,
      ...(record.skuBudgets?.[input.sku.name] ? { packBudget: record.skuBudgets[input.sku.name] } : {}),
      inputs,
      result,
      host: {
        cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model ?? 'unknown',
        platform: process.platform,
        arch: process.arch,
        osRelease: os.release(),
        memoryMb: Math.round(os.totalmem() / 2 ** 20),
        loadAverage: os.loadavg().map((l) => Number(l.toFixed(2))),
        node: process.version,
        onnxruntime,
      },
      at: at.toISOString(),
      durationMs: Date.now() - at.getTime(),
    };
    try {
      await store.putIfAbsent(reportKey, Buffer.from(`${JSON.stringify(report, null, 2)}\n`));
    } catch (err) {
      // Another attempt of this bench stored its report first: that one stands.
      if (!(err instanceof ApplicationFailure && err.type === ErrorType.ImmutableConflict)) throw err;
      const stored = await readReport(store, reportKey, input.digest);
      if (!stored) throw err;
      return stored.result;
    }
    return result;
  }

  /** Measures and judges; the verdict, what ran, and the onnxruntime version it ran on. */
  async function bench(
    input: BenchInput,
    record: ModelRecord | undefined,
  ): Promise<{ result: BenchResult; inputs: BenchReport['inputs']; onnxruntime: string }> {
    const { sku, repeats } = input;
    const slowdown =
      input.version === undefined ? 1 : (sku.slowdown.find((s) => s.version === input.version)?.factor ?? 1);
    const scale = sku.speedFactor * slowdown;
    const pack = record?.skuBudgets?.[sku.name];
    const packLatency = pack?.latencyP95Ms;
    const budgetMs =
      packLatency === undefined ? sku.latencyBudgetMs : Math.min(sku.latencyBudgetMs, packLatency);
    const ceiling = pack?.memoryMb;
    const result: BenchResult = {
      sku: sku.name,
      p95Ms: 0,
      p99Ms: 0,
      budgetMs,
      deterministic: false,
      contractOk: false,
      passed: false,
      ...(ceiling === undefined ? {} : { memoryCeilingMb: ceiling }),
    };
    const failures: string[] = [];
    let onnxruntime = ortEnv.versions.node ?? ortEnv.versions.common;
    const done = (inputs: BenchReport['inputs']) => {
      result.passed = failures.length === 0;
      if (!result.passed) result.reason = failures.join('; ');
      return { result, inputs, onnxruntime };
    };
    const nothing = {
      source: 'generated frames' as const,
      rows: 0,
      features: FEATURES,
      repeats,
      latencyRuns: 0,
    };

    if (record?.compatibleSkus && !record.compatibleSkus.includes(sku.name)) {
      result.compatible = false;
      failures.push(
        `compatibility: ${record.name}@${record.version} declares it runs on ${record.compatibleSkus.join(', ') || 'no SKU'}, ` +
          `not on ${sku.name}; nothing was run`,
      );
      return done(nothing);
    }
    if (record?.compatibleSkus) result.compatible = true;

    const data = record?.golden ? await goldenInputs(record) : generatedInputs(input.goldenInputs);
    if (typeof data === 'string') {
      failures.push(`golden: ${data}; nothing was run`);
      return done({ ...nothing, source: 'golden set' });
    }
    const inputs = {
      source: data.source,
      rows: data.rows,
      features: data.features,
      repeats,
      latencyRuns: input.goldenInputs,
    };
    if (data.expected) {
      result.goldenRows = data.rows;
      result.goldenTolerance = data.tolerance;
    }
    const settings: Required<RunnerSettings> = {
      intraOpThreads: sku.intraOpThreads,
      graphOptimization: sku.graphOptimization,
    };
    const plan: ChildPlan = {
      digest: input.digest,
      rows: data.rows,
      features: data.features,
      repeats,
      latencyRuns: input.goldenInputs,
      ...(data.tolerance === undefined ? {} : { tolerance: data.tolerance }),
      settings,
    };

    let checks: Checks | undefined;
    if (store) {
      const model = await modelBytes(input.digest);
      const outcome = await oneAtATime(() => inChild(model, data, plan));
      if ('died' in outcome) {
        failures.push(`bench process: ${outcome.died}`);
        return done(inputs);
      }
      const child = outcome.result;
      onnxruntime = child.onnxruntime;
      result.pid = child.pid;
      result.isolated = true;
      result.session = {
        ...child.settings,
        ...(child.threadsStarted === undefined ? {} : { threadsStarted: child.threadsStarted }),
      };
      result.peakRssMb = child.memory.peakKb / 1024;
      result.baselineRssMb = child.memory.baselineKb / 1024;
      result.modelRssMb = (child.memory.peakKb - child.memory.baselineKb) / 1024;
      if (child.loadError !== undefined) {
        failures.push(`contract: onnxruntime cannot load the model: ${child.loadError}`);
      }
      checks = child.checks;
    } else {
      checks = await oneAtATime(() => inProcess(runner!, input.digest, data, plan));
      result.pid = process.pid;
      result.isolated = false;
      result.session = { ...settings, interOpThreads: 1, executionMode: 'sequential' };
    }

    const shape = `[${data.rows}, ${data.features}]`;
    if (checks?.runError !== undefined) {
      failures.push(
        `contract: the model does not run on ${data.expected ? "the pack's " : ''}golden inputs ${shape}: ${checks.runError}`,
      );
    }
    if (checks?.contractProblem !== undefined) failures.push(`contract: ${checks.contractProblem}`);
    result.contractOk = checks?.contractOk ?? false;
    if (data.features !== FEATURES) {
      // The pack's own golden set can run a model the fleet's frames cannot.
      failures.push(
        `contract: the pack's golden inputs have ${data.features} features a row, the fleet's frames ${FEATURES}`,
      );
      result.contractOk = false;
    }

    if (data.expected) {
      const g = checks?.golden;
      if (!g) {
        failures.push('golden: outputs not compared because the contract test failed');
      } else {
        result.goldenMaxAbsDiff = g.maxAbsDiff;
        if (g.offending > 0) {
          const first = g.first
            ? `; first at row ${g.first.row}: expected [${g.first.expected.map(num).join(', ')}], got [${g.first.actual.map(num).join(', ')}]`
            : '';
          failures.push(
            `golden: ${g.offending} of ${checks!.values} output values differ from the expected by more than ` +
              `the tolerance ${data.tolerance} (max abs diff ${num(g.maxAbsDiff)})${first}`,
          );
        }
      }
    }

    if (checks && checks.values > 0) {
      const diff = checks.differing;
      result.deterministic = diff.every((d) => d === 0);
      if (!result.deterministic) {
        failures.push(
          `determinism: repeated runs differ (${diff.map((d, i) => `run ${i + 2}: ${d} of ${checks.values} values`).join(', ')})`,
        );
      }
    }

    const latency = checks?.latency;
    if (latency) {
      result.p50Ms = latency.p50Ms * scale;
      result.p95Ms = latency.p95Ms * scale;
      result.p99Ms = latency.p99Ms * scale;
      result.runs = latency.runs;
      if (result.p95Ms > budgetMs) {
        const whose =
          packLatency !== undefined && packLatency < sku.latencyBudgetMs
            ? `; the pack's budget for ${sku.name}, stricter than the fleet's ${fmt(sku.latencyBudgetMs)} ms`
            : '';
        failures.push(
          `latency: p95 ${fmt(result.p95Ms)} ms exceeds the budget of ${fmt(budgetMs)} ms on ${sku.name} ` +
            `(speed factor ${sku.speedFactor}${slowdown !== 1 ? `, slowdown x${slowdown} of version ${input.version}` : ''}, ` +
            `p99 ${fmt(result.p99Ms)} ms, ${latency.runs} runs${whose})`,
        );
      }
    } else {
      failures.push('latency: not measured because the contract test failed');
    }

    if (ceiling !== undefined) {
      if (result.modelRssMb === undefined) {
        failures.push(
          `memory: not measured, so the ceiling of ${fmt(ceiling)} MiB on ${sku.name} cannot be checked`,
        );
      } else if (result.modelRssMb > ceiling) {
        failures.push(
          `memory: the model's peak resident memory of ${fmt(result.modelRssMb)} MiB exceeds the ceiling of ` +
            `${fmt(ceiling)} MiB on ${sku.name} (bench process peak ${fmt(result.peakRssMb!)} MiB, ` +
            `${fmt(result.baselineRssMb!)} MiB of it before the model was loaded)`,
        );
      }
    }
    return done(inputs);
  }

  /** The record the input names; it must be of the model benched. */
  async function readRecord(recordKey: string, digest: string): Promise<ModelRecord> {
    if (!store) {
      throw fail(
        ErrorType.InvalidInput,
        `the bench was given record ${recordKey} but the inference activities have no object store; ` +
          'pass `store` to createInferenceActivities',
      );
    }
    const bytes = await store.get(recordKey);
    if (bytes === undefined) {
      throw fail(ErrorType.NotFound, `registry record ${recordKey} does not exist; register the pack first`, {
        recordKey,
      });
    }
    const record = parseStoredJson<ModelRecord>(bytes, recordKey);
    if (record.digest !== digest) {
      throw fail(
        ErrorType.DigestMismatch,
        `registry record ${recordKey} is of model ${String(record.digest).slice(0, 12)}, but the bench was asked ` +
          `to run ${digest.slice(0, 12)}`,
        { recordKey, recordDigest: record.digest, digest },
      );
    }
    return record;
  }

  /** A blob's bytes, checked against the digest they are stored under. */
  async function blob(digest: string, what: string): Promise<Buffer> {
    const bytes = await store!.get(blobKey(digest));
    if (bytes === undefined) {
      throw fail(ErrorType.NotFound, `${what} ${digest.slice(0, 12)} is not in the object store`, { digest });
    }
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== digest) {
      throw fail(
        ErrorType.DigestMismatch,
        `stored ${what} ${digest.slice(0, 12)} hashes to ${actual.slice(0, 12)}`,
        {
          digest,
          actual,
        },
      );
    }
    return bytes;
  }

  function modelBytes(digest: string): Promise<Buffer> {
    return blob(digest, 'model');
  }

  /** The record's golden set, or why it cannot be run (the pack's fault, so a failed bench). */
  async function goldenInputs(record: ModelRecord): Promise<BenchInputs | string> {
    const g = record.golden!;
    const inputs = await blob(g.inputs, 'golden inputs');
    const expected = await blob(g.outputs, 'golden outputs');
    if (!Number.isInteger(g.rows) || g.rows < 1) return `the golden set has ${g.rows} rows`;
    if (!(typeof g.tolerance === 'number' && g.tolerance >= 0)) {
      return `the golden set's tolerance ${g.tolerance} is not a number at least 0`;
    }
    const floats = inputs.length / 4;
    if (floats === 0 || !Number.isInteger(floats / g.rows)) {
      return `the golden inputs hold ${inputs.length} bytes, not ${g.rows} rows of float32 features`;
    }
    if (expected.length !== g.rows * CLASSES * 4) {
      return `the golden outputs hold ${expected.length} bytes, not [${g.rows}, ${CLASSES}] float32 = ${g.rows * CLASSES * 4}`;
    }
    return {
      source: 'golden set',
      rows: g.rows,
      features: floats / g.rows,
      inputs,
      expected,
      tolerance: g.tolerance,
    };
  }

  /** Runs the bench in a child process; throws when the process fails for reasons of its own. */
  async function inChild(model: Buffer, data: BenchInputs, plan: ChildPlan): Promise<ChildOutcome> {
    let dir: string;
    try {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetgate-bench-'));
    } catch (err) {
      throw unavailable('could not create the bench work directory', err);
    }
    try {
      try {
        await fs.writeFile(path.join(dir, PLAN_FILE), JSON.stringify(plan));
        await fs.writeFile(path.join(dir, MODEL_FILE), model);
        await fs.writeFile(path.join(dir, INPUTS_FILE), data.inputs);
        if (data.expected) await fs.writeFile(path.join(dir, EXPECTED_FILE), data.expected);
      } catch (err) {
        throw unavailable(`could not write the bench work directory ${dir}`, err);
      }
      return await runChild(dir, timeoutMs);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  return { benchModel };
}

/** The deterministic frames benched when the record has no golden set. */
function generatedInputs(n: number): BenchInputs {
  const features = generateFrames(makeRng(GOLDEN_SEED), n, GOLDEN_NIGHT_SHARE).features;
  const inputs = Buffer.alloc(features.length * 4);
  features.forEach((v, i) => inputs.writeFloatLE(v, i * 4));
  return { source: 'generated frames', rows: n, features: FEATURES, inputs };
}

/** The checks in the worker's process, on its runner (no store: no child). */
async function inProcess(
  runner: ModelRunner,
  digest: string,
  data: BenchInputs,
  plan: ChildPlan,
): Promise<Checks> {
  // A missing or tampered model is not the model failing its bench: rethrown after the checks.
  let infrastructure: unknown;
  const checks = await runChecks(
    async (features, rows) => {
      try {
        return await runner.run(digest, features, rows, plan.settings);
      } catch (err) {
        if (err instanceof ApplicationFailure && INFRASTRUCTURE.includes(err.type ?? ''))
          infrastructure ??= err;
        throw err;
      }
    },
    {
      inputs: floatsOf(data.inputs),
      rows: plan.rows,
      features: plan.features,
      repeats: plan.repeats,
      latencyRuns: plan.latencyRuns,
    },
    progress,
  );
  if (infrastructure !== undefined) throw infrastructure;
  return checks;
}
const INFRASTRUCTURE: string[] = [ErrorType.NotFound, ErrorType.DigestMismatch, ErrorType.Unavailable];

/** The file of the bench child next to this module's own (TypeScript through tsx, or compiled JavaScript). */
function childCommand(dir: string): string[] {
  const ext = path.extname(__filename);
  const script = path.join(__dirname, '..', 'workers', `bench-child${ext}`);
  // tsx's CommonJS hook by absolute path: it works whatever the worker's working directory and however it
  // was started (`node --import tsx`, or bin/fleetgate.js, which leaves no trace in process.execArgv).
  const loader = ext === '.ts' ? ['--require', require.resolve('tsx/cjs')] : [];
  return [...loader, script, dir];
}

/**
 * Starts the bench child on a work directory and waits for its report, heartbeating meanwhile. The child is
 * killed on timeout and on the activity's cancellation. Before it reports `ready` (Node, tsx and onnxruntime
 * up), any failure is the infrastructure's and throws Unavailable; after, a crash or a timeout is charged to
 * the model and comes back as `died`.
 */
function runChild(dir: string, timeoutMs: number): Promise<ChildOutcome> {
  const signal = cancellation();
  if (signal?.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<ChildOutcome>((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, childCommand(dir), {
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        serialization: 'advanced',
      });
    } catch (err) {
      reject(unavailable('could not start the bench process', err));
      return;
    }
    let output = '';
    let ready = false;
    let phase = 'starting';
    let result: ChildResult | undefined;
    let error: Extract<ChildMessage, { type: 'error' }> | undefined;
    let timedOut = false;
    let aborted = false;
    let settled = false;
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-2000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const pulse = setInterval(() => beat({ phase, pid: child.pid }), HEARTBEAT_MS);
    const onAbort = () => {
      aborted = true;
      child.kill('SIGKILL');
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const settle = (f: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearInterval(pulse);
      signal?.removeEventListener('abort', onAbort);
      f();
    };

    child.on('message', (m: ChildMessage) => {
      if (m.type === 'ready') {
        ready = true;
        phase = 'loading the model';
      } else if (m.type === 'progress') {
        phase = progressPhase(m);
        beat({ ...m, pid: child.pid });
      } else if (m.type === 'result') {
        result = m.result;
      } else if (m.type === 'error') {
        error = m;
      }
    });
    child.on('error', (err) => {
      child.kill('SIGKILL');
      settle(() => reject(unavailable('the bench process failed', err)));
    });
    child.on('close', (code, sig) => {
      settle(() => {
        if (aborted) return reject(signal?.reason as Error);
        if (error) return reject(fail(ErrorType[error.errorType], error.message));
        if (result) return resolve({ result });
        const said = output.trim() === '' ? '' : `; its last output: ${message(output)}`;
        const how = timedOut
          ? `was killed after ${timeoutMs} ms`
          : sig
            ? `was killed by ${sig}`
            : `exited with code ${code}`;
        if (ready) return resolve({ died: `the bench process ${how} while ${phase}${said}` });
        reject(fail(ErrorType.Unavailable, `the bench process ${how} before it was ready${said}`));
      });
    });
  });
}

function progressPhase(p: Progress): string {
  if (p.phase === 'session') return 'running the golden inputs';
  return p.phase === 'batch'
    ? `running the golden inputs (repeat ${p.repeat + 1})`
    : `measuring latency (repeat ${p.repeat + 1})`;
}

function progress(p: Progress): void {
  beat(p);
}

/** The stored report at key, if any; it must be of the model benched. */
async function readReport(store: ObjectStore, key: string, digest: string): Promise<BenchReport | undefined> {
  const bytes = await store.get(key);
  if (bytes === undefined) return undefined;
  const report = parseStoredJson<BenchReport>(bytes, key);
  if (report.model?.digest !== digest) {
    throw fail(
      ErrorType.ImmutableConflict,
      `bench report ${key} is of model ${String(report.model?.digest).slice(0, 12)}, not ${digest.slice(0, 12)}`,
      { key },
    );
  }
  return report;
}

/** Heartbeats when running inside an activity; a no-op in plain calls (tests, scripts). */
function beat(details: unknown): void {
  let ctx: Context;
  try {
    ctx = Context.current();
  } catch {
    return;
  }
  ctx.heartbeat(details);
}

/** The activity's cancellation signal, or undefined outside an activity. */
function cancellation(): AbortSignal | undefined {
  try {
    return Context.current().cancellationSignal;
  } catch {
    return undefined;
  }
}

function unavailable(what: string, err: unknown): ApplicationFailure {
  const e = err instanceof Error ? err : new Error(String(err));
  return fail(ErrorType.Unavailable, `bench: ${what}: ${e.message}`, undefined, e);
}

/** Four significant digits: 0.0123, 1.234, 250. */
function fmt(ms: number): string {
  return String(Number(ms.toPrecision(4)));
}
/** An output value, to six significant digits. */
function num(v: number): string {
  return Number.isFinite(v) ? String(Number(v.toPrecision(6))) : String(v);
}
