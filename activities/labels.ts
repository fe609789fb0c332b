/**
 * Activities of the label wait, and the labeling decisions of event ingestion: which logged events the
 * (simulated) labeler is asked about, within the rollout's daily budget, and how many of the requested
 * labels have arrived, per cohort.
 *
 * Requests are made in tiers, in this order: 'disagreement' (the two models of a shadow event disagree),
 * 'rare' (either model predicts the critical class, or the event is a safety event), 'low_confidence'
 * (the less confident model is below the threshold) and 'sample' (a seeded `labels.rate` share of the
 * rest). Each request stores its tier and its inclusion probability, so estimates over labeled events
 * can be weighted back to every logged event.
 *
 * Ground truth arrives late. The simulated labeler keeps a private queue (`sim_truth`: each event's
 * true class and when its label would come back if asked at the time of the event; `sim_label_noise`:
 * its wrong answers); a label enters `labels` only when it was requested and its delay has passed by
 * the time asked about, and it is the labeler's answer, not the truth. Everything is restricted to one
 * rollout and idempotent: asking again about the same moment changes nothing. Never returns rows per
 * event, and never reads a label before it has arrived.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { ErrorType, fail } from '../errors';
import { makeRng } from '../policies/rng';
import type { CoverageCount, LabelCoverage, LabelInput } from './contracts';
import { exclusive, exec, num, rows, transaction } from './db';

/** The request tiers, highest priority first; a request's `reason` is its tier. */
export const LABEL_TIERS = ['disagreement', 'rare', 'low_confidence', 'sample'] as const;
export type LabelReason = (typeof LABEL_TIERS)[number];
/** Tier index of an event that gets no request. */
export const NO_TIER = 255;
export const DAY_MS = 86_400_000;
/** Classes the labeler answers with: the frames' truth is binary (policies/frames.ts). */
export const LABEL_CLASSES = 2;

/** Below this confidence (of the less confident model, when two ran) an event is worth a label. */
export const PRIORITY_CONFIDENCE = 0.6;

/** Base inclusion of each tier before any budget: priority tiers are requested whole, 'sample' at `rate`. */
export function tierBase(rate: number): number[] {
  return LABEL_TIERS.map((t) => (t === 'sample' ? rate : 1));
}

/** What the budget decided for a batch's candidates: kept or not, and the inclusion of each kept one. */
export interface RequestPlan {
  keep: Uint8Array;
  /** Probability of a request given the event was logged; 0 where not kept. */
  inclusion: Float64Array;
}

/**
 * Which candidates get a request when at most `allowance` may be made (null: no limit). `tiers` holds a
 * tier index per candidate (NO_TIER: none). Whole tiers are taken in `LABEL_TIERS` order while they fit;
 * the first that does not fit gets a uniform subset of exactly what is left, drawn with `rng` (which is
 * drawn from only then); the tiers after it get nothing. A kept candidate's inclusion is `base[tier]`
 * times the share of its tier that was kept. Pure.
 */
export function chooseWithinBudget(
  tiers: ArrayLike<number>,
  base: readonly number[],
  allowance: number | null,
  rng: () => number,
): RequestPlan {
  const keep = new Uint8Array(tiers.length);
  const inclusion = new Float64Array(tiers.length);
  const buckets: number[][] = LABEL_TIERS.map(() => []);
  for (let i = 0; i < tiers.length; i++) {
    const t = tiers[i]!;
    if (t !== NO_TIER) buckets[t]!.push(i);
  }
  let left = allowance === null ? Infinity : Math.max(0, Math.floor(allowance));
  buckets.forEach((idx, t) => {
    if (idx.length === 0) return;
    const k = Math.min(idx.length, left);
    if (k < idx.length) {
      // Partial Fisher-Yates: the first k of a seeded shuffle, a uniform subset of size k.
      for (let j = 0; j < k; j++) {
        const r = j + Math.floor(rng() * (idx.length - j));
        [idx[j], idx[r]] = [idx[r]!, idx[j]!];
      }
    }
    for (let j = 0; j < k; j++) {
      keep[idx[j]!] = 1;
      inclusion[idx[j]!] = (base[t]! * k) / idx.length;
    }
    left -= k;
  });
  return { keep, inclusion };
}

/**
 * Requests a rollout may have made on UTC day `day` (day * DAY_MS is its start) once its events up to
 * `toMs` are in: the daily budget paced evenly over the day, the whole budget once the day is over.
 */
export function pacedBudget(dailyBudget: number, day: number, toMs: number): number {
  const elapsed = Math.min(DAY_MS, Math.max(0, toMs - day * DAY_MS));
  return Math.floor((dailyBudget * elapsed) / DAY_MS);
}

