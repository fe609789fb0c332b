/**
 * Rare events with exposure: the exact conditional test of a ratio of two Poisson rates (for example
 * safety-critical misses per hour, candidate against production), its Clopper-Pearson confidence
 * interval and a one-sided non-inferiority test.
 *
 * Given n = x₁ + x₂ events, x₁ ~ Binomial(n, π) with π = t₁R / (t₁R + t₂), where R = λ₁/λ₂ is the rate
 * ratio and t₁, t₂ the exposures. The test of R is the exact binomial test of π, and an interval for
 * π maps to one for R by R = π t₂ / ((1 − π) t₁). This is the test of R's `poisson.test` with two
 * samples (Lehmann's uniformly most powerful unbiased test).
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, do I/O, or put NaN or ±Infinity in
 * a result (results travel as JSON). An unbounded end is Number.MAX_VALUE; a ratio that does not exist
 * (no events at all) is null. Invalid input gives undefined.
 */
import { betaQuantile, binomialCdf, binomialPmf, binomialSf } from './special';

/** Stands in for +∞ (an unbounded interval end or an infinite ratio); finite so it survives JSON. */
export const UNBOUNDED = Number.MAX_VALUE;

export interface RateRatioInput {
  /** Event counts [candidate, production]: non-negative integers. */
  events: readonly [number, number];
  /** Exposures [candidate, production] (vehicle-hours, say): positive and finite. */
  exposure: readonly [number, number];
  /** Level of the test; the interval has confidence 1 − α. 0.05 unless given. */
  alpha?: number;
  /**
   * 2 (default): H0 R = r0 against R ≠ r0, with a two-sided interval. 1: H0 R ≤ r0 against harm
   * R > r0, with the one-sided interval [lower, UNBOUNDED].
   */
  sides?: 1 | 2;
  /** Null rate ratio r0; 1 unless given. */
  nullRatio?: number;
  /**
   * Two-sided p-value: 'central' (default) is twice the smaller tail, capped at 1, the test the
   * Clopper-Pearson interval inverts; 'minlike' sums the outcomes no more likely than the one observed
   * (R's `binom.test` and `poisson.test`).
   */
  twoSided?: 'central' | 'minlike';
  /**
   * With a margin m ≥ 0, also the non-inferiority test of H0: R ≥ 1 + m against R < 1 + m at level α
   * (one-sided).
   */
  nonInferiorityMargin?: number;
}

export interface NonInferiorityResult {
  /** The ratio 1 + m that the candidate must be shown to stay below. */
  bound: number;
  /** One-sided exact p-value P(X ≤ x₁) at R = 1 + m. */
  p: number;
  /** One-sided upper confidence bound for R at level 1 − α (UNBOUNDED when x₂ = 0). */
  upper: number;
  /** p < α, equivalently upper < bound. */
  noninferior: boolean;
}

export interface RateRatioResult {
  /** (x₁/t₁) / (x₂/t₂); UNBOUNDED when x₂ = 0 < x₁; null when there are no events at all. */
  rateRatio: number | null;
  /** Confidence interval for R; [0, UNBOUNDED] without events. */
  ci: [number, number];
  /** Exact p-value of H0 (see `sides`). 1 without events. */
  p: number;
  /** Total events n = x₁ + x₂ the test conditions on. */
  total: number;
  /** Expected x₁ under H0: n π0. */
  expected: number;
  nullRatio: number;
  sides: 1 | 2;
  alpha: number;
  nonInferiority?: NonInferiorityResult;
}

/** π = t₁R / (t₁R + t₂): the binomial probability of a candidate event at rate ratio R. */
function piOf(ratio: number, t1: number, t2: number): number {
  return (t1 * ratio) / (t1 * ratio + t2);
}

/** R = π t₂ / ((1 − π) t₁), clamped to [0, UNBOUNDED]. */
function ratioOf(pi: number, t1: number, t2: number): number {
  if (!(pi > 0)) return 0;
  if (!(pi < 1)) return UNBOUNDED;
  const r = (pi * t2) / ((1 - pi) * t1);
  return Number.isFinite(r) ? Math.min(r, UNBOUNDED) : UNBOUNDED;
}

/**
 * Two-sided p-value of the binomial test by the minimum-likelihood rule of R's `binom.test`: the
 * probability of every outcome no more likely than x (with R's relative tolerance 1e-7). The pmf is
 * unimodal, so the outcomes on the far side are counted by bisection.
 */
