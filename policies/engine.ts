/**
 * The decision engine (engine 2): one look of the canary or the final analysis, for every cohort and
 * for the fleet as a whole, with the error rates a reviewer can rely on.
 *
 * - Tests by metric kind: error_rate (difference of proportions), latency_ms (difference of means with
 *   unequal variances, or of log latency for skewed data), safety_events (exact conditional Poisson
 *   rate-ratio test, with the Gamma-Poisson posterior probability that the ratio exceeds 1 + margin);
 *   for services, request_error_rate (difference of proportions of failed requests) and latency_p95 /
 *   latency_p99 (difference of the shares above production's quantile; see `evidenceOf`).
 * - Sequential designs: the always-valid mSPRT (`design: msprt`), or Lan-DeMets alpha spending over the
 *   observed information fraction (`ld-obf`, `ld-pocock`) with repeated confidence intervals. The
 *   exact Poisson test spends α·6/(π²k²) at its k-th look, a union bound valid for any number of looks.
 * - Multiplicity: α is split across the cohorts and one pooled fleet-wide test (`familywise: cohorts`);
 *   within a cohort, Holm's step-down over the guardrails for harm; promotion is an intersection-union
 *   test (every guardrail non-inferior, each at the cohort's level); success metrics are tested for
 *   improvement, Holm among themselves, only once every guardrail is non-inferior (serial gatekeeping).
 * - Fleet-wide: a stratified pooled estimate over cohorts with Cochran-Mantel-Haenszel weights (so
 *   unequal allocation across cohorts cannot produce Simpson's paradox) catches harm spread thinly over
 *   every cohort; harm in `fleetWideHarmCohorts` cohorts, or anywhere when `rollbackScope: fleet`,
 *   rolls back every cohort.
 * - Decisions: harm rolls back; inconclusive or missing data never promotes: the cohort is escalated to
 *   the reviewers, who may approve or reject; unanswered, it stays held.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. No node modules, clock,
 * random source or I/O; inputs are not mutated; no NaN or ±Infinity in results (they travel as JSON).
 */
import type { CohortStats, MomentStats } from '../activities/contracts';
import type { Metric, Policy } from './schema';
import { diffOfMeans, diffOfProportions, msprt, proportion, type Difference } from './stats';
import { boundaries, MAX_LOOKS } from './gsd';
import { rateRatioTest } from './rates';
import { betaBinomial, gammaPoissonRateRatio } from './bayes';
import {
  binaryCounts,
  describe,
  isTail,
  TAIL_KEYS,
  type CohortDecision,
  type LookContext,
  type MetricResult,
  type SequentialState,
} from './decide';

/** Stands in for an unbounded interval end or boundary; finite so it survives JSON. */
const UNBOUNDED = Number.MAX_VALUE;

/**
 * error_rate with fewer errors than this in an arm: the normal approximation is rough, so the
 * Beta-Binomial posterior P(difference > margin) is reported beside the test for the reviewer.
 */
export const FEW_ERRORS = 30;

export interface FleetVerdict {
  /** rollback: every active cohort is rolled back. */
  action: 'none' | 'rollback';
  reason: string;
  /** The stratified pooled test of each guardrail over the active cohorts (more than one cohort). */
  pooled: MetricResult[];
}

export interface EngineLook {
  decisions: CohortDecision[];
  fleet: FleetVerdict;
  state: SequentialState;
}

/** How α is shared: the level of each cohort's family and of the pooled test. */
export function familyLevel(policy: Policy, cohortsInScope: number): number {
  const { alpha, familywise } = policy.analysis;
  if (familywise === 'per-cohort') return alpha;
  return cohortsInScope > 1 ? alpha / (cohortsInScope + 1) : alpha;
}

/**
 * One look over the active cohorts. `cohortsInScope` is the number of cohorts the rollout started
 * with (fixed for the whole rollout, so the split of α never changes between looks).
 */
