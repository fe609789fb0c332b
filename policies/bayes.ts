/**
 * Bayesian posteriors for the canary gate: the Gamma-Poisson model of two event rates with exposure
 * (posterior probability that the candidate's rate exceeds production's by more than a margin, exact
 * through the beta distribution) and the Beta-Binomial model of two error rates (probability of a
 * difference above a margin by deterministic adaptive quadrature).
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source (no Monte Carlo), do I/O, or put
 * NaN or ±Infinity in a result (results travel as JSON; an unbounded end is Number.MAX_VALUE).
 * Invalid input gives undefined.
 */
import { betaQuantile, betaTails, logBeta } from './special';
import { validCountsAndExposure } from './rates';

const UNBOUNDED = Number.MAX_VALUE;

function finiteOrUnbounded(x: number): number {
  return Number.isFinite(x) ? x : UNBOUNDED;
}

export interface GammaPrior {
  /** Shape α > 0. */
  shape: number;
  /** Rate β ≥ 0 (0 gives an improper prior, proper after any positive exposure). */
  rate: number;
}

/** Jeffreys' prior for a Poisson rate, Gamma(½, 0): the default. */
export const JEFFREYS_GAMMA: GammaPrior = { shape: 0.5, rate: 0 };

export interface GammaPoissonInput {
  /** Event counts [candidate, production]: non-negative integers. */
  events: readonly [number, number];
  /** Exposures [candidate, production]: positive and finite. */
  exposure: readonly [number, number];
  /** The same prior for both rates; Jeffreys' Gamma(½, 0) unless given. */
  prior?: GammaPrior;
  /** Relative margin m > −1: the probability reported is P(λ₁/λ₂ > 1 + m). 0 unless given. */
  margin?: number;
  /** Probability inside the credible interval; 0.95 unless given. */
  level?: number;
}

export interface GammaPoissonResult {
  /** Posterior Gamma(shape, rate) of each rate, [candidate, production], and its mean. */
  posterior: [{ shape: number; rate: number; mean: number }, { shape: number; rate: number; mean: number }];
  /** P(λ₁/λ₂ > 1 + margin | data), exact. */
  probAboveMargin: number;
  /** P(λ₁/λ₂ > 1 | data): the posterior probability of any harm. */
  probHarm: number;
  /** Posterior median of the ratio λ₁/λ₂. */
  median: number;
  /** Equal-tailed credible interval of the ratio at `level`. */
  ci: [number, number];
  margin: number;
  level: number;
}

/**
 * The Gamma-Poisson model of two rates. With xᵢ ~ Poisson(λᵢ tᵢ) and prior Gamma(α, β), the posterior
 * of λᵢ is Gamma(αᵢ, βᵢ) with αᵢ = α + xᵢ, βᵢ = β + tᵢ.
 *
 * Exact ratio: Uᵢ = βᵢλᵢ ~ Gamma(αᵢ, 1) are independent, so W = U₁/(U₁ + U₂) ~ Beta(α₁, α₂) and
 * ρ = λ₁/λ₂ = (β₂/β₁) · W/(1 − W). Hence, with k = c β₁/β₂,
 *
 *   P(ρ > c) = P(W > k/(1 + k)) = 1 − I_{k/(1+k)}(α₁, α₂),
 *
 * and the q-quantile of ρ is (β₂/β₁) · w/(1 − w) with w the q-quantile of Beta(α₁, α₂).
 */
export function gammaPoissonRateRatio(input: GammaPoissonInput): GammaPoissonResult | undefined {
  const [x1, x2] = input.events;
  const [t1, t2] = input.exposure;
  const prior = input.prior ?? JEFFREYS_GAMMA;
  const margin = input.margin ?? 0;
  const level = input.level ?? 0.95;
  if (
    !validCountsAndExposure(input.events, input.exposure) ||
    !(prior.shape > 0 && Number.isFinite(prior.shape)) ||
    !(prior.rate >= 0 && Number.isFinite(prior.rate)) ||
    !(margin > -1 && Number.isFinite(margin)) ||
    !(level > 0 && level < 1)
  ) {
    return undefined;
  }
  const a1 = prior.shape + x1;
  const a2 = prior.shape + x2;
  const b1 = prior.rate + t1;
  const b2 = prior.rate + t2;
  const scale = b2 / b1;
  const probAbove = (c: number): number => {
    const k = c / scale;
    return betaTails(k / (1 + k), a1, a2).upper;
  };
  const quantile = (q: number): number => {
    const w = betaQuantile(q, a1, a2);
    return w >= 1 ? UNBOUNDED : finiteOrUnbounded((scale * w) / (1 - w));
  };
  return {
    posterior: [
      { shape: a1, rate: b1, mean: a1 / b1 },
      { shape: a2, rate: b2, mean: a2 / b2 },
    ],
    probAboveMargin: probAbove(1 + margin),
    probHarm: probAbove(1),
    median: quantile(0.5),
    ci: [quantile((1 - level) / 2), quantile((1 + level) / 2)],
    margin,
    level,
  };
}

