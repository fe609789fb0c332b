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
import { exclusive, num, rows } from './db';
import type { Row } from './db';
import { ingestArrivedLabels } from './labels';

const CANARY_SQL = `
SELECT e.cohort, e.arm,
       count(*) AS events,
       count(l.event_id) AS labeled,
       count(*) FILTER (WHERE l.event_id IS NOT NULL
         AND (CASE e.arm WHEN 'candidate' THEN e.pred_candidate ELSE e.pred_production END) <> l.label) AS errors,
       count(CASE e.arm WHEN 'candidate' THEN e.lat_candidate ELSE e.lat_production END) AS lat_n,
       sum(CASE e.arm WHEN 'candidate' THEN e.lat_candidate ELSE e.lat_production END) AS lat_sum,
       sum(power(CASE e.arm WHEN 'candidate' THEN e.lat_candidate ELSE e.lat_production END, 2)) AS lat_sumsq
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
      const sql = input.phase === 'canary' ? CANARY_SQL : SHADOW_SQL;
      const found = await exclusive(conn, () =>
        rows(conn, sql, [input.asOfMs, input.rolloutId, input.asOfMs]),
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
