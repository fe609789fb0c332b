/**
 * The analysis activity: reduces a rollout's event log to sufficient statistics per cohort and arm, the
 * only thing the statistics in `policies/` need.
 *
 * One SQL per look does the work inside DuckDB; what comes back grows with cohorts, never with events:
 * this module must never return rows per event. The event side of those statistics is also kept per
 * ingested batch (`recordBatchStats`), so a look sums batches rather than reading every event. A look
 * as of `asOfMs` sees only events before then and labels that had arrived by then, so a look repeated
 * later for the same moment gives the same numbers.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { CLASSES } from '../policies/model-contract';
import { TAIL_QUANTILES } from '../policies/schema';
import type { AnalyzeInput, ArmStats, CohortStats, LatencyTail, ShadowEstimates } from './contracts';
import { exec, exclusive, num, rows, transaction } from './db';
import type { Row } from './db';
import { ingestArrivedLabels } from './labels';

/**
 * Canary events with the acting model's outputs named once: the candidate's on the candidate arm, else
 * production's. `lat` in milliseconds; `loglat` its natural log (NULL unless lat > 0); `safety` whether
 * the acting model missed a critical-class frame.
 */
const CANARY_EVENTS = `(
  SELECT e.*,
         CASE e.arm WHEN 'candidate' THEN e.pred_candidate ELSE e.pred_production END AS pred,
         CASE e.arm WHEN 'candidate' THEN e.lat_candidate ELSE e.lat_production END AS lat,
         CASE e.arm WHEN 'candidate' THEN e.safety_candidate ELSE e.safety_production END AS safety
  FROM events e WHERE e.phase = 'canary'
)`;

/** ln(x) where x > 0, else NULL (a zero or negative latency has no log and is left out of its moments). */
const ln = (x: string) => `ln(CASE WHEN ${x} > 0 THEN ${x} END)`;

/**
 * The event-side statistics of one arm, from latency `lat`, safety flag `safety`, under `filter`; and
 * the failed requests among the rows (`failed`).
 */
function eventStats(p: string, lat: string, safety: string, filter = 'true'): string {
  return `count(${lat}) AS ${p}lat_n,
       coalesce(sum(${lat}), 0) AS ${p}lat_sum,
       coalesce(sum(${lat} * ${lat}), 0) AS ${p}lat_sumsq,
       count(${ln(lat)}) AS ${p}loglat_n,
       coalesce(sum(${ln(lat)}), 0) AS ${p}loglat_sum,
       coalesce(sum(${ln(lat)} * ${ln(lat)}), 0) AS ${p}loglat_sumsq,
       count(*) FILTER (WHERE ${safety}) AS ${p}safety_events,
       coalesce(sum(e.exposure_h) FILTER (WHERE ${filter}), 0) AS ${p}exposure_h,
       count(*) FILTER (WHERE e.failed) AS ${p}failed`;
}

const CANARY_SQL = `
SELECT e.cohort, e.arm,
       count(*) AS events,
       count(l.event_id) AS labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL AND e.pred <> l.label) AS errors,
       ${eventStats('', 'e.lat', 'e.safety')}
FROM ${CANARY_EVENTS} e
LEFT JOIN labels l ON l.event_id = e.event_id AND l.arrived_at_ms <= ?
WHERE e.rollout_id = ? AND e.ts_ms < ?
GROUP BY e.cohort, e.arm`;

const SHADOW_SQL = `
SELECT e.cohort,
       count(e.pred_candidate) AS c_events,
       count(l.event_id) FILTER (WHERE e.pred_candidate IS NOT NULL) AS c_labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL AND e.pred_candidate <> l.label) AS c_errors,
       ${eventStats('c_', 'e.lat_candidate', 'e.safety_candidate', 'e.pred_candidate IS NOT NULL')},
       count(e.pred_production) AS p_events,
       count(l.event_id) FILTER (WHERE e.pred_production IS NOT NULL) AS p_labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL AND e.pred_production <> l.label) AS p_errors,
       ${eventStats('p_', 'e.lat_production', 'e.safety_production', 'e.pred_production IS NOT NULL')},
       count(*) FILTER (WHERE e.pred_candidate IS NOT NULL AND e.pred_production IS NOT NULL) AS paired,
       count(*) FILTER (WHERE e.pred_candidate <> e.pred_production) AS disagreements
FROM events e
LEFT JOIN labels l ON l.event_id = e.event_id AND l.arrived_at_ms <= ?
WHERE e.rollout_id = ? AND e.phase = 'shadow' AND e.ts_ms < ?
GROUP BY e.cohort`;