export function engineLook(
  policy: Policy,
  ctx: LookContext,
  stats: CohortStats[],
  state: SequentialState,
  cohortsInScope: number,
): EngineLook {
  const level = familyLevel(policy, cohortsInScope);
  const next: Required<SequentialState> = {
    minP: { ...state.minP },
    info: { ...(state.info ?? {}) },
    looks: { ...(state.looks ?? {}) },
  };
  const decisions: CohortDecision[] = [];
  for (const cohort of stats) {
    const metrics = evaluateCohort(policy, cohort, next, level);
    const { action, reason } = actionFor(policy, ctx, metrics);
    decisions.push({ cohort: cohort.cohort, action, reason, metrics });
  }
  const fleet = fleetVerdict(policy, stats, decisions, level);
  if (fleet.action === 'rollback') {
    for (const d of decisions) {
      d.reason = d.action === 'rollback' ? `${d.reason} ${fleet.reason}` : `Rolling back: ${fleet.reason}`;
      d.action = 'rollback';
    }
  }
  return { decisions, fleet, state: next };
}

// ---- one metric ---------------------------------------------------------------------------------

/** What every test gives: estimate, an interval at any level, and the statistic against its boundary. */
interface Evidence {
  spec: Metric;
  nCandidate: number;
  nProduction: number;
  candidate: number;
  production: number;
  /** In display units: a difference, or relative (ratio − 1). */
  estimate: number;
  /** Why there is nothing to test yet; undefined when there is. */
  missing?: string;
  test: NonNullable<MetricResult['test']>;
  scale: 'linear' | 'log';
  /** Interval at level α, in display units. */
  ciAt(alpha: number): [number, number];
  /** Statistic and boundary at level α, for the record (see MetricResult.lambda). */
  statAt(alpha: number): { lambda: number; boundary: number; pValue: number };
  probAboveMargin?: number;
  note?: string;
  /** Tail-latency metrics: each arm's own quantile in ms, reported beside the test. */
  quantileMs?: { candidate: number; production: number };
}

function evaluateCohort(
  policy: Policy,
  stats: CohortStats,
  state: Required<SequentialState>,
  level: number,
): MetricResult[] {
  const specs = policy.analysis.metrics;
  const infoT = informationFraction(policy, stats, state);
  // Boundaries depend only on the information fractions and α: one computation per level per cohort.
  const bounds = new Map<number, number>();
  const evidence = specs.map((spec) => evidenceOf(policy, spec, stats, state, infoT, bounds));

  const results = new Map<Metric, MetricResult>();
  const record = (e: Evidence, verdict: MetricResult['verdict'], alpha: number): void => {
    const ci = e.missing === undefined ? clampInterval(e.ciAt(alpha)) : [-UNBOUNDED, UNBOUNDED];
    const stat = e.missing === undefined ? e.statAt(alpha) : { lambda: 1, boundary: 1 / alpha, pValue: 1 };
    results.set(e.spec, {
      metric: e.spec.name,
      nCandidate: e.nCandidate,
      nProduction: e.nProduction,
      candidate: e.candidate,
      production: e.production,
      estimate: finite(e.estimate),
      lambda: finite(stat.lambda),
      boundary: finite(stat.boundary),
      pValue: finite(stat.pValue),
      ci: ci as [number, number],
      margin: e.spec.margin,
      verdict,
      role: e.spec.role,
      test: e.test,
      scale: e.scale,
      level: alpha,
      ...(e.probAboveMargin !== undefined ? { probAboveMargin: e.probAboveMargin } : {}),
      ...(e.quantileMs !== undefined ? { quantileMs: e.quantileMs } : {}),
      ...(e.missing !== undefined ? { note: e.missing } : e.note ? { note: e.note } : {}),
    });
  };

  // Guardrails, harm: Holm's step-down. Any order is valid; the most extreme first gives the most power.
  const guards = evidence.filter((e) => e.spec.role === 'guardrail');
  const harmed = new Set<Evidence>();
  const ordered = guards
    .filter((e) => e.missing === undefined)
    .map((e) => ({ e, score: harmScore(e, level) }))
    .sort((a, b) => b.score - a.score);
  for (let j = 0; j < ordered.length; j++) {
    const e = ordered[j]!.e;
    const alpha = level / (guards.length - j);
    if (e.ciAt(alpha)[0] > e.spec.harmThreshold) {
      harmed.add(e);
      record(e, 'harm', alpha);
    } else break;
  }
  // Guardrails, non-inferiority: an intersection-union test, each at the family's level.
  for (const e of guards) {
    if (harmed.has(e)) continue;
    if (e.missing !== undefined) record(e, 'insufficient', level);
    else {
      record(e, e.ciAt(level)[1] < e.spec.margin ? 'noninferior' : 'inconclusive', level);
      const r = results.get(e.spec)!;
      if (r.ci[0] > e.spec.harmThreshold) {
        const caveat = 'above the harm threshold at this level, but harm is not proven at its Holm level';
        r.note = r.note ? `${r.note}; ${caveat}` : caveat;
      }
    }
  }
  // Success metrics: only behind the gate of every guardrail non-inferior; Holm among themselves.
  const gateOpen = guards.every((e) => results.get(e.spec)?.verdict === 'noninferior');
  const successes = evidence.filter((e) => e.spec.role === 'success');
  if (!gateOpen) {
    for (const e of successes) record(e, e.missing !== undefined ? 'insufficient' : 'untested', level);
  } else {
    const byScore = successes
      .filter((e) => e.missing === undefined)
      .map((e) => ({ e, score: improveScore(e, level) }))
      .sort((a, b) => b.score - a.score);
    let open = true;
    for (let j = 0; j < byScore.length; j++) {
      const e = byScore[j]!.e;
      const alpha = level / (successes.length - j);
      if (open && e.ciAt(alpha)[1] < 0) record(e, 'improved', alpha);
      else {
        open = false;
        record(e, 'not-improved', alpha);
      }
    }
    for (const e of successes) if (e.missing !== undefined) record(e, 'insufficient', level);
  }
  return specs.map((spec) => results.get(spec)!);
}

