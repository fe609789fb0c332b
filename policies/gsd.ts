/**
 * Group-sequential designs: boundaries on the Z scale for a planned number of looks (Pocock and
 * O'Brien-Fleming), and for a flexible schedule by Lan-DeMets alpha spending (O'Brien-Fleming-type and
 * Pocock-type), with crossing probabilities under any drift for power, expected information and the
 * effect of a non-binding futility rule.
 *
 * Every probability is computed exactly (to quadrature error) by numerical integration of the
 * Armitage-McPherson-Rowe recursion for the density of the Z statistic at successive looks, restricted
 * to the continuation region, with Simpson's rule on a uniform grid per look whose spacing follows the
 * width of the transition kernel (Jennison & Turnbull, "Group Sequential Methods", ch. 19, use a fixed
 * r points per unit, too coarse once looks are many and increments small; see `makeGrid`), and that
 * reaches far enough into the tail for boundaries that spend almost nothing. Up to MAX_LOOKS = 200
 * looks. Looks use information fractions t_k (information at the look over the planned
 * maximum); the Z statistics Z_k = S_k / √I_k of a score S with independent increments are what the
 * boundaries apply to.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, or do I/O. An invalid design
 * (alpha outside (0, 1), information decreasing, …) throws a RangeError; a valid one never gives NaN or
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
  /**
   * Information fractions t_1 ≤ … ≤ t_K, all > 0; k/K unless given. Values beyond 1 and repeats are
   * allowed (see `boundaries`).
   */
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
export const MAX_LOOKS = 200;

/** Finite stand-in for a boundary that cannot be crossed; survives JSON, unlike Infinity. */
export const UNBOUNDED = Number.MAX_VALUE;

/**
 * A look whose information exceeds that of the last look that was not a repeat by less than this
 * fraction of it (equal information included) is a repeat: see `boundaries`.
 */
export const MIN_INFO_STEP = 1e-4;

/**
 * Grid resolution: Simpson panels per unit of the scale on which the integrand varies (see `makeGrid`).
 * Against four times the resolution, boundaries agree to within 2e-5 (3e-6 for spending designs) and
 * the α they spend to within 3e-7, for 1 to MAX_LOOKS looks.
 */
const RESOLUTION = 3;

/** Standard deviations below the mean that the grid covers when the continuation region is unbounded. */
const BULK = 7;

/**
 * Standard deviations from the mean that the grid reaches towards a finite boundary: tail probabilities
 * beyond (Φ̄(37.5) ≈ 5e-309) are not representable anyway.
 */
const FAR = 37.5;

/** Standard deviations of the transition kernel beyond its peak that are integrated term by term. */
const WINDOW = 8;

const SQRT_2PI = Math.sqrt(2 * Math.PI);

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

/**
 * The continuation density at one look on a uniform grid: nodes z_0 + i·dz (Simpson's panels with their
 * midpoints) and (Simpson weight × density) at each.
 */
interface LookState {
  info: number;
  z0: number;
  dz: number;
  wh: Float64Array;
}

/**
 * Simpson nodes on [a, b] for the continuation density of a look, in panels no wider than `panel`.
 *
 * The grid replaces Jennison & Turnbull's fixed r points per unit: with many looks the increments
 * Δ_k = I_k − I_{k−1} are small and the transition kernel, of standard deviation √(Δ_{k+1}/I_k) in
 * Z_k, is far narrower than their spacing. `Transition.next` takes the panel from the narrowest of that
 * kernel, the scale √(Δ_k/I_k) on which the density itself varies, and 0.3, divided by the resolution.
 */
function makeGrid(a: number, b: number, panel: number): { z0: number; dz: number; w: Float64Array } {
  const panels = Math.max(1, Math.ceil((b - a) / panel));
  const dz = (b - a) / (2 * panels);
  const w = new Float64Array(2 * panels + 1);
  for (let i = 0; i <= 2 * panels; i++)
    w[i] = ((i === 0 || i === 2 * panels ? 1 : i % 2 === 1 ? 4 : 2) * dz) / 3;
  return { z0: a, dz, w };
}