/**
 * Shadow estimates per cohort, weighting each uploaded event by the inverse of its upload probability
 * (`weight`; events logged before the upload filter count 1): the estimated events, disagreements and
 * each model's mean latency over every event the vehicles ran, not only the uploads.
 */
const SHADOW_WEIGHTED_SQL = `
SELECT e.cohort,
       sum(w) AS w_events,
       coalesce(sum(w) FILTER (WHERE e.pred_candidate <> e.pred_production), 0) AS w_disagree,
       coalesce(sum(w * e.lat_candidate) / nullif(sum(w) FILTER (WHERE e.lat_candidate IS NOT NULL), 0), 0)
         AS c_lat,
       coalesce(sum(w * e.lat_production) / nullif(sum(w) FILTER (WHERE e.lat_production IS NOT NULL), 0), 0)
         AS p_lat
FROM (SELECT *, coalesce(weight, 1) AS w FROM events) e
WHERE e.rollout_id = ? AND e.phase = 'shadow' AND e.ts_ms < ?
GROUP BY e.cohort`;

/** The vehicles' upload counters per cohort, over the shadow windows that ended by the look. */
const SHADOW_EDGE_SQL = `
SELECT cohort, sum(vehicles) AS vehicles, sum(evaluated) AS evaluated, sum(priority) AS priority,
       sum(disagreements) AS disagreements, sum(uploaded) AS uploaded, sum(over_budget) AS over_budget
FROM shadow_edge
WHERE rollout_id = ? AND to_ms <= ?
GROUP BY cohort`;

/**
 * Per cohort and class k, over labeled shadow uploads, each weighted by lw = 1 / (upload probability x
 * label-request probability): for each model m (c_, p_), the weighted true positives (label k and
 * prediction k), the weighted true-class and predicted-class totals, and the squared-weight sums the
 * linearised variance of a ratio needs (Σlw²·y, Σlw²·m, Σlw²·y·m, with y = [label = k], m = [pred = k]).
 */
const SHADOW_CLASS_SQL = `
WITH lab AS (
  SELECT e.cohort, l.label, e.pred_candidate AS pc, e.pred_production AS pp,
         coalesce(e.weight, 1) / r.inclusion AS lw
  FROM events e
  JOIN labels l ON l.event_id = e.event_id AND l.arrived_at_ms <= ?
  JOIN label_requests r ON r.event_id = e.event_id
  WHERE e.rollout_id = ? AND e.phase = 'shadow' AND e.ts_ms < ?
    AND e.pred_candidate IS NOT NULL AND e.pred_production IS NOT NULL AND r.inclusion > 0
)
SELECT cohort, k.cls,
       count(*) FILTER (WHERE label = k.cls) AS n_true,
       count(*) FILTER (WHERE pc = k.cls) AS c_n_pred,
       count(*) FILTER (WHERE pp = k.cls) AS p_n_pred,
       coalesce(sum(lw) FILTER (WHERE label = k.cls), 0) AS w_true,
       coalesce(sum(lw * lw) FILTER (WHERE label = k.cls), 0) AS w2_true,
       coalesce(sum(lw) FILTER (WHERE pc = k.cls), 0) AS c_w_pred,
       coalesce(sum(lw * lw) FILTER (WHERE pc = k.cls), 0) AS c_w2_pred,
       coalesce(sum(lw) FILTER (WHERE pc = k.cls AND label = k.cls), 0) AS c_w_tp,
       coalesce(sum(lw * lw) FILTER (WHERE pc = k.cls AND label = k.cls), 0) AS c_w2_tp,
       coalesce(sum(lw) FILTER (WHERE pp = k.cls), 0) AS p_w_pred,
       coalesce(sum(lw * lw) FILTER (WHERE pp = k.cls), 0) AS p_w2_pred,
       coalesce(sum(lw) FILTER (WHERE pp = k.cls AND label = k.cls), 0) AS p_w_tp,
       coalesce(sum(lw * lw) FILTER (WHERE pp = k.cls AND label = k.cls), 0) AS p_w2_tp,
       coalesce(sum(lw * lw) FILTER (WHERE pc = k.cls AND pp = k.cls AND label = k.cls), 0) AS b_w2_tp,
       coalesce(sum(lw * lw) FILTER (WHERE pc = k.cls AND pp = k.cls), 0) AS b_w2_pred
FROM lab CROSS JOIN (SELECT range AS cls FROM range(${CLASSES})) k
GROUP BY cohort, k.cls
ORDER BY cohort, k.cls`;

