/**
 * The canary and shadow gates: (policy, per-cohort sufficient statistics, sequential state) -> a closed
 * set of verdicts per metric and one action per cohort, each with a reason a person can check.
 *
 * Every metric is tested with the always-valid mSPRT of `./stats` at alpha / (number of metrics), so
 * looking at every wave, and extending a wave, does not inflate false alarms. Inconclusive or missing
 * data never promotes.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, do I/O, mutate its inputs, or put
 * NaN or ±Infinity in a result (results travel as JSON, where they would become null).
 */
import type { ArmStats, CohortStats } from '../activities/contracts';
import type { Metric, Policy } from './schema';
import { diffOfMeans, diffOfProportions, msprt, proportion, type Difference } from './stats';

export interface MetricResult {
  metric: Metric['name'];
  nCandidate: number;
  nProduction: number;
  /**
   * Point estimates per arm, 0 when an arm has no data: the error rate, the mean latency (the geometric
   * mean on the log scale), or safety events per vehicle-hour.
   */
  candidate: number;
  production: number;
  /**
   * latency_p95 / latency_p99, per cohort (never in the pooled test): each arm's own quantile in ms, for
   * people; `candidate` and `production` are then the shares of latency samples above production's
   * quantile, the quantities tested.
   */
  quantileMs?: { candidate: number; production: number };
  /**
   * Candidate against production, positive = harm: a difference (error_rate, latency_ms, and the
   * shares of request_error_rate, latency_p95 and latency_p99), or relative
   * (safety_events: rate ratio − 1; log-scale latency: ratio of geometric means − 1).
   */
  estimate: number;
  /** mSPRT Λ; the Z statistic for group-sequential tests; the rate ratio for the exact Poisson test. */
  lambda: number;
  /** 1/α for mSPRT; the Z boundary for group-sequential tests; 1 + harm threshold for the exact test. */
  boundary: number;
  pValue: number; // always-valid p-value (mSPRT), or the look's p-value; 1 when not computed
  ci: [number, number]; // the interval the verdict reads, in the units of `estimate`
  margin: number;
  verdict:
    'harm' | 'noninferior' | 'inconclusive' | 'insufficient' | 'improved' | 'not-improved' | 'untested';
  /** Engine 2 only (absent in decisions of engine 1): how the metric was tested. */
  role?: 'guardrail' | 'success';
  test?: 'msprt' | 'ld-obf' | 'ld-pocock' | 'exact-poisson';
  /** latency_ms on the log scale: estimate, interval, margin and threshold are relative. */
  scale?: 'linear' | 'log';
  /** The level α the interval was computed at, after multiplicity adjustment. */
  level?: number;
  /**
   * Reported beside the test, never deciding: safety_events, the Gamma-Poisson posterior P(rate ratio >
   * 1 + margin) under Jeffreys priors; error_rate and request_error_rate with few errors (or failed
   * requests), the Beta-Binomial P(Δ > margin).
   */
  probAboveMargin?: number;
  /** Why a metric has no verdict yet, or a caveat on it (e.g. information beyond the plan). */
  note?: string;
}

/** Running minimum of each always-valid p-value, keyed `${cohort}|${metric}`; empty at the start. */
export interface SequentialState {
  minP: Record<string, number>;
  /** Engine 2, group-sequential designs: the information fractions of each cohort's past looks. */
  info?: Record<string, number[]>;
  /** Engine 2, exact Poisson tests: looks taken so far per `${cohort}|${metric}`. */
  looks?: Record<string, number>;
}

/** `hold` is engine 1's; engine 2 escalates to reviewers instead. */
export type CohortAction = 'continue' | 'extend' | 'rollback' | 'promote' | 'hold' | 'escalate';

export interface CohortDecision {
  cohort: string;
  action: CohortAction;
  reason: string;
  metrics: MetricResult[];
}