/**
 * The distribution of Z_k jointly with "no stop before look k", seen from the previous look. With no
 * previous look Z_1 ~ N(θ√I_1, 1); otherwise S_k − S_{k−1} ~ N(θΔ, Δ), Δ = I_k − I_{k−1}, given
 * Z_{k−1} = z_j on the previous grid.
 */
class Transition {
  /** Mean θ√I_k of Z_k. */
  readonly mu: number;
  private readonly sI: number;
  private readonly sD: number;
  /** √(Δ/I_k): the standard deviation of the kernel in Z_k, and the scale of the density's features. */
  readonly spread: number;
  /** Mean of S_k given Z_{k−1} = z_j is c0 + j·dc, increasing in j. */
  private readonly c0: number = 0;
  private readonly dc: number = 1;
  /** suffix[j] = Σ_{i ≥ j} wh_i. */
  private readonly suffix: Float64Array;

  constructor(
    private readonly prev: LookState | undefined,
    private readonly info: number,
    private readonly theta: number,
  ) {
    this.sI = Math.sqrt(info);
    this.mu = theta * this.sI;
    const n = prev ? prev.wh.length : 0;
    this.suffix = new Float64Array(n + 1);
    if (prev) {
      const delta = info - prev.info;
      this.sD = Math.sqrt(delta);
      this.spread = Math.sqrt(delta / info);
      const sPrev = Math.sqrt(prev.info);
      this.c0 = prev.z0 * sPrev + theta * delta;
      this.dc = prev.dz * sPrev;
      for (let j = n - 1; j >= 0; j--) this.suffix[j] = this.suffix[j + 1]! + prev.wh[j]!;
    } else {
      this.sD = this.sI;
      this.spread = 1;
    }
  }

  /** First j with c_j ≥ v, in [0, n]. */
  private index(v: number): number {
    const j = Math.ceil((v - this.c0) / this.dc);
    const n = this.prev!.wh.length;
    return j <= 0 ? 0 : j >= n ? n : j;
  }

  /**
   * The window of previous grid points that contribute to Z_k near x term by term. Given Z_k = x the
   * kernel argument (x√I_k − c_j)/√Δ peaks (Brownian bridge) at √(Δ/I_k)·(x − θ√I_k) standard
   * deviations, far out when x is far in the tail; WINDOW more either side leave out less than
   * Φ̄(9) ≈ 1e-19 of what the window holds, so tiny tail probabilities keep their relative accuracy.
   */
  private window(xs: number, x: number): [number, number] {
    const half = (WINDOW + this.spread * Math.abs(x - this.mu)) * this.sD;
    return [this.index(xs - half), this.index(xs + half)];
  }

  /** Σ_j wh_j Φ̄(sign·(x√I_k − c_j)/√Δ); outside the window the terms are 0 or wh_j. */
  private tail(x: number, sign: 1 | -1): number {
    const wh = this.prev!.wh;
    const xs = x * this.sI;
    const [j0, j1] = this.window(xs, x);
    // sign = 1 (P(Z_k ≥ x)): every j ≥ j1 contributes wh_j. sign = −1: every j < j0 does.
    let sum = sign === 1 ? this.suffix[j1]! : this.suffix[0]! - this.suffix[j0]!;
    const inv = 1 / this.sD;
    const a0 = (xs - this.c0) * inv;
    const da = this.dc * inv;
    for (let j = j0; j < j1; j++) sum += wh[j]! * normalTail(sign * (a0 - j * da));
    return sum;
  }

  /** P(Z_k ≥ x and no stop before k). */
  above(x: number): number {
    if (x >= UNBOUNDED) return 0;
    if (!this.prev) return normalTail(x - this.mu);
    return this.tail(x, 1);
  }

  /** P(Z_k ≤ x and no stop before k). */
  below(x: number): number {
    if (x <= -UNBOUNDED) return 0;
    if (!this.prev) return normalTail(this.mu - x);
    return this.tail(x, -1);
  }

