/**
 * Stratified (pooled) comparison of a binary metric across cohorts: the Mantel-Haenszel common risk
 * difference, the Cochran-Mantel-Haenszel test and the Mantel-Haenszel common odds ratio.
 *
 * Each stratum is one cohort's 2x2 table: candidate errors of candidate labeled, production errors of
 * production labeled. Pooling within strata, never across them, keeps the comparison fair when cohorts
 * differ both in error rate and in how much of their traffic went to the candidate; the naive pooled
 * difference can then even have the wrong sign (Simpson's paradox).
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, do I/O, mutate its inputs, or put
 * NaN or ±Infinity in a result. What the data cannot estimate is `undefined`, never a made-up number.
 */
import { normalQuantile, regularizedGammaQ, standardNormalSf } from './special';

/** Errors `x` out of `n` labeled events of one arm. */
export interface Arm {
  x: number;
  n: number;
}

/** One stratum (cohort): the candidate arm and the production arm. */
export interface Stratum {
  name?: string;
  candidate: Arm;
  production: Arm;
}

/** Two-sided p-value of a standard normal statistic, P(|Z| ≥ |z|). */
function twoSidedP(z: number): number {
  return Math.min(1, 2 * standardNormalSf(Math.abs(z)));
}

/** Upper tail of the chi-square distribution with one degree of freedom, P(χ²₁ ≥ s). */
export function chiSquare1Sf(s: number): number {
  if (!(s > 0)) return 1;
  return Math.min(1, regularizedGammaQ(0.5, s / 2));
}

/** A stratum whose counts are usable: both arms observed, 0 ≤ x ≤ n, all finite. */
function usable(s: Stratum): boolean {
  const ok = (a: Arm) => Number.isFinite(a.x) && Number.isFinite(a.n) && a.n > 0 && a.x >= 0 && a.x <= a.n;
  return ok(s.candidate) && ok(s.production);
}

export type RiskDifferenceVariance = 'sato' | 'greenland-robins';

export interface PooledRiskDifference {
  /** Mantel-Haenszel common risk difference, candidate minus production (positive = more errors). */
  estimate: number;
  /** Variance of the estimate (see `pooledRiskDifference` for which). */
  variance: number;
  ci: [number, number];
  /** estimate / √variance. */
  z: number;
  /** Two-sided p-value of H0: common difference 0 (Wald, from z). */
  pValue: number;
  /** Naive difference of the totals, Σx_c/Σn_c − Σx_p/Σn_p, for comparison; misleading when confounded. */
  crude: number;
  /** Per usable stratum: its own difference and its share of the Mantel-Haenszel weight. */
  strata: { name?: string; difference: number; weight: number }[];
  varianceMethod: RiskDifferenceVariance;
}

/**
 * Mantel-Haenszel common risk difference over strata k with candidate x1/n1 and production x2/n2,
 * N = n1 + n2:
 *
 *   d_MH = Σ w_k (x1/n1 − x2/n2) / Σ w_k,  w_k = n1·n2 / N
 *
 * Variance, `variance` option:
 *
 *   - 'sato' (default; Sato 1989, as in SAS PROC FREQ), consistent both for a few large strata and for
 *     many sparse ones:
 *       Var = (d_MH · Σ P_k + Σ Q_k) / (Σ w_k)²
 *       P_k = (n1²·x2 − n2²·x1 + n1·n2·(n2 − n1)/2) / N²,  Q_k = (x1·(n2 − x2) + x2·(n1 − x1)) / (2N)
 *   - 'greenland-robins' (the large-strata variance of Greenland and Robins 1985):
 *       Var = Σ w_k² (p1·q1/n1 + p2·q2/n2) / (Σ w_k)²
 *
 * Both reduce to p1·q1/n1 + p2·q2/n2 for one stratum. The interval is Wald: d_MH ± z(1−α/2)·√Var.
 * Strata with an empty arm carry no weight and are left out. Undefined when no stratum is usable, the
 * variance is not positive (for instance no errors anywhere) or α is not in (0, 1).
 */
export function pooledRiskDifference(
  strata: readonly Stratum[],
  options: { alpha?: number; variance?: RiskDifferenceVariance } = {},
): PooledRiskDifference | undefined {
  const alpha = options.alpha ?? 0.05;
  const method = options.variance ?? 'sato';
  const used = strata.filter(usable);
  if (used.length === 0 || !(alpha > 0 && alpha < 1)) return undefined;
  let sumW = 0;
  let sumWd = 0;
  for (const s of used) {
    const { x: x1, n: n1 } = s.candidate;
    const { x: x2, n: n2 } = s.production;
    const w = (n1 * n2) / (n1 + n2);
    sumW += w;
    sumWd += w * (x1 / n1 - x2 / n2);
  }
  const estimate = sumWd / sumW;
  let variance: number;
  if (method === 'sato') {
    let sumP = 0;
    let sumQ = 0;
    for (const s of used) {
      const { x: x1, n: n1 } = s.candidate;
      const { x: x2, n: n2 } = s.production;
      const big = n1 + n2;
      sumP += (n1 * n1 * x2 - n2 * n2 * x1 + (n1 * n2 * (n2 - n1)) / 2) / (big * big);
      sumQ += (x1 * (n2 - x2) + x2 * (n1 - x1)) / (2 * big);
    }
    variance = (estimate * sumP + sumQ) / (sumW * sumW);
  } else {
    let sum = 0;
    for (const s of used) {
      const { x: x1, n: n1 } = s.candidate;
      const { x: x2, n: n2 } = s.production;
      const w = (n1 * n2) / (n1 + n2);
      const p1 = x1 / n1;
      const p2 = x2 / n2;
      sum += w * w * ((p1 * (1 - p1)) / n1 + (p2 * (1 - p2)) / n2);
    }
    variance = sum / (sumW * sumW);
  }
  if (!(variance > 0) || !Number.isFinite(variance) || !Number.isFinite(estimate)) return undefined;
  const se = Math.sqrt(variance);
  const half = normalQuantile(1 - alpha / 2) * se;
  const z = estimate / se;
  const total = (pick: (s: Stratum) => number) => used.reduce((acc, s) => acc + pick(s), 0);
  const crude =
    total((s) => s.candidate.x) / total((s) => s.candidate.n) -
    total((s) => s.production.x) / total((s) => s.production.n);
  return {
    estimate,
    variance,
    ci: [estimate - half, estimate + half],
    z,
    pValue: twoSidedP(z),
    crude,
    strata: used.map((s) => {
      const { x: x1, n: n1 } = s.candidate;
      const { x: x2, n: n2 } = s.production;
      return {
        ...(s.name !== undefined ? { name: s.name } : {}),
        difference: x1 / n1 - x2 / n2,
        weight: (n1 * n2) / (n1 + n2) / sumW,
      };
    }),
    varianceMethod: method,
  };
}