/**
 * The candidate-minus-production difference of two weighted ratios R_m = Σlw·a_m / Σlw·b_m over the same
 * labeled events, with a_m = y·m (label k and model m predicts k) and b_m = y (recall) or m (precision),
 * and its linearised standard error, pairing included:
 * Var ≈ V_c/B_c² + V_p/B_p² − 2·C/(B_c·B_p), with V_m = Σlw²(a_m − R_m·b_m)² and
 * C = Σlw²(a_c − R_c·b_c)(a_p − R_p·b_p), all from the per-class sums of SHADOW_CLASS_SQL.
 */
function pairedRatios(
  r: Row,
  kind: 'recall' | 'precision',
): { candidate: number; production: number; se: number } {
  const tp = (m: string) => num(r[`${m}w_tp`]);
  const tp2 = (m: string) => num(r[`${m}w2_tp`]);
  const den = (m: string) => (kind === 'recall' ? num(r.w_true) : num(r[`${m}w_pred`]));
  const den2 = (m: string) => (kind === 'recall' ? num(r.w2_true) : num(r[`${m}w2_pred`]));
  const [bc, bp] = [den('c_'), den('p_')];
  const rc = bc > 0 ? tp('c_') / bc : 0;
  const rp = bp > 0 ? tp('p_') / bp : 0;
  if (!(bc > 0 && bp > 0)) return { candidate: rc, production: rp, se: 0 };
  // Σlw²(a − R·b)² = (1 − 2R)·Σlw²·a + R²·Σlw²·b, since a = 1 only where b = 1.
  const vc = (1 - 2 * rc) * tp2('c_') + rc * rc * den2('c_');
  const vp = (1 - 2 * rp) * tp2('p_') + rp * rp * den2('p_');
  const both = num(r.b_w2_tp);
  const cov =
    kind === 'recall'
      ? both - rp * tp2('c_') - rc * tp2('p_') + rc * rp * num(r.w2_true)
      : (1 - rc - rp) * both + rc * rp * num(r.b_w2_pred);
  const v = vc / (bc * bc) + vp / (bp * bp) - (2 * cov) / (bc * bp);
  return { candidate: rc, production: rp, se: Math.sqrt(Math.max(0, v)) };
}

/** The shadow's counters and weighted estimates per cohort (see `ShadowEstimates`). */
async function shadowEstimates(
  conn: DuckDBConnection,
  rolloutId: string,
  asOfMs: number,
): Promise<Map<string, ShadowEstimates>> {
  const [weighted, edge, classes] = await exclusive(conn, async () => [
    await rows(conn, SHADOW_WEIGHTED_SQL, [rolloutId, asOfMs]),
    await rows(conn, SHADOW_EDGE_SQL, [rolloutId, asOfMs]),
    await rows(conn, SHADOW_CLASS_SQL, [asOfMs, rolloutId, asOfMs]),
  ]);
  const out = new Map<string, ShadowEstimates>();
  const of = (cohort: string): ShadowEstimates => {
    let e = out.get(cohort);
    if (!e) {
      e = {
        edge: { vehicles: 0, evaluated: 0, priority: 0, disagreements: 0, uploaded: 0, overBudget: 0 },
        estimated: { events: 0, disagreement: 0, latencyMs: { candidate: 0, production: 0 } },
        classes: [],
      };
      out.set(cohort, e);
    }
    return e;
  };
  for (const r of weighted) {
    const events = num(r.w_events);
    of(String(r.cohort)).estimated = {
      events,
      disagreement: events > 0 ? num(r.w_disagree) / events : 0,
      latencyMs: { candidate: num(r.c_lat), production: num(r.p_lat) },
    };
  }
  for (const r of edge) {
    of(String(r.cohort)).edge = {
      vehicles: num(r.vehicles),
      evaluated: num(r.evaluated),
      priority: num(r.priority),
      disagreements: num(r.disagreements),
      uploaded: num(r.uploaded),
      overBudget: num(r.over_budget),
    };
  }
  for (const r of classes) {
    of(String(r.cohort)).classes.push({
      cls: num(r.cls),
      labeled: num(r.n_true),
      predicted: { candidate: num(r.c_n_pred), production: num(r.p_n_pred) },
      recall: pairedRatios(r, 'recall'),
      precision: pairedRatios(r, 'precision'),
    });
  }
  return out;
}