export interface LookContext {
  stage: 'canary' | 'final';
  isLastLookOfWave: boolean;
  extraLooksUsed: number;
}

export interface ShadowVerdict {
  cohort: string;
  passed: boolean;
  events: number;
  disagreement: number;
  latencyRatio: number;
  reason: string;
}

/** Stands in for an unbounded interval end; finite so it survives JSON. */
const UNBOUNDED = Number.MAX_VALUE;

/**
 * Tests every metric of the policy for one cohort.
 *
 * error_rate: errors / labeled per arm (difference of proportions), mixture sd τ = analysis.mixtureSd.
 * latency_ms: latency {n, sum, sumSq} per arm (difference of means, Welch variance), τ =
 * max(analysis.mixtureSd, margin) in milliseconds, since a mixtureSd meant for rates is far too small
 * for milliseconds. The data source follows the metric's name; `kind` is descriptive.
 *
 * Verdicts: `insufficient` when an arm has fewer than minLabeledPerArm observations or no variance;
 * `harm` when the confidence sequence lies wholly above the metric's harmThreshold (0 unless set: any
 * proven harm); `noninferior` when it lies below the margin;
 * `inconclusive` otherwise. Returns a new state; the input state is not changed.
 */
export function evaluateMetrics(
  policy: Policy,
  stats: CohortStats,
  state: SequentialState,
): { metrics: MetricResult[]; state: SequentialState } {
  const { alpha, mixtureSd, minLabeledPerArm, metrics: specs } = policy.analysis;
  const alphaPerMetric = alpha / specs.length;
  const boundary = 1 / alphaPerMetric;
  const minP: Record<string, number> = { ...state.minP };
  const metrics: MetricResult[] = [];

  for (const spec of specs) {
    const key = `${stats.cohort}|${spec.name}`;
    const previous = state.minP[key] ?? 1;
    const arms = armsOf(spec, stats);
    const base = {
      metric: spec.name,
      nCandidate: arms.nCandidate,
      nProduction: arms.nProduction,
      candidate: arms.candidate,
      production: arms.production,
      estimate: arms.candidate - arms.production,
      boundary,
      margin: spec.margin,
    };
    const enough = arms.nCandidate >= minLabeledPerArm && arms.nProduction >= minLabeledPerArm;
    if (!enough || arms.diff === undefined) {
      metrics.push({
        ...base,
        lambda: 1,
        pValue: previous,
        ci: [-UNBOUNDED, UNBOUNDED],
        verdict: 'insufficient',
      });
      continue;
    }
    const tau = spec.name === 'latency_ms' ? Math.max(mixtureSd, spec.margin) : mixtureSd;
    const test = msprt({
      estimate: arms.diff.estimate,
      variance: arms.diff.variance,
      tau,
      alpha: alphaPerMetric,
    });
    const pValue = Math.min(previous, test.pValue);
    minP[key] = pValue;
    const [lo, hi] = test.ci;
    const verdict: MetricResult['verdict'] =
      lo > harmThresholdOf(spec) ? 'harm' : hi < spec.margin ? 'noninferior' : 'inconclusive';
    metrics.push({
      ...base,
      estimate: arms.diff.estimate,
      lambda: Math.min(test.lambda, Number.MAX_VALUE),
      pValue,
      ci: [Math.max(lo, -UNBOUNDED), Math.min(hi, UNBOUNDED)],
      verdict,
    });
  }
  return { metrics, state: { minP } };
}

interface Arms {
  nCandidate: number;
  nProduction: number;
  candidate: number;
  production: number;
  diff: Difference | undefined;
}

/** Events counted x of n in one arm, for a test of proportions. */
export interface Counts {
  x: number;
  n: number;
}

/** The tail-latency metrics and which quantile of `LatencyTail` each reads. */
export const TAIL_KEYS = { latency_p95: 'p95', latency_p99: 'p99' } as const;