export interface BetaPrior {
  a: number;
  b: number;
}

export interface BetaBinomialInput {
  /** Successes (errors, for an error rate) [candidate, production]: integers in [0, trials]. */
  successes: readonly [number, number];
  /** Trials (labeled events) [candidate, production]: non-negative integers. */
  trials: readonly [number, number];
  /** The same prior for both proportions; the uniform Beta(1, 1) unless given. */
  prior?: BetaPrior;
  /** Absolute margin: the probability reported is P(p₁ − p₂ > margin). 0 unless given. */
  margin?: number;
  /** Probability inside the credible intervals; 0.95 unless given. */
  level?: number;
}

export interface BetaPosterior {
  a: number;
  b: number;
  mean: number;
  ci: [number, number];
}

export interface BetaBinomialResult {
  /** Posterior Beta(a, b) of each proportion, [candidate, production], with mean and credible interval. */
  posterior: [BetaPosterior, BetaPosterior];
  /** P(p₁ − p₂ > margin | data), by quadrature accurate to about 1e-9. */
  probAboveMargin: number;
  /** P(p₁ > p₂ | data). */
  probHarm: number;
  /** Posterior mean and equal-tailed credible interval of the difference p₁ − p₂. */
  difference: { mean: number; ci: [number, number] };
  margin: number;
  level: number;
}

/** Gauss-Kronrod 7-15 nodes (non-negative half) and weights. */
const GK_NODES = [
  0.991455371120813, 0.949107912342759, 0.864864423359769, 0.741531185599394, 0.586087235467691,
  0.405845151377397, 0.207784955007898, 0,
] as const;
const GK_WEIGHTS = [
  0.022935322010529, 0.063092092629979, 0.10479001032225, 0.140653259715525, 0.169004726639267,
  0.190350578064785, 0.204432940075298, 0.209482141084728,
] as const;
const GAUSS_WEIGHTS = [0.12948496616887, 0.279705391489277, 0.381830050505119, 0.417959183673469] as const;

/** One Gauss-Kronrod 15-point panel: the Kronrod estimate and its difference from the 7-point Gauss rule. */
function kronrod(f: (x: number) => number, a: number, b: number): { value: number; error: number } {
  const c = 0.5 * (a + b);
  const h = 0.5 * (b - a);
  const fc = f(c);
  let k = GK_WEIGHTS[7] * fc;
  let g = GAUSS_WEIGHTS[3] * fc;
  for (let i = 0; i < 7; i++) {
    const dx = h * GK_NODES[i]!;
    const sum = f(c - dx) + f(c + dx);
    k += GK_WEIGHTS[i]! * sum;
    if (i % 2 === 1) g += GAUSS_WEIGHTS[(i - 1) / 2]! * sum;
  }
  return { value: k * h, error: Math.abs((k - g) * h) };
}

/** Adaptive Gauss-Kronrod over [a, b] split at `breaks`; deterministic, absolute tolerance `tol`. */
function integrate(f: (x: number) => number, breaks: number[], tol: number): number {
  const points = [...new Set(breaks)].sort((x, y) => x - y);
  const stack: { a: number; b: number; depth: number }[] = [];
  for (let i = points.length - 2; i >= 0; i--) stack.push({ a: points[i]!, b: points[i + 1]!, depth: 0 });
  const panelTol = tol / Math.max(1, points.length - 1);
  let total = 0;
  while (stack.length > 0) {
    const { a, b, depth } = stack.pop()!;
    if (!(b > a)) continue;
    const r = kronrod(f, a, b);
    if (r.error <= panelTol * Math.pow(0.5, depth) || depth >= 40) {
      total += r.value;
    } else {
      const m = 0.5 * (a + b);
      stack.push({ a: m, b, depth: depth + 1 }, { a, b: m, depth: depth + 1 });
    }
  }
  return total;
}

/** Probabilities at which the posterior quantiles that place quadrature breakpoints are taken. */
const BREAK_PROBABILITIES = [
  1e-13,
  1e-9,
  1e-6,
  1e-3,
  0.02,
  0.1,
  0.25,
  0.5,
  0.75,
  0.9,
  0.98,
  1 - 1e-3,
  1 - 1e-6,
  1 - 1e-9,
  1 - 1e-13,
] as const;