/** How far above its harm threshold a metric lies, in half-widths of its interval at `level`. */
function harmScore(e: Evidence, level: number): number {
  const [lo, hi] = e.ciAt(level);
  const half = Math.max((hi - lo) / 2, Number.MIN_VALUE);
  return (lo - e.spec.harmThreshold) / half;
}

function improveScore(e: Evidence, level: number): number {
  const [lo, hi] = e.ciAt(level);
  const half = Math.max((hi - lo) / 2, Number.MIN_VALUE);
  return -hi / half;
}

/**
 * Group-sequential designs: the cohort's information fraction now (smallest labeled count of the two
 * arms over plannedPerArm, at most 1), appended to the cohort's past fractions when it grew. Every
 * normal-theory metric of the cohort is analysed on this one information scale. Undefined for msprt.
 */
function informationFraction(
  policy: Policy,
  stats: CohortStats,
  state: Required<SequentialState>,
): { info: number[]; overrun: boolean } | undefined {
  const { design, plannedPerArm, minLabeledPerArm } = policy.analysis;
  if (design === 'msprt' || plannedPerArm === undefined) return undefined;
  const past = state.info[stats.cohort] ?? [];
  const labeled = Math.min(stats.candidate.labeled, stats.production.labeled);
  if (labeled < minLabeledPerArm) return { info: past, overrun: false };
  const t = Math.min(1, labeled / plannedPerArm);
  const last = past[past.length - 1] ?? 0;
  const info = t > last && past.length < MAX_LOOKS ? [...past, t] : past;
  state.info[stats.cohort] = info;
  return { info, overrun: labeled > plannedPerArm };
}