/** The statistics a canary look stores and sums, in look_stats column order after cohort and arm. */
const LOOK_COLUMNS = [
  'events',
  'labeled',
  'errors',
  'lat_n',
  'lat_sum',
  'lat_sumsq',
  'loglat_n',
  'loglat_sum',
  'loglat_sumsq',
  'safety_events',
  'exposure_h',
  'failed',
] as const;

/** The event-side statistics of a (cohort, arm): what `batch_stats` stores per batch and a look sums. */
const EVENT_COLUMNS = LOOK_COLUMNS.filter((c) => c !== 'labeled' && c !== 'errors');

/**
 * The rows a batch's statistics are taken over, per phase, with `arm`, `lat` and `safety` named as in
 * `CANARY_EVENTS`. Canary: the acting model of each event (its arm). Shadow: each model on the events it
 * ran on, as arm 'candidate' and arm 'production' (the event-side columns of `SHADOW_SQL`, which does
 * not read them yet).
 */
const BATCH_EVENTS = {
  canary: CANARY_EVENTS,
  shadow: `(
  SELECT e.* REPLACE ('candidate' AS arm), e.lat_candidate AS lat, e.safety_candidate AS safety
  FROM events e WHERE e.phase = 'shadow' AND e.pred_candidate IS NOT NULL
  UNION ALL
  SELECT e.* REPLACE ('production' AS arm), e.lat_production AS lat, e.safety_production AS safety
  FROM events e WHERE e.phase = 'shadow' AND e.pred_production IS NOT NULL
)`,
} as const;

/**
 * A batch's statistics per (cohort, arm), each row with the batch's min and max ts_ms. The batch's
 * events are found by batch id; `$from`/`$to` bound their times so that DuckDB skips the row groups of
 * other times (a batch id alone skips nothing: ids share long prefixes). Written once: a retry of a
 * batch already summarised changes nothing.
 */
function batchStatsSql(phase: 'shadow' | 'canary'): string {
  return `
INSERT INTO batch_stats (batch_id, rollout_id, phase, cohort, arm, min_ts_ms, max_ts_ms, ${EVENT_COLUMNS.join(', ')})
SELECT $batch, $rollout, '${phase}', cohort, arm, min(lo) OVER (), max(hi) OVER (), ${EVENT_COLUMNS.join(', ')}
FROM (
  SELECT e.cohort, e.arm, min(e.ts_ms) AS lo, max(e.ts_ms) AS hi,
         count(*) AS events,
         ${eventStats('', 'e.lat', 'e.safety')}
  FROM ${BATCH_EVENTS[phase]} e
  WHERE e.batch_id = $batch AND e.rollout_id = $rollout AND e.ts_ms >= $from AND e.ts_ms < $to
  GROUP BY e.cohort, e.arm
)
ON CONFLICT DO NOTHING`;
}

/** One written batch of events: all of them have this batch id, rollout and phase, and ts in [fromMs, toMs). */
export interface BatchWindow {
  batchId: string;
  rolloutId: string;
  phase: 'shadow' | 'canary';
  fromMs: number;
  toMs: number;
}