export interface CmhResult {
  /** Cochran-Mantel-Haenszel chi-square statistic (1 degree of freedom). */
  statistic: number;
  /** P(χ²₁ ≥ statistic): two-sided p-value of H0 "no association in any stratum". */
  pValue: number;
  /** Σ (x1 − E[x1]): positive when the candidate has more errors than expected under H0. */
  delta: number;
  continuityCorrection: boolean;
  /** Mantel-Haenszel common odds ratio (odds of an error, candidate over production); undefined at 0/0. */
  oddsRatio: number | undefined;
  /** Robins-Breslow-Greenland confidence interval of the odds ratio at level 1 − α; undefined with it. */
  oddsRatioCi: [number, number] | undefined;
  /** Number of strata that entered the test. */
  strata: number;
}

/**
 * The Cochran-Mantel-Haenszel test of conditional independence in K 2x2 tables (rows candidate and
 * production, columns errors and correct). With a = x1, row totals n1, n2, error total m1 = x1 + x2,
 * correct total m2 and N = n1 + n2, per stratum under H0 a is hypergeometric with
 *
 *   E[a] = n1·m1 / N,  V[a] = n1·n2·m1·m2 / (N²·(N − 1))
 *
 * and the statistic is (|Σ (a − E[a])| − c)² / Σ V[a], with c = ½ when the continuity correction is on
 * (the default, as in R's `mantelhaen.test`) and |Σ (a − E[a])| ≥ ½, else 0.
 *
 * The Mantel-Haenszel common odds ratio is Σ(a·d/N) / Σ(b·c/N) (b, c, d the other cells), with the
 * Robins-Breslow-Greenland variance of its logarithm:
 *
 *   Var(log OR) = Σ P·R / (2 R²) + Σ (P·S + Q·R) / (2 R·S) + Σ Q·S / (2 S²)
 *
 * where per stratum R = a·d/N, S = b·c/N, P = (a + d)/N, Q = (b + c)/N and R, S are also summed.
 * Strata with an empty arm are left out; a stratum with no errors (or no correct answers) adds nothing,
 * its hypergeometric variance being 0. Without information the result is uninformative: statistic 0,
 * p = 1, and no odds ratio when either of its sums is 0.
 */
export function cmhTest(
  strata: readonly Stratum[],
  options: { continuityCorrection?: boolean; alpha?: number } = {},
): CmhResult {
  const correct = options.continuityCorrection ?? true;
  const alpha = options.alpha ?? 0.05;
  let delta = 0;
  let varSum = 0;
  let r = 0;
  let s = 0;
  let pr = 0;
  let psQr = 0;
  let qs = 0;
  let count = 0;
  for (const st of strata) {
    if (!usable(st)) continue;
    const a = st.candidate.x;
    const b = st.candidate.n - a;
    const c = st.production.x;
    const d = st.production.n - c;
    const n1 = st.candidate.n;
    const n2 = st.production.n;
    const big = n1 + n2;
    const m1 = a + c;
    const m2 = b + d;
    count++;
    delta += a - (n1 * m1) / big;
    varSum += (n1 * n2 * m1 * m2) / (big * big * (big - 1));
    const rk = (a * d) / big;
    const sk = (b * c) / big;
    const pk = (a + d) / big;
    const qk = (b + c) / big;
    r += rk;
    s += sk;
    pr += pk * rk;
    psQr += pk * sk + qk * rk;
    qs += qk * sk;
  }
  let statistic = 0;
  if (varSum > 0) {
    const yates = correct && Math.abs(delta) >= 0.5 ? 0.5 : 0;
    statistic = (Math.abs(delta) - yates) ** 2 / varSum;
  }
  let oddsRatio: number | undefined;
  let oddsRatioCi: [number, number] | undefined;
  if (r > 0 && s > 0) {
    oddsRatio = r / s;
    const sd = Math.sqrt(pr / (2 * r * r) + psQr / (2 * r * s) + qs / (2 * s * s));
    const zq = normalQuantile(1 - alpha / 2);
    const lo = Math.exp(Math.log(oddsRatio) - zq * sd);
    const hi = Math.exp(Math.log(oddsRatio) + zq * sd);
    if (Number.isFinite(lo) && Number.isFinite(hi)) oddsRatioCi = [lo, hi];
  }
  return {
    statistic,
    pValue: chiSquare1Sf(statistic),
    delta,
    continuityCorrection: correct,
    oddsRatio,
    oddsRatioCi,
    strata: count,
  };
}
