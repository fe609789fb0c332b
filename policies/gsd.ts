/**
 * Group-sequential designs: boundaries on the Z scale for a planned number of looks (Pocock and
 * O'Brien-Fleming), and for a flexible schedule by Lan-DeMets alpha spending (O'Brien-Fleming-type and
 * Pocock-type), with crossing probabilities under any drift for power, expected information and the
 * effect of a non-binding futility rule.
 *
 * Every probability is computed exactly (to quadrature error) by numerical integration of the
 * Armitage-McPherson-Rowe recursion for the density of the Z statistic at successive looks, restricted
 * to the continuation region, on the grid of Jennison & Turnbull ("Group Sequential Methods", ch. 19)
 * with Simpson's rule. Looks use information fractions t_k (information at the look over the planned
 * maximum); the Z statistics Z_k = S_k / √I_k of a score S with independent increments are what the
 * boundaries apply to.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, or do I/O. An invalid design
 * (alpha outside (0, 1), looks not increasing, …) throws a RangeError; a valid one never gives NaN or
 * ±Infinity in a result (results travel as JSON): a look with nothing to spend gets the finite stand-in
 * `UNBOUNDED`.
 */

import { normalCdf, normalPdf, normalQuantile, normalTail, normalTailQuantile } from './normal';

export { normalCdf, normalPdf, normalQuantile, normalTail, normalTailQuantile };

export type ClassicDesign = 'pocock' | 'obf';
export type SpendingDesign = 'ld-obf' | 'ld-pocock';
export type Design = ClassicDesign | SpendingDesign;
export type Sides = 1 | 2;

export interface BoundariesInput {
  design: Design;
  /** Number of looks K (1 to MAX_LOOKS). */
  looks: number;
  /** Total type I error: one-sided, or both sides together for `sides: 2` (α/2 per side). */
  alpha: number;
  sides: Sides;
  /** Information fractions t_1 < … < t_K, all > 0; k/K unless given. */
  info?: number[];
}

export interface GroupSequentialBoundaries {
  design: Design;
  alpha: number;
  sides: Sides;
  /**
   * Upper boundary b_k on the Z scale at each look. One-sided: reject at look k when Z_k ≥ b_k.
   * Two-sided: reject when |Z_k| ≥ b_k (the lower boundary is −b_k).
   */
  boundaries: number[];
  /** P(reject at or before look k) under H0, both sides together; ends at α. */
  cumulativeAlpha: number[];
  /** Information fractions of the looks. */
  info: number[];
}

/** A spending design, enough to compute a boundary at a look that was not planned. */
export interface SpendingSpec {
  design: SpendingDesign;
  alpha: number;
  sides: Sides;
}

export interface NextBoundary {
  /** Boundary on the Z scale for the look at tNow (`UNBOUNDED` when nothing is left to spend). */
  boundary: number;
  /** α(tNow) − α(tPrev): the type I error this look spends. */
  spent: number;
  /** P(reject at or before this look) under H0, through the boundaries already used and this one. */
  cumulativeAlpha: number;
}

export interface CrossingOptions {
  /** 1 (default): continue while Z_k < b_k. 2: continue while |Z_k| < b_k. */
  sides?: Sides;
  /**
   * One-sided designs only: stop for futility at an interim look k when Z_k ≤ futility[k]. One entry per
   * look (the final look's entry is ignored: the last look ends the test anyway); −Infinity for none.
   */
  futility?: number[];
}

export interface CrossingProbabilities {
  /** P(first crossing of the upper boundary is at look k). */
  upper: number[];
  /**
   * P(stopping at look k through the lower side): the lower boundary −b_k of a two-sided design, or the
   * futility boundary of a one-sided one.
   */
  lower: number[];
  upperTotal: number;
  lowerTotal: number;
  /** E[information at stopping], in the units of `info` (the last look ends the test). */
  expectedInfo: number;
}

/** Largest number of looks a design may have. */
export const MAX_LOOKS = 50;

/** Finite stand-in for a boundary that cannot be crossed; survives JSON, unlike Infinity. */
export const UNBOUNDED = Number.MAX_VALUE;