  /** Density of Z_k at x jointly with no stop before k. */
  density(x: number): number {
    const { prev } = this;
    if (!prev) return normalPdf(x - this.mu);
    const wh = prev.wh;
    const xs = x * this.sI;
    const [j0, j1] = this.window(xs, x);
    if (j0 >= j1) return 0;
    const inv = 1 / this.sD;
    const a0 = (xs - this.c0) * inv;
    const da = this.dc * inv;
    // exp(−a_j²/2) for a_j = a0 − j·da by two products a term, outward from the kernel's peak (a = 0):
    // the ratio of neighbours is exp(±a·da − da²/2), and each ratio is the last times exp(−da²).
    const jp = Math.min(j1 - 1, Math.max(j0, Math.round(a0 / da)));
    const ap = a0 - jp * da;
    const ep = Math.exp(-0.5 * ap * ap);
    const q = Math.exp(-da * da);
    let sum = wh[jp]! * ep;
    let e = ep;
    let r = Math.exp(ap * da - 0.5 * da * da);
    for (let j = jp + 1; j < j1; j++) {
      e *= r;
      r *= q;
      sum += wh[j]! * e;
    }
    e = ep;
    r = Math.exp(-ap * da - 0.5 * da * da);
    for (let j = jp - 1; j >= j0; j--) {
      e *= r;
      r *= q;
      sum += wh[j]! * e;
    }
    return (sum * this.sI) / (this.sD * SQRT_2PI);
  }

