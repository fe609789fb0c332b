/**
 * Ground truth of a scenario: per cohort, is the candidate really worse than production, about the
 * same, or better, under that cohort's conditions? Decided by a large offline evaluation that shares
 * nothing with the rollout: its own seeded frames (never the rollout's events), both models run with
 * onnxruntime on the same frames, no sampling of vehicles, labels or waves.
 *
 * Per cohort and per drift period (the conditions at the start, then after each drift that touches the
 * cohort), for each metric, candidate minus production:
 * - error_rate: share of frames misclassified at argmax; the difference is paired (same frames), its
 *   standard error sd(d)/sqrt(n) of the per-frame differences d.
 * - latency_ms: the simulated vehicle latency, exactly: the model's frame cost (activities/fleet.ts
 *   FRAME_COST, from its size) x the SKU's speedFactor x the SKU's slowdown of that model version x the
 *   mean of the fleet's lognormal noise. Linear scale: candidate - production in ms; log scale: the ratio
 *   minus 1. No sampling error.
 * - safety_events: missed hazards per vehicle-hour; the rate ratio minus 1 (relative, as its margin is),
 *   with the delta-method standard error of the log ratio.
 *
 * A period is `regressed` when any guardrail metric of the policy is worse than production by more than
 * its margin; `improved` when the error rate is better by more than z x its standard error (z the
 * two-sided normal quantile of the policy's alpha) and no other guardrail is worse by more than
 * max(z x SE, margin / 10); `neutral` otherwise. A cohort is regressed when any of its periods is,
 * improved when all are, neutral otherwise.
 *
 * Activity-side: runs models through a ModelRunner the caller builds (workers/ is the composition root).
 */
import { FRAME_COST } from '../activities/fleet';
import type { ModelRunner } from '../activities/deps';
import { parseDuration } from '../policies/duration';
import { normalQuantile } from '../policies/normal';
import type { CohortSpec, FleetManifest, Metric, Policy, Sku } from '../policies/schema';
import { CRITICAL_CLASS, FEATURES } from '../policies/model-contract';
import { generateFrames, type FrameConditions } from './frames';
import { makeRng } from '../policies/rng';

export type TruthLabel = 'regressed' | 'neutral' | 'improved';

export interface TruthModel {
  digest: string;
  version: string;
}

export interface MetricTruth {
  metric: Metric['name'];
  /** Production's and the candidate's value (error share, ms, or safety events per vehicle-hour). */
  production: number;
  candidate: number;
  /** Candidate minus production, on the scale of the policy's margin (relative for ratios). */
  delta: number;
  /** Standard error of `delta` (0 when it is exact). */
  se: number;
  /** The policy's margin, when the policy lists the metric. */
  margin?: number;
  role?: Metric['role'];
  /** `worse`: above the margin; `better`: below zero by more than z x se; `same` otherwise. */
  verdict: 'worse' | 'same' | 'better';
}

export interface PeriodTruth {
  /** Simulated time after the start from which the conditions hold ("0" for the start). */
  from: string;
  conditions: Required<FrameConditions>;
  frames: number;
  metrics: MetricTruth[];
  truth: TruthLabel;
}

export interface CohortTruth {
  cohort: string;
  sku: string;
  truth: TruthLabel;
  /** One line: which metric made it so. */
  reason: string;
  periods: PeriodTruth[];
}

export interface TruthInput {
  runner: ModelRunner;
  fleet: FleetManifest;
  policy: Policy;
  production: TruthModel;
  candidate: TruthModel;
  /** Frames per cohort and period. */
  frames: number;
  /** Seed of the evaluation's frames: never one of the rollout's streams. */
  key: string;
}

const CHUNK = 32_768;
/** Mean of the fleet's latency noise exp(0.2 z). */
const NOISE_MEAN = Math.exp(0.02);

/** The ground truth of every cohort of the fleet. */
export async function groundTruth(input: TruthInput): Promise<CohortTruth[]> {
  const out: CohortTruth[] = [];
  for (const cohort of input.fleet.cohorts) out.push(await cohortTruth(input, cohort));
  return out;
}