/**
 * Grid resolution r of Jennison & Turnbull: 6r − 1 points per look before trimming to the continuation
 * region, 12r − 3 with Simpson's midpoints. With r = 20 boundaries agree with r = 64 to within 1e-5 for
 * up to 20 looks.
 */
const GRID_R = 20;

const SQRT_2PI = Math.sqrt(2 * Math.PI);

/** Standard deviations beyond which a normal tail is taken as 0 or 1 in the recursion. */
const CUTOFF = 10;

// ---------------------------------------------------------------------------------------------------
// Spending functions

/**
 * Cumulative type I error the design has spent by information fraction t (capped at t = 1), for a
 * design of total error `alpha` on `sides` sides. Per side, with α₁ = alpha / sides:
 *
 *   ld-obf     α₁(t) = 2 − 2Φ( Φ⁻¹(1 − α₁/2) / √t )      (Lan-DeMets 1983; gsDesign sfLDOF, ldbounds iuse=1)
 *   ld-pocock  α₁(t) = α₁ · ln(1 + (e − 1)t)              (gsDesign sfLDPocock, ldbounds iuse=2)
 *
 * and the result is sides · α₁(t), so α(1) = alpha. For a two-sided α = 0.05 the O'Brien-Fleming-type
 * function is therefore 4 − 4Φ(z_{0.9875}/√t), not the 2 − 2Φ(z_{0.975}/√t) of Lan & DeMets' paper,
 * which spends all of α on one side; the first matches the published tables of ldbounds and gsDesign.
 */
export function spend(design: SpendingDesign, alpha: number, t: number, sides: Sides = 1): number {
  checkAlpha(alpha);
  checkSides(sides);
  if (design !== 'ld-obf' && design !== 'ld-pocock') {
    throw new RangeError(`spend needs a spending design (ld-obf, ld-pocock), got ${String(design)}`);
  }
  if (Number.isNaN(t)) throw new RangeError('t must be a number');
  if (!(t > 0)) return 0;
  const tt = Math.min(t, 1);
  const a1 = alpha / sides;
  let perSide: number;
  if (design === 'ld-obf') {
    perSide = tt >= 1 ? a1 : 2 * normalTail(normalTailQuantile(a1 / 2) / Math.sqrt(tt));
  } else {
    perSide = tt >= 1 ? a1 : a1 * Math.log1p((Math.E - 1) * tt);
  }
  return sides * perSide;
}

// ---------------------------------------------------------------------------------------------------
// The recursion

/** The continuation density at one look: grid points z and (Simpson weight × density) at each. */
interface LookState {
  info: number;
  z: Float64Array;
  wh: Float64Array;
}

/**
 * Jennison & Turnbull's grid for a Z statistic of mean mu, trimmed to (lo, hi), with Simpson midpoints:
 * points spaced 3/(2r) within mu ± 3, then logarithmically spaced out to mu ± (3 + 4 ln r).
 */
function makeGrid(mu: number, lo: number, hi: number): { z: Float64Array; w: Float64Array } {
  const r = GRID_R;
  const base: number[] = [];
  for (let i = 1; i <= 6 * r - 1; i++) {
    let x: number;
    if (i < r) x = -3 - 4 * Math.log(r / i);
    else if (i <= 5 * r) x = -3 + (3 * (i - r)) / (2 * r);
    else x = 3 + 4 * Math.log(r / (6 * r - i));
    base.push(mu + x);
  }
  const first = base[0]!;
  const last = base[base.length - 1]!;
  let pts = base.filter((x) => x > lo && x < hi);
  if (lo > first) pts.unshift(lo);
  if (hi < last) pts.push(hi);
  if (pts.length < 2) pts = lo < hi && Number.isFinite(lo) && Number.isFinite(hi) ? [lo, hi] : [];
  const m = pts.length;
  if (m === 0) return { z: new Float64Array(0), w: new Float64Array(0) };
  const z = new Float64Array(2 * m - 1);
  const w = new Float64Array(2 * m - 1);
  for (let j = 0; j < m; j++) z[2 * j] = pts[j]!;
  for (let j = 0; j < m - 1; j++) {
    const a = pts[j]!;
    const b = pts[j + 1]!;
    const h = b - a;
    z[2 * j + 1] = (a + b) / 2;
    w[2 * j] = w[2 * j]! + h / 6;
    w[2 * j + 1] = w[2 * j + 1]! + (4 * h) / 6;
    w[2 * j + 2] = w[2 * j + 2]! + h / 6;
  }
  return { z, w };
}