/**
 * d ↦ P(p₁ − p₂ > d) for independent p₁ ~ Beta(a₁, b₁), p₂ ~ Beta(a₂, b₂):
 *
 *   P(p₁ − p₂ > d) = ∫ f₂(y) · (1 − I_{y+d}(a₁, b₁)) dy
 *
 * over y from the 1e-13 to the 1 − 1e-13 quantile of p₂ (the mass left out is 2e-13) and below 1 − d
 * (above it p₁ − p₂ > d is impossible). The integral is adaptive in y, on breakpoints at quantiles of
 * both posteriors, so a narrow posterior on either side is resolved.
 */
function differenceSurvival(a1: number, b1: number, a2: number, b2: number): (d: number) => number {
  const lb2 = logBeta(a2, b2);
  const density = (y: number): number =>
    y <= 0 || y >= 1 ? 0 : Math.exp((a2 - 1) * Math.log(y) + (b2 - 1) * Math.log1p(-y) - lb2);
  const survival1 = (x: number): number => (x <= 0 ? 1 : x >= 1 ? 0 : betaTails(x, a1, b1).upper);
  const q1 = BREAK_PROBABILITIES.map((q) => betaQuantile(q, a1, b1));
  const q2 = BREAK_PROBABILITIES.map((q) => betaQuantile(q, a2, b2));
  const lo = q2[0]!;
  const top = q2[q2.length - 1]!;
  return (d: number): number => {
    if (d >= 1) return 0;
    if (d <= -1) return 1;
    const hi = Math.min(top, 1 - d);
    if (!(hi > lo)) return 0;
    const breaks = [lo, hi, ...q2, ...q1.map((q) => q - d)].filter((x) => x >= lo && x <= hi);
    const f = (y: number): number => {
      const w = density(y);
      return w === 0 ? 0 : w * survival1(y + d);
    };
    return Math.min(1, Math.max(0, integrate(f, breaks, 1e-11)));
  };
}

/**
 * The Beta-Binomial model of two proportions. With xᵢ ~ Binomial(nᵢ, pᵢ) and prior Beta(a, b), the
 * posterior of pᵢ is Beta(a + xᵢ, b + nᵢ − xᵢ). P(p₁ − p₂ > margin) is a one-dimensional integral,
 * computed by adaptive Gauss-Kronrod quadrature (no sampling, the same answer everywhere); the credible
 * interval of the difference inverts that probability by bisection.
 */
export function betaBinomial(input: BetaBinomialInput): BetaBinomialResult | undefined {
  const [x1, x2] = input.successes;
  const [n1, n2] = input.trials;
  const prior = input.prior ?? { a: 1, b: 1 };
  const margin = input.margin ?? 0;
  const level = input.level ?? 0.95;
  const count = (x: number, n: number): boolean =>
    Number.isInteger(x) && Number.isInteger(n) && x >= 0 && n >= 0 && x <= n;
  if (
    !count(x1, n1) ||
    !count(x2, n2) ||
    !(prior.a > 0 && prior.b > 0 && Number.isFinite(prior.a) && Number.isFinite(prior.b)) ||
    !(margin > -1 && margin < 1) ||
    !(level > 0 && level < 1)
  ) {
    return undefined;
  }
  const a1 = prior.a + x1;
  const b1 = prior.b + n1 - x1;
  const a2 = prior.a + x2;
  const b2 = prior.b + n2 - x2;
  const tail = (1 - level) / 2;
  const posterior = (a: number, b: number): BetaPosterior => ({
    a,
    b,
    mean: a / (a + b),
    ci: [betaQuantile(tail, a, b), betaQuantile(1 - tail, a, b)],
  });
  const above = differenceSurvival(a1, b1, a2, b2);
  // The q-quantile of p₁ − p₂ is the d with P(p₁ − p₂ > d) = 1 − q; that probability falls with d.
  // The bracket is the support of the difference, up to quantiles 1e-13 of either posterior.
  const quantile = (q: number): number => {
    let lo = betaQuantile(1e-13, a1, b1) - betaQuantile(1 - 1e-13, a2, b2);
    let hi = betaQuantile(1 - 1e-13, a1, b1) - betaQuantile(1e-13, a2, b2);
    while (hi - lo > 1e-10) {
      const mid = 0.5 * (lo + hi);
      if (above(mid) > 1 - q) lo = mid;
      else hi = mid;
    }
    return 0.5 * (lo + hi);
  };
  const p1 = posterior(a1, b1);
  const p2 = posterior(a2, b2);
  return {
    posterior: [p1, p2],
    probAboveMargin: above(margin),
    probHarm: above(0),
    difference: { mean: p1.mean - p2.mean, ci: [quantile(tail), quantile(1 - tail)] },
    margin,
    level,
  };
}