export function isTail(metric: string): metric is keyof typeof TAIL_KEYS {
  return metric === 'latency_p95' || metric === 'latency_p99';
}

/**
 * The counts a binary metric is tested on, per arm, and what its n counts; undefined for the other
 * metrics. error_rate: errors of labeled events. request_error_rate: failed of all requests.
 * latency_p95 / latency_p99: events slower than production's quantile of latency samples (events that
 * did not fail and have a latency); an arm without a tail counts 0 of 0.
 */
export function binaryCounts(
  metric: Metric['name'],
  stats: CohortStats,
): { candidate: Counts; production: Counts; unit: string } | undefined {
  const { candidate: c, production: p } = stats;
  if (metric === 'error_rate') {
    return {
      candidate: { x: c.errors, n: c.labeled },
      production: { x: p.errors, n: p.labeled },
      unit: 'labeled events',
    };
  }
  if (metric === 'request_error_rate') {
    return {
      candidate: { x: c.failed ?? 0, n: c.events },
      production: { x: p.failed ?? 0, n: p.events },
      unit: 'requests',
    };
  }
  if (isTail(metric)) {
    const key = TAIL_KEYS[metric];
    const of = (a: ArmStats): Counts => ({ x: a.latencyTail?.[key].above ?? 0, n: a.latencyTail?.n ?? 0 });
    return { candidate: of(c), production: of(p), unit: 'latency samples' };
  }
  return undefined;
}

function armsOf(spec: Metric, stats: CohortStats): Arms {
  const { candidate: c, production: p } = stats;
  const counts = binaryCounts(spec.name, stats);
  if (counts) {
    const { candidate: cc, production: pc } = counts;
    return {
      nCandidate: cc.n,
      nProduction: pc.n,
      candidate: proportion(cc.x, cc.n),
      production: proportion(pc.x, pc.n),
      diff: diffOfProportions(cc, pc),
    };
  }
  return {
    nCandidate: c.latency.n,
    nProduction: p.latency.n,
    candidate: c.latency.n > 0 ? c.latency.sum / c.latency.n : 0,
    production: p.latency.n > 0 ? p.latency.sum / p.latency.n : 0,
    diff: diffOfMeans(c.latency, p.latency),
  };
}

/**
 * One look of the canary (or the final analysis) over every cohort.
 *
 * canary: any harm -> rollback; a look inside the wave -> continue; at the wave's last look, any
 * insufficient metric -> extend (while extra looks remain) or hold, otherwise continue (advance).
 * final: any harm -> rollback; every metric non-inferior -> promote; otherwise hold.
 */
export function decideLook(
  policy: Policy,
  ctx: LookContext,
  stats: CohortStats[],
  state: SequentialState,
): { decisions: CohortDecision[]; state: SequentialState } {
  let current = state;
  const decisions: CohortDecision[] = [];
  for (const cohort of stats) {
    const evaluated = evaluateMetrics(policy, cohort, current);
    current = evaluated.state;
    const { action, reason } = actionFor(policy, ctx, evaluated.metrics);
    decisions.push({ cohort: cohort.cohort, action, reason, metrics: evaluated.metrics });
  }
  return { decisions, state: current };
}