/**
 * The distribution of Z_k jointly with "no stop before look k", seen from the previous look. With no
 * previous look Z_1 ~ N(θ√I_1, 1); otherwise S_k − S_{k−1} ~ N(θΔ, Δ), Δ = I_k − I_{k−1}, given
 * Z_{k−1} = z_j on the previous grid.
 */
class Transition {
  private readonly sI: number;
  private readonly sD: number;
  /** Mean of S_k given Z_{k−1} = z_j, increasing in j. */
  private readonly c: Float64Array;
  /** suffix[j] = Σ_{i ≥ j} wh_i. */
  private readonly suffix: Float64Array;

  constructor(
    private readonly prev: LookState | undefined,
    private readonly info: number,
    private readonly theta: number,
  ) {
    this.sI = Math.sqrt(info);
    const n = prev ? prev.z.length : 0;
    this.c = new Float64Array(n);
    this.suffix = new Float64Array(n + 1);
    if (prev) {
      const delta = info - prev.info;
      this.sD = Math.sqrt(delta);
      const sPrev = Math.sqrt(prev.info);
      for (let j = 0; j < n; j++) this.c[j] = prev.z[j]! * sPrev + theta * delta;
      for (let j = n - 1; j >= 0; j--) this.suffix[j] = this.suffix[j + 1]! + prev.wh[j]!;
    } else {
      this.sD = this.sI;
    }
  }

  /** First j with c_j ≥ v (c is increasing). */
  private index(v: number): number {
    let lo = 0;
    let hi = this.c.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.c[mid]! < v) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Σ_j wh_j Φ̄(sign·(x√I_k − c_j)/√Δ). Terms more than CUTOFF standard deviations away are 0 or wh_j
   * (Φ̄(10) < 1e-23), so only a window of the previous grid is integrated term by term.
   */
  private tail(x: number, sign: 1 | -1): number {
    const prev = this.prev!;
    const xs = x * this.sI;
    const j0 = this.index(xs - CUTOFF * this.sD);
    const j1 = this.index(xs + CUTOFF * this.sD);
    // sign = 1 (P(Z_k ≥ x)): every j ≥ j1 contributes wh_j. sign = −1: every j < j0 does.
    let sum = sign === 1 ? this.suffix[j1]! : this.suffix[0]! - this.suffix[j0]!;
    for (let j = j0; j < j1; j++) sum += prev.wh[j]! * normalTail((sign * (xs - this.c[j]!)) / this.sD);
    return sum;
  }

  /** P(Z_k ≥ x and no stop before k). */
  above(x: number): number {
    if (x >= UNBOUNDED) return 0;
    if (!this.prev) return normalTail(x - this.theta * this.sI);
    return this.tail(x, 1);
  }

  /** P(Z_k ≤ x and no stop before k). */
  below(x: number): number {
    if (x <= -UNBOUNDED) return 0;
    if (!this.prev) return normalTail(this.theta * this.sI - x);
    return this.tail(x, -1);
  }

  /** Density of Z_k at x jointly with no stop before k. */
  density(x: number): number {
    const { prev } = this;
    if (!prev) return normalPdf(x - this.theta * this.sI);
    const xs = x * this.sI;
    const j0 = this.index(xs - CUTOFF * this.sD);
    const j1 = this.index(xs + CUTOFF * this.sD);
    let sum = 0;
    for (let j = j0; j < j1; j++) {
      const u = (xs - this.c[j]!) / this.sD;
      sum += prev.wh[j]! * Math.exp(-0.5 * u * u);
    }
    return (sum * this.sI) / (this.sD * SQRT_2PI);
  }

  /** The continuation density at look k for the continuation region (lo, hi). */
  next(lo: number, hi: number): LookState {
    const { z, w } = makeGrid(this.theta * this.sI, lo, hi);
    const wh = new Float64Array(z.length);
    for (let i = 0; i < z.length; i++) wh[i] = w[i]! * this.density(z[i]!);
    return { info: this.info, z, wh };
  }
}