/**
 * Applies the rollout's daily budget to one batch's candidates (`tiers`, and `at`: when each would be
 * requested). Candidates are grouped by the UTC day of `at`; a day's allowance is `pacedBudget` at the
 * batch's end `toMs` minus the requests the rollout has already made that day, and `chooseWithinBudget`
 * picks within it, seeded by `seed` and the day. Without a budget every candidate is kept. Runs inside
 * the caller's transaction (takes no lock), before this batch's requests are written: a batch written
 * once decides once.
 */
export async function budgetRequests(
  conn: DuckDBConnection,
  args: { rolloutId: string; seed: string; toMs: number; dailyBudget?: number; rate: number },
  tiers: Uint8Array,
  at: Float64Array,
): Promise<RequestPlan> {
  const base = tierBase(args.rate);
  const budget = args.dailyBudget;
  if (budget === undefined) return chooseWithinBudget(tiers, base, null, () => 0);
  const byDay = new Map<number, number[]>();
  for (let i = 0; i < tiers.length; i++) {
    if (tiers[i] === NO_TIER) continue;
    const day = Math.floor(at[i]! / DAY_MS);
    const idx = byDay.get(day);
    if (idx) idx.push(i);
    else byDay.set(day, [i]);
  }
  const keep = new Uint8Array(tiers.length);
  const inclusion = new Float64Array(tiers.length);
  if (byDay.size === 0) return { keep, inclusion };
  const days = [...byDay.keys()].sort((a, b) => a - b);
  const used = new Map<number, number>();
  for (const r of await rows(
    conn,
    `SELECT CAST(floor(requested_at_ms / ${DAY_MS}) AS BIGINT) AS day, count(*) AS n FROM label_requests
     WHERE rollout_id = ? AND requested_at_ms >= ? AND requested_at_ms < ? GROUP BY ALL`,
    [args.rolloutId, days[0]! * DAY_MS, (days.at(-1)! + 1) * DAY_MS],
  )) {
    used.set(num(r.day), num(r.n));
  }
  for (const day of days) {
    const idx = byDay.get(day)!;
    const allowance = Math.max(0, pacedBudget(budget, day, args.toMs) - (used.get(day) ?? 0));
    const plan = chooseWithinBudget(
      idx.map((i) => tiers[i]!),
      base,
      allowance,
      makeRng(`${args.seed}|labels|${day}`),
    );
    idx.forEach((i, j) => {
      keep[i] = plan.keep[j]!;
      inclusion[i] = plan.inclusion[j]!;
    });
  }
  return { keep, inclusion };
}

/**
 * The simulated labeler's answer about an event of class `truth`: with probability `noise` a different
 * class (uniform among the others), else the truth. Draws from `rng` only when `noise` > 0.
 */
export function labelerAnswer(truth: number, noise: number, rng: () => number): number {
  if (!(noise > 0) || rng() >= noise) return truth;
  return (truth + 1 + Math.floor(rng() * (LABEL_CLASSES - 1))) % LABEL_CLASSES;
}

/**
 * Moves the labels of `rolloutId` that have arrived by `asOfMs` into `labels`: for each requested event,
 * the first label record ingested for it (events/writer.ts `ingested_labels`, by its `at`; any labeler),
 * arriving at its `at` or at the request when it was given before. Rollouts whose batches were written
 * before ingestion existed read the simulated labeler's queue they were written with (`sim_truth`: a
 * label requested after its event waits the labeler's delay from the request; `sim_label_noise`: its
 * wrong answers). With each label it stores what a canary look needs of its event (phase, cohort, arm,
 * ts_ms, and whether each model's prediction differs from the label), so a look reads labels without
 * joining events. Idempotent; returns how many labels were new.
 */
export function ingestArrivedLabels(
  conn: DuckDBConnection,
  rolloutId: string,
  asOfMs: number,
): Promise<number> {
  return transaction(conn, () =>
    exec(
      conn,
      `INSERT INTO labels (event_id, rollout_id, label, arrived_at_ms,
                          phase, cohort, arm, ts_ms, err_candidate, err_production)
       SELECT a.event_id, a.rollout_id, a.label, a.arrives,
              e.phase, e.cohort, e.arm, e.ts_ms,
              e.pred_candidate <> a.label AS err_candidate,
              e.pred_production <> a.label AS err_production
       FROM (
         SELECT r.event_id, any_value(r.rollout_id) AS rollout_id,
                arg_min(il.label, il."at") AS label,
                greatest(min(il."at"), any_value(r.requested_at_ms)) AS arrives
         FROM label_requests r
         JOIN ingested_labels il ON il.fleet || ':' || il.event_id = r.event_id
         WHERE r.rollout_id = $rollout AND r.requested_at_ms <= $asOf
         GROUP BY r.event_id
         UNION ALL
         SELECT r.event_id, r.rollout_id, coalesce(n.label, t.label) AS label,
                t.available_at_ms + greatest(0, r.requested_at_ms - e.ts_ms) AS arrives
         FROM label_requests r
         JOIN sim_truth t ON t.event_id = r.event_id
         JOIN events e ON e.event_id = r.event_id
         LEFT JOIN sim_label_noise n ON n.event_id = r.event_id
         WHERE r.rollout_id = $rollout AND r.requested_at_ms <= $asOf
       ) a
       JOIN events e ON e.event_id = a.event_id
       WHERE a.arrives <= $asOf AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.event_id = a.event_id)`,
      { rollout: rolloutId, asOf: asOfMs },
    ),
  );
}