function actionFor(
  policy: Policy,
  ctx: LookContext,
  metrics: MetricResult[],
): { action: CohortAction; reason: string } {
  const harm = metrics.filter((m) => m.verdict === 'harm');
  const insufficient = metrics.filter((m) => m.verdict === 'insufficient');
  const all = metrics.map((m) => describe(m, policy)).join('; ');

  if (harm.length > 0) {
    return {
      action: 'rollback',
      reason: `Rolling back: the candidate is worse than production. ${harm.map((m) => describe(m, policy)).join('; ')}.`,
    };
  }

  if (ctx.stage === 'final') {
    const open = metrics.filter((m) => m.verdict !== 'noninferior');
    if (open.length === 0) {
      return { action: 'promote', reason: `Promoting: every metric is non-inferior. ${all}.` };
    }
    return {
      action: 'hold',
      reason:
        'Holding: not every metric is shown non-inferior, and inconclusive or missing data never promotes. ' +
        `${open.map((m) => describe(m, policy)).join('; ')}.`,
    };
  }

  if (!ctx.isLastLookOfWave) {
    return { action: 'continue', reason: `No harm detected at this look; the wave continues. ${all}.` };
  }
  if (insufficient.length > 0) {
    const what = insufficient.map((m) => describe(m, policy)).join('; ');
    const max = policy.analysis.maxExtraLooks;
    if (ctx.extraLooksUsed < max) {
      return {
        action: 'extend',
        reason: `The wave ended without enough data (${what}); extending it with extra look ${ctx.extraLooksUsed + 1} of ${max}.`,
      };
    }
    return {
      action: 'hold',
      reason: `The wave ended without enough data (${what}) and ${max} of ${max} extra looks are used; holding.`,
    };
  }
  return { action: 'continue', reason: `The wave is complete with no harm detected; advancing. ${all}.` };
}

/** A clause with the numbers behind one metric's verdict. */
export function describe(m: MetricResult, policy: Policy): string {
  const minN = policy.analysis.minLabeledPerArm;
  if (m.verdict === 'insufficient') {
    if (m.note) return `${m.metric} insufficient: ${m.note}`;
    const unit =
      m.metric === 'error_rate'
        ? 'labeled events'
        : m.metric === 'request_error_rate'
          ? 'requests'
          : 'latency samples';
    if (m.nCandidate < minN || m.nProduction < minN) {
      return `${m.metric} insufficient: ${m.nCandidate} candidate and ${m.nProduction} production ${unit}, ${minN} needed per arm`;
    }
    return `${m.metric} insufficient: no variance to test with (${m.nCandidate} candidate and ${m.nProduction} production ${unit})`;
  }
  const d = decimals(m.metric);
  const level = formatPercent(1 - (m.level ?? 1 / m.boundary));
  const rel = isRelative(m);
  const arms = rel
    ? `${m.candidate.toFixed(d)} vs ${m.production.toFixed(d)}${m.metric === 'safety_events' ? ' per vehicle-hour' : ' (geometric means)'}`
    : isTail(m.metric)
      ? `${tailLead(m)} ${m.candidate.toFixed(d)} vs ${m.production.toFixed(d)}`
      : `${m.candidate.toFixed(d)} vs ${m.production.toFixed(d)}`;
  const delta = rel ? `ratio−1=${signed(m.estimate, 3)}` : `Δ=${signed(m.estimate, d)}`;
  const ed = rel ? 3 : d;
  const core =
    `${m.metric} ${arms} (n=${m.nCandidate}/${m.nProduction}): ${delta}, ` +
    `${level} ${intervalName(m)} [${signed(m.ci[0], ed)}, ${signed(m.ci[1], ed)}], ${statistic(m)}` +
    (m.probAboveMargin !== undefined
      ? `, posterior P(${rel ? 'ratio > 1+margin' : 'Δ > margin'}) = ${m.probAboveMargin.toFixed(3)}`
      : '') +
    (m.note ? ` (${m.note})` : '');
  switch (m.verdict) {
    case 'harm':
      return `${core}; the interval lies above ${threshold(m, policy, ed)}: harm`;
    case 'noninferior':
      return `${core}; the interval lies below the margin ${m.margin.toFixed(ed)}: non-inferior`;
    case 'inconclusive':
      return `${core}; the interval reaches the margin ${m.margin.toFixed(ed)}: inconclusive`;
    case 'improved':
      return `${core}; the interval lies below 0: improved`;
    case 'not-improved':
      return `${core}; the interval reaches 0: not shown better`;
    case 'untested':
      return `${core}; not tested: the guardrails must all be non-inferior first`;
  }
}