/**
 * The boundary b with P(Z_k ≥ b, or Z_k ≤ −b when two-sided, and no stop before k) = target under H0:
 * Newton's method on log P, kept inside a bisection bracket. Returns the probability it achieves.
 */
function solveBoundary(tr: Transition, target: number, sides: Sides): { b: number; p: number } {
  if (!(target > 0)) return { b: UNBOUNDED, p: 0 };
  const g = (b: number): number => tr.above(b) + (sides === 2 ? tr.below(-b) : 0);
  const dg = (b: number): number => tr.density(b) + (sides === 2 ? tr.density(-b) : 0); // −g'(b)
  let lo = sides === 2 ? 0 : -40;
  const gLo = g(lo);
  if (gLo <= target) return { b: lo, p: gLo };
  // Ignoring earlier looks gives the largest boundary that can still spend the target.
  let hi = Math.min(40, normalTailQuantile(Math.min(target / sides, 0.5)));
  let gHi = g(hi);
  while (gHi > target && hi < 40) {
    lo = hi;
    hi = Math.min(40, hi + 1);
    gHi = g(hi);
  }
  if (gHi > target) return { b: hi, p: gHi };
  let b = hi;
  let gb = gHi;
  const logTarget = Math.log(target);
  for (let it = 0; it < 100; it++) {
    const f = Math.log(gb) - logTarget;
    if (Math.abs(f) < 1e-11 || hi - lo < 1e-12) break;
    const d = dg(b);
    let nb = gb > 0 && d > 0 ? b + (f * gb) / d : NaN;
    if (!(nb >= lo && nb <= hi) || nb === b) nb = (lo + hi) / 2;
    const gn = g(nb);
    if (gn > target) lo = nb;
    else hi = nb;
    b = nb;
    gb = gn;
  }
  return { b, p: gb };
}

// ---------------------------------------------------------------------------------------------------
// Designs

/**
 * Boundaries of a group-sequential design on the Z scale.
 *
 * - `pocock`: b_k = c for every look; `obf`: b_k = C·√(t_K / t_k), i.e. C·√(K/k) for equally spaced
 *   looks. c or C is solved so that the total type I error is exactly α.
 * - `ld-obf`, `ld-pocock`: Lan-DeMets alpha spending (see `spend`). Look k spends α(t_k) − α(t_{k−1})
 *   given the boundaries of the earlier looks; t beyond 1 spends nothing more.
 *
 * Two-sided designs are symmetric: reject when |Z_k| ≥ b_k, α/2 on each side.
 */
export function boundaries(input: BoundariesInput): GroupSequentialBoundaries {
  const { design, looks, alpha, sides } = input;
  checkAlpha(alpha);
  checkSides(sides);
  if (!Number.isInteger(looks) || looks < 1 || looks > MAX_LOOKS) {
    throw new RangeError(`looks must be an integer from 1 to ${MAX_LOOKS}, got ${looks}`);
  }
  const info = input.info ? [...input.info] : Array.from({ length: looks }, (_, k) => (k + 1) / looks);
  if (info.length !== looks) throw new RangeError(`info has ${info.length} entries for ${looks} looks`);
  checkInfo(info);
  if (design === 'ld-obf' || design === 'ld-pocock') return spendingBoundaries(design, alpha, sides, info);
  if (design === 'pocock' || design === 'obf') return classicBoundaries(design, alpha, sides, info);
  throw new RangeError(`unknown design ${String(design)}`);
}

function spendingBoundaries(
  design: SpendingDesign,
  alpha: number,
  sides: Sides,
  info: number[],
): GroupSequentialBoundaries {
  const bounds: number[] = [];
  const cumulative: number[] = [];
  let prev: LookState | undefined;
  let spentBefore = 0;
  let cum = 0;
  for (const t of info) {
    const tr = new Transition(prev, t, 0);
    const spentNow = spend(design, alpha, t, sides);
    const { b, p } = solveBoundary(tr, spentNow - spentBefore, sides);
    bounds.push(b);
    cum += p;
    cumulative.push(cum);
    spentBefore = spentNow;
    prev = tr.next(sides === 2 ? -b : -Infinity, b);
  }
  return { design, alpha, sides, boundaries: bounds, cumulativeAlpha: cumulative, info };
}

