/**
 * The standard normal distribution, in one place for every statistic of fleetgate: density, both tails
 * accurate to about 1e-14 relative, and the quantile function.
 *
 * Pure and deterministic: imported by workflow code. Never imports node modules or third-party values.
 */

const SQRT_2PI = Math.sqrt(2 * Math.PI);

/** Standard normal density. */
export function normalPdf(x: number): number {
  return Math.exp(-0.5 * x * x) / SQRT_2PI;
}

/**
 * Upper tail Φ̄(x) = P(Z ≥ x), accurate to about 1e-14 relative in both tails: a positive-term series of
 * erf for |x| ≤ 3 and the Laplace continued fraction of the Mills ratio beyond.
 */
export function normalTail(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x > 3) return millsTail(x);
  if (x < -3) return 1 - millsTail(-x);
  return 0.5 - 0.5 * erfSeries(x / Math.SQRT2);
}

/** Standard normal cumulative distribution Φ(x) = 1 − Φ̄(x). */
export function normalCdf(x: number): number {
  return normalTail(-x);
}

/** erf(y) = 2/√π · e^(−y²) · Σ 2ⁿ y^(2n+1) / (1·3·…·(2n+1)), all terms of the sign of y. */
function erfSeries(y: number): number {
  const y2 = 2 * y * y;
  let term = y;
  let sum = y;
  for (let n = 1; n < 200; n++) {
    term *= y2 / (2 * n + 1);
    sum += term;
    if (Math.abs(term) <= 1e-17 * Math.abs(sum)) break;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-y * y) * sum;
}

/** Φ̄(x) for x > 0 from φ(x) / (x + 1/(x + 2/(x + 3/(x + …)))), by the modified Lentz method. */
function millsTail(x: number): number {
  if (x > 40) return 0;
  const tiny = 1e-300;
  let f = x;
  let c = x;
  let d = 0;
  for (let n = 1; n < 5000; n++) {
    d = x + n * d;
    if (d === 0) d = tiny;
    c = x + n / c;
    if (c === 0) c = tiny;
    d = 1 / d;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return normalPdf(x) / f;
}

/**
 * The x with Φ̄(x) = q, for 0 < q < 1: Acklam's rational approximation (relative error 1.2e-9) and one
 * Halley step on the accurate tail, so tiny tail probabilities keep full relative precision.
 */
export function normalTailQuantile(q: number): number {
  if (!(q > 0)) return Infinity;
  if (!(q < 1)) return -Infinity;
  // Acklam gives x with Φ(x) = p; work with the smaller tail to keep precision.
  const lowerTail = q > 0.5;
  const p = lowerTail ? 1 - q : q; // p ≤ 0.5: the tail probability of |x|
  let x = -acklam(p); // Φ̄(x) = p, x ≥ 0
  for (let i = 0; i < 2; i++) {
    const tail = normalTail(x);
    const e = tail - p; // want 0; d tail/dx = −φ(x)
    const pdf = normalPdf(x);
    if (!(pdf > 0)) break;
    const u = e / pdf;
    x = x + u / (1 - (x * u) / 2);
  }
  return lowerTail ? -x : x;
}

/** Inverse of Φ: the x with Φ(x) = p. */
export function normalQuantile(p: number): number {
  return -normalTailQuantile(p);
}

const ACKLAM_A = [
  -3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1,
  2.506628277459239,
] as const;
const ACKLAM_B = [
  -5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1,
] as const;
const ACKLAM_C = [
  -7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968,
  2.938163982698783,
] as const;
const ACKLAM_D = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416] as const;

/** Acklam's approximation of Φ⁻¹(p) for 0 < p ≤ 0.5. */
function acklam(p: number): number {
  const [a0, a1, a2, a3, a4, a5] = ACKLAM_A;
  const [b0, b1, b2, b3, b4] = ACKLAM_B;
  const [c0, c1, c2, c3, c4, c5] = ACKLAM_C;
  const [d0, d1, d2, d3] = ACKLAM_D;
  if (p < 0.02425) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (
      (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) /
      ((((d0 * q + d1) * q + d2) * q + d3) * q + 1)
    );
  }
  const q = p - 0.5;
  const r = q * q;
  return (
    ((((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q) /
    (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1)
  );
}