/**
 * What a tail-latency metric's numbers are: "4.1 ms vs 1.2 ms, share above production's p95" (the
 * arms' own quantiles first when known; the pooled test has none).
 */
function tailLead(m: MetricResult): string {
  const q = isTail(m.metric) ? TAIL_KEYS[m.metric] : '';
  const share = `share above production's ${q}`;
  return m.quantileMs
    ? `${formatMs(m.quantileMs.candidate)} ms vs ${formatMs(m.quantileMs.production)} ms, ${share}`
    : share;
}

/** 4.123 -> "4.1", 0.4567 -> "0.46", 1234.5 -> "1234.5". */
function formatMs(ms: number): string {
  return ms >= 1 || ms === 0 ? ms.toFixed(1) : Number(ms.toPrecision(2)).toString();
}

function isRelative(m: MetricResult): boolean {
  return m.metric === 'safety_events' || m.scale === 'log';
}

function intervalName(m: MetricResult): string {
  if (m.test === 'ld-obf' || m.test === 'ld-pocock') return 'repeated confidence interval';
  if (m.test === 'exact-poisson') return 'exact interval';
  return 'confidence sequence';
}

/** The test statistic against its boundary, as the metric's test defines them. */
function statistic(m: MetricResult): string {
  const cmp = m.lambda >= m.boundary ? '≥' : '<';
  if (m.test === 'ld-obf' || m.test === 'ld-pocock') {
    return `Z=${m.lambda.toFixed(2)} ${cmp} ${m.boundary.toFixed(2)} (${m.test})`;
  }
  if (m.test === 'exact-poisson') return `rate ratio ${m.lambda.toFixed(2)}`;
  return `Λ=${formatLambda(m.lambda)} ${cmp} ${formatLambda(m.boundary)}`;
}

/** The harm threshold of a metric spec; 0 (any proven harm) when a policy was not parsed with defaults. */
function harmThresholdOf(spec: Metric): number {
  const t = spec.harmThreshold as number | undefined;
  return t !== undefined && Number.isFinite(t) ? t : 0;
}

function threshold(m: MetricResult, policy: Policy, dp: number): string {
  const spec = policy.analysis.metrics.find((s) => s.name === m.metric);
  const t = spec ? harmThresholdOf(spec) : 0;
  if (m.verdict === 'improved') return '0';
  return t === 0 ? '0' : `the harm threshold ${t.toFixed(dp)}`;
}

/**
 * One line naming the metric that decided the cohort, e.g.
 * "error_rate Δ=+0.142 [+0.090, +0.194] Λ=3.2e5 ≥ 40 → harm".
 */
export function headline(d: CohortDecision): string {
  const m = decidingMetric(d.metrics);
  if (m === undefined) return `no metrics → ${d.action}`;
  if (m.verdict === 'insufficient') {
    return `${m.metric} n=${m.nCandidate}/${m.nProduction} → insufficient`;
  }
  const dp = isRelative(m) ? 3 : decimals(m.metric);
  const head =
    `${m.metric} ${isTail(m.metric) ? `${tailLead(m)} ` : ''}${isRelative(m) ? 'ratio−1' : 'Δ'}=${signed(m.estimate, dp)} [${signed(m.ci[0], dp)}, ${signed(m.ci[1], dp)}] ` +
    (m.test === undefined || m.test === 'msprt'
      ? `Λ=${formatLambda(m.lambda)} ${m.lambda >= m.boundary ? '≥' : '<'} ${formatLambda(m.boundary)}`
      : statistic(m));
  if (m.verdict === 'harm') return `${head} → harm`;
  const upper = `upper ${signed(m.ci[1], dp)} ${m.ci[1] < m.margin ? '<' : '≥'} margin ${m.margin.toFixed(dp)}`;
  return `${head}, ${upper} → ${m.verdict}`;
}

