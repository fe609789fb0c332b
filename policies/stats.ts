/**
 * Statistics for the canary gate: summaries of sufficient statistics, two-sample differences, and the
 * mixture sequential probability ratio test (mSPRT, Johari et al., "Always Valid Inference") with its
 * always-valid p-value and confidence sequence.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, do I/O, or return NaN. Inputs that
 * cannot support an estimate give `undefined` (or an uninformative result), never a number made up.
 */
import { normalCdf as normalCdfOf, normalTail } from './normal';

/** Share of events that are errors; 0 when there are none. */
export function proportion(errors: number, n: number): number {
  return n > 0 ? errors / n : 0;
}

export interface Moments {
  n: number;
  sum: number;
  sumSq: number;
}

/**
 * Mean and unbiased sample variance from count, sum and sum of squares. The mean is 0 when n = 0 and
 * the variance is 0 when n < 2 (callers that need a variance check `n` themselves). Rounding can make
 * `sumSq - sum²/n` slightly negative; it is clamped at 0.
 */
export function meanVar(m: Moments): { n: number; mean: number; variance: number } {
  if (m.n <= 0) return { n: 0, mean: 0, variance: 0 };
  const mean = m.sum / m.n;
  if (m.n < 2) return { n: m.n, mean, variance: 0 };
  const variance = Math.max(0, (m.sumSq - (m.sum * m.sum) / m.n) / (m.n - 1));
  return { n: m.n, mean, variance };
}

/** An estimate of candidate minus production and the variance of that estimate. */
export interface Difference {
  estimate: number;
  variance: number;
}

/**
 * Difference of error rates, candidate minus production. The estimate uses the raw rates x/n; the
 * variance p(1-p)/n of each arm uses the continuity-adjusted rate p = (x + ½)/(n + 1), so it is never
 * zero (an arm with no errors yet still has an uncertain rate) and slightly conservative for rare
 * errors. Undefined when either arm has no observations.
 */
export function diffOfProportions(
  cand: { x: number; n: number },
  prod: { x: number; n: number },
): Difference | undefined {
  if (!(cand.n > 0) || !(prod.n > 0)) return undefined;
  const armVar = (a: { x: number; n: number }): number => {
    const p = (a.x + 0.5) / (a.n + 1);
    return (p * (1 - p)) / a.n;
  };
  const variance = armVar(cand) + armVar(prod);
  const estimate = cand.x / cand.n - prod.x / prod.n;
  if (!Number.isFinite(estimate) || !(variance > 0) || !Number.isFinite(variance)) return undefined;
  return { estimate, variance };
}

/**
 * Difference of means, candidate minus production, with the Welch (unpooled) variance s₁²/n₁ + s₂²/n₂.
 * Undefined when either arm has fewer than two observations or both arms have zero variance.
 */
export function diffOfMeans(cand: Moments, prod: Moments): Difference | undefined {
  if (!(cand.n >= 2) || !(prod.n >= 2)) return undefined;
  const c = meanVar(cand);
  const p = meanVar(prod);
  const variance = c.variance / c.n + p.variance / p.n;
  const estimate = c.mean - p.mean;
  if (!Number.isFinite(estimate) || !(variance > 0) || !Number.isFinite(variance)) return undefined;
  return { estimate, variance };
}

export interface MsprtInput {
  estimate: number;
  /** Variance of the estimate at this look (must be > 0). */
  variance: number;
  /** Standard deviation τ of the normal mixture over effects, in the metric's units. */
  tau: number;
  /** Null value of the effect; 0 unless given. */
  theta0?: number;
  /** Level of the test and of the confidence sequence. */
  alpha: number;
}

export interface MsprtResult {
  /** log Λ; always finite. */
  logLambda: number;
  /** Λ = exp(logLambda); may be Infinity for overwhelming evidence. */
  lambda: number;
  /** Reject H0 when Λ ≥ 1/α. */
  boundary: number;
  /** Always-valid p-value min(1, 1/Λ). */
  pValue: number;
  /** Confidence sequence at level α. */
  ci: [number, number];
}

/**
 * The normal-mixture mSPRT for H0: θ = θ0, for an asymptotically normal estimate θ̂ with variance V and
 * mixture N(θ0, τ²):
 *
 *   Λ = sqrt(V / (V + τ²)) · exp( τ² (θ̂ − θ0)² / (2 V (V + τ²)) )
 *
 * computed in log space. Under H0, P(Λ ever reaches 1/α) ≤ α over any number of looks, so
 * p = min(1, 1/Λ) is an always-valid p-value (its running minimum is too), and inverting the test gives
 * the confidence sequence
 *
 *   θ̂ ± sqrt( 2V(V + τ²)/τ² · ( log(1/α) + ½ log((V + τ²)/V) ) )
 *
 * which excludes θ0 exactly when Λ ≥ 1/α. With a variance or τ that is not positive and finite the
 * result carries no evidence: Λ = 1, p = 1 and an unbounded interval.
 */
export function msprt(input: MsprtInput): MsprtResult {
  const { estimate, variance: v, tau, alpha } = input;
  const theta0 = input.theta0 ?? 0;
  const boundary = 1 / alpha;
  const tau2 = tau * tau;
  if (
    !(v > 0) ||
    !Number.isFinite(v) ||
    !(tau2 > 0) ||
    !Number.isFinite(tau2) ||
    !Number.isFinite(estimate)
  ) {
    return { logLambda: 0, lambda: 1, boundary, pValue: 1, ci: [-Infinity, Infinity] };
  }
  const d = estimate - theta0;
  const sum = v + tau2;
  // log(V/(V+τ²)) written as -log1p(τ²/V) to stay accurate when τ² ≪ V.
  const logRatio = Math.log1p(tau2 / v); // = log((V+τ²)/V)
  const raw = -0.5 * logRatio + (tau2 * d * d) / (2 * v * sum);
  const logLambda = Number.isFinite(raw) ? raw : Number.MAX_VALUE;
  const lambda = Math.exp(logLambda);
  const pValue = Math.min(1, Math.exp(-logLambda));
  const half = Math.sqrt(((2 * v * sum) / tau2) * (Math.log(1 / alpha) + 0.5 * logRatio));
  return { logLambda, lambda, boundary, pValue, ci: [estimate - half, estimate + half] };
}

/** Complementary error function, erfc(x) = 2 Φ̄(x √2) (see ./normal). */
export function erfc(x: number): number {
  return 2 * normalTail(x * Math.SQRT2);
}

/** Standard normal cumulative distribution Φ(z). */
export function normalCdf(z: number): number {
  return normalCdfOf(z);
}

/**
 * One-sided p-value of a fixed-sample z-test of H0: θ ≤ 0 against θ > 0, P(Z ≥ θ̂/√V). Valid for one
 * look only: repeating it at every look inflates false alarms, which the tests demonstrate. Not used to
 * decide anything. 1 when the variance is not positive.
 */
export function fixedZTest(estimate: number, variance: number): number {
  if (!(variance > 0) || !Number.isFinite(variance) || !Number.isFinite(estimate)) return 1;
  return normalTail(estimate / Math.sqrt(variance));
}
