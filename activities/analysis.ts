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

/** The event-side statistics of one arm, from latency `lat`, safety flag `safety`, under `filter`. */
function eventStats(p: string, lat: string, safety: string, filter = 'true'): string {
  return `count(${lat}) AS ${p}lat_n,
       coalesce(sum(${lat}), 0) AS ${p}lat_sum,
       coalesce(sum(${lat} * ${lat}), 0) AS ${p}lat_sumsq,
       count(${ln(lat)}) AS ${p}loglat_n,
       coalesce(sum(${ln(lat)}), 0) AS ${p}loglat_sum,
       coalesce(sum(${ln(lat)} * ${ln(lat)}), 0) AS ${p}loglat_sumsq,
       count(*) FILTER (WHERE ${safety}) AS ${p}safety_events,
       coalesce(sum(e.exposure_h) FILTER (WHERE ${filter}), 0) AS ${p}exposure_h`;
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
] as const;

/**
 * What a canary look adds: events in [prev, asOf), and labels that arrived in (prev, asOf] whose event
 * is before asOf. Labels carry their event's cohort, arm, phase, time and errors (see `labels`), so
 * neither side joins the other: each is one scan and a GROUP BY.
 */
const CANARY_DELTA_SQL = `
WITH ev AS (
  SELECT e.cohort, e.arm,
         count(*) AS events,
         ${eventStats('', 'e.lat', 'e.safety')}
  FROM ${CANARY_EVENTS} e
  WHERE e.rollout_id = $rollout AND e.ts_ms >= $prev AND e.ts_ms < $asof
  GROUP BY e.cohort, e.arm
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

/** The sum of a rollout's stored canary look deltas up to and including `asOf`. */
const CANARY_SUM_SQL = `
SELECT cohort, arm, ${LOOK_COLUMNS.map((c) => `sum(${c}) AS ${c}`).join(', ')}
FROM look_stats
WHERE rollout_id = $rollout AND phase = 'canary' AND as_of_ms <= $asof
GROUP BY cohort, arm`;

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
  };
}

export function createAnalysisActivities({ conn }: { conn: DuckDBConnection }) {
  return {
    /**
     * Sufficient statistics per requested cohort (in the order given; zeros for a cohort without
     * events), as of `asOfMs`. Canary: per arm, the acting model's events, labeled events, errors,
     * latency and log latency {n, sum, sumSq}, and safety events with their exposure. Shadow: the candidate arm from the candidate's outputs and the production
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
        `INSERT INTO look_stats (rollout_id, phase, as_of_ms, cohort, arm, ${LOOK_COLUMNS.join(', ')})
         SELECT $rollout, 'canary', $asof, cohort, arm, ${LOOK_COLUMNS.join(', ')}
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