export function createLabelActivities({ conn }: { conn: DuckDBConnection }) {
  return {
    /**
     * Requests labels, as of `asOfMs`, for the rollout's events before then that have none requested
     * yet and whose confidence is below 0.6 (the lower of the two in shadow): reason 'low_confidence',
     * inclusion 1 (every such event is requested, at ingestion or here). Only rollouts recorded before
     * the per-cohort label wait call it; newer ones make every request as the events are logged.
     */
    async requestLabels(input: LabelInput): Promise<{ requested: number }> {
      const requested = await transaction(conn, () =>
        exec(
          conn,
          `INSERT INTO label_requests (event_id, rollout_id, requested_at_ms, reason, inclusion)
           SELECT e.event_id, e.rollout_id, ?, 'low_confidence', 1
           FROM events e
           WHERE e.rollout_id = ? AND e.ts_ms < ?
             AND least(coalesce(e.conf_candidate, 1), coalesce(e.conf_production, 1)) < ?
             AND NOT EXISTS (SELECT 1 FROM label_requests r WHERE r.event_id = e.event_id)`,
          [input.asOfMs, input.rolloutId, input.asOfMs, PRIORITY_CONFIDENCE],
        ),
      );
      return { requested };
    },

    /**
     * Ingests the labels that have arrived by `asOfMs`, then counts, per cohort of the rollout and in
     * total, the label requests made by then and how many of their labels have arrived. A request is
     * mature when it is at least `maturityMs` old at `asOfMs` (requested_at_ms <= asOfMs - maturityMs);
     * a younger one is counted only once its label has arrived (it can help coverage, never hurt it).
     * Coverage is labeled / counted, and 0 when nothing is counted: no requests is no evidence, never
     * full coverage. `cohorts` are reported even without requests.
     */
    async labelCoverage(input: LabelInput): Promise<LabelCoverage> {
      const maturityMs = input.maturityMs ?? 0;
      if (!(Number.isFinite(maturityMs) && maturityMs >= 0)) {
        throw fail(ErrorType.InvalidInput, `maturityMs must be at least 0 ms (got ${maturityMs})`);
      }
      await ingestArrivedLabels(conn, input.rolloutId, input.asOfMs);
      const found = await exclusive(conn, () =>
        rows(
          conn,
          `SELECT e.cohort,
                  count(*) FILTER (WHERE r.requested_at_ms <= $mature OR l.event_id IS NOT NULL) AS requested,
                  count(l.event_id) AS labeled,
                  count(*) FILTER (WHERE r.requested_at_ms > $mature AND l.event_id IS NULL) AS young
           FROM label_requests r
           JOIN events e ON e.event_id = r.event_id
           LEFT JOIN labels l ON l.event_id = r.event_id AND l.arrived_at_ms <= $asOf
           WHERE r.rollout_id = $rollout AND r.requested_at_ms <= $asOf
           GROUP BY e.cohort ORDER BY e.cohort`,
          { rollout: input.rolloutId, asOf: input.asOfMs, mature: input.asOfMs - maturityMs },
        ),
      );
      const cohorts: Record<string, CoverageCount> = {};
      for (const c of input.cohorts ?? []) cohorts[c] = count(0, 0, 0);
      const total = { requested: 0, labeled: 0, young: 0 };
      for (const r of found) {
        const [requested, labeled, young] = [num(r.requested), num(r.labeled), num(r.young)];
        cohorts[String(r.cohort)] = count(requested, labeled, young);
        total.requested += requested;
        total.labeled += labeled;
        total.young += young;
      }
      return { ...count(total.requested, total.labeled, total.young), cohorts };
    },
  };
}

function count(requested: number, labeled: number, young: number): CoverageCount {
  return { requested, labeled, coverage: requested === 0 ? 0 : labeled / requested, young };
}

export type LabelActivities = ReturnType<typeof createLabelActivities>;
