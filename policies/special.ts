/**
 * Special functions for the exact and Bayesian tests: log-gamma (Lanczos), the regularized incomplete
 * beta and gamma functions (continued fractions and series, after Numerical Recipes), an accurate
 * normal distribution and its quantile (Acklam's approximation refined by a Halley step), quantiles of
 * the beta and gamma distributions (safeguarded Newton on the CDF inside a bisection bracket), and the
 * binomial distribution through the incomplete beta.
 *
 * Accuracy is about 1e-12 relative for moderate arguments and 1e-10 where parameters reach 1e5 and more
 * (cancellation in the log-gamma differences). The normal distribution lives in `./normal`; the
 * names here delegate to it.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, or do I/O. Arguments outside a
 * function's domain give NaN here (documented per function); callers check and never pass NaN on.
 */
import { normalCdf, normalQuantile as normalQuantileOf, normalTail } from './normal';

const LANCZOS_G = 7;
const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
] as const;
const LOG_SQRT_2PI = 0.5 * Math.log(2 * Math.PI);

/** log Γ(x) for x > 0 (and for negative non-integers, log |Γ(x)|); NaN at 0 and negative integers. */
export function logGamma(x: number): number {
  if (!Number.isFinite(x)) return x === Infinity ? Infinity : NaN;
  if (x <= 0 && Number.isInteger(x)) return NaN;
  if (x < 0.5) {
    const s = Math.sin(Math.PI * x);
    // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
    return Math.log(Math.PI / Math.abs(s)) - logGamma(1 - x);
  }
  const z = x - 1;
  let sum = LANCZOS[0];
  for (let i = 1; i < LANCZOS.length; i++) sum += LANCZOS[i]! / (z + i);
  const t = z + LANCZOS_G + 0.5;
  return LOG_SQRT_2PI + (z + 0.5) * Math.log(t) - t + Math.log(sum);
}

/** log B(a, b) = log Γ(a) + log Γ(b) − log Γ(a + b), for a, b > 0. */
export function logBeta(a: number, b: number): number {
  return logGamma(a) + logGamma(b) - logGamma(a + b);
}

const EPS = 1e-15;
const TINY = 1e-300;
const MAX_ITERATIONS = 100_000;

/** Continued fraction of the incomplete beta function, modified Lentz (Numerical Recipes `betacf`). */
function betaContinuedFraction(x: number, a: number, b: number): number {
  const qab = a + b;
  const qap = a + 1;
  const qam = a - 1;
  let c = 1;
  let d = 1 - (qab * x) / qap;
  if (Math.abs(d) < TINY) d = TINY;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= MAX_ITERATIONS; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < TINY) d = TINY;
    c = 1 + aa / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (qab + m) * x) / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < TINY) d = TINY;
    c = 1 + aa / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < EPS) break;
  }
  return h;
}

/**
 * Both tails of the regularized incomplete beta function: lower = I_x(a, b), upper = 1 − I_x(a, b).
 * The smaller tail is computed directly (never as 1 minus something), so it keeps its relative
 * accuracy far into the tail. NaN unless a, b > 0 and 0 ≤ x ≤ 1.
 */
export function betaTails(x: number, a: number, b: number): { lower: number; upper: number } {
  if (!(a > 0) || !(b > 0) || !(x >= 0 && x <= 1) || !Number.isFinite(a) || !Number.isFinite(b)) {
    return { lower: NaN, upper: NaN };
  }
  if (x === 0) return { lower: 0, upper: 1 };
  if (x === 1) return { lower: 1, upper: 0 };
  const logFront = a * Math.log(x) + b * Math.log1p(-x) - logBeta(a, b);
  if (x < (a + 1) / (a + b + 2)) {
    const lower = Math.min(1, (Math.exp(logFront) * betaContinuedFraction(x, a, b)) / a);
    return { lower, upper: 1 - lower };
  }
  const upper = Math.min(1, (Math.exp(logFront) * betaContinuedFraction(1 - x, b, a)) / b);
  return { lower: 1 - upper, upper };
}

