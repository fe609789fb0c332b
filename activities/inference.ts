/**
 * Inference activities: the bench, a hardware-in-the-loop stand-in that runs a registered model under a
 * SKU's runtime settings.
 *
 * On golden inputs (deterministic frames from sim/frames.ts) it checks the output contract (probs of
 * shape [n, 2], finite, rows summing to 1), measures per-frame latency scaled to the SKU (its speed factor,
 * times the SKU's `slowdown` factor for the model's version when the input names the version), and checks that
 * repeated runs are bitwise identical. It returns a verdict with the numbers; it must never change the
 * registry, and never throw for a model that merely fails its bench (the workflow decides what follows).
 */
import { Context } from '@temporalio/activity';
import { quantile } from 'simple-statistics';
import type { BenchInput, BenchResult } from './contracts';
import type { ModelRunner, RunnerSettings } from './deps';
import { FEATURES, generateFrames, makeRng } from '../sim/frames';

export interface InferenceDeps {
  runner: ModelRunner;
}

/** Seed of the golden inputs; the same for every bench, SKU and model. */
export const GOLDEN_SEED = 'golden-inputs';
const GOLDEN_NIGHT_SHARE = 0.5;
const CLASSES = 2;
const ROW_SUM_TOLERANCE = 1e-4;

export function createInferenceActivities(deps: InferenceDeps) {
  const { runner } = deps;

  async function benchModel(input: BenchInput): Promise<BenchResult> {
    const { sku, goldenInputs: n, repeats } = input;
    const slowdown =
      input.version === undefined ? 1 : (sku.slowdown.find((s) => s.version === input.version)?.factor ?? 1);
    const scale = sku.speedFactor * slowdown;
    const settings: RunnerSettings = {
      intraOpThreads: sku.intraOpThreads,
      graphOptimization: sku.graphOptimization,
    };
    const golden = generateFrames(makeRng(GOLDEN_SEED), n, GOLDEN_NIGHT_SHARE);
    const result: BenchResult = {
      sku: sku.name,
      p95Ms: 0,
      p99Ms: 0,
      budgetMs: sku.latencyBudgetMs,
      deterministic: false,
      contractOk: false,
      passed: false,
    };
    const failures: string[] = [];

    // Contract and determinism: the full batch, `repeats` times.
    const outputs: Float32Array[] = [];
    try {
      for (let r = 0; r < repeats; r++) {
        outputs.push((await runner.run(input.digest, golden.features, n, settings)).probs);
        beat({ phase: 'batch', repeat: r });
      }
    } catch (err) {
      failures.push(`contract: the model does not run on golden inputs [${n}, ${FEATURES}]: ${message(err)}`);
    }
    const first = outputs[0];
    if (first) {
      const problem = contractProblem(first, n);
      result.contractOk = problem === null;
      if (problem) failures.push(`contract: ${problem}`);
      const diff = outputs.slice(1).map((o) => differingValues(first, o));
      result.deterministic = diff.every((d) => d === 0);
      if (!result.deterministic) {
        failures.push(
          `determinism: repeated runs differ (${diff.map((d, i) => `run ${i + 2}: ${d} of ${first.length} values`).join(', ')})`,
        );
      }
    }

    // Latency: every golden frame alone (batch 1), `repeats` times, scaled to the SKU.
    if (result.contractOk) {
      const samples: number[] = [];
      const rows = Array.from({ length: n }, (_, i) =>
        golden.features.slice(i * FEATURES, (i + 1) * FEATURES),
      );
      await runner.run(input.digest, rows[0]!, 1, settings); // warm-up, not measured
      for (let r = 0; r < repeats; r++) {
        for (const row of rows) {
          const { elapsedMs } = await runner.run(input.digest, row, 1, settings);
          samples.push(elapsedMs * scale);
        }
        beat({ phase: 'latency', repeat: r });
      }
      result.p95Ms = quantile(samples, 0.95);
      result.p99Ms = quantile(samples, 0.99);
      if (result.p95Ms > sku.latencyBudgetMs) {
        failures.push(
          `latency: p95 ${fmt(result.p95Ms)} ms exceeds the budget of ${fmt(sku.latencyBudgetMs)} ms on ${sku.name} ` +
            `(speed factor ${sku.speedFactor}${slowdown !== 1 ? `, slowdown x${slowdown} of version ${input.version}` : ''}, ` +
            `p99 ${fmt(result.p99Ms)} ms, ${samples.length} runs)`,
        );
      }
    } else {
      failures.push('latency: not measured because the contract test failed');
    }

    result.passed = result.contractOk && result.deterministic && result.p95Ms <= sku.latencyBudgetMs;
    if (!result.passed) result.reason = failures.join('; ');
    return result;
  }

  return { benchModel };
}

/** Why probs is not a valid [n, 2] probability table, or null when it is. */
function contractProblem(probs: Float32Array, n: number): string | null {
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
function differingValues(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.max(a.length, b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let d = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) d++;
  return d;
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

function message(err: unknown): string {
  const text = (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').trim();
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

/** Four significant digits: 0.0123, 1.234, 250. */
function fmt(ms: number): string {
  return String(Number(ms.toPrecision(4)));
}