/**
 * The worst verdict decides: harm, then insufficient, then inconclusive, then non-inferior. Among
 * harms and inconclusives the largest Λ; among insufficients the first; among non-inferiors the one
 * whose upper bound is closest to its margin, in interval widths.
 */
function decidingMetric(metrics: MetricResult[]): MetricResult | undefined {
  const order: MetricResult['verdict'][] = ['harm', 'insufficient', 'inconclusive', 'noninferior'];
  metrics = metrics.filter((m) => m.role !== 'success');
  for (const verdict of order) {
    const group = metrics.filter((m) => m.verdict === verdict);
    if (group.length === 0) continue;
    if (verdict === 'insufficient') return group[0];
    const score =
      verdict === 'noninferior'
        ? (m: MetricResult) => -(m.margin - m.ci[1]) / Math.max(m.ci[1] - m.ci[0], Number.MIN_VALUE)
        : (m: MetricResult) => m.lambda;
    return group.reduce((best, m) => (score(m) > score(best) ? m : best));
  }
  return undefined;
}

/**
 * The shadow gate, per cohort: the candidate ran beside production on the same events.
 *
 * passed = paired events >= minEvents && disagreement share <= maxDisagreement && candidate/production
 * mean latency <= maxLatencyRatio. Too few events fails as "insufficient shadow data". latencyRatio is
 * 0 when either arm has no latency samples (which also fails).
 */
export function decideShadow(policy: Policy, stats: CohortStats[]): ShadowVerdict[] {
  const { maxDisagreement, maxLatencyRatio, minEvents } = policy.shadow;
  return stats.map((s) => {
    const events = s.paired?.events ?? 0;
    const disagreement = events > 0 ? (s.paired?.disagreements ?? 0) / events : 0;
    const cand = s.candidate.latency;
    const prod = s.production.latency;
    const measurable = cand.n > 0 && prod.n > 0 && prod.sum > 0;
    const latencyRatio = measurable ? cand.sum / cand.n / (prod.sum / prod.n) : 0;

    const failures: string[] = [];
    if (events < minEvents) {
      failures.push(`insufficient shadow data: ${events} paired events, ${minEvents} needed`);
    }
    if (disagreement > maxDisagreement) {
      failures.push(
        `models disagree on ${formatPercent(disagreement)} of events, above ${formatPercent(maxDisagreement)}`,
      );
    }
    if (!measurable) {
      failures.push('no latency samples to compare');
    } else if (latencyRatio > maxLatencyRatio) {
      failures.push(`candidate latency is ${latencyRatio.toFixed(2)}× production, above ${maxLatencyRatio}×`);
    }
    const passed = failures.length === 0;
    const reason = passed
      ? `Shadow passed: ${events} paired events, disagreement ${formatPercent(disagreement)} ≤ ` +
        `${formatPercent(maxDisagreement)}, latency ${latencyRatio.toFixed(2)}× ≤ ${maxLatencyRatio}×.`
      : `Shadow failed: ${failures.join('; ')}.`;
    return { cohort: s.cohort, passed, events, disagreement, latencyRatio, reason };
  });
}

export function decimals(metric: MetricResult['metric']): number {
  if (metric === 'safety_events') return 4;
  return metric === 'latency_ms' ? 2 : 3;
}

export function signed(x: number, dp: number): string {
  const s = x.toFixed(dp);
  return s.startsWith('-') ? s : `+${s}`;
}

export function formatPercent(share: number): string {
  const pct = share * 100;
  return `${Number.isInteger(pct) ? pct.toFixed(0) : Number(pct.toPrecision(3)).toString()}%`;
}

/** 40 -> "40", 3.2 -> "3.2", 321456 -> "3.2e5", 0.004 -> "4.0e-3". */
function formatLambda(x: number): string {
  if (x >= 1e4 || (x > 0 && x < 0.01)) return x.toExponential(1).replace('e+', 'e');
  if (x >= 10) return x.toFixed(0);
  return x.toPrecision(2);
}