/** The regularized incomplete beta function I_x(a, b) = P(X ≤ x) for X ~ Beta(a, b). */
export function regularizedBeta(x: number, a: number, b: number): number {
  return betaTails(x, a, b).lower;
}

/**
 * Both tails of the regularized incomplete gamma function: lower = P(a, x), upper = Q(a, x) = 1 − P(a, x).
 * Series for x < a + 1, continued fraction (modified Lentz) otherwise; the smaller tail is computed
 * directly. NaN unless a > 0 and x ≥ 0.
 */
export function gammaTails(a: number, x: number): { lower: number; upper: number } {
  if (!(a > 0) || !(x >= 0) || !Number.isFinite(a)) return { lower: NaN, upper: NaN };
  if (x === 0) return { lower: 0, upper: 1 };
  if (x === Infinity) return { lower: 1, upper: 0 };
  const logFront = a * Math.log(x) - x - logGamma(a);
  if (x < a + 1) {
    let ap = a;
    let del = 1 / a;
    let sum = del;
    for (let n = 0; n < MAX_ITERATIONS; n++) {
      ap += 1;
      del *= x / ap;
      sum += del;
      if (Math.abs(del) < Math.abs(sum) * EPS) break;
    }
    const lower = Math.min(1, sum * Math.exp(logFront));
    return { lower, upper: 1 - lower };
  }
  let b = x + 1 - a;
  let c = 1 / TINY;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i <= MAX_ITERATIONS; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < TINY) d = TINY;
    c = b + an / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < EPS) break;
  }
  const upper = Math.min(1, Math.exp(logFront) * h);
  return { lower: 1 - upper, upper };
}

/** P(a, x) = P(X ≤ x) for X ~ Gamma(shape a, rate 1). */
export function regularizedGammaP(a: number, x: number): number {
  return gammaTails(a, x).lower;
}

/** Q(a, x) = 1 − P(a, x) = P(X > x) for X ~ Gamma(shape a, rate 1). */
export function regularizedGammaQ(a: number, x: number): number {
  return gammaTails(a, x).upper;
}

/** Standard normal CDF Φ(z), accurate in both tails (see ./normal). */
export function standardNormalCdf(z: number): number {
  return normalCdf(z);
}

/** Standard normal upper tail 1 − Φ(z), accurate for large z. */
export function standardNormalSf(z: number): number {
  return normalTail(z);
}

/** Quantile of the standard normal, Φ⁻¹(p): −Infinity at 0, Infinity at 1, NaN outside [0, 1]. */
export function normalQuantile(p: number): number {
  if (!(p >= 0 && p <= 1)) return NaN;
  return normalQuantileOf(p);
}

/**
 * Solves cdf(x) = target for an increasing cdf with density pdf on (lo, hi), by Newton steps kept
 * inside a shrinking bisection bracket. The bracket is bisected geometrically when it spans orders of
 * magnitude, so quantiles near 0 keep their relative accuracy.
 */
function invertCdf(
  target: number,
  cdf: (x: number) => number,
  pdf: (x: number) => number,
  lo: number,
  hi: number,
  start: number,
): number {
  let x = start > lo && start < hi ? start : 0.5 * (lo + hi);
  for (let i = 0; i < 400; i++) {
    const f = cdf(x) - target;
    if (f === 0) return x;
    if (f < 0) lo = x;
    else hi = x;
    const density = pdf(x);
    let next = density > 0 && Number.isFinite(density) ? x - f / density : NaN;
    if (!(next > lo && next < hi)) {
      if (lo > 0 && hi / lo > 16) next = Math.sqrt(lo * hi);
      else if (lo === 0) next = hi / 16;
      else next = 0.5 * (lo + hi);
    }
    if (Math.abs(next - x) <= 1e-15 * Math.abs(x) || hi - lo <= 1e-15 * hi) return next;
    x = next;
  }
  return x;
}

