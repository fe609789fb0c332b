/**
 * Multiplicity: keeping the family-wise false-alarm rate at α when a rollout tests several metrics in
 * several cohorts. Bonferroni, Holm's step-down procedure, a serial gatekeeper over ordered families
 * (guardrails before success metrics), and Holm or Bonferroni over every (cohort, metric) pair at once.
 *
 * All procedures take p-values and control the family-wise error rate (FWER) in the strong sense, under
 * any dependence between the tests. They apply equally to fixed-sample p-values and to the always-valid
 * p-values of the mSPRT (`./stats`): with the running minimum of each always-valid p-value, the
 * guarantee holds over all looks at once.
 *
 * What "rejected" means depends on the null hypothesis the p-value is for. For a guardrail "harm" test
 * (H0: no harm) a rejection declares harm; for a non-inferiority test (H0: harm at least the margin) a
 * rejection shows the candidate non-inferior. Callers choose which; this module only counts.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or third-party values, read the clock or a random source, do I/O, mutate its inputs, or
 * return NaN. A p-value that is not a number counts as 1 (no evidence); others are clamped to [0, 1].
 */

export interface Adjusted {
  /** Per hypothesis, in input order: rejected at the family-wise level α. */
  rejected: boolean[];
  /** Per hypothesis, in input order: adjusted p-value in [0, 1]; rejected exactly when ≤ α. */
  adjusted: number[];
}

/** A p-value made safe: NaN and non-numbers count as 1, everything else is clamped to [0, 1]. */
function clean(p: number): number {
  if (typeof p !== 'number' || Number.isNaN(p)) return 1;
  return Math.min(1, Math.max(0, p));
}

/**
 * Bonferroni: each of m hypotheses is tested at α / m. Adjusted p-value min(1, m·p).
 */
export function bonferroni(pValues: readonly number[], alpha: number): Adjusted {
  const m = pValues.length;
  const adjusted = pValues.map((p) => Math.min(1, m * clean(p)));
  return { adjusted, rejected: adjusted.map((a) => a <= alpha) };
}

/**
 * Holm's step-down procedure (Holm 1979). Sort the p-values p(1) ≤ … ≤ p(m); reject H(1), H(2), … as
 * long as p(i) ≤ α / (m − i + 1), and stop at the first that is not. The adjusted p-values are
 *
 *   p̃(i) = max over j ≤ i of min(1, (m − j + 1) · p(j))
 *
 * which are monotone in the order of the raw p-values and capped at 1, and H(i) is rejected exactly when
 * p̃(i) ≤ α. Never rejects less than Bonferroni, with the same guarantee. Ties give equal adjusted
 * values, so the result does not depend on the order of tied inputs.
 */
export function holm(pValues: readonly number[], alpha: number): Adjusted {
  const m = pValues.length;
  const ps = pValues.map(clean);
  const order = ps.map((_, i) => i).sort((a, b) => ps[a]! - ps[b]! || a - b);
  const adjusted = new Array<number>(m).fill(1);
  let running = 0;
  order.forEach((index, rank) => {
    running = Math.max(running, Math.min(1, (m - rank) * ps[index]!));
    adjusted[index] = running;
  });
  return { adjusted, rejected: adjusted.map((a) => a <= alpha) };
}

export interface Family {
  name: string;
  pValues: number[];
  /**
   * Level of Holm's test inside this family; the overall α when absent. Capped at the overall α. With a
   * smaller level the family is tested more strictly; the family-wise guarantee is unchanged.
   */
  alpha?: number;
}

