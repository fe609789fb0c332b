/**
 * The shadow gates with the vehicles' upload filter: the budget checks made while the shadow runs, and
 * the final verdict per cohort.
 *
 * Every estimate here comes from the analysis, weighted by the inverse probability of each upload
 * (`ShadowEstimates`), so a cohort is judged on every event its vehicles ran, not on what they chose to
 * send. Gates: enough events, disagreement rate, the candidate/production latency ratio, the share of
 * vehicles that hit their upload budget, and (when `shadow.classGates` is set) each class's recall and
 * precision drop, candidate against production, on labeled events.
 *
 * Pure and deterministic: this module runs inside Temporal workflow code. It must never import node
 * modules or do I/O.
 */
import type { ClassStats, CohortStats } from '../activities/contracts';
import { formatPercent, type ShadowVerdict } from './decide';
import type { Policy } from './schema';

/** What the shadow does next in a cohort after a budget check. */
export interface BudgetCheck {
  cohort: string;
  /** continue: collect on; reject: stop, the cohort fails; enough: stop collecting, judge at the end. */
  action: 'continue' | 'reject' | 'enough';
  reason: string;
}

/** The share of a cohort's shadow vehicle-windows in which a vehicle hit its upload budget. */
export function overBudgetShare(s: CohortStats): number {
  const edge = s.shadow?.edge;
  return edge && edge.vehicles > 0 ? edge.overBudget / edge.vehicles : 0;
}

function overBudgetReason(s: CohortStats, max: number): string | null {
  const share = overBudgetShare(s);
  if (share <= max) return null;
  const e = s.shadow!.edge;
  return (
    `upload budget exceeded on ${formatPercent(share)} of vehicle-windows (${e.overBudget}/${e.vehicles}), ` +
    `above ${formatPercent(max)}: the candidate disagrees or is unsure too often to shadow within budget`
  );
}

/** The checks made after each shadow window but the last. */
export function checkShadowBudget(policy: Policy, stats: CohortStats[]): BudgetCheck[] {
  const budget = policy.shadow.uploadBudget;
  return stats.map((s) => {
    if (!budget) return { cohort: s.cohort, action: 'continue', reason: 'no upload budget' };
    const over = overBudgetReason(s, budget.maxOverBudgetShare);
    if (over) return { cohort: s.cohort, action: 'reject', reason: `Shadow stopped: ${over}.` };
    const uploaded = s.shadow?.edge.uploaded ?? 0;
    if (budget.perCohort !== undefined && uploaded >= budget.perCohort) {
      return {
        cohort: s.cohort,
        action: 'enough',
        reason: `Shadow stopped collecting: ${uploaded} uploads reached the cohort's budget of ${budget.perCohort}; judged at the end on what it has.`,
      };
    }
    return { cohort: s.cohort, action: 'continue', reason: `${uploaded} uploads` };
  });
}

/** One-sided 95%: a class gate fails only when the drop's lower confidence bound is above the limit. */
const Z_ONE_SIDED = 1.6448536269514722;

/**
 * A class's recall and precision gates: failures (the drop exceeds the limit at 95% one-sided
 * confidence, so that a handful of labels never rejects a candidate on noise), and notes (classes not
 * judged for want of labels, and drops above the limit that the labels cannot show).
 */
function classGates(
  policy: Policy,
  classes: readonly ClassStats[],
): { failures: string[]; notes: string[]; worst: number } {
  const gates = policy.shadow.classGates;
  const failures: string[] = [];
  const notes: string[] = [];
  let worst = 0;
  if (!gates) return { failures, notes, worst };
  const pct = (x: number) => (x * 100).toFixed(1);
  for (const c of classes) {
    const checks = [
      {
        name: 'recall',
        m: c.recall,
        support: c.labeled,
        max: gates.maxRecallDrop,
      },
      {
        name: 'precision',
        m: c.precision,
        support: Math.min(c.predicted.candidate, c.predicted.production),
        max: gates.maxPrecisionDrop,
      },
    ];
    for (const { name, m, support, max } of checks) {
      if (support < gates.minLabeled) {
        notes.push(`class ${c.cls} ${name} not judged (${support} labeled < ${gates.minLabeled})`);
        continue;
      }
      const drop = m.production - m.candidate;
      const lower = drop - Z_ONE_SIDED * m.se;
      worst = Math.max(worst, drop);
      const what =
        `class ${c.cls} ${name} ${pct(m.candidate)}% against production's ${pct(m.production)}% ` +
        `(drop ${pct(drop)} points, 95% lower bound ${pct(lower)}, ${support} labeled)`;
      if (lower > max) failures.push(`${what}: above the ${pct(max)}-point limit`);
      else if (drop > max) notes.push(`${what}: above the ${pct(max)}-point limit but not shown to be`);
    }
  }
  return { failures, notes, worst };
}

/**
 * The final shadow verdict per cohort. Without `stats.shadow` (batches logged before the filter) the
 * estimates fall back to the plain counts, which is what they equal when every event was uploaded.
 */
export function judgeShadow(policy: Policy, stats: CohortStats[]): ShadowVerdict[] {
  const { maxDisagreement, maxLatencyRatio, minEvents, uploadBudget } = policy.shadow;
  return stats.map((s) => {
    const est = s.shadow?.estimated;
    const counted = s.shadow && s.shadow.edge.evaluated > 0 ? s.shadow.edge.evaluated : undefined;
    const uploads = s.paired?.events ?? 0;
    const events = counted ?? Math.round(est?.events ?? uploads);
    const disagreement = est ? est.disagreement : uploads > 0 ? (s.paired?.disagreements ?? 0) / uploads : 0;
    const cand = est?.latencyMs.candidate ?? 0;
    const prod = est?.latencyMs.production ?? 0;
    const measurable = cand > 0 && prod > 0;
    const latencyRatio = measurable ? cand / prod : 0;

    const failures: string[] = [];
    if (events < minEvents) failures.push(`insufficient shadow data: ${events} events, ${minEvents} needed`);
    if (disagreement > maxDisagreement) {
      failures.push(
        `models disagree on an estimated ${formatPercent(disagreement)} of events, above ${formatPercent(maxDisagreement)}`,
      );
    }
    if (!measurable) failures.push('no latency samples to compare');
    else if (latencyRatio > maxLatencyRatio) {
      failures.push(`candidate latency is ${latencyRatio.toFixed(2)}× production, above ${maxLatencyRatio}×`);
    }
    const over = uploadBudget ? overBudgetReason(s, uploadBudget.maxOverBudgetShare) : null;
    if (over) failures.push(over);
    const classes = classGates(policy, s.shadow?.classes ?? []);
    failures.push(...classes.failures);

    const passed = failures.length === 0;
    const basis = counted !== undefined ? `${events} events (${uploads} uploaded)` : `${events} events`;
    const notes = classes.notes.length > 0 ? ` ${classes.notes.join('; ')}.` : '';
    const reason = passed
      ? `Shadow passed: ${basis}, disagreement ${formatPercent(disagreement)} ≤ ` +
        `${formatPercent(maxDisagreement)}, latency ${latencyRatio.toFixed(2)}× ≤ ${maxLatencyRatio}×` +
        (policy.shadow.classGates ? `, worst class drop ${(classes.worst * 100).toFixed(1)} points` : '') +
        `.${notes}`
      : `Shadow failed: ${failures.join('; ')}.${notes}`;
    return { cohort: s.cohort, passed, events, disagreement, latencyRatio, reason };
  });
}