/** The conditions a cohort drives under, at the start and after each drift that touches it. */
export function cohortPeriods(
  fleet: FleetManifest,
  cohort: CohortSpec,
): { from: string; atMs: number; conditions: Required<FrameConditions> }[] {
  let cur: Required<FrameConditions> = {
    nightShare: cohort.nightShare,
    rainShare: cohort.rainShare,
    sensorNoise: cohort.sensorNoise,
  };
  const periods = [{ from: '0', atMs: 0, conditions: cur }];
  const drifts = fleet.drift
    .filter((d) => !d.cohorts || d.cohorts.includes(cohort.name))
    .map((d) => ({ d, atMs: parseDuration(d.at) ?? 0 }))
    .sort((a, b) => a.atMs - b.atMs);
  for (const { d, atMs } of drifts) {
    cur = {
      nightShare: d.conditions.nightShare ?? cur.nightShare,
      rainShare: d.conditions.rainShare ?? cur.rainShare,
      sensorNoise: d.conditions.sensorNoise ?? cur.sensorNoise,
    };
    if (atMs === 0) periods[0] = { from: '0', atMs: 0, conditions: cur };
    else periods.push({ from: String(d.at), atMs, conditions: cur });
  }
  return periods;
}

async function cohortTruth(input: TruthInput, cohort: CohortSpec): Promise<CohortTruth> {
  const sku = input.fleet.skus.find((s) => s.name === cohort.sku)!;
  const periods: PeriodTruth[] = [];
  for (const [i, p] of cohortPeriods(input.fleet, cohort).entries()) {
    const rng = makeRng(`${input.key}|${cohort.name}|${i}`);
    const frames = generateFrames(rng, input.frames, p.conditions);
    const prod = await predict(input.runner, input.production.digest, frames.features, frames.count);
    const cand = await predict(input.runner, input.candidate.digest, frames.features, frames.count);
    const metrics = [
      errorRate(frames.labels, prod, cand),
      await latency(input, sku),
      safety(frames.labels, prod, cand, input.fleet.eventsPerVehicleHour),
    ];
    const label = classify(input.policy, metrics);
    periods.push({ from: p.from, conditions: p.conditions, frames: frames.count, metrics, truth: label });
  }
  const truth: TruthLabel = periods.some((p) => p.truth === 'regressed')
    ? 'regressed'
    : periods.every((p) => p.truth === 'improved')
      ? 'improved'
      : 'neutral';
  return { cohort: cohort.name, sku: sku.name, truth, reason: explain(truth, periods), periods };
}

/** Argmax predictions of a model over frames, in chunks. */
async function predict(
  runner: ModelRunner,
  digest: string,
  features: Float32Array,
  count: number,
): Promise<Uint8Array> {
  const pred = new Uint8Array(count);
  for (let start = 0; start < count; start += CHUNK) {
    const rows = Math.min(CHUNK, count - start);
    const { probs } = await runner.run(
      digest,
      features.slice(start * FEATURES, (start + rows) * FEATURES),
      rows,
    );
    for (let r = 0; r < rows; r++) pred[start + r] = probs[2 * r + 1]! > probs[2 * r]! ? 1 : 0;
  }
  return pred;
}

function errorRate(labels: Uint8Array, prod: Uint8Array, cand: Uint8Array): MetricTruth {
  const n = labels.length;
  let ep = 0;
  let ec = 0;
  let sumD2 = 0;
  for (let i = 0; i < n; i++) {
    const p = prod[i] !== labels[i] ? 1 : 0;
    const c = cand[i] !== labels[i] ? 1 : 0;
    ep += p;
    ec += c;
    sumD2 += (c - p) * (c - p);
  }
  const delta = (ec - ep) / n;
  const varD = sumD2 / n - delta * delta;
  return {
    metric: 'error_rate',
    production: ep / n,
    candidate: ec / n,
    delta,
    se: Math.sqrt(Math.max(0, varD) / n),
    verdict: 'same',
  };
}