/** Quantile of Beta(a, b): the x with I_x(a, b) = p. NaN unless a, b > 0 and 0 ≤ p ≤ 1. */
export function betaQuantile(p: number, a: number, b: number): number {
  if (!(a > 0) || !(b > 0) || !(p >= 0 && p <= 1) || !Number.isFinite(a) || !Number.isFinite(b)) return NaN;
  if (p === 0) return 0;
  if (p === 1) return 1;
  // Solve in the lighter tail: for p > ½ the quantile is 1 − (the 1 − p quantile of Beta(b, a)).
  if (p > 0.5) return 1 - betaQuantile(1 - p, b, a);
  const lb = logBeta(a, b);
  const cdf = (x: number): number => regularizedBeta(x, a, b);
  const pdf = (x: number): number => Math.exp((a - 1) * Math.log(x) + (b - 1) * Math.log1p(-x) - lb);
  // Start from the normal approximation of the mean and variance, clamped into (0, 1).
  const mean = a / (a + b);
  const sd = Math.sqrt((a * b) / ((a + b) * (a + b) * (a + b + 1)));
  const guess = Math.min(1 - 1e-12, Math.max(1e-300, mean + sd * normalQuantile(p)));
  return invertCdf(p, cdf, pdf, 0, 1, guess);
}

/**
 * Quantile of Gamma(shape, rate): the x with P(shape, rate·x) = p. NaN unless shape > 0, rate > 0 and
 * 0 ≤ p ≤ 1; Infinity at p = 1.
 */
export function gammaQuantile(p: number, shape: number, rate = 1): number {
  if (!(shape > 0 && rate > 0) || !(p >= 0 && p <= 1) || !Number.isFinite(shape) || !Number.isFinite(rate)) {
    return NaN;
  }
  if (p === 0) return 0;
  if (p === 1) return Infinity;
  const lg = logGamma(shape);
  const upper = p > 0.5;
  const target = upper ? 1 - p : p;
  // For p > ½ solve Q(x) = 1 − p through its increasing complement 1 − Q, written as −Q to keep the tail.
  const cdf = upper
    ? (x: number): number => -regularizedGammaQ(shape, x)
    : (x: number): number => regularizedGammaP(shape, x);
  const pdf = (x: number): number => Math.exp((shape - 1) * Math.log(x) - x - lg);
  let hi = Math.max(1, 2 * shape);
  while (regularizedGammaP(shape, hi) < p && hi < 1e300) hi *= 2;
  const guess = Math.max(1e-300, shape + Math.sqrt(shape) * normalQuantile(p));
  const x = invertCdf(upper ? -target : target, cdf, pdf, 0, hi, guess);
  return x / rate;
}

/** Binomial probability P(X = k) for X ~ Binomial(n, p), computed in log space. */
export function binomialPmf(k: number, n: number, p: number): number {
  if (!(k >= 0 && k <= n) || !Number.isInteger(k) || !Number.isInteger(n)) return 0;
  if (p <= 0) return k === 0 ? 1 : 0;
  if (p >= 1) return k === n ? 1 : 0;
  const logChoose = logGamma(n + 1) - logGamma(k + 1) - logGamma(n - k + 1);
  return Math.exp(logChoose + k * Math.log(p) + (n - k) * Math.log1p(-p));
}

/** Binomial lower tail P(X ≤ k) = I_{1−p}(n − k, k + 1), for integer n ≥ 0 and 0 ≤ p ≤ 1. */
export function binomialCdf(k: number, n: number, p: number): number {
  const j = Math.floor(k);
  if (j < 0) return 0;
  if (j >= n) return 1;
  if (p <= 0) return 1;
  if (p >= 1) return 0;
  return betaTails(p, j + 1, n - j).upper;
}

/** Binomial upper tail P(X ≥ k) = I_p(k, n − k + 1), for integer n ≥ 0 and 0 ≤ p ≤ 1. */
export function binomialSf(k: number, n: number, p: number): number {
  const j = Math.ceil(k);
  if (j <= 0) return 1;
  if (j > n) return 0;
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  return betaTails(p, j, n - j + 1).lower;
}