function evidenceOf(
  policy: Policy,
  spec: Metric,
  stats: CohortStats,
  state: Required<SequentialState>,
  infoT: { info: number[]; overrun: boolean } | undefined,
  memo: Map<number, number>,
): Evidence {
  if (spec.name === 'safety_events') return rateEvidence(policy, spec, stats, state);
  const { candidate: c, production: p } = stats;
  const minN = policy.analysis.minLabeledPerArm;
  let moments: [MomentStats, MomentStats] | undefined;
  let diff: Difference | undefined;
  let display: [number, number];
  let unit: string;
  const log = spec.name === 'latency_ms' && spec.scale === 'log';
  // error_rate, request_error_rate, latency_p95 and latency_p99: x of n per arm.
  //
  // latency_p95 / latency_p99: the share of each arm's latency samples above T, production's q-quantile
  // over the cohort's canary so far, tested as a difference of proportions (candidate minus
  // production, production's share being about 1 − q): a slower tail shows as a larger share. The
  // approximation: T is estimated from production's own samples at each look and the variance treats
  // it as known (two binomials, p_c(1−p_c)/n_c + q(1−q)/n_p). Production's share above T̂ is in fact
  // close to 1 − q by construction, and the candidate's moves with T̂; by the delta method
  // Var(Δ̂) ≈ p_c(1−p_c)/n_c + (f_c(T)/f_p(T))²·q(1−q)/n_p, with f the latency densities at T. The two
  // agree when the densities at T are equal, as under the null of equal tails (so the harm test's
  // false-alarm rate is what error_rate's is); a candidate faster at T (lower density there) makes the
  // test conservative, and one slightly slower (a higher density at T, as at the non-inferiority
  // margin) makes the variance used too small, by about 12% in standard error for a normal-shaped tail
  // at p95 with margin 0.02 and equal arms. The always-valid mixture is conservative enough to absorb
  // that in simulation (seeded runs of ten looks: false non-inferiority at the margin about 1%, false
  // harm in A/A about 0.5%, at α 5%), and the confidence sequence stays valid over looks while T is
  // re-estimated at each. Rough while production has few samples above T (n_p·(1 − q) under ~100).
  const counts = binaryCounts(spec.name, stats);
  const tail = isTail(spec.name) ? TAIL_KEYS[spec.name] : undefined;
  if (counts) {
    const { candidate: cc, production: pc } = counts;
    diff = diffOfProportions(cc, pc);
    display = [proportion(cc.x, cc.n), proportion(pc.x, pc.n)];
    moments = undefined;
    unit = counts.unit;
  } else {
    const empty = { n: 0, sum: 0, sumSq: 0 };
    moments = log ? [c.logLatency ?? empty, p.logLatency ?? empty] : [c.latency, p.latency];
    diff = diffOfMeans(moments[0], moments[1]);
    const mean = (m: MomentStats) => (m.n > 0 ? m.sum / m.n : 0);
    display = log
      ? [moments[0].n > 0 ? Math.exp(mean(moments[0])) : 0, moments[1].n > 0 ? Math.exp(mean(moments[1])) : 0]
      : [mean(moments[0]), mean(moments[1])];
    unit = log ? 'log-latency samples' : 'latency samples';
  }
  const nC = counts ? counts.candidate.n : moments![0].n;
  const nP = counts ? counts.production.n : moments![1].n;
  const toDisplay = (x: number) => (log ? Math.expm1(Math.min(x, 700)) : x);
  const threshold = log ? Math.log1p(spec.harmThreshold) : spec.harmThreshold;
  const base = {
    spec,
    nCandidate: nC,
    nProduction: nP,
    candidate: display[0],
    production: display[1],
    scale: log ? ('log' as const) : ('linear' as const),
    ...(tail
      ? {
          quantileMs: { candidate: c.latencyTail?.[tail].ms ?? 0, production: p.latencyTail?.[tail].ms ?? 0 },
        }
      : {}),
  };
  const design = policy.analysis.design;
  const test = design;
  if (nC < minN || nP < minN || diff === undefined) {
    const missing =
      nC < minN || nP < minN
        ? `${nC} candidate and ${nP} production ${unit}, ${minN} needed per arm`
        : `no variance to test with (${nC} candidate and ${nP} production ${unit})`;
    return { ...base, estimate: 0, missing, test, ciAt: () => [-UNBOUNDED, UNBOUNDED], statAt: noStat };
  }
  if (design !== 'msprt' && (infoT === undefined || infoT.info.length === 0)) {
    return {
      ...base,
      estimate: toDisplay(diff.estimate),
      missing: 'no information fraction yet (fewer labeled events than minLabeledPerArm)',
      test,
      ciAt: () => [-UNBOUNDED, UNBOUNDED],
      statAt: noStat,
    };
  }
  const d = diff;
  const se = Math.sqrt(d.variance);
  // The posterior needs binomial counts: not for the tails, whose threshold is estimated.
  const few =
    counts !== undefined &&
    tail === undefined &&
    Math.min(counts.candidate.x, counts.production.x) < FEW_ERRORS;
  const posterior = few
    ? betaBinomial({
        successes: [counts.candidate.x, counts.production.x],
        trials: [counts.candidate.n, counts.production.n],
        margin: spec.margin,
      })
    : undefined;
  const bayes = posterior ? { probAboveMargin: posterior.probAboveMargin } : {};
  if (design === 'msprt') {
    const tauBase =
      spec.name === 'latency_ms'
        ? Math.max(policy.analysis.mixtureSd, log ? Math.log1p(spec.margin) : spec.margin)
        : policy.analysis.mixtureSd;
    const run = (alpha: number) =>
      msprt({ estimate: d.estimate, variance: d.variance, tau: tauBase, alpha, theta0: threshold });
    return {
      ...base,
      ...bayes,
      estimate: toDisplay(d.estimate),
      test,
      ciAt: (alpha) => {
        const [lo, hi] = run(alpha).ci;
        return [toDisplay(lo), toDisplay(hi)];
      },
      statAt: (alpha) => {
        const r = run(alpha);
        return { lambda: Math.min(r.lambda, UNBOUNDED), boundary: r.boundary, pValue: r.pValue };
      },
    };
  }
  const info = infoT!.info;
  const bound = (alpha: number): number => {
    let b = memo.get(alpha);
    if (b === undefined) {
      b = boundaries({ design, looks: info.length, alpha, sides: 1, info }).boundaries[info.length - 1]!;
      if (!Number.isFinite(b)) b = UNBOUNDED;
      memo.set(alpha, b);
    }
    return b;
  };
  return {
    ...base,
    ...bayes,
    estimate: toDisplay(d.estimate),
    test,
    note: infoT!.overrun
      ? `information beyond plannedPerArm ${policy.analysis.plannedPerArm}: the final boundary is reused`
      : undefined,
    ciAt: (alpha) => {
      const half = bound(alpha) * se;
      return [toDisplay(d.estimate - half), toDisplay(d.estimate + half)];
    },
    statAt: (alpha) => ({ lambda: (d.estimate - threshold) / se, boundary: bound(alpha), pValue: 1 }),
  };
}