/**
 * Writes the `batch_stats` rows of a batch whose events are already in `events`: call it in the
 * transaction that writes them, after them, so the batch and its statistics are committed together.
 * Events outside [fromMs, toMs) are not counted, and a look then finds the batch's counts short and
 * reads its window from the events instead (see `canaryLook`). Takes no lock; returns the rows written.
 */
export function recordBatchStats(conn: DuckDBConnection, batch: BatchWindow): Promise<number> {
  return exec(conn, batchStatsSql(batch.phase), {
    batch: batch.batchId,
    rollout: batch.rolloutId,
    from: batch.fromMs,
    to: batch.toMs,
  });
}

/** Canary batches of the rollout wholly inside [prev, asOf): their stored statistics stand for their events. */
const COVERED = `rollout_id = $rollout AND phase = 'canary' AND min_ts_ms >= $prev AND max_ts_ms < $asof`;

/** Canary batches of the rollout with events both inside [prev, asOf) and outside it. */
const STRADDLING = `rollout_id = $rollout AND phase = 'canary' AND min_ts_ms < $asof AND max_ts_ms >= $prev
  AND NOT (min_ts_ms >= $prev AND max_ts_ms < $asof)`;

/**
 * The canary events of straddling batches inside [prev, asOf), read over `ranges` disjoint ts ranges
 * that hold them (parameters $lo{i}, $hi{i}), so DuckDB reads only the row groups of those times.
 */
function straddledEvents(ranges: number): string {
  return Array.from(
    { length: ranges },
    (_, i) => `SELECT e.* FROM ${CANARY_EVENTS} e
      WHERE e.rollout_id = $rollout AND e.ts_ms >= $lo${i} AND e.ts_ms < $hi${i}
        AND e.batch_id IN (SELECT batch_id FROM batch_stats WHERE ${STRADDLING})`,
  ).join('\n      UNION ALL ');
}

/**
 * The events side of a look from stored batch statistics: the batches wholly inside the window from
 * `batch_stats`, and from `events` only the in-window events of batches that straddle an edge.
 */
function eventsFromBatches(ranges: number): string {
  const straddled =
    ranges === 0
      ? ''
      : `UNION ALL
    SELECT e.cohort, e.arm, count(*) AS events, ${eventStats('', 'e.lat', 'e.safety')}
    FROM (${straddledEvents(ranges)}) e
    GROUP BY e.cohort, e.arm`;
  return `
  SELECT cohort, arm, ${EVENT_COLUMNS.map((c) => `sum(${c}) AS ${c}`).join(', ')}
  FROM (
    SELECT cohort, arm, ${EVENT_COLUMNS.join(', ')} FROM batch_stats WHERE ${COVERED}
    ${straddled}
  )
  GROUP BY cohort, arm`;
}

/** The events side of a look read from every event in [prev, asOf): the reference, and the fallback. */
const EVENTS_SCANNED = `
  SELECT e.cohort, e.arm,
         count(*) AS events,
         ${eventStats('', 'e.lat', 'e.safety')}
  FROM ${CANARY_EVENTS} e
  WHERE e.rollout_id = $rollout AND e.ts_ms >= $prev AND e.ts_ms < $asof
  GROUP BY e.cohort, e.arm`;

/**
 * What a canary look adds: events in [prev, asOf) (`events`: one of the two above), and labels that
 * arrived in (prev, asOf] whose event is before asOf. Labels carry their event's cohort, arm, phase,
 * time and errors (see `labels`), so neither side joins the other.
 */
function canaryDeltaSql(events: string): string {
  return `
WITH ev AS (${events}
), lb AS (
  SELECT l.cohort, l.arm,
         count(*) AS labeled,
         CASE l.arm WHEN 'candidate' THEN count_if(l.err_candidate) ELSE count_if(l.err_production) END AS errors
  FROM labels l
  WHERE l.rollout_id = $rollout AND l.arrived_at_ms > $prev AND l.arrived_at_ms <= $asof
    AND l.phase = 'canary' AND l.ts_ms < $asof
  GROUP BY l.cohort, l.arm
)
SELECT coalesce(ev.cohort, lb.cohort) AS cohort, coalesce(ev.arm, lb.arm) AS arm,
       ${LOOK_COLUMNS.map((c) => `coalesce(${c}, 0) AS ${c}`).join(', ')}
FROM ev FULL OUTER JOIN lb ON ev.cohort = lb.cohort AND ev.arm = lb.arm`;
}

