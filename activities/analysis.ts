/**
 * The analysis activity: reduces a rollout's event log to sufficient statistics per cohort and arm, the
 * only thing the statistics in `policies/` need.
 *
 * One SQL per look does the work inside DuckDB; what comes back grows with cohorts, never with events:
 * this module must never return rows per event. A look as of `asOfMs` sees only events before then and
 * labels that had arrived by then, so a look repeated later for the same moment gives the same numbers.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import type { AnalyzeInput, ArmStats, CohortStats } from './contracts';
import { exec, exclusive, num, rows, transaction } from './db';
import type { Row } from './db';
import { ingestArrivedLabels } from './labels';

/** The acting model's prediction and latency of a canary event: the candidate's on its arm, else production's. */
const ACTING_PRED = `(CASE e.arm WHEN 'candidate' THEN e.pred_candidate ELSE e.pred_production END)`;
const ACTING_LAT = `(CASE e.arm WHEN 'candidate' THEN e.lat_candidate ELSE e.lat_production END)`;

const CANARY_SQL = `
SELECT e.cohort, e.arm,
       count(*) AS events,
       count(l.event_id) AS labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL
         AND ${ACTING_PRED} <> l.label) AS errors,
       count(${ACTING_LAT}) AS lat_n,
       sum(${ACTING_LAT}) AS lat_sum,
       sum(power(${ACTING_LAT}, 2)) AS lat_sumsq
FROM events e
LEFT JOIN labels l ON l.event_id = e.event_id AND l.arrived_at_ms <= ?
WHERE e.rollout_id = ? AND e.phase = 'canary' AND e.ts_ms < ?
GROUP BY e.cohort, e.arm`;

const SHADOW_SQL = `
SELECT e.cohort,
       count(e.pred_candidate) AS c_events,
       count(l.event_id) FILTER (WHERE e.pred_candidate IS NOT NULL) AS c_labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL AND e.pred_candidate <> l.label) AS c_errors,
       count(e.lat_candidate) AS c_lat_n,
       sum(e.lat_candidate) AS c_lat_sum,
       sum(power(e.lat_candidate, 2)) AS c_lat_sumsq,
       count(e.pred_production) AS p_events,
       count(l.event_id) FILTER (WHERE e.pred_production IS NOT NULL) AS p_labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL AND e.pred_production <> l.label) AS p_errors,
       count(e.lat_production) AS p_lat_n,
       sum(e.lat_production) AS p_lat_sum,
       sum(power(e.lat_production, 2)) AS p_lat_sumsq,
       count(*) FILTER (WHERE e.pred_candidate IS NOT NULL AND e.pred_production IS NOT NULL) AS paired,
       count(*) FILTER (WHERE e.pred_candidate <> e.pred_production) AS disagreements
FROM events e
LEFT JOIN labels l ON l.event_id = e.event_id AND l.arrived_at_ms <= ?
WHERE e.rollout_id = ? AND e.phase = 'shadow' AND e.ts_ms < ?
GROUP BY e.cohort`;

/** What a canary look adds: events in [prev, asOf) and labels that arrived in (prev, asOf]. */
const CANARY_DELTA_SQL = `
WITH ev AS (
  SELECT e.cohort, e.arm,
         count(*) AS events,
         count(${ACTING_LAT}) AS lat_n,
         coalesce(sum(${ACTING_LAT}), 0) AS lat_sum,
         coalesce(sum(power(${ACTING_LAT}, 2)), 0)
           AS lat_sumsq
  FROM events e
  WHERE e.rollout_id = $rollout AND e.phase = 'canary' AND e.ts_ms >= $prev AND e.ts_ms < $asof
  GROUP BY e.cohort, e.arm
), lb AS (
  SELECT e.cohort, e.arm,
         count(*) AS labeled,
         count(*) FILTER (WHERE ${ACTING_PRED}
           <> l.label) AS errors
  FROM labels l JOIN events e ON e.event_id = l.event_id
  WHERE l.rollout_id = $rollout AND l.arrived_at_ms > $prev AND l.arrived_at_ms <= $asof
    AND e.phase = 'canary' AND e.ts_ms < $asof
  GROUP BY e.cohort, e.arm
)
SELECT coalesce(ev.cohort, lb.cohort) AS cohort, coalesce(ev.arm, lb.arm) AS arm,
       coalesce(ev.events, 0) AS events, coalesce(lb.labeled, 0) AS labeled, coalesce(lb.errors, 0) AS errors,
       coalesce(ev.lat_n, 0) AS lat_n, coalesce(ev.lat_sum, 0) AS lat_sum, coalesce(ev.lat_sumsq, 0) AS lat_sumsq
FROM ev FULL OUTER JOIN lb ON ev.cohort = lb.cohort AND ev.arm = lb.arm`;

/** The sum of a rollout's stored canary look deltas up to and including `asOf`. */
const CANARY_SUM_SQL = `
SELECT cohort, arm, sum(events) AS events, sum(labeled) AS labeled, sum(errors) AS errors,
       sum(lat_n) AS lat_n, sum(lat_sum) AS lat_sum, sum(lat_sumsq) AS lat_sumsq
FROM look_stats
WHERE rollout_id = $rollout AND phase = 'canary' AND as_of_ms <= $asof
GROUP BY cohort, arm`;

export function emptyArm(): ArmStats {
  return { events: 0, labeled: 0, errors: 0, latency: { n: 0, sum: 0, sumSq: 0 } };
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
  };
}

export function createAnalysisActivities({ conn }: { conn: DuckDBConnection }) {
  return {
    /**
     * Sufficient statistics per requested cohort (in the order given; zeros for a cohort without
     * events), as of `asOfMs`. Canary: per arm, the acting model's events, labeled events, errors and
     * latency {n, sum, sumSq}. Shadow: the candidate arm from the candidate's outputs and the production
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
      return [...byCohort.values()];
    },
  };
}

export type AnalysisActivities = ReturnType<typeof createAnalysisActivities>;

/**
 * The canary statistics as of `asOfMs`, reading only what is new since the rollout's previous look:
 * the new look's delta is computed and stored, then the stored deltas are summed. A repeated look (an
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
      await exec(
        conn,
        `INSERT INTO look_stats SELECT $rollout, 'canary', $asof, cohort, arm, events, labeled, errors,
                lat_n, lat_sum, lat_sumsq
         FROM (${CANARY_DELTA_SQL})`,
        { rollout: rolloutId, asof: asOfMs, prev: prev ?? Number.MIN_SAFE_INTEGER },
      );
      await exec(conn, `INSERT INTO looks VALUES ($rollout, 'canary', $asof)`, {
        rollout: rolloutId,
        asof: asOfMs,
      });
    }
    return rows(conn, CANARY_SUM_SQL, { rollout: rolloutId, asof: asOfMs });
  });
}

/** The canary statistics as of `asOfMs` by one query over every event: the reference for `canaryLook`. */
export function canaryFull(conn: DuckDBConnection, rolloutId: string, asOfMs: number): Promise<Row[]> {
  return exclusive(conn, () => rows(conn, CANARY_SQL, [asOfMs, rolloutId, asOfMs]));
}
