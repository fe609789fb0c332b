/**
 * Input drift: how far the features a cohort's production model sees now are from the features it saw
 * when it was registered, and the verdict a drift policy gives on that.
 *
 * The reference is kept small: per feature, the inner edges of quantile bins of a reference sample and
 * the sample's count in each bin. The current features are counted in the same bins, and three
 * statistics compare the two histograms:
 * - PSI, the population stability index: sum over bins of (q - p) ln(q / p), with the shares floored at
 *   `PSI_FLOOR` so an empty bin stays finite (the usual reading: below 0.1 stable, above 0.25 shifted);
 * - the two-sample Kolmogorov-Smirnov statistic D, the largest gap between the two cumulative shares at
 *   the bin edges (a lower bound of D on the raw samples), with its asymptotic p-value
 *   Q_KS(D sqrt(n m / (n + m)));
 * - the Jensen-Shannon divergence in bits (base-2 logarithms), symmetric and bounded by 1.
 * `judgeDrift` turns them into one verdict per cohort and feature from the closed set ok | warn | drift,
 * each with a line naming the feature, the cohort, the statistic, its value and the threshold.
 *
 * Pure and deterministic (no I/O, no clock, no random source): workflows may import it. It must never
 * return NaN: a histogram without counts gives the statistics of "no evidence" (0) and a `warn`.
 */

/** Share floor of PSI's bins: an empty bin counts as this share, so ln(q / p) stays finite. */
export const PSI_FLOOR = 1e-4;

/** A feature's reference: inner edges of its bins (ascending) and the reference sample's count per bin. */
export interface BinnedReference {
  feature: string;
  /** Inner bin edges, ascending: bin 0 is (-inf, edges[0]], bin i is (edges[i-1], edges[i]], the last (edges[last], inf). */
  edges: number[];
  /** Count of the reference sample in each bin: edges.length + 1 entries. */
  counts: number[];
}

/**
 * Inner edges of `bins` quantile bins of `values` (type-7 quantiles at k / bins, k = 1 .. bins - 1),
 * with repeated edges dropped (a feature with ties has fewer bins). Throws on an empty sample.
 */
export function quantileEdges(values: ArrayLike<number>, bins: number): number[] {
  if (!(Number.isInteger(bins) && bins >= 2))
    throw new RangeError(`bins must be a whole number ≥ 2 (got ${bins})`);
  if (values.length === 0) throw new RangeError('quantile edges need at least one value');
  const sorted = Float64Array.from(values).sort();
  const edges: number[] = [];
  for (let k = 1; k < bins; k++) {
    const h = ((sorted.length - 1) * k) / bins;
    const lo = Math.floor(h);
    const hi = Math.min(lo + 1, sorted.length - 1);
    const q = sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!);
    if (edges.length === 0 || q > edges[edges.length - 1]!) edges.push(q);
  }
  return edges;
}