/** The sum of a rollout's stored canary look deltas up to and including `asOf`. */
const CANARY_SUM_SQL = `
SELECT cohort, arm, ${LOOK_COLUMNS.map((c) => `sum(${c}) AS ${c}`).join(', ')}
FROM look_stats
WHERE rollout_id = $rollout AND phase = 'canary' AND as_of_ms <= $asof
GROUP BY cohort, arm`;

/** An arm without events (its `failed` and `latencyTail` absent: none). */
export function emptyArm(): ArmStats {
  return {
    events: 0,
    labeled: 0,
    errors: 0,
    latency: { n: 0, sum: 0, sumSq: 0 },
    logLatency: { n: 0, sum: 0, sumSq: 0 },
    safety: { events: 0, exposureHours: 0 },
  };
}

function arm(row: Row, prefix: string): ArmStats {
  return {
    events: num(row[`${prefix}events`]),
    labeled: num(row[`${prefix}labeled`]),
    errors: num(row[`${prefix}errors`]),
    latency: {
      n: num(row[`${prefix}lat_n`]),
      sum: num(row[`${prefix}lat_sum`]),
      sumSq: num(row[`${prefix}lat_sumsq`]),
    },
    logLatency: {
      n: num(row[`${prefix}loglat_n`]),
      sum: num(row[`${prefix}loglat_sum`]),
      sumSq: num(row[`${prefix}loglat_sumsq`]),
    },
    safety: {
      events: num(row[`${prefix}safety_events`]),
      exposureHours: num(row[`${prefix}exposure_h`]),
    },
    failed: num(row[`${prefix}failed`]),
  };
}

/**
 * The latency tail per (cohort, arm) of the canary as of $asof, over the cohorts $c0, $c1, …: the
 * events that did not fail and have a latency, each arm's p95 and p99 (`quantile_cont`, interpolated),
 * and how many events of each arm are slower than production's p95 and p99 of the same cohort. Read
 * from the events at every look: a quantile of the canary so far cannot be summed from per-batch or
 * per-look statistics. Only the columns named here are read, and only for the cohorts asked for.
 */
function tailSql(cohorts: number): string {
  const q95 = TAIL_QUANTILES.latency_p95;
  const q99 = TAIL_QUANTILES.latency_p99;
  const list = Array.from({ length: cohorts }, (_, i) => `$c${i}`).join(', ');
  return `
WITH ev AS (
  SELECT e.cohort, e.arm, e.lat
  FROM ${CANARY_EVENTS} e
  WHERE e.rollout_id = $rollout AND e.ts_ms < $asof AND e.cohort IN (${list})
    AND e.arm IN ('candidate', 'production') AND e.lat IS NOT NULL AND NOT coalesce(e.failed, false)
), q AS (
  SELECT cohort, arm, n, qs[1] AS q95, qs[2] AS q99
  FROM (SELECT cohort, arm, count(*) AS n, quantile_cont(lat, [${q95}, ${q99}]) AS qs FROM ev GROUP BY cohort, arm)
), x AS (
  SELECT ev.cohort, ev.arm,
         count(*) FILTER (WHERE ev.lat > t.q95) AS above95,
         count(*) FILTER (WHERE ev.lat > t.q99) AS above99
  FROM ev JOIN q t ON t.cohort = ev.cohort AND t.arm = 'production'
  GROUP BY ev.cohort, ev.arm
)
SELECT q.cohort, q.arm, q.n, q.q95, q.q99, coalesce(x.above95, 0) AS above95, coalesce(x.above99, 0) AS above99
FROM q LEFT JOIN x ON x.cohort = q.cohort AND x.arm = q.arm`;
}