/** Cumulative P(reject) under H0 for boundaries b_k = c·shape_k. */
function classicCumulative(c: number, shape: number[], info: number[], sides: Sides): number[] {
  const out: number[] = [];
  let prev: LookState | undefined;
  let cum = 0;
  for (let k = 0; k < info.length; k++) {
    const b = c * shape[k]!;
    const tr = new Transition(prev, info[k]!, 0);
    cum += tr.above(b) + (sides === 2 ? tr.below(-b) : 0);
    out.push(cum);
    if (k < info.length - 1) prev = tr.next(sides === 2 ? -b : -Infinity, b);
  }
  return out;
}

function classicBoundaries(
  design: ClassicDesign,
  alpha: number,
  sides: Sides,
  info: number[],
): GroupSequentialBoundaries {
  const tK = info[info.length - 1]!;
  const shape = info.map((t) => (design === 'pocock' ? 1 : Math.sqrt(tK / t)));
  let lastCumulative: number[] = [];
  const F = (c: number): number => {
    lastCumulative = classicCumulative(c, shape, info, sides);
    return Math.log(lastCumulative[lastCumulative.length - 1]!) - Math.log(alpha);
  };
  // The constant lies between the fixed-sample value (one look) and Bonferroni's (α/K per look), where
  // F(c) = log P(reject) − log α is ≥ 0 and < 0. F is nearly linear in c with slope about −φ(c)/Φ̄(c),
  // which gives the second point; then secant steps, kept inside the bracket (bisection otherwise).
  let a = normalTailQuantile(alpha / sides);
  let b = normalTailQuantile(alpha / sides / info.length);
  let x0 = a;
  let f0 = F(a);
  if (f0 <= 0 || info.length === 1)
    return classicResult(design, alpha, sides, info, shape, a, lastCumulative);
  let x1 = Math.min(b, a + (f0 * normalTail(a)) / normalPdf(a));
  let f1 = F(x1);
  if (f1 > 0) a = x1;
  else b = x1;
  for (let it = 0; it < 100 && Math.abs(f1) >= 1e-10 && b - a >= 1e-10; it++) {
    let c = f1 !== f0 ? x1 - (f1 * (x1 - x0)) / (f1 - f0) : NaN;
    if (!(c > a && c < b)) c = (a + b) / 2;
    const fc = F(c);
    if (fc > 0) a = c;
    else b = c;
    x0 = x1;
    f0 = f1;
    x1 = c;
    f1 = fc;
    if (Math.abs(x1 - x0) < 1e-10) break;
  }
  return classicResult(design, alpha, sides, info, shape, x1, lastCumulative);
}

function classicResult(
  design: ClassicDesign,
  alpha: number,
  sides: Sides,
  info: number[],
  shape: number[],
  c: number,
  cumulative: number[],
): GroupSequentialBoundaries {
  return { design, alpha, sides, boundaries: shape.map((s) => c * s), cumulativeAlpha: cumulative, info };
}

/**
 * The boundary of a spending design at a look that was not planned: information fraction tNow after
 * looks at `pastInfo` that used `pastBoundaries` (as computed then; `UNBOUNDED` or Infinity for a look
 * that could not reject). It spends α(tNow) − α(tPrev) exactly: the boundary b solves
 * P(|Z| ≥ b, or Z ≥ b one-sided, at this look and no rejection before) = α(tNow) − α(tPrev) under H0,
 * integrating over the boundaries actually used.
 */
export function nextBoundary(
  design: SpendingSpec,
  pastInfo: number[],
  pastBoundaries: number[],
  tNow: number,
): NextBoundary {
  const { alpha, sides } = design;
  checkAlpha(alpha);
  checkSides(sides);
  if (pastInfo.length !== pastBoundaries.length) {
    throw new RangeError(`${pastInfo.length} past looks but ${pastBoundaries.length} past boundaries`);
  }
  if (pastInfo.length >= MAX_LOOKS) throw new RangeError(`at most ${MAX_LOOKS} looks`);
  checkInfo([...pastInfo, tNow]);
  let prev: LookState | undefined;
  let cum = 0;
  for (let k = 0; k < pastInfo.length; k++) {
    const b = pastBoundaries[k]!;
    if (Number.isNaN(b) || (sides === 2 && !(b >= 0))) {
      throw new RangeError(`past boundary ${k + 1} is not valid: ${b}`);
    }
    const tr = new Transition(prev, pastInfo[k]!, 0);
    cum += tr.above(b) + (sides === 2 ? tr.below(-b) : 0);
    prev = tr.next(sides === 2 ? -b : -Infinity, b);
  }
  const tPrev = pastInfo.length > 0 ? pastInfo[pastInfo.length - 1]! : 0;
  const spent = Math.max(
    0,
    spend(design.design, alpha, tNow, sides) - spend(design.design, alpha, tPrev, sides),
  );
  const { b, p } = solveBoundary(new Transition(prev, tNow, 0), spent, sides);
  return { boundary: b, spent, cumulativeAlpha: cum + p };
}