/** The bin of x under inner edges `edges`: the number of edges strictly below x. */
export function binOf(edges: readonly number[], x: number): number {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (edges[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Counts of `values` in the bins of `edges` (edges.length + 1 entries). */
export function binCounts(values: ArrayLike<number>, edges: readonly number[]): number[] {
  const counts = new Array<number>(edges.length + 1).fill(0);
  for (let i = 0; i < values.length; i++) counts[binOf(edges, values[i]!)]!++;
  return counts;
}

function total(counts: readonly number[]): number {
  let s = 0;
  for (const c of counts) s += c;
  return s;
}

function checkPair(ref: readonly number[], cur: readonly number[]): void {
  if (ref.length !== cur.length) {
    throw new RangeError(
      `histograms must have the same bins (reference ${ref.length}, current ${cur.length})`,
    );
  }
  for (const c of [...ref, ...cur]) {
    if (!(Number.isFinite(c) && c >= 0)) throw new RangeError(`bin counts must be finite and ≥ 0 (got ${c})`);
  }
}

/** Population stability index of current counts `cur` against reference counts `ref` (same bins). */
export function psi(ref: readonly number[], cur: readonly number[], floor = PSI_FLOOR): number {
  checkPair(ref, cur);
  const n = total(ref);
  const m = total(cur);
  if (n === 0 || m === 0) return 0;
  let s = 0;
  for (let i = 0; i < ref.length; i++) {
    const p = Math.max(ref[i]! / n, floor);
    const q = Math.max(cur[i]! / m, floor);
    s += (q - p) * Math.log(q / p);
  }
  return s;
}

/** Jensen-Shannon divergence of two histograms over the same bins, in bits: in [0, 1], symmetric. */
export function jsDivergence(ref: readonly number[], cur: readonly number[]): number {
  checkPair(ref, cur);
  const n = total(ref);
  const m = total(cur);
  if (n === 0 || m === 0) return 0;
  let s = 0;
  for (let i = 0; i < ref.length; i++) {
    const p = ref[i]! / n;
    const q = cur[i]! / m;
    const mid = (p + q) / 2;
    if (p > 0) s += 0.5 * p * Math.log2(p / mid);
    if (q > 0) s += 0.5 * q * Math.log2(q / mid);
  }
  // Rounding can leave a tiny negative or a hair above 1.
  return Math.min(1, Math.max(0, s));
}

/** Two-sample KS statistic of two histograms over the same bins: the largest gap of cumulative shares. */
export function ksBinned(ref: readonly number[], cur: readonly number[]): number {
  checkPair(ref, cur);
  const n = total(ref);
  const m = total(cur);
  if (n === 0 || m === 0) return 0;
  let a = 0;
  let b = 0;
  let d = 0;
  for (let i = 0; i < ref.length; i++) {
    a += ref[i]!;
    b += cur[i]!;
    d = Math.max(d, Math.abs(a / n - b / m));
  }
  return d;
}

/** Two-sample KS statistic of raw samples: sup over x of |F_a(x) - F_b(x)|. */
export function ksSamples(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length === 0 || b.length === 0) return 0;
  const x = Float64Array.from(a).sort();
  const y = Float64Array.from(b).sort();
  let i = 0;
  let j = 0;
  let d = 0;
  while (i < x.length && j < y.length) {
    const v = Math.min(x[i]!, y[j]!);
    while (i < x.length && x[i]! <= v) i++;
    while (j < y.length && y[j]! <= v) j++;
    d = Math.max(d, Math.abs(i / x.length - j / y.length));
  }
  return d;
}

/**
 * The Kolmogorov distribution's upper tail Q(λ) = P(K > λ) = 2 Σ_{k≥1} (-1)^{k-1} exp(-2 k² λ²), from
 * its dual series (Jacobi's theta identity) for small λ, where the alternating one converges slowly.
 */
export function kolmogorovQ(lambda: number): number {
  if (!(lambda > 0)) return 1;
  if (lambda < 1.18) {
    // 1 - sqrt(2π)/λ Σ_{k≥1} exp(-(2k-1)² π² / (8 λ²))
    const c = (Math.PI * Math.PI) / (8 * lambda * lambda);
    let s = 0;
    for (let k = 1; k <= 6; k++) s += Math.exp(-(2 * k - 1) * (2 * k - 1) * c);
    return Math.min(1, Math.max(0, 1 - (Math.sqrt(2 * Math.PI) / lambda) * s));
  }
  let s = 0;
  for (let k = 1; k <= 100; k++) {
    const term = Math.exp(-2 * k * k * lambda * lambda);
    s += (k % 2 === 1 ? 1 : -1) * term;
    if (term < 1e-16) break;
  }
  return Math.min(1, Math.max(0, 2 * s));
}

/** Asymptotic p-value of a two-sample KS statistic d with sample sizes n and m. */
export function ksPValue(d: number, n: number, m: number): number {
  if (n <= 0 || m <= 0) return 1;
  return kolmogorovQ(d * Math.sqrt((n * m) / (n + m)));
}

/** The drift statistics of one feature of one cohort. */
export interface FeatureDriftStats {
  cohort: string;
  feature: string;
  /** Reference sample size. */
  n: number;
  /** Current sample size. */
  m: number;
  psi: number;
  ks: number;
  ksPValue: number;
  /** Jensen-Shannon divergence in bits. */
  js: number;
}

/** The statistics of current counts against a binned reference. */
export function featureDrift(
  cohort: string,
  ref: BinnedReference,
  cur: readonly number[],
): FeatureDriftStats {
  const n = total(ref.counts);
  const m = total(cur);
  const ks = ksBinned(ref.counts, cur);
  return {
    cohort,
    feature: ref.feature,
    n,
    m,
    psi: psi(ref.counts, cur),
    ks,
    ksPValue: ksPValue(ks, n, m),
    js: jsDivergence(ref.counts, cur),
  };
}

// ---- the judge ----------------------------------------------------------------------------------

export type DriftVerdict = 'ok' | 'warn' | 'drift';
export const DRIFT_VERDICTS: readonly DriftVerdict[] = ['ok', 'warn', 'drift'];
export type DriftStatistic = 'psi' | 'ks' | 'js';

export interface Thresholds {
  warn: number;
  drift: number;
}

/** What `judgeDrift` needs of a drift policy (policies/drift-schema.ts). */
export interface DriftThresholds {
  psi: Thresholds;
  /** KS statistic thresholds; a level counts only when the p-value is below `alpha` too. */
  ks: Thresholds & { alpha: number };
  js: Thresholds;
  /** Fewer current frames than this: `warn`, too few to judge. */
  minSamples: number;
}

export interface FeatureVerdict {
  cohort: string;
  feature: string;
  verdict: DriftVerdict;
  /** The statistic that set the verdict (for `ok`, PSI). */
  statistic: DriftStatistic;
  value: number;
  /** The threshold it was compared with: the level it reached, or the warn level for `ok`. */
  threshold: number;
  reason: string;
}

export interface CohortVerdict {
  cohort: string;
  verdict: DriftVerdict;
  /** The reason of the worst feature (the first of equals, in the order given). */
  reason: string;
  features: FeatureVerdict[];
}

const RANK: Record<DriftVerdict, number> = { ok: 0, warn: 1, drift: 2 };

/** Numbers in reason lines: 3 significant digits, no exponent for ordinary values. */
export function fmt(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  return a >= 1e-3 && a < 1e6 ? String(Number(x.toPrecision(3))) : x.toExponential(2);
}

/** The verdict of one feature of one cohort. */
export function judgeFeature(policy: DriftThresholds, s: FeatureDriftStats): FeatureVerdict {
  const where = `feature ${s.feature} of cohort ${s.cohort}`;
  if (s.m < policy.minSamples) {
    return {
      cohort: s.cohort,
      feature: s.feature,
      verdict: 'warn',
      statistic: 'psi',
      value: s.psi,
      threshold: policy.psi.warn,
      reason: `${where}: only ${s.m} current frames, fewer than minSamples ${policy.minSamples}: too few to judge`,
    };
  }
  const levels: {
    statistic: DriftStatistic;
    value: number;
    t: Thresholds;
    extra: string;
    counts: boolean;
  }[] = [
    { statistic: 'psi', value: s.psi, t: policy.psi, extra: '', counts: true },
    {
      statistic: 'ks',
      value: s.ks,
      t: policy.ks,
      extra: ` (p=${fmt(s.ksPValue)}, alpha ${fmt(policy.ks.alpha)})`,
      counts: s.ksPValue < policy.ks.alpha,
    },
    { statistic: 'js', value: s.js, t: policy.js, extra: ' bits', counts: true },
  ];
  let best: FeatureVerdict | undefined;
  for (const l of levels) {
    const verdict: DriftVerdict = !l.counts
      ? 'ok'
      : l.value >= l.t.drift
        ? 'drift'
        : l.value >= l.t.warn
          ? 'warn'
          : 'ok';
    if (verdict === 'ok') continue;
    if (best && RANK[best.verdict] >= RANK[verdict]) continue;
    const threshold = verdict === 'drift' ? l.t.drift : l.t.warn;
    best = {
      cohort: s.cohort,
      feature: s.feature,
      verdict,
      statistic: l.statistic,
      value: l.value,
      threshold,
      reason: `${where}: ${l.statistic} ${fmt(l.value)}${l.extra} ≥ ${verdict} threshold ${fmt(threshold)}`,
    };
  }
  return (
    best ?? {
      cohort: s.cohort,
      feature: s.feature,
      verdict: 'ok',
      statistic: 'psi',
      value: s.psi,
      threshold: policy.psi.warn,
      reason: `${where}: psi ${fmt(s.psi)} < warn threshold ${fmt(policy.psi.warn)}, ks ${fmt(s.ks)}, js ${fmt(s.js)} bits`,
    }
  );
}

/**
 * Verdicts of every feature, grouped by cohort in the order the cohorts first appear; each cohort's
 * verdict is its worst feature's.
 */
export function judgeDrift(policy: DriftThresholds, stats: readonly FeatureDriftStats[]): CohortVerdict[] {
  const byCohort = new Map<string, FeatureVerdict[]>();
  for (const s of stats) {
    const list = byCohort.get(s.cohort) ?? [];
    list.push(judgeFeature(policy, s));
    byCohort.set(s.cohort, list);
  }
  return [...byCohort].map(([cohort, features]) => {
    let worst = features[0]!;
    for (const f of features) if (RANK[f.verdict] > RANK[worst.verdict]) worst = f;
    return { cohort, verdict: worst.verdict, reason: worst.reason, features };
  });
}

/** The worst of verdicts (`ok` for none). */
export function worstVerdict(verdicts: readonly DriftVerdict[]): DriftVerdict {
  let w: DriftVerdict = 'ok';
  for (const v of verdicts) if (RANK[v] > RANK[w]) w = v;
  return w;
}