function noStat(alpha: number) {
  return { lambda: 1, boundary: 1 / alpha, pValue: 1 };
}

/**
 * safety_events: the exact conditional test on (events, vehicle-hours) per arm. Its k-th look (k counted
 * per cohort and metric) is at α·6/(π²k²) of the level asked for; the sum over all looks is α, so the
 * chance of a false alarm at any look stays within α however many looks there are.
 */
function rateEvidence(
  policy: Policy,
  spec: Metric,
  stats: CohortStats,
  state: Required<SequentialState>,
): Evidence {
  const key = `${stats.cohort}|${spec.name}`;
  const c = stats.candidate.safety ?? { events: 0, exposureHours: 0 };
  const p = stats.production.safety ?? { events: 0, exposureHours: 0 };
  const base = {
    spec,
    nCandidate: c.events,
    nProduction: p.events,
    candidate: c.exposureHours > 0 ? c.events / c.exposureHours : 0,
    production: p.exposureHours > 0 ? p.events / p.exposureHours : 0,
    test: 'exact-poisson' as const,
    scale: 'linear' as const,
  };
  if (!(c.exposureHours > 0) || !(p.exposureHours > 0)) {
    return {
      ...base,
      estimate: 0,
      missing: `no exposure yet (${c.exposureHours.toFixed(1)} candidate and ${p.exposureHours.toFixed(1)} production vehicle-hours)`,
      ciAt: () => [-UNBOUNDED, UNBOUNDED],
      statAt: noStat,
    };
  }
  const k = (state.looks[key] ?? 0) + 1;
  state.looks[key] = k;
  const perLook = (alpha: number) => (alpha * 6) / (Math.PI * Math.PI * k * k);
  const events: [number, number] = [c.events, p.events];
  const exposure: [number, number] = [c.exposureHours, p.exposureHours];
  const at = (alpha: number) =>
    rateRatioTest({ events, exposure, alpha: Math.min(0.99, 2 * perLook(alpha)), sides: 2 });
  const first = at(policy.analysis.alpha);
  const ratio = first?.rateRatio ?? 1;
  const posterior = gammaPoissonRateRatio({ events, exposure, margin: spec.margin });
  return {
    ...base,
    estimate: ratio - 1,
    ...(posterior ? { probAboveMargin: posterior.probAboveMargin } : {}),
    note: `look ${k} at α·6/(π²·${k}²)`,
    ciAt: (alpha) => {
      const r = at(alpha);
      if (!r) return [-UNBOUNDED, UNBOUNDED];
      return [r.ci[0] - 1, r.ci[1] >= UNBOUNDED ? UNBOUNDED : r.ci[1] - 1];
    },
    statAt: (alpha) => {
      const r = rateRatioTest({
        events,
        exposure,
        alpha: perLook(alpha),
        sides: 1,
        nullRatio: 1 + spec.harmThreshold,
      });
      return { lambda: ratio, boundary: 1 + spec.harmThreshold, pValue: r?.p ?? 1 };
    },
  };
}