/** Each (cohort, arm) of `cohorts` with canary latency samples before `asOfMs`: its tail (see `tailSql`). */
export async function latencyTails(
  conn: DuckDBConnection,
  rolloutId: string,
  cohorts: readonly string[],
  asOfMs: number,
): Promise<Map<string, LatencyTail>> {
  const out = new Map<string, LatencyTail>();
  if (cohorts.length === 0) return out;
  const params: Record<string, string | number> = { rollout: rolloutId, asof: asOfMs };
  cohorts.forEach((c, i) => (params[`c${i}`] = c));
  const found = await exclusive(conn, () => rows(conn, tailSql(cohorts.length), params));
  for (const r of found) {
    out.set(`${String(r.cohort)}|${String(r.arm)}`, {
      n: num(r.n),
      p95: { ms: num(r.q95), above: num(r.above95) },
      p99: { ms: num(r.q99), above: num(r.above99) },
    });
  }
  return out;
}

export function createAnalysisActivities({ conn }: { conn: DuckDBConnection }) {
  return {
    /**
     * Sufficient statistics per requested cohort (in the order given; zeros for a cohort without
     * events), as of `asOfMs`. Canary: per arm, the acting model's events, labeled events, errors,
     * latency and log latency {n, sum, sumSq}, safety events with their exposure, failed requests, and
     * the latency tail over the canary so far (`latencyTail`, read from the events at every look: see
     * `latencyTails`). Shadow: the candidate arm from the candidate's outputs and the production
     * arm from production's on the same events, plus the paired events and their disagreements.
     */
    async analyze(input: AnalyzeInput): Promise<CohortStats[]> {
      await ingestArrivedLabels(conn, input.rolloutId, input.asOfMs);
      const found =
        input.phase === 'canary'
          ? await canaryLook(conn, input.rolloutId, input.asOfMs)
          : await exclusive(conn, () =>
              rows(conn, SHADOW_SQL, [input.asOfMs, input.rolloutId, input.asOfMs]),
            );
      const byCohort = new Map<string, CohortStats>();
      for (const cohort of input.cohorts) {
        if (byCohort.has(cohort)) continue;
        byCohort.set(cohort, {
          cohort,
          candidate: emptyArm(),
          production: emptyArm(),
          ...(input.phase === 'shadow' ? { paired: { events: 0, disagreements: 0 } } : {}),
        });
      }
      if (input.phase === 'shadow') {
        const estimates = await shadowEstimates(conn, input.rolloutId, input.asOfMs);
        for (const [cohort, e] of estimates) {
          const stats = byCohort.get(cohort);
          if (stats) stats.shadow = e;
        }
      }
      for (const row of found) {
        const stats = byCohort.get(String(row.cohort));
        if (!stats) continue;
        if (input.phase === 'canary') {
          stats[row.arm === 'candidate' ? 'candidate' : 'production'] = arm(row, '');
        } else {
          stats.candidate = arm(row, 'c_');
          stats.production = arm(row, 'p_');
          stats.paired = { events: num(row.paired), disagreements: num(row.disagreements) };
        }
      }
      if (input.phase === 'canary') {
        const tails = await latencyTails(conn, input.rolloutId, [...byCohort.keys()], input.asOfMs);
        for (const stats of byCohort.values()) {
          for (const side of ['candidate', 'production'] as const) {
            const tail = tails.get(`${stats.cohort}|${side}`);
            if (tail) stats[side].latencyTail = tail;
          }
        }
      }
      return [...byCohort.values()];
    },
  };
}

export type AnalysisActivities = ReturnType<typeof createAnalysisActivities>;

/**
 * The canary statistics as of `asOfMs`, reading only what is new since the rollout's previous look:
 * the new look's delta is computed and stored, then the stored deltas are summed. The delta's events
 * side comes from the batch statistics written at ingestion where they cover the window (see
 * `eventsSide`), so even a first look over a large log reads few events. A repeated look (an
 * activity retry) finds its delta stored and only sums. A look earlier than the latest stored one is
 * answered by the full query and stores nothing.
 */