  /**
   * The continuation density at look k for the continuation region (lo, hi), on a grid fit for a next
   * look at information nextInfo (empty when the region holds no mass worth carrying).
   *
   * The grid covers the region within BULK standard deviations of the mean on an unbounded side, and
   * out to a finite boundary (at most FAR away) otherwise: the next boundary of an alpha-spending design
   * that spends almost nothing lies far in the tail, and its crossing probability comes from there.
   */
  next(lo: number, hi: number, nextInfo: number, resolution: number): LookState {
    const a = lo <= -UNBOUNDED ? this.mu - BULK : Math.max(lo, this.mu - FAR);
    const b = hi >= UNBOUNDED ? this.mu + BULK : Math.min(hi, this.mu + FAR);
    if (!(a < b)) return { info: this.info, z0: 0, dz: 1, wh: new Float64Array(0) };
    const out = Math.sqrt(Math.max(nextInfo - this.info, MIN_INFO_STEP * this.info) / this.info);
    const { z0, dz, w } = makeGrid(a, b, Math.min(0.3, this.spread, out) / resolution);
    const wh = w;
    for (let i = 0; i < w.length; i++) wh[i] = w[i]! * this.density(z0 + i * dz);
    return { info: this.info, z0, dz, wh };
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

/** Grid resolution for tests that check the default against a finer grid; not part of the API. */
export interface GridOptions {
  /** Simpson panels per unit of the integrand's scale (default 2). */
  resolution?: number;
}

function resolutionOf(grid: GridOptions | undefined): number {
  const r = grid?.resolution ?? RESOLUTION;
  if (!(r >= 1 && r <= 64)) throw new RangeError(`grid resolution must be in [1, 64], got ${r}`);
  return r;
}

/**
 * The repeats of a schedule: look k repeats look repeatOf[k] (−1 when it does not) when its information
 * exceeds that of the last look that was not a repeat by less than MIN_INFO_STEP of it. nextInfo[k] is
 * the information of the next look that is not a repeat (NaN when none): what the grid of look k is for.
 */
function repeatsOf(info: number[]): { repeatOf: number[]; nextInfo: number[] } {
  const repeatOf: number[] = [];
  let kept = -1;
  info.forEach((t, k) => {
    const repeat = kept >= 0 && t - info[kept]! < MIN_INFO_STEP * info[kept]!;
    repeatOf.push(repeat ? kept : -1);
    if (!repeat) kept = k;
  });
  const nextInfo: number[] = [];
  let next = NaN;
  for (let k = info.length - 1; k >= 0; k--) {
    nextInfo[k] = next;
    if (repeatOf[k]! < 0) next = info[k]!;
  }
  return { repeatOf, nextInfo };
}

/**
 * Boundaries of a group-sequential design on the Z scale.
 *
 * - `pocock`: b_k = c for every look; `obf`: b_k = C·√(t_K / t_k), i.e. C·√(K/k) for equally spaced
 *   looks. c or C is solved so that the total type I error is exactly α.
 * - `ld-obf`, `ld-pocock`: Lan-DeMets alpha spending (see `spend`). Look k spends α(t_k) − α(t_{k−1})
 *   given the boundaries of the earlier looks.
 *
 * Two-sided designs are symmetric: reject when |Z_k| ≥ b_k, α/2 on each side.
 *
 * What a spending design does at the looks a rollout can produce (the observed fractions):
 *
 * - **Beyond full information** (t > 1): `spend` caps t at 1, so the first look at or past t = 1 spends
 *   all that is left and every later one spends nothing: its boundary is `UNBOUNDED` (it cannot reject)
 *   and its cumulative α stays at α. Never NaN.
 * - **A repeat**: a look whose information exceeds that of the last look that was not a repeat by less
 *   than MIN_INFO_STEP (1e-4) of it, equal information included, adds almost nothing to the test. It is
 *   handled, not refused: its boundary is `UNBOUNDED` (it cannot reject), it spends nothing, and what it
 *   would have spent is left to the next look that is not a repeat, so the other looks get the
 *   boundaries they would have without it. (Z barely moves between such looks; solving a boundary for
 *   them would need a grid finer than the step.) Information that decreases is a RangeError naming the
 *   look. Classic designs (`pocock`, `obf`) refuse repeats with a RangeError.
 * - **A first look at tiny information** (t = 1e-4): `ld-obf` spends 2Φ̄(z/√t), which underflows to 0
 *   there, so the boundary is `UNBOUNDED`; `ld-pocock` spends about α(e − 1)t and gets a large finite
 *   boundary. A look that cannot reject is skipped by the recursion (it changes nothing), so the looks
 *   after it are exact.
 *
 * Each boundary is solved to relative accuracy in the probability it spends, however small: an early
 * `ld-obf` boundary that spends 1e-100 is right to about 1e-4 on the Z scale, like the others.
 *
 * Cost grows about as K^1.5 (the grid refines as the increments shrink): on the 2-core development
 * machine `ld-obf` takes about 3 ms for 20 looks, 15–25 ms for 100 and 40 ms for 200. Classic designs
 * solve their constant by repeated integration and take three to four times longer.
 */
export function boundaries(input: BoundariesInput, grid?: GridOptions): GroupSequentialBoundaries {
  const { design, looks, alpha, sides } = input;
  checkAlpha(alpha);
  checkSides(sides);
  if (!Number.isInteger(looks) || looks < 1 || looks > MAX_LOOKS) {
    throw new RangeError(`looks must be an integer from 1 to ${MAX_LOOKS}, got ${looks}`);
  }
  const info = input.info ? [...input.info] : Array.from({ length: looks }, (_, k) => (k + 1) / looks);
  if (info.length !== looks) throw new RangeError(`info has ${info.length} entries for ${looks} looks`);
  checkInfo(info);
  const resolution = resolutionOf(grid);
  if (design === 'ld-obf' || design === 'ld-pocock') {
    return spendingBoundaries(design, alpha, sides, info, resolution);
  }
  if (design === 'pocock' || design === 'obf') {
    repeatsOf(info).repeatOf.forEach((j, k) => {
      if (j >= 0) {
        throw new RangeError(
          `${design} needs looks that each add information: look ${k + 1} at ${info[k]} repeats look ${j + 1} at ${info[j]}`,
        );
      }
    });
    return classicBoundaries(design, alpha, sides, info, resolution);
  }
  throw new RangeError(`unknown design ${String(design)}`);
}

function spendingBoundaries(
  design: SpendingDesign,
  alpha: number,
  sides: Sides,
  info: number[],
  resolution: number,
): GroupSequentialBoundaries {
  const K = info.length;
  const bounds: number[] = [];
  const cumulative: number[] = [];
  const total = spend(design, alpha, info[K - 1]!, sides);
  const { repeatOf, nextInfo } = repeatsOf(info);
  let prev: LookState | undefined;
  let spentBefore = 0;
  let cum = 0;
  for (let k = 0; k < K; k++) {
    const t = info[k]!;
    if (repeatOf[k]! >= 0) {
      bounds.push(UNBOUNDED);
      cumulative.push(cum);
      continue;
    }
    const tr = new Transition(prev, t, 0);
    const spentNow = spend(design, alpha, t, sides);
    const { b, p } = solveBoundary(tr, spentNow - spentBefore, sides);
    bounds.push(b);
    cum += p;
    cumulative.push(cum);
    spentBefore = spentNow;
    // A look that cannot reject changes nothing; after the last look that spends, nothing is needed.
    if (b < UNBOUNDED && nextInfo[k]! > t && spentNow < total) {
      prev = tr.next(sides === 2 ? -b : -Infinity, b, nextInfo[k]!, resolution);
    }
  }
  return { design, alpha, sides, boundaries: bounds, cumulativeAlpha: cumulative, info };
}

/** Cumulative P(reject) under H0 for boundaries b_k = c·shape_k. */
function classicCumulative(
  c: number,
  shape: number[],
  info: number[],
  sides: Sides,
  resolution: number,
): number[] {
  const out: number[] = [];
  let prev: LookState | undefined;
  let cum = 0;
  for (let k = 0; k < info.length; k++) {
    const b = c * shape[k]!;
    const tr = new Transition(prev, info[k]!, 0);
    cum += tr.above(b) + (sides === 2 ? tr.below(-b) : 0);
    out.push(cum);
    if (k < info.length - 1) prev = tr.next(sides === 2 ? -b : -Infinity, b, info[k + 1]!, resolution);
  }
  return out;
}

function classicBoundaries(
  design: ClassicDesign,
  alpha: number,
  sides: Sides,
  info: number[],
  resolution: number,
): GroupSequentialBoundaries {
  const tK = info[info.length - 1]!;
  const shape = info.map((t) => (design === 'pocock' ? 1 : Math.sqrt(tK / t)));
  let lastCumulative: number[] = [];
  const F = (c: number): number => {
    lastCumulative = classicCumulative(c, shape, info, sides, resolution);
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
 * integrating over the boundaries actually used, where tPrev is the last past look that was not a repeat.
 * Looks past full information, repeats and tiny first looks behave as in `boundaries`: a tNow that
 * repeats gets `UNBOUNDED` and spends 0, and a past repeat must have used `UNBOUNDED` (a RangeError
 * otherwise).
 */
export function nextBoundary(
  design: SpendingSpec,
  pastInfo: number[],
  pastBoundaries: number[],
  tNow: number,
  grid?: GridOptions,
): NextBoundary {
  const { alpha, sides } = design;
  checkAlpha(alpha);
  checkSides(sides);
  if (pastInfo.length !== pastBoundaries.length) {
    throw new RangeError(`${pastInfo.length} past looks but ${pastBoundaries.length} past boundaries`);
  }
  if (pastInfo.length >= MAX_LOOKS) {
    throw new RangeError(
      `at most ${MAX_LOOKS} looks: ${pastInfo.length} past looks leave no room for another`,
    );
  }
  const info = [...pastInfo, tNow];
  checkInfo(info);
  const resolution = resolutionOf(grid);
  const walk = new Walk(info, 0, resolution);
  for (let k = 0; k < pastInfo.length; k++) {
    const b = pastBoundaries[k]!;
    if (Number.isNaN(b) || (sides === 2 && !(b >= 0))) {
      throw new RangeError(`past boundary ${k + 1} is not valid: ${b}`);
    }
    walk.look(sides === 2 ? -b : -Infinity, b, `past boundary ${k + 1}`);
  }
  const cum = walk.upper + walk.lower;
  const kept = walk.lastKept();
  const tPrev = kept >= 0 ? info[kept]! : 0;
  if (walk.repeats()) return { boundary: UNBOUNDED, spent: 0, cumulativeAlpha: cum };
  const spent = Math.max(
    0,
    spend(design.design, alpha, tNow, sides) - spend(design.design, alpha, tPrev, sides),
  );
  const { b, p } = solveBoundary(walk.transition(), spent, sides);
  return { boundary: b, spent, cumulativeAlpha: cum + p };
}

/**
 * The recursion over given boundaries under drift θ, one look at a time: the probability of stopping
 * through each side at each look. Looks that cannot stop are skipped (they change nothing).
 */
class Walk {
  private prev: LookState | undefined;
  private k = 0;
  private readonly repeatOf: number[];
  private readonly nextInfo: number[];
  /** Totals so far of P(stop up) and P(stop down). */
  upper = 0;
  lower = 0;

  constructor(
    private readonly info: number[],
    private readonly theta: number,
    private readonly resolution: number,
  ) {
    ({ repeatOf: this.repeatOf, nextInfo: this.nextInfo } = repeatsOf(info));
  }

  /** Whether the next look repeats an earlier one. */
  repeats(): boolean {
    return this.repeatOf[this.k]! >= 0;
  }

  /** Index of the last look taken that was not a repeat (−1 when none). */
  lastKept(): number {
    for (let j = this.k - 1; j >= 0; j--) if (this.repeatOf[j]! < 0) return j;
    return -1;
  }

  /** The transition to the next look. */
  transition(): Transition {
    return new Transition(this.prev, this.info[this.k]!, this.theta);
  }

  /** Takes the next look with continuation region (lo, hi); returns P(stop up) and P(stop down) there. */
  look(lo: number, hi: number, what: string): { up: number; down: number } {
    const { info, k } = this;
    this.k++;
    const open = lo <= -UNBOUNDED && hi >= UNBOUNDED;
    const j = this.repeatOf[k]!;
    if (j >= 0) {
      if (!open) {
        throw new RangeError(
          `${what} must be UNBOUNDED: look ${k + 1} at ${info[k]} repeats look ${j + 1} at ${info[j]}`,
        );
      }
      return { up: 0, down: 0 };
    }
    if (open) return { up: 0, down: 0 };
    const tr = new Transition(this.prev, info[k]!, this.theta);
    const up = Math.min(1, Math.max(0, tr.above(hi)));
    const down = Math.min(1, Math.max(0, tr.below(lo)));
    this.upper += up;
    this.lower += down;
    const next = this.nextInfo[k]!;
    if (next > info[k]!) this.prev = tr.next(lo, hi, next, this.resolution);
    return { up, down };
  }
}

/**
 * Probabilities of stopping at each look under drift θ: Z_k ~ N(θ·√I_k, 1) with independent score
 * increments, so with information fractions θ is the expected Z at t = 1. `upperTotal` under the
 * alternative is the power; with θ = 0 it is the type I error.
 *
 * A futility rule (one-sided only) is non-binding: the boundaries were computed without it, so adding
 * it can only lower the type I error (stopping for futility never rejects), and it lowers power by
 * exactly what this function reports with and without it.
 *
 * A look with an `UNBOUNDED` boundary (and no futility bound) cannot stop; a look that repeats the
 * previous one (see `boundaries`) must be such a look.
 */
export function crossingProbabilities(
  bounds: number[],
  info: number[],
  drift: number,
  options: CrossingOptions = {},
  grid?: GridOptions,
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
  const walk = new Walk(info, drift, resolutionOf(grid));
  const upper: number[] = [];
  const lower: number[] = [];
  let stoppedInfo = 0;
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
    const { up, down } = walk.look(lo, b, `boundary ${k + 1}`);
    upper.push(up);
    lower.push(down);
    stoppedInfo += (up + down) * info[k]!;
  }
  const lastInfo = info[K - 1]!;
  const expectedInfo = stoppedInfo + Math.max(0, 1 - walk.upper - walk.lower) * lastInfo;
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

/** Information must be finite, positive and never decrease (a repeat is handled by each caller). */
function checkInfo(info: number[]): void {
  info.forEach((t, k) => {
    if (!(t > 0) || !Number.isFinite(t)) {
      throw new RangeError(`information must be finite and positive: look ${k + 1} has ${t}`);
    }
    if (k > 0 && t < info[k - 1]!) {
      throw new RangeError(
        `information must not decrease: look ${k + 1} has ${t}, less than look ${k}'s ${info[k - 1]}`,
      );
    }
  });
}