// ---- one cohort ---------------------------------------------------------------------------------

function actionFor(
  policy: Policy,
  ctx: LookContext,
  metrics: MetricResult[],
): { action: CohortDecision['action']; reason: string } {
  const guards = metrics.filter((m) => m.role !== 'success');
  const harm = guards.filter((m) => m.verdict === 'harm');
  const insufficient = guards.filter((m) => m.verdict === 'insufficient');
  const list = (ms: MetricResult[]) => ms.map((m) => describe(m, policy)).join('; ');
  const all = list(metrics);

  if (harm.length > 0) {
    return {
      action: 'rollback',
      reason: `Rolling back: the candidate is worse than production. ${list(harm)}.`,
    };
  }
  if (ctx.stage === 'final') {
    const open = guards.filter((m) => m.verdict !== 'noninferior');
    const improved = metrics.filter((m) => m.verdict === 'improved');
    if (open.length === 0 && (!policy.analysis.requireImprovement || improved.length > 0)) {
      return { action: 'promote', reason: `Promoting: every guardrail is non-inferior. ${all}.` };
    }
    const why =
      open.length > 0
        ? `not every guardrail is shown non-inferior (${list(open)})`
        : `the policy requires an improvement and no success metric shows one (${list(metrics.filter((m) => m.role === 'success'))})`;
    return {
      action: 'escalate',
      reason: `Escalating to the reviewers: ${why}; inconclusive or missing data never promotes by itself.`,
    };
  }
  if (!ctx.isLastLookOfWave) {
    return { action: 'continue', reason: `No harm detected at this look; the wave continues. ${all}.` };
  }
  if (insufficient.length > 0) {
    const what = list(insufficient);
    const max = policy.analysis.maxExtraLooks;
    if (ctx.extraLooksUsed < max) {
      return {
        action: 'extend',
        reason: `The wave ended without enough data (${what}); extending it with extra look ${ctx.extraLooksUsed + 1} of ${max}.`,
      };
    }
    return {
      action: 'escalate',
      reason: `Escalating to the reviewers: the wave ended without enough data (${what}) and ${max} of ${max} extra looks are used.`,
    };
  }
  return { action: 'continue', reason: `The wave is complete with no harm detected; advancing. ${all}.` };
}

// ---- the fleet ----------------------------------------------------------------------------------

function fleetVerdict(
  policy: Policy,
  stats: CohortStats[],
  decisions: CohortDecision[],
  level: number,
): FleetVerdict {
  const harmed = decisions.filter((d) => d.action === 'rollback').map((d) => d.cohort);
  const pooled = stats.length > 1 ? pooledGuardrails(policy, stats, level) : [];
  const pooledHarm = pooled.filter((m) => m.verdict === 'harm');
  const a = policy.analysis;
  if (harmed.length > 0 && a.rollbackScope === 'fleet') {
    return {
      action: 'rollback',
      pooled,
      reason: `The policy rolls back the whole fleet on harm in any cohort (harm in ${harmed.join(', ')}).`,
    };
  }
  if (harmed.length >= a.fleetWideHarmCohorts && stats.length > harmed.length) {
    return {
      action: 'rollback',
      pooled,
      reason: `Harm in ${harmed.length} cohorts (${harmed.join(', ')}) reaches fleetWideHarmCohorts ${a.fleetWideHarmCohorts}: the harm is fleet-wide.`,
    };
  }
  if (harmed.length === 0 && pooledHarm.length > 0) {
    return {
      action: 'rollback',
      pooled,
      reason:
        'Harm spread over the fleet: no single cohort shows it, but the stratified pooled estimate does. ' +
        `${pooledHarm.map((m) => describe(m, policy)).join('; ')}.`,
    };
  }
  const shown = pooled.map((m) => describe(m, policy)).join('; ');
  return { action: 'none', pooled, reason: shown ? `Fleet (stratified, pooled): ${shown}.` : '' };
}