export async function canaryLook(conn: DuckDBConnection, rolloutId: string, asOfMs: number): Promise<Row[]> {
  return transaction(conn, async () => {
    const [last] = await rows(
      conn,
      `SELECT max(as_of_ms) AS prev, count(*) FILTER (WHERE as_of_ms = $asof) AS same
       FROM looks WHERE rollout_id = $rollout AND phase = 'canary'`,
      { rollout: rolloutId, asof: asOfMs },
    );
    const prev = last?.prev === null || last?.prev === undefined ? null : num(last.prev);
    if (num(last?.same) === 0) {
      if (prev !== null && prev > asOfMs) return rows(conn, CANARY_SQL, [asOfMs, rolloutId, asOfMs]);
      const window = { rollout: rolloutId, prev: prev ?? Number.MIN_SAFE_INTEGER, asof: asOfMs };
      const events = await eventsSide(conn, window);
      await exec(
        conn,
        `INSERT INTO look_stats (rollout_id, phase, as_of_ms, cohort, arm, ${LOOK_COLUMNS.join(', ')})
         SELECT $rollout, 'canary', $asof, cohort, arm, ${LOOK_COLUMNS.join(', ')}
         FROM (${canaryDeltaSql(events.sql)})`,
        { ...window, ...events.params },
      );
      await exec(conn, `INSERT INTO looks VALUES ($rollout, 'canary', $asof)`, {
        rollout: rolloutId,
        asof: asOfMs,
      });
    }
    return rows(conn, CANARY_SUM_SQL, { rollout: rolloutId, asof: asOfMs });
  });
}

/**
 * How a look reads the events side of [prev, asOf). From `batch_stats` (batches wholly inside, plus the
 * in-window events of batches that straddle an edge) when those account for every canary event of the
 * rollout in the window: one count over the window's events checks it. Otherwise (events written other
 * than through `recordBatchStats`, batches written before `batch_stats` existed, or events changed after
 * their batch was summarised) every event in the window is read, as the full query would. Either way the
 * numbers equal `canaryFull`'s; only the cost differs. Takes no lock (tests call it to see the source).
 */
export async function eventsSide(
  conn: DuckDBConnection,
  window: { rollout: string; prev: number; asof: number },
): Promise<{ source: 'batch_stats' | 'events'; sql: string; params: Record<string, number> }> {
  const straddlers = await rows(
    conn,
    `SELECT min(min_ts_ms) AS lo, max(max_ts_ms) AS hi FROM batch_stats WHERE ${STRADDLING} GROUP BY batch_id`,
    window,
  );
  const ranges = disjoint(
    straddlers.map((r) => [Math.max(num(r.lo), window.prev), Math.min(num(r.hi) + 1, window.asof)] as const),
  );
  const params = Object.fromEntries(
    ranges.flatMap(([lo, hi], i) => [
      [`lo${i}`, lo],
      [`hi${i}`, hi],
    ]),
  );
  const straddled = ranges.length === 0 ? '0' : `(SELECT count(*) FROM (${straddledEvents(ranges.length)}))`;
  const [check] = await rows(
    conn,
    `SELECT (SELECT count(*) FROM events
             WHERE rollout_id = $rollout AND phase = 'canary' AND ts_ms >= $prev AND ts_ms < $asof) AS total,
            (SELECT coalesce(sum(events), 0) FROM batch_stats WHERE ${COVERED}) + ${straddled} AS accounted`,
    { ...window, ...params },
  );
  return num(check?.total) === num(check?.accounted)
    ? { source: 'batch_stats', sql: eventsFromBatches(ranges.length), params }
    : { source: 'events', sql: EVENTS_SCANNED, params: {} };
}

/** The union of half-open ranges [lo, hi) as disjoint ranges in ascending order. */
function disjoint(ranges: readonly (readonly [number, number])[]): [number, number][] {
  const out: [number, number][] = [];
  for (const [lo, hi] of [...ranges].sort((a, b) => a[0] - b[0])) {
    const last = out.at(-1);
    if (last && lo <= last[1]) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** The canary statistics as of `asOfMs` by one query over every event: the reference for `canaryLook`. */
export function canaryFull(conn: DuckDBConnection, rolloutId: string, asOfMs: number): Promise<Row[]> {
  return exclusive(conn, () => rows(conn, CANARY_SQL, [asOfMs, rolloutId, asOfMs]));
}