async function latency(input: TruthInput, sku: Sku): Promise<MetricTruth> {
  const ms = async (m: TruthModel) => {
    const bytes = await input.runner.modelBytes(m.digest);
    const slow = sku.slowdown.find((s) => s.version === m.version)?.factor ?? 1;
    return (FRAME_COST.baseMs + (FRAME_COST.perKiBMs * bytes) / 1024) * sku.speedFactor * slow * NOISE_MEAN;
  };
  const production = await ms(input.production);
  const candidate = await ms(input.candidate);
  const log = input.policy.analysis.metrics.find((m) => m.name === 'latency_ms')?.scale === 'log';
  return {
    metric: 'latency_ms',
    production,
    candidate,
    delta: log ? candidate / production - 1 : candidate - production,
    se: 0,
    verdict: 'same',
  };
}

function safety(labels: Uint8Array, prod: Uint8Array, cand: Uint8Array, perHour: number): MetricTruth {
  let mp = 0;
  let mc = 0;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] !== CRITICAL_CLASS) continue;
    if (prod[i] !== CRITICAL_CLASS) mp++;
    if (cand[i] !== CRITICAL_CLASS) mc++;
  }
  const n = labels.length;
  const ratio = mp === 0 ? (mc === 0 ? 1 : Infinity) : mc / mp;
  const se = mp > 0 && mc > 0 ? ratio * Math.sqrt(1 / mc + 1 / mp) : 0;
  return {
    metric: 'safety_events',
    production: (mp / n) * perHour,
    candidate: (mc / n) * perHour,
    delta: ratio - 1,
    se,
    verdict: 'same',
  };
}

/** Sets each metric's verdict against the policy and returns the period's label. */
export function classify(policy: Policy, metrics: MetricTruth[]): TruthLabel {
  const z = normalQuantile(1 - policy.analysis.alpha / 2);
  const guardrails = new Map(
    policy.analysis.metrics.filter((m) => m.role === 'guardrail').map((m) => [m.name, m]),
  );
  for (const m of metrics) {
    const spec = policy.analysis.metrics.find((p) => p.name === m.metric);
    if (spec) {
      m.margin = spec.margin;
      m.role = spec.role;
    }
    if (spec && m.delta > spec.margin) m.verdict = 'worse';
    else if (m.delta < -z * m.se && m.delta < 0) m.verdict = 'better';
    else m.verdict = 'same';
  }
  if (metrics.some((m) => guardrails.has(m.metric) && m.verdict === 'worse')) return 'regressed';
  const err = metrics.find((m) => m.metric === 'error_rate');
  const othersFine = metrics
    .filter((m) => m.metric !== 'error_rate' && guardrails.has(m.metric))
    .every((m) => m.delta <= Math.max(z * m.se, guardrails.get(m.metric)!.margin / 10));
  return err && err.verdict === 'better' && othersFine ? 'improved' : 'neutral';
}

function explain(truth: TruthLabel, periods: PeriodTruth[]): string {
  const fmt = (m: MetricTruth) =>
    m.metric === 'error_rate'
      ? `error_rate ${(m.production * 100).toFixed(2)}% -> ${(m.candidate * 100).toFixed(2)}% (Δ ${signed(m.delta * 100, 2)} pts ± ${(m.se * 100).toFixed(2)})`
      : m.metric === 'latency_ms'
        ? `latency_ms ${m.production.toFixed(3)} -> ${m.candidate.toFixed(3)} ms`
        : `safety_events ratio ${(m.delta + 1).toFixed(2)}`;
  const where = (p: PeriodTruth) => (periods.length > 1 ? ` (from ${p.from})` : '');
  if (truth === 'regressed') {
    const p = periods.find((x) => x.truth === 'regressed')!;
    const worse = p.metrics.filter((m) => m.verdict === 'worse' && m.role === 'guardrail');
    return `worse beyond the margin${where(p)}: ${worse.map((m) => `${fmt(m)} > margin ${m.margin}`).join('; ')}`;
  }
  const p = periods[periods.length - 1]!;
  const err = p.metrics.find((m) => m.metric === 'error_rate')!;
  return `${truth}${where(p)}: ${fmt(err)}`;
}

function signed(x: number, digits: number): string {
  return `${x >= 0 ? '+' : ''}${x.toFixed(digits)}`;
}