export interface FamilyResult {
  name: string;
  /** Whether the family was tested: every earlier family had all its hypotheses rejected. */
  tested: boolean;
  /** Level Holm's test used (or would have used) inside this family. */
  alpha: number;
  /** Per hypothesis; all false when the family was not tested. */
  rejected: boolean[];
  /**
   * Gatekeeping-adjusted p-values: the larger of the family's own Holm-adjusted p-value and the largest
   * adjusted p-value of the earlier families. When no family sets its own `alpha`, a hypothesis is
   * rejected exactly when its adjusted p-value is ≤ α.
   */
  adjusted: number[];
  /** Every hypothesis of the family was rejected (false for an empty family that was not tested). */
  allRejected: boolean;
}

/**
 * Serial gatekeeping over ordered families F1, F2, …, Fk (Dmitrienko, Tamhane and colleagues' serial
 * gatekeeper, with Holm inside each family):
 *
 *   - F1 is tested with Holm at α (or its own smaller `alpha`);
 *   - F(j+1) is tested, with Holm at the full α again, only if every hypothesis of F1 … Fj was rejected;
 *     otherwise it and all later families are not tested and reject nothing.
 *
 * This is a closed testing procedure, so the FWER over all families together is ≤ α in the strong
 * sense: α is never split between families, it is passed on whole once a family is fully rejected. An
 * empty family is passed through (it has nothing to keep rejecting).
 *
 * Typical use in a rollout: F1 = guardrail metrics with non-inferiority nulls (a rejection shows the
 * guardrail is not worse than its margin), F2 = success metrics (a rejection shows an improvement). Only
 * when every guardrail is shown non-inferior is there any claim of improvement. Harm tests (H0: no harm,
 * a rejection declares harm) are the wrong way round for a gate and belong in their own family.
 *
 * Serial only; the parallel gatekeeper is a different procedure, which tests F(j+1) at a level that grows with the number of
 * rejections in Fj (any rejection opens the gate, with the α of the rejected hypotheses passed on).
 */
export function hierarchicalGatekeeping(families: readonly Family[], alpha: number): FamilyResult[] {
  const results: FamilyResult[] = [];
  let open = true;
  let carried = 0; // largest adjusted p-value so far
  for (const family of families) {
    const level = Math.min(alpha, family.alpha ?? alpha);
    const own = holm(family.pValues, level);
    const adjusted = own.adjusted.map((a) => Math.max(a, carried));
    const rejected: boolean[] = open ? own.rejected : family.pValues.map(() => false);
    const allRejected: boolean = open && rejected.every((r) => r);
    results.push({ name: family.name, tested: open, alpha: level, rejected, adjusted, allRejected });
    for (const a of adjusted) carried = Math.max(carried, a);
    open = allRejected;
  }
  return results;
}

export interface CohortMetricResult {
  p: number;
  adjusted: number;
  rejected: boolean;
}

/**
 * One family made of every (cohort, metric) p-value, adjusted with Holm or Bonferroni at α: the chance
 * of any false rejection, in any cohort and any metric, is ≤ α. Returns the same nesting as the input,
 * keys in input order, with the raw p-value (cleaned as above), the adjusted one and the rejection.
 */
export function familywiseAcrossCohorts(
  pByCohortMetric: Readonly<Record<string, Readonly<Record<string, number>>>>,
  alpha: number,
  method: 'holm' | 'bonferroni',
): { m: number; results: Record<string, Record<string, CohortMetricResult>> } {
  const keys: [string, string][] = [];
  const ps: number[] = [];
  for (const [cohort, metrics] of Object.entries(pByCohortMetric)) {
    for (const [metric, p] of Object.entries(metrics)) {
      keys.push([cohort, metric]);
      ps.push(clean(p));
    }
  }
  const adj = method === 'holm' ? holm(ps, alpha) : bonferroni(ps, alpha);
  const results: Record<string, Record<string, CohortMetricResult>> = {};
  for (const cohort of Object.keys(pByCohortMetric)) results[cohort] = {};
  keys.forEach(([cohort, metric], i) => {
    results[cohort]![metric] = { p: ps[i]!, adjusted: adj.adjusted[i]!, rejected: adj.rejected[i]! };
  });
  return { m: ps.length, results };
}