/**
 * Per guardrail of a normal-theory metric, the stratified estimate over cohorts k with CMH weights
 * w_k = n_c·n_p/(n_c + n_p): Σ w_k Δ_k / Σ w_k, variance Σ w_k² V_k / (Σ w_k)², tested by the mSPRT at
 * the pooled test's share of α. Cohorts without enough data carry no weight. Safety events are left
 * to the per-cohort exact tests. The tails pool each cohort's shares above its own production quantile
 * (quantiles themselves do not pool: the pooled result has no `quantileMs`).
 */
function pooledGuardrails(policy: Policy, stats: CohortStats[], level: number): MetricResult[] {
  const out: MetricResult[] = [];
  const minN = policy.analysis.minLabeledPerArm;
  for (const spec of policy.analysis.metrics) {
    if (spec.role !== 'guardrail' || spec.name === 'safety_events') continue;
    const log = spec.name === 'latency_ms' && spec.scale === 'log';
    let sumW = 0;
    let sumWd = 0;
    let sumW2v = 0;
    let nC = 0;
    let nP = 0;
    // The crude per-arm values over the strata used, shown beside the stratified estimate.
    let sumC = 0;
    let sumP = 0;
    for (const s of stats) {
      const { candidate: c, production: p } = s;
      let diff: Difference | undefined;
      let n: [number, number];
      let sums: [number, number];
      // Binary metrics; for the tails, each cohort against its own production quantile.
      const counts = binaryCounts(spec.name, s);
      if (counts) {
        diff = diffOfProportions(counts.candidate, counts.production);
        n = [counts.candidate.n, counts.production.n];
        sums = [counts.candidate.x, counts.production.x];
      } else {
        const empty = { n: 0, sum: 0, sumSq: 0 };
        const [mc, mp] = log ? [c.logLatency ?? empty, p.logLatency ?? empty] : [c.latency, p.latency];
        diff = diffOfMeans(mc, mp);
        n = [mc.n, mp.n];
        sums = [mc.sum, mp.sum];
      }
      if (diff === undefined || n[0] < minN || n[1] < minN) continue;
      sumC += sums[0];
      sumP += sums[1];
      const w = (n[0] * n[1]) / (n[0] + n[1]);
      sumW += w;
      sumWd += w * diff.estimate;
      sumW2v += w * w * diff.variance;
      nC += n[0];
      nP += n[1];
    }
    if (!(sumW > 0) || !(sumW2v > 0)) continue;
    const estimate = sumWd / sumW;
    const variance = sumW2v / (sumW * sumW);
    const threshold = log ? Math.log1p(spec.harmThreshold) : spec.harmThreshold;
    const tau =
      spec.name === 'latency_ms'
        ? Math.max(policy.analysis.mixtureSd, log ? Math.log1p(spec.margin) : spec.margin)
        : policy.analysis.mixtureSd;
    const r = msprt({ estimate, variance, tau, alpha: level, theta0: threshold });
    const toDisplay = (x: number) => (log ? Math.expm1(Math.min(x, 700)) : x);
    const ci = clampInterval([toDisplay(r.ci[0]), toDisplay(r.ci[1])]);
    const verdict: MetricResult['verdict'] =
      ci[0] > spec.harmThreshold ? 'harm' : ci[1] < spec.margin ? 'noninferior' : 'inconclusive';
    out.push({
      metric: spec.name,
      nCandidate: nC,
      nProduction: nP,
      candidate: log ? Math.exp(sumC / nC) : sumC / nC,
      production: log ? Math.exp(sumP / nP) : sumP / nP,
      estimate: toDisplay(estimate),
      lambda: finite(r.lambda),
      boundary: r.boundary,
      pValue: r.pValue,
      ci,
      margin: spec.margin,
      verdict,
      role: 'guardrail',
      test: 'msprt',
      scale: log ? 'log' : 'linear',
      level,
      note: `stratified over ${stats.length} cohorts`,
    });
  }
  return out;
}

function clampInterval([lo, hi]: [number, number]): [number, number] {
  return [
    Math.max(Number.isNaN(lo) ? -UNBOUNDED : lo, -UNBOUNDED),
    Math.min(Number.isNaN(hi) ? UNBOUNDED : hi, UNBOUNDED),
  ];
}

function finite(x: number): number {
  if (Number.isNaN(x)) return 0;
  return Math.max(-UNBOUNDED, Math.min(UNBOUNDED, x));
}