/**
 * Probabilities of stopping at each look under drift θ: Z_k ~ N(θ·√I_k, 1) with independent score
 * increments, so with information fractions θ is the expected Z at t = 1. `upperTotal` under the
 * alternative is the power; with θ = 0 it is the type I error.
 *
 * A futility rule (one-sided only) is non-binding: the boundaries were computed without it, so adding
 * it can only lower the type I error (stopping for futility never rejects), and it lowers power by
 * exactly what this function reports with and without it.
 */
export function crossingProbabilities(
  bounds: number[],
  info: number[],
  drift: number,
  options: CrossingOptions = {},
): CrossingProbabilities {
  const sides = options.sides ?? 1;
  checkSides(sides);
  const K = bounds.length;
  if (K < 1 || K > MAX_LOOKS) throw new RangeError(`between 1 and ${MAX_LOOKS} boundaries, got ${K}`);
  if (info.length !== K) throw new RangeError(`${K} boundaries but ${info.length} information values`);
  checkInfo(info);
  if (!Number.isFinite(drift)) throw new RangeError(`drift must be finite, got ${drift}`);
  const futility = options.futility;
  if (futility) {
    if (sides !== 1) throw new RangeError('a futility rule is for one-sided designs');
    if (futility.length !== K && futility.length !== K - 1) {
      throw new RangeError(`futility needs ${K} (or ${K - 1}) entries, got ${futility.length}`);
    }
  }
  const upper: number[] = [];
  const lower: number[] = [];
  let prev: LookState | undefined;
  let stoppedInfo = 0;
  let stopped = 0;
  for (let k = 0; k < K; k++) {
    const b = bounds[k]!;
    if (Number.isNaN(b) || (sides === 2 && !(b >= 0))) {
      throw new RangeError(`boundary ${k + 1} is not valid: ${b}`);
    }
    let lo = sides === 2 ? -b : -Infinity;
    if (futility && k < K - 1) {
      const f = futility[k]!;
      if (Number.isNaN(f) || f >= b) throw new RangeError(`futility ${k + 1} must be below ${b}, got ${f}`);
      lo = f;
    }
    const tr = new Transition(prev, info[k]!, drift);
    const up = Math.min(1, Math.max(0, tr.above(b)));
    const down = Math.min(1, Math.max(0, tr.below(lo)));
    upper.push(up);
    lower.push(down);
    stopped += up + down;
    stoppedInfo += (up + down) * info[k]!;
    if (k < K - 1) prev = tr.next(lo, b);
  }
  const lastInfo = info[K - 1]!;
  const expectedInfo = stoppedInfo + Math.max(0, 1 - stopped) * lastInfo;
  return {
    upper,
    lower,
    upperTotal: upper.reduce((s, x) => s + x, 0),
    lowerTotal: lower.reduce((s, x) => s + x, 0),
    expectedInfo,
  };
}

// ---------------------------------------------------------------------------------------------------
// Validation

function checkAlpha(alpha: number): void {
  if (!(alpha > 0 && alpha < 1)) throw new RangeError(`alpha must be in (0, 1), got ${alpha}`);
}

function checkSides(sides: number): void {
  if (sides !== 1 && sides !== 2) throw new RangeError(`sides must be 1 or 2, got ${sides}`);
}

function checkInfo(info: number[]): void {
  let last = 0;
  for (const t of info) {
    if (!(t > last) || !Number.isFinite(t)) {
      throw new RangeError(`information must be finite, positive and increasing, got [${info.join(', ')}]`);
    }
    last = t;
  }
}