function minLikelihoodP(x: number, n: number, pi: number): number {
  const d = binomialPmf(x, n, pi) * (1 + 1e-7);
  const m = n * pi;
  if (x === m) return 1;
  if (x < m) {
    // First i in [ceil(m), n] with pmf(i) ≤ d (the pmf does not increase there).
    let lo = Math.ceil(m);
    let hi = n + 1;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (binomialPmf(mid, n, pi) <= d) hi = mid;
      else lo = mid + 1;
    }
    return Math.min(1, binomialCdf(x, n, pi) + binomialSf(lo, n, pi));
  }
  // Last i in [0, floor(m)] with pmf(i) ≤ d (the pmf does not decrease there).
  let lo = -1;
  let hi = Math.floor(m);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (binomialPmf(mid, n, pi) <= d) lo = mid;
    else hi = mid - 1;
  }
  return Math.min(1, binomialCdf(lo, n, pi) + binomialSf(x, n, pi));
}

/** Event counts are non-negative integers and exposures positive and finite, for both arms. */
export function validCountsAndExposure(
  events: readonly [number, number],
  exposure: readonly [number, number],
): boolean {
  const [x1, x2] = events;
  const [t1, t2] = exposure;
  return (
    Number.isInteger(x1) &&
    Number.isInteger(x2) &&
    x1 >= 0 &&
    x2 >= 0 &&
    t1 > 0 &&
    t2 > 0 &&
    Number.isFinite(t1) &&
    Number.isFinite(t2)
  );
}

/**
 * The exact conditional test of the rate ratio R = λ₁/λ₂ (candidate over production).
 *
 * p-values: two-sided 'central' is min(1, 2 min(P(X ≤ x₁), P(X ≥ x₁))) at π0 = π(r0); one-sided
 * (harm) is P(X ≥ x₁). The interval is Clopper-Pearson on π, [Beta⁻¹(α/2; x₁, n − x₁ + 1),
 * Beta⁻¹(1 − α/2; x₁ + 1, n − x₁)] (α instead of α/2 on the single end of a one-sided interval),
 * mapped to R. With x₁ = 0 the lower end is 0; with x₂ = 0 the upper end is UNBOUNDED.
 */
export function rateRatioTest(input: RateRatioInput): RateRatioResult | undefined {
  const [x1, x2] = input.events;
  const [t1, t2] = input.exposure;
  const alpha = input.alpha ?? 0.05;
  const sides = input.sides ?? 2;
  const r0 = input.nullRatio ?? 1;
  const margin = input.nonInferiorityMargin;
  if (
    !validCountsAndExposure(input.events, input.exposure) ||
    !(alpha > 0 && alpha < 1) ||
    !(r0 > 0 && Number.isFinite(r0)) ||
    (margin !== undefined && !(margin >= 0 && Number.isFinite(margin)))
  ) {
    return undefined;
  }
  const n = x1 + x2;
  const pi0 = piOf(r0, t1, t2);
  const base = { total: n, expected: n * pi0, nullRatio: r0, sides, alpha };
  const nonInferiority = (): NonInferiorityResult | undefined => {
    if (margin === undefined) return undefined;
    const bound = 1 + margin;
    const p = n === 0 ? 1 : binomialCdf(x1, n, piOf(bound, t1, t2));
    const upper = x2 === 0 ? UNBOUNDED : ratioOf(betaQuantile(1 - alpha, x1 + 1, x2), t1, t2);
    return { bound, p, upper, noninferior: p < alpha };
  };
  const ni = nonInferiority();
  const extra = ni === undefined ? {} : { nonInferiority: ni };

  if (n === 0) return { rateRatio: null, ci: [0, UNBOUNDED], p: 1, ...base, ...extra };

  const rateRatio = x2 === 0 ? UNBOUNDED : Math.min(UNBOUNDED, x1 / t1 / (x2 / t2));
  const tail = sides === 2 ? alpha / 2 : alpha;
  const lower = x1 === 0 ? 0 : ratioOf(betaQuantile(tail, x1, x2 + 1), t1, t2);
  const upper = sides === 1 || x2 === 0 ? UNBOUNDED : ratioOf(betaQuantile(1 - tail, x1 + 1, x2), t1, t2);

  let p: number;
  if (sides === 1) p = binomialSf(x1, n, pi0);
  else if (input.twoSided === 'minlike') p = minLikelihoodP(x1, n, pi0);
  else p = Math.min(1, 2 * Math.min(binomialCdf(x1, n, pi0), binomialSf(x1, n, pi0)));

  return { rateRatio, ci: [lower, upper], p, ...base, ...extra };
}
